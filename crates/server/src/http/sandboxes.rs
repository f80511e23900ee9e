//! `/v1/sandboxes` handlers: parse, authorize, call the engine, map the result.

use std::sync::Arc;

use agentbox_core::model::Sandbox;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

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
        (status = 422, body = ErrorBody, description = "a post-start hook failed (errorCode POST_START_HOOK_FAILED; detail is PostStartHookFailedDetail); the sandbox is Failed"),
        (status = 429, body = ErrorBody, description = "claim queue full"),
        (status = 503, body = ErrorBody, description = "the startup timeout passed (switch, hooks or readiness); the sandbox is Released with reason StartupTimeout")))]
pub async fn create_sandbox(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, Json<SandboxEnvelope>)> {
    let sandbox = st.engine.create_sandbox(&auth, req).await?;
    tracing::Span::current().record("sandbox_id", sandbox.sandbox_id.as_str());
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
    tracing::Span::current().record("sandbox_id", id.as_str());
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
    tracing::Span::current().record("sandbox_id", id.as_str());
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
    tracing::Span::current().record("sandbox_id", id.as_str());
    Ok(Json(st.engine.exec(&auth, &id, body).await?))
}
