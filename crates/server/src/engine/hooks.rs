//! The startup gate of a create (SPEC §5 "Post-start hooks", "Timeouts"): after the slot's
//! containers run, the post-start hooks run in order, then the create waits until every runtime
//! with a readiness probe is ready. The sandbox stays `Starting` (its slot too) until both are
//! done; only then does it become `Running` and the create answers.
//!
//! Retries: a failing hook is retried with backoff (200 ms, doubling, capped at 2 s) until it
//! succeeds or the startup deadline passes; every failure is retried (a non-zero exit and an HTTP
//! error status as much as a refused connection), because a hook that talks to a service started by
//! the container's command fails until that service is up. So a hook that can never succeed costs
//! the whole startup timeout before the create answers 422; pick the startup timeout accordingly.
//! Readiness probes are polled every 100 ms; a runtime that answered ready once is not probed again.
//!
//! Each hook attempt and each probe round holds the slot's lifecycle lock and first checks that the
//! sandbox is still `Starting`, so a concurrent delete (which recycles the slot under the same
//! lock) never has a hook run against a slot that was handed to someone else.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agentbox_core::backend::ExecRequest;
use agentbox_core::model::{PostStartHookAction, RuntimeSpec, Sandbox, SandboxStatus};

use super::Engine;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Longest single exec hook attempt (shortened to what is left of the startup timeout).
const EXEC_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest single httpPost hook attempt (shortened to what is left of the startup timeout).
const HTTP_HOOK_TIMEOUT: Duration = Duration::from_secs(15);
/// Shortest attempt, so a hook started just before the deadline still gets a fair try.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);
const READY_POLL: Duration = Duration::from_millis(100);
/// Most characters of a hook's output or an HTTP answer kept in its error.
const TAIL_CHARS: usize = 300;

/// Why a sandbox did not get through its startup gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StartupError {
    /// Hook `index` still failed when the deadline passed; `error` is its last failure.
    Hook { index: usize, error: String },
    /// The deadline passed before the gate was done; the message says what was missing.
    Timeout(String),
    /// The sandbox left `Starting` (deleted, or failed by the reconciler) while we worked.
    Gone,
}

impl Engine {
    pub(super) fn still_starting(&self, sandbox_id: &str) -> bool {
        matches!(self.store.get_sandbox(sandbox_id), Ok(Some(s)) if s.status == SandboxStatus::Starting)
    }

    /// Run the sandbox's post-start hooks in order, each retried until it succeeds or `deadline`.
    pub(super) async fn run_post_start_hooks(&self, sb: &Sandbox, deadline: Instant) -> Result<(), StartupError> {
        for (index, hook) in sb.post_start_hooks.iter().enumerate() {
            let mut backoff = BACKOFF_START;
            let mut last_error: Option<String> = None;
            loop {
                if Instant::now() >= deadline {
                    return Err(match last_error {
                        Some(error) => StartupError::Hook { index, error },
                        None => StartupError::Timeout(format!(
                            "post-start hook {index} ({}) had not started when the startup timeout passed",
                            hook.describe()
                        )),
                    });
                }
                let res = {
                    let lock = self.slot_lock(&sb.pod_name);
                    let _g = lock.lock().await;
                    if !self.still_starting(&sb.sandbox_id) {
                        return Err(StartupError::Gone);
                    }
                    self.run_hook(sb, hook, deadline).await
                };
                match res {
                    Ok(()) => {
                        tracing::info!(sandbox_id = %sb.sandbox_id, index, "post-start hook succeeded");
                        break;
                    }
                    Err(e) => {
                        tracing::info!(sandbox_id = %sb.sandbox_id, index, error = %e, "post-start hook failed; retrying");
                        last_error = Some(e);
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(backoff.min(left)).await;
                        backoff = (backoff * 2).min(BACKOFF_CAP);
                    }
                }
            }
        }
        Ok(())
    }

    /// One attempt of one hook. The error is a lowercase sentence naming what failed.
    async fn run_hook(&self, sb: &Sandbox, hook: &PostStartHookAction, deadline: Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(e) = &hook.exec {
            let timeout = left.clamp(MIN_ATTEMPT, EXEC_HOOK_TIMEOUT);
            let req = ExecRequest {
                container: None,
                argv: vec!["/bin/sh".into(), "-c".into(), e.command.clone()],
                env: BTreeMap::new(),
                cwd: None,
                user: None,
                stdin: None,
                timeout,
            };
            let out = self.backend.exec(&sb.pod_name, &req).await.map_err(|e| format!("exec failed: {e}"))?;
            if out.timed_out {
                return Err(format!("command timed out after {}s", timeout.as_secs()));
            }
            if out.exit_code != 0 {
                let err = tail(&out.stderr);
                let text = if err.is_empty() { tail(&out.stdout) } else { err };
                return Err(if text.is_empty() {
                    format!("command exited with code {}", out.exit_code)
                } else {
                    format!("command exited with code {}: {text}", out.exit_code)
                });
            }
            return Ok(());
        }
        if let Some(h) = &hook.http_post {
            let ip = sb.ip.as_deref().ok_or("the sandbox has no IP to post to")?;
            let url = format!("http://{ip}:{}{}", h.port, h.path);
            let mut req = hook_client()
                .post(&url)
                .timeout(left.clamp(MIN_ATTEMPT, HTTP_HOOK_TIMEOUT))
                .json(h.body.as_ref().unwrap_or(&serde_json::json!({})));
            for (k, v) in &h.headers {
                req = req.header(k, v);
            }
            return match req.send().await {
                Ok(r) if r.status().as_u16() < 300 => Ok(()),
                Ok(r) => {
                    let code = r.status().as_u16();
                    let body = r.bytes().await.map(|b| one_line(&tail(&b))).unwrap_or_default();
                    Err(if body.is_empty() {
                        format!("POST {url} returned HTTP {code}")
                    } else {
                        format!("POST {url} returned HTTP {code}: {body}")
                    })
                }
                Err(e) => Err(format!("POST {url} failed: {}", error_chain(&e))),
            };
        }
        Err("the hook has neither exec nor httpPost".into())
    }

    /// Wait until every runtime with a readiness probe answered ready once, polling every 100 ms.
    /// On timeout the message names each runtime not ready and its last probe message.
    pub(super) async fn wait_ready(
        &self,
        sb: &Sandbox,
        runtimes: &[RuntimeSpec],
        deadline: Instant,
    ) -> Result<(), StartupError> {
        let mut pending: BTreeMap<&str, (&RuntimeSpec, String)> = runtimes
            .iter()
            .filter(|r| r.readiness_probe.is_some())
            .map(|r| (r.name.as_str(), (r, "not probed yet".to_string())))
            .collect();
        while !pending.is_empty() {
            let round = async {
                let lock = self.slot_lock(&sb.pod_name);
                let _g = lock.lock().await;
                if !self.still_starting(&sb.sandbox_id) {
                    return None;
                }
                let probes = pending.values().map(|(r, _)| self.probe(sb, r.readiness_probe.as_ref()));
                Some(futures::future::join_all(probes).await)
            };
            match tokio::time::timeout_at(deadline.into(), round).await {
                Ok(None) => return Err(StartupError::Gone),
                Ok(Some(results)) => {
                    let names: Vec<&str> = pending.keys().copied().collect();
                    for (name, res) in names.into_iter().zip(results) {
                        if res.ready {
                            pending.remove(name);
                        } else if let Some(p) = pending.get_mut(name) {
                            p.1 = res.message.unwrap_or_else(|| "not ready".into());
                        }
                    }
                }
                Err(_) => {}
            }
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let list: Vec<String> = pending.iter().map(|(n, (_, m))| format!("runtime {n}: {m}")).collect();
                return Err(StartupError::Timeout(format!("not every runtime was ready ({})", list.join("; "))));
            }
            tokio::time::sleep(READY_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        Ok(())
    }
}

/// The last [`TAIL_CHARS`] characters of some output, trimmed, lossily decoded.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let n = text.chars().count();
    text.chars().skip(n.saturating_sub(TAIL_CHARS)).collect()
}

/// Whitespace runs (an HTML error page's newlines and indentation) collapsed to one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its sources, `a: b: c` (reqwest's own message hides "connection refused").
pub(super) fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

fn hook_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use agentbox_core::fake_backend::FakeBackend;
    use agentbox_core::fake_store::MemoryStore;
    use agentbox_core::model::{ExecHookAction, HttpPostHookAction};
    use axum::http::{HeaderMap, StatusCode};
    use parking_lot::Mutex;

    use super::*;
    use crate::engine::EngineConfig;

    fn engine() -> Arc<Engine> {
        Engine::new(Arc::new(MemoryStore::new()), Arc::new(FakeBackend::new()), EngineConfig::default())
    }

    fn sandbox_at(ip: &str) -> Sandbox {
        serde_json::from_value(serde_json::json!({
            "sandboxId": "s", "namespace": "default", "poolName": "p", "podName": "p-1",
            "status": "Starting", "claimedAt": "2026-01-01T00:00:00Z", "ip": ip
        }))
        .unwrap()
    }

    fn post(port: u16, path: &str) -> PostStartHookAction {
        PostStartHookAction {
            exec: None,
            http_post: Some(HttpPostHookAction {
                port: u32::from(port),
                path: path.into(),
                body: Some(serde_json::json!({"envVars": {"A": "1"}})),
                headers: [("X-Token".to_string(), "t0k".to_string())].into(),
            }),
        }
    }

    #[tokio::test]
    async fn http_post_hook_sends_json_and_headers_and_reports_bad_statuses() {
        let seen: Arc<Mutex<Vec<(String, String, serde_json::Value)>>> = Arc::default();
        let s2 = seen.clone();
        let app = axum::Router::new()
            .route(
                "/init",
                axum::routing::post(move |h: HeaderMap, axum::Json(body): axum::Json<serde_json::Value>| async move {
                    let hv = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    s2.lock().push((hv("x-token"), hv("content-type"), body));
                    StatusCode::NO_CONTENT
                }),
            )
            .route("/fail", axum::routing::post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom\n  line two") }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let e = engine();
        let sb = sandbox_at("127.0.0.1");
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(e.run_hook(&sb, &post(port, "/init"), deadline).await, Ok(()));
        let got = seen.lock().clone();
        assert_eq!(
            got,
            [("t0k".to_string(), "application/json".to_string(), serde_json::json!({"envVars": {"A": "1"}}))]
        );
        let err = e.run_hook(&sb, &post(port, "/fail"), deadline).await.unwrap_err();
        assert_eq!(err, format!("POST http://127.0.0.1:{port}/fail returned HTTP 500: boom line two"));
        // Nothing listens on port 1 of loopback: the connection error is spelled out.
        let err = e.run_hook(&sb, &post(1, "/x"), deadline).await.unwrap_err();
        assert!(
            err.starts_with("POST http://127.0.0.1:1/x failed: ") && err.to_lowercase().contains("refused"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_hook_that_never_succeeds_fails_at_the_deadline_with_its_last_error() {
        let e = engine();
        let mut sb = sandbox_at("127.0.0.1");
        sb.post_start_hooks = vec![post(1, "/never")];
        let t = Instant::now();
        let res = e.run_post_start_hooks(&sb, t + Duration::from_millis(700)).await;
        // The sandbox is not in the store, so it does not count as Starting: the hook never runs.
        assert_eq!(res, Err(StartupError::Gone));
        e.store.put_sandbox(&sb).unwrap();
        let res = e.run_post_start_hooks(&sb, Instant::now() + Duration::from_millis(700)).await;
        match res {
            Err(StartupError::Hook { index: 0, error }) => assert!(error.contains("failed"), "{error}"),
            other => panic!("expected the hook's failure, got {other:?}"),
        }
        let exec = PostStartHookAction { exec: Some(ExecHookAction { command: "true".into() }), http_post: None };
        sb.post_start_hooks = vec![exec];
        let res = e.run_post_start_hooks(&sb, Instant::now()).await;
        assert!(matches!(res, Err(StartupError::Timeout(ref m)) if m.contains("had not started")), "{res:?}");
    }

    #[test]
    fn tail_keeps_the_end_of_long_output() {
        assert_eq!(tail(b"  short\n"), "short");
        let long = "x".repeat(1000) + "END";
        let t = tail(long.as_bytes());
        assert_eq!(t.chars().count(), TAIL_CHARS);
        assert!(t.ends_with("END"));
    }
}
