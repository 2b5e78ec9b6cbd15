//! Raft snapshots: the image of the state machine a leader sends a follower that is behind its
//! compacted log ([`Snapshots`], on the sending side), and the follower's install of one it
//! received ([`stage`], [`commit`], [`recover`]), as etcd's snapshotter and its backend swap do.
//!
//! **Sending.** raft-rs asks [`super::RaftLog`] for a snapshot when a follower needs entries
//! before the log's first index. The first ask starts a RocksDB checkpoint on a thread of its own
//! and raft-rs is told to try again (`SnapshotTemporarilyUnavailable`); once the checkpoint is
//! there, its applied index and conf state (read from the checkpoint itself, so they describe
//! exactly what it holds) and that entry's term make the snapshot's metadata. The `MsgSnapshot`
//! carries only that; the peer gateway then opens the image ([`Snapshots::open`]) and streams it
//! on a QUIC stream of its own. The one prepared checkpoint serves every follower that needs it.
//! While an image is being read, and for [`PAUSE_AFTER_SEND`] after, the raft log is not
//! compacted (as etcd skips compaction while a snapshot is in flight), so that the follower finds
//! the entries after the snapshot when it comes back.
//!
//! **Installing**, each step safe to crash after (a kill -9 leaves the old state or the new one,
//! never a mix):
//! 1. [`stage`]: the received image, verified (length, format, trailing SHA-256), is unpacked
//!    into `db.incoming`, which must hold the applied index the message names; this member's
//!    identity, the log's new start (the snapshot's metadata) and its conf state are written
//!    into it, synced. The live state is untouched.
//! 2. [`commit`], on the raft thread, which then stops: a fresh WAL in `wal.incoming` holding
//!    the current hard state (term and vote, never forgotten) with the commit index raised to
//!    the snapshot's; then the marker file [`INSTALL_MARKER`], synced: the commit point.
//! 3. The swap: `db` and `wal` are renamed aside, the incoming ones renamed into place, the old
//!    ones and the marker removed. A start that finds the marker finishes the swap; one that
//!    finds incoming directories without it removes them ([`recover`]).
//!
//! Then consensus restarts itself in place on the new state (the gateways register again).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};
use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use tracing::{info, warn};

use super::image::{self, Checkpoint, Image};
use super::raft_log::decode;
use super::schema::{Cf, META_APPLIED, META_CONF_STATE, META_SNAPSHOT_INSTALLED};
use super::wal::Wal;
use super::{Db, be_u64};
use crate::error::{Error, Result};

/// Raft snapshot checkpoints under the data dir's [`image::SNAP_DIR`].
pub const CHECKPOINT_PREFIX: &str = "raft-";
/// Received images under [`image::SNAP_DIR`], until installed or refused.
pub const INCOMING_PREFIX: &str = "incoming-";
/// Present from the commit of an install until its swap is done.
pub const INSTALL_MARKER: &str = "snapshot-install";
/// How long after an image was last read the raft log stays uncompacted: the receiver checks and
/// installs it and restarts, then needs the entries after it (the catch-up entries cover the
/// usual case; this, a cluster writing faster than that meanwhile).
pub const PAUSE_AFTER_SEND: Duration = Duration::from_secs(10);
/// A prepared checkpoint nobody read for this long is dropped (it pins old SST files).
const KEEP_UNUSED: Duration = Duration::from_secs(300);

/// A checkpoint ready to send, and what it holds.
struct Prepared {
    index: u64,
    conf_state: ConfState,
    checkpoint: Arc<Checkpoint>,
    made: Instant,
}

#[derive(Default)]
struct Slot {
    prepared: Option<Prepared>,
    preparing: bool,
    /// Images being read now, and when the last read ended.
    readers: usize,
    last_read: Option<Instant>,
    /// Why the last preparation failed, logged once.
    failed: Option<String>,
}

/// The leader's raft snapshot images (see the module doc). Shared by the raft thread (through
/// [`super::RaftLog`]) and the IPC thread (which hands images to the peer gateway).
pub struct Snapshots {
    db: Arc<Db>,
    data_dir: PathBuf,
    slot: Mutex<Slot>,
}

/// Held while an image is read; ends the read when dropped.
struct ReadLease(Arc<Snapshots>);

impl Drop for ReadLease {
    fn drop(&mut self) {
        let mut slot = self.0.lock();
        slot.readers = slot.readers.saturating_sub(1);
        slot.last_read = Some(Instant::now());
    }
}

impl Snapshots {
    pub fn new(db: Arc<Db>, data_dir: &Path) -> Arc<Snapshots> {
        Arc::new(Snapshots {
            db,
            data_dir: data_dir.to_path_buf(),
            slot: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot is a few fields written under the lock with no panic in between.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The prepared snapshot's index and conf state if it is at least `request_index`; else
    /// starts preparing a new one (once) and answers `None`.
    pub fn current(self: &Arc<Self>, request_index: u64) -> Option<(u64, ConfState)> {
        let mut slot = self.lock();
        if let Some(p) = &slot.prepared
            && p.index >= request_index
        {
            return Some((p.index, p.conf_state.clone()));
        }
        if !slot.preparing {
            slot.preparing = true;
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("raft-snapshot".into())
                .spawn(move || me.prepare());
            if let Err(e) = spawned {
                slot.preparing = false;
                warn!("cannot start preparing a raft snapshot: {e}");
            }
        }
        None
    }

    /// Forgets the prepared snapshot (raft no longer has its term: the log moved on).
    pub fn discard(&self) {
        self.lock().prepared = None;
    }

    fn prepare(self: Arc<Self>) {
        let started = Instant::now();
        let made = Checkpoint::create(&self.db, &self.data_dir, CHECKPOINT_PREFIX).and_then(|c| {
            let (index, conf_state) = checkpoint_point(c.dir())?;
            Ok((c, index, conf_state))
        });
        let mut slot = self.lock();
        slot.preparing = false;
        match made {
            Ok((checkpoint, index, conf_state)) => {
                info!(
                    index,
                    took_ms = started.elapsed().as_millis() as u64,
                    "prepared a raft snapshot for a follower behind the compacted log"
                );
                slot.failed = None;
                slot.prepared = Some(Prepared {
                    index,
                    conf_state,
                    checkpoint: Arc::new(checkpoint),
                    made: Instant::now(),
                });
            }
            Err(e) => {
                let why = e.to_string();
                if slot.failed.as_ref() != Some(&why) {
                    warn!("cannot prepare a raft snapshot: {why}");
                }
                slot.failed = Some(why);
            }
        }
    }

    /// The image of the prepared snapshot at `index`, for the peer gateway to send.
    pub fn open(self: &Arc<Self>, index: u64) -> Result<Image> {
        let checkpoint = {
            let mut slot = self.lock();
            let checkpoint = match &slot.prepared {
                Some(p) if p.index == index => p.checkpoint.clone(),
                Some(p) => {
                    return Err(Error::StorageState(format!(
                        "no raft snapshot at index {index}: the prepared one is at {}",
                        p.index
                    )));
                }
                None => {
                    return Err(Error::StorageState(format!(
                        "no raft snapshot at index {index} is prepared"
                    )));
                }
            };
            slot.readers += 1;
            checkpoint
        };
        let lease = ReadLease(self.clone());
        Image::of(checkpoint, Some(Box::new(lease)))
    }

    /// Whether the raft log must not be compacted now: an image is being read, or was lately.
    /// Also drops a prepared checkpoint nobody used for a while.
    pub fn in_flight(&self) -> bool {
        let mut slot = self.lock();
        let now = Instant::now();
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < KEEP_UNUSED);
        if slot.readers == 0
            && !recent(slot.last_read)
            && slot
                .prepared
                .as_ref()
                .is_some_and(|p| now.duration_since(p.made) >= KEEP_UNUSED)
        {
            slot.prepared = None;
        }
        slot.readers > 0
            || slot
                .last_read
                .is_some_and(|t| now.duration_since(t) < PAUSE_AFTER_SEND)
    }
}

/// The applied index and conf state a checkpoint holds, read from it without changing a file of
/// it (read-only, RocksDB's own log elsewhere).
fn checkpoint_point(dir: &Path) -> Result<(u64, ConfState)> {
    let mut opts = Options::default();
    opts.set_db_log_dir(dir.parent().unwrap_or(dir));
    let cfs = Cf::ALL
        .into_iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
    let db = DB::open_cf_descriptors_read_only(&opts, dir, cfs, false)
        .map_err(|e| Error::storage(format!("opening the checkpoint {}", dir.display()), e))?;
    let meta = db
        .cf_handle(Cf::Meta.name())
        .ok_or_else(|| Error::StorageState(format!("{}: no meta family", dir.display())))?;
    let read = |key: &[u8]| {
        db.get_cf(meta, key)
            .map_err(|e| Error::storage(format!("reading the checkpoint {}", dir.display()), e))
    };
    let applied = read(META_APPLIED)?.map(|v| be_u64(&v)).unwrap_or(0);
    let conf_state = match read(META_CONF_STATE)? {
        Some(v) => decode("the checkpoint's conf state", &v)?,
        None => ConfState::default(),
    };
    if applied == 0 {
        return Err(Error::StorageState(format!(
            "the checkpoint {} holds nothing applied",
            dir.display()
        )));
    }
    Ok((applied, conf_state))
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(what.to_string(), e)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", dir.display())))
}

fn remove_dir_if_any(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
    }
}

/// The live directory, its incoming replacement and where it goes aside, per store.
fn swaps(data_dir: &Path) -> [(PathBuf, PathBuf, PathBuf); 2] {
    ["db", "wal"].map(|name| {
        (
            data_dir.join(name),
            data_dir.join(format!("{name}.incoming")),
            data_dir.join(format!("{name}.old")),
        )
    })
}

/// Install step 1: unpacks the image in `image_file` (checked as it goes) into `db.incoming`
/// and makes it this member's at `point`: its identity, the raft log's start, the conf state.
/// Removes `db.incoming` again on any error.
pub fn stage(
    data_dir: &Path,
    image_file: &Path,
    point: &SnapshotMetadata,
    identity: &[u8],
) -> Result<()> {
    let [(_, into, _), (_, wal_into, _)] = swaps(data_dir);
    remove_dir_if_any(&into)?;
    remove_dir_if_any(&wal_into)?;
    let file =
        fs::File::open(image_file).map_err(io_err(format!("opening {}", image_file.display())))?;
    let result = (|| {
        image::unpack(file, &image_file.display().to_string(), &into)?;
        let db = Db::open(&into)?;
        let applied = db.applied_index()?;
        if applied != point.index {
            return Err(Error::StorageState(format!(
                "{}: the image holds applied index {applied}, but its message describes a \
                 snapshot at index {}",
                image_file.display(),
                point.index
            )));
        }
        let mut batch = db.batch();
        batch.put_identity(identity);
        batch.put_log_start(point);
        batch.put_conf_state(point.get_conf_state());
        batch.put(Cf::Meta, META_SNAPSHOT_INSTALLED, point.index.to_be_bytes());
        db.write(batch, true)?;
        db.flush_applied()?;
        drop(db);
        sync_dir(&into)?;
        sync_dir(data_dir)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&into);
    }
    result
}

/// Install step 2, on the raft thread: a WAL of `hard_state` alone in `wal.incoming`, then the
/// marker (the commit point), then the swap. `hard_state` must be raft's current one.
pub fn commit(data_dir: &Path, hard_state: &HardState) -> Result<()> {
    let [_, (_, wal_into, _)] = swaps(data_dir);
    remove_dir_if_any(&wal_into)?;
    {
        let mut wal = Wal::open(&wal_into)?;
        wal.set_hard_state(hard_state);
        wal.write(true)?;
    }
    sync_dir(data_dir)?;
    let marker = data_dir.join(INSTALL_MARKER);
    fs::write(
        &marker,
        b"install the snapshot in db.incoming and wal.incoming\n",
    )
    .and_then(|()| fs::File::open(&marker)?.sync_all())
    .map_err(io_err(format!("writing {}", marker.display())))?;
    sync_dir(data_dir)?;
    info!("raft snapshot install committed; swapping the directories");
    if let Some(pause) = schema::failpoint::pause(schema::failpoint::SNAPSHOT_INSTALL_PAUSE) {
        std::thread::sleep(pause);
    }
    swap(data_dir)
}

/// Step 3: puts the incoming directories in place of the live ones; safe to repeat after a
/// crash at any point (only called once the marker exists).
fn swap(data_dir: &Path) -> Result<()> {
    for (live, incoming, old) in swaps(data_dir) {
        if incoming.exists() {
            if live.exists() {
                remove_dir_if_any(&old)?;
                fs::rename(&live, &old).map_err(io_err(format!(
                    "renaming {} to {}",
                    live.display(),
                    old.display()
                )))?;
            }
            fs::rename(&incoming, &live).map_err(io_err(format!(
                "renaming {} to {}",
                incoming.display(),
                live.display()
            )))?;
            sync_dir(data_dir)?;
        }
    }
    let marker = data_dir.join(INSTALL_MARKER);
    fs::remove_file(&marker).map_err(io_err(format!("removing {}", marker.display())))?;
    sync_dir(data_dir)?;
    for (_, _, old) in swaps(data_dir) {
        remove_dir_if_any(&old)?;
    }
    Ok(())
}

/// Drops a staged install that turned out not to be needed.
pub fn unstage(data_dir: &Path) -> Result<()> {
    let [(_, db_into, _), (_, wal_into, _)] = swaps(data_dir);
    remove_dir_if_any(&db_into)?;
    remove_dir_if_any(&wal_into)
}

/// At start, before the database and the WAL are opened: finishes an install that was
/// committed, or drops one that was not. Returns whether an install was finished.
pub fn recover(data_dir: &Path) -> Result<bool> {
    if data_dir.join(INSTALL_MARKER).exists() {
        swap(data_dir)?;
        info!("finished installing a raft snapshot that a restart interrupted");
        return Ok(true);
    }
    for (_, incoming, old) in swaps(data_dir) {
        if incoming.exists() {
            info!(
                dir = %incoming.display(),
                "dropping a raft snapshot whose install did not commit"
            );
        }
        remove_dir_if_any(&incoming)?;
        remove_dir_if_any(&old)?;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member's data dir with a db (applied through `applied`) and a WAL.
    fn member(dir: &Path, applied: u64, value: &[u8]) {
        let db = Db::open(&dir.join("db")).unwrap();
        let mut b = db.batch();
        b.put_applied(applied);
        b.put(Cf::Meta, b"test/value", value);
        b.put_identity(b"identity of the image's member");
        db.write(b, true).unwrap();
        let mut wal = Wal::open(&dir.join("wal")).unwrap();
        wal.set_hard_state(&HardState {
            term: 3,
            vote: 1,
            commit: applied,
            ..Default::default()
        });
        wal.write(true).unwrap();
    }

    fn value(dir: &Path) -> Vec<u8> {
        let db = Db::open(&dir.join("db")).unwrap();
        db.get_meta(b"test/value").unwrap().unwrap()
    }

    fn point(index: u64) -> SnapshotMetadata {
        let mut p = SnapshotMetadata {
            index,
            term: 4,
            ..Default::default()
        };
        p.mut_conf_state().set_voters(vec![1, 2, 3]);
        p
    }

    /// An image of a member at applied index 50 holding value "new", written to a file.
    fn image_file(root: &Path) -> PathBuf {
        let leader = root.join("leader");
        member(&leader, 50, b"new");
        let db = Db::open(&leader.join("db")).unwrap();
        let mut img = Image::create(&db, &leader).unwrap();
        let file = root.join("image");
        let mut out = Vec::new();
        loop {
            let chunk = img.read_chunk(1 << 16).unwrap();
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
        }
        fs::write(&file, out).unwrap();
        file
    }

    #[test]
    fn an_install_replaces_the_state_and_keeps_identity_and_vote() {
        let root = tempfile::tempdir().unwrap();
        let file = image_file(root.path());
        let follower = root.path().join("follower");
        member(&follower, 10, b"old");
        stage(&follower, &file, &point(50), b"the follower").unwrap();
        // Staged only: a start now drops it and keeps the old state.
        assert_eq!(value(&follower), b"old");
        let hs = HardState {
            term: 7,
            vote: 2,
            commit: 50,
            ..Default::default()
        };
        commit(&follower, &hs).unwrap();
        assert!(!recover(&follower).unwrap());
        assert_eq!(value(&follower), b"new");
        let db = Db::open(&follower.join("db")).unwrap();
        assert_eq!(db.identity().unwrap().unwrap(), b"the follower");
        assert_eq!(db.applied_index().unwrap(), 50);
        assert_eq!(db.log_start().unwrap().unwrap(), point(50));
        drop(db);
        let wal = Wal::open(&follower.join("wal")).unwrap();
        assert_eq!(wal.hard_state(), Some(&hs));
        assert_eq!(wal.last(), None);
        for leftover in [
            "db.incoming",
            "wal.incoming",
            "db.old",
            "wal.old",
            INSTALL_MARKER,
        ] {
            assert!(!follower.join(leftover).exists(), "{leftover}");
        }
    }

    #[test]
    fn a_crash_before_the_marker_keeps_the_old_state_and_after_it_the_new() {
        let root = tempfile::tempdir().unwrap();
        let file = image_file(root.path());
        // Crashed after staging: the old state.
        let a = root.path().join("a");
        member(&a, 10, b"old");
        stage(&a, &file, &point(50), b"a").unwrap();
        assert!(!recover(&a).unwrap());
        assert_eq!(value(&a), b"old");
        assert!(!a.join("db.incoming").exists());
        // Crashed at each point of the swap after the marker: the new state, every time.
        for renamed in 0..=4 {
            let b = root.path().join(format!("b{renamed}"));
            member(&b, 10, b"old");
            stage(&b, &file, &point(50), b"b").unwrap();
            let mut wal = Wal::open(&b.join("wal.incoming")).unwrap();
            wal.set_hard_state(&HardState::default());
            wal.write(true).unwrap();
            drop(wal);
            fs::write(b.join(INSTALL_MARKER), b"").unwrap();
            let steps = [
                ("db", "db.old"),
                ("db.incoming", "db"),
                ("wal", "wal.old"),
                ("wal.incoming", "wal"),
            ];
            for (from, to) in steps.iter().take(renamed) {
                fs::rename(b.join(from), b.join(to)).unwrap();
            }
            assert!(recover(&b).unwrap(), "after {renamed} renames");
            assert_eq!(value(&b), b"new", "after {renamed} renames");
            assert!(!b.join(INSTALL_MARKER).exists());
            assert!(!b.join("db.old").exists() && !b.join("wal.old").exists());
        }
    }

    #[test]
    fn a_damaged_image_or_one_of_another_point_is_refused_and_nothing_is_left() {
        let root = tempfile::tempdir().unwrap();
        let file = image_file(root.path());
        let follower = root.path().join("follower");
        member(&follower, 10, b"old");
        let e = stage(&follower, &file, &point(49), b"f").unwrap_err();
        assert!(e.to_string().contains("applied index 50"), "{e}");
        assert!(!follower.join("db.incoming").exists());
        let mut bytes = fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&file, &bytes).unwrap();
        let e = stage(&follower, &file, &point(50), b"f").unwrap_err();
        assert!(
            e.to_string().contains("SHA-256") || e.to_string().contains("damaged"),
            "{e}"
        );
        assert!(!follower.join("db.incoming").exists());
        assert_eq!(value(&follower), b"old");
    }

    #[test]
    fn a_prepared_checkpoint_describes_what_it_holds_and_pauses_compaction_while_read() {
        let root = tempfile::tempdir().unwrap();
        member(root.path(), 42, b"v");
        let db = Db::open(&root.path().join("db")).unwrap();
        let snaps = Snapshots::new(db, root.path());
        assert!(snaps.current(10).is_none());
        let deadline = Instant::now() + Duration::from_secs(20);
        let (index, _) = loop {
            if let Some(p) = snaps.current(10) {
                break p;
            }
            assert!(Instant::now() < deadline, "no snapshot prepared");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(index, 42);
        assert!(!snaps.in_flight());
        assert!(snaps.open(41).is_err());
        let image = snaps.open(42).unwrap();
        assert!(snaps.in_flight());
        assert!(image.total_bytes() > 0);
        drop(image);
        // Read lately: still paused.
        assert!(snaps.in_flight());
    }
}
