//! The latest-version cache and prefetch across batches.

use super::*;

#[test]
fn a_prefetched_newest_version_is_what_the_put_builds_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let step = |state, f: &dyn Fn(&mut Applier)| apply_batch(&db, state, f);
    let state = step(MvccState::load(&db).unwrap(), &|a| {
        a.put(&put("k", "1")).unwrap(); // revision 2
        a.put(&put("gone", "1")).unwrap(); // revision 3
        a.delete_range(&DeleteRangeRequest {
            key: b"gone".to_vec(),
            ..Default::default()
        })
        .unwrap(); // revision 4
    });
    drop(state);
    // A fresh state (nothing cached), as after a restart: prefetch, then apply.
    let mut state = MvccState::load(&db).unwrap();
    for key in [&b"k"[..], b"gone", b"new"] {
        state.prefetch(&db, key).unwrap();
    }
    // A write after the prefetch (between batches) moves the cached version on too.
    state = step(state, &|a| {
        a.put(&put("k", "2")).unwrap(); // revision 5
    });
    drop(step(state, &|a| {
        a.put(&put("k", "3")).unwrap(); // revision 6
        a.put(&put("gone", "2")).unwrap(); // revision 7: created again
        a.put(&put("new", "1")).unwrap(); // revision 8
    }));
    let view = View::snapshot(&db);
    let meta = |k: &str| {
        let kv = &view.range(&get(k, "", 0)).unwrap().kvs[0];
        (kv.create_revision, kv.mod_revision, kv.version)
    };
    assert_eq!(meta("k"), (2, 6, 3));
    assert_eq!(meta("gone"), (7, 7, 1));
    assert_eq!(meta("new"), (8, 8, 1));
}

#[test]
fn latest_cache_across_batches_keeps_create_and_version_right() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let step = |state, f: &dyn Fn(&mut Applier)| apply_batch(&db, state, f);
    let mut state = MvccState::load(&db).unwrap();
    state = step(state, &|a| {
        a.put(&put("k", "1")).unwrap();
    });
    state = step(state, &|a| {
        a.put(&put("k", "2")).unwrap();
    });
    state = step(state, &|a| {
        a.delete_range(&DeleteRangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .unwrap();
    });
    state = step(state, &|a| {
        a.put(&put("k", "3")).unwrap(); // revision 5: created again
    });
    // A txn that writes k and then fails must leave neither k nor the cache changed.
    state = step(state, &|a| {
        let failing = TxnRequest {
            success: vec![
                RequestOp::Put(put("k", "lost")),
                RequestOp::Put(PutRequest {
                    ignore_value: true,
                    ..put("missing", "")
                }),
            ],
            ..Default::default()
        };
        assert!(a.txn(&failing).is_err());
        a.put(&put("k", "4")).unwrap(); // revision 6
    });
    state = step(state, &|a| {
        a.compact(&CompactionRequest {
            revision: 6,
            physical: true,
        })
        .unwrap();
        a.put(&put("k", "5")).unwrap(); // revision 7
    });
    drop(state);
    let kv = &View::snapshot(&db).range(&get("k", "", 0)).unwrap().kvs[0];
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.as_slice()
        ),
        (5, 7, 3, b"5".as_slice())
    );
}
