//! One test per policy of the raft core, each on a small [`Cluster`] driven step by step: follower
//! apply batching, forwarder-first order, read-index retries, abandoned waiters, the early commit
//! and its quorum rule, answers before the RocksDB write, conf changes, refused peer messages and
//! the wiped-member check.

use super::*;

fn propose_at(
    c: &mut Cluster,
    id: u64,
    value: u64,
) -> oneshot::Receiver<std::result::Result<Applied, EtcdError>> {
    let (tx, rx) = oneshot::channel();
    c.member(id)
        .core()
        .propose_local(value, write_data(value, value), tx);
    c.pump(id);
    rx
}

#[test]
fn a_follower_batches_its_applies_unless_someone_waits() {
    let mut c = Cluster::new(3);
    c.elect(1);
    // The new leader's empty entry, applied once the delay has passed.
    c.advance(TICK);
    c.tick(1);
    c.settle();
    c.advance(FOLLOWER_APPLY_DELAY);
    c.pump_all();
    let base = c.member(2).machine.applied;
    assert!(base > 0);
    let _rx = propose_at(&mut c, 1, 1);
    c.settle();
    // Tell the followers of the commit (the next heartbeat carries it).
    c.advance(TICK);
    c.tick(1);
    c.settle();
    assert!(c.member(2).core().raft().raft_log.committed > base);
    assert_eq!(
        c.member(2).machine.applied,
        base,
        "one entry waits for the batch"
    );
    c.advance(FOLLOWER_APPLY_DELAY);
    c.pump(2);
    assert!(
        c.member(2).machine.applied > base,
        "applied after the delay"
    );

    // A batch of FOLLOWER_APPLY_BATCH entries is applied at once.
    let base = c.member(3).machine.applied;
    for v in 10..10 + FOLLOWER_APPLY_BATCH as u64 {
        let _rx = propose_at(&mut c, 1, v);
    }
    c.settle();
    c.advance(TICK);
    c.tick(1);
    c.settle();
    assert!(c.member(3).machine.applied >= base + FOLLOWER_APPLY_BATCH as u64);

    // A client of its own waiting: at once.
    let mut rx = propose_at(&mut c, 2, 100);
    c.settle();
    c.advance(TICK);
    c.tick(1);
    c.settle();
    assert!(rx.try_recv().is_ok_and(|r| r.is_ok()));
}

#[test]
fn messages_to_a_forwarder_leave_first() {
    let mut c = Cluster::new(3);
    c.elect(1);
    // Member 3 forwards a proposal; then the leader has appends for 2 and 3 in one batch.
    let _rx = propose_at(&mut c, 3, 1);
    let i = c
        .net
        .iter()
        .position(|m| m.get_msg_type() == MessageType::MsgPropose)
        .unwrap();
    let prop = c.net.remove(i);
    c.member(1).core().step(prop);
    c.net.clear();
    let _rx = propose_at(&mut c, 1, 2);
    let to: Vec<u64> = c
        .net
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgAppend)
        .map(|m| m.to)
        .collect();
    assert!(to.len() >= 2, "appends for both followers: {to:?}");
    assert_eq!(to[0], 3, "the forwarder's append first: {to:?}");
}

#[test]
fn a_lost_read_index_is_asked_again_with_its_context() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let (tx, mut rx) = oneshot::channel();
    c.member(2).core().read_index(tx);
    c.pump(2);
    let first: Vec<Message> = c
        .net
        .drain(..)
        .filter(|m| m.get_msg_type() == MessageType::MsgReadIndex)
        .collect();
    assert_eq!(first.len(), 1, "one read index sent");
    // Lost. Before the retry interval nothing is resent; after it, the same context is.
    c.advance(READ_INDEX_RETRY / 2);
    c.tick(2);
    assert!(
        !c.net
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgReadIndex)
    );
    c.advance(READ_INDEX_RETRY);
    c.tick(2);
    let again: Vec<&Message> = c
        .net
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgReadIndex)
        .collect();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].entries[0].data, first[0].entries[0].data,
        "same context"
    );
    c.settle();
    c.advance(FOLLOWER_APPLY_DELAY);
    c.pump(2);
    assert!(
        rx.try_recv().is_ok_and(|r| r.is_ok()),
        "answered by the retry"
    );
}

#[test]
fn abandoned_waiters_are_forgotten_and_late_stream_writes_time_out() {
    let mut c = Cluster::new(3);
    c.elect(1);
    // Cut the leader off so nothing commits.
    let now = c.now;
    let core = c.member(1).core();
    let (tx, rx) = oneshot::channel();
    core.propose_local(7, write_data(7, 7), tx);
    drop(rx);
    core.propose_stream(8, write_data(8, 8), 42, now).unwrap();
    assert_eq!(core.waiting(), 2);
    c.net.clear();
    c.advance(TICK);
    c.tick(1);
    assert_eq!(
        c.member(1).core().waiting(),
        1,
        "the local waiter whose client left is gone"
    );
    assert!(c.member(1).out.answers.is_empty());
    c.advance(Duration::from_secs(5));
    c.tick(1);
    let m = c.member(1);
    assert_eq!(m.core().waiting(), 0);
    assert_eq!(m.out.answers.len(), 1);
    assert_eq!(m.out.answers[0].0, 42);
    assert!(
        m.out.answers[0]
            .1
            .as_ref()
            .is_err_and(|e| e.contains("timed out")),
        "{:?}",
        m.out.answers
    );
    // Waiters of a replaced write stream are dropped without an answer on the new one.
    let now = c.now;
    let core = c.member(1).core();
    core.propose_stream(9, write_data(9, 9), 43, now).unwrap();
    core.new_write_stream();
    c.advance(TICK);
    c.tick(1);
    assert_eq!(c.member(1).core().waiting(), 0);
    assert_eq!(c.member(1).out.answers.len(), 1);
}

#[test]
fn a_forwarding_follower_commits_on_the_leaders_durable_notice() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let mut rx = propose_at(&mut c, 2, 5);
    // The proposal reaches the leader, which appends and announces its durable log to 2.
    c.deliver_first(MessageType::MsgPropose);
    let leader_commit = c.member(1).core().raft().raft_log.committed;
    // Only what goes to member 2 is delivered: the append and the notice. No ack reaches the
    // leader, so it cannot have committed the entry.
    let to_2 = c.take_for(2);
    assert!(
        to_2.iter()
            .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse),
        "a durable notice: {to_2:?}"
    );
    c.step_into(2, to_2);
    c.net.clear();
    assert_eq!(c.member(1).core().raft().raft_log.committed, leader_commit);
    let r = rx
        .try_recv()
        .expect("answered by the follower")
        .expect("applied");
    let Applied::Put(p) = r else { panic!("{r:?}") };
    // Held by the leader and member 2: a quorum of three.
    let index = p.revision as u64;
    assert!(index > leader_commit);
    assert!(c.member(1).log.term_at(index).is_some() && c.member(2).log.term_at(index).is_some());
    assert!(c.member(3).log.term_at(index).is_none());
}

#[test]
fn the_early_commit_needs_the_pair_to_be_a_quorum() {
    // Five members: the leader and one follower are not a quorum, so no notice goes out.
    let mut c = Cluster::new(5);
    c.elect(1);
    let mut rx = propose_at(&mut c, 2, 5);
    c.deliver_first(MessageType::MsgPropose);
    let to_2 = c.take_for(2);
    assert!(
        !to_2
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse)
    );
    c.step_into(2, to_2);
    assert!(rx.try_recv().is_err(), "not committed without a quorum");
}

#[test]
fn write_stream_answers_leave_before_the_batch_is_written_and_local_ones_after() {
    let mut c = Cluster::new(1);
    c.elect(1);
    let now = c.now;
    let m = c.member(1);
    let core = m.core.as_mut().unwrap();
    core.propose_stream(1, write_data(1, 1), 77, now).unwrap();
    let (tx, mut rx) = oneshot::channel();
    core.propose_local(2, write_data(2, 2), tx);
    m.machine.events.clear();
    m.out.log.clear();
    // A machine that records when the batch is written, against the answers so far.
    struct Recording<'a> {
        inner: &'a mut MemMachine,
        answers_at_write: Option<Vec<String>>,
        shared: Arc<Shared>,
        answered_at_write: u64,
        local: &'a mut oneshot::Receiver<std::result::Result<Applied, EtcdError>>,
        local_answered_by_write: Option<bool>,
    }
    struct Spy<'a, 'b> {
        hooks: &'a mut dyn ApplyHooks,
        log: &'b mut Option<Vec<String>>,
    }
    impl ApplyHooks for Spy<'_, '_> {
        fn conf_change(&mut self, e: &Entry) -> Result<Option<ConfState>> {
            self.hooks.conf_change(e)
        }
        fn applied(&mut self, id: u64, r: std::result::Result<Applied, EtcdError>) {
            self.hooks.applied(id, r)
        }
        fn before_write(&mut self) {
            self.hooks.before_write();
            *self.log = Some(Vec::new());
        }
    }
    impl StateMachine for Recording<'_> {
        fn prefetch(&mut self, e: &[Entry]) -> Result<()> {
            self.inner.prefetch(e)
        }
        fn apply(&mut self, entries: &[Entry], hooks: &mut dyn ApplyHooks) -> Result<i64> {
            let mut marker = None;
            let r = self.inner.apply(
                entries,
                &mut Spy {
                    hooks,
                    log: &mut marker,
                },
            );
            self.answers_at_write = marker;
            self.answered_at_write = self
                .shared
                .answered
                .load(std::sync::atomic::Ordering::Acquire);
            self.local_answered_by_write = Some(!self.local.is_empty());
            r
        }
        fn begin_compaction(&mut self, p: raft::eraftpb::SnapshotMetadata) -> Result<()> {
            self.inner.begin_compaction(p)
        }
        fn compaction_durable(&mut self) -> Result<Option<raft::eraftpb::SnapshotMetadata>> {
            self.inner.compaction_durable()
        }
    }
    let shared = m.shared.clone();
    let mut rec = Recording {
        inner: &mut m.machine,
        answers_at_write: None,
        shared,
        answered_at_write: 0,
        local: &mut rx,
        local_answered_by_write: None,
    };
    m.out.now = Some(now);
    for _ in 0..4 {
        if core.has_ready() {
            core.on_ready(now, &mut m.out, &mut rec).unwrap();
        }
    }
    core.maybe_apply(now, &mut m.out, &mut rec).unwrap();
    assert!(rec.answers_at_write.is_some(), "before_write ran");
    let written = rec.inner.applied;
    assert!(
        rec.answered_at_write >= written,
        "answered marks the batch before it is written"
    );
    // The stream answer and its flush came before the write; the local answer after it.
    assert_eq!(
        m.out.log,
        vec!["answer 77".to_string(), "flush".to_string()]
    );
    assert_eq!(
        rec.local_answered_by_write,
        Some(false),
        "the local answer waits for the write"
    );
    assert!(rx.try_recv().is_ok_and(|r| r.is_ok()));
    assert!(m.shared.settled());
}

#[test]
fn conf_changes_of_either_format_are_applied_and_stored_with_the_log() {
    use raft::eraftpb::{ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2};
    let mut c = Cluster::new(3);
    c.elect(1);
    let v1 = ConfChange {
        change_type: ConfChangeType::AddLearnerNode,
        node_id: 4,
        ..Default::default()
    };
    c.member(1)
        .core()
        .node_mut()
        .propose_conf_change(Vec::new(), v1)
        .unwrap();
    c.pump(1);
    c.settle();
    let mut v2 = ConfChangeV2::default();
    v2.mut_changes().push(ConfChangeSingle {
        change_type: ConfChangeType::AddLearnerNode,
        node_id: 5,
        ..Default::default()
    });
    c.member(1)
        .core()
        .node_mut()
        .propose_conf_change(Vec::new(), v2)
        .unwrap();
    c.pump(1);
    c.settle();
    c.advance(TICK);
    c.tick(1);
    c.settle();
    for id in 1..=3 {
        let m = c.member(id);
        let stored = m.log.initial_state().unwrap().conf_state;
        assert_eq!(stored.learners, vec![4, 5], "member {id}'s log store");
        let conf = m.core().raft().prs().conf().to_conf_state();
        assert_eq!(conf.learners, vec![4, 5], "member {id}'s raft");
    }
}

/// Messages raft-rs would panic on (or index past the end of) are dropped and counted; the
/// member goes on, and its log and commit index are untouched.
#[test]
fn malformed_and_unsafe_peer_messages_are_dropped_not_stepped() {
    use raft::eraftpb::Snapshot;
    let mut c = Cluster::new(3);
    // Members with a history: a forged heartbeat would otherwise look like a wiped member's.
    for id in 1..=3 {
        c.member(id).core().set_started_empty(false);
    }
    c.elect(1);
    let _rx = propose_at(&mut c, 1, 1);
    c.settle();
    let forged = |kind: MessageType, to: u64, term: u64| {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 3;
        m.to = to;
        m.term = term;
        m
    };
    let term = c.member(1).core().term();
    let last = c.member(2).core().raft().raft_log.last_index();
    let committed = c.member(2).core().raft().raft_log.committed;
    let mut bad = Vec::new();
    // A leader asked for a read index without a context, and a proposal without entries.
    bad.push(forged(MessageType::MsgReadIndex, 1, term));
    bad.push(forged(MessageType::MsgPropose, 1, term));
    // A heartbeat that commits past the follower's log.
    let mut hb = forged(MessageType::MsgHeartbeat, 2, term);
    hb.from = 1;
    hb.commit = last + 100;
    bad.push(hb);
    // An append whose entries rewrite committed ones out of order.
    let mut app = forged(MessageType::MsgAppend, 2, term);
    app.from = 1;
    app.index = last;
    app.log_term = term;
    app.entries = vec![Entry {
        index: 1,
        term: term + 5,
        ..Default::default()
    }]
    .into();
    bad.push(app);
    // A snapshot, which nothing here installs.
    let mut snap = forged(MessageType::MsgSnapshot, 2, term);
    snap.from = 1;
    let mut s = Snapshot::default();
    s.mut_metadata().index = last + 10;
    s.mut_metadata().term = term;
    snap.set_snapshot(s);
    bad.push(snap);
    let n = bad.len() as u64;
    for m in bad {
        let to = m.to;
        c.step_into(to, vec![m]);
    }
    let refused = |c: &mut Cluster, id: u64| {
        c.member(id)
            .shared
            .peer_messages_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(refused(&mut c, 1) + refused(&mut c, 2), n);
    assert_eq!(c.member(2).core().raft().raft_log.last_index(), last);
    assert_eq!(c.member(2).core().raft().raft_log.committed, committed);
    // And the cluster still works.
    c.settle();
    let mut rx = propose_at(&mut c, 2, 9);
    c.settle();
    c.advance(TICK);
    c.tick(1);
    c.settle();
    assert!(rx.try_recv().is_ok_and(|r| r.is_ok()));
}

/// A member that started from an empty data dir learns from the leader's heartbeat whether the
/// cluster knew it before: a new member's heartbeats commit nothing past what it acknowledged
/// (nothing), a wiped member's commit what it acknowledged before it lost it.
#[test]
fn a_wiped_member_learns_from_the_leaders_heartbeat_that_it_was_bootstrapped() {
    let mut c = Cluster::new(3);
    // Member 3 of a new cluster starts late and empty: not refused.
    c.member(3).core = None;
    c.elect(1);
    let _rx = propose_at(&mut c, 1, 1);
    c.settle();
    let now = c.now;
    c.member(3).start(now);
    c.member(3).core().set_started_empty(true);
    for _ in 0..3 {
        c.advance(TICK);
        c.tick(1);
        c.settle();
    }
    assert_eq!(c.member(3).core().lost_data_to(), None);
    assert!(
        c.member(3).core().raft().raft_log.committed > 0,
        "it caught up"
    );

    // Member 2 acknowledged entries, then loses its log and state and starts again, empty.
    let _rx = propose_at(&mut c, 1, 2);
    c.settle();
    let m = c.member(2);
    m.core = None;
    m.log = MemLog::new(vec![1, 2, 3]);
    m.machine = MemMachine::default();
    c.net.retain(|msg| msg.to != 2);
    let now = c.now;
    c.member(2).start(now);
    c.member(2).core().set_started_empty(true);
    c.advance(TICK);
    c.tick(1);
    c.settle();
    assert_eq!(c.member(2).core().lost_data_to(), Some(1));
}

/// Delivers every message in flight, dropping those to or from `cut`, until none is left.
fn settle_without(c: &mut Cluster, cut: u64) {
    for _ in 0..10_000 {
        c.net.retain(|m| m.to != cut && m.from != cut);
        if c.net.is_empty() {
            return;
        }
        c.deliver(0);
    }
    panic!("messages never stopped");
}

/// Heartbeats (and what they trigger) until nothing is left in flight.
fn heartbeats(c: &mut Cluster, leader: u64, n: usize) {
    for _ in 0..n {
        c.advance(TICK);
        c.tick(leader);
        c.settle();
    }
    c.advance(FOLLOWER_APPLY_DELAY);
    c.pump_all();
    c.settle();
}

/// Three members compacting their logs by `policy`, member 1 leading.
fn compacting_cluster(policy: super::super::core::LogCompaction) -> Cluster {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        c.member(id).compaction = Some(policy);
        c.member(id).core().set_log_compaction(policy);
    }
    c.elect(1);
    c
}

#[test]
fn the_log_is_compacted_behind_the_applied_index_and_a_follower_behind_it_gets_a_snapshot() {
    use super::super::core::LogCompaction;
    let policy = LogCompaction {
        snapshot_count: 20,
        catchup_entries: 10,
    };
    let mut c = compacting_cluster(policy);
    let check = |c: &mut Cluster, id: u64| {
        let m = c.member(id);
        let applied = m.machine.applied;
        let first = m.log.first_index().unwrap();
        assert!(first > 1, "member {id} compacted (applied {applied})");
        assert!(
            first - 1 + policy.catchup_entries <= applied,
            "member {id} kept {} catch-up entries (first {first}, applied {applied})",
            policy.catchup_entries
        );
        // The point's term is answered from the record, and is the applied entry's.
        let (term, _) = m.machine.entries[&(first - 1)];
        assert_eq!(m.log.term(first - 1).unwrap(), term);
        assert!(
            m.log
                .entries(first - 1, first, None, GetEntriesContext::empty(false))
                .is_err()
        );
    };
    // One write at a time: the leader applies one entry per Ready, so it decides at applied 21.
    for v in 1..=30 {
        let _rx = propose_at(&mut c, 1, v);
        c.settle();
    }
    heartbeats(&mut c, 1, 2);
    assert_eq!(
        c.member(1).log.first_index().unwrap() - 1,
        21 - policy.catchup_entries,
        "the leader's point: the applied index when more than snapshot-count were applied, \
         less the catch-up entries"
    );
    for id in 1..=3 {
        check(&mut c, id);
    }

    // Member 3 misses fewer writes than the catch-up entries: it catches up from the log.
    for v in 100..105 {
        let _rx = propose_at(&mut c, 1, v);
        settle_without(&mut c, 3);
    }
    heartbeats(&mut c, 1, 3);
    let leader_applied = c.member(1).machine.applied;
    assert_eq!(c.member(3).machine.applied, leader_applied);
    check(&mut c, 3);

    // Member 3 misses more than the leader keeps: the leader sends it a snapshot (once; the
    // heartbeats settle, as `settle` fails on messages that never stop), it installs it and
    // restarts on it, and catches up from the log after it: every committed entry, none lost.
    let behind = c.member(3).machine.applied;
    for v in 200..250 {
        let _rx = propose_at(&mut c, 1, v);
        settle_without(&mut c, 3);
    }
    let first = c.member(1).log.first_index().unwrap();
    assert!(first > behind + 1);
    for _ in 0..5 {
        c.advance(TICK);
        c.tick(1);
        c.settle();
    }
    assert_eq!(c.snapshots, (1, 0), "one snapshot is sent, and installed");
    let leader = c.member(1).machine.entries.clone();
    let m3 = c.member(3);
    assert_eq!(m3.machine.applied, *leader.keys().last().unwrap());
    assert_eq!(
        m3.machine.entries, leader,
        "member 3 holds every committed entry"
    );
    assert!(
        m3.log.first_index().unwrap() >= first - 1,
        "its log starts at the snapshot"
    );
    // And it takes part again.
    let _rx = propose_at(&mut c, 1, 300);
    c.settle();
    heartbeats(&mut c, 1, 2);
    let leader_applied = c.member(1).machine.applied;
    assert_eq!(c.member(3).machine.applied, leader_applied);
}

/// A snapshot whose report never comes (the sender's peer gateway died mid-send) would leave
/// raft-rs waiting for ever, sending that follower nothing: the core reports it failed after
/// `SNAPSHOT_REPORT_TIMEOUT`, or at once when a new raft stream replaces the gateway's, and the
/// leader sends another.
/// Delivers everything in flight, but loses every snapshot without a report; how many.
fn settle_losing_snapshots(c: &mut Cluster) -> usize {
    let mut lost = 0;
    for _ in 0..10_000 {
        let Some(m) = c.net.first() else {
            return lost;
        };
        if m.get_msg_type() == MessageType::MsgSnapshot {
            c.net.remove(0);
            lost += 1;
        } else {
            c.deliver(0);
        }
    }
    panic!("messages never stopped");
}

#[test]
fn a_snapshot_never_reported_is_reported_failed_and_sent_again() {
    use super::super::core::{LogCompaction, SNAPSHOT_REPORT_TIMEOUT};
    let policy = LogCompaction {
        snapshot_count: 20,
        catchup_entries: 5,
    };
    let mut c = compacting_cluster(policy);
    for v in 1..=60 {
        let _rx = propose_at(&mut c, 1, v);
        settle_without(&mut c, 3);
    }
    // Lose every snapshot without a word, until one has been lost.
    let mut lost = 0;
    for _ in 0..20 {
        c.advance(TICK);
        c.tick(1);
        lost += settle_losing_snapshots(&mut c);
        if lost > 0 {
            break;
        }
    }
    assert_eq!(lost, 1, "a snapshot left for member 3");
    // Until the timeout nothing more is sent to it.
    for _ in 0..20 {
        c.advance(TICK);
        c.tick(1);
        assert!(
            !c.net
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgSnapshot),
            "raft waits for the report"
        );
        c.settle();
    }
    c.advance(SNAPSHOT_REPORT_TIMEOUT);
    for _ in 0..10 {
        c.advance(TICK);
        c.tick(1);
        c.settle();
    }
    assert_eq!(
        c.snapshots,
        (1, 0),
        "sent again once reported failed, and installed"
    );
    let leader_applied = c.member(1).machine.applied;
    assert_eq!(c.member(3).machine.applied, leader_applied);

    // A new raft stream (a restarted peer gateway) reports what the old one carried.
    c.member(3).core = None;
    for v in 100..160 {
        let _rx = propose_at(&mut c, 1, v);
        settle_without(&mut c, 3);
    }
    let now = c.now;
    c.member(3).start(now);
    let mut lost = 0;
    for _ in 0..20 {
        c.advance(TICK);
        c.tick(1);
        lost += settle_losing_snapshots(&mut c);
        if lost > 0 {
            break;
        }
    }
    assert_eq!(lost, 1);
    c.member(1).core().new_peer_stream();
    c.pump(1);
    for _ in 0..10 {
        c.advance(TICK);
        c.tick(1);
        c.settle();
    }
    assert_eq!(c.snapshots, (2, 0));
    let leader_applied = c.member(1).machine.applied;
    assert_eq!(c.member(3).machine.applied, leader_applied);
}

/// While a snapshot is on its way (a large one takes a while to stream and install), the
/// leader goes on compacting but never past the snapshot's index: the follower finds the entries
/// after it and needs one snapshot, not a second.
#[test]
fn the_log_is_not_compacted_past_a_snapshot_on_its_way() {
    use super::super::core::LogCompaction;
    let policy = LogCompaction {
        snapshot_count: 20,
        catchup_entries: 5,
    };
    let mut c = compacting_cluster(policy);
    for v in 1..=60 {
        let _rx = propose_at(&mut c, 1, v);
        settle_without(&mut c, 3);
    }
    // Hold the snapshot for member 3 back, as a long transfer would.
    let mut held = None;
    for _ in 0..20 {
        c.advance(TICK);
        c.tick(1);
        for _ in 0..10_000 {
            let Some(m) = c.net.first() else { break };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                held = Some(c.net.remove(0));
            } else {
                c.deliver(0);
            }
        }
        if held.is_some() {
            break;
        }
    }
    let held = held.expect("a snapshot for member 3");
    let index = held.get_snapshot().get_metadata().index;
    for v in 100..200 {
        let _rx = propose_at(&mut c, 1, v);
        settle_without(&mut c, 3);
    }
    let first = c.member(1).log.first_index().unwrap();
    assert!(
        first > 1 && first <= index + 1,
        "compacted to {first} past the snapshot at {index}"
    );
    c.net.push(held);
    for _ in 0..10 {
        c.advance(TICK);
        c.tick(1);
        c.settle();
    }
    assert_eq!(c.snapshots, (1, 0), "one snapshot was enough");
    let leader_applied = c.member(1).machine.applied;
    assert_eq!(c.member(3).machine.applied, leader_applied);
}
