//! Cross-cluster E2B requests (SPEC §2 "Cluster", issue #7).
//!
//! - `POST /sandboxes` with `templateID: "eu::pool[//image]"` is forwarded to cluster `eu`'s E2B
//!   API with `templateID: "pool[//image]"` (see `sandboxes::create`).
//! - Every sandbox-scoped route (`/sandboxes/{id}/…`, `/v2/sandboxes/{id}/…`) with an id
//!   `{cluster}.{uuid}` is forwarded to that cluster's E2B API with the bare uuid
//!   ([`route_sandbox_ids`]); this cluster's own prefix is stripped and the route served here.
//!
//! The caller is authenticated here first (an unauthenticated request never leaves), then the
//! request goes on with its credentials, the catalog's headers and `X-Source-Cluster`
//! ([`crate::gateway::Gateway::send`]). Answers come back with every `sandboxID` made global
//! (`{cluster}.{uuid}`) and `domain` replaced by this server's, so E2B SDKs send their data-plane
//! traffic to this server's data plane, which forwards it to the owner. Errors are E2B-shaped:
//! unknown cluster 400 (naming the known ones), unreachable 502, too slow 504, loop 508.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use super::error::E2bError;
use super::{E2bAuth, St};
use crate::gateway::{GatewayError, Outbound, Plane, globalize_ids, json_response, split_sandbox_id, stream_response};

impl From<GatewayError> for E2bError {
    fn from(e: GatewayError) -> Self {
        E2bError::new(e.status(), e.to_string())
    }
}

/// Largest body forwarded by the sandbox-scoped routes (the E2B router's own body limit).
const MAX_BODY: usize = 1 << 20;

/// Where the sandbox id sits in an E2B path: `(byte range of the id, id)` for
/// `/sandboxes/{id}[/…]` and `/v2|/v3/sandboxes/{id}[/…]`.
fn sandbox_id_in_path(path: &str) -> Option<(std::ops::Range<usize>, &str)> {
    let rest_at = ["/sandboxes/", "/v2/sandboxes/", "/v3/sandboxes/"]
        .iter()
        .find_map(|p| path.starts_with(p).then_some(p.len()))?;
    let rest = &path[rest_at..];
    let end = rest.find('/').unwrap_or(rest.len());
    (end > 0).then(|| (rest_at..rest_at + end, &rest[..end]))
}

/// `uri` with the bytes `range` of its path replaced by `id` (query kept).
fn with_id(uri: &Uri, range: std::ops::Range<usize>, id: &str) -> String {
    let path = uri.path();
    let mut out = format!("{}{id}{}", &path[..range.start], &path[range.end..]);
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Middleware around the E2B routes: a sandbox-scoped path whose id is `{cluster}.{uuid}` is
/// served here with the bare uuid when `{cluster}` is this cluster, and forwarded otherwise.
pub(super) async fn route_sandbox_ids(State(st): State<St>, req: Request, next: Next) -> Response {
    let Some((range, id)) = sandbox_id_in_path(req.uri().path()) else { return next.run(req).await };
    let Some((cluster, uuid)) = split_sandbox_id(id) else { return next.run(req).await };
    let (cluster, uuid) = (cluster.to_owned(), uuid.to_owned());
    let bare = with_id(req.uri(), range, &uuid);
    if st.app.gateway.catalog().is_local(&cluster) {
        let (mut parts, body) = req.into_parts();
        match bare.parse() {
            Ok(u) => parts.uri = u,
            Err(_) => return E2bError::bad_request(format!("invalid path {bare:?}")).into_response(),
        }
        let resp = next.run(Request::from_parts(parts, body)).await;
        // Asked by its global id: answer with global ids, as the native API does.
        return crate::gateway::globalize_local_answer(resp, &cluster).await;
    }
    let (mut parts, body) = req.into_parts();
    if let Err(e) = E2bAuth::from_request_parts(&mut parts, &st).await {
        return e.into_response();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return E2bError::bad_request(format!("cannot read the request body: {e}")).into_response(),
    };
    match forward(&st, &cluster, parts.method, bare, parts.headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Send one E2B request to `cluster` and shape its answer for a caller of this gateway.
pub(super) async fn forward(
    st: &St,
    cluster: &str,
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, E2bError> {
    let out = Outbound { method, path_and_query, headers, body };
    let resp = st.app.gateway.send(cluster, Plane::E2b, out).await?;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Ok(stream_response(resp));
    }
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = st.app.gateway.read_answer(cluster, resp).await?;
    let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) else {
        let mut r = (status, bytes).into_response();
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        return Ok(r);
    };
    globalize(&mut doc, cluster, st.cfg.domain.as_deref());
    Ok(json_response(status, &headers, &doc))
}

/// Make an answer of `cluster` fit this gateway: global sandbox ids, this server's `domain`.
pub(super) fn globalize(doc: &mut Value, cluster: &str, domain: Option<&str>) {
    globalize_ids(doc, cluster);
    let set_domain = |v: &mut Value| {
        if let Value::Object(m) = v
            && m.contains_key("domain")
        {
            match domain {
                Some(d) => {
                    m.insert("domain".into(), Value::String(d.to_owned()));
                }
                None => {
                    m.remove("domain");
                }
            }
        }
    };
    match doc {
        Value::Array(items) => items.iter_mut().for_each(set_domain),
        v => set_domain(v),
    }
}

/// `GET /sandboxes?cluster=eu` (and `/v2/sandboxes`): the list of cluster `eu`, forwarded with
/// the same query minus `cluster`, ids made global. `None` when the list is this cluster's (no
/// `cluster`, or this cluster's id).
pub(super) async fn list_elsewhere(
    st: &St,
    cluster: Option<&str>,
    uri: &Uri,
    headers: HeaderMap,
) -> Result<Option<Response>, E2bError> {
    let Some(cluster) = cluster.filter(|c| !st.app.gateway.catalog().is_local(c)) else { return Ok(None) };
    if cluster == "*" {
        return Err(E2bError::bad_request(
            "cluster=* (every cluster at once) is served by the native API only (GET /v1/sandboxes?cluster=*); \
             on the E2B API list one cluster at a time, e.g. cluster=eu (GET /v1/clusters lists them)",
        ));
    }
    let query: Vec<&str> =
        uri.query().unwrap_or("").split('&').filter(|kv| !kv.is_empty() && !kv.starts_with("cluster=")).collect();
    let mut path = uri.path().to_owned();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    forward(st, cluster, Method::GET, path, headers, Bytes::new()).await.map(Some)
}

/// The error for `*::pool` on the E2B API.
pub(super) fn placement_is_native_only(template_id: &str, pool: &str) -> E2bError {
    E2bError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "templateID {template_id:?}: placement on any cluster (`*::pool`) is served by the native API only \
             (POST /v1/sandboxes with poolName \"*::{pool}\"); on the E2B API name the cluster, e.g. \"eu::{pool}\" \
             (GET /v1/clusters lists them)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_are_found_in_e2b_paths() {
        let f = |p: &str| sandbox_id_in_path(p).map(|(_, id)| id.to_owned());
        assert_eq!(f("/sandboxes/eu.abc").as_deref(), Some("eu.abc"));
        assert_eq!(f("/sandboxes/eu.abc/timeout").as_deref(), Some("eu.abc"));
        assert_eq!(f("/v2/sandboxes/eu.abc/connect").as_deref(), Some("eu.abc"));
        assert_eq!(f("/sandboxes/metrics").as_deref(), Some("metrics"), "no dot: served locally");
        assert_eq!(f("/sandboxes"), None);
        assert_eq!(f("/sandboxes/"), None);
        assert_eq!(f("/templates/x"), None);
        let uri: Uri = "/v2/sandboxes/eu.abc/logs?limit=5".parse().unwrap();
        let (range, _) = sandbox_id_in_path(uri.path()).unwrap();
        assert_eq!(with_id(&uri, range, "abc"), "/v2/sandboxes/abc/logs?limit=5");
    }

    #[test]
    fn answers_get_global_ids_and_this_servers_domain() {
        let mut doc = serde_json::json!({"sandboxID": "u1", "domain": "10.0.0.5:8092", "templateID": "web"});
        globalize(&mut doc, "eu", Some("gw:8092"));
        assert_eq!(doc, serde_json::json!({"sandboxID": "eu.u1", "domain": "gw:8092", "templateID": "web"}));
        let mut list = serde_json::json!([{"sandboxID": "u1", "domain": "x"}, {"sandboxID": "u2"}]);
        globalize(&mut list, "eu", None);
        assert_eq!(list, serde_json::json!([{"sandboxID": "eu.u1"}, {"sandboxID": "eu.u2"}]));
    }
}
