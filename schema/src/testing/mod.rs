//! A stand-in consensus, for the gateways' tests and benchmarks (feature `testing`).
//!
//! A gateway only knows consensus through its sockets, so the stand-in serves those for real:
//! - the registrars over capnp-rpc, [`ClientRegistrar`] on `client.sock` and [`PeerRegistrar`] on
//!   `peer.sock`, each configured with the registration it hands out;
//! - the streams beside them (`write.sock`, `raft.sock`), whose connections go to a function of
//!   the caller's: answer them, hand them to the test, or measure them.
//!
//! [`ClientStandIn`] and [`PeerStandIn`] bind both sockets of one gateway, in the order consensus
//! binds them. What the client plane answers stays with each user (an in-memory store, canned
//! answers); [`write_stream::ConsensusEnd`] reads and answers a write stream frame by frame.
//!
//! Everything runs on the current `LocalSet` (capnp-rpc is `!Send`), and the stand-in panics on
//! what a test should never see, such as a corrupt frame.

mod registrar;
mod serve;
pub mod write_stream;

pub use registrar::{ClientRegistrar, Identity, Member, PeerRegistrar, Tls};
pub use serve::{ClientStandIn, Listening, PeerStandIn, serve_rpc, serve_streams};
