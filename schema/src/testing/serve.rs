//! The stand-in's sockets: capnp-rpc on a registrar socket, raw connections on a stream socket.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use futures::AsyncReadExt as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::member_capnp::{client_registrar, peer_registrar};

/// A socket the stand-in listens on. Dropping it closes the listener and every connection it
/// accepted, and removes the socket file, as a consensus exit would.
pub struct Listening {
    path: PathBuf,
    accept: JoinHandle<()>,
    accepted: mpsc::UnboundedReceiver<AbortHandle>,
}

impl Listening {
    /// The next connection accepted: aborting it cuts that connection alone.
    pub async fn accepted(&mut self) -> Option<AbortHandle> {
        self.accepted.recv().await
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: aborting it ends them too.
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (a stale socket file there is replaced) and runs `serve` on a task for each
/// connection.
fn listen<F, Fut>(path: &Path, mut serve: F) -> io::Result<Listening>
where
    F: FnMut(UnixStream) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let (tx, accepted) = mpsc::unbounded_channel();
    let accept = tokio::task::spawn_local(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                a = listener.accept() => match a {
                    Ok((stream, _)) => {
                        let _ = tx.send(connections.spawn_local(serve(stream)));
                    }
                    Err(_) => return,
                },
                // Reap finished connections so a long benchmark does not pile them up.
                Some(_) = connections.join_next() => {}
            }
        }
    });
    Ok(Listening {
        path: path.to_path_buf(),
        accept,
        accepted,
    })
}

/// Serves `bootstrap` over capnp-rpc on a Unix socket at `path`, one RPC system per connection.
pub fn serve_rpc(path: &Path, bootstrap: capnp::capability::Client) -> io::Result<Listening> {
    listen(path, move |stream| {
        let (reader, writer) = stream.compat().split();
        let network = twoparty::VatNetwork::new(
            futures::io::BufReader::new(reader),
            futures::io::BufWriter::new(writer),
            Side::Server,
            Default::default(),
        );
        let rpc = RpcSystem::new(Box::new(network), Some(bootstrap.clone()));
        async move {
            let _ = rpc.await;
        }
    })
}

/// Accepts connections on a stream socket at `path` (`write.sock`, `raft.sock`) and runs
/// `each(connection)` for each one, as a task that ends with the [`Listening`].
pub fn serve_streams<F, Fut>(path: &Path, each: F) -> io::Result<Listening>
where
    F: FnMut(UnixStream) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    listen(path, each)
}

/// A stand-in for a client gateway: `write.sock` and then `client.sock`, as consensus binds them.
pub struct ClientStandIn {
    /// `client.sock`, serving the registrar.
    pub registrar: Listening,
    /// `write.sock` beside it.
    pub writes: Listening,
}

impl ClientStandIn {
    /// Serves `registrar` on `client_socket` and hands each write stream to `each_write_stream`.
    pub fn serve<F, Fut>(
        client_socket: &Path,
        registrar: client_registrar::Client,
        each_write_stream: F,
    ) -> io::Result<ClientStandIn>
    where
        F: FnMut(UnixStream) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let writes = serve_streams(
            &crate::write_socket_beside(client_socket),
            each_write_stream,
        )?;
        let registrar = serve_rpc(client_socket, registrar.client)?;
        Ok(ClientStandIn { registrar, writes })
    }
}

/// A stand-in for a peer gateway: `peer.sock` and `raft.sock` beside it.
pub struct PeerStandIn {
    /// `peer.sock`, serving the registrar.
    pub registrar: Listening,
    /// `raft.sock` beside it.
    pub raft: Listening,
}

impl PeerStandIn {
    /// Serves `registrar` on `peer_socket` and hands each raft stream to `each_raft_stream`.
    pub fn serve<F, Fut>(
        peer_socket: &Path,
        registrar: peer_registrar::Client,
        each_raft_stream: F,
    ) -> io::Result<PeerStandIn>
    where
        F: FnMut(UnixStream) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let registrar = serve_rpc(peer_socket, registrar.client)?;
        let raft = serve_streams(&crate::raft_socket_beside(peer_socket), each_raft_stream)?;
        Ok(PeerStandIn { registrar, raft })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Dropping the stand-in is a consensus exit: the socket file goes, and so do the
    /// connections it accepted.
    #[tokio::test(flavor = "current_thread")]
    async fn dropping_a_listening_closes_its_connections_and_removes_the_socket() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("write.sock");
                let mut listening = serve_streams(&path, |mut stream: UnixStream| async move {
                    // Holds the connection open until the task is aborted.
                    let _ = stream.read(&mut [0; 1]).await;
                })
                .unwrap();
                let mut client = UnixStream::connect(&path).await.unwrap();
                assert!(listening.accepted().await.is_some());
                drop(listening);
                assert!(!path.exists());
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    client.read(&mut [0; 1]),
                )
                .await
                .expect("the connection stayed open");
                assert_eq!(read.unwrap(), 0);
            })
            .await;
    }
}
