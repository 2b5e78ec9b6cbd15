//! The etcd v3 wire types and gRPC services generated from `proto/`.

#[allow(clippy::all, clippy::pedantic)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// What etcd's request rules ([`schema::rules`]) read of the protobuf messages; the client
/// gateway's checks run the rules over these.
mod rules_views {
    use schema::rules::{self, Op};

    use super::etcdserverpb::{
        DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest, request_op::Request,
    };

    impl RangeRequest {
        pub fn view(&self) -> rules::Range<'_> {
            rules::Range {
                key: &self.key,
                sort_order: self.sort_order,
                sort_target: self.sort_target,
            }
        }
    }

    impl PutRequest {
        pub fn view(&self) -> rules::Put<'_> {
            rules::Put {
                key: &self.key,
                has_value: !self.value.is_empty(),
                lease: self.lease,
                ignore_value: self.ignore_value,
                ignore_lease: self.ignore_lease,
            }
        }
    }

    impl DeleteRangeRequest {
        pub fn view(&self) -> rules::Delete<'_> {
            rules::Delete {
                key: &self.key,
                range_end: &self.range_end,
            }
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
            ops.iter().map(|op| match &op.request {
                Some(Request::RequestRange(r)) => Op::Range(r.view()),
                Some(Request::RequestPut(p)) => Op::Put(p.view()),
                Some(Request::RequestDeleteRange(d)) => Op::Delete(d.view()),
                Some(Request::RequestTxn(t)) => Op::Txn(t),
                None => Op::Empty,
            })
        }
    }
}
