//! The client gateway alone: the real `client-gateway` binary in front of a stand-in consensus
//! (this benchmark serves `client.sock` and `write.sock` on its own thread and answers put,
//! range and txn at once with canned responses: ranges over Cap'n Proto RPC, writes on the write
//! stream, as consensus does), loaded over gRPC by etcd-bench's load generator. To see what the
//! gateway itself adds per request, the same requests also go
//!   - straight to the stand-in, ranges over Cap'n Proto and puts on the write stream (what the
//!     gateway's own hop costs at least), and
//!   - over gRPC to a stub KV server in this process (what gRPC and the load generator cost
//!     without the gateway).
//!
//!   cargo build --release --bins && cargo bench -p client-gateway --bench client_gateway
//!   cargo bench -p client-gateway --bench client_gateway -- --quick     # a few requests per row

use std::cell::Cell;
use std::future::{Future, ready};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use client_gateway::loadgen::{self, Op, Spec};
use client_gateway::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    kv_server::{Kv, KvServer},
    response_op,
};
use client_gateway::proto::mvccpb::KeyValue;
use schema::member_capnp::{client_plane, write_frame, write_request};
use schema::stream::{FrameBuffer, write_frame};
use schema::testing::{ClientRegistrar, ClientStandIn, Identity, Member};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[path = "../../consensus/benches/support/client_plane.rs"]
mod client_plane_support;
use client_plane_support::{WriteStream, register};
#[path = "../../consensus/benches/support/process.rs"]
mod process;
use process::{Running, cpu_time, cpu_us_per, locate, tail};

const CLUSTER: u64 = 0xc100_0000_0000_0001;
const MEMBER: u64 = 0x3e3b_e700_0000_0001;
const KEY_SIZE: usize = 8;
const VAL_SIZE: usize = 256;
const KEY_SPACE: u64 = 10_000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (total_1, total_100) = if quick { (200, 400) } else { (10_000, 60_000) };
    let bin = locate(
        "client-gateway",
        option_env!("CARGO_BIN_EXE_client-gateway"),
    );
    let dir = tempfile::Builder::new()
        .prefix("client-gateway-bench.")
        .tempdir()
        .expect("a temp dir");
    let socket = dir.path().join("client.sock");
    let gateway_addr = free_tcp_addr();
    let stub_addr = free_tcp_addr();
    let log = dir.path().join("client-gateway.log");

    // The stand-in consensus, on its own thread (capnp-rpc is !Send); its sockets are bound
    // before the gateway starts.
    {
        let socket = socket.clone();
        let url = format!("http://{gateway_addr}");
        let (bound_tx, bound) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("stand-in".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let served = serve_stand_in(&socket, &url);
                    let _ = bound_tx.send(served.as_ref().map(drop).map_err(|e| e.to_string()));
                    // Served for as long as the benchmark runs.
                    std::future::pending::<()>().await;
                    drop(served);
                });
            })
            .expect("stand-in thread");
        bound
            .recv()
            .expect("the stand-in thread stopped")
            .expect("binding the stand-in sockets");
    }
    let gateway = Running::gateway(&bin, &socket, &log);
    let gateway_pid = gateway.pid();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        wait_for_tcp(gateway_addr).await?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(Stub))
                .serve(stub_addr),
        );
        wait_for_tcp(stub_addr).await?;

        let mut grpc = Vec::new();
        for (target, addr) in [("gateway", gateway_addr), ("stub", stub_addr)] {
            for (op, conns, clients, total) in [
                (Op::Put, 1, 1, total_1),
                (Op::Put, 10, 100, total_100),
                (
                    Op::Range {
                        serializable: false,
                        key: None,
                    },
                    1,
                    1,
                    total_1,
                ),
                (
                    Op::Range {
                        serializable: false,
                        key: None,
                    },
                    10,
                    100,
                    total_100,
                ),
                (Op::TxnPut, 10, 100, total_100),
            ] {
                let spec = Spec {
                    op,
                    endpoints: vec![addr.to_string()],
                    conns,
                    clients,
                    total,
                    key_size: KEY_SIZE,
                    val_size: VAL_SIZE,
                    key_space: KEY_SPACE,
                    random_values: false,
                };
                let cpu_before = cpu_time(gateway_pid);
                let report = loadgen::run(&spec).await?;
                if report.errors > 0 {
                    return Err(format!("{target}: {}", report.summary()));
                }
                let cpu = if target == "gateway" {
                    Some(cpu_us_per(cpu_before, cpu_time(gateway_pid), report.ok))
                } else {
                    None
                };
                grpc.push((target, report, cpu));
            }
        }
        Ok::<_, String>(grpc)
    });
    drop(runtime);
    let grpc = match result {
        Ok(g) => g,
        Err(e) => fail(&e, &log),
    };

    // Straight to the stand-in, as the gateway's link does: ranges over Cap'n Proto, puts on the
    // write stream.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let direct = local.block_on(&rt, async {
        // The connection stays open while `_connection` lives.
        let (plane, _connection) = register(&socket).await?;
        let stream = WriteStream::connect(&schema::write_socket_beside(&socket)).await?;
        let mut rows = Vec::new();
        for (name, inflight, total) in [
            ("put", 1, total_1),
            ("put", 100, total_100),
            ("range", 1, total_1),
            ("range", 100, total_100),
        ] {
            rows.push((
                name,
                inflight,
                direct(&plane, &stream, name == "put", inflight, total).await?,
            ));
        }
        Ok::<_, String>(rows)
    });
    drop(gateway);
    let direct = match direct {
        Ok(d) => d,
        Err(e) => fail(&e, &log),
    };

    println!(
        "client gateway alone: gRPC -> client-gateway -> client.sock (reads) / write.sock (writes) -> stand-in consensus answering at once"
    );
    println!(
        "(8-byte keys, 256-byte values; the load generator, the gateway and the stand-in share the machine;"
    );
    println!(
        " CPU µs/req: CPU time of the client-gateway process per request, from /proc at 10 ms resolution, so only full runs give a figure)"
    );
    println!(
        "{:<42} {:>6} {:>8} {:>10} {:>8} {:>8} {:>8} {:>11}",
        "", "conns", "clients", "req/s", "p50 ms", "p99 ms", "max ms", "CPU µs/req"
    );
    let mut json = Vec::new();
    for (target, r, cpu) in &grpc {
        let what = match *target {
            "gateway" => format!("gRPC via gateway: {}", r.op),
            _ => format!("gRPC to in-process stub: {}", r.op),
        };
        println!(
            "{:<42} {:>6} {:>8} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>11}",
            what,
            r.conns,
            r.clients,
            r.requests_per_second(),
            loadgen::ms(r.quantile(0.5)),
            loadgen::ms(r.quantile(0.99)),
            loadgen::ms(r.max()),
            cpu.map(|c| format!("{c:.1}")).unwrap_or_default()
        );
        json.push(format!(
            "{{\"bench\":\"client_gateway\",\"target\":\"{target}\",\"cpu_us_per_request\":{:.1},\"report\":{}}}",
            cpu.unwrap_or(0.0),
            r.json()
        ));
    }
    for (name, inflight, r) in &direct {
        let how = direct_path(name);
        println!(
            "{:<42} {:>6} {:>8} {:>10.0} {:>8.3} {:>8.3} {:>8.3}",
            format!("{how} straight to stand-in: {name}"),
            1,
            inflight,
            r.rate(),
            r.ms(0.5),
            r.ms(0.99),
            r.ms(1.0)
        );
        json.push(format!(
            "{{\"bench\":\"client_gateway\",\"target\":\"{how}\",\"op\":\"{name}\",\"in_flight\":{inflight},\"rps\":{:.1},\"p50_ms\":{:.4},\"p99_ms\":{:.4}}}",
            r.rate(),
            r.ms(0.5),
            r.ms(0.99)
        ));
    }

    // What the gateway adds: one request at a time, its p50 minus a bare gRPC round trip (the
    // stub); the hop to consensus it makes itself is part of that.
    println!();
    for (name, op) in [("put", "put"), ("range", "range-linearizable")] {
        let find = |target: &str, clients: usize| {
            grpc.iter()
                .find(|(t, r, _)| *t == target && r.op == op && r.clients == clients)
                .map(|(_, r, cpu)| (r, cpu.unwrap_or(0.0)))
        };
        let (Some((gw, _)), Some((stub, _))) = (find("gateway", 1), find("stub", 1)) else {
            continue;
        };
        let Some((_, _, capnp)) = direct.iter().find(|(n, i, _)| *n == name && *i == 1) else {
            continue;
        };
        let gw50 = loadgen::ms(gw.quantile(0.5));
        let stub50 = loadgen::ms(stub.quantile(0.5));
        println!(
            "{name}, 1 in flight: the gateway adds {:.3} ms at p50 to a bare gRPC round trip ({gw50:.3} vs {stub50:.3} ms); a {} round trip alone takes {:.3} ms",
            gw50 - stub50,
            direct_path(name),
            capnp.ms(0.5),
        );
        if let (Some((gw, cpu)), Some((stub, _))) = (find("gateway", 100), find("stub", 100)) {
            println!(
                "{name}, 100 clients: {:.0} req/s via the gateway vs {:.0} to the stub, {cpu:.1} µs of gateway CPU per request",
                gw.requests_per_second(),
                stub.requests_per_second(),
            );
        }
    }
    println!();
    for j in json {
        println!("{j}");
    }
}

/// How the gateway reaches consensus for `op`, and so the direct rows.
fn direct_path(op: &str) -> &'static str {
    if op == "put" { "stream" } else { "capnp" }
}

fn fail(e: &str, log: &Path) -> ! {
    eprintln!("client_gateway: {e}");
    eprintln!("--- client-gateway log tail ---\n{}", tail(log, 30));
    std::process::exit(1);
}

// ------------------------------------------------------------------ the stand-in consensus

/// `client.sock` and `write.sock` (schema's stand-in), answered with [`Answers`].
fn serve_stand_in(socket: &Path, url: &str) -> std::io::Result<ClientStandIn> {
    let answers = Rc::new(Answers {
        revision: Cell::new(1),
    });
    let identity = Identity {
        member_id: MEMBER,
        cluster_id: CLUSTER,
        name: "stand-in".into(),
        members: vec![Member {
            id: MEMBER,
            name: "stand-in".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec![url.to_string()],
        }],
    };
    let plane = capnp_rpc::new_client(Plane(answers.clone()));
    let registrar = ClientRegistrar::new(identity, url, plane);
    ClientStandIn::serve(socket, capnp_rpc::new_client(registrar), move |stream| {
        answer_writes(stream, answers.clone())
    })
}

/// The stand-in's canned answers, the same on either path.
struct Answers {
    revision: Cell<i64>,
}

impl Answers {
    fn header(&self, mut h: schema::member_capnp::response_header::Builder<'_>, bump: bool) {
        if bump {
            self.revision.set(self.revision.get() + 1);
        }
        h.set_cluster_id(CLUSTER);
        h.set_member_id(MEMBER);
        h.set_revision(self.revision.get());
        h.set_raft_term(2);
    }

    fn put(&self, r: schema::member_capnp::put_response::Builder<'_>) {
        self.header(r.init_header(), true);
    }

    fn txn(&self, mut r: schema::member_capnp::txn_response::Builder<'_>) {
        self.header(r.reborrow().init_header(), true);
        r.set_succeeded(true);
        let put = r.init_responses(1).get(0).init_put();
        self.header(put.init_header(), false);
    }
}

struct Plane(Rc<Answers>);

impl client_plane::Server for Plane {
    fn range(
        self: Rc<Self>,
        params: client_plane::RangeParams,
        mut results: client_plane::RangeResults,
    ) -> impl Future<Output = capnp::Result<()>> + 'static {
        ready((|| {
            let key = params.get()?.get_request()?.get_key()?;
            let mut r = results.get().init_response();
            self.0.header(r.reborrow().init_header(), false);
            let mut kv = r.reborrow().init_kvs(1).get(0);
            kv.set_key(key);
            kv.set_create_revision(1);
            kv.set_mod_revision(1);
            kv.set_version(1);
            kv.set_value(&[b'v'; VAL_SIZE]);
            r.set_count(1);
            Ok(())
        })())
    }

    /// Read-only txns (the load generator's txns write, so they take the write stream).
    fn txn(
        self: Rc<Self>,
        _params: client_plane::TxnParams,
        mut results: client_plane::TxnResults,
    ) -> impl Future<Output = capnp::Result<()>> + 'static {
        self.0.txn(results.get().init_response());
        ready(Ok(()))
    }
}

/// The stand-in's end of a write stream, like consensus's raft thread: checks hello, answers
/// each request at once, and writes the answers to whatever one read brought in one write.
async fn answer_writes(stream: tokio::net::UnixStream, answers: Rc<Answers>) {
    let (mut read, mut write) = stream.into_split();
    let mut buf = FrameBuffer::new();
    let mut greeted = false;
    let mut out = Vec::new();
    loop {
        match read.read(buf.spare_mut()).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.filled(n),
        }
        loop {
            let frame = match buf.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("stand-in: a corrupt write stream: {e}");
                    return;
                }
            };
            let Ok(frame) = frame.get_root::<write_frame::Reader>() else {
                return;
            };
            match frame.which() {
                Ok(write_frame::Hello(v)) if !greeted && v == schema::PROTOCOL_VERSION => {
                    greeted = true
                }
                Ok(write_frame::Request(Ok(r))) if greeted => answer_write(&answers, r, &mut out),
                _ => {
                    eprintln!("stand-in: an unexpected write-stream frame");
                    return;
                }
            }
        }
        if !out.is_empty() {
            if write.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn answer_write(answers: &Answers, r: write_request::Reader<'_>, out: &mut Vec<u8>) {
    let mut message = schema::builder_for(256);
    let mut reply = message.init_root::<write_frame::Builder>().init_reply();
    reply.set_id(r.get_id());
    match r.which() {
        Ok(write_request::Put(_)) => answers.put(reply.init_put()),
        Ok(write_request::Txn(_)) => answers.txn(reply.init_txn()),
        Ok(write_request::DeleteRange(_)) | Err(_) => {
            let mut e = reply.reborrow().init_error();
            e.set_code(schema::code::UNIMPLEMENTED);
            e.set_message("stand-in: not implemented");
            reply.set_none(());
        }
    }
    write_frame(out, &message);
}

// ------------------------------------------------------------------ straight to the stand-in

struct Direct {
    latencies: Vec<u64>,
    elapsed: Duration,
}

impl Direct {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        loadgen::ms(loadgen::quantile(&self.latencies, q))
    }
}

async fn direct(
    plane: &client_plane::Client,
    stream: &WriteStream,
    put: bool,
    inflight: usize,
    total: u64,
) -> Result<Direct, String> {
    let issued = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..inflight {
        let plane = plane.clone();
        let stream = stream.clone();
        let issued = issued.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut rng = loadgen::Rng::new(c as u64 + 1);
            let value = vec![b'v'; VAL_SIZE];
            let mut latencies = Vec::new();
            while issued.get() < total {
                issued.set(issued.get() + 1);
                let key = loadgen::key(rng.below(KEY_SPACE), KEY_SIZE);
                let t = Instant::now();
                if put {
                    stream.put(&key, &value).await?;
                } else {
                    let mut request = plane.range_request();
                    request.get().init_request().set_key(&key);
                    request
                        .send()
                        .promise
                        .await
                        .map_err(|e| format!("capnp call: {e}"))?;
                }
                latencies.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(Direct { latencies, elapsed })
}

// ------------------------------------------------------------------ a stub gRPC server

/// Answers KV requests at once, in this process: the cost of gRPC itself.
struct Stub;

fn stub_header() -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: CLUSTER,
        member_id: MEMBER,
        revision: 2,
        raft_term: 2,
    })
}

#[tonic::async_trait]
impl Kv for Stub {
    async fn range(
        &self,
        r: tonic::Request<RangeRequest>,
    ) -> Result<tonic::Response<RangeResponse>, tonic::Status> {
        let key = r.into_inner().key;
        Ok(tonic::Response::new(RangeResponse {
            header: stub_header(),
            kvs: vec![KeyValue {
                key,
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                value: vec![b'v'; VAL_SIZE],
                lease: 0,
            }],
            more: false,
            count: 1,
        }))
    }

    async fn put(
        &self,
        _r: tonic::Request<PutRequest>,
    ) -> Result<tonic::Response<PutResponse>, tonic::Status> {
        Ok(tonic::Response::new(PutResponse {
            header: stub_header(),
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        _r: tonic::Request<DeleteRangeRequest>,
    ) -> Result<tonic::Response<DeleteRangeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn txn(
        &self,
        _r: tonic::Request<TxnRequest>,
    ) -> Result<tonic::Response<TxnResponse>, tonic::Status> {
        Ok(tonic::Response::new(TxnResponse {
            header: stub_header(),
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponsePut(PutResponse {
                    header: stub_header(),
                    prev_kv: None,
                })),
            }],
        }))
    }

    async fn compact(
        &self,
        _r: tonic::Request<CompactionRequest>,
    ) -> Result<tonic::Response<CompactionResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }
}

// ------------------------------------------------------------------ processes and ports

fn free_tcp_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

async fn wait_for_tcp(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr} after 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
