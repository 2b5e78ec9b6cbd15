//! A load generator for etcd's v3 gRPC API, in the spirit of etcd's `benchmark` tool: `clients`
//! concurrent requests spread over `conns` HTTP/2 connections (round-robin over the endpoints),
//! `total` requests in all, and the latency of each one. It only speaks the public API, so it runs
//! against real etcd as well as against a member of ours.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

mod conn;

pub use conn::Conn;

use crate::proto::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    request_op,
};

/// At most this many distinct error messages are kept for the report.
const KEPT_ERRORS: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What each request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `Put` of a random key of the key space.
    Put,
    /// `Range` of one key: `key` if given, else a random key of the key space.
    Range {
        serializable: bool,
        key: Option<Vec<u8>>,
    },
    /// `Txn` with no compares and one put in `success`, like etcd's `benchmark txn-put`.
    TxnPut,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Range {
                serializable: false,
                ..
            } => "range-linearizable",
            Op::Range {
                serializable: true, ..
            } => "range-serializable",
            Op::TxnPut => "txn-put",
        }
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub op: Op,
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// HTTP/2 connections, assigned to the endpoints round-robin.
    pub conns: usize,
    /// Requests in flight at once, assigned to the connections round-robin.
    pub clients: usize,
    pub total: u64,
    pub key_size: usize,
    pub val_size: usize,
    /// Keys are drawn at random from this many (zero-padded decimal numbers of `key_size` bytes).
    pub key_space: u64,
    /// Values of random bytes, a new one per request (incompressible, as stored data that a
    /// compressing store cannot shrink), instead of `val_size` times `v`.
    pub random_values: bool,
}

impl Spec {
    /// Checks the figures before anything is dialed.
    pub fn check(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("--endpoints is empty".into());
        }
        if self.conns == 0 || self.clients == 0 || self.total == 0 {
            return Err("--conns, --clients and --total must be at least 1".into());
        }
        if self.key_space == 0 {
            return Err("--key-space must be at least 1".into());
        }
        let digits = (self.key_space - 1).to_string().len();
        if digits > self.key_size {
            return Err(format!(
                "--key-size {} is too small for --key-space {}: keys need {digits} bytes",
                self.key_size, self.key_space
            ));
        }
        for e in &self.endpoints {
            endpoint_url(e)?;
        }
        Ok(())
    }
}

/// `127.0.0.1:2379` and `http://127.0.0.1:2379` both mean plain HTTP/2; https is not supported.
fn endpoint_url(e: &str) -> Result<String, String> {
    let e = e.trim();
    if e.starts_with("https://") {
        return Err(format!(
            "endpoint {e}: https is not supported by this load generator"
        ));
    }
    let url = if e.starts_with("http://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    if url.len() <= "http://".len() {
        return Err(format!("endpoint {e:?} is empty"));
    }
    Ok(url)
}

/// Opens `conns` HTTP/2 connections, the i-th to `endpoints[i % len]`.
pub async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<Conn>, String> {
    let mut opened = Vec::with_capacity(conns);
    for i in 0..conns {
        let url = endpoint_url(&endpoints[i % endpoints.len()])?;
        opened.push(Conn::dial(&url, CONNECT_TIMEOUT).await?);
    }
    Ok(opened)
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub op: &'static str,
    pub endpoints: usize,
    pub conns: usize,
    pub clients: usize,
    pub ok: u64,
    pub errors: u64,
    /// Up to a few distinct error messages, with how often each was seen.
    pub error_samples: Vec<(String, u64)>,
    pub elapsed: Duration,
    /// Latencies of the successful requests, sorted, in nanoseconds.
    pub latencies: Vec<u64>,
    /// When the run started, by the wall clock.
    pub started: SystemTime,
    /// Each successful request as (nanoseconds from `started` to its answer, its latency in
    /// nanoseconds), in the order of the answers: to split a run by what happened meanwhile.
    pub samples: Vec<(u64, u64)>,
}

impl Report {
    pub fn requests_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q` quantile (0..=1) of the latencies, nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }

    pub fn mean(&self) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let sum: u128 = self.latencies.iter().map(|&n| n as u128).sum();
        Duration::from_nanos((sum / self.latencies.len() as u128) as u64)
    }

    /// [`Report::samples`] as text, one line per request: the Unix time of its answer in seconds
    /// and its latency in milliseconds.
    pub fn samples_text(&self) -> String {
        let base = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut out = String::with_capacity(self.samples.len() * 28);
        for &(at, latency) in &self.samples {
            let t = base + Duration::from_nanos(at);
            out.push_str(&format!(
                "{}.{:06} {:.3}\n",
                t.as_secs(),
                t.subsec_micros(),
                latency as f64 / 1e6
            ));
        }
        out
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.latencies.last().copied().unwrap_or(0))
    }

    /// The human-readable summary, several lines.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} requests ({} failed) in {:.2} s over {} conns, {} clients, {} endpoints\n",
            self.op,
            self.ok + self.errors,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.conns,
            self.clients,
            self.endpoints,
        );
        s.push_str(&format!(
            "  requests/s {:.1}\n  latency ms: mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.requests_per_second(),
            ms(self.mean()),
            ms(self.quantile(0.50)),
            ms(self.quantile(0.90)),
            ms(self.quantile(0.99)),
            ms(self.quantile(0.999)),
            ms(self.max()),
        ));
        for (e, n) in &self.error_samples {
            s.push_str(&format!("  error ({n}x): {e}\n"));
        }
        s
    }

    /// One JSON object on one line, the same figures as [`Report::summary`].
    pub fn json(&self) -> String {
        format!(
            concat!(
                "{{\"op\":\"{}\",\"endpoints\":{},\"conns\":{},\"clients\":{},\"total\":{},",
                "\"ok\":{},\"errors\":{},\"seconds\":{:.4},\"rps\":{:.1},\"mean_ms\":{:.4},",
                "\"p50_ms\":{:.4},\"p90_ms\":{:.4},\"p99_ms\":{:.4},\"p999_ms\":{:.4},",
                "\"max_ms\":{:.4}}}"
            ),
            self.op,
            self.endpoints,
            self.conns,
            self.clients,
            self.ok + self.errors,
            self.ok,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.requests_per_second(),
            ms(self.mean()),
            ms(self.quantile(0.50)),
            ms(self.quantile(0.90)),
            ms(self.quantile(0.99)),
            ms(self.quantile(0.999)),
            ms(self.max()),
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (0..=1) of sorted nanoseconds, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Duration::from_nanos(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// xorshift64*: enough to spread keys, with no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Never zero, and distinct seeds far apart.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The value of one request: `value` as it is, or random bytes of its length.
fn value_for(spec: &Spec, value: &[u8], rng: &mut Rng) -> Vec<u8> {
    if !spec.random_values {
        return value.to_vec();
    }
    let mut v = Vec::with_capacity(value.len() + 8);
    while v.len() < value.len() {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(value.len());
    v
}

/// Key `n` of a key space: `n` in decimal, zero-padded to `size` bytes.
pub fn key(n: u64, size: usize) -> Vec<u8> {
    format!("{n:0size$}").into_bytes()
}

/// Runs `spec` on new connections. Fails only if the connections cannot be opened; failed
/// requests are counted in the report.
pub async fn run(spec: &Spec) -> Result<Report, String> {
    spec.check()?;
    let conns = connect(&spec.endpoints, spec.conns).await?;
    Ok(run_on(spec, &conns).await)
}

struct ClientResult {
    latencies: Vec<u64>,
    /// Nanoseconds from the run's start to each answer, as `latencies`.
    answered: Vec<u64>,
    errors: u64,
    error_samples: Vec<(String, u64)>,
}

/// Runs `spec` on connections that are already open (`spec.conns` is only reported).
pub async fn run_on(spec: &Spec, conns: &[Conn]) -> Report {
    let next = Arc::new(AtomicU64::new(0));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let value = Arc::new(vec![b'v'; spec.val_size]);
    let started = SystemTime::now();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(spec.clients);
    for c in 0..spec.clients {
        let kv = conns[c % conns.len()].clone();
        let spec = spec.clone();
        let next = next.clone();
        let value = value.clone();
        let rng = Rng::new(seed ^ (c as u64 + 1));
        tasks.push(tokio::spawn(client(kv, spec, next, value, rng, start)));
    }
    let mut latencies = Vec::with_capacity(spec.total as usize);
    let mut samples = Vec::with_capacity(spec.total as usize);
    let mut errors = 0;
    let mut error_samples: Vec<(String, u64)> = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => {
                samples.extend(r.answered.iter().copied().zip(r.latencies.iter().copied()));
                latencies.extend(r.latencies);
                errors += r.errors;
                for (e, n) in r.error_samples {
                    note_error(&mut error_samples, e, n);
                }
            }
            Err(e) => {
                errors += 1;
                note_error(&mut error_samples, format!("client task failed: {e}"), 1);
            }
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    samples.sort_unstable();
    Report {
        op: spec.op.name(),
        endpoints: spec.endpoints.len(),
        conns: spec.conns,
        clients: spec.clients,
        ok: latencies.len() as u64,
        errors,
        error_samples,
        elapsed,
        latencies,
        started,
        samples,
    }
}

fn note_error(samples: &mut Vec<(String, u64)>, e: String, n: u64) {
    if let Some(s) = samples.iter_mut().find(|(m, _)| *m == e) {
        s.1 += n;
    } else if samples.len() < KEPT_ERRORS {
        samples.push((e, n));
    }
}

async fn client(
    kv: Conn,
    spec: Spec,
    next: Arc<AtomicU64>,
    value: Arc<Vec<u8>>,
    mut rng: Rng,
    start: Instant,
) -> ClientResult {
    let mut r = ClientResult {
        latencies: Vec::with_capacity((spec.total as usize / spec.clients) + 1),
        answered: Vec::with_capacity((spec.total as usize / spec.clients) + 1),
        errors: 0,
        error_samples: Vec::new(),
    };
    while next.fetch_add(1, Ordering::Relaxed) < spec.total {
        let k = key(rng.below(spec.key_space), spec.key_size);
        let t = Instant::now();
        let result = match &spec.op {
            Op::Put => kv
                .unary::<_, PutResponse>(
                    "/etcdserverpb.KV/Put",
                    &PutRequest {
                        key: k,
                        value: value_for(&spec, &value, &mut rng),
                        ..Default::default()
                    },
                )
                .await
                .map(drop),
            Op::Range { serializable, key } => kv
                .unary::<_, RangeResponse>(
                    "/etcdserverpb.KV/Range",
                    &RangeRequest {
                        key: key.clone().unwrap_or(k),
                        serializable: *serializable,
                        ..Default::default()
                    },
                )
                .await
                .map(drop),
            Op::TxnPut => kv
                .unary::<_, TxnResponse>(
                    "/etcdserverpb.KV/Txn",
                    &TxnRequest {
                        compare: vec![],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: k,
                                value: value_for(&spec, &value, &mut rng),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![],
                    },
                )
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                r.latencies.push(t.elapsed().as_nanos() as u64);
                r.answered.push(start.elapsed().as_nanos() as u64);
            }
            Err(e) => {
                r.errors += 1;
                note_error(&mut r.error_samples, e, 1);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_nanos(500));
        assert_eq!(quantile(&v, 0.99), Duration::from_nanos(990));
        assert_eq!(quantile(&v, 0.999), Duration::from_nanos(999));
        assert_eq!(quantile(&v, 1.0), Duration::from_nanos(1000));
        assert_eq!(quantile(&[7], 0.0), Duration::from_nanos(7));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn keys_are_padded_and_checked() {
        assert_eq!(key(42, 8), b"00000042");
        let mut spec = Spec {
            op: Op::Put,
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 1,
            clients: 1,
            total: 1,
            key_size: 8,
            val_size: 8,
            key_space: 100_000_000,
            random_values: false,
        };
        assert!(spec.check().is_ok());
        spec.key_space = 100_000_001;
        assert!(spec.check().unwrap_err().contains("too small"));
        spec.key_space = 1;
        spec.endpoints = vec!["https://x:1".into()];
        assert!(spec.check().unwrap_err().contains("https"));
    }

    #[test]
    fn random_values_have_the_size_and_differ() {
        let mut spec = Spec {
            op: Op::Put,
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 1,
            clients: 1,
            total: 1,
            key_size: 8,
            val_size: 8,
            key_space: 1,
            random_values: false,
        };
        let mut rng = Rng::new(1);
        let template = vec![b'v'; 13];
        assert_eq!(value_for(&spec, &template, &mut rng), template);
        spec.random_values = true;
        let (a, b) = (
            value_for(&spec, &template, &mut rng),
            value_for(&spec, &template, &mut rng),
        );
        assert_eq!((a.len(), b.len()), (13, 13));
        assert_ne!(a, b);
        assert_ne!(a, template);
    }

    #[test]
    fn samples_are_unix_seconds_and_milliseconds() {
        let report = Report {
            op: "put",
            endpoints: 1,
            conns: 1,
            clients: 1,
            ok: 2,
            errors: 0,
            error_samples: vec![],
            elapsed: Duration::from_millis(3),
            latencies: vec![1_000_000, 2_500_000],
            started: std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            samples: vec![(1_000_000, 1_000_000), (3_000_000, 2_500_000)],
        };
        assert_eq!(
            report.samples_text(),
            "1700000000.251000 1.000\n1700000000.253000 2.500\n"
        );
    }

    #[test]
    fn endpoints_default_to_http() {
        assert_eq!(endpoint_url("a:1").unwrap(), "http://a:1");
        assert_eq!(endpoint_url("http://a:1").unwrap(), "http://a:1");
    }
}
