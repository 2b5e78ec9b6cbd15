//! The raft thread: the runtime around the sans-IO [`core::Core`]. It waits on the inbox and the
//! two streams with one `poll`, feeds what arrives to the core with the time, and carries out
//! what the core decides against the sockets ([`RaftLoop`]'s [`Effects`]), the WAL
//! ([`crate::storage::RaftLog`]) and RocksDB ([`apply::Machine`]). It is the only writer of the
//! database.
//!
//! Everything that arrives while the previous Ready is being persisted is taken in one go, so
//! many proposals share one fsync. Raft messages to and from other members go through the raft
//! stream ([`crate::streams::peer`]), writes from the client gateway through the write stream
//! ([`crate::streams::write`]), commands from the IPC thread through the [`inbox`].
//!
//! Failpoints (`schema::failpoint`) live here and in [`apply::Machine`], never in the core.

pub(crate) mod apply;
pub(crate) mod command;
pub(crate) mod core;
pub(crate) mod forwarding;
pub(crate) mod inbox;
pub(crate) mod log;
pub(crate) mod logger;
pub(crate) mod reads;
pub(crate) mod shared;
#[cfg(test)]
mod sim;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};
use raft::{RawNode, StateRole};
use tracing::{info, warn};

use self::apply::Machine;
use self::command::{Applied, Command};
use self::core::{Core, Effects};
use self::inbox::Inbox;
use crate::codec::Header;
use crate::error::Result;
use crate::etcd_error::EtcdError;
use crate::storage::RaftLog;
use crate::streams::peer::{Event, PeerStream};
use crate::streams::write::{Incoming, Limits, WriteStream};

pub(crate) use self::shared::Shared;

/// What the raft loop needs besides raft and storage.
pub(crate) struct Settings {
    pub tick: Duration,
    pub cluster_id: u64,
    pub member_id: u64,
    pub limits: Limits,
    /// Where a received raft snapshot is installed.
    pub data_dir: std::path::PathBuf,
}

pub(crate) struct RaftLoop {
    core: Core<RaftLog>,
    machine: Machine,
    io: Io,
    inbox: Inbox,
    /// Commands taken from the inbox, handled before the next Ready.
    pending: VecDeque<Command>,
    events: Vec<Event>,
    incoming: Vec<Incoming>,
    shared: std::sync::Arc<Shared>,
    settings: Settings,
}

/// The sockets the core's output goes to: the runtime's [`Effects`].
struct Io {
    /// The raft stream to the peer gateway; without it outbound messages are dropped (raft
    /// resends), which is what happens while the gateway restarts.
    peer: Option<PeerStream>,
    /// The write stream from the client gateway.
    writes: Option<WriteStream>,
    header: Header,
    /// Test-only failpoint (`schema::failpoint::APPEND_ACK_DELAY`): how long a follower holds
    /// its append acknowledgements, and those held with when they are due.
    append_ack_delay: Option<Duration>,
    held_acks: VecDeque<(Instant, Message)>,
    /// For the counters of what is dropped and refused here.
    shared: std::sync::Arc<Shared>,
}

impl Io {
    fn ship(&mut self, msgs: &[Message]) {
        if msgs.is_empty() {
            return;
        }
        let dropped = match self.peer.as_mut() {
            Some(peer) => match peer.send(msgs) {
                Ok(dropped) => dropped,
                Err(why) => {
                    self.lose_peer_stream(&why);
                    0
                }
            },
            None => msgs.len(),
        };
        self.shared
            .peer_messages_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    fn lose_peer_stream(&mut self, why: &str) {
        warn!(
            "raft stream ended ({why}); raft messages are dropped until the peer gateway connects again"
        );
        if self.peer.take().is_some_and(|p| p.oversized().is_some()) {
            self.shared
                .stream_frames_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lose_write_stream(&mut self, why: &str) {
        warn!("write stream ended ({why}); the client gateway's writes in flight go unanswered");
        if self.writes.take().is_some_and(|w| w.oversized().is_some()) {
            self.shared
                .stream_frames_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends the append acknowledgements the `APPEND_ACK_DELAY` failpoint held that are due.
    fn release_held_acks(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some((_, m)) = self.held_acks.pop_front_if(|(at, _)| *at <= now) {
            due.push(m);
        }
        self.ship(&due);
    }
}

impl Effects for Io {
    fn send(&mut self, mut msgs: Vec<Message>, role: StateRole) {
        if let Some(delay) = self.append_ack_delay
            && role == StateRole::Follower
        {
            let (acks, rest): (Vec<Message>, Vec<Message>) = msgs
                .into_iter()
                .partition(|m| m.get_msg_type() == MessageType::MsgAppendResponse);
            let due = Instant::now() + delay;
            self.held_acks.extend(acks.into_iter().map(|m| (due, m)));
            msgs = rest;
        }
        self.ship(&msgs);
    }

    fn answer_stream(&mut self, gateway_id: u64, term: u64, result: &Result<Applied, EtcdError>) {
        let header = Header {
            raft_term: term,
            ..self.header
        };
        if let Some(writes) = self.writes.as_mut() {
            writes.reply(gateway_id, &header, result);
        }
    }

    fn flush_answers(&mut self) {
        if let Some(writes) = self.writes.as_mut()
            && let Err(why) = writes.flush()
        {
            self.lose_write_stream(&why);
        }
    }

    fn clock(&self) -> Instant {
        Instant::now()
    }
}

impl RaftLoop {
    pub(crate) fn new(
        core: Core<RaftLog>,
        machine: Machine,
        inbox: Inbox,
        shared: std::sync::Arc<Shared>,
        settings: Settings,
    ) -> RaftLoop {
        let io = Io {
            peer: None,
            writes: None,
            header: Header {
                cluster_id: settings.cluster_id,
                member_id: settings.member_id,
                revision: 0,
                raft_term: 0,
            },
            append_ack_delay: schema::failpoint::pause(schema::failpoint::APPEND_ACK_DELAY),
            held_acks: VecDeque::new(),
            shared: shared.clone(),
        };
        RaftLoop {
            core,
            machine,
            io,
            inbox,
            pending: VecDeque::new(),
            events: Vec::new(),
            incoming: Vec::new(),
            shared,
            settings,
        }
    }

    /// Runs until every command sender is gone. A storage error stops the member: raft's state
    /// can no longer be trusted to be on disk.
    pub(crate) fn run(mut self) -> Result<()> {
        if schema::failpoint::set(schema::failpoint::RAFT_THREAD_PANIC) {
            panic!("failpoint {}", schema::failpoint::RAFT_THREAD_PANIC);
        }
        self.core.campaign_if_alone();
        let tick = self.settings.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let mut wake_at = self.core.wake_at(next_tick);
            if let Some((due, _)) = self.io.held_acks.front() {
                wake_at = wake_at.min(*due);
            }
            let wait = wake_at.saturating_duration_since(Instant::now());
            let (peer_ready, writes_ready) = {
                let mut streams = Vec::with_capacity(2);
                if let Some(p) = &self.io.peer {
                    streams.push((p.fd(), p.wants_write()));
                }
                let peer_slot = streams.len().checked_sub(1);
                if let Some(w) = &self.io.writes {
                    streams.push((w.fd(), w.wants_write()));
                }
                let writes_slot = streams
                    .len()
                    .checked_sub(1)
                    .filter(|_| self.io.writes.is_some());
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
                if let Some(leader) = self.core.lost_data_to() {
                    return Err(crate::error::Error::AlreadyBootstrapped { leader });
                }
            }
            if writes_ready || commands {
                self.pump_write_stream();
            }
            let now = Instant::now();
            self.core.send_read_index(now);
            self.io.release_held_acks(now);
            if now >= next_tick {
                next_tick += tick;
                if next_tick < now {
                    next_tick = now + tick;
                }
                self.core.tick(now, &mut self.io);
                self.core.record_commit()?;
            }
            if self.core.has_ready() {
                self.core.on_ready(now, &mut self.io, &mut self.machine)?;
            }
            self.core
                .maybe_apply(Instant::now(), &mut self.io, &mut self.machine)?;
            self.core.poll_compaction(&mut self.machine)?;
            self.core.publish_status();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { id, data, reply } => self.core.propose_local(id, data, reply),
            Command::ReadIndex { reply } => self.core.read_index(reply),
            Command::TransferLeader { target } => self.core.transfer_leader(target),
            Command::PeerStream(sock) => match PeerStream::new(
                sock,
                self.settings.member_id,
                self.settings.limits.max_request_bytes,
            ) {
                Ok(stream) => {
                    self.core.new_peer_stream();
                    if self.io.peer.replace(stream).is_some() {
                        info!("the peer gateway's new raft stream replaces the old one");
                    } else {
                        info!("the peer gateway connected the raft stream");
                    }
                }
                Err(e) => warn!("cannot use the peer gateway's raft stream: {e}"),
            },
            Command::WriteStream(sock) => match WriteStream::new(sock, self.settings.limits) {
                Ok(stream) => {
                    // Waiters of the old stream are never answered on the new one.
                    self.core.new_write_stream();
                    if self.io.writes.replace(stream).is_some() {
                        info!("the client gateway's new write stream replaces the old one");
                    } else {
                        info!("the client gateway connected the write stream");
                    }
                }
                Err(e) => warn!("cannot use the client gateway's write stream: {e}"),
            },
            Command::InstallSnapshot { point, reply } => {
                let result = self.install_snapshot(&point);
                let installed = matches!(result, Ok(true));
                let _ = reply.send(result.map_err(|e| e.to_string()));
                if installed {
                    // The answer reaches the peer gateway (and the leader) first; nothing may
                    // touch the old log or state after the swap.
                    std::thread::sleep(Duration::from_millis(300));
                    // Counted here: the IPC thread's answer may not run before the exec.
                    let received = self
                        .shared
                        .snapshots_received
                        .fetch_add(1, Ordering::Relaxed);
                    crate::boot::restart_in_place(received + 1);
                }
            }
        }
    }

    /// Installs the staged raft snapshot at `point` unless this member has that state already
    /// or its log holds the snapshot's entry (raft would only move its commit index then).
    fn install_snapshot(&mut self, point: &raft::eraftpb::SnapshotMetadata) -> Result<bool> {
        let dir = &self.settings.data_dir;
        let Some(hard_state) = self.core.snapshot_wanted(point) else {
            crate::storage::snap::unstage(dir)?;
            return Ok(false);
        };
        crate::storage::snap::commit(dir, &hard_state)?;
        info!(
            index = point.index,
            term = point.term,
            "installed a raft snapshot; restarting on it"
        );
        Ok(true)
    }

    /// Proposes the writes that arrived on the write stream; refused ones are answered at once.
    fn pump_write_stream(&mut self) {
        let Some(writes) = self.io.writes.as_mut() else {
            return;
        };
        let shared = &self.shared;
        let me = self.settings.member_id;
        let mut incoming = std::mem::take(&mut self.incoming);
        let result = writes.read(&mut || shared.request_id(me), &mut incoming);
        let now = Instant::now();
        for w in incoming.drain(..) {
            let refusal = match w.proposal {
                Err(e) => e,
                Ok((id, data)) => match self.core.propose_stream(id, data, w.gateway_id, now) {
                    Ok(()) => continue,
                    Err(e) => e,
                },
            };
            let header = Header {
                raft_term: self.core.term(),
                ..self.io.header
            };
            if let Some(writes) = self.io.writes.as_mut() {
                writes.reply(w.gateway_id, &header, &Err(refusal));
            }
        }
        self.incoming = incoming;
        let result = result.and_then(|()| match self.io.writes.as_mut() {
            Some(writes) => writes.flush(),
            None => Ok(()),
        });
        if let Err(why) = result {
            self.io.lose_write_stream(&why);
        }
    }

    /// Reads the raft stream and steps what arrived; writes output the socket can take now.
    fn pump_peer_stream(&mut self) {
        let Some(peer) = self.io.peer.as_mut() else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        let result = peer.read(&mut events).and_then(|()| peer.flush());
        for event in events.drain(..) {
            if self.core.lost_data_to().is_some() {
                break;
            }
            match event {
                Event::Step(m) => self.core.step(m),
                Event::Forged { .. } => {
                    self.shared
                        .peer_messages_refused
                        .fetch_add(1, Ordering::Relaxed);
                }
                Event::Counters {
                    cert_refused,
                    frames_refused,
                    messages_dropped,
                } => {
                    let s = &self.shared;
                    s.peer_cert_refused
                        .fetch_add(cert_refused, Ordering::Relaxed);
                    s.peer_frames_refused
                        .fetch_add(frames_refused, Ordering::Relaxed);
                    s.peer_messages_dropped
                        .fetch_add(messages_dropped, Ordering::Relaxed);
                }
                Event::Unreachable(id) => self.core.report_unreachable(id),
                Event::SnapshotStatus { to, ok } => self.core.report_snapshot(to, ok),
            }
        }
        self.events = events;
        if let Err(why) = result {
            self.io.lose_peer_stream(&why);
        }
    }
}

/// raft-rs's configuration of a member (the simulator runs the same).
pub(crate) fn config(id: u64, applied: u64, election_ticks: usize) -> raft::Config {
    raft::Config {
        id,
        election_tick: election_ticks,
        heartbeat_tick: 1,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        // A follower learns a new commit index from the next append or heartbeat instead of
        // from an empty append (and its answer) per commit: that was half the peer traffic. A
        // follower whose forwarded proposal committed gets an append at once instead
        // (`Core::tell_forwarders`), as it answers its client only once it applies.
        skip_bcast_commit: true,
        ..Default::default()
    }
}

/// Builds the raft core of this member over its log.
pub(crate) fn raw_node(config: &raft::Config, log: RaftLog) -> Result<RawNode<RaftLog>> {
    Ok(RawNode::new(config, log, &logger::logger())?)
}
