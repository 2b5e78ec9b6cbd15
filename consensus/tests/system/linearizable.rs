//! Linearizability under faults. Clients on every member of a three-member cluster put unique
//! values to a few keys and read them back (linearizable reads, through the `etcd-client` crate)
//! while peer gateways and consensus processes, the leader's among them, are killed with -9 and
//! brought back by `start-node.sh`. Afterwards every member is read once more, and each key's
//! history must be linearizable as a register: some order of the operations, each taking effect
//! between its call and its answer, in which every read returns the last value written. So no
//! acknowledged write is lost and no read is stale.
//!
//! The check is `support::history::linearizable`, which the nemesis shares.
//!
//! Its three members: `support::addresses::LINEARIZABLE`, ports 2379 and 2380, plain http.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::support::addresses::LINEARIZABLE as HOSTS;
use crate::support::history::{Kind, Op, linearizable, xorshift};
use crate::support::*;

const KEYS: usize = 3;
const CLIENTS_PER_MEMBER: usize = 2;
const RUN: Duration = Duration::from_secs(10);
/// How long a client waits for an answer before it counts the request as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
fn key_name(key: usize) -> String {
    format!("lin-{key}")
}

/// One client: random puts and reads on `KEYS` keys through `endpoint` until `until`.
async fn client(id: usize, endpoint: String, start: Instant, until: Instant) -> Vec<Op> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(REQUEST_TIMEOUT);
    let mut c = Client::connect([endpoint.as_str()], Some(options))
        .await
        .expect("connect");
    let mut rng = 0x1234_5678_9abc_def0 ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9);
    let mut ops = Vec::new();
    let mut seq = 0;
    while Instant::now() < until {
        let r = xorshift(&mut rng);
        let key = (r % KEYS as u64) as usize;
        let call = start.elapsed();
        if r & 0x100 == 0 {
            seq += 1;
            let v = (id as u64) * 1_000_000 + seq;
            let put =
                tokio::time::timeout(REQUEST_TIMEOUT, c.put(key_name(key), v.to_string(), None))
                    .await;
            let answer = matches!(put, Ok(Ok(_))).then(|| start.elapsed());
            ops.push(Op {
                key,
                client: id,
                call,
                answer,
                kind: Kind::Put(v),
            });
        } else if let Ok(Ok(got)) =
            tokio::time::timeout(REQUEST_TIMEOUT, c.get(key_name(key), None)).await
        {
            let value = got.kvs().first().map(|kv| {
                let v = kv.value_str().expect("utf-8 value");
                v.parse::<u64>().expect("a value this test wrote")
            });
            ops.push(Op {
                key,
                client: id,
                call,
                answer: Some(start.elapsed()),
                kind: Kind::Read(value),
            });
        }
        tokio::time::sleep(Duration::from_millis(5 + (r >> 60))).await;
    }
    ops
}

#[test]
fn histories_under_process_kills_are_linearizable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = http_cluster(tmp.path(), "lin", &HOSTS, "", &[]);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let until = start + RUN;
    let clients: Vec<_> = (0..HOSTS.len() * CLIENTS_PER_MEMBER)
        .map(|id| {
            let endpoint = endpoints[id % HOSTS.len()].clone();
            runtime.spawn(client(id, endpoint, start, until))
        })
        .collect();

    // The faults, a second and a half apart: a follower's peer gateway, the leader's peer
    // gateway, a follower's consensus, the leader's consensus. start-node.sh restarts each.
    let mut killed = Vec::new();
    for (i, process) in [
        ("follower", "peer-gateway"),
        ("leader", "peer-gateway"),
        ("follower", "consensus"),
        ("leader", "consensus"),
    ]
    .into_iter()
    .enumerate()
    {
        std::thread::sleep(Duration::from_millis(1500 + 500 * (i as u64 % 2)));
        let leader = leader_index(&members, &[0, 1, 2]);
        let target = match process.0 {
            "leader" => leader,
            _ => (leader + 1) % HOSTS.len(),
        };
        let pid = members[target].kill9(process.1);
        killed.push(format!("{} {} {pid}", members[target].name, process.1));
    }
    let mut ops: Vec<Op> = runtime.block_on(async {
        let mut all = Vec::new();
        for c in clients {
            all.extend(c.await.expect("client task"));
        }
        all
    });

    // Everyone back, then one more read of every key through every member.
    for m in &members {
        wait_healthy(m, Duration::from_secs(60));
    }
    let last: Vec<Op> = runtime.block_on(async {
        let mut last = Vec::new();
        for (id, endpoint) in endpoints.iter().enumerate() {
            let mut c = Client::connect([endpoint.as_str()], None)
                .await
                .expect("connect");
            for key in 0..KEYS {
                let call = start.elapsed();
                let got = c.get(key_name(key), None).await.expect("final read");
                let value = got
                    .kvs()
                    .first()
                    .map(|kv| kv.value_str().unwrap().parse::<u64>().unwrap());
                last.push(Op {
                    key,
                    client: 100 + id,
                    call,
                    answer: Some(start.elapsed()),
                    kind: Kind::Read(value),
                });
            }
        }
        last
    });
    ops.extend(last);

    let writes = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Put(_)) && o.answer.is_some())
        .count();
    let reads = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Read(_)))
        .count();
    let unanswered = ops.iter().filter(|o| o.answer.is_none()).count();
    eprintln!(
        "{writes} acknowledged puts, {unanswered} unanswered, {reads} reads; killed: {}",
        killed.join(", ")
    );
    assert!(writes > 100 && reads > 100, "too few operations to judge");
    let checker = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let verdict = (0..KEYS)
                .map(|key| {
                    let history: Vec<Op> = ops.iter().filter(|o| o.key == key).cloned().collect();
                    linearizable(&history, None).map_err(|e| format!("key {}: {e}", key_name(key)))
                })
                .collect::<Result<Vec<()>, String>>();
            (verdict, ops)
        })
        .unwrap();
    let (verdict, ops) = checker.join().expect("checker");
    for m in &mut members {
        m.stop();
    }
    if let Err(e) = verdict {
        let file = std::env::temp_dir().join(format!("linearizable-{}.txt", std::process::id()));
        let text: String = ops.iter().map(|o| format!("{o:?}\n")).collect();
        let _ = std::fs::write(&file, text);
        panic!(
            "not linearizable: {e}\n(the whole history is in {})",
            file.display()
        );
    }
}
