//! The error the core hands to the edge. The server maps [`ErrorKind`] to an HTTP status exactly
//! once; `detail` is serialized as-is into the error body.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::backend::BackendError;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    /// 422: the request is understood but a precondition of the caller is missing.
    Unprocessable,
    TooManyRequests,
    /// 426: the client is older than the server's minimum client version.
    UpgradeRequired,
    Internal,
    /// 501: a capability this backend or API does not have; the message names the alternative.
    NotImplemented,
    Unavailable,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub kind: ErrorKind,
    /// User-visible; lowercase; says what to do next where the caller can act.
    pub message: String,
    /// Business error code (e.g. `API_KEY_REQUIRED`).
    pub code: Option<String>,
    pub detail: Option<serde_json::Value>,
    /// Seconds, also sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// Logged, never sent.
    pub cause: Option<String>,
}

impl AppError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AppError { kind, message: message.into(), code: None, detail: None, retry_after: None, cause: None }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, m)
    }
    pub fn too_many(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooManyRequests, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, m)
    }
    pub fn internal(m: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        AppError { cause: Some(cause.to_string()), ..Self::new(ErrorKind::Internal, m) }
    }
    pub fn with_detail<T: Serialize>(mut self, detail: &T) -> Self {
        self.detail = serde_json::to_value(detail).ok();
        self
    }
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => AppError::conflict(m),
            StoreError::NotFound(m) => AppError::not_found(m),
            StoreError::Backend(m) => AppError::internal("store error", m),
        }
    }
}

impl From<BackendError> for AppError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::SlotNotFound(_) | BackendError::ContainerNotFound { .. } => {
                AppError::not_found(e.to_string())
            }
            BackendError::NotRunning { .. } | BackendError::Conflict(_) => AppError::conflict(e.to_string()),
            BackendError::Invalid(m) => AppError::bad_request(m),
            BackendError::Image { .. } => AppError::bad_request(e.to_string()),
            BackendError::Unsupported(m) => AppError::new(ErrorKind::NotImplemented, m),
            other => AppError::internal("backend error", other),
        }
    }
}

/// Attached to 409 when a pool has no idle slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatusDetail {
    pub idle: u32,
    pub running: u32,
    pub starting: u32,
    pub stopping: u32,
    pub failed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailablePoolSummary {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub idle: u32,
    pub running: u32,
    pub starting: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailablePoolsDetail {
    pub available_pools: Vec<AvailablePoolSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailableTemplateSummary {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailableTemplatesDetail {
    pub available_templates: Vec<AvailableTemplateSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}
