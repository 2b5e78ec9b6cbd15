//! Registration: each gateway dials its plane's socket, proves its protocol version and
//! receives the member's identity and its own configuration ([`PeerRegistrar`],
//! [`ClientRegistrar`]); the two stream sockets are handed to the raft thread
//! ([`accept_streams`]).

use std::rc::Rc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use schema::member_capnp::{
    client_gateway_config, client_registrar, identity, peer_gateway_config, peer_registrar,
    tls_config,
};
use tracing::{info, warn};

use super::{ClientPlane, State, peer_uid_allowed};
use crate::cluster;
use crate::raft::command::Command;

/// TLS files as the gateways receive them.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
    /// `--peer-cert-allowed-cn` (peer TLS only; empty for clients).
    pub allowed_cns: Vec<String>,
    /// `--peer-cert-allowed-hostname` (peer TLS only; empty for clients).
    pub allowed_hostnames: Vec<String>,
}

/// What the gateways are told at registration besides the identity.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    pub listen_peer_urls: Vec<String>,
    pub peer_tls: TlsFiles,
    pub listen_client_urls: Vec<String>,
    pub client_tls: TlsFiles,
    pub max_request_bytes: u64,
    pub max_txn_ops: u32,
}

pub(super) fn fill_identity(state: &State, mut b: identity::Builder) {
    let id = &state.ctx.identity;
    b.set_member_id(id.member_id);
    b.set_cluster_id(id.cluster_id);
    b.set_name(id.name.as_str());
    let members = state.ctx.shared.members();
    let mut list = b.init_members(members.len() as u32);
    for (i, m) in members.iter().enumerate() {
        cluster::write_member(list.reborrow().get(i as u32), m);
    }
}

fn fill_tls(mut b: tls_config::Builder, t: &TlsFiles) {
    b.set_cert_file(t.cert_file.as_str());
    b.set_key_file(t.key_file.as_str());
    b.set_trusted_ca_file(t.trusted_ca_file.as_str());
    b.set_client_cert_auth(t.client_cert_auth);
    fill_texts(
        b.reborrow().init_allowed_cns(t.allowed_cns.len() as u32),
        &t.allowed_cns,
    );
    fill_texts(
        b.init_allowed_hostnames(t.allowed_hostnames.len() as u32),
        &t.allowed_hostnames,
    );
}

fn fill_texts(mut list: capnp::text_list::Builder, texts: &[String]) {
    for (i, t) in texts.iter().enumerate() {
        list.set(i as u32, t.as_str());
    }
}

fn check_version(version: u32) -> capnp::Result<()> {
    if version != schema::PROTOCOL_VERSION {
        return Err(capnp::Error::failed(format!(
            "protocol version {version} is not supported: consensus speaks version {}",
            schema::PROTOCOL_VERSION
        )));
    }
    Ok(())
}

pub(super) struct PeerRegistrar(pub(super) Rc<State>);

impl peer_registrar::Server for PeerRegistrar {
    /// Hands out the identity and the listen config. Raft messages then travel on `raft.sock`;
    /// `plane` stays null (protocol 1's calls are gone) and the gateway's capability is not kept,
    /// as the member table does not change yet, except to ask the other members about us while
    /// a start from an empty data dir waits for that ([`super::boot_check`]).
    async fn register(
        self: CapRc<Self>,
        params: peer_registrar::RegisterParams,
        mut results: peer_registrar::RegisterResults,
    ) -> capnp::Result<()> {
        let p = params.get()?;
        check_version(p.get_version())?;
        let state = &self.0;
        info!("peer gateway registered");
        if let Some(check) = &state.ctx.boot_check {
            match p.get_gateway() {
                Ok(gateway) => check.on_register(gateway),
                Err(e) => warn!("the peer gateway registered without its capability: {e}"),
            }
        }
        let mut r = results.get();
        fill_identity(state, r.reborrow().init_identity());
        let mut c: peer_gateway_config::Builder = r.reborrow().init_config();
        let g = &state.ctx.gateways;
        fill_texts(
            c.reborrow()
                .init_listen_peer_urls(g.listen_peer_urls.len() as u32),
            &g.listen_peer_urls,
        );
        c.set_max_request_bytes(g.max_request_bytes);
        fill_tls(c.init_tls(), &g.peer_tls);
        Ok(())
    }

    async fn snapshot_image(
        self: CapRc<Self>,
        params: peer_registrar::SnapshotImageParams,
        results: peer_registrar::SnapshotImageResults,
    ) -> capnp::Result<()> {
        super::snapshots::snapshot_image(&self.0, params, results).await
    }

    async fn receive_snapshot(
        self: CapRc<Self>,
        params: peer_registrar::ReceiveSnapshotParams,
        results: peer_registrar::ReceiveSnapshotResults,
    ) -> capnp::Result<()> {
        super::snapshots::receive_snapshot(&self.0, params, results).await
    }

    /// The member table as applied, for the gateway's answers to other members' cluster queries.
    async fn members(
        self: CapRc<Self>,
        _params: peer_registrar::MembersParams,
        mut results: peer_registrar::MembersResults,
    ) -> capnp::Result<()> {
        let members = self.0.ctx.shared.members();
        let mut list = results.get().init_members(members.len() as u32);
        for (i, m) in members.iter().enumerate() {
            cluster::write_member(list.reborrow().get(i as u32), m);
        }
        Ok(())
    }
}

/// Hands each connection to a stream socket (`raft.sock`, `write.sock`) to the raft thread,
/// which checks its hello and then reads and writes it itself.
pub(super) async fn accept_streams(
    listener: tokio::net::UnixListener,
    state: Rc<State>,
    socket: &'static str,
    command: fn(std::os::unix::net::UnixStream) -> Command,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("{socket}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(why) = peer_uid_allowed(&stream) {
            warn!("{socket}: refusing a connection: {why}");
            continue;
        }
        match stream.into_std() {
            Ok(stream) => {
                if state.send(command(stream)).is_err() {
                    return;
                }
            }
            Err(e) => warn!("{socket}: cannot take over a connection: {e}"),
        }
    }
}

pub(super) struct ClientRegistrar(pub(super) Rc<State>);

impl client_registrar::Server for ClientRegistrar {
    async fn register(
        self: CapRc<Self>,
        params: client_registrar::RegisterParams,
        mut results: client_registrar::RegisterResults,
    ) -> capnp::Result<()> {
        check_version(params.get()?.get_version())?;
        let state = &self.0;
        info!("client gateway registered");
        let mut r = results.get();
        fill_identity(state, r.reborrow().init_identity());
        let mut c: client_gateway_config::Builder = r.reborrow().init_config();
        let g = &state.ctx.gateways;
        fill_texts(
            c.reborrow()
                .init_listen_client_urls(g.listen_client_urls.len() as u32),
            &g.listen_client_urls,
        );
        c.set_max_request_bytes(g.max_request_bytes);
        c.set_max_txn_ops(g.max_txn_ops);
        fill_tls(c.init_tls(), &g.client_tls);
        r.set_plane(capnp_rpc::new_client(ClientPlane(state.clone())));
        Ok(())
    }
}
