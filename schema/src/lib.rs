//! The contract between the three processes of a member: the generated Cap'n Proto code for
//! `member.capnp`, where the sockets live, and the one way a gateway dials consensus.

use std::path::{Path, PathBuf};

pub mod member_capnp {
    include!(concat!(env!("OUT_DIR"), "/member_capnp.rs"));
}

pub use member_capnp::PROTOCOL_VERSION;

pub mod stream;
pub use stream::{raft_socket, raft_socket_beside, write_socket, write_socket_beside};

/// The socket the peer gateway registers on.
pub fn peer_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("peer.sock")
}

/// The socket the client gateway registers on.
pub fn client_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("client.sock")
}

/// A message builder whose first segment holds about `bytes` (capnp's default is 8 KiB, zeroed on
/// every allocation, which showed up in profiles for messages of a few hundred bytes). A message
/// that outgrows it simply gets a second segment.
pub fn builder_for(bytes: usize) -> capnp::message::Builder<capnp::message::HeapAllocator> {
    let words = (bytes / 8 + 16).min(1 << 20) as u32;
    capnp::message::Builder::new(capnp::message::HeapAllocator::new().first_segment_words(words))
}

/// gRPC status codes used in `Status.code` (same numbers as grpc-go's `codes`).
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const ALREADY_EXISTS: u32 = 6;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const ABORTED: u32 = 10;
    pub const OUT_OF_RANGE: u32 = 11;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const DATA_LOSS: u32 = 15;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// How much one message on a plane may hold. capnp's default (64 MiB) is below what etcd serves:
/// a large range answer or a snapshot chunk must fit, so both ends of a socket use this.
pub fn reader_options() -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    // In 8-byte words: 2 GiB, the most a gRPC message can carry anyway.
    options.traversal_limit_in_words(Some(1 << 28));
    options
}

/// Dials a consensus socket and returns its bootstrap capability (`PeerRegistrar` or
/// `ClientRegistrar`), with the RPC system spawned on the current `LocalSet`. capnp-rpc is `!Send`,
/// so this must run inside a `tokio::task::LocalSet`. The returned receiver fires when the
/// connection to consensus ends, so the gateway can register again.
pub async fn dial<C: capnp::capability::FromClientHook>(
    socket: &Path,
) -> std::io::Result<(C, tokio::sync::oneshot::Receiver<String>)> {
    use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
    use futures::AsyncReadExt;
    use tokio_util::compat::TokioAsyncReadCompatExt;

    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (reader, writer) = stream.compat().split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        Side::Client,
        reader_options(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let bootstrap: C = rpc.bootstrap(Side::Server);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_local(async move {
        let why = match rpc.await {
            Ok(()) => "consensus closed the connection".to_string(),
            Err(e) => format!("connection to consensus failed: {e}"),
        };
        let _ = done_tx.send(why);
    });
    Ok((bootstrap, done_rx))
}
