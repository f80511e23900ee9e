//! Quotas end to end through the CLI against the real server: create and list quotas, reserve a
//! pool against one, and see the CLI fail with the server's 429 when the quota is full.

mod common;

use common::{Opts, Server};
use serde_json::{Value, json};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn quota_reservations_through_the_cli() {
    if common::skip_unless_root("quota_reservations_through_the_cli") {
        return;
    }
    let srv = Server::start(Opts::new(14));
    let dir = tempfile::tempdir().expect("tempdir");
    let pool_file = dir.path().join("pool.json");
    let mut template = common::host_template();
    template["containers"][0]["resources"] = json!({"requests": {"cpu": "500m", "memory": "256Mi"}});
    std::fs::write(&pool_file, json!({"template": template, "replicas": 1}).to_string()).unwrap();
    let pool_file = pool_file.to_str().unwrap();

    // Create and list.
    let out =
        srv.cli(&["quota", "create", "e2e", "--url", "org.e2e", "--cpu", "2", "--memory", "1Gi", "--sandboxes", "1"]);
    assert!(out.status.success(), "quota create: {}{}", text(&out.stdout), text(&out.stderr));
    let out = srv.cli(&["quota", "list"]);
    assert!(out.status.success(), "quota list: {}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("org.e2e") && table.contains("sandboxes=1"), "quota list table:\n{table}");
    let out = srv.cli(&["quota", "list", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("quota list -o json is JSON");
    assert_eq!(v["total"], 1);
    assert_eq!(v["items"][0]["resources"], json!({"cpu": "2", "memory": "1Gi", "sandboxes": 1}));

    // A URL without a quota: 400 that lists the usable ones.
    let out = srv.cli(&["pool", "create", "p0", "--file", pool_file, "--quota-url", "org.nope"]);
    assert_eq!(out.status.code(), Some(1), "stdout {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("400") && err.contains("available quota URLs: org.e2e"), "stderr: {err}");

    // The first pool fits; the second is refused with 429 and nothing is created.
    let out = srv.cli(&["pool", "create", "p1", "--file", pool_file, "--quota-url", "org.e2e", "-o", "json"]);
    assert!(out.status.success(), "pool create p1: {}", text(&out.stderr));
    let p1: Value = serde_json::from_slice(&out.stdout).expect("pool create -o json is JSON");
    assert_eq!(p1["pool"]["spec"]["reservation"], json!({"quotaURL": "org.e2e"}));
    let out = srv.cli(&["pool", "create", "p2", "--file", pool_file, "--quota-url", "org.e2e"]);
    assert_eq!(out.status.code(), Some(1), "over-quota create must fail; stdout {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("429") && err.contains("not enough free resources"), "stderr: {err}");
    assert_eq!(srv.get("/v1/sandboxpools/p2").status, 404);

    // The quota shows the reservation and cannot be deleted while p1 is charged to it.
    let out = srv.cli(&["quota", "get", "e2e", "-o", "json"]);
    let q: Value = serde_json::from_slice(&out.stdout).expect("quota get -o json is JSON");
    assert_eq!(q["quota"]["reserved"]["sandboxes"], 1);
    assert_eq!(q["quota"]["free"], json!({"cpu": "1500m", "memory": "768Mi", "sandboxes": 0}));
    let out = srv.cli(&["quota", "delete", "e2e"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("p1"), "stderr: {}", text(&out.stderr));

    // Raising the quota admits the second pool, whose slot really starts.
    let out = srv.cli(&["quota", "update", "e2e", "--sandboxes", "2"]);
    assert!(out.status.success(), "quota update: {}", text(&out.stderr));
    let out = srv.cli(&["pool", "create", "p2", "--file", pool_file, "--quota-url", "org.e2e"]);
    assert!(out.status.success(), "pool create p2 after raising: {}", text(&out.stderr));
    srv.wait_pool_idle("p2", 1);

    srv.delete_pool_and_wait("p1");
    srv.delete_pool_and_wait("p2");
    let out = srv.cli(&["quota", "delete", "e2e", "-o", "json"]);
    assert!(out.status.success(), "quota delete: {}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["status"], "Deleted");
}
