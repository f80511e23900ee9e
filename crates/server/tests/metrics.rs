//! `/metrics` in-process: the real router and engine over the in-memory store and fake backend,
//! with an admin key configured so that the API needs credentials and `/metrics` must not.

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_server::authn::AuthConfig;
use agentbox_server::engine::{Engine, EngineConfig};
use agentbox_server::http::{AppState, router};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "admin-key-for-metrics-tests-0123456789";

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
        let cfg = AuthConfig { admin_key: Some(ADMIN.into()), ..Default::default() };
        TestApp { router: router(AppState::with_auth(engine, None, cfg)) }
    }

    /// Call the API as the admin; returns the status and the raw body.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (StatusCode, String, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("AGENTBOX-API-KEY", k);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned(), ct)
    }

    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let (s, b, _) = self.raw(method, path, body, Some(ADMIN)).await;
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    /// `GET /metrics` without credentials; asserts 200.
    async fn metrics(&self) -> String {
        let (s, body, ct) = self.raw("GET", "/metrics", None, None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert!(ct.starts_with("text/plain; version=0.0.4"), "content type {ct}");
        body
    }

    async fn pool(&self, name: &str, replicas: u32) {
        let body = json!({
            "name": name,
            "template": {"idleImage": "pause", "containers": [{"name": "main", "image": "host"}]},
            "replicas": replicas,
            "podCreationImagePolicy": "PoolDefaultImage"
        });
        let (s, v) = self.call("POST", "/v1/sandboxpools", Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for _ in 0..300 {
            let (_, v) = self.call("GET", &format!("/v1/sandboxpools/{name}"), None).await;
            if v["pool"]["status"]["idle"] == replicas {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("pool {name} never warmed up");
    }
}

/// The lines of `text` that belong to series of pool `pool`.
fn series_of<'a>(text: &'a str, pool: &str) -> Vec<&'a str> {
    let needle = format!("pool=\"{pool}\"");
    text.lines().filter(|l| !l.starts_with('#') && l.contains(&needle)).collect()
}

#[tokio::test]
async fn metrics_show_claims_pools_and_routes_and_forget_deleted_pools() {
    let app = TestApp::new().await;
    // The API itself needs credentials here; /metrics does not.
    let (s, _, _) = app.raw("GET", "/v1/sandboxes", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    app.pool("mp", 2).await;
    app.pool("other", 1).await;
    let (s, v) = app.call("POST", "/v1/sandboxes", Some(r#"{"poolName":"mp"}"#)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["sandbox"]["sandboxId"].as_str().unwrap().to_string();
    let (s, _) = app.call("POST", "/v1/sandboxes", Some(r#"{"poolName":"no-such-pool"}"#)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.call("GET", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = app.raw("GET", "/no/such/route", None, Some(ADMIN)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let m = app.metrics().await;
    for want in [
        r#"agentbox_claim_duration_seconds_bucket{le="+Inf",namespace="default",pool="mp",switched="false"} 1"#,
        r#"agentbox_sandbox_creates_total{namespace="default",pool="mp",result="ok"} 1"#,
        // An unknown pool name never becomes a series of its own.
        r#"agentbox_sandbox_creates_total{namespace="default",pool="",result="not_found"} 1"#,
        r#"agentbox_http_requests_total{method="POST",route="/v1/sandboxes",status="201"} 1"#,
        r#"agentbox_http_requests_total{method="GET",route="/v1/sandboxes/{id}",status="200"} 1"#,
        r#"agentbox_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"agentbox_pool_slots{namespace="default",pool="mp",phase="idle"} 1"#,
        r#"agentbox_pool_slots{namespace="default",pool="mp",phase="running"} 1"#,
        r#"agentbox_pool_slots{namespace="default",pool="mp",phase="failed"} 0"#,
        r#"agentbox_pool_slots{namespace="default",pool="other",phase="idle"} 1"#,
        r#"agentbox_claim_queue_waiting{namespace="default",pool="mp"} 0"#,
        r#"agentbox_claim_queue_capacity{namespace="default",pool="mp"} 8192"#,
    ] {
        assert!(m.contains(want), "missing {want} in:\n{m}");
    }
    assert!(!m.contains("no-such-pool"), "{m}");
    assert!(!m.contains(&id), "raw paths must not become route labels:\n{m}");

    // Release, then the delete and recycle metrics appear.
    let (s, _) = app.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let mut m = String::new();
    for _ in 0..300 {
        m = app.metrics().await;
        if m.contains(r#"agentbox_slot_recycle_duration_seconds_count{namespace="default",pool="mp"} 1"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for want in [
        r#"agentbox_slot_recycle_duration_seconds_count{namespace="default",pool="mp"} 1"#,
        r#"agentbox_sandbox_deletes_total{namespace="default",pool="mp",reason="Completed"} 1"#,
        r#"agentbox_sandbox_running_duration_seconds_count{namespace="default",pool="mp",reason="Completed"} 1"#,
    ] {
        assert!(m.contains(want), "missing {want} in:\n{m}");
    }

    // Delete the pool: once it is gone, every one of its series is gone; the other pool stays.
    let (s, v) = app.call("DELETE", "/v1/sandboxpools/mp", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    for _ in 0..300 {
        let (s, _) = app.call("GET", "/v1/sandboxpools/mp", None).await;
        if s == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = app.metrics().await;
    assert_eq!(series_of(&m, "mp"), Vec::<&str>::new(), "series of the deleted pool remain:\n{m}");
    assert!(!series_of(&m, "other").is_empty(), "{m}");
}

#[tokio::test]
async fn metrics_speak_openmetrics_when_asked() {
    let app = TestApp::new().await;
    app.pool("om", 1).await; // some series to show
    let req = Request::builder()
        .uri("/metrics")
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text; version=1.0.0"), "{ct}");
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE agentbox_pool_slots gauge"), "{body}");
}
