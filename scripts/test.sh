#!/usr/bin/env bash
# Sets up a fresh machine and runs every check and test: formatting, clippy, the docs without
# warnings, unit tests, the system tests (consensus/tests/system: whole members through
# start-node.sh, driven by the real etcdctl, and compared with a real etcd 3.4.23), and a smoke run
# of every benchmark. docs/testing.md says what each test covers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Private items too: the crates are programs, their docs are for the people who work on them.
RUSTDOCFLAGS="-D warnings -A rustdoc::private-intra-doc-links" cargo doc --workspace --no-deps --document-private-items
# client-gateway's binary shares its doc name with its library, so `cargo doc` skips the binary.
cargo rustdoc -p client-gateway --bin client-gateway -- -D warnings -A rustdoc::private-intra-doc-links --document-private-items
# The system tests run the three binaries through scripts/start-node.sh.
cargo build --workspace --bins
cargo test --workspace
# Every benchmark still runs (tiny sizes; speed is measured by scripts/bench-vs-etcd.sh, not here).
scripts/bench-smoke.sh
