//! Linearizability under faults. Clients on every member of a three-member cluster put unique
//! values to a few keys and read them back (linearizable reads, through the `etcd-client` crate)
//! while peer gateways and consensus processes, the leader's among them, are killed with -9 and
//! brought back by `start-node.sh`. Afterwards every member is read once more, and each key's
//! history must be linearizable as a register: some order of the operations, each taking effect
//! between its call and its answer, in which every read returns the last value written. So no
//! acknowledged write is lost and no read is stale.
//!
//! The check is Wing and Gong's search with Lowe's memo of (operations done, register value). A
//! put that got no answer may or may not have taken effect, so it is optional and never bounds
//! the others; a read that got no answer says nothing and is left out.
//!
//! Its three members: `support::addresses::LINEARIZABLE`, ports 2379 and 2380, plain http.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::support::addresses::LINEARIZABLE as HOSTS;
use crate::support::*;

const KEYS: usize = 3;
const CLIENTS_PER_MEMBER: usize = 2;
const RUN: Duration = Duration::from_secs(10);
/// How long a client waits for an answer before it counts the request as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The search gives up (and the test fails, saying so) beyond this many states.
const MAX_STATES: usize = 2_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Write(u64),
    Read(Option<u64>),
}

#[derive(Clone, Debug)]
struct Op {
    key: usize,
    client: usize,
    /// When the call was made and when its answer came, since the run began; no answer: `None`.
    call: Duration,
    answer: Option<Duration>,
    kind: Kind,
}

/// Whether `ops` (one key's) are linearizable as a register that starts empty; on failure, the
/// operations that could not be placed after the longest order found.
fn linearizable(ops: &[Op]) -> Result<(), String> {
    // An unanswered put whose value nobody read can be taken as never having happened: values are
    // unique, so no read fell between it and the next write. Dropping those keeps the search
    // from trying each of them everywhere.
    let read: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Read(v) => v,
            Kind::Write(_) => None,
        })
        .collect();
    let mut ops: Vec<Op> = ops
        .iter()
        .filter(|o| match o.kind {
            Kind::Write(v) => o.answer.is_some() || read.contains(&v),
            Kind::Read(_) => true,
        })
        .cloned()
        .collect();
    ops.sort_by_key(|o| o.call);
    // Zobrist hashing: the done set's hash is the XOR of its members' random words.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let words: Vec<u128> = ops
        .iter()
        .map(|_| (u128::from(xorshift(&mut seed)) << 64) | u128::from(xorshift(&mut seed)))
        .collect();
    let mut search = Search {
        ops: &ops,
        words: &words,
        done: vec![false; ops.len()],
        seen: HashSet::new(),
        deepest: (0, Vec::new()),
    };
    let answered = ops.iter().filter(|o| o.answer.is_some()).count();
    if search.step(0, None, answered, 0) {
        return Ok(());
    }
    let (depth, done) = &search.deepest;
    let stuck: Vec<String> = ops
        .iter()
        .zip(done)
        .filter(|(o, done)| !**done && o.answer.is_some())
        .take(8)
        .map(|(o, _)| format!("client {}: {o:?}", o.client))
        .collect();
    let gave_up = if search.seen.len() > MAX_STATES {
        format!(" (gave up after {MAX_STATES} states)")
    } else {
        String::new()
    };
    Err(format!(
        "{depth} of {} operations ordered{gave_up}; the first that could not be:\n{}",
        ops.len(),
        stuck.join("\n")
    ))
}

struct Search<'a> {
    ops: &'a [Op],
    words: &'a [u128],
    done: Vec<bool>,
    seen: HashSet<(u128, Option<u64>)>,
    deepest: (usize, Vec<bool>),
}

impl Search<'_> {
    /// Extends an order of `depth` operations (done-set hash `hash`, register `value`) until every
    /// answered operation is in it.
    fn step(&mut self, hash: u128, value: Option<u64>, left: usize, depth: usize) -> bool {
        if left == 0 {
            return true;
        }
        if self.seen.len() > MAX_STATES {
            return false;
        }
        if depth > self.deepest.0 {
            self.deepest = (depth, self.done.clone());
        }
        // Whatever comes next was called before every operation still out was answered.
        let bound = self
            .ops
            .iter()
            .zip(&self.done)
            .filter(|(_, done)| !**done)
            .filter_map(|(o, _)| o.answer)
            .min()
            .unwrap_or(Duration::MAX);
        for i in 0..self.ops.len() {
            let op = &self.ops[i];
            if op.call > bound {
                break;
            }
            if self.done[i] {
                continue;
            }
            let next = match op.kind {
                Kind::Write(v) => Some(v),
                Kind::Read(seen) if seen == value => value,
                Kind::Read(_) => continue,
            };
            let next_hash = hash ^ self.words[i];
            if !self.seen.insert((next_hash, next)) {
                continue;
            }
            self.done[i] = true;
            let answered = usize::from(op.answer.is_some());
            if self.step(next_hash, next, left - answered, depth + 1) {
                return true;
            }
            self.done[i] = false;
        }
        false
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

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
                kind: Kind::Write(v),
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
        .filter(|o| matches!(o.kind, Kind::Write(_)) && o.answer.is_some())
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
                    linearizable(&history).map_err(|e| format!("key {}: {e}", key_name(key)))
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

// ------------------------------------------------------------------ the checker on its own

fn op(call: u64, answer: Option<u64>, kind: Kind) -> Op {
    Op {
        key: 0,
        client: 0,
        call: Duration::from_millis(call),
        answer: answer.map(Duration::from_millis),
        kind,
    }
}

#[test]
fn the_checker_accepts_overlapping_operations_in_either_order() {
    // A read overlapping a write may see the value before or after it.
    let ops = [
        op(0, Some(10), Kind::Write(1)),
        op(20, Some(40), Kind::Write(2)),
        op(25, Some(30), Kind::Read(Some(1))),
        op(35, Some(50), Kind::Read(Some(2))),
        op(60, Some(70), Kind::Read(Some(2))),
    ];
    assert_eq!(linearizable(&ops), Ok(()));
}

#[test]
fn the_checker_refuses_a_stale_read_and_a_lost_write() {
    // Write 2 was answered before the read was called: reading 1 is stale.
    let stale = [
        op(0, Some(10), Kind::Write(1)),
        op(20, Some(30), Kind::Write(2)),
        op(40, Some(50), Kind::Read(Some(1))),
    ];
    assert!(linearizable(&stale).is_err());
    // An acknowledged write that a later read does not see is lost.
    let lost = [
        op(0, Some(10), Kind::Write(1)),
        op(20, Some(30), Kind::Read(None)),
    ];
    assert!(linearizable(&lost).is_err());
    // Reads that disagree on the order of two writes.
    let flip = [
        op(0, Some(100), Kind::Write(1)),
        op(0, Some(100), Kind::Write(2)),
        op(10, Some(20), Kind::Read(Some(1))),
        op(30, Some(40), Kind::Read(Some(2))),
        op(50, Some(60), Kind::Read(Some(1))),
    ];
    assert!(linearizable(&flip).is_err());
}

#[test]
fn the_checker_lets_an_unanswered_write_happen_or_not() {
    let happened = [
        op(0, None, Kind::Write(1)),
        op(20, Some(30), Kind::Read(Some(1))),
    ];
    assert_eq!(linearizable(&happened), Ok(()));
    let did_not = [
        op(0, None, Kind::Write(1)),
        op(20, Some(30), Kind::Read(None)),
    ];
    assert_eq!(linearizable(&did_not), Ok(()));
    // But not before it was called.
    let too_early = [
        op(0, Some(10), Kind::Read(Some(1))),
        op(20, None, Kind::Write(1)),
    ];
    assert!(linearizable(&too_early).is_err());
}
