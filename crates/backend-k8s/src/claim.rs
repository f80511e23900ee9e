//! The claim of a slot Pod: a compare-and-set of its phase label (`idle` → `running`, plus the
//! sandbox-id label) and its release (back to `idle`, sandbox-id removed). Pure builders and the
//! in-process reservation set; the API calls are in [`crate::backend`].
//!
//! Why both: the reservation set stops two claims in *this* process from ever sending a patch for
//! the same Pod (the loser learns it at once, without a round trip); the JSON patch's `test` ops
//! make the API server refuse the patch when the Pod changed since it was read (another server
//! replica claimed it, or the reconciler touched it), so at most one claim wins across processes.

use std::collections::HashSet;

use agentbox_core::model::SlotPhase;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::labels;

/// The phase label value of a claimed Pod. The engine's finer phases (starting, stopping) live in
/// its store; on the Pod the label says "claimed" (`running`) or "free" (`idle`), which is what the
/// compare-and-set and `kubectl get pods -l agentbox.dev/phase=idle` need.
pub const CLAIMED_PHASE: &str = "running";

/// A JSON pointer to the label `key` (`/` in the key is escaped as `~1`, RFC 6901).
pub fn label_pointer(key: &str) -> String {
    format!("/metadata/labels/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// Whether `v` is a valid label value (at most 63 characters of `[A-Za-z0-9._-]`, starting and
/// ending with an alphanumeric character; empty is valid).
pub fn is_label_value(v: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(ok_char)
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// The claim patch (JSON patch): refused by the API server (422) unless the Pod still has
/// `resource_version` and phase `idle`; then phase `running` and the sandbox-id label.
pub fn claim_patch(resource_version: &str, sandbox_id: &str) -> Value {
    let phase = label_pointer(labels::PHASE);
    json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
        {"op": "test", "path": phase, "value": SlotPhase::Idle.as_str()},
        {"op": "replace", "path": phase, "value": CLAIMED_PHASE},
        {"op": "add", "path": label_pointer(labels::SANDBOX_ID), "value": sandbox_id},
    ])
}

/// The release patch (JSON merge patch, idempotent): phase `idle`, no sandbox-id label.
pub fn release_patch() -> Value {
    json!({"metadata": {"labels": {labels::PHASE: SlotPhase::Idle.as_str(), labels::SANDBOX_ID: null}}})
}

/// Slots with a claim in flight in this process.
#[derive(Debug, Default)]
pub struct Reservations {
    slots: Mutex<HashSet<String>>,
}

/// A held reservation; dropping it frees the slot for the next claim attempt.
#[derive(Debug)]
pub struct Reservation<'a> {
    owner: &'a Reservations,
    slot: String,
}

impl Reservations {
    /// Reserve `slot`, or `None` when another claim of it is in flight.
    pub fn try_reserve(&self, slot: &str) -> Option<Reservation<'_>> {
        self.slots.lock().insert(slot.to_owned()).then(|| Reservation { owner: self, slot: slot.to_owned() })
    }

    /// Whether a claim of `slot` is in flight.
    pub fn is_reserved(&self, slot: &str) -> bool {
        self.slots.lock().contains(slot)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.owner.slots.lock().remove(&self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_pointers_escape_the_slash_of_the_prefix() {
        assert_eq!(label_pointer("agentbox.dev/phase"), "/metadata/labels/agentbox.dev~1phase");
        assert_eq!(label_pointer("a~b/c"), "/metadata/labels/a~0b~1c");
    }

    #[test]
    fn label_values_follow_the_kubernetes_rules() {
        assert!(is_label_value("0190b7a2-6d1c-7cc3-9a4e-2f1b3c4d5e6f"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-a"));
        assert!(!is_label_value("a/b"));
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn a_reservation_is_exclusive_until_dropped() {
        let r = Reservations::default();
        let first = r.try_reserve("s").expect("free");
        assert!(r.try_reserve("s").is_none(), "a second claim of the same slot is refused");
        assert!(r.try_reserve("t").is_some(), "other slots are independent");
        assert!(r.is_reserved("s"));
        drop(first);
        assert!(!r.is_reserved("s"));
        assert!(r.try_reserve("s").is_some());
    }

    #[test]
    fn the_claim_patch_tests_version_and_phase_before_writing() {
        let p = claim_patch("41", "sb-1");
        assert_eq!(p[0], json!({"op": "test", "path": "/metadata/resourceVersion", "value": "41"}));
        assert_eq!(p[1], json!({"op": "test", "path": "/metadata/labels/agentbox.dev~1phase", "value": "idle"}));
        assert_eq!(p[2]["op"], "replace");
        assert_eq!(p[3], json!({"op": "add", "path": "/metadata/labels/agentbox.dev~1sandbox-id", "value": "sb-1"}));
    }
}
