//! 200 concurrent claims against a pool of 50 with `wait: false`: exactly 50 win, each a distinct
//! slot; the other 150 get 409 with `Retry-After` and the pool status in `detail`.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Opts, Server};
use serde_json::json;

const SLOTS: usize = 50;
const CLAIMS: usize = 200;

/// Warm-up as a user does it: create a pool of 50 and wait until all 50 slots are idle. The
/// server creates slots in parallel.
#[test]
fn pool_of_50_warms_up() {
    if common::skip_unless_root("pool_of_50_warms_up") {
        return;
    }
    let srv = Server::start(Opts::new(8));
    let t0 = Instant::now();
    srv.create_pool(&json!({
        "name": "warm",
        "template": common::host_template(),
        "replicas": SLOTS,
        "podCreationImagePolicy": "PoolDefaultImage"
    }));
    let mut first_idle = None;
    let mut last = serde_json::Value::Null;
    let mut ok = false;
    while !ok && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(common::POLL);
        last = srv.pool("warm")["status"].clone();
        let idle = last["idle"].as_u64().unwrap_or(0);
        if idle > 0 && first_idle.is_none() {
            first_idle = Some(t0.elapsed());
        }
        ok = idle >= SLOTS as u64;
    }
    assert!(
        ok,
        "a pool of {SLOTS} did not warm up within 120s (first idle slot after {first_idle:?}); last status {last}\n\
         stuck children of the server: {:?}",
        stuck_children(srv.pid())
    );
    eprintln!(
        "pool of {SLOTS}: first idle slot after {:?}, all {SLOTS} idle after {:?}",
        first_idle.unwrap(),
        t0.elapsed()
    );
    let t = Instant::now();
    srv.delete_pool_and_wait("warm");
    eprintln!("deleted the idle pool of {SLOTS} in {:?}", t.elapsed());
}

/// Children of `pid` that are forks of the server itself (same executable) rather than
/// container processes: a container init that never reached `exec`.
fn stuck_children(pid: u32) -> Vec<(u32, String)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid =
            stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) && std::fs::read_link(e.path().join("exe")).ok() == exe {
            let wchan = std::fs::read_to_string(e.path().join("wchan")).unwrap_or_default();
            out.push((child, wchan));
        }
    }
    out
}

/// 200 concurrent claims with `wait: false` against 50 idle slots. The pool is grown one slot at a
/// time so that this test checks claiming, independently of parallel warm-up.
#[test]
fn concurrent_claims_no_double_booking() {
    if common::skip_unless_root("concurrent_claims_no_double_booking") {
        return;
    }
    let srv = Server::start(Opts::new(3));
    let t0 = Instant::now();
    srv.create_pool(&json!({
        "name": "burst",
        "template": common::host_template(),
        "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage"
    }));
    for n in 1..=SLOTS {
        if n > 1 {
            srv.put("/v1/sandboxpools/burst", &json!({"replicas": n})).expect(200);
        }
        srv.wait_pool_idle("burst", n as u64);
    }
    eprintln!("pool grown to {SLOTS} idle slots one at a time in {:?}", t0.elapsed());

    let barrier = Arc::new(Barrier::new(CLAIMS));
    let url = srv.url.clone();
    let t = Instant::now();
    let handles: Vec<_> = (0..CLAIMS)
        .map(|_| {
            let barrier = barrier.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
                barrier.wait();
                let r = http
                    .post(format!("{url}/v1/sandboxes"))
                    .json(&json!({"poolName": "burst", "wait": false}))
                    .send()
                    .expect("claim request");
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
                let body: serde_json::Value = r.json().unwrap_or_default();
                (status, retry_after, body)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().expect("claim thread")).collect();
    eprintln!("{CLAIMS} concurrent claims answered in {:?}", t.elapsed());

    let ok: Vec<_> = results.iter().filter(|r| r.0 == 201).collect();
    let conflict: Vec<_> = results.iter().filter(|r| r.0 == 409).collect();
    let other: Vec<_> = results.iter().filter(|r| r.0 != 201 && r.0 != 409).collect();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert_eq!(ok.len(), SLOTS, "exactly {SLOTS} claims must win");
    assert_eq!(conflict.len(), CLAIMS - SLOTS);

    let pods: BTreeSet<&str> = ok.iter().map(|r| r.2["sandbox"]["podName"].as_str().expect("podName")).collect();
    assert_eq!(pods.len(), SLOTS, "two sandboxes share a slot");
    let ids: BTreeSet<&str> = ok.iter().map(|r| r.2["sandbox"]["sandboxId"].as_str().expect("sandboxId")).collect();
    assert_eq!(ids.len(), SLOTS);
    assert!(ok.iter().all(|r| r.2["sandbox"]["status"] == "Running"));

    for (_, retry_after, body) in &conflict {
        let ra: u64 = retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("409 without Retry-After: {body}"));
        assert!(ra >= 1, "Retry-After {ra}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "409 without error message: {body}");
        let d = &body["detail"];
        for k in ["idle", "running", "starting", "stopping", "failed"] {
            assert!(d[k].is_u64(), "409 detail lacks {k}: {body}");
        }
        assert_eq!(d["idle"], 0, "a 409 says no slot is idle: {body}");
    }

    let p = srv.pool("burst");
    assert_eq!(p["status"]["running"], SLOTS as u64, "{}", p["status"]);
    assert_eq!(p["status"]["idle"], 0, "{}", p["status"]);

    // Every winner really runs commands, in its own slot.
    let hosts: BTreeSet<String> =
        ids.iter().take(5).map(|id| srv.sh_ok(id, "cat /sys/class/net/eth0/address").trim().to_string()).collect();
    assert_eq!(hosts.len(), 5, "eth0 MACs of 5 sandboxes should differ: {hosts:?}");

    // Release all; the pool refills to 50 idle.
    let t = Instant::now();
    for id in &ids {
        srv.delete(&format!("/v1/sandboxes/{id}")).expect(202);
    }
    srv.wait_for("50 idle slots after release", Duration::from_secs(180), || {
        (srv.pool("burst")["status"]["idle"].as_u64().unwrap_or(0) >= SLOTS as u64).then_some(())
    });
    eprintln!("released {SLOTS} sandboxes; all slots idle again after {:?}", t.elapsed());
    // Scale down to 10: the surplus idle slots are destroyed, with their host veths.
    srv.put("/v1/sandboxpools/burst", &json!({"replicas": 10})).expect(200);
    srv.wait_for("the pool to shrink to 10 slots", Duration::from_secs(60), || {
        let s = srv.pool("burst")["status"].clone();
        (s["idle"] == 10 && s["running"] == 0 && s["creating"] == 0 && s["stopping"] == 0).then_some(())
    });
    srv.wait_for("10 host veths", Duration::from_secs(10), || {
        (common::footprint(srv.data_dir(), &srv.opts, "burst").veths.len() == 10).then_some(())
    });

    let t = Instant::now();
    srv.delete_pool_and_wait("burst");
    eprintln!("deleted the pool of {SLOTS} in {:?}", t.elapsed());
}
