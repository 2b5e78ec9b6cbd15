//! The IPC thread: serves the peer gateway's registration (`peer.sock`) and the client plane
//! (`client.sock`) over Cap'n Proto, on a tokio-uring runtime (capnp-rpc is `!Send`). It never
//! blocks on an fsync: writes go to the raft thread as proposals, reads run on a RocksDB snapshot
//! once the read index allows. It also accepts the raft stream (`raft.sock`) and hands the
//! connection to the raft thread, which carries raft messages on it itself.

pub(crate) mod compaction;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use futures::AsyncReadExt;
use schema::member_capnp::{
    client_gateway_config, client_plane, client_registrar, identity, peer_gateway_config,
    peer_registrar, tls_config,
};
use tokio::sync::oneshot;
use tokio_util::compat::TokioAsyncReadCompatExt;
use tracing::{debug, info, warn};

use crate::cluster::Identity;
use crate::codec::{self, Header};
use crate::error::{Error, Result};
use crate::etcd_error::{self as ee, EtcdError};
use crate::mvcc::{self, View};
use crate::raft::Shared;
use crate::raft::command::{Applied, Command};
use crate::raft::inbox;

/// TLS files as the gateways receive them.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
}

/// What the gateways are told at registration besides the identity.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    pub listen_peer_urls: Vec<String>,
    pub peer_tls: TlsFiles,
    pub listen_client_urls: Vec<String>,
    pub client_tls: TlsFiles,
    pub max_request_bytes: u64,
    pub max_txn_ops: u32,
}

pub struct Context {
    pub identity: Identity,
    /// Auto-compaction, when `--auto-compaction-retention` is not zero.
    pub compactor: Option<compaction::Compactor>,
    pub gateways: GatewayConfig,
    pub db: Arc<Db>,
    pub shared: Arc<Shared>,
    pub commands: inbox::Sender,
    pub request_timeout: Duration,
}

use crate::storage::Db;

struct State {
    ctx: Context,
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

    /// Waits until RocksDB holds every write already answered (see `Shared::answered`): the raft
    /// thread writes the batch right after the answers, so this is microseconds, and only for a
    /// read that races an answer.
    async fn settled(&self) {
        while !self.ctx.shared.settled() {
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
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

    fn fill_identity(&self, mut b: identity::Builder) {
        let id = &self.ctx.identity;
        b.set_member_id(id.member_id);
        b.set_cluster_id(id.cluster_id);
        b.set_name(id.name.as_str());
        let members = self.ctx.shared.members();
        let mut list = b.init_members(members.len() as u32);
        for (i, m) in members.iter().enumerate() {
            codec::write_member(list.reborrow().get(i as u32), m);
        }
    }
}

fn fill_tls(mut b: tls_config::Builder, t: &TlsFiles) {
    b.set_cert_file(t.cert_file.as_str());
    b.set_key_file(t.key_file.as_str());
    b.set_trusted_ca_file(t.trusted_ca_file.as_str());
    b.set_client_cert_auth(t.client_cert_auth);
}

fn fill_urls(mut list: capnp::text_list::Builder, urls: &[String]) {
    for (i, u) in urls.iter().enumerate() {
        list.set(i as u32, u.as_str());
    }
}

fn check_version(version: u32) -> capnp::Result<()> {
    if version != schema::PROTOCOL_VERSION {
        return Err(capnp::Error::failed(format!(
            "protocol version {version} is not supported: consensus speaks version {}",
            schema::PROTOCOL_VERSION
        )));
    }
    Ok(())
}

// --------------------------------------------------------------------------------- peer plane

struct PeerRegistrar(Rc<State>);

impl peer_registrar::Server for PeerRegistrar {
    /// Hands out the identity and the listen config. Raft messages then travel on `raft.sock`;
    /// `plane` stays null (protocol 1's calls are gone) and the gateway's capability is not kept,
    /// as the member table does not change yet.
    async fn register(
        self: CapRc<Self>,
        params: peer_registrar::RegisterParams,
        mut results: peer_registrar::RegisterResults,
    ) -> capnp::Result<()> {
        let p = params.get()?;
        check_version(p.get_version())?;
        let state = &self.0;
        info!("peer gateway registered");
        let mut r = results.get();
        state.fill_identity(r.reborrow().init_identity());
        let mut c: peer_gateway_config::Builder = r.reborrow().init_config();
        let g = &state.ctx.gateways;
        fill_urls(
            c.reborrow()
                .init_listen_peer_urls(g.listen_peer_urls.len() as u32),
            &g.listen_peer_urls,
        );
        fill_tls(c.init_tls(), &g.peer_tls);
        Ok(())
    }
}

/// Hands each connection to a stream socket (`raft.sock`, `write.sock`) to the raft thread,
/// which checks its hello and then reads and writes it itself.
async fn accept_streams(
    listener: tokio::net::UnixListener,
    state: Rc<State>,
    socket: &'static str,
    command: fn(std::os::unix::net::UnixStream) -> Command,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("{socket}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(why) = peer_uid_allowed(&stream) {
            warn!("{socket}: refusing a connection: {why}");
            continue;
        }
        match stream.into_std() {
            Ok(stream) => {
                if state.send(command(stream)).is_err() {
                    return;
                }
            }
            Err(e) => warn!("{socket}: cannot take over a connection: {e}"),
        }
    }
}

// --------------------------------------------------------------------------------- client plane

struct ClientRegistrar(Rc<State>);

impl client_registrar::Server for ClientRegistrar {
    async fn register(
        self: CapRc<Self>,
        params: client_registrar::RegisterParams,
        mut results: client_registrar::RegisterResults,
    ) -> capnp::Result<()> {
        check_version(params.get()?.get_version())?;
        let state = &self.0;
        info!("client gateway registered");
        let mut r = results.get();
        state.fill_identity(r.reborrow().init_identity());
        let mut c: client_gateway_config::Builder = r.reborrow().init_config();
        let g = &state.ctx.gateways;
        fill_urls(
            c.reborrow()
                .init_listen_client_urls(g.listen_client_urls.len() as u32),
            &g.listen_client_urls,
        );
        c.set_max_request_bytes(g.max_request_bytes);
        c.set_max_txn_ops(g.max_txn_ops);
        fill_tls(c.init_tls(), &g.client_tls);
        r.set_plane(capnp_rpc::new_client(ClientPlane(state.clone())));
        Ok(())
    }
}

struct ClientPlane(Rc<State>);

/// How often MoveLeader looks whether its target leads yet (etcd: every tick, 100 ms by default).
const LEADER_TRANSFER_POLL: Duration = Duration::from_millis(20);

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

/// ClientPlane's put, deleteRange and writing txns are protocol 1 and 2: since 3, writes travel
/// on `write.sock` and only the raft thread serves them.
fn writes_go_on_the_write_stream(method: &str) -> EtcdError {
    EtcdError::new(
        schema::code::UNIMPLEMENTED,
        format!(
            "consensus: ClientPlane.{method} does not write since protocol 3; writes go on write.sock"
        ),
    )
}

fn unexpected(what: &str, got: &Applied) -> EtcdError {
    ee::internal(format!("expected a {what} result, got {got:?}"))
}

impl client_plane::Server for ClientPlane {
    async fn range(
        self: CapRc<Self>,
        params: client_plane::RangeParams,
        mut results: client_plane::RangeResults,
    ) -> capnp::Result<()> {
        let req = codec::read_range(params.get()?.get_request()?)?;
        or_refuse!(results, mvcc::check_range(&req));
        if !req.serializable {
            or_refuse!(results, self.0.read_index().await);
        }
        self.0.settled().await;
        let resp = or_refuse!(results, View::snapshot(&self.0.ctx.db).range(&req));
        codec::write_range_response(
            results.get().init_response(),
            &self.0.header(resp.revision),
            &resp,
        );
        Ok(())
    }

    async fn put(
        self: CapRc<Self>,
        _: client_plane::PutParams,
        mut results: client_plane::PutResults,
    ) -> capnp::Result<()> {
        refuse!(results, writes_go_on_the_write_stream("put"));
    }

    async fn delete_range(
        self: CapRc<Self>,
        _: client_plane::DeleteRangeParams,
        mut results: client_plane::DeleteRangeResults,
    ) -> capnp::Result<()> {
        refuse!(results, writes_go_on_the_write_stream("deleteRange"));
    }

    async fn txn(
        self: CapRc<Self>,
        params: client_plane::TxnParams,
        mut results: client_plane::TxnResults,
    ) -> capnp::Result<()> {
        let request = params.get()?.get_request()?;
        let txn = codec::read_txn(request)?;
        or_refuse!(
            results,
            mvcc::check_txn(&txn, self.0.ctx.gateways.max_txn_ops as usize)
        );
        // Since protocol 3 writes travel on the write stream, which the raft thread answers.
        if !mvcc::txn_is_read_only(&txn) {
            refuse!(results, writes_go_on_the_write_stream("txn"));
        }
        // etcd serves a read-only txn like a linearizable range, without the raft log.
        or_refuse!(results, self.0.read_index().await);
        self.0.settled().await;
        let resp = or_refuse!(results, View::snapshot(&self.0.ctx.db).txn(&txn));
        codec::write_txn_response(
            results.get().init_response(),
            &self.0.header(resp.revision),
            &resp,
        );
        Ok(())
    }

    async fn compact(
        self: CapRc<Self>,
        params: client_plane::CompactParams,
        mut results: client_plane::CompactResults,
    ) -> capnp::Result<()> {
        let request = params.get()?.get_request()?;
        let applied = or_refuse!(
            results,
            self.0
                .propose(size_of(request.total_size()), |mut rr| rr
                    .set_compaction(request))
                .await
        );
        let Applied::Compaction { revision } = applied else {
            refuse!(results, unexpected("compaction", &applied));
        };
        codec::write_header(
            results.get().init_response().init_header(),
            &self.0.header(revision),
        );
        Ok(())
    }

    async fn member_list(
        self: CapRc<Self>,
        _: client_plane::MemberListParams,
        mut results: client_plane::MemberListResults,
    ) -> capnp::Result<()> {
        let members = self.0.ctx.shared.members();
        let mut r = results.get().init_response();
        // etcd's cluster responses carry no revision.
        codec::write_header(r.reborrow().init_header(), &self.0.header(0));
        let mut list = r.init_members(members.len() as u32);
        for (i, m) in members.iter().enumerate() {
            codec::write_member(list.reborrow().get(i as u32), m);
        }
        Ok(())
    }

    async fn status(
        self: CapRc<Self>,
        _: client_plane::StatusParams,
        mut results: client_plane::StatusResults,
    ) -> capnp::Result<()> {
        self.0.settled().await;
        let s = &self.0.ctx.shared;
        let revision = s.revision.load(Ordering::Acquire);
        let mut r = results.get().init_response();
        codec::write_header(r.reborrow().init_header(), &self.0.header(revision));
        // The etcd release whose API and behaviour this member matches.
        r.set_version(crate::ETCD_VERSION);
        let size = self.0.ctx.db.size();
        r.set_db_size(size);
        r.set_db_size_in_use(size);
        r.set_leader(s.leader.load(Ordering::Relaxed));
        r.set_raft_index(s.commit.load(Ordering::Relaxed));
        r.set_raft_term(s.term.load(Ordering::Relaxed));
        r.set_raft_applied_index(s.applied.load(Ordering::Relaxed));
        r.set_is_learner(false);
        Ok(())
    }

    async fn defragment(
        self: CapRc<Self>,
        _: client_plane::DefragmentParams,
        mut results: client_plane::DefragmentResults,
    ) -> capnp::Result<()> {
        let db = self.0.ctx.db.clone();
        let took = on_own_thread("defragment", move || {
            let started = std::time::Instant::now();
            db.defragment();
            started.elapsed()
        })
        .await?;
        info!(
            ?took,
            size = self.0.ctx.db.size(),
            "defragmented the state machine"
        );
        let revision = self.0.ctx.shared.revision.load(Ordering::Acquire);
        let r = results.get().init_response();
        codec::write_header(r.init_header(), &self.0.header(revision));
        Ok(())
    }

    async fn move_leader(
        self: CapRc<Self>,
        params: client_plane::MoveLeaderParams,
        mut results: client_plane::MoveLeaderResults,
    ) -> capnp::Result<()> {
        let target = params.get()?.get_target_id();
        let shared = &self.0.ctx.shared;
        let me = self.0.ctx.identity.member_id;
        if shared.leader.load(Ordering::Relaxed) != me {
            refuse!(results, ee::not_leader());
        }
        if !shared
            .members()
            .iter()
            .any(|m| m.id == target && !m.is_learner)
        {
            refuse!(results, ee::bad_leader_transferee());
        }
        if target != me {
            or_refuse!(results, self.0.send(Command::TransferLeader { target }));
            // As etcd: look again every so often until the target leads, up to the request
            // timeout.
            let deadline = tokio::time::Instant::now() + self.0.ctx.request_timeout;
            while shared.leader.load(Ordering::Relaxed) != target {
                if tokio::time::Instant::now() >= deadline {
                    refuse!(results, ee::leader_transfer_timeout());
                }
                tokio::time::sleep(LEADER_TRANSFER_POLL).await;
            }
        }
        let revision = shared.revision.load(Ordering::Acquire);
        let r = results.get().init_response();
        codec::write_header(r.init_header(), &self.0.header(revision));
        Ok(())
    }

    async fn hash_kv(
        self: CapRc<Self>,
        params: client_plane::HashKvParams,
        mut results: client_plane::HashKvResults,
    ) -> capnp::Result<()> {
        let asked = params.get()?.get_revision();
        self.0.settled().await;
        let db = self.0.ctx.db.clone();
        let answer = on_own_thread("hash-kv", move || {
            let view = mvcc::View::snapshot(&db);
            let current = view.current_revision().map_err(ee::internal)?;
            let compacted = view.compact_revision().map_err(ee::internal)?;
            let rev = if asked <= 0 { current } else { asked };
            if rev > current {
                return Err(ee::future_rev());
            }
            if rev < compacted {
                return Err(ee::compacted());
            }
            let hash = view.hash_kv(rev).map_err(ee::internal)?;
            // -1 while never compacted, as etcd says it.
            Ok((hash, compacted, current))
        })
        .await?;
        let (hash, compact_revision, revision) = or_refuse!(results, answer);
        let mut r = results.get().init_response();
        codec::write_header(r.reborrow().init_header(), &self.0.header(revision));
        r.set_hash(hash);
        r.set_compact_revision(compact_revision);
        Ok(())
    }

    async fn metrics(
        self: CapRc<Self>,
        _: client_plane::MetricsParams,
        mut results: client_plane::MetricsResults,
    ) -> capnp::Result<()> {
        let s = &self.0.ctx.shared;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut m = results.get().init_metrics();
        m.set_proposals_committed(load(&s.proposals_committed));
        m.set_proposals_failed(load(&s.proposals_failed));
        m.set_fsyncs(load(&s.fsyncs));
        m.set_fsync_nanos(load(&s.fsync_nanos));
        m.set_read_indexes(load(&s.read_indexes));
        m.set_linearizable_reads(load(&s.linearizable_reads));
        m.set_applied_index(load(&s.applied));
        m.set_is_leader(load(&s.leader) == self.0.ctx.identity.member_id);
        m.set_leader_changes(load(&s.leader_changes));
        m.set_revision(s.revision.load(Ordering::Acquire));
        m.set_has_leader(load(&s.leader) != 0);
        m.set_committed_index(load(&s.commit));
        m.set_db_size(self.0.ctx.db.size());
        let mut buckets = m.init_fsync_buckets(s.fsync_buckets.len() as u32);
        for (i, b) in s.fsync_buckets.iter().enumerate() {
            buckets.set(i as u32, load(b));
        }
        Ok(())
    }
}

/// Runs `work` on a thread of its own and waits for it without blocking this thread, which
/// serves every other call meanwhile: for passes over the whole database (RocksDB's compaction
/// of all of it can take seconds).
async fn on_own_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> capnp::Result<T> {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = done.send(work());
        })
        .map_err(|e| capnp::Error::failed(format!("starting the {name} thread: {e}")))?;
    finished
        .await
        .map_err(|_| capnp::Error::failed(format!("the {name} thread stopped")))
}

/// A request's encoded size in bytes (0 when it cannot be told: the builder then just grows).
fn size_of(size: capnp::Result<capnp::MessageSize>) -> usize {
    size.map(|s| s.word_count as usize * 8).unwrap_or(0)
}

/// Proposes the compactions the compactor asks for, while this member leads.
async fn auto_compact(state: Rc<State>, mut compactor: compaction::Compactor) {
    let shared = &state.ctx.shared;
    loop {
        tokio::time::sleep(compactor.interval()).await;
        let is_leader = shared.leader.load(Ordering::Relaxed) == state.ctx.identity.member_id;
        let revision = shared.revision.load(Ordering::Acquire);
        let Some(target) = compactor.poll(std::time::Instant::now(), revision, is_leader) else {
            continue;
        };
        info!(revision = target, "starting auto compaction");
        let result = state
            .propose(0, |rr| {
                rr.init_compaction().set_revision(target);
                Ok(())
            })
            .await;
        let ok = match &result {
            Ok(_) => true,
            Err(e) => *e == ee::compacted(),
        };
        if ok {
            info!(revision = target, "completed auto compaction");
        } else if let Err(e) = result {
            warn!(revision = target, "auto compaction failed, will retry: {e}");
        }
        compactor.done(target, ok, std::time::Instant::now());
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

fn peer_uid_allowed(stream: &tokio::net::UnixStream) -> std::result::Result<(), String> {
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
        let mut ctx = ctx;
        let compactor = ctx.compactor.take();
        let state = Rc::new(State { ctx });
        let peer_bootstrap: peer_registrar::Client =
            capnp_rpc::new_client(PeerRegistrar(state.clone()));
        let client_bootstrap: client_registrar::Client =
            capnp_rpc::new_client(ClientRegistrar(state.clone()));
        tokio::task::spawn_local(accept_streams(
            raft,
            state.clone(),
            "raft.sock",
            Command::PeerStream,
        ));
        tokio::task::spawn_local(accept_streams(
            write,
            state.clone(),
            "write.sock",
            Command::WriteStream,
        ));
        if let Some(compactor) = compactor {
            tokio::task::spawn_local(auto_compact(state.clone(), compactor));
        }
        tokio::task::spawn_local(accept_loop(peer, peer_bootstrap.client, "peer"));
        let _ = ready.send(Ok(()));
        accept_loop(client, client_bootstrap.client, "client").await;
    });
}
