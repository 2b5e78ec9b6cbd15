//! Answers as compared: every field of etcd's responses but the cluster ID, member ID and raft
//! term of the top-level header.

use std::fmt;

use etcd_client::TxnOpResponse;

use super::ops::B;
use super::raw;

/// A response header as compared: the revision, and for the headers inside a txn (which etcd
/// leaves without IDs) whether cluster ID, member ID and raft term are set at all.
#[derive(Debug, PartialEq)]
pub struct Header {
    pub revision: i64,
    pub ids_set: Option<[bool; 3]>,
}

#[derive(PartialEq)]
pub struct Kv {
    pub key: B,
    pub create: i64,
    pub modified: i64,
    pub version: i64,
    pub value: B,
    pub lease: i64,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}={:?} c{} m{} v{}",
            self.key, self.value, self.create, self.modified, self.version
        )?;
        if self.lease != 0 {
            write!(f, " lease {}", self.lease)?;
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
pub enum Answer {
    Error {
        code: tonic::Code,
        message: String,
    },
    Range {
        header: Option<Header>,
        kvs: Vec<Kv>,
        more: bool,
        count: i64,
    },
    Put {
        header: Option<Header>,
        prev_kv: Option<Kv>,
    },
    Delete {
        header: Option<Header>,
        deleted: i64,
        prev_kvs: Vec<Kv>,
    },
    Txn {
        header: Option<Header>,
        succeeded: bool,
        responses: Vec<Answer>,
    },
    Compact {
        header: Option<Header>,
    },
}

pub fn header(h: Option<&etcd_client::ResponseHeader>, nested: bool) -> Option<Header> {
    h.map(|h| Header {
        revision: h.revision(),
        ids_set: nested.then(|| [h.cluster_id() != 0, h.member_id() != 0, h.raft_term() != 0]),
    })
}

pub fn kv(k: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: B(k.key().to_vec()),
        create: k.create_revision(),
        modified: k.mod_revision(),
        version: k.version(),
        value: B(k.value().to_vec()),
        lease: k.lease(),
    }
}

pub fn range_answer(r: &etcd_client::GetResponse, nested: bool) -> Answer {
    Answer::Range {
        header: header(r.header(), nested),
        kvs: r.kvs().iter().map(kv).collect(),
        more: r.more(),
        count: r.count(),
    }
}

pub fn put_answer(r: &etcd_client::PutResponse, nested: bool) -> Answer {
    Answer::Put {
        header: header(r.header(), nested),
        prev_kv: r.prev_key().map(kv),
    }
}

pub fn delete_answer(r: &etcd_client::DeleteResponse, nested: bool) -> Answer {
    Answer::Delete {
        header: header(r.header(), nested),
        deleted: r.deleted(),
        prev_kvs: r.prev_kvs().iter().map(kv).collect(),
    }
}

pub fn txn_answer(r: &etcd_client::TxnResponse, nested: bool) -> Answer {
    Answer::Txn {
        header: header(r.header(), nested),
        succeeded: r.succeeded(),
        responses: r
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Get(x) => range_answer(x, true),
                TxnOpResponse::Put(x) => put_answer(x, true),
                TxnOpResponse::Delete(x) => delete_answer(x, true),
                TxnOpResponse::Txn(x) => txn_answer(x, true),
            })
            .collect(),
    }
}

pub fn raw_answer(r: raw::RangeResponse) -> Answer {
    Answer::Range {
        header: r.header.map(|h| Header {
            revision: h.revision,
            ids_set: None,
        }),
        kvs: r
            .kvs
            .into_iter()
            .map(|k| Kv {
                key: B(k.key),
                create: k.create_revision,
                modified: k.mod_revision,
                version: k.version,
                value: B(k.value),
                lease: k.lease,
            })
            .collect(),
        more: r.more,
        count: r.count,
    }
}

/// The revision an answer's header reports, if it has one.
pub fn revision_of(a: &Answer) -> Option<i64> {
    match a {
        Answer::Range { header, .. }
        | Answer::Put { header, .. }
        | Answer::Delete { header, .. }
        | Answer::Txn { header, .. }
        | Answer::Compact { header } => header.as_ref().map(|h| h.revision),
        Answer::Error { .. } => None,
    }
}
