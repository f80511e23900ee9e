//! The native API of a gateway forwards only callers it accepts itself (`docs/gateway.md`,
//! "Authentication"): with a cluster whose URL refuses connections, an accepted caller gets 502
//! (the request left the gateway) and a refused one 401 (it never did).

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_server::authn::{AuthConfig, RateLimit};
use agentbox_server::engine::{Engine, EngineConfig};
use agentbox_server::gateway::{Catalog, Gateway, GatewayTimeouts};
use agentbox_server::http::{AppState, router};
use serde_json::json;

const ADMIN: &str = "admin-key-for-tests-0123456789";

/// A gateway `home` (fake backend) on loopback whose catalog names one cluster, `down`, at a port
/// where nothing listens: its base URL, that port, and the dir holding the catalog.
async fn gateway(auth: AuthConfig) -> (String, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let path = dir.path().join("clusters.yaml");
    std::fs::write(&path, format!("clusters:\n  - id: down\n    nativeUrl: http://{closed}\n")).unwrap();
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(FakeBackend::new()),
        EngineConfig { cluster_id: "home".into(), ..Default::default() },
    );
    engine.start().await.unwrap();
    let timeouts = GatewayTimeouts { connect: Duration::from_secs(2), response: Duration::from_secs(5) };
    let gateway = Arc::new(Gateway::new(Arc::new(Catalog::load(&path, "home").unwrap()), timeouts));
    let state = AppState::with_gateway(engine, None, auth, gateway);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router(state)).await.unwrap() });
    (base, closed, dir)
}

#[tokio::test]
async fn forwarded_requests_need_credentials_the_gateway_accepts() {
    let (base, closed, _dir) = gateway(AuthConfig { admin_key: Some(ADMIN.into()), ..Default::default() }).await;

    let client = reqwest::Client::new();
    let id = "down.0192f0aa-0000-7000-8000-000000000001";
    let cases: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("GET", format!("/v1/sandboxes/{id}"), None),
        ("DELETE", format!("/v1/sandboxes/{id}"), None),
        ("POST", format!("/v1/sandboxes/{id}/exec"), Some(json!({"command": "true"}))),
        ("POST", "/v1/sandboxes".into(), Some(json!({"poolName": "down::default"}))),
        ("GET", "/v1/sandboxes?cluster=down".into(), None),
    ];
    for (method, path, body) in cases {
        for (key, want) in [(Some(ADMIN), 502), (Some("agbx_not-a-key"), 401), (None, 401)] {
            let mut rb = client.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(k) = key {
                rb = rb.header("AGENTBOX-API-KEY", k);
            }
            if let Some(b) = &body {
                rb = rb.json(b);
            }
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(status, want, "{method} {path} with key {key:?}: {text}");
            if want == 502 {
                assert!(text.contains("refused"), "the cause is named: {text}");
                assert!(!text.contains(&closed.to_string()), "catalog URLs never leave the server: {text}");
            }
        }
    }
    // The forwards that left the gateway are counted, by cluster, plane and status.
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(r#"agentbox_gateway_forwards_total{cluster="down",plane="native",status="502"}"#))
        .unwrap_or_else(|| panic!("no gateway forward counter in:\n{text}"));
    assert_eq!(line.rsplit(' ').next(), Some("5"), "one per accepted caller's request: {line}");
    assert!(text.contains("agentbox_gateway_forward_duration_seconds_count"), "{text}");
    // Paths that would climb out of /v1/sandboxes/{id} on the remote are never forwarded (a forward
    // would answer 502 here, the cluster being down).
    for path in [
        format!("/v1/sandboxes/{id}/../../admin/api-keys"),
        format!("/v1/sandboxes/{id}/%2e%2e/%2e%2e/admin/api-keys"),
        "/v1/sandboxes/down.../admin/api-keys".to_string(),
    ] {
        // Raw HTTP: a client library would normalise the dot segments before sending.
        let answer = raw_get(&base, &path).await;
        let status: u16 = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(status == 400 || status == 404, "{path}: {answer}");
    }
}

/// `GET path` over a plain TCP connection, exactly as written; the whole answer as text.
async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAGENTBOX-API-KEY: {ADMIN}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn a_gateway_request_costs_the_caller_one_rate_limit_token() {
    // Two tokens at once, one more per second: two requests pass, then the limit bites.
    let auth = AuthConfig {
        admin_key: Some(ADMIN.into()),
        rate_limit: Some(RateLimit { per_second: 1, burst: 2 }),
        ..Default::default()
    };
    let (base, _closed, _dir) = gateway(auth).await;
    let client = reqwest::Client::new();
    let key: serde_json::Value = client
        .post(format!("{base}/v1/admin/api-keys"))
        .header("AGENTBOX-API-KEY", ADMIN)
        .json(&json!({"team": "t1", "user": "u1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["apiKey"].as_str().unwrap().to_owned();
    // `cluster=*`: the gateway authenticates the caller, then lists this cluster (and the down one).
    let list = || client.get(format!("{base}/v1/sandboxes?cluster=%2A")).header("AGENTBOX-API-KEY", &key).send();
    let first = list().await.unwrap();
    assert_eq!(first.status().as_u16(), 200, "{}", first.text().await.unwrap());
    let second = list().await.unwrap();
    assert_eq!(second.status().as_u16(), 200, "one token per request: {}", second.text().await.unwrap());
    // The limit still holds (a slow machine may refill one token meanwhile, hence several tries).
    let mut refused = false;
    for _ in 0..3 {
        refused |= list().await.unwrap().status().as_u16() == 429;
    }
    assert!(refused, "the rate limit applies to gateway requests");
}
