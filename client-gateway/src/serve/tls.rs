//! TLS for https:// and unixs:// listeners ([`acceptor`]), from the files named in etcd.conf
//! ([`TlsFiles`]). The ring provider is passed explicitly everywhere so the process never depends
//! on a process-wide default provider.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::consensus::registration::TlsFiles;
use crate::error::Error;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(what: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let file_err = |reason: String| Error::TlsFile {
        what,
        path: path.into(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// The server side of TLS: our certificate and key, and with `client_cert_auth` a client
/// certificate signed by the trusted CA is required (etcd's `--client-cert-auth`). Without it the
/// trusted CA is not used and client certificates are not asked for, as in etcd.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, Error> {
    if files.cert_file.is_empty() || files.key_file.is_empty() {
        return Err(Error::Tls(
            "a TLS listener needs both cert-file and key-file".into(),
        ));
    }
    let chain = certificates("reading cert-file", &files.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(Path::new(&files.key_file)).map_err(|e| Error::TlsFile {
            what: "reading key-file",
            path: files.key_file.clone().into(),
            reason: e.to_string(),
        })?;

    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if files.client_cert_auth {
        if files.trusted_ca_file.is_empty() {
            return Err(Error::Tls(
                "client-cert-auth needs a trusted-ca-file".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        for ca in certificates("reading trusted-ca-file", &files.trusted_ca_file)? {
            roots.add(ca).map_err(|e| Error::TlsFile {
                what: "using trusted-ca-file",
                path: files.trusted_ca_file.clone().into(),
                reason: e.to_string(),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| Error::Tls(format!("client certificate verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("cert-file and key-file: {e}")))?;
    // gRPC clients insist on negotiating HTTP/2; HTTP/1.1 is for `/health` and `/version`.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, Error> {
    Ok(TlsAcceptor::from(Arc::new(server_config(files)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::path::PathBuf;
    use tokio_rustls::TlsConnector;

    struct Pki {
        _dir: tempfile::TempDir,
        ca_pem: String,
        server: (PathBuf, PathBuf),
        ca_file: PathBuf,
        client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();

        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let server_files = (
            write("server.pem", server.pem()),
            write("server-key.pem", server_key.serialize_pem()),
        );
        let ca_file = write("ca.pem", ca.pem());
        Pki {
            ca_pem: ca.pem(),
            server: server_files,
            ca_file,
            client: (
                vec![client.der().clone()],
                PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
            ),
            _dir: dir,
        }
    }

    fn files(p: &Pki, client_cert_auth: bool) -> TlsFiles {
        TlsFiles {
            cert_file: p.server.0.display().to_string(),
            key_file: p.server.1.display().to_string(),
            trusted_ca_file: p.ca_file.display().to_string(),
            client_cert_auth,
        }
    }

    /// Handshakes over an in-memory pipe, the client offering `alpn`; returns the ALPN protocol
    /// the client saw.
    async fn handshake_offering(
        acceptor: TlsAcceptor,
        p: &Pki,
        with_client_cert: bool,
        alpn: &[&[u8]],
    ) -> Result<Option<Vec<u8>>, String> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(p.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = if with_client_cert {
            let (chain, key) = (p.client.0.clone(), p.client.1.clone_key());
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { acceptor.accept(b).await.map(|_| ()) });
        let name = ServerName::try_from("localhost").unwrap();
        let client = TlsConnector::from(Arc::new(config)).connect(name, a).await;
        let server = server.await.unwrap();
        match (client, server) {
            (Ok(c), Ok(())) => Ok(c.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)),
            (c, s) => Err(format!("client: {:?}, server: {:?}", c.err(), s.err())),
        }
    }

    /// As a gRPC client: HTTP/2 only.
    async fn handshake(
        acceptor: TlsAcceptor,
        p: &Pki,
        with_client_cert: bool,
    ) -> Result<Option<Vec<u8>>, String> {
        handshake_offering(acceptor, p, with_client_cert, &[b"h2"]).await
    }

    #[tokio::test]
    async fn serves_h2_over_tls_without_client_auth() {
        let p = pki();
        let acceptor = acceptor(&files(&p, false)).unwrap();
        assert_eq!(
            handshake(acceptor, &p, false).await.unwrap(),
            Some(b"h2".to_vec())
        );
    }

    /// A browser or `curl --http1.1` asking for `/health` over https.
    #[tokio::test]
    async fn prefers_h2_and_accepts_http1_clients() {
        let p = pki();
        let acceptor = acceptor(&files(&p, false)).unwrap();
        let both: &[&[u8]] = &[b"http/1.1", b"h2"];
        assert_eq!(
            handshake_offering(acceptor.clone(), &p, false, both)
                .await
                .unwrap(),
            Some(b"h2".to_vec())
        );
        assert_eq!(
            handshake_offering(acceptor, &p, false, &[b"http/1.1"])
                .await
                .unwrap(),
            Some(b"http/1.1".to_vec())
        );
    }

    #[tokio::test]
    async fn client_cert_auth_requires_a_trusted_client_certificate() {
        let p = pki();
        let acceptor = acceptor(&files(&p, true)).unwrap();
        assert!(handshake(acceptor.clone(), &p, false).await.is_err());
        assert_eq!(
            handshake(acceptor, &p, true).await.unwrap(),
            Some(b"h2".to_vec())
        );
    }

    #[test]
    fn refuses_incomplete_configuration() {
        let p = pki();
        let mut f = files(&p, true);
        f.trusted_ca_file.clear();
        assert!(matches!(server_config(&f), Err(Error::Tls(_))));
        let mut f = files(&p, false);
        f.key_file.clear();
        assert!(matches!(server_config(&f), Err(Error::Tls(_))));
        let mut f = files(&p, false);
        f.cert_file = p
            .ca_file
            .with_file_name("missing.pem")
            .display()
            .to_string();
        assert!(matches!(server_config(&f), Err(Error::TlsFile { .. })));
        // A key file that holds no key.
        let mut f = files(&p, false);
        f.key_file = f.cert_file.clone();
        assert!(matches!(server_config(&f), Err(Error::TlsFile { .. })));
    }
}
