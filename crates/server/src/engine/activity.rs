//! Activity and idle timeouts (SPEC §5 "Timeouts").
//!
//! *Activity* is any exec, log read, open log stream (every 500 ms while the client stays
//! connected), `PUT …/timeout`, terminal or data-plane traffic for a sandbox (reads such as GET
//! and `is_ready` are not activity); callers report it with
//! [`Engine::touch`], which writes one in-memory map entry and never the store. A sweep (every
//! `EngineConfig::idle_sweep_interval`) releases a Running sandbox whose idle timeout has passed
//! since its last activity, with status `Released` and reason `IdleTimeout`.
//!
//! Activity is not persisted: after a server restart every Running sandbox counts as active from
//! the moment the first sweep sees it (never earlier, so a restart can delay a release by up to one
//! idle timeout, never cause one). A sandbox that was never touched counts from when it became
//! Running (or from the first sweep that saw it).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentbox_core::duration::WireDuration;
use agentbox_core::error::AppError;
use agentbox_core::model::{Sandbox, SandboxStatus};
use agentbox_core::store::SandboxFilter;
use parking_lot::Mutex;

use super::Engine;
use crate::auth::AuthInfo;

/// Last activity per live sandbox id.
#[derive(Default)]
pub(crate) struct Activity {
    pub(super) last: Mutex<HashMap<String, Instant>>,
}

impl Engine {
    /// Record activity for a sandbox now (resets its idle clock). Cheap: one in-memory map write.
    /// Unknown or ended sandboxes are dropped from the map by the next sweep.
    pub fn touch(&self, sandbox_id: &str) {
        let now = Instant::now();
        let mut m = self.activity.last.lock();
        match m.get_mut(sandbox_id) {
            Some(t) => *t = now,
            None => {
                m.insert(sandbox_id.to_owned(), now);
            }
        }
    }

    /// When the sandbox was last active, as far as this process has seen.
    pub(crate) fn last_active(&self, sandbox_id: &str) -> Option<Instant> {
        self.activity.last.lock().get(sandbox_id).copied()
    }

    /// Set (`Some`) or remove (`None`) the idle timeout of a live sandbox; counts as activity, so
    /// the new timeout runs from now. Sub-second timeouts are rounded up to 1 s.
    pub fn set_idle_timeout(
        self: &Arc<Self>,
        auth: &AuthInfo,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Sandbox, AppError> {
        let sb = self.visible_sandbox(auth, id)?;
        let not_live = |s: SandboxStatus| {
            AppError::conflict(format!(
                "sandbox {id} is {}; only a Starting or Running sandbox has an idle timeout to change",
                s.as_str()
            ))
        };
        if !matches!(sb.status, SandboxStatus::Starting | SandboxStatus::Running) {
            return Err(not_live(sb.status));
        }
        let updated = {
            let _t = self.transitions.lock();
            let mut cur =
                self.store.get_sandbox(id)?.ok_or_else(|| AppError::not_found(format!("sandbox {id} not found")))?;
            if !matches!(cur.status, SandboxStatus::Starting | SandboxStatus::Running) {
                return Err(not_live(cur.status));
            }
            cur.idle_timeout_seconds = timeout.filter(|d| !d.is_zero()).map(|d| d.as_secs().max(1));
            self.store.put_sandbox(&cur)?;
            cur
        };
        self.touch(id);
        tracing::info!(sandbox_id = %id, idle_timeout_seconds = ?updated.idle_timeout_seconds, "idle timeout set");
        Ok(self.decorate(updated))
    }

    /// One pass of the idle-timeout sweep: forget ended sandboxes, start the clock of Running ones
    /// seen for the first time, release those idle for longer than their timeout.
    pub(crate) fn sweep_idle(self: &Arc<Self>) {
        let filter = SandboxFilter { statuses: vec![SandboxStatus::Running], limit: 0, ..Default::default() };
        let running = match self.store.list_sandboxes(&filter) {
            Ok((items, _)) => items,
            Err(e) => {
                tracing::warn!(error = %e, "idle sweep: cannot list running sandboxes");
                return;
            }
        };
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut m = self.activity.last.lock();
            let live: HashSet<&str> = running.iter().map(|s| s.sandbox_id.as_str()).collect();
            m.retain(|id, _| live.contains(id.as_str()));
            for sb in &running {
                let last = *m.entry(sb.sandbox_id.clone()).or_insert(now);
                if let Some(secs) = sb.idle_timeout_seconds
                    && now.duration_since(last) >= Duration::from_secs(secs)
                {
                    expired.push((sb.sandbox_id.clone(), secs));
                }
            }
        }
        for (id, secs) in expired {
            // Re-check: activity or a new timeout may have arrived since the list was read.
            let still_idle = self.last_active(&id).is_none_or(|t| t.elapsed() >= Duration::from_secs(secs));
            let same_timeout =
                matches!(self.store.get_sandbox(&id), Ok(Some(s)) if s.idle_timeout_seconds == Some(secs));
            if !(still_idle && same_timeout) {
                continue;
            }
            let last = self.last_active(&id).map(|t| t.elapsed()).and_then(|ago| chrono::Duration::from_std(ago).ok());
            let last = last.map_or_else(chrono::Utc::now, |ago| chrono::Utc::now() - ago);
            let msg = format!(
                "no activity for the idle timeout ({}); last active at {}",
                WireDuration::from_secs(secs),
                last.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
            tracing::info!(sandbox_id = %id, "releasing idle sandbox: {msg}");
            if let Err(e) = self.release(&id, SandboxStatus::Released, Some(("IdleTimeout", msg)), None) {
                tracing::warn!(sandbox_id = %id, error = %e, "idle sweep: release failed");
            }
        }
    }
}
