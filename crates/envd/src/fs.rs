//! The `filesystem.Filesystem` operations on real paths.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::connect::{Code, ConnectError};
use crate::proto::filesystem::{EntryInfo, FileType};
use crate::proto::json::Timestamp;
use crate::users::{User, id_name};

/// `ls -l` style permission string (`drwxr-xr-x`).
pub fn permissions(mode: u32, ft: FileType) -> String {
    let kind = match ft {
        FileType::Directory => 'd',
        FileType::Symlink => 'L',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Describes the entry at `path` (symlinks: the target's type and size, with `symlinkTarget`).
pub fn entry_info(path: &Path) -> std::io::Result<EntryInfo> {
    let lmeta = std::fs::symlink_metadata(path)?;
    let (meta, symlink_target) = if lmeta.file_type().is_symlink() {
        let target = std::fs::read_link(path)?;
        let abs = if target.is_absolute() { target } else { path.parent().unwrap_or(Path::new("/")).join(target) };
        (std::fs::metadata(path).unwrap_or(lmeta.clone()), Some(abs.to_string_lossy().into_owned()))
    } else {
        (lmeta.clone(), None)
    };
    let ft = if meta.is_dir() {
        FileType::Directory
    } else if meta.is_file() {
        FileType::File
    } else if meta.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::Unspecified
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let mode = meta.permissions().mode() & 0o7777;
    Ok(EntryInfo {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        r#type: ft as i32,
        path: path.to_string_lossy().into_owned(),
        size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
        mode,
        permissions: permissions(mode, ft),
        owner: id_name(&passwd, meta.uid()),
        group: id_name(&group, meta.gid()),
        modified_time: Some(Timestamp { seconds: meta.mtime(), nanos: i32::try_from(meta.mtime_nsec()).unwrap_or(0) }),
        symlink_target,
        metadata: Default::default(),
    })
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ConnectError + '_ {
    move |e| ConnectError::io(&e, &path.display().to_string())
}

/// `Stat`.
pub fn stat(path: &Path) -> Result<EntryInfo, ConnectError> {
    entry_info(path).map_err(io_err(path))
}

/// Makes `path` (and missing parents) owned by `user` when it is not root.
pub fn chown_for(user: &User, path: &Path) {
    if user.uid != 0 && nix::unistd::getuid().is_root() {
        let _ = std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid));
    }
}

/// Creates the missing ancestors of `path`, owned by `user`.
pub fn create_parents(user: &User, path: &Path) -> std::io::Result<()> {
    let Some(parent) = path.parent() else { return Ok(()) };
    let mut missing = Vec::new();
    let mut cur = Some(parent);
    while let Some(p) = cur {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    std::fs::create_dir_all(parent)?;
    for p in missing {
        chown_for(user, &p);
    }
    Ok(())
}

/// `MakeDir`: `already_exists` when the directory is there.
pub fn make_dir(user: &User, path: &Path) -> Result<EntryInfo, ConnectError> {
    if path.exists() {
        return Err(ConnectError::new(Code::AlreadyExists, format!("{} already exists", path.display())));
    }
    create_parents(user, path).map_err(io_err(path))?;
    std::fs::create_dir(path).map_err(io_err(path))?;
    chown_for(user, path);
    stat(path)
}

/// `Move`: renames, creating the destination's parents.
pub fn rename(user: &User, src: &Path, dst: &Path) -> Result<EntryInfo, ConnectError> {
    std::fs::symlink_metadata(src).map_err(io_err(src))?;
    create_parents(user, dst).map_err(io_err(dst))?;
    std::fs::rename(src, dst).map_err(io_err(dst))?;
    stat(dst)
}

/// `Remove`: a file, a symlink or a whole directory tree.
pub fn remove(path: &Path) -> Result<(), ConnectError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(io_err(path))
    } else {
        std::fs::remove_file(path).map_err(io_err(path))
    }
}

/// `ListDir`: entries up to `depth` levels deep (0 counts as 1); symlinked directories
/// are listed but not descended into.
pub fn list_dir(path: &Path, depth: u32) -> Result<Vec<EntryInfo>, ConnectError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_dir() {
        return Err(ConnectError::new(Code::InvalidArgument, format!("{} is not a directory", path.display())));
    }
    let mut out = Vec::new();
    walk(path, depth.max(1), &mut out).map_err(io_err(path))?;
    Ok(out)
}

fn walk(dir: &Path, depth: u32, out: &mut Vec<EntryInfo>) -> std::io::Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        let Ok(info) = entry_info(&p) else { continue };
        let descend = depth > 1 && info.r#type == FileType::Directory as i32 && info.symlink_target.is_none();
        out.push(info);
        if descend {
            let _ = walk(&p, depth - 1, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_strings_look_like_ls() {
        assert_eq!(permissions(0o755, FileType::Directory), "drwxr-xr-x");
        assert_eq!(permissions(0o640, FileType::File), "-rw-r-----");
    }

    #[test]
    fn list_dir_honours_depth() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("a/b/c.txt"), "x").unwrap();
        std::fs::write(tmp.path().join("top.txt"), "x").unwrap();
        let names = |d| list_dir(tmp.path(), d).unwrap().into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(1), ["a", "top.txt"]);
        assert_eq!(names(3), ["a", "b", "c.txt", "top.txt"]);
        let err = list_dir(&tmp.path().join("nope"), 1).unwrap_err();
        assert_eq!(err.code, Code::NotFound);
    }
}
