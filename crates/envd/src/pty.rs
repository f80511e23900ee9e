//! Pseudo-terminal plumbing: the only module with `unsafe` (a `pre_exec` hook that makes the
//! PTY the child's controlling terminal, and the window-size ioctl).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use nix::pty::{OpenptyResult, Winsize, openpty};

/// A new PTY pair with the given size.
pub fn open(cols: u16, rows: u16) -> std::io::Result<OpenptyResult> {
    let ws = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    openpty(Some(&ws), None).map_err(std::io::Error::from)
}

/// Sets the window size of the terminal behind `master`.
pub fn resize(master: &OwnedFd, cols: u16, rows: u16) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: `master` is an open fd owned for the duration of the call and `ws` is a valid
    // `winsize` that TIOCSWINSZ only reads.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Makes the child a session leader whose controlling terminal is its stdin (the PTY slave).
pub fn make_controlling_terminal(cmd: &mut tokio::process::Command) {
    // SAFETY: the hook runs in the forked child before exec and only calls the
    // async-signal-safe `setsid` and `ioctl`; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
