//! Compaction and the reads it refuses; its background pass in batches, resumed after a
//! restart, and HashKV while it runs.

use std::time::Duration;

use super::super::compact::{BATCH_ROWS, Plan, compact_batch, plan, run_passes};
use super::*;
use crate::storage::be_u64;

/// Runs the background pass to its end, as the compactor thread does (without its pauses).
fn finish_passes(db: &Db) -> i64 {
    run_passes(db, usize::MAX, Duration::ZERO)
        .unwrap()
        .expect("a pass without a limit finishes")
}

fn rows_of(db: &Db) -> Vec<(Vec<u8>, i64)> {
    db.version_rows()
        .iter()
        .map(|r| parse_row(r).unwrap())
        .collect()
}

fn compact(db: &Db, revision: i64) {
    apply(db, |a| {
        a.compact(&CompactionRequest {
            revision,
            physical: false,
        })
        .unwrap()
    });
}

/// `keys` keys written twice, every third deleted, then every fifth written again: a compaction
/// at the end has garbage in most keys, tombstones to drop, and keys with a live version older
/// than the compacted revision. Returns the revision after it all.
fn fill(db: &Db, keys: usize) -> i64 {
    let name = |i: usize| format!("key{i:06}");
    for round in ["a", "b"] {
        for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
            apply(db, |a| {
                for &i in chunk {
                    a.put(&put(&name(i), round)).unwrap();
                }
            });
        }
    }
    apply(db, |a| {
        for i in (0..keys).step_by(3) {
            a.delete_range(&DeleteRangeRequest {
                key: name(i).into(),
                ..Default::default()
            })
            .unwrap();
        }
        for i in (0..keys).step_by(5) {
            a.put(&put(&name(i), "c")).unwrap();
        }
        a.revision()
    })
}

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
    // Refused at once, while the old versions are still stored: the apply only records it.
    let view = View::snapshot(&db);
    assert_eq!(view.range(&get("k", "", 2)), Err(ee::compacted()));
    assert_eq!(view.range(&get("k", "", 3)).unwrap().kvs[0].value, b"2");
    assert_eq!(view.range(&get("k", "", 0)).unwrap().kvs[0].value, b"3");
    drop(view);
    assert_eq!(rows_of(&db).len(), 3);
    assert_eq!(finish_passes(&db), 3);
    // Only the versions at revisions 3 and 4 of "k" are left, and the tombstone-free "gone"
    // never had a row.
    assert_eq!(rows_of(&db), vec![(b"k".to_vec(), 4), (b"k".to_vec(), 3)]);
    let view = View::snapshot(&db);
    assert_eq!(view.range(&get("k", "", 2)), Err(ee::compacted()));
    assert_eq!(view.range(&get("k", "", 3)).unwrap().kvs[0].value, b"2");
    drop(view);
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

#[test]
fn the_background_pass_resumes_after_a_restart_and_hashes_do_not_depend_on_it() {
    let keys = 2 * BATCH_ROWS + 345;
    let dir = tempfile::tempdir().unwrap();
    let reference_dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let reference = Db::open(reference_dir.path()).unwrap();
    let current = fill(&db, keys);
    assert_eq!(fill(&reference, keys), current);
    let compacted = current - 1;
    compact(&db, compacted);
    compact(&reference, compacted);
    let hash = |db: &Db, rev| View::snapshot(db).hash_kv_at(rev).unwrap();
    let before = (hash(&db, 0), hash(&db, compacted));
    let stored = rows_of(&db).len();

    // Two batches, then the member stops (a clean stop flushes what they wrote; a crash loses
    // both the deletes and the position, which only makes the pass do them again).
    assert_eq!(run_passes(&db, 2, Duration::ZERO).unwrap(), None);
    let (finished, cursor) = db.compaction_progress().unwrap();
    assert_eq!(finished, None);
    assert_eq!(cursor.as_ref().map(|c| c.0), Some(compacted));
    let midway = rows_of(&db).len();
    assert!(midway < stored, "the first batches deleted something");
    // The hash at every revision is the same with the pass half done.
    assert_eq!((hash(&db, 0), hash(&db, compacted)), before);
    // Reads at the compacted revision and above see what they saw.
    let all = get("key", "kez", 0);
    let at = RangeRequest {
        revision: compacted,
        ..all.clone()
    };
    let view = View::snapshot(&reference);
    let (want_now, want_at) = (view.range(&all).unwrap(), view.range(&at).unwrap());
    drop(view);
    let view = View::snapshot(&db);
    assert_eq!(view.range(&all).unwrap(), want_now);
    assert_eq!(view.range(&at).unwrap(), want_at);
    assert_eq!(
        view.range(&RangeRequest {
            revision: compacted - 1,
            ..all.clone()
        }),
        Err(ee::compacted())
    );
    drop(view);

    drop(db);
    let db = Db::open(dir.path()).unwrap();
    // Goes on from where it stopped rather than from the first row.
    assert!(matches!(
        plan(compacted, None, db.compaction_progress().unwrap().1),
        Plan::Pass { from: Some(_), .. }
    ));
    assert_eq!(finish_passes(&db), compacted);
    assert_eq!(finish_passes(&reference), compacted);
    assert_eq!(rows_of(&db), rows_of(&reference));
    assert!(rows_of(&db).len() < midway);
    assert_eq!((hash(&db, 0), hash(&db, compacted)), before);
    assert_eq!(hash(&db, 0), hash(&reference, 0));
    assert_eq!(View::snapshot(&db).range(&all).unwrap(), want_now);
    assert_eq!(View::snapshot(&db).range(&at).unwrap(), want_at);
    // Nothing is left to do, and the change log up to the revision is gone.
    assert_eq!(
        db.compaction_progress().unwrap(),
        (Some(compacted), None),
        "finished, without a position"
    );
    assert!(
        db.change_keys()
            .iter()
            .all(|k| be_u64(&k[..8]) as i64 > compacted)
    );
}

#[test]
fn batches_ending_inside_a_keys_versions_change_no_read_and_no_hash() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for v in 0..3 {
        apply(&db, |a| a.put(&put("d", &v.to_string())).unwrap()); // revisions 2 to 4
    }
    apply(&db, |a| {
        a.delete_range(&DeleteRangeRequest {
            key: b"d".to_vec(),
            ..Default::default()
        })
        .unwrap()
    }); // 5
    for v in 0..7 {
        apply(&db, |a| a.put(&put("k", &v.to_string())).unwrap()); // 6 to 12
    }
    apply(&db, |a| a.put(&put("z", "1")).unwrap()); // 13
    compact(&db, 9);
    let observe = |db: &Db| {
        let view = View::snapshot(db);
        let reads: Vec<RangeResponse> = [0, 9, 10]
            .into_iter()
            .map(|rev| view.range(&get("a", "zz", rev)).unwrap())
            .collect();
        (
            reads,
            view.hash_kv_at(0).unwrap(),
            view.hash_kv_at(9).unwrap(),
        )
    };
    let before = observe(&db);
    // One row a batch: batches start and end inside "d" (its tombstone first) and "k".
    let mut from = None;
    let mut batches = 0;
    loop {
        from = compact_batch(&db, 9, from.as_deref(), 1).unwrap();
        batches += 1;
        assert_eq!(observe(&db), before, "after batch {batches}");
        if from.is_none() {
            break;
        }
    }
    assert_eq!(batches, 12);
    assert_eq!(
        rows_of(&db),
        vec![
            (b"k".to_vec(), 12),
            (b"k".to_vec(), 11),
            (b"k".to_vec(), 10),
            (b"k".to_vec(), 9),
            (b"z".to_vec(), 13)
        ]
    );
}

#[test]
fn a_newer_compaction_supersedes_the_pass_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let current = fill(&db, 3 * BATCH_ROWS);
    compact(&db, current - 2);
    assert_eq!(run_passes(&db, 1, Duration::ZERO).unwrap(), None);
    compact(&db, current);
    assert_eq!(
        plan(current, None, db.compaction_progress().unwrap().1),
        Plan::Pass {
            revision: current,
            from: None
        },
        "starts over: the older position says nothing about the newer compaction"
    );
    assert_eq!(finish_passes(&db), current);
    // Every key has one version left: its newest, unless it was deleted.
    let rows = rows_of(&db);
    let mut keys: Vec<&Vec<u8>> = rows.iter().map(|(k, _)| k).collect();
    keys.dedup();
    assert_eq!(keys.len(), rows.len());
    assert_eq!(plan(current, Some(current), None), Plan::Idle);
    assert_eq!(plan(-1, None, None), Plan::Idle);
}
