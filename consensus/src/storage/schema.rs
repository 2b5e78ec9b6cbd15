//! Every column family and every key the member's RocksDB holds, and how each key is encoded.
//! Nothing outside [`crate::storage`] names them: the rest of the crate goes through
//! [`Db`](super::Db), [`Batch`](super::Batch) and [`ReadView`](super::ReadView).
//!
//! | family | key | value |
//! | --- | --- | --- |
//! | `raft_log` | [`log_key`] (index, big-endian) | `eraftpb.Entry`; only left by earlier versions (moved to the WAL by [`super::RaftLog::load`]) |
//! | `meta` | the `META_*` keys below, [`member_key`] | protobuf, Cap'n Proto or a big-endian integer |
//! | `kv_key` | [`version_row`]: escaped user key, `0x00 0x01`, inverted main revision | an MVCC record |
//! | `kv_rev` | [`change_key`]: main ++ sub revision | change kind ++ user key |
//!
//! A `kv_key` row escapes each 0x00 of the user key as 0x00 0xFF and ends the key with 0x00 0x01,
//! so rows sort in user-key order whatever bytes a key holds; the inverted revision
//! then puts a key's newest version first, so "key K at revision R" is one seek to
//! [`version_row`]`(K, R)`.

use crate::error::{Error, Result};

/// The column families, all created when the database is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    /// Raft log entries an earlier version kept here; moved to the WAL at the first start.
    Log,
    /// Conf state, identity, members, applied index, MVCC revisions.
    Meta,
    /// MVCC versions.
    Key,
    /// MVCC change log (for watch and compaction).
    Rev,
}

impl Cf {
    pub const ALL: [Cf; 4] = [Cf::Log, Cf::Meta, Cf::Key, Cf::Rev];

    /// The family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => "raft_log",
            Cf::Meta => "meta",
            Cf::Key => "kv_key",
            Cf::Rev => "kv_rev",
        }
    }
}

/// Raft hard state; only left by earlier versions (the WAL holds it now).
pub const META_HARD_STATE: &[u8] = b"raft/hard_state";
pub const META_CONF_STATE: &[u8] = b"raft/conf_state";
/// Where the raft log starts: an `eraftpb.SnapshotMetadata` (index, term, conf state) of the
/// compaction point, the last entry dropped from the log (see `RaftLog::compact`).
pub const META_SNAPSHOT: &[u8] = b"raft/snapshot_meta";
pub const META_APPLIED: &[u8] = b"raft/applied_index";
/// The index of the raft snapshot this database was installed from (big-endian): while the log
/// still starts there, an empty WAL is the install's, not a lost log.
pub const META_SNAPSHOT_INSTALLED: &[u8] = b"raft/snapshot_installed";
pub const META_IDENTITY: &[u8] = b"cluster/identity";
pub const META_MEMBER_PREFIX: &[u8] = b"cluster/member/";
/// The MVCC revision of the last write.
pub const META_REVISION: &[u8] = b"mvcc/revision";
/// The MVCC revision of the last compaction.
pub const META_COMPACT_REVISION: &[u8] = b"mvcc/compact_revision";
/// The compaction whose background pass is under way: its revision (big-endian) and the
/// `kv_key` row it goes on from.
pub const META_COMPACT_CURSOR: &[u8] = b"mvcc/compact_cursor";
/// The revision of the last compaction whose background pass finished.
pub const META_COMPACT_FINISHED: &[u8] = b"mvcc/compact_finished";

/// Ends the escaped user key of a `kv_key` row; the inverted revision follows.
const TERMINATOR: [u8; 2] = [0x00, 0x01];
/// Sorts after every [`TERMINATOR`]ed row of the same key.
const NEXT_KEY: [u8; 2] = [0x00, 0x02];

/// A big-endian integer as stored; a shorter value is zero-padded on the right.
pub fn be_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_be_bytes(b)
}

pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn member_key(id: u64) -> Vec<u8> {
    [META_MEMBER_PREFIX, &id.to_be_bytes()].concat()
}

/// The `kv_rev` key of the `sub`th change of revision `main`.
pub fn change_key(main: i64, sub: i64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&main.to_be_bytes());
    key[8..].copy_from_slice(&sub.to_be_bytes());
    key
}

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// The row of `key` at `rev`: seeking to it lands on the newest version at or below `rev`.
pub fn version_row(key: &[u8], rev: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    escape_into(&mut out, key);
    out.extend_from_slice(&TERMINATOR);
    out.extend_from_slice(&(!(rev as u64)).to_be_bytes());
    out
}

/// The first row after every version of `key`.
pub fn after_key_row(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(&mut out, key);
    out.extend_from_slice(&NEXT_KEY);
    out
}

/// Whether `row` is a version of `key`, without decoding it.
pub fn is_row_of(row: &[u8], key: &[u8]) -> bool {
    let mut i = 0;
    for &b in key {
        if row.get(i) != Some(&b) {
            return false;
        }
        i += 1;
        if b == 0 {
            if row.get(i) != Some(&0xFF) {
                return false;
            }
            i += 1;
        }
    }
    row.get(i..i + 2) == Some(&TERMINATOR[..])
}

/// Splits a `kv_key` row into the user key and the main revision.
pub fn parse_row(row: &[u8]) -> Result<(Vec<u8>, i64)> {
    let mut key = Vec::with_capacity(row.len());
    let mut i = 0;
    while i + 1 < row.len() {
        match (row[i], row[i + 1]) {
            (0x00, 0xFF) => {
                key.push(0);
                i += 2;
            }
            (0x00, 0x01) => {
                let rev = row
                    .get(i + 2..i + 10)
                    .ok_or_else(|| Error::Corrupt("short MVCC row".into()))?;
                return Ok((key, !be_u64(rev) as i64));
            }
            (b, _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    Err(Error::Corrupt("MVCC row without terminator".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_key_order_and_round_trips() {
        let keys: Vec<&[u8]> = vec![b"", b"a", b"a\0", b"a\0\0", b"a\x01", b"ab", b"b", b"\xff"];
        let rows: Vec<Vec<u8>> = keys.iter().map(|k| version_row(k, 7)).collect();
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(rows, sorted);
        for (k, row) in keys.iter().zip(&rows) {
            assert_eq!(parse_row(row).unwrap(), (k.to_vec(), 7));
            assert!(after_key_row(k) > *row);
            assert!(is_row_of(row, k));
        }
        assert!(!is_row_of(&version_row(b"a\0", 7), b"a"));
        assert!(!is_row_of(&version_row(b"a", 7), b"a\0"));
        assert!(!is_row_of(&version_row(b"ab", 7), b"a"));
        // Newer versions sort first.
        assert!(version_row(b"a", 9) < version_row(b"a", 8));
    }
}
