//! The raft thread: owns the `RawNode`, runs the Ready cycle (persist with fsync, send, apply),
//! and answers proposals and read-index requests. It is the only writer of the database.
//!
//! Everything that arrives while the previous Ready is being persisted is taken in one go, so many
//! proposals share one fsync. Raft messages to and from other members go through the raft stream
//! (`peer_stream`), which this thread reads and writes itself; commands from the IPC thread come
//! through the inbox, and one `poll` waits for both.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::codec::{self, Header, MemberInfo, Proposal};
use crate::error::Result;
use crate::etcd_error::{self as ee, EtcdError};
use crate::inbox::Inbox;
use crate::leader_ack::{FollowerAcks, LeaderAcks};
use crate::mvcc::{Applier, DeleteRangeResponse, MvccState, PutResponse, TxnResponse};
use crate::peer_stream::{Event, PeerStream};
use crate::storage::{Db, RaftLog};
use crate::write_stream::{Incoming, Limits, WriteStream};

/// What applying a proposal gave, sent back to whoever proposed it.
#[derive(Debug)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction { revision: i64 },
    Published,
}

pub type Reply = oneshot::Sender<Result<Applied, EtcdError>>;
/// Answers a linearizable read once this member has applied up to the read index.
pub type ReadReply = oneshot::Sender<Result<(), EtcdError>>;

/// How long a read index may go unanswered before it is asked again (etcd: 500 ms).
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

/// A follower applies what it learnt is committed once this many entries wait, or the oldest has
/// waited `FOLLOWER_APPLY_DELAY`; at once when a client of its own or a linearizable read waits
/// for them, for a conf change, and in any other role. An apply per lone write was about a fifth
/// of a follower's CPU per put, spent on two shared cores next to the writes' critical path.
/// Serializable reads on a follower may see its state up to this much behind.
const FOLLOWER_APPLY_BATCH: usize = 8;
const FOLLOWER_APPLY_DELAY: Duration = Duration::from_millis(5);

pub enum Command {
    /// `data` is an encoded `RaftRequest` whose id is `id`.
    Propose {
        id: u64,
        data: Vec<u8>,
        reply: Reply,
    },
    /// Answers once this member has applied everything committed when the request arrived
    /// (etcd's linearizable read).
    ReadIndex {
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// Hand the leadership to this member (raft's leader transfer; a no-op unless leading).
    TransferLeader { target: u64 },
    /// The peer gateway connected the raft stream (a newer one replaces the older).
    PeerStream(std::os::unix::net::UnixStream),
    /// The client gateway connected the write stream (a newer one replaces the older).
    WriteStream(std::os::unix::net::UnixStream),
}

/// Who waits for a proposal to be applied.
enum Waiter {
    /// The IPC thread, for a ClientPlane call.
    Local(Reply),
    /// The client gateway, on the write stream of that generation, until `deadline`.
    Stream {
        gateway_id: u64,
        generation: u64,
        deadline: Instant,
    },
}

/// What the raft loop needs besides raft and storage.
pub struct Settings {
    pub tick: Duration,
    pub cluster_id: u64,
    pub limits: Limits,
    /// etcd's request timeout: a write not applied by then is answered with a timeout.
    pub request_timeout: Duration,
}

/// State the IPC thread reads without asking the raft thread.
#[derive(Default)]
pub struct Shared {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    /// The last index whose answers left before RocksDB had its batch (`RaftLoop::apply`). While
    /// it is above `applied`, the IPC thread holds its reads back (`Shared::settled`).
    pub answered: AtomicU64,
    pub last_index: AtomicU64,
    pub revision: AtomicI64,
    pub members: Mutex<Vec<MemberInfo>>,
    pub proposals_committed: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_nanos: AtomicU64,
    /// fsyncs by duration, as `Metrics.fsyncBuckets` in the schema.
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS + 1],
    pub read_indexes: AtomicU64,
    pub linearizable_reads: AtomicU64,
    pub leader_changes: AtomicU64,
    /// The counter behind request IDs (the IPC and raft threads both hand them out).
    pub next_request: AtomicU64,
}

/// etcd's buckets for `etcd_disk_wal_fsync_duration_seconds`: 1 ms doubling up to 8.192 s.
pub const FSYNC_BUCKETS: usize = 14;

/// The bucket of an fsync that took `took`: the first whose bound (1 ms * 2^i) it does not
/// exceed, or `FSYNC_BUCKETS` when it exceeds them all.
pub fn fsync_bucket(took: Duration) -> usize {
    (0..FSYNC_BUCKETS)
        .find(|&i| took <= Duration::from_millis(1 << i))
        .unwrap_or(FSYNC_BUCKETS)
}

impl Shared {
    fn record_fsync(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.fsync_buckets[fsync_bucket(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether every answered write is in RocksDB, so that a read now sees all of them.
    pub fn settled(&self) -> bool {
        self.answered.load(Ordering::Acquire) <= self.applied.load(Ordering::Acquire)
    }

    /// Request IDs unique across members (as etcd's idutil): the member ID's low 16 bits, then a
    /// counter seeded from the clock at start, so a restarted member does not reuse its old IDs.
    pub fn request_id(&self, member_id: u64) -> u64 {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        (member_id << 48) | (id & ((1 << 48) - 1))
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        self.members.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

pub struct RaftLoop {
    node: RawNode<RaftLog>,
    db: Arc<Db>,
    inbox: Inbox,
    /// Commands taken from the inbox, handled before the next Ready.
    pending: VecDeque<Command>,
    /// The raft stream to the peer gateway; without it outbound messages are dropped (raft
    /// resends), which is what happens while the gateway restarts.
    peer: Option<PeerStream>,
    events: Vec<Event>,
    /// The write stream from the client gateway, and how many there have been (a waiter
    /// belongs to the stream it came on).
    writes: Option<WriteStream>,
    write_generation: u64,
    incoming: Vec<Incoming>,
    shared: Arc<Shared>,
    settings: Settings,
    /// Proposals waiting to be applied, by `RaftRequest.id`.
    waiters: HashMap<u64, Waiter>,
    /// Read-index requests not yet sent to raft, then those waiting for raft's answer (by context),
    /// then those waiting for the apply to reach their index.
    reads_unsent: Vec<ReadReply>,
    reads_in_raft: HashMap<u64, (Instant, Vec<ReadReply>)>,
    reads_applying: Vec<(u64, ReadReply)>,
    read_ctx: u64,
    applied: u64,
    /// The state machine's revisions and latest-version cache between batches; loaded lazily.
    mvcc: Option<MvccState>,
    /// This member's name and client URLs, published through raft once a leader exists.
    me: MemberInfo,
    published: bool,
    last_publish: Option<Instant>,
    /// As leader: followers with a forwarded proposal not yet committed, and its last index. Only
    /// they hear of the commit at once (an append carrying it); the others learn it from the next
    /// append or heartbeat (raft-rs `skip_bcast_commit`).
    forwarded: Vec<(u64, u64)>,
    /// As leader: how far its log is durable, as announced to forwarders; as follower: as the
    /// leader announced it (`leader_ack`).
    leader_acks: LeaderAcks,
    follower_acks: FollowerAcks,
    /// Test-only failpoint (`schema::failpoint::APPLY_WRITE_DELAY`): a pause between answering applied
    /// writes and handing their batch to RocksDB, to make that window wide.
    apply_write_delay: Option<Duration>,
    /// Test-only failpoint (`schema::failpoint::APPEND_ACK_DELAY`): how long a follower holds its
    /// append acknowledgements, and those held with when they are due.
    append_ack_delay: Option<Duration>,
    held_acks: VecDeque<(Instant, Message)>,
    /// Committed entries raft handed out that are not applied yet (see `FOLLOWER_APPLY_BATCH`),
    /// and since when the oldest waits.
    unapplied: Vec<Entry>,
    unapplied_since: Option<Instant>,
}

impl RaftLoop {
    pub fn new(
        node: RawNode<RaftLog>,
        db: Arc<Db>,
        inbox: Inbox,
        shared: Arc<Shared>,
        settings: Settings,
        me: MemberInfo,
        applied: u64,
    ) -> RaftLoop {
        let published = shared
            .members()
            .iter()
            .any(|m| m.id == me.id && m.name == me.name && m.client_urls == me.client_urls);
        RaftLoop {
            node,
            db,
            inbox,
            pending: VecDeque::new(),
            peer: None,
            events: Vec::new(),
            writes: None,
            write_generation: 0,
            incoming: Vec::new(),
            shared,
            settings,
            waiters: HashMap::new(),
            reads_unsent: Vec::new(),
            reads_in_raft: HashMap::new(),
            reads_applying: Vec::new(),
            read_ctx: 0,
            applied,
            mvcc: None,
            me,
            published,
            last_publish: None,
            forwarded: Vec::new(),
            leader_acks: LeaderAcks::default(),
            follower_acks: FollowerAcks::default(),
            apply_write_delay: schema::failpoint::pause(schema::failpoint::APPLY_WRITE_DELAY),
            append_ack_delay: schema::failpoint::pause(schema::failpoint::APPEND_ACK_DELAY),
            held_acks: VecDeque::new(),
            unapplied: Vec::new(),
            unapplied_since: None,
        }
    }

    /// Runs until every command sender is gone. A storage error stops the member: raft's state
    /// can no longer be trusted to be on disk.
    pub fn run(mut self) -> Result<()> {
        let voters = self.node.raft.prs().conf().voters().ids().len();
        if voters == 1 && self.node.raft.prs().conf().voters().contains(self.me.id) {
            // A single member needs no election timeout to know it wins.
            let _ = self.node.campaign();
        }
        let tick = self.settings.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let mut wake_at = self
                .unapplied_since
                .map_or(next_tick, |t| next_tick.min(t + FOLLOWER_APPLY_DELAY));
            if let Some((due, _)) = self.held_acks.front() {
                wake_at = wake_at.min(*due);
            }
            let wait = wake_at.saturating_duration_since(Instant::now());
            let (peer_ready, writes_ready) = {
                let mut streams = Vec::with_capacity(2);
                if let Some(p) = &self.peer {
                    streams.push((p.fd(), p.wants_write()));
                }
                let peer_slot = streams.len().checked_sub(1);
                if let Some(w) = &self.writes {
                    streams.push((w.fd(), w.wants_write()));
                }
                let writes_slot = streams
                    .len()
                    .checked_sub(1)
                    .filter(|_| self.writes.is_some());
                let woken = self.inbox.wait(wait, &streams);
                let ready = |slot: Option<usize>| slot.is_some_and(|i| woken.stream(i));
                (ready(peer_slot), ready(writes_slot))
            };
            // Everything queued shares this Ready's fsync.
            if !self.inbox.drain(&mut self.pending) {
                return Ok(());
            }
            // A command may have brought a new stream, which has not been polled yet.
            let commands = !self.pending.is_empty();
            while let Some(cmd) = self.pending.pop_front() {
                self.handle(cmd);
            }
            if peer_ready || commands {
                self.pump_peer_stream();
            }
            if writes_ready || commands {
                self.pump_write_stream();
            }
            self.send_read_index();
            self.release_held_acks();
            if Instant::now() >= next_tick {
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick;
                }
                self.node.tick();
                self.maybe_publish();
                self.forget_abandoned();
                self.retry_lost_reads();
            }
            if self.node.has_ready() {
                self.on_ready()?;
            }
            self.maybe_apply()?;
            self.publish_status();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { id, data, reply } => {
                if self.node.raft.leader_id == raft::INVALID_ID {
                    self.shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(ee::no_leader()));
                    return;
                }
                match self.node.propose(Vec::new(), data) {
                    Ok(()) => {
                        self.waiters.insert(id, Waiter::Local(reply));
                    }
                    Err(e) => {
                        debug!("proposal dropped: {e}");
                        self.shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Err(ee::no_leader()));
                    }
                }
            }
            Command::ReadIndex { reply } => {
                if self.node.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(ee::no_leader()));
                } else {
                    self.reads_unsent.push(reply);
                }
            }
            Command::TransferLeader { target } => {
                info!(to = format!("{target:x}"), "transferring the leadership");
                self.node.transfer_leader(target);
            }
            Command::PeerStream(sock) => match PeerStream::new(sock, self.me.id) {
                Ok(stream) => {
                    if self.peer.replace(stream).is_some() {
                        info!("the peer gateway's new raft stream replaces the old one");
                    } else {
                        info!("the peer gateway connected the raft stream");
                    }
                }
                Err(e) => warn!("cannot use the peer gateway's raft stream: {e}"),
            },
            Command::WriteStream(sock) => match WriteStream::new(sock, self.settings.limits) {
                Ok(stream) => {
                    self.write_generation += 1;
                    if self.writes.replace(stream).is_some() {
                        info!("the client gateway's new write stream replaces the old one");
                    } else {
                        info!("the client gateway connected the write stream");
                    }
                }
                Err(e) => warn!("cannot use the client gateway's write stream: {e}"),
            },
        }
    }

    /// Proposes the writes that arrived on the write stream; refused ones are answered at once.
    fn pump_write_stream(&mut self) {
        let Some(writes) = self.writes.as_mut() else {
            return;
        };
        let shared = &self.shared;
        let me = self.me.id;
        let mut incoming = std::mem::take(&mut self.incoming);
        let result = writes.read(&mut || shared.request_id(me), &mut incoming);
        let deadline = Instant::now() + self.settings.request_timeout;
        for w in incoming.drain(..) {
            let refusal = match w.proposal {
                Err(e) => e,
                Ok(_) if self.node.raft.leader_id == raft::INVALID_ID => {
                    self.shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
                    ee::no_leader()
                }
                Ok((id, data)) => match self.node.propose(Vec::new(), data) {
                    Ok(()) => {
                        self.waiters.insert(
                            id,
                            Waiter::Stream {
                                gateway_id: w.gateway_id,
                                generation: self.write_generation,
                                deadline,
                            },
                        );
                        continue;
                    }
                    Err(e) => {
                        debug!("proposal dropped: {e}");
                        self.shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
                        ee::no_leader()
                    }
                },
            };
            let header = self.header(0);
            if let Some(writes) = self.writes.as_mut() {
                writes.reply(w.gateway_id, &header, &Err(refusal));
            }
        }
        self.incoming = incoming;
        let result = result.and_then(|()| match self.writes.as_mut() {
            Some(writes) => writes.flush(),
            None => Ok(()),
        });
        if let Err(why) = result {
            self.lose_write_stream(&why);
        }
    }

    fn lose_write_stream(&mut self, why: &str) {
        warn!("write stream ended ({why}); the client gateway's writes in flight go unanswered");
        self.writes = None;
    }

    /// A response header; write responses put their own revision in.
    fn header(&self, revision: i64) -> Header {
        Header {
            cluster_id: self.settings.cluster_id,
            member_id: self.me.id,
            revision,
            raft_term: self.node.raft.term,
        }
    }

    /// Answers a write-stream waiter, if its stream is still the current one.
    fn answer_stream(
        &mut self,
        gateway_id: u64,
        generation: u64,
        result: &Result<Applied, EtcdError>,
    ) {
        if generation != self.write_generation {
            return;
        }
        let header = self.header(0);
        if let Some(writes) = self.writes.as_mut() {
            writes.reply(gateway_id, &header, result);
        }
    }

    fn flush_write_stream(&mut self) {
        if let Some(writes) = self.writes.as_mut()
            && let Err(why) = writes.flush()
        {
            self.lose_write_stream(&why);
        }
    }

    /// Reads the raft stream and steps what arrived; writes output the socket can take now.
    fn pump_peer_stream(&mut self) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        let result = peer.read(&mut events).and_then(|()| peer.flush());
        for event in events.drain(..) {
            match event {
                Event::Step(m) => {
                    if self.follower_acks.receive(&self.node.raft, &m) {
                        let durable = self.node.raft.raft_log.persisted;
                        self.commit_ahead(durable);
                        continue;
                    }
                    let forwarded_by =
                        (m.get_msg_type() == MessageType::MsgPropose).then_some(m.from);
                    if let Err(e) = self.node.step(m) {
                        debug!("raft refused a message: {e}");
                    } else if let Some(from) = forwarded_by
                        && self.node.raft.state == StateRole::Leader
                    {
                        let last = self.node.raft.raft_log.last_index();
                        match self.forwarded.iter_mut().find(|(peer, _)| *peer == from) {
                            Some(pending) => pending.1 = last,
                            None => self.forwarded.push((from, last)),
                        }
                    }
                }
                Event::Unreachable(id) => self.node.report_unreachable(id),
                Event::SnapshotStatus { to, ok } => self.node.report_snapshot(
                    to,
                    if ok {
                        raft::SnapshotStatus::Finish
                    } else {
                        raft::SnapshotStatus::Failure
                    },
                ),
            }
        }
        self.events = events;
        if let Err(why) = result {
            self.lose_peer_stream(&why);
        }
    }

    fn lose_peer_stream(&mut self, why: &str) {
        warn!(
            "raft stream ended ({why}); raft messages are dropped until the peer gateway connects again"
        );
        self.peer = None;
    }

    /// One read index for every read that arrived since the last one (etcd batches them too).
    fn send_read_index(&mut self) {
        if self.reads_unsent.is_empty() {
            return;
        }
        self.read_ctx += 1;
        let ctx = self.read_ctx;
        self.shared.read_indexes.fetch_add(1, Ordering::Relaxed);
        self.shared
            .linearizable_reads
            .fetch_add(self.reads_unsent.len() as u64, Ordering::Relaxed);
        self.node.read_index(read_context_bytes(self.me.id, ctx));
        self.reads_in_raft.insert(
            ctx,
            (Instant::now(), std::mem::take(&mut self.reads_unsent)),
        );
    }

    /// A read index can be lost with a message or a leader change; like etcd, ask again for reads
    /// that got no answer within `READ_INDEX_RETRY`. Under the same context, so that the first
    /// answer still counts when it is only slow (a round trip between members above the retry
    /// interval would otherwise never answer a read); raft-rs's leader ignores a context it is
    /// already confirming.
    fn retry_lost_reads(&mut self) {
        let now = Instant::now();
        for (ctx, (sent, replies)) in self.reads_in_raft.iter_mut() {
            if now.duration_since(*sent) >= READ_INDEX_RETRY {
                debug!(
                    ctx,
                    reads = replies.len(),
                    "read index unanswered; asking again"
                );
                *sent = now;
                self.node.read_index(read_context_bytes(self.me.id, *ctx));
            }
        }
    }

    /// Drops waiters whose client gave up (the IPC side timed out) or whose write stream is gone,
    /// and answers stream waiters past their deadline with etcd's timeout, so lost proposals
    /// don't pile up.
    fn forget_abandoned(&mut self) {
        let now = Instant::now();
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
                self.answer_stream(gateway_id, generation, &timeout);
            }
            self.flush_write_stream();
        }
        self.reads_in_raft.retain(|_, (_, v)| {
            v.retain(|r| !r.is_closed());
            !v.is_empty()
        });
    }

    fn maybe_publish(&mut self) {
        if self.published || self.node.raft.leader_id == raft::INVALID_ID {
            return;
        }
        if self
            .last_publish
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.last_publish = Some(Instant::now());
        let me = self.me.clone();
        let data = codec::encode_proposal(0, 0, |rr| {
            codec::write_member(rr.init_publish(), &me);
            Ok(())
        });
        match data {
            Ok(data) => {
                if let Err(e) = self.node.propose(Vec::new(), data) {
                    debug!("publishing this member's attributes: {e}");
                }
            }
            Err(e) => error!("encoding this member's attributes: {e}"),
        }
    }

    /// Hands messages to the peer gateway; without it they are dropped and raft resends.
    fn send(&mut self, mut msgs: Vec<Message>) {
        for m in msgs
            .iter_mut()
            .filter(|m| m.get_msg_type() == MessageType::MsgReadIndexResp)
        {
            m.index = self.leader_acks.read_index(m.term, m.index);
        }
        if let Some(delay) = self.append_ack_delay
            && self.node.raft.state == StateRole::Follower
        {
            let (acks, rest): (Vec<Message>, Vec<Message>) = msgs
                .into_iter()
                .partition(|m| m.get_msg_type() == MessageType::MsgAppendResponse);
            let due = Instant::now() + delay;
            self.held_acks.extend(acks.into_iter().map(|m| (due, m)));
            msgs = rest;
        }
        self.ship(msgs);
    }

    fn ship(&mut self, mut msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        // A follower that forwarded a proposal has a client waiting: its append leaves first.
        if msgs.len() > 1 && !self.forwarded.is_empty() {
            let forwarders = &self.forwarded;
            msgs.sort_by_key(|m| !forwarders.iter().any(|&(peer, _)| peer == m.to));
        }
        if let Some(peer) = self.peer.as_mut()
            && let Err(why) = peer.send(&msgs)
        {
            self.lose_peer_stream(&why);
        }
    }

    /// Sends the append acknowledgements the `APPEND_ACK_DELAY` failpoint held that are due.
    fn release_held_acks(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some((_, m)) = self.held_acks.pop_front_if(|(at, _)| *at <= now) {
            due.push(m);
        }
        if !due.is_empty() {
            self.ship(due);
        }
    }

    fn on_ready(&mut self) -> Result<()> {
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
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            warn!("received a raft snapshot, which this version does not install yet");
        }
        let commit = rd.hs().map(|hs| hs.commit);
        let mut committed = Some(rd.take_committed_entries());
        // A leader answers its clients before it writes its log. Everyone else applies while the
        // disk writes the new entries: raft only hands out entries that are durable already.
        let apply_first = self.node.raft.state == StateRole::Leader;
        if apply_first {
            self.collect(committed.take().unwrap_or_default(), commit);
            self.maybe_apply()?;
        }

        let log = self.node.mut_store();
        log.append(rd.entries());
        if let Some(hs) = rd.hs() {
            log.set_hard_state(hs);
        }
        let started = Instant::now();
        log.begin_persist(rd.must_sync())?;
        if let Some(committed) = committed {
            self.collect(committed, commit);
            if self.must_apply() {
                self.node.mut_store().start_writeback();
                self.apply_collected()?;
            }
        }
        if self.node.mut_store().finish_persist()? {
            self.shared.record_fsync(started.elapsed());
        }
        // A follower's acknowledgements gate every write's commit: they leave as soon as the
        // entries are durable.
        self.send(rd.take_persisted_messages());
        let durable = rd.entries().last().map(|e| e.index);
        match self.node.raft.state {
            StateRole::Leader => {
                if let Some(durable) = durable {
                    self.announce_durable(durable);
                }
            }
            // Before `advance_append`, so that its committed entries include these.
            StateRole::Follower => {
                self.commit_ahead(durable.unwrap_or(self.node.raft.raft_log.persisted));
            }
            _ => {}
        }
        if self.node.raft.state == StateRole::Leader {
            self.prefetch(rd.entries())?;
        }
        for rs in rd.take_read_states() {
            let index = self.leader_acks.read_index(self.node.raft.term, rs.index);
            let Some(ctx) = read_context(&rs.request_ctx, self.me.id) else {
                continue;
            };
            if let Some((_, replies)) = self.reads_in_raft.remove(&ctx) {
                self.reads_applying
                    .extend(replies.into_iter().map(|r| (index, r)));
            }
        }

        // Not `advance`: that would tell raft everything handed out is applied.
        let mut light = self.node.advance_append(rd);
        self.send(light.take_messages());
        let commit = light.commit_index();
        self.collect(light.take_committed_entries(), commit);
        self.maybe_apply()?;
        self.answer_reads();
        // A commit the leader's own fsync completed. Only a leader's messages may leave without
        // a Ready (raft-rs holds a follower's until they are persisted).
        self.tell_forwarders();
        if self.node.raft.state == StateRole::Leader && !self.node.raft.msgs.is_empty() {
            let msgs = std::mem::take(&mut self.node.raft.msgs);
            self.send(msgs);
        }
        Ok(())
    }

    /// Sends each follower whose forwarded proposal is now committed an append carrying the
    /// commit index: it answers its client once it applies, and waiting for the next append or
    /// heartbeat would cost a lone write up to a heartbeat interval. Sending it to every follower
    /// (what raft-rs does without `skip_bcast_commit`) cost the others a round trip each.
    fn tell_forwarders(&mut self) {
        if self.forwarded.is_empty() {
            return;
        }
        if self.node.raft.state != StateRole::Leader {
            self.forwarded.clear();
            return;
        }
        let committed = self.node.raft.raft_log.committed;
        let mut due = Vec::new();
        self.forwarded.retain(|&(peer, last)| {
            let now = last <= committed;
            if now {
                due.push(peer);
            }
            !now
        });
        for peer in due {
            if self.node.raft.prs().get(peer).is_some() {
                self.node.raft.send_append(peer);
            }
        }
    }

    /// As leader, once its log is durable through `durable`: tells each follower whose forwarded
    /// proposal is in it (`leader_ack`), instead of telling it of the commit later.
    fn announce_durable(&mut self, durable: u64) {
        let (raft, acks) = (&self.node.raft, &mut self.leader_acks);
        let mut notices = Vec::new();
        self.forwarded.retain(|&(peer, last)| {
            let notice = (last <= durable)
                .then(|| acks.announce(raft, peer, durable))
                .flatten();
            let told = notice.is_some();
            notices.extend(notice);
            !told
        });
        self.send(notices);
    }

    /// As follower, with its log durable through `durable`: commits what the leader's log also
    /// has durable (`leader_ack`).
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

    /// Takes committed entries for `maybe_apply`. The commit index goes to the log at once (kept
    /// in memory: at start the stored applied index raises the WAL's commit index).
    fn collect(&mut self, entries: Vec<Entry>, commit: Option<u64>) {
        if let Some(commit) = commit {
            self.node.mut_store().set_commit(commit);
        }
        if !entries.is_empty() {
            self.unapplied_since.get_or_insert_with(Instant::now);
            self.unapplied.extend(entries);
        }
    }

    /// Whether collected entries must be applied now (see `FOLLOWER_APPLY_BATCH`).
    fn must_apply(&self) -> bool {
        !self.unapplied.is_empty()
            && (self.node.raft.state != StateRole::Follower
                || self.unapplied.len() >= FOLLOWER_APPLY_BATCH
                || self
                    .unapplied_since
                    .is_some_and(|t| t.elapsed() >= FOLLOWER_APPLY_DELAY)
                || !self.waiters.is_empty()
                || self
                    .reads_applying
                    .iter()
                    .any(|(index, _)| *index > self.applied)
                || self
                    .unapplied
                    .iter()
                    .any(|e| e.get_entry_type() != EntryType::EntryNormal))
    }

    fn maybe_apply(&mut self) -> Result<()> {
        if self.must_apply() {
            self.apply_collected()?;
            self.answer_reads();
        }
        Ok(())
    }

    /// Applies every collected entry and tells raft how far that got.
    fn apply_collected(&mut self) -> Result<()> {
        let entries = std::mem::take(&mut self.unapplied);
        self.unapplied_since = None;
        self.apply(entries)?;
        self.node.advance_apply_to(self.applied);
        Ok(())
    }

    /// While new entries replicate, looks up what applying their puts will need.
    fn prefetch(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let state = match self.mvcc.as_mut() {
            Some(state) => state,
            None => self.mvcc.insert(MvccState::load(&self.db)?),
        };
        for entry in entries {
            if entry.get_entry_type() == EntryType::EntryNormal
                && let Some(key) = codec::put_key(&entry.data)
            {
                state.prefetch(&self.db, &key)?;
            }
        }
        Ok(())
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_applying)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_applying = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    /// Applies committed entries, in one batch with the applied index.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let db = self.db.clone();
        let state = match self.mvcc.take() {
            Some(state) => state,
            None => MvccState::load(&db)?,
        };
        let mut applier = Applier::resume(&db, state);
        let mut replies = Vec::new();
        let mut members_changed = false;
        for entry in &entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    match codec::decode_proposal(&entry.data) {
                        Ok((id, proposal)) => {
                            if let Proposal::Publish(m) = &proposal {
                                members_changed |= self.apply_publish(&mut applier, m);
                            }
                            let result = apply_proposal(&mut applier, proposal);
                            if let Some(waiter) = self.waiters.remove(&id).filter(|_| id != 0) {
                                replies.push((waiter, result));
                            }
                        }
                        // Applied by every member alike, so skipping it keeps them equal.
                        Err(e) => error!(index = entry.index, "skipping an undecodable entry: {e}"),
                    }
                }
                EntryType::EntryNormal => {} // a new leader's empty entry
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    if let Err(e) = cc.merge_from_bytes(&entry.data) {
                        error!(
                            index = entry.index,
                            "skipping an undecodable conf change: {e}"
                        );
                    } else {
                        let cs = self.node.apply_conf_change(&cc)?;
                        self.node.mut_store().set_conf_state(cs, applier.batch());
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    if let Err(e) = cc.merge_from_bytes(&entry.data) {
                        error!(
                            index = entry.index,
                            "skipping an undecodable conf change: {e}"
                        );
                    } else {
                        let cs = self.node.apply_conf_change(&cc)?;
                        self.node.mut_store().set_conf_state(cs, applier.batch());
                    }
                }
            }
            applier.set_applied(entry.index);
        }
        let revision = applier.revision();
        // The client gateway's answers leave before RocksDB gets the batch: the entries are
        // committed (a crash applies them again from the log) and the answers are computed, and
        // the RocksDB write then overlaps the answer's way out. Reads on the IPC thread wait
        // until `applied` catches up with `answered`, so none misses a write already answered.
        let mut local = Vec::new();
        let mut streamed = false;
        for (waiter, result) in replies {
            match waiter {
                Waiter::Stream {
                    gateway_id,
                    generation,
                    ..
                } => {
                    if !streamed {
                        self.shared.answered.store(last, Ordering::Release);
                        streamed = true;
                    }
                    self.answer_stream(gateway_id, generation, &result);
                }
                Waiter::Local(reply) => local.push((reply, result)),
            }
        }
        if streamed {
            self.flush_write_stream();
        }
        if let Some(delay) = self.apply_write_delay {
            std::thread::sleep(delay);
        }
        applier.flush()?;
        self.mvcc = Some(applier.into_state());
        self.shared
            .proposals_committed
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.applied = last;
        self.shared.revision.store(revision, Ordering::Release);
        self.shared.applied.store(last, Ordering::Release);
        if members_changed {
            self.reload_members()?;
        }
        for (reply, result) in local {
            let _ = reply.send(result);
        }
        Ok(())
    }

    /// Records a member's published name and client URLs; true when the table changed.
    fn apply_publish(&mut self, applier: &mut Applier, m: &MemberInfo) -> bool {
        let members = self.shared.members();
        let Some(known) = members.iter().find(|k| k.id == m.id) else {
            warn!(
                id = format!("{:x}", m.id),
                "ignoring attributes of an unknown member"
            );
            return false;
        };
        if m.id == self.me.id {
            self.published = true;
        }
        let updated = MemberInfo {
            name: m.name.clone(),
            client_urls: m.client_urls.clone(),
            ..known.clone()
        };
        if &updated == known {
            return false;
        }
        applier
            .batch()
            .put_member(m.id, &codec::encode_member(&updated));
        true
    }

    fn reload_members(&self) -> Result<()> {
        let members = crate::cluster::load_members(&self.db)?;
        if let Ok(mut m) = self.shared.members.lock() {
            *m = members;
        }
        Ok(())
    }

    fn publish_status(&self) {
        let s = &self.shared;
        s.term.store(self.node.raft.term, Ordering::Relaxed);
        s.leader.store(self.node.raft.leader_id, Ordering::Relaxed);
        s.commit
            .store(self.node.raft.raft_log.committed, Ordering::Relaxed);
        s.last_index
            .store(self.node.store().last_index_cached(), Ordering::Relaxed);
    }
}

fn apply_proposal(applier: &mut Applier, p: Proposal) -> Result<Applied, EtcdError> {
    Ok(match p {
        Proposal::Put(r) => Applied::Put(applier.put(&r)?),
        Proposal::DeleteRange(r) => Applied::DeleteRange(applier.delete_range(&r)?),
        Proposal::Txn(r) => Applied::Txn(applier.txn(&r)?),
        Proposal::Compaction(r) => Applied::Compaction {
            revision: applier.compact(&r)?,
        },
        Proposal::Publish(_) => Applied::Published,
    })
}

/// A read-index context: this member's ID, then its counter. A follower's read index travels to
/// the leader with its context, and raft-rs keys the leader's pending reads by context, so it must
/// be unique across members (a bare counter collided with the leader's own and the read was
/// dropped).
fn read_context_bytes(me: u64, counter: u64) -> Vec<u8> {
    [me.to_be_bytes(), counter.to_be_bytes()].concat()
}

/// The counter of a read-index context this member made (member ID ++ counter), if it made it.
fn read_context(ctx: &[u8], me: u64) -> Option<u64> {
    let (member, counter) = ctx.split_at_checked(8)?;
    (member == me.to_be_bytes() && counter.len() == 8).then(|| crate::storage::be_u64(counter))
}

/// Whether a raft message carries a snapshot (the peer gateway puts those on their own stream).
pub fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
}

#[cfg(test)]
mod tests {
    use super::{FSYNC_BUCKETS, Shared, fsync_bucket, read_context, read_context_bytes};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn fsyncs_fall_in_etcds_buckets() {
        assert_eq!(fsync_bucket(Duration::from_micros(80)), 0);
        assert_eq!(fsync_bucket(Duration::from_millis(1)), 0);
        assert_eq!(fsync_bucket(Duration::from_micros(1001)), 1);
        assert_eq!(fsync_bucket(Duration::from_millis(3)), 2);
        assert_eq!(fsync_bucket(Duration::from_millis(8192)), FSYNC_BUCKETS - 1);
        assert_eq!(fsync_bucket(Duration::from_secs(9)), FSYNC_BUCKETS);
        let shared = Shared::default();
        shared.record_fsync(Duration::from_millis(3));
        shared.record_fsync(Duration::from_millis(4));
        assert_eq!(shared.fsync_buckets[2].load(Ordering::Relaxed), 2);
        assert_eq!(shared.fsyncs.load(Ordering::Relaxed), 2);
        assert_eq!(shared.fsync_nanos.load(Ordering::Relaxed), 7_000_000);
    }

    #[test]
    fn read_contexts_are_told_apart_by_member() {
        let ctx = read_context_bytes(7, 42);
        assert_eq!(read_context(&ctx, 7), Some(42));
        assert_eq!(read_context(&ctx, 8), None);
        assert_eq!(read_context(&ctx[..12], 7), None);
        assert_eq!(read_context(&[], 7), None);
    }
}
