//! The backend trait: what the lifecycle core needs from a place that runs slots.
//!
//! A *slot* is one pre-warmed sandbox: an isolation boundary (network namespace + IP, cgroup, shared
//! volume on the local backend; a Pod on Kubernetes) that runs one or more containers. The core never
//! creates anything on the request path except through [`Backend::switch`] (in-place image switch) and
//! [`Backend::exec`].

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{ContainerSpec, RegistryCredential, Resources, RuntimeClass};

/// Everything a backend needs to create one slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotSpec {
    /// Stable, unique, DNS-label-safe slot name (the "pod name"), e.g. `default-0f3a9c`.
    pub slot_id: String,
    pub pool: String,
    pub namespace: String,
    /// Which OCI runtime runs the containers of this slot.
    pub runtime: RuntimeClass,
    /// The containers to start, in order; container 0 is the main container.
    pub containers: Vec<ContainerSpec>,
    /// Limits for the whole slot (the sum over its containers).
    pub resources: Resources,
    /// Whether the slot may reach the outside world (NAT egress).
    pub egress: bool,
    /// Credentials for pulling the images of this slot.
    pub registry_credentials: Vec<RegistryCredential>,
}

/// What a backend observes of one slot right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotObservation {
    pub slot_id: String,
    pub pool: String,
    /// The slot's IP, reachable from the host (local backend) or the cluster.
    pub ip: Option<String>,
    pub containers: Vec<ContainerObservation>,
    /// Why the slot as a whole ended or is going away, as `(reason, message)` (e.g. `("Evicted",
    /// "The node was low on resource: memory.")`, `("Deleted", ...)`), when the backend knows more
    /// than the main container's exit. `None` while healthy, and always on backends that cannot tell
    /// (the local backend). The core prefers it over the container-derived reason when failing the
    /// sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<(String, String)>,
}

impl SlotObservation {
    /// The main (first) container, if the slot has any.
    pub fn main(&self) -> Option<&ContainerObservation> {
        self.containers.first()
    }
    /// Images currently running, by container name.
    pub fn images(&self) -> BTreeMap<String, String> {
        self.containers.iter().map(|c| (c.name.clone(), c.image.clone())).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerObservation {
    pub name: String,
    /// The image reference as the caller asked for it.
    pub image: String,
    /// Runtime container id (unique per start; changes on every switch/restart).
    pub container_id: String,
    pub state: ContainerState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ContainerState {
    Running {
        pid: i32,
    },
    /// The container's init exited. `exit_code` is `None` when the status could not be collected
    /// (e.g. the process was adopted after a server restart and reaped by someone else).
    Exited {
        exit_code: Option<i32>,
        oom_killed: bool,
    },
    /// The runtime has no such container.
    Missing,
}

impl ContainerState {
    pub fn is_running(&self) -> bool {
        matches!(self, ContainerState::Running { .. })
    }
}

/// A one-shot command in a running slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Container name; `None` = container 0.
    pub container: Option<String>,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit code; 124 like `timeout(1)` when the command was killed at its deadline, 128+N when killed
    /// by signal N.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    /// True when an output stream exceeded the backend's capture limit and was cut.
    pub truncated: bool,
}

/// One line of a container's stdout/stderr log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 timestamp, when the backend records one.
    pub timestamp: Option<String>,
    pub container: String,
    pub stream: String,
    pub line: String,
    /// Older output of this container was discarded before this line (log rotation, read cap).
    #[serde(default)]
    pub older_dropped: bool,
}

/// An interactive process with a terminal (PTY) in a running slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PtyRequest {
    /// Container name; `None` = container 0.
    pub container: Option<String>,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Initial terminal size.
    pub cols: u16,
    pub rows: u16,
}

/// What the caller sends to an interactive process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyInput {
    /// Bytes for the terminal's input (keystrokes).
    Data(Vec<u8>),
    /// New terminal size.
    Resize { cols: u16, rows: u16 },
    /// The caller went away: end the process (the backend sends EOT and then hangs up).
    Close,
}

/// A running interactive process. Dropping `input` also ends the process.
pub struct PtySession {
    pub input: tokio::sync::mpsc::Sender<PtyInput>,
    /// Terminal output (stdout and stderr merged, as a TTY does); closed when the process has exited
    /// and its output is drained.
    pub output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    /// The process's exit code (128+N when killed by signal N).
    pub exit: tokio::sync::oneshot::Receiver<i32>,
}

/// Resource usage of one slot at one instant (its cgroup and its writable layers on the local
/// backend). A snapshot: rates such as CPU percent are computed by the caller from two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotStats {
    /// CPU time used by the slot's processes, cumulative since the slot's cgroup was created
    /// (it survives switches), in microseconds. Only differences between two reads are meaningful.
    pub cpu_usage_usec: u64,
    /// CPUs the slot may use: its CPU limit rounded up, or the host's CPUs when it has none (>= 1).
    pub cpu_count: u32,
    /// Memory in use, without reclaimable page cache (the "working set"), in bytes.
    pub mem_used_bytes: u64,
    /// Page cache charged to the slot, in bytes.
    pub mem_cache_bytes: u64,
    /// The slot's memory limit, or the host's memory when it has none, in bytes.
    pub mem_total_bytes: u64,
    /// Bytes written by the slot's containers (their writable layers); 0 when not measured.
    pub disk_used_bytes: u64,
    /// Size of the filesystem the writable layers live on, in bytes; 0 when not measured.
    pub disk_total_bytes: u64,
}

/// A pool's status as the engine computes it (what `GET /pools/{name}` serves, without the
/// in-memory events), handed to [`Backend::publish_pool_status`] so that the backend's own
/// tooling can show it (Kubernetes: the `SandboxPool` status subresource, `kubectl get sbp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatusReport {
    pub phase: crate::reconcile::PoolPhase,
    pub counts: crate::reconcile::PoolCounts,
    /// `Available`, `Scaling` and `Degraded`, in that order.
    pub conditions: Vec<PoolStatusCondition>,
    /// Unusable slots: failed ones, and slots with recent warnings.
    pub diagnostics: Vec<PoolStatusDiagnostic>,
}

/// One condition of a [`PoolStatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatusCondition {
    /// `Available`, `Scaling` or `Degraded`.
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// Why one slot of a pool is not usable, in a [`PoolStatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatusDiagnostic {
    pub slot_id: String,
    /// e.g. `ImagePullBackOff`, `CreateFailed`, `OOMKilled`, `CrashLoop`.
    pub reason: String,
    pub message: String,
}

/// A followed log (like `tail -f`): the last lines first, then every new line as it is written,
/// until the receiver is dropped or the slot goes away.
pub type LogFollow = tokio::sync::mpsc::Receiver<LogLine>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("slot {0} not found")]
    SlotNotFound(String),
    #[error("container {container} not found in slot {slot}")]
    ContainerNotFound { slot: String, container: String },
    #[error("container {container} of slot {slot} is not running")]
    NotRunning { slot: String, container: String },
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("not supported by this backend: {0}")]
    Unsupported(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("runtime error: {0}")]
    Runtime(String),
    /// Another claimer won the race for the slot (compare-and-set failed): requeue the request and
    /// take another slot. Never a user-facing error by itself.
    #[error("slot claimed concurrently: {0}")]
    Conflict(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

/// The body that runs slots. Implementations: `agentbox-backend-local` (containers on this host) and,
/// later, Kubernetes. Every method is idempotent where that makes sense (destroying a missing slot is
/// `Ok`). Implementations must be safe to call concurrently for different slots; calls for the same
/// slot are serialized by the core.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and metrics (`local`, `kubernetes`, `fake`).
    fn name(&self) -> &'static str;

    /// Make sure `image` is available (pull and unpack it if needed). Idempotent and cached.
    async fn prepare_image(&self, image: &str, credentials: &[RegistryCredential]) -> Result<(), BackendError>;

    /// Create a slot and start its containers. On error nothing is left behind.
    async fn create_slot(&self, spec: &SlotSpec) -> Result<SlotObservation, BackendError>;

    /// Replace the slot's containers in place: stop them, discard their writable layers, and start
    /// `containers` in the same slot (same network namespace and IP, same cgroup, same volume).
    /// Called both for a claim that needs another image and for a release (back to the idle image).
    async fn switch(
        &self,
        slot_id: &str,
        containers: &[ContainerSpec],
        credentials: &[RegistryCredential],
    ) -> Result<SlotObservation, BackendError>;

    /// Run a one-shot command in a container of the slot and collect its output.
    async fn exec(&self, slot_id: &str, req: &ExecRequest) -> Result<ExecOutput, BackendError>;

    /// Observe one slot.
    async fn inspect(&self, slot_id: &str) -> Result<SlotObservation, BackendError>;

    /// Observe every slot this backend knows about (used at start-up to re-adopt slots).
    async fn list_slots(&self) -> Result<Vec<SlotObservation>, BackendError>;

    /// Stop everything in the slot and free all its resources. Missing slot = `Ok`.
    async fn destroy_slot(&self, slot_id: &str) -> Result<(), BackendError>;

    /// The last `lines` lines (0 = all) of the stdout/stderr log of `container` (None = all).
    async fn logs(&self, slot_id: &str, container: Option<&str>, lines: usize) -> Result<Vec<LogLine>, BackendError>;

    /// Follow the stdout/stderr log of `container` (None = all): the last `lines` lines (0 = all),
    /// then new lines as they come.
    async fn follow_logs(
        &self,
        slot_id: &str,
        container: Option<&str>,
        lines: usize,
    ) -> Result<LogFollow, BackendError> {
        let _ = (slot_id, container, lines);
        Err(BackendError::Unsupported(format!("{} backend cannot follow logs", self.name())))
    }

    /// Resource usage of the slot now (see [`SlotStats`]). `SlotNotFound` for an unknown slot.
    async fn slot_stats(&self, slot_id: &str) -> Result<SlotStats, BackendError> {
        let _ = slot_id;
        Err(BackendError::Unsupported(format!(
            "the {} backend does not report per-sandbox resource usage; use the Prometheus metrics at GET /metrics",
            self.name()
        )))
    }

    /// Start an interactive process with a terminal in a container of the slot.
    async fn exec_pty(&self, slot_id: &str, req: &PtyRequest) -> Result<PtySession, BackendError> {
        let _ = (slot_id, req);
        Err(BackendError::Unsupported(format!("{} backend has no interactive terminals", self.name())))
    }

    /// Make sure the in-sandbox agent (port 49983) answers in the slot: when it does not, start it
    /// again. `Ok(true)` = it was (re)started just now, or a start in flight (after a create or
    /// switch) finished while waiting, so it answers now and a retry is worthwhile; `Ok(false)` = nothing was
    /// started (it already answered, the slot has no agent, or the backend cannot restart agents,
    /// which is this default). Concurrent calls for one slot start at most one agent.
    async fn ensure_agent(&self, slot_id: &str) -> Result<bool, BackendError> {
        let _ = slot_id;
        Ok(false)
    }

    /// Publish a warning about pool `pool` in `namespace` (or one of its slots) where the
    /// backend's own tooling shows it (Kubernetes: an Event on the Pod or the `SandboxPool`, seen
    /// by `kubectl describe`). Best effort: failures are the backend's to log. Default: nothing
    /// (the local backend's warnings are the pool events of the API).
    async fn warning(&self, namespace: &str, pool: &str, slot: Option<&str>, reason: &str, message: &str) {
        let _ = (namespace, pool, slot, reason, message);
    }

    /// Does [`Backend::publish_pool_status`] do anything? The engine skips computing the report
    /// (a read of the pool's slots) on every reconcile pass when not. Default: no.
    fn publishes_pool_status(&self) -> bool {
        false
    }

    /// Publish the status of pool `pool` in `namespace` where the backend's tooling shows it
    /// (Kubernetes: the status subresource of the `SandboxPool`). Called by the pool's reconciler
    /// (on the leader only) when the status differs from the one last published successfully; an
    /// error is logged and the call repeated on a later pass. A pool with no object in the
    /// backend is `Ok`. Default: nothing to publish (the local backend's pool status is the API's).
    async fn publish_pool_status(
        &self,
        namespace: &str,
        pool: &str,
        status: &PoolStatusReport,
    ) -> Result<(), BackendError> {
        let _ = (namespace, pool, status);
        Ok(())
    }

    /// Record in the backend that `slot_id` now belongs to `sandbox_id`, atomically: the call
    /// succeeds for exactly one of several concurrent claimers of an idle slot (in this process or
    /// in another server replica); the others get [`BackendError::Conflict`] and must requeue and
    /// take another slot. Called by the claim path after picking an idle slot and before
    /// [`Backend::switch`]. `Ok` when the slot is already claimed by the same `sandbox_id` (a
    /// retry). Backends whose slots only this process sees (local, fake) need nothing: default `Ok`.
    async fn mark_claimed(&self, slot_id: &str, sandbox_id: &str) -> Result<(), BackendError> {
        let _ = (slot_id, sandbox_id);
        Ok(())
    }

    /// Record that `slot_id` is idle again and belongs to no sandbox; called by the release path
    /// after the slot was switched back to its idle image, before the slot is offered to claims.
    /// Idempotent; a missing slot is `Ok`. Default: nothing to record.
    async fn mark_released(&self, slot_id: &str) -> Result<(), BackendError> {
        let _ = slot_id;
        Ok(())
    }
}
