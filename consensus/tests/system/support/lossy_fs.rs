//! A FUSE filesystem that loses what was not fsynced: the system tests' power-loss fault.
//!
//! [`LossyFs::mount`] serves a passthrough view of a backing directory. It is write-through with
//! an undo log: every write, truncate and fallocate goes straight to the backing file, so a full
//! backing filesystem answers ENOSPC at write time as ext4 does, and reads need no overlay. Before
//! changing a file, the layer records, per inode, what the change overwrote (the old bytes of the
//! range and the old length). `fsync`/`fdatasync` of a file makes its changes durable: its undo
//! records are forgotten and the backing file is fsynced.
//!
//! [`LossyFs::power_loss`], called once every process using the mount was killed with -9, rolls
//! the unsynced changes back, newest first: [`Keep::Nothing`] leaves each file as it was at its
//! last fsync, [`Keep::Prefix`] keeps a random prefix (in write order) of each file's unsynced
//! changes, a torn tail as a disk leaves when the power fails mid-write (the first write dropped
//! may keep its leading 4 KiB blocks; the kernel also hands an unaligned write over in pieces
//! split at page boundaries, each its own change). The mount stays up and newly started
//! processes see the rolled-back files: entry and attribute TTLs are 0, opens never keep the
//! kernel's page cache, and the kernel is told to drop what it cached of each rolled-back inode.
//!
//! Simplification: metadata operations (create, mkdir, mknod, symlink, link, rename, unlink,
//! rmdir) are durable at once. A real filesystem may also lose directory entries that were not
//! fsynced; this one loses only data, which is what the WAL's and RocksDB's recovery must survive.
//! A created file that was never fsynced comes back empty, as with ext4's delayed allocation.
//! Undo logs are kept by inode, so a renamed file keeps its own; an unlinked file needs none.
//!
//! Runs as root: it reopens backing files read-write to save old bytes whatever their mode, and
//! mounts with mount(2) (fuser falls back to `fusermount3` where that is refused). Inodes are served as
//! O_PATH descriptors of the backing objects, so renames need no path table; Unix sockets bound in
//! the mount are made on the backing dir by mknod and found again through the same FUSE inode.
//! POSIX and flock locks stay in the kernel (fuser does not ask for FUSE's lock ops).

use crate::support::SplitMix;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

/// The kernel must ask again for every name and attribute: after a power loss they change under it.
const TTL: Duration = Duration::ZERO;

/// What a power loss keeps of each file's unsynced changes.
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    /// None: every file is as it was at its last fsync.
    Nothing,
    /// A prefix (in write order) of random length, drawn per file from this seed; the first
    /// write it drops may keep its first blocks (4 KiB), as a disk tears a write.
    Prefix(u64),
}

/// What a power loss rolled back, for the harness to print.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Files that had unsynced changes.
    pub files: usize,
    /// Of those, files that lost at least one change.
    pub files_rolled_back: usize,
    /// Unsynced changes dropped and kept.
    pub changes_dropped: usize,
    pub changes_kept: usize,
    /// Of the dropped changes, writes that kept their first blocks (`Keep::Prefix` only).
    pub torn: usize,
    /// Bytes written (or lengths changed) by the dropped changes.
    pub bytes_dropped: u64,
    /// The files that lost changes, by the path (in the backing dir) they had when first changed
    /// after their last fsync.
    pub paths: Vec<PathBuf>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "power loss: {} of {} files with unsynced changes rolled back; {} changes ({} bytes) \
             dropped ({} writes torn), {} kept",
            self.files_rolled_back,
            self.files,
            self.changes_dropped,
            self.bytes_dropped,
            self.torn,
            self.changes_kept
        )?;
        let names: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        if !names.is_empty() {
            write!(f, " ({})", names.join(", "))?;
        }
        Ok(())
    }
}

/// A mounted lossy filesystem; unmounted when dropped.
pub struct LossyFs {
    state: Arc<State>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl LossyFs {
    /// Mounts a passthrough of `backing` (a directory) on `mountpoint` (an existing directory),
    /// served on a background thread.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LossyFs> {
        if !Path::new("/dev/fuse").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/fuse is missing: the power-loss tests need the kernel's fuse module \
                 (modprobe fuse) and the fuse3 package (scripts/setup.sh installs it)",
            ));
        }
        let root = open_path(libc::AT_FDCWD, &cstring(backing.as_os_str())?, 0)?;
        let st = fstat(root.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", backing.display()),
            ));
        }
        let state = Arc::new(State::new(root, key_of(&st), backing.canonicalize()?));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("lossy:{}", backing.display())),
            MountOption::Subtype("lossy".into()),
            // The server acts as root; the kernel checks modes against the attributes it serves.
            MountOption::DefaultPermissions,
        ];
        // The member's processes may run as another user than the test.
        config.acl = SessionACL::All;
        // A slow fsync must not hold every other process's reads.
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(Server(state.clone()), mountpoint, &config)?;
        Ok(LossyFs {
            state,
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// From now on, every file fsync waits (its process blocked in it, as in a slow disk's
    /// flush) until [`LossyFs::release_syncs`]: a power loss in the middle of a sync. A process
    /// killed with -9 while it waits stays until then, as the kernel waits for the answer.
    pub fn hold_syncs(&self) {
        lock(&self.state.hold).on = true;
    }

    /// How many fsyncs wait now.
    pub fn held_syncs(&self) -> usize {
        lock(&self.state.hold).waiting
    }

    /// Ends the hold: the fsyncs that waited fail with EIO and make nothing durable. For a power
    /// loss during syncs: hold, kill -9, release, wait for the processes to go, `power_loss`.
    pub fn release_syncs(&self) {
        lock(&self.state.hold).on = false;
        self.state.released.notify_all();
    }

    /// How many requests of each operation the mount served so far.
    pub fn ops(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.state.ops).clone()
    }

    /// Rolls back the changes not fsynced since, as `keep` says. Call it once every process that
    /// used the mount is gone (killed with -9): a process still writing would race the rollback.
    pub fn power_loss(&self, keep: Keep) -> io::Result<Report> {
        let mut report = Report::default();
        let mut touched = Vec::new();
        {
            let mut pending = lock(&self.state.pending);
            let mut files: Vec<(Key, Arc<Mutex<Pending>>)> = pending.drain().collect();
            // Files in a fixed order, so that a seed draws the same prefix lengths for the same
            // history of inodes.
            files.sort_by_key(|(k, _)| *k);
            let mut rng = SplitMix(match keep {
                Keep::Nothing => 0,
                Keep::Prefix(seed) => seed,
            });
            let mut first_error = None;
            for (key, p) in files {
                let mut p = lock(&p);
                p.retired = true;
                if p.records.is_empty() {
                    continue;
                }
                report.files += 1;
                let n = p.records.len();
                let kept = match keep {
                    Keep::Nothing => 0,
                    Keep::Prefix(_) => (rng.next() % (n as u64 + 1)) as usize,
                };
                report.changes_kept += kept;
                if kept < n {
                    report.files_rolled_back += 1;
                    report.paths.push(p.path.clone());
                    touched.push(key);
                }
                let dropped: Vec<Record> = p.records.drain(kept..).collect();
                // The oldest dropped write may have reached the disk in part, up to a block
                // boundary, when the power failed in the middle of it.
                let cut = match (keep, dropped.first()) {
                    (Keep::Prefix(_), Some(r)) if r.written > 0 => {
                        let points: Vec<u64> = tear_points(r).collect();
                        let i = (rng.next() % (points.len() as u64 + 1)) as usize;
                        points.get(i).copied()
                    }
                    _ => None,
                };
                for (i, r) in dropped.iter().enumerate().rev() {
                    report.changes_dropped += 1;
                    let undone = match cut {
                        Some(cut) if i == 0 => {
                            report.torn += 1;
                            report.bytes_dropped += r.offset + r.written - cut;
                            p.undo_from(r, cut)
                        }
                        _ => {
                            report.bytes_dropped += r.lost;
                            p.undo(r)
                        }
                    };
                    if let Err(e) = undone {
                        first_error.get_or_insert(e);
                    }
                }
                p.records.clear();
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        // Opens never keep the page cache, but a stat of a still-cached inode could show the old
        // size until then; the errors are for inodes the kernel no longer holds.
        if let Some(session) = &self.session {
            let notifier = session.notifier();
            for key in touched {
                if let Some(ino) = self.state.ino_of(key) {
                    let _ = notifier.inval_inode(INodeNo(ino), 0, -1);
                }
            }
        }
        Ok(report)
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        // A held fsync would keep its process, and so the mount, busy.
        self.release_syncs();
        let Some(session) = self.session.take() else {
            return;
        };
        if session.umount_and_join().is_err() {
            // Busy (a process still has a file open there): detach it from the tree now; the
            // kernel ends the connection when its last user goes.
            if let Ok(path) = cstring(self.mountpoint.as_os_str()) {
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// A backing inode: (st_dev, st_ino).
type Key = (u64, u64);

/// One unsynced change: what to write back at `offset` and the length to cut the file to.
struct Record {
    offset: u64,
    old: Vec<u8>,
    old_len: u64,
    /// Bytes this change wrote or added, for the report.
    lost: u64,
    /// Bytes written, for a write (which a power loss may tear); 0 for other changes.
    written: u64,
}

/// A file's unsynced changes, oldest first, and a read-write descriptor to undo them with.
struct Pending {
    file: File,
    /// Where it was when first changed, for the report.
    path: PathBuf,
    records: Vec<Record>,
    /// Taken out of the map (fsynced, unlinked, rolled back): writers must look it up again.
    retired: bool,
}

impl Pending {
    /// Saves what a change of `len` bytes at `offset` overwrites, and the current length.
    fn record(&mut self, offset: u64, len: u64, lost: u64) -> io::Result<()> {
        let old_len = self.file.metadata()?.len();
        let end = offset.saturating_add(len).min(old_len);
        let mut old = Vec::new();
        if offset < end {
            old = vec![0; (end - offset) as usize];
            self.file.read_exact_at(&mut old, offset)?;
        }
        self.records.push(Record {
            offset,
            old,
            old_len,
            lost,
            written: 0,
        });
        Ok(())
    }

    fn record_write(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.record(offset, len, len)?;
        if let Some(r) = self.records.last_mut() {
            r.written = len;
        }
        Ok(())
    }

    fn undo(&self, r: &Record) -> io::Result<()> {
        if !r.old.is_empty() {
            self.file.write_all_at(&r.old, r.offset)?;
        }
        self.file.set_len(r.old_len)
    }

    /// Undoes the write `r` from `cut` on only: the disk got its blocks before `cut`.
    fn undo_from(&self, r: &Record, cut: u64) -> io::Result<()> {
        let skip = (cut - r.offset) as usize;
        if skip < r.old.len() {
            self.file.write_all_at(&r.old[skip..], cut)?;
        }
        self.file.set_len(r.old_len.max(cut))
    }
}

/// The unit a torn write keeps or loses whole: a filesystem block.
const BLOCK: u64 = 4096;

/// Where the write `r` could tear: the block boundaries strictly inside it.
fn tear_points(r: &Record) -> impl Iterator<Item = u64> {
    let end = r.offset + r.written;
    let first = (r.offset / BLOCK + 1) * BLOCK;
    (first..end).step_by(BLOCK as usize)
}

struct Node {
    fd: Arc<OwnedFd>,
    key: Key,
    nlookup: u64,
}

struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

struct Handle {
    file: File,
    key: Key,
}

struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

struct State {
    nodes: Mutex<Nodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    pending: Mutex<HashMap<Key, Arc<Mutex<Pending>>>>,
    backing: PathBuf,
    /// Requests served, by operation.
    ops: Mutex<BTreeMap<&'static str, u64>>,
    hold: Mutex<Hold>,
    released: Condvar,
}

/// Whether file fsyncs wait (`LossyFs::hold_syncs`), and how many do.
#[derive(Default)]
struct Hold {
    on: bool,
    waiting: usize,
}

/// Poisoning only says another request panicked; the maps are still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn new(root: OwnedFd, root_key: Key, backing: PathBuf) -> State {
        let mut by_ino = HashMap::new();
        by_ino.insert(
            INodeNo::ROOT.0,
            Node {
                fd: Arc::new(root),
                key: root_key,
                // The kernel never forgets the root.
                nlookup: u64::MAX / 2,
            },
        );
        let mut by_key = HashMap::new();
        by_key.insert(root_key, INodeNo::ROOT.0);
        State {
            nodes: Mutex::new(Nodes {
                by_ino,
                by_key,
                next: INodeNo::ROOT.0 + 1,
            }),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            backing,
            ops: Mutex::new(BTreeMap::new()),
            hold: Mutex::new(Hold::default()),
            released: Condvar::new(),
        }
    }

    /// Waits while fsyncs are held; true if this one was.
    fn held(&self) -> bool {
        let mut hold = lock(&self.hold);
        if !hold.on {
            return false;
        }
        hold.waiting += 1;
        while hold.on {
            hold = self.released.wait(hold).unwrap_or_else(|e| e.into_inner());
        }
        hold.waiting -= 1;
        true
    }

    fn count(&self, op: &'static str) {
        *lock(&self.ops).entry(op).or_default() += 1;
    }

    fn node(&self, ino: INodeNo) -> Result<(Arc<OwnedFd>, Key), Errno> {
        let nodes = lock(&self.nodes);
        let node = nodes.by_ino.get(&ino.0).ok_or(Errno::ESTALE)?;
        Ok((node.fd.clone(), node.key))
    }

    fn ino_of(&self, key: Key) -> Option<u64> {
        lock(&self.nodes).by_key.get(&key).copied()
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, file: File, key: Key) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(Handle { file, key }));
        fh
    }

    /// Looks `name` up in `parent` and counts one kernel reference to it.
    fn entry(&self, parent: &OwnedFd, name: &CStr) -> io::Result<FileAttr> {
        let fd = open_path(parent.as_raw_fd(), name, libc::O_NOFOLLOW)?;
        let st = fstat(fd.as_raw_fd())?;
        let key = key_of(&st);
        let mut nodes = lock(&self.nodes);
        let ino = match nodes.by_key.get(&key).copied() {
            Some(ino) => {
                if let Some(n) = nodes.by_ino.get_mut(&ino) {
                    n.nlookup += 1;
                }
                ino
            }
            None => {
                let ino = nodes.next;
                nodes.next += 1;
                nodes.by_key.insert(key, ino);
                nodes.by_ino.insert(
                    ino,
                    Node {
                        fd: Arc::new(fd),
                        key,
                        nlookup: 1,
                    },
                );
                ino
            }
        };
        Ok(attr_of(ino, &st))
    }

    fn forget(&self, ino: u64, n: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let mut nodes = lock(&self.nodes);
        let gone = match nodes.by_ino.get_mut(&ino) {
            Some(node) => {
                node.nlookup = node.nlookup.saturating_sub(n);
                (node.nlookup == 0).then_some(node.key)
            }
            None => None,
        };
        if let Some(key) = gone {
            nodes.by_ino.remove(&ino);
            if nodes.by_key.get(&key) == Some(&ino) {
                nodes.by_key.remove(&key);
            }
        }
    }

    /// Runs a change of the file `key` (reachable through `fd`) with its undo log, or with None
    /// for an unlinked file, whose changes nobody will see after a power loss.
    fn change<T>(
        &self,
        key: Key,
        fd: RawFd,
        f: impl FnOnce(Option<&mut Pending>) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            let p = {
                let mut pending = lock(&self.pending);
                match pending.get(&key) {
                    Some(p) => p.clone(),
                    None => {
                        let file = reopen(fd, libc::O_RDWR)?;
                        if file.metadata()?.nlink() == 0 {
                            drop(pending);
                            return f(None);
                        }
                        let path =
                            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                                .map(|p| {
                                    p.strip_prefix(&self.backing)
                                        .map(Path::to_path_buf)
                                        .unwrap_or(p)
                                })
                                .unwrap_or_default();
                        let p = Arc::new(Mutex::new(Pending {
                            file,
                            path,
                            records: Vec::new(),
                            retired: false,
                        }));
                        pending.insert(key, p.clone());
                        p
                    }
                }
            };
            let mut p = lock(&p);
            if p.retired {
                continue;
            }
            return f(Some(&mut p));
        }
    }

    /// Syncs the file `key` through `sync` and forgets its undo log.
    fn make_durable(&self, key: Key, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let Some(p) = lock(&self.pending).get(&key).cloned() else {
            return sync();
        };
        {
            // Writes wait while the file syncs, so none is forgotten unsynced.
            let mut p = lock(&p);
            sync()?;
            p.records.clear();
        }
        let mut pending = lock(&self.pending);
        if pending.get(&key).is_some_and(|q| Arc::ptr_eq(q, &p)) {
            let mut q = lock(&p);
            if q.records.is_empty() {
                q.retired = true;
                drop(q);
                pending.remove(&key);
            }
        }
        Ok(())
    }

    /// Forgets the undo log of `name` in `parent` if removing that name is its last link.
    fn about_to_unlink(&self, parent: &OwnedFd, name: &CStr) -> Option<Key> {
        let st = fstatat(parent.as_raw_fd(), name).ok()?;
        (st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink <= 1).then(|| key_of(&st))
    }

    fn unlinked(&self, key: Key) {
        let mut pending = lock(&self.pending);
        if let Some(p) = pending.remove(&key) {
            lock(&p).retired = true;
        }
    }

    fn truncate(&self, key: Key, file: &File, size: u64) -> io::Result<()> {
        self.change(key, file.as_raw_fd(), |p| {
            if let Some(p) = p {
                // A cut to the same length (O_TRUNC of an empty file) changes nothing.
                let len = file.metadata()?.len();
                if size < len {
                    p.record(size, len - size, len - size)?;
                } else if size > len {
                    p.record(size, 0, size - len)?;
                }
            }
            file.set_len(size)
        })
    }
}

/// The FUSE side; `LossyFs` keeps the same state for `power_loss`.
struct Server(Arc<State>);

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

fn open_path(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let fd =
        cvt(unsafe { libc::openat(dir, name.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | flags) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the object behind `fd` (an O_PATH descriptor or an open file) anew.
fn reopen(fd: RawFd, flags: libc::c_int) -> io::Result<File> {
    let fd = cvt(unsafe { libc::open(proc_path(fd).as_ptr(), flags | libc::O_CLOEXEC) })?;
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    fstatat(fd, c"")
}

/// `fstatat` without following symlinks; an empty name stats `dir` itself.
fn fstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// Gives what a request created to the caller, as a kernel filesystem would (the server makes
/// it as root).
fn own(dir: &OwnedFd, name: &CStr, req: &Request) -> io::Result<()> {
    let (uid, gid) = (req.uid(), req.gid());
    if uid == unsafe { libc::geteuid() } && gid == unsafe { libc::getegid() } {
        return Ok(());
    }
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

fn key_of(st: &libc::stat) -> Key {
    (st.st_dev, st.st_ino)
}

fn kind_of(mode: libc::mode_t) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

fn attr_of(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: time(st.st_ctime, st.st_ctime_nsec),
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
            Err(e) => libc::timespec {
                tv_sec: -(e.duration().as_secs() as libc::time_t),
                tv_nsec: 0,
            },
        },
    }
}

/// Open flags for the backing file: the kernel already did what the rest ask for, and O_APPEND
/// would make pwrite ignore the offsets the kernel computed.
fn backing_flags(flags: i32) -> i32 {
    flags
        & !(libc::O_APPEND
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_TRUNC
            | libc::O_NOCTTY
            | libc::O_NOFOLLOW
            | libc::O_DIRECT)
}

/// Reads up to `size` bytes at `offset`, short only at the end of the file.
fn read_full(file: &File, offset: u64, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; size];
    let mut done = 0;
    while done < size {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

impl Server {
    fn reply_entry(&self, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let (dir, _) = self
                .0
                .node(parent)
                .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
            self.0.entry(&dir, &cstring(name)?)
        })();
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// mknod, mkdir, symlink: `make` creates `name` in `parent`'s backing dir, which then
    /// belongs to the caller, and the reply is its entry.
    fn make_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(&OwnedFd, &CStr) -> io::Result<()>,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let (dir, _) = self.0.node(parent).map_err(io_of)?;
            let name = cstring(name)?;
            make(&dir, &name)?;
            own(&dir, &name, req)?;
            self.0.entry(&dir, &name)
        })();
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr_io(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let (fd, _) = self.0.node(ino)?;
        let st = fstat(fd.as_raw_fd()).map_err(errno)?;
        Ok(attr_of(ino.0, &st))
    }
}

fn io_of(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.code())
}

impl Filesystem for Server {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.0.count("lookup");
        self.reply_entry(parent, name, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.0.count("forget");
        self.0.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.0.count("getattr");
        match self.getattr_io(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.0.count("setattr");
        let r = (|| -> io::Result<()> {
            let (fd, key) = self.0.node(ino).map_err(io_of)?;
            let path = proc_path(fd.as_raw_fd());
            if let Some(size) = size {
                match fh.map(|fh| self.0.handle(fh)) {
                    Some(Ok(h)) => self.0.truncate(key, &h.file, size)?,
                    _ => {
                        let file = reopen(fd.as_raw_fd(), libc::O_WRONLY)?;
                        self.0.truncate(key, &file, size)?;
                    }
                }
            }
            if let Some(mode) = mode {
                cvt(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })?;
            }
            if uid.is_some() || gid.is_some() {
                let uid = uid.unwrap_or(u32::MAX);
                let gid = gid.unwrap_or(u32::MAX);
                cvt(unsafe {
                    libc::fchownat(
                        fd.as_raw_fd(),
                        c"".as_ptr(),
                        uid,
                        gid,
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
            }
            if atime.is_some() || mtime.is_some() {
                let times = [timespec(atime), timespec(mtime)];
                cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })?;
            }
            Ok(())
        })();
        match r.map_err(errno).and_then(|()| self.getattr_io(ino)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.0.count("readlink");
        let r = (|| -> io::Result<Vec<u8>> {
            let (fd, _) = self.0.node(ino).map_err(io_of)?;
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            let n = unsafe {
                libc::readlinkat(
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            buf.truncate(n as usize);
            Ok(buf)
        })();
        match r {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.0.count("mknod");
        let make = |dir: &OwnedFd, name: &CStr| {
            cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev as libc::dev_t) })
                .map(drop)
        };
        self.make_entry(req, parent, name, make, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.0.count("mkdir");
        let make = |dir: &OwnedFd, name: &CStr| {
            cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
        };
        self.make_entry(req, parent, name, make, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0.count("unlink");
        let r = (|| {
            let (dir, _) = self.0.node(parent).map_err(io_of)?;
            let name = cstring(name)?;
            let last = self.0.about_to_unlink(&dir, &name);
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
            if let Some(key) = last {
                self.0.unlinked(key);
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0.count("rmdir");
        let r = (|| {
            let (dir, _) = self.0.node(parent).map_err(io_of)?;
            let name = cstring(name)?;
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
        })();
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.0.count("symlink");
        let make = |dir: &OwnedFd, name: &CStr| {
            let target = cstring(target.as_os_str())?;
            cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
                .map(drop)
        };
        self.make_entry(req, parent, link_name, make, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.0.count("rename");
        let r = (|| {
            let (from, _) = self.0.node(parent).map_err(io_of)?;
            let (to, _) = self.0.node(newparent).map_err(io_of)?;
            let name = cstring(name)?;
            let newname = cstring(newname)?;
            let exchange = flags.bits() & libc::RENAME_EXCHANGE != 0;
            let replaced = if exchange {
                None
            } else {
                self.0.about_to_unlink(&to, &newname)
            };
            cvt(unsafe {
                libc::renameat2(
                    from.as_raw_fd(),
                    name.as_ptr(),
                    to.as_raw_fd(),
                    newname.as_ptr(),
                    flags.bits(),
                )
            })?;
            if let Some(key) = replaced {
                self.0.unlinked(key);
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.0.count("link");
        let r = (|| {
            let (fd, _) = self.0.node(ino).map_err(io_of)?;
            let (dir, _) = self.0.node(newparent).map_err(io_of)?;
            let name = cstring(newname)?;
            let path = proc_path(fd.as_raw_fd());
            cvt(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })?;
            self.0.entry(&dir, &name)
        })();
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.0.count("open");
        let r = (|| {
            let (fd, key) = self.0.node(ino).map_err(io_of)?;
            let file = reopen(fd.as_raw_fd(), backing_flags(flags.0))?;
            if flags.0 & libc::O_TRUNC != 0 {
                self.0.truncate(key, &file, 0)?;
            }
            Ok(self.0.add_handle(file, key))
        })();
        match r {
            // No FOPEN_KEEP_CACHE: every open drops the pages cached of the inode, which a power
            // loss may have changed.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.0.count("read");
        let r = self
            .0
            .handle(fh)
            .and_then(|h| read_full(&h.file, offset, size as usize).map_err(errno));
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.0.count("write");
        let r = (|| {
            let h = self.0.handle(fh).map_err(io_of)?;
            self.0.change(h.key, h.file.as_raw_fd(), |p| {
                if let Some(p) = p {
                    p.record_write(offset, data.len() as u64)?;
                }
                h.file.write_all_at(data, offset)
            })
        })();
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.0.count("flush");
        // Data is in the backing file already; close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.count("release");
        lock(&self.0.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.0.count("fsync");
        if self.0.held() {
            // The power failed before this fsync could finish: nothing became durable.
            reply.error(Errno::EIO);
            return;
        }
        let r = (|| {
            let h = self.0.handle(fh).map_err(io_of)?;
            self.0.make_durable(h.key, || {
                if datasync {
                    h.file.sync_data()
                } else {
                    h.file.sync_all()
                }
            })
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.0.count("opendir");
        let r = (|| -> io::Result<u64> {
            let (fd, _) = self.0.node(ino).map_err(io_of)?;
            let st = fstat(fd.as_raw_fd())?;
            // Listed once at opendir: offsets then stay stable while the directory changes.
            let mut entries = vec![
                DirEntry {
                    ino: st.st_ino,
                    kind: FileType::Directory,
                    name: ".".into(),
                },
                DirEntry {
                    ino: 1,
                    kind: FileType::Directory,
                    name: "..".into(),
                },
            ];
            let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            for e in std::fs::read_dir(path)? {
                let e = e?;
                let kind = match e.file_type() {
                    Ok(t) => FileType::from_std(t).unwrap_or(FileType::RegularFile),
                    Err(_) => FileType::RegularFile,
                };
                entries.push(DirEntry {
                    ino: e.ino(),
                    kind,
                    name: e.file_name(),
                });
            }
            let fh = self.0.next_fh.fetch_add(1, Ordering::Relaxed);
            lock(&self.0.dirs).insert(fh, Arc::new(entries));
            Ok(fh)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.0.count("readdir");
        let Some(entries) = lock(&self.0.dirs).get(&fh.0).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            // The offset given is where the next readdir starts.
            if reply.add(INodeNo(e.ino), i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.count("releasedir");
        lock(&self.0.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.0.count("fsyncdir");
        // Directory entries are durable at once here; pass the sync on all the same.
        let r = (|| {
            let (fd, _) = self.0.node(ino).map_err(io_of)?;
            let dir = reopen(fd.as_raw_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
            if datasync {
                dir.sync_data()
            } else {
                dir.sync_all()
            }
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.0.count("statfs");
        let r = (|| {
            let (fd, _) = self.0.node(ino).map_err(io_of)?;
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
            Ok(st)
        })();
        match r {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.0.count("access");
        let r = (|| {
            let (fd, _) = self.0.node(ino).map_err(io_of)?;
            let path = proc_path(fd.as_raw_fd());
            cvt(unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), mask.bits(), 0) })
        })();
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.0.count("create");
        let r = (|| {
            let (dir, _) = self.0.node(parent).map_err(io_of)?;
            let name = cstring(name)?;
            // A new file: nothing to undo but its growth, which its writes record.
            let fd = cvt(unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    backing_flags(flags) | libc::O_CREAT | libc::O_CLOEXEC,
                    mode,
                )
            })?;
            let file = unsafe { File::from_raw_fd(fd) };
            own(&dir, &name, req)?;
            let attr = self.0.entry(&dir, &name)?;
            let key = key_of(&fstat(file.as_raw_fd())?);
            if flags & libc::O_TRUNC != 0 {
                self.0.truncate(key, &file, 0)?;
            }
            Ok((attr, self.0.add_handle(file, key)))
        })();
        match r {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.0.count("fallocate");
        let r = (|| {
            let h = self.0.handle(fh).map_err(io_of)?;
            let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            let zeroes = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
            if mode
                & !(libc::FALLOC_FL_KEEP_SIZE
                    | libc::FALLOC_FL_PUNCH_HOLE
                    | libc::FALLOC_FL_ZERO_RANGE)
                != 0
            {
                // Collapse and insert move data around; nothing here uses them.
                return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
            }
            let call = || {
                cvt(unsafe {
                    libc::fallocate(
                        h.file.as_raw_fd(),
                        mode,
                        offset as libc::off_t,
                        length as libc::off_t,
                    )
                })
                .map(drop)
            };
            if keep_size && !zeroes {
                // Space only: nothing a reader can see changes.
                return call();
            }
            self.0.change(h.key, h.file.as_raw_fd(), |p| {
                if let Some(p) = p {
                    let len = h.file.metadata()?.len();
                    let grows = if keep_size {
                        0
                    } else {
                        (offset + length).saturating_sub(len)
                    };
                    if zeroes {
                        p.record(offset, length, length.max(grows))?;
                    } else if grows > 0 {
                        p.record(offset, 0, grows)?;
                    }
                }
                call()
            })
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    // Not served: the kernel then answers EOPNOTSUPP or falls back to reads and writes. Counted,
    // to see whether the member asks for them.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        self.0.count("getxattr (unsupported)");
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        self.0.count("listxattr (unsupported)");
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        self.0.count("lseek (unsupported)");
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.0.count("copy_file_range (unsupported)");
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.0.count("ioctl (unsupported)");
        reply.error(Errno::ENOSYS);
    }
}

#[cfg(test)]
mod tests;
