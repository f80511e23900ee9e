//! Running libcontainer's process-creating calls in a fresh, single-threaded helper process.
//!
//! libcontainer `clone()`s the calling process and the clone keeps running Rust code without an
//! `exec`. In a multi-threaded server (tokio workers, logging, allocation, other spawns) a lock held
//! by another thread at that instant stays locked forever in the clone, and the container init hangs
//! (seen here with std's `ENV_LOCK`). The helper is our own binary re-executed
//! (`<bin> __libcontainer-helper create|exec ...`): it has one thread, so the clone is safe. `exec`
//! of a fresh process image is itself safe from any thread.
//!
//! Protocol: arguments in, a small result file out (never pipes the container could hold open).
//! `create` gets the container log as its stdout/stderr and hands it to the container; `exec` gets the
//! exec's stdio pipes as its own and waits for the tenant process, writing its pid to `<result>.pid`
//! as soon as it exists (so the caller can kill it at a deadline) and its exit to `<result>`.
//!
//! `exec` does not use libcontainer: it enters the container itself, like `runc exec` (see
//! [`super::nsexec`]), which is several times cheaper and also applies the container's seccomp
//! filter. With [`TENANT_EXEC_ENV`] set in the server, it uses libcontainer's tenant builder instead.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{LocalError, Result};

/// The first argument that selects helper mode in a binary that embeds [`helper_main`].
pub const HELPER_ARG: &str = "__libcontainer-helper";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Outcome {
    Started { pid: i32 },
    Exited { code: i32 },
    Signaled { signal: i32 },
    Error { message: String },
}

fn write_outcome(path: &Path, o: &Outcome) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, serde_json::to_vec(o).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn dup_std(fd: i32) -> std::result::Result<OwnedFd, String> {
    // SAFETY: fds 0-2 are open for the lifetime of the helper (the spawner sets them).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map_err(|e| format!("dup fd {fd}: {e}"))
}

struct Args {
    mode: String,
    opts: HashMap<String, Vec<String>>,
    rest: Vec<String>,
}

fn parse(args: &[String]) -> std::result::Result<Args, String> {
    let mut it = args.iter();
    let mode = it.next().ok_or("missing mode (create|exec)")?.clone();
    let mut opts: HashMap<String, Vec<String>> = HashMap::new();
    let mut rest = vec![];
    while let Some(a) = it.next() {
        if a == "--" {
            rest = it.cloned().collect();
            break;
        }
        let key = a.strip_prefix("--").ok_or_else(|| format!("unexpected argument {a:?}"))?;
        let val = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        opts.entry(key.to_string()).or_default().push(val.clone());
    }
    Ok(Args { mode, opts, rest })
}

impl Args {
    fn one(&self, k: &str) -> std::result::Result<&str, String> {
        self.opts.get(k).and_then(|v| v.first()).map(String::as_str).ok_or_else(|| format!("missing --{k}"))
    }
}

/// Entry point of helper mode: `args` are the arguments after [`HELPER_ARG`]. Returns the process
/// exit code (0 = the result file says what happened).
pub fn helper_main(args: &[String]) -> i32 {
    let parsed = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("agentbox libcontainer helper: {e}");
            return 2;
        }
    };
    let Ok(result) = parsed.one("result").map(PathBuf::from) else {
        eprintln!("agentbox libcontainer helper: missing --result");
        return 2;
    };
    if parsed.mode == "zygote" {
        return super::zygote::serve(helper_main);
    }
    let outcome = match parsed.mode.as_str() {
        "create" => create(&parsed),
        "exec" => exec(&parsed, &result),
        m => Err(format!("unknown mode {m:?}")),
    };
    write_outcome(&result, &outcome.unwrap_or_else(|message| Outcome::Error { message }));
    0
}

fn create(a: &Args) -> std::result::Result<Outcome, String> {
    let mut c = ContainerBuilder::new(a.one("id")?.to_string(), SyscallType::default())
        .with_root_path(PathBuf::from(a.one("root")?))
        .map_err(|e| e.to_string())?
        .with_stdin(dup_std(0)?)
        .with_stdout(dup_std(1)?)
        .with_stderr(dup_std(2)?)
        .validate_id()
        .map_err(|e| e.to_string())?
        .as_init(a.one("bundle")?)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| e.to_string())?;
    c.start().map_err(|e| e.to_string())?;
    let pid = c.pid().ok_or("container started without an init pid")?;
    Ok(Outcome::Started { pid: pid.as_raw() })
}

/// Set (to anything) in the server's environment to exec through libcontainer's tenant builder
/// instead of the lean in-helper exec (for comparison and as a fallback; slower, no seccomp).
pub const TENANT_EXEC_ENV: &str = "AGENTBOX_LIBCONTAINER_TENANT_EXEC";

/// Set (to anything) in the server's environment to start a fresh helper process per exec instead
/// of forking it from the persistent zygote (see [`super::zygote`]).
pub const ONE_SHOT_EXEC_ENV: &str = "AGENTBOX_ONE_SHOT_EXEC_HELPER";

fn exec(a: &Args, result: &Path) -> std::result::Result<Outcome, String> {
    let tty = a.one("tty").ok() == Some("1");
    if a.one("via").ok() == Some("tenant") && !tty {
        return exec_tenant(a, result);
    }
    let num = |k: &str| a.one(k).ok().and_then(|v| v.parse::<u32>().ok());
    let root = PathBuf::from(a.one("root")?);
    let env: Vec<String> = a.opts.get("env").cloned().unwrap_or_default();
    let req = super::nsexec::Request {
        root: &root,
        id: a.one("id")?,
        args: &a.rest,
        env: &env,
        cwd: a.one("cwd").ok(),
        uid: num("uid"),
        gid: num("gid"),
        tty,
    };
    let pid_file = result.with_extension("pid");
    match super::nsexec::run(&req, |pid| {
        let _ = std::fs::write(&pid_file, pid.to_string());
    })? {
        super::nsexec::Finished::Exited(code) => Ok(Outcome::Exited { code }),
        super::nsexec::Finished::Signaled(signal) => Ok(Outcome::Signaled { signal }),
    }
}

fn exec_tenant(a: &Args, result: &Path) -> std::result::Result<Outcome, String> {
    // The tenant may be re-parented to us; make sure we can wait for it.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let env: HashMap<String, String> = a
        .opts
        .get("env")
        .into_iter()
        .flatten()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let num = |k: &str| a.one(k).ok().and_then(|v| v.parse::<u32>().ok());
    let built = ContainerBuilder::new(a.one("id")?.to_string(), SyscallType::default())
        .with_root_path(PathBuf::from(a.one("root")?))
        .map_err(|e| e.to_string())?
        .with_stdin(dup_std(0)?)
        .with_stdout(dup_std(1)?)
        .with_stderr(dup_std(2)?)
        .as_tenant()
        .with_detach(false)
        .with_container_args(a.rest.clone())
        .with_env(env)
        .with_cwd(a.one("cwd").ok().map(PathBuf::from))
        .with_user(num("uid"))
        .with_group(num("gid"))
        .build();
    let pid = match built {
        Ok(pid) => pid,
        Err(e) => {
            // A command that cannot be started is the command's failure, reported like a shell
            // does (127 not found, 126 not executable), not the sandbox's.
            let msg = e.to_string();
            let lower = msg.to_lowercase();
            let code = if lower.contains("not found") || lower.contains("no such file") {
                127
            } else if lower.contains("permission denied") || lower.contains("not executable") {
                126
            } else {
                return Err(msg);
            };
            use std::io::Write;
            let name = a.rest.first().map(String::as_str).unwrap_or("");
            let _ = writeln!(std::io::stderr(), "agentbox: cannot run {name}: {msg}");
            return Ok(Outcome::Exited { code });
        }
    };
    let _ = std::fs::write(result.with_extension("pid"), pid.as_raw().to_string());
    loop {
        match waitpid(Pid::from_raw(pid.as_raw()), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Outcome::Exited { code }),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Outcome::Signaled { signal: sig as i32 }),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for the exec process: {e}")),
        }
    }
}

/// The caller's side: where the helper binary is and how to run it.
#[derive(Debug, Clone)]
pub struct HelperClient {
    binary: PathBuf,
    /// Scratch dir for result files.
    scratch: PathBuf,
    /// The persistent exec helper (see [`super::zygote`]), started at the first exec.
    zygote: std::sync::Arc<parking_lot::Mutex<Option<super::zygote::Zygote>>>,
}

fn err(e: impl std::fmt::Display) -> LocalError {
    LocalError::Runtime { runtime: "libcontainer", message: e.to_string() }
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl HelperClient {
    /// A client that runs `binary` in helper mode and keeps result files under `scratch`.
    pub fn new(binary: PathBuf, scratch: PathBuf) -> Self {
        HelperClient { binary, scratch, zygote: Default::default() }
    }

    fn base_command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(HELPER_ARG);
        cmd.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    }

    fn result_path(&self) -> PathBuf {
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.scratch.join(format!("helper-{}-{n}.json", std::process::id()))
    }

    fn command(&self, mode: &str, root: &Path, id: &str, result: &Path) -> Command {
        let mut cmd = self.base_command();
        cmd.arg(mode).arg("--root").arg(root).arg("--id").arg(id).arg("--result").arg(result);
        cmd
    }

    fn read_outcome(result: &Path) -> Result<Outcome> {
        let bytes = std::fs::read(result).map_err(|e| err(format!("the helper left no result ({e})")))?;
        let _ = std::fs::remove_file(result);
        serde_json::from_slice(&bytes).map_err(|e| err(format!("unreadable helper result: {e}")))
    }

    /// Create and start a detached container; returns its init pid. The container's stdio is `log`.
    /// Runs in a worker of the persistent helper when it is available (saves starting the helper
    /// binary, ~2 ms), else in a one-shot helper.
    pub fn create_start(&self, root: &Path, id: &str, bundle: &Path, log: &std::fs::File) -> Result<i32> {
        std::fs::create_dir_all(&self.scratch).map_err(LocalError::io("create helper scratch dir"))?;
        let result = self.result_path();
        if std::env::var_os(ONE_SHOT_EXEC_ENV).is_none() {
            let args: Vec<String> = vec![
                "create".into(),
                "--root".into(),
                root.to_string_lossy().into_owned(),
                "--id".into(),
                id.to_string(),
                "--result".into(),
                result.to_string_lossy().into_owned(),
                "--bundle".into(),
                bundle.to_string_lossy().into_owned(),
            ];
            let dup = || log.try_clone().map(OwnedFd::from).map_err(LocalError::io("dup log fd"));
            let devnull = std::fs::File::open("/dev/null").map_err(LocalError::io("open /dev/null"))?;
            let fds = crate::capture::ChildFds { stdin: OwnedFd::from(devnull), stdout: dup()?, stderr: dup()? };
            if let Some(super::ExecWaiter::Zygote { worker, done, result }) =
                self.exec_in_zygote(&args, &fds, &result)?
            {
                drop(fds);
                if !super::wait_closed(&done, std::time::Duration::from_secs(120)) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(worker), nix::sys::signal::Signal::SIGKILL);
                    return Err(err("the container start did not finish within 120 s"));
                }
                return match Self::read_outcome(&result)? {
                    Outcome::Started { pid } => Ok(pid),
                    Outcome::Error { message } => Err(err(message)),
                    other => Err(err(format!("unexpected helper result {other:?}"))),
                };
            }
        }
        let mut cmd = self.command("create", root, id, &result);
        cmd.arg("--bundle").arg(bundle);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(LocalError::io("dup log fd"))?))
            .stderr(Stdio::from(log.try_clone().map_err(LocalError::io("dup log fd"))?));
        let status = super::spawn_locked(&mut cmd)
            .map_err(|e| err(format!("starting helper {}: {e}", self.binary.display())))?
            .wait()
            .map_err(|e| err(format!("waiting for the helper: {e}")))?;
        match Self::read_outcome(&result) {
            Ok(Outcome::Started { pid }) => Ok(pid),
            Ok(Outcome::Error { message }) => Err(err(message)),
            Ok(other) => Err(err(format!("unexpected helper result {other:?}"))),
            Err(e) => Err(err(format!("{e}; helper exit {status}"))),
        }
    }

    /// Start an exec through the helper; the returned waiter waits for it.
    pub fn exec(
        &self,
        root: &Path,
        id: &str,
        p: &super::ExecProcess,
        fds: crate::capture::ChildFds,
    ) -> Result<super::ExecWaiter> {
        self.exec_with(root, id, p, fds, false)
    }

    /// [`Self::exec`]; with `tty` the process leads a new session whose controlling terminal is
    /// its stdin (which must then be a terminal).
    pub fn exec_with(
        &self,
        root: &Path,
        id: &str,
        p: &super::ExecProcess,
        fds: crate::capture::ChildFds,
        tty: bool,
    ) -> Result<super::ExecWaiter> {
        std::fs::create_dir_all(&self.scratch).map_err(LocalError::io("create helper scratch dir"))?;
        let result = self.result_path();
        let mut args: Vec<String> = vec!["exec".into()];
        let mut opt = |k: &str, v: String| args.extend([format!("--{k}"), v]);
        opt("root", root.to_string_lossy().into_owned());
        opt("id", id.to_string());
        opt("result", result.to_string_lossy().into_owned());
        opt("uid", p.uid.to_string());
        opt("gid", p.gid.to_string());
        if let Some(cwd) = &p.cwd {
            opt("cwd", cwd.clone());
        }
        for (k, v) in &p.env {
            opt("env", format!("{k}={v}"));
        }
        if tty {
            opt("tty", "1".into());
        } else if std::env::var_os(TENANT_EXEC_ENV).is_some() {
            opt("via", "tenant".into());
        }
        args.push("--".into());
        args.extend(p.args.iter().cloned());
        if std::env::var_os(ONE_SHOT_EXEC_ENV).is_none()
            && let Some(w) = self.exec_in_zygote(&args, &fds, &result)?
        {
            return Ok(w);
        }
        let mut cmd = self.base_command();
        cmd.args(&args);
        cmd.stdin(Stdio::from(fds.stdin)).stdout(Stdio::from(fds.stdout)).stderr(Stdio::from(fds.stderr));
        let child = super::spawn_locked(&mut cmd)
            .map_err(|e| err(format!("starting helper {}: {e}", self.binary.display())))?;
        Ok(super::ExecWaiter::Helper { child, result })
    }

    /// Hand the exec to the zygote (starting it if needed). `None` when no zygote can take it
    /// (it cannot start, or it is gone before it got the request): run a one-shot helper instead.
    fn exec_in_zygote(
        &self,
        args: &[String],
        fds: &crate::capture::ChildFds,
        result: &Path,
    ) -> Result<Option<super::ExecWaiter>> {
        let (done_r, done_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err(format!("pipe: {e}")))?;
        let raw = [fds.stdin.as_raw_fd(), fds.stdout.as_raw_fd(), fds.stderr.as_raw_fd(), done_w.as_raw_fd()];
        let mut z = self.zygote.lock();
        for _ in 0..2 {
            if z.is_none() {
                match super::zygote::Zygote::start(self.base_command()) {
                    Ok(started) => *z = Some(started),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the exec zygote; using one-shot helpers");
                        return Ok(None);
                    }
                }
            }
            let Some(zy) = z.as_mut() else { return Ok(None) };
            match zy.submit(args, raw) {
                Ok(worker) if worker > 0 => {
                    return Ok(Some(super::ExecWaiter::Zygote { worker, done: done_r, result: result.to_owned() }));
                }
                Ok(_) => return Err(err("the exec zygote could not start a worker")),
                Err(super::zygote::SubmitError::NotSent(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    // Too large for one message (huge env/argv); the zygote itself is fine.
                    return Ok(None);
                }
                Err(super::zygote::SubmitError::NotSent(e)) => {
                    tracing::debug!(error = %e, "exec zygote gone, restarting it");
                    *z = None;
                }
                Err(super::zygote::SubmitError::NoReply(e)) => {
                    // The request may be running: do not run it twice.
                    *z = None;
                    return Err(err(format!("the exec zygote died during the exec: {e}")));
                }
            }
        }
        Ok(None)
    }

    /// Turn a finished helper's result into an exit.
    pub(crate) fn exec_exit(result: &Path) -> Result<crate::reaper::Exit> {
        let _ = std::fs::remove_file(result.with_extension("pid"));
        match Self::read_outcome(result)? {
            Outcome::Exited { code } => Ok(crate::reaper::Exit::Code(code)),
            Outcome::Signaled { signal } => Ok(crate::reaper::Exit::Signal(signal)),
            Outcome::Error { message } => Err(err(message)),
            Outcome::Started { .. } => Err(err("unexpected helper result")),
        }
    }

    /// The tenant pid the helper reported, if it got that far.
    pub(crate) fn exec_pid(result: &Path) -> Option<i32> {
        std::fs::read_to_string(result.with_extension("pid")).ok().and_then(|s| s.trim().parse().ok())
    }
}
