//! Process manager: starts commands (pipes or a PTY), fans their output out to every
//! attached stream, and keeps them running when clients go away so they can be
//! reconnected by pid or tag until they exit.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal as NixSignal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::connect::{Code, ConnectError};
use crate::proto::process::{
    EndEvent, OutputKind, ProcessConfig, ProcessEvent, ProcessInfo, ProcessSelector, Signal, StartEvent, StartRequest,
};
use crate::users::{User, resolve_path};

/// Receives the events of one process for one client stream.
pub type EventRx = mpsc::UnboundedReceiver<ProcessEvent>;

enum Input {
    Pipe(tokio::process::ChildStdin),
    Pty(Arc<std::fs::File>),
}

/// One running process.
pub struct Proc {
    pid: u32,
    tag: Option<String>,
    config: ProcessConfig,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<ProcessEvent>>>,
    input: tokio::sync::Mutex<Option<Input>>,
    pty_master: Option<Arc<std::fs::File>>,
}

impl Proc {
    fn publish(&self, ev: ProcessEvent) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|tx| tx.send(ev.clone()).is_ok());
    }

    fn subscribe(&self) -> EventRx {
        let (tx, rx) = mpsc::unbounded_channel();
        let start = ProcessEvent { start: Some(StartEvent { pid: self.pid }), ..Default::default() };
        let _ = tx.send(start);
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }
}

/// All processes started by this agent that have not exited yet.
#[derive(Default)]
pub struct ProcessManager {
    procs: Mutex<HashMap<u32, Arc<Proc>>>,
}

fn end_event(status: ExitStatus) -> EndEvent {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => {
            EndEvent { exit_code: code, exited: true, status: format!("exit status {code}"), error: None }
        }
        (None, Some(sig)) => {
            let name = NixSignal::try_from(sig).map(|s| s.as_str()).unwrap_or("unknown");
            EndEvent {
                exit_code: -1,
                exited: false,
                status: format!("signal: {}", name.trim_start_matches("SIG").to_lowercase()),
                error: None,
            }
        }
        (None, None) => EndEvent { exit_code: -1, exited: false, status: "unknown".into(), error: None },
    }
}

async fn pump(proc_: Arc<Proc>, mut reader: impl AsyncRead + Unpin, kind: OutputKind) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => proc_.publish(ProcessEvent::data(kind, buf[..n].to_vec())),
        }
    }
}

impl ProcessManager {
    /// Starts a process as `user` with `base_env` (from `/init`) under the request's env.
    /// Returns the first subscription, whose first event is the start event.
    pub fn start(
        self: &Arc<Self>,
        req: StartRequest,
        user: &User,
        base_env: &HashMap<String, String>,
    ) -> Result<EventRx, ConnectError> {
        let config = req.process.clone().unwrap_or_default();
        if config.cmd.is_empty() {
            return Err(ConnectError::new(Code::InvalidArgument, "process.cmd is required"));
        }
        let cwd = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => {
                let p = resolve_path(user, c);
                if !p.is_dir() {
                    return Err(ConnectError::new(
                        Code::InvalidArgument,
                        format!("cwd {} does not exist or is not a directory", p.display()),
                    ));
                }
                p
            }
            None if user.home.is_dir() => user.home.clone(),
            None => "/".into(),
        };

        let mut cmd = tokio::process::Command::new(&config.cmd);
        cmd.args(&config.args).current_dir(&cwd);
        cmd.env("HOME", &user.home).env("USER", &user.name).env("LOGNAME", &user.name);
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        }
        cmd.envs(base_env).envs(&config.envs);
        if nix::unistd::getuid().is_root() && user.uid != 0 {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd.kill_on_drop(false);

        let pty_size = req.pty.as_ref().map(|p| p.size.clone().unwrap_or_default());
        let spawn_err =
            |e: std::io::Error| ConnectError::new(Code::InvalidArgument, format!("cannot start {}: {e}", config.cmd));
        let (mut child, pty_master) = if let Some(size) = pty_size {
            let cols = u16::try_from(size.cols).ok().filter(|c| *c > 0).unwrap_or(80);
            let rows = u16::try_from(size.rows).ok().filter(|r| *r > 0).unwrap_or(24);
            let pair = crate::pty::open(cols, rows)
                .map_err(|e| ConnectError::new(Code::Internal, format!("cannot open a pty: {e}")))?;
            let slave: OwnedFd = pair.slave;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| ConnectError::io(&e, "dup pty"));
            cmd.stdin(Stdio::from(dup(&slave)?)).stdout(Stdio::from(dup(&slave)?)).stderr(Stdio::from(slave));
            cmd.env("TERM", config.envs.get("TERM").map_or("xterm-256color", |t| t.as_str()));
            crate::pty::make_controlling_terminal(&mut cmd);
            let child = cmd.spawn().map_err(spawn_err)?;
            (child, Some(Arc::new(std::fs::File::from(pair.master))))
        } else {
            let stdin = if req.stdin.unwrap_or(false) { Stdio::piped() } else { Stdio::null() };
            cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
            (cmd.spawn().map_err(spawn_err)?, None)
        };
        let pid = child.id().unwrap_or_default();
        let input = match (&pty_master, child.stdin.take()) {
            (Some(m), _) => Some(Input::Pty(m.clone())),
            (None, Some(s)) => Some(Input::Pipe(s)),
            (None, None) => None,
        };
        let proc_ = Arc::new(Proc {
            pid,
            tag: req.tag.clone(),
            config,
            subscribers: Mutex::new(Vec::new()),
            input: tokio::sync::Mutex::new(input),
            pty_master: pty_master.clone(),
        });
        let rx = proc_.subscribe();
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).insert(pid, proc_.clone());

        let mut readers = Vec::new();
        if let Some(master) = pty_master {
            let p = proc_.clone();
            readers.push(tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut buf = vec![0u8; 32 * 1024];
                let mut f: &std::fs::File = &master;
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    p.publish(ProcessEvent::data(OutputKind::Pty, buf[..n].to_vec()));
                }
            }));
        } else {
            if let Some(out) = child.stdout.take() {
                readers.push(tokio::spawn(pump(proc_.clone(), out, OutputKind::Stdout)));
            }
            if let Some(err) = child.stderr.take() {
                readers.push(tokio::spawn(pump(proc_.clone(), err, OutputKind::Stderr)));
            }
        }

        let manager = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Output still buffered in the pipes belongs before the end event; a
            // grandchild that keeps the pipe open must not hold the end event forever.
            let drain = futures::future::join_all(readers);
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
            let end = match status {
                Ok(s) => end_event(s),
                Err(e) => EndEvent { exit_code: -1, exited: false, status: "error".into(), error: Some(e.to_string()) },
            };
            manager.procs.lock().unwrap_or_else(|e| e.into_inner()).remove(&proc_.pid);
            proc_.publish(ProcessEvent { end: Some(end), ..Default::default() });
            proc_.subscribers.lock().unwrap_or_else(|e| e.into_inner()).clear();
            *proc_.input.lock().await = None;
        });
        Ok(rx)
    }

    fn find(&self, sel: Option<&ProcessSelector>) -> Result<Arc<Proc>, ConnectError> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let found = match sel {
            Some(ProcessSelector { pid: Some(pid), .. }) => procs.get(pid).cloned(),
            Some(ProcessSelector { tag: Some(tag), .. }) => {
                procs.values().find(|p| p.tag.as_deref() == Some(tag)).cloned()
            }
            _ => {
                return Err(ConnectError::new(Code::InvalidArgument, "process selector (pid or tag) is required"));
            }
        };
        found.ok_or_else(|| ConnectError::new(Code::NotFound, "process not found: it may have exited"))
    }

    /// Attaches to a running process; the first event is a start event with its pid.
    pub fn connect(&self, sel: Option<&ProcessSelector>) -> Result<EventRx, ConnectError> {
        Ok(self.find(sel)?.subscribe())
    }

    /// The running processes.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ProcessInfo> = procs
            .values()
            .map(|p| ProcessInfo { config: Some(p.config.clone()), pid: p.pid, tag: p.tag.clone() })
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Writes to the process's stdin (or its PTY).
    pub async fn send_input(&self, sel: Option<&ProcessSelector>, data: &[u8]) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        let mut input = p.input.lock().await;
        match input.as_mut() {
            Some(Input::Pipe(stdin)) => {
                stdin.write_all(data).await.map_err(|e| ConnectError::io(&e, "write stdin"))?;
                stdin.flush().await.map_err(|e| ConnectError::io(&e, "write stdin"))
            }
            Some(Input::Pty(master)) => {
                let master = master.clone();
                let data = data.to_vec();
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    (&*master).write_all(&data)
                })
                .await
                .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))?
                .map_err(|e| ConnectError::io(&e, "write pty"))
            }
            None => {
                Err(ConnectError::new(Code::FailedPrecondition, "stdin is not open: start the process with stdin=true"))
            }
        }
    }

    /// Closes the process's stdin so it reads end-of-file.
    pub async fn close_stdin(&self, sel: Option<&ProcessSelector>) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        let mut input = p.input.lock().await;
        match input.take() {
            Some(Input::Pipe(mut s)) => {
                let _ = s.shutdown().await;
                Ok(())
            }
            Some(Input::Pty(m)) => {
                *input = Some(Input::Pty(m));
                Err(ConnectError::new(
                    Code::FailedPrecondition,
                    "cannot close stdin of a pty process: send ctrl-d instead",
                ))
            }
            None => Ok(()),
        }
    }

    /// Sends SIGTERM or SIGKILL to the process's group (and the process itself).
    pub fn signal(&self, sel: Option<&ProcessSelector>, signal: i32) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        let sig = match Signal::try_from(signal) {
            Ok(Signal::Sigterm) => NixSignal::SIGTERM,
            Ok(Signal::Sigkill) => NixSignal::SIGKILL,
            _ => {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    "signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL",
                ));
            }
        };
        let pid = Pid::from_raw(i32::try_from(p.pid).unwrap_or(i32::MAX));
        let _ = killpg(pid, sig);
        kill(pid, sig)
            .or_else(|e| if e == nix::errno::Errno::ESRCH { Ok(()) } else { Err(e) })
            .map_err(|e| ConnectError::new(Code::Internal, format!("kill: {e}")))
    }

    /// Resizes the process's PTY.
    pub fn resize(&self, sel: Option<&ProcessSelector>, cols: u32, rows: u32) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        let Some(master) = &p.pty_master else {
            return Err(ConnectError::new(Code::FailedPrecondition, "the process has no pty"));
        };
        let fd = master.try_clone().map_err(|e| ConnectError::io(&e, "dup pty"))?;
        let fd = OwnedFd::from(fd);
        let c = u16::try_from(cols).unwrap_or(u16::MAX);
        let r = u16::try_from(rows).unwrap_or(u16::MAX);
        crate::pty::resize(&fd, c, r).map_err(|e| ConnectError::io(&e, "resize pty"))
    }
}
