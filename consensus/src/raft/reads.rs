//! Linearizable reads (etcd's ReadIndex): the bookkeeping of reads from the moment they arrive
//! until this member has applied up to their read index.
//!
//! Reads that arrive together share one read index ([`Reads::take_unsent`]); each read index is
//! keyed by a context that names this member ([`context_bytes`]), because a follower's read
//! index travels to the leader and raft-rs keys the leader's pending reads by context.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::command::ReadReply;

/// How long a read index may go unanswered before it is asked again (etcd: 500 ms).
pub(crate) const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

/// Reads not yet sent to raft, then those waiting for raft's answer (by context), then those
/// waiting for the apply to reach their index.
#[derive(Default)]
pub(crate) struct Reads {
    unsent: Vec<ReadReply>,
    /// Ordered, so that retries go out in the same order every time (the simulator replays).
    in_raft: BTreeMap<u64, (Instant, Vec<ReadReply>)>,
    applying: Vec<(u64, ReadReply)>,
    counter: u64,
}

impl Reads {
    /// Contexts continue from `first`, which must differ from any a previous run of this member
    /// used: a leader's late answer to a read of the previous run would otherwise be taken for
    /// the answer to a new read, with an index from before it started.
    pub(crate) fn starting_at(first: u64) -> Reads {
        Reads {
            counter: first,
            ..Reads::default()
        }
    }

    pub(crate) fn push(&mut self, reply: ReadReply) {
        self.unsent.push(reply);
    }

    /// The reads that arrived since the last call, as one read index sent at `now`: its context
    /// and how many reads share it.
    pub(crate) fn take_unsent(&mut self, me: u64, now: Instant) -> Option<(Vec<u8>, usize)> {
        if self.unsent.is_empty() {
            return None;
        }
        self.counter += 1;
        let replies = std::mem::take(&mut self.unsent);
        let n = replies.len();
        self.in_raft.insert(self.counter, (now, replies));
        Some((context_bytes(me, self.counter), n))
    }

    /// A read index can be lost with a message or a leader change; like etcd, ask again for
    /// reads that got no answer within [`READ_INDEX_RETRY`]. Under the same context, so that the
    /// first answer still counts when it is only slow (a round trip between members above the
    /// retry interval would otherwise never answer a read); raft-rs's leader ignores a context
    /// it is already confirming.
    pub(crate) fn due_for_retry(&mut self, me: u64, now: Instant) -> Vec<Vec<u8>> {
        let mut again = Vec::new();
        for (ctx, (sent, replies)) in self.in_raft.iter_mut() {
            if now.duration_since(*sent) >= READ_INDEX_RETRY {
                tracing::debug!(
                    ctx,
                    reads = replies.len(),
                    "read index unanswered; asking again"
                );
                *sent = now;
                again.push(context_bytes(me, *ctx));
            }
        }
        again
    }

    /// Raft answered the read index with context `ctx` at `index`: those reads now wait for the
    /// apply to reach it.
    pub(crate) fn answered(&mut self, me: u64, ctx: &[u8], index: u64) {
        let Some(ctx) = context(ctx, me) else {
            return;
        };
        if let Some((_, replies)) = self.in_raft.remove(&ctx) {
            self.applying
                .extend(replies.into_iter().map(|r| (index, r)));
        }
    }

    /// Whether a read waits for an index above `applied`.
    pub(crate) fn wait_above(&self, applied: u64) -> bool {
        self.applying.iter().any(|(index, _)| *index > applied)
    }

    /// Answers the reads whose index is applied.
    pub(crate) fn answer(&mut self, applied: u64) {
        if self.applying.is_empty() {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.applying)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.applying = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    /// Forgets reads in raft whose client gave up.
    pub(crate) fn forget_abandoned(&mut self) {
        self.in_raft.retain(|_, (_, v)| {
            v.retain(|r| !r.is_closed());
            !v.is_empty()
        });
    }

    #[cfg(test)]
    pub(crate) fn in_raft(&self) -> usize {
        self.in_raft.len()
    }
}

/// A read-index context: this member's ID, then its counter. A bare counter collided with the
/// leader's own and the read was dropped.
pub(crate) fn context_bytes(me: u64, counter: u64) -> Vec<u8> {
    [me.to_be_bytes(), counter.to_be_bytes()].concat()
}

/// The counter of a read-index context this member made (member ID ++ counter), if it made it.
fn context(ctx: &[u8], me: u64) -> Option<u64> {
    let (member, counter) = ctx.split_at_checked(8)?;
    let counter: [u8; 8] = counter.try_into().ok()?;
    (member == me.to_be_bytes()).then(|| u64::from_be_bytes(counter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[test]
    fn read_contexts_are_told_apart_by_member() {
        let ctx = context_bytes(7, 42);
        assert_eq!(context(&ctx, 7), Some(42));
        assert_eq!(context(&ctx, 8), None);
        assert_eq!(context(&ctx[..12], 7), None);
        assert_eq!(context(&[], 7), None);
    }

    #[test]
    fn reads_that_arrive_together_share_a_read_index_and_wait_for_the_apply() {
        let now = Instant::now();
        let mut reads = Reads::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        reads.push(tx1);
        reads.push(tx2);
        let (ctx, n) = reads.take_unsent(7, now).unwrap();
        assert_eq!(n, 2);
        assert!(reads.take_unsent(7, now).is_none());
        reads.answered(7, &ctx, 10);
        assert!(reads.wait_above(9));
        reads.answer(9);
        assert!(rx1.try_recv().is_err());
        reads.answer(10);
        assert!(rx1.try_recv().unwrap().is_ok() && rx2.try_recv().unwrap().is_ok());
    }

    #[test]
    fn an_unanswered_read_index_is_asked_again_under_its_context() {
        let t0 = Instant::now();
        let mut reads = Reads::default();
        let (tx, _rx) = oneshot::channel();
        reads.push(tx);
        let (ctx, _) = reads.take_unsent(7, t0).unwrap();
        assert!(reads.due_for_retry(7, t0 + READ_INDEX_RETRY / 2).is_empty());
        assert_eq!(
            reads.due_for_retry(7, t0 + READ_INDEX_RETRY),
            vec![ctx.clone()]
        );
        // Retried at READ_INDEX_RETRY: the next retry is a full interval later.
        assert!(
            reads
                .due_for_retry(7, t0 + READ_INDEX_RETRY * 3 / 2)
                .is_empty()
        );
        // Another member's answer under a context of the same counter is not ours.
        reads.answered(8, &ctx, 5);
        assert_eq!(reads.in_raft(), 1);
    }

    #[test]
    fn contexts_continue_from_where_they_start() {
        let mut reads = Reads::starting_at(1 << 40);
        let (tx, _rx) = oneshot::channel();
        reads.push(tx);
        let (ctx, _) = reads.take_unsent(7, Instant::now()).unwrap();
        assert_eq!(context(&ctx, 7), Some((1 << 40) + 1));
    }

    #[test]
    fn abandoned_reads_are_forgotten() {
        let mut reads = Reads::default();
        let (tx, rx) = oneshot::channel();
        reads.push(tx);
        reads.take_unsent(7, Instant::now());
        drop(rx);
        reads.forget_abandoned();
        assert_eq!(reads.in_raft(), 0);
    }
}
