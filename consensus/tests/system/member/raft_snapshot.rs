//! Raft snapshots: a follower that was down while the rest of the cluster compacted its log
//! past it catches up by snapshot (streamed by the peer gateways on a QUIC stream of their own,
//! installed, consensus restarted in place) and then agrees with the others on HashKV.

use std::time::Duration;

use crate::support::addresses::RAFT_SNAPSHOT;
use crate::support::*;

const PUTS: usize = 20_000;

#[test]
fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let knobs = "ETCD_SNAPSHOT_COUNT=\"1000\"\nETCD_SNAPSHOT_CATCHUP_ENTRIES=\"100\"\n";
    let mut members = http_cluster(tmp.path(), "rs", &RAFT_SNAPSHOT, knobs, &[]);
    members[0].ctl_ok(&["put", "before", "the follower stopped"]);
    let leader = leader_index(&members, &[0, 1, 2]);
    let follower = (leader + 1) % members.len();
    let follower_id = members[follower].member_id();
    let follower_name = members[follower].name.clone();
    members[follower].stop();
    let up: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != follower)
        .map(|(_, m)| m.endpoint.clone())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = etcd_client::Client::connect(up.clone(), None)
            .await
            .unwrap();
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let mut c = client.clone();
                tokio::spawn(async move {
                    for i in (w..PUTS).step_by(16) {
                        c.put(format!("rs/{i:05}"), format!("value {i}"), None)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
    assert!(
        members[leader].logged("raft log compacted"),
        "{}",
        members[leader].log_tail()
    );
    members[follower].start();
    let newest = members[leader].status().unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    eventually(
        Duration::from_secs(90),
        &format!("{follower_name} to catch up to revision {newest}"),
        || {
            let rev = members[follower].status()?["header"]["revision"].as_i64()?;
            (rev >= newest).then_some(())
        },
    );
    let f = &members[follower];
    assert!(
        f.logged("installed a raft snapshot"),
        "caught up without a snapshot:\n{}",
        f.log_tail()
    );
    assert!(
        members[leader].logged("sending a raft snapshot"),
        "{}",
        members[leader].log_tail()
    );
    // The same state everywhere, and the follower still itself and serving.
    let hashes: Vec<i64> = members
        .iter()
        .map(|m| {
            let out = m.ctl_ok(&[
                "endpoint",
                "hashkv",
                &format!("--rev={newest}"),
                "-w",
                "json",
            ]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v[0]["HashKV"]["hash"].as_i64().unwrap()
        })
        .collect();
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV at {newest}: {hashes:?}"
    );
    assert_eq!(f.member_id(), follower_id, "the follower is still itself");
    f.ctl_ok(&["put", "after", "the snapshot"]);
    for m in &members {
        eventually(Duration::from_secs(10), "the last put everywhere", || {
            let got = m.ctl_ok(&["get", "after", "--print-value-only", "--consistency=s"]);
            (got.trim() == "the snapshot").then_some(())
        });
        assert_eq!(
            m.ctl_ok(&["get", "rs/19999", "--print-value-only"]).trim(),
            "value 19999"
        );
        assert!(!m.logged("panicked"), "{}", m.log_tail());
    }
    for m in &mut members {
        m.stop();
    }
}
