//! [`Import`]: another store's history (an etcd snapshot's) written as the apply writes ours,
//! version by version in revision order, in bounded batches.
//!
//! Each version becomes its `kv_key` row and, above the compacted revision, its `kv_rev` change
//! (below it, the compaction dropped the change log, as ours does). At the end the current and
//! compacted revisions, and the compaction's background pass: finished if the other store's
//! was, else left unrecorded, so that our [`super::Compactor`] runs one from the start and
//! deletes what that store's interrupted pass left.

use super::NEVER_COMPACTED;
use super::record::Record;
use super::types::KeyValue;
use crate::error::{Error, Result};
use crate::storage::{Batch, Db};

/// Rows per RocksDB write.
pub const BATCH_ROWS: usize = 10_000;

/// A history being written into an empty database.
pub struct Import<'a> {
    db: &'a Db,
    batch: Batch<'a>,
    in_batch: usize,
    compacted: i64,
    /// The newest (main, sub) written so far: versions come in revision order.
    last: Option<(i64, i64)>,
    versions: u64,
    with_lease: u64,
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Imported {
    pub versions: u64,
    pub revision: i64,
    pub compacted: i64,
    /// Versions that name a lease (which this store does not grant).
    pub with_lease: u64,
}

impl<'a> Import<'a> {
    /// An import into `db` of a history compacted at `compacted` (-1: never compacted).
    pub fn new(db: &'a Db, compacted: i64) -> Import<'a> {
        Import {
            db,
            batch: db.batch(),
            in_batch: 0,
            compacted: compacted.max(NEVER_COMPACTED),
            last: None,
            versions: 0,
            with_lease: 0,
        }
    }

    /// The next version, `kv` written at revision (`main`, `sub`), or a tombstone of
    /// `kv.key` there (`kv`'s other fields are then not read).
    pub fn version(&mut self, main: i64, sub: i64, kv: &KeyValue, tombstone: bool) -> Result<()> {
        if main < 1 || sub < 0 {
            return Err(Error::Corrupt(format!("revision {main}.{sub}")));
        }
        if self.last.is_some_and(|last| (main, sub) <= last) {
            return Err(Error::Corrupt(format!(
                "revision {main}.{sub} comes after {:?}: not in revision order",
                self.last
            )));
        }
        // A key changes at most once a revision in etcd; that is not checked here (it would
        // take a set of every key a revision changed, unbounded for a delete of a range), and
        // a second change would only overwrite the first's row.
        self.last = Some((main, sub));
        let record = if tombstone {
            Record {
                tombstone: true,
                create_revision: 0,
                mod_revision: main,
                version: 0,
                lease: 0,
                value: Vec::new(),
            }
        } else {
            if kv.mod_revision != main {
                return Err(Error::Corrupt(format!(
                    "the version of {:?} stored at revision {main} says it was written at {}",
                    String::from_utf8_lossy(&kv.key),
                    kv.mod_revision
                )));
            }
            if kv.lease != 0 {
                self.with_lease += 1;
            }
            Record {
                tombstone: false,
                create_revision: kv.create_revision,
                mod_revision: main,
                version: kv.version,
                lease: kv.lease,
                value: kv.value.clone(),
            }
        };
        if main > self.compacted {
            let mut change = Vec::with_capacity(kv.key.len() + 1);
            change.push(tombstone as u8);
            change.extend_from_slice(&kv.key);
            self.batch
                .put_version(&kv.key, main, sub, &change, &record.encode());
        } else {
            self.batch.put_version_row(&kv.key, main, &record.encode());
        }
        self.versions += 1;
        self.in_batch += 1;
        if self.in_batch == BATCH_ROWS {
            self.write()?;
        }
        Ok(())
    }

    /// Without RocksDB's WAL, as applied state is written: the restore's final flush makes it
    /// durable, and a restore that fails leaves nothing anyway.
    fn write(&mut self) -> Result<()> {
        self.db
            .write_applied(std::mem::replace(&mut self.batch, self.db.batch()))?;
        self.in_batch = 0;
        Ok(())
    }

    /// Writes the rest, the revisions and the compaction's state. The current revision is the
    /// newest version's, or the compacted one if that is newer (a compaction may drop the
    /// newest version, a tombstone), as etcd restores it; 1 for an empty store. `pass_finished`:
    /// whether the other store's compaction finished deleting what it compacted.
    pub fn finish(mut self, pass_finished: bool) -> Result<Imported> {
        let newest = self.last.map_or(1, |(main, _)| main);
        let revision = newest.max(self.compacted).max(1);
        self.batch.put_revisions(revision, self.compacted);
        // Unless recorded as finished, the compactor runs the pass from the start.
        if self.compacted != NEVER_COMPACTED && pass_finished {
            self.batch.put_compaction_finished(self.compacted);
        }
        self.write()?;
        Ok(Imported {
            versions: self.versions,
            revision,
            compacted: self.compacted,
            with_lease: self.with_lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{RangeRequest, View};

    fn kv(key: &str, value: &str, create: i64, rev: i64, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: rev,
            version,
            lease: 0,
        }
    }

    fn get(db: &Db, key: &str, rev: i64) -> std::result::Result<Vec<KeyValue>, String> {
        View::snapshot(db)
            .range(&RangeRequest {
                key: key.into(),
                revision: rev,
                ..Default::default()
            })
            .map(|r| r.kvs)
            .map_err(|e| e.message)
    }

    #[test]
    fn an_imported_history_reads_as_an_applied_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut import = Import::new(&db, 4);
        // a at 2 (gone in the compaction at 4), a at 3, b at 4 then deleted at 5, a at 6.
        import.version(3, 0, &kv("a", "2", 2, 3, 2), false).unwrap();
        import.version(4, 0, &kv("b", "1", 4, 4, 1), false).unwrap();
        import.version(5, 0, &kv("b", "", 0, 0, 0), true).unwrap();
        import.version(6, 0, &kv("a", "3", 2, 6, 3), false).unwrap();
        let done = import.finish(true).unwrap();
        assert_eq!((done.versions, done.revision, done.compacted), (4, 6, 4));
        assert_eq!(get(&db, "a", 0).unwrap(), vec![kv("a", "3", 2, 6, 3)]);
        assert_eq!(get(&db, "a", 5).unwrap(), vec![kv("a", "2", 2, 3, 2)]);
        assert_eq!(get(&db, "b", 4).unwrap(), vec![kv("b", "1", 4, 4, 1)]);
        assert_eq!(get(&db, "b", 5).unwrap(), vec![]);
        assert!(get(&db, "a", 3).unwrap_err().contains("compacted"));
        // The change log holds only what is above the compacted revision.
        assert_eq!(db.change_keys().len(), 2);
        assert_eq!(db.compaction_progress().unwrap(), (Some(4), None));
    }

    #[test]
    fn an_unfinished_compaction_is_left_to_our_compactor_and_order_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut import = Import::new(&db, 7);
        import.version(2, 0, &kv("a", "1", 2, 2, 1), false).unwrap();
        let e = import.version(2, 0, &kv("b", "1", 2, 2, 1), false);
        assert!(e.unwrap_err().to_string().contains("revision order"));
        let e = import.version(3, 0, &kv("a", "1", 2, 9, 1), false);
        assert!(e.unwrap_err().to_string().contains("written at 9"));
        let done = import.finish(false).unwrap();
        // The compaction dropped the newest version: the revision is the compacted one.
        assert_eq!(done.revision, 7);
        assert_eq!(db.compaction_progress().unwrap(), (None, None));
    }
}
