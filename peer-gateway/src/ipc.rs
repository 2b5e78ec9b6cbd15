//! The link to consensus over `peer.sock`: register, serve `PeerGateway` (raft messages going
//! out), and call `PeerPlane` (raft messages coming in, reports). Runs on a `LocalSet`, as
//! capnp-rpc is `!Send`.

use std::cell::{OnceCell, RefCell};
use std::future::{Future, ready};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use schema::member_capnp::{member, peer_gateway, peer_gateway_config, peer_plane, peer_registrar};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::peer_url::PeerUrl;
use crate::tls::{self, TlsFiles};
use crate::transport::{Events, Inbound, Peer, Report, Transport, TransportConfig};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// One `deliver` call carries at most this many messages ...
const MAX_BATCH_LEN: usize = 4096;
/// ... and about this many bytes (one more message may overshoot it).
const MAX_BATCH_BYTES: usize = 16 << 20;

/// What one registration hands out, read out of the Cap'n Proto reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registration {
    member_id: u64,
    cluster_id: u64,
    members: Vec<Peer>,
    listen: ListenConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ListenConfig {
    urls: Vec<String>,
    tls: TlsFiles,
}

/// What outlives one connection to consensus.
#[derive(Default)]
struct State {
    /// Started on the first registration, kept for the life of the process.
    transport: OnceCell<(Transport, Registration)>,
    /// Set while registered; inbound messages and reports are dropped without it.
    plane: RefCell<Option<peer_plane::Client>>,
}

/// Registers with consensus, again whenever the connection ends. Returns only on a fatal error:
/// a refused registration or an unusable configuration.
pub async fn run(socket: PathBuf) -> Result<()> {
    let state = Rc::new(State::default());
    let gateway: peer_gateway::Client = capnp_rpc::new_client(Gateway {
        state: state.clone(),
    });
    let mut backoff = MIN_BACKOFF;
    // Log the absence of consensus once per outage, not per attempt.
    let mut quiet = false;
    loop {
        match register(&socket, &gateway).await {
            Ok((registration, plane, done)) => {
                state.apply(registration)?;
                *state.plane.borrow_mut() = Some(plane);
                backoff = MIN_BACKOFF;
                let why = done
                    .await
                    .unwrap_or_else(|_| "connection to consensus ended".to_string());
                state.plane.borrow_mut().take();
                warn!("lost consensus ({why}); registering again");
                quiet = true;
            }
            Err(e @ (Error::RegistrationRefused(_) | Error::Ipc(_))) => return Err(e),
            Err(e) => {
                if quiet {
                    debug!(
                        "cannot register with consensus at {}: {e}",
                        socket.display()
                    );
                } else {
                    info!("waiting for consensus at {}: {e}", socket.display());
                    quiet = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One dial and `register` call. A lost connection is `ConsensusUnreachable`; a refusal is fatal.
async fn register(
    socket: &Path,
    gateway: &peer_gateway::Client,
) -> Result<(
    Registration,
    peer_plane::Client,
    tokio::sync::oneshot::Receiver<String>,
)> {
    let (registrar, done) = schema::dial::<peer_registrar::Client>(socket)
        .await
        .map_err(Error::ConsensusUnreachable)?;
    let mut request = registrar.register_request();
    request.get().set_version(schema::PROTOCOL_VERSION);
    request.get().set_gateway(gateway.clone());
    let reply = match request.send().promise.await {
        Ok(reply) => reply,
        Err(e) if e.kind == capnp::ErrorKind::Disconnected => {
            return Err(Error::ConsensusUnreachable(std::io::Error::other(
                e.to_string(),
            )));
        }
        Err(e) => return Err(Error::RegistrationRefused(e)),
    };
    let reply = reply.get()?;
    let identity = reply.get_identity()?;
    let registration = Registration {
        member_id: identity.get_member_id(),
        cluster_id: identity.get_cluster_id(),
        members: read_members(identity.get_members()?)?,
        listen: read_listen_config(reply.get_config()?)?,
    };
    Ok((registration, reply.get_plane()?, done))
}

impl State {
    fn apply(self: &Rc<Self>, registration: Registration) -> Result<()> {
        info!(
            "registered with consensus as member {:x} of cluster {:x}",
            registration.member_id, registration.cluster_id
        );
        if let Some((transport, first)) = self.transport.get() {
            if registration.listen != first.listen {
                warn!(
                    "consensus handed out a different listen config; keeping the one from the first registration until restart"
                );
            }
            if (registration.member_id, registration.cluster_id)
                != (first.member_id, first.cluster_id)
            {
                warn!(
                    "consensus handed out member {:x} of cluster {:x}, but we started as member {:x} of cluster {:x}; keeping the old identity until restart",
                    registration.member_id,
                    registration.cluster_id,
                    first.member_id,
                    first.cluster_id
                );
            }
            transport.set_members(registration.members);
            return Ok(());
        }

        let listen = registration
            .listen
            .urls
            .iter()
            .map(|url| PeerUrl::parse(url)?.listen_addr())
            .collect::<Result<Vec<_>>>()?;
        let tls = tls::configure(&registration.listen.tls)?;
        let (transport, events) = Transport::start(TransportConfig {
            cluster_id: registration.cluster_id,
            member_id: registration.member_id,
            listen,
            members: registration.members.clone(),
            tls,
        })?;
        info!("listening for peers on {:?}", transport.local_addrs());
        let Events { inbound, reports } = events;
        tokio::task::spawn_local(deliver_inbound(
            self.clone(),
            inbound,
            registration.member_id,
        ));
        tokio::task::spawn_local(forward_reports(self.clone(), reports));
        // Only the first registration gets here, so the cell is empty.
        let _ = self.transport.set((transport, registration));
        Ok(())
    }

    fn plane(&self) -> Option<peer_plane::Client> {
        self.plane.borrow().clone()
    }
}

/// Hands inbound messages to consensus: whatever piled up while the previous call was in flight
/// goes in the next one. Without consensus they are dropped; raft resends.
/// Calls on one capability arrive in the order they were sent, so several `deliver` calls can be
/// in flight at once without reordering raft messages; waiting for each reply would add a round
/// trip to consensus to every batch.
const MAX_DELIVERIES_IN_FLIGHT: usize = 8;

async fn deliver_inbound(state: Rc<State>, mut inbound: mpsc::Receiver<Inbound>, own_id: u64) {
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_DELIVERIES_IN_FLIGHT));
    while let Some(first) = inbound.recv().await {
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_LEN && bytes < MAX_BATCH_BYTES {
            match inbound.try_recv() {
                Ok(m) => {
                    bytes += m.data.len();
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let Some(plane) = state.plane() else {
            debug!(
                "dropping {} inbound messages: consensus is not connected",
                batch.len()
            );
            continue;
        };
        let mut request = plane.deliver_request();
        // MAX_BATCH_LEN fits a u32.
        let mut list = request.get().init_messages(batch.len() as u32);
        for (i, m) in batch.iter().enumerate() {
            let mut entry = list.reborrow().get(i as u32);
            entry.set_to(own_id);
            entry.set_from(m.from);
            entry.set_is_snapshot(m.is_snapshot);
            entry.set_data(&m.data);
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let count = batch.len();
        let reply = request.send().promise;
        tokio::task::spawn_local(async move {
            if let Err(e) = reply.await {
                debug!("delivering {count} messages to consensus failed: {e}");
            }
            drop(permit);
        });
    }
}

async fn forward_reports(state: Rc<State>, mut reports: mpsc::UnboundedReceiver<Report>) {
    while let Some(report) = reports.recv().await {
        let Some(plane) = state.plane() else {
            continue;
        };
        let result = match report {
            Report::Unreachable(id) => {
                let mut request = plane.report_unreachable_request();
                request.get().set_member_id(id);
                request.send().promise.await.map(drop)
            }
            Report::Snapshot { to, ok } => {
                let mut request = plane.report_snapshot_request();
                request.get().set_member_id(to);
                request.get().set_ok(ok);
                request.send().promise.await.map(drop)
            }
        };
        if let Err(e) = result {
            debug!("reporting {report:?} to consensus failed: {e}");
        }
    }
}

/// Our `PeerGateway` capability, handed to consensus at registration.
struct Gateway {
    state: Rc<State>,
}

impl Gateway {
    fn route(&self, params: peer_gateway::SendParams) -> capnp::Result<()> {
        let messages = params.get()?.get_messages()?;
        let Some((transport, _)) = self.state.transport.get() else {
            debug!(
                "dropping {} outbound messages: transport not started yet",
                messages.len()
            );
            return Ok(());
        };
        for m in messages.iter() {
            // Drops are logged and reported to raft by the transport itself.
            let _ = transport.send(m.get_to(), m.get_data()?.to_vec(), m.get_is_snapshot());
        }
        Ok(())
    }

    fn members_changed(&self, params: peer_gateway::MembersChangedParams) -> Result<()> {
        let members = read_members(params.get()?.get_members()?)?;
        if let Some((transport, _)) = self.state.transport.get() {
            info!("member table changed: {} members", members.len());
            transport.set_members(members);
        }
        Ok(())
    }
}

impl peer_gateway::Server for Gateway {
    // Neither method awaits anything: raft must never wait on the network.
    fn send(
        self: Rc<Self>,
        params: peer_gateway::SendParams,
        _results: peer_gateway::SendResults,
    ) -> impl Future<Output = capnp::Result<()>> + 'static {
        ready(self.route(params))
    }

    fn members_changed(
        self: Rc<Self>,
        params: peer_gateway::MembersChangedParams,
        _results: peer_gateway::MembersChangedResults,
    ) -> impl Future<Output = capnp::Result<()>> + 'static {
        ready(
            Gateway::members_changed(&self, params)
                .map_err(|e| capnp::Error::failed(e.to_string())),
        )
    }
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>, what: &str) -> Result<String> {
    t?.to_string()
        .map_err(|e| Error::Ipc(capnp::Error::failed(format!("{what} is not UTF-8: {e}"))))
}

fn read_members(list: capnp::struct_list::Reader<'_, member::Owned>) -> Result<Vec<Peer>> {
    list.iter()
        .map(|m| {
            let urls = m
                .get_peer_urls()?
                .iter()
                .map(|u| text(u, "a peer URL"))
                .collect::<Result<Vec<_>>>()?;
            Ok(Peer {
                id: m.get_id(),
                urls,
            })
        })
        .collect()
}

fn read_listen_config(config: peer_gateway_config::Reader<'_>) -> Result<ListenConfig> {
    let urls = config
        .get_listen_peer_urls()?
        .iter()
        .map(|u| text(u, "a listen-peer URL"))
        .collect::<Result<Vec<_>>>()?;
    let tls = config.get_tls()?;
    // etcd.conf leaves unset paths empty.
    let path = |t, what| -> Result<Option<PathBuf>> {
        let s = text(t, what)?;
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    };
    Ok(ListenConfig {
        urls,
        tls: TlsFiles {
            cert_file: path(tls.get_cert_file(), "the peer cert file")?,
            key_file: path(tls.get_key_file(), "the peer key file")?,
            trusted_ca_file: path(tls.get_trusted_ca_file(), "the peer trusted CA file")?,
            client_cert_auth: tls.get_client_cert_auth(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::member_capnp::{identity, peer_gateway_config};

    #[test]
    fn reads_members_and_config() {
        let mut message = capnp::message::Builder::new_default();
        let mut identity = message.init_root::<identity::Builder>();
        identity.set_member_id(1);
        let mut members = identity.init_members(2);
        {
            let mut m = members.reborrow().get(0);
            m.set_id(1);
            let mut urls = m.init_peer_urls(2);
            urls.set(0, "http://127.0.0.1:2380");
            urls.set(1, "http://127.0.0.1:2381");
        }
        members.reborrow().get(1).set_id(2);
        let peers = read_members(members.into_reader()).unwrap();
        assert_eq!(
            peers,
            vec![
                Peer {
                    id: 1,
                    urls: vec![
                        "http://127.0.0.1:2380".to_string(),
                        "http://127.0.0.1:2381".to_string()
                    ],
                },
                Peer {
                    id: 2,
                    urls: vec![]
                },
            ]
        );

        let mut message = capnp::message::Builder::new_default();
        let mut config = message.init_root::<peer_gateway_config::Builder>();
        config
            .reborrow()
            .init_listen_peer_urls(1)
            .set(0, "https://10.0.0.1:2380");
        let mut tls = config.reborrow().init_tls();
        tls.set_cert_file("/etc/peer.crt");
        tls.set_key_file("/etc/peer.key");
        tls.set_client_cert_auth(true);
        let listen = read_listen_config(config.into_reader()).unwrap();
        assert_eq!(listen.urls, vec!["https://10.0.0.1:2380".to_string()]);
        assert_eq!(listen.tls.cert_file, Some(PathBuf::from("/etc/peer.crt")));
        assert_eq!(listen.tls.key_file, Some(PathBuf::from("/etc/peer.key")));
        // Empty paths mean "not configured".
        assert_eq!(listen.tls.trusted_ca_file, None);
        assert!(listen.tls.client_cert_auth);
    }

    #[test]
    fn rejects_non_utf8_urls() {
        let mut message = capnp::message::Builder::new_default();
        let config = message.init_root::<peer_gateway_config::Builder>();
        let mut urls = config.init_listen_peer_urls(1);
        urls.set(0, capnp::text::Reader::from(&[0xff, 0xfe]));
        let config = message
            .get_root_as_reader::<peer_gateway_config::Reader>()
            .unwrap();
        let err = read_listen_config(config).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    // ------------------------------------------------------------ a stand-in consensus

    use std::time::Duration;

    use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
    use futures::AsyncReadExt;
    use tokio_util::compat::TokioAsyncReadCompatExt;

    use crate::transport::Events;

    const CLUSTER: u64 = 0x1a2b;
    const US: u64 = 1;
    const PEER: u64 = 2;
    const WAIT: Duration = Duration::from_secs(20);

    #[derive(Debug)]
    enum Seen {
        Registered(u32),
        Delivered(Vec<(u64, u64, bool, Vec<u8>)>),
        Unreachable(u64),
    }

    struct FakeRegistrar {
        refuse: bool,
        members: Vec<(u64, String)>,
        listen: String,
        seen: mpsc::UnboundedSender<Seen>,
        gateways: mpsc::UnboundedSender<peer_gateway::Client>,
    }

    impl peer_registrar::Server for FakeRegistrar {
        fn register(
            self: Rc<Self>,
            params: peer_registrar::RegisterParams,
            mut results: peer_registrar::RegisterResults,
        ) -> impl Future<Output = capnp::Result<()>> + 'static {
            ready((|| {
                let params = params.get()?;
                let _ = self.seen.send(Seen::Registered(params.get_version()));
                if self.refuse {
                    return Err(capnp::Error::failed(
                        "peer gateway protocol version 1 is not supported".to_string(),
                    ));
                }
                let _ = self.gateways.send(params.get_gateway()?);
                let mut reply = results.get();
                let mut identity = reply.reborrow().init_identity();
                identity.set_member_id(US);
                identity.set_cluster_id(CLUSTER);
                let mut members = identity.init_members(self.members.len() as u32);
                for (i, (id, url)) in self.members.iter().enumerate() {
                    let mut m = members.reborrow().get(i as u32);
                    m.set_id(*id);
                    m.init_peer_urls(1).set(0, url.as_str());
                }
                let mut config = reply.reborrow().init_config();
                config
                    .reborrow()
                    .init_listen_peer_urls(1)
                    .set(0, self.listen.as_str());
                reply.set_plane(capnp_rpc::new_client(FakePlane {
                    seen: self.seen.clone(),
                }));
                Ok(())
            })())
        }
    }

    struct FakePlane {
        seen: mpsc::UnboundedSender<Seen>,
    }

    impl peer_plane::Server for FakePlane {
        fn deliver(
            self: Rc<Self>,
            params: peer_plane::DeliverParams,
            _results: peer_plane::DeliverResults,
        ) -> impl Future<Output = capnp::Result<()>> + 'static {
            ready((|| {
                let mut got = Vec::new();
                for m in params.get()?.get_messages()?.iter() {
                    got.push((
                        m.get_to(),
                        m.get_from(),
                        m.get_is_snapshot(),
                        m.get_data()?.to_vec(),
                    ));
                }
                let _ = self.seen.send(Seen::Delivered(got));
                Ok(())
            })())
        }

        fn report_unreachable(
            self: Rc<Self>,
            params: peer_plane::ReportUnreachableParams,
            _results: peer_plane::ReportUnreachableResults,
        ) -> impl Future<Output = capnp::Result<()>> + 'static {
            ready(params.get().map(|p| {
                let _ = self.seen.send(Seen::Unreachable(p.get_member_id()));
            }))
        }
    }

    /// Serves `registrar` on `socket`; returns the tasks of the accepted connections so a test
    /// can cut them.
    fn serve(
        socket: &Path,
        registrar: peer_registrar::Client,
    ) -> mpsc::UnboundedReceiver<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_local(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (reader, writer) = stream.compat().split();
                let network = twoparty::VatNetwork::new(
                    futures::io::BufReader::new(reader),
                    futures::io::BufWriter::new(writer),
                    Side::Server,
                    Default::default(),
                );
                let rpc = RpcSystem::new(Box::new(network), Some(registrar.clone().client));
                let _ = tx.send(tokio::task::spawn_local(async move {
                    let _ = rpc.await;
                }));
            }
        });
        rx
    }

    fn free_udp_port() -> std::net::SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("consensus heard nothing in time")
            .expect("channel closed")
    }

    #[tokio::test]
    async fn carries_messages_between_consensus_and_a_peer_and_re_registers() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let socket = schema::peer_socket(dir.path());
                let gateway_addr = free_udp_port();
                // The other member: a bare transport.
                let (peer, mut peer_events) = Transport::start(TransportConfig {
                    cluster_id: CLUSTER,
                    member_id: PEER,
                    listen: vec!["127.0.0.1:0".parse().unwrap()],
                    members: vec![],
                    tls: tls::self_signed().unwrap(),
                })
                .unwrap();
                let peer_url = format!("http://{}", peer.local_addrs()[0]);
                let gateway_url = format!("http://{gateway_addr}");
                let table = vec![(US, gateway_url.clone()), (PEER, peer_url.clone())];
                peer.set_members(
                    table
                        .iter()
                        .map(|(id, url)| Peer {
                            id: *id,
                            urls: vec![url.clone()],
                        })
                        .collect(),
                );

                let (seen_tx, mut seen) = mpsc::unbounded_channel();
                let (gateways_tx, mut gateways) = mpsc::unbounded_channel();
                let registrar: peer_registrar::Client = capnp_rpc::new_client(FakeRegistrar {
                    refuse: false,
                    members: table,
                    listen: gateway_url,
                    seen: seen_tx,
                    gateways: gateways_tx,
                });
                let mut connections = serve(&socket, registrar);
                let gateway_task = tokio::task::spawn_local(run(socket.clone()));

                assert!(matches!(next(&mut seen).await, Seen::Registered(v) if v == schema::PROTOCOL_VERSION));
                let gateway = gateways.recv().await.unwrap();

                // Peer -> gateway -> consensus.
                let deadline = tokio::time::Instant::now() + WAIT;
                let delivered = loop {
                    assert!(tokio::time::Instant::now() < deadline, "never delivered");
                    let _ = peer.send(US, b"append".to_vec(), false);
                    match tokio::time::timeout(Duration::from_millis(200), seen.recv()).await {
                        Ok(Some(Seen::Delivered(batch))) => break batch,
                        Ok(Some(Seen::Unreachable(id))) => assert_eq!(id, PEER),
                        Err(_) => continue,
                        Ok(other) => panic!("unexpected {other:?}"),
                    }
                };
                assert_eq!(delivered[0], (US, PEER, false, b"append".to_vec()));

                // Consensus -> gateway -> peer.
                let deadline = tokio::time::Instant::now() + WAIT;
                loop {
                    assert!(tokio::time::Instant::now() < deadline, "never sent");
                    let mut request = gateway.send_request();
                    let mut list = request.get().init_messages(1);
                    let mut m = list.reborrow().get(0);
                    m.set_to(PEER);
                    m.set_from(US);
                    m.set_data(b"vote");
                    request.send().promise.await.unwrap();
                    let Events { inbound, .. } = &mut peer_events;
                    if let Ok(Some(m)) =
                        tokio::time::timeout(Duration::from_millis(200), inbound.recv()).await
                    {
                        assert_eq!((m.from, m.data.as_slice()), (US, &b"vote"[..]));
                        break;
                    }
                }

                // Consensus goes away: the gateway registers again by itself.
                connections.recv().await.unwrap().abort();
                loop {
                    match next(&mut seen).await {
                        Seen::Registered(_) => break,
                        Seen::Unreachable(id) => assert_eq!(id, PEER),
                        Seen::Delivered(_) => {}
                    }
                }
                assert!(!gateway_task.is_finished());
                gateway_task.abort();
            })
            .await;
    }

    #[tokio::test]
    async fn a_refused_registration_is_fatal() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let socket = schema::peer_socket(dir.path());
                let (seen_tx, _seen) = mpsc::unbounded_channel();
                let (gateways_tx, _gateways) = mpsc::unbounded_channel();
                let registrar: peer_registrar::Client = capnp_rpc::new_client(FakeRegistrar {
                    refuse: true,
                    members: vec![],
                    listen: String::new(),
                    seen: seen_tx,
                    gateways: gateways_tx,
                });
                let _connections = serve(&socket, registrar);
                let result = tokio::time::timeout(WAIT, run(socket)).await.unwrap();
                match result {
                    Err(Error::RegistrationRefused(e)) => {
                        assert!(e.to_string().contains("not supported"), "{e}")
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
            })
            .await;
    }
}
