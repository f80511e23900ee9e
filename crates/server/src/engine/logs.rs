//! Logs (read and follow) and per-runtime readiness of a sandbox.
//!
//! Two log sources: `stdout` (default), the containers' stdout/stderr as the backend keeps them;
//! or the name of a runtime of the pool's template with a `logDir`, read *inside* the sandbox
//! through the backend's exec (a file, or every regular file of a directory in name order).
//! Following a runtime source polls the logDir every 500 ms with exec (one exec to list sizes,
//! one per grown file): there is no streaming exec, so a new line shows up within ~500 ms.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentbox_core::backend::{ExecOutput, ExecRequest, LogLine};
use agentbox_core::error::AppError;
use agentbox_core::model::{ReadinessProbe, RuntimeSpec, Sandbox, SandboxStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::Engine;
use crate::auth::AuthInfo;

/// Most lines a log request may ask for.
pub const MAX_LOG_LINES: usize = 10_000;
const RUNTIME_POLL: Duration = Duration::from_millis(500);
const LIVE_CHECK: Duration = Duration::from_millis(500);
/// Most bytes read from one runtime log file per exec (the exec capture limit is 4 MiB).
const RUNTIME_CHUNK: u64 = 1 << 20;
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Query of `GET /v1/sandboxes/{id}/logs` and `/logs/stream`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Container name (default: every container). `stdout` source only.
    pub container: Option<String>,
    /// Last N lines, 0 = all (default), at most 10000.
    pub lines: Option<usize>,
    /// `stdout` (default): the containers' stdout/stderr; or the name of a runtime of the pool's
    /// template that has a `logDir` (read inside the sandbox).
    pub source: Option<String>,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// RFC 3339 (microseconds, UTC): when the line was written, as observed by the backend
    /// (local backend: within ~20 ms). Absent when unknown (runtime sources; lines written while
    /// the server was down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Container name (`stdout` source) or runtime name (runtime source).
    pub container: String,
    pub log: String,
}

impl From<LogLine> for LogEntry {
    fn from(l: LogLine) -> Self {
        LogEntry { timestamp: l.timestamp, container: l.container, log: l.line }
    }
}

/// Where log entries came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The containers' stdout/stderr.
    Live,
    /// A runtime's `logDir` inside the sandbox.
    Runtime,
}

/// Answer of `GET /v1/sandboxes/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLogs {
    pub sandbox_id: String,
    pub namespace: String,
    pub pod_name: String,
    pub entries: Vec<LogEntry>,
    /// Bytes of the returned lines (with their newlines).
    pub total_bytes: u64,
    /// True when `lines` cut older output, or the output was larger than the capture limit.
    pub truncated: bool,
    pub source: LogSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_name: Option<String>,
}

/// One item of a followed log: a line, then a final marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowItem {
    Entry(LogEntry),
    /// The stream ends (the sandbox ended or was not live); written as
    /// `{"_meta":true,"source":…,"truncated":…}`.
    End {
        source: LogSource,
        truncated: bool,
    },
}

/// The final line of a log stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogStreamMeta {
    /// Always true: marks the end of the stream.
    #[serde(rename = "_meta")]
    pub meta: bool,
    pub source: LogSource,
    pub truncated: bool,
}

impl FollowItem {
    /// One NDJSON line (with its newline).
    pub fn to_ndjson(&self) -> String {
        let v = match self {
            FollowItem::Entry(e) => {
                serde_json::json!({"timestamp": e.timestamp, "container": e.container, "log": e.log})
            }
            FollowItem::End { source, truncated } => {
                serde_json::to_value(LogStreamMeta { meta: true, source: *source, truncated: *truncated })
                    .unwrap_or_default()
            }
        };
        format!("{v}\n")
    }
}

/// Readiness of one runtime endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndpointReadiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Answer of `GET /v1/sandboxes/{id}/is_ready` (200 when `ready`, else 503).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessResult {
    pub sandbox_id: String,
    pub ready: bool,
    pub endpoints: BTreeMap<String, EndpointReadiness>,
}

/// What a validated log request reads.
enum Source {
    Stdout { container: Option<String> },
    Runtime { name: String, dir: String },
}

/// Lists `<size> <path>` of the logDir's regular files (or of the file itself); exit 3 = missing.
const LIST_SCRIPT: &str = r#"d=$1
[ -e "$d" ] || { echo "$d does not exist" >&2; exit 3; }
if [ -d "$d" ]; then
  for f in "$d"/*; do if [ -f "$f" ]; then printf '%s %s\n' "$(wc -c < "$f")" "$f"; fi; done
else
  printf '%s %s\n' "$(wc -c < "$d")" "$d"
fi
"#;
/// The first `$2` bytes of `$1`, last `$3` lines of them (0 = all).
const HEAD_SCRIPT: &str = r#"if [ "$3" -gt 0 ]; then head -c "$2" "$1" | tail -n "$3"; else head -c "$2" "$1"; fi"#;
/// `$3` bytes of `$1` from byte offset `$2` (0-based).
const RANGE_SCRIPT: &str = r#"tail -c +"$(($2 + 1))" "$1" | head -c "$3""#;

fn sh(script: &str, args: &[String]) -> Vec<String> {
    let mut v = vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string(), "sh".to_string()];
    v.extend_from_slice(args);
    v
}

fn split_log_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().map(str::to_owned).collect()
}

impl Engine {
    fn check_lines(q: &LogsQuery) -> Result<usize, AppError> {
        let lines = q.lines.unwrap_or(0);
        if lines > MAX_LOG_LINES {
            return Err(AppError::bad_request(format!(
                "lines {lines} is out of range: use 0..={MAX_LOG_LINES} (0 = all)"
            )));
        }
        Ok(lines)
    }

    /// Resolve `source`/`container` against the sandbox and its pool.
    fn log_source(&self, sb: &Sandbox, q: &LogsQuery) -> Result<Source, AppError> {
        match q.source.as_deref().filter(|s| !s.is_empty()) {
            None | Some("stdout") => {
                if let Some(c) = &q.container
                    && !sb.container_images.is_empty()
                    && !sb.container_images.contains_key(c)
                {
                    let names: Vec<&str> = sb.container_images.keys().map(String::as_str).collect();
                    return Err(AppError::not_found(format!(
                        "container {c:?} not found in sandbox {}; its containers are {names:?}",
                        sb.sandbox_id
                    )));
                }
                Ok(Source::Stdout { container: q.container.clone() })
            }
            Some(name) => {
                let runtimes = self.runtimes_of(sb);
                let with_dir: Vec<&RuntimeSpec> = runtimes.iter().filter(|r| r.log_dir.is_some()).collect();
                match with_dir.iter().find(|r| r.name == name) {
                    Some(r) => Ok(Source::Runtime { name: r.name.clone(), dir: r.log_dir.clone().unwrap_or_default() }),
                    None => {
                        let names: Vec<&str> = with_dir.iter().map(|r| r.name.as_str()).collect();
                        Err(AppError::bad_request(format!(
                            "source {name:?} is neither \"stdout\" nor a runtime with a logDir; use \"stdout\" or one of {names:?}"
                        )))
                    }
                }
            }
        }
    }

    pub(super) fn runtimes_of(&self, sb: &Sandbox) -> Vec<RuntimeSpec> {
        self.store
            .get_pool(&sb.namespace, &sb.pool_name)
            .ok()
            .flatten()
            .map(|p| p.spec.template.runtimes)
            .unwrap_or_default()
    }

    fn require_running(sb: &Sandbox, what: &str) -> Result<(), AppError> {
        if sb.status != SandboxStatus::Running {
            return Err(AppError::conflict(format!(
                "sandbox {} is {}; {what} needs a Running sandbox",
                sb.sandbox_id,
                sb.status.as_str()
            )));
        }
        Ok(())
    }

    /// The last lines of a live sandbox's logs. Ended sandboxes answer 404: their container logs
    /// were discarded with their slot. Counts as activity.
    pub async fn logs(&self, auth: &AuthInfo, id: &str, q: &LogsQuery) -> Result<SandboxLogs, AppError> {
        let lines = Self::check_lines(q)?;
        let sb = self.visible_sandbox(auth, id)?;
        if sb.status.is_terminal() {
            return Err(AppError::not_found(format!(
                "sandbox {id} already ended ({}); its container logs were discarded with its slot",
                sb.status.as_str()
            )));
        }
        let source = self.log_source(&sb, q)?;
        self.touch(id);
        let (mut entries, mut truncated, runtime_name, src) = match source {
            Source::Stdout { container } => {
                // One more than asked: tells whether `lines` cut anything.
                let ask = if lines == 0 { 0 } else { lines + 1 };
                let got = self.backend.logs(&sb.pod_name, container.as_deref(), ask).await?;
                let dropped = got.iter().any(|l| l.older_dropped);
                (got.into_iter().map(LogEntry::from).collect::<Vec<_>>(), dropped, None, LogSource::Live)
            }
            Source::Runtime { name, dir } => {
                Self::require_running(&sb, "reading runtime logs")?;
                let (entries, _, truncated) = self.runtime_snapshot(&sb.pod_name, &name, &dir, lines).await?;
                (entries, truncated, Some(name), LogSource::Runtime)
            }
        };
        if lines > 0 && entries.len() > lines {
            entries.drain(..entries.len() - lines);
            truncated = true;
        }
        Ok(SandboxLogs {
            sandbox_id: sb.sandbox_id,
            namespace: sb.namespace,
            pod_name: sb.pod_name,
            total_bytes: entries.iter().map(|e| e.log.len() as u64 + 1).sum(),
            entries,
            truncated,
            source: src,
            runtime_name,
        })
    }

    /// Follow a sandbox's logs like `tail -f`: the last `lines` lines, then new ones, until the
    /// receiver is dropped or the sandbox ends; then a final [`FollowItem::End`]. A sandbox that
    /// is not live gets only the end marker. While the receiver is open the sandbox counts as
    /// active.
    pub async fn follow_logs(
        self: &Arc<Self>,
        auth: &AuthInfo,
        id: &str,
        q: &LogsQuery,
    ) -> Result<mpsc::Receiver<FollowItem>, AppError> {
        let lines = Self::check_lines(q)?;
        let sb = self.visible_sandbox(auth, id)?;
        let source = self.log_source(&sb, q)?;
        let kind = match source {
            Source::Stdout { .. } => LogSource::Live,
            Source::Runtime { .. } => LogSource::Runtime,
        };
        let (tx, rx) = mpsc::channel(256);
        if !matches!(sb.status, SandboxStatus::Starting | SandboxStatus::Running) {
            let _ = tx.try_send(FollowItem::End { source: kind, truncated: false });
            return Ok(rx);
        }
        self.touch(id);
        let me = Arc::clone(self);
        let id = id.to_owned();
        match source {
            Source::Stdout { container } => {
                let mut inner = self.backend.follow_logs(&sb.pod_name, container.as_deref(), lines).await?;
                tokio::spawn(async move {
                    let mut check = tokio::time::interval(LIVE_CHECK);
                    loop {
                        tokio::select! {
                            _ = tx.closed() => return,
                            l = inner.recv() => match l {
                                Some(l) => {
                                    if tx.send(FollowItem::Entry(l.into())).await.is_err() {
                                        return;
                                    }
                                }
                                None => break,
                            },
                            _ = check.tick() => {
                                if !me.is_live(&id) {
                                    break;
                                }
                                me.touch(&id);
                            }
                        }
                    }
                    let _ = tx.send(FollowItem::End { source: LogSource::Live, truncated: false }).await;
                });
            }
            Source::Runtime { name, dir } => {
                Self::require_running(&sb, "following runtime logs")?;
                let (initial, sizes, truncated) = self.runtime_snapshot(&sb.pod_name, &name, &dir, lines).await?;
                let pod = sb.pod_name.clone();
                tokio::spawn(async move {
                    for e in initial {
                        if tx.send(FollowItem::Entry(e)).await.is_err() {
                            return;
                        }
                    }
                    let mut follower = RuntimeFollower { sizes, partial: BTreeMap::new() };
                    loop {
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(RUNTIME_POLL) => {}
                        }
                        if !me.is_live(&id) {
                            break;
                        }
                        me.touch(&id);
                        for e in follower.poll(&me, &pod, &name, &dir).await {
                            if tx.send(FollowItem::Entry(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    let _ = tx.send(FollowItem::End { source: LogSource::Runtime, truncated }).await;
                });
            }
        }
        Ok(rx)
    }

    fn is_live(&self, id: &str) -> bool {
        matches!(self.store.get_sandbox(id), Ok(Some(s)) if matches!(s.status, SandboxStatus::Starting | SandboxStatus::Running))
    }

    async fn sh_exec(&self, pod: &str, argv: Vec<String>) -> Result<ExecOutput, AppError> {
        let req = ExecRequest {
            container: None,
            argv,
            env: BTreeMap::new(),
            cwd: None,
            user: None,
            stdin: None,
            timeout: Duration::from_secs(30),
        };
        Ok(self.backend.exec(pod, &req).await?)
    }

    /// `(path, size)` of the files of a runtime's logDir.
    async fn runtime_files(&self, pod: &str, name: &str, dir: &str) -> Result<Vec<(String, u64)>, AppError> {
        let out = self.sh_exec(pod, sh(LIST_SCRIPT, &[dir.to_string()])).await?;
        match out.exit_code {
            0 => {}
            3 => {
                return Err(AppError::not_found(format!(
                    "runtime {name:?} has no logs yet: its logDir {dir} does not exist in the sandbox"
                )));
            }
            n => {
                return Err(AppError::unavailable(format!(
                    "reading the logDir {dir} of runtime {name:?} failed (exit {n}): {}; the sandbox image needs sh, wc, head and tail",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (size, path) = l.trim_start().split_once(' ')?;
                Some((path.to_string(), size.trim().parse().ok()?))
            })
            .collect())
    }

    /// The last `lines` (0 = all) lines of a runtime's logDir (of each file, in name order, then
    /// of them all), the sizes they were read up to, and whether `lines` or the capture limit cut
    /// anything.
    async fn runtime_snapshot(
        &self,
        pod: &str,
        name: &str,
        dir: &str,
        lines: usize,
    ) -> Result<(Vec<LogEntry>, BTreeMap<String, u64>, bool), AppError> {
        let files = self.runtime_files(pod, name, dir).await?;
        let mut entries = Vec::new();
        let mut truncated = false;
        let mut sizes = BTreeMap::new();
        // One more than asked: tells whether `lines` cut anything.
        let ask = if lines == 0 { 0 } else { lines + 1 };
        for (path, size) in files {
            let out = self.sh_exec(pod, sh(HEAD_SCRIPT, &[path.clone(), size.to_string(), ask.to_string()])).await?;
            truncated |= out.truncated;
            entries.extend(split_log_lines(&out.stdout).into_iter().map(|log| LogEntry {
                timestamp: None,
                container: name.to_string(),
                log,
            }));
            sizes.insert(path, size);
        }
        if lines > 0 && entries.len() > lines {
            entries.drain(..entries.len() - lines);
            truncated = true;
        }
        Ok((entries, sizes, truncated))
    }

    /// Probe every runtime of the sandbox's pool (see [`ReadinessResult`]).
    pub async fn is_ready(&self, auth: &AuthInfo, id: &str) -> Result<ReadinessResult, AppError> {
        let sb = self.visible_sandbox(auth, id)?;
        let runtimes = self.runtimes_of(&sb);
        let mut endpoints = BTreeMap::new();
        if sb.status != SandboxStatus::Running {
            let message = format!("sandbox is in {} phase, not Running", sb.status.as_str());
            for r in &runtimes {
                endpoints.insert(r.name.clone(), EndpointReadiness { ready: false, message: Some(message.clone()) });
            }
            return Ok(ReadinessResult { sandbox_id: sb.sandbox_id, ready: false, endpoints });
        }
        // Not activity: a readiness poller must not keep an abandoned sandbox alive.
        let probes = runtimes.iter().map(|r| self.probe(&sb, r.readiness_probe.as_ref()));
        let results = futures::future::join_all(probes).await;
        for (r, res) in runtimes.iter().zip(results) {
            endpoints.insert(r.name.clone(), res);
        }
        let ready = endpoints.values().all(|e| e.ready);
        Ok(ReadinessResult { sandbox_id: sb.sandbox_id, ready, endpoints })
    }

    /// Probe one runtime once (no probe = ready); shared with the readiness-gated create.
    pub(super) async fn probe(&self, sb: &Sandbox, probe: Option<&ReadinessProbe>) -> EndpointReadiness {
        let not = |m: String| EndpointReadiness { ready: false, message: Some(m) };
        let ok = EndpointReadiness { ready: true, message: None };
        let Some(p) = probe else { return ok };
        if let Some(h) = &p.http_get {
            let Some(ip) = &sb.ip else { return not("probe request failed: the sandbox has no IP".into()) };
            let path = h.path.as_deref().unwrap_or("/");
            let sep = if path.starts_with('/') { "" } else { "/" };
            let url = format!("http://{ip}:{}{sep}{path}", h.port);
            return match probe_client().get(&url).send().await {
                Ok(r) if r.status().is_success() || r.status().is_redirection() => ok,
                Ok(r) => not(format!("probe returned HTTP {}", r.status().as_u16())),
                Err(e) => not(format!("probe request failed: {}", super::hooks::error_chain(&e))),
            };
        }
        if let Some(e) = &p.exec {
            if e.command.is_empty() {
                return not("exec probe has an empty command".into());
            }
            let req = ExecRequest {
                container: None,
                argv: e.command.clone(),
                env: BTreeMap::new(),
                cwd: None,
                user: None,
                stdin: None,
                timeout: PROBE_TIMEOUT,
            };
            return match self.backend.exec(&sb.pod_name, &req).await {
                Ok(out) if out.exit_code == 0 => ok,
                Ok(out) if out.timed_out => not(format!("probe command timed out after {}s", PROBE_TIMEOUT.as_secs())),
                Ok(out) => {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let err = err.trim();
                    let tail: String = err.chars().take(200).collect();
                    not(if tail.is_empty() {
                        format!("probe command exited with code {}", out.exit_code)
                    } else {
                        format!("probe command exited with code {}: {tail}", out.exit_code)
                    })
                }
                Err(e) => not(format!("probe command failed: {e}")),
            };
        }
        ok
    }
}

fn probe_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default()
    })
}

/// Polls a runtime logDir: the bytes each file grew by since the last poll.
struct RuntimeFollower {
    sizes: BTreeMap<String, u64>,
    /// Unterminated last line per file.
    partial: BTreeMap<String, Vec<u8>>,
}

impl RuntimeFollower {
    async fn poll(&mut self, e: &Engine, pod: &str, name: &str, dir: &str) -> Vec<LogEntry> {
        let Ok(files) = e.runtime_files(pod, name, dir).await else { return vec![] };
        let mut out = Vec::new();
        for (path, size) in files {
            let mut from = self.sizes.get(&path).copied().unwrap_or(0);
            if size < from {
                // Truncated or replaced: start over.
                from = 0;
                self.partial.remove(&path);
            }
            if size == from {
                continue;
            }
            let len = (size - from).min(RUNTIME_CHUNK);
            let argv = sh(RANGE_SCRIPT, &[path.clone(), from.to_string(), len.to_string()]);
            let Ok(res) = e.sh_exec(pod, argv).await else { continue };
            if res.exit_code != 0 {
                continue;
            }
            self.sizes.insert(path.clone(), from + res.stdout.len() as u64);
            let mut data = self.partial.remove(&path).unwrap_or_default();
            data.extend_from_slice(&res.stdout);
            let cut = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            let rest = data.split_off(cut);
            if !rest.is_empty() {
                self.partial.insert(path.clone(), rest);
            }
            out.extend(split_log_lines(&data).into_iter().map(|log| LogEntry {
                timestamp: None,
                container: name.into(),
                log,
            }));
        }
        out
    }
}
