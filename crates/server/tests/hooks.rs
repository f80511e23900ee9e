//! In-process API tests of the startup gate of a create: post-start hooks, readiness-gated
//! answers, startup timeouts, endpoints and the idle-timeout message (fake backend: its exec
//! echoes, exits N for `exit N` / `sh -c "exit N"`, and records every call).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_server::engine::{Engine, EngineConfig};
use agentbox_server::http::{AppState, router};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Clone)]
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

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        (status, v)
    }

    /// A pool of one `host` slot with the given runtimes and image policy.
    async fn pool(&self, name: &str, runtimes: Value, policy: &str) {
        let body = json!({
            "name": name,
            "template": {"idleImage": "pause", "runtimes": runtimes,
                "containers": [{"name": "main", "image": "host"}]},
            "replicas": 1,
            "podCreationImagePolicy": policy
        });
        let (s, v) = self.call("POST", "/v1/sandboxpools", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        self.wait_idle(name).await;
    }

    async fn wait_idle(&self, name: &str) {
        for _ in 0..300 {
            let (_, v) = self.call("GET", &format!("/v1/sandboxpools/{name}"), None).await;
            if v["pool"]["status"]["idle"] == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("pool {name} never had an idle slot");
    }

    async fn create(&self, body: Value) -> (StatusCode, Value) {
        self.call("POST", "/v1/sandboxes", Some(body)).await
    }

    async fn wait_status(&self, id: &str, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, v) = self.call("GET", &format!("/v1/sandboxes/{id}"), None).await;
            if v["sandbox"]["status"] == want {
                return v["sandbox"].clone();
            }
            assert!(Instant::now() < deadline, "sandbox {id} did not reach {want} within {within:?}: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn execs(&self) -> Vec<String> {
        self.backend.calls.lock().iter().filter(|c| c.starts_with("exec ")).cloned().collect()
    }
}

#[tokio::test]
async fn invalid_hooks_are_refused_naming_the_index() {
    let app = TestApp::new().await;
    app.pool("p", json!([]), "PoolDefaultImage").await;
    let ok = json!({"exec": {"command": "true"}});
    let cases = [
        (json!([ok, {}]), "postStartHooks[1]: give exactly one of exec or httpPost"),
        (
            json!([{"exec": {"command": "x"}, "httpPost": {"port": 80, "path": "/"}}]),
            "postStartHooks[0]: give exactly one",
        ),
        (json!([{"exec": {"command": " "}}]), "postStartHooks[0]: exec.command is empty"),
        (json!([ok, ok, {"httpPost": {"port": 0, "path": "/"}}]), "postStartHooks[2]: httpPost.port 0 is out of range"),
        (json!([{"httpPost": {"port": 70000, "path": "/"}}]), "use 1..=65535"),
        (json!([{"httpPost": {"port": 80, "path": "init"}}]), "httpPost.path \"init\" must start with '/'"),
        (json!([{"httpPost": {"port": 80, "path": "/", "body": "text"}}]), "httpPost.body must be a JSON object"),
        (json!(vec![ok.clone(); 17]), "postStartHooks has 17 entries; at most 16"),
        (json!([{"exec": {"command": "x", "user": "root"}}]), "unknown field"),
    ];
    for (hooks, want) in cases {
        let (s, v) = app.create(json!({"poolName": "p", "postStartHooks": hooks})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{hooks}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(want), "{hooks}: {msg:?} should contain {want:?}");
    }
    // Nothing was claimed by the refused requests.
    let (_, v) = app.call("GET", "/v1/sandboxpools/p", None).await;
    assert_eq!(v["pool"]["status"]["idle"], 1, "{v}");
    assert!(app.execs().is_empty());
}

#[tokio::test]
async fn hooks_run_in_order_after_the_switch_and_are_recorded() {
    let app = TestApp::new().await;
    app.pool("p", json!([]), "IdleImage").await;
    let hooks = json!([{"exec": {"command": "echo one"}}, {"exec": {"command": "echo two"}}]);
    let (s, v) = app.create(json!({"poolName": "p", "postStartHooks": hooks})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let sb = &v["sandbox"];
    assert_eq!(sb["status"], "Running", "{v}");
    assert!(sb["startedAt"].is_string(), "{v}");
    assert!(sb.get("statusDetail").is_none(), "no detail once running: {v}");
    assert_eq!(sb["postStartHooks"], hooks, "{v}");
    let slot = sb["podName"].as_str().unwrap();
    let calls: Vec<String> = app.backend.calls.lock().iter().filter(|c| c.contains(slot)).cloned().collect();
    let pos = |want: &str| calls.iter().position(|c| c == want).unwrap_or_else(|| panic!("{want} not in {calls:?}"));
    let (switch, one, two) = (
        pos(&format!("switch {slot} host")),
        pos(&format!("exec {slot} /bin/sh -c echo one")),
        pos(&format!("exec {slot} /bin/sh -c echo two")),
    );
    assert!(switch < one && one < two, "switch, then the hooks in order: {calls:?}");
    let (_, v) = app.call("GET", &format!("/v1/sandboxes/{}", sb["sandboxId"].as_str().unwrap()), None).await;
    assert_eq!(v["sandbox"]["postStartHooks"], hooks, "GET shows the hooks: {v}");
}

#[tokio::test]
async fn a_failing_exec_hook_fails_the_sandbox_with_422() {
    let app = TestApp::new().await;
    app.pool("p", json!([]), "PoolDefaultImage").await;
    let hooks = json!([{"exec": {"command": "echo fine"}}, {"exec": {"command": "exit 7"}}]);
    let t = Instant::now();
    let (s, v) = app.create(json!({"poolName": "p", "postStartHooks": hooks, "startupTimeout": "1s"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(t.elapsed() >= Duration::from_millis(900), "retried until the startup deadline: {:?}", t.elapsed());
    assert_eq!(v["errorCode"], "POST_START_HOOK_FAILED", "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("post-start hook 1") && msg.contains("exited with code 7: fake: exit 7"), "{msg}");
    assert_eq!(v["detail"]["hookIndex"], 1, "{v}");
    assert!(v["detail"]["error"].as_str().unwrap().contains("exited with code 7"), "{v}");
    let id = v["detail"]["sandboxId"].as_str().unwrap().to_string();
    // Retried with backoff (200 ms, 400 ms, ...): more than one attempt, the first hook only once.
    let execs = app.execs();
    assert_eq!(execs.iter().filter(|c| c.ends_with("echo fine")).count(), 1, "{execs:?}");
    let tries = execs.iter().filter(|c| c.ends_with("exit 7")).count();
    assert!((2..=6).contains(&tries), "{tries} attempts: {execs:?}");

    let sb = app.wait_status(&id, "Failed", Duration::from_secs(5)).await;
    assert_eq!(sb["failureReason"], "PostStartHookFailed", "{sb}");
    assert!(sb["failureMessage"].as_str().unwrap().contains("post-start hook 1"), "{sb}");
    assert_eq!(sb["statusDetail"]["reason"], "PostStartHookFailed", "{sb}");
    assert!(sb["recycledAt"].is_string(), "{sb}");
    assert!(sb.get("startedAt").is_none(), "never Running: {sb}");
    // In history with the failure, and the slot back in the pool.
    let (_, list) = app.call("GET", "/v1/sandboxes?status=Failed", None).await;
    assert_eq!(list["items"][0]["sandboxId"], id.as_str(), "{list}");
    app.wait_idle("p").await;
}

#[tokio::test]
async fn readiness_gates_the_answer_and_times_out_with_503() {
    let app = TestApp::new().await;
    let runtimes = json!([
        {"name": "ok", "port": 8000, "logDir": "/var/log/ok", "readinessProbe": {"exec": {"command": ["true"]}}},
        {"name": "logs", "logDir": "/var/log/x"}
    ]);
    app.pool("good", runtimes, "PoolDefaultImage").await;
    let (s, v) = app.create(json!({"poolName": "good"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let sb = &v["sandbox"];
    assert_eq!(sb["status"], "Running", "{v}");
    let slot = sb["podName"].as_str().unwrap();
    assert!(app.execs().contains(&format!("exec {slot} true")), "the probe ran before the answer");
    // Endpoints: the slot IP without a proxy base URL; a runtime without port has only its logDir.
    let ip = sb["ip"].as_str().unwrap();
    assert_eq!(sb["endpoints"]["ok"], json!({"url": format!("http://{ip}:8000"), "logDir": "/var/log/ok"}), "{v}");
    assert_eq!(sb["endpoints"]["logs"], json!({"logDir": "/var/log/x"}), "{v}");

    let bad = json!([{"name": "web", "readinessProbe": {"exec": {"command": ["exit", "1"]}}}]);
    app.pool("bad", bad, "PoolDefaultImage").await;
    let t = Instant::now();
    let (s, v) = app.create(json!({"poolName": "bad", "startupTimeout": "1s"})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("startup timeout (1s)") && msg.contains("runtime web: probe command exited with code 1"),
        "{msg}"
    );
    let id = v["detail"]["sandboxId"].as_str().unwrap();
    let sb = app.wait_status(id, "Released", Duration::from_secs(5)).await;
    assert_eq!(sb["statusDetail"]["reason"], "StartupTimeout", "{sb}");
    assert!(sb["failureMessage"].as_str().unwrap().contains("runtime web"), "{sb}");
    app.wait_idle("bad").await;

    // waitForReady=false answers at once even though the probe fails.
    let (s, v) = app.create(json!({"poolName": "bad", "waitForReady": false})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["sandbox"]["status"], "Running");
}

#[tokio::test]
async fn the_sandbox_is_starting_while_gated_and_a_delete_cancels_it() {
    let app = TestApp::new().await;
    app.pool("p", json!([]), "PoolDefaultImage").await;
    let create = {
        let app = app.clone();
        tokio::spawn(async move {
            let hooks = json!([{"exec": {"command": "exit 1"}}]);
            app.create(json!({"poolName": "p", "postStartHooks": hooks, "startupTimeout": "20s"})).await
        })
    };
    // Find it while its hook keeps failing: Starting, with a detail saying why.
    let deadline = Instant::now() + Duration::from_secs(5);
    let sb = loop {
        let (_, v) = app.call("GET", "/v1/sandboxes?status=Starting", None).await;
        if let Some(sb) = v["items"].get(0) {
            break sb.clone();
        }
        assert!(Instant::now() < deadline, "no Starting sandbox: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sb["statusDetail"]["reason"], "PostStartHooks", "{sb}");
    let id = sb["sandboxId"].as_str().unwrap();
    let (s, v) = app.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = tokio::time::timeout(Duration::from_secs(5), create).await.expect("create answers soon").unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("deleted while starting"), "{v}");
    let sb = app.wait_status(id, "Canceled", Duration::from_secs(5)).await;
    assert!(sb.get("failureReason").is_none(), "the delete won, not the hook: {sb}");
    app.wait_idle("p").await;
}

#[tokio::test]
async fn the_idle_timeout_message_says_when_the_sandbox_was_last_active() {
    let app = TestApp::new().await;
    app.pool("p", json!([]), "PoolDefaultImage").await;
    let (s, v) = app.create(json!({"poolName": "p", "idleTimeout": "1s"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["sandbox"]["sandboxId"].as_str().unwrap();
    let sb = app.wait_status(id, "Released", Duration::from_secs(5)).await;
    let msg = sb["statusDetail"]["message"].as_str().unwrap();
    let at = msg.split("last active at ").nth(1).unwrap_or_else(|| panic!("{msg}"));
    let at = chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("{at:?}: {e}"));
    let claimed = chrono::DateTime::parse_from_rfc3339(sb["claimedAt"].as_str().unwrap()).unwrap();
    let gap = (at - claimed).num_milliseconds();
    assert!((0..500).contains(&gap), "last active right after the claim, got {gap} ms: {sb}");
}
