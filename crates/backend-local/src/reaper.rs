//! Reaping container init processes.
//!
//! The backend makes the process a child subreaper, so container inits (started by libcontainer
//! with `CLONE_PARENT`, or orphaned when `runc create` exits) are our children. One thread polls
//! `waitpid(pid, WNOHANG)` for each KNOWN init pid only: `waitpid(-1)` would steal exit statuses
//! of children that tokio/std wait for themselves. Pids that are not our children (adopted after a
//! restart) are watched through `/proc/<pid>/stat` (alive + same start time).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use parking_lot::Mutex;

/// How a tracked process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It is gone, but someone else collected its status.
    Unknown,
}

impl Exit {
    /// The shell-style exit code (128+N for signal N).
    pub fn code(&self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(*c),
            Exit::Signal(s) => Some(128 + s),
            Exit::Unknown => None,
        }
    }
}

#[derive(Debug)]
struct Tracked {
    start_time: u64,
    exit: Option<Exit>,
}

type Tick = Box<dyn Fn() + Send + Sync>;

struct Inner {
    pids: Mutex<HashMap<i32, Tracked>>,
    stop: AtomicBool,
}

/// Tracks container init pids and collects their exit statuses.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

/// `(state, starttime)` of a process from `/proc/<pid>/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is alive (not a zombie) and is the process that started at `start_time`.
pub fn alive(pid: i32, start_time: u64) -> bool {
    pid > 0 && matches!(proc_stat(pid), Some((st, t)) if st != 'Z' && st != 'X' && t == start_time)
}

fn status_to_exit(st: WaitStatus) -> Option<Exit> {
    match st {
        WaitStatus::Exited(_, c) => Some(Exit::Code(c)),
        WaitStatus::Signaled(_, s, _) => Some(Exit::Signal(s as i32)),
        _ => None,
    }
}

impl Reaper {
    /// Become a child subreaper and start the reaping thread. `tick` runs about once a second on
    /// that thread (housekeeping such as log rotation).
    pub fn start(tick: Tick) -> std::io::Result<Reaper> {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers and only sets a process flag.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let inner = Arc::new(Inner { pids: Mutex::new(HashMap::new()), stop: AtomicBool::new(false) });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new().name("agentbox-reaper".into()).spawn(move || {
            let mut last_tick = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(20));
                let Some(inner) = weak.upgrade() else { return };
                if inner.stop.load(Ordering::Relaxed) {
                    return;
                }
                Reaper { inner }.poll();
                if last_tick.elapsed() >= Duration::from_secs(1) {
                    last_tick = Instant::now();
                    tick();
                }
            }
        })?;
        Ok(Reaper { inner })
    }

    fn poll(&self) {
        let mut pids = self.inner.pids.lock();
        for (pid, t) in pids.iter_mut().filter(|(_, t)| t.exit.is_none()) {
            match waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(st) => t.exit = status_to_exit(st).or(t.exit),
                Err(Errno::ECHILD) => {
                    if !alive(*pid, t.start_time) {
                        t.exit = Some(Exit::Unknown);
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Start watching an init pid.
    pub fn track(&self, pid: i32, start_time: u64) {
        self.inner.pids.lock().insert(pid, Tracked { start_time, exit: None });
    }

    /// The exit of a tracked pid, if it ended (polls once right now).
    pub fn exit_of(&self, pid: i32) -> Option<Exit> {
        self.poll_one(pid);
        self.inner.pids.lock().get(&pid).and_then(|t| t.exit)
    }

    fn poll_one(&self, pid: i32) {
        let mut pids = self.inner.pids.lock();
        if let Some(t) = pids.get_mut(&pid).filter(|t| t.exit.is_none()) {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(st) => t.exit = status_to_exit(st).or(t.exit),
                Err(Errno::ECHILD) if !alive(pid, t.start_time) => t.exit = Some(Exit::Unknown),
                Err(_) => {}
            }
        }
    }

    /// Stop watching a pid that is being killed and wait (up to `timeout`) until it is gone.
    pub fn untrack_and_wait(&self, pid: i32, timeout: Duration) -> Option<Exit> {
        let tracked = self.inner.pids.lock().remove(&pid);
        let start_time = tracked.as_ref().map(|t| t.start_time);
        if let Some(exit) = tracked.and_then(|t| t.exit) {
            return Some(exit);
        }
        if pid <= 0 {
            return None;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(st) => return status_to_exit(st),
                Err(_) => {
                    // Not our child: wait until it disappears.
                    if start_time.is_none_or(|s| !alive(pid, s)) {
                        return Some(Exit::Unknown);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stop the thread (the tracked processes keep running).
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_of_self() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(state == 'R' || state == 'S');
        assert!(alive(std::process::id() as i32, start));
        assert!(!alive(std::process::id() as i32, start + 1));
    }

    #[test]
    // The reaper under test is what waits for the child.
    #[allow(clippy::zombie_processes)]
    fn collects_exit_codes_of_tracked_children() {
        let r = Reaper::start(Box::new(|| {})).unwrap();
        let child = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = child.id() as i32;
        r.track(pid, proc_stat(pid).map(|s| s.1).unwrap_or(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.exit_of(pid).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(r.exit_of(pid), Some(Exit::Code(7)));
        assert_eq!(r.untrack_and_wait(pid, Duration::from_millis(1)), Some(Exit::Code(7)));
        r.shutdown();
    }
}
