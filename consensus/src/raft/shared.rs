//! What the IPC thread reads without asking the raft thread: raft's position, the member table
//! and the counters behind `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::cluster::MemberInfo;

/// State the IPC thread reads without asking the raft thread.
#[derive(Default)]
pub(crate) struct Shared {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    /// The last index whose answers left before RocksDB had its batch (see
    /// [`super::apply::StateMachine::apply`]). While it is above `applied`, the IPC thread holds
    /// its reads back ([`Shared::settled`]).
    pub answered: AtomicU64,
    pub last_index: AtomicU64,
    pub revision: AtomicI64,
    pub members: Mutex<Vec<MemberInfo>>,
    pub proposals_committed: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_nanos: AtomicU64,
    /// fsyncs by duration, as `Metrics.fsyncBuckets` in the schema.
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS + 1],
    pub read_indexes: AtomicU64,
    pub linearizable_reads: AtomicU64,
    pub leader_changes: AtomicU64,
    /// Raft messages from peers dropped before raft saw them ([`super::core::Core::step`]).
    pub peer_messages_refused: AtomicU64,
    /// Peer TLS handshakes the peer gateway refused for the allowed CN or hostname.
    pub peer_cert_refused: AtomicU64,
    /// Raft snapshots sent (as reported), failed, received (installed or not needed), refused.
    pub snapshots_sent: AtomicU64,
    pub snapshots_send_failed: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshots_receive_failed: AtomicU64,
    /// Peer streams the peer gateway closed for an oversized frame or a malformed header.
    pub peer_frames_refused: AtomicU64,
    /// Outbound raft messages dropped, here (no raft stream, or the gateway too far behind)
    /// or by the peer gateway (peer not connected, its queue full).
    pub peer_messages_dropped: AtomicU64,
    /// Oversized frames that ended the raft stream or the write stream.
    pub stream_frames_refused: AtomicU64,
    /// Told when `applied` catches up with `answered` after answers left before RocksDB had their
    /// batch: the IPC thread's reads wait on it ([`Shared::settled`]) instead of spinning.
    pub settled_changed: tokio::sync::Notify,
    /// The newest compaction whose background pass has finished (0 before any), and its
    /// notice: `Compact` with `physical` waits for it, as in etcd.
    pub compacted: AtomicI64,
    pub compacted_changed: tokio::sync::Notify,
    /// The counter behind request IDs (the IPC and raft threads both hand them out).
    pub next_request: AtomicU64,
}

/// etcd's buckets for `etcd_disk_wal_fsync_duration_seconds`: 1 ms doubling up to 8.192 s.
pub(crate) const FSYNC_BUCKETS: usize = 14;

/// The bucket of an fsync that took `took`: the first whose bound (1 ms * 2^i) it does not
/// exceed, or [`FSYNC_BUCKETS`] when it exceeds them all.
pub(crate) fn fsync_bucket(took: Duration) -> usize {
    (0..FSYNC_BUCKETS)
        .find(|&i| took <= Duration::from_millis(1 << i))
        .unwrap_or(FSYNC_BUCKETS)
}

impl Shared {
    pub(crate) fn record_fsync(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.fsync_buckets[fsync_bucket(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether every answered write is in RocksDB, so that a read now sees all of them.
    pub(crate) fn settled(&self) -> bool {
        self.answered.load(Ordering::Acquire) <= self.applied.load(Ordering::Acquire)
    }

    /// Waits until [`Shared::settled`]: the raft thread writes the batch right after the answers,
    /// so this is microseconds, and only for a read that races an answer (or a RocksDB stall).
    pub(crate) async fn wait_settled(&self) {
        loop {
            let notified = self.settled_changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so that a notice between the two is not lost.
            notified.as_mut().enable();
            if self.settled() {
                return;
            }
            notified.await;
        }
    }

    /// The background pass of the compaction at `revision` (and every one before) is done.
    pub(crate) fn compacted_physically(&self, revision: i64) {
        self.compacted.fetch_max(revision, Ordering::AcqRel);
        self.compacted_changed.notify_waiters();
    }

    /// Waits until the background pass of the compaction at `revision` is done.
    pub(crate) async fn wait_compacted(&self, revision: i64) {
        loop {
            let notified = self.compacted_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.compacted.load(Ordering::Acquire) >= revision {
                return;
            }
            notified.await;
        }
    }

    /// Request IDs unique across members (as etcd's idutil): the member ID's low 16 bits, then a
    /// counter seeded from the clock at start, so a restarted member does not reuse its old IDs.
    pub(crate) fn request_id(&self, member_id: u64) -> u64 {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        (member_id << 48) | (id & ((1 << 48) - 1))
    }

    pub(crate) fn members(&self) -> Vec<MemberInfo> {
        self.members.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::{FSYNC_BUCKETS, Shared, fsync_bucket};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn a_read_waits_for_the_batch_of_answered_writes_without_spinning() {
        let shared = std::sync::Arc::new(Shared::default());
        shared.answered.store(5, Ordering::Release);
        shared.applied.store(4, Ordering::Release);
        let raft = shared.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            raft.applied.store(5, Ordering::Release);
            raft.settled_changed.notify_waiters();
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let waited = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), shared.wait_settled()).await
        });
        assert!(waited.is_ok(), "never woken");
        assert!(started.elapsed() >= Duration::from_millis(90));
        writer.join().unwrap();
        // Already settled: no wait at all.
        runtime.block_on(shared.wait_settled());
    }

    #[test]
    fn fsyncs_fall_in_etcds_buckets() {
        assert_eq!(fsync_bucket(Duration::from_micros(80)), 0);
        assert_eq!(fsync_bucket(Duration::from_millis(1)), 0);
        assert_eq!(fsync_bucket(Duration::from_micros(1001)), 1);
        assert_eq!(fsync_bucket(Duration::from_millis(3)), 2);
        assert_eq!(fsync_bucket(Duration::from_millis(8192)), FSYNC_BUCKETS - 1);
        assert_eq!(fsync_bucket(Duration::from_secs(9)), FSYNC_BUCKETS);
        let shared = Shared::default();
        shared.record_fsync(Duration::from_millis(3));
        shared.record_fsync(Duration::from_millis(4));
        assert_eq!(shared.fsync_buckets[2].load(Ordering::Relaxed), 2);
        assert_eq!(shared.fsyncs.load(Ordering::Relaxed), 2);
        assert_eq!(shared.fsync_nanos.load(Ordering::Relaxed), 7_000_000);
    }
}
