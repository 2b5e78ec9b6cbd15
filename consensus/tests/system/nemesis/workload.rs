//! The clients: each talks to one member through the `etcd-client` crate and mixes puts,
//! compare-and-swap txns, deletes, linearizable and serializable reads, and reads at a past
//! revision over a few keys, recording what it asked, when, and what it was told.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use crate::support::history::{Change, Effect, Kind, Observation, Op, UnansweredDelete, xorshift};

pub const KEYS: usize = 8;
/// How long a client waits for an answer before it counts the request as unanswered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub fn key_name(key: usize) -> String {
    format!("nemesis-{key}")
}

/// What one client did.
#[derive(Default)]
pub struct Outcome {
    /// Every put, txn and delete, and every answered linearizable read, for the register check.
    pub ops: Vec<Op>,
    /// Every acknowledged change with its revision.
    pub changes: Vec<Change>,
    /// Every version any read returned.
    pub observations: Vec<Observation>,
    /// Deletes that got no answer.
    pub unanswered_deletes: Vec<UnansweredDelete>,
    /// Requests that got an error or no answer in time.
    pub failed: usize,
}

impl Outcome {
    /// Records an acknowledged change that left `value` (`None`: removed the key).
    fn acknowledged(&mut self, key: usize, revision: i64, value: Option<u64>, start: Instant) {
        self.changes.push(Change {
            key,
            revision,
            value,
            answered: start.elapsed(),
        });
    }
}

fn parse(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{value:?} is not a value this test wrote"))
}

/// Runs client `id` against `endpoint` until `stop` is set.
pub async fn client(id: usize, endpoint: String, start: Instant, stop: Arc<AtomicBool>) -> Outcome {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(REQUEST_TIMEOUT);
    let mut c = loop {
        match Client::connect([endpoint.as_str()], Some(options.clone())).await {
            Ok(c) => break c,
            Err(_) if !stop.load(Ordering::Relaxed) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("client {id} never reached {endpoint}: {e}"),
        }
    };
    let mut rng = 0x1234_5678_9abc_def0 ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9);
    let mut out = Outcome::default();
    let mut seq = 0u64;
    // What this client last saw of each key (a CAS expects it), and revisions it was told of.
    let mut last_seen: [Option<u64>; KEYS] = [None; KEYS];
    let mut revisions: Vec<i64> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let r = xorshift(&mut rng);
        let key = (r % KEYS as u64) as usize;
        let name = key_name(key);
        let call = start.elapsed();
        let dice = (r >> 8) % 100;
        let mut fresh = || {
            seq += 1;
            (id as u64) * 1_000_000_000 + seq
        };
        let t = REQUEST_TIMEOUT;
        if dice < 35 {
            let v = fresh();
            let put = tokio::time::timeout(t, c.put(name, v.to_string(), None)).await;
            let answer = match put {
                Ok(Ok(resp)) => {
                    let revision = resp.header().map_or(0, |h| h.revision());
                    out.acknowledged(key, revision, Some(v), start);
                    revisions.push(revision);
                    last_seen[key] = Some(v);
                    Some(start.elapsed())
                }
                _ => {
                    out.failed += 1;
                    None
                }
            };
            out.ops.push(Op {
                key,
                client: id,
                call,
                answer,
                kind: Kind::Put(v),
            });
        } else if dice < 50 {
            let expect = last_seen[key];
            let new = fresh();
            let compare = match expect {
                Some(v) => Compare::value(name.clone(), CompareOp::Equal, v.to_string()),
                None => Compare::create_revision(name.clone(), CompareOp::Equal, 0),
            };
            let txn =
                Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(name, new.to_string(), None)]);
            let (answer, succeeded) = match tokio::time::timeout(t, c.txn(txn)).await {
                Ok(Ok(resp)) => {
                    let revision = resp.header().map_or(0, |h| h.revision());
                    if resp.succeeded() {
                        out.acknowledged(key, revision, Some(new), start);
                        last_seen[key] = Some(new);
                    }
                    revisions.push(revision);
                    (Some(start.elapsed()), Some(resp.succeeded()))
                }
                _ => {
                    out.failed += 1;
                    (None, None)
                }
            };
            out.ops.push(Op {
                key,
                client: id,
                call,
                answer,
                kind: Kind::Cas {
                    expect,
                    new,
                    succeeded,
                },
            });
        } else if dice < 55 {
            let (answer, removed_at) = match tokio::time::timeout(t, c.delete(name, None)).await {
                Ok(Ok(resp)) => {
                    let revision = resp.header().map_or(0, |h| h.revision());
                    let removed = resp.deleted() > 0;
                    if removed {
                        out.acknowledged(key, revision, None, start);
                    }
                    last_seen[key] = None;
                    revisions.push(revision);
                    (Some(start.elapsed()), removed.then_some(revision))
                }
                _ => {
                    out.failed += 1;
                    out.unanswered_deletes.push(UnansweredDelete { key, call });
                    (None, None)
                }
            };
            out.ops.push(Op {
                key,
                client: id,
                call,
                answer,
                kind: Kind::Delete { removed_at },
            });
        } else {
            // A read: linearizable, serializable, or at a revision this client was told of.
            let (options, historical) = match dice {
                0..=79 => (None, None),
                80..=91 => (Some(GetOptions::new().with_serializable()), None),
                _ => match revisions.get((r >> 40) as usize % revisions.len().max(1)) {
                    Some(&rev) => (Some(GetOptions::new().with_revision(rev)), Some(rev)),
                    None => (None, None),
                },
            };
            let linearizable = options.is_none();
            match tokio::time::timeout(t, c.get(name, options)).await {
                Ok(Ok(resp)) => {
                    let at = historical.unwrap_or(resp.header().map_or(0, |h| h.revision()));
                    let found = resp
                        .kvs()
                        .first()
                        .map(|kv| (parse(kv.value()), kv.mod_revision()));
                    let value = found.map(|(v, _)| v);
                    out.observations.push(Observation {
                        key,
                        at,
                        found,
                        historical: historical.is_some(),
                    });
                    if linearizable {
                        last_seen[key] = value;
                        out.ops.push(Op {
                            key,
                            client: id,
                            call,
                            answer: Some(start.elapsed()),
                            kind: Kind::Read(value),
                        });
                    }
                }
                _ => out.failed += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(3 + (r >> 60))).await;
    }
    out
}

/// Every key's history as the store kept it: for each revision up to the newest, what changed
/// (all the clients' writes are to one key each), read at that revision through `endpoint`.
/// Nothing in the run compacts, so the whole history is there.
pub async fn store_history(endpoint: &str) -> Vec<Vec<Effect>> {
    use futures::StreamExt;
    let mut c = Client::connect([endpoint], None)
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"));
    let prefix = "nemesis-";
    let newest = c
        .get(prefix, None)
        .await
        .ok()
        .and_then(|r| Some(r.header()?.revision()))
        .unwrap_or_else(|| panic!("the newest revision of {endpoint}"));
    let reads = futures::stream::iter(1..=newest)
        .map(|revision| {
            let mut c = c.clone();
            async move {
                let options = GetOptions::new()
                    .with_prefix()
                    .with_revision(revision)
                    .with_serializable();
                let got = c
                    .get(prefix, Some(options))
                    .await
                    .unwrap_or_else(|e| panic!("reading revision {revision}: {e}"));
                let mut held = [None; KEYS];
                for kv in got.kvs() {
                    let key = kv
                        .key_str()
                        .ok()
                        .and_then(|k| k.strip_prefix(prefix)?.parse::<usize>().ok())
                        .filter(|k| *k < KEYS)
                        .unwrap_or_else(|| panic!("{:?} is not a key this test wrote", kv.key()));
                    held[key] = Some((parse(kv.value()), kv.mod_revision()));
                }
                (revision, held)
            }
        })
        .buffered(32);
    futures::pin_mut!(reads);
    let mut effects = vec![Vec::new(); KEYS];
    let mut before = [None; KEYS];
    while let Some((revision, held)) = reads.next().await {
        for key in 0..KEYS {
            match (before[key], held[key]) {
                (_, Some((value, modified))) if modified == revision => effects[key].push(Effect {
                    revision,
                    value: Some(value),
                }),
                (Some(_), None) => effects[key].push(Effect {
                    revision,
                    value: None,
                }),
                _ => {}
            }
        }
        before = held;
    }
    effects
}
