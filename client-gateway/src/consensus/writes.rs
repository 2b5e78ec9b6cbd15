//! The write stream (protocol 3): puts, deletes and txns that write go to consensus as
//! `WriteFrame`s on `write.sock`, which consensus's raft thread reads and answers itself, so a
//! write wakes no other thread of consensus on its way in or out. Everything else stays on
//! `ClientPlane`.
//!
//! The [`link`](super::link) connects one stream per registration, right after registering
//! ([`connect`]), and hands its [`Writes`] handle out in the
//! [`Session`](super::plane::Session). A request gets an id, waits under it, and its frame is
//! queued to the writer task, which sends whatever queued up meanwhile in one `writev`; the reader
//! task completes the waiting request whose id consensus's reply names. When the stream ends
//! ([`Stream`]), every waiting request fails UNAVAILABLE and the link registers again. All of it
//! runs on the link's `LocalSet`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use prost::Message as _;
use schema::member_capnp::{write_frame, write_reply, write_request};
use schema::stream::{self, FrameBuffer, FrameSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::debug;

use crate::consensus::from_capnp;
use crate::consensus::to_capnp;
use crate::error::Error;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};

/// Frames waiting for the writer, at most; a request beyond that waits for room.
const MAX_QUEUED_FRAMES: usize = 1024;
/// Frames in one `writev`, at most (the kernel takes up to 1024 slices).
const MAX_BATCH: usize = 256;
/// Connect attempts after registering: consensus binds `write.sock` before `client.sock`, so the
/// first normally works; the others ride out a consensus that is still starting up.
const CONNECT_ATTEMPTS: u32 = 5;
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// A reply, converted; the caller checks it answers the kind of request it sent.
enum Answer {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

impl Answer {
    fn kind(&self) -> &'static str {
        match self {
            Answer::Put(_) => "put",
            Answer::DeleteRange(_) => "deleteRange",
            Answer::Txn(_) => "txn",
        }
    }
}

type Waiter = oneshot::Sender<Result<Answer, Status>>;

/// What the handle and the stream's tasks share.
struct Shared {
    next_id: Cell<u64>,
    waiting: RefCell<HashMap<u64, Waiter>>,
    /// Why the stream ended; `None` while it is up.
    ended: RefCell<Option<String>>,
    frames: mpsc::Sender<Vec<u8>>,
}

impl Shared {
    /// The stream is over: later requests are refused, and those waiting fail, as their outcome
    /// is unknown (consensus may have applied them). Only the first reason counts.
    fn end(&self, why: &str) {
        if self.ended.borrow().is_some() {
            return;
        }
        *self.ended.borrow_mut() = Some(why.to_string());
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (_, waiter) in waiting {
            let _ = waiter.send(Err(lost(why)));
        }
    }

    /// Hands a reply to the request it answers.
    fn complete(&self, reply: write_reply::Reader<'_>) {
        let id = reply.get_id();
        // Removed first: it is gone whether or not the reply is readable.
        let Some(waiter) = self.waiting.borrow_mut().remove(&id) else {
            debug!(
                id,
                "a reply to no waiting write request (its client left, or an unknown id); dropped"
            );
            return;
        };
        let _ = waiter.send(answer(reply));
    }
}

/// A request that was sent, or may have been: consensus may still apply it.
fn lost(why: &str) -> Status {
    Status::unavailable(format!(
        "client gateway: lost the connection to consensus (write stream), outcome unknown: {why}"
    ))
}

/// A request that never left: the stream had already ended.
fn not_sent(why: &str) -> Status {
    Status::unavailable(format!(
        "client gateway: consensus is unreachable (write stream closed: {why})"
    ))
}

/// Reads a `WriteReply`: the refusal if set, else the converted response.
fn answer(reply: write_reply::Reader<'_>) -> Result<Answer, Status> {
    if reply.has_error() {
        return Err(from_capnp::refusal(
            reply.get_error().map_err(from_capnp::malformed)?,
        ));
    }
    let malformed = from_capnp::malformed;
    match reply.which() {
        Ok(write_reply::None(())) => Err(Status::internal(
            "client gateway: consensus answered with neither an error nor a response",
        )),
        Ok(write_reply::Put(r)) => Ok(Answer::Put(
            from_capnp::put(r.map_err(malformed)?).map_err(malformed)?,
        )),
        Ok(write_reply::DeleteRange(r)) => Ok(Answer::DeleteRange(
            from_capnp::delete_range(r.map_err(malformed)?).map_err(malformed)?,
        )),
        Ok(write_reply::Txn(r)) => Ok(Answer::Txn(
            from_capnp::txn(r.map_err(malformed)?).map_err(malformed)?,
        )),
        Err(e) => Err(malformed(e.into())),
    }
}

fn mismatch(asked: &str, answer: &Answer) -> Status {
    Status::internal(format!(
        "client gateway: malformed reply from consensus: a {asked} answered as a {}",
        answer.kind()
    ))
}

/// Sends writes on the stream of one registration. Cheap to clone; `!Send`, like the session.
#[derive(Clone)]
pub struct Writes {
    shared: Rc<Shared>,
}

impl Writes {
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, Status> {
        let size = req.key.len() + req.value.len() + 128;
        match self
            .call(size, |r| {
                to_capnp::put(&req, r.init_put());
                Ok(())
            })
            .await?
        {
            Answer::Put(resp) => Ok(resp),
            other => Err(mismatch("put", &other)),
        }
    }

    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Status> {
        let size = req.key.len() + req.range_end.len() + 128;
        match self
            .call(size, |r| {
                to_capnp::delete_range(&req, r.init_delete_range());
                Ok(())
            })
            .await?
        {
            Answer::DeleteRange(resp) => Ok(resp),
            other => Err(mismatch("deleteRange", &other)),
        }
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        // Cap'n Proto's encoding of the ops (pointers, padding) is larger than protobuf's.
        let size = 2 * req.encoded_len() + 256;
        match self
            .call(size, |r| to_capnp::txn(&req, r.init_txn()))
            .await?
        {
            Answer::Txn(resp) => Ok(resp),
            other => Err(mismatch("txn", &other)),
        }
    }

    /// Sends one request and waits for its reply. Sent at most once, never retried.
    async fn call(
        &self,
        size: usize,
        fill: impl FnOnce(write_request::Builder<'_>) -> Result<(), Status>,
    ) -> Result<Answer, Status> {
        let shared = &self.shared;
        if let Some(why) = shared.ended.borrow().as_deref() {
            return Err(not_sent(why));
        }
        let id = shared.next_id.get();
        shared.next_id.set(id.wrapping_add(1));
        let mut message = schema::builder_for(size);
        {
            let mut request = message.init_root::<write_frame::Builder>().init_request();
            request.set_id(id);
            fill(request)?;
        }
        let words = capnp::serialize::compute_serialized_size_in_words(&message);
        let mut frame = Vec::with_capacity(8 * words);
        stream::write_frame(&mut frame, &message);

        let (waiter, reply) = oneshot::channel();
        shared.waiting.borrow_mut().insert(id, waiter);
        // If the caller goes away (the client left), nobody waits any more: a late reply is
        // then dropped instead of piling up.
        let _forget = Forget { shared, id };
        if shared.frames.send(frame).await.is_err() {
            let why = shared.ended.borrow().clone();
            return Err(not_sent(why.as_deref().unwrap_or("its writer stopped")));
        }
        reply
            .await
            .map_err(|_| lost("the stream was dropped with the request in flight"))?
    }
}

/// Removes a request from `waiting` when its caller stops waiting, answered or not.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.waiting.borrow_mut().remove(&self.id);
    }
}

/// The tasks serving one write stream. Dropping it closes the stream, failing what still waits.
pub struct Stream {
    reader: JoinHandle<String>,
    writer: JoinHandle<String>,
    shared: Rc<Shared>,
}

impl Stream {
    /// Resolves once the stream ends (EOF, an I/O error or a corrupt frame), with why.
    pub async fn ended(&mut self) -> String {
        let end = tokio::select! {
            end = &mut self.reader => end,
            end = &mut self.writer => end,
        };
        end.unwrap_or_else(|e| format!("the write stream's task failed: {e}"))
    }

    /// Closes the stream for `why`: requests still waiting fail with it.
    pub fn close(self, why: &str) {
        self.shared.end(why);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        self.shared.end("the write stream was closed");
    }
}

/// Connects `write.sock` and says hello; retries a few times, briefly. Must run inside a
/// `LocalSet`.
pub async fn connect(path: &Path) -> Result<(Writes, Stream), Error> {
    let mut backoff = CONNECT_BACKOFF;
    let mut attempt = 1;
    loop {
        match hello(path).await {
            Ok(socket) => return Ok(start(socket)),
            Err(e) if attempt >= CONNECT_ATTEMPTS => {
                return Err(Error::WriteStream {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
            Err(e) => {
                debug!(path = %path.display(), error = %e, "cannot connect the write stream yet")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
        attempt += 1;
    }
}

async fn hello(path: &Path) -> std::io::Result<FrameSocket> {
    let socket = FrameSocket::connect(path).await?;
    let mut message = capnp::message::Builder::new_default();
    message
        .init_root::<write_frame::Builder>()
        .set_hello(schema::PROTOCOL_VERSION);
    let mut out = Vec::new();
    stream::write_frame(&mut out, &message);
    socket.write_all(&out).await?;
    Ok(socket)
}

/// Serves a stream that has said hello.
fn start(socket: FrameSocket) -> (Writes, Stream) {
    let (frames, queued) = mpsc::channel(MAX_QUEUED_FRAMES);
    let shared = Rc::new(Shared {
        next_id: Cell::new(1),
        waiting: RefCell::new(HashMap::new()),
        ended: RefCell::new(None),
        frames,
    });
    let socket = Rc::new(socket);
    let stream = Stream {
        reader: tokio::task::spawn_local(read_replies(shared.clone(), socket.clone())),
        writer: tokio::task::spawn_local(write_frames(shared.clone(), socket, queued)),
        shared: shared.clone(),
    };
    (Writes { shared }, stream)
}

/// Completes waiting requests with consensus's replies; returns only with why the stream ended,
/// having failed what still waited.
async fn read_replies(shared: Rc<Shared>, socket: Rc<FrameSocket>) -> String {
    let mut buf = FrameBuffer::new();
    let why = loop {
        match socket.read(buf.spare_mut()).await {
            Ok(0) => break "consensus closed the write stream".to_string(),
            Ok(n) => buf.filled(n),
            Err(e) => break format!("reading the write stream: {e}"),
        }
        if let Err(e) = read_frames(&shared, &mut buf) {
            break format!("the write stream is corrupt: {e}");
        }
    };
    shared.end(&why);
    why
}

/// Handles every whole frame in `buf`. An error means the stream cannot go on: a frame we cannot
/// read may be the reply someone waits for, and it would wait forever.
fn read_frames(shared: &Shared, buf: &mut FrameBuffer) -> Result<(), String> {
    while let Some(frame) = buf.next_frame()? {
        let frame = frame
            .get_root::<write_frame::Reader>()
            .map_err(|e| format!("an unreadable frame: {e}"))?;
        match frame.which() {
            Ok(write_frame::Reply(reply)) => {
                shared.complete(reply.map_err(|e| format!("an unreadable reply: {e}"))?)
            }
            Ok(write_frame::Hello(_) | write_frame::Request(_)) => {
                debug!("ignoring a write-stream frame that only gateways send")
            }
            Err(capnp::NotInSchema(kind)) => {
                debug!(kind, "ignoring a write-stream frame of unknown kind")
            }
        }
    }
    Ok(())
}

/// Writes the queued frames: whatever queued up meanwhile goes in the same `writev`, so a burst
/// of requests costs one syscall. Returns only with why the stream ended.
async fn write_frames(
    shared: Rc<Shared>,
    socket: Rc<FrameSocket>,
    mut queued: mpsc::Receiver<Vec<u8>>,
) -> String {
    let mut frames = Vec::with_capacity(MAX_BATCH);
    let why = loop {
        // `shared` holds a sender, so this only ends by an error or by being aborted.
        if queued.recv_many(&mut frames, MAX_BATCH).await == 0 {
            break "the write stream's queue closed".to_string();
        }
        if let Err(e) = socket.write_frames(&frames).await {
            break format!("writing the write stream: {e}");
        }
        frames.clear();
    };
    shared.end(&why);
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::testing::write_stream::{ConsensusEnd, Seen};
    use tonic::Code;

    const WAIT: Duration = Duration::from_secs(10);

    /// A gateway end connected to a consensus end through a real `write.sock`, hello checked.
    async fn connected() -> (Writes, Stream, ConsensusEnd, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = schema::write_socket(dir.path());
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (writes, stream) = connect(&path).await.unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let mut consensus = ConsensusEnd::new(socket);
        assert_eq!(
            next(&mut consensus).await,
            Seen::Hello(schema::PROTOCOL_VERSION)
        );
        (writes, stream, consensus, dir)
    }

    async fn next(consensus: &mut ConsensusEnd) -> Seen {
        tokio::time::timeout(WAIT, consensus.next())
            .await
            .expect("the gateway sent nothing in time")
            .expect("the gateway closed the stream")
    }

    async fn settled<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("no answer in time")
            .unwrap()
    }

    fn put(key: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        }
    }

    fn spawn_put(
        writes: &Writes,
        key: &str,
    ) -> tokio::task::JoinHandle<Result<PutResponse, Status>> {
        let (writes, req) = (writes.clone(), put(key));
        tokio::task::spawn_local(async move { writes.put(req).await })
    }

    fn put_response(mut r: write_reply::Builder<'_>, revision: i64) {
        let mut p = r.reborrow().init_put();
        p.reborrow().init_header().set_revision(revision);
        let mut prev = p.init_prev_kv();
        prev.set_key(b"a");
        prev.set_value(b"old");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replies_reach_their_requests_by_id() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (writes, _stream, mut consensus, _dir) = connected().await;
                let first = spawn_put(&writes, "a");
                let second = spawn_put(&writes, "b");
                let Seen::Put { id: a, key, value } = next(&mut consensus).await else {
                    panic!("expected a put");
                };
                assert_eq!((key.as_slice(), value.as_slice()), (&b"a"[..], &b"v"[..]));
                let Seen::Put { id: b, key, .. } = next(&mut consensus).await else {
                    panic!("expected a put");
                };
                assert_eq!(key, b"b");
                assert_ne!(a, b);

                // Frames that only gateways send, and a reply nobody waits for, change nothing.
                consensus.send(|mut f| f.set_hello(9)).await;
                consensus.reply(a + b + 100, |r| put_response(r, 1)).await;

                // Answered out of order: each reaches its own caller.
                consensus
                    .refuse(
                        b,
                        schema::code::NOT_FOUND,
                        "etcdserver: requested lease not found",
                    )
                    .await;
                consensus.reply(a, |r| put_response(r, 42)).await;
                let err = settled(second).await.unwrap_err();
                assert_eq!(err.code(), Code::NotFound);
                assert_eq!(err.message(), "etcdserver: requested lease not found");
                let resp = settled(first).await.unwrap();
                assert_eq!(resp.header.unwrap().revision, 42);
                assert_eq!(resp.prev_kv.unwrap().value, b"old");

                // Deletes and txns that write take the same path.
                let task = {
                    let writes = writes.clone();
                    tokio::task::spawn_local(async move {
                        writes
                            .delete_range(DeleteRangeRequest {
                                key: b"d".to_vec(),
                                ..Default::default()
                            })
                            .await
                    })
                };
                let Seen::DeleteRange { id, key } = next(&mut consensus).await else {
                    panic!("expected a deleteRange");
                };
                assert_eq!(key, b"d");
                consensus
                    .reply(id, |r| r.init_delete_range().set_deleted(3))
                    .await;
                assert_eq!(settled(task).await.unwrap().deleted, 3);

                let task = {
                    let writes = writes.clone();
                    tokio::task::spawn_local(async move {
                        writes
                            .txn(TxnRequest {
                                compare: vec![],
                                success: vec![crate::proto::etcdserverpb::RequestOp {
                                    request: Some(
                                        crate::proto::etcdserverpb::request_op::Request::RequestPut(
                                            put("t"),
                                        ),
                                    ),
                                }],
                                failure: vec![],
                            })
                            .await
                    })
                };
                let Seen::Txn { id, success } = next(&mut consensus).await else {
                    panic!("expected a txn");
                };
                assert_eq!(success, 1);
                consensus
                    .reply(id, |r| r.init_txn().set_succeeded(true))
                    .await;
                assert!(settled(task).await.unwrap().succeeded);
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replies_that_do_not_fit_their_request_are_internal_errors() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (writes, _stream, mut consensus, _dir) = connected().await;
                let task = spawn_put(&writes, "a");
                let Seen::Put { id, .. } = next(&mut consensus).await else {
                    panic!("expected a put");
                };
                consensus
                    .reply(id, |r| r.init_delete_range().set_deleted(1))
                    .await;
                assert_eq!(settled(task).await.unwrap_err().code(), Code::Internal);

                let task = spawn_put(&writes, "b");
                let Seen::Put { id, .. } = next(&mut consensus).await else {
                    panic!("expected a put");
                };
                consensus.reply(id, |mut r| r.set_none(())).await;
                let err = settled(task).await.unwrap_err();
                assert_eq!(err.code(), Code::Internal);
                assert!(err.message().contains("neither"), "{}", err.message());

                // The stream goes on.
                let task = spawn_put(&writes, "c");
                let Seen::Put { id, .. } = next(&mut consensus).await else {
                    panic!("expected a put");
                };
                consensus.reply(id, |r| put_response(r, 5)).await;
                assert_eq!(settled(task).await.unwrap().header.unwrap().revision, 5);
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_that_leaves_is_forgotten() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (writes, _stream, mut consensus, _dir) = connected().await;
                let task = spawn_put(&writes, "a");
                let Seen::Put { id, .. } = next(&mut consensus).await else {
                    panic!("expected a put");
                };
                assert_eq!(writes.shared.waiting.borrow().len(), 1);
                task.abort();
                let _ = task.await;
                assert!(writes.shared.waiting.borrow().is_empty());
                // Its late reply is dropped; the stream goes on.
                consensus.reply(id, |r| put_response(r, 1)).await;
                let task = spawn_put(&writes, "b");
                let Seen::Put { id, .. } = next(&mut consensus).await else {
                    panic!("expected a put");
                };
                consensus.reply(id, |r| put_response(r, 2)).await;
                assert_eq!(settled(task).await.unwrap().header.unwrap().revision, 2);
                assert!(writes.shared.waiting.borrow().is_empty());
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn when_consensus_closes_the_stream_waiting_requests_fail_unavailable() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (writes, mut stream, mut consensus, _dir) = connected().await;
                let task = spawn_put(&writes, "a");
                assert!(matches!(next(&mut consensus).await, Seen::Put { .. }));
                drop(consensus);
                let err = settled(task).await.unwrap_err();
                assert_eq!(err.code(), Code::Unavailable);
                assert!(
                    err.message().contains("lost the connection to consensus"),
                    "{}",
                    err.message()
                );
                let why = tokio::time::timeout(WAIT, stream.ended()).await.unwrap();
                assert_eq!(why, "consensus closed the write stream");
                // Later requests are refused at once.
                let err = writes.put(put("b")).await.unwrap_err();
                assert_eq!(err.code(), Code::Unavailable);
                assert!(
                    err.message().contains("write stream closed"),
                    "{}",
                    err.message()
                );
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_corrupt_frame_ends_the_stream() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (writes, mut stream, mut consensus, _dir) = connected().await;
                let task = spawn_put(&writes, "a");
                assert!(matches!(next(&mut consensus).await, Seen::Put { .. }));
                // A segment table claiming 2^32 segments.
                consensus.write_raw(&[0xff; 16]).await;
                assert_eq!(settled(task).await.unwrap_err().code(), Code::Unavailable);
                let why = tokio::time::timeout(WAIT, stream.ended()).await.unwrap();
                assert!(why.contains("corrupt"), "{why}");
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn closing_the_stream_fails_what_waits_and_hangs_up() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (writes, stream, mut consensus, _dir) = connected().await;
                let task = spawn_put(&writes, "a");
                assert!(matches!(next(&mut consensus).await, Seen::Put { .. }));
                stream.close("consensus closed the connection");
                let err = settled(task).await.unwrap_err();
                assert_eq!(err.code(), Code::Unavailable);
                assert!(
                    err.message().ends_with("consensus closed the connection"),
                    "{}",
                    err.message()
                );
                // Consensus sees the stream end.
                assert_eq!(
                    tokio::time::timeout(WAIT, consensus.next()).await.unwrap(),
                    None
                );
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_write_sock_connecting_fails_after_a_few_tries() {
        let dir = tempfile::tempdir().unwrap();
        let path = schema::write_socket(dir.path());
        let err = match connect(&path).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("connected to nothing"),
        };
        assert!(err.contains("write.sock"), "{err}");
    }
}
