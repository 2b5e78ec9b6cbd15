//! How members apply and when reads see writes: followers applying in batches, answers before
//! RocksDB has the write, followers committing ahead of the leader, read indexes over a slow
//! network, and a range answer beyond capnp's default message limit.

use std::time::{Duration, Instant};

use super::value_of;
use crate::support::addresses::{
    ANSWER_BEFORE_ROCKSDB, APPLY_BATCHES, BIG_RANGE, COMMIT_AHEAD, SLOW_NETWORK,
};
use crate::support::*;

/// Followers apply in batches (a few entries or a few milliseconds), but never behind what a
/// client can tell: a linearizable read on a follower sees the write the leader just answered, a
/// write through a follower is there for a serializable read on that follower as soon as it is
/// answered, and a serializable read catches up within a moment even when no more writes come.
#[test]
fn followers_apply_in_batches_without_reads_seeing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = http_cluster(tmp.path(), "b", &APPLY_BATCHES, "", &[]);
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
    let host = ANSWER_BEFORE_ROCKSDB;
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
        &COMMIT_AHEAD,
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
        &SLOW_NETWORK,
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

#[test]
fn a_range_answer_larger_than_64_mib_comes_through() {
    let tmp = tempfile::tempdir().unwrap();
    let host = BIG_RANGE;
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
