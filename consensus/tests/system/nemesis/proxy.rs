//! The network between the members: a UDP proxy in front of every member's peer port. Each
//! member advertises its proxy's address as its peer URL and listens on its own, so every QUIC
//! packet between two members passes one proxy, which knows both ends: the member that sent it
//! (by source address; peer gateways dial from their listening socket) and the member behind the
//! proxy. Per direction of each pair the proxy delivers, drops everything (a partition, one way
//! or both), drops a share at random (loss), or holds packets a random while (delay, which also
//! reorders them). It works on real sockets and lets QUIC's own recovery do the rest, which is
//! what `tc netem` would test, without the kernel module this machine lacks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::support::history::xorshift;

/// What happens to packets going one way between two members.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Link {
    /// Everything is dropped.
    pub cut: bool,
    /// The share of packets dropped at random.
    pub loss: f64,
    /// Each packet is held for a time drawn evenly from this range.
    pub delay: Option<(Duration, Duration)>,
}

/// Packet counts, for the report.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub delayed: AtomicU64,
    pub strangers: AtomicU64,
}

struct State {
    /// `links[from][to]`.
    links: Vec<Vec<Link>>,
    rng: u64,
}

/// The proxies of one cluster; stopped when dropped.
pub struct Network {
    state: Arc<Mutex<State>>,
    pub counts: Arc<Counts>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Network {
    /// A proxy at `fronts[j]` for the member listening at `members[j]`, for every `j`. Must be
    /// called inside a tokio runtime.
    pub async fn start(members: &[SocketAddr], fronts: &[SocketAddr], seed: u64) -> Network {
        let n = members.len();
        let state = Arc::new(Mutex::new(State {
            links: vec![vec![Link::default(); n]; n],
            rng: seed | 1,
        }));
        let counts = Arc::new(Counts::default());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let hosts: Arc<Vec<IpAddr>> = Arc::new(members.iter().map(|a| a.ip()).collect());
        for (j, (&member, &front)) in members.iter().zip(fronts).enumerate() {
            let socket = Arc::new(
                UdpSocket::bind(front)
                    .await
                    .unwrap_or_else(|e| panic!("binding the proxy at {front}: {e}")),
            );
            let proxy = Proxy {
                to: j,
                member,
                front: socket,
                hosts: hosts.clone(),
                state: state.clone(),
                counts: counts.clone(),
                tasks: tasks.clone(),
            };
            let task = tokio::spawn(proxy.run());
            tasks.lock().unwrap().push(task);
        }
        Network {
            state,
            counts,
            tasks,
        }
    }

    /// Sets what happens to packets from member `from` to member `to`.
    pub fn set(&self, from: usize, to: usize, link: Link) {
        self.state.lock().unwrap().links[from][to] = link;
    }

    /// Sets every direction between two different members.
    pub fn set_all(&self, link: Link) {
        let mut state = self.state.lock().unwrap();
        let n = state.links.len();
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    state.links[from][to] = link;
                }
            }
        }
    }

    /// Cuts `member` off: `inbound` drops what the others send it, `outbound` what it sends them.
    pub fn isolate(&self, member: usize, inbound: bool, outbound: bool) {
        let n = self.state.lock().unwrap().links.len();
        let cut = Link {
            cut: true,
            ..Link::default()
        };
        for other in (0..n).filter(|&o| o != member) {
            if inbound {
                self.set(other, member, cut);
            }
            if outbound {
                self.set(member, other, cut);
            }
        }
    }

    /// Every link delivers again.
    pub fn heal(&self) {
        self.set_all(Link::default());
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

struct Proxy {
    /// The member behind this proxy, and where it listens.
    to: usize,
    member: SocketAddr,
    front: Arc<UdpSocket>,
    hosts: Arc<Vec<IpAddr>>,
    state: Arc<Mutex<State>>,
    counts: Arc<Counts>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn run(self) {
        // One socket towards the member per sender, so that the member's answers can be told
        // apart and sent back to the right one.
        let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((len, src)) = self.front.recv_from(&mut buf).await else {
                continue;
            };
            let Some(from) = self.hosts.iter().position(|h| *h == src.ip()) else {
                self.counts.strangers.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let back = match flows.get(&src) {
                Some(back) => back.clone(),
                None => {
                    let Ok(back) = UdpSocket::bind(SocketAddr::new(self.front_ip(), 0)).await
                    else {
                        continue;
                    };
                    if back.connect(self.member).await.is_err() {
                        continue;
                    }
                    let back = Arc::new(back);
                    flows.insert(src, back.clone());
                    let answers = tokio::spawn(answer(
                        back.clone(),
                        self.front.clone(),
                        src,
                        self.to,
                        from,
                        self.state.clone(),
                        self.counts.clone(),
                    ));
                    self.tasks.lock().unwrap().push(answers);
                    back
                }
            };
            let packet = buf[..len].to_vec();
            let fate = decide(&self.state, &self.counts, from, self.to);
            send_after(fate, &self.counts, move || async move {
                let _ = back.send(&packet).await;
            })
            .await;
        }
    }

    fn front_ip(&self) -> IpAddr {
        self.front
            .local_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}

/// Carries the member's answers on one flow back to the sender.
async fn answer(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    sender: SocketAddr,
    member: usize,
    sender_index: usize,
    state: Arc<Mutex<State>>,
    counts: Arc<Counts>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(len) = back.recv(&mut buf).await else {
            // ICMP "port unreachable" while the member restarts: keep the flow.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let packet = buf[..len].to_vec();
        let fate = decide(&state, &counts, member, sender_index);
        let front = front.clone();
        send_after(fate, &counts, move || async move {
            let _ = front.send_to(&packet, sender).await;
        })
        .await;
    }
}

/// `None`: drop; `Some(d)`: send after `d`.
fn decide(state: &Mutex<State>, counts: &Counts, from: usize, to: usize) -> Option<Duration> {
    let mut state = state.lock().unwrap();
    let link = state.links[from][to];
    let roll = (xorshift(&mut state.rng) >> 11) as f64 / (1u64 << 53) as f64;
    if link.cut || roll < link.loss {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let Some((low, high)) = link.delay else {
        return Some(Duration::ZERO);
    };
    let span = high.saturating_sub(low).as_micros() as u64;
    let extra = if span == 0 {
        0
    } else {
        xorshift(&mut state.rng) % span
    };
    Some(low + Duration::from_micros(extra))
}

async fn send_after<F, Fut>(fate: Option<Duration>, counts: &Counts, send: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let Some(delay) = fate else { return };
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    if delay.is_zero() {
        // In order and at once: no task per packet on the common path.
        send().await;
    } else {
        counts.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            send().await;
        });
    }
}
