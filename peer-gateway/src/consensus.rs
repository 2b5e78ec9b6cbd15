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
mod tests {
    use super::*;
    use schema::member_capnp::{identity, peer_gateway_config};

    #[test]
    fn reads_members_and_config() {
        let mut message = capnp::message::Builder::new_default();
        let mut identity = message.init_root::<identity::Builder>();
        identity.set_member_id(1);
        let mut members = identity.init_members(2);
        {
            let mut m = members.reborrow().get(0);
            m.set_id(1);
            let mut urls = m.init_peer_urls(2);
            urls.set(0, "http://127.0.0.1:2380");
            urls.set(1, "http://127.0.0.1:2381");
        }
        members.reborrow().get(1).set_id(2);
        let peers = read_members(members.into_reader()).unwrap();
        assert_eq!(
            peers,
            vec![
                Peer {
                    id: 1,
                    urls: vec![
                        "http://127.0.0.1:2380".to_string(),
                        "http://127.0.0.1:2381".to_string()
                    ],
                },
                Peer {
                    id: 2,
                    urls: vec![]
                },
            ]
        );

        let mut message = capnp::message::Builder::new_default();
        let mut config = message.init_root::<peer_gateway_config::Builder>();
        config
            .reborrow()
            .init_listen_peer_urls(1)
            .set(0, "https://10.0.0.1:2380");
        let mut tls = config.reborrow().init_tls();
        tls.set_cert_file("/etc/peer.crt");
        tls.set_key_file("/etc/peer.key");
        tls.set_client_cert_auth(true);
        let listen = read_listen_config(config.into_reader()).unwrap();
        assert_eq!(listen.urls, vec!["https://10.0.0.1:2380".to_string()]);
        assert_eq!(listen.tls.cert_file, Some(PathBuf::from("/etc/peer.crt")));
        assert_eq!(listen.tls.key_file, Some(PathBuf::from("/etc/peer.key")));
        // Empty paths mean "not configured".
        assert_eq!(listen.tls.trusted_ca_file, None);
        assert!(listen.tls.client_cert_auth);
    }

    #[test]
    fn rejects_non_utf8_urls() {
        let mut message = capnp::message::Builder::new_default();
        let config = message.init_root::<peer_gateway_config::Builder>();
        let mut urls = config.init_listen_peer_urls(1);
        urls.set(0, capnp::text::Reader::from(&[0xff, 0xfe]));
        let config = message
            .get_root_as_reader::<peer_gateway_config::Reader>()
            .unwrap();
        let err = read_listen_config(config).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn a_messages_frame_is_one_segment_and_reads_back() {
        let batch = [
            Inbound {
                from: 2,
                is_snapshot: false,
                data: b"append".to_vec(),
                budget: None,
            },
            Inbound {
                from: 3,
                is_snapshot: true,
                data: vec![7; 100_001],
                budget: None,
            },
        ];
        let bytes = messages_frame(&batch, 1);
        // The segment table says one segment, and the frame is all there is.
        assert_eq!(&bytes[..4], &[0, 0, 0, 0]);
        assert_eq!(schema::stream::frame_len(&bytes), Ok(Some(bytes.len())));
        let mut buf = FrameBuffer::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let spare = buf.spare_mut();
            let n = spare.len().min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            buf.filled(n);
            rest = &rest[n..];
        }
        let frame = buf.next_frame().unwrap().unwrap();
        let peer_frame::Messages(list) = frame
            .get_root::<peer_frame::Reader>()
            .unwrap()
            .which()
            .unwrap()
        else {
            panic!("not a messages frame");
        };
        let got: Vec<_> = list
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.get_to(),
                    m.get_from(),
                    m.get_is_snapshot(),
                    m.get_data().unwrap().to_vec(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 2, false, b"append".to_vec()),
                (1, 3, true, vec![7; 100_001])
            ]
        );
    }

    // ------------------------------------------------------------ a stand-in consensus
    //
    // It serves `peer.sock` over capnp-rpc (registration, calls on our `PeerGateway`) and
    // `raft.sock` as a plain stream of PeerFrames, like consensus's raft thread.

    use std::cell::Cell;
    use std::time::Duration;

    use schema::member_capnp::{snapshot_reader, snapshot_writer};
    use schema::testing::{self, Identity, Listening, Member, PeerRegistrar};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

    use crate::transport::snapshot::stand_in::{self, Ending, Sink, SinkEvent};

    const CLUSTER: u64 = 0x1a2b;
    const US: u64 = 1;
    const PEER: u64 = 2;
    /// In the member table, but nothing listens at its URL.
    const DEAD: u64 = 3;
    const WAIT: Duration = Duration::from_secs(20);

    /// What the stand-in heard, on either socket.
    #[derive(Debug)]
    enum Seen {
        Registered(u32),
        Hello(u32),
        Delivered(Vec<(u64, u64, bool, Vec<u8>)>),
        Unreachable(u64),
        Snapshot(u64, bool),
        /// cert refused, frames refused, messages dropped.
        Counters(u64, u64, u64),
        /// `snapshotImage` was called with this message.
        ImageOpened(Vec<u8>),
        /// `receiveSnapshot` was called for a snapshot from this member.
        Receiving(u64),
        /// A received image was finished: from, message, total bytes, the image.
        Installed(u64, Vec<u8>, u64, Vec<u8>),
        /// A received image's writer was dropped without `finish`.
        ImageDropped(u64),
    }

    /// How the stand-in consensus serves raft snapshots.
    #[derive(Debug, Clone, Default)]
    struct Snapshots {
        /// What `snapshotImage` opens, whatever the message.
        image: Vec<u8>,
        /// `SnapshotWriter.write` never answers, as a consensus that is stuck or going away.
        stuck_writes: bool,
    }

    /// `testing::PeerRegistrar` with raft snapshots: `snapshotImage` serves `snapshots.image`,
    /// `receiveSnapshot` keeps what it is written; both tell `seen`.
    struct SnapshotRegistrar {
        inner: Rc<PeerRegistrar>,
        snapshots: Snapshots,
        seen: mpsc::UnboundedSender<Seen>,
    }

    impl peer_registrar::Server for SnapshotRegistrar {
        fn register(
            self: Rc<Self>,
            params: peer_registrar::RegisterParams,
            results: peer_registrar::RegisterResults,
        ) -> impl Future<Output = capnp::Result<()>> + 'static {
            peer_registrar::Server::register(self.inner.clone(), params, results)
        }

        fn members(
            self: Rc<Self>,
            params: peer_registrar::MembersParams,
            results: peer_registrar::MembersResults,
        ) -> impl Future<Output = capnp::Result<()>> + 'static {
            peer_registrar::Server::members(self.inner.clone(), params, results)
        }

        async fn snapshot_image(
            self: Rc<Self>,
            params: peer_registrar::SnapshotImageParams,
            mut results: peer_registrar::SnapshotImageResults,
        ) -> capnp::Result<()> {
            let message = params.get()?.get_message()?.to_vec();
            let _ = self.seen.send(Seen::ImageOpened(message));
            let mut r = results.get();
            r.set_total_bytes(self.snapshots.image.len() as u64);
            r.set_reader(capnp_rpc::new_client(ImageReader {
                image: self.snapshots.image.clone(),
                at: Cell::new(0),
            }));
            Ok(())
        }

        async fn receive_snapshot(
            self: Rc<Self>,
            params: peer_registrar::ReceiveSnapshotParams,
            mut results: peer_registrar::ReceiveSnapshotResults,
        ) -> capnp::Result<()> {
            let params = params.get()?;
            let from = params.get_from();
            let _ = self.seen.send(Seen::Receiving(from));
            results.get().set_writer(capnp_rpc::new_client(ImageWriter {
                from,
                message: params.get_message()?.to_vec(),
                total_bytes: params.get_total_bytes(),
                image: RefCell::new(Vec::new()),
                finished: Cell::new(false),
                stuck: self.snapshots.stuck_writes,
                seen: self.seen.clone(),
            }));
            Ok(())
        }
    }

    struct ImageReader {
        image: Vec<u8>,
        at: Cell<usize>,
    }

    impl snapshot_reader::Server for ImageReader {
        async fn read(
            self: Rc<Self>,
            _: snapshot_reader::ReadParams,
            mut results: snapshot_reader::ReadResults,
        ) -> capnp::Result<()> {
            // A read takes its chunk when it is called: pipelined reads get them in order.
            let at = self.at.get();
            let end = (at + schema::limits::SNAPSHOT_CHUNK_BYTES).min(self.image.len());
            self.at.set(end);
            results.get().set_chunk(&self.image[at..end]);
            Ok(())
        }
    }

    struct ImageWriter {
        from: u64,
        message: Vec<u8>,
        total_bytes: u64,
        image: RefCell<Vec<u8>>,
        finished: Cell<bool>,
        stuck: bool,
        seen: mpsc::UnboundedSender<Seen>,
    }

    impl snapshot_writer::Server for ImageWriter {
        async fn write(
            self: Rc<Self>,
            params: snapshot_writer::WriteParams,
            _: snapshot_writer::WriteResults,
        ) -> capnp::Result<()> {
            let chunk = params.get()?.get_chunk()?;
            assert!(chunk.len() <= schema::limits::SNAPSHOT_CHUNK_BYTES);
            self.image.borrow_mut().extend_from_slice(chunk);
            if self.stuck {
                std::future::pending::<()>().await;
            }
            Ok(())
        }

        async fn finish(
            self: Rc<Self>,
            _: snapshot_writer::FinishParams,
            _: snapshot_writer::FinishResults,
        ) -> capnp::Result<()> {
            self.finished.set(true);
            let _ = self.seen.send(Seen::Installed(
                self.from,
                self.message.clone(),
                self.total_bytes,
                self.image.take(),
            ));
            Ok(())
        }
    }

    impl Drop for ImageWriter {
        fn drop(&mut self) {
            if !self.finished.get() {
                let _ = self.seen.send(Seen::ImageDropped(self.from));
            }
        }
    }

    /// The stand-in's registrar: tells `seen` of each registration and hands out its gateway.
    /// Without `snapshots`, it is an older consensus that has neither snapshot method.
    fn fake_registrar(
        refuse: bool,
        members: Vec<(u64, String)>,
        listen: String,
        snapshots: Option<Snapshots>,
        seen: mpsc::UnboundedSender<Seen>,
        gateways: mpsc::UnboundedSender<peer_gateway::Client>,
    ) -> peer_registrar::Client {
        let seen_snapshots = seen.clone();
        let identity = Identity {
            member_id: US,
            cluster_id: CLUSTER,
            members: members
                .into_iter()
                .map(|(id, url)| Member {
                    id,
                    peer_urls: vec![url],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut registrar = PeerRegistrar::new(identity, &listen);
        registrar.refuse =
            refuse.then(|| "peer gateway protocol version 1 is not supported".to_string());
        registrar.on_register = Some(Box::new(move |version| {
            let _ = seen.send(Seen::Registered(version));
        }));
        registrar.on_gateway = Some(Box::new(move |gateway| {
            let _ = gateways.send(gateway);
        }));
        match snapshots {
            Some(snapshots) => capnp_rpc::new_client(SnapshotRegistrar {
                inner: Rc::new(registrar),
                snapshots,
                seen: seen_snapshots,
            }),
            None => capnp_rpc::new_client(registrar),
        }
    }

    /// Serves `registrar` on `socket`; a test can cut the connections it accepted.
    fn serve(socket: &Path, registrar: peer_registrar::Client) -> Listening {
        testing::serve_rpc(socket, registrar.client).unwrap()
    }

    /// One `raft.sock` connection the stand-in accepted: its write half, and the task reading
    /// the gateway's frames into `Seen`s.
    struct RaftStream {
        writer: OwnedWriteHalf,
        reader: tokio::task::JoinHandle<()>,
    }

    impl RaftStream {
        /// Writes one `messages` frame from us: (to, isSnapshot, data) each.
        async fn send(&mut self, messages: &[(u64, bool, &[u8])]) {
            let mut message = capnp::message::Builder::new_default();
            let mut list = message
                .init_root::<peer_frame::Builder>()
                .init_messages(messages.len() as u32);
            for (i, (to, is_snapshot, data)) in messages.iter().enumerate() {
                let mut m = list.reborrow().get(i as u32);
                m.set_to(*to);
                m.set_from(US);
                m.set_is_snapshot(*is_snapshot);
                m.set_data(data);
            }
            let mut out = Vec::new();
            write_frame(&mut out, &message);
            self.writer.write_all(&out).await.unwrap();
        }

        /// Closes the stream, as a dying consensus would.
        fn cut(self) {
            self.reader.abort();
        }
    }

    /// Serves `raft.sock` beside `peer_socket`; hands out each accepted connection.
    fn serve_raft(
        peer_socket: &Path,
        seen: mpsc::UnboundedSender<Seen>,
    ) -> (Listening, mpsc::UnboundedReceiver<RaftStream>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let listening =
            testing::serve_streams(&schema::raft_socket_beside(peer_socket), move |stream| {
                let (read, writer) = stream.into_split();
                let reader = tokio::task::spawn_local(read_raft(read, seen.clone()));
                let _ = tx.send(RaftStream { writer, reader });
                std::future::ready(())
            })
            .unwrap();
        (listening, rx)
    }

    async fn read_raft(mut stream: OwnedReadHalf, seen: mpsc::UnboundedSender<Seen>) {
        let mut buf = FrameBuffer::new();
        loop {
            let n = stream.read(buf.spare_mut()).await.unwrap();
            if n == 0 {
                return;
            }
            buf.filled(n);
            while let Some(frame) = buf.next_frame().unwrap() {
                let frame = frame.get_root::<peer_frame::Reader>().unwrap();
                let _ = seen.send(match frame.which().unwrap() {
                    peer_frame::Hello(version) => Seen::Hello(version),
                    peer_frame::Messages(list) => Seen::Delivered(
                        list.unwrap()
                            .iter()
                            .map(|m| {
                                (
                                    m.get_to(),
                                    m.get_from(),
                                    m.get_is_snapshot(),
                                    m.get_data().unwrap().to_vec(),
                                )
                            })
                            .collect(),
                    ),
                    peer_frame::Unreachable(id) => Seen::Unreachable(id),
                    peer_frame::SnapshotStatus(status) => {
                        let status = status.unwrap();
                        Seen::Snapshot(status.get_member_id(), status.get_ok())
                    }
                    peer_frame::Counters(c) => {
                        let c = c.unwrap();
                        Seen::Counters(
                            c.get_cert_refused(),
                            c.get_frames_refused(),
                            c.get_messages_dropped(),
                        )
                    }
                });
            }
        }
    }

    fn free_udp_port() -> std::net::SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("consensus heard nothing in time")
            .expect("channel closed")
    }

    async fn accepted<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the gateway did not connect in time")
            .expect("channel closed")
    }

    /// The next registrar connection the stand-in accepted, to cut it.
    async fn connection(listening: &mut Listening) -> tokio::task::AbortHandle {
        tokio::time::timeout(WAIT, listening.accepted())
            .await
            .expect("the gateway did not connect in time")
            .expect("channel closed")
    }

    /// Registration and then the stream's hello, ignoring what the old connection still said.
    async fn registered_and_connected(seen: &mut mpsc::UnboundedReceiver<Seen>) {
        loop {
            match next(seen).await {
                Seen::Registered(v) => {
                    assert_eq!(v, schema::PROTOCOL_VERSION);
                    break;
                }
                Seen::Hello(v) => panic!("hello {v} before registering"),
                _ => {}
            }
        }
        match next(seen).await {
            Seen::Hello(v) => assert_eq!(v, schema::PROTOCOL_VERSION),
            other => panic!("expected the stream's hello, got {other:?}"),
        }
    }

    /// Peer -> gateway -> stand-in's `raft.sock`, resending until it arrives (the gateway drops
    /// what it cannot deliver yet). Returns the frame's messages.
    async fn from_peer(
        peer: &Transport,
        seen: &mut mpsc::UnboundedReceiver<Seen>,
        data: &[u8],
        is_snapshot: bool,
    ) -> Vec<(u64, u64, bool, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "never delivered");
            let _ = peer.send(US, data.to_vec(), is_snapshot);
            match tokio::time::timeout(Duration::from_millis(200), seen.recv()).await {
                Ok(Some(Seen::Delivered(batch)))
                    if batch.iter().any(|m| m.3 == data && m.2 == is_snapshot) =>
                {
                    return batch;
                }
                // Earlier copies, and reports on members not connected yet.
                Ok(Some(
                    Seen::Delivered(_)
                    | Seen::Unreachable(_)
                    | Seen::Snapshot(..)
                    | Seen::Counters(..),
                )) => {}
                Err(_) => {}
                Ok(other) => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Stand-in's `raft.sock` -> gateway -> peer, resending until it arrives.
    async fn to_peer(raft: &mut RaftStream, peer_events: &mut Events, data: &[u8]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "never sent");
            raft.send(&[(PEER, false, data)]).await;
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), peer_events.inbound.recv()).await
                && m.data == data
            {
                assert_eq!((m.from, m.is_snapshot), (US, false));
                return;
            }
        }
    }

    /// A gateway registered with the stand-in consensus (serving `snapshots`, or as an older
    /// consensus without), and the other member: a bare transport, its snapshot images served by
    /// in-memory stand-ins (it sends `peer_image`, ending as `peer_ending` says).
    struct Harness {
        _dir: tempfile::TempDir,
        peer: Transport,
        peer_events: Events,
        peer_opened: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
        peer_sink: mpsc::UnboundedReceiver<SinkEvent>,
        peers: Vec<Peer>,
        seen: mpsc::UnboundedReceiver<Seen>,
        gateways: mpsc::UnboundedReceiver<peer_gateway::Client>,
        connections: Listening,
        _raft: Listening,
        streams: mpsc::UnboundedReceiver<RaftStream>,
        gateway_task: JoinHandle<Result<()>>,
    }

    /// Starts a [`Harness`]; runs on the current `LocalSet`.
    fn harness(snapshots: Option<Snapshots>, peer_image: Vec<u8>, peer_ending: Ending) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let socket = schema::peer_socket(dir.path());
        let gateway_addr = free_udp_port();
        let (peer, mut peer_events) = Transport::start(TransportConfig {
            cluster_id: CLUSTER,
            member_id: PEER,
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            members: vec![],
            tls: tls::self_signed().unwrap(),
            max_message: 1 << 20,
        })
        .unwrap();
        // The stand-ins take the peer's snapshot channels; closed ones are left behind.
        let images = std::mem::replace(&mut peer_events.images, mpsc::channel(1).1);
        let peer_opened = stand_in::serve_images(images, peer_image, peer_ending);
        let incoming = std::mem::replace(&mut peer_events.snapshots, mpsc::channel(1).1);
        let peer_sink = stand_in::take_images(incoming, Sink::installing());
        let peer_url = format!("http://{}", peer.local_addrs()[0]);
        let gateway_url = format!("http://{gateway_addr}");
        let dead_url = format!("http://{}", free_udp_port());
        let table = vec![
            (US, gateway_url.clone()),
            (PEER, peer_url.clone()),
            (DEAD, dead_url),
        ];
        let peers: Vec<Peer> = table
            .iter()
            .map(|(id, url)| Peer {
                id: *id,
                urls: vec![url.clone()],
            })
            .collect();
        peer.set_members(peers.clone());

        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (gateways_tx, gateways) = mpsc::unbounded_channel();
        let registrar = fake_registrar(
            false,
            table,
            gateway_url,
            snapshots,
            seen_tx.clone(),
            gateways_tx,
        );
        let connections = serve(&socket, registrar);
        let (raft, streams) = serve_raft(&socket, seen_tx);
        let gateway_task = tokio::task::spawn_local(run(socket.clone()));
        Harness {
            _dir: dir,
            peer,
            peer_events,
            peer_opened,
            peer_sink,
            peers,
            seen,
            gateways,
            connections,
            _raft: raft,
            streams,
            gateway_task,
        }
    }

    /// `len` bytes in a pattern that shows a chunk out of place or lost.
    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 253) as u8).collect()
    }

    /// The next snapshot report the bare peer's transport made, past those of unreachable members.
    async fn peer_snapshot_report(events: &mut Events) -> Report {
        loop {
            match tokio::time::timeout(WAIT, events.reports.recv())
                .await
                .expect("no report in time")
                .expect("reports closed")
            {
                report @ Report::Snapshot { .. } => return report,
                Report::Unreachable(_) => {}
            }
        }
    }

    /// The next thing the stand-in heard that is about snapshots, past messages and counters.
    async fn next_about_snapshots(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        loop {
            match next(seen).await {
                Seen::Delivered(_) | Seen::Unreachable(_) | Seen::Counters(..) => {}
                other => return other,
            }
        }
    }

    #[tokio::test]
    async fn carries_messages_between_consensus_and_a_peer_and_re_registers() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let gateway_image = patterned((3 << 20) + 777);
                let peer_image = patterned((2 << 20) + 5);
                let snapshots = Snapshots {
                    image: gateway_image.clone(),
                    stuck_writes: false,
                };
                let Harness {
                    _dir,
                    peer,
                    mut peer_events,
                    mut peer_opened,
                    mut peer_sink,
                    peers,
                    mut seen,
                    mut gateways,
                    mut connections,
                    _raft,
                    mut streams,
                    gateway_task,
                } = harness(Some(snapshots), peer_image.clone(), Ending::Whole);

                // Registered with our version, then connected the stream with it.
                registered_and_connected(&mut seen).await;
                let gateway = accepted(&mut gateways).await;
                let mut raft = accepted(&mut streams).await;

                // membersChanged is still served over RPC; send is gone with protocol 1.
                let mut request = gateway.members_changed_request();
                let mut list = request.get().init_members(peers.len() as u32);
                for (i, p) in peers.iter().enumerate() {
                    let mut m = list.reborrow().get(i as u32);
                    m.set_id(p.id);
                    m.init_peer_urls(1).set(0, p.urls[0].as_str());
                }
                request.send().promise.await.unwrap();
                let err = gateway.send_request().send().promise.await.err().unwrap();
                assert_eq!(err.kind, capnp::ErrorKind::Unimplemented, "{err}");

                // Peer -> gateway -> consensus, as `messages` frames addressed to us.
                let batch = from_peer(&peer, &mut seen, b"append", false).await;
                assert!(batch.contains(&(US, PEER, false, b"append".to_vec())));

                // Consensus -> gateway -> peer.
                to_peer(&mut raft, &mut peer_events, b"vote").await;

                // A snapshot from the peer: consensus gets its message and its image through
                // receiveSnapshot and the writer, and the peer hears it was installed.
                peer.send(US, b"MsgSnapshot to us".to_vec(), true).unwrap();
                match next_about_snapshots(&mut seen).await {
                    Seen::Receiving(PEER) => {}
                    other => panic!("expected receiveSnapshot, got {other:?}"),
                }
                match next_about_snapshots(&mut seen).await {
                    Seen::Installed(from, message, total, image) => {
                        assert_eq!(
                            (from, message.as_slice()),
                            (PEER, &b"MsgSnapshot to us"[..])
                        );
                        assert_eq!(total, peer_image.len() as u64);
                        assert!(image == peer_image, "the image arrived changed");
                    }
                    other => panic!("expected the image installed, got {other:?}"),
                }
                assert_eq!(
                    peer_snapshot_report(&mut peer_events).await,
                    Report::Snapshot { to: US, ok: true }
                );
                assert_eq!(
                    peer_opened.try_recv(),
                    Ok((US, b"MsgSnapshot to us".to_vec()))
                );

                // A snapshot from consensus: the gateway opens its image with snapshotImage,
                // streams it to the peer, and reports how that went on the raft stream.
                raft.send(&[(PEER, true, b"MsgSnapshot to the peer")]).await;
                match next_about_snapshots(&mut seen).await {
                    Seen::ImageOpened(message) => assert_eq!(message, b"MsgSnapshot to the peer"),
                    other => panic!("expected snapshotImage, got {other:?}"),
                }
                match next_about_snapshots(&mut seen).await {
                    Seen::Snapshot(PEER, true) => {}
                    other => panic!("expected the snapshot reported sent, got {other:?}"),
                }
                let taken = loop {
                    match tokio::time::timeout(WAIT, peer_sink.recv()).await.unwrap() {
                        Some(SinkEvent::Done(taken)) => break taken,
                        Some(SinkEvent::Chunk(_)) => {}
                        None => panic!("the peer's sink closed"),
                    }
                };
                assert_eq!(
                    (taken.from, taken.message.as_slice(), taken.total_bytes),
                    (
                        US,
                        &b"MsgSnapshot to the peer"[..],
                        gateway_image.len() as u64
                    )
                );
                assert!(taken.finished && taken.image == gateway_image);

                // What cannot reach a member comes back as reports on the stream: a snapshot to
                // a member not connected fails at once, before its image is opened.
                raft.send(&[(DEAD, false, b"append"), (DEAD, true, b"snapshot")])
                    .await;
                // And what the gateway dropped is counted, for consensus's /metrics.
                let (mut unreachable, mut snapshot, mut dropped) = (false, false, 0);
                while !(unreachable && snapshot && dropped >= 2) {
                    match next(&mut seen).await {
                        Seen::Unreachable(DEAD) => unreachable = true,
                        Seen::Snapshot(DEAD, ok) => {
                            assert!(!ok);
                            snapshot = true;
                        }
                        Seen::Counters(0, 0, n) => dropped += n,
                        Seen::Delivered(_) | Seen::Unreachable(_) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }

                // Consensus goes away, both connections at once: the gateway registers and
                // connects the stream again by itself, and messages flow again both ways.
                connection(&mut connections).await.abort();
                raft.cut();
                registered_and_connected(&mut seen).await;
                let mut raft = accepted(&mut streams).await;
                to_peer(&mut raft, &mut peer_events, b"vote again").await;
                let batch = from_peer(&peer, &mut seen, b"append again", false).await;
                assert!(batch.contains(&(US, PEER, false, b"append again".to_vec())));

                // The stream ending alone counts as losing consensus too.
                raft.cut();
                registered_and_connected(&mut seen).await;
                let mut raft = accepted(&mut streams).await;
                to_peer(&mut raft, &mut peer_events, b"vote once more").await;

                assert!(!gateway_task.is_finished());
                gateway_task.abort();
            })
            .await;
    }

    /// An older consensus answers "unimplemented" to both snapshot methods: a snapshot it sends
    /// fails (reported on the raft stream), one a peer sends is not installed (the peer hears
    /// so), and messages go on.
    #[tokio::test]
    async fn an_older_consensus_neither_sends_nor_takes_snapshots() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut h = harness(None, patterned(3 << 20), Ending::Whole);
                registered_and_connected(&mut h.seen).await;
                let mut raft = accepted(&mut h.streams).await;
                from_peer(&h.peer, &mut h.seen, b"append", false).await;
                to_peer(&mut raft, &mut h.peer_events, b"vote").await;

                raft.send(&[(PEER, true, b"MsgSnapshot to the peer")]).await;
                match next_about_snapshots(&mut h.seen).await {
                    Seen::Snapshot(PEER, false) => {}
                    other => panic!("expected the snapshot reported failed, got {other:?}"),
                }
                h.peer
                    .send(US, b"MsgSnapshot to us".to_vec(), true)
                    .unwrap();
                assert_eq!(
                    peer_snapshot_report(&mut h.peer_events).await,
                    Report::Snapshot { to: US, ok: false }
                );
                assert!(
                    h.peer_sink.try_recv().is_err(),
                    "the gateway sent an image it never had"
                );

                to_peer(&mut raft, &mut h.peer_events, b"vote again").await;
                from_peer(&h.peer, &mut h.seen, b"append again", false).await;
                assert!(!h.gateway_task.is_finished());
                h.gateway_task.abort();
            })
            .await;
    }

    /// A peer's image fails part-way: the gateway drops consensus's writer without `finish` (so
    /// that consensus deletes what it got), and the peer hears the snapshot failed.
    #[tokio::test]
    async fn a_failed_transfer_drops_the_image_in_consensus() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let snapshots = Snapshots::default();
                let mut h = harness(Some(snapshots), patterned(5 << 20), Ending::FailAfter(2));
                registered_and_connected(&mut h.seen).await;
                let _raft = accepted(&mut h.streams).await;
                from_peer(&h.peer, &mut h.seen, b"append", false).await;

                h.peer
                    .send(US, b"MsgSnapshot to us".to_vec(), true)
                    .unwrap();
                assert_eq!(
                    peer_snapshot_report(&mut h.peer_events).await,
                    Report::Snapshot { to: US, ok: false }
                );
                match next_about_snapshots(&mut h.seen).await {
                    Seen::Receiving(PEER) => {}
                    other => panic!("expected receiveSnapshot, got {other:?}"),
                }
                match next_about_snapshots(&mut h.seen).await {
                    Seen::ImageDropped(from) => assert_eq!(from, PEER),
                    other => panic!("expected the writer dropped, got {other:?}"),
                }
                assert!(!h.gateway_task.is_finished());
                h.gateway_task.abort();
            })
            .await;
    }

    /// Consensus goes away (as it does right after installing a snapshot, to restart on it)
    /// while an image is being written into it: the peer hears the snapshot was not installed,
    /// and the gateway registers again and carries messages, without a panic.
    #[tokio::test]
    async fn losing_consensus_in_a_snapshot_fails_it_and_the_gateway_goes_on() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let snapshots = Snapshots {
                    image: Vec::new(),
                    stuck_writes: true,
                };
                let mut h = harness(Some(snapshots), patterned(6 << 20), Ending::Whole);
                registered_and_connected(&mut h.seen).await;
                let raft = accepted(&mut h.streams).await;
                from_peer(&h.peer, &mut h.seen, b"append", false).await;

                h.peer
                    .send(US, b"MsgSnapshot to us".to_vec(), true)
                    .unwrap();
                match next_about_snapshots(&mut h.seen).await {
                    Seen::Receiving(PEER) => {}
                    other => panic!("expected receiveSnapshot, got {other:?}"),
                }
                connection(&mut h.connections).await.abort();
                raft.cut();
                assert_eq!(
                    peer_snapshot_report(&mut h.peer_events).await,
                    Report::Snapshot { to: US, ok: false }
                );
                // (The stand-in's writer outlives its aborted connection, so whether it is
                // dropped is left to `a_failed_transfer_drops_the_image_in_consensus`.)
                loop {
                    match next(&mut h.seen).await {
                        Seen::Hello(_) => break,
                        Seen::Installed(..) => panic!("an incomplete image was installed"),
                        _ => {}
                    }
                }
                let mut raft = accepted(&mut h.streams).await;
                to_peer(&mut raft, &mut h.peer_events, b"vote after").await;
                assert!(!h.gateway_task.is_finished());
                h.gateway_task.abort();
            })
            .await;
    }

    #[tokio::test]
    async fn a_refused_registration_is_fatal() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let socket = schema::peer_socket(dir.path());
                let (seen_tx, _seen) = mpsc::unbounded_channel();
                let (gateways_tx, _gateways) = mpsc::unbounded_channel();
                let registrar =
                    fake_registrar(true, vec![], String::new(), None, seen_tx, gateways_tx);
                let _connections = serve(&socket, registrar);
                let result = tokio::time::timeout(WAIT, run(socket)).await.unwrap();
                match result {
                    Err(Error::RegistrationRefused(e)) => {
                        assert!(e.to_string().contains("not supported"), "{e}")
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
            })
            .await;
    }
}
