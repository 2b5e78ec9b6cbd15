//! Raft snapshots on the peer plane: the images the peer gateway streams to a follower
//! ([`snapshot_image`]) and the ones it receives for this member ([`receive_snapshot`]), written
//! to a file of ours with tokio-uring as they come and installed once whole and checked (see
//! [`crate::storage::snap`]).

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use capnp::capability::Rc as CapRc;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType, SnapshotMetadata};
use schema::member_capnp::{peer_registrar, snapshot_writer};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::State;
use super::maintenance::SnapshotReader;
use crate::etcd_error::{EtcdError, internal};
use crate::raft::command::Command;
use crate::storage::image::SNAP_DIR;
use crate::storage::snap::{self, INCOMING_PREFIX};

/// The raft snapshot in a `MsgSnapshot` that consensus sent or a peer gateway received.
fn snapshot_in(message: &[u8]) -> Result<(Message, SnapshotMetadata), EtcdError> {
    let m = Message::parse_from_bytes(message)
        .map_err(|e| internal(format!("an undecodable raft message: {e}")))?;
    if m.get_msg_type() != MessageType::MsgSnapshot {
        return Err(internal(format!(
            "a {:?} where a snapshot was expected",
            m.get_msg_type()
        )));
    }
    let point = m.get_snapshot().get_metadata().clone();
    if point.index == 0 {
        return Err(internal("a raft snapshot at index 0"));
    }
    Ok((m, point))
}

/// PeerRegistrar.snapshotImage: the image the `MsgSnapshot` describes, to send.
pub(super) async fn snapshot_image(
    state: &Rc<State>,
    params: peer_registrar::SnapshotImageParams,
    mut results: peer_registrar::SnapshotImageResults,
) -> capnp::Result<()> {
    let (_, point) = or_refuse!(results, snapshot_in(params.get()?.get_message()?));
    let image = or_refuse!(
        results,
        state.ctx.snapshots.open(point.index).map_err(internal)
    );
    info!(
        index = point.index,
        bytes = image.total_bytes(),
        "the peer gateway is sending a raft snapshot"
    );
    let mut r = results.get();
    r.set_total_bytes(image.total_bytes());
    r.set_reader(capnp_rpc::new_client(SnapshotReader::new(
        image,
        state.pools.maintenance.clone(),
    )));
    Ok(())
}

/// PeerRegistrar.receiveSnapshot: a file for the image to come, and a writer into it.
pub(super) async fn receive_snapshot(
    state: &Rc<State>,
    params: peer_registrar::ReceiveSnapshotParams,
    mut results: peer_registrar::ReceiveSnapshotResults,
) -> capnp::Result<()> {
    let p = params.get()?;
    let (from, total) = (p.get_from(), p.get_total_bytes());
    let (m, point) = or_refuse!(results, snapshot_in(p.get_message()?));
    let me = state.ctx.identity.member_id;
    let refusal = if m.to != me {
        Some(format!("addressed to member {:x}, not to this one", m.to))
    } else if m.from != from {
        Some(format!(
            "from member {:x} by its message, but member {from:x} sent it",
            m.from
        ))
    } else if state.receiving_snapshot.get() {
        Some("another snapshot is being received".to_string())
    } else {
        None
    };
    if let Some(why) = refusal {
        (state.ctx.shared.snapshots_receive_failed).fetch_add(1, Ordering::Relaxed);
        warn!(
            from = format!("{from:x}"),
            index = point.index,
            "refusing a raft snapshot: {why}"
        );
        refuse!(results, internal(format!("raft snapshot refused: {why}")));
    }
    let dir = state.ctx.data_dir.join(SNAP_DIR);
    let path = dir.join(format!("{INCOMING_PREFIX}{}-{}", point.index, point.term));
    let file = async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio_uring::fs::File::create(&path).await
    }
    .await;
    let file = or_refuse!(
        results,
        file.map_err(|e| internal(format!("creating {}: {e}", path.display())))
    );
    info!(
        from = format!("{from:x}"),
        index = point.index,
        term = point.term,
        bytes = total,
        "receiving a raft snapshot"
    );
    state.receiving_snapshot.set(true);
    results
        .get()
        .set_writer(capnp_rpc::new_client(SnapshotWriter {
            state: state.clone(),
            file: Some(file),
            path,
            point,
            written: Cell::new(0),
            total,
            finished: Cell::new(false),
        }));
    Ok(())
}

/// A received image being written to `path`; the file goes when this is dropped unfinished.
struct SnapshotWriter {
    state: Rc<State>,
    file: Option<tokio_uring::fs::File>,
    path: PathBuf,
    point: SnapshotMetadata,
    written: Cell<u64>,
    total: u64,
    finished: Cell<bool>,
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        self.state.receiving_snapshot.set(false);
        if !self.finished.get() {
            // The transfer broke off (or a write failed): the file goes, and it counts as failed.
            let _ = std::fs::remove_file(&self.path);
            (self.state.ctx.shared.snapshots_receive_failed).fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl snapshot_writer::Server for SnapshotWriter {
    async fn write(
        self: CapRc<Self>,
        params: snapshot_writer::WriteParams,
        mut results: snapshot_writer::WriteResults,
    ) -> capnp::Result<()> {
        let chunk = params.get()?.get_chunk()?.to_vec();
        if let Some(pause) = schema::failpoint::pause(schema::failpoint::SNAPSHOT_WRITE_DELAY) {
            tokio::time::sleep(pause).await;
        }
        let at = self.written.get();
        if at + chunk.len() as u64 > self.total {
            refuse!(
                results,
                internal(format!(
                    "a raft snapshot longer than the {} bytes announced",
                    self.total
                ))
            );
        }
        // Counted before the write completes: a second write in flight goes after this one.
        self.written.set(at + chunk.len() as u64);
        let Some(file) = &self.file else {
            refuse!(results, internal("the snapshot file is closed"));
        };
        let (written, _) = file.write_all_at(chunk, at).await;
        if let Err(e) = written {
            refuse!(
                results,
                internal(format!("writing {}: {e}", self.path.display()))
            );
        }
        Ok(())
    }

    async fn finish(
        self: CapRc<Self>,
        _: snapshot_writer::FinishParams,
        mut results: snapshot_writer::FinishResults,
    ) -> capnp::Result<()> {
        let result = self.install().await;
        let _ = std::fs::remove_file(&self.path);
        self.finished.set(true);
        let shared = &self.state.ctx.shared;
        // An install is counted by the raft thread, before its restart in place.
        match &result {
            Ok(true) => {}
            Ok(false) => {
                shared.snapshots_received.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared
                    .snapshots_receive_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = &result {
            warn!(
                index = self.point.index,
                "refusing a raft snapshot: {}", e.message
            );
        }
        let installed = or_refuse!(results, result);
        if !installed {
            info!(
                index = self.point.index,
                "a raft snapshot was not needed: this member has that state already"
            );
        }
        Ok(())
    }
}

impl SnapshotWriter {
    /// Checks and stages the whole image, then hands it to the raft thread, which decides (it
    /// may no longer need it), commits and restarts in place. Whether it installed.
    async fn install(&self) -> Result<bool, EtcdError> {
        if self.written.get() != self.total {
            return Err(internal(format!(
                "a raft snapshot of {} bytes where {} were announced",
                self.written.get(),
                self.total
            )));
        }
        if let Some(file) = &self.file {
            file.sync_all()
                .await
                .map_err(|e| internal(format!("syncing {}: {e}", self.path.display())))?;
        }
        // Unpacking checks and writes every byte again: on the maintenance thread.
        let state = &self.state;
        let (dir, path, point) = (
            state.ctx.data_dir.clone(),
            self.path.clone(),
            self.point.clone(),
        );
        let identity = crate::cluster::encode_identity(&state.ctx.identity);
        (state.pools.maintenance)
            .run(move || snap::stage(&dir, &path, &point, &identity).map_err(internal))
            .await
            .and_then(|r| r)?;
        let (reply, answer) = oneshot::channel();
        state.send(Command::InstallSnapshot {
            point: self.point.clone(),
            reply,
        })?;
        answer
            .await
            .map_err(|_| internal("the raft thread stopped"))
            .and_then(|r| r.map_err(internal))
    }
}
