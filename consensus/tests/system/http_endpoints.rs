//! etcd's plain HTTP endpoints on the client port, beside gRPC: `/health` and `/version` answer
//! as a real etcd 3.4.23 does (status, the headers its handlers set, body), `/metrics` uses
//! etcd's names and types for what it exports, and `/health` turns 503 when the member has lost
//! its quorum.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::addresses::{
    HTTP_CLUSTER as CLUSTER, HTTP_ETCD as ETCD, HTTP_OURS as OURS, JSON_ETCD, JSON_OURS,
};
use crate::support::*;

/// An answer as a client sees it: the status code, the headers etcd's handlers set, the body.
#[derive(Debug, PartialEq)]
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection to `host`:2379.
fn http(host: &str, method: &str, path: &str) -> Answer {
    http_with_body(host, method, path, "")
}

fn http_with_body(host: &str, method: &str, path: &str, body: &str) -> Answer {
    let mut s = TcpStream::connect((host, 2379)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}:2379\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    // Go sends some answers chunked (with trailers after the last chunk).
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    // Date and Content-Length differ by nature; these are what etcd's handlers choose.
    let kept = [
        "content-type",
        "allow",
        "x-content-type-options",
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
    ];
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| kept.contains(&k.as_str()))
        .collect();
    headers.sort();
    Answer {
        code,
        headers,
        body,
    }
}

/// The data of a chunked body: hex size, CRLF, data, CRLF, ..., up to the zero-size chunk.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}

#[test]
fn health_version_and_metrics_answer_as_real_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let (ours, _etcd, _) = ours_and_etcd(tmp.path(), OURS, ETCD);

    for (method, path) in [
        ("GET", "/health"),
        ("GET", "/version"),
        ("POST", "/health"),
        ("PUT", "/version"),
    ] {
        let theirs = http(ETCD, method, path);
        let mine = http(OURS, method, path);
        assert_eq!(mine, theirs, "{method} {path}");
    }
    let health = http(OURS, "GET", "/health");
    assert_eq!(
        (health.code, health.body.as_str()),
        (200, r#"{"health":"true"}"#)
    );
    let version = http(OURS, "GET", "/version");
    assert_eq!(
        version.body,
        r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#
    );
    // gRPC still works on the same port, after HTTP/1.1 connections.
    ours.ctl_ok(&["put", "k", "v"]);
    assert!(ours.ctl_ok(&["get", "k"]).contains('v'));

    // Every metric we export under etcd's names is one of etcd's, of the same type; our own
    // carry the prefix etcdrs_.
    let theirs = http(ETCD, "GET", "/metrics");
    let mine = http(OURS, "GET", "/metrics");
    assert_eq!((mine.code, &mine.headers), (theirs.code, &theirs.headers));
    let types = |a: &Answer| -> Vec<String> {
        a.body
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(str::to_string)
            .collect()
    };
    let etcd_types = types(&theirs);
    let our_types = types(&mine);
    assert!(our_types.len() >= 14, "{}", mine.body);
    // etcd's per-peer snapshot counters (rafthttp's, labelled `To` or `From`) only show once a
    // member has sent or received one, which a lone etcd never does; ours are their sums.
    let per_peer_in_etcd = [
        "etcd_network_snapshot_send_success",
        "etcd_network_snapshot_send_failures",
        "etcd_network_snapshot_receive_success",
        "etcd_network_snapshot_receive_failures",
    ];
    for t in &our_types {
        let unseen_alone = per_peer_in_etcd
            .iter()
            .any(|n| *t == format!("# TYPE {n} counter"));
        assert!(
            etcd_types.contains(t) || t.starts_with("# TYPE etcdrs_") || unseen_alone,
            "etcd 3.4.23 has no '{t}'"
        );
    }
    let sample = |name: &str| -> f64 {
        mine.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{}", mine.body))
    };
    assert_eq!(sample("etcd_server_has_leader"), 1.0);
    assert_eq!(sample("etcdrs_peer_messages_refused_total"), 0.0);
    assert_eq!(sample("etcd_server_is_leader"), 1.0);
    // The put above and the member's publish, at least, were synced and applied.
    assert!(sample("etcd_disk_wal_fsync_duration_seconds_count") >= 2.0);
    assert!(sample("etcd_server_proposals_applied_total") >= 2.0);
    assert!(sample("etcd_debugging_mvcc_current_revision") >= 2.0);
    assert!(sample("etcd_server_health_success") >= 1.0);
    assert_eq!(
        http(OURS, "POST", "/metrics").code,
        http(ETCD, "POST", "/metrics").code
    );
}

/// The JSON gateway's answer made comparable: what names the cluster and the member, and what
/// depends on the database's files, dropped.
fn comparable(a: &Answer) -> (u16, serde_json::Value) {
    let mut v: serde_json::Value =
        serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("not JSON: {a:?}"));
    if let Some(h) = v.get_mut("header").and_then(|h| h.as_object_mut()) {
        for k in ["cluster_id", "member_id", "raft_term"] {
            h.remove(k);
        }
    }
    // Members differ in ID, name and URLs by design: keep which fields each has.
    if let Some(members) = v.get_mut("members").and_then(|m| m.as_array_mut()) {
        for m in members.iter_mut() {
            if let Some(o) = m.as_object() {
                *m = serde_json::json!(o.keys().collect::<Vec<_>>());
            }
        }
    }
    if let Some(o) = v.as_object_mut() {
        for k in [
            "leader",
            "raftIndex",
            "raftTerm",
            "raftAppliedIndex",
            "dbSize",
            "dbSizeInUse",
        ] {
            o.remove(k);
        }
        // Go's JSON parser words its errors otherwise.
        if o.get("code").and_then(|c| c.as_u64()) == Some(3)
            && o.get("error")
                .is_some_and(|e| !e.to_string().contains("etcdserver"))
        {
            o.remove("error");
            o.remove("message");
        }
    }
    (a.code, v)
}

#[test]
fn the_json_gateway_answers_as_etcds() {
    let tmp = tempfile::tempdir().unwrap();
    // Ours stops (by PID) when this goes out of scope.
    let (_ours, _etcd, _) = ours_and_etcd(tmp.path(), JSON_OURS, JSON_ETCD);
    // foo = Zm9v, fop = Zm9w, bar = YmFy, baz = YmF6, fo = Zm8=
    let script = [
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#, 200),
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
            200,
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#, 200),
        (
            "/v3beta/kv/range",
            r#"{"key":"Zm8=","rangeEnd":"Zm9w","sort_order":"DESCEND"}"#,
            200,
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":2}"#, 200),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#, 400),
        (
            "/v3/kv/range",
            r#"{"key":"bm9wZQ==","count_only":true}"#,
            200,
        ),
        ("/v3/kv/put", r#"{"key":"","value":"YmFy"}"#, 400),
        ("/v3/kv/put", "not json", 400),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmF6"}],"success":[{"request_range":{"key":"Zm9v"}},{"request_put":{"key":"YmFy","value":"MQ==","prev_kv":true}}],"failure":[{"request_delete_range":{"key":"Zm9v"}}]}"#,
            200,
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","target":"VERSION","result":"GREATER","version":"5"}],"failure":[{"request_range":{"key":"YmFy"}}]}"#,
            200,
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","target":"MOD","result":"LESS","modRevision":"100"}],"success":[{"requestTxn":{"success":[{"requestRange":{"key":"Zm9v","countOnly":true}}]}}]}"#,
            200,
        ),
        (
            "/v3/kv/txn",
            r#"{"success":[{"request_put":{"key":"YmFy","value":"MQ=="}},{"request_put":{"key":"YmFy","value":"Mg=="}}]}"#,
            400,
        ),
        ("/v3/cluster/member/list", "{}", 200),
        (
            "/v3/kv/deleterange",
            r#"{"key":"Zm9v","prev_kv":true}"#,
            200,
        ),
        ("/v3/kv/compaction", r#"{"revision":"2"}"#, 200),
        ("/v3/kv/compaction", r#"{"revision":"2"}"#, 400),
        ("/v3/maintenance/status", "{}", 200),
    ];
    let mut differences = Vec::new();
    for (path, body, code) in script {
        let theirs = http_with_body(JSON_ETCD, "POST", path, body);
        let mine = http_with_body(JSON_OURS, "POST", path, body);
        let (t, m) = (comparable(&theirs), comparable(&mine));
        if t != m || mine.headers != theirs.headers || theirs.code != code {
            differences.push(format!(
                "{path} {body}\n  etcd: {theirs:?}\n  ours: {mine:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // A GET is refused as etcd refuses it.
    assert_eq!(
        http(JSON_OURS, "GET", "/v3/kv/range").code,
        http(JSON_ETCD, "GET", "/v3/kv/range").code
    );
    // What this gateway does not serve yet says so.
    let grant = http_with_body(JSON_OURS, "POST", "/v3/lease/grant", r#"{"TTL":"5"}"#);
    assert_eq!(grant.code, 501, "{grant:?}");
}

#[test]
fn health_is_503_without_a_quorum() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = http_cluster(tmp.path(), "h", &CLUSTER, "", &[]);
    for host in CLUSTER {
        assert_eq!(http(host, "GET", "/health").code, 200, "{host}");
    }
    for m in &mut members[1..] {
        m.stop();
    }
    // Once it no longer reaches a quorum (at once if it led, after an election timeout if not),
    // the lone member says so, and within about the second its read may take.
    let unhealthy = eventually(
        Duration::from_secs(20),
        "a 503 from the lone member",
        || {
            let asked = Instant::now();
            let a = http(CLUSTER[0], "GET", "/health");
            (a.code == 503).then(|| (a, asked.elapsed()))
        },
    );
    assert_eq!(unhealthy.0.body, "{\"health\":\"false\"}\n");
    assert!(
        unhealthy.0.headers.contains(&(
            "content-type".to_string(),
            "text/plain; charset=utf-8".to_string()
        )),
        "{:?}",
        unhealthy.0.headers
    );
    assert!(
        unhealthy.1 < Duration::from_secs(3),
        "/health took {:?}",
        unhealthy.1
    );
}
