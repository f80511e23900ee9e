//! E2B sandbox routes: create, list (v1, v2), get, kill, timeout, refreshes, connect, logs,
//! metrics. Each parses the E2B shape, calls one engine method with the caller's identity, and maps
//! the result back to E2B's shape.

use std::collections::BTreeMap;
use std::time::Duration;

use agentbox_core::duration::WireDuration;
use agentbox_core::error::ErrorKind;
use agentbox_core::model::{HttpPostHookAction, PostStartHookAction, Sandbox, SandboxStatus};
use agentbox_core::quantity::{parse_cpu_millis, parse_memory_bytes};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{E2bError, EJson, EPath, EQuery, EResult};
use super::{E2bAuth, ENVD_PORT, ENVD_VERSION, St, remote};
use crate::auth::AuthInfo;
use crate::engine::{CreateSandboxRequest, ListSandboxesQuery, LogsQuery, SandboxMetric};
use crate::gateway::{Outbound, Plane, global_sandbox_id, split_sandbox_id};

/// Body of `POST /sandboxes` and `POST /v2/sandboxes` (E2B `NewSandbox` / `NewSandboxV2`).
/// Serialized again (with the cluster taken out of `templateID`) when the create is forwarded to
/// another cluster.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSandbox {
    /// `pool`, `pool//image` or `cluster::pool[//image]`.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds → the idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Deprecated in E2B; every agentbox sandbox is reached through the authenticated data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(dead_code, reason = "accepted for compatibility and ignored")]
    pub secure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
    /// Only meaningful with `autoPause`, which is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(dead_code, reason = "accepted for compatibility and ignored")]
    pub auto_pause_memory: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<Value>,
    #[serde(
        default,
        rename = "allow_internet_access",
        alias = "allowInternetAccess",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<Value>>,
}

/// E2B `Sandbox`: the answer of create and connect.
#[derive(Debug, Serialize)]
pub struct E2bSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(rename = "envdVersion")]
    pub envd_version: &'static str,
    #[serde(rename = "domain", skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// Is `v` a request to turn something on (anything but absent, null, false, empty or
/// `{"enabled": false}`)?
fn asks_for(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Object(m)) => !(m.is_empty() || m.get("enabled") == Some(&Value::Bool(false))),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// Refuse the E2B features we would otherwise silently fail to honour.
fn refuse_unsupported(req: &NewSandbox) -> EResult<()> {
    let refuse =
        |what: &str, alt: &str| Err(E2bError::bad_request(format!("{what} is not supported by agentbox; {alt}")));
    if req.auto_pause == Some(true) || asks_for(&req.auto_resume) {
        return refuse("autoPause/autoResume", "sandboxes are released when their timeout passes; omit these fields");
    }
    if req.allow_internet_access == Some(false) || asks_for(&req.network) {
        return refuse(
            "restricting the sandbox network",
            "egress follows the pool's template; omit allow_internet_access and network",
        );
    }
    if asks_for(&req.mcp) {
        return refuse("the MCP gateway", "run your MCP server as a process in the sandbox");
    }
    if asks_for(&req.iam) {
        return refuse("iam", "omit the iam field");
    }
    if req.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return refuse("volumeMounts", "declare volumes in the pool's template");
    }
    Ok(())
}

/// A parsed `templateID`: `[cluster::]pool[//image]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    /// `Some` when the id names a cluster (`*` for placement on any cluster).
    pub cluster: Option<String>,
    pub pool: String,
    pub image: Option<String>,
}

impl TemplateRef {
    /// `pool[//image]`: the templateID to send to the owning cluster.
    pub fn without_cluster(&self) -> String {
        match &self.image {
            Some(i) => format!("{}//{i}", self.pool),
            None => self.pool.clone(),
        }
    }
}

/// Split `[cluster::]pool[//image]`.
pub fn parse_template_id(s: &str) -> EResult<TemplateRef> {
    let (cluster, rest) = match s.split_once("::") {
        Some((cluster, rest)) => {
            if cluster.is_empty() {
                return Err(E2bError::bad_request(format!(
                    "templateID {s:?} names an empty cluster: use \"cluster::pool\" or just \"pool\""
                )));
            }
            (Some(cluster.to_owned()), rest)
        }
        None => (None, s),
    };
    let (pool, image) = match rest.split_once("//") {
        Some((p, i)) if !i.is_empty() => (p, Some(i.to_string())),
        Some((p, _)) => (p, None),
        None => (rest, None),
    };
    if pool.is_empty() {
        return Err(E2bError::bad_request(format!(
            "templateID {s:?} names no pool: use \"pool\", \"pool//image\" or \"cluster::pool//image\""
        )));
    }
    Ok(TemplateRef { cluster, pool: pool.to_string(), image })
}

fn domain_of(st: &St) -> Option<String> {
    st.cfg.domain.clone()
}

fn answer(st: &St, sb: &Sandbox) -> E2bSandbox {
    E2bSandbox {
        template_id: sb.pool_name.clone(),
        sandbox_id: sb.sandbox_id.clone(),
        client_id: st.app.engine.cluster_id().to_string(),
        envd_version: ENVD_VERSION,
        domain: domain_of(st),
    }
}

/// `POST /sandboxes`, `POST /v2/sandboxes`: claim from the pool named by `templateID`; 201 once
/// Running. No idle slot answers 429 (the SDK raises its retryable `RateLimitException`).
///
/// `templateID: "eu::pool"` on a gateway forwards the create to cluster `eu` (see `remote`): the
/// answer carries `sandboxID: "eu.{uuid}"` and this server's `domain`.
pub async fn create(
    State(st): State<St>,
    uri: OriginalUri,
    headers: HeaderMap,
    E2bAuth(auth): E2bAuth,
    EJson(mut req): EJson<NewSandbox>,
) -> EResult<Response> {
    refuse_unsupported(&req)?;
    let tref = parse_template_id(&req.template_id)?;
    if let Some(cluster) = tref.cluster.as_deref().filter(|c| !st.app.gateway.catalog().is_local(c)) {
        if cluster == "*" {
            return Err(remote::placement_is_native_only(&req.template_id, &tref.pool));
        }
        req.template_id = tref.without_cluster();
        let body = serde_json::to_vec(&req).map_err(|e| E2bError::bad_request(format!("invalid request body: {e}")))?;
        let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
        return remote::forward(&st, cluster, Method::POST, path, headers, body.into()).await;
    }
    let (pool, image) = (tref.pool, tref.image);
    let idle_timeout = match req.timeout {
        None => None,
        Some(t) if t > 0 => Some(WireDuration::from_secs(t as u64)),
        Some(t) => {
            return Err(E2bError::bad_request(format!("timeout {t} must be a positive number of seconds")));
        }
    };
    let mut hooks = vec![];
    if let Some(env) = req.env_vars.filter(|e| !e.is_empty()) {
        hooks.push(PostStartHookAction {
            exec: None,
            http_post: Some(HttpPostHookAction {
                port: ENVD_PORT,
                path: "/init".into(),
                body: Some(json!({ "envVars": env })),
                headers: BTreeMap::new(),
            }),
        });
    }
    let native = CreateSandboxRequest {
        pool_name: pool,
        image,
        metadata: req.metadata.unwrap_or_default(),
        idle_timeout,
        post_start_hooks: hooks,
        ..Default::default()
    };
    let sb = st.app.engine.create_sandbox(&auth, native).await.map_err(|e| {
        let mut e = E2bError::from(e);
        // The engine's "no idle slot" is 409; E2B clients retry on 429.
        if e.status == StatusCode::CONFLICT {
            e.status = StatusCode::TOO_MANY_REQUESTS;
        }
        e
    })?;
    let mut out = answer(&st, &sb);
    if tref.cluster.is_some() {
        // `home::pool` on cluster `home`: name the sandbox globally, as the native API does.
        out.sandbox_id = global_sandbox_id(st.app.engine.cluster_id(), &out.sandbox_id);
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// E2B `ListedSandbox` / `SandboxDetail` (the detail adds `domain`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub started_at: String,
    /// When the idle timeout would release the sandbox (far future when it has none).
    pub end_at: String,
    pub cpu_count: u64,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub metadata: BTreeMap<String, String>,
    pub state: &'static str,
    pub envd_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

const NO_END: &str = "9999-12-31T23:59:59Z";

fn listed(st: &St, sb: &Sandbox, with_domain: bool) -> ListedSandbox {
    let started = sb.started_at.clone().unwrap_or_else(|| sb.claimed_at.clone());
    let end_at = sb
        .idle_timeout_seconds
        .and_then(|t| {
            let from = sb.last_active_at.as_deref().unwrap_or(&started);
            let from = chrono::DateTime::parse_from_rfc3339(from).ok()?;
            Some((from + chrono::Duration::seconds(t as i64)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        })
        .unwrap_or_else(|| NO_END.to_string());
    let cpu = sb.cpu.as_deref().and_then(|c| parse_cpu_millis(c).ok()).map(|m| m.div_ceil(1000)).unwrap_or(0);
    let mem = sb.memory.as_deref().and_then(|m| parse_memory_bytes(m).ok()).map(|b| b >> 20).unwrap_or(0);
    ListedSandbox {
        template_id: sb.pool_name.clone(),
        sandbox_id: sb.sandbox_id.clone(),
        client_id: st.app.engine.cluster_id().to_string(),
        started_at: started,
        end_at,
        cpu_count: cpu,
        memory_mb: mem,
        disk_size_mb: 0,
        metadata: sb.metadata.clone(),
        state: "running",
        envd_version: ENVD_VERSION,
        domain: if with_domain { domain_of(st) } else { None },
    }
}

fn is_live(s: SandboxStatus) -> bool {
    matches!(s, SandboxStatus::Starting | SandboxStatus::Running)
}

/// The caller's live sandbox `id`; 404 when unknown, not visible or ended (E2B knows no history).
fn live_sandbox(st: &St, auth: &AuthInfo, id: &str) -> EResult<Sandbox> {
    let sb = st.app.engine.get_sandbox(auth, id)?;
    if !is_live(sb.status) {
        return Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found: it ended ({}); create a new one", sb.status.as_str()),
        ));
    }
    Ok(sb)
}

/// Every live sandbox the caller may see, newest first.
fn all_live(st: &St, auth: &AuthInfo, pool: Option<String>) -> EResult<Vec<Sandbox>> {
    let mut out = vec![];
    let mut offset = 0u32;
    loop {
        let q = ListSandboxesQuery {
            pool_name: pool.clone(),
            status: Some("Starting,Running".into()),
            limit: Some(100),
            offset: Some(offset),
            ..Default::default()
        };
        let page = st.app.engine.list_sandboxes(auth, &q)?;
        let n = page.items.len() as u32;
        out.extend(page.items);
        offset += n;
        if n == 0 || u64::from(offset) >= page.total {
            return Ok(out);
        }
    }
}

/// Parse E2B's `metadata` filter: a query string `k=v&k2=v2` whose keys and values the SDK
/// percent-encodes once more before encoding the whole parameter.
fn parse_metadata_filter(s: &str) -> BTreeMap<String, String> {
    let decode = |x: &str| {
        let once = percent_decode(x);
        percent_decode(&once)
    };
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches_metadata(sb: &Sandbox, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| sb.metadata.get(k) == Some(v))
}

/// Query of `GET /sandboxes` (v1).
#[derive(Debug, Default, Deserialize)]
pub struct ListV1Query {
    pub metadata: Option<String>,
    /// Another cluster of the gateway's catalog: its list, with global ids.
    pub cluster: Option<String>,
}

/// `GET /sandboxes`: every live sandbox of the caller (no pagination).
pub async fn list_v1(
    State(st): State<St>,
    uri: OriginalUri,
    headers: HeaderMap,
    E2bAuth(auth): E2bAuth,
    EQuery(q): EQuery<ListV1Query>,
) -> EResult<Response> {
    if let Some(r) = remote::list_elsewhere(&st, q.cluster.as_deref(), &uri, headers).await? {
        return Ok(r);
    }
    let want = q.metadata.as_deref().map(parse_metadata_filter).unwrap_or_default();
    let items = all_live(&st, &auth, None)?;
    let items: Vec<ListedSandbox> =
        items.iter().filter(|s| matches_metadata(s, &want)).map(|s| listed(&st, s, false)).collect();
    Ok(Json(items).into_response())
}

/// Query of `GET /v2/sandboxes`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListV2Query {
    pub metadata: Option<String>,
    /// Comma list of `running`, `paused`.
    pub state: Option<String>,
    pub template: Option<String>,
    /// `asc` or `desc` (default) by start time.
    pub order: Option<String>,
    pub started_after: Option<String>,
    /// Opaque: the offset of the next page.
    pub next_token: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
    /// Another cluster of the gateway's catalog: its list, with global ids.
    pub cluster: Option<String>,
}

/// `GET /v2/sandboxes`: filtered, paginated with `nextToken` / the `x-next-token` header.
pub async fn list_v2(
    State(st): State<St>,
    uri: OriginalUri,
    headers: HeaderMap,
    E2bAuth(auth): E2bAuth,
    EQuery(q): EQuery<ListV2Query>,
) -> EResult<Response> {
    if let Some(r) = remote::list_elsewhere(&st, q.cluster.as_deref(), &uri, headers).await? {
        return Ok(r);
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(E2bError::bad_request(format!("limit {limit} is out of range: use 1..=1000")));
    }
    let offset: usize = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t.parse().map_err(|_| E2bError::bad_request(format!("nextToken {t:?} is not one we issued")))?,
    };
    let mut want_running = true;
    if let Some(states) = &q.state {
        want_running = false;
        for s in states.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match s {
                "running" => want_running = true,
                "paused" => {}
                other => {
                    return Err(E2bError::bad_request(format!("state {other:?} is unknown: use running or paused")));
                }
            }
        }
    }
    let started_after = match q.started_after.as_deref() {
        None => None,
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| E2bError::bad_request(format!("startedAfter {t:?} is not an RFC 3339 time")))?,
        ),
    };
    let want = q.metadata.as_deref().map(parse_metadata_filter).unwrap_or_default();
    let mut items: Vec<ListedSandbox> = if want_running {
        all_live(&st, &auth, q.template.clone())?
            .iter()
            .filter(|s| matches_metadata(s, &want))
            .map(|s| listed(&st, s, false))
            .filter(|l| {
                started_after.is_none_or(|a| chrono::DateTime::parse_from_rfc3339(&l.started_at).is_ok_and(|t| t > a))
            })
            .collect()
    } else {
        vec![] // agentbox never pauses a sandbox
    };
    match q.order.as_deref() {
        None | Some("desc") => items.sort_by(|a, b| b.started_at.cmp(&a.started_at)),
        Some("asc") => items.sort_by(|a, b| a.started_at.cmp(&b.started_at)),
        Some(o) => return Err(E2bError::bad_request(format!("order {o:?} is unknown: use asc or desc"))),
    }
    let total = items.len();
    let page: Vec<ListedSandbox> = items.into_iter().skip(offset).take(limit as usize).collect();
    let next = offset + page.len();
    let mut resp = Json(page).into_response();
    if next < total
        && let Ok(v) = HeaderValue::from_str(&next.to_string())
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// `GET /sandboxes/{id}`: E2B `SandboxDetail` of a live sandbox.
pub async fn get(
    State(st): State<St>,
    E2bAuth(auth): E2bAuth,
    EPath(id): EPath<String>,
) -> EResult<Json<ListedSandbox>> {
    let sb = live_sandbox(&st, &auth, &id)?;
    Ok(Json(listed(&st, &sb, true)))
}

/// `DELETE /sandboxes/{id}`: 204; 404 when unknown, already killed (Stopping) or ended.
pub async fn kill(State(st): State<St>, E2bAuth(auth): E2bAuth, EPath(id): EPath<String>) -> EResult<StatusCode> {
    live_sandbox(&st, &auth, &id)?;
    st.app.engine.delete_sandbox(&auth, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutBody {
    pub timeout: i64,
}

fn set_idle(st: &St, auth: &AuthInfo, id: &str, secs: u64) -> EResult<()> {
    st.app.engine.set_idle_timeout(auth, id, Some(Duration::from_secs(secs))).map_err(|e| {
        // A sandbox that ended between our check and the update: gone, as far as E2B is concerned.
        if e.kind == ErrorKind::Conflict { E2bError::new(StatusCode::NOT_FOUND, e.message) } else { e.into() }
    })?;
    Ok(())
}

/// `POST /sandboxes/{id}/timeout` `{timeout: seconds}`: sets the idle timeout (running from now). 204.
pub async fn set_timeout(
    State(st): State<St>,
    E2bAuth(auth): E2bAuth,
    EPath(id): EPath<String>,
    EJson(body): EJson<TimeoutBody>,
) -> EResult<StatusCode> {
    live_sandbox(&st, &auth, &id)?;
    if body.timeout <= 0 {
        return Err(E2bError::bad_request(format!(
            "timeout {} must be a positive number of seconds; to end the sandbox now use DELETE /sandboxes/{id}",
            body.timeout
        )));
    }
    set_idle(&st, &auth, &id, body.timeout as u64)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /sandboxes/{id}/refreshes` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    #[serde(default)]
    pub duration: Option<i64>,
}

/// `POST /sandboxes/{id}/refreshes` `{duration?}`: counts as activity; a positive duration also
/// becomes the idle timeout. 204.
pub async fn refresh(
    State(st): State<St>,
    E2bAuth(auth): E2bAuth,
    EPath(id): EPath<String>,
    body: axum::body::Bytes,
) -> EResult<StatusCode> {
    let body: RefreshBody = if body.iter().all(u8::is_ascii_whitespace) {
        RefreshBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| E2bError::bad_request(format!("invalid request body: {e}")))?
    };
    live_sandbox(&st, &auth, &id)?;
    match body.duration {
        Some(d) if d > 0 => set_idle(&st, &auth, &id, d as u64)?,
        Some(d) if d < 0 => return Err(E2bError::bad_request(format!("duration {d} must not be negative"))),
        _ => st.app.engine.touch(&id),
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /sandboxes/{id}/connect` and `/v2/...`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectBody {
    #[serde(default)]
    pub timeout: Option<i64>,
    /// E2B's resume mode; meaningless without pause, ignored.
    #[serde(default)]
    #[allow(dead_code, reason = "accepted for compatibility and ignored")]
    pub memory: Option<Value>,
}

/// `POST /sandboxes/{id}/connect`: a live sandbox answers 200 like create (a positive `timeout`
/// becomes the idle timeout); an ended one is 404 (agentbox cannot resume).
pub async fn connect(
    State(st): State<St>,
    E2bAuth(auth): E2bAuth,
    EPath(id): EPath<String>,
    body: axum::body::Bytes,
) -> EResult<Json<E2bSandbox>> {
    let body: ConnectBody = if body.iter().all(u8::is_ascii_whitespace) {
        ConnectBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| E2bError::bad_request(format!("invalid request body: {e}")))?
    };
    let sb = live_sandbox(&st, &auth, &id)?;
    match body.timeout {
        Some(t) if t > 0 => set_idle(&st, &auth, &id, t as u64)?,
        _ => st.app.engine.touch(&id),
    }
    Ok(Json(answer(&st, &sb)))
}

/// Query of the log routes (E2B's `start`, `limit`, `cursor`, …; only `limit` is honoured).
#[derive(Debug, Default, Deserialize)]
pub struct LogsParams {
    pub limit: Option<usize>,
}

async fn log_entries(
    st: &St,
    auth: &AuthInfo,
    id: &str,
    limit: Option<usize>,
) -> EResult<Vec<(String, String, String)>> {
    let sb = st.app.engine.get_sandbox(auth, id)?;
    let lines = limit.unwrap_or(1000).min(10_000);
    let logs = st.app.engine.logs(auth, id, &LogsQuery { lines: Some(lines), ..Default::default() }).await?;
    let fallback = sb.started_at.unwrap_or(sb.claimed_at);
    Ok(logs
        .entries
        .into_iter()
        .map(|e| (e.timestamp.unwrap_or_else(|| fallback.clone()), e.container, e.log))
        .collect())
}

/// `GET /sandboxes/{id}/logs`: the containers' output as E2B `SandboxLogs`.
pub async fn logs_v1(
    State(st): State<St>,
    E2bAuth(auth): E2bAuth,
    EPath(id): EPath<String>,
    EQuery(q): EQuery<LogsParams>,
) -> EResult<Json<Value>> {
    let entries = log_entries(&st, &auth, &id, q.limit).await?;
    let logs: Vec<Value> = entries.iter().map(|(t, _, l)| json!({"timestamp": t, "line": l})).collect();
    let log_entries: Vec<Value> = entries
        .iter()
        .map(|(t, c, l)| json!({"timestamp": t, "message": l, "level": "info", "fields": {"container": c}}))
        .collect();
    Ok(Json(json!({"logs": logs, "logEntries": log_entries})))
}

/// `GET /v2/sandboxes/{id}/logs`: E2B `SandboxLogsV2Response`.
pub async fn logs_v2(
    State(st): State<St>,
    E2bAuth(auth): E2bAuth,
    EPath(id): EPath<String>,
    EQuery(q): EQuery<LogsParams>,
) -> EResult<Json<Value>> {
    let entries = log_entries(&st, &auth, &id, q.limit).await?;
    let logs: Vec<Value> = entries
        .iter()
        .map(|(t, c, l)| json!({"timestamp": t, "message": l, "level": "info", "fields": {"container": c}}))
        .collect();
    Ok(Json(json!({ "logs": logs })))
}

/// Query of `GET /sandboxes/{id}/metrics`: the interval asked for, in Unix seconds.
#[derive(Debug, Default, Deserialize)]
pub struct MetricsParams {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// How far `end` may lie before the sample (the SDK truncates its times to whole seconds, and the
/// request takes a moment) and `start` after it, and still include the sample.
const RANGE_SLACK_SECS: i64 = 2;

/// Does the interval `[start, end]` include `now`? 400 for a malformed interval.
fn range_includes(q: &MetricsParams, now: i64) -> EResult<bool> {
    if let Some(t) = q.start.into_iter().chain(q.end).find(|t| *t < 0) {
        return Err(E2bError::bad_request(format!("time {t} must be Unix seconds (not negative)")));
    }
    if let (Some(s), Some(e)) = (q.start, q.end)
        && s > e
    {
        return Err(E2bError::bad_request(format!("start {s} is after end {e}: swap them")));
    }
    Ok(q.start.is_none_or(|s| s <= now + RANGE_SLACK_SECS) && q.end.is_none_or(|e| e + RANGE_SLACK_SECS >= now))
}

/// A sandbox that ended while its metrics were read is gone, as far as E2B is concerned.
fn ended_is_gone(e: agentbox_core::error::AppError) -> E2bError {
    if e.kind == ErrorKind::Conflict { E2bError::new(StatusCode::NOT_FOUND, e.message) } else { e.into() }
}

/// `GET /sandboxes/{id}/metrics`: E2B `[SandboxMetric]`. agentbox keeps no history: the list holds
/// one sample taken now (see `engine::usage`), or nothing when `[start, end]` does not include now.
pub async fn metrics(
    State(st): State<St>,
    E2bAuth(auth): E2bAuth,
    EPath(id): EPath<String>,
    EQuery(q): EQuery<MetricsParams>,
) -> EResult<Json<Vec<SandboxMetric>>> {
    live_sandbox(&st, &auth, &id)?;
    if !range_includes(&q, chrono::Utc::now().timestamp())? {
        return Ok(Json(vec![]));
    }
    let m = st.app.engine.sandbox_metrics(&auth, &id).await.map_err(ended_is_gone)?;
    Ok(Json(vec![m]))
}

/// Query of `GET /sandboxes/metrics`.
#[derive(Debug, Default, Deserialize)]
pub struct BatchMetricsParams {
    /// Comma list of sandbox ids.
    pub sandbox_ids: Option<String>,
}

/// E2B `SandboxesWithMetrics`: the latest sample by sandbox id (samples of other clusters are
/// passed on as they came).
#[derive(Debug, Serialize)]
pub struct SandboxesWithMetrics {
    pub sandboxes: BTreeMap<String, Value>,
}

/// `GET /sandboxes/metrics?sandbox_ids=a,b`: one sample now of each listed live sandbox the caller
/// may see; unknown, invisible and ended ids are left out. Ids `{cluster}.{uuid}` of other
/// clusters are asked of those clusters (one request per cluster) and answered under the same id.
pub async fn metrics_batch(
    State(st): State<St>,
    headers: HeaderMap,
    E2bAuth(auth): E2bAuth,
    EQuery(q): EQuery<BatchMetricsParams>,
) -> EResult<Json<SandboxesWithMetrics>> {
    let ids: Vec<String> = q
        .sandbox_ids
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Err(E2bError::bad_request("sandbox_ids is required: a comma-separated list of sandbox ids"));
    }
    let catalog = st.app.gateway.catalog();
    // Local ids as the engine knows them → as the caller wrote them.
    let mut local: BTreeMap<String, String> = BTreeMap::new();
    let mut remote: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in ids {
        match split_sandbox_id(&id) {
            Some((c, u)) if catalog.is_local(c) => {
                local.insert(u.to_owned(), id.clone());
            }
            Some((c, u)) => remote.entry(c.to_owned()).or_default().push(u.to_owned()),
            None => {
                local.insert(id.clone(), id.clone());
            }
        }
    }
    let mut sandboxes = BTreeMap::new();
    if !local.is_empty() {
        let bare: Vec<String> = local.keys().cloned().collect();
        for (id, m) in st.app.engine.sandboxes_metrics(&auth, &bare).await? {
            let asked = local.get(&id).cloned().unwrap_or(id);
            sandboxes.insert(asked, serde_json::to_value(m).unwrap_or(Value::Null));
        }
    }
    for (cluster, uuids) in remote {
        let out = Outbound {
            method: Method::GET,
            path_and_query: format!("/sandboxes/metrics?sandbox_ids={}", uuids.join(",")),
            headers: headers.clone(),
            body: Default::default(),
        };
        let (status, _, doc) = st.app.gateway.send_json(&cluster, Plane::E2b, out).await?;
        if !status.is_success() {
            let message = doc["message"].as_str().map_or_else(|| doc.to_string(), str::to_owned);
            return Err(E2bError::new(status, format!("cluster {cluster:?}: {message}")));
        }
        if let Some(m) = doc["sandboxes"].as_object() {
            for (id, v) in m {
                sandboxes.insert(global_sandbox_id(&cluster, id), v.clone());
            }
        }
    }
    Ok(Json(SandboxesWithMetrics { sandboxes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_ids() {
        let t = |c: Option<&str>, p: &str, i: Option<&str>| TemplateRef {
            cluster: c.map(str::to_owned),
            pool: p.into(),
            image: i.map(str::to_owned),
        };
        assert_eq!(parse_template_id("py").unwrap(), t(None, "py", None));
        assert_eq!(parse_template_id("py//python:3.12").unwrap(), t(None, "py", Some("python:3.12")));
        let r = parse_template_id("c1::py//docker.io/x/y:1").unwrap();
        assert_eq!(r, t(Some("c1"), "py", Some("docker.io/x/y:1")));
        assert_eq!(r.without_cluster(), "py//docker.io/x/y:1");
        assert_eq!(parse_template_id("*::py").unwrap(), t(Some("*"), "py", None));
        assert_eq!(parse_template_id("c2::py").unwrap().without_cluster(), "py");
        assert_eq!(parse_template_id("//img").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_template_id("::py").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_template_id("eu::").unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_forwarded_create_is_serialized_with_the_fields_the_caller_sent() {
        let req: NewSandbox = serde_json::from_value(json!({
            "templateID": "web", "timeout": 60, "envVars": {"A": "1"}, "allowInternetAccess": true, "secure": true
        }))
        .unwrap();
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(
            back,
            json!({"templateID": "web", "timeout": 60, "envVars": {"A": "1"}, "allow_internet_access": true, "secure": true})
        );
    }

    #[test]
    fn metrics_range_includes_now_with_slack() {
        let q = |start, end| MetricsParams { start, end };
        assert!(range_includes(&q(None, None), 1000).unwrap());
        assert!(range_includes(&q(Some(900), Some(999)), 1000).unwrap(), "end truncated to seconds");
        assert!(!range_includes(&q(Some(900), Some(990)), 1000).unwrap(), "a past interval");
        assert!(!range_includes(&q(Some(1010), None), 1000).unwrap(), "a future interval");
        assert_eq!(range_includes(&q(Some(5), Some(4)), 1000).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(range_includes(&q(Some(-1), None), 1000).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn metadata_filter_is_double_decoded() {
        // What the SDK sends for {"a b": "x/y", "k": "v"} after the HTTP layer decoded it once.
        let m = parse_metadata_filter("a%2520b=x%252Fy&k=v");
        assert_eq!(m.get("a b").map(String::as_str), Some("x/y"));
        assert_eq!(m.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn refusals_name_the_field() {
        let ok = NewSandbox { template_id: "p".into(), secure: Some(true), ..Default::default() };
        assert!(refuse_unsupported(&ok).is_ok());
        let bad = NewSandbox { template_id: "p".into(), auto_pause: Some(true), ..Default::default() };
        assert!(refuse_unsupported(&bad).unwrap_err().message.contains("autoPause"));
        let bad =
            NewSandbox { template_id: "p".into(), auto_resume: Some(json!({"enabled": true})), ..Default::default() };
        assert!(refuse_unsupported(&bad).is_err());
        let fine =
            NewSandbox { template_id: "p".into(), auto_resume: Some(json!({"enabled": false})), ..Default::default() };
        assert!(refuse_unsupported(&fine).is_ok());
    }
}
