//! Consensus's answers, Cap'n Proto to protobuf: responses field by field, a refusal (`Status`)
//! into the gRPC status etcd would give ([`refusal`]), and RPC failures into
//! UNAVAILABLE/UNKNOWN/INTERNAL ([`call_failed`], [`malformed`]).

use schema::member_capnp::{
    compaction_response, defragment_response, delete_range_response, hash_kv_response, key_value,
    member, member_list_response, move_leader_response, put_response, range_response,
    response_header, response_op, status, status_response, txn_response,
};
use tonic::{Code, Status};

use crate::consensus::registration::text_list;
use crate::proto::etcdserverpb::{
    CompactionResponse, DefragmentResponse, DeleteRangeResponse, HashKvResponse, Member,
    MemberListResponse, MoveLeaderResponse, PutResponse, RangeResponse, ResponseHeader, ResponseOp,
    StatusResponse, TxnResponse, response_op::Response,
};
use crate::proto::mvccpb::KeyValue;

/// A request consensus refused, with etcd's code and message.
pub fn refusal(s: status::Reader<'_>) -> Status {
    let message = match s.get_message() {
        Ok(m) => String::from_utf8_lossy(m.as_bytes()).into_owned(),
        Err(e) => format!("client gateway: unreadable refusal from consensus: {e}"),
    };
    match s.get_code() {
        // A refusal that says OK is not one we can honour as success.
        0 => Status::unknown(message),
        code => Status::new(Code::from(i32::try_from(code).unwrap_or(i32::MAX)), message),
    }
}

/// The call to consensus itself failed. A lost connection leaves the request's outcome unknown,
/// which etcd reports as UNAVAILABLE too (its "request timed out" family).
pub fn call_failed(e: capnp::Error) -> Status {
    match e.kind {
        capnp::ErrorKind::Disconnected => Status::unavailable(format!(
            "client gateway: lost the connection to consensus, outcome unknown: {}",
            e.extra
        )),
        capnp::ErrorKind::Overloaded => {
            Status::unavailable(format!("client gateway: consensus overloaded: {}", e.extra))
        }
        capnp::ErrorKind::Unimplemented => Status::unimplemented(format!(
            "client gateway: consensus does not implement this call: {}",
            e.extra
        )),
        _ => Status::unknown(format!("client gateway: consensus failed: {e}")),
    }
}

/// Consensus answered something we cannot read.
pub fn malformed(e: capnp::Error) -> Status {
    Status::internal(format!(
        "client gateway: malformed reply from consensus: {e}"
    ))
}

fn header(h: response_header::Reader<'_>) -> ResponseHeader {
    ResponseHeader {
        cluster_id: h.get_cluster_id(),
        member_id: h.get_member_id(),
        revision: h.get_revision(),
        raft_term: h.get_raft_term(),
    }
}

/// etcd never sends a response without a header, and clients dereference it; an absent one
/// becomes an all-zero header rather than a missing field.
pub(crate) fn header_of(
    has: bool,
    h: capnp::Result<response_header::Reader<'_>>,
) -> capnp::Result<ResponseHeader> {
    if has {
        Ok(header(h?))
    } else {
        Ok(ResponseHeader::default())
    }
}

fn key_value(kv: key_value::Reader<'_>) -> capnp::Result<KeyValue> {
    Ok(KeyValue {
        key: kv.get_key()?.to_vec(),
        create_revision: kv.get_create_revision(),
        mod_revision: kv.get_mod_revision(),
        version: kv.get_version(),
        value: kv.get_value()?.to_vec(),
        lease: kv.get_lease(),
    })
}

fn key_values(
    list: capnp::struct_list::Reader<'_, key_value::Owned>,
) -> capnp::Result<Vec<KeyValue>> {
    list.iter().map(key_value).collect()
}

pub fn range(r: range_response::Reader<'_>) -> capnp::Result<RangeResponse> {
    Ok(RangeResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
        kvs: key_values(r.get_kvs()?)?,
        more: r.get_more(),
        count: r.get_count(),
    })
}

pub fn put(r: put_response::Reader<'_>) -> capnp::Result<PutResponse> {
    Ok(PutResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
        prev_kv: if r.has_prev_kv() {
            Some(key_value(r.get_prev_kv()?)?)
        } else {
            None
        },
    })
}

pub fn delete_range(r: delete_range_response::Reader<'_>) -> capnp::Result<DeleteRangeResponse> {
    Ok(DeleteRangeResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
        deleted: r.get_deleted(),
        prev_kvs: key_values(r.get_prev_kvs()?)?,
    })
}

pub fn txn(r: txn_response::Reader<'_>) -> capnp::Result<TxnResponse> {
    Ok(TxnResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
        succeeded: r.get_succeeded(),
        responses: r
            .get_responses()?
            .iter()
            .map(response_op)
            .collect::<capnp::Result<_>>()?,
    })
}

fn response_op(r: response_op::Reader<'_>) -> capnp::Result<ResponseOp> {
    use response_op::Which;
    let response = match r.which()? {
        Which::Range(x) => Response::ResponseRange(range(x?)?),
        Which::Put(x) => Response::ResponsePut(put(x?)?),
        Which::DeleteRange(x) => Response::ResponseDeleteRange(delete_range(x?)?),
        Which::Txn(x) => Response::ResponseTxn(txn(x?)?),
    };
    Ok(ResponseOp {
        response: Some(response),
    })
}

pub fn compaction(r: compaction_response::Reader<'_>) -> capnp::Result<CompactionResponse> {
    Ok(CompactionResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
    })
}

fn member(m: member::Reader<'_>) -> capnp::Result<Member> {
    Ok(Member {
        id: m.get_id(),
        name: m.get_name()?.to_string()?,
        peer_urls: text_list(m.get_peer_urls()?)?,
        client_urls: text_list(m.get_client_urls()?)?,
        is_learner: m.get_is_learner(),
    })
}

pub fn member_list(r: member_list_response::Reader<'_>) -> capnp::Result<MemberListResponse> {
    Ok(MemberListResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
        members: r
            .get_members()?
            .iter()
            .map(member)
            .collect::<capnp::Result<_>>()?,
    })
}

pub fn defragment(r: defragment_response::Reader<'_>) -> capnp::Result<DefragmentResponse> {
    Ok(DefragmentResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
    })
}

pub fn hash_kv(r: hash_kv_response::Reader<'_>) -> capnp::Result<HashKvResponse> {
    Ok(HashKvResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
        hash: r.get_hash(),
        compact_revision: r.get_compact_revision(),
    })
}

pub fn move_leader(r: move_leader_response::Reader<'_>) -> capnp::Result<MoveLeaderResponse> {
    Ok(MoveLeaderResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
    })
}

pub fn status(r: status_response::Reader<'_>) -> capnp::Result<StatusResponse> {
    Ok(StatusResponse {
        header: Some(header_of(r.has_header(), r.get_header())?),
        version: r.get_version()?.to_string()?,
        db_size: r.get_db_size(),
        leader: r.get_leader(),
        raft_index: r.get_raft_index(),
        raft_term: r.get_raft_term(),
        raft_applied_index: r.get_raft_applied_index(),
        errors: text_list(r.get_errors()?)?,
        db_size_in_use: r.get_db_size_in_use(),
        is_learner: r.get_is_learner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_keeps_code_and_message() {
        let mut msg = capnp::message::Builder::new_default();
        let mut s = msg.init_root::<status::Builder<'_>>();
        s.set_code(schema::code::OUT_OF_RANGE);
        s.set_message("etcdserver: mvcc: required revision has been compacted");
        let st = refusal(s.into_reader());
        assert_eq!(st.code(), Code::OutOfRange);
        assert_eq!(
            st.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }

    #[test]
    fn refusal_with_ok_or_unknown_code_is_not_success() {
        let mut msg = capnp::message::Builder::new_default();
        let mut s = msg.init_root::<status::Builder<'_>>();
        s.set_code(0);
        assert_eq!(refusal(s.reborrow_as_reader()).code(), Code::Unknown);
        s.set_code(999);
        assert_eq!(refusal(s.into_reader()).code(), Code::Unknown);
    }

    #[test]
    fn lost_connection_is_unavailable() {
        assert_eq!(
            call_failed(capnp::Error::disconnected("gone".into())).code(),
            Code::Unavailable
        );
        assert_eq!(
            call_failed(capnp::Error::failed("boom".into())).code(),
            Code::Unknown
        );
        assert_eq!(
            malformed(capnp::Error::failed("bad".into())).code(),
            Code::Internal
        );
    }

    #[test]
    fn txn_response_with_nested_responses() {
        let mut msg = capnp::message::Builder::new_default();
        let mut t = msg.init_root::<txn_response::Builder<'_>>();
        let mut h = t.reborrow().init_header();
        h.set_cluster_id(1);
        h.set_member_id(2);
        h.set_revision(3);
        h.set_raft_term(4);
        t.set_succeeded(true);
        let mut ops = t.reborrow().init_responses(3);
        {
            let mut r = ops.reborrow().get(0).init_range();
            r.set_count(1);
            r.set_more(true);
            let mut kv = r.init_kvs(1).get(0);
            kv.set_key(b"k");
            kv.set_value(b"v");
            kv.set_create_revision(5);
            kv.set_mod_revision(6);
            kv.set_version(7);
            kv.set_lease(8);
        }
        {
            let mut p = ops.reborrow().get(1).init_put();
            p.reborrow().init_header().set_revision(9);
            p.init_prev_kv().set_key(b"old");
        }
        ops.reborrow().get(2).init_delete_range().set_deleted(2);

        let got = txn(t.into_reader()).unwrap();
        assert_eq!(
            got.header,
            Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4
            })
        );
        assert!(got.succeeded);
        assert_eq!(got.responses.len(), 3);
        match &got.responses[0].response {
            Some(Response::ResponseRange(r)) => {
                assert_eq!((r.count, r.more), (1, true));
                assert_eq!(
                    r.kvs,
                    vec![KeyValue {
                        key: b"k".to_vec(),
                        create_revision: 5,
                        mod_revision: 6,
                        version: 7,
                        value: b"v".to_vec(),
                        lease: 8
                    }]
                );
                // A nested response without a header still gets one.
                assert_eq!(r.header, Some(ResponseHeader::default()));
            }
            other => panic!("expected range, got {other:?}"),
        }
        match &got.responses[1].response {
            Some(Response::ResponsePut(p)) => {
                assert_eq!(p.header.as_ref().map(|h| h.revision), Some(9));
                assert_eq!(
                    p.prev_kv.as_ref().map(|kv| kv.key.clone()),
                    Some(b"old".to_vec())
                );
            }
            other => panic!("expected put, got {other:?}"),
        }
        match &got.responses[2].response {
            Some(Response::ResponseDeleteRange(d)) => assert_eq!(d.deleted, 2),
            other => panic!("expected deleteRange, got {other:?}"),
        }
    }

    #[test]
    fn put_without_prev_kv_has_none() {
        let mut msg = capnp::message::Builder::new_default();
        let p = msg.init_root::<put_response::Builder<'_>>();
        assert_eq!(put(p.into_reader()).unwrap().prev_kv, None);
    }

    #[test]
    fn member_list_and_status() {
        let mut msg = capnp::message::Builder::new_default();
        let mut ml = msg.init_root::<member_list_response::Builder<'_>>();
        let mut m = ml.reborrow().init_members(1).get(0);
        m.set_id(11);
        m.set_name("n");
        m.reborrow().init_peer_urls(1).set(0, "http://p");
        m.reborrow().init_client_urls(1).set(0, "http://c");
        m.set_is_learner(true);
        let got = member_list(ml.into_reader()).unwrap();
        assert_eq!(
            got.members,
            vec![Member {
                id: 11,
                name: "n".into(),
                peer_urls: vec!["http://p".into()],
                client_urls: vec!["http://c".into()],
                is_learner: true
            }]
        );

        let mut msg = capnp::message::Builder::new_default();
        let mut s = msg.init_root::<status_response::Builder<'_>>();
        s.set_version("3.6.0");
        s.set_db_size(100);
        s.set_leader(11);
        s.set_raft_index(20);
        s.set_raft_term(3);
        s.set_raft_applied_index(19);
        s.reborrow().init_errors(1).set(0, "NOSPACE");
        s.set_db_size_in_use(50);
        s.set_is_learner(false);
        let got = status(s.into_reader()).unwrap();
        assert_eq!(got.version, "3.6.0");
        assert_eq!(
            (got.db_size, got.leader, got.raft_index, got.raft_term),
            (100, 11, 20, 3)
        );
        assert_eq!(got.raft_applied_index, 19);
        assert_eq!(got.errors, vec!["NOSPACE".to_string()]);
        assert_eq!(got.db_size_in_use, 50);
    }
}
