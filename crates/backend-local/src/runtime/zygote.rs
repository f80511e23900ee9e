//! A persistent helper process that forks one worker per exec, so an exec does not pay for
//! starting the helper binary (its `execve` and dynamic loading cost ~2 ms of the exec).
//!
//! The zygote is our binary in helper mode (`<bin> __libcontainer-helper zygote --result -`),
//! started once per [`super::helper::HelperClient`]. It is single-threaded and never changes its
//! own namespaces or cgroups; each worker is a plain `fork` of it that runs the same `exec` code as
//! the one-shot helper, so the worker is as safe to fork from as the one-shot helper.
//!
//! Protocol over a `SOCK_SEQPACKET` socketpair (the zygote's stdin): one message per exec carrying
//! the helper arguments as JSON and four fds (the exec's stdin, stdout, stderr and the write end of
//! a "done" pipe); the zygote answers with the worker's pid (4 bytes, native endian). The worker
//! holds the done pipe (close-on-exec, so the tenant does not) until it has written the result
//! file, then exits; the caller waits for EOF on the pipe. The zygote exits on EOF on its socket,
//! i.e. when the server closes it or dies.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};

/// Largest request the zygote accepts (argv and env of one exec).
const MAX_REQUEST: usize = 1 << 20;

/// The caller's handle on a running zygote.
#[derive(Debug)]
pub struct Zygote {
    child: Child,
    sock: UnixDatagram,
}

impl Zygote {
    /// Start the zygote; `cmd` is the helper command (binary, helper arg, env) without a mode.
    pub fn start(mut cmd: Command) -> std::io::Result<Zygote> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(std::io::Error::from)?;
        cmd.arg("zygote").arg("--result").arg("-");
        cmd.stdin(Stdio::from(theirs)).stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = super::spawn_locked(&mut cmd)?;
        Ok(Zygote { child, sock: UnixDatagram::from(ours) })
    }

    /// Hand one exec to the zygote; returns the worker's pid (`-1`: the zygote refused it).
    pub fn submit(&mut self, args: &[String], fds: [RawFd; 4]) -> Result<i32, SubmitError> {
        let payload = serde_json::to_vec(args).map_err(|e| SubmitError::NotSent(std::io::Error::other(e)))?;
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(self.sock.as_raw_fd(), &[IoSlice::new(&payload)], &cmsg, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(|e| SubmitError::NotSent(e.into()))?;
        let mut reply = [0u8; 4];
        match self.sock.recv(&mut reply) {
            Ok(4) => Ok(i32::from_ne_bytes(reply)),
            Ok(_) => Err(SubmitError::NoReply(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "it exited"))),
            Err(e) => Err(SubmitError::NoReply(e)),
        }
    }
}

/// Why [`Zygote::submit`] failed.
#[derive(Debug)]
pub enum SubmitError {
    /// The request never reached the zygote: safe to retry with a new one.
    NotSent(std::io::Error),
    /// The zygote got the request but did not answer: it may be running.
    NoReply(std::io::Error),
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Closing our end makes the zygote exit; reap it (it exits at once, SIGKILL if not).
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The zygote's loop (helper mode `zygote`): the socket is fd 0. `run` executes one request's
/// helper arguments in a worker and returns its exit code. Returns when the socket closes.
pub fn serve(run: fn(&[String]) -> i32) -> i32 {
    // SAFETY: set before any child exists; workers are reaped by the kernel (they report through
    // their result files and done pipes, not their exit status).
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    crate::cgroup::preload();
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, fds) = match recvmsg::<()>(0, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                let mut fds: Vec<OwnedFd> = Vec::new();
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(v) = c {
                            // SAFETY: fds just received with this message are ours to own.
                            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                }
                (m.bytes, fds)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 0,
        };
        if len == 0 {
            return 0;
        }
        let args: Vec<String> = match serde_json::from_slice(&buf[..len]) {
            Ok(a) if fds.len() == 4 => a,
            _ => {
                reply(-1);
                continue;
            }
        };
        // SAFETY: the zygote is single-threaded, so the worker may run arbitrary code after fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            worker(&args, fds, run);
        }
        drop(fds);
        reply(pid);
    }
}

fn reply(pid: i32) {
    // SAFETY: fd 0 is the zygote's socket for its whole life; a 4-byte buffer we own.
    unsafe { libc::send(0, pid.to_ne_bytes().as_ptr().cast(), 4, libc::MSG_NOSIGNAL) };
}

fn worker(args: &[String], fds: Vec<OwnedFd>, run: fn(&[String]) -> i32) -> ! {
    // SAFETY: plain syscalls in the freshly forked, single-threaded worker: restore SIGCHLD so it
    // can wait for its own child, and put the exec's stdio on 0-2 (replacing the socket on 0).
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        for (i, fd) in fds.iter().take(3).enumerate() {
            libc::dup2(fd.as_raw_fd(), i as RawFd);
        }
    }
    let mut fds = fds;
    // Keep the done pipe open until we exit; close the originals of 0-2.
    let done = fds.pop();
    drop(fds);
    let code = run(args);
    drop(done);
    // SAFETY: leave without running the zygote's atexit handlers or destructors.
    unsafe { libc::_exit(code) }
}
