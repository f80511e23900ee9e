//! Domain types shared by every layer: templates, pools, slots, sandboxes.
//!
//! Wire names are camelCase. Types that clients send are validated once at the edge (see
//! [`crate::validate`]); types here describe already-valid values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::duration::WireDuration;

/// Which OCI runtime runs a slot's containers on the local backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeClass {
    /// youki's libcontainer, in-process (default; fastest).
    #[default]
    Libcontainer,
    /// The `runc` binary.
    Runc,
}

impl RuntimeClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            RuntimeClass::Libcontainer => "libcontainer",
            RuntimeClass::Runc => "runc",
        }
    }
}

/// Kubernetes-style resource quantities (`"500m"`, `"2"`, `"512Mi"`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quantities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Max number of processes (local backend: pids cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(default)]
    pub requests: Quantities,
    #[serde(default)]
    pub limits: Quantities,
}

/// One container of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's cmd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub resources: ResourceRequirements,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// Limits for one slot, in backend units (summed over its containers' limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// CPU limit in millicores.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetProbe {
    pub port: u16,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
}

/// A named service inside the sandbox (e.g. `envd`, `jupyter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ReadinessProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VisibilityRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Visibility {
    #[serde(default)]
    pub rules: Vec<VisibilityRule>,
}

impl Visibility {
    /// No rules = public. A rule matches when its team matches (empty = any) and the user is listed
    /// (empty = any); rules are OR-ed.
    pub fn allows(&self, team: &str, user: &str) -> bool {
        self.rules.is_empty()
            || self.rules.iter().any(|r| {
                r.team.as_deref().is_none_or(|t| t.is_empty() || t == team)
                    && (r.users.is_empty() || r.users.iter().any(|u| u == user))
            })
    }
}

/// The part of a template that a pool copies: what its slots run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// Image container 0 runs while the slot is idle; must differ from the workload image.
    pub idle_image: String,
    /// Command for the idle container (default: the idle image's own entrypoint/cmd).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_command: Vec<String>,
    pub containers: Vec<ContainerSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<RuntimeSpec>,
    /// OCI runtime (local backend): `libcontainer` (default) or `runc`.
    #[serde(default)]
    pub runtime_class: RuntimeClass,
    /// NAT egress to the outside world (default true).
    #[serde(default = "default_true")]
    pub egress: bool,
}

fn default_true() -> bool {
    true
}

/// A cluster-wide, admin-managed sandbox definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateSpec {
    /// `x.y.z`; must strictly increase on update.
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Markdown; may use `${AGBX_POOL_NAME}`, `${AGBX_CLUSTER_ID}`, `${AGBX_API_KEY}`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docs: String,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(flatten)]
    pub sandbox: SandboxSpec,
}

/// A stored template with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub name: String,
    pub spec: TemplateSpec,
    /// Optimistic-locking token: increases on every write.
    pub resource_version: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// How new slots of a pool start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum PodCreationImagePolicy {
    /// New and recycled slots run the idle image; every claim switches image.
    #[default]
    IdleImage,
    /// New and recycled slots run the pool's workload image, so a claim for that image needs no
    /// switch (the same-image fast path).
    PoolDefaultImage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum ScaleUpMode {
    Conservative,
    #[default]
    Default,
    Aggressive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleUpPolicy {
    #[serde(default)]
    pub mode: ScaleUpMode,
    #[serde(default = "d30")]
    pub cooldown_seconds: u64,
    #[serde(default = "d30")]
    pub idle_threshold_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleDownPolicy {
    #[serde(default = "d300")]
    pub idle_timeout_seconds: u64,
    #[serde(default = "d60")]
    pub stabilization_seconds: u64,
    #[serde(default = "d10")]
    pub protection_window_seconds: u64,
}

fn d30() -> u64 {
    30
}
fn d60() -> u64 {
    60
}
fn d300() -> u64 {
    300
}
fn d10() -> u64 {
    10
}

impl Default for ScaleUpPolicy {
    fn default() -> Self {
        ScaleUpPolicy { mode: ScaleUpMode::Default, cooldown_seconds: 30, idle_threshold_seconds: 30 }
    }
}
impl Default for ScaleDownPolicy {
    fn default() -> Self {
        ScaleDownPolicy { idle_timeout_seconds: 300, stabilization_seconds: 60, protection_window_seconds: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscalingSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub scale_up_policy: ScaleUpPolicy,
    #[serde(default)]
    pub scale_down_policy: ScaleDownPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryCredential {
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Display for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(f, "{}@{}", self.username, self.registry)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePullSecret {
    pub registries: Vec<RegistryCredential>,
}

/// Per-pool overrides re-applied on every template sync.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolOverrides {
    /// Replaces container 0's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Scales every container's CPU/memory requests and limits; ≥ 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_multiplier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<ImagePullSecret>,
}

/// What a pool is: its size, its sandbox definition and its policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    /// The effective sandbox definition (template copy with overrides applied).
    pub template: SandboxSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_startup_timeout: Option<WireDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_idle_timeout: Option<WireDuration>,
    #[serde(default)]
    pub pod_creation_image_policy: PodCreationImagePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Deprecated alias of `reservation: {quotaURL}`: honoured only when `reservation` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_url: Option<String>,
    /// Charge this pool's slots to a quota (admitted against the quota's free resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
}

impl PoolSpec {
    /// The reservation the pool asks for: `reservation`, else the deprecated `quotaUrl` alone as
    /// `reservation: {quotaURL}`, else none.
    pub fn effective_reservation(&self) -> Option<Reservation> {
        match (&self.reservation, &self.quota_url) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(url)) => Some(Reservation { quota_url: Some(url.clone()) }),
            (None, None) => None,
        }
    }
}

/// A pool's request to be charged to a quota. Without `quotaURL` the caller's default quota URL
/// (from its API key) is used; the server records the URL it resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// Hierarchical, dot-separated quota URL (`org.team.user`).
    #[serde(default, rename = "quotaURL", alias = "quotaUrl", skip_serializing_if = "Option::is_none")]
    pub quota_url: Option<String>,
}

/// A stored pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub name: String,
    pub namespace: String,
    pub team: String,
    pub user: String,
    pub spec: PoolSpec,
    /// Override intent, re-applied on template sync. Credentials are kept here (server-side only).
    #[serde(default)]
    pub overrides: PoolOverrides,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Version of the source template at the last sync.
    #[serde(default)]
    pub template_version: Option<String>,
    pub created_at: String,
    pub resource_version: u64,
    /// Set once deletion started; the pool is gone when its last slot is destroyed.
    #[serde(default)]
    pub deleting: bool,
}

impl Pool {
    /// A stable fingerprint (FNV-1a 64 over canonical JSON) of what a new slot of this pool is made
    /// from: the idle containers, the slot's resources, runtime, egress and the workload containers.
    pub fn slot_spec_hash(&self) -> String {
        let t = &self.spec.template;
        let doc = serde_json::json!({
            "idle": self.idle_containers(),
            "containers": t.containers,
            "runtime": t.runtime_class,
            "egress": t.egress,
        });
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in doc.to_string().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// The images container by container that slots of this pool run while idle.
    pub fn idle_containers(&self) -> Vec<ContainerSpec> {
        let t = &self.spec.template;
        match self.spec.pod_creation_image_policy {
            PodCreationImagePolicy::PoolDefaultImage => t.containers.clone(),
            PodCreationImagePolicy::IdleImage => t
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        ContainerSpec {
                            name: c.name.clone(),
                            image: t.idle_image.clone(),
                            command: t.idle_command.clone(),
                            args: vec![],
                            env: BTreeMap::new(),
                            working_dir: None,
                            resources: c.resources.clone(),
                            ports: vec![],
                        }
                    } else {
                        c.clone()
                    }
                })
                .collect(),
        }
    }
}

/// Phase of a slot (the "pod phase label"). `idle → starting → running → stopping → idle`, and
/// `failed` from anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SlotPhase {
    /// Being created, not yet idle.
    Creating,
    Idle,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl SlotPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            SlotPhase::Creating => "creating",
            SlotPhase::Idle => "idle",
            SlotPhase::Starting => "starting",
            SlotPhase::Running => "running",
            SlotPhase::Stopping => "stopping",
            SlotPhase::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<SlotPhase> {
        Some(match s {
            "creating" => SlotPhase::Creating,
            "idle" => SlotPhase::Idle,
            "starting" => SlotPhase::Starting,
            "running" => SlotPhase::Running,
            "stopping" => SlotPhase::Stopping,
            "failed" => SlotPhase::Failed,
            _ => return None,
        })
    }
}

/// One slot as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    pub slot_id: String,
    pub pool: String,
    pub namespace: String,
    pub phase: SlotPhase,
    /// The sandbox that holds the slot (Starting, Running, Stopping).
    pub sandbox_id: Option<String>,
    /// Images the slot's containers run now, by container name.
    pub images: BTreeMap<String, String>,
    pub ip: Option<String>,
    pub created_at: String,
    /// When the slot last became idle (claim order: oldest idle first).
    pub idle_since: Option<String>,
    pub failure_reason: Option<String>,
    pub failure_message: Option<String>,
    /// [`Pool::slot_spec_hash`] of the definition the slot was made from; idle slots whose hash
    /// differs from their pool's are replaced (template sync, policy change). `None`: made by an
    /// older version, never rolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
}

/// Lifecycle status of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum SandboxStatus {
    Starting,
    Running,
    Stopping,
    /// Deleted by the user.
    Completed,
    /// Released by the system (idle or startup timeout).
    Released,
    /// Crash, OOM, eviction or startup failure.
    Failed,
    /// Deleted, or the client went away, before it was Running.
    Canceled,
}

impl SandboxStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            SandboxStatus::Starting => "Starting",
            SandboxStatus::Running => "Running",
            SandboxStatus::Stopping => "Stopping",
            SandboxStatus::Completed => "Completed",
            SandboxStatus::Released => "Released",
            SandboxStatus::Failed => "Failed",
            SandboxStatus::Canceled => "Canceled",
        }
    }
    pub fn parse(s: &str) -> Option<SandboxStatus> {
        Some(match s {
            "Starting" => SandboxStatus::Starting,
            "Running" => SandboxStatus::Running,
            "Stopping" => SandboxStatus::Stopping,
            "Completed" => SandboxStatus::Completed,
            "Released" => SandboxStatus::Released,
            "Failed" => SandboxStatus::Failed,
            "Canceled" => SandboxStatus::Canceled,
            _ => return None,
        })
    }
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SandboxStatus::Completed | SandboxStatus::Released | SandboxStatus::Failed | SandboxStatus::Canceled
        )
    }
    pub const ALL: [SandboxStatus; 7] = [
        SandboxStatus::Starting,
        SandboxStatus::Running,
        SandboxStatus::Stopping,
        SandboxStatus::Completed,
        SandboxStatus::Released,
        SandboxStatus::Failed,
        SandboxStatus::Canceled,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a runtime of the sandbox can be reached (read-time field, never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxEndpoint {
    /// `{proxyBaseUrl}/sandboxes/{sandboxId}/{port}` when the server has a data-plane base URL,
    /// else `http://{slot ip}:{port}` (reachable from the server's host). Absent for a runtime
    /// without a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
}

/// Most post-start hooks one create request may carry.
pub const MAX_POST_START_HOOKS: usize = 16;

/// A set-up step run after the sandbox's containers start and before the create answers:
/// exactly one of `exec` or `httpPost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostStartHookAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHookAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_post: Option<HttpPostHookAction>,
}

/// Runs `sh -c <command>` in container 0; a non-zero exit is a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecHookAction {
    pub command: String,
}

/// POSTs `body` as JSON to `http://{slot ip}:{port}{path}`; a status >= 300 or a connection error
/// is a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPostHookAction {
    /// 1..=65535.
    pub port: u32,
    /// Starts with `/`, e.g. `/init`.
    pub path: String,
    /// A JSON object sent as the request body (`{}` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl PostStartHookAction {
    /// Check one action (exactly one kind, valid fields). The error says what is wrong without
    /// naming the action's position; callers prefix it.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.exec, &self.http_post) {
            (Some(e), None) => {
                if e.command.trim().is_empty() {
                    return Err("exec.command is empty: give a shell command such as \"echo ready\"".into());
                }
            }
            (None, Some(h)) => {
                if !(1..=65535).contains(&h.port) {
                    return Err(format!("httpPost.port {} is out of range: use 1..=65535", h.port));
                }
                if !h.path.starts_with('/') {
                    return Err(format!("httpPost.path {:?} must start with '/', e.g. \"/init\"", h.path));
                }
                if let Some(b) = &h.body
                    && !b.is_object()
                {
                    return Err("httpPost.body must be a JSON object".into());
                }
                for name in h.headers.keys() {
                    let ok = !name.is_empty()
                        && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
                    if !ok {
                        return Err(format!("httpPost.headers name {name:?} is not a valid HTTP header name"));
                    }
                }
                if let Some((name, _)) = h.headers.iter().find(|(_, v)| v.contains(['\r', '\n'])) {
                    return Err(format!("httpPost.headers value of {name:?} must not contain line breaks"));
                }
            }
            _ => return Err("give exactly one of exec or httpPost".into()),
        }
        Ok(())
    }

    /// Short human description for messages: `exec "cmd"` or `httpPost :port/path`.
    pub fn describe(&self) -> String {
        match (&self.exec, &self.http_post) {
            (Some(e), _) => format!("exec {:?}", e.command),
            (_, Some(h)) => format!("httpPost :{}{}", h.port, h.path),
            _ => "empty hook".into(),
        }
    }
}

/// A claimed slot. Live while Starting/Running/Stopping; terminal records stay in the history store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub sandbox_id: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    pub pool_name: String,
    /// The slot ("pod") the sandbox runs in.
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub status: SandboxStatus,
    /// Images the sandbox asked for / ran, by container name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_images: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub claimed_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycled_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    /// Idle timeout in seconds; none = never released for inactivity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<String>,
    /// While Stopping: the terminal status the sandbox will end in (`Completed`, `Released`,
    /// `Failed`, `Canceled`); kept so a restart can finish the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<SandboxStatus>,
    /// Computed at read time, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<StatusDetail>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, SandboxEndpoint>,
    /// The post-start hooks the create asked for, in the order they ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_start_hooks: Vec<PostStartHookAction>,
}

impl Sandbox {
    /// Fill the read-time fields (`durationSeconds`) as of `now`.
    pub fn with_duration(mut self, now: chrono::DateTime<chrono::Utc>) -> Self {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                .map(|d| d.with_timezone(&chrono::Utc))
        };
        let start = parse(&self.started_at);
        let end = match self.status {
            SandboxStatus::Running | SandboxStatus::Stopping => Some(now),
            SandboxStatus::Starting | SandboxStatus::Canceled => None,
            _ => parse(&self.terminated_at),
        };
        self.duration_seconds = match (start, end) {
            (Some(s), Some(e)) => Some((e - s).num_seconds().max(0)),
            _ => None,
        };
        self
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rules() {
        let public = Visibility::default();
        assert!(public.allows("a", "b"));
        let v = Visibility {
            rules: vec![
                VisibilityRule { team: Some("ml".into()), users: vec![] },
                VisibilityRule { team: None, users: vec!["carol".into()] },
            ],
        };
        assert!(v.allows("ml", "anyone"));
        assert!(v.allows("other", "carol"));
        assert!(!v.allows("other", "dave"));
    }

    #[test]
    fn post_start_hooks_validate_each_kind() {
        let hook = |v: serde_json::Value| serde_json::from_value::<PostStartHookAction>(v).unwrap().validate();
        assert_eq!(hook(serde_json::json!({"exec": {"command": "echo hi"}})), Ok(()));
        let ok =
            serde_json::json!({"httpPost": {"port": 8000, "path": "/init", "body": {"a": 1}, "headers": {"X-A": "b"}}});
        assert_eq!(hook(ok), Ok(()));
        let err = |v| hook(v).unwrap_err();
        assert!(err(serde_json::json!({})).contains("exactly one"));
        let both = serde_json::json!({"exec": {"command": "x"}, "httpPost": {"port": 1, "path": "/"}});
        assert!(err(both).contains("exactly one"));
        assert!(err(serde_json::json!({"exec": {"command": "  "}})).contains("empty"));
        assert!(err(serde_json::json!({"httpPost": {"port": 0, "path": "/"}})).contains("1..=65535"));
        assert!(err(serde_json::json!({"httpPost": {"port": 70000, "path": "/"}})).contains("1..=65535"));
        assert!(err(serde_json::json!({"httpPost": {"port": 80, "path": "init"}})).contains("start with '/'"));
        assert!(err(serde_json::json!({"httpPost": {"port": 80, "path": "/", "body": [1]}})).contains("object"));
        let bad_header = serde_json::json!({"httpPost": {"port": 80, "path": "/", "headers": {"a b": "c"}}});
        assert!(err(bad_header).contains("header name"));
        let unknown = serde_json::from_value::<PostStartHookAction>(serde_json::json!({"run": {}}));
        assert!(unknown.is_err(), "unknown fields are refused");
    }

    #[test]
    fn duration_is_computed_from_timestamps() {
        let mut s: Sandbox = serde_json::from_value(serde_json::json!({
            "sandboxId": "x", "namespace": "default", "poolName": "p", "podName": "p-1",
            "status": "Completed", "claimedAt": "2026-01-01T00:00:00Z",
            "startedAt": "2026-01-01T00:00:00Z", "terminatedAt": "2026-01-01T00:01:05Z"
        }))
        .unwrap();
        s = s.with_duration(chrono::Utc::now());
        assert_eq!(s.duration_seconds, Some(65));
        s.status = SandboxStatus::Canceled;
        assert_eq!(s.with_duration(chrono::Utc::now()).duration_seconds, None);
    }

    #[test]
    fn deprecated_quota_url_is_a_reservation_alias() {
        let spec = |v: serde_json::Value| -> PoolSpec {
            let mut base = serde_json::json!({"replicas": 1, "template": {"idleImage": "pause", "containers": []}});
            base.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
            serde_json::from_value(base).unwrap()
        };
        let url = |s: &PoolSpec| s.effective_reservation().map(|r| r.quota_url);
        assert_eq!(url(&spec(serde_json::json!({}))), None);
        assert_eq!(url(&spec(serde_json::json!({"quotaUrl": "org.a"}))), Some(Some("org.a".into())));
        let both = spec(serde_json::json!({"quotaUrl": "org.a", "reservation": {"quotaURL": "org.b"}}));
        assert_eq!(url(&both), Some(Some("org.b".into())));
        assert_eq!(url(&spec(serde_json::json!({"reservation": {}}))), Some(None));
        let wire = serde_json::to_value(&both).unwrap();
        assert_eq!(wire["reservation"], serde_json::json!({"quotaURL": "org.b"}));
    }

    #[test]
    fn idle_containers_follow_the_policy() {
        let c = ContainerSpec {
            name: "main".into(),
            image: "host".into(),
            command: vec!["sleep".into()],
            ..Default::default()
        };
        let mut pool = Pool {
            name: "p".into(),
            namespace: "default".into(),
            team: String::new(),
            user: String::new(),
            spec: PoolSpec {
                replicas: 1,
                min_replicas: None,
                max_replicas: None,
                template_name: None,
                template: SandboxSpec {
                    idle_image: "pause".into(),
                    idle_command: vec![],
                    containers: vec![c.clone()],
                    runtimes: vec![],
                    runtime_class: RuntimeClass::Libcontainer,
                    egress: true,
                },
                default_startup_timeout: None,
                default_idle_timeout: None,
                pod_creation_image_policy: PodCreationImagePolicy::IdleImage,
                autoscaling: None,
                quota_url: None,
                reservation: None,
            },
            overrides: PoolOverrides::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            template_version: None,
            created_at: now_rfc3339(),
            resource_version: 1,
            deleting: false,
        };
        assert_eq!(pool.idle_containers()[0].image, "pause");
        pool.spec.pod_creation_image_policy = PodCreationImagePolicy::PoolDefaultImage;
        assert_eq!(pool.idle_containers()[0], c);
    }
}
