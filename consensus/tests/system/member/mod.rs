//! Whole members, started through `scripts/start-node.sh` and driven with the real `etcdctl`,
//! by topic: how a cluster forms (and the default member), recovery from crashes and lost
//! quorums, how followers apply and when reads see writes, the raft log's compaction, raft
//! snapshots, and maintenance.

mod apply_and_reads;
mod formation;
mod log_compaction;
mod maintenance;
mod raft_snapshot;
mod recovery;

use crate::support::Member;

pub fn value_of(m: &Member, key: &str, extra: &[&str]) -> Option<String> {
    let mut args = vec!["get", key, "--print-value-only"];
    args.extend_from_slice(extra);
    let out = m.etcdctl(&args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
