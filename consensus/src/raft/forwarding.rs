//! A follower that forwarded a proposal learns that it is committed without waiting for the
//! leader's commit to come back.
//!
//! Where the leader and one follower are a quorum (two or three voters), an entry of the leader's
//! term that both have on disk is committed (raft §5.4.2): any later leader has it. So once the
//! leader's fsync ends, it tells each follower with a forwarded proposal pending how far its log is
//! durable, in an append response of its own (raft never sends one from a leader, so it cannot be
//! mistaken). The follower commits up to the lower of that and its own durable log, and answers
//! its client when its own fsync ends. A write through a follower so waits for two inter-member
//! messages instead of four (proposal and append; not the follower's ack and the leader's commit),
//! and each message costs three process hops here (consensus, two peer gateways).
//!
//! The leader then knows of fewer commits than its followers may, so a read index it hands out is
//! raised to the highest index it has announced ([`LeaderAcks::read_index`]): a read that starts
//! after such a write was answered must see it, as etcd's linearizable reads do.
//!
//! [`Forwarders`] is the leader's list of followers with a forwarded proposal in flight: they hear
//! of its durability or its commit first, and their appends leave first.

use raft::eraftpb::{Message, MessageType};
use raft::{Raft, StateRole, Storage};

/// As leader: followers with a forwarded proposal not yet committed, and its last index. Only
/// they hear of the commit at once (an append carrying it); the others learn it from the next
/// append or heartbeat (raft-rs `skip_bcast_commit`).
#[derive(Debug, Default)]
pub(crate) struct Forwarders(Vec<(u64, u64)>);

impl Forwarders {
    /// Follower `from` forwarded a proposal that the leader appended at `last`.
    pub(crate) fn note(&mut self, from: u64, last: u64) {
        match self.0.iter_mut().find(|(peer, _)| *peer == from) {
            Some(pending) => pending.1 = last,
            None => self.0.push((from, last)),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The followers whose forwarded proposal is committed at `committed`, forgotten here.
    pub(crate) fn take_committed(&mut self, committed: u64) -> Vec<u64> {
        let mut due = Vec::new();
        self.0.retain(|&(peer, last)| {
            let now = last <= committed;
            if now {
                due.push(peer);
            }
            !now
        });
        due
    }

    /// With the leader's log durable through `durable`: the notices `notice` gives for followers
    /// whose forwarded proposal is in it; those told are forgotten here.
    pub(crate) fn announce(
        &mut self,
        durable: u64,
        mut notice: impl FnMut(u64) -> Option<Message>,
    ) -> Vec<Message> {
        let mut notices = Vec::new();
        self.0.retain(|&(peer, last)| {
            let told = (last <= durable).then(|| notice(peer)).flatten();
            let keep = told.is_none();
            notices.extend(told);
            keep
        });
        notices
    }

    /// Puts messages to forwarders first: a follower that forwarded a proposal has a client
    /// waiting.
    pub(crate) fn first(&self, msgs: &mut [Message]) {
        if msgs.len() > 1 && !self.0.is_empty() {
            msgs.sort_by_key(|m| !self.0.iter().any(|&(peer, _)| peer == m.to));
        }
    }
}

/// The leader's side: the highest durable index announced in its current term.
#[derive(Debug, Default)]
pub(crate) struct LeaderAcks {
    term: u64,
    announced: u64,
}

impl LeaderAcks {
    /// The notice for follower `to` that this leader's log is durable through `index`, if the two
    /// of them are a quorum. It is then counted for `read_index`.
    pub(crate) fn announce<T: Storage>(
        &mut self,
        raft: &Raft<T>,
        to: u64,
        index: u64,
    ) -> Option<Message> {
        if raft.state != StateRole::Leader || !pair_is_quorum(raft, raft.id, to) {
            return None;
        }
        if self.term != raft.term {
            *self = LeaderAcks {
                term: raft.term,
                announced: 0,
            };
        }
        self.announced = self.announced.max(index);
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppendResponse);
        m.from = raft.id;
        m.to = to;
        m.term = raft.term;
        m.index = index;
        m.commit = raft.raft_log.committed;
        Some(m)
    }

    /// A read index raft handed out, raised past every announced index of this term: a follower
    /// may have answered a write up to there before this leader learnt that it is committed.
    pub(crate) fn read_index(&self, term: u64, index: u64) -> u64 {
        if term == self.term {
            index.max(self.announced)
        } else {
            index
        }
    }
}

/// The follower's side: how far its leader's log is durable, as last announced.
#[derive(Debug, Default)]
pub(crate) struct FollowerAcks {
    term: u64,
    leader_durable: u64,
    /// Whether this term has seen a commit by the leader's notice yet (logged once per term).
    used: bool,
}

impl FollowerAcks {
    /// Takes `m` if it is the current leader's notice; false for any other message, which raft
    /// steps as usual.
    pub(crate) fn receive<T: Storage>(&mut self, raft: &Raft<T>, m: &Message) -> bool {
        let notice = m.get_msg_type() == MessageType::MsgAppendResponse
            && !m.reject
            && raft.state == StateRole::Follower
            && m.term == raft.term
            && m.from == raft.leader_id
            && m.from != raft::INVALID_ID;
        if notice {
            if self.term != m.term {
                *self = FollowerAcks {
                    term: m.term,
                    ..FollowerAcks::default()
                };
            }
            self.leader_durable = self.leader_durable.max(m.index);
        }
        notice
    }

    /// The index this follower may commit to now that its own log is durable through `durable`,
    /// when that is beyond what it knows is committed.
    pub(crate) fn commit_index<T: Storage>(&self, raft: &Raft<T>, durable: u64) -> Option<u64> {
        if raft.state != StateRole::Follower || self.term != raft.term {
            return None;
        }
        let index = self.leader_durable.min(durable);
        // Only an entry of the leader's own term is committed by counting copies; the ones before
        // it are committed with it. An entry of that term here came from that leader, so the two
        // logs agree up to it.
        (index > raft.raft_log.committed
            && index <= raft.raft_log.last_index()
            && raft.raft_log.term(index).ok() == Some(self.term)
            && pair_is_quorum(raft, raft.leader_id, raft.id))
        .then_some(index)
    }

    /// Notes a commit made by `commit_index`; true for the first of the term.
    pub(crate) fn used(&mut self) -> bool {
        !std::mem::replace(&mut self.used, true)
    }
}

/// Whether members `a` and `b` alone are a quorum of the voters (both halves of a joint config).
fn pair_is_quorum<T: Storage>(raft: &Raft<T>, a: u64, b: u64) -> bool {
    let conf = raft.prs().conf().to_conf_state();
    let majority = |voters: &[u64]| {
        voters.is_empty()
            || 2 * voters.iter().filter(|&&id| id == a || id == b).count() > voters.len()
    };
    a != b && !conf.voters.is_empty() && majority(&conf.voters) && majority(&conf.voters_outgoing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;
    use raft::storage::MemStorage;
    use raft::{Config, RawNode};

    /// Member 2 of `voters`, with an empty log.
    fn node(voters: Vec<u64>) -> RawNode<MemStorage> {
        let storage = MemStorage::new_with_conf_state((voters, vec![]));
        let config = Config {
            id: 2,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&config, storage, &logger).expect("raft node")
    }

    fn follower(voters: Vec<u64>) -> RawNode<MemStorage> {
        let mut node = node(voters);
        // Leader 1 appends entries 1 and 2 of term 3.
        let mut app = Message::default();
        app.set_msg_type(MessageType::MsgAppend);
        app.from = 1;
        app.to = 2;
        app.term = 3;
        app.entries = (1..=2)
            .map(|index| Entry {
                index,
                term: 3,
                ..Default::default()
            })
            .collect::<Vec<_>>()
            .into();
        node.step(app).expect("append");
        node
    }

    fn notice(from: u64, term: u64, index: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppendResponse);
        m.from = from;
        m.to = 2;
        m.term = term;
        m.index = index;
        m
    }

    #[test]
    fn a_follower_commits_what_it_and_the_leader_have_durable() {
        let node = follower(vec![1, 2, 3]);
        let mut acks = FollowerAcks::default();
        assert!(acks.receive(&node.raft, &notice(1, 3, 2)));
        assert_eq!(
            acks.commit_index(&node.raft, 0),
            None,
            "nothing durable here"
        );
        assert_eq!(acks.commit_index(&node.raft, 1), Some(1));
        assert_eq!(acks.commit_index(&node.raft, 2), Some(2));
        assert_eq!(
            acks.commit_index(&node.raft, 5),
            Some(2),
            "not past the leader"
        );
    }

    #[test]
    fn only_the_current_leaders_notice_counts() {
        let node = follower(vec![1, 2, 3]);
        let mut acks = FollowerAcks::default();
        assert!(
            !acks.receive(&node.raft, &notice(3, 3, 2)),
            "not the leader"
        );
        assert!(!acks.receive(&node.raft, &notice(1, 2, 2)), "an older term");
        let mut rejected = notice(1, 3, 2);
        rejected.reject = true;
        assert!(!acks.receive(&node.raft, &rejected));
        let mut append = notice(1, 3, 2);
        append.set_msg_type(MessageType::MsgAppend);
        assert!(!acks.receive(&node.raft, &append));
        assert_eq!(acks.commit_index(&node.raft, 2), None);
    }

    #[test]
    fn a_leader_and_one_follower_of_five_are_no_quorum() {
        let node = follower(vec![1, 2, 3, 4, 5]);
        let mut acks = FollowerAcks::default();
        assert!(acks.receive(&node.raft, &notice(1, 3, 2)));
        assert_eq!(acks.commit_index(&node.raft, 2), None);
    }

    #[test]
    fn entries_of_an_older_term_are_not_committed_by_counting() {
        let mut node = follower(vec![1, 2, 3]);
        // A new leader 3 in term 4 appends entry 3; entries 1 and 2 are still of term 3.
        let mut app = Message::default();
        app.set_msg_type(MessageType::MsgAppend);
        app.from = 3;
        app.to = 2;
        app.term = 4;
        app.index = 2;
        app.log_term = 3;
        app.entries = vec![Entry {
            index: 3,
            term: 4,
            ..Default::default()
        }]
        .into();
        node.step(app).expect("append");
        let mut acks = FollowerAcks::default();
        assert!(acks.receive(&node.raft, &notice(3, 4, 3)));
        assert_eq!(
            acks.commit_index(&node.raft, 2),
            None,
            "entry 2 is of term 3"
        );
        assert_eq!(acks.commit_index(&node.raft, 3), Some(3));
    }

    #[test]
    fn a_leader_raises_read_indexes_to_what_it_announced() {
        let mut node = node(vec![1, 2, 3]);
        node.raft.become_candidate();
        node.raft.become_leader();
        let term = node.raft.term;
        let mut acks = LeaderAcks::default();
        let m = acks.announce(&node.raft, 3, 7).expect("a notice");
        assert_eq!(
            (m.get_msg_type(), m.from, m.to, m.term, m.index),
            (MessageType::MsgAppendResponse, 2, 3, term, 7)
        );
        assert_eq!(acks.read_index(term, 5), 7);
        assert_eq!(acks.read_index(term, 9), 9);
        assert_eq!(acks.read_index(term + 1, 5), 5, "another term's reads");
        assert!(acks.announce(&node.raft, 2, 7).is_none(), "not to itself");
    }
}
