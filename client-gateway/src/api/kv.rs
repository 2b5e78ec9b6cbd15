//! etcd's v3 gRPC services: check each request the way etcd's gRPC layer does, then forward it
//! over the link to consensus. Methods the contract does not cover yet are answered UNIMPLEMENTED
//! by tonic (they are absent from our proto).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use prost::Message as _;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};
use tower::layer::util::{Identity, Stack};

use crate::http_api::HttpApiLayer;
use crate::json_api;
use crate::link::Link;
use crate::plane;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentRequest,
    DefragmentResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse,
    MemberListRequest, MemberListResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, StatusRequest, StatusResponse, TxnRequest,
    TxnResponse,
    cluster_server::{Cluster, ClusterServer},
    kv_server::{Kv, KvServer},
    maintenance_server::{Maintenance, MaintenanceServer},
};
use crate::validate;

/// etcd lets a gRPC message exceed `max-request-bytes` by this much (its gRPC overhead
/// allowance); the exact limit on the request itself is checked by each KV write below.
const GRPC_OVERHEAD_BYTES: u64 = 512 * 1024;

/// Limits consensus may change at re-registration.
pub struct Limits {
    max_txn_ops: AtomicU32,
}

impl Limits {
    pub fn new(max_txn_ops: u32) -> Self {
        Limits {
            max_txn_ops: AtomicU32::new(max_txn_ops),
        }
    }

    pub fn set_max_txn_ops(&self, n: u32) {
        self.max_txn_ops.store(n, Ordering::Relaxed);
    }

    fn max_txn_ops(&self) -> u32 {
        self.max_txn_ops.load(Ordering::Relaxed)
    }
}

/// KV messages up to this many times etcd's gRPC limit are still read, so that those over the
/// limit get grpc-go's answer (what etcd's clients show); larger ones get tonic's.
const OVERSIZE_READ_FACTOR: usize = 4;

/// grpc-go's refusal of a message over its limit, as etcd's gRPC server gives it.
fn message_too_large(len: usize, max_message: usize) -> Result<(), Status> {
    if len > max_message {
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {max_message})"
        )));
    }
    Ok(())
}

/// The gRPC services of one listener, behind etcd's plain HTTP endpoints.
pub type ClientRouter = Router<Stack<HttpApiLayer, Identity>>;

/// The router for one listener: `/health`, `/version`, `/metrics` and the JSON gateway under
/// `/v3/` (HTTP/1.1 or HTTP/2), then gRPC.
pub fn router(link: &Link, limits: &Arc<Limits>, max_request_bytes: u64) -> ClientRouter {
    let max_message = usize::try_from(max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES))
        .unwrap_or(usize::MAX);
    let kv = KvService {
        link: link.clone(),
        limits: limits.clone(),
        max_request_bytes,
        max_message,
    };
    let cluster = ClusterService { link: link.clone() };
    let maintenance = MaintenanceService { link: link.clone() };
    let json = json_api::Services {
        kv: kv.clone(),
        cluster: cluster.clone(),
        maintenance: maintenance.clone(),
    };
    Server::builder()
        .accept_http1(true)
        .layer(HttpApiLayer::new(link.clone(), json, max_message))
        .add_service(
            KvServer::new(kv)
                .max_decoding_message_size(max_message.saturating_mul(OVERSIZE_READ_FACTOR)),
        )
        .add_service(ClusterServer::new(cluster).max_decoding_message_size(max_message))
        .add_service(MaintenanceServer::new(maintenance).max_decoding_message_size(max_message))
}

#[derive(Clone)]
pub struct KvService {
    link: Link,
    limits: Arc<Limits>,
    max_request_bytes: u64,
    /// etcd's gRPC message limit: `max_request_bytes` plus its gRPC overhead allowance.
    max_message: usize,
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = r.into_inner();
        message_too_large(r.encoded_len(), self.max_message)?;
        validate::range(&r)?;
        self.link
            .call(move |s| plane::range(s, r))
            .await
            .map(Response::new)
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = r.into_inner();
        let len = r.encoded_len();
        message_too_large(len, self.max_message)?;
        validate::put(&r)?;
        let max = self.max_request_bytes;
        self.link
            .call(move |s| async move {
                validate::request_size(len, s.member_id, max)?;
                plane::put(s, r).await
            })
            .await
            .map(Response::new)
    }

    async fn delete_range(
        &self,
        r: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = r.into_inner();
        let len = r.encoded_len();
        message_too_large(len, self.max_message)?;
        validate::delete_range(&r)?;
        let max = self.max_request_bytes;
        self.link
            .call(move |s| async move {
                validate::request_size(len, s.member_id, max)?;
                plane::delete_range(s, r).await
            })
            .await
            .map(Response::new)
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = r.into_inner();
        let len = r.encoded_len();
        message_too_large(len, self.max_message)?;
        validate::txn(&r, self.limits.max_txn_ops())?;
        // A read-only txn never becomes a raft entry, so etcd does not check its size.
        let len = (!validate::txn_is_read_only(&r)).then_some(len);
        let max = self.max_request_bytes;
        self.link
            .call(move |s| async move {
                if let Some(len) = len {
                    validate::request_size(len, s.member_id, max)?;
                }
                plane::txn(s, r).await
            })
            .await
            .map(Response::new)
    }

    async fn compact(
        &self,
        r: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = r.into_inner();
        let len = r.encoded_len();
        message_too_large(len, self.max_message)?;
        let max = self.max_request_bytes;
        self.link
            .call(move |s| async move {
                validate::request_size(len, s.member_id, max)?;
                plane::compact(s, r).await
            })
            .await
            .map(Response::new)
    }
}

#[derive(Clone)]
pub struct ClusterService {
    link: Link,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // The contract's memberList has no `linearizable` flag yet; consensus picks.
        self.link.call(plane::member_list).await.map(Response::new)
    }
}

#[derive(Clone)]
pub struct MaintenanceService {
    link: Link,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = r.into_inner();
        self.link
            .call(move |s| plane::alarm(s, r))
            .await
            .map(Response::new)
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.link.call(plane::status).await.map(Response::new)
    }

    async fn defragment(
        &self,
        _r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.link.call(plane::defragment).await.map(Response::new)
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let revision = r.into_inner().revision;
        self.link
            .call(move |s| plane::hash_kv(s, revision))
            .await
            .map(Response::new)
    }

    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = r.into_inner().target_id;
        self.link
            .call(move |s| plane::move_leader(s, target))
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_messages_get_grpc_gos_answer() {
        assert!(message_too_large(2_097_152, 2_097_152).is_ok());
        let s = message_too_large(2_097_262, 2_097_152).unwrap_err();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        // The text etcd 3.4.23 gives for a Put of a 2097252-byte value under key "big".
        assert_eq!(
            s.message(),
            "grpc: received message larger than max (2097262 vs. 2097152)"
        );
    }
}
