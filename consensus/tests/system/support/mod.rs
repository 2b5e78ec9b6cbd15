//! Members started for real through `scripts/start-node.sh`, the real `etcdctl`, a real etcd, and
//! certificates for the seed's https configuration. Everything started here is stopped by PID.

pub mod addresses;
pub mod disk;
pub mod history;
pub mod loop_fs;
pub mod lossy_fs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the test build put the three binaries (start-node.sh uses them via ETCDRS_BIN_DIR).
pub fn bin_dir() -> PathBuf {
    let consensus = PathBuf::from(env!("CARGO_BIN_EXE_consensus"));
    let dir = consensus
        .parent()
        .expect("binary has a directory")
        .to_path_buf();
    for b in ["peer-gateway", "client-gateway"] {
        assert!(
            dir.join(b).exists(),
            "{b} is not built in {}: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            dir.display()
        );
    }
    dir
}

/// A CA and one certificate for every test host, used for clients and peers as the seed does.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_certs(dir: &Path, hosts: &[&str]) -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "etcd-rs test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    names.push("localhost".into());
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "etcd-rs test member");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    std::fs::write(&certs.ca, ca_cert.pem()).unwrap();
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    certs
}

/// One member: its etcd.conf, its start-node.sh process, and how to reach it.
pub struct Member {
    pub name: String,
    pub conf: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The endpoint etcdctl uses, and the TLS flags it needs.
    pub endpoint: String,
    pub tls: Vec<String>,
    /// More environment for the member's processes (failpoints).
    pub env: Vec<(String, String)>,
    script: Option<Child>,
}

impl Member {
    pub fn new(
        name: &str,
        conf: PathBuf,
        data_dir: PathBuf,
        endpoint: String,
        tls: Vec<String>,
    ) -> Member {
        let log = conf.with_extension("log");
        Member {
            name: name.into(),
            conf,
            data_dir,
            log,
            endpoint,
            tls,
            env: Vec::new(),
            script: None,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(repo().join("scripts/start-node.sh"))
            .arg(&self.conf)
            .env("ETCDRS_BIN_DIR", bin_dir())
            .env("RUST_LOG", "info,raft=info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting scripts/start-node.sh");
        self.script = Some(child);
    }

    /// Whether this member's start-node.sh has exited (it gives up when consensus cannot start).
    pub fn script_exited(&mut self) -> bool {
        match &mut self.script {
            Some(script) => !matches!(script.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// PIDs from `<data-dir>/member.pids`, by process name.
    pub fn pids(&self) -> HashMap<String, i32> {
        let text = std::fs::read_to_string(self.data_dir.join("member.pids")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (name, pid) = l.split_once(' ')?;
                Some((name.to_string(), pid.trim().parse().ok()?))
            })
            .collect()
    }

    pub fn pid(&self, process: &str) -> i32 {
        *self
            .pids()
            .get(process)
            .unwrap_or_else(|| panic!("no pid for {process} of {}", self.name))
    }

    /// kill -9 of one process of this member.
    pub fn kill9(&self, process: &str) -> i32 {
        let pid = self.pid(process);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        pid
    }

    /// kill -9 of the script and all three processes, as a crashed host would.
    pub fn kill9_all(&mut self) {
        // The script first: it restarts a consensus that dies, so PIDs read before it is gone
        // can miss the newest one.
        if let Some(mut script) = self.script.take() {
            let _ = script.kill();
            let _ = script.wait();
        }
        let pids = self.pids();
        for pid in pids.values() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    /// SIGTERM to the script, which stops all three; SIGKILL what is left after 10 s.
    pub fn stop(&mut self) {
        let pids = self.pids();
        if let Some(mut script) = self.script.take() {
            let _ = kill(Pid::from_raw(script.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = script.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = script.kill();
            let _ = script.wait();
        }
        for (name, pid) in &pids {
            if name != "start-node" {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.endpoint, &self.tls, args)
    }

    /// etcdctl that must succeed; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} against {} failed: {}{}\n--- member log tail ---\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Every line the member's processes logged so far that contains `needle`.
    pub fn log_lines(&self, needle: &str) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        lines.join("\n")
    }

    /// Whether anything the member's processes logged so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logged_times(needle) > 0
    }

    /// How many times the member's processes logged `needle` so far, over all its starts.
    pub fn logged_times(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |text| text.matches(needle).count())
    }

    /// `endpoint status -w json` of this member, parsed.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get(0)?.get("Status").cloned()
    }

    pub fn leader_and_term(&self) -> Option<(u64, u64)> {
        let s = self.status()?;
        Some((s["leader"].as_u64()?, s["raftTerm"].as_u64()?))
    }

    pub fn member_id(&self) -> Option<u64> {
        self.status()?["header"]["member_id"].as_u64()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(tls)
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("running etcdctl (apt-get install etcd-client)")
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real etcd 3.4 member (Debian's etcd-server), the reference the comparisons run against;
/// stopped by PID when dropped.
pub struct Etcd(std::process::Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a single-member etcd on `host` (ports 2379 and 2380), data and log in `dir`.
pub fn start_etcd(dir: &Path, host: &str) -> Etcd {
    // Talking to somebody else's process would compare against the wrong state.
    for port in [2379, 2380] {
        assert!(
            std::net::TcpListener::bind((host, port)).is_ok(),
            "{host}:{port} is already in use: another test run or etcd is there"
        );
    }
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let child = Command::new("etcd")
        .args([
            "--name=reference",
            &format!("--data-dir={}", dir.join("etcd-data").display()),
            &format!("--listen-client-urls=http://{host}:2379"),
            &format!("--advertise-client-urls=http://{host}:2379"),
            &format!("--listen-peer-urls=http://{host}:2380"),
            &format!("--initial-advertise-peer-urls=http://{host}:2380"),
            &format!("--initial-cluster=reference=http://{host}:2380"),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting etcd (apt-get install etcd-server)");
    Etcd(child)
}

/// A single-member etcd on `etcd_host` and one of ours on `ours_host`, both healthy; etcd's
/// client endpoint comes with them.
pub fn ours_and_etcd(dir: &Path, ours_host: &str, etcd_host: &str) -> (Member, Etcd, String) {
    let etcd = start_etcd(dir, etcd_host);
    let ours = single_http_member(dir, "ours", ours_host, "");
    let etcd_endpoint = format!("http://{etcd_host}:2379");
    for endpoint in [ours.endpoint.clone(), etcd_endpoint.clone()] {
        eventually(
            Duration::from_secs(30),
            &format!("{endpoint} healthy"),
            || {
                etcdctl(&endpoint, &[], &["endpoint", "health"])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }
    (ours, etcd, etcd_endpoint)
}

/// A started member with plain-http URLs on `host` (ports 2379 and 2380), its etcd.conf and data
/// dir in `dir`. `cluster` is its `ETCD_INITIAL_CLUSTER`; `extra` holds more `KEY="value"` lines.
pub fn http_member(dir: &Path, name: &str, host: &str, cluster: &str, extra: &str) -> Member {
    let mut m = unstarted_http_member(dir, name, host, cluster, extra);
    m.start();
    m
}

/// `http_member`, configured but not started yet (to set `env` first).
pub fn unstarted_http_member(
    dir: &Path,
    name: &str,
    host: &str,
    cluster: &str,
    extra: &str,
) -> Member {
    unstarted_http_member_advertising(dir, name, host, host, cluster, extra)
}

/// `unstarted_http_member` that listens for peers on `host:2380` but advertises
/// `peer_host:2380` (a proxy in front of it).
pub fn unstarted_http_member_advertising(
    dir: &Path,
    name: &str,
    host: &str,
    peer_host: &str,
    cluster: &str,
    extra: &str,
) -> Member {
    let data = dir.join(format!("{name}-data"));
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "ETCD_NAME=\"{name}\"\nETCD_DATA_DIR=\"{data}\"\n\
             ETCD_LISTEN_CLIENT_URLS=\"http://{host}:2379\"\nETCD_ADVERTISE_CLIENT_URLS=\"http://{host}:2379\"\n\
             ETCD_LISTEN_PEER_URLS=\"http://{host}:2380\"\nETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://{peer_host}:2380\"\n\
             ETCD_INITIAL_CLUSTER=\"{cluster}\"\n{extra}",
            data = data.display()
        ),
    )
    .unwrap();
    Member::new(name, conf, data, format!("http://{host}:2379"), vec![])
}

/// Started plain-http members named `{prefix}0`, `{prefix}1`, ... on `hosts`, one cluster, each
/// with `extra` in its etcd.conf and `env` (failpoints) in its environment; returns once every
/// member is healthy.
pub fn http_cluster(
    dir: &Path,
    prefix: &str,
    hosts: &[&str],
    extra: &str,
    env: &[(&str, &str)],
) -> Vec<Member> {
    let cluster = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| format!("{prefix}{i}=http://{h}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<Member> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut m = unstarted_http_member(dir, &format!("{prefix}{i}"), h, &cluster, extra);
            m.env
                .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            m.start();
            m
        })
        .collect();
    for m in &members {
        wait_healthy(m, Duration::from_secs(60));
    }
    members
}

/// Waits until `etcdctl endpoint health` through the member succeeds.
pub fn wait_healthy(m: &Member, timeout: Duration) {
    eventually(timeout, &format!("{} to be healthy", m.name), || {
        m.etcdctl(&["endpoint", "health"])
            .status
            .success()
            .then_some(())
    });
}

/// `http_member` alone in its cluster.
pub fn single_http_member(dir: &Path, name: &str, host: &str, extra: &str) -> Member {
    http_member(
        dir,
        name,
        host,
        &format!("{name}=http://{host}:2380"),
        extra,
    )
}

/// The member's HashKV at `revision` (`etcdctl endpoint hashkv --rev`; 0: the newest), once it
/// answers (a pass over a large key space in a debug build takes a while).
pub fn hash_kv(m: &Member, revision: i64) -> u64 {
    eventually(Duration::from_secs(120), "a hash", || {
        let out = m.etcdctl(&[
            "endpoint",
            "hashkv",
            "--command-timeout=60s",
            &format!("--rev={revision}"),
            "-w",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v[0]["HashKV"]["hash"].as_u64()
    })
}

/// Every member's HashKV at `revision` is the same; returns it.
pub fn assert_hash_kv_agree(members: &[Member], revision: i64) -> u64 {
    let hashes: Vec<u64> = members.iter().map(|m| hash_kv(m, revision)).collect();
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV at {revision}: {hashes:?}"
    );
    hashes[0]
}

/// Puts `kv(i)` for every `i` below `puts` through `endpoints` (the `etcd-client` crate's
/// balancing), from `writers` concurrent writers; panics on any error.
pub fn put_concurrently(
    endpoints: &[String],
    writers: usize,
    puts: usize,
    kv: impl Fn(usize) -> (String, String) + Send + Sync + 'static,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let kv = std::sync::Arc::new(kv);
    rt.block_on(async {
        let client = etcd_client::Client::connect(endpoints, None)
            .await
            .expect("connecting");
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (mut c, kv) = (client.clone(), kv.clone());
                tokio::spawn(async move {
                    for i in (w..puts).step_by(writers) {
                        let (key, value) = kv(i);
                        c.put(key.clone(), value, None)
                            .await
                            .unwrap_or_else(|e| panic!("putting {key}: {e}"));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a writer");
        }
    });
}

/// The index in `members` of the leader, as the members at `asking` report it.
pub fn leader_index(members: &[Member], asking: &[usize]) -> usize {
    let leader = eventually(Duration::from_secs(15), "a leader", || {
        asking
            .iter()
            .find_map(|&i| members[i].leader_and_term().map(|(l, _)| l))
            .filter(|l| *l != 0)
    });
    members
        .iter()
        .position(|m| m.member_id() == Some(leader))
        .unwrap_or_else(|| panic!("leader {leader:x} is none of the members"))
}

/// Waits until none of `pids` runs (gone, or a zombie whose files are closed).
pub fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for pid in pids {
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            if stat.is_empty() || state == Some(Some('Z')) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} still runs: {stat}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// splitmix64: a small seeded generator, the same everywhere in the tests.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
