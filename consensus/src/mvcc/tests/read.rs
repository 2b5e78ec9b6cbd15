//! Reads: versions, history, ranges, limits, counts.

use super::*;

#[test]
fn revisions_versions_history_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let r = apply(&db, |a| a.put(&put("foo", "1")).unwrap());
    assert_eq!(r.revision, 2); // an empty store is at revision 1, as in etcd
    let r = apply(&db, |a| {
        a.put(&put("foo", "2")).unwrap();
        a.put(&PutRequest {
            prev_kv: true,
            ..put("foo", "3")
        })
        .unwrap()
    });
    assert_eq!(r.revision, 4);
    assert_eq!(r.prev_kv.unwrap().value, b"2");
    let view = View::snapshot(&db);
    let now = view.range(&get("foo", "", 0)).unwrap();
    assert_eq!(now.revision, 4);
    assert_eq!(
        now.kvs,
        vec![KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 4,
            version: 3,
            value: b"3".to_vec(),
            lease: 0
        }]
    );
    assert_eq!(view.range(&get("foo", "", 3)).unwrap().kvs[0].value, b"2");
    assert_eq!(view.range(&get("foo", "", 5)), Err(ee::future_rev()));
    drop(view);

    let d = apply(&db, |a| {
        a.delete_range(&DeleteRangeRequest {
            key: b"foo".to_vec(),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!((d.deleted, d.revision), (1, 5));
    // Deleting nothing does not move the revision.
    let d = apply(&db, |a| {
        a.delete_range(&DeleteRangeRequest {
            key: b"foo".to_vec(),
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!((d.deleted, d.revision), (0, 5));
    let r = apply(&db, |a| a.put(&put("foo", "again")).unwrap());
    let view = View::snapshot(&db);
    let kv = &view.range(&get("foo", "", 0)).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version, r.revision), (6, 1, 6));
    assert!(view.range(&get("foo", "", 5)).unwrap().kvs.is_empty());
    assert_eq!(view.range(&get("foo", "", 4)).unwrap().kvs[0].value, b"3");
}

#[test]
fn ranges_prefixes_limits_sort_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for (k, v) in [
        ("a", "9"),
        ("b\0", "8"),
        ("b", "7"),
        ("ba", "6"),
        ("c", "5"),
    ] {
        apply(&db, |a| a.put(&put(k, v)).unwrap());
    }
    let view = View::snapshot(&db);
    let keys = |r: RangeResponse| r.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(
        keys(view.range(&get("b", "c", 0)).unwrap()),
        vec![b"b".to_vec(), b"b\0".to_vec(), b"ba".to_vec()]
    );
    assert_eq!(view.range(&get("\0", "\0", 0)).unwrap().count, 5);
    let limited = view
        .range(&RangeRequest {
            limit: 2,
            ..get("a", "\0", 0)
        })
        .unwrap();
    assert_eq!(
        (limited.kvs.len(), limited.more, limited.count),
        (2, true, 5)
    );
    let by_value = view
        .range(&RangeRequest {
            sort_order: 2,
            sort_target: 4,
            ..get("a", "\0", 0)
        })
        .unwrap();
    assert_eq!(by_value.kvs[0].value, b"9");
    let counted = view
        .range(&RangeRequest {
            count_only: true,
            ..get("a", "c", 0)
        })
        .unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 4));
    assert!(view.range(&get("c", "a", 0)).unwrap().kvs.is_empty());
}

#[test]
fn limit_without_sort_order_sorts_only_the_first_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let vals = ["v", "w", "", "x", "v"];
    for i in 0..30usize {
        for _ in 0..(i % 3) + 1 {
            apply(&db, |a| {
                a.put(&put(&format!("t{i:02}"), vals[(i * 7) % 5])).unwrap()
            });
        }
    }
    let view = View::snapshot(&db);
    // No order but a target: etcd reads limit + 1 keys in key order, sorts them ascending,
    // then cuts (recorded from etcd 3.4.23).
    let r = view
        .range(&RangeRequest {
            limit: 13,
            ..sorted(sort::VERSION, sort::NONE, "t")
        })
        .unwrap();
    assert_eq!(keys_of(&r, 1), "06,00,12,03,09,04,01,10,07,13,05,08,11");
    assert_eq!((r.more, r.count), (true, 30));
    // With an order, every key is sorted first.
    let r = view
        .range(&RangeRequest {
            limit: 3,
            ..sorted(sort::VERSION, sort::ASCEND, "t")
        })
        .unwrap();
    assert_eq!(keys_of(&r, 1), "12,27,24");
    // An unknown order sorts nothing, whatever the target; the limit still applies.
    for target in [sort::VALUE, 9] {
        let r = view
            .range(&RangeRequest {
                limit: 2,
                ..sorted(target, 3, "t")
            })
            .unwrap();
        assert_eq!((keys_of(&r, 1).as_str(), r.more), ("00,01", true));
    }
    // An unknown target with a known order is refused (etcd 3.4 crashes on it).
    for order in [sort::NONE, sort::ASCEND, sort::DESCEND] {
        let bad = sorted(5, order, "t");
        assert_eq!(check_range(&bad), Err(ee::invalid_sort_option()));
        assert_eq!(view.range(&bad), Err(ee::invalid_sort_option()));
    }
    assert_eq!(check_range(&sorted(-1, 7, "t")), Ok(()));
}

#[test]
fn count_ignores_filters_and_more_follows_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for k in ["a", "b", "c", "d"] {
        apply(&db, |a| a.put(&put(k, "v")).unwrap()); // revisions 2..=5
    }
    let view = View::snapshot(&db);
    let r = view
        .range(&RangeRequest {
            min_mod_revision: 3,
            limit: 2,
            ..get("a", "z", 0)
        })
        .unwrap();
    assert_eq!((keys_of(&r, 0).as_str(), r.more, r.count), ("b,c", true, 4));
    let r = view
        .range(&RangeRequest {
            min_mod_revision: 4,
            limit: 2,
            ..get("a", "z", 0)
        })
        .unwrap();
    assert_eq!(
        (keys_of(&r, 0).as_str(), r.more, r.count),
        ("c,d", false, 4)
    );
    // count_only: no kvs, no more, the whole count, whatever the filters and limit.
    let r = view
        .range(&RangeRequest {
            count_only: true,
            keys_only: true,
            limit: 1,
            max_create_revision: 2,
            ..get("a", "z", 0)
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (0, false, 4));
    // A negative limit is no limit.
    let r = view
        .range(&RangeRequest {
            limit: -1,
            ..get("a", "z", 0)
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more), (4, false));
}
