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

    /// Start an interactive process with a terminal in a container of the slot.
    async fn exec_pty(&self, slot_id: &str, req: &PtyRequest) -> Result<PtySession, BackendError> {
        let _ = (slot_id, req);
        Err(BackendError::Unsupported(format!("{} backend has no interactive terminals", self.name())))
    }
}
