//! The Kubernetes backend of agentbox: every slot is a Pod; `SandboxTemplate` and `SandboxPool`
//! are custom resources derived from the Rust types in [`crd`].
//!
//! - [`crd`]: the custom resource types and the CRD YAML generator (`crdgen`).
//! - [`convert`]: core model ⇄ custom resources.
//! - [`pod`]: the Pod of a slot (built from a [`agentbox_core::backend::SlotSpec`]) and what the
//!   core observes of it ([`agentbox_core::backend::SlotObservation`]).
//! - [`KubeBackend`]: [`agentbox_core::backend::Backend`] over the Kubernetes API; the claim
//!   compare-and-set and the release of a slot Pod are in [`claim`].
//! - [`leader`]: leader election over a `coordination.k8s.io/v1` Lease.
//! - [`keys`]: API keys stored as Secrets.
//! - [`store`]: the core's store in Kubernetes mode: templates and pools as custom resources
//!   (watched into a local cache), API keys as Secrets.
//! - [`events`]: warnings as Kubernetes Events.

pub mod backend;
pub mod claim;
pub mod convert;
pub mod crd;
pub mod error;
pub mod events;
pub mod exec;
pub mod informer;
pub mod keys;
pub mod leader;
pub mod pod;
pub mod status;
pub mod store;
pub mod usage;

pub use backend::{AgentInjection, KubeBackend, KubeBackendConfig};
pub use error::KubeError;
pub use store::{KubeStore, KubeStoreConfig, LocalOnly};

/// Label and annotation keys, all under our own prefix `agentbox.dev/`.
pub mod labels {
    /// Owning pool of a Pod (set at creation, never changed).
    pub const POOL: &str = "agentbox.dev/pool";
    /// Slot phase of a Pod: `idle`, `starting`, `running`, `stopping`, `failed`. The claim is a
    /// compare-and-set on this label.
    pub const PHASE: &str = "agentbox.dev/phase";
    /// Sandbox holding the Pod while claimed.
    pub const SANDBOX_ID: &str = "agentbox.dev/sandbox-id";
    /// Owner team / user (pools, and Pods while claimed).
    pub const TEAM: &str = "agentbox.dev/team";
    pub const USER: &str = "agentbox.dev/user";
    /// `app.kubernetes.io/managed-by` value of every Pod the backend creates.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "agentbox";
    /// Finalizer on every slot Pod: the server sees an external deletion or eviction before the
    /// Pod disappears, and removes the finalizer itself.
    pub const PROTECTION_FINALIZER: &str = "agentbox.dev/sandbox-protection";
    /// Finalizer on every `SandboxPool`: its deletion waits until the server destroyed the pool's
    /// slots (see [`crate::store`]).
    pub const POOL_FINALIZER: &str = "agentbox.dev/pool-cleanup";
    /// Template annotation: when the stored template last changed (RFC 3339).
    pub const UPDATED_AT: &str = "agentbox.dev/updated-at";
}
