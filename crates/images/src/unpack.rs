//! Unpacking one layer tarball into a directory that overlayfs can stack.
//!
//! Guarantees:
//! - no entry is written outside the layer directory: `..` and absolute names are rejected,
//!   and an entry whose parent path goes through a symlink (or any non-directory) is rejected,
//!   so a layer cannot plant `evil -> /etc` and then write `evil/passwd`;
//! - existing symlinks are never followed: files are created with `O_EXCL|O_NOFOLLOW`, the
//!   previous occupant of a path is removed first, hard links may only point inside the layer;
//! - OCI whiteouts become overlayfs whiteouts: `.wh.<name>` → character device 0/0 `<name>`,
//!   `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory (needs root);
//! - modes (including setuid), ownership, symlinks, hard links, device nodes and the
//!   `security.capability` / `user.*` xattrs are preserved; `trusted.*` xattrs from the layer
//!   are dropped (they could smuggle overlayfs redirects).

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::error::{ImageError, IoContext};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking a layer measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar stream (the OCI diff ID).
    pub diff_id: String,
    /// Sum of the sizes of the regular files written.
    pub size_bytes: u64,
}

/// Unpacks a tar layer (plain or gzip-compressed; detected from its magic bytes) into `dest`,
/// which must be an existing, empty directory that nothing else writes to.
pub fn unpack_layer(blob: impl Read, dest: &Path) -> Result<UnpackStats, ImageError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, blob);
    let magic = buffered.fill_buf().at(dest)?;
    let decompressed: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ImageError::invalid(
            "zstd-compressed layers are not supported; rebuild or copy the image with gzip layers",
        ));
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader { inner: decompressed, hasher: Sha256::new() };
    let mut size_bytes = 0u64;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive.entries().map_err(|e| ImageError::invalid(format!("layer is not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ImageError::invalid(format!("corrupt tar entry in layer: {e}")))?;
            size_bytes += unpack_entry(&mut entry, dest)?;
        }
    }
    // The tar reader stops at the end-of-archive blocks; the diff ID covers the whole stream.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| ImageError::invalid(format!("corrupt layer stream: {e}")))?;
    Ok(UnpackStats { diff_id: format!("sha256:{}", hex::encode(hashing.hasher.finalize())), size_bytes })
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Turns a tar entry name into a relative path, rejecting anything that could escape.
/// Returns an empty path for the layer root (`./`).
pub(crate) fn sanitize(name: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                return Err(ImageError::invalid(format!(
                    "layer entry {} contains '..'; refusing to unpack an image that escapes its layer",
                    name.display()
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ImageError::invalid(format!(
                    "layer entry {} is an absolute path; refusing to unpack it",
                    name.display()
                )));
            }
        }
    }
    Ok(out)
}

/// Creates the directories of `rel` under `dest` (all of it), refusing to pass through a
/// symlink or any other non-directory.
fn ensure_dirs(dest: &Path, rel: &Path) -> Result<PathBuf, ImageError> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(ImageError::invalid(format!(
                    "layer entry path goes through {}, which is not a directory (a symlink?); refusing to follow it",
                    cur.strip_prefix(dest).unwrap_or(&cur).display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).at(&cur)?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).at(&cur)?;
            }
            Err(e) => return Err(ImageError::io(&cur, e)),
        }
    }
    Ok(cur)
}

/// Removes whatever occupies `path` unless both it and the new entry are directories
/// (a later entry in a layer replaces an earlier one).
fn clear_target(path: &Path, new_is_dir: bool) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => {
            if !new_is_dir {
                fs::remove_dir_all(path).at(path)?;
            }
            Ok(())
        }
        Ok(_) => fs::remove_file(path).at(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(path, e)),
    }
}

/// Unpacks one entry; returns the bytes of regular-file content written.
fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, dest: &Path) -> Result<u64, ImageError> {
    let name =
        entry.path().map_err(|e| ImageError::invalid(format!("layer entry has an unreadable name: {e}")))?.into_owned();
    let rel = sanitize(&name)?;
    let kind = entry.header().entry_type();
    let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
    let uid = entry.header().uid().unwrap_or(0);
    let gid = entry.header().gid().unwrap_or(0);
    let owner = (u32::try_from(uid).unwrap_or(0), u32::try_from(gid).unwrap_or(0));

    if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink) {
        return Ok(0);
    }

    let Some(file_name) = rel.file_name().map(|f| f.to_string_lossy().into_owned()) else {
        // The layer root itself (`./`): only its metadata matters.
        if kind == EntryType::Directory {
            std::os::unix::fs::lchown(dest, Some(owner.0), Some(owner.1)).at(dest)?;
            fs::set_permissions(dest, fs::Permissions::from_mode(mode)).at(dest)?;
        }
        return Ok(0);
    };
    let parent_rel = rel.parent().unwrap_or(Path::new(""));

    if file_name == OPAQUE_MARKER {
        let dir = ensure_dirs(dest, parent_rel)?;
        xattr::set(&dir, OPAQUE_XATTR, b"y").map_err(|e| {
            ImageError::io(
                &dir,
                io::Error::new(
                    e.kind(),
                    format!("setting {OPAQUE_XATTR} needs root and a filesystem with trusted xattrs: {e}"),
                ),
            )
        })?;
        return Ok(0);
    }
    if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other AUFS metadata (`.wh..wh.plnk`, …): meaningless to overlayfs.
            return Ok(0);
        }
        let parent = ensure_dirs(dest, parent_rel)?;
        let target = parent.join(hidden);
        clear_target(&target, false)?;
        make_node(&target, nix::sys::stat::SFlag::S_IFCHR, 0, 0, 0)?;
        return Ok(0);
    }

    let parent = ensure_dirs(dest, parent_rel)?;
    let target = parent.join(&file_name);
    let mut written = 0;
    match kind {
        EntryType::Directory => {
            clear_target(&target, true)?;
            if fs::symlink_metadata(&target).is_err() {
                fs::create_dir(&target).at(&target)?;
            }
            std::os::unix::fs::lchown(&target, Some(owner.0), Some(owner.1)).at(&target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).at(&target)?;
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            clear_target(&target, false)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc_o_nofollow())
                .open(&target)
                .at(&target)?;
            written = io::copy(entry, &mut file)
                .map_err(|e| ImageError::invalid(format!("layer entry {} is truncated: {e}", name.display())))?;
            if let Ok(mtime) = entry.header().mtime() {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                // Best effort: a wrong mtime is harmless.
                let _ = file.set_modified(t);
            }
            std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1)).at(&target)?;
            // After chown, which clears setuid/setgid bits.
            file.set_permissions(fs::Permissions::from_mode(mode)).at(&target)?;
        }
        EntryType::Symlink => {
            let link = link_name(entry, &name)?;
            clear_target(&target, false)?;
            std::os::unix::fs::symlink(&link, &target).at(&target)?;
            std::os::unix::fs::lchown(&target, Some(owner.0), Some(owner.1)).at(&target)?;
        }
        EntryType::Link => {
            let link = link_name(entry, &name)?;
            let src_rel = sanitize(&link)?;
            if src_rel.as_os_str().is_empty() {
                return Err(ImageError::invalid(format!("hard link {} points at the layer root", name.display())));
            }
            // The source must already be in this layer, reached through real directories only.
            let src_parent = check_dirs(dest, src_rel.parent().unwrap_or(Path::new("")))?;
            let src = src_parent.join(src_rel.file_name().unwrap_or_default());
            if fs::symlink_metadata(&src).is_err() {
                return Err(ImageError::invalid(format!(
                    "hard link {} points at {}, which is not earlier in the same layer",
                    name.display(),
                    link.display()
                )));
            }
            clear_target(&target, false)?;
            // linkat(2) without AT_SYMLINK_FOLLOW: a symlink source is linked, not followed.
            fs::hard_link(&src, &target).at(&target)?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            use nix::sys::stat::SFlag;
            let flag = match kind {
                EntryType::Char => SFlag::S_IFCHR,
                EntryType::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            clear_target(&target, false)?;
            make_node(&target, flag, mode, major, minor)?;
            std::os::unix::fs::lchown(&target, Some(owner.0), Some(owner.1)).at(&target)?;
        }
        other => {
            tracing::debug!(entry = %name.display(), ?other, "skipping unsupported tar entry type");
            return Ok(0);
        }
    }
    if matches!(kind, EntryType::Directory | EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse) {
        apply_xattrs(entry, &target)?;
    }
    Ok(written)
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, name: &Path) -> Result<PathBuf, ImageError> {
    entry
        .link_name()
        .map_err(|e| ImageError::invalid(format!("link {} has an unreadable target: {e}", name.display())))?
        .map(|l| l.into_owned())
        .ok_or_else(|| ImageError::invalid(format!("link {} has no target", name.display())))
}

/// Like [`ensure_dirs`] but creates nothing.
fn check_dirs(dest: &Path, rel: &Path) -> Result<PathBuf, ImageError> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            _ => {
                return Err(ImageError::invalid(format!(
                    "hard link source goes through {}, which is not a directory in this layer",
                    cur.strip_prefix(dest).unwrap_or(&cur).display()
                )));
            }
        }
    }
    Ok(cur)
}

fn make_node(path: &Path, kind: nix::sys::stat::SFlag, mode: u32, major: u32, minor: u32) -> Result<(), ImageError> {
    let perm = nix::sys::stat::Mode::from_bits_truncate(mode);
    let dev = nix::sys::stat::makedev(u64::from(major), u64::from(minor));
    nix::sys::stat::mknod(path, kind, perm, dev).map_err(|e| {
        ImageError::io(
            path,
            io::Error::new(
                io::Error::from(e).kind(),
                format!("mknod failed ({e}); unpacking layers with whiteouts or devices needs root"),
            ),
        )
    })
}

fn apply_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, target: &Path) -> Result<(), ImageError> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Ok(());
    };
    for ext in exts.flatten() {
        let Ok(key) = ext.key() else { continue };
        let Some(attr) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if attr == "security.capability" || attr.starts_with("user.") {
            if let Err(e) = xattr::set(target, attr, ext.value_bytes()) {
                tracing::warn!(path = %target.display(), attr, error = %e, "could not set xattr from layer");
            }
        } else {
            tracing::debug!(path = %target.display(), attr, "dropping xattr from layer");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A tar builder that also writes raw names the `tar` crate would refuse.
    struct T(tar::Builder<Vec<u8>>);

    impl T {
        fn new() -> Self {
            T(tar::Builder::new(Vec::new()))
        }
        fn raw(&mut self, name: &str, kind: EntryType, data: &[u8], link: Option<&str>, mode: u32) {
            let mut h = tar::Header::new_gnu();
            {
                let old = h.as_old_mut();
                old.name = [0; 100];
                old.name[..name.len()].copy_from_slice(name.as_bytes());
                if let Some(l) = link {
                    old.linkname = [0; 100];
                    old.linkname[..l.len()].copy_from_slice(l.as_bytes());
                }
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
        }
        fn file(&mut self, name: &str, data: &[u8], mode: u32) {
            self.raw(name, EntryType::Regular, data, None, mode);
        }
        fn dir(&mut self, name: &str) {
            self.raw(name, EntryType::Directory, b"", None, 0o755);
        }
        fn done(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    #[test]
    fn unpacks_files_dirs_links_and_modes() {
        let mut t = T::new();
        t.dir("./");
        t.dir("./usr/");
        t.file("./usr/hello.txt", b"hi\n", 0o4755);
        t.raw("./usr/abs", EntryType::Symlink, b"", Some("/etc/passwd"), 0o777);
        t.raw("./usr/hard", EntryType::Link, b"", Some("./usr/hello.txt"), 0o644);
        t.file("deep/er/file", b"x", 0o600);
        let tarball = t.done();
        let dir = tempfile::tempdir().unwrap();
        let stats = unpack_layer(&tarball[..], dir.path()).unwrap();
        assert_eq!(stats.size_bytes, 4);
        assert_eq!(stats.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&tarball))));
        let hello = dir.path().join("usr/hello.txt");
        assert_eq!(fs::read_to_string(&hello).unwrap(), "hi\n");
        assert_eq!(fs::metadata(&hello).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(fs::read_link(dir.path().join("usr/abs")).unwrap(), PathBuf::from("/etc/passwd"));
        let hard = fs::metadata(dir.path().join("usr/hard")).unwrap();
        assert_eq!(hard.ino(), fs::metadata(&hello).unwrap().ino());
        assert_eq!(fs::read_to_string(dir.path().join("deep/er/file")).unwrap(), "x");
    }

    #[test]
    fn gzip_layers_are_detected_and_diff_id_is_of_the_uncompressed_tar() {
        let mut t = T::new();
        t.file("a", b"abc", 0o644);
        let tarball = t.done();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tarball).unwrap();
        let gz = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stats = unpack_layer(&gz[..], dir.path()).unwrap();
        assert_eq!(stats.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&tarball))));
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"abc");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !is_root() {
            println!("SKIP: whiteout test needs root (mknod, trusted xattrs)");
            return;
        }
        let mut t = T::new();
        t.dir("etc/");
        t.file("etc/.wh.gone", b"", 0o644);
        t.file("opaque/.wh..wh..opq", b"", 0o644);
        t.file("opaque/kept", b"k", 0o644);
        t.file("nested/dir/.wh.x", b"", 0o644);
        t.file(".wh..wh.plnk", b"", 0o644);
        let dir = tempfile::tempdir().unwrap();
        unpack_layer(&t.done()[..], dir.path()).unwrap();
        for w in ["etc/gone", "nested/dir/x"] {
            let m = fs::symlink_metadata(dir.path().join(w)).unwrap();
            assert!(m.file_type().is_char_device(), "{w} is not a char device");
            assert_eq!(m.rdev(), 0, "{w} is not device 0/0");
        }
        assert!(!dir.path().join("etc/.wh.gone").exists());
        assert_eq!(xattr::get(dir.path().join("opaque"), OPAQUE_XATTR).unwrap(), Some(b"y".to_vec()));
        assert!(!dir.path().join("opaque/.wh..wh..opq").exists());
        assert_eq!(fs::read(dir.path().join("opaque/kept")).unwrap(), b"k");
        assert!(!dir.path().join(".wh..wh.plnk").exists());
    }

    #[test]
    fn rejects_parent_dir_and_absolute_names() {
        for name in ["../evil", "a/../../evil", "/abs"] {
            let outer = tempfile::tempdir().unwrap();
            let dest = outer.path().join("layer");
            fs::create_dir(&dest).unwrap();
            let mut t = T::new();
            t.file(name, b"pwned", 0o644);
            let err = unpack_layer(&t.done()[..], &dest).unwrap_err();
            assert!(matches!(err, ImageError::Invalid(_)), "{name}: {err}");
            assert!(!outer.path().join("evil").exists());
            assert!(!dest.join("abs").exists());
        }
    }

    #[test]
    fn does_not_write_through_symlinks() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("layer");
        let victim = outer.path().join("victim");
        fs::create_dir_all(&dest).unwrap();
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("f"), b"original").unwrap();

        // A directory symlink followed by a write below it.
        let mut t = T::new();
        t.raw("link", EntryType::Symlink, b"", Some(victim.to_str().unwrap()), 0o777);
        t.file("link/planted", b"pwned", 0o644);
        let err = unpack_layer(&t.done()[..], &dest).unwrap_err();
        assert!(matches!(err, ImageError::Invalid(_)), "{err}");
        assert!(!victim.join("planted").exists());

        // A file symlink replaced by a regular file: the link is replaced, its target untouched.
        let dest2 = outer.path().join("layer2");
        fs::create_dir_all(&dest2).unwrap();
        let mut t = T::new();
        t.raw("f", EntryType::Symlink, b"", Some(victim.join("f").to_str().unwrap()), 0o777);
        t.file("f", b"new", 0o644);
        unpack_layer(&t.done()[..], &dest2).unwrap();
        assert_eq!(fs::read(victim.join("f")).unwrap(), b"original");
        assert_eq!(fs::read(dest2.join("f")).unwrap(), b"new");
        assert!(fs::symlink_metadata(dest2.join("f")).unwrap().is_file());
    }

    #[test]
    fn rejects_hardlinks_outside_the_layer() {
        let outer = tempfile::tempdir().unwrap();
        fs::write(outer.path().join("secret"), b"s").unwrap();
        let dest = outer.path().join("layer");
        fs::create_dir_all(&dest).unwrap();
        for link in ["../secret", "/etc/passwd", "missing"] {
            let mut t = T::new();
            t.raw("h", EntryType::Link, b"", Some(link), 0o644);
            let err = unpack_layer(&t.done()[..], &dest).unwrap_err();
            assert!(matches!(err, ImageError::Invalid(_)), "{link}: {err}");
            assert!(!dest.join("h").exists());
        }
        // Through a symlinked directory inside the layer.
        let mut t = T::new();
        t.raw("up", EntryType::Symlink, b"", Some(".."), 0o777);
        t.raw("h", EntryType::Link, b"", Some("up/secret"), 0o644);
        let err = unpack_layer(&t.done()[..], &dest).unwrap_err();
        assert!(matches!(err, ImageError::Invalid(_)), "{err}");
        assert!(!dest.join("h").exists());
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = T::new();
        t.file("x", b"file", 0o644);
        t.dir("x/");
        t.file("x/y", b"y", 0o644);
        t.dir("d/");
        t.file("d/keep", b"k", 0o644);
        t.dir("d/");
        unpack_layer(&t.done()[..], dir.path()).unwrap();
        assert!(dir.path().join("x").is_dir());
        assert_eq!(fs::read(dir.path().join("x/y")).unwrap(), b"y");
        // Re-declaring a directory keeps its content.
        assert_eq!(fs::read(dir.path().join("d/keep")).unwrap(), b"k");
    }

    #[test]
    fn zstd_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_layer(&[0x28u8, 0xb5, 0x2f, 0xfd, 0, 0][..], dir.path()).unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn sanitize_paths() {
        assert_eq!(sanitize(Path::new("./a/./b")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(sanitize(Path::new("./")).unwrap(), PathBuf::new());
        assert!(sanitize(Path::new("a/..")).is_err());
        assert!(sanitize(Path::new("/a")).is_err());
    }
}
