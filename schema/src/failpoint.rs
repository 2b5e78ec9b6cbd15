//! Test-only failpoints, in the spirit of etcd's gofail: environment variables that widen a window
//! a test must hit, and that nobody sets in production.

use std::time::Duration;

use tracing::warn;

/// consensus: milliseconds to pause between answering applied writes and writing them to RocksDB.
pub const APPLY_WRITE_DELAY: &str = "ETCDRS_FAILPOINT_APPLY_WRITE_DELAY_MS";
/// consensus: milliseconds a follower holds each append acknowledgement before sending it (its
/// heartbeat responses still leave at once).
pub const APPEND_ACK_DELAY: &str = "ETCDRS_FAILPOINT_APPEND_ACK_DELAY_MS";
/// peer gateway: milliseconds every batch of raft messages waits before it leaves, as if the
/// network between members were that slow.
pub const PEER_SEND_DELAY: &str = "ETCDRS_FAILPOINT_PEER_SEND_DELAY_MS";

/// consensus: when set (to anything), the raft thread panics as it starts, as a bug or raft-rs's
/// `fatal!` would, to show that the whole process stops.
pub const RAFT_THREAD_PANIC: &str = "ETCDRS_FAILPOINT_RAFT_THREAD_PANIC";

/// consensus: a file path; while that file exists, the next read of a key's newest version made
/// while applying an entry fails as a storage error would, and the file is removed (so the
/// failure happens once, and not again after the restart it causes).
pub const APPLY_READ_FAIL_ONCE: &str = "ETCDRS_FAILPOINT_APPLY_READ_FAIL_ONCE";

/// consensus: when set (to anything), a start from an empty data dir does not ask the other
/// members whether they know it already, so that a test reaches the second line of defence (a
/// leader's heartbeat that commits past the empty log).
pub const SKIP_BOOTSTRAP_CHECK: &str = "ETCDRS_FAILPOINT_SKIP_BOOTSTRAP_CHECK";

/// consensus: milliseconds to pause before writing each chunk of a raft snapshot being received,
/// so that a test can kill a member in the middle of a transfer.
pub const SNAPSHOT_WRITE_DELAY: &str = "ETCDRS_FAILPOINT_SNAPSHOT_WRITE_DELAY_MS";
/// consensus: milliseconds to pause between a raft snapshot install's commit point (its marker
/// file) and the swap of the directories, so that a test can kill a member right there.
pub const SNAPSHOT_INSTALL_PAUSE: &str = "ETCDRS_FAILPOINT_SNAPSHOT_INSTALL_PAUSE_MS";

/// Whether the switch failpoint `name` is set.
pub fn set(name: &str) -> bool {
    let on = std::env::var_os(name).is_some();
    if on {
        warn!("failpoint {name} is set");
    }
    on
}

/// The pause failpoint `name` asks for, if it is set; a value that is not a whole number of
/// milliseconds is ignored with a warning.
pub fn pause(name: &str) -> Option<Duration> {
    let ms = std::env::var(name).ok()?;
    match ms.parse::<u64>() {
        Ok(ms) => {
            warn!("failpoint {name}={ms}: pausing {ms} ms");
            Some(Duration::from_millis(ms))
        }
        Err(_) => {
            warn!("ignoring {name}={ms:?}: not a number of milliseconds");
            None
        }
    }
}
