//! Member URLs as etcd takes them: [`Url`] (scheme, [`Host`], port), parsed once and displayed
//! back exactly as given.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The scheme of a member URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The host of a member URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ipv4(Ipv4Addr),
    /// Written `[...]` in the URL.
    Ipv6(Ipv6Addr),
    /// A DNS name, `localhost` included, as written.
    Name(String),
}

impl Host {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
            Host::Name(_) => None,
        }
    }
}

/// Why a URL does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// A member URL: `http` or `https`, a host (IPv4, `[IPv6]` or a DNS name) and a port, nothing else.
///
/// `Display` gives back the text it was parsed from (trimmed, with the scheme in lowercase), which
/// is what member IDs hash. Ordering and equality are those of the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    text: String,
    scheme: Scheme,
    host: Host,
    /// The host as written, brackets included for IPv6.
    host_text: String,
    port: u16,
}

impl Url {
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        let input = input.trim();
        let err = |reason: &str| Err(UrlError(reason.to_string()));
        let Some((scheme_text, rest)) = input.split_once("://") else {
            return err("URL scheme must be http or https");
        };
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return err("URL scheme must be http or https"),
        };
        if rest.contains('/') {
            return err("URL must not contain a path");
        }
        if rest.contains('?') || rest.contains('#') {
            return err("URL must not contain a query or a fragment");
        }
        if rest.contains('@') {
            return err("URL must not contain a user name or password");
        }
        let (host_text, port_text) = if rest.starts_with('[') {
            let Some(end) = rest.find(']') else {
                return err("URL has an IPv6 address without its closing ']'");
            };
            let (host, after) = rest.split_at(end + 1);
            let Some(port) = after.strip_prefix(':') else {
                return err("URL must have the form scheme://host:port");
            };
            (host, port)
        } else {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return err("URL must have the form scheme://host:port");
            };
            if host.contains(':') {
                return err("URL has an IPv6 address that is not in brackets");
            }
            (host, port)
        };
        if port_text.is_empty() || !port_text.bytes().all(|b| b.is_ascii_digit()) {
            return err("URL port must be a number from 1 to 65535");
        }
        let port = match port_text.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return err("URL port must be a number from 1 to 65535"),
        };
        let host = if let Some(inner) = host_text
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
        {
            match inner.parse::<Ipv6Addr>() {
                Ok(ip) => Host::Ipv6(ip),
                Err(_) => return err("URL has an invalid IPv6 address"),
            }
        } else if host_text.is_empty() {
            return err("URL has no host");
        } else if host_text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            match host_text.parse::<Ipv4Addr>() {
                Ok(ip) => Host::Ipv4(ip),
                Err(_) => return err("URL has an invalid IPv4 address"),
            }
        } else if is_dns_name(host_text) {
            Host::Name(host_text.to_string())
        } else {
            return err("URL has an invalid host name");
        };
        Ok(Url {
            text: format!("{}://{}", scheme.as_str(), rest),
            scheme,
            host,
            host_text: host_text.to_string(),
            port,
        })
    }

    /// The URL's text, as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, IPv6 in brackets, for `bind`/`connect`/`ToSocketAddrs` (names still need
    /// resolving): `10.0.52.13:2380`, `[::1]:2379`, `localhost:2379`.
    pub fn socket_host_port(&self) -> String {
        format!("{}:{}", self.host_text, self.port)
    }

    /// The socket address when the host is an IP address (no DNS lookup).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host.ip().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Url {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Url, UrlError> {
        Url::parse(s)
    }
}

impl PartialOrd for Url {
    fn partial_cmp(&self, other: &Url) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Url {
    fn cmp(&self, other: &Url) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

pub(super) fn join_urls(urls: &[Url]) -> String {
    urls.iter().map(Url::as_str).collect::<Vec<_>>().join(",")
}
