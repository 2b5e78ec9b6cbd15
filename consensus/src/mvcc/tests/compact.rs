//! Compaction and the reads it refuses.

use super::*;

#[test]
fn compaction_drops_old_versions_and_refuses_old_reads() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for v in ["1", "2", "3"] {
        apply(&db, |a| a.put(&put("k", v)).unwrap());
    }
    apply(&db, |a| {
        a.delete_range(&DeleteRangeRequest {
            key: b"gone".to_vec(),
            ..Default::default()
        })
        .unwrap()
    });
    apply(&db, |a| {
        a.compact(&CompactionRequest {
            revision: 3,
            physical: true,
        })
        .unwrap()
    });
    let view = View::snapshot(&db);
    assert_eq!(view.range(&get("k", "", 2)), Err(ee::compacted()));
    assert_eq!(view.range(&get("k", "", 3)).unwrap().kvs[0].value, b"2");
    assert_eq!(view.range(&get("k", "", 0)).unwrap().kvs[0].value, b"3");
    drop(view);
    // Only the versions at revisions 3 and 4 of "k" are left, and the tombstone-free "gone"
    // never had a row.
    let rows: Vec<(Vec<u8>, i64)> = db
        .version_rows()
        .iter()
        .map(|r| parse_row(r).unwrap())
        .collect();
    assert_eq!(rows, vec![(b"k".to_vec(), 4), (b"k".to_vec(), 3)]);
    assert_eq!(
        apply(&db, |a| a.compact(&CompactionRequest {
            revision: 3,
            physical: false
        })),
        Err(ee::compacted())
    );
}

#[test]
fn negative_revisions_and_compaction_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let neg = |rev| RangeRequest {
        revision: rev,
        ..get("k", "", 0)
    };
    let txn_of = |rev| TxnRequest {
        success: vec![RequestOp::Range(neg(rev))],
        ..Default::default()
    };
    apply(&db, |a| a.put(&put("k", "v")).unwrap());
    {
        let view = View::snapshot(&db);
        // Never compacted: -1 reads the current revision, below it counts as compacted.
        assert!(view.txn(&txn_of(-1)).is_ok());
        assert_eq!(view.txn(&txn_of(-2)), Err(ee::compacted()));
        assert_eq!(view.range(&neg(-2)).unwrap().kvs.len(), 1);
    }
    // A first compaction at 0 is accepted, a second one is not.
    assert_eq!(
        apply(&db, |a| a.compact(&CompactionRequest {
            revision: 0,
            physical: false
        })),
        Ok(2)
    );
    assert_eq!(
        apply(&db, |a| a.compact(&CompactionRequest {
            revision: 0,
            physical: false
        })),
        Err(ee::compacted())
    );
    let view = View::snapshot(&db);
    assert_eq!(view.txn(&txn_of(-1)), Err(ee::compacted()));
    // The same rule in a write txn.
    let mut write = txn_of(-1);
    write.success.push(RequestOp::Put(put("w", "1")));
    assert_eq!(apply(&db, |a| a.txn(&write)), Err(ee::compacted()));
    // Reading at the compacted revision itself is fine.
    assert!(view.range(&neg(0)).is_ok());
}
