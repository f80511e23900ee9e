//! Container logs: stdout and stderr of a container go straight into one engine-owned file
//! (`O_APPEND`), never through a pipe the engine must drain — a container keeps logging while the
//! engine restarts. Files are bounded: above `max_bytes` the content is copied to `<file>.1` and the
//! file is truncated in place (copy-truncate; the container's `O_APPEND` fd keeps working). Lines
//! carry no timestamps, and stdout/stderr are interleaved in one file (stream `"combined"`).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::{LocalError, Result};

/// Open (create) a container log file for appending.
pub fn open_for_container(path: &Path) -> Result<File> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(LocalError::io(format!("create {}", d.display())))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(LocalError::io(format!("open log {}", path.display())))
}

/// Remove a log file and its rotation.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(rotated(path));
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The log files being written and their size bound.
pub struct Rotator {
    max_bytes: u64,
    files: Mutex<BTreeSet<PathBuf>>,
}

impl Rotator {
    pub fn new(max_bytes: u64) -> Self {
        Rotator { max_bytes: max_bytes.max(4096), files: Mutex::new(BTreeSet::new()) }
    }
    pub fn watch(&self, path: PathBuf) {
        self.files.lock().insert(path);
    }
    pub fn unwatch_under(&self, dir: &Path) {
        self.files.lock().retain(|p| !p.starts_with(dir));
    }
    /// Rotate every watched file that grew past the bound.
    pub fn tick(&self) {
        let files: Vec<PathBuf> = self.files.lock().iter().cloned().collect();
        for f in files {
            if let Err(e) = rotate_if_needed(&f, self.max_bytes) {
                tracing::warn!(file = %f.display(), error = %e, "log rotation failed");
            }
        }
    }
}

/// Copy-truncate `path` into `path.1` when it is larger than `max`.
pub fn rotate_if_needed(path: &Path, max: u64) -> std::io::Result<bool> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(false) };
    if meta.len() <= max {
        return Ok(false);
    }
    std::fs::copy(path, rotated(path))?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = File::open(path) else { return vec![] };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    if start > 0 {
        // Drop the partial first line.
        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            buf.drain(..=nl);
        }
    }
    buf
}

/// The last `lines` lines (0 = all) of a log file and its rotation.
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    let mut all = read_tail(&rotated(path), 64 << 20);
    all.extend(read_tail(path, 64 << 20));
    let text = String::from_utf8_lossy(&all);
    let v: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines == 0 || v.len() <= lines { v } else { v[v.len() - lines..].to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotation_keeps_one_old_file_and_tail_spans_both() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut f = open_for_container(&p).unwrap();
        for i in 0..100 {
            writeln!(f, "line {i}").unwrap();
        }
        assert!(rotate_if_needed(&p, 100).unwrap());
        writeln!(f, "after").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 6, "append continues at the truncated end");
        let t = tail(&p, 2);
        assert_eq!(t, ["line 99", "after"]);
        assert_eq!(tail(&p, 0).len(), 101);
        remove(&p);
        assert!(tail(&p, 0).is_empty());
    }
}
