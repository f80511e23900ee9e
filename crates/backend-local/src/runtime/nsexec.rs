//! A lean `exec` into a running libcontainer container, done the way `runc exec`/`nsenter` do it.
//!
//! Runs in the single-threaded helper process (see [`super::helper`]), so `fork` is safe. Steps:
//! read the container's init pid and bundle from libcontainer's `state.json`, load its
//! `config.json`, open the init's namespaces and the container cgroup's `cgroup.procs` files, join
//! the pid namespace, `fork`; the child (now in the container's pid namespace) joins the cgroups and
//! the other namespaces (mount last), switches user, drops capabilities, applies `no_new_privs` and
//! the container's seccomp filter, `chdir`s and `execve`s. The helper stays in the host mount
//! namespace and cgroups: it writes the result files and is not charged to the slot's limits.
//!
//! Compared with libcontainer's tenant builder this skips an intermediate process, the notify
//! socket and libcgroups' repeated `/proc/self/mountinfo` scans, and it does apply seccomp (the
//! tenant builder does not).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{Process, Spec};
use libcontainer::syscall::syscall::create_syscall;
use nix::unistd::{Gid, Uid};
use serde::Deserialize;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The part of libcontainer's `<root>/<id>/state.json` we need.
#[derive(Deserialize)]
struct StateFile {
    pid: Option<i32>,
    bundle: PathBuf,
}

/// What to run.
pub struct Request<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    pub args: &'a [String],
    /// `K=V` pairs overriding the container's env.
    pub env: &'a [String],
    pub cwd: Option<&'a str>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Stdin is a terminal: make the process a session leader with it as controlling terminal.
    pub tty: bool,
}

/// Move the calling process into each cgroup whose `cgroup.procs` is open in `procs`.
fn join_cgroups(procs: Vec<File>) -> Result<(), String> {
    for mut f in procs {
        f.write_all(b"0").map_err(|e| format!("join the container's cgroup: {e}"))?;
    }
    Ok(())
}

fn enter(ns: &[(File, libc::c_int, &str)]) -> Result<(), String> {
    for (f, flag, name) in ns {
        // SAFETY: setns on an fd we own; the process is single-threaded, which CLONE_NEWNS needs.
        if unsafe { libc::setns(f.as_raw_fd(), *flag) } != 0 {
            return Err(format!("setns {name}: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// How the exec ended.
pub enum Finished {
    Exited(i32),
    Signaled(i32),
}

/// Everything the child needs, prepared before `fork`.
struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Candidate paths for argv[0], in PATH order.
    candidates: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    process: Process,
    seccomp: Option<libcontainer::oci_spec::runtime::LinuxSeccomp>,
    tty: bool,
}

fn cstr(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte: {s:?}"))
}

/// Run `req` in the container; `on_pid` gets the host pid of the started process as soon as it
/// exists. Blocks until the process ends.
pub fn run(req: &Request<'_>, on_pid: impl FnOnce(i32)) -> Result<Finished, String> {
    let state_path = req.root.join(req.id).join("state.json");
    let state: StateFile = serde_json::from_slice(
        &std::fs::read(&state_path)
            .map_err(|e| format!("read {}: {e}; is the container created?", state_path.display()))?,
    )
    .map_err(|e| format!("parse {}: {e}", state_path.display()))?;
    let pid = state.pid.filter(|p| *p > 0).ok_or("the container has no init process; is it running?")?;
    let config = state.bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|e| format!("load {}: {e}", config.display()))?;
    let process = spec.process().clone().ok_or_else(|| format!("{} has no process", config.display()))?;
    let linux = spec.linux().clone().unwrap_or_default();

    // Namespaces first: opening them fails if the init is gone (or a zombie).
    let kinds: [(&str, libc::c_int); 5] = [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
    ];
    let mut ns = Vec::with_capacity(kinds.len());
    for (name, flag) in kinds {
        let p = format!("/proc/{pid}/ns/{name}");
        let f = File::open(&p).map_err(|e| format!("the container is not running (open {p}: {e})"))?;
        ns.push((f, flag, name));
    }
    // The container's cgroups, opened while the host's cgroup mounts are visible; only the child
    // joins them, so this helper is not charged to the container's limits.
    let cgroups = match linux.cgroups_path() {
        Some(cg) => crate::cgroup::open_procs(&cg.to_string_lossy()).map_err(|e| e.to_string())?,
        None => vec![],
    };
    // Only the pid namespace is joined here (it applies to our children); the child joins the
    // others, so this process stays in the host mount namespace where the result files live.
    let (pid_ns, others): (Vec<_>, Vec<_>) = ns.into_iter().partition(|(_, flag, _)| *flag == libc::CLONE_NEWPID);
    enter(&pid_ns)?;
    drop(pid_ns);

    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the helper is single-threaded, so the child may run arbitrary code after fork.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        drop(rd);
        let prepared = join_cgroups(cgroups)
            .and_then(|()| enter(&others))
            .and_then(|()| prepare(req, process, linux.seccomp().clone()));
        child_main(prepared, wr);
    }
    drop(wr);
    drop(others);
    drop(cgroups);
    on_pid(child);
    let mut msg = String::new();
    let _ = File::from(rd).read_to_string(&mut msg);
    let status = wait(child)?;
    if !msg.is_empty() {
        return Err(msg);
    }
    Ok(status)
}

fn wait(pid: i32) -> Result<Finished, String> {
    loop {
        let mut st: libc::c_int = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("waiting for the exec process: {e}"));
        }
        if libc::WIFEXITED(st) {
            return Ok(Finished::Exited(libc::WEXITSTATUS(st)));
        }
        if libc::WIFSIGNALED(st) {
            return Ok(Finished::Signaled(libc::WTERMSIG(st)));
        }
    }
}

/// Build argv, env, PATH candidates and ids. Runs inside the container's mount namespace.
fn prepare(
    req: &Request<'_>,
    process: Process,
    seccomp: Option<libcontainer::oci_spec::runtime::LinuxSeccomp>,
) -> Result<Prepared, String> {
    let name = req.args.first().ok_or("empty command")?;
    let uid = req.uid.unwrap_or(process.user().uid());
    let gid = req.gid.unwrap_or(process.user().gid());
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |kv: &str| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    };
    for kv in process.env().iter().flatten() {
        set(kv);
    }
    for kv in req.env {
        set(kv);
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), home_of(uid)));
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let candidates = if name.contains('/') {
        vec![cstr(name, "command")?]
    } else {
        path.split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| cstr(&format!("{}/{name}", d.trim_end_matches('/')), "PATH entry"))
            .collect::<Result<_, _>>()?
    };
    let cwd = req.cwd.map(str::to_string).unwrap_or_else(|| process.cwd().to_string_lossy().into_owned());
    Ok(Prepared {
        argv: req.args.iter().map(|a| cstr(a, "argument")).collect::<Result<_, _>>()?,
        envp: env.iter().map(|(k, v)| cstr(&format!("{k}={v}"), "environment")).collect::<Result<_, _>>()?,
        candidates,
        cwd: cstr(if cwd.is_empty() { "/" } else { &cwd }, "working directory")?,
        uid,
        gid,
        process,
        seccomp,
        tty: req.tty,
    })
}

/// The home directory of `uid` in the container's `/etc/passwd`, else `/`.
fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// The forked child: never returns.
fn child_main(p: Result<Prepared, String>, err: OwnedFd) -> ! {
    let p = match p.and_then(|p| setup(&p).map(|()| p)) {
        Ok(p) => p,
        Err(msg) => {
            let mut f = File::from(err);
            let _ = f.write_all(msg.as_bytes());
            // SAFETY: _exit is always safe; skips the parent's atexit handlers and destructors.
            unsafe { libc::_exit(1) }
        }
    };
    let name = p.argv[0].to_string_lossy().into_owned();
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut denied = None;
    let mut last = std::io::Error::from_raw_os_error(libc::ENOENT);
    for c in &p.candidates {
        // SAFETY: NUL-terminated argv/envp arrays of pointers into CStrings that outlive the call.
        unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => denied = Some(e),
            _ => {
                last = e;
                denied = None;
                break;
            }
        }
    }
    let (code, e) = match denied {
        Some(e) => (126, e),
        None if last.raw_os_error() == Some(libc::ENOENT) => (127, last),
        None => (126, last),
    };
    let _ = writeln!(std::io::stderr(), "agentbox: cannot run {name}: {e}");
    drop(err);
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// User, capabilities, no_new_privs, cwd and seccomp, in the order runc uses.
fn setup(p: &Prepared) -> Result<(), String> {
    // SAFETY: plain signal-state syscalls with valid pointers; undo Rust's SIGPIPE=ignore and any
    // blocked signals so the command starts with default dispositions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    if p.tty {
        super::tty::become_session_leader()?;
    }
    let sys = create_syscall();
    for rl in p.process.rlimits().iter().flatten() {
        sys.set_rlimit(rl).map_err(|e| format!("set rlimit {:?}: {e}", rl.typ()))?;
    }
    sys.set_groups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    sys.set_id(Uid::from_raw(p.uid), Gid::from_raw(p.gid))
        .map_err(|e| format!("switch to uid {} gid {}: {e}", p.uid, p.gid))?;
    let nnp = p.process.no_new_privileges() == Some(true);
    if nnp {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("set no_new_privs: {}", std::io::Error::last_os_error()));
        }
    }
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it before dropping caps.
    if !nnp && let Some(s) = &p.seccomp {
        libcontainer::seccomp::initialize_seccomp(s).map_err(|e| format!("seccomp: {e}"))?;
    }
    libcontainer::capabilities::reset_effective(sys.as_ref()).map_err(|e| format!("capabilities: {e}"))?;
    if let Some(caps) = p.process.capabilities() {
        libcontainer::capabilities::drop_privileges(caps, sys.as_ref()).map_err(|e| format!("capabilities: {e}"))?;
    }
    if p.process.capabilities().as_ref().and_then(|c| c.ambient().as_ref()).is_none() {
        // SAFETY: prctl with integer arguments; clears the ambient set (the spec lists none).
        unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    }
    // SAFETY: chdir with a NUL-terminated path.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } != 0 {
        return Err(format!(
            "cannot change to working directory {}: {}",
            p.cwd.to_string_lossy(),
            std::io::Error::last_os_error()
        ));
    }
    if nnp && let Some(s) = &p.seccomp {
        libcontainer::seccomp::initialize_seccomp(s).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_parses_libcontainer_fields() {
        let s: StateFile = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","id":"x","status":"running","pid":42,"bundle":"/b","useSystemd":false}"#,
        )
        .unwrap();
        assert_eq!((s.pid, s.bundle), (Some(42), PathBuf::from("/b")));
    }
}
