//! The lifecycle engine: owns the per-pool claim queues and reconcilers, and drives the backend
//! and the store. Handlers call one engine function per request; no lifecycle logic lives in HTTP.

mod activity;
mod autoscale;
mod events;
mod exec;
mod hooks;
mod logs;
mod metrics;
mod pools;
mod quotas;
mod reconcile;
mod recovery;
mod sandboxes;
mod sync;
mod templates;
mod terminal;
mod usage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::backend::Backend;
use agentbox_core::claim::ClaimQueue;
use agentbox_core::error::AppError;
use agentbox_core::model::Pool;
use agentbox_core::reconcile::PoolCounts;
use agentbox_core::store::Store;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

pub use events::{PodDiagnosticEvent, PoolEvent, PoolEventType};
pub use exec::{ExecEvent, ExecStreamLine, Utf8Chunks};
pub use logs::{
    EndpointReadiness, FollowItem, LogEntry, LogSource, LogStreamMeta, LogsQuery, MAX_LOG_LINES, ReadinessResult,
    SandboxLogs,
};
pub use metrics::{CREATE_RESULTS, Metrics, STOP_REASONS};
pub use pools::{CreatePoolRequest, PoolCondition, PoolDiagnostic, PoolStatus, PoolView, UpdatePoolRequest};
pub use quotas::{
    AvailableQuotaURLSummary, AvailableQuotaURLsDetail, CreateQuotaRequest, QUOTA_EXCEEDED, QUOTA_RETRY_AFTER_SECS,
    QuotaExceededDetail, QuotaResourcesInput, QuotaView, UpdateQuotaRequest,
};
pub use sandboxes::{
    CreateSandboxRequest, DeleteSandboxResult, ExecCommand, ExecRequestBody, ExecResult, ListSandboxesQuery,
    POST_START_HOOK_FAILED, PostStartHookFailedDetail, SandboxList,
};
pub use sync::SyncPreview;
pub use templates::{CreateTemplateRequest, TemplateSummary, TemplateView, UpdateTemplateRequest};
pub use terminal::{ExecToken, TOKEN_TTL as EXEC_TOKEN_TTL};
pub use usage::{CPU_WINDOW, MAX_BATCH as MAX_METRICS_BATCH, SandboxMetric};

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Waiting requests per pool before 429.
    pub claim_queue_capacity: usize,
    /// Reconcile period of each pool (it also runs on every relevant event).
    pub reconcile_interval: Duration,
    /// Slot creations in flight per pool.
    pub max_parallel_creates: u32,
    /// Startup timeout when neither the request nor the pool sets one.
    pub default_startup_timeout: Duration,
    /// How long terminal sandboxes stay in the history store.
    pub history_retention: Duration,
    /// Base URL the sandbox endpoints are built from (`{base}/sandboxes/{id}/{port}`), if any.
    pub proxy_base_url: Option<String>,
    /// How often idle timeouts are checked (a sandbox is released at most this late).
    pub idle_sweep_interval: Duration,
    /// This cluster's id (`--cluster-id`); rendered into pool docs and cross-cluster sandbox ids.
    pub cluster_id: String,
    /// Port of the in-sandbox agent when the backend starts one (`None`: exec and terminals
    /// always go through the backend).
    pub agent_port: Option<u16>,
    /// Leadership among server replicas (Kubernetes: a Lease, `backend_k8s::leader`): the pool
    /// reconcilers run only while it says `true`. `None`: this is the only replica, always leading.
    pub leader: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            claim_queue_capacity: 8192,
            reconcile_interval: Duration::from_secs(1),
            max_parallel_creates: 16,
            default_startup_timeout: Duration::from_secs(120),
            history_retention: Duration::from_secs(7 * 24 * 3600),
            proxy_base_url: None,
            idle_sweep_interval: Duration::from_secs(1),
            cluster_id: "local".into(),
            agent_port: None,
            leader: None,
        }
    }
}

/// (namespace, pool name)
pub type PoolKey = (String, String);

/// Runtime state of one pool: its claim queue and the reconciler's wake-up.
pub(crate) struct PoolRt {
    pub key: PoolKey,
    pub queue: Mutex<ClaimQueue<oneshot::Sender<String>>>,
    pub wake: Notify,
    /// The autoscaler's memory and scale-down protections (see `autoscale.rs`).
    pub autoscale: Mutex<autoscale::PoolAutoscaler>,
    /// Recent events, in memory only (see `events.rs`).
    pub events: Mutex<events::EventRing>,
    /// The status last published through `Backend::publish_pool_status` (see `reconcile.rs`).
    pub published_status: Mutex<Option<agentbox_core::backend::PoolStatusReport>>,
}

pub struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) cfg: EngineConfig,
    pools: Mutex<HashMap<PoolKey, Arc<PoolRt>>>,
    slot_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes the read-check-write of a sandbox's status between a claim finishing its switch
    /// and a release arriving at the same moment (held only around store calls, never across awaits).
    pub(crate) transitions: Mutex<()>,
    /// Outstanding single-use terminal tokens (see `terminal.rs`).
    pub(crate) exec_tokens: terminal::ExecTokens,
    /// Last activity per sandbox, for idle timeouts (see `activity.rs`).
    pub(crate) activity: activity::Activity,
    /// Serializes quota admission (usage read → pool write) and quota writes; see `quotas.rs`.
    pub(crate) quota_admission: Mutex<()>,
    /// Prometheus metrics (see `metrics.rs`).
    pub(crate) metrics: Metrics,
    /// The last CPU reading per sandbox, for `sandbox_metrics` (see `usage.rs`).
    pub(crate) usage: usage::UsageReadings,
    /// Client of the sandboxes' agents (see `crate::agent`).
    pub(crate) agent: crate::agent::AgentClient,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Engine {
    /// Build an engine; call [`Engine::start`] to recover state and run the reconcilers.
    pub fn new(store: Arc<dyn Store>, backend: Arc<dyn Backend>, cfg: EngineConfig) -> Arc<Engine> {
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let cfg_agent_port = cfg.agent_port.unwrap_or(crate::agent::AGENT_PORT);
        Arc::new(Engine {
            store,
            backend,
            cfg,
            pools: Mutex::new(HashMap::new()),
            slot_locks: Mutex::new(HashMap::new()),
            transitions: Mutex::new(()),
            exec_tokens: Default::default(),
            activity: Default::default(),
            quota_admission: Mutex::new(()),
            metrics: Metrics::new(),
            usage: Default::default(),
            agent: crate::agent::AgentClient::new(cfg_agent_port),
            shutdown,
        })
    }

    /// The store this engine writes to.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }

    /// The base URL of this server's data plane in sandbox endpoint URLs (`--proxy-listen`), if any.
    pub fn proxy_base_url(&self) -> Option<&str> {
        self.cfg.proxy_base_url.as_deref()
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Recover from whatever the last process left (see ARCHITECTURE.md, "restart recovery"), then
    /// start a reconciler for every pool and the history pruner.
    pub async fn start(self: &Arc<Self>) -> Result<(), AppError> {
        self.recover().await?;
        for pool in self.store.list_pools(None)? {
            self.ensure_pool_rt(&pool);
        }
        let me = Arc::clone(self);
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(me.cfg.idle_sweep_interval) => me.sweep_idle(),
                    _ = stop.changed() => return,
                }
            }
        });
        let me = Arc::clone(self);
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                me.prune_history();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        Ok(())
    }

    /// Stop the reconcilers (used by tests and graceful shutdown). Sandboxes keep running.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    fn prune_history(&self) {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.cfg.history_retention).unwrap_or(chrono::Duration::days(7));
        let cutoff = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        match self.store.prune_history(&cutoff) {
            Ok(n) if n > 0 => tracing::info!(removed = n, "pruned sandbox history"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning sandbox history failed"),
        }
    }

    /// The runtime of a pool, creating it (and its reconciler task) on first use.
    pub(crate) fn ensure_pool_rt(self: &Arc<Self>, pool: &Pool) -> Arc<PoolRt> {
        let key = (pool.namespace.clone(), pool.name.clone());
        let mut pools = self.pools.lock();
        if let Some(rt) = pools.get(&key) {
            return Arc::clone(rt);
        }
        let rt = Arc::new(PoolRt {
            key: key.clone(),
            queue: Mutex::new(ClaimQueue::new(self.cfg.claim_queue_capacity)),
            wake: Notify::new(),
            autoscale: Default::default(),
            events: Default::default(),
            published_status: Default::default(),
        });
        pools.insert(key, Arc::clone(&rt));
        drop(pools);
        let me = Arc::clone(self);
        let rt2 = Arc::clone(&rt);
        tokio::spawn(async move { me.run_reconciler(rt2).await });
        rt
    }

    /// A pool changed in the store behind the engine's back (Kubernetes mode: `kubectl apply`,
    /// `scale` or `delete` of a `SandboxPool`, seen by the store's watch): make sure the pool has a
    /// reconciler and wake it, so a new pool warms up and a change applies at once instead of at
    /// the next claim or restart. A pool that is gone only wakes its reconciler (which then finds
    /// it deleted).
    pub fn pool_changed(self: &Arc<Self>, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        match self.store.get_pool(namespace, name) {
            Ok(Some(pool)) => self.ensure_pool_rt(&pool).wake.notify_one(),
            Ok(None) => {
                if let Some(rt) = self.pool_rt(&key) {
                    rt.wake.notify_one();
                }
            }
            Err(e) => tracing::warn!(namespace, pool = name, error = %e, "cannot read a changed pool"),
        }
    }

    pub(crate) fn pool_rt(&self, key: &PoolKey) -> Option<Arc<PoolRt>> {
        self.pools.lock().get(key).cloned()
    }

    /// Drop the runtime of a pool that no longer exists. Returns `false` (and keeps it) when a pool
    /// of the same name exists again: a delete followed at once by a create must keep its reconciler.
    pub(crate) fn forget_pool_rt(&self, key: &PoolKey) -> bool {
        let mut pools = self.pools.lock();
        if matches!(self.store.get_pool(&key.0, &key.1), Ok(Some(_)) | Err(_)) {
            return false;
        }
        if let Some(rt) = pools.remove(key) {
            for w in rt.queue.lock().drain_waiters() {
                drop(w); // the waiting request sees its channel closed and answers 409
            }
            self.metrics.forget_pool(&key.0, &key.1);
        }
        true
    }

    /// Serializes lifecycle operations (switch, recycle, destroy) on one slot.
    pub(crate) fn slot_lock(&self, slot_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.slot_locks.lock().entry(slot_id.to_string()).or_default())
    }

    pub(crate) fn drop_slot_lock(&self, slot_id: &str) {
        self.slot_locks.lock().remove(slot_id);
    }

    /// Hand idle slots to waiting requests, oldest waiter first.
    pub(crate) fn dispatch(&self, rt: &PoolRt) {
        loop {
            let Some((tx, slot)) = rt.queue.lock().match_next() else { return };
            if let Err(slot) = tx.send(slot) {
                // The waiter gave up between matching and sending: the slot is still idle.
                rt.queue.lock().return_idle(slot);
            }
        }
    }

    /// Slot counts of a pool from the store, plus the claim queue's waiting requests.
    pub(crate) fn pool_counts(&self, pool: &Pool) -> Result<PoolCounts, AppError> {
        let mut c = PoolCounts::default();
        for s in self.slots_of(pool)? {
            c.add(s.phase);
        }
        if let Some(rt) = self.pool_rt(&(pool.namespace.clone(), pool.name.clone())) {
            let q = rt.queue.lock();
            c.pending_requests = q.waiting_len() as u32;
            // Idle slots not in the queue are being health-checked or removed: not available.
            c.unavailable_idle = c.idle.saturating_sub(q.idle_len() as u32);
        }
        Ok(c)
    }
}

pub(crate) fn now() -> String {
    agentbox_core::model::now_rfc3339()
}

pub(crate) fn age_since(ts: Option<&str>) -> Duration {
    ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).to_std().unwrap_or_default())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_autoscale;
#[cfg(test)]
mod tests_timeout;
