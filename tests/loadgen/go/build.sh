#!/usr/bin/env bash
# Builds the Go side of make bench into target/go/: gen, a load generator, and hub, a chat
# server in gorilla/websocket's hub pattern. Both use Debian's golang-go and
# golang-github-gorilla-websocket-dev, installed here when missing and this machine allows
# it (root, apt). When it cannot, it says so and exits 0: make bench then prints no Go rows,
# and tests/loadgen/go/run.sh says why.
set -euo pipefail
cd "$(dirname "$0")/../../.."
library=/usr/share/gocode/src/github.com/gorilla/websocket
if ! command -v go >/dev/null || [ ! -d "$library" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Go or gorilla/websocket not found: installing Debian's golang-go and golang-github-gorilla-websocket-dev"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-github-gorilla-websocket-dev >/dev/null
  else
    echo "Go or gorilla/websocket not found and apt-get is not available as root: make bench leaves out the Go generator and the hub peer" >&2
    exit 0
  fi
fi
# Debian's Go packages live in a GOPATH of their own; no module download, no network.
export GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE="$PWD/target/go/cache"
mkdir -p target/go
for program in gen hub; do
  (cd "tests/loadgen/go/$program" && go build -o "../../../../target/go/$program" .)
done
