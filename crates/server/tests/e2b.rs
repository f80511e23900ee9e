//! The E2B-compatible control API through a real loopback listener (fake backend, memory store):
//! create/list/get/kill/timeout/refreshes/connect, templates, api-keys, 501s, auth and tenancy.

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_server::authn::AuthConfig;
use agentbox_server::e2b::E2bConfig;
use agentbox_server::engine::{Engine, EngineConfig};
use agentbox_server::http::{AppState, router};
use serde_json::{Value, json};

const ADMIN: &str = "admin-key-for-tests-0123456789";

struct Srv {
    native: String,
    e2b: String,
    http: reqwest::Client,
}

impl Srv {
    async fn start() -> Srv {
        let engine = Engine::new(
            Arc::new(MemoryStore::new()),
            Arc::new(FakeBackend::new()),
            EngineConfig {
                reconcile_interval: Duration::from_millis(20),
                cluster_id: "c1".into(),
                ..Default::default()
            },
        );
        engine.start().await.unwrap();
        let state =
            AppState::with_auth(engine, None, AuthConfig { admin_key: Some(ADMIN.into()), ..Default::default() });
        let e2b = agentbox_server::e2b::router(Arc::clone(&state), E2bConfig { domain: Some("127.0.0.1:9".into()) });
        let native = router(state);
        let mut urls = vec![];
        for app in [native, e2b] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", l.local_addr().unwrap()));
            tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        }
        Srv { e2b: urls.pop().unwrap(), native: urls.pop().unwrap(), http: reqwest::Client::new() }
    }

    async fn native(&self, method: &str, path: &str, body: Value, want: u16) -> Value {
        let r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.native))
            .header("AGENTBOX-API-KEY", ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{method} {path}: {v}");
        v
    }

    /// An E2B call with `X-API-Key: key` (none when empty); answers (status, body, x-next-token).
    async fn call(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value, Option<String>) {
        let mut rb = self.http.request(method.parse().unwrap(), format!("{}{path}", self.e2b));
        if !key.is_empty() {
            rb = rb.header("X-API-Key", key);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let next = r.headers().get("x-next-token").map(|v| v.to_str().unwrap().to_string());
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), next)
    }

    async fn ok(&self, key: &str, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (status, v, _) = self.call(key, method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        v
    }

    /// A tenant key in its `e2b_` alias form.
    async fn tenant(&self, team: &str, user: &str) -> String {
        let v = self.native("POST", "/v1/admin/api-keys", json!({"team": team, "user": user}), 201).await;
        format!("e2b_{}", &v["apiKey"].as_str().unwrap()[5..])
    }

    async fn pool_for(&self, key: &str, name: &str) {
        let r = self
            .http
            .post(format!("{}/v1/sandboxpools", self.native))
            .header("AGENTBOX-API-KEY", key)
            .json(&json!({"name": name, "templateName": "tpl", "replicas": 2, "podCreationImagePolicy": "PoolDefaultImage"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
        for _ in 0..500 {
            let v = self.ok(key, "GET", &format!("/templates/{name}"), None, 200).await;
            let idle = self
                .http
                .get(format!("{}/v1/sandboxpools/{name}", self.native))
                .header("AGENTBOX-API-KEY", key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap();
            if idle["pool"]["status"]["idle"].as_u64() == Some(2) {
                assert_eq!(v["templateID"], name);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("pool {name} never warmed up");
    }
}

async fn setup() -> (Srv, String, String) {
    let s = Srv::start().await;
    let tpl = json!({"name": "tpl", "spec": {"version": "1.0.0", "description": "t", "idleImage": "pause",
        "containers": [{"name": "main", "image": "host"}]}});
    s.native("POST", "/v1/admin/sandbox-templates", tpl, 201).await;
    let alice = s.tenant("red", "alice").await;
    let bob = s.tenant("blue", "bob").await;
    s.pool_for(&alice, "ap").await;
    (s, alice, bob)
}

#[tokio::test]
async fn health_auth_and_unsupported_routes() {
    let (s, alice, _) = setup().await;
    assert_eq!(s.call("", "GET", "/health", None).await.0, 200);
    let (st, body, _) = s.call("", "GET", "/sandboxes", None).await;
    assert_eq!((st, body["code"].as_u64()), (401, Some(401)), "{body}");
    assert!(body["message"].as_str().unwrap().contains("X-API-Key"));
    let forged = format!("e2b_{}", "ab".repeat(32));
    assert_eq!(s.call(&forged, "GET", "/sandboxes", None).await.0, 401);
    // AGENTBOX-API-KEY works too, and the admin key.
    let r = s.http.get(format!("{}/sandboxes", s.e2b)).header("AGENTBOX-API-KEY", ADMIN).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for (m, p, hint) in [
        ("POST", "/sandboxes/x/pause", "kill the sandbox"),
        ("POST", "/v2/sandboxes/x/resume", "pausing and resuming"),
        ("POST", "/v3/templates", "/v1/sandboxpools"),
        ("PATCH", "/api-keys/k", "delete the key"),
        ("GET", "/volumes", "not supported"),
    ] {
        let (st, body, _) = s.call(&alice, m, p, Some(json!({}))).await;
        assert_eq!((st, body["code"].as_u64()), (501, Some(501)), "{m} {p}: {body}");
        assert!(body["message"].as_str().unwrap().contains(hint), "{m} {p}: {body}");
    }
}

#[tokio::test]
async fn sandbox_lifecycle_through_the_e2b_api() {
    let (s, alice, bob) = setup().await;
    let created = s
        .ok(
            &alice,
            "POST",
            "/v2/sandboxes",
            Some(json!({"templateID": "ap", "timeout": 120,
            "metadata": {"who": "alice", "k": "v w"}, "envVars": {}})),
            201,
        )
        .await;
    let id = created["sandboxID"].as_str().unwrap().to_string();
    assert_eq!(created["templateID"], "ap");
    assert_eq!(created["clientID"], "c1");
    assert_eq!(created["envdVersion"], "0.6.4");
    assert_eq!(created["domain"], "127.0.0.1:9");
    assert!(created.get("envdAccessToken").is_none());
    // The native API sees the idle timeout and metadata.
    let native = s.native("GET", &format!("/v1/sandboxes/{id}"), Value::Null, 200).await;
    assert_eq!(native["sandbox"]["idleTimeoutSeconds"], 120);
    assert_eq!(native["sandbox"]["metadata"]["who"], "alice");

    let detail = s.ok(&alice, "GET", &format!("/sandboxes/{id}"), None, 200).await;
    assert_eq!((detail["state"].as_str(), detail["templateID"].as_str()), (Some("running"), Some("ap")));
    assert_eq!(detail["domain"], "127.0.0.1:9");
    assert!(chrono::DateTime::parse_from_rfc3339(detail["endAt"].as_str().unwrap()).is_ok());

    // Lists: v1 all, v2 with filters and pagination.
    let second = s.ok(&alice, "POST", "/sandboxes", Some(json!({"templateID": "c1::ap"})), 201).await;
    let id2 = second["sandboxID"].as_str().unwrap().to_string();
    assert_eq!(s.ok(&alice, "GET", "/sandboxes", None, 200).await.as_array().unwrap().len(), 2);
    let (_, page1, next) = s.call(&alice, "GET", "/v2/sandboxes?limit=1", None).await;
    assert_eq!(page1.as_array().unwrap().len(), 1);
    let next = next.expect("x-next-token on a partial page");
    let (_, page2, none) = s.call(&alice, "GET", &format!("/v2/sandboxes?limit=1&nextToken={next}"), None).await;
    assert_eq!(page2.as_array().unwrap().len(), 1);
    assert!(none.is_none());
    assert_ne!(page1[0]["sandboxID"], page2[0]["sandboxID"]);
    // metadata filter as the SDK encodes it: urlencode({quote(k): quote(v)}).
    let f = s.ok(&alice, "GET", "/v2/sandboxes?metadata=k%3Dv%2520w", None, 200).await;
    assert_eq!(f.as_array().unwrap().len(), 1);
    assert_eq!(f[0]["sandboxID"], id.as_str());
    assert_eq!(s.ok(&alice, "GET", "/v2/sandboxes?state=paused", None, 200).await, json!([]));
    assert_eq!(s.call(&alice, "GET", "/v2/sandboxes?state=frozen", None).await.0, 400);

    // Timeout, refreshes, connect.
    assert_eq!(s.call(&alice, "POST", &format!("/sandboxes/{id}/timeout"), Some(json!({"timeout": 600}))).await.0, 204);
    let native = s.native("GET", &format!("/v1/sandboxes/{id}"), Value::Null, 200).await;
    assert_eq!(native["sandbox"]["idleTimeoutSeconds"], 600);
    assert_eq!(s.call(&alice, "POST", &format!("/sandboxes/{id}/timeout"), Some(json!({"timeout": 0}))).await.0, 400);
    assert_eq!(s.call(&alice, "POST", &format!("/sandboxes/{id}/refreshes"), None).await.0, 204);
    assert_eq!(
        s.call(&alice, "POST", &format!("/sandboxes/{id}/refreshes"), Some(json!({"duration": 30}))).await.0,
        204
    );
    let native = s.native("GET", &format!("/v1/sandboxes/{id}"), Value::Null, 200).await;
    assert_eq!(native["sandbox"]["idleTimeoutSeconds"], 30);
    let c = s.ok(&alice, "POST", &format!("/v2/sandboxes/{id}/connect"), Some(json!({"timeout": 90})), 200).await;
    assert_eq!(c["sandboxID"], id.as_str());
    let logs = s.ok(&alice, "GET", &format!("/v2/sandboxes/{id}/logs"), None, 200).await;
    assert!(logs["logs"].is_array(), "{logs}");
    metrics_through_the_e2b_api(&s, &alice, &bob, &id, &id2).await;

    // Tenancy: bob sees nothing of alice's.
    assert_eq!(s.ok(&bob, "GET", "/sandboxes", None, 200).await, json!([]));
    for (m, p) in [
        ("GET", format!("/sandboxes/{id}")),
        ("DELETE", format!("/sandboxes/{id}")),
        ("POST", format!("/sandboxes/{id}/refreshes")),
        ("GET", format!("/sandboxes/{id}/logs")),
        ("GET", "/templates/ap".to_string()),
    ] {
        let (st, body, _) = s.call(&bob, m, &p, None).await;
        assert_eq!((st, body["code"].as_u64()), (404, Some(404)), "bob {m} {p}: {body}");
    }
    assert_eq!(s.ok(&bob, "GET", "/templates", None, 200).await, json!([]));
    assert_eq!(s.call(&bob, "POST", "/sandboxes", Some(json!({"templateID": "ap"}))).await.0, 404);

    // Kill: 204, then gone (404) for get, kill and timeout.
    assert_eq!(s.call(&alice, "DELETE", &format!("/sandboxes/{id}"), None).await.0, 204);
    assert_eq!(s.call(&alice, "DELETE", &format!("/sandboxes/{id2}"), None).await.0, 204);
    for _ in 0..500 {
        if s.call(&alice, "GET", &format!("/sandboxes/{id}"), None).await.0 == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.call(&alice, "GET", &format!("/sandboxes/{id}"), None).await.0, 404);
    assert_eq!(s.call(&alice, "DELETE", &format!("/sandboxes/{id}"), None).await.0, 404);
    assert_eq!(s.call(&alice, "POST", &format!("/sandboxes/{id}/timeout"), Some(json!({"timeout": 5}))).await.0, 404);
    assert_eq!(s.call(&alice, "POST", &format!("/sandboxes/{id}/connect"), Some(json!({}))).await.0, 404);
}

/// `GET /sandboxes/{id}/metrics` and `GET /sandboxes/metrics` on two live sandboxes of alice's
/// (the fake backend reports fixed usage and 50 ms of CPU per read).
async fn metrics_through_the_e2b_api(s: &Srv, alice: &str, bob: &str, id: &str, id2: &str) {
    let m = s.ok(alice, "GET", &format!("/sandboxes/{id}/metrics"), None, 200).await;
    let m = m.as_array().expect("a list of metrics");
    assert_eq!(m.len(), 1, "{m:?}");
    let m = &m[0];
    for k in [
        "timestamp",
        "timestampUnix",
        "cpuCount",
        "cpuUsedPct",
        "memUsed",
        "memTotal",
        "memCache",
        "diskUsed",
        "diskTotal",
    ] {
        assert!(m.get(k).is_some(), "{k} missing in {m}");
    }
    assert_eq!(
        (m["cpuCount"].as_u64(), m["memUsed"].as_u64(), m["memTotal"].as_u64()),
        (Some(1), Some(64 << 20), Some(512 << 20))
    );
    assert_eq!(
        (m["memCache"].as_u64(), m["diskUsed"].as_u64(), m["diskTotal"].as_u64()),
        (Some(16 << 20), Some(1 << 20), Some(10 << 30))
    );
    // First read: two readings >= 100 ms apart with 50 ms of CPU between them (1 CPU) -> (0, 50] %.
    let pct = m["cpuUsedPct"].as_f64().unwrap();
    assert!(pct > 0.0 && pct <= 50.0, "{m}");
    let ts = chrono::DateTime::parse_from_rfc3339(m["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(ts.timestamp(), m["timestampUnix"].as_i64().unwrap());
    assert!((chrono::Utc::now().timestamp() - ts.timestamp()).abs() <= 5);
    // An interval that ended long ago holds no sample (agentbox keeps no history); a bad one is 400.
    let past = s.ok(alice, "GET", &format!("/sandboxes/{id}/metrics?start=100&end=200"), None, 200).await;
    assert_eq!(past, json!([]));
    let now = chrono::Utc::now().timestamp();
    let cur = s.ok(alice, "GET", &format!("/sandboxes/{id}/metrics?start={}&end={now}", now - 60), None, 200).await;
    assert_eq!(cur.as_array().unwrap().len(), 1, "{cur}");
    assert_eq!(s.call(alice, "GET", &format!("/sandboxes/{id}/metrics?start=300&end=200"), None).await.0, 400);
    // Unknown and foreign sandboxes are 404 with the E2B error body.
    for (key, sid) in [(alice, "nope"), (bob, id)] {
        let (st, body, _) = s.call(key, "GET", &format!("/sandboxes/{sid}/metrics"), None).await;
        assert_eq!((st, body["code"].as_u64()), (404, Some(404)), "{sid}: {body}");
    }
    // Batch: visible live ids only.
    let b = s.ok(alice, "GET", &format!("/sandboxes/metrics?sandbox_ids={id},{id2},nope"), None, 200).await;
    let got = b["sandboxes"].as_object().expect("sandboxes by id");
    assert_eq!(got.len(), 2, "{b}");
    assert_eq!(got[id]["memTotal"].as_u64(), Some(512 << 20), "{b}");
    let b = s.ok(bob, "GET", &format!("/sandboxes/metrics?sandbox_ids={id}"), None, 200).await;
    assert_eq!(b, json!({"sandboxes": {}}));
    assert_eq!(s.call(alice, "GET", "/sandboxes/metrics", None).await.0, 400);
}

#[tokio::test]
async fn create_refusals_and_errors() {
    let (s, alice, _) = setup().await;
    for (body, status, hint) in [
        (json!({"templateID": "nope"}), 404, "nope"),
        (json!({"templateID": "c9::ap"}), 400, "unknown target cluster \"c9\""),
        (json!({"templateID": "*::ap"}), 400, "native API only"),
        (json!({"templateID": "ap", "autoPause": true}), 400, "autoPause"),
        (json!({"templateID": "ap", "allow_internet_access": false}), 400, "network"),
        (json!({"templateID": "ap", "timeout": -1}), 400, "timeout"),
        (json!({"templateID": "ap", "bogus": 1}), 400, "bogus"),
    ] {
        let (st, v, _) = s.call(&alice, "POST", "/v2/sandboxes", Some(body.clone())).await;
        assert_eq!((st, v["code"].as_u64()), (status, Some(u64::from(status))), "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(hint), "{body}: {v}");
    }
    // `secure` is accepted and ignored.
    let v = s.ok(&alice, "POST", "/sandboxes", Some(json!({"templateID": "ap", "secure": true})), 201).await;
    assert_eq!(v["templateID"], "ap");
}

#[tokio::test]
async fn api_keys_through_the_e2b_api() {
    let (s, alice, bob) = setup().await;
    let created = s.ok(&alice, "POST", "/api-keys", Some(json!({"name": "ci"})), 201).await;
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("e2b_") && key.len() == 68, "{key}");
    // The new key works and is alice's.
    assert_eq!(s.ok(&key, "GET", "/templates", None, 200).await[0]["templateID"], "ap");
    let list = s.ok(&alice, "GET", "/api-keys", None, 200).await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"ci"), "{list}");
    let kid = created["id"].as_str().unwrap();
    assert!(s.ok(&bob, "GET", "/api-keys", None, 200).await.as_array().unwrap().iter().all(|k| k["id"] != kid));
    assert_ne!(s.call(&bob, "DELETE", &format!("/api-keys/{kid}"), None).await.0, 204);
    assert_eq!(s.call(&alice, "DELETE", &format!("/api-keys/{kid}"), None).await.0, 204);
    assert_eq!(s.call(&key, "GET", "/templates", None).await.0, 401);
    // The admin identity owns no keys.
    let r = s.http.post(format!("{}/api-keys", s.e2b)).header("X-API-Key", ADMIN).json(&json!({"name": "x"})).send();
    assert_eq!(r.await.unwrap().status().as_u16(), 400);
}
