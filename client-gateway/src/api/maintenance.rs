//! etcd's `Maintenance` service: forwarded to consensus over the [`Link`] as it is.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::consensus::link::Link;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse, maintenance_server::Maintenance,
};

/// Chunks queued per snapshot stream (each up to `schema::limits::SNAPSHOT_CHUNK_BYTES`): the
/// gateway holds at most this many at once, whatever the snapshot's size.
const SNAPSHOT_QUEUE: usize = 2;

/// The chunks of one snapshot on their way to the client.
pub struct SnapshotChunks(mpsc::Receiver<Result<SnapshotResponse, Status>>);

impl futures::Stream for SnapshotChunks {
    type Item = Result<SnapshotResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[derive(Clone)]
pub struct MaintenanceService {
    pub(crate) link: Link,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = r.into_inner();
        self.link.alarm(r).await.map(Response::new)
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.link.status().await.map(Response::new)
    }

    async fn defragment(
        &self,
        _r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.link.defragment().await.map(Response::new)
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let revision = r.into_inner().revision;
        self.link.hash_kv(revision).await.map(Response::new)
    }

    type SnapshotStream = SnapshotChunks;

    async fn snapshot(
        &self,
        _r: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotChunks>, Status> {
        let (sink, chunks) = mpsc::channel(SNAPSHOT_QUEUE);
        self.link.snapshot(sink).await?;
        Ok(Response::new(SnapshotChunks(chunks)))
    }

    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = r.into_inner().target_id;
        self.link.move_leader(target).await.map(Response::new)
    }
}
