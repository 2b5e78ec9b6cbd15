//! etcd's `KV` service: check each request the way etcd's gRPC layer does
//! ([`validate`]), then forward it over the [`Link`] to consensus.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::api::validate;
use crate::consensus::link::Link;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};

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

/// grpc-go's refusal of a message over its limit, as etcd's gRPC server gives it.
fn message_too_large(len: usize, max_message: usize) -> Result<(), Status> {
    if len > max_message {
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {max_message})"
        )));
    }
    Ok(())
}

#[derive(Clone)]
pub struct KvService {
    pub(crate) link: Link,
    pub(crate) limits: Arc<Limits>,
    pub(crate) max_request_bytes: u64,
    /// etcd's gRPC message limit: `max_request_bytes` plus its gRPC overhead allowance.
    pub(crate) max_message: usize,
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = r.into_inner();
        message_too_large(r.encoded_len(), self.max_message)?;
        validate::range(&r)?;
        self.link.range(r).await.map(Response::new)
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = r.into_inner();
        let len = r.encoded_len();
        message_too_large(len, self.max_message)?;
        validate::put(&r)?;
        let max = self.max_request_bytes;
        let fits = move |member_id| validate::request_size(len, member_id, max);
        self.link.put(r, fits).await.map(Response::new)
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
        let fits = move |member_id| validate::request_size(len, member_id, max);
        self.link.delete_range(r, fits).await.map(Response::new)
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = r.into_inner();
        let len = r.encoded_len();
        message_too_large(len, self.max_message)?;
        validate::txn(&r, self.limits.max_txn_ops())?;
        // A read-only txn never becomes a raft entry, so etcd does not check its size.
        let read_only = validate::txn_is_read_only(&r);
        let max = self.max_request_bytes;
        let fits = move |member_id| validate::request_size(len, member_id, max);
        self.link.txn(r, read_only, fits).await.map(Response::new)
    }

    async fn compact(
        &self,
        r: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = r.into_inner();
        let len = r.encoded_len();
        message_too_large(len, self.max_message)?;
        let max = self.max_request_bytes;
        let fits = move |member_id| validate::request_size(len, member_id, max);
        self.link.compact(r, fits).await.map(Response::new)
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
