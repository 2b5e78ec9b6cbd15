//! consensus: the process of a member that owns raft and all durable state.
//!
//! The data's path through it: `config` (what the operator asked for) -> `ids` and `cluster` (who
//! this member is, decided once) -> `ipc` (requests from the gateways) -> `raft_loop` (ordering,
//! persistence, replication) -> `mvcc` over `storage` (the state machine in RocksDB).

pub mod cluster;
pub mod codec;
pub mod compactor;
pub mod config;
pub mod error;
pub mod etcd_error;
pub mod frame_stream;
pub mod ids;
pub mod inbox;
pub mod ipc;
pub mod leader_ack;
pub mod member;
pub mod mvcc;
pub mod peer_stream;
pub mod raft_log_bridge;
pub mod raft_loop;
pub mod storage;
pub mod write_stream;

pub use storage::wal;

/// The etcd release whose API and behaviour this member matches, reported by `Status`.
pub const ETCD_VERSION: &str = "3.4.23";
