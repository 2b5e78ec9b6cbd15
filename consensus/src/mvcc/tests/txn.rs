//! Txns: compares, branches, their checks, and read-only txns on a view.

use super::*;

#[test]
fn txn_compares_branches_and_sees_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    apply(&db, |a| a.put(&put("k", "v1")).unwrap());
    let txn = TxnRequest {
        compare: vec![Compare {
            target: compare::VALUE,
            result: compare::EQUAL,
            key: b"k".to_vec(),
            value: b"v1".to_vec(),
            ..Default::default()
        }],
        success: vec![
            RequestOp::Put(put("k", "v2")),
            RequestOp::Put(put("other", "x")),
            RequestOp::Range(get("k", "", 0)),
        ],
        failure: vec![RequestOp::Range(get("k", "", 0))],
    };
    let r = apply(&db, |a| a.txn(&txn).unwrap());
    assert!(r.succeeded);
    assert_eq!(r.revision, 3);
    let ResponseOp::Range(seen) = &r.responses[2] else {
        panic!("expected a range response")
    };
    assert_eq!(seen.kvs[0].value, b"v2");
    // One revision for the whole txn.
    let view = View::snapshot(&db);
    assert_eq!(
        view.range(&get("other", "", 0)).unwrap().kvs[0].mod_revision,
        3
    );
    drop(view);
    let r = apply(&db, |a| a.txn(&txn).unwrap());
    assert!(!r.succeeded);
    assert_eq!(r.revision, 3);
    // A missing key compares as version 0.
    let missing = TxnRequest {
        compare: vec![Compare {
            target: compare::VERSION,
            result: compare::EQUAL,
            key: b"nope".to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(apply(&db, |a| a.txn(&missing).unwrap()).succeeded);
    // A failing branch writes nothing.
    let bad = TxnRequest {
        success: vec![
            RequestOp::Put(put("z", "1")),
            RequestOp::Put(PutRequest {
                ignore_value: true,
                ..put("nope", "")
            }),
        ],
        ..Default::default()
    };
    assert_eq!(apply(&db, |a| a.txn(&bad)), Err(ee::key_not_found()));
    let view = View::snapshot(&db);
    assert!(view.range(&get("z", "", 0)).unwrap().kvs.is_empty());
    assert_eq!(view.current_revision().unwrap(), 3);
}

#[test]
fn nested_compares_see_the_state_before_the_txn() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    // The outer txn creates "a"; the nested one asks whether "a" exists: in etcd it does not
    // yet, since every compare is evaluated before the first operation.
    let nested = TxnRequest {
        compare: vec![cmp(compare::VERSION, compare::GREATER, "a")],
        success: vec![RequestOp::Put(put("seen", "yes"))],
        failure: vec![RequestOp::Put(put("seen", "no"))],
    };
    let txn = TxnRequest {
        success: vec![RequestOp::Put(put("a", "1")), RequestOp::Txn(nested)],
        ..Default::default()
    };
    let r = apply(&db, |a| a.txn(&txn).unwrap());
    assert_eq!(r.revision, 2);
    let ResponseOp::Txn(inner) = &r.responses[1] else {
        panic!("expected a nested txn response")
    };
    // A nested txn's header is empty, its put's is the txn's revision.
    assert_eq!((inner.succeeded, inner.revision), (false, 0));
    let view = View::snapshot(&db);
    assert_eq!(view.range(&get("seen", "", 0)).unwrap().kvs[0].value, b"no");
}

#[test]
fn compare_rules_follow_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    apply(&db, |a| a.put(&put("a", "x")).unwrap());
    let view = View::snapshot(&db);
    let holds = |c: Compare| view.evaluate(&[c]).unwrap();
    // An unknown target compares as equal; an unknown result always holds.
    assert!(holds(cmp(9, compare::EQUAL, "a")));
    assert!(!holds(cmp(9, compare::NOT_EQUAL, "a")));
    assert!(holds(cmp(compare::VERSION, 7, "a")));
    // A value compare on a missing key fails whatever the result; others compare with zeros.
    assert!(!holds(cmp(compare::VALUE, compare::NOT_EQUAL, "missing")));
    assert!(holds(cmp(compare::MOD, compare::EQUAL, "missing")));
    // With a range end every key must satisfy it; an empty range compares with zeros.
    let mut c = cmp(compare::CREATE, compare::LESS, "a");
    c.range_end = b"\0".to_vec();
    c.create_revision = 3;
    assert!(holds(c.clone()));
    c.key = b"b".to_vec();
    c.range_end = b"a".to_vec();
    assert!(holds(c));
}

#[test]
fn txn_checks_puts_then_ranges_and_a_put_its_lease_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    apply(&db, |a| a.put(&put("k", "v")).unwrap());
    let missing_ignore = PutRequest {
        ignore_value: true,
        ..put("nope", "")
    };
    let future = RangeRequest {
        revision: 99,
        ..get("k", "", 0)
    };
    // etcd checks every put on the path before any range, whatever their order.
    let txn = TxnRequest {
        success: vec![
            RequestOp::Range(future.clone()),
            RequestOp::Put(missing_ignore.clone()),
        ],
        ..Default::default()
    };
    assert_eq!(apply(&db, |a| a.txn(&txn)), Err(ee::key_not_found()));
    let txn = TxnRequest {
        success: vec![RequestOp::Range(future), RequestOp::Put(put("z", "1"))],
        ..Default::default()
    };
    assert_eq!(apply(&db, |a| a.txn(&txn)), Err(ee::future_rev()));
    // Inside a txn the missing key comes before the unknown lease; outside, the lease first.
    let both = PutRequest {
        lease: 5,
        ..missing_ignore
    };
    let txn = TxnRequest {
        success: vec![RequestOp::Put(both.clone())],
        ..Default::default()
    };
    assert_eq!(apply(&db, |a| a.txn(&txn)), Err(ee::key_not_found()));
    assert_eq!(apply(&db, |a| a.put(&both)), Err(ee::lease_not_found()));
    let view = View::snapshot(&db);
    assert_eq!(view.current_revision().unwrap(), 2);
}

#[test]
fn read_only_txn_on_a_view_matches_the_applied_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    apply(&db, |a| a.put(&put("a", "1")).unwrap());
    apply(&db, |a| a.put(&put("b", "2")).unwrap());
    let txn = TxnRequest {
        compare: vec![cmp(compare::VERSION, compare::EQUAL, "a")],
        success: vec![],
        failure: vec![
            RequestOp::Range(get("a", "c", 0)),
            RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp::Range(get("b", "", 2))],
                failure: vec![],
            }),
        ],
    };
    let from_view = View::snapshot(&db).txn(&txn).unwrap();
    let applied = apply(&db, |a| a.txn(&txn).unwrap());
    assert_eq!(from_view, applied);
    assert_eq!(from_view.revision, 3);
    assert!(!from_view.succeeded);
    let ResponseOp::Txn(inner) = &from_view.responses[1] else {
        panic!("expected a nested txn")
    };
    assert_eq!(inner.revision, 0);
}

#[test]
fn a_txn_failing_half_way_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    apply(&db, |a| a.put(&put("a", "1")).unwrap());
    apply(&db, |a| a.put(&put("k", "2")).unwrap());
    // etcd's checks pass ("k" exists before the txn, and a delete "from key" overlaps no put
    // in its duplicate check), then the put finds "k" deleted: etcd 3.4 crashes here.
    let txn = TxnRequest {
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"\0".to_vec(),
                prev_kv: false,
            }),
            RequestOp::Put(PutRequest {
                ignore_value: true,
                ..put("k", "")
            }),
        ],
        ..Default::default()
    };
    assert!(check_txn(&txn, 128).is_ok());
    let mut a = Applier::new(&db).unwrap();
    assert_eq!(a.txn(&txn), Err(ee::key_not_found()));
    assert_eq!(a.revision(), 3);
    // The same batch goes on from where it was: the delete left no trace.
    assert_eq!(a.put(&put("b", "3")).unwrap().revision, 4);
    a.flush().unwrap();
    let view = View::snapshot(&db);
    let all = view.range(&get("\0", "\0", 0)).unwrap();
    assert_eq!(keys_of(&all, 0), "a,b,k");
    let rows: Vec<Vec<u8>> = db.change_keys();
    // One change per revision 2, 3 and 4, each at sub revision 0.
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r[8..] == [0u8; 8]));
}
