//! The one error type of the client gateway. Failures of a single client request are not here:
//! those become a [`tonic::Status`] for that request only.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid log filter {filter:?}: {reason}")]
    LogFilter { filter: String, reason: String },

    #[error("starting the {what} runtime: {source}")]
    Runtime {
        what: &'static str,
        source: std::io::Error,
    },

    #[error("dialing consensus at {}: {source}", path.display())]
    Dial {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("connecting the write stream at {}: {source}", path.display())]
    WriteStream {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("registering with consensus: {0}")]
    Register(capnp::Error),

    #[error("consensus sent a malformed registration: {0}")]
    MalformedRegistration(capnp::Error),

    #[error("the link to consensus stopped")]
    LinkStopped,

    #[error("listen-client-url {url:?}: {reason}")]
    ListenUrl { url: String, reason: String },

    #[error("listening on {url}: {source}")]
    Bind { url: String, source: std::io::Error },

    #[error("serving gRPC on {url}: {reason}")]
    Serve { url: String, reason: String },

    #[error("TLS: {what} {}: {reason}", path.display())]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error("TLS: {0}")]
    Tls(String),
}
