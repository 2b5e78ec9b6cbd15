//! etcd's `Cluster` service: forwarded to consensus over the [`Link`] as it is.

use tonic::{Request, Response, Status};

use crate::consensus::link::Link;
use crate::proto::etcdserverpb::{MemberListRequest, MemberListResponse, cluster_server::Cluster};

#[derive(Clone)]
pub struct ClusterService {
    pub(crate) link: Link,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // The contract's memberList has no `linearizable` flag yet; consensus picks.
        self.link.member_list().await.map(Response::new)
    }
}
