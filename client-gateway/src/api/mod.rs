//! etcd's v3 API as clients see it: the gRPC services ([`kv`], [`cluster`], [`maintenance`]),
//! the checks etcd's gRPC layer makes before a request goes anywhere ([`validate`]), and the HTTP
//! endpoints beside them ([`http`], with the JSON gateway in [`json`]). Each service forwards to
//! consensus over the [`Link`](crate::consensus::link::Link). What etcd has and we do not serve
//! yet is answered by [`not_served`].

pub(crate) mod cluster;
pub(crate) mod http;
pub(crate) mod json;
pub(crate) mod kv;
pub(crate) mod maintenance;
pub(crate) mod not_served;
pub(crate) mod validate;
