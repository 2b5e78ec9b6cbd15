//! Consensus's end of a write stream (`write.sock`): reads the frames a client gateway sends,
//! writes the replies a test chooses.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::member_capnp::{write_frame, write_reply, write_request};
use crate::stream::{self, FrameBuffer};

/// A frame the gateway sent, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Hello(u32),
    Put {
        id: u64,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    DeleteRange {
        id: u64,
        key: Vec<u8>,
    },
    Txn {
        id: u64,
        success: u32,
    },
    Other,
}

/// A frame the gateway sent, read; panics on one that is malformed, which no test expects.
fn well_formed<T, E: std::fmt::Display>(read: Result<T, E>) -> T {
    read.unwrap_or_else(|e| panic!("the gateway sent a malformed write frame: {e}"))
}

/// One write stream, as consensus sees it.
pub struct ConsensusEnd {
    socket: UnixStream,
    buf: FrameBuffer,
}

impl ConsensusEnd {
    pub fn new(socket: UnixStream) -> ConsensusEnd {
        ConsensusEnd {
            socket,
            buf: FrameBuffer::new(),
        }
    }

    /// The next frame from the gateway; `None` once it closed the stream.
    pub async fn next(&mut self) -> Option<Seen> {
        loop {
            if let Some(frame) = self
                .buf
                .next_frame()
                .unwrap_or_else(|e| panic!("the gateway sent a corrupt frame: {e}"))
            {
                let frame = well_formed(frame.get_root::<write_frame::Reader>());
                return Some(match well_formed(frame.which()) {
                    write_frame::Hello(v) => Seen::Hello(v),
                    write_frame::Request(r) => {
                        let r = well_formed(r);
                        let id = r.get_id();
                        match well_formed(r.which()) {
                            write_request::Put(p) => {
                                let p = well_formed(p);
                                Seen::Put {
                                    id,
                                    key: well_formed(p.get_key()).to_vec(),
                                    value: well_formed(p.get_value()).to_vec(),
                                }
                            }
                            write_request::DeleteRange(d) => Seen::DeleteRange {
                                id,
                                key: well_formed(well_formed(d).get_key()).to_vec(),
                            },
                            write_request::Txn(t) => Seen::Txn {
                                id,
                                success: well_formed(well_formed(t).get_success()).len(),
                            },
                        }
                    }
                    write_frame::Reply(_) => Seen::Other,
                });
            }
            match self.socket.read(self.buf.spare_mut()).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.filled(n),
            }
        }
    }

    /// Writes one frame.
    pub async fn send(&mut self, fill: impl FnOnce(write_frame::Builder<'_>)) {
        let mut message = capnp::message::Builder::new_default();
        fill(message.init_root());
        let mut out = Vec::new();
        stream::write_frame(&mut out, &message);
        self.write_raw(&out).await;
    }

    /// Writes one reply to request `id`.
    pub async fn reply(&mut self, id: u64, fill: impl FnOnce(write_reply::Builder<'_>)) {
        self.send(|f| {
            let mut r = f.init_reply();
            r.set_id(id);
            fill(r);
        })
        .await;
    }

    /// Refuses request `id` with etcd's `code` and `message`.
    pub async fn refuse(&mut self, id: u64, code: u32, message: &str) {
        self.reply(id, |mut r| {
            let mut e = r.reborrow().init_error();
            e.set_code(code);
            e.set_message(message);
            r.set_none(());
        })
        .await;
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        // The gateway may have closed its end; the test then sees that elsewhere.
        let _ = self.socket.write_all(bytes).await;
    }
}
