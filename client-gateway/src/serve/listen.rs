//! The listen-client URLs: parsing them ([`ListenUrl`]), binding ([`Listener`]), accepting
//! connections (with TLS for https:// and unixs://), and handing them to the gRPC server
//! ([`incoming`]), each behind [`RepairAuthority`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::error::Error;
use crate::serve::authority::RepairAuthority;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// Host (IP literal or name) and port.
    Tcp(String, u16),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    pub url: String,
    pub address: Address,
    pub secure: bool,
}

impl ListenUrl {
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::ListenUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://address"))?;
        let (address, secure) = match scheme.to_ascii_lowercase().as_str() {
            // As in etcd, everything after unix:// is the socket's path.
            "unix" | "unixs" => {
                if rest.is_empty() {
                    return Err(bad("missing socket path"));
                }
                (Address::Unix(PathBuf::from(rest)), scheme.ends_with('s'))
            }
            "http" | "https" => {
                let hostport = match rest.split_once('/') {
                    Some((hp, "")) => hp,
                    Some(_) => return Err(bad("a listen URL cannot have a path")),
                    None => rest,
                };
                let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
                    let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
                    let port = after.strip_prefix(':').ok_or_else(|| bad("missing port"))?;
                    (host, port)
                } else {
                    hostport
                        .rsplit_once(':')
                        .ok_or_else(|| bad("missing port"))?
                };
                let port = port.parse::<u16>().map_err(|_| bad("invalid port"))?;
                (Address::Tcp(host.to_string(), port), scheme.ends_with('s'))
            }
            _ => return Err(bad("unsupported scheme (want http, https, unix or unixs)")),
        };
        Ok(ListenUrl {
            url: url.to_string(),
            address,
            secure,
        })
    }
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    pub async fn bind(url: &ListenUrl) -> Result<Self, Error> {
        let bind_err = |source| Error::Bind {
            url: url.url.clone(),
            source,
        };
        match &url.address {
            Address::Tcp(host, port) => {
                let addr = if host.is_empty() {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port)
                } else if let Ok(ip) = host.parse::<IpAddr>() {
                    SocketAddr::new(ip, *port)
                } else {
                    tokio::net::lookup_host((host.as_str(), *port))
                        .await
                        .map_err(bind_err)?
                        .next()
                        .ok_or_else(|| {
                            bind_err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("{host} resolves to no address"),
                            ))
                        })?
                };
                Ok(Listener::Tcp(
                    TcpListener::bind(addr).await.map_err(bind_err)?,
                ))
            }
            Address::Unix(path) => {
                // A socket left behind by a previous run (e.g. after kill -9) would block the
                // bind; anything that is not a socket is left alone and the bind fails.
                if let Ok(meta) = std::fs::symlink_metadata(path)
                    && meta.file_type().is_socket()
                {
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                Ok(Listener::Unix(UnixListener::bind(path).map_err(bind_err)?))
            }
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Small unary RPCs: do not let Nagle hold back responses.
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

/// An accepted connection, plain or TLS, over TCP or a Unix socket.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub enum Io {
    Plain(Stream),
    Tls(Box<TlsStream<Stream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain(Stream::Tcp($s)) => $e,
            Io::Plain(Stream::Unix($s)) => $e,
            Io::Tls($s) => $e,
        }
    };
}

macro_rules! delegate_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_stream!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate_stream!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl Connected for Io {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// The connections accepted on `listener`, for the HTTP/2 server (`serve_with_incoming`). TLS
/// handshakes run on their own tasks so a slow or silent client never holds up the others.
/// Dropping it stops accepting and closes the listener.
pub fn incoming(listener: Listener, url: String, tls: Option<TlsAcceptor>) -> Incoming {
    let (conns_tx, conns) = mpsc::channel::<Conn>(128);
    let accept = AbortOnDrop(tokio::spawn(accept_loop(listener, url, tls, conns_tx)));
    Incoming {
        conns,
        _accept: accept,
    }
}

/// See [`incoming`].
pub struct Incoming {
    conns: mpsc::Receiver<Conn>,
    /// Dropped with the stream (also when its task is aborted), which closes the listener.
    _accept: AbortOnDrop,
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.conns.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the gRPC server reads: the client's bytes with their `:authority` repaired.
pub type Conn = RepairAuthority<Io>;

async fn accept_loop(
    listener: Listener,
    url: String,
    tls: Option<TlsAcceptor>,
    conns: mpsc::Sender<Conn>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(%url, error = %e, "accepting a client connection failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        match &tls {
            None => {
                if conns
                    .send(RepairAuthority::new(Io::Plain(stream)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(acceptor) => {
                let (acceptor, conns, url) = (acceptor.clone(), conns.clone(), url.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let conn = RepairAuthority::new(Io::Tls(Box::new(tls)));
                            let _ = conns.send(conn).await;
                        }
                        Ok(Err(e)) => debug!(%url, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%url, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(url: &str) -> (String, u16, bool) {
        match ListenUrl::parse(url).unwrap() {
            ListenUrl {
                address: Address::Tcp(h, p),
                secure,
                ..
            } => (h, p, secure),
            other => panic!("not tcp: {other:?}"),
        }
    }

    #[test]
    fn parses_tcp_urls() {
        assert_eq!(
            tcp("http://127.0.0.1:2379"),
            ("127.0.0.1".into(), 2379, false)
        );
        assert_eq!(tcp("https://0.0.0.0:2379/"), ("0.0.0.0".into(), 2379, true));
        assert_eq!(tcp("http://[::1]:2379"), ("::1".into(), 2379, false));
        assert_eq!(tcp("HTTP://localhost:1"), ("localhost".into(), 1, false));
        assert_eq!(tcp("http://:2379"), ("".into(), 2379, false));
    }

    #[test]
    fn parses_unix_urls() {
        let u = ListenUrl::parse("unixs:///run/etcd/c.sock").unwrap();
        assert_eq!(u.address, Address::Unix("/run/etcd/c.sock".into()));
        assert!(u.secure);
        let u = ListenUrl::parse("unix://localhost:2379").unwrap();
        assert_eq!(u.address, Address::Unix("localhost:2379".into()));
        assert!(!u.secure);
    }

    #[test]
    fn refuses_bad_urls() {
        for url in [
            "127.0.0.1:2379",
            "ftp://1.2.3.4:21",
            "http://1.2.3.4",
            "http://1.2.3.4:99999",
            "http://1.2.3.4:2379/v3",
            "http://[::1",
            "unix://",
        ] {
            assert!(
                matches!(ListenUrl::parse(url), Err(Error::ListenUrl { .. })),
                "{url} should be refused"
            );
        }
    }

    #[tokio::test]
    async fn unix_bind_replaces_a_stale_socket_but_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let url = ListenUrl::parse(&format!("unix://{}", path.display())).unwrap();
        let first = Listener::bind(&url).await.unwrap();
        drop(first); // the socket file stays behind, as after kill -9
        assert!(path.exists());
        let _second = Listener::bind(&url).await.unwrap();

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep").unwrap();
        let url = ListenUrl::parse(&format!("unix://{}", file.display())).unwrap();
        assert!(matches!(
            Listener::bind(&url).await,
            Err(Error::Bind { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
