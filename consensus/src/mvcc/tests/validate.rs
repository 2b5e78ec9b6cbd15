//! Validation and a txn's overlapping keys.

use super::*;

#[test]
fn validation_matches_etcd() {
    assert_eq!(check_put(&put("", "v")), Err(ee::empty_key()));
    let dup = TxnRequest {
        success: vec![RequestOp::Put(put("a", "1")), RequestOp::Put(put("a", "2"))],
        ..Default::default()
    };
    assert_eq!(check_txn(&dup, 128), Err(ee::duplicate_key()));
    let overlap = TxnRequest {
        success: vec![
            RequestOp::Put(put("ab", "1")),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                prev_kv: false,
            }),
        ],
        ..Default::default()
    };
    assert_eq!(check_txn(&overlap, 128), Err(ee::duplicate_key()));
    let many = TxnRequest {
        success: (0..3)
            .map(|i| RequestOp::Put(put(&format!("k{i}"), "")))
            .collect(),
        ..Default::default()
    };
    assert_eq!(check_txn(&many, 2), Err(ee::too_many_ops()));
    assert!(check_txn(&many, 3).is_ok());
}

#[test]
fn txn_overlaps_follow_etcd() {
    let del = |k: &str, e: &str| {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: e.into(),
            prev_kv: false,
        })
    };
    let nested = |s: Vec<RequestOp>, f: Vec<RequestOp>| {
        RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: s,
            failure: f,
        })
    };
    let txn = |ops: Vec<RequestOp>| TxnRequest {
        success: ops,
        ..Default::default()
    };
    let p = |k: &str| RequestOp::Put(put(k, ""));
    // The same key in both branches of one nested txn: only one runs.
    assert!(check_txn(&txn(vec![nested(vec![p("a")], vec![p("a")])]), 128).is_ok());
    // A delete "from key" covers nothing in etcd's check.
    assert!(check_txn(&txn(vec![del("a", "\0"), p("b")]), 128).is_ok());
    assert_eq!(
        check_txn(&txn(vec![del("a", "c"), p("b")]), 128),
        Err(ee::duplicate_key())
    );
    assert_eq!(
        check_txn(&txn(vec![nested(vec![del("m", "")], vec![]), p("m")]), 128),
        Err(ee::duplicate_key())
    );
    // A nested txn only gets what the outer one leaves of the limit.
    let deep = txn(vec![nested(vec![p("a"), p("b"), p("c")], vec![])]);
    assert!(check_txn(&deep, 4).is_ok());
    assert_eq!(check_txn(&deep, 3), Err(ee::too_many_ops()));
    let value = PutRequest {
        ignore_value: true,
        ..put("k", "v")
    };
    assert_eq!(check_put(&value), Err(ee::value_provided()));
}
