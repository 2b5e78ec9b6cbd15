//! Peer URLs as etcd writes them (`http://127.0.0.2:2380`, `https://[::1]:2380`,
//! `https://node1.example:2380`): where to bind or dial, and which name the TLS certificate carries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUrl {
    /// Host without brackets: an IP literal or a DNS name.
    pub host: String,
    pub port: u16,
}

impl PeerUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| bad("scheme must be http:// or https://"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after IPv6 address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("invalid IPv6 address in brackets"));
            }
            let port = after.strip_prefix(':').ok_or_else(|| bad("missing port"))?;
            (host, port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| bad("missing port"))?;
            if host.contains(':') {
                return Err(bad("IPv6 addresses must be written in brackets"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = port.parse::<u16>().map_err(|_| bad("invalid port"))?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    /// The address when the host needs no DNS lookup (`localhost` counts as 127.0.0.1).
    pub fn ip(&self) -> Option<IpAddr> {
        if self.host.eq_ignore_ascii_case("localhost") {
            return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        self.host.parse().ok()
    }

    /// The address to bind a listener to: listen URLs must name an IP (or localhost).
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        self.ip()
            .map(|ip| SocketAddr::new(ip, self.port))
            .ok_or_else(|| Error::Url {
                url: self.to_string(),
                reason: "a listen URL must name an IP address or localhost".to_string(),
            })
    }

    /// The address to dial, looking the host up when it is a DNS name.
    pub async fn resolve(&self) -> Result<SocketAddr> {
        if let Some(ip) = self.ip() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let resolve_err = |reason: String| Error::Resolve {
            host: self.host.clone(),
            reason,
        };
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| resolve_err(e.to_string()))?;
        addrs
            .next()
            .ok_or_else(|| resolve_err("no addresses".to_string()))
    }
}

impl std::fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_ipv6_and_names() {
        let u = PeerUrl::parse("http://127.0.0.2:2380").unwrap();
        assert_eq!(u.host, "127.0.0.2");
        assert_eq!(u.listen_addr().unwrap(), "127.0.0.2:2380".parse().unwrap());

        let u = PeerUrl::parse("https://[::1]:2380/some/path").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.listen_addr().unwrap(), "[::1]:2380".parse().unwrap());
        assert_eq!(u.to_string(), "[::1]:2380");

        let u = PeerUrl::parse("http://localhost:12380").unwrap();
        assert_eq!(u.listen_addr().unwrap(), "127.0.0.1:12380".parse().unwrap());

        let u = PeerUrl::parse("https://node1.example:2380").unwrap();
        assert_eq!(u.host, "node1.example");
        assert!(u.listen_addr().is_err());
    }

    #[test]
    fn rejects_malformed_urls() {
        for bad in [
            "127.0.0.1:2380",
            "unix://x:1",
            "http://127.0.0.1",
            "http://:2380",
            "http://127.0.0.1:99999",
            "http://[::1:2380",
            "http://::1:2380",
            "http://[zz]:2380",
        ] {
            assert!(PeerUrl::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[tokio::test]
    async fn resolves_literals_without_dns() {
        let u = PeerUrl::parse("https://127.0.0.9:7").unwrap();
        assert_eq!(u.resolve().await.unwrap(), "127.0.0.9:7".parse().unwrap());
    }
}
