//! Transports talking over real UDP sockets on 127.0.0.1 (port 0, so parallel tests never
//! collide).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{sleep, timeout};

use super::*;
use crate::tls::{self, PeerTls, Restriction, test_certs::TestCa};
use crate::transport::snapshot::stand_in::{self, Ending, Sink, SinkEvent, Taken};

const CLUSTER: u64 = 0x1a2b_3c4d;
const OTHER_CLUSTER: u64 = 0x9e8f_7a6b;
const A: u64 = 0xa1;
const B: u64 = 0xb2;
const C: u64 = 0xc3;
/// Generous: the machine is shared, and debug builds are slow.
const WAIT: Duration = Duration::from_secs(20);
/// The message limit with etcd's default `--max-request-bytes`.
fn max_message() -> usize {
    schema::limits::raft_message_limit(schema::limits::DEFAULT_MAX_REQUEST_BYTES)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start(cluster_id: u64, member_id: u64, addr: SocketAddr, tls: PeerTls) -> (Transport, Events) {
    Transport::start(TransportConfig {
        cluster_id,
        member_id,
        listen: vec![addr],
        members: vec![],
        tls,
        max_message: max_message(),
    })
    .unwrap()
}

/// Starts on `addr`, waiting for a previous user of the port to let go of it.
async fn start_on(
    cluster_id: u64,
    member_id: u64,
    addr: SocketAddr,
    tls: PeerTls,
) -> (Transport, Events) {
    let deadline = Instant::now() + WAIT;
    loop {
        match Transport::start(TransportConfig {
            cluster_id,
            member_id,
            listen: vec![addr],
            members: vec![],
            tls: tls.clone(),
            max_message: max_message(),
        }) {
            Ok(started) => return started,
            Err(Error::Bind { .. }) if Instant::now() < deadline => {
                sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("cannot start on {addr}: {e}"),
        }
    }
}

fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn table(entries: &[(u64, SocketAddr)]) -> Vec<Peer> {
    entries
        .iter()
        .map(|&(id, addr)| Peer {
            id,
            urls: vec![url_of(addr)],
        })
        .collect()
}

fn addr(t: &Transport) -> SocketAddr {
    t.local_addrs()[0]
}

/// Members A and B of one cluster, knowing each other.
fn pair(tls_a: PeerTls, tls_b: PeerTls) -> ((Transport, Events), (Transport, Events)) {
    let (a, ea) = start(CLUSTER, A, any_port(), tls_a);
    let (b, eb) = start(CLUSTER, B, any_port(), tls_b);
    let members = table(&[(A, addr(&a)), (B, addr(&b))]);
    a.set_members(members.clone());
    b.set_members(members);
    ((a, ea), (b, eb))
}

async fn wait_connected(t: &Transport, to: u64) {
    timeout(WAIT, async {
        while !t.is_connected(to) {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never connected to {to:x}"));
}

async fn recv(events: &mut Events) -> Inbound {
    timeout(WAIT, events.inbound.recv())
        .await
        .expect("nothing arrived in time")
        .expect("inbound channel closed")
}

/// Sends until the message arrives: the sender may still be (re)connecting.
async fn deliver_eventually(from: &Transport, to: u64, rx: &mut Events, data: &[u8]) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let _ = from.send(to, data.to_vec(), false);
        if let Ok(Some(m)) = timeout(Duration::from_millis(200), rx.inbound.recv()).await {
            assert_eq!(m.data, data);
            return;
        }
    }
    panic!("{data:?} never arrived at {to:x}");
}

fn self_signed() -> PeerTls {
    tls::self_signed().unwrap()
}

#[tokio::test]
async fn messages_flow_both_ways_in_order() {
    let ((a, mut ea), (b, mut eb)) = pair(self_signed(), self_signed());
    wait_connected(&a, B).await;
    wait_connected(&b, A).await;

    for i in 0..200u32 {
        a.send(B, i.to_be_bytes().to_vec(), false).unwrap();
    }
    for i in 0..200u32 {
        let m = recv(&mut eb).await;
        assert_eq!(
            m,
            Inbound {
                from: A,
                is_snapshot: false,
                data: i.to_be_bytes().to_vec(),
                budget: None,
            }
        );
    }

    b.send(A, b"pong".to_vec(), false).unwrap();
    let m = recv(&mut ea).await;
    assert_eq!((m.from, m.data.as_slice()), (B, &b"pong"[..]));
    // An empty message is still a message.
    b.send(A, Vec::new(), false).unwrap();
    assert!(recv(&mut ea).await.data.is_empty());
}

// ---------------------------------------------------------------- snapshots

/// Takes one of `events`' receivers, to hand it to a stand-in (a closed one is left behind).
fn take<T>(rx: &mut mpsc::Receiver<T>) -> mpsc::Receiver<T> {
    std::mem::replace(rx, mpsc::channel(1).1)
}

/// `len` bytes in a pattern that shows a chunk out of place or lost.
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The next snapshot report, past those of unreachable members.
async fn snapshot_report(events: &mut Events) -> Report {
    loop {
        match timeout(WAIT, events.reports.recv())
            .await
            .expect("no report in time")
            .expect("reports closed")
        {
            report @ Report::Snapshot { .. } => return report,
            Report::Unreachable(_) => {}
        }
    }
}

/// The image a sink ended with, and how many chunks it took.
async fn sink_done(sink: &mut mpsc::UnboundedReceiver<SinkEvent>) -> (Taken, usize) {
    let mut chunks = 0;
    loop {
        match timeout(WAIT, sink.recv())
            .await
            .expect("the sink did not end in time")
            .expect("the sink's channel closed")
        {
            SinkEvent::Chunk(len) => {
                assert!(len > 0, "an empty chunk");
                chunks += 1;
            }
            SinkEvent::Done(taken) => return (taken, chunks),
        }
    }
}

/// Waits until a sink took its first chunk.
async fn first_chunk(sink: &mut mpsc::UnboundedReceiver<SinkEvent>) {
    match timeout(WAIT, sink.recv()).await.expect("no chunk in time") {
        Some(SinkEvent::Chunk(_)) => {}
        other => panic!("expected a chunk, got {other:?}"),
    }
}

/// A member with a stand-in consensus for snapshots: `image` is what it sends, `sink` how it
/// takes what it receives.
struct SnapshotMember {
    transport: Transport,
    events: Events,
    opened: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    sink: mpsc::UnboundedReceiver<SinkEvent>,
}

fn snapshot_member(
    (transport, mut events): (Transport, Events),
    image: Vec<u8>,
    ending: Ending,
    sink: Sink,
) -> SnapshotMember {
    let opened = stand_in::serve_images(take(&mut events.images), image, ending);
    let sink = stand_in::take_images(take(&mut events.snapshots), sink);
    SnapshotMember {
        transport,
        events,
        opened,
        sink,
    }
}

/// A, sending `image` as `ending` says, and B, taking snapshots into `sink`; connected.
async fn snapshot_pair(
    image: Vec<u8>,
    ending: Ending,
    sink: Sink,
) -> (SnapshotMember, SnapshotMember) {
    let (a, b) = pair(self_signed(), self_signed());
    let a = snapshot_member(a, image, ending, Sink::installing());
    let b = snapshot_member(b, Vec::new(), Ending::Whole, sink);
    wait_connected(&a.transport, B).await;
    (a, b)
}

/// A snapshot of a few MiB (several chunks) arrives byte for byte, is finished once, and the
/// sender hears it was installed; the next one to the same peer goes too.
#[tokio::test]
async fn a_snapshot_arrives_whole_and_is_reported() {
    let image = patterned((5 << 20) + 12_345);
    let (mut a, mut b) = snapshot_pair(image.clone(), Ending::Whole, Sink::installing()).await;
    a.transport.send(B, b"MsgSnapshot".to_vec(), true).unwrap();
    assert_eq!(
        snapshot_report(&mut a.events).await,
        Report::Snapshot { to: B, ok: true }
    );
    assert_eq!(a.opened.try_recv(), Ok((B, b"MsgSnapshot".to_vec())));
    let (taken, chunks) = sink_done(&mut b.sink).await;
    assert_eq!(
        (taken.from, taken.message.as_slice(), taken.total_bytes),
        (A, &b"MsgSnapshot"[..], image.len() as u64)
    );
    assert!(taken.finished);
    assert!(taken.image == image, "the image arrived changed");
    assert_eq!(
        chunks,
        image.len().div_ceil(schema::limits::SNAPSHOT_CHUNK_BYTES)
    );
    sleep(Duration::from_millis(200)).await;
    assert!(b.sink.try_recv().is_err(), "finished twice");

    a.transport.send(B, b"the next".to_vec(), true).unwrap();
    assert_eq!(
        snapshot_report(&mut a.events).await,
        Report::Snapshot { to: B, ok: true }
    );
    let (taken, _) = sink_done(&mut b.sink).await;
    assert!(taken.finished && taken.image == image);
    // An empty image is an image too.
    let (mut c, mut d) = snapshot_pair(Vec::new(), Ending::Whole, Sink::installing()).await;
    c.transport.send(B, b"empty".to_vec(), true).unwrap();
    assert_eq!(
        snapshot_report(&mut c.events).await,
        Report::Snapshot { to: B, ok: true }
    );
    let (taken, chunks) = sink_done(&mut d.sink).await;
    assert!(taken.finished && taken.image.is_empty() && chunks == 0);
    assert_eq!(b.transport.counters().frames_refused, 0);
    assert_eq!(a.transport.counters().messages_dropped, 0);
}

/// The receiver's consensus refuses the image at `finish`: the sender hears it failed.
#[tokio::test]
async fn a_refused_install_fails_the_send() {
    let sink = Sink {
        finish: Err("the image's checksum does not match".into()),
        gate: None,
    };
    let image = patterned(3 << 20);
    let (mut a, mut b) = snapshot_pair(image.clone(), Ending::Whole, sink).await;
    a.transport.send(B, b"MsgSnapshot".to_vec(), true).unwrap();
    assert_eq!(
        snapshot_report(&mut a.events).await,
        Report::Snapshot { to: B, ok: false }
    );
    let (taken, _) = sink_done(&mut b.sink).await;
    assert!(taken.finished && taken.image == image);
}

/// The sender's image fails part-way: the sender hears it failed, and the receiver drops what it
/// got without finishing it.
#[tokio::test]
async fn a_failing_image_fails_the_send_and_is_dropped_by_the_receiver() {
    let image = patterned(5 << 20);
    let (mut a, mut b) = snapshot_pair(image, Ending::FailAfter(2), Sink::installing()).await;
    a.transport.send(B, b"MsgSnapshot".to_vec(), true).unwrap();
    assert_eq!(
        snapshot_report(&mut a.events).await,
        Report::Snapshot { to: B, ok: false }
    );
    let (taken, chunks) = sink_done(&mut b.sink).await;
    assert!(!taken.finished, "an incomplete image was finished");
    assert!(chunks <= 2, "{chunks} chunks");
    // The failure is the sender's, not a malformed stream.
    assert_eq!(b.transport.counters().frames_refused, 0);
}

/// An image that stops coming fails the send after the stall period, and the receiver drops it.
#[tokio::test]
async fn a_stalled_snapshot_times_out() {
    let stall = Duration::from_millis(500);
    let config = |member_id| TransportConfig {
        cluster_id: CLUSTER,
        member_id,
        listen: vec![any_port()],
        members: vec![],
        tls: self_signed(),
        max_message: max_message(),
    };
    let a = Transport::start_with_stall(config(A), stall).unwrap();
    let b = Transport::start_with_stall(config(B), stall).unwrap();
    let members = table(&[(A, addr(&a.0)), (B, addr(&b.0))]);
    a.0.set_members(members.clone());
    b.0.set_members(members);
    let mut a = snapshot_member(
        a,
        patterned(3 << 20),
        Ending::StallAfter(1),
        Sink::installing(),
    );
    let mut b = snapshot_member(b, Vec::new(), Ending::Whole, Sink::installing());
    wait_connected(&a.transport, B).await;
    let started = Instant::now();
    a.transport.send(B, b"MsgSnapshot".to_vec(), true).unwrap();
    assert_eq!(
        snapshot_report(&mut a.events).await,
        Report::Snapshot { to: B, ok: false }
    );
    assert!(started.elapsed() >= stall, "{:?}", started.elapsed());
    let (taken, _) = sink_done(&mut b.sink).await;
    assert!(!taken.finished);
}

/// While a large snapshot waits on a slow receiving consensus, ordinary messages keep flowing
/// both ways on the same connections, and arrive before it is finished.
#[tokio::test]
async fn messages_flow_while_a_snapshot_is_in_flight() {
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    let sink = Sink {
        finish: Ok(()),
        gate: Some(gate.clone()),
    };
    let image = patterned(8 << 20);
    let (mut a, mut b) = snapshot_pair(image.clone(), Ending::Whole, sink).await;
    wait_connected(&b.transport, A).await;
    a.transport.send(B, b"MsgSnapshot".to_vec(), true).unwrap();
    // The first chunk is taken; the rest waits behind the gate (and QUIC flow control).
    first_chunk(&mut b.sink).await;
    for i in 0..100u32 {
        deliver_eventually(&a.transport, B, &mut b.events, &i.to_be_bytes()).await;
        deliver_eventually(&b.transport, A, &mut a.events, &i.to_be_bytes()).await;
    }
    assert!(b.sink.try_recv().is_err(), "the snapshot went on meanwhile");
    assert!(
        !matches!(a.events.reports.try_recv(), Ok(Report::Snapshot { .. })),
        "the snapshot ended meanwhile"
    );
    gate.add_permits(1 << 10);
    assert_eq!(
        snapshot_report(&mut a.events).await,
        Report::Snapshot { to: B, ok: true }
    );
    let (taken, _) = sink_done(&mut b.sink).await;
    assert!(taken.finished && taken.image == image);
}

/// One snapshot at a time to each peer, and one at a time into each member: a second one is
/// refused at once (raft sends it again), and the first still goes through.
#[tokio::test]
async fn a_second_snapshot_is_refused_while_one_is_in_flight() {
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    let sink = Sink {
        finish: Ok(()),
        gate: Some(gate.clone()),
    };
    let image = patterned(3 << 20);
    let (a, b) = pair(self_signed(), self_signed());
    let mut a = snapshot_member(a, image.clone(), Ending::Whole, Sink::installing());
    let mut b = snapshot_member(b, Vec::new(), Ending::Whole, sink);
    let c = start(CLUSTER, C, any_port(), self_signed());
    let members = table(&[
        (A, addr(&a.transport)),
        (B, addr(&b.transport)),
        (C, addr(&c.0)),
    ]);
    for t in [&a.transport, &b.transport, &c.0] {
        t.set_members(members.clone());
    }
    let mut c = snapshot_member(c, image.clone(), Ending::Whole, Sink::installing());
    wait_connected(&a.transport, B).await;
    wait_connected(&c.transport, B).await;

    a.transport.send(B, b"first".to_vec(), true).unwrap();
    // B's consensus has the snapshot (its sink waits at the gate).
    first_chunk(&mut b.sink).await;
    assert_eq!(
        a.transport.send(B, b"second".to_vec(), true),
        Err(Dropped::Busy)
    );
    assert_eq!(
        a.events.reports.try_recv(),
        Ok(Report::Snapshot { to: B, ok: false })
    );
    // A message too large for the limit is refused at once as well.
    assert_eq!(
        a.transport.send(B, vec![0; max_message() + 1], true),
        Err(Dropped::TooLarge)
    );
    assert_eq!(
        a.events.reports.try_recv(),
        Ok(Report::Snapshot { to: B, ok: false })
    );
    assert_eq!(a.transport.counters().messages_dropped, 2);

    // Another member's snapshot to B, while A's comes in: refused by B.
    c.transport.send(B, b"from C".to_vec(), true).unwrap();
    assert_eq!(
        snapshot_report(&mut c.events).await,
        Report::Snapshot { to: B, ok: false }
    );

    gate.add_permits(1 << 10);
    assert_eq!(
        snapshot_report(&mut a.events).await,
        Report::Snapshot { to: B, ok: true }
    );
    let (taken, _) = sink_done(&mut b.sink).await;
    assert_eq!((taken.from, taken.message.as_slice()), (A, &b"first"[..]));
    assert!(taken.finished && taken.image == image);
    sleep(Duration::from_millis(200)).await;
    assert!(
        b.sink.try_recv().is_err(),
        "C's snapshot reached B's consensus"
    );
    // With B free again, C's next one goes in.
    c.transport.send(B, b"from C again".to_vec(), true).unwrap();
    assert_eq!(
        snapshot_report(&mut c.events).await,
        Report::Snapshot { to: B, ok: true }
    );
}

/// Malformed snapshot streams are refused without reaching consensus, and counted: a message
/// over the limit, an image over [`snapshot::MAX_IMAGE_BYTES`], a header cut short, and a
/// snapshot on a unidirectional stream. The connection goes on carrying messages.
#[tokio::test]
async fn a_malformed_snapshot_stream_is_refused() {
    let ((a, _ea), (b, mut eb)) = pair(self_signed(), self_signed());
    let conn = dial(&a.shared, B, &PeerUrl::parse(&url_of(addr(&b))).unwrap())
        .await
        .unwrap();
    let verdict = |mut recv: quinn::RecvStream| async move {
        timeout(WAIT, recv.read_to_end(16)).await.unwrap().unwrap()
    };

    // A 1 GiB message: refused from its length prefix.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&[STREAM_SNAPSHOT]).await.unwrap();
    send.write_all(&frame::header(1 << 30)).await.unwrap();
    let stopped = timeout(WAIT, send.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(VarInt::from_u32(code::FRAME_TOO_LARGE)));
    assert_eq!(verdict(recv).await, [snapshot::NOT_INSTALLED]);
    eventually_counted(&b, 1).await;

    // An image over the limit.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let header = snapshot::header(b"MsgSnapshot", snapshot::MAX_IMAGE_BYTES + 1);
    send.write_all(&header).await.unwrap();
    let stopped = timeout(WAIT, send.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(VarInt::from_u32(code::FRAME_TOO_LARGE)));
    assert_eq!(verdict(recv).await, [snapshot::NOT_INSTALLED]);
    eventually_counted(&b, 2).await;

    // A header cut short: the stream ends inside the image's length.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let header = snapshot::header(b"MsgSnapshot", 10);
    send.write_all(&header[..header.len() - 3]).await.unwrap();
    send.finish().unwrap();
    assert_eq!(verdict(recv).await, [snapshot::NOT_INSTALLED]);
    eventually_counted(&b, 3).await;

    // A snapshot on a unidirectional stream, which no gateway sends.
    let mut uni = conn.open_uni().await.unwrap();
    uni.write_all(&header).await.unwrap();
    let stopped = timeout(WAIT, uni.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(VarInt::from_u32(code::BAD_STREAM)));
    eventually_counted(&b, 4).await;

    assert!(
        eb.snapshots.try_recv().is_err(),
        "a malformed snapshot reached consensus"
    );
    deliver_eventually(&a, B, &mut eb, b"still a raft link").await;
}

/// A length prefix over the message limit (1 GiB here) closes that stream at once: nothing is
/// read or allocated for the frame, and the refusal is counted.
#[tokio::test]
async fn an_oversized_frame_closes_its_stream() {
    let ((a, _ea), (b, mut eb)) = pair(self_signed(), self_signed());
    let conn = dial(&a.shared, B, &PeerUrl::parse(&url_of(addr(&b))).unwrap())
        .await
        .unwrap();
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&[STREAM_MESSAGES]).await.unwrap();
    let mut ok = Vec::new();
    frame::encode(&mut ok, b"fits");
    stream.write_all(&ok).await.unwrap();
    stream.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    let stopped = timeout(WAIT, stream.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(VarInt::from_u32(code::FRAME_TOO_LARGE)));
    assert_eq!(recv(&mut eb).await.data, b"fits");
    assert!(eb.inbound.try_recv().is_err());
    assert_eq!(b.counters().frames_refused, 1);
    // One byte over the limit is refused as well; at the limit a message is sent.
    assert_eq!(
        a.send(B, vec![0; max_message() + 1], false),
        Err(Dropped::TooLarge)
    );
}

/// While consensus does not take inbound messages, at most INBOUND_BYTES of them wait in
/// memory: the rest stay with the sender (QUIC flow control), and arrive, in order and none
/// dropped, once the receiver reads again.
#[tokio::test]
async fn inbound_messages_wait_within_a_byte_budget() {
    let ((a, _ea), (b, mut eb)) = pair(self_signed(), self_signed());
    wait_connected(&a, B).await;
    let _b = b;
    const MIB: usize = 1 << 20;
    let count = INBOUND_BYTES / MIB + 32;
    let sender = tokio::spawn(async move {
        for i in 0..count {
            let mut m = vec![0u8; MIB];
            m[..4].copy_from_slice(&(i as u32).to_be_bytes());
            // Our own queue holds OUTBOUND_BYTES: wait for room rather than drop.
            while let Err(e) = a.send(B, m.clone(), false) {
                assert_eq!(e, Dropped::QueueFull);
                sleep(Duration::from_millis(5)).await;
            }
        }
        a
    });
    // Let the transport read all it will.
    let mut waiting = 0;
    for _ in 0..20 {
        sleep(Duration::from_millis(100)).await;
        waiting = eb.inbound.len();
    }
    assert!(waiting > 0, "nothing arrived");
    assert!(
        waiting <= INBOUND_BYTES / MIB,
        "{waiting} messages of 1 MiB waiting, over the budget"
    );
    for i in 0..count {
        let m = recv(&mut eb).await;
        assert_eq!(m.data[..4], (i as u32).to_be_bytes());
    }
    // Every refusal of our own full queue, which the sender retried, was counted as a drop.
    let a = timeout(WAIT, sender).await.unwrap().unwrap();
    assert!(a.counters().messages_dropped > 0);
}

#[tokio::test]
async fn another_cluster_is_refused() {
    let (a, mut ea) = start(CLUSTER, A, any_port(), self_signed());
    let (c, mut ec) = start(OTHER_CLUSTER, B, any_port(), self_signed());
    let members = table(&[(A, addr(&a)), (B, addr(&c))]);
    a.set_members(members.clone());
    c.set_members(members);

    // The dialer hears why, with both cluster IDs.
    let target = PeerUrl::parse(&url_of(addr(&c))).unwrap();
    match dial(&a.shared, B, &target).await {
        Err(Error::Refused(reason)) => {
            assert!(reason.contains(&format!("{CLUSTER:x}")), "{reason}");
            assert!(reason.contains(&format!("{OTHER_CLUSTER:x}")), "{reason}");
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("a member of another cluster was accepted"),
    }

    sleep(Duration::from_millis(1500)).await;
    assert!(!a.is_connected(B));
    assert!(!c.is_connected(A));
    assert_eq!(a.send(B, b"x".to_vec(), false), Err(Dropped::NotConnected));
    assert_eq!(c.send(A, b"x".to_vec(), false), Err(Dropped::NotConnected));
    assert_eq!(ea.reports.recv().await, Some(Report::Unreachable(B)));
    sleep(Duration::from_millis(300)).await;
    assert!(ea.inbound.try_recv().is_err());
    assert!(ec.inbound.try_recv().is_err());
}

/// Both directions use the connection the lower member ID dialed, so answers carry the QUIC ACKs:
/// the higher member sends on it, the lower one on its own. After the lower member restarts,
/// messages flow both ways again and the higher one moves to the new connection.
#[tokio::test]
async fn both_directions_share_the_lower_members_connection() {
    const { assert!(A < B) };
    let ((a, mut ea), (b, mut eb)) = pair(self_signed(), self_signed());
    wait_connected(&a, B).await;
    wait_connected(&b, A).await;
    let on_shared = |b: &Transport| b.batches_on_shared(A);
    // B learns of A's connection once A's handshake is through; until then B uses its own.
    timeout(WAIT, async {
        while on_shared(&b) == 0 {
            a.send(B, b"ping".to_vec(), false).unwrap();
            assert_eq!(recv(&mut eb).await.data, b"ping");
            b.send(A, b"pong".to_vec(), false).unwrap();
            assert_eq!(recv(&mut ea).await.data, b"pong");
        }
    })
    .await
    .expect("B never sent on the connection A dialed");
    assert_eq!(
        a.batches_on_shared(B),
        0,
        "A, the lower ID, sends on its own"
    );

    let a_addr = addr(&a);
    drop(a);
    drop(ea);
    let (a2, mut ea2) = start_on(CLUSTER, A, a_addr, self_signed()).await;
    a2.set_members(table(&[(A, a_addr), (B, addr(&b))]));
    let before = on_shared(&b);
    deliver_eventually(&a2, B, &mut eb, b"after restart").await;
    deliver_eventually(&b, A, &mut ea2, b"answer").await;
    timeout(WAIT, async {
        while on_shared(&b) == before {
            b.send(A, b"again".to_vec(), false).unwrap();
            assert_eq!(recv(&mut ea2).await.data, b"again");
        }
    })
    .await
    .expect("B never moved to the connection the restarted A dialed");
}

#[tokio::test]
async fn a_restarted_peer_is_reached_again() {
    let ((a, mut ea), (b, eb)) = pair(self_signed(), self_signed());
    wait_connected(&a, B).await;
    a.send(B, b"one".to_vec(), false).unwrap();
    let mut eb = eb;
    assert_eq!(recv(&mut eb).await.data, b"one");

    let b_addr = addr(&b);
    drop(b);
    drop(eb);
    let (b2, mut eb2) = start_on(CLUSTER, B, b_addr, self_signed()).await;
    b2.set_members(table(&[(A, addr(&a)), (B, b_addr)]));

    deliver_eventually(&a, B, &mut eb2, b"two").await;
    deliver_eventually(&b2, A, &mut ea, b"three").await;
}

/// Forwards UDP between one client and `target`, like a network path that can be cut.
async fn relay(front: UdpSocket, target: SocketAddr) {
    let Ok(back) = UdpSocket::bind(any_port()).await else {
        return;
    };
    let mut client = None;
    let mut buf = vec![0u8; 65536];
    let mut buf2 = vec![0u8; 65536];
    loop {
        tokio::select! {
            Ok((n, from)) = front.recv_from(&mut buf) => {
                client = Some(from);
                let _ = back.send_to(&buf[..n], target).await;
            }
            Ok((n, _)) = back.recv_from(&mut buf2) => {
                if let Some(c) = client {
                    let _ = front.send_to(&buf2[..n], c).await;
                }
            }
        }
    }
}

/// A peer killed without closing its connections (kill -9) is noticed as soon as it comes back
/// and greets us, not only after the idle timeout.
#[tokio::test]
async fn a_killed_peer_is_redialed_when_it_comes_back() {
    let (a, _ea) = start(CLUSTER, A, any_port(), self_signed());
    let (b, mut eb) = start(CLUSTER, B, any_port(), self_signed());
    // A reaches B through a relay; B reaches A directly.
    let front = UdpSocket::bind(any_port()).await.unwrap();
    let relay_addr = front.local_addr().unwrap();
    let path = tokio::spawn(relay(front, addr(&b)));
    a.set_members(table(&[(A, addr(&a)), (B, relay_addr)]));
    b.set_members(table(&[(A, addr(&a)), (B, relay_addr)]));
    wait_connected(&a, B).await;
    wait_connected(&b, A).await;
    a.send(B, b"before".to_vec(), false).unwrap();
    assert_eq!(recv(&mut eb).await.data, b"before");

    // Cut the path first, so B's goodbye never reaches A: A still thinks its connection is fine.
    path.abort();
    let _ = path.await;
    drop(b);
    drop(eb);
    let (b2, mut eb2) = start(CLUSTER, B, any_port(), self_signed());
    let front = UdpSocket::bind(relay_addr).await.unwrap();
    let _path = tokio::spawn(relay(front, addr(&b2)));
    assert!(
        a.is_connected(B),
        "A noticed the kill too early for this test"
    );

    let started = Instant::now();
    b2.set_members(table(&[(A, addr(&a)), (B, relay_addr)]));
    deliver_eventually(&a, B, &mut eb2, b"after").await;
    assert!(
        started.elapsed() < Duration::from_millis(IDLE_TIMEOUT_MS as u64 - 1000),
        "A only noticed the restart through the idle timeout ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn mutual_tls_accepts_the_same_ca_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let files = |name: &str, ca: &TestCa| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        tls::configure(&ca.write_files(&sub, "127.0.0.1", true)).unwrap()
    };
    let ca = TestCa::new("cluster CA");
    let stranger_ca = TestCa::new("another CA");

    let ((a, mut ea), (b, mut eb)) = pair(files("a", &ca), files("b", &ca));
    wait_connected(&a, B).await;
    wait_connected(&b, A).await;
    a.send(B, b"ping".to_vec(), false).unwrap();
    assert_eq!(recv(&mut eb).await.data, b"ping");
    b.send(A, b"pong".to_vec(), false).unwrap();
    assert_eq!(recv(&mut ea).await.data, b"pong");

    let (c, mut ec) = start(CLUSTER, C, any_port(), files("c", &stranger_ca));
    let members = table(&[(A, addr(&a)), (B, addr(&b)), (C, addr(&c))]);
    a.set_members(members.clone());
    c.set_members(members);
    sleep(Duration::from_millis(1500)).await;
    assert!(!a.is_connected(C));
    assert!(!c.is_connected(A));
    assert!(ec.inbound.try_recv().is_err());
    assert!(ea.inbound.try_recv().is_err());

    // A peer without any client certificate is refused as well.
    let (d, _ed) = start(CLUSTER, C, any_port(), self_signed());
    d.set_members(table(&[(A, addr(&a)), (C, addr(&d))]));
    sleep(Duration::from_millis(1500)).await;
    assert!(!d.is_connected(A));
    assert!(ea.inbound.try_recv().is_err());
}

#[tokio::test]
async fn drops_are_reported_at_most_every_100ms() {
    let (a, mut ea) = start(CLUSTER, A, any_port(), self_signed());
    // Nobody listens there.
    let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
    a.set_members(table(&[(A, addr(&a)), (B, dead)]));

    assert_eq!(a.send(C, b"x".to_vec(), false), Err(Dropped::UnknownPeer));
    assert_eq!(a.send(B, b"x".to_vec(), false), Err(Dropped::NotConnected));
    assert_eq!(a.send(B, b"x".to_vec(), false), Err(Dropped::NotConnected));
    assert_eq!(ea.reports.try_recv(), Ok(Report::Unreachable(B)));
    assert!(
        ea.reports.try_recv().is_err(),
        "reported twice within 100ms"
    );

    sleep(UNREACHABLE_EVERY).await;
    assert_eq!(a.send(B, b"x".to_vec(), false), Err(Dropped::NotConnected));
    assert_eq!(ea.reports.try_recv(), Ok(Report::Unreachable(B)));

    let too_big = vec![0u8; max_message() + 1];
    assert_eq!(a.send(B, too_big, false), Err(Dropped::TooLarge));

    // A removed member is no longer dialed or routed to.
    a.set_members(table(&[(A, addr(&a))]));
    assert_eq!(a.send(B, b"x".to_vec(), false), Err(Dropped::UnknownPeer));
}

/// A certificate of the cluster's own CA, but for another host than the peer URL of the member
/// its holder claims to be, is refused: the CA vouches for hosts, and the hello for the member.
#[tokio::test]
async fn a_certificate_for_another_host_cannot_claim_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster CA");
    let files = |name: &str, ip: &str| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        tls::configure(&ca.write_files(&sub, ip, true)).unwrap()
    };
    let ((a, mut ea), (b, _eb)) = pair(files("a", "127.0.0.1"), files("b", "127.0.0.1"));
    wait_connected(&a, B).await;
    // C listens on 127.0.0.1, as the member table says, with a certificate for 127.0.0.9.
    let (c, _ec) = start(CLUSTER, C, any_port(), files("c", "127.0.0.9"));
    let members = table(&[(A, addr(&a)), (B, addr(&b)), (C, addr(&c))]);
    a.set_members(members.clone());
    c.set_members(members);
    sleep(Duration::from_millis(1500)).await;
    // C's own dial to A (whose certificate checks out for C) is refused by A.
    assert!(!c.is_connected(A));
    let _ = c.send(A, b"from a stranger".to_vec(), false);
    sleep(Duration::from_millis(300)).await;
    assert!(ea.inbound.try_recv().is_err());
    // A and B, whose certificates name their hosts, still talk.
    assert!(a.is_connected(B));
}

/// Members A and B, with certificates of one CA named by `leaf` (CN, SANs) and `allowed`, and a
/// third endpoint C with a certificate of the same CA named by `stranger` (and no restriction of
/// its own): A and B talk, while C can neither dial A (A refuses C's client certificate) nor be
/// dialed by A (A refuses C's server certificate). Both refusals are counted at A.
async fn only_allowed_certificates_connect(
    allowed: Restriction,
    leaf: (&str, &[&str]),
    stranger: (&str, &[&str]),
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster CA");
    let files = |name: &str, (cn, names): (&str, &[&str]), allowed: &Restriction| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let mut files = ca.write_leaf(&sub, ca.leaf_named(cn, names), true);
        files.allowed = allowed.clone();
        tls::configure(&files).unwrap()
    };
    let ((a, mut ea), (b, mut eb)) = pair(files("a", leaf, &allowed), files("b", leaf, &allowed));
    wait_connected(&a, B).await;
    wait_connected(&b, A).await;
    deliver_eventually(&a, B, &mut eb, b"ping").await;
    deliver_eventually(&b, A, &mut ea, b"pong").await;
    assert_eq!(a.counters().cert_refused, 0);

    let (c, mut ec) = start(
        CLUSTER,
        C,
        any_port(),
        files("c", stranger, &Restriction::Any),
    );
    let members = table(&[(A, addr(&a)), (B, addr(&b)), (C, addr(&c))]);
    a.set_members(members.clone());
    c.set_members(members);
    let deadline = Instant::now() + WAIT;
    // One refusal of each kind: C's dial (accepting side) and A's dial (dialing side).
    while a.counters().cert_refused < 2 {
        assert!(Instant::now() < deadline, "{:?}", a.counters());
        sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.is_connected(C));
    assert!(!c.is_connected(A));
    let _ = c.send(A, b"from a stranger".to_vec(), false);
    sleep(Duration::from_millis(300)).await;
    assert!(ea.inbound.try_recv().is_err());
    assert!(ec.inbound.try_recv().is_err());
    // A and B still talk.
    assert!(a.is_connected(B));
}

#[tokio::test]
async fn allowed_cn_refuses_a_certificate_with_another_cn() {
    only_allowed_certificates_connect(
        Restriction::Cns(vec!["other".into(), "etcd-peer".into()]),
        ("etcd-peer", &["127.0.0.1"]),
        ("etcd-client", &["127.0.0.1"]),
    )
    .await;
}

#[tokio::test]
async fn allowed_hostname_refuses_a_certificate_without_it() {
    only_allowed_certificates_connect(
        Restriction::Hostnames(vec!["peers.cluster.test".into()]),
        ("a", &["127.0.0.1", "*.cluster.test"]),
        // The same CN, and a name in the same domain: neither makes it valid for the hostname.
        ("a", &["127.0.0.1", "peers.other.test"]),
    )
    .await;
}

/// A cluster query travels on a connection that passed the handshake: B's answer (what its
/// consensus gave, here canned bytes) reaches A as is; a query B's consensus leaves unanswered
/// gives A an error instead of hanging; a malformed query (another kind, bytes after the kind)
/// is refused and counted, and the connection keeps carrying raft messages.
#[tokio::test]
async fn cluster_queries_are_answered_on_authenticated_connections() {
    let ((a, _ea), (b, mut eb)) = pair(self_signed(), self_signed());
    // Unknown members are not asked.
    assert!(matches!(a.ask_members(C).await, Err(Error::UnknownPeer(C))));
    let answering = tokio::spawn(async move {
        let query = eb.queries.recv().await.expect("a query");
        assert_eq!(query.from, A);
        query.reply.send(b"B's view".to_vec()).unwrap();
        // The next one goes unanswered: its reply is dropped.
        let query = eb.queries.recv().await.expect("a second query");
        drop(query);
        eb
    });
    let answer = timeout(WAIT, a.ask_members(B)).await.unwrap().unwrap();
    assert_eq!(answer, b"B's view");
    let unanswered = timeout(WAIT, a.ask_members(B)).await.unwrap();
    assert!(unanswered.is_err(), "{unanswered:?}");
    let mut eb = answering.await.unwrap();

    let conn = dial(&a.shared, B, &PeerUrl::parse(&url_of(addr(&b))).unwrap())
        .await
        .unwrap();
    for bad in [&[STREAM_MESSAGES][..], &[frame::STREAM_MEMBERS, 0]] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(bad).await.unwrap();
        send.finish().unwrap();
        let got = timeout(WAIT, recv.read_to_end(1024)).await.unwrap();
        assert!(got.is_err(), "{bad:?} was answered: {got:?}");
    }
    eventually_counted(&b, 2).await;
    assert!(
        eb.queries.try_recv().is_err(),
        "a malformed query reached consensus"
    );
    deliver_eventually(&a, B, &mut eb, b"still a raft link").await;
}

async fn eventually_counted(t: &Transport, refused: u64) {
    timeout(WAIT, async {
        while t.counters().frames_refused < refused {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} refusals counted", t.counters().frames_refused));
}
