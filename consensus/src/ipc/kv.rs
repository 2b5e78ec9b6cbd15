//! The client plane's key-space calls: linearizable and serializable reads (Range, read-only
//! Txn) on a RocksDB snapshot once the read index allows (on a reader thread unless they touch
//! single keys only), and Compact through raft. Writes travel
//! on the write stream instead, which the raft thread serves.

use schema::member_capnp::client_plane;

use super::State;
use crate::codec;
use crate::etcd_error::{self as ee, EtcdError};
use crate::mvcc::{self, View};
use crate::raft::command::Applied;

/// ClientPlane's put, deleteRange and writing txns are protocol 1 and 2: since 3, writes travel
/// on `write.sock` and only the raft thread serves them.
fn writes_go_on_the_write_stream(method: &str) -> EtcdError {
    EtcdError::new(
        schema::code::UNIMPLEMENTED,
        format!(
            "consensus: ClientPlane.{method} does not write since protocol 3; writes go on write.sock"
        ),
    )
}

fn unexpected(what: &str, got: &Applied) -> EtcdError {
    ee::internal(format!("expected a {what} result, got {got:?}"))
}

/// A request's encoded size in bytes (0 when it cannot be told: the builder then just grows).
fn size_of(size: capnp::Result<capnp::MessageSize>) -> usize {
    size.map(|s| s.word_count as usize * 8).unwrap_or(0)
}

pub(super) async fn range(
    state: &State,
    params: client_plane::RangeParams,
    mut results: client_plane::RangeResults,
) -> capnp::Result<()> {
    let req = codec::read_range(params.get()?.get_request()?)?;
    or_refuse!(results, mvcc::check_range(&req));
    if !req.serializable {
        or_refuse!(results, state.read_index().await);
    }
    state.settled().await;
    let resp = if req.range_end.is_empty() {
        // One key: a seek or two, served here rather than paying a thread hand-off.
        View::snapshot(&state.ctx.db).range(&req)
    } else {
        // Taken on the reader's own snapshot, which is at least as new as what the read index
        // and `settled` asked for.
        let db = state.ctx.db.clone();
        (state.pools.readers)
            .run(move || View::snapshot(&db).range(&req))
            .await
            .and_then(|r| r)
    };
    let resp = or_refuse!(results, resp);
    codec::write_range_response(
        results.get().init_response(),
        &state.header(resp.revision),
        &resp,
    );
    Ok(())
}

pub(super) async fn put(
    _state: &State,
    _: client_plane::PutParams,
    mut results: client_plane::PutResults,
) -> capnp::Result<()> {
    refuse!(results, writes_go_on_the_write_stream("put"));
}

pub(super) async fn delete_range(
    _state: &State,
    _: client_plane::DeleteRangeParams,
    mut results: client_plane::DeleteRangeResults,
) -> capnp::Result<()> {
    refuse!(results, writes_go_on_the_write_stream("deleteRange"));
}

pub(super) async fn txn(
    state: &State,
    params: client_plane::TxnParams,
    mut results: client_plane::TxnResults,
) -> capnp::Result<()> {
    let request = params.get()?.get_request()?;
    let txn = codec::read_txn(request)?;
    or_refuse!(
        results,
        mvcc::check_txn(&txn, state.ctx.gateways.max_txn_ops as usize)
    );
    // Since protocol 3 writes travel on the write stream, which the raft thread answers.
    if !mvcc::txn_is_read_only(&txn) {
        refuse!(results, writes_go_on_the_write_stream("txn"));
    }
    // etcd serves a read-only txn like a linearizable range, without the raft log.
    or_refuse!(results, state.read_index().await);
    state.settled().await;
    let resp = if mvcc::is_point_read(&txn) {
        View::snapshot(&state.ctx.db).txn(&txn)
    } else {
        let db = state.ctx.db.clone();
        (state.pools.readers)
            .run(move || View::snapshot(&db).txn(&txn))
            .await
            .and_then(|r| r)
    };
    let resp = or_refuse!(results, resp);
    codec::write_txn_response(
        results.get().init_response(),
        &state.header(resp.revision),
        &resp,
    );
    Ok(())
}

pub(super) async fn compact(
    state: &State,
    params: client_plane::CompactParams,
    mut results: client_plane::CompactResults,
) -> capnp::Result<()> {
    let request = params.get()?.get_request()?;
    let (asked, physical) = (request.get_revision(), request.get_physical());
    let applied = or_refuse!(
        results,
        state
            .propose(size_of(request.total_size()), |mut rr| rr
                .set_compaction(request))
            .await
    );
    let Applied::Compaction { revision } = applied else {
        refuse!(results, unexpected("compaction", &applied));
    };
    if physical {
        // As etcd: answered once this member deleted the old versions, not just recorded it.
        state.ctx.shared.wait_compacted(asked).await;
    }
    codec::write_header(
        results.get().init_response().init_header(),
        &state.header(revision),
    );
    Ok(())
}
