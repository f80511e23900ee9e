//! The built-in images `host` and `pause`, materialised by [`crate::ImageStore::open`] without
//! any network access.
//!
//! Each built-in lives in `builtin/<hex>/`, where `<hex>` is a digest of what it contains, so a
//! directory that a running container stacks is never rewritten: a different host layout or a
//! new pause binary simply gets a new directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext};
use crate::model::{HostBind, ImageConfig};
use crate::reference::Builtin;

/// The static pause binary built from `pause.c` by `build.rs`.
pub(crate) static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

const HOST_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Top-level host entries that are either merged-usr symlinks (mirrored as symlinks) or real
/// directories (bind-mounted).
const HOST_TOP_LEVEL: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// A materialised built-in image.
#[derive(Debug, Clone)]
pub(crate) struct BuiltinImage {
    pub kind: Builtin,
    pub digest: String,
    pub layer: PathBuf,
    pub config: ImageConfig,
    pub host_binds: Vec<HostBind>,
    pub size_bytes: u64,
}

/// What the `host` skeleton holds; its JSON form is hashed into the synthetic digest.
#[derive(Debug, Serialize)]
struct HostSkeleton {
    version: u32,
    /// (path, mode)
    dirs: Vec<(String, u32)>,
    /// (path, target)
    symlinks: Vec<(String, String)>,
    binds: Vec<HostBind>,
}

fn host_skeleton(host_root: &Path) -> HostSkeleton {
    let mut dirs: Vec<(String, u32)> = [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("run", 0o755),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("mnt", 0o755),
        ("usr", 0o755),
        ("etc", 0o755),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m))
    .collect();
    let mut symlinks = Vec::new();
    let mut binds = vec![
        HostBind { source: host_root.join("usr"), destination: "/usr".to_owned() },
        HostBind { source: host_root.join("etc"), destination: "/etc".to_owned() },
    ];
    for name in HOST_TOP_LEVEL {
        let p = host_root.join(name);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = fs::read_link(&p) {
                    symlinks.push(((*name).to_owned(), target.to_string_lossy().into_owned()));
                }
            }
            Ok(m) if m.is_dir() => {
                dirs.push(((*name).to_owned(), 0o755));
                binds.push(HostBind { source: p, destination: format!("/{name}") });
            }
            _ => {}
        }
    }
    HostSkeleton { version: 1, dirs, symlinks, binds }
}

fn digest_of(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Creates (if missing) and describes the `host` built-in, mirroring `host_root` (normally `/`).
pub(crate) fn install_host(builtin_dir: &Path, tmp_dir: &Path, host_root: &Path) -> Result<BuiltinImage, ImageError> {
    let skel = host_skeleton(host_root);
    let json = serde_json::to_vec(&skel).map_err(|e| ImageError::invalid(e.to_string()))?;
    let digest = digest_of(&[b"agentbox-builtin-host", &json]);
    let layer = builtin_dir.join(hex_of(&digest));
    materialise(&layer, tmp_dir, |dir| {
        for (p, mode) in &skel.dirs {
            let d = dir.join(p);
            fs::create_dir_all(&d).at(&d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(*mode)).at(&d)?;
        }
        for (p, target) in &skel.symlinks {
            let l = dir.join(p);
            std::os::unix::fs::symlink(target, &l).at(&l)?;
        }
        Ok(())
    })?;
    Ok(BuiltinImage {
        kind: Builtin::Host,
        digest,
        layer,
        config: ImageConfig {
            env: vec![HOST_PATH.to_owned()],
            cmd: vec!["/bin/sh".to_owned()],
            ..ImageConfig::default()
        },
        host_binds: skel.binds,
        size_bytes: 0,
    })
}

/// Creates (if missing) and describes the `pause` built-in.
pub(crate) fn install_pause(builtin_dir: &Path, tmp_dir: &Path) -> Result<BuiltinImage, ImageError> {
    let digest = digest_of(&[b"agentbox-builtin-pause-v1", PAUSE_BINARY]);
    let layer = builtin_dir.join(hex_of(&digest));
    materialise(&layer, tmp_dir, |dir| {
        for d in ["proc", "sys", "dev", "tmp"] {
            let d = dir.join(d);
            fs::create_dir(&d).at(&d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).at(&d)?;
        }
        let bin = dir.join("pause");
        fs::write(&bin, PAUSE_BINARY).at(&bin)?;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).at(&bin)?;
        Ok(())
    })?;
    Ok(BuiltinImage {
        kind: Builtin::Pause,
        digest,
        layer,
        config: ImageConfig { cmd: vec!["/pause".to_owned()], ..ImageConfig::default() },
        host_binds: Vec::new(),
        size_bytes: PAUSE_BINARY.len() as u64,
    })
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Builds `target` in a fresh temporary directory and renames it into place; a concurrent
/// builder that wins the race is fine (its content is identical by construction).
fn materialise(
    target: &Path,
    tmp_dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    if target.is_dir() {
        return Ok(());
    }
    let tmp = crate::store::unique_tmp(tmp_dir);
    fs::create_dir(&tmp).at(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).at(&tmp)?;
    let filled = fill(&tmp);
    let result = filled.and_then(|()| match fs::rename(&tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if target.is_dir() => {
            tracing::debug!(error = %e, "built-in already materialised by someone else");
            Ok(())
        }
        Err(e) => Err(ImageError::io(target, e)),
    });
    if tmp.exists() {
        // Best effort: leftovers in tmp/ are swept at the next open.
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_skeleton_mirrors_symlinks_and_binds_real_dirs() {
        let fake = tempfile::tempdir().unwrap();
        let root = fake.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        fs::create_dir(root.join("lib")).unwrap(); // a non-merged-usr host
        let store = tempfile::tempdir().unwrap();
        let b = store.path().join("builtin");
        let t = store.path().join("tmp");
        fs::create_dir_all(&b).unwrap();
        fs::create_dir_all(&t).unwrap();
        let img = install_host(&b, &t, root).unwrap();
        assert_eq!(fs::read_link(img.layer.join("bin")).unwrap(), PathBuf::from("usr/bin"));
        assert!(img.layer.join("lib").is_dir());
        assert!(!img.layer.join("sbin").exists());
        let dests: Vec<_> = img.host_binds.iter().map(|b| b.destination.as_str()).collect();
        assert_eq!(dests, ["/usr", "/etc", "/lib"]);
        assert_eq!(fs::metadata(img.layer.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
        // Same host layout, same digest and directory.
        let again = install_host(&b, &t, root).unwrap();
        assert_eq!(again.digest, img.digest);
        // A changed host layout gets a new directory rather than rewriting the old one.
        fs::create_dir(root.join("lib64")).unwrap();
        let changed = install_host(&b, &t, root).unwrap();
        assert_ne!(changed.digest, img.digest);
        assert!(img.layer.is_dir());
    }
}
