//! The two streams the raft thread reads and writes itself, without blocking: raft messages with
//! the peer gateway ([`peer`]) and writes from the client gateway ([`write`](mod@write)), both framed
//! Cap'n Proto over a Unix socket ([`frame`]).

pub(crate) mod frame;
pub(crate) mod peer;
pub(crate) mod write;
