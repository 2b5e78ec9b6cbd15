//! etcd's RPCs that this gateway does not serve yet. Left to tonic, they get UNIMPLEMENTED with an
//! empty message, which etcdctl prints as `desc = ` and nothing more; here each answer names the
//! method instead ([`not_served`]).
//!
//! There are two cases:
//! - a whole service of etcd's that we do not serve: one stand-in service each ([`Watch`],
//!   [`Lease`], [`Auth`], [`Election`], [`Lock`]) answers all of its methods;
//! - a method missing from a service we do serve: tonic's generated server answers it before our
//!   code sees the request, so [`NameMissing`] completes that answer on its way out. It wraps the
//!   `Cluster` and `Maintenance` servers only; `KV` serves all of etcd's KV methods, so its path
//!   (the hot one) is left alone.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, Request, Response, Uri};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The answer to the RPC at `path` (`/package.Service/Method`), which we do not serve yet.
pub fn not_served(path: &str) -> Status {
    let method = path
        .rsplit('/')
        .next()
        .filter(|m| !m.is_empty())
        .unwrap_or(path);
    Status::unimplemented(format!("etcdserver: {method} is not served yet"))
}

fn not_served_response(path: &str) -> Response<Body> {
    not_served(path).into_http()
}

macro_rules! not_served_yet {
    ($($(#[$doc:meta])* $name:ident = $service:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Default)]
        pub struct $name;

        impl NamedService for $name {
            const NAME: &'static str = $service;
        }

        impl Service<Request<Body>> for $name {
            type Response = Response<Body>;
            type Error = Infallible;
            type Future = Ready<Result<Response<Body>, Infallible>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: Request<Body>) -> Self::Future {
                ready(Ok(not_served_response(req.uri().path())))
            }
        }
    )*};
}

not_served_yet! {
    /// etcd's `Watch` service, not served yet.
    Watch = "etcdserverpb.Watch";
    /// etcd's `Lease` service, not served yet.
    Lease = "etcdserverpb.Lease";
    /// etcd's `Auth` service, not served yet.
    Auth = "etcdserverpb.Auth";
    /// etcd's `Election` service (`etcdctl elect`), not served yet.
    Election = "v3electionpb.Election";
    /// etcd's `Lock` service (`etcdctl lock`), not served yet.
    Lock = "v3lockpb.Lock";
}

/// A served gRPC service whose missing methods answer [`not_served`] instead of tonic's
/// UNIMPLEMENTED without a message.
#[derive(Clone)]
pub struct NameMissing<S>(pub S);

impl<S: NamedService> NamedService for NameMissing<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for NameMissing<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Named<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The path shares the request's buffer, so keeping it costs no copy.
        let uri = req.uri().clone();
        Named {
            inner: self.0.call(req),
            uri,
        }
    }
}

/// The answer of a [`NameMissing`] service.
pub struct Named<F> {
    inner: F,
    uri: Uri,
}

impl<F> Future for Named<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll(cx)
            .map(|answer| answer.map(|resp| name_if_missing(resp, this.uri.path())))
    }
}

/// Our own refusals always carry a message, so an UNIMPLEMENTED without one is tonic's answer to
/// a method that is not in our proto.
fn name_if_missing(resp: Response<Body>, path: &str) -> Response<Body> {
    let headers = resp.headers();
    let unimplemented = headers
        .get(GRPC_STATUS)
        .is_some_and(|code| code.as_bytes() == b"12");
    if unimplemented && !headers.contains_key(GRPC_MESSAGE) {
        return not_served_response(path);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_the_method() {
        let s = not_served("/etcdserverpb.Lease/LeaseGrant");
        assert_eq!(s.code(), tonic::Code::Unimplemented);
        assert_eq!(s.message(), "etcdserver: LeaseGrant is not served yet");
        assert_eq!(
            not_served("/etcdserverpb.Watch/Watch").message(),
            "etcdserver: Watch is not served yet"
        );
    }
}
