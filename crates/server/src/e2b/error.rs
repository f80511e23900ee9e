//! E2B error bodies: `{code, message}` with the matching HTTP status. A 500 never carries its
//! cause (it is logged), like the native edge.

use agentbox_core::error::{AppError, ErrorKind};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::http::error::status_of;

/// The body of every E2B API error.
#[derive(Debug, Serialize)]
pub struct E2bErrorBody {
    pub code: u16,
    pub message: String,
}

/// An E2B API error: status, message and an optional `Retry-After` (seconds).
#[derive(Debug)]
pub struct E2bError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl E2bError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> E2bError {
        E2bError { status, message: message.into(), retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> E2bError {
        E2bError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<AppError> for E2bError {
    fn from(e: AppError) -> Self {
        let message = if e.kind == ErrorKind::Internal {
            tracing::error!(cause = e.cause.as_deref().unwrap_or(""), "{}", e.message);
            format!("internal error: {}; see the server log", e.message)
        } else {
            e.message
        };
        E2bError { status: status_of(e.kind), message, retry_after: e.retry_after }
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = E2bErrorBody { code: self.status.as_u16(), message: self.message };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, super::retry_after(secs));
        }
        resp
    }
}

impl From<JsonRejection> for E2bError {
    fn from(r: JsonRejection) -> Self {
        let msg = match &r {
            JsonRejection::MissingJsonContentType(_) => "send a JSON body with Content-Type: application/json".into(),
            _ => format!("invalid request body: {}", r.body_text()),
        };
        E2bError::bad_request(msg)
    }
}

impl From<QueryRejection> for E2bError {
    fn from(r: QueryRejection) -> Self {
        E2bError::bad_request(format!("invalid query: {}", r.body_text()))
    }
}

impl From<PathRejection> for E2bError {
    fn from(r: PathRejection) -> Self {
        E2bError::bad_request(format!("invalid path: {}", r.body_text()))
    }
}

/// `Json` answering bad bodies with an E2B error body.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(E2bError))]
pub struct EJson<T>(pub T);

/// `Query` answering bad query strings with an E2B error body.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(E2bError))]
pub struct EQuery<T>(pub T);

/// `Path` answering bad paths with an E2B error body.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(E2bError))]
pub struct EPath<T>(pub T);

pub type EResult<T> = Result<T, E2bError>;
