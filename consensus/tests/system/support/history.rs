//! Histories of client operations and the checks run on them: linearizability of each key as a
//! register with compare-and-swap, and the revision rules etcd's MVCC promises (every
//! acknowledged change has its own revision, every observed version is the one that change
//! wrote, a read at a revision misses no acknowledged change before it).
//!
//! The linearizability check is Wing and Gong's search with Lowe's memo of (operations done,
//! register value), iterative so that a long history cannot overflow the stack. An operation
//! that got no answer may or may not have taken effect, at any time after its call: it is
//! optional and never bounds the others; a read that got no answer says nothing and is not
//! recorded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// What a client asked one key for, and what it learned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A put of a value no other operation writes.
    Put(u64),
    /// A delete; `None` in the register.
    Delete,
    /// A txn: if the value is `expect` (`None`: the key is absent), put `new`. `succeeded` is
    /// the txn's answer, `None` when it got none.
    Cas {
        expect: Option<u64>,
        new: u64,
        succeeded: Option<bool>,
    },
    /// A linearizable read.
    Read(Option<u64>),
}

#[derive(Clone, Debug)]
pub struct Op {
    pub key: usize,
    pub client: usize,
    /// When the call was made and when its answer came, since the run began; no answer: `None`.
    pub call: Duration,
    pub answer: Option<Duration>,
    pub kind: Kind,
}

impl Op {
    /// The value this operation may write.
    fn writes(&self) -> Option<u64> {
        match self.kind {
            Kind::Put(v) | Kind::Cas { new: v, .. } => Some(v),
            _ => None,
        }
    }

    /// The register after this operation on `value`; `None` if it cannot happen there.
    fn step(&self, value: Option<u64>) -> Option<Option<u64>> {
        match self.kind {
            Kind::Put(v) => Some(Some(v)),
            Kind::Delete => Some(None),
            Kind::Cas {
                expect,
                new,
                succeeded,
            } => match succeeded {
                Some(true) if value == expect => Some(Some(new)),
                Some(false) if value != expect => Some(value),
                Some(_) => None,
                // Unanswered: it did whatever the value made it do.
                None if value == expect => Some(Some(new)),
                None => Some(value),
            },
            Kind::Read(seen) if seen == value => Some(value),
            Kind::Read(_) => None,
        }
    }
}

/// The search gives up (and the check fails, saying so) beyond this many states.
const MAX_STATES: usize = 20_000_000;

/// Whether `ops` (one key's) are linearizable as a register that starts empty; on failure, the
/// operations that could not be placed after the longest order found.
pub fn linearizable(ops: &[Op]) -> Result<(), String> {
    // An unanswered write whose value nobody read can be taken as never having happened: values
    // are unique, so no read fell between it and the next write. Dropping those keeps the search
    // from trying each of them everywhere.
    let read: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Read(v) => v,
            _ => None,
        })
        .collect();
    let mut ops: Vec<Op> = ops
        .iter()
        .filter(|o| match o.writes() {
            Some(v) => o.answer.is_some() || read.contains(&v),
            None => true,
        })
        .cloned()
        .collect();
    ops.sort_by_key(|o| o.call);
    let n = ops.len();
    // Zobrist hashing: the done set's hash is the XOR of its members' random words.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let words: Vec<u128> = ops
        .iter()
        .map(|_| (u128::from(xorshift(&mut seed)) << 64) | u128::from(xorshift(&mut seed)))
        .collect();
    let mut done = vec![false; n];
    // Answers of the answered operations still to place: the smallest bounds what comes next.
    let mut pending: BTreeSet<(Duration, usize)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.answer.map(|a| (a, i)))
        .collect();
    let mut seen: HashSet<(u128, Option<u64>)> = HashSet::new();
    // Each frame: the register and hash before its choice, the first operation not yet done
    // when it was pushed, and the candidate it placed (or will try next).
    struct Frame {
        value: Option<u64>,
        hash: u128,
        first: usize,
        next: usize,
        placed: Option<usize>,
    }
    let mut stack = vec![Frame {
        value: None,
        hash: 0,
        first: 0,
        next: 0,
        placed: None,
    }];
    let mut deepest = (0, Vec::new());
    loop {
        if pending.is_empty() {
            return Ok(());
        }
        if seen.len() > MAX_STATES {
            break;
        }
        let depth = stack.len() - 1;
        let top = stack.last_mut().expect("the stack holds the root");
        if let Some(i) = top.placed.take() {
            // Coming back to this frame: undo its last choice before trying the next.
            done[i] = false;
            if let Some(a) = ops[i].answer {
                pending.insert((a, i));
            }
        }
        let bound = pending.first().map_or(Duration::MAX, |(a, _)| *a);
        let mut chosen = None;
        let mut i = top.next;
        while i < n && ops[i].call <= bound {
            if !done[i]
                && let Some(next) = ops[i].step(top.value)
            {
                let hash = top.hash ^ words[i];
                if seen.insert((hash, next)) {
                    chosen = Some((i, next, hash));
                    break;
                }
            }
            i += 1;
        }
        let Some((i, value, hash)) = chosen else {
            // Nothing fits after this prefix: back up one choice.
            stack.pop();
            if stack.is_empty() {
                break;
            }
            continue;
        };
        top.next = i + 1;
        top.placed = Some(i);
        done[i] = true;
        if let Some(a) = ops[i].answer {
            pending.remove(&(a, i));
        }
        if depth + 1 > deepest.0 {
            deepest = (depth + 1, done.clone());
        }
        let mut first = top.first;
        while first < n && done[first] {
            first += 1;
        }
        stack.push(Frame {
            value,
            hash,
            first,
            next: first,
            placed: None,
        });
    }
    let (depth, done) = &deepest;
    let done = if done.is_empty() {
        vec![false; n]
    } else {
        done.clone()
    };
    let stuck: Vec<String> = ops
        .iter()
        .zip(&done)
        .filter(|(o, done)| !**done && o.answer.is_some())
        .take(8)
        .map(|(o, _)| format!("client {}: {o:?}", o.client))
        .collect();
    let gave_up = if seen.len() > MAX_STATES {
        format!(" (gave up after {MAX_STATES} states)")
    } else {
        String::new()
    };
    Err(format!(
        "{depth} of {n} operations ordered{gave_up}; the first that could not be:\n{}",
        stuck.join("\n")
    ))
}

pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

// ------------------------------------------------------------------ revisions

/// An acknowledged change: the key, the revision its answer carried, and what it left (`None`:
/// a delete that removed the key).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    pub key: usize,
    pub revision: i64,
    pub value: Option<u64>,
    /// When its answer came, since the run began.
    pub answered: Duration,
}

/// A delete that got no answer: it may have taken effect, at a revision newer than every change
/// acknowledged before its call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnansweredDelete {
    pub key: usize,
    pub call: Duration,
}

/// A read of one key at `at` (the revision asked for, or the answer header's for a read of the
/// newest), and the version it found: `(value, mod_revision)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub key: usize,
    pub at: i64,
    pub found: Option<(u64, i64)>,
    /// Whether `at` was asked for; reads of the newest value only check what they found.
    pub historical: bool,
}

/// The MVCC rules over every acknowledged change and every observed version, of any read
/// (linearizable, serializable, or at a revision): a revision is used by one change; an observed
/// version is the one its revision's change wrote, and its value was written at that revision
/// only; a read at a revision saw the newest acknowledged change of the key up to it. Returns
/// every violation found (at most a few dozen lines).
pub fn revisions_hold(
    changes: &[Change],
    observations: &[Observation],
    unanswered_deletes: &[UnansweredDelete],
) -> Result<(), String> {
    let mut problems = Vec::new();
    // Each unanswered delete's key and the revision it must be newer than.
    let mut by_answer: Vec<(Duration, i64)> =
        changes.iter().map(|c| (c.answered, c.revision)).collect();
    by_answer.sort();
    let mut newest_by = Vec::with_capacity(by_answer.len());
    let mut newest = 0;
    for (_, r) in &by_answer {
        newest = newest.max(*r);
        newest_by.push(newest);
    }
    let deletes: Vec<(usize, i64)> = unanswered_deletes
        .iter()
        .map(|d| {
            let i = by_answer.partition_point(|(a, _)| *a < d.call);
            (d.key, i.checked_sub(1).map_or(0, |i| newest_by[i]))
        })
        .collect();
    let mut by_revision: HashMap<i64, Change> = HashMap::new();
    for c in changes {
        if let Some(other) = by_revision.insert(c.revision, *c) {
            problems.push(format!(
                "revision {} acknowledged twice: {other:?} and {c:?}",
                c.revision
            ));
        }
    }
    let mut by_value: HashMap<u64, i64> = changes
        .iter()
        .filter_map(|c| Some((c.value?, c.revision)))
        .collect();
    // Each key's acknowledged changes in revision order.
    let mut per_key: HashMap<usize, Vec<Change>> = HashMap::new();
    for c in changes {
        per_key.entry(c.key).or_default().push(*c);
    }
    for list in per_key.values_mut() {
        list.sort_by_key(|c| c.revision);
    }
    for o in observations {
        if let Some((value, modified)) = o.found {
            if modified > o.at {
                problems.push(format!("{o:?}: a version newer than the revision read"));
            }
            if let Some(c) = by_revision.get(&modified)
                && (c.key != o.key || c.value != Some(value))
            {
                problems.push(format!(
                    "{o:?}: revision {modified} was acknowledged as {c:?}"
                ));
            }
            // A value is written once; a value seen at two revisions was written twice.
            match by_value.insert(value, modified) {
                Some(r) if r != modified => {
                    problems.push(format!("{o:?}: value {value} was written at revision {r}"));
                }
                _ => {}
            }
        }
        if !o.historical {
            continue;
        }
        // The newest acknowledged change of the key at or before the revision read.
        let newest = per_key.get(&o.key).and_then(|list| {
            let i = list.partition_point(|c| c.revision <= o.at);
            i.checked_sub(1).map(|i| list[i])
        });
        let Some(newest) = newest else { continue };
        let missed = match o.found {
            Some((_, modified)) => newest.revision > modified,
            // Absent after a put: only a delete can explain it, maybe one that got no answer.
            None => {
                newest.value.is_some()
                    && !deletes
                        .iter()
                        .any(|&(key, after)| key == o.key && after < o.at)
            }
        };
        if missed {
            problems.push(format!("{o:?}: missed the acknowledged {newest:?}"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(30);
    Err(format!(
        "{n} revision rule(s) broken:\n{}",
        problems.join("\n")
    ))
}

// ------------------------------------------------------------------ the checks on their own

#[cfg(test)]
mod tests {
    use super::*;

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
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(40), Kind::Put(2)),
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
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), Kind::Put(2)),
            op(40, Some(50), Kind::Read(Some(1))),
        ];
        assert!(linearizable(&stale).is_err());
        // An acknowledged write that a later read does not see is lost.
        let lost = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), Kind::Read(None)),
        ];
        assert!(linearizable(&lost).is_err());
        // Reads that disagree on the order of two writes.
        let flip = [
            op(0, Some(100), Kind::Put(1)),
            op(0, Some(100), Kind::Put(2)),
            op(10, Some(20), Kind::Read(Some(1))),
            op(30, Some(40), Kind::Read(Some(2))),
            op(50, Some(60), Kind::Read(Some(1))),
        ];
        assert!(linearizable(&flip).is_err());
    }

    #[test]
    fn the_checker_lets_an_unanswered_write_happen_or_not() {
        let happened = [
            op(0, None, Kind::Put(1)),
            op(20, Some(30), Kind::Read(Some(1))),
        ];
        assert_eq!(linearizable(&happened), Ok(()));
        let did_not = [
            op(0, None, Kind::Put(1)),
            op(20, Some(30), Kind::Read(None)),
        ];
        assert_eq!(linearizable(&did_not), Ok(()));
        // But not before it was called.
        let too_early = [
            op(0, Some(10), Kind::Read(Some(1))),
            op(20, None, Kind::Put(1)),
        ];
        assert!(linearizable(&too_early).is_err());
        // An unanswered delete may have removed a value, late.
        let late_delete = [
            op(0, Some(10), Kind::Put(1)),
            op(20, None, Kind::Delete),
            op(30, Some(40), Kind::Read(Some(1))),
            op(50, Some(60), Kind::Read(None)),
        ];
        assert_eq!(linearizable(&late_delete), Ok(()));
    }

    #[test]
    fn the_checker_holds_compare_and_swap_to_its_answer() {
        let cas = |expect, new, succeeded| Kind::Cas {
            expect,
            new,
            succeeded,
        };
        // Two swaps from the same value cannot both succeed.
        let both = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(40), cas(Some(1), 2, Some(true))),
            op(20, Some(40), cas(Some(1), 3, Some(true))),
        ];
        assert!(linearizable(&both).is_err());
        // One succeeds, the other fails because it came second.
        let one = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(40), cas(Some(1), 2, Some(true))),
            op(20, Some(40), cas(Some(1), 3, Some(false))),
            op(50, Some(60), Kind::Read(Some(2))),
        ];
        assert_eq!(linearizable(&one), Ok(()));
        // A failed swap when the value was what it expected, with nothing concurrent, is wrong.
        let wrong_failure = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), cas(Some(1), 2, Some(false))),
        ];
        assert!(linearizable(&wrong_failure).is_err());
        // A swap expecting an absent key succeeds only on an absent key.
        let create = [
            op(0, Some(10), cas(None, 5, Some(true))),
            op(20, Some(30), cas(None, 6, Some(true))),
        ];
        assert!(linearizable(&create).is_err());
        // An unanswered swap whose value was read took effect only if its expectation held.
        let unanswered = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), Kind::Put(7)),
            op(40, None, cas(Some(1), 2, None)),
            op(50, Some(60), Kind::Read(Some(2))),
        ];
        assert!(linearizable(&unanswered).is_err());
    }

    #[test]
    fn a_long_history_does_not_overflow_the_stack() {
        let mut ops = Vec::new();
        for i in 0..200_000u64 {
            ops.push(op(i * 10, Some(i * 10 + 5), Kind::Put(i)));
        }
        ops.push(op(3_000_000, Some(3_000_010), Kind::Read(Some(199_999))));
        assert_eq!(linearizable(&ops), Ok(()));
    }

    #[test]
    fn revision_rules_catch_a_reused_revision_a_wrong_version_and_a_missed_change() {
        let put = |key, revision, value| Change {
            key,
            revision,
            value: Some(value),
            answered: Duration::from_millis(revision as u64 * 10),
        };
        let changes = [put(0, 2, 10), put(0, 3, 11), put(1, 4, 20)];
        let ok = [
            Observation {
                key: 0,
                at: 3,
                found: Some((10, 2)),
                historical: false,
            },
            Observation {
                key: 0,
                at: 2,
                found: Some((10, 2)),
                historical: true,
            },
        ];
        // The first is a serializable read, stale but allowed; the second reads revision 2.
        assert_eq!(revisions_hold(&changes, &ok, &[]), Ok(()));
        assert!(revisions_hold(&[put(0, 2, 10), put(1, 2, 20)], &[], &[]).is_err());
        let wrong_version = [Observation {
            key: 0,
            at: 5,
            found: Some((99, 3)),
            historical: false,
        }];
        assert!(revisions_hold(&changes, &wrong_version, &[]).is_err());
        let missed = [Observation {
            key: 0,
            at: 3,
            found: Some((10, 2)),
            historical: true,
        }];
        assert!(revisions_hold(&changes, &missed, &[]).is_err());
        let vanished = [Observation {
            key: 1,
            at: 9,
            found: None,
            historical: true,
        }];
        assert!(revisions_hold(&changes, &vanished, &[]).is_err());
        // A delete without an answer, called after revision 4 was acknowledged, may explain it,
        // but not at a revision older than that.
        let late = UnansweredDelete {
            key: 1,
            call: Duration::from_millis(45),
        };
        assert_eq!(revisions_hold(&changes, &vanished, &[late]), Ok(()));
        let too_old = [Observation {
            key: 1,
            at: 4,
            found: None,
            historical: true,
        }];
        assert!(revisions_hold(&changes, &too_old, &[late]).is_err());
    }
}
