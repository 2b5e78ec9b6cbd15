//! QUIC between the peer gateways of the members. Every member dials each other member, so each
//! pair of members has two connections. Messages in both directions travel on the one the
//! lower member ID dialed, while it is up: raft's traffic is request and answer (append, then its
//! acknowledgement), so on one connection each side's answer carries the QUIC ACK for what it
//! answers, where a connection per direction made the receiving side send ACK-only packets (and
//! wake the other gateway) several hundred times a second. The higher member sends on its own
//! connection only while the shared one is down, and snapshots always go on the sender's own
//! (while it is up).
//!
//! This module knows nothing of consensus: messages go in through [`Transport::send`] and come
//! out of [`Events::inbound`]; what consensus must hear about comes out of [`Events::reports`].
//! Beside raft traffic, the same connections carry cluster queries ([`members`]): a member asks
//! another for its member table with [`Transport::ask_members`], and the queries peers send us
//! come out of [`Events::queries`] for the link to consensus to answer. And they carry raft
//! snapshots ([`snapshot`]), each image on a stream of its own beside its `MsgSnapshot`: the
//! transport asks the link for the image of a snapshot it sends ([`Events::images`]) and hands it
//! the image of one it receives ([`Events::snapshots`]), chunk by chunk.
//!
//! Memory is bounded by bytes (audit M2), with etcd's defaults:
//! - a message is at most [`TransportConfig::max_message`] (about 3.6 MiB, from
//!   `--max-request-bytes`; see [`schema::limits`]); a longer length prefix closes the stream
//!   before anything is allocated for it;
//! - inbound messages not yet handed to consensus hold at most [`INBOUND_BYTES`]; past it, streams
//!   are not read, so QUIC flow control holds the senders back (nothing is dropped);
//! - QUIC buffers at most [`RECEIVE_WINDOW`] per connection that we have not read;
//! - outbound messages wait per peer up to [`OUTBOUND_BYTES`]; past it they are dropped and
//!   counted (raft resends);
//! - a snapshot image, whatever its size, holds a few chunks of
//!   [`schema::limits::SNAPSHOT_CHUNK_BYTES`] per transfer, and one transfer at a time runs to
//!   each peer and one from all of them.

mod frame;
mod handshake;
pub mod members;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, VarInt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::counters::Counters;
use crate::error::{Error, Result};
use crate::peer_url::PeerUrl;
use crate::tls::PeerTls;
use frame::{STREAM_MESSAGES, STREAM_SNAPSHOT};
use handshake::{ACCEPTED, HELLO_LEN, Hello, MAX_REASON, REFUSED, Refusal, WIRE_VERSION};
pub use members::MembersQuery;
use rustls::pki_types::{CertificateDer, ServerName};
pub use snapshot::{
    ImageRequest, ImageSink, ImageSource, ImageWrite, ImageWrites, IncomingSnapshot,
};

/// Messages waiting for one peer's connection; beyond this they are dropped (raft resends).
const QUEUE_LEN: usize = 4096;
/// Bytes of messages waiting for one peer's connection; beyond this they are dropped and
/// counted. raft-rs keeps at most 256 appends of about 1 MiB in flight per follower, but a
/// connection that takes less than this in one go is slow or gone, and raft resends.
pub const OUTBOUND_BYTES: usize = 64 << 20;
/// Inbound messages waiting for consensus; a full channel slows down reading from peers.
const INBOUND_LEN: usize = 4096;
/// Bytes of inbound messages read from peers and not yet written to consensus: four of the
/// peer gateway's batches to consensus ([`schema::limits::RAFT_BATCH_BYTES`]), so one fills
/// while consensus reads another, and 17 of the largest messages with etcd's defaults. A full
/// budget stops reading from peers (backpressure), so it bounds memory without dropping.
pub const INBOUND_BYTES: usize = 64 << 20;
/// What QUIC buffers per connection before we read it (its connection-level flow control
/// window; quinn's default is unlimited, with 1.25 MB per stream).
const RECEIVE_WINDOW: u32 = 16 << 20;
/// Streams a peer may have open on one connection: one for messages each way and a spare.
const MAX_UNI_STREAMS: u32 = 16;
/// Bidirectional streams a peer may have open on one connection: the handshake's, then cluster
/// queries ([`members`]), which are short, and snapshots ([`snapshot`]), one at a time.
const MAX_BI_STREAMS: u32 = 4;
/// Cluster queries from peers waiting for consensus's answer; more are not answered.
const QUERIES_LEN: usize = 16;
/// Snapshots to send waiting for the link to open their image (one per peer at most).
const IMAGES_LEN: usize = 16;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// consensus hears that a peer is unreachable at most this often per peer.
const UNREACHABLE_EVERY: Duration = Duration::from_millis(100);
/// Repeated dial failures and refusals are logged at most this often per peer.
const LOG_EVERY: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Ack-eliciting packets a peer may receive before it must acknowledge at once, and how long it
/// may otherwise wait (the heartbeat interval is 100 ms; answers normally carry the ACK sooner).
const ACK_ELICITING_THRESHOLD: u32 = 16;
const MAX_ACK_DELAY: Duration = Duration::from_millis(5);
const IDLE_TIMEOUT_MS: u32 = 5_000;
/// Ordinary messages are coalesced into writes of about this size.
const WRITE_BATCH: usize = 1 << 20;

/// Application error codes for QUIC connection closes and stream stops.
mod code {
    pub const SHUTDOWN: u32 = 0;
    pub const REFUSED: u32 = 1;
    pub const RECONNECT: u32 = 2;
    pub const FRAME_TOO_LARGE: u32 = 3;
    pub const BAD_STREAM: u32 = 4;
    /// How gateways before snapshots stopped a (unidirectional) snapshot stream; kept so that
    /// the code keeps its meaning.
    pub const SNAPSHOTS_UNSUPPORTED: u32 = 5;
    /// A snapshot stream ended without an installed image (see [`super::snapshot`]).
    pub const SNAPSHOT_FAILED: u32 = 6;
}

/// One entry of the member table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub urls: Vec<String>,
}

pub struct TransportConfig {
    pub cluster_id: u64,
    pub member_id: u64,
    pub listen: Vec<SocketAddr>,
    /// The member table; our own entry is skipped when dialing.
    pub members: Vec<Peer>,
    pub tls: PeerTls,
    /// The largest message sent or accepted, in bytes
    /// ([`schema::limits::raft_message_limit`] of `--max-request-bytes`).
    pub max_message: usize,
}

/// A raft message a peer sent us.
#[derive(Debug)]
pub struct Inbound {
    pub from: u64,
    /// Always false: a `MsgSnapshot` reaches consensus with its image ([`Events::snapshots`]).
    pub is_snapshot: bool,
    pub data: Vec<u8>,
    /// Its share of [`INBOUND_BYTES`], given back when dropped: keep it until the message is
    /// written to consensus (or dropped).
    pub budget: Option<OwnedSemaphorePermit>,
}

impl PartialEq for Inbound {
    fn eq(&self, other: &Inbound) -> bool {
        (self.from, self.is_snapshot, &self.data) == (other.from, other.is_snapshot, &other.data)
    }
}

/// What raft must hear about its outbound messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Unreachable(u64),
    Snapshot { to: u64, ok: bool },
}

pub struct Events {
    pub inbound: mpsc::Receiver<Inbound>,
    pub reports: mpsc::UnboundedReceiver<Report>,
    /// Cluster queries from peers, to answer with consensus's member table.
    pub queries: mpsc::Receiver<MembersQuery>,
    /// Snapshots we send, whose image the link to consensus must open.
    pub images: mpsc::Receiver<ImageRequest>,
    /// Snapshots peers send us, whose image the link to consensus must take.
    pub snapshots: mpsc::Receiver<IncomingSnapshot>,
}

/// Why [`Transport::send`] dropped a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    UnknownPeer,
    NotConnected,
    QueueFull,
    TooLarge,
    /// A snapshot while another one to the same peer is still being sent.
    Busy,
}

pub struct Transport {
    shared: Arc<Shared>,
    accept_tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    cluster_id: u64,
    member_id: u64,
    /// Random per start, sent in every hello so peers notice we restarted.
    incarnation: u64,
    client_config: quinn::ClientConfig,
    endpoints: Vec<Endpoint>,
    /// Who may connect to us: every member of the table, with its peer URLs (a peer's TLS
    /// certificate must name one of their hosts).
    members: Mutex<HashMap<u64, Vec<String>>>,
    /// Whom we dial: every member but us.
    peers: Mutex<HashMap<u64, PeerHandle>>,
    /// The last incarnation each member greeted us with.
    incarnations: Mutex<HashMap<u64, u64>>,
    inbound: mpsc::Sender<Inbound>,
    /// [`INBOUND_BYTES`] as permits of one byte.
    inbound_budget: Arc<Semaphore>,
    max_message: usize,
    counters: Arc<Counters>,
    reports: mpsc::UnboundedSender<Report>,
    queries: mpsc::Sender<MembersQuery>,
    images: mpsc::Sender<ImageRequest>,
    snapshots: mpsc::Sender<IncomingSnapshot>,
    /// Taken while a snapshot comes in, from any peer.
    receiving: Arc<AtomicBool>,
    /// [`snapshot::STALL`], shorter in tests.
    snapshot_stall: Duration,
    /// When we last logged a failed inbound connection, per remote address.
    accept_log: Mutex<HashMap<SocketAddr, Instant>>,
    /// Test-only failpoint (`schema::failpoint::PEER_SEND_DELAY`): how long each batch of
    /// messages waits before it leaves.
    send_delay: Option<Duration>,
}

struct PeerHandle {
    url: String,
    queue: mpsc::Sender<Outgoing>,
    /// [`OUTBOUND_BYTES`] as permits of one byte, for `queue`.
    budget: Arc<Semaphore>,
    link: Arc<PeerLink>,
    task: JoinHandle<()>,
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// State shared between `send` and one peer's connection task.
#[derive(Default)]
struct PeerLink {
    connected: AtomicBool,
    last_unreachable: Mutex<Option<Instant>>,
    /// Wakes the connection task to dial again (the peer restarted, our connection is stale).
    kick: Notify,
    /// The connection the peer dialed to us, when the peer has the lower member ID: we send on
    /// it too (see the module comment).
    shared_conn: Mutex<Option<Connection>>,
    /// Batches of messages sent on `shared_conn` (for tests and debugging).
    shared_batches: std::sync::atomic::AtomicU64,
    /// The connection we dialed to the peer, while it is up: cluster queries and snapshots go
    /// on it.
    own_conn: Mutex<Option<Connection>>,
    /// Taken while a snapshot goes to the peer.
    sending_snapshot: Arc<AtomicBool>,
}

impl PeerLink {
    /// The connection the lower-ID peer dialed to us, if it is still open.
    fn shared_conn(&self) -> Option<Connection> {
        lock(&self.shared_conn)
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// A connection to the peer that passed the handshake, ours first.
    fn any_conn(&self) -> Option<Connection> {
        lock(&self.own_conn)
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
            .or_else(|| self.shared_conn())
    }

    fn report_unreachable(&self, reports: &mpsc::UnboundedSender<Report>, id: u64) {
        let mut last = lock(&self.last_unreachable);
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= UNREACHABLE_EVERY) {
            *last = Some(now);
            let _ = reports.send(Report::Unreachable(id));
        }
    }
}

struct Outgoing {
    data: Vec<u8>,
    /// Its share of the peer's [`OUTBOUND_BYTES`], given back once it is written.
    _budget: OwnedSemaphorePermit,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport {
    /// Binds one QUIC endpoint per listen address and starts dialing the other members. Must run
    /// inside a tokio runtime.
    pub fn start(config: TransportConfig) -> Result<(Self, Events)> {
        Self::start_with_stall(config, snapshot::STALL)
    }

    /// [`Transport::start`] where a snapshot transfer fails after `snapshot_stall` without
    /// progress.
    fn start_with_stall(
        config: TransportConfig,
        snapshot_stall: Duration,
    ) -> Result<(Self, Events)> {
        if config.listen.is_empty() {
            return Err(Error::NoListenUrl);
        }
        let quic = quic_transport_config();
        let counters = config.tls.counters.clone();
        let server_crypto = QuicServerConfig::try_from(config.tls.server)
            .map_err(|e| Error::Tls(format!("unusable for QUIC: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(quic.clone());
        let client_crypto = QuicClientConfig::try_from(config.tls.client)
            .map_err(|e| Error::Tls(format!("unusable for QUIC: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(quic);

        let endpoints = config
            .listen
            .iter()
            .map(|&addr| {
                Endpoint::server(server.clone(), addr)
                    .map_err(|source| Error::Bind { addr, source })
            })
            .collect::<Result<Vec<_>>>()?;

        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_LEN);
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (queries_tx, queries_rx) = mpsc::channel(QUERIES_LEN);
        let (images_tx, images_rx) = mpsc::channel(IMAGES_LEN);
        // One snapshot comes in at a time.
        let (snapshots_tx, snapshots_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            cluster_id: config.cluster_id,
            member_id: config.member_id,
            incarnation: random_u64(),
            client_config: client,
            endpoints,
            members: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            incarnations: Mutex::new(HashMap::new()),
            inbound: inbound_tx,
            inbound_budget: Arc::new(Semaphore::new(INBOUND_BYTES)),
            max_message: config.max_message,
            counters,
            reports: reports_tx,
            queries: queries_tx,
            images: images_tx,
            snapshots: snapshots_tx,
            receiving: Arc::new(AtomicBool::new(false)),
            snapshot_stall,
            accept_log: Mutex::new(HashMap::new()),
            send_delay: schema::failpoint::pause(schema::failpoint::PEER_SEND_DELAY),
        });
        let accept_tasks = shared
            .endpoints
            .iter()
            .map(|e| tokio::spawn(accept_loop(shared.clone(), e.clone())))
            .collect();
        let transport = Self {
            shared,
            accept_tasks,
        };
        transport.set_members(config.members);
        Ok((
            transport,
            Events {
                inbound: inbound_rx,
                reports: reports_rx,
                queries: queries_rx,
                images: images_rx,
                snapshots: snapshots_rx,
            },
        ))
    }

    /// The addresses the endpoints are bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared
            .endpoints
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .collect()
    }

    /// Queues one message for member `to` without waiting for the network. A message that cannot
    /// be queued is dropped (raft resends), counted, and reported as described on [`Report`].
    /// A snapshot (`is_snapshot`, a `MsgSnapshot`) starts its transfer beside the messages (see
    /// [`snapshot`]), whose end is reported in a [`Report::Snapshot`], as is its refusal here.
    pub fn send(&self, to: u64, data: Vec<u8>, is_snapshot: bool) -> Result<(), Dropped> {
        let shared = &self.shared;
        let result = if is_snapshot {
            self.send_snapshot(to, data)
        } else {
            self.enqueue(to, data)
        };
        if result.is_err() {
            Counters::bump(&shared.counters.messages_dropped);
            if is_snapshot {
                let _ = shared.reports.send(Report::Snapshot { to, ok: false });
            }
        }
        result
    }

    fn enqueue(&self, to: u64, data: Vec<u8>) -> Result<(), Dropped> {
        let shared = &self.shared;
        let peers = lock(&shared.peers);
        let Some(peer) = peers.get(&to) else {
            debug!("dropping a message to member {to:x}: not in the member table");
            return Err(Dropped::UnknownPeer);
        };
        if data.len() > shared.max_message {
            warn!(
                "dropping a message of {} bytes to member {to:x}: the limit is {} bytes",
                data.len(),
                shared.max_message
            );
            return Err(Dropped::TooLarge);
        }
        let dropped = if !peer.link.connected.load(Ordering::Acquire) {
            Dropped::NotConnected
        } else {
            // A message larger than the whole budget goes alone.
            let charge = data.len().clamp(1, OUTBOUND_BYTES) as u32;
            match peer.budget.clone().try_acquire_many_owned(charge) {
                Err(_) => Dropped::QueueFull,
                Ok(budget) => match peer.queue.try_send(Outgoing {
                    data,
                    _budget: budget,
                }) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => Dropped::QueueFull,
                    Err(mpsc::error::TrySendError::Closed(_)) => Dropped::NotConnected,
                },
            }
        };
        peer.link.report_unreachable(&shared.reports, to);
        Err(dropped)
    }

    /// Starts sending a snapshot to `to` in a task of its own, which reports how it ended.
    fn send_snapshot(&self, to: u64, message: Vec<u8>) -> Result<(), Dropped> {
        let shared = &self.shared;
        let Some(link) = lock(&shared.peers).get(&to).map(|p| p.link.clone()) else {
            debug!("dropping a snapshot to member {to:x}: not in the member table");
            return Err(Dropped::UnknownPeer);
        };
        if message.len() > shared.max_message {
            warn!(
                "dropping a snapshot message of {} bytes to member {to:x}: the limit is {} bytes",
                message.len(),
                shared.max_message
            );
            return Err(Dropped::TooLarge);
        }
        if link.any_conn().is_none() {
            link.report_unreachable(&shared.reports, to);
            return Err(Dropped::NotConnected);
        }
        let Some(slot) = snapshot::Slot::take(&link.sending_snapshot) else {
            info!("not sending a snapshot to member {to:x}: the previous one is still on its way");
            return Err(Dropped::Busy);
        };
        let (images, reports, stall) = (
            shared.images.clone(),
            shared.reports.clone(),
            shared.snapshot_stall,
        );
        tokio::spawn(async move {
            let conn = || link.any_conn();
            let ok = match snapshot::send(conn, &images, stall, to, message).await {
                Ok(bytes) => {
                    info!("sent a snapshot of {bytes} bytes to member {to:x}");
                    true
                }
                Err(e) => {
                    warn!("sending a snapshot to member {to:x} failed: {e}");
                    false
                }
            };
            // Free before raft hears of it, so that the snapshot it may send next is taken.
            drop(slot);
            let _ = reports.send(Report::Snapshot { to, ok });
        });
        Ok(())
    }

    /// The other members of the table.
    pub fn peer_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = lock(&self.shared.peers).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Asks member `id` for its member table (a cluster query, see [`members`]): waits until a
    /// connection to it passed the handshake, and asks again on a new one when the connection
    /// is lost meanwhile, so the caller bounds it with a timeout. Returns the answer's bytes (an
    /// encoded `PeerView`, which this module does not read); an error for an answer that is
    /// malformed or too large, or when the peer refuses the query.
    pub async fn ask_members(&self, id: u64) -> Result<Vec<u8>> {
        let link = lock(&self.shared.peers)
            .get(&id)
            .map(|p| p.link.clone())
            .ok_or(Error::UnknownPeer(id))?;
        loop {
            if let Some(conn) = link.any_conn() {
                match members::ask(&conn).await {
                    Ok(answer) => return Ok(answer),
                    // The connection went away under the query: ask on the next one.
                    Err(e) if conn.close_reason().is_some() => {
                        debug!("cluster query to member {id:x} lost with its connection: {e}")
                    }
                    Err(e) => return Err(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What this transport and its TLS verifiers counted.
    #[cfg(test)]
    fn counters(&self) -> crate::counters::Sample {
        self.shared.counters.sample()
    }

    /// Replaces the member table: dials new members, stops dialing removed ones.
    pub fn set_members(&self, members: Vec<Peer>) {
        let shared = &self.shared;
        *lock(&shared.members) = members.iter().map(|m| (m.id, m.urls.clone())).collect();
        let wanted: HashMap<u64, String> = members
            .into_iter()
            .filter(|m| m.id != shared.member_id)
            .filter_map(|m| match m.urls.into_iter().next() {
                Some(url) => Some((m.id, url)),
                None => {
                    warn!("member {:x} has no peer URL; not dialing it", m.id);
                    None
                }
            })
            .collect();
        let mut peers = lock(&shared.peers);
        peers.retain(|id, handle| {
            let keep = wanted.get(id) == Some(&handle.url);
            if !keep {
                info!("stopped dialing member {id:x} at {}", handle.url);
            }
            keep
        });
        for (id, url) in wanted {
            if peers.contains_key(&id) {
                continue;
            }
            match PeerUrl::parse(&url) {
                Ok(target) => {
                    let (queue, rx) = mpsc::channel(QUEUE_LEN);
                    let link = Arc::new(PeerLink::default());
                    let task = tokio::spawn(run_peer(shared.clone(), id, target, link.clone(), rx));
                    peers.insert(
                        id,
                        PeerHandle {
                            url,
                            queue,
                            budget: Arc::new(Semaphore::new(OUTBOUND_BYTES)),
                            link,
                            task,
                        },
                    );
                }
                Err(e) => warn!("not dialing member {id:x}: {e}"),
            }
        }
    }

    /// How many batches of messages to `to` went on the connection `to` dialed.
    #[cfg(test)]
    fn batches_on_shared(&self, to: u64) -> u64 {
        lock(&self.shared.peers)
            .get(&to)
            .map_or(0, |p| p.link.shared_batches.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    fn is_connected(&self, to: u64) -> bool {
        lock(&self.shared.peers)
            .get(&to)
            .is_some_and(|p| p.link.connected.load(Ordering::Acquire))
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for task in &self.accept_tasks {
            task.abort();
        }
        lock(&self.shared.peers).clear();
        for endpoint in &self.shared.endpoints {
            endpoint.close(VarInt::from_u32(code::SHUTDOWN), b"shutting down");
        }
    }
}

fn quic_transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Notice a dead peer within seconds, like etcd's peer probing does.
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    // Raft traffic is request/response (append, then its answer): ask the peer to delay ACKs so
    // they ride on the answer. Acknowledging at once sent a packet, and woke the other gateway,
    // before the message even reached consensus.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    ack.max_ack_delay(Some(MAX_ACK_DELAY));
    t.ack_frequency_config(Some(ack));
    // What a peer can make us buffer, whatever it sends (see the module comment).
    t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BI_STREAMS));
    Arc::new(t)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; the clock and pid only add to it.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

impl Shared {
    /// An endpoint that can reach `addr`: same address family, and loopback only for loopback.
    fn endpoint_for(&self, addr: SocketAddr) -> Result<&Endpoint> {
        let usable = |e: &&Endpoint| {
            e.local_addr().is_ok_and(|local| {
                local.is_ipv4() == addr.is_ipv4()
                    && (local.ip().is_unspecified()
                        || local.ip().is_loopback() == addr.ip().is_loopback())
            })
        };
        let same_family = |e: &&Endpoint| {
            e.local_addr()
                .is_ok_and(|local| local.is_ipv4() == addr.is_ipv4())
        };
        self.endpoints
            .iter()
            .find(usable)
            .or_else(|| self.endpoints.iter().find(same_family))
            .ok_or(Error::NoEndpoint(addr))
    }

    /// Logs a failed inbound connection at most every LOG_EVERY per remote address.
    fn log_accept_failure(&self, addr: SocketAddr, line: impl FnOnce() -> String) {
        let mut log = lock(&self.accept_log);
        let now = Instant::now();
        if log.len() > 1024 {
            log.retain(|_, t| now.duration_since(*t) < LOG_EVERY);
        }
        match log.get(&addr) {
            Some(t) if now.duration_since(*t) < LOG_EVERY => debug!("{}", line()),
            _ => {
                log.insert(addr, now);
                warn!("{}", line());
            }
        }
    }
}

/// Rate limit for one peer's repeated log lines.
struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    fn new(period: Duration) -> Self {
        Self { period, last: None }
    }

    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.period)
        {
            self.last = Some(now);
            true
        } else {
            false
        }
    }
}

// ---------------------------------------------------------------- outbound: one task per peer

async fn run_peer(
    shared: Arc<Shared>,
    id: u64,
    target: PeerUrl,
    link: Arc<PeerLink>,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = Every::new(LOG_EVERY);
    loop {
        match dial(&shared, id, &target).await {
            Ok(conn) => {
                backoff = MIN_BACKOFF;
                info!("connected to member {id:x} at {target}");
                // A higher-ID peer sends its messages to us on this connection.
                tokio::spawn({
                    let (shared, conn) = (shared.clone(), conn.clone());
                    async move { read_streams(&shared, conn, id).await }
                });
                // Whatever was queued for an earlier connection is stale by now.
                drain(&shared, id, &link, &mut queue);
                *lock(&link.own_conn) = Some(conn.clone());
                link.connected.store(true, Ordering::Release);
                let why = pump(&shared, id, &conn, &link, &mut queue).await;
                link.connected.store(false, Ordering::Release);
                lock(&link.own_conn).take();
                conn.close(VarInt::from_u32(code::RECONNECT), b"reconnecting");
                drain(&shared, id, &link, &mut queue);
                info!("connection to member {id:x} at {target} ended: {why}");
                failures = Every::new(LOG_EVERY);
            }
            Err(Error::Refused(reason)) => {
                if failures.ready() {
                    warn!("member {id:x} at {target} refused our connection: {reason}");
                } else {
                    debug!("member {id:x} at {target} refused our connection: {reason}");
                }
            }
            Err(e) => {
                if failures.ready() {
                    warn!("cannot connect to member {id:x} at {target}: {e}");
                } else {
                    debug!("cannot connect to member {id:x} at {target}: {e}");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Drops queued messages (counted), telling raft about the peer.
fn drain(shared: &Shared, id: u64, link: &PeerLink, queue: &mut mpsc::Receiver<Outgoing>) {
    let mut dropped = 0;
    while queue.try_recv().is_ok() {
        dropped += 1;
    }
    if dropped > 0 {
        shared
            .counters
            .messages_dropped
            .fetch_add(dropped, Ordering::Relaxed);
        link.report_unreachable(&shared.reports, id);
    }
}

async fn dial(shared: &Shared, id: u64, target: &PeerUrl) -> Result<Connection> {
    let addr = target.resolve().await?;
    let endpoint = shared.endpoint_for(addr)?;
    // The TLS server name is the URL's host: etcd peer certificates carry IP SANs.
    let conn = endpoint
        .connect_with(shared.client_config.clone(), addr, &target.host)
        .map_err(|source| Error::Connect { addr, source })?
        .await?;
    let hello = Hello {
        version: WIRE_VERSION,
        cluster_id: shared.cluster_id,
        from: shared.member_id,
        to: id,
        incarnation: shared.incarnation,
    };
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, greet(&conn, hello)).await {
        Ok(result) => result,
        Err(_) => Err(Error::HandshakeTimeout),
    };
    match result {
        Ok(()) => Ok(conn),
        Err(e) => {
            conn.close(VarInt::from_u32(code::SHUTDOWN), b"handshake failed");
            Err(e)
        }
    }
}

/// The dialer's half of the handshake.
async fn greet(conn: &Connection, hello: Hello) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&hello.encode()).await?;
    send.finish()?;
    let mut verdict = [0u8; 1];
    if let Err(e) = recv.read_exact(&mut verdict).await {
        return Err(refusal_in_close(conn).unwrap_or(e.into()));
    }
    if verdict[0] == ACCEPTED {
        return Ok(());
    }
    let reason = match recv.read_to_end(MAX_REASON).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => match refusal_in_close(conn) {
            Some(refusal) => return Err(refusal),
            None => "no reason given".to_string(),
        },
    };
    Err(Error::Refused(reason))
}

/// The refusal reason the acceptor put in its connection close, if it closed that way.
fn refusal_in_close(conn: &Connection) -> Option<Error> {
    match conn.close_reason()? {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(code::REFUSED) =>
        {
            Some(Error::Refused(
                String::from_utf8_lossy(&close.reason).into_owned(),
            ))
        }
        _ => None,
    }
}

/// Sends queued messages on the connection until it fails; returns why it stopped.
async fn pump(
    shared: &Shared,
    id: u64,
    conn: &Connection,
    link: &PeerLink,
    queue: &mut mpsc::Receiver<Outgoing>,
) -> String {
    let kicked = link.kick.notified();
    tokio::pin!(kicked);
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    if let Err(e) = stream.write_all(&[STREAM_MESSAGES]).await {
        return e.to_string();
    }
    let mut buf = Vec::new();
    let prefer_shared = id < shared.member_id;
    let mut on_shared = None;
    loop {
        let first = tokio::select! {
            m = queue.recv() => match m {
                Some(m) => m,
                None => return "member removed".to_string(),
            },
            e = conn.closed() => return e.to_string(),
            () = &mut kicked => return "the member restarted".to_string(),
        };
        let queued = Instant::now();
        buf.clear();
        // Their budget goes back once the batch is written.
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(m) = next {
            frame::encode(&mut buf, &m.data);
            batch.push(m._budget);
            next = if buf.len() < WRITE_BATCH {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if let Some(delay) = shared.send_delay {
            tokio::time::sleep_until((queued + delay).into()).await;
        }
        if !buf.is_empty()
            && let Err(e) =
                write_batch(link, prefer_shared, &mut on_shared, &mut stream, &buf).await
        {
            return format!("writing messages failed: {e}");
        }
        drop(batch);
    }
}

/// Writes a batch of messages: on the connection the lower-ID peer dialed when we are the higher
/// member and it is up (a stream of ours opened on it once per connection), else on our own.
/// Switching may reorder or drop messages, which raft tolerates.
async fn write_batch(
    link: &PeerLink,
    prefer_shared: bool,
    on_shared: &mut Option<(usize, quinn::SendStream)>,
    own: &mut quinn::SendStream,
    buf: &[u8],
) -> std::result::Result<(), quinn::WriteError> {
    if prefer_shared && let Some(conn) = link.shared_conn() {
        if on_shared
            .as_ref()
            .is_none_or(|(id, _)| *id != conn.stable_id())
        {
            *on_shared = None;
            if let Ok(mut s) = conn.open_uni().await
                && s.write_all(&[STREAM_MESSAGES]).await.is_ok()
            {
                *on_shared = Some((conn.stable_id(), s));
            }
        }
        if let Some((_, s)) = on_shared.as_mut() {
            if s.write_all(buf).await.is_ok() {
                link.shared_batches.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            *on_shared = None;
        }
    }
    own.write_all(buf).await
}

// ---------------------------------------------------------------- inbound: what others dialed

async fn accept_loop(shared: Arc<Shared>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(shared.clone(), incoming));
    }
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let addr = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            shared.log_accept_failure(addr, || format!("connection from peer {addr} failed: {e}"));
            return;
        }
    };
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, answer(&shared, &conn)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(Error::Refused(reason))) => {
            shared.log_accept_failure(addr, || format!("refusing peer {addr}: {reason}"));
            return;
        }
        Ok(Err(e)) => {
            debug!("handshake with peer {addr} failed: {e}");
            conn.close(VarInt::from_u32(code::SHUTDOWN), b"handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake with peer {addr} timed out");
            conn.close(VarInt::from_u32(code::SHUTDOWN), b"handshake timed out");
            return;
        }
    };
    let from = hello.from;
    let previous = lock(&shared.incarnations).insert(from, hello.incarnation);
    if previous.is_some_and(|p| p != hello.incarnation)
        && let Some(peer) = lock(&shared.peers).get(&from)
    {
        // It restarted: our connection to it is dead, though quinn would only notice on timeout.
        peer.link.kick.notify_waiters();
    }
    debug!("accepted connection from member {from:x} at {addr}");
    // The lower-ID member's connection carries our messages to it too.
    let link = (from < shared.member_id)
        .then(|| lock(&shared.peers).get(&from).map(|p| p.link.clone()))
        .flatten();
    if let Some(link) = &link {
        *lock(&link.shared_conn) = Some(conn.clone());
    }
    let id = conn.stable_id();
    read_streams(&shared, conn, from).await;
    if let Some(link) = link {
        let mut current = lock(&link.shared_conn);
        if current.as_ref().is_some_and(|c| c.stable_id() == id) {
            *current = None;
        }
    }
}

/// Reads every stream the peer opens until the connection ends: unidirectional ones carry raft
/// messages, bidirectional ones cluster queries and snapshots.
async fn read_streams(shared: &Shared, conn: Connection, from: u64) {
    loop {
        let ended = tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(stream) => {
                    tokio::spawn(read_stream(StreamReader::of(shared), stream, from));
                    None
                }
                Err(e) => Some(e),
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(serve_bi(BiStreams::of(shared), send, recv, from));
                    None
                }
                Err(e) => Some(e),
            },
        };
        if let Some(e) = ended {
            debug!("connection from member {from:x} ended: {e}");
            return;
        }
    }
}

/// What serving one bidirectional peer stream needs of [`Shared`].
struct BiStreams {
    queries: mpsc::Sender<MembersQuery>,
    snapshots: snapshot::Receiver,
}

impl BiStreams {
    fn of(shared: &Shared) -> BiStreams {
        BiStreams {
            queries: shared.queries.clone(),
            snapshots: snapshot::Receiver {
                snapshots: shared.snapshots.clone(),
                busy: shared.receiving.clone(),
                max_message: shared.max_message,
                counters: shared.counters.clone(),
                stall: shared.snapshot_stall,
            },
        }
    }
}

/// A bidirectional stream member `from` opened: a snapshot, or else a cluster query (which
/// refuses any other kind).
async fn serve_bi(streams: BiStreams, send: quinn::SendStream, mut recv: RecvStream, from: u64) {
    let mut kind = [0u8; 1];
    let kind = match recv.read_exact(&mut kind).await {
        Ok(()) => Some(kind[0]),
        Err(quinn::ReadExactError::FinishedEarly(_)) => None,
        Err(e) => {
            debug!("a stream from member {from:x} ended: {e}");
            return;
        }
    };
    let counters = streams.snapshots.counters.clone();
    match kind {
        Some(STREAM_SNAPSHOT) => snapshot::receive(streams.snapshots, send, recv, from).await,
        _ => members::answer(send, recv, kind, from, streams.queries, counters).await,
    }
}

/// The acceptor's half of the handshake.
async fn answer(shared: &Shared, conn: &Connection) -> Result<Hello> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut bytes = [0u8; HELLO_LEN];
    recv.read_exact(&mut bytes).await?;
    let verdict = {
        let members = lock(&shared.members);
        handshake::check(&bytes, shared.cluster_id, shared.member_id, |id| {
            members.contains_key(&id)
        })
        .and_then(|hello| {
            let urls = members.get(&hello.from).map_or(&[][..], Vec::as_slice);
            match certificate_names_member(conn, urls) {
                Ok(()) => Ok(hello),
                Err(hosts) => Err(Refusal::Certificate {
                    member: hello.from,
                    hosts,
                }),
            }
        })
    };
    match verdict {
        Ok(hello) => {
            send.write_all(&[ACCEPTED]).await?;
            send.finish()?;
            Ok(hello)
        }
        Err(refusal) => {
            let wire = refusal.wire();
            let mut answer = vec![REFUSED];
            answer.extend_from_slice(wire.as_bytes());
            // Let the reason reach the dialer before the close discards unsent stream data; the
            // close carries it too.
            if send.write_all(&answer).await.is_ok() && send.finish().is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            }
            conn.close(VarInt::from_u32(code::REFUSED), wire.as_bytes());
            Err(Error::Refused(refusal.local()))
        }
    }
}

/// With mutual TLS, whether the dialer's certificate names a host of one of `urls`, the peer
/// URLs of the member it claims to be (etcd checks a peer certificate's SANs against the peer's
/// URLs the same way): a certificate of the cluster's CA for another host is not that member.
/// `Err` lists the hosts it had to name. Without a client certificate (no client-cert auth, or
/// `http://` peers) there is nothing to check.
fn certificate_names_member(conn: &Connection, urls: &[String]) -> std::result::Result<(), String> {
    let Some(chain) = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
    else {
        return Ok(());
    };
    let hosts: Vec<String> = urls
        .iter()
        .filter_map(|u| PeerUrl::parse(u).ok())
        .map(|u| u.host)
        .collect();
    let named = chain.first().is_some_and(|leaf| {
        webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| {
            hosts.iter().any(|host| {
                ServerName::try_from(host.as_str())
                    .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
        })
    });
    if named { Ok(()) } else { Err(hosts.join(", ")) }
}

/// What reading one peer stream needs of [`Shared`].
struct StreamReader {
    inbound: mpsc::Sender<Inbound>,
    budget: Arc<Semaphore>,
    max_message: usize,
    counters: Arc<Counters>,
}

impl StreamReader {
    fn of(shared: &Shared) -> StreamReader {
        StreamReader {
            inbound: shared.inbound.clone(),
            budget: shared.inbound_budget.clone(),
            max_message: shared.max_message,
            counters: shared.counters.clone(),
        }
    }
}

async fn read_stream(reader: StreamReader, mut stream: RecvStream, from: u64) {
    let mut kind = [0u8; 1];
    if stream.read_exact(&mut kind).await.is_err() {
        return;
    }
    match kind[0] {
        STREAM_MESSAGES => {}
        // Snapshots travel on bidirectional streams, to be answered.
        other => {
            warn!("member {from:x} opened a unidirectional stream of unknown kind {other}");
            Counters::bump(&reader.counters.frames_refused);
            let _ = stream.stop(VarInt::from_u32(code::BAD_STREAM));
            return;
        }
    }
    loop {
        let len = match frame::read_len(&mut stream, reader.max_message).await {
            Ok(Some(len)) => len,
            Ok(None) => return,
            Err(e @ Error::FrameTooLarge { .. }) => {
                warn!("closing a stream from member {from:x}: {e}");
                Counters::bump(&reader.counters.frames_refused);
                let _ = stream.stop(VarInt::from_u32(code::FRAME_TOO_LARGE));
                return;
            }
            Err(e) => {
                debug!("stream from member {from:x} ended: {e}");
                return;
            }
        };
        // Wait for room before reading the body: while the budget is full this stream is not
        // read, and QUIC flow control stops the sender. A message larger than the whole budget
        // waits for all of it.
        let charge = len.clamp(1, INBOUND_BYTES) as u32;
        let Ok(budget) = reader.budget.clone().acquire_many_owned(charge).await else {
            return;
        };
        let data = match frame::read_body(&mut stream, len).await {
            Ok(data) => data,
            Err(e) => {
                debug!("stream from member {from:x} ended: {e}");
                return;
            }
        };
        let message = Inbound {
            from,
            is_snapshot: false,
            data,
            budget: Some(budget),
        };
        if reader.inbound.send(message).await.is_err() {
            return;
        }
    }
}
