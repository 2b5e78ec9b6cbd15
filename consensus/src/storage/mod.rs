//! Durable state: the raft log and hard state in the member's own WAL ([`wal`]), and one RocksDB
//! ([`Db`]) for the conf state, the member's meta keys (identity, members, applied index) and the
//! MVCC key space ([`crate::mvcc`]), so that an entry's effects and the applied index go in one
//! write batch. [`RaftLog`] is raft-rs's `Storage` over both.
//!
//! [`schema`] names every column family and key; RocksDB's types stay in this module. The rest of
//! the crate writes through a [`Batch`], whose methods say what they store, and reads through
//! [`Db`]'s getters or a [`ReadView`] (a snapshot or the live database) and its
//! [`VersionCursor`].

pub mod bbolt;
pub mod image;
mod legacy;
mod raft_log;
pub mod schema;
pub mod snap;
pub mod wal;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBRawIterator, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

use crate::error::{Error, Result};
pub use raft_log::RaftLog;
use schema::{Cf, META_APPLIED, META_IDENTITY, META_MEMBER_PREFIX};
pub use schema::{be_u64, parse_row};

/// The compaction whose background pass is under way, and the `kv_key` row it goes on from.
pub type PassCursor = (i64, Vec<u8>);

/// The member's database. Shared (`Arc`) between the raft thread, which writes, and the IPC
/// thread, which reads the key space.
pub struct Db {
    db: DB,
}

impl Db {
    pub fn open(path: &Path) -> Result<Arc<Db>> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Applied state is written without RocksDB's WAL (`write_applied`): the raft log is the
        // log. Flushing every family together keeps the families' memtables in step, so what
        // survives a crash is always one consistent applied index, replayed onwards from the
        // raft log.
        opts.set_atomic_flush(true);
        opts.set_max_background_jobs(2);
        let cfs = Cf::ALL
            .into_iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|e| Error::storage(format!("opening RocksDB at {}", path.display()), e))?;
        Ok(Arc::new(Db { db }))
    }

    /// A clean stop: one atomic flush of every family's memtables (what RocksDB does when it is
    /// closed with unpersisted writes), then no more background work. The process exits without
    /// closing the DB (the raft and IPC threads still hold it), so without this the next start
    /// would apply everything since the last flush again. A write after this stays in memory
    /// and is applied again at the next start, like after a crash.
    pub fn flush_for_stop(&self) {
        self.db.cancel_all_background_work(true);
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        // The four families are created at open, so a missing one is a bug, not bad input.
        let name = cf.name();
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is created at open"))
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(Cf::Meta), key)
            .map_err(|e| Error::storage("reading meta", e))
    }

    /// An empty batch of writes, for [`Db::write`] or [`Db::write_applied`].
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            db: self,
            inner: WriteBatch::default(),
        }
    }

    /// Writes a batch; `sync` makes it durable (fsync of the WAL) before returning.
    pub fn write(&self, batch: Batch<'_>, sync: bool) -> Result<()> {
        debug_assert!(std::ptr::eq(batch.db, self), "a batch of another database");
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(batch.inner, &wo)
            .map_err(|e| Error::storage("writing batch", e))
    }

    /// Writes applied state without RocksDB's WAL (no `write` syscall per apply). A crash loses
    /// only what no memtable flush has persisted yet, applied index included, and the member
    /// applies those entries again from its raft log; RocksDB flushes on a clean close.
    pub fn write_applied(&self, batch: Batch<'_>) -> Result<()> {
        debug_assert!(std::ptr::eq(batch.db, self), "a batch of another database");
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db
            .write_opt(batch.inner, &wo)
            .map_err(|e| Error::storage("writing applied state", e))
    }

    pub fn applied_index(&self) -> Result<u64> {
        Ok(self
            .get_meta(META_APPLIED)?
            .map(|v| be_u64(&v))
            .unwrap_or(0))
    }

    /// Where the background pass of a compaction stands: the revision of the last pass that
    /// finished, and the revision and next row of the one under way (see
    /// [`crate::mvcc::Compactor`]).
    pub fn compaction_progress(&self) -> Result<(Option<i64>, Option<PassCursor>)> {
        let finished = self
            .get_meta(schema::META_COMPACT_FINISHED)?
            .map(|v| be_u64(&v) as i64);
        let cursor = self
            .get_meta(schema::META_COMPACT_CURSOR)?
            .filter(|v| v.len() >= 8)
            .map(|v| (be_u64(&v[..8]) as i64, v[8..].to_vec()));
        Ok((finished, cursor))
    }

    /// The member's identity record, once bootstrapped.
    pub fn identity(&self) -> Result<Option<Vec<u8>>> {
        self.get_meta(META_IDENTITY)
    }

    /// Calls `f` with every stored member record, in member ID order.
    pub fn for_each_member(&self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::Meta));
        it.seek(META_MEMBER_PREFIX);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(META_MEMBER_PREFIX) {
                break;
            }
            f(v)?;
            it.next();
        }
        it.status()
            .map_err(|e| Error::storage("reading members", e))
    }

    /// A consistent read of the key space as it is now, unaffected by later writes.
    pub fn snapshot(&self) -> ReadView<'_> {
        ReadView {
            db: self,
            snapshot: Some(self.db.snapshot()),
        }
    }

    /// Reads of the live database: for the raft thread, the only writer, while it applies.
    pub fn live(&self) -> ReadView<'_> {
        ReadView {
            db: self,
            snapshot: None,
        }
    }

    /// Makes everything written so far durable: one atomic flush of every family's memtables
    /// (applied state is written without RocksDB's WAL, so this is what persists it), for the
    /// raft log's compaction. Blocks until the flush is done: not for the raft thread.
    ///
    /// RocksDB 7.8's C API has no multi-family flush and a one-family `Flush` flushes only that
    /// family even with atomic flush, so this asks for a manual compaction of the one meta key
    /// the compaction point was just written to ([`schema::META_SNAPSHOT`]): its range overlaps
    /// the memtable, so RocksDB first flushes every family atomically, then compacts that key's
    /// few meta files. That call reports no error; RocksDB's background error count does (a
    /// failed flush sets one, and the database then refuses writes).
    pub fn flush_applied(&self) -> Result<()> {
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_exclusive_manual_compaction(false);
        self.db.compact_range_cf_opt(
            self.cf(Cf::Meta),
            Some(schema::META_SNAPSHOT),
            Some(schema::META_SNAPSHOT),
            &opts,
        );
        // Counted since the database was opened: one an earlier flush recovered from makes this
        // flush unprovable too, and the member stops rather than drop log it may still need.
        let errors = self
            .db
            .property_int_value("rocksdb.background-errors")
            .map_err(|e| Error::storage("reading RocksDB's background error count", e))?
            .unwrap_or(0);
        if errors > 0 {
            return Err(Error::StorageState(format!(
                "RocksDB counted {errors} background error(s) by the time it flushed applied \
                 state for the raft log's compaction (see the LOG file in the database directory)"
            )));
        }
        Ok(())
    }

    /// etcd's defrag: compacts every family over its whole key range, which drops deleted and
    /// overwritten versions and rewrites the files (a flush first, atomic across the families).
    /// Blocks for as long as that takes: not for the IPC thread.
    pub fn defragment(&self) {
        for cf in Cf::ALL {
            self.db
                .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// A RocksDB checkpoint of every family in `dir` (which must not exist): one atomic flush,
    /// then hard links of the SST files, so a consistent applied state at no cost to writes.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(|e| Error::storage("preparing a checkpoint", e))?;
        cp.create_checkpoint(dir)
            .map_err(|e| Error::storage(format!("checkpointing into {}", dir.display()), e))
    }

    /// How many rows the key space holds: every stored version and tombstone (what
    /// `snapshot status` reports as its total keys).
    pub fn version_count(&self) -> Result<u64> {
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::Key));
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()
            .map_err(|e| Error::storage("counting the key space's rows", e))?;
        Ok(n)
    }

    /// Approximate on-disk size, for `endpoint status`.
    pub fn size(&self) -> i64 {
        let mut total = 0u64;
        for cf in Cf::ALL {
            for prop in [
                "rocksdb.total-sst-files-size",
                "rocksdb.cur-size-all-mem-tables",
            ] {
                if let Ok(Some(v)) = self.db.property_int_value_cf(self.cf(cf), prop) {
                    total += v;
                }
            }
        }
        total as i64
    }

    /// Every `kv_key` row, in order, for tests that check what is on disk.
    #[cfg(test)]
    pub(crate) fn version_rows(&self) -> Vec<Vec<u8>> {
        self.keys(Cf::Key)
    }

    /// Every `kv_rev` key, in order, for tests that check what is on disk.
    #[cfg(test)]
    pub(crate) fn change_keys(&self) -> Vec<Vec<u8>> {
        self.keys(Cf::Rev)
    }

    /// Every key of a family, in order, for tests that check what is on disk.
    #[cfg(test)]
    fn keys(&self, cf: Cf) -> Vec<Vec<u8>> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek_to_first();
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            out.push(k.to_vec());
            it.next();
        }
        it.status().expect("iterating in a test");
        out
    }
}

/// Writes that reach RocksDB together ([`Db::write`], [`Db::write_applied`]). Each method names
/// what it stores; the keys are [`schema`]'s. A `WriteBatch` and the database it is for, nothing
/// more.
pub struct Batch<'a> {
    db: &'a Db,
    inner: WriteBatch,
}

impl Batch<'_> {
    pub(crate) fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.inner.put_cf(self.db.cf(cf), key, value);
    }

    /// Records that every entry up to `index` is applied.
    pub fn put_applied(&mut self, index: u64) {
        self.put(Cf::Meta, META_APPLIED, index.to_be_bytes());
    }

    pub fn put_identity(&mut self, identity: &[u8]) {
        self.put(Cf::Meta, META_IDENTITY, identity);
    }

    /// A member's record (Cap'n Proto, see `codec::encode_member`), replacing the stored one.
    pub fn put_member(&mut self, id: u64, member: &[u8]) {
        self.put(Cf::Meta, schema::member_key(id), member);
    }

    /// The MVCC store's current and compacted revisions.
    pub fn put_revisions(&mut self, revision: i64, compact_revision: i64) {
        self.put(Cf::Meta, schema::META_REVISION, revision.to_be_bytes());
        self.put(
            Cf::Meta,
            schema::META_COMPACT_REVISION,
            compact_revision.to_be_bytes(),
        );
    }

    /// One version of `key` written at revision `main`: its `kv_key` row (`record`) and its
    /// `kv_rev` change (`change`, the sub-th of that revision).
    pub fn put_version(&mut self, key: &[u8], main: i64, sub: i64, change: &[u8], record: &[u8]) {
        self.put(Cf::Rev, schema::change_key(main, sub), change);
        self.put(Cf::Key, schema::version_row(key, main), record);
    }

    /// One version of `key` at revision `main` at or below the compacted revision: its `kv_key`
    /// row only, since a compaction drops the change log up to it.
    pub fn put_version_row(&mut self, key: &[u8], main: i64, record: &[u8]) {
        self.put(Cf::Key, schema::version_row(key, main), record);
    }

    /// The background pass of the compaction at `revision` goes on from `row` next.
    pub fn put_compaction_cursor(&mut self, revision: i64, row: &[u8]) {
        let value = [&revision.to_be_bytes()[..], row].concat();
        self.put(Cf::Meta, schema::META_COMPACT_CURSOR, value);
    }

    /// The background pass of the compaction at `revision` is done.
    pub fn put_compaction_finished(&mut self, revision: i64) {
        self.put(
            Cf::Meta,
            schema::META_COMPACT_FINISHED,
            revision.to_be_bytes(),
        );
        self.inner
            .delete_cf(self.db.cf(Cf::Meta), schema::META_COMPACT_CURSOR);
    }

    pub(crate) fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        self.inner.delete_cf(self.db.cf(cf), key);
    }

    /// Deletes one `kv_key` row, as a [`VersionCursor`] found it.
    pub fn delete_version_row(&mut self, row: &[u8]) {
        self.inner.delete_cf(self.db.cf(Cf::Key), row);
    }

    /// Deletes the change log of every revision up to `revision`.
    pub fn delete_changes_through(&mut self, revision: i64) {
        self.inner.delete_range_cf(
            self.db.cf(Cf::Rev),
            [0u8; 16],
            schema::change_key(revision + 1, 0),
        );
    }
}

/// Reads of the database: a RocksDB snapshot ([`Db::snapshot`]) or the live database
/// ([`Db::live`]).
pub struct ReadView<'a> {
    db: &'a Db,
    snapshot: Option<rocksdb::Snapshot<'a>>,
}

impl ReadView<'_> {
    fn read_opts(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            ro.set_snapshot(s);
        }
        ro
    }

    fn meta_i64(&self, key: &[u8]) -> Result<Option<i64>> {
        let v = self
            .db
            .db
            .get_cf_opt(self.db.cf(Cf::Meta), key, &self.read_opts())
            .map_err(|e| Error::storage("reading MVCC meta", e))?;
        Ok(v.map(|v| be_u64(&v) as i64))
    }

    /// The MVCC revision of the last write, if any was stored.
    pub fn revision(&self) -> Result<Option<i64>> {
        self.meta_i64(schema::META_REVISION)
    }

    /// The MVCC revision of the last compaction, if any was stored.
    pub fn compact_revision(&self) -> Result<Option<i64>> {
        self.meta_i64(schema::META_COMPACT_REVISION)
    }

    /// A cursor over the MVCC versions (`kv_key`), unpositioned.
    pub fn versions(&self) -> VersionCursor<'_> {
        VersionCursor(
            self.db
                .db
                .raw_iterator_cf_opt(self.db.cf(Cf::Key), self.read_opts()),
        )
    }
}

/// A position among the MVCC version rows of a [`ReadView`], in row order: user key, then newest
/// version first (see [`schema`]).
pub struct VersionCursor<'a>(DBRawIterator<'a>);

impl VersionCursor<'_> {
    pub fn seek_to_first(&mut self) {
        self.0.seek_to_first();
    }

    /// To `row` as stored, or the first row after it.
    pub fn seek_row(&mut self, row: &[u8]) {
        self.0.seek(row);
    }

    /// To the newest version of `key` at or below `rev`, or the first row after it.
    pub fn seek_version(&mut self, key: &[u8], rev: i64) {
        self.0.seek(schema::version_row(key, rev));
    }

    /// To the first row after every version of `key`.
    pub fn seek_after(&mut self, key: &[u8]) {
        self.0.seek(schema::after_key_row(key));
    }

    /// From a version of `key` to the first row after every version of it: a step or two when
    /// it has few older versions (most keys), a seek past many. Saves a seek per key in scans.
    pub fn next_key(&mut self, key: &[u8]) {
        const STEPS: usize = 4;
        for _ in 0..STEPS {
            self.0.next();
            match self.0.key() {
                Some(row) if schema::is_row_of(row, key) => {}
                _ => return,
            }
        }
        self.seek_after(key);
    }

    pub fn next(&mut self) {
        self.0.next();
    }

    /// The row here as stored, `None` past the end (or on an error: see [`VersionCursor::status`]).
    pub fn row(&self) -> Option<&[u8]> {
        self.0.key()
    }

    /// The stored record of the row here.
    pub fn value(&self) -> Option<&[u8]> {
        self.0.value()
    }

    /// Whether the cursor stopped on an error rather than at the end; `doing` names the read.
    pub fn status(&self, doing: &str) -> Result<()> {
        self.0.status().map_err(|e| Error::storage(doing, e))
    }
}
