//! The stand-in's registrars: each hands out the registration it was configured with.

use std::rc::Rc;

use crate::PROTOCOL_VERSION;
use crate::member_capnp::{
    client_plane, client_registrar, identity, member, peer_gateway, peer_registrar, response_header,
};

/// One row of the member table a registration carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Who the gateway is told it serves. Empty names and lists are left unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub members: Vec<Member>,
}

impl Identity {
    fn write(&self, mut dst: identity::Builder<'_>) {
        dst.set_member_id(self.member_id);
        dst.set_cluster_id(self.cluster_id);
        if !self.name.is_empty() {
            dst.set_name(self.name.as_str());
        }
        if self.members.is_empty() {
            return;
        }
        self.write_members(dst.init_members(len(self.members.len())));
    }

    fn write_members(&self, mut members: capnp::struct_list::Builder<'_, member::Owned>) {
        for (i, m) in self.members.iter().enumerate() {
            let mut out = members.reborrow().get(len(i));
            out.set_id(m.id);
            if !m.name.is_empty() {
                out.set_name(m.name.as_str());
            }
            set_texts(&m.peer_urls, |n| out.reborrow().init_peer_urls(n));
            set_texts(&m.client_urls, |n| out.reborrow().init_client_urls(n));
        }
    }

    /// Fills a response header with this member's and cluster's IDs.
    pub fn header(&self, mut h: response_header::Builder<'_>) {
        h.set_cluster_id(self.cluster_id);
        h.set_member_id(self.member_id);
    }
}

/// The TLS files a client gateway is told to serve with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
}

fn len(n: usize) -> u32 {
    u32::try_from(n).expect("a stand-in list fits a capnp list")
}

fn set_texts<'a>(texts: &[String], init: impl FnOnce(u32) -> capnp::text_list::Builder<'a>) {
    if texts.is_empty() {
        return;
    }
    let mut list = init(len(texts.len()));
    for (i, t) in texts.iter().enumerate() {
        list.set(len(i), t.as_str());
    }
}

fn check_version(version: u32, refuse: &Option<String>) -> Result<(), capnp::Error> {
    if let Some(why) = refuse {
        return Err(capnp::Error::failed(why.clone()));
    }
    if version != PROTOCOL_VERSION {
        return Err(capnp::Error::failed(
            "unsupported protocol version".to_string(),
        ));
    }
    Ok(())
}

/// `ClientRegistrar` on `client.sock`: refuses other protocol versions, and answers ours with
/// `identity`, the config fields set here, and `plane`.
pub struct ClientRegistrar {
    pub identity: Identity,
    pub listen_client_urls: Vec<String>,
    /// Left unset when `None`.
    pub tls: Option<Tls>,
    /// Left unset (the gateway's default) when `None`.
    pub max_txn_ops: Option<u32>,
    pub plane: client_plane::Client,
    /// Every registration refused with this message, if set.
    pub refuse: Option<String>,
    /// Told the protocol version of each registration, before it is answered.
    pub on_register: Option<Box<dyn Fn(u32)>>,
}

impl ClientRegistrar {
    /// A registrar for `identity` that tells the gateway to listen on `listen_client_url`.
    pub fn new(
        identity: Identity,
        listen_client_url: &str,
        plane: client_plane::Client,
    ) -> ClientRegistrar {
        ClientRegistrar {
            identity,
            listen_client_urls: vec![listen_client_url.to_string()],
            tls: None,
            max_txn_ops: None,
            plane,
            refuse: None,
            on_register: None,
        }
    }
}

impl client_registrar::Server for ClientRegistrar {
    async fn register(
        self: Rc<Self>,
        params: client_registrar::RegisterParams,
        mut results: client_registrar::RegisterResults,
    ) -> Result<(), capnp::Error> {
        let version = params.get()?.get_version();
        if let Some(tell) = &self.on_register {
            tell(version);
        }
        check_version(version, &self.refuse)?;
        let mut r = results.get();
        self.identity.write(r.reborrow().init_identity());
        let mut cfg = r.reborrow().init_config();
        set_texts(&self.listen_client_urls, |n| {
            cfg.reborrow().init_listen_client_urls(n)
        });
        if let Some(n) = self.max_txn_ops {
            cfg.set_max_txn_ops(n);
        }
        if let Some(files) = &self.tls {
            let mut tls = cfg.init_tls();
            tls.set_cert_file(files.cert_file.as_str());
            tls.set_key_file(files.key_file.as_str());
            tls.set_trusted_ca_file(files.trusted_ca_file.as_str());
            tls.set_client_cert_auth(files.client_cert_auth);
        }
        r.set_plane(self.plane.clone());
        Ok(())
    }
}

/// `PeerRegistrar` on `peer.sock`: refuses other protocol versions, and answers ours with
/// `identity` and `listen_peer_urls` (protocol 2 leaves `plane` null: raft messages travel on
/// `raft.sock`).
pub struct PeerRegistrar {
    pub identity: Identity,
    pub listen_peer_urls: Vec<String>,
    /// Every registration refused with this message, if set.
    pub refuse: Option<String>,
    /// Told the protocol version of each registration, before it is answered.
    pub on_register: Option<Box<dyn Fn(u32)>>,
    /// Given the `PeerGateway` of each registration that is answered.
    pub on_gateway: Option<Box<dyn Fn(peer_gateway::Client)>>,
}

impl PeerRegistrar {
    /// A registrar for `identity` that tells the gateway to listen on `listen_peer_url`.
    pub fn new(identity: Identity, listen_peer_url: &str) -> PeerRegistrar {
        PeerRegistrar {
            identity,
            listen_peer_urls: vec![listen_peer_url.to_string()],
            refuse: None,
            on_register: None,
            on_gateway: None,
        }
    }
}

impl peer_registrar::Server for PeerRegistrar {
    async fn register(
        self: Rc<Self>,
        params: peer_registrar::RegisterParams,
        mut results: peer_registrar::RegisterResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let version = params.get_version();
        if let Some(tell) = &self.on_register {
            tell(version);
        }
        check_version(version, &self.refuse)?;
        if let Some(give) = &self.on_gateway {
            give(params.get_gateway()?);
        }
        let mut reply = results.get();
        self.identity.write(reply.reborrow().init_identity());
        let mut cfg = reply.init_config();
        set_texts(&self.listen_peer_urls, |n| {
            cfg.reborrow().init_listen_peer_urls(n)
        });
        Ok(())
    }

    /// The member table of `identity`, as consensus answers it for peers' cluster queries.
    async fn members(
        self: Rc<Self>,
        _params: peer_registrar::MembersParams,
        mut results: peer_registrar::MembersResults,
    ) -> Result<(), capnp::Error> {
        let members = results.get().init_members(len(self.identity.members.len()));
        self.identity.write_members(members);
        Ok(())
    }
}
