//! The plain HTTP endpoints etcd serves beside gRPC on its client URLs, over HTTP/1.1 or HTTP/2:
//! `/health` (healthy: the member knows a leader and serves a linearizable read within a second,
//! as etcd 3.4 checks with a quorum read) and `/version`. Every other path goes on to the gRPC
//! services untouched. Status codes, headers and bodies are etcd 3.4.23's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::warn;

use crate::link::Link;
use crate::plane;
use crate::proto::etcdserverpb::RangeRequest;

/// How long `/health` waits for its read (etcd: one second).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// The etcd release whose API this member speaks, and the cluster version it reports.
const VERSION_JSON: &str = r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#;
const HEALTHY: &str = r#"{"health":"true"}"#;
const UNHEALTHY: &str = r#"{"health":"false"}"#;
const TEXT: &str = "text/plain; charset=utf-8";

/// Puts [`HttpApi`] in front of the gRPC routes.
#[derive(Clone)]
pub struct HttpApiLayer {
    link: Link,
}

impl HttpApiLayer {
    pub fn new(link: Link) -> Self {
        HttpApiLayer { link }
    }
}

impl<S> Layer<S> for HttpApiLayer {
    type Service = HttpApi<S>;

    fn layer(&self, inner: S) -> HttpApi<S> {
        HttpApi {
            link: self.link.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct HttpApi<S> {
    link: Link,
    inner: S,
}

#[derive(Clone, Copy)]
enum Endpoint {
    Health,
    Version,
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
            _ => return Either::Left(self.inner.call(req)),
        };
        if req.method() != Method::GET {
            let mut resp = http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return Either::Right(Box::pin(async move { Ok(resp) }));
        }
        let link = self.link.clone();
        Either::Right(Box::pin(async move {
            Ok(match endpoint {
                Endpoint::Version => respond(StatusCode::OK, "application/json", VERSION_JSON),
                Endpoint::Health => {
                    match tokio::time::timeout(HEALTH_TIMEOUT, check(&link)).await {
                        Ok(Ok(())) => respond(StatusCode::OK, TEXT, HEALTHY),
                        Ok(Err(why)) => {
                            warn!("/health: {why}");
                            http_error(StatusCode::SERVICE_UNAVAILABLE, UNHEALTHY)
                        }
                        Err(_) => {
                            warn!("/health: no linearizable read within {HEALTH_TIMEOUT:?}");
                            http_error(StatusCode::SERVICE_UNAVAILABLE, UNHEALTHY)
                        }
                    }
                }
            })
        }))
    }
}

/// A leader, then a read that must go through it.
async fn check(link: &Link) -> Result<(), String> {
    let status = link
        .call(plane::status)
        .await
        .map_err(|s: Status| s.message().to_string())?;
    if status.leader == 0 {
        return Err("no leader".into());
    }
    let read = RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    };
    link.call(move |s| plane::range(s, read))
        .await
        .map(drop)
        .map_err(|s| s.message().to_string())
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
