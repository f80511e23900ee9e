//! `kill -9` of the server at arbitrary moments while clients claim and release: after each restart
//! every sandbox a client was given (and did not delete) is still Running and usable, no slot is held
//! by two sandboxes, and once the load stops the pool settles back to its size with one veth per slot.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Opts, Server, footprint};
use serde_json::{Value, json};

const POOL: &str = "e2e-chaos";
const SLOTS: u64 = 8;

/// Claims and deletes in a loop; records what the server confirmed.
fn load(url: String, stop: Arc<AtomicBool>, held: Arc<Mutex<BTreeMap<String, String>>>, seed: u64) {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut n = seed;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let to_delete = {
            let h = held.lock().unwrap();
            if h.len() >= 6 || (h.len() >= 3 && n.is_multiple_of(4)) {
                h.keys().nth((n >> 33) as usize % h.len()).cloned()
            } else {
                None
            }
        };
        match to_delete {
            Some(id) => {
                match http.delete(format!("{url}/v1/sandboxes/{id}")).send() {
                    // 202: the release is durable (Stopping), whatever happens next.
                    Ok(r) if r.status().as_u16() == 202 || r.status().as_u16() == 404 => {
                        held.lock().unwrap().remove(&id);
                    }
                    Ok(_) => {}
                    // No answer (the server was killed mid-request): the delete may or may not have
                    // been committed, so the sandbox is no longer one we know is held.
                    Err(_) => {
                        held.lock().unwrap().remove(&id);
                    }
                }
            }
            None => {
                let body = json!({"poolName": POOL, "wait": false});
                if let Ok(r) = http.post(format!("{url}/v1/sandboxes")).json(&body).send()
                    && r.status().as_u16() == 201
                    && let Ok(v) = r.json::<Value>()
                {
                    let sb = &v["sandbox"];
                    held.lock().unwrap().insert(
                        sb["sandboxId"].as_str().unwrap_or_default().to_string(),
                        sb["podName"].as_str().unwrap_or_default().to_string(),
                    );
                }
            }
        }
    }
}

fn running(srv: &Server) -> BTreeMap<String, String> {
    let v = srv.get(&format!("/v1/sandboxes?poolName={POOL}&status=Running&limit=100")).expect(200);
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["sandboxId"].as_str().unwrap().to_string(), s["podName"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn kill9_under_load_loses_nothing_and_hands_out_nothing_twice() {
    if common::skip_unless_root("kill9_under_load_loses_nothing_and_hands_out_nothing_twice") {
        return;
    }
    let opts = Opts::new(9);
    let mut srv = Server::start(opts.clone());
    srv.create_pool(&json!({
        "name": POOL,
        "template": common::host_template(),
        "replicas": SLOTS,
        "podCreationImagePolicy": "PoolDefaultImage"
    }));
    srv.wait_pool_idle(POOL, SLOTS);
    let held: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    for (round, delay_ms) in [150u64, 420, 700].into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|i| {
                let (url, stop, held) = (srv.url.clone(), Arc::clone(&stop), Arc::clone(&held));
                std::thread::spawn(move || load(url, stop, held, round as u64 * 10 + i))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        srv.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        srv.restart();
        let live = running(&srv);
        let confirmed = held.lock().unwrap().clone();
        eprintln!("round {round}: {} confirmed by the server, {} Running after restart", confirmed.len(), live.len());
        for (id, pod) in &confirmed {
            assert_eq!(live.get(id), Some(pod), "sandbox {id} was confirmed but is not Running after the restart");
            assert_eq!(srv.sh_ok(id, "echo alive").trim(), "alive");
        }
        let pods: BTreeSet<&String> = live.values().collect();
        assert_eq!(pods.len(), live.len(), "a slot is held by two Running sandboxes: {live:?}");
        // Sandboxes claimed right before the kill whose answer was lost are Running too; release them
        // so the next round starts from what the clients know.
        for id in live.keys().filter(|id| !confirmed.contains_key(*id)) {
            srv.delete(&format!("/v1/sandboxes/{id}")).expect(202);
        }
    }
    // Release everything; the pool must settle to its size with nothing extra on the host.
    for id in running(&srv).keys() {
        srv.delete(&format!("/v1/sandboxes/{id}")).expect(202);
    }
    srv.wait_pool_idle(POOL, SLOTS);
    let fp = footprint(srv.data_dir(), &opts, POOL);
    assert_eq!(fp.veths.len() as u64, SLOTS, "one host veth per slot, nothing leaked: {fp:?}");
    let status = srv.pool(POOL)["status"].clone();
    assert_eq!(status["failed"], 0, "{status}");
    srv.delete_pool_and_wait(POOL);
    let fp = footprint(srv.data_dir(), &opts, POOL);
    assert!(fp.is_empty(), "pool deleted but left {fp:?}");
}
