//! In-process API tests of logs, log streaming, idle timeouts and readiness (fake backend).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_server::engine::{Engine, EngineConfig};
use agentbox_server::http::{AppState, router};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct TestApp {
    router: Router,
    backend: Arc<FakeBackend>,
}

impl TestApp {
    async fn new() -> TestApp {
        let backend = Arc::new(FakeBackend::new());
        let engine = Engine::new(
            Arc::new(MemoryStore::new()),
            backend.clone(),
            EngineConfig {
                reconcile_interval: Duration::from_millis(20),
                idle_sweep_interval: Duration::from_millis(50),
                ..Default::default()
            },
        );
        engine.start().await.unwrap();
        TestApp { router: router(AppState::new(engine, None)), backend }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value, HeaderMap) {
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        (status, v, headers)
    }

    /// A pool of `replicas` with two containers (`main`, `side`) and the given runtimes.
    async fn pool(&self, name: &str, replicas: u32, runtimes: Value) {
        let body = json!({
            "name": name,
            "template": {"idleImage": "pause", "runtimes": runtimes,
                "containers": [{"name": "main", "image": "host"}, {"name": "side", "image": "host"}]},
            "replicas": replicas,
            "podCreationImagePolicy": "PoolDefaultImage"
        });
        let (s, v, _) = self.call("POST", "/v1/sandboxpools", Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for _ in 0..300 {
            let (_, v, _) = self.call("GET", &format!("/v1/sandboxpools/{name}"), None).await;
            if v["pool"]["status"]["idle"] == replicas {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("pool {name} never warmed up");
    }

    /// Claim a sandbox; returns (id, slot).
    async fn claim(&self, body: Value) -> (String, String) {
        let (s, v, _) = self.call("POST", "/v1/sandboxes", Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (v["sandbox"]["sandboxId"].as_str().unwrap().into(), v["sandbox"]["podName"].as_str().unwrap().into())
    }

    async fn wait_status(&self, id: &str, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, v, _) = self.call("GET", &format!("/v1/sandboxes/{id}"), None).await;
            if v["sandbox"]["status"] == want {
                return v["sandbox"].clone();
            }
            assert!(Instant::now() < deadline, "sandbox {id} did not reach {want} within {within:?}: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn runtimes() -> Value {
    json!([{"name": "app", "port": 8000, "logDir": "/var/log/app"}, {"name": "noDir", "port": 9000}])
}

#[tokio::test]
async fn logs_read_filter_and_cut_with_timestamps() {
    let app = TestApp::new().await;
    app.pool("p", 1, runtimes()).await;
    let (id, slot) = app.claim(json!({"poolName": "p"})).await;
    for i in 0..3 {
        app.backend.push_log(&slot, "main", &format!("main {i}"));
    }
    app.backend.push_log(&slot, "side", "side 0");

    let (s, v, _) = app.call("GET", &format!("/v1/sandboxes/{id}/logs?container=main&lines=2"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let logs: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["log"].as_str().unwrap()).collect();
    assert_eq!(logs, ["main 1", "main 2"]);
    assert_eq!(v["truncated"], true, "lines cut one older line");
    assert_eq!(v["totalBytes"], 14);
    assert_eq!((v["source"].as_str(), v["podName"].as_str()), (Some("live"), Some(slot.as_str())));
    assert_eq!(v["namespace"], "default");
    assert!(v["entries"].as_array().unwrap().iter().all(|e| e["timestamp"].is_string() && e["container"] == "main"));

    let (s, v, _) = app.call("GET", &format!("/v1/sandboxes/{id}/logs"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["entries"].as_array().unwrap().len(), 4);
    assert_eq!(v["truncated"], false);
    let (_, v, _) = app.call("GET", &format!("/v1/sandboxes/{id}/logs?lines=4&source=stdout"), None).await;
    assert_eq!((v["entries"].as_array().unwrap().len(), &v["truncated"]), (4, &json!(false)));

    // A runtime with a logDir is read through exec inside the sandbox.
    let (s, v, _) = app.call("GET", &format!("/v1/sandboxes/{id}/logs?source=app"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["source"].as_str(), v["runtimeName"].as_str()), (Some("runtime"), Some("app")));
}

#[tokio::test]
async fn logs_reject_bad_requests_clearly() {
    let app = TestApp::new().await;
    app.pool("p", 1, runtimes()).await;
    let (id, _) = app.claim(json!({"poolName": "p"})).await;
    let base = format!("/v1/sandboxes/{id}");
    for path in [format!("{base}/logs?lines=10001"), format!("{base}/logs/stream?lines=10001")] {
        let (s, v, _) = app.call("GET", &path, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert!(v["error"].as_str().unwrap().contains("0..=10000"), "{v}");
    }
    let (s, v, _) = app.call("GET", &format!("{base}/logs?lines=-1"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v, _) = app.call("GET", &format!("{base}/logs?container=nope"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("\"nope\"") && msg.contains("\"main\"") && msg.contains("\"side\""), "{msg}");
    let (s, v, _) = app.call("GET", &format!("{base}/logs?source=noDir"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("[\"app\"]") && msg.contains("stdout"), "only runtimes with a logDir are listed: {msg}");
    let (s, _, _) = app.call("GET", "/v1/sandboxes/does-not-exist/logs", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = app.call("GET", "/v1/sandboxes/does-not-exist/logs/stream", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Ended: the logs went with the slot; the stream says so with its end marker only.
    let (s, _, _) = app.call("DELETE", &base, None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_status(&id, "Completed", Duration::from_secs(5)).await;
    let (s, v, _) = app.call("GET", &format!("{base}/logs"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("discarded"), "{v}");
    let req = Request::get(format!("{base}/logs/stream")).body(Body::empty()).unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let meta: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(meta, json!({"_meta": true, "source": "live", "truncated": false}));
}

/// Read NDJSON lines from a streaming body until `pred` holds for one of them.
async fn read_until(body: &mut Body, buf: &mut String, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(nl) = buf.find('\n') {
            let line: String = buf.drain(..=nl).collect();
            let v: Value = serde_json::from_str(line.trim()).unwrap();
            let done = pred(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(Ok(f))) => buf.push_str(std::str::from_utf8(f.data_ref().unwrap()).unwrap()),
            other => panic!("stream ended or stalled before the expected line; seen {seen:?}; {:?}", other.is_ok()),
        }
    }
}

#[tokio::test]
async fn log_stream_follows_and_ends_with_the_sandbox() {
    let app = TestApp::new().await;
    app.pool("p", 1, json!([])).await;
    let (id, slot) = app.claim(json!({"poolName": "p"})).await;
    app.backend.push_log(&slot, "main", "before");
    let req =
        Request::get(format!("/v1/sandboxes/{id}/logs/stream?container=main&lines=1")).body(Body::empty()).unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/x-ndjson");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let mut body = resp.into_body();
    let mut buf = String::new();
    let first = read_until(&mut body, &mut buf, |v| v["log"] == "before").await;
    assert_eq!(first.len(), 1);
    assert!(first[0]["timestamp"].is_string() && first[0]["container"] == "main", "{first:?}");

    app.backend.push_log(&slot, "side", "not followed");
    app.backend.push_log(&slot, "main", "after");
    let next = read_until(&mut body, &mut buf, |v| v["log"] == "after").await;
    assert_eq!(next.len(), 1, "the side container is filtered out: {next:?}");

    let (s, _, _) = app.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let end = read_until(&mut body, &mut buf, |v| v["_meta"] == true).await;
    assert_eq!(end.last().unwrap(), &json!({"_meta": true, "source": "live", "truncated": false}));
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.expect("the stream ends");
    assert!(rest.unwrap().to_bytes().is_empty(), "nothing after the end marker");
}

#[tokio::test]
async fn timeout_set_clear_and_errors() {
    let app = TestApp::new().await;
    app.pool("p", 1, json!([])).await;
    let (id, _) = app.claim(json!({"poolName": "p"})).await;
    let path = format!("/v1/sandboxes/{id}/timeout");
    let (s, v, _) = app.call("PUT", &path, Some(r#"{"timeout":"30m"}"#)).await;
    assert_eq!((s, &v["sandbox"]["idleTimeoutSeconds"]), (StatusCode::OK, &json!(1800)), "{v}");
    assert!(v["sandbox"]["lastActiveAt"].is_string());
    let (s, v, _) = app.call("PUT", &path, Some(r#"{"timeout":90}"#)).await;
    assert_eq!((s, &v["sandbox"]["idleTimeoutSeconds"]), (StatusCode::OK, &json!(90)));
    let (_, v, _) = app.call("GET", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(v["sandbox"]["idleTimeoutSeconds"], 90, "stored");
    let (s, v, _) = app.call("PUT", &path, Some(r#"{"timeout":"0"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["sandbox"].get("idleTimeoutSeconds").is_none(), "removed: {v}");

    for bad in [r#"{"timeout":"soon"}"#, r#"{}"#, r#"{"timeout":-1}"#, r#"{"timeout":"1m","x":1}"#, r#"[]"#] {
        let (s, v, _) = app.call("PUT", &path, Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(v["error"].as_str().unwrap().contains("\"30m\""), "{bad}: {v}");
    }
    let (s, _, _) = app.call("PUT", &path, Some("not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = app.call("PUT", "/v1/sandboxes/nope/timeout", Some(r#"{"timeout":"1m"}"#)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    app.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    app.wait_status(&id, "Completed", Duration::from_secs(5)).await;
    let (s, v, _) = app.call("PUT", &path, Some(r#"{"timeout":"1m"}"#)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}

#[tokio::test]
async fn idle_sandboxes_are_released_and_active_ones_kept() {
    let app = TestApp::new().await;
    app.pool("p", 3, json!([])).await;
    let (idle, _) = app.claim(json!({"poolName": "p", "idleTimeout": "1s"})).await;
    let (busy, _) = app.claim(json!({"poolName": "p", "idleTimeout": "1s"})).await;
    let (cleared, _) = app.claim(json!({"poolName": "p", "idleTimeout": "1s"})).await;
    let (s, _, _) = app.call("PUT", &format!("/v1/sandboxes/{cleared}/timeout"), Some(r#"{"timeout":0}"#)).await;
    assert_eq!(s, StatusCode::OK);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        let (s, _, _) = app.call("POST", &format!("/v1/sandboxes/{busy}/exec"), Some(r#"{"command":["true"]}"#)).await;
        assert_eq!(s, StatusCode::OK, "the busy sandbox stays Running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sb = app.wait_status(&idle, "Released", Duration::from_secs(3)).await;
    assert_eq!(sb["statusDetail"]["reason"], "IdleTimeout", "{sb}");
    assert!(sb["statusDetail"]["message"].as_str().unwrap().contains("1s"), "{sb}");
    let (_, v, _) = app.call("GET", &format!("/v1/sandboxes/{busy}"), None).await;
    assert_eq!(v["sandbox"]["status"], "Running");
    let (_, v, _) = app.call("GET", &format!("/v1/sandboxes/{cleared}"), None).await;
    assert_eq!(v["sandbox"]["status"], "Running", "timeout 0 removed the idle timeout");
    // Without activity the busy one goes too.
    let sb = app.wait_status(&busy, "Released", Duration::from_secs(4)).await;
    assert_eq!(sb["statusDetail"]["reason"], "IdleTimeout");
}

#[tokio::test]
async fn is_ready_probes_each_runtime() {
    let app = TestApp::new().await;
    // The fake backend's exec exits with N for `exit N` and 0 for anything else.
    app.pool(
        "ok",
        1,
        json!([{"name": "a", "readinessProbe": {"exec": {"command": ["true"]}}}, {"name": "plain", "port": 1}]),
    )
    .await;
    app.pool("bad", 1, json!([{"name": "a", "readinessProbe": {"exec": {"command": ["exit", "1"]}}}])).await;
    let (ok, _) = app.claim(json!({"poolName": "ok"})).await;
    let (s, v, _) = app.call("GET", &format!("/v1/sandboxes/{ok}/is_ready"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"sandboxId": ok, "ready": true, "endpoints": {"a": {"ready": true}, "plain": {"ready": true}}})
    );

    // A failing probe would hold the create until the startup timeout: opt out of the gate.
    let (bad, _) = app.claim(json!({"poolName": "bad", "waitForReady": false})).await;
    let (s, v, _) = app.call("GET", &format!("/v1/sandboxes/{bad}/is_ready"), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["ready"], false);
    assert!(v["endpoints"]["a"]["message"].as_str().unwrap().contains("exited with code 1"), "{v}");

    app.call("DELETE", &format!("/v1/sandboxes/{ok}"), None).await;
    app.wait_status(&ok, "Completed", Duration::from_secs(5)).await;
    let (s, v, _) = app.call("GET", &format!("/v1/sandboxes/{ok}/is_ready"), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["endpoints"]["plain"]["message"], "sandbox is in Completed phase, not Running");
    let (s, _, _) = app.call("GET", "/v1/sandboxes/nope/is_ready", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
