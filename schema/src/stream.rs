//! The framing of the two streams consensus's raft thread serves itself (`raft.sock`, see
//! `PeerFrame`, and `write.sock`, see `WriteFrame`, in member.capnp): Cap'n Proto messages in the
//! standard stream framing, one after another. `FrameBuffer` reassembles them from whatever a
//! read returned, so the same code serves the raft thread (non-blocking reads) and the gateways
//! (tokio reads).

use std::io::{self, IoSlice, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use capnp::message::{Builder, Reader};
use capnp::serialize::BufferSegments;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The socket consensus's raft thread serves the raft stream on.
pub fn raft_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("raft.sock")
}

/// `raft.sock` in the same directory as `peer_socket` (the peer gateway is given only that path).
pub fn raft_socket_beside(peer_socket: &Path) -> PathBuf {
    raft_socket(peer_socket.parent().unwrap_or(Path::new(".")))
}

/// The socket consensus's raft thread takes writes from the client gateway on.
pub fn write_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("write.sock")
}

/// `write.sock` in the same directory as `client_socket` (the client gateway is given only that
/// path).
pub fn write_socket_beside(client_socket: &Path) -> PathBuf {
    write_socket(client_socket.parent().unwrap_or(Path::new(".")))
}

/// A frame's segment table may list at most this many segments (capnp's own reader allows 512).
const MAX_SEGMENTS: usize = 512;
/// The largest frame, in bytes: what `reader_options` lets a reader traverse, plus the table.
pub const MAX_FRAME_BYTES: usize = (1 << 31) + 8 * MAX_SEGMENTS;

/// Appends `message` to `out` in the standard stream framing.
pub fn write_frame<A: capnp::message::Allocator>(out: &mut Vec<u8>, message: &Builder<A>) {
    // Writing into a Vec cannot fail.
    let _ = capnp::serialize::write_message(&mut *out, message);
}

/// The length of the frame at the start of `buf` once all of it is there; `None` before.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    Ok(declared_len(buf, MAX_FRAME_BYTES)
        .map_err(|e| e.to_string())?
        .filter(|len| buf.len() >= *len))
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    TooLarge { len: usize, limit: usize },
    Segments(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooLarge { len, limit } => {
                write!(f, "a frame of {len} bytes (at most {limit})")
            }
            Refusal::Segments(n) => write!(f, "a frame with {n} segments (at most {MAX_SEGMENTS})"),
        }
    }
}

/// The length the frame at the start of `buf` declares, once its segment table is there.
fn declared_len(buf: &[u8], limit: usize) -> Result<Option<usize>, Refusal> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let segments = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize + 1;
    if segments > MAX_SEGMENTS {
        return Err(Refusal::Segments(segments));
    }
    // The table (count, then one size per segment) is padded to whole 8-byte words.
    let table = (4 + 4 * segments).next_multiple_of(8);
    let Some(sizes) = buf.get(4..4 + 4 * segments) else {
        return Ok(None);
    };
    let words: usize = sizes
        .chunks_exact(4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .sum();
    let len = table + 8 * words;
    if len > limit {
        return Err(Refusal::TooLarge { len, limit });
    }
    Ok(Some(len))
}

/// A gateway's end of `raft.sock` or `write.sock`, watched by tokio for reading only.
///
/// A tokio `UnixStream` is registered for reading and writing. A Unix socket tells whoever waits
/// to write every time the other end reads (unlike TCP, it does not first check that the writer
/// ever ran out of room), so each frame consensus read woke the gateway's thread for nothing: one
/// spurious process wake-up per message, on the cores the message's path needs. Here writes go
/// straight to the socket, and only a write that finds it full waits, on a duplicate descriptor
/// registered for writing just for that wait.
pub struct FrameSocket {
    fd: AsyncFd<UnixStream>,
}

impl FrameSocket {
    /// Connects to `path` (see `raft_socket` and `write_socket`).
    pub async fn connect(path: &Path) -> io::Result<FrameSocket> {
        FrameSocket::new(tokio::net::UnixStream::connect(path).await?.into_std()?)
    }

    pub fn new(sock: UnixStream) -> io::Result<FrameSocket> {
        sock.set_nonblocking(true)?;
        // SAFETY: the `UnixStream` owns its descriptor, which nothing closes or replaces while the
        // `AsyncFd` holds it.
        let fd = unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE)? };
        Ok(FrameSocket { fd })
    }

    /// Reads what has arrived into `buf`, waiting until something has; 0 means the other end
    /// closed the stream.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|sock| sock.get_ref().read(buf)) {
                Ok(Ok(n)) => {
                    // A short read emptied the socket: wait for the next event instead of
                    // learning that from a read that would block. (Data that arrived meanwhile
                    // brought a newer event, which this does not clear.)
                    if n > 0 && n < buf.len() {
                        ready.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes `bytes` whole.
    pub async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_frames(&[bytes]).await
    }

    /// Writes whole frames queued together with as few system calls as the socket allows (one
    /// `writev` when it takes them all), without copying them into one buffer first.
    pub async fn write_frames<B: AsRef<[u8]>>(&self, frames: &[B]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> =
            frames.iter().map(|f| IoSlice::new(f.as_ref())).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.fd.get_ref().write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until the full socket takes writes again (consensus is reading slowly).
    async fn writable(&self) -> io::Result<()> {
        let sock = self.fd.get_ref().try_clone()?;
        // SAFETY: as in `new`; the duplicate lives, and is registered, only for this wait.
        let dup = unsafe { AsyncFd::register_with_interest(sock, Interest::WRITABLE)? };
        dup.writable().await?.retain_ready();
        Ok(())
    }
}

/// Bytes read from a stream, handed out as whole frames.
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The largest frame taken; a larger one is refused as soon as its segment table is there,
    /// before any room is made for it.
    limit: usize,
    /// The declared length of the frame refused as too large, once one was.
    refused: Option<usize>,
}

impl Default for FrameBuffer {
    fn default() -> FrameBuffer {
        FrameBuffer::with_limit(MAX_FRAME_BYTES)
    }
}

/// Reads ask for at least this much room.
const READ_CHUNK: usize = 64 * 1024;

impl FrameBuffer {
    /// A buffer for frames of up to [`MAX_FRAME_BYTES`], for streams from a process that may
    /// send anything Cap'n Proto carries (consensus's answers).
    pub fn new() -> FrameBuffer {
        FrameBuffer::default()
    }

    /// A buffer for frames of at most `limit` bytes (see [`crate::limits`]); `limit` is capped
    /// at [`MAX_FRAME_BYTES`].
    pub fn with_limit(limit: usize) -> FrameBuffer {
        FrameBuffer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            limit: limit.min(MAX_FRAME_BYTES),
            refused: None,
        }
    }

    /// The declared length of a frame `next_frame` refused for its size, if it refused one.
    pub fn refused_len(&self) -> Option<usize> {
        self.refused
    }

    /// Room to read into (at least 64 KiB, or the rest of a frame whose size is known); report
    /// how much was read with `filled`.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let pending = self.end - self.start;
        // An oversized frame is refused by `next_frame` before anyone reads for it.
        let rest = match declared_len(&self.buf[self.start..self.end], self.limit) {
            Ok(Some(len)) => len.saturating_sub(pending),
            _ => 0,
        };
        let want = rest.max(READ_CHUNK);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // Give back the memory of one huge frame.
            if self.buf.len() > 8 << 20 {
                self.buf = Vec::new();
            }
        }
        if self.buf.len() - self.end < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
            if self.buf.len() - self.end < want {
                self.buf.resize(self.end + want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into what `spare_mut` returned.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next whole frame, if one has arrived. An error means the stream is corrupt and must be
    /// closed.
    pub fn next_frame(&mut self) -> Result<Option<Reader<BufferSegments<&[u8]>>>, String> {
        let pending = &self.buf[self.start..self.end];
        let len = match declared_len(pending, self.limit) {
            Ok(Some(len)) if pending.len() >= len => len,
            Ok(_) => return Ok(None),
            Err(refusal) => {
                if let Refusal::TooLarge { len, .. } = refusal {
                    self.refused = Some(len);
                }
                return Err(refusal.to_string());
            }
        };
        let start = self.start;
        self.start += len;
        let mut frame = &self.buf[start..start + len];
        capnp::serialize::read_message_from_flat_slice(&mut frame, crate::reader_options())
            .map(Some)
            .map_err(|e| format!("an unreadable frame: {e}"))
    }

    /// Bytes of a frame that has not fully arrived yet.
    pub fn partial(&self) -> usize {
        self.end - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member_capnp::peer_frame;

    fn frame(f: impl FnOnce(peer_frame::Builder)) -> Vec<u8> {
        let mut message = Builder::new_default();
        f(message.init_root());
        let mut out = Vec::new();
        write_frame(&mut out, &message);
        out
    }

    fn messages(data: &[&[u8]]) -> Vec<u8> {
        frame(|f| {
            let mut list = f.init_messages(data.len() as u32);
            for (i, d) in data.iter().enumerate() {
                let mut m = list.reborrow().get(i as u32);
                m.set_to(2);
                m.set_from(1);
                m.set_data(d);
            }
        })
    }

    fn feed(buf: &mut FrameBuffer, mut bytes: &[u8], chunk: usize) -> Vec<String> {
        let mut seen = Vec::new();
        while !bytes.is_empty() {
            let spare = buf.spare_mut();
            let n = chunk.min(bytes.len()).min(spare.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            buf.filled(n);
            bytes = &bytes[n..];
            while let Some(f) = buf.next_frame().unwrap() {
                let f = f.get_root::<peer_frame::Reader>().unwrap();
                seen.push(match f.which().unwrap() {
                    peer_frame::Hello(v) => format!("hello {v}"),
                    peer_frame::Messages(list) => {
                        let list = list.unwrap();
                        let sizes: Vec<usize> =
                            list.iter().map(|m| m.get_data().unwrap().len()).collect();
                        format!("messages {sizes:?}")
                    }
                    peer_frame::Unreachable(id) => format!("unreachable {id}"),
                    peer_frame::SnapshotStatus(_) => "snapshot".into(),
                    peer_frame::Counters(_) => "counters".into(),
                });
            }
        }
        seen
    }

    #[test]
    fn frames_survive_any_split() {
        let mut stream = frame(|mut f| f.set_hello(crate::PROTOCOL_VERSION));
        stream.extend(messages(&[b"append", &[7; 300_000]]));
        stream.extend(frame(|mut f| f.set_unreachable(3)));
        stream.extend(messages(&[]));
        let want = vec![
            format!("hello {}", crate::PROTOCOL_VERSION),
            "messages [6, 300000]".to_string(),
            "unreachable 3".to_string(),
            "messages []".to_string(),
        ];
        for chunk in [1, 3, 7, 4096, 65536, usize::MAX] {
            let mut buf = FrameBuffer::new();
            assert_eq!(feed(&mut buf, &stream, chunk), want, "chunk {chunk}");
            assert_eq!(buf.partial(), 0);
        }
    }

    #[test]
    fn a_corrupt_header_is_an_error_not_a_panic() {
        let mut buf = FrameBuffer::new();
        let bad = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        buf.spare_mut()[..8].copy_from_slice(&bad);
        buf.filled(8);
        assert!(buf.next_frame().err().unwrap().contains("segments"));

        // A size past the limit is refused as soon as the table is there.
        let mut buf = FrameBuffer::new();
        let huge = [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        buf.spare_mut()[..8].copy_from_slice(&huge);
        buf.filled(8);
        assert!(buf.next_frame().err().unwrap().contains("at most"));

        // A frame whose body is not a valid message.
        let mut buf = FrameBuffer::new();
        let garbage = [
            0, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        buf.spare_mut()[..16].copy_from_slice(&garbage);
        buf.filled(16);
        let frame = buf.next_frame().unwrap().unwrap();
        assert!(frame.get_root::<peer_frame::Reader>().is_err());
    }

    /// A frame over the buffer's limit is refused from its segment table alone: no room is made
    /// for it, and the buffer says how large it claimed to be.
    #[test]
    fn a_frame_over_the_limit_is_refused_without_room_for_it() {
        let mut buf = FrameBuffer::with_limit(1 << 20);
        // One segment of 2^27 words: 1 GiB.
        let header = [0, 0, 0, 0, 0, 0, 0, 8];
        buf.spare_mut()[..8].copy_from_slice(&header);
        buf.filled(8);
        let err = buf.next_frame().err().unwrap();
        assert!(err.contains("1073741832 bytes (at most 1048576)"), "{err}");
        assert_eq!(buf.refused_len(), Some((1 << 30) + 8));
        assert!(
            buf.spare_mut().len() <= READ_CHUNK,
            "room was made for the frame"
        );

        // At the limit it is taken.
        let mut buf = FrameBuffer::with_limit(24);
        let mut ok = vec![0, 0, 0, 0, 2, 0, 0, 0];
        ok.extend([0; 16]);
        buf.spare_mut()[..24].copy_from_slice(&ok);
        buf.filled(24);
        assert!(buf.next_frame().unwrap().is_some());
        assert_eq!(buf.refused_len(), None);
    }

    #[test]
    fn lengths_follow_the_segment_table() {
        // One segment of 2 words: 8-byte table + 16 bytes.
        let mut b = vec![0, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(frame_len(&b[..3]), Ok(None));
        assert_eq!(frame_len(&b), Ok(None));
        b.extend([0; 16]);
        assert_eq!(frame_len(&b), Ok(Some(24)));
        // Two segments: the table (12 bytes) is padded to 16.
        let b = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(frame_len(&b), Ok(None));
        assert_eq!(frame_len(&[b.as_slice(), &[0; 16]].concat()), Ok(Some(32)));
    }

    /// A write that finds the socket full waits until the other end reads, then completes; a
    /// read sees what was written, then 0 once the other end closes.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_socket_makes_writes_wait_for_the_reader() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let socket = FrameSocket::new(ours).unwrap();
        // Far more than a Unix socket buffers.
        let big = vec![7u8; 8 << 20];
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut got = vec![0u8; big_len()];
            theirs.read_exact(&mut got).unwrap();
            theirs.write_all(b"done").unwrap();
            got
        });
        fn big_len() -> usize {
            (8 << 20) + 3
        }
        socket.write_frames(&[&big[..], b"abc"]).await.unwrap();
        let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert_eq!(got.len(), big_len());
        assert!(got[..8 << 20].iter().all(|b| *b == 7));
        assert_eq!(&got[8 << 20..], b"abc");
        let mut buf = [0u8; 16];
        let mut read = Vec::new();
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buf[..n]);
        }
        assert_eq!(read, b"done");
    }
    /// After a short read the socket waits for the next event instead of reading again; data
    /// that comes later, in bursts or byte by byte, is still read, and so is the close.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_after_a_short_read_still_see_later_data() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let socket = FrameSocket::new(ours).unwrap();
        let writer = std::thread::spawn(move || {
            for chunk in [&b"first"[..], b"second", b"x", b"y"] {
                theirs.write_all(chunk).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let mut buf = vec![0u8; 64 << 10];
        let mut read = Vec::new();
        let deadline = std::time::Duration::from_secs(10);
        loop {
            let n = tokio::time::timeout(deadline, socket.read(&mut buf))
                .await
                .expect("a later write was never read")
                .unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buf[..n]);
        }
        writer.join().unwrap();
        assert_eq!(read, b"firstsecondxy");
    }
}
