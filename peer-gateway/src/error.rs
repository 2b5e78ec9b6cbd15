//! The one error type of the peer gateway.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} file {}: {source}", path.display())]
    TlsFileRead {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what} file {}: {reason}", path.display())]
    TlsFileInvalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("peer TLS setup failed: {0}")]
    Tls(String),
    #[error("invalid peer URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot resolve peer host {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot listen for peers on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("none of our listen-peer URLs can reach {0} (address family differs)")]
    NoEndpoint(SocketAddr),
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: u64, limit: usize },
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("a snapshot image of {len} bytes exceeds the limit of {limit} bytes")]
    ImageTooLarge { len: u64, limit: u64 },
    #[error("{0}")]
    Snapshot(String),
    #[error("no progress for {stall:?} while {what}")]
    SnapshotStalled {
        what: &'static str,
        stall: std::time::Duration,
    },
    #[error("the peer ended the stream: {0}")]
    PeerGone(String),
    #[error("malformed cluster query or answer: {0}")]
    MalformedMembers(String),
    #[error("member {0:x} is not in the member table")]
    UnknownPeer(u64),
    #[error("stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("QUIC connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("QUIC connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("QUIC stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("QUIC stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("QUIC stream already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    #[error("QUIC stream failed: {0}")]
    Stopped(#[from] quinn::StoppedError),
    #[error("no listen-peer URL configured")]
    NoListenUrl,
    #[error("peer handshake timed out")]
    HandshakeTimeout,
    #[error("peer refused the connection: {0}")]
    Refused(String),
    #[error("{0}")]
    ConsensusUnreachable(std::io::Error),
    #[error("consensus refused the registration: {0}")]
    RegistrationRefused(capnp::Error),
    #[error("malformed message from consensus: {0}")]
    Ipc(#[from] capnp::Error),
    #[error("consensus closed the raft stream")]
    RaftStreamClosed,
    #[error("raft stream I/O failed: {0}")]
    RaftStreamIo(std::io::Error),
    #[error("corrupt raft stream from consensus: {0}")]
    RaftStreamCorrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
