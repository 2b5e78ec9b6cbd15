//! The plain HTTP endpoints etcd serves beside gRPC on its client URLs, over HTTP/1.1 or HTTP/2:
//! `/health` (healthy: the member knows a leader and serves a linearizable read within a second,
//! as etcd 3.4 checks with a quorum read), `/version`, and `/metrics` (Prometheus text, under
//! etcd's names for what consensus counts), and the JSON gateway ([`json`]). Every
//! other path goes on to the gRPC services untouched ([`HttpApi`], in front of them by
//! [`HttpApiLayer`]). Status codes, headers and bodies are etcd 3.4.23's.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::warn;

use crate::api::json;
use crate::consensus::link::Link;
use crate::consensus::plane::MemberMetrics;
use crate::proto::etcdserverpb::RangeRequest;

/// How long `/health` waits for its read (etcd: one second).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// The etcd release whose API this member speaks (`/version`, `/metrics`).
const SERVER_VERSION: &str = "3.4.23";
const HEALTHY: &str = r#"{"health":"true"}"#;
const UNHEALTHY: &str = r#"{"health":"false"}"#;
const TEXT: &str = "text/plain; charset=utf-8";
/// Prometheus's text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The cluster version: major.minor in `/metrics`, with `.0` in `/version`, as etcd reports it.
const CLUSTER_VERSION: &str = "3.4";

/// `/health` answers so far (etcd_server_health_success and _failures).
#[derive(Default)]
struct HealthCounts {
    success: AtomicU64,
    failures: AtomicU64,
}

/// Puts [`HttpApi`] in front of the gRPC routes.
#[derive(Clone)]
pub struct HttpApiLayer {
    link: Link,
    health: Arc<HealthCounts>,
    json: json::Services,
    /// The largest JSON body read (etcd's gRPC message limit).
    max_body: usize,
}

impl HttpApiLayer {
    pub fn new(link: Link, json: json::Services, max_body: usize) -> Self {
        HttpApiLayer {
            link,
            health: Arc::default(),
            json,
            max_body,
        }
    }
}

impl<S> Layer<S> for HttpApiLayer {
    type Service = HttpApi<S>;

    fn layer(&self, inner: S) -> HttpApi<S> {
        HttpApi {
            link: self.link.clone(),
            health: self.health.clone(),
            json: self.json.clone(),
            max_body: self.max_body,
            inner,
        }
    }
}

#[derive(Clone)]
pub struct HttpApi<S> {
    link: Link,
    health: Arc<HealthCounts>,
    json: json::Services,
    max_body: usize,
    inner: S,
}

#[derive(Clone, Copy)]
enum Endpoint {
    Health,
    Version,
    Metrics,
    Json(Option<json::Call>),
}

type Answer<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S> Service<Request<Body>> for HttpApi<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    // gRPC calls keep the inner future as it is: no allocation on their path.
    type Future = Either<S::Future, Answer<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let endpoint = match req.uri().path() {
            "/health" => Endpoint::Health,
            "/version" => Endpoint::Version,
            "/metrics" => Endpoint::Metrics,
            p if json::is_gateway_path(p) => Endpoint::Json(json::route(p)),
            _ => return Either::Left(self.inner.call(req)),
        };
        let allowed = match endpoint {
            // etcd's Prometheus handler takes any method.
            Endpoint::Metrics => true,
            Endpoint::Json(_) => req.method() == Method::POST,
            _ => req.method() == Method::GET,
        };
        if !allowed {
            let mut resp = http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            let allow = if matches!(endpoint, Endpoint::Json(_)) {
                "POST"
            } else {
                "GET"
            };
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            return Either::Right(Box::pin(async move { Ok(resp) }));
        }
        let link = self.link.clone();
        let health = self.health.clone();
        let json = self.json.clone();
        let max_body = self.max_body;
        Either::Right(Box::pin(async move {
            Ok(match endpoint {
                Endpoint::Version => respond(
                    StatusCode::OK,
                    "application/json",
                    &format!(
                        r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}.0"}}"#
                    ),
                ),
                Endpoint::Health => {
                    let checked = tokio::time::timeout(HEALTH_TIMEOUT, check(&link))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!("no linearizable read within {HEALTH_TIMEOUT:?}"))
                        });
                    match checked {
                        Ok(()) => {
                            health.success.fetch_add(1, Ordering::Relaxed);
                            respond(StatusCode::OK, TEXT, HEALTHY)
                        }
                        Err(why) => {
                            health.failures.fetch_add(1, Ordering::Relaxed);
                            warn!("/health: {why}");
                            http_error(StatusCode::SERVICE_UNAVAILABLE, UNHEALTHY)
                        }
                    }
                }
                Endpoint::Json(call) => json_answer(&json, call, req.into_body(), max_body).await,
                Endpoint::Metrics => match link.metrics().await {
                    Ok(m) => respond(StatusCode::OK, PROMETHEUS_TEXT, &exposition(&m, &health)),
                    Err(s) => {
                        warn!("/metrics: {}", s.message());
                        http_error(StatusCode::SERVICE_UNAVAILABLE, s.message())
                    }
                },
            })
        }))
    }
}

/// A JSON gateway call: the body read (up to `max_body` bytes), the call made, the answer or the
/// error written as etcd's gateway writes them.
async fn json_answer(
    services: &json::Services,
    call: Option<json::Call>,
    body: Body,
    max_body: usize,
) -> Response<Body> {
    let answer = match call {
        None => Err(Status::unimplemented(
            "client gateway: this JSON gateway path is not served (see the README)",
        )),
        Some(call) => match Limited::new(body, max_body).collect().await {
            Ok(bytes) => json::serve(services, call, &bytes.to_bytes()).await,
            Err(e) => Err(Status::invalid_argument(format!(
                "reading the request body: {e}"
            ))),
        },
    };
    match answer {
        Ok(json) => respond(StatusCode::OK, "application/json", &json),
        Err(s) => {
            let code = StatusCode::from_u16(json::http_status(s.code()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            respond(code, "application/json", &json::error_json(&s))
        }
    }
}

/// A leader, then a read that must go through it.
async fn check(link: &Link) -> Result<(), String> {
    let status = link
        .status()
        .await
        .map_err(|s: Status| s.message().to_string())?;
    if status.leader == 0 {
        return Err("no leader".into());
    }
    let read = RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    };
    link.range(read)
        .await
        .map(drop)
        .map_err(|s| s.message().to_string())
}

/// One metric family: name, type, help, and its samples as (name suffix and labels, value).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(String, String)>,
);

/// A family of one unlabelled sample.
fn single(name: &'static str, kind: &'static str, help: &'static str, v: impl ToString) -> Family {
    (name, kind, help, vec![(String::new(), v.to_string())])
}

/// etcd's way to export a string: a gauge of 1 with the string as a label.
fn labelled(name: &'static str, help: &'static str, label: &str, v: &str) -> Family {
    (
        name,
        "gauge",
        help,
        vec![(format!("{{{label}=\"{v}\"}}"), "1".into())],
    )
}

/// Prometheus text under etcd's metric names and types (help texts are ours).
fn exposition(m: &MemberMetrics, health: &HealthCounts) -> String {
    let mut fsync = Vec::with_capacity(m.fsync_buckets.len() + 3);
    let mut cumulative = 0u64;
    let bounded = m.fsync_buckets.len().saturating_sub(1);
    for (i, n) in m.fsync_buckets.iter().take(bounded).enumerate() {
        cumulative += n;
        let bound = (1u64 << i) as f64 / 1000.0;
        fsync.push((format!("_bucket{{le=\"{bound}\"}}"), cumulative.to_string()));
    }
    fsync.push(("_bucket{le=\"+Inf\"}".into(), m.fsyncs.to_string()));
    fsync.push(("_sum".into(), (m.fsync_nanos as f64 / 1e9).to_string()));
    fsync.push(("_count".into(), m.fsyncs.to_string()));
    let families: [Family; 23] = [
        labelled(
            "etcd_cluster_version",
            "The cluster version, as a label.",
            "cluster_version",
            CLUSTER_VERSION,
        ),
        single(
            "etcd_debugging_mvcc_current_revision",
            "gauge",
            "The key space's current revision.",
            m.revision,
        ),
        (
            "etcd_disk_wal_fsync_duration_seconds",
            "histogram",
            "How long the raft log's fsyncs took.",
            fsync,
        ),
        single(
            "etcd_mvcc_db_total_size_in_bytes",
            "gauge",
            "The state machine's size on disk.",
            m.db_size,
        ),
        single(
            "etcd_server_has_leader",
            "gauge",
            "1 while this member knows a leader.",
            u8::from(m.has_leader),
        ),
        single(
            "etcd_server_health_failures",
            "counter",
            "/health answers that were not healthy.",
            health.failures.load(Ordering::Relaxed),
        ),
        single(
            "etcd_server_health_success",
            "counter",
            "/health answers that were healthy.",
            health.success.load(Ordering::Relaxed),
        ),
        labelled(
            "etcd_server_id",
            "This member's ID, as a label.",
            "server_id",
            &format!("{:x}", m.member_id),
        ),
        single(
            "etcd_server_is_leader",
            "gauge",
            "1 while this member leads.",
            u8::from(m.is_leader),
        ),
        single(
            "etcd_server_leader_changes_seen_total",
            "counter",
            "Leader changes this member saw.",
            m.leader_changes,
        ),
        single(
            "etcd_server_proposals_applied_total",
            "gauge",
            "The raft index this member applied up to.",
            m.applied_index,
        ),
        single(
            "etcd_server_proposals_committed_total",
            "gauge",
            "The raft index this member knows committed.",
            m.committed_index,
        ),
        single(
            "etcd_server_proposals_failed_total",
            "counter",
            "Proposals answered with an error before they committed.",
            m.proposals_failed,
        ),
        labelled(
            "etcd_server_version",
            "The etcd release whose API this member speaks, as a label.",
            "server_version",
            SERVER_VERSION,
        ),
        single(
            "etcd_network_snapshot_send_success",
            "counter",
            "Raft snapshots sent to other members (etcd's is per peer; this is their sum).",
            m.snapshots_sent,
        ),
        single(
            "etcd_network_snapshot_send_failures",
            "counter",
            "Raft snapshots whose send failed (etcd's is per peer; this is their sum).",
            m.snapshots_send_failed,
        ),
        single(
            "etcd_network_snapshot_receive_success",
            "counter",
            "Raft snapshots received and installed, or found not needed.",
            m.snapshots_received,
        ),
        single(
            "etcd_network_snapshot_receive_failures",
            "counter",
            "Raft snapshots received and refused (damaged, cut short, or another's).",
            m.snapshots_receive_failed,
        ),
        // Ours, not etcd's (so under our own prefix).
        single(
            "etcdrs_peer_messages_refused_total",
            "counter",
            "Raft messages from peers dropped before raft saw them (malformed or unsafe).",
            m.peer_messages_refused,
        ),
        single(
            "etcdrs_peer_cert_refused_total",
            "counter",
            "Peer TLS handshakes refused: the certificate is not of an allowed CN or hostname.",
            m.peer_cert_refused,
        ),
        single(
            "etcdrs_peer_frames_refused_total",
            "counter",
            "Peer streams closed for a frame over the size limit or a malformed header.",
            m.peer_frames_refused,
        ),
        single(
            "etcdrs_peer_messages_dropped_total",
            "counter",
            "Raft messages dropped between members: peer unreachable, queue full, or no \
             connection to consensus (raft resends).",
            m.peer_messages_dropped,
        ),
        single(
            "etcdrs_stream_frames_refused_total",
            "counter",
            "Frames over the size limit that closed consensus's raft or write stream.",
            m.stream_frames_refused,
        ),
    ];
    let mut out = String::with_capacity(2048);
    for (name, kind, help, samples) in &families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (suffix, value) in samples {
            let _ = writeln!(out, "{name}{suffix} {value}");
        }
    }
    out
}

/// What etcd's HTTP handlers add to every answer.
fn respond(code: StatusCode, content_type: &'static str, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::new(body.to_string()));
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// As Go's `http.Error`: plain text, `nosniff`, and a newline after the message.
fn http_error(code: StatusCode, message: &str) -> Response<Body> {
    let mut resp = respond(code, TEXT, &format!("{message}\n"));
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fsync_histogram_is_cumulative_and_ends_at_the_count() {
        let m = MemberMetrics {
            member_id: 0x23f4f53b3b084538,
            fsyncs: 6,
            fsync_nanos: 5_458_484,
            // 4 at most 1 ms, 1 at most 4 ms, then none until 1 above 8.192 s.
            fsync_buckets: [vec![4, 0, 1], vec![0; 11], vec![1]].concat(),
            revision: 2,
            ..Default::default()
        };
        let text = exposition(&m, &HealthCounts::default());
        // The value of the sample named exactly `sample` (name and labels).
        let value = |sample: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
                .to_string()
        };
        let fsync = "etcd_disk_wal_fsync_duration_seconds";
        for (le, cumulative) in [
            ("0.001", "4"),
            ("0.004", "5"),
            ("8.192", "5"),
            ("+Inf", "6"),
        ] {
            assert_eq!(value(&format!("{fsync}_bucket{{le=\"{le}\"}}")), cumulative);
        }
        assert_eq!(value(&format!("{fsync}_sum")), "0.005458484");
        assert_eq!(value(&format!("{fsync}_count")), "6");
        assert_eq!(text.matches("_bucket{").count(), 15);
        for (sample, v) in [
            ("etcd_server_id{server_id=\"23f4f53b3b084538\"}", "1"),
            ("etcd_server_version{server_version=\"3.4.23\"}", "1"),
            ("etcd_debugging_mvcc_current_revision", "2"),
        ] {
            assert_eq!(value(sample), v, "{sample}");
        }
    }

    #[test]
    fn without_buckets_from_an_older_consensus_only_inf_remains() {
        let m = MemberMetrics {
            fsyncs: 3,
            ..Default::default()
        };
        let text = exposition(&m, &HealthCounts::default());
        assert_eq!(text.matches("_bucket{").count(), 1);
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 3"));
    }
}
