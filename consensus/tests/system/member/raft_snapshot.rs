//! Raft snapshots: a follower that was down while the rest of the cluster compacted its log
//! past it catches up by snapshot (streamed by the peer gateways on a QUIC stream of their own,
//! installed, consensus restarted in place) and then agrees with the others on HashKV; and so
//! it does when either end is killed with -9 during the transfer, or the receiver right at the
//! install's commit point.

use std::time::Duration;

use crate::support::addresses::{RAFT_SNAPSHOT, RAFT_SNAPSHOT_DISK, RAFT_SNAPSHOT_KILLS};
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
    fall_behind(&mut members, follower, "rs", PUTS, 16, &[]);
    assert!(
        members[leader].logged("raft log compacted"),
        "{}",
        members[leader].log_tail()
    );
    caught_up(&members, leader, follower);
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
    // Both ends counted it, the receiver across its restart in place.
    let metric = |m: &Member, name: &str| -> f64 {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("{}/metrics", m.endpoint)])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(metric(&members[leader], "etcd_network_snapshot_send_success") >= 1.0);
    assert!(metric(&members[follower], "etcd_network_snapshot_receive_success") >= 1.0);
    assert_eq!(
        metric(&members[follower], "etcd_network_snapshot_receive_failures"),
        0.0
    );
    // The follower still itself and serving.
    assert_eq!(f.member_id(), follower_id, "the follower is still itself");
    f.ctl_ok(&["put", "after", "the snapshot"]);
    for m in &members {
        eventually(Duration::from_secs(10), "the last put everywhere", || {
            let got = m.ctl_ok(&["get", "after", "--print-value-only", "--consistency=s"]);
            (got.trim() == "the snapshot").then_some(())
        });
        let got = m.ctl_ok(&["get", "rs/19999", "--print-value-only"]);
        assert!(got.starts_with("19999:"), "{got}");
        assert!(!m.logged("panicked"), "{}", m.log_tail());
    }
    for m in &mut members {
        m.stop();
    }
}

/// Stops `follower`, writes `puts` keys `{prefix}/{i}` with values of `value_bytes` or a little
/// more (each starts `{i}:`) through the others, and starts it again with `env` (failpoints) in
/// its environment.
fn fall_behind(
    members: &mut [Member],
    follower: usize,
    prefix: &str,
    puts: usize,
    value_bytes: usize,
    env: &[(&str, &str)],
) {
    members[follower].stop();
    let up: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != follower)
        .map(|(_, m)| m.endpoint.clone())
        .collect();
    let prefix = prefix.to_string();
    put_concurrently(&up, 8, puts, move |i| {
        (
            format!("{prefix}/{i:05}"),
            format!("{i}:{}", "v".repeat(value_bytes)),
        )
    });
    let f = &mut members[follower];
    f.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    f.start();
}

/// Waits until `follower` applied what the leader has, and every member's HashKV agrees at
/// that revision, which it returns.
fn caught_up(members: &[Member], leader: usize, follower: usize) -> i64 {
    let newest = members[leader].status().unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    eventually(Duration::from_secs(120), "the follower to catch up", || {
        let rev = members[follower].status()?["header"]["revision"].as_i64()?;
        (rev >= newest).then_some(())
    });
    assert_hash_kv_agree(members, newest);
    newest
}

#[test]
fn kill_9_of_either_end_of_a_snapshot_loses_nothing() {
    use schema::failpoint::{SNAPSHOT_INSTALL_PAUSE, SNAPSHOT_WRITE_DELAY};
    let tmp = tempfile::tempdir().unwrap();
    let knobs = "ETCD_SNAPSHOT_COUNT=\"500\"\nETCD_SNAPSHOT_CATCHUP_ENTRIES=\"50\"\n";
    let mut members = http_cluster(tmp.path(), "rk", &RAFT_SNAPSHOT_KILLS, knobs, &[]);
    let leader = leader_index(&members, &[0, 1, 2]);
    let follower = (leader + 1) % members.len();
    // Values of 2 KiB: an image of several 1 MiB chunks, each written a second late.
    let slow = [(SNAPSHOT_WRITE_DELAY, "1000")];

    // 1. The receiver's consensus killed in the middle of the transfer: nothing is installed
    // from the half-received image; the leader sends it again to the restarted member.
    fall_behind(&mut members, follower, "one", 3000, 2048, &slow);
    eventually(Duration::from_secs(60), "a transfer to start", || {
        members[follower]
            .logged("receiving a raft snapshot")
            .then_some(())
    });
    members[follower].kill9("consensus");
    caught_up(&members, leader, follower);
    let f = &members[follower];
    assert!(
        f.logged("installed a raft snapshot"),
        "{}\n---\n{}",
        f.log_lines("snapshot"),
        members[leader].log_lines("snapshot")
    );
    assert!(!f.logged("panicked"), "{}", f.log_tail());

    // 2. Killed right after the install's commit point: the restart finishes the swap. (The
    // leader keeps its log for 10 s after an image was read: past that, it compacts again.)
    std::thread::sleep(Duration::from_secs(11));
    let pause = [(SNAPSHOT_INSTALL_PAUSE, "5000")];
    let committed = members[follower].logged_times("raft snapshot install committed");
    fall_behind(&mut members, follower, "two", 3000, 2048, &pause);
    eventually(
        Duration::from_secs(60),
        "the install's commit point",
        || {
            (members[follower].logged_times("raft snapshot install committed") > committed)
                .then_some(())
        },
    );
    members[follower].kill9("consensus");
    caught_up(&members, leader, follower);
    let f = &members[follower];
    assert!(
        f.logged("finished installing a raft snapshot that a restart interrupted"),
        "{}",
        f.log_lines("snapshot")
    );

    // 3. The sender's peer gateway killed in the middle of the transfer: its consensus hears of
    // the new gateway, counts the send failed, and sends again through it.
    std::thread::sleep(Duration::from_secs(11));
    let received = members[follower].logged_times("receiving a raft snapshot");
    let installed = members[follower].logged_times("installed a raft snapshot");
    fall_behind(&mut members, follower, "three", 3000, 2048, &slow);
    eventually(Duration::from_secs(60), "a transfer to start", || {
        (members[follower].logged_times("receiving a raft snapshot") > received).then_some(())
    });
    members[leader].kill9("peer-gateway");
    caught_up(&members, leader, follower);
    assert!(
        members[follower].logged_times("installed a raft snapshot") > installed,
        "{}",
        members[follower].log_lines("snapshot")
    );
    for m in &members {
        for key in ["one/02999", "two/02999", "three/02999"] {
            let got = m.ctl_ok(&["get", key, "--print-value-only"]);
            assert!(got.starts_with("2999:"), "{key} on {}: {got}", m.name);
        }
        assert!(!m.logged("panicked"), "{}", m.log_tail());
    }
    for m in &mut members {
        m.stop();
    }
}

/// The receiver's disk fills in the middle of a transfer: the image is refused (nothing half
/// written is installed or left behind), the member stops or goes on as a full disk makes it,
/// and once the space is back it catches up by snapshot and agrees with the others.
#[test]
fn a_full_disk_during_a_snapshot_refuses_it_until_there_is_room() {
    use crate::support::disk::Disk;
    use schema::failpoint::SNAPSHOT_WRITE_DELAY;
    let tmp = tempfile::tempdir().unwrap();
    let knobs = "ETCD_SNAPSHOT_COUNT=\"500\"\nETCD_SNAPSHOT_CATCHUP_ENTRIES=\"50\"\n";
    let cluster = RAFT_SNAPSHOT_DISK
        .iter()
        .enumerate()
        .map(|(i, h)| format!("rd{i}=http://{h}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = RAFT_SNAPSHOT_DISK
        .iter()
        .enumerate()
        .map(|(i, h)| unstarted_http_member(tmp.path(), &format!("rd{i}"), h, &cluster, knobs))
        .collect();
    // Every member on a disk of its own, so that any of them can be the follower.
    let disks: Vec<Disk> = members
        .iter()
        .map(|m| Disk::new(&m.data_dir, 512).expect("a disk (needs root and /dev/fuse)"))
        .collect();
    for m in &mut members {
        m.start();
    }
    for m in &members {
        wait_healthy(m, Duration::from_secs(60));
    }
    let leader = leader_index(&members, &[0, 1, 2]);
    let follower = (leader + 1) % members.len();
    let received = members[follower].logged_times("receiving a raft snapshot");
    fall_behind(
        &mut members,
        follower,
        "full",
        3000,
        2048,
        &[(SNAPSHOT_WRITE_DELAY, "1000")],
    );
    eventually(Duration::from_secs(60), "a transfer to start", || {
        (members[follower].logged_times("receiving a raft snapshot") > received).then_some(())
    });
    let taken = disks[follower].fill().expect("filling the disk");
    // Writes of the image fail (or the member stops on its full disk): either way no install.
    eventually(Duration::from_secs(60), "the image refused", || {
        let f = &members[follower];
        (f.logged("No space left on device") || f.logged("refusing a raft snapshot")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !members[follower].logged("installed a raft snapshot"),
        "installed on a full disk ({taken} bytes taken)"
    );
    disks[follower].free().expect("freeing the disk");
    // A consensus that could not start on the full disk made start-node.sh give up: start it
    // again, as systemd would.
    if members[follower].script_exited() {
        members[follower].start();
    }
    caught_up(&members, leader, follower);
    let f = &members[follower];
    assert!(
        f.logged("installed a raft snapshot"),
        "{}",
        f.log_lines("snapshot")
    );
    for leftover in ["db.incoming", "wal.incoming", "db.old", "wal.old"] {
        assert!(
            !f.data_dir.join(leftover).exists(),
            "{leftover} left behind"
        );
    }
    let snap = f.data_dir.join("snap");
    let incoming = std::fs::read_dir(&snap).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
        })
        .count()
    });
    assert_eq!(incoming, 0, "a received image left in {}", snap.display());
    for m in &members {
        assert!(!m.logged("panicked"), "{}", m.log_tail());
    }
    for m in &mut members {
        m.stop();
    }
    drop(disks);
}
