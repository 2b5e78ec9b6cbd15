//! Tests of the power-loss layer, on its own and under a real member.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Keep, LossyFs, Report};
use crate::support::addresses::LOSSY_MEMBER;
use crate::support::loop_fs::LoopFs;
use crate::support::{unstarted_http_member, wait_gone, wait_healthy};

/// `<dir>/backing` mounted on `<dir>/mnt`.
fn mounted(dir: &Path) -> (LossyFs, PathBuf, PathBuf) {
    let backing = dir.join("backing");
    let mnt = dir.join("mnt");
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let fs = LossyFs::mount(&backing, &mnt)
        .unwrap_or_else(|e| panic!("mounting the lossy filesystem on {}: {e}", mnt.display()));
    let mnt = fs.mountpoint().to_path_buf();
    (fs, backing, mnt)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn unsynced(path: &Path, data: &[u8]) {
    File::create(path).unwrap().write_all(data).unwrap();
}

#[test]
fn lossy_fs_loses_what_was_not_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, backing, m) = mounted(dir.path());
    let a = pattern(1, 10_000);
    synced(&m.join("a"), &a);
    unsynced(&m.join("b"), b"never synced");
    {
        // Overwrites part of a synced file, and extends it.
        let f = OpenOptions::new().write(true).open(m.join("a")).unwrap();
        f.write_all_at(&[b'X'; 50], 100).unwrap();
        f.write_all_at(&[b'Y'; 3000], 10_000).unwrap();
    }
    File::create(m.join("empty")).unwrap();
    let c = pattern(2, 4096);
    synced(&m.join("c"), &c);
    fs::rename(m.join("c"), m.join("c2")).unwrap();
    unsynced(&m.join("d"), b"renamed before any fsync");
    fs::rename(m.join("d"), m.join("d2")).unwrap();
    let e = pattern(3, 5000);
    synced(&m.join("e"), &e);
    OpenOptions::new()
        .write(true)
        .open(m.join("e"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    synced(&m.join("w"), &[b'w'; 100]);
    {
        // The WAL's preallocation, not synced.
        let f = OpenOptions::new().write(true).open(m.join("w")).unwrap();
        nix::fcntl::posix_fallocate(&f, 0, 1 << 20).unwrap();
    }
    // The kernel has read (and may cache) what is about to be lost.
    assert_eq!(fs::read(m.join("a")).unwrap()[100], b'X');
    assert_eq!(fs::metadata(m.join("w")).unwrap().len(), 1 << 20);

    let report = fs.power_loss(Keep::Nothing).unwrap();
    eprintln!("{report}");
    assert_eq!(fs::read(m.join("a")).unwrap(), a);
    assert_eq!(fs::metadata(m.join("a")).unwrap().len(), a.len() as u64);
    assert_eq!(fs::read(backing.join("a")).unwrap(), a);
    assert_eq!(fs::read(m.join("b")).unwrap(), b"");
    assert_eq!(fs::read(m.join("empty")).unwrap(), b"");
    assert_eq!(fs::read(m.join("c2")).unwrap(), c);
    assert_eq!(fs::read(m.join("d2")).unwrap(), b"");
    assert_eq!(fs::read(m.join("e")).unwrap(), e);
    assert_eq!(fs::read(m.join("w")).unwrap(), [b'w'; 100]);
    // a (2 writes), b, d, e (a truncate), w (a fallocate). The kernel splits a write that
    // crosses a page, so changes are not counted exactly.
    assert_eq!(
        (report.files, report.files_rolled_back, report.changes_kept),
        (5, 5, 0)
    );
    assert!(report.changes_dropped >= 6, "{report:?}");
    let mut paths = report.paths.clone();
    paths.sort();
    // d by the name it had when written.
    assert_eq!(paths, ["a", "b", "d", "e", "w"].map(PathBuf::from));
    assert_eq!(
        report.bytes_dropped,
        50 + 3000 + 12 + 24 + 4000 + ((1 << 20) - 100)
    );
    assert_eq!(fs.power_loss(Keep::Nothing).unwrap(), Report::default());
}

enum Op {
    Write(u64, Vec<u8>),
    Truncate(u64),
}

fn apply(content: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(at, data) => {
            let end = *at as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*at as usize..end].copy_from_slice(data);
        }
        Op::Truncate(len) => content.resize(*len as usize, 0),
    }
}

#[test]
fn lossy_fs_keeps_a_prefix_of_unsynced_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, _backing, m) = mounted(dir.path());
    let base = pattern(9, 300);
    // Appends, an overwrite of synced and unsynced bytes, a cut, a hole and a regrowth: each
    // prefix leaves a different file.
    let ops = vec![
        Op::Write(300, pattern(10, 100)),
        Op::Write(400, pattern(11, 100)),
        Op::Write(250, vec![b'Z'; 200]),
        Op::Write(500, pattern(12, 100)),
        Op::Truncate(350),
        Op::Write(700, pattern(13, 10)),
        Op::Truncate(100),
        Op::Write(100, pattern(14, 900)),
    ];
    let mut states = vec![base.clone()];
    for op in &ops {
        let mut next = states.last().unwrap().clone();
        apply(&mut next, op);
        states.push(next);
    }
    let files = 12;
    for i in 0..files {
        let path = m.join(format!("p{i}"));
        synced(&path, &base);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        for op in &ops {
            match op {
                Op::Write(at, data) => f.write_all_at(data, *at).unwrap(),
                Op::Truncate(len) => f.set_len(*len).unwrap(),
            }
        }
    }
    let report = fs.power_loss(Keep::Prefix(42)).unwrap();
    eprintln!("{report}");
    let mut kept = Vec::new();
    for i in 0..files {
        let content = fs::read(m.join(format!("p{i}"))).unwrap();
        let k = states
            .iter()
            .position(|s| *s == content)
            .unwrap_or_else(|| {
                panic!("p{i} ({} bytes) is no prefix of its history", content.len())
            });
        kept.push(k);
    }
    eprintln!("changes kept per file: {kept:?}");
    assert_eq!(report.files, files);
    assert_eq!(report.changes_kept, kept.iter().sum::<usize>());
    assert_eq!(
        report.changes_dropped,
        files * ops.len() - report.changes_kept
    );
    assert!(
        kept.iter().any(|&k| k > 0 && k < ops.len()),
        "some file should have kept a strict prefix: {kept:?}"
    );
    // The same seed over the same history keeps the same prefixes.
    for i in 0..files {
        let path = m.join(format!("p{i}"));
        synced(&path, &base);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        for op in &ops {
            match op {
                Op::Write(at, data) => f.write_all_at(data, *at).unwrap(),
                Op::Truncate(len) => f.set_len(*len).unwrap(),
            }
        }
    }
    assert_eq!(
        fs.power_loss(Keep::Prefix(42)).unwrap().changes_kept,
        report.changes_kept
    );
}

#[test]
fn lossy_fs_tears_an_unsynced_write_at_a_block_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, _backing, m) = mounted(dir.path());
    let base = pattern(20, 4096);
    let new = pattern(21, 40_000);
    let files = 16;
    for i in 0..files {
        let path = m.join(format!("t{i}"));
        synced(&path, &base);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&new, 4096).unwrap();
    }
    let report = fs.power_loss(Keep::Prefix(5)).unwrap();
    eprintln!("{report}");
    let mut cuts = Vec::new();
    for i in 0..files {
        let content = fs::read(m.join(format!("t{i}"))).unwrap();
        assert_eq!(content[..4096], base[..], "t{i}: the synced block");
        let c = content.len() - 4096;
        assert_eq!(content[4096..], new[..c], "t{i}");
        assert!(
            c % 4096 == 0 || c == new.len(),
            "t{i} torn inside a block: {c}"
        );
        cuts.push(c);
    }
    eprintln!("bytes of the write kept per file: {cuts:?}");
    assert!(report.torn > 0, "{report}");
    assert_eq!(
        report.torn,
        cuts.iter().filter(|&&c| c > 0 && c < new.len()).count()
    );
}

#[test]
fn lossy_fs_passes_sockets_locks_links_and_listings_through() {
    let dir = tempfile::tempdir().unwrap();
    let (_fs, backing, m) = mounted(dir.path());
    let sock = m.join("s.sock");
    for round in 0..2 {
        // As consensus does on every start: remove the stale socket, bind again.
        let _ = fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        assert!(
            fs::metadata(backing.join("s.sock"))
                .unwrap()
                .file_type()
                .is_socket()
        );
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello", "round {round}");
        echo.join().unwrap();
    }

    // RocksDB's LOCK (fcntl) and consensus.lock (flock) stay in the kernel.
    use std::os::fd::AsRawFd;
    let l1 = File::create(m.join("LOCK")).unwrap();
    let l2 = File::open(m.join("LOCK")).unwrap();
    assert_eq!(
        unsafe { libc::flock(l1.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    assert_ne!(
        unsafe { libc::flock(l2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );

    fs::create_dir(m.join("sub")).unwrap();
    synced(&m.join("sub/f"), b"linked");
    fs::hard_link(m.join("sub/f"), m.join("g")).unwrap();
    std::os::unix::fs::symlink("sub/f", m.join("h")).unwrap();
    assert_eq!(fs::read_link(m.join("h")).unwrap(), Path::new("sub/f"));
    assert_eq!(fs::read(m.join("h")).unwrap(), b"linked");
    assert_eq!(fs::read(m.join("g")).unwrap(), b"linked");
    let mut names: Vec<String> = fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["LOCK", "g", "h", "s.sock", "sub"]);
    File::open(&m).unwrap().sync_all().unwrap();
    fs::remove_file(m.join("sub/f")).unwrap();
    fs::remove_dir(m.join("sub")).unwrap();
    // Unsynced changes of a file with another link left survive the unlink of one name.
    OpenOptions::new()
        .append(true)
        .open(m.join("g"))
        .unwrap()
        .write_all(b" and appended")
        .unwrap();
    assert_eq!(fs::read(m.join("g")).unwrap(), b"linked and appended");

    // Another user's files are that user's, and root's files are not that user's to write.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.join("shared")).unwrap();
    fs::set_permissions(m.join("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    let nobody = 65534;
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            "echo hi > shared/mine && ! (echo no > LOCK) 2>/dev/null",
        ])
        .current_dir(&m)
        .uid(nobody)
        .gid(nobody)
        .status()
        .unwrap();
    assert!(status.success());
    let mine = fs::metadata(m.join("shared/mine")).unwrap();
    assert_eq!((mine.uid(), mine.gid()), (nobody, nobody));
    assert_eq!(
        fs::metadata(backing.join("shared/mine")).unwrap().uid(),
        nobody
    );
    assert_eq!(fs::read(m.join("LOCK")).unwrap(), b"");
}

fn statvfs(path: &Path) -> libc::statvfs {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, 0);
    st
}

#[test]
fn lossy_fs_passes_enospc_through_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = LoopFs::new(&dir.path().join("disk"), 32).expect("a loop filesystem");
    let mnt = dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let fs = LossyFs::mount(disk.mountpoint(), &mnt).expect("mounting the lossy filesystem");
    let st = statvfs(&mnt);
    let size = st.f_blocks * st.f_frsize;
    assert!(
        size > 16 << 20 && size <= 32 << 20,
        "statfs says {size} bytes"
    );

    let chunk = vec![7u8; 1 << 20];
    let mut f = File::create(mnt.join("fill")).unwrap();
    let mut full = None;
    for _ in 0..64 {
        if let Err(e) = f.write_all(&chunk) {
            full = Some(e);
            break;
        }
    }
    let full = full
        .or_else(|| f.sync_all().err())
        .expect("32 MiB should fill up");
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    drop(f);
    fs::remove_file(mnt.join("fill")).unwrap();
    // The kernel releases the closed file asynchronously: its space comes back shortly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = File::create(mnt.join("after"))
            .and_then(|mut f| f.write_all(&chunk).and_then(|()| f.sync_all()));
        match r {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("writing after freeing space: {e}"),
        }
    }
    assert_eq!(fs::read(mnt.join("after")).unwrap(), chunk);
    drop(fs);
    drop(disk);
}

fn all_keys(m: &crate::support::Member) -> HashMap<String, String> {
    let out = m.ctl_ok(&["get", "k", "--prefix"]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv.get(1).unwrap_or(&"").to_string()))
        .collect()
}

/// How a round of the member test ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// kill -9 after sequential puts.
    Kill,
    /// A compaction first, which flushes RocksDB (new SSTs and MANIFEST), then more puts.
    KillAfterFlush,
    /// kill -9 while puts are in flight.
    KillDuringPuts,
    /// kill -9 while puts wait in fsyncs that never finish (`LossyFs::hold_syncs`): the WAL has
    /// an unsynced tail nobody was answered for.
    KillDuringSyncs,
    /// SIGTERM, which flushes RocksDB before the processes exit.
    CleanStop,
}

#[test]
fn lossy_fs_under_a_member_keeps_every_acknowledged_put() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let data = dir.path().join("lossy-data");
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir_all(&data).unwrap();
    // Mounted before the member is made, so that the member (and its processes) goes first.
    let fs = LossyFs::mount(&backing, &data).expect("mounting the lossy filesystem");
    let host = LOSSY_MEMBER;
    // The raft log compacted every few entries, so that every power loss also hits a member
    // whose log starts at a recorded point (durable only through RocksDB's flush).
    let mut m = unstarted_http_member(
        dir.path(),
        "lossy",
        host,
        &format!("lossy=http://{host}:2380"),
        "ETCD_SNAPSHOT_COUNT=\"8\"\nETCD_SNAPSHOT_CATCHUP_ENTRIES=\"4\"\n",
    );
    assert_eq!(m.data_dir, data);
    m.start();
    wait_healthy(&m, Duration::from_secs(60));
    let mut acked = HashMap::new();
    let rounds = [
        (Ending::Kill, Keep::Prefix(7)),
        (Ending::KillAfterFlush, Keep::Nothing),
        (Ending::KillDuringPuts, Keep::Prefix(1234)),
        (Ending::KillDuringPuts, Keep::Nothing),
        (Ending::CleanStop, Keep::Nothing),
        (Ending::KillAfterFlush, Keep::Prefix(99)),
        (Ending::KillDuringSyncs, Keep::Prefix(3)),
        (Ending::KillDuringSyncs, Keep::Nothing),
    ];
    for (round, (ending, keep)) in rounds.into_iter().enumerate() {
        let value = |i: usize| format!("v{round}-{i}-{}", "x".repeat(i % 40 * 37));
        for i in 0..20 {
            let k = format!("k{round}-{i:02}");
            m.ctl_ok(&["put", &k, &value(i)]);
            acked.insert(k, value(i));
        }
        if let Ending::KillAfterFlush = ending {
            let rev = m.status().expect("status")["header"]["revision"]
                .as_u64()
                .expect("a revision");
            m.ctl_ok(&["compaction", &(rev - 5).to_string(), "--physical"]);
            for i in 20..30 {
                let k = format!("k{round}-{i:02}");
                m.ctl_ok(&["put", &k, &value(i)]);
                acked.insert(k, value(i));
            }
        }
        let pids: Vec<i32> = m.pids().into_values().collect();
        match ending {
            Ending::Kill | Ending::KillAfterFlush => m.kill9_all(),
            Ending::KillDuringPuts | Ending::KillDuringSyncs => {
                use std::sync::Arc;
                use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
                let stop = Arc::new(AtomicBool::new(false));
                let done = Arc::new(AtomicUsize::new(0));
                let writers: Vec<_> = (0..2)
                    .map(|w| {
                        let (endpoint, stop, done) =
                            (m.endpoint.clone(), stop.clone(), done.clone());
                        std::thread::spawn(move || {
                            let mut acked = Vec::new();
                            let mut i = 100 + w * 1000;
                            while !stop.load(Ordering::Relaxed) {
                                let (k, v) = (format!("k{round}-{i}"), format!("w{w}-{i}"));
                                if crate::support::etcdctl(&endpoint, &[], &["put", &k, &v])
                                    .status
                                    .success()
                                {
                                    acked.push((k, v));
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                                i += 1;
                            }
                            acked
                        })
                    })
                    .collect();
                // Killed in the middle of the puts, however slow a loaded machine makes them.
                let deadline = Instant::now() + Duration::from_secs(30);
                while done.load(Ordering::Relaxed) < 20 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Ending::KillDuringSyncs = ending {
                    fs.hold_syncs();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while fs.held_syncs() == 0 {
                        assert!(
                            Instant::now() < deadline,
                            "round {round}: no fsync came to hold"
                        );
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    // Let a few more writes pile up behind the held sync.
                    std::thread::sleep(Duration::from_millis(200));
                }
                m.kill9_all();
                fs.release_syncs();
                stop.store(true, Ordering::Relaxed);
                for w in writers {
                    acked.extend(w.join().unwrap());
                }
                assert!(
                    done.load(Ordering::Relaxed) >= 20,
                    "round {round}: fewer than 20 puts went through in 30 s"
                );
            }
            Ending::CleanStop => m.stop(),
        }
        wait_gone(&pids);
        let report = fs.power_loss(keep).expect("rolling back");
        eprintln!("round {round} ({ending:?}, {keep:?}): {report}");
        if let (Ending::KillDuringSyncs, Keep::Nothing) = (ending, keep) {
            // What this round is for: a WAL tail that never became durable.
            assert!(
                report.paths.iter().any(|p| p.starts_with("wal")),
                "round {round}: the WAL lost nothing: {report}"
            );
        }
        m.start();
        wait_healthy(&m, Duration::from_secs(60));
        let got = all_keys(&m);
        for (k, v) in &acked {
            assert_eq!(
                got.get(k),
                Some(v),
                "round {round}: acknowledged put of {k} lost after {report}\n{}",
                m.log_tail()
            );
        }
    }
    assert!(
        m.logged("raft log compacted"),
        "the log was never compacted, so the rounds proved nothing about it:\n{}",
        m.log_tail()
    );
    m.stop();
    let ops = fs.ops();
    eprintln!("requests served: {ops:?}");
    // The WAL's preallocation and syncs went through the layer.
    for op in ["fallocate", "fsync", "write", "mknod", "rename"] {
        assert!(ops.get(op).copied().unwrap_or(0) > 0, "no {op} in {ops:?}");
    }
}
