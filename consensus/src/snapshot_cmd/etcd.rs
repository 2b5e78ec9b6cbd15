//! Snapshots of a real etcd (3.4, 3.5; what `etcdctl snapshot save` fetches from one): a bbolt
//! database ([`crate::storage::bbolt`]) and its SHA-256. [`fill`] writes its MVCC history into
//! an empty database of ours; [`status`] answers `snapshot status` as etcd does.
//!
//! What etcd keeps there, and what becomes of it:
//! - bucket `key`: one row per version, keyed by its revision (main revision, `_`, sub
//!   revision, 8 bytes big endian each, then `t` for a tombstone), valued with a
//!   `mvccpb.KeyValue` (a tombstone's holds only the key): every version and tombstone, in
//!   revision order, is written as our apply writes it ([`crate::mvcc::Import`]);
//! - bucket `meta`: `consistent_index` (the old cluster's applied raft index),
//!   `scheduledCompactRev` and `finishedCompactRev` (revisions, as above): the compacted
//!   revision, and whether etcd's pass of it finished;
//! - bucket `members`: the old cluster's members (JSON), only logged: the new cluster's are
//!   `--initial-cluster`'s, as with etcdutl;
//! - buckets `lease` and `auth*`: not restored (this store has neither yet); a warning says
//!   when they held anything. Versions keep the lease ID etcd gave them, so reads answer as
//!   etcd's do, but no lease of this store will expire them.

use std::path::Path;
use std::time::Instant;

use tracing::{info, warn};

use super::Status;
use crate::error::{Error, Result};
use crate::mvcc::{Import, KeyValue};
use crate::storage::Db;
use crate::storage::bbolt::{Bbolt, Entry};

/// The bytes at 16..20 of a bbolt file: its first meta page's magic, little endian.
pub const BBOLT_MAGIC: [u8; 4] = 0xED0C_DAEDu32.to_le_bytes();

/// A revision as etcd's `key` bucket keys it: main, sub, and whether it is a tombstone.
fn revision_of(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let n = |b: &[u8]| {
        let mut v = [0u8; 8];
        v.copy_from_slice(b);
        i64::from_be_bytes(v)
    };
    Some((n(&k[..8]), n(&k[9..17]), tombstone))
}

/// One protobuf varint at `*at`, moved past it.
fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A `mvccpb.KeyValue`: key = 1, create_revision = 2, mod_revision = 3, version = 4,
/// value = 5, lease = 6; fields it does not know are skipped, as protobuf does.
fn decode_kv(b: &[u8]) -> std::result::Result<KeyValue, String> {
    let mut kv = KeyValue::default();
    let mut at = 0;
    while at < b.len() {
        let tag = varint(b, &mut at).ok_or("a bad field tag")?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = varint(b, &mut at).ok_or("a bad number")? as i64;
                match field {
                    2 => kv.create_revision = v,
                    3 => kv.mod_revision = v,
                    4 => kv.version = v,
                    6 => kv.lease = v,
                    1 | 5 => return Err(format!("field {field} is a number, not bytes")),
                    _ => {}
                }
            }
            2 => {
                let len = varint(b, &mut at).ok_or("a bad length")?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| at.checked_add(l))
                    .filter(|end| *end <= b.len())
                    .ok_or_else(|| format!("field {field} runs past its {} bytes", b.len()))?;
                match field {
                    1 => kv.key = b[at..end].to_vec(),
                    5 => kv.value = b[at..end].to_vec(),
                    2..=4 | 6 => return Err(format!("field {field} is bytes, not a number")),
                    _ => {}
                }
                at = end;
            }
            1 | 5 => {
                at += if wire == 1 { 8 } else { 4 };
                if at > b.len() {
                    return Err(format!("field {field} runs past its {} bytes", b.len()));
                }
            }
            _ => return Err(format!("field {field} has wire type {wire}")),
        }
    }
    Ok(kv)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What `meta` holds that a restore needs.
struct EtcdMeta {
    consistent_index: u64,
    scheduled_compact: Option<i64>,
    finished_compact: Option<i64>,
}

fn read_meta(bolt: &Bbolt, bad: &dyn Fn(String) -> Error) -> Result<EtcdMeta> {
    let meta = bolt
        .bucket(b"meta")?
        .ok_or_else(|| bad("no \"meta\" bucket: not a snapshot of an etcd v3 store".into()))?;
    let mut m = EtcdMeta {
        consistent_index: 0,
        scheduled_compact: None,
        finished_compact: None,
    };
    let mut problem = None;
    bolt.for_each(&meta, &mut |k, e| {
        let Entry::Value(v) = e else { return Ok(()) };
        let revision = || revision_of(v).map(|(main, _, _)| main);
        match k {
            b"consistent_index" => match <[u8; 8]>::try_from(v) {
                Ok(b) => m.consistent_index = u64::from_be_bytes(b),
                Err(_) => problem = Some(format!("consistent_index of {} bytes", v.len())),
            },
            b"scheduledCompactRev" => match revision() {
                Some(r) => m.scheduled_compact = Some(r),
                None => problem = Some(format!("scheduledCompactRev is {}", hex(v))),
            },
            b"finishedCompactRev" => match revision() {
                Some(r) => m.finished_compact = Some(r),
                None => problem = Some(format!("finishedCompactRev is {}", hex(v))),
            },
            _ => {}
        }
        Ok(())
    })?;
    match problem {
        Some(p) => Err(bad(format!("its meta bucket's {p}"))),
        None => Ok(m),
    }
}

/// How many elements bucket `name` holds (0 without it).
fn count(bolt: &Bbolt, name: &[u8]) -> Result<u64> {
    let mut n = 0;
    if let Some(b) = bolt.bucket(name)? {
        bolt.for_each(&b, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
    }
    Ok(n)
}

/// Logs the old cluster's members: they are not carried over.
fn log_old_members(bolt: &Bbolt) -> Result<()> {
    let Some(members) = bolt.bucket(b"members")? else {
        return Ok(());
    };
    let mut old = Vec::new();
    bolt.for_each(&members, &mut |k, e| {
        let name = match e {
            Entry::Value(v) => serde_json::from_slice::<serde_json::Value>(v)
                .ok()
                .and_then(|j| j.get("name")?.as_str().map(str::to_string))
                .unwrap_or_default(),
            Entry::Bucket(_) => String::new(),
        };
        old.push(format!("{name:?} ({})", String::from_utf8_lossy(k)));
        Ok(())
    })?;
    info!(
        members = old.join(", "),
        "the etcd cluster's members are not carried over; the new cluster's are --initial-cluster's"
    );
    Ok(())
}

/// Writes the MVCC history of the etcd snapshot `file` into `db` (new and empty) and returns
/// etcd's applied index (`consistent_index`). Errors about the file name it.
pub fn fill(file: &Path, db: &Db) -> Result<u64> {
    let started = Instant::now();
    let name = file.display().to_string();
    let bad = |why: String| Error::Startup(format!("{name}: {why}"));
    let bolt = Bbolt::open(file)?;
    let meta = read_meta(&bolt, &bad)?;
    log_old_members(&bolt)?;
    let leases = count(&bolt, b"lease")?;
    if leases > 0 {
        warn!(
            leases,
            "the etcd snapshot holds leases, which this store does not restore: keys attached \
             to them keep the lease ID and do not expire"
        );
    }
    if count(&bolt, b"authUsers")? + count(&bolt, b"authRoles")? > 0 {
        warn!("the etcd snapshot holds auth users or roles, which this store does not restore");
    }
    let keys = bolt
        .bucket(b"key")?
        .ok_or_else(|| bad("no \"key\" bucket: not a snapshot of an etcd v3 store".into()))?;
    let compacted = meta.scheduled_compact.max(meta.finished_compact);
    let mut import = Import::new(db, compacted.unwrap_or(-1));
    let walked = bolt.for_each(&keys, &mut |k, e| {
        let Entry::Value(v) = e else {
            return Err(Error::Corrupt(format!(
                "a bucket inside the key bucket, at {}",
                hex(k)
            )));
        };
        let (main, sub, tombstone) = revision_of(k).ok_or_else(|| {
            Error::Corrupt(format!("the key bucket holds {}, not a revision", hex(k)))
        })?;
        let kv = decode_kv(v).map_err(|why| {
            Error::Corrupt(format!("the version at revision {main}.{sub}: {why}"))
        })?;
        import.version(main, sub, &kv, tombstone)
    });
    // Import's and the walk's own complaints are about the file; RocksDB's stay as they are.
    let named = |e: Error| match e {
        Error::Corrupt(why) => bad(why),
        e => e,
    };
    walked.map_err(named)?;
    let done = import
        .finish(compacted.is_none() || meta.finished_compact == compacted)
        .map_err(named)?;
    info!(
        versions = done.versions,
        revision = done.revision,
        compacted = done.compacted,
        applied = meta.consistent_index,
        took = ?started.elapsed(),
        "etcd snapshot imported"
    );
    if done.with_lease > 0 {
        warn!(
            versions = done.with_lease,
            "versions attached to an etcd lease"
        );
    }
    Ok(meta.consistent_index)
}

/// CRC-32 with Castagnoli's polynomial (reflected), what etcd hashes a snapshot's contents with.
const CRC32C: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32c(crc: u32, bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!crc, |c, b| {
        CRC32C[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// `snapshot status` of an etcd snapshot, as `etcdctl snapshot status` prints it: a CRC-32C of
/// every bucket's name and every key and value in it, the newest revision in `key`, the number
/// of elements of every bucket, and the database's size (its pages, the SHA-256 not counted).
pub fn status(file: &Path) -> Result<Status> {
    let bolt = Bbolt::open(file)?;
    let mut hash = 0u32;
    let mut total_keys = 0u64;
    let mut revision = 0i64;
    for name in bolt.bucket_names()? {
        let Some(bucket) = bolt.bucket(&name)? else {
            continue;
        };
        hash = crc32c(hash, &name);
        let is_key = name == b"key";
        bolt.for_each(&bucket, &mut |k, e| {
            hash = crc32c(hash, k);
            if let Entry::Value(v) = e {
                hash = crc32c(hash, v);
            }
            if is_key && let Some((main, _, _)) = revision_of(k) {
                revision = main;
            }
            total_keys += 1;
            Ok(())
        })?;
    }
    Ok(Status {
        hash,
        revision,
        total_keys,
        total_size: bolt.db_size(),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn encode(kv: &KeyValue) -> Vec<u8> {
        let mut out = Vec::new();
        let var = |out: &mut Vec<u8>, mut v: u64| loop {
            if v < 0x80 {
                out.push(v as u8);
                break;
            }
            out.push((v as u8) | 0x80);
            v >>= 7;
        };
        for (field, bytes) in [(1u64, &kv.key), (5, &kv.value)] {
            var(&mut out, field << 3 | 2);
            var(&mut out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        for (field, n) in [
            (2u64, kv.create_revision),
            (3, kv.mod_revision),
            (4, kv.version),
            (6, kv.lease),
        ] {
            var(&mut out, field << 3);
            var(&mut out, n as u64);
        }
        out
    }

    #[test]
    fn key_values_and_revisions_decode_and_damage_is_an_error() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: vec![7; 300],
            create_revision: 2,
            mod_revision: 1 << 40,
            version: 3,
            lease: -1,
        };
        let bytes = encode(&kv);
        assert_eq!(decode_kv(&bytes).unwrap(), kv);
        for cut in 0..bytes.len() {
            // Every prefix either decodes (ends on a field's end) or is an error, never a panic.
            let _ = decode_kv(&bytes[..cut]);
        }
        assert!(decode_kv(&[0x0a, 0x05, b'a']).unwrap_err().contains("past"));
        assert!(decode_kv(&[0x10, 0xff]).is_err());
        assert!(decode_kv(&[0x0b]).unwrap_err().contains("wire type"));

        let mut rev = [0u8; 18];
        rev[..8].copy_from_slice(&5i64.to_be_bytes());
        rev[8] = b'_';
        rev[9..17].copy_from_slice(&1i64.to_be_bytes());
        rev[17] = b't';
        assert_eq!(revision_of(&rev[..17]), Some((5, 1, false)));
        assert_eq!(revision_of(&rev), Some((5, 1, true)));
        assert_eq!(revision_of(&rev[..16]), None);
        rev[8] = b'-';
        assert_eq!(revision_of(&rev), None);
    }

    fn rev_bytes(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
        let mut b = [&main.to_be_bytes()[..], b"_", &sub.to_be_bytes()].concat();
        if tombstone {
            b.push(b't');
        }
        b
    }

    /// An etcd-like snapshot: `rows` in bucket `key` (leaves of 4 under a branch), `meta` and
    /// one member.
    fn etcd_file(rows: &[(i64, i64, bool, KeyValue)], meta: &[(&str, Vec<u8>)]) -> Vec<u8> {
        use crate::storage::bbolt::testing::*;
        let mut b = Builder::new(4096);
        let mut leaves = Vec::new();
        for chunk in rows.chunks(4) {
            let elems: Vec<_> = chunk
                .iter()
                .map(|(main, sub, t, kv)| (rev_bytes(*main, *sub, *t), Elem::Value(encode(kv))))
                .collect();
            leaves.push((elems[0].0.clone(), b.leaf(&elems)));
        }
        let keys = b.branch(&leaves);
        let meta: Vec<_> = meta
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Elem::Value(v.clone())))
            .collect();
        let member = br#"{"id":1,"peerURLs":["http://a:2380"],"name":"old"}"#.to_vec();
        let root = b.leaf(&[
            (b"key".to_vec(), Elem::Bucket(keys)),
            (
                b"members".to_vec(),
                Elem::Inline(leaf_bytes(&[(b"1".to_vec(), Elem::Value(member))])),
            ),
            (b"meta".to_vec(), Elem::Inline(leaf_bytes(&meta))),
        ]);
        b.finish(root)
    }

    fn kv(key: &str, value: &str, create: i64, rev: i64, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: rev,
            version,
            lease: 0,
        }
    }

    /// a@2, b@3, a@4, del a@5, (c@6, b@6.1), a@7; compacted at 4, whose pass did not finish.
    pub(in crate::snapshot_cmd) fn sample() -> Vec<u8> {
        let tomb = |key: &str| KeyValue {
            key: key.into(),
            ..Default::default()
        };
        etcd_file(
            &[
                (2, 0, false, kv("a", "1", 2, 2, 1)),
                (3, 0, false, kv("b", "1", 3, 3, 1)),
                (4, 0, false, kv("a", "2", 2, 4, 2)),
                (5, 0, true, tomb("a")),
                (6, 0, false, kv("c", "1", 6, 6, 1)),
                (6, 1, false, kv("b", "2", 3, 6, 2)),
                (7, 0, false, kv("a", "3", 7, 7, 1)),
            ],
            &[
                ("consistent_index", 42u64.to_be_bytes().to_vec()),
                ("finishedCompactRev", rev_bytes(2, 0, false)),
                ("scheduledCompactRev", rev_bytes(4, 0, false)),
            ],
        )
    }

    #[test]
    fn an_etcd_history_is_filled_in_with_its_compaction_and_applied_index() {
        use crate::mvcc::{RangeRequest, View};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd.db");
        std::fs::write(&file, sample()).unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        assert_eq!(fill(&file, &db).unwrap(), 42);
        let view = View::snapshot(&db);
        assert_eq!(
            (
                view.current_revision().unwrap(),
                view.compact_revision().unwrap()
            ),
            (7, 4)
        );
        let get = |key: &str, rev: i64| {
            view.range(&RangeRequest {
                key: key.into(),
                revision: rev,
                ..Default::default()
            })
            .map(|r| r.kvs)
        };
        assert_eq!(get("a", 4).unwrap(), vec![kv("a", "2", 2, 4, 2)]);
        assert_eq!(get("a", 5).unwrap(), vec![]);
        assert_eq!(get("a", 0).unwrap(), vec![kv("a", "3", 7, 7, 1)]);
        assert_eq!(get("b", 6).unwrap(), vec![kv("b", "2", 3, 6, 2)]);
        assert!(get("a", 3).is_err(), "compacted");
        // etcd's pass stopped short of 4: ours is left to run it.
        assert_eq!(db.compaction_progress().unwrap(), (None, None));
        assert_eq!(db.version_count().unwrap(), 7);
        let s = status(&file).unwrap();
        assert_eq!((s.revision, s.total_keys), (7, 7 + 1 + 3));
    }

    #[test]
    fn any_damage_to_an_etcd_snapshot_is_an_error_or_harmless_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd.db");
        let good = sample();
        let body = good.len() - 32;
        let pages = body / 4096;
        let mut refused = 0;
        for round in 0..200usize {
            // A bit of the headers, elements and data at the start of a page (the rest of each
            // is unused), hashed again so that only the format's own checks can find it.
            let at = (round % pages) * 4096 + (round * 7919) % 200;
            let damaged = crate::storage::bbolt::testing::with_sha256({
                let mut b = good[..body].to_vec();
                b[at] ^= 1 << (round % 8);
                b
            });
            std::fs::write(&file, &damaged).unwrap();
            let into = dir.path().join(format!("db{round}"));
            let db = Db::open(&into).unwrap();
            if let Err(e) = fill(&file, &db) {
                refused += 1;
                let e = e.to_string();
                assert!(e.contains("etcd.db") && e.lines().count() == 1, "{e}");
            }
            let _ = status(&file);
            drop(db);
            std::fs::remove_dir_all(&into).unwrap();
        }
        assert!(refused > 50, "only {refused} of 200 damaged files refused");
    }

    #[test]
    fn crc32c_is_castagnolis() {
        // The check value of CRC-32C, and sums of pieces equal the sum of the whole.
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
    }
}
