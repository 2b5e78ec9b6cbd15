//! The checks a request passes before it is proposed, as etcd's gRPC layer makes them:
//! [`check_range`], [`check_put`], [`check_delete`], [`check_txn`]. The rules themselves are
//! [`schema::rules`], which the client gateway runs too; here they read consensus's own request
//! types, and nothing invalid reaches the raft log whatever a gateway sent.

use schema::rules::{self, Op};

use super::types::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use crate::etcd_error::EtcdError;

fn range_view(r: &RangeRequest) -> rules::Range<'_> {
    rules::Range {
        key: &r.key,
        sort_order: r.sort_order,
        sort_target: r.sort_target,
    }
}

fn put_view(p: &PutRequest) -> rules::Put<'_> {
    rules::Put {
        key: &p.key,
        has_value: !p.value.is_empty(),
        lease: p.lease,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

fn delete_view(d: &DeleteRangeRequest) -> rules::Delete<'_> {
    rules::Delete {
        key: &d.key,
        range_end: &d.range_end,
    }
}

impl rules::Txn for TxnRequest {
    fn compares(&self) -> usize {
        self.compare.len()
    }

    fn compare_key_missing(&self) -> bool {
        self.compare.iter().any(|c| c.key.is_empty())
    }

    fn branch(&self, success: bool) -> impl ExactSizeIterator<Item = Op<'_, Self>> {
        let ops = if success {
            &self.success
        } else {
            &self.failure
        };
        ops.iter().map(|op| match op {
            RequestOp::Range(r) => Op::Range(range_view(r)),
            RequestOp::Put(p) => Op::Put(put_view(p)),
            RequestOp::DeleteRange(d) => Op::Delete(delete_view(d)),
            RequestOp::Txn(t) => Op::Txn(t),
        })
    }
}

pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    Ok(rules::range(range_view(r))?)
}

pub fn check_put(p: &PutRequest) -> Result<(), EtcdError> {
    Ok(rules::put(put_view(p))?)
}

pub fn check_delete(d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    Ok(rules::delete(delete_view(d))?)
}

/// etcd's checks of a txn ([`rules::txn`]).
pub fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    Ok(rules::txn(t, u32::try_from(max_ops).unwrap_or(u32::MAX))?)
}

/// Whether etcd serves `t` without raft ([`rules::txn_is_read_only`]).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    rules::txn_is_read_only(t)
}

/// Whether a read touches single keys only (no `range_end` in any range or compare, nested txns
/// included): a few seeks at most, cheap enough to serve where it arrives.
pub fn is_point_read(t: &TxnRequest) -> bool {
    t.compare.iter().all(|c| c.range_end.is_empty())
        && t.success.iter().chain(&t.failure).all(|op| match op {
            RequestOp::Range(r) => r.range_end.is_empty(),
            RequestOp::Txn(n) => is_point_read(n),
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => true,
        })
}
