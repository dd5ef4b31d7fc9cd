#!/usr/bin/env bash
# Builds the peer for make bench into target/release/tokio-tungstenite-chat: the example
# chat server from the tokio-tungstenite package on crates.io, unchanged.
set -euo pipefail
cd "$(dirname "$0")/../../.."
dir=target/peer
mkdir -p "$dir/src"
cp tests/loadgen/peer/Cargo.toml "$dir/Cargo.toml"
[ -f "$dir/src/main.rs" ] || echo 'fn main() {}' > "$dir/src/main.rs"
cargo fetch --quiet --manifest-path "$dir/Cargo.toml"
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
example=$(find "$registry" -path '*/tokio-tungstenite-0.30.0/examples/server.rs' | head -n 1)
[ -n "$example" ] || { echo "tokio-tungstenite's examples/server.rs not found under $registry" >&2; exit 1; }
cp "$example" "$dir/src/main.rs"
cargo build --quiet --release --manifest-path "$dir/Cargo.toml" --target-dir target
