//! The one error type of the consensus process.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration asks for what cannot be: a message naming the setting and its value.
    #[error("{0}")]
    Config(String),
    /// The member cannot start as asked (its data dir is taken, a thread could not start).
    #[error("{0}")]
    Startup(String),
    /// A RocksDB failure. The source stays RocksDB's own error, so its message and kind reach
    /// the log unchanged; only `crate::storage` makes one.
    #[error("storage: {context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: rocksdb::Error,
    },
    /// RocksDB reported trouble without an error value of its own (a background error after a
    /// flush it was asked for).
    #[error("storage: {0}")]
    StorageState(String),
    #[error("corrupt data on disk: {0}")]
    Corrupt(String),
    /// This member started from an empty data dir, but the leader holds entries this member
    /// acknowledged before: its data was lost or wiped, and it must not take part as itself.
    #[error(
        "the leader {leader:x} holds entries this member acknowledged before its data dir was emptied"
    )]
    AlreadyBootstrapped { leader: u64 },
    /// Applying a committed entry failed for a reason of this member's own (storage, not the
    /// request): it must not skip the entry, so it stops and applies it again after a restart.
    #[error("applying raft entry {index}: {message}; stopping without recording it as applied")]
    Apply { index: u64, message: String },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding: {0}")]
    Capnp(#[from] capnp::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn storage(context: impl Display, source: rocksdb::Error) -> Error {
        Error::Storage {
            context: context.to_string(),
            source,
        }
    }

    pub fn io(context: impl Display, source: std::io::Error) -> Error {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }
}
