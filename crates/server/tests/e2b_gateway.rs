//! The E2B API of a gateway (issue #7): creates with `templateID: "eu::pool"` and every
//! sandbox-scoped route with an id `eu.{uuid}` go to cluster `eu`'s E2B API; answers carry global
//! ids and the gateway's `domain`. Two in-process servers (fake backend, memory store) on loopback.

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_server::authn::AuthConfig;
use agentbox_server::e2b::E2bConfig;
use agentbox_server::engine::{Engine, EngineConfig};
use agentbox_server::gateway::{Catalog, Gateway, GatewayTimeouts};
use agentbox_server::http::{AppState, router};
use serde_json::{Value, json};

const ADMIN: &str = "admin-key-for-tests-0123456789";
const GW_DOMAIN: &str = "gw.test:8092";

struct Cluster {
    native: String,
    e2b: String,
}

/// A server of cluster `id`; `catalog` is the gateway's clusters config (YAML), if any.
async fn start(id: &str, catalog: Option<&str>, dir: &tempfile::TempDir) -> Cluster {
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(FakeBackend::new()),
        EngineConfig { reconcile_interval: Duration::from_millis(20), cluster_id: id.into(), ..Default::default() },
    );
    engine.start().await.unwrap();
    let cat = match catalog {
        Some(yaml) => {
            let p = dir.path().join(format!("{id}.yaml"));
            std::fs::write(&p, yaml).unwrap();
            Catalog::load(&p, id).unwrap()
        }
        None => Catalog::local_only(id),
    };
    let timeouts = GatewayTimeouts { connect: Duration::from_secs(2), response: Duration::from_secs(10) };
    let gateway = Arc::new(Gateway::new(Arc::new(cat), timeouts));
    let auth = AuthConfig { admin_key: Some(ADMIN.into()), ..Default::default() };
    let state = AppState::with_gateway(engine, None, auth, gateway);
    let domain = if catalog.is_some() { GW_DOMAIN } else { "eu.test:8092" };
    let e2b = agentbox_server::e2b::router(Arc::clone(&state), E2bConfig { domain: Some(domain.into()) });
    let mut urls = vec![];
    for app in [router(state), e2b] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", l.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    }
    Cluster { e2b: urls.pop().unwrap(), native: urls.pop().unwrap() }
}

async fn call(
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut rb =
        reqwest::Client::new().request(method.parse().unwrap(), format!("{base}{path}")).header("X-API-Key", key);
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[track_caller]
fn expect(got: (u16, Value), want: u16) -> Value {
    assert_eq!(got.0, want, "{}", got.1);
    got.1
}

/// `eu` with pool `web` (2 slots), and a gateway `home` whose catalog knows `eu` and a `down`
/// cluster nothing listens for.
async fn setup(dir: &tempfile::TempDir) -> (Cluster, Cluster) {
    let eu = start("eu", None, dir).await;
    let c = reqwest::Client::new();
    let tpl = json!({"name": "tpl", "spec": {"version": "1.0.0", "description": "t", "idleImage": "pause",
        "containers": [{"name": "main", "image": "host"}]}});
    let r = c.post(format!("{}/v1/admin/sandbox-templates", eu.native)).header("AGENTBOX-API-KEY", ADMIN).json(&tpl);
    assert_eq!(r.send().await.unwrap().status(), 201);
    let pool =
        json!({"name": "web", "templateName": "tpl", "replicas": 2, "podCreationImagePolicy": "PoolDefaultImage"});
    let r = c.post(format!("{}/v1/sandboxpools", eu.native)).header("AGENTBOX-API-KEY", ADMIN).json(&pool);
    assert_eq!(r.send().await.unwrap().status(), 201);
    for _ in 0..500 {
        let p: Value = c
            .get(format!("{}/v1/sandboxpools/web", eu.native))
            .header("AGENTBOX-API-KEY", ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if p["pool"]["status"]["idle"].as_u64() == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let yaml = format!("clusters:\n  - id: eu\n    e2bUrl: {}\n  - id: down\n    e2bUrl: http://{closed}\n", eu.e2b);
    let home = start("home", Some(&yaml), dir).await;
    (eu, home)
}

#[tokio::test]
async fn creates_and_sandbox_routes_go_to_the_owning_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (eu, home) = setup(&dir).await;
    let gw = home.e2b.as_str();

    let created = expect(
        call(gw, ADMIN, "POST", "/v2/sandboxes", Some(json!({"templateID": "eu::web", "timeout": 120})), &[]).await,
        201,
    );
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    let uuid = id.strip_prefix("eu.").unwrap_or_else(|| panic!("a global id: {created}")).to_owned();
    assert_eq!(created["domain"], GW_DOMAIN, "the SDK must reach the sandbox through the gateway: {created}");
    assert_eq!(created["templateID"], "web");
    assert_eq!(created["clientID"], "eu");

    // The sandbox lives on eu, which also answers for its own prefix.
    let on_eu = expect(call(&eu.e2b, ADMIN, "GET", &format!("/sandboxes/{uuid}"), None, &[]).await, 200);
    assert_eq!(on_eu["sandboxID"], uuid.as_str());
    let own = expect(call(&eu.e2b, ADMIN, "GET", &format!("/sandboxes/{id}"), None, &[]).await, 200);
    assert_eq!(own["sandboxID"], id.as_str(), "asked by its global id, answered with it");
    // A create naming the cluster itself (`eu::web` on eu) answers with the global id too.
    let direct =
        expect(call(&eu.e2b, ADMIN, "POST", "/sandboxes", Some(json!({"templateID": "eu::web"})), &[]).await, 201);
    let direct_id = direct["sandboxID"].as_str().unwrap().to_owned();
    assert!(direct_id.starts_with("eu."), "{direct}");
    expect(call(&eu.e2b, ADMIN, "DELETE", &format!("/sandboxes/{direct_id}"), None, &[]).await, 204);

    // Through the gateway: get, timeout, refreshes, connect, logs, metrics (single and batch).
    let got = expect(call(gw, ADMIN, "GET", &format!("/sandboxes/{id}"), None, &[]).await, 200);
    assert_eq!((got["sandboxID"].as_str(), got["domain"].as_str()), (Some(id.as_str()), Some(GW_DOMAIN)));
    expect(call(gw, ADMIN, "POST", &format!("/sandboxes/{id}/timeout"), Some(json!({"timeout": 600})), &[]).await, 204);
    let native: Value = reqwest::Client::new()
        .get(format!("{}/v1/sandboxes/{uuid}", eu.native))
        .header("AGENTBOX-API-KEY", ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(native["sandbox"]["idleTimeoutSeconds"], 600, "the timeout reached eu");
    expect(call(gw, ADMIN, "POST", &format!("/sandboxes/{id}/refreshes"), None, &[]).await, 204);
    let c = expect(call(gw, ADMIN, "POST", &format!("/v2/sandboxes/{id}/connect"), Some(json!({})), &[]).await, 200);
    assert_eq!((c["sandboxID"].as_str(), c["domain"].as_str()), (Some(id.as_str()), Some(GW_DOMAIN)));
    let logs = expect(call(gw, ADMIN, "GET", &format!("/v2/sandboxes/{id}/logs?limit=5"), None, &[]).await, 200);
    assert!(logs["logs"].is_array(), "{logs}");
    let m = expect(call(gw, ADMIN, "GET", &format!("/sandboxes/{id}/metrics"), None, &[]).await, 200);
    assert_eq!(m.as_array().map(Vec::len), Some(1), "{m}");
    let batch = expect(call(gw, ADMIN, "GET", &format!("/sandboxes/metrics?sandbox_ids={id}"), None, &[]).await, 200);
    assert!(batch["sandboxes"][&id].is_object(), "keyed by the global id: {batch}");

    // Lists: `cluster=eu` is eu's list with global ids; without it, the gateway's own (empty).
    let l = expect(call(gw, ADMIN, "GET", "/sandboxes?cluster=eu", None, &[]).await, 200);
    assert_eq!(l[0]["sandboxID"], id.as_str(), "{l}");
    let l = expect(call(gw, ADMIN, "GET", "/v2/sandboxes?limit=5&cluster=eu&state=running", None, &[]).await, 200);
    assert_eq!(l.as_array().map(Vec::len), Some(1), "{l}");
    assert_eq!(l[0]["sandboxID"], id.as_str(), "{l}");
    assert_eq!(expect(call(gw, ADMIN, "GET", "/sandboxes", None, &[]).await, 200), json!([]));
    assert_eq!(expect(call(gw, ADMIN, "GET", "/sandboxes?cluster=home", None, &[]).await, 200), json!([]));
    expect(call(gw, ADMIN, "GET", "/v2/sandboxes?cluster=*", None, &[]).await, 400);

    // The gateway's own prefix is served locally (and finds nothing there).
    let (st, v) = call(gw, ADMIN, "GET", &format!("/sandboxes/home.{uuid}"), None, &[]).await;
    assert_eq!((st, v["code"].as_u64()), (404, Some(404)), "{v}");

    // Kill through the gateway; then eu's 404 comes back as it is.
    expect(call(gw, ADMIN, "DELETE", &format!("/sandboxes/{id}"), None, &[]).await, 204);
    let mut gone = (0, Value::Null);
    for _ in 0..500 {
        gone = call(gw, ADMIN, "GET", &format!("/sandboxes/{id}"), None, &[]).await;
        if gone.0 == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((gone.0, gone.1["code"].as_u64()), (404, Some(404)), "{}", gone.1);

    // With an image: `eu::web//image` reaches eu as `web//image` (the fake backend switches).
    let img =
        expect(call(gw, ADMIN, "POST", "/sandboxes", Some(json!({"templateID": "eu::web//alpine:3"})), &[]).await, 201);
    let img_id = img["sandboxID"].as_str().unwrap().to_owned();
    assert!(img_id.starts_with("eu."), "{img}");
    expect(call(gw, ADMIN, "DELETE", &format!("/sandboxes/{img_id}"), None, &[]).await, 204);
}

#[tokio::test]
async fn unknown_unreachable_unauthenticated_and_looping_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_eu, home) = setup(&dir).await;
    let gw = home.e2b.as_str();

    let v = expect(call(gw, ADMIN, "POST", "/sandboxes", Some(json!({"templateID": "mars::web"})), &[]).await, 400);
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("\"mars\"") && msg.contains("\"eu\"") && msg.contains("\"home\""), "{v}");
    assert_eq!(v["code"], 400);
    let v = expect(call(gw, ADMIN, "GET", "/sandboxes/mars.0192", None, &[]).await, 400);
    assert!(v["message"].as_str().unwrap().contains("known clusters"), "{v}");
    let v = expect(call(gw, ADMIN, "POST", "/sandboxes", Some(json!({"templateID": "*::web"})), &[]).await, 400);
    assert!(v["message"].as_str().unwrap().contains("native API only"), "{v}");

    for (m, p, b) in [
        ("POST", "/sandboxes", Some(json!({"templateID": "down::web"}))),
        ("GET", "/sandboxes/down.0192", None),
        ("DELETE", "/sandboxes/down.0192", None),
    ] {
        let (st, v) = call(gw, ADMIN, m, p, b, &[]).await;
        assert_eq!((st, v["code"].as_u64()), (502, Some(502)), "{m} {p}: {v}");
        assert!(v["message"].as_str().unwrap().contains("forward request to cluster \"down\""), "{v}");
    }

    // A wrong key never leaves the gateway.
    let (st, v) = call(gw, "e2b_0000", "GET", "/sandboxes/eu.0192", None, &[]).await;
    assert_eq!(st, 401, "{v}");
    // A request another gateway forwarded is not forwarded again.
    let (st, v) = call(gw, ADMIN, "GET", "/sandboxes/eu.0192", None, &[("X-Source-Cluster", "other")]).await;
    assert_eq!(st, 508, "{v}");

    // Local E2B requests still work with a cluster down.
    expect(call(gw, ADMIN, "GET", "/sandboxes", None, &[]).await, 200);
}
