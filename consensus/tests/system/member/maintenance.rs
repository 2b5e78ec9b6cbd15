//! Maintenance: auto-compaction, MoveLeader, HashKV, and compaction and counts over a large key
//! space.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::value_of;
use crate::support::addresses::{
    AUTO_COMPACTION, ETCD_RESTORE, ETCD_RESTORE_SOURCE, HASH_KV, LARGE_KEYSPACE, MOVE_LEADER,
    SNAPSHOT_RESTORE, SNAPSHOT_RESTORE_SOURCE, SNAPSHOT_SAVE,
};
use crate::support::*;

#[test]
fn auto_compaction_forgets_old_revisions() {
    let tmp = tempfile::tempdir().unwrap();
    let host = AUTO_COMPACTION;
    let m = single_http_member(
        tmp.path(),
        "c",
        host,
        "ETCD_AUTO_COMPACTION_MODE=\"periodic\"\nETCD_AUTO_COMPACTION_RETENTION=\"2s\"\n",
    );
    wait_healthy(&m, Duration::from_secs(30));
    m.ctl_ok(&["put", "k", "first"]); // revision 2
    let first = value_of(&m, "k", &["--rev=2"]);
    assert_eq!(first.as_deref(), Some("first"));
    // The first compaction comes one period after start, to the revision seen then.
    eventually(
        Duration::from_secs(15),
        "revision 2 to be compacted",
        || {
            m.ctl_ok(&["put", "k", "later"]);
            let out = m.etcdctl(&["get", "k", "--rev=2"]);
            String::from_utf8_lossy(&out.stderr)
                .contains("required revision has been compacted")
                .then_some(())
        },
    );
    assert_eq!(value_of(&m, "k", &[]).as_deref(), Some("later"));
}

/// `etcdctl move-leader` hands the leadership to the member named, as with etcd; a follower
/// refuses MoveLeader as etcd does, and so does the leader for an ID that is no member.
#[test]
fn move_leader_hands_the_leadership_over() {
    let tmp = tempfile::tempdir().unwrap();
    let members = http_cluster(tmp.path(), "ml", &MOVE_LEADER, "", &[]);
    let leader = leader_index(&members, &[0, 1, 2]);
    let target = (leader + 1) % 3;
    let (from, to) = (
        members[leader].member_id().unwrap(),
        members[target].member_id().unwrap(),
    );
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    let all = endpoints.join(",");
    let out = etcdctl(&all, &[], &["move-leader", &format!("{to:x}")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("Leadership transferred from {from:x} to {to:x}")
    );
    assert_eq!(leader_index(&members, &[0, 1, 2]), target);
    // Still a working cluster under its new leader.
    members[leader].ctl_ok(&["put", "after", "move"]);
    assert!(members[target].ctl_ok(&["get", "after"]).contains("move"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ask = |endpoint: String, id: u64| async move {
            let mut c = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            c.move_leader(id).await.map(drop).map_err(|e| e.to_string())
        };
        let follower = endpoints[leader].clone();
        let err = ask(follower, to).await.unwrap_err();
        assert!(err.contains("etcdserver: not leader"), "{err}");
        let err = ask(endpoints[target].clone(), 0x1234).await.unwrap_err();
        assert!(err.contains("etcdserver: bad leader transferee"), "{err}");
    });
}

/// `etcdctl endpoint hashkv` gives the same hash on every member for the same revision, and
/// another hash once the history differs.
#[test]
fn hash_kv_agrees_across_members() {
    let tmp = tempfile::tempdir().unwrap();
    let members = http_cluster(tmp.path(), "hk", &HASH_KV, "", &[]);
    for i in 0..20 {
        members[i % 3].ctl_ok(&["put", &format!("k{i}"), &format!("v{i}")]);
    }
    members[1].ctl_ok(&["del", "k1"]);
    let revision = members[0].status().unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    let now = assert_hash_kv_agree(&members, revision);
    let before = assert_hash_kv_agree(&members, revision - 1);
    assert_ne!(now, before);
}

/// One `GET path` on a fresh connection to `host`:2379: the status code and the body.
fn http_get(host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect((host, 2379))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}:2379\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.to_string()))
}

/// `etcd_server_leader_changes_seen_total` as the member's `/metrics` says.
fn leader_changes(host: &str) -> f64 {
    let (code, body) = http_get(host, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_server_leader_changes_seen_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no leader changes in /metrics on {host}"))
}

/// Writes `keys` keys (`key0000000`, ...) with `value`, 1,000 puts a txn, a few txns at once.
fn load(endpoint: &str, keys: usize, value: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        let chunks: Vec<std::ops::Range<usize>> = (0..keys)
            .step_by(1000)
            .map(|s| s..(s + 1000).min(keys))
            .collect();
        let mut pending = futures::stream::FuturesUnordered::new();
        for chunk in chunks {
            let mut kv = client.kv_client();
            let ops: Vec<etcd_client::TxnOp> = chunk
                .map(|i| etcd_client::TxnOp::put(format!("key{i:07}"), value, None))
                .collect();
            pending.push(async move { kv.txn(etcd_client::Txn::new().and_then(ops)).await });
            if pending.len() >= 4 {
                futures::StreamExt::next(&mut pending)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        while let Some(r) = futures::StreamExt::next(&mut pending).await {
            r.unwrap();
        }
    });
}

/// Audit H5: with many keys (200,000, or `H5_KEYS`), `etcdctl compact --physical` and a
/// concurrent `get "" --prefix --count-only` leave raft alone (no leader change on any member) and `/health`
/// answering within a second on every member throughout. Before, the compaction scanned every
/// version on the raft thread, and the count ran on the one IPC thread that Status and
/// `/health` wait behind.
#[test]
fn compaction_and_a_count_over_many_keys_leave_raft_and_health_alone() {
    let keys: usize = std::env::var("H5_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let tmp = tempfile::tempdir().unwrap();
    let members = http_cluster(
        tmp.path(),
        "lk",
        &LARGE_KEYSPACE,
        "ETCD_MAX_TXN_OPS=\"1000\"\n",
        &[],
    );
    let endpoint = &members[0].endpoint;
    let started = Instant::now();
    load(endpoint, keys, "first");
    load(endpoint, keys, "second");
    eprintln!("H5: wrote {keys} keys twice in {:?}", started.elapsed());
    let revision = members[0].status().unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    let changes_before: Vec<f64> = LARGE_KEYSPACE.iter().map(|h| leader_changes(h)).collect();

    // Every member's /health, every 100 ms, each on a fresh connection.
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = LARGE_KEYSPACE
        .iter()
        .map(|&host| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut worst, mut bad) = (Duration::ZERO, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let answer = http_get(host, "/health");
                    let took = asked.elapsed();
                    worst = worst.max(took);
                    match answer {
                        Ok((200, _)) if took <= Duration::from_secs(1) => {}
                        other => bad.push(format!("{other:?} after {took:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                (host, worst, bad)
            })
        })
        .collect();

    // What `etcdctl get "" --prefix --count-only` asks (etcdctl 3.4 has no --count-only), over
    // and over until the compaction is done.
    let compacting = Arc::new(AtomicBool::new(true));
    let counter = {
        let endpoint = members[1].endpoint.clone();
        let compacting = compacting.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut c = etcd_client::Client::connect([endpoint], None)
                    .await
                    .unwrap();
                let mut counts = Vec::new();
                loop {
                    let asked = Instant::now();
                    let opts = etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only();
                    let resp = c.get("", Some(opts)).await.unwrap();
                    counts.push((resp.count(), asked.elapsed()));
                    if !compacting.load(Ordering::Relaxed) {
                        return counts;
                    }
                }
            })
        })
    };
    let compact_started = Instant::now();
    let target = (revision - 1).to_string();
    members[0].ctl_ok(&["compact", &target, "--physical", "--command-timeout=300s"]);
    let compaction = compact_started.elapsed();
    compacting.store(false, Ordering::Relaxed);
    let counts = counter.join().unwrap();
    let count_took = counts.iter().map(|c| c.1).max().unwrap_or_default();
    // Until every member has deleted its garbage too (theirs run on their own).
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let health: Vec<_> = pollers.into_iter().map(|p| p.join().unwrap()).collect();
    let changes_after: Vec<f64> = LARGE_KEYSPACE.iter().map(|h| leader_changes(h)).collect();
    eprintln!(
        "H5: {keys} keys: compact --physical took {compaction:?}, {} counts, the slowest {count_took:?}; \
         /health worst {:?}; leader changes {changes_before:?} -> {changes_after:?}",
        counts.len(),
        health
            .iter()
            .map(|(h, w, _)| (h.to_string(), *w))
            .collect::<Vec<_>>()
    );
    assert!(counts.iter().all(|c| c.0 == keys as i64), "{counts:?}");
    for (host, worst, bad) in &health {
        assert!(bad.is_empty(), "{host}: /health: {bad:?} (worst {worst:?})");
    }
    assert_eq!(changes_before, changes_after, "leader changes");
    // Every member did its own pass, and they hash alike.
    assert_hash_kv_agree(&members, 0);
    // The compaction took: old revisions are refused, the newest values are there.
    let old = members[2].etcdctl(&["get", "key0000000", "--rev=2"]);
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"),
        "{old:?}"
    );
    assert_eq!(
        value_of(&members[2], &format!("key{:07}", keys - 1), &[]).as_deref(),
        Some("second")
    );
}

fn snapshot_status(file: &std::path::Path, format: &str) -> std::process::Output {
    std::process::Command::new(repo().join("scripts/snapshot.sh"))
        .env("ETCDRS_BIN_DIR", bin_dir())
        .args([
            "status".as_ref(),
            file.as_os_str(),
            "-w".as_ref(),
            format.as_ref(),
        ])
        .output()
        .expect("running scripts/snapshot.sh")
}

/// `etcdctl snapshot save` against a member of ours, with writes going on meanwhile: etcdctl
/// accepts the stream (length and trailing SHA-256) and exits 0; `scripts/snapshot.sh status`
/// reads the file and its hash is the member's HashKV at the snapshot's revision; nothing of the
/// image stays in the data dir; a damaged copy, a cut one and an etcd snapshot are refused with
/// one line each.
#[test]
fn snapshot_save_fetches_an_image_that_status_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let m = single_http_member(tmp.path(), "snap", SNAPSHOT_SAVE, "");
    wait_healthy(&m, Duration::from_secs(30));
    for i in 0..200 {
        m.ctl_ok(&["put", &format!("key{:03}", i % 50), &"v".repeat(i)]);
    }
    m.ctl_ok(&["del", "key007"]);
    m.ctl_ok(&["compaction", "100"]);
    let before = m.status().unwrap()["header"]["revision"].as_i64().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (endpoint, stop) = (m.endpoint.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                if etcdctl(&endpoint, &[], &["put", "during", &ok.to_string()])
                    .status
                    .success()
                {
                    ok += 1;
                }
            }
            ok
        })
    };
    let file = tmp.path().join("snap.db");
    let saved = m.etcdctl(&["snapshot", "save", file.to_str().unwrap()]);
    stop.store(true, Ordering::Relaxed);
    let during = writer.join().unwrap();
    assert!(
        saved.status.success(),
        "snapshot save failed: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
    assert!(
        String::from_utf8_lossy(&saved.stdout).contains("Snapshot saved at"),
        "{saved:?}"
    );
    assert!(during > 0, "no put went through around the snapshot");
    let len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(len % 512, 32, "etcdctl keeps {len} bytes");

    let out = snapshot_status(&file, "json");
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let revision = status["revision"].as_i64().unwrap();
    let after = m.status().unwrap()["header"]["revision"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&revision),
        "snapshot at {revision}, member at {before} before and {after} after"
    );
    assert_eq!(status["totalSize"].as_u64(), Some(len));
    assert!(status["totalKey"].as_u64().unwrap() >= 100, "{status}");
    let hashkv = m.etcdctl(&[
        "endpoint",
        "hashkv",
        "-w",
        "json",
        &format!("--rev={revision}"),
    ]);
    let hashkv: serde_json::Value = serde_json::from_slice(&hashkv.stdout).unwrap();
    assert_eq!(
        status["hash"].as_u64(),
        hashkv[0]["HashKV"]["hash"].as_u64(),
        "the image's hash against the member's HashKV at {revision}"
    );
    let table = String::from_utf8(snapshot_status(&file, "table").stdout).unwrap();
    assert!(
        table.contains("| REVISION |") && table.contains(&format!("{revision} |")),
        "{table}"
    );

    // The member deleted its checkpoint once the stream ended.
    let snap_dir = m.data_dir.join("snap");
    eventually(Duration::from_secs(5), "the image to be deleted", || {
        let left = std::fs::read_dir(&snap_dir).map_or(0, |d| d.count());
        (left == 0).then_some(())
    });

    let bytes = std::fs::read(&file).unwrap();
    let bad = tmp.path().join("bad.db");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x40;
    for (content, why) in [
        (flipped, "SHA-256 does not match"),
        (bytes[..bytes.len() - 100].to_vec(), "truncated"),
    ] {
        std::fs::write(&bad, content).unwrap();
        let out = snapshot_status(&bad, "simple");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("bad.db") && err.contains(why), "{why}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
}

fn snapshot_restore(file: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(repo().join("scripts/snapshot.sh"))
        .env("ETCDRS_BIN_DIR", bin_dir())
        .arg("restore")
        .arg(file)
        .args(args)
        .output()
        .expect("running scripts/snapshot.sh")
}

/// `scripts/snapshot.sh restore`, as `etcdutl snapshot restore`: a snapshot of one member
/// becomes a new three-member cluster (new IDs, the new member list) with every key and the
/// history, and with `--bump-revision --mark-compacted` its revisions move forward past a
/// compaction; a data dir that is not empty is refused, and so is a bump without the mark.
#[test]
fn a_saved_snapshot_restores_into_a_new_three_member_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let mut old = single_http_member(tmp.path(), "old", SNAPSHOT_RESTORE_SOURCE, "");
    wait_healthy(&old, Duration::from_secs(30));
    for i in 0..30 {
        old.ctl_ok(&["put", &format!("k{:02}", i % 10), &format!("v{i}")]);
    }
    old.ctl_ok(&["del", "k03"]);
    let revision = old.status().unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    let file = tmp.path().join("snap.db");
    old.ctl_ok(&["snapshot", "save", file.to_str().unwrap()]);
    let old_id = old.member_id().unwrap();
    old.stop();

    let cluster = SNAPSHOT_RESTORE
        .iter()
        .enumerate()
        .map(|(i, h)| format!("rst{i}=http://{h}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = SNAPSHOT_RESTORE
        .iter()
        .enumerate()
        .map(|(i, h)| unstarted_http_member(tmp.path(), &format!("rst{i}"), h, &cluster, ""))
        .collect();
    let restore = |m: &Member, host: &str, extra: &[&str]| {
        let peer = format!("http://{host}:2380");
        let mut args = vec![
            "--name",
            m.name.as_str(),
            "--initial-cluster",
            cluster.as_str(),
            "--initial-cluster-token",
            "restored",
            "--initial-advertise-peer-urls",
            peer.as_str(),
            "--data-dir",
            m.data_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        snapshot_restore(&file, &args)
    };
    let refused = restore(&members[0], SNAPSHOT_RESTORE[0], &["--bump-revision", "5"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("--mark-compacted"), "{err}");
    assert!(!members[0].data_dir.exists(), "nothing left behind");
    for (m, host) in members.iter().zip(SNAPSHOT_RESTORE) {
        let out = restore(m, host, &["--bump-revision", "1000", "--mark-compacted"]);
        assert!(out.status.success(), "{out:?}");
    }
    let again = restore(&members[0], SNAPSHOT_RESTORE[0], &[]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not empty") && err.lines().count() == 1,
        "{err}"
    );

    for m in &mut members {
        m.start();
    }
    for m in &members {
        wait_healthy(m, Duration::from_secs(60));
    }
    let m = &members[1];
    assert_eq!(
        m.ctl_ok(&["get", "k07", "--print-value-only"]).trim(),
        "v27"
    );
    assert_eq!(
        m.ctl_ok(&["get", "k03"]).trim(),
        "",
        "the delete came along"
    );
    let now = m.status().unwrap()["header"]["revision"].as_i64().unwrap();
    assert_eq!(now, revision + 1000, "the bumped revision");
    // Everything before it is compacted: a cache of the old cluster starts over.
    let history = m.etcdctl(&["get", "k07", &format!("--rev={revision}")]);
    assert!(
        String::from_utf8_lossy(&history.stderr).contains("compacted"),
        "{history:?}"
    );
    m.ctl_ok(&["put", "k07", "after"]);
    // Another member's status is its own applied state: it may take a heartbeat to get there.
    let put_rev = revision + 1001;
    eventually(
        Duration::from_secs(5),
        "the put applied on another member",
        || {
            let now = members[2].status()?["header"]["revision"].as_i64()?;
            assert!(now <= put_rev, "{now} past the put's {put_rev}");
            (now == put_rev).then_some(())
        },
    );
    // New IDs, the new members; the same state on each.
    let list = m.ctl_ok(&["member", "list"]);
    for i in 0..3 {
        assert!(list.contains(&format!("rst{i}")), "{list}");
    }
    assert!(!list.contains("old"), "{list}");
    assert!(members.iter().all(|m| m.member_id() != Some(old_id)));
    assert_hash_kv_agree(&members, put_rev);
    for m in &mut members {
        m.stop();
    }
}

/// `etcdctl ... txn -w json` with `script` on its stdin, which must succeed.
fn txn(endpoint: &str, script: &str) -> serde_json::Value {
    let mut child = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args([
            "--dial-timeout=2s",
            "--command-timeout=5s",
            "txn",
            "-w",
            "json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "txn against {endpoint}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A read's answer without what names the cluster it came from (IDs, term).
fn comparable(out: &std::process::Output) -> Result<serde_json::Value, String> {
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .collect::<Vec<_>>()
            .join("\n"));
    }
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if let Some(h) = v.get_mut("header").and_then(|h| h.as_object_mut()) {
        for k in ["cluster_id", "member_id", "raft_term"] {
            h.remove(k);
        }
    }
    Ok(v)
}

/// A snapshot of a real etcd 3.4 (`etcdctl snapshot save`: bbolt and its SHA-256) restored by
/// `scripts/snapshot.sh restore` into a new three-member cluster of ours: every key at every
/// revision etcd still had reads the same as on etcd (tombstones, a txn's several changes in
/// one revision, a value on overflow pages, a key bucket of several pages), a read below the
/// compaction is refused on both, `snapshot status` prints what etcdctl prints, and the new
/// cluster goes on from the newest revision.
#[test]
fn an_etcd_snapshot_restores_with_its_whole_retained_history() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd_dir = tmp.path().join("etcd");
    std::fs::create_dir(&etcd_dir).unwrap();
    let etcd = start_etcd(&etcd_dir, ETCD_RESTORE_SOURCE);
    let source = format!("http://{ETCD_RESTORE_SOURCE}:2379");
    let on_etcd = |args: &[&str]| {
        let out = etcdctl(&source, &[], args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} against etcd: {out:?}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(Duration::from_secs(30), "etcd to be healthy", || {
        etcdctl(&source, &[], &["endpoint", "health"])
            .status
            .success()
            .then_some(())
    });
    let revision_of = |endpoint: &str| {
        let out = etcdctl(endpoint, &[], &["get", "none", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    };

    // A history: keys put several times and deleted (the tombstone goes in the compaction),
    // then after the compaction a delete of a range (two keys in one revision), a txn of three
    // changes, 200 keys in two txns (the key bucket spans pages), a value larger than a page.
    for i in 0..12 {
        on_etcd(&["put", &format!("k{}", i % 4), &format!("v{i}")]);
    }
    on_etcd(&["put", "other", "x"]);
    on_etcd(&["del", "k1"]);
    let compacted = revision_of(&source);
    on_etcd(&["compaction", &compacted.to_string(), "--physical"]);
    on_etcd(&["del", "k2", "k4"]);
    let t = txn(
        &source,
        "value(\"k0\") = \"v8\"\n\nput k0 t0\nput k5 t5\ndel other\n\nput k9 never\n\n",
    );
    assert_eq!(t["succeeded"], true, "{t}");
    for half in 0..2 {
        let puts: String = (0..100)
            .map(|i| format!("put bulk{:03} {}\n", half * 100 + i, "b".repeat(i + 1)))
            .collect();
        txn(&source, &format!("\n{puts}\n\n"));
    }
    on_etcd(&["put", "k1", "back"]);
    on_etcd(&["put", "k0", "after"]);
    on_etcd(&["put", "k6", "new"]);
    on_etcd(&["del", "k5"]);
    on_etcd(&["put", "big", &"z".repeat(20_000)]);
    on_etcd(&["put", "k1", "last"]);
    let newest = revision_of(&source);
    let file = tmp.path().join("etcd-snap.db");
    on_etcd(&["snapshot", "save", file.to_str().unwrap()]);

    // `snapshot status` of the etcd file, as etcdctl prints it (etcd's own hash included).
    let ours_status = std::process::Command::new(repo().join("scripts/snapshot.sh"))
        .env("ETCDRS_BIN_DIR", bin_dir())
        .args(["status", file.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    assert!(ours_status.status.success(), "{ours_status:?}");
    let etcd_status = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", file.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours_status.stdout).trim(),
        String::from_utf8_lossy(&etcd_status.stdout).trim()
    );

    let cluster = ETCD_RESTORE
        .iter()
        .enumerate()
        .map(|(i, h)| format!("mig{i}=http://{h}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = ETCD_RESTORE
        .iter()
        .enumerate()
        .map(|(i, h)| unstarted_http_member(tmp.path(), &format!("mig{i}"), h, &cluster, ""))
        .collect();
    let started = Instant::now();
    for (m, host) in members.iter().zip(ETCD_RESTORE) {
        let peer = format!("http://{host}:2380");
        let out = snapshot_restore(
            &file,
            &[
                "--name",
                &m.name,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-token",
                "migrated",
                "--initial-advertise-peer-urls",
                &peer,
                "--data-dir",
                m.data_dir.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    eprintln!("three restores took {:?}", started.elapsed());
    for m in &mut members {
        m.start();
    }
    for m in &members {
        wait_healthy(m, Duration::from_secs(60));
    }
    let ours = members[1].endpoint.clone();
    assert_eq!(revision_of(&ours), newest);

    // Every key, at every revision etcd kept, point reads and one range of them all.
    let mut keys: Vec<String> = ["k0", "k1", "k2", "k3", "k5", "k6", "k9", "other", "big"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    keys.push("bulk000".into());
    keys.push("bulk199".into());
    let mut compared = 0;
    for rev in compacted..=newest {
        let at = format!("--rev={rev}");
        let mut reads: Vec<Vec<&str>> = keys
            .iter()
            .map(|k| vec!["get", k.as_str(), &at, "-w", "json"])
            .collect();
        reads.push(vec!["get", "", "--from-key", &at, "-w", "json"]);
        for args in reads {
            let want = comparable(&etcdctl(&source, &[], &args));
            let got = comparable(&etcdctl(&ours, &[], &args));
            assert!(want.is_ok(), "{args:?} on etcd: {want:?}");
            assert_eq!(got, want, "{args:?}");
            compared += 1;
        }
    }
    eprintln!("{compared} reads compared");
    for rev in [1, compacted - 1] {
        let args = ["get", "k0", &format!("--rev={rev}"), "-w", "json"];
        let want = comparable(&etcdctl(&source, &[], &args));
        let got = comparable(&etcdctl(&ours, &[], &args));
        assert!(
            want.as_ref()
                .is_err_and(|e| e.contains("required revision has been compacted")),
            "{want:?}"
        );
        assert_eq!(got, want, "{args:?}");
    }
    drop(etcd);

    // The new cluster: its own members, going on from the newest revision; compaction and
    // HashKV work on the imported history.
    let list = members[0].ctl_ok(&["member", "list"]);
    assert!((0..3).all(|i| list.contains(&format!("mig{i}"))), "{list}");
    assert!(!list.contains("reference"), "{list}");
    members[0].ctl_ok(&["put", "k0", "ours"]);
    assert_eq!(revision_of(&ours), newest + 1);
    assert_eq!(
        value_of(&members[2], "k0", &[&format!("--rev={newest}")]).as_deref(),
        Some("after")
    );
    members[0].ctl_ok(&["compaction", &newest.to_string(), "--physical"]);
    // Once every member applied the compaction (HashKV depends on it), the same hash.
    let hashes = eventually(
        Duration::from_secs(15),
        "every member to apply the compaction",
        || {
            let answers: Vec<serde_json::Value> = members
                .iter()
                .map(|m| {
                    let out = m.ctl_ok(&[
                        "endpoint",
                        "hashkv",
                        &format!("--rev={}", newest + 1),
                        "-w",
                        "json",
                    ]);
                    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                    v[0]["HashKV"].clone()
                })
                .collect();
            answers
                .iter()
                .all(|a| a["compact_revision"].as_i64() == Some(newest))
                .then(|| {
                    answers
                        .iter()
                        .map(|a| a["hash"].to_string())
                        .collect::<Vec<_>>()
                })
        },
    );
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    for m in &mut members {
        m.stop();
    }
}
