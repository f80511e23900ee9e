//! `/v1/sandboxes` handlers: parse, authorize, call the engine, map the result.

use std::sync::Arc;

use agentbox_core::model::Sandbox;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::auth::AuthInfo;
use crate::engine::{CreateSandboxRequest, ExecRequestBody, ExecResult, ListSandboxesQuery, SandboxList};

#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxEnvelope {
    pub sandbox: Sandbox,
}

/// Claim a sandbox from a pool; answers once it is Running.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandboxRequest,
    responses(
        (status = 201, body = SandboxEnvelope),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "pool not found; detail.availablePools"),
        (status = 409, body = ErrorBody, description = "no idle slot; detail is PoolStatusDetail, Retry-After set"),
        (status = 429, body = ErrorBody, description = "claim queue full")))]
pub async fn create_sandbox(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, Json<SandboxEnvelope>)> {
    let sandbox = st.engine.create_sandbox(&auth, req).await?;
    Ok((StatusCode::CREATED, Json(SandboxEnvelope { sandbox })))
}

/// List live and historical sandboxes, newest first.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(ListSandboxesQuery),
    responses((status = 200, body = SandboxList), (status = 400, body = ErrorBody)))]
pub async fn list_sandboxes(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiQuery(q): ApiQuery<ListSandboxesQuery>,
) -> ApiResult<Json<SandboxList>> {
    Ok(Json(st.engine.list_sandboxes(&auth, &q)?))
}

/// One sandbox, live or from history.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 200, body = SandboxEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_sandbox(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SandboxEnvelope>> {
    Ok(Json(SandboxEnvelope { sandbox: st.engine.get_sandbox(&auth, &id)? }))
}

/// Release a sandbox: Stopping now, its slot recycled in the background.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 202, body = crate::engine::DeleteSandboxResult), (status = 404, body = ErrorBody)))]
pub async fn delete_sandbox(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<crate::engine::DeleteSandboxResult>)> {
    Ok((StatusCode::ACCEPTED, Json(st.engine.delete_sandbox(&auth, &id)?)))
}

/// Run a one-shot command and return its output. A non-zero exit code is still 200.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "sandboxes", params(("id" = String, Path)),
    request_body = ExecRequestBody,
    responses((status = 200, body = ExecResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "sandbox not Running")))]
pub async fn exec(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ExecRequestBody>,
) -> ApiResult<Json<ExecResult>> {
    Ok(Json(st.engine.exec(&auth, &id, body).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Container name (default: all).
    pub container: Option<String>,
    /// Last N lines, 0 = all, at most 10000 (default 0).
    pub lines: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    pub container: String,
    pub stream: String,
    pub log: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLogs {
    pub sandbox_id: String,
    pub pod_name: String,
    pub entries: Vec<LogEntry>,
    pub total_bytes: u64,
    pub truncated: bool,
    pub source: String,
}

/// The stdout/stderr of the sandbox's containers.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs", tag = "sandboxes", params(("id" = String, Path), LogsQuery),
    responses((status = 200, body = SandboxLogs), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<SandboxLogs>> {
    let lines = q.lines.unwrap_or(0);
    if lines > 10_000 {
        return Err(agentbox_core::error::AppError::bad_request("lines must be 0..=10000 (0 = all)").into());
    }
    let (sb, lines) = st.engine.logs(&auth, &id, q.container.as_deref(), lines).await?;
    let total_bytes = lines.iter().map(|l| l.line.len() as u64 + 1).sum();
    Ok(Json(SandboxLogs {
        sandbox_id: sb.sandbox_id,
        pod_name: sb.pod_name,
        truncated: q.lines.is_some_and(|n| n > 0 && lines.len() >= n),
        entries: lines
            .into_iter()
            .map(|l| LogEntry { timestamp: l.timestamp, container: l.container, stream: l.stream, log: l.line })
            .collect(),
        total_bytes,
        source: "stdout".into(),
    }))
}
