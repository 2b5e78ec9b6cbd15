//! The key space's tests, by section; the helpers every one uses are here.

use super::apply::*;
use super::types::{compare, sort};
use super::validate::*;
use super::view::*;
use super::*;
use crate::etcd_error as ee;
use crate::storage::{Db, parse_row};

mod apply;
mod compact;
mod read;
mod sorting;
mod txn;
mod validate;

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn get(key: &str, end: &str, rev: i64) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        revision: rev,
        ..Default::default()
    }
}

fn apply<T>(db: &Db, f: impl FnOnce(&mut Applier) -> T) -> T {
    let mut a = Applier::new(db).unwrap();
    let out = f(&mut a);
    a.flush().unwrap();
    out
}

fn keys_of(r: &RangeResponse, strip: usize) -> String {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[strip..]).into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

fn sorted(target: i32, order: i32, prefix: &str) -> RangeRequest {
    RangeRequest {
        sort_target: target,
        sort_order: order,
        ..get(prefix, &format!("{prefix}\x7f"), 0)
    }
}

fn cmp(target: i32, result: i32, key: &str) -> Compare {
    Compare {
        target,
        result,
        key: key.into(),
        ..Default::default()
    }
}

/// One batch of entries as the raft loop applies it, continuing from `state`.
fn apply_batch(db: &Db, state: MvccState, f: &dyn Fn(&mut Applier)) -> MvccState {
    let mut a = Applier::resume(db, state);
    f(&mut a);
    a.flush().unwrap();
    a.into_state()
}
