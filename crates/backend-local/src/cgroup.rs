//! The slot cgroup: `/agentbox/<slot>` in the cgroup v1 hierarchies, created by the backend.
//!
//! Layout decision: the slot's limits (memory, CPU quota, pids) are written to the PARENT cgroup
//! `/agentbox/<slot>` (memory, cpu and pids hierarchies), and every container gets
//! `linux.cgroupsPath = /agentbox/<slot>/<container-id>` with no limits of its own. v1 limits are
//! hierarchical, so the slot limit covers the sum of its containers and survives switches (the
//! container cgroups come and go; the parent stays until `destroy_slot`). OOM kills are counted on
//! the parent (`memory.oom_control: oom_kill`), which is where the limit is hit.
//!
//! The slot's resource usage ([`slot_usage`]) is read from the same parent: v1 `cpuacct.usage`,
//! `memory.usage_in_bytes` and friends are hierarchical, so they cover every container the slot
//! ran since it was created. Where a v1 file is missing, the v2 file of the slot's cgroup in the
//! unified tree is used (`cpu.stat`, `memory.current`, `memory.max`, `cpu.max`).

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
    /// The cgroup v2 unified tree (its mount options name no controllers).
    v2: bool,
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
        out.push(Hierarchy { mountpoint: PathBuf::from(mp), controllers, v2: fstype == "cgroup2" });
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

// ---- usage ----

/// A v1 limit at or above this means "no limit" (v1 writes `PAGE_COUNTER_MAX` pages as bytes).
const UNLIMITED_BYTES: u64 = 1 << 60;

/// What a slot's cgroup says about its resource use; `None` where no hierarchy had the file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CgroupUsage {
    /// CPU time of every process the slot ran, in microseconds.
    pub cpu_usage_usec: Option<u64>,
    /// CPUs the quota allows (`0.5` = half a CPU); `None` = no quota.
    pub cpu_limit: Option<f64>,
    /// Memory charged, page cache included, in bytes.
    pub mem_usage: Option<u64>,
    /// The memory limit in bytes; `None` = no limit.
    pub mem_limit: Option<u64>,
    /// Page cache on the inactive list (reclaimable first), in bytes.
    pub mem_inactive_file: Option<u64>,
    /// All page cache, in bytes.
    pub mem_cache: Option<u64>,
}

impl CgroupUsage {
    /// Fields of `self`, and those of `other` where `self` has none.
    fn or(self, other: CgroupUsage) -> CgroupUsage {
        CgroupUsage {
            cpu_usage_usec: self.cpu_usage_usec.or(other.cpu_usage_usec),
            cpu_limit: self.cpu_limit.or(other.cpu_limit),
            mem_usage: self.mem_usage.or(other.mem_usage),
            mem_limit: self.mem_limit.or(other.mem_limit),
            mem_inactive_file: self.mem_inactive_file.or(other.mem_inactive_file),
            mem_cache: self.mem_cache.or(other.mem_cache),
        }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`cpu.stat`, `memory.stat`: one `key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key { parse_u64(v) } else { None }
    })
}

/// A memory limit file (`memory.limit_in_bytes`, `memory.max`): `None` for `max` or "unlimited".
fn limit_bytes(text: &str) -> Option<u64> {
    parse_u64(text).filter(|&v| v < UNLIMITED_BYTES)
}

/// CPUs allowed by a v1 quota (`cpu.cfs_quota_us`, `-1` = none) over its period.
fn cpus_v1(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period = parse_u64(period)?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// CPUs allowed by a v2 `cpu.max` (`"$MAX $PERIOD"`, `max` = none).
fn cpus_v2(cpu_max: &str) -> Option<f64> {
    let mut it = cpu_max.split_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next().map_or(Some(100_000), |p| p.parse().ok())?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Usage from the v1 files of the slot; `read(controller, file)` answers a file's text.
fn usage_v1(read: impl Fn(&str, &str) -> Option<String>) -> CgroupUsage {
    let stat = read("memory", "memory.stat").unwrap_or_default();
    let quota = read("cpu", "cpu.cfs_quota_us");
    let period = read("cpu", "cpu.cfs_period_us");
    CgroupUsage {
        cpu_usage_usec: read("cpuacct", "cpuacct.usage").and_then(|s| parse_u64(&s)).map(|ns| ns / 1000),
        cpu_limit: quota.zip(period).and_then(|(q, p)| cpus_v1(&q, &p)),
        mem_usage: read("memory", "memory.usage_in_bytes").and_then(|s| parse_u64(&s)),
        mem_limit: read("memory", "memory.limit_in_bytes").and_then(|s| limit_bytes(&s)),
        // The `total_` counters include the child cgroups (the containers).
        mem_inactive_file: keyed(&stat, "total_inactive_file").or_else(|| keyed(&stat, "inactive_file")),
        mem_cache: keyed(&stat, "total_cache").or_else(|| keyed(&stat, "cache")),
    }
}

/// Usage from the v2 files of the slot; `read(file)` answers a file's text.
fn usage_v2(read: impl Fn(&str) -> Option<String>) -> CgroupUsage {
    let stat = read("memory.stat").unwrap_or_default();
    CgroupUsage {
        cpu_usage_usec: read("cpu.stat").and_then(|s| keyed(&s, "usage_usec")),
        cpu_limit: read("cpu.max").and_then(|s| cpus_v2(&s)),
        mem_usage: read("memory.current").and_then(|s| parse_u64(&s)),
        mem_limit: read("memory.max").and_then(|s| limit_bytes(&s)),
        mem_inactive_file: keyed(&stat, "inactive_file"),
        mem_cache: keyed(&stat, "file"),
    }
}

/// The slot cgroup's usage now: v1 files first, v2 files of the unified tree where v1 has none.
pub fn slot_usage(slot: &str) -> CgroupUsage {
    let rel = Path::new(CGROUP_PARENT).join(slot);
    let v1 = usage_v1(|controller, file| {
        let h = hierarchies().into_iter().find(|h| !h.v2 && h.controllers.iter().any(|c| c == controller))?;
        std::fs::read_to_string(h.mountpoint.join(&rel).join(file)).ok()
    });
    let v2 = match hierarchies().into_iter().find(|h| h.v2) {
        Some(h) => usage_v2(|file| std::fs::read_to_string(h.mountpoint.join(&rel).join(file)).ok()),
        None => CgroupUsage::default(),
    };
    v1.or(v2)
}

/// The host's memory (`MemTotal` of `/proc/meminfo`) in bytes; 0 when unreadable.
pub fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(str::to_owned)))
        .and_then(|v| parse_u64(v.trim().trim_end_matches("kB")))
        .map_or(0, |kb| kb * 1024)
}

/// The CPUs this process may run on (>= 1).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Combine the cgroup's usage with the host's size and the disk figures into the trait's view:
/// the limits stand for the totals, the host's size where there is no limit (or a larger one).
pub fn to_slot_stats(
    u: &CgroupUsage,
    host_cpus: u32,
    host_mem: u64,
    disk_used: u64,
    disk_total: u64,
) -> agentbox_core::backend::SlotStats {
    let host_cpus = host_cpus.max(1);
    let cpu_count = u.cpu_limit.map_or(host_cpus, |c| (c.ceil() as u32).clamp(1, host_cpus));
    let mem_total = match u.mem_limit {
        Some(l) if host_mem == 0 || l < host_mem => l,
        _ => host_mem,
    };
    let usage = u.mem_usage.unwrap_or(0);
    agentbox_core::backend::SlotStats {
        cpu_usage_usec: u.cpu_usage_usec.unwrap_or(0),
        cpu_count,
        mem_used_bytes: usage.saturating_sub(u.mem_inactive_file.unwrap_or(0)),
        mem_cache_bytes: u.mem_cache.unwrap_or(0).min(usage),
        mem_total_bytes: mem_total,
        disk_used_bytes: disk_used,
        disk_total_bytes: disk_total,
    }
}

/// At most this many directory entries are looked at per [`disk_usage`] call: a writable layer with
/// more files is reported with what was counted so far (a lower bound), so a read stays bounded.
pub const DISK_WALK_MAX_ENTRIES: usize = 200_000;

/// Bytes allocated on disk (`st_blocks` × 512) under `dirs`, without following symlinks; at most
/// `max_entries` entries are counted. Missing directories count 0.
pub fn disk_usage(dirs: &[PathBuf], max_entries: usize) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > max_entries {
                return total;
            }
            let Ok(md) = e.path().symlink_metadata() else { continue };
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Size of the filesystem holding `path`, in bytes; 0 when unknown.
pub fn filesystem_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path).map_or(0, |s| s.blocks().saturating_mul(s.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn files(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn v1_files_parse_into_usage() {
        let f = files(&[
            ("cpuacct/cpuacct.usage", "2500000000\n"),
            ("cpu/cpu.cfs_quota_us", "150000\n"),
            ("cpu/cpu.cfs_period_us", "100000\n"),
            ("memory/memory.usage_in_bytes", "104857600\n"),
            ("memory/memory.limit_in_bytes", "536870912\n"),
            (
                "memory/memory.stat",
                "cache 1\nrss 2\ninactive_file 3\ntotal_cache 20971520\ntotal_rss 5\ntotal_inactive_file 10485760\n",
            ),
        ]);
        let u = usage_v1(|c, file| f.get(&format!("{c}/{file}")).cloned());
        assert_eq!(u.cpu_usage_usec, Some(2_500_000));
        assert_eq!(u.cpu_limit, Some(1.5));
        assert_eq!(u.mem_usage, Some(100 << 20));
        assert_eq!(u.mem_limit, Some(512 << 20));
        assert_eq!(u.mem_inactive_file, Some(10 << 20), "the hierarchical total, not the cgroup's own");
        assert_eq!(u.mem_cache, Some(20 << 20));
        let s = to_slot_stats(&u, 2, 8 << 30, 4096, 1 << 30);
        assert_eq!(
            (s.cpu_count, s.mem_used_bytes, s.mem_cache_bytes, s.mem_total_bytes),
            (2, 90 << 20, 20 << 20, 512 << 20)
        );
        assert_eq!((s.cpu_usage_usec, s.disk_used_bytes, s.disk_total_bytes), (2_500_000, 4096, 1 << 30));
    }

    #[test]
    fn v1_unlimited_falls_back_to_the_host() {
        let f = files(&[
            ("cpu/cpu.cfs_quota_us", "-1\n"),
            ("cpu/cpu.cfs_period_us", "100000\n"),
            ("memory/memory.usage_in_bytes", "4096\n"),
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
        ]);
        let u = usage_v1(|c, file| f.get(&format!("{c}/{file}")).cloned());
        assert_eq!((u.cpu_limit, u.mem_limit, u.cpu_usage_usec), (None, None, None));
        let s = to_slot_stats(&u, 4, 8 << 30, 0, 0);
        assert_eq!((s.cpu_count, s.mem_total_bytes, s.mem_used_bytes), (4, 8 << 30, 4096));
    }

    #[test]
    fn v2_files_parse_into_usage() {
        let f = files(&[
            ("cpu.stat", "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n"),
            ("cpu.max", "50000 100000\n"),
            ("memory.current", "2097152\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 1048576\nfile 1048576\ninactive_file 524288\n"),
        ]);
        let u = usage_v2(|file| f.get(file).cloned());
        assert_eq!(u.cpu_usage_usec, Some(123_456));
        assert_eq!(u.cpu_limit, Some(0.5));
        assert_eq!((u.mem_usage, u.mem_limit), (Some(2 << 20), None));
        assert_eq!((u.mem_inactive_file, u.mem_cache), (Some(512 << 10), Some(1 << 20)));
        // Half a CPU is one CPU to count; a limit above the host is the host.
        let s = to_slot_stats(&u, 2, 1 << 30, 0, 0);
        assert_eq!((s.cpu_count, s.mem_used_bytes, s.mem_total_bytes), (1, (2 << 20) - (512 << 10), 1 << 30));
        assert_eq!(cpus_v2("max 100000"), None);
        assert_eq!(cpus_v2("200000 100000"), Some(2.0));
        let big = CgroupUsage { cpu_limit: Some(8.0), mem_limit: Some(64 << 30), ..Default::default() };
        let s = to_slot_stats(&big, 2, 1 << 30, 0, 0);
        assert_eq!((s.cpu_count, s.mem_total_bytes), (2, 1 << 30));
    }

    #[test]
    fn v1_fields_win_and_v2_fills_the_gaps() {
        let v1 = CgroupUsage { mem_usage: Some(1), ..Default::default() };
        let v2 = CgroupUsage { mem_usage: Some(2), cpu_usage_usec: Some(3), ..Default::default() };
        let u = v1.or(v2);
        assert_eq!((u.mem_usage, u.cpu_usage_usec), (Some(1), Some(3)));
    }

    #[test]
    fn disk_usage_counts_blocks_without_following_symlinks_and_stops_at_the_cap() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), vec![1u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("/usr", d.path().join("a/usr")).unwrap();
        let dirs = vec![d.path().to_path_buf(), d.path().join("missing")];
        let n = disk_usage(&dirs, DISK_WALK_MAX_ENTRIES);
        // The file's 64 KiB plus small directory and symlink entries; never /usr's gigabytes.
        assert!((64 * 1024..1 << 20).contains(&n), "{n}");
        assert!(disk_usage(&dirs, 1) < 64 * 1024, "the cap stops the walk");
        assert!(filesystem_bytes(d.path()) > 0);
    }
}
