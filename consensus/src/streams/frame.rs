//! A non-blocking Unix stream of Cap'n Proto frames (`schema::stream`), as the raft thread uses
//! for the raft stream (`peer_stream`) and the write stream (`write_stream`): reads decode whole
//! frames as they arrive, writes queue and go out as far as the socket takes them, and nothing
//! ever blocks the raft thread.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use capnp::message::{Allocator, Builder, Reader};
use capnp::serialize::BufferSegments;
use schema::stream::{FrameBuffer, write_frame};

/// Read at most this much per call, so a flood of input cannot hold off ticks and Readies.
const READ_BUDGET: usize = 4 << 20;

pub type Frame<'a> = Reader<BufferSegments<&'a [u8]>>;

pub struct FrameStream {
    sock: UnixStream,
    input: FrameBuffer,
    output: Vec<u8>,
    written: usize,
    /// Who is on the other end, for errors ("the peer gateway").
    peer: &'static str,
}

impl FrameStream {
    /// A stream whose input frames may be at most `max_frame` bytes (see [`schema::limits`]): a
    /// larger one ends the stream before any memory is set aside for it.
    pub fn new(
        sock: UnixStream,
        peer: &'static str,
        max_frame: usize,
    ) -> std::io::Result<FrameStream> {
        sock.set_nonblocking(true)?;
        Ok(FrameStream {
            sock,
            input: FrameBuffer::with_limit(max_frame),
            output: Vec::new(),
            written: 0,
            peer,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Whether output is waiting for the socket to take it.
    pub fn wants_write(&self) -> bool {
        self.written < self.output.len()
    }

    /// The declared size of the input frame that ended the stream for being over the limit.
    pub fn oversized(&self) -> Option<usize> {
        self.input.refused_len()
    }

    /// Bytes queued and not yet taken by the socket.
    pub fn pending_output(&self) -> usize {
        self.output.len() - self.written
    }

    /// Reads what has arrived and hands each whole frame to `on_frame`. An error (from the
    /// socket, the framing or `on_frame`) means the stream is over; frames handed out before it
    /// were handled.
    pub fn read(
        &mut self,
        mut on_frame: impl FnMut(Frame<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut budget = READ_BUDGET;
        loop {
            let room = self.input.spare_mut().len();
            match self.sock.read(self.input.spare_mut()) {
                Ok(0) => {
                    return Err(if self.input.partial() > 0 {
                        format!("{} closed the stream in the middle of a frame", self.peer)
                    } else {
                        format!("{} closed the stream", self.peer)
                    });
                }
                Ok(n) => {
                    self.input.filled(n);
                    while let Some(frame) = self.input.next_frame()? {
                        on_frame(frame)?;
                    }
                    budget = budget.saturating_sub(n);
                    // A short read emptied the socket: another read would only block.
                    if budget == 0 || n < room {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading the stream: {e}")),
            }
        }
    }

    /// Queues a frame; `flush` sends it.
    pub fn queue<A: Allocator>(&mut self, message: &Builder<A>) {
        write_frame(&mut self.output, message);
    }

    /// Writes queued output until the socket would block. An error means the stream is over.
    pub fn flush(&mut self) -> Result<(), String> {
        while self.written < self.output.len() {
            match self.sock.write(&self.output[self.written..]) {
                Ok(0) => return Err(format!("{} stopped reading", self.peer)),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("writing the stream: {e}")),
            }
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > 8 << 20 {
            self.output = Vec::new();
        }
        Ok(())
    }
}

/// A stream's first frame carries the gateway's protocol version, which must be ours.
pub fn check_hello(version: u32) -> Result<(), String> {
    if version == schema::PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(format!(
            "protocol version {version} is not supported: consensus speaks version {}",
            schema::PROTOCOL_VERSION
        ))
    }
}
