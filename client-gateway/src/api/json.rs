//! etcd's JSON gateway under `/v3/` (and `/v3beta/`): a request POSTed as JSON is translated into
//! the same call the gRPC service makes, and the answer written as etcd's gateway writes it: the
//! proto's field names, zero fields left out, 64-bit integers as strings, bytes in base64. A
//! request may give field names as in the proto or in lowerCamelCase, integers as strings or
//! numbers, enums by name or number (as Go's jsonpb reads them). Served: `kv/range`, `kv/put`,
//! `kv/deleterange`, `kv/txn`, `kv/compaction`, `cluster/member/list` and `maintenance/status`
//! ([`route`]); other paths answer 501. A call goes to the same [`Services`] gRPC uses.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde_json::Value;
use tonic::{Code, Status};

use crate::api::cluster::ClusterService;
use crate::api::kv::KvService;
use crate::api::maintenance::MaintenanceService;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, MemberListRequest,
    MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, StatusRequest, StatusResponse, TxnRequest, TxnResponse, compare,
    request_op, response_op,
};
use crate::proto::mvccpb::KeyValue;

/// The gRPC services a JSON request is handed to, so that it is checked and served exactly as the
/// same request over gRPC.
#[derive(Clone)]
pub struct Services {
    pub kv: KvService,
    pub cluster: ClusterService,
    pub maintenance: MaintenanceService,
}

/// The calls the gateway serves, by path under the prefix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Call {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compaction,
    MemberList,
    Status,
}

/// The gateway's prefixes (etcd 3.4 serves both).
pub fn is_gateway_path(path: &str) -> bool {
    path.starts_with("/v3/") || path.starts_with("/v3beta/")
}

/// The call `path` names, if this gateway serves it.
pub fn route(path: &str) -> Option<Call> {
    let rest = path
        .strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))?;
    Some(match rest {
        "kv/range" => Call::Range,
        "kv/put" => Call::Put,
        "kv/deleterange" => Call::DeleteRange,
        "kv/txn" => Call::Txn,
        "kv/compaction" => Call::Compaction,
        "cluster/member/list" => Call::MemberList,
        "maintenance/status" => Call::Status,
        _ => return None,
    })
}

/// Runs `call` with the JSON `body`; the answer's JSON, or the gRPC status it failed with.
pub async fn serve(services: &Services, call: Call, body: &[u8]) -> Result<String, Status> {
    let req = Request::parse(body)?;
    let Services {
        kv,
        cluster,
        maintenance,
    } = services;
    Ok(match call {
        Call::Range => range_json(
            &kv.range(tonic::Request::new(range_request(&req)?))
                .await?
                .into_inner(),
        ),
        Call::Put => put_json(
            &kv.put(tonic::Request::new(put_request(&req)?))
                .await?
                .into_inner(),
        ),
        Call::DeleteRange => delete_range_json(
            &kv.delete_range(tonic::Request::new(delete_range_request(&req)?))
                .await?
                .into_inner(),
        ),
        Call::Txn => txn_json(
            &kv.txn(tonic::Request::new(txn_request(&req)?))
                .await?
                .into_inner(),
        ),
        Call::Compaction => {
            let r = CompactionRequest {
                revision: req.int("revision")?,
                physical: req.bool("physical")?,
            };
            let resp = kv.compact(tonic::Request::new(r)).await?.into_inner();
            let mut o = Obj::default();
            o.header(&resp.header);
            o.end()
        }
        Call::MemberList => member_list_json(
            &cluster
                .member_list(tonic::Request::new(MemberListRequest {
                    linearizable: req.bool("linearizable")?,
                }))
                .await?
                .into_inner(),
        ),
        Call::Status => status_json(
            &maintenance
                .status(tonic::Request::new(StatusRequest {}))
                .await?
                .into_inner(),
        ),
    })
}

fn range_request(req: &Request) -> Result<RangeRequest, Status> {
    Ok(RangeRequest {
        key: req.bytes("key")?,
        range_end: req.bytes("range_end")?,
        limit: req.int("limit")?,
        revision: req.int("revision")?,
        sort_order: req.enumeration("sort_order", &["NONE", "ASCEND", "DESCEND"])?,
        sort_target: req
            .enumeration("sort_target", &["KEY", "VERSION", "CREATE", "MOD", "VALUE"])?,
        serializable: req.bool("serializable")?,
        keys_only: req.bool("keys_only")?,
        count_only: req.bool("count_only")?,
        min_mod_revision: req.int("min_mod_revision")?,
        max_mod_revision: req.int("max_mod_revision")?,
        min_create_revision: req.int("min_create_revision")?,
        max_create_revision: req.int("max_create_revision")?,
    })
}

fn put_request(req: &Request) -> Result<PutRequest, Status> {
    Ok(PutRequest {
        key: req.bytes("key")?,
        value: req.bytes("value")?,
        lease: req.int("lease")?,
        prev_kv: req.bool("prev_kv")?,
        ignore_value: req.bool("ignore_value")?,
        ignore_lease: req.bool("ignore_lease")?,
    })
}

fn delete_range_request(req: &Request) -> Result<DeleteRangeRequest, Status> {
    Ok(DeleteRangeRequest {
        key: req.bytes("key")?,
        range_end: req.bytes("range_end")?,
        prev_kv: req.bool("prev_kv")?,
    })
}

fn txn_request(req: &Request) -> Result<TxnRequest, Status> {
    let ops = |name| -> Result<Vec<RequestOp>, Status> {
        req.objects(name)?.iter().map(request_op).collect()
    };
    Ok(TxnRequest {
        compare: req
            .objects("compare")?
            .iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: ops("success")?,
        failure: ops("failure")?,
    })
}

fn compare(c: &Request) -> Result<Compare, Status> {
    use compare::TargetUnion;
    // The target union is whichever of its fields is given.
    let target_union = if c.get("version").is_some() {
        Some(TargetUnion::Version(c.int("version")?))
    } else if c.get("create_revision").is_some() {
        Some(TargetUnion::CreateRevision(c.int("create_revision")?))
    } else if c.get("mod_revision").is_some() {
        Some(TargetUnion::ModRevision(c.int("mod_revision")?))
    } else if c.get("value").is_some() {
        Some(TargetUnion::Value(c.bytes("value")?))
    } else if c.get("lease").is_some() {
        Some(TargetUnion::Lease(c.int("lease")?))
    } else {
        None
    };
    Ok(Compare {
        result: c.enumeration("result", &["EQUAL", "GREATER", "LESS", "NOT_EQUAL"])?,
        target: c.enumeration("target", &["VERSION", "CREATE", "MOD", "VALUE", "LEASE"])?,
        key: c.bytes("key")?,
        range_end: c.bytes("range_end")?,
        target_union,
    })
}

fn request_op(op: &Request) -> Result<RequestOp, Status> {
    use request_op::Request as Op;
    let request = if let Some(r) = op.object("request_range")? {
        Some(Op::RequestRange(range_request(&r)?))
    } else if let Some(r) = op.object("request_put")? {
        Some(Op::RequestPut(put_request(&r)?))
    } else if let Some(r) = op.object("request_delete_range")? {
        Some(Op::RequestDeleteRange(delete_range_request(&r)?))
    } else if let Some(r) = op.object("request_txn")? {
        Some(Op::RequestTxn(txn_request(&r)?))
    } else {
        None
    };
    Ok(RequestOp { request })
}

/// A request body: a JSON object whose fields are read by their proto names.
struct Request(serde_json::Map<String, Value>);

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

impl Request {
    fn parse(body: &[u8]) -> Result<Request, Status> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Request(serde_json::Map::new()));
        }
        match serde_json::from_slice::<Value>(body).map_err(|e| invalid(e.to_string()))? {
            Value::Object(map) => Ok(Request(map)),
            other => Err(invalid(format!(
                "the request must be a JSON object, not {other}"
            ))),
        }
    }

    /// The field named `name` (snake_case, as in the proto) or its lowerCamelCase form.
    fn get(&self, name: &str) -> Option<&Value> {
        if let Some(v) = self.0.get(name) {
            return Some(v).filter(|v| !v.is_null());
        }
        let mut camel = String::with_capacity(name.len());
        let mut upper = false;
        for c in name.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                camel.push(c.to_ascii_uppercase());
                upper = false;
            } else {
                camel.push(c);
            }
        }
        self.0.get(&camel).filter(|v| !v.is_null())
    }

    /// A message field, read the same way.
    fn object(&self, name: &str) -> Result<Option<Request>, Status> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Request(map.clone()))),
            Some(v) => Err(invalid(format!(
                "field {name}: expected an object, got {v}"
            ))),
        }
    }

    /// A repeated message field.
    fn objects(&self, name: &str) -> Result<Vec<Request>, Status> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Object(map) => Ok(Request(map.clone())),
                    v => Err(invalid(format!("field {name}: expected objects, got {v}"))),
                })
                .collect(),
            Some(v) => Err(invalid(format!("field {name}: expected a list, got {v}"))),
        }
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, Status> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => STANDARD
                .decode(s)
                .or_else(|_| URL_SAFE.decode(s))
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
                .map_err(|e| invalid(format!("field {name}: not base64 ({e}): {s:?}"))),
            Some(v) => Err(invalid(format!(
                "field {name}: expected a base64 string, got {v}"
            ))),
        }
    }

    fn int(&self, name: &str) -> Result<i64, Status> {
        match self.get(name) {
            None => Ok(0),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| invalid(format!("field {name}: not a 64-bit integer: {n}"))),
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| invalid(format!("field {name}: not a 64-bit integer: {s:?}"))),
            Some(v) => Err(invalid(format!(
                "field {name}: expected an integer, got {v}"
            ))),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, Status> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(invalid(format!(
                "field {name}: expected true or false, got {v}"
            ))),
        }
    }

    /// An enum by name (`names[i]` is value i) or by number.
    fn enumeration(&self, name: &str, names: &[&str]) -> Result<i32, Status> {
        match self.get(name) {
            None => Ok(0),
            Some(Value::String(s)) => names
                .iter()
                .position(|n| n == s)
                .map(|i| i as i32)
                .ok_or_else(|| invalid(format!("field {name}: unknown value {s:?}"))),
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(|| invalid(format!("field {name}: not an enum value: {n}"))),
            Some(v) => Err(invalid(format!("field {name}: expected a name, got {v}"))),
        }
    }
}

/// A JSON object written field by field, in the proto's order, zero fields left out.
#[derive(Default)]
struct Obj(String);

impl Obj {
    fn key(&mut self, name: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push('"');
        self.0.push_str(name);
        self.0.push_str("\":");
    }

    /// 64-bit integers are strings in proto3's JSON.
    fn int(&mut self, name: &str, v: impl Into<i128>) {
        let v = v.into();
        if v != 0 {
            self.key(name);
            self.0.push('"');
            self.0.push_str(&v.to_string());
            self.0.push('"');
        }
    }

    fn bytes(&mut self, name: &str, v: &[u8]) {
        if !v.is_empty() {
            self.key(name);
            self.0.push('"');
            self.0.push_str(&STANDARD.encode(v));
            self.0.push('"');
        }
    }

    fn text(&mut self, name: &str, v: &str) {
        if !v.is_empty() {
            self.key(name);
            self.0.push_str(&Value::String(v.to_string()).to_string());
        }
    }

    fn bool(&mut self, name: &str, v: bool) {
        if v {
            self.key(name);
            self.0.push_str("true");
        }
    }

    fn raw(&mut self, name: &str, json: String) {
        self.key(name);
        self.0.push_str(&json);
    }

    fn list(&mut self, name: &str, items: impl ExactSizeIterator<Item = String>) {
        if items.len() > 0 {
            let all: Vec<String> = items.collect();
            self.raw(name, format!("[{}]", all.join(",")));
        }
    }

    fn header(&mut self, h: &Option<ResponseHeader>) {
        if let Some(h) = h {
            let mut o = Obj::default();
            o.int("cluster_id", h.cluster_id);
            o.int("member_id", h.member_id);
            o.int("revision", h.revision);
            o.int("raft_term", h.raft_term);
            self.raw("header", o.end());
        }
    }

    fn end(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

fn kv_json(kv: &KeyValue) -> String {
    let mut o = Obj::default();
    o.bytes("key", &kv.key);
    o.int("create_revision", kv.create_revision);
    o.int("mod_revision", kv.mod_revision);
    o.int("version", kv.version);
    o.bytes("value", &kv.value);
    o.int("lease", kv.lease);
    o.end()
}

fn range_json(r: &RangeResponse) -> String {
    let mut o = Obj::default();
    o.header(&r.header);
    o.list("kvs", r.kvs.iter().map(kv_json));
    o.bool("more", r.more);
    o.int("count", r.count);
    o.end()
}

fn put_json(r: &PutResponse) -> String {
    let mut o = Obj::default();
    o.header(&r.header);
    if let Some(kv) = &r.prev_kv {
        o.raw("prev_kv", kv_json(kv));
    }
    o.end()
}

fn delete_range_json(r: &DeleteRangeResponse) -> String {
    let mut o = Obj::default();
    o.header(&r.header);
    o.int("deleted", r.deleted);
    o.list("prev_kvs", r.prev_kvs.iter().map(kv_json));
    o.end()
}

fn txn_json(r: &TxnResponse) -> String {
    let mut o = Obj::default();
    o.header(&r.header);
    o.bool("succeeded", r.succeeded);
    o.list("responses", r.responses.iter().map(response_op_json));
    o.end()
}

fn response_op_json(op: &ResponseOp) -> String {
    use response_op::Response as Op;
    let mut o = Obj::default();
    match &op.response {
        Some(Op::ResponseRange(r)) => o.raw("response_range", range_json(r)),
        Some(Op::ResponsePut(r)) => o.raw("response_put", put_json(r)),
        Some(Op::ResponseDeleteRange(r)) => o.raw("response_delete_range", delete_range_json(r)),
        Some(Op::ResponseTxn(r)) => o.raw("response_txn", txn_json(r)),
        None => {}
    }
    o.end()
}

/// etcd's Member fields are named `ID`, `peerURLs`, ... in its proto, and so in its JSON.
fn member_list_json(r: &MemberListResponse) -> String {
    let mut o = Obj::default();
    o.header(&r.header);
    o.list(
        "members",
        r.members.iter().map(|m| {
            let urls = |list: &[String]| {
                list.iter()
                    .map(|u| Value::String(u.clone()).to_string())
                    .collect::<Vec<_>>()
            };
            let mut member = Obj::default();
            member.int("ID", m.id);
            member.text("name", &m.name);
            member.list("peerURLs", urls(&m.peer_urls).into_iter());
            member.list("clientURLs", urls(&m.client_urls).into_iter());
            member.bool("isLearner", m.is_learner);
            member.end()
        }),
    );
    o.end()
}

/// etcd's StatusResponse fields are named in lowerCamelCase in its proto, and so in its JSON.
fn status_json(r: &StatusResponse) -> String {
    let mut o = Obj::default();
    o.header(&r.header);
    o.text("version", &r.version);
    o.int("dbSize", r.db_size);
    o.int("leader", r.leader);
    o.int("raftIndex", r.raft_index);
    o.int("raftTerm", r.raft_term);
    o.int("raftAppliedIndex", r.raft_applied_index);
    o.list(
        "errors",
        r.errors
            .iter()
            .map(|e| Value::String(e.clone()).to_string()),
    );
    o.int("dbSizeInUse", r.db_size_in_use);
    o.bool("isLearner", r.is_learner);
    o.end()
}

/// The HTTP status grpc-gateway gives a gRPC code.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 408,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// The body grpc-gateway (as etcd 3.4 ships it) writes for a failed call.
pub fn error_json(s: &Status) -> String {
    let message = Value::String(s.message().to_string()).to_string();
    format!(
        "{{\"error\":{message},\"message\":{message},\"code\":{}}}",
        s.code() as i32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_proto_and_camel_names_strings_and_numbers() {
        let req = Request::parse(
            br#"{"key":"Zm9v","rangeEnd":"Zm9w","revision":"7","limit":2,"sort_order":"DESCEND","sortTarget":4,"keys_only":true}"#,
        )
        .unwrap();
        let r = range_request(&req).unwrap();
        assert_eq!(
            (r.key.as_slice(), r.range_end.as_slice()),
            (&b"foo"[..], &b"fop"[..])
        );
        assert_eq!((r.revision, r.limit), (7, 2));
        assert_eq!((r.sort_order, r.sort_target), (2, 4));
        assert!(r.keys_only && !r.count_only);
        assert!(Request::parse(b"  ").unwrap().0.is_empty());
    }

    #[test]
    fn bad_requests_are_invalid_arguments_naming_the_field() {
        for (body, needle) in [
            (&br#"{"key":"not base64!"}"#[..], "field key"),
            (br#"{"revision":"x"}"#, "field revision"),
            (br#"{"sort_order":"SIDEWAYS"}"#, "field sort_order"),
            (br#"{"keys_only":"yes"}"#, "field keys_only"),
            (b"[1]", "JSON object"),
            (b"not json", "expected"),
        ] {
            let err = Request::parse(body)
                .and_then(|r| range_request(&r))
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(needle), "{}", err.message());
        }
    }

    #[test]
    fn responses_are_written_as_etcds_gateway_writes_them() {
        let header = Some(ResponseHeader {
            cluster_id: 15045905164725650821,
            member_id: 2590965320387151160,
            revision: 3,
            raft_term: 2,
        });
        let kv = KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: b"baz".to_vec(),
            lease: 0,
        };
        let resp = RangeResponse {
            header,
            kvs: vec![kv],
            more: false,
            count: 1,
        };
        assert_eq!(
            range_json(&resp),
            r#"{"header":{"cluster_id":"15045905164725650821","member_id":"2590965320387151160","revision":"3","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}],"count":"1"}"#
        );
        assert_eq!(put_json(&PutResponse::default()), "{}");
        let err = Status::invalid_argument("etcdserver: key is not provided");
        assert_eq!(http_status(err.code()), 400);
        assert_eq!(
            error_json(&err),
            r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#
        );
    }
}
