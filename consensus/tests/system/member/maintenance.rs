//! Maintenance: auto-compaction, MoveLeader and HashKV.

use std::time::Duration;

use super::value_of;
use crate::support::addresses::{AUTO_COMPACTION, HASH_KV, MOVE_LEADER};
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
