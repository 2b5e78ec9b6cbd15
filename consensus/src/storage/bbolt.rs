//! A read-only reader of bbolt database files, for the snapshots `etcdctl snapshot save` takes
//! of a real etcd: the database file, then the SHA-256 of it (32 bytes).
//!
//! The file is never loaded whole: pages are read one at a time with positioned reads, and a walk
//! holds only the pages on its path from the bucket's root. Every offset, length and count read
//! from the file is checked against the file and the page it is in; a damaged file gives an
//! error naming it and what is wrong, never a panic.
//!
//! The format (little endian, as bbolt writes it on every platform etcd ships for):
//! - every page starts with a 16-byte header: its id (`u64`), flags (`u16`: 0x01 branch, 0x02
//!   leaf, 0x04 meta, 0x10 freelist), element count (`u16`) and how many more pages it spans
//!   (`u32`, its overflow);
//! - pages 0 and 1 are meta pages, written alternately by commits: magic 0xED0CDAED, version 2,
//!   page size, flags, the root bucket (root page, sequence), the freelist page, the number of
//!   pages, the transaction id, and an FNV-1a 64 of the 56 bytes before it. The valid one with
//!   the higher transaction id is the database;
//! - a branch page's elements are (position, key size, child page), 16 bytes each; a leaf page's
//!   are (flags, position, key size, value size), 16 bytes each; a position counts from the
//!   element's own first byte;
//! - a leaf element with flag 0x01 is a bucket: its value is the bucket's root page and sequence
//!   (16 bytes), and when the root page is 0 an inline bucket follows, a leaf page of its own
//!   inside the value. The root bucket's elements are the top-level buckets.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_LEN: usize = 64;
/// The meta's bytes that its checksum covers.
const META_SUMMED: usize = 56;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const BUCKET_FLAG: u32 = 0x01;
/// A bucket's value before its inline page: root page and sequence.
const BUCKET_HEADER: usize = 16;
/// Deeper than any tree of a database of a few TiB: a deeper one is a loop in a damaged file.
const MAX_DEPTH: usize = 64;
/// The page sizes a meta page may be found at, the most likely first.
const PAGE_SIZES: [u64; 8] = [4096, 512, 1024, 2048, 8192, 16384, 32768, 65536];

/// An open bbolt snapshot whose SHA-256 and meta pages were checked.
pub struct Bbolt {
    file: File,
    name: String,
    page_size: u64,
    /// The database's bytes: the file without its trailing SHA-256.
    len: u64,
    /// The page count the meta gives (its high-water mark): every page of the tree is below it.
    pages: u64,
    root: u64,
    txid: u64,
}

/// A bucket to walk: its root page, or the inline leaf page its value carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bucket {
    Page(u64),
    Inline(Vec<u8>),
}

/// One element of a bucket: a value, or a nested bucket.
#[derive(Debug)]
pub enum Entry<'a> {
    Value(&'a [u8]),
    Bucket(Bucket),
}

/// One page as read (an inline bucket's page too): its bytes, overflow pages included.
struct Page {
    /// The page id, for messages; `None` for an inline page.
    id: Option<u64>,
    bytes: Vec<u8>,
    flags: u16,
    count: usize,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A meta page's fields that the reader uses.
#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size: u64,
    root: u64,
    pages: u64,
    txid: u64,
}

/// The meta in the page at `bytes` (its header included), or why it is not a valid one.
fn parse_meta(bytes: &[u8]) -> std::result::Result<Meta, String> {
    if bytes.len() < PAGE_HEADER + META_LEN {
        return Err("too short".into());
    }
    if u16_at(bytes, 8) & META == 0 {
        return Err(format!("not a meta page (flags {:#x})", u16_at(bytes, 8)));
    }
    let m = &bytes[PAGE_HEADER..PAGE_HEADER + META_LEN];
    if u32_at(m, 0) != MAGIC {
        return Err(format!("magic {:#x}, not bbolt's {MAGIC:#x}", u32_at(m, 0)));
    }
    if u32_at(m, 4) != VERSION {
        return Err(format!("format version {}, not {VERSION}", u32_at(m, 4)));
    }
    let sum = fnv1a64(&m[..META_SUMMED]);
    if u64_at(m, META_SUMMED) != sum {
        return Err(format!(
            "checksum {:#x}, but its contents sum to {sum:#x}",
            u64_at(m, META_SUMMED)
        ));
    }
    Ok(Meta {
        page_size: u64::from(u32_at(m, 8)),
        root: u64_at(m, 16),
        pages: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

impl Bbolt {
    /// Opens the snapshot at `path`: checks the SHA-256 `etcdctl snapshot save` put after the
    /// database (as `etcdutl snapshot restore` does unless told to skip it), then the meta pages.
    pub fn open(path: &Path) -> Result<Bbolt> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(format!("opening {name}"), e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {name}"), e))?
            .len();
        let bad = |why: String| Error::Startup(format!("{name}: {why}"));
        // etcdctl's test for a trailing hash: a bbolt file is whole pages, so a multiple of 512.
        if size % 512 != 32 {
            return Err(bad(format!(
                "{size} bytes, not whole 512-byte blocks and a 32-byte SHA-256: truncated, or not \
                 saved by etcdctl snapshot save"
            )));
        }
        let len = size - 32;
        check_sha256(&file, len).map_err(bad)?;
        let mut db = Bbolt {
            file,
            name: name.clone(),
            page_size: 0,
            len,
            pages: 0,
            root: 0,
            txid: 0,
        };
        let meta = db.pick_meta().map_err(|e| db.bad(e))?;
        db.page_size = meta.page_size;
        db.pages = meta.pages;
        db.root = meta.root;
        db.txid = meta.txid;
        let held = meta.pages.checked_mul(meta.page_size);
        if held.is_none_or(|h| h > len) {
            return Err(db.bad(format!(
                "its meta page says {} pages of {} bytes, more than the {len} bytes it holds \
                 (truncated)",
                meta.pages, meta.page_size
            )));
        }
        if meta.root < 2 || meta.root >= meta.pages {
            return Err(db.bad(format!(
                "its root bucket is at page {}, outside pages 2 to {}",
                meta.root,
                meta.pages.saturating_sub(1)
            )));
        }
        tracing::debug!(
            file = %db.name,
            page_size = db.page_size,
            pages = db.pages,
            txid = db.txid,
            "bbolt snapshot opened"
        );
        Ok(db)
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| format!("reading {} bytes at byte {at}: {e}", buf.len()))
    }

    /// The valid meta page with the higher transaction id (bbolt's choice). Meta 0 is at the
    /// start whatever the page size; meta 1 one page further, at its own page size.
    fn pick_meta(&self) -> std::result::Result<Meta, String> {
        let mut buf = [0u8; PAGE_HEADER + META_LEN];
        let read_meta = |at: u64, buf: &mut [u8]| -> std::result::Result<Meta, String> {
            if at + buf.len() as u64 > self.len {
                return Err("beyond the end of the file".into());
            }
            self.read_at(at, buf)?;
            let m = parse_meta(buf)?;
            if !m.page_size.is_power_of_two() || !(512..=65536).contains(&m.page_size) {
                return Err(format!("page size {}", m.page_size));
            }
            Ok(m)
        };
        let first = read_meta(0, &mut buf);
        let candidates: Vec<u64> = match &first {
            Ok(m) => vec![m.page_size],
            Err(_) => PAGE_SIZES.to_vec(),
        };
        let mut second = Err("not found at any page size".to_string());
        for size in candidates {
            let found = read_meta(size, &mut buf).and_then(|m| {
                if m.page_size == size {
                    Ok(m)
                } else {
                    Err(format!("page size {} at byte {size}", m.page_size))
                }
            });
            // The first candidate's complaint says the most; later ones are guesses.
            if found.is_ok() || second.as_ref().is_err_and(|e| e.starts_with("not found")) {
                second = found;
            }
            if second.is_ok() {
                break;
            }
        }
        match (first, second) {
            (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => Ok(m),
            (Err(a), Err(b)) => Err(format!(
                "no valid bbolt meta page (page 0: {a}; page 1: {b})"
            )),
        }
    }

    /// The database's size as bbolt counts it (its pages), what etcd reports as its size.
    pub fn db_size(&self) -> u64 {
        self.pages * self.page_size
    }

    fn bad(&self, why: impl std::fmt::Display) -> Error {
        Error::Startup(format!("{}: {why}", self.name))
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Page> {
        if id < 2 || id >= self.pages {
            return Err(self.bad(format!(
                "a tree points at page {id}, outside pages 2 to {}",
                self.pages - 1
            )));
        }
        let at = id * self.page_size;
        let mut head = [0u8; PAGE_HEADER];
        self.read_at(at, &mut head).map_err(|e| self.bad(e))?;
        let stored = u64_at(&head, 0);
        if stored != id {
            return Err(self.bad(format!("page {id} says it is page {stored}")));
        }
        let span = 1 + u64::from(u32_at(&head, 12));
        if id + span > self.pages {
            return Err(self.bad(format!(
                "page {id} spans {span} pages, past the database's {} pages",
                self.pages
            )));
        }
        let mut bytes = vec![0u8; (span * self.page_size) as usize];
        self.read_at(at, &mut bytes).map_err(|e| self.bad(e))?;
        self.checked(Some(id), bytes)
    }

    /// A page's header read and its element table checked to fit in `bytes`.
    fn checked(&self, id: Option<u64>, bytes: Vec<u8>) -> Result<Page> {
        let what = || {
            id.map_or("an inline bucket's page".to_string(), |id| {
                format!("page {id}")
            })
        };
        if bytes.len() < PAGE_HEADER {
            return Err(self.bad(format!("{} is {} bytes short", what(), bytes.len())));
        }
        let flags = u16_at(&bytes, 8);
        let count = usize::from(u16_at(&bytes, 10));
        if flags != BRANCH && flags != LEAF {
            return Err(self.bad(format!(
                "{} of a tree is neither a branch nor a leaf page (flags {flags:#x})",
                what()
            )));
        }
        if PAGE_HEADER + count * ELEMENT > bytes.len() {
            return Err(self.bad(format!(
                "{} holds {count} elements, more than its {} bytes have room for",
                what(),
                bytes.len()
            )));
        }
        if flags == BRANCH && count == 0 {
            return Err(self.bad(format!("{} is a branch page without children", what())));
        }
        Ok(Page {
            id,
            bytes,
            flags,
            count,
        })
    }

    /// The root bucket, whose elements are the top-level buckets.
    pub fn root(&self) -> Bucket {
        Bucket::Page(self.root)
    }

    /// The top-level bucket `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>> {
        let mut found = None;
        self.for_each(&self.root(), &mut |k, e| {
            if k == name
                && let Entry::Bucket(b) = e
            {
                found = Some(b);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// The names of the top-level buckets, in order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        self.for_each(&self.root(), &mut |k, e| {
            if let Entry::Bucket(_) = e {
                names.push(k.to_vec());
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// Calls `f` with every element of `bucket`, in key order. Keys must come strictly in order
    /// (they do in a sound file), which also stops a damaged tree from visiting a page twice.
    pub fn for_each(
        &self,
        bucket: &Bucket,
        f: &mut dyn FnMut(&[u8], Entry<'_>) -> Result<()>,
    ) -> Result<()> {
        let root = match bucket {
            Bucket::Page(id) => self.page(*id)?,
            Bucket::Inline(bytes) => {
                let page = self.checked(None, bytes.clone())?;
                if page.flags != LEAF {
                    return Err(self.bad("an inline bucket's page is not a leaf page"));
                }
                page
            }
        };
        let mut walk = Walk {
            last: Vec::new(),
            started: false,
            visited: 0,
        };
        self.walk(root, 0, &mut walk, f)
    }

    fn walk(
        &self,
        page: Page,
        depth: usize,
        walk: &mut Walk,
        f: &mut dyn FnMut(&[u8], Entry<'_>) -> Result<()>,
    ) -> Result<()> {
        walk.visited += 1;
        // Each page of a sound tree is on one path only: more visits than pages is a loop.
        if depth > MAX_DEPTH || walk.visited > self.pages {
            return Err(self.bad(format!(
                "a bucket's tree loops back on itself (at {})",
                page.id
                    .map_or("an inline page".into(), |id| format!("page {id}"))
            )));
        }
        for i in 0..page.count {
            let e = PAGE_HEADER + i * ELEMENT;
            let b = &page.bytes;
            if page.flags == BRANCH {
                let child = u64_at(b, e + 8);
                self.walk(self.page(child)?, depth + 1, walk, f)?;
                continue;
            }
            let flags = u32_at(b, e);
            let pos = u32_at(b, e + 4) as usize;
            let key_len = u32_at(b, e + 8) as usize;
            let value_len = u32_at(b, e + 12) as usize;
            let key_at = e + pos;
            let value_at = key_at + key_len;
            let end = value_at + value_len;
            let where_ = || {
                page.id
                    .map_or("an inline bucket's page".into(), |id| format!("page {id}"))
            };
            if end > b.len() {
                return Err(self.bad(format!(
                    "element {i} of {} reaches byte {end}, past the page's {} bytes",
                    where_(),
                    b.len()
                )));
            }
            let key = &b[key_at..value_at];
            let value = &b[value_at..end];
            if walk.started && key <= walk.last.as_slice() {
                return Err(self.bad(format!(
                    "keys out of order in {} (element {i}): a damaged tree",
                    where_()
                )));
            }
            walk.started = true;
            walk.last.clear();
            walk.last.extend_from_slice(key);
            let entry = if flags & BUCKET_FLAG != 0 {
                if value.len() < BUCKET_HEADER {
                    return Err(self.bad(format!(
                        "bucket {:?} in {} has a {}-byte header",
                        String::from_utf8_lossy(key),
                        where_(),
                        value.len()
                    )));
                }
                match u64_at(value, 0) {
                    0 => Entry::Bucket(Bucket::Inline(value[BUCKET_HEADER..].to_vec())),
                    root => Entry::Bucket(Bucket::Page(root)),
                }
            } else {
                Entry::Value(value)
            };
            f(key, entry)?;
        }
        Ok(())
    }
}

/// Where a walk of one bucket is.
struct Walk {
    /// The last key visited, once `started`.
    last: Vec<u8>,
    started: bool,
    visited: u64,
}

/// Compares the SHA-256 of the first `len` bytes of `file` with the 32 bytes after them.
fn check_sha256(file: &File, len: u64) -> std::result::Result<(), String> {
    let mut hash = Sha256::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(len));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("reading to check its SHA-256: {e}"))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let mut trailer = [0u8; 32];
    file.read_exact_at(&mut trailer, len)
        .map_err(|e| format!("reading its SHA-256: {e}"))?;
    if trailer[..] != hash.finalize()[..] {
        return Err("its SHA-256 does not match its contents (damaged or truncated)".into());
    }
    Ok(())
}

/// Writes small bbolt files for tests: pages laid out as bbolt lays them out, then the metas
/// and the SHA-256 that `etcdctl snapshot save` adds.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// One leaf element.
    pub enum Elem {
        Value(Vec<u8>),
        /// A bucket whose root is this page.
        Bucket(u64),
        /// An inline bucket: a leaf page's bytes ([`leaf_bytes`]).
        Inline(Vec<u8>),
    }

    /// A leaf page's bytes (id 0, no overflow: as an inline bucket carries it).
    pub fn leaf_bytes(elems: &[(Vec<u8>, Elem)]) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_HEADER + elems.len() * ELEMENT];
        page[8..10].copy_from_slice(&LEAF.to_le_bytes());
        page[10..12].copy_from_slice(&(elems.len() as u16).to_le_bytes());
        for (i, (key, elem)) in elems.iter().enumerate() {
            let e = PAGE_HEADER + i * ELEMENT;
            let (flags, value) = match elem {
                Elem::Value(v) => (0u32, v.clone()),
                Elem::Bucket(root) => (BUCKET_FLAG, [&root.to_le_bytes()[..], &[0; 8]].concat()),
                Elem::Inline(p) => (BUCKET_FLAG, [&[0u8; 16][..], p].concat()),
            };
            let pos = (page.len() - e) as u32;
            page[e..e + 4].copy_from_slice(&flags.to_le_bytes());
            page[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
            page[e + 8..e + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[e + 12..e + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
            page.extend_from_slice(key);
            page.extend_from_slice(&value);
        }
        page
    }

    pub struct Builder {
        pub page_size: usize,
        /// Whole pages from page 2 on.
        pub body: Vec<u8>,
    }

    impl Builder {
        pub fn new(page_size: usize) -> Builder {
            Builder {
                page_size,
                body: Vec::new(),
            }
        }

        fn next_id(&self) -> u64 {
            2 + (self.body.len() / self.page_size) as u64
        }

        /// Stores a page (its header's id and overflow set here), whole pages; returns its id.
        pub fn page(&mut self, mut bytes: Vec<u8>) -> u64 {
            let id = self.next_id();
            let span = bytes.len().div_ceil(self.page_size).max(1);
            bytes.resize(span * self.page_size, 0);
            bytes[..8].copy_from_slice(&id.to_le_bytes());
            bytes[12..16].copy_from_slice(&((span - 1) as u32).to_le_bytes());
            self.body.extend(bytes);
            id
        }

        pub fn leaf(&mut self, elems: &[(Vec<u8>, Elem)]) -> u64 {
            self.page(leaf_bytes(elems))
        }

        pub fn branch(&mut self, children: &[(Vec<u8>, u64)]) -> u64 {
            let mut page = vec![0u8; PAGE_HEADER + children.len() * ELEMENT];
            page[8..10].copy_from_slice(&BRANCH.to_le_bytes());
            page[10..12].copy_from_slice(&(children.len() as u16).to_le_bytes());
            for (i, (key, child)) in children.iter().enumerate() {
                let e = PAGE_HEADER + i * ELEMENT;
                let pos = (page.len() - e) as u32;
                page[e..e + 4].copy_from_slice(&pos.to_le_bytes());
                page[e + 4..e + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
                page[e + 8..e + 16].copy_from_slice(&child.to_le_bytes());
                page.extend_from_slice(key);
            }
            self.page(page)
        }

        /// A meta page (id 0 or 1) for the tree at `root`.
        pub fn meta(&self, id: u64, root: u64, txid: u64) -> Vec<u8> {
            let mut page = vec![0u8; self.page_size];
            page[..8].copy_from_slice(&id.to_le_bytes());
            page[8..10].copy_from_slice(&META.to_le_bytes());
            let m = &mut page[PAGE_HEADER..PAGE_HEADER + META_LEN];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(self.page_size as u32).to_le_bytes());
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
            m[40..48].copy_from_slice(&self.next_id().to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..META_SUMMED]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            page
        }

        /// The file: both metas (meta 1 one transaction older, as bbolt's copy writes it), the
        /// pages, the SHA-256.
        pub fn finish(&self, root: u64) -> Vec<u8> {
            let mut file = self.meta(0, root, 9);
            file.extend(self.meta(1, root, 8));
            file.extend(&self.body);
            with_sha256(file)
        }
    }

    /// `bytes` with its SHA-256 after it (again, after a test changed them).
    pub fn with_sha256(mut bytes: Vec<u8>) -> Vec<u8> {
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn key(i: usize) -> Vec<u8> {
        format!("k{i:04}").into_bytes()
    }

    /// Buckets "a" (a branch over two leaves, one value spanning overflow pages) and "b"
    /// (inline), with the byte offsets of "a"'s branch page and first leaf.
    fn sample() -> (Vec<u8>, usize, usize) {
        let mut b = Builder::new(4096);
        let first: Vec<(Vec<u8>, Elem)> = (0..10)
            .map(|i| (key(i), Elem::Value(vec![i as u8; 10])))
            .collect();
        let mut second: Vec<(Vec<u8>, Elem)> = (10..20)
            .map(|i| (key(i), Elem::Value(vec![i as u8; 10])))
            .collect();
        second[3].1 = Elem::Value(vec![0xAB; 10_000]);
        let l1 = b.leaf(&first);
        let l2 = b.leaf(&second);
        let branch = b.branch(&[(key(0), l1), (key(10), l2)]);
        let inline = leaf_bytes(&[(b"x".to_vec(), Elem::Value(b"y".to_vec()))]);
        let root = b.leaf(&[
            (b"a".to_vec(), Elem::Bucket(branch)),
            (b"b".to_vec(), Elem::Inline(inline)),
        ]);
        let file = b.finish(root);
        (file, branch as usize * 4096, l1 as usize * 4096)
    }

    fn write(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join("snap.db");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn entries(db: &Bbolt, name: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let bucket = db.bucket(name)?.expect("the bucket");
        let mut out = Vec::new();
        db.for_each(&bucket, &mut |k, e| {
            if let Entry::Value(v) = e {
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn buckets_branches_overflow_and_inline_buckets_are_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _, _) = sample();
        let db = Bbolt::open(&write(dir.path(), &file)).unwrap();
        assert_eq!(
            db.bucket_names().unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        let a = entries(&db, b"a").unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(a[13].1, vec![0xAB; 10_000]);
        assert_eq!(a[19], (key(19), vec![19; 10]));
        assert_eq!(
            entries(&db, b"b").unwrap(),
            vec![(b"x".to_vec(), b"y".to_vec())]
        );
        assert_eq!(db.bucket(b"c").unwrap(), None);
        assert_eq!(db.db_size() as usize, file.len() - 32);
    }

    /// The error of opening `bytes` and reading every bucket of it.
    fn error_of(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), bytes);
        let read = || -> Result<()> {
            let db = Bbolt::open(&path)?;
            for name in db.bucket_names()? {
                entries(&db, &name)?;
            }
            Ok(())
        };
        let e = read().expect_err("a damaged file").to_string();
        assert!(e.contains("snap.db"), "names the file: {e}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        e
    }

    /// `file` without its SHA-256, changed by `f`, hashed again: damage that only the format's
    /// own checks can find.
    fn rehashed(file: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut body = file[..file.len() - 32].to_vec();
        f(&mut body);
        with_sha256(body)
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_never_a_panic() {
        let (file, branch, leaf) = sample();
        let mut flipped = file.clone();
        flipped[file.len() / 2] ^= 1;
        assert!(error_of(&flipped).contains("SHA-256 does not match"));
        assert!(error_of(&file[..file.len() - 1]).contains("truncated"));
        assert!(error_of(&file[..file.len() - 512]).contains("SHA-256 does not match"));
        assert!(error_of(&with_sha256(vec![0; 512])).contains("no valid bbolt meta page"));
        assert!(error_of(&[]).contains("0 bytes"));

        let put = |at: usize, v: &[u8]| rehashed(&file, |b| b[at..at + v.len()].copy_from_slice(v));
        // Both metas bad: their magic, their checksum.
        let both = rehashed(&file, |b| {
            b[16] ^= 1;
            b[4096 + 16 + 56] ^= 1;
        });
        let e = error_of(&both);
        assert!(e.contains("magic") && e.contains("checksum"), "{e}");
        let e = error_of(&rehashed(&file, |b| {
            b[20] = 3;
            b[4096 + 8] = 0;
        }));
        assert!(
            e.contains("format version 3") && e.contains("not a meta page"),
            "{e}"
        );
        // One bad meta: the other is used.
        let dir = tempfile::tempdir().unwrap();
        let one = rehashed(&file, |b| b[16 + 20] ^= 1);
        let db = Bbolt::open(&write(dir.path(), &one)).unwrap();
        assert_eq!(entries(&db, b"a").unwrap().len(), 20);

        // Pages out of range: a child beyond the end, a meta claiming more pages than there are.
        let e = error_of(&put(branch + 16 + 8, &1000u64.to_le_bytes()));
        assert!(e.contains("page 1000, outside pages 2 to"), "{e}");
        let e = error_of(&put(branch + 16 + 8, &u64::MAX.to_le_bytes()));
        assert!(e.contains("outside pages"), "{e}");
        let e = error_of(&put(branch + 16 + 8, &1u64.to_le_bytes()));
        assert!(e.contains("page 1, outside"), "{e}");
        let e = error_of(&rehashed(&file, |b| {
            for meta in [0, 4096] {
                let m = meta + 16;
                b[m + 40..m + 48].copy_from_slice(&(1u64 << 61).to_le_bytes());
                let sum = fnv1a64(&b[m..m + 56]);
                b[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
            }
        }));
        assert!(
            e.contains("more than the") && e.contains("truncated"),
            "{e}"
        );
        // A page that is not where it says, spans past the end, or is not a tree page.
        assert!(error_of(&put(leaf, &77u64.to_le_bytes())).contains("says it is page 77"));
        let e = error_of(&put(leaf + 12, &u32::MAX.to_le_bytes()));
        assert!(e.contains("spans"), "{e}");
        let e = error_of(&put(leaf + 8, &0x10u16.to_le_bytes()));
        assert!(e.contains("neither a branch nor a leaf"), "{e}");
        // Elements beyond their page: too many, a position or a length past its end.
        let e = error_of(&put(leaf + 10, &u16::MAX.to_le_bytes()));
        assert!(e.contains("more than its"), "{e}");
        let e = error_of(&put(leaf + 16 + 4, &u32::MAX.to_le_bytes()));
        assert!(e.contains("past the page"), "{e}");
        let e = error_of(&put(leaf + 16 + 12, &5000u32.to_le_bytes()));
        assert!(e.contains("past the page"), "{e}");
        // A branch pointing at itself, or twice at the same leaf.
        let me = (branch / 4096) as u64;
        let e = error_of(&put(branch + 16 + 8, &me.to_le_bytes()));
        assert!(
            e.contains("loops back") || e.contains("out of order"),
            "{e}"
        );
        let l1 = (leaf / 4096) as u64;
        let e = error_of(&put(branch + 32 + 8, &l1.to_le_bytes()));
        assert!(e.contains("out of order"), "{e}");
    }
}
