//! etcd's request rules and their errors, written once for both ends of the client plane.
//!
//! The client gateway checks a request as etcd's gRPC layer does, to refuse it without a trip to
//! consensus; consensus checks it again before anything reaches the raft log, because the write
//! stream is a process (and version) boundary it does not trust. Both run the functions here, each
//! over its own types: the gateway over the protobuf messages, consensus over its requests, through
//! the small views [`Range`], [`Put`], [`Delete`] and the [`Txn`] trait.
//!
//! [`Refusal`]s are etcd's: the gRPC code and the exact message `etcdctl` prints. The catalogue
//! of every error the member gives a client lives in [`refusal`].

use std::collections::BTreeSet;

use crate::code;

/// An error as etcd gives it to a client: a gRPC code and its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: u32,
    pub message: &'static str,
}

/// Every fixed error etcd's client API gives, by name.
pub mod refusal {
    use super::{Refusal, code};

    macro_rules! refusals {
        ($($(#[$doc:meta])* $name:ident => $code:ident, $msg:literal;)*) => {
            $($(#[$doc])* pub const $name: Refusal = Refusal { code: code::$code, message: $msg };)*
        };
    }

    refusals! {
        EMPTY_KEY => INVALID_ARGUMENT, "etcdserver: key is not provided";
        /// A request op with no operation set (etcd's answer to it).
        KEY_NOT_FOUND => INVALID_ARGUMENT, "etcdserver: key not found";
        VALUE_PROVIDED => INVALID_ARGUMENT, "etcdserver: value is provided";
        LEASE_PROVIDED => INVALID_ARGUMENT, "etcdserver: lease is provided";
        TOO_MANY_OPS => INVALID_ARGUMENT, "etcdserver: too many operations in txn request";
        DUPLICATE_KEY => INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request";
        REQUEST_TOO_LARGE => INVALID_ARGUMENT, "etcdserver: request is too large";
        INVALID_SORT_OPTION => INVALID_ARGUMENT, "etcdserver: invalid sort option";
        COMPACTED => OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted";
        FUTURE_REV => OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision";
        LEASE_NOT_FOUND => NOT_FOUND, "etcdserver: requested lease not found";
        NO_LEADER => UNAVAILABLE, "etcdserver: no leader";
        NOT_LEADER => FAILED_PRECONDITION, "etcdserver: not leader";
        BAD_LEADER_TRANSFEREE => FAILED_PRECONDITION, "etcdserver: bad leader transferee";
        LEADER_TRANSFER_TIMEOUT => UNAVAILABLE, "etcdserver: request timed out, leader transfer took too long";
        TIMEOUT => UNAVAILABLE, "etcdserver: request timed out";
        STOPPED => UNAVAILABLE, "etcdserver: server stopped";
    }
}

/// etcd's sort orders (`RangeRequest.SortOrder`) and targets (`RangeRequest.SortTarget`).
pub mod sort {
    pub const NONE: i32 = 0;
    pub const ASCEND: i32 = 1;
    pub const DESCEND: i32 = 2;
    pub const KEY: i32 = 0;
    pub const VERSION: i32 = 1;
    pub const CREATE: i32 = 2;
    pub const MOD: i32 = 3;
    pub const VALUE: i32 = 4;
}

/// What the rules read of a Range.
#[derive(Clone, Copy)]
pub struct Range<'a> {
    pub key: &'a [u8],
    pub sort_order: i32,
    pub sort_target: i32,
}

/// What the rules read of a Put.
#[derive(Clone, Copy)]
pub struct Put<'a> {
    pub key: &'a [u8],
    pub has_value: bool,
    pub lease: i64,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

/// What the rules read of a DeleteRange.
#[derive(Clone, Copy)]
pub struct Delete<'a> {
    pub key: &'a [u8],
    pub range_end: &'a [u8],
}

/// One operation of a txn branch.
pub enum Op<'a, T: ?Sized> {
    Range(Range<'a>),
    Put(Put<'a>),
    Delete(Delete<'a>),
    Txn(&'a T),
    /// A request op with no operation set (only a protobuf message can be so).
    Empty,
}

/// A txn as the rules see it.
pub trait Txn {
    fn compares(&self) -> usize;
    /// Whether some compare has an empty key.
    fn compare_key_missing(&self) -> bool;
    /// The ops of the success (`true`) or failure branch.
    fn branch(&self, success: bool) -> impl ExactSizeIterator<Item = Op<'_, Self>>;
}

/// Whether etcd knows how to sort by `target`.
pub fn sort_target_known(target: i32) -> bool {
    (sort::KEY..=sort::VALUE).contains(&target)
}

pub fn range(r: Range<'_>) -> Result<(), Refusal> {
    if r.key.is_empty() {
        return Err(refusal::EMPTY_KEY);
    }
    // etcd 3.4 sorts nothing for an unknown order, whatever the target; with a known order it
    // sorts by the target and crashes on an unknown one, which is refused as etcd 3.5 does.
    let sorts = (sort::NONE..=sort::DESCEND).contains(&r.sort_order);
    if sorts && !sort_target_known(r.sort_target) {
        return Err(refusal::INVALID_SORT_OPTION);
    }
    Ok(())
}

pub fn put(p: Put<'_>) -> Result<(), Refusal> {
    if p.key.is_empty() {
        return Err(refusal::EMPTY_KEY);
    }
    if p.ignore_value && p.has_value {
        return Err(refusal::VALUE_PROVIDED);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(refusal::LEASE_PROVIDED);
    }
    Ok(())
}

pub fn delete(d: Delete<'_>) -> Result<(), Refusal> {
    if d.key.is_empty() {
        return Err(refusal::EMPTY_KEY);
    }
    Ok(())
}

/// etcd 3.4 serves a txn without raft (and so without the size check) when every operation of
/// both branches is a Range; a nested txn makes it a write, whatever it holds.
pub fn txn_is_read_only<T: Txn + ?Sized>(t: &T) -> bool {
    let ranges = |success| t.branch(success).all(|op| matches!(op, Op::Range(_)));
    ranges(true) && ranges(false)
}

/// etcd's checks of a txn: the op counts and every op, then no key written twice (or written and
/// deleted) by one branch.
pub fn txn<T: Txn + ?Sized>(t: &T, max_txn_ops: u32) -> Result<(), Refusal> {
    txn_shape(t, i64::from(max_txn_ops))?;
    overlaps(t, true)?;
    overlaps(t, false)?;
    Ok(())
}

/// The largest of the three lists counts against the limit, and a nested txn gets only what that
/// leaves (possibly nothing, or less than nothing, which refuses even an empty nested txn).
fn txn_shape<T: Txn + ?Sized>(t: &T, max_ops: i64) -> Result<(), Refusal> {
    let ops = t
        .compares()
        .max(t.branch(true).len())
        .max(t.branch(false).len());
    let ops = i64::try_from(ops).unwrap_or(i64::MAX);
    if ops > max_ops {
        return Err(refusal::TOO_MANY_OPS);
    }
    if t.compare_key_missing() {
        return Err(refusal::EMPTY_KEY);
    }
    for op in t.branch(true).chain(t.branch(false)) {
        match op {
            Op::Range(r) => range(r)?,
            Op::Put(p) => put(p)?,
            Op::Delete(d) => delete(d)?,
            Op::Txn(n) => txn_shape(n, max_ops - ops)?,
            Op::Empty => return Err(refusal::KEY_NOT_FOUND),
        }
    }
    Ok(())
}

/// Deleted spans `[begin, end)` of one branch; a single key `k` is `[k, k\0)`. A span whose end
/// is not above its begin covers nothing, as in etcd's interval tree (so a delete "from key",
/// whose range end is "\0", never conflicts).
#[derive(Default)]
struct DeletedSpans(Vec<(Vec<u8>, Vec<u8>)>);

impl DeletedSpans {
    fn insert(&mut self, key: &[u8], range_end: &[u8]) {
        let end = if range_end.is_empty() {
            let mut k = Vec::with_capacity(key.len() + 1);
            k.extend_from_slice(key);
            k.push(0);
            k
        } else {
            range_end.to_vec()
        };
        self.0.push((key.to_vec(), end));
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(begin, end)| begin.as_slice() <= key && key < end.as_slice())
    }

    /// A nested branch's spans join this level's, as etcd carries over those that end above "\0".
    fn absorb(&mut self, other: DeletedSpans) {
        self.0.extend(
            other
                .0
                .into_iter()
                .filter(|(_, end)| end.as_slice() > [0u8].as_slice()),
        );
    }
}

/// One branch's puts and deletes, nested txns included, in etcd's order of checks: a key put
/// twice, or put and deleted, refuses the txn. The same key in both branches of one nested txn
/// is fine, since only one runs.
fn overlaps<T: Txn + ?Sized>(
    t: &T,
    success: bool,
) -> Result<(BTreeSet<Vec<u8>>, DeletedSpans), Refusal> {
    let mut dels = DeletedSpans::default();
    for op in t.branch(success) {
        if let Op::Delete(d) = op {
            dels.insert(d.key, d.range_end);
        }
    }
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in t.branch(success) {
        let Op::Txn(n) = op else { continue };
        let (puts_then, dels_then) = overlaps(n, true)?;
        let (puts_else, dels_else) = overlaps(n, false)?;
        for k in &puts_then {
            if puts.contains(k) || dels.covers(k) {
                return Err(refusal::DUPLICATE_KEY);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.covers(&k) {
                return Err(refusal::DUPLICATE_KEY);
            }
            puts.insert(k);
        }
        dels.absorb(dels_then);
        dels.absorb(dels_else);
    }
    for op in t.branch(success) {
        let Op::Put(p) = op else { continue };
        if puts.contains(p.key) || dels.covers(p.key) {
            return Err(refusal::DUPLICATE_KEY);
        }
        puts.insert(p.key.to_vec());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A txn of the rules' own, for their tests.
    #[derive(Default)]
    struct T {
        compares: Vec<Vec<u8>>,
        success: Vec<O>,
        failure: Vec<O>,
    }

    enum O {
        Get(&'static str),
        Put(&'static str),
        Del(&'static str, &'static str),
        Txn(T),
        Empty,
    }

    impl Txn for T {
        fn compares(&self) -> usize {
            self.compares.len()
        }
        fn compare_key_missing(&self) -> bool {
            self.compares.iter().any(|k| k.is_empty())
        }
        fn branch(&self, success: bool) -> impl ExactSizeIterator<Item = Op<'_, Self>> {
            let ops = if success {
                &self.success
            } else {
                &self.failure
            };
            ops.iter().map(|o| match o {
                O::Get(k) => Op::Range(Range {
                    key: k.as_bytes(),
                    sort_order: 0,
                    sort_target: 0,
                }),
                O::Put(k) => Op::Put(Put {
                    key: k.as_bytes(),
                    has_value: false,
                    lease: 0,
                    ignore_value: false,
                    ignore_lease: false,
                }),
                O::Del(k, e) => Op::Delete(Delete {
                    key: k.as_bytes(),
                    range_end: e.as_bytes(),
                }),
                O::Txn(t) => Op::Txn(t),
                O::Empty => Op::Empty,
            })
        }
    }

    fn then(ops: Vec<O>) -> T {
        T {
            success: ops,
            ..T::default()
        }
    }

    #[test]
    fn a_nested_txn_makes_a_txn_a_write_whatever_it_holds() {
        assert!(txn_is_read_only(&then(vec![O::Get("a"), O::Get("b")])));
        assert!(!txn_is_read_only(&then(vec![O::Get("a"), O::Put("b")])));
        assert!(!txn_is_read_only(&then(vec![O::Txn(then(vec![O::Get(
            "a"
        )]))])));
    }

    #[test]
    fn keys_written_twice_by_one_branch_are_refused() {
        assert_eq!(
            txn(&then(vec![O::Put("a"), O::Put("a")]), 128),
            Err(refusal::DUPLICATE_KEY)
        );
        assert_eq!(
            txn(&then(vec![O::Del("a", "c"), O::Put("b")]), 128),
            Err(refusal::DUPLICATE_KEY)
        );
        // A delete "from key" covers nothing here, as in etcd.
        assert!(txn(&then(vec![O::Del("a", "\0"), O::Put("b")]), 128).is_ok());
        // Both branches of one nested txn may put the same key: only one runs.
        let nested = T {
            success: vec![O::Put("a")],
            failure: vec![O::Put("a")],
            ..T::default()
        };
        assert!(txn(&then(vec![O::Txn(nested)]), 128).is_ok());
    }

    #[test]
    fn op_counts_and_empty_ops_are_refused_as_etcd_does() {
        let many = then(vec![O::Get("a"), O::Get("b"), O::Get("c")]);
        assert_eq!(txn(&many, 2), Err(refusal::TOO_MANY_OPS));
        assert!(txn(&many, 3).is_ok());
        assert_eq!(txn(&then(vec![O::Empty]), 8), Err(refusal::KEY_NOT_FOUND));
        let missing = T {
            compares: vec![Vec::new()],
            ..T::default()
        };
        assert_eq!(txn(&missing, 8), Err(refusal::EMPTY_KEY));
    }

    #[test]
    fn sort_options_are_refused_only_when_etcd_would_sort() {
        let r = |sort_order, sort_target| Range {
            key: b"k",
            sort_order,
            sort_target,
        };
        assert_eq!(range(r(sort::ASCEND, 7)), Err(refusal::INVALID_SORT_OPTION));
        assert_eq!(range(r(-1, 7)), Ok(()));
        assert_eq!(range(r(sort::DESCEND, sort::VALUE)), Ok(()));
    }
}
