//! The raft log's write-ahead log: what raft must have on disk before it speaks (new entries and
//! the hard state), as records appended to segment files in `<data-dir>/wal/`, each write made
//! durable with one `fdatasync`.
//!
//! Why not RocksDB's own WAL: a RocksDB WAL file grows with every write, so each `fdatasync` also
//! writes the inode (its size changed) before the cache flush, three dependent disk round trips.
//! Segments here are allocated full-size ahead of time (by a helper thread), so a sync is the data
//! plus the flush, as with etcd's preallocated WAL segments; and the entries skip RocksDB's
//! memtable. The state machine stays in RocksDB.
//!
//! A record is `len: u32 LE | check: first 8 bytes of SHA-256(payload) | payload`. A zero `len`
//! is the end of the log (unused, zeroed space). A record that does not check out is a write torn
//! by a crash only when it is the very last thing in the log: each record is durable before the
//! next is written, so a bad record with any valid record after it, in its segment or a later
//! one, is corruption, and the log refuses to open (naming the segment and offset) without
//! having changed a byte. Only once the whole log has been read is a torn final record cleared. The payload:
//! `hard state (u32 length, then protobuf; length 0: none) | entry count: u32 | per entry: index
//! u64 | term u64 | length u32 | protobuf Entry`. A later entry with an index already in the log
//! replaces that entry and everything after it (a new leader overwrote an uncommitted tail).
//!
//! Compaction ([`Wal::compact`]) drops the entries up to a compaction point from the index and
//! deletes the segments wholly before the one holding the point; the segment holding it stays,
//! so the log on disk always starts at or before the point + 1. The point itself is recorded by
//! the caller (in RocksDB, see [`super::RaftLog`]): the WAL only forgets.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// Size of a segment; a record larger than this gets a segment of its own size.
pub const SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: usize = 12;
/// Zeroes are written in chunks of this size when a segment is prepared.
const ZERO_CHUNK: usize = 1 << 20;

/// Where an entry's bytes are, so it can be read back without keeping it in memory.
#[derive(Clone, Copy, Debug)]
struct Position {
    segment: u64,
    offset: u64,
    len: u32,
    /// CRC-32 of the entry's bytes, checked when it is read back (the record's own checksum is
    /// checked only at open).
    crc: u32,
    term: u64,
}

struct Segment {
    id: u64,
    file: File,
    capacity: u64,
}

pub struct Wal {
    dir: PathBuf,
    /// Every segment holding entries, oldest first; the last one is being written.
    segments: Vec<Segment>,
    /// Where the next record goes in the last segment.
    write_at: u64,
    /// The next segment, zero-filled by a helper thread while this one fills.
    spare: Option<mpsc::Receiver<Result<Segment>>>,
    /// Positions of entries `first..first + positions.len()`.
    first: u64,
    positions: VecDeque<Position>,
    hard_state: Option<HardState>,
    /// The record being built by `append` and `set_hard_state`, written by `sync`.
    pending_hs: Option<HardState>,
    /// Queued entries as they go in the record (index, term, length, protobuf), encoded once,
    /// and for each (index, term, offset of its protobuf in `pending_body`, length, CRC-32).
    pending_body: Vec<u8>,
    pending_entries: Vec<(u64, u64, usize, u32, u32)>,
    /// The active segment holds records not yet fdatasync'ed.
    unsynced: bool,
    /// A durable `write` waits for `wait_durable`.
    sync_due: bool,
    /// Where the last record went in the active segment (offset, length).
    last_record: (u64, u64),
    /// The segment of the last record that carried a hard state: compaction never deletes it
    /// without writing the hard state again first.
    hs_segment: u64,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.wal"))
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Creates segment `id` of `capacity` zero bytes, durably (file and directory entry), under a
/// temporary name first so a crash never leaves a short segment behind.
fn prepare_segment(dir: &Path, id: u64, capacity: u64) -> Result<Segment> {
    let path = segment_path(dir, id);
    let tmp = path.with_extension("tmp");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("creating {}", tmp.display())))?;
    // Allocated blocks read as zeroes; where the filesystem cannot allocate, write the zeroes.
    if nix::fcntl::posix_fallocate(&file, 0, capacity as i64).is_err() {
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = 0;
        while at < capacity {
            let n = ZERO_CHUNK.min((capacity - at) as usize);
            file.write_all_at(&zeros[..n], at)
                .map_err(io_err(format!("zero-filling {}", tmp.display())))?;
            at += n as u64;
        }
    }
    file.sync_all()
        .map_err(io_err(format!("syncing {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io_err(format!("renaming {}", tmp.display())))?;
    sync_dir(dir)?;
    Ok(Segment { id, file, capacity })
}

/// Starts writing `len` bytes at `offset` to the device without waiting (sync_file_range, which
/// nix lacks), so the disk works while the raft thread applies; the fdatasync that follows waits
/// for this write and flushes the device's cache. Failing here costs nothing: fdatasync writes
/// whatever is still dirty itself.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a syscall on a descriptor that `file` keeps open; it takes no memory from us.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        debug!(
            "sync_file_range: {}; fdatasync will do the write",
            io::Error::last_os_error()
        );
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

/// Where the first record that checks out lies after the bad one at `bad` in a segment's
/// `data`, if any: every later offset is tried, as the bad record's length cannot be trusted.
/// A torn write is the last thing written, so finding one means corruption.
fn valid_record_after(data: &[u8], bad: usize) -> Option<usize> {
    let u32_at = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let checks_out = |at: usize| {
        let Some(len) = u32_at(at) else {
            return false;
        };
        let Some(payload) = data.get(at + HEADER..).and_then(|rest| rest.get(..len)) else {
            return false;
        };
        // Cheap checks first: a payload starts with the hard state's length (a few dozen bytes
        // at most) and holds an entry count after it; only then the checksum.
        let plausible = u32_at(at + HEADER).is_some_and(|hs| hs <= 64 && 8 + hs <= len);
        plausible && checksum(payload)[..] == data[at + 4..at + HEADER]
    };
    (bad + 1..data.len()).find(|&at| checks_out(at))
}

/// What one record holds.
struct Record {
    hard_state: Option<HardState>,
    /// (index, term, offset of the protobuf bytes within the payload, length).
    entries: Vec<(u64, u64, usize, u32)>,
}

fn parse_payload(p: &[u8]) -> Option<Record> {
    struct Cursor<'a> {
        p: &'a [u8],
        at: usize,
    }
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let s = self.p.get(self.at..self.at.checked_add(n)?)?;
            self.at += n;
            Some(s)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
    }
    let mut c = Cursor { p, at: 0 };
    let hs_len = c.u32()? as usize;
    let hard_state = if hs_len > 0 {
        Some(HardState::parse_from_bytes(c.take(hs_len)?).ok()?)
    } else {
        None
    };
    let count = c.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let index = c.u64()?;
        let term = c.u64()?;
        let len = c.u32()?;
        let offset = c.at;
        c.take(len as usize)?;
        entries.push((index, term, offset, len));
    }
    (c.at == p.len()).then_some(Record {
        hard_state,
        entries,
    })
}

impl Wal {
    /// Opens the log in `dir` (created if missing) and reads it back: the hard state and where
    /// every entry is. A torn record at the very end is dropped and overwritten later.
    pub fn open(dir: &Path) -> Result<Wal> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        // The directory's own entry must survive a crash too.
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut ids = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
            let item = item.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".wal") {
                match u64::from_str_radix(stem, 16) {
                    Ok(id) => ids.push(id),
                    Err(_) => warn!("ignoring {name} in {}", dir.display()),
                }
            } else if name.ends_with(".tmp") {
                // A segment whose preparation a crash interrupted.
                let _ = fs::remove_file(item.path());
            }
        }
        ids.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            write_at: 0,
            spare: None,
            first: 0,
            positions: VecDeque::new(),
            hard_state: None,
            pending_hs: None,
            pending_body: Vec::new(),
            pending_entries: Vec::new(),
            unsynced: false,
            sync_due: false,
            last_record: (0, 0),
            hs_segment: 0,
        };
        // Segments are written one after another: records, then zeroes. A torn record can only
        // be the last thing written, so only empty segments may follow one.
        let mut torn_seen: Option<(u64, u64, u64)> = None;
        let mut empty = Vec::new();
        for id in ids {
            let path = segment_path(dir, id);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(format!("opening {}", path.display())))?;
            let capacity = file
                .metadata()
                .map_err(io_err(format!("reading {}", path.display())))?
                .len();
            let segment = Segment { id, file, capacity };
            let (end, torn) = wal.replay_segment(&segment)?;
            if end == 0 && torn.is_none() {
                empty.push(segment);
                continue;
            }
            if let Some((torn_id, torn_at, _)) = torn_seen {
                return Err(Error::Corrupt(format!(
                    "raft log segment {} has a record that does not check out at offset \
                     {torn_at}, and {} after it holds records: corruption, not a torn write; \
                     nothing on disk was changed",
                    segment_path(dir, torn_id).display(),
                    path.display()
                )));
            }
            if !empty.is_empty() {
                return Err(Error::Corrupt(format!(
                    "{} holds raft log records after an empty segment; nothing on disk was changed",
                    path.display()
                )));
            }
            if let Some(len) = torn {
                torn_seen = Some((id, end, len));
            }
            wal.segments.push(segment);
            wal.write_at = end;
        }
        // The whole log checked out but for its very last record, torn by a crash: only now is
        // it cleared, so that new records overwrite it.
        if let Some((id, at, len)) = torn_seen
            && let Some(segment) = wal.segments.last().filter(|s| s.id == id)
        {
            warn!(
                segment = %segment_path(dir, id).display(),
                offset = at,
                "dropping a torn record at the end of the raft log"
            );
            let stop = (at + HEADER as u64 + len).min(segment.capacity);
            let zeros = vec![0u8; (stop - at) as usize];
            segment
                .file
                .write_all_at(&zeros, at)
                .and_then(|()| segment.file.sync_data())
                .map_err(io_err("clearing a torn record"))?;
        }
        // Never-written segments after the last record: the first is the active one of an empty
        // log or the next spare; the rest go.
        let next_id = wal.segments.last().map_or(0, |s| s.id + 1);
        for segment in empty {
            if wal.segments.is_empty() {
                wal.segments.push(segment);
                wal.write_at = 0;
            } else if wal.spare.is_none() && segment.id == next_id {
                let (tx, rx) = mpsc::channel();
                let _ = tx.send(Ok(segment));
                wal.spare = Some(rx);
            } else {
                let _ = fs::remove_file(segment_path(dir, segment.id));
            }
        }
        if wal.segments.is_empty() {
            wal.segments.push(prepare_segment(dir, 1, SEGMENT_BYTES)?);
            wal.write_at = 0;
        }
        if wal.spare.is_none() {
            wal.prepare_spare();
        }
        info!(
            entries = wal.positions.len(),
            first = wal.first,
            segments = wal.segments.len(),
            "raft log read back"
        );
        Ok(wal)
    }

    /// Replays one segment's records into the index and hard state. Returns where its records
    /// end, and the declared length of a torn record found there (if any).
    fn replay_segment(&mut self, segment: &Segment) -> Result<(u64, Option<u64>)> {
        let mut data = Vec::new();
        (&segment.file)
            .read_to_end(&mut data)
            .map_err(io_err(format!("reading segment {:016x}", segment.id)))?;
        let mut at = 0usize;
        while at + HEADER <= data.len() {
            let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            if len == 0 {
                return Ok((at as u64, None));
            }
            let start = at + HEADER;
            let payload = start
                .checked_add(len as usize)
                .and_then(|end| data.get(start..end));
            let record = payload
                .filter(|p| checksum(p)[..] == data[at + 4..at + HEADER])
                .and_then(parse_payload);
            let Some(record) = record else {
                if let Some(next) = valid_record_after(&data, at) {
                    return Err(Error::Corrupt(format!(
                        "raft log segment {} has a record that does not check out at offset {at}, \
                         and a valid record follows at offset {next}: corruption, not a torn write; \
                         nothing on disk was changed",
                        segment_path(&self.dir, segment.id).display()
                    )));
                }
                return Ok((at as u64, Some(len as u64)));
            };
            if let Some(hs) = record.hard_state {
                self.hard_state = Some(hs);
                self.hs_segment = segment.id;
            }
            let payload = &data[start..start + len as usize];
            for (index, term, offset, entry_len) in record.entries {
                let bytes = &payload[offset..offset + entry_len as usize];
                self.index_entry(
                    Position {
                        segment: segment.id,
                        offset: (start + offset) as u64,
                        len: entry_len,
                        crc: crc32fast::hash(bytes),
                        term,
                    },
                    index,
                );
            }
            at = start + len as usize;
        }
        Ok((at as u64, None))
    }

    fn index_entry(&mut self, position: Position, index: u64) {
        if self.positions.is_empty() {
            self.first = index;
        } else if index < self.first {
            self.positions.clear();
            self.first = index;
        } else {
            self.positions
                .truncate((index - self.first).min(self.positions.len() as u64) as usize);
            if self.first + self.positions.len() as u64 != index {
                // A gap cannot come from raft; keep the log contiguous from the newest entry.
                self.positions.clear();
                self.first = index;
            }
        }
        self.positions.push_back(position);
    }

    fn prepare_spare(&mut self) {
        let dir = self.dir.clone();
        let id = self.segments.last().map_or(1, |s| s.id + 1);
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("wal-prepare".into())
            .spawn(move || {
                let _ = tx.send(prepare_segment(&dir, id, SEGMENT_BYTES));
            });
        match spawned {
            Ok(_) => self.spare = Some(rx),
            Err(e) => warn!("cannot start the thread that prepares raft log segments: {e}"),
        }
    }

    /// The hard state last written, if any.
    pub fn hard_state(&self) -> Option<&HardState> {
        self.hard_state.as_ref()
    }

    /// Index and term of the last entry, if the log has any.
    pub fn last(&self) -> Option<(u64, u64)> {
        let p = self.positions.back()?;
        Some((self.first + self.positions.len() as u64 - 1, p.term))
    }

    /// Index of the first entry the log holds, if any.
    pub fn first_index(&self) -> Option<u64> {
        (!self.positions.is_empty()).then_some(self.first)
    }

    pub fn term(&self, index: u64) -> Option<u64> {
        let i = index.checked_sub(self.first)?;
        self.positions.get(i as usize).map(|p| p.term)
    }

    /// Reads entry `index` back from its segment.
    pub fn entry(&self, index: u64) -> Option<Result<Entry>> {
        let i = index.checked_sub(self.first)?;
        let p = *self.positions.get(i as usize)?;
        let at = self
            .segments
            .binary_search_by_key(&p.segment, |s| s.id)
            .ok()?;
        let segment = &self.segments[at];
        let mut bytes = vec![0u8; p.len as usize];
        Some(
            segment
                .file
                .read_exact_at(&mut bytes, p.offset)
                .map_err(io_err("reading an entry from the raft log"))
                .and_then(|()| {
                    if crc32fast::hash(&bytes) != p.crc {
                        return Err(Error::Corrupt(format!(
                            "raft log entry {index} in segment {} at offset {} changed on disk \
                             after it was written (checksum mismatch)",
                            segment_path(&self.dir, p.segment).display(),
                            p.offset
                        )));
                    }
                    Entry::parse_from_bytes(&bytes)
                        .map_err(|e| Error::Corrupt(format!("raft log entry {index}: {e}")))
                }),
        )
    }

    /// Queues entries for the next `sync`.
    pub fn append(&mut self, entries: &[Entry]) {
        for e in entries {
            let body = &mut self.pending_body;
            body.extend_from_slice(&e.index.to_le_bytes());
            body.extend_from_slice(&e.term.to_le_bytes());
            let len_at = body.len();
            body.extend_from_slice(&[0u8; 4]);
            let start = body.len();
            // Encoding our own, already valid, entry into a Vec cannot fail.
            let _ = e.write_to_vec(body);
            let len = (body.len() - start) as u32;
            body[len_at..start].copy_from_slice(&len.to_le_bytes());
            let crc = crc32fast::hash(&body[start..]);
            self.pending_entries
                .push((e.index, e.term, start, len, crc));
        }
    }

    /// Queues the hard state for the next `sync`.
    pub fn set_hard_state(&mut self, hs: &HardState) {
        self.pending_hs = Some(hs.clone());
    }

    pub fn has_pending(&self) -> bool {
        self.pending_hs.is_some() || !self.pending_entries.is_empty()
    }

    pub fn has_pending_entries(&self) -> bool {
        !self.pending_entries.is_empty()
    }

    /// Writes what `append` and `set_hard_state` queued as one record; with `durable`, returns
    /// only once it is on disk (`fdatasync`).
    pub fn sync(&mut self, durable: bool) -> Result<()> {
        self.write(durable)?;
        self.wait_durable().map(|_| ())
    }

    /// Writes what `append` and `set_hard_state` queued as one record. With `durable`,
    /// `wait_durable` must follow before anyone learns of it; `start_writeback` in between lets
    /// the caller work (apply) while the device writes.
    pub fn write(&mut self, durable: bool) -> Result<()> {
        if !self.has_pending() {
            return Ok(());
        }
        let hs = self.pending_hs.take();
        let entries = std::mem::take(&mut self.pending_entries);
        let hs_bytes = hs
            .as_ref()
            .map(|h| h.write_to_bytes().unwrap_or_default())
            .unwrap_or_default();
        let size = 8 + hs_bytes.len() + self.pending_body.len();
        let mut record = Vec::with_capacity(HEADER + size);
        record.extend_from_slice(&(size as u32).to_le_bytes());
        record.extend_from_slice(&[0u8; 8]);
        record.extend_from_slice(&(hs_bytes.len() as u32).to_le_bytes());
        record.extend_from_slice(&hs_bytes);
        record.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        let body_at = record.len();
        record.extend_from_slice(&self.pending_body);
        self.pending_body.clear();
        let check = checksum(&record[HEADER..]);
        record[4..HEADER].copy_from_slice(&check);
        // Room for this record and the zero header that ends the log after it.
        let need = (record.len() + HEADER) as u64;
        let fits = self
            .segments
            .last()
            .is_some_and(|s| self.write_at + need <= s.capacity);
        if !fits {
            self.rotate(need)?;
        }
        let Some(segment) = self.segments.last() else {
            return Err(Error::Corrupt("the raft log has no segment".into()));
        };
        segment
            .file
            .write_all_at(&record, self.write_at)
            .map_err(io_err("writing the raft log"))?;
        self.unsynced = true;
        if durable {
            self.sync_due = true;
            self.last_record = (self.write_at, record.len() as u64);
        }
        let id = segment.id;
        for &(index, term, offset, len, crc) in &entries {
            self.index_entry(
                Position {
                    segment: id,
                    offset: self.write_at + (body_at + offset) as u64,
                    len,
                    crc,
                    term,
                },
                index,
            );
        }
        self.write_at += record.len() as u64;
        if hs.is_some() {
            self.hard_state = hs;
            self.hs_segment = id;
        }
        Ok(())
    }

    /// How many segment files hold the log (the spare being prepared not counted).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Forgets every entry up to and including `through` (a compaction point whose index and term
    /// the caller has recorded durably) and deletes the segments wholly before the one holding
    /// it; that one, and every later one, stays. Returns how many segments were deleted.
    ///
    /// The hard state lives in the records too: when the last record carrying it is in a segment
    /// about to go, it is written again (durably) into the active segment first, and an unsynced
    /// active segment is synced, so that the retained log always holds a durable hard state.
    pub fn compact(&mut self, through: u64) -> Result<usize> {
        if self.positions.is_empty() || through < self.first {
            return Ok(0);
        }
        let active = self.segments.last().map_or(0, |s| s.id);
        // Live entries lie in segments in index order, so nothing after `through` lies before
        // its segment. Past the last entry, only the active segment need stay.
        let keep_from = self
            .positions
            .get((through - self.first) as usize)
            .map_or(active, |p| p.segment);
        let dropped = ((through - self.first + 1) as usize).min(self.positions.len());
        self.positions.drain(..dropped);
        self.first += dropped as u64;
        if self.positions.capacity() > 4096 && self.positions.capacity() > 4 * self.positions.len()
        {
            self.positions.shrink_to(2 * self.positions.len());
        }
        let doomed = self
            .segments
            .iter()
            .take_while(|s| s.id < keep_from && s.id != active)
            .count();
        if doomed == 0 {
            return Ok(0);
        }
        if self.hard_state.is_some() && self.hs_segment < keep_from {
            if self.has_pending() {
                // Never between `append` and `write`: compaction runs between Readies.
                return Err(Error::Corrupt(
                    "raft log compaction with a record half built".into(),
                ));
            }
            self.pending_hs = self.hard_state.clone();
            self.write(true)?;
            self.wait_durable()?;
        } else if self.unsynced {
            self.sync_active()?;
        }
        for segment in self.segments.drain(..doomed) {
            let path = segment_path(&self.dir, segment.id);
            drop(segment);
            fs::remove_file(&path).map_err(io_err(format!("deleting {}", path.display())))?;
        }
        debug!(
            through,
            deleted = doomed,
            kept = self.segments.len(),
            "raft log compacted"
        );
        Ok(doomed)
    }

    /// Has the device start writing the record a durable `write` left, without waiting.
    pub fn start_writeback(&self) {
        if let (true, Some(segment)) = (self.sync_due, self.segments.last()) {
            start_writeback(&segment.file, self.last_record.0, self.last_record.1);
        }
    }

    /// Makes everything `write` wrote durable, if a durable write asked for it; true when that
    /// took an fdatasync.
    pub fn wait_durable(&mut self) -> Result<bool> {
        if !std::mem::take(&mut self.sync_due) {
            return Ok(false);
        }
        self.sync_active()?;
        Ok(true)
    }

    fn sync_active(&mut self) -> Result<()> {
        if let Some(segment) = self.segments.last() {
            segment
                .file
                .sync_data()
                .map_err(io_err("syncing the raft log"))?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Moves on to the next segment (the spare, or a dedicated one for a record larger than a
    /// segment).
    fn rotate(&mut self, need: u64) -> Result<()> {
        // A later fdatasync covers only the new segment.
        if self.unsynced {
            self.sync_active()?;
        }
        let next_id = self.segments.last().map_or(1, |s| s.id + 1);
        let segment = if need <= SEGMENT_BYTES {
            match self.spare.take().and_then(|rx| rx.recv().ok()) {
                Some(Ok(segment)) if segment.id == next_id => segment,
                Some(Err(e)) => {
                    warn!("preparing a raft log segment failed ({e}); trying again now");
                    prepare_segment(&self.dir, next_id, SEGMENT_BYTES)?
                }
                _ => prepare_segment(&self.dir, next_id, SEGMENT_BYTES)?,
            }
        } else {
            // The spare, if any, keeps its id for after this one: renumber it by preparing anew.
            if let Some(rx) = self.spare.take()
                && let Ok(Ok(spare)) = rx.recv()
            {
                drop(spare);
                let _ = fs::remove_file(segment_path(&self.dir, next_id));
            }
            prepare_segment(&self.dir, next_id, need)?
        };
        self.segments.push(segment);
        self.write_at = 0;
        self.prepare_spare();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, size: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; size].into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote: 1,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn entries_and_hard_state_survive_reopen_and_conflicts_truncate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            assert!(wal.last().is_none());
            wal.append(&(1..=5).map(|i| entry(i, 1, 10)).collect::<Vec<_>>());
            wal.set_hard_state(&hs(1, 2));
            wal.sync(true).unwrap();
            // A new leader replaces 4 and 5 with one entry 4 of term 2.
            wal.append(&[entry(4, 2, 10)]);
            wal.sync(true).unwrap();
            wal.set_hard_state(&hs(2, 4));
            wal.sync(true).unwrap();
            assert_eq!(wal.last(), Some((4, 2)));
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last(), Some((4, 2)));
        assert_eq!(wal.first_index(), Some(1));
        assert_eq!(wal.hard_state(), Some(&hs(2, 4)));
        assert_eq!(wal.term(3), Some(1));
        assert_eq!(wal.term(5), None);
        assert_eq!(wal.entry(2).unwrap().unwrap(), entry(2, 1, 10));
        assert_eq!(wal.entry(4).unwrap().unwrap(), entry(4, 2, 10));
        assert!(wal.entry(5).is_none());
    }

    #[test]
    fn a_torn_record_at_the_end_is_dropped_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let write_at;
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append(&[entry(1, 1, 100), entry(2, 1, 100)]);
            wal.sync(true).unwrap();
            write_at = wal.write_at;
            wal.append(&[entry(3, 1, 100)]);
            wal.sync(true).unwrap();
        }
        // Tear the last record: its tail never reached the disk.
        let path = segment_path(dir.path(), 1);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0u8; 50], write_at + 80).unwrap();
        drop(file);
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            assert_eq!(wal.last(), Some((2, 1)));
            wal.append(&[entry(3, 2, 5)]);
            wal.sync(true).unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last(), Some((3, 2)));
        assert_eq!(wal.entry(3).unwrap().unwrap(), entry(3, 2, 5));
    }

    #[test]
    fn records_move_on_to_new_segments_including_oversized_ones() {
        let dir = tempfile::tempdir().unwrap();
        let big = (SEGMENT_BYTES / 3) as usize;
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            for i in 1..=4 {
                wal.append(&[entry(i, 1, big)]);
                wal.sync(false).unwrap();
            }
            // Larger than a whole segment.
            wal.append(&[entry(5, 1, SEGMENT_BYTES as usize + 10)]);
            wal.sync(true).unwrap();
            wal.append(&[entry(6, 1, 10)]);
            wal.sync(true).unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last(), Some((6, 1)));
        for i in 1..=4 {
            assert_eq!(wal.entry(i).unwrap().unwrap().data.len(), big);
        }
        assert_eq!(
            wal.entry(5).unwrap().unwrap().data.len(),
            SEGMENT_BYTES as usize + 10
        );
        assert!(wal.segments.len() >= 3);
    }

    #[test]
    fn records_after_a_bad_one_in_an_earlier_segment_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let big = (SEGMENT_BYTES / 2) as usize;
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            for i in 1..=3 {
                wal.append(&[entry(i, 1, big)]);
                wal.sync(true).unwrap();
            }
        }
        // Damage the first record of segment 1; segment 2 still holds records.
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        file.write_all_at(&[0xff; 4], 20).unwrap();
        drop(file);
        assert!(matches!(Wal::open(dir.path()), Err(Error::Corrupt(_))));
    }

    /// Three records in one segment; returns the segment's bytes and where each record starts.
    fn three_records(dir: &Path) -> (Vec<u8>, Vec<u64>) {
        let mut starts = Vec::new();
        {
            let mut wal = Wal::open(dir).unwrap();
            for i in 1..=3 {
                starts.push(wal.write_at);
                wal.append(&[entry(i, 1, 100)]);
                wal.set_hard_state(&hs(1, i));
                wal.sync(true).unwrap();
            }
        }
        (fs::read(segment_path(dir, 1)).unwrap(), starts)
    }

    fn flip(dir: &Path, segment: u64, at: u64) {
        let path = segment_path(dir, segment);
        let mut bytes = fs::read(&path).unwrap();
        bytes[at as usize] ^= 0x40;
        fs::write(&path, bytes).unwrap();
    }

    #[test]
    fn a_flipped_byte_in_record_1_of_3_stops_the_log_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, starts) = three_records(dir.path());
        // In record 1's payload, well inside its entry.
        flip(dir.path(), 1, starts[0] + HEADER as u64 + 60);
        let before = fs::read(segment_path(dir.path(), 1)).unwrap();
        let Err(Error::Corrupt(why)) = Wal::open(dir.path()) else {
            panic!("a bad record with valid ones after it must not open");
        };
        assert!(
            why.contains("0000000000000001.wal") && why.contains("offset 0"),
            "{why}"
        );
        assert_eq!(
            fs::read(segment_path(dir.path(), 1)).unwrap(),
            before,
            "bytes unchanged"
        );
    }

    #[test]
    fn a_garbage_length_in_record_1_of_3_is_corruption_too() {
        let dir = tempfile::tempdir().unwrap();
        let (_, starts) = three_records(dir.path());
        // The length's top byte: the record now claims to run past the segment's end.
        flip(dir.path(), 1, starts[0] + 3);
        let before = fs::read(segment_path(dir.path(), 1)).unwrap();
        assert!(matches!(Wal::open(dir.path()), Err(Error::Corrupt(_))));
        assert_eq!(fs::read(segment_path(dir.path(), 1)).unwrap(), before);
    }

    #[test]
    fn a_bad_final_record_is_a_torn_write_and_the_rest_survives() {
        let dir = tempfile::tempdir().unwrap();
        let (_, starts) = three_records(dir.path());
        flip(dir.path(), 1, starts[2] + HEADER as u64 + 60);
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last(), Some((2, 1)));
        assert_eq!(wal.hard_state(), Some(&hs(1, 2)));
    }

    #[test]
    fn a_bad_record_in_segment_1_with_records_in_segment_2_leaves_segment_1_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let big = (SEGMENT_BYTES / 3) as usize;
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            for i in 1..=4 {
                wal.append(&[entry(i, 1, big)]);
                wal.sync(true).unwrap();
            }
            assert!(wal.segments.len() >= 2);
        }
        // The second record of segment 1 is its last: bad, but a later segment holds records.
        let data = fs::read(segment_path(dir.path(), 1)).unwrap();
        let first_len = u32::from_le_bytes(data[..4].try_into().unwrap()) as u64;
        let second = HEADER as u64 + first_len;
        flip(dir.path(), 1, second + HEADER as u64 + 100);
        let before = fs::read(segment_path(dir.path(), 1)).unwrap();
        let Err(Error::Corrupt(why)) = Wal::open(dir.path()) else {
            panic!("records after a bad one in an earlier segment must not open");
        };
        assert!(why.contains(&format!("offset {second}")), "{why}");
        assert_eq!(
            fs::read(segment_path(dir.path(), 1)).unwrap(),
            before,
            "bytes unchanged"
        );
    }

    /// Eight records of one entry a third of a segment each: two per segment, so entries
    /// 2k-1 and 2k are in segment k. Only the first record carries a hard state.
    fn four_segments(dir: &Path) {
        let big = (SEGMENT_BYTES / 3) as usize;
        let mut wal = Wal::open(dir).unwrap();
        wal.set_hard_state(&hs(1, 2));
        for i in 1..=8 {
            wal.append(&[entry(i, 1, big)]);
            wal.sync(true).unwrap();
        }
        assert_eq!(
            wal.segments.iter().map(|s| s.id).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn compaction_deletes_exactly_the_segments_wholly_before_the_point() {
        let dir = tempfile::tempdir().unwrap();
        four_segments(dir.path());
        let mut wal = Wal::open(dir.path()).unwrap();
        // Entry 5 opens segment 3: segments 1 and 2 go, 3 stays although 5 is dropped.
        assert_eq!(wal.compact(5).unwrap(), 2);
        assert_eq!(wal.first_index(), Some(6));
        assert!(wal.entry(5).is_none() && wal.term(5).is_none());
        assert_eq!(wal.entry(6).unwrap().unwrap().index, 6);
        let files = segment_files(dir.path());
        assert_eq!(&files[..2], [3, 4], "{files:?}");
        // Entry 6 is in segment 3 too: nothing more to delete.
        assert_eq!(wal.compact(6).unwrap(), 0);
        assert_eq!(&segment_files(dir.path())[..2], [3, 4]);
        assert_eq!(wal.first_index(), Some(7));
        // A point before the first entry changes nothing.
        assert_eq!(wal.compact(2).unwrap(), 0);
        assert_eq!(wal.first_index(), Some(7));
        drop(wal);

        // Reopened, the log is the retained segments: from entry 5 on disk, the hard state
        // (last written in deleted segment 1) written again before the deletion.
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.first_index(), Some(5));
        assert_eq!(wal.last(), Some((8, 1)));
        assert_eq!(wal.hard_state(), Some(&hs(1, 2)));
        assert_eq!(wal.entry(8).unwrap().unwrap().index, 8);
    }

    #[test]
    fn compacting_past_the_last_entry_keeps_the_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        four_segments(dir.path());
        let mut wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.compact(20).unwrap(), 3);
        assert_eq!(wal.first_index(), None);
        assert_eq!(segment_files(dir.path())[0], 4);
        wal.append(&[entry(21, 2, 10)]);
        wal.sync(true).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.hard_state(), Some(&hs(1, 2)));
        assert_eq!(wal.term(21), Some(2));
    }

    #[test]
    fn an_entry_damaged_after_open_is_an_error_when_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, starts) = three_records(dir.path());
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.entry(2).unwrap().unwrap(), entry(2, 1, 100));
        // Bit rot in entry 2's data while the log is open.
        flip(dir.path(), 1, starts[1] + HEADER as u64 + 80);
        let Some(Err(Error::Corrupt(why))) = wal.entry(2) else {
            panic!("a damaged entry must not be read back as an entry");
        };
        assert!(why.contains("entry 2"), "{why}");
        assert_eq!(wal.entry(1).unwrap().unwrap(), entry(1, 1, 100));
    }
}
