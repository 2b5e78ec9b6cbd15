//! One server, and an operation sent to it through etcd-client or raw gRPC.

use etcd_client::{Client, CompactionOptions};
use tonic::codegen::http::uri::PathAndQuery;

use super::answers::*;
use super::generator::VALUES;
use super::ops::*;
use super::raw;

/// One server, through etcd-client and raw gRPC.
pub struct Endpoint {
    pub name: String,
    pub client: Client,
    pub raw: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Endpoint {
    pub async fn connect(name: &str, url: &str) -> Endpoint {
        let client = Client::connect([url], None)
            .await
            .unwrap_or_else(|e| panic!("connecting to {name} at {url}: {e}"));
        let channel = tonic::transport::Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to {name} at {url}: {e}"));
        Endpoint {
            name: name.into(),
            client,
            raw: tonic::client::Grpc::new(channel),
        }
    }

    pub async fn run(&mut self, op: &Op) -> Answer {
        let status = |e: etcd_client::Error, name: &str| match e {
            etcd_client::Error::GRpcStatus(s) => Answer::Error {
                code: s.code(),
                message: s.message().to_string(),
            },
            other => panic!("{name}: {op:?} failed outside gRPC: {other}"),
        };
        let kv = &mut self.client;
        let name = self.name.as_str();
        match op {
            Op::Get(r) => match kv.get(r.key.0.clone(), Some(get_options(r))).await {
                Ok(x) => range_answer(&x, false),
                Err(e) => status(e, name),
            },
            Op::Put(p) => match kv
                .put(p.key.0.clone(), p.value.0.clone(), Some(put_options(p)))
                .await
            {
                Ok(x) => put_answer(&x, false),
                Err(e) => status(e, name),
            },
            Op::BigPut { key, len } => match kv.put(key.0.clone(), vec![b'x'; *len], None).await {
                Ok(x) => put_answer(&x, false),
                Err(e) => status(e, name),
            },
            Op::Delete(d) => match kv.delete(d.key.0.clone(), Some(delete_options(d))).await {
                Ok(x) => delete_answer(&x, false),
                Err(e) => status(e, name),
            },
            Op::Txn(t) => match kv.txn(txn(t)).await {
                Ok(x) => txn_answer(&x, false),
                Err(e) => status(e, name),
            },
            Op::Compact { revision, physical } => {
                let mut o = CompactionOptions::new();
                if *physical {
                    o = o.with_physical();
                }
                match kv.compact(*revision, Some(o)).await {
                    Ok(x) => Answer::Compact {
                        header: header(x.header(), false),
                    },
                    Err(e) => status(e, name),
                }
            }
            Op::RawTxn { compares, empty_op } => {
                let compare = compares
                    .iter()
                    .map(|c| raw::Compare {
                        result: c.result,
                        target: c.target,
                        key: c.key.0.clone(),
                        range_end: c.range_end.0.clone(),
                        target_union: c.union.map(|(tag, v)| match tag {
                            4 => raw::TargetUnion::Version(v),
                            5 => raw::TargetUnion::CreateRevision(v),
                            6 => raw::TargetUnion::ModRevision(v),
                            7 => raw::TargetUnion::Value(
                                VALUES[v.unsigned_abs() as usize % VALUES.len()].to_vec(),
                            ),
                            _ => raw::TargetUnion::Lease(v),
                        }),
                    })
                    .collect();
                let request = raw::TxnRequest {
                    compare,
                    success: if *empty_op {
                        vec![raw::EmptyOp {}]
                    } else {
                        vec![]
                    },
                    failure: vec![],
                };
                self.raw
                    .ready()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: raw channel: {e}"));
                let answer = self
                    .raw
                    .unary(
                        tonic::Request::new(request),
                        PathAndQuery::from_static("/etcdserverpb.KV/Txn"),
                        tonic_prost::ProstCodec::<raw::TxnRequest, raw::TxnResponse>::default(),
                    )
                    .await;
                match answer {
                    Ok(x) => {
                        let x = x.into_inner();
                        Answer::Txn {
                            header: x.header.map(|h| Header {
                                revision: h.revision,
                                ids_set: None,
                            }),
                            succeeded: x.succeeded,
                            // The branches are empty whenever the txn is accepted.
                            responses: x
                                .responses
                                .iter()
                                .map(|_| Answer::Compact { header: None })
                                .collect(),
                        }
                    }
                    Err(s) => Answer::Error {
                        code: s.code(),
                        message: s.message().to_string(),
                    },
                }
            }
            Op::RawRange(r) => {
                self.raw
                    .ready()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: raw channel: {e}"));
                let answer = self
                    .raw
                    .unary(
                        tonic::Request::new(raw::range_request(r)),
                        PathAndQuery::from_static("/etcdserverpb.KV/Range"),
                        tonic_prost::ProstCodec::<raw::RangeRequest, raw::RangeResponse>::default(),
                    )
                    .await;
                match answer {
                    Ok(x) => raw_answer(x.into_inner()),
                    Err(s) => Answer::Error {
                        code: s.code(),
                        message: s.message().to_string(),
                    },
                }
            }
        }
    }
}
