//! etcd's client-facing errors: the gRPC code and the exact message `etcdctl` prints.

use schema::code;

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

macro_rules! etcd_errors {
    ($($name:ident => $code:ident, $msg:literal;)*) => {
        $(pub fn $name() -> EtcdError { EtcdError::new(code::$code, $msg) })*
    };
}

etcd_errors! {
    empty_key => INVALID_ARGUMENT, "etcdserver: key is not provided";
    key_not_found => INVALID_ARGUMENT, "etcdserver: key not found";
    value_provided => INVALID_ARGUMENT, "etcdserver: value is provided";
    lease_provided => INVALID_ARGUMENT, "etcdserver: lease is provided";
    too_many_ops => INVALID_ARGUMENT, "etcdserver: too many operations in txn request";
    duplicate_key => INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request";
    request_too_large => INVALID_ARGUMENT, "etcdserver: request is too large";
    invalid_sort_option => INVALID_ARGUMENT, "etcdserver: invalid sort option";
    compacted => OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted";
    future_rev => OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision";
    lease_not_found => NOT_FOUND, "etcdserver: requested lease not found";
    no_leader => UNAVAILABLE, "etcdserver: no leader";
    not_leader => FAILED_PRECONDITION, "etcdserver: not leader";
    bad_leader_transferee => FAILED_PRECONDITION, "etcdserver: bad leader transferee";
    leader_transfer_timeout => UNAVAILABLE, "etcdserver: request timed out, leader transfer took too long";
    timeout => UNAVAILABLE, "etcdserver: request timed out";
    stopped => UNAVAILABLE, "etcdserver: server stopped";
}

pub fn internal(what: impl std::fmt::Display) -> EtcdError {
    EtcdError::new(code::INTERNAL, format!("etcdserver: {what}"))
}
