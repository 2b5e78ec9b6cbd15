//! The link to consensus ([`run`]), in two parts (protocol 2):
//! - capnp-rpc on `peer.sock`: register (identity, listen config) and serve `PeerGateway`, of which
//!   only `membersChanged` is still called;
//! - a raw stream on `raft.sock` beside it, where consensus's raft thread itself reads and writes:
//!   one-way `PeerFrame`s in Cap'n Proto's stream framing. Consensus writes the raft messages to
//!   send to peers; we write the ones peers sent us and the transport's reports. Nothing is
//!   answered: a reply per batch cost a process wake-up on every hop of a replicated write.
//!
//! Cluster queries between members (a starting member asking the others what they know of it)
//! are answered and asked in [`views`]; the images of raft snapshots are read out of and written
//! into consensus, on `peer.sock`, in [`snapshots`].
//!
//! Losing either connection means consensus is gone: register again, then connect the stream again.
//! The [`Transport`] and the tasks turning its [`Events`] into frames live as long as the process;
//! they queue frames to the current stream's writer task, which writes whatever queued up in one
//! `writev`. Runs on a `LocalSet`, as capnp-rpc is `!Send`.

use std::cell::{OnceCell, RefCell};
use std::future::{Future, ready};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use schema::member_capnp::{member, peer_frame, peer_gateway, peer_gateway_config, peer_registrar};
use schema::stream::{FrameBuffer, FrameSocket, write_frame};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, info, warn};

use crate::counters::{Counters, Sample};
use crate::error::{Error, Result};
use crate::peer_url::PeerUrl;
use crate::tls::{self, Restriction, TlsFiles};
use crate::transport::{Events, Inbound, Peer, Report, Transport, TransportConfig};

mod snapshots;
mod views;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// One `messages` frame to consensus carries at most this many messages ...
const MAX_BATCH_LEN: usize = schema::limits::RAFT_BATCH_LEN;
/// ... and about this many bytes (one more message may overshoot it; consensus's frame limit
/// allows for that, see [`schema::limits::raft_stream_frame_limit`]).
const MAX_BATCH_BYTES: usize = schema::limits::RAFT_BATCH_BYTES;
/// How often what the gateway counted goes to consensus, when it changed.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// Frames waiting for the stream's writer, at most: when consensus reads slowly, inbound messages
/// back up into the transport (and QUIC flow control) rather than into memory here.
const MAX_QUEUED_FRAMES: usize = 8;

/// What one registration hands out, read out of the Cap'n Proto reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registration {
    member_id: u64,
    cluster_id: u64,
    members: Vec<Peer>,
    listen: ListenConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ListenConfig {
    urls: Vec<String>,
    tls: TlsFiles,
    /// `--max-request-bytes`, which bounds a raft message.
    max_request_bytes: u64,
}

/// A frame queued for the raft stream's writer, with the inbound budget of the messages in it:
/// given back once it is written.
struct Queued {
    bytes: Vec<u8>,
    _budget: Vec<OwnedSemaphorePermit>,
}

impl Queued {
    fn frame(bytes: Vec<u8>) -> Queued {
        Queued {
            bytes,
            _budget: Vec::new(),
        }
    }
}

impl AsRef<[u8]> for Queued {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// What outlives one connection to consensus.
#[derive(Default)]
struct State {
    /// Started on the first registration, kept for the life of the process.
    transport: OnceCell<(Transport, Registration)>,
    /// Frames for consensus, queued to the current raft stream's writer. None while the stream
    /// is not connected: inbound messages and reports are dropped then.
    link: RefCell<Option<mpsc::Sender<Queued>>>,
    /// The registrar of the current connection to consensus, which answers peers' cluster
    /// queries (`members`) and opens and takes snapshot images. None while not registered.
    registrar: RefCell<Option<peer_registrar::Client>>,
}

/// Registers with consensus, again whenever the connection ends. Returns only on a fatal error:
/// a refused registration or an unusable configuration.
pub async fn run(socket: PathBuf) -> Result<()> {
    let raft_socket = schema::raft_socket_beside(&socket);
    let state = Rc::new(State::default());
    let gateway: peer_gateway::Client = capnp_rpc::new_client(Gateway {
        state: state.clone(),
    });
    let mut backoff = MIN_BACKOFF;
    // Log the absence of consensus once per outage, not per attempt.
    let mut quiet = false;
    loop {
        match register(&socket, &gateway).await {
            Ok((registration, registrar, done)) => {
                state.apply(registration)?;
                *state.registrar.borrow_mut() = Some(registrar);
                backoff = MIN_BACKOFF;
                let why = state.serve_stream(&raft_socket, done).await;
                state.registrar.borrow_mut().take();
                warn!("lost consensus ({why}); registering again");
                quiet = true;
            }
            Err(e @ (Error::RegistrationRefused(_) | Error::Ipc(_))) => return Err(e),
            Err(e) => {
                if quiet {
                    debug!(
                        "cannot register with consensus at {}: {e}",
                        socket.display()
                    );
                } else {
                    info!("waiting for consensus at {}: {e}", socket.display());
                    quiet = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One dial and `register` call. A lost connection is `ConsensusUnreachable`; a refusal is fatal.
/// The receiver fires when the RPC connection ends.
async fn register(
    socket: &Path,
    gateway: &peer_gateway::Client,
) -> Result<(Registration, peer_registrar::Client, schema::Connection)> {
    let (registrar, done) = schema::dial::<peer_registrar::Client>(socket)
        .await
        .map_err(Error::ConsensusUnreachable)?;
    let mut request = registrar.register_request();
    request.get().set_version(schema::PROTOCOL_VERSION);
    request.get().set_gateway(gateway.clone());
    let reply = match request.send().promise.await {
        Ok(reply) => reply,
        Err(e) if e.kind == capnp::ErrorKind::Disconnected => {
            return Err(Error::ConsensusUnreachable(std::io::Error::other(
                e.to_string(),
            )));
        }
        Err(e) => return Err(Error::RegistrationRefused(e)),
    };
    let reply = reply.get()?;
    let identity = reply.get_identity()?;
    // Since protocol 2 `plane` is null: raft messages and reports travel on `raft.sock`.
    let registration = Registration {
        member_id: identity.get_member_id(),
        cluster_id: identity.get_cluster_id(),
        members: read_members(identity.get_members()?)?,
        listen: read_listen_config(reply.get_config()?)?,
    };
    Ok((registration, registrar, done))
}

impl State {
    fn apply(self: &Rc<Self>, registration: Registration) -> Result<()> {
        info!(
            "registered with consensus as member {:x} of cluster {:x}",
            registration.member_id, registration.cluster_id
        );
        if let Some((transport, first)) = self.transport.get() {
            if registration.listen != first.listen {
                warn!(
                    "consensus handed out a different listen config; keeping the one from the first registration until restart"
                );
            }
            if (registration.member_id, registration.cluster_id)
                != (first.member_id, first.cluster_id)
            {
                warn!(
                    "consensus handed out member {:x} of cluster {:x}, but we started as member {:x} of cluster {:x}; keeping the old identity until restart",
                    registration.member_id,
                    registration.cluster_id,
                    first.member_id,
                    first.cluster_id
                );
            }
            transport.set_members(registration.members);
            return Ok(());
        }

        let listen = registration
            .listen
            .urls
            .iter()
            .map(|url| PeerUrl::parse(url)?.listen_addr())
            .collect::<Result<Vec<_>>>()?;
        let tls = tls::configure(&registration.listen.tls)?;
        if registration.listen.tls.cert_file.is_none() {
            warn_unauthenticated(&registration.listen.urls, &listen);
        }
        let counters = tls.counters.clone();
        let (transport, events) = Transport::start(TransportConfig {
            cluster_id: registration.cluster_id,
            member_id: registration.member_id,
            listen,
            members: registration.members.clone(),
            tls,
            max_message: schema::limits::raft_message_limit(registration.listen.max_request_bytes),
        })?;
        info!("listening for peers on {:?}", transport.local_addrs());
        tokio::task::spawn_local(report_counters(self.clone(), counters.clone()));
        let Events {
            inbound,
            reports,
            queries,
            images,
            snapshots,
        } = events;
        tokio::task::spawn_local(views::answer_queries(self.clone(), queries));
        tokio::task::spawn_local(snapshots::open_images(self.clone(), images));
        tokio::task::spawn_local(snapshots::take_snapshots(self.clone(), snapshots));
        tokio::task::spawn_local(deliver_inbound(
            self.clone(),
            inbound,
            registration.member_id,
            counters,
        ));
        tokio::task::spawn_local(forward_reports(self.clone(), reports));
        // Only the first registration gets here, so the cell is empty.
        let _ = self.transport.set((transport, registration));
        Ok(())
    }

    /// Connects the raft stream and carries frames both ways until it or the RPC connection
    /// (`done`) ends; returns why.
    async fn serve_stream(
        self: &Rc<Self>,
        raft_socket: &Path,
        mut done: schema::Connection,
    ) -> String {
        let rpc_ended = |why: std::result::Result<String, oneshot::error::RecvError>| {
            why.unwrap_or_else(|_| "connection to consensus ended".to_string())
        };
        let stream = tokio::select! {
            why = &mut done => return rpc_ended(why),
            stream = connect_stream(raft_socket) => stream,
        };
        debug!("connected the raft stream at {}", raft_socket.display());
        let stream = Rc::new(stream);
        let (frames, queued) = mpsc::channel(MAX_QUEUED_FRAMES);
        let mut link = Link {
            reader: tokio::task::spawn_local(read_frames(self.clone(), stream.clone())),
            writer: tokio::task::spawn_local(write_frames(stream, queued)),
        };
        *self.link.borrow_mut() = Some(frames);
        let why = tokio::select! {
            why = &mut done => rpc_ended(why),
            end = &mut link.reader => stream_ended(end),
            end = &mut link.writer => stream_ended(end),
        };
        self.link.borrow_mut().take();
        // Dropping `link` stops both tasks, which closes the stream.
        why
    }

    fn link(&self) -> Option<mpsc::Sender<Queued>> {
        self.link.borrow().clone()
    }

    /// Routes one frame consensus wrote to the peers it names.
    fn route<S: capnp::message::ReaderSegments>(
        &self,
        frame: &capnp::message::Reader<S>,
    ) -> Result<()> {
        let messages = match frame.get_root::<peer_frame::Reader>()?.which() {
            Ok(peer_frame::Messages(messages)) => messages?,
            Ok(_) => {
                debug!("ignoring a frame from consensus that only gateways send");
                return Ok(());
            }
            Err(capnp::NotInSchema(kind)) => {
                debug!("ignoring a frame of unknown kind {kind} from consensus");
                return Ok(());
            }
        };
        let Some((transport, _)) = self.transport.get() else {
            debug!(
                "dropping {} outbound messages: transport not started yet",
                messages.len()
            );
            return Ok(());
        };
        for m in messages.iter() {
            // Drops are logged and reported to raft by the transport itself.
            let _ = transport.send(m.get_to(), m.get_data()?.to_vec(), m.get_is_snapshot());
        }
        Ok(())
    }
}

/// The tasks serving one raft stream; dropping it stops them.
struct Link {
    reader: JoinHandle<Result<()>>,
    writer: JoinHandle<Result<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

fn stream_ended(end: std::result::Result<Result<()>, JoinError>) -> String {
    match end {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => "the raft stream's writer stopped".to_string(),
        Err(e) => format!("the raft stream's task failed: {e}"),
    }
}

/// Connects to `raft.sock` and says hello. Retries until that works, while registered: the raft
/// thread may start serving it a little after `peer.sock`, and a new registration per attempt
/// would leave the RPC connections of the earlier ones open.
async fn connect_stream(path: &Path) -> FrameSocket {
    let mut backoff = MIN_BACKOFF;
    let mut quiet = false;
    loop {
        match hello(path).await {
            Ok(stream) => return stream,
            Err(e) if quiet => debug!("cannot connect to {}: {e}", path.display()),
            Err(e) => {
                info!("waiting for the raft stream at {}: {e}", path.display());
                quiet = true;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn hello(path: &Path) -> std::io::Result<FrameSocket> {
    let stream = FrameSocket::connect(path).await?;
    let mut message = capnp::message::Builder::new_default();
    message
        .init_root::<peer_frame::Builder>()
        .set_hello(schema::PROTOCOL_VERSION);
    let mut out = Vec::new();
    write_frame(&mut out, &message);
    stream.write_all(&out).await?;
    Ok(stream)
}

/// Reads what consensus writes on the stream and routes it; returns only with why it ended.
async fn read_frames(state: Rc<State>, stream: Rc<FrameSocket>) -> Result<()> {
    let mut buf = FrameBuffer::new();
    loop {
        match stream.read(buf.spare_mut()).await {
            Ok(0) => return Err(Error::RaftStreamClosed),
            Ok(n) => buf.filled(n),
            Err(e) => return Err(Error::RaftStreamIo(e)),
        }
        while let Some(frame) = buf.next_frame().map_err(Error::RaftStreamCorrupt)? {
            // The framing is intact, so the stream can go on past a frame we cannot read.
            if let Err(e) = state.route(&frame) {
                warn!("dropping a frame from consensus: {e}");
            }
        }
    }
}

/// Writes the queued frames to the stream: whatever queued up meanwhile goes in the same
/// `writev`, so several frames cost one syscall and no copying into one buffer.
async fn write_frames(stream: Rc<FrameSocket>, mut queued: mpsc::Receiver<Queued>) -> Result<()> {
    let mut frames = Vec::with_capacity(MAX_QUEUED_FRAMES);
    while queued.recv_many(&mut frames, MAX_QUEUED_FRAMES).await > 0 {
        stream
            .write_frames(&frames)
            .await
            .map_err(Error::RaftStreamIo)?;
        frames.clear();
    }
    Ok(())
}

/// Hands inbound messages to consensus: whatever piled up since the last frame goes in the next.
/// Without a stream they are dropped and counted; raft resends.
async fn deliver_inbound(
    state: Rc<State>,
    mut inbound: mpsc::Receiver<Inbound>,
    own_id: u64,
    counters: std::sync::Arc<Counters>,
) {
    let count_dropped = |n: usize| {
        counters
            .messages_dropped
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    };
    while let Some(first) = inbound.recv().await {
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_LEN && bytes < MAX_BATCH_BYTES {
            match inbound.try_recv() {
                Ok(m) => {
                    bytes += m.data.len();
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let Some(link) = state.link() else {
            debug!(
                "dropping {} inbound messages: the raft stream is not connected",
                batch.len()
            );
            count_dropped(batch.len());
            continue;
        };
        let queued = Queued {
            bytes: messages_frame(&batch, own_id),
            _budget: batch.iter_mut().filter_map(|m| m.budget.take()).collect(),
        };
        let len = batch.len();
        drop(batch);
        // Waits only while the writer is MAX_QUEUED_FRAMES behind, never for consensus to answer.
        if link.send(queued).await.is_err() {
            debug!("dropping {len} inbound messages: the raft stream closed");
            count_dropped(len);
        }
    }
}

/// Sends consensus what the gateway counted since the last report that went out, every
/// [`COUNTERS_EVERY`] while something changed (increments, so that consensus's sums survive a
/// restart of either process; what a lost stream took with it is sent again).
async fn report_counters(state: Rc<State>, counters: std::sync::Arc<Counters>) {
    let mut reported = Sample::default();
    loop {
        tokio::time::sleep(COUNTERS_EVERY).await;
        let now = counters.sample();
        let delta = now.since(reported);
        if delta.is_zero() {
            continue;
        }
        let Some(link) = state.link() else {
            continue;
        };
        if link
            .send(Queued::frame(counters_frame(delta)))
            .await
            .is_ok()
        {
            reported = now;
        }
    }
}

fn counters_frame(delta: Sample) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    let mut c = message.init_root::<peer_frame::Builder>().init_counters();
    c.set_cert_refused(delta.cert_refused);
    c.set_frames_refused(delta.frames_refused);
    c.set_messages_dropped(delta.messages_dropped);
    let mut out = Vec::new();
    write_frame(&mut out, &message);
    out
}

/// Without a peer certificate (`http://` peer URLs) anyone who reaches the peer port can join as
/// a member, as with etcd; that is only reasonable on loopback, so say so loudly otherwise.
fn warn_unauthenticated(urls: &[String], addrs: &[std::net::SocketAddr]) {
    let exposed: Vec<&str> = urls
        .iter()
        .zip(addrs)
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .map(|(url, _)| url.as_str())
        .collect();
    if exposed.is_empty() {
        info!(
            "peer traffic is encrypted but not authenticated (no peer certificate); listening on \
             loopback only"
        );
    } else {
        warn!(
            "PEERS ARE NOT AUTHENTICATED on {}: without --peer-cert-file, --peer-key-file and \
             --peer-trusted-ca-file anyone who can reach this address can act as a member and \
             read or forge raft traffic (traffic is encrypted with a throwaway certificate, which \
             does not stop an active attacker); use https:// peer URLs",
            exposed.join(", ")
        );
    }
}

/// One `messages` frame, addressed to us.
fn messages_frame(batch: &[Inbound], own_id: u64) -> Vec<u8> {
    // All in one segment: root pointer, frame and list tag, then per message its struct
    // (3 data words, 1 pointer) and its data.
    let words = 8 + batch
        .iter()
        .map(|m| 4 + m.data.len().div_ceil(8))
        .sum::<usize>();
    let first_segment = u32::try_from(words).unwrap_or(u32::MAX).min(1 << 29);
    let mut message = capnp::message::Builder::new(
        capnp::message::HeapAllocator::new().first_segment_words(first_segment),
    );
    // MAX_BATCH_LEN fits a u32.
    let mut list = message
        .init_root::<peer_frame::Builder>()
        .init_messages(batch.len() as u32);
    for (i, m) in batch.iter().enumerate() {
        let mut entry = list.reborrow().get(i as u32);
        entry.set_to(own_id);
        entry.set_from(m.from);
        entry.set_is_snapshot(m.is_snapshot);
        entry.set_data(&m.data);
    }
    let mut out = Vec::with_capacity(8 * words + 16);
    write_frame(&mut out, &message);
    out
}

/// Tells consensus what became of its messages, on the same stream.
async fn forward_reports(state: Rc<State>, mut reports: mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = reports.recv().await {
        let mut frames = Vec::new();
        let mut count = 0;
        let mut next = Some(first);
        while let Some(report) = next {
            report_frame(&mut frames, report);
            count += 1;
            next = if count < MAX_BATCH_LEN {
                reports.try_recv().ok()
            } else {
                None
            };
        }
        let Some(link) = state.link() else {
            debug!("dropping {count} reports: the raft stream is not connected");
            continue;
        };
        if link.send(Queued::frame(frames)).await.is_err() {
            debug!("dropping {count} reports: the raft stream closed");
        }
    }
}

fn report_frame(out: &mut Vec<u8>, report: Report) {
    let mut message = capnp::message::Builder::new_default();
    let mut frame = message.init_root::<peer_frame::Builder>();
    match report {
        Report::Unreachable(id) => frame.set_unreachable(id),
        Report::Snapshot { to, ok } => {
            let mut status = frame.init_snapshot_status();
            status.set_member_id(to);
            status.set_ok(ok);
        }
    }
    write_frame(out, &message);
}

/// Our `PeerGateway` capability, handed to consensus at registration. Since protocol 2 consensus
/// calls only `membersChanged`; `send` is left to the default, which answers "unimplemented".
struct Gateway {
    state: Rc<State>,
}

impl Gateway {
    fn members_changed(&self, params: peer_gateway::MembersChangedParams) -> Result<()> {
        let members = read_members(params.get()?.get_members()?)?;
        if let Some((transport, _)) = self.state.transport.get() {
            info!("member table changed: {} members", members.len());
            transport.set_members(members);
        }
        Ok(())
    }
}

impl peer_gateway::Server for Gateway {
    /// Waits for the network (at most the call's timeout): consensus calls it once, before its
    /// raft takes part, and waits for the answer on purpose.
    fn ask_members(
        self: Rc<Self>,
        params: peer_gateway::AskMembersParams,
        results: peer_gateway::AskMembersResults,
    ) -> impl Future<Output = capnp::Result<()>> + 'static {
        let state = self.state.clone();
        async move {
            views::ask_members(state, params, results)
                .await
                .map_err(|e| capnp::Error::failed(e.to_string()))
        }
    }

    // Awaits nothing: consensus must never wait on the network.
    fn members_changed(
        self: Rc<Self>,
        params: peer_gateway::MembersChangedParams,
        _results: peer_gateway::MembersChangedResults,
    ) -> impl Future<Output = capnp::Result<()>> + 'static {
        ready(
            Gateway::members_changed(&self, params)
                .map_err(|e| capnp::Error::failed(e.to_string())),
        )
    }
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>, what: &str) -> Result<String> {
    t?.to_string()
        .map_err(|e| Error::Ipc(capnp::Error::failed(format!("{what} is not UTF-8: {e}"))))
}

fn read_members(list: capnp::struct_list::Reader<'_, member::Owned>) -> Result<Vec<Peer>> {
    list.iter()
        .map(|m| {
            let urls = m
                .get_peer_urls()?
                .iter()
                .map(|u| text(u, "a peer URL"))
                .collect::<Result<Vec<_>>>()?;
            Ok(Peer {
                id: m.get_id(),
                urls,
            })
        })
        .collect()
}

fn read_listen_config(config: peer_gateway_config::Reader<'_>) -> Result<ListenConfig> {
    let urls = config
        .get_listen_peer_urls()?
        .iter()
        .map(|u| text(u, "a listen-peer URL"))
        .collect::<Result<Vec<_>>>()?;
    let tls = config.get_tls()?;
    // etcd.conf leaves unset paths empty.
    let path = |t, what| -> Result<Option<PathBuf>> {
        let s = text(t, what)?;
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    };
    let texts = |list: capnp::Result<capnp::text_list::Reader<'_>>, what| -> Result<Vec<String>> {
        list?.iter().map(|t| text(t, what)).collect()
    };
    let allowed = Restriction::from_lists(
        texts(tls.get_allowed_cns(), "an allowed CN")?,
        texts(tls.get_allowed_hostnames(), "an allowed hostname")?,
    )?;
    // An older consensus does not send it.
    let max_request_bytes = match config.get_max_request_bytes() {
        0 => schema::limits::DEFAULT_MAX_REQUEST_BYTES,
        n => n,
    };
    Ok(ListenConfig {
        urls,
        tls: TlsFiles {
            cert_file: path(tls.get_cert_file(), "the peer cert file")?,
            key_file: path(tls.get_key_file(), "the peer key file")?,
            trusted_ca_file: path(tls.get_trusted_ca_file(), "the peer trusted CA file")?,
            client_cert_auth: tls.get_client_cert_auth(),
            allowed,
        },
        max_request_bytes,
    })
}

#[cfg(test)]
mod tests;
