//! The status subresource of a `SandboxPool`, written from the engine's pool status (see
//! [`agentbox_core::backend::Backend::publish_pool_status`]). Pure functions: no API calls here.

use std::collections::HashMap;

use agentbox_core::backend::PoolStatusReport;
use serde_json::{Value, json};

use crate::labels;

/// When each condition of one pool last changed its status, by condition type: `(status,
/// lastTransitionTime)`. Kept by the backend between publishes.
pub type TransitionTimes = HashMap<String, (bool, String)>;

/// The merge patch of `sandboxpools/{pool}/status` for `report`: phase, the counts behind the
/// printer columns (`status.replicas` counts every slot that exists, creating ones included, for
/// the scale subresource), the label selector of the pool's Pods, the conditions and the
/// diagnostics (both lists replaced whole; empty lists clear earlier ones). A condition keeps
/// its `lastTransitionTime` from `times` while its status is unchanged, and gets `now` when it
/// changes; `times` is updated. Fields the engine does not compute (the autoscaler's times) are
/// left alone.
pub fn status_patch(pool: &str, report: &PoolStatusReport, times: &mut TransitionTimes, now: &str) -> Value {
    let c = &report.counts;
    let conditions: Vec<Value> = report
        .conditions
        .iter()
        .map(|cond| {
            let since = match times.get(&cond.kind) {
                Some((status, at)) if *status == cond.status => at.clone(),
                _ => now.to_owned(),
            };
            times.insert(cond.kind.clone(), (cond.status, since.clone()));
            let mut v = json!({
                "type": cond.kind,
                "status": if cond.status { "True" } else { "False" },
                "reason": cond.reason,
                "lastTransitionTime": since,
            });
            if !cond.message.is_empty() {
                v["message"] = json!(cond.message);
            }
            v
        })
        .collect();
    let diagnostics: Vec<Value> = report
        .diagnostics
        .iter()
        .map(|d| {
            let mut v = json!({"pod": d.slot_id, "reason": d.reason});
            if !d.message.is_empty() {
                v["message"] = json!(d.message);
            }
            v
        })
        .collect();
    let phase = serde_json::to_value(report.phase).unwrap_or(Value::Null);
    json!({"status": {
        "phase": phase,
        "replicas": c.total(),
        "idleReplicas": c.idle,
        "unavailableIdleReplicas": c.unavailable_idle,
        "runningReplicas": c.running,
        "startingReplicas": c.starting,
        "stoppingReplicas": c.stopping,
        "failedReplicas": c.failed,
        "pendingRequests": c.pending_requests,
        "selector": format!("{}={pool}", labels::POOL),
        "conditions": conditions,
        "diagnostics": diagnostics,
    }})
}

#[cfg(test)]
mod tests {
    use agentbox_core::backend::{PoolStatusCondition, PoolStatusDiagnostic};
    use agentbox_core::reconcile::{PoolCounts, PoolPhase};

    use super::*;
    use crate::crd::SandboxPoolStatus;

    fn report(degraded: bool) -> PoolStatusReport {
        PoolStatusReport {
            phase: if degraded { PoolPhase::Degraded } else { PoolPhase::Ready },
            counts: PoolCounts { idle: 2, running: 1, failed: u32::from(degraded), creating: 1, ..Default::default() },
            conditions: vec![
                PoolStatusCondition {
                    kind: "Available".into(),
                    status: true,
                    reason: "IdleSlotsAvailable".into(),
                    message: "2 idle slot(s) can be claimed".into(),
                },
                PoolStatusCondition {
                    kind: "Degraded".into(),
                    status: degraded,
                    reason: "X".into(),
                    message: String::new(),
                },
            ],
            diagnostics: if degraded {
                vec![PoolStatusDiagnostic {
                    slot_id: "py-1".into(),
                    reason: "ImagePullBackOff".into(),
                    message: "no such image".into(),
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn the_patch_fills_the_printer_columns_and_reads_back_as_the_crd_status() {
        let mut times = TransitionTimes::new();
        let patch = status_patch("py", &report(true), &mut times, "2026-01-01T00:00:00Z");
        let st: SandboxPoolStatus = serde_json::from_value(patch["status"].clone()).unwrap();
        assert_eq!(st.phase.as_deref(), Some("Degraded"));
        assert_eq!(
            (st.replicas, st.idle_replicas, st.running_replicas, st.failed_replicas, st.starting_replicas),
            (5, 2, 1, 1, 0),
            "replicas counts every slot, creating ones included"
        );
        assert_eq!(st.selector.as_deref(), Some("agentbox.dev/pool=py"));
        assert_eq!(st.conditions[0].status, "True");
        assert_eq!(st.conditions[1].status, "True");
        assert_eq!(st.conditions[1].message, None, "an empty message is left out");
        assert_eq!(st.diagnostics[0].pod, "py-1");
        assert_eq!(st.diagnostics[0].message.as_deref(), Some("no such image"));
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips_and_lists_are_cleared() {
        let mut times = TransitionTimes::new();
        status_patch("py", &report(true), &mut times, "T1");
        let patch = status_patch("py", &report(false), &mut times, "T2");
        let conds = &patch["status"]["conditions"];
        assert_eq!(conds[0]["lastTransitionTime"], "T1", "Available stayed True");
        assert_eq!(conds[1]["lastTransitionTime"], "T2", "Degraded flipped");
        assert_eq!(conds[1]["status"], "False");
        assert_eq!(patch["status"]["diagnostics"], json!([]), "an empty list clears the old diagnostics");
    }
}
