//! The peer gateway alone: two real `peer-gateway` processes (A and B) on 127.0.0.1 with distinct
//! UDP ports, each registered with a stand-in consensus that this benchmark serves on a temp
//! `peer.sock` and `raft.sock`. Raft messages go in as `messages` frames written on A's raft
//! stream, cross QUIC, and come out as `messages` frames on B's; each carries its send time, so
//! B's side measures the latency. Small appends (~200 B) and 1 MiB appends (a full raft-rs
//! batch), one at a time (latency) and with many in flight (throughput): messages/s, MB/s,
//! p50/p99. Snapshot streams are refused until raft snapshots exist (issue 16), which brings
//! their rows back.
//!
//!   cargo build --release --bins && cargo bench -p peer-gateway --bench peer_gateway
//!   cargo bench -p peer-gateway --bench peer_gateway -- --quick     # a few messages per row

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use schema::member_capnp::peer_frame;
use schema::stream::{FrameBuffer, write_frame};
use schema::testing::{Identity, Member, PeerRegistrar, PeerStandIn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};

#[path = "../../consensus/benches/support/process.rs"]
mod process;
use process::{Running, cpu_time, cpu_us_per, locate, tail};

const CLUSTER: u64 = 0xbe7c_0000_0000_0001;
const A: u64 = 0xa;
const B: u64 = 0xb;
/// Sequence number and send time (ns since the benchmark's epoch), at the start of every message.
const HEADER: usize = 16;

#[derive(Clone, Copy)]
struct Row {
    name: &'static str,
    size: usize,
    is_snapshot: bool,
    /// Messages sent but not yet delivered, at most.
    window: u64,
    /// Messages per `messages` frame, at most.
    batch: u64,
    total: u64,
    time: Duration,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let time = Duration::from_secs(if quick { 10 } else { 4 });
    let (small, snapshots) = if quick { (50, 3) } else { (10_000_000, 10_000) };
    let rows = [
        Row {
            name: "append 200 B, 1 at a time",
            size: 200,
            is_snapshot: false,
            window: 1,
            batch: 1,
            total: small,
            time,
        },
        Row {
            name: "append 200 B, 1024 in flight",
            size: 200,
            is_snapshot: false,
            window: 1024,
            batch: 64,
            total: small,
            time,
        },
        Row {
            name: "append 1 MiB, 1 at a time",
            size: 1 << 20,
            is_snapshot: false,
            window: 1,
            batch: 1,
            total: snapshots,
            time,
        },
        Row {
            name: "append 1 MiB, 8 in flight",
            size: 1 << 20,
            is_snapshot: false,
            window: 8,
            batch: 1,
            total: snapshots,
            time,
        },
    ];

    let bin = locate("peer-gateway", option_env!("CARGO_BIN_EXE_peer-gateway"));
    let dir = tempfile::Builder::new()
        .prefix("peer-gateway-bench.")
        .tempdir()
        .expect("a temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, bench(&bin, dir.path(), &rows));
    if let Err(e) = result {
        eprintln!("peer_gateway: {e}");
        for side in ["a", "b"] {
            eprintln!(
                "--- peer gateway {side} log tail ---\n{}",
                tail(&dir.path().join(format!("{side}.log")), 20)
            );
        }
        std::process::exit(1);
    }
}

async fn bench(bin: &Path, dir: &Path, rows: &[Row]) -> Result<(), String> {
    // Two free UDP ports, held together so they differ.
    let (port_a, port_b) = {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let b = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        (
            a.local_addr().map_err(|e| e.to_string())?.port(),
            b.local_addr().map_err(|e| e.to_string())?.port(),
        )
    };
    let url_a = format!("http://127.0.0.1:{port_a}");
    let url_b = format!("http://127.0.0.1:{port_b}");
    let table = vec![(A, url_a.clone()), (B, url_b.clone())];
    let epoch = Instant::now();
    let sink = Rc::new(Sink::new(epoch));

    // Each member's sockets in a directory of their own: `raft.sock` sits beside `peer.sock`.
    let (streams_tx, mut streams) = mpsc::unbounded_channel();
    let mut sockets = Vec::new();
    // Served while they live.
    let mut stand_ins = Vec::new();
    for (me, listen, sink) in [(A, url_a, None), (B, url_b, Some(sink.clone()))] {
        let member_dir = dir.join(format!("{me:x}"));
        std::fs::create_dir(&member_dir).map_err(|e| e.to_string())?;
        let socket = schema::peer_socket(&member_dir);
        stand_ins.push(serve(
            &socket,
            me,
            &table,
            &listen,
            streams_tx.clone(),
            sink,
        )?);
        sockets.push(socket);
    }
    let proc_a = Running::gateway(bin, &sockets[0], &dir.join("a.log"));
    let proc_b = Running::gateway(bin, &sockets[1], &dir.join("b.log"));
    let (pid_a, pid_b) = (proc_a.pid(), proc_b.pid());

    // Both gateways registered and connected their raft streams; we write on A's.
    let mut stream_a = None;
    for _ in 0..2 {
        let (who, writer) = tokio::time::timeout(Duration::from_secs(30), streams.recv())
            .await
            .map_err(|_| "the peer gateways did not connect within 30 s".to_string())?
            .ok_or("raft stream channel closed")?;
        if who == A {
            stream_a = Some(writer);
        }
    }
    let mut a = Sender::new(stream_a.ok_or("peer gateway A did not connect its raft stream")?);

    // A drops what it cannot send until its connection to B is up: probe until B hears.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.state.borrow().delivered == 0 {
        if Instant::now() > deadline {
            return Err("no message reached B within 30 s".into());
        }
        a.send(&sink, 0, 64, false, 1).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "peer gateway alone: A -> QUIC -> B between two real peer-gateway processes, stand-in consensus on each side"
    );
    println!(
        "{:<30} {:>9} {:>6} {:>11} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "",
        "messages",
        "lost",
        "messages/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "A µs/msg",
        "B µs/msg"
    );
    println!(
        "(A µs/msg, B µs/msg: CPU time of each gateway process per message delivered, from /proc at 10 ms resolution, so only full runs give a figure)"
    );
    let mut json = Vec::new();
    for row in rows {
        let (cpu_a, cpu_b) = (cpu_time(pid_a), cpu_time(pid_b));
        let r = run(&mut a, &sink, row).await?;
        let cpu_a = cpu_us_per(cpu_a, cpu_time(pid_a), r.delivered);
        let cpu_b = cpu_us_per(cpu_b, cpu_time(pid_b), r.delivered);
        println!(
            "{:<30} {:>9} {:>6} {:>11.0} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>9.1} {:>9.1}",
            row.name,
            r.delivered,
            r.lost,
            r.rate(),
            r.mb_per_s(),
            r.ms(0.50),
            r.ms(0.99),
            r.ms(1.0),
            cpu_a,
            cpu_b
        );
        json.push(format!(
            "{{\"bench\":\"peer_gateway\",\"row\":\"{}\",\"size\":{},\"snapshot\":{},\"window\":{},\"messages\":{},\"lost\":{},\"messages_per_s\":{:.1},\"mb_per_s\":{:.2},\"p50_ms\":{:.4},\"p99_ms\":{:.4},\"max_ms\":{:.4},\"cpu_us_per_msg_a\":{cpu_a:.1},\"cpu_us_per_msg_b\":{cpu_b:.1}}}",
            row.name,
            row.size,
            row.is_snapshot,
            row.window,
            r.delivered,
            r.lost,
            r.rate(),
            r.mb_per_s(),
            r.ms(0.50),
            r.ms(0.99),
            r.ms(1.0)
        ));
        if r.delivered == 0 {
            return Err(format!("{}: nothing was delivered", row.name));
        }
    }
    println!();
    for j in json {
        println!("{j}");
    }
    Ok(())
}

struct RowResult {
    delivered: u64,
    lost: u64,
    bytes: u64,
    elapsed: Duration,
    /// Sorted nanoseconds.
    latencies: Vec<u64>,
}

impl RowResult {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1] as f64 / 1e6
    }
}

async fn run(a: &mut Sender, sink: &Rc<Sink>, row: &Row) -> Result<RowResult, String> {
    sink.reset();
    let start = Instant::now();
    let deadline = start + row.time;
    let mut sent = 0u64;
    while sent < row.total && Instant::now() < deadline {
        let in_flight = sent.saturating_sub(sink.state.borrow().delivered);
        if in_flight >= row.window {
            // Woken by every delivery; the timeout only guards against lost messages.
            let _ = tokio::time::timeout(Duration::from_millis(200), sink.notify.notified()).await;
            if sent.saturating_sub(sink.state.borrow().delivered) >= row.window
                && sink.state.borrow().last.elapsed() > Duration::from_secs(2)
            {
                break;
            }
            continue;
        }
        let n = (row.window - in_flight)
            .min(row.batch)
            .min(row.total - sent);
        a.send(sink, sent, row.size, row.is_snapshot, n).await?;
        sent += n;
    }
    // Wait for the stragglers: until everything arrived or nothing arrived for 2 s.
    loop {
        let (delivered, idle) = {
            let s = sink.state.borrow();
            (s.delivered, s.last.elapsed())
        };
        if delivered >= sent || idle > Duration::from_secs(2) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), sink.notify.notified()).await;
    }
    let mut s = sink.state.borrow_mut();
    let elapsed = s.last.saturating_duration_since(start);
    let mut latencies = std::mem::take(&mut s.latencies);
    latencies.sort_unstable();
    Ok(RowResult {
        delivered: s.delivered,
        lost: sent.saturating_sub(s.delivered),
        bytes: s.bytes,
        elapsed,
        latencies,
    })
}

/// A's raft stream, with the buffers its frames are built in kept from one frame to the next:
/// the stand-in shares the cores with both gateways, so it must not fault in fresh pages for
/// every 1 MiB message.
struct Sender {
    stream: OwnedWriteHalf,
    data: Vec<u8>,
    /// The builder's one segment.
    scratch: Vec<u8>,
    frame: Vec<u8>,
}

impl Sender {
    fn new(stream: OwnedWriteHalf) -> Sender {
        Sender {
            stream,
            data: Vec::new(),
            scratch: Vec::new(),
            frame: Vec::new(),
        }
    }

    /// One `messages` frame with `n` messages to B of `size` bytes, stamped with their send
    /// time.
    async fn send(
        &mut self,
        sink: &Sink,
        first_seq: u64,
        size: usize,
        is_snapshot: bool,
        n: u64,
    ) -> Result<(), String> {
        self.data.resize(size.max(HEADER), 0);
        let words = 8 + n as usize * (4 + self.data.len().div_ceil(8));
        if self.scratch.len() < 8 * words {
            self.scratch.resize(8 * words, 0);
        }
        let mut message = capnp::message::Builder::new(
            capnp::message::ScratchSpaceHeapAllocator::new(&mut self.scratch[..8 * words]),
        );
        let mut list = message
            .init_root::<peer_frame::Builder>()
            .init_messages(n as u32);
        for i in 0..n {
            self.data[..8].copy_from_slice(&(first_seq + i).to_be_bytes());
            let now = sink.epoch.elapsed().as_nanos() as u64;
            self.data[8..16].copy_from_slice(&now.to_be_bytes());
            let mut m = list.reborrow().get(i as u32);
            m.set_to(B);
            m.set_from(A);
            m.set_is_snapshot(is_snapshot);
            m.set_data(&self.data);
        }
        self.frame.clear();
        write_frame(&mut self.frame, &message);
        drop(message);
        self.stream
            .write_all(&self.frame)
            .await
            .map_err(|e| format!("writing to peer gateway A's raft stream: {e}"))
    }
}

/// What B's stand-in consensus heard.
struct Sink {
    epoch: Instant,
    notify: Notify,
    state: RefCell<SinkState>,
}

struct SinkState {
    delivered: u64,
    bytes: u64,
    latencies: Vec<u64>,
    last: Instant,
}

impl Sink {
    fn new(epoch: Instant) -> Sink {
        Sink {
            epoch,
            notify: Notify::new(),
            state: RefCell::new(SinkState {
                delivered: 0,
                bytes: 0,
                latencies: Vec::new(),
                last: Instant::now(),
            }),
        }
    }

    fn reset(&self) {
        let mut s = self.state.borrow_mut();
        s.delivered = 0;
        s.bytes = 0;
        s.latencies.clear();
        s.last = Instant::now();
    }
}

/// Member `me`'s `peer.sock` and `raft.sock` (schema's stand-in): registers the gateway with
/// `table`, hands out the write half of each raft stream whose hello is right, and reads the rest
/// of what the gateway writes, recording deliveries in `sink` (B) or dropping them (A).
fn serve(
    peer_socket: &Path,
    me: u64,
    table: &[(u64, String)],
    listen: &str,
    streams: mpsc::UnboundedSender<(u64, OwnedWriteHalf)>,
    sink: Option<Rc<Sink>>,
) -> Result<PeerStandIn, String> {
    let identity = Identity {
        member_id: me,
        cluster_id: CLUSTER,
        members: table
            .iter()
            .map(|(id, url)| Member {
                id: *id,
                peer_urls: vec![url.clone()],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let registrar = capnp_rpc::new_client(PeerRegistrar::new(identity, listen));
    PeerStandIn::serve(peer_socket, registrar, move |stream| {
        let (read, write) = stream.into_split();
        let streams = streams.clone();
        let sink = sink.clone();
        async move {
            if let Err(e) = read_raft(read, me, write, streams, sink).await {
                eprintln!("raft stream of gateway {me:x}: {e}");
            }
        }
    })
    .map_err(|e| format!("binding the stand-in sockets of gateway {me:x}: {e}"))
}

async fn read_raft(
    mut read: OwnedReadHalf,
    me: u64,
    write: OwnedWriteHalf,
    streams: mpsc::UnboundedSender<(u64, OwnedWriteHalf)>,
    sink: Option<Rc<Sink>>,
) -> Result<(), String> {
    let mut buf = FrameBuffer::new();
    let mut write = Some(write);
    loop {
        let n = read
            .read(buf.spare_mut())
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        buf.filled(n);
        let now = Instant::now();
        let mut delivered = false;
        while let Some(frame) = buf.next_frame()? {
            let frame = frame
                .get_root::<peer_frame::Reader>()
                .map_err(|e| e.to_string())?;
            match frame.which().map_err(|e| e.to_string())? {
                peer_frame::Hello(version) => {
                    if version != schema::PROTOCOL_VERSION {
                        return Err(format!("hello with protocol version {version}"));
                    }
                    if let Some(write) = write.take() {
                        let _ = streams.send((me, write));
                    }
                }
                peer_frame::Messages(list) => {
                    let Some(sink) = &sink else { continue };
                    let at = sink.epoch.elapsed().as_nanos() as u64;
                    let mut s = sink.state.borrow_mut();
                    for m in list.map_err(|e| e.to_string())?.iter() {
                        let data = m.get_data().map_err(|e| e.to_string())?;
                        if data.len() < HEADER {
                            continue;
                        }
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&data[8..16]);
                        s.latencies
                            .push(at.saturating_sub(u64::from_be_bytes(sent)));
                        s.delivered += 1;
                        s.bytes += data.len() as u64;
                    }
                    s.last = now;
                    delivered = true;
                }
                // Reports: A cannot reach B until its QUIC connection is up. Counters: drops
                // meanwhile.
                peer_frame::Unreachable(_)
                | peer_frame::SnapshotStatus(_)
                | peer_frame::Counters(_) => {}
            }
        }
        if let Some(sink) = sink.as_ref().filter(|_| delivered) {
            sink.notify.notify_one();
        }
    }
}
