//! Interactive terminals: single-use exec tokens and opening the terminal they unlock.
//!
//! A browser cannot set headers on a WebSocket, so the terminal is authorized by a token instead of
//! the API key: `POST /v1/sandboxes/{id}/exec-token` (authenticated, the sandbox visible to the
//! caller and Running) issues one; `GET /v1/sandboxes/{id}/terminal?token=` redeems it. A token is
//! 32 random bytes (hex), bound to one sandbox, valid for [`TOKEN_TTL`], and usable once: redeeming
//! removes it whatever the outcome, so a leaked URL cannot be replayed. Tokens live in memory only
//! (a restart invalidates them, which costs the client one more `exec-token` call).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use agentbox_core::backend::{PtyInput, PtyRequest, PtySession};
use agentbox_core::error::AppError;
use agentbox_core::model::SandboxStatus;
use agentbox_envd::proto::process as pp;
use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

use super::Engine;
use crate::agent::{AgentError, Caller};
use crate::auth::AuthInfo;

/// How long an exec token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(30);

/// The shell of a terminal: bash when the image has it, else sh.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi";

/// Terminal size until the client sends its own.
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;

/// A freshly issued exec token.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecToken {
    /// Pass as `?token=` to `GET /v1/sandboxes/{id}/terminal`; single use.
    pub token: String,
    /// Seconds the token stays valid (30).
    pub expires_in_seconds: u64,
}

/// Why a token was refused (all 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    Missing,
    Invalid,
    OtherSandbox,
}

impl From<TokenError> for AppError {
    fn from(e: TokenError) -> Self {
        AppError::unauthorized(match e {
            TokenError::Missing => "token query parameter is required",
            TokenError::Invalid => "exec token is invalid or has expired",
            TokenError::OtherSandbox => "token does not match sandbox",
        })
    }
}

struct Issued {
    sandbox_id: String,
    expires: Instant,
}

/// Outstanding exec tokens (in memory).
pub(crate) struct ExecTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, Issued>>,
}

impl Default for ExecTokens {
    fn default() -> Self {
        ExecTokens::with_ttl(TOKEN_TTL)
    }
}

impl ExecTokens {
    pub(crate) fn with_ttl(ttl: Duration) -> Self {
        ExecTokens { ttl, tokens: Mutex::new(HashMap::new()) }
    }

    /// A new token for `sandbox_id`, valid from `now` for the TTL. Expired tokens are purged.
    pub(crate) fn issue(&self, sandbox_id: &str, now: Instant) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut t = self.tokens.lock();
        t.retain(|_, i| i.expires > now);
        t.insert(token.clone(), Issued { sandbox_id: sandbox_id.to_owned(), expires: now + self.ttl });
        token
    }

    /// Use up `token` for `sandbox_id` at `now`. The token is gone afterwards, whatever the answer.
    pub(crate) fn redeem(&self, token: &str, sandbox_id: &str, now: Instant) -> Result<(), TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let mut t = self.tokens.lock();
        t.retain(|_, i| i.expires > now);
        match t.remove(token) {
            None => Err(TokenError::Invalid),
            Some(i) if i.sandbox_id != sandbox_id => Err(TokenError::OtherSandbox),
            Some(_) => Ok(()),
        }
    }

    /// What [`Self::redeem`] would answer, without using the token up.
    pub(crate) fn check(&self, token: &str, sandbox_id: &str, now: Instant) -> Result<(), TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        match self.tokens.lock().get(token) {
            Some(i) if i.expires <= now => Err(TokenError::Invalid),
            Some(i) if i.sandbox_id != sandbox_id => Err(TokenError::OtherSandbox),
            Some(_) => Ok(()),
            None => Err(TokenError::Invalid),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.lock().len()
    }
}

fn require_running(id: &str, status: SandboxStatus) -> Result<(), AppError> {
    if status != SandboxStatus::Running {
        return Err(AppError::conflict(format!(
            "sandbox {id} is {}; a terminal needs a Running sandbox",
            status.as_str()
        )));
    }
    Ok(())
}

impl Engine {
    /// Issue a single-use token that opens a terminal in sandbox `id` within 30 s. 404 when the
    /// caller cannot see the sandbox, 409 when it is not Running.
    pub fn create_exec_token(&self, auth: &AuthInfo, id: &str) -> Result<ExecToken, AppError> {
        let sb = self.visible_sandbox(auth, id)?;
        require_running(id, sb.status)?;
        let token = self.exec_tokens.issue(&sb.sandbox_id, Instant::now());
        Ok(ExecToken { token, expires_in_seconds: self.exec_tokens.ttl.as_secs() })
    }

    /// 401 unless `token` would open a terminal in sandbox `id` now (the token is not used up).
    pub fn check_exec_token(&self, id: &str, token: &str) -> Result<(), AppError> {
        Ok(self.exec_tokens.check(token, id, Instant::now())?)
    }

    /// Redeem `token` (401 when missing, unknown, used, expired or for another sandbox) and start
    /// an interactive shell (bash if present, else sh) with a terminal in container 0 of sandbox
    /// `id`, with `TERM=xterm-256color`. The token is the only authorization.
    pub async fn open_terminal(&self, id: &str, token: &str) -> Result<PtySession, AppError> {
        self.exec_tokens.redeem(token, id, Instant::now())?;
        let sb = self.store.get_sandbox(id)?.ok_or_else(|| AppError::not_found(format!("sandbox {id} not found")))?;
        require_running(id, sb.status)?;
        let req = PtyRequest {
            container: None,
            argv: vec!["/bin/sh".into(), "-c".into(), SHELL.into()],
            env: BTreeMap::from([("TERM".to_string(), "xterm-256color".to_string())]),
            cwd: None,
            cols: DEFAULT_COLS,
            rows: DEFAULT_ROWS,
        };
        if let Some(ip) = self.agent_ip(&sb) {
            let mut first = self.agent_terminal(&ip, &req).await;
            if matches!(first, Err(AgentError::Unavailable(_))) {
                self.revive_agent(&sb).await;
                first = self.agent_terminal(&ip, &req).await;
            }
            match first {
                Ok(session) => {
                    self.touch(id);
                    return Ok(session);
                }
                Err(AgentError::Unavailable(why)) => {
                    tracing::debug!(sandbox_id = %id, %why, "agent unavailable; terminal through the backend");
                }
                Err(e) => return Err(AppError::unavailable(format!("terminal in sandbox {id}: {e}"))),
            }
        }
        let session = self.backend.exec_pty(&sb.pod_name, &req).await?;
        self.touch(id);
        Ok(session)
    }

    /// A terminal process started by the sandbox's agent, bridged to a [`PtySession`]: its pty
    /// output feeds `output`, input and resizes become `SendInput` / `Update` calls, and closing
    /// the session kills the process.
    async fn agent_terminal(&self, ip: &str, req: &PtyRequest) -> Result<PtySession, AgentError> {
        let start = pp::StartRequest {
            process: Some(pp::ProcessConfig {
                cmd: req.argv[0].clone(),
                args: req.argv[1..].to_vec(),
                envs: req.env.clone().into_iter().collect(),
                cwd: req.cwd.clone(),
            }),
            pty: Some(pp::Pty { size: Some(pp::PtySize { cols: req.cols.into(), rows: req.rows.into() }) }),
            tag: None,
            stdin: None,
        };
        let mut stream = self.agent.start(ip, &Caller::default(), &start).await?;
        let pid = loop {
            match stream.next().await? {
                Some(ev) if ev.start.is_some() => break ev.start.map(|s| s.pid).unwrap_or_default(),
                Some(_) => continue,
                None => return Err(AgentError::Failed("the terminal ended before it started".into())),
            }
        };
        let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<PtyInput>(64);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<i32>();
        let (agent, ip_in) = (self.agent.clone(), ip.to_string());
        tokio::spawn(async move {
            while let Some(input) = in_rx.recv().await {
                let r = match input {
                    PtyInput::Data(d) => agent.send_input(&ip_in, pid, d, true).await,
                    PtyInput::Resize { cols, rows } => agent.resize(&ip_in, pid, cols, rows).await,
                    PtyInput::Close => {
                        let _ = agent.signal(&ip_in, pid, true).await;
                        return;
                    }
                };
                if r.is_err() {
                    return;
                }
            }
            // Every sender is gone: nobody can type into this terminal any more.
            let _ = agent.signal(&ip_in, pid, true).await;
        });
        tokio::spawn(async move {
            let mut code = -1;
            while let Ok(Some(ev)) = stream.next().await {
                if let Some(d) = ev.data.and_then(|d| d.pty.or(d.stdout).or(d.stderr))
                    && out_tx.send(d).await.is_err()
                {
                    break;
                }
                if let Some(end) = ev.end {
                    code = crate::agent::exit_code(&end);
                    break;
                }
            }
            drop(out_tx);
            let _ = exit_tx.send(code);
        });
        Ok(PtySession { input: in_tx, output: out_rx, exit: exit_rx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_bound_and_expire() {
        let store = ExecTokens::with_ttl(Duration::from_secs(30));
        let t0 = Instant::now();
        let a = store.issue("sb-1", t0);
        assert_eq!(a.len(), 64, "32 random bytes in hex");
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, store.issue("sb-1", t0), "tokens are random");
        assert_eq!(store.redeem(&a, "sb-1", t0 + Duration::from_secs(29)), Ok(()));
        assert_eq!(store.redeem(&a, "sb-1", t0), Err(TokenError::Invalid), "second use");

        let b = store.issue("sb-1", t0);
        assert_eq!(store.redeem(&b, "sb-2", t0), Err(TokenError::OtherSandbox));
        assert_eq!(store.redeem(&b, "sb-1", t0), Err(TokenError::Invalid), "a mismatched try uses it up");

        let c = store.issue("sb-1", t0);
        assert_eq!(store.check(&c, "sb-1", t0), Ok(()));
        assert_eq!(store.check(&c, "sb-2", t0), Err(TokenError::OtherSandbox));
        assert_eq!(store.check(&c, "sb-1", t0 + Duration::from_secs(30)), Err(TokenError::Invalid));
        assert_eq!(store.check(&c, "sb-1", t0), Ok(()), "checking does not use the token up");
        assert_eq!(store.redeem(&c, "sb-1", t0 + Duration::from_secs(30)), Err(TokenError::Invalid), "expired");
        assert_eq!(store.redeem("", "sb-1", t0), Err(TokenError::Missing));
        assert_eq!(store.redeem("nope", "sb-1", t0), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_tokens_are_purged() {
        let store = ExecTokens::with_ttl(Duration::from_secs(30));
        let t0 = Instant::now();
        for _ in 0..5 {
            store.issue("sb-1", t0);
        }
        assert_eq!(store.len(), 5);
        store.issue("sb-1", t0 + Duration::from_secs(31));
        assert_eq!(store.len(), 1, "the five expired tokens were purged");
    }

    #[test]
    fn token_errors_are_401_with_the_documented_messages() {
        for (e, msg) in [
            (TokenError::Missing, "token query parameter is required"),
            (TokenError::Invalid, "exec token is invalid or has expired"),
            (TokenError::OtherSandbox, "token does not match sandbox"),
        ] {
            let a = AppError::from(e);
            assert_eq!((a.kind, a.message.as_str()), (agentbox_core::error::ErrorKind::Unauthorized, msg));
        }
    }
}
