//! Recovery: a member killed with -9 applies again what its database lost, and a write without
//! a quorum gets etcd's timeout instead of hanging.

use std::time::{Duration, Instant};

use super::value_of;
use crate::support::addresses::{NO_QUORUM, REPLAY};
use crate::support::*;

/// Applied state goes to RocksDB without its WAL, so kill -9 loses what no memtable flush has
/// persisted yet. The member must apply those entries again from its raft log: every
/// acknowledged write back, with the same revisions, and the next write right after them. A
/// clean stop, on the other hand, flushes, and leaves nothing to apply again.
#[test]
fn a_killed_member_applies_again_what_its_database_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = single_http_member(tmp.path(), "r", REPLAY, "");
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

/// A write that cannot reach a quorum gets a definite answer from consensus itself, etcd's
/// "request timed out" once its request timeout passes (the raft thread's deadline for writes on
/// the write stream), instead of hanging until the client gives up. A long election timeout keeps
/// the leader from stepping down first, which would answer "no leader" instead.
#[test]
fn a_write_without_quorum_gets_etcds_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    // Request timeout: 5 s plus two election timeouts, 9 s here.
    let extra = "ETCD_ELECTION_TIMEOUT=\"2000\"\n";
    let mut members = http_cluster(tmp.path(), "q", &NO_QUORUM, extra, &[]);
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
