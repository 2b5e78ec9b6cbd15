//! A deterministic simulation of several raft cores exchanging messages in memory, and the
//! core's policy tests built on it.
//!
//! Each member (three, or five for every fourth seed) is a [`Core`] over a [`MemLog`] and a
//! [`MemMachine`]; the network is a list of
//! messages in flight that a seeded random schedule delivers out of order, drops, duplicates,
//! cuts (both ways or one way) and slows, while members crash and restart from what they had
//! persisted. After every step the checker asserts raft's safety:
//! - at most one leader per term;
//! - every member applies the same entry at each index, and a committed entry is never lost or
//!   overwritten in a log that held it;
//! - an entry is applied only once a quorum of logs holds it (the early commit of
//!   [`super::forwarding`] included);
//! - a linearizable read sees every write answered before it started.
//!
//! `SIM_SEEDS=N` runs seeds `0..N` (default [`DEFAULT_SEEDS`]); `SIM_SEED=n` replays one seed and
//! prints its trace. A failing seed prints its trace too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, RawNode, StateRole, Storage};
use tokio::sync::oneshot;

use super::apply::{ApplyHooks, StateMachine};
use super::command::Applied;
use super::core::{Core, Effects, FOLLOWER_APPLY_BATCH, FOLLOWER_APPLY_DELAY};
use super::log::LogStore;
use super::reads::READ_INDEX_RETRY;
use super::shared::Shared;
use crate::error::Result;
use crate::etcd_error::EtcdError;
use crate::mvcc::PutResponse;

mod policies;

const DEFAULT_SEEDS: u64 = 2000;
const TICK: Duration = Duration::from_millis(10);
const ELECTION_TICKS: usize = 10;

// ----------------------------------------------------------------------------- in-memory parts

/// A log in memory, as durable as [`crate::storage::RaftLog`]: entries and a new term or vote
/// are durable once persisted; a commit index alone is kept in memory only.
#[derive(Clone)]
pub(crate) struct MemLog {
    store: MemStorage,
    /// Index and term of the compaction point, as [`crate::storage::RaftLog`] records them
    /// (shared by the clones a restart makes, like the store).
    compacted: Arc<std::sync::Mutex<(u64, u64)>>,
}

impl MemLog {
    fn new(voters: Vec<u64>) -> MemLog {
        MemLog {
            store: MemStorage::new_with_conf_state((voters, vec![])),
            compacted: Arc::default(),
        }
    }

    fn compacted(&self) -> (u64, u64) {
        self.compacted.lock().map_or((0, 0), |c| *c)
    }

    /// The term of the entry at `index` in this log, if it has one.
    fn term_at(&self, index: u64) -> Option<u64> {
        (index >= 1 && index <= self.last_index_cached())
            .then(|| self.store.term(index).ok())
            .flatten()
    }
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.store.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.store.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (index, term) = self.compacted();
        if index > 0 && idx == index {
            return Ok(term);
        }
        self.store.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.store.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.store.last_index()
    }
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<raft::eraftpb::Snapshot> {
        // The state at the compaction point: every applied entry up to it, which the sender's
        // machine keeps (see `Cluster::transfer_snapshot`). The member prepares an image in the
        // background and answers "unavailable" first; one ask is enough here.
        let (index, term) = self.compacted();
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = raft::eraftpb::Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.store.initial_state()?.conf_state);
        Ok(snapshot)
    }
}

impl LogStore for MemLog {
    fn append(&mut self, entries: &[Entry]) {
        self.store.wl().append(entries).expect("contiguous append");
    }
    fn set_hard_state(&mut self, hs: &HardState) {
        let mut w = self.store.wl();
        let old = w.hard_state().clone();
        if hs.term != old.term || hs.vote != old.vote {
            w.set_hardstate(hs.clone());
        }
    }
    fn set_commit(&mut self, _commit: u64) {}
    fn record_commit(&mut self) -> Result<bool> {
        Ok(false)
    }
    fn begin_persist(&mut self, _sync: bool) -> Result<()> {
        Ok(())
    }
    fn start_writeback(&mut self) {}
    fn finish_persist(&mut self) -> Result<bool> {
        Ok(true)
    }
    fn set_conf_state(&mut self, cs: &ConfState) {
        self.store.wl().set_conf_state(cs.clone());
    }
    fn last_index_cached(&self) -> u64 {
        self.store.last_index().unwrap_or(0)
    }
    fn compact(&mut self, point: &raft::eraftpb::SnapshotMetadata) -> Result<()> {
        self.store
            .wl()
            .compact(point.index + 1)
            .map_err(crate::error::Error::Raft)?;
        if let Ok(mut c) = self.compacted.lock() {
            *c = (point.index, point.term);
        }
        Ok(())
    }
}

/// A simulated request: a write of `value` (unique), encoded as the entry's data.
fn write_data(id: u64, value: u64) -> Vec<u8> {
    [id.to_be_bytes(), value.to_be_bytes()].concat()
}

fn read_write(data: &[u8]) -> Option<(u64, u64)> {
    let id = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    let value = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
    Some((id, value))
}

/// One apply as the machine saw it, in order, for the policy tests.
#[derive(Debug, Clone, PartialEq)]
enum MachineEvent {
    Written { last: u64 },
}

/// A state machine in memory whose applied state is durable once an apply returns.
#[derive(Default, Clone)]
pub(crate) struct MemMachine {
    applied: u64,
    /// Every applied entry: index → (term, data).
    entries: BTreeMap<u64, (u64, Vec<u8>)>,
    values: HashSet<u64>,
    events: Vec<MachineEvent>,
    /// A compaction point, durable at once.
    compaction: Option<raft::eraftpb::SnapshotMetadata>,
}

impl StateMachine for MemMachine {
    fn prefetch(&mut self, _entries: &[Entry]) -> Result<()> {
        Ok(())
    }

    fn apply(&mut self, entries: &[Entry], hooks: &mut dyn ApplyHooks) -> Result<i64> {
        let mut staged = Vec::new();
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if let Some((id, value)) = read_write(&e.data) {
                        staged.push(value);
                        let result = Ok(Applied::Put(PutResponse {
                            revision: e.index as i64,
                            prev_kv: None,
                        }));
                        hooks.applied(id, result);
                    }
                }
                _ => {
                    hooks.conf_change(e)?;
                }
            }
        }
        hooks.before_write();
        for e in entries {
            self.entries.insert(e.index, (e.term, e.data.to_vec()));
        }
        self.values.extend(staged);
        if let Some(last) = entries.last() {
            self.applied = last.index;
            self.events.push(MachineEvent::Written { last: last.index });
        }
        Ok(self.applied as i64)
    }

    fn begin_compaction(&mut self, point: raft::eraftpb::SnapshotMetadata) -> Result<()> {
        self.compaction = Some(point);
        Ok(())
    }

    fn compaction_durable(&mut self) -> Result<Option<raft::eraftpb::SnapshotMetadata>> {
        Ok(self.compaction.take())
    }
}

/// What a simulated member's core asked to leave it.
#[derive(Default)]
pub(crate) struct Outbox {
    msgs: Vec<Message>,
    answers: Vec<(u64, std::result::Result<i64, String>)>,
    flushes: usize,
    now: Option<Instant>,
    /// The order of answers and flushes, for the policy tests.
    log: Vec<String>,
}

impl Effects for Outbox {
    fn send(&mut self, msgs: Vec<Message>, _role: StateRole) {
        self.msgs.extend(msgs);
    }
    fn answer_stream(
        &mut self,
        gateway_id: u64,
        _term: u64,
        result: &std::result::Result<Applied, EtcdError>,
    ) {
        let r = match result {
            Ok(Applied::Put(p)) => Ok(p.revision),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.message.clone()),
        };
        self.log.push(format!("answer {gateway_id}"));
        self.answers.push((gateway_id, r));
    }
    fn flush_answers(&mut self) {
        self.flushes += 1;
        self.log.push("flush".into());
    }
    fn clock(&self) -> Instant {
        self.now.unwrap_or_else(Instant::now)
    }
}

// ----------------------------------------------------------------------------- a cluster

struct Member {
    id: u64,
    core: Option<Core<MemLog>>,
    log: MemLog,
    machine: MemMachine,
    out: Outbox,
    shared: Arc<Shared>,
    next_tick: Instant,
    /// How many times it started: a restart's read contexts differ from the last run's.
    incarnation: u64,
    /// Log compaction, when a test turns it on.
    compaction: Option<super::core::LogCompaction>,
}

/// The member's own raft configuration, but for one thing: raft-rs randomises election timeouts
/// with a generator of its own, which would make a seed replay differently, so the schedule's
/// tick jitter randomises them instead.
fn config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        min_election_tick: ELECTION_TICKS,
        max_election_tick: ELECTION_TICKS + 1,
        ..super::config(id, applied, ELECTION_TICKS)
    }
}

impl Member {
    fn start(&mut self, now: Instant) {
        // As at boot: the applied index raises the commit index, which is not always durable.
        {
            let mut w = self.log.store.wl();
            let mut hs = w.hard_state().clone();
            hs.commit = hs.commit.max(self.machine.applied);
            w.set_hardstate(hs);
        }
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(
            &config(self.id, self.machine.applied),
            self.log.clone(),
            &logger,
        )
        .expect("raft node");
        self.shared = Arc::new(Shared::default());
        self.incarnation += 1;
        let mut core = Core::new(
            node,
            self.shared.clone(),
            self.machine.applied,
            (Vec::new(), true),
            self.incarnation << 32,
            Duration::from_secs(5),
        );
        if let Some(policy) = self.compaction {
            core.set_log_compaction(policy);
        }
        core.campaign_if_alone();
        self.core = Some(core);
        self.next_tick = now + TICK;
    }

    /// What the runtime's loop does after events: a read index, the Ready, the applies.
    fn pump(&mut self, now: Instant) -> Result<()> {
        let Some(core) = self.core.as_mut() else {
            return Ok(());
        };
        self.out.now = Some(now);
        core.send_read_index(now);
        for _ in 0..8 {
            if !core.has_ready() {
                break;
            }
            core.on_ready(now, &mut self.out, &mut self.machine)?;
        }
        core.maybe_apply(now, &mut self.out, &mut self.machine)?;
        core.poll_compaction(&mut self.machine)?;
        core.publish_status();
        Ok(())
    }

    fn core(&mut self) -> &mut Core<MemLog> {
        self.core.as_mut().expect("a running member")
    }
}

struct Cluster {
    members: Vec<Member>,
    now: Instant,
    /// Messages in flight, in the order they were sent.
    net: Vec<Message>,
    /// Raft snapshots transferred (installed or not needed), and failed.
    snapshots: (usize, usize),
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let now = Instant::now();
        let voters: Vec<u64> = (1..=n).collect();
        let mut members: Vec<Member> = voters
            .iter()
            .map(|&id| Member {
                id,
                core: None,
                log: MemLog::new(voters.clone()),
                machine: MemMachine::default(),
                out: Outbox::default(),
                shared: Arc::new(Shared::default()),
                next_tick: now,
                incarnation: 0,
                compaction: None,
            })
            .collect();
        for m in &mut members {
            m.start(now);
            // A new cluster: every member starts from an empty data dir.
            m.core().set_started_empty(true);
        }
        Cluster {
            members,
            now,
            net: Vec::new(),
            snapshots: (0, 0),
        }
    }

    fn member(&mut self, id: u64) -> &mut Member {
        &mut self.members[id as usize - 1]
    }

    /// Pumps `id` and moves what it sent onto the network.
    fn pump(&mut self, id: u64) {
        let now = self.now;
        let m = self.member(id);
        m.pump(now).expect("in-memory storage does not fail");
        let sent = std::mem::take(&mut m.out.msgs);
        self.net.extend(sent);
    }

    fn pump_all(&mut self) {
        for id in 1..=self.members.len() as u64 {
            self.pump(id);
        }
    }

    fn deliver(&mut self, i: usize) {
        let m = self.net.remove(i);
        let to = m.to;
        // To a member this cluster does not run (a learner only added to the configuration).
        if to == 0 || to as usize > self.members.len() {
            return;
        }
        if m.get_msg_type() == MessageType::MsgSnapshot {
            self.transfer_snapshot(m);
            return;
        }
        if let Some(core) = self.member(to).core.as_mut() {
            core.step(m);
        }
        self.pump(to);
    }

    /// A raft snapshot as the peer gateways and consensus carry it: the image beside the message,
    /// installed by the receiver out of raft's sight ([`Core::snapshot_wanted`], then the swap and
    /// a restart in place), and the outcome reported to the sender's raft.
    fn transfer_snapshot(&mut self, m: Message) {
        let (from, to) = (m.from, m.to);
        let point = m.get_snapshot().get_metadata().clone();
        let now = self.now;
        let wanted = self
            .member(to)
            .core
            .as_ref()
            .map(|c| c.snapshot_wanted(&point));
        let ok = match wanted {
            // The receiver is down: the stream fails.
            None => false,
            Some(None) => true,
            Some(Some(hs)) => {
                let image: BTreeMap<u64, (u64, Vec<u8>)> = self
                    .member(from)
                    .machine
                    .entries
                    .range(..=point.index)
                    .map(|(i, e)| (*i, e.clone()))
                    .collect();
                let receiver = self.member(to);
                receiver.machine = MemMachine {
                    applied: point.index,
                    values: image
                        .values()
                        .filter_map(|(_, d)| read_write(d).map(|(_, v)| v))
                        .collect(),
                    entries: image,
                    ..Default::default()
                };
                let log = MemLog::new(Vec::new());
                {
                    let mut w = log.store.wl();
                    let mut snapshot = raft::eraftpb::Snapshot::default();
                    snapshot.set_metadata(point.clone());
                    w.apply_snapshot(snapshot)
                        .expect("a new log takes any snapshot");
                    w.set_hardstate(hs);
                }
                if let Ok(mut c) = log.compacted.lock() {
                    *c = (point.index, point.term);
                }
                receiver.log = log;
                receiver.core = None;
                receiver.start(now);
                true
            }
        };
        if ok {
            self.snapshots.0 += 1;
        } else {
            self.snapshots.1 += 1;
        }
        if let Some(core) = self.member(from).core.as_mut() {
            core.report_snapshot(to, ok);
        }
        self.pump(from);
        self.pump(to);
    }

    /// Delivers the first message in flight of `kind`.
    fn deliver_first(&mut self, kind: MessageType) {
        let i = self
            .net
            .iter()
            .position(|m| m.get_msg_type() == kind)
            .unwrap_or_else(|| panic!("no {kind:?} in flight"));
        self.deliver(i);
    }

    /// Drops every message in flight but returns those for member `id`.
    fn take_for(&mut self, id: u64) -> Vec<Message> {
        std::mem::take(&mut self.net)
            .into_iter()
            .filter(|m| m.to == id)
            .collect()
    }

    /// Steps `msgs` into member `id`, with the runtime's pump after each.
    fn step_into(&mut self, id: u64, msgs: Vec<Message>) {
        for m in msgs {
            self.member(id).core().step(m);
            self.pump(id);
        }
    }

    /// Delivers every message in flight, in order, until none is left.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if self.net.is_empty() {
                return;
            }
            self.deliver(0);
        }
        panic!("messages never stopped");
    }

    fn tick(&mut self, id: u64) {
        let now = self.now;
        let m = self.member(id);
        if let Some(core) = m.core.as_mut() {
            core.tick(now, &mut m.out);
        }
        self.pump(id);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Ticks every member until `id` leads, with everything delivered in order.
    fn elect(&mut self, id: u64) {
        for _ in 0..4 * ELECTION_TICKS {
            if self.member(id).core().role() == StateRole::Leader {
                self.settle();
                return;
            }
            self.advance(TICK);
            self.tick(id);
            self.settle();
        }
        panic!("{id} never became leader");
    }
}

// ----------------------------------------------------------------------------- the simulation

/// splitmix64: a seeded generator of our own, so a seed replays the same schedule everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A write or read a simulated client has in flight.
enum Pending {
    Write {
        member: u64,
        value: u64,
        rx: oneshot::Receiver<std::result::Result<Applied, EtcdError>>,
    },
    Read {
        member: u64,
        /// Writes answered before the read started.
        must_see: Vec<u64>,
        rx: oneshot::Receiver<std::result::Result<(), EtcdError>>,
    },
}

struct Sim {
    c: Cluster,
    rng: Rng,
    trace: Vec<String>,
    /// Cut links (from, to).
    cut: HashSet<(u64, u64)>,
    slow: Option<u64>,
    pending: Vec<Pending>,
    acked: Vec<u64>,
    next_value: u64,
    leaders: HashMap<u64, u64>,
    /// Committed entries: index → (term, data, the members whose logs held it then).
    committed: BTreeMap<u64, (u64, Vec<u8>, Vec<u64>)>,
    /// How far each member's applies were checked.
    checked: HashMap<u64, u64>,
    writes_acked: usize,
    reads_ok: usize,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        // Every fourth seed runs five members, where the leader and one follower are no quorum.
        let members = if seed % 4 == 3 { 5 } else { 3 };
        let mut c = Cluster::new(members);
        // Every other seed compacts the log often, so that members cut off, slow or down fall
        // behind it and catch up by raft snapshot.
        if seed % 2 == 1 {
            let policy = super::core::LogCompaction {
                snapshot_count: 10 + seed % 30,
                catchup_entries: 2 + seed % 10,
            };
            for m in &mut c.members {
                m.compaction = Some(policy);
                m.core().set_log_compaction(policy);
            }
        }
        Sim {
            c,
            rng: Rng(seed),
            trace: Vec::new(),
            cut: HashSet::new(),
            slow: None,
            pending: Vec::new(),
            acked: Vec::new(),
            next_value: 1,
            leaders: HashMap::new(),
            committed: BTreeMap::new(),
            checked: HashMap::new(),
            writes_acked: 0,
            reads_ok: 0,
        }
    }

    fn n(&self) -> u64 {
        self.c.members.len() as u64
    }

    fn live(&self) -> Vec<u64> {
        self.c
            .members
            .iter()
            .filter(|m| m.core.is_some())
            .map(|m| m.id)
            .collect()
    }

    fn step(&mut self) -> std::result::Result<(), String> {
        let roll = self.rng.below(100);
        let n = self.n();
        match roll {
            0..=49 if !self.c.net.is_empty() => {
                let i = if self.rng.chance(70) {
                    0
                } else {
                    self.rng.below(self.c.net.len() as u64) as usize
                };
                let m = &self.c.net[i];
                let (from, to) = (m.from, m.to);
                let kind = match m.get_msg_type() {
                    t @ (MessageType::MsgReadIndex | MessageType::MsgReadIndexResp) => format!(
                        "{t:?} ctx {:?} index {} term {}",
                        m.entries.first().map(|e| e.data.to_vec()),
                        m.index,
                        m.term
                    ),
                    MessageType::MsgAppend => format!(
                        "MsgAppend term {} entries {:?} commit {}",
                        m.term,
                        m.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
                        m.commit
                    ),
                    t => format!("{t:?}"),
                };
                if self.cut.contains(&(from, to)) || self.rng.chance(3) {
                    let lost = self.c.net.remove(i);
                    self.trace.push(format!("drop {kind} {from}->{to}"));
                    // A snapshot's stream that fails is reported by the sender's gateway.
                    if lost.get_msg_type() == MessageType::MsgSnapshot
                        && let Some(core) = self.c.member(from).core.as_mut()
                    {
                        core.report_snapshot(to, false);
                        self.c.pump(from);
                    }
                } else if self.slow.is_some_and(|s| s == from || s == to) && self.rng.chance(60) {
                    // A slow member's messages wait.
                } else {
                    if self.rng.chance(2) {
                        let copy = self.c.net[i].clone();
                        self.c.net.push(copy);
                        self.trace.push(format!("duplicate {kind} {from}->{to}"));
                    }
                    self.trace.push(format!("deliver {kind} {from}->{to}"));
                    self.c.deliver(i);
                }
            }
            0..=64 => {
                let by = Duration::from_millis(1 + self.rng.below(4));
                self.c.advance(by);
                let now = self.c.now;
                for id in 1..=n {
                    let m = self.c.member(id);
                    if m.core.is_some() && now >= m.next_tick {
                        m.next_tick = now + TICK + Duration::from_millis(self.rng.below(6));
                        self.c.tick(id);
                    } else {
                        self.c.pump(id);
                    }
                }
            }
            65..=79 => {
                let live = self.live();
                if let Some(&member) = live.get(self.rng.below(live.len() as u64) as usize) {
                    let value = self.next_value;
                    self.next_value += 1;
                    let (tx, rx) = oneshot::channel();
                    self.c
                        .member(member)
                        .core()
                        .propose_local(value, write_data(value, value), tx);
                    self.trace.push(format!(
                        "write {value} at {member} (leader? {:?}, term {})",
                        self.c.member(member).core().role(),
                        self.c.member(member).core().term()
                    ));
                    self.pending.push(Pending::Write { member, value, rx });
                    self.c.pump(member);
                }
            }
            80..=89 => {
                let live = self.live();
                if let Some(&member) = live.get(self.rng.below(live.len() as u64) as usize) {
                    let (tx, rx) = oneshot::channel();
                    self.c.member(member).core().read_index(tx);
                    self.trace.push(format!("read at {member}"));
                    self.pending.push(Pending::Read {
                        member,
                        must_see: self.acked.clone(),
                        rx,
                    });
                    self.c.pump(member);
                }
            }
            90..=92 => {
                let id = 1 + self.rng.below(n);
                let m = self.c.member(id);
                if m.core.is_some() {
                    if self.live().len() as u64 == n {
                        let m = self.c.member(id);
                        m.core = None;
                        m.out = Outbox::default();
                        let (lost, kept) = std::mem::take(&mut self.c.net)
                            .into_iter()
                            .partition::<Vec<_>, _>(|msg| msg.to == id);
                        self.c.net = kept;
                        self.trace.push(format!("crash {id}"));
                        // A snapshot's stream to it fails, and its sender's gateway says so.
                        for msg in lost
                            .iter()
                            .filter(|msg| msg.get_msg_type() == MessageType::MsgSnapshot)
                        {
                            if let Some(core) = self.c.member(msg.from).core.as_mut() {
                                core.report_snapshot(id, false);
                                self.c.pump(msg.from);
                            }
                        }
                    }
                } else {
                    let now = self.c.now;
                    self.c.member(id).start(now);
                    self.trace.push(format!("restart {id}"));
                    self.c.pump(id);
                }
            }
            93..=95 => {
                if self.cut.is_empty() {
                    let id = 1 + self.rng.below(n);
                    let both = self.rng.chance(50);
                    for other in (1..=n).filter(|&o| o != id) {
                        self.cut.insert((id, other));
                        if both {
                            self.cut.insert((other, id));
                        }
                    }
                    self.trace.push(format!(
                        "cut {id} off{}",
                        if both { "" } else { " one way (its sends)" }
                    ));
                } else {
                    self.cut.clear();
                    self.trace.push("heal".into());
                }
            }
            96 => {
                self.slow = match self.slow {
                    Some(_) => None,
                    None => Some(1 + self.rng.below(n)),
                };
                self.trace.push(format!("slow member {:?}", self.slow));
            }
            _ => {}
        }
        self.check()
    }

    fn check(&mut self) -> std::result::Result<(), String> {
        // Every message here comes from a correct member: none may be refused as malformed.
        for m in &self.c.members {
            let refused = m
                .shared
                .peer_messages_refused
                .load(std::sync::atomic::Ordering::Relaxed);
            if refused > 0 {
                return Err(format!(
                    "member {} refused {refused} messages of correct peers",
                    m.id
                ));
            }
        }
        // No member of a new cluster is taken for one that lost its data.
        for m in &self.c.members {
            if let Some(leader) = m.core.as_ref().and_then(|c| c.lost_data_to()) {
                return Err(format!(
                    "member {} was taken for a wiped member by {leader}'s heartbeat",
                    m.id
                ));
            }
        }
        // At most one leader per term.
        for m in &self.c.members {
            if let Some(core) = &m.core
                && core.role() == StateRole::Leader
            {
                let term = core.term();
                if let Some(&other) = self.leaders.get(&term)
                    && other != m.id
                {
                    return Err(format!("two leaders in term {term}: {other} and {}", m.id));
                }
                self.leaders.insert(term, m.id);
            }
        }
        // Every member applies the same entries, each held by a quorum when first applied.
        let quorum = self.c.members.len() / 2 + 1;
        for m in &self.c.members {
            let from = self.checked.get(&m.id).copied().unwrap_or(0);
            for (&index, (term, data)) in m.machine.entries.range(from + 1..) {
                match self.committed.get(&index) {
                    Some((t, d, _)) if (t, d) != (term, data) => {
                        return Err(format!(
                            "member {} applied ({index}, term {term}) where another applied term {t}",
                            m.id
                        ));
                    }
                    Some(_) => {}
                    None => {
                        let holders: Vec<u64> = self
                            .c
                            .members
                            .iter()
                            .filter(|h| {
                                h.log.term_at(index) == Some(*term)
                                    || (h.log.compacted().0 >= index
                                        && h.machine.entries.get(&index).map(|e| e.0)
                                            == Some(*term))
                            })
                            .map(|h| h.id)
                            .collect();
                        if holders.len() < quorum {
                            return Err(format!(
                                "member {} applied index {index} (term {term}) held only by {holders:?}",
                                m.id
                            ));
                        }
                        self.committed.insert(index, (*term, data.clone(), holders));
                    }
                }
            }
            self.checked.insert(m.id, m.machine.applied);
        }
        // A committed entry stays in every log that held it, or in its state machine once the
        // log was compacted past it (or a snapshot replaced the log).
        for (&index, (term, _, holders)) in &self.committed {
            for &h in holders {
                let m = &self.c.members[h as usize - 1];
                if m.log.compacted().0 >= index {
                    let applied = m.machine.entries.get(&index).map(|(t, _)| *t);
                    if applied != Some(*term) {
                        return Err(format!(
                            "committed entry {index} (term {term}) compacted from member {h}'s                              log but not in its state machine (now {applied:?})"
                        ));
                    }
                    continue;
                }
                let got = m.log.term_at(index);
                if got != Some(*term) {
                    return Err(format!(
                        "committed entry {index} (term {term}) lost from member {h}'s log (now {got:?})"
                    ));
                }
            }
        }
        // Answers: writes acknowledged, reads that must see them.
        let mut still = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Write {
                    member,
                    value,
                    mut rx,
                } => match rx.try_recv() {
                    Ok(Ok(_)) => {
                        let m = &self.c.members[member as usize - 1];
                        let at = m
                            .machine
                            .entries
                            .iter()
                            .find(|(_, (_, d))| read_write(d).is_some_and(|(_, v)| v == value))
                            .map(|(i, (t, _))| (*i, *t));
                        self.trace
                            .push(format!("write {value} acknowledged by {member} at {at:?}"));
                        self.acked.push(value);
                        self.writes_acked += 1;
                    }
                    Ok(Err(_)) => {}
                    Err(oneshot::error::TryRecvError::Empty) => {
                        if self.c.members[member as usize - 1].core.is_some() {
                            still.push(Pending::Write { member, value, rx });
                        }
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {}
                },
                Pending::Read {
                    member,
                    must_see,
                    mut rx,
                } => match rx.try_recv() {
                    Ok(Ok(())) => {
                        let values = &self.c.members[member as usize - 1].machine.values;
                        if let Some(missed) = must_see.iter().find(|v| !values.contains(v)) {
                            return Err(format!(
                                "a linearizable read at {member} missed write {missed}, acknowledged before it started"
                            ));
                        }
                        let m = &self.c.members[member as usize - 1];
                        self.trace.push(format!(
                            "read at {member} answered (applied {})",
                            m.machine.applied
                        ));
                        self.reads_ok += 1;
                    }
                    Ok(Err(_)) => {}
                    Err(oneshot::error::TryRecvError::Empty) => {
                        if self.c.members[member as usize - 1].core.is_some() {
                            still.push(Pending::Read {
                                member,
                                must_see,
                                rx,
                            });
                        }
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {}
                },
            }
        }
        self.pending = still;
        Ok(())
    }
}

struct Outcome {
    writes_acked: usize,
    reads_ok: usize,
    /// Raft snapshots that reached their member (installed or not needed).
    snapshots: usize,
}

fn run_seed(seed: u64, steps: usize) -> std::result::Result<Outcome, (String, Vec<String>)> {
    let mut sim = Sim::new(seed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..steps {
            sim.step()?;
        }
        // Heal everything and let the cluster finish: the answered writes must all be applied.
        sim.cut.clear();
        sim.slow = None;
        for id in 1..=sim.n() {
            if sim.c.member(id).core.is_none() {
                let now = sim.c.now;
                sim.c.member(id).start(now);
            }
        }
        for _ in 0..400 {
            sim.c.advance(TICK);
            // Not every member every time: with election timeouts all alike (see `config`),
            // members that always tick together split every vote.
            for id in 1..=sim.n() {
                if sim.rng.chance(70) {
                    sim.c.tick(id);
                }
            }
            sim.c.settle();
            sim.check()?;
        }
        Ok(())
    }));
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(panic) => Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into()),
        ),
    };
    if let Some(why) = failure {
        return Err((why, std::mem::take(&mut sim.trace)));
    }
    for m in &sim.c.members {
        if let Some(v) = sim.acked.iter().find(|v| !m.machine.values.contains(v)) {
            let states: Vec<String> = sim
                .c
                .members
                .iter()
                .map(|m| match &m.core {
                    Some(c) => format!(
                        "{}: {:?} term {} commit {} applied {} last {}",
                        m.id,
                        c.role(),
                        c.term(),
                        c.raft().raft_log.committed,
                        m.machine.applied,
                        m.log.last_index_cached()
                    ),
                    None => format!("{}: down", m.id),
                })
                .collect();
            return Err((
                format!(
                    "member {} never applied acknowledged write {v} ({})",
                    m.id,
                    states.join("; ")
                ),
                sim.trace,
            ));
        }
    }
    Ok(Outcome {
        writes_acked: sim.writes_acked,
        reads_ok: sim.reads_ok,
        snapshots: sim.c.snapshots.0,
    })
}

#[test]
fn simulated_clusters_keep_rafts_safety_under_faults() {
    let steps = 1500;
    let seeds: Vec<u64> = match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (0..n).collect()
        }
    };
    let replay = seeds.len() == 1;
    let (mut writes, mut reads, mut snapshots) = (0, 0, 0);
    let n = seeds.len();
    for seed in seeds {
        match run_seed(seed, steps) {
            Ok(o) => {
                writes += o.writes_acked;
                reads += o.reads_ok;
                snapshots += o.snapshots;
                if replay {
                    println!(
                        "seed {seed}: {} writes, {} reads answered, {} raft snapshots",
                        o.writes_acked, o.reads_ok, o.snapshots
                    );
                }
            }
            Err((why, trace)) => {
                for line in &trace {
                    eprintln!("  {line}");
                }
                panic!(
                    "seed {seed} failed: {why} (replay: SIM_SEED={seed} cargo test -p consensus simulated)"
                );
            }
        }
    }
    // The schedule must exercise something: writes and reads get answered across seeds, and
    // members behind the compacted log catch up by snapshot.
    println!("{n} seeds: {writes} writes and {reads} reads answered, {snapshots} raft snapshots");
    assert!(
        writes > 0 && reads > 0,
        "nothing was answered ({writes} writes, {reads} reads)"
    );
    assert!(
        replay || snapshots > 0,
        "no member ever needed a raft snapshot"
    );
}
