//! Directory watchers on inotify, with envd's semantics: `WatchDir` streams the events of
//! one watcher; `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher` buffer them for
//! polling clients.
//!
//! Events follow envd (fsnotify's inotify mapping): `IN_CREATE`/`IN_MOVED_TO` → CREATE,
//! `IN_MOVED_FROM`/`IN_MOVE_SELF` → RENAME, `IN_ATTRIB` → CHMOD, `IN_MODIFY` → WRITE,
//! `IN_DELETE`/`IN_DELETE_SELF` → REMOVE. Names are relative to the watched directory
//! (`.` for the directory itself). A recursive watcher also watches every subdirectory,
//! including ones created or moved in later; entries found in a directory created after the
//! watch started get a CREATE event (and a WRITE when a non-empty file), since they may have
//! appeared before its watch existed (so a few of those may be reported twice).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use crate::connect::{Code, ConnectError};
use crate::proto::filesystem::{EventType, FilesystemEvent, WatchDirRequest, WatchDirResponse};

/// Buffered events a polled watcher keeps before it stops with `resource_exhausted`.
pub const MAX_BUFFERED_EVENTS: usize = 100_000;

/// Keepalive interval of `WatchDir` streams when the client names none (envd's default).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// Filesystem magic numbers envd refuses to watch unless asked (NFS, CIFS, SMB, SMB2, FUSE).
const NETWORK_FS_MAGIC: [i64; 5] = [0x6969, 0xFF53_4D42, 0x517B, 0xFE53_4D42, 0x6573_5546];

fn events_mask() -> F {
    F::IN_CREATE
        | F::IN_MOVED_TO
        | F::IN_MOVED_FROM
        | F::IN_MOVE_SELF
        | F::IN_ATTRIB
        | F::IN_MODIFY
        | F::IN_DELETE
        | F::IN_DELETE_SELF
}

/// What to watch: an absolute, already user-resolved directory and the request's options.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// The directory (symlinks are resolved before watching, as envd does).
    pub path: PathBuf,
    /// Watch subdirectories too.
    pub recursive: bool,
    /// Attach the entry's `EntryInfo` to events whose entry still exists.
    pub include_entry: bool,
    /// Allow NFS/CIFS/SMB/FUSE mounts, where events may never arrive.
    pub allow_network_mounts: bool,
}

impl WatchSpec {
    /// The spec of a `WatchDir` / `CreateWatcher` request whose path resolved to `path`.
    pub fn from_request(path: PathBuf, req: &WatchDirRequest) -> WatchSpec {
        WatchSpec {
            path,
            recursive: req.recursive,
            include_entry: req.include_entry,
            allow_network_mounts: req.allow_network_mounts,
        }
    }
}

/// The inotify fd, in the shape `AsyncFd` wants.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The synchronous part of a watcher: the inotify instance and the directory of each watch.
struct Tree {
    root: PathBuf,
    root_wd: WatchDescriptor,
    recursive: bool,
    include_entry: bool,
    /// Directory of each watch, relative to `root` (empty for the root).
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

fn add_watch_error(e: Errno, path: &Path) -> ConnectError {
    match e {
        Errno::ENOSPC => ConnectError::new(
            Code::ResourceExhausted,
            format!(
                "cannot watch {}: the inotify watch limit is reached; raise fs.inotify.max_user_watches or watch a smaller tree",
                path.display()
            ),
        ),
        e => ConnectError::io(&std::io::Error::from(e), &format!("cannot watch {}", path.display())),
    }
}

impl Tree {
    fn open(spec: &WatchSpec) -> Result<(Inotify, Tree), ConnectError> {
        let meta = std::fs::metadata(&spec.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ConnectError::new(Code::NotFound, format!("path {} not found", spec.path.display()))
            }
            _ => ConnectError::io(&e, &spec.path.display().to_string()),
        })?;
        if !meta.is_dir() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("path {} is not a directory: watch its parent directory instead", spec.path.display()),
            ));
        }
        let root = std::fs::canonicalize(&spec.path).map_err(|e| ConnectError::io(&e, "resolve watched path"))?;
        if !spec.allow_network_mounts && is_network_mount(&root) {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!(
                    "cannot watch path on network filesystem: {} (set allow_network_mounts to watch it anyway)",
                    root.display()
                ),
            ));
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| {
            ConnectError::new(
                Code::ResourceExhausted,
                format!("cannot create an inotify instance ({e}): remove unused watchers or raise fs.inotify.max_user_instances"),
            )
        })?;
        let root_wd = inotify.add_watch(&root, events_mask() | F::IN_ONLYDIR).map_err(|e| add_watch_error(e, &root))?;
        let mut tree = Tree {
            root,
            root_wd,
            recursive: spec.recursive,
            include_entry: spec.include_entry,
            dirs: HashMap::from([(root_wd, PathBuf::new())]),
        };
        if spec.recursive {
            tree.add_subdirs(&inotify, Path::new(""), None)?;
        }
        Ok((inotify, tree))
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() { self.root.clone() } else { self.root.join(rel) }
    }

    /// Watches every directory below `rel` (not `rel` itself); pushes every entry found to
    /// `found` when given. Directories that vanish meanwhile are skipped.
    fn add_subdirs(
        &mut self,
        ino: &Inotify,
        rel: &Path,
        mut found: Option<&mut Vec<PathBuf>>,
    ) -> Result<(), ConnectError> {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(self.abs(&dir)) else { continue };
            let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let child = dir.join(entry.file_name());
                if let Some(f) = found.as_deref_mut() {
                    f.push(child.clone());
                }
                // `DirEntry::file_type` does not follow symlinks: symlinked directories are not descended.
                if entry.file_type().is_ok_and(|t| t.is_dir()) && self.add_one(ino, &child)? {
                    stack.push(child);
                }
            }
        }
        Ok(())
    }

    /// Watches one directory; false when it is gone (or no longer a directory).
    fn add_one(&mut self, ino: &Inotify, rel: &Path) -> Result<bool, ConnectError> {
        let abs = self.abs(rel);
        match ino.add_watch(&abs, events_mask() | F::IN_ONLYDIR | F::IN_DONT_FOLLOW) {
            Ok(wd) => {
                // Watching an inode twice returns its existing descriptor: a directory moved
                // within the tree keeps its watch, now under its new name.
                self.dirs.insert(wd, rel.to_path_buf());
                Ok(true)
            }
            Err(Errno::ENOSPC) => Err(add_watch_error(Errno::ENOSPC, &abs)),
            Err(_) => Ok(false),
        }
    }

    /// Drops the watches of `rel` and everything below it (a directory moved away).
    fn remove_subtree(&mut self, ino: &Inotify, rel: &Path) {
        let gone: Vec<WatchDescriptor> =
            self.dirs.iter().filter(|(wd, d)| **wd != self.root_wd && d.starts_with(rel)).map(|(wd, _)| *wd).collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = ino.rm_watch(wd);
        }
    }

    /// Renames the watched directories under `old` to live under `new` (a move within the tree).
    fn rename_subtree(&mut self, old: &Path, new: &Path) {
        for (wd, dir) in self.dirs.iter_mut() {
            if *wd == self.root_wd {
                continue;
            }
            if let Ok(rest) = dir.strip_prefix(old) {
                *dir = if rest.as_os_str().is_empty() { new.to_path_buf() } else { new.join(rest) };
            }
        }
    }

    fn event(&self, rel: &Path, ty: EventType) -> FilesystemEvent {
        let name = if rel.as_os_str().is_empty() { ".".to_string() } else { rel.to_string_lossy().into_owned() };
        let entry = if self.include_entry { crate::fs::entry_info(&self.abs(rel)).ok() } else { None };
        FilesystemEvent { name, r#type: ty as i32, entry }
    }

    /// Turns raw inotify events into envd events, keeping the recursive watch set current.
    fn translate(&mut self, ino: &Inotify, raw: Vec<InotifyEvent>) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let mut out = Vec::new();
        // Directory moves within the tree (both halves in this batch) keep their watches: only
        // the names change. A move whose other half is outside the tree adds or drops watches.
        let moved_to: std::collections::HashSet<u32> = raw
            .iter()
            .filter(|e| e.mask.contains(F::IN_MOVED_TO | F::IN_ISDIR) && self.dirs.contains_key(&e.wd))
            .map(|e| e.cookie)
            .collect();
        let mut moved_from: HashMap<u32, PathBuf> = HashMap::new();
        for ev in raw {
            let m = ev.mask;
            if m.contains(F::IN_Q_OVERFLOW) {
                return Err(ConnectError::new(
                    Code::Internal,
                    "watcher error: the inotify event queue overflowed and events were lost; watch again",
                ));
            }
            if m.contains(F::IN_IGNORED) {
                if ev.wd != self.root_wd {
                    self.dirs.remove(&ev.wd);
                }
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd).cloned() else { continue };
            let is_self = m.intersects(F::IN_DELETE_SELF | F::IN_MOVE_SELF);
            // A subdirectory's own removal or move is reported by its parent's watch.
            if is_self && ev.wd != self.root_wd {
                continue;
            }
            let rel = match &ev.name {
                Some(name) if !is_self => dir.join(name),
                _ => dir,
            };
            let kinds = [
                (F::IN_CREATE | F::IN_MOVED_TO, EventType::Create),
                (F::IN_MOVED_FROM | F::IN_MOVE_SELF, EventType::Rename),
                (F::IN_ATTRIB, EventType::Chmod),
                (F::IN_MODIFY, EventType::Write),
                (F::IN_DELETE | F::IN_DELETE_SELF, EventType::Remove),
            ];
            for (bits, ty) in kinds {
                if m.intersects(bits) {
                    out.push(self.event(&rel, ty));
                }
            }
            if self.recursive && m.contains(F::IN_ISDIR) && !is_self {
                if m.contains(F::IN_MOVED_TO)
                    && let Some(old) = moved_from.remove(&ev.cookie)
                {
                    self.rename_subtree(&old, &rel);
                } else if m.intersects(F::IN_CREATE | F::IN_MOVED_TO) {
                    if self.add_one(ino, &rel)? {
                        // Entries made before the new watch existed would go unreported.
                        let mut found = Vec::new();
                        let collect = m.contains(F::IN_CREATE).then_some(&mut found);
                        self.add_subdirs(ino, &rel, collect)?;
                        for p in found {
                            out.push(self.event(&p, EventType::Create));
                            // A non-empty file was written before we could see it.
                            if std::fs::symlink_metadata(self.abs(&p)).is_ok_and(|m| m.is_file() && m.len() > 0) {
                                out.push(self.event(&p, EventType::Write));
                            }
                        }
                    }
                } else if m.contains(F::IN_MOVED_FROM) {
                    if moved_to.contains(&ev.cookie) {
                        moved_from.insert(ev.cookie, rel);
                    } else {
                        self.remove_subtree(ino, &rel);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn is_network_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| {
        // `fs_type_t` is `i64` on glibc x86_64 but differs on other targets (musl: `u64`).
        #[allow(clippy::unnecessary_cast)]
        let magic = s.filesystem_type().0 as i64;
        NETWORK_FS_MAGIC.contains(&magic)
    })
}

/// Hands the inotify instance to tokio's reactor (read interest only).
#[allow(unsafe_code)]
fn register(inotify: Inotify) -> Result<AsyncFd<InotifyFd>, ConnectError> {
    // SAFETY: `InotifyFd` owns the instance's `OwnedFd`, which stays open and is never replaced
    // while the `AsyncFd` lives, so `as_raw_fd` always returns the same open descriptor.
    unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE) }
        .map_err(|e| ConnectError::new(Code::Internal, format!("cannot register the inotify fd: {e}")))
}

/// One inotify watcher over a directory (tree); events are read asynchronously.
pub struct DirWatcher {
    fd: AsyncFd<InotifyFd>,
    tree: Tree,
}

impl DirWatcher {
    /// Starts watching. Errors as envd: a missing path is `not_found`, a path that is not a
    /// directory (or a network mount, unless allowed) is `invalid_argument`.
    pub async fn open(spec: WatchSpec) -> Result<DirWatcher, ConnectError> {
        // Adding watches walks the tree: keep that off the async workers.
        let (inotify, tree) = tokio::task::spawn_blocking(move || Tree::open(&spec))
            .await
            .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))??;
        Ok(DirWatcher { fd: register(inotify)?, tree })
    }

    /// The resolved directory being watched.
    pub fn root(&self) -> &Path {
        &self.tree.root
    }

    /// Waits for the next batch of events (never empty).
    pub async fn next_events(&mut self) -> Result<Vec<FilesystemEvent>, ConnectError> {
        loop {
            let raw = {
                let mut guard =
                    self.fd.readable().await.map_err(|e| ConnectError::io(&e, "watcher error: wait for inotify"))?;
                match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                    Ok(Ok(raw)) => raw,
                    Ok(Err(e)) => return Err(ConnectError::io(&e, "watcher error: read inotify events")),
                    Err(_would_block) => continue,
                }
            };
            let events = self.tree.translate(&self.fd.get_ref().0, raw)?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// The messages of a `WatchDir` stream: a start event, then filesystem events, with a
/// keepalive after every `keepalive` without events. Ends with the watcher's error, if any;
/// dropping the stream (client gone) drops the watcher.
pub fn watch_stream(
    watcher: DirWatcher,
    keepalive: Duration,
) -> impl Stream<Item = Result<WatchDirResponse, ConnectError>> + Send + 'static {
    struct St {
        watcher: DirWatcher,
        pending: VecDeque<FilesystemEvent>,
        started: bool,
        failed: bool,
        deadline: tokio::time::Instant,
    }
    let st = St {
        watcher,
        pending: VecDeque::new(),
        started: false,
        failed: false,
        deadline: tokio::time::Instant::now() + keepalive,
    };
    futures::stream::unfold(st, move |mut st| async move {
        if st.failed {
            return None;
        }
        if !st.started {
            st.started = true;
            return Some((Ok(WatchDirResponse { start: Some(Default::default()), ..Default::default() }), st));
        }
        loop {
            if let Some(ev) = st.pending.pop_front() {
                st.deadline = tokio::time::Instant::now() + keepalive;
                return Some((Ok(WatchDirResponse { filesystem: Some(ev), ..Default::default() }), st));
            }
            tokio::select! {
                r = st.watcher.next_events() => match r {
                    Ok(evs) => st.pending.extend(evs),
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(e), st));
                    }
                },
                _ = tokio::time::sleep_until(st.deadline) => {
                    st.deadline = tokio::time::Instant::now() + keepalive;
                    return Some((Ok(WatchDirResponse { keepalive: Some(Default::default()), ..Default::default() }), st));
                }
            }
        }
    })
}

/// Events and the terminal error of one polled watcher.
#[derive(Default)]
struct Buffer {
    events: Vec<FilesystemEvent>,
    error: Option<ConnectError>,
}

struct Polled {
    buffer: Arc<Mutex<Buffer>>,
    task: tokio::task::AbortHandle,
}

/// The watchers of `CreateWatcher`, polled with `GetWatcherEvents` until `RemoveWatcher`.
#[derive(Default)]
pub struct WatcherRegistry {
    watchers: Mutex<HashMap<String, Polled>>,
    next: std::sync::atomic::AtomicU64,
}

impl Drop for WatcherRegistry {
    fn drop(&mut self) {
        for (_, w) in self.watchers.get_mut().unwrap_or_else(|e| e.into_inner()).drain() {
            w.task.abort();
        }
    }
}

impl WatcherRegistry {
    /// Starts a watcher and returns its id.
    pub async fn create(&self, spec: WatchSpec) -> Result<String, ConnectError> {
        let mut watcher = DirWatcher::open(spec).await?;
        let buffer = Arc::new(Mutex::new(Buffer::default()));
        let buf = buffer.clone();
        let task = tokio::spawn(async move {
            loop {
                let r = watcher.next_events().await;
                let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(evs) if b.events.len() + evs.len() <= MAX_BUFFERED_EVENTS => b.events.extend(evs),
                    Ok(_) => {
                        b.error = Some(ConnectError::new(
                            Code::ResourceExhausted,
                            format!(
                                "watcher stopped: more than {MAX_BUFFERED_EVENTS} unread events; call GetWatcherEvents more often or watch a smaller tree"
                            ),
                        ));
                        return;
                    }
                    Err(e) => {
                        b.error = Some(e);
                        return;
                    }
                }
            }
        });
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let id = format!("w{:x}{n:x}", nanos & 0xffff_ffff_ffff);
        let polled = Polled { buffer, task: task.abort_handle() };
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), polled);
        Ok(id)
    }

    fn not_found(id: &str) -> ConnectError {
        ConnectError::new(Code::NotFound, format!("watcher with id {id} not found: create one with CreateWatcher"))
    }

    /// Drains the events buffered since the last call. Once the watcher failed, the events
    /// it buffered before are returned first, then every call returns its error.
    pub fn take_events(&self, id: &str) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        let w = watchers.get(id).ok_or_else(|| Self::not_found(id))?;
        let mut b = w.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if b.events.is_empty()
            && let Some(e) = &b.error
        {
            return Err(e.clone());
        }
        Ok(std::mem::take(&mut b.events))
    }

    /// Stops a watcher and forgets it.
    pub fn remove(&self, id: &str) -> Result<(), ConnectError> {
        let w =
            self.watchers.lock().unwrap_or_else(|e| e.into_inner()).remove(id).ok_or_else(|| Self::not_found(id))?;
        w.task.abort();
        Ok(())
    }

    /// Number of live watchers.
    pub fn len(&self) -> usize {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no watcher is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &Path, recursive: bool) -> WatchSpec {
        WatchSpec { path: path.to_path_buf(), recursive, include_entry: false, allow_network_mounts: false }
    }

    /// Collects events until `want` is satisfied or 5 s pass.
    async fn collect_until(w: &mut DirWatcher, want: impl Fn(&[(String, i32)]) -> bool) -> Vec<(String, i32)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !want(&got) {
            match tokio::time::timeout_at(deadline, w.next_events()).await {
                Ok(Ok(evs)) => got.extend(evs.into_iter().map(|e| (e.name, e.r#type))),
                Ok(Err(e)) => panic!("watcher failed: {e}"),
                Err(_) => break,
            }
        }
        got
    }

    fn has(got: &[(String, i32)], name: &str, ty: EventType) -> bool {
        got.iter().any(|(n, t)| n == name && *t == ty as i32)
    }

    #[tokio::test]
    async fn missing_path_and_file_are_rejected_like_envd() {
        let tmp = tempfile::tempdir().unwrap();
        let err = DirWatcher::open(spec(&tmp.path().join("nope"), false)).await.err().unwrap();
        assert_eq!(err.code, Code::NotFound);
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        let err = DirWatcher::open(spec(&tmp.path().join("f"), false)).await.err().unwrap();
        assert_eq!(err.code, Code::InvalidArgument);
    }

    #[tokio::test]
    async fn recursive_watch_follows_new_subdirectories_and_renames() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = DirWatcher::open(spec(tmp.path(), true)).await.unwrap();
        std::fs::create_dir_all(tmp.path().join("new/deeper")).unwrap();
        std::fs::write(tmp.path().join("new/deeper/f.txt"), "hello").unwrap();
        let got = collect_until(&mut w, |g| has(g, "new/deeper/f.txt", EventType::Write)).await;
        assert!(has(&got, "new", EventType::Create), "{got:?}");
        assert!(has(&got, "new/deeper/f.txt", EventType::Create), "{got:?}");
        assert!(has(&got, "new/deeper/f.txt", EventType::Write), "{got:?}");

        std::fs::rename(tmp.path().join("new"), tmp.path().join("moved")).unwrap();
        std::fs::write(tmp.path().join("moved/deeper/g.txt"), "x").unwrap();
        let got = collect_until(&mut w, |g| has(g, "moved/deeper/g.txt", EventType::Write)).await;
        assert!(has(&got, "new", EventType::Rename), "{got:?}");
        assert!(has(&got, "moved", EventType::Create), "{got:?}");
        assert!(has(&got, "moved/deeper/g.txt", EventType::Create), "{got:?}");

        // Moved out of the tree: its watches go, so later writes there are not reported.
        let outside = tempfile::tempdir().unwrap();
        std::fs::rename(tmp.path().join("moved"), outside.path().join("gone")).unwrap();
        let got = collect_until(&mut w, |g| has(g, "moved", EventType::Rename)).await;
        assert!(has(&got, "moved", EventType::Rename), "{got:?}");
        std::fs::write(outside.path().join("gone/deeper/h.txt"), "x").unwrap();
        std::fs::write(tmp.path().join("marker"), "x").unwrap();
        let got = collect_until(&mut w, |g| has(g, "marker", EventType::Write)).await;
        assert!(has(&got, "marker", EventType::Create), "{got:?}");
        assert!(!got.iter().any(|(n, _)| n.contains("h.txt")), "a moved-away directory is still watched: {got:?}");
        assert_eq!(w.tree.dirs.len(), 1, "only the root stays watched: {:?}", w.tree.dirs);
    }

    #[tokio::test]
    async fn plain_watch_reports_direct_children_only_and_chmod_remove() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        let mut w = DirWatcher::open(spec(tmp.path(), false)).await.unwrap();
        std::fs::write(tmp.path().join("sub/hidden.txt"), "x").unwrap();
        std::fs::write(tmp.path().join("top.txt"), "x").unwrap();
        std::fs::set_permissions(tmp.path().join("top.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(tmp.path().join("top.txt")).unwrap();
        let got = collect_until(&mut w, |g| has(g, "top.txt", EventType::Remove)).await;
        assert!(has(&got, "top.txt", EventType::Create), "{got:?}");
        assert!(has(&got, "top.txt", EventType::Chmod), "{got:?}");
        assert!(!got.iter().any(|(n, _)| n.contains("hidden")), "non-recursive watch saw a subdirectory: {got:?}");
    }

    #[tokio::test]
    async fn registry_buffers_until_drained_and_forgets_removed_watchers() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = WatcherRegistry::default();
        let id = reg.create(spec(tmp.path(), false)).await.unwrap();
        std::fs::write(tmp.path().join("a.txt"), "x").unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            got.extend(reg.take_events(&id).unwrap());
            if got.iter().any(|e| e.name == "a.txt" && e.r#type == EventType::Write as i32) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(got.iter().any(|e| e.name == "a.txt" && e.r#type == EventType::Create as i32), "{got:?}");
        reg.remove(&id).unwrap();
        assert!(reg.is_empty());
        assert_eq!(reg.take_events(&id).unwrap_err().code, Code::NotFound);
        assert_eq!(reg.remove(&id).unwrap_err().code, Code::NotFound);
    }
}
