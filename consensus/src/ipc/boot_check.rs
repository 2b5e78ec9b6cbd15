//! etcd's `isMemberBootstrapped`, before raft takes part: a member that bootstrapped an empty data
//! dir with `--initial-cluster-state=new` asks the other members, through its peer gateway
//! (`PeerGateway.askMembers`), what they know of it. If one knows it as published (with client
//! URLs), the cluster has had this member before and it lost its data: it must not vote with an
//! empty log (see `boot::run`, which refuses). If nobody answers in time, it proceeds, as etcd
//! does.
//!
//! The boot thread waits ([`BootCheck::wait`]) while the IPC thread asks the first peer gateway
//! that registers ([`BootCheck::on_register`]), again on the next registration if that gateway
//! went away before answering. Once the wait ends the check is settled: no later registration (a
//! gateway restarted on purpose) asks again, or waits for anything.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schema::member_capnp::peer_gateway;
use tracing::{debug, info, warn};

use crate::cluster::{MemberInfo, read_member};

/// How long past the gateway's own timeout the boot thread waits for its answer (the call's
/// way there and back).
const ANSWER_SLACK: Duration = Duration::from_millis(500);

/// One member's view of the member table, as it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct View {
    /// The member that answered.
    pub from: u64,
    pub members: Vec<MemberInfo>,
}

/// What the boot thread hears from the IPC thread.
#[derive(Debug)]
pub(crate) enum Event {
    /// A peer gateway registered, and was asked.
    Registered,
    /// The views of the members that answered (none: nobody did, or the gateway cannot ask).
    Answered(Vec<View>),
}

/// How the check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Member `by` knows this member as published: it has already been bootstrapped.
    Published { by: u64, member: MemberInfo },
    /// Nobody knows this member as published, or nobody answered: go on, and say why.
    Proceed(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for an answer; `asking` while a gateway's call is in flight.
    Waiting {
        asking: bool,
    },
    Settled,
}

pub(crate) struct BootCheck {
    member_id: u64,
    timeout: Duration,
    phase: Mutex<Phase>,
    events: Mutex<Sender<Event>>,
}

impl BootCheck {
    /// A check for member `member_id` whose gateway gets `timeout` to gather answers (and which
    /// waits as long for a gateway to register); the receiver is for [`BootCheck::wait`].
    pub(crate) fn new(member_id: u64, timeout: Duration) -> (Arc<BootCheck>, Receiver<Event>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let check = BootCheck {
            member_id,
            timeout,
            phase: Mutex::new(Phase::Waiting { asking: false }),
            events: Mutex::new(tx),
        };
        (Arc::new(check), rx)
    }

    fn tell(&self, event: Event) {
        if let Ok(events) = self.events.lock() {
            // The boot thread stopped waiting: the check is settled anyway.
            let _ = events.send(event);
        }
    }

    /// Whether to ask the gateway that just registered: only while waiting, and one call at a
    /// time.
    fn begin_asking(&self) -> bool {
        let Ok(mut phase) = self.phase.lock() else {
            return false;
        };
        match *phase {
            Phase::Waiting { asking: false } => {
                *phase = Phase::Waiting { asking: true };
                true
            }
            _ => false,
        }
    }

    fn asking_failed(&self) {
        if let Ok(mut phase) = self.phase.lock()
            && *phase == (Phase::Waiting { asking: true })
        {
            *phase = Phase::Waiting { asking: false };
        }
    }

    fn settle(&self) {
        if let Ok(mut phase) = self.phase.lock() {
            *phase = Phase::Settled;
        }
    }

    /// On the IPC thread, for each peer gateway that registers: asks it while the check waits.
    pub(crate) fn on_register(self: &Arc<Self>, gateway: peer_gateway::Client) {
        if !self.begin_asking() {
            return;
        }
        self.tell(Event::Registered);
        let check = self.clone();
        tokio::task::spawn_local(async move { check.ask(gateway).await });
    }

    async fn ask(self: Arc<Self>, gateway: peer_gateway::Client) {
        let mut request = gateway.ask_members_request();
        let timeout_ms = u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX);
        request.get().set_timeout_ms(timeout_ms);
        request.get().set_published_id(self.member_id);
        let reply = match request.send().promise.await {
            Ok(reply) => reply,
            Err(e) if e.kind == capnp::ErrorKind::Unimplemented => {
                warn!("the peer gateway cannot ask the other members what they know of us: {e}");
                self.tell(Event::Answered(Vec::new()));
                return;
            }
            Err(e) => {
                // The gateway went away: the next one to register is asked.
                debug!("asking the peer gateway for the members' views failed: {e}");
                self.asking_failed();
                return;
            }
        };
        let views = reply.get().and_then(|r| r.get_views()).and_then(|list| {
            list.iter()
                .map(|v| {
                    Ok(View {
                        from: v.get_member_id(),
                        members: v
                            .get_members()?
                            .iter()
                            .map(read_member)
                            .collect::<capnp::Result<_>>()?,
                    })
                })
                .collect::<capnp::Result<Vec<_>>>()
        });
        match views {
            Ok(views) => self.tell(Event::Answered(views)),
            Err(e) => {
                warn!("the peer gateway's answer is malformed: {e}");
                self.tell(Event::Answered(Vec::new()));
            }
        }
    }

    /// On the boot thread: waits up to the timeout for a peer gateway to register, then up to
    /// the timeout (and a little) for its answer, and settles the check.
    pub(crate) fn wait(&self, events: &Receiver<Event>) -> Outcome {
        let outcome = self.wait_for_answer(events);
        self.settle();
        outcome
    }

    fn wait_for_answer(&self, events: &Receiver<Event>) -> Outcome {
        let mut deadline = Instant::now() + self.timeout;
        let mut registered = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(Event::Registered) => {
                    if !registered {
                        registered = true;
                        deadline = Instant::now() + self.timeout + ANSWER_SLACK;
                    }
                }
                Ok(Event::Answered(views)) => return decide(&views, self.member_id),
                Err(RecvTimeoutError::Timeout) if registered => {
                    return Outcome::Proceed(format!(
                        "the peer gateway did not answer within {:?}",
                        self.timeout + ANSWER_SLACK
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Outcome::Proceed(format!(
                        "no peer gateway registered within {:?}",
                        self.timeout
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Outcome::Proceed("the IPC thread stopped".into());
                }
            }
        }
    }
}

/// etcd's decision: the first view that has member `me` with client URLs.
pub(crate) fn decide(views: &[View], me: u64) -> Outcome {
    for view in views {
        if let Some(m) = view
            .members
            .iter()
            .find(|m| m.id == me && !m.client_urls.is_empty())
        {
            return Outcome::Published {
                by: view.from,
                member: m.clone(),
            };
        }
    }
    let from: Vec<String> = views.iter().map(|v| format!("{:x}", v.from)).collect();
    let why = if views.is_empty() {
        "no other member answered".to_string()
    } else {
        format!(
            "members {} answered and none knows this member as published",
            from.join(", ")
        )
    };
    info!("{why}");
    Outcome::Proceed(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, client_urls: &[&str]) -> MemberInfo {
        MemberInfo {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("http://10.0.0.{id}:2380")],
            client_urls: client_urls.iter().map(|u| u.to_string()).collect(),
            is_learner: false,
        }
    }

    #[test]
    fn a_view_with_this_member_published_decides() {
        let unpublished = View {
            from: 2,
            members: vec![member(1, &[]), member(2, &["http://10.0.0.2:2379"])],
        };
        let published = View {
            from: 3,
            members: vec![member(1, &["http://10.0.0.1:2379"]), member(3, &["x"])],
        };
        assert_eq!(
            decide(&[unpublished.clone(), published.clone()], 1),
            Outcome::Published {
                by: 3,
                member: member(1, &["http://10.0.0.1:2379"])
            }
        );
        // Known but not published, unknown, or nobody answered: proceed.
        assert!(matches!(
            decide(std::slice::from_ref(&unpublished), 1),
            Outcome::Proceed(_)
        ));
        assert!(matches!(decide(&[published], 4), Outcome::Proceed(_)));
        assert!(matches!(decide(&[], 1), Outcome::Proceed(_)));
    }

    #[test]
    fn waits_for_a_gateway_then_for_its_answer_and_asks_once() {
        let (check, events) = BootCheck::new(1, Duration::from_millis(300));
        // Nobody registers: proceed after the timeout.
        let started = Instant::now();
        assert!(matches!(check.wait(&events), Outcome::Proceed(why) if why.contains("registered")));
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Settled: a gateway registering now is not asked.
        assert!(!check.begin_asking());

        let (check, events) = BootCheck::new(1, Duration::from_millis(300));
        assert!(check.begin_asking());
        // One call at a time; a failed call lets the next registration ask.
        assert!(!check.begin_asking());
        check.asking_failed();
        assert!(check.begin_asking());
        check.tell(Event::Registered);
        check.tell(Event::Answered(vec![View {
            from: 2,
            members: vec![member(1, &["http://10.0.0.1:2379"])],
        }]));
        assert!(matches!(
            check.wait(&events),
            Outcome::Published { by: 2, .. }
        ));
        assert!(!check.begin_asking());

        // Registered but never answered: proceed after the timeout and the slack.
        let (check, events) = BootCheck::new(1, Duration::from_millis(200));
        check.tell(Event::Registered);
        let started = Instant::now();
        assert!(matches!(check.wait(&events), Outcome::Proceed(why) if why.contains("answer")));
        assert!(started.elapsed() >= Duration::from_millis(200) + ANSWER_SLACK);
    }
}
