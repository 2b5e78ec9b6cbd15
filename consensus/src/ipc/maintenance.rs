//! The client plane's maintenance and cluster calls: MemberList, Status, Defragment, MoveLeader,
//! HashKV, Snapshot and the metrics behind `/metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use schema::member_capnp::{client_plane, snapshot_reader};
use tracing::info;

use super::State;
use crate::cluster;
use crate::codec;
use crate::etcd_error::{self as ee, EtcdError};
use crate::mvcc;
use crate::raft::command::Command;
use crate::storage::image::Image;

/// How often MoveLeader looks whether its target leads yet (etcd: every tick, 100 ms by default).
const LEADER_TRANSFER_POLL: Duration = Duration::from_millis(20);

pub(super) async fn member_list(
    state: &State,
    _: client_plane::MemberListParams,
    mut results: client_plane::MemberListResults,
) -> capnp::Result<()> {
    let members = state.ctx.shared.members();
    let mut r = results.get().init_response();
    // etcd's cluster responses carry no revision.
    codec::write_header(r.reborrow().init_header(), &state.header(0));
    let mut list = r.init_members(members.len() as u32);
    for (i, m) in members.iter().enumerate() {
        cluster::write_member(list.reborrow().get(i as u32), m);
    }
    Ok(())
}

pub(super) async fn status(
    state: &State,
    _: client_plane::StatusParams,
    mut results: client_plane::StatusResults,
) -> capnp::Result<()> {
    state.settled().await;
    let s = &state.ctx.shared;
    let revision = s.revision.load(Ordering::Acquire);
    let mut r = results.get().init_response();
    codec::write_header(r.reborrow().init_header(), &state.header(revision));
    // The etcd release whose API and behaviour this member matches.
    r.set_version(crate::ETCD_VERSION);
    let size = state.ctx.db.size();
    r.set_db_size(size);
    r.set_db_size_in_use(size);
    r.set_leader(s.leader.load(Ordering::Relaxed));
    r.set_raft_index(s.commit.load(Ordering::Relaxed));
    r.set_raft_term(s.term.load(Ordering::Relaxed));
    r.set_raft_applied_index(s.applied.load(Ordering::Relaxed));
    r.set_is_learner(false);
    Ok(())
}

pub(super) async fn defragment(
    state: &State,
    _: client_plane::DefragmentParams,
    mut results: client_plane::DefragmentResults,
) -> capnp::Result<()> {
    let db = state.ctx.db.clone();
    let took = or_refuse!(
        results,
        (state.pools.maintenance)
            .run(move || {
                let started = std::time::Instant::now();
                db.defragment();
                started.elapsed()
            })
            .await
    );
    info!(
        ?took,
        size = state.ctx.db.size(),
        "defragmented the state machine"
    );
    let revision = state.ctx.shared.revision.load(Ordering::Acquire);
    let r = results.get().init_response();
    codec::write_header(r.init_header(), &state.header(revision));
    Ok(())
}

pub(super) async fn move_leader(
    state: &State,
    params: client_plane::MoveLeaderParams,
    mut results: client_plane::MoveLeaderResults,
) -> capnp::Result<()> {
    let target = params.get()?.get_target_id();
    let shared = &state.ctx.shared;
    let me = state.ctx.identity.member_id;
    or_refuse!(
        results,
        cluster::check_transferee(
            &shared.members(),
            shared.leader.load(Ordering::Relaxed),
            me,
            target
        )
    );
    if target != me {
        or_refuse!(results, state.send(Command::TransferLeader { target }));
        // As etcd: look again every so often until the target leads, up to the request
        // timeout.
        let deadline = tokio::time::Instant::now() + state.ctx.request_timeout;
        while shared.leader.load(Ordering::Relaxed) != target {
            if tokio::time::Instant::now() >= deadline {
                refuse!(results, ee::leader_transfer_timeout());
            }
            tokio::time::sleep(LEADER_TRANSFER_POLL).await;
        }
    }
    let revision = shared.revision.load(Ordering::Acquire);
    let r = results.get().init_response();
    codec::write_header(r.init_header(), &state.header(revision));
    Ok(())
}

pub(super) async fn hash_kv(
    state: &State,
    params: client_plane::HashKvParams,
    mut results: client_plane::HashKvResults,
) -> capnp::Result<()> {
    let asked = params.get()?.get_revision();
    state.settled().await;
    let db = state.ctx.db.clone();
    let answer = (state.pools.maintenance)
        .run(move || mvcc::View::snapshot(&db).hash_kv_at(asked))
        .await
        .and_then(|a| a);
    let (hash, compact_revision, revision) = or_refuse!(results, answer);
    let mut r = results.get().init_response();
    codec::write_header(r.reborrow().init_header(), &state.header(revision));
    r.set_hash(hash);
    r.set_compact_revision(compact_revision);
    Ok(())
}

pub(super) async fn metrics(
    state: &State,
    _: client_plane::MetricsParams,
    mut results: client_plane::MetricsResults,
) -> capnp::Result<()> {
    let s = &state.ctx.shared;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut m = results.get().init_metrics();
    m.set_proposals_committed(load(&s.proposals_committed));
    m.set_proposals_failed(load(&s.proposals_failed));
    m.set_fsyncs(load(&s.fsyncs));
    m.set_fsync_nanos(load(&s.fsync_nanos));
    m.set_read_indexes(load(&s.read_indexes));
    m.set_linearizable_reads(load(&s.linearizable_reads));
    m.set_applied_index(load(&s.applied));
    m.set_is_leader(load(&s.leader) == state.ctx.identity.member_id);
    m.set_leader_changes(load(&s.leader_changes));
    m.set_revision(s.revision.load(Ordering::Acquire));
    m.set_has_leader(load(&s.leader) != 0);
    m.set_committed_index(load(&s.commit));
    m.set_db_size(state.ctx.db.size());
    m.set_peer_messages_refused(load(&s.peer_messages_refused));
    m.set_peer_cert_refused(load(&s.peer_cert_refused));
    m.set_peer_frames_refused(load(&s.peer_frames_refused));
    m.set_peer_messages_dropped(load(&s.peer_messages_dropped));
    m.set_stream_frames_refused(load(&s.stream_frames_refused));
    m.set_snapshots_sent(load(&s.snapshots_sent));
    m.set_snapshots_send_failed(load(&s.snapshots_send_failed));
    m.set_snapshots_received(load(&s.snapshots_received));
    m.set_snapshots_receive_failed(load(&s.snapshots_receive_failed));
    let mut buckets = m.init_fsync_buckets(s.fsync_buckets.len() as u32);
    for (i, b) in s.fsync_buckets.iter().enumerate() {
        buckets.set(i as u32, load(b));
    }
    Ok(())
}

/// An image being read by a gateway (a `snapshot save`, a raft snapshot); dropped (and its checkpoint deleted) when the
/// gateway drops its reference, or this process loses the gateway.
pub(super) struct SnapshotReader {
    image: std::sync::Arc<std::sync::Mutex<Image>>,
    pool: super::pool::Pool,
}

impl SnapshotReader {
    /// Reads `image` out on `pool`'s thread.
    pub(super) fn new(image: Image, pool: super::pool::Pool) -> SnapshotReader {
        SnapshotReader {
            image: std::sync::Arc::new(std::sync::Mutex::new(image)),
            pool,
        }
    }
}

impl snapshot_reader::Server for SnapshotReader {
    async fn read(
        self: CapRc<Self>,
        _: snapshot_reader::ReadParams,
        mut results: snapshot_reader::ReadResults,
    ) -> capnp::Result<()> {
        let image = self.image.clone();
        let chunk = self
            .pool
            .run(move || {
                let mut image = image
                    .lock()
                    .map_err(|_| ee::internal("a snapshot reader failed"))?;
                image
                    .read_chunk(schema::limits::SNAPSHOT_CHUNK_BYTES)
                    .map_err(ee::internal)
            })
            .await
            .and_then(|r| r);
        let chunk = or_refuse!(results, chunk);
        results.get().set_chunk(&chunk);
        Ok(())
    }
}

/// etcd's Maintenance.Snapshot: a checkpoint of the state machine now (on the maintenance
/// thread: it flushes RocksDB), read out by the caller through a [`SnapshotReader`].
pub(super) async fn snapshot(
    state: &State,
    _: client_plane::SnapshotParams,
    mut results: client_plane::SnapshotResults,
) -> capnp::Result<()> {
    state.settled().await;
    let db = state.ctx.db.clone();
    let dir = state.ctx.data_dir.clone();
    let image = (state.pools.maintenance)
        .run(move || Image::create(&db, &dir).map_err(ee::internal))
        .await
        .and_then(|r| r);
    let image = or_refuse!(results, image);
    info!(
        bytes = image.total_bytes(),
        "sending a snapshot of the state machine"
    );
    let revision = state.ctx.shared.revision.load(Ordering::Acquire);
    let mut r = results.get();
    r.set_total_bytes(image.total_bytes());
    codec::write_header(r.reborrow().init_header(), &state.header(revision));
    let reader: snapshot_reader::Client =
        capnp_rpc::new_client(SnapshotReader::new(image, state.pools.maintenance.clone()));
    r.set_reader(reader);
    Ok(())
}
