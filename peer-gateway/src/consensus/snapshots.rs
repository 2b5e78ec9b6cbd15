//! Raft snapshots, the link's side (see [`crate::transport::snapshot`] for the wire): the image of
//! a snapshot we send is read out of consensus with `PeerRegistrar.snapshotImage` and its
//! `SnapshotReader`, the image of one a peer sends us is written into consensus with
//! `PeerRegistrar.receiveSnapshot` and its `SnapshotWriter`. Each keeps at most [`IN_FLIGHT`]
//! calls in flight, so that consensus works on the next chunk while the network carries one, and a
//! transfer holds a few chunks whatever the image's size.
//!
//! The transport decides what a transfer's outcome is, and logs and reports it; this side only
//! passes on why consensus refused, in the transport's channels.

use std::rc::Rc;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use schema::member_capnp::{snapshot_reader, snapshot_writer, status};
use tokio::sync::mpsc;
use tracing::debug;

use super::State;
use crate::transport::snapshot::ChunkSender;
use crate::transport::{
    ImageRequest, ImageSink, ImageSource, ImageWrite, ImageWrites, IncomingSnapshot,
};

/// Reads or writes of one image in flight to consensus, at most.
const IN_FLIGHT: usize = 2;

/// Opens the images of the snapshots the transport sends, each as it is asked for.
pub(super) async fn open_images(state: Rc<State>, mut requests: mpsc::Receiver<ImageRequest>) {
    while let Some(request) = requests.recv().await {
        tokio::task::spawn_local(open_image(state.clone(), request));
    }
}

async fn open_image(state: Rc<State>, request: ImageRequest) {
    let ImageRequest { to, message, reply } = request;
    let Some(registrar) = state.registrar.borrow().clone() else {
        let _ = reply.send(Err("not registered with consensus".into()));
        return;
    };
    debug!("opening the image of a snapshot to member {to:x}");
    let mut call = registrar.snapshot_image_request();
    call.get().set_message(&message);
    let opened = async {
        let response = call
            .send()
            .promise
            .await
            .map_err(|e| registrar_failed(e, "send"))?;
        let r = response.get().map_err(malformed)?;
        check(r.has_error(), r.get_error())?;
        Ok::<_, String>((r.get_total_bytes(), r.get_reader().map_err(malformed)?))
    }
    .await;
    match opened {
        Ok((total_bytes, reader)) => {
            let (chunks, source) = ImageSource::channel(total_bytes);
            if reply.send(Ok(source)).is_ok() {
                read_image(reader, chunks).await;
            }
        }
        Err(why) => {
            let _ = reply.send(Err(why));
        }
    }
}

/// Reads the image into `chunks` until its empty last chunk, a failure, or the transport lets go
/// of it; dropping `reader` then lets consensus close the image.
async fn read_image(reader: snapshot_reader::Client, chunks: ChunkSender) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < IN_FLIGHT {
            in_flight.push_back(read_chunk(&reader));
        }
        let chunk = tokio::select! {
            chunk = in_flight.next() => chunk,
            () = chunks.closed() => return,
        };
        match chunk {
            // The end: dropping `chunks` says so.
            Some(Ok(chunk)) if chunk.is_empty() => return,
            Some(Ok(chunk)) => {
                if chunks.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            Some(Err(why)) => {
                let _ = chunks.send(Err(why)).await;
                return;
            }
            None => return,
        }
    }
}

fn read_chunk(
    reader: &snapshot_reader::Client,
) -> impl Future<Output = Result<Vec<u8>, String>> + 'static {
    let promise = reader.read_request().send().promise;
    async move {
        let response = promise
            .await
            .map_err(|e| format!("consensus failed: {e}"))?;
        let r = response.get().map_err(malformed)?;
        check(r.has_error(), r.get_error())?;
        Ok(r.get_chunk().map_err(malformed)?.to_vec())
    }
}

/// Hands the images of the snapshots peers send us to consensus, each as it comes.
pub(super) async fn take_snapshots(
    state: Rc<State>,
    mut incoming: mpsc::Receiver<IncomingSnapshot>,
) {
    while let Some(snapshot) = incoming.recv().await {
        tokio::task::spawn_local(take_snapshot(state.clone(), snapshot));
    }
}

async fn take_snapshot(state: Rc<State>, snapshot: IncomingSnapshot) {
    let IncomingSnapshot {
        from,
        message,
        total_bytes,
        reply,
    } = snapshot;
    let Some(registrar) = state.registrar.borrow().clone() else {
        let _ = reply.send(Err("not registered with consensus".into()));
        return;
    };
    debug!("handing consensus a snapshot of {total_bytes} bytes from member {from:x}");
    let mut call = registrar.receive_snapshot_request();
    {
        let mut params = call.get();
        params.set_from(from);
        params.set_message(&message);
        params.set_total_bytes(total_bytes);
    }
    drop(message);
    let writer = async {
        let response = call
            .send()
            .promise
            .await
            .map_err(|e| registrar_failed(e, "take"))?;
        let r = response.get().map_err(malformed)?;
        check(r.has_error(), r.get_error())?;
        r.get_writer().map_err(malformed)
    }
    .await;
    match writer {
        Ok(writer) => {
            let (sink, writes) = ImageSink::channel();
            if reply.send(Ok(sink)).is_ok() {
                write_image(writer, writes).await;
            }
        }
        Err(why) => {
            let _ = reply.send(Err(why));
        }
    }
}

/// What [`write_image`] does next.
enum Next {
    Write(Vec<u8>),
    Finish,
    Failed(String),
    Abandoned,
}

/// Writes the image the transport hands on into `writer`, then finishes it, and answers how
/// that went. Ends without `finish` (dropping `writer`, so that consensus deletes the file) at
/// the first failed write, or once the transport abandons the image.
async fn write_image(writer: snapshot_writer::Client, mut writes: ImageWrites) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        let next = tokio::select! {
            Some(written) = in_flight.next() => match written {
                Ok(()) => continue,
                Err(why) => Next::Failed(why),
            },
            write = writes.writes.recv(), if in_flight.len() < IN_FLIGHT => match write {
                Some(ImageWrite::Chunk(chunk)) => Next::Write(chunk),
                Some(ImageWrite::Finish) => Next::Finish,
                None => Next::Abandoned,
            },
            () = writes.outcome.closed() => Next::Abandoned,
        };
        match next {
            Next::Write(chunk) => in_flight.push_back(write_chunk(&writer, chunk)),
            Next::Finish => {
                let outcome = finish(&writer, in_flight).await;
                let _ = writes.outcome.send(outcome);
                return;
            }
            Next::Failed(why) => {
                let _ = writes.outcome.send(Err(why));
                return;
            }
            Next::Abandoned => return,
        }
    }
}

fn write_chunk(
    writer: &snapshot_writer::Client,
    chunk: Vec<u8>,
) -> impl Future<Output = Result<(), String>> + 'static {
    let mut request = writer.write_request();
    request.get().set_chunk(&chunk);
    drop(chunk);
    let promise = request.send().promise;
    async move {
        let response = promise
            .await
            .map_err(|e| format!("consensus failed: {e}"))?;
        let r = response.get().map_err(malformed)?;
        check(r.has_error(), r.get_error())
    }
}

/// Waits for the writes still in flight, then finishes the image.
async fn finish<F: Future<Output = Result<(), String>>>(
    writer: &snapshot_writer::Client,
    mut in_flight: FuturesOrdered<F>,
) -> Result<(), String> {
    while let Some(written) = in_flight.next().await {
        written?;
    }
    let response = writer
        .finish_request()
        .send()
        .promise
        .await
        .map_err(|e| format!("consensus failed: {e}"))?;
    let r = response.get().map_err(malformed)?;
    check(r.has_error(), r.get_error())
}

/// The `error` of a result, when it is set with a non-zero code.
fn check(has_error: bool, error: capnp::Result<status::Reader<'_>>) -> Result<(), String> {
    if !has_error {
        return Ok(());
    }
    let status = error.map_err(malformed)?;
    match status.get_code() {
        0 => Ok(()),
        code => {
            let message = status.get_message().ok().and_then(|m| m.to_str().ok());
            Err(format!(
                "{} (code {code})",
                message.unwrap_or("no reason given")
            ))
        }
    }
}

/// A failed `snapshotImage` or `receiveSnapshot` call; an older consensus has neither.
fn registrar_failed(e: capnp::Error, what: &str) -> String {
    match e.kind {
        capnp::ErrorKind::Unimplemented => {
            format!("this version of consensus does not {what} snapshots")
        }
        _ => format!("consensus failed: {e}"),
    }
}

fn malformed(e: capnp::Error) -> String {
    format!("malformed answer from consensus: {e}")
}
