//! The E2B-compatible control API (SPEC §7), served on its own port (`--e2b-listen`) over the same
//! [`Engine`](crate::engine::Engine) and [`Authenticator`](crate::authn::Authenticator) as the native
//! API, so tenancy is identical. Routes live at the root (no `/v1`), authenticate with `X-API-Key`
//! (or `AGENTBOX-API-KEY`), and answer errors as `{code, message}`. Routes we do not implement answer
//! 501 with a message naming the alternative. This API is deliberately not part of the native
//! OpenAPI document. On a multi-cluster gateway, `templateID: "cluster::pool"` and sandbox ids
//! `cluster.uuid` of other clusters are forwarded to their E2B APIs (see `remote`).

mod error;
mod keys;
mod remote;
mod sandboxes;
mod templates;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::routing::{get, post};
use tower::Layer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::{E2bError, E2bErrorBody};

use crate::auth::AuthInfo;
use crate::http::AppState;

/// The `envdVersion` every sandbox reports. The SDK gates protocol features on it: ≥ 0.1.0 or it
/// refuses the sandbox, ≥ 0.3.0 stdin on Start, ≥ 0.4.0 the agent picks the default user, ≥ 0.5.2
/// `CloseStdin`, ≥ 0.5.7 octet-stream (and gzip) uploads, ≥ 0.6.2 file metadata headers (our agent
/// refuses them with a 400 naming the limitation), ≥ 0.6.3 entries in watch events, ≥ 0.6.4 watches
/// on network mounts — all of which the agent implements.
pub const ENVD_VERSION: &str = "0.6.4";

/// The port of the in-sandbox agent (E2B's envd port).
pub const ENVD_PORT: u32 = 49983;

/// Settings of the E2B API.
#[derive(Debug, Clone, Default)]
pub struct E2bConfig {
    /// The `domain` returned in create/get answers (the data plane's `host:port`); the SDK builds
    /// sandbox URLs from it unless `E2B_SANDBOX_URL` is set.
    pub domain: Option<String>,
}

/// State of the E2B handlers: the native state plus E2B settings.
pub struct E2bState {
    pub app: Arc<AppState>,
    pub cfg: E2bConfig,
}

type St = Arc<E2bState>;

/// The caller of an E2B route. `X-API-Key` (E2B's header) or `AGENTBOX-API-KEY`, checked exactly as
/// a native key (admin key, `agbx_…` keys and their `e2b_…` alias, rate limit). In dev mode (no
/// admin key) the caller is the anonymous admin unless the key presented is a real one: the SDK
/// insists on sending some key, so an unknown key is not an error there.
pub struct E2bAuth(pub AuthInfo);

impl FromRequestParts<St> for E2bAuth {
    type Rejection = E2bError;
    async fn from_request_parts(parts: &mut Parts, st: &St) -> Result<Self, Self::Rejection> {
        let mut headers = HeaderMap::new();
        let key = parts.headers.get("x-api-key").or_else(|| parts.headers.get("agentbox-api-key")).cloned();
        let Some(key) = key else {
            if st.app.auth.is_dev_mode() {
                return Ok(E2bAuth(AuthInfo::dev_admin()));
            }
            return Err(E2bError::new(
                StatusCode::UNAUTHORIZED,
                "missing api key: send it in the X-API-Key header (E2B_API_KEY=e2b_<64 hex> for the SDK)",
            ));
        };
        headers.insert("agentbox-api-key", key);
        // Only the client-version header is relevant besides the key; no JWT, no impersonation here.
        if let Some(v) = parts.headers.get("x-agentbox-client-version") {
            headers.insert("x-agentbox-client-version", v.clone());
        }
        match st.app.auth.authenticate(&parts.method, &headers) {
            Ok(a) => Ok(E2bAuth(a)),
            Err(e) if st.app.auth.is_dev_mode() && e.kind == agentbox_core::error::ErrorKind::Unauthorized => {
                Ok(E2bAuth(AuthInfo::dev_admin()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The E2B-compatible router over `app`'s engine and authenticator.
pub fn router(app: Arc<AppState>, cfg: E2bConfig) -> Router {
    let st: St = Arc::new(E2bState { app, cfg });
    let routes = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list_v1))
        .route("/v2/sandboxes", post(sandboxes::create).get(sandboxes::list_v2))
        .route("/sandboxes/{id}", get(sandboxes::get).delete(sandboxes::kill))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/logs", get(sandboxes::logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(sandboxes::logs_v2))
        .route("/sandboxes/{id}/metrics", get(sandboxes::metrics))
        .route("/sandboxes/metrics", get(sandboxes::metrics_batch))
        .route("/templates", get(templates::list))
        .route("/templates/{id}", get(templates::get))
        .route("/api-keys", get(keys::list).post(keys::create))
        .route("/api-keys/{id}", axum::routing::delete(keys::delete))
        .fallback(unsupported)
        .method_not_allowed_fallback(unsupported)
        .with_state(Arc::clone(&st));
    // Around the routes, not a route layer: a `{cluster}.{uuid}` of this cluster must be routed
    // with the bare uuid, and one of another cluster never reaches a handler (see `remote`).
    let routed = axum::middleware::from_fn_with_state(st, remote::route_sandbox_ids).layer(routes);
    Router::new()
        .fallback_service(routed)
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let rid = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("e2b_request", method = %req.method(), path = %req.uri().path(), request_id = %rid)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// 501 for every route we do not serve, naming what to use instead.
async fn unsupported(method: Method, uri: Uri) -> E2bError {
    E2bError::new(StatusCode::NOT_IMPLEMENTED, unsupported_message(&method, uri.path()))
}

fn unsupported_message(method: &Method, path: &str) -> String {
    let p: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let p: Vec<&str> = if p.first().is_some_and(|s| matches!(*s, "v2" | "v3")) { p[1..].to_vec() } else { p };
    let what = format!("{method} {path}");
    let alt = match p.as_slice() {
        ["sandboxes", _, "pause"] | ["sandboxes", _, "resume"] => {
            "pausing and resuming sandboxes is not supported by agentbox; kill the sandbox and create a new one \
             (POST /sandboxes), or raise its timeout (POST /sandboxes/{id}/timeout)"
        }
        ["sandboxes", _, "snapshots"] | ["snapshots", ..] | ["sandboxes", _, "fork"] => {
            "snapshots and forks are not supported by agentbox; build an image and create sandboxes with \
             templateID \"pool//image\""
        }
        ["sandboxes", _, "network"] => "changing a sandbox's network is not supported by agentbox",
        ["templates", ..] => {
            "template builds, aliases and tags are not supported by agentbox; templates are agentbox pools: \
             create one with POST /v1/sandboxpools on the native API (or `agentbox pool create`)"
        }
        ["api-keys", _] => "updating api keys is not supported by agentbox; delete the key and create a new one",
        ["secrets", ..] | ["volumes", ..] | ["teams", ..] | ["nodes", ..] | ["access-tokens", ..] => {
            "this E2B feature is not supported by agentbox; see the native API (GET /openapi.json on the main port)"
        }
        _ => "this route is not supported by agentbox; see the native API (GET /openapi.json on the main port)",
    };
    format!("{what}: {alt}")
}

/// `Retry-After` value helper shared by the handlers.
pub(crate) fn retry_after(secs: u64) -> HeaderValue {
    HeaderValue::from_str(&secs.to_string()).unwrap_or_else(|_| HeaderValue::from_static("1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_messages_name_an_alternative() {
        let m = unsupported_message(&Method::POST, "/sandboxes/abc/pause");
        assert!(m.starts_with("POST /sandboxes/abc/pause: pausing"), "{m}");
        assert!(m.contains("kill the sandbox"), "{m}");
        let m = unsupported_message(&Method::POST, "/v3/templates");
        assert!(m.contains("POST /v1/sandboxpools"), "{m}");
        let m = unsupported_message(&Method::PATCH, "/api-keys/k1");
        assert!(m.contains("delete the key"), "{m}");
        let m = unsupported_message(&Method::GET, "/whatever");
        assert!(m.contains("native API"), "{m}");
    }
}
