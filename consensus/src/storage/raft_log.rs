//! [`RaftLog`]: raft-rs's `Storage` over the WAL (entries, hard state) and RocksDB (conf state,
//! the compaction point), with the newest entries cached in memory.
//!
//! Log compaction: once every entry up to a point is applied and durable in RocksDB, the point's
//! `SnapshotMetadata` (index, term, conf state) is stored in meta ([`Batch::put_log_start`]) and
//! [`RaftLog::compact`] drops the log up to it. From then on `first_index` is the point + 1 and
//! `term(point)` is answered from the record; at start the WAL must begin at or before the
//! point + 1 (or hold no entries at all right after a raft snapshot was installed there), or
//! the member refuses to start. A follower that needs entries before the first index gets a raft
//! snapshot ([`super::snap`]): [`raft::Storage::snapshot`] answers with the metadata of an image
//! prepared in the background, which travels beside the message.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::schema::{Cf, META_CONF_STATE, META_SNAPSHOT, META_SNAPSHOT_INSTALLED};
use super::snap::Snapshots;
use super::wal::Wal;
use super::{Batch, Db, legacy};
use crate::error::{Error, Result};

pub(super) fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

pub(super) fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    // Encoding our own, already valid, message into a Vec cannot fail.
    m.write_to_bytes().unwrap_or_default()
}

impl Batch<'_> {
    /// Raft's configuration, stored beside the entry that changed it.
    pub fn put_conf_state(&mut self, cs: &ConfState) {
        self.put(Cf::Meta, META_CONF_STATE, encode(cs));
    }

    /// Where the raft log starts: every entry up to `point.index` is applied and may be dropped
    /// from the log; `point.term` is that entry's term, `point.conf_state` the configuration
    /// applied when the point was chosen (at or after it). A received raft snapshot will be
    /// recorded the same way.
    pub fn put_log_start(&mut self, point: &SnapshotMetadata) {
        self.put(Cf::Meta, META_SNAPSHOT, encode(point));
    }
}

impl Db {
    /// The index of the raft snapshot this database was installed from, if it was.
    pub fn installed_snapshot(&self) -> Result<Option<u64>> {
        Ok(self
            .get_meta(META_SNAPSHOT_INSTALLED)?
            .map(|v| super::be_u64(&v)))
    }

    /// The recorded start of the raft log ([`Batch::put_log_start`]), if the log was ever
    /// compacted.
    pub fn log_start(&self) -> Result<Option<SnapshotMetadata>> {
        self.get_meta(META_SNAPSHOT)?
            .map(|v| decode("the raft log's compaction point", &v))
            .transpose()
    }
}

/// raft-rs's view of the log: hard state, conf state and entries, with the bounds cached in memory.
pub struct RaftLog {
    wal: Wal,
    hard_state: HardState,
    /// The commit index the WAL holds, as of the last hard state queued for it.
    written_commit: u64,
    conf_state: ConfState,
    /// Index and term of the compaction point, the last entry dropped from the log (0/0 before
    /// the first compaction).
    snapshot_index: u64,
    snapshot_term: u64,
    last_index: u64,
    last_term: u64,
    /// The newest entries, contiguous and ending at `last_index`: applying and replicating them
    /// needs no read back from RocksDB. Bounded by `CACHE_MAX_ENTRIES` and `CACHE_MAX_BYTES`.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// The images raft snapshots send, once the member serves them ([`RaftLog::serve_snapshots`]).
    snapshots: Option<Arc<Snapshots>>,
}

const CACHE_MAX_ENTRIES: usize = 8192;
const CACHE_MAX_BYTES: usize = 32 << 20;

impl RaftLog {
    /// Loads the raft state: the log and hard state from the WAL in `wal_dir`, the rest from `db`.
    pub fn load(db: &Db, wal_dir: &Path) -> Result<RaftLog> {
        let mut wal = Wal::open(wal_dir)?;
        if wal.last().is_none() && wal.hard_state().is_none() {
            legacy::import_rocksdb_log(db, &mut wal)?;
        }
        let hard_state = wal.hard_state().cloned().unwrap_or_default();
        let conf_state = match db.get_meta(META_CONF_STATE)? {
            Some(v) => decode("conf state", &v)?,
            None => ConfState::default(),
        };
        let (snapshot_index, snapshot_term) = db
            .log_start()?
            .map_or((0, 0), |point| (point.index, point.term));
        // Entries after the compaction point must all be there; the WAL may start earlier (a
        // crash between recording the point and deleting segments), never later.
        match wal.first_index() {
            Some(first) if first > snapshot_index + 1 => {
                return Err(Error::Corrupt(format!(
                    "the raft log in {} starts at entry {first}, but RocksDB records it compacted \
                     only through entry {snapshot_index}: entries {} to {} are missing; nothing \
                     on disk was changed",
                    wal_dir.display(),
                    snapshot_index + 1,
                    first - 1
                )));
            }
            // An install's WAL holds only the hard state until entries after it come.
            None if snapshot_index > 0 && db.installed_snapshot()? != Some(snapshot_index) => {
                return Err(Error::Corrupt(format!(
                    "the raft log in {} holds no entries, but RocksDB records it compacted \
                     through entry {snapshot_index}, so it held entries after that; nothing on \
                     disk was changed",
                    wal_dir.display()
                )));
            }
            _ => {}
        }
        // Only the retained log is indexed; segments a crash left behind go now.
        wal.compact(snapshot_index)?;
        let (last_index, last_term) = match wal.last() {
            Some((index, term)) if index > snapshot_index => (index, term),
            _ => (snapshot_index, snapshot_term),
        };
        Ok(RaftLog {
            wal,
            written_commit: hard_state.commit,
            hard_state,
            conf_state,
            snapshot_index,
            snapshot_term,
            last_index,
            last_term,
            cache: VecDeque::new(),
            cache_bytes: 0,
            snapshots: None,
        })
    }

    /// From now on, a follower behind the compacted log gets a raft snapshot out of `snapshots`.
    pub fn serve_snapshots(&mut self, snapshots: Arc<Snapshots>) {
        self.snapshots = Some(snapshots);
    }

    /// Whether a raft snapshot is being sent (or was just now), when the log must stay.
    pub fn snapshot_in_flight(&self) -> bool {
        self.snapshots.as_ref().is_some_and(|s| s.in_flight())
    }

    /// First start of a new cluster: every initial member is a voter.
    pub fn bootstrap(&mut self, voters: Vec<u64>, batch: &mut Batch<'_>) {
        self.conf_state.set_voters(voters);
        batch.put(Cf::Meta, META_CONF_STATE, encode(&self.conf_state));
    }

    pub fn last_index_cached(&self) -> u64 {
        self.last_index
    }

    /// Adds new entries (replacing a conflicting tail); `persist` writes them.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(last) = entries.last() else {
            return;
        };
        self.wal.append(entries);
        self.last_index = last.index;
        self.last_term = last.term;
        self.cache_append(entries);
    }

    fn cache_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        while self.cache.back().is_some_and(|e| e.index >= first.index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.data.len();
            }
        }
        if self
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            // Not contiguous with what is cached (cannot happen after the truncation above, but
            // the cache must never lie): start over from these entries.
            self.cache.clear();
            self.cache_bytes = 0;
        }
        for e in entries {
            self.cache_bytes += e.data.len();
            self.cache.push_back(e.clone());
        }
        while self.cache.len() > CACHE_MAX_ENTRIES
            || (self.cache_bytes > CACHE_MAX_BYTES && self.cache.len() > 1)
        {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.data.len();
            }
        }
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let first = self.cache.front()?.index;
        self.cache.get(index.checked_sub(first)? as usize)
    }

    /// Queues a new term or vote for the WAL. A change of the commit index alone is kept in
    /// memory (see `set_commit`): writing it would cost the leader a record per commit.
    pub fn set_hard_state(&mut self, hs: &HardState) {
        if hs.term == self.hard_state.term && hs.vote == self.hard_state.vote {
            self.set_commit(hs.commit);
            return;
        }
        self.hard_state = hs.clone();
        self.written_commit = hs.commit;
        self.wal.set_hard_state(hs);
    }

    /// Raises the commit index in memory only: a commit index need not be durable (raft learns
    /// it again), and at start the applied index, durable with the state, bounds it from below.
    /// The commit index the log knows of (from its records, or [`RaftLog::set_commit`]).
    pub fn commit(&self) -> u64 {
        self.hard_state.commit
    }

    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
        }
    }

    /// Writes the commit index as a record of its own when the WAL's lags it and no entries are
    /// on their way to carry it (an idle member), without waiting for the disk: a member killed
    /// then and restarted alone still applies, and serves, everything it knew was committed.
    /// Called every tick, which bounds that staleness to one tick. Returns whether it wrote.
    pub fn record_commit(&mut self) -> Result<bool> {
        if self.hard_state.commit <= self.written_commit || self.wal.has_pending() {
            return Ok(false);
        }
        self.written_commit = self.hard_state.commit;
        self.wal.set_hard_state(&self.hard_state);
        self.wal.write(false)?;
        Ok(true)
    }

    /// `begin_persist` then `finish_persist`, for tests; returns whether there was anything.
    #[cfg(test)]
    pub fn persist(&mut self, sync: bool) -> Result<bool> {
        let any = self.wal.has_pending();
        self.begin_persist(sync)?;
        self.finish_persist()?;
        Ok(any)
    }

    /// Writes what `append` and `set_hard_state` gave since the last call, as one WAL record
    /// (nothing if they gave nothing); with `sync`, nothing may depend on it being durable before
    /// `finish_persist`.
    pub fn begin_persist(&mut self, sync: bool) -> Result<()> {
        // A record of new entries carries the commit index too (a few bytes): a member restarted
        // on its own then knows, and applies, what was committed up to its last record, instead
        // of only what RocksDB had flushed (its applied state is written without RocksDB's WAL).
        if self.hard_state.commit > self.written_commit && self.wal.has_pending_entries() {
            self.written_commit = self.hard_state.commit;
            self.wal.set_hard_state(&self.hard_state);
        }
        self.wal.write(sync)
    }

    /// Has the device start on what `begin_persist` wrote, for a caller with work to do meanwhile.
    pub fn start_writeback(&mut self) {
        self.wal.start_writeback();
    }

    /// Waits until what `begin_persist` wrote with `sync` is durable; true when that took an
    /// fdatasync.
    pub fn finish_persist(&mut self) -> Result<bool> {
        self.wal.wait_durable()
    }

    /// Drops the log up to and including `point`, whose record ([`Batch::put_log_start`]) and
    /// applied state are durable: the WAL forgets those entries and deletes the segments wholly
    /// before the point's, the cache drops them, and `first_index` becomes `point.index + 1`.
    pub fn compact(&mut self, point: &SnapshotMetadata) -> Result<()> {
        if point.index <= self.snapshot_index {
            return Ok(());
        }
        let deleted = self.wal.compact(point.index)?;
        while self.cache.front().is_some_and(|e| e.index <= point.index) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.data.len();
            }
        }
        self.snapshot_index = point.index;
        self.snapshot_term = point.term;
        if self.last_index < point.index {
            self.last_index = point.index;
            self.last_term = point.term;
        }
        tracing::info!(
            through = point.index,
            segments_deleted = deleted,
            segments_left = self.wal.segment_count(),
            "raft log compacted"
        );
        Ok(())
    }

    /// The configuration as applied; [`Batch::put_conf_state`] stores it with the apply batch.
    pub fn remember_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        match self.wal.entry(index) {
            Some(Ok(e)) => Ok(e),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
            Some(Err(e)) => Err(raft::Error::Store(StorageError::Other(Box::new(e)))),
        }
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let e = match self.cached(index) {
                Some(e) => e.clone(),
                None => self.read_entry(index)?,
            };
            size += e.compute_size() as u64;
            // Always return at least one entry, as raft-rs requires.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if idx < self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if let Some(e) = self.cached(idx) {
            return Ok(e.term);
        }
        self.wal
            .term(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Until an image is prepared (on a thread of its own): temporarily unavailable, which
        // raft-rs takes calmly (it tries again at the follower's next heartbeat response); any
        // other error would be fatal to it.
        let unavailable = Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ));
        let Some(snapshots) = &self.snapshots else {
            return unavailable;
        };
        let Some((index, conf_state)) = snapshots.current(request_index) else {
            return unavailable;
        };
        let term = match self.term(index) {
            Ok(term) => term,
            Err(_) => {
                // The log moved past the image: a newer one is needed.
                snapshots.discard();
                return unavailable;
            }
        };
        tracing::info!(
            to = format!("{to:x}"),
            index,
            term,
            "sending a raft snapshot to a follower behind the compacted log"
        );
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        // The image itself goes beside the message (PeerRegistrar.snapshotImage), never in it.
        snapshot.data = IMAGE_BESIDE.to_vec().into();
        Ok(snapshot)
    }
}

/// A raft snapshot's `data`: its image travels on a stream of its own.
pub const IMAGE_BESIDE: &[u8] = b"etcd-rs: image sent beside";

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use raft::Storage;

    pub(in crate::storage) fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    pub(in crate::storage) fn open(dir: &Path) -> (Arc<Db>, RaftLog) {
        let db = Db::open(&dir.join("db")).unwrap();
        let log = RaftLog::load(&db, &dir.join("wal")).unwrap();
        (db, log)
    }

    #[test]
    fn an_idle_member_records_its_commit_index_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, mut log) = open(dir.path());
            let mut b = db.batch();
            log.bootstrap(vec![1], &mut b);
            db.write(b, true).unwrap();
            log.append(&[entry(1, 1), entry(2, 1)]);
            log.set_hard_state(&HardState {
                term: 1,
                vote: 1,
                commit: 0,
                ..Default::default()
            });
            log.persist(true).unwrap();
            // Committed after the entries' record: only the idle record can carry it.
            log.set_commit(2);
            assert!(log.record_commit().unwrap());
            assert!(!log.record_commit().unwrap(), "nothing new to record");
        }
        let (_db, log) = open(dir.path());
        assert_eq!(log.initial_state().unwrap().hard_state.commit, 2);
    }

    #[test]
    fn a_record_of_new_entries_carries_the_commit_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, mut log) = open(dir.path());
            let mut b = db.batch();
            log.bootstrap(vec![1], &mut b);
            db.write(b, true).unwrap();
            log.append(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>());
            log.set_hard_state(&HardState {
                term: 1,
                vote: 1,
                commit: 0,
                ..Default::default()
            });
            log.persist(true).unwrap();
            // Committed through 3, learnt in memory; the next record of entries records it.
            log.set_commit(3);
            log.append(&[entry(4, 1)]);
            log.persist(true).unwrap();
            // Not written on its own: no record of entries follows.
            log.set_commit(4);
        }
        let (_db, log) = open(dir.path());
        assert_eq!(log.initial_state().unwrap().hard_state.commit, 3);
    }

    #[test]
    fn log_survives_reopen_and_truncates_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, mut log) = open(dir.path());
            let mut b = db.batch();
            log.bootstrap(vec![1, 2, 3], &mut b);
            db.write(b, true).unwrap();
            log.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>());
            let hs = HardState {
                term: 2,
                vote: 3,
                commit: 3,
                ..Default::default()
            };
            log.set_hard_state(&hs);
            assert!(log.persist(true).unwrap());
            assert!(!log.persist(true).unwrap(), "nothing new to write");
            // A new leader in term 2 replaces entries 4 and 5 with a single entry 4.
            log.append(&[entry(4, 2)]);
            log.persist(true).unwrap();
            // The commit index moves in memory only.
            log.set_commit(4);
        }
        let (_db, log) = open(dir.path());
        let state = log.initial_state().unwrap();
        assert_eq!(state.hard_state.term, 2);
        assert_eq!(state.hard_state.vote, 3);
        assert_eq!(state.hard_state.commit, 3);
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(log.first_index().unwrap(), 1);
        assert_eq!(log.last_index().unwrap(), 4);
        assert_eq!(log.term(4).unwrap(), 2);
        assert_eq!(log.term(3).unwrap(), 1);
        assert_eq!(log.term(0).unwrap(), 0);
        let got = log
            .entries(2, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(2, 1), (3, 1), (4, 2)]
        );
        assert_eq!(got[2], entry(4, 2));
        // A fresh load has an empty cache, so these reads come from the WAL.
        // max_size still yields at least one entry.
        let one = log
            .entries(2, 5, 1, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
        assert!(
            log.entries(2, 6, None, GetEntriesContext::empty(false))
                .is_err()
        );
    }

    /// A log of entries 1..=8 (term 1), each a third of a WAL segment, so that entries 2k-1
    /// and 2k are in segment k; bootstrapped, hard state written with the first.
    fn eight_big_entries(dir: &Path) -> (Arc<Db>, RaftLog) {
        let (db, mut log) = open(dir);
        let mut b = db.batch();
        log.bootstrap(vec![1], &mut b);
        db.write(b, true).unwrap();
        log.set_hard_state(&HardState {
            term: 1,
            vote: 1,
            commit: 8,
            ..Default::default()
        });
        let big = (super::super::wal::SEGMENT_BYTES / 3) as usize;
        for i in 1..=8 {
            let mut e = entry(i, 1);
            e.data = vec![i as u8; big].into();
            log.append(&[e]);
            log.persist(true).unwrap();
        }
        (db, log)
    }

    fn point(index: u64, term: u64) -> SnapshotMetadata {
        let mut p = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        p.set_conf_state(ConfState {
            voters: vec![1],
            ..Default::default()
        });
        p
    }

    fn record(db: &Db, p: &SnapshotMetadata) {
        let mut b = db.batch();
        b.put_log_start(p);
        db.write(b, true).unwrap();
    }

    fn wal_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".wal")
            })
            .count()
    }

    fn assert_compacted_through_5(log: &RaftLog) {
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(log.first_index().unwrap(), 6);
        assert_eq!(log.last_index().unwrap(), 8);
        // Entry 5 is gone from the WAL's index: its term comes from the record.
        assert!(log.wal.term(5).is_none());
        assert_eq!(log.term(5).unwrap(), 1);
        assert!(matches!(
            log.term(4),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            log.entries(5, 7, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let got = log.entries(6, 9, None, ctx()).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), [6, 7, 8]);
        assert!(matches!(
            log.snapshot(5, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
    }

    #[test]
    fn a_compacted_log_starts_after_its_record_and_reopens_from_what_is_retained() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, mut log) = eight_big_entries(dir.path());
            assert_eq!(wal_files(dir.path()), 4 + 1, "four segments and the spare");
            let p = point(5, 1);
            record(&db, &p);
            log.compact(&p).unwrap();
            assert_compacted_through_5(&log);
            assert!(log.cached(5).is_none() && log.cached(6).is_some());
            assert_eq!(wal_files(dir.path()), 2 + 1, "segments 1 and 2 deleted");
        }
        let (_db, log) = open(dir.path());
        assert_compacted_through_5(&log);
        let state = log.initial_state().unwrap();
        assert_eq!((state.hard_state.term, state.hard_state.commit), (1, 8));
    }

    #[test]
    fn a_crash_between_the_record_and_the_deletion_deletes_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, _log) = eight_big_entries(dir.path());
            record(&db, &point(5, 1));
        }
        let (_db, log) = open(dir.path());
        assert_compacted_through_5(&log);
        assert_eq!(wal_files(dir.path()), 2 + 1);
    }

    #[test]
    fn a_wal_that_starts_after_the_recorded_point_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, mut log) = eight_big_entries(dir.path());
            let p = point(5, 1);
            record(&db, &p);
            log.compact(&p).unwrap();
            // The record now lags the WAL, which starts at entry 5 on disk: 4 is missing.
            record(&db, &point(3, 1));
        }
        let files = wal_files(dir.path());
        let db = Db::open(&dir.path().join("db")).unwrap();
        let wal_dir = dir.path().join("wal");
        let Err(Error::Corrupt(why)) = RaftLog::load(&db, &wal_dir) else {
            panic!("a WAL starting after the compaction point + 1 must not load");
        };
        assert!(
            why.contains(&wal_dir.display().to_string())
                && why.contains("starts at entry 5")
                && why.contains("through entry 3")
                && why.contains("entries 4 to 4 are missing")
                && !why.contains('\n'),
            "{why}"
        );
        assert_eq!(wal_files(dir.path()), files, "nothing deleted");
        // Without any segment left, the same.
        for e in std::fs::read_dir(&wal_dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let Err(Error::Corrupt(why)) = RaftLog::load(&db, &wal_dir) else {
            panic!("an empty WAL after a compaction must not load");
        };
        assert!(
            why.contains("holds no entries") && why.contains("through entry 3"),
            "{why}"
        );
        // Unless a raft snapshot was installed there: its log starts empty after the point.
        let mut b = db.batch();
        b.put(Cf::Meta, META_SNAPSHOT_INSTALLED, 3u64.to_be_bytes());
        db.write(b, true).unwrap();
        let log = RaftLog::load(&db, &wal_dir).unwrap();
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (4, 3)
        );
        assert_eq!(log.term(3).unwrap(), 1);
        // But not once the log moved on from that snapshot.
        record(&db, &point(4, 1));
        assert!(RaftLog::load(&db, &wal_dir).is_err());
    }

    #[test]
    fn cached_tail_agrees_with_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut log) = open(dir.path());
        // More than the cache holds, then a conflicting tail from a new term.
        let n = CACHE_MAX_ENTRIES as u64 + 100;
        log.append(&(1..=n).map(|i| entry(i, 1)).collect::<Vec<_>>());
        log.persist(false).unwrap();
        log.append(&[entry(n - 5, 2), entry(n - 4, 2)]);
        log.persist(true).unwrap();
        assert!(log.cached(1).is_none(), "the oldest entries left the cache");
        assert!(log.cached(n - 4).is_some());
        let fresh = RaftLog::load(&db, &dir.path().join("wal")).unwrap();
        assert!(fresh.cache.is_empty());
        for (low, high) in [(1, 10), (n - 20, n - 3), (n - 6, n - 3)] {
            let ctx = || GetEntriesContext::empty(false);
            let cached = log.entries(low, high, None, ctx()).unwrap();
            let stored = fresh.entries(low, high, None, ctx()).unwrap();
            assert_eq!(cached, stored, "entries {low}..{high}");
        }
        assert_eq!(log.last_index().unwrap(), n - 4);
        assert_eq!(log.term(n - 5).unwrap(), 2);
        assert_eq!(log.term(n - 6).unwrap(), 1);
        assert!(
            log.entries(n - 4, n - 2, None, GetEntriesContext::empty(false))
                .is_err()
        );
    }
}
