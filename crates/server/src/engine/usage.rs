//! Resource usage of one sandbox (CPU, memory, disk), read on demand from the backend's
//! [`slot_stats`](agentbox_core::backend::Backend::slot_stats): the native
//! `GET /v1/sandboxes/{id}/metrics` and E2B's `GET /sandboxes/{id}/metrics` and
//! `GET /sandboxes/metrics` answer with [`SandboxMetric`].
//!
//! There is no background sampler: every read is one fresh sample, taken when the request arrives.
//! CPU percent needs two readings of the slot's cumulative CPU counter. The engine keeps the last
//! reading of each sandbox in memory; when it is between [`CPU_WINDOW`] and [`MAX_PREVIOUS_AGE`]
//! old, the percent is the average since that reading (a caller polling every few seconds sees the
//! usage of each interval). Otherwise (first read, or a stale or too recent previous one) the read
//! takes two readings [`CPU_WINDOW`] apart, so that request lasts about 100 ms longer. Readings live
//! only in memory: they are lost on restart and pruned once older than [`MAX_PREVIOUS_AGE`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use agentbox_core::backend::SlotStats;
use agentbox_core::error::{AppError, ErrorKind};
use agentbox_core::model::{Sandbox, SandboxStatus};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Engine;
use crate::auth::AuthInfo;

/// The shortest interval a CPU percent is computed over.
pub const CPU_WINDOW: Duration = Duration::from_millis(100);

/// A previous reading older than this is not used (the percent would average over too long).
pub const MAX_PREVIOUS_AGE: Duration = Duration::from_secs(60);

/// At most this many sandboxes per batch read.
pub const MAX_BATCH: usize = 100;

/// One sample of a sandbox's resource usage, in E2B's `SandboxMetric` shape (field for field), so
/// the native and the E2B API answer the same object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    /// When the sample was taken (RFC 3339, UTC).
    pub timestamp: String,
    /// The same instant in Unix seconds.
    pub timestamp_unix: i64,
    /// CPUs the sandbox may use: its CPU limit rounded up, or the host's CPUs without a limit.
    pub cpu_count: u32,
    /// Average CPU use over the sampling interval, in percent of `cpuCount` CPUs (0–100).
    pub cpu_used_pct: f64,
    /// Memory in use without reclaimable page cache, in bytes.
    pub mem_used: u64,
    /// The memory limit (or the host's memory without one), in bytes.
    pub mem_total: u64,
    /// Page cache charged to the sandbox, in bytes.
    pub mem_cache: u64,
    /// Bytes written to the sandbox's container filesystems (their writable layers).
    pub disk_used: u64,
    /// Size of the filesystem those layers live on, in bytes (0 when the backend does not measure it).
    pub disk_total: u64,
}

/// A reading of a sandbox's cumulative CPU counter.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    at: Instant,
    cpu_usec: u64,
}

/// The last reading per sandbox id (see the module docs).
#[derive(Default)]
pub(crate) struct UsageReadings(Mutex<HashMap<String, Reading>>);

impl UsageReadings {
    /// The last reading of `id`, if it is usable as the start of an interval ending `now`.
    fn usable(&self, id: &str, now: Instant) -> Option<Reading> {
        let r = *self.0.lock().get(id)?;
        let age = now.saturating_duration_since(r.at);
        (CPU_WINDOW..=MAX_PREVIOUS_AGE).contains(&age).then_some(r)
    }

    fn record(&self, id: &str, r: Reading) {
        let mut m = self.0.lock();
        m.retain(|_, old| r.at.saturating_duration_since(old.at) <= MAX_PREVIOUS_AGE);
        m.insert(id.to_owned(), r);
    }
}

/// Average CPU use between two readings in percent of `cpus` CPUs, clamped to 0–100; `None` when
/// the counter went back (the slot's cgroup was recreated) or no time passed.
fn cpu_pct(prev: Reading, cur: Reading, cpus: u32) -> Option<f64> {
    let used = cur.cpu_usec.checked_sub(prev.cpu_usec)? as f64;
    let elapsed = cur.at.checked_duration_since(prev.at)?.as_micros() as f64;
    if elapsed <= 0.0 {
        return None;
    }
    let pct = used / (elapsed * f64::from(cpus.max(1))) * 100.0;
    Some((pct.clamp(0.0, 100.0) * 100.0).round() / 100.0)
}

fn metric(stats: &SlotStats, cpu_used_pct: f64) -> SandboxMetric {
    let now = chrono::Utc::now();
    SandboxMetric {
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        timestamp_unix: now.timestamp(),
        cpu_count: stats.cpu_count.max(1),
        cpu_used_pct,
        mem_used: stats.mem_used_bytes,
        mem_total: stats.mem_total_bytes,
        mem_cache: stats.mem_cache_bytes,
        disk_used: stats.disk_used_bytes,
        disk_total: stats.disk_total_bytes,
    }
}

fn is_live(s: SandboxStatus) -> bool {
    matches!(s, SandboxStatus::Starting | SandboxStatus::Running)
}

fn not_live(sb: &Sandbox) -> AppError {
    AppError::conflict(format!(
        "sandbox {} is {}; metrics exist only while a sandbox is Starting or Running",
        sb.sandbox_id,
        sb.status.as_str()
    ))
}

impl Engine {
    /// One usage sample of a sandbox the caller may see (404 otherwise) that is Starting or
    /// Running (409 otherwise). 501 when the backend does not report usage. Reading metrics is
    /// not activity: it does not postpone the idle timeout.
    pub async fn sandbox_metrics(&self, auth: &AuthInfo, id: &str) -> Result<SandboxMetric, AppError> {
        let sb = self.visible_sandbox(auth, id)?;
        if !is_live(sb.status) {
            return Err(not_live(&sb));
        }
        let first = self.backend.slot_stats(&sb.pod_name).await?;
        let first_at = Instant::now();
        let first_reading = Reading { at: first_at, cpu_usec: first.cpu_usage_usec };
        let previous = self.usage.usable(id, first_at).filter(|p| p.cpu_usec <= first.cpu_usage_usec);
        let (start, stats, end) = match previous {
            Some(p) => (p, first, first_reading),
            None => {
                tokio::time::sleep(CPU_WINDOW).await;
                let second = self.backend.slot_stats(&sb.pod_name).await?;
                let end = Reading { at: Instant::now(), cpu_usec: second.cpu_usage_usec };
                (first_reading, second, end)
            }
        };
        // The sandbox may have been released while we read: its slot is then someone else's.
        match self.store.get_sandbox(id)? {
            Some(now) if is_live(now.status) && now.pod_name == sb.pod_name => {}
            Some(now) => return Err(not_live(&now)),
            None => return Err(AppError::not_found(format!("sandbox {id} not found"))),
        }
        self.usage.record(id, end);
        let pct = cpu_pct(start, end, stats.cpu_count).unwrap_or(0.0);
        Ok(metric(&stats, pct))
    }

    /// One sample of each sandbox of `ids` the caller may see and that is live, read concurrently;
    /// the others are left out. At most [`MAX_BATCH`] ids (400 otherwise).
    pub async fn sandboxes_metrics(
        &self,
        auth: &AuthInfo,
        ids: &[String],
    ) -> Result<BTreeMap<String, SandboxMetric>, AppError> {
        if ids.len() > MAX_BATCH {
            return Err(AppError::bad_request(format!(
                "{} sandbox ids asked for; ask for at most {MAX_BATCH} per request",
                ids.len()
            )));
        }
        let mut unique: Vec<&String> = ids.iter().collect();
        unique.sort();
        unique.dedup();
        let reads = unique.iter().map(|id| self.sandbox_metrics(auth, id));
        let results = futures::future::join_all(reads).await;
        let mut out = BTreeMap::new();
        for (id, r) in unique.into_iter().zip(results) {
            match r {
                Ok(m) => {
                    out.insert(id.clone(), m);
                }
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Conflict) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_relative_to_the_cpu_count() {
        let t0 = Instant::now();
        let a = Reading { at: t0, cpu_usec: 1_000_000 };
        let b = Reading { at: t0 + Duration::from_secs(2), cpu_usec: 2_000_000 };
        assert_eq!(cpu_pct(a, b, 1), Some(50.0));
        assert_eq!(cpu_pct(a, b, 2), Some(25.0));
        let c = Reading { at: t0 + Duration::from_secs(2), cpu_usec: 9_000_000 };
        assert_eq!(cpu_pct(a, c, 1), Some(100.0), "clamped");
        assert_eq!(cpu_pct(b, a, 1), None, "counter went back");
        assert_eq!(cpu_pct(a, Reading { at: t0, cpu_usec: 1_000_000 }, 1), None, "no time passed");
    }

    #[test]
    fn previous_readings_are_used_only_inside_the_window_and_pruned() {
        let r = UsageReadings::default();
        let t0 = Instant::now();
        r.record("a", Reading { at: t0, cpu_usec: 1 });
        assert_eq!(r.usable("a", t0 + Duration::from_millis(10)), None, "too recent");
        assert!(r.usable("a", t0 + Duration::from_secs(1)).is_some());
        assert_eq!(r.usable("a", t0 + MAX_PREVIOUS_AGE + Duration::from_secs(1)), None, "too old");
        assert_eq!(r.usable("b", t0 + Duration::from_secs(1)), None);
        r.record("b", Reading { at: t0 + MAX_PREVIOUS_AGE + Duration::from_secs(1), cpu_usec: 1 });
        assert!(!r.0.lock().contains_key("a"), "stale readings are pruned");
    }
}
