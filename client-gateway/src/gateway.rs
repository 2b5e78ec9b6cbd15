//! The gateway as a whole: wait for the first registration, open the listen-client URLs it names,
//! serve gRPC on them, and keep them open across re-registrations.
//!
//! [`router`] puts the services of [`api`](crate::api) together for one listener, so the
//! services and the HTTP layer in front of them do not need to know each other.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};
use tracing::{info, warn};

use crate::api::cluster::ClusterService;
use crate::api::http::HttpApiLayer;
use crate::api::json;
use crate::api::kv::{KvService, Limits};
use crate::api::maintenance::MaintenanceService;
use crate::api::not_served::{self, NameMissing};
use crate::consensus::link::Link;
use crate::consensus::registration::{GatewayConfig, Registration};
use crate::error::Error;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, maintenance_server::MaintenanceServer,
};
use crate::serve::listen::{self, ListenUrl, Listener};
use crate::serve::tls;

/// etcd lets a gRPC message exceed `max-request-bytes` by this much (its gRPC overhead
/// allowance); the exact limit on the request itself is checked by each KV write.
const GRPC_OVERHEAD_BYTES: u64 = 512 * 1024;

/// KV messages up to this many times etcd's gRPC limit are still read, so that those over the
/// limit get grpc-go's answer (what etcd's clients show); larger ones get tonic's.
const OVERSIZE_READ_FACTOR: usize = 4;

/// The gRPC services of one listener, behind etcd's plain HTTP endpoints.
pub type ClientRouter = Router<Stack<HttpApiLayer, Identity>>;

/// The router for one listener: `/health`, `/version`, `/metrics` and the JSON gateway under
/// `/v3/` (HTTP/1.1 or HTTP/2), then gRPC, where what we do not serve yet says so by name
/// ([`not_served`]).
pub fn router(link: &Link, limits: &Arc<Limits>, max_request_bytes: u64) -> ClientRouter {
    let max_message = usize::try_from(max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES))
        .unwrap_or(usize::MAX);
    let kv = KvService {
        link: link.clone(),
        limits: limits.clone(),
        max_request_bytes,
        max_message,
    };
    let cluster = ClusterService { link: link.clone() };
    let maintenance = MaintenanceService { link: link.clone() };
    let json = json::Services {
        kv: kv.clone(),
        cluster: cluster.clone(),
        maintenance: maintenance.clone(),
    };
    Server::builder()
        .accept_http1(true)
        .layer(HttpApiLayer::new(link.clone(), json, max_message))
        .add_service(
            KvServer::new(kv)
                .max_decoding_message_size(max_message.saturating_mul(OVERSIZE_READ_FACTOR)),
        )
        .add_service(NameMissing(
            ClusterServer::new(cluster).max_decoding_message_size(max_message),
        ))
        .add_service(NameMissing(
            MaintenanceServer::new(maintenance).max_decoding_message_size(max_message),
        ))
        .add_service(not_served::Watch)
        .add_service(not_served::Lease)
        .add_service(not_served::Auth)
        .add_service(not_served::Election)
        .add_service(not_served::Lock)
}

/// Runs until `shutdown` completes (Ok) or something fatal happens: the link to consensus
/// stopping, a listen URL that cannot be served, or a listener failing.
pub async fn run(
    link: Link,
    mut registrations: mpsc::UnboundedReceiver<Registration>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let first = tokio::select! {
        r = registrations.recv() => r.ok_or(Error::LinkStopped)?,
        () = &mut shutdown => return Ok(()),
    };
    let limits = Arc::new(Limits::new(first.config.max_txn_ops));
    let mut servers = start(&first.config, &link, &limits).await?;
    loop {
        tokio::select! {
            r = registrations.recv() => {
                let reg = r.ok_or(Error::LinkStopped)?;
                limits.set_max_txn_ops(reg.config.max_txn_ops);
                if needs_restart(&first.config, &reg.config) {
                    warn!(
                        listen_client_urls = ?reg.config.listen_client_urls,
                        "consensus handed out different listeners, TLS files or request size \
                         limit; they take effect when the client gateway restarts"
                    );
                }
            }
            Some(done) = servers.join_next() => {
                return Err(match done {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => Error::Serve { url: "?".into(), reason: "server stopped".into() },
                    Err(e) => Error::Serve { url: "?".into(), reason: e.to_string() },
                });
            }
            () = &mut shutdown => {
                info!("shutting down");
                return Ok(());
            }
        }
    }
}

/// What is fixed once the listeners are up.
fn needs_restart(running: &GatewayConfig, offered: &GatewayConfig) -> bool {
    running.listen_client_urls != offered.listen_client_urls
        || running.tls != offered.tls
        || running.max_request_bytes != offered.max_request_bytes
}

/// Binds every URL first (so a bad one fails before any is served), then serves each.
async fn start(
    config: &GatewayConfig,
    link: &Link,
    limits: &Arc<Limits>,
) -> Result<JoinSet<Result<(), Error>>, Error> {
    let urls = config
        .listen_client_urls
        .iter()
        .map(|u| ListenUrl::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(Error::ListenUrl {
            url: String::new(),
            reason: "consensus handed out no listen-client-urls".into(),
        });
    }
    let acceptor = if urls.iter().any(|u| u.secure) {
        Some(tls::acceptor(&config.tls)?)
    } else {
        if !config.tls.cert_file.is_empty() {
            warn!("cert-file is set but no listen-client-url is https or unixs; serving plaintext");
        }
        None
    };
    let mut bound = Vec::with_capacity(urls.len());
    for url in urls {
        let listener = Listener::bind(&url).await?;
        bound.push((url, listener));
    }
    let mut servers = JoinSet::new();
    for (url, listener) in bound {
        match listener.local_addr() {
            Some(addr) => info!(url = %url.url, %addr, "serving etcd v3 gRPC"),
            None => info!(url = %url.url, "serving etcd v3 gRPC"),
        }
        let router = router(link, limits, config.max_request_bytes);
        let tls = if url.secure { acceptor.clone() } else { None };
        servers.spawn(serve(listener, url.url, tls, router));
    }
    Ok(servers)
}

/// Serves `router` on `listener` until the listener fails for good.
async fn serve(
    listener: Listener,
    url: String,
    tls: Option<TlsAcceptor>,
    router: ClientRouter,
) -> Result<(), Error> {
    router
        .serve_with_incoming(listen::incoming(listener, url.clone(), tls))
        .await
        .map_err(|e| Error::Serve {
            url,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    //! The stand-in consensus of `schema::testing`, serving `ClientRegistrar` on a Unix socket and
    //! the write stream on `write.sock` beside it, with a plane and write-stream answers of our
    //! own; the real link, gRPC services and listeners are driven through a real gRPC client.

    use super::*;
    use crate::consensus::link;
    use crate::proto::etcdserverpb::{
        AlarmRequest, CompactionRequest, DeleteRangeRequest, MemberListRequest, PutRequest,
        RangeRequest, RequestOp, StatusRequest, StatusResponse, TxnRequest,
        cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
        request_op::Request,
    };
    use capnp::capability::Rc;
    use schema::member_capnp::client_plane;
    use schema::testing::write_stream::{ConsensusEnd, Seen};
    use schema::testing::{ClientRegistrar, ClientStandIn, Identity, Tls};
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tonic::Code;
    use tonic::transport::Channel;

    const CLUSTER: u64 = 0xc1;
    const MEMBER: u64 = 0x31;

    /// The stand-in's store, shared by its plane and its write stream.
    type Store = std::rc::Rc<RefCell<BTreeMap<Vec<u8>, Vec<u8>>>>;

    /// Serves reads only: since protocol 3 writes arrive on the write stream, so a write that
    /// came here would fail UNIMPLEMENTED.
    #[derive(Default)]
    struct FakePlane {
        kv: Store,
        /// Read-only txns served.
        txns: std::rc::Rc<Cell<u32>>,
    }

    impl client_plane::Server for FakePlane {
        async fn range(
            self: Rc<Self>,
            params: client_plane::RangeParams,
            mut results: client_plane::RangeResults,
        ) -> Result<(), capnp::Error> {
            let key = params.get()?.get_request()?.get_key()?.to_vec();
            let kv = self.kv.borrow();
            let mut r = results.get().init_response();
            r.reborrow().init_header().set_revision(kv.len() as i64);
            if let Some(value) = kv.get(&key) {
                r.set_count(1);
                let mut out = r.init_kvs(1).get(0);
                out.set_key(&key);
                out.set_value(value);
            }
            Ok(())
        }

        /// A txn of ranges on single keys.
        async fn txn(
            self: Rc<Self>,
            params: client_plane::TxnParams,
            mut results: client_plane::TxnResults,
        ) -> Result<(), capnp::Error> {
            use schema::member_capnp::request_op;
            self.txns.set(self.txns.get() + 1);
            let ops = params.get()?.get_request()?.get_success()?;
            let kv = self.kv.borrow();
            let mut r = results.get().init_response();
            r.reborrow().init_header().set_revision(kv.len() as i64);
            r.set_succeeded(true);
            let mut responses = r.init_responses(ops.len());
            for (i, op) in ops.iter().enumerate() {
                let request_op::Range(range) = op.which()? else {
                    return Err(capnp::Error::failed("a write on the plane".into()));
                };
                let key = range?.get_key()?;
                let mut out = responses.reborrow().get(i as u32).init_range();
                if let Some(value) = kv.get(key) {
                    out.set_count(1);
                    let mut found = out.init_kvs(1).get(0);
                    found.set_key(key);
                    found.set_value(value);
                }
            }
            Ok(())
        }

        async fn compact(
            self: Rc<Self>,
            _params: client_plane::CompactParams,
            mut results: client_plane::CompactResults,
        ) -> Result<(), capnp::Error> {
            let mut e = results.get().init_error();
            e.set_code(schema::code::OUT_OF_RANGE);
            e.set_message("etcdserver: mvcc: required revision has been compacted");
            Ok(())
        }

        async fn member_list(
            self: Rc<Self>,
            _params: client_plane::MemberListParams,
            mut results: client_plane::MemberListResults,
        ) -> Result<(), capnp::Error> {
            let mut r = results.get().init_response();
            let mut h = r.reborrow().init_header();
            h.set_cluster_id(CLUSTER);
            h.set_member_id(MEMBER);
            let mut m = r.init_members(1).get(0);
            m.set_id(MEMBER);
            m.set_name("infra1");
            m.init_client_urls(1).set(0, "http://127.0.0.1:2379");
            Ok(())
        }

        async fn status(
            self: Rc<Self>,
            _params: client_plane::StatusParams,
            mut results: client_plane::StatusResults,
        ) -> Result<(), capnp::Error> {
            let mut r = results.get().init_response();
            r.reborrow().init_header().set_revision(7);
            r.set_version("3.6.0");
            r.set_leader(MEMBER);
            Ok(())
        }
    }

    /// What the stand-in saw, for tests that drive the write stream themselves.
    enum Event {
        Registered(u32),
        WriteStream(ConsensusEnd),
    }

    /// Who answers the write stream: the stand-in itself, on its store, or the test.
    enum Writes {
        Answer,
        Hand(tokio::sync::mpsc::UnboundedSender<Event>),
    }

    /// The stand-in's side of a write stream: checks hello, then applies puts and deletes to the
    /// store and refuses txns that write.
    async fn answer_writes(mut end: ConsensusEnd, kv: Store) {
        if end.next().await != Some(Seen::Hello(schema::PROTOCOL_VERSION)) {
            return;
        }
        while let Some(seen) = end.next().await {
            match seen {
                Seen::Put { id, key, value } => {
                    let revision = {
                        let mut kv = kv.borrow_mut();
                        kv.insert(key, value);
                        kv.len() as i64
                    };
                    end.reply(id, |r| r.init_put().init_header().set_revision(revision))
                        .await;
                }
                Seen::DeleteRange { id, key } => {
                    let deleted = kv.borrow_mut().remove(&key).is_some();
                    end.reply(id, |r| {
                        r.init_delete_range().set_deleted(i64::from(deleted))
                    })
                    .await;
                }
                Seen::Txn { id, .. } => {
                    end.refuse(
                        id,
                        schema::code::UNIMPLEMENTED,
                        "stand-in: txns that write are not implemented",
                    )
                    .await;
                }
                Seen::Hello(_) | Seen::Other => return,
            }
        }
    }

    /// Serves the stand-in consensus until the returned stand-in is dropped, which closes the
    /// listeners and every connection, as a consensus exit would.
    fn fake_consensus(path: PathBuf, listen_url: String) -> ClientStandIn {
        fake_consensus_tls(path, listen_url, Default::default())
    }

    /// A gateway serving plain http on a free port of 127.0.0.1 with the stand-in consensus
    /// behind it: its URL, and what keeps both running (the stand-in stops first).
    fn gateway_with_stand_in() -> (String, (ClientStandIn, tempfile::TempDir)) {
        let dir = tempfile::tempdir().unwrap();
        let socket = schema::client_socket(dir.path());
        let url = format!("http://127.0.0.1:{}", free_port());
        let stand_in = fake_consensus(socket.clone(), url.clone());
        let (link, registrations) = link::spawn(socket).unwrap();
        tokio::spawn(run(link, registrations, std::future::pending()));
        (url, (stand_in, dir))
    }

    fn fake_consensus_tls(path: PathBuf, listen_url: String, tls: Tls) -> ClientStandIn {
        serve(path, listen_url, tls, Writes::Answer, FakePlane::default())
    }

    /// A stand-in whose write streams the test answers itself: it reports each registration and
    /// hands over each `write.sock` connection. Also returns how many read-only txns its plane
    /// served.
    fn fake_consensus_by_hand(
        path: PathBuf,
        listen_url: String,
    ) -> (
        ClientStandIn,
        tokio::sync::mpsc::UnboundedReceiver<Event>,
        std::rc::Rc<Cell<u32>>,
    ) {
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let plane = FakePlane::default();
        let txns = plane.txns.clone();
        let stop = serve(
            path,
            listen_url,
            Default::default(),
            Writes::Hand(events_tx),
            plane,
        );
        (stop, events, txns)
    }

    fn serve(
        path: PathBuf,
        listen_url: String,
        tls: Tls,
        writes: Writes,
        plane: FakePlane,
    ) -> ClientStandIn {
        let kv = plane.kv.clone();
        let identity = Identity {
            member_id: MEMBER,
            cluster_id: CLUSTER,
            name: "infra1".into(),
            members: vec![],
        };
        let mut registrar =
            ClientRegistrar::new(identity, &listen_url, capnp_rpc::new_client(plane));
        registrar.tls = Some(tls);
        registrar.max_txn_ops = Some(2);
        let stand_in = match writes {
            Writes::Answer => {
                ClientStandIn::serve(&path, capnp_rpc::new_client(registrar), move |stream| {
                    answer_writes(ConsensusEnd::new(stream), kv.clone())
                })
            }
            Writes::Hand(events) => {
                let registered = events.clone();
                registrar.on_register = Some(Box::new(move |version| {
                    let _ = registered.send(Event::Registered(version));
                }));
                ClientStandIn::serve(&path, capnp_rpc::new_client(registrar), move |stream| {
                    let _ = events.send(Event::WriteStream(ConsensusEnd::new(stream)));
                    std::future::ready(())
                })
            }
        };
        stand_in.unwrap()
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    async fn connect(url: &str) -> Channel {
        for _ in 0..250 {
            if let Ok(c) = Channel::from_shared(url.to_string())
                .unwrap()
                .connect()
                .await
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway never listened on {url}");
    }

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    fn get(key: &str) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_etcd_grpc_through_consensus_and_survives_its_restart() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let socket = schema::client_socket(dir.path());
                let url = format!("http://127.0.0.1:{}", free_port());

                // The gateway starts before consensus and waits for it.
                let (link, registrations) = link::spawn(socket.clone()).unwrap();
                let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
                let gateway = tokio::spawn(run(link, registrations, async {
                    let _ = shutdown_rx.await;
                }));
                tokio::time::sleep(Duration::from_millis(200)).await;
                let stop = fake_consensus(socket.clone(), url.clone());

                let channel = connect(&url).await;
                let mut kv = KvClient::new(channel.clone());
                let put_resp = kv.put(put("foo", "bar")).await.unwrap().into_inner();
                let h = put_resp.header.unwrap();
                assert_eq!(
                    (h.cluster_id, h.member_id, h.revision),
                    (CLUSTER, MEMBER, 1)
                );
                let got = kv.range(get("foo")).await.unwrap().into_inner();
                assert_eq!(got.count, 1);
                assert_eq!(got.kvs[0].value, b"bar");

                // Refused here, as etcd's gRPC layer would.
                let err = kv.range(get("")).await.unwrap_err();
                assert_eq!(err.code(), Code::InvalidArgument);
                assert_eq!(err.message(), "etcdserver: key is not provided");
                // max_txn_ops comes from the registration (2 here).
                let op = |k: &str| RequestOp {
                    request: Some(Request::RequestPut(put(k, "v"))),
                };
                let txn = TxnRequest {
                    compare: vec![],
                    success: vec![op("a"), op("b"), op("c")],
                    failure: vec![],
                };
                let err = kv.txn(txn).await.unwrap_err();
                assert_eq!(
                    err.message(),
                    "etcdserver: too many operations in txn request"
                );

                // Refused by consensus: its code and message reach the client unchanged.
                let err = kv
                    .compact(CompactionRequest {
                        revision: 1,
                        physical: false,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), Code::OutOfRange);
                assert_eq!(
                    err.message(),
                    "etcdserver: mvcc: required revision has been compacted"
                );
                // Consensus refuses a txn that writes (on the write stream): its code reaches the
                // client, the gateway stays up.
                let txn = TxnRequest {
                    compare: vec![],
                    success: vec![op("a")],
                    failure: vec![],
                };
                assert_eq!(kv.txn(txn).await.unwrap_err().code(), Code::Unimplemented);

                let members = ClusterClient::new(channel.clone())
                    .member_list(MemberListRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(members.members.len(), 1);
                assert_eq!(members.members[0].name, "infra1");
                assert_eq!(
                    members.members[0].client_urls,
                    vec!["http://127.0.0.1:2379"]
                );

                let mut maintenance = MaintenanceClient::new(channel.clone());
                let status = maintenance
                    .status(StatusRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!((status.version.as_str(), status.leader), ("3.6.0", MEMBER));
                let alarms = maintenance
                    .alarm(AlarmRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                assert!(alarms.alarms.is_empty());
                assert_eq!(alarms.header.unwrap().revision, 7);
                let activate = AlarmRequest {
                    action: 1,
                    ..Default::default()
                };
                assert_eq!(
                    maintenance.alarm(activate).await.unwrap_err().code(),
                    Code::Unimplemented
                );

                // A service the contract does not cover yet.
                let mut raw = tonic::client::Grpc::new(channel.clone());
                raw.ready().await.unwrap();
                let err = raw
                    .unary(
                        tonic::Request::new(StatusRequest {}),
                        tonic::codegen::http::uri::PathAndQuery::from_static(
                            "/etcdserverpb.Lease/LeaseGrant",
                        ),
                        tonic_prost::ProstCodec::<StatusRequest, StatusResponse>::default(),
                    )
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), Code::Unimplemented);

                // Consensus goes away: the listener stays, requests fail UNAVAILABLE.
                drop(stop);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let err = kv.range(get("foo")).await.unwrap_err();
                assert_eq!(err.code(), Code::Unavailable);

                // It comes back (fresh state): the gateway re-registers by itself.
                let stop = fake_consensus(socket.clone(), url.clone());
                let got = kv.range(get("foo")).await.unwrap().into_inner();
                assert_eq!(got.count, 0);
                kv.put(put("foo", "again")).await.unwrap();
                let got = kv.range(get("foo")).await.unwrap().into_inner();
                assert_eq!(got.kvs[0].value, b"again");

                // A request made while consensus is away succeeds if it returns soon enough.
                drop(stop);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let pending = tokio::spawn({
                    let mut kv = kv.clone();
                    async move { kv.put(put("during", "outage")).await }
                });
                tokio::time::sleep(Duration::from_millis(300)).await;
                let stop = fake_consensus(socket.clone(), url.clone());
                pending.await.unwrap().unwrap();
                let got = kv.range(get("during")).await.unwrap().into_inner();
                assert_eq!(got.kvs[0].value, b"outage");

                shutdown_tx.send(()).unwrap();
                gateway.await.unwrap().unwrap();
                drop(stop);
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_listen_url_that_cannot_be_served_is_fatal() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let socket = schema::client_socket(dir.path());
                // https without any TLS files.
                let _stop = fake_consensus(socket.clone(), "https://127.0.0.1:0".into());
                let (link, registrations) = link::spawn(socket).unwrap();
                let result = run(link, registrations, std::future::pending()).await;
                assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
            })
            .await;
    }

    /// etcdctl prints the message of an UNIMPLEMENTED answer, so it names what is missing: a
    /// whole service (Watch, Lease) or a method of a service we serve (Snapshot, MemberAdd).
    #[tokio::test(flavor = "current_thread")]
    async fn what_is_not_served_yet_says_so_by_name() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (url, _running) = gateway_with_stand_in();
                let channel = connect(&url).await;
                let mut raw = tonic::client::Grpc::new(channel.clone());
                for (path, method) in [
                    ("/etcdserverpb.Watch/Watch", "Watch"),
                    ("/etcdserverpb.Lease/LeaseGrant", "LeaseGrant"),
                    ("/etcdserverpb.Auth/AuthEnable", "AuthEnable"),
                    ("/v3lockpb.Lock/Lock", "Lock"),
                    ("/etcdserverpb.Maintenance/Hash", "Hash"),
                    ("/etcdserverpb.Cluster/MemberAdd", "MemberAdd"),
                ] {
                    raw.ready().await.unwrap();
                    let err = raw
                        .unary(
                            tonic::Request::new(StatusRequest {}),
                            tonic::codegen::http::uri::PathAndQuery::from_static(path),
                            tonic_prost::ProstCodec::<StatusRequest, StatusResponse>::default(),
                        )
                        .await
                        .unwrap_err();
                    assert_eq!(err.code(), Code::Unimplemented, "{path}");
                    assert_eq!(
                        err.message(),
                        format!("etcdserver: {method} is not served yet"),
                        "{path}"
                    );
                }
                // What we serve is untouched, refusals keep their own message.
                let mut maintenance = MaintenanceClient::new(channel.clone());
                maintenance.status(StatusRequest {}).await.unwrap();
                let activate = AlarmRequest {
                    action: 1,
                    ..Default::default()
                };
                let err = maintenance.alarm(activate).await.unwrap_err();
                assert_eq!(err.code(), Code::Unimplemented);
                assert!(err.message().contains("alarms"), "{}", err.message());
            })
            .await;
    }

    async fn event(events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the stand-in saw nothing in time")
            .expect("the stand-in stopped")
    }

    /// A registration with our version, then a write stream whose first frame is our hello.
    async fn registered_and_connected(
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    ) -> ConsensusEnd {
        match event(events).await {
            Event::Registered(v) => assert_eq!(v, schema::PROTOCOL_VERSION),
            Event::WriteStream(_) => panic!("a write stream before registering"),
        }
        let mut end = match event(events).await {
            Event::WriteStream(end) => end,
            Event::Registered(_) => panic!("registered again instead of connecting"),
        };
        assert_eq!(seen(&mut end).await, Seen::Hello(schema::PROTOCOL_VERSION));
        end
    }

    async fn seen(end: &mut ConsensusEnd) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), end.next())
            .await
            .expect("the gateway sent nothing in time")
            .expect("the gateway closed the write stream")
    }

    /// Writes go over `write.sock` and their replies, responses or refusals, reach the gRPC
    /// client; a read-only txn stays a `ClientPlane` call; losing the write stream with a write
    /// in flight fails that write UNAVAILABLE and makes the gateway register again.
    #[tokio::test(flavor = "current_thread")]
    async fn writes_travel_on_the_write_stream_and_survive_losing_it() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let socket = schema::client_socket(dir.path());
                let url = format!("http://127.0.0.1:{}", free_port());
                let (stop, mut events, plane_txns) =
                    fake_consensus_by_hand(socket.clone(), url.clone());
                let (link, registrations) = link::spawn(socket).unwrap();
                tokio::spawn(run(link, registrations, std::future::pending()));
                let mut end = registered_and_connected(&mut events).await;
                let mut kv = KvClient::new(connect(&url).await);

                // A put arrives as a request frame; the reply's response reaches the client, its
                // header completed with the registration's IDs.
                let pending = tokio::spawn({
                    let mut kv = kv.clone();
                    async move { kv.put(put("foo", "bar")).await }
                });
                let Seen::Put { id, key, value } = seen(&mut end).await else {
                    panic!("expected a put");
                };
                assert_eq!(
                    (key.as_slice(), value.as_slice()),
                    (&b"foo"[..], &b"bar"[..])
                );
                end.reply(id, |r| {
                    let mut p = r.init_put();
                    p.reborrow().init_header().set_revision(9);
                    let mut prev = p.init_prev_kv();
                    prev.set_key(b"foo");
                    prev.set_value(b"old");
                })
                .await;
                let resp = pending.await.unwrap().unwrap().into_inner();
                let h = resp.header.unwrap();
                assert_eq!(
                    (h.cluster_id, h.member_id, h.revision),
                    (CLUSTER, MEMBER, 9)
                );
                assert_eq!(resp.prev_kv.unwrap().value, b"old");

                // A refusal reaches the client with consensus's code and message.
                let pending = tokio::spawn({
                    let mut kv = kv.clone();
                    async move { kv.put(put("leased", "v")).await }
                });
                let Seen::Put { id: refused, .. } = seen(&mut end).await else {
                    panic!("expected a put");
                };
                assert_ne!(refused, id);
                end.refuse(
                    refused,
                    schema::code::NOT_FOUND,
                    "etcdserver: requested lease not found",
                )
                .await;
                let err = pending.await.unwrap().unwrap_err();
                assert_eq!(err.code(), Code::NotFound);
                assert_eq!(err.message(), "etcdserver: requested lease not found");

                // A read-only txn is a plane call: nothing on the stream (the next frame there
                // is the write txn below).
                let range_op = RequestOp {
                    request: Some(Request::RequestRange(get("foo"))),
                };
                let txn = TxnRequest {
                    compare: vec![],
                    success: vec![range_op],
                    failure: vec![],
                };
                let resp = kv.txn(txn).await.unwrap().into_inner();
                assert!(resp.succeeded);
                assert_eq!(plane_txns.get(), 1);

                // A txn that writes and a delete take the stream.
                let pending = tokio::spawn({
                    let mut kv = kv.clone();
                    let op = RequestOp {
                        request: Some(Request::RequestPut(put("t", "v"))),
                    };
                    async move {
                        kv.txn(TxnRequest {
                            compare: vec![],
                            success: vec![op],
                            failure: vec![],
                        })
                        .await
                    }
                });
                let Seen::Txn { id, success: 1 } = seen(&mut end).await else {
                    panic!("expected a txn with one op");
                };
                end.reply(id, |r| r.init_txn().set_succeeded(true)).await;
                assert!(pending.await.unwrap().unwrap().into_inner().succeeded);
                let pending = tokio::spawn({
                    let mut kv = kv.clone();
                    async move {
                        kv.delete_range(DeleteRangeRequest {
                            key: b"foo".to_vec(),
                            ..Default::default()
                        })
                        .await
                    }
                });
                let Seen::DeleteRange { id, key } = seen(&mut end).await else {
                    panic!("expected a deleteRange");
                };
                assert_eq!(key, b"foo");
                end.reply(id, |r| r.init_delete_range().set_deleted(1))
                    .await;
                assert_eq!(pending.await.unwrap().unwrap().into_inner().deleted, 1);
                assert_eq!(plane_txns.get(), 1);

                // The stand-in closes write.sock with a put in flight: it fails UNAVAILABLE.
                let pending = tokio::spawn({
                    let mut kv = kv.clone();
                    async move { kv.put(put("lost", "v")).await }
                });
                assert!(matches!(seen(&mut end).await, Seen::Put { .. }));
                drop(end);
                let err = pending.await.unwrap().unwrap_err();
                assert_eq!(err.code(), Code::Unavailable);
                assert!(
                    err.message().contains("lost the connection to consensus"),
                    "{}",
                    err.message()
                );

                // The gateway registers again, connects a new stream, and writes work again.
                let mut end = registered_and_connected(&mut events).await;
                let pending = tokio::spawn(async move { kv.put(put("again", "v")).await });
                let Seen::Put { id, key, .. } = seen(&mut end).await else {
                    panic!("expected a put");
                };
                assert_eq!(key, b"again");
                end.reply(id, |r| r.init_put().init_header().set_revision(10))
                    .await;
                let resp = pending.await.unwrap().unwrap().into_inner();
                assert_eq!(resp.header.unwrap().revision, 10);
                drop(stop);
            })
            .await;
    }

    /// A registration whose write stream cannot be connected is never used: the gateway
    /// registers again until the stream is there.
    #[tokio::test(flavor = "current_thread")]
    async fn without_a_write_stream_the_gateway_registers_again() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let socket = schema::client_socket(dir.path());
                let write_socket = schema::write_socket_beside(&socket);
                let url = format!("http://127.0.0.1:{}", free_port());
                let (_stop, mut events, _) = fake_consensus_by_hand(socket.clone(), url.clone());
                std::fs::remove_file(&write_socket).unwrap();
                let (link, registrations) = link::spawn(socket).unwrap();
                tokio::spawn(run(link, registrations, std::future::pending()));
                for _ in 0..2 {
                    match event(&mut events).await {
                        Event::Registered(v) => assert_eq!(v, schema::PROTOCOL_VERSION),
                        Event::WriteStream(_) => panic!("connected a removed socket"),
                    }
                }

                // write.sock is back: a later registration connects it and serves writes.
                let listener = tokio::net::UnixListener::bind(&write_socket).unwrap();
                let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                    .await
                    .expect("the gateway did not connect write.sock")
                    .unwrap();
                let mut end = ConsensusEnd::new(stream);
                assert_eq!(seen(&mut end).await, Seen::Hello(schema::PROTOCOL_VERSION));
                let mut kv = KvClient::new(connect(&url).await);
                let pending = tokio::spawn(async move { kv.put(put("k", "v")).await });
                let Seen::Put { id, .. } = seen(&mut end).await else {
                    panic!("expected a put");
                };
                end.reply(id, |r| r.init_put().init_header().set_revision(3))
                    .await;
                let resp = pending.await.unwrap().unwrap().into_inner();
                assert_eq!(resp.header.unwrap().revision, 3);
            })
            .await;
    }

    fn etcdctl_installed() -> bool {
        match std::process::Command::new("etcdctl")
            .arg("version")
            .output()
        {
            Ok(out) => out.status.success(),
            Err(_) => {
                eprintln!("etcdctl not installed: skipping");
                false
            }
        }
    }

    async fn etcdctl(args: Vec<String>) -> (bool, String) {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg("--command-timeout=5s")
                .args(args)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        })
        .await
        .unwrap()
    }

    /// etcdctl over https with client certificates: Go's TLS stack, ALPN and client-cert-auth.
    #[tokio::test(flavor = "current_thread")]
    async fn etcdctl_over_tls_with_client_certificates() {
        if !etcdctl_installed() {
            return;
        }
        tokio::task::LocalSet::new()
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let ca_key = rcgen::KeyPair::generate().unwrap();
                let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                let ca = ca_params.self_signed(&ca_key).unwrap();
                let issuer = rcgen::Issuer::new(ca_params, ca_key);
                let leaf = |san: &str| {
                    let key = rcgen::KeyPair::generate().unwrap();
                    let cert = rcgen::CertificateParams::new(vec![san.to_string()])
                        .unwrap()
                        .signed_by(&key, &issuer)
                        .unwrap();
                    (cert.pem(), key.serialize_pem())
                };
                let write = |name: &str, pem: &str| {
                    let p = dir.path().join(name);
                    std::fs::write(&p, pem).unwrap();
                    p.display().to_string()
                };
                let ca_file = write("ca.pem", &ca.pem());
                let (server_cert, server_key) = leaf("127.0.0.1");
                let (client_cert, client_key) = leaf("client");
                let tls = Tls {
                    cert_file: write("server.pem", &server_cert),
                    key_file: write("server-key.pem", &server_key),
                    trusted_ca_file: ca_file.clone(),
                    client_cert_auth: true,
                };
                let client_cert = write("client.pem", &client_cert);
                let client_key = write("client-key.pem", &client_key);

                let socket = schema::client_socket(dir.path());
                let port = free_port();
                let url = format!("https://127.0.0.1:{port}");
                let _stop = fake_consensus_tls(socket.clone(), url.clone(), tls);
                let (link, registrations) = link::spawn(socket).unwrap();
                tokio::spawn(run(link, registrations, std::future::pending()));
                // Wait for the TCP listener (a plain connect is enough to see it is up).
                for _ in 0..250 {
                    if tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }

                let args = |extra: &[&str], with_cert: bool| {
                    let mut a = vec![format!("--endpoints={url}"), format!("--cacert={ca_file}")];
                    if with_cert {
                        a.push(format!("--cert={client_cert}"));
                        a.push(format!("--key={client_key}"));
                    }
                    a.extend(extra.iter().map(|s| s.to_string()));
                    a
                };
                let (ok, text) = etcdctl(args(&["put", "k", "v"], true)).await;
                assert!(ok, "{text}");
                let (ok, text) = etcdctl(args(&["get", "k", "--print-value-only"], true)).await;
                assert!(ok, "{text}");
                assert_eq!(text, "v\n");
                let (ok, text) = etcdctl(args(&["endpoint", "status"], true)).await;
                assert!(ok, "{text}");
                // Without a client certificate the handshake is refused.
                let (ok, _) = etcdctl(args(&["--dial-timeout=1s", "get", "k"], false)).await;
                assert!(!ok);
            })
            .await;
    }

    /// Runs the real etcdctl (a Go gRPC client) against the gateway, to catch wire mismatches.
    #[tokio::test(flavor = "current_thread")]
    async fn etcdctl_speaks_to_the_gateway() {
        if !etcdctl_installed() {
            return;
        }
        tokio::task::LocalSet::new()
            .run_until(async {
                let (url, _running) = gateway_with_stand_in();
                drop(connect(&url).await);

                let etcdctl = |args: &[&str]| {
                    let mut all = vec![format!("--endpoints={url}")];
                    all.extend(args.iter().map(|s| s.to_string()));
                    etcdctl(all)
                };
                let ok = |(success, text): (bool, String)| {
                    assert!(success, "etcdctl failed: {text}");
                    text
                };

                assert_eq!(ok(etcdctl(&["put", "foo", "bar"]).await).trim(), "OK");
                assert_eq!(ok(etcdctl(&["get", "foo"]).await), "foo\nbar\n");
                let members = ok(etcdctl(&["member", "list"]).await);
                assert!(members.contains("31, started, infra1"), "{members}");
                let status = ok(etcdctl(&["endpoint", "status"]).await);
                assert!(status.contains("3.6.0"), "{status}");
                let health = ok(etcdctl(&["endpoint", "health"]).await);
                assert!(health.contains("is healthy"), "{health}");
                assert_eq!(ok(etcdctl(&["del", "foo"]).await).trim(), "1");
                assert_eq!(ok(etcdctl(&["get", "foo"]).await), "");

                let (success, text) = etcdctl(&["compaction", "1"]).await;
                assert!(!success);
                assert!(
                    text.contains("required revision has been compacted"),
                    "{text}"
                );
                let (success, text) = etcdctl(&["put", "", "x"]).await;
                assert!(!success);
                assert!(text.contains("key is not provided"), "{text}");
            })
            .await;
    }

    /// What a user of etcdctl sees for what we do not serve yet: its name, not an empty message.
    #[tokio::test(flavor = "current_thread")]
    async fn etcdctl_names_what_is_not_served_yet() {
        if !etcdctl_installed() {
            return;
        }
        tokio::task::LocalSet::new()
            .run_until(async {
                let (url, _running) = gateway_with_stand_in();
                drop(connect(&url).await);
                for (args, method) in [
                    (&["lease", "grant", "10"][..], "LeaseGrant"),
                    (&["watch", "foo"][..], "Watch"),
                ] {
                    let mut all = vec![format!("--endpoints={url}")];
                    all.extend(args.iter().map(|s| s.to_string()));
                    let (success, text) =
                        tokio::time::timeout(Duration::from_secs(20), etcdctl(all))
                            .await
                            .expect("etcdctl did not give up");
                    assert!(!success, "{text}");
                    assert!(
                        text.contains(&format!(
                            "code = Unimplemented desc = etcdserver: {method} is not served yet"
                        )),
                        "{text}"
                    );
                }
            })
            .await;
    }

    #[test]
    fn only_listener_settings_need_a_restart() {
        let base = GatewayConfig {
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            tls: Default::default(),
            max_request_bytes: 10,
            max_txn_ops: 128,
        };
        let mut other = base.clone();
        other.max_txn_ops = 5;
        assert!(!needs_restart(&base, &other));
        other.max_request_bytes = 11;
        assert!(needs_restart(&base, &other));
        let mut other = base.clone();
        other.listen_client_urls.push("unix://x".into());
        assert!(needs_restart(&base, &other));
    }
}
