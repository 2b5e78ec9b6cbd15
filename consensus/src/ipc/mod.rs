//! The IPC thread: serves the peer gateway's registration (`peer.sock`) and the client plane
//! (`client.sock`) over Cap'n Proto, on a tokio-uring runtime (capnp-rpc is `!Send`). It never
//! blocks on an fsync: writes go to the raft thread as proposals, reads run on a RocksDB snapshot
//! once the read index allows. It also accepts the raft stream (`raft.sock`) and hands the
//! connection to the raft thread, which carries raft messages on it itself.

//!
//! Its parts: [`registration`] (the gateways' registrars and the stream sockets), [`boot_check`]
//! (asking the other members about us at a start from an empty data dir), [`kv`] (reads and
//! compaction), [`maintenance`] (status, defragment, move-leader, hash, snapshot, metrics),
//! [`compaction`] (auto compaction) and [`pool`] (the threads that run long reads and
//! maintenance, so that this thread never waits for them), and [`snapshots`] (raft snapshot
//! images to and from the peer gateway).

#[macro_use]
mod refuse {
    /// Writes `error` into a result that has an `error :Status` field.
    macro_rules! refuse {
        ($results:expr, $err:expr) => {{
            let e: EtcdError = $err;
            let mut s = $results.get().init_error();
            s.set_code(e.code);
            s.set_message(e.message.as_str());
            return Ok(());
        }};
    }

    /// Unwraps a `Result<T, EtcdError>` or answers the request with the error.
    macro_rules! or_refuse {
        ($results:expr, $e:expr) => {
            match $e {
                Ok(v) => v,
                Err(err) => refuse!($results, err),
            }
        };
    }
}

pub(crate) mod boot_check;
pub(crate) mod compaction;
mod kv;
mod maintenance;
mod pool;
mod registration;
mod snapshots;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use futures::AsyncReadExt;
use schema::member_capnp::{client_plane, client_registrar, peer_registrar};
use tokio::sync::oneshot;
use tokio_util::compat::TokioAsyncReadCompatExt;
use tracing::{debug, warn};

use crate::cluster::Identity;
use crate::codec::{self, Header};
use crate::error::{Error, Result};
use crate::etcd_error::{self as ee, EtcdError};
use crate::raft::Shared;
use crate::raft::command::{Applied, Command};
use crate::raft::inbox;
use crate::storage::Db;

pub(crate) use pool::lower_priority;
pub use registration::{GatewayConfig, TlsFiles};

pub struct Context {
    pub identity: Identity,
    /// Auto-compaction, when `--auto-compaction-retention` is not zero.
    pub compactor: Option<compaction::Compactor>,
    pub gateways: GatewayConfig,
    pub db: Arc<Db>,
    pub shared: Arc<Shared>,
    pub commands: inbox::Sender,
    pub request_timeout: Duration,
    /// The member's data dir: snapshot images are made under it.
    pub data_dir: std::path::PathBuf,
    /// The check of a start from an empty data dir, while the boot thread waits for it.
    pub(crate) boot_check: Option<Arc<boot_check::BootCheck>>,
    /// The raft snapshot images this member sends.
    pub snapshots: Arc<crate::storage::snap::Snapshots>,
}

struct State {
    ctx: Context,
    pools: pool::Pools,
    /// A raft snapshot is being received (one at a time).
    receiving_snapshot: std::cell::Cell<bool>,
}

impl State {
    fn header(&self, revision: i64) -> Header {
        Header {
            cluster_id: self.ctx.identity.cluster_id,
            member_id: self.ctx.identity.member_id,
            revision,
            raft_term: self.ctx.shared.term.load(Ordering::Relaxed),
        }
    }

    /// Waits until RocksDB holds every write already answered (see `Shared::answered`).
    async fn settled(&self) {
        self.ctx.shared.wait_settled().await;
    }

    fn request_id(&self) -> u64 {
        self.ctx.shared.request_id(self.ctx.identity.member_id)
    }

    fn send(&self, cmd: Command) -> Result<(), EtcdError> {
        self.ctx.commands.send(cmd).map_err(|_| ee::stopped())
    }

    /// `size` is the request's encoded size in bytes, so its copy lands in one segment.
    async fn propose(
        &self,
        size: usize,
        fill: impl FnOnce(schema::member_capnp::raft_request::Builder) -> capnp::Result<()>,
    ) -> Result<Applied, EtcdError> {
        let id = self.request_id();
        let data = codec::encode_proposal(id, size, fill).map_err(ee::internal)?;
        codec::check_encoded_size(data.len(), self.ctx.gateways.max_request_bytes)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Propose { id, data, reply })?;
        match tokio::time::timeout(self.ctx.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ee::stopped()),
            Err(_) => Err(ee::timeout()),
        }
    }

    async fn read_index(&self) -> Result<(), EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ReadIndex { reply })?;
        match tokio::time::timeout(self.ctx.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ee::stopped()),
            Err(_) => Err(ee::timeout()),
        }
    }
}

/// The client plane: each call is served by its service's module.
struct ClientPlane(Rc<State>);

impl client_plane::Server for ClientPlane {
    async fn range(
        self: CapRc<Self>,
        params: client_plane::RangeParams,
        results: client_plane::RangeResults,
    ) -> capnp::Result<()> {
        kv::range(&self.0, params, results).await
    }

    async fn put(
        self: CapRc<Self>,
        params: client_plane::PutParams,
        results: client_plane::PutResults,
    ) -> capnp::Result<()> {
        kv::put(&self.0, params, results).await
    }

    async fn delete_range(
        self: CapRc<Self>,
        params: client_plane::DeleteRangeParams,
        results: client_plane::DeleteRangeResults,
    ) -> capnp::Result<()> {
        kv::delete_range(&self.0, params, results).await
    }

    async fn txn(
        self: CapRc<Self>,
        params: client_plane::TxnParams,
        results: client_plane::TxnResults,
    ) -> capnp::Result<()> {
        kv::txn(&self.0, params, results).await
    }

    async fn compact(
        self: CapRc<Self>,
        params: client_plane::CompactParams,
        results: client_plane::CompactResults,
    ) -> capnp::Result<()> {
        kv::compact(&self.0, params, results).await
    }

    async fn member_list(
        self: CapRc<Self>,
        params: client_plane::MemberListParams,
        results: client_plane::MemberListResults,
    ) -> capnp::Result<()> {
        maintenance::member_list(&self.0, params, results).await
    }

    async fn status(
        self: CapRc<Self>,
        params: client_plane::StatusParams,
        results: client_plane::StatusResults,
    ) -> capnp::Result<()> {
        maintenance::status(&self.0, params, results).await
    }

    async fn defragment(
        self: CapRc<Self>,
        params: client_plane::DefragmentParams,
        results: client_plane::DefragmentResults,
    ) -> capnp::Result<()> {
        maintenance::defragment(&self.0, params, results).await
    }

    async fn move_leader(
        self: CapRc<Self>,
        params: client_plane::MoveLeaderParams,
        results: client_plane::MoveLeaderResults,
    ) -> capnp::Result<()> {
        maintenance::move_leader(&self.0, params, results).await
    }

    async fn hash_kv(
        self: CapRc<Self>,
        params: client_plane::HashKvParams,
        results: client_plane::HashKvResults,
    ) -> capnp::Result<()> {
        maintenance::hash_kv(&self.0, params, results).await
    }

    async fn snapshot(
        self: CapRc<Self>,
        params: client_plane::SnapshotParams,
        results: client_plane::SnapshotResults,
    ) -> capnp::Result<()> {
        maintenance::snapshot(&self.0, params, results).await
    }

    async fn metrics(
        self: CapRc<Self>,
        params: client_plane::MetricsParams,
        results: client_plane::MetricsResults,
    ) -> capnp::Result<()> {
        maintenance::metrics(&self.0, params, results).await
    }
}

// --------------------------------------------------------------------------------- sockets

/// Binds a socket only this user can use (0600; SO_PEERCRED is checked on every connection too).
fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    if path.as_os_str().len() >= 108 {
        return Err(Error::Config(format!(
            "socket path {} is too long for a Unix socket (at most 107 bytes): use a shorter --data-dir",
            path.display()
        )));
    }
    // We hold the data dir's lock, so a socket file left here is from a consensus that died.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod 0600 {}", path.display()), e))?;
    Ok(listener)
}

pub(super) fn peer_uid_allowed(stream: &tokio::net::UnixStream) -> std::result::Result<(), String> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != me && cred.uid() != 0 {
        return Err(format!(
            "uid {} (pid {}) is not our uid {me}",
            cred.uid(),
            cred.pid()
        ));
    }
    Ok(())
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    bootstrap: capnp::capability::Client,
    plane: &'static str,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("{plane} socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(why) = peer_uid_allowed(&stream) {
            warn!("{plane} socket: refusing a connection: {why}");
            continue;
        }
        let (reader, writer) = stream.compat().split();
        let network = twoparty::VatNetwork::new(
            futures::io::BufReader::new(reader),
            futures::io::BufWriter::new(writer),
            Side::Server,
            schema::reader_options(),
        );
        let rpc = RpcSystem::new(Box::new(network), Some(bootstrap.clone()));
        tokio::task::spawn_local(async move {
            if let Err(e) = rpc.await {
                debug!("{plane} connection ended: {e}");
            }
        });
    }
}

pub struct Sockets {
    pub peer: PathBuf,
    pub raft: PathBuf,
    pub write: PathBuf,
    pub client: PathBuf,
}

/// Runs the IPC thread until the process stops. `ready` fires once both sockets accept.
pub fn run(ctx: Context, sockets: Sockets, ready: std::sync::mpsc::Sender<Result<()>>) {
    tokio_uring::start(async move {
        // client.sock last: start-node.sh takes it as the sign that all of them are there.
        let bound = bind(&sockets.peer).and_then(|peer| {
            let raft = bind(&sockets.raft)?;
            let write = bind(&sockets.write)?;
            Ok((peer, raft, write, bind(&sockets.client)?))
        });
        let (peer, raft, write, client) = match bound {
            Ok(listeners) => listeners,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let pools = match pool::Pools::start() {
            Ok(pools) => pools,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut ctx = ctx;
        let compactor = ctx.compactor.take();
        let state = Rc::new(State {
            ctx,
            pools,
            receiving_snapshot: Default::default(),
        });
        let peer_bootstrap: peer_registrar::Client =
            capnp_rpc::new_client(registration::PeerRegistrar(state.clone()));
        let client_bootstrap: client_registrar::Client =
            capnp_rpc::new_client(registration::ClientRegistrar(state.clone()));
        tokio::task::spawn_local(registration::accept_streams(
            raft,
            state.clone(),
            "raft.sock",
            Command::PeerStream,
        ));
        tokio::task::spawn_local(registration::accept_streams(
            write,
            state.clone(),
            "write.sock",
            Command::WriteStream,
        ));
        if let Some(compactor) = compactor {
            tokio::task::spawn_local(compaction::auto_compact(state.clone(), compactor));
        }
        tokio::task::spawn_local(accept_loop(peer, peer_bootstrap.client, "peer"));
        let _ = ready.send(Ok(()));
        accept_loop(client, client_bootstrap.client, "client").await;
    });
}
