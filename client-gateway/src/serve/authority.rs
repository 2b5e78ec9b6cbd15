//! Repairs the `:authority` of inbound HTTP/2 requests before the HTTP/2 server sees them
//! ([`RepairAuthority`]).
//!
//! etcd 3.4's Go client dials some endpoints as `passthrough:///http://host:port` and so sends
//! `:authority: http://host:port` (e.g. `etcdctl endpoint status`). grpc-go accepts that; our
//! HTTP/2 server resets such a stream with PROTOCOL_ERROR. So each connection's client-to-server
//! bytes pass through here: header blocks (HEADERS + CONTINUATION) are decoded, a scheme prefix is
//! cut from `:authority`, and the block is re-encoded as plain literals. Every other frame, and
//! everything the server sends, passes unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::serve::hpack::{self, Field};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Every HTTP/2 server accepts frames this large.
const MAX_FRAME: usize = 16_384;
/// Cap on one header block as received, against memory blow-up.
const MAX_BLOCK: usize = 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// `http://host:port[/...]` becomes `host:port`; anything without a scheme is left alone.
fn repair(authority: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(authority).ok()?;
    let (_, rest) = text.split_once("://")?;
    let host = rest.split('/').next().unwrap_or_default();
    Some(
        if host.is_empty() { "localhost" } else { host }
            .as_bytes()
            .to_vec(),
    )
}

enum State {
    /// Checking the client preface; holds how many bytes matched so far.
    Preface(usize),
    /// Not HTTP/2 with prior knowledge: pass everything (the server will refuse it).
    Opaque,
    FrameHeader,
    /// Passing this many more payload bytes of a frame we do not touch.
    Passing(usize),
}

struct PendingBlock {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

pub struct RepairAuthority<T> {
    inner: T,
    raw: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
    state: State,
    decoder: hpack::Decoder,
    pending: Option<PendingBlock>,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from client: {what}"),
    )
}

impl<T> RepairAuthority<T> {
    pub fn new(inner: T) -> Self {
        RepairAuthority {
            inner,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
            state: State::Preface(0),
            decoder: hpack::Decoder::default(),
            pending: None,
        }
    }

    /// Moves as much of `raw` as can be handled now into `out`.
    fn process(&mut self) -> io::Result<()> {
        let mut pos = 0;
        loop {
            let avail = &self.raw[pos..];
            match self.state {
                State::Opaque => {
                    self.out.extend_from_slice(avail);
                    pos += avail.len();
                    break;
                }
                State::Preface(matched) => {
                    if avail.is_empty() {
                        break;
                    }
                    let n = avail.len().min(PREFACE.len() - matched);
                    self.state = if avail[..n] != PREFACE[matched..matched + n] {
                        State::Opaque
                    } else if matched + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(matched + n)
                    };
                    self.out.extend_from_slice(&avail[..n]);
                    pos += n;
                }
                State::Passing(left) => {
                    if left == 0 {
                        self.state = State::FrameHeader;
                        continue;
                    }
                    if avail.is_empty() {
                        break;
                    }
                    let n = avail.len().min(left);
                    self.out.extend_from_slice(&avail[..n]);
                    pos += n;
                    self.state = State::Passing(left - n);
                }
                State::FrameHeader => {
                    if avail.len() < FRAME_HEADER {
                        break;
                    }
                    let len = usize::from(avail[0]) << 16
                        | usize::from(avail[1]) << 8
                        | usize::from(avail[2]);
                    let kind = avail[3];
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.pending.is_some() {
                            return Err(invalid("header block interrupted by another frame"));
                        }
                        self.out.extend_from_slice(&avail[..FRAME_HEADER]);
                        pos += FRAME_HEADER;
                        self.state = State::Passing(len);
                        continue;
                    }
                    if len > MAX_BLOCK {
                        return Err(invalid("header frame too large"));
                    }
                    if avail.len() < FRAME_HEADER + len {
                        break;
                    }
                    let flags = avail[4];
                    let mut stream = [0u8; 4];
                    stream.copy_from_slice(&avail[5..9]);
                    let payload = avail[FRAME_HEADER..FRAME_HEADER + len].to_vec();
                    pos += FRAME_HEADER + len;
                    self.header_frame(kind, flags, stream, &payload)?;
                }
            }
        }
        self.raw.drain(..pos);
        Ok(())
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: [u8; 4],
        payload: &[u8],
    ) -> io::Result<()> {
        if kind == HEADERS {
            if self.pending.is_some() {
                return Err(invalid("HEADERS inside a header block"));
            }
            let mut body = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&p, rest) = body.split_first().ok_or_else(|| invalid("bad padding"))?;
                pad = usize::from(p);
                body = rest;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                if body.len() < 5 {
                    return Err(invalid("bad priority"));
                }
                let mut p = [0u8; 5];
                p.copy_from_slice(&body[..5]);
                priority = Some(p);
                body = &body[5..];
            }
            if pad > body.len() {
                return Err(invalid("bad padding"));
            }
            self.pending = Some(PendingBlock {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                block: body[..body.len() - pad].to_vec(),
            });
        } else {
            let pending = self
                .pending
                .as_mut()
                .filter(|p| p.stream == stream)
                .ok_or_else(|| invalid("CONTINUATION outside its header block"))?;
            if pending.block.len() + payload.len() > MAX_BLOCK {
                return Err(invalid("header block too large"));
            }
            pending.block.extend_from_slice(payload);
        }
        if flags & END_HEADERS != 0
            && let Some(done) = self.pending.take()
        {
            self.emit(done)?;
        }
        Ok(())
    }

    fn emit(&mut self, done: PendingBlock) -> io::Result<()> {
        let mut fields: Vec<Field> = self.decoder.decode(&done.block).map_err(|e| invalid(e.0))?;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority"
                && let Some(fixed) = repair(value)
            {
                *value = fixed;
            }
        }
        let block = hpack::encode_plain(&fields);

        // First a HEADERS frame (keeping END_STREAM and the priority), then CONTINUATIONs.
        let mut rest = block.as_slice();
        let mut first = true;
        loop {
            let prefix = match (first, done.priority) {
                (true, Some(p)) => p.to_vec(),
                _ => Vec::new(),
            };
            let n = rest.len().min(MAX_FRAME - prefix.len());
            let (chunk, tail) = rest.split_at(n);
            let mut flags = 0;
            if first && done.end_stream {
                flags |= END_STREAM;
            }
            if first && done.priority.is_some() {
                flags |= PRIORITY;
            }
            if tail.is_empty() {
                flags |= END_HEADERS;
            }
            let len = prefix.len() + chunk.len();
            self.out
                .extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
            self.out.push(if first { HEADERS } else { CONTINUATION });
            self.out.push(flags);
            self.out.extend_from_slice(&done.stream);
            self.out.extend_from_slice(&prefix);
            self.out.extend_from_slice(chunk);
            rest = tail;
            first = false;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for RepairAuthority<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A frame cut off by EOF is dropped; the server sees the connection end.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(read.filled());
                    this.process()?;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RepairAuthority<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: Connected> Connected for RepairAuthority<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn fields(authority: &str) -> Vec<Field> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", authority),
            ("content-type", "application/grpc"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// Yields its bytes a few at a time, to exercise partial frames.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.1.min(self.0.len()).min(buf.remaining());
            let head: Vec<u8> = self.0.drain(..n).collect();
            buf.put_slice(&head);
            Poll::Ready(Ok(()))
        }
    }

    /// Splits a byte stream after the preface into (type, flags, stream, payload) frames.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    async fn run(input: Vec<u8>, step: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        RepairAuthority::new(Trickle(input, step))
            .read_to_end(&mut out)
            .await?;
        Ok(out)
    }

    #[tokio::test]
    async fn strips_the_scheme_from_authority_and_passes_other_frames() {
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let block = hpack::encode_plain(&fields("http://127.0.0.1:2379"));
        // The block split over HEADERS (padded, with priority) and a CONTINUATION.
        let (a, b) = block.split_at(10);
        let mut headers_payload = vec![2u8]; // pad length
        headers_payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
        headers_payload.extend_from_slice(a);
        headers_payload.extend_from_slice(&[0, 0]);
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\x05hello");
        let mut input = PREFACE.to_vec();
        input.extend(settings.clone());
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &headers_payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(data.clone());

        for step in [1, 7, 4096] {
            let out = run(input.clone(), step).await.unwrap();
            let got = frames(&out);
            assert_eq!(got.len(), 3, "step {step}");
            assert_eq!(got[0], (0x4, 0, 0, settings[9..].to_vec()));
            let (kind, flags, stream, payload) = &got[1];
            assert_eq!(
                (*kind, *flags, *stream),
                (HEADERS, PRIORITY | END_HEADERS, 1)
            );
            assert_eq!(&payload[..5], &[0, 0, 0, 0, 15]);
            let decoded = hpack::Decoder::default().decode(&payload[5..]).unwrap();
            assert_eq!(decoded, fields("127.0.0.1:2379"));
            assert_eq!(got[2], (0x0, END_STREAM, 1, data[9..].to_vec()));
        }
    }

    #[tokio::test]
    async fn keeps_a_good_authority_and_follows_the_dynamic_table() {
        // RFC 7541 C.3.1 then C.3.2: the second block refers to the first's table entry.
        let b1 = [
            0x82, 0x86, 0x84, 0x41, 0x0f, b'w', b'w', b'w', b'.', b'e', b'x', b'a', b'm', b'p',
            b'l', b'e', b'.', b'c', b'o', b'm',
        ];
        let b2 = [0x82, 0x86, 0x84, 0xbe];
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &b1));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &b2));
        let out = run(input, 4096).await.unwrap();
        let got = frames(&out);
        let mut d = hpack::Decoder::default();
        for (i, stream) in [(0, 1), (1, 3)] {
            let (kind, flags, s, payload) = &got[i];
            assert_eq!(
                (*kind, *flags, *s),
                (HEADERS, END_HEADERS | END_STREAM, stream)
            );
            let decoded = d.decode(payload).unwrap();
            assert_eq!(
                decoded[3],
                (b":authority".to_vec(), b"www.example.com".to_vec())
            );
        }
    }

    #[tokio::test]
    async fn large_blocks_are_split_into_continuations() {
        let mut f = fields("https://10.0.0.1:2379/");
        f.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 5, &hpack::encode_plain(&f)[..]).as_slice());
        // That frame is over 16 KiB itself, which a client may send if the server allowed it.
        let out = run(input, 4096).await.unwrap();
        let got = frames(&out);
        assert!(got.len() >= 3);
        assert!(
            got.iter()
                .all(|(_, _, s, p)| *s == 5 && p.len() <= MAX_FRAME)
        );
        assert_eq!(got[0].0, HEADERS);
        assert!(got[1..].iter().all(|(k, _, _, _)| *k == CONTINUATION));
        assert!(
            got.last()
                .map(|(_, fl, _, _)| fl & END_HEADERS != 0)
                .unwrap()
        );
        let block: Vec<u8> = got.iter().flat_map(|(_, _, _, p)| p.clone()).collect();
        let decoded = hpack::Decoder::default().decode(&block).unwrap();
        assert_eq!(decoded[3].1, b"10.0.0.1:2379");
        assert_eq!(decoded[5].1.len(), 40_000);
    }

    #[tokio::test]
    async fn not_http2_passes_through_untouched() {
        let input = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(run(input.clone(), 3).await.unwrap(), input);
    }

    #[tokio::test]
    async fn broken_header_blocks_end_the_connection() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x82]));
        assert!(run(input, 4096).await.is_err());

        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"data"));
        assert!(run(input, 4096).await.is_err());

        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0x00]));
        assert!(run(input, 4096).await.is_err());
    }

    #[test]
    fn repairs_only_authorities_with_a_scheme() {
        assert_eq!(repair(b"http://127.0.0.1:2379").unwrap(), b"127.0.0.1:2379");
        assert_eq!(repair(b"https://[::1]:2379/x").unwrap(), b"[::1]:2379");
        assert_eq!(repair(b"unix://").unwrap(), b"localhost");
        assert_eq!(repair(b"127.0.0.1:2379"), None);
    }
}
