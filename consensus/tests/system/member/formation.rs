//! How a cluster forms: three members from the seed's etcd.conf files, on 127.0.0.1, 127.0.0.2
//! and 127.0.0.3 as three hosts with the same ports (2379 for clients over https, 2380 for
//! peers) and the seed's security block, each host also serving plain http on 127.0.1.x:2379 as
//! the seed's `http://127.0.0.1:2379` does next to its https URL; and a member started with no
//! configuration at all, on 127.0.0.1:2379.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use consensus::ids;

use super::value_of;
use crate::support::addresses::{
    ALLOWED_CN, LOCALHOST, LOCALHOST_TURN, SEED_CLUSTER, SEED_PLAIN_HTTP,
};
use crate::support::*;

/// A seed-format etcd.conf: https on `host`, and plain http for clients on `local` too.
fn seed_conf(
    name: &str,
    (host, local): (&str, &str),
    data_dir: &std::path::Path,
    cluster: &str,
    certs: &Certs,
) -> String {
    format!(
        r#"#[Member]
ETCD_NAME="{name}"
ETCD_DATA_DIR="{data}"
ETCD_LISTEN_PEER_URLS="https://{host}:2380"
ETCD_LISTEN_CLIENT_URLS="https://{host}:2379,http://{local}:2379"

#[Clustering]
ETCD_INITIAL_ADVERTISE_PEER_URLS="https://{host}:2380"
ETCD_ADVERTISE_CLIENT_URLS="https://{host}:2379"
ETCD_INITIAL_CLUSTER="{cluster}"
ETCD_INITIAL_CLUSTER_TOKEN="etcd-cluster"
ETCD_INITIAL_CLUSTER_STATE="new"

#[Security]
ETCD_CERT_FILE="{cert}"
ETCD_KEY_FILE="{key}"
ETCD_TRUSTED_CA_FILE="{ca}"
ETCD_CLIENT_CERT_AUTH="true"
ETCD_PEER_CERT_FILE="{cert}"
ETCD_PEER_KEY_FILE="{key}"
ETCD_PEER_TRUSTED_CA_FILE="{ca}"
ETCD_PEER_CLIENT_CERT_AUTH="true"
"#,
        data = data_dir.display(),
        cert = certs.cert.display(),
        key = certs.key.display(),
        ca = certs.ca.display(),
    )
}

#[test]
fn three_member_cluster_from_seed_configs() {
    let _port = LOCALHOST_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let hosts = SEED_CLUSTER;
    let certs = make_certs(tmp.path(), &hosts);
    let names = ["etcd01", "etcd02", "etcd03"];
    let cluster = names
        .iter()
        .zip(hosts)
        .map(|(n, h)| format!("{n}=https://{h}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let tls = vec![
        format!("--cacert={}", certs.ca.display()),
        format!("--cert={}", certs.cert.display()),
        format!("--key={}", certs.key.display()),
    ];
    let mut members: Vec<Member> = names
        .iter()
        .zip(hosts.into_iter().zip(SEED_PLAIN_HTTP))
        .map(|(name, (host, local))| {
            let data_dir = tmp.path().join(name);
            let conf = tmp.path().join(format!("{name}.conf"));
            let text = seed_conf(name, (host, local), &data_dir, &cluster, &certs);
            std::fs::write(&conf, text).unwrap();
            Member::new(
                name,
                conf,
                data_dir,
                format!("https://{host}:2379"),
                tls.clone(),
            )
        })
        .collect();
    for m in &mut members {
        m.start();
    }
    for m in &members {
        wait_healthy(m, Duration::from_secs(60));
    }

    // The IDs are the brief's formula over the seed-format configuration.
    let expected: BTreeSet<u64> = hosts
        .iter()
        .map(|h| ids::member_id(&[format!("https://{h}:2380")], "etcd-cluster"))
        .collect();
    let cluster_id = ids::cluster_id(&expected.iter().copied().collect::<Vec<_>>());
    let list = eventually(Duration::from_secs(10), "every member published", || {
        let out = members[1].ctl_ok(&["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let ms = v["members"].as_array()?;
        ms.iter()
            .all(|m| m["clientURLs"].as_array().is_some_and(|c| !c.is_empty()))
            .then_some(v)
    });
    assert_eq!(list["header"]["cluster_id"].as_u64(), Some(cluster_id));
    let got: BTreeSet<u64> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["ID"].as_u64())
        .collect();
    assert_eq!(got, expected, "member list: {list}");
    for m in list["members"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let i = names.iter().position(|n| *n == name).expect("a known name");
        assert_eq!(m["peerURLs"][0], format!("https://{}:2380", hosts[i]));
        assert_eq!(m["clientURLs"][0], format!("https://{}:2379", hosts[i]));
    }
    let table = members[0].ctl_ok(&["member", "list"]);
    for id in &expected {
        assert!(table.contains(&ids::format_id(*id)), "{table}");
    }

    // Writes through member 1, reads from members 2 and 3.
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("seed/k{i:02}"), format!("v{i}"));
        members[0].ctl_ok(&["put", &k, &v]);
        acknowledged.push((k, v));
    }
    for m in &members[1..] {
        let all = m.ctl_ok(&["get", "seed/", "--prefix", "--keys-only"]);
        assert_eq!(all.lines().filter(|l| !l.is_empty()).count(), 20, "{all}");
        assert_eq!(value_of(m, "seed/k07", &[]).as_deref(), Some("v7"));
        eventually(
            Duration::from_secs(5),
            "a serializable read to catch up",
            || {
                (value_of(m, "seed/k19", &["--consistency=s"]).as_deref() == Some("v19"))
                    .then_some(())
            },
        );
    }
    // The plain http listener of the same member serves too.
    let http = etcdctl(
        &format!("http://{}:2379", SEED_PLAIN_HTTP[2]),
        &[],
        &["get", "seed/k03", "--print-value-only"],
    );
    assert!(http.status.success(), "{http:?}");
    assert_eq!(String::from_utf8_lossy(&http.stdout).trim(), "v3");
    let status = members[2].status().expect("endpoint status -w json");
    assert_eq!(status["header"]["cluster_id"].as_u64(), Some(cluster_id));
    assert!(status["header"]["revision"].as_i64().unwrap() >= 21);

    // kill -9 every process of the leader's member: the other two elect a leader and take writes.
    let old = leader_index(&members, &[0, 1, 2]);
    let old_id = members[old].member_id().unwrap();
    members[old].kill9_all();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new_leader = eventually(Duration::from_secs(15), "a new leader", || {
        members[survivors[0]]
            .leader_and_term()
            .map(|(l, _)| l)
            .filter(|l| *l != 0 && *l != old_id)
    });
    assert_ne!(new_leader, old_id);
    for i in 0..10 {
        let (k, v) = (format!("after/k{i:02}"), format!("a{i}"));
        members[survivors[1]].ctl_ok(&["put", &k, &v]);
        acknowledged.push((k, v));
    }
    members[old].start();
    wait_healthy(&members[old], Duration::from_secs(30));
    for (k, v) in &acknowledged {
        assert_eq!(
            value_of(&members[old], k, &[]).as_deref(),
            Some(v.as_str()),
            "acknowledged write {k} missing after restart"
        );
    }

    // kill -9 the leader's client gateway: etcdctl works again within 5 s, same leader and term.
    let leader = leader_index(&members, &[0, 1, 2]);
    let before = members[leader].leader_and_term().unwrap();
    let killed = members[leader].kill9("client-gateway");
    let start = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the client gateway to serve again",
        || value_of(&members[leader], "seed/k00", &[]).filter(|v| v == "v0"),
    );
    assert!(start.elapsed() <= Duration::from_secs(5));
    assert_ne!(members[leader].pid("client-gateway"), killed);
    assert_eq!(members[leader].leader_and_term().unwrap(), before);

    // kill -9 a follower's peer gateway, write meanwhile; the follower catches up once it is back.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let killed = members[follower].kill9("peer-gateway");
    members[leader].ctl_ok(&["put", "during/outage", "written"]);
    eventually(Duration::from_secs(10), "the follower to catch up", || {
        (value_of(&members[follower], "during/outage", &["--consistency=s"]).as_deref()
            == Some("written"))
        .then_some(())
    });
    assert_ne!(members[follower].pid("peer-gateway"), killed);
    assert_eq!(members[leader].leader_and_term().unwrap().0, before.0);

    // kill -9 a follower's consensus alone: it restarts from its data dir, the gateways it left
    // running register again, and it catches up with what was written meanwhile.
    let gateways = (
        members[follower].pid("peer-gateway"),
        members[follower].pid("client-gateway"),
    );
    let killed = members[follower].kill9("consensus");
    members[leader].ctl_ok(&["put", "during/restart", "still-written"]);
    eventually(
        Duration::from_secs(15),
        "the restarted consensus to catch up",
        || {
            (value_of(&members[follower], "during/restart", &[]).as_deref()
                == Some("still-written"))
            .then_some(())
        },
    );
    assert_ne!(members[follower].pid("consensus"), killed);
    assert_eq!(
        (
            members[follower].pid("peer-gateway"),
            members[follower].pid("client-gateway")
        ),
        gateways,
        "the gateways should have stayed up and registered again"
    );
    for (k, v) in &acknowledged {
        assert_eq!(
            value_of(&members[follower], k, &[]).as_deref(),
            Some(v.as_str())
        );
    }

    for m in &mut members {
        m.stop();
    }
}

#[test]
fn no_configuration_starts_one_member_on_2379() {
    let _port = LOCALHOST_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(tmp.path().join("member.log")).unwrap();
    let script = std::process::Command::new(repo().join("scripts/start-node.sh"))
        .current_dir(tmp.path())
        .env("ETCDRS_BIN_DIR", bin_dir())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut member = Member::new(
        "default",
        tmp.path().join("unused.conf"),
        tmp.path().join("default.etcd"),
        format!("{LOCALHOST}:2379"),
        vec![],
    );
    member.log = tmp.path().join("member.log");
    let script_pid = script.id() as i32;
    let stop = scopeguard(script);
    wait_healthy(&member, Duration::from_secs(30));
    // etcdctl with no --endpoints talks to 127.0.0.1:2379.
    let put = std::process::Command::new("etcdctl")
        .args(["put", "greeting", "hello"])
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}\n{}", member.log_tail());
    assert_eq!(value_of(&member, "greeting", &[]).as_deref(), Some("hello"));
    let list = member.ctl_ok(&["member", "list"]);
    let id = ids::member_id(&["http://localhost:2380".into()], "etcd-cluster");
    assert!(list.contains(&ids::format_id(id)), "{list}");
    assert!(list.contains("default"), "{list}");
    assert!(tmp.path().join("default.etcd").is_dir());
    assert_eq!(member.pids().get("start-node"), Some(&script_pid));

    // kill -9 of the supervisor alone takes the member down with it: no orphan keeps the port
    // or the data dir.
    let pids = member.pids();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(script_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    for process in ["consensus", "peer-gateway", "client-gateway"] {
        let pid = pids[process];
        eventually(
            Duration::from_secs(10),
            &format!("{process} to stop with start-node.sh"),
            || (!alive(pid)).then_some(()),
        );
    }
    drop(stop);
}

/// Whether a process runs (a zombie waiting for its parent to reap it does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Stops the script (SIGTERM; it stops its three processes) when the test ends, even on panic.
fn scopeguard(child: std::process::Child) -> impl Drop {
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Guard(child)
}

/// `ETCD_PEER_CERT_ALLOWED_CN` on one member of two: while it names a CN the other member's
/// certificate does not carry, the TLS handshake is refused both ways (no leader), the member
/// logs why and counts it in `/metrics`; restarted allowing that CN, the two form a cluster.
#[test]
fn peer_cert_allowed_cn_keeps_other_certificates_out() {
    let tmp = tempfile::tempdir().unwrap();
    // One certificate for both hosts, CN "etcd-rs test member" (as the seed's members share one).
    let certs = make_certs(tmp.path(), &ALLOWED_CN);
    let cluster = ALLOWED_CN
        .iter()
        .enumerate()
        .map(|(i, h)| format!("cn{i}=https://{h}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let conf = |i: usize, allowed: &str| {
        let (name, host) = (format!("cn{i}"), ALLOWED_CN[i]);
        let data = tmp.path().join(format!("{name}-data"));
        let path = tmp.path().join(format!("{name}.conf"));
        std::fs::write(
            &path,
            format!(
                "ETCD_NAME=\"{name}\"\nETCD_DATA_DIR=\"{data}\"\n\
                 ETCD_LISTEN_CLIENT_URLS=\"http://{host}:2379\"\n\
                 ETCD_ADVERTISE_CLIENT_URLS=\"http://{host}:2379\"\n\
                 ETCD_LISTEN_PEER_URLS=\"https://{host}:2380\"\n\
                 ETCD_INITIAL_ADVERTISE_PEER_URLS=\"https://{host}:2380\"\n\
                 ETCD_INITIAL_CLUSTER=\"{cluster}\"\n\
                 ETCD_PEER_CERT_FILE=\"{cert}\"\nETCD_PEER_KEY_FILE=\"{key}\"\n\
                 ETCD_PEER_TRUSTED_CA_FILE=\"{ca}\"\nETCD_PEER_CLIENT_CERT_AUTH=\"true\"\n\
                 ETCD_PEER_CERT_ALLOWED_CN=\"{allowed}\"\n",
                data = data.display(),
                cert = certs.cert.display(),
                key = certs.key.display(),
                ca = certs.ca.display(),
            ),
        )
        .unwrap();
        Member::new(&name, path, data, format!("http://{host}:2379"), vec![])
    };
    let mut strict = conf(0, "someone-else");
    let mut other = conf(1, "");
    strict.start();
    other.start();

    let refused = || {
        let body = metrics(ALLOWED_CN[0])?;
        body.lines()
            .find_map(|l| l.strip_prefix("etcdrs_peer_cert_refused_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|n| *n >= 2.0)
    };
    eventually(Duration::from_secs(60), "refusals in /metrics", refused);
    assert!(
        strict.logged("not allowed by --peer-cert-allowed-cn \"someone-else\""),
        "{}",
        strict.log_tail()
    );
    assert!(
        strict
            .leader_and_term()
            .is_none_or(|(leader, _)| leader == 0)
    );

    strict.stop();
    let mut strict = conf(0, "someone-else,etcd-rs test member");
    strict.start();
    wait_healthy(&strict, Duration::from_secs(60));
    wait_healthy(&other, Duration::from_secs(60));
    strict.ctl_ok(&["put", "k", "allowed"]);
    assert_eq!(value_of(&other, "k", &[]).as_deref(), Some("allowed"));
    strict.stop();
    other.stop();
}

/// The body of `GET /metrics` on `host`:2379, if it answers.
fn metrics(host: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, 2379)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {host}:2379\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    Some(raw)
}
