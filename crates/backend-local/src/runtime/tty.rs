//! Terminals for interactive execs: opening a pseudo-terminal pair, sizing it, and receiving the
//! master side that `runc exec --console-socket` sends.
//!
//! The pair is opened in the container's own `devpts` instance (through `/proc/<init>/root`), so
//! inside the container the terminal is a normal `/dev/pts/N` (`tty` prints it). When the container
//! has no usable `/dev/pts/ptmx`, the host's `devpts` is used instead: the process still gets a
//! working terminal, only its name does not resolve inside the container.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::error::{LocalError, Result};

/// The two ends of a pseudo-terminal.
pub struct PtyPair {
    /// The caller's side: read output, write input, resize.
    pub master: OwnedFd,
    /// The process's side: its stdin, stdout and stderr.
    pub slave: OwnedFd,
}

fn sys_err(call: &'static str) -> LocalError {
    LocalError::Sys { call, errno: nix::errno::Errno::last() }
}

/// Open a pair in the `devpts` of the container whose init is `init_pid`, falling back to the
/// host's. Both ends are close-on-exec and neither becomes the caller's controlling terminal.
pub fn open_pair(init_pid: Option<i32>) -> Result<PtyPair> {
    if let Some(pid) = init_pid.filter(|p| *p > 0) {
        match open_in(&Path::new("/proc").join(pid.to_string()).join("root/dev/pts/ptmx")) {
            Ok(p) => return Ok(p),
            Err(e) => tracing::debug!(pid, error = %e, "no terminal in the container's devpts; using the host's"),
        }
    }
    open_in(Path::new("/dev/ptmx"))
}

fn open_in(ptmx: &Path) -> Result<PtyPair> {
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ptmx)
        .map_err(LocalError::io(format!("open {}", ptmx.display())))?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(sys_err("ioctl(TIOCSPTLCK)"));
    }
    // TIOCGPTPEER opens the slave of this very master without a path lookup (no race with
    // another devpts mount over the name).
    // SAFETY: TIOCGPTPEER takes open flags as its integer argument and returns a new fd.
    let fd =
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(sys_err("ioctl(TIOCGPTPEER)"));
    }
    // SAFETY: the ioctl just returned this fd and nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(PtyPair { master, slave })
}

/// Set the terminal size seen by the process (it gets SIGWINCH when the size changes).
pub fn set_size(master: RawFd, cols: u16, rows: u16) -> Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize through a valid pointer.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(sys_err("ioctl(TIOCSWINSZ)"));
    }
    Ok(())
}

/// In the process that is about to run the interactive command: start a new session and make the
/// terminal on fd 0 its controlling terminal (so Ctrl-C, job control and hangups work).
pub fn become_session_leader() -> std::result::Result<(), String> {
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(format!("setsid: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: TIOCSCTTY takes an integer (0: do not steal the terminal from another session).
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(format!("make the terminal the controlling terminal: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Accept one connection on `listener` (already connected and written to by `runc`) and take the
/// terminal master it carries. Call only after runc exited successfully: the message is queued.
pub fn recv_console(listener: &UnixListener) -> Result<OwnedFd> {
    listener.set_nonblocking(true).map_err(LocalError::io("console socket"))?;
    let (conn, _) = listener.accept().map_err(|e| LocalError::Runtime {
        runtime: "runc",
        message: format!("runc did not send the terminal over the console socket: {e}"),
    })?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(LocalError::sys("recvmsg(console socket)"))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(LocalError::sys("recvmsg(console socket)"))? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: fds received with this message are ours to own.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let mut it = fds.into_iter();
    it.next().ok_or_else(|| LocalError::Runtime {
        runtime: "runc",
        message: "runc sent no terminal over the console socket".into(),
    })
}

/// Processes (host pids) whose session is `sid`, including the session leader itself.
pub fn session_members(sid: i32) -> Vec<i32> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After "(comm)": state ppid pgrp session ...
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        if state == "Z" || state == "X" {
            continue;
        }
        if f.nth(2).and_then(|s| s.parse::<i32>().ok()) == Some(sid) {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pair_carries_bytes_and_size() {
        let p = match open_pair(None) {
            Ok(p) => p,
            Err(e) => {
                println!("SKIP: no /dev/ptmx here: {e}");
                return;
            }
        };
        set_size(p.master.as_raw_fd(), 100, 40).unwrap();
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes a winsize through a valid pointer.
        assert_eq!(unsafe { libc::ioctl(p.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (100, 40));
        nix::unistd::write(&p.master, b"x\n").unwrap();
        let mut b = [0u8; 8];
        let n = nix::unistd::read(p.slave.as_raw_fd(), &mut b).unwrap();
        assert_eq!(&b[..n], b"x\n");
    }

    #[test]
    fn own_session_is_found() {
        let sid = nix::unistd::getsid(None).unwrap().as_raw();
        assert!(session_members(sid).contains(&(std::process::id() as i32)));
        assert!(session_members(i32::MAX).is_empty());
    }
}
