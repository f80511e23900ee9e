//! `Backend::exec_pty`: an interactive process with a terminal, driven by one task per session.
//!
//! The runtime starts the process with a pseudo-terminal (see `runtime::tty`); this module owns the
//! master side. One task moves bytes both ways (never blocking on a write while output waits, so a
//! chatty process and a fast typist cannot deadlock each other), applies resizes, and ends the
//! session:
//! - the process exits: every process left in its session is killed, the remaining output is
//!   drained, the output channel closes, then the exit code is sent;
//! - the caller sends `Close` or drops `input`: EOT (Ctrl-D) is typed, then after a grace period
//!   the session gets SIGHUP, then SIGKILL; the exit is reported as above.
//!
//! The process runs in its own session (it is the session leader), so "its processes" are exactly
//! the processes of that session: background jobs included, `setsid` escapees excluded.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentbox_core::backend::{PtyInput, PtySession};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::error::{LocalError, Result};
use crate::runtime::tty::session_members;
use crate::runtime::{ExecWaiter, TtyExec};

/// How long a process may take to react to EOT before it is hung up on.
const EOT_GRACE: Duration = Duration::from_millis(500);
/// How long a hung-up process may take before it is killed.
const HUP_GRACE: Duration = Duration::from_millis(500);
/// How long output is drained after the process exited.
const DRAIN: Duration = Duration::from_secs(2);
/// A terminal session has no deadline of its own (the waiters take one).
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Input buffered towards the terminal before the caller is made to wait.
const MAX_PENDING: usize = 64 << 10;

/// Take over a started interactive process and return the caller's handle on it.
pub(crate) fn drive(started: TtyExec) -> Result<PtySession> {
    let TtyExec { waiter, master, pid } = started;
    nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_RDWR),
    )
    .map_err(LocalError::sys("fcntl(O_NONBLOCK)"))?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, stays open until it is dropped, and always
    // reports the same fd.
    let master = unsafe { AsyncFd::register(master) }
        .map_err(|e| LocalError::io("register the terminal with the reactor")(e.into()))?;
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(64);
    let (exit_tx, exit_rx) = oneshot::channel();
    let (waited_tx, waited_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("agentbox-pty-wait".into())
        .spawn(move || {
            let _ = waited_tx.send(wait_exit(waiter));
        })
        .map_err(LocalError::io("start the terminal waiter thread"))?;
    tokio::spawn(run(
        Session { master, pid, exited: Arc::new(AtomicBool::new(false)) },
        in_rx,
        out_tx,
        waited_rx,
        exit_tx,
    ));
    Ok(PtySession { input: in_tx, output: out_rx, exit: exit_rx })
}

/// The exit code of the process (128+N for signal N, -1 when unknown).
fn wait_exit(waiter: ExecWaiter) -> std::result::Result<i32, String> {
    match waiter.wait(FOREVER) {
        Ok((exit, _)) => Ok(exit.code().unwrap_or(-1)),
        Err(e) => Err(e.to_string()),
    }
}

struct Session {
    master: AsyncFd<OwnedFd>,
    pid: Option<i32>,
    exited: Arc<AtomicBool>,
}

/// Send `sig` to every process of the session led by `pid`.
fn signal_session(pid: Option<i32>, sig: Signal) {
    let Some(sid) = pid.filter(|p| *p > 1) else { return };
    for p in session_members(sid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

enum Read {
    Data(Vec<u8>),
    /// Every holder of the terminal's other side closed it.
    Closed,
    WouldBlock,
}

fn read_master(fd: &OwnedFd, buf: &mut [u8]) -> Read {
    match nix::unistd::read(fd.as_raw_fd(), buf) {
        Ok(0) => Read::Closed,
        Ok(n) => Read::Data(buf[..n].to_vec()),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => Read::WouldBlock,
        // EIO: the other side hung up.
        Err(_) => Read::Closed,
    }
}

async fn run(
    s: Session,
    mut input: mpsc::Receiver<PtyInput>,
    output: mpsc::Sender<Vec<u8>>,
    waited: oneshot::Receiver<std::result::Result<i32, String>>,
    exit_tx: oneshot::Sender<i32>,
) {
    let mut buf = vec![0u8; 32 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut input_open = true;
    let mut output_open = true;
    let mut eof = false;
    let mut closing = false;
    let mut waited = waited;
    let code = loop {
        tokio::select! {
            r = s.master.readable(), if !eof => {
                let Ok(mut g) = r else { eof = true; continue };
                match read_master(g.get_inner(), &mut buf) {
                    Read::Data(d) => {
                        if output_open && output.send(d).await.is_err() {
                            output_open = false;
                        }
                    }
                    Read::Closed => eof = true,
                    Read::WouldBlock => g.clear_ready(),
                }
            }
            w = s.master.writable(), if !pending.is_empty() => {
                let Ok(mut g) = w else { pending.clear(); continue };
                match nix::unistd::write(g.get_inner(), &pending) {
                    Ok(n) => { pending.drain(..n); }
                    Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => g.clear_ready(),
                    Err(_) => pending.clear(),
                }
            }
            m = input.recv(), if input_open && pending.len() < MAX_PENDING => match m {
                Some(PtyInput::Data(d)) => pending.extend_from_slice(&d),
                Some(PtyInput::Resize { cols, rows }) => {
                    if let Err(e) = crate::runtime::tty::set_size(s.master.get_ref().as_raw_fd(), cols, rows) {
                        tracing::debug!(error = %e, "terminal resize failed");
                    }
                }
                Some(PtyInput::Close) | None => {
                    input_open = false;
                    if !closing {
                        closing = true;
                        pending.push(0x04);
                        tokio::spawn(escalate(s.pid, s.exited.clone()));
                    }
                }
            },
            r = &mut waited => {
                break match r {
                    Ok(Ok(code)) => code,
                    Ok(Err(msg)) => {
                        if output_open {
                            let _ = output.send(format!("\r\nagentbox: {msg}\r\n").into_bytes()).await;
                        }
                        -1
                    }
                    Err(_) => -1,
                };
            }
        }
    };
    s.exited.store(true, Ordering::Release);
    // Whatever the process left running in its session ends with it.
    signal_session(s.pid, Signal::SIGKILL);
    // Drain what is still buffered, until every holder of the terminal is gone (or DRAIN passed).
    let deadline = tokio::time::Instant::now() + DRAIN;
    while !eof {
        let Ok(r) = tokio::time::timeout_at(deadline, s.master.readable()).await else { break };
        let Ok(mut g) = r else { break };
        match read_master(g.get_inner(), &mut buf) {
            Read::Data(d) => {
                if output_open && output.send(d).await.is_err() {
                    output_open = false;
                }
            }
            Read::Closed => eof = true,
            Read::WouldBlock => g.clear_ready(),
        }
    }
    drop(output);
    let _ = exit_tx.send(code);
}

/// After the caller left: hang up on the session, then kill it, unless it exited by itself.
async fn escalate(pid: Option<i32>, exited: Arc<AtomicBool>) {
    tokio::time::sleep(EOT_GRACE).await;
    if exited.load(Ordering::Acquire) {
        return;
    }
    signal_session(pid, Signal::SIGHUP);
    signal_session(pid, Signal::SIGCONT);
    tokio::time::sleep(HUP_GRACE).await;
    if exited.load(Ordering::Acquire) {
        return;
    }
    signal_session(pid, Signal::SIGKILL);
}
