//! The multi-cluster gateway (SPEC §2 "Cluster", issue #7): one endpoint in front of several
//! agentbox clusters.
//!
//! - [`catalog`]: the clusters this server knows (`--clusters-config`, reloaded on change).
//! - [`Gateway::forward`]: send a request to another cluster's native, E2B or data plane, with the
//!   caller's credentials, the catalog's headers and `X-Source-Cluster`, bounded by timeouts.
//! - Global ids: a sandbox created on cluster `eu` through a gateway is `eu.{uuid}`
//!   ([`split_sandbox_id`]); every cluster also accepts its own prefix on its own ids.
//!
//! A request that already carries `X-Source-Cluster` was forwarded by another gateway and is never
//! forwarded again (no loops between two misconfigured catalogs).

pub mod catalog;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

pub use catalog::{Catalog, ClusterEntry, ClusterSummary, Plane};

/// The header a gateway adds to every forwarded request: the id of the cluster that forwarded it.
pub const SOURCE_CLUSTER_HEADER: &str = "x-source-cluster";

/// Request headers copied to the target cluster (credentials, content negotiation, tracing,
/// client version). Everything else (hop-by-hop headers, `Host`, cookies) stays behind.
const FORWARDED_HEADERS: &[&str] = &[
    "authorization",
    "agentbox-api-key",
    "x-api-key",
    "content-type",
    "accept",
    "x-request-id",
    "x-agentbox-client-version",
    crate::authn::IMPERSONATE_TEAM,
    crate::authn::IMPERSONATE_USER,
];

/// Response headers not copied back (hop-by-hop, or recomputed by our own server).
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
];

/// Split a cross-cluster sandbox id `cluster.uuid` into `(cluster, uuid)`. Plain ids (no `.`)
/// give `None`.
pub fn split_sandbox_id(id: &str) -> Option<(&str, &str)> {
    let (cluster, rest) = id.split_once('.')?;
    (catalog::valid_cluster_id(cluster) && valid_local_id(rest)).then_some((cluster, rest))
}

/// Could `id` be a sandbox id of one cluster (a UUID, or any 1-64 letters, digits, `-`, `_`)? What
/// a gateway puts into a forwarded path must be no more than that: no `.`, `/` or `%`, so a path
/// can never climb out of `/v1/sandboxes/{id}` on the remote.
pub fn valid_local_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Is `path_and_query` safe to append to a cluster's base URL? Dot segments (also percent-encoded)
/// and backslashes are refused: URL normalisation would turn `/v1/sandboxes/x/../../admin` into
/// another route on the remote.
pub fn safe_forward_path(path_and_query: &str) -> bool {
    let path = path_and_query.split_once('?').map_or(path_and_query, |(p, _)| p);
    path.starts_with('/')
        && !path.contains('\\')
        && !path.to_ascii_lowercase().contains("%2e")
        && !path.to_ascii_lowercase().contains("%2f")
        && !path.to_ascii_lowercase().contains("%5c")
        && path.split('/').all(|seg| seg != "." && seg != "..")
}

/// `cluster.uuid`.
pub fn global_sandbox_id(cluster: &str, id: &str) -> String {
    if split_sandbox_id(id).is_some() { id.to_owned() } else { format!("{cluster}.{id}") }
}

/// Split `cluster::pool` into `(Some(cluster), pool)`; a plain pool name gives `(None, pool)`.
/// `*::pool` gives `(Some("*"), pool)` (placement by stock, see the native create).
pub fn split_pool_name(name: &str) -> (Option<&str>, &str) {
    match name.split_once("::") {
        Some((c, p)) => (Some(c), p),
        None => (None, name),
    }
}

/// Rewrite every `sandboxId` / `sandboxID` string field of a JSON document (at any depth) that is
/// a plain id into `cluster.id`, so callers of a gateway only ever see global ids.
pub fn globalize_ids(doc: &mut serde_json::Value, cluster: &str) {
    match doc {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                // User-supplied maps may hold keys of the same name: leave them alone.
                if matches!(k.as_str(), "metadata" | "labels" | "annotations" | "envVars" | "env") {
                    continue;
                }
                if matches!(k.as_str(), "sandboxId" | "sandboxID")
                    && let serde_json::Value::String(s) = v
                    && split_sandbox_id(s).is_none()
                    && !s.is_empty()
                {
                    *s = global_sandbox_id(cluster, s);
                } else {
                    globalize_ids(v, cluster);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| globalize_ids(v, cluster)),
        _ => {}
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("unknown target cluster {cluster:?}: known clusters are {known:?} (see GET /v1/clusters)")]
    UnknownCluster { cluster: String, known: Vec<String> },
    #[error("cluster {cluster:?} has no {field} in the clusters config, so this request cannot be forwarded there")]
    NotConfigured { cluster: String, field: &'static str },
    #[error(
        "this request was already forwarded by cluster {source_cluster:?} and targets cluster {cluster:?}, \
         which this cluster does not own: check the clusters configs (requests are forwarded once at most)"
    )]
    Loop { source_cluster: String, cluster: String },
    #[error("forward request to cluster {cluster:?}: {cause}")]
    Unreachable { cluster: String, cause: String },
    #[error("the path {path:?} cannot be forwarded: dot segments and encoded separators are not allowed")]
    BadPath { path: String },
    #[error("forward request to cluster {cluster:?}: the answer is larger than {limit} bytes")]
    TooLarge { cluster: String, limit: usize },
    #[error("forward request to cluster {cluster:?}: no answer within {after:?}")]
    Timeout { cluster: String, after: Duration },
}

impl GatewayError {
    /// 400 for a cluster the caller named wrongly, 508 for a forwarding loop, 502 when the cluster
    /// cannot be reached, 504 when it does not answer in time.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::UnknownCluster { .. } | GatewayError::BadPath { .. } => StatusCode::BAD_REQUEST,
            GatewayError::NotConfigured { .. } | GatewayError::Unreachable { .. } | GatewayError::TooLarge { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::Loop { .. } => StatusCode::LOOP_DETECTED,
            GatewayError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// Timeouts of forwarded requests.
#[derive(Debug, Clone, Copy)]
pub struct GatewayTimeouts {
    /// Establishing the TCP (and TLS) connection.
    pub connect: Duration,
    /// From sending the request to the response's status line and headers. One-shot exec waits for
    /// the command (up to 300 s), so the default is above that. Bodies then stream without a bound
    /// (log follows, exec streams); the caller closing its connection ends them.
    pub response: Duration,
}

impl Default for GatewayTimeouts {
    fn default() -> Self {
        GatewayTimeouts { connect: Duration::from_secs(5), response: Duration::from_secs(330) }
    }
}

/// A request to forward.
pub struct Outbound {
    pub method: Method,
    /// Path and query on the target plane, e.g. `/v1/sandboxes/0192…?x=1`.
    pub path_and_query: String,
    /// The incoming request's headers; only [`FORWARDED_HEADERS`] are copied.
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Told of every forwarded request: `(cluster, plane, status, time to the response headers)`; the
/// status is the gateway's own (502, 504) when the remote gave none.
pub type ForwardObserver = Arc<dyn Fn(&str, Plane, u16, Duration) + Send + Sync>;

/// The forwarding client of a server.
pub struct Gateway {
    catalog: Arc<Catalog>,
    client: reqwest::Client,
    timeouts: GatewayTimeouts,
    observer: std::sync::OnceLock<ForwardObserver>,
}

impl Gateway {
    pub fn new(catalog: Arc<Catalog>, timeouts: GatewayTimeouts) -> Gateway {
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            // A forwarded request must not follow the remote's redirects on the caller's behalf.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the gateway HTTP client builds (static settings)");
        Gateway { catalog, client, timeouts, observer: std::sync::OnceLock::new() }
    }

    /// A gateway that knows only the local cluster.
    pub fn local_only(local: &str) -> Gateway {
        Gateway::new(Arc::new(Catalog::local_only(local)), GatewayTimeouts::default())
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Report forwarded requests to `f` (metrics); the first observer set stays.
    pub fn observe(&self, f: ForwardObserver) {
        let _ = self.observer.set(f);
    }

    /// Report one forwarded request to the observer (the data plane calls this for its own
    /// forwards; [`Gateway::send`] does it for the APIs).
    pub fn record(&self, cluster: &str, plane: Plane, status: u16, elapsed: Duration) {
        if let Some(f) = self.observer.get() {
            f(cluster, plane, status, elapsed);
        }
    }

    pub fn timeouts(&self) -> GatewayTimeouts {
        self.timeouts
    }

    /// The remote cluster `cluster`, or the error the caller should get: unknown (400) or a loop.
    pub fn target(&self, cluster: &str, incoming: &HeaderMap) -> Result<ClusterEntry, GatewayError> {
        let Some(entry) = self.catalog.remote(cluster) else {
            return Err(GatewayError::UnknownCluster { cluster: cluster.to_owned(), known: self.catalog.known_ids() });
        };
        if let Some(src) = incoming.get(SOURCE_CLUSTER_HEADER) {
            return Err(GatewayError::Loop {
                source_cluster: String::from_utf8_lossy(src.as_bytes()).into_owned(),
                cluster: cluster.to_owned(),
            });
        }
        Ok(entry)
    }

    /// The base URL of `plane` on `cluster`, checked like [`Gateway::target`].
    pub fn base_url(&self, cluster: &str, plane: Plane, incoming: &HeaderMap) -> Result<String, GatewayError> {
        let entry = self.target(cluster, incoming)?;
        entry
            .url(plane)
            .map(str::to_owned)
            .ok_or(GatewayError::NotConfigured { cluster: cluster.to_owned(), field: plane.field() })
    }

    /// The headers to send to `entry`: the forwarded subset of `incoming`, then the catalog's
    /// headers (which win), then `X-Source-Cluster`.
    pub fn outbound_headers(&self, entry: &ClusterEntry, incoming: &HeaderMap) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in FORWARDED_HEADERS {
            for v in incoming.get_all(*name) {
                h.append(HeaderName::from_static(name), v.clone());
            }
        }
        for (k, v) in &entry.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                h.insert(k, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(self.catalog.local_id()) {
            h.insert(SOURCE_CLUSTER_HEADER, v);
        }
        h
    }

    /// Send `req` to `plane` of `cluster` and return the response once its headers arrived (the
    /// body streams).
    pub async fn send(&self, cluster: &str, plane: Plane, req: Outbound) -> Result<reqwest::Response, GatewayError> {
        self.send_within(cluster, plane, req, self.timeouts.response).await
    }

    /// [`Gateway::send`] with its own bound on the wait for the response headers (a create that
    /// allows a long startup waits for it).
    pub async fn send_within(
        &self,
        cluster: &str,
        plane: Plane,
        req: Outbound,
        response_timeout: Duration,
    ) -> Result<reqwest::Response, GatewayError> {
        self.dispatch(cluster, plane, req, response_timeout, false).await
    }

    /// The one place a request leaves for another cluster: target and path checked, headers built
    /// (plus the handshake headers for an upgrade), the wait for the response headers bounded, the
    /// outcome reported to the observer.
    async fn dispatch(
        &self,
        cluster: &str,
        plane: Plane,
        req: Outbound,
        response_timeout: Duration,
        upgrade: bool,
    ) -> Result<reqwest::Response, GatewayError> {
        let entry = self.target(cluster, &req.headers)?;
        if !safe_forward_path(&req.path_and_query) {
            return Err(GatewayError::BadPath { path: req.path_and_query });
        }
        let base = entry
            .url(plane)
            .ok_or(GatewayError::NotConfigured { cluster: cluster.to_owned(), field: plane.field() })?;
        let url = format!("{base}{}", req.path_and_query);
        let mut headers = self.outbound_headers(&entry, &req.headers);
        if upgrade {
            for name in UPGRADE_HEADERS {
                for v in req.headers.get_all(*name) {
                    headers.append(HeaderName::from_static(name), v.clone());
                }
            }
        }
        let send = self.client.request(req.method, &url).headers(headers).body(req.body).send();
        let started = std::time::Instant::now();
        let out = match tokio::time::timeout(response_timeout, send).await {
            Err(_) => Err(GatewayError::Timeout { cluster: cluster.to_owned(), after: response_timeout }),
            Ok(Err(e)) => Err(GatewayError::Unreachable { cluster: cluster.to_owned(), cause: reqwest_cause(e) }),
            Ok(Ok(r)) => Ok(r),
        };
        let status = out.as_ref().map_or_else(|e| e.status().as_u16(), |r| r.status().as_u16());
        self.record(cluster, plane, status, started.elapsed());
        out
    }

    /// Send `req` and buffer the JSON answer: `(status, document)`. A non-JSON body becomes a
    /// string value. Used where the gateway must read or rewrite the answer (creates, lists).
    pub async fn send_json(
        &self,
        cluster: &str,
        plane: Plane,
        req: Outbound,
    ) -> Result<(StatusCode, HeaderMap, serde_json::Value), GatewayError> {
        self.send_json_within(cluster, plane, req, self.timeouts.response).await
    }

    /// [`Gateway::send_json`] with its own bound on the wait for the response headers.
    pub async fn send_json_within(
        &self,
        cluster: &str,
        plane: Plane,
        req: Outbound,
        response_timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, serde_json::Value), GatewayError> {
        let resp = self.send_within(cluster, plane, req, response_timeout).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = self.read_answer(cluster, resp).await?;
        let doc = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, headers, doc))
    }
}

impl Gateway {
    /// Send an HTTP/1.1 upgrade request (a WebSocket handshake) to `plane` of `cluster`: like
    /// [`Gateway::send`], plus the handshake headers ([`UPGRADE_HEADERS`]). When the answer is
    /// `101 Switching Protocols`, `reqwest::Response::upgrade` gives the remote end of the tunnel.
    pub async fn send_upgrade(
        &self,
        cluster: &str,
        plane: Plane,
        req: Outbound,
    ) -> Result<reqwest::Response, GatewayError> {
        self.dispatch(cluster, plane, req, self.timeouts.response, true).await
    }
}

/// Request headers of an HTTP/1.1 upgrade handshake, forwarded by [`Gateway::send_upgrade`] only.
pub const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// A cluster that a `cluster=*` listing could not include (the answer holds the others).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterListError {
    pub cluster: String,
    /// The cluster's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub error: String,
}

/// The most a gateway buffers of one answer it must read or rewrite (JSON answers of the APIs).
pub const MAX_BUFFERED_ANSWER: usize = 16 << 20;

impl Gateway {
    /// Read a forwarded answer's body to rewrite it: bounded in time ([`GatewayTimeouts::response`])
    /// and size ([`MAX_BUFFERED_ANSWER`]).
    pub async fn read_answer(&self, cluster: &str, mut resp: reqwest::Response) -> Result<Bytes, GatewayError> {
        let after = self.timeouts.response;
        let read = async {
            let mut buf = bytes::BytesMut::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| GatewayError::Unreachable { cluster: cluster.to_owned(), cause: reqwest_cause(e) })?
            {
                if buf.len() + chunk.len() > MAX_BUFFERED_ANSWER {
                    return Err(GatewayError::TooLarge { cluster: cluster.to_owned(), limit: MAX_BUFFERED_ANSWER });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf.freeze())
        };
        tokio::time::timeout(after, read)
            .await
            .map_err(|_| GatewayError::Timeout { cluster: cluster.to_owned(), after })?
    }
}

/// A local answer to a request that named the sandbox by its global id: JSON bodies get global
/// ids; streams (NDJSON, upgrades) pass as they are.
pub async fn globalize_local_answer(resp: Response, cluster: &str) -> Response {
    if !resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BUFFERED_ANSWER).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut doc) => {
            globalize_ids(&mut doc, cluster);
            json_response(parts.status, &parts.headers, &doc)
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

/// How long a forwarded create may take to answer: the usual bound, or the caller's startup timeout
/// plus a minute when that is longer.
pub fn create_wait(default: Duration, startup: Option<Duration>) -> Duration {
    startup.map_or(default, |s| default.max(s.saturating_add(Duration::from_secs(60))))
}

/// The cause of a failed forward, without the URL reqwest puts into its message (catalog URLs never
/// leave the server, and a terminal URL carries its exec token).
pub fn reqwest_cause(e: reqwest::Error) -> String {
    error_chain(&e.without_url())
}

/// The whole cause chain of an error, `outer: inner: …` (reqwest's top-level message alone says
/// little, e.g. "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

/// A forwarded response as an axum response: status and end-to-end headers copied, body streamed.
pub fn stream_response(resp: reqwest::Response) -> Response {
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        for (k, v) in resp.headers() {
            if !DROPPED_RESPONSE_HEADERS.contains(&k.as_str()) {
                h.append(k.clone(), v.clone());
            }
        }
    }
    out.body(Body::from_stream(resp.bytes_stream())).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// A buffered JSON answer as an axum response, with the remote's end-to-end headers (minus the
/// ones the new body invalidates).
pub fn json_response(status: StatusCode, headers: &HeaderMap, doc: &serde_json::Value) -> Response {
    let mut out = (status, axum::Json(doc)).into_response();
    for (k, v) in headers {
        if !DROPPED_RESPONSE_HEADERS.contains(&k.as_str()) && k != axum::http::header::CONTENT_TYPE {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_pool_names_split() {
        assert_eq!(split_sandbox_id("eu.0192-ab"), Some(("eu", "0192-ab")));
        assert_eq!(split_sandbox_id("0192-ab"), None);
        assert_eq!(split_sandbox_id(".x"), None);
        assert_eq!(split_sandbox_id("eu."), None);
        assert_eq!(split_sandbox_id("eu..."), None, "only id characters after the cluster");
        assert_eq!(split_sandbox_id("eu.a%2e"), None);
        assert_eq!(split_sandbox_id("EU.abc"), None, "cluster ids are lowercase");
        assert!(safe_forward_path("/v1/sandboxes/abc/exec?x=../.."));
        for bad in [
            "/v1/sandboxes/x/../../admin",
            "/v1/sandboxes/x/%2e%2E/admin",
            "/v1/sandboxes/x/./y",
            "/a\\..\\b",
            "/v1/sandboxes/x%2f..%2fadmin",
            "v1",
        ] {
            assert!(!safe_forward_path(bad), "{bad}");
        }
        assert_eq!(global_sandbox_id("eu", "abc"), "eu.abc");
        assert_eq!(global_sandbox_id("eu", "us.abc"), "us.abc", "already global");
        assert_eq!(split_pool_name("eu::web"), (Some("eu"), "web"));
        assert_eq!(split_pool_name("*::web"), (Some("*"), "web"));
        assert_eq!(split_pool_name("web"), (None, "web"));
    }

    #[test]
    fn ids_in_answers_become_global_at_any_depth() {
        let mut doc = serde_json::json!({
            "sandboxId": "a1", "items": [{"sandboxId": "b2", "x": {"sandboxID": "c3"}}, {"sandboxId": "us.d4"}],
            "other": "a1"
        });
        globalize_ids(&mut doc, "eu");
        assert_eq!(doc["sandboxId"], "eu.a1");
        assert_eq!(doc["items"][0]["sandboxId"], "eu.b2");
        assert_eq!(doc["items"][0]["x"]["sandboxID"], "eu.c3");
        assert_eq!(doc["items"][1]["sandboxId"], "us.d4");
        assert_eq!(doc["other"], "a1", "only id fields are rewritten");
    }

    fn gateway(yaml: &str) -> (tempfile::TempDir, Gateway) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, yaml).unwrap();
        let cat = Arc::new(Catalog::load(&p, "home").unwrap());
        (
            dir,
            Gateway::new(
                cat,
                GatewayTimeouts { connect: Duration::from_millis(500), response: Duration::from_millis(800) },
            ),
        )
    }

    #[test]
    fn outbound_headers_copy_credentials_add_catalog_headers_and_the_source() {
        let (_d, g) = gateway(
            "clusters:\n  - id: eu\n    nativeUrl: http://127.0.0.1:9\n    headers: {x-team-token: t1, accept: text/plain}\n",
        );
        let mut incoming = HeaderMap::new();
        incoming.insert("agentbox-api-key", HeaderValue::from_static("agbx_k"));
        incoming.insert("cookie", HeaderValue::from_static("c=1"));
        incoming.insert("accept", HeaderValue::from_static("application/json"));
        let entry = g.target("eu", &incoming).unwrap();
        let h = g.outbound_headers(&entry, &incoming);
        assert_eq!(h["agentbox-api-key"], "agbx_k");
        assert_eq!(h["x-team-token"], "t1");
        assert_eq!(h["accept"], "text/plain", "catalog headers win");
        assert_eq!(h[SOURCE_CLUSTER_HEADER], "home");
        assert!(h.get("cookie").is_none());
    }

    #[tokio::test]
    async fn unknown_loops_unreachable_and_slow_clusters_map_to_clear_errors() {
        // A listener that accepts but never answers, for the timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        // A port with nothing listening, for the refused connection.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let yaml = format!(
            "clusters:\n  - id: down\n    nativeUrl: http://{closed}\n  - id: slow\n    nativeUrl: http://{silent_addr}\n  - id: e2bonly\n    e2bUrl: http://{closed}\n"
        );
        let (_d, g) = gateway(&yaml);
        let req = || Outbound {
            method: Method::GET,
            path_and_query: "/v1/ping".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        let e = g.send("nowhere", Plane::Native, req()).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("\"down\"") && e.to_string().contains("\"home\""), "{e}");
        let e = g.send("home", Plane::Native, req()).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "the local cluster is never a forwarding target");
        let e = g.send("down", Plane::Native, req()).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.to_string().contains("refused"), "{e}");
        let e = g.send("e2bonly", Plane::Native, req()).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.to_string().contains("nativeUrl"), "{e}");
        let t0 = std::time::Instant::now();
        let e = g.send("slow", Plane::Native, req()).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let mut looped = HeaderMap::new();
        looped.insert(SOURCE_CLUSTER_HEADER, HeaderValue::from_static("other"));
        let e = g.send("down", Plane::Native, Outbound { headers: looped, ..req() }).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::LOOP_DETECTED);
    }
}
