//! consensus alone, measured through its client plane: the real `consensus` binary as a single
//! member (data dir on disk, fsync on), no gateways, dialed the way the client gateway does:
//! registration and reads over `client.sock` (capnp-rpc), puts as `WriteFrame`s on `write.sock`.
//! Puts with 1, 16 and 128 in flight: writes/s, latency, and from the member's own counters how
//! many fsyncs it did and how many writes shared one. Then reads (serializable and linearizable)
//! for comparison.
//!
//!   cargo build --release --bins && cargo bench -p consensus --bench consensus_plane
//!   cargo bench -p consensus --bench consensus_plane -- --quick     # a few requests per row

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use schema::member_capnp::client_plane;

#[path = "support/client_plane.rs"]
mod client_plane_support;
#[path = "support/process.rs"]
mod process;
use client_plane_support::{WriteStream as Writes, register};
use process::{Running, cpu_time, cpu_us_per, locate, tail};

const KEY_SIZE: usize = 8;
const VAL_SIZE: usize = 256;
const KEY_SPACE: u64 = 10_000;

/// How long (or how many requests) one row runs.
#[derive(Clone, Copy)]
struct Budget {
    requests: u64,
    time: Duration,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = if quick {
        Budget {
            requests: 40,
            time: Duration::from_secs(5),
        }
    } else {
        Budget {
            requests: 1_000_000,
            time: Duration::from_secs(5),
        }
    };
    let bin = locate("consensus", option_env!("CARGO_BIN_EXE_consensus"));
    let dir = tempfile::Builder::new()
        .prefix("consensus-bench.")
        .tempdir()
        .expect("a temp dir");
    let data_dir = dir.path().join("data");
    let log = dir.path().join("consensus.log");
    let member = {
        let mut command = Command::new(&bin);
        // No other configuration: one member named "default", like etcd with no flags. consensus
        // binds no port itself, so the default URLs do not clash with anything.
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "warn");
        Running::start(command, &log)
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, bench(&data_dir, budget, member.pid()));
    drop(member);
    if let Err(e) = result {
        eprintln!("consensus_plane: {e}");
        eprintln!("--- consensus log tail ---\n{}", tail(&log, 30));
        std::process::exit(1);
    }
}

async fn bench(data_dir: &Path, budget: Budget, pid: u32) -> Result<(), String> {
    let socket = schema::client_socket(data_dir);
    wait_for(Duration::from_secs(30), "client.sock", || socket.exists()).await?;
    // The connection stays open while `_connection` lives.
    let (plane, _connection) = register(&socket).await?;
    let writes = Writes::connect(&schema::write_socket(data_dir)).await?;

    // A single member elects itself after one election timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics(&plane).await?.is_leader {
        if Instant::now() > deadline {
            return Err("the member did not become leader within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "consensus alone: one member, puts on write.sock, reads on client.sock, fsync on; puts of {KEY_SIZE}-byte keys (random of {KEY_SPACE}), {VAL_SIZE}-byte values"
    );
    println!(
        "{:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>7} {:>12} {:>11} {:>12}",
        "in flight",
        "writes",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "fsyncs",
        "writes/fsync",
        "fsync ms",
        "CPU µs/write"
    );
    println!(
        "(CPU µs: the consensus process's CPU time per request, from /proc at 10 ms resolution, so only full runs give a figure)"
    );
    // A few puts first so the first row does not pay for RocksDB's first writes.
    run(
        &plane,
        &writes,
        Workload::Put,
        4,
        Budget {
            requests: 50,
            time: budget.time,
        },
    )
    .await?;
    let mut json = Vec::new();
    for inflight in [1, 16, 128] {
        let before = metrics(&plane).await?;
        let cpu_before = cpu_time(pid);
        let r = run(&plane, &writes, Workload::Put, inflight, budget).await?;
        let cpu = cpu_us_per(cpu_before, cpu_time(pid), r.latencies.len() as u64);
        let after = metrics(&plane).await?;
        let fsyncs = after.fsyncs - before.fsyncs;
        let committed = after.proposals_committed - before.proposals_committed;
        let per_fsync = committed as f64 / fsyncs.max(1) as f64;
        let fsync_ms = (after.fsync_nanos - before.fsync_nanos) as f64 / 1e6 / fsyncs.max(1) as f64;
        println!(
            "{:>9} {:>8} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>12.1} {:>11.3} {:>12.1}",
            inflight,
            r.latencies.len(),
            r.rate(),
            r.ms(0.50),
            r.ms(0.99),
            r.ms(1.0),
            fsyncs,
            per_fsync,
            fsync_ms,
            cpu
        );
        json.push(format!(
            "{{\"bench\":\"consensus_plane\",\"op\":\"put\",\"in_flight\":{inflight},\"requests\":{},\"rps\":{:.1},\"p50_ms\":{:.4},\"p99_ms\":{:.4},\"max_ms\":{:.4},\"fsyncs\":{fsyncs},\"writes_per_fsync\":{per_fsync:.2},\"fsync_mean_ms\":{fsync_ms:.4},\"cpu_us_per_write\":{cpu:.1}}}",
            r.latencies.len(),
            r.rate(),
            r.ms(0.50),
            r.ms(0.99),
            r.ms(1.0)
        ));
    }

    println!();
    println!("reads of one key (random of {KEY_SPACE}) through client.sock");
    println!(
        "{:>20} {:>9} {:>8} {:>10} {:>8} {:>8} {:>11} {:>11}",
        "", "in flight", "reads", "reads/s", "p50 ms", "p99 ms", "read index", "CPU µs/read"
    );
    for (name, workload) in [
        ("range serializable", Workload::Range { serializable: true }),
        (
            "range linearizable",
            Workload::Range {
                serializable: false,
            },
        ),
    ] {
        for inflight in [1, 128] {
            let before = metrics(&plane).await?;
            let cpu_before = cpu_time(pid);
            let r = run(&plane, &writes, workload, inflight, budget).await?;
            let cpu = cpu_us_per(cpu_before, cpu_time(pid), r.latencies.len() as u64);
            let after = metrics(&plane).await?;
            let read_indexes = after.read_indexes - before.read_indexes;
            println!(
                "{:>20} {:>9} {:>8} {:>10.0} {:>8.3} {:>8.3} {:>11} {:>11.1}",
                name,
                inflight,
                r.latencies.len(),
                r.rate(),
                r.ms(0.50),
                r.ms(0.99),
                read_indexes,
                cpu
            );
            json.push(format!(
                "{{\"bench\":\"consensus_plane\",\"op\":\"{}\",\"in_flight\":{inflight},\"requests\":{},\"rps\":{:.1},\"p50_ms\":{:.4},\"p99_ms\":{:.4},\"read_indexes\":{read_indexes},\"cpu_us_per_read\":{cpu:.1}}}",
                name.replace(' ', "-"),
                r.latencies.len(),
                r.rate(),
                r.ms(0.50),
                r.ms(0.99)
            ));
        }
    }
    println!();
    for j in json {
        println!("{j}");
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Workload {
    Put,
    Range { serializable: bool },
}

struct Run {
    /// Sorted nanoseconds.
    latencies: Vec<u64>,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1] as f64 / 1e6
    }
}

/// `inflight` concurrent callers on the one connection until the budget is spent.
async fn run(
    plane: &client_plane::Client,
    writes: &Writes,
    workload: Workload,
    inflight: usize,
    budget: Budget,
) -> Result<Run, String> {
    let issued = Rc::new(Cell::new(0u64));
    let latencies = Rc::new(RefCell::new(Vec::new()));
    let failure: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let start = Instant::now();
    let deadline = start + budget.time;
    let mut tasks = Vec::new();
    for c in 0..inflight {
        let plane = plane.clone();
        let writes = writes.clone();
        let issued = issued.clone();
        let latencies = latencies.clone();
        let failure = failure.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(c as u64 + 1) | 1;
            let value = vec![b'v'; VAL_SIZE];
            loop {
                let n = issued.get();
                if n >= budget.requests || Instant::now() >= deadline || failure.borrow().is_some()
                {
                    break;
                }
                issued.set(n + 1);
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                let k = rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % KEY_SPACE;
                let key = format!("{k:0KEY_SIZE$}");
                let t = Instant::now();
                let result = match workload {
                    Workload::Put => writes.put(key.as_bytes(), &value).await,
                    Workload::Range { serializable } => {
                        range(&plane, key.as_bytes(), serializable).await
                    }
                };
                match result {
                    Ok(()) => latencies.borrow_mut().push(t.elapsed().as_nanos() as u64),
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(e);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("a caller task failed: {e}"))?;
    }
    let elapsed = start.elapsed();
    if let Some(e) = failure.take() {
        return Err(e);
    }
    let mut latencies = latencies.take();
    latencies.sort_unstable();
    Ok(Run { latencies, elapsed })
}

async fn range(plane: &client_plane::Client, key: &[u8], serializable: bool) -> Result<(), String> {
    let mut request = plane.range_request();
    {
        let mut r = request.get().init_request();
        r.set_key(key);
        r.set_serializable(serializable);
    }
    let reply = request
        .send()
        .promise
        .await
        .map_err(|e| format!("range: {e}"))?;
    let results = reply.get().map_err(|e| format!("range: {e}"))?;
    if results.has_error() {
        return Err("range refused".into());
    }
    Ok(())
}

struct Metrics {
    proposals_committed: u64,
    fsyncs: u64,
    fsync_nanos: u64,
    read_indexes: u64,
    is_leader: bool,
}

async fn metrics(plane: &client_plane::Client) -> Result<Metrics, String> {
    let reply = plane
        .metrics_request()
        .send()
        .promise
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    let m = reply
        .get()
        .and_then(|r| r.get_metrics())
        .map_err(|e| format!("metrics: {e}"))?;
    Ok(Metrics {
        proposals_committed: m.get_proposals_committed(),
        fsyncs: m.get_fsyncs(),
        fsync_nanos: m.get_fsync_nanos(),
        read_indexes: m.get_read_indexes(),
        is_leader: m.get_is_leader(),
    })
}

async fn wait_for(timeout: Duration, what: &str, f: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
