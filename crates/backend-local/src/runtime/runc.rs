//! The `runc` binary. Its stdio is never a pipe we wait on: the container's stdout/stderr are the
//! log file, runc's own messages go to `--log` files that are read on failure.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{ExecProcess, ExecWaiter, OciRuntime, RuntimeStatus, StartRequest, TtyExec, list_dirs, spawn_locked};
use crate::capture::ChildFds;
use crate::error::{LocalError, Result};

/// runc with `--root <root>`.
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    /// Where runc's own logs go (`--log`), per container id.
    log_dir: PathBuf,
}

fn err(message: String) -> LocalError {
    LocalError::Runtime { runtime: "runc", message }
}

impl Runc {
    pub fn new(binary: PathBuf, root: PathBuf, log_dir: PathBuf) -> Result<Self> {
        for d in [&root, &log_dir] {
            std::fs::create_dir_all(d).map_err(LocalError::io(format!("create {}", d.display())))?;
        }
        Ok(Runc { binary, root, log_dir })
    }

    fn cmd(&self, id: &str) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).arg("--log").arg(self.log_file(id)).arg("--log-format").arg("text");
        c
    }

    fn log_file(&self, id: &str) -> PathBuf {
        self.log_dir.join(format!("{id}.log"))
    }

    fn last_error(&self, id: &str, stderr: &[u8]) -> String {
        let log = std::fs::read_to_string(self.log_file(id)).unwrap_or_default();
        let line =
            log.lines().rev().find(|l| l.contains("level=error")).unwrap_or_else(|| log.lines().last().unwrap_or(""));
        let se = String::from_utf8_lossy(stderr);
        format!("{} {}", line.trim(), se.trim()).trim().to_owned()
    }

    fn run_simple(&self, id: &str, args: &[&str]) -> Result<std::process::Output> {
        let mut c = self.cmd(id);
        c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        spawn_locked(&mut c)
            .and_then(|child| child.wait_with_output())
            .map_err(|e| err(format!("cannot run {} (install runc): {e}", self.binary.display())))
    }
}

impl OciRuntime for Runc {
    fn name(&self) -> &'static str {
        "runc"
    }

    fn create_start(&self, req: &StartRequest<'_>) -> Result<i32> {
        let pid_file = req.bundle.join("init.pid");
        let out = req.log.try_clone().map_err(LocalError::io("dup log fd"))?;
        let errf = req.log.try_clone().map_err(LocalError::io("dup log fd"))?;
        let mut cmd = self.cmd(req.id);
        cmd.arg("create")
            .arg("--bundle")
            .arg(req.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(req.id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(errf));
        let status = spawn_locked(&mut cmd)
            .and_then(|mut child| child.wait())
            .map_err(|e| err(format!("cannot run {} (install runc): {e}", self.binary.display())))?;
        if !status.success() {
            let msg = self.last_error(req.id, b"");
            let _ = self.kill_delete(req.id);
            return Err(err(format!("create {}: {status}: {msg}", req.id)));
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| err(format!("runc create {} wrote no pid file", req.id)))?;
        let out = self.run_simple(req.id, &["start", req.id])?;
        if !out.status.success() {
            let msg = self.last_error(req.id, &out.stderr);
            let _ = self.kill_delete(req.id);
            return Err(err(format!("start {}: {}: {msg}", req.id, out.status)));
        }
        Ok(pid)
    }

    fn exec(&self, id: &str, p: &ExecProcess, fds: ChildFds) -> Result<ExecWaiter> {
        let pid_file = self.log_dir.join(format!("{id}.exec.{}.pid", next_exec_seq()));
        let mut c = self.cmd(id);
        c.arg("exec").arg("--pid-file").arg(&pid_file).arg("--user").arg(format!("{}:{}", p.uid, p.gid));
        if let Some(cwd) = &p.cwd {
            c.arg("--cwd").arg(cwd);
        }
        for (k, v) in &p.env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        c.arg(id).args(&p.args);
        c.stdin(Stdio::from(fds.stdin)).stdout(Stdio::from(fds.stdout)).stderr(Stdio::from(fds.stderr));
        let child = spawn_locked(&mut c)
            .map_err(|e| err(format!("cannot run {} (install runc): {e}", self.binary.display())))?;
        Ok(ExecWaiter::Runc { child, pid_file })
    }

    fn kill_delete(&self, id: &str) -> Result<()> {
        if !self.root.join(id).exists() {
            let _ = std::fs::remove_file(self.log_file(id));
            return Ok(());
        }
        let out = self.run_simple(id, &["delete", "--force", id])?;
        if !out.status.success() && self.root.join(id).exists() {
            return Err(err(format!("delete {id}: {}: {}", out.status, self.last_error(id, &out.stderr))));
        }
        let _ = std::fs::remove_file(self.log_file(id));
        Ok(())
    }

    fn state(&self, id: &str) -> Result<Option<RuntimeStatus>> {
        if !self.root.join(id).exists() {
            return Ok(None);
        }
        let out = self.run_simple(id, &["state", id])?;
        if !out.status.success() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| err(format!("state {id}: {e}")))?;
        let pid = v["pid"].as_i64().unwrap_or(0) as i32;
        Ok(Some(match v["status"].as_str() {
            Some("running") | Some("paused") | Some("created") if pid > 0 => RuntimeStatus::Running { pid },
            _ => RuntimeStatus::Stopped,
        }))
    }

    fn list(&self) -> Vec<String> {
        list_dirs(&self.root)
    }

    /// `runc exec --detach --tty --console-socket`: runc creates the terminal inside the container,
    /// sends us its master and exits; the process is then re-parented to this process (the backend
    /// makes it a child subreaper), which waits for it like any child.
    fn exec_tty(&self, id: &str, p: &ExecProcess, _init_pid: i32, cols: u16, rows: u16) -> Result<TtyExec> {
        let seq = next_exec_seq();
        let pid_file = self.log_dir.join(format!("{id}.tty.{seq}.pid"));
        let sock_path = self.log_dir.join(format!("{id}.tty.{seq}.sock"));
        let _ = std::fs::remove_file(&sock_path);
        let listener = std::os::unix::net::UnixListener::bind(&sock_path)
            .map_err(LocalError::io(format!("bind console socket {}", sock_path.display())))?;
        let cleanup = || {
            let _ = std::fs::remove_file(&sock_path);
            let _ = std::fs::remove_file(&pid_file);
        };
        let mut c = self.cmd(id);
        c.arg("exec")
            .arg("--detach")
            .arg("--tty")
            .arg("--console-socket")
            .arg(&sock_path)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--user")
            .arg(format!("{}:{}", p.uid, p.gid));
        if let Some(cwd) = &p.cwd {
            c.arg("--cwd").arg(cwd);
        }
        for (k, v) in &p.env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        c.arg(id).args(&p.args);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = spawn_locked(&mut c).and_then(|child| child.wait_with_output()).map_err(|e| {
            cleanup();
            err(format!("cannot run {} (install runc): {e}", self.binary.display()))
        })?;
        if !out.status.success() {
            let msg = self.last_error(id, &out.stderr);
            cleanup();
            return Err(err(format!("exec --tty in {id}: {}: {msg}", out.status)));
        }
        let master = super::tty::recv_console(&listener);
        let pid = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok());
        cleanup();
        let Some(pid) = pid else {
            return Err(err(format!("runc exec --tty in {id} wrote no pid file")));
        };
        let master = match master {
            Ok(m) => m,
            Err(e) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                let _ = ExecWaiter::Child(pid).wait(std::time::Duration::from_secs(5));
                return Err(e);
            }
        };
        if let Err(e) = super::tty::set_size(std::os::fd::AsRawFd::as_raw_fd(&master), cols, rows) {
            tracing::warn!(id, error = %e, "cannot size the terminal; it keeps runc's default size");
        }
        Ok(TtyExec { waiter: ExecWaiter::Child(pid), master, pid: Some(pid) })
    }
}

fn next_exec_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}
