//! The checks a request passes before it is proposed, as etcd's gRPC layer makes them:
//! [`check_range`], [`check_put`], [`check_delete`], [`check_txn`] (op counts, then no key
//! written twice by one branch).

use std::collections::BTreeSet;

use super::types::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, sort};
use super::view::sort_less;
use crate::etcd_error::{self as ee, EtcdError};

/// Checks done before a request is proposed, as etcd's gRPC layer does: nothing invalid reaches
/// the raft log. The client gateway runs the same checks first; these never refuse what etcd
/// accepts.
pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(ee::empty_key());
    }
    // etcd 3.4 ignores an unknown sort order (nothing is sorted) but has no sorter for an
    // unknown target, which crashes it whenever it sorts; refused as etcd 3.5 refuses it.
    let sorts = (sort::NONE..=sort::DESCEND).contains(&r.sort_order);
    if sorts && sort_less(r.sort_target).is_none() {
        return Err(ee::invalid_sort_option());
    }
    Ok(())
}

pub fn check_put(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(ee::empty_key());
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(ee::value_provided());
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(ee::lease_provided());
    }
    Ok(())
}

pub fn check_delete(d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if d.key.is_empty() {
        return Err(ee::empty_key());
    }
    Ok(())
}

/// etcd's checks of a Txn: the op counts and every op, then no key written twice (or written and
/// deleted) by one branch.
pub fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    check_txn_shape(t, i64::try_from(max_ops).unwrap_or(i64::MAX))?;
    check_overlaps(&t.success)?;
    check_overlaps(&t.failure)?;
    Ok(())
}

/// The largest of the three lists counts against the limit, and a nested txn gets only what that
/// leaves (possibly nothing, or less than nothing, which refuses even an empty nested txn).
fn check_txn_shape(t: &TxnRequest, max_ops: i64) -> Result<(), EtcdError> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    let ops = i64::try_from(ops).unwrap_or(i64::MAX);
    if ops > max_ops {
        return Err(ee::too_many_ops());
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ee::empty_key());
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => check_range(r)?,
            RequestOp::Put(p) => check_put(p)?,
            RequestOp::DeleteRange(d) => check_delete(d)?,
            RequestOp::Txn(n) => check_txn_shape(n, max_ops - ops)?,
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
            let mut k = key.to_vec();
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
fn check_overlaps(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, DeletedSpans), EtcdError> {
    let mut dels = DeletedSpans::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            dels.insert(&d.key, &d.range_end);
        }
    }
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_overlaps(&t.success)?;
        let (puts_else, dels_else) = check_overlaps(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.covers(k) {
                return Err(ee::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.covers(&k) {
                return Err(ee::duplicate_key());
            }
            puts.insert(k);
        }
        dels.absorb(dels_then);
        dels.absorb(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || dels.covers(&p.key) {
            return Err(ee::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}
