//! One HTTP/2 connection that sends unary gRPC calls the way grpc-go's clients (etcd's
//! `clientv3`, and so Kubernetes and etcd's own `benchmark`) do: HEADERS and a single DATA frame
//! that carries END_STREAM, queued together so that they leave in one write. tonic's client
//! sends the same call as three TCP segments (HEADERS, DATA, then an empty END_STREAM frame), and
//! a server woken once per segment would be measured on a client etcd's users do not run.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use tokio::net::TcpStream;

/// gRPC's length-prefixed message: compressed flag, then the length as u32 big-endian.
const GRPC_PREFIX: usize = 5;
/// Large windows, so flow control never paces a benchmark.
const WINDOW: u32 = 8 << 20;

/// A cheap handle; clones share the connection.
#[derive(Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    /// `http://host:port`, the base of every request URI.
    base: String,
}

impl Conn {
    /// Dials `url` (`http://host:port`) with TCP_NODELAY and does the HTTP/2 handshake; the
    /// connection's I/O runs as a task of the current runtime.
    pub async fn dial(url: &str, timeout: Duration) -> Result<Conn, String> {
        let addr = url.strip_prefix("http://").unwrap_or(url);
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("cannot connect to {url}: timed out after {timeout:?}"))?
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("{url}: setting TCP_NODELAY: {e}"))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| format!("{url}: HTTP/2 handshake: {e}"))?;
        tokio::spawn(async move {
            // Ends when the server goes away; the calls in flight then fail with the reason.
            let _ = connection.await;
        });
        Ok(Conn {
            send,
            base: url.trim_end_matches('/').to_string(),
        })
    }

    /// Calls `path` (`/etcdserverpb.KV/Put`) with `request` and decodes the answer. An error is
    /// `"{code:?}: {message}"` for a gRPC status, or what went wrong on the connection.
    pub async fn unary<Q: prost::Message, A: prost::Message + Default>(
        &self,
        path: &str,
        request: &Q,
    ) -> Result<A, String> {
        let len = request.encoded_len();
        let mut body = BytesMut::with_capacity(GRPC_PREFIX + len);
        body.put_u8(0);
        body.put_u32(len as u32);
        request
            .encode(&mut body)
            .map_err(|e| format!("encoding the request: {e}"))?;
        let head = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| format!("building the request: {e}"))?;
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        // Both frames are queued before this task yields, so the connection task writes them
        // together.
        let (answer, mut stream) = send
            .send_request(head, false)
            .map_err(|e| format!("sending the request: {e}"))?;
        stream
            .send_data(body.freeze(), true)
            .map_err(|e| format!("sending the request: {e}"))?;
        let answer = answer
            .await
            .map_err(|e| format!("awaiting the answer: {e}"))?;
        let (parts, mut body) = answer.into_parts();
        // Trailers-only answer: the status is in the headers.
        if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
            return Err(status_text(&status));
        }
        if parts.status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", parts.status));
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("reading the answer: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body
            .trailers()
            .await
            .map_err(|e| format!("reading the trailers: {e}"))?
            .ok_or("the answer has no trailers (no grpc-status)")?;
        match tonic::Status::from_header_map(&trailers) {
            Some(status) if status.code() == tonic::Code::Ok => {}
            Some(status) => return Err(status_text(&status)),
            None => return Err("the trailers carry no grpc-status".into()),
        }
        decode_message(&data)
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// The one uncompressed message of a unary answer.
fn decode_message<A: prost::Message + Default>(data: &[u8]) -> Result<A, String> {
    if data.len() < GRPC_PREFIX {
        return Err(format!(
            "answer of {} bytes has no gRPC message",
            data.len()
        ));
    }
    if data[0] != 0 {
        return Err("answer is compressed; none was asked for".into());
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let message = &data[GRPC_PREFIX..];
    if message.len() != len {
        return Err(format!(
            "answer says {len} bytes of message but carries {}",
            message.len()
        ));
    }
    A::decode(message).map_err(|e| format!("decoding the answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutResponse;

    #[test]
    fn a_message_must_match_its_prefix() {
        let mut framed = vec![0, 0, 0, 0, 0];
        assert!(decode_message::<PutResponse>(&framed).is_ok());
        framed[4] = 3;
        assert!(
            decode_message::<PutResponse>(&framed)
                .unwrap_err()
                .contains("says 3")
        );
        framed[0] = 1;
        assert!(
            decode_message::<PutResponse>(&framed)
                .unwrap_err()
                .contains("compressed")
        );
        assert!(decode_message::<PutResponse>(&[0, 0]).is_err());
    }
}
