//! Raft snapshots between peer gateways. A `MsgSnapshot` only describes a state-machine image;
//! the image travels beside it on a bidirectional stream of its own, so heartbeats and appends
//! never wait behind it:
//!
//! - the sender writes the kind byte [`STREAM_SNAPSHOT`], the message as one frame (within the
//!   message limit), the image's length as a big-endian u64, then exactly that many bytes of
//!   image, and finishes its side;
//! - the receiver answers one byte: [`INSTALLED`] once its consensus installed the image, anything
//!   else when it did not. A stream reset, stopped or lost before that byte is a failure too.
//!
//! This module knows nothing of consensus. The sender's image comes from an [`ImageSource`],
//! which the link to consensus opens when asked with an [`ImageRequest`]
//! (`PeerRegistrar.snapshotImage`); the receiver's goes into an [`ImageSink`], which the link
//! hands over when told of an [`IncomingSnapshot`] (`PeerRegistrar.receiveSnapshot`). Both are
//! bounded channels of chunks of at most [`SNAPSHOT_CHUNK_BYTES`], so an image is never whole in
//! memory, and a receiving consensus slower than the network holds the sender back through QUIC
//! flow control.
//!
//! One snapshot at a time goes to each peer and one at a time comes in (a second is refused at
//! once; raft sends it again). A transfer that makes no progress for [`STALL`] fails, and every
//! send ends in one [`Report::Snapshot`](super::Report::Snapshot).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::{RecvStream, SendStream, VarInt};
use schema::limits::SNAPSHOT_CHUNK_BYTES;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::code;
use super::frame::{self, STREAM_SNAPSHOT};
use crate::counters::Counters;
use crate::error::{Error, Result};

/// A transfer fails after this long without progress: no byte written or read, no chunk from or
/// to consensus, no verdict.
pub const STALL: Duration = Duration::from_secs(30);
/// The verdict may take this many [`STALL`]s (ten minutes): the receiver installs first.
const VERDICT_STALLS: u32 = 20;
/// The largest image a peer may announce: more than any member's state machine, and far from
/// overflowing a count.
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;
/// The receiver's verdict: the image is installed (or the member already had that state).
pub const INSTALLED: u8 = 0;
/// The receiver's verdict otherwise.
pub const NOT_INSTALLED: u8 = 1;
/// Snapshot data yields to the messages stream (priority 0) on the same connection.
const PRIORITY: i32 = -1;

/// Asks the link to consensus for the image a `MsgSnapshot` to member `to` describes:
/// `message` is that message's data, as consensus sent it. `reply` takes the image, or why there
/// is none; dropping it fails the send.
#[derive(Debug)]
pub struct ImageRequest {
    pub to: u64,
    pub message: Vec<u8>,
    pub reply: oneshot::Sender<std::result::Result<ImageSource, String>>,
}

/// One outbound image: its length, then its bytes in order. The image ends when the sending
/// half of `chunks` is dropped (or sends an empty chunk); an `Err` fails it.
#[derive(Debug)]
pub struct ImageSource {
    pub total_bytes: u64,
    pub chunks: mpsc::Receiver<std::result::Result<Vec<u8>, String>>,
}

/// The sending half of an [`ImageSource`]'s chunks.
pub type ChunkSender = mpsc::Sender<std::result::Result<Vec<u8>, String>>;

impl ImageSource {
    /// A source of `total_bytes`, and where its chunks go in. One chunk waits in between: with
    /// the one being written and what the link reads ahead, a few MiB per transfer.
    pub fn channel(total_bytes: u64) -> (ChunkSender, ImageSource) {
        let (tx, chunks) = mpsc::channel(1);
        (
            tx,
            ImageSource {
                total_bytes,
                chunks,
            },
        )
    }
}

/// A snapshot member `from` (as the handshake authenticated it) began sending us: `message` is
/// its `MsgSnapshot`, and `total_bytes` of image follow. `reply` takes where the image goes, or
/// why it is refused; dropping it refuses the snapshot.
#[derive(Debug)]
pub struct IncomingSnapshot {
    pub from: u64,
    pub message: Vec<u8>,
    pub total_bytes: u64,
    pub reply: oneshot::Sender<std::result::Result<ImageSink, String>>,
}

/// What the transport hands on of an inbound image, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum ImageWrite {
    /// The next bytes, at most [`SNAPSHOT_CHUNK_BYTES`].
    Chunk(Vec<u8>),
    /// Every byte was handed on: check and install the image, then answer on `outcome`.
    Finish,
}

/// The transport's end of an inbound image: it writes the image into it, then finishes it.
#[derive(Debug)]
pub struct ImageSink {
    writes: mpsc::Sender<ImageWrite>,
    outcome: oneshot::Receiver<std::result::Result<(), String>>,
    /// `outcome` answered (a oneshot must not be polled again after that).
    failed: bool,
}

/// The link's end of an [`ImageSink`]: it takes the writes in order, and answers `outcome` once,
/// `Ok` after it installed the image, `Err` as soon as something failed. `writes` ending without
/// [`ImageWrite::Finish`] means the transfer was abandoned: drop the image.
#[derive(Debug)]
pub struct ImageWrites {
    pub writes: mpsc::Receiver<ImageWrite>,
    pub outcome: oneshot::Sender<std::result::Result<(), String>>,
}

impl ImageSink {
    /// A sink and the link's end of it. One write waits in between, beside what the link has in
    /// flight to consensus.
    pub fn channel() -> (ImageSink, ImageWrites) {
        let (writes, writes_rx) = mpsc::channel(1);
        let (outcome_tx, outcome) = oneshot::channel();
        (
            ImageSink {
                writes,
                outcome,
                failed: false,
            },
            ImageWrites {
                writes: writes_rx,
                outcome: outcome_tx,
            },
        )
    }

    /// Hands on one write, waiting for room; fails as soon as the link reports a failure.
    async fn put(&mut self, write: ImageWrite) -> std::result::Result<(), String> {
        if self.failed {
            return Err("the image was already refused".into());
        }
        tokio::select! {
            sent = self.writes.send(write) => match sent {
                Ok(()) => Ok(()),
                Err(_) => {
                    self.failed = true;
                    Err(failure(self.outcome.try_recv().ok()))
                }
            },
            outcome = &mut self.outcome => {
                self.failed = true;
                Err(failure(outcome.ok()))
            }
        }
    }

    /// Waits for the link's answer after [`ImageWrite::Finish`].
    async fn outcome(&mut self) -> std::result::Result<(), String> {
        if self.failed {
            return Err("the image was already refused".into());
        }
        self.failed = true;
        match (&mut self.outcome).await {
            Ok(outcome) => outcome,
            Err(_) => Err("consensus went away".into()),
        }
    }
}

/// Why the link ended an image early, from its outcome (if it gave one).
fn failure(outcome: Option<std::result::Result<(), String>>) -> String {
    match outcome {
        Some(Err(why)) => why,
        Some(Ok(())) => "consensus answered before the image was complete".into(),
        None => "consensus went away".into(),
    }
}

/// A one-at-a-time slot: taken while a transfer runs, given back when the guard drops.
pub(super) struct Slot(Arc<AtomicBool>);

impl Slot {
    pub(super) fn take(busy: &Arc<AtomicBool>) -> Option<Slot> {
        (!busy.swap(true, Ordering::AcqRel)).then(|| Slot(busy.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// `what` within [`STALL`] (or the stall given), else `Error::SnapshotStalled`.
async fn within<F: Future>(stall: Duration, what: &'static str, f: F) -> Result<F::Output> {
    tokio::time::timeout(stall, f)
        .await
        .map_err(|_| Error::SnapshotStalled { what, stall })
}

// ---------------------------------------------------------------- sending

/// The start of a snapshot stream: kind, message frame, image length.
pub(super) fn header(message: &[u8], total_bytes: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + message.len() + 8);
    out.push(STREAM_SNAPSHOT);
    frame::encode(&mut out, message);
    out.extend_from_slice(&total_bytes.to_be_bytes());
    out
}

/// Sends one snapshot to member `to`: asks consensus for its image through `images`, streams it
/// on a new stream of `conn` (a connection that passed the handshake), and waits for the peer's
/// verdict. `Ok` once the peer installed it.
pub(super) async fn send(
    conn: impl FnOnce() -> Option<quinn::Connection>,
    images: &mpsc::Sender<ImageRequest>,
    stall: Duration,
    to: u64,
    message: Vec<u8>,
) -> Result<u64> {
    let (reply, opened) = oneshot::channel();
    let request = ImageRequest {
        to,
        message: message.clone(),
        reply,
    };
    within(
        stall,
        "asking consensus for the image",
        images.send(request),
    )
    .await?
    .map_err(|_| Error::Snapshot("the link to consensus is gone".into()))?;
    let mut source = match within(stall, "opening the image", opened).await? {
        Ok(Ok(source)) => source,
        Ok(Err(why)) => return Err(Error::Snapshot(format!("no image to send: {why}"))),
        Err(_) => return Err(Error::Snapshot("consensus did not open the image".into())),
    };
    let conn = conn().ok_or_else(|| Error::Snapshot("not connected".into()))?;
    let (mut send, mut recv) = within(stall, "opening a stream", conn.open_bi()).await??;
    let _ = send.set_priority(PRIORITY);
    let result = stream_image(&mut send, &mut recv, &mut source, stall, &message).await;
    if result.is_err() {
        // Not a clean finish: the peer must not mistake what arrived for a whole image.
        let _ = send.reset(VarInt::from_u32(code::SNAPSHOT_FAILED));
        let _ = recv.stop(VarInt::from_u32(code::SNAPSHOT_FAILED));
    }
    result.map(|()| source.total_bytes)
}

async fn stream_image(
    send: &mut SendStream,
    recv: &mut RecvStream,
    source: &mut ImageSource,
    stall: Duration,
    message: &[u8],
) -> Result<()> {
    let total = source.total_bytes;
    write_all(send, &header(message, total), stall).await?;
    let mut sent = 0u64;
    loop {
        match within(stall, "reading the image", source.chunks.recv()).await? {
            Some(Ok(chunk)) if !chunk.is_empty() => {
                if chunk.len() as u64 > total - sent {
                    return Err(Error::Snapshot(format!(
                        "the image is longer than the {total} bytes consensus announced"
                    )));
                }
                write_all(send, &chunk, stall).await?;
                sent += chunk.len() as u64;
            }
            Some(Err(why)) => {
                return Err(Error::Snapshot(format!(
                    "reading the image failed after {sent} of {total} bytes: {why}"
                )));
            }
            // The end of the image.
            Some(Ok(_)) | None if sent == total => break,
            Some(Ok(_)) | None => {
                return Err(Error::Snapshot(format!(
                    "the image ended after {sent} of the {total} bytes consensus announced"
                )));
            }
        }
    }
    send.finish()?;
    let mut verdict = [0u8; 1];
    // The peer checks and installs the whole image before it answers (it reads and writes every
    // byte again): longer than any pause between chunks.
    match within(
        stall * VERDICT_STALLS,
        "waiting for the peer's verdict",
        recv.read_exact(&mut verdict),
    )
    .await?
    {
        Ok(()) if verdict[0] == INSTALLED => Ok(()),
        Ok(()) => Err(Error::Snapshot("the peer did not install it".into())),
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
            Err(stopped_by_peer(code))
        }
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(Error::Snapshot(
            "the peer ended the stream without a verdict".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `write_all` where each partial write must come within `stall`.
async fn write_all(send: &mut SendStream, mut buf: &[u8], stall: Duration) -> Result<()> {
    while !buf.is_empty() {
        let n = match within(stall, "writing to the peer", send.write(buf)).await? {
            Ok(n) => n,
            Err(quinn::WriteError::Stopped(code)) => return Err(stopped_by_peer(code)),
            Err(e) => return Err(e.into()),
        };
        buf = &buf[n..];
    }
    Ok(())
}

/// The peer stopped (or reset) a snapshot stream with `code`: why, as far as the code tells.
fn stopped_by_peer(code: VarInt) -> Error {
    let why = match u32::try_from(code.into_inner()) {
        Ok(code::SNAPSHOT_FAILED) => "it did not install the snapshot",
        Ok(code::FRAME_TOO_LARGE) => "it found the message or the image too large",
        // What gateways older than snapshots answer a snapshot stream with.
        Ok(code::BAD_STREAM | code::SNAPSHOTS_UNSUPPORTED) => "its gateway does not take snapshots",
        _ => "for a reason of its own",
    };
    Error::Snapshot(format!("the peer stopped the stream: {why} (code {code})"))
}

// ---------------------------------------------------------------- receiving

/// What receiving snapshots needs of the transport.
pub(super) struct Receiver {
    pub snapshots: mpsc::Sender<IncomingSnapshot>,
    /// Taken while a snapshot comes in.
    pub busy: Arc<AtomicBool>,
    pub max_message: usize,
    pub counters: Arc<Counters>,
    pub stall: Duration,
}

/// Why an inbound snapshot was not installed.
enum Failed {
    /// The header breaks the wire format: counted, and the stream is stopped with `code`.
    Malformed(u32, Error),
    /// Refused or failed otherwise; `Error::PeerGone` when the sender ended it.
    Other(Error),
}

/// The receiver's side of a snapshot stream member `from` opened (its kind byte already read):
/// hands the image to consensus, and answers the verdict.
pub(super) async fn receive(rx: Receiver, mut send: SendStream, mut recv: RecvStream, from: u64) {
    let result = match Slot::take(&rx.busy) {
        Some(_slot) => take(&rx, &mut recv, from).await,
        None => Err(Failed::Other(Error::Snapshot(
            "another snapshot is being received".into(),
        ))),
    };
    // The verdict before anything else: once consensus installed the image, it restarts.
    let verdict = if result.is_ok() {
        INSTALLED
    } else {
        NOT_INSTALLED
    };
    if send.write_all(&[verdict]).await.is_ok() {
        let _ = send.finish();
    }
    match result {
        Ok(total) => info!("installed a snapshot of {total} bytes from member {from:x}"),
        Err(Failed::Malformed(stop, e)) => {
            warn!("refusing a snapshot stream from member {from:x}: {e}");
            Counters::bump(&rx.counters.frames_refused);
            let _ = recv.stop(VarInt::from_u32(stop));
        }
        Err(Failed::Other(e @ Error::PeerGone(_))) => {
            debug!("a snapshot from member {from:x} ended early: {e}");
        }
        Err(Failed::Other(e)) => {
            warn!("not installing a snapshot from member {from:x}: {e}");
            let _ = recv.stop(VarInt::from_u32(code::SNAPSHOT_FAILED));
        }
    }
}

/// Reads the header and the image into consensus; the image's length once consensus installed
/// it. Dropping the sink on failure lets consensus delete what it got.
async fn take(rx: &Receiver, recv: &mut RecvStream, from: u64) -> Result<u64, Failed> {
    use Failed::Other;
    let (message, total) = within(rx.stall, "reading the header", read_header(recv, rx))
        .await
        .map_err(Other)??;
    let (reply, answered) = oneshot::channel();
    let incoming = IncomingSnapshot {
        from,
        message,
        total_bytes: total,
        reply,
    };
    within(
        rx.stall,
        "handing it to consensus",
        rx.snapshots.send(incoming),
    )
    .await
    .map_err(Other)?
    .map_err(|_| Other(Error::Snapshot("the link to consensus is gone".into())))?;
    let mut sink = match within(rx.stall, "waiting for consensus", answered)
        .await
        .map_err(Other)?
    {
        Ok(Ok(sink)) => sink,
        Ok(Err(why)) => {
            return Err(Other(Error::Snapshot(format!(
                "consensus refused it: {why}"
            ))));
        }
        Err(_) => return Err(Other(Error::Snapshot("consensus did not answer".into()))),
    };
    let refused = |why| {
        Other(Error::Snapshot(format!(
            "consensus refused the image: {why}"
        )))
    };
    let mut got = 0u64;
    while got < total {
        let len = (total - got).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
        let mut chunk = vec![0u8; len];
        let filled = fill(recv, &mut chunk, rx.stall).await.map_err(Other)?;
        if filled < len {
            return Err(Other(Error::PeerGone(format!(
                "the stream ended after {} of the {total} bytes announced",
                got + filled as u64
            ))));
        }
        got += len as u64;
        within(
            rx.stall,
            "writing to consensus",
            sink.put(ImageWrite::Chunk(chunk)),
        )
        .await
        .map_err(Other)?
        .map_err(refused)?;
    }
    // The sender finishes right after the image: anything more is not the image announced.
    let mut more = [0u8; 1];
    match within(
        rx.stall,
        "waiting for the end of the image",
        recv.read(&mut more),
    )
    .await
    .map_err(Other)?
    {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(Other(Error::Snapshot(format!(
                "more than the {total} bytes announced"
            ))));
        }
        Err(e) => return Err(Other(Error::PeerGone(e.to_string()))),
    }
    within(
        rx.stall,
        "writing to consensus",
        sink.put(ImageWrite::Finish),
    )
    .await
    .map_err(Other)?
    .map_err(refused)?;
    within(rx.stall, "installing the image", sink.outcome())
        .await
        .map_err(Other)?
        .map_err(refused)?;
    Ok(total)
}

/// Reads until `buf` is full or the stream ends, each read within `stall`; how much it read.
async fn fill(recv: &mut RecvStream, buf: &mut [u8], stall: Duration) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match within(
            stall,
            "reading from the peer",
            recv.read(&mut buf[filled..]),
        )
        .await?
        {
            Ok(Some(n)) => filled += n,
            Ok(None) => break,
            Err(e) => return Err(Error::PeerGone(e.to_string())),
        }
    }
    Ok(filled)
}

/// The message and the image length, each checked against its bound.
async fn read_header(recv: &mut RecvStream, rx: &Receiver) -> Result<(Vec<u8>, u64), Failed> {
    let gone = |e: Error| Failed::Other(Error::PeerGone(e.to_string()));
    let malformed = |e| Failed::Malformed(code::BAD_STREAM, e);
    let len = match frame::read_len(recv, rx.max_message).await {
        Ok(Some(len)) => len,
        Ok(None) => return Err(malformed(Error::Truncated)),
        Err(e @ Error::FrameTooLarge { .. }) => {
            return Err(Failed::Malformed(code::FRAME_TOO_LARGE, e));
        }
        Err(e @ Error::Truncated) => return Err(malformed(e)),
        Err(e) => return Err(gone(e)),
    };
    let message = match frame::read_body(recv, len).await {
        Ok(message) => message,
        Err(e @ Error::Truncated) => return Err(malformed(e)),
        Err(e) => return Err(gone(e)),
    };
    let mut total = [0u8; 8];
    match recv.read_exact(&mut total).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(malformed(Error::Truncated)),
        Err(e) => return Err(gone(e.into())),
    }
    let total = u64::from_be_bytes(total);
    if total > MAX_IMAGE_BYTES {
        return Err(Failed::Malformed(
            code::FRAME_TOO_LARGE,
            Error::ImageTooLarge {
                len: total,
                limit: MAX_IMAGE_BYTES,
            },
        ));
    }
    Ok((message, total))
}

/// In-memory ends of snapshot images, where consensus would be: images served from memory and
/// sinks that keep what they are given. For the transport's tests and the link's.
#[cfg(test)]
pub mod stand_in {
    use tokio::sync::Semaphore;

    use super::*;

    /// How a served image ends.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Ending {
        /// Every chunk, then the end.
        Whole,
        /// An error after this many chunks.
        FailAfter(usize),
        /// Nothing more after this many chunks, the source held open.
        StallAfter(usize),
    }

    /// Opens every image asked for as `image` (in chunks of [`SNAPSHOT_CHUNK_BYTES`]), ending as
    /// `ending` says. Tells the returned channel of each request: whom it was for, its message.
    pub fn serve_images(
        mut requests: mpsc::Receiver<ImageRequest>,
        image: Vec<u8>,
        ending: Ending,
    ) -> mpsc::UnboundedReceiver<(u64, Vec<u8>)> {
        let image = Arc::new(image);
        let (seen, seen_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                let _ = seen.send((request.to, request.message));
                let (chunks, source) = ImageSource::channel(image.len() as u64);
                let _ = request.reply.send(Ok(source));
                tokio::spawn(feed(image.clone(), chunks, ending));
            }
        });
        seen_rx
    }

    async fn feed(image: Arc<Vec<u8>>, chunks: ChunkSender, ending: Ending) {
        for (i, chunk) in image.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
            match ending {
                Ending::FailAfter(n) if i == n => {
                    let _ = chunks.send(Err("the image is gone".into())).await;
                    return;
                }
                Ending::StallAfter(n) if i == n => {
                    chunks.closed().await;
                    return;
                }
                _ => {}
            }
            if chunks.send(Ok(chunk.to_vec())).await.is_err() {
                return;
            }
        }
    }

    /// How a sink behaves.
    #[derive(Debug, Clone)]
    pub struct Sink {
        /// What `finish` answers.
        pub finish: std::result::Result<(), String>,
        /// When set, each chunk waits for a permit of it before it is taken.
        pub gate: Option<Arc<Semaphore>>,
    }

    impl Sink {
        pub fn installing() -> Sink {
            Sink {
                finish: Ok(()),
                gate: None,
            }
        }
    }

    /// One inbound image, as the sink ended with it.
    #[derive(Debug)]
    pub struct Taken {
        pub from: u64,
        pub message: Vec<u8>,
        pub total_bytes: u64,
        pub image: Vec<u8>,
        /// `finish` was called (else the image was dropped without it).
        pub finished: bool,
    }

    /// What a sink saw.
    #[derive(Debug)]
    pub enum SinkEvent {
        /// A chunk of this many bytes was taken.
        Chunk(usize),
        Done(Taken),
    }

    /// Takes every inbound snapshot into a sink behaving as `sink` says.
    pub fn take_images(
        mut incoming: mpsc::Receiver<IncomingSnapshot>,
        sink: Sink,
    ) -> mpsc::UnboundedReceiver<SinkEvent> {
        let (seen, seen_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(snapshot) = incoming.recv().await {
                let (image_sink, writes) = ImageSink::channel();
                let _ = snapshot.reply.send(Ok(image_sink));
                let taken = Taken {
                    from: snapshot.from,
                    message: snapshot.message,
                    total_bytes: snapshot.total_bytes,
                    image: Vec::new(),
                    finished: false,
                };
                tokio::spawn(keep(writes, taken, sink.clone(), seen.clone()));
            }
        });
        seen_rx
    }

    async fn keep(
        mut writes: ImageWrites,
        mut taken: Taken,
        sink: Sink,
        seen: mpsc::UnboundedSender<SinkEvent>,
    ) {
        while let Some(write) = writes.writes.recv().await {
            match write {
                ImageWrite::Chunk(chunk) => {
                    assert!(chunk.len() <= SNAPSHOT_CHUNK_BYTES, "{}", chunk.len());
                    if let Some(gate) = &sink.gate {
                        gate.acquire().await.expect("the gate stays open").forget();
                    }
                    let _ = seen.send(SinkEvent::Chunk(chunk.len()));
                    taken.image.extend_from_slice(&chunk);
                }
                ImageWrite::Finish => {
                    taken.finished = true;
                    let _ = writes.outcome.send(sink.finish.clone());
                    break;
                }
            }
        }
        let _ = seen.send(SinkEvent::Done(taken));
    }
}
