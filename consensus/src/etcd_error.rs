//! etcd's client-facing errors: the gRPC code and the exact message `etcdctl` prints.

use schema::code;
use schema::rules::{Refusal, refusal};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdError {
    pub code: u32,
    pub message: String,
}

impl EtcdError {
    pub fn new(code: u32, message: impl Into<String>) -> EtcdError {
        EtcdError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl From<Refusal> for EtcdError {
    fn from(r: Refusal) -> EtcdError {
        EtcdError::new(r.code, r.message)
    }
}

macro_rules! etcd_errors {
    ($($name:ident => $refusal:ident;)*) => {
        $(pub fn $name() -> EtcdError { refusal::$refusal.into() })*
    };
}

// The catalogue is `schema::rules::refusal`, shared with the client gateway.
etcd_errors! {
    key_not_found => KEY_NOT_FOUND;
    request_too_large => REQUEST_TOO_LARGE;
    invalid_sort_option => INVALID_SORT_OPTION;
    compacted => COMPACTED;
    future_rev => FUTURE_REV;
    lease_not_found => LEASE_NOT_FOUND;
    no_leader => NO_LEADER;
    not_leader => NOT_LEADER;
    bad_leader_transferee => BAD_LEADER_TRANSFEREE;
    leader_transfer_timeout => LEADER_TRANSFER_TIMEOUT;
    timeout => TIMEOUT;
    stopped => STOPPED;
}

// Refused by the rules themselves; the tests name them.
#[cfg(test)]
etcd_errors! {
    empty_key => EMPTY_KEY;
    value_provided => VALUE_PROVIDED;
    too_many_ops => TOO_MANY_OPS;
    duplicate_key => DUPLICATE_KEY;
}

pub fn internal(what: impl std::fmt::Display) -> EtcdError {
    EtcdError::new(code::INTERNAL, format!("etcdserver: {what}"))
}
