//! Applying committed entries: each raft request goes to its feature's applier (MVCC for the key
//! space, [`crate::cluster`] for the member table; leases and auth next), all writing into the
//! one batch that also carries the applied index, so a crash never applies an entry twice or
//! loses one.
//!
//! The core drives this through [`StateMachine`]; [`ApplyHooks`] is how results go back to it
//! while the batch is being built.
//!
//! A request's own errors (a compacted revision, a missing lease) are its result, the same on
//! every member. An internal one (a storage read failed on this member) is not: the apply stops
//! with [`Error::Apply`] before its batch is written or any of its answers leaves, and the
//! member stops (fail-stop) and applies the entry again from its log once restarted.

use std::sync::{Arc, mpsc};
use std::time::Duration;

use raft::eraftpb::{ConfState, Entry, EntryType, SnapshotMetadata};
use tracing::{debug, error};

use super::command::Applied;
use super::shared::Shared;
use crate::cluster::{self, MemberInfo};
use crate::codec::{self, Proposal};
use crate::error::{Error, Result};
use crate::etcd_error::EtcdError;
use crate::mvcc::{Applier, Compactor, MvccState};
use crate::storage::Db;

/// What the core needs of the state machine.
pub(crate) trait StateMachine {
    /// While new entries replicate, looks up what applying them will need.
    fn prefetch(&mut self, entries: &[Entry]) -> Result<()>;
    /// Applies `entries` in one batch with the applied index, and returns the revision after
    /// them. Each request's result goes to [`ApplyHooks::applied`] as it is computed, every conf
    /// change to [`ApplyHooks::conf_change`]; [`ApplyHooks::before_write`] runs once all results
    /// are in and before the batch is written, so that answers overlap the write.
    fn apply(&mut self, entries: &[Entry], hooks: &mut dyn ApplyHooks) -> Result<i64>;
    /// Records `point` as where the raft log is to start (with the applied index, after every
    /// apply so far) and starts making that and everything applied durable, off the raft
    /// thread; [`StateMachine::compaction_durable`] hands the point back once it is.
    fn begin_compaction(&mut self, point: SnapshotMetadata) -> Result<()>;
    /// The point of [`StateMachine::begin_compaction`] once it and the applied state it covers
    /// are durable (once), or the storage error that kept them from being so.
    fn compaction_durable(&mut self) -> Result<Option<SnapshotMetadata>>;
}

/// The core's side of an apply.
pub(crate) trait ApplyHooks {
    /// Applies the conf change in `entry` to raft; the configuration to store, if it decoded.
    fn conf_change(&mut self, entry: &Entry) -> Result<Option<ConfState>>;
    /// The result of request `id` (0 for a member's own publish, which nobody waits for).
    fn applied(&mut self, id: u64, result: Result<Applied, EtcdError>);
    /// Every result is in; the batch goes to storage next.
    fn before_write(&mut self);
}

/// The member's state machine: MVCC and the member table in RocksDB.
pub(crate) struct Machine {
    db: Arc<Db>,
    /// The revisions and latest-version cache between batches; loaded lazily.
    mvcc: Option<MvccState>,
    shared: Arc<Shared>,
    /// Deletes what a compaction made garbage, in the background, once its batch is written.
    compactor: Compactor,
    /// Test-only failpoint (`schema::failpoint::APPLY_WRITE_DELAY`): a pause between answering
    /// applied writes and handing their batch to RocksDB, to make that window wide.
    apply_write_delay: Option<Duration>,
    /// The last index applied in this run.
    applied: u64,
    /// The thread that flushes RocksDB for the raft log's compaction, once started.
    flusher: Option<Flusher>,
}

/// The log compaction's flush thread: points in, points made durable (or the error) out.
struct Flusher {
    points: mpsc::Sender<SnapshotMetadata>,
    durable: mpsc::Receiver<Result<SnapshotMetadata>>,
}

impl Flusher {
    fn start(db: Arc<Db>) -> Result<Flusher> {
        let (points, inbox) = mpsc::channel::<SnapshotMetadata>();
        let (outbox, durable) = mpsc::channel();
        std::thread::Builder::new()
            .name("log-compaction".into())
            .spawn(move || {
                for point in inbox {
                    let started = std::time::Instant::now();
                    let result = db.flush_applied().map(|()| point);
                    if let Ok(point) = &result {
                        debug!(
                            through = point.index,
                            took_ms = started.elapsed().as_millis() as u64,
                            "applied state flushed for the raft log's compaction"
                        );
                    }
                    if outbox.send(result).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting the log compaction thread", e))?;
        Ok(Flusher { points, durable })
    }
}

impl Machine {
    pub(crate) fn new(db: Arc<Db>, shared: Arc<Shared>, compactor: Compactor) -> Machine {
        Machine {
            db,
            mvcc: None,
            shared,
            compactor,
            apply_write_delay: schema::failpoint::pause(schema::failpoint::APPLY_WRITE_DELAY),
            applied: 0,
            flusher: None,
        }
    }

    fn state(&mut self) -> Result<MvccState> {
        match self.mvcc.take() {
            Some(state) => Ok(state),
            None => MvccState::load(&self.db),
        }
    }
}

impl StateMachine for Machine {
    fn prefetch(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut state = self.state()?;
        let result = entries.iter().try_for_each(|entry| {
            match codec::put_key(&entry.data).filter(|_| is_request(entry)) {
                Some(key) => state.prefetch(&self.db, &key),
                None => Ok(()),
            }
        });
        self.mvcc = Some(state);
        result
    }

    fn apply(&mut self, entries: &[Entry], hooks: &mut dyn ApplyHooks) -> Result<i64> {
        let db = self.db.clone();
        let mut applier = Applier::resume(&db, self.state()?);
        let compacted = applier.compact_revision();
        let mut members: Option<Vec<MemberInfo>> = None;
        let mut members_changed = false;
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    match codec::decode_proposal(&entry.data) {
                        Ok((id, proposal)) => {
                            let result = match proposal {
                                Proposal::Publish(m) => {
                                    let known =
                                        members.get_or_insert_with(|| self.shared.members());
                                    if let Some(updated) = cluster::publish(known, &m) {
                                        applier.batch().put_member(
                                            updated.id,
                                            &cluster::encode_member(&updated),
                                        );
                                        members_changed = true;
                                    }
                                    Ok(Applied::Published { member: m.id })
                                }
                                p => apply_kv(&mut applier, p),
                            };
                            // An internal error is this member's (a storage read failed), not
                            // the request's: every other member applied the entry, so this
                            // one must not skip it. Nothing of this batch is written.
                            if let Err(e) = &result
                                && e.code == schema::code::INTERNAL
                            {
                                return Err(Error::Apply {
                                    index: entry.index,
                                    message: e.message.clone(),
                                });
                            }
                            hooks.applied(id, result);
                        }
                        // Applied by every member alike, so skipping it keeps them equal.
                        Err(e) => error!(index = entry.index, "skipping an undecodable entry: {e}"),
                    }
                }
                EntryType::EntryNormal => {} // a new leader's empty entry
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    if let Some(cs) = hooks.conf_change(entry)? {
                        applier.batch().put_conf_state(&cs);
                    }
                }
            }
            applier.set_applied(entry.index);
        }
        let revision = applier.revision();
        hooks.before_write();
        if let Some(delay) = self.apply_write_delay {
            std::thread::sleep(delay);
        }
        applier.flush()?;
        if applier.compact_revision() != compacted {
            // Only now: the pass must not delete what reads below the revision still see
            // before the batch refusing them is written.
            self.compactor.notify();
        }
        if let Some(last) = entries.last() {
            self.applied = last.index;
        }
        self.mvcc = Some(applier.into_state());
        if members_changed {
            let members = cluster::load_members(&self.db)?;
            if let Ok(mut m) = self.shared.members.lock() {
                *m = members;
            }
        }
        Ok(revision)
    }

    fn begin_compaction(&mut self, point: SnapshotMetadata) -> Result<()> {
        // After every apply batch so far, and like them without RocksDB's WAL: the flush that
        // persists this record persists all of them (atomic flush), so a durable record always
        // comes with an applied index at or past it.
        let mut batch = self.db.batch();
        batch.put_log_start(&point);
        if self.applied > 0 {
            batch.put_applied(self.applied);
        }
        self.db.write_applied(batch)?;
        if self.flusher.is_none() {
            self.flusher = Some(Flusher::start(self.db.clone())?);
        }
        let stopped = || Error::Startup("the log compaction thread stopped".into());
        match &self.flusher {
            Some(f) => f.points.send(point).map_err(|_| stopped()),
            None => Err(stopped()),
        }
    }

    fn compaction_durable(&mut self) -> Result<Option<SnapshotMetadata>> {
        let Some(f) = &self.flusher else {
            return Ok(None);
        };
        match f.durable.try_recv() {
            Ok(result) => result.map(Some),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => {
                Err(Error::Startup("the log compaction thread stopped".into()))
            }
        }
    }
}

fn is_request(entry: &Entry) -> bool {
    entry.get_entry_type() == EntryType::EntryNormal
}

/// The key space's requests, applied by MVCC.
fn apply_kv(applier: &mut Applier, p: Proposal) -> Result<Applied, EtcdError> {
    Ok(match p {
        Proposal::Put(r) => Applied::Put(applier.put(&r)?),
        Proposal::DeleteRange(r) => Applied::DeleteRange(applier.delete_range(&r)?),
        Proposal::Txn(r) => Applied::Txn(applier.txn(&r)?),
        Proposal::Compaction(r) => Applied::Compaction {
            revision: applier.compact(&r)?,
        },
        Proposal::Publish(m) => Applied::Published { member: m.id },
    })
}
