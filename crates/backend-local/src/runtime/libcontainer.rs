//! youki's libcontainer, in-process.
//!
//! libcontainer `chdir`s the whole process around its notify socket, and its clones run Rust code
//! without exec, so every lifecycle call holds the crate's process lock (measured: concurrent calls
//! fail with "failed to get cwd"; a concurrent spawn deadlocks the container init).

use std::collections::HashMap;
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;

use super::helper::HelperClient;
use super::{
    ExecProcess, ExecWaiter, OciRuntime, PROCESS_LOCK as LIFECYCLE, RuntimeStatus, StartRequest, TtyExec, list_dirs,
};
use crate::capture::ChildFds;
use crate::error::{LocalError, Result};

fn err(e: impl std::fmt::Display) -> LocalError {
    LocalError::Runtime { runtime: "libcontainer", message: e.to_string() }
}

/// libcontainer with its state under `root`.
pub struct Libcontainer {
    root: PathBuf,
    /// When set, create and exec run in a fresh single-threaded helper process (see
    /// [`super::helper`]); otherwise in this process, which is only safe when nothing else in the
    /// process runs concurrently.
    helper: Option<HelperClient>,
}

impl Libcontainer {
    pub fn new(root: PathBuf, helper: Option<HelperClient>) -> Result<Self> {
        std::fs::create_dir_all(&root).map_err(LocalError::io(format!("create {}", root.display())))?;
        Ok(Libcontainer { root, helper })
    }

    fn delete_locked(&self, id: &str) -> Result<()> {
        let dir = self.root.join(id);
        if !dir.exists() {
            return Ok(());
        }
        match Container::load(dir.clone()) {
            Ok(mut c) => {
                let _ = c.refresh_status();
                if c.can_kill() {
                    let _ = c.kill(Signal::try_from("KILL").expect("KILL is a signal"), true);
                }
                c.delete(true).map_err(err)
            }
            Err(e) => {
                // Half-written state: nothing to kill through the runtime; drop the directory.
                tracing::warn!(id, error = %e, "libcontainer state unreadable, removing it");
                std::fs::remove_dir_all(&dir).map_err(LocalError::io(format!("remove {}", dir.display())))
            }
        }
    }
}

impl OciRuntime for Libcontainer {
    fn name(&self) -> &'static str {
        "libcontainer"
    }

    fn create_start(&self, req: &StartRequest<'_>) -> Result<i32> {
        if let Some(h) = &self.helper {
            let res = h.create_start(&self.root, req.id, req.bundle, req.log);
            if res.is_err() {
                let _g = LIFECYCLE.lock();
                let _ = self.delete_locked(req.id);
            }
            return res;
        }
        let devnull = std::fs::File::open("/dev/null").map_err(LocalError::io("open /dev/null"))?;
        let out = req.log.try_clone().map_err(LocalError::io("dup log fd"))?;
        let errf = req.log.try_clone().map_err(LocalError::io("dup log fd"))?;
        let _g = LIFECYCLE.lock();
        let res = (|| -> std::result::Result<i32, LocalError> {
            let mut c = ContainerBuilder::new(req.id.to_owned(), SyscallType::default())
                .with_root_path(self.root.clone())
                .map_err(err)?
                .with_stdin(devnull)
                .with_stdout(out)
                .with_stderr(errf)
                .validate_id()
                .map_err(err)?
                .as_init(req.bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(err)?;
            c.start().map_err(err)?;
            c.pid().map(|p| p.as_raw()).ok_or_else(|| err("container started without an init pid"))
        })();
        if res.is_err() {
            let _ = self.delete_locked(req.id);
        }
        res
    }

    fn exec(&self, id: &str, p: &ExecProcess, fds: ChildFds) -> Result<ExecWaiter> {
        if let Some(h) = &self.helper {
            return h.exec(&self.root, id, p, fds);
        }
        let env: HashMap<String, String> = p.env.iter().cloned().collect();
        let _g = LIFECYCLE.lock();
        let pid = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(self.root.clone())
            .map_err(err)?
            .with_stdin(fds.stdin)
            .with_stdout(fds.stdout)
            .with_stderr(fds.stderr)
            .as_tenant()
            .with_detach(false)
            .with_container_args(p.args.clone())
            .with_env(env)
            .with_cwd(p.cwd.clone())
            .with_user(Some(p.uid))
            .with_group(Some(p.gid))
            .build()
            .map_err(err)?;
        Ok(ExecWaiter::Child(pid.as_raw()))
    }

    fn kill_delete(&self, id: &str) -> Result<()> {
        // Delete neither clones nor chdirs; the lock only matters when create/exec run in this
        // process too. With the helper, deletes of different slots run in parallel.
        let _g = if self.helper.is_none() { Some(LIFECYCLE.lock()) } else { None };
        self.delete_locked(id)
    }

    fn state(&self, id: &str) -> Result<Option<RuntimeStatus>> {
        let dir = self.root.join(id);
        if !dir.exists() {
            return Ok(None);
        }
        let _g = if self.helper.is_none() { Some(LIFECYCLE.lock()) } else { None };
        let mut c = Container::load(dir).map_err(err)?;
        c.refresh_status().map_err(err)?;
        Ok(Some(match (c.status(), c.pid()) {
            (ContainerStatus::Running | ContainerStatus::Paused, Some(pid)) => {
                RuntimeStatus::Running { pid: pid.as_raw() }
            }
            _ => RuntimeStatus::Stopped,
        }))
    }

    fn list(&self) -> Vec<String> {
        list_dirs(&self.root)
    }

    fn exec_tty(&self, id: &str, p: &ExecProcess, init_pid: i32, cols: u16, rows: u16) -> Result<TtyExec> {
        let Some(h) = &self.helper else {
            return Err(LocalError::Invalid(
                "interactive terminals need the libcontainer helper process (set libcontainer_helper)".into(),
            ));
        };
        let pair = super::tty::open_pair(Some(init_pid))?;
        super::tty::set_size(std::os::fd::AsRawFd::as_raw_fd(&pair.master), cols, rows)?;
        let dup = || pair.slave.try_clone().map_err(LocalError::io("dup terminal fd"));
        let fds = ChildFds { stdin: dup()?, stdout: dup()?, stderr: dup()? };
        let waiter = h.exec_with(&self.root, id, p, fds, true)?;
        drop(pair.slave);
        let Some(pid) = super::wait_tenant_pid(&waiter, std::time::Duration::from_secs(10)) else {
            // The helper ended (or hangs) without starting the process: report why.
            return match waiter.wait(std::time::Duration::from_secs(2)) {
                Err(e) => Err(e),
                Ok(_) => Err(err("the terminal process did not start")),
            };
        };
        Ok(TtyExec { waiter, master: pair.master, pid: Some(pid) })
    }
}
