//! consensus: the process of a member that owns raft and all durable state.
//!
//! The data's path through it:
//! - [`config`]: what the operator asked for;
//! - `cluster`: who this member is and who the others are ([`ids`], the member table), decided
//!   once at the first start ([`boot`] starts the threads);
//! - `ipc`: the IPC thread, serving the gateways' Cap'n Proto planes (registration, KV reads,
//!   maintenance, compaction);
//! - `streams`: the raft stream and the write stream, read by the raft thread itself;
//! - `raft`: the raft thread, a sans-IO core (`raft::core`) and the runtime around it, with
//!   reads, forwarding and early commit, and apply dispatch to the features;
//! - `mvcc` over `storage`: the key space's state machine in RocksDB, and the WAL.

pub mod boot;
pub(crate) mod cluster;
pub(crate) mod codec;
pub mod config;
pub(crate) mod error;
pub(crate) mod etcd_error;
pub(crate) mod ipc;
pub(crate) mod mvcc;
pub(crate) mod raft;
pub mod snapshot_cmd;
pub(crate) mod storage;
pub(crate) mod streams;

pub use cluster::ids;
pub use error::{Error, Result};

/// The etcd release whose API and behaviour this member matches, reported by `Status`.
pub const ETCD_VERSION: &str = "3.4.23";
