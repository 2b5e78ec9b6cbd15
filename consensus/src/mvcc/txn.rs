//! Txns: the branch every (nested) txn takes, decided up front on the state before it
//! ([`TxnPath`]), their range checks, and compares as etcd evaluates them.

use super::types::{Compare, KeyValue, RequestOp, TxnRequest, compare};
use super::view::{Overlay, View, collect};
use crate::etcd_error::{self as ee, EtcdError};

/// Which branch each txn takes, decided before any of its operations runs: etcd evaluates the
/// compares of the txn and of every nested txn on the branches taken, all on the state before
/// the txn, so a nested compare never sees a write of its own txn.
#[derive(Debug)]
pub(super) struct TxnPath {
    pub(super) succeeded: bool,
    /// The paths of the nested txns of the chosen branch, in order.
    pub(super) nested: Vec<TxnPath>,
}

pub(super) fn branch(t: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded { &t.success } else { &t.failure }
}

pub(super) fn path_mismatch() -> EtcdError {
    ee::internal("txn path does not match the request")
}

pub(super) fn txn_path(
    view: &View,
    overlay: Option<&Overlay>,
    t: &TxnRequest,
) -> Result<TxnPath, EtcdError> {
    let succeeded = evaluate(view, overlay, &t.compare)?;
    let nested = branch(t, succeeded)
        .iter()
        .filter_map(|op| match op {
            RequestOp::Txn(n) => Some(txn_path(view, overlay, n)),
            _ => None,
        })
        .collect::<Result<_, _>>()?;
    Ok(TxnPath { succeeded, nested })
}

/// etcd's check of the ranges on a txn's path, before anything runs: a revision other than 0
/// must be neither in the future nor compacted. Unlike a plain Range, a negative revision counts
/// as compacted here once anything was compacted (or when below -1).
pub(super) fn check_txn_ranges(
    t: &TxnRequest,
    path: &TxnPath,
    current: i64,
    compacted: i64,
) -> Result<(), EtcdError> {
    let mut nested = path.nested.iter();
    for op in branch(t, path.succeeded) {
        match op {
            RequestOp::Range(r) => {
                if r.revision == 0 {
                    continue;
                }
                if r.revision > current {
                    return Err(ee::future_rev());
                }
                if r.revision < compacted {
                    return Err(ee::compacted());
                }
            }
            RequestOp::Txn(n) => {
                let p = nested.next().ok_or_else(path_mismatch)?;
                check_txn_ranges(n, p, current, compacted)?;
            }
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
        }
    }
    Ok(())
}

/// A txn's compares, all of which must hold, at the latest revision.
pub(super) fn evaluate(
    view: &View,
    overlay: Option<&Overlay>,
    compares: &[Compare],
) -> Result<bool, EtcdError> {
    for c in compares {
        let (_, rows) = collect(view, overlay, &c.key, &c.range_end, i64::MAX, usize::MAX)
            .map_err(ee::internal)?;
        let holds = if rows.is_empty() {
            // A value cannot be compared with a key that does not exist.
            c.target != compare::VALUE && compare_kv(c, &KeyValue::default())
        } else {
            rows.iter().all(|(k, r)| compare_kv(c, &r.to_kv(k)))
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One compare against one key as etcd does it: an unknown target compares as equal, and an
/// unknown result holds.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match c.target {
        compare::VALUE => kv.value.as_slice().cmp(c.value.as_slice()),
        compare::CREATE => kv.create_revision.cmp(&c.create_revision),
        compare::MOD => kv.mod_revision.cmp(&c.mod_revision),
        compare::VERSION => kv.version.cmp(&c.version),
        compare::LEASE => kv.lease.cmp(&c.lease),
        _ => Ordering::Equal,
    };
    match c.result {
        compare::EQUAL => ord == Ordering::Equal,
        compare::NOT_EQUAL => ord != Ordering::Equal,
        compare::GREATER => ord == Ordering::Greater,
        compare::LESS => ord == Ordering::Less,
        _ => true,
    }
}
