//! TLS for peer traffic: the rustls configs the QUIC endpoints use, from etcd's peer TLS files or,
//! without them, from an ephemeral self-signed certificate (encrypted but not authenticated).
//! [`allowed`] narrows the trusted CA's certificates to those of an allowed CN or hostname.

mod allowed;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::counters::Counters;
use crate::error::{Error, Result};
pub use allowed::Restriction;
use allowed::{Allowed, ClientCheck, ServerCheck};

/// The ALPN protocol of our peer traffic; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"etcd-rs-peer/1";

/// The peer TLS files from the member's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    /// `--peer-cert-allowed-cn` or `--peer-cert-allowed-hostname`.
    pub allowed: Restriction,
}

/// Server and client side of one member's peer TLS.
#[derive(Clone, Debug)]
pub struct PeerTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    /// Where the verifiers count refused certificates; the transport counts into it too.
    pub counters: Arc<Counters>,
}

/// Builds the peer TLS configs from the configured files, or a self-signed setup without them.
pub fn configure(files: &TlsFiles) -> Result<PeerTls> {
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => from_files(cert, key, files),
        (None, None) => {
            if files.trusted_ca_file.is_some() || files.client_cert_auth {
                return Err(Error::Tls(
                    "a peer trusted CA file or client-cert-auth needs a peer cert and key file"
                        .to_string(),
                ));
            }
            if !files.allowed.is_any() {
                // Consensus's configuration already warned that it has no effect here.
                tracing::debug!("no peer certificate: ignoring {}", files.allowed.setting());
            }
            self_signed()
        }
        (Some(_), None) => Err(Error::Tls(
            "a peer cert file is configured without a key file".to_string(),
        )),
        (None, Some(_)) => Err(Error::Tls(
            "a peer key file is configured without a cert file".to_string(),
        )),
    }
}

fn from_files(cert: &Path, key: &Path, files: &TlsFiles) -> Result<PeerTls> {
    let chain = load_certs(cert, "peer certificate")?;
    let key_der = load_key(key)?;
    // Without a CA nothing could tell a member's certificate from anyone's: fail closed, as
    // etcd does (it verifies against the system's roots, which reject a cluster's own CA).
    let Some(ca) = &files.trusted_ca_file else {
        return Err(Error::Tls(format!(
            "peer certificate {} without a peer trusted CA file would accept any peer: set \
             --peer-trusted-ca-file (ETCD_PEER_TRUSTED_CA_FILE)",
            cert.display()
        )));
    };
    let roots = Some(load_certs(ca, "peer trusted CA")?);
    if !files.client_cert_auth && files.allowed.is_any() {
        tracing::warn!(
            "peers that connect to us are not authenticated: --peer-client-cert-auth is off, so \
             anyone who can reach the peer port can claim to be a member"
        );
    } else if !files.client_cert_auth {
        // etcd asks connecting peers for a certificate whenever a peer trusted CA is set; an
        // allowed CN or hostname has nothing to check without one.
        tracing::info!(
            "connecting peers must present a certificate of the trusted CA for {}, although \
             --peer-client-cert-auth is off",
            files.allowed.setting()
        );
    }
    from_parts(
        chain,
        key_der,
        roots,
        files.client_cert_auth,
        &files.allowed,
    )
    .map_err(|e| match e {
        Error::Tls(reason) => Error::TlsFileInvalid {
            what: "peer certificate",
            path: cert.to_path_buf(),
            reason,
        },
        other => other,
    })
}

/// An ephemeral self-signed certificate: peers encrypt but accept any certificate.
pub fn self_signed() -> Result<PeerTls> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| Error::Tls(format!("cannot generate a self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    from_parts(
        vec![generated.cert.der().clone()],
        key,
        None,
        false,
        &Restriction::Any,
    )
}

/// Builds both sides from a certificate chain and key. `roots` verifies the other side's
/// certificate; without roots the server certificate is accepted unverified and clients are not
/// asked for one. With roots, `allowed` further restricts the other side's certificate on both
/// sides, and connecting peers must then present one even without `client_cert_auth`.
pub fn from_parts(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Option<Vec<CertificateDer<'static>>>,
    client_cert_auth: bool,
    allowed: &Restriction,
) -> Result<PeerTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let counters = Arc::new(Counters::default());
    let allowed = if roots.is_some() {
        Allowed::new(allowed, counters.clone())?
    } else {
        None
    };
    let tls_err = |e: rustls::Error| Error::Tls(e.to_string());

    let root_store = match roots {
        Some(certs) => {
            let mut store = RootCertStore::empty();
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("unusable trusted CA certificate: {e}")))?;
            }
            Some(Arc::new(store))
        }
        None => None,
    };

    // QUIC runs on TLS 1.3 only.
    let server_builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?;
    let server_builder = match (&root_store, client_cert_auth) {
        (Some(store), auth) if auth || allowed.is_some() => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
                    .build()
                    .map_err(|e| {
                        Error::Tls(format!("cannot verify peer client certificates: {e}"))
                    })?;
            match &allowed {
                Some(allowed) => server_builder.with_client_cert_verifier(Arc::new(ClientCheck {
                    inner: verifier,
                    allowed: allowed.clone(),
                })),
                None => server_builder.with_client_cert_verifier(verifier),
            }
        }
        (None, true) => {
            return Err(Error::Tls(
                "client-cert-auth for peers needs a peer trusted CA file".to_string(),
            ));
        }
        _ => server_builder.with_no_client_auth(),
    };
    let mut server = server_builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls_err)?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let client_builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?;
    let mut client = match root_store {
        Some(store) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| Error::Tls(format!("cannot verify peer server certificates: {e}")))?;
            let builder = match &allowed {
                Some(allowed) => {
                    client_builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ServerCheck {
                            inner: verifier,
                            allowed: allowed.clone(),
                        }))
                }
                None => client_builder.with_webpki_verifier(verifier),
            };
            // Present our certificate: the other member may require it (client-cert-auth).
            builder.with_client_auth_cert(chain, key).map_err(tls_err)?
        }
        None => client_builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert { provider }))
            .with_no_client_auth(),
    };
    client.alpn_protocols = vec![ALPN.to_vec()];

    Ok(PeerTls {
        server: Arc::new(server),
        client: Arc::new(client),
        counters,
    })
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|source| Error::TlsFileRead {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| Error::TlsFileInvalid {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".to_string()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let what = "peer key";
    let bytes = std::fs::read(path).map_err(|source| Error::TlsFileRead {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| Error::TlsFileInvalid {
        what,
        path: path.to_path_buf(),
        reason,
    };
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("no PEM private key in it".to_string()))
}

/// Accepts any server certificate (there is no CA to check it against) but still checks that the
/// server owns the certificate's key, so the session keys are bound to the certificate it sent.
#[derive(Debug)]
struct AnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
pub mod test_certs {
    //! Certificates for tests: a CA and leaf certificates with IP SANs, written as PEM files.

    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    pub struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        pub pem: String,
    }

    impl TestCa {
        pub fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Self {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for `ip`, usable as server and client certificate; returns (cert PEM, key PEM).
        pub fn leaf(&self, ip: &str) -> (String, String) {
            self.leaf_named(ip, &[ip])
        }

        /// A leaf with subject CN `cn` and the SANs `names` (IP addresses or DNS names).
        pub fn leaf_named(&self, cn: &str, names: &[&str]) -> (String, String) {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        /// Writes a leaf for `ip` and this CA into `dir`; returns the TLS files for them.
        pub fn write_files(&self, dir: &Path, ip: &str, client_cert_auth: bool) -> super::TlsFiles {
            self.write_leaf(dir, self.leaf(ip), client_cert_auth)
        }

        /// Writes `leaf` (from [`TestCa::leaf_named`]) and this CA into `dir`.
        pub fn write_leaf(
            &self,
            dir: &Path,
            (cert, key): (String, String),
            client_cert_auth: bool,
        ) -> super::TlsFiles {
            let write = |name: &str, pem: &str| -> PathBuf {
                let path = dir.join(name);
                std::fs::write(&path, pem).unwrap();
                path
            };
            super::TlsFiles {
                cert_file: Some(write("peer.crt", &cert)),
                key_file: Some(write("peer.key", &key)),
                trusted_ca_file: Some(write("ca.crt", &self.pem)),
                client_cert_auth,
                allowed: super::Restriction::Any,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_certs::TestCa;
    use super::*;

    #[test]
    fn self_signed_builds_both_sides() {
        let tls = self_signed().unwrap();
        assert_eq!(tls.server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(tls.client.alpn_protocols, vec![ALPN.to_vec()]);
    }

    #[test]
    fn loads_files_and_names_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test CA");
        let files = ca.write_files(dir.path(), "127.0.0.1", true);
        configure(&files).unwrap();

        let missing = TlsFiles {
            cert_file: Some(dir.path().join("nope.crt")),
            ..files.clone()
        };
        let err = configure(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.crt"), "{err}");

        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "not a key").unwrap();
        let bad_key = TlsFiles {
            key_file: Some(garbage),
            ..files.clone()
        };
        let err = configure(&bad_key).unwrap_err().to_string();
        assert!(err.contains("garbage.key"), "{err}");

        // A key that does not belong to the certificate.
        let (_, other_key) = ca.leaf("127.0.0.1");
        let wrong = dir.path().join("wrong.key");
        std::fs::write(&wrong, other_key).unwrap();
        let mismatched = TlsFiles {
            key_file: Some(wrong),
            ..files
        };
        let err = configure(&mismatched).unwrap_err().to_string();
        assert!(err.contains("peer.crt"), "{err}");
    }

    #[test]
    fn a_peer_certificate_without_a_trusted_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test CA");
        let files = TlsFiles {
            trusted_ca_file: None,
            client_cert_auth: false,
            ..ca.write_files(dir.path(), "127.0.0.1", true)
        };
        let err = configure(&files).unwrap_err().to_string();
        assert!(err.contains("peer-trusted-ca-file"), "{err}");
    }

    #[test]
    fn half_configured_tls_is_an_error() {
        let only_cert = TlsFiles {
            cert_file: Some("a.crt".into()),
            ..Default::default()
        };
        assert!(configure(&only_cert).is_err());
        let auth_without_cert = TlsFiles {
            client_cert_auth: true,
            ..Default::default()
        };
        assert!(configure(&auth_without_cert).is_err());
    }
}
