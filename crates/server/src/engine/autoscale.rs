//! The autoscaler of each pool (SPEC §5), run once per reconcile pass, and the scale-down
//! protection window.
//!
//! The decision itself is [`agentbox_core::autoscale::decide_scale`]; this file feeds it the pool's
//! counts, persists a new `spec.replicas` through the store with the pool's `resourceVersion`
//! (so a restart keeps the size, and a concurrent `PUT` wins: the autoscaler re-reads and
//! continues from there next pass), and records an event per decision.
//!
//! **Protection window.** Scale-down only lowers `replicas`; [`agentbox_core::reconcile::decide`]
//! then picks the oldest idle slot as surplus. With autoscaling on, that slot is not destroyed at
//! once: it is marked protected and stays in the idle queue (claimable — it is even the next one a
//! claim takes) for `protectionWindowSeconds`. When the window has passed and the slot is still
//! surplus and still idle, it is taken out of the queue and destroyed (`ScaleDownRemoved`). If a
//! claim takes it first, the removal is canceled (`ScaleDownCanceled`): the sandbox keeps its slot
//! and `replicas` stays lowered. That cannot cause a replacement storm: with more slots than
//! `replicas`, `decide` never creates; it picks the next idle surplus slot (which gets its own
//! window), and if there is none the pool stays above `replicas` (phase ScalingDown) until a
//! sandbox ends and its slot comes back idle. A protected slot that stops being surplus (replicas
//! raised) is released from protection. Without autoscaling (manual `PUT replicas`), and when the
//! pool is being deleted, surplus idle slots are destroyed at once.
//!
//! The autoscaler's memory (last scale-up/down, idle-zero-since, protections) is in-process: after
//! a restart cooldowns start afresh, while idle ages come from the store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agentbox_core::autoscale::{AutoscaleClock, AutoscaleInput, ScaleDirection, decide_scale};
use agentbox_core::error::AppError;
use agentbox_core::model::{Pool, Slot, SlotPhase};
use agentbox_core::store::StoreError;

use super::events::PoolEventType;
use super::pools::MAX_REPLICAS;
use super::{Engine, PoolRt, age_since};
use crate::auth::AuthInfo;

/// The autoscaler's memory for one pool.
#[derive(Debug, Default)]
pub(crate) struct PoolAutoscaler {
    clock: AutoscaleClock,
    /// Idle slots picked by scale-down, with the end of their protection window.
    protected: HashMap<String, Instant>,
}

fn autoscaling_on(pool: &Pool) -> bool {
    !pool.deleting && pool.spec.autoscaling.as_ref().is_some_and(|a| a.enabled)
}

impl Engine {
    /// One autoscaler step for `pool` (whose slots are `slots`). Returns the pool to reconcile
    /// against: the same, or with the new `replicas` once it is stored.
    pub(crate) fn autoscale_pass(&self, rt: &PoolRt, pool: Pool, slots: &[Slot]) -> Result<Pool, AppError> {
        let Some(policy) = pool.spec.autoscaling.clone().filter(|_| autoscaling_on(&pool)) else {
            rt.autoscale.lock().protected.clear();
            return Ok(pool);
        };
        let counts = self.pool_counts(&pool)?;
        let now = Instant::now();
        let mut input = AutoscaleInput {
            replicas: pool.spec.replicas,
            min: pool.spec.min_replicas.unwrap_or(0),
            max: pool.spec.max_replicas.unwrap_or(MAX_REPLICAS),
            counts,
            oldest_idle_age: slots
                .iter()
                .filter(|s| s.phase == SlotPhase::Idle)
                .map(|s| age_since(s.idle_since.as_deref()))
                .max(),
            ..Default::default()
        };
        let decision = {
            let mut a = rt.autoscale.lock();
            a.clock.observe_idle(counts.idle.saturating_sub(counts.unavailable_idle), now);
            a.clock.fill(&mut input, now);
            decide_scale(&policy, &input)
        };
        let Some(d) = decision else { return Ok(pool) };

        let mut next = pool.clone();
        next.spec.replicas = d.new_replicas;
        next.resource_version = pool.resource_version + 1;
        // Scale-out is admitted against the pool's quota like a manual one (the pool's charge is
        // fixed at creation, so the identity is only used for messages).
        let _quota = match self.admit_reservation(&AuthInfo::dev_admin(), &mut next, Some(&pool)) {
            Ok(g) => g,
            Err(e) => {
                rt.autoscale.lock().clock.record(d.direction, now);
                let msg = format!("scale-up {} -> {} refused: {}", d.from, d.new_replicas, e.message);
                self.pool_event(rt, PoolEventType::Warning, "ScaleUpRefused", &msg, None);
                return Ok(pool);
            }
        };
        match self.store.update_pool(&next, pool.resource_version) {
            Ok(()) => {}
            // Changed concurrently (a PUT, a sync): decide again from the new pool next pass.
            Err(StoreError::Conflict(_)) => return Ok(pool),
            Err(e) => return Err(e.into()),
        }
        rt.autoscale.lock().clock.record(d.direction, now);
        let reason = match d.direction {
            ScaleDirection::Up => "ScaledUp",
            ScaleDirection::Down => "ScaledDown",
        };
        let msg = format!("replicas {} -> {}: {}", d.from, d.new_replicas, d.reason);
        self.pool_event(rt, PoolEventType::Normal, reason, &msg, None);
        Ok(next)
    }

    /// Forget protections of slots that are no longer idle surplus (`surplus_idle` = the idle
    /// slots this pass wants to remove): a claimed one is a canceled removal.
    pub(crate) fn settle_protection(&self, rt: &PoolRt, pool: &Pool, slots: &[Slot], surplus_idle: &[String]) {
        let stale: Vec<String> = {
            let mut a = rt.autoscale.lock();
            let stale: Vec<String> = a.protected.keys().filter(|id| !surplus_idle.contains(id)).cloned().collect();
            for id in &stale {
                a.protected.remove(id);
            }
            stale
        };
        for id in stale {
            match slots.iter().find(|s| s.slot_id == id).map(|s| s.phase) {
                Some(SlotPhase::Starting | SlotPhase::Running | SlotPhase::Stopping) => {
                    let msg = format!(
                        "slot was claimed during its protection window; it is kept (replicas stay at {})",
                        pool.spec.replicas
                    );
                    self.pool_event(rt, PoolEventType::Normal, "ScaleDownCanceled", &msg, Some(&id));
                }
                Some(SlotPhase::Idle) => {
                    let msg = format!("slot is no longer above the desired size ({} replicas)", pool.spec.replicas);
                    self.pool_event(rt, PoolEventType::Normal, "ScaleDownCanceled", &msg, Some(&id));
                }
                _ => {}
            }
        }
    }

    /// May the reconciler destroy surplus idle slot `slot_id` now? At once without autoscaling;
    /// with it, only once the slot's protection window (started on the first ask) has passed.
    pub(crate) fn scale_down_removal_due(&self, rt: &PoolRt, pool: &Pool, slot_id: &str) -> bool {
        let Some(policy) = pool.spec.autoscaling.as_ref().filter(|_| autoscaling_on(pool)) else { return true };
        let window = Duration::from_secs(policy.scale_down_policy.protection_window_seconds);
        if window.is_zero() {
            return true;
        }
        let now = Instant::now();
        let mut a = rt.autoscale.lock();
        match a.protected.get(slot_id) {
            Some(until) => now >= *until,
            None => {
                a.protected.insert(slot_id.to_string(), now + window);
                drop(a);
                let msg = format!("slot picked for scale-down; it stays claimable for {}s", window.as_secs());
                self.pool_event(rt, PoolEventType::Normal, "ScaleDownPending", &msg, Some(slot_id));
                false
            }
        }
    }

    /// A surplus idle slot was destroyed by scale-down.
    pub(crate) fn scale_down_removed(&self, rt: &PoolRt, pool: &Pool, slot_id: &str) {
        rt.autoscale.lock().protected.remove(slot_id);
        let msg = format!("idle slot removed by scale-down ({} replicas)", pool.spec.replicas);
        self.pool_event(rt, PoolEventType::Normal, "ScaleDownRemoved", &msg, Some(slot_id));
    }
}
