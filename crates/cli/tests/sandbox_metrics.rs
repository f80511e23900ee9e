//! Per-sandbox metrics from the slot's cgroup on real containers, through E2B's
//! `GET /sandboxes/{id}/metrics`: the limits are the totals, burning CPU shows as CPU percent,
//! allocating memory and writing files show as memory and disk use.

mod common;

use std::time::Duration;

use common::{Opts, Server};
use serde_json::{Value, json};

fn metrics(e2b: &str, id: &str) -> Value {
    let r = reqwest::blocking::Client::new()
        .get(format!("{e2b}/sandboxes/{id}/metrics"))
        .timeout(Duration::from_secs(60))
        .send()
        .expect("GET metrics");
    let status = r.status().as_u16();
    let v: Value = r.json().expect("a JSON body");
    assert_eq!(status, 200, "{v}");
    let list = v.as_array().unwrap_or_else(|| panic!("a list: {v}"));
    assert_eq!(list.len(), 1, "{v}");
    list[0].clone()
}

fn num(m: &Value, k: &str) -> f64 {
    m[k].as_f64().unwrap_or_else(|| panic!("{k} in {m}"))
}

#[test]
fn sandbox_metrics_follow_the_slot_cgroup() {
    if common::skip_unless_root("sandbox_metrics_follow_the_slot_cgroup") {
        return;
    }
    let srv = Server::start(Opts::new(35));
    let e2b = srv.e2b_url().expect("the server printed its E2B API address");
    srv.create_pool(&json!({
        "name": "metered",
        "template": {
            "idleImage": "pause",
            "containers": [{
                "name": "main",
                "image": "host",
                "command": ["sleep", "infinity"],
                "resources": { "limits": { "memory": "256Mi", "cpu": "500m" } }
            }]
        },
        "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage"
    }));
    srv.wait_pool_idle("metered", 1);
    let sb = srv.claim(&json!({"poolName": "metered"}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();

    let m = metrics(&e2b, &id);
    eprintln!("idle: {m}");
    // Half a CPU counts as one; the memory limit is the total.
    assert_eq!((m["cpuCount"].as_u64(), m["memTotal"].as_u64()), (Some(1), Some(256 << 20)), "{m}");
    assert!(num(&m, "memUsed") > 0.0, "{m}");
    assert!(num(&m, "diskTotal") > 0.0, "{m}");
    let idle_mem = num(&m, "memUsed");
    let idle_disk = num(&m, "diskUsed");

    // Burn CPU, hold 64 MiB, write 16 MiB to the container's own filesystem (not /tmp: a tmpfs).
    srv.sh_ok(&id, "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done");
    srv.sh_ok(&id, "head -c 16777216 /dev/urandom > /var/tmp/metrics.bin && sync");
    let hold = srv.exec(
        &id,
        &json!({"command": ["sh", "-c", "python3 -c 'import time; x = bytearray(64 << 20); time.sleep(20)' >/dev/null 2>&1 &"]}),
    );
    assert_eq!(hold["exitCode"], 0, "{hold}");
    std::thread::sleep(Duration::from_secs(2));
    let m = metrics(&e2b, &id);
    eprintln!("busy: {m}");
    // The previous read left a CPU reading, so this percent averages over the burn.
    let pct = num(&m, "cpuUsedPct");
    assert!(pct > 0.0 && pct <= 100.0, "{m}");
    assert!(num(&m, "memUsed") >= idle_mem + f64::from(60 << 20), "the 64 MiB held show: {m}");
    assert!(num(&m, "memUsed") <= num(&m, "memTotal"), "{m}");
    assert!(num(&m, "diskUsed") >= idle_disk + f64::from(16 << 20), "the 16 MiB written show: {m}");

    // Ended sandboxes have no metrics (404 on the E2B API).
    srv.release_and_wait(&id);
    let r = reqwest::blocking::get(format!("{e2b}/sandboxes/{id}/metrics")).unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
