//! Between the Cap'n Proto contract (`schema`) and the state machine's own types: requests read
//! from the client plane or from a raft entry, responses and members written back.

use capnp::message::ReaderOptions;
use schema::member_capnp::{
    compaction_request, compare, delete_range_request, key_value, put_request, raft_request,
    range_request, request_op, response_header, response_op, txn_request,
};

use crate::cluster::{self, MemberInfo};
use crate::mvcc::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};

/// What consensus writes into every response header.
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

/// A decoded raft entry: what a member proposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposal {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compaction(CompactionRequest),
    Publish(MemberInfo),
}

/// What applying a proposal gave, sent back to whoever proposed it.
#[derive(Debug)]
pub(crate) enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction {
        revision: i64,
    },
    /// A member's attributes (name, client URLs) were recorded.
    Published {
        member: u64,
    },
}

// --------------------------------------------------------------------------------- reading

pub fn read_range(r: range_request::Reader) -> capnp::Result<RangeRequest> {
    Ok(RangeRequest {
        key: r.get_key()?.to_vec(),
        range_end: r.get_range_end()?.to_vec(),
        limit: r.get_limit(),
        revision: r.get_revision(),
        sort_order: r.get_sort_order(),
        sort_target: r.get_sort_target(),
        serializable: r.get_serializable(),
        keys_only: r.get_keys_only(),
        count_only: r.get_count_only(),
        min_mod_revision: r.get_min_mod_revision(),
        max_mod_revision: r.get_max_mod_revision(),
        min_create_revision: r.get_min_create_revision(),
        max_create_revision: r.get_max_create_revision(),
    })
}

pub fn read_put(r: put_request::Reader) -> capnp::Result<PutRequest> {
    Ok(PutRequest {
        key: r.get_key()?.to_vec(),
        value: r.get_value()?.to_vec(),
        lease: r.get_lease(),
        prev_kv: r.get_prev_kv(),
        ignore_value: r.get_ignore_value(),
        ignore_lease: r.get_ignore_lease(),
    })
}

pub fn read_delete(r: delete_range_request::Reader) -> capnp::Result<DeleteRangeRequest> {
    Ok(DeleteRangeRequest {
        key: r.get_key()?.to_vec(),
        range_end: r.get_range_end()?.to_vec(),
        prev_kv: r.get_prev_kv(),
    })
}

fn read_compare(c: compare::Reader) -> capnp::Result<Compare> {
    Ok(Compare {
        result: c.get_result(),
        target: c.get_target(),
        key: c.get_key()?.to_vec(),
        range_end: c.get_range_end()?.to_vec(),
        version: c.get_version(),
        create_revision: c.get_create_revision(),
        mod_revision: c.get_mod_revision(),
        value: c.get_value()?.to_vec(),
        lease: c.get_lease(),
    })
}

fn read_op(op: request_op::Reader) -> capnp::Result<RequestOp> {
    use request_op::Which;
    Ok(match op.which()? {
        Which::Range(r) => RequestOp::Range(read_range(r?)?),
        Which::Put(p) => RequestOp::Put(read_put(p?)?),
        Which::DeleteRange(d) => RequestOp::DeleteRange(read_delete(d?)?),
        Which::Txn(t) => RequestOp::Txn(read_txn(t?)?),
    })
}

pub fn read_txn(t: txn_request::Reader) -> capnp::Result<TxnRequest> {
    let ops = |list: capnp::struct_list::Reader<request_op::Owned>| {
        list.iter().map(read_op).collect::<capnp::Result<Vec<_>>>()
    };
    Ok(TxnRequest {
        compare: t
            .get_compare()?
            .iter()
            .map(read_compare)
            .collect::<capnp::Result<_>>()?,
        success: ops(t.get_success()?)?,
        failure: ops(t.get_failure()?)?,
    })
}

pub fn read_compaction(c: compaction_request::Reader) -> CompactionRequest {
    CompactionRequest {
        revision: c.get_revision(),
        physical: c.get_physical(),
    }
}

/// Decodes a raft entry's data. Entries come from other members, so a bad one is an error, never
/// a panic.
pub fn decode_proposal(data: &[u8]) -> capnp::Result<(u64, Proposal)> {
    let msg = capnp::serialize::read_message_from_flat_slice(&mut &data[..], ReaderOptions::new())?;
    let r = msg.get_root::<raft_request::Reader>()?;
    use raft_request::Which;
    let p = match r.which()? {
        Which::Put(p) => Proposal::Put(read_put(p?)?),
        Which::DeleteRange(d) => Proposal::DeleteRange(read_delete(d?)?),
        Which::Txn(t) => Proposal::Txn(read_txn(t?)?),
        Which::Compaction(c) => Proposal::Compaction(read_compaction(c?)),
        Which::Publish(m) => Proposal::Publish(cluster::read_member(m?)?),
    };
    Ok((r.get_id(), p))
}

/// The key of a put proposal (None for anything else or undecodable data), without decoding the
/// rest.
pub fn put_key(data: &[u8]) -> Option<Vec<u8>> {
    let msg = capnp::serialize::read_message_from_flat_slice(&mut &data[..], ReaderOptions::new())
        .ok()?;
    let r = msg.get_root::<raft_request::Reader>().ok()?;
    match r.which().ok()? {
        raft_request::Which::Put(p) => Some(p.ok()?.get_key().ok()?.to_vec()),
        _ => None,
    }
}

/// Encodes a proposal as raft entry data; `fill` sets the request (usually by copying the reader
/// the client plane received, so nothing is re-encoded by hand).
pub fn encode_proposal(
    id: u64,
    size_hint: usize,
    fill: impl FnOnce(raft_request::Builder) -> capnp::Result<()>,
) -> capnp::Result<Vec<u8>> {
    let mut msg = schema::builder_for(size_hint);
    let mut root = msg.init_root::<raft_request::Builder>();
    root.set_id(id);
    fill(root)?;
    Ok(capnp::serialize::write_message_to_words(&msg))
}

/// The backstop behind the client gateway's exact request-size check: it allows for Cap'n Proto's
/// larger encoding (word padding, pointers) of the same request.
pub fn check_encoded_size(
    len: usize,
    max_request_bytes: u64,
) -> Result<(), crate::etcd_error::EtcdError> {
    const ENCODING_HEADROOM: u64 = 64 * 1024;
    if len as u64 > max_request_bytes + ENCODING_HEADROOM {
        return Err(crate::etcd_error::request_too_large());
    }
    Ok(())
}

// --------------------------------------------------------------------------------- writing

pub fn write_header(mut b: response_header::Builder, h: &Header) {
    b.set_cluster_id(h.cluster_id);
    b.set_member_id(h.member_id);
    b.set_revision(h.revision);
    b.set_raft_term(h.raft_term);
}

fn write_kv(mut b: key_value::Builder, kv: &KeyValue) {
    b.set_key(&kv.key);
    b.set_create_revision(kv.create_revision);
    b.set_mod_revision(kv.mod_revision);
    b.set_version(kv.version);
    b.set_value(&kv.value);
    b.set_lease(kv.lease);
}

fn with_revision(h: &Header, revision: i64) -> Header {
    Header { revision, ..*h }
}

pub fn write_range_response(
    mut b: schema::member_capnp::range_response::Builder,
    h: &Header,
    r: &RangeResponse,
) {
    write_header(b.reborrow().init_header(), &with_revision(h, r.revision));
    b.set_more(r.more);
    b.set_count(r.count);
    let mut kvs = b.init_kvs(r.kvs.len() as u32);
    for (i, kv) in r.kvs.iter().enumerate() {
        write_kv(kvs.reborrow().get(i as u32), kv);
    }
}

pub fn write_put_response(
    mut b: schema::member_capnp::put_response::Builder,
    h: &Header,
    r: &PutResponse,
) {
    write_header(b.reborrow().init_header(), &with_revision(h, r.revision));
    if let Some(prev) = &r.prev_kv {
        write_kv(b.init_prev_kv(), prev);
    }
}

pub fn write_delete_response(
    mut b: schema::member_capnp::delete_range_response::Builder,
    h: &Header,
    r: &DeleteRangeResponse,
) {
    write_header(b.reborrow().init_header(), &with_revision(h, r.revision));
    b.set_deleted(r.deleted);
    let mut kvs = b.init_prev_kvs(r.prev_kvs.len() as u32);
    for (i, kv) in r.prev_kvs.iter().enumerate() {
        write_kv(kvs.reborrow().get(i as u32), kv);
    }
}

pub fn write_txn_response(
    b: schema::member_capnp::txn_response::Builder,
    h: &Header,
    r: &TxnResponse,
) {
    write_txn(b, &with_revision(h, r.revision), r);
}

fn write_txn(mut b: schema::member_capnp::txn_response::Builder, h: &Header, r: &TxnResponse) {
    write_header(b.reborrow().init_header(), h);
    b.set_succeeded(r.succeeded);
    // etcd fills only the revision in the headers of a txn's inner responses, and not even that
    // in a nested txn's own header.
    let inner = Header::default();
    let mut list = b.init_responses(r.responses.len() as u32);
    for (i, op) in r.responses.iter().enumerate() {
        let slot: response_op::Builder = list.reborrow().get(i as u32);
        match op {
            ResponseOp::Range(x) => write_range_response(slot.init_range(), &inner, x),
            ResponseOp::Put(x) => write_put_response(slot.init_put(), &inner, x),
            ResponseOp::DeleteRange(x) => {
                write_delete_response(slot.init_delete_range(), &inner, x)
            }
            ResponseOp::Txn(x) => write_txn(slot.init_txn(), &inner, x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{decode_member, encode_member};

    #[test]
    fn proposal_round_trip_through_a_raft_entry() {
        // Build a client-plane txn the way a gateway would, then carry it in a raft entry.
        let mut msg = capnp::message::Builder::new_default();
        let mut txn = msg.init_root::<txn_request::Builder>();
        {
            let mut c = txn.reborrow().init_compare(1).get(0);
            c.set_key(b"k");
            c.set_target(3);
            c.set_value(b"v");
        }
        {
            let mut ops = txn.reborrow().init_success(2);
            let mut p = ops.reborrow().get(0).init_put();
            p.set_key(b"k");
            p.set_value(b"v2");
            let mut nested = ops
                .get(1)
                .init_txn()
                .init_failure(1)
                .get(0)
                .init_delete_range();
            nested.set_key(b"a");
            nested.set_range_end(b"b");
        }
        let reader = txn.into_reader();
        let data = encode_proposal(42, 0, |mut rr| rr.set_txn(reader)).unwrap();
        let (id, p) = decode_proposal(&data).unwrap();
        assert_eq!(id, 42);
        let Proposal::Txn(t) = p else {
            panic!("expected a txn, got {p:?}")
        };
        assert_eq!(t.compare[0].value, b"v");
        assert_eq!(t.compare[0].target, 3);
        let RequestOp::Txn(inner) = &t.success[1] else {
            panic!("expected a nested txn")
        };
        assert_eq!(
            inner.failure[0],
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                prev_kv: false
            })
        );
    }

    #[test]
    fn garbage_entry_is_an_error_not_a_panic() {
        assert!(decode_proposal(b"\x05\x00\x00\x00garbage").is_err());
        assert!(decode_proposal(&[]).is_err());
        assert!(decode_member(&[0xff; 24]).is_err());
    }

    #[test]
    fn member_round_trip() {
        let m = MemberInfo {
            id: 7,
            name: "etcd01".into(),
            peer_urls: vec!["https://10.0.52.13:2380".into()],
            client_urls: vec!["https://10.0.52.13:2379".into()],
            is_learner: false,
        };
        assert_eq!(decode_member(&encode_member(&m)).unwrap(), m);
    }

    #[test]
    fn nested_txn_headers_are_empty_inner_ones_carry_the_revision() {
        let resp = TxnResponse {
            revision: 7,
            succeeded: true,
            responses: vec![
                ResponseOp::Put(PutResponse {
                    revision: 7,
                    prev_kv: None,
                }),
                ResponseOp::Txn(TxnResponse {
                    revision: 6,
                    succeeded: false,
                    responses: vec![ResponseOp::Range(RangeResponse {
                        revision: 7,
                        ..Default::default()
                    })],
                }),
            ],
        };
        let mut msg = capnp::message::Builder::new_default();
        let h = Header {
            cluster_id: 1,
            member_id: 2,
            revision: 0,
            raft_term: 3,
        };
        write_txn_response(msg.init_root(), &h, &resp);
        let r = msg
            .get_root_as_reader::<schema::member_capnp::txn_response::Reader>()
            .unwrap();
        let top = r.get_header().unwrap();
        assert_eq!((top.get_revision(), top.get_member_id()), (7, 2));
        let ops = r.get_responses().unwrap();
        let response_op::Which::Put(put) = ops.get(0).which().unwrap() else {
            panic!("expected a put")
        };
        let ph = put.unwrap().get_header().unwrap();
        assert_eq!((ph.get_revision(), ph.get_member_id()), (7, 0));
        let response_op::Which::Txn(nested) = ops.get(1).which().unwrap() else {
            panic!("expected a txn")
        };
        let nested = nested.unwrap();
        assert_eq!(nested.get_header().unwrap().get_revision(), 0);
        let response_op::Which::Range(range) =
            nested.get_responses().unwrap().get(0).which().unwrap()
        else {
            panic!("expected a range")
        };
        assert_eq!(range.unwrap().get_header().unwrap().get_revision(), 7);
    }
}
