//! The import of a raft log that an earlier version kept in RocksDB (entries in `raft_log`, the
//! hard state in meta): [`RaftLog::load`](super::RaftLog::load) moves it into the WAL once.

use raft::eraftpb::{Entry, HardState};

use super::Db;
use super::raft_log::decode;
use super::schema::{Cf, META_HARD_STATE, log_key};
use super::wal::Wal;
use crate::error::Result;

/// Moves the old log into the WAL, durably, and only then deletes it from RocksDB.
pub(super) fn import_rocksdb_log(db: &Db, wal: &mut Wal) -> Result<()> {
    let hard_state: Option<HardState> = db
        .get_meta(META_HARD_STATE)?
        .map(|v| decode("hard state", &v))
        .transpose()?;
    let mut entries = Vec::new();
    let mut it = db.db.raw_iterator_cf(db.cf(Cf::Log));
    it.seek_to_first();
    while let Some(v) = it.value() {
        entries.push(decode::<Entry>("raft log entry", v)?);
        it.next();
    }
    it.status()
        .map_err(|e| crate::error::Error::storage("reading the raft log from RocksDB", e))?;
    drop(it);
    if hard_state.is_none() && entries.is_empty() {
        return Ok(());
    }
    for chunk in entries.chunks(1024) {
        wal.append(chunk);
        wal.sync(false)?;
    }
    wal.set_hard_state(&hard_state.unwrap_or_default());
    wal.sync(true)?;
    let mut batch = db.batch();
    batch
        .inner
        .delete_range_cf(db.cf(Cf::Log), log_key(0), log_key(u64::MAX));
    batch.inner.delete_cf(db.cf(Cf::Meta), META_HARD_STATE);
    db.write(batch, true)?;
    tracing::info!(
        entries = entries.len(),
        "moved the raft log from RocksDB to the WAL"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use raft::GetEntriesContext;
    use raft::Storage;
    use raft::eraftpb::HardState;

    use super::super::raft_log::encode;
    use super::super::raft_log::tests::{entry, open};
    use super::super::schema::{Cf, META_HARD_STATE, log_key};
    use super::Db;

    #[test]
    fn a_log_kept_in_rocksdb_by_an_earlier_version_moves_to_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 2,
            ..Default::default()
        };
        {
            let db = Db::open(&dir.path().join("db")).unwrap();
            let mut b = db.batch();
            for i in 1..=3 {
                b.put(Cf::Log, log_key(i), encode(&entry(i, 3)));
            }
            b.put(Cf::Meta, META_HARD_STATE, encode(&hs));
            db.write(b, true).unwrap();
        }
        for _ in 0..2 {
            let (db, log) = open(dir.path());
            assert_eq!(log.initial_state().unwrap().hard_state, hs);
            assert_eq!(log.last_index().unwrap(), 3);
            let got = log
                .entries(1, 4, None, GetEntriesContext::empty(false))
                .unwrap();
            assert_eq!(got, (1..=3).map(|i| entry(i, 3)).collect::<Vec<_>>());
            assert!(db.get_meta(META_HARD_STATE).unwrap().is_none());
            assert!(
                db.keys(Cf::Log).is_empty(),
                "RocksDB no longer holds the log"
            );
        }
    }
}
