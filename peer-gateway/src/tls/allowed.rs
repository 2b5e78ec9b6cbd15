//! `--peer-cert-allowed-cn` and `--peer-cert-allowed-hostname`: a restriction on which of the
//! trusted CA's certificates a peer may present, checked inside the TLS handshake on both sides,
//! as etcd does (its peer TLS config checks the leaf of the verified chain, whether it accepts a
//! connection or dials one):
//!
//! - allowed CNs: the certificate's subject common name must be one of them, exactly;
//! - allowed hostnames: the certificate must be valid for one of them (IP addresses against its
//!   IP SANs, names against its DNS SANs, wildcards included), as Go's `VerifyHostname` is.
//!
//! etcd 3.4 took one value for each; 3.5 and 3.6 take comma-separated lists, which we follow.
//! A refusal fails the handshake, is counted in [`Counters::cert_refused`] and logged with the
//! certificate's CN and SANs and the allowed values (at most every [`LOG_EVERY`] per certificate;
//! a refused member dials again every second).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tracing::{debug, warn};
use x509_parser::extensions::GeneralName;

use crate::counters::Counters;
use crate::error::{Error, Result};

/// A refusal of the same certificate is logged at warn at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Which peer certificates of the trusted CA are allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Restriction {
    /// Any (neither option set).
    #[default]
    Any,
    /// `--peer-cert-allowed-cn`: one of these subject CNs.
    Cns(Vec<String>),
    /// `--peer-cert-allowed-hostname`: valid for one of these hostnames or IP addresses.
    Hostnames(Vec<String>),
}

impl Restriction {
    /// From the two lists consensus hands out; etcd refuses both at once, and so do we.
    pub fn from_lists(cns: Vec<String>, hostnames: Vec<String>) -> Result<Restriction> {
        match (cns.is_empty(), hostnames.is_empty()) {
            (true, true) => Ok(Restriction::Any),
            (false, true) => Ok(Restriction::Cns(cns)),
            (true, false) => Ok(Restriction::Hostnames(hostnames)),
            (false, false) => Err(Error::Tls(format!(
                "--peer-cert-allowed-cn {:?} and --peer-cert-allowed-hostname {:?} cannot both \
                 be set",
                cns.join(","),
                hostnames.join(",")
            ))),
        }
    }

    pub fn is_any(&self) -> bool {
        *self == Restriction::Any
    }

    /// The option and its value as configured, for log lines.
    pub fn setting(&self) -> String {
        match self {
            Restriction::Any => "no allowed CN or hostname".to_string(),
            Restriction::Cns(cns) => format!("--peer-cert-allowed-cn {:?}", cns.join(",")),
            Restriction::Hostnames(names) => {
                format!("--peer-cert-allowed-hostname {:?}", names.join(","))
            }
        }
    }
}

/// Whose certificate a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    /// A peer that connected to us (its client certificate).
    Accepting,
    /// The member we dialed (its server certificate).
    Dialing,
}

/// How a restriction is checked.
#[derive(Debug)]
enum Rule {
    Cns(Vec<String>),
    Hostnames(Vec<ServerName<'static>>),
}

/// A [`Restriction`] ready to check certificates, shared by both verifiers of one member.
#[derive(Debug)]
pub struct Allowed {
    rule: Rule,
    /// The option and its value as configured, for log lines.
    setting: String,
    counters: Arc<Counters>,
    /// When each refused certificate was last logged at warn.
    logged: Mutex<HashMap<(Side, String), Instant>>,
}

impl Allowed {
    /// `None` for [`Restriction::Any`]; an error names a hostname no certificate can carry.
    pub fn new(restriction: &Restriction, counters: Arc<Counters>) -> Result<Option<Arc<Allowed>>> {
        let rule = match restriction {
            Restriction::Any => return Ok(None),
            Restriction::Cns(cns) => Rule::Cns(cns.clone()),
            Restriction::Hostnames(names) => {
                let parsed = names
                    .iter()
                    .map(|name| {
                        server_name(name).ok_or_else(|| {
                            Error::Tls(format!(
                                "--peer-cert-allowed-hostname {name:?} is neither a hostname \
                                 nor an IP address"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Rule::Hostnames(parsed)
            }
        };
        Ok(Some(Arc::new(Allowed {
            rule,
            setting: restriction.setting(),
            counters,
            logged: Mutex::new(HashMap::new()),
        })))
    }

    /// Whether `leaf`, already verified against the trusted CA, is allowed; a refusal is
    /// counted and logged here.
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        side: Side,
    ) -> std::result::Result<(), rustls::Error> {
        let allowed = match &self.rule {
            Rule::Cns(cns) => common_name(leaf).is_some_and(|cn| cns.contains(&cn)),
            Rule::Hostnames(names) => webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| {
                names
                    .iter()
                    .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
            }),
        };
        if allowed {
            return Ok(());
        }
        Counters::bump(&self.counters.cert_refused);
        self.log_refusal(leaf, side);
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn log_refusal(&self, leaf: &CertificateDer<'_>, side: Side) {
        let cn = common_name(leaf).unwrap_or_default();
        let sans = alt_names(leaf).join(", ");
        let whose = match side {
            Side::Accepting => "a connecting peer's certificate",
            Side::Dialing => "the certificate of the member we dialed",
        };
        let line = || {
            format!(
                "refusing {whose} (CN {cn:?}, SANs [{sans}]): not allowed by {}",
                self.setting
            )
        };
        let key = (side, format!("{cn}|{sans}"));
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if logged.len() > 1024 {
            logged.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
        }
        match logged.get(&key) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => debug!("{}", line()),
            _ => {
                warn!("{}", line());
                logged.insert(key, now);
            }
        }
    }
}

/// `name` as a name a certificate can be valid for: an IP address (IPv6 with or without
/// brackets) or a DNS name (a trailing dot dropped, as Go does).
fn server_name(name: &str) -> Option<ServerName<'static>> {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    ServerName::try_from(name.to_string()).ok()
}

/// The subject CN, as Go's `Subject.CommonName` reads it (the last CN attribute).
fn common_name(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .last()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// The DNS and IP SANs, for log lines.
fn alt_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return vec!["unparsable certificate".to_string()];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The acceptor's verifier: the trusted CA's, then the restriction.
#[derive(Debug)]
pub struct ClientCheck {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed: Arc<Allowed>,
}

impl ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Nothing to check without a certificate.
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity, Side::Accepting)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The dialer's verifier: the trusted CA's (with the URL's host as the server name), then the
/// restriction.
#[derive(Debug)]
pub struct ServerCheck {
    pub inner: Arc<WebPkiServerVerifier>,
    pub allowed: Arc<Allowed>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.check(end_entity, Side::Dialing)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lists_are_refused() {
        let err = Restriction::from_lists(vec!["a".into()], vec!["b".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
        assert_eq!(
            Restriction::from_lists(vec![], vec![]).unwrap(),
            Restriction::Any
        );
    }

    #[test]
    fn hostnames_read_like_go() {
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("10.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("peer.example.com."),
            Some(ServerName::DnsName(_))
        ));
        assert!(server_name("a b").is_none());
        let err = Allowed::new(&Restriction::Hostnames(vec!["a b".into()]), Arc::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a b\""), "{err}");
    }
}
