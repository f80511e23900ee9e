//! The autoscaler with real containers and short policy times: claims that wait grow the pool, an
//! idle pool shrinks back to min, and a Running sandbox is never touched by scale-down. And a pool
//! whose slots cannot start (an image nobody serves) is Degraded with a diagnostic.

mod common;

use std::time::{Duration, Instant};

use common::{Opts, Server};
use serde_json::{Value, json};

fn events(pool: &Value, reason: &str) -> Vec<Value> {
    pool["status"]["events"].as_array().into_iter().flatten().filter(|e| e["reason"] == reason).cloned().collect()
}

#[test]
fn autoscaler_grows_under_waiting_claims_and_shrinks_back_to_min() {
    if common::skip_unless_root("autoscaler_grows_under_waiting_claims_and_shrinks_back_to_min") {
        return;
    }
    let srv = Server::start(Opts::new(18));
    srv.create_pool(&json!({
        "name": "auto",
        "template": common::host_template(),
        "replicas": 1,
        "minReplicas": 1,
        "maxReplicas": 4,
        "podCreationImagePolicy": "PoolDefaultImage",
        "autoscaling": {
            "enabled": true,
            "scaleUpPolicy": { "mode": "Aggressive", "cooldownSeconds": 1, "idleThresholdSeconds": 1 },
            "scaleDownPolicy": { "idleTimeoutSeconds": 2, "stabilizationSeconds": 1, "protectionWindowSeconds": 1 }
        }
    }));
    srv.wait_pool_idle("auto", 1);

    // Four claims at once against one idle slot: three wait, and the pool grows for them.
    let started = Instant::now();
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let sb = srv.claim(&json!({ "poolName": "auto", "startupTimeout": "60s" }));
                    assert_eq!(sb["status"], "Running", "{sb}");
                    sb["sandboxId"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("claim thread")).collect()
    });
    eprintln!("4 concurrent claims served in {:?}", started.elapsed());
    let pool = srv.pool("auto");
    let replicas = pool["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas > 1, "the pool must have grown: {pool}");
    assert!(replicas <= 4, "never above maxReplicas: {pool}");
    let ups = events(&pool, "ScaledUp");
    assert!(!ups.is_empty(), "a ScaledUp event: {}", pool["status"]["events"]);
    assert_eq!(ups[0]["type"], "Normal");
    eprintln!("after the burst: replicas {replicas}, ScaledUp events {ups:?}");

    // Keep the first sandbox Running, release the others; the pool goes back down.
    let keep = ids[0].clone();
    srv.sh_ok(&keep, "echo before > /tmp/mark");
    for id in &ids[1..] {
        srv.release_and_wait(id);
    }
    let pool = srv.wait_for("replicas back to min with only the running slot left", Duration::from_secs(60), || {
        let p = srv.pool("auto");
        let st = &p["status"];
        let total: u64 = ["idle", "running", "starting", "stopping", "failed", "creating"]
            .iter()
            .map(|k| st[*k].as_u64().unwrap_or(0))
            .sum();
        (p["spec"]["replicas"] == 1 && total == 1 && st["running"] == 1).then_some(p)
    });
    let downs = events(&pool, "ScaledDown");
    assert!(!downs.is_empty(), "a ScaledDown event: {}", pool["status"]["events"]);
    assert!(!events(&pool, "ScaleDownRemoved").is_empty(), "{}", pool["status"]["events"]);
    assert!(downs.iter().any(|e| e["message"].as_str().unwrap_or("").contains("-> 1")), "{downs:?}");

    // Whatever the autoscaler did meanwhile, the Running sandbox was never touched.
    std::thread::sleep(Duration::from_secs(3));
    let sb = srv.sandbox(&keep);
    assert_eq!(sb["status"], "Running", "{sb}");
    assert_eq!(srv.sh_ok(&keep, "cat /tmp/mark"), "before\n", "same container, same writable layer");
    let pool = srv.pool("auto");
    let replicas = pool["spec"]["replicas"].as_u64().unwrap();
    assert!((1..=4).contains(&replicas), "{pool}");
    assert!(pool["status"]["running"] == 1, "{pool}");
    srv.release_and_wait(&keep);
}

#[test]
fn a_pool_whose_image_cannot_be_pulled_is_degraded_with_a_diagnostic() {
    if common::skip_unless_root("a_pool_whose_image_cannot_be_pulled_is_degraded_with_a_diagnostic") {
        return;
    }
    let srv = Server::start(Opts::new(19));
    let image = "127.0.0.1:1/nope:1";
    srv.create_pool(&json!({
        "name": "bad",
        "template": {
            "idleImage": "pause",
            "containers": [{ "name": "main", "image": image, "command": ["sleep", "infinity"] }]
        },
        "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage"
    }));
    let pool = srv.wait_for("the pool to be Degraded", Duration::from_secs(60), || {
        let p = srv.pool("bad");
        (p["status"]["phase"] == "Degraded").then_some(p)
    });
    let st = &pool["status"];
    assert_eq!(st["failed"], 1, "{st}");
    let cond = |t: &str| st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).cloned().unwrap();
    let degraded = cond("Degraded");
    assert_eq!(degraded["status"], true, "{degraded}");
    assert_eq!(degraded["reason"], "ImagePullBackOff", "{degraded}");
    assert!(degraded["message"].as_str().unwrap().contains(image), "{degraded}");
    assert_eq!(cond("Available")["status"], false);
    let diag = &st["diagnostics"][0];
    assert_eq!(diag["phase"], "failed", "{diag}");
    assert_eq!(diag["reason"], "ImagePullBackOff", "{diag}");
    assert!(diag["message"].as_str().unwrap().contains(image), "the diagnostic names the image: {diag}");
    assert!(diag["podName"].as_str().is_some_and(|p| p.starts_with("bad-")), "{diag}");
    let ev = &diag["events"][0];
    assert_eq!(ev["reason"], "ImagePullBackOff", "{diag}");
    assert!(ev["lastTimestamp"].is_string() && ev["count"].as_u64() >= Some(1), "{diag}");
    let warnings = events(&pool, "ImagePullBackOff");
    assert_eq!(warnings[0]["type"], "Warning", "{}", st["events"]);
    eprintln!("diagnostic: {diag}");
    // A claim cannot be served: it answers in time instead of hanging.
    let r = srv.post("/v1/sandboxes", &json!({ "poolName": "bad", "wait": false }));
    assert_eq!(r.status, 409, "{}", r.text);
}
