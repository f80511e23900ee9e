//! Warnings as Kubernetes Events (`events.k8s.io/v1`), attached to the slot Pod or the
//! `SandboxPool` they concern, so `kubectl describe` and `kubectl get events` show them. Built on
//! kube's [`Recorder`], which also folds a repeated warning into one Event with a `series` count
//! instead of creating a new Event each time.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::crd::SandboxPool;
use crate::error::KubeError;

/// `reportingController` of every Event the server writes.
pub const REPORTING_CONTROLLER: &str = "agentbox.dev/server";

/// Publishes warnings. Cheap to share; safe to call concurrently.
pub struct Warnings {
    recorder: Recorder,
}

impl Warnings {
    /// `instance`: this server replica (its Pod name), the Event's `reportingInstance`.
    pub fn new(client: kube::Client, instance: impl Into<String>) -> Self {
        let reporter = Reporter { controller: REPORTING_CONTROLLER.into(), instance: Some(instance.into()) };
        Warnings { recorder: Recorder::new(client, reporter) }
    }

    /// A warning about the Pod of slot `slot` in `namespace` (e.g. reason `SlotFailed`,
    /// `ImagePullFailed`, `Evicted`). `action` says what the server did or tried (`Claim`,
    /// `Switch`, `Reconcile`).
    pub async fn slot(
        &self,
        namespace: &str,
        slot: &str,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), KubeError> {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(slot.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        };
        self.publish(&reference, reason, action, note).await
    }

    /// A warning about pool `pool` (its `SandboxPool` object) in `namespace` (e.g. `Degraded`,
    /// `ScaleUpFailed`).
    pub async fn pool(
        &self,
        namespace: &str,
        pool: &str,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), KubeError> {
        use kube::Resource;
        let reference = ObjectReference {
            api_version: Some(SandboxPool::api_version(&()).into_owned()),
            kind: Some(SandboxPool::kind(&()).into_owned()),
            name: Some(pool.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        };
        self.publish(&reference, reason, action, note).await
    }

    async fn publish(
        &self,
        reference: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), KubeError> {
        // An Event's note holds at most 1 kB.
        let note: String = note.chars().take(1000).collect();
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        self.recorder.publish(&event, reference).await?;
        Ok(())
    }
}
