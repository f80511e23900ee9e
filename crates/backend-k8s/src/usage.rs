//! Resource usage of a slot Pod for [`agentbox_core::backend::Backend::slot_stats`]: the
//! `PodMetrics` of the metrics API (`metrics.k8s.io/v1beta1`, served by metrics-server), the
//! limits from the Pod spec, and the node's capacity when the Pod has none. Pure functions and a
//! small clock; the API calls are in the backend.

use std::collections::HashMap;
use std::time::Instant;

use agentbox_core::quantity::parse_memory_bytes;
use k8s_openapi::api::core::v1::Pod;
use parking_lot::Mutex;

/// A CPU quantity (`"12345n"`, `"250u"`, `"500m"`, `"2"`, `"1.5"`) in nanocores.
pub fn parse_cpu_nanos(q: &str) -> Option<u64> {
    let q = q.trim();
    let (num, scale) = match q.char_indices().last()? {
        (i, 'n') => (&q[..i], 1.0),
        (i, 'u') => (&q[..i], 1e3),
        (i, 'm') => (&q[..i], 1e6),
        _ => (q, 1e9),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * scale).round() as u64)
}

/// CPU (nanocores) and memory (bytes) of a node or of a Pod's limits; `None` where unknown.
pub type Capacity = (Option<u64>, Option<u64>);

/// What metrics-server measured of a Pod, summed over its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodUsage {
    pub cpu_nanocores: u64,
    /// The working set (without reclaimable page cache).
    pub memory_bytes: u64,
}

/// Read a `PodMetrics` object (`{"containers": [{"usage": {"cpu": …, "memory": …}}]}`).
pub fn pod_usage(metrics: &serde_json::Value) -> Result<PodUsage, String> {
    let containers = metrics["containers"].as_array().ok_or("the PodMetrics object has no containers")?;
    let mut u = PodUsage { cpu_nanocores: 0, memory_bytes: 0 };
    for c in containers {
        let cpu = c["usage"]["cpu"].as_str().unwrap_or("0");
        let mem = c["usage"]["memory"].as_str().unwrap_or("0");
        u.cpu_nanocores += parse_cpu_nanos(cpu).ok_or_else(|| format!("bad cpu usage {cpu:?} in PodMetrics"))?;
        u.memory_bytes += parse_memory_bytes(mem).map_err(|e| format!("bad memory usage in PodMetrics: {e}"))?;
    }
    Ok(u)
}

/// The Pod's CPU (nanocores) and memory (bytes) limits summed over its containers; `None` for a
/// resource that some container does not limit.
pub fn pod_limits(pod: &Pod) -> Capacity {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let sum = |name: &str, parse: &dyn Fn(&str) -> Option<u64>| -> Option<u64> {
        if containers.is_empty() {
            return None;
        }
        containers.iter().try_fold(0u64, |acc, c| {
            let q = c.resources.as_ref()?.limits.as_ref()?.get(name)?;
            Some(acc + parse(&q.0)?)
        })
    };
    (sum("cpu", &parse_cpu_nanos), sum("memory", &|s| parse_memory_bytes(s).ok()))
}

/// A cumulative CPU counter per slot, integrated from the rates metrics-server reports (the core
/// computes percentages from differences of two reads): each read adds `rate × time since the
/// previous read`; the first read of a slot starts at 0.
#[derive(Default)]
pub struct CpuClock {
    slots: Mutex<HashMap<String, (Instant, f64)>>,
}

impl CpuClock {
    /// The slot's counter in microseconds after a read of `nanocores` at `now`.
    pub fn advance(&self, slot: &str, nanocores: u64, now: Instant) -> u64 {
        let mut slots = self.slots.lock();
        let entry = slots.entry(slot.to_owned()).or_insert((now, 0.0));
        let secs = now.saturating_duration_since(entry.0).as_secs_f64();
        entry.1 += nanocores as f64 / 1e3 * secs;
        entry.0 = now;
        entry.1 as u64
    }

    /// Forget a slot (destroyed).
    pub fn forget(&self, slot: &str) {
        self.slots.lock().remove(slot);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    #[test]
    fn cpu_quantities_in_every_unit() {
        assert_eq!(parse_cpu_nanos("12345n"), Some(12_345));
        assert_eq!(parse_cpu_nanos("250u"), Some(250_000));
        assert_eq!(parse_cpu_nanos("500m"), Some(500_000_000));
        assert_eq!(parse_cpu_nanos("2"), Some(2_000_000_000));
        assert_eq!(parse_cpu_nanos("1.5"), Some(1_500_000_000));
        assert_eq!(parse_cpu_nanos("lots"), None);
        assert_eq!(parse_cpu_nanos(""), None);
    }

    #[test]
    fn usage_sums_containers_and_limits_need_every_container() {
        let m = json!({"containers": [
            {"name": "main", "usage": {"cpu": "250m", "memory": "100Mi"}},
            {"name": "side", "usage": {"cpu": "1000000n", "memory": "1Mi"}}]});
        assert_eq!(pod_usage(&m).unwrap(), PodUsage { cpu_nanocores: 251_000_000, memory_bytes: 101 << 20 });
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [
            {"name": "main", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}},
            {"name": "side", "resources": {"limits": {"cpu": "500m"}}}]}}))
        .unwrap();
        assert_eq!(pod_limits(&pod), (Some(2_000_000_000), None), "side has no memory limit");
    }

    #[test]
    fn the_cpu_clock_integrates_the_rate_between_reads() {
        let clock = CpuClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.advance("s", 500_000_000, t0), 0);
        assert_eq!(clock.advance("s", 500_000_000, t0 + Duration::from_secs(2)), 1_000_000, "0.5 cores for 2 s");
        assert_eq!(clock.advance("s", 0, t0 + Duration::from_secs(3)), 1_000_000);
        clock.forget("s");
        assert_eq!(clock.advance("s", 1, t0 + Duration::from_secs(4)), 0);
    }
}
