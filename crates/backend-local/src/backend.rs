//! [`LocalBackend`]: the `Backend` trait on real containers.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::backend::{
    Backend, BackendError, ContainerObservation, ContainerState, ExecOutput, ExecRequest, LogFollow, LogLine,
    SlotObservation, SlotSpec,
};
use agentbox_core::model::{ContainerSpec, RegistryCredential, RuntimeClass};
use async_trait::async_trait;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::capture::{Capture, ExecPipes};
use crate::config::LocalBackendConfig;
use crate::error::{LocalError, Result};
use crate::images::{DynImageSource, LocalImage};
use crate::logs::Rotator;
use crate::net::{Ipam, SlotNet, Subnet};
use crate::reaper::{Exit, Reaper, alive, proc_stat};
use crate::runtime::helper::HelperClient;
use crate::runtime::{ExecProcess, Libcontainer, OciRuntime, Runc, StartRequest};
use crate::state::{ContainerRecord, Layout, SlotRecord};
use crate::{cgroup, logs, net, rootfs, spec, state};

type SlotHandle = Arc<tokio::sync::Mutex<SlotRecord>>;

struct Inner {
    layout: Layout,
    images: DynImageSource,
    bridge: String,
    subnet: Subnet,
    ipam: Mutex<Ipam>,
    slots: Mutex<HashMap<String, SlotHandle>>,
    reaper: Reaper,
    rotator: Arc<Rotator>,
    libcontainer: Arc<Libcontainer>,
    runc: Option<Arc<Runc>>,
    /// Holds the slots' netns bind mounts outside the host mount namespace.
    netns: net::NetnsHolder,
    /// See [`LocalBackendConfig::agent_binary`].
    agent_binary: Option<PathBuf>,
    /// This backend's own `Arc` (for work handed to background threads).
    me: std::sync::Weak<Inner>,
    /// Agent starts in flight, by slot (see [`Inner::start_agent`]).
    agent_starts: Mutex<HashMap<String, Arc<AgentStart>>>,
}

/// An agent start running in the background; [`AgentStart::wait`] blocks until it is done.
#[derive(Default)]
struct AgentStart {
    done: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl AgentStart {
    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits until the start is done or `timeout` passed; true when it is done.
    fn wait(&self, timeout: Duration) -> bool {
        let g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self.cv.wait_timeout_while(g, timeout, |done| !*done).unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// Slots as real Linux containers on this host (see the crate docs).
///
/// Guarantees: every slot operation is idempotent where the trait says so; `destroy_slot` removes
/// containers, runtime state, cgroups (all hierarchies), mounts, veth, netns, IP and directories;
/// a new backend on the same `state_dir` re-adopts the slots it finds (running containers stay
/// running) and destroys half-created ones. Assumes root, a cgroup v1 (or hybrid) host, `ip` and
/// `iptables` on PATH, and that no other backend uses the same `state_dir` or subnet.
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        self.inner.reaper.shutdown();
    }
}

fn blocking_err(e: tokio::task::JoinError) -> LocalError {
    LocalError::Runtime { runtime: "backend", message: format!("blocking task failed: {e}") }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(blocking_err)?
}

fn log_line(container: &str, e: logs::Entry) -> LogLine {
    LogLine {
        timestamp: e.timestamp,
        container: container.to_owned(),
        stream: "combined".into(),
        line: e.line,
        older_dropped: false,
    }
}

/// The lines of one container's tail; the first is marked when older output was discarded.
fn tail_lines(container: &str, tail: &logs::Tail) -> Vec<LogLine> {
    let mut out: Vec<LogLine> = tail.entries.iter().cloned().map(|e| log_line(container, e)).collect();
    if tail.older_dropped
        && let Some(first) = out.first_mut()
    {
        first.older_dropped = true;
    }
    out
}

/// How long [`Backend::ensure_agent`] waits for the agent to accept a connection.
const AGENT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether something accepts a TCP connection at `addr` within [`AGENT_PROBE_TIMEOUT`].
async fn agent_accepts(addr: std::net::SocketAddr) -> bool {
    matches!(tokio::time::timeout(AGENT_PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(bin)).find(|p| p.is_file())).or_else(
        || ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(bin)).find(|p| p.is_file()),
    )
}

impl LocalBackend {
    /// Set up the host network (bridge, forwarding, NAT; idempotent), make this process a child
    /// subreaper, start the reaper, and re-adopt (or clean up) the slots found in `state_dir`.
    pub async fn new(cfg: LocalBackendConfig) -> Result<Self, BackendError> {
        Ok(Self::new_inner(cfg).await?)
    }

    async fn new_inner(cfg: LocalBackendConfig) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LocalError::Invalid("the local backend needs root; run the engine as root".into()));
        }
        let subnet = Subnet::parse(&cfg.subnet)?;
        let layout = Layout::new(cfg.state_dir.clone());
        for d in [layout.slots_dir(), layout.netns_dir()] {
            std::fs::create_dir_all(&d).map_err(LocalError::io(format!("create {}", d.display())))?;
        }
        let bridge = cfg.bridge_name.clone();
        blocking(move || net::ensure_host_network(&bridge, subnet)).await?;
        let netns_dir = layout.netns_dir();
        let netns = blocking(move || net::NetnsHolder::start(&netns_dir)).await?;
        let rotator = Arc::new(Rotator::new(cfg.log_max_bytes));
        rotator.start_stamper();
        let r2 = rotator.clone();
        let reaper = Reaper::start(Box::new(move || r2.tick())).map_err(LocalError::io("become child subreaper"))?;
        let helper =
            cfg.libcontainer_helper.clone().map(|binary| HelperClient::new(binary, layout.root.join("helper")));
        let libcontainer = Arc::new(Libcontainer::new(layout.runtime_root(RuntimeClass::Libcontainer), helper)?);
        let runc = match cfg.runc_binary.clone().or_else(|| find_in_path("runc")) {
            Some(bin) => {
                Some(Arc::new(Runc::new(bin, layout.runtime_root(RuntimeClass::Runc), layout.root.join("runc-logs"))?))
            }
            None => None,
        };
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            agent_starts: Mutex::new(HashMap::new()),
            layout,
            images: cfg.images.clone(),
            bridge: cfg.bridge_name.clone(),
            subnet,
            ipam: Mutex::new(Ipam::new(subnet)),
            slots: Mutex::new(HashMap::new()),
            reaper,
            rotator,
            libcontainer,
            runc,
            netns,
            agent_binary: cfg.agent_binary.clone(),
        });
        let i2 = inner.clone();
        blocking(move || i2.recover()).await?;
        Ok(LocalBackend { inner })
    }

    /// Mount points at or below `dir` in the private mount namespace that holds the slots' network
    /// namespaces (leak checks; the host's are in `leaks::mounts_under`).
    pub fn private_mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        self.inner.netns.mounts_under(dir)
    }

    /// Remove the host bridge and the NAT/forward rules this backend's config set up. For tests and
    /// uninstall; slots using the bridge must be destroyed first.
    pub async fn remove_host_network(&self) -> Result<(), BackendError> {
        let (b, s) = (self.inner.bridge.clone(), self.inner.subnet);
        Ok(blocking(move || net::remove_host_network(&b, s)).await?)
    }

    /// The log files of `container` (None = every container) of a slot, by container name.
    async fn log_files(&self, slot_id: &str, container: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
        let handle = self.handle(slot_id)?;
        let rec = handle.lock().await;
        let names: Vec<String> = match container {
            Some(n) if rec.containers.iter().any(|c| c.name == n) => vec![n.to_owned()],
            Some(n) => {
                return Err(LocalError::ContainerNotFound { slot: slot_id.to_owned(), container: n.to_owned() });
            }
            None => rec.containers.iter().map(|c| c.name.clone()).collect(),
        };
        Ok(names.into_iter().map(|n| (n.clone(), self.inner.layout.log_file(slot_id, &n))).collect())
    }

    fn handle(&self, slot_id: &str) -> Result<SlotHandle> {
        self.inner.slots.lock().get(slot_id).cloned().ok_or_else(|| LocalError::SlotNotFound(slot_id.to_owned()))
    }

    async fn resolve_images(
        &self,
        containers: &[ContainerSpec],
        creds: &[RegistryCredential],
    ) -> Result<Vec<LocalImage>> {
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let img = self
                .inner
                .images
                .ensure(&c.image, creds)
                .await
                .map_err(|message| LocalError::Image { image: c.image.clone(), message })?;
            out.push(img);
        }
        Ok(out)
    }

    async fn create_inner(&self, spec: &SlotSpec) -> Result<SlotObservation> {
        validate(&spec.slot_id, &spec.containers)?;
        if self.inner.runtime(spec.runtime).is_err() {
            return Err(LocalError::Invalid(format!(
                "runtime {} is not available on this host",
                spec.runtime.as_str()
            )));
        }
        let images = self.resolve_images(&spec.containers, &spec.registry_credentials).await?;
        let ip = self.inner.ipam.lock().allocate()?;
        let rec = SlotRecord {
            spec: spec.clone(),
            runtime: spec.runtime,
            ip: ip.to_string(),
            veth: net::veth_name(ip),
            netns: self.inner.layout.netns_file(&spec.slot_id),
            complete: false,
            generation: 0,
            containers: vec![],
        };
        let handle: SlotHandle = Arc::new(tokio::sync::Mutex::new(rec));
        let guard = handle.clone().lock_owned().await;
        {
            let mut slots = self.inner.slots.lock();
            if slots.contains_key(&spec.slot_id) || self.inner.layout.slot_dir(&spec.slot_id).exists() {
                self.inner.ipam.lock().release(ip);
                return Err(LocalError::SlotExists(spec.slot_id.clone()));
            }
            slots.insert(spec.slot_id.clone(), handle.clone());
        }
        let inner = self.inner.clone();
        let res = blocking(move || {
            let mut guard = guard;
            let rec = &mut *guard;
            let r = inner.create_blocking(rec, &images);
            if r.is_err() {
                inner.destroy_blocking(&rec.spec.slot_id.clone(), Some(rec));
            }
            r.map(|_| inner.observe(rec))
        })
        .await;
        if res.is_err() {
            self.inner.slots.lock().remove(&spec.slot_id);
        }
        res
    }
}

/// The `/etc` files we may bind over: only those that exist in the image (or its `/etc` host bind),
/// since a runtime cannot create a missing mount target inside a read-only bind.
fn etc_targets(merged: &Path, img: &LocalImage) -> Vec<&'static str> {
    let etc_bind = img.host_binds.iter().find(|(_, d)| d.trim_end_matches('/') == "/etc").map(|(s, _)| s.clone());
    ["hostname", "hosts", "resolv.conf"]
        .into_iter()
        .filter(|f| match &etc_bind {
            Some(src) => src.join(f).exists(),
            None => merged.join("etc").is_dir(),
        })
        .collect()
}

fn validate(slot_id: &str, containers: &[ContainerSpec]) -> Result<()> {
    if slot_id.is_empty() || slot_id.len() > 40 {
        return Err(LocalError::Invalid(format!("slot id {slot_id:?} must have 1 to 40 characters")));
    }
    if containers.is_empty() {
        return Err(LocalError::Invalid("a slot needs at least one container".into()));
    }
    let mut names = HashSet::new();
    for c in containers {
        if !names.insert(c.name.as_str()) {
            return Err(LocalError::Invalid(format!("container name {} is used twice", c.name)));
        }
        state::container_id(slot_id, &c.name, u32::MAX as u64)?;
    }
    Ok(())
}

impl Inner {
    fn runtime(&self, rt: RuntimeClass) -> Result<Arc<dyn OciRuntime>> {
        match rt {
            RuntimeClass::Libcontainer => Ok(self.libcontainer.clone()),
            RuntimeClass::Runc => self.runc.clone().map(|r| r as Arc<dyn OciRuntime>).ok_or_else(|| {
                LocalError::Invalid("runtime runc is not installed; install runc or use libcontainer".into())
            }),
        }
    }

    fn write_etc(&self, rec: &SlotRecord) -> Result<()> {
        let slot = &rec.spec.slot_id;
        let dir = self.layout.etc_dir(slot);
        std::fs::create_dir_all(&dir).map_err(LocalError::io(format!("create {}", dir.display())))?;
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_else(|_| "nameserver 1.1.1.1\n".into());
        for (f, body) in [
            ("hostname", format!("{slot}\n")),
            ("hosts", format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{slot}\n", rec.ip)),
            ("resolv.conf", resolv),
        ] {
            std::fs::write(dir.join(f), body).map_err(LocalError::io(format!("write {}", dir.join(f).display())))?;
        }
        Ok(())
    }

    fn create_blocking(&self, rec: &mut SlotRecord, images: &[LocalImage]) -> Result<()> {
        let slot = rec.spec.slot_id.clone();
        let dir = self.layout.slot_dir(&slot);
        std::fs::create_dir_all(&dir).map_err(LocalError::io(format!("create {}", dir.display())))?;
        state::save(&self.layout, rec)?;
        self.write_etc(rec)?;
        let ip: Ipv4Addr = rec.ip.parse().map_err(|_| LocalError::Invalid(format!("bad ip {}", rec.ip)))?;
        net::create_slot_net(&SlotNet {
            holder: &self.netns,
            netns: &rec.netns,
            ip,
            subnet: self.subnet,
            veth: &rec.veth,
            bridge: &self.bridge,
        })?;
        if !rec.spec.egress {
            net::set_egress(ip, false)?;
        }
        cgroup::create_slot_cgroup(&slot, &rec.spec.resources)?;
        let specs = rec.spec.containers.clone();
        self.start_containers(rec, &specs, images)?;
        rec.complete = true;
        state::save(&self.layout, rec)
    }

    fn start_containers(&self, rec: &mut SlotRecord, specs: &[ContainerSpec], images: &[LocalImage]) -> Result<()> {
        let slot = rec.spec.slot_id.clone();
        let rt = self.runtime(rec.runtime)?;
        for (index, (c, img)) in specs.iter().zip(images).enumerate() {
            let id = state::container_id(&slot, &c.name, rec.generation)?;
            let bundle = self.layout.container_dir(&slot, index);
            rootfs::discard(&bundle)?;
            let merged = rootfs::mount(&bundle, &img.layers, &self.layout.empty_layer())?;
            // Recorded before the start so a failure is cleaned up with the slot.
            rec.containers.push(ContainerRecord {
                name: c.name.clone(),
                image: c.image.clone(),
                container_id: id.clone(),
                index,
                pid: 0,
                start_time: 0,
                oom_baseline: cgroup::oom_kill_count(&slot),
            });
            let (uid, gid) = spec::resolve_user(img.user.as_deref(), &merged)
                .map_err(|m| LocalError::Image { image: c.image.clone(), message: m })?;
            let config = spec::build(&spec::SpecInput {
                slot_id: &slot,
                container: c,
                image: img,
                rootfs: &merged,
                netns: &self.netns.host_path(&rec.netns),
                etc_dir: &self.layout.etc_dir(&slot),
                cgroups_path: cgroup::container_cgroups_path(&slot, &id),
                etc_files: etc_targets(&merged, img),
                uid,
                gid,
                agent_binary: self.agent_binary.as_deref(),
            });
            let cfg_path = bundle.join("config.json");
            std::fs::write(&cfg_path, serde_json::to_vec(&config).expect("spec serializes"))
                .map_err(LocalError::io(format!("write {}", cfg_path.display())))?;
            let log_path = self.layout.log_file(&slot, &c.name);
            let log = logs::open_for_container(&log_path)?;
            self.rotator.watch(log_path);
            let pid = rt.create_start(&StartRequest { id: &id, bundle: &bundle, log: &log })?;
            // The container holds its own copy of the overlay now; the host's copy only made every
            // mountinfo read (and so every later create/exec) slower with each slot.
            rootfs::detach_host_view(&merged)?;
            tracing::debug!(slot, container = %c.name, id, pid, runtime = rt.name(), "container started");
            let start_time = proc_stat(pid).map(|s| s.1).unwrap_or(0);
            self.reaper.track(pid, start_time);
            let last = rec.containers.last_mut().expect("pushed above");
            last.pid = pid;
            last.start_time = start_time;
            if index == 0 {
                self.start_agent(rt.clone(), &slot, &id, &c.image);
            }
        }
        Ok(())
    }

    /// Start the agent in container 0 (see [`LocalBackendConfig::agent_binary`]) after a create or
    /// switch, on a background thread: the create or switch does not wait for it (it costs an exec
    /// plus the agent's own start, several ms of every claim with a switch). Callers that find the
    /// agent not answering yet go through [`Backend::ensure_agent`], which waits for the start in
    /// flight. A failure is logged, not fatal: the slot still works through the native API.
    fn start_agent(&self, rt: Arc<dyn OciRuntime>, slot: &str, id: &str, image: &str) {
        if !self.runs_agent(image) {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let latch = Arc::new(AgentStart::default());
        self.agent_starts.lock().insert(slot.to_string(), latch.clone());
        let (slot, id, image) = (slot.to_string(), id.to_string(), image.to_string());
        let spawned = std::thread::Builder::new().name("agent-start".into()).spawn(move || {
            let started = std::time::Instant::now();
            match me.exec_agent(rt, &id) {
                Ok(()) => tracing::debug!(slot, id, elapsed = ?started.elapsed(), "agent started"),
                Err(e) => warn!(
                    slot,
                    image,
                    error = %e,
                    "the agent did not start in the container; E2B commands and files will not work in it"
                ),
            }
            latch.finish();
            let mut starts = me.agent_starts.lock();
            if starts.get(&slot).is_some_and(|l| Arc::ptr_eq(l, &latch)) {
                starts.remove(&slot);
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a thread for the agent start");
        }
    }

    /// Waits (at most 10 s) for an agent start in flight in `slot`; true when there was one.
    fn wait_agent_start(&self, slot: &str) -> bool {
        let latch = self.agent_starts.lock().get(slot).cloned();
        match latch {
            Some(l) => {
                l.wait(Duration::from_secs(10));
                true
            }
            None => false,
        }
    }

    /// Whether containers of `image` get the agent: one is configured and the image is not the
    /// builtin `pause` (an idle placeholder without a libc).
    fn runs_agent(&self, image: &str) -> bool {
        self.agent_binary.is_some() && !matches!(image.trim(), "pause" | "pause:latest")
    }

    /// Run `/.agentbox/envd --port 49983 --daemon` in container `id` through the same path as an
    /// exec (the container's namespaces, cgroup, capabilities and seccomp), as root with the
    /// container's env plus `HOME=/root`. The agent daemonizes itself: the exec returns once it
    /// listens (exit 0), and it lives on as a child of the container's init, so it dies (and is
    /// reaped) with the container's pid namespace. Err carries the agent's own reason (e.g. the
    /// port is taken: another agent already listens).
    fn exec_agent(&self, rt: Arc<dyn OciRuntime>, id: &str) -> Result<()> {
        let p = ExecProcess {
            args: vec![crate::AGENT_PATH.into(), "--port".into(), crate::AGENT_PORT.to_string(), "--daemon".into()],
            env: vec![("HOME".into(), "/root".into())],
            cwd: None,
            uid: 0,
            gid: 0,
        };
        let out = self.exec_blocking(rt, id, p, None, Duration::from_secs(10))?;
        if out.exit_code == 0 {
            return Ok(());
        }
        Err(LocalError::Runtime {
            runtime: "agent",
            message: format!("exit code {}: {}", out.exit_code, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }

    /// Kill and delete every container of the slot and drop their writable layers.
    fn stop_containers(&self, rec: &mut SlotRecord) -> Result<()> {
        // An agent exec still in flight in container 0 would fail noisily when its container goes.
        self.wait_agent_start(&rec.spec.slot_id);
        let rt = self.runtime(rec.runtime)?;
        let mut first_err = None;
        // SIGKILL the inits ourselves first (killing a pid namespace's init kills all of it) and
        // reap them, so the runtime's delete finds stopped containers: `runc delete --force` on a
        // running one sleeps 100 ms before it even checks.
        for c in &rec.containers {
            if alive(c.pid, c.start_time) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        for c in &rec.containers {
            self.reaper.untrack_and_wait(c.pid, Duration::from_secs(2));
            if let Err(e) = rt.kill_delete(&c.container_id) {
                first_err.get_or_insert(e);
            }
        }
        for c in &rec.containers {
            if let Err(e) = rootfs::discard(&self.layout.container_dir(&rec.spec.slot_id, c.index)) {
                first_err.get_or_insert(e);
            }
        }
        rec.containers.clear();
        first_err.map_or(Ok(()), Err)
    }

    fn switch_blocking(&self, rec: &mut SlotRecord, specs: &[ContainerSpec], images: &[LocalImage]) -> Result<()> {
        let slot = rec.spec.slot_id.clone();
        self.stop_containers(rec)?;
        for c in specs {
            logs::remove(&self.layout.log_file(&slot, &c.name));
        }
        rec.generation += 1;
        let res = self.start_containers(rec, specs, images);
        state::save(&self.layout, rec)?;
        res
    }

    /// Free everything of a slot; best effort, logs what it could not remove.
    fn destroy_blocking(&self, slot: &str, rec: Option<&mut SlotRecord>) {
        let mut errors: Vec<String> = Vec::new();
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        };
        let (ip, veth, egress) = match rec {
            Some(rec) => {
                let runtime = self.runtime(rec.runtime);
                if runtime.is_ok() {
                    note(self.stop_containers(rec));
                }
                (rec.ip.parse::<Ipv4Addr>().ok(), Some(rec.veth.clone()), rec.spec.egress)
            }
            None => (None, None, true),
        };
        // Runtime state of this slot that the record does not know about (crash mid-start).
        let mut runtimes: Vec<Arc<dyn OciRuntime>> = vec![self.libcontainer.clone()];
        if let Some(r) = &self.runc {
            runtimes.push(r.clone());
        }
        for rt in runtimes {
            for id in rt.list().into_iter().filter(|id| state::id_belongs_to(id, slot)) {
                note(rt.kill_delete(&id));
            }
        }
        let dir = self.layout.slot_dir(slot);
        rootfs::unmount_all_under(&dir);
        note(cgroup::remove_slot_cgroup(slot));
        if let Some(ip) = ip
            && !egress
        {
            note(net::set_egress(ip, true));
        }
        let veth = veth.or_else(|| ip.map(net::veth_name)).unwrap_or_default();
        note(net::destroy_slot_net(&self.netns, &self.layout.netns_file(slot), &veth));
        self.rotator.unwatch_under(&dir);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("remove {}: {e}", dir.display()));
        }
        if let Some(ip) = ip {
            self.ipam.lock().release(ip);
        }
        if !errors.is_empty() {
            warn!(slot, errors = ?errors, "slot destroyed with errors");
        }
    }

    fn container_state(&self, slot: &str, c: &ContainerRecord) -> ContainerState {
        if c.pid <= 0 {
            return ContainerState::Missing;
        }
        let exit = match self.reaper.exit_of(c.pid) {
            Some(e) => Some(e),
            None if alive(c.pid, c.start_time) => None,
            None => Some(Exit::Unknown),
        };
        match exit {
            None => ContainerState::Running { pid: c.pid },
            Some(e) => {
                let killed = matches!(e, Exit::Signal(9) | Exit::Unknown);
                let oom_killed = killed
                    && (cgroup::container_oom_kill_count(slot, &c.container_id) > 0
                        || cgroup::oom_kill_count(slot) > c.oom_baseline);
                let exit_code = if oom_killed { Some(137) } else { e.code() };
                ContainerState::Exited { exit_code, oom_killed }
            }
        }
    }

    fn observe(&self, rec: &SlotRecord) -> SlotObservation {
        let slot = &rec.spec.slot_id;
        SlotObservation {
            slot_id: slot.clone(),
            pool: rec.spec.pool.clone(),
            ip: Some(rec.ip.clone()),
            containers: rec
                .containers
                .iter()
                .map(|c| ContainerObservation {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    container_id: c.container_id.clone(),
                    state: self.container_state(slot, c),
                })
                .collect(),
            failure: None,
        }
    }

    /// Keep the network namespace of a re-adopted slot: bind it from a running container, or (no
    /// container runs, so the namespace died with the previous holder) create the network again
    /// with the same IP, so a later switch starts in a working network.
    fn readopt_netns(&self, rec: &SlotRecord) -> Result<()> {
        let running = rec.containers.iter().find(|c| c.pid > 0 && alive(c.pid, c.start_time));
        if let Some(c) = running {
            return self.netns.adopt(&rec.netns, c.pid);
        }
        if !self.netns.mounts_under(&rec.netns).is_empty() {
            return Ok(());
        }
        let ip: Ipv4Addr = rec.ip.parse().map_err(|_| LocalError::Invalid(format!("bad ip {}", rec.ip)))?;
        let _ = std::fs::remove_file(&rec.netns);
        net::create_slot_net(&SlotNet {
            holder: &self.netns,
            netns: &rec.netns,
            ip,
            subnet: self.subnet,
            veth: &rec.veth,
            bridge: &self.bridge,
        })
    }

    /// Re-adopt complete slots, destroy incomplete ones and strays.
    fn recover(&self) -> Result<()> {
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.layout.slots_dir()) {
            for e in rd.flatten() {
                if let Ok(name) = e.file_name().into_string() {
                    found.push(name);
                }
            }
        }
        for slot in &found {
            let rec = state::load(&self.layout.slot_file(slot)).unwrap_or_else(|e| {
                warn!(slot, error = %e, "unreadable slot state, destroying the slot");
                None
            });
            match rec {
                Some(mut rec) if rec.complete => {
                    if let Ok(ip) = rec.ip.parse() {
                        self.ipam.lock().reserve(ip);
                    }
                    let rt = self.runtime(rec.runtime).ok();
                    for c in &mut rec.containers {
                        // A container the runtime no longer knows (and whose init is gone) is Missing.
                        if c.pid > 0
                            && !alive(c.pid, c.start_time)
                            && rt.as_ref().is_some_and(|rt| matches!(rt.state(&c.container_id), Ok(None)))
                        {
                            c.pid = 0;
                        }
                        if c.pid > 0 {
                            self.reaper.track(c.pid, c.start_time);
                        }
                        self.rotator.watch(self.layout.log_file(slot, &c.name));
                    }
                    if let Err(e) = self.readopt_netns(&rec) {
                        warn!(slot, error = %e, "cannot restore the slot network; its containers keep running");
                    }
                    info!(slot, ip = %rec.ip, "re-adopted slot");
                    self.slots.lock().insert(slot.clone(), Arc::new(tokio::sync::Mutex::new(rec)));
                }
                Some(mut rec) => {
                    info!(slot, "destroying half-created slot");
                    if let Ok(ip) = rec.ip.parse() {
                        self.ipam.lock().reserve(ip);
                    }
                    self.destroy_blocking(slot, Some(&mut rec));
                }
                None => {
                    info!(slot, "destroying slot without state");
                    self.destroy_blocking(slot, None);
                }
            }
        }
        // Namespaces whose slot directory is gone (crash between the two removals).
        if let Ok(rd) = std::fs::read_dir(self.layout.netns_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !found.contains(&name) {
                    let _ = net::destroy_slot_net(&self.netns, &e.path(), "");
                }
            }
        }
        Ok(())
    }

    fn exec_blocking(
        &self,
        rt: Arc<dyn OciRuntime>,
        id: &str,
        p: ExecProcess,
        req_stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let pipes = ExecPipes::new(req_stdin.is_some())?;
        let (child, parent) = pipes.split();
        let capture = Capture::start(parent, req_stdin);
        let waiter = match rt.exec(id, &p, child) {
            Ok(w) => w,
            Err(e) => {
                drop(capture.finish());
                return Err(e);
            }
        };
        let (exit, timed_out) = waiter.wait(timeout)?;
        let out = capture.finish();
        Ok(ExecOutput {
            exit_code: if timed_out { 124 } else { exit.code().unwrap_or(-1) },
            stdout: out.stdout,
            stderr: out.stderr,
            timed_out,
            truncated: out.truncated,
        })
    }
}

impl LocalBackend {
    /// Start an interactive process with a terminal (see [`crate::pty`]).
    async fn exec_pty_inner(
        &self,
        slot_id: &str,
        req: &agentbox_core::backend::PtyRequest,
    ) -> Result<agentbox_core::backend::PtySession> {
        if req.argv.is_empty() {
            return Err(LocalError::Invalid("a terminal needs a command (argv is empty)".into()));
        }
        let handle = self.handle(slot_id)?;
        let (rt, id, init_pid) = {
            let rec = handle.lock().await;
            let c = match &req.container {
                Some(name) => rec.containers.iter().find(|c| &c.name == name),
                None => rec.containers.first(),
            }
            .ok_or_else(|| LocalError::ContainerNotFound {
                slot: slot_id.to_owned(),
                container: req.container.clone().unwrap_or_else(|| "0".into()),
            })?;
            if !self.inner.container_state(slot_id, c).is_running() {
                return Err(LocalError::NotRunning { slot: slot_id.to_owned(), container: c.name.clone() });
            }
            (self.inner.runtime(rec.runtime)?, c.container_id.clone(), c.pid)
        };
        let p = ExecProcess {
            args: req.argv.clone(),
            env: req.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: req.cwd.clone(),
            uid: 0,
            gid: 0,
        };
        let (cols, rows) = (req.cols.max(1), req.rows.max(1));
        let started = blocking(move || rt.exec_tty(&id, &p, init_pid, cols, rows)).await?;
        crate::pty::drive(started)
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn prepare_image(&self, image: &str, credentials: &[RegistryCredential]) -> Result<(), BackendError> {
        self.inner
            .images
            .ensure(image, credentials)
            .await
            .map(|_| ())
            .map_err(|message| BackendError::Image { image: image.to_owned(), message })
    }

    #[tracing::instrument(skip_all, fields(slot = %spec.slot_id))]
    async fn create_slot(&self, spec: &SlotSpec) -> Result<SlotObservation, BackendError> {
        Ok(self.create_inner(spec).await?)
    }

    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn switch(
        &self,
        slot_id: &str,
        containers: &[ContainerSpec],
        credentials: &[RegistryCredential],
    ) -> Result<SlotObservation, BackendError> {
        let handle = self.handle(slot_id)?;
        validate(slot_id, containers)?;
        let images = self.resolve_images(containers, credentials).await?;
        let guard = handle.lock_owned().await;
        let inner = self.inner.clone();
        let specs = containers.to_vec();
        Ok(blocking(move || {
            let mut guard = guard;
            inner.switch_blocking(&mut guard, &specs, &images)?;
            Ok(inner.observe(&guard))
        })
        .await?)
    }

    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn exec(&self, slot_id: &str, req: &ExecRequest) -> Result<ExecOutput, BackendError> {
        if req.argv.is_empty() {
            return Err(BackendError::Invalid("exec needs a command (argv is empty)".into()));
        }
        let handle = self.handle(slot_id)?;
        let (rt, id, rootfs) = {
            let rec = handle.lock().await;
            let c = match &req.container {
                Some(name) => rec.containers.iter().find(|c| &c.name == name),
                None => rec.containers.first(),
            }
            .ok_or_else(|| LocalError::ContainerNotFound {
                slot: slot_id.to_owned(),
                container: req.container.clone().unwrap_or_else(|| "0".into()),
            })?;
            if !self.inner.container_state(slot_id, c).is_running() {
                return Err(LocalError::NotRunning { slot: slot_id.to_owned(), container: c.name.clone() }.into());
            }
            // The host does not see the container's rootfs (see `rootfs::detach_host_view`).
            let rootfs = PathBuf::from(format!("/proc/{}/root", c.pid));
            (self.inner.runtime(rec.runtime)?, c.container_id.clone(), rootfs)
        };
        let (uid, gid) = spec::resolve_user(req.user.as_deref(), &rootfs).map_err(BackendError::Invalid)?;
        let p = ExecProcess {
            args: req.argv.clone(),
            env: req.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: req.cwd.clone(),
            uid,
            gid,
        };
        let inner = self.inner.clone();
        let (stdin, timeout) = (req.stdin.clone(), req.timeout);
        Ok(blocking(move || inner.exec_blocking(rt, &id, p, stdin, timeout)).await?)
    }

    async fn inspect(&self, slot_id: &str) -> Result<SlotObservation, BackendError> {
        let handle = self.handle(slot_id)?;
        let rec = handle.lock().await;
        Ok(self.inner.observe(&rec))
    }

    async fn list_slots(&self) -> Result<Vec<SlotObservation>, BackendError> {
        let handles: Vec<SlotHandle> = self.inner.slots.lock().values().cloned().collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            let rec = h.lock().await;
            out.push(self.inner.observe(&rec));
        }
        out.sort_by(|a, b| a.slot_id.cmp(&b.slot_id));
        Ok(out)
    }

    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn destroy_slot(&self, slot_id: &str) -> Result<(), BackendError> {
        let handle = self.inner.slots.lock().get(slot_id).cloned();
        let inner = self.inner.clone();
        let slot = slot_id.to_owned();
        match handle {
            Some(h) => {
                let guard = h.lock_owned().await;
                blocking(move || {
                    let mut guard = guard;
                    inner.destroy_blocking(&slot, Some(&mut guard));
                    inner.slots.lock().remove(&slot);
                    Ok(())
                })
                .await?;
            }
            None => {
                if self.inner.layout.slot_dir(slot_id).exists() || self.inner.layout.netns_file(slot_id).exists() {
                    blocking(move || {
                        inner.destroy_blocking(&slot, None);
                        Ok(())
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn exec_pty(
        &self,
        slot_id: &str,
        req: &agentbox_core::backend::PtyRequest,
    ) -> Result<agentbox_core::backend::PtySession, BackendError> {
        Ok(self.exec_pty_inner(slot_id, req).await?)
    }

    /// Connect to the agent's port from the host (at most 500 ms); when nothing
    /// accepts and container 0 runs an image that gets the agent, start the agent again (as after
    /// a create) and return `Ok(true)` once it listens. The slot's lock is held throughout, so
    /// concurrent calls for one slot start one agent; a start that fails because another agent
    /// already listens counts as `Ok(false)`.
    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn ensure_agent(&self, slot_id: &str) -> Result<bool, BackendError> {
        let handle = self.handle(slot_id)?;
        // The agent of a fresh create or switch may still be starting (in the background): wait
        // for it; if it answers then, the caller's retry will find it.
        let (inner, slot) = (self.inner.clone(), slot_id.to_string());
        let waited = blocking(move || Ok(inner.wait_agent_start(&slot))).await?;
        let rec = handle.lock().await;
        let Some(c) = rec.containers.first() else { return Ok(false) };
        if !self.inner.runs_agent(&c.image) || !self.inner.container_state(slot_id, c).is_running() {
            return Ok(false);
        }
        let ip: Ipv4Addr = rec.ip.parse().map_err(|_| LocalError::Invalid(format!("bad ip {}", rec.ip)))?;
        let addr = std::net::SocketAddr::from((ip, crate::AGENT_PORT));
        if agent_accepts(addr).await {
            return Ok(waited);
        }
        let (rt, id, inner) = (self.inner.runtime(rec.runtime)?, c.container_id.clone(), self.inner.clone());
        match blocking(move || inner.exec_agent(rt, &id)).await {
            Ok(()) => {
                info!(slot = slot_id, "the agent did not answer; started it again");
                Ok(true)
            }
            Err(_) if agent_accepts(addr).await => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Read from the slot's cgroup (see [`cgroup::slot_usage`]) and the writable layers of its
    /// containers (walked, at most [`cgroup::DISK_WALK_MAX_ENTRIES`] entries); the disk total is
    /// the size of the filesystem of the state directory, which the slot shares with the host.
    async fn slot_stats(&self, slot_id: &str) -> Result<agentbox_core::backend::SlotStats, BackendError> {
        let handle = self.handle(slot_id)?;
        let uppers: Vec<PathBuf> = {
            let rec = handle.lock().await;
            rec.containers
                .iter()
                .map(|c| crate::rootfs::RootfsDirs::new(&self.inner.layout.container_dir(slot_id, c.index)).upper)
                .collect()
        };
        let (slot, root) = (slot_id.to_owned(), self.inner.layout.root.clone());
        Ok(blocking(move || {
            let usage = cgroup::slot_usage(&slot);
            let disk_used = cgroup::disk_usage(&uppers, cgroup::DISK_WALK_MAX_ENTRIES);
            let disk_total = cgroup::filesystem_bytes(&root);
            Ok(cgroup::to_slot_stats(&usage, cgroup::host_cpus(), cgroup::host_memory_bytes(), disk_used, disk_total))
        })
        .await?)
    }

    async fn logs(&self, slot_id: &str, container: Option<&str>, lines: usize) -> Result<Vec<LogLine>, BackendError> {
        let files = self.log_files(slot_id, container).await?;
        let rotator = self.inner.rotator.clone();
        Ok(blocking(move || {
            let mut out = Vec::new();
            for (name, path) in files {
                out.extend(tail_lines(&name, &rotator.read(&path, lines)));
            }
            Ok(out)
        })
        .await?)
    }

    /// Polls the log files every 100 ms (see [`logs::Follower`]); the task ends when the receiver
    /// is dropped, the slot is destroyed or the backend goes away.
    async fn follow_logs(
        &self,
        slot_id: &str,
        container: Option<&str>,
        lines: usize,
    ) -> Result<LogFollow, BackendError> {
        let files = self.log_files(slot_id, container).await?;
        let rotator = self.inner.rotator.clone();
        let (initial, mut followers) = blocking(move || {
            let mut initial = Vec::new();
            let mut followers = Vec::new();
            for (name, path) in files {
                let tail = rotator.read(&path, lines);
                initial.extend(tail_lines(&name, &tail));
                followers.push((name, logs::Follower::after(path, &tail)));
            }
            Ok((initial, followers))
        })
        .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let weak = Arc::downgrade(&self.inner);
        let slot = slot_id.to_owned();
        tokio::spawn(async move {
            for l in initial {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let batch: Vec<LogLine> = {
                    let Some(inner) = weak.upgrade() else { return };
                    if !inner.slots.lock().contains_key(&slot) {
                        return;
                    }
                    // Bounded reads of local files (at most 1 MiB per file and poll): short enough
                    // for the async thread.
                    followers
                        .iter_mut()
                        .flat_map(|(name, f)| {
                            f.poll(&inner.rotator).into_iter().map(|e| log_line(name, e)).collect::<Vec<_>>()
                        })
                        .collect()
                };
                for l in batch {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
