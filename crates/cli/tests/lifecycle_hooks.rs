//! The startup gate of a create against the real server and real containers: the create answers
//! only once the HTTP server started by the template's command is ready; exec hooks run inside the
//! sandbox before the answer; a failing httpPost hook fails the sandbox (422); a readiness probe
//! that never succeeds releases it at the startup timeout (503).

mod common;

use std::time::{Duration, Instant};

use common::{Opts, Server};
use serde_json::{Value, json};

/// Starts an HTTP server on :8000 one second after the container starts.
const LATE_SERVER: &str = "sleep 1; cd /tmp && exec python3 -m http.server 8000";

/// Create, expecting `want`; returns the body and how long the create took.
fn create(srv: &Server, body: &Value, want: u16) -> (Value, Duration) {
    let t = Instant::now();
    let r = srv.post("/v1/sandboxes", body);
    let took = t.elapsed();
    assert_eq!(r.status, want, "create {body}: {}", r.text);
    (r.body, took)
}

#[test]
fn lifecycle_hooks_readiness_and_startup_timeouts() {
    if common::skip_unless_root("lifecycle_hooks_readiness_and_startup_timeouts") {
        return;
    }
    let srv = Server::start(Opts::new(16));
    // IdleImage: every claim switches from `pause`, so the server starts fresh for each sandbox.
    srv.create_pool(&json!({
        "name": "web",
        "replicas": 1,
        "podCreationImagePolicy": "IdleImage",
        "template": {
            "idleImage": "pause",
            "containers": [{"name": "main", "image": "host", "command": ["sh", "-c", LATE_SERVER]}],
            "runtimes": [{"name": "web", "port": 8000, "readinessProbe": {"httpGet": {"port": 8000, "path": "/"}}}]
        }
    }));
    srv.create_pool(&json!({
        "name": "never",
        "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage",
        "template": {
            "idleImage": "pause",
            "containers": [{"name": "main", "image": "host", "command": ["sleep", "infinity"]}],
            "runtimes": [{"name": "api", "port": 8001, "readinessProbe": {"httpGet": {"port": 8001, "path": "/health"}}}]
        }
    }));
    srv.wait_pool_idle("web", 1);
    srv.wait_pool_idle("never", 1);

    // (a) + (b): readiness-gated create with exec hooks.
    let hooks = json!([{"exec": {"command": "echo ready > /tmp/hook-ran"}}, {"exec": {"command": "echo second >> /tmp/hook-ran"}}]);
    let (v, took) = create(&srv, &json!({"poolName": "web", "postStartHooks": hooks}), 201);
    let sb = &v["sandbox"];
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    eprintln!("gated create took {took:?}");
    assert_eq!(sb["status"], "Running", "{v}");
    assert!(took >= Duration::from_millis(900), "the server starts 1 s after the container; create took {took:?}");
    let url = sb["endpoints"]["web"]["url"].as_str().unwrap_or_else(|| panic!("no endpoint url: {v}")).to_string();
    assert_eq!(
        url,
        format!("{}/sandboxes/{id}/8000", srv.proxy_url().expect("data plane address")),
        "the endpoint is on the data plane: {v}"
    );
    let r = srv.http.get(&url).send().expect("GET the endpoint right after the 201");
    assert_eq!(r.status().as_u16(), 200, "the runtime answers as soon as the create did");
    assert_eq!(sb["postStartHooks"], hooks, "{v}");
    assert_eq!(srv.sh_ok(&id, "cat /tmp/hook-ran"), "ready\nsecond\n", "the hooks ran in order inside the sandbox");
    srv.release_and_wait(&id);

    // (c) an httpPost hook that the server refuses (python's http.server answers 501 to POST).
    srv.wait_pool_idle("web", 1);
    let hooks = json!([{"httpPost": {"port": 8000, "path": "/init", "body": {"hello": "world"}}}]);
    let (v, took) = create(&srv, &json!({"poolName": "web", "postStartHooks": hooks, "startupTimeout": "4s"}), 422);
    eprintln!("failing hook answered after {took:?}: {v}");
    assert_eq!(v["errorCode"], "POST_START_HOOK_FAILED", "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("post-start hook 0") && msg.contains("HTTP 501"), "{msg}");
    assert_eq!(v["detail"]["hookIndex"], 0, "{v}");
    let id = v["detail"]["sandboxId"].as_str().unwrap().to_string();
    let sb = srv.wait_for("the failed sandbox to be recycled", Duration::from_secs(30), || {
        let sb = srv.sandbox(&id);
        (sb["status"] == "Failed" && sb.get("recycledAt").is_some()).then_some(sb)
    });
    assert_eq!(sb["failureReason"], "PostStartHookFailed", "{sb}");
    assert!(sb["failureMessage"].as_str().unwrap().contains("HTTP 501"), "{sb}");
    assert_eq!(sb["postStartHooks"], hooks, "{sb}");
    srv.wait_pool_idle("web", 1);

    // (d) a readiness probe that never succeeds: 503 at the startup timeout, Released/StartupTimeout.
    let (v, took) = create(&srv, &json!({"poolName": "never", "startupTimeout": "3s"}), 503);
    eprintln!("never-ready create answered after {took:?}: {v}");
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_secs(10), "{took:?}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("startup timeout (3s)") && msg.contains("runtime api: probe request failed"), "{msg}");
    let id = v["detail"]["sandboxId"].as_str().unwrap().to_string();
    let sb = srv.wait_for("the timed-out sandbox to be recycled", Duration::from_secs(30), || {
        let sb = srv.sandbox(&id);
        (sb["status"] == "Released" && sb.get("recycledAt").is_some()).then_some(sb)
    });
    assert_eq!(sb["statusDetail"]["reason"], "StartupTimeout", "{sb}");
    assert!(sb["statusDetail"]["message"].as_str().unwrap().contains("runtime api"), "{sb}");
    srv.wait_pool_idle("never", 1);

    srv.delete_pool_and_wait("web");
    srv.delete_pool_and_wait("never");
}
