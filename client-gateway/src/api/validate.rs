//! The checks etcd's gRPC layer runs before a request reaches the server, with the same gRPC codes
//! and messages, so a malformed request is refused here without a trip to consensus. The rules
//! are [`schema::rules`], which consensus runs again on its side; here they read the protobuf
//! messages.

use schema::rules::{self, Refusal, refusal};
use tonic::Status;

use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

/// etcd's refusal as a gRPC status.
fn status(r: Refusal) -> Status {
    Status::new(tonic::Code::from_i32(r.code as i32), r.message)
}

pub fn range(r: &RangeRequest) -> Result<(), Status> {
    rules::range(r.view()).map_err(status)
}

pub fn put(r: &PutRequest) -> Result<(), Status> {
    rules::put(r.view()).map_err(status)
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), Status> {
    rules::delete(r.view()).map_err(status)
}

pub fn request_too_large() -> Status {
    status(refusal::REQUEST_TOO_LARGE)
}

/// The length of `v` as a protobuf varint.
fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros()).max(1).div_ceil(7) as usize
}

/// The size etcd checks against `--max-request-bytes`: not the gRPC message but the raft entry
/// it proposes, an `InternalRaftRequest` with a `RequestHeader` (field 100: a two-byte tag, and
/// the request ID) and the request itself (fields 4-7: a one-byte tag and its length). The
/// request ID carries the member ID's low 16 bits in its top bits, so its varint takes 8 to 10
/// bytes depending on the member (measured on etcd 3.4.23: a Put of key "k" from a member whose
/// low bits are 0x729a passes the 1.5 MiB default up to a value of 1572840 bytes).
pub fn raft_request_size(request_len: usize, member_id: u64) -> usize {
    let id = ((member_id & 0xffff) << 48) | (1 << 47);
    let header = 1 + varint_len(id);
    let header_field = 2 + varint_len(header as u64) + header;
    header_field + 1 + varint_len(request_len as u64) + request_len
}

/// etcd's check of a write (Put, DeleteRange, a Txn that is not read-only, Compact) before it is
/// proposed: refused when its raft entry would exceed `max_request_bytes`.
pub fn request_size(
    request_len: usize,
    member_id: u64,
    max_request_bytes: u64,
) -> Result<(), Status> {
    let size = u64::try_from(raft_request_size(request_len, member_id)).unwrap_or(u64::MAX);
    if size > max_request_bytes {
        return Err(request_too_large());
    }
    Ok(())
}

/// Whether etcd serves `r` without raft ([`rules::txn_is_read_only`]).
pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    rules::txn_is_read_only(r)
}

/// All checks etcd runs on a Txn ([`rules::txn`]).
pub fn txn(r: &TxnRequest, max_txn_ops: u32) -> Result<(), Status> {
    rules::txn(r, max_txn_ops).map_err(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{Compare, RequestOp, request_op::Request};
    use tonic::Code;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn get_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn txn_req(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }

    fn message(r: Result<(), Status>) -> String {
        match r {
            Ok(()) => "ok".into(),
            Err(s) => {
                assert_eq!(s.code(), Code::InvalidArgument);
                s.message().to_string()
            }
        }
    }

    #[test]
    fn range_checks_key_and_sort() {
        let mut r = RangeRequest::default();
        assert_eq!(message(range(&r)), "etcdserver: key is not provided");
        r.key = b"a".to_vec();
        assert_eq!(message(range(&r)), "ok");
        // An unknown order sorts nothing in etcd 3.4, whatever the target.
        r.sort_order = 3;
        assert_eq!(message(range(&r)), "ok");
        r.sort_target = 9;
        assert_eq!(message(range(&r)), "ok");
        // A known order (NONE included: a non-key target sorts ascending) needs a known target.
        for order in 0..=2 {
            r.sort_order = order;
            r.sort_target = 5;
            assert_eq!(message(range(&r)), "etcdserver: invalid sort option");
            r.sort_target = -1;
            assert_eq!(message(range(&r)), "etcdserver: invalid sort option");
        }
    }

    #[test]
    fn request_size_is_etcds_raft_entry_size() {
        use prost::Message;
        // Measured on etcd 3.4.23 with the default 1.5 MiB limit, member ID low bits 0x729a.
        let member = 3843598605772092058;
        let put = |len: usize| PutRequest {
            key: b"k".to_vec(),
            value: vec![b'x'; len],
            ..Default::default()
        };
        let max = 1536 * 1024;
        assert_eq!(
            message(request_size(put(1572840).encoded_len(), member, max)),
            "ok"
        );
        assert_eq!(
            message(request_size(put(1572841).encoded_len(), member, max)),
            "etcdserver: request is too large"
        );
        // Low bits of 0x8000 and up make a ten-byte request ID: one byte less for the value.
        assert_eq!(
            message(request_size(put(1572840).encoded_len(), 0x8000, max)),
            "etcdserver: request is too large"
        );
        assert_eq!(raft_request_size(0, member), 15);
    }

    #[test]
    fn read_only_txns_are_those_of_ranges_only() {
        assert!(txn_is_read_only(&txn_req(vec![get_op("a")])));
        assert!(!txn_is_read_only(&txn_req(vec![get_op("a"), put_op("b")])));
        assert!(!txn_is_read_only(&txn_req(vec![txn_op(
            vec![get_op("a")],
            vec![]
        )])));
    }

    #[test]
    fn put_checks_ignore_flags() {
        let mut p = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(message(put(&p)), "etcdserver: value is provided");
        p.value.clear();
        p.lease = 5;
        p.ignore_lease = true;
        assert_eq!(message(put(&p)), "etcdserver: lease is provided");
        p.ignore_lease = false;
        assert_eq!(message(put(&p)), "ok");
        p.key.clear();
        assert_eq!(message(put(&p)), "etcdserver: key is not provided");
    }

    #[test]
    fn txn_counts_ops_against_the_limit() {
        let r = txn_req(vec![put_op("a"), put_op("b"), put_op("c")]);
        assert_eq!(message(txn(&r, 3)), "ok");
        assert_eq!(
            message(txn(&r, 2)),
            "etcdserver: too many operations in txn request"
        );
        // A nested txn only gets what the outer one leaves: here 3 - 1 = 2.
        let r = txn_req(vec![txn_op(vec![put_op("a"), put_op("b")], vec![])]);
        assert_eq!(message(txn(&r, 3)), "ok");
        let r = txn_req(vec![txn_op(
            vec![put_op("a"), put_op("b"), put_op("c")],
            vec![],
        )]);
        assert_eq!(
            message(txn(&r, 3)),
            "etcdserver: too many operations in txn request"
        );
    }

    #[test]
    fn txn_refuses_empty_keys_and_empty_ops() {
        let mut r = txn_req(vec![put_op("a")]);
        r.compare.push(Compare::default());
        assert_eq!(message(txn(&r, 128)), "etcdserver: key is not provided");
        let r = txn_req(vec![RequestOp { request: None }]);
        assert_eq!(message(txn(&r, 128)), "etcdserver: key not found");
        let r = TxnRequest {
            compare: vec![],
            success: vec![],
            failure: vec![get_op("")],
        };
        assert_eq!(message(txn(&r, 128)), "etcdserver: key is not provided");
    }

    #[test]
    fn txn_refuses_duplicate_puts_and_put_delete_overlaps() {
        let dup = "etcdserver: duplicate key given in txn request";
        assert_eq!(
            message(txn(&txn_req(vec![put_op("a"), put_op("a")]), 128)),
            dup
        );
        assert_eq!(
            message(txn(&txn_req(vec![put_op("a"), put_op("b")]), 128)),
            "ok"
        );
        // Single-key delete and put of the same key.
        assert_eq!(
            message(txn(&txn_req(vec![del_op("a", ""), put_op("a")]), 128)),
            dup
        );
        // Range delete [a, c) covers b but not c.
        assert_eq!(
            message(txn(&txn_req(vec![del_op("a", "c"), put_op("b")]), 128)),
            dup
        );
        assert_eq!(
            message(txn(&txn_req(vec![del_op("a", "c"), put_op("c")]), 128)),
            "ok"
        );
        // Reads never conflict; the same key in success and failure never conflicts.
        let r = TxnRequest {
            compare: vec![],
            success: vec![put_op("a"), get_op("a")],
            failure: vec![put_op("a")],
        };
        assert_eq!(message(txn(&r, 128)), "ok");
    }

    #[test]
    fn txn_checks_nested_txns_like_etcd() {
        let dup = "etcdserver: duplicate key given in txn request";
        // The same key in then/else of one nested txn is fine...
        let r = txn_req(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]);
        assert_eq!(message(txn(&r, 128)), "ok");
        // ...but not when an outer put also writes it.
        let r = txn_req(vec![txn_op(vec![put_op("a")], vec![]), put_op("a")]);
        assert_eq!(message(txn(&r, 128)), dup);
        // Two nested txns writing the same key.
        let r = txn_req(vec![
            txn_op(vec![put_op("a")], vec![]),
            txn_op(vec![], vec![put_op("a")]),
        ]);
        assert_eq!(message(txn(&r, 128)), dup);
        // A nested put under an outer delete.
        let r = txn_req(vec![del_op("a", "z"), txn_op(vec![put_op("m")], vec![])]);
        assert_eq!(message(txn(&r, 128)), dup);
        // A nested delete followed by an outer put.
        let r = txn_req(vec![txn_op(vec![del_op("m", "")], vec![]), put_op("m")]);
        assert_eq!(message(txn(&r, 128)), dup);
    }

    #[test]
    fn deletes_to_the_end_of_keyspace_cover_nothing_as_in_etcd() {
        // range_end "\0" means "every key from `key` on" to the server, but etcd's overlap check
        // sees an empty span there; we keep that answer.
        let r = txn_req(vec![del_op("a", "\0"), put_op("b")]);
        assert_eq!(message(txn(&r, 128)), "ok");
    }
}
