//! The data plane (SPEC §6): a reverse proxy from `--proxy-listen` to ports inside sandboxes.
//!
//! # Routing
//! The target (sandbox id, port) comes from the first of these that is present:
//! 1. headers `E2b-Sandbox-Id` + `E2b-Sandbox-Port`, or `X-Sandbox-Id` + `X-Sandbox-Port` (the path
//!    is forwarded unchanged);
//! 2. the host `{port}-{sandboxId}.{anything}` (E2B's subdomain form; path unchanged);
//! 3. the path `/sandboxes/{sandboxId}/{port}/{rest…}` (the upstream path is `/{rest…}` plus the
//!    query string).
//!
//! A port outside 1..=65535 or a half-given target → 400; an unknown sandbox → 404; a sandbox that
//! is not Running (Starting, Stopping, ended) → 502, so traffic never reaches a container that is
//! being switched or torn down; an upstream that refuses the connection → 502 naming the port,
//! except on the in-sandbox agent's port, where a refused connection (nothing sent yet) makes the
//! proxy ask the backend to restart the agent (`Backend::ensure_agent`) and send the request once
//! more if it did.
//! Every error body is `{"error": "..."}` with `content-type: application/json`. The upstream is
//! `http://{sandbox ip}:{port}`, reached over pooled HTTP/1.1 connections (one pool per upstream);
//! gRPC requests that arrive over HTTP/2 are forwarded over HTTP/2 (h2c prior knowledge) because
//! gRPC needs HTTP/2 end to end.
//!
//! # Protocols
//! The front speaks HTTP/1.1 and HTTP/2 (h2c with prior knowledge). Request and response bodies
//! are streamed in both directions, never buffered. Requests with `Connection: upgrade` (WebSocket
//! and any other `Upgrade`) are forwarded as such; when the upstream answers 101 the two upgraded
//! connections are spliced byte for byte. Hop-by-hop headers (RFC 9110 §7.6.1, plus those named in
//! `Connection`) are not forwarded; `x-forwarded-for`, `x-forwarded-host` and `x-forwarded-proto`
//! are set.
//!
//! # Activity
//! Each request counts as activity for the idle timeout ([`Engine::touch`]); so does traffic on a
//! long-lived body or an upgraded connection, at most once a second while bytes flow.
//!
//! # Authentication (decision)
//! The data plane is **not authenticated**. The E2B SDK never sends an API key to the sandbox
//! domain (it talks to envd with the sandbox's own access token, if any), and the origin system
//! serves its data plane without auth by default; requiring a key would break unmodified E2B
//! clients. An `AGENTBOX-API-KEY` header, if present, is neither required nor checked, and is
//! forwarded like any other header. The sandbox id (a random UUIDv7) is what a caller must know;
//! keep `--proxy-listen` on loopback or a private network, as with the API in dev mode.
//!
//! # Cross-cluster ids (SPEC §6, issue #7)
//! A sandbox id `{cluster}.{uuid}` names the cluster that owns it. This cluster's own prefix is
//! stripped and the sandbox served here. Another cluster of the catalog
//! ([`crate::gateway::Catalog`]) gets the request forwarded to its data plane (`proxyUrl`) in the
//! same routing form: the same path and query (the path form keeps `/sandboxes/{cluster}.{uuid}/…`,
//! which the owner accepts), the same headers minus hop-by-hop ones, plus the catalog's headers and
//! `X-Source-Cluster`. The host form `{port}-{cluster}.{uuid}.{domain}` (a dotted id splits the
//! first host label, so `{cluster}` must be a known cluster id) is forwarded in the headers form
//! (`E2b-Sandbox-Id` + `E2b-Sandbox-Port`). Bodies stream both ways, upgrades (WebSocket) are
//! spliced, and gRPC over HTTP/2 goes over h2c. An unknown cluster → 400 naming the known ones; a
//! data plane that cannot be reached → 502 with the cause; no response headers within the
//! gateway's response timeout → 504; a request already forwarded once (it carries
//! `X-Source-Cluster`) and naming yet another cluster → 508. Only `http://` proxy URLs are
//! supported (the data planes of a multi-cluster setup talk over a private network).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agentbox_core::model::SandboxStatus;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::gateway::{Gateway, GatewayError, Plane, SOURCE_CLUSTER_HEADER, error_chain, split_sandbox_id};

/// The body type of everything the proxy sends (streamed upstream or client bodies, or a small
/// JSON error).
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// How long connecting to a sandbox port may take before the request fails with 502.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Activity from a long body or an upgraded connection is reported at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// How a request named its target (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteForm {
    /// `E2b-Sandbox-Id` + `E2b-Sandbox-Port` (or the `X-Sandbox-*` pair).
    Headers,
    /// `{port}-{sandboxId}.{domain}`.
    Host,
    /// `/sandboxes/{sandboxId}/{port}/…`.
    Path,
}

/// Where a request goes: a port of a sandbox, and the upstream path when the route rewrites it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sandbox_id: String,
    pub port: u16,
    /// `Some` for the path form (the rest of the path plus the query); `None`: forward unchanged.
    pub path_and_query: Option<String>,
    pub form: RouteForm,
}

/// Why the proxy answered itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// 400: no target, half a target, or a bad port.
    #[error("{0}")]
    BadTarget(String),
    /// 404
    #[error("sandbox not found")]
    NotFound,
    /// 502: the sandbox exists but is not Running.
    #[error("sandbox is not running (status {0})")]
    NotRunning(&'static str),
    /// 502: Running but without an address (should not happen with the local backend).
    #[error("sandbox {0} has no network address; retry in a moment")]
    NoAddress(String),
    /// 502: nothing accepted the connection on that port.
    #[error(
        "could not connect to port {port} of sandbox {id}: {message}; is a server listening on 0.0.0.0:{port} inside the sandbox?"
    )]
    Connect { id: String, port: u16, message: String },
    /// 502: the upstream connection failed after it was made.
    #[error("port {port} of sandbox {id} failed: {message}")]
    Upstream { id: String, port: u16, message: String },
    /// 503: the store could not be read.
    #[error("looking up the sandbox failed; retry in a moment")]
    Store,
    /// A cross-cluster id that could not be forwarded: unknown cluster (400), unreachable (502),
    /// too slow (504), a forwarding loop (508).
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// 502: the owning cluster's `proxyUrl` is not `http://`.
    #[error(
        "cluster {cluster:?} has proxyUrl {url:?}: the data plane forwards to http:// data planes only; \
         give an http:// proxyUrl on a private network in the clusters config"
    )]
    RemoteScheme { cluster: String, url: String },
}

impl ProxyError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadTarget(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::NotRunning(_)
            | ProxyError::NoAddress(_)
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::RemoteScheme { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Store => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Gateway(e) => e.status(),
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut r = Response::new(full(Bytes::from(body)));
        *r.status_mut() = self.status();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}

const TARGET_HINT: &str = "send headers E2b-Sandbox-Id and E2b-Sandbox-Port (or X-Sandbox-Id and X-Sandbox-Port), \
     use the host {port}-{sandboxId}.{domain}, or the path /sandboxes/{sandboxId}/{port}/...";

fn parse_port(s: &str) -> Result<u16, ProxyError> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ProxyError::BadTarget(format!("port {s:?} is not valid: use 1..=65535")))
}

/// Find the target of a request (first match wins: headers, host, path; see the module docs).
/// Host labels are never taken for cluster ids: see [`resolve_target_in`].
pub fn resolve_target(headers: &HeaderMap, uri: &Uri) -> Result<Target, ProxyError> {
    resolve_target_in(headers, uri, &|_| false)
}

/// [`resolve_target`], where `is_cluster` tells the known cluster ids, so that the host form of a
/// cross-cluster id, `{port}-{cluster}.{uuid}.{domain}`, gives the sandbox id `{cluster}.{uuid}`.
pub fn resolve_target_in(
    headers: &HeaderMap,
    uri: &Uri,
    is_cluster: &dyn Fn(&str) -> bool,
) -> Result<Target, ProxyError> {
    for (id_h, port_h) in [("e2b-sandbox-id", "e2b-sandbox-port"), ("x-sandbox-id", "x-sandbox-port")] {
        let text = |n: &str| -> Result<Option<String>, ProxyError> {
            match headers.get(n) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim().to_owned()))
                    .map_err(|_| ProxyError::BadTarget(format!("header {n} is not valid text"))),
            }
        };
        match (text(id_h)?, text(port_h)?) {
            (None, None) => continue,
            (Some(id), Some(port)) if !id.is_empty() => {
                return Ok(Target {
                    sandbox_id: id,
                    port: parse_port(&port)?,
                    path_and_query: None,
                    form: RouteForm::Headers,
                });
            }
            (Some(_), None) => {
                return Err(ProxyError::BadTarget(format!("header {id_h} is set but {port_h} is missing: send both")));
            }
            _ => return Err(ProxyError::BadTarget(format!("header {port_h} is set but {id_h} is missing or empty"))),
        }
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    if let Some(host) = host
        && let Some((label, domain)) = host.split_once('.')
        && let Some((port, id)) = label.split_once('-')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && !id.is_empty()
    {
        let port = parse_port(port)?;
        let sandbox_id = match domain.split_once('.') {
            Some((uuid, _)) if !uuid.is_empty() && is_cluster(id) => format!("{id}.{uuid}"),
            _ => id.to_owned(),
        };
        return Ok(Target { sandbox_id, port, path_and_query: None, form: RouteForm::Host });
    }
    if let Some(rest) = uri.path().strip_prefix("/sandboxes/") {
        let mut parts = rest.splitn(3, '/');
        let id = parts.next().unwrap_or_default();
        let port = parts.next().unwrap_or_default();
        if id.is_empty() || port.is_empty() {
            return Err(ProxyError::BadTarget(format!(
                "the path {} has no sandbox id or port: use /sandboxes/{{sandboxId}}/{{port}}/...",
                uri.path()
            )));
        }
        let port = parse_port(port)?;
        let mut path = format!("/{}", parts.next().unwrap_or_default());
        if let Some(q) = uri.query() {
            path.push('?');
            path.push_str(q);
        }
        return Ok(Target { sandbox_id: id.to_owned(), port, path_and_query: Some(path), form: RouteForm::Path });
    }
    Err(ProxyError::BadTarget(format!("no sandbox target in the request: {TARGET_HINT}")))
}

fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Remove hop-by-hop headers, those named in `Connection`, and `Upgrade` (re-added by the caller
/// for an upgrade). `te: trailers` is kept (gRPC needs it end to end).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    let keep_te = h.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in HOP_BY_HOP {
        if n == "te" && keep_te {
            continue;
        }
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade: X`).
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks { req.headers().get(header::UPGRADE).cloned() } else { None }
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

/// Reports activity for `id` at most once per [`TOUCH_EVERY`].
struct Toucher {
    engine: Arc<Engine>,
    id: Arc<str>,
    last: Instant,
}

impl Toucher {
    fn new(engine: Arc<Engine>, id: Arc<str>) -> Toucher {
        Toucher { engine, id, last: Instant::now() }
    }
    fn bytes_flowed(&mut self) {
        if self.last.elapsed() >= TOUCH_EVERY {
            self.last = Instant::now();
            self.engine.touch(&self.id);
        }
    }
}

/// Wrap a streamed body so that data flowing through it counts as activity.
fn touching<B>(body: B, mut t: Toucher) -> ProxyBody
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    body.map_frame(move |f| {
        t.bytes_flowed();
        f
    })
    .boxed_unsync()
}

/// An upgraded connection whose reads and writes count as activity.
struct TouchingIo<T> {
    io: T,
    t: Toucher,
}

impl<T: AsyncRead + Unpin> AsyncRead for TouchingIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.t.bytes_flowed();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TouchingIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.t.bytes_flowed();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The data-plane proxy. Cheap to clone (shares the engine and the connection pools).
#[derive(Clone)]
pub struct DataPlane {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    /// Where cross-cluster ids go (a local-only catalog when this server is no gateway).
    gateway: Arc<Gateway>,
    /// Pooled HTTP/1.1 connections, one pool per upstream `ip:port`.
    http1: Client<HttpConnector, ProxyBody>,
    /// HTTP/2 prior knowledge, for gRPC arriving over HTTP/2.
    http2: Client<HttpConnector, ProxyBody>,
}

impl DataPlane {
    /// A proxy that resolves sandboxes through `engine`'s store and reports activity to it.
    /// Cross-cluster ids of other clusters answer 400 (no catalog); see [`DataPlane::with_gateway`].
    pub fn new(engine: Arc<Engine>) -> DataPlane {
        let gateway = Arc::new(Gateway::local_only(engine.cluster_id()));
        DataPlane::with_gateway(engine, gateway)
    }

    /// A proxy that also forwards cross-cluster ids (`{cluster}.{uuid}`) of the clusters in
    /// `gateway`'s catalog to their data planes. `gateway`'s local cluster must be `engine`'s.
    pub fn with_gateway(engine: Arc<Engine>, gateway: Arc<Gateway>) -> DataPlane {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
        conn.set_nodelay(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(conn.clone());
        let http2 = Client::builder(TokioExecutor::new()).http2_only(true).build(conn);
        DataPlane { inner: Arc::new(Inner { engine, gateway, http1, http2 }) }
    }

    /// Accept connections on `listener` until `shutdown` completes (connections already accepted
    /// keep being served by their own tasks).
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "data plane: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let dp = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let dp = dp.clone();
                    async move { Ok::<_, std::convert::Infallible>(dp.handle(req, peer).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await {
                    tracing::debug!(%peer, error = %e, "data plane: connection ended with an error");
                }
            });
        }
    }

    /// Answer one request: forward it, or answer the error as JSON.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        match self.forward(req, peer).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "data plane: request refused");
                e.into_response()
            }
        }
    }

    async fn forward(&self, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<ProxyBody>, ProxyError> {
        let catalog = self.inner.gateway.catalog();
        let is_cluster = |c: &str| catalog.is_local(c) || catalog.remote(c).is_some();
        let mut target = resolve_target_in(req.headers(), req.uri(), &is_cluster)?;
        if let Some((cluster, uuid)) = split_sandbox_id(&target.sandbox_id) {
            if catalog.is_local(cluster) {
                target.sandbox_id = uuid.to_owned();
            } else {
                let cluster = cluster.to_owned();
                return self.forward_remote(req, peer, target, &cluster).await;
            }
        }
        self.forward_local(req, peer, target).await
    }

    /// Forward a request for a sandbox of `cluster` to that cluster's data plane (module docs).
    async fn forward_remote(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        target: Target,
        cluster: &str,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let gateway = &self.inner.gateway;
        let entry = gateway.target(cluster, req.headers())?;
        let base = entry
            .url(Plane::Proxy)
            .ok_or(GatewayError::NotConfigured { cluster: cluster.to_owned(), field: Plane::Proxy.field() })?;
        if !base.starts_with("http://") {
            return Err(ProxyError::RemoteScheme { cluster: cluster.to_owned(), url: base.to_owned() });
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = format!("{base}{path}")
            .parse()
            .map_err(|_| ProxyError::BadTarget(format!("the path {path:?} is not a valid URI path")))?;

        let Outgoing { client_upgrade, use_h2, orig_host, mut parts, body } = outgoing(req);
        if target.form == RouteForm::Host {
            // The owner's data plane may not know the gateway's domain: name the target in headers.
            let id = HeaderValue::from_str(&target.sandbox_id)
                .map_err(|_| ProxyError::BadTarget("the sandbox id is not valid header text".into()))?;
            parts.headers.insert(HeaderName::from_static("e2b-sandbox-id"), id);
            parts.headers.insert(HeaderName::from_static("e2b-sandbox-port"), HeaderValue::from(target.port));
        }
        if let Some(h) = orig_host {
            parts.headers.insert(header::HOST, h);
        }
        set_forwarded_for(&mut parts.headers, peer);
        // The catalog's headers are NOT sent on the data plane: its traffic ends in code inside a
        // sandbox, which must never see the credentials the gateway holds for a cluster's APIs.
        if let Ok(v) = HeaderValue::from_str(gateway.catalog().local_id()) {
            parts.headers.insert(HeaderName::from_static(SOURCE_CLUSTER_HEADER), v);
        }
        parts.uri = uri;
        parts.version = if use_h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        let client = if use_h2 { &self.inner.http2 } else { &self.inner.http1 };
        let after = gateway.timeouts().response;
        let started = Instant::now();
        let sent = tokio::time::timeout(after, client.request(Request::from_parts(parts, body.boxed_unsync()))).await;
        let resp = match sent {
            Err(_) => Err(GatewayError::Timeout { cluster: cluster.to_owned(), after }),
            Ok(Err(e)) => Err(GatewayError::Unreachable { cluster: cluster.to_owned(), cause: error_chain(&e) }),
            Ok(Ok(r)) => Ok(r),
        };
        let status = resp.as_ref().map_or_else(|e| e.status().as_u16(), |r| r.status().as_u16());
        gateway.record(cluster, Plane::Proxy, status, started.elapsed());
        let resp = resp?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let what = format!("the data plane of cluster {cluster:?}");
            return splice_upgrade(client_upgrade, resp, None, &what)
                .map_err(|message| GatewayError::Unreachable { cluster: cluster.to_owned(), cause: message }.into());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }

    async fn forward_local(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        target: Target,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let engine = &self.inner.engine;
        let sb = engine
            .store()
            .get_sandbox(&target.sandbox_id)
            .map_err(|e| {
                tracing::warn!(sandbox_id = %target.sandbox_id, error = %e, "data plane: store lookup failed");
                ProxyError::Store
            })?
            .ok_or(ProxyError::NotFound)?;
        if sb.status != SandboxStatus::Running {
            return Err(ProxyError::NotRunning(sb.status.as_str()));
        }
        let ip = sb.ip.ok_or_else(|| ProxyError::NoAddress(sb.sandbox_id.clone()))?;
        let id: Arc<str> = Arc::from(sb.sandbox_id.as_str());
        let port = target.port;
        engine.touch(&id);

        let path = match target.path_and_query {
            Some(p) => p,
            None => req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        };
        let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
        let uri: Uri = format!("http://{host}:{port}{path}")
            .parse()
            .map_err(|_| ProxyError::BadTarget(format!("the upstream path {path:?} is not a valid URI path")))?;

        let Outgoing { client_upgrade, use_h2, orig_host, mut parts, body } = outgoing(req);
        // Gateway bookkeeping stays between data planes.
        parts.headers.remove(SOURCE_CLUSTER_HEADER);
        if let Some(h) = orig_host {
            parts.headers.insert(header::HOST, h.clone());
            parts.headers.insert(HeaderName::from_static("x-forwarded-host"), h);
        }
        set_forwarded_for(&mut parts.headers, peer);
        parts.uri = uri;
        parts.version = if use_h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        let body = touching(body, Toucher::new(Arc::clone(engine), id.clone()));

        let client = if use_h2 { &self.inner.http2 } else { &self.inner.http1 };
        let sent = if engine.cfg.agent_port == Some(port) {
            send_to_agent(engine, client, parts, body, &sb.pod_name).await
        } else {
            client.request(Request::from_parts(parts, body)).await
        };
        let resp = sent.map_err(|e| {
            let message = match std::error::Error::source(&e) {
                Some(src) => format!("{e}: {src}"),
                None => e.to_string(),
            };
            if e.is_connect() {
                ProxyError::Connect { id: id.to_string(), port, message }
            } else {
                ProxyError::Upstream { id: id.to_string(), port, message }
            }
        })?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let t = Toucher::new(Arc::clone(engine), id.clone());
            let what = format!("port {port} of sandbox {id}");
            return splice_upgrade(client_upgrade, resp, Some(t), &what).map_err(|message| ProxyError::Upstream {
                id: id.to_string(),
                port,
                message,
            });
        }

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, touching(body, Toucher::new(Arc::clone(engine), id))))
    }
}

/// Append the peer to `X-Forwarded-For` and default `X-Forwarded-Proto` to `http`.
/// A request on its way out, as both forwards (to a sandbox, to another cluster's data plane) need
/// it: the caller's side of an upgrade, whether gRPC needs HTTP/2 upstream, the original host, and
/// the parts without hop-by-hop headers (the upgrade's own two put back).
struct Outgoing {
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    use_h2: bool,
    orig_host: Option<HeaderValue>,
    parts: hyper::http::request::Parts,
    body: Incoming,
}

fn outgoing(mut req: Request<Incoming>) -> Outgoing {
    let upgrade = upgrade_protocol(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let use_h2 = req.version() == Version::HTTP_2 && is_grpc(req.headers());
    let orig_host = req
        .headers()
        .get(header::HOST)
        .cloned()
        .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto);
    }
    Outgoing { client_upgrade, use_h2, orig_host, parts, body }
}

fn set_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let client_ip = peer.ip().to_string();
    let forwarded_for = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client_ip}"),
        _ => client_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(xff, v);
    }
    headers.entry(HeaderName::from_static("x-forwarded-proto")).or_insert(HeaderValue::from_static("http"));
}

/// Answer the upstream's 101: splice the client's and the upstream's upgraded connections byte
/// for byte in a task (traffic counts as activity when `t` is given) and give the client the 101.
/// `Err` (a message) when the upstream upgraded a request that did not ask for it.
fn splice_upgrade(
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    mut resp: Response<Incoming>,
    t: Option<Toucher>,
    what: &str,
) -> Result<Response<ProxyBody>, String> {
    let Some(client_upgrade) = client_upgrade else {
        return Err("it answered 101 Switching Protocols to a request that did not ask for an upgrade".into());
    };
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let what = what.to_owned();
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client_io, upstream_io)) => {
                let mut upstream_io = TokioIo::new(upstream_io);
                let copied = match t {
                    Some(t) => {
                        let mut client_io = TouchingIo { io: TokioIo::new(client_io), t };
                        tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await
                    }
                    None => tokio::io::copy_bidirectional(&mut TokioIo::new(client_io), &mut upstream_io).await,
                };
                if let Err(e) = copied {
                    tracing::debug!(upstream = %what, error = %e, "data plane: upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(upstream = %what, error = %e, "data plane: upgrade failed"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    let proto = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(p) = proto {
        parts.headers.insert(header::UPGRADE, p);
    }
    Ok(Response::from_parts(parts, full(Bytes::new())))
}

/// A request body that stays in a shared slot until its first poll, so that a request whose
/// connection failed before anything was sent can be sent again with the same body.
struct Reclaimable {
    shared: Arc<std::sync::Mutex<Option<ProxyBody>>>,
    taken: Option<ProxyBody>,
}

impl hyper::body::Body for Reclaimable {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if self.taken.is_none() {
            let body = self.shared.lock().unwrap_or_else(|p| p.into_inner()).take();
            self.taken = body;
        }
        match self.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.shared.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self
                .shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or_else(|| hyper::body::SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}

/// Whether a client error is a refused connection (nothing listens on the port).
fn connection_refused(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::ConnectionRefused;
        }
        src = s.source();
    }
    false
}

/// Send a request to the in-sandbox agent's port. When the connection is refused before anything
/// of the request was sent (its body was never polled), the agent has died: ask the backend to
/// start it again ([`agentbox_core::backend::Backend::ensure_agent`]) and, if it did, send the
/// request once more. Any other failure is returned as is.
async fn send_to_agent(
    engine: &Engine,
    client: &Client<HttpConnector, ProxyBody>,
    parts: hyper::http::request::Parts,
    body: ProxyBody,
    slot_id: &str,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let (method, uri, version, headers) =
        (parts.method.clone(), parts.uri.clone(), parts.version, parts.headers.clone());
    let shared = Arc::new(std::sync::Mutex::new(Some(body)));
    let first = Reclaimable { shared: Arc::clone(&shared), taken: None };
    let err = match client.request(Request::from_parts(parts, first.boxed_unsync())).await {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    if !connection_refused(&err) {
        return Err(err);
    }
    let Some(body) = shared.lock().unwrap_or_else(|p| p.into_inner()).take() else { return Err(err) };
    match engine.backend.ensure_agent(slot_id).await {
        Ok(true) => tracing::info!(slot = slot_id, "data plane: the agent was restarted; sending the request again"),
        Ok(false) => return Err(err),
        Err(e) => {
            tracing::warn!(slot = slot_id, error = %e, "data plane: cannot restart the agent");
            return Err(err);
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    client.request(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(headers: &[(&str, &str)], uri: &str) -> Result<Target, ProxyError> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        resolve_target(&h, &uri.parse().unwrap())
    }

    fn t(id: &str, port: u16, path: Option<&str>) -> Target {
        let form = if path.is_some() { RouteForm::Path } else { RouteForm::Headers };
        Target { sandbox_id: id.into(), port, path_and_query: path.map(str::to_owned), form }
    }

    #[test]
    fn headers_win_over_host_and_path() {
        let r = target(
            &[("E2b-Sandbox-Id", "abc"), ("E2b-Sandbox-Port", "49983"), ("host", "8080-other.example.com")],
            "/sandboxes/zzz/1/x",
        );
        assert_eq!(r.unwrap(), t("abc", 49983, None));
        let r = target(&[("x-sandbox-id", "abc"), ("x-sandbox-port", "80")], "/a?b=c");
        assert_eq!(r.unwrap(), t("abc", 80, None));
    }

    #[test]
    fn half_a_header_target_is_a_400() {
        let e = target(&[("x-sandbox-id", "abc")], "/").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("x-sandbox-port is missing"), "{e}");
        let e = target(&[("e2b-sandbox-port", "80")], "/").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn host_form() {
        let id = "0190f2c4-7b1e-7cc0-9d5e-0123456789ab";
        let r = target(&[("host", &format!("8080-{id}.sandbox.local:8092"))], "/p?q=1").unwrap();
        assert_eq!(r, Target { form: RouteForm::Host, ..t(id, 8080, None) });
        // not a host route: falls through to "no target"
        let e = target(&[("host", "my-service.example.com")], "/").unwrap_err();
        assert!(e.to_string().contains("no sandbox target"), "{e}");
        let e = target(&[("host", "70000-abc.example.com")], "/").unwrap_err();
        assert!(e.to_string().contains("1..=65535"), "{e}");
    }

    #[test]
    fn host_form_of_a_cross_cluster_id_needs_a_known_cluster() {
        let id = "0190f2c4-7b1e-7cc0-9d5e-0123456789ab";
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(&format!("49983-eu.{id}.gw.example:8092")).unwrap());
        let uri: Uri = "/health".parse().unwrap();
        let r = resolve_target_in(&h, &uri, &|c| c == "eu").unwrap();
        assert_eq!(r, Target { form: RouteForm::Host, ..t(&format!("eu.{id}"), 49983, None) });
        // An unknown first label stays the (not found) id, as without a catalog.
        assert_eq!(resolve_target_in(&h, &uri, &|_| false).unwrap().sandbox_id, "eu");
        // The plain form is unaffected by the catalog.
        h.insert(header::HOST, HeaderValue::from_str(&format!("80-{id}.gw.example")).unwrap());
        assert_eq!(resolve_target_in(&h, &uri, &|c| c == "eu").unwrap().sandbox_id, id);
        // Headers and path forms carry the dotted id as it is.
        let r = target(&[("e2b-sandbox-id", &format!("eu.{id}")), ("e2b-sandbox-port", "8080")], "/").unwrap();
        assert_eq!(r.sandbox_id, format!("eu.{id}"));
        assert_eq!(target(&[], &format!("/sandboxes/eu.{id}/80/x")).unwrap().sandbox_id, format!("eu.{id}"));
    }

    #[test]
    fn path_form_rewrites_the_path_and_keeps_the_query() {
        assert_eq!(target(&[], "/sandboxes/abc/8000/x/y?a=1&b=2").unwrap(), t("abc", 8000, Some("/x/y?a=1&b=2")));
        assert_eq!(target(&[], "/sandboxes/abc/8000").unwrap(), t("abc", 8000, Some("/")));
        assert_eq!(target(&[], "/sandboxes/abc/8000/").unwrap(), t("abc", 8000, Some("/")));
        assert_eq!(target(&[], "/sandboxes/abc/8000?x").unwrap(), t("abc", 8000, Some("/?x")));
        for bad in
            ["/sandboxes/abc/0/", "/sandboxes/abc/65536/", "/sandboxes/abc/http/", "/sandboxes/abc", "/sandboxes/"]
        {
            let e = target(&[], bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}: {e}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("te").is_none());
    }

    #[test]
    fn error_bodies_are_json() {
        let r = ProxyError::NotRunning("Starting").into_response();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
