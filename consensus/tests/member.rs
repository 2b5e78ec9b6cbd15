//! Whole members, started through `scripts/start-node.sh` and driven with the real `etcdctl`.
//!
//! The three-member cluster uses 127.0.0.1, 127.0.0.2 and 127.0.0.3 as three hosts with the same
//! ports (2379 for clients over https, 2380 for peers), from seed-format etcd.conf files with the
//! seed's security block; each host also serves plain http on 127.0.1.x:2379, as the seed's
//! `http://127.0.0.1:2379` does next to its https URL.

mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use consensus::ids;
use support::*;

/// Tests that bind 127.0.0.1:2379 take turns.
static PORT_2379: Mutex<()> = Mutex::new(());

fn seed_conf(
    name: &str,
    host: &str,
    data_dir: &std::path::Path,
    cluster: &str,
    certs: &Certs,
) -> String {
    let local = host.replace("127.0.0.", "127.0.1.");
    format!(
        r#"#[Member]
ETCD_NAME="{name}"
ETCD_DATA_DIR="{data}"
ETCD_LISTEN_PEER_URLS="https://{host}:2380"
ETCD_LISTEN_CLIENT_URLS="https://{host}:2379,http://{local}:2379"

#[Clustering]
ETCD_INITIAL_ADVERTISE_PEER_URLS="https://{host}:2380"
ETCD_ADVERTISE_CLIENT_URLS="https://{host}:2379"
ETCD_INITIAL_CLUSTER="{cluster}"
ETCD_INITIAL_CLUSTER_TOKEN="etcd-cluster"
ETCD_INITIAL_CLUSTER_STATE="new"

#[Security]
ETCD_CERT_FILE="{cert}"
ETCD_KEY_FILE="{key}"
ETCD_TRUSTED_CA_FILE="{ca}"
ETCD_CLIENT_CERT_AUTH="true"
ETCD_PEER_CERT_FILE="{cert}"
ETCD_PEER_KEY_FILE="{key}"
ETCD_PEER_TRUSTED_CA_FILE="{ca}"
ETCD_PEER_CLIENT_CERT_AUTH="true"
"#,
        data = data_dir.display(),
        cert = certs.cert.display(),
        key = certs.key.display(),
        ca = certs.ca.display(),
    )
}

fn value_of(m: &Member, key: &str, extra: &[&str]) -> Option<String> {
    let mut args = vec!["get", key, "--print-value-only"];
    args.extend_from_slice(extra);
    let out = m.etcdctl(&args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn three_member_cluster_from_seed_configs() {
    let _port = PORT_2379.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let certs = make_certs(tmp.path(), &hosts);
    let names = ["etcd01", "etcd02", "etcd03"];
    let cluster = names
        .iter()
        .zip(hosts)
        .map(|(n, h)| format!("{n}=https://{h}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let tls = vec![
        format!("--cacert={}", certs.ca.display()),
        format!("--cert={}", certs.cert.display()),
        format!("--key={}", certs.key.display()),
    ];
    let mut members: Vec<Member> = names
        .iter()
        .zip(hosts)
        .map(|(name, host)| {
            let data_dir = tmp.path().join(name);
            let conf = tmp.path().join(format!("{name}.conf"));
            std::fs::write(&conf, seed_conf(name, host, &data_dir, &cluster, &certs)).unwrap();
            Member::new(
                name,
                conf,
                data_dir,
                format!("https://{host}:2379"),
                tls.clone(),
            )
        })
        .collect();
    for m in &mut members {
        m.start();
    }
    for m in &members {
        wait_healthy(m, Duration::from_secs(60));
    }

    // The IDs are the brief's formula over the seed-format configuration.
    let expected: BTreeSet<u64> = hosts
        .iter()
        .map(|h| ids::member_id(&[format!("https://{h}:2380")], "etcd-cluster"))
        .collect();
    let cluster_id = ids::cluster_id(&expected.iter().copied().collect::<Vec<_>>());
    let list = eventually(Duration::from_secs(10), "every member published", || {
        let out = members[1].ctl_ok(&["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let ms = v["members"].as_array()?;
        ms.iter()
            .all(|m| m["clientURLs"].as_array().is_some_and(|c| !c.is_empty()))
            .then_some(v)
    });
    assert_eq!(list["header"]["cluster_id"].as_u64(), Some(cluster_id));
    let got: BTreeSet<u64> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["ID"].as_u64())
        .collect();
    assert_eq!(got, expected, "member list: {list}");
    for m in list["members"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let i = names.iter().position(|n| *n == name).expect("a known name");
        assert_eq!(m["peerURLs"][0], format!("https://{}:2380", hosts[i]));
        assert_eq!(m["clientURLs"][0], format!("https://{}:2379", hosts[i]));
    }
    let table = members[0].ctl_ok(&["member", "list"]);
    for id in &expected {
        assert!(table.contains(&ids::format_id(*id)), "{table}");
    }

    // Writes through member 1, reads from members 2 and 3.
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("seed/k{i:02}"), format!("v{i}"));
        members[0].ctl_ok(&["put", &k, &v]);
        acknowledged.push((k, v));
    }
    for m in &members[1..] {
        let all = m.ctl_ok(&["get", "seed/", "--prefix", "--keys-only"]);
        assert_eq!(all.lines().filter(|l| !l.is_empty()).count(), 20, "{all}");
        assert_eq!(value_of(m, "seed/k07", &[]).as_deref(), Some("v7"));
        eventually(
            Duration::from_secs(5),
            "a serializable read to catch up",
            || {
                (value_of(m, "seed/k19", &["--consistency=s"]).as_deref() == Some("v19"))
                    .then_some(())
            },
        );
    }
    // The plain http listener of the same member serves too.
    let http = etcdctl(
        "http://127.0.1.3:2379",
        &[],
        &["get", "seed/k03", "--print-value-only"],
    );
    assert!(http.status.success(), "{http:?}");
    assert_eq!(String::from_utf8_lossy(&http.stdout).trim(), "v3");
    let status = members[2].status().expect("endpoint status -w json");
    assert_eq!(status["header"]["cluster_id"].as_u64(), Some(cluster_id));
    assert!(status["header"]["revision"].as_i64().unwrap() >= 21);

    // kill -9 every process of the leader's member: the other two elect a leader and take writes.
    let old = leader_index(&members, &[0, 1, 2]);
    let old_id = members[old].member_id().unwrap();
    members[old].kill9_all();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new_leader = eventually(Duration::from_secs(15), "a new leader", || {
        members[survivors[0]]
            .leader_and_term()
            .map(|(l, _)| l)
            .filter(|l| *l != 0 && *l != old_id)
    });
    assert_ne!(new_leader, old_id);
    for i in 0..10 {
        let (k, v) = (format!("after/k{i:02}"), format!("a{i}"));
        members[survivors[1]].ctl_ok(&["put", &k, &v]);
        acknowledged.push((k, v));
    }
    members[old].start();
    wait_healthy(&members[old], Duration::from_secs(30));
    for (k, v) in &acknowledged {
        assert_eq!(
            value_of(&members[old], k, &[]).as_deref(),
            Some(v.as_str()),
            "acknowledged write {k} missing after restart"
        );
    }

    // kill -9 the leader's client gateway: etcdctl works again within 5 s, same leader and term.
    let leader = leader_index(&members, &[0, 1, 2]);
    let before = members[leader].leader_and_term().unwrap();
    let killed = members[leader].kill9("client-gateway");
    let start = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the client gateway to serve again",
        || value_of(&members[leader], "seed/k00", &[]).filter(|v| v == "v0"),
    );
    assert!(start.elapsed() <= Duration::from_secs(5));
    assert_ne!(members[leader].pid("client-gateway"), killed);
    assert_eq!(members[leader].leader_and_term().unwrap(), before);

    // kill -9 a follower's peer gateway, write meanwhile; the follower catches up once it is back.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let killed = members[follower].kill9("peer-gateway");
    members[leader].ctl_ok(&["put", "during/outage", "written"]);
    eventually(Duration::from_secs(10), "the follower to catch up", || {
        (value_of(&members[follower], "during/outage", &["--consistency=s"]).as_deref()
            == Some("written"))
        .then_some(())
    });
    assert_ne!(members[follower].pid("peer-gateway"), killed);
    assert_eq!(members[leader].leader_and_term().unwrap().0, before.0);

    // kill -9 a follower's consensus alone: it restarts from its data dir, the gateways it left
    // running register again, and it catches up with what was written meanwhile.
    let gateways = (
        members[follower].pid("peer-gateway"),
        members[follower].pid("client-gateway"),
    );
    let killed = members[follower].kill9("consensus");
    members[leader].ctl_ok(&["put", "during/restart", "still-written"]);
    eventually(
        Duration::from_secs(15),
        "the restarted consensus to catch up",
        || {
            (value_of(&members[follower], "during/restart", &[]).as_deref()
                == Some("still-written"))
            .then_some(())
        },
    );
    assert_ne!(members[follower].pid("consensus"), killed);
    assert_eq!(
        (
            members[follower].pid("peer-gateway"),
            members[follower].pid("client-gateway")
        ),
        gateways,
        "the gateways should have stayed up and registered again"
    );
    for (k, v) in &acknowledged {
        assert_eq!(
            value_of(&members[follower], k, &[]).as_deref(),
            Some(v.as_str())
        );
    }

    for m in &mut members {
        m.stop();
    }
}

#[test]
fn no_configuration_starts_one_member_on_2379() {
    let _port = PORT_2379.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(tmp.path().join("member.log")).unwrap();
    let script = std::process::Command::new(repo().join("scripts/start-node.sh"))
        .current_dir(tmp.path())
        .env("ETCDRS_BIN_DIR", bin_dir())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut member = Member::new(
        "default",
        tmp.path().join("unused.conf"),
        tmp.path().join("default.etcd"),
        "127.0.0.1:2379".into(),
        vec![],
    );
    member.log = tmp.path().join("member.log");
    let script_pid = script.id() as i32;
    let stop = scopeguard(script);
    wait_healthy(&member, Duration::from_secs(30));
    // etcdctl with no --endpoints talks to 127.0.0.1:2379.
    let put = std::process::Command::new("etcdctl")
        .args(["put", "greeting", "hello"])
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}\n{}", member.log_tail());
    assert_eq!(value_of(&member, "greeting", &[]).as_deref(), Some("hello"));
    let list = member.ctl_ok(&["member", "list"]);
    let id = ids::member_id(&["http://localhost:2380".into()], "etcd-cluster");
    assert!(list.contains(&ids::format_id(id)), "{list}");
    assert!(list.contains("default"), "{list}");
    assert!(tmp.path().join("default.etcd").is_dir());
    assert_eq!(member.pids().get("start-node"), Some(&script_pid));

    // kill -9 of the supervisor alone takes the member down with it: no orphan keeps the port
    // or the data dir.
    let pids = member.pids();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(script_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    for process in ["consensus", "peer-gateway", "client-gateway"] {
        let pid = pids[process];
        eventually(
            Duration::from_secs(10),
            &format!("{process} to stop with start-node.sh"),
            || (!alive(pid)).then_some(()),
        );
    }
    drop(stop);
}

/// Whether a process runs (a zombie waiting for its parent to reap it does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Stops the script (SIGTERM; it stops its three processes) when the test ends, even on panic.
fn scopeguard(child: std::process::Child) -> impl Drop {
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Guard(child)
}

/// Applied state goes to RocksDB without its WAL, so kill -9 loses what no memtable flush has
/// persisted yet. The member must apply those entries again from its raft log: every
/// acknowledged write back, with the same revisions, and the next write right after them. A
/// clean stop, on the other hand, flushes, and leaves nothing to apply again.
#[test]
fn a_killed_member_applies_again_what_its_database_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = single_http_member(tmp.path(), "r", "127.0.0.16", "");
    wait_healthy(&m, Duration::from_secs(30));
    let revision = |out: &str| -> i64 {
        let v: serde_json::Value = serde_json::from_str(out).expect("etcdctl -w json");
        v["header"]["revision"].as_i64().expect("header.revision")
    };
    let mut written = Vec::new();
    for i in 0..40 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        let out = m.ctl_ok(&["put", &k, &v, "-w", "json"]);
        written.push((k, v, revision(&out)));
    }
    m.ctl_ok(&["del", "k00"]);
    // Consensus first: a supervisor killed first could let it close RocksDB cleanly.
    m.kill9("consensus");
    m.kill9_all();
    m.start();
    wait_healthy(&m, Duration::from_secs(30));
    let log = m.log_tail();
    assert!(
        log.contains("applied again"),
        "the database lost nothing, so this test proved nothing:\n{log}"
    );
    let gone: serde_json::Value =
        serde_json::from_str(&m.ctl_ok(&["get", "k00", "-w", "json"])).unwrap();
    assert!(
        gone["kvs"].as_array().is_none_or(|a| a.is_empty()),
        "the delete was lost: {gone}"
    );
    for (k, v, rev) in &written[1..] {
        let out = m.ctl_ok(&["get", k, "-w", "json"]);
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        let kv = &got["kvs"][0];
        assert_eq!(kv["mod_revision"].as_i64(), Some(*rev), "{k}: {out}");
        assert_eq!(value_of(&m, k, &[]).as_deref(), Some(v.as_str()));
    }
    let last = written.last().map(|w| w.2).unwrap();
    let out = m.ctl_ok(&["put", "after", "x", "-w", "json"]);
    // The delete took one revision after the last put.
    assert_eq!(
        revision(&out),
        last + 2,
        "revisions were applied twice or lost"
    );
    // A clean stop flushes RocksDB, so the next start has nothing to apply again.
    let replays = m.logged_times("applied again");
    m.stop();
    assert!(
        m.logged("applied state flushed to disk"),
        "{}",
        m.log_tail()
    );
    m.start();
    wait_healthy(&m, Duration::from_secs(30));
    assert_eq!(
        m.logged_times("applied again"),
        replays,
        "a clean stop left applied state unflushed:\n{}",
        m.log_tail()
    );
    assert_eq!(value_of(&m, "after", &[]).as_deref(), Some("x"));
    let out = m.ctl_ok(&["put", "after-stop", "y", "-w", "json"]);
    assert_eq!(
        revision(&out),
        last + 3,
        "revisions were applied twice or lost"
    );
    m.stop();
}

#[test]
fn auto_compaction_forgets_old_revisions() {
    let tmp = tempfile::tempdir().unwrap();
    let host = "127.0.0.14";
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

#[test]
fn a_range_answer_larger_than_64_mib_comes_through() {
    let tmp = tempfile::tempdir().unwrap();
    let host = "127.0.0.15";
    let m = single_http_member(tmp.path(), "big", host, "");
    wait_healthy(&m, Duration::from_secs(30));
    // 48 values of 1.5 MB (under --max-request-bytes), 72 MB in all: more than capnp's default
    // 64 MiB message limit between the client gateway and consensus.
    let value = vec![b'v'; 1_500_000];
    for i in 0..48 {
        use std::io::Write;
        let mut put = std::process::Command::new("etcdctl")
            .args([
                &format!("--endpoints={}", m.endpoint),
                "put",
                &format!("big/{i:02}"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        put.stdin.take().unwrap().write_all(&value).unwrap();
        assert!(
            put.wait().unwrap().success(),
            "put big/{i:02}\n{}",
            m.log_tail()
        );
    }
    let out = m.etcdctl(&["get", "big/", "--prefix", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_tail()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["count"], 48);
    assert_eq!(v["kvs"].as_array().map(Vec::len), Some(48));
}

/// Followers apply in batches (a few entries or a few milliseconds), but never behind what a
/// client can tell: a linearizable read on a follower sees the write the leader just answered, a
/// write through a follower is there for a serializable read on that follower as soon as it is
/// answered, and a serializable read catches up within a moment even when no more writes come.
#[test]
fn followers_apply_in_batches_without_reads_seeing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = http_cluster(
        tmp.path(),
        "b",
        &["127.0.0.24", "127.0.0.25", "127.0.0.26"],
        "",
        &[],
    );
    let leader = leader_index(&members, &[0, 1, 2]);
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let (l, f) = (&members[leader], &members[follower]);
    for i in 0..20 {
        let v = format!("v{i}");
        l.ctl_ok(&["put", "k", &v]);
        assert_eq!(
            value_of(f, "k", &[]).as_deref(),
            Some(v.as_str()),
            "a linearizable read on the follower missed write {i}"
        );
    }
    for i in 0..5 {
        let v = format!("w{i}");
        f.ctl_ok(&["put", "through-follower", &v]);
        assert_eq!(
            value_of(f, "through-follower", &["--consistency=s"]).as_deref(),
            Some(v.as_str()),
            "the follower answered write {i} before applying it"
        );
    }
    // One last write and no more: the follower still applies it, on its own.
    l.ctl_ok(&["put", "last", "x"]);
    let started = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the follower to apply the last write",
        || (value_of(f, "last", &["--consistency=s"]).as_deref() == Some("x")).then_some(()),
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    for m in &mut members {
        m.stop();
    }
}

/// Consensus answers applied writes before RocksDB has their batch, and holds back reads until it
/// has: with a failpoint pausing every apply for 1.5 s between the two, a put is answered at once
/// and a serializable read right after it still sees the new value, as does Status's revision.
#[test]
fn reads_wait_for_writes_answered_before_rocksdb_has_them() {
    let tmp = tempfile::tempdir().unwrap();
    let host = "127.0.0.18";
    let mut m = unstarted_http_member(
        tmp.path(),
        "aw",
        host,
        &format!("aw=http://{host}:2380"),
        "",
    );
    let delay = Duration::from_millis(1500);
    m.env.push((
        schema::failpoint::APPLY_WRITE_DELAY.into(),
        delay.as_millis().to_string(),
    ));
    m.start();
    wait_healthy(&m, Duration::from_secs(60));
    for i in 0..3 {
        let v = format!("v{i}");
        let started = Instant::now();
        m.ctl_ok(&["put", "k", &v]);
        let put_took = started.elapsed();
        assert!(
            put_took < delay,
            "put {i} took {put_took:?}: it was not answered before the paused RocksDB write"
        );
        assert_eq!(
            value_of(&m, "k", &["--consistency=s"]).as_deref(),
            Some(v.as_str()),
            "a serializable read right after put {i} missed it"
        );
    }
    let status = m.status().expect("endpoint status");
    let revision = status["header"]["revision"].as_i64();
    let v: serde_json::Value =
        serde_json::from_str(&m.ctl_ok(&["get", "k", "-w", "json", "--consistency=s"])).unwrap();
    assert_eq!(revision, v["kvs"][0]["mod_revision"].as_i64());
    assert!(
        m.logged("failpoint ETCDRS_FAILPOINT_APPLY_WRITE_DELAY_MS=1500: pausing"),
        "the member did not take the failpoint:\n{}",
        m.log_tail()
    );
    m.stop();
}

/// A write that cannot reach a quorum gets a definite answer from consensus itself, etcd's
/// "request timed out" once its request timeout passes (the raft thread's deadline for writes on
/// the write stream), instead of hanging until the client gives up. A long election timeout keeps
/// the leader from stepping down first, which would answer "no leader" instead.
#[test]
fn a_write_without_quorum_gets_etcds_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    // Request timeout: 5 s plus two election timeouts, 9 s here.
    let extra = "ETCD_ELECTION_TIMEOUT=\"2000\"\n";
    let mut members = http_cluster(
        tmp.path(),
        "q",
        &["127.0.0.21", "127.0.0.22", "127.0.0.23"],
        extra,
        &[],
    );
    members[0].ctl_ok(&["put", "k", "kept"]);
    let leader = leader_index(&members, &[0, 1, 2]);
    for (i, m) in members.iter_mut().enumerate() {
        if i != leader {
            m.kill9_all();
        }
    }
    let started = Instant::now();
    let out = members[leader].etcdctl(&["put", "k", "lost", "--command-timeout=30s"]);
    let waited = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let log = members[leader].log_tail();
    members[leader].stop();
    assert!(!out.status.success(), "a put without quorum succeeded");
    assert!(
        err.contains("etcdserver: request timed out"),
        "{err}\n--- leader log ---\n{log}"
    );
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(20),
        "answered after {waited:?}"
    );
}

/// A follower that forwarded a write commits it on the leader's notice that the leader's log is
/// durable, before the leader itself knows that the write is committed; a read index the leader
/// hands out must still cover it. With every follower holding its append acknowledgements for a
/// second (heartbeat responses still leave at once), each write through a follower is answered
/// long before the leader learns it is committed, and a linearizable read through the leader or
/// the other follower right after it must see it.
#[test]
fn reads_after_a_write_committed_ahead_of_the_leader_see_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = http_cluster(
        tmp.path(),
        "ca",
        &["127.0.0.51", "127.0.0.52", "127.0.0.53"],
        "",
        &[(schema::failpoint::APPEND_ACK_DELAY, "1000")],
    );
    let leader = leader_index(&members, &[0, 1, 2]);
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let other = (0..3).find(|i| *i != leader && *i != follower).unwrap();
    for i in 0..3 {
        let v = format!("v{i}");
        members[follower].ctl_ok(&["put", "k", &v]);
        assert_eq!(
            value_of(&members[leader], "k", &[]).as_deref(),
            Some(v.as_str()),
            "a linearizable read through the leader missed write {i}"
        );
        let w = format!("w{i}");
        members[follower].ctl_ok(&["put", "k", &w]);
        assert_eq!(
            value_of(&members[other], "k", &[]).as_deref(),
            Some(w.as_str()),
            "a linearizable read through the other follower missed write {i}"
        );
    }
    assert!(
        members[follower].logged("committing on the leader's notice"),
        "the follower never committed ahead of the leader:\n{}",
        members[follower].log_tail()
    );
    for m in &mut members {
        m.stop();
    }
}

/// With raft messages 300 ms on their way, a read index takes longer than the 500 ms after which
/// it is asked again; the first answer must still count (asking under a new context each time
/// never answered a linearizable read at all).
#[test]
fn linearizable_reads_work_over_a_slow_network() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = http_cluster(
        tmp.path(),
        "sn",
        &["127.0.0.54", "127.0.0.55", "127.0.0.56"],
        "",
        &[(schema::failpoint::PEER_SEND_DELAY, "300")],
    );
    let leader = leader_index(&members, &[0, 1, 2]);
    let follower = (0..3).find(|i| *i != leader).unwrap();
    members[follower].ctl_ok(&["put", "k", "v"]);
    for m in &members {
        assert_eq!(value_of(m, "k", &[]).as_deref(), Some("v"), "{}", m.name);
    }
    for m in &mut members {
        m.stop();
    }
}

/// `etcdctl move-leader` hands the leadership to the member named, as with etcd; a follower
/// refuses MoveLeader as etcd does, and so does the leader for an ID that is no member.
#[test]
fn move_leader_hands_the_leadership_over() {
    let tmp = tempfile::tempdir().unwrap();
    let members = http_cluster(
        tmp.path(),
        "ml",
        &["127.0.0.66", "127.0.0.67", "127.0.0.68"],
        "",
        &[],
    );
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
    let members = http_cluster(
        tmp.path(),
        "hk",
        &["127.0.0.73", "127.0.0.74", "127.0.0.75"],
        "",
        &[],
    );
    for i in 0..20 {
        members[i % 3].ctl_ok(&["put", &format!("k{i}"), &format!("v{i}")]);
    }
    members[1].ctl_ok(&["del", "k1"]);
    let revision = members[0].status().unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    let hash_at = |m: &Member, rev: i64| -> u64 {
        eventually(Duration::from_secs(10), "a hash", || {
            let out = m.etcdctl(&["endpoint", "hashkv", &format!("--rev={rev}"), "-w", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v[0]["HashKV"]["hash"].as_u64()
        })
    };
    let hashes: Vec<u64> = members.iter().map(|m| hash_at(m, revision)).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let before: Vec<u64> = members.iter().map(|m| hash_at(m, revision - 1)).collect();
    assert!(before.iter().all(|h| *h == before[0]), "{before:?}");
    assert_ne!(hashes[0], before[0]);
}
