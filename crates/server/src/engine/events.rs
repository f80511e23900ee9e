//! Recent events of a pool: autoscaler decisions, slot failures, scale-down removals.
//!
//! Kept **in memory only**, per pool, the last [`MAX_EVENTS`]: they are lost when the server
//! restarts (the durable facts — replicas, slots, sandbox history — are in the store). A repeat of
//! an event (same reason and message) is merged into the existing one: its count goes up, its
//! timestamp and slot are the latest, and it moves to the front. Every event is also logged.

use std::collections::VecDeque;

use serde::Serialize;
use utoipa::ToSchema;

use super::{Engine, PoolRt, now};

/// How many events a pool keeps.
pub const MAX_EVENTS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum PoolEventType {
    Normal,
    Warning,
}

/// One event of a pool, as served in `status.events` (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolEvent {
    #[serde(rename = "type")]
    pub kind: PoolEventType,
    /// `ScaledUp`, `ScaledDown`, `ScaleDownRemoved`, `ScaleDownCanceled`, `ImagePullBackOff`,
    /// `CreateFailed`, `Failed`, `OOMKilled`, `CrashLoop`, ...
    pub reason: String,
    pub message: String,
    /// When it last happened (RFC 3339).
    pub timestamp: String,
    /// When it first happened.
    pub first_timestamp: String,
    /// How many times it happened.
    pub count: u32,
    /// The slot it is about, if any (the latest one for merged events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// A warning event of one slot, as served in a pool diagnostic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDiagnosticEvent {
    pub reason: String,
    pub message: String,
    pub last_timestamp: String,
    pub count: u32,
}

/// The ring of one pool's events, newest first.
#[derive(Debug, Default)]
pub(crate) struct EventRing {
    items: VecDeque<PoolEvent>,
}

impl EventRing {
    pub fn record(&mut self, kind: PoolEventType, reason: &str, message: &str, slot: Option<&str>, at: String) {
        let mut ev = match self.items.iter().position(|e| e.kind == kind && e.reason == reason && e.message == message)
        {
            Some(i) => {
                let mut e = self.items.remove(i).expect("index from position");
                e.count = e.count.saturating_add(1);
                e.timestamp = at;
                e
            }
            None => PoolEvent {
                kind,
                reason: reason.into(),
                message: message.into(),
                timestamp: at.clone(),
                first_timestamp: at,
                count: 1,
                pod_name: None,
            },
        };
        if slot.is_some() {
            ev.pod_name = slot.map(str::to_string);
        }
        self.items.push_front(ev);
        self.items.truncate(MAX_EVENTS);
    }

    pub fn newest_first(&self) -> Vec<PoolEvent> {
        self.items.iter().cloned().collect()
    }

    /// The warning events about `slot`, newest first.
    pub fn warnings_of(&self, slot: &str) -> Vec<PodDiagnosticEvent> {
        self.items
            .iter()
            .filter(|e| e.kind == PoolEventType::Warning && e.pod_name.as_deref() == Some(slot))
            .map(|e| PodDiagnosticEvent {
                reason: e.reason.clone(),
                message: e.message.clone(),
                last_timestamp: e.timestamp.clone(),
                count: e.count,
            })
            .collect()
    }
}

impl Engine {
    /// Record an event on a pool and log it (info for Normal, warn for Warning).
    pub(crate) fn pool_event(&self, rt: &PoolRt, kind: PoolEventType, reason: &str, message: &str, slot: Option<&str>) {
        let (ns, pool) = (&rt.key.0, &rt.key.1);
        let slot_s = slot.unwrap_or("");
        match kind {
            PoolEventType::Normal => tracing::info!(%ns, %pool, slot = slot_s, reason, "pool event: {message}"),
            PoolEventType::Warning => tracing::warn!(%ns, %pool, slot = slot_s, reason, "pool event: {message}"),
        }
        rt.events.lock().record(kind, reason, message, slot, now());
        if kind == PoolEventType::Warning
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            // Also where the backend's own tooling shows warnings (Kubernetes Events); never waited for.
            let backend = self.backend.clone();
            let (ns, pool, slot, reason, message) =
                (ns.clone(), pool.clone(), slot.map(str::to_owned), reason.to_owned(), message.to_owned());
            handle.spawn(async move { backend.warning(&ns, &pool, slot.as_deref(), &reason, &message).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_merge_newest_first_and_the_ring_is_bounded() {
        let mut r = EventRing::default();
        r.record(PoolEventType::Warning, "ImagePullBackOff", "pull failed", Some("p-1"), "t1".into());
        r.record(PoolEventType::Normal, "ScaledUp", "1 -> 2", None, "t2".into());
        r.record(PoolEventType::Warning, "ImagePullBackOff", "pull failed", Some("p-2"), "t3".into());
        let all = r.newest_first();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].reason.as_str(), all[0].count, all[0].pod_name.as_deref()),
            ("ImagePullBackOff", 2, Some("p-2"))
        );
        assert_eq!((all[0].first_timestamp.as_str(), all[0].timestamp.as_str()), ("t1", "t3"));
        assert_eq!(all[1].reason, "ScaledUp");
        assert_eq!(r.warnings_of("p-2").len(), 1);
        assert!(r.warnings_of("p-1").is_empty(), "merged into the latest slot");
        for i in 0..(MAX_EVENTS + 10) {
            r.record(PoolEventType::Normal, "ScaledDown", &format!("{i}"), None, "t".into());
        }
        let all = r.newest_first();
        assert_eq!(all.len(), MAX_EVENTS);
        assert_eq!(all[0].message, format!("{}", MAX_EVENTS + 9));
    }
}
