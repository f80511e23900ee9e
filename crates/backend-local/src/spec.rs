//! The OCI runtime spec (`config.json`) of one container, with the engine's security defaults.

use std::path::Path;

use agentbox_core::model::ContainerSpec;
use serde_json::{Value, json};

use crate::images::LocalImage;

/// Capabilities every container gets (the usual container default set).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Syscalls that fail with EPERM inside a container (everything else is allowed): kernel
/// modules/kexec/reboot, swap, mounts and namespace changes, BPF/perf, keyrings, handle-based
/// opens, userfaultfd, accounting, clock changes, raw port IO, quotas, and cross-process
/// inspection (ptrace, process_vm_*, kcmp).
pub const BLOCKED_SYSCALLS: &[&str] = &[
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "mount",
    "umount2",
    "pivot_root",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    #[cfg(target_arch = "x86_64")]
    "iopl",
    #[cfg(target_arch = "x86_64")]
    "ioperm",
    "quotactl",
    "lookup_dcookie",
    "kcmp",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "unshare",
    "setns",
];

/// Hidden from the container (bind-mounted over with /dev/null or an empty tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Read-only inside the container.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The argv of a container like Docker computes it: command (else entrypoint) + args (else cmd).
pub fn process_args(c: &ContainerSpec, img: &LocalImage) -> Vec<String> {
    let mut argv = if c.command.is_empty() { img.entrypoint.clone() } else { c.command.clone() };
    // Docker: a given command drops the image cmd too.
    if !c.args.is_empty() {
        argv.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        argv.extend(img.cmd.iter().cloned());
    }
    argv
}

/// Image env, then container env (overriding by key); PATH defaulted.
pub fn process_env(c: &ContainerSpec, img: &LocalImage) -> Vec<String> {
    let mut env: Vec<(String, String)> = img
        .env
        .iter()
        .map(|e| e.split_once('=').map_or((e.clone(), String::new()), |(k, v)| (k.into(), v.into())))
        .collect();
    for (k, v) in &c.env {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Parse `uid[:gid]` (numeric) or look a user/group name up in the rootfs' `/etc/passwd`/`/etc/group`.
pub fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<(u32, u32), String> {
    let Some(user) = user.filter(|u| !u.is_empty()) else { return Ok((0, 0)) };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[2] == u)
                .and_then(|f| f[3].parse().ok());
            (uid, gid)
        }
        Err(_) => passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == u)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok())))
            .ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd; use a numeric uid"))?,
    };
    let gid = match g {
        None => primary_gid.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => std::fs::read_to_string(rootfs.join("etc/group"))
                .unwrap_or_default()
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group; use a numeric gid"))?,
        },
    };
    Ok((uid, gid))
}

/// Inputs of [`build`].
pub struct SpecInput<'a> {
    pub slot_id: &'a str,
    pub container: &'a ContainerSpec,
    pub image: &'a LocalImage,
    pub rootfs: &'a Path,
    pub netns: &'a Path,
    pub etc_dir: &'a Path,
    pub cgroups_path: String,
    /// Which of `hostname`, `hosts`, `resolv.conf` to bind from `etc_dir` (targets must exist).
    pub etc_files: Vec<&'static str>,
    pub uid: u32,
    pub gid: u32,
    /// Host path of the agent binary, bound read-only at [`crate::AGENT_PATH`].
    pub agent_binary: Option<&'a Path>,
}

fn seccomp() -> Value {
    let arches: &[&str] = if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &[]
    };
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": arches,
        "syscalls": [{ "names": BLOCKED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM }]
    })
}

/// Build the container's `config.json`.
pub fn build(i: &SpecInput<'_>) -> Value {
    let c = i.container;
    let cwd = c.working_dir.clone().or_else(|| i.image.working_dir.clone()).filter(|w| !w.is_empty());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for (src, dst) in &i.image.host_binds {
        mounts.push(
            json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro", "nosuid", "nodev"]}),
        );
    }
    if let Some(agent) = i.agent_binary {
        mounts.push(json!({"destination": crate::AGENT_PATH, "type": "bind", "source": agent, "options": ["bind", "ro", "nosuid", "nodev"]}));
    }
    mounts.push(
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
    );
    for f in &i.etc_files {
        mounts.push(json!({"destination": format!("/etc/{f}"), "type": "bind", "source": i.etc_dir.join(f), "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    let allow_dev = |major: i64, minor: Option<i64>| json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"});
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": i.uid, "gid": i.gid},
            "args": process_args(c, i.image),
            "env": process_env(c, i.image),
            "cwd": cwd.unwrap_or_else(|| "/".into()),
            "capabilities": {"bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS},
            "noNewPrivileges": true
        },
        "root": {"path": i.rootfs, "readonly": false},
        "hostname": i.slot_id,
        "mounts": mounts,
        "linux": {
            // Private, not the default slave: the host detaches its view of the rootfs overlay once
            // the container runs (see `rootfs::detach_host_view`), and that unmount must not
            // propagate into the container.
            "rootfsPropagation": "private",
            "cgroupsPath": i.cgroups_path,
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": i.netns}
            ],
            "resources": {"devices": [
                {"allow": false, "access": "rwm"},
                allow_dev(1, Some(3)), allow_dev(1, Some(5)), allow_dev(1, Some(7)), allow_dev(1, Some(8)),
                allow_dev(1, Some(9)), allow_dev(5, Some(0)), allow_dev(5, Some(1)), allow_dev(5, Some(2)),
                allow_dev(136, None)
            ]},
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> LocalImage {
        LocalImage {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["c1".into()],
            env: vec!["PATH=/x".into(), "A=1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_docker_rules() {
        let mut c = ContainerSpec::default();
        assert_eq!(process_args(&c, &img()), ["/ep", "c1"]);
        c.args = vec!["a".into()];
        assert_eq!(process_args(&c, &img()), ["/ep", "a"]);
        c.command = vec!["sleep".into()];
        assert_eq!(process_args(&c, &img()), ["sleep", "a"]);
        c.args.clear();
        assert_eq!(process_args(&c, &img()), ["sleep"]);
    }

    #[test]
    fn env_merges_by_key() {
        let mut c = ContainerSpec::default();
        c.env.insert("A".into(), "2".into());
        c.env.insert("B".into(), "3".into());
        assert_eq!(process_env(&c, &img()), ["PATH=/x", "A=2", "B=3"]);
        let e = process_env(&ContainerSpec::default(), &LocalImage::default());
        assert!(e[0].starts_with("PATH=/usr/local/sbin"));
    }

    #[test]
    fn users_resolve_numeric_and_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\nbob:x:1000:1001::/:/bin/sh\n").unwrap();
        std::fs::write(d.path().join("etc/group"), "staff:x:50:\n").unwrap();
        assert_eq!(resolve_user(None, d.path()).unwrap(), (0, 0));
        assert_eq!(resolve_user(Some("1000"), d.path()).unwrap(), (1000, 1001));
        assert_eq!(resolve_user(Some("7:8"), d.path()).unwrap(), (7, 8));
        assert_eq!(resolve_user(Some("bob:staff"), d.path()).unwrap(), (1000, 50));
        assert!(resolve_user(Some("alice"), d.path()).is_err());
    }

    #[test]
    fn spec_has_security_defaults() {
        let c = ContainerSpec { name: "main".into(), ..Default::default() };
        let image = img();
        let s = build(&SpecInput {
            slot_id: "s1",
            container: &c,
            image: &image,
            rootfs: Path::new("/r"),
            netns: Path::new("/n"),
            etc_dir: Path::new("/e"),
            cgroups_path: "/agentbox/s1/x".into(),
            etc_files: vec!["hosts"],
            uid: 0,
            gid: 0,
            agent_binary: Some(Path::new("/opt/agentbox-envd")),
        });
        let agent = s["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == crate::AGENT_PATH).unwrap();
        assert_eq!(agent["source"], "/opt/agentbox-envd");
        assert!(agent["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        assert_eq!(s["linux"]["cgroupsPath"], "/agentbox/s1/x");
        assert_eq!(s["linux"]["rootfsPropagation"], "private");
        assert!(s["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "/etc/hosts"));
        assert!(!s["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "/etc/hostname"));
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["linux"]["seccomp"]["syscalls"][0]["names"].as_array().unwrap().len(), BLOCKED_SYSCALLS.len());
        assert_eq!(s["linux"]["namespaces"][4]["path"], "/n");
        assert!(!s["process"]["capabilities"]["bounding"].as_array().unwrap().iter().any(|c| c == "CAP_SYS_ADMIN"));
    }
}
