//! The read path: [`View`] over a [`ReadView`], the range scan (one seek per key), and
//! etcd's Range semantics on top (count, filters, sort, limit).

use std::collections::BTreeMap;

use super::NEVER_COMPACTED;
use super::compact::{Keep, is_tombstone};
use super::go_sort;
use super::record::Record;
use super::txn::{TxnPath, branch, check_txn_ranges, path_mismatch, txn_path};
use super::types::{
    KeyValue, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse, sort,
};
use crate::error::Result;
use crate::etcd_error::{self as ee, EtcdError};
use crate::storage::{Db, ReadView, parse_row};

/// Called by `View::scan` with a user key and its stored record; returns whether to go on.
type Visitor<'v> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'v;

/// Live keys in key order, each with its version at the revision read.
type Rows = Vec<(Vec<u8>, Record)>;

/// Where a range ends: a single key, up to (excluding) a key, or to the end of the key space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum End<'a> {
    Single,
    Before(&'a [u8]),
    Unbounded,
}

fn end_of<'a>(range_end: &'a [u8]) -> End<'a> {
    match range_end {
        [] => End::Single,
        [0] => End::Unbounded,
        e => End::Before(e),
    }
}

/// A consistent view of the key space: a RocksDB snapshot for client reads, or the live database
/// for the raft thread (the only writer) while it applies.
pub struct View<'a> {
    read: ReadView<'a>,
}

impl<'a> View<'a> {
    pub fn snapshot(db: &'a Db) -> View<'a> {
        View {
            read: db.snapshot(),
        }
    }

    pub(super) fn live(db: &'a Db) -> View<'a> {
        View { read: db.live() }
    }

    /// The revision of the last write; 1 for an empty store, as in etcd.
    pub fn current_revision(&self) -> Result<i64> {
        Ok(self.read.revision()?.unwrap_or(1))
    }

    /// The revision of the last compaction; -1 while the store was never compacted, as in etcd,
    /// where a first compaction at revision 0 is accepted and a second one is refused.
    pub fn compact_revision(&self) -> Result<i64> {
        Ok(self.read.compact_revision()?.unwrap_or(NEVER_COMPACTED))
    }

    /// HashKV as etcd answers it: the hash at `asked` (0 or less: the current revision), the
    /// compact revision (-1 while never compacted) and the current revision; etcd's errors for a
    /// future or compacted revision.
    pub fn hash_kv_at(&self, asked: i64) -> std::result::Result<(u32, i64, i64), EtcdError> {
        let current = self.current_revision().map_err(ee::internal)?;
        let compacted = self.compact_revision().map_err(ee::internal)?;
        let rev = if asked <= 0 { current } else { asked };
        if rev > current {
            return Err(ee::future_rev());
        }
        if rev < compacted {
            return Err(ee::compacted());
        }
        let hash = self.hash_kv(rev, compacted).map_err(ee::internal)?;
        Ok((hash, compacted, current))
    }

    /// etcd's HashKV: a hash of the versions at or below `rev` that the compaction at
    /// `compacted` keeps (tombstones included above it), in key order. Whether the background
    /// pass has deleted the others yet makes no difference, and members that applied the same
    /// entries agree; the value is ours (SHA-256's first four bytes), not etcd's CRC over
    /// bbolt's pages.
    pub fn hash_kv(&self, rev: i64, compacted: i64) -> Result<u32> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let mut keep = Keep::new(compacted);
        let mut it = self.read.versions();
        it.seek_to_first();
        while let (Some(row), Some(record)) = (it.row(), it.value()) {
            let (key, row_rev) = parse_row(row)?;
            if keep.keeps(key, row_rev, is_tombstone(record)) && row_rev <= rev {
                hash.update((row.len() as u32).to_be_bytes());
                hash.update(row);
                hash.update((record.len() as u32).to_be_bytes());
                hash.update(record);
            }
            it.next();
        }
        it.status("hashing the key space")?;
        let digest = hash.finalize();
        Ok(u32::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3],
        ]))
    }

    /// Visits, in key order, the newest version at or below `rev` of every key in the range
    /// (tombstones included) as its stored record; `f` returns false to stop.
    pub(super) fn scan(&self, key: &[u8], end: &End, rev: i64, f: &mut Visitor) -> Result<()> {
        let mut it = self.read.versions();
        it.seek_version(key, rev);
        while let Some(row) = it.row() {
            let (user_key, row_rev) = parse_row(row)?;
            let in_range = match end {
                End::Single => user_key == key,
                End::Before(e) => user_key.as_slice() < *e,
                End::Unbounded => true,
            };
            if !in_range {
                break;
            }
            if row_rev > rev {
                // Only newer versions of this key so far: jump to its version at `rev`.
                it.seek_version(&user_key, rev);
                continue;
            }
            if !f(&user_key, it.value().unwrap_or_default())? || *end == End::Single {
                break;
            }
            it.next_key(&user_key);
        }
        it.status("scanning the key space")
    }

    /// Evaluates a read-only txn's compares on this view.
    #[cfg(test)]
    pub fn evaluate(&self, compares: &[super::types::Compare]) -> Result<bool, EtcdError> {
        super::txn::evaluate(self, None, compares)
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        let current = self.current_revision().map_err(ee::internal)?;
        let compacted = self.compact_revision().map_err(ee::internal)?;
        range(self, None, req, current, compacted)
    }

    /// A txn without writes, answered from this view as etcd answers it: every compare (nested
    /// ones included) first, then the ranges of the chosen branches checked, then run.
    pub fn txn(&self, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let current = self.current_revision().map_err(ee::internal)?;
        let compacted = self.compact_revision().map_err(ee::internal)?;
        let path = txn_path(self, None, t)?;
        check_txn_ranges(t, &path, current, compacted)?;
        let mut resp = self.run_read_only(t, &path, current, compacted)?;
        resp.revision = current;
        Ok(resp)
    }

    fn run_read_only(
        &self,
        t: &TxnRequest,
        path: &TxnPath,
        current: i64,
        compacted: i64,
    ) -> Result<TxnResponse, EtcdError> {
        let mut nested = path.nested.iter();
        let ops = branch(t, path.succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(range(self, None, r, current, compacted)?),
                RequestOp::Txn(n) => {
                    let p = nested.next().ok_or_else(path_mismatch)?;
                    ResponseOp::Txn(self.run_read_only(n, p, current, compacted)?)
                }
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    return Err(ee::internal("a write in a read-only txn"));
                }
            });
        }
        // A nested txn's own header stays empty in etcd; the caller sets the outer one.
        Ok(TxnResponse {
            revision: 0,
            succeeded: path.succeeded,
            responses,
        })
    }
}

/// Writes not yet in RocksDB, newest last per key: what the entries applied so far in this batch
/// changed. Reads during apply look here first.
pub(super) type Overlay = BTreeMap<Vec<u8>, Vec<Record>>;

fn visible(versions: &[Record], rev: i64) -> Option<&Record> {
    versions.iter().rev().find(|r| r.mod_revision <= rev)
}

/// The live keys of the range at `rev`, in key order: how many there are, and the first `keep`
/// of them with their version at `rev`. Counting needs every key, but only the kept ones are
/// decoded and held.
pub(super) fn collect(
    view: &View,
    overlay: Option<&Overlay>,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
    keep: usize,
) -> Result<(usize, Rows)> {
    let end = end_of(range_end);
    if let End::Before(e) = end
        && e <= key
    {
        return Ok((0, Vec::new()));
    }
    let Some(overlay) = overlay.filter(|o| !o.is_empty()) else {
        let mut count = 0usize;
        let mut out = Vec::new();
        view.scan(key, &end, rev, &mut |k, raw| {
            if !is_tombstone(raw) {
                count += 1;
                if out.len() < keep {
                    out.push((k.to_vec(), Record::decode(raw)?));
                }
            }
            Ok(true)
        })?;
        return Ok((count, out));
    };
    // A key the overlay changed may hide or reveal a stored one, so merge everything first; the
    // overlay is one batch of entries, small next to the key space.
    let mut merged: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    view.scan(key, &end, rev, &mut |k, raw| {
        merged.insert(k.to_vec(), Record::decode(raw)?);
        Ok(true)
    })?;
    let upper = match end {
        End::Single => std::ops::Bound::Included(key.to_vec()),
        End::Before(e) => std::ops::Bound::Excluded(e.to_vec()),
        End::Unbounded => std::ops::Bound::Unbounded,
    };
    for (k, versions) in overlay.range((std::ops::Bound::Included(key.to_vec()), upper)) {
        if let Some(r) = visible(versions, rev) {
            merged.insert(k.clone(), r.clone());
        }
    }
    let live: Rows = merged.into_iter().filter(|(_, r)| !r.tombstone).collect();
    let count = live.len();
    Ok((count, live.into_iter().take(keep).collect()))
}

/// etcd's order of two key-values for a sort target (a `Less`); `None` for a target etcd has no
/// sorter for.
pub(super) fn sort_less(target: i32) -> Option<fn(&KeyValue, &KeyValue) -> bool> {
    // etcd compares the revisions and versions by the sign of their difference.
    Some(match target {
        sort::KEY => |a, b| a.key < b.key,
        sort::VERSION => |a, b| a.version.wrapping_sub(b.version) < 0,
        sort::CREATE => |a, b| a.create_revision.wrapping_sub(b.create_revision) < 0,
        sort::MOD => |a, b| a.mod_revision.wrapping_sub(b.mod_revision) < 0,
        sort::VALUE => |a, b| a.value < b.value,
        _ => return None,
    })
}

/// A Range as etcd 3.4 serves it, including its quirks:
/// - the header revision is the current one, whatever revision was read;
/// - `count` is the number of keys in the range at that revision, before filters and limit;
/// - with no sort order and no filter, only the first `limit + 1` keys (in key order) are read,
///   then sorted by the target (ascending when the target is not the key) and cut to `limit`;
///   with a sort order or a filter, every key is read, filtered, sorted, then cut;
/// - an unknown sort order sorts nothing; ties are ordered as Go's `sort.Sort` leaves them.
pub(super) fn range(
    view: &View,
    overlay: Option<&Overlay>,
    req: &RangeRequest,
    current: i64,
    compacted: i64,
) -> Result<RangeResponse, EtcdError> {
    if req.revision > current {
        return Err(ee::future_rev());
    }
    let rev = if req.revision <= 0 {
        current
    } else {
        req.revision
    };
    if rev < compacted {
        return Err(ee::compacted());
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let fetch = if req.sort_order != sort::NONE || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        usize::try_from(req.limit.saturating_add(1)).unwrap_or(usize::MAX)
    };
    let keep = if req.count_only { 0 } else { fetch };
    let (count, rows) =
        collect(view, overlay, &req.key, &req.range_end, rev, keep).map_err(ee::internal)?;
    let mut kvs: Vec<KeyValue> = rows.iter().map(|(k, r)| r.to_kv(k)).collect();
    if filtered {
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
    }
    let order = if req.sort_target != sort::KEY && req.sort_order == sort::NONE {
        sort::ASCEND
    } else {
        req.sort_order
    };
    if order == sort::ASCEND || order == sort::DESCEND {
        // etcd 3.4 has no sorter for an unknown target and crashes; we refuse it instead.
        let less = sort_less(req.sort_target).ok_or_else(ee::invalid_sort_option)?;
        if order == sort::ASCEND {
            go_sort::sort(&mut kvs, &|a: &KeyValue, b: &KeyValue| less(a, b));
        } else {
            go_sort::sort(&mut kvs, &|a: &KeyValue, b: &KeyValue| less(b, a));
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as u64 > req.limit as u64 {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        revision: current,
        kvs,
        more,
        count: count as i64,
    })
}
