//! One-shot exec (`POST /v1/sandboxes/{id}/exec`) and its streaming form (`…/exec/stream`).
//!
//! Both run the command through the sandbox's agent when it answers (see [`crate::agent`]): the
//! output arrives as the process writes it, over a pooled connection, without a runtime exec per
//! command. When the agent is not reachable (none configured, a container it was not started in,
//! a named non-main container) the backend's exec runs it instead; its output then arrives in one
//! piece at the end. Either way the caller sees the same [`ExecEvent`] sequence: output chunks,
//! then exactly one `Exit`.

use std::time::{Duration, Instant};

use agentbox_core::backend::{Backend, ExecRequest};
use agentbox_core::error::AppError;
use agentbox_core::model::{Sandbox, SandboxStatus};
use agentbox_envd::proto::process as pp;
use std::sync::Arc;
use tokio::sync::mpsc;

use super::Engine;
use super::sandboxes::{ExecCommand, ExecRequestBody, ExecResult};
use crate::agent::{self, AgentClient, AgentError, Caller, ProcessStream};
use crate::auth::AuthInfo;

/// Output kept per stream by the buffered exec; the rest is dropped and `truncated` set.
pub const EXEC_CAPTURE_LIMIT: usize = 4 << 20;

/// What a one-shot exec produces, in order: output chunks, then one `Exit` (or one `Error`).
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended. `exit_code` is 124 when it was killed at its deadline, 128+N when
    /// signal N killed it.
    Exit {
        exit_code: i32,
        timed_out: bool,
        truncated: bool,
    },
    /// The run broke off (the agent went away mid-stream); no `Exit` follows.
    Error(String),
}

/// Limits of the two exec forms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExecLimits {
    pub default_timeout: u64,
    pub max_timeout: u64,
}

/// `POST …/exec`: the answer holds the whole output, so commands are short.
pub(crate) const BUFFERED: ExecLimits = ExecLimits { default_timeout: 30, max_timeout: 300 };
/// `POST …/exec/stream`: for long commands (builds, test suites).
pub(crate) const STREAMED: ExecLimits = ExecLimits { default_timeout: 600, max_timeout: 86_400 };

/// Checks a request and turns it into the backend's form.
pub(crate) fn validate(body: ExecRequestBody, limits: ExecLimits) -> Result<ExecRequest, AppError> {
    let argv = match body.command {
        ExecCommand::Shell(s) if !s.trim().is_empty() => vec!["/bin/sh".to_string(), "-c".to_string(), s],
        ExecCommand::Argv(v) if !v.is_empty() && !v[0].is_empty() => v,
        _ => return Err(AppError::bad_request("command is required: give a shell string or a non-empty argv list")),
    };
    let timeout = body.timeout_seconds.unwrap_or(limits.default_timeout);
    if !(1..=limits.max_timeout).contains(&timeout) {
        return Err(AppError::bad_request(format!(
            "timeoutSeconds {timeout} is out of range: use 1..={}",
            limits.max_timeout
        )));
    }
    if let Some(cwd) = &body.cwd
        && !cwd.starts_with('/')
    {
        return Err(AppError::bad_request(format!("cwd {cwd:?} must be an absolute path")));
    }
    if let Some(u) = &body.user {
        let ok =
            u.split(':').count() <= 2 && u.split(':').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(AppError::bad_request(format!(
                "user {u:?} must be numeric uid or uid:gid, e.g. \"1000:1000\""
            )));
        }
    }
    Ok(ExecRequest {
        container: body.container,
        argv,
        env: body.env,
        cwd: body.cwd,
        user: body.user,
        stdin: body.stdin.map(String::into_bytes),
        timeout: Duration::from_secs(timeout),
    })
}

impl Engine {
    /// The sandbox `id` if the caller sees it and it is Running (409 otherwise).
    fn running_sandbox(&self, auth: &AuthInfo, id: &str, what: &str) -> Result<Sandbox, AppError> {
        let sb = self.visible_sandbox(auth, id)?;
        if sb.status != SandboxStatus::Running {
            return Err(AppError::conflict(format!(
                "sandbox {id} is {}; {what} needs a Running sandbox",
                sb.status.as_str()
            )));
        }
        Ok(sb)
    }

    /// The agent's address in `sb`, when the engine uses agents and the sandbox has an address.
    pub(crate) fn agent_ip(&self, sb: &Sandbox) -> Option<String> {
        self.cfg.agent_port?;
        sb.ip.clone().filter(|ip| !ip.is_empty())
    }

    /// After the agent of `sb` refused a connection: asks the backend to start it again (it may
    /// have died or been killed inside the sandbox, or still be starting). True when it was restarted.
    pub(crate) async fn revive_agent(&self, sb: &Sandbox) -> bool {
        match self.backend.ensure_agent(&sb.pod_name).await {
            Ok(restarted) => {
                if restarted {
                    tracing::info!(sandbox_id = %sb.sandbox_id, "the sandbox's agent was not answering; restarted it");
                }
                restarted
            }
            Err(e) => {
                tracing::debug!(sandbox_id = %sb.sandbox_id, error = %e, "cannot restart the agent");
                false
            }
        }
    }

    /// Runs a command and returns its whole output (`POST …/exec`).
    pub async fn exec(&self, auth: &AuthInfo, id: &str, body: ExecRequestBody) -> Result<ExecResult, AppError> {
        let req = validate(body, BUFFERED)?;
        let sb = self.running_sandbox(auth, id, "exec")?;
        let started = Instant::now();
        let mut rx = self.start_exec(&sb, req).await?;
        let (mut stdout, mut stderr, mut cut) = (Vec::new(), Vec::new(), false);
        let keep = |buf: &mut Vec<u8>, chunk: Vec<u8>, cut: &mut bool| {
            let room = EXEC_CAPTURE_LIMIT.saturating_sub(buf.len());
            *cut |= chunk.len() > room;
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        };
        while let Some(ev) = rx.recv().await {
            match ev {
                ExecEvent::Stdout(c) => keep(&mut stdout, c, &mut cut),
                ExecEvent::Stderr(c) => keep(&mut stderr, c, &mut cut),
                ExecEvent::Exit { exit_code, timed_out, truncated } => {
                    self.touch(id);
                    return Ok(ExecResult {
                        exit_code,
                        stdout: String::from_utf8_lossy(&stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&stderr).into_owned(),
                        duration_ms: started.elapsed().as_millis() as u64,
                        timed_out,
                        truncated: truncated || cut,
                    });
                }
                ExecEvent::Error(m) => {
                    return Err(AppError::unavailable(format!("exec in sandbox {id} broke off: {m}")));
                }
            }
        }
        Err(AppError::unavailable(format!("exec in sandbox {id} ended without an exit status")))
    }

    /// Starts a command for `POST …/exec/stream`; the events arrive as the command runs. Dropping
    /// the receiver kills the command.
    pub async fn exec_stream(
        &self,
        auth: &AuthInfo,
        id: &str,
        body: ExecRequestBody,
    ) -> Result<mpsc::Receiver<ExecEvent>, AppError> {
        let req = validate(body, STREAMED)?;
        let sb = self.running_sandbox(auth, id, "exec")?;
        self.start_exec(&sb, req).await
    }

    /// Starts `req` in `sb` through the agent, or the backend when the agent is unavailable.
    pub(crate) async fn start_exec(
        &self,
        sb: &Sandbox,
        req: ExecRequest,
    ) -> Result<mpsc::Receiver<ExecEvent>, AppError> {
        self.touch(&sb.sandbox_id);
        let (tx, rx) = mpsc::channel(64);
        if req.container.is_none()
            && let Some(ip) = self.agent_ip(sb)
        {
            let start = pp::StartRequest {
                process: Some(pp::ProcessConfig {
                    cmd: req.argv[0].clone(),
                    args: req.argv[1..].to_vec(),
                    envs: req.env.clone().into_iter().collect(),
                    cwd: req.cwd.clone(),
                }),
                pty: None,
                tag: None,
                stdin: Some(req.stdin.is_some()),
            };
            let caller = Caller { user: req.user.clone() };
            let mut first = self.agent.start(&ip, &caller, &start).await;
            if matches!(first, Err(AgentError::Unavailable(_))) {
                // Retry whatever `ensure_agent` says: a start in flight may have finished between
                // the refused connection and its probe (then it reports nothing restarted).
                self.revive_agent(sb).await;
                first = self.agent.start(&ip, &caller, &start).await;
            }
            match first {
                Ok(stream) => {
                    let run = AgentRun { agent: self.agent.clone(), ip, stdin: req.stdin, deadline: req.timeout };
                    tokio::spawn(run.pump(stream, tx));
                    return Ok(rx);
                }
                Err(AgentError::Unavailable(why)) => {
                    tracing::debug!(sandbox_id = %sb.sandbox_id, %why, "agent unavailable; exec through the backend");
                }
                Err(AgentError::Failed(m)) if m.contains("cannot start") => {
                    // The command itself could not be started (no such file, not executable):
                    // report it like a shell does rather than as a server fault.
                    let exit_code = if m.contains("Permission denied") { 126 } else { 127 };
                    let _ = tx.send(ExecEvent::Stderr(format!("{m}\n").into_bytes())).await;
                    let _ = tx.send(ExecEvent::Exit { exit_code, timed_out: false, truncated: false }).await;
                    return Ok(rx);
                }
                Err(e) => return Err(AppError::unavailable(format!("exec in sandbox {}: {e}", sb.sandbox_id))),
            }
        }
        let backend: Arc<dyn Backend> = self.backend.clone();
        let slot = sb.pod_name.clone();
        // The backend's exec is buffered: run it here so its errors (unknown container, …) keep
        // their status codes, then replay the result as events.
        let out = backend.exec(&slot, &req).await?;
        tokio::spawn(async move {
            if !out.stdout.is_empty() {
                let _ = tx.send(ExecEvent::Stdout(out.stdout)).await;
            }
            if !out.stderr.is_empty() {
                let _ = tx.send(ExecEvent::Stderr(out.stderr)).await;
            }
            let _ = tx
                .send(ExecEvent::Exit { exit_code: out.exit_code, timed_out: out.timed_out, truncated: out.truncated })
                .await;
        });
        Ok(rx)
    }
}

/// One command running through the agent.
struct AgentRun {
    agent: AgentClient,
    ip: String,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
}

impl AgentRun {
    /// Forwards the agent's events until the process ends, killing it at the deadline or when
    /// the receiver goes away.
    async fn pump(self, mut stream: ProcessStream, tx: mpsc::Sender<ExecEvent>) {
        let deadline = tokio::time::sleep(self.deadline);
        tokio::pin!(deadline);
        let mut pid = None;
        let mut killed_at_deadline = false;
        enum Step {
            Event(Result<Option<pp::ProcessEvent>, AgentError>),
            Deadline,
            Gone,
        }
        loop {
            let step = tokio::select! {
                ev = stream.next() => Step::Event(ev),
                _ = &mut deadline => Step::Deadline,
                _ = tx.closed() => Step::Gone,
            };
            let next = match step {
                Step::Event(ev) => ev,
                Step::Deadline if !killed_at_deadline => {
                    killed_at_deadline = true;
                    if let Some(p) = pid {
                        let _ = self.agent.signal(&self.ip, p, true).await;
                    }
                    // Wait a little for the end event after the kill; give up after that.
                    deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
                    continue;
                }
                Step::Deadline => {
                    let _ = tx.send(ExecEvent::Exit { exit_code: 124, timed_out: true, truncated: false }).await;
                    return;
                }
                Step::Gone => {
                    if let Some(p) = pid {
                        let _ = self.agent.signal(&self.ip, p, true).await;
                    }
                    return;
                }
            };
            let ev = match next {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    let _ =
                        tx.send(ExecEvent::Error("the agent ended the stream before the process ended".into())).await;
                    return;
                }
                Err(AgentError::Failed(m)) if pid.is_none() && m.contains("cannot start") => {
                    // The command itself could not be started (no such file, not executable):
                    // report it like a shell does rather than as a server fault.
                    let exit_code = if m.contains("Permission denied") { 126 } else { 127 };
                    let _ = tx.send(ExecEvent::Stderr(format!("{m}\n").into_bytes())).await;
                    let _ = tx.send(ExecEvent::Exit { exit_code, timed_out: false, truncated: false }).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(ExecEvent::Error(e.to_string())).await;
                    return;
                }
            };
            if let Some(start) = ev.start {
                pid = Some(start.pid);
                if let Some(input) = &self.stdin {
                    let (agent, ip, input, p) = (self.agent.clone(), self.ip.clone(), input.clone(), start.pid);
                    tokio::spawn(async move {
                        for chunk in input.chunks(1 << 20) {
                            if agent.send_input(&ip, p, chunk.to_vec(), false).await.is_err() {
                                return;
                            }
                        }
                        let _ = agent.close_stdin(&ip, p).await;
                    });
                }
            }
            if let Some(data) = ev.data {
                let out = match (data.stdout, data.stderr, data.pty) {
                    (Some(b), _, _) => ExecEvent::Stdout(b),
                    (_, Some(b), _) => ExecEvent::Stderr(b),
                    (_, _, Some(b)) => ExecEvent::Stdout(b),
                    _ => continue,
                };
                if tx.send(out).await.is_err() {
                    if let Some(p) = pid {
                        let _ = self.agent.signal(&self.ip, p, true).await;
                    }
                    return;
                }
            }
            if let Some(end) = ev.end {
                let (exit_code, timed_out) =
                    if killed_at_deadline { (124, true) } else { (agent::exit_code(&end), false) };
                let _ = tx.send(ExecEvent::Exit { exit_code, timed_out, truncated: false }).await;
                return;
            }
        }
    }
}

/// One line of `POST …/exec/stream` (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecStreamLine {
    /// Output on stdout (UTF-8; a character split across chunks is sent whole in the next line;
    /// invalid bytes become U+FFFD).
    Stdout { data: String },
    /// Output on stderr.
    Stderr { data: String },
    /// The last line when the command ended.
    #[serde(rename_all = "camelCase")]
    Exit { exit_code: i32, timed_out: bool, duration_ms: u64 },
    /// The last line when the run broke off (the agent went away); the command's outcome is unknown.
    Error { message: String },
}

/// Turns byte chunks into text without splitting a UTF-8 character across two lines.
#[derive(Default)]
pub struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    /// The text of `chunk` (after what was held back), holding back an incomplete trailing
    /// character (at most 3 bytes).
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let cut = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // `error_len() == None`: the input ends inside a character that may still complete.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_characters_are_never_split() {
        let mut u = Utf8Chunks::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(u.push(&[b'a', euro[0]]), "a");
        assert_eq!(u.push(&euro[1..2]), "");
        assert_eq!(u.push(&[euro[2], b'b']), "€b");
        assert_eq!(u.push(&[0xff, b'c']), "\u{fffd}c", "invalid bytes are replaced, not held");
        assert_eq!(u.push(&euro[..1]), "");
        assert_eq!(u.finish(), "\u{fffd}", "a dangling lead byte at the end is replaced");
    }

    #[test]
    fn stream_lines_are_tagged() {
        let l = ExecStreamLine::Exit { exit_code: 3, timed_out: false, duration_ms: 7 };
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            serde_json::json!({"type":"exit","exitCode":3,"timedOut":false,"durationMs":7})
        );
        let l = ExecStreamLine::Stdout { data: "hi".into() };
        assert_eq!(serde_json::to_value(&l).unwrap(), serde_json::json!({"type":"stdout","data":"hi"}));
    }

    fn body(cmd: &str) -> ExecRequestBody {
        serde_json::from_value(serde_json::json!({ "command": cmd })).unwrap()
    }

    #[test]
    fn limits_differ_between_the_two_forms() {
        let mut b = body("sleep 1000");
        b.timeout_seconds = Some(1000);
        assert!(validate(b.clone(), BUFFERED).is_err(), "1000 s is too long for a buffered exec");
        assert_eq!(validate(b, STREAMED).unwrap().timeout, Duration::from_secs(1000));
        assert_eq!(validate(body("true"), STREAMED).unwrap().timeout, Duration::from_secs(600));
        assert_eq!(validate(body("true"), BUFFERED).unwrap().timeout, Duration::from_secs(30));
        assert_eq!(validate(body("echo hi"), BUFFERED).unwrap().argv, ["/bin/sh", "-c", "echo hi"]);
    }

    #[test]
    fn bad_requests_say_what_to_do() {
        let e = validate(body("  "), BUFFERED).unwrap_err();
        assert!(e.message.contains("command is required"), "{}", e.message);
        let mut b = body("true");
        b.user = Some("root".into());
        assert!(validate(b, BUFFERED).unwrap_err().message.contains("numeric uid"));
        let mut b = body("true");
        b.cwd = Some("tmp".into());
        assert!(validate(b, BUFFERED).unwrap_err().message.contains("absolute"));
    }
}
