//! Registering on consensus's `client.sock` ([`register`]): what consensus hands the gateway
//! (identity, listeners, TLS files, limits, and the `ClientPlane` to forward requests to), as
//! plain Rust values ([`Registration`]).

use std::path::Path;

use schema::member_capnp::{
    client_gateway_config, client_plane, client_registrar, identity, member,
};

use crate::error::Error;

/// etcd's default `--max-request-bytes` (1.5 MiB), used when consensus leaves it at 0.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1536 * 1024;
/// etcd's default `--max-txn-ops`, used when consensus leaves it at 0.
pub const DEFAULT_MAX_TXN_OPS: u32 = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub name: String,
    pub cluster_id: u64,
    pub members: Vec<Member>,
}

/// TLS file paths as written in etcd.conf; an empty string means "not configured".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    pub listen_client_urls: Vec<String>,
    pub tls: TlsFiles,
    /// Already defaulted: never 0.
    pub max_request_bytes: u64,
    /// Already defaulted: never 0.
    pub max_txn_ops: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub identity: Identity,
    pub config: GatewayConfig,
}

/// A live registration: the plane to call, and a receiver that fires (with the reason) when the
/// connection to consensus ends.
pub struct Registered {
    pub plane: client_plane::Client,
    pub registration: Registration,
    pub closed: schema::Connection,
}

/// Dials `socket` and registers with our protocol version. Must run inside a `LocalSet`.
pub async fn register(socket: &Path) -> Result<Registered, Error> {
    let (registrar, closed): (client_registrar::Client, _) =
        schema::dial(socket).await.map_err(|source| Error::Dial {
            path: socket.to_path_buf(),
            source,
        })?;
    let mut request = registrar.register_request();
    request.get().set_version(schema::PROTOCOL_VERSION);
    let reply = request.send().promise.await.map_err(Error::Register)?;
    let results = reply.get().map_err(Error::MalformedRegistration)?;
    let plane = results.get_plane().map_err(Error::MalformedRegistration)?;
    let registration = decode(
        results
            .get_identity()
            .map_err(Error::MalformedRegistration)?,
        results.get_config().map_err(Error::MalformedRegistration)?,
    )
    .map_err(Error::MalformedRegistration)?;
    Ok(Registered {
        plane,
        registration,
        closed,
    })
}

fn decode(
    identity: identity::Reader<'_>,
    config: client_gateway_config::Reader<'_>,
) -> capnp::Result<Registration> {
    let members = identity
        .get_members()?
        .iter()
        .map(decode_member)
        .collect::<capnp::Result<Vec<_>>>()?;
    let tls = config.get_tls()?;
    Ok(Registration {
        identity: Identity {
            member_id: identity.get_member_id(),
            name: identity.get_name()?.to_string()?,
            cluster_id: identity.get_cluster_id(),
            members,
        },
        config: GatewayConfig {
            listen_client_urls: text_list(config.get_listen_client_urls()?)?,
            tls: TlsFiles {
                cert_file: tls.get_cert_file()?.to_string()?,
                key_file: tls.get_key_file()?.to_string()?,
                trusted_ca_file: tls.get_trusted_ca_file()?.to_string()?,
                client_cert_auth: tls.get_client_cert_auth(),
            },
            max_request_bytes: match config.get_max_request_bytes() {
                0 => DEFAULT_MAX_REQUEST_BYTES,
                n => n,
            },
            max_txn_ops: match config.get_max_txn_ops() {
                0 => DEFAULT_MAX_TXN_OPS,
                n => n,
            },
        },
    })
}

fn decode_member(m: member::Reader<'_>) -> capnp::Result<Member> {
    Ok(Member {
        id: m.get_id(),
        name: m.get_name()?.to_string()?,
        peer_urls: text_list(m.get_peer_urls()?)?,
        client_urls: text_list(m.get_client_urls()?)?,
        is_learner: m.get_is_learner(),
    })
}

pub fn text_list(list: capnp::text_list::Reader<'_>) -> capnp::Result<Vec<String>> {
    list.iter()
        .map(|t| Ok(t?.to_string()?))
        .collect::<capnp::Result<Vec<_>>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::member_capnp::client_registrar::register_results;

    fn fill(mut r: register_results::Builder<'_>, max_bytes: u64, max_ops: u32) {
        let mut id = r.reborrow().init_identity();
        id.set_member_id(7);
        id.set_cluster_id(9);
        id.set_name("m1");
        let mut m = id.init_members(1).get(0);
        m.set_id(7);
        m.set_name("m1");
        m.reborrow()
            .init_peer_urls(1)
            .set(0, "https://10.0.0.1:2380");
        let mut c = m.reborrow().init_client_urls(2);
        c.set(0, "http://10.0.0.1:2379");
        c.set(1, "unix://s");
        m.set_is_learner(true);
        let mut cfg = r.init_config();
        cfg.reborrow()
            .init_listen_client_urls(1)
            .set(0, "http://0.0.0.0:2379");
        let mut tls = cfg.reborrow().init_tls();
        tls.set_cert_file("c.pem");
        tls.set_key_file("k.pem");
        tls.set_client_cert_auth(true);
        cfg.set_max_request_bytes(max_bytes);
        cfg.set_max_txn_ops(max_ops);
    }

    fn decoded(max_bytes: u64, max_ops: u32) -> Registration {
        let mut msg = capnp::message::Builder::new_default();
        fill(msg.init_root(), max_bytes, max_ops);
        let r = msg
            .get_root_as_reader::<register_results::Reader<'_>>()
            .unwrap();
        decode(r.get_identity().unwrap(), r.get_config().unwrap()).unwrap()
    }

    #[test]
    fn decodes_identity_and_config() {
        let reg = decoded(1000, 5);
        assert_eq!(reg.identity.member_id, 7);
        assert_eq!(reg.identity.cluster_id, 9);
        assert_eq!(reg.identity.name, "m1");
        assert_eq!(
            reg.identity.members,
            vec![Member {
                id: 7,
                name: "m1".into(),
                peer_urls: vec!["https://10.0.0.1:2380".into()],
                client_urls: vec!["http://10.0.0.1:2379".into(), "unix://s".into()],
                is_learner: true,
            }]
        );
        assert_eq!(reg.config.listen_client_urls, vec!["http://0.0.0.0:2379"]);
        assert_eq!(
            reg.config.tls,
            TlsFiles {
                cert_file: "c.pem".into(),
                key_file: "k.pem".into(),
                trusted_ca_file: String::new(),
                client_cert_auth: true,
            }
        );
        assert_eq!(reg.config.max_request_bytes, 1000);
        assert_eq!(reg.config.max_txn_ops, 5);
    }

    #[test]
    fn zero_limits_take_etcd_defaults() {
        let reg = decoded(0, 0);
        assert_eq!(reg.config.max_request_bytes, 1536 * 1024);
        assert_eq!(reg.config.max_txn_ops, 128);
    }
}
