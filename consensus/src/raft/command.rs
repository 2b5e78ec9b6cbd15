//! What the IPC thread asks of the raft thread, and what it gets back.

use tokio::sync::oneshot;

use crate::etcd_error::EtcdError;

pub(crate) use crate::codec::Applied;

pub(crate) type Reply = oneshot::Sender<Result<Applied, EtcdError>>;
/// Answers a linearizable read once this member has applied up to the read index.
pub(crate) type ReadReply = oneshot::Sender<Result<(), EtcdError>>;

/// A message from the IPC thread to the raft thread, through the [`super::inbox`].
pub(crate) enum Command {
    /// `data` is an encoded `RaftRequest` whose id is `id`.
    Propose {
        id: u64,
        data: Vec<u8>,
        reply: Reply,
    },
    /// Answers once this member has applied everything committed when the request arrived
    /// (etcd's linearizable read).
    ReadIndex { reply: ReadReply },
    /// Hand the leadership to this member (raft's leader transfer; a no-op unless leading).
    TransferLeader { target: u64 },
    /// The peer gateway connected the raft stream (a newer one replaces the older).
    PeerStream(std::os::unix::net::UnixStream),
    /// The client gateway connected the write stream (a newer one replaces the older).
    WriteStream(std::os::unix::net::UnixStream),
    /// A received raft snapshot at `point` is staged (`storage::snap::stage`): install it if
    /// it is still needed, then restart in place. Answers whether it installed.
    InstallSnapshot {
        point: raft::eraftpb::SnapshotMetadata,
        reply: oneshot::Sender<Result<bool, String>>,
    },
}
