//! What the peer gateway refuses and drops, counted for consensus's `/metrics`
//! (`PeerGatewayCounters` in member.capnp): the TLS verifiers and the transport add to one
//! [`Counters`], and the link to consensus reports what grew since its last report.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    /// TLS handshakes refused because the peer's certificate is outside the allowed CN or
    /// hostname ([`crate::tls`]).
    pub cert_refused: AtomicU64,
    /// Peer streams closed for an oversized frame, an unknown kind, or a malformed cluster query
    /// or snapshot header (a message or image over its limit, a header cut short).
    pub frames_refused: AtomicU64,
    /// Raft messages dropped on the way out: peer not connected, its queue full, too large.
    pub messages_dropped: AtomicU64,
}

/// The three counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub cert_refused: u64,
    pub frames_refused: u64,
    pub messages_dropped: u64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sample(&self) -> Sample {
        Sample {
            cert_refused: self.cert_refused.load(Ordering::Relaxed),
            frames_refused: self.frames_refused.load(Ordering::Relaxed),
            messages_dropped: self.messages_dropped.load(Ordering::Relaxed),
        }
    }
}

impl Sample {
    /// What grew from `earlier` to `self`.
    pub fn since(self, earlier: Sample) -> Sample {
        Sample {
            cert_refused: self.cert_refused.saturating_sub(earlier.cert_refused),
            frames_refused: self.frames_refused.saturating_sub(earlier.frames_refused),
            messages_dropped: self
                .messages_dropped
                .saturating_sub(earlier.messages_dropped),
        }
    }

    pub fn is_zero(self) -> bool {
        self == Sample::default()
    }
}
