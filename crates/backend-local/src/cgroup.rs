//! The slot cgroup: `/agentbox/<slot>` in the cgroup v1 hierarchies, created by the backend.
//!
//! Layout decision: the slot's limits (memory, CPU quota, pids) are written to the PARENT cgroup
//! `/agentbox/<slot>` (memory, cpu and pids hierarchies), and every container gets
//! `linux.cgroupsPath = /agentbox/<slot>/<container-id>` with no limits of its own. v1 limits are
//! hierarchical, so the slot limit covers the sum of its containers and survives switches (the
//! container cgroups come and go; the parent stays until `destroy_slot`). OOM kills are counted on
//! the parent (`memory.oom_control: oom_kill`), which is where the limit is hit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentbox_core::model::Resources;

use crate::error::{LocalError, Result};

/// Parent directory of every slot cgroup in every hierarchy.
pub const CGROUP_PARENT: &str = "agentbox";

/// A mounted cgroup hierarchy (v1 controller set or the v2 unified tree).
#[derive(Debug, Clone)]
struct Hierarchy {
    mountpoint: PathBuf,
    controllers: Vec<String>,
}

/// The mounted hierarchies, read once: cgroup mounts do not change while we run, and
/// `/proc/self/mountinfo` grows with every slot (reading it per call made inspect O(slots)).
fn hierarchies() -> Vec<Hierarchy> {
    static CACHE: std::sync::OnceLock<Vec<Hierarchy>> = std::sync::OnceLock::new();
    CACHE.get_or_init(read_hierarchies).clone()
}

fn read_hierarchies() -> Vec<Hierarchy> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return vec![] };
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let _source = post.next();
        let opts = post.next().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(mp) = pre.split(' ').nth(4) else { continue };
        let controllers = opts.split(',').map(str::to_owned).collect();
        out.push(Hierarchy { mountpoint: PathBuf::from(mp), controllers });
    }
    out
}

fn v1_mount(controller: &str) -> Option<PathBuf> {
    hierarchies().into_iter().find(|h| h.controllers.iter().any(|c| c == controller)).map(|h| h.mountpoint)
}

/// Read the mounted hierarchies now (a process that forks workers calls this once, so each worker
/// does not read `/proc/self/mountinfo` again).
pub fn preload() {
    let _ = hierarchies();
}

/// The slot cgroup directory in the hierarchy of `controller`, if that controller is mounted.
pub fn slot_path(controller: &str, slot: &str) -> Option<PathBuf> {
    v1_mount(controller).map(|m| m.join(CGROUP_PARENT).join(slot))
}

/// `cgroupsPath` for a container of the slot.
pub fn container_cgroups_path(slot: &str, container_id: &str) -> String {
    format!("/{CGROUP_PARENT}/{slot}/{container_id}")
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| LocalError::Cgroup(format!("write {value} to {}: {e}", dir.join(file).display())))
}

/// Create `/agentbox/<slot>` where limits apply and write them. Idempotent.
pub fn create_slot_cgroup(slot: &str, res: &Resources) -> Result<()> {
    let mk = |controller: &str| -> Result<Option<PathBuf>> {
        let Some(p) = slot_path(controller, slot) else { return Ok(None) };
        std::fs::create_dir_all(&p).map_err(|e| LocalError::Cgroup(format!("create {}: {e}", p.display())))?;
        Ok(Some(p))
    };
    if let Some(p) = mk("memory")?
        && let Some(mem) = res.memory_bytes
    {
        write(&p, "memory.limit_in_bytes", &mem.to_string())?;
        // No swap beyond the limit, so the limit actually kills (only when swap accounting exists).
        if p.join("memory.memsw.limit_in_bytes").exists() {
            write(&p, "memory.memsw.limit_in_bytes", &mem.to_string())?;
        }
    }
    if let Some(p) = mk("cpu")?
        && let Some(millis) = res.cpu_millis
    {
        write(&p, "cpu.cfs_period_us", "100000")?;
        write(&p, "cpu.cfs_quota_us", &(millis * 100).max(1000).to_string())?;
    }
    if let Some(p) = mk("pids")?
        && let Some(pids) = res.pids
    {
        write(&p, "pids.max", &pids.to_string())?;
    }
    Ok(())
}

/// The number of OOM kills counted on the slot cgroup itself (0 when unknown). cgroup v1 counts a
/// kill on the VICTIM's cgroup and does not propagate it, so see also [`container_oom_kill_count`].
pub fn oom_kill_count(slot: &str) -> u64 {
    slot_path("memory", slot).map_or(0, |p| read_oom_kill(&p))
}

/// OOM kills of processes in one container's cgroup (0 when unknown or already deleted).
pub fn container_oom_kill_count(slot: &str, container_id: &str) -> u64 {
    slot_path("memory", slot).map_or(0, |p| read_oom_kill(&p.join(container_id)))
}

fn read_oom_kill(dir: &Path) -> u64 {
    let Ok(s) = std::fs::read_to_string(dir.join("memory.oom_control")) else { return 0 };
    s.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn kill_procs(dir: &Path) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(dir = %dir.display(), error = %e, "cgroup busy, killing its processes");
                kill_procs(dir);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(LocalError::Cgroup(format!("remove {}: {e}; processes may still be in it", dir.display())));
            }
        }
    }
}

/// Remove `/agentbox/<slot>` (and anything under it) from every mounted hierarchy.
pub fn remove_slot_cgroup(slot: &str) -> Result<()> {
    let mut first_err = None;
    for h in hierarchies() {
        if let Err(e) = remove_tree(&h.mountpoint.join(CGROUP_PARENT).join(slot)) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Open `cgroup.procs` of the cgroup `cgroups_path` (a container's `linux.cgroupsPath`) in every
/// mounted hierarchy where that cgroup exists. Writing `0` to each moves the writing process in,
/// also from another mount namespace. An error when an open fails or the cgroup exists nowhere (the
/// container is gone).
pub fn open_procs(cgroups_path: &str) -> Result<Vec<std::fs::File>> {
    let rel = cgroups_path.trim_start_matches('/');
    let mut out = Vec::new();
    for h in hierarchies() {
        let procs = h.mountpoint.join(rel).join("cgroup.procs");
        match std::fs::OpenOptions::new().write(true).open(&procs) {
            Ok(f) => out.push(f),
            // Not every hierarchy has the container's cgroup (e.g. name=systemd).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LocalError::Cgroup(format!("open {}: {e}", procs.display()))),
        }
    }
    if out.is_empty() {
        return Err(LocalError::Cgroup(format!(
            "cgroup {cgroups_path} exists in no hierarchy; is the container running?"
        )));
    }
    Ok(out)
}

/// Every hierarchy path of the slot that still exists (for leak checks).
pub fn leftover_paths(slot: &str) -> Vec<PathBuf> {
    hierarchies().into_iter().map(|h| h.mountpoint.join(CGROUP_PARENT).join(slot)).filter(|p| p.exists()).collect()
}
