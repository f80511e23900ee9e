//! HTTP surface: Connect RPC routes for `process.Process` and `filesystem.Filesystem`,
//! plus `/health`, `/init` and `/files`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};

use crate::connect::{self, Code, ConnectError};
use crate::fs;
use crate::process::{EventRx, ProcessManager};
use crate::proto::filesystem as fsp;
use crate::proto::process as pp;
use crate::users::{Users, resolve_path};
use crate::watch::{DirWatcher, WatchSpec, WatcherRegistry};

/// Agent settings.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// User for requests naming none (E2B images use `user`; ours default to `root`).
    pub default_user: String,
    /// Replaces every user's home directory (tests; images without homes).
    pub home_override: Option<std::path::PathBuf>,
}

/// Shared state of one agent.
pub struct AppState {
    users: RwLock<Users>,
    env: RwLock<HashMap<String, String>>,
    processes: Arc<ProcessManager>,
    watchers: WatcherRegistry,
}

type S = State<Arc<AppState>>;

impl AppState {
    fn users(&self) -> Users {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn env(&self) -> HashMap<String, String> {
        self.env.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The agent's router.
pub fn router(config: Config) -> Router {
    let state = Arc::new(AppState {
        users: RwLock::new(Users {
            default_user: if config.default_user.is_empty() { "root".into() } else { config.default_user },
            home_override: config.home_override,
        }),
        env: RwLock::new(HashMap::new()),
        processes: Arc::new(ProcessManager::default()),
        watchers: WatcherRegistry::default(),
    });
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .route("/init", post(init))
        .route("/files", get(crate::files::download).post(crate::files::upload))
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect_process))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/StreamInput", post(stream_input))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/Update", post(update))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/filesystem.Filesystem/Stat", post(fs_stat))
        .route("/filesystem.Filesystem/MakeDir", post(fs_make_dir))
        .route("/filesystem.Filesystem/Move", post(fs_move))
        .route("/filesystem.Filesystem/ListDir", post(fs_list_dir))
        .route("/filesystem.Filesystem/Remove", post(fs_remove))
        .route("/filesystem.Filesystem/WatchDir", post(watch_dir))
        .route("/filesystem.Filesystem/CreateWatcher", post(create_watcher))
        .route("/filesystem.Filesystem/GetWatcherEvents", post(get_watcher_events))
        .route("/filesystem.Filesystem/RemoveWatcher", post(remove_watcher))
        .with_state(state)
}

impl AppState {
    /// The user named by a request's Basic authorization header.
    pub fn user_from(&self, headers: &HeaderMap) -> crate::users::User {
        self.users().from_headers(headers)
    }
    /// The user named by a `username` query parameter.
    pub fn user_named(&self, name: Option<&str>) -> crate::users::User {
        self.users().resolve(name)
    }
}

/// Body of `POST /init`; fields other than these are accepted and ignored.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct InitBody {
    env_vars: Option<HashMap<String, String>>,
    default_user: Option<String>,
    default_workdir: Option<String>,
}

async fn init(State(st): S, body: Bytes) -> Response {
    let parsed: InitBody = if body.is_empty() {
        InitBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                let msg = serde_json::json!({"code": 400, "message": format!("invalid init body: {e}")});
                return (StatusCode::BAD_REQUEST, axum::Json(msg)).into_response();
            }
        }
    };
    if let Some(vars) = parsed.env_vars {
        st.env.write().unwrap_or_else(|e| e.into_inner()).extend(vars);
    }
    if let Some(u) = parsed.default_user.filter(|u| !u.is_empty()) {
        st.users.write().unwrap_or_else(|e| e.into_inner()).default_user = u;
    }
    let _ = parsed.default_workdir;
    StatusCode::NO_CONTENT.into_response()
}

fn keepalive_interval(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get("keepalive-ping-interval")?.to_str().ok()?.trim().parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Events of a process as a stream of responses, with keepalives every `ka`.
fn event_stream<T>(
    rx: EventRx,
    ka: Option<Duration>,
    wrap: fn(pp::ProcessEvent) -> T,
) -> impl Stream<Item = Result<T, ConnectError>> + Send + 'static
where
    T: Send + 'static,
{
    futures::stream::unfold(rx, move |mut rx| async move {
        let ev = match ka {
            Some(d) => tokio::select! {
                ev = rx.recv() => ev,
                _ = tokio::time::sleep(d) => Some(pp::ProcessEvent { keepalive: Some(pp::KeepAlive {}), ..Default::default() }),
            },
            None => rx.recv().await,
        };
        ev.map(|ev| (Ok(wrap(ev)), rx))
    })
}

async fn start(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let (codec, mut req) = match connect::stream_request::<pp::StartRequest>(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if headers.contains_key(crate::users::INHERIT_CWD_HEADER)
        && let Some(p) = req.process.as_mut()
        && p.cwd.as_deref().is_none_or(str::is_empty)
    {
        p.cwd = std::env::current_dir().ok().map(|d| d.to_string_lossy().into_owned());
    }
    let user = st.user_from(&headers);
    match st.processes.start(req, &user, &st.env()) {
        Ok(rx) => connect::stream_response(
            codec,
            event_stream(rx, keepalive_interval(&headers), |e| pp::StartResponse { event: Some(e) }),
        ),
        Err(e) => connect::stream_error(codec, e),
    }
}

async fn connect_process(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let (codec, req) = match connect::stream_request::<pp::ConnectRequest>(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    match st.processes.connect(req.process.as_ref()) {
        Ok(rx) => connect::stream_response(
            codec,
            event_stream(rx, keepalive_interval(&headers), |e| pp::ConnectResponse { event: Some(e) }),
        ),
        Err(e) => connect::stream_error(codec, e),
    }
}

async fn list(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    connect::unary(&headers, &body, |_: pp::ListRequest| async move {
        Ok(pp::ListResponse { processes: st.processes.list() })
    })
    .await
}

fn input_bytes(input: Option<pp::ProcessInput>) -> Vec<u8> {
    input.and_then(|i| i.stdin.or(i.pty)).unwrap_or_default()
}

async fn send_input(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    connect::unary(&headers, &body, |req: pp::SendInputRequest| async move {
        st.processes.send_input(req.process.as_ref(), &input_bytes(req.input)).await?;
        Ok(pp::SendInputResponse {})
    })
    .await
}

async fn stream_input(State(st): S, headers: HeaderMap, body: Body) -> Response {
    let codec = match connect::stream_codec(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let mut buf = bytes::BytesMut::new();
        let mut selector: Option<pp::ProcessSelector> = None;
        let mut body = body.into_data_stream();
        loop {
            while let Some((flags, payload)) = connect::take_frame(&mut buf) {
                if flags & 0x02 != 0 {
                    continue;
                }
                let msg: pp::StreamInputRequest = connect::decode_payload(codec, &payload)?;
                if let Some(start) = msg.start {
                    selector = start.process;
                    st.processes.connect(selector.as_ref()).map(drop)?;
                } else if let Some(data) = msg.data {
                    if selector.is_none() {
                        return Err(ConnectError::new(Code::FailedPrecondition, "send a start event before data"));
                    }
                    st.processes.send_input(selector.as_ref(), &input_bytes(data.input)).await?;
                }
            }
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(ConnectError::new(Code::Canceled, format!("request body: {e}"))),
                None => return Ok(pp::StreamInputResponse {}),
            }
        }
    }
    .await;
    connect::stream_response(codec, futures::stream::iter([result]))
}

async fn send_signal(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    connect::unary(&headers, &body, |req: pp::SendSignalRequest| async move {
        st.processes.signal(req.process.as_ref(), req.signal)?;
        Ok(pp::SendSignalResponse {})
    })
    .await
}

async fn update(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    connect::unary(&headers, &body, |req: pp::UpdateRequest| async move {
        if let Some(size) = req.pty.and_then(|p| p.size) {
            st.processes.resize(req.process.as_ref(), size.cols, size.rows)?;
        }
        Ok(pp::UpdateResponse {})
    })
    .await
}

async fn close_stdin(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    connect::unary(&headers, &body, |req: pp::CloseStdinRequest| async move {
        st.processes.close_stdin(req.process.as_ref()).await?;
        Ok(pp::CloseStdinResponse {})
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConnectError> + Send + 'static,
) -> Result<T, ConnectError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ConnectError::new(Code::Internal, e.to_string()))?
}

async fn fs_stat(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let user = st.user_from(&headers);
    connect::unary(&headers, &body, |req: fsp::PathRequest| async move {
        let path = resolve_path(&user, &req.path);
        let entry = blocking(move || fs::stat(&path)).await?;
        Ok(fsp::EntryResponse { entry: Some(entry) })
    })
    .await
}

async fn fs_make_dir(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let user = st.user_from(&headers);
    connect::unary(&headers, &body, |req: fsp::PathRequest| async move {
        let path = resolve_path(&user, &req.path);
        let entry = blocking(move || fs::make_dir(&user, &path)).await?;
        Ok(fsp::EntryResponse { entry: Some(entry) })
    })
    .await
}

async fn fs_move(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let user = st.user_from(&headers);
    connect::unary(&headers, &body, |req: fsp::MoveRequest| async move {
        let src = resolve_path(&user, &req.source);
        let dst = resolve_path(&user, &req.destination);
        let entry = blocking(move || fs::rename(&user, &src, &dst)).await?;
        Ok(fsp::EntryResponse { entry: Some(entry) })
    })
    .await
}

async fn fs_list_dir(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let user = st.user_from(&headers);
    connect::unary(&headers, &body, |req: fsp::ListDirRequest| async move {
        let path = resolve_path(&user, &req.path);
        let entries = blocking(move || fs::list_dir(&path, req.depth)).await?;
        Ok(fsp::ListDirResponse { entries })
    })
    .await
}

async fn fs_remove(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let user = st.user_from(&headers);
    connect::unary(&headers, &body, |req: fsp::PathRequest| async move {
        let path = resolve_path(&user, &req.path);
        blocking(move || fs::remove(&path)).await?;
        Ok(fsp::Empty {})
    })
    .await
}

async fn watch_dir(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let (codec, req) = match connect::stream_request::<fsp::WatchDirRequest>(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let user = st.user_from(&headers);
    let spec = WatchSpec::from_request(resolve_path(&user, &req.path), &req);
    match DirWatcher::open(spec).await {
        Ok(w) => {
            let ka = keepalive_interval(&headers).unwrap_or(crate::watch::DEFAULT_KEEPALIVE);
            connect::stream_response(codec, crate::watch::watch_stream(w, ka))
        }
        Err(e) => connect::stream_error(codec, e),
    }
}

async fn create_watcher(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let user = st.user_from(&headers);
    connect::unary(&headers, &body, |req: fsp::WatchDirRequest| async move {
        let spec = WatchSpec::from_request(resolve_path(&user, &req.path), &req);
        Ok(fsp::WatcherId { watcher_id: st.watchers.create(spec).await? })
    })
    .await
}

async fn get_watcher_events(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    connect::unary(&headers, &body, |req: fsp::WatcherId| async move {
        Ok(fsp::GetWatcherEventsResponse { events: st.watchers.take_events(&req.watcher_id)? })
    })
    .await
}

async fn remove_watcher(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    connect::unary(&headers, &body, |req: fsp::WatcherId| async move {
        st.watchers.remove(&req.watcher_id)?;
        Ok(fsp::Empty {})
    })
    .await
}

/// Query of `/files`.
#[derive(serde::Deserialize, Default)]
pub struct FilesQuery {
    /// Target path (relative: to the user's home).
    pub path: Option<String>,
    /// Acting user.
    pub username: Option<String>,
}

/// A plain (non-Connect) JSON error of the `/files` and `/init` endpoints.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message.into()});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
