//! Pool reconcile decisions and pool status, computed from what the store and backend say.
//!
//! `decide` is idempotent and never branches on why it was called: given the desired size and the
//! slots that exist, it returns what to do now.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::SlotPhase;

/// One slot as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    pub slot_id: String,
    pub phase: SlotPhase,
    /// Time since the slot entered its current phase (for failed-slot backoff and idle age).
    pub age_in_phase: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create this many new slots.
    Create(u32),
    /// Destroy these slots (idle or failed only, unless the pool is being deleted).
    Destroy(Vec<String>),
}

/// How long a failed slot stays visible (with its diagnostic) before it is replaced.
pub const FAILED_SLOT_BACKOFF: Duration = Duration::from_secs(10);

/// Decide what to do for a pool of `desired` slots.
///
/// - Deleting pool: destroy every slot that is not mid-operation (idle, failed, running: running
///   sandboxes end when their pool is deleted).
/// - Failed slots older than [`FAILED_SLOT_BACKOFF`] are destroyed (and so replaced on the next pass).
/// - Too few slots (failed ones count, so a broken image does not cause a creation storm): create
///   the difference, at most `max_create` at once.
/// - Too many: destroy failed first, then idle ones, oldest idle first. Running, starting and
///   stopping slots are never removed by scale-down.
pub fn decide(desired: u32, slots: &[SlotView], deleting: bool, max_create: u32) -> Vec<Action> {
    if deleting {
        let ids: Vec<String> = slots
            .iter()
            .filter(|s| matches!(s.phase, SlotPhase::Idle | SlotPhase::Failed | SlotPhase::Running))
            .map(|s| s.slot_id.clone())
            .collect();
        return if ids.is_empty() { vec![] } else { vec![Action::Destroy(ids)] };
    }
    let mut destroy: Vec<String> = slots
        .iter()
        .filter(|s| s.phase == SlotPhase::Failed && s.age_in_phase >= FAILED_SLOT_BACKOFF)
        .map(|s| s.slot_id.clone())
        .collect();
    let remaining: Vec<&SlotView> = slots.iter().filter(|s| !destroy.contains(&s.slot_id)).collect();
    let total = remaining.len() as u32;
    let mut actions = vec![];
    if total > desired {
        let mut excess = (total - desired) as usize;
        let mut failed: Vec<&&SlotView> = remaining.iter().filter(|s| s.phase == SlotPhase::Failed).collect();
        failed.sort_by_key(|s| std::cmp::Reverse(s.age_in_phase));
        let mut idle: Vec<&&SlotView> = remaining.iter().filter(|s| s.phase == SlotPhase::Idle).collect();
        idle.sort_by_key(|s| std::cmp::Reverse(s.age_in_phase));
        for s in failed.into_iter().chain(idle) {
            if excess == 0 {
                break;
            }
            destroy.push(s.slot_id.clone());
            excess -= 1;
        }
    } else if total < desired {
        actions.push(Action::Create((desired - total).min(max_create)));
    }
    if !destroy.is_empty() {
        actions.insert(0, Action::Destroy(destroy));
    }
    actions
}

/// Pool phase, by priority: Terminating, Pending (nothing wanted, nothing there), ScalingUp,
/// ScalingDown, Degraded (failed slots), Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PoolPhase {
    Pending,
    Ready,
    ScalingUp,
    ScalingDown,
    Degraded,
    Terminating,
}

/// Slot counts of a pool, as served in pool status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCounts {
    pub idle: u32,
    /// Idle slots whose main container is not running (about to be replaced).
    pub unavailable_idle: u32,
    pub starting: u32,
    pub running: u32,
    pub stopping: u32,
    pub failed: u32,
    /// Slots being created (not yet idle).
    pub creating: u32,
    /// Requests waiting in the claim queue.
    pub pending_requests: u32,
}

impl PoolCounts {
    pub fn add(&mut self, phase: SlotPhase) {
        match phase {
            SlotPhase::Creating => self.creating += 1,
            SlotPhase::Idle => self.idle += 1,
            SlotPhase::Starting => self.starting += 1,
            SlotPhase::Running => self.running += 1,
            SlotPhase::Stopping => self.stopping += 1,
            SlotPhase::Failed => self.failed += 1,
        }
    }
    pub fn total(&self) -> u32 {
        self.idle + self.starting + self.running + self.stopping + self.failed + self.creating
    }
}

pub fn pool_phase(desired: u32, counts: &PoolCounts, deleting: bool) -> PoolPhase {
    let current = counts.total();
    if deleting {
        PoolPhase::Terminating
    } else if desired == 0 && current == 0 {
        PoolPhase::Pending
    } else if current < desired || counts.creating > 0 {
        PoolPhase::ScalingUp
    } else if current > desired {
        PoolPhase::ScalingDown
    } else if counts.failed > 0 || counts.unavailable_idle > 0 {
        PoolPhase::Degraded
    } else {
        PoolPhase::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, phase: SlotPhase, age: u64) -> SlotView {
        SlotView { slot_id: id.into(), phase, age_in_phase: Duration::from_secs(age) }
    }

    #[test]
    fn creates_missing_slots_bounded() {
        assert_eq!(decide(5, &[v("a", SlotPhase::Idle, 1)], false, 100), vec![Action::Create(4)]);
        assert_eq!(decide(500, &[], false, 64), vec![Action::Create(64)]);
        assert_eq!(decide(1, &[v("a", SlotPhase::Running, 1)], false, 10), vec![]);
    }

    #[test]
    fn scale_down_removes_failed_then_oldest_idle_never_running() {
        let slots = [
            v("run", SlotPhase::Running, 100),
            v("young", SlotPhase::Idle, 1),
            v("old", SlotPhase::Idle, 50),
            v("bad", SlotPhase::Failed, 2),
            v("start", SlotPhase::Starting, 1),
        ];
        assert_eq!(decide(3, &slots, false, 10), vec![Action::Destroy(vec!["bad".into(), "old".into()])]);
        assert_eq!(
            decide(0, &slots, false, 10),
            vec![Action::Destroy(vec!["bad".into(), "old".into(), "young".into()])]
        );
    }

    #[test]
    fn lowering_desired_below_busy_slots_only_removes_idle_ones_and_never_creates() {
        // What autoscaler scale-down relies on: it only lowers `desired`.
        let slots = [
            v("r1", SlotPhase::Running, 100),
            v("r2", SlotPhase::Running, 100),
            v("s", SlotPhase::Starting, 1),
            v("st", SlotPhase::Stopping, 1),
            v("c", SlotPhase::Creating, 1),
            v("i", SlotPhase::Idle, 5),
        ];
        assert_eq!(decide(1, &slots, false, 10), vec![Action::Destroy(vec!["i".into()])]);
        assert_eq!(decide(1, &slots[..5], false, 10), vec![], "nothing idle: nothing removed, nothing created");
    }

    #[test]
    fn failed_slots_are_replaced_after_backoff() {
        let slots = [v("bad", SlotPhase::Failed, 60), v("ok", SlotPhase::Idle, 1)];
        assert_eq!(decide(2, &slots, false, 10), vec![Action::Destroy(vec!["bad".into()]), Action::Create(1)]);
        let fresh = [v("bad", SlotPhase::Failed, 1), v("ok", SlotPhase::Idle, 1)];
        assert_eq!(decide(2, &fresh, false, 10), vec![]);
    }

    #[test]
    fn deleting_pool_destroys_all_but_busy() {
        let slots = [v("a", SlotPhase::Idle, 1), v("b", SlotPhase::Stopping, 1), v("c", SlotPhase::Running, 1)];
        assert_eq!(decide(3, &slots, true, 10), vec![Action::Destroy(vec!["a".into(), "c".into()])]);
    }

    #[test]
    fn phases() {
        let mut c = PoolCounts::default();
        assert_eq!(pool_phase(0, &c, false), PoolPhase::Pending);
        assert_eq!(pool_phase(2, &c, false), PoolPhase::ScalingUp);
        c.idle = 2;
        assert_eq!(pool_phase(2, &c, false), PoolPhase::Ready);
        assert_eq!(pool_phase(1, &c, false), PoolPhase::ScalingDown);
        c.idle = 1;
        c.failed = 1;
        assert_eq!(pool_phase(2, &c, false), PoolPhase::Degraded);
        assert_eq!(pool_phase(2, &c, true), PoolPhase::Terminating);
    }
}
