//! Leader election over a `coordination.k8s.io/v1` Lease, so that with several server replicas
//! exactly one runs the reconcilers (pool refill, timeouts, autoscaling) while every replica serves
//! the API.
//!
//! One round ([`LeaderElector::try_lead_at`]): read the Lease; if there is none, create it naming us
//! (the API server refuses a second create: 409); if we hold it, renew `renewTime`; if another
//! holder's `renewTime + leaseDurationSeconds` has passed (or nobody holds it), take it over
//! (`leaseTransitions + 1`). Every write carries the `resourceVersion` that was read, so of two
//! replicas racing for an expired Lease one gets 409 and is not leader this round. A replica steps
//! down as soon as a round fails (never two leaders: another replica can only take over after the
//! Lease expired).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::error::{KubeError, is_code};

/// Which Lease, who we are, and the timings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the server's own, e.g. `agentbox-system`).
    pub namespace: String,
    /// Name of the Lease (e.g. `agentbox-reconcilers`).
    pub name: String,
    /// This replica (the Pod name; unique among replicas).
    pub identity: String,
    /// How long a holder's claim lasts without a renewal.
    pub lease_duration: Duration,
    /// How often [`LeaderElector::spawn`] runs a round; well below `lease_duration`.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The defaults of client-go's leader election: 15 s lease, a round every 2 s.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a round found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// There was no Lease, or it had expired or was free: it is ours now.
    Acquired,
    /// We held it and renewed it.
    Renewed,
    /// Another replica holds a valid Lease.
    HeldBy(String),
    /// Our write lost a race (409): not leader this round.
    Conflict,
}

impl Round {
    /// Whether this replica leads after the round.
    pub fn is_leader(&self) -> bool {
        matches!(self, Round::Acquired | Round::Renewed)
    }
}

/// Runs leader-election rounds against one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        LeaderElector { api: Api::namespaced(client, &cfg.namespace), cfg }
    }

    /// One round at the current time.
    pub async fn try_lead(&self) -> Result<Round, KubeError> {
        self.try_lead_at(Timestamp::now()).await
    }

    /// One round, `now` being the current time (tests pass a fixed one).
    pub async fn try_lead_at(&self, now: Timestamp) -> Result<Round, KubeError> {
        let me = self.cfg.identity.as_str();
        let duration_s = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1);
        let Some(lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_owned()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Acquired),
                Err(e) if is_code(&e, 409) => Ok(Round::Conflict),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let round = match &holder {
            Some(h) if h == me => Round::Renewed,
            Some(h) if !expired(&spec, now) => return Ok(Round::HeldBy(h.clone())),
            _ => Round::Acquired,
        };
        let mut next = lease;
        let s = next.spec.get_or_insert_with(Default::default);
        if round == Round::Acquired {
            s.holder_identity = Some(me.to_owned());
            s.acquire_time = Some(MicroTime(now));
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + i32::from(holder.is_some()));
        }
        s.lease_duration_seconds = Some(duration_s);
        s.renew_time = Some(MicroTime(now));
        // `next` keeps the resourceVersion that was read: a concurrent write makes this a 409.
        match self.api.replace(&self.cfg.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(round),
            Err(e) if is_code(&e, 409) => Ok(Round::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the Lease up if we hold it (on shutdown), so another replica takes over at once
    /// instead of after `lease_duration`.
    pub async fn release(&self) -> Result<(), KubeError> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else { return Ok(()) };
        let s = lease.spec.get_or_insert_with(Default::default);
        if s.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        s.holder_identity = None;
        s.lease_duration_seconds = Some(1);
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, 409) || is_code(&e, 404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Run rounds every `retry_period` until `shutdown` turns true (then release the Lease). The
    /// returned receiver says whether this replica leads now: `true` after a won round, `false`
    /// after a lost or failed one (an API error steps down at once).
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let leader = match self.try_lead().await {
                    Ok(round) => {
                        tracing::debug!(lease = %self.cfg.name, ?round, "leader election round");
                        round.is_leader()
                    }
                    Err(e) => {
                        tracing::warn!(lease = %self.cfg.name, error = %e, "leader election round failed; not leading");
                        false
                    }
                };
                tx.send_if_modified(|cur| {
                    let changed = *cur != leader;
                    if changed {
                        tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, leader, "leadership changed");
                    }
                    *cur = leader;
                    changed
                });
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.retry_period) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            tx.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(lease = %self.cfg.name, error = %e, "cannot release the lease");
            }
        });
        (rx, task)
    }
}

/// Whether the holder's claim has run out at `now` (no renew time counts as expired).
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else { return true };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    renewed.0 + SignedDuration::from_secs(secs) <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed: &str, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_expires_duration_seconds_after_its_renewal() {
        let now: Timestamp = "2026-01-01T00:00:20Z".parse().unwrap();
        assert!(!expired(&spec("2026-01-01T00:00:10Z", 15), now));
        assert!(expired(&spec("2026-01-01T00:00:05Z", 15), now));
        assert!(expired(&LeaseSpec::default(), now), "never renewed = free");
    }
}
