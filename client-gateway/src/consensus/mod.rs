//! The link to consensus: registering on `client.sock` ([`registration`]), keeping a
//! registration and handing its session to requests ([`link`]), one named call per RPC on that
//! session ([`plane`]), the write stream on `write.sock` ([`writes`]), and the conversions
//! between etcd's protobuf types and the Cap'n Proto contract ([`to_capnp`], [`from_capnp`]).

pub(crate) mod from_capnp;
pub(crate) mod link;
pub(crate) mod plane;
pub(crate) mod registration;
pub(crate) mod to_capnp;
pub(crate) mod writes;
