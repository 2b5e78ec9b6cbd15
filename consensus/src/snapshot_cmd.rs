//! `consensus snapshot status FILE`: what `etcdutl snapshot status` prints of a snapshot that
//! `etcdctl snapshot save` fetched, from a member of ours (see [`crate::storage::image`]) or
//! from a real etcd (see [`etcd`]); and `consensus snapshot restore FILE ...`, which makes a data
//! dir of a new cluster from either, as `etcdutl snapshot restore` does ([`restore`]).
//!
//! Of an image of ours, the hash is its HashKV at its revision (what `etcdctl endpoint hashkv
//! --rev` gives on a member at that revision, not etcd's CRC over bbolt pages); total keys
//! counts every stored version and tombstone; the size is the file's. Of an etcd snapshot, all
//! four are etcd's own (see [`etcd::status`]).

mod etcd;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mvcc::View;
use crate::storage::Db;
use crate::storage::image;

/// What `snapshot status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
}

/// Reads and checks the snapshot in `file`: an image of ours (unpacked into a scratch directory,
/// removed after), or an etcd snapshot (read in place).
pub fn status(file: &Path) -> Result<Status> {
    let name = file.display().to_string();
    let f = File::open(file).map_err(|e| Error::io(format!("opening {name}"), e))?;
    if source_of(&f, &name)? == Source::Etcd {
        return etcd::status(file);
    }
    let total_size = f
        .metadata()
        .map_err(|e| Error::io(format!("stat {name}"), e))?
        .len();
    let scratch = Scratch(
        std::env::temp_dir().join(format!("etcd-rs-snapshot-status-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&scratch.0);
    image::unpack(f, &name, &scratch.0)?;
    let db = Db::open(&scratch.0)?;
    let view = View::snapshot(&db);
    let (hash, _, revision) = view
        .hash_kv_at(0)
        .map_err(|e| Error::Startup(format!("{name}: hashing its key space: {}", e.message)))?;
    let total_keys = db.version_count()?;
    Ok(Status {
        hash,
        revision,
        total_keys,
        total_size,
    })
}

/// Who wrote a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// An image of ours ([`image`]).
    Ours,
    /// A real etcd's bbolt database ([`etcd`]).
    Etcd,
}

/// Tells the two kinds apart by their first bytes: our magic, or bbolt's first meta page.
fn source_of(f: &File, name: &str) -> Result<Source> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 24];
    let mut got = 0;
    while got < head.len() {
        match f.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading {name}"), e)),
        }
    }
    if head.starts_with(image::MAGIC) {
        Ok(Source::Ours)
    } else if got == head.len() && head[16..20] == etcd::BBOLT_MAGIC {
        Ok(Source::Etcd)
    } else {
        Err(Error::Startup(format!(
            "{name}: not a snapshot: its first bytes are neither ours (\"etcd-rs snapshot\") nor \
             an etcd (bbolt) database's"
        )))
    }
}

/// What `snapshot restore` is asked for besides the member's configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bump {
    /// etcd 3.6's `--bump-revision`: how far the newest revision moves forward.
    pub revision: u64,
    /// `--mark-compacted`: everything before the bumped revision is compacted, so that watchers
    /// and caches (Kubernetes') that knew the old cluster start over instead of missing changes.
    pub mark_compacted: bool,
}

/// Makes `config.data_dir` (which must not exist, or be empty) the data dir of member
/// `config.name` of the new cluster `config.initial_cluster` (with its token), holding the
/// state in the snapshot `file` (an image of ours, or a real etcd's): the key space with its
/// history and compaction revision, new member and cluster IDs, the new members, and a raft log
/// that starts after the snapshot's applied index. Every member of the new cluster is restored
/// from the same file. Returns the new identity's member ID. Nothing is left behind on an error.
pub fn restore(file: &Path, config: &crate::config::Config, bump: Bump) -> Result<u64> {
    if bump.revision > 0 && !bump.mark_compacted {
        return Err(Error::Config(
            "--mark-compacted required if --bump-revision > 0".into(),
        ));
    }
    if bump.revision == 0 && bump.mark_compacted {
        return Err(Error::Config(
            "--mark-compacted is only allowed with --bump-revision > 0".into(),
        ));
    }
    let dir = &config.data_dir;
    let existed = dir.exists();
    if existed && std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_some()) {
        return Err(Error::Config(format!(
            "data-dir {:?} not empty or could not be read",
            dir.display().to_string()
        )));
    }
    let name = file.display().to_string();
    let f = File::open(file).map_err(|e| Error::io(format!("opening {name}"), e))?;
    let staged = dir.join(STAGED_DB);
    let result = (|| {
        let source = source_of(&f, &name)?;
        let new = NewCluster::of(config)?;
        let (db, applied) = match source {
            Source::Ours => fill_from_image(f, &name, &staged)?,
            Source::Etcd => fill_from_etcd(file, &staged)?,
        };
        finish(db, applied, &new, dir, bump)
    })();
    if result.is_err() {
        if existed {
            for part in [STAGED_DB, "db", "wal"] {
                let _ = std::fs::remove_dir_all(dir.join(part));
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result
}

/// Where a restore builds the database: renamed to `db` last, so that a restore killed half-way
/// never leaves a `db` a member would start from with half a key space.
const STAGED_DB: &str = "db.restoring";

/// The new cluster of a restore: its members from `--initial-cluster`, this member's identity.
struct NewCluster {
    members: Vec<crate::cluster::MemberInfo>,
    identity: crate::cluster::Identity,
}

impl NewCluster {
    fn of(config: &crate::config::Config) -> Result<NewCluster> {
        let (members, identity) = crate::cluster::new_cluster(config)?;
        Ok(NewCluster { members, identity })
    }
}

/// An image of ours: RocksDB's own files, whose applied index is the old cluster's.
fn fill_from_image(f: File, name: &str, into: &Path) -> Result<(Arc<Db>, u64)> {
    image::unpack(f, name, into)?;
    let db = Db::open(into)?;
    let applied = db.applied_index()?;
    Ok((db, applied))
}

/// A real etcd's snapshot: its history written as our apply writes it. etcd's applied index
/// (`consistent_index`) is the old cluster's, as an image's is: see [`finish`].
fn fill_from_etcd(file: &Path, into: &Path) -> Result<(Arc<Db>, u64)> {
    let db = Db::open(into)?;
    let applied = etcd::fill(file, &db)?;
    Ok((db, applied))
}

/// What every restore does once `db` (in [`STAGED_DB`]) holds the snapshot's key space: the
/// old members out, the new ones and this member's identity in, a raft log of the new cluster,
/// the bump if asked for; then the WAL, and the database moved to `db`.
///
/// The applied index is the old cluster's (an image's, or etcd's `consistent_index`): the new
/// cluster's log starts right after it, at term 1, with the new members as voters, as if a raft
/// snapshot had been installed there. The number means nothing else to the new cluster (its
/// WAL is new, no old entry is ever replayed); what matters is that every member restored from
/// the same file starts its log at the same index, which each derives from the file alone.
fn finish(db: Arc<Db>, applied: u64, new: &NewCluster, dir: &Path, bump: Bump) -> Result<u64> {
    use crate::cluster;
    use crate::storage::schema::{Cf, META_MEMBER_PREFIX, META_SNAPSHOT_INSTALLED};
    use raft::eraftpb::{HardState, SnapshotMetadata};

    let view = View::snapshot(&db);
    let (revision, compacted) = (view.current_revision()?, view.compact_revision()?);
    drop(view);
    let mut batch = db.batch();
    // An image's members are the old cluster's (their names included): the new cluster's are
    // --initial-cluster's, and each member publishes its name again when it starts.
    for old in cluster::load_members(&db)? {
        batch.delete(
            Cf::Meta,
            [META_MEMBER_PREFIX, &old.id.to_be_bytes()].concat(),
        );
    }
    for m in &new.members {
        batch.put_member(m.id, &cluster::encode_member(m));
    }
    batch.put_identity(&cluster::encode_identity(&new.identity));
    batch.put_applied(applied);
    let mut start = SnapshotMetadata {
        index: applied,
        term: 1,
        ..Default::default()
    };
    start
        .mut_conf_state()
        .set_voters(new.members.iter().map(|m| m.id).collect());
    batch.put_log_start(&start);
    batch.put_conf_state(start.get_conf_state());
    batch.put(Cf::Meta, META_SNAPSHOT_INSTALLED, applied.to_be_bytes());
    if bump.revision > 0 {
        let bumped = revision + bump.revision as i64;
        batch.put_revisions(
            bumped,
            if bump.mark_compacted {
                bumped
            } else {
                compacted
            },
        );
        if bump.mark_compacted {
            // The background pass drops what the compaction made garbage, from the start.
            batch.put_compaction_cursor(bumped, b"");
        }
    }
    db.write(batch, true)?;
    db.flush_applied()?;
    drop(db);
    let mut wal = crate::storage::wal::Wal::open(&dir.join("wal"))?;
    wal.set_hard_state(&HardState {
        term: 1,
        vote: 0,
        commit: applied,
        ..Default::default()
    });
    wal.write(true)?;
    drop(wal);
    let (staged, db_dir) = (dir.join(STAGED_DB), dir.join("db"));
    std::fs::rename(&staged, &db_dir).map_err(|e| {
        Error::io(
            format!("renaming {} to {}", staged.display(), db_dir.display()),
            e,
        )
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("chmod 0700 {}", dir.display()), e))?;
    Ok(new.identity.member_id)
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sizes as etcd prints them (go-humanize's `Bytes`: powers of 1000, one decimal below 10).
pub fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(SIZES.len() - 1);
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", SIZES[e])
    } else {
        format!("{val:.0} {}", SIZES[e])
    }
}

/// The status in etcdctl's `-w` formats: `simple` (the default), `table` or `json`.
pub fn render(s: &Status, format: &str) -> std::result::Result<String, String> {
    let size = human_bytes(s.total_size);
    match format {
        "simple" => Ok(format!(
            "{:x}, {}, {}, {size}\n",
            s.hash, s.revision, s.total_keys
        )),
        "json" => Ok(format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_keys, s.total_size
        )),
        "table" => {
            let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let row = [
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_keys.to_string(),
                size,
            ];
            let widths: Vec<usize> = head
                .iter()
                .zip(&row)
                .map(|(h, r)| h.len().max(r.len()))
                .collect();
            let line: String = widths
                .iter()
                .map(|w| format!("+{}", "-".repeat(w + 2)))
                .collect::<String>()
                + "+\n";
            // As etcdctl's table: headings centred, values to the right.
            let heads: String = head
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("| {c:^w$} "))
                .collect::<String>()
                + "|\n";
            let values: String = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("| {c:>w$} "))
                .collect::<String>()
                + "|\n";
            Ok(format!("{line}{heads}{line}{values}{line}"))
        }
        other => Err(format!(
            "--write-out {other:?} is not one of simple, table, json"
        )),
    }
}

const USAGE: &str = "usage: consensus snapshot status FILE [-w simple|table|json]\n       \
consensus snapshot restore FILE --name NAME --initial-cluster NAME=URL,... \
[--initial-cluster-token TOKEN] [--initial-advertise-peer-urls URL,...] [--data-dir DIR] \
[--bump-revision N --mark-compacted]";

/// `snapshot restore FILE` and its flags: etcd's own member flags (read as a start reads
/// them) and the restore's.
fn restore_main(rest: &[String]) -> std::result::Result<String, String> {
    let mut file = None;
    let mut bump = Bump::default();
    let mut member_flags = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        match flag.trim_start_matches('-') {
            "bump-revision" => {
                let v = match inline {
                    Some(v) => v,
                    None => it.next().cloned().ok_or("--bump-revision needs a number")?,
                };
                bump.revision = v
                    .parse()
                    .map_err(|_| format!("--bump-revision {v:?} is not a non-negative number"))?;
            }
            "mark-compacted" => {
                bump.mark_compacted = !matches!(inline.as_deref(), Some("false"));
            }
            // Always checked: a snapshot without its SHA-256 is refused (ours and etcd's).
            "skip-hash-check" => {
                return Err("--skip-hash-check is not supported: every snapshot is checked".into());
            }
            _ if a.starts_with('-') => {
                member_flags.push(a.clone());
                if inline.is_none()
                    && let Some(v) = it.next()
                {
                    member_flags.push(v.clone());
                }
            }
            _ => {
                if file.replace(a.clone()).is_some() {
                    return Err(format!("one snapshot file at a time; {USAGE}"));
                }
            }
        }
    }
    let file = file.ok_or_else(|| format!("snapshot restore needs a file; {USAGE}"))?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config =
        crate::config::Config::load(&member_flags, &env, None).map_err(|e| e.to_string())?;
    let id = restore(Path::new(&file), &config, bump).map_err(|e| e.to_string())?;
    Ok(format!(
        "restored snapshot {file} into {} as member {} ({:x}) of a new cluster\n",
        config.data_dir.display(),
        config.name,
        id
    ))
}

/// `consensus snapshot ...`, with the arguments after `snapshot`. Prints its own errors.
pub fn main(args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let fail = |why: String| {
        eprintln!("Error: {why}");
        ExitCode::from(1)
    };
    let Some((cmd, rest)) = args.split_first() else {
        return fail(USAGE.into());
    };
    if cmd == "restore" {
        return match restore_main(rest) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(why) => fail(why),
        };
    }
    if cmd != "status" {
        return fail(format!("unknown snapshot command {cmd:?}; {USAGE}"));
    }
    let mut file = None;
    let mut format = "simple".to_string();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a
            .strip_prefix("--write-out=")
            .or_else(|| a.strip_prefix("-w="))
        {
            format = v.to_string();
        } else if a == "-w" || a == "--write-out" {
            match it.next() {
                Some(v) => format = v.clone(),
                None => return fail(format!("{a} needs a format; {USAGE}")),
            }
        } else if a.starts_with('-') {
            return fail(format!("unknown flag {a}; {USAGE}"));
        } else if file.replace(a.clone()).is_some() {
            return fail(format!("one snapshot file at a time; {USAGE}"));
        }
    }
    let Some(file) = file else {
        return fail(format!("snapshot status needs a file; {USAGE}"));
    };
    match status(Path::new(&file)).map_err(|e| e.to_string()) {
        Ok(s) => match render(&s, &format) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(why) => fail(why),
        },
        Err(why) => fail(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcd_prints_them() {
        for (n, text) in [
            (0, "0 B"),
            (9, "9 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (20_480, "20 kB"),
            (2_097_152, "2.1 MB"),
            (1_073_741_824, "1.1 GB"),
        ] {
            assert_eq!(human_bytes(n), text, "{n}");
        }
    }

    #[test]
    fn status_renders_in_etcdctls_formats() {
        let s = Status {
            hash: 0xfe01cf57,
            revision: 10,
            total_keys: 7,
            total_size: 20_480,
        };
        assert_eq!(render(&s, "simple").unwrap(), "fe01cf57, 10, 7, 20 kB\n");
        assert_eq!(
            render(&s, "json").unwrap(),
            "{\"hash\":4261531479,\"revision\":10,\"totalKey\":7,\"totalSize\":20480}\n"
        );
        let table = render(&s, "table").unwrap();
        assert!(
            table.contains("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |"),
            "{table}"
        );
        assert!(
            table.contains("| fe01cf57 |       10 |          7 |      20 kB |"),
            "{table}"
        );
        assert!(render(&s, "yaml").unwrap_err().contains("yaml"));
    }

    #[test]
    fn an_etcd_snapshot_restores_into_a_data_dir_and_a_damaged_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd.db");
        std::fs::write(&file, etcd::tests::sample()).unwrap();
        let data = dir.path().join("m1.etcd");
        let args: Vec<String> = [
            "--name=m1",
            "--initial-cluster=m1=http://127.0.0.1:2380,m2=http://127.0.0.2:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--data-dir={}", data.display())])
        .collect();
        let config = crate::config::Config::load(&args, &[], None).unwrap();
        let id = restore(&file, &config, Bump::default()).unwrap();
        assert!(!data.join(STAGED_DB).exists());
        let db = Db::open(&data.join("db")).unwrap();
        assert_eq!(db.applied_index().unwrap(), 42, "etcd's consistent_index");
        assert_eq!(db.installed_snapshot().unwrap(), Some(42));
        assert_eq!(
            db.log_start().unwrap().map(|s| (s.index, s.term)),
            Some((42, 1))
        );
        let members = crate::cluster::load_members(&db).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"m1") && names.contains(&"m2"), "{names:?}");
        assert!(members.iter().any(|m| m.id == id));
        let view = View::snapshot(&db);
        assert_eq!(view.current_revision().unwrap(), 7);
        drop(view);
        drop(db);

        let mut bytes = etcd::tests::sample();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        let again = dir.path().join("m2.etcd");
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("m1.etcd", "m2.etcd"))
            .collect();
        let config = crate::config::Config::load(&args, &[], None).unwrap();
        let e = restore(&file, &config, Bump::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("etcd.db") && e.contains("SHA-256"), "{e}");
        assert!(!again.exists(), "nothing left behind");
        std::fs::write(&file, b"neither kind of snapshot, just text........").unwrap();
        let e = restore(&file, &config, Bump::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a snapshot"), "{e}");
    }

    #[test]
    fn status_of_an_image_reads_its_revision_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let mut batch = db.batch();
        batch.put_applied(3);
        batch.put_revisions(3, -1);
        for i in 0..3 {
            let key = format!("k{i}");
            batch.put_version(key.as_bytes(), i + 1, 0, b"", &[0u8; 40]);
        }
        db.write_applied(batch).unwrap();
        let mut img = image::Image::create(&db, dir.path()).unwrap();
        let file = dir.path().join("snap.db");
        let mut bytes = Vec::new();
        loop {
            let c = img.read_chunk(1 << 16).unwrap();
            if c.is_empty() {
                break;
            }
            bytes.extend(c);
        }
        std::fs::write(&file, &bytes).unwrap();
        let s = status(&file).unwrap();
        assert_eq!(
            (s.revision, s.total_keys, s.total_size),
            (3, 3, bytes.len() as u64)
        );
        let again = status(&file).unwrap();
        assert_eq!(s, again, "the hash is a function of the image");
        std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
        let e = status(&file).unwrap_err().to_string();
        assert!(e.contains("snap.db") && e.contains("truncated"), "{e}");
    }
}
