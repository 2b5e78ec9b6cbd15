//! Histories of client operations and the checks run on them: linearizability of each key as a
//! register with compare-and-swap, and the revision rules etcd's MVCC promises (every
//! acknowledged change has its own revision, every observed version is the one that change
//! wrote, a read at a revision misses no acknowledged change before it).
//!
//! The linearizability check is Wing and Gong's search with Lowe's memo of (operations done,
//! register value), iterative so that a long history cannot overflow the stack. An operation
//! that got no answer may or may not have taken effect, at any time after its call: it never
//! bounds the others; a read that got no answer says nothing and is not recorded. Given the
//! store's own history of the key ([`Effect`]s, read back after the run), the writes must take
//! effect in its order, which decides histories the free search gives up on.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// What a client asked one key for, and what it learned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A put of a value no other operation writes.
    Put(u64),
    /// A delete; `None` in the register. `removed_at`: the revision at which an answered delete
    /// removed the key (`None`: it found nothing, or got no answer).
    Delete { removed_at: Option<i64> },
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
            Kind::Delete { .. } => Some(None),
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

/// A change the store made to one key, as its MVCC history shows it after the run: the revision
/// and what the key held after it (`None`: the key was deleted).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Effect {
    pub revision: i64,
    pub value: Option<u64>,
}

/// What an operation may do in the search, once the store's own history of the key is known.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    /// Without the store's history: whatever [`Op::step`] says.
    Free,
    /// It made the `n`th effect of the store's history.
    Effect(usize),
    /// An unanswered delete: it may have made any delete effect, or nothing.
    AnyDelete,
    /// It changed nothing and needed `Some(v)` not to be the value (a failed swap expecting
    /// `v`) or, for `None`, the key to be absent (a delete that found nothing).
    Unchanged { not: Option<Option<u64>> },
    /// A read of the value.
    Read(Option<u64>),
}

/// The register after `op` in its `role` on `value` with `at` effects of the store's history
/// done; `None` if it cannot happen there.
fn step(
    op: &Op,
    role: Role,
    value: Option<u64>,
    at: usize,
    effects: &[Effect],
) -> Option<(Option<u64>, usize)> {
    match role {
        Role::Free => op.step(value).map(|v| (v, at)),
        Role::Effect(n) if n == at => {
            // A swap that took effect needed its expectation to hold.
            if let Kind::Cas { expect, .. } = op.kind
                && value != expect
            {
                return None;
            }
            Some((effects[n].value, at + 1))
        }
        Role::Effect(_) => None,
        Role::AnyDelete => {
            let e = effects.get(at)?;
            e.value.is_none().then_some((None, at + 1))
        }
        Role::Unchanged { not: Some(v) } => (value != v).then_some((value, at)),
        Role::Unchanged { not: None } => value.is_none().then_some((value, at)),
        Role::Read(v) => (v == value).then_some((value, at)),
    }
}

/// Each operation's role against the store's history of the key; the operations that cannot
/// have happened are left out, and a contradiction between the answers and the history (an
/// acknowledged write the store does not have, a value it has that nobody wrote) is an error.
fn roles(ops: &[Op], effects: &[Effect]) -> Result<Vec<(Op, Role)>, String> {
    let mut problems = Vec::new();
    let mut slot: HashMap<u64, usize> = HashMap::new();
    let mut deletes: HashMap<i64, usize> = HashMap::new();
    for (n, e) in effects.iter().enumerate() {
        match e.value {
            Some(v) => {
                if slot.insert(v, n).is_some() {
                    problems.push(format!("the store wrote value {v} twice"));
                }
            }
            None => {
                deletes.insert(e.revision, n);
            }
        }
    }
    let mut written = HashSet::new();
    let mut out = Vec::new();
    for o in ops {
        let role = match o.kind {
            Kind::Put(v) | Kind::Cas { new: v, .. } => {
                written.insert(v);
                let failed = matches!(
                    o.kind,
                    Kind::Cas {
                        succeeded: Some(false),
                        ..
                    }
                );
                match (slot.get(&v), o.answer.is_some(), failed) {
                    (Some(_), _, true) => {
                        problems.push(format!("{o:?}: failed, yet the store holds its value"));
                        continue;
                    }
                    (Some(&n), _, false) => Role::Effect(n),
                    (None, _, true) => match o.kind {
                        Kind::Cas { expect, .. } => Role::Unchanged { not: Some(expect) },
                        _ => unreachable!("only a swap fails"),
                    },
                    (None, true, false) => {
                        problems.push(format!(
                            "{o:?}: acknowledged, but not in the store's history"
                        ));
                        continue;
                    }
                    // Unanswered and not in the store: it never happened (or failed).
                    (None, false, false) => continue,
                }
            }
            Kind::Delete { removed_at } => match (o.answer, removed_at) {
                (None, _) => Role::AnyDelete,
                (Some(_), None) => Role::Unchanged { not: None },
                (Some(_), Some(r)) => match deletes.get(&r) {
                    Some(&n) => Role::Effect(n),
                    None => {
                        problems.push(format!(
                            "{o:?}: acknowledged, but the store deleted nothing at revision {r}"
                        ));
                        continue;
                    }
                },
            },
            Kind::Read(v) => Role::Read(v),
        };
        out.push((o.clone(), role));
    }
    for e in effects {
        if let Some(v) = e.value
            && !written.contains(&v)
        {
            problems.push(format!("{e:?}: a value no operation wrote"));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        problems.truncate(8);
        Err(problems.join("\n"))
    }
}

/// The search gives up (and the check fails, saying so) beyond this many states.
const MAX_STATES: usize = 20_000_000;

/// Whether `ops` (one key's) are linearizable as a register that starts empty; on failure, the
/// operations that could not be placed after the longest order found.
///
/// With `store`, the key's history as the store itself kept it (every revision that changed the
/// key, read back after the run), the order of the writes is the store's: each write that took
/// effect is placed exactly where its revision puts it, a write the store does not have did not
/// happen (an error if it was acknowledged), and an unanswered delete either made one of the
/// store's deletes or nothing. This is etcd's own promise (revisions order every change) and
/// leaves the search almost nothing to guess, so a long history with many unanswered requests
/// is decided, not given up on. Without it, each unanswered write may have happened at any time
/// after its call, or not at all.
pub fn linearizable(ops: &[Op], store: Option<&[Effect]>) -> Result<(), String> {
    let effects = store.unwrap_or(&[]);
    let mut ops: Vec<(Op, Role)> = match store {
        Some(effects) => roles(ops, effects)?,
        None => {
            // An unanswered write whose value nobody read can be taken as never having happened:
            // values are unique, so no read fell between it and the next write. Dropping those
            // keeps the search from trying each of them everywhere.
            let read: HashSet<u64> = ops
                .iter()
                .filter_map(|o| match o.kind {
                    Kind::Read(v) => v,
                    _ => None,
                })
                .collect();
            ops.iter()
                .filter(|o| match o.writes() {
                    Some(v) => o.answer.is_some() || read.contains(&v),
                    None => true,
                })
                .map(|o| (o.clone(), Role::Free))
                .collect()
        }
    };
    ops.sort_by_key(|(o, _)| o.call);
    let n = ops.len();
    // Which operation made each of the store's effects, and the deletes an acknowledged delete
    // made (no unanswered one may take those).
    let mut maker = vec![None; effects.len()];
    for (i, (_, role)) in ops.iter().enumerate() {
        if let Role::Effect(e) = role {
            maker[*e] = Some(i);
        }
    }
    let claimed: Vec<bool> = maker
        .iter()
        .map(|m| m.is_some_and(|i| ops[i].0.answer.is_some()))
        .collect();
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
        .filter_map(|(i, (o, _))| o.answer.map(|a| (a, i)))
        .collect();
    // The unanswered deletes not yet placed. Once one may be placed, every later choice may
    // place it too (the bound only grows), so they are interchangeable: only the first is tried.
    let mut spare_deletes: BTreeSet<usize> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| (*r == Role::AnyDelete).then_some(i))
        .collect();
    let mut seen: HashSet<(u128, usize, Option<u64>)> = HashSet::new();
    // Each frame: the register, the effects done and the hash before its choice, the first
    // operation not yet done when it was pushed (spare deletes aside), the candidate it tries
    // next, whether it tried the spare delete, and the candidate it placed.
    struct Frame {
        value: Option<u64>,
        at: usize,
        hash: u128,
        first: usize,
        next: usize,
        spare_tried: bool,
        placed: Option<usize>,
    }
    let mut stack = vec![Frame {
        value: None,
        at: 0,
        hash: 0,
        first: 0,
        next: 0,
        spare_tried: false,
        placed: None,
    }];
    let mut deepest = (0, Vec::new());
    loop {
        if seen.len() > MAX_STATES {
            break;
        }
        let depth = stack.len() - 1;
        let top = stack.last_mut().expect("the stack holds the root");
        if let Some(i) = top.placed.take() {
            // Coming back to this frame: undo its last choice before trying the next.
            done[i] = false;
            if let Some(a) = ops[i].0.answer {
                pending.insert((a, i));
            }
            if ops[i].1 == Role::AnyDelete {
                spare_deletes.insert(i);
            }
        }
        if pending.is_empty()
            && store.is_none_or(|_| {
                tail_completes(
                    top.value,
                    top.at,
                    effects,
                    &ops,
                    &maker,
                    spare_deletes.len(),
                )
            })
        {
            return Ok(());
        }
        let bound = pending.first().map_or(Duration::MAX, |(a, _)| *a);
        let mut chosen = None;
        // The spare delete first, once per frame; then the others in call order, skipping the
        // spare deletes, whose one candidate that was.
        if !top.spare_tried {
            top.spare_tried = true;
            if let Some(&i) = spare_deletes.first()
                && ops[i].0.call <= bound
                && !claimed.get(top.at).copied().unwrap_or(true)
                && let Some((value, at)) = step(&ops[i].0, ops[i].1, top.value, top.at, effects)
            {
                let hash = top.hash ^ words[i];
                if seen.insert((hash, at, value)) {
                    chosen = Some((i, value, at, hash));
                }
            }
        }
        let mut i = top.next;
        while chosen.is_none() && i < n && ops[i].0.call <= bound {
            let (op, role) = &ops[i];
            if !done[i]
                && *role != Role::AnyDelete
                && let Some((value, at)) = step(op, *role, top.value, top.at, effects)
            {
                let hash = top.hash ^ words[i];
                if seen.insert((hash, at, value)) {
                    chosen = Some((i, value, at, hash));
                    top.next = i + 1;
                }
            }
            i += 1;
        }
        let Some((i, value, at, hash)) = chosen else {
            // Nothing fits after this prefix: back up one choice (remembering the deepest dead
            // end, to say where it got stuck).
            if depth > deepest.0 {
                deepest = (depth, done.clone());
            }
            stack.pop();
            if stack.is_empty() {
                break;
            }
            continue;
        };
        top.placed = Some(i);
        done[i] = true;
        if let Some(a) = ops[i].0.answer {
            pending.remove(&(a, i));
        }
        spare_deletes.remove(&i);
        let mut first = top.first;
        while first < n && (done[first] || ops[first].1 == Role::AnyDelete) {
            first += 1;
        }
        stack.push(Frame {
            value,
            at,
            hash,
            first,
            next: first,
            spare_tried: false,
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
        .filter(|((o, _), done)| !**done && o.answer.is_some())
        .take(8)
        .map(|((o, _), _)| format!("client {}: {o:?}", o.client))
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

/// Whether the store's effects from `at` on can all come after every answered operation: each
/// write by its unanswered operation (a swap only if its expectation holds there), each delete
/// by one of the `spare` unanswered deletes.
fn tail_completes(
    mut value: Option<u64>,
    at: usize,
    effects: &[Effect],
    ops: &[(Op, Role)],
    maker: &[Option<usize>],
    mut spare: usize,
) -> bool {
    for (n, e) in effects.iter().enumerate().skip(at) {
        match (e.value, maker[n]) {
            (None, _) if spare > 0 => spare -= 1,
            (None, _) => return false,
            (Some(_), Some(i)) => {
                if let Kind::Cas { expect, .. } = ops[i].0.kind
                    && expect != value
                {
                    return false;
                }
            }
            (Some(_), None) => return false,
        }
        value = e.value;
    }
    true
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

/// Every acknowledged change is the store's own change of its key at its revision (`store`:
/// each key's [`Effect`]s in revision order).
pub fn acknowledged_in_store(changes: &[Change], store: &[Vec<Effect>]) -> Result<(), String> {
    let missing: Vec<String> = changes
        .iter()
        .filter(|c| {
            let effects = store.get(c.key).map_or(&[][..], Vec::as_slice);
            let at = effects.partition_point(|e| e.revision < c.revision);
            effects.get(at)
                != Some(&Effect {
                    revision: c.revision,
                    value: c.value,
                })
        })
        .map(|c| format!("{c:?}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let n = missing.len();
    Err(format!(
        "{n} acknowledged change(s) not in the store's history at their revision:\n{}",
        missing[..n.min(20)].join("\n")
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
        assert_eq!(linearizable(&ops, None), Ok(()));
    }

    #[test]
    fn the_checker_refuses_a_stale_read_and_a_lost_write() {
        // Write 2 was answered before the read was called: reading 1 is stale.
        let stale = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), Kind::Put(2)),
            op(40, Some(50), Kind::Read(Some(1))),
        ];
        assert!(linearizable(&stale, None).is_err());
        // An acknowledged write that a later read does not see is lost.
        let lost = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), Kind::Read(None)),
        ];
        assert!(linearizable(&lost, None).is_err());
        // Reads that disagree on the order of two writes.
        let flip = [
            op(0, Some(100), Kind::Put(1)),
            op(0, Some(100), Kind::Put(2)),
            op(10, Some(20), Kind::Read(Some(1))),
            op(30, Some(40), Kind::Read(Some(2))),
            op(50, Some(60), Kind::Read(Some(1))),
        ];
        assert!(linearizable(&flip, None).is_err());
    }

    #[test]
    fn the_checker_lets_an_unanswered_write_happen_or_not() {
        let happened = [
            op(0, None, Kind::Put(1)),
            op(20, Some(30), Kind::Read(Some(1))),
        ];
        assert_eq!(linearizable(&happened, None), Ok(()));
        let did_not = [
            op(0, None, Kind::Put(1)),
            op(20, Some(30), Kind::Read(None)),
        ];
        assert_eq!(linearizable(&did_not, None), Ok(()));
        // But not before it was called.
        let too_early = [
            op(0, Some(10), Kind::Read(Some(1))),
            op(20, None, Kind::Put(1)),
        ];
        assert!(linearizable(&too_early, None).is_err());
        // An unanswered delete may have removed a value, late.
        let late_delete = [
            op(0, Some(10), Kind::Put(1)),
            op(20, None, Kind::Delete { removed_at: None }),
            op(30, Some(40), Kind::Read(Some(1))),
            op(50, Some(60), Kind::Read(None)),
        ];
        assert_eq!(linearizable(&late_delete, None), Ok(()));
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
        assert!(linearizable(&both, None).is_err());
        // One succeeds, the other fails because it came second.
        let one = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(40), cas(Some(1), 2, Some(true))),
            op(20, Some(40), cas(Some(1), 3, Some(false))),
            op(50, Some(60), Kind::Read(Some(2))),
        ];
        assert_eq!(linearizable(&one, None), Ok(()));
        // A failed swap when the value was what it expected, with nothing concurrent, is wrong.
        let wrong_failure = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), cas(Some(1), 2, Some(false))),
        ];
        assert!(linearizable(&wrong_failure, None).is_err());
        // A swap expecting an absent key succeeds only on an absent key.
        let create = [
            op(0, Some(10), cas(None, 5, Some(true))),
            op(20, Some(30), cas(None, 6, Some(true))),
        ];
        assert!(linearizable(&create, None).is_err());
        // An unanswered swap whose value was read took effect only if its expectation held.
        let unanswered = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), Kind::Put(7)),
            op(40, None, cas(Some(1), 2, None)),
            op(50, Some(60), Kind::Read(Some(2))),
        ];
        assert!(linearizable(&unanswered, None).is_err());
    }

    #[test]
    fn a_long_history_does_not_overflow_the_stack() {
        let mut ops = Vec::new();
        for i in 0..200_000u64 {
            ops.push(op(i * 10, Some(i * 10 + 5), Kind::Put(i)));
        }
        ops.push(op(3_000_000, Some(3_000_010), Kind::Read(Some(199_999))));
        assert_eq!(linearizable(&ops, None), Ok(()));
    }

    fn put_at(revision: i64, value: u64) -> Effect {
        Effect {
            revision,
            value: Some(value),
        }
    }

    fn deleted_at(revision: i64) -> Effect {
        Effect {
            revision,
            value: None,
        }
    }

    #[test]
    fn the_stores_order_of_writes_must_agree_with_real_time_and_every_answer() {
        let ops = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(40), Kind::Put(2)),
            op(25, Some(30), Kind::Read(Some(1))),
            op(35, Some(50), Kind::Read(Some(2))),
        ];
        let store = [put_at(2, 1), put_at(3, 2)];
        assert_eq!(linearizable(&ops, Some(&store)), Ok(()));
        // Put 1 was answered before put 2 was called: the store cannot order 2 first.
        let flipped = [put_at(2, 2), put_at(3, 1)];
        assert!(linearizable(&ops, Some(&flipped)).is_err());
        // An acknowledged put the store does not have was lost.
        let lost = linearizable(&ops, Some(&store[..1])).unwrap_err();
        assert!(lost.contains("not in the store"), "{lost}");
        // A value the store has that nobody wrote.
        let stranger = [put_at(2, 1), put_at(3, 2), put_at(4, 9)];
        assert!(linearizable(&ops, Some(&stranger)).is_err());
    }

    #[test]
    fn an_unanswered_write_the_store_has_happened_and_one_it_lacks_did_not() {
        let ops = [
            op(0, Some(10), Kind::Put(1)),
            op(20, None, Kind::Put(2)),
            op(30, None, Kind::Put(3)),
            op(40, Some(50), Kind::Read(Some(1))),
            op(60, Some(70), Kind::Read(Some(2))),
        ];
        // 2 took effect late (after the read of 1); 3 never did.
        assert_eq!(
            linearizable(&ops, Some(&[put_at(2, 1), put_at(3, 2)])),
            Ok(())
        );
        // The store says 3 came after 2: then the last read, of 2, was stale, unless 3 came
        // later still, which it may (it got no answer).
        assert_eq!(
            linearizable(&ops, Some(&[put_at(2, 1), put_at(3, 2), put_at(4, 3)])),
            Ok(())
        );
        // But a read of 1 after a read of 2 cannot be.
        let mut back = ops.to_vec();
        back.push(op(80, Some(90), Kind::Read(Some(1))));
        assert!(linearizable(&back, Some(&[put_at(2, 1), put_at(3, 2)])).is_err());
    }

    #[test]
    fn a_delete_in_the_store_needs_a_delete_that_made_it() {
        let acknowledged = [
            op(0, Some(10), Kind::Put(1)),
            op(
                20,
                Some(30),
                Kind::Delete {
                    removed_at: Some(3),
                },
            ),
            op(40, Some(50), Kind::Read(None)),
        ];
        let store = [put_at(2, 1), deleted_at(3)];
        assert_eq!(linearizable(&acknowledged, Some(&store)), Ok(()));
        // The store deleted at another revision than the one acknowledged.
        assert!(linearizable(&acknowledged, Some(&[put_at(2, 1), deleted_at(4)])).is_err());
        let unanswered = [
            op(0, Some(10), Kind::Put(1)),
            op(20, None, Kind::Delete { removed_at: None }),
            op(40, Some(50), Kind::Read(None)),
        ];
        assert_eq!(linearizable(&unanswered, Some(&store)), Ok(()));
        // Without any delete, the store's delete came from nowhere.
        let nobody = [
            op(0, Some(10), Kind::Put(1)),
            op(40, Some(50), Kind::Read(None)),
        ];
        assert!(linearizable(&nobody, Some(&store)).is_err());
        // An unanswered delete the store never made did nothing.
        let kept = [
            op(0, Some(10), Kind::Put(1)),
            op(20, None, Kind::Delete { removed_at: None }),
            op(40, Some(50), Kind::Read(Some(1))),
        ];
        assert_eq!(linearizable(&kept, Some(&store[..1])), Ok(()));
        // A delete answered as finding nothing needs the key absent.
        let found_nothing = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), Kind::Delete { removed_at: None }),
        ];
        assert!(linearizable(&found_nothing, Some(&store[..1])).is_err());
    }

    #[test]
    fn a_swap_the_store_made_needed_its_expectation() {
        let cas = |expect, new, succeeded| Kind::Cas {
            expect,
            new,
            succeeded,
        };
        let ops = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), Kind::Put(7)),
            op(40, None, cas(Some(1), 2, None)),
        ];
        // The unanswered swap expected 1 but the value was 7: the store cannot have made it.
        assert!(linearizable(&ops, Some(&[put_at(2, 1), put_at(3, 7), put_at(4, 2)])).is_err());
        assert_eq!(
            linearizable(&ops, Some(&[put_at(2, 1), put_at(3, 7)])),
            Ok(())
        );
        // A swap answered as failed whose value the store holds.
        let failed = [
            op(0, Some(10), Kind::Put(1)),
            op(20, Some(30), cas(Some(1), 2, Some(false))),
        ];
        assert!(linearizable(&failed, Some(&[put_at(2, 1), put_at(3, 2)])).is_err());
    }

    /// A random history of `clients` running against a true register, with a third of the
    /// requests unanswered (half of those taking effect, late), and the store's history of it.
    fn simulated(clients: u64, per_client: u64, seed: u64) -> (Vec<Op>, Vec<Effect>) {
        let mut rng = seed;
        let mut planned = Vec::new();
        let mut written = vec![None];
        for c in 0..clients {
            let mut now = 0;
            for s in 0..per_client {
                let r = xorshift(&mut rng);
                let call = now + r % 7;
                let point = call + 1 + (r >> 8) % 40;
                let unanswered = (r >> 16).is_multiple_of(3);
                // An unanswered request takes effect (late) or not at all.
                let point = if unanswered {
                    point + (r >> 24) % 400
                } else {
                    point
                };
                let happens = !unanswered || (r >> 40).is_multiple_of(2);
                let answer = (!unanswered).then(|| point + 1 + (r >> 32) % 40);
                now = answer.unwrap_or(call + 100);
                let value = c * 1_000_000 + s + 1;
                let kind = match (r >> 48) % 10 {
                    0..=2 => Kind::Put(value),
                    3..=4 => Kind::Cas {
                        expect: written[(r >> 52) as usize % written.len()],
                        new: value,
                        succeeded: None,
                    },
                    5 => Kind::Delete { removed_at: None },
                    _ if unanswered => continue,
                    _ => Kind::Read(None),
                };
                written.push(Some(value));
                planned.push((point, happens, c, call, answer, kind));
            }
        }
        planned.sort_by_key(|p| p.0);
        let (mut value, mut revision) = (None, 1);
        let mut ops = Vec::new();
        let mut effects = Vec::new();
        for (_, happens, client, call, answer, mut kind) in planned {
            if happens {
                let before = value;
                match &mut kind {
                    Kind::Put(v) => value = Some(*v),
                    Kind::Cas {
                        expect,
                        new,
                        succeeded,
                    } => {
                        let ok = *expect == value;
                        if ok {
                            value = Some(*new);
                        }
                        *succeeded = answer.map(|_| ok);
                    }
                    Kind::Delete { removed_at } => {
                        if value.is_some() {
                            value = None;
                            revision += 1;
                            effects.push(deleted_at(revision));
                            *removed_at = answer.map(|_| revision);
                        }
                    }
                    Kind::Read(seen) => *seen = value,
                }
                if value != before && value.is_some() {
                    revision += 1;
                    effects.push(Effect { revision, value });
                }
            }
            ops.push(Op {
                key: 0,
                client: client as usize,
                call: Duration::from_millis(call),
                answer: answer.map(Duration::from_millis),
                kind,
            });
        }
        (ops, effects)
    }

    #[test]
    fn the_stores_history_decides_long_histories_full_of_unanswered_requests() {
        for seed in 1..=5u64 {
            let (ops, effects) = simulated(6, 2_000, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let unanswered = ops.iter().filter(|o| o.answer.is_none()).count();
            assert!(unanswered > ops.len() / 5, "{unanswered} of {}", ops.len());
            assert_eq!(linearizable(&ops, Some(&effects)), Ok(()), "seed {seed}");
            // A last read of the first value written is stale: acknowledged writes followed it.
            let end = ops
                .iter()
                .filter_map(|o| o.answer)
                .max()
                .unwrap_or_default();
            let mut stale = ops.clone();
            stale.push(Op {
                key: 0,
                client: 99,
                call: end + Duration::from_secs(1),
                answer: Some(end + Duration::from_secs(2)),
                kind: Kind::Read(effects[0].value),
            });
            assert!(linearizable(&stale, Some(&effects)).is_err(), "seed {seed}");
        }
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
