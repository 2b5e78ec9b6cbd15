//! A point-in-time image of the state machine in one stream: what `etcdctl snapshot save`
//! fetches ([`Image`]), and what [`unpack`] turns back into a RocksDB directory.
//!
//! The image is a RocksDB checkpoint (a flush, then hard links of the SST files: no copy, no
//! pause of writes) streamed from its files, never held in memory. Its layout:
//!
//! - [`MAGIC`] (16 bytes), then the format version and the number of files (`u32` each, big
//!   endian);
//! - per file: its name's length (`u16`), the name (one path component), its length (`u64`),
//!   its bytes;
//! - zeroes up to a multiple of 512 bytes (`etcdctl snapshot save` refuses a file whose length
//!   is not a multiple of 512 plus 32, since a bbolt file is whole pages);
//! - the SHA-256 of everything before it (32 bytes), as etcd ends its snapshots with one.
//!
//! An image carries everything RocksDB holds: the MVCC key space, the compaction revision, the
//! members and the applied index.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::Db;
use crate::error::{Error, Result};

/// The first bytes of every image.
pub const MAGIC: &[u8; 16] = b"etcd-rs snapshot";
const VERSION: u32 = 1;
/// Where images are made, under the data dir; left-overs of a killed process go at start.
pub const SNAP_DIR: &str = "snap";
const SAVE_PREFIX: &str = "save-";
/// The contents before the trailer are padded to a multiple of this.
const PAD_TO: u64 = 512;
/// Longest file name an image may carry (RocksDB's are short).
const MAX_NAME: usize = 255;

/// What is left to send, in order.
enum Part {
    Bytes(Vec<u8>),
    File(PathBuf, u64),
}

/// A RocksDB checkpoint under the data dir's [`SNAP_DIR`], deleted once nothing uses it: a
/// `snapshot save` has one of its own; a raft snapshot's is shared by every follower it goes to.
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// Checkpoints `db` into a new directory under `data_dir`'s [`SNAP_DIR`] named `prefix` and a
    /// number unique to this process.
    pub fn create(db: &Db, data_dir: &Path, prefix: &str) -> Result<Checkpoint> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = data_dir.join(SNAP_DIR);
        fs::create_dir_all(&root).map_err(|e| io_err(format!("creating {}", root.display()), e))?;
        let dir = root.join(format!(
            "{prefix}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        db.checkpoint(&dir)?;
        Ok(Checkpoint { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a snapshot checkpoint");
        }
    }
}

/// An image being read out of a [`Checkpoint`].
pub struct Image {
    checkpoint: Arc<Checkpoint>,
    parts: std::collections::VecDeque<Part>,
    open: Option<(File, u64)>,
    hash: Sha256,
    total: u64,
    trailer_sent: bool,
    /// Dropped with the image: tells whoever lent the checkpoint that this read is over.
    _lease: Option<Box<dyn Send>>,
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> Error {
    Error::io(what.to_string(), e)
}

/// Deletes the images (and received raft snapshots) a killed process left under `data_dir`.
pub fn remove_leftovers(data_dir: &Path) -> Result<()> {
    let root = data_dir.join(SNAP_DIR);
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", root.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_err(format!("reading {}", root.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(SAVE_PREFIX) || name.starts_with(super::snap::CHECKPOINT_PREFIX) {
            fs::remove_dir_all(&path)
                .map_err(|e| io_err(format!("removing {}", path.display()), e))?;
        } else if name.starts_with(super::snap::INCOMING_PREFIX) {
            fs::remove_file(&path)
                .map_err(|e| io_err(format!("removing {}", path.display()), e))?;
        }
    }
    Ok(())
}

impl Image {
    /// Checkpoints `db` under `data_dir`'s [`SNAP_DIR`] and lays out the stream (`snapshot save`).
    pub fn create(db: &Db, data_dir: &Path) -> Result<Image> {
        let checkpoint = Checkpoint::create(db, data_dir, SAVE_PREFIX)?;
        Image::of(Arc::new(checkpoint), None)
    }

    /// Lays out the stream of `checkpoint`'s files; `lease` is dropped with the image.
    pub fn of(checkpoint: Arc<Checkpoint>, lease: Option<Box<dyn Send>>) -> Result<Image> {
        let mut image = Image {
            checkpoint,
            parts: Default::default(),
            open: None,
            hash: Sha256::new(),
            total: 0,
            trailer_sent: false,
            _lease: lease,
        };
        let dir = image.checkpoint.dir().to_path_buf();
        let mut files = Vec::new();
        let listing =
            fs::read_dir(&dir).map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
            let meta = entry
                .metadata()
                .map_err(|e| io_err(format!("stat {}", entry.path().display()), e))?;
            if !meta.is_file() {
                continue;
            }
            files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
        files.sort();
        let mut head = MAGIC.to_vec();
        head.extend(VERSION.to_be_bytes());
        head.extend((files.len() as u32).to_be_bytes());
        image.parts.push_back(Part::Bytes(head));
        for (name, len) in files {
            let mut h = (name.len() as u16).to_be_bytes().to_vec();
            h.extend(name.as_bytes());
            h.extend(len.to_be_bytes());
            image.parts.push_back(Part::Bytes(h));
            image.parts.push_back(Part::File(dir.join(&name), len));
        }
        let body: u64 = image
            .parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len() as u64,
                Part::File(_, len) => *len,
            })
            .sum();
        let pad = padding(body);
        image.parts.push_back(Part::Bytes(vec![0; pad as usize]));
        image.total = body + pad + 32;
        Ok(image)
    }

    /// The whole stream's length, trailer included.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Up to `max` next bytes of the stream; empty once it is all read.
    pub fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(max.min(self.total as usize));
        while out.len() < max {
            if let Some((file, left)) = &mut self.open {
                let want = (max - out.len()).min(*left as usize);
                let start = out.len();
                out.resize(start + want, 0);
                file.read_exact(&mut out[start..]).map_err(|e| {
                    io_err(
                        format!(
                            "reading the checkpoint in {}",
                            self.checkpoint.dir().display()
                        ),
                        e,
                    )
                })?;
                self.hash.update(&out[start..]);
                *left -= want as u64;
                if *left == 0 {
                    self.open = None;
                }
                continue;
            }
            match self.parts.pop_front() {
                Some(Part::Bytes(b)) => {
                    // Header pieces are small; one may overshoot `max` a little.
                    self.hash.update(&b);
                    out.extend(b);
                }
                Some(Part::File(path, len)) => {
                    let file = File::open(&path)
                        .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
                    // A checkpoint's files do not change; a different length is a bug or damage.
                    let on_disk = file
                        .metadata()
                        .map_err(|e| io_err(format!("stat {}", path.display()), e))?
                        .len();
                    if on_disk != len {
                        return Err(io_err(
                            format!("sending {}", path.display()),
                            io::Error::other(format!(
                                "changed size while being sent ({len} -> {on_disk} bytes)"
                            )),
                        ));
                    }
                    if len > 0 {
                        self.open = Some((file, len));
                    }
                }
                None if !self.trailer_sent => {
                    self.trailer_sent = true;
                    out.extend(self.hash.clone().finalize());
                }
                None => break,
            }
        }
        Ok(out)
    }
}

/// Zeroes after `body` bytes up to the next multiple of [`PAD_TO`].
fn padding(body: u64) -> u64 {
    (PAD_TO - body % PAD_TO) % PAD_TO
}

/// What [`unpack`] found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub bytes: u64,
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Hashing<R> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> std::result::Result<(), String> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => format!("truncated in {what} (at byte {})", self.read),
            _ => format!("reading {what}: {e}"),
        })?;
        self.hash.update(&*buf);
        self.read += buf.len() as u64;
        Ok(())
    }
}

/// Writes the RocksDB files of the image read from `from` into `into` (a directory that must
/// not exist yet, made here), checking the format and the trailing SHA-256. On any problem the
/// directory is removed again and the error says what and where (`name` names the source).
pub fn unpack(from: impl Read, name: &str, into: &Path) -> Result<Unpacked> {
    if into.exists() {
        return Err(Error::Startup(format!(
            "{}: already exists; an image is unpacked into a new directory only",
            into.display()
        )));
    }
    fs::create_dir_all(into).map_err(|e| io_err(format!("creating {}", into.display()), e))?;
    match unpack_files(from, into) {
        Ok(u) => Ok(u),
        Err(why) => {
            let _ = fs::remove_dir_all(into);
            Err(Error::Startup(format!("{name}: {why}")))
        }
    }
}

fn unpack_files(from: impl Read, into: &Path) -> std::result::Result<Unpacked, String> {
    let mut r = Hashing {
        inner: io::BufReader::with_capacity(1 << 20, from),
        hash: Sha256::new(),
        read: 0,
    };
    let mut head = [0u8; 24];
    r.exact(&mut head, "the header")?;
    if &head[..16] != MAGIC {
        // bbolt's first page: its header (16 bytes), then the meta page's magic, little endian.
        if head[16..20] == 0xED0C_DAEDu32.to_le_bytes() {
            // `snapshot status` and `snapshot restore` read those themselves (see
            // `snapshot_cmd::etcd`); nowhere else does one belong.
            return Err("an etcd (bbolt) snapshot, not one of ours".into());
        }
        return Err("not a snapshot of ours (its first bytes are not \"etcd-rs snapshot\")".into());
    }
    let version = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
    if version != VERSION {
        return Err(format!(
            "snapshot format version {version}; this build reads {VERSION}"
        ));
    }
    let count = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..count {
        let mut len = [0u8; 2];
        r.exact(&mut len, "a file's name")?;
        let name_len = u16::from_be_bytes(len) as usize;
        if name_len == 0 || name_len > MAX_NAME {
            return Err(format!("file {i} has a name of {name_len} bytes"));
        }
        let mut name = vec![0u8; name_len];
        r.exact(&mut name, "a file's name")?;
        let name = String::from_utf8(name).map_err(|_| format!("file {i}'s name is not UTF-8"))?;
        if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(format!("file {i} is named {name:?}, not a plain file name"));
        }
        let mut size = [0u8; 8];
        r.exact(&mut size, "a file's length")?;
        let mut left = u64::from_be_bytes(size);
        let path = into.join(&name);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            r.exact(&mut buf[..n], &format!("file {name}"))?;
            out.write_all(&buf[..n])
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            left -= n as u64;
            bytes += n as u64;
        }
        out.sync_all()
            .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    }
    let mut pad = vec![0u8; padding(r.read) as usize];
    r.exact(&mut pad, "the padding")?;
    if pad.iter().any(|b| *b != 0) {
        return Err(format!(
            "bytes other than zeroes in its padding before byte {}",
            r.read
        ));
    }
    let expected = r.hash.clone().finalize();
    let mut trailer = [0u8; 32];
    r.inner
        .read_exact(&mut trailer)
        .map_err(|_| format!("truncated: no SHA-256 after its {} bytes", r.read))?;
    if trailer[..] != expected[..] {
        return Err("its SHA-256 does not match its contents (damaged or truncated)".into());
    }
    let mut rest = [0u8; 1];
    if r.inner
        .read(&mut rest)
        .map_err(|e| format!("reading past the end: {e}"))?
        != 0
    {
        return Err("bytes after the SHA-256 (not one image, or damaged)".into());
    }
    File::open(into)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {e}", into.display()))?;
    Ok(Unpacked {
        files: count as usize,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_with(dir: &Path, rows: usize) -> std::sync::Arc<Db> {
        let db = Db::open(&dir.join("db")).unwrap();
        let mut batch = db.batch();
        for i in 0..rows {
            batch.put_applied(i as u64 + 1);
            let key = format!("key{i}");
            batch.put_version(key.as_bytes(), i as i64 + 1, 0, b"", &[7u8; 300]);
        }
        db.write_applied(batch).unwrap();
        db
    }

    fn read_all(image: &mut Image, chunk: usize) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let c = image.read_chunk(chunk).unwrap();
            if c.is_empty() {
                return all;
            }
            assert!(c.len() <= chunk + 300, "a chunk of {} bytes", c.len());
            all.extend(c);
        }
    }

    #[test]
    fn an_image_streams_in_chunks_and_unpacks_to_the_same_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with(dir.path(), 2000);
        let mut image = Image::create(&db, dir.path()).unwrap();
        let total = image.total_bytes();
        let checkpoint = image.checkpoint.dir().to_path_buf();
        assert!(checkpoint.exists());
        let bytes = read_all(&mut image, 4096);
        assert_eq!(bytes.len() as u64, total);
        assert_eq!(bytes.len() % 512, 32, "as etcdctl snapshot save wants it");
        assert_eq!(&bytes[..16], MAGIC);
        assert_eq!(
            Sha256::digest(&bytes[..bytes.len() - 32])[..],
            bytes[bytes.len() - 32..]
        );
        drop(image);
        assert!(!checkpoint.exists(), "the checkpoint goes with the image");

        let into = dir.path().join("restored");
        let u = unpack(&bytes[..], "test.db", &into).unwrap();
        assert!(u.files > 0 && u.bytes > 0, "{u:?}");
        let restored = Db::open(&into).unwrap();
        assert_eq!(restored.applied_index().unwrap(), 2000);
        assert_eq!(restored.version_rows().len(), 2000);
    }

    #[test]
    fn a_damaged_or_truncated_image_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with(dir.path(), 100);
        let bytes = read_all(&mut Image::create(&db, dir.path()).unwrap(), 1 << 20);
        let into = dir.path().join("x");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bytes[..bytes.len() - 1].to_vec(), "truncated"),
            (bytes[..bytes.len() / 2].to_vec(), "truncated"),
            (
                {
                    let mut b = bytes.clone();
                    let at = b.len() / 2;
                    b[at] ^= 1;
                    b
                },
                "SHA-256 does not match",
            ),
            (
                {
                    let mut b = bytes.clone();
                    b.push(0);
                    b
                },
                "bytes after the SHA-256",
            ),
            (
                b"some other file ....... and more".to_vec(),
                "not a snapshot of ours",
            ),
            (
                {
                    let mut b = vec![0u8; 4096];
                    b[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
                    b
                },
                "an etcd (bbolt) snapshot",
            ),
            (Vec::new(), "truncated in the header"),
        ];
        for (input, why) in cases {
            let e = unpack(&input[..], "snap.db", &into)
                .unwrap_err()
                .to_string();
            assert!(e.contains("snap.db") && e.contains(why), "{why}: {e}");
            assert!(!into.exists(), "{why}: left {}", into.display());
        }
        fs::create_dir(&into).unwrap();
        let e = unpack(&bytes[..], "snap.db", &into)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
    }

    #[test]
    fn leftover_checkpoints_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with(dir.path(), 10);
        let image = Image::create(&db, dir.path()).unwrap();
        let left = image.checkpoint.dir().to_path_buf();
        // As a kill -9 leaves it.
        std::mem::forget(image);
        remove_leftovers(dir.path()).unwrap();
        assert!(!left.exists());
        remove_leftovers(&dir.path().join("none")).unwrap();
    }
}
