//! Commands in a slot Pod through the `pods/exec` subresource (a WebSocket to the API server,
//! channel protocol `v5.channel.k8s.io` or `v4.channel.k8s.io`): the fallback of the engine when
//! the in-sandbox agent does not answer, and the way to reach a sidecar container.
//!
//! `pods/exec` runs an argv as the container's user in the container's working directory with the
//! container's environment. When a request sets env, cwd or a user, the argv runs behind a small
//! POSIX shell script instead (`/bin/sh -c`, or `su -s /bin/sh USER -c` for a user), which needs a
//! shell in the image; a request without them needs nothing but the command itself.

use std::collections::BTreeMap;
use std::time::Duration;

use agentbox_core::backend::{BackendError, ExecOutput, PtyInput, PtyRequest, PtySession};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, AttachedProcess, TerminalSize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::error::{KubeError, is_code};

/// Most bytes kept of each output stream of one command (the rest is read and dropped, and the
/// output is marked truncated), as on the local backend.
pub const CAPTURE_LIMIT: usize = 4 << 20;

/// Size of the pipes between the WebSocket task and the readers.
const PIPE_BUF: usize = 64 << 10;

/// `s` as one word of a POSIX shell command line: single-quoted, with `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `user` means the superuser (then no `su` is needed: containers run as root unless their
/// image or Pod says otherwise, and a non-root container cannot become root anyway).
fn is_root(user: &str) -> bool {
    matches!(user, "" | "root" | "0" | "0:0")
}

fn is_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The `command` of the `pods/exec` call for `argv` with `env`, `cwd` and `user`: `argv` itself
/// when none is set (no shell needed in the image), else a `/bin/sh -c` script that changes
/// directory, exports the variables and `exec`s the argv; a non-root `user` wraps that script in
/// `su -s /bin/sh USER -c` (the image needs `su` and the container must run as root).
pub fn exec_command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    user: Option<&str>,
) -> Result<Vec<String>, BackendError> {
    if argv.is_empty() {
        return Err(BackendError::Invalid("exec needs a command (argv is empty)".into()));
    }
    let user = user.filter(|u| !is_root(u));
    if let Some(u) = user
        && (u.contains(':') || u.starts_with('-'))
    {
        return Err(BackendError::Invalid(format!(
            "user {u:?}: without the in-sandbox agent, kubernetes exec can switch only to a user name (through su); \
             give a user name without a group"
        )));
    }
    if let Some(k) = env.keys().find(|k| !is_env_name(k)) {
        return Err(BackendError::Invalid(format!(
            "environment variable name {k:?} is not valid: use letters, digits and '_', not starting with a digit"
        )));
    }
    if env.is_empty() && cwd.is_none() && user.is_none() {
        return Ok(argv.to_vec());
    }
    let mut script = String::new();
    if let Some(dir) = cwd {
        script.push_str(&format!("cd {} || exit 1; ", shell_quote(dir)));
    }
    for (k, v) in env {
        script.push_str(&format!("export {}; ", shell_quote(&format!("{k}={v}"))));
    }
    script.push_str("exec");
    for a in argv {
        script.push(' ');
        script.push_str(&shell_quote(a));
    }
    Ok(match user {
        Some(u) => vec!["su".into(), "-s".into(), "/bin/sh".into(), u.into(), "-c".into(), script],
        None => vec!["/bin/sh".into(), "-c".into(), script],
    })
}

/// What the status channel (3) said about the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    /// The command ran and exited with this code (`Success` = 0; a `NonZeroExitCode` failure
    /// carries its code in `details.causes[reason=ExitCode]`).
    Exited(i32),
    /// The command could not be started; a shell would have exited with `code` (127: not found,
    /// 126: not executable) after printing `message`.
    NotStarted { code: i32, message: String },
    /// Anything else (the runtime failed); not the command's fault.
    Failed(String),
}

/// Read the exit status of a `pods/exec` call from its `Status` object.
pub fn exec_status(status: &Status) -> ExecStatus {
    if status.status.as_deref() == Some("Success") {
        return ExecStatus::Exited(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.trim().parse::<i32>().ok());
    if let Some(code) = code {
        return ExecStatus::Exited(code);
    }
    let message = status.message.clone().unwrap_or_else(|| "the command failed without a message".into());
    let lower = message.to_ascii_lowercase();
    if lower.contains("not found") || lower.contains("no such file") {
        ExecStatus::NotStarted { code: 127, message }
    } else if lower.contains("permission denied") {
        ExecStatus::NotStarted { code: 126, message }
    } else {
        ExecStatus::Failed(message)
    }
}

/// Bytes read from one output stream, at most [`CAPTURE_LIMIT`].
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Read `r` to its end into `into`, keeping at most [`CAPTURE_LIMIT`] bytes (reading on past
/// it, so that the WebSocket task never blocks on a full pipe).
async fn drain(r: Option<impl AsyncRead + Unpin>, into: &mut Captured) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = CAPTURE_LIMIT.saturating_sub(into.bytes.len());
                into.bytes.extend_from_slice(&buf[..n.min(room)]);
                into.truncated |= n > room;
            }
        }
    }
}

/// Map an error of the exec call itself (before the command ran).
fn start_error(pod: &str, container: &str, e: kube::Error) -> BackendError {
    if is_code(&e, 404) {
        return BackendError::SlotNotFound(pod.to_owned());
    }
    if let kube::Error::Api(s) = &e
        && s.code == 400
        && s.message.contains("not found")
    {
        return BackendError::ContainerNotFound { slot: pod.to_owned(), container: container.to_owned() };
    }
    if let kube::Error::Api(s) = &e
        && s.code == 403
    {
        return BackendError::Runtime(format!(
            "the server may not exec in pods ({}): grant it `create` on `pods/exec` in the namespace of the pool",
            s.message
        ));
    }
    KubeError::from(e).into()
}

/// Run `argv` (already built by [`exec_command`]) in `container` of `pod` and collect its output:
/// stdin (when given) is written and closed, stdout and stderr are read to their ends, the exit
/// code comes from the status channel. At `timeout` the connection is dropped and the result is
/// exit code 124 with `timed_out` and the output read until then; the kubelet does not kill an
/// exec'd process whose connection went away, so a command that ignores its closed output may
/// run on in the container. A connection that could not be set up by then is an error (the
/// command never ran).
///
/// With stdin over the `v4.channel.k8s.io` protocol (API servers without `v5`), closing stdin
/// closes the whole connection (v4 has no per-stream close; the client cannot tell which
/// protocol was negotiated), so the exit status is lost: the call fails with an error that says
/// so, or, when the connection does not finish closing, ends at `timeout` as above.
pub async fn run(
    api: &Api<Pod>,
    pod: &str,
    container: &str,
    argv: Vec<String>,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<ExecOutput, BackendError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let ap = AttachParams::default()
        .container(container)
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true)
        .max_stdin_buf_size(PIPE_BUF)
        .max_stdout_buf_size(PIPE_BUF)
        .max_stderr_buf_size(PIPE_BUF);
    let mut proc: AttachedProcess = match tokio::time::timeout_at(deadline, api.exec(pod, argv, &ap)).await {
        Err(_) => {
            return Err(BackendError::Runtime(format!(
                "exec in pod {pod} container {container}: the connection was not set up within {timeout:?}, so the \
                 command did not run: check that the API server and the node's kubelet answer"
            )));
        }
        Ok(Err(e)) => return Err(start_error(pod, container, e)),
        Ok(Ok(p)) => p,
    };
    // Set once stdin was closed: a connection that ends after it without a status is most
    // likely the v4 protocol's way of closing stdin rather than a lost kubelet.
    let stdin_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let (Some(mut w), Some(data)) = (proc.stdin(), stdin.map(<[u8]>::to_vec)) {
        // In its own task: a command that never reads its stdin must not stall the output.
        let closed = std::sync::Arc::clone(&stdin_closed);
        tokio::spawn(async move {
            let _ = w.write_all(&data).await;
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = w.shutdown().await;
        });
    }
    let (stdout, stderr) = (proc.stdout(), proc.stderr());
    let status = proc.take_status().expect("the status is taken once");
    let (mut out, mut err) = (Captured::default(), Captured::default());
    let finished = {
        let work = async { tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err), status).2 };
        tokio::time::timeout_at(deadline, work).await
    };
    drop(proc);
    let truncated = out.truncated || err.truncated;
    let status = match finished {
        Err(_) => {
            return Ok(ExecOutput { exit_code: 124, stdout: out.bytes, stderr: err.bytes, timed_out: true, truncated });
        }
        Ok(None) if stdin_closed.load(std::sync::atomic::Ordering::SeqCst) => {
            return Err(BackendError::Runtime(format!(
                "exec in pod {pod} container {container}: the connection ended after stdin was closed, without an exit \
                 status: an api server that offers only the v4.channel.k8s.io exec protocol ends the connection to \
                 close stdin (the command got its stdin; the connection to the kubelet may also have been lost); run \
                 the sandbox with the in-sandbox agent (--k8s-agent-image), use a cluster that offers \
                 v5.channel.k8s.io (Kubernetes 1.30 or later), or pass the input another way than stdin"
            )));
        }
        Ok(None) => {
            return Err(BackendError::Runtime(format!(
                "the exec stream of pod {pod} ended without an exit status (the connection to the kubelet was lost)"
            )));
        }
        Ok(Some(s)) => s,
    };
    let exit_code = match exec_status(&status) {
        ExecStatus::Exited(code) => code,
        ExecStatus::NotStarted { code, message } => {
            err.bytes.extend_from_slice(format!("{message}\n").as_bytes());
            code
        }
        ExecStatus::Failed(message) => {
            return Err(BackendError::Runtime(format!("exec in pod {pod} container {container}: {message}")));
        }
    };
    Ok(ExecOutput { exit_code, stdout: out.bytes, stderr: err.bytes, timed_out: false, truncated })
}

/// Start `req` (argv built by [`exec_command`]) with a terminal in `container` of `pod`: input
/// and resizes go to the stdin and resize channels, the terminal's output to `output`; the exit
/// code comes from the status channel (−1 when the connection ended without one). `Close`,
/// dropping `input`, or dropping `output` (nobody reads the terminal any more) hangs up (the
/// kubelet closes the terminal, and the shell gets `SIGHUP`); the exit code is then 129.
pub async fn start_pty(
    api: &Api<Pod>,
    pod: &str,
    container: &str,
    argv: Vec<String>,
    req: &PtyRequest,
) -> Result<PtySession, BackendError> {
    let ap = AttachParams::interactive_tty().container(container).max_stdout_buf_size(PIPE_BUF);
    let mut proc = api.exec(pod, argv, &ap).await.map_err(|e| start_error(pod, container, e))?;
    let mut stdin = proc.stdin().expect("a tty exec has stdin");
    let mut stdout = proc.stdout().expect("a tty exec has stdout");
    let mut resize = proc.terminal_size().expect("a tty exec has a resize channel");
    let status = proc.take_status().expect("the status is taken once");
    let size = |cols: u16, rows: u16| TerminalSize { width: cols.max(1), height: rows.max(1) };
    let _ = futures::SinkExt::send(&mut resize, size(req.cols, req.rows)).await;
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<PtyInput>(64);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut input_open = true;
        let hang_up = loop {
            tokio::select! {
                msg = in_rx.recv(), if input_open => match msg {
                    Some(PtyInput::Data(d)) => {
                        if stdin.write_all(&d).await.is_err() {
                            input_open = false;
                        }
                    }
                    Some(PtyInput::Resize { cols, rows }) => {
                        let _ = futures::SinkExt::send(&mut resize, size(cols, rows)).await;
                    }
                    Some(PtyInput::Close) | None => break true,
                },
                n = stdout.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => {
                        // The client is gone: a process that keeps writing must not keep its
                        // connection (and itself) alive.
                        if out_tx.send(buf[..n].to_vec()).await.is_err() {
                            break true;
                        }
                    }
                },
            }
        };
        if hang_up {
            // End of transmission, then hang up.
            let _ = stdin.write_all(&[4]).await;
            let _ = stdin.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(proc);
            let _ = exit_tx.send(129);
            return;
        }
        let code = match status.await.as_ref().map(exec_status) {
            Some(ExecStatus::Exited(c)) => c,
            Some(ExecStatus::NotStarted { code, message }) => {
                let _ = out_tx.send(format!("{message}\r\n").into_bytes()).await;
                code
            }
            Some(ExecStatus::Failed(_)) | None => -1,
        };
        drop(out_tx);
        drop(proc);
        let _ = exit_tx.send(code);
    });
    Ok(PtySession { input: in_tx, output: out_rx, exit: exit_rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_plain_argv_goes_as_is_and_env_cwd_user_get_a_shell() {
        let none = BTreeMap::new();
        assert_eq!(exec_command(&s(&["ls", "-l"]), &none, None, None).unwrap(), s(&["ls", "-l"]));
        assert_eq!(exec_command(&s(&["ls"]), &none, None, Some("root")).unwrap(), s(&["ls"]), "root needs no su");
        let env = BTreeMap::from([("A".to_string(), "it's".to_string())]);
        assert_eq!(
            exec_command(&s(&["echo", "$A"]), &env, Some("/tmp"), None).unwrap(),
            s(&["/bin/sh", "-c", r"cd '/tmp' || exit 1; export 'A=it'\''s'; exec 'echo' '$A'"])
        );
        let su = exec_command(&s(&["id"]), &none, None, Some("app")).unwrap();
        assert_eq!(su, s(&["su", "-s", "/bin/sh", "app", "-c", "exec 'id'"]));
        assert!(matches!(exec_command(&[], &none, None, None), Err(BackendError::Invalid(_))));
        assert!(matches!(exec_command(&s(&["id"]), &none, None, Some("1000:1000")), Err(BackendError::Invalid(_))));
        let bad = BTreeMap::from([("1X".to_string(), "v".to_string())]);
        assert!(matches!(exec_command(&s(&["id"]), &bad, None, None), Err(BackendError::Invalid(_))));
    }

    /// The script is run by this host's `/bin/sh` to prove the quoting holds for awkward values.
    #[test]
    fn the_shell_script_keeps_every_byte_of_env_cwd_and_argv() {
        if !std::path::Path::new("/bin/sh").exists() {
            println!("SKIPPED: no /bin/sh on this host");
            return;
        }
        let dir = std::env::temp_dir().join(format!("agentbox exec '{}'", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = BTreeMap::from([("V".to_string(), "a 'b' \"c\" $d `e` \\ \n f".to_string())]);
        let argv = s(&["/bin/sh", "-c", r#"printf '%s|%s|%s' "$V" "$(pwd)" "$1""#, "sh", "x'; y $z"]);
        let cmd = exec_command(&argv, &env, Some(dir.to_str().unwrap()), None).unwrap();
        let out = std::process::Command::new(&cmd[0]).args(&cmd[1..]).output().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}|{}|x'; y $z", env["V"], dir.display()),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let missing = exec_command(&s(&["true"]), &BTreeMap::new(), Some("/nonexistent/dir"), None).unwrap();
        let out = std::process::Command::new(&missing[0]).args(&missing[1..]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "a missing cwd fails the command");
    }

    fn status(v: serde_json::Value) -> Status {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_status_channel_gives_the_exit_code() {
        assert_eq!(
            exec_status(&status(serde_json::json!({"metadata": {}, "status": "Success"}))),
            ExecStatus::Exited(0)
        );
        let nonzero = status(serde_json::json!({
            "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: exit status 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        }));
        assert_eq!(exec_status(&nonzero), ExecStatus::Exited(3));
        let missing = status(serde_json::json!({
            "status": "Failure", "reason": "InternalError",
            "message": "exec: \"nope\": executable file not found in $PATH: unknown"
        }));
        assert!(matches!(exec_status(&missing), ExecStatus::NotStarted { code: 127, .. }));
        let other = status(serde_json::json!({"status": "Failure", "message": "container runtime went away"}));
        assert_eq!(exec_status(&other), ExecStatus::Failed("container runtime went away".into()));
    }
}
