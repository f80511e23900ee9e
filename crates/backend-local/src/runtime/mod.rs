//! The OCI runtimes behind one narrow trait: youki's libcontainer (in-process) and the runc CLI.

pub mod helper;
mod libcontainer;
mod nsexec;
mod runc;
pub(crate) mod tty;
mod zygote;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

pub use self::libcontainer::Libcontainer;
pub use self::runc::Runc;
use crate::capture::ChildFds;
use crate::error::Result;
use crate::reaper::Exit;

/// One lock for every process creation in this crate: libcontainer lifecycle calls (which also
/// `chdir` the whole process) and every `Command::spawn`.
///
/// Why spawns too: libcontainer `clone()`s without `exec` and the child keeps running Rust code. If
/// another thread holds a lock at that moment (measured: std's `ENV_LOCK`, which `Command::spawn`
/// holds), the container init deadlocks forever on it. Serializing our own spawns with libcontainer
/// removes that race inside this crate; code elsewhere in the process that spawns processes or
/// touches the environment concurrently can still hit it (see the crate docs).
pub(crate) static PROCESS_LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// `cmd.spawn()` under [`PROCESS_LOCK`].
pub(crate) fn spawn_locked(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    let _g = PROCESS_LOCK.lock();
    cmd.spawn()
}

/// A container to create and start.
pub struct StartRequest<'a> {
    pub id: &'a str,
    /// Bundle directory holding `config.json`.
    pub bundle: &'a Path,
    /// The container's stdout and stderr go here.
    pub log: &'a File,
}

/// A process to run in a running container.
pub struct ExecProcess {
    pub args: Vec<String>,
    /// Added to (overriding) the container's env.
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

/// What the runtime knows about a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeStatus {
    Running { pid: i32 },
    Stopped,
}

/// A started exec process.
pub enum ExecWaiter {
    /// Our direct child.
    Child(i32),
    /// `runc exec` (our child) and the file where it writes the pid of the process it started.
    Runc { child: std::process::Child, pid_file: PathBuf },
    /// The libcontainer helper process (our child) and its result file.
    Helper { child: std::process::Child, result: PathBuf },
    /// A worker of the exec zygote (not our child): it closes `done` when it has written `result`.
    Zygote { worker: i32, done: std::os::fd::OwnedFd, result: PathBuf },
}

/// Wait until the other end of the pipe `fd` is closed, at most `timeout`. True if it closed.
pub(super) fn wait_closed(fd: &std::os::fd::OwnedFd, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            // Nobody writes to the pipe: readable means closed (read returns 0).
            let mut b = [0u8; 1];
            // SAFETY: reading into a 1-byte buffer we own.
            if unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) } <= 0 {
                return true;
            }
        } else if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Timed out (poll waited all that was left), or poll failed.
            return false;
        }
    }
}

impl ExecWaiter {
    /// Wait for the exec to end; at `timeout` kill it with SIGKILL. Returns the exit and whether the
    /// deadline hit.
    pub fn wait(self, timeout: Duration) -> Result<(Exit, bool)> {
        match self {
            ExecWaiter::Child(pid) => {
                let pid = Pid::from_raw(pid);
                let (tx, rx) = mpsc::channel();
                // WNOWAIT leaves the zombie in place, so the pid cannot be reused before we kill it.
                std::thread::spawn(move || {
                    let r = loop {
                        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                            Err(nix::errno::Errno::EINTR) => continue,
                            r => break r,
                        }
                    };
                    let _ = tx.send(r.is_ok());
                });
                let timed_out = match rx.recv_timeout(timeout) {
                    Ok(_) => false,
                    Err(_) => {
                        let _ = kill(pid, Signal::SIGKILL);
                        let _ = rx.recv();
                        true
                    }
                };
                let exit = match waitpid(pid, None) {
                    Ok(WaitStatus::Exited(_, c)) => Exit::Code(c),
                    Ok(WaitStatus::Signaled(_, s, _)) => Exit::Signal(s as i32),
                    _ => Exit::Unknown,
                };
                Ok((exit, timed_out))
            }
            ExecWaiter::Helper { mut child, result } => {
                let (tx, rx) = mpsc::channel();
                let helper_pid = child.id();
                std::thread::spawn(move || {
                    let _ = tx.send(child.wait());
                });
                let timed_out = match rx.recv_timeout(timeout) {
                    Ok(_) => false,
                    Err(_) => {
                        // Kill the tenant; the helper then reaps it and exits.
                        if let Some(target) = helper::HelperClient::exec_pid(&result) {
                            let _ = kill(Pid::from_raw(target), Signal::SIGKILL);
                        }
                        if rx.recv_timeout(Duration::from_secs(2)).is_err() {
                            let _ = kill(Pid::from_raw(helper_pid as i32), Signal::SIGKILL);
                            let _ = rx.recv();
                        }
                        true
                    }
                };
                let exit = match helper::HelperClient::exec_exit(&result) {
                    Ok(e) => e,
                    Err(e) if !timed_out => return Err(e),
                    Err(_) => Exit::Unknown,
                };
                Ok((exit, timed_out))
            }
            ExecWaiter::Zygote { worker, done, result } => {
                let timed_out = !wait_closed(&done, timeout);
                if timed_out {
                    // Kill the tenant; the worker then reaps it, writes the result and exits.
                    if let Some(target) = helper::HelperClient::exec_pid(&result) {
                        let _ = kill(Pid::from_raw(target), Signal::SIGKILL);
                    }
                    if !wait_closed(&done, Duration::from_secs(2)) {
                        let _ = kill(Pid::from_raw(worker), Signal::SIGKILL);
                        wait_closed(&done, Duration::from_secs(2));
                    }
                }
                let exit = match helper::HelperClient::exec_exit(&result) {
                    Ok(e) => e,
                    Err(e) if !timed_out => return Err(e),
                    Err(_) => Exit::Unknown,
                };
                Ok((exit, timed_out))
            }
            ExecWaiter::Runc { mut child, pid_file } => {
                let pid = child.id();
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(child.wait());
                });
                let (status, timed_out) = match rx.recv_timeout(timeout) {
                    Ok(s) => (s, false),
                    Err(_) => {
                        // Kill the process runc started and let `runc exec` reap it: killing runc
                        // first would orphan the process to us as an unreaped zombie, and a zombie
                        // in the container's pid namespace keeps its init from ever exiting.
                        if let Some(target) =
                            std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok())
                        {
                            let _ = kill(Pid::from_raw(target), Signal::SIGKILL);
                        }
                        let status = match rx.recv_timeout(Duration::from_secs(2)) {
                            Ok(s) => s,
                            Err(_) => {
                                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                                rx.recv().unwrap_or_else(|_| Err(std::io::Error::other("waiter gone")))
                            }
                        };
                        (status, true)
                    }
                };
                let _ = std::fs::remove_file(&pid_file);
                use std::os::unix::process::ExitStatusExt;
                let exit = match status {
                    Ok(s) => match (s.code(), s.signal()) {
                        (Some(c), _) => Exit::Code(c),
                        (None, Some(sig)) => Exit::Signal(sig),
                        _ => Exit::Unknown,
                    },
                    Err(_) => Exit::Unknown,
                };
                Ok((exit, timed_out))
            }
        }
    }
}

/// One OCI runtime. All methods block; call them from `spawn_blocking`.
pub trait OciRuntime: Send + Sync {
    fn name(&self) -> &'static str;
    /// Create and start a container; returns its init pid (host pid namespace).
    fn create_start(&self, req: &StartRequest<'_>) -> Result<i32>;
    /// Start a process in a running container.
    fn exec(&self, id: &str, p: &ExecProcess, fds: ChildFds) -> Result<ExecWaiter>;
    /// SIGKILL everything in the container and delete it (missing container = Ok).
    fn kill_delete(&self, id: &str) -> Result<()>;
    /// `None` when the runtime has no such container.
    fn state(&self, id: &str) -> Result<Option<RuntimeStatus>>;
    /// Ids of every container in this runtime's state root.
    fn list(&self) -> Vec<String>;
    /// Start a process with a terminal of `cols`x`rows` in a running container whose init is
    /// `init_pid`. The process leads its own session with the terminal as controlling terminal.
    fn exec_tty(&self, id: &str, p: &ExecProcess, init_pid: i32, cols: u16, rows: u16) -> Result<TtyExec>;
}

/// A started interactive process.
pub struct TtyExec {
    pub waiter: ExecWaiter,
    /// The terminal's master side (close-on-exec).
    pub master: std::os::fd::OwnedFd,
    /// Host pid of the process (its session id), when known.
    pub pid: Option<i32>,
}

/// Wait (at most `timeout`) until the helper reports the pid of the process it started. `None`
/// when it finished without one (it failed before starting the process) or took too long.
pub(crate) fn wait_tenant_pid(w: &ExecWaiter, timeout: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // Whether it finished is checked before the pid is read: a pid written just before the
        // end is still seen.
        let (finished, pid) = match w {
            ExecWaiter::Child(pid) => return Some(*pid),
            ExecWaiter::Runc { pid_file, .. } => {
                (false, std::fs::read_to_string(pid_file).ok().and_then(|s| s.trim().parse().ok()))
            }
            ExecWaiter::Helper { result, .. } => (result.exists(), helper::HelperClient::exec_pid(result)),
            ExecWaiter::Zygote { done, result, .. } => {
                (wait_closed(done, Duration::from_millis(1)), helper::HelperClient::exec_pid(result))
            }
        };
        if pid.is_some() {
            return pid;
        }
        if finished || std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn list_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
