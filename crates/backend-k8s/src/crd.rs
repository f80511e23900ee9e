//! The two custom resources, derived from Rust types: `SandboxTemplate` (`sbt`, cluster-scoped) and
//! `SandboxPool` (`sbp`, namespaced, status + scale subresources).
//!
//! The spec shapes are the REST API's wire shapes (camelCase, same field names), so a template or
//! pool body from `/v1` reads as the `spec` of its custom resource. Registry passwords never go into
//! a custom resource: a pool names a `kubernetes.io/dockerconfigjson` Secret instead.
//!
//! The YAML in `deploy/crds/` is generated from these types by `cargo run -p agentbox-backend-k8s
//! --bin crdgen` and checked for drift by `tests/crds.rs`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every agentbox resource.
pub const GROUP: &str = "agentbox.dev";
/// API version of the custom resources.
pub const VERSION: &str = "v1alpha1";

/// CPU / memory quantities in Kubernetes notation (`"500m"`, `"2"`, `"512Mi"`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quantities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Max number of processes (enforced by the local backend; ignored on Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(default)]
    pub requests: Quantities,
    #[serde(default)]
    pub limits: Quantities,
}

/// One container of a sandbox; container 0 is the main container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetProbe {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecProbe {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
}

/// A named service inside the sandbox (e.g. `envd`, `jupyter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
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

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VisibilityRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

/// No rules = public; a rule matches when team matches (empty = any) and the user is listed (empty =
/// any); rules are OR-ed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Visibility {
    #[serde(default)]
    pub rules: Vec<VisibilityRule>,
}

/// OCI runtime of the local backend; Kubernetes runs Pods with the cluster's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeClass {
    #[default]
    Libcontainer,
    Runc,
}

fn default_true() -> bool {
    true
}

/// What the slots of a pool run (the part of a template a pool copies).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDefinition {
    /// Image container 0 runs while the slot is idle; must differ from the workload image.
    pub idle_image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_command: Vec<String>,
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<Runtime>,
    #[serde(default)]
    pub runtime_class: RuntimeClass,
    /// NAT egress to the outside world (default true).
    #[serde(default = "default_true")]
    pub egress: bool,
}

/// A cluster-wide, admin-managed sandbox definition.
// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agentbox.dev",
    version = "v1alpha1",
    kind = "SandboxTemplate",
    plural = "sandboxtemplates",
    shortname = "sbt",
    category = "agentbox",
    status = "SandboxTemplateStatus",
    derive = "PartialEq",
    doc = "A cluster-wide sandbox definition that pools copy",
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Idle Image", type_ = "string", json_path = ".spec.idleImage"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxTemplateSpec {
    /// `x.y.z`; must strictly increase on update.
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Markdown; may use `${AGBX_POOL_NAME}`, `${AGBX_CLUSTER_ID}`, `${AGBX_API_KEY}`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docs: String,
    #[serde(default)]
    pub visibility: Visibility,
    pub idle_image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_command: Vec<String>,
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<Runtime>,
    #[serde(default)]
    pub runtime_class: RuntimeClass,
    #[serde(default = "default_true")]
    pub egress: bool,
}

/// One standard condition (`Available`, `Scaling`, `Degraded`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxTemplateStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum PodCreationImagePolicy {
    #[default]
    IdleImage,
    PoolDefaultImage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ScaleUpMode {
    Conservative,
    #[default]
    Default,
    Aggressive,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleUpPolicy {
    #[serde(default)]
    pub mode: ScaleUpMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_threshold_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDownPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection_window_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub scale_up_policy: ScaleUpPolicy,
    #[serde(default)]
    pub scale_down_policy: ScaleDownPolicy,
}

/// Per-pool overrides, re-applied on every template sync.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolOverrides {
    /// Replaces container 0's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Scales every container's CPU/memory requests and limits; ≥ 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_multiplier: Option<u32>,
    /// A `kubernetes.io/dockerconfigjson` Secret in the pool's namespace (credentials never live
    /// in the custom resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Reservation {
    #[serde(default, rename = "quotaURL", skip_serializing_if = "Option::is_none")]
    pub quota_url: Option<String>,
}

/// A warm pool of sandboxes ("slots", one Pod each).
// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agentbox.dev",
    version = "v1alpha1",
    kind = "SandboxPool",
    plural = "sandboxpools",
    shortname = "sbp",
    category = "agentbox",
    namespaced,
    status = "SandboxPoolStatus",
    derive = "PartialEq",
    doc = "A warm pool of pre-started sandboxes; each slot is a Pod",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Idle", type_ = "integer", json_path = ".status.idleReplicas"),
    printcolumn(name = "Running", type_ = "integer", json_path = ".status.runningReplicas"),
    printcolumn(name = "Starting", type_ = "integer", json_path = ".status.startingReplicas"),
    printcolumn(name = "Stopping", type_ = "integer", json_path = ".status.stoppingReplicas"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failedReplicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPoolSpec {
    /// Total slots (idle + starting + running + stopping + failed); the autoscaler may change it.
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    /// The SandboxTemplate the definition was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    /// Version of that template at the last sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<String>,
    /// The effective sandbox definition (template copy with overrides applied).
    pub template: SandboxDefinition,
    /// Duration such as `"2m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_startup_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_idle_timeout: Option<String>,
    #[serde(default)]
    pub pod_creation_image_policy: PodCreationImagePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<PoolOverrides>,
}

/// Why one slot is unhealthy (ImagePullBackOff, OOMKilled, CrashLoop, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotDiagnostic {
    pub pod: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<String>,
}

/// Observed state of a pool, written by the reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPoolStatus {
    /// Pending | Ready | ScalingUp | ScalingDown | Degraded | Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Pods that exist now (all phases): the scale subresource's status replicas.
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub idle_replicas: i32,
    #[serde(default)]
    pub unavailable_idle_replicas: i32,
    #[serde(default)]
    pub running_replicas: i32,
    #[serde(default)]
    pub starting_replicas: i32,
    #[serde(default)]
    pub stopping_replicas: i32,
    #[serde(default)]
    pub failed_replicas: i32,
    #[serde(default)]
    pub pending_requests: i32,
    /// Label selector of the pool's Pods (`agentbox.dev/pool=<name>`), for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_up_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_down_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_zero_since: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<SlotDiagnostic>,
}

/// The CRD documents in the order `crdgen` prints them (template first, then pool).
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![SandboxTemplate::crd(), SandboxPool::crd()]
}

/// The YAML of one CRD as committed under `deploy/crds/` (a header comment, then the document).
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD always serializes");
    format!(
        "# Generated by `cargo run -p agentbox-backend-k8s --bin crdgen -- deploy/crds` from \
         crates/backend-k8s/src/crd.rs.\n# Do not edit by hand.\n{body}"
    )
}

/// File name of a CRD under `deploy/crds/` (`sandboxpools.agentbox.dev.yaml`).
pub fn crd_file_name(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}
