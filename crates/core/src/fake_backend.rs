//! An in-memory [`Backend`] for unit tests of the engine: slots are records, exec echoes.
//!
//! Images whose reference starts with `broken` fail to prepare, like an image that cannot be pulled.
//! `exec` (recorded in `calls` as `exec SLOT ARGV...`) understands `exit N` and `sh -c "exit N"`
//! and otherwise echoes its argv joined by spaces. `slot_stats` reports fixed usage (see
//! [`FakeBackend::FAKE_STATS`]) whose CPU counter advances 50 ms on every read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::backend::*;
use crate::model::{ContainerSpec, RegistryCredential};

/// An open `follow_logs`: (slot, container filter, sender).
type Follower = (String, Option<String>, tokio::sync::mpsc::Sender<LogLine>);

#[derive(Default)]
pub struct FakeBackend {
    slots: Mutex<BTreeMap<String, SlotObservation>>,
    counter: AtomicU64,
    /// Every call, in order (`create p-1`, `switch p-1 host`, ...), for assertions.
    pub calls: Mutex<Vec<String>>,
    /// Log lines by slot (see [`FakeBackend::push_log`]).
    logs: Mutex<BTreeMap<String, Vec<LogLine>>>,
    /// Open followers: (slot, container filter, sender); dropped when the slot is destroyed.
    followers: Mutex<Vec<Follower>>,
    /// Every slot reports this IP instead of `10.99.x.x` (see [`FakeBackend::with_ip`]).
    fixed_ip: Option<String>,
    /// Usage by slot (see [`FakeBackend::set_stats`]); absent = [`FakeBackend::FAKE_STATS`].
    stats: Mutex<BTreeMap<String, SlotStats>>,
    /// What `ensure_agent` does (see [`FakeBackend::on_ensure_agent`]); absent = `Ok(false)`.
    agent_hook: Mutex<Option<AgentHook>>,
    /// Slots whose `mark_claimed` answers `Conflict` (see [`FakeBackend::claimed_elsewhere`]).
    taken_elsewhere: Mutex<std::collections::BTreeSet<String>>,
    /// Every `publish_pool_status` call, in order: `(namespace, pool, status)`.
    pub published: Mutex<Vec<(String, String, PoolStatusReport)>>,
}

/// See [`FakeBackend::on_ensure_agent`].
type AgentHook = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl FakeBackend {
    /// What `slot_stats` reports for a slot until [`FakeBackend::set_stats`] says otherwise.
    pub const FAKE_STATS: SlotStats = SlotStats {
        cpu_usage_usec: 0,
        cpu_count: 1,
        mem_used_bytes: 64 << 20,
        mem_cache_bytes: 16 << 20,
        mem_total_bytes: 512 << 20,
        disk_used_bytes: 1 << 20,
        disk_total_bytes: 10 << 30,
    };
    /// CPU time `slot_stats` adds to a slot's counter on every read (as if it burned 50 ms).
    pub const CPU_USEC_PER_READ: u64 = 50_000;

    /// Report `stats` for the slot from now on (its CPU counter still advances on every read).
    pub fn set_stats(&self, slot_id: &str, stats: SlotStats) {
        self.stats.lock().insert(slot_id.into(), stats);
    }
    pub fn new() -> Self {
        Self::default()
    }
    /// Make `ensure_agent` (recorded in `calls` as `ensure_agent SLOT`) run `hook` with the slot
    /// id and answer `Ok(hook(slot))` (true = "the agent was started again").
    pub fn on_ensure_agent(&self, hook: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.agent_hook.lock() = Some(std::sync::Arc::new(hook));
    }
    /// Make `mark_claimed` of `slot_id` answer `Conflict`, as if another server replica had
    /// claimed it first (until [`Backend::mark_released`] is called for it).
    pub fn claimed_elsewhere(&self, slot_id: &str) {
        self.taken_elsewhere.lock().insert(slot_id.into());
    }
    /// A fake whose slots all report `ip` (e.g. `127.0.0.1`, so that a data-plane test reaches a
    /// server it runs on loopback).
    pub fn with_ip(ip: &str) -> Self {
        FakeBackend { fixed_ip: Some(ip.into()), ..Self::default() }
    }
    /// Simulate the main container of a slot dying.
    pub fn kill_main(&self, slot_id: &str, exit_code: i32, oom: bool) {
        if let Some(s) = self.slots.lock().get_mut(slot_id)
            && let Some(c) = s.containers.first_mut()
        {
            c.state = ContainerState::Exited { exit_code: Some(exit_code), oom_killed: oom };
        }
    }
    /// Simulate the backend losing the slot for a reason it reports itself (Kubernetes: a Pod
    /// evicted), while the container state alone would not say why.
    pub fn fail_slot(&self, slot_id: &str, reason: &str, message: &str) {
        if let Some(s) = self.slots.lock().get_mut(slot_id) {
            s.failure = Some((reason.into(), message.into()));
            if let Some(c) = s.containers.first_mut() {
                c.state = ContainerState::Exited { exit_code: None, oom_killed: false };
            }
        }
    }
    /// Append a line to the log of `container` in a slot (as if the container printed it), with a
    /// timestamp of now; open followers receive it.
    pub fn push_log(&self, slot_id: &str, container: &str, line: &str) {
        let l = LogLine {
            timestamp: Some(crate::model::now_rfc3339()),
            container: container.into(),
            stream: "combined".into(),
            line: line.into(),
            older_dropped: false,
        };
        self.logs.lock().entry(slot_id.into()).or_default().push(l.clone());
        self.followers.lock().retain(|(slot, filter, tx)| {
            if slot != slot_id || filter.as_deref().is_some_and(|f| f != container) {
                return !tx.is_closed();
            }
            !matches!(tx.try_send(l.clone()), Err(tokio::sync::mpsc::error::TrySendError::Closed(_)))
        });
    }
    fn stored_logs(&self, slot_id: &str, container: Option<&str>, lines: usize) -> Result<Vec<LogLine>, BackendError> {
        let slots = self.slots.lock();
        let s = slots.get(slot_id).ok_or_else(|| BackendError::SlotNotFound(slot_id.into()))?;
        if let Some(c) = container
            && !s.containers.iter().any(|o| o.name == c)
        {
            return Err(BackendError::ContainerNotFound { slot: slot_id.into(), container: c.into() });
        }
        let all: Vec<LogLine> = self
            .logs
            .lock()
            .get(slot_id)
            .into_iter()
            .flatten()
            .filter(|l| container.is_none_or(|c| c == l.container))
            .cloned()
            .collect();
        let skip = if lines == 0 { 0 } else { all.len().saturating_sub(lines) };
        Ok(all[skip..].to_vec())
    }
    fn containers(&self, specs: &[ContainerSpec]) -> Vec<ContainerObservation> {
        specs
            .iter()
            .map(|c| ContainerObservation {
                name: c.name.clone(),
                image: c.image.clone(),
                container_id: format!("fake-{}", self.counter.fetch_add(1, Ordering::Relaxed)),
                state: ContainerState::Running { pid: 1 },
            })
            .collect()
    }
    fn check_images(specs: &[ContainerSpec]) -> Result<(), BackendError> {
        match specs.iter().find(|c| c.image.starts_with("broken")) {
            Some(c) => Err(BackendError::Image { image: c.image.clone(), message: "pull failed".into() }),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn warning(&self, namespace: &str, pool: &str, slot: Option<&str>, reason: &str, _message: &str) {
        self.calls.lock().push(format!("warning {namespace}/{pool} {} {reason}", slot.unwrap_or("-")));
    }
    async fn mark_claimed(&self, slot_id: &str, sandbox_id: &str) -> Result<(), BackendError> {
        self.calls.lock().push(format!("mark_claimed {slot_id} {sandbox_id}"));
        if self.taken_elsewhere.lock().contains(slot_id) {
            return Err(BackendError::Conflict(format!("slot {slot_id} is claimed by another replica")));
        }
        Ok(())
    }
    fn publishes_pool_status(&self) -> bool {
        true
    }

    async fn publish_pool_status(
        &self,
        namespace: &str,
        pool: &str,
        status: &PoolStatusReport,
    ) -> Result<(), BackendError> {
        self.published.lock().push((namespace.into(), pool.into(), status.clone()));
        Ok(())
    }
    async fn mark_released(&self, slot_id: &str) -> Result<(), BackendError> {
        self.calls.lock().push(format!("mark_released {slot_id}"));
        self.taken_elsewhere.lock().remove(slot_id);
        Ok(())
    }
    async fn ensure_agent(&self, slot_id: &str) -> Result<bool, BackendError> {
        if !self.slots.lock().contains_key(slot_id) {
            return Err(BackendError::SlotNotFound(slot_id.into()));
        }
        self.calls.lock().push(format!("ensure_agent {slot_id}"));
        let hook = self.agent_hook.lock().clone();
        Ok(hook.is_some_and(|h| h(slot_id)))
    }
    /// Echoes input back as output, reports a resize as the line `[resize COLSxROWS]`, ends with
    /// code N at a line `exit N`, and with code 129 (hung up) on `Close` or when the input is dropped.
    async fn exec_pty(&self, slot_id: &str, req: &PtyRequest) -> Result<PtySession, BackendError> {
        {
            let slots = self.slots.lock();
            let s = slots.get(slot_id).ok_or_else(|| BackendError::SlotNotFound(slot_id.into()))?;
            if !s.containers[0].state.is_running() {
                return Err(BackendError::NotRunning { slot: slot_id.into(), container: s.containers[0].name.clone() });
            }
        }
        self.calls.lock().push(format!("exec_pty {slot_id} {}", req.argv.join(" ")));
        let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<PtyInput>(16);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut line: Vec<u8> = Vec::new();
            let code = 'session: loop {
                match in_rx.recv().await {
                    Some(PtyInput::Data(d)) => {
                        let _ = out_tx.send(d.clone()).await;
                        for b in d {
                            if b != b'\n' {
                                line.push(b);
                                continue;
                            }
                            let text = String::from_utf8_lossy(&line).trim().to_string();
                            line.clear();
                            if let Some(n) = text.strip_prefix("exit ") {
                                break 'session n.trim().parse().unwrap_or(1);
                            }
                        }
                    }
                    Some(PtyInput::Resize { cols, rows }) => {
                        let _ = out_tx.send(format!("[resize {cols}x{rows}]\r\n").into_bytes()).await;
                    }
                    Some(PtyInput::Close) | None => break 129,
                }
            };
            drop(out_tx);
            let _ = exit_tx.send(code);
        });
        Ok(PtySession { input: in_tx, output: out_rx, exit: exit_rx })
    }
    async fn prepare_image(&self, image: &str, _: &[RegistryCredential]) -> Result<(), BackendError> {
        if image.starts_with("broken") {
            return Err(BackendError::Image { image: image.into(), message: "pull failed".into() });
        }
        Ok(())
    }
    async fn create_slot(&self, spec: &SlotSpec) -> Result<SlotObservation, BackendError> {
        self.calls.lock().push(format!("create {}", spec.slot_id));
        Self::check_images(&spec.containers)?;
        let n = self.slots.lock().len();
        let obs = SlotObservation {
            slot_id: spec.slot_id.clone(),
            pool: spec.pool.clone(),
            ip: Some(self.fixed_ip.clone().unwrap_or_else(|| format!("10.99.{}.{}", n / 250, n % 250 + 2))),
            containers: self.containers(&spec.containers),
            failure: None,
        };
        self.slots.lock().insert(spec.slot_id.clone(), obs.clone());
        Ok(obs)
    }
    async fn switch(
        &self,
        slot_id: &str,
        containers: &[ContainerSpec],
        _: &[RegistryCredential],
    ) -> Result<SlotObservation, BackendError> {
        self.calls.lock().push(format!("switch {slot_id} {}", containers[0].image));
        Self::check_images(containers)?;
        let new = self.containers(containers);
        let mut slots = self.slots.lock();
        let s = slots.get_mut(slot_id).ok_or_else(|| BackendError::SlotNotFound(slot_id.into()))?;
        s.containers = new;
        Ok(s.clone())
    }
    async fn exec(&self, slot_id: &str, req: &ExecRequest) -> Result<ExecOutput, BackendError> {
        let slots = self.slots.lock();
        let s = slots.get(slot_id).ok_or_else(|| BackendError::SlotNotFound(slot_id.into()))?;
        if !s.containers[0].state.is_running() {
            return Err(BackendError::NotRunning { slot: slot_id.into(), container: s.containers[0].name.clone() });
        }
        drop(slots);
        self.calls.lock().push(format!("exec {slot_id} {}", req.argv.join(" ")));
        if req.argv.len() == 2 && req.argv[0] == "exit" {
            return Ok(ExecOutput {
                exit_code: req.argv[1].parse().unwrap_or(1),
                stdout: vec![],
                stderr: vec![],
                timed_out: false,
                truncated: false,
            });
        }
        // `sh -c "exit N"`: exits N with a line on stderr (as a failing shell command would).
        if let [sh, c, script] = req.argv.as_slice()
            && sh.ends_with("sh")
            && c == "-c"
            && let Some(n) = script.strip_prefix("exit ").and_then(|n| n.trim().parse::<i32>().ok())
        {
            return Ok(ExecOutput {
                exit_code: n,
                stdout: vec![],
                stderr: format!("fake: exit {n}\n").into_bytes(),
                timed_out: false,
                truncated: false,
            });
        }
        Ok(ExecOutput {
            exit_code: 0,
            stdout: format!("{}\n", req.argv.join(" ")).into_bytes(),
            stderr: vec![],
            timed_out: false,
            truncated: false,
        })
    }
    async fn inspect(&self, slot_id: &str) -> Result<SlotObservation, BackendError> {
        self.slots.lock().get(slot_id).cloned().ok_or_else(|| BackendError::SlotNotFound(slot_id.into()))
    }
    async fn list_slots(&self) -> Result<Vec<SlotObservation>, BackendError> {
        Ok(self.slots.lock().values().cloned().collect())
    }
    async fn destroy_slot(&self, slot_id: &str) -> Result<(), BackendError> {
        self.calls.lock().push(format!("destroy {slot_id}"));
        self.slots.lock().remove(slot_id);
        self.logs.lock().remove(slot_id);
        self.stats.lock().remove(slot_id);
        self.followers.lock().retain(|(slot, _, _)| slot != slot_id);
        Ok(())
    }
    async fn logs(&self, slot_id: &str, container: Option<&str>, lines: usize) -> Result<Vec<LogLine>, BackendError> {
        self.stored_logs(slot_id, container, lines)
    }
    async fn slot_stats(&self, slot_id: &str) -> Result<SlotStats, BackendError> {
        if !self.slots.lock().contains_key(slot_id) {
            return Err(BackendError::SlotNotFound(slot_id.into()));
        }
        let mut stats = self.stats.lock();
        let s = stats.entry(slot_id.into()).or_insert(Self::FAKE_STATS);
        s.cpu_usage_usec += Self::CPU_USEC_PER_READ;
        Ok(s.clone())
    }
    async fn follow_logs(
        &self,
        slot_id: &str,
        container: Option<&str>,
        lines: usize,
    ) -> Result<LogFollow, BackendError> {
        let initial = self.stored_logs(slot_id, container, lines)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        for l in initial {
            let _ = tx.try_send(l);
        }
        self.followers.lock().push((slot_id.into(), container.map(str::to_owned), tx));
        Ok(rx)
    }
}

#[cfg(test)]
mod pty_tests {
    use super::*;

    #[tokio::test]
    async fn fake_pty_echoes_resizes_and_exits_with_the_code() {
        let b = FakeBackend::new();
        let spec = SlotSpec {
            slot_id: "s".into(),
            pool: "p".into(),
            namespace: "default".into(),
            runtime: Default::default(),
            containers: vec![ContainerSpec { name: "main".into(), image: "host".into(), ..Default::default() }],
            resources: Default::default(),
            egress: true,
            registry_credentials: vec![],
        };
        b.create_slot(&spec).await.unwrap();
        let req = PtyRequest {
            container: None,
            argv: vec!["sh".into()],
            env: Default::default(),
            cwd: None,
            cols: 80,
            rows: 24,
        };
        let mut s = b.exec_pty("s", &req).await.unwrap();
        s.input.send(PtyInput::Data(b"echo hi\n".to_vec())).await.unwrap();
        assert_eq!(s.output.recv().await.unwrap(), b"echo hi\n");
        s.input.send(PtyInput::Resize { cols: 100, rows: 40 }).await.unwrap();
        assert_eq!(s.output.recv().await.unwrap(), b"[resize 100x40]\r\n");
        s.input.send(PtyInput::Data(b"exit 3\n".to_vec())).await.unwrap();
        assert_eq!(s.output.recv().await.unwrap(), b"exit 3\n");
        assert_eq!(s.output.recv().await, None);
        assert_eq!(s.exit.await.unwrap(), 3);
        assert!(matches!(b.exec_pty("nope", &req).await, Err(BackendError::SlotNotFound(_))));
        let s = b.exec_pty("s", &req).await.unwrap();
        drop(s.input);
        assert_eq!(s.exit.await.unwrap(), 129);
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[tokio::test]
    async fn fake_stats_advance_cpu_and_follow_set_stats() {
        let b = FakeBackend::new();
        assert!(matches!(b.slot_stats("nope").await, Err(BackendError::SlotNotFound(_))));
        let spec = SlotSpec {
            slot_id: "s".into(),
            pool: "p".into(),
            namespace: "default".into(),
            runtime: Default::default(),
            containers: vec![ContainerSpec { name: "main".into(), image: "host".into(), ..Default::default() }],
            resources: Default::default(),
            egress: true,
            registry_credentials: vec![],
        };
        b.create_slot(&spec).await.unwrap();
        let a = b.slot_stats("s").await.unwrap();
        let c = b.slot_stats("s").await.unwrap();
        assert_eq!(c.cpu_usage_usec - a.cpu_usage_usec, FakeBackend::CPU_USEC_PER_READ);
        assert_eq!(a.mem_total_bytes, FakeBackend::FAKE_STATS.mem_total_bytes);
        b.set_stats("s", SlotStats { mem_used_bytes: 7, ..FakeBackend::FAKE_STATS });
        assert_eq!(b.slot_stats("s").await.unwrap().mem_used_bytes, 7);
        b.destroy_slot("s").await.unwrap();
        assert!(matches!(b.slot_stats("s").await, Err(BackendError::SlotNotFound(_))));
    }
}
