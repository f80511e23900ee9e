//! In-process API tests: the real router and engine over the in-memory store and fake backend.

use std::sync::Arc;
use std::time::Duration;

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

struct TestApp {
    router: Router,
}

impl TestApp {
    async fn new() -> TestApp {
        let engine = Engine::new(
            Arc::new(MemoryStore::new()),
            Arc::new(FakeBackend::new()),
            EngineConfig { reconcile_interval: Duration::from_millis(20), ..Default::default() },
        );
        engine.start().await.unwrap();
        TestApp { router: router(AppState::new(engine, None)) }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value, axum::http::HeaderMap) {
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

    async fn pool(&self, name: &str, replicas: u32) {
        let body = json!({
            "name": name,
            "template": {"idleImage": "pause", "containers": [{"name": "main", "image": "host"}]},
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
}

#[tokio::test]
async fn openapi_document_matches_the_committed_snapshot() {
    let doc = serde_json::to_string_pretty(&agentbox_server::http::openapi()).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &doc).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == doc,
        "docs/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p agentbox-server --test api` and review the diff"
    );
    let v: Value = serde_json::from_str(&doc).unwrap();
    for p in ["/v1/sandboxes", "/v1/sandboxes/{id}/exec", "/v1/sandboxpools/{name}", "/v1/admin/sandbox-templates"] {
        assert!(v["paths"].get(p).is_some(), "{p} missing from the OpenAPI document");
    }
}

#[tokio::test]
async fn ping_and_openapi_are_served() {
    let app = TestApp::new().await;
    let (s, v, _) = app.call("GET", "/ping", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v, _) = app.call("GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["paths"]["/v1/sandboxes"].is_object());
    let (s, v, _) = app.call("GET", "/v1/auth/whoami", None).await;
    assert_eq!((s, v["role"].as_str()), (StatusCode::OK, Some("admin")));
}

#[tokio::test]
async fn sandbox_lifecycle_over_http() {
    let app = TestApp::new().await;
    app.pool("p", 2).await;
    let (s, v, _) = app.call("POST", "/v1/sandboxes", Some(r#"{"poolName":"p","metadata":{"run":"42"}}"#)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let sb = &v["sandbox"];
    assert_eq!(sb["status"], "Running");
    assert_eq!(sb["metadata"]["run"], "42");
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    let (s, v, _) = app.call("POST", &format!("/v1/sandboxes/{id}/exec"), Some(r#"{"command":["exit","3"]}"#)).await;
    assert_eq!((s, v["exitCode"].as_i64()), (StatusCode::OK, Some(3)));
    let (s, v, _) = app.call("GET", "/v1/sandboxes?status=Running&poolName=p", None).await;
    assert_eq!((s, v["total"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, v, _) = app.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::ACCEPTED, Some("Stopping")));
    for _ in 0..200 {
        let (_, v, _) = app.call("GET", &format!("/v1/sandboxes/{id}"), None).await;
        if v["sandbox"]["status"] == "Completed" {
            assert!(v["sandbox"]["recycledAt"].is_string());
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sandbox never completed");
}

#[tokio::test]
async fn no_idle_slot_is_409_with_pool_status_and_retry_after() {
    let app = TestApp::new().await;
    app.pool("p", 1).await;
    let (s, _, _) = app.call("POST", "/v1/sandboxes", Some(r#"{"poolName":"p"}"#)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v, h) = app.call("POST", "/v1/sandboxes", Some(r#"{"poolName":"p","wait":false}"#)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(h.get("retry-after").is_some());
    assert_eq!(v["detail"]["running"], 1);
    assert_eq!(v["detail"]["idle"], 0);
    assert!(v["error"].as_str().unwrap().contains("no idle sandbox"));
    // Waiting for a short startup timeout also ends in 409.
    let (s, _, _) = app.call("POST", "/v1/sandboxes", Some(r#"{"poolName":"p","startupTimeout":"200ms"}"#)).await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let app = TestApp::new().await;
    app.pool("p", 1).await;
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("POST", "/v1/sandboxes", Some("{not json"), 400, "invalid request body"),
        ("POST", "/v1/sandboxes", Some(r#"{"poolName":"p","bogus":1}"#), 400, "unknown field"),
        ("POST", "/v1/sandboxes", Some(r#"{}"#), 400, "poolName"),
        ("POST", "/v1/sandboxes", Some(r#"{"poolName":""}"#), 400, "poolName is required"),
        ("POST", "/v1/sandboxes", Some(r#"{"poolName":"nope"}"#), 404, "not found"),
        ("POST", "/v1/sandboxes", Some(r#"{"poolName":"p","image":"pause"}"#), 400, "idle image"),
        ("POST", "/v1/sandboxes", Some(r#"{"poolName":"p","image":"bad image"}"#), 400, "not a valid image"),
        ("POST", "/v1/sandboxes", Some(r#"{"poolName":"p","startupTimeout":"soon"}"#), 400, "invalid duration"),
        ("POST", "/v1/sandboxes", Some(r#"{"poolName":"p","containerImages":{"zz":"x"}}"#), 400, "unknown container"),
        ("GET", "/v1/sandboxes?limit=101", None, 400, "out of range"),
        ("GET", "/v1/sandboxes?limit=abc", None, 400, "invalid query"),
        ("GET", "/v1/sandboxes?status=Dancing", None, 400, "unknown"),
        ("GET", "/v1/sandboxes/does-not-exist", None, 404, "not found"),
        ("DELETE", "/v1/sandboxes/does-not-exist", None, 404, "not found"),
        ("POST", "/v1/sandboxes/does-not-exist/exec", Some(r#"{"command":"true"}"#), 404, "not found"),
        ("POST", "/v1/sandboxpools", Some(r#"{"name":"Bad_Name","templateName":"x"}"#), 400, "lowercase"),
        ("POST", "/v1/sandboxpools", Some(r#"{"name":"q"}"#), 400, "templateName or template"),
        ("POST", "/v1/sandboxpools", Some(r#"{"name":"q","templateName":"missing"}"#), 400, "not found"),
        (
            "POST",
            "/v1/sandboxpools",
            Some(r#"{"name":"q","template":{"idleImage":"host","containers":[{"name":"main","image":"host"}]}}"#),
            400,
            "must differ",
        ),
        (
            "POST",
            "/v1/sandboxpools",
            Some(
                r#"{"name":"q","replicas":999999,"template":{"idleImage":"pause","containers":[{"name":"main","image":"host"}]}}"#,
            ),
            400,
            "above the limit",
        ),
        (
            "POST",
            "/v1/sandboxpools",
            Some(r#"{"name":"p","template":{"idleImage":"pause","containers":[{"name":"main","image":"host"}]}}"#),
            409,
            "already exists",
        ),
        ("PUT", "/v1/sandboxpools/p", Some(r#"{}"#), 400, "nothing to update"),
        ("PUT", "/v1/sandboxpools/nope", Some(r#"{"replicas":1}"#), 404, "not found"),
        ("GET", "/v1/sandbox-templates/nope", None, 404, "not found"),
        ("POST", "/v1/admin/sandbox-templates", Some(r#"{"name":"t","spec":{"version":"1.0"}}"#), 400, ""),
        ("GET", "/v1/no/such/route", None, 404, "no such route"),
    ];
    for (method, path, body, want, needle) in cases {
        let (s, v, _) = app.call(method, path, *body).await;
        assert_eq!(s.as_u16(), *want, "{method} {path} {body:?} -> {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: no error message in {v}"));
        assert!(msg.contains(needle), "{method} {path}: {msg:?} does not mention {needle:?}");
    }
    // The missing pool answer lists the pools that exist.
    let (_, v, _) = app.call("POST", "/v1/sandboxes", Some(r#"{"poolName":"nope"}"#)).await;
    assert_eq!(v["detail"]["availablePools"][0]["name"], "p");
}

#[tokio::test]
async fn exec_input_is_validated() {
    let app = TestApp::new().await;
    app.pool("p", 1).await;
    let (_, v, _) = app.call("POST", "/v1/sandboxes", Some(r#"{"poolName":"p"}"#)).await;
    let id = v["sandbox"]["sandboxId"].as_str().unwrap().to_string();
    for (body, needle) in [
        (r#"{"command":""}"#, "command is required"),
        (r#"{"command":[]}"#, "command is required"),
        (r#"{"command":"true","timeoutSeconds":0}"#, "out of range"),
        (r#"{"command":"true","timeoutSeconds":301}"#, "out of range"),
        (r#"{"command":"true","cwd":"relative"}"#, "absolute"),
        (r#"{"command":"true","user":"root"}"#, "numeric"),
        (r#"{"command":42}"#, "invalid request body"),
    ] {
        let (s, v, _) = app.call("POST", &format!("/v1/sandboxes/{id}/exec"), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} -> {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body} -> {v}");
    }
}

#[tokio::test]
async fn templates_enforce_semver_and_resource_version() {
    let app = TestApp::new().await;
    let spec = json!({"version": "1.0.0", "idleImage": "pause", "containers": [{"name": "main", "image": "host"}]});
    let (s, v, _) =
        app.call("POST", "/v1/admin/sandbox-templates", Some(&json!({"name": "t", "spec": spec}).to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["template"]["resourceVersion"], 1);
    let (s, _, _) =
        app.call("POST", "/v1/admin/sandbox-templates", Some(&json!({"name": "t", "spec": spec}).to_string())).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let same = json!({"spec": spec, "resourceVersion": 1});
    let (s, v, _) = app.call("PUT", "/v1/admin/sandbox-templates/t", Some(&same.to_string())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("must be greater"));
    let mut newer = spec.clone();
    newer["version"] = json!("1.1.0");
    let (s, v, _) = app
        .call("PUT", "/v1/admin/sandbox-templates/t", Some(&json!({"spec": newer, "resourceVersion": 1}).to_string()))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["template"]["resourceVersion"], 2);
    newer["version"] = json!("1.2.0");
    let (s, v, _) = app
        .call("PUT", "/v1/admin/sandbox-templates/t", Some(&json!({"spec": newer, "resourceVersion": 1}).to_string()))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("stale"));
    // A pool made from the template copies it and records the version.
    let (s, v, _) =
        app.call("POST", "/v1/sandboxpools", Some(r#"{"name":"fromt","templateName":"t","replicas":0}"#)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["pool"]["templateVersion"], "1.1.0");
    let (s, v, _) = app.call("GET", "/v1/sandbox-templates", None).await;
    assert_eq!((s, v["total"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, _, _) = app.call("DELETE", "/v1/admin/sandbox-templates/t", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _, _) = app.call("GET", "/v1/sandboxpools/fromt", None).await;
    assert_eq!(s, StatusCode::OK, "pools keep their template copy");
}

#[tokio::test]
async fn pool_update_and_delete() {
    let app = TestApp::new().await;
    app.pool("p", 2).await;
    let (s, v, _) = app.call("PUT", "/v1/sandboxpools/p", Some(r#"{"replicas":3}"#)).await;
    assert_eq!((s, v["pool"]["spec"]["replicas"].as_u64()), (StatusCode::OK, Some(3)));
    let (s, v, _) = app.call("GET", "/v1/sandboxpools", None).await;
    assert_eq!((s, v["items"][0]["name"].as_str()), (StatusCode::OK, Some("p")));
    let (s, v, _) = app.call("DELETE", "/v1/sandboxpools/p", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::ACCEPTED, Some("Terminating")));
    for _ in 0..300 {
        let (s, _, _) = app.call("GET", "/v1/sandboxpools/p", None).await;
        if s == StatusCode::NOT_FOUND {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool was never deleted");
}
