//! What a [`Session`] asks of consensus, one method per RPC: encode the request, send it, decode
//! the answer, fill in the header. Writes (put, deleteRange, a txn that writes) go on the
//! registration's write stream ([`Writes`]); the rest are calls on its `ClientPlane`.
//!
//! Capnp is `!Send`, so a session never leaves the task of the [`link`](super::link), which in
//! the gateway runs on the gRPC thread itself.

use schema::member_capnp::client_plane;
use tonic::Status;

use crate::consensus::from_capnp;
use crate::consensus::to_capnp;
use crate::consensus::writes::Writes;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvResponse, MemberListResponse,
    MoveLeaderResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    SnapshotResponse, StatusResponse, TxnRequest, TxnResponse,
};

/// Where the chunks of a snapshot go: a bounded queue to the gRPC stream, so that consensus is
/// read no faster than the client takes them.
pub type SnapshotSink = tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>;

/// The plane and write stream of the current registration, with the identity it came with.
#[derive(Clone)]
pub struct Session {
    pub plane: client_plane::Client,
    pub writes: Writes,
    pub cluster_id: u64,
    pub member_id: u64,
}

impl Session {
    /// Clients rely on the header's cluster and member IDs; fill them if consensus left them out.
    fn fill(&self, header: &mut Option<ResponseHeader>) {
        let h = header.get_or_insert_with(ResponseHeader::default);
        if h.cluster_id == 0 {
            h.cluster_id = self.cluster_id;
        }
        if h.member_id == 0 {
            h.member_id = self.member_id;
        }
    }
}

/// Reads a `(error :Status, response :X)` result: the refusal if set, else the converted response.
macro_rules! answer {
    ($reply:expr, $convert:path) => {{
        let reply = $reply.map_err(from_capnp::call_failed)?;
        let results = reply.get().map_err(from_capnp::malformed)?;
        if results.has_error() {
            return Err(from_capnp::refusal(
                results.get_error().map_err(from_capnp::malformed)?,
            ));
        }
        if !results.has_response() {
            return Err(Status::internal(
                "client gateway: consensus answered with neither an error nor a response",
            ));
        }
        $convert(results.get_response().map_err(from_capnp::malformed)?)
            .map_err(from_capnp::malformed)?
    }};
}

impl Session {
    /// Starts etcd's Maintenance.Snapshot: consensus takes the image, then a task of the link
    /// reads it out chunk by chunk into `sink` ([`pump_snapshot`]). A refusal comes back here.
    pub async fn snapshot(self, sink: SnapshotSink) -> Result<(), Status> {
        let reply = self
            .plane
            .snapshot_request()
            .send()
            .promise
            .await
            .map_err(from_capnp::call_failed)?;
        let results = reply.get().map_err(from_capnp::malformed)?;
        if results.has_error() {
            return Err(from_capnp::refusal(
                results.get_error().map_err(from_capnp::malformed)?,
            ));
        }
        let reader = results.get_reader().map_err(from_capnp::malformed)?;
        let mut header = Some(
            from_capnp::header_of(results.has_header(), results.get_header())
                .map_err(from_capnp::malformed)?,
        );
        self.fill(&mut header);
        tokio::task::spawn_local(pump_snapshot(
            reader,
            results.get_total_bytes(),
            header,
            sink,
        ));
        Ok(())
    }

    pub async fn range(self, req: RangeRequest) -> Result<RangeResponse, Status> {
        let mut call = self.plane.range_request();
        to_capnp::range(&req, call.get().init_request());
        let mut resp = answer!(call.send().promise.await, from_capnp::range);
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// `fits` is etcd's limit on the raft entry, which holds the member ID and so can only be
    /// checked now; a refusal sends nothing.
    pub async fn put(
        self,
        req: PutRequest,
        fits: impl FnOnce(u64) -> Result<(), Status>,
    ) -> Result<PutResponse, Status> {
        fits(self.member_id)?;
        let mut resp = self.writes.put(req).await?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// `fits` as for [`put`](Self::put).
    pub async fn delete_range(
        self,
        req: DeleteRangeRequest,
        fits: impl FnOnce(u64) -> Result<(), Status>,
    ) -> Result<DeleteRangeResponse, Status> {
        fits(self.member_id)?;
        let mut resp = self.writes.delete_range(req).await?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// A read-only txn is served without raft, so it stays a `ClientPlane` call like a range, and
    /// etcd does not check its size; `fits` (as for [`put`](Self::put)) only applies to a txn
    /// that writes.
    pub async fn txn(
        self,
        req: TxnRequest,
        read_only: bool,
        fits: impl FnOnce(u64) -> Result<(), Status>,
    ) -> Result<TxnResponse, Status> {
        let mut resp = if read_only {
            let mut call = self.plane.txn_request();
            to_capnp::txn(&req, call.get().init_request())?;
            answer!(call.send().promise.await, from_capnp::txn)
        } else {
            fits(self.member_id)?;
            self.writes.txn(req).await?
        };
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// `fits` as for [`put`](Self::put).
    pub async fn compact(
        self,
        req: CompactionRequest,
        fits: impl FnOnce(u64) -> Result<(), Status>,
    ) -> Result<CompactionResponse, Status> {
        fits(self.member_id)?;
        let mut call = self.plane.compact_request();
        to_capnp::compaction(&req, call.get().init_request());
        let mut resp = answer!(call.send().promise.await, from_capnp::compaction);
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn member_list(self) -> Result<MemberListResponse, Status> {
        let call = self.plane.member_list_request();
        let mut resp = answer!(call.send().promise.await, from_capnp::member_list);
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn defragment(self) -> Result<DefragmentResponse, Status> {
        let call = self.plane.defragment_request();
        let mut resp = answer!(call.send().promise.await, from_capnp::defragment);
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn hash_kv(self, revision: i64) -> Result<HashKvResponse, Status> {
        let mut call = self.plane.hash_kv_request();
        call.get().set_revision(revision);
        let mut resp = answer!(call.send().promise.await, from_capnp::hash_kv);
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn move_leader(self, target_id: u64) -> Result<MoveLeaderResponse, Status> {
        let mut call = self.plane.move_leader_request();
        call.get().set_target_id(target_id);
        let mut resp = answer!(call.send().promise.await, from_capnp::move_leader);
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn status(self) -> Result<StatusResponse, Status> {
        let call = self.plane.status_request();
        let mut resp = answer!(call.send().promise.await, from_capnp::status);
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn metrics(self) -> Result<MemberMetrics, Status> {
        let reply = self
            .plane
            .metrics_request()
            .send()
            .promise
            .await
            .map_err(from_capnp::call_failed)?;
        let m = reply
            .get()
            .and_then(|r| r.get_metrics())
            .map_err(from_capnp::malformed)?;
        let fsync_buckets = if m.has_fsync_buckets() {
            m.get_fsync_buckets()
                .map_err(from_capnp::malformed)?
                .iter()
                .collect()
        } else {
            Vec::new()
        };
        Ok(MemberMetrics {
            member_id: self.member_id,
            has_leader: m.get_has_leader(),
            is_leader: m.get_is_leader(),
            leader_changes: m.get_leader_changes(),
            peer_messages_refused: m.get_peer_messages_refused(),
            peer_cert_refused: m.get_peer_cert_refused(),
            peer_frames_refused: m.get_peer_frames_refused(),
            peer_messages_dropped: m.get_peer_messages_dropped(),
            stream_frames_refused: m.get_stream_frames_refused(),
            snapshots_sent: m.get_snapshots_sent(),
            snapshots_send_failed: m.get_snapshots_send_failed(),
            snapshots_received: m.get_snapshots_received(),
            snapshots_receive_failed: m.get_snapshots_receive_failed(),
            committed_index: m.get_committed_index(),
            applied_index: m.get_applied_index(),
            proposals_failed: m.get_proposals_failed(),
            revision: m.get_revision(),
            db_size: m.get_db_size(),
            fsyncs: m.get_fsyncs(),
            fsync_nanos: m.get_fsync_nanos(),
            fsync_buckets,
        })
    }

    /// The contract has no alarms yet, so there is never an active one. A GET still asks
    /// consensus (for a live header, and so an unreachable member does not look healthy);
    /// `etcdctl endpoint health` needs this to answer. Raising or clearing alarms is refused.
    pub async fn alarm(self, req: AlarmRequest) -> Result<AlarmResponse, Status> {
        const GET: i32 = 0;
        if req.action != GET {
            return Err(Status::unimplemented(
                "client gateway: activating or deactivating alarms is not supported",
            ));
        }
        let status = self.status().await?;
        Ok(AlarmResponse {
            header: status.header,
            alarms: vec![],
        })
    }
}

/// What `/metrics` shows of consensus (`Metrics` in the schema).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemberMetrics {
    pub member_id: u64,
    pub has_leader: bool,
    pub is_leader: bool,
    pub leader_changes: u64,
    pub peer_messages_refused: u64,
    /// Peer TLS handshakes refused by `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`.
    pub peer_cert_refused: u64,
    /// Peer streams closed for an oversized frame or a malformed header.
    pub peer_frames_refused: u64,
    /// Raft messages dropped on their way between members (raft resends).
    pub peer_messages_dropped: u64,
    /// Oversized frames that ended consensus's raft or write stream.
    pub stream_frames_refused: u64,
    /// Raft snapshots sent, failed to send, received, refused.
    pub snapshots_sent: u64,
    pub snapshots_send_failed: u64,
    pub snapshots_received: u64,
    pub snapshots_receive_failed: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub proposals_failed: u64,
    pub revision: i64,
    pub db_size: i64,
    pub fsyncs: u64,
    pub fsync_nanos: u64,
    /// Per bucket, not cumulative; empty from a consensus that does not count them.
    pub fsync_buckets: Vec<u64>,
}

/// Reads a snapshot out of consensus into `sink` until it ends, fails, or the client goes away
/// (then dropping `reader` lets consensus delete the image). The header rides on the first
/// response, as etcd 3.5 sends it; `remaining_bytes` counts what follows each blob.
async fn pump_snapshot(
    reader: schema::member_capnp::snapshot_reader::Client,
    total: u64,
    mut header: Option<ResponseHeader>,
    sink: SnapshotSink,
) {
    let mut remaining = total;
    loop {
        let chunk = async {
            let reply = reader
                .read_request()
                .send()
                .promise
                .await
                .map_err(from_capnp::call_failed)?;
            let r = reply.get().map_err(from_capnp::malformed)?;
            if r.has_error() {
                return Err(from_capnp::refusal(
                    r.get_error().map_err(from_capnp::malformed)?,
                ));
            }
            Ok(r.get_chunk().map_err(from_capnp::malformed)?.to_vec())
        }
        .await;
        let next = match chunk {
            Ok(blob) if blob.is_empty() && remaining == 0 => return,
            Ok(blob) if blob.is_empty() || blob.len() as u64 > remaining => {
                Err(Status::internal(format!(
                    "client gateway: the snapshot from consensus does not match its length \
                     ({total} bytes; {remaining} left, {} more came)",
                    blob.len()
                )))
            }
            Ok(blob) => {
                remaining -= blob.len() as u64;
                Ok(SnapshotResponse {
                    header: header.take(),
                    remaining_bytes: remaining,
                    blob,
                })
            }
            Err(e) => Err(e),
        };
        let failed = next.is_err();
        if sink.send(next).await.is_err() || failed {
            return;
        }
    }
}
