//! etcd's `Maintenance` service: forwarded to consensus over the [`Link`] as it is.

use tonic::{Request, Response, Status};

use crate::consensus::link::Link;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, MoveLeaderRequest, MoveLeaderResponse, StatusRequest, StatusResponse,
    maintenance_server::Maintenance,
};

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

    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = r.into_inner().target_id;
        self.link.move_leader(target).await.map(Response::new)
    }
}
