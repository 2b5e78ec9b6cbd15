#!/usr/bin/env bash
# Sets up a fresh machine and runs every check and test: formatting, clippy, unit tests, the
# member tests (three members on 127.0.0.1-3 through start-node.sh, driven by the real etcdctl),
# the differential test against a real etcd 3.4.23, and a smoke run of every benchmark.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The member tests run the three binaries through scripts/start-node.sh.
cargo build --workspace --bins
cargo test --workspace
# Every benchmark still runs (tiny sizes; speed is measured by scripts/bench-vs-etcd.sh, not here).
scripts/bench-smoke.sh
