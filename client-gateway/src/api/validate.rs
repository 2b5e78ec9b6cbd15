//! The checks etcd's gRPC layer runs before a request reaches the server, with the same gRPC codes
//! and messages, so a malformed request is refused here without a trip to consensus.

use std::collections::HashSet;

use tonic::Status;

use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op::Request,
};

pub fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

fn empty_op() -> Status {
    // etcd's answer to a RequestOp with no operation set.
    Status::invalid_argument("etcdserver: key not found")
}

fn invalid_sort() -> Status {
    Status::invalid_argument("etcdserver: invalid sort option")
}

fn too_many_ops() -> Status {
    Status::invalid_argument("etcdserver: too many operations in txn request")
}

fn duplicate_key() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

pub fn range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(empty_key());
    }
    // etcd 3.4 sorts nothing for an unknown order (NONE=0, ASCEND=1, DESCEND=2), whatever the
    // target; with a known order it sorts by the target (KEY..VALUE = 0..4) and crashes on an
    // unknown one, which we refuse as etcd 3.5 does.
    if (0..=2).contains(&r.sort_order) && !(0..=4).contains(&r.sort_target) {
        return Err(invalid_sort());
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(empty_key());
    }
    Ok(())
}

pub fn request_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
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

/// etcd 3.4 serves a Txn without raft (and so without the size check) when every operation of
/// both branches is a Range; a nested Txn makes it a write, whatever it holds.
pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// All checks etcd runs on a Txn: shape and op counts, then no key both written twice or written
/// and deleted by the same branch.
pub fn txn(r: &TxnRequest, max_txn_ops: u32) -> Result<(), Status> {
    txn_shape(r, i64::from(max_txn_ops))?;
    overlaps(&r.success)?;
    overlaps(&r.failure)?;
    Ok(())
}

/// etcd counts the largest of the three lists against the limit, and lets a nested txn use only
/// what that leaves (which may be negative, refusing even an empty nested txn).
fn txn_shape(r: &TxnRequest, max_ops: i64) -> Result<(), Status> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    let ops = i64::try_from(ops).unwrap_or(i64::MAX);
    if ops > max_ops {
        return Err(too_many_ops());
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(empty_key());
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(q)) => range(q)?,
            Some(Request::RequestPut(q)) => put(q)?,
            Some(Request::RequestDeleteRange(q)) => delete_range(q)?,
            Some(Request::RequestTxn(q)) => txn_shape(q, max_ops - ops)?,
            None => return Err(empty_op()),
        }
    }
    Ok(())
}

/// Deleted key spans, half-open `[begin, end)` in byte order. A single key `k` is `[k, k\0)`.
#[derive(Default)]
struct Deletes(Vec<(Vec<u8>, Vec<u8>)>);

impl Deletes {
    fn insert(&mut self, key: &[u8], range_end: &[u8]) {
        let end = if range_end.is_empty() {
            successor(key)
        } else {
            range_end.to_vec()
        };
        self.0.push((key.to_vec(), end));
    }

    /// Like etcd, a span whose end is not above its begin (e.g. range_end "\0", meaning "to the
    /// end of the keyspace") covers nothing here.
    fn covers(&self, key: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(begin, end)| begin.as_slice() <= key && key < end.as_slice())
    }

    fn absorb(&mut self, other: Deletes) {
        // etcd only carries over spans that end above "\0"; the rest cover nothing anyway.
        self.0.extend(
            other
                .0
                .into_iter()
                .filter(|(_, end)| end.as_slice() > b"\0".as_slice()),
        );
    }
}

fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// One branch's puts and deletes, including those of nested txns, failing on a key that would be
/// written twice or written and deleted. Follows etcd's order of checks, so it refuses exactly
/// the requests etcd refuses.
fn overlaps(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes), Status> {
    let mut dels = Deletes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            dels.insert(&d.key, &d.range_end);
        }
    }

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = overlaps(&t.success)?;
        let (puts_else, dels_else) = overlaps(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.covers(k) {
                return Err(duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            // A key put by both branches of the same nested txn is fine: only one branch runs.
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.covers(&k) {
                return Err(duplicate_key());
            }
            puts.insert(k);
        }
        dels.absorb(dels_then);
        dels.absorb(dels_else);
    }

    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.covers(&p.key) {
            return Err(duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::Compare;
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
