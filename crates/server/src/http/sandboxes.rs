//! `/v1/sandboxes` handlers: parse, authorize, call the engine, map the result.

use std::convert::Infallible;
use std::sync::Arc;

use agentbox_core::model::Sandbox;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::auth::AuthInfo;
use crate::engine::{
    CreateSandboxRequest, ExecEvent, ExecRequestBody, ExecResult, ExecStreamLine, ListSandboxesQuery, SandboxList,
    SandboxMetric, Utf8Chunks,
};

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
///
/// With `cluster=`, the sandboxes of that cluster (or of every cluster, `*`) with global ids
/// (`cluster.uuid`); see docs/gateway.md for paging a merged list.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(ListSandboxesQuery, super::gateway::ClusterQuery),
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

/// One sample of the sandbox's resource usage, read from its slot's cgroup: CPU (percent of
/// `cpuCount` CPUs over the interval since the previous sample, or a 100 ms window), memory
/// (usage minus inactive file cache; the limit, else the host's memory) and the disk its containers
/// wrote. Reading metrics does not count as activity for the idle timeout.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 200, body = SandboxMetric), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "sandbox not Starting or Running"),
        (status = 501, body = ErrorBody, description = "this backend cannot read slot usage")))]
pub async fn sandbox_metrics(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SandboxMetric>> {
    tracing::Span::current().record("sandbox_id", id.as_str());
    Ok(Json(st.engine.sandbox_metrics(&auth, &id).await?))
}

/// Run a command and stream its output as it is produced: newline-delimited JSON lines
/// `{"type":"stdout"|"stderr","data":…}`, ended by one `{"type":"exit","exitCode":…,"timedOut":…,
/// "durationMs":…}` (or `{"type":"error","message":…}` if the run broke off). For long commands:
/// `timeoutSeconds` 1..=86400, default 600. Closing the connection kills the command. An open
/// stream counts as activity for the idle timeout.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec/stream", tag = "sandboxes", params(("id" = String, Path)),
    request_body = ExecRequestBody,
    responses(
        (status = 200, content_type = "application/x-ndjson", body = ExecStreamLine,
            description = "newline-delimited ExecStreamLine objects; the last is `exit` or `error`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "sandbox not Running")))]
pub async fn exec_stream(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ExecRequestBody>,
) -> ApiResult<Response> {
    tracing::Span::current().record("sandbox_id", id.as_str());
    let rx = st.engine.exec_stream(&auth, &id, body).await?;
    struct S {
        rx: tokio::sync::mpsc::Receiver<ExecEvent>,
        out: Utf8Chunks,
        err: Utf8Chunks,
        started: std::time::Instant,
        engine: Arc<crate::engine::Engine>,
        id: String,
        done: bool,
    }
    let state = S {
        rx,
        out: Utf8Chunks::default(),
        err: Utf8Chunks::default(),
        started: std::time::Instant::now(),
        engine: st.engine.clone(),
        id,
        done: false,
    };
    let line = |l: ExecStreamLine| {
        let mut v = serde_json::to_vec(&l).expect("serializable");
        v.push(b'\n');
        Bytes::from(v)
    };
    let body = futures::stream::unfold(state, move |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let Some(ev) = s.rx.recv().await else {
                s.done = true;
                let l = ExecStreamLine::Error { message: "the command ended without an exit status".into() };
                return Some((Ok::<_, Infallible>(line(l)), s));
            };
            s.engine.touch(&s.id);
            let l = match ev {
                ExecEvent::Stdout(b) => ExecStreamLine::Stdout { data: s.out.push(&b) },
                ExecEvent::Stderr(b) => ExecStreamLine::Stderr { data: s.err.push(&b) },
                ExecEvent::Exit { exit_code, timed_out, .. } => {
                    s.done = true;
                    let (o, e) = (s.out.finish(), s.err.finish());
                    let mut bytes = Vec::new();
                    if !o.is_empty() {
                        bytes.extend_from_slice(&line(ExecStreamLine::Stdout { data: o }));
                    }
                    if !e.is_empty() {
                        bytes.extend_from_slice(&line(ExecStreamLine::Stderr { data: e }));
                    }
                    let ms = s.started.elapsed().as_millis() as u64;
                    bytes.extend_from_slice(&line(ExecStreamLine::Exit { exit_code, timed_out, duration_ms: ms }));
                    return Some((Ok(Bytes::from(bytes)), s));
                }
                ExecEvent::Error(message) => {
                    s.done = true;
                    ExecStreamLine::Error { message }
                }
            };
            if matches!(&l, ExecStreamLine::Stdout { data } | ExecStreamLine::Stderr { data } if data.is_empty()) {
                continue;
            }
            return Some((Ok(line(l)), s));
        }
    });
    Ok(super::logs::ndjson_response(body))
}
