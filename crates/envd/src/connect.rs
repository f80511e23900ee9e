//! The Connect protocol (https://connectrpc.com/docs/protocol) over axum: unary calls with
//! `application/json` or `application/proto`, server streams with
//! `application/connect+json` or `application/connect+proto` (5-byte envelopes, an
//! end-of-stream frame with flag 0x02 carrying `{}` or `{"error": …}`), and the JSON error
//! body `{code, message}` with its HTTP status for unary calls.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Connect error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The call was canceled.
    Canceled,
    /// Unknown error.
    Unknown,
    /// The request is malformed.
    InvalidArgument,
    /// The deadline passed.
    DeadlineExceeded,
    /// The named thing does not exist.
    NotFound,
    /// The thing to create exists.
    AlreadyExists,
    /// Not allowed.
    PermissionDenied,
    /// Out of a resource (disk, quota).
    ResourceExhausted,
    /// The system is not in the state the call needs.
    FailedPrecondition,
    /// Not implemented by this agent.
    Unimplemented,
    /// Internal failure.
    Internal,
    /// The service is unavailable.
    Unavailable,
}

impl Code {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
        }
    }

    /// The HTTP status of a unary error with this code (Connect's mapping).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::Unknown | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An RPC failure, sent as a Connect error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ConnectError {
    /// The Connect code.
    pub code: Code,
    /// A human-readable message.
    pub message: String,
}

impl ConnectError {
    /// Builds an error.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ConnectError { code, message: message.into() }
    }

    /// Maps an IO error on `what` to the closest code.
    pub fn io(err: &std::io::Error, what: &str) -> Self {
        use std::io::ErrorKind as K;
        let code = match err.kind() {
            K::NotFound => Code::NotFound,
            K::AlreadyExists => Code::AlreadyExists,
            K::PermissionDenied => Code::PermissionDenied,
            K::InvalidInput | K::NotADirectory | K::IsADirectory | K::DirectoryNotEmpty => Code::InvalidArgument,
            K::StorageFull | K::QuotaExceeded => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        ConnectError::new(code, format!("{what}: {err}"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message })
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let body = self.json().to_string();
        (self.code.http_status(), [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// The message codec chosen by the request's content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// proto3 JSON.
    Json,
    /// Binary protobuf.
    Proto,
}

impl Codec {
    fn from_headers(headers: &HeaderMap, streaming: bool) -> Result<Codec, ConnectError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let (json, proto) = if streaming {
            ("application/connect+json", "application/connect+proto")
        } else {
            ("application/json", "application/proto")
        };
        if ct == json {
            Ok(Codec::Json)
        } else if ct == proto {
            Ok(Codec::Proto)
        } else {
            Err(ConnectError::new(
                Code::InvalidArgument,
                format!("unsupported content type {ct:?}: send {json} or {proto}"),
            ))
        }
    }

    fn decode<T: prost::Message + DeserializeOwned + Default>(self, data: &[u8]) -> Result<T, ConnectError> {
        match self {
            Codec::Json if data.is_empty() => Ok(T::default()),
            Codec::Json => serde_json::from_slice(data)
                .map_err(|e| ConnectError::new(Code::InvalidArgument, format!("invalid JSON message: {e}"))),
            Codec::Proto => T::decode(data)
                .map_err(|e| ConnectError::new(Code::InvalidArgument, format!("invalid protobuf message: {e}"))),
        }
    }

    fn encode<T: prost::Message + Serialize>(self, msg: &T) -> Vec<u8> {
        match self {
            Codec::Json => serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec()),
            Codec::Proto => msg.encode_to_vec(),
        }
    }

    fn content_type(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Codec::Json, false) => "application/json",
            (Codec::Proto, false) => "application/proto",
            (Codec::Json, true) => "application/connect+json",
            (Codec::Proto, true) => "application/connect+proto",
        }
    }
}

/// Parses a unary request body.
pub fn unary_request<T: prost::Message + DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Codec, T), ConnectError> {
    let codec = Codec::from_headers(headers, false)?;
    Ok((codec, codec.decode(body)?))
}

/// Builds the response of a unary call.
pub fn unary_response<T: prost::Message + Serialize>(codec: Codec, result: Result<T, ConnectError>) -> Response {
    match result {
        Ok(msg) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(codec.content_type(false)))],
            codec.encode(&msg),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Runs a unary call: decode, call `f`, encode.
pub async fn unary<Req, Resp, Fut>(headers: &HeaderMap, body: &[u8], f: impl FnOnce(Req) -> Fut) -> Response
where
    Req: prost::Message + DeserializeOwned + Default,
    Resp: prost::Message + Serialize,
    Fut: Future<Output = Result<Resp, ConnectError>>,
{
    match unary_request::<Req>(headers, body) {
        Ok((codec, req)) => unary_response(codec, f(req).await),
        Err(e) => e.into_response(),
    }
}

/// Splits enveloped frames off the front of `buf`; returns `(flags, payload)` when whole.
pub fn take_frame(buf: &mut BytesMut) -> Option<(u8, Bytes)> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let flags = buf[0];
    let mut frame = buf.split_to(5 + len);
    Some((flags, frame.split_off(5).freeze()))
}

/// Encodes one envelope.
pub fn frame(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flags);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

/// Parses the single enveloped message of a server-streaming request.
pub fn stream_request<T: prost::Message + DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Codec, T), ConnectError> {
    let codec = Codec::from_headers(headers, true)?;
    let mut buf = BytesMut::from(body);
    let Some((flags, payload)) = take_frame(&mut buf) else {
        return Err(ConnectError::new(Code::InvalidArgument, "missing enveloped request message"));
    };
    if flags & 0x01 != 0 {
        return Err(ConnectError::new(Code::Unimplemented, "compressed messages are not supported"));
    }
    Ok((codec, codec.decode(&payload)?))
}

/// The streaming content type of a request, for client-streaming calls.
pub fn stream_codec(headers: &HeaderMap) -> Result<Codec, ConnectError> {
    Codec::from_headers(headers, true)
}

/// Decodes one enveloped payload.
pub fn decode_payload<T: prost::Message + DeserializeOwned + Default>(
    codec: Codec,
    payload: &[u8],
) -> Result<T, ConnectError> {
    codec.decode(payload)
}

fn end_frame(err: Option<&ConnectError>) -> Bytes {
    let body = match err {
        Some(e) => serde_json::json!({ "error": e.json() }),
        None => serde_json::json!({}),
    };
    frame(0x02, body.to_string().as_bytes())
}

/// Builds a streaming response from messages; an `Err` item ends the stream with that error.
pub fn stream_response<T, S>(codec: Codec, messages: S) -> Response
where
    T: prost::Message + Serialize + Send + 'static,
    S: Stream<Item = Result<T, ConnectError>> + Send + 'static,
{
    let body = async_stream(codec, messages);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(codec.content_type(true)))],
        Body::from_stream(body),
    )
        .into_response()
}

/// A streaming response that fails before any message.
pub fn stream_error(codec: Codec, err: ConnectError) -> Response {
    stream_response::<crate::proto::process::KeepAlive, _>(codec, futures::stream::iter([Err(err)]))
}

fn async_stream<T, S>(
    codec: Codec,
    messages: S,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static
where
    T: prost::Message + Serialize + Send + 'static,
    S: Stream<Item = Result<T, ConnectError>> + Send + 'static,
{
    let messages = Box::pin(messages);
    futures::stream::unfold(Some(messages), move |state| async move {
        let mut messages = state?;
        match messages.next().await {
            Some(Ok(m)) => Some((Ok(frame(0, &codec.encode(&m))), Some(messages))),
            Some(Err(e)) => Some((Ok(end_frame(Some(&e))), None)),
            None => Some((Ok(end_frame(None)), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_whole_envelopes() {
        let f = frame(0, b"hello");
        assert_eq!(&f[..5], &[0, 0, 0, 0, 5]);
        let mut buf = BytesMut::from(&f[..7]);
        assert!(take_frame(&mut buf).is_none());
        buf.extend_from_slice(&f[7..]);
        let (flags, payload) = take_frame(&mut buf).unwrap();
        assert_eq!((flags, &payload[..]), (0, &b"hello"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn end_frame_carries_the_error() {
        let f = end_frame(Some(&ConnectError::new(Code::NotFound, "no such process")));
        assert_eq!(f[0], 2);
        let v: serde_json::Value = serde_json::from_slice(&f[5..]).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(end_frame(None)[5..], b"{}"[..]);
    }

    #[test]
    fn unary_errors_use_connect_statuses() {
        assert_eq!(Code::NotFound.http_status(), StatusCode::NOT_FOUND);
        assert_eq!(Code::Unimplemented.http_status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(Code::AlreadyExists.http_status(), StatusCode::CONFLICT);
    }
}
