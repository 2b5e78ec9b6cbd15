//! Cluster queries on the peer port, etcd's `GET /members` between members: a member that starts
//! from an empty data dir asks the others what they know of it before raft takes part (see
//! [`Transport::ask_members`](super::Transport::ask_members)).
//!
//! A query is a bidirectional stream opened on a connection that passed the handshake (so the
//! same TLS and member checks as raft traffic): the asker writes the kind byte
//! [`STREAM_MEMBERS`] and finishes its side; the answerer writes one frame (a big-endian u32
//! length, then that many bytes) and finishes. The frame's bytes are a Cap'n Proto `PeerView`
//! that the gateway's link to consensus encodes and decodes; this module only carries them, at
//! most [`MEMBERS_ANSWER_BYTES`]. Anything else on the stream is an error, never a panic: another
//! request, bytes after the answer, a longer length prefix (refused before its body is read).

use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use schema::limits::MEMBERS_ANSWER_BYTES;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::code;
use super::frame::{self, STREAM_MEMBERS};
use crate::counters::Counters;
use crate::error::{Error, Result};

/// How long an answerer waits for its consensus's member table.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// A peer's cluster query, for the gateway's link to consensus to answer: `reply` takes the
/// encoded `PeerView` (dropping it leaves the query unanswered).
#[derive(Debug)]
pub struct MembersQuery {
    pub from: u64,
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// The asker's side: sends the query on `conn` and reads the answer's bytes.
pub(super) async fn ask(conn: &Connection) -> Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[STREAM_MEMBERS]).await?;
    send.finish()?;
    read_answer(&mut recv).await
}

/// Reads one answer frame and the end of the stream.
pub(super) async fn read_answer<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>> {
    let len = frame::read_len(r, MEMBERS_ANSWER_BYTES)
        .await?
        .ok_or_else(|| Error::MalformedMembers("the stream ended without an answer".into()))?;
    let body = frame::read_body(r, len).await?;
    let mut more = [0u8; 1];
    if r.read(&mut more).await? != 0 {
        return Err(Error::MalformedMembers(
            "bytes follow the answer frame".into(),
        ));
    }
    Ok(body)
}

/// The answer frame for `view` (an encoded `PeerView`), or an error when it is too large to send.
pub(super) fn answer_frame(view: &[u8]) -> Result<Vec<u8>> {
    if view.len() > MEMBERS_ANSWER_BYTES {
        return Err(Error::FrameTooLarge {
            len: view.len() as u64,
            limit: MEMBERS_ANSWER_BYTES,
        });
    }
    let mut out = Vec::with_capacity(4 + view.len());
    frame::encode(&mut out, view);
    Ok(out)
}

/// Checks a request as read to its end (at most two bytes of it): exactly the kind byte.
pub(super) fn check_request(request: &[u8]) -> Result<()> {
    match request {
        [STREAM_MEMBERS] => Ok(()),
        [] => Err(Error::MalformedMembers("an empty request".into())),
        [kind] => Err(Error::MalformedMembers(format!(
            "a bidirectional stream of unknown kind {kind}"
        ))),
        _ => Err(Error::MalformedMembers(
            "bytes follow the request's kind".into(),
        )),
    }
}

/// The answerer's side of one bidirectional stream that member `from` opened, whose first byte
/// `kind` was read (`None`: the stream ended before it).
pub(super) async fn answer(
    mut send: SendStream,
    mut recv: RecvStream,
    kind: Option<u8>,
    from: u64,
    queries: mpsc::Sender<MembersQuery>,
    counters: std::sync::Arc<Counters>,
) {
    // The kind byte is the whole request; reading one more tells a longer one apart.
    let request = match kind {
        None => Vec::new(),
        Some(kind) => match recv.read_to_end(1).await {
            Ok(rest) => [&[kind][..], &rest].concat(),
            Err(quinn::ReadToEndError::TooLong) => vec![kind, 0],
            Err(e) => {
                debug!("cluster query from member {from:x} ended: {e}");
                return;
            }
        },
    };
    if let Err(e) = check_request(&request) {
        warn!("refusing a stream from member {from:x}: {e}");
        Counters::bump(&counters.frames_refused);
        let _ = recv.stop(VarInt::from_u32(code::BAD_STREAM));
        let _ = send.reset(VarInt::from_u32(code::BAD_STREAM));
        return;
    }
    let (reply, answered) = oneshot::channel();
    if queries.try_send(MembersQuery { from, reply }).is_err() {
        debug!("not answering a cluster query from member {from:x}: too many at once");
        let _ = send.reset(VarInt::from_u32(code::SHUTDOWN));
        return;
    }
    let view = match tokio::time::timeout(ANSWER_WAIT, answered).await {
        Ok(Ok(view)) => view,
        _ => {
            debug!("not answering a cluster query from member {from:x}: consensus did not answer");
            let _ = send.reset(VarInt::from_u32(code::SHUTDOWN));
            return;
        }
    };
    let frame = match answer_frame(&view) {
        Ok(frame) => frame,
        Err(e) => {
            warn!("not answering a cluster query from member {from:x}: {e}");
            let _ = send.reset(VarInt::from_u32(code::SHUTDOWN));
            return;
        }
    };
    if send.write_all(&frame).await.is_ok() && send.finish().is_ok() {
        debug!("answered a cluster query from member {from:x}");
        let _ = tokio::time::timeout(ANSWER_WAIT, send.stopped()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_round_trip() {
        let frame = answer_frame(b"a view").unwrap();
        assert_eq!(&frame[..4], &[0, 0, 0, 6]);
        assert_eq!(read_answer(&mut frame.as_slice()).await.unwrap(), b"a view");
        let empty = answer_frame(b"").unwrap();
        assert_eq!(read_answer(&mut empty.as_slice()).await.unwrap(), b"");
        let largest = answer_frame(&vec![7; MEMBERS_ANSWER_BYTES]).unwrap();
        assert_eq!(
            read_answer(&mut largest.as_slice()).await.unwrap().len(),
            MEMBERS_ANSWER_BYTES
        );
    }

    #[tokio::test]
    async fn refuses_oversized_answers_on_both_sides() {
        assert!(matches!(
            answer_frame(&vec![0; MEMBERS_ANSWER_BYTES + 1]),
            Err(Error::FrameTooLarge { .. })
        ));
        // A 4 GiB prefix with nothing behind it: refused from the prefix alone.
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(matches!(
            read_answer(&mut r).await,
            Err(Error::FrameTooLarge { len: 0xffff_ffff, limit }) if limit == MEMBERS_ANSWER_BYTES
        ));
        assert_eq!(r, &[1, 2], "read past the length prefix");
    }

    #[tokio::test]
    async fn refuses_malformed_answers() {
        // No answer at all, a cut prefix, a cut body, and bytes after the frame.
        for bad in [
            &[][..],
            &[0, 0],
            &[0, 0, 0, 5, b'a'],
            &[0, 0, 0, 1, b'a', b'b'],
        ] {
            let mut r = bad;
            let got = read_answer(&mut r).await;
            assert!(
                matches!(got, Err(Error::MalformedMembers(_) | Error::Truncated)),
                "{bad:?}: {got:?}"
            );
        }
    }

    #[test]
    fn checks_requests() {
        check_request(&[STREAM_MEMBERS]).unwrap();
        for bad in [
            &[][..],
            &[frame::STREAM_MESSAGES],
            &[9],
            &[STREAM_MEMBERS, 0],
        ] {
            assert!(
                matches!(check_request(bad), Err(Error::MalformedMembers(_))),
                "{bad:?}"
            );
        }
    }
}
