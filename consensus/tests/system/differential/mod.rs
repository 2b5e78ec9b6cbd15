//! The differential test: one seeded random sequence of KV requests (puts, deletes, ranges with
//! every option, history reads, txns with every compare and nested txns, compactions, and the
//! requests etcd refuses) sent to a real etcd 3.4.23 member and to one member of ours, every
//! answer compared field by field (ignoring only the cluster ID, member ID and raft term of the
//! response header); then the same sequence sent round-robin through the three members of a
//! cluster of ours, which must answer exactly as etcd did.
//!
//! Requests go through the `etcd-client` crate, except those it cannot express (sort orders and
//! targets outside its enums), which go through raw gRPC. `DIFF_SEED` and `DIFF_OPS` change the
//! seed and the length of the sequence; `DIFF_SINGLE_ONLY` skips the cluster.
//!
//! Its hosts (`support::addresses`): etcd on `DIFF_ETCD`, our member on `DIFF_OURS`, our cluster
//! on `DIFF_CLUSTER`, each with client port 2379 and peer port 2380, plain http.
//!
//! By topic: `ops` (the operations and their etcd-client form), `raw` (raw gRPC messages),
//! `answers` (what is compared), `endpoint` (one server), `generator` (the seeded sequence); the
//! processes and the test itself here.

mod answers;
mod endpoint;
mod generator;
mod ops;
mod raw;

use std::time::{Duration, Instant};

use answers::Answer;
use endpoint::Endpoint;
use generator::{Generator, Rng};
use ops::{B, End, Op, OpSpec, RangeSpec};

use crate::support::addresses::{DIFF_CLUSTER as CLUSTER, DIFF_ETCD as ETCD, DIFF_OURS as OURS};
use crate::support::*;

const DEFAULT_SEED: u64 = 0x5eed_e7cd;
const DEFAULT_OPS: usize = 5000;
/// etcd's default `--max-request-bytes`, used by both sides here.
const MAX_REQUEST_BYTES: usize = 1536 * 1024;

// --------------------------------------------------------------------------------- processes

fn our_member(dir: &std::path::Path, name: &str, host: &str, cluster: &str, token: &str) -> Member {
    http_member(
        dir,
        name,
        host,
        cluster,
        &format!("ETCD_INITIAL_CLUSTER_TOKEN=\"{token}\"\nETCD_INITIAL_CLUSTER_STATE=\"new\"\n"),
    )
}

fn wait_healthy(endpoint: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("{endpoint} healthy"),
        || {
            etcdctl(endpoint, &[], &["endpoint", "health"])
                .status
                .success()
                .then_some(())
        },
    );
}

/// The length of a request ID's varint for a member: etcd's IDs (and ours) carry the member ID's
/// low 16 bits in their top bits, and the size etcd checks includes that varint.
fn id_varint_len(member_id: u64) -> usize {
    let id = ((member_id & 0xffff) << 48) | (1 << 47);
    (64 - id.leading_zeros()).div_ceil(7) as usize
}

/// A cluster token for which every member ID of `hosts` has the request-ID length `want`, so
/// that etcd's exact size limit falls on the same request on both sides.
fn token_for(hosts: &[&str], want: usize) -> String {
    let urls: Vec<String> = hosts.iter().map(|h| format!("http://{h}:2380")).collect();
    (0..1000)
        .map(|i| format!("differential-{i}"))
        .find(|token| {
            urls.iter().all(|u| {
                id_varint_len(consensus::ids::member_id(std::slice::from_ref(u), token)) == want
            })
        })
        .expect("a token with matching member ID lengths")
}

/// What the sequence exercised, by etcd's answers: how many of each kind, and each error.
fn coverage(ops: &[Op], answers: &[Answer]) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (op, a) in ops.iter().zip(answers) {
        let kind = match op {
            Op::Get(r) | Op::RawRange(r) if r.revision != 0 => "history read",
            Op::Get(r) | Op::RawRange(r) if r.sort.is_some() => "sorted range",
            Op::Get(_) | Op::RawRange(_) => "range",
            Op::Put(_) | Op::BigPut { .. } => "put",
            Op::Delete(_) => "delete",
            Op::Txn(t)
                if t.success
                    .iter()
                    .chain(&t.failure)
                    .any(|o| matches!(o, OpSpec::Txn(_))) =>
            {
                "nested txn"
            }
            Op::Txn(_) => "txn",
            Op::Compact { .. } => "compaction",
            Op::RawTxn { .. } => "raw txn",
        };
        let outcome = match a {
            Answer::Error { message, .. } => message.clone(),
            Answer::Txn {
                succeeded: true, ..
            } => "succeeded".into(),
            Answer::Txn { .. } => "failed compares".into(),
            _ => "ok".into(),
        };
        *counts.entry(format!("{kind}: {outcome}")).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("  {n:5} {k}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn differences_report(differences: &[String], total: usize) -> String {
    let shown = differences.len().min(15);
    format!(
        "{} of {total} operations answered differently (first {shown} shown):\n{}",
        differences.len(),
        differences[..shown].join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_as_etcd() {
    let seed = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let total = std::env::var("DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_OPS);
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let _etcd = start_etcd(tmp.path(), ETCD);
    let etcd_url = format!("http://{ETCD}:2379");
    wait_healthy(&etcd_url);
    let mut etcd = Endpoint::connect("etcd", &etcd_url).await;

    // etcd's size limit depends on its member ID's low bits; give ours IDs of the same length.
    let etcd_member = etcd
        .client
        .status()
        .await
        .expect("etcd status")
        .header()
        .expect("a header")
        .member_id();
    let id_len = id_varint_len(etcd_member);
    let token = token_for(&[OURS], id_len);
    let single = our_member(
        tmp.path(),
        "single",
        OURS,
        &format!("single=http://{OURS}:2380"),
        &token,
    );
    wait_healthy(&single.endpoint);
    let mut ours = Endpoint::connect("ours", &single.endpoint).await;

    // Phase 1: every operation to etcd and to our member at once, answers compared.
    let mut generator = Generator {
        rng: Rng(seed),
        revision: 1,
        compacted: 0,
        max_request_bytes: MAX_REQUEST_BYTES,
        id_len,
        queued: Vec::new(),
    };
    let mut ops = Vec::with_capacity(total);
    let mut expected = Vec::with_capacity(total);
    let mut differences = Vec::new();
    for i in 0..total {
        let op = generator.next(i, total);
        let (theirs, mine) = tokio::join!(etcd.run(&op), ours.run(&op));
        generator.observe(&op, &theirs);
        if let Op::BigPut { key, len } = &op {
            // The probes must straddle etcd's limit, or they test nothing.
            let accepted = !matches!(theirs, Answer::Error { .. });
            let exact = generator.exact_value_len(&key.0);
            assert_eq!(
                accepted,
                *len <= exact,
                "etcd answered a put of {len} value bytes (limit computed at {exact}): {theirs:?}"
            );
        }
        if theirs != mine {
            differences.push(format!(
                "#{i} {op:?}\n    etcd: {theirs:?}\n    ours: {mine:?}"
            ));
        }
        ops.push(op);
        expected.push(theirs);
    }
    let phase1 = started.elapsed();
    assert!(
        differences.is_empty(),
        "seed {seed}: {}\n--- our member's log ---\n{}",
        differences_report(&differences, total),
        single.log_tail()
    );

    // What etcd 3.4 cannot answer (it crashes): an unknown sort target it has to sort by. We
    // refuse it as etcd 3.5 does.
    let crashing = Op::RawRange(RangeSpec {
        key: B::from("a"),
        end: End::Prefix,
        limit: 0,
        revision: 0,
        sort: Some((5, 0)),
        serializable: false,
        keys_only: false,
        count_only: false,
        min_mod: 0,
        max_mod: 0,
        min_create: 0,
        max_create: 0,
    });
    assert_eq!(
        ours.run(&crashing).await,
        Answer::Error {
            code: tonic::Code::InvalidArgument,
            message: "etcdserver: invalid sort option".into()
        }
    );
    drop(ours);
    // Dropping a member stops it (by PID), once.
    drop(single);
    eprintln!(
        "differential: etcd's answers\n{}",
        coverage(&ops, &expected)
    );
    if std::env::var("DIFF_SINGLE_ONLY").is_ok() {
        return;
    }

    // Phase 2: the same sequence round-robin through a cluster of three; a serializable read
    // first waits (by a linearizable read through the same member) until that member caught up,
    // as it would otherwise legitimately answer from an older state.
    let token = token_for(&CLUSTER, id_len);
    let cluster_spec = CLUSTER
        .iter()
        .enumerate()
        .map(|(i, h)| format!("m{i}=http://{h}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<Member> = CLUSTER
        .iter()
        .enumerate()
        .map(|(i, h)| our_member(tmp.path(), &format!("m{i}"), h, &cluster_spec, &token))
        .collect();
    for m in &members {
        wait_healthy(&m.endpoint);
    }
    let mut endpoints = Vec::new();
    for m in &members {
        endpoints.push(Endpoint::connect(&m.name, &m.endpoint).await);
    }
    let phase2_started = Instant::now();
    let barrier = Op::Get(RangeSpec {
        key: B::from("a"),
        end: End::Single,
        limit: 0,
        revision: 0,
        sort: None,
        serializable: false,
        keys_only: false,
        count_only: true,
        min_mod: 0,
        max_mod: 0,
        min_create: 0,
        max_create: 0,
    });
    for (i, (op, theirs)) in ops.iter().zip(&expected).enumerate() {
        let member = &mut endpoints[i % 3];
        if op.serializable() {
            member.run(&barrier).await;
        }
        let mine = member.run(op).await;
        if *theirs != mine {
            differences.push(format!(
                "#{i} via {} {op:?}\n    etcd: {theirs:?}\n    ours: {mine:?}",
                member.name
            ));
        }
    }
    let phase2 = phase2_started.elapsed();
    let logs: Vec<String> = members
        .iter()
        .map(|m| format!("--- {} ---\n{}", m.name, m.log_tail()))
        .collect();
    assert!(
        differences.is_empty(),
        "seed {seed}, cluster: {}\n{}",
        differences_report(&differences, total),
        logs.join("\n")
    );
    eprintln!(
        "differential: {total} operations, seed {seed}: phase 1 {phase1:?}, cluster {phase2:?}, \
         total {:?}",
        started.elapsed()
    );
}
