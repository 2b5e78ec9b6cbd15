//! The system tests: whole members started for real (through `scripts/start-node.sh`, or
//! consensus alone), driven by the real `etcdctl` and etcd's client library, and compared with a
//! real etcd 3.4.23. One test binary, so that `support` compiles once; the tests run in parallel,
//! each on the loopback addresses `support::addresses` gives it, and each stops what it started,
//! by PID.
//!
//! They run the workspace's binaries, so build those first: `cargo build --workspace --bins`
//! (`scripts/test.sh` does).

mod support;

mod bad_input;
mod differential;
mod etcdctl_vs_etcd;
mod http_endpoints;
mod linearizable;
mod member;
mod nemesis;
