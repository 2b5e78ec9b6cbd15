//! The write path: [`Applier`] applies one batch of committed entries into one [`Batch`], with
//! an overlay of its own writes for reads inside the batch; [`MvccState`] carries the revisions
//! and the [`LatestCache`] from one batch to the next.

use super::record::Record;
use super::txn::{TxnPath, branch, check_txn_ranges, path_mismatch, txn_path};
use super::types::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use super::validate::txn_is_read_only;
use super::view::{End, Overlay, View, collect, range};
use crate::error::Result;
use crate::etcd_error::{self as ee, EtcdError};
use crate::storage::{Batch, Db};

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

/// Test-only failpoint (`schema::failpoint::APPLY_READ_FAIL_ONCE`): the file whose existence
/// makes one apply read fail; read from the environment once.
fn apply_read_fail_file() -> Option<&'static std::path::Path> {
    static FILE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        std::env::var_os(schema::failpoint::APPLY_READ_FAIL_ONCE).map(std::path::PathBuf::from)
    })
    .as_deref()
}

/// The newest live version of `key` that RocksDB holds.
fn newest_stored(db: &Db, key: &[u8]) -> Result<Option<Record>> {
    if let Some(file) = apply_read_fail_file()
        && std::fs::remove_file(file).is_ok()
    {
        return Err(crate::error::Error::io(
            "reading a key's newest version (failpoint)",
            std::io::Error::other("injected by ETCDRS_FAILPOINT_APPLY_READ_FAIL_ONCE"),
        ));
    }
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
    pub(super) db: &'a Db,
    pub(super) batch: Batch<'a>,
    pub(super) overlay: Overlay,
    /// The versions written by the request being applied, in sub-revision order: they reach the
    /// batch only once the whole request succeeded, so a refused one leaves nothing behind.
    pub(super) staged: Vec<(Vec<u8>, Record)>,
    pub(super) revision: i64,
    pub(super) compact_revision: i64,
    pub(super) latest: LatestCache,
    /// The revision the entry being applied writes at, and the next sub revision.
    pub(super) main: i64,
    pub(super) sub: i64,
}

impl<'a> Applier<'a> {
    /// A batch starting from what RocksDB holds (the raft loop resumes from its state instead).
    #[cfg(test)]
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

    /// The batch the applied entries go into, for what the raft loop stores along with them (conf
    /// state, member records).
    pub fn batch(&mut self) -> &mut Batch<'a> {
        &mut self.batch
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compacted revision, as recorded so far (-1 while never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
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
        if !txn_is_read_only(req) {
            self.check_txn_puts(req, &path)?;
        }
        check_txn_ranges(req, &path, self.revision, self.compact_revision)?;
        let r = self.do_txn(req, &path);
        let mut resp = self.end(r)?;
        resp.revision = self.revision;
        Ok(resp)
    }
}
