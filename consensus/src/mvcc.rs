//! The MVCC key space: etcd's revision model stored in RocksDB, read without an in-memory index.
//!
//! Layout:
//! - `kv_key`: one row per version of a key: `escape(key) ++ 0x00 0x01 ++ !main_revision` (big
//!   endian) -> record. The escaping (0x00 -> 0x00 0xFF, then the 0x00 0x01 terminator) keeps rows
//!   in user-key order whatever bytes a key holds, and the inverted revision puts a key's newest
//!   version first. So "key K at revision R" is one seek to `escape(K) ++ 0x00 0x01 ++ !R`, and a
//!   range walks keys in order, one seek per key, never loading the key index into memory.
//! - `kv_rev`: `main ++ sub` revision -> change kind and key: the change log that compaction and
//!   watch walk in revision order.
//! - `meta`: the current and the compacted revision, updated in the same batch as the rows.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::etcd_error::{self as ee, EtcdError};
use crate::storage::{Batch, Db, ReadView, be_u64, parse_row};

/// The compacted revision of a store that was never compacted (etcd starts at -1 too).
const NEVER_COMPACTED: i64 = -1;

// --------------------------------------------------------------------------------- request types

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: i32,
    pub sort_target: i32,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub revision: i64,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub revision: i64,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// etcd's `RangeRequest.SortOrder` and `SortTarget` numbers.
pub mod sort {
    pub const NONE: i32 = 0;
    pub const ASCEND: i32 = 1;
    pub const DESCEND: i32 = 2;
    pub const KEY: i32 = 0;
    pub const VERSION: i32 = 1;
    pub const CREATE: i32 = 2;
    pub const MOD: i32 = 3;
    pub const VALUE: i32 = 4;
}

pub mod compare {
    pub const EQUAL: i32 = 0;
    pub const GREATER: i32 = 1;
    pub const LESS: i32 = 2;
    pub const NOT_EQUAL: i32 = 3;
    pub const VERSION: i32 = 0;
    pub const CREATE: i32 = 1;
    pub const MOD: i32 = 2;
    pub const VALUE: i32 = 3;
    pub const LEASE: i32 = 4;
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compare {
    pub result: i32,
    pub target: i32,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub version: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub revision: i64,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionRequest {
    pub revision: i64,
    pub physical: bool,
}

// --------------------------------------------------------------------------------- encoding

/// One version of a key as stored: a put or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    tombstone: bool,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
    value: Vec<u8>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33 + self.value.len());
        out.push(self.tombstone as u8);
        for n in [
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    fn decode(v: &[u8]) -> Result<Record> {
        if v.len() < 33 {
            return Err(Error::Corrupt(format!("MVCC record of {} bytes", v.len())));
        }
        let n = |i: usize| be_u64(&v[1 + i * 8..9 + i * 8]) as i64;
        Ok(Record {
            tombstone: v[0] == 1,
            create_revision: n(0),
            mod_revision: n(1),
            version: n(2),
            lease: n(3),
            value: v[33..].to_vec(),
        })
    }

    fn to_kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}

// --------------------------------------------------------------------------------- reading

/// Called by `View::scan` with a user key and its stored record; returns whether to go on.
type Visitor<'v> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'v;

/// Live keys in key order, each with its version at the revision read.
type Rows = Vec<(Vec<u8>, Record)>;

/// Where a range ends: a single key, up to (excluding) a key, or to the end of the key space.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End<'a> {
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

    fn live(db: &'a Db) -> View<'a> {
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

    /// etcd's HashKV: a hash of every stored version (tombstones included) at or below `rev`, in
    /// key order. Members that applied the same entries hold the same rows, so they agree; the
    /// value is ours (SHA-256's first four bytes), not etcd's CRC over bbolt's pages.
    pub fn hash_kv(&self, rev: i64) -> Result<u32> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let mut it = self.read.versions();
        it.seek_to_first();
        while let (Some(row), Some(record)) = (it.row(), it.value()) {
            if parse_row(row)?.1 <= rev {
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
    fn scan(&self, key: &[u8], end: &End, rev: i64, f: &mut Visitor) -> Result<()> {
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
            it.seek_after(&user_key);
        }
        it.status("scanning the key space")
    }

    /// Evaluates a read-only txn's compares on this view.
    pub fn evaluate(&self, compares: &[Compare]) -> Result<bool, EtcdError> {
        evaluate(self, None, compares)
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
type Overlay = BTreeMap<Vec<u8>, Vec<Record>>;

fn visible(versions: &[Record], rev: i64) -> Option<&Record> {
    versions.iter().rev().find(|r| r.mod_revision <= rev)
}

/// A stored record is a tombstone when its first byte says so; no need to decode the value.
fn is_tombstone(raw: &[u8]) -> bool {
    raw.first() == Some(&1)
}

/// The live keys of the range at `rev`, in key order: how many there are, and the first `keep`
/// of them with their version at `rev`. Counting needs every key, but only the kept ones are
/// decoded and held.
fn collect(
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
fn sort_less(target: i32) -> Option<fn(&KeyValue, &KeyValue) -> bool> {
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
fn range(
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

/// Go's `sort.Sort` as built into etcd 3.4.23 (Go 1.19: pattern-defeating quicksort, not stable).
/// etcd sorts range results with it, so equal elements must come out in the order it leaves them;
/// this follows the same steps (pivot choice, partitions, insertion sorts, the seeded pattern
/// breaker, the heapsort fallback) on the same comparisons.
mod go_sort {
    struct Data<'a, T> {
        v: &'a mut [T],
        less: &'a dyn Fn(&T, &T) -> bool,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Hint {
        Unknown,
        Increasing,
        Decreasing,
    }

    /// The number of bits needed to write `x` (Go's `bits.Len`).
    fn bit_len(x: usize) -> usize {
        (usize::BITS - x.leading_zeros()) as usize
    }

    pub fn sort<T>(v: &mut [T], less: &dyn Fn(&T, &T) -> bool) {
        let n = v.len();
        if n <= 1 {
            return;
        }
        let mut d = Data { v, less };
        d.pdqsort(0, n, bit_len(n));
    }

    impl<T> Data<'_, T> {
        fn less(&self, i: usize, j: usize) -> bool {
            (self.less)(&self.v[i], &self.v[j])
        }

        fn swap(&mut self, i: usize, j: usize) {
            self.v.swap(i, j);
        }

        fn insertion_sort(&mut self, a: usize, b: usize) {
            for i in a + 1..b {
                let mut j = i;
                while j > a && self.less(j, j - 1) {
                    self.swap(j, j - 1);
                    j -= 1;
                }
            }
        }

        fn sift_down(&mut self, lo: usize, hi: usize, first: usize) {
            let mut root = lo;
            loop {
                let mut child = 2 * root + 1;
                if child >= hi {
                    return;
                }
                if child + 1 < hi && self.less(first + child, first + child + 1) {
                    child += 1;
                }
                if !self.less(first + root, first + child) {
                    return;
                }
                self.swap(first + root, first + child);
                root = child;
            }
        }

        fn heap_sort(&mut self, a: usize, b: usize) {
            let first = a;
            let hi = b - a;
            for i in (0..=(hi - 1) / 2).rev() {
                self.sift_down(i, hi, first);
            }
            for i in (0..hi).rev() {
                self.swap(first, first + i);
                self.sift_down(0, i, first);
            }
        }

        fn pdqsort(&mut self, mut a: usize, mut b: usize, mut limit: usize) {
            const MAX_INSERTION: usize = 12;
            let mut was_balanced = true;
            let mut was_partitioned = true;
            loop {
                let length = b - a;
                if length <= MAX_INSERTION {
                    self.insertion_sort(a, b);
                    return;
                }
                if limit == 0 {
                    self.heap_sort(a, b);
                    return;
                }
                if !was_balanced {
                    self.break_patterns(a, b);
                    limit -= 1;
                }
                let (mut pivot, mut hint) = self.choose_pivot(a, b);
                if hint == Hint::Decreasing {
                    self.reverse_range(a, b);
                    pivot = (b - 1) - (pivot - a);
                    hint = Hint::Increasing;
                }
                if was_balanced
                    && was_partitioned
                    && hint == Hint::Increasing
                    && self.partial_insertion_sort(a, b)
                {
                    return;
                }
                // Many elements equal to the one before this part: put them first, skip them.
                if a > 0 && !self.less(a - 1, pivot) {
                    a = self.partition_equal(a, b, pivot);
                    continue;
                }
                let (mid, already) = self.partition(a, b, pivot);
                was_partitioned = already;
                let (left, right) = (mid - a, b - mid);
                let threshold = length / 8;
                if left < right {
                    was_balanced = left >= threshold;
                    self.pdqsort(a, mid, limit);
                    a = mid + 1;
                } else {
                    was_balanced = right >= threshold;
                    self.pdqsort(mid + 1, b, limit);
                    b = mid;
                }
            }
        }

        /// Moves the pivot to `a`, then everything less than it before everything not less;
        /// returns where the pivot ends and whether nothing had to move.
        fn partition(&mut self, a: usize, b: usize, pivot: usize) -> (usize, bool) {
            self.swap(a, pivot);
            let (mut i, mut j) = (a + 1, b - 1);
            while i <= j && self.less(i, a) {
                i += 1;
            }
            while i <= j && !self.less(j, a) {
                j -= 1;
            }
            if i > j {
                self.swap(j, a);
                return (j, true);
            }
            self.swap(i, j);
            i += 1;
            j -= 1;
            loop {
                while i <= j && self.less(i, a) {
                    i += 1;
                }
                while i <= j && !self.less(j, a) {
                    j -= 1;
                }
                if i > j {
                    break;
                }
                self.swap(i, j);
                i += 1;
                j -= 1;
            }
            self.swap(j, a);
            (j, false)
        }

        /// Puts the elements equal to the pivot first (none is less); returns where the rest start.
        fn partition_equal(&mut self, a: usize, b: usize, pivot: usize) -> usize {
            self.swap(a, pivot);
            let (mut i, mut j) = (a + 1, b - 1);
            loop {
                while i <= j && !self.less(a, i) {
                    i += 1;
                }
                while i <= j && self.less(a, j) {
                    j -= 1;
                }
                if i > j {
                    return i;
                }
                self.swap(i, j);
                i += 1;
                j -= 1;
            }
        }

        /// Fixes up to five out-of-order neighbours; true if the part ends up sorted.
        fn partial_insertion_sort(&mut self, a: usize, b: usize) -> bool {
            const MAX_STEPS: usize = 5;
            const SHORTEST_SHIFTING: usize = 50;
            let mut i = a + 1;
            for _ in 0..MAX_STEPS {
                while i < b && !self.less(i, i - 1) {
                    i += 1;
                }
                if i == b {
                    return true;
                }
                if b - a < SHORTEST_SHIFTING {
                    return false;
                }
                self.swap(i, i - 1);
                // Shift the smaller one left; Go's loop runs down to index 1 of the whole data.
                if i - a >= 2 {
                    let mut j = i - 1;
                    while j >= 1 {
                        if !self.less(j, j - 1) {
                            break;
                        }
                        self.swap(j, j - 1);
                        j -= 1;
                    }
                }
                // Shift the greater one right.
                if b - i >= 2 {
                    for j in i + 1..b {
                        if !self.less(j, j - 1) {
                            break;
                        }
                        self.swap(j, j - 1);
                    }
                }
            }
            false
        }

        /// Swaps three elements around the middle with pseudo-random others, seeded by the length.
        fn break_patterns(&mut self, a: usize, b: usize) {
            let length = b - a;
            if length >= 8 {
                let mut random = length as u64;
                let modulus = 1usize << bit_len(length);
                let middle = a + (length / 4) * 2;
                for idx in middle - 1..=middle + 1 {
                    random ^= random << 13;
                    random ^= random >> 17;
                    random ^= random << 5;
                    let mut other = (random as usize) & (modulus - 1);
                    if other >= length {
                        other -= length;
                    }
                    self.swap(idx, a + other);
                }
            }
        }

        fn choose_pivot(&mut self, a: usize, b: usize) -> (usize, Hint) {
            const SHORTEST_NINTHER: usize = 50;
            const MAX_SWAPS: usize = 4 * 3;
            let l = b - a;
            let mut swaps = 0;
            let mut i = a + l / 4;
            let mut j = a + l / 4 * 2;
            let mut k = a + l / 4 * 3;
            if l >= 8 {
                if l >= SHORTEST_NINTHER {
                    i = self.median(i - 1, i, i + 1, &mut swaps);
                    j = self.median(j - 1, j, j + 1, &mut swaps);
                    k = self.median(k - 1, k, k + 1, &mut swaps);
                }
                j = self.median(i, j, k, &mut swaps);
            }
            match swaps {
                0 => (j, Hint::Increasing),
                MAX_SWAPS => (j, Hint::Decreasing),
                _ => (j, Hint::Unknown),
            }
        }

        fn order2(&self, a: usize, b: usize, swaps: &mut usize) -> (usize, usize) {
            if self.less(b, a) {
                *swaps += 1;
                (b, a)
            } else {
                (a, b)
            }
        }

        fn median(&self, a: usize, b: usize, c: usize, swaps: &mut usize) -> usize {
            let (a, b) = self.order2(a, b, swaps);
            let (b, _c) = self.order2(b, c, swaps);
            let (_a, b) = self.order2(a, b, swaps);
            b
        }

        fn reverse_range(&mut self, a: usize, b: usize) {
            let (mut i, mut j) = (a, b - 1);
            while i < j {
                self.swap(i, j);
                i += 1;
                j -= 1;
            }
        }
    }
}

// --------------------------------------------------------------------------------- txns

/// Which branch each txn takes, decided before any of its operations runs: etcd evaluates the
/// compares of the txn and of every nested txn on the branches taken, all on the state before
/// the txn, so a nested compare never sees a write of its own txn.
#[derive(Debug)]
struct TxnPath {
    succeeded: bool,
    /// The paths of the nested txns of the chosen branch, in order.
    nested: Vec<TxnPath>,
}

fn branch(t: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded { &t.success } else { &t.failure }
}

fn path_mismatch() -> EtcdError {
    ee::internal("txn path does not match the request")
}

fn txn_path(view: &View, overlay: Option<&Overlay>, t: &TxnRequest) -> Result<TxnPath, EtcdError> {
    let succeeded = evaluate(view, overlay, &t.compare)?;
    let nested = branch(t, succeeded)
        .iter()
        .filter_map(|op| match op {
            RequestOp::Txn(n) => Some(txn_path(view, overlay, n)),
            _ => None,
        })
        .collect::<Result<_, _>>()?;
    Ok(TxnPath { succeeded, nested })
}

/// etcd 3.4 treats a txn as a write unless every operation of both branches is a range (a
/// nested txn counts as a write, whatever it holds).
fn txn_writes(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| !matches!(op, RequestOp::Range(_)))
}

/// etcd's check of the ranges on a txn's path, before anything runs: a revision other than 0
/// must be neither in the future nor compacted. Unlike a plain Range, a negative revision counts
/// as compacted here once anything was compacted (or when below -1).
fn check_txn_ranges(
    t: &TxnRequest,
    path: &TxnPath,
    current: i64,
    compacted: i64,
) -> Result<(), EtcdError> {
    let mut nested = path.nested.iter();
    for op in branch(t, path.succeeded) {
        match op {
            RequestOp::Range(r) => {
                if r.revision == 0 {
                    continue;
                }
                if r.revision > current {
                    return Err(ee::future_rev());
                }
                if r.revision < compacted {
                    return Err(ee::compacted());
                }
            }
            RequestOp::Txn(n) => {
                let p = nested.next().ok_or_else(path_mismatch)?;
                check_txn_ranges(n, p, current, compacted)?;
            }
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
        }
    }
    Ok(())
}
// --------------------------------------------------------------------------------- applying

/// What a put needs of a key's newest version when it asks for neither the previous value nor
/// `ignore_value`: everything but the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    create_revision: i64,
    version: i64,
    lease: i64,
}

impl Meta {
    fn of(r: &Record) -> Option<Meta> {
        (!r.tombstone).then_some(Meta {
            create_revision: r.create_revision,
            version: r.version,
            lease: r.lease,
        })
    }
}

/// The newest version's metadata of recently written or read keys (`None`: no live version),
/// so a put of a hot key needs no seek. Bounded: it is emptied when its keys pass
/// `LATEST_CACHE_BYTES`; it is never the whole key index.
#[derive(Default)]
pub struct LatestCache {
    map: std::collections::HashMap<Vec<u8>, Option<Meta>>,
    key_bytes: usize,
}

const LATEST_CACHE_BYTES: usize = 16 << 20;

impl LatestCache {
    fn get(&self, key: &[u8]) -> Option<Option<Meta>> {
        self.map.get(key).copied()
    }

    fn insert(&mut self, key: &[u8], meta: Option<Meta>) {
        if let Some(slot) = self.map.get_mut(key) {
            *slot = meta;
            return;
        }
        if self.key_bytes + key.len() > LATEST_CACHE_BYTES {
            self.clear();
        }
        self.key_bytes += key.len() + 32;
        self.map.insert(key.to_vec(), meta);
    }

    fn clear(&mut self) {
        self.map.clear();
        self.key_bytes = 0;
    }
}

/// What the state machine carries from one batch of entries to the next, so a batch starts
/// without reading it back: the revisions and the latest-version cache.
pub struct MvccState {
    revision: i64,
    compact_revision: i64,
    latest: LatestCache,
}

/// The newest live version of `key` that RocksDB holds.
fn newest_stored(db: &Db, key: &[u8]) -> Result<Option<Record>> {
    let mut found = None;
    View::live(db).scan(key, &End::Single, i64::MAX, &mut |_, raw| {
        found = Some(Record::decode(raw)?);
        Ok(false)
    })?;
    Ok(found.filter(|r| !r.tombstone))
}

impl MvccState {
    /// Caches `key`'s newest version ahead of the apply that needs it: a leader looks it up while
    /// its proposal replicates, instead of between commit and answer. Only between batches
    /// (RocksDB then holds every applied write), like every cache entry.
    pub fn prefetch(&mut self, db: &Db, key: &[u8]) -> Result<()> {
        if self.latest.get(key).is_none() {
            let meta = newest_stored(db, key)?.as_ref().and_then(Meta::of);
            self.latest.insert(key, meta);
        }
        Ok(())
    }

    pub fn load(db: &Db) -> Result<MvccState> {
        let view = View::live(db);
        Ok(MvccState {
            revision: view.current_revision()?,
            compact_revision: view.compact_revision()?,
            latest: LatestCache::default(),
        })
    }
}

/// The write side of the state machine for one batch of committed entries: their changes, the
/// new revisions and the applied index go into one RocksDB write batch.
pub struct Applier<'a> {
    db: &'a Db,
    batch: Batch<'a>,
    overlay: Overlay,
    /// The versions written by the request being applied, in sub-revision order: they reach the
    /// batch only once the whole request succeeded, so a refused one leaves nothing behind.
    staged: Vec<(Vec<u8>, Record)>,
    revision: i64,
    compact_revision: i64,
    latest: LatestCache,
    /// The revision the entry being applied writes at, and the next sub revision.
    main: i64,
    sub: i64,
}

impl<'a> Applier<'a> {
    pub fn new(db: &'a Db) -> Result<Applier<'a>> {
        Ok(Applier::resume(db, MvccState::load(db)?))
    }

    /// Continues from the state the previous batch ended with (`into_state`).
    pub fn resume(db: &'a Db, state: MvccState) -> Applier<'a> {
        Applier {
            db,
            batch: db.batch(),
            overlay: Overlay::new(),
            staged: Vec::new(),
            revision: state.revision,
            compact_revision: state.compact_revision,
            latest: state.latest,
            main: 0,
            sub: 0,
        }
    }

    /// What the next batch starts from; call after `flush`.
    pub fn into_state(self) -> MvccState {
        MvccState {
            revision: self.revision,
            compact_revision: self.compact_revision,
            latest: self.latest,
        }
    }

    pub fn batch(&mut self) -> &mut Batch<'a> {
        &mut self.batch
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Records that every entry up to `index` is applied, in the same batch as its effects.
    pub fn set_applied(&mut self, index: u64) {
        self.batch.put_applied(index);
    }

    /// Writes everything applied so far, with the revisions and the applied index, in one batch.
    /// Neither fsync nor RocksDB WAL: the entries are durable in the raft log, and a crash that
    /// loses this write only means they are applied again from there, exactly once, since the
    /// applied index moves with them.
    pub fn flush(&mut self) -> Result<()> {
        self.batch
            .put_revisions(self.revision, self.compact_revision);
        self.db
            .write_applied(std::mem::replace(&mut self.batch, self.db.batch()))?;
        self.overlay.clear();
        Ok(())
    }

    fn begin(&mut self) {
        self.main = self.revision + 1;
        self.sub = 0;
        self.staged.clear();
    }

    /// Ends a request: its versions go into the batch and the revision moves if it succeeded and
    /// wrote anything; if it failed, whatever it wrote is forgotten.
    fn end<T>(&mut self, result: Result<T, EtcdError>) -> Result<T, EtcdError> {
        let staged = std::mem::take(&mut self.staged);
        if result.is_err() {
            for (key, _) in staged.iter().rev() {
                if let Some(versions) = self.overlay.get_mut(key) {
                    versions.pop();
                    if versions.is_empty() {
                        self.overlay.remove(key);
                    }
                }
            }
            self.sub = 0;
            return result;
        }
        for (sub, (key, record)) in staged.iter().enumerate() {
            self.latest.insert(key, Meta::of(record));
            let mut change = Vec::with_capacity(key.len() + 1);
            change.push(record.tombstone as u8);
            change.extend_from_slice(key);
            self.batch
                .put_version(key, self.main, sub as i64, &change, &record.encode());
        }
        if !staged.is_empty() {
            self.revision = self.main;
        }
        result
    }

    fn latest(&self, key: &[u8]) -> Result<Option<Record>> {
        if let Some(r) = self.overlay.get(key).and_then(|v| v.last()) {
            return Ok(Some(r.clone()).filter(|r| !r.tombstone));
        }
        if self.latest.get(key) == Some(None) {
            return Ok(None);
        }
        newest_stored(self.db, key)
    }

    /// The newest version's metadata, from the overlay, the cache, or RocksDB (then cached).
    fn latest_meta(&mut self, key: &[u8]) -> Result<Option<Meta>> {
        if let Some(r) = self.overlay.get(key).and_then(|v| v.last()) {
            return Ok(Meta::of(r));
        }
        if let Some(meta) = self.latest.get(key) {
            return Ok(meta);
        }
        let meta = self.latest(key)?.as_ref().and_then(Meta::of);
        // Only what RocksDB holds goes in the cache: the overlay is empty for this key here.
        self.latest.insert(key, meta);
        Ok(meta)
    }

    fn write(&mut self, key: &[u8], record: Record) {
        self.overlay
            .entry(key.to_vec())
            .or_default()
            .push(record.clone());
        self.staged.push((key.to_vec(), record));
        self.sub += 1;
    }

    /// The revision a read inside the entry being applied sees: the one being written once
    /// anything was written, else the last one.
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.revision
        }
    }

    /// Range inside a write: sees the writes of the entry being applied.
    fn read_range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        range(
            &View::live(self.db),
            Some(&self.overlay),
            req,
            self.read_revision(),
            self.compact_revision,
        )
    }

    fn do_put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
        if !(req.prev_kv || req.ignore_value || req.ignore_lease) {
            return self.put_without_prev_value(req);
        }
        let prev = self.latest(&req.key).map_err(ee::internal)?;
        let (value, lease) = match (&prev, req.ignore_value, req.ignore_lease) {
            (None, true, _) | (None, _, true) => return Err(ee::key_not_found()),
            (p, iv, il) => (
                if iv {
                    p.as_ref().map(|p| p.value.clone()).unwrap_or_default()
                } else {
                    req.value.clone()
                },
                if il {
                    p.as_ref().map(|p| p.lease).unwrap_or_default()
                } else {
                    req.lease
                },
            ),
        };
        if lease != 0 {
            // No lease can be granted yet, so every lease ID is unknown.
            return Err(ee::lease_not_found());
        }
        let record = Record {
            tombstone: false,
            create_revision: prev.as_ref().map_or(self.main, |p| p.create_revision),
            mod_revision: self.main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value,
        };
        self.write(&req.key, record);
        Ok(PutResponse {
            revision: self.main,
            prev_kv: if req.prev_kv {
                prev.map(|p| p.to_kv(&req.key))
            } else {
                None
            },
        })
    }

    /// The common put: the previous version's metadata is enough, and usually cached.
    fn put_without_prev_value(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
        if req.lease != 0 {
            // No lease can be granted yet, so every lease ID is unknown.
            return Err(ee::lease_not_found());
        }
        let prev = self.latest_meta(&req.key).map_err(ee::internal)?;
        let record = Record {
            tombstone: false,
            create_revision: prev.map_or(self.main, |p| p.create_revision),
            mod_revision: self.main,
            version: prev.map_or(1, |p| p.version + 1),
            lease: req.lease,
            value: req.value.clone(),
        };
        self.write(&req.key, record);
        Ok(PutResponse {
            revision: self.main,
            prev_kv: None,
        })
    }

    fn do_delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError> {
        let (_, rows) = collect(
            &View::live(self.db),
            Some(&self.overlay),
            &req.key,
            &req.range_end,
            i64::MAX,
            usize::MAX,
        )
        .map_err(ee::internal)?;
        let mut prev_kvs = Vec::new();
        for (key, r) in &rows {
            if req.prev_kv {
                prev_kvs.push(r.to_kv(key));
            }
            let tombstone = Record {
                tombstone: true,
                create_revision: 0,
                mod_revision: self.main,
                version: 0,
                lease: 0,
                value: Vec::new(),
            };
            self.write(key, tombstone);
        }
        Ok(DeleteRangeResponse {
            // Like etcd: the revision being written once anything in this request changed.
            revision: self.read_revision(),
            deleted: rows.len() as i64,
            prev_kvs,
        })
    }

    /// etcd's check of the puts on a write txn's path, on the state before it and before any
    /// range is checked: ignore_value/ignore_lease need the key, and a lease must exist.
    fn check_txn_puts(&self, t: &TxnRequest, path: &TxnPath) -> Result<(), EtcdError> {
        let mut nested = path.nested.iter();
        for op in branch(t, path.succeeded) {
            match op {
                RequestOp::Put(p) => {
                    if (p.ignore_value || p.ignore_lease)
                        && self.latest(&p.key).map_err(ee::internal)?.is_none()
                    {
                        return Err(ee::key_not_found());
                    }
                    if p.lease != 0 {
                        return Err(ee::lease_not_found());
                    }
                }
                RequestOp::Txn(n) => {
                    let p = nested.next().ok_or_else(path_mismatch)?;
                    self.check_txn_puts(n, p)?;
                }
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(())
    }

    fn do_txn(&mut self, t: &TxnRequest, path: &TxnPath) -> Result<TxnResponse, EtcdError> {
        let mut nested = path.nested.iter();
        let ops = branch(t, path.succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.read_range(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.do_put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.do_delete(d)?),
                RequestOp::Txn(n) => {
                    let p = nested.next().ok_or_else(path_mismatch)?;
                    ResponseOp::Txn(self.do_txn(n, p)?)
                }
            });
        }
        // etcd leaves a nested txn's header empty (revision 0); the outer one is set by `txn`.
        Ok(TxnResponse {
            revision: 0,
            succeeded: path.succeeded,
            responses,
        })
    }

    /// A Put as etcd applies it outside a txn: the lease is looked up first, then the previous
    /// key that ignore_value/ignore_lease need.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
        if req.lease != 0 {
            return Err(ee::lease_not_found());
        }
        self.begin();
        let r = self.do_put(req);
        self.end(r)
    }

    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        self.begin();
        let r = self.do_delete(req);
        self.end(r)
    }

    /// A txn as etcd applies it: the path of every compare first, on the state before the txn;
    /// then etcd's checks of what would make it fail half-way (puts, then ranges); then the
    /// operations, all at one revision. One that still fails half-way (an ignore_value put of a
    /// key an earlier delete "from key" removed, which etcd's checks miss and etcd 3.4 crashes
    /// on) is refused with that error, and writes nothing.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.begin();
        let path = txn_path(&View::live(self.db), Some(&self.overlay), req)?;
        if txn_writes(req) {
            self.check_txn_puts(req, &path)?;
        }
        check_txn_ranges(req, &path, self.revision, self.compact_revision)?;
        let r = self.do_txn(req, &path);
        let mut resp = self.end(r)?;
        resp.revision = self.revision;
        Ok(resp)
    }

    /// Compaction: forget every version older than `revision` except the one still visible there.
    /// Writes what is pending first, so the scan sees every version.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<i64, EtcdError> {
        if req.revision <= self.compact_revision {
            return Err(ee::compacted());
        }
        if req.revision > self.revision {
            return Err(ee::future_rev());
        }
        // The latest-version cache stays valid: compaction keeps every key's newest version,
        // and drops a tombstone only where the key already has no live version.
        self.flush().map_err(ee::internal)?;
        self.compact_revision = req.revision;
        let live = self.db.live();
        let mut it = live.versions();
        it.seek_to_first();
        let mut current_key: Option<Vec<u8>> = None;
        let mut kept = false;
        while let Some(row) = it.row() {
            let (key, rev) = parse_row(row).map_err(ee::internal)?;
            if current_key.as_deref() != Some(&key) {
                current_key = Some(key.clone());
                kept = false;
            }
            if rev <= req.revision {
                let tombstone = it.value().is_some_and(|v| v.first() == Some(&1));
                if kept || tombstone {
                    self.batch.delete_version_row(row);
                }
                kept = true;
            }
            it.next();
        }
        it.status("compacting").map_err(ee::internal)?;
        self.batch.delete_changes_through(req.revision);
        Ok(self.revision)
    }
}

/// A txn's compares, all of which must hold, at the latest revision.
fn evaluate(
    view: &View,
    overlay: Option<&Overlay>,
    compares: &[Compare],
) -> Result<bool, EtcdError> {
    for c in compares {
        let (_, rows) = collect(view, overlay, &c.key, &c.range_end, i64::MAX, usize::MAX)
            .map_err(ee::internal)?;
        let holds = if rows.is_empty() {
            // A value cannot be compared with a key that does not exist.
            c.target != compare::VALUE && compare_kv(c, &KeyValue::default())
        } else {
            rows.iter().all(|(k, r)| compare_kv(c, &r.to_kv(k)))
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One compare against one key as etcd does it: an unknown target compares as equal, and an
/// unknown result holds.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match c.target {
        compare::VALUE => kv.value.as_slice().cmp(c.value.as_slice()),
        compare::CREATE => kv.create_revision.cmp(&c.create_revision),
        compare::MOD => kv.mod_revision.cmp(&c.mod_revision),
        compare::VERSION => kv.version.cmp(&c.version),
        compare::LEASE => kv.lease.cmp(&c.lease),
        _ => Ordering::Equal,
    };
    match c.result {
        compare::EQUAL => ord == Ordering::Equal,
        compare::NOT_EQUAL => ord != Ordering::Equal,
        compare::GREATER => ord == Ordering::Greater,
        compare::LESS => ord == Ordering::Less,
        _ => true,
    }
}

// --------------------------------------------------------------------------------- validation

/// Checks done before a request is proposed, as etcd's gRPC layer does: nothing invalid reaches
/// the raft log. The client gateway runs the same checks first; these never refuse what etcd
/// accepts.
pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(ee::empty_key());
    }
    // etcd 3.4 ignores an unknown sort order (nothing is sorted) but has no sorter for an
    // unknown target, which crashes it whenever it sorts; refused as etcd 3.5 refuses it.
    let sorts = (sort::NONE..=sort::DESCEND).contains(&r.sort_order);
    if sorts && sort_less(r.sort_target).is_none() {
        return Err(ee::invalid_sort_option());
    }
    Ok(())
}

pub fn check_put(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(ee::empty_key());
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(ee::value_provided());
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(ee::lease_provided());
    }
    Ok(())
}

pub fn check_delete(d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if d.key.is_empty() {
        return Err(ee::empty_key());
    }
    Ok(())
}

/// etcd's checks of a Txn: the op counts and every op, then no key written twice (or written and
/// deleted) by one branch.
pub fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    check_txn_shape(t, i64::try_from(max_ops).unwrap_or(i64::MAX))?;
    check_overlaps(&t.success)?;
    check_overlaps(&t.failure)?;
    Ok(())
}

/// The largest of the three lists counts against the limit, and a nested txn gets only what that
/// leaves (possibly nothing, or less than nothing, which refuses even an empty nested txn).
fn check_txn_shape(t: &TxnRequest, max_ops: i64) -> Result<(), EtcdError> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    let ops = i64::try_from(ops).unwrap_or(i64::MAX);
    if ops > max_ops {
        return Err(ee::too_many_ops());
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ee::empty_key());
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => check_range(r)?,
            RequestOp::Put(p) => check_put(p)?,
            RequestOp::DeleteRange(d) => check_delete(d)?,
            RequestOp::Txn(n) => check_txn_shape(n, max_ops - ops)?,
        }
    }
    Ok(())
}

/// Deleted spans `[begin, end)` of one branch; a single key `k` is `[k, k\0)`. A span whose end
/// is not above its begin covers nothing, as in etcd's interval tree (so a delete "from key",
/// whose range end is "\0", never conflicts).
#[derive(Default)]
struct DeletedSpans(Vec<(Vec<u8>, Vec<u8>)>);

impl DeletedSpans {
    fn insert(&mut self, key: &[u8], range_end: &[u8]) {
        let end = if range_end.is_empty() {
            let mut k = key.to_vec();
            k.push(0);
            k
        } else {
            range_end.to_vec()
        };
        self.0.push((key.to_vec(), end));
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(begin, end)| begin.as_slice() <= key && key < end.as_slice())
    }

    /// A nested branch's spans join this level's, as etcd carries over those that end above "\0".
    fn absorb(&mut self, other: DeletedSpans) {
        self.0.extend(
            other
                .0
                .into_iter()
                .filter(|(_, end)| end.as_slice() > [0u8].as_slice()),
        );
    }
}

/// One branch's puts and deletes, nested txns included, in etcd's order of checks: a key put
/// twice, or put and deleted, refuses the txn. The same key in both branches of one nested txn
/// is fine, since only one runs.
fn check_overlaps(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, DeletedSpans), EtcdError> {
    let mut dels = DeletedSpans::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            dels.insert(&d.key, &d.range_end);
        }
    }
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_overlaps(&t.success)?;
        let (puts_else, dels_else) = check_overlaps(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.covers(k) {
                return Err(ee::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.covers(&k) {
                return Err(ee::duplicate_key());
            }
            puts.insert(k);
        }
        dels.absorb(dels_then);
        dels.absorb(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || dels.covers(&p.key) {
            return Err(ee::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::schema::Cf;

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    fn get(key: &str, end: &str, rev: i64) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            range_end: end.into(),
            revision: rev,
            ..Default::default()
        }
    }

    fn apply<T>(db: &Db, f: impl FnOnce(&mut Applier) -> T) -> T {
        let mut a = Applier::new(db).unwrap();
        let out = f(&mut a);
        a.flush().unwrap();
        out
    }

    #[test]
    fn revisions_versions_history_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let r = apply(&db, |a| a.put(&put("foo", "1")).unwrap());
        assert_eq!(r.revision, 2); // an empty store is at revision 1, as in etcd
        let r = apply(&db, |a| {
            a.put(&put("foo", "2")).unwrap();
            a.put(&PutRequest {
                prev_kv: true,
                ..put("foo", "3")
            })
            .unwrap()
        });
        assert_eq!(r.revision, 4);
        assert_eq!(r.prev_kv.unwrap().value, b"2");
        let view = View::snapshot(&db);
        let now = view.range(&get("foo", "", 0)).unwrap();
        assert_eq!(now.revision, 4);
        assert_eq!(
            now.kvs,
            vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 4,
                version: 3,
                value: b"3".to_vec(),
                lease: 0
            }]
        );
        assert_eq!(view.range(&get("foo", "", 3)).unwrap().kvs[0].value, b"2");
        assert_eq!(view.range(&get("foo", "", 5)), Err(ee::future_rev()));
        drop(view);

        let d = apply(&db, |a| {
            a.delete_range(&DeleteRangeRequest {
                key: b"foo".to_vec(),
                prev_kv: true,
                ..Default::default()
            })
            .unwrap()
        });
        assert_eq!((d.deleted, d.revision), (1, 5));
        // Deleting nothing does not move the revision.
        let d = apply(&db, |a| {
            a.delete_range(&DeleteRangeRequest {
                key: b"foo".to_vec(),
                ..Default::default()
            })
            .unwrap()
        });
        assert_eq!((d.deleted, d.revision), (0, 5));
        let r = apply(&db, |a| a.put(&put("foo", "again")).unwrap());
        let view = View::snapshot(&db);
        let kv = &view.range(&get("foo", "", 0)).unwrap().kvs[0];
        assert_eq!((kv.create_revision, kv.version, r.revision), (6, 1, 6));
        assert!(view.range(&get("foo", "", 5)).unwrap().kvs.is_empty());
        assert_eq!(view.range(&get("foo", "", 4)).unwrap().kvs[0].value, b"3");
    }

    #[test]
    fn ranges_prefixes_limits_sort_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        for (k, v) in [
            ("a", "9"),
            ("b\0", "8"),
            ("b", "7"),
            ("ba", "6"),
            ("c", "5"),
        ] {
            apply(&db, |a| a.put(&put(k, v)).unwrap());
        }
        let view = View::snapshot(&db);
        let keys = |r: RangeResponse| r.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        assert_eq!(
            keys(view.range(&get("b", "c", 0)).unwrap()),
            vec![b"b".to_vec(), b"b\0".to_vec(), b"ba".to_vec()]
        );
        assert_eq!(view.range(&get("\0", "\0", 0)).unwrap().count, 5);
        let limited = view
            .range(&RangeRequest {
                limit: 2,
                ..get("a", "\0", 0)
            })
            .unwrap();
        assert_eq!(
            (limited.kvs.len(), limited.more, limited.count),
            (2, true, 5)
        );
        let by_value = view
            .range(&RangeRequest {
                sort_order: 2,
                sort_target: 4,
                ..get("a", "\0", 0)
            })
            .unwrap();
        assert_eq!(by_value.kvs[0].value, b"9");
        let counted = view
            .range(&RangeRequest {
                count_only: true,
                ..get("a", "c", 0)
            })
            .unwrap();
        assert_eq!((counted.kvs.len(), counted.count), (0, 4));
        assert!(view.range(&get("c", "a", 0)).unwrap().kvs.is_empty());
    }

    #[test]
    fn txn_compares_branches_and_sees_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        apply(&db, |a| a.put(&put("k", "v1")).unwrap());
        let txn = TxnRequest {
            compare: vec![Compare {
                target: compare::VALUE,
                result: compare::EQUAL,
                key: b"k".to_vec(),
                value: b"v1".to_vec(),
                ..Default::default()
            }],
            success: vec![
                RequestOp::Put(put("k", "v2")),
                RequestOp::Put(put("other", "x")),
                RequestOp::Range(get("k", "", 0)),
            ],
            failure: vec![RequestOp::Range(get("k", "", 0))],
        };
        let r = apply(&db, |a| a.txn(&txn).unwrap());
        assert!(r.succeeded);
        assert_eq!(r.revision, 3);
        let ResponseOp::Range(seen) = &r.responses[2] else {
            panic!("expected a range response")
        };
        assert_eq!(seen.kvs[0].value, b"v2");
        // One revision for the whole txn.
        let view = View::snapshot(&db);
        assert_eq!(
            view.range(&get("other", "", 0)).unwrap().kvs[0].mod_revision,
            3
        );
        drop(view);
        let r = apply(&db, |a| a.txn(&txn).unwrap());
        assert!(!r.succeeded);
        assert_eq!(r.revision, 3);
        // A missing key compares as version 0.
        let missing = TxnRequest {
            compare: vec![Compare {
                target: compare::VERSION,
                result: compare::EQUAL,
                key: b"nope".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(apply(&db, |a| a.txn(&missing).unwrap()).succeeded);
        // A failing branch writes nothing.
        let bad = TxnRequest {
            success: vec![
                RequestOp::Put(put("z", "1")),
                RequestOp::Put(PutRequest {
                    ignore_value: true,
                    ..put("nope", "")
                }),
            ],
            ..Default::default()
        };
        assert_eq!(apply(&db, |a| a.txn(&bad)), Err(ee::key_not_found()));
        let view = View::snapshot(&db);
        assert!(view.range(&get("z", "", 0)).unwrap().kvs.is_empty());
        assert_eq!(view.current_revision().unwrap(), 3);
    }

    #[test]
    fn compaction_drops_old_versions_and_refuses_old_reads() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        for v in ["1", "2", "3"] {
            apply(&db, |a| a.put(&put("k", v)).unwrap());
        }
        apply(&db, |a| {
            a.delete_range(&DeleteRangeRequest {
                key: b"gone".to_vec(),
                ..Default::default()
            })
            .unwrap()
        });
        apply(&db, |a| {
            a.compact(&CompactionRequest {
                revision: 3,
                physical: true,
            })
            .unwrap()
        });
        let view = View::snapshot(&db);
        assert_eq!(view.range(&get("k", "", 2)), Err(ee::compacted()));
        assert_eq!(view.range(&get("k", "", 3)).unwrap().kvs[0].value, b"2");
        assert_eq!(view.range(&get("k", "", 0)).unwrap().kvs[0].value, b"3");
        drop(view);
        // Only the versions at revisions 3 and 4 of "k" are left, and the tombstone-free "gone"
        // never had a row.
        let rows: Vec<(Vec<u8>, i64)> = db
            .keys(Cf::Key)
            .iter()
            .map(|r| parse_row(r).unwrap())
            .collect();
        assert_eq!(rows, vec![(b"k".to_vec(), 4), (b"k".to_vec(), 3)]);
        assert_eq!(
            apply(&db, |a| a.compact(&CompactionRequest {
                revision: 3,
                physical: false
            })),
            Err(ee::compacted())
        );
    }

    #[test]
    fn validation_matches_etcd() {
        assert_eq!(check_put(&put("", "v")), Err(ee::empty_key()));
        let dup = TxnRequest {
            success: vec![RequestOp::Put(put("a", "1")), RequestOp::Put(put("a", "2"))],
            ..Default::default()
        };
        assert_eq!(check_txn(&dup, 128), Err(ee::duplicate_key()));
        let overlap = TxnRequest {
            success: vec![
                RequestOp::Put(put("ab", "1")),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                    prev_kv: false,
                }),
            ],
            ..Default::default()
        };
        assert_eq!(check_txn(&overlap, 128), Err(ee::duplicate_key()));
        let many = TxnRequest {
            success: (0..3)
                .map(|i| RequestOp::Put(put(&format!("k{i}"), "")))
                .collect(),
            ..Default::default()
        };
        assert_eq!(check_txn(&many, 2), Err(ee::too_many_ops()));
        assert!(check_txn(&many, 3).is_ok());
    }

    fn keys_of(r: &RangeResponse, strip: usize) -> String {
        r.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[strip..]).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn sorted(target: i32, order: i32, prefix: &str) -> RangeRequest {
        RangeRequest {
            sort_target: target,
            sort_order: order,
            ..get(prefix, &format!("{prefix}\x7f"), 0)
        }
    }

    /// Orders recorded from etcd 3.4.23 (Go 1.19's unstable sort) for the same writes.
    #[test]
    fn sort_ties_come_out_as_etcd_leaves_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let vals = ["v", "w", "", "x", "v"];
        for i in 0..30usize {
            for _ in 0..(i % 3) + 1 {
                apply(&db, |a| {
                    a.put(&put(&format!("t{i:02}"), vals[(i * 7) % 5])).unwrap()
                });
            }
        }
        for i in 0..64usize {
            let n = if i % 9 == 0 {
                2
            } else if i % 13 == 5 {
                3
            } else {
                1
            };
            for _ in 0..n {
                apply(&db, |a| {
                    a.put(&put(&format!("u{i:02}"), &format!("{}", (i * 37) % 5)))
                        .unwrap()
                });
            }
        }
        let view = View::snapshot(&db);
        let cases = [
            (
                sort::VERSION,
                sort::ASCEND,
                "t",
                "12,27,24,03,21,18,06,00,15,09,07,04,10,13,28,01,16,25,22,19,08,20,05,23,02,17,26,11,14,29",
            ),
            (
                sort::VERSION,
                sort::DESCEND,
                "t",
                "11,29,02,26,23,05,20,17,08,14,07,04,01,13,28,25,16,10,22,19,06,21,18,00,24,15,03,27,09,12",
            ),
            (
                sort::VALUE,
                sort::ASCEND,
                "t",
                "06,01,26,21,16,11,07,17,27,02,10,05,12,25,22,15,20,00,18,03,23,13,08,28,19,04,14,24,09,29",
            ),
            (
                sort::VALUE,
                sort::DESCEND,
                "t",
                "29,04,24,19,09,14,13,28,03,23,08,18,07,25,02,15,27,17,10,00,20,12,22,05,06,21,26,16,11,01",
            ),
            (
                sort::VERSION,
                sort::ASCEND,
                "u",
                "33,59,02,03,04,62,06,07,08,30,32,11,12,13,14,15,16,17,60,19,20,21,22,23,24,25,26,58,28,29,61,01,10,56,34,35,55,37,38,39,40,41,42,43,53,52,46,47,48,49,50,51,45,54,36,00,27,18,09,63,44,57,31,05",
            ),
            (
                sort::VERSION,
                sort::DESCEND,
                "u",
                "05,31,57,44,00,09,18,27,63,54,45,36,32,37,11,12,13,14,15,16,17,19,20,21,22,23,24,25,26,28,29,30,08,33,34,35,07,10,38,39,40,41,42,43,06,04,46,47,48,49,50,51,52,53,03,55,56,02,58,59,60,61,62,01",
            ),
            (
                sort::VALUE,
                sort::ASCEND,
                "u",
                "45,35,30,00,20,05,55,40,15,50,10,60,25,18,03,08,53,38,48,63,43,33,58,23,13,28,31,16,26,01,61,56,06,21,51,11,36,46,41,54,34,29,24,14,44,59,39,04,19,49,09,37,52,07,27,32,22,57,47,12,02,42,62,17",
            ),
            (
                sort::VALUE,
                sort::DESCEND,
                "u",
                "37,62,12,22,32,57,27,17,52,42,07,47,02,04,49,09,39,14,54,19,34,44,59,29,24,16,41,01,61,56,06,31,21,26,51,11,36,46,53,08,63,38,28,43,13,03,18,58,48,23,33,20,00,50,30,55,10,05,35,45,60,15,25,40",
            ),
        ];
        for (target, order, prefix, want) in cases {
            let got = view.range(&sorted(target, order, prefix)).unwrap();
            assert_eq!(
                keys_of(&got, 1),
                want,
                "target {target} order {order} {prefix}"
            );
        }
    }

    #[test]
    fn limit_without_sort_order_sorts_only_the_first_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let vals = ["v", "w", "", "x", "v"];
        for i in 0..30usize {
            for _ in 0..(i % 3) + 1 {
                apply(&db, |a| {
                    a.put(&put(&format!("t{i:02}"), vals[(i * 7) % 5])).unwrap()
                });
            }
        }
        let view = View::snapshot(&db);
        // No order but a target: etcd reads limit + 1 keys in key order, sorts them ascending,
        // then cuts (recorded from etcd 3.4.23).
        let r = view
            .range(&RangeRequest {
                limit: 13,
                ..sorted(sort::VERSION, sort::NONE, "t")
            })
            .unwrap();
        assert_eq!(keys_of(&r, 1), "06,00,12,03,09,04,01,10,07,13,05,08,11");
        assert_eq!((r.more, r.count), (true, 30));
        // With an order, every key is sorted first.
        let r = view
            .range(&RangeRequest {
                limit: 3,
                ..sorted(sort::VERSION, sort::ASCEND, "t")
            })
            .unwrap();
        assert_eq!(keys_of(&r, 1), "12,27,24");
        // An unknown order sorts nothing, whatever the target; the limit still applies.
        for target in [sort::VALUE, 9] {
            let r = view
                .range(&RangeRequest {
                    limit: 2,
                    ..sorted(target, 3, "t")
                })
                .unwrap();
            assert_eq!((keys_of(&r, 1).as_str(), r.more), ("00,01", true));
        }
        // An unknown target with a known order is refused (etcd 3.4 crashes on it).
        for order in [sort::NONE, sort::ASCEND, sort::DESCEND] {
            let bad = sorted(5, order, "t");
            assert_eq!(check_range(&bad), Err(ee::invalid_sort_option()));
            assert_eq!(view.range(&bad), Err(ee::invalid_sort_option()));
        }
        assert_eq!(check_range(&sorted(-1, 7, "t")), Ok(()));
    }

    #[test]
    fn count_ignores_filters_and_more_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        for k in ["a", "b", "c", "d"] {
            apply(&db, |a| a.put(&put(k, "v")).unwrap()); // revisions 2..=5
        }
        let view = View::snapshot(&db);
        let r = view
            .range(&RangeRequest {
                min_mod_revision: 3,
                limit: 2,
                ..get("a", "z", 0)
            })
            .unwrap();
        assert_eq!((keys_of(&r, 0).as_str(), r.more, r.count), ("b,c", true, 4));
        let r = view
            .range(&RangeRequest {
                min_mod_revision: 4,
                limit: 2,
                ..get("a", "z", 0)
            })
            .unwrap();
        assert_eq!(
            (keys_of(&r, 0).as_str(), r.more, r.count),
            ("c,d", false, 4)
        );
        // count_only: no kvs, no more, the whole count, whatever the filters and limit.
        let r = view
            .range(&RangeRequest {
                count_only: true,
                keys_only: true,
                limit: 1,
                max_create_revision: 2,
                ..get("a", "z", 0)
            })
            .unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (0, false, 4));
        // A negative limit is no limit.
        let r = view
            .range(&RangeRequest {
                limit: -1,
                ..get("a", "z", 0)
            })
            .unwrap();
        assert_eq!((r.kvs.len(), r.more), (4, false));
    }

    fn cmp(target: i32, result: i32, key: &str) -> Compare {
        Compare {
            target,
            result,
            key: key.into(),
            ..Default::default()
        }
    }

    #[test]
    fn nested_compares_see_the_state_before_the_txn() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        // The outer txn creates "a"; the nested one asks whether "a" exists: in etcd it does not
        // yet, since every compare is evaluated before the first operation.
        let nested = TxnRequest {
            compare: vec![cmp(compare::VERSION, compare::GREATER, "a")],
            success: vec![RequestOp::Put(put("seen", "yes"))],
            failure: vec![RequestOp::Put(put("seen", "no"))],
        };
        let txn = TxnRequest {
            success: vec![RequestOp::Put(put("a", "1")), RequestOp::Txn(nested)],
            ..Default::default()
        };
        let r = apply(&db, |a| a.txn(&txn).unwrap());
        assert_eq!(r.revision, 2);
        let ResponseOp::Txn(inner) = &r.responses[1] else {
            panic!("expected a nested txn response")
        };
        // A nested txn's header is empty, its put's is the txn's revision.
        assert_eq!((inner.succeeded, inner.revision), (false, 0));
        let view = View::snapshot(&db);
        assert_eq!(view.range(&get("seen", "", 0)).unwrap().kvs[0].value, b"no");
    }

    #[test]
    fn compare_rules_follow_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        apply(&db, |a| a.put(&put("a", "x")).unwrap());
        let view = View::snapshot(&db);
        let holds = |c: Compare| view.evaluate(&[c]).unwrap();
        // An unknown target compares as equal; an unknown result always holds.
        assert!(holds(cmp(9, compare::EQUAL, "a")));
        assert!(!holds(cmp(9, compare::NOT_EQUAL, "a")));
        assert!(holds(cmp(compare::VERSION, 7, "a")));
        // A value compare on a missing key fails whatever the result; others compare with zeros.
        assert!(!holds(cmp(compare::VALUE, compare::NOT_EQUAL, "missing")));
        assert!(holds(cmp(compare::MOD, compare::EQUAL, "missing")));
        // With a range end every key must satisfy it; an empty range compares with zeros.
        let mut c = cmp(compare::CREATE, compare::LESS, "a");
        c.range_end = b"\0".to_vec();
        c.create_revision = 3;
        assert!(holds(c.clone()));
        c.key = b"b".to_vec();
        c.range_end = b"a".to_vec();
        assert!(holds(c));
    }

    #[test]
    fn txn_checks_puts_then_ranges_and_a_put_its_lease_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        apply(&db, |a| a.put(&put("k", "v")).unwrap());
        let missing_ignore = PutRequest {
            ignore_value: true,
            ..put("nope", "")
        };
        let future = RangeRequest {
            revision: 99,
            ..get("k", "", 0)
        };
        // etcd checks every put on the path before any range, whatever their order.
        let txn = TxnRequest {
            success: vec![
                RequestOp::Range(future.clone()),
                RequestOp::Put(missing_ignore.clone()),
            ],
            ..Default::default()
        };
        assert_eq!(apply(&db, |a| a.txn(&txn)), Err(ee::key_not_found()));
        let txn = TxnRequest {
            success: vec![RequestOp::Range(future), RequestOp::Put(put("z", "1"))],
            ..Default::default()
        };
        assert_eq!(apply(&db, |a| a.txn(&txn)), Err(ee::future_rev()));
        // Inside a txn the missing key comes before the unknown lease; outside, the lease first.
        let both = PutRequest {
            lease: 5,
            ..missing_ignore
        };
        let txn = TxnRequest {
            success: vec![RequestOp::Put(both.clone())],
            ..Default::default()
        };
        assert_eq!(apply(&db, |a| a.txn(&txn)), Err(ee::key_not_found()));
        assert_eq!(apply(&db, |a| a.put(&both)), Err(ee::lease_not_found()));
        let view = View::snapshot(&db);
        assert_eq!(view.current_revision().unwrap(), 2);
    }

    #[test]
    fn negative_revisions_and_compaction_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let neg = |rev| RangeRequest {
            revision: rev,
            ..get("k", "", 0)
        };
        let txn_of = |rev| TxnRequest {
            success: vec![RequestOp::Range(neg(rev))],
            ..Default::default()
        };
        apply(&db, |a| a.put(&put("k", "v")).unwrap());
        {
            let view = View::snapshot(&db);
            // Never compacted: -1 reads the current revision, below it counts as compacted.
            assert!(view.txn(&txn_of(-1)).is_ok());
            assert_eq!(view.txn(&txn_of(-2)), Err(ee::compacted()));
            assert_eq!(view.range(&neg(-2)).unwrap().kvs.len(), 1);
        }
        // A first compaction at 0 is accepted, a second one is not.
        assert_eq!(
            apply(&db, |a| a.compact(&CompactionRequest {
                revision: 0,
                physical: false
            })),
            Ok(2)
        );
        assert_eq!(
            apply(&db, |a| a.compact(&CompactionRequest {
                revision: 0,
                physical: false
            })),
            Err(ee::compacted())
        );
        let view = View::snapshot(&db);
        assert_eq!(view.txn(&txn_of(-1)), Err(ee::compacted()));
        // The same rule in a write txn.
        let mut write = txn_of(-1);
        write.success.push(RequestOp::Put(put("w", "1")));
        assert_eq!(apply(&db, |a| a.txn(&write)), Err(ee::compacted()));
        // Reading at the compacted revision itself is fine.
        assert!(view.range(&neg(0)).is_ok());
    }

    #[test]
    fn read_only_txn_on_a_view_matches_the_applied_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        apply(&db, |a| a.put(&put("a", "1")).unwrap());
        apply(&db, |a| a.put(&put("b", "2")).unwrap());
        let txn = TxnRequest {
            compare: vec![cmp(compare::VERSION, compare::EQUAL, "a")],
            success: vec![],
            failure: vec![
                RequestOp::Range(get("a", "c", 0)),
                RequestOp::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![RequestOp::Range(get("b", "", 2))],
                    failure: vec![],
                }),
            ],
        };
        let from_view = View::snapshot(&db).txn(&txn).unwrap();
        let applied = apply(&db, |a| a.txn(&txn).unwrap());
        assert_eq!(from_view, applied);
        assert_eq!(from_view.revision, 3);
        assert!(!from_view.succeeded);
        let ResponseOp::Txn(inner) = &from_view.responses[1] else {
            panic!("expected a nested txn")
        };
        assert_eq!(inner.revision, 0);
    }

    #[test]
    fn txn_overlaps_follow_etcd() {
        let del = |k: &str, e: &str| {
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: e.into(),
                prev_kv: false,
            })
        };
        let nested = |s: Vec<RequestOp>, f: Vec<RequestOp>| {
            RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: s,
                failure: f,
            })
        };
        let txn = |ops: Vec<RequestOp>| TxnRequest {
            success: ops,
            ..Default::default()
        };
        let p = |k: &str| RequestOp::Put(put(k, ""));
        // The same key in both branches of one nested txn: only one runs.
        assert!(check_txn(&txn(vec![nested(vec![p("a")], vec![p("a")])]), 128).is_ok());
        // A delete "from key" covers nothing in etcd's check.
        assert!(check_txn(&txn(vec![del("a", "\0"), p("b")]), 128).is_ok());
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), p("b")]), 128),
            Err(ee::duplicate_key())
        );
        assert_eq!(
            check_txn(&txn(vec![nested(vec![del("m", "")], vec![]), p("m")]), 128),
            Err(ee::duplicate_key())
        );
        // A nested txn only gets what the outer one leaves of the limit.
        let deep = txn(vec![nested(vec![p("a"), p("b"), p("c")], vec![])]);
        assert!(check_txn(&deep, 4).is_ok());
        assert_eq!(check_txn(&deep, 3), Err(ee::too_many_ops()));
        let value = PutRequest {
            ignore_value: true,
            ..put("k", "v")
        };
        assert_eq!(check_put(&value), Err(ee::value_provided()));
    }

    #[test]
    fn a_txn_failing_half_way_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        apply(&db, |a| a.put(&put("a", "1")).unwrap());
        apply(&db, |a| a.put(&put("k", "2")).unwrap());
        // etcd's checks pass ("k" exists before the txn, and a delete "from key" overlaps no put
        // in its duplicate check), then the put finds "k" deleted: etcd 3.4 crashes here.
        let txn = TxnRequest {
            success: vec![
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"\0".to_vec(),
                    prev_kv: false,
                }),
                RequestOp::Put(PutRequest {
                    ignore_value: true,
                    ..put("k", "")
                }),
            ],
            ..Default::default()
        };
        assert!(check_txn(&txn, 128).is_ok());
        let mut a = Applier::new(&db).unwrap();
        assert_eq!(a.txn(&txn), Err(ee::key_not_found()));
        assert_eq!(a.revision(), 3);
        // The same batch goes on from where it was: the delete left no trace.
        assert_eq!(a.put(&put("b", "3")).unwrap().revision, 4);
        a.flush().unwrap();
        let view = View::snapshot(&db);
        let all = view.range(&get("\0", "\0", 0)).unwrap();
        assert_eq!(keys_of(&all, 0), "a,b,k");
        let rows: Vec<Vec<u8>> = db.keys(Cf::Rev);
        // One change per revision 2, 3 and 4, each at sub revision 0.
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r[8..] == [0u8; 8]));
    }

    /// More orders recorded from etcd 3.4.23: reversed input with ties, mostly equal versions,
    /// organ-pipe values (its pivot, partition and pattern-breaking paths).
    #[test]
    fn sort_ties_in_larger_ranges_come_out_as_etcd_leaves_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        for i in 0..120usize {
            for _ in 0..if i % 17 == 0 { 2 } else { 1 } {
                apply(&db, |a| {
                    a.put(&put(&format!("w{i:03}"), &format!("{:03}", (119 - i) / 3)))
                        .unwrap()
                });
            }
        }
        for i in 0..90usize {
            let v = if i < 45 { i } else { 89 - i };
            for _ in 0..(i % 4) + 1 {
                apply(&db, |a| {
                    a.put(&put(&format!("y{i:02}"), &format!("{:02}", v / 2)))
                        .unwrap()
                });
            }
        }
        let view = View::snapshot(&db);
        let cases = [
            (
                sort::VALUE,
                sort::ASCEND,
                "w",
                "119,118,117,116,115,114,113,112,111,110,109,108,107,106,105,104,103,102,101,100,099,098,097,096,095,094,093,092,091,090,089,088,087,086,085,084,083,082,081,080,079,078,077,076,075,074,073,072,071,070,069,068,067,066,063,065,064,061,060,062,059,058,057,056,055,054,051,053,052,048,049,050,045,047,046,042,044,043,041,040,039,038,037,036,033,035,034,032,031,030,027,029,028,026,025,024,023,022,021,018,020,019,016,017,015,012,014,013,009,011,010,008,007,006,005,004,003,000,002,001",
            ),
            (
                sort::VALUE,
                sort::DESCEND,
                "w",
                "000,001,002,003,004,005,006,007,008,009,010,011,012,013,014,015,016,017,018,019,020,021,022,023,024,025,026,027,028,029,030,031,032,033,034,035,036,037,038,039,040,041,042,043,044,045,046,047,048,049,050,051,052,053,054,055,056,057,058,059,060,061,062,063,064,065,066,067,068,069,070,071,072,073,074,075,076,077,078,079,080,081,082,083,084,085,086,087,088,089,090,091,092,093,094,095,096,097,098,099,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119",
            ),
            (
                sort::VERSION,
                sort::ASCEND,
                "w",
                "060,063,003,001,005,006,007,008,009,010,011,012,013,014,015,016,018,019,020,021,022,023,024,025,026,027,028,029,030,031,032,033,035,036,118,037,038,039,040,041,042,043,044,045,046,047,048,049,050,117,116,115,052,053,054,055,056,057,113,002,004,061,062,059,064,065,066,067,114,069,070,071,072,073,074,075,076,077,078,079,080,081,082,083,084,058,086,087,088,089,090,091,092,093,094,095,096,097,098,099,100,101,112,103,104,105,106,107,108,109,110,111,102,085,068,051,034,017,000,119",
            ),
            (
                sort::VERSION,
                sort::DESCEND,
                "w",
                "000,017,034,051,068,085,119,102,058,110,005,006,007,008,009,010,062,012,013,014,015,016,018,019,020,021,022,023,024,025,026,027,028,029,030,031,032,033,035,036,037,038,039,040,041,042,043,044,045,046,047,048,049,050,052,053,054,055,056,057,003,059,081,004,011,063,064,065,066,067,069,070,071,072,073,074,075,076,077,078,079,080,060,082,083,084,086,087,088,089,090,091,092,093,094,095,096,097,098,099,100,101,002,103,104,105,106,107,108,109,061,111,112,113,114,115,116,117,118,001",
            ),
            (
                sort::VALUE,
                sort::ASCEND,
                "y",
                "00,01,88,89,02,03,87,86,84,85,05,04,82,83,07,06,09,80,08,81,11,78,79,10,13,76,77,12,75,74,15,14,73,17,16,72,18,19,71,70,20,21,69,68,67,66,22,23,65,25,24,64,26,27,63,62,60,28,29,61,31,59,58,30,33,56,57,32,35,54,55,34,52,53,37,36,39,38,50,51,40,41,49,48,43,42,47,46,44,45",
            ),
            (
                sort::VALUE,
                sort::DESCEND,
                "y",
                "45,44,42,46,47,43,41,40,48,49,51,50,38,39,53,52,36,37,55,54,34,35,56,32,57,33,59,30,58,31,60,29,28,61,26,27,62,63,25,24,64,65,23,66,22,67,21,20,68,69,19,18,70,71,73,72,16,17,74,75,14,15,76,77,13,12,10,79,78,11,81,80,08,09,07,06,83,82,05,04,84,85,02,03,86,87,01,00,88,89",
            ),
            (
                sort::VERSION,
                sort::ASCEND,
                "y",
                "00,44,52,88,04,40,56,84,08,36,60,80,12,32,64,76,48,28,68,72,20,16,24,49,13,01,73,65,17,29,77,61,57,25,21,45,81,37,85,53,05,41,89,33,69,09,22,26,46,02,50,86,42,06,54,82,38,10,58,78,34,14,62,74,30,18,66,70,35,79,67,71,19,27,63,75,15,31,59,23,11,47,55,83,07,39,51,87,03,43",
            ),
            (
                sort::VERSION,
                sort::DESCEND,
                "y",
                "23,87,83,03,79,75,71,07,67,63,59,11,55,51,47,15,43,39,35,19,31,27,66,46,86,02,26,82,78,74,30,06,70,62,34,18,10,58,38,22,54,50,42,14,17,45,89,01,85,49,41,13,25,53,21,81,77,57,37,05,29,61,33,09,73,65,69,08,28,00,32,20,72,64,60,36,76,56,68,04,80,12,40,52,84,48,24,16,88,44",
            ),
        ];
        for (target, order, prefix, want) in cases {
            let got = view.range(&sorted(target, order, prefix)).unwrap();
            assert_eq!(
                keys_of(&got, 1),
                want,
                "target {target} order {order} {prefix}"
            );
        }
    }

    /// One batch of entries as the raft loop applies it, continuing from `state`.
    fn apply_batch(db: &Db, state: MvccState, f: &dyn Fn(&mut Applier)) -> MvccState {
        let mut a = Applier::resume(db, state);
        f(&mut a);
        a.flush().unwrap();
        a.into_state()
    }

    #[test]
    fn a_prefetched_newest_version_is_what_the_put_builds_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let step = |state, f: &dyn Fn(&mut Applier)| apply_batch(&db, state, f);
        let state = step(MvccState::load(&db).unwrap(), &|a| {
            a.put(&put("k", "1")).unwrap(); // revision 2
            a.put(&put("gone", "1")).unwrap(); // revision 3
            a.delete_range(&DeleteRangeRequest {
                key: b"gone".to_vec(),
                ..Default::default()
            })
            .unwrap(); // revision 4
        });
        drop(state);
        // A fresh state (nothing cached), as after a restart: prefetch, then apply.
        let mut state = MvccState::load(&db).unwrap();
        for key in [&b"k"[..], b"gone", b"new"] {
            state.prefetch(&db, key).unwrap();
        }
        // A write after the prefetch (between batches) moves the cached version on too.
        state = step(state, &|a| {
            a.put(&put("k", "2")).unwrap(); // revision 5
        });
        drop(step(state, &|a| {
            a.put(&put("k", "3")).unwrap(); // revision 6
            a.put(&put("gone", "2")).unwrap(); // revision 7: created again
            a.put(&put("new", "1")).unwrap(); // revision 8
        }));
        let view = View::snapshot(&db);
        let meta = |k: &str| {
            let kv = &view.range(&get(k, "", 0)).unwrap().kvs[0];
            (kv.create_revision, kv.mod_revision, kv.version)
        };
        assert_eq!(meta("k"), (2, 6, 3));
        assert_eq!(meta("gone"), (7, 7, 1));
        assert_eq!(meta("new"), (8, 8, 1));
    }

    #[test]
    fn latest_cache_across_batches_keeps_create_and_version_right() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let step = |state, f: &dyn Fn(&mut Applier)| apply_batch(&db, state, f);
        let mut state = MvccState::load(&db).unwrap();
        state = step(state, &|a| {
            a.put(&put("k", "1")).unwrap();
        });
        state = step(state, &|a| {
            a.put(&put("k", "2")).unwrap();
        });
        state = step(state, &|a| {
            a.delete_range(&DeleteRangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })
            .unwrap();
        });
        state = step(state, &|a| {
            a.put(&put("k", "3")).unwrap(); // revision 5: created again
        });
        // A txn that writes k and then fails must leave neither k nor the cache changed.
        state = step(state, &|a| {
            let failing = TxnRequest {
                success: vec![
                    RequestOp::Put(put("k", "lost")),
                    RequestOp::Put(PutRequest {
                        ignore_value: true,
                        ..put("missing", "")
                    }),
                ],
                ..Default::default()
            };
            assert!(a.txn(&failing).is_err());
            a.put(&put("k", "4")).unwrap(); // revision 6
        });
        state = step(state, &|a| {
            a.compact(&CompactionRequest {
                revision: 6,
                physical: true,
            })
            .unwrap();
            a.put(&put("k", "5")).unwrap(); // revision 7
        });
        drop(state);
        let kv = &View::snapshot(&db).range(&get("k", "", 0)).unwrap().kvs[0];
        assert_eq!(
            (
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.value.as_slice()
            ),
            (5, 7, 3, b"5".as_slice())
        );
    }
}
