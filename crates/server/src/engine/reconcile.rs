//! The per-pool reconciler: keeps `replicas` slots, replaces dead ones, fails sandboxes whose main
//! container died, and finishes pool deletion. `reconcile_pool` is idempotent and does not care
//! why it was woken.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use agentbox_core::backend::{BackendError, ContainerState, SlotSpec};
use agentbox_core::model::{Pool, SandboxStatus, Slot, SlotPhase};
use agentbox_core::reconcile::{Action, SlotView, decide};

use super::events::PoolEventType;
use super::{Engine, PoolRt, age_since, now};

/// An idle slot whose process dies within this long of becoming idle is reported as `CrashLoop`.
const CRASH_LOOP_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

static SLOT_SEQ: AtomicU32 = AtomicU32::new(0);

/// `{pool}-{8 hex}`: unique, DNS-label safe, at most 63 characters.
fn new_slot_id(pool: &str) -> String {
    let r: u32 = rand::random::<u32>() ^ SLOT_SEQ.fetch_add(1, Ordering::Relaxed).rotate_left(20);
    let prefix: String = pool.chars().take(54).collect();
    format!("{prefix}-{r:08x}")
}

/// Failure reason and exit code of a main container that is not running.
pub(crate) fn exit_reason(state: &ContainerState) -> (&'static str, Option<i32>) {
    match state {
        ContainerState::Exited { oom_killed: true, exit_code } => ("OOMKilled", *exit_code),
        ContainerState::Exited { exit_code, .. } => ("Error", *exit_code),
        _ => ("ContainerMissing", None),
    }
}

impl Engine {
    /// The slots of one pool, from the store.
    pub(crate) fn slots_of(&self, pool: &Pool) -> Result<Vec<Slot>, agentbox_core::error::AppError> {
        Ok(self
            .store
            .list_slots()?
            .into_iter()
            .filter(|s| s.pool == pool.name && s.namespace == pool.namespace)
            .collect())
    }

    /// Whether this replica runs the reconcilers now (see [`super::EngineConfig::leader`]).
    pub fn is_leader(&self) -> bool {
        self.cfg.leader.as_ref().is_none_or(|rx| *rx.borrow())
    }

    pub(crate) async fn run_reconciler(self: Arc<Self>, rt: Arc<PoolRt>) {
        let mut stop = self.shutdown.subscribe();
        let mut leader = self.cfg.leader.clone();
        loop {
            if let Some(rx) = leader.as_mut()
                && !*rx.borrow_and_update()
            {
                // Another replica holds the Lease: this one only serves the API. Wait until it leads.
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            tracing::warn!(pool = %rt.key.1, "leader election ended; this replica stops reconciling");
                            return;
                        }
                    }
                    _ = stop.changed() => return,
                }
                continue;
            }
            match self.reconcile_pool(&rt).await {
                Ok(true) => {}
                Ok(false) => {
                    if self.forget_pool_rt(&rt.key) {
                        tracing::info!(pool = %rt.key.1, namespace = %rt.key.0, "pool gone; reconciler stops");
                        return;
                    }
                    // Recreated under the same name: keep reconciling it.
                    continue;
                }
                Err(e) => tracing::warn!(pool = %rt.key.1, error = %e, "reconcile failed; will retry"),
            }
            tokio::select! {
                _ = rt.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.reconcile_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass. `Ok(false)` when the pool no longer exists.
    pub(crate) async fn reconcile_pool(
        self: &Arc<Self>,
        rt: &Arc<PoolRt>,
    ) -> Result<bool, agentbox_core::error::AppError> {
        let Some(pool) = self.store.get_pool(&rt.key.0, &rt.key.1)? else { return Ok(false) };
        let slots = self.slots_of(&pool)?;

        // Health: idle slots whose container died are replaced; running sandboxes whose main
        // container died are failed with the reason the backend saw.
        for s in slots.iter().filter(|s| matches!(s.phase, SlotPhase::Idle | SlotPhase::Running)) {
            // `failure`: a reason the backend knows better than the container state (Kubernetes:
            // Evicted, the Pod deleted from outside), with its message.
            let (state, failure) = match self.backend.inspect(&s.slot_id).await {
                Ok(obs) => (obs.main().map(|c| c.state.clone()).unwrap_or(ContainerState::Missing), obs.failure),
                Err(BackendError::SlotNotFound(_)) => (ContainerState::Missing, None),
                Err(e) => {
                    tracing::warn!(slot = %s.slot_id, error = %e, "inspect failed");
                    continue;
                }
            };
            if state.is_running() && failure.is_none() {
                continue;
            }
            let (mut reason, exit_code) = exit_reason(&state);
            let mut detail = None;
            if let Some((r, m)) = &failure {
                reason = r.as_str();
                detail = Some(m.clone());
            }
            match s.phase {
                SlotPhase::Idle => {
                    if rt.queue.lock().remove_idle(&s.slot_id) {
                        tracing::warn!(slot = %s.slot_id, reason, "idle slot died; replacing it");
                        // An idle process that dies soon after it started will do so again in the
                        // replacement: report that as a crash loop.
                        let event = match reason {
                            "OOMKilled" => "OOMKilled",
                            _ if age_since(s.idle_since.as_deref()) < CRASH_LOOP_WINDOW => "CrashLoop",
                            _ => "Failed",
                        };
                        let msg = match exit_code {
                            Some(c) => format!("idle container exited with code {c} ({reason}); replacing the slot"),
                            None => format!("idle container is gone ({reason}); replacing the slot"),
                        };
                        self.pool_event(rt, PoolEventType::Warning, event, &msg, Some(&s.slot_id));
                        self.destroy_slot(s).await;
                    }
                }
                _ => {
                    let msg = match (&detail, exit_code) {
                        (Some(m), _) => format!("{m} ({reason})"),
                        (None, Some(c)) => format!("main container exited with code {c} ({reason})"),
                        (None, None) => format!("main container is gone ({reason})"),
                    };
                    let event = if reason == "OOMKilled" { "OOMKilled" } else { "Failed" };
                    let sb = s.sandbox_id.as_deref().unwrap_or("-");
                    self.pool_event(
                        rt,
                        PoolEventType::Warning,
                        event,
                        &format!("sandbox {sb}: {msg}"),
                        Some(&s.slot_id),
                    );
                    self.fail_sandbox(s, reason, msg, exit_code);
                }
            }
        }

        self.roll_outdated_idle_slots(&pool, rt, &self.slots_of(&pool)?).await;

        let slots = self.slots_of(&pool)?;
        let pool = self.autoscale_pass(rt, pool, &slots)?;
        let views: Vec<SlotView> = slots
            .iter()
            .map(|s| SlotView {
                slot_id: s.slot_id.clone(),
                phase: s.phase,
                age_in_phase: match s.phase {
                    SlotPhase::Idle => age_since(s.idle_since.as_deref()),
                    _ => age_since(s.idle_since.as_deref().or(Some(&s.created_at))),
                },
            })
            .collect();
        let creating = slots.iter().filter(|s| s.phase == SlotPhase::Creating).count() as u32;
        let budget = self.cfg.max_parallel_creates.saturating_sub(creating);
        let actions = decide(pool.spec.replicas, &views, pool.deleting, budget);
        let surplus_idle: Vec<String> = actions
            .iter()
            .filter_map(|a| if let Action::Destroy(ids) = a { Some(ids) } else { None })
            .flatten()
            .filter(|id| slots.iter().any(|s| &s.slot_id == *id && s.phase == SlotPhase::Idle))
            .cloned()
            .collect();
        self.settle_protection(rt, &pool, &slots, &surplus_idle);
        for action in actions {
            match action {
                Action::Create(n) => {
                    for _ in 0..n {
                        self.spawn_create_slot(&pool, rt);
                    }
                }
                Action::Destroy(ids) => {
                    for id in ids {
                        let Some(s) = slots.iter().find(|s| s.slot_id == id) else { continue };
                        match s.phase {
                            // Only a slot we can still take out of the idle queue is ours to
                            // destroy: otherwise a claim got it first.
                            // With autoscaling, only after the slot's protection window.
                            SlotPhase::Idle => {
                                if !self.scale_down_removal_due(rt, &pool, &id) || !rt.queue.lock().remove_idle(&id) {
                                    continue;
                                }
                                self.destroy_slot(s).await;
                                if !pool.deleting {
                                    self.scale_down_removed(rt, &pool, &id);
                                }
                            }
                            SlotPhase::Running => {
                                if let Some(sb) = &s.sandbox_id {
                                    let _ = self.release(
                                        sb,
                                        SandboxStatus::Released,
                                        Some(("PoolDeleted", format!("pool {} was deleted", pool.name))),
                                        None,
                                    );
                                }
                            }
                            _ => self.destroy_slot(s).await,
                        }
                    }
                }
            }
        }
        if pool.deleting && slots.is_empty() {
            self.store.delete_pool(&pool.namespace, &pool.name)?;
            tracing::info!(pool = %pool.name, "pool deleted");
            return Ok(false);
        }
        self.publish_status(rt, &pool).await;
        Ok(true)
    }

    /// Hand the pool's status to the backend (Kubernetes: the `SandboxPool` status subresource)
    /// when it differs from the one last published, so that an unchanged pool costs no API call.
    /// A failure is logged and retried on the next pass.
    async fn publish_status(&self, rt: &Arc<PoolRt>, pool: &Pool) {
        if !self.backend.publishes_pool_status() {
            return;
        }
        let report = match self.pool_status_report(pool) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(pool = %pool.name, error = %e, "cannot compute the pool status to publish");
                return;
            }
        };
        if rt.published_status.lock().as_ref() == Some(&report) {
            return;
        }
        // Bounded: a slow API server must not hold up the pass (refill, timeouts, autoscaling).
        let publish = self.backend.publish_pool_status(&pool.namespace, &pool.name, &report);
        match tokio::time::timeout(std::time::Duration::from_secs(5), publish).await {
            Ok(Ok(())) => *rt.published_status.lock() = Some(report),
            Ok(Err(e)) => tracing::warn!(pool = %pool.name, error = %e, "cannot publish the pool status; will retry"),
            Err(_) => tracing::warn!(pool = %pool.name, "publishing the pool status took over 5 s; will retry"),
        }
    }

    /// Replace idle slots made from an older definition of the pool (template sync, policy or image
    /// override change): a batch of at most `max_parallel_creates` per pass, taken out of the idle
    /// queue first so no claim gets one mid-destroy; the decision below recreates them.
    async fn roll_outdated_idle_slots(&self, pool: &Pool, rt: &Arc<PoolRt>, slots: &[Slot]) {
        if pool.deleting {
            return;
        }
        let want = pool.slot_spec_hash();
        let mut rolled = 0;
        for s in slots {
            if rolled >= self.cfg.max_parallel_creates {
                break;
            }
            let outdated = s.spec_hash.as_deref().is_some_and(|h| h != want);
            if s.phase == SlotPhase::Idle && outdated && rt.queue.lock().remove_idle(&s.slot_id) {
                tracing::info!(pool = %pool.name, slot = %s.slot_id, "replacing an idle slot made from an older pool definition");
                self.destroy_slot(s).await;
                rolled += 1;
            }
        }
    }

    pub(crate) async fn destroy_slot(&self, s: &Slot) {
        let lock = self.slot_lock(&s.slot_id);
        let _g = lock.lock().await;
        if let Err(e) = self.backend.destroy_slot(&s.slot_id).await {
            tracing::warn!(slot = %s.slot_id, error = %e, "destroy failed; will retry");
            return;
        }
        let _ = self.store.delete_slot(&s.slot_id);
        drop(_g);
        self.drop_slot_lock(&s.slot_id);
    }

    /// Record a new slot as Creating, create it in the backend, then make it Idle (or Failed with a
    /// diagnostic) and hand it to a waiting request.
    fn spawn_create_slot(self: &Arc<Self>, pool: &Pool, rt: &Arc<PoolRt>) {
        let slot = Slot {
            slot_id: new_slot_id(&pool.name),
            pool: pool.name.clone(),
            namespace: pool.namespace.clone(),
            phase: SlotPhase::Creating,
            sandbox_id: None,
            images: Default::default(),
            ip: None,
            created_at: now(),
            idle_since: None,
            failure_reason: None,
            failure_message: None,
            spec_hash: Some(pool.slot_spec_hash()),
        };
        if let Err(e) = self.store.put_slot(&slot) {
            tracing::warn!(error = %e, "could not record a new slot");
            return;
        }
        let spec = SlotSpec {
            slot_id: slot.slot_id.clone(),
            pool: pool.name.clone(),
            namespace: pool.namespace.clone(),
            runtime: pool.spec.template.runtime_class,
            containers: pool.idle_containers(),
            resources: agentbox_core::validate::slot_resources(&pool.spec.template.containers).unwrap_or_default(),
            egress: pool.spec.template.egress,
            registry_credentials: pool.overrides.image_pull_secret.clone().unwrap_or_default().registries,
        };
        let me = Arc::clone(self);
        let rt = Arc::clone(rt);
        tokio::spawn(async move {
            let mut slot = slot;
            match me.backend.create_slot(&spec).await {
                Ok(obs) => {
                    slot.phase = SlotPhase::Idle;
                    slot.ip = obs.ip.clone();
                    slot.images = obs.images();
                    slot.idle_since = Some(now());
                    if let Err(e) = me.store.put_slot(&slot) {
                        tracing::warn!(slot = %slot.slot_id, error = %e, "could not record idle slot; destroying it");
                        let _ = me.backend.destroy_slot(&slot.slot_id).await;
                        let _ = me.store.delete_slot(&slot.slot_id);
                        return;
                    }
                    rt.queue.lock().push_idle(slot.slot_id.clone());
                    me.metrics.slot_created(&slot.namespace, &slot.pool, true);
                    me.dispatch(&rt);
                }
                Err(e) => {
                    let reason = match &e {
                        BackendError::Image { .. } => "ImagePullBackOff",
                        _ => "CreateFailed",
                    };
                    let msg = format!("slot could not be created: {e}");
                    me.pool_event(&rt, PoolEventType::Warning, reason, &msg, Some(&slot.slot_id));
                    let _ = me.backend.destroy_slot(&slot.slot_id).await;
                    slot.phase = SlotPhase::Failed;
                    slot.failure_reason = Some(reason.into());
                    slot.failure_message = Some(e.to_string());
                    slot.idle_since = Some(now());
                    let _ = me.store.put_slot(&slot);
                    me.metrics.slot_created(&slot.namespace, &slot.pool, false);
                }
            }
            rt.wake.notify_one();
        });
    }
}
