//! etcd's plain HTTP endpoints on the client port, beside gRPC: `/health` and `/version` answer
//! as a real etcd 3.4.23 does (status, the headers its handlers set, body), `/metrics` uses
//! etcd's names and types for what it exports, and `/health` turns 503 when the member has lost
//! its quorum.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Ports of this file only: ours on 127.0.0.61, etcd on 127.0.0.62, a cluster on .63-.65.
const OURS: &str = "127.0.0.61";
const ETCD: &str = "127.0.0.62";
const CLUSTER: [&str; 3] = ["127.0.0.63", "127.0.0.64", "127.0.0.65"];

/// An answer as a client sees it: the status code, the headers etcd's handlers set, the body.
#[derive(Debug, PartialEq)]
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection to `host`:2379.
fn http(host: &str, method: &str, path: &str) -> Answer {
    let mut s = TcpStream::connect((host, 2379)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}:2379\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
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
        body: body.to_string(),
    }
}

#[test]
fn health_version_and_metrics_answer_as_real_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let _etcd = start_etcd(tmp.path(), ETCD);
    let ours = single_http_member(tmp.path(), "ours", OURS, "");
    wait_healthy(&ours, Duration::from_secs(30));
    let etcd_endpoint = format!("http://{ETCD}:2379");
    eventually(Duration::from_secs(30), "etcd healthy", || {
        etcdctl(&etcd_endpoint, &[], &["endpoint", "health"])
            .status
            .success()
            .then_some(())
    });

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

    // Every metric we export is one of etcd's, of the same type.
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
    for t in &our_types {
        assert!(etcd_types.contains(t), "etcd 3.4.23 has no '{t}'");
    }
    let sample = |name: &str| -> f64 {
        mine.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{}", mine.body))
    };
    assert_eq!(sample("etcd_server_has_leader"), 1.0);
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
