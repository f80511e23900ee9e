//! Collecting an exec's stdout/stderr through pipes (the exec process is our child and exits, so
//! reading its pipes is safe), bounded by a capture limit.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::{LocalError, Result};

/// Per stream capture limit.
pub const CAPTURE_LIMIT: usize = 4 << 20;

/// The parent ends of an exec's stdio pipes and the child ends to hand to the runtime.
pub struct ExecPipes {
    pub child_stdin: OwnedFd,
    pub child_stdout: OwnedFd,
    pub child_stderr: OwnedFd,
    parent_stdin: Option<OwnedFd>,
    parent_stdout: OwnedFd,
    parent_stderr: OwnedFd,
}

impl ExecPipes {
    /// Pipes for stdout/stderr; stdin is a pipe when `with_stdin`, else `/dev/null`.
    pub fn new(with_stdin: bool) -> Result<ExecPipes> {
        let p = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LocalError::sys("pipe2"));
        let (out_r, out_w) = p()?;
        let (err_r, err_w) = p()?;
        let (child_stdin, parent_stdin) = if with_stdin {
            let (r, w) = p()?;
            (r, Some(w))
        } else {
            let f = std::fs::File::open("/dev/null").map_err(LocalError::io("open /dev/null"))?;
            (OwnedFd::from(f), None)
        };
        Ok(ExecPipes {
            child_stdin,
            child_stdout: out_w,
            child_stderr: err_w,
            parent_stdin,
            parent_stdout: out_r,
            parent_stderr: err_r,
        })
    }

    /// Split off the parent ends; the caller then gives the child ends to the runtime and drops them.
    pub fn split(self) -> (ChildFds, ParentFds) {
        (
            ChildFds { stdin: self.child_stdin, stdout: self.child_stdout, stderr: self.child_stderr },
            ParentFds { stdin: self.parent_stdin, stdout: self.parent_stdout, stderr: self.parent_stderr },
        )
    }
}

pub struct ChildFds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

pub struct ParentFds {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Output being collected in a background thread.
pub struct Capture {
    done: Arc<AtomicBool>,
    reader: JoinHandle<(Vec<u8>, Vec<u8>, bool)>,
}

/// Captured output.
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

impl Capture {
    /// Start writing `stdin` (then closing it) and reading stdout/stderr.
    pub fn start(fds: ParentFds, stdin: Option<Vec<u8>>) -> Capture {
        if let Some(w) = fds.stdin {
            let data = stdin.unwrap_or_default();
            std::thread::spawn(move || {
                let mut f = std::fs::File::from(w);
                // EPIPE when the process does not read its stdin is fine.
                let _ = f.write_all(&data);
            });
        }
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let reader = std::thread::spawn(move || read_both(fds.stdout, fds.stderr, &d));
        Capture { done, reader }
    }

    /// Call after the process exited: drain what is left and return the output. Output still held
    /// open by background processes of the exec is not waited for.
    pub fn finish(self) -> Captured {
        self.done.store(true, Ordering::Release);
        let (stdout, stderr, truncated) = self.reader.join().unwrap_or_default();
        Captured { stdout, stderr, truncated }
    }
}

fn read_both(out: OwnedFd, err: OwnedFd, done: &AtomicBool) -> (Vec<u8>, Vec<u8>, bool) {
    let fds = [out, err];
    let mut bufs = [Vec::new(), Vec::new()];
    let mut open = [true, true];
    let mut truncated = false;
    let mut chunk = vec![0u8; 64 * 1024];
    while open.iter().any(|o| *o) {
        let finishing = done.load(Ordering::Acquire);
        let idx: Vec<usize> = (0..2).filter(|i| open[*i]).collect();
        let mut pfds: Vec<PollFd<'_>> = idx.iter().map(|i| PollFd::new(fds[*i].as_fd(), PollFlags::POLLIN)).collect();
        let timeout = if finishing { PollTimeout::from(10u8) } else { PollTimeout::from(50u8) };
        match poll(&mut pfds, timeout) {
            Ok(0) if finishing => break,
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = pfds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(pfds);
        for (k, i) in idx.iter().enumerate() {
            if !ready[k] {
                continue;
            }
            match nix::unistd::read(fds[*i].as_raw_fd(), &mut chunk) {
                Ok(0) => open[*i] = false,
                Ok(n) => {
                    let room = CAPTURE_LIMIT.saturating_sub(bufs[*i].len());
                    if n > room {
                        truncated = true;
                    }
                    bufs[*i].extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => open[*i] = false,
            }
        }
    }
    let [o, e] = bufs;
    (o, e, truncated)
}
