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

use std::collections::BTreeMap;

use rocksdb::{ReadOptions, WriteBatch};

use crate::error::{Error, Result};
use crate::etcd_error::{self as ee, EtcdError};
use crate::storage::{CF_KEY, CF_META, CF_REV, Db, META_APPLIED, be_u64};

pub const META_REVISION: &[u8] = b"mvcc/revision";
pub const META_COMPACT_REVISION: &[u8] = b"mvcc/compact_revision";

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

const TERMINATOR: [u8; 2] = [0x00, 0x01];
const NEXT_KEY: [u8; 2] = [0x00, 0x02];

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// The row of `key` at `rev`: seeking to it lands on the newest version at or below `rev`.
fn version_row(key: &[u8], rev: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    escape_into(&mut out, key);
    out.extend_from_slice(&TERMINATOR);
    out.extend_from_slice(&(!(rev as u64)).to_be_bytes());
    out
}

/// The first row after every version of `key`.
fn after_key_row(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(&mut out, key);
    out.extend_from_slice(&NEXT_KEY);
    out
}

/// Splits a `kv_key` row into the user key and the main revision.
fn parse_row(row: &[u8]) -> Result<(Vec<u8>, i64)> {
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
    db: &'a Db,
    snapshot: Option<rocksdb::Snapshot<'a>>,
}

impl<'a> View<'a> {
    pub fn snapshot(db: &'a Db) -> View<'a> {
        View {
            db,
            snapshot: Some(db.raw().snapshot()),
        }
    }

    fn live(db: &'a Db) -> View<'a> {
        View { db, snapshot: None }
    }

    fn read_opts(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            ro.set_snapshot(s);
        }
        ro
    }

    fn meta_i64(&self, key: &[u8], default: i64) -> Result<i64> {
        let v = self
            .db
            .raw()
            .get_cf_opt(self.db.cf(CF_META), key, &self.read_opts())
            .map_err(|e| Error::storage("reading MVCC meta", e))?;
        Ok(v.map(|v| be_u64(&v) as i64).unwrap_or(default))
    }

    /// The revision of the last write; 1 for an empty store, as in etcd.
    pub fn current_revision(&self) -> Result<i64> {
        self.meta_i64(META_REVISION, 1)
    }

    pub fn compact_revision(&self) -> Result<i64> {
        self.meta_i64(META_COMPACT_REVISION, 0)
    }

    /// Visits, in key order, the newest version at or below `rev` of every key in the range
    /// (tombstones included); `f` returns false to stop.
    fn scan(
        &self,
        key: &[u8],
        end: &End,
        rev: i64,
        f: &mut dyn FnMut(&[u8], Record) -> bool,
    ) -> Result<()> {
        let mut it = self
            .db
            .raw()
            .raw_iterator_cf_opt(self.db.cf(CF_KEY), self.read_opts());
        it.seek(version_row(key, rev));
        while let Some(row) = it.key() {
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
                it.seek(version_row(&user_key, rev));
                continue;
            }
            let record = Record::decode(it.value().unwrap_or_default())?;
            if !f(&user_key, record) || *end == End::Single {
                break;
            }
            it.seek(after_key_row(&user_key));
        }
        it.status()
            .map_err(|e| Error::storage("scanning the key space", e))
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
}

/// Writes not yet in RocksDB, newest last per key: what the entries applied so far in this batch
/// changed. Reads during apply look here first.
type Overlay = BTreeMap<Vec<u8>, Vec<Record>>;

fn visible(versions: &[Record], rev: i64) -> Option<&Record> {
    versions.iter().rev().find(|r| r.mod_revision <= rev)
}

/// The keys of the range with their newest version at `rev`, tombstones dropped, in key order.
fn collect(
    view: &View,
    overlay: Option<&Overlay>,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Record)>> {
    let end = end_of(range_end);
    if let End::Before(e) = end
        && e <= key
    {
        return Ok(Vec::new());
    }
    let mut out: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    // With an overlay, a key the overlay deletes may hide a DB key, so the DB scan cannot stop at
    // `limit`; the overlay is one batch of entries, small next to the key space.
    let db_limit = if overlay.is_some_and(|o| !o.is_empty()) {
        usize::MAX
    } else {
        limit
    };
    let mut live = 0usize;
    view.scan(key, &end, rev, &mut |k, r| {
        if !r.tombstone {
            live += 1;
        }
        out.insert(k.to_vec(), r);
        live < db_limit
    })?;
    if let Some(overlay) = overlay {
        let upper = match end {
            End::Single => std::ops::Bound::Included(key.to_vec()),
            End::Before(e) => std::ops::Bound::Excluded(e.to_vec()),
            End::Unbounded => std::ops::Bound::Unbounded,
        };
        for (k, versions) in overlay.range((std::ops::Bound::Included(key.to_vec()), upper)) {
            if let Some(r) = visible(versions, rev) {
                out.insert(k.clone(), r.clone());
            }
        }
    }
    Ok(out.into_iter().filter(|(_, r)| !r.tombstone).collect())
}

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
    let sort_order = match (req.sort_order, req.sort_target) {
        // etcd returns keys in ascending key order already; any other target sorts ascending.
        (0, t) if t != 0 => 1,
        (o, _) => o,
    };
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Every key is needed to count them; the limit only trims what is returned.
    let rows =
        collect(view, overlay, &req.key, &req.range_end, rev, usize::MAX).map_err(ee::internal)?;
    let count = rows.len() as i64;
    let mut kvs: Vec<KeyValue> = if req.count_only {
        Vec::new()
    } else {
        rows.iter().map(|(k, r)| r.to_kv(k)).collect()
    };
    if filtered {
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
    }
    if sort_order != 0 {
        let target = req.sort_target;
        kvs.sort_by(|a, b| {
            let ord = match target {
                1 => a.version.cmp(&b.version),
                2 => a.create_revision.cmp(&b.create_revision),
                3 => a.mod_revision.cmp(&b.mod_revision),
                4 => a.value.cmp(&b.value),
                _ => a.key.cmp(&b.key),
            };
            if sort_order == 2 { ord.reverse() } else { ord }
        });
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
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
        count,
    })
}

// --------------------------------------------------------------------------------- applying

/// The write side of the state machine for one batch of committed entries: their changes, the
/// new revisions and the applied index go into one RocksDB write batch.
pub struct Applier<'a> {
    db: &'a Db,
    batch: WriteBatch,
    overlay: Overlay,
    revision: i64,
    compact_revision: i64,
    /// The revision the entry being applied writes at, and the next sub revision.
    main: i64,
    sub: i64,
}

impl<'a> Applier<'a> {
    pub fn new(db: &'a Db) -> Result<Applier<'a>> {
        let view = View::live(db);
        Ok(Applier {
            db,
            batch: WriteBatch::default(),
            overlay: Overlay::new(),
            revision: view.current_revision()?,
            compact_revision: view.compact_revision()?,
            main: 0,
            sub: 0,
        })
    }

    pub fn batch(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Records that every entry up to `index` is applied, in the same batch as its effects.
    pub fn set_applied(&mut self, index: u64) {
        self.batch
            .put_cf(self.db.cf(CF_META), META_APPLIED, index.to_be_bytes());
    }

    /// Writes everything applied so far, with the revisions and the applied index, in one batch.
    /// No fsync: the entries are durable in the raft log, and a crash before this write only
    /// means they are applied again from there, exactly once, since the applied index moves with them.
    pub fn flush(&mut self) -> Result<()> {
        let meta = self.db.cf(CF_META);
        self.batch
            .put_cf(meta, META_REVISION, self.revision.to_be_bytes());
        self.batch.put_cf(
            meta,
            META_COMPACT_REVISION,
            self.compact_revision.to_be_bytes(),
        );
        self.db.write(std::mem::take(&mut self.batch), false)?;
        self.overlay.clear();
        Ok(())
    }

    fn begin(&mut self) {
        self.main = self.revision + 1;
        self.sub = 0;
    }

    fn end(&mut self) {
        if self.sub > 0 {
            self.revision = self.main;
        }
    }

    fn latest(&self, key: &[u8]) -> Result<Option<Record>> {
        if let Some(r) = self.overlay.get(key).and_then(|v| v.last()) {
            return Ok(Some(r.clone()).filter(|r| !r.tombstone));
        }
        let mut found = None;
        View::live(self.db).scan(key, &End::Single, i64::MAX, &mut |_, r| {
            found = Some(r);
            false
        })?;
        Ok(found.filter(|r| !r.tombstone))
    }

    fn write(&mut self, key: &[u8], record: Record) {
        let mut rev_key = [0u8; 16];
        rev_key[..8].copy_from_slice(&self.main.to_be_bytes());
        rev_key[8..].copy_from_slice(&self.sub.to_be_bytes());
        let mut change = Vec::with_capacity(key.len() + 1);
        change.push(record.tombstone as u8);
        change.extend_from_slice(key);
        self.batch.put_cf(self.db.cf(CF_REV), rev_key, change);
        self.batch.put_cf(
            self.db.cf(CF_KEY),
            version_row(key, self.main),
            record.encode(),
        );
        self.overlay.entry(key.to_vec()).or_default().push(record);
        self.sub += 1;
    }

    /// Range inside a write: sees the writes of the entry being applied.
    fn read_range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        let current = if self.sub > 0 {
            self.main
        } else {
            self.revision
        };
        let mut resp = range(
            &View::live(self.db),
            Some(&self.overlay),
            req,
            current,
            self.compact_revision,
        )?;
        resp.revision = current;
        Ok(resp)
    }

    fn do_put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
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

    fn do_delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError> {
        let rows = collect(
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
            revision: if self.sub > 0 {
                self.main
            } else {
                self.revision
            },
            deleted: rows.len() as i64,
            prev_kvs,
        })
    }

    /// Checks what would make a branch fail half-way, before any of it is written.
    fn check_ops(&self, ops: &[RequestOp]) -> Result<(), EtcdError> {
        for op in ops {
            match op {
                RequestOp::Put(p) => {
                    if (p.ignore_value || p.ignore_lease)
                        && self.latest(&p.key).map_err(ee::internal)?.is_none()
                    {
                        return Err(ee::key_not_found());
                    }
                    if p.lease != 0 && !p.ignore_lease {
                        return Err(ee::lease_not_found());
                    }
                }
                RequestOp::Range(r) => {
                    if r.revision > self.revision {
                        return Err(ee::future_rev());
                    }
                    if r.revision > 0 && r.revision < self.compact_revision {
                        return Err(ee::compacted());
                    }
                }
                RequestOp::Txn(t) => {
                    let branch = if self.evaluate(&t.compare)? {
                        &t.success
                    } else {
                        &t.failure
                    };
                    self.check_ops(branch)?;
                }
                RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(())
    }

    fn evaluate(&self, compares: &[Compare]) -> Result<bool, EtcdError> {
        evaluate(&View::live(self.db), Some(&self.overlay), compares)
    }

    fn do_txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let succeeded = self.evaluate(&req.compare)?;
        let branch = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.read_range(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.do_put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.do_delete(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.do_txn(t)?),
            });
        }
        Ok(TxnResponse {
            revision: 0,
            succeeded,
            responses,
        })
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
        self.begin();
        let r = self.do_put(req);
        self.end();
        r
    }

    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        self.begin();
        let r = self.do_delete(req);
        self.end();
        r
    }

    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.begin();
        let branch = if self.evaluate(&req.compare)? {
            &req.success
        } else {
            &req.failure
        };
        self.check_ops(branch)?;
        let r = self.do_txn(req);
        self.end();
        // Inner responses keep the revision each op saw or wrote (a nested txn's stays 0, as in
        // etcd); the txn's own header has the revision after it.
        let mut resp = r?;
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
        self.flush().map_err(ee::internal)?;
        self.compact_revision = req.revision;
        let db = self.db;
        let cf = db.cf(CF_KEY);
        let mut it = db.raw().raw_iterator_cf(cf);
        it.seek_to_first();
        let mut current_key: Option<Vec<u8>> = None;
        let mut kept = false;
        while let Some(row) = it.key() {
            let (key, rev) = parse_row(row).map_err(ee::internal)?;
            if current_key.as_deref() != Some(&key) {
                current_key = Some(key.clone());
                kept = false;
            }
            if rev <= req.revision {
                let tombstone = it.value().is_some_and(|v| v.first() == Some(&1));
                if kept || tombstone {
                    self.batch.delete_cf(cf, row);
                }
                kept = true;
            }
            it.next();
        }
        it.status()
            .map_err(|e| ee::internal(Error::storage("compacting", e)))?;
        let mut upper = [0u8; 16];
        upper[..8].copy_from_slice(&(req.revision + 1).to_be_bytes());
        self.batch.delete_range_cf(db.cf(CF_REV), [0u8; 16], upper);
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
        let rows = collect(view, overlay, &c.key, &c.range_end, i64::MAX, usize::MAX)
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

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match c.target {
        compare::VALUE => kv.value.as_slice().cmp(c.value.as_slice()),
        compare::CREATE => kv.create_revision.cmp(&c.create_revision),
        compare::MOD => kv.mod_revision.cmp(&c.mod_revision),
        compare::VERSION => kv.version.cmp(&c.version),
        compare::LEASE => kv.lease.cmp(&c.lease),
        _ => return true,
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
/// the raft log.
pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(ee::empty_key());
    }
    if !(0..=2).contains(&r.sort_order) || !(0..=4).contains(&r.sort_target) {
        return Err(ee::invalid_sort_option());
    }
    Ok(())
}

pub fn check_put(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(ee::empty_key());
    }
    Ok(())
}

pub fn check_delete(d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if d.key.is_empty() {
        return Err(ee::empty_key());
    }
    Ok(())
}

pub fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(ee::too_many_ops());
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(ee::empty_key());
        }
    }
    for branch in [&t.success, &t.failure] {
        for op in branch {
            match op {
                RequestOp::Range(r) => check_range(r)?,
                RequestOp::Put(p) => check_put(p)?,
                RequestOp::DeleteRange(d) => check_delete(d)?,
                RequestOp::Txn(t) => check_txn(t, max_ops)?,
            }
        }
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        writes_of(branch, &mut puts, &mut deletes);
        puts.sort();
        if puts.windows(2).any(|w| w[0] == w[1]) {
            return Err(ee::duplicate_key());
        }
        for key in &puts {
            if deletes.iter().any(|(k, e)| in_range(key, k, e)) {
                return Err(ee::duplicate_key());
            }
        }
    }
    Ok(())
}

fn writes_of<'r>(
    ops: &'r [RequestOp],
    puts: &mut Vec<&'r [u8]>,
    deletes: &mut Vec<(&'r [u8], &'r [u8])>,
) {
    for op in ops {
        match op {
            RequestOp::Put(p) => puts.push(&p.key),
            RequestOp::DeleteRange(d) => deletes.push((&d.key, &d.range_end)),
            RequestOp::Txn(t) => {
                // Either nested branch may run; each is checked on its own with the outer writes.
                writes_of(&t.success, puts, deletes);
                writes_of(&t.failure, puts, deletes);
            }
            RequestOp::Range(_) => {}
        }
    }
}

fn in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    match end_of(range_end) {
        End::Single => key == start,
        End::Before(e) => key >= start && key < e,
        End::Unbounded => key >= start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn escaping_keeps_key_order_and_round_trips() {
        let keys: Vec<&[u8]> = vec![b"", b"a", b"a\0", b"a\0\0", b"a\x01", b"ab", b"b", b"\xff"];
        let rows: Vec<Vec<u8>> = keys.iter().map(|k| version_row(k, 7)).collect();
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(rows, sorted);
        for (k, row) in keys.iter().zip(&rows) {
            assert_eq!(parse_row(row).unwrap(), (k.to_vec(), 7));
            assert!(after_key_row(k) > *row);
        }
        // Newer versions sort first.
        assert!(version_row(b"a", 9) < version_row(b"a", 8));
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
        let mut rows = 0;
        view.scan(b"k", &End::Single, i64::MAX, &mut |_, _| {
            rows += 1;
            true
        })
        .unwrap();
        drop(view);
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
}
