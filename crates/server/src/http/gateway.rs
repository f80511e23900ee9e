//! Multi-cluster routing of the native API (issue #7, `docs/gateway.md`).
//!
//! [`wrap`] puts a routing layer in front of the whole native router. It runs before routing,
//! authentication and the handlers, and looks at four kinds of requests:
//!
//! - `/v1/sandboxes/{cluster.uuid}[/…]`: this cluster's own prefix is stripped and the request is
//!   served here; another cluster's id is forwarded to that cluster (method, path with the bare
//!   uuid, query, body, the caller's credentials, the catalog's headers, `X-Source-Cluster`). JSON
//!   answers get their ids made global again, streams (exec, log follow) are passed through as they
//!   come, and the terminal WebSocket is spliced through as an upgraded connection.
//! - `POST /v1/sandboxes` with `poolName: "cluster::pool"`: the claim is made on that cluster, the
//!   answer names the sandbox `cluster.uuid`. `*::pool` places the claim by stock ([`Routing::place`]).
//! - `GET /v1/sandboxes?cluster=…` and `GET /v1/sandboxpools?cluster=…`: one cluster's list, or all
//!   of them merged with `cluster=*` ([`Routing::aggregate_sandboxes`]).
//! - everything else goes to the local router untouched.
//!
//! Authentication (decision, the same on the E2B API): a request is forwarded only when the gateway
//! itself accepts the caller's credentials (so the gateway is never an open relay to the clusters
//! behind it, whose catalog headers may carry credentials), and the owning cluster authenticates the
//! forwarded credentials again. A caller therefore needs a key both clusters accept (the admin key,
//! or keys created on both), or a catalog entry whose headers carry the target's credentials. The
//! terminal WebSocket is the exception: it carries a single-use exec token, which only the owning
//! cluster can check.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;
use utoipa::IntoParams;

use super::AppState;
use super::error::ErrorBody;
use crate::gateway::{
    ClusterListError, GatewayError, Outbound, Plane, global_sandbox_id, globalize_ids, json_response, split_pool_name,
    split_sandbox_id, stream_response,
};

/// Bodies the gateway reads to route or rewrite (the native API's JSON limit).
const BODY_LIMIT: usize = 16 << 20;
/// A cached stock figure older than this is fetched again before a placement.
const STOCK_FRESH: Duration = Duration::from_secs(10);
/// How often the background task refreshes the stock of pools used in placements.
const STOCK_REFRESH_EVERY: Duration = Duration::from_secs(3);
/// Bound of one stock read (placement must not wait on a dead cluster for long).
const STOCK_TIMEOUT: Duration = Duration::from_secs(3);
/// A pool stays in the background refresh this long after its last `*::` placement.
const STOCK_INTEREST: Duration = Duration::from_secs(600);
/// `cluster=*` merges at most this many sandboxes (`offset + limit`).
const AGGREGATE_MAX: u32 = 1000;

/// The `cluster` query parameter of the list operations (documents it; [`wrap`] consumes it).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ClusterQuery {
    /// A cluster id from `GET /v1/clusters`: list that cluster (forwarded when it is another
    /// cluster); `*`: every cluster of the catalog, merged. With `cluster=`, sandbox ids are global
    /// (`cluster.uuid`) and pool names qualified (`cluster::pool`); clusters that could not be
    /// listed are named in `clusterErrors`.
    pub cluster: Option<String>,
}

/// What a placement knows of one cluster's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stock {
    Idle(u32),
    /// The cluster has no such pool (or the caller may not see it).
    Absent,
    /// The cluster could not be asked; the reason.
    Failed(String),
}

/// `(namespace, cluster, pool)`.
type StockKey = (String, String, String);

/// The routing layer's state.
pub(super) struct Routing {
    st: Arc<AppState>,
    inner: Router,
    /// `(namespace, cluster, pool)` → stock and when it was read. Remote clusters only. Pool names
    /// are per namespace (tenants), so a reading holds only for callers of that namespace.
    stock: Mutex<HashMap<StockKey, (Stock, Instant)>>,
    /// Pools placed with `*::` recently, kept fresh by the background task.
    interest: Mutex<HashMap<String, Instant>>,
    refresher: AtomicBool,
}

/// A buffered JSON answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    doc: Value,
}

impl Answer {
    fn into_response(self) -> Response {
        json_response(self.status, &self.headers, &self.doc)
    }
}

/// The native router behind the routing layer.
pub(super) fn wrap(st: Arc<AppState>, inner: Router) -> Router {
    let routing = Arc::new(Routing {
        st,
        inner,
        stock: Mutex::new(HashMap::new()),
        interest: Mutex::new(HashMap::new()),
        refresher: AtomicBool::new(false),
    });
    Router::new().fallback(move |req: Request| {
        let routing = Arc::clone(&routing);
        async move { routing.handle(req).await }
    })
}

/// The error answer of a request the gateway could not route or forward.
pub(super) fn gateway_error(e: &GatewayError) -> Response {
    let (code, detail) = match e {
        GatewayError::UnknownCluster { known, .. } => ("CLUSTER_UNKNOWN", Some(json!({ "knownClusters": known }))),
        GatewayError::NotConfigured { .. } => ("CLUSTER_NOT_CONFIGURED", None),
        GatewayError::Loop { .. } => ("CLUSTER_LOOP", None),
        GatewayError::Unreachable { .. } => ("CLUSTER_UNREACHABLE", None),
        GatewayError::Timeout { .. } => ("CLUSTER_TIMEOUT", None),
        GatewayError::BadPath { .. } => ("BAD_PATH", None),
        GatewayError::TooLarge { .. } => ("CLUSTER_ANSWER_TOO_LARGE", None),
    };
    if e.status().is_server_error() {
        tracing::warn!(error = %e, "gateway: request not forwarded");
    }
    let body = ErrorBody { error: e.to_string(), error_code: Some(code.into()), detail };
    (e.status(), axum::Json(body)).into_response()
}

fn error_response(status: StatusCode, message: impl Into<String>, code: &str) -> Response {
    (status, axum::Json(ErrorBody { error: message.into(), error_code: Some(code.into()), detail: None }))
        .into_response()
}

fn too_large() -> Response {
    // 400 like the JSON extractor's own refusal of a large body.
    error_response(
        StatusCode::BAD_REQUEST,
        "request body too large: JSON bodies are limited to 16 MiB",
        "BODY_TOO_LARGE",
    )
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

/// The decoded value of query parameter `name`.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let q = query?;
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(q);
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn serde_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    let uri: axum::http::Uri = match format!("/?{q}").parse() {
        Ok(u) => u,
        Err(_) => return vec![],
    };
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default()
}

/// The raw query without the parameters named in `drop` (the others keep their encoding).
fn strip_params(query: Option<&str>, drop: &[&str]) -> Option<String> {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !drop.contains(&p.split('=').next().unwrap_or("")))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Percent-encode a path segment (pool names come from the caller).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && headers.contains_key(header::UPGRADE)
}

/// Point the endpoint URLs of sandboxes from cluster `cluster` (`{its data plane}/sandboxes/{uuid}/…`)
/// at this server's data plane with the global id, which forwards them (any depth; run before
/// [`globalize_ids`], it needs the bare ids).
fn rewrite_endpoints(doc: &mut Value, cluster: &str, local_proxy: &str) {
    match doc {
        Value::Object(m) => {
            let id = m.get("sandboxId").and_then(Value::as_str).map(str::to_owned);
            if let (Some(id), Some(Value::Object(eps))) = (id, m.get_mut("endpoints"))
                && split_sandbox_id(&id).is_none()
            {
                let needle = format!("/sandboxes/{id}/");
                for ep in eps.values_mut() {
                    if let Some(Value::String(url)) = ep.get_mut("url")
                        && let Some(at) = url.find(&needle)
                    {
                        let rest = &url[at + needle.len()..];
                        *url = format!(
                            "{}/sandboxes/{}/{rest}",
                            local_proxy.trim_end_matches('/'),
                            global_sandbox_id(cluster, &id)
                        );
                    }
                }
            }
            m.values_mut().for_each(|v| rewrite_endpoints(v, cluster, local_proxy));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rewrite_endpoints(v, cluster, local_proxy)),
        _ => {}
    }
}

/// `items[].name` → `cluster::name` (pool lists with `cluster=`).
fn qualify_pool_names(doc: &mut Value, cluster: &str) {
    if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
        for it in items {
            if let Some(Value::String(n)) = it.get_mut("name")
                && !n.contains("::")
            {
                *n = format!("{cluster}::{n}");
            }
        }
    }
}

/// Placement order: most idle slots first; ties go to the local cluster, then by id.
fn sort_candidates(ranked: &mut [(String, u32)], local: &str) {
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then((b.0 == local).cmp(&(a.0 == local))).then(a.0.cmp(&b.0)));
}

impl Routing {
    fn catalog(&self) -> &crate::gateway::Catalog {
        self.st.gateway.catalog()
    }

    async fn handle(self: Arc<Self>, req: Request) -> Response {
        let path = req.uri().path().to_owned();
        if let Some(rest) = path.strip_prefix("/v1/sandboxes/") {
            let (seg, tail) = match rest.split_once('/') {
                Some((s, t)) => (s, Some(t)),
                None => (rest, None),
            };
            if let Some((cluster, bare)) = split_sandbox_id(seg) {
                let local_path = match tail {
                    Some(t) => format!("/v1/sandboxes/{bare}/{t}"),
                    None => format!("/v1/sandboxes/{bare}"),
                };
                let pq = with_query(&local_path, req.uri().query());
                if self.catalog().is_local(cluster) {
                    // Asked by its global id: answer with global ids too.
                    let cluster = cluster.to_owned();
                    let resp = self.local_at(req, &pq).await;
                    return crate::gateway::globalize_local_answer(resp, &cluster).await;
                }
                let cluster = cluster.to_owned();
                if tail == Some("terminal") && is_upgrade(req.headers()) {
                    return self.forward_upgrade(req, &cluster, pq).await;
                }
                return self.forward_sandbox(req, &cluster, pq).await;
            }
        }
        let method = req.method().clone();
        if path == "/v1/sandboxes" && method == Method::POST {
            return self.create(req).await;
        }
        if method == Method::GET
            && (path == "/v1/sandboxes" || path == "/v1/sandboxpools")
            && let Some(cluster) = query_param(req.uri().query(), "cluster")
        {
            return self.list(req, &cluster, path == "/v1/sandboxes").await;
        }
        self.local(req).await
    }

    /// Serve `req` with the local router.
    async fn local(&self, req: Request) -> Response {
        match self.inner.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        }
    }

    /// Serve `req` locally at another path and query.
    async fn local_at(&self, mut req: Request, path_and_query: &str) -> Response {
        match path_and_query.parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                return error_response(StatusCode::BAD_REQUEST, "invalid request path", "BAD_PATH");
            }
        }
        self.local(req).await
    }

    /// A local request built from the caller's headers, answered as buffered JSON. `auth`: the
    /// caller as the gateway already authenticated it (the local handler then does not do it
    /// again, so a gateway request costs the caller one rate-limit token, not one per page).
    async fn local_json(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
        auth: Option<&crate::auth::AuthInfo>,
    ) -> Answer {
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = method;
        if let Some(a) = auth {
            req.extensions_mut().insert(a.clone());
        }
        let mut h = headers.clone();
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::TRANSFER_ENCODING);
        *req.headers_mut() = h;
        let resp = self.local_at(req, path_and_query).await;
        let (parts, body) = resp.into_parts();
        let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
        let doc = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer { status: parts.status, headers: parts.headers, doc }
    }

    /// Send to a remote cluster's native API and buffer the JSON answer.
    async fn remote_json(
        &self,
        cluster: &str,
        method: Method,
        path_and_query: String,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Answer, GatewayError> {
        let out = Outbound { method, path_and_query, headers: headers.clone(), body };
        let (status, headers, doc) = self.st.gateway.send_json(cluster, Plane::Native, out).await?;
        Ok(Answer { status, headers, doc })
    }

    /// Make a remote answer's sandbox ids global and its endpoints point at this data plane.
    fn globalize_remote(&self, doc: &mut Value, cluster: &str) {
        if let Some(base) = self.st.engine.proxy_base_url() {
            rewrite_endpoints(doc, cluster, base);
        }
        globalize_ids(doc, cluster);
    }

    /// Refuse a request the gateway would forward when the gateway itself does not accept the
    /// caller (see the module docs).
    fn refuse_unauthenticated(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        self.caller(method, headers).err()
    }

    /// The caller as this gateway sees it, or the refusal to answer with.
    fn caller(&self, method: &Method, headers: &HeaderMap) -> Result<crate::auth::AuthInfo, Response> {
        self.st.auth.authenticate(method, headers).map_err(|e| super::ApiError(e).into_response())
    }

    /// Forward a sandbox-scoped request to `cluster`; JSON answers are rewritten, others streamed.
    async fn forward_sandbox(&self, req: Request, cluster: &str, path_and_query: String) -> Response {
        if let Some(refused) = self.refuse_unauthenticated(req.method(), req.headers()) {
            return refused;
        }
        let (parts, body) = req.into_parts();
        let Ok(body) = to_bytes(body, BODY_LIMIT).await else { return too_large() };
        let out = Outbound { method: parts.method, path_and_query, headers: parts.headers, body };
        let resp = match self.st.gateway.send(cluster, Plane::Native, out).await {
            Ok(r) => r,
            Err(e) => return gateway_error(&e),
        };
        if !is_json(resp.headers()) {
            return stream_response(resp);
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = match self.st.gateway.read_answer(cluster, resp).await {
            Ok(b) => b,
            Err(e) => return gateway_error(&e),
        };
        let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) else {
            // Declared JSON but is not: pass it on as it came.
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            out.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            return out;
        };
        self.globalize_remote(&mut doc, cluster);
        json_response(status, &headers, &doc)
    }

    /// Forward a WebSocket (terminal) handshake to `cluster` and, once it answers 101, splice the
    /// caller's upgraded connection with the remote one (frames pass through untouched).
    async fn forward_upgrade(&self, mut req: Request, cluster: &str, path_and_query: String) -> Response {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let out = Outbound {
            method: req.method().clone(),
            path_and_query,
            headers: req.headers().clone(),
            body: Bytes::new(),
        };
        let resp = match self.st.gateway.send_upgrade(cluster, Plane::Native, out).await {
            Ok(r) => r,
            Err(e) => return gateway_error(&e),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Refused (bad token, not Running, …): the remote's own answer.
            return stream_response(resp);
        }
        let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        if let Some(h) = answer.headers_mut() {
            for (k, v) in resp.headers() {
                if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
                    h.append(k.clone(), v.clone());
                }
            }
        }
        let cluster_id = cluster.to_owned();
        tokio::spawn(async move {
            let remote = resp.upgrade();
            match tokio::join!(client_upgrade, remote) {
                (Ok(client), Ok(mut remote)) => {
                    let mut client = hyper_util::rt::TokioIo::new(client);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut remote).await {
                        tracing::debug!(cluster = %cluster_id, error = %e, "gateway: forwarded terminal ended");
                    }
                }
                (Err(e), _) => tracing::debug!(cluster = %cluster_id, error = %e, "gateway: caller upgrade failed"),
                (_, Err(e)) => {
                    tracing::warn!(cluster = %cluster_id, error = %crate::gateway::reqwest_cause(e), "gateway: remote upgrade failed")
                }
            }
        });
        answer.body(Body::empty()).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
    }

    // ------------------------------------------------------------------ create and placement

    async fn create(self: &Arc<Self>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = to_bytes(body, BODY_LIMIT).await else { return too_large() };
        let doc: Option<Value> = serde_json::from_slice(&bytes).ok();
        let target = doc.as_ref().and_then(|d| d.get("poolName")).and_then(Value::as_str).and_then(|p| {
            match split_pool_name(p) {
                (Some(c), pool) => Some((c.to_owned(), pool.to_owned())),
                (None, _) => None,
            }
        });
        let (Some(mut doc), Some((cluster, pool))) = (doc, target) else {
            return self.local(Request::from_parts(parts, Body::from(bytes))).await;
        };
        if cluster.is_empty() || pool.is_empty() || pool.contains("::") {
            return error_response(
                StatusCode::BAD_REQUEST,
                "poolName is not valid: use `pool`, `cluster::pool` (see GET /v1/clusters) or `*::pool` \
                 (the cluster with the most idle slots)",
                "BAD_POOL_NAME",
            );
        }
        let caller = if self.catalog().is_local(&cluster) {
            None
        } else {
            match self.caller(&parts.method, &parts.headers) {
                Ok(a) => Some(a),
                Err(refused) => return refused,
            }
        };
        doc["poolName"] = Value::String(pool.clone());
        if let (true, Some(caller)) = (cluster == "*", caller) {
            return self.place(&parts, &caller, doc, &pool).await;
        }
        match self.attempt(&parts.headers, &cluster, &doc, None).await {
            Ok(a) => a.into_response(),
            Err(e) => gateway_error(&e),
        }
    }

    /// One claim on `cluster` (local or remote) with the body `doc`; a success names the sandbox
    /// with its global id.
    async fn attempt(
        &self,
        headers: &HeaderMap,
        cluster: &str,
        doc: &Value,
        auth: Option<&crate::auth::AuthInfo>,
    ) -> Result<Answer, GatewayError> {
        let body = Bytes::from(serde_json::to_vec(doc).unwrap_or_default());
        if self.catalog().is_local(cluster) {
            let mut a = self.local_json(Method::POST, "/v1/sandboxes", headers, body, auth).await;
            if a.status.is_success() {
                globalize_ids(&mut a.doc, cluster);
            }
            return Ok(a);
        }
        // The remote answers once the sandbox runs: wait at least the startup the caller allows.
        let startup = doc
            .get("startupTimeout")
            .and_then(|v| serde_json::from_value::<agentbox_core::duration::WireDuration>(v.clone()).ok())
            .map(|d| d.as_duration());
        let within = crate::gateway::create_wait(self.st.gateway.timeouts().response, startup);
        let out =
            Outbound { method: Method::POST, path_and_query: "/v1/sandboxes".into(), headers: headers.clone(), body };
        let (status, headers, doc) = self.st.gateway.send_json_within(cluster, Plane::Native, out, within).await?;
        let mut a = Answer { status, headers, doc };
        self.globalize_remote(&mut a.doc, cluster);
        Ok(a)
    }

    /// `*::pool`: try the clusters in order of idle slots (most first; ties: this cluster, then by
    /// id). Every attempt but the last says `wait: false`, so a drained cluster answers 409 at once
    /// and the next one is tried; the last keeps the caller's `wait`. Unreachable clusters are
    /// skipped; when all clusters answered 409 (or 404), the last such answer is returned.
    async fn place(
        self: &Arc<Self>,
        parts: &Parts,
        caller: &crate::auth::AuthInfo,
        doc: Value,
        pool: &str,
    ) -> Response {
        self.interest.lock().insert(pool.to_owned(), Instant::now());
        self.ensure_refresher();
        let ns = caller.namespace.as_str();
        let (ranked, skipped) = self.rank(parts, caller, pool).await;
        if ranked.is_empty() {
            let all_absent = skipped.iter().all(|(_, s)| *s == Stock::Absent);
            let reasons: Vec<String> = skipped
                .iter()
                .map(|(c, s)| match s {
                    Stock::Failed(why) => format!("{c}: {why}"),
                    _ => format!("{c}: no pool {pool:?}"),
                })
                .collect();
            let (status, code) = if all_absent {
                (StatusCode::NOT_FOUND, "POOL_NOT_FOUND")
            } else {
                (StatusCode::BAD_GATEWAY, "CLUSTER_UNREACHABLE")
            };
            return error_response(
                status,
                format!("no cluster can take a claim on pool {pool:?} ({}); see GET /v1/clusters", reasons.join("; ")),
                code,
            );
        }
        let mut last: Option<Answer> = None;
        let mut failures = vec![];
        let n = ranked.len();
        for (i, (cluster, idle)) in ranked.into_iter().enumerate() {
            let mut d = doc.clone();
            if i + 1 < n {
                d["wait"] = Value::Bool(false);
            }
            match self.attempt(&parts.headers, &cluster, &d, Some(caller)).await {
                Ok(a) if a.status == StatusCode::CONFLICT || a.status == StatusCode::NOT_FOUND => {
                    tracing::info!(cluster = %cluster, pool, status = a.status.as_u16(), cached_idle = idle,
                        "placement: cluster could not take the claim, trying the next");
                    let stock = if a.status == StatusCode::CONFLICT { Stock::Idle(0) } else { Stock::Absent };
                    self.set_stock(ns, &cluster, pool, stock);
                    // A 409 says more than a 404 (the pool exists, it is drained).
                    if last
                        .as_ref()
                        .is_none_or(|l| l.status != StatusCode::CONFLICT || a.status == StatusCode::CONFLICT)
                    {
                        last = Some(a);
                    }
                }
                Ok(a) => {
                    if a.status.is_success() {
                        self.took_one(ns, &cluster, pool);
                        tracing::info!(cluster = %cluster, pool, "placement: claimed");
                    }
                    return a.into_response();
                }
                Err(e) => {
                    tracing::warn!(cluster = %cluster, pool, error = %e, "placement: skipping an unreachable cluster");
                    self.set_stock(ns, &cluster, pool, Stock::Failed(e.to_string()));
                    failures.push(e);
                }
            }
        }
        match last {
            Some(a) => a.into_response(),
            None => match failures.pop() {
                Some(e) => gateway_error(&e),
                None => StatusCode::BAD_GATEWAY.into_response(),
            },
        }
    }

    /// Candidate clusters for `*::pool`, best first, and the ones left out with why.
    async fn rank(
        &self,
        parts: &Parts,
        caller: &crate::auth::AuthInfo,
        pool: &str,
    ) -> (Vec<(String, u32)>, Vec<(String, Stock)>) {
        let ns = caller.namespace.as_str();
        let local_id = self.catalog().local_id().to_owned();
        let mut all: Vec<(String, Stock)> = vec![(local_id.clone(), self.local_stock(caller, pool))];
        let remotes: Vec<String> =
            self.catalog().remotes().into_iter().filter(|c| c.native_url.is_some()).map(|c| c.id).collect();
        let lookups = remotes.iter().map(|c| async move {
            let cached = self.stock.lock().get(&(ns.to_owned(), c.clone(), pool.to_owned())).cloned();
            match cached {
                Some((s, at)) if at.elapsed() < STOCK_FRESH => s,
                _ => {
                    let (s, cacheable) = self.fetch_stock(c, pool, &parts.headers).await;
                    if cacheable {
                        self.set_stock(ns, c, pool, s.0.clone());
                    }
                    s.0
                }
            }
        });
        let stocks = join_all(lookups).await;
        all.extend(remotes.into_iter().zip(stocks));
        let mut ranked = vec![];
        let mut skipped = vec![];
        for (c, s) in all {
            match s {
                Stock::Idle(n) => ranked.push((c, n)),
                other => {
                    if let Stock::Failed(why) = &other {
                        tracing::warn!(cluster = %c, pool, reason = %why, "placement: cluster left out");
                    }
                    skipped.push((c, other));
                }
            }
        }
        sort_candidates(&mut ranked, &local_id);
        (ranked, skipped)
    }

    /// This cluster's stock of `pool` as the caller sees it, read from the engine. Any other
    /// refusal (credentials, an ambiguous name) ranks it last with 0, so that the claim itself
    /// gives the caller the local handler's precise error if nothing else takes it.
    fn local_stock(&self, caller: &crate::auth::AuthInfo, pool: &str) -> Stock {
        match self.st.engine.get_pool(caller, pool) {
            Ok(p) => Stock::Idle(p.status.counts.idle),
            Err(e) if e.kind == agentbox_core::error::ErrorKind::NotFound => Stock::Absent,
            Err(_) => Stock::Idle(0),
        }
    }

    /// Read a remote pool's idle slots (bounded by [`STOCK_TIMEOUT`]). The flag says whether the
    /// result holds for every caller (so it may be cached): an auth refusal does not.
    async fn fetch_stock(&self, cluster: &str, pool: &str, headers: &HeaderMap) -> ((Stock, Option<String>), bool) {
        let path = format!("/v1/sandboxpools/{}", encode_segment(pool));
        let call = self.remote_json(cluster, Method::GET, path, headers, Bytes::new());
        match tokio::time::timeout(STOCK_TIMEOUT, call).await {
            Err(_) => ((Stock::Failed(format!("no pool status within {STOCK_TIMEOUT:?}")), None), true),
            Ok(Err(e)) => ((Stock::Failed(e.to_string()), None), true),
            Ok(Ok(a)) if a.status == StatusCode::OK => {
                let ns = a.doc.pointer("/pool/namespace").and_then(Value::as_str).map(str::to_owned);
                match a.doc.pointer("/pool/status/idle").and_then(Value::as_u64) {
                    Some(n) => ((Stock::Idle(u32::try_from(n).unwrap_or(u32::MAX)), ns), true),
                    None => ((Stock::Failed("its pool status has no idle count".into()), ns), true),
                }
            }
            Ok(Ok(a)) if a.status == StatusCode::NOT_FOUND => ((Stock::Absent, None), true),
            Ok(Ok(a)) => {
                let msg = a.doc.get("error").and_then(Value::as_str).unwrap_or("").to_owned();
                ((Stock::Failed(format!("pool status answered {}: {msg}", a.status.as_u16())), None), false)
            }
        }
    }

    fn set_stock(&self, ns: &str, cluster: &str, pool: &str, s: Stock) {
        if self.catalog().is_local(cluster) {
            return;
        }
        self.stock.lock().insert((ns.to_owned(), cluster.to_owned(), pool.to_owned()), (s, Instant::now()));
    }

    /// A claim succeeded on `cluster`: one idle slot fewer until the next refresh says otherwise.
    fn took_one(&self, ns: &str, cluster: &str, pool: &str) {
        let key = (ns.to_owned(), cluster.to_owned(), pool.to_owned());
        if let Some((Stock::Idle(n), _)) = self.stock.lock().get_mut(&key) {
            *n = n.saturating_sub(1);
        }
    }

    /// Start the background stock refresh (once): every [`STOCK_REFRESH_EVERY`], the pools placed
    /// recently are read on every remote cluster with the catalog's headers only (the gateway's own
    /// access). Failures and refusals are kept out of the cache, so a placement then asks with the
    /// caller's credentials.
    fn ensure_refresher(self: &Arc<Self>) {
        if self.refresher.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(STOCK_REFRESH_EVERY).await;
                let Some(me) = weak.upgrade() else { return };
                let pools: Vec<String> = {
                    let mut interest = me.interest.lock();
                    interest.retain(|_, at| at.elapsed() < STOCK_INTEREST);
                    interest.keys().cloned().collect()
                };
                let clusters: Vec<String> =
                    me.catalog().remotes().into_iter().filter(|c| c.native_url.is_some()).map(|c| c.id).collect();
                let none = HeaderMap::new();
                let jobs = clusters.iter().flat_map(|c| pools.iter().map(move |p| (c, p))).map(|(c, p)| {
                    let me = &me;
                    let none = &none;
                    async move {
                        // Only positive readings are kept, under the namespace the pool was found in
                        // (the gateway's own identity may see other pools than a tenant).
                        match me.fetch_stock(c, p, none).await.0 {
                            (Stock::Idle(n), Some(ns)) => me.set_stock(&ns, c, p, Stock::Idle(n)),
                            (Stock::Failed(why), _) => {
                                tracing::debug!(cluster = %c, pool = %p, reason = %why, "stock refresh failed");
                            }
                            _ => {}
                        }
                    }
                });
                join_all(jobs).await;
            }
        });
    }

    // ------------------------------------------------------------------ lists

    async fn list(&self, req: Request, cluster: &str, sandboxes: bool) -> Response {
        let path = req.uri().path().to_owned();
        let query = strip_params(req.uri().query(), &["cluster"]);
        let headers = req.headers().clone();
        let caller = if self.catalog().is_local(cluster) {
            None
        } else {
            match self.caller(req.method(), &headers) {
                Ok(a) => Some(a),
                Err(refused) => return refused,
            }
        };
        if cluster == "*" {
            return if sandboxes {
                self.aggregate_sandboxes(&path, query.as_deref(), &headers, caller.as_ref()).await
            } else {
                self.aggregate_pools(&path, query.as_deref(), &headers, caller.as_ref()).await
            };
        }
        let pq = with_query(&path, query.as_deref());
        let mut a = if self.catalog().is_local(cluster) {
            self.local_json(Method::GET, &pq, &headers, Bytes::new(), None).await
        } else {
            match self.remote_json(cluster, Method::GET, pq, &headers, Bytes::new()).await {
                Ok(a) => a,
                Err(e) => return gateway_error(&e),
            }
        };
        if a.status.is_success() {
            self.list_items_global(&mut a.doc, cluster, sandboxes);
        }
        a.into_response()
    }

    /// Global ids (sandboxes) or qualified names (pools) in a list answer from `cluster`.
    fn list_items_global(&self, doc: &mut Value, cluster: &str, sandboxes: bool) {
        if !sandboxes {
            qualify_pool_names(doc, cluster);
        } else if self.catalog().is_local(cluster) {
            globalize_ids(doc, cluster);
        } else {
            self.globalize_remote(doc, cluster);
        }
    }

    /// One page of a list from `cluster` (`Err` for a cluster that could not be listed).
    async fn list_page(
        &self,
        cluster: &str,
        path_and_query: String,
        headers: &HeaderMap,
        sandboxes: bool,
        auth: Option<&crate::auth::AuthInfo>,
    ) -> Result<Value, ClusterListError> {
        let a = if self.catalog().is_local(cluster) {
            self.local_json(Method::GET, &path_and_query, headers, Bytes::new(), auth).await
        } else {
            self.remote_json(cluster, Method::GET, path_and_query, headers, Bytes::new()).await.map_err(|e| {
                ClusterListError {
                    cluster: cluster.to_owned(),
                    status: Some(e.status().as_u16()),
                    error: e.to_string(),
                }
            })?
        };
        if a.status != StatusCode::OK {
            let error =
                a.doc.get("error").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| a.doc.to_string());
            return Err(ClusterListError { cluster: cluster.to_owned(), status: Some(a.status.as_u16()), error });
        }
        let mut doc = a.doc;
        self.list_items_global(&mut doc, cluster, sandboxes);
        Ok(doc)
    }

    /// `GET /v1/sandboxes?cluster=*`: every cluster's sandboxes with the same filters, merged newest
    /// first (by `claimedAt`, then id), then `offset`/`limit` applied to the merged list. Each
    /// cluster is read in pages of up to 100 until it gave `offset + limit` items (at most
    /// [`AGGREGATE_MAX`]), so the merged page is exact. `total` is the sum of the clusters' totals.
    /// A remote cluster that cannot be listed is named in `clusterErrors` (the answer is partial);
    /// a local refusal (credentials, filters) is the answer.
    async fn aggregate_sandboxes(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        auth: Option<&crate::auth::AuthInfo>,
    ) -> Response {
        let pairs = serde_urlencoded_pairs(query.unwrap_or(""));
        let num = |name: &str, default: u32| -> Result<u32, Response> {
            match pairs.iter().find(|(k, _)| k == name) {
                None => Ok(default),
                Some((_, v)) => v.parse().map_err(|_| {
                    error_response(
                        StatusCode::BAD_REQUEST,
                        format!("invalid query: {name} must be a number"),
                        "BAD_QUERY",
                    )
                }),
            }
        };
        let (limit, offset) = match (num("limit", 20), num("offset", 0)) {
            (Ok(l), Ok(o)) => (l, o),
            (Err(r), _) | (_, Err(r)) => return r,
        };
        if limit == 0 || limit > 100 {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("limit {limit} is out of range: use 1..=100 and page with offset"),
                "BAD_QUERY",
            );
        }
        let need = offset.saturating_add(limit);
        if need > AGGREGATE_MAX {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "cluster=* merges at most the first {AGGREGATE_MAX} sandboxes (offset + limit): narrow the filters or list one cluster with cluster=ID"
                ),
                "BAD_QUERY",
            );
        }
        let base = strip_params(query, &["limit", "offset"]);
        let local_id = self.catalog().local_id().to_owned();
        let mut clusters = vec![local_id.clone()];
        clusters.extend(self.catalog().remotes().into_iter().filter(|c| c.native_url.is_some()).map(|c| c.id));
        let fetch = |cluster: String| {
            let base = base.clone();
            async move {
                let mut items: Vec<Value> = vec![];
                let mut total;
                let page = need.min(100);
                let mut at = 0u32;
                loop {
                    let q = match &base {
                        Some(b) => format!("{b}&limit={page}&offset={at}"),
                        None => format!("limit={page}&offset={at}"),
                    };
                    let doc = self.list_page(&cluster, format!("{path}?{q}"), headers, true, auth).await?;
                    total = doc.get("total").and_then(Value::as_u64).unwrap_or(0);
                    let got = doc.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                    let n = got.len() as u32;
                    items.extend(got);
                    at += n;
                    if n < page || items.len() as u32 >= need || u64::from(at) >= total {
                        break;
                    }
                }
                Ok::<_, ClusterListError>((items, total))
            }
        };
        let results = join_all(clusters.into_iter().map(fetch)).await;
        let mut items = vec![];
        let mut total = 0u64;
        let mut errors = vec![];
        for r in results {
            match r {
                Ok((i, t)) => {
                    items.extend(i);
                    total += t;
                }
                Err(e) if e.cluster == local_id => {
                    let status = e.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::BAD_GATEWAY);
                    return error_response(status, e.error, "LOCAL_LIST_FAILED");
                }
                Err(e) => {
                    tracing::warn!(cluster = %e.cluster, error = %e.error, "cluster=* listing: cluster left out");
                    errors.push(e);
                }
            }
        }
        let key = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
        items.sort_by(|a, b| {
            key(b, "claimedAt").cmp(&key(a, "claimedAt")).then(key(a, "sandboxId").cmp(&key(b, "sandboxId")))
        });
        let page: Vec<Value> = items.into_iter().skip(offset as usize).take(limit as usize).collect();
        let mut doc = json!({"items": page, "total": total, "limit": limit, "offset": offset});
        if !errors.is_empty() {
            doc["clusterErrors"] = serde_json::to_value(&errors).unwrap_or_default();
        }
        (StatusCode::OK, axum::Json(doc)).into_response()
    }

    /// `GET /v1/sandboxpools?cluster=*`: every cluster's pools, names qualified, sorted by name.
    async fn aggregate_pools(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        auth: Option<&crate::auth::AuthInfo>,
    ) -> Response {
        let local_id = self.catalog().local_id().to_owned();
        let mut clusters = vec![local_id.clone()];
        clusters.extend(self.catalog().remotes().into_iter().filter(|c| c.native_url.is_some()).map(|c| c.id));
        let pq = with_query(path, query);
        let results = join_all(clusters.iter().map(|c| self.list_page(c, pq.clone(), headers, false, auth))).await;
        let mut items = vec![];
        let mut errors = vec![];
        for r in results {
            match r {
                Ok(doc) => items.extend(doc.get("items").and_then(Value::as_array).cloned().unwrap_or_default()),
                Err(e) if e.cluster == local_id => {
                    let status = e.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::BAD_GATEWAY);
                    return error_response(status, e.error, "LOCAL_LIST_FAILED");
                }
                Err(e) => {
                    tracing::warn!(cluster = %e.cluster, error = %e.error, "cluster=* listing: cluster left out");
                    errors.push(e);
                }
            }
        }
        let name = |v: &Value| v.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
        items.sort_by_key(name);
        let mut doc = json!({"total": items.len(), "items": items, "limit": 0, "offset": 0});
        if !errors.is_empty() {
            doc["clusterErrors"] = serde_json::to_value(&errors).unwrap_or_default();
        }
        (StatusCode::OK, axum::Json(doc)).into_response()
    }
}

/// Declare in the OpenAPI document what the routing layer can answer on the operations it routes:
/// 400 for an unknown cluster, 502 unreachable, 504 no answer in time, 508 a forwarding loop.
pub(super) fn document(doc: &mut Value) {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let sandbox_scoped = path.starts_with("/v1/sandboxes/{id}");
        let routed = sandbox_scoped || path == "/v1/sandboxes" || path == "/v1/sandboxpools";
        if !routed {
            continue;
        }
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            if path == "/v1/sandboxpools" && method != "get" {
                continue;
            }
            let Some(resp) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            resp.entry("400").or_insert_with(|| {
                err("a `cluster.uuid` id, `cluster::pool` or `cluster=` names a cluster this server does not know (detail.knownClusters)")
            });
            resp.entry("502")
                .or_insert_with(|| err("the owning cluster could not be reached (the message has the cause)"));
            resp.entry("504").or_insert_with(|| err("the owning cluster did not answer in time"));
            resp.entry("508").or_insert_with(|| err("the request was already forwarded once by another cluster"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_read_and_stripped_keeping_the_others_encoded() {
        let q = Some("status=Running%2CFailed&cluster=eu&limit=5");
        assert_eq!(query_param(q, "cluster").as_deref(), Some("eu"));
        assert_eq!(query_param(Some("cluster=%2A"), "cluster").as_deref(), Some("*"));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(strip_params(q, &["cluster"]).as_deref(), Some("status=Running%2CFailed&limit=5"));
        assert_eq!(strip_params(q, &["cluster", "limit", "status"]), None);
        assert_eq!(with_query("/p", None), "/p");
        assert_eq!(with_query("/p", Some("a=1")), "/p?a=1");
    }

    #[test]
    fn endpoints_of_remote_sandboxes_point_at_this_data_plane_with_the_global_id() {
        let mut doc = json!({"sandbox": {"sandboxId": "abc", "endpoints": {
            "web": {"url": "http://10.0.0.5:8092/sandboxes/abc/8000/x"},
            "raw": {"url": "http://10.1.2.3:8000"},
            "none": {"logDir": "/l"}}}});
        rewrite_endpoints(&mut doc, "eu", "http://gw:9000/");
        globalize_ids(&mut doc, "eu");
        assert_eq!(doc["sandbox"]["sandboxId"], "eu.abc");
        assert_eq!(doc["sandbox"]["endpoints"]["web"]["url"], "http://gw:9000/sandboxes/eu.abc/8000/x");
        assert_eq!(doc["sandbox"]["endpoints"]["raw"]["url"], "http://10.1.2.3:8000", "a direct IP URL is left alone");
    }

    #[test]
    fn placement_prefers_stock_then_the_local_cluster_then_ids() {
        let mut c: Vec<(String, u32)> = [("us", 1), ("eu", 1), ("home", 1), ("ap", 3), ("zz", 0)]
            .iter()
            .map(|(c, n)| (c.to_string(), *n))
            .collect();
        sort_candidates(&mut c, "home");
        let order: Vec<&str> = c.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(order, ["ap", "home", "eu", "us", "zz"]);
    }

    #[test]
    fn pool_names_are_qualified_once() {
        let mut doc = json!({"items": [{"name": "web"}, {"name": "eu::old"}]});
        qualify_pool_names(&mut doc, "eu");
        assert_eq!(doc["items"][0]["name"], "eu::web");
        assert_eq!(doc["items"][1]["name"], "eu::old");
    }

    #[test]
    fn upgrades_and_json_are_recognized() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(!is_upgrade(&h), "no Upgrade header");
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        h.insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "application/x-ndjson".parse().unwrap());
        assert!(!is_json(&h));
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn a_create_waits_for_the_startup_it_allows() {
        let d = Duration::from_secs(330);
        assert_eq!(crate::gateway::create_wait(d, None), d);
        assert_eq!(crate::gateway::create_wait(d, Some(Duration::from_secs(30))), d);
        assert_eq!(crate::gateway::create_wait(d, Some(Duration::from_secs(900))), Duration::from_secs(960));
    }

    #[test]
    fn gateway_errors_carry_a_code_and_the_known_clusters() {
        let e = GatewayError::UnknownCluster { cluster: "mars".into(), known: vec!["eu".into(), "home".into()] };
        let r = gateway_error(&e);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let e = GatewayError::Unreachable { cluster: "eu".into(), cause: "connection refused".into() };
        assert_eq!(gateway_error(&e).status(), StatusCode::BAD_GATEWAY);
    }
}
