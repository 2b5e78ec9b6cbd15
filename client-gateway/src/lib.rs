//! client-gateway as a library: the etcd v3 wire types and gRPC services generated from `proto/`
//! ([`proto`]: servers for the gateway, clients for the tests and the load generator), and the
//! load generator ([`loadgen`]) behind `etcd-bench` and the client-gateway benchmark.
//!
//! The gateway itself is the `client-gateway` binary (`src/main.rs`), which takes [`proto`] from
//! here.

pub mod loadgen;
pub mod proto;
