//! The pool autoscaler's decisions (SPEC §5 "Autoscaling"), free of IO and of the wall clock.
//!
//! [`decide_scale`] is a pure function of the policy, the pool's size bounds, its slot counts and a
//! few durations; [`AutoscaleClock`] turns instants given by the caller into those durations, so
//! both are tested with a fake clock. The autoscaler only changes the *desired* number of slots;
//! which slot goes away on scale-down is [`crate::reconcile::decide`]'s business, and that never
//! removes a Running, Starting or Stopping slot.
//!
//! Rules, in order (the first that applies wins):
//! 1. Out of bounds: `replicas < min` → `min`; `replicas > max` → `max`.
//! 2. Scale-up, when `replicas < max`, the cooldown since the last scale-up has passed, no
//!    scale-down happened within the cooldown (anti-thrash), no slot is `failed` (more slots of a
//!    definition that cannot become idle would fail the same way), and either
//!    - *reactive*: no slot is claimable and claims wait that the slots already on their way
//!      (creating, stopping) cannot serve, or
//!    - *proactive*: no slot has been claimable for `idleThresholdSeconds` (0 disables it) while
//!      slots are in use and none is being created.
//!
//!    The step depends on the mode: Conservative +1, Default +max(1, ⌈n/2⌉), Aggressive ×2 (at
//!    least +1); the target is clamped to `max`.
//! 3. Scale-down by exactly one, only when no scale-up was decided, nobody waits, `replicas > min`,
//!    the stabilization period since the last scale-down has passed, there are more claimable idle
//!    slots than slots already above the desired size (those are being removed), and the oldest
//!    idle slot has been idle for at least `idleTimeoutSeconds`.

use std::time::{Duration, Instant};

use crate::model::{AutoscalingSpec, ScaleUpMode};
use crate::reconcile::PoolCounts;

/// Which way a decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleDirection {
    Up,
    Down,
}

/// What triggered a decision (the reason of the event the engine records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTrigger {
    /// Claims are waiting for a slot.
    WaitingClaims,
    /// No slot has been idle for `idleThresholdSeconds`.
    NoIdleSlots,
    /// The oldest idle slot has been idle for `idleTimeoutSeconds`.
    IdleTooLong,
    /// `replicas` was outside `[minReplicas, maxReplicas]`.
    OutOfBounds,
}

/// A change of the desired number of slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleDecision {
    pub from: u32,
    pub new_replicas: u32,
    pub direction: ScaleDirection,
    pub trigger: ScaleTrigger,
    /// Human-readable why, e.g. `"3 claims waiting (Aggressive)"`.
    pub reason: String,
}

/// Everything [`decide_scale`] looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoscaleInput {
    /// The desired number of slots now (`spec.replicas`).
    pub replicas: u32,
    pub min: u32,
    pub max: u32,
    /// Slot counts; claimable idle slots are `idle - unavailable_idle`, waiting claims are
    /// `pending_requests`.
    pub counts: PoolCounts,
    /// How long no slot has been claimable (none: some slot is claimable now).
    pub idle_zero_for: Option<Duration>,
    /// Time since the last scale-up (none: never, as far as this process knows).
    pub since_scale_up: Option<Duration>,
    /// Time since the last scale-down.
    pub since_scale_down: Option<Duration>,
    /// Idle age of the oldest idle slot (none: no idle slot).
    pub oldest_idle_age: Option<Duration>,
}

/// The target of one scale-up step from `n` slots in `mode` (before clamping to max).
pub fn scale_up_target(mode: ScaleUpMode, n: u32) -> u32 {
    let step = match mode {
        ScaleUpMode::Conservative => 1,
        ScaleUpMode::Default => n.div_ceil(2).max(1),
        ScaleUpMode::Aggressive => n.max(1),
    };
    n.saturating_add(step)
}

fn elapsed_at_least(since: Option<Duration>, d: Duration) -> bool {
    since.is_none_or(|s| s >= d)
}

/// Decide whether to change the desired number of slots now (see the module doc for the rules).
pub fn decide_scale(policy: &AutoscalingSpec, i: &AutoscaleInput) -> Option<ScaleDecision> {
    if !policy.enabled {
        return None;
    }
    let (min, max) = (i.min, i.max.max(i.min));
    let decision = |new: u32, direction, trigger, reason: String| {
        Some(ScaleDecision { from: i.replicas, new_replicas: new, direction, trigger, reason })
    };
    if i.replicas < min {
        return decision(min, ScaleDirection::Up, ScaleTrigger::OutOfBounds, format!("below minReplicas {min}"));
    }
    if i.replicas > max {
        return decision(max, ScaleDirection::Down, ScaleTrigger::OutOfBounds, format!("above maxReplicas {max}"));
    }
    let c = &i.counts;
    let claimable = c.idle.saturating_sub(c.unavailable_idle);

    let up = &policy.scale_up_policy;
    let cooldown = Duration::from_secs(up.cooldown_seconds);
    let may_scale_up = i.replicas < max
        && elapsed_at_least(i.since_scale_up, cooldown)
        && elapsed_at_least(i.since_scale_down, cooldown)
        && c.failed == 0;
    if may_scale_up {
        let in_flight = c.creating + c.stopping;
        let trigger = if claimable == 0 && c.pending_requests > in_flight {
            Some((ScaleTrigger::WaitingClaims, format!("{} claim(s) waiting with no idle slot", c.pending_requests)))
        } else if up.idle_threshold_seconds > 0
            && claimable == 0
            && c.creating == 0
            && c.running + c.starting > 0
            && i.idle_zero_for.is_some_and(|d| d >= Duration::from_secs(up.idle_threshold_seconds))
        {
            Some((ScaleTrigger::NoIdleSlots, format!("no idle slot for {}s", up.idle_threshold_seconds)))
        } else {
            None
        };
        if let Some((trigger, why)) = trigger {
            let target = scale_up_target(up.mode, i.replicas).min(max);
            return decision(target, ScaleDirection::Up, trigger, format!("{why} ({:?} mode)", up.mode));
        }
    }

    let down = &policy.scale_down_policy;
    let already_excess = c.total().saturating_sub(i.replicas);
    let may_scale_down = i.replicas > min
        && c.pending_requests == 0
        && claimable > already_excess
        && elapsed_at_least(i.since_scale_down, Duration::from_secs(down.stabilization_seconds))
        && i.oldest_idle_age.is_some_and(|a| a >= Duration::from_secs(down.idle_timeout_seconds));
    if may_scale_down {
        return decision(
            i.replicas - 1,
            ScaleDirection::Down,
            ScaleTrigger::IdleTooLong,
            format!("oldest idle slot idle for at least {}s", down.idle_timeout_seconds),
        );
    }
    None
}

/// The instants the autoscaler remembers for one pool, turned into the durations of
/// [`AutoscaleInput`]. The caller passes `now`, so a test can drive it with a fake clock.
#[derive(Debug, Clone, Default)]
pub struct AutoscaleClock {
    idle_zero_since: Option<Instant>,
    last_scale_up: Option<Instant>,
    last_scale_down: Option<Instant>,
}

impl AutoscaleClock {
    /// Note how many slots are claimable at `now` (maintains "idle has been 0 since").
    pub fn observe_idle(&mut self, claimable: u32, now: Instant) {
        if claimable > 0 {
            self.idle_zero_since = None;
        } else if self.idle_zero_since.is_none() {
            self.idle_zero_since = Some(now);
        }
    }

    /// Fill the clock-derived fields of `input` as of `now`.
    pub fn fill(&self, input: &mut AutoscaleInput, now: Instant) {
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        input.idle_zero_for = since(self.idle_zero_since);
        input.since_scale_up = since(self.last_scale_up);
        input.since_scale_down = since(self.last_scale_down);
    }

    /// A decision in `direction` was applied (or attempted and refused) at `now`: the cooldown or
    /// stabilization period starts.
    pub fn record(&mut self, direction: ScaleDirection, now: Instant) {
        match direction {
            ScaleDirection::Up => self.last_scale_up = Some(now),
            ScaleDirection::Down => self.last_scale_down = Some(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ScaleDownPolicy, ScaleUpPolicy};

    fn policy(mode: ScaleUpMode) -> AutoscalingSpec {
        AutoscalingSpec {
            enabled: true,
            scale_up_policy: ScaleUpPolicy { mode, cooldown_seconds: 30, idle_threshold_seconds: 30 },
            scale_down_policy: ScaleDownPolicy {
                idle_timeout_seconds: 300,
                stabilization_seconds: 60,
                protection_window_seconds: 10,
            },
        }
    }

    fn input(replicas: u32, counts: PoolCounts) -> AutoscaleInput {
        AutoscaleInput { replicas, min: 1, max: 10, counts, ..Default::default() }
    }

    fn busy(running: u32, idle: u32, waiting: u32) -> PoolCounts {
        PoolCounts { running, idle, pending_requests: waiting, ..Default::default() }
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn modes_step_as_specified() {
        assert_eq!(scale_up_target(ScaleUpMode::Conservative, 4), 5);
        assert_eq!(scale_up_target(ScaleUpMode::Default, 1), 2);
        assert_eq!(scale_up_target(ScaleUpMode::Default, 3), 5);
        assert_eq!(scale_up_target(ScaleUpMode::Default, 4), 6);
        assert_eq!(scale_up_target(ScaleUpMode::Aggressive, 3), 6);
        assert_eq!(scale_up_target(ScaleUpMode::Aggressive, 0), 1);
        assert_eq!(scale_up_target(ScaleUpMode::Default, 0), 1);
    }

    #[test]
    fn disabled_policy_never_decides() {
        let mut p = policy(ScaleUpMode::Default);
        p.enabled = false;
        assert_eq!(decide_scale(&p, &input(0, busy(0, 0, 5))), None);
    }

    #[test]
    fn reactive_scale_up_when_claims_wait_clamped_to_max() {
        let d = decide_scale(&policy(ScaleUpMode::Aggressive), &input(3, busy(3, 0, 4))).unwrap();
        assert_eq!((d.new_replicas, d.direction, d.trigger), (6, ScaleDirection::Up, ScaleTrigger::WaitingClaims));
        let d = decide_scale(&policy(ScaleUpMode::Aggressive), &input(8, busy(8, 0, 4))).unwrap();
        assert_eq!(d.new_replicas, 10, "clamped to max");
        assert_eq!(decide_scale(&policy(ScaleUpMode::Aggressive), &input(10, busy(10, 0, 4))), None, "at max");
    }

    #[test]
    fn waiting_claims_covered_by_slots_on_the_way_do_not_scale_up() {
        let c = PoolCounts { running: 2, creating: 2, pending_requests: 2, ..Default::default() };
        assert_eq!(decide_scale(&policy(ScaleUpMode::Default), &input(4, c)), None);
        let c = PoolCounts { running: 2, creating: 1, stopping: 1, pending_requests: 3, ..Default::default() };
        let d = decide_scale(&policy(ScaleUpMode::Default), &input(4, c)).unwrap();
        assert_eq!(d.new_replicas, 6);
    }

    #[test]
    fn cooldown_blocks_scale_up_and_recent_scale_down_too() {
        let p = policy(ScaleUpMode::Conservative);
        let mut i = input(2, busy(2, 0, 1));
        i.since_scale_up = secs(10);
        assert_eq!(decide_scale(&p, &i), None, "within cooldown");
        i.since_scale_up = secs(30);
        assert_eq!(decide_scale(&p, &i).unwrap().new_replicas, 3);
        i.since_scale_down = secs(5);
        assert_eq!(decide_scale(&p, &i), None, "anti-thrash: scaled down within the cooldown");
    }

    #[test]
    fn proactive_scale_up_after_idle_threshold() {
        let p = policy(ScaleUpMode::Default);
        let mut i = input(2, busy(2, 0, 0));
        i.idle_zero_for = secs(29);
        assert_eq!(decide_scale(&p, &i), None);
        i.idle_zero_for = secs(30);
        let d = decide_scale(&p, &i).unwrap();
        assert_eq!((d.new_replicas, d.trigger), (3, ScaleTrigger::NoIdleSlots));
        // Slots on their way, or nothing in use: no proactive growth.
        let mut creating = i.clone();
        creating.counts.creating = 1;
        assert_eq!(decide_scale(&p, &creating), None);
        let mut empty = input(0, PoolCounts::default());
        empty.min = 0;
        empty.idle_zero_for = secs(100);
        assert_eq!(decide_scale(&p, &empty), None);
        // A threshold of 0 disables the proactive rule.
        let mut p0 = p.clone();
        p0.scale_up_policy.idle_threshold_seconds = 0;
        assert_eq!(decide_scale(&p0, &i), None);
    }

    #[test]
    fn failed_slots_hold_scale_up() {
        let c = PoolCounts { running: 1, failed: 1, pending_requests: 3, ..Default::default() };
        assert_eq!(decide_scale(&policy(ScaleUpMode::Aggressive), &input(2, c)), None);
    }

    #[test]
    fn scale_down_one_at_a_time_after_idle_timeout_and_stabilization() {
        let p = policy(ScaleUpMode::Default);
        let mut i = input(4, busy(1, 3, 0));
        i.oldest_idle_age = secs(299);
        assert_eq!(decide_scale(&p, &i), None, "not idle long enough");
        i.oldest_idle_age = secs(300);
        let d = decide_scale(&p, &i).unwrap();
        assert_eq!((d.new_replicas, d.direction, d.trigger), (3, ScaleDirection::Down, ScaleTrigger::IdleTooLong));
        i.since_scale_down = secs(59);
        assert_eq!(decide_scale(&p, &i), None, "within stabilization");
        i.since_scale_down = secs(60);
        assert_eq!(decide_scale(&p, &i).unwrap().new_replicas, 3);
        let mut p0 = p.clone();
        p0.scale_down_policy.stabilization_seconds = 0;
        i.since_scale_down = secs(0);
        assert_eq!(decide_scale(&p0, &i).unwrap().new_replicas, 3, "a stabilization of 0 is valid");
    }

    #[test]
    fn scale_down_never_below_min_nor_with_waiters_nor_counting_doomed_slots() {
        let p = policy(ScaleUpMode::Default);
        let mut i = input(1, busy(0, 1, 0));
        i.oldest_idle_age = secs(1000);
        assert_eq!(decide_scale(&p, &i), None, "at min");
        let mut i = input(3, busy(1, 2, 0));
        i.oldest_idle_age = secs(1000);
        i.counts.pending_requests = 1;
        assert_eq!(decide_scale(&p, &i), None, "somebody waits");
        // replicas already lowered to 2 while 3 slots exist: the one idle slot above it is being
        // removed, so only one idle slot really counts; a second, surplus one does.
        let mut i = input(2, busy(1, 1, 0));
        i.counts.idle = 2;
        i.oldest_idle_age = secs(1000);
        assert_eq!(decide_scale(&p, &i).unwrap().new_replicas, 1);
        i.counts.idle = 1;
        i.counts.running = 2;
        assert_eq!(decide_scale(&p, &i), None, "the only idle slot is already being removed");
        // Unavailable idle slots are not claimable.
        let mut i = input(3, busy(1, 2, 0));
        i.counts.unavailable_idle = 2;
        i.oldest_idle_age = secs(1000);
        assert_eq!(decide_scale(&p, &i), None);
    }

    #[test]
    fn out_of_bounds_is_clamped_first() {
        let p = policy(ScaleUpMode::Default);
        let mut i = input(0, PoolCounts::default());
        i.min = 2;
        let d = decide_scale(&p, &i).unwrap();
        assert_eq!((d.new_replicas, d.trigger), (2, ScaleTrigger::OutOfBounds));
        let d = decide_scale(&p, &input(12, busy(12, 0, 0))).unwrap();
        assert_eq!((d.new_replicas, d.direction), (10, ScaleDirection::Down));
    }

    #[test]
    fn scale_up_is_checked_before_scale_down() {
        let p = policy(ScaleUpMode::Conservative);
        let mut i = input(3, busy(3, 0, 2));
        i.oldest_idle_age = secs(1000);
        assert_eq!(decide_scale(&p, &i).unwrap().direction, ScaleDirection::Up);
    }

    #[test]
    fn clock_tracks_idle_zero_and_last_scales_with_a_fake_clock() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut clock = AutoscaleClock::default();
        let p = policy(ScaleUpMode::Conservative);
        let mut i = input(2, busy(2, 0, 0));
        clock.observe_idle(0, at(0));
        clock.observe_idle(0, at(10));
        clock.fill(&mut i, at(20));
        assert_eq!(i.idle_zero_for, secs(20), "counted from the first observation of zero");
        assert_eq!(decide_scale(&p, &i), None);
        clock.fill(&mut i, at(30));
        let d = decide_scale(&p, &i).unwrap();
        clock.record(d.direction, at(30));
        i.replicas = d.new_replicas;
        clock.fill(&mut i, at(45));
        assert_eq!(i.since_scale_up, secs(15));
        assert_eq!(decide_scale(&p, &i), None, "cooldown after the scale-up");
        clock.fill(&mut i, at(60));
        assert_eq!(decide_scale(&p, &i).unwrap().new_replicas, 4);
        clock.observe_idle(1, at(61));
        clock.fill(&mut i, at(100));
        assert_eq!(i.idle_zero_for, None, "reset once a slot is claimable");
        clock.record(ScaleDirection::Down, at(100));
        clock.fill(&mut i, at(130));
        assert_eq!(i.since_scale_down, secs(30));
    }

    #[test]
    fn model_defaults_match_the_spec() {
        let a: AutoscalingSpec = serde_json::from_value(serde_json::json!({"enabled": true})).unwrap();
        assert_eq!(a.scale_up_policy, ScaleUpPolicy::default());
        assert_eq!(a.scale_up_policy.mode, ScaleUpMode::Default);
        assert_eq!((a.scale_up_policy.cooldown_seconds, a.scale_up_policy.idle_threshold_seconds), (30, 30));
        let d = &a.scale_down_policy;
        assert_eq!((d.idle_timeout_seconds, d.stabilization_seconds, d.protection_window_seconds), (300, 60, 10));
        let partial: AutoscalingSpec =
            serde_json::from_value(serde_json::json!({"enabled": true, "scaleDownPolicy": {"idleTimeoutSeconds": 5}}))
                .unwrap();
        assert_eq!(partial.scale_down_policy.stabilization_seconds, 60);
        assert_eq!(partial.scale_down_policy.protection_window_seconds, 10);
    }
}
