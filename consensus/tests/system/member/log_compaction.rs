//! The raft log's compaction: with etcd's `--snapshot-count` and `--snapshot-catchup-entries`,
//! every member's WAL stays a few segments long however many writes go by, and a member restarted
//! (all three at once, with kill -9) starts from what is left and serves every write.

use std::path::Path;
use std::time::Duration;

use crate::support::addresses::LOG_COMPACTION;
use crate::support::*;

const PUTS: usize = 20_000;
/// 4 KiB values: 80 MB of raft log in all, five 16 MiB segments and more without compaction.
const VALUE_BYTES: usize = 4096;

fn key(i: usize) -> String {
    format!("lc/{i:05}")
}

fn value(i: usize) -> String {
    let unit = format!("{i:05}-");
    unit.repeat(VALUE_BYTES / unit.len() + 1)[..VALUE_BYTES].to_string()
}

/// The WAL's segment files (the spare being prepared included) and their bytes on disk.
fn wal_segments(data_dir: &Path) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(data_dir.join("wal")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".wal") {
            count += 1;
            bytes += e.metadata().unwrap().len();
        }
    }
    (count, bytes)
}

#[test]
fn the_raft_log_stays_bounded_and_a_restart_reads_only_what_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let knobs = "ETCD_SNAPSHOT_COUNT=\"1000\"\nETCD_SNAPSHOT_CATCHUP_ENTRIES=\"500\"\n";
    let mut members = http_cluster(tmp.path(), "lc", &LOG_COMPACTION, knobs, &[]);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    put_concurrently(&endpoints, 32, PUTS, |i| (key(i), value(i)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Every member compacts its own log once it applied the writes; followers may lag a little.
    for m in &members {
        eventually(
            Duration::from_secs(30),
            &format!("{}'s WAL to shrink", m.name),
            || {
                let (count, bytes) = wal_segments(&m.data_dir);
                (count <= 3 && bytes <= 3 * (16 << 20)).then_some(())
            },
        );
        assert!(m.logged("raft log compacted"), "{}", m.log_tail());
    }

    // Every member at once, with kill -9: RocksDB keeps what its last flush persisted, the
    // rest is applied again from the retained log.
    for m in &members {
        m.kill9("consensus");
    }
    for m in &mut members {
        m.kill9_all();
    }
    for m in &mut members {
        m.start();
    }
    for m in &members {
        wait_healthy(m, Duration::from_secs(60));
        let log = m.log_tail();
        assert!(
            !log.contains("compacted only through") && !log.contains("panicked"),
            "{log}"
        );
    }
    rt.block_on(async {
        for endpoint in &endpoints {
            let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                .await
                .unwrap();
            // Pages of 500 keys (2 MB), under the client's 4 MiB message limit.
            let mut seen = 0;
            let mut from = key(0);
            loop {
                let opts = etcd_client::GetOptions::new()
                    .with_range("lc0")
                    .with_limit(500);
                let got = c.get(from.clone(), Some(opts)).await.unwrap();
                for kv in got.kvs() {
                    assert_eq!(kv.key_str().unwrap(), key(seen), "{endpoint}");
                    assert_eq!(
                        kv.value_str().unwrap(),
                        value(seen),
                        "{endpoint}: {}",
                        key(seen)
                    );
                    seen += 1;
                }
                if !got.more() {
                    break;
                }
                from = key(seen);
            }
            assert_eq!(seen, PUTS, "{endpoint}");
        }
    });
    members[0].ctl_ok(&["put", "after", "restart"]);
    for m in &mut members {
        m.stop();
    }
}
