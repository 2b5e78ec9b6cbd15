//! The contract between the three processes of a member: the generated Cap'n Proto code for
//! `member.capnp`, where the sockets live, and the one way a gateway dials consensus.

use std::path::{Path, PathBuf};

pub mod member_capnp {
    include!(concat!(env!("OUT_DIR"), "/member_capnp.rs"));
}

pub use member_capnp::PROTOCOL_VERSION;

pub mod failpoint;
pub mod limits;
pub mod rules;
pub mod stream;
pub mod supervisor;
#[cfg(feature = "testing")]
pub mod testing;
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

/// One connection to consensus, from `dial`: awaiting it gives why it ended. Dropping it closes
/// the connection, so a gateway that registers again (say, after losing a stream beside it)
/// leaves no old connection open at consensus.
pub struct Connection {
    ended: tokio::sync::oneshot::Receiver<String>,
    _close: tokio::sync::oneshot::Sender<()>,
}

impl std::future::Future for Connection {
    type Output = Result<String, tokio::sync::oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.ended).poll(cx)
    }
}

/// Dials a consensus socket and returns its bootstrap capability (`PeerRegistrar` or
/// `ClientRegistrar`), with the RPC system spawned on the current `LocalSet`. capnp-rpc is `!Send`,
/// so this must run inside a `tokio::task::LocalSet`. The returned `Connection` resolves when the
/// connection to consensus ends, so the gateway can register again, and closes it when dropped.
pub async fn dial<C: capnp::capability::FromClientHook>(
    socket: &Path,
) -> std::io::Result<(C, Connection)> {
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
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    tokio::task::spawn_local(async move {
        let why = tokio::select! {
            r = rpc => match r {
                Ok(()) => "consensus closed the connection".to_string(),
                Err(e) => format!("connection to consensus failed: {e}"),
            },
            // The `Connection` was dropped: dropping the RPC system closes the socket.
            _ = closed => "closed by this gateway".to_string(),
        };
        let _ = ended_tx.send(why);
    });
    Ok((
        bootstrap,
        Connection {
            ended,
            _close: close,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Dropping the `Connection` closes the socket: consensus sees the gateway's old connection
    /// end instead of keeping it open.
    #[test]
    fn dropping_the_connection_closes_it() {
        let dir = std::env::temp_dir().join(format!("schema-dial-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let socket = dir.join("client.sock");
        let _ = std::fs::remove_file(&socket);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let read = local.block_on(&rt, async {
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            let (registrar, connection) = dial::<member_capnp::client_registrar::Client>(&socket)
                .await
                .unwrap();
            let (mut server_side, _) = listener.accept().await.unwrap();
            drop(connection);
            drop(registrar);
            // Whatever the client sent (its bootstrap request), then end of file.
            let mut buf = Vec::new();
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                server_side.read_to_end(&mut buf),
            )
            .await
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(read.is_ok(), "the connection stayed open");
    }
}
