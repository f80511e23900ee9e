//! Start-up recovery: reconcile what the store says with what the backend still runs, so that a
//! `kill -9` of the server loses nothing and leaks nothing.

use std::collections::HashMap;
use std::sync::Arc;

use agentbox_core::error::AppError;
use agentbox_core::model::{SandboxStatus, SlotPhase};

use super::Engine;

impl Engine {
    /// See ARCHITECTURE.md, "Restart recovery", for the rules applied per slot phase.
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<(), AppError> {
        let observed: HashMap<String, _> =
            self.backend.list_slots().await?.into_iter().map(|o| (o.slot_id.clone(), o)).collect();
        let slots = self.store.list_slots()?;
        let known: std::collections::HashSet<&str> = slots.iter().map(|s| s.slot_id.as_str()).collect();

        // Slots the backend runs but the store never recorded (crash between create and record).
        for id in observed.keys().filter(|id| !known.contains(id.as_str())) {
            tracing::info!(slot = %id, "destroying orphaned slot");
            let _ = self.backend.destroy_slot(id).await;
        }

        let mut idle: Vec<(String, String, String, String)> = vec![];
        let mut adopted = 0usize;
        // Adopted slots whose main container runs: their agents are checked below.
        let mut live: Vec<String> = vec![];
        for mut slot in slots {
            let obs = observed.get(&slot.slot_id);
            let main_running = obs.and_then(|o| o.main()).is_some_and(|c| c.state.is_running());
            match slot.phase {
                SlotPhase::Creating => {
                    // The create may have finished or not: start over.
                    let _ = self.backend.destroy_slot(&slot.slot_id).await;
                    let _ = self.store.delete_slot(&slot.slot_id);
                }
                SlotPhase::Idle if main_running => {
                    idle.push((
                        slot.namespace.clone(),
                        slot.pool.clone(),
                        slot.idle_since.clone().unwrap_or_default(),
                        slot.slot_id.clone(),
                    ));
                    adopted += 1;
                    live.push(slot.slot_id.clone());
                }
                SlotPhase::Running if main_running => {
                    adopted += 1;
                    live.push(slot.slot_id.clone());
                }
                SlotPhase::Idle | SlotPhase::Running if obs.is_none() => {
                    // The slot's host state is gone: its sandbox failed; the record goes.
                    if let Some(id) = slot.sandbox_id.clone()
                        && let Ok(Some(mut sb)) = self.store.get_sandbox(&id)
                    {
                        sb.status = SandboxStatus::Failed;
                        sb.failure_reason = Some("SlotLost".into());
                        sb.failure_message =
                            Some("the sandbox's container disappeared while the server was down".into());
                        sb.terminated_at = Some(super::now());
                        let _ = self.store.put_sandbox(&sb);
                    }
                    let _ = self.store.delete_slot(&slot.slot_id);
                }
                SlotPhase::Idle => {
                    let _ = self.backend.destroy_slot(&slot.slot_id).await;
                    let _ = self.store.delete_slot(&slot.slot_id);
                }
                SlotPhase::Running => {
                    // The main container died while we were away: fail the sandbox, recycle.
                    let state = obs
                        .and_then(|o| o.main())
                        .map(|c| c.state.clone())
                        .unwrap_or(agentbox_core::backend::ContainerState::Missing);
                    let (reason, code) = super::reconcile::exit_reason(&state);
                    self.fail_sandbox(&slot, reason, "main container exited while the server was down".into(), code);
                }
                SlotPhase::Starting => {
                    // Nobody got an answer for this claim: cancel it and recycle the slot.
                    if let Some(id) = slot.sandbox_id.clone() {
                        let _ = self.release(
                            &id,
                            SandboxStatus::Canceled,
                            Some(("ServerRestart", "the server restarted while the sandbox was starting".into())),
                            None,
                        );
                    } else {
                        slot.phase = SlotPhase::Stopping;
                        let _ = self.store.put_slot(&slot);
                        let me = Arc::clone(self);
                        let id = slot.slot_id.clone();
                        tokio::spawn(async move { me.recycle(&id).await });
                    }
                }
                SlotPhase::Stopping => {
                    let me = Arc::clone(self);
                    let id = slot.slot_id.clone();
                    tokio::spawn(async move { me.recycle(&id).await });
                }
                SlotPhase::Failed => {}
            }
        }
        // Idle slots go back into their queues oldest-idle first.
        idle.sort_by(|a, b| a.2.cmp(&b.2));
        for (ns, pool, _, slot_id) in idle {
            if let Ok(Some(p)) = self.store.get_pool(&ns, &pool) {
                let rt = self.ensure_pool_rt(&p);
                rt.queue.lock().push_idle(slot_id);
            }
        }
        // The agents of adopted slots normally kept running with their containers (the binary is
        // bind-mounted into them); one that died while the server was down is started again, in
        // the background so start-up does not wait for the probes.
        if self.cfg.agent_port.is_some() && !live.is_empty() {
            let backend = Arc::clone(&self.backend);
            tokio::spawn(async move {
                for slot in live {
                    match backend.ensure_agent(&slot).await {
                        Ok(true) => tracing::info!(slot, "started the agent of an adopted slot again"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(slot, error = %e, "cannot check the agent of an adopted slot"),
                    }
                }
            });
        }
        tracing::info!(adopted, "recovery done");
        Ok(())
    }
}
