//! Container logs: stdout and stderr of a container go straight into one engine-owned file
//! (`O_APPEND`), never through a pipe the engine must drain — a container keeps logging while the
//! engine restarts. Files are bounded: above `max_bytes` the content is copied to `<file>.1` and the
//! file is truncated in place (copy-truncate; the container's `O_APPEND` fd keeps working).
//! stdout/stderr are interleaved in one file (stream `"combined"`).
//!
//! **Timestamps.** Since the container writes the file itself, no line carries a prefix. Instead the
//! engine *observes* each file: an inotify watch per log file (one thread for all files) records
//! "at time T the file had N bytes" checkpoints ([`Stamps`]), and a line gets the time of the
//! first checkpoint at or after its end. The error is the merge window (20 ms) plus the inotify
//! latency; old checkpoints are thinned (coarser, never earlier) so memory stays bounded per file.
//! Checkpoints live in memory only: lines written before the engine started observing a file (before
//! a restart, say) have no timestamp. Without inotify (watch limit reached) the once-a-second
//! rotation tick records the checkpoints, so timestamps are within a second.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
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
    let _ = std::fs::remove_file(dropped_marker(path));
}

/// Exists once a rotation overwrote an older `.1`: output before `.1` is gone for good.
fn dropped_marker(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".dropped");
    PathBuf::from(p)
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// RFC 3339, microseconds, UTC (`2026-11-28T22:52:34.123456Z`).
pub fn format_micros(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// Checkpoints within this window are merged into one (bounds the count for chatty containers).
const MERGE_US: i64 = 20_000;
/// Checkpoints kept per file; beyond, the older half is thinned.
const MAX_POINTS: usize = 256;

/// When the bytes of one log file were first seen: `(end offset, unix micros)` checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamps {
    /// Bytes up to this offset were there before observation began: no timestamp.
    base: u64,
    points: Vec<(u64, i64)>,
}

impl Stamps {
    fn starting_at(base: u64) -> Stamps {
        Stamps { base, points: Vec::new() }
    }

    fn end(&self) -> u64 {
        self.points.last().map_or(self.base, |p| p.0)
    }

    /// The file has `size` bytes at `now_us`.
    fn note(&mut self, size: u64, now_us: i64) {
        let end = self.end();
        if size < end {
            // Truncated by someone else than our rotation: start over.
            *self = Stamps::default();
        }
        if size <= self.end() {
            return;
        }
        match self.points.last_mut() {
            Some(p) if now_us - p.1 < MERGE_US => p.0 = size,
            _ => self.points.push((size, now_us)),
        }
        if self.points.len() > MAX_POINTS {
            // Dropping a checkpoint hands its bytes to the next one: later, never earlier.
            let half = self.points.len() / 2;
            let mut i = 0;
            self.points.retain(|_| {
                let keep = i >= half || i % 2 == 1;
                i += 1;
                keep
            });
        }
    }

    /// Unix micros of the line that ends at byte `end`, if observed.
    pub fn at(&self, end: u64) -> Option<i64> {
        if end <= self.base {
            return None;
        }
        let i = self.points.partition_point(|p| p.0 < end);
        self.points.get(i).map(|p| p.1)
    }
}

#[derive(Debug, Default)]
struct FileState {
    wd: Option<WatchDescriptor>,
    current: Stamps,
    /// Stamps of `<file>.1`, taken over at the last rotation.
    old: Stamps,
    /// Rotations since the engine started observing the file (followers detect copy-truncate
    /// by it: the size alone cannot tell when the file grew back past the read position).
    rotations: u64,
}

/// The log files being written: their size bound (rotation) and their timestamps.
pub struct Rotator {
    max_bytes: u64,
    files: Mutex<BTreeMap<PathBuf, Arc<Mutex<FileState>>>>,
    inotify: Option<Inotify>,
    wds: Mutex<HashMap<WatchDescriptor, PathBuf>>,
}

impl Rotator {
    pub fn new(max_bytes: u64) -> Self {
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "no inotify: log timestamps are only as precise as the 1 s rotation tick");
                None
            }
        };
        Rotator {
            max_bytes: max_bytes.max(4096),
            files: Mutex::new(BTreeMap::new()),
            inotify,
            wds: Mutex::new(HashMap::new()),
        }
    }

    /// Start the thread that turns inotify events into checkpoints. It ends when the rotator is
    /// dropped (it holds only a weak reference between polls).
    pub fn start_stamper(self: &Arc<Self>) {
        if self.inotify.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("agentbox-logstamp".into()).spawn(move || run_stamper(weak));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the log timestamp thread");
        }
    }

    /// Start observing `path` (again): a fresh file, or one found at start-up (its current content
    /// gets no timestamps).
    pub fn watch(&self, path: PathBuf) {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let wd = self.inotify.as_ref().and_then(|i| match i.add_watch(&path, AddWatchFlags::IN_MODIFY) {
            Ok(wd) => Some(wd),
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "no inotify watch; timestamps from the tick");
                None
            }
        });
        if let Some(wd) = wd {
            self.wds.lock().insert(wd, path.clone());
        }
        let st = FileState { wd, current: Stamps::starting_at(size), ..Default::default() };
        self.files.lock().insert(path, Arc::new(Mutex::new(st)));
    }

    pub fn unwatch_under(&self, dir: &Path) {
        let mut gone = Vec::new();
        self.files.lock().retain(|p, st| {
            let keep = !p.starts_with(dir);
            if !keep && let Some(wd) = st.lock().wd {
                gone.push(wd);
            }
            keep
        });
        let mut wds = self.wds.lock();
        for wd in gone {
            wds.remove(&wd);
            if let Some(i) = &self.inotify {
                let _ = i.rm_watch(wd); // already gone with the file: fine
            }
        }
    }

    fn state(&self, path: &Path) -> Option<Arc<Mutex<FileState>>> {
        self.files.lock().get(path).cloned()
    }

    /// Record the current size of `path` as seen now.
    pub fn note(&self, path: &Path) {
        if let Some(st) = self.state(path)
            && let Ok(m) = std::fs::metadata(path)
        {
            st.lock().current.note(m.len(), now_micros());
        }
    }

    /// Timestamps of `path` and of its rotation `.1`.
    pub fn stamps(&self, path: &Path) -> (Stamps, Stamps) {
        match self.state(path) {
            Some(st) => {
                let st = st.lock();
                (st.current.clone(), st.old.clone())
            }
            None => (Stamps::starting_at(u64::MAX), Stamps::starting_at(u64::MAX)),
        }
    }

    /// How often `path` was rotated since the engine started observing it.
    pub fn rotations(&self, path: &Path) -> u64 {
        self.state(path).map_or(0, |st| st.lock().rotations)
    }

    /// Rotate every watched file that grew past the bound (and record checkpoints).
    pub fn tick(&self) {
        let files: Vec<(PathBuf, Arc<Mutex<FileState>>)> =
            self.files.lock().iter().map(|(p, s)| (p.clone(), s.clone())).collect();
        for (f, st) in files {
            let mut st = st.lock();
            match rotate_if_needed(&f, self.max_bytes) {
                Ok(Some(copied)) => {
                    let mut old = std::mem::take(&mut st.current);
                    old.note(copied, now_micros());
                    st.old = old;
                    st.rotations += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(file = %f.display(), error = %e, "log rotation failed"),
            }
            if let Ok(m) = std::fs::metadata(&f) {
                st.current.note(m.len(), now_micros());
            }
        }
    }

    fn on_event(&self, wd: WatchDescriptor, mask: AddWatchFlags) {
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            if let Some(p) = self.wds.lock().remove(&wd)
                && let Some(st) = self.state(&p)
            {
                let mut st = st.lock();
                if st.wd == Some(wd) {
                    st.wd = None;
                }
            }
            return;
        }
        let path = self.wds.lock().get(&wd).cloned();
        if let Some(p) = path {
            self.note(&p);
        }
    }
}

fn run_stamper(weak: Weak<Rotator>) {
    loop {
        let Some(r) = weak.upgrade() else { return };
        let Some(ino) = &r.inotify else { return };
        let ready = {
            let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
            matches!(poll(&mut fds, PollTimeout::from(500u16)), Ok(n) if n > 0)
        };
        if ready {
            for ev in ino.read_events().unwrap_or_default() {
                r.on_event(ev.wd, ev.mask);
            }
        }
    }
}

/// Copy-truncate `path` into `path.1` when it is larger than `max`; returns the bytes copied.
pub fn rotate_if_needed(path: &Path, max: u64) -> std::io::Result<Option<u64>> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(None) };
    if meta.len() <= max {
        return Ok(None);
    }
    if std::fs::metadata(rotated(path)).is_ok_and(|m| m.len() > 0) {
        std::fs::write(dropped_marker(path), b"")?;
    }
    let copied = std::fs::copy(path, rotated(path))?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(Some(copied))
}

/// Read `[start, end)` of a file (to its end when `end` is `None`); returns the bytes and the
/// offset they start at (`start`, or 0 when the file is shorter).
fn read_range(path: &Path, start: u64, end: Option<u64>) -> (Vec<u8>, u64) {
    let Ok(mut f) = File::open(path) else { return (vec![], 0) };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let end = end.unwrap_or(len).min(len);
    let start = start.min(end);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(end - start).read_to_end(&mut buf);
    }
    (buf, start)
}

/// Split `buf` (which starts at file offset `base`) into complete lines with their end offsets;
/// returns the lines and the length of the trailing partial line.
fn split_lines(buf: &[u8], base: u64) -> (Vec<(String, u64)>, usize) {
    let mut out = Vec::new();
    let mut from = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            out.push((String::from_utf8_lossy(&buf[from..i]).into_owned(), base + i as u64 + 1));
            from = i + 1;
        }
    }
    (out, buf.len() - from)
}

/// Most bytes read of one file (a bounded file is far smaller).
const READ_CAP: u64 = 64 << 20;

/// One line of a container log with its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub line: String,
    pub timestamp: Option<String>,
}

/// What [`Rotator::read`] found.
#[derive(Debug, Default)]
pub struct Tail {
    pub entries: Vec<Entry>,
    /// Length of the current file when it was read (where a follower continues).
    pub read_to: u64,
    pub inode: u64,
    pub rotations: u64,
    /// The first entry is not the start of the container's output: rotation (or the read cap)
    /// discarded what came before, and `lines` did not cut there.
    pub older_dropped: bool,
}

/// The lines of `[start, end)` of a file with their timestamps, and the offset read up to.
fn lines_with_stamps(path: &Path, start: u64, end: Option<u64>, stamps: &Stamps) -> (Vec<Entry>, u64) {
    let (buf, base) = read_range(path, start, end);
    let n = buf.len() as u64;
    let mut skip = 0;
    if base > 0 {
        // Reading from the middle (past the read cap): drop the partial first line.
        skip = buf.iter().position(|b| *b == b'\n').map_or(buf.len(), |p| p + 1);
    }
    let (mut lines, partial) = split_lines(&buf[skip..], base + skip as u64);
    if partial > 0 {
        // An unterminated last line is still a line (the container has not finished it yet).
        let from = buf.len() - partial;
        lines.push((String::from_utf8_lossy(&buf[from..]).into_owned(), base + buf.len() as u64));
    }
    let entries = lines
        .into_iter()
        .map(|(line, end)| Entry { line, timestamp: stamps.at(end).and_then(format_micros) })
        .collect();
    (entries, base + n)
}

impl Rotator {
    /// The last `lines` lines (0 = all) of a log file and its rotation, with timestamps.
    pub fn read(&self, path: &Path, lines: usize) -> Tail {
        let rotations = self.rotations(path);
        let inode = std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0);
        let old_len = std::fs::metadata(rotated(path)).map(|m| m.len()).unwrap_or(0);
        let cur_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        // Checkpoints after the sizes were taken cover every byte read below.
        self.note(path);
        let (cur_st, old_st) = self.stamps(path);
        let (mut entries, _) =
            lines_with_stamps(&rotated(path), old_len.saturating_sub(READ_CAP), Some(old_len), &old_st);
        let (cur, read_to) = lines_with_stamps(path, cur_len.saturating_sub(READ_CAP), Some(cur_len), &cur_st);
        entries.extend(cur);
        let mut older_dropped =
            dropped_marker(path).exists() || old_len > READ_CAP || (old_len == 0 && cur_len > READ_CAP);
        if lines > 0 && entries.len() > lines {
            entries.drain(..entries.len() - lines);
            older_dropped = false;
        }
        Tail { entries, read_to, inode, rotations, older_dropped }
    }
}

/// Follows one log file like `tail -F`: new complete lines since the last poll, across
/// copy-truncate rotation (the unread rest is taken from `.1`) and replacement (new inode).
pub struct Follower {
    path: PathBuf,
    inode: u64,
    pos: u64,
    rotations: u64,
    partial: Vec<u8>,
}

/// Most bytes read per poll and file; the rest comes with the next poll.
const POLL_CAP: u64 = 1 << 20;
/// An unterminated line longer than this is emitted as it is.
const PARTIAL_CAP: usize = 64 << 10;

impl Follower {
    /// Continue after a [`Rotator::read`] of `path`.
    pub fn after(path: PathBuf, tail: &Tail) -> Follower {
        Follower { path, inode: tail.inode, pos: tail.read_to, rotations: tail.rotations, partial: Vec::new() }
    }

    /// Lines written since the last poll.
    pub fn poll(&mut self, r: &Rotator) -> Vec<Entry> {
        let rotations = r.rotations(&self.path);
        let Ok(meta) = std::fs::metadata(&self.path) else { return vec![] };
        let mut out = Vec::new();
        let rotated_now = rotations != self.rotations;
        self.rotations = rotations;
        if meta.ino() != self.inode {
            // Replaced (the container was restarted or switched): follow the new file from its start.
            self.inode = meta.ino();
            self.pos = 0;
            self.partial.clear();
        } else if rotated_now || meta.len() < self.pos {
            // Copy-truncated: what we had not read yet is at the end of `.1`.
            let (_, old_st) = r.stamps(&self.path);
            let (buf, _) = read_range(&rotated(&self.path), self.pos, None);
            self.emit(buf, self.pos, &old_st, &mut out);
            self.pos = 0;
        }
        if meta.len() > self.pos {
            let end = meta.len().min(self.pos + POLL_CAP);
            let (buf, base) = read_range(&self.path, self.pos, Some(end));
            r.note(&self.path);
            let (st, _) = r.stamps(&self.path);
            self.pos = base + buf.len() as u64;
            self.emit(buf, base, &st, &mut out);
        }
        out
    }

    fn emit(&mut self, buf: Vec<u8>, base: u64, st: &Stamps, out: &mut Vec<Entry>) {
        let carried = self.partial.len() as u64;
        let mut data = std::mem::take(&mut self.partial);
        data.extend_from_slice(&buf);
        let (lines, partial) = split_lines(&data, base.saturating_sub(carried));
        for (line, end) in lines {
            out.push(Entry { line, timestamp: st.at(end).and_then(format_micros) });
        }
        self.partial = data[data.len() - partial..].to_vec();
        if self.partial.len() > PARTIAL_CAP {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            let end = base + buf.len() as u64;
            out.push(Entry { line, timestamp: st.at(end).and_then(format_micros) });
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(t: &Tail) -> Vec<&str> {
        t.entries.iter().map(|e| e.line.as_str()).collect()
    }

    #[test]
    fn rotation_keeps_one_old_file_and_tail_spans_both() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let r = Rotator::new(4096);
        let mut f = open_for_container(&p).unwrap();
        r.watch(p.clone());
        for i in 0..100 {
            writeln!(f, "line {i}").unwrap();
        }
        assert_eq!(rotate_if_needed(&p, 100).unwrap(), Some(790));
        writeln!(f, "after").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 6, "append continues at the truncated end");
        let t = r.read(&p, 2);
        assert_eq!(lines(&t), ["line 99", "after"]);
        let all = r.read(&p, 0);
        assert_eq!(all.entries.len(), 101);
        assert_eq!(all.read_to, 6);
        assert!(!all.older_dropped, "the first rotation loses nothing");
        // A second rotation overwrites `.1`: the start of the output is gone, and reads say so.
        for i in 0..20 {
            writeln!(f, "more {i}").unwrap();
        }
        assert!(rotate_if_needed(&p, 100).unwrap().is_some());
        writeln!(f, "last").unwrap();
        let all = r.read(&p, 0);
        assert_eq!(all.entries.first().map(|e| e.line.as_str()), Some("after"));
        assert!(all.older_dropped);
        assert!(!r.read(&p, 1).older_dropped, "a tail cut by `lines` reports the cut, not the loss");
        remove(&p);
        assert!(r.read(&p, 0).entries.is_empty());
        assert!(!r.read(&p, 0).older_dropped, "removing the log forgets the loss too");
    }

    #[test]
    fn lines_get_the_time_they_were_observed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut f = open_for_container(&p).unwrap();
        writeln!(f, "before observation").unwrap();
        let r = Rotator::new(4096);
        r.watch(p.clone());
        let t0 = now_micros();
        writeln!(f, "observed").unwrap();
        let t = r.read(&p, 0);
        assert_eq!(lines(&t), ["before observation", "observed"]);
        assert_eq!(t.entries[0].timestamp, None, "written before the engine looked: no time");
        let ts = t.entries[1].timestamp.as_deref().expect("a timestamp");
        let parsed = chrono::DateTime::parse_from_rfc3339(ts).unwrap().timestamp_micros();
        assert!(parsed >= t0 && parsed <= now_micros(), "{ts}");
        assert!(ts.ends_with('Z') && ts.len() == "2026-11-28T22:52:34.123456Z".len(), "{ts}");
    }

    #[test]
    fn stamps_merge_thin_and_never_go_earlier() {
        let mut s = Stamps::starting_at(10);
        s.note(20, 1_000_000);
        s.note(30, 1_005_000); // within the merge window
        assert_eq!(s.points, [(30, 1_000_000)]);
        s.note(40, 2_000_000);
        assert_eq!(s.at(5), None);
        assert_eq!(s.at(25), Some(1_000_000));
        assert_eq!(s.at(31), Some(2_000_000));
        assert_eq!(s.at(41), None);
        let mut s = Stamps::default();
        for i in 1..=(MAX_POINTS as u64 + 1) {
            s.note(i * 10, i as i64 * 100_000);
        }
        assert!(s.points.len() <= MAX_POINTS);
        for i in 1..=(MAX_POINTS as u64 + 1) {
            assert!(s.at(i * 10).unwrap() >= i as i64 * 100_000, "thinning made line {i} earlier");
        }
    }

    #[test]
    fn follower_sees_new_lines_across_rotation_and_replacement() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let r = Rotator::new(4096);
        let mut f = open_for_container(&p).unwrap();
        r.watch(p.clone());
        writeln!(f, "old").unwrap();
        let t = r.read(&p, 0);
        let mut fo = Follower::after(p.clone(), &t);
        assert!(fo.poll(&r).is_empty());
        write!(f, "par").unwrap();
        assert!(fo.poll(&r).is_empty(), "a partial line waits for its end");
        writeln!(f, "tial").unwrap();
        writeln!(f, "x").unwrap();
        let got = fo.poll(&r);
        assert_eq!(got.iter().map(|e| e.line.as_str()).collect::<Vec<_>>(), ["partial", "x"]);
        assert!(got.iter().all(|e| e.timestamp.is_some()));
        writeln!(f, "unread before rotation").unwrap();
        let small = Rotator { max_bytes: 10, ..Rotator::new(0) };
        small.watch(p.clone());
        fo.rotations = 0;
        small.tick();
        assert_eq!(small.rotations(&p), 1);
        writeln!(f, "after rotation, longer than what was unread").unwrap();
        let r = small;
        let got: Vec<String> = fo.poll(&r).into_iter().map(|e| e.line).collect();
        assert_eq!(got, ["unread before rotation", "after rotation, longer than what was unread"]);
        drop(f);
        remove(&p);
        let mut f = open_for_container(&p).unwrap();
        writeln!(f, "new container").unwrap();
        let got: Vec<String> = fo.poll(&r).into_iter().map(|e| e.line).collect();
        assert_eq!(got, ["new container"]);
    }
}
