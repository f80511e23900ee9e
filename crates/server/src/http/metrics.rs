//! `GET /metrics` and the middleware that counts and times every HTTP request by route template.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiResult;

/// OpenMetrics 1.0, what Prometheus asks for first in its `Accept` header.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for clients that do not ask for OpenMetrics.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus metrics (no auth).
///
/// Pool slots by phase, claim queues, claim/starting/running/recycle latency histograms,
/// create/delete counters, HTTP requests by route template. OpenMetrics text when the `Accept`
/// header asks for `application/openmetrics-text`, else `text/plain; version=0.0.4`.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "metrics in the Prometheus/OpenMetrics text format",
        content((String = "text/plain"), (String = "application/openmetrics-text")))))]
pub async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    let body = st.engine.render_metrics()?;
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let ct = HeaderValue::from_static(if openmetrics { OPENMETRICS } else { PROMETHEUS_TEXT });
    Ok(([(header::CONTENT_TYPE, ct)], body).into_response())
}

/// A fixed label for the method, so a client cannot mint series with made-up methods.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware: count and time the request under its route template (`/v1/sandboxes/{id}`, from
/// axum's [`MatchedPath`]), never the raw path; requests no route matched count as `unmatched`.
/// The time is until the response headers (a streamed body or a WebSocket is not included).
pub(super) async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    st.engine.metrics().http_request(method, route, resp.status().as_u16(), started.elapsed());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_a_fixed_vocabulary() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
