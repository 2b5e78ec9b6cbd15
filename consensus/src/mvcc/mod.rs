//! The MVCC key space: etcd's revision model stored in RocksDB, read without an in-memory index.
//!
//! Key layout (encoded by [`crate::storage::schema`]):
//! - `kv_key`: one row per version of a key, [`version_row`](crate::storage::schema::version_row)
//!   `(key, main revision)` -> a record (a put or a tombstone). Rows sort by user key, then newest
//!   version first, so "key K at revision R" is one seek, and a range walks keys in order, one
//!   seek per key, never loading the key index into memory.
//! - `kv_rev`: `main ++ sub` revision -> change kind and key: the change log that compaction and
//!   watch walk in revision order.
//! - `meta`: the current and the compacted revision, updated in the same batch as the rows.
//!
//! The sections: the request and response types, the stored record, the read path ([`View`]),
//! Go's sort (etcd's order of ties), txns, applying ([`Applier`]), compaction (recorded by the
//! apply, carried out by the [`Compactor`] in the background), and the checks made before a
//! request is proposed ([`check_txn`] and the others).

mod apply;
mod compact;
mod go_sort;
mod import;
mod record;
mod txn;
mod types;
mod validate;
mod view;

#[cfg(test)]
mod tests;

pub use apply::{Applier, MvccState};
pub use compact::Compactor;
pub use import::Import;
pub use types::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
pub use validate::{
    check_delete, check_put, check_range, check_txn, is_point_read, txn_is_read_only,
};
pub use view::View;

/// The compacted revision of a store that was never compacted (etcd starts at -1 too).
const NEVER_COMPACTED: i64 = -1;
