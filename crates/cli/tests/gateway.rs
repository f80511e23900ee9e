//! The multi-cluster gateway end to end (issue #7, native API): three real `agentbox serve`
//! processes on loopback — `eu` and `us` as remote clusters, `home` as the gateway with
//! `--clusters-config` — and a user driving everything through `home`: claims on a named cluster,
//! sandbox operations by global id (`eu.uuid`), a terminal through the gateway, `cluster=` listings,
//! `*::` placement by stock with fallback on 409, a catalog edit picked up live, and a stopped
//! remote answering 502 while local requests keep working.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Opts, Server};
use serde_json::{Value, json};

fn catalog_entry(id: &str, srv: &Server) -> String {
    format!(
        "  - id: {id}\n    name: Cluster {id}\n    nativeUrl: {}\n    e2bUrl: {}\n    proxyUrl: {}\n    headers: {{x-gateway-secret: s3cr3t-{id}}}\n",
        srv.url,
        srv.e2b_url().expect("e2b url"),
        srv.proxy_url().expect("proxy url"),
    )
}

fn write_catalog(path: &Path, entries: &[String]) {
    let text = format!("clusters:\n  - id: home\n    name: Home\n{}", entries.concat());
    // Write then rename, so the gateway never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn ids(list: &Value) -> Vec<String> {
    list["items"].as_array().unwrap().iter().map(|s| s["sandboxId"].as_str().unwrap().to_string()).collect()
}

fn bare(global: &str) -> String {
    global.split_once('.').expect("a global id").1.to_string()
}

#[test]
fn gateway_routes_native_requests_across_clusters() {
    if common::skip_unless_root("gateway_routes_native_requests_across_clusters") {
        return;
    }
    let t0 = std::time::Instant::now();
    let mut eu = Server::start(Opts::new(41).default_pool(1).arg("--cluster-id").arg("eu"));
    let us = Server::start(Opts::new(42).default_pool(2).arg("--cluster-id").arg("us"));
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("clusters.yaml");
    write_catalog(&cat, &[catalog_entry("eu", &eu)]);
    let home = Server::start(
        Opts::new(43)
            .default_pool(1)
            .arg("--cluster-id")
            .arg("home")
            .arg("--clusters-config")
            .arg(cat.to_str().unwrap()),
    );

    // --- the catalog: sorted, local flagged, no URLs or headers
    let r = home.get("/v1/clusters");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"clusters": [{"id": "eu", "name": "Cluster eu", "local": false}, {"id": "home", "name": "Home", "local": true}]})
    );
    assert!(!r.text.contains("127.0.0.1") && !r.text.contains("s3cr3t"), "catalog leaks: {}", r.text);

    eu.wait_pool_idle("default", 1);
    home.wait_pool_idle("default", 1);

    // --- unknown clusters: 400 naming the known ones
    let r = home.post("/v1/sandboxes", &json!({"poolName": "mars::default"}));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["errorCode"], "CLUSTER_UNKNOWN", "{}", r.text);
    assert_eq!(r.body["detail"]["knownClusters"], json!(["eu", "home"]), "{}", r.text);
    assert!(r.body["error"].as_str().unwrap().contains("mars"), "{}", r.text);
    let r = home.get("/v1/sandboxes/mars.0192/exec");
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(home.get("/v1/sandboxes?cluster=mars").status, 400);

    // --- create on eu through the gateway
    let sb = home.claim(&json!({"poolName": "eu::default", "labels": {"via": "gateway"}}));
    let gid = sb["sandboxId"].as_str().unwrap().to_string();
    assert!(gid.starts_with("eu."), "global id {gid}");
    assert_eq!(sb["status"], "Running", "{sb}");
    let id = bare(&gid);
    // It really lives on eu (eu's own API knows it by the bare id), not on home.
    let on_eu = eu.sandbox(&id);
    assert_eq!(on_eu["labels"]["via"], "gateway", "{on_eu}");
    assert!(ids(&eu.get("/v1/sandboxes").expect(200)).contains(&id));
    assert_eq!(home.get(&format!("/v1/sandboxes/{id}")).status, 404, "the bare id is not home's");

    // --- get / exec / exec stream / logs / metrics through the gateway
    let got = home.sandbox(&gid);
    assert_eq!(got["sandboxId"], gid.as_str(), "{got}");
    assert_eq!(got["podName"], on_eu["podName"]);
    let (code, out, _) = home.sh(&gid, "echo from-eu; exit 4");
    assert_eq!((code, out.as_str()), (4, "from-eu\n"));
    let r = home.post(&format!("/v1/sandboxes/{gid}/exec/stream"), &json!({"command": "echo streamed"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some("application/x-ndjson"));
    assert!(r.text.contains("streamed") && r.text.contains("\"type\":\"exit\""), "{}", r.text);
    let logs = home.get(&format!("/v1/sandboxes/{gid}/logs"));
    assert_eq!(logs.status, 200, "{}", logs.text);
    let direct = eu.get(&format!("/v1/sandboxes/{id}/logs")).expect(200);
    assert_eq!(logs.body["sandboxId"], gid.as_str(), "{}", logs.text);
    assert_eq!(logs.body["podName"], direct["podName"], "gateway logs {} vs eu {}", logs.text, direct);

    // --- a terminal (exec token + WebSocket) through the gateway, with the CLI
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["terminal", &gid])
        .env("AGENTBOX_ENDPOINT", &home.url)
        .env_remove("AGENTBOX_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"echo term-$((6*7))\nexit 3\n").unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        panic!("agentbox terminal through the gateway did not finish in 30 s; log:\n{}", home.log_tail(80))
    });
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "stdout {stdout:?} stderr {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("term-42"), "{stdout:?}");

    // --- this cluster's own prefix is served locally
    let local = home.claim(&json!({"poolName": "home::default"}));
    let lid = local["sandboxId"].as_str().unwrap().to_string();
    assert!(lid.starts_with("home."), "{lid}");
    assert_eq!(home.sandbox(&bare(&lid))["status"], "Running");
    assert_eq!(home.sh_ok(&lid, "echo local"), "local\n");
    let by_global = home.get(&format!("/v1/sandboxes/{lid}")).expect(200);
    assert_eq!(by_global["sandbox"]["sandboxId"], lid.as_str(), "asked by its global id, answered with it");

    // --- listings: one cluster, or all of them merged with global ids
    let l = home.get("/v1/sandboxes?cluster=eu").expect(200);
    assert_eq!(ids(&l), vec![gid.clone()]);
    let l = home.get("/v1/sandboxes?cluster=*&status=Running").expect(200);
    let mut all = ids(&l);
    all.sort();
    assert_eq!(all, vec![gid.clone(), lid.clone()], "{l}");
    assert_eq!(l["total"], 2);
    let l = home.get("/v1/sandboxes?cluster=*&status=Running&limit=1&offset=1").expect(200);
    assert_eq!(l["items"].as_array().unwrap().len(), 1, "{l}");
    assert!(l.get("clusterErrors").is_none(), "{l}");
    assert_eq!(ids(&home.get("/v1/sandboxes").expect(200)), vec![bare(&lid)], "plain lists stay local");
    // The CLI: `sandbox list --cluster '*'` and `clusters` through the gateway.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_agentbox"))
            .args(args)
            .env("AGENTBOX_ENDPOINT", &home.url)
            .env_remove("AGENTBOX_API_KEY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let l = cli(&["sandbox", "list", "--cluster", "*", "--status", "Running", "-o", "json"]);
    let mut listed = ids(&l);
    listed.sort();
    assert_eq!(listed, vec![gid.clone(), lid.clone()], "{l}");
    let c = cli(&["clusters", "-o", "json"]);
    let cluster_ids: Vec<&str> = c["clusters"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(cluster_ids, ["eu", "home"], "{c}");

    // --- release both through their global ids
    assert_eq!(home.delete(&format!("/v1/sandboxes/{gid}")).expect(202)["status"], "Stopping");
    home.delete(&format!("/v1/sandboxes/{lid}")).expect(202);
    eu.wait_for("the eu sandbox to end", Duration::from_secs(60), || {
        let s = eu.sandbox(&id);
        (s["status"] != "Running" && s["status"] != "Stopping").then_some(())
    });

    // --- a catalog edit is picked up while the gateway runs
    write_catalog(&cat, &[catalog_entry("eu", &eu), catalog_entry("us", &us)]);
    home.wait_for("the gateway to load us", Duration::from_secs(15), || {
        let r = home.get("/v1/clusters").expect(200);
        (r["clusters"].as_array().unwrap().len() == 3).then_some(())
    });
    let names: Vec<String> = home.get("/v1/sandboxpools?cluster=*").expect(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["eu::default", "home::default", "us::default"]);

    // --- `*::` placement: most idle slots first, fallback on 409, 409 once all are drained
    eu.wait_pool_idle("default", 1);
    us.wait_pool_idle("default", 2);
    home.wait_pool_idle("default", 1);
    let place = || home.post("/v1/sandboxes", &json!({"poolName": "*::default", "wait": false}));
    let first = place().expect(201)["sandbox"]["sandboxId"].as_str().unwrap().to_string();
    assert!(first.starts_with("us."), "us has 2 idle slots, the others 1: got {first}");
    let second = place().expect(201)["sandbox"]["sandboxId"].as_str().unwrap().to_string();
    assert!(second.starts_with("home."), "a 1-1-1 tie goes to the local cluster: got {second}");
    // Drain eu behind the gateway's back: its cached view still says 1 idle, so eu (first by id
    // among the ties) is tried, answers 409, and the claim falls back to us.
    let direct = eu.claim(&json!({"poolName": "default"}));
    let third = place().expect(201)["sandbox"]["sandboxId"].as_str().unwrap().to_string();
    assert!(third.starts_with("us."), "eu is drained, us has one slot left: got {third}");
    let r = place();
    assert_eq!(r.status, 409, "every cluster is drained: {}", r.text);
    assert_eq!(r.body["detail"]["idle"], 0, "{}", r.text);
    assert_eq!(us.get("/v1/sandboxes?status=Running").expect(200)["total"], 2);
    eprintln!("placement fallback seen in the gateway log: {}", home.log_text().contains("could not take the claim"));

    // --- a stopped remote: 502 with the cause; local requests are unaffected
    let direct_id = direct["sandboxId"].as_str().unwrap().to_string();
    eu.kill9();
    let r = home.get(&format!("/v1/sandboxes/eu.{direct_id}"));
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(r.body["errorCode"], "CLUSTER_UNREACHABLE", "{}", r.text);
    let msg = r.body["error"].as_str().unwrap();
    assert!(msg.contains("\"eu\"") && (msg.contains("refused") || msg.contains("connect")), "{msg}");
    assert_eq!(home.sh_ok(&second, "echo still-here"), "still-here\n");
    assert_eq!(home.get("/ping").status, 200);
    let l = home.get("/v1/sandboxes?cluster=*&status=Running").expect(200);
    assert_eq!(l["clusterErrors"][0]["cluster"], "eu", "{l}");
    let mut all = ids(&l);
    all.sort();
    let mut want = vec![second.clone(), first.clone(), third.clone()];
    want.sort();
    assert_eq!(all, want, "{l}");
    // Placement skips the dead cluster (us and home are drained: 409, not 502).
    assert_eq!(place().status, 409);
    eprintln!("gateway test took {:?}", t0.elapsed());
}
