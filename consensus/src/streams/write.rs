//! The raft thread's end of the write stream (`write.sock`, `WriteFrame` in member.capnp): puts,
//! deletes and txns that write, from the client gateway. The raft thread checks and proposes each
//! as it arrives and answers it once applied, so a write never waits on the IPC thread; a lone
//! write so costs two process wake-ups less.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use schema::member_capnp::{write_frame, write_request};
use tracing::debug;

use super::frame::{Frame, FrameStream, check_hello};
use crate::codec::{self, Applied, Header};
use crate::etcd_error::{self as ee, EtcdError};
use crate::mvcc;

/// etcd's limits on a write, as configured.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_bytes: u64,
    pub max_txn_ops: u32,
}

/// A write the gateway sent: its raft entry and request ID, or why it was refused up front.
#[derive(Debug)]
pub struct Incoming {
    /// The gateway's ID for it, echoed in the reply.
    pub gateway_id: u64,
    pub proposal: Result<(u64, Vec<u8>), EtcdError>,
}

pub struct WriteStream {
    frames: FrameStream,
    greeted: bool,
    limits: Limits,
}

impl WriteStream {
    pub fn new(sock: UnixStream, limits: Limits) -> std::io::Result<WriteStream> {
        Ok(WriteStream {
            frames: FrameStream::new(
                sock,
                "the client gateway",
                schema::limits::write_stream_frame_limit(limits.max_request_bytes),
            )?,
            greeted: false,
            limits,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.frames.fd()
    }

    pub fn wants_write(&self) -> bool {
        self.frames.wants_write()
    }

    /// The size of the frame that ended the stream for being over the limit, if one did.
    pub fn oversized(&self) -> Option<usize> {
        self.frames.oversized()
    }

    /// Reads what has arrived; each request becomes an `Incoming`, its raft entry carrying a
    /// request ID from `next_id`. An error means the stream is over.
    pub fn read(
        &mut self,
        next_id: &mut impl FnMut() -> u64,
        out: &mut Vec<Incoming>,
    ) -> Result<(), String> {
        let (greeted, limits) = (&mut self.greeted, self.limits);
        self.frames
            .read(|frame| decode(frame, greeted, limits, next_id, out))
    }

    /// Queues the answer to the gateway's request `gateway_id`; `flush` sends it.
    pub fn reply(&mut self, gateway_id: u64, header: &Header, result: &Result<Applied, EtcdError>) {
        let mut message = schema::builder_for(256);
        {
            let mut r = message.init_root::<write_frame::Builder>().init_reply();
            r.set_id(gateway_id);
            let refuse = |mut r: schema::member_capnp::write_reply::Builder, e: &EtcdError| {
                let mut s = r.reborrow().init_error();
                s.set_code(e.code);
                s.set_message(e.message.as_str());
                r.set_none(());
            };
            match result {
                Err(e) => refuse(r, e),
                Ok(Applied::Put(p)) => codec::write_put_response(r.init_put(), header, p),
                Ok(Applied::DeleteRange(d)) => {
                    codec::write_delete_response(r.init_delete_range(), header, d)
                }
                Ok(Applied::Txn(t)) => codec::write_txn_response(r.init_txn(), header, t),
                Ok(other) => refuse(r, &ee::internal(format!("a write applied as {other:?}"))),
            }
        }
        self.frames.queue(&message);
    }

    /// Writes queued answers until the socket would block. An error means the stream is over.
    pub fn flush(&mut self) -> Result<(), String> {
        self.frames.flush()
    }
}

fn decode(
    frame: Frame<'_>,
    greeted: &mut bool,
    limits: Limits,
    next_id: &mut impl FnMut() -> u64,
    out: &mut Vec<Incoming>,
) -> Result<(), String> {
    let frame = frame
        .get_root::<write_frame::Reader>()
        .map_err(|e| format!("an unreadable frame: {e}"))?;
    let which = match frame.which() {
        Ok(which) => which,
        // A newer gateway's frame kind: skipping it keeps the stream compatible.
        Err(capnp::NotInSchema(n)) => {
            debug!("skipping a write-stream frame of unknown kind {n}");
            return Ok(());
        }
    };
    if !*greeted {
        return match which {
            write_frame::Hello(v) => {
                check_hello(v)?;
                *greeted = true;
                Ok(())
            }
            _ => Err("the first frame is not hello".into()),
        };
    }
    match which {
        write_frame::Hello(_) => Err("a second hello".into()),
        write_frame::Reply(_) => Err("a reply frame from the gateway".into()),
        write_frame::Request(r) => {
            let r = r.map_err(|e| format!("an unreadable request: {e}"))?;
            out.push(Incoming {
                gateway_id: r.get_id(),
                proposal: prepare(r, limits, next_id),
            });
            Ok(())
        }
    }
}

/// Checks a write as the IPC thread checks its ClientPlane twin, and encodes its raft entry.
fn prepare(
    r: write_request::Reader<'_>,
    limits: Limits,
    next_id: &mut impl FnMut() -> u64,
) -> Result<(u64, Vec<u8>), EtcdError> {
    let malformed = |e: capnp::Error| ee::internal(format!("a malformed write request: {e}"));
    let size = r
        .total_size()
        .map(|s| s.word_count as usize * 8)
        .unwrap_or(0);
    let id = next_id();
    let data = match r.which() {
        Ok(write_request::Put(p)) => {
            let p = p.map_err(malformed)?;
            mvcc::check_put(&codec::read_put(p).map_err(malformed)?)?;
            codec::encode_proposal(id, size, |mut rr| rr.set_put(p))
        }
        Ok(write_request::DeleteRange(d)) => {
            let d = d.map_err(malformed)?;
            mvcc::check_delete(&codec::read_delete(d).map_err(malformed)?)?;
            codec::encode_proposal(id, size, |mut rr| rr.set_delete_range(d))
        }
        Ok(write_request::Txn(t)) => {
            let t = t.map_err(malformed)?;
            let txn = codec::read_txn(t).map_err(malformed)?;
            mvcc::check_txn(&txn, limits.max_txn_ops as usize)?;
            codec::encode_proposal(id, size, |mut rr| rr.set_txn(t))
        }
        Err(capnp::NotInSchema(n)) => {
            return Err(ee::internal(format!("an unknown kind of write ({n})")));
        }
    }
    .map_err(malformed)?;
    codec::check_encoded_size(data.len(), limits.max_request_bytes)?;
    Ok((id, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Proposal;
    use crate::mvcc::PutResponse;
    use schema::member_capnp::write_reply;
    use schema::stream::{FrameBuffer, write_frame};
    use std::io::{Read, Write};

    const LIMITS: Limits = Limits {
        max_request_bytes: 1024,
        max_txn_ops: 128,
    };

    fn frame(f: impl FnOnce(write_frame::Builder)) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        f(message.init_root());
        let mut out = Vec::new();
        write_frame(&mut out, &message);
        out
    }

    fn put(id: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        frame(|f| {
            let mut r = f.init_request();
            r.set_id(id);
            let mut p = r.init_put();
            p.set_key(key);
            p.set_value(value);
        })
    }

    fn read(stream: &mut WriteStream) -> (Vec<Incoming>, Result<(), String>) {
        let mut next = 100;
        let mut out = Vec::new();
        let result = stream.read(
            &mut || {
                next += 1;
                next
            },
            &mut out,
        );
        (out, result)
    }

    #[test]
    fn requests_become_proposals_or_refusals() {
        let (ours, mut gateway) = UnixStream::pair().unwrap();
        let mut stream = WriteStream::new(ours, LIMITS).unwrap();
        let mut input = frame(|mut f| f.set_hello(schema::PROTOCOL_VERSION));
        input.extend(put(7, b"k", b"v"));
        input.extend(put(8, b"", b"v"));
        input.extend(put(9, b"k", &[0; 100 * 1024]));
        gateway.write_all(&input).unwrap();
        let (incoming, result) = read(&mut stream);
        assert_eq!(result, Ok(()));
        assert_eq!(incoming.len(), 3);

        assert_eq!(incoming[0].gateway_id, 7);
        let (id, data) = incoming[0].proposal.as_ref().unwrap();
        let (entry_id, proposal) = codec::decode_proposal(data).unwrap();
        assert_eq!((*id, entry_id), (101, 101));
        let Proposal::Put(p) = proposal else {
            panic!("not a put: {proposal:?}");
        };
        assert_eq!(
            (p.key.as_slice(), p.value.as_slice()),
            (&b"k"[..], &b"v"[..])
        );

        assert_eq!(incoming[1].gateway_id, 8);
        assert_eq!(incoming[1].proposal.as_ref().unwrap_err(), &ee::empty_key());
        assert_eq!(
            incoming[2].proposal.as_ref().unwrap_err(),
            &ee::request_too_large()
        );
    }

    #[test]
    fn replies_carry_the_gateway_id_and_the_answer() {
        let (ours, mut gateway) = UnixStream::pair().unwrap();
        let mut stream = WriteStream::new(ours, LIMITS).unwrap();
        let header = Header {
            cluster_id: 1,
            member_id: 2,
            revision: 0,
            raft_term: 3,
        };
        let ok = Ok(Applied::Put(PutResponse {
            revision: 42,
            prev_kv: None,
        }));
        stream.reply(5, &header, &ok);
        stream.reply(6, &header, &Err(ee::timeout()));
        stream.flush().unwrap();

        let mut got = FrameBuffer::new();
        let mut replies = Vec::new();
        while replies.len() < 2 {
            let n = gateway.read(got.spare_mut()).unwrap();
            got.filled(n);
            while let Some(f) = got.next_frame().unwrap() {
                let root = f.get_root::<write_frame::Reader>().unwrap();
                let write_frame::Reply(r) = root.which().unwrap() else {
                    panic!("not a reply");
                };
                let r = r.unwrap();
                let answer = match r.which().unwrap() {
                    write_reply::Put(p) => {
                        let h = p.unwrap().get_header().unwrap();
                        format!(
                            "put rev {} cluster {} member {} term {}",
                            h.get_revision(),
                            h.get_cluster_id(),
                            h.get_member_id(),
                            h.get_raft_term()
                        )
                    }
                    write_reply::None(()) => {
                        let e = r.get_error().unwrap();
                        format!(
                            "error {} {}",
                            e.get_code(),
                            e.get_message().unwrap().to_str().unwrap()
                        )
                    }
                    _ => "other".into(),
                };
                replies.push((r.get_id(), answer));
            }
        }
        assert_eq!(
            replies,
            vec![
                (5, "put rev 42 cluster 1 member 2 term 3".to_string()),
                (
                    6,
                    format!(
                        "error {} etcdserver: request timed out",
                        schema::code::UNAVAILABLE
                    )
                ),
            ]
        );
    }

    #[test]
    fn a_stream_must_start_with_our_hello() {
        let (ours, mut gateway) = UnixStream::pair().unwrap();
        let mut stream = WriteStream::new(ours, LIMITS).unwrap();
        gateway.write_all(&put(1, b"k", b"v")).unwrap();
        let (incoming, result) = read(&mut stream);
        assert!(incoming.is_empty());
        assert!(result.unwrap_err().contains("hello"));

        let (ours, mut gateway) = UnixStream::pair().unwrap();
        let mut stream = WriteStream::new(ours, LIMITS).unwrap();
        gateway
            .write_all(&frame(|mut f| f.set_hello(schema::PROTOCOL_VERSION - 1)))
            .unwrap();
        assert!(read(&mut stream).1.unwrap_err().contains("not supported"));
    }
}
