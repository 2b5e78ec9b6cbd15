//! The raft core: raft-rs's [`RawNode`] and every decision this member makes around it, with no
//! sockets, threads or clocks of its own.
//!
//! The core takes events — a message stepped in ([`Core::step`]), a proposal
//! ([`Core::propose_local`], [`Core::propose_stream`]), a read ([`Core::read_index`]), a tick
//! ([`Core::tick`]) — each with the time it happened, and on [`Core::on_ready`] carries raft's
//! `Ready` through in the order raft requires, handing what must leave the process to
//! [`Effects`] (messages, answers on the write stream), the log to its [`LogStore`] and
//! committed entries to the [`StateMachine`]. The runtime ([`super::RaftLoop`]) implements those
//! against the streams, the WAL and RocksDB; the simulator (`super::sim`) against memory.
//!
//! # Where this departs from raft-rs's canonical `on_ready`
//! raft-rs's order is: send messages, apply the snapshot, apply committed entries, persist
//! entries and hard state, send persisted messages, `advance`, then the light ready. Here:
//! - **The leader applies first.** Its committed entries are applied (and its clients answered)
//!   before its own log write starts; a leader's messages may leave before its fsync.
//! - **Followers apply while the log is written** (`begin_persist`, apply, `finish_persist`),
//!   and batch their applies ([`FOLLOWER_APPLY_BATCH`], [`FOLLOWER_APPLY_DELAY`]) unless a
//!   client or a read waits.
//! - **Forwarded proposals** ([`super::forwarding`]): a follower that forwarded a write hears of
//!   its commit first ([`Forwarders`]), or of the leader's durable log where the two are a
//!   quorum, and then commits on its own ([`FollowerAcks`]); read indexes are raised to match.
//! - **Answers before RocksDB**: write-stream answers leave once computed, before the apply
//!   batch is written ([`ApplyHooks::before_write`]); reads on the IPC thread wait for
//!   [`Shared::settled`].
//! - `advance_append` and `advance_apply_to` instead of `advance`, as applies lag the log.
//!
//! # Log compaction
//! After an apply, once more than `--snapshot-count` entries were applied since the last
//! compaction ([`LogCompaction`]), the core picks a compaction point `--snapshot-catchup-entries`
//! behind the applied index and hands it to the state machine
//! ([`StateMachine::begin_compaction`]), which records it and makes it durable off the raft
//! thread. Once it is ([`Core::poll_compaction`]), the log drops everything up to it
//! ([`LogStore::compact`]). As in etcd, the point does not wait for slow followers: one that
//! needs entries before it needs a raft snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    SnapshotMetadata,
};
use raft::{RawNode, StateRole};
use tracing::{debug, error, info, warn};

use super::apply::{ApplyHooks, StateMachine};
use super::command::{Applied, ReadReply, Reply};
use super::forwarding::{FollowerAcks, Forwarders, LeaderAcks};
use super::log::LogStore;
use super::reads::Reads;
use super::shared::Shared;
use crate::error::Result;
use crate::etcd_error::{self as ee, EtcdError};

/// A follower applies what it learnt is committed once this many entries wait, or the oldest has
/// waited [`FOLLOWER_APPLY_DELAY`]; at once when a client of its own or a linearizable read waits
/// for them, for a conf change, and in any other role. An apply per lone write cost a follower
/// CPU next to the writes' critical path. Serializable reads on a follower may see its state up
/// to this much behind.
pub(crate) const FOLLOWER_APPLY_BATCH: usize = 8;
pub(crate) const FOLLOWER_APPLY_DELAY: Duration = Duration::from_millis(5);

/// How often a member that has not yet published its attributes tries again.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// etcd's `--snapshot-count` and `--snapshot-catchup-entries`: compact the raft log once more
/// than `snapshot_count` entries were applied since the last compaction, keeping the last
/// `catchup_entries` applied entries for followers that lag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogCompaction {
    pub snapshot_count: u64,
    pub catchup_entries: u64,
}

/// Where the log's compaction stands.
#[derive(Default)]
struct Compaction {
    policy: Option<LogCompaction>,
    /// The applied index when the last compaction was decided (at start: where the log starts).
    since: u64,
    /// A point handed to the state machine and not yet durable.
    in_flight: Option<u64>,
}

/// What leaves the process: carried out by the runtime.
pub(crate) trait Effects {
    /// Raft messages for other members, in the order they should leave. `role` is this member's
    /// role when they were made.
    fn send(&mut self, msgs: Vec<Message>, role: StateRole);
    /// Queues the answer to the client gateway's request `gateway_id` on the write stream.
    fn answer_stream(&mut self, gateway_id: u64, term: u64, result: &Result<Applied, EtcdError>);
    /// Sends the queued answers.
    fn flush_answers(&mut self);
    /// The time now, for the fsync histogram only (decisions take `now` as an argument).
    fn clock(&self) -> Instant;
}

/// Who waits for a proposal to be applied.
pub(crate) enum Waiter {
    /// The IPC thread, for a ClientPlane call.
    Local(Reply),
    /// The client gateway, on the write stream of that generation, until `deadline`.
    Stream {
        gateway_id: u64,
        generation: u64,
        deadline: Instant,
    },
}

/// This member's attributes, published through raft once a leader exists.
struct Publish {
    data: Vec<u8>,
    done: bool,
    last_try: Option<Instant>,
}

pub(crate) struct Core<L: LogStore> {
    node: RawNode<L>,
    me: u64,
    shared: Arc<Shared>,
    request_timeout: Duration,
    /// Proposals waiting to be applied, by `RaftRequest.id`.
    waiters: HashMap<u64, Waiter>,
    /// The write stream's generation: a waiter belongs to the stream it came on.
    write_generation: u64,
    reads: Reads,
    applied: u64,
    /// Until the entries the log knew as committed at start are applied again: every batch
    /// then tells the reads waiting for them (`Shared::wait_settled`).
    recovering: bool,
    publish: Publish,
    forwarders: Forwarders,
    leader_acks: LeaderAcks,
    follower_acks: FollowerAcks,
    /// Committed entries raft handed out that are not applied yet (see
    /// [`FOLLOWER_APPLY_BATCH`]), and since when the oldest waits.
    unapplied: Vec<Entry>,
    unapplied_since: Option<Instant>,
    /// This member's data dir was empty when this run started ([`Core::set_started_empty`]).
    started_empty: bool,
    /// The leader whose heartbeat proved this member lost data it had acknowledged.
    lost_data_to: Option<u64>,
    compaction: Compaction,
    /// Raft snapshots sent and not reported yet: to whom, since when. raft-rs sends a follower
    /// nothing more until it hears how one ended, so one whose report is lost (its gateway died
    /// mid-send) is reported failed here ([`SNAPSHOT_REPORT_TIMEOUT`], or a new raft stream).
    snapshots_unreported: HashMap<u64, Instant>,
    /// The index of the last snapshot sent to each follower not yet caught up past it, and
    /// when: the log is not compacted past it, so that the follower finds the entries after the
    /// snapshot once it installed it (installing a large one takes a while); for at most
    /// [`SNAPSHOT_FLOOR_MAX`].
    snapshot_floors: HashMap<u64, (u64, Instant)>,
}

/// How long a snapshot sent keeps the log from being compacted past it.
pub(crate) const SNAPSHOT_FLOOR_MAX: Duration = Duration::from_secs(300);

/// How long a raft snapshot's send may go unreported once no image is being read.
pub(crate) const SNAPSHOT_REPORT_TIMEOUT: Duration = Duration::from_secs(60);

impl<L: LogStore> Core<L> {
    /// `publish` is this member's encoded publish proposal; `published` whether the member table
    /// already has its attributes. Read-index contexts start after `first_read` (see
    /// [`Reads::starting_at`]).
    pub(crate) fn new(
        node: RawNode<L>,
        shared: Arc<Shared>,
        applied: u64,
        publish: (Vec<u8>, bool),
        first_read: u64,
        request_timeout: Duration,
    ) -> Core<L> {
        let (publish, published) = publish;
        let me = node.raft.id;
        Core {
            node,
            me,
            shared,
            request_timeout,
            waiters: HashMap::new(),
            write_generation: 0,
            reads: Reads::starting_at(first_read),
            applied,
            recovering: true,
            publish: Publish {
                data: publish,
                done: published,
                last_try: None,
            },
            forwarders: Forwarders::default(),
            leader_acks: LeaderAcks::default(),
            follower_acks: FollowerAcks::default(),
            unapplied: Vec::new(),
            unapplied_since: None,
            started_empty: false,
            lost_data_to: None,
            compaction: Compaction::default(),
            snapshots_unreported: HashMap::new(),
            snapshot_floors: HashMap::new(),
        }
    }

    /// Compacts the log by `policy` from now on (off until this is called).
    pub(crate) fn set_log_compaction(&mut self, policy: LogCompaction) {
        // After a restart the count starts from the recorded point, which is behind the last
        // compaction's applied index by the catch-up entries: the first compaction comes early.
        self.compaction = Compaction {
            policy: Some(policy),
            since: self.node.raft.raft_log.first_index().saturating_sub(1),
            in_flight: None,
        };
    }

    /// Picks a compaction point and hands it to the state machine, when `--snapshot-count`
    /// entries were applied since the last one and none is in flight.
    fn maybe_compact(&mut self, sm: &mut impl StateMachine) -> Result<()> {
        let Some(policy) = self.compaction.policy else {
            return Ok(());
        };
        if self.compaction.in_flight.is_some()
            || self.applied.saturating_sub(self.compaction.since) <= policy.snapshot_count
        {
            return Ok(());
        }
        // A follower receiving a raft snapshot needs the entries after it when it is done.
        if self.node.store().snapshot_in_flight() {
            return Ok(());
        }
        self.compaction.since = self.applied;
        let point = self
            .applied
            .saturating_sub(policy.catchup_entries)
            .min(self.snapshot_floor().unwrap_or(u64::MAX));
        let log = &self.node.raft.raft_log;
        if point < log.first_index() {
            return Ok(());
        }
        let term = log.term(point)?;
        let mut meta = SnapshotMetadata {
            index: point,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.node.raft.prs().conf().to_conf_state());
        debug!(
            point,
            term,
            applied = self.applied,
            "compacting the raft log"
        );
        sm.begin_compaction(meta)?;
        self.compaction.in_flight = Some(point);
        Ok(())
    }

    /// Drops the log up to the compaction point in flight once the state machine made it
    /// durable. Cheap when there is none: the runtime calls it every turn.
    pub(crate) fn poll_compaction(&mut self, sm: &mut impl StateMachine) -> Result<()> {
        if self.compaction.in_flight.is_none() {
            return Ok(());
        }
        if let Some(mut point) = sm.compaction_durable()? {
            // A snapshot sent meanwhile keeps what its follower needs (the record on disk may
            // say more: a restart drops that much, which only a restart's own follower misses).
            if let Some(floor) = self.snapshot_floor()
                && floor < point.index
            {
                let log = &self.node.raft.raft_log;
                match log.term(floor) {
                    Ok(term) if floor >= log.first_index() => {
                        point.index = floor;
                        point.term = term;
                    }
                    _ => {
                        self.compaction.in_flight = None;
                        return Ok(());
                    }
                }
            }
            self.node.mut_store().compact(&point)?;
            self.compaction.in_flight = None;
        }
        Ok(())
    }

    /// The lowest index a snapshot sent still keeps in the log, if any.
    fn snapshot_floor(&self) -> Option<u64> {
        self.snapshot_floors.values().map(|(index, _)| *index).min()
    }

    /// Forgets the floors of followers caught up past them, or kept too long.
    fn prune_snapshot_floors(&mut self, now: Instant) {
        let prs = self.node.raft.prs();
        self.snapshot_floors.retain(|to, (index, since)| {
            let caught_up = prs.get(*to).is_some_and(|pr| pr.matched >= *index);
            !caught_up && now.duration_since(*since) < SNAPSHOT_FLOOR_MAX
        });
    }

    /// This run started from an empty data dir (a new member of a new cluster, or one whose data
    /// was lost or wiped). A leader's heartbeat commits no further than what the member
    /// acknowledged, so one that commits past its empty log means the cluster knows this member
    /// from before: it has already been bootstrapped ([`Core::lost_data_to`]).
    pub(crate) fn set_started_empty(&mut self, empty: bool) {
        self.started_empty = empty;
    }

    /// The leader that knows this member acknowledged entries it no longer has, if any: the
    /// member must stop rather than take part (its votes could elect a leader without them).
    pub(crate) fn lost_data_to(&self) -> Option<u64> {
        self.lost_data_to
    }

    /// A single voter needs no election timeout to know it wins.
    pub(crate) fn campaign_if_alone(&mut self) {
        let conf = self.node.raft.prs().conf().voters().ids();
        if conf.len() == 1 && conf.contains(self.me) {
            let _ = self.node.campaign();
        }
    }

    pub(crate) fn term(&self) -> u64 {
        self.node.raft.term
    }

    #[cfg(test)]
    pub(crate) fn role(&self) -> StateRole {
        self.node.raft.state
    }

    #[cfg(test)]
    pub(crate) fn raft(&self) -> &raft::Raft<L> {
        &self.node.raft
    }

    #[cfg(test)]
    pub(crate) fn node_mut(&mut self) -> &mut RawNode<L> {
        &mut self.node
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.len()
    }

    fn has_leader(&self) -> bool {
        self.node.raft.leader_id != raft::INVALID_ID
    }

    /// A proposal from the IPC thread, answered through `reply`.
    pub(crate) fn propose_local(&mut self, id: u64, data: Vec<u8>, reply: Reply) {
        match self.propose(data) {
            Ok(()) => {
                self.waiters.insert(id, Waiter::Local(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// A proposal from the write stream; an error is the answer to send at once.
    pub(crate) fn propose_stream(
        &mut self,
        id: u64,
        data: Vec<u8>,
        gateway_id: u64,
        now: Instant,
    ) -> Result<(), EtcdError> {
        self.propose(data)?;
        self.waiters.insert(
            id,
            Waiter::Stream {
                gateway_id,
                generation: self.write_generation,
                deadline: now + self.request_timeout,
            },
        );
        Ok(())
    }

    fn propose(&mut self, data: Vec<u8>) -> Result<(), EtcdError> {
        if !self.has_leader() {
            self.shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
            return Err(ee::no_leader());
        }
        self.node.propose(Vec::new(), data).map_err(|e| {
            debug!("proposal dropped: {e}");
            self.shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
            ee::no_leader()
        })
    }

    /// A linearizable read: answered once this member has applied up to a read index.
    pub(crate) fn read_index(&mut self, reply: ReadReply) {
        if self.has_leader() {
            self.reads.push(reply);
        } else {
            let _ = reply.send(Err(ee::no_leader()));
        }
    }

    /// One read index for every read that arrived since the last call (etcd batches them too).
    pub(crate) fn send_read_index(&mut self, now: Instant) {
        if let Some((ctx, n)) = self.reads.take_unsent(self.me, now) {
            self.shared.read_indexes.fetch_add(1, Ordering::Relaxed);
            self.shared
                .linearizable_reads
                .fetch_add(n as u64, Ordering::Relaxed);
            self.node.read_index(ctx);
        }
    }

    pub(crate) fn transfer_leader(&mut self, target: u64) {
        info!(to = format!("{target:x}"), "transferring the leadership");
        self.node.transfer_leader(target);
    }

    /// Why raft must not see `m`, a message from a peer: raft-rs trusts its peers, and panics
    /// (`fatal!`) on, or indexes past the end of, what a correct member never sends. A member
    /// must survive a peer that is buggy, of another version, or not a member at all.
    fn refusal(&self, m: &Message) -> Option<&'static str> {
        let raft = &self.node.raft;
        match m.get_msg_type() {
            MessageType::MsgPropose if m.entries.is_empty() => Some("a proposal without entries"),
            MessageType::MsgReadIndex | MessageType::MsgReadIndexResp if m.entries.len() != 1 => {
                Some("a read index without exactly one context")
            }
            MessageType::MsgHeartbeat
                if m.term >= raft.term && m.commit > raft.raft_log.last_index() =>
            {
                Some("a heartbeat that commits past the end of this member's log")
            }
            MessageType::MsgAppend
                if m.entries
                    .iter()
                    .enumerate()
                    .any(|(i, e)| Some(e.index) != m.index.checked_add(1 + i as u64)) =>
            {
                Some("an append whose entries do not follow its index")
            }
            // Snapshots arrive beside the raft stream, image and all (PeerRegistrar.receiveSnapshot).
            MessageType::MsgSnapshot => Some("a snapshot on the raft stream"),
            _ => None,
        }
    }

    /// A raft message from another member.
    pub(crate) fn step(&mut self, m: Message) {
        if self.started_empty
            && m.get_msg_type() == MessageType::MsgHeartbeat
            && m.term >= self.node.raft.term
            && m.commit > self.node.raft.raft_log.last_index()
        {
            self.lost_data_to = Some(m.from);
            return;
        }
        if let Some(why) = self.refusal(&m) {
            self.shared
                .peer_messages_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                from = format!("{:x}", m.from),
                kind = ?m.get_msg_type(),
                term = m.term,
                "dropping a raft message from a peer: {why}"
            );
            return;
        }
        if self.follower_acks.receive(&self.node.raft, &m) {
            let durable = self.node.raft.raft_log.persisted;
            self.commit_ahead(durable);
            return;
        }
        let forwarded_by = (m.get_msg_type() == MessageType::MsgPropose).then_some(m.from);
        if let Err(e) = self.node.step(m) {
            debug!("raft refused a message: {e}");
        } else if let Some(from) = forwarded_by
            && self.node.raft.state == StateRole::Leader
        {
            self.forwarders
                .note(from, self.node.raft.raft_log.last_index());
        }
    }

    pub(crate) fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// Whether a received raft snapshot at `point` is still needed, and if so the hard state the
    /// installed member starts from: this term and vote (never forgotten), the commit at least
    /// the snapshot's. Not needed when this member applied that far, or its log holds the
    /// snapshot's entry (its log then matches the leader's up to it, and raft catches up).
    pub(crate) fn snapshot_wanted(&self, point: &SnapshotMetadata) -> Option<HardState> {
        let log = &self.node.raft.raft_log;
        if self.applied >= point.index || log.term(point.index).is_ok_and(|t| t == point.term) {
            return None;
        }
        let mut hs = self.node.raft.hard_state();
        hs.commit = hs.commit.max(point.index);
        Some(hs)
    }

    pub(crate) fn report_snapshot(&mut self, to: u64, ok: bool) {
        if self.snapshots_unreported.remove(&to).is_none() {
            debug!(
                to = format!("{to:x}"),
                ok, "a report of a snapshot not in flight"
            );
        }
        if !ok {
            self.snapshot_floors.remove(&to);
        }
        let counter = if ok {
            &self.shared.snapshots_sent
        } else {
            &self.shared.snapshots_send_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
    }

    /// The raft stream was replaced (a new peer gateway): the old one's snapshot sends will
    /// never be reported.
    pub(crate) fn new_peer_stream(&mut self) {
        for to in self
            .snapshots_unreported
            .keys()
            .copied()
            .collect::<Vec<_>>()
        {
            info!(
                to = format!("{to:x}"),
                "a raft snapshot's send went with the old peer gateway: reported failed"
            );
            self.report_snapshot(to, false);
        }
    }

    /// The write stream was replaced or lost: its waiters will never be answered on it.
    pub(crate) fn new_write_stream(&mut self) {
        self.write_generation += 1;
    }

    /// A raft tick (the heartbeat interval), and the timers that run with it.
    pub(crate) fn tick(&mut self, now: Instant, fx: &mut impl Effects) {
        self.node.tick();
        if !self.snapshot_floors.is_empty() {
            self.prune_snapshot_floors(now);
        }
        if !self.snapshots_unreported.is_empty() && !self.node.store().snapshot_in_flight() {
            let lost: Vec<u64> = self
                .snapshots_unreported
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= SNAPSHOT_REPORT_TIMEOUT)
                .map(|(to, _)| *to)
                .collect();
            for to in lost {
                warn!(
                    to = format!("{to:x}"),
                    "a raft snapshot's send was never reported: reported failed"
                );
                self.report_snapshot(to, false);
            }
        }
        self.maybe_publish(now);
        self.forget_abandoned(now, fx);
        for ctx in self.reads.due_for_retry(self.me, now) {
            self.node.read_index(ctx);
        }
    }

    /// Once a tick: the commit index of an idle member reaches its log
    /// ([`LogStore::record_commit`]).
    pub(crate) fn record_commit(&mut self) -> Result<()> {
        self.node.mut_store().record_commit().map(|_| ())
    }

    /// When the core next needs the runtime, at the latest: the next tick, or the end of a
    /// follower's apply delay.
    pub(crate) fn wake_at(&self, next_tick: Instant) -> Instant {
        self.unapplied_since
            .map_or(next_tick, |t| next_tick.min(t + FOLLOWER_APPLY_DELAY))
    }

    /// Tries to publish this member's attributes once a leader exists, every
    /// [`PUBLISH_RETRY`] until they are applied.
    fn maybe_publish(&mut self, now: Instant) {
        if self.publish.done || !self.has_leader() {
            return;
        }
        if self
            .publish
            .last_try
            .is_some_and(|t| now.duration_since(t) < PUBLISH_RETRY)
        {
            return;
        }
        self.publish.last_try = Some(now);
        if let Err(e) = self.node.propose(Vec::new(), self.publish.data.clone()) {
            debug!("publishing this member's attributes: {e}");
        }
    }

    /// Drops waiters whose client gave up (the IPC side timed out) or whose write stream is
    /// gone, and answers stream waiters past their deadline with etcd's timeout, so lost
    /// proposals don't pile up.
    fn forget_abandoned(&mut self, now: Instant, fx: &mut impl Effects) {
        let generation = self.write_generation;
        let mut timed_out = Vec::new();
        self.waiters.retain(|_, w| match w {
            Waiter::Local(r) => !r.is_closed(),
            Waiter::Stream {
                gateway_id,
                generation: g,
                deadline,
            } => {
                if *g != generation {
                    false
                } else if *deadline <= now {
                    timed_out.push(*gateway_id);
                    false
                } else {
                    true
                }
            }
        });
        if !timed_out.is_empty() {
            let timeout = Err(ee::timeout());
            for gateway_id in timed_out {
                fx.answer_stream(gateway_id, self.node.raft.term, &timeout);
            }
            fx.flush_answers();
        }
        self.reads.forget_abandoned();
    }

    pub(crate) fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Carries raft's `Ready` through (see the module doc for the order).
    pub(crate) fn on_ready(
        &mut self,
        now: Instant,
        fx: &mut impl Effects,
        sm: &mut impl StateMachine,
    ) -> Result<()> {
        // Goes out with this Ready's messages, before the leader's own apply.
        self.tell_forwarders();
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            if ss.leader_id != self.shared.leader.load(Ordering::Relaxed) && ss.leader_id != 0 {
                self.shared.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
            let role = ss.raft_state;
            info!(
                leader = format!("{:x}", ss.leader_id),
                term = self.node.raft.term,
                "raft role is now {role:?}"
            );
            if role != StateRole::Leader {
                debug!("reads in flight are answered by the new leader's read index or time out");
            }
        }
        // A leader may send before its own fsync; followers' replies come from persisted_messages.
        self.send(fx, rd.take_messages());
        if !rd.snapshot().is_empty() {
            tracing::warn!("received a raft snapshot, which this version does not install yet");
        }
        let commit = rd.hs().map(|hs| hs.commit);
        let mut committed = Some(rd.take_committed_entries());
        // A leader answers its clients before it writes its log. Everyone else applies while the
        // disk writes the new entries: raft only hands out entries that are durable already.
        if self.node.raft.state == StateRole::Leader {
            self.collect(committed.take().unwrap_or_default(), commit, now);
            self.maybe_apply(now, fx, sm)?;
        }

        let log = self.node.mut_store();
        log.append(rd.entries());
        if let Some(hs) = rd.hs() {
            log.set_hard_state(hs);
        }
        let started = fx.clock();
        log.begin_persist(rd.must_sync())?;
        if let Some(committed) = committed {
            self.collect(committed, commit, now);
            if self.must_apply(now) {
                self.node.mut_store().start_writeback();
                self.apply_collected(fx, sm)?;
            }
        }
        if self.node.mut_store().finish_persist()? {
            self.shared.record_fsync(fx.clock().duration_since(started));
        }
        // A follower's acknowledgements gate every write's commit: they leave as soon as the
        // entries are durable.
        self.send(fx, rd.take_persisted_messages());
        let durable = rd.entries().last().map(|e| e.index);
        match self.node.raft.state {
            StateRole::Leader => {
                if let Some(durable) = durable {
                    self.announce_durable(fx, durable);
                }
            }
            // Before `advance_append`, so that its committed entries include these.
            StateRole::Follower => {
                self.commit_ahead(durable.unwrap_or(self.node.raft.raft_log.persisted));
            }
            _ => {}
        }
        if self.node.raft.state == StateRole::Leader {
            sm.prefetch(rd.entries())?;
        }
        for rs in rd.take_read_states() {
            let index = self.leader_acks.read_index(self.node.raft.term, rs.index);
            self.reads.answered(self.me, &rs.request_ctx, index);
        }

        // Not `advance`: that would tell raft everything handed out is applied.
        let mut light = self.node.advance_append(rd);
        self.send(fx, light.take_messages());
        let commit = light.commit_index();
        self.collect(light.take_committed_entries(), commit, now);
        self.maybe_apply(now, fx, sm)?;
        self.reads.answer(self.applied);
        // A commit the leader's own fsync completed. Only a leader's messages may leave without
        // a Ready (raft-rs holds a follower's until they are persisted).
        self.tell_forwarders();
        if self.node.raft.state == StateRole::Leader && !self.node.raft.msgs.is_empty() {
            let msgs = std::mem::take(&mut self.node.raft.msgs);
            self.send(fx, msgs);
        }
        Ok(())
    }

    /// Hands messages to the runtime, read indexes raised past what the leader announced and
    /// forwarders' messages first.
    fn send(&mut self, fx: &mut impl Effects, mut msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        for m in msgs
            .iter_mut()
            .filter(|m| m.get_msg_type() == MessageType::MsgReadIndexResp)
        {
            m.index = self.leader_acks.read_index(m.term, m.index);
        }
        self.forwarders.first(&mut msgs);
        for m in &msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let index = m.get_snapshot().get_metadata().index;
                self.snapshot_floors.insert(m.to, (index, fx.clock()));
                self.snapshots_unreported.insert(m.to, fx.clock());
            }
        }
        fx.send(msgs, self.node.raft.state);
    }

    /// Sends each follower whose forwarded proposal is now committed an append carrying the
    /// commit index: it answers its client once it applies, and waiting for the next append or
    /// heartbeat would cost a lone write up to a heartbeat interval. Sending it to every follower
    /// (what raft-rs does without `skip_bcast_commit`) cost the others a round trip each.
    fn tell_forwarders(&mut self) {
        if self.forwarders.is_empty() {
            return;
        }
        if self.node.raft.state != StateRole::Leader {
            self.forwarders.clear();
            return;
        }
        for peer in self
            .forwarders
            .take_committed(self.node.raft.raft_log.committed)
        {
            if self.node.raft.prs().get(peer).is_some() {
                self.node.raft.send_append(peer);
            }
        }
    }

    /// As leader, once its log is durable through `durable`: tells each follower whose forwarded
    /// proposal is in it ([`LeaderAcks`]), instead of telling it of the commit later.
    fn announce_durable(&mut self, fx: &mut impl Effects, durable: u64) {
        let (raft, acks) = (&self.node.raft, &mut self.leader_acks);
        let notices = self
            .forwarders
            .announce(durable, |peer| acks.announce(raft, peer, durable));
        self.send(fx, notices);
    }

    /// As follower, with its log durable through `durable`: commits what the leader's log also
    /// has durable ([`FollowerAcks`]).
    fn commit_ahead(&mut self, durable: u64) {
        if let Some(index) = self.follower_acks.commit_index(&self.node.raft, durable) {
            if self.follower_acks.used() {
                info!(
                    term = self.node.raft.term,
                    "committing on the leader's notice that its log is durable (this member and the leader are a quorum)"
                );
            }
            self.node.raft.raft_log.commit_to(index);
        }
    }

    /// Takes committed entries for [`Core::maybe_apply`]. The commit index goes to the log at
    /// once (kept in memory: at start the stored applied index raises the WAL's commit index).
    fn collect(&mut self, entries: Vec<Entry>, commit: Option<u64>, now: Instant) {
        if let Some(commit) = commit {
            self.node.mut_store().set_commit(commit);
        }
        if !entries.is_empty() {
            self.unapplied_since.get_or_insert(now);
            self.unapplied.extend(entries);
        }
    }

    /// Whether collected entries must be applied now (see [`FOLLOWER_APPLY_BATCH`]).
    fn must_apply(&self, now: Instant) -> bool {
        !self.unapplied.is_empty()
            && (self.node.raft.state != StateRole::Follower
                || self.unapplied.len() >= FOLLOWER_APPLY_BATCH
                || self
                    .unapplied_since
                    .is_some_and(|t| now.duration_since(t) >= FOLLOWER_APPLY_DELAY)
                || !self.waiters.is_empty()
                || self.reads.wait_above(self.applied)
                || self
                    .unapplied
                    .iter()
                    .any(|e| e.get_entry_type() != EntryType::EntryNormal))
    }

    /// Applies what was collected if it must be now, and answers the reads that waited for it.
    pub(crate) fn maybe_apply(
        &mut self,
        now: Instant,
        fx: &mut impl Effects,
        sm: &mut impl StateMachine,
    ) -> Result<()> {
        if self.must_apply(now) {
            self.apply_collected(fx, sm)?;
            self.reads.answer(self.applied);
        }
        Ok(())
    }

    /// Applies every collected entry and tells raft how far that got.
    fn apply_collected(&mut self, fx: &mut impl Effects, sm: &mut impl StateMachine) -> Result<()> {
        let entries = std::mem::take(&mut self.unapplied);
        self.unapplied_since = None;
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut hooks = Hooks {
            node: &mut self.node,
            waiters: &mut self.waiters,
            fx,
            shared: &self.shared,
            me: self.me,
            generation: self.write_generation,
            last,
            local: Vec::new(),
            streamed: false,
            published: &mut self.publish.done,
        };
        let revision = sm.apply(&entries, &mut hooks)?;
        let local = std::mem::take(&mut hooks.local);
        let streamed = hooks.streamed;
        self.shared
            .proposals_committed
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.applied = last;
        self.shared.revision.store(revision, Ordering::Release);
        self.shared.applied.store(last, Ordering::Release);
        if streamed || self.recovering {
            // Reads on the IPC thread may wait for this batch (`Shared::wait_settled`).
            self.shared.settled_changed.notify_waiters();
            self.recovering = !self.shared.settled();
        }
        for (reply, result) in local {
            let _ = reply.send(result);
        }
        self.node.advance_apply_to(self.applied);
        self.maybe_compact(sm)
    }

    /// Raft's position, for the IPC thread.
    pub(crate) fn publish_status(&self) {
        let s = &self.shared;
        s.term.store(self.node.raft.term, Ordering::Relaxed);
        s.leader.store(self.node.raft.leader_id, Ordering::Relaxed);
        s.commit
            .store(self.node.raft.raft_log.committed, Ordering::Relaxed);
        s.last_index
            .store(self.node.store().last_index_cached(), Ordering::Relaxed);
    }
}

/// A conf change entry's message; `None`, logged, when it does not decode (every member skips it
/// alike, which keeps them equal).
fn decode_conf_change<M: protobuf::Message>(entry: &Entry) -> Option<M> {
    M::parse_from_bytes(&entry.data)
        .map_err(|e| {
            error!(
                index = entry.index,
                "skipping an undecodable conf change: {e}"
            )
        })
        .ok()
}

/// The core's [`ApplyHooks`] for one apply.
struct Hooks<'a, L: LogStore, F: Effects> {
    node: &'a mut RawNode<L>,
    waiters: &'a mut HashMap<u64, Waiter>,
    fx: &'a mut F,
    shared: &'a Shared,
    me: u64,
    generation: u64,
    /// The last index of this apply.
    last: u64,
    /// Answers for the IPC thread, sent once the batch is written.
    local: Vec<(Reply, Result<Applied, EtcdError>)>,
    streamed: bool,
    published: &'a mut bool,
}

impl<L: LogStore, F: Effects> ApplyHooks for Hooks<'_, L, F> {
    fn conf_change(&mut self, entry: &Entry) -> Result<Option<ConfState>> {
        let applied = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            decode_conf_change::<ConfChangeV2>(entry).map(|cc| self.node.apply_conf_change(&cc))
        } else {
            decode_conf_change::<ConfChange>(entry).map(|cc| self.node.apply_conf_change(&cc))
        };
        let Some(cs) = applied.transpose()? else {
            return Ok(None);
        };
        self.node.mut_store().set_conf_state(&cs);
        Ok(Some(cs))
    }

    fn applied(&mut self, id: u64, result: Result<Applied, EtcdError>) {
        if let Ok(Applied::Published { member }) = &result
            && *member == self.me
        {
            *self.published = true;
        }
        if id == 0 {
            return;
        }
        match self.waiters.remove(&id) {
            Some(Waiter::Stream {
                gateway_id,
                generation,
                ..
            }) => {
                if generation != self.generation {
                    return;
                }
                // The client gateway's answers leave before RocksDB gets the batch: the entries
                // are committed (a crash applies them again from the log) and the answers are
                // computed. Reads on the IPC thread wait until `applied` catches up with
                // `answered`, so none misses a write already answered.
                if !self.streamed {
                    // A maximum: at start `answered` holds the recovered commit index, above
                    // the first batches' (see `boot::run`).
                    self.shared.answered.fetch_max(self.last, Ordering::AcqRel);
                    self.streamed = true;
                }
                self.fx
                    .answer_stream(gateway_id, self.node.raft.term, &result);
            }
            Some(Waiter::Local(reply)) => self.local.push((reply, result)),
            None => {}
        }
    }

    fn before_write(&mut self) {
        if self.streamed {
            self.fx.flush_answers();
        }
    }
}
