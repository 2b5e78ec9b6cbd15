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
                Seen::Delivered(_) | Seen::Unreachable(_) | Seen::Snapshot(..) | Seen::Counters(..),
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
            let registrar = fake_registrar(true, vec![], String::new(), None, seen_tx, gateways_tx);
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
