//! The data plane of a gateway (issue #7): a sandbox id `eu.{uuid}` is forwarded to cluster `eu`'s
//! data plane in every routing form (path, headers, host), for plain HTTP, streamed bodies and
//! WebSocket; unknown and unreachable clusters answer 400 and 502. Two in-process data planes
//! (fake backend whose slots report 127.0.0.1, memory store) and a stand-in sandbox server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_core::model::{ContainerSpec, PodCreationImagePolicy, SandboxSpec};
use agentbox_server::auth::AuthInfo;
use agentbox_server::engine::{CreatePoolRequest, CreateSandboxRequest, Engine, EngineConfig};
use agentbox_server::gateway::{Catalog, Gateway, GatewayTimeouts};
use agentbox_server::proxy::DataPlane;
use axum::extract::Request;
use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::response::IntoResponse;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn echo(req: Request) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let h = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
    axum::Json(json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "host": h("host"),
        "source": h("x-source-cluster"),
        "xff": h("x-forwarded-for"),
        "token": h("x-team-token"),
        "len": body.len(),
    }))
}

async fn ws(up: WebSocketUpgrade) -> impl IntoResponse {
    up.on_upgrade(|mut s| async move {
        while let Some(Ok(m)) = s.recv().await {
            if let AxMessage::Text(t) = m
                && s.send(AxMessage::Text(format!("echo: {}", t.as_str()).into())).await.is_err()
            {
                return;
            }
        }
    })
}

struct Env {
    /// The gateway's data plane (cluster `home`).
    gw: SocketAddr,
    /// Cluster `eu`'s data plane.
    eu: SocketAddr,
    port: u16,
    uuid: String,
    _dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

async fn engine(cluster: &str) -> Arc<Engine> {
    let cfg = EngineConfig {
        reconcile_interval: Duration::from_millis(20),
        idle_sweep_interval: Duration::from_secs(3600),
        cluster_id: cluster.into(),
        ..Default::default()
    };
    let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(FakeBackend::with_ip("127.0.0.1")), cfg);
    engine.start().await.unwrap();
    engine
}

async fn start() -> Env {
    let app = axum::Router::new().route("/ws", axum::routing::get(ws)).fallback(echo);
    let ul = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = ul.local_addr().unwrap().port();
    let t1 = tokio::spawn(async move { axum::serve(ul, app).await.unwrap() });

    let eu = engine("eu").await;
    let auth = AuthInfo::dev_admin();
    let template = SandboxSpec {
        idle_image: "pause".into(),
        idle_command: vec![],
        containers: vec![ContainerSpec { name: "main".into(), image: "host".into(), ..Default::default() }],
        runtimes: vec![],
        runtime_class: Default::default(),
        egress: true,
    };
    let pool = CreatePoolRequest {
        name: "p".into(),
        template: Some(template),
        replicas: Some(1),
        pod_creation_image_policy: Some(PodCreationImagePolicy::PoolDefaultImage),
        ..Default::default()
    };
    eu.create_pool(&auth, pool).unwrap();
    for _ in 0..500 {
        if eu.get_pool(&auth, "p").unwrap().status.counts.idle == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let uuid = eu
        .create_sandbox(&auth, CreateSandboxRequest { pool_name: "p".into(), ..Default::default() })
        .await
        .unwrap()
        .sandbox_id;
    let el = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let eu_addr = el.local_addr().unwrap();
    let t2 = tokio::spawn(DataPlane::new(eu).serve(el, std::future::pending()));

    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let yaml = format!(
        "clusters:\n  - id: eu\n    proxyUrl: http://{eu_addr}\n    headers: {{x-team-token: t1}}\n  - id: down\n    proxyUrl: http://{closed}\n  - id: tls\n    proxyUrl: https://{closed}\n"
    );
    let p = dir.path().join("clusters.yaml");
    std::fs::write(&p, yaml).unwrap();
    let timeouts = GatewayTimeouts { connect: Duration::from_secs(2), response: Duration::from_secs(10) };
    let gateway = Arc::new(Gateway::new(Arc::new(Catalog::load(&p, "home").unwrap()), timeouts));
    let gl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gl.local_addr().unwrap();
    let t3 = tokio::spawn(DataPlane::with_gateway(engine("home").await, gateway).serve(gl, std::future::pending()));
    Env { gw, eu: eu_addr, port, uuid, _dir: dir, tasks: vec![t1, t2, t3] }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn json_of(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_routing_form_reaches_the_remote_sandbox() {
    let env = start().await;
    let (c, id) = (http(), format!("eu.{}", env.uuid));

    // Path form: the owner strips the prefix and the port, the query is kept.
    let (s, v) = json_of(c.get(format!("http://{}/sandboxes/{id}/{}/a/b?x=1", env.gw, env.port))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["uri"], "/a/b?x=1");
    assert_eq!(v["source"], Value::Null, "X-Source-Cluster stays between the data planes");
    assert_eq!(v["token"], Value::Null, "the catalog's headers never reach code inside a sandbox");
    assert_eq!(v["xff"], "127.0.0.1, 127.0.0.1", "client, then the gateway");

    // Headers form, with a 3 MiB body streamed through both data planes.
    let body = vec![7u8; 3 << 20];
    let r = c
        .post(format!("http://{}/up?y=2", env.gw))
        .header("E2b-Sandbox-Id", &id)
        .header("E2b-Sandbox-Port", env.port.to_string())
        .body(body);
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["uri"].as_str(), v["len"].as_u64(), v["method"].as_str()),
        (Some("/up?y=2"), Some(3 << 20), Some("POST"))
    );

    // Host form `{port}-{cluster}.{uuid}.{domain}`: forwarded with headers, Host kept.
    let host = format!("{}-{id}.gw.test", env.port);
    let (s, v) = json_of(c.get(format!("http://{}/h", env.gw)).header("host", &host)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["uri"].as_str(), v["host"].as_str()), (Some("/h"), Some(host.as_str())));

    // The owner accepts its own prefix directly, in every form.
    let (s, v) = json_of(c.get(format!("http://{}/sandboxes/{id}/{}/own", env.eu, env.port))).await;
    assert_eq!((s, v["source"].clone()), (200, Value::Null), "{v}");
    let host = format!("{}-{id}.eu.test", env.port);
    let (s, _) = json_of(c.get(format!("http://{}/h", env.eu)).header("host", &host)).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn websockets_are_spliced_through_both_data_planes() {
    let env = start().await;
    let id = format!("eu.{}", env.uuid);
    let mut header_req = format!("ws://{}/ws", env.gw).into_client_request().unwrap();
    header_req.headers_mut().insert("e2b-sandbox-id", id.parse().unwrap());
    header_req.headers_mut().insert("e2b-sandbox-port", env.port.to_string().parse().unwrap());
    let path_req = format!("ws://{}/sandboxes/{id}/{}/ws", env.gw, env.port).into_client_request().unwrap();
    for (label, req) in [("path", path_req), ("headers", header_req)] {
        let tcp = tokio::net::TcpStream::connect(env.gw).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(resp.status(), 101);
        for i in 0..3 {
            ws.send(Message::text(format!("{label} {i}"))).await.unwrap();
            let m =
                tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("echo in time").unwrap().unwrap();
            assert_eq!(m.into_text().unwrap().as_str(), format!("echo: {label} {i}"));
        }
        ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn unknown_unreachable_and_looping_targets_are_clear_errors() {
    let env = start().await;
    let c = http();
    let get = |id: &str| c.get(format!("http://{}/sandboxes/{id}/{}/x", env.gw, env.port));

    let (s, v) = json_of(get(&format!("mars.{}", env.uuid))).await;
    assert_eq!(s, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("\"mars\"") && e.contains("\"eu\"") && e.contains("\"home\""), "{v}");
    let (s, v) = json_of(get(&format!("down.{}", env.uuid))).await;
    assert_eq!(s, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("forward request to cluster \"down\""), "{v}");
    let (s, v) = json_of(get(&format!("tls.{}", env.uuid))).await;
    assert_eq!(s, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("http://"), "{v}");
    let (s, v) = json_of(get(&format!("eu.{}", env.uuid)).header("x-source-cluster", "elsewhere")).await;
    assert_eq!(s, 508, "{v}");
    // The gateway's own prefix is looked up locally (this sandbox is not there).
    let (s, v) = json_of(get(&format!("home.{}", env.uuid))).await;
    assert_eq!(s, 404, "{v}");
    // A data plane without a catalog refuses other clusters with 400.
    let (s, v) = json_of(c.get(format!("http://{}/sandboxes/us.{}/{}/x", env.eu, env.uuid, env.port))).await;
    assert_eq!(s, 400, "{v}");
}
