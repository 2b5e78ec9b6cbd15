//! The gateway as a whole: wait for the first registration, open the listen-client URLs it names,
//! serve gRPC on them, and keep them open across re-registrations.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::error::Error;
use crate::grpc::{self, Limits};
use crate::link::Link;
use crate::listen::{ListenUrl, Listener};
use crate::registration::{GatewayConfig, Registration};
use crate::tls;

/// Runs until `shutdown` completes (Ok) or something fatal happens: the link thread stopping, a
/// listen URL that cannot be served, or a listener failing.
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
        let router = grpc::router(link, limits, config.max_request_bytes);
        let tls = if url.secure { acceptor.clone() } else { None };
        servers.spawn(crate::listen::serve(listener, url.url, tls, router));
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    //! A stand-in consensus serving `ClientRegistrar` on a Unix socket, driving the real link,
    //! gRPC services and listeners through a real gRPC client.

    use super::*;
    use crate::link;
    use crate::proto::etcdserverpb::{
        AlarmRequest, CompactionRequest, MemberListRequest, PutRequest, RangeRequest, RequestOp,
        StatusRequest, StatusResponse, TxnRequest, cluster_client::ClusterClient,
        kv_client::KvClient, maintenance_client::MaintenanceClient, request_op::Request,
    };
    use capnp::capability::Rc;
    use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
    use futures::AsyncReadExt;
    use schema::member_capnp::{client_plane, client_registrar};
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tokio_util::compat::TokioAsyncReadCompatExt;
    use tonic::Code;
    use tonic::transport::Channel;

    const CLUSTER: u64 = 0xc1;
    const MEMBER: u64 = 0x31;

    #[derive(Default)]
    struct FakePlane {
        kv: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
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

        async fn put(
            self: Rc<Self>,
            params: client_plane::PutParams,
            mut results: client_plane::PutResults,
        ) -> Result<(), capnp::Error> {
            let req = params.get()?.get_request()?;
            let mut kv = self.kv.borrow_mut();
            kv.insert(req.get_key()?.to_vec(), req.get_value()?.to_vec());
            let mut h = results.get().init_response().init_header();
            h.set_revision(kv.len() as i64);
            Ok(())
        }

        async fn delete_range(
            self: Rc<Self>,
            params: client_plane::DeleteRangeParams,
            mut results: client_plane::DeleteRangeResults,
        ) -> Result<(), capnp::Error> {
            let key = params.get()?.get_request()?.get_key()?.to_vec();
            let deleted = self.kv.borrow_mut().remove(&key).is_some();
            results
                .get()
                .init_response()
                .set_deleted(i64::from(deleted));
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

    struct FakeRegistrar {
        listen_url: String,
        tls: crate::registration::TlsFiles,
    }

    impl client_registrar::Server for FakeRegistrar {
        async fn register(
            self: Rc<Self>,
            params: client_registrar::RegisterParams,
            mut results: client_registrar::RegisterResults,
        ) -> Result<(), capnp::Error> {
            if params.get()?.get_version() != schema::PROTOCOL_VERSION {
                return Err(capnp::Error::failed("unsupported protocol version".into()));
            }
            let mut r = results.get();
            let mut id = r.reborrow().init_identity();
            id.set_member_id(MEMBER);
            id.set_cluster_id(CLUSTER);
            id.set_name("infra1");
            let mut cfg = r.reborrow().init_config();
            cfg.reborrow()
                .init_listen_client_urls(1)
                .set(0, self.listen_url.as_str());
            cfg.set_max_txn_ops(2);
            let mut tls = cfg.init_tls();
            tls.set_cert_file(self.tls.cert_file.as_str());
            tls.set_key_file(self.tls.key_file.as_str());
            tls.set_trusted_ca_file(self.tls.trusted_ca_file.as_str());
            tls.set_client_cert_auth(self.tls.client_cert_auth);
            r.set_plane(capnp_rpc::new_client(FakePlane::default()));
            Ok(())
        }
    }

    /// Serves the stand-in consensus until the returned sender is dropped, then closes the
    /// listener and every connection, as a consensus exit would.
    fn fake_consensus(path: PathBuf, listen_url: String) -> oneshot::Sender<()> {
        fake_consensus_tls(path, listen_url, Default::default())
    }

    fn fake_consensus_tls(
        path: PathBuf,
        listen_url: String,
        tls: crate::registration::TlsFiles,
    ) -> oneshot::Sender<()> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::task::spawn_local(async move {
            let registrar: client_registrar::Client =
                capnp_rpc::new_client(FakeRegistrar { listen_url, tls });
            let mut conns = JoinSet::new();
            let accept = async {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (reader, writer) = stream.compat().split();
                    let network = twoparty::VatNetwork::new(
                        futures::io::BufReader::new(reader),
                        futures::io::BufWriter::new(writer),
                        Side::Server,
                        Default::default(),
                    );
                    conns.spawn_local(RpcSystem::new(
                        Box::new(network),
                        Some(registrar.clone().client),
                    ));
                }
            };
            tokio::select! {
                () = accept => {}
                _ = stop_rx => {}
            }
            let _ = std::fs::remove_file(&path);
        });
        stop_tx
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
                // Consensus does not implement txn: the call fails, the gateway stays up.
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
                let tls = crate::registration::TlsFiles {
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
                let dir = tempfile::tempdir().unwrap();
                let socket = schema::client_socket(dir.path());
                let url = format!("http://127.0.0.1:{}", free_port());
                let _stop = fake_consensus(socket.clone(), url.clone());
                let (link, registrations) = link::spawn(socket).unwrap();
                tokio::spawn(run(link, registrations, std::future::pending()));
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
