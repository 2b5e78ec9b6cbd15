//! The framing of the two streams consensus's raft thread serves itself (`raft.sock`, see
//! `PeerFrame`, and `write.sock`, see `WriteFrame`, in member.capnp): Cap'n Proto messages in the
//! standard stream framing, one after another. `FrameBuffer` reassembles them from whatever a
//! read returned, so the same code serves the raft thread (non-blocking reads) and the gateways
//! (tokio reads).

use std::path::{Path, PathBuf};

use capnp::message::{Builder, Reader};
use capnp::serialize::BufferSegments;

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
    Ok(declared_len(buf)?.filter(|len| buf.len() >= *len))
}

/// The length the frame at the start of `buf` declares, once its segment table is there.
fn declared_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let segments = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize + 1;
    if segments > MAX_SEGMENTS {
        return Err(format!(
            "a frame with {segments} segments (at most {MAX_SEGMENTS})"
        ));
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
    if len > MAX_FRAME_BYTES {
        return Err(format!(
            "a frame of {len} bytes (at most {MAX_FRAME_BYTES})"
        ));
    }
    Ok(Some(len))
}

/// Writes whole frames queued together with as few system calls as the socket allows (one
/// `writev` when it takes them all), without copying them into one buffer first.
pub async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[Vec<u8>],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut slices: Vec<std::io::IoSlice<'_>> =
        frames.iter().map(|f| std::io::IoSlice::new(f)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = writer.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Bytes read from a stream, handed out as whole frames.
#[derive(Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Reads ask for at least this much room.
const READ_CHUNK: usize = 64 * 1024;

impl FrameBuffer {
    pub fn new() -> FrameBuffer {
        FrameBuffer::default()
    }

    /// Room to read into (at least 64 KiB, or the rest of a frame whose size is known); report
    /// how much was read with `filled`.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let pending = self.end - self.start;
        // An oversized frame is refused by `next_frame` before anyone reads for it.
        let rest = match declared_len(&self.buf[self.start..self.end]) {
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
        let Some(len) = frame_len(&self.buf[self.start..self.end])? else {
            return Ok(None);
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
}
