//! Prometheus metrics (SPEC §8), declared in one place. Every name starts with `agentbox_`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agentbox_pool_slots` | gauge | namespace, pool, phase (creating, idle, starting, running, stopping, failed) |
//! | `agentbox_claim_queue_waiting` / `agentbox_claim_queue_capacity` | gauge | namespace, pool |
//! | `agentbox_claim_duration_seconds` | histogram | namespace, pool, switched |
//! | `agentbox_sandbox_starting_duration_seconds` | histogram | namespace, pool |
//! | `agentbox_sandbox_running_duration_seconds` | histogram | namespace, pool, reason |
//! | `agentbox_slot_recycle_duration_seconds` | histogram | namespace, pool |
//! | `agentbox_sandbox_creates_total` | counter | namespace, pool, result |
//! | `agentbox_sandbox_deletes_total` | counter | namespace, pool, reason |
//! | `agentbox_slot_creations_total` | counter | namespace, pool, result (ok, failed) |
//! | `agentbox_http_requests_total` | counter | method, route, status |
//! | `agentbox_http_request_duration_seconds` | histogram | method, route |
//!
//! Cardinality: `namespace` and `pool` only ever name pools that exist (a create for an unknown
//! pool is counted with `pool=""`); every other label comes from a fixed vocabulary
//! ([`CREATE_RESULTS`], [`STOP_REASONS`]), and `route` is the route template, never the raw path.
//! Pool and queue gauges are computed from the engine's state at scrape time, so a deleted pool
//! disappears from them at once. Its counters and histograms are removed (`Family::remove`, over
//! the fixed label vocabularies) when its reconciler stops and again at the next scrape, so a
//! series recorded late for a deleted pool (a claim that was already waiting) does not outlive the
//! next scrape either.
//!
//! Recording costs a hash lookup under the metric family's read lock plus atomic/short-lock
//! updates inside prometheus-client; no engine-wide lock is taken.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use agentbox_core::error::{AppError, ErrorKind};
use agentbox_core::model::{Sandbox, SandboxStatus, SlotPhase};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::sandboxes::POST_START_HOOK_FAILED;
use super::{Engine, PoolKey};
use crate::auth::AuthInfo;

/// Buckets (seconds) for latencies measured in milliseconds: 0.5 ms … 30 s.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0];

/// Buckets (seconds) for how long a sandbox stays Running: 1 s … 1 day.
const LIFETIME_BUCKETS: [f64; 14] =
    [1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0];

/// The slot phases reported by `agentbox_pool_slots`, every one of them for every pool (zeros too).
const PHASES: [SlotPhase; 6] = [
    SlotPhase::Creating,
    SlotPhase::Idle,
    SlotPhase::Starting,
    SlotPhase::Running,
    SlotPhase::Stopping,
    SlotPhase::Failed,
];

/// Values of the `result` label of `agentbox_sandbox_creates_total`.
pub const CREATE_RESULTS: [&str; 9] =
    ["ok", "no_idle", "queue_full", "not_found", "invalid", "startup_timeout", "hook_failed", "canceled", "error"];

/// Values of the `reason` label of the stop metrics: the terminal status, then the failure reason
/// for the reasons we know (anything else is `<Status>/Other`).
pub const STOP_REASONS: [&str; 18] = [
    "Completed",
    "Canceled",
    "Canceled/ClientGone",
    "Released",
    "Released/IdleTimeout",
    "Released/StartupTimeout",
    "Released/PoolDeleted",
    "Released/Other",
    "Failed",
    "Failed/OOMKilled",
    "Failed/Error",
    "Failed/ContainerMissing",
    "Failed/ImagePullFailed",
    "Failed/StartupFailed",
    "Failed/PostStartHookFailed",
    "Failed/ReadinessFailed",
    "Failed/Other",
    "Other",
];

const SLOT_CREATE_RESULTS: [&str; 2] = ["ok", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    namespace: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    pool: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    namespace: String,
    pool: String,
    switched: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    namespace: String,
    pool: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    namespace: String,
    pool: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabels {
    cluster: String,
    plane: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayPlaneLabels {
    cluster: String,
    plane: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn lifetime_histogram() -> Histogram {
    Histogram::new(LIFETIME_BUCKETS)
}

/// The engine's metric registry. Cheap to record into from any task; rendered by
/// [`Engine::render_metrics`].
pub struct Metrics {
    registry: Registry,
    pool_slots: Family<PhaseLabels, Gauge>,
    queue_waiting: Family<PoolLabels, Gauge>,
    queue_capacity: Family<PoolLabels, Gauge>,
    claim_duration: HistogramFamily<ClaimLabels>,
    starting_duration: HistogramFamily<PoolLabels>,
    running_duration: HistogramFamily<ReasonLabels>,
    recycle_duration: HistogramFamily<PoolLabels>,
    creates: Family<ResultLabels, Counter>,
    deletes: Family<ReasonLabels, Counter>,
    slot_creations: Family<ResultLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<HttpRouteLabels>,
    gateway_forwards: Family<GatewayLabels, Counter>,
    gateway_duration: HistogramFamily<GatewayPlaneLabels>,
    /// Serializes scrapes (refresh of the state gauges + encoding) and remembers the pools seen by
    /// the previous scrape, so that a pool deleted since then loses its series.
    scrape: Mutex<HashSet<PoolKey>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every agentbox metric declared (and no series yet).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("agentbox");
        let m = Metrics {
            registry: Registry::default(),
            pool_slots: Family::default(),
            queue_waiting: Family::default(),
            queue_capacity: Family::default(),
            claim_duration: Family::new_with_constructor(latency_histogram),
            starting_duration: Family::new_with_constructor(latency_histogram),
            running_duration: Family::new_with_constructor(lifetime_histogram),
            recycle_duration: Family::new_with_constructor(latency_histogram),
            creates: Family::default(),
            deletes: Family::default(),
            slot_creations: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            gateway_forwards: Family::default(),
            gateway_duration: Family::new_with_constructor(latency_histogram),
            scrape: Mutex::new(HashSet::new()),
        };
        let r = &mut registry;
        r.register("pool_slots", "Slots of each pool by phase", m.pool_slots.clone());
        r.register("claim_queue_waiting", "Create requests waiting for an idle slot", m.queue_waiting.clone());
        r.register("claim_queue_capacity", "Waiting requests a pool accepts before 429", m.queue_capacity.clone());
        r.register_with_unit(
            "claim_duration",
            "Create request accepted to Running sandbox answered (switched: an in-place image switch ran)",
            Unit::Seconds,
            m.claim_duration.clone(),
        );
        r.register_with_unit(
            "sandbox_starting_duration",
            "Sandbox claimed to Running (zero when no image switch was needed)",
            Unit::Seconds,
            m.starting_duration.clone(),
        );
        r.register_with_unit(
            "sandbox_running_duration",
            "Sandbox Running to released, by stop reason",
            Unit::Seconds,
            m.running_duration.clone(),
        );
        r.register_with_unit(
            "slot_recycle_duration",
            "Slot released to idle again (fresh writable layer, back in the pool)",
            Unit::Seconds,
            m.recycle_duration.clone(),
        );
        r.register("sandbox_creates", "Create (claim) requests by result", m.creates.clone());
        r.register("sandbox_deletes", "Sandboxes ended, by stop reason", m.deletes.clone());
        r.register("slot_creations", "Warm slots created by the reconciler, by result", m.slot_creations.clone());
        r.register("http_requests", "HTTP requests by method, route template and status", m.http_requests.clone());
        r.register_with_unit(
            "http_request_duration",
            "HTTP request to response headers, by method and route template",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "gateway_forwards",
            "Requests forwarded to another cluster, by cluster (of the catalog), plane and status (the \
             remote's, or the gateway's 502/504 when it could not get one)",
            m.gateway_forwards.clone(),
        );
        r.register_with_unit(
            "gateway_forward_duration",
            "Forwarded request sent to the remote's response headers, by cluster and plane",
            Unit::Seconds,
            m.gateway_duration.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One request forwarded to `cluster` (a catalog id, so the label set stays bounded) on `plane`
    /// (`native`, `e2b`, `proxy`), answered with `status` after `elapsed`.
    pub fn gateway_forward(&self, cluster: &str, plane: &'static str, status: u16, elapsed: Duration) {
        let cluster = cluster.to_owned();
        self.gateway_duration
            .get_or_create(&GatewayPlaneLabels { cluster: cluster.clone(), plane })
            .observe(elapsed.as_secs_f64());
        self.gateway_forwards.get_or_create(&GatewayLabels { cluster, plane, status }).inc();
    }

    /// A create request for an existing pool ended: counted by `result` (one of
    /// [`CREATE_RESULTS`]); when it is `ok`, `elapsed` (request accepted → answer) and `starting`
    /// (claimed → Running, see [`starting_time`]) are observed.
    pub(crate) fn claim_finished(
        &self,
        namespace: &str,
        pool: &str,
        result: &'static str,
        switched: bool,
        elapsed: Duration,
        starting: Option<Duration>,
    ) {
        let key = ResultLabels { namespace: namespace.to_owned(), pool: pool.to_owned(), result };
        self.creates.get_or_create(&key).inc();
        if result != "ok" {
            return;
        }
        let key = ClaimLabels { namespace: key.namespace, pool: key.pool, switched };
        self.claim_duration.get_or_create(&key).observe(elapsed.as_secs_f64());
        if let Some(starting) = starting {
            let key = PoolLabels { namespace: key.namespace, pool: key.pool };
            self.starting_duration.get_or_create(&key).observe(starting.as_secs_f64());
        }
    }

    /// A create request refused before any slot was looked at. A pool name that does not resolve
    /// to a pool of the caller is counted as `pool=""`, so made-up names never become series.
    pub(crate) fn create_rejected(&self, auth: &AuthInfo, pool: &str, e: &AppError) {
        // Validation (400) only happens once the pool was found; anything else has no known pool.
        let pool = if e.kind == ErrorKind::BadRequest { pool } else { "" };
        let result = if e.kind == ErrorKind::BadRequest { "invalid" } else { create_result(e) };
        self.creates
            .get_or_create(&ResultLabels { namespace: auth.namespace.clone(), pool: pool.to_owned(), result })
            .inc();
    }

    /// A live sandbox was told to stop, ending in `end` (labelled with its failure reason, if
    /// any); its Running time is observed when it had become Running (`startedAt` set).
    pub(crate) fn sandbox_stopped(&self, sb: &Sandbox, end: SandboxStatus) {
        self.stopped(&sb.namespace, &sb.pool_name, sb.started_at.as_deref(), end, sb.failure_reason.as_deref());
    }

    fn stopped(&self, namespace: &str, pool: &str, started_at: Option<&str>, end: SandboxStatus, reason: Option<&str>) {
        let labels =
            ReasonLabels { namespace: namespace.to_owned(), pool: pool.to_owned(), reason: stop_reason(end, reason) };
        if let Some(ran) = started_at.and_then(|s| between(Some(s), None)) {
            self.running_duration.get_or_create(&labels).observe(ran.as_secs_f64());
        }
        self.deletes.get_or_create(&labels).inc();
    }

    /// A slot went from released back to idle in `elapsed`.
    pub(crate) fn slot_recycled(&self, namespace: &str, pool: &str, elapsed: Duration) {
        let key = PoolLabels { namespace: namespace.to_owned(), pool: pool.to_owned() };
        self.recycle_duration.get_or_create(&key).observe(elapsed.as_secs_f64());
    }

    /// The reconciler finished creating a warm slot (`ok`) or gave up on it.
    pub(crate) fn slot_created(&self, namespace: &str, pool: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.slot_creations
            .get_or_create(&ResultLabels { namespace: namespace.to_owned(), pool: pool.to_owned(), result })
            .inc();
    }

    /// One HTTP request answered. `route` is the route template (or `unmatched`), never a raw path.
    pub fn http_request(&self, method: &'static str, route: &str, status: u16, elapsed: Duration) {
        let route = route.to_owned();
        self.http_duration
            .get_or_create(&HttpRouteLabels { method, route: route.clone() })
            .observe(elapsed.as_secs_f64());
        self.http_requests.get_or_create(&HttpLabels { method, route, status }).inc();
    }

    /// Remove every series of a pool that no longer exists.
    pub(crate) fn forget_pool(&self, namespace: &str, pool: &str) {
        let p = PoolLabels { namespace: namespace.to_owned(), pool: pool.to_owned() };
        self.starting_duration.remove(&p);
        self.recycle_duration.remove(&p);
        self.queue_waiting.remove(&p);
        self.queue_capacity.remove(&p);
        for switched in [false, true] {
            self.claim_duration.remove(&ClaimLabels { namespace: p.namespace.clone(), pool: p.pool.clone(), switched });
        }
        for result in CREATE_RESULTS {
            self.creates.remove(&ResultLabels { namespace: p.namespace.clone(), pool: p.pool.clone(), result });
        }
        for result in SLOT_CREATE_RESULTS {
            self.slot_creations.remove(&ResultLabels { namespace: p.namespace.clone(), pool: p.pool.clone(), result });
        }
        for reason in STOP_REASONS {
            let l = ReasonLabels { namespace: p.namespace.clone(), pool: p.pool.clone(), reason };
            self.running_duration.remove(&l);
            self.deletes.remove(&l);
        }
        for phase in PHASES {
            let l = PhaseLabels { namespace: p.namespace.clone(), pool: p.pool.clone(), phase: phase.as_str() };
            self.pool_slots.remove(&l);
        }
    }

    /// Encode everything in the OpenMetrics text format.
    fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The `result` label of a create that failed with `e`. `e.kind` says which: the engine answers a
/// missing slot with 409 + Retry-After, a full queue with 429, a startup timeout with 503.
pub(crate) fn create_result(e: &AppError) -> &'static str {
    match e.kind {
        ErrorKind::NotFound => "not_found",
        ErrorKind::TooManyRequests => "queue_full",
        ErrorKind::Unavailable => "startup_timeout",
        ErrorKind::Conflict if e.retry_after.is_some() => "no_idle",
        // A 409 without Retry-After: the sandbox was deleted while it was starting.
        ErrorKind::Conflict => "canceled",
        _ if e.code.as_deref() == Some(POST_START_HOOK_FAILED) => "hook_failed",
        _ => "error",
    }
}

/// Map an end status and failure reason onto [`STOP_REASONS`].
fn stop_reason(end: SandboxStatus, reason: Option<&str>) -> &'static str {
    let known = |prefix: &str| -> Option<&'static str> {
        let r = reason?;
        STOP_REASONS.iter().copied().find(|s| s.strip_prefix(prefix).and_then(|s| s.strip_prefix('/')) == Some(r))
    };
    match end {
        SandboxStatus::Completed => "Completed",
        SandboxStatus::Canceled => known("Canceled").unwrap_or("Canceled"),
        SandboxStatus::Released => reason.map(|_| known("Released").unwrap_or("Released/Other")).unwrap_or("Released"),
        SandboxStatus::Failed => reason.map(|_| known("Failed").unwrap_or("Failed/Other")).unwrap_or("Failed"),
        _ => "Other",
    }
}

/// How long a sandbox was Starting: claimed → Running (zero when it was Running at once).
pub(crate) fn starting_time(sb: &Sandbox) -> Option<Duration> {
    between(Some(&sb.claimed_at), Some(sb.started_at.as_deref()?))
}

/// Time from `from` to `to` (now when `None`), both RFC 3339; `None` if `from` does not parse.
fn between(from: Option<&str>, to: Option<&str>) -> Option<Duration> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&chrono::Utc));
    let from = parse(from?)?;
    let to = match to {
        Some(t) => parse(t)?,
        None => chrono::Utc::now(),
    };
    (to - from).to_std().ok()
}

impl Engine {
    /// The engine's metrics, for recording from the HTTP layer.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Refresh the state gauges (slots by phase, claim queues) from the store and the claim queues,
    /// drop the series of pools that no longer exist, and encode everything (OpenMetrics text).
    pub fn render_metrics(&self) -> Result<String, AppError> {
        let m = &self.metrics;
        let mut seen = m.scrape.lock();
        let pools = self.store.list_pools(None)?;
        let mut counts: HashMap<(&str, &str), [i64; PHASES.len()]> =
            pools.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), [0; PHASES.len()])).collect();
        let slots = self.store.list_slots()?;
        for s in &slots {
            if let Some(c) = counts.get_mut(&(s.namespace.as_str(), s.pool.as_str()))
                && let Some(i) = PHASES.iter().position(|p| *p == s.phase)
            {
                c[i] += 1;
            }
        }
        let live: HashSet<PoolKey> = pools.iter().map(|p| (p.namespace.clone(), p.name.clone())).collect();
        for (ns, pool) in seen.difference(&live) {
            m.forget_pool(ns, pool);
        }
        for ((ns, pool), c) in &counts {
            for (phase, n) in PHASES.iter().zip(c) {
                let l = PhaseLabels { namespace: (*ns).to_owned(), pool: (*pool).to_owned(), phase: phase.as_str() };
                m.pool_slots.get_or_create(&l).set(*n);
            }
        }
        let rts: Vec<_> = self.pools.lock().values().cloned().collect();
        for rt in rts.iter().filter(|rt| live.contains(&rt.key)) {
            let waiting = rt.queue.lock().waiting_len() as i64;
            let l = PoolLabels { namespace: rt.key.0.clone(), pool: rt.key.1.clone() };
            m.queue_waiting.get_or_create(&l).set(waiting);
            m.queue_capacity.get_or_create(&l).set(self.cfg.claim_queue_capacity as i64);
        }
        *seen = live;
        Ok(m.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(claimed: &str, started: Option<&str>) -> Sandbox {
        Sandbox {
            claimed_at: claimed.into(),
            started_at: started.map(Into::into),
            ..serde_json::from_value(serde_json::json!({
                "sandboxId": "s", "namespace": "ns", "poolName": "p", "podName": "p-1",
                "status": "Running", "claimedAt": claimed
            }))
            .expect("a minimal sandbox deserializes")
        }
    }

    #[test]
    fn render_contains_the_recorded_series() {
        let m = Metrics::new();
        let sb = sandbox("2026-01-01T00:00:00.000Z", Some("2026-01-01T00:00:00.250Z"));
        m.claim_finished("ns", "p", "ok", true, Duration::from_millis(3), starting_time(&sb));
        m.claim_finished("ns", "p", "no_idle", false, Duration::from_millis(1), None);
        m.stopped("ns", "p", Some("2026-01-01T00:00:00.000Z"), SandboxStatus::Released, Some("IdleTimeout"));
        m.slot_recycled("ns", "p", Duration::from_millis(40));
        m.slot_created("ns", "p", true);
        m.http_request("POST", "/v1/sandboxes", 201, Duration::from_millis(4));
        let out = m.encode();
        for want in [
            r#"agentbox_claim_duration_seconds_bucket{le="0.005",namespace="ns",pool="p",switched="true"} 1"#,
            r#"agentbox_claim_duration_seconds_count{namespace="ns",pool="p",switched="true"} 1"#,
            r#"agentbox_sandbox_starting_duration_seconds_bucket{le="0.25",namespace="ns",pool="p"} 1"#,
            r#"agentbox_sandbox_starting_duration_seconds_bucket{le="0.1",namespace="ns",pool="p"} 0"#,
            r#"agentbox_sandbox_creates_total{namespace="ns",pool="p",result="ok"} 1"#,
            r#"agentbox_sandbox_creates_total{namespace="ns",pool="p",result="no_idle"} 1"#,
            r#"agentbox_sandbox_deletes_total{namespace="ns",pool="p",reason="Released/IdleTimeout"} 1"#,
            r#"agentbox_sandbox_running_duration_seconds_count{namespace="ns",pool="p",reason="Released/IdleTimeout"} 1"#,
            r#"agentbox_slot_recycle_duration_seconds_bucket{le="0.05",namespace="ns",pool="p"} 1"#,
            r#"agentbox_slot_creations_total{namespace="ns",pool="p",result="ok"} 1"#,
            r#"agentbox_http_requests_total{method="POST",route="/v1/sandboxes",status="201"} 1"#,
            r#"agentbox_http_request_duration_seconds_count{method="POST",route="/v1/sandboxes"} 1"#,
            "# EOF",
        ] {
            assert!(out.contains(want), "missing {want} in:\n{out}");
        }
        // A failed claim is counted but not timed.
        assert!(!out.contains(r#"switched="false""#), "{out}");
    }

    #[test]
    fn forget_pool_removes_its_series_only() {
        let m = Metrics::new();
        for pool in ["gone", "kept"] {
            m.claim_finished("ns", pool, "ok", false, Duration::from_millis(2), None);
            m.stopped("ns", pool, None, SandboxStatus::Failed, Some("OOMKilled"));
            m.slot_recycled("ns", pool, Duration::from_millis(2));
        }
        m.forget_pool("ns", "gone");
        let out = m.encode();
        assert!(!out.contains(r#"pool="gone""#), "{out}");
        assert!(
            out.contains(r#"agentbox_sandbox_deletes_total{namespace="ns",pool="kept",reason="Failed/OOMKilled"} 1"#)
        );
        assert!(
            out.contains(r#"agentbox_claim_duration_seconds_count{namespace="ns",pool="kept",switched="false"} 1"#)
        );
    }

    #[test]
    fn stop_reasons_and_create_results_stay_in_their_vocabularies() {
        assert_eq!(stop_reason(SandboxStatus::Completed, None), "Completed");
        assert_eq!(stop_reason(SandboxStatus::Released, Some("IdleTimeout")), "Released/IdleTimeout");
        assert_eq!(stop_reason(SandboxStatus::Released, Some("made up by someone")), "Released/Other");
        assert_eq!(stop_reason(SandboxStatus::Failed, Some("OOMKilled")), "Failed/OOMKilled");
        assert_eq!(stop_reason(SandboxStatus::Failed, None), "Failed");
        assert_eq!(stop_reason(SandboxStatus::Canceled, Some("ClientGone")), "Canceled/ClientGone");
        assert_eq!(stop_reason(SandboxStatus::Canceled, Some("OOMKilled")), "Canceled");
        let no_idle = AppError::conflict("no idle sandbox").with_retry_after(1);
        assert_eq!(create_result(&no_idle), "no_idle");
        assert_eq!(create_result(&AppError::conflict("deleted while starting")), "canceled");
        assert_eq!(create_result(&AppError::too_many("full")), "queue_full");
        assert_eq!(create_result(&AppError::unavailable("timeout")), "startup_timeout");
        let hook =
            AppError::new(ErrorKind::Unprocessable, "post-start hook 0 failed").with_code(POST_START_HOOK_FAILED);
        assert_eq!(create_result(&hook), "hook_failed");
        assert_eq!(create_result(&AppError::bad_request("image pull failed")), "error");
        assert_eq!(create_result(&AppError::internal("boom", "cause")), "error");
        for r in ["no_idle", "canceled", "queue_full", "startup_timeout", "hook_failed", "error"] {
            assert!(CREATE_RESULTS.contains(&r));
        }
    }

    #[test]
    fn durations_between_timestamps() {
        let d = between(Some("2026-01-01T00:00:00.000Z"), Some("2026-01-01T00:00:01.500Z"));
        assert_eq!(d, Some(Duration::from_millis(1500)));
        assert_eq!(between(Some("not a time"), None), None);
        assert_eq!(between(None, None), None);
    }
}
