//! The client gateway's side of consensus, minimal, for the benchmarks: registration on
//! `client.sock` and a client of the write stream (`write.sock`, `WriteFrame` in member.capnp),
//! whose requests go out as frames through one writer task while a reader task matches replies to
//! waiting callers by ID. Included by `#[path]` from the consensus and client-gateway benches,
//! which measure with it what the client gateway does.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use schema::member_capnp::{client_plane, client_registrar, write_frame, write_reply};
use schema::stream::{FrameBuffer, write_frame as put_frame};
use tokio::sync::{mpsc, oneshot};

/// Callers waiting for a reply, by request ID.
type Waiting = Rc<RefCell<HashMap<u64, oneshot::Sender<Result<(), String>>>>>;

/// The write stream, as the client gateway uses it: requests go out as frames through one writer
/// task, a reader task matches replies to waiting callers by ID.
#[derive(Clone)]
pub struct WriteStream {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Waiting,
    next_id: Rc<Cell<u64>>,
}

impl WriteStream {
    pub async fn connect(path: &Path) -> Result<WriteStream, String> {
        // The gateway's socket type, so the bench costs consensus what the gateway does.
        let stream = schema::stream::FrameSocket::connect(path)
            .await
            .map_err(|e| format!("dialing {}: {e}", path.display()))?;
        let reader = Rc::new(stream);
        let writer = reader.clone();
        let (frames, mut queued) = mpsc::unbounded_channel::<Vec<u8>>();
        let mut hello = capnp::message::Builder::new_default();
        hello
            .init_root::<write_frame::Builder>()
            .set_hello(schema::PROTOCOL_VERSION);
        let mut first = Vec::new();
        put_frame(&mut first, &hello);
        let _ = frames.send(first);
        tokio::task::spawn_local(async move {
            let mut out = Vec::new();
            while let Some(frame) = queued.recv().await {
                out.extend(frame);
                while let Ok(more) = queued.try_recv() {
                    out.extend(more);
                }
                if writer.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        });
        let pending: Waiting = Rc::default();
        let replies = pending.clone();
        tokio::task::spawn_local(async move {
            let mut input = FrameBuffer::new();
            loop {
                match reader.read(input.spare_mut()).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => input.filled(n),
                }
                while let Ok(Some(frame)) = input.next_frame() {
                    let Ok(root) = frame.get_root::<write_frame::Reader>() else {
                        continue;
                    };
                    let Ok(write_frame::Reply(Ok(r))) = root.which() else {
                        continue;
                    };
                    let answer = match r.which() {
                        Ok(write_reply::None(())) => Err(r
                            .get_error()
                            .map(|e| {
                                format!(
                                    "put refused: code {} {}",
                                    e.get_code(),
                                    e.get_message()
                                        .ok()
                                        .and_then(|m| m.to_string().ok())
                                        .unwrap_or_default()
                                )
                            })
                            .unwrap_or_else(|e| format!("put: {e}"))),
                        _ => Ok(()),
                    };
                    if let Some(waiter) = replies.borrow_mut().remove(&r.get_id()) {
                        let _ = waiter.send(answer);
                    }
                }
            }
            // Callers still waiting learn that the stream is gone.
            replies.borrow_mut().clear();
        });
        Ok(WriteStream {
            frames,
            pending,
            next_id: Rc::new(Cell::new(1)),
        })
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut message = schema::builder_for(key.len() + value.len() + 64);
        {
            let mut r = message.init_root::<write_frame::Builder>().init_request();
            r.set_id(id);
            let mut p = r.init_put();
            p.set_key(key);
            p.set_value(value);
        }
        let mut frame = Vec::new();
        put_frame(&mut frame, &message);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.frames
            .send(frame)
            .map_err(|_| "the write stream is gone".to_string())?;
        rx.await
            .map_err(|_| "the write stream closed with the put in flight".to_string())?
    }
}

/// Registers on `socket` as a client gateway would; the connection stays open while the returned
/// `Connection` lives.
pub async fn register(socket: &Path) -> Result<(client_plane::Client, schema::Connection), String> {
    let (registrar, connection) = schema::dial::<client_registrar::Client>(socket)
        .await
        .map_err(|e| format!("dialing {}: {e}", socket.display()))?;
    let mut request = registrar.register_request();
    request.get().set_version(schema::PROTOCOL_VERSION);
    let reply = request
        .send()
        .promise
        .await
        .map_err(|e| format!("register: {e}"))?;
    let plane = reply
        .get()
        .and_then(|r| r.get_plane())
        .map_err(|e| format!("register: {e}"))?;
    Ok((plane, connection))
}
