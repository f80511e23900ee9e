//! `kill -9` of the server: running sandboxes survive, are re-adopted by the next start with their
//! files, the pool settles back to its size, and nothing leaks (mounts, cgroups, veths, processes).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Opts, Server, footprint};
use serde_json::json;

const POOL: &str = "e2e-restart";

#[test]
fn kill9_restart_readopts_sandboxes_without_leaks() {
    if common::skip_unless_root("kill9_restart_readopts_sandboxes_without_leaks") {
        return;
    }
    let opts = Opts::new(5);
    let mut srv = Server::start(opts.clone());
    srv.create_pool(&json!({
        "name": POOL,
        "template": common::host_template(),
        "replicas": 3,
        "podCreationImagePolicy": "PoolDefaultImage"
    }));
    srv.wait_pool_idle(POOL, 3);

    let a = srv.claim(&json!({"poolName": POOL}));
    let b = srv.claim(&json!({"poolName": POOL}));
    let (a_id, b_id) = (a["sandboxId"].as_str().unwrap().to_string(), b["sandboxId"].as_str().unwrap().to_string());
    let pods: BTreeSet<String> = [&a, &b].iter().map(|s| s["podName"].as_str().unwrap().to_string()).collect();
    assert_eq!(pods.len(), 2);
    srv.sh_ok(&a_id, "echo survives-kill-9 > /tmp/keep && sync");
    let mac_a = srv.sh_ok(&a_id, "cat /sys/class/net/eth0/address");

    // Settle: the third slot idle, nothing else in flight.
    srv.wait_for("pool running 2 / idle 1", Duration::from_secs(60), || {
        let s = srv.pool(POOL)["status"].clone();
        (s["running"] == 2 && s["idle"] == 1 && s["creating"] == 0 && s["stopping"] == 0).then_some(())
    });
    let before = footprint(srv.data_dir(), &opts, POOL);
    eprintln!(
        "footprint before kill: {} mounts, {} cgroup dirs, {} veths, {} container pids",
        before.mounts.len(),
        before.cgroups.len(),
        before.veths.len(),
        before.pids.len()
    );
    assert_eq!(before.veths.len(), 3, "3 slots, 3 host veths: {before:?}");
    assert!(before.pids.len() >= 3, "3 slots, at least 3 container processes: {before:?}");

    let old_pid = srv.pid();
    srv.kill9();
    // The containers do not die with the server.
    for pid in &before.pids {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "container process {pid} died with the server");
    }

    let t = Instant::now();
    srv.restart();
    assert_ne!(srv.pid(), old_pid);
    eprintln!("restart: listening again after {:?}", t.elapsed());

    for id in [&a_id, &b_id] {
        let s = srv.sandbox(id);
        assert_eq!(s["status"], "Running", "sandbox {id} after restart: {s}");
        assert!(pods.contains(s["podName"].as_str().unwrap()));
    }
    assert_eq!(srv.sh_ok(&a_id, "cat /tmp/keep"), "survives-kill-9\n", "file written before kill -9");
    assert_eq!(srv.sh_ok(&b_id, "echo b-alive"), "b-alive\n");
    assert_eq!(srv.sh_ok(&a_id, "cat /sys/class/net/eth0/address"), mac_a, "same network after restart");

    srv.wait_for("pool to settle after restart (running 2, idle 1)", Duration::from_secs(60), || {
        let s = srv.pool(POOL)["status"].clone();
        (s["running"] == 2 && s["idle"] == 1 && s["creating"] == 0 && s["stopping"] == 0 && s["failed"] == 0)
            .then_some(())
    });
    eprintln!("settled after restart in {:?}", t.elapsed());
    // Give a possible (wrong) re-creation a moment to show up before comparing.
    std::thread::sleep(Duration::from_secs(2));
    let after = footprint(srv.data_dir(), &opts, POOL);
    assert_eq!(before.mounts, after.mounts, "mounts differ after restart");
    assert_eq!(before.cgroups, after.cgroups, "cgroup dirs differ after restart");
    assert_eq!(before.veths, after.veths, "host veths differ after restart");
    assert_eq!(before.pids, after.pids, "container processes differ after restart");

    // The idle slot is still claimable: a third distinct slot.
    let c = srv.claim(&json!({"poolName": POOL}));
    let c_pod = c["podName"].as_str().unwrap().to_string();
    assert!(!pods.contains(&c_pod), "third claim got a slot already in use: {c_pod}");
    assert_eq!(srv.sh_ok(c["sandboxId"].as_str().unwrap(), "echo c"), "c\n");

    // Releasing a re-adopted sandbox recycles its slot.
    srv.release_and_wait(&b_id);

    // Deleting the pool removes every trace of its slots.
    let t = Instant::now();
    srv.delete_pool_and_wait(POOL);
    eprintln!("pool with 2 running sandboxes deleted in {:?}", t.elapsed());
    let a_end = srv.sandbox(&a_id);
    assert!(
        ["Released", "Completed", "Canceled", "Failed"].contains(&a_end["status"].as_str().unwrap_or("")),
        "sandbox of a deleted pool must end: {a_end}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = footprint(srv.data_dir(), &opts, POOL);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(common::POLL);
        left = footprint(srv.data_dir(), &opts, POOL);
    }
    assert!(left.is_empty(), "the deleted pool left traces on the host: {left:?}");
}
