//! Client requests, protobuf to Cap'n Proto: fills the `ClientPlane` request structs field by
//! field. Enum-like fields pass through as their protobuf numbers (consensus judges them).

use schema::member_capnp::{
    compaction_request, compare, delete_range_request, put_request, range_request, request_op,
    txn_request,
};
use tonic::Status;

use crate::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, compare::TargetUnion, request_op::Request,
};

fn list_len(len: usize) -> Result<u32, Status> {
    u32::try_from(len).map_err(|_| Status::invalid_argument("client gateway: list too long"))
}

pub fn range(src: &RangeRequest, mut dst: range_request::Builder<'_>) {
    dst.set_key(&src.key);
    dst.set_range_end(&src.range_end);
    dst.set_limit(src.limit);
    dst.set_revision(src.revision);
    dst.set_sort_order(src.sort_order);
    dst.set_sort_target(src.sort_target);
    dst.set_serializable(src.serializable);
    dst.set_keys_only(src.keys_only);
    dst.set_count_only(src.count_only);
    dst.set_min_mod_revision(src.min_mod_revision);
    dst.set_max_mod_revision(src.max_mod_revision);
    dst.set_min_create_revision(src.min_create_revision);
    dst.set_max_create_revision(src.max_create_revision);
}

pub fn put(src: &PutRequest, mut dst: put_request::Builder<'_>) {
    dst.set_key(&src.key);
    dst.set_value(&src.value);
    dst.set_lease(src.lease);
    dst.set_prev_kv(src.prev_kv);
    dst.set_ignore_value(src.ignore_value);
    dst.set_ignore_lease(src.ignore_lease);
}

pub fn delete_range(src: &DeleteRangeRequest, mut dst: delete_range_request::Builder<'_>) {
    dst.set_key(&src.key);
    dst.set_range_end(&src.range_end);
    dst.set_prev_kv(src.prev_kv);
}

pub fn compaction(src: &CompactionRequest, mut dst: compaction_request::Builder<'_>) {
    dst.set_revision(src.revision);
    dst.set_physical(src.physical);
}

/// etcd's `target_union` is a oneof; the contract flattens it, so only the field the client set is
/// written and the others stay zero, which is what etcd compares against on a target mismatch.
pub fn compare(src: &Compare, mut dst: compare::Builder<'_>) {
    dst.set_result(src.result);
    dst.set_target(src.target);
    dst.set_key(&src.key);
    dst.set_range_end(&src.range_end);
    match &src.target_union {
        Some(TargetUnion::Version(v)) => dst.set_version(*v),
        Some(TargetUnion::CreateRevision(v)) => dst.set_create_revision(*v),
        Some(TargetUnion::ModRevision(v)) => dst.set_mod_revision(*v),
        Some(TargetUnion::Value(v)) => dst.set_value(v),
        Some(TargetUnion::Lease(v)) => dst.set_lease(*v),
        None => {}
    }
}

pub fn txn(src: &TxnRequest, mut dst: txn_request::Builder<'_>) -> Result<(), Status> {
    let mut compares = dst.reborrow().init_compare(list_len(src.compare.len())?);
    for (i, c) in src.compare.iter().enumerate() {
        compare(c, compares.reborrow().get(i as u32));
    }
    let mut success = dst.reborrow().init_success(list_len(src.success.len())?);
    for (i, op) in src.success.iter().enumerate() {
        request_op(op, success.reborrow().get(i as u32))?;
    }
    let mut failure = dst.init_failure(list_len(src.failure.len())?);
    for (i, op) in src.failure.iter().enumerate() {
        request_op(op, failure.reborrow().get(i as u32))?;
    }
    Ok(())
}

fn request_op(src: &RequestOp, dst: request_op::Builder<'_>) -> Result<(), Status> {
    match &src.request {
        Some(Request::RequestRange(r)) => range(r, dst.init_range()),
        Some(Request::RequestPut(r)) => put(r, dst.init_put()),
        Some(Request::RequestDeleteRange(r)) => delete_range(r, dst.init_delete_range()),
        Some(Request::RequestTxn(r)) => txn(r, dst.init_txn())?,
        // Refused earlier by validation; kept so nothing malformed is ever sent.
        None => return Err(Status::invalid_argument("etcdserver: key not found")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::compare::TargetUnion;
    use schema::member_capnp::request_op::Which;

    #[test]
    fn range_copies_every_field() {
        let src = RangeRequest {
            key: b"k".to_vec(),
            range_end: b"z".to_vec(),
            limit: 3,
            revision: 4,
            sort_order: 2,
            sort_target: 7, // unknown to us, still forwarded
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 10,
            max_mod_revision: 11,
            min_create_revision: 12,
            max_create_revision: 13,
        };
        let mut msg = capnp::message::Builder::new_default();
        range(&src, msg.init_root());
        let r = msg
            .get_root_as_reader::<range_request::Reader<'_>>()
            .unwrap();
        assert_eq!(r.get_key().unwrap(), b"k");
        assert_eq!(r.get_range_end().unwrap(), b"z");
        assert_eq!((r.get_limit(), r.get_revision()), (3, 4));
        assert_eq!((r.get_sort_order(), r.get_sort_target()), (2, 7));
        assert!(r.get_serializable() && r.get_keys_only() && r.get_count_only());
        assert_eq!(
            (
                r.get_min_mod_revision(),
                r.get_max_mod_revision(),
                r.get_min_create_revision(),
                r.get_max_create_revision()
            ),
            (10, 11, 12, 13)
        );
    }

    #[test]
    fn txn_copies_compares_and_nested_ops() {
        let src = TxnRequest {
            compare: vec![
                Compare {
                    result: 3,
                    target: 3,
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                    target_union: Some(TargetUnion::Value(b"v".to_vec())),
                },
                Compare {
                    result: 1,
                    target: 2,
                    key: b"c".to_vec(),
                    range_end: vec![],
                    target_union: Some(TargetUnion::ModRevision(42)),
                },
            ],
            success: vec![
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"p".to_vec(),
                        value: b"pv".to_vec(),
                        lease: 9,
                        prev_kv: true,
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Request::RequestTxn(TxnRequest {
                        compare: vec![],
                        success: vec![],
                        failure: vec![RequestOp {
                            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                                key: b"d".to_vec(),
                                range_end: b"e".to_vec(),
                                prev_kv: true,
                            })),
                        }],
                    })),
                },
            ],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: b"r".to_vec(),
                    ..Default::default()
                })),
            }],
        };
        let mut msg = capnp::message::Builder::new_default();
        txn(&src, msg.init_root()).unwrap();
        let t = msg.get_root_as_reader::<txn_request::Reader<'_>>().unwrap();

        let c = t.get_compare().unwrap();
        assert_eq!(c.len(), 2);
        let c0 = c.get(0);
        assert_eq!((c0.get_result(), c0.get_target()), (3, 3));
        assert_eq!(c0.get_key().unwrap(), b"a");
        assert_eq!(c0.get_range_end().unwrap(), b"b");
        assert_eq!(c0.get_value().unwrap(), b"v");
        let c1 = c.get(1);
        assert_eq!(c1.get_mod_revision(), 42);
        assert_eq!((c1.get_version(), c1.get_create_revision()), (0, 0));

        let s = t.get_success().unwrap();
        match s.get(0).which().unwrap() {
            Which::Put(p) => {
                let p = p.unwrap();
                assert_eq!(p.get_key().unwrap(), b"p");
                assert_eq!(p.get_value().unwrap(), b"pv");
                assert_eq!(p.get_lease(), 9);
                assert!(p.get_prev_kv());
            }
            _ => panic!("expected put"),
        }
        match s.get(1).which().unwrap() {
            Which::Txn(inner) => {
                let f = inner.unwrap().get_failure().unwrap();
                match f.get(0).which().unwrap() {
                    Which::DeleteRange(d) => {
                        let d = d.unwrap();
                        assert_eq!(d.get_key().unwrap(), b"d");
                        assert_eq!(d.get_range_end().unwrap(), b"e");
                        assert!(d.get_prev_kv());
                    }
                    _ => panic!("expected deleteRange"),
                }
            }
            _ => panic!("expected txn"),
        }
        match t.get_failure().unwrap().get(0).which().unwrap() {
            Which::Range(r) => assert_eq!(r.unwrap().get_key().unwrap(), b"r"),
            _ => panic!("expected range"),
        }
    }

    #[test]
    fn empty_op_is_refused() {
        let src = TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: None }],
            failure: vec![],
        };
        let mut msg = capnp::message::Builder::new_default();
        let err = txn(&src, msg.init_root()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
