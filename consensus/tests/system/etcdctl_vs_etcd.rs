//! The same `etcdctl` commands against a real etcd 3.4.23 member and against one of ours: the
//! outputs (`-w json`, error lines, exit codes) must agree, except for what names the cluster
//! (cluster and member IDs, raft term) and the database's size.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::addresses::{ETCDCTL_ETCD as ETCD, ETCDCTL_OURS as OURS};
use crate::support::*;

/// Drops what differs between two clusters by design.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for k in [
                "cluster_id",
                "member_id",
                "ID",
                "raft_term",
                "dbSize",
                "dbSizeInUse",
                "leader",
                "raftIndex",
                "raftTerm",
                "raftAppliedIndex",
                "Endpoint",
                // Ours hashes its own storage, not bbolt's pages.
                "hash",
            ] {
                map.remove(k);
            }
            for (_, x) in map.iter_mut() {
                normalize(x);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// What a command printed, made comparable: JSON normalized, error lines without the log noise.
fn outcome(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let shown = match serde_json::from_str::<Value>(&stdout) {
        Ok(mut v) => {
            normalize(&mut v);
            v.to_string()
        }
        Err(_) => stdout,
    };
    let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("Error:"))
        .map(str::to_string)
        .collect();
    (out.status.code(), format!("{shown}{}", errors.join("\n")))
}

#[test]
fn etcdctl_outputs_match_real_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let (ours, _etcd, etcd_endpoint) = ours_and_etcd(tmp.path(), OURS, ETCD);

    let txn_ok = "mod(\"k1\") > \"0\"\n\nput k3 v3\nget k1\n\ndel k1\n\n";
    let txn_fail = "value(\"k1\") = \"nope\"\nversion(\"missing\") = \"0\"\n\nput k4 v4\n\nget k --prefix\nput k5 v5\n\n";
    let script: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["get", "k1", "-w", "json"], None),
        (vec!["put", "k1", "v1", "-w", "json"], None),
        (vec!["put", "k2", "v2", "--prev-kv", "-w", "json"], None),
        (vec!["put", "k1", "v1b", "--prev-kv", "-w", "json"], None),
        (vec!["put", "k0", "zz", "-w", "json"], None),
        (vec!["get", "k", "--prefix", "-w", "json"], None),
        (vec!["get", "k1", "--consistency=s", "-w", "json"], None),
        (
            vec!["get", "k", "--prefix", "--limit=1", "-w", "json"],
            None,
        ),
        (
            vec!["get", "k", "--prefix", "--keys-only", "-w", "json"],
            None,
        ),
        (
            vec!["get", "k", "--prefix", "--count-only", "-w", "json"],
            None,
        ),
        (
            vec![
                "get",
                "k",
                "--prefix",
                "--sort-by=VALUE",
                "--order=DESCEND",
                "-w",
                "json",
            ],
            None,
        ),
        (
            vec![
                "get",
                "k",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=ASCEND",
                "-w",
                "json",
            ],
            None,
        ),
        (vec!["get", "k0", "k2", "-w", "json"], None),
        (vec!["get", "k1", "--from-key", "-w", "json"], None),
        (vec!["get", "k1", "--rev=2", "-w", "json"], None),
        (vec!["get", "k1", "--rev=1000", "-w", "json"], None),
        (vec!["get", "", "-w", "json"], None),
        (vec!["put", "", "v", "-w", "json"], None),
        (vec!["del", "k2", "--prev-kv", "-w", "json"], None),
        (vec!["del", "nothing", "-w", "json"], None),
        (vec!["txn", "-w", "json"], Some(txn_ok)),
        (vec!["txn", "-w", "json"], Some(txn_fail)),
        (vec!["put", "k1", "again", "-w", "json"], None),
        (vec!["endpoint", "hashkv", "-w", "json"], None),
        (vec!["endpoint", "hashkv", "--rev=1000"], None),
        (vec!["compact", "3"], None),
        (vec!["endpoint", "hashkv", "-w", "json"], None),
        (vec!["endpoint", "hashkv", "--rev=2"], None),
        (vec!["get", "k1", "--rev=2", "-w", "json"], None),
        (vec!["get", "k1", "--rev=3", "-w", "json"], None),
        (vec!["compact", "2"], None),
        (vec!["del", "k", "--prefix", "-w", "json"], None),
        (vec!["get", "", "--prefix", "-w", "json"], None),
        (vec!["member", "list", "-w", "json"], None),
        (vec!["endpoint", "status", "-w", "json"], None),
        (vec!["endpoint", "health"], None),
        (vec!["defrag"], None),
        (vec!["move-leader", "1234"], None),
        (vec!["get", "", "--prefix", "-w", "json"], None),
    ];
    let mut differences = Vec::new();
    for (args, stdin) in &script {
        let theirs = outcome(&etcd_endpoint, args, *stdin);
        let mine = outcome(&ours.endpoint, args, *stdin);
        // Member names and URLs differ by design; compare the shape of the member list.
        let comparable = |o: &(Option<i32>, String)| {
            if args[0] == "member" || args[0] == "defrag" {
                (
                    o.0,
                    o.1.replace(OURS, "HOST")
                        .replace(ETCD, "HOST")
                        .replace("ours", "NAME")
                        .replace("reference", "NAME"),
                )
            } else if args[0] == "endpoint" && args[1] == "health" {
                (o.0, String::new())
            } else {
                o.clone()
            }
        };
        if comparable(&theirs) != comparable(&mine) {
            differences.push(format!(
                "etcdctl {args:?}\n  etcd: {theirs:?}\n  ours: {mine:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} commands differ:\n{}\n--- our log ---\n{}",
        differences.len(),
        script.len(),
        differences.join("\n"),
        ours.log_tail()
    );
}
