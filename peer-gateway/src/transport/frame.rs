//! Framing of raft messages on QUIC streams: each stream starts with one kind byte, then carries
//! frames of a big-endian u32 length followed by that many bytes of `RaftMessage.data` (a
//! snapshot stream one frame, then its image: see [`super::snapshot`]).

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// The long-lived stream of ordinary messages (appends, heartbeats, votes).
pub const STREAM_MESSAGES: u8 = 0;
/// A bidirectional stream that carries one snapshot: its message as one frame (within the message
/// limit), then its image's length and the image, streamed and never held whole; the receiver
/// answers one byte (see [`super::snapshot`]).
pub const STREAM_SNAPSHOT: u8 = 1;
/// A bidirectional stream that carries one cluster query and its answer (see
/// [`super::members`]); with snapshots, the only kinds of bidirectional stream after the
/// handshake.
pub const STREAM_MEMBERS: u8 = 2;

/// The length prefix of a frame. Callers check the size against the limit first.
pub fn header(len: usize) -> [u8; 4] {
    debug_assert!(len <= u32::MAX as usize);
    (len as u32).to_be_bytes()
}

/// Appends one frame to `buf`.
pub fn encode(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(&header(data.len()));
    buf.extend_from_slice(data);
}

/// Reads the next frame's length prefix, refusing one over `limit` before anything is read or
/// allocated for its body. `Ok(None)` when the stream ends cleanly between frames.
pub async fn read_len<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Option<usize>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as u64;
    if len > limit as u64 {
        return Err(Error::FrameTooLarge { len, limit });
    }
    Ok(Some(len as usize))
}

/// Reads a frame's body of `len` bytes (from [`read_len`]).
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>> {
    // Grow as bytes arrive rather than trusting the announced length with one big allocation.
    let mut data = Vec::with_capacity(len.min(1 << 20));
    r.take(len as u64).read_to_end(&mut data).await?;
    if data.len() != len {
        return Err(Error::Truncated);
    }
    Ok(data)
}

/// Reads the next frame. `Ok(None)` when the stream ends cleanly between frames.
#[cfg(test)]
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Option<Vec<u8>>> {
    match read_len(r, limit).await? {
        Some(len) => read_body(r, len).await.map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_frames() {
        let mut buf = Vec::new();
        encode(&mut buf, b"hello");
        encode(&mut buf, b"");
        encode(&mut buf, &[7u8; 70_000]);
        let mut r = buf.as_slice();
        assert_eq!(read(&mut r, 100_000).await.unwrap().unwrap(), b"hello");
        assert_eq!(read(&mut r, 100_000).await.unwrap().unwrap(), b"");
        assert_eq!(
            read(&mut r, 100_000).await.unwrap().unwrap(),
            vec![7u8; 70_000]
        );
        assert!(read(&mut r, 100_000).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_oversized_lengths_before_reading_them() {
        let limit = schema::limits::raft_message_limit(schema::limits::DEFAULT_MAX_REQUEST_BYTES);
        // A 1 GiB prefix and nothing behind it: refused from the prefix alone.
        let mut r: &[u8] = &[0x40, 0, 0, 0, 1, 2, 3];
        match read(&mut r, limit).await {
            Err(Error::FrameTooLarge { len, limit: l }) => {
                assert_eq!(len, 1 << 30);
                assert_eq!(l, limit);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(r, &[1, 2, 3], "read past the length prefix");
        let mut buf = Vec::new();
        encode(&mut buf, &[0u8; 11]);
        assert!(matches!(
            read(&mut buf.as_slice(), 10).await,
            Err(Error::FrameTooLarge { len: 11, .. })
        ));
    }

    #[tokio::test]
    async fn rejects_truncated_frames() {
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(read(&mut r, 10).await, Err(Error::Truncated)));
        let mut r: &[u8] = &[0, 0, 0, 5, b'a', b'b'];
        assert!(matches!(read(&mut r, 10).await, Err(Error::Truncated)));
    }
}
