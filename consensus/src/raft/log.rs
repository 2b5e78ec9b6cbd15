//! The log the raft core writes through: [`LogStore`], raft-rs's [`raft::Storage`] plus what
//! persisting a `Ready` needs. [`RaftLog`] (the WAL) is the member's; the simulator has its own.

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use crate::error::Result;
use crate::storage::RaftLog;

/// What the core needs of its log besides reading it.
pub(crate) trait LogStore: raft::Storage {
    /// Stages new entries (replacing a conflicting tail); [`LogStore::begin_persist`] writes them.
    fn append(&mut self, entries: &[Entry]);
    /// Stages a new term or vote.
    fn set_hard_state(&mut self, hs: &HardState);
    /// Raises the commit index in memory (a commit index need not be durable).
    fn set_commit(&mut self, commit: u64);
    /// Writes the in-memory commit index when the log's lags it and nothing else will carry it
    /// (see [`RaftLog::record_commit`]).
    fn record_commit(&mut self) -> Result<bool>;
    /// Writes what was staged; with `sync`, nothing may rely on it before `finish_persist`.
    fn begin_persist(&mut self, sync: bool) -> Result<()>;
    /// Starts the device on what `begin_persist` wrote, for a caller with work meanwhile.
    fn start_writeback(&mut self);
    /// Waits until what `begin_persist` wrote is durable; true when that took an fsync.
    fn finish_persist(&mut self) -> Result<bool>;
    /// The configuration applied; the state machine stores it with the entry's apply batch.
    fn set_conf_state(&mut self, cs: &ConfState);
    fn last_index_cached(&self) -> u64;
    /// Drops the log up to and including `point`, whose record and applied state are durable
    /// (see [`RaftLog::compact`]).
    fn compact(&mut self, point: &SnapshotMetadata) -> Result<()>;
    /// Whether a raft snapshot is being sent, or was just now: the log must not be compacted.
    fn snapshot_in_flight(&self) -> bool {
        false
    }
}

impl LogStore for RaftLog {
    fn append(&mut self, entries: &[Entry]) {
        RaftLog::append(self, entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) {
        RaftLog::set_hard_state(self, hs)
    }
    fn set_commit(&mut self, commit: u64) {
        RaftLog::set_commit(self, commit)
    }
    fn record_commit(&mut self) -> Result<bool> {
        RaftLog::record_commit(self)
    }
    fn begin_persist(&mut self, sync: bool) -> Result<()> {
        RaftLog::begin_persist(self, sync)
    }
    fn start_writeback(&mut self) {
        RaftLog::start_writeback(self)
    }
    fn finish_persist(&mut self) -> Result<bool> {
        RaftLog::finish_persist(self)
    }
    fn set_conf_state(&mut self, cs: &ConfState) {
        RaftLog::remember_conf_state(self, cs.clone())
    }
    fn last_index_cached(&self) -> u64 {
        RaftLog::last_index_cached(self)
    }
    fn compact(&mut self, point: &SnapshotMetadata) -> Result<()> {
        RaftLog::compact(self, point)
    }
    fn snapshot_in_flight(&self) -> bool {
        RaftLog::snapshot_in_flight(self)
    }
}
