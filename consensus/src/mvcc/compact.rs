//! Compaction, in two halves, as etcd does it:
//! - the apply records it ([`Applier::compact`]): the compacted revision goes into the entry's
//!   batch with the applied index, so reads below it answer "compacted" from then on and a crash
//!   never loses it. That is all the raft thread does, whatever the size of the key space;
//! - the [`Compactor`] thread then deletes the versions no read can reach any more, in bounded
//!   batches ([`BATCH_ROWS`] rows, a [`BATCH_PAUSE`] between two), never holding up apply or
//!   heartbeats. Each batch stores where the pass goes on in the same write as its deletes, so a
//!   restart resumes it ([`plan`]).
//!
//! Which versions go is [`Keep`]'s decision, which HashKV shares, so that a hash never depends on
//! how far the background pass got.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::NEVER_COMPACTED;
use super::apply::Applier;
use super::types::CompactionRequest;
use super::view::View;
use crate::error::{Error, Result};
use crate::etcd_error::{self as ee, EtcdError};
use crate::ipc::lower_priority;
use crate::storage::{Db, PassCursor, ReadView, parse_row};

/// Rows one background batch looks at (etcd deletes up to 1,000 revisions a batch).
pub const BATCH_ROWS: usize = 1000;

/// The pause between two background batches, so that apply, reads and the disk get their turn
/// (etcd: 10 ms).
pub const BATCH_PAUSE: Duration = Duration::from_millis(10);

impl Applier<'_> {
    /// Records a compaction: from this entry on, reads below `revision` are refused and every
    /// version older than it except the one still visible there is garbage, which the
    /// [`Compactor`] deletes in the background once this batch is written. The change log goes
    /// at once (one range deletion).
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<i64, EtcdError> {
        if req.revision <= self.compact_revision {
            return Err(ee::compacted());
        }
        if req.revision > self.revision {
            return Err(ee::future_rev());
        }
        // The latest-version cache stays valid: compaction keeps every key's newest version,
        // and drops a tombstone only where the key already has no live version.
        self.compact_revision = req.revision;
        self.batch.delete_changes_through(req.revision);
        Ok(self.revision)
    }
}

/// Which versions a compaction at `revision` keeps, fed the rows in row order (key, then newest
/// first): every version above it, and at or below it only the newest one, unless that is a
/// tombstone (a deleted key has nothing left to see there).
pub(super) struct Keep {
    revision: i64,
    key: Option<Vec<u8>>,
    /// Whether the current key's version visible at `revision` was already fed.
    seen: bool,
}

/// What becomes of one version.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fate {
    Kept,
    Deleted,
    /// The tombstone visible at the revision: deleted too, but only with or after every older
    /// version of its key, or a read would see the version it deleted come back.
    DeletedLast,
}

impl Keep {
    pub(super) fn new(revision: i64) -> Keep {
        Keep {
            revision,
            key: None,
            seen: false,
        }
    }

    /// The fate of the version of `key` at `rev`.
    pub(super) fn fate(&mut self, key: Vec<u8>, rev: i64, tombstone: bool) -> Fate {
        if self.key.as_ref() != Some(&key) {
            self.key = Some(key);
            self.seen = false;
        }
        if rev > self.revision {
            return Fate::Kept;
        }
        let visible = !self.seen;
        self.seen = true;
        match (visible, tombstone) {
            (true, false) => Fate::Kept,
            (true, true) => Fate::DeletedLast,
            (false, _) => Fate::Deleted,
        }
    }

    /// Whether the version of `key` at `rev` stays.
    pub(super) fn keeps(&mut self, key: Vec<u8>, rev: i64, tombstone: bool) -> bool {
        self.fate(key, rev, tombstone) == Fate::Kept
    }

    /// Starts in the middle of `key`'s versions, at the one at `rev`, as if every row before it
    /// had been fed: an earlier batch already saw the version visible at `revision` when that is
    /// newer than `rev`. Returns that version's row when it is a tombstone, still to be deleted
    /// after the rest of the key.
    fn resume(&mut self, read: &ReadView, key: Vec<u8>, rev: i64) -> Result<Option<Vec<u8>>> {
        let mut seen = false;
        let mut tombstone = None;
        if rev <= self.revision {
            let mut it = read.versions();
            it.seek_version(&key, self.revision);
            if let Some(row) = it.row() {
                let (k, visible) = parse_row(row)?;
                seen = k == key && visible > rev;
                if seen && it.value().is_some_and(is_tombstone) {
                    tombstone = Some(row.to_vec());
                }
            }
            it.status("compacting")?;
        }
        self.key = Some(key);
        self.seen = seen;
        Ok(tombstone)
    }
}

/// A stored record is a tombstone when its first byte says so.
pub(super) fn is_tombstone(raw: &[u8]) -> bool {
    raw.first() == Some(&1)
}

/// One bounded batch of the pass of the compaction at `revision`, from `from` (the first row
/// when `None`): at most `rows` rows looked at, their garbage deleted, and where the pass goes on
/// (or that it finished) in the same write. Returns the row the next batch starts from, `None`
/// once the pass is done.
pub(super) fn compact_batch(
    db: &Db,
    revision: i64,
    from: Option<&[u8]>,
    rows: usize,
) -> Result<Option<Vec<u8>>> {
    // Rows at or below `revision` never change any more (writes come at higher revisions), so
    // a snapshot per batch decides what a live read would.
    let read = db.snapshot();
    let mut it = read.versions();
    let mut keep = Keep::new(revision);
    // The visible tombstone of the key being walked, deleted once its older versions are.
    let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
    match from {
        Some(row) => {
            it.seek_row(row);
            if let Some(row) = it.row() {
                let (key, rev) = parse_row(row)?;
                last = keep.resume(&read, key.clone(), rev)?.map(|t| (key, t));
            }
        }
        None => it.seek_to_first(),
    }
    let mut batch = db.batch();
    let mut next = None;
    let mut looked = 0;
    while let Some(row) = it.row() {
        let (key, rev) = parse_row(row)?;
        if let Some((k, tombstone)) = &last
            && *k != key
        {
            batch.delete_version_row(tombstone);
            last = None;
        }
        if looked == rows {
            next = Some(row.to_vec());
            break;
        }
        looked += 1;
        match keep.fate(key.clone(), rev, it.value().is_some_and(is_tombstone)) {
            Fate::Kept => {}
            Fate::Deleted => batch.delete_version_row(row),
            Fate::DeletedLast => last = Some((key, row.to_vec())),
        }
        it.next();
    }
    it.status("compacting")?;
    // At the end of the key space; inside the key, the next batch finds the tombstone again.
    if let (None, Some((_, tombstone))) = (&next, &last) {
        batch.delete_version_row(tombstone);
    }
    match &next {
        Some(row) => batch.put_compaction_cursor(revision, row),
        None => batch.put_compaction_finished(revision),
    }
    db.write_applied(batch)?;
    Ok(next)
}

/// What the background pass does next, from what is stored.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// Every compaction's pass has finished (or there was none).
    Idle,
    /// The pass of the compaction at `revision`, from `from` (the start when `None`).
    Pass {
        revision: i64,
        from: Option<Vec<u8>>,
    },
}

/// The pass to run: the one of the newest compaction, resumed where it stopped, or from the
/// start when its position is of an older compaction (whose pass a newer one supersedes: it
/// deletes a superset). A compaction whose pass never finished, or was never recorded (a data
/// dir from before passes were recorded), gets one: deleting garbage twice is harmless.
pub(super) fn plan(compacted: i64, finished: Option<i64>, cursor: Option<PassCursor>) -> Plan {
    if compacted == NEVER_COMPACTED || finished.is_some_and(|f| f >= compacted) {
        return Plan::Idle;
    }
    Plan::Pass {
        revision: compacted,
        from: cursor.filter(|(r, _)| *r == compacted).map(|(_, row)| row),
    }
}

/// Runs at most `batches` batches of the pass [`plan`] asks for, `pause` between two. Returns
/// the revision whose pass is finished once none is left to run, `None` while one goes on.
pub(super) fn run_passes(db: &Db, batches: usize, pause: Duration) -> Result<Option<i64>> {
    let mut ran = 0;
    loop {
        let compacted = View::live(db).compact_revision()?;
        let (finished, cursor) = db.compaction_progress()?;
        let Plan::Pass { revision, mut from } = plan(compacted, finished, cursor) else {
            return Ok(Some(finished.unwrap_or(compacted)));
        };
        let started = Instant::now();
        info!(
            revision,
            resumed = from.is_some(),
            "compaction: deleting old versions in the background"
        );
        loop {
            if ran == batches {
                return Ok(None);
            }
            from = compact_batch(db, revision, from.as_deref(), BATCH_ROWS)?;
            ran += 1;
            if from.is_none() {
                info!(revision, took = ?started.elapsed(), "compaction: finished");
                break;
            }
            std::thread::sleep(pause);
            if View::live(db).compact_revision()? != revision {
                // A newer compaction came in: its pass starts over and covers this one.
                break;
            }
        }
    }
}

/// The background half of compaction: a thread of its own that runs the pass of each recorded
/// compaction (and at start, of one a restart interrupted). A storage error stops the process,
/// as one during apply does.
pub struct Compactor {
    wake: mpsc::Sender<()>,
}

impl Compactor {
    /// Starts the thread; `finished` is told the revision of each compaction whose pass is done
    /// (first with what is already done at start).
    pub fn start(db: Arc<Db>, finished: impl Fn(i64) + Send + 'static) -> Result<Compactor> {
        let (wake, woken) = mpsc::channel();
        std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || {
                lower_priority();
                loop {
                    match run_passes(&db, usize::MAX, BATCH_PAUSE) {
                        Ok(Some(done)) => finished(done),
                        Ok(None) => {}
                        Err(e) => {
                            error!("background compaction failed, stopping: {e}");
                            std::process::exit(1);
                        }
                    }
                    if woken.recv().is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting the compactor thread", e))?;
        Ok(Compactor { wake })
    }

    /// A compaction was written: run its pass.
    pub fn notify(&self) {
        let _ = self.wake.send(());
    }
}
