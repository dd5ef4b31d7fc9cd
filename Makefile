# threadchat: `make run` starts the chat, `make test` runs every test.
# `make test` installs what the tests need (websocat, Chromium) when it is missing.

TOOLS    := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)
ARGS     ?=
# The oldest Rust that builds threadchat, from Cargo.toml.
RUST_NEEDED := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

.PHONY: rust promtool run test test-rust test-cluster test-shell test-browser websocat chromium redis-server proxy-tools cluster bench check trace-session walkthrough-links mutants cargo-mutants cargo-nextest

## rust: one line naming the Rust needed, when the one here is older
rust:
	@have=$$(rustc --version 2>/dev/null | cut -d' ' -f2); \
	if [ -z "$$have" ] || [ "$$(printf '%s\n' '$(RUST_NEEDED)' "$$have" | sort -V | head -n1)" != '$(RUST_NEEDED)' ]; then \
	  echo "threadchat needs Rust $(RUST_NEEDED) or newer; this machine has $${have:-no rustc} (rustup update stable)"; \
	  exit 1; \
	fi

## run: build optimised and start the chat on http://127.0.0.1:8080/, its admin port on
## http://127.0.0.1:8090/ (ARGS="--trace" etc.)
run: rust
	cargo run --release -- --admin-port 8090 $(ARGS)

## test: every test: Rust unit and integration tests, the cluster tests, websocat shell
## tests, the browser test
test: test-rust test-cluster test-shell test-browser

test-rust: rust promtool
	cargo test --all-targets

## test-cluster: instances sharing one room through Debian's redis-server (installed when
## missing), with a build that has the redis feature, kept apart in target/redis; the
## rolling restart runs them behind Debian's nginx
test-cluster: redis-server websocat proxy-tools
	cargo test --features redis --target-dir target/redis --bin threadchat --test cluster --test cluster_faults --test cluster_resume --test rolling_restart --test walkthrough
	cargo build --quiet --features redis --target-dir target/redis
	THREADCHAT=target/redis/debug/threadchat bash tests/shell/run.sh tests/shell/cluster/two-instances.sh

## promtool: Debian's prometheus package, whose promtool checks /metrics in the tests
promtool:
	@bash tests/shell/ensure-promtool.sh

redis-server:
	@bash tests/shell/cluster/ensure-redis.sh

## proxy-tools: Debian's nginx and openssl, for the tests behind a TLS proxy (docs/DEPLOY.md)
proxy-tools:
	@bash tests/shell/proxy/ensure-tools.sh

## cluster: one redis-server and two instances sharing a room, pages on 8080 and 8081
cluster: redis-server
	cargo build --release --features redis --target-dir target/redis
	bash tests/shell/cluster/run.sh target/redis/release/threadchat

## test-shell: every tests/shell/*.sh; prints how many passed, failed and were skipped
test-shell: websocat proxy-tools
	cargo build --quiet
	@bash tests/shell/run.sh tests/shell/*.sh

test-browser: chromium proxy-tools
	cargo build --quiet
	bash tests/browser/run.sh

## websocat: use the one on PATH, or build it once into .tools/
websocat:
	@command -v websocat >/dev/null || { \
	  echo "websocat not found: installing it into $(TOOLS) (a few minutes, once)"; \
	  cargo install --locked --quiet websocat --root "$(TOOLS)"; }

## chromium: Debian's Chromium, installed with apt when missing and possible
chromium:
	@bash tests/browser/ensure-chromium.sh

## bench: drive the release server with up to 10,000 clients, beside a peer server
## (tokio-tungstenite's example chat, built from crates.io); prints one table (~15 min).
## Then a Go generator, on core 1, drives threadchat and a gorilla/websocket hub server, each on
## core 0 (Debian's golang-go and gorilla/websocket, installed when missing): a second
## table (~3 min)
bench: rust
	cargo build --release
	cargo build --release --no-default-features --target-dir target/untraced
	cargo build --release --features redis --target-dir target/redis
	cargo build --release --manifest-path tests/loadgen/Cargo.toml --target-dir target
	bash tests/loadgen/peer/build.sh
	bash tests/loadgen/go/build.sh
	@bash tests/loadgen/ensure-perf.sh
	@bash tests/shell/cluster/ensure-redis.sh
	target/release/threadchat-loadgen target/release/threadchat target/untraced/release/threadchat \
	  target/release/tokio-tungstenite-chat target/redis/release/threadchat | tee target/bench.md
	bash tests/loadgen/go/run.sh target/release/threadchat target/redis/release/threadchat | tee -a target/bench.md

## trace-session: print the --trace session that docs/WALKTHROUGH.md quotes
trace-session:
	@cargo test --quiet --test walkthrough -- --ignored --nocapture print_trace_session

## walkthrough-links: after code moves, point docs/WALKTHROUGH.md's code links at it again
walkthrough-links:
	@cargo test --quiet --test walkthrough -- --ignored --exact repoint_code_links

## mutants: mutation testing of the core with cargo-mutants and nextest (both installed into
## .tools/ when missing), settings and exclusions in .cargo/mutants.toml. First the Rust tests
## against room, log, delivery, writer, outbox, rate, wire and handshake; then cluster.rs and
## the room's cluster-only paths, built with the redis feature and tested by the unit tests
## and every test that starts an instance with --redis. About an hour on 2 cores; not in CI.
## Reports in target/mutants.out and target/redis/mutants.out; docs/MUTANTS.md has the last
## run. ARGS go to both runs (e.g. ARGS="--list", or ARGS="--file src/limits/rate.rs"). A missed
## mutant in the first run does not stop the second; either fails the target at the end.
CLUSTER_ONLY := src/cluster/|src/room/shared(/fenced)?\.rs|Room::turn_away( |$$)
CLUSTER_TESTS := kind(bin) | binary(/^cluster/) | binary(rolling_restart) | binary(walkthrough)
mutants: cargo-mutants cargo-nextest redis-server proxy-tools
	status=0; \
	cargo mutants -j 3 --exclude "src/cluster/*.rs" --exclude-re '$(CLUSTER_ONLY)' $(ARGS) || status=$$?; \
	cargo mutants -j 3 --features redis --output target/redis --re '$(CLUSTER_ONLY)' $(ARGS) \
	  -- -E '$(CLUSTER_TESTS)' || status=$$?; \
	exit $$status

## cargo-nextest: the test runner make mutants uses; the one on PATH, or built once into .tools/
cargo-nextest:
	@command -v cargo-nextest >/dev/null || { \
	  echo "cargo-nextest not found: installing it into $(TOOLS) (a few minutes, once)"; \
	  cargo install --locked --quiet cargo-nextest --root "$(TOOLS)"; }

## cargo-mutants: use the one on PATH, or build it once into .tools/
cargo-mutants:
	@command -v cargo-mutants >/dev/null || { \
	  echo "cargo-mutants not found: installing it into $(TOOLS) (a few minutes, once)"; \
	  cargo install --locked --quiet cargo-mutants --root "$(TOOLS)"; }

## check: what CI checks besides the tests
check: rust
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features redis --target-dir target/redis -- -D warnings
	cargo fmt --manifest-path tests/loadgen/Cargo.toml -- --check
	cargo clippy --manifest-path tests/loadgen/Cargo.toml --target-dir target -- -D warnings
