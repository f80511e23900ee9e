//! Container root filesystems: overlayfs over the image layers with a per-start writable layer.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{LocalError, Result};

/// The three directories of one container's rootfs inside its bundle directory.
pub struct RootfsDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

impl RootfsDirs {
    pub fn new(bundle: &Path) -> Self {
        RootfsDirs { upper: bundle.join("upper"), work: bundle.join("work"), merged: bundle.join("merged") }
    }
}

/// Mount `layers` (bottom first) with a fresh writable layer at `<bundle>/merged`.
pub fn mount(bundle: &Path, layers: &[PathBuf], empty_layer: &Path) -> Result<PathBuf> {
    let d = RootfsDirs::new(bundle);
    for p in [&d.upper, &d.work, &d.merged] {
        std::fs::create_dir_all(p).map_err(LocalError::io(format!("create {}", p.display())))?;
    }
    let lower = if layers.is_empty() {
        std::fs::create_dir_all(empty_layer).map_err(LocalError::io(format!("create {}", empty_layer.display())))?;
        empty_layer.display().to_string()
    } else {
        // overlayfs wants the TOP layer first.
        layers.iter().rev().map(|l| l.display().to_string()).collect::<Vec<_>>().join(":")
    };
    let opts = format!("lowerdir={lower},upperdir={},workdir={}", d.upper.display(), d.work.display());
    if opts.len() >= 4096 {
        return Err(LocalError::Invalid(format!(
            "overlay options for {} layers are longer than a page; use an image with fewer layers or a shorter state dir",
            layers.len()
        )));
    }
    nix::mount::mount(Some("overlay"), &d.merged, Some("overlay"), MsFlags::empty(), Some(opts.as_str())).map_err(
        |e| LocalError::Io {
            context: format!("mount overlay at {} ({opts})", d.merged.display()),
            source: std::io::Error::from(e),
        },
    )?;
    Ok(d.merged)
}

/// Drop the host mount namespace's view of a started container's rootfs overlay.
///
/// The container keeps its own copy of the mount in its mount namespace (its root is private, see
/// `spec::build`), and the overlay lives as long as that namespace. The host namespace then holds
/// no per-container overlay mount: every `/proc/self/mountinfo` read (libcgroups does ~12 per
/// create and per exec) stays short however many slots run. Use `/proc/<init pid>/root` to look
/// into the container afterwards. Idempotent.
pub fn detach_host_view(merged: &Path) -> Result<()> {
    match nix::mount::umount2(merged, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(LocalError::Sys { call: "umount2(rootfs host view)", errno: e }),
    }
}

/// Unmount the container's rootfs (if mounted) and delete its writable layer. Idempotent.
pub fn discard(bundle: &Path) -> Result<()> {
    let d = RootfsDirs::new(bundle);
    match nix::mount::umount2(&d.merged, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(LocalError::Sys { call: "umount2(rootfs)", errno: e }),
    }
    match std::fs::remove_dir_all(bundle) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LocalError::io(format!("remove {}", bundle.display()))(e)),
    }
}

/// Mount points at or below `dir` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    crate::net::mount_points("/proc/self/mountinfo", dir)
}

/// Lazily unmount everything at or below `dir`.
pub fn unmount_all_under(dir: &Path) {
    for mp in mounts_under(dir) {
        let _ = nix::mount::umount2(&mp, MntFlags::MNT_DETACH);
    }
}
