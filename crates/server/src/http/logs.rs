//! `/v1/sandboxes/{id}/logs`, `/logs/stream`, `/timeout` and `/is_ready`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::duration::{WireDuration, parse_duration};
use agentbox_core::error::AppError;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use super::sandboxes::SandboxEnvelope;
use crate::auth::AuthInfo;
use crate::engine::{LogEntry, LogsQuery, ReadinessResult, SandboxLogs};

/// The last lines of a live sandbox's logs: its containers' stdout/stderr, or a runtime's logDir.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs", tag = "sandboxes", params(("id" = String, Path), LogsQuery),
    responses((status = 200, body = SandboxLogs),
        (status = 400, body = ErrorBody, description = "lines out of range, or unknown source (the message lists the runtimes with a logDir)"),
        (status = 404, body = ErrorBody, description = "unknown sandbox, unknown container (the message lists the containers), ended sandbox (its logs were discarded with its slot), or a runtime logDir that does not exist yet"),
        (status = 409, body = ErrorBody, description = "runtime source of a sandbox that is not Running"),
        (status = 503, body = ErrorBody, description = "reading a runtime logDir inside the sandbox failed (the image lacks sh/wc/head/tail)")))]
pub async fn logs(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<SandboxLogs>> {
    Ok(Json(st.engine.logs(&auth, &id, &q).await?))
}

/// Follow a sandbox's logs like `tail -f`, as NDJSON: one `{"timestamp","container","log"}` object
/// per line (the last `lines` lines first), until the client disconnects or the sandbox ends; then
/// a final `{"_meta":true,"source","truncated"}` line. A sandbox that is not live gets only the
/// final line. An open stream counts as activity for the idle timeout.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs/stream", tag = "sandboxes", params(("id" = String, Path), LogsQuery),
    responses(
        (status = 200, content_type = "application/x-ndjson", body = LogEntry,
            description = "newline-delimited LogEntry objects, ended by one `{\"_meta\":true,\"source\":\"live\"|\"runtime\",\"truncated\":bool}` line"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 501, body = ErrorBody, description = "this backend cannot follow logs"),
        (status = 503, body = ErrorBody, description = "reading a runtime logDir inside the sandbox failed")))]
pub async fn logs_stream(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Response> {
    let rx = st.engine.follow_logs(&auth, &id, &q).await?;
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (Ok::<_, Infallible>(Bytes::from(item.to_ndjson())), rx))
    });
    Ok(ndjson_response(body))
}

/// A streamed newline-delimited JSON answer, not cached or buffered by proxies on the way.
pub(crate) fn ndjson_response<S>(body: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Body of `PUT /v1/sandboxes/{id}/timeout` (for the OpenAPI document: the handler parses the
/// body itself so that every mistake is answered with the accepted forms).
#[derive(Debug, Serialize, ToSchema)]
pub struct SetTimeoutRequest {
    /// Idle timeout: a duration such as `"30m"`, integer seconds such as `1800`, or `"0"` / `0`
    /// to remove it.
    pub timeout: WireDuration,
}

const TIMEOUT_FORMS: &str = "send {\"timeout\": D} where D is a duration such as \"90s\", \"30m\" or \"1h30m\", integer seconds such as 1800, or \"0\" to remove the idle timeout";

/// Parse the body of `PUT .../timeout`: `None` removes the idle timeout.
fn parse_timeout_body(v: &Value) -> Result<Option<Duration>, AppError> {
    let bad = |why: &str| AppError::bad_request(format!("{why}: {TIMEOUT_FORMS}"));
    let obj = v.as_object().ok_or_else(|| bad("the body must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| k.as_str() != "timeout") {
        return Err(bad(&format!("unknown field {k:?}")));
    }
    let d = match obj.get("timeout") {
        None => return Err(bad("timeout is required")),
        Some(Value::Number(n)) => Duration::from_secs(
            n.as_u64().ok_or_else(|| bad(&format!("timeout {n} is not a whole number of seconds")))?,
        ),
        Some(Value::String(s)) => parse_duration(s).map_err(|_| bad(&format!("timeout {s:?} is not a duration")))?,
        Some(other) => return Err(bad(&format!("timeout {other} has the wrong type"))),
    };
    Ok((!d.is_zero()).then_some(d))
}

/// Set or remove the idle timeout of a live sandbox. The new timeout runs from now (the call
/// counts as activity). Answers the updated sandbox (200), not 204, so the caller sees
/// `idleTimeoutSeconds`.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/timeout", tag = "sandboxes", params(("id" = String, Path)),
    request_body = SetTimeoutRequest,
    responses((status = 200, body = SandboxEnvelope),
        (status = 400, body = ErrorBody, description = "bad body; the message lists the accepted forms"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the sandbox is Stopping or ended")))]
pub async fn set_timeout(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<SandboxEnvelope>> {
    let timeout = parse_timeout_body(&body)?;
    Ok(Json(SandboxEnvelope { sandbox: st.engine.set_idle_timeout(&auth, &id, timeout)? }))
}

/// Readiness of each runtime of the sandbox (httpGet probe to the slot's IP with a 5 s timeout,
/// exec probe, or ready without a probe). 200 when every runtime is ready, else 503 with the
/// same body.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/is_ready", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 200, body = ReadinessResult), (status = 503, body = ReadinessResult, description = "not every runtime is ready"),
        (status = 404, body = ErrorBody)))]
pub async fn is_ready(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<ReadinessResult>)> {
    let r = st.engine.is_ready(&auth, &id).await?;
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timeout_body_forms() {
        assert_eq!(parse_timeout_body(&json!({"timeout": "30m"})).unwrap(), Some(Duration::from_secs(1800)));
        assert_eq!(parse_timeout_body(&json!({"timeout": 1800})).unwrap(), Some(Duration::from_secs(1800)));
        assert_eq!(parse_timeout_body(&json!({"timeout": "0"})).unwrap(), None);
        assert_eq!(parse_timeout_body(&json!({"timeout": 0})).unwrap(), None);
        for bad in [
            json!({}),
            json!({"timeout": "soon"}),
            json!({"timeout": -5}),
            json!({"timeout": 1.5}),
            json!({"timeout": true}),
            json!([1]),
            json!({"timeout": "1m", "x": 1}),
        ] {
            let e = parse_timeout_body(&bad).unwrap_err();
            assert!(e.message.contains("\"30m\"") && e.message.contains("\"0\""), "{bad}: {}", e.message);
        }
    }
}
