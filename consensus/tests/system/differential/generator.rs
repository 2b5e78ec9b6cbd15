//! The seeded sequence of operations: keys that share prefixes, revisions around what etcd
//! answered so far, requests at and over etcd's limits.

use super::answers::{Answer, revision_of};
use super::ops::*;

const MAX_TXN_OPS: usize = 128;
/// What etcd's gRPC server accepts beyond `--max-request-bytes` before it refuses a message.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Consensus serves read-only txns with the same checks as etcd (where a negative revision in a
/// txn's range counts as compacted), so read-only txns get negative revisions too.
const READ_ONLY_TXNS_CHECKED_LIKE_ETCD: bool = true;

pub use crate::support::SplitMix as Rng;

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

/// 30 keys with shared prefixes, bytes 0x00 and 0xff included, so operations interact.
const KEYS: [&[u8]; 30] = [
    b"a",
    b"a/",
    b"a/1",
    b"a/2",
    b"a/10",
    b"a/b",
    b"a/b/c",
    b"ab",
    b"abc",
    b"a\xff",
    b"b",
    b"b/",
    b"b/1",
    b"b\x00",
    b"b\x00\x01",
    b"ba",
    b"c",
    b"c/x",
    b"c/y",
    b"foo",
    b"foo/bar",
    b"foo/baz",
    b"fop",
    b"k1",
    b"k2",
    b"k3",
    b"z",
    b"zz",
    b"\xff",
    b"\xff\x00",
];
const PREFIXES: [&[u8]; 12] = [
    b"a",
    b"a/",
    b"a/b",
    b"b",
    b"b\x00",
    b"c/",
    b"f",
    b"foo/",
    b"k",
    b"z",
    b"\xff",
    b"\xff\xff",
];
pub const VALUES: [&[u8]; 10] = [
    b"",
    b"v",
    b"w",
    b"x",
    b"v1",
    b"v2",
    b"abc",
    b"\x00",
    b"zz",
    b"a longer value",
];

/// Makes the next operation from what etcd answered so far (its revision and compaction), so
/// history reads and compactions land where they matter.
pub struct Generator {
    pub rng: Rng,
    pub revision: i64,
    pub compacted: i64,
    pub max_request_bytes: usize,
    pub id_len: usize,
    /// Operations queued to run next (the request-size probes).
    pub queued: Vec<Op>,
}

impl Generator {
    pub fn observe(&mut self, op: &Op, answer: &Answer) {
        if let Some(rev) = revision_of(answer) {
            self.revision = self.revision.max(rev);
        }
        if let (Op::Compact { revision, .. }, Answer::Compact { .. }) = (op, answer) {
            self.compacted = *revision;
        }
    }

    fn key(&mut self) -> B {
        match self.rng.below(100) {
            0..=93 => B(self.rng.pick(&KEYS).to_vec()),
            94..=96 => B(self.rng.pick(&PREFIXES).to_vec()),
            _ => B(format!("q{}", self.rng.below(4)).into_bytes()),
        }
    }

    fn value(&mut self) -> B {
        if self.rng.chance(5) {
            let len = self.rng.below(200) as usize;
            return B((0..len).map(|i| b'a' + (i % 26) as u8).collect());
        }
        B(self.rng.pick(&VALUES).to_vec())
    }

    /// A key and where its range ends; an empty key now and then (refused unless "from key" or
    /// a prefix, which clients turn into "\0").
    fn key_and_end(&mut self) -> (B, End) {
        match self.rng.below(100) {
            0..=34 => (self.key(), End::Single),
            35..=59 => (B(self.rng.pick(&PREFIXES).to_vec()), End::Prefix),
            60..=71 => (self.key(), End::FromKey),
            72..=91 => {
                let end = self.key();
                (self.key(), End::Plain(end))
            }
            92..=96 => (B::default(), End::All),
            97 => (B::default(), End::Single),
            _ => (
                B::default(),
                if self.rng.chance(50) {
                    End::FromKey
                } else {
                    End::Prefix
                },
            ),
        }
    }

    /// A revision to read at: mostly the latest, else around the compacted and the current one,
    /// in the future, or negative.
    fn read_revision(&mut self) -> i64 {
        match self.rng.below(100) {
            0..=54 => 0,
            55..=84 => self.rng.between(self.compacted.max(1), self.revision),
            85..=89 => self.compacted,
            90..=93 => self.rng.between(self.compacted - 3, self.compacted - 1),
            94..=97 => self.revision + self.rng.between(1, 3),
            _ => -self.rng.between(1, 3),
        }
    }

    fn filter_revision(&mut self) -> i64 {
        if self.rng.chance(85) {
            0
        } else if self.rng.chance(90) {
            self.rng.between(1, self.revision + 1)
        } else {
            -1
        }
    }

    fn range(&mut self, in_txn: bool) -> RangeSpec {
        let (key, end) = self.key_and_end();
        let sort = if self.rng.chance(45) {
            Some((self.rng.below(5) as i32, self.rng.below(3) as i32))
        } else {
            None
        };
        let limit = match self.rng.below(100) {
            0..=49 => 0,
            50..=94 => self.rng.between(1, 8),
            _ => -1,
        };
        RangeSpec {
            key,
            end,
            limit,
            revision: self.read_revision(),
            sort,
            serializable: !in_txn && self.rng.chance(25),
            keys_only: self.rng.chance(15),
            count_only: self.rng.chance(10),
            min_mod: self.filter_revision(),
            max_mod: self.filter_revision(),
            min_create: self.filter_revision(),
            max_create: self.filter_revision(),
        }
    }

    fn put(&mut self, key: B) -> PutSpec {
        let ignore_value = self.rng.chance(8);
        let ignore_lease = self.rng.chance(8);
        let value = if ignore_value && !self.rng.chance(10) {
            B::default()
        } else {
            self.value()
        };
        // A lease is never granted here, so any lease is refused (with etcd's error).
        let lease = if self.rng.chance(3) {
            self.rng.between(1, 5)
        } else {
            0
        };
        PutSpec {
            key,
            value,
            lease,
            prev_kv: self.rng.chance(40),
            ignore_value,
            ignore_lease,
        }
    }

    fn delete(&mut self) -> DeleteSpec {
        let (key, end) = self.key_and_end();
        // Deleting everything or everything from a key now and then, not often.
        let end = match end {
            End::All | End::FromKey if self.rng.chance(70) => End::Single,
            e => e,
        };
        DeleteSpec {
            key,
            end,
            prev_kv: self.rng.chance(40),
        }
    }

    fn compare(&mut self) -> CompareSpec {
        let key = if self.rng.chance(1) {
            B::default()
        } else {
            self.key()
        };
        let end = match self.rng.below(100) {
            0..=69 => End::Single,
            70..=84 => End::Prefix,
            85..=89 => End::FromKey,
            _ => End::Plain(self.key()),
        };
        let revision = |g: &mut Generator| match g.rng.below(10) {
            0 => 0,
            1 => g.revision + 1,
            _ => g.rng.between(1, g.revision),
        };
        let target = match self.rng.below(5) {
            0 => Target::Version(self.rng.between(0, 4)),
            1 => Target::Create(revision(self)),
            2 => Target::Mod(revision(self)),
            3 => Target::Value(self.value()),
            _ => Target::Lease(if self.rng.chance(80) {
                0
            } else {
                self.rng.between(1, 3)
            }),
        };
        CompareSpec {
            key,
            end,
            target,
            result: self.rng.below(4) as i32,
        }
    }

    /// A branch of a txn. A "clean" branch writes each key at most once and deletes only what it
    /// does not put, so most txns run; the others may be refused for duplicate keys.
    fn branch(&mut self, depth: usize, clean: bool, used: &mut Vec<Vec<u8>>) -> Vec<OpSpec> {
        let n = self.rng.below(5) as usize;
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let op = match self.rng.below(100) {
                0..=34 => OpSpec::Get(self.range(true)),
                35..=69 => {
                    let mut key = self.key();
                    if clean {
                        for _ in 0..10 {
                            if !used.contains(&key.0) {
                                break;
                            }
                            key = self.key();
                        }
                        if used.contains(&key.0) {
                            continue;
                        }
                        used.push(key.0.clone());
                    }
                    OpSpec::Put(self.put(key))
                }
                70..=89 => {
                    let mut d = self.delete();
                    if clean {
                        // Only single keys nobody in this txn puts; the puts may come later.
                        if !matches!(d.end, End::Single) || used.contains(&d.key.0) {
                            continue;
                        }
                        used.push(d.key.0.clone());
                        d.end = End::Single;
                    }
                    OpSpec::Delete(d)
                }
                _ if depth < 2 => OpSpec::Txn(self.txn_spec(depth + 1, clean, used)),
                _ => OpSpec::Get(self.range(true)),
            };
            ops.push(op);
        }
        ops
    }

    fn txn_spec(&mut self, depth: usize, clean: bool, used: &mut Vec<Vec<u8>>) -> TxnSpec {
        let compares = (0..self.rng.below(4)).map(|_| self.compare()).collect();
        // Keys of the two branches may repeat (only one runs), but not those of the outer txn.
        let mut used_then = used.clone();
        let success = self.branch(depth, clean, &mut used_then);
        let mut used_else = used.clone();
        let failure = self.branch(depth, clean, &mut used_else);
        used.extend(used_then);
        used.extend(used_else);
        TxnSpec {
            compares,
            success,
            failure,
        }
    }

    /// A txn over the limit of operations (refused before anything else is looked at).
    fn too_many_ops(&mut self) -> TxnSpec {
        let n = MAX_TXN_OPS + 1;
        let mut t = TxnSpec::default();
        match self.rng.below(3) {
            0 => {
                t.success = (0..n)
                    .map(|i| OpSpec::Put(self.put(B(format!("k{i}").into_bytes()))))
                    .collect()
            }
            1 => t.failure = (0..n).map(|_| OpSpec::Get(self.range(true))).collect(),
            _ => t.compares = (0..n).map(|_| self.compare()).collect(),
        }
        t
    }

    /// The value length for which a put of `key` makes a raft entry of exactly the limit: etcd's
    /// header (two-byte tag, length, ID tag and varint), the Put field's tag and length, and the
    /// Put itself (key and value fields).
    pub fn exact_value_len(&self, key: &[u8]) -> usize {
        let varint = |v: usize| (usize::BITS - v.max(1).leading_zeros()).div_ceil(7) as usize;
        let header = 2 + 1 + 1 + self.id_len;
        let fixed = |value: usize| {
            let put = 1 + varint(key.len()) + key.len() + 1 + varint(value) + value;
            header + 1 + varint(put) + put
        };
        let mut v = self.max_request_bytes - header - key.len() - 8;
        while fixed(v + 1) <= self.max_request_bytes {
            v += 1;
        }
        while fixed(v) > self.max_request_bytes {
            v -= 1;
        }
        v
    }

    /// The request-size probes: just below and at etcd's limit (accepted), one byte over
    /// (refused), each big key deleted again so later ranges stay small.
    fn size_probes(&mut self) -> Vec<Op> {
        let key = B::from("big");
        let exact = self.exact_value_len(&key.0);
        let del = Op::Delete(DeleteSpec {
            key: key.clone(),
            end: End::Single,
            prev_kv: false,
        });
        vec![
            Op::BigPut {
                key: key.clone(),
                len: exact - 64,
            },
            del.clone(),
            Op::BigPut {
                key: key.clone(),
                len: exact + 1,
            },
            Op::BigPut {
                key: key.clone(),
                len: exact,
            },
            del,
            // Over etcd's gRPC message limit (the request limit plus 512 KiB): refused by gRPC.
            Op::BigPut {
                key,
                len: self.max_request_bytes + GRPC_OVERHEAD_BYTES + 100,
            },
        ]
    }

    pub fn next(&mut self, index: usize, total: usize) -> Op {
        if index == total / 3 {
            self.queued = self.size_probes();
            self.queued.reverse();
        }
        if let Some(op) = self.queued.pop() {
            return op;
        }
        match self.rng.below(1000) {
            0..=299 => {
                let key = if self.rng.chance(1) {
                    B::default()
                } else {
                    self.key()
                };
                Op::Put(self.put(key))
            }
            300..=589 => Op::Get(self.range(false)),
            590..=689 => Op::Delete(self.delete()),
            690..=909 => {
                let clean = self.rng.chance(75);
                let mut t = self.txn_spec(0, clean, &mut Vec::new());
                if !READ_ONLY_TXNS_CHECKED_LIKE_ETCD && read_only(&t) {
                    no_negative_revisions(&mut t);
                }
                if deletes_to_the_end(&t) {
                    no_ignore_flags(&mut t);
                }
                Op::Txn(t)
            }
            910..=929 => {
                let revision = match self.rng.below(10) {
                    0 => self.compacted,
                    1 => self.revision + 1,
                    2 => self.rng.between(-1, 1),
                    _ => self.rng.between(self.compacted + 1, self.revision),
                };
                Op::Compact {
                    revision,
                    physical: self.rng.chance(50),
                }
            }
            930..=959 => {
                let mut r = self.range(false);
                // Any order with a known target; an unknown target only with an unknown order
                // (etcd 3.4 crashes on an unknown target it has to sort by).
                let order = *self.rng.pick(&[-1, 0, 1, 2, 3, 7]);
                let target = if (0..=2).contains(&order) {
                    self.rng.below(5) as i32
                } else {
                    *self.rng.pick(&[0, 1, 2, 3, 4, 5, -1])
                };
                r.sort = Some((target, order));
                Op::RawRange(r)
            }
            960..=979 => Op::Txn(self.too_many_ops()),
            980..=989 => {
                let compares = (0..self.rng.between(1, 3))
                    .map(|_| RawCompare {
                        key: if self.rng.chance(3) {
                            B::default()
                        } else {
                            self.key()
                        },
                        range_end: match self.rng.below(4) {
                            0 => B(vec![0]),
                            1 => self.key(),
                            _ => B::default(),
                        },
                        result: *self.rng.pick(&[-1, 0, 1, 2, 3, 4, 7]),
                        target: *self.rng.pick(&[-1, 0, 1, 2, 3, 4, 5, 9]),
                        union: if self.rng.chance(15) {
                            None
                        } else {
                            let tag = self.rng.between(4, 8) as u32;
                            let v = match self.rng.below(3) {
                                0 => 0,
                                1 => self.rng.between(1, 4),
                                _ => self.rng.between(1, self.revision + 1),
                            };
                            Some((tag, v))
                        },
                    })
                    .collect();
                Op::RawTxn {
                    compares,
                    empty_op: self.rng.chance(15),
                }
            }
            _ => {
                // A write txn refused for a key it puts twice, or puts and deletes.
                let key = self.key();
                let second = if self.rng.chance(50) {
                    OpSpec::Put(self.put(key.clone()))
                } else {
                    OpSpec::Delete(DeleteSpec {
                        key: B(key.0.clone()),
                        end: End::Single,
                        prev_kv: false,
                    })
                };
                Op::Txn(TxnSpec {
                    compares: vec![],
                    success: vec![OpSpec::Put(self.put(key)), second],
                    failure: vec![],
                })
            }
        }
    }
}

/// Whether a txn deletes to the end of the key space ("from key": a range end of "\0", which
/// clients also make for a prefix of 0xff bytes). etcd's duplicate-key check never sees such a
/// delete, so an ignore_value/ignore_lease put of a key it removed passes every check and then
/// fails inside the txn, which crashes etcd 3.4 (we refuse the txn; a unit test covers it).
fn deletes_to_the_end(t: &TxnSpec) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        OpSpec::Delete(d) => match &d.end {
            End::FromKey | End::All => true,
            End::Prefix => d.key.0.iter().all(|b| *b == 0xff),
            End::Plain(e) => e.0 == [0],
            End::Single => false,
        },
        OpSpec::Txn(n) => deletes_to_the_end(n),
        _ => false,
    })
}

fn no_ignore_flags(t: &mut TxnSpec) {
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match op {
            OpSpec::Put(p) => {
                p.ignore_value = false;
                p.ignore_lease = false;
            }
            OpSpec::Txn(n) => no_ignore_flags(n),
            _ => {}
        }
    }
}

/// A txn our consensus serves without the raft log: ranges only, nested txns included.
fn read_only(t: &TxnSpec) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match op {
        OpSpec::Get(_) => true,
        OpSpec::Txn(n) => read_only(n),
        _ => false,
    })
}

fn no_negative_revisions(t: &mut TxnSpec) {
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match op {
            OpSpec::Get(r) if r.revision < 0 => r.revision = 0,
            OpSpec::Txn(n) => no_negative_revisions(n),
            _ => {}
        }
    }
}
