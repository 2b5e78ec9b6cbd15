//! Serving the listen-client URLs: binding and accepting ([`listen`]), TLS from the
//! registration's files ([`tls`]), and the repair of the `:authority` some clients send
//! ([`authority`], over the HPACK decoding in [`hpack`]).

pub(crate) mod authority;
pub(crate) mod hpack;
pub(crate) mod listen;
pub(crate) mod tls;
