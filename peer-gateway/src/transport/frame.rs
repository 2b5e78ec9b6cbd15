//! Framing of raft messages on QUIC streams: each stream starts with one kind byte, then carries
//! frames of a big-endian u32 length followed by that many bytes of `RaftMessage.data`.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// The long-lived stream of ordinary messages (appends, heartbeats, votes).
pub const STREAM_MESSAGES: u8 = 0;
/// A stream that carries one snapshot message and is then finished.
pub const STREAM_SNAPSHOT: u8 = 1;

/// Largest ordinary message we send or accept.
pub const MAX_MESSAGE_FRAME: usize = 64 << 20;
/// Largest snapshot message: the largest `Data` a Cap'n Proto message can carry to consensus.
pub const MAX_SNAPSHOT_FRAME: usize = (1 << 29) - 1;

/// The frame limit of a stream kind, or None for a kind we do not know.
pub fn limit_of(kind: u8) -> Option<usize> {
    match kind {
        STREAM_MESSAGES => Some(MAX_MESSAGE_FRAME),
        STREAM_SNAPSHOT => Some(MAX_SNAPSHOT_FRAME),
        _ => None,
    }
}

/// The length prefix of a frame. Callers check the size against the limits first.
pub fn header(len: usize) -> [u8; 4] {
    debug_assert!(len <= MAX_SNAPSHOT_FRAME);
    (len as u32).to_be_bytes()
}

/// Appends one frame to `buf`.
pub fn encode(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(&header(data.len()));
    buf.extend_from_slice(data);
}

/// Reads the next frame. `Ok(None)` when the stream ends cleanly between frames.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Option<Vec<u8>>> {
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
    // Grow as bytes arrive rather than trusting the announced length with one big allocation.
    let mut data = Vec::with_capacity((len as usize).min(1 << 20));
    r.take(len).read_to_end(&mut data).await?;
    if data.len() as u64 != len {
        return Err(Error::Truncated);
    }
    Ok(Some(data))
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
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        match read(&mut r, MAX_MESSAGE_FRAME).await {
            Err(Error::FrameTooLarge { len, limit }) => {
                assert_eq!(len, u32::MAX as u64);
                assert_eq!(limit, MAX_MESSAGE_FRAME);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
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

    #[test]
    fn stream_kinds_have_limits() {
        assert_eq!(limit_of(STREAM_MESSAGES), Some(MAX_MESSAGE_FRAME));
        assert_eq!(limit_of(STREAM_SNAPSHOT), Some(MAX_SNAPSHOT_FRAME));
        assert_eq!(limit_of(9), None);
    }
}
