//! The raft thread's end of the raft stream (`raft.sock`, `PeerFrame` in member.capnp): raft
//! messages to and from the peer gateway, read and written without blocking by the raft thread
//! itself. A message so costs one process hop each way instead of three (IPC thread, its reply, the
//! raft thread), which is most of a replicated write's latency on a small machine.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use protobuf::Message as _;
use raft::eraftpb::Message;
use schema::member_capnp::peer_frame;
use tracing::{debug, warn};

use super::frame::{Frame, FrameStream};
use raft::eraftpb::MessageType;

/// What the peer gateway told the raft thread.
#[derive(Debug, PartialEq)]
pub enum Event {
    Step(Message),
    /// A message whose raft `from` is not the member the peer gateway received it from (the
    /// one its connection's handshake named): dropped, for the raft thread to count.
    Forged {
        claimed: u64,
        sender: u64,
    },
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        ok: bool,
    },
    /// What the peer gateway counted since its last report, for [`Metrics`](schema::member_capnp::metrics).
    Counters {
        cert_refused: u64,
        frames_refused: u64,
        messages_dropped: u64,
    },
}

/// Output the gateway has not taken yet, at most; beyond it messages are dropped and counted (raft
/// resends, and a gateway this far behind is stuck or gone). About 18 of the largest messages
/// with etcd's defaults ([`schema::limits::raft_message_limit`]); raft needs far fewer in flight.
const MAX_PENDING_OUTPUT: usize = 64 << 20;

pub struct PeerStream {
    frames: FrameStream,
    greeted: bool,
    /// This member: messages for anyone else are dropped.
    me: u64,
}

impl PeerStream {
    /// The raft stream of member `me`, whose `--max-request-bytes` bounds the frames it reads
    /// ([`schema::limits::raft_stream_frame_limit`]).
    pub fn new(sock: UnixStream, me: u64, max_request_bytes: u64) -> std::io::Result<PeerStream> {
        let limit = schema::limits::raft_stream_frame_limit(max_request_bytes);
        Ok(PeerStream {
            frames: FrameStream::new(sock, "the peer gateway", limit)?,
            greeted: false,
            me,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.frames.fd()
    }

    /// Whether output is waiting for the socket to take it.
    pub fn wants_write(&self) -> bool {
        self.frames.wants_write()
    }

    /// The size of the frame that ended the stream for being over the limit, if one did.
    pub fn oversized(&self) -> Option<usize> {
        self.frames.oversized()
    }

    /// Reads what has arrived and decodes it into `events`. An error means the stream is over
    /// (closed, failed or corrupt); events decoded before it are still valid.
    pub fn read(&mut self, events: &mut Vec<Event>) -> Result<(), String> {
        let (greeted, me) = (&mut self.greeted, self.me);
        self.frames.read(|frame| decode(frame, greeted, me, events))
    }

    /// Queues `msgs` as one frame and writes what the socket takes now; returns how many were
    /// dropped instead (all of them, while the gateway is too far behind). An error means the
    /// stream is over.
    pub fn send(&mut self, msgs: &[Message]) -> Result<usize, String> {
        if self.frames.pending_output() > MAX_PENDING_OUTPUT {
            debug!(
                count = msgs.len(),
                "the peer gateway is not reading; dropping raft messages"
            );
            return Ok(msgs.len());
        }
        // Protobuf sizes plus capnp's per-message overhead (pointers, padding).
        let size = msgs
            .iter()
            .map(|m| m.compute_size() as usize + 48)
            .sum::<usize>();
        let mut frame = schema::builder_for(size);
        {
            let mut list = frame
                .init_root::<peer_frame::Builder>()
                .init_messages(msgs.len() as u32);
            for (i, m) in msgs.iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_to(m.to);
                b.set_from(m.from);
                b.set_is_snapshot(is_snapshot(m));
                match m.write_to_bytes() {
                    Ok(data) => b.set_data(&data),
                    Err(e) => warn!(to = m.to, "cannot encode a raft message: {e}"),
                }
            }
        }
        self.frames.queue(&frame);
        self.frames.flush().map(|()| 0)
    }

    /// Writes pending output until the socket would block.
    pub fn flush(&mut self) -> Result<(), String> {
        self.frames.flush()
    }
}

/// Whether a raft message carries a snapshot (the peer gateway puts those on their own stream).
fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
}

fn decode(
    frame: Frame<'_>,
    greeted: &mut bool,
    me: u64,
    events: &mut Vec<Event>,
) -> Result<(), String> {
    let frame = frame
        .get_root::<peer_frame::Reader>()
        .map_err(|e| format!("an unreadable frame: {e}"))?;
    let which = match frame.which() {
        Ok(which) => which,
        // A newer gateway's frame kind: skipping it keeps the stream compatible.
        Err(capnp::NotInSchema(n)) => {
            debug!("skipping a raft-stream frame of unknown kind {n}");
            return Ok(());
        }
    };
    if !*greeted {
        return match which {
            peer_frame::Hello(v) => {
                super::frame::check_hello(v)?;
                *greeted = true;
                Ok(())
            }
            _ => Err("the first frame is not hello".into()),
        };
    }
    match which {
        peer_frame::Hello(_) => return Err("a second hello".into()),
        peer_frame::Messages(list) => {
            let list = list.map_err(|e| format!("an unreadable message list: {e}"))?;
            for m in list {
                let Ok(data) = m.get_data() else {
                    warn!(from = m.get_from(), "dropping a raft message without data");
                    continue;
                };
                match Message::parse_from_bytes(data) {
                    Ok(msg) if msg.from != m.get_from() => {
                        warn!(
                            claimed = format!("{:x}", msg.from),
                            sender = format!("{:x}", m.get_from()),
                            "dropping a raft message that claims another sender than the \
                             member it came from"
                        );
                        events.push(Event::Forged {
                            claimed: msg.from,
                            sender: m.get_from(),
                        });
                    }
                    Ok(msg) if msg.to == me => events.push(Event::Step(msg)),
                    Ok(msg) => debug!(
                        to = msg.to,
                        "dropping a raft message meant for another member"
                    ),
                    Err(e) => warn!(
                        from = m.get_from(),
                        "dropping an undecodable raft message: {e}"
                    ),
                }
            }
        }
        peer_frame::Unreachable(id) => events.push(Event::Unreachable(id)),
        peer_frame::SnapshotStatus(s) => {
            let s = s.map_err(|e| format!("an unreadable snapshot status: {e}"))?;
            events.push(Event::SnapshotStatus {
                to: s.get_member_id(),
                ok: s.get_ok(),
            });
        }
        peer_frame::Counters(c) => {
            let c = c.map_err(|e| format!("unreadable counters: {e}"))?;
            events.push(Event::Counters {
                cert_refused: c.get_cert_refused(),
                frames_refused: c.get_frames_refused(),
                messages_dropped: c.get_messages_dropped(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::MessageType;
    use schema::stream::{FrameBuffer, write_frame};
    use std::io::{ErrorKind, Read, Write};

    fn frame(f: impl FnOnce(peer_frame::Builder)) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        f(message.init_root());
        let mut out = Vec::new();
        write_frame(&mut out, &message);
        out
    }

    fn hello(v: u32) -> Vec<u8> {
        frame(|mut f| f.set_hello(v))
    }

    fn append(to: u64, index: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = to;
        m.from = 9;
        m.index = index;
        m
    }

    fn pair() -> (PeerStream, UnixStream) {
        let (ours, gateway) = UnixStream::pair().unwrap();
        (
            PeerStream::new(ours, 1, schema::limits::DEFAULT_MAX_REQUEST_BYTES).unwrap(),
            gateway,
        )
    }

    fn read_all(stream: &mut PeerStream) -> (Vec<Event>, Result<(), String>) {
        let mut events = Vec::new();
        let result = stream.read(&mut events);
        (events, result)
    }

    #[test]
    fn messages_flow_both_ways_after_hello() {
        let (mut stream, mut gateway) = pair();
        let mut input = hello(schema::PROTOCOL_VERSION);
        let for_us = append(1, 5);
        let for_other = append(2, 6);
        input.extend(frame(|f| {
            let mut list = f.init_messages(3);
            for (i, m) in [&for_us, &for_other].into_iter().enumerate() {
                let mut entry = list.reborrow().get(i as u32);
                // As the peer gateway sends them: from the member the connection is with.
                entry.set_from(m.from);
                entry.set_data(&m.write_to_bytes().unwrap());
            }
            list.reborrow().get(2).set_data(b"\xff\xff not protobuf");
        }));
        input.extend(frame(|mut f| f.set_unreachable(3)));
        input.extend(frame(|f| {
            let mut s = f.init_snapshot_status();
            s.set_member_id(2);
            s.set_ok(true);
        }));
        gateway.write_all(&input).unwrap();
        let (events, result) = read_all(&mut stream);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            vec![
                Event::Step(for_us),
                Event::Unreachable(3),
                Event::SnapshotStatus { to: 2, ok: true }
            ]
        );

        stream.send(&[append(2, 7), append(3, 7)]).unwrap();
        assert!(!stream.wants_write());
        let mut got = FrameBuffer::new();
        let n = gateway.read(got.spare_mut()).unwrap();
        got.filled(n);
        let frame = got.next_frame().unwrap().unwrap();
        let peer_frame::Messages(list) = frame
            .get_root::<peer_frame::Reader>()
            .unwrap()
            .which()
            .unwrap()
        else {
            panic!("not a messages frame");
        };
        let to: Vec<u64> = list.unwrap().iter().map(|m| m.get_to()).collect();
        assert_eq!(to, vec![2, 3]);

        drop(gateway);
        let (_, result) = read_all(&mut stream);
        assert!(result.unwrap_err().contains("closed"));
    }

    #[test]
    fn a_stream_without_the_right_hello_is_refused() {
        let (mut stream, mut gateway) = pair();
        gateway
            .write_all(&hello(schema::PROTOCOL_VERSION + 1))
            .unwrap();
        assert!(
            read_all(&mut stream)
                .1
                .unwrap_err()
                .contains("not supported")
        );

        let (mut stream, mut gateway) = pair();
        gateway
            .write_all(&frame(|mut f| f.set_unreachable(3)))
            .unwrap();
        let (events, result) = read_all(&mut stream);
        assert!(events.is_empty());
        assert!(result.unwrap_err().contains("hello"));

        let (mut stream, mut gateway) = pair();
        gateway.write_all(&[0xff; 64]).unwrap();
        assert!(read_all(&mut stream).1.is_err());
    }

    #[test]
    fn output_waits_for_a_slow_reader_then_drains() {
        let (mut stream, mut gateway) = pair();
        let mut big = append(2, 1);
        big.mut_entries().push(raft::eraftpb::Entry {
            data: vec![7u8; 1 << 20].into(),
            ..Default::default()
        });
        // More than a Unix socket buffers: some of it must wait.
        for _ in 0..8 {
            stream.send(std::slice::from_ref(&big)).unwrap();
        }
        assert!(stream.wants_write());
        gateway.set_nonblocking(true).unwrap();
        let mut received = 0;
        let mut buf = vec![0; 1 << 20];
        while stream.wants_write() || received == 0 {
            stream.flush().unwrap();
            match gateway.read(&mut buf) {
                Ok(n) => received += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        while let Ok(n) = gateway.read(&mut buf) {
            received += n;
        }
        assert!(received > 8 << 20, "{received}");
    }

    /// A frame over the raft stream's limit (1 GiB declared) ends the stream as soon as its
    /// segment table is there, and says how large it was, for the counter.
    #[test]
    fn an_oversized_frame_ends_the_stream_before_it_is_read() {
        let (mut stream, mut gateway) = pair();
        let mut input = hello(schema::PROTOCOL_VERSION);
        input.extend([0, 0, 0, 0, 0, 0, 0, 8]);
        gateway.write_all(&input).unwrap();
        let (events, result) = read_all(&mut stream);
        assert!(events.is_empty());
        let err = result.unwrap_err();
        assert!(err.contains("at most"), "{err}");
        assert_eq!(stream.oversized(), Some((1 << 30) + 8));
    }

    #[test]
    fn the_gateways_counters_become_an_event() {
        let (mut stream, mut gateway) = pair();
        let mut input = hello(schema::PROTOCOL_VERSION);
        input.extend(frame(|f| {
            let mut c = f.init_counters();
            c.set_cert_refused(1);
            c.set_frames_refused(2);
            c.set_messages_dropped(3);
        }));
        gateway.write_all(&input).unwrap();
        let (events, result) = read_all(&mut stream);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            vec![Event::Counters {
                cert_refused: 1,
                frames_refused: 2,
                messages_dropped: 3
            }]
        );
    }

    #[test]
    fn a_message_claiming_another_sender_than_its_connection_is_dropped() {
        let (mut stream, mut gateway) = pair();
        let mut input = hello(schema::PROTOCOL_VERSION);
        // Member 4's connection carries a message that claims to be from member 9.
        let forged = append(1, 5);
        input.extend(frame(|f| {
            let mut entry = f.init_messages(1).get(0);
            entry.set_from(4);
            entry.set_data(&forged.write_to_bytes().unwrap());
        }));
        gateway.write_all(&input).unwrap();
        let (events, result) = read_all(&mut stream);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            vec![Event::Forged {
                claimed: 9,
                sender: 4
            }]
        );
    }
}
