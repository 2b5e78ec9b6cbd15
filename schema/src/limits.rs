//! Byte bounds on what crosses a process boundary, derived from etcd's `--max-request-bytes` so
//! that consensus and the peer gateway agree on them (audit M2: a count of messages bounded
//! nothing, as each could be 64 MiB).
//!
//! The largest raft message follows from how consensus drives raft-rs: an append carries entries
//! up to `max_size_per_msg` ([`MAX_APPEND_ENTRIES_BYTES`]) but always at least one, and an
//! entry's data is a request that passed `--max-request-bytes` plus what its Cap'n Proto encoding
//! adds ([`ENCODING_HEADROOM`], consensus's `codec::check_encoded_size`). Every other kind of
//! message is smaller.

/// etcd's default `--max-request-bytes` (1.5 MiB), for a peer gateway told 0 by an older
/// consensus.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1_572_864;

/// What a request's Cap'n Proto encoding may add to its protobuf size before consensus refuses
/// it as too large.
pub const ENCODING_HEADROOM: u64 = 64 * 1024;

/// raft-rs's `max_size_per_msg` in consensus: the entries of one append beyond its first.
pub const MAX_APPEND_ENTRIES_BYTES: u64 = 1 << 20;

/// A raft message's own fields and each entry's protobuf framing, generously.
const MESSAGE_SLACK: u64 = 1 << 20;

/// Messages the peer gateway gathers into one `messages` frame to consensus (one more message may
/// overshoot it).
pub const RAFT_BATCH_BYTES: usize = 16 << 20;

/// Most messages in one `messages` frame to consensus.
pub const RAFT_BATCH_LEN: usize = 4096;

/// Cap'n Proto's words around each message of a `messages` frame (its struct, data padding).
const PER_MESSAGE_FRAMING: usize = 48;

/// The largest answer to a cluster query on the peer port (a `PeerView`, the answering member's
/// member table): a member entry takes a few hundred bytes, so this holds a thousand members and
/// more. A longer answer is not sent, and a longer length prefix is refused before anything is
/// read for it.
pub const MEMBERS_ANSWER_BYTES: usize = 256 * 1024;

/// Reader options for a `PeerView` from a peer: no more words than the answer's bytes allow, and
/// a shallow nesting (a view is three levels deep).
pub fn members_answer_reader_options() -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(MEMBERS_ANSWER_BYTES / 8));
    options.nesting_limit(8);
    options
}

/// The largest raft message a member sends or accepts (about 3.6 MiB with etcd's defaults).
pub fn raft_message_limit(max_request_bytes: u64) -> usize {
    let bytes = max_request_bytes
        .saturating_add(ENCODING_HEADROOM)
        .saturating_add(MAX_APPEND_ENTRIES_BYTES)
        .saturating_add(MESSAGE_SLACK);
    // Peer frames carry a u32 length.
    bytes.min(u32::MAX as u64) as usize
}

/// The largest frame consensus reads on `raft.sock`: a full batch, the message that overshot
/// it, and their framing (about 20 MiB with etcd's defaults).
pub fn raft_stream_frame_limit(max_request_bytes: u64) -> usize {
    RAFT_BATCH_BYTES
        .saturating_add(raft_message_limit(max_request_bytes))
        .saturating_add(RAFT_BATCH_LEN * PER_MESSAGE_FRAMING)
        .saturating_add(64 * 1024)
        .min(crate::stream::MAX_FRAME_BYTES)
}

/// The largest frame consensus reads on `write.sock`: one request, whose encoding consensus
/// refuses beyond `max_request_bytes` + [`ENCODING_HEADROOM`] with etcd's "request is too large"
/// anyway. Twice that and a MiB leave room so that such a request gets that answer rather than a
/// closed stream (about 4.3 MiB with etcd's defaults).
pub fn write_stream_frame_limit(max_request_bytes: u64) -> usize {
    let bytes = max_request_bytes
        .saturating_add(ENCODING_HEADROOM)
        .saturating_mul(2)
        .saturating_add(1 << 20);
    bytes.min(crate::stream::MAX_FRAME_BYTES as u64) as usize
}

/// The most bytes of a snapshot image consensus hands the client gateway per read, which the
/// gateway sends as one `SnapshotResponse` (etcd sends 32 KiB; larger chunks need fewer round
/// trips over the Unix socket and stay well below gRPC's 4 MiB message default).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_few_mib() {
        let message = raft_message_limit(DEFAULT_MAX_REQUEST_BYTES);
        assert!((3 << 20..4 << 20).contains(&message), "{message}");
        let stream = raft_stream_frame_limit(DEFAULT_MAX_REQUEST_BYTES);
        assert!(
            stream > RAFT_BATCH_BYTES + message && stream < 24 << 20,
            "{stream}"
        );
        let write = write_stream_frame_limit(DEFAULT_MAX_REQUEST_BYTES);
        assert!((4 << 20..5 << 20).contains(&write), "{write}");
        // A request at the limit fits with room to spare.
        assert!(message as u64 > DEFAULT_MAX_REQUEST_BYTES + ENCODING_HEADROOM);
    }

    #[test]
    fn huge_settings_saturate() {
        assert_eq!(raft_message_limit(u64::MAX), u32::MAX as usize);
        assert_eq!(
            raft_stream_frame_limit(u64::MAX),
            crate::stream::MAX_FRAME_BYTES
        );
        assert_eq!(
            write_stream_frame_limit(u64::MAX),
            crate::stream::MAX_FRAME_BYTES
        );
    }
}
