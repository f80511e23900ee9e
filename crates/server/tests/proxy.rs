//! Data-plane tests: the proxy and a stand-in for a server inside the sandbox (an axum app), both
//! on real loopback listeners, with the in-memory store and the fake backend (whose slots report
//! 127.0.0.1 so the proxy reaches the stand-in).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_core::model::{ContainerSpec, PodCreationImagePolicy, SandboxSpec};
use agentbox_server::auth::AuthInfo;
use agentbox_server::engine::{CreatePoolRequest, CreateSandboxRequest, Engine, EngineConfig};
use agentbox_server::proxy::DataPlane;
use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Shared with the stand-in upstream so tests can drive its streams.
#[derive(Default)]
struct Upstream {
    /// The sender of the open `/stream` response (the test sends the rest and closes it).
    stream_tx: Mutex<Option<mpsc::Sender<&'static str>>>,
    /// Signalled when `/upload` received its first bytes.
    upload_started: Notify,
}

async fn echo(req: Request) -> axum::Json<Value> {
    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    axum::Json(json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "host": h("host"),
        "xff": h("x-forwarded-for"),
        "xfh": h("x-forwarded-host"),
        "private": h("x-private"),
        "apikey": h("agentbox-api-key"),
    }))
}

async fn stream(State(u): State<Arc<Upstream>>) -> axum::body::Body {
    let (tx, rx) = mpsc::channel::<&'static str>(4);
    tx.send("first\n").await.unwrap();
    *u.stream_tx.lock() = Some(tx);
    let s = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok::<_, Infallible>(axum::body::Bytes::from_static(c.as_bytes())), rx))
    });
    axum::body::Body::from_stream(s)
}

async fn upload(State(u): State<Arc<Upstream>>, req: Request) -> String {
    let mut body = req.into_body().into_data_stream();
    let (mut n, mut sum) = (0u64, 0u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        if n == 0 && !chunk.is_empty() {
            u.upload_started.notify_one();
        }
        n += chunk.len() as u64;
        sum += chunk.iter().map(|b| *b as u64).sum::<u64>();
    }
    format!("{n} {sum}")
}

async fn ws(up: WebSocketUpgrade) -> impl IntoResponse {
    up.on_upgrade(|mut s| async move {
        while let Some(Ok(m)) = s.recv().await {
            match m {
                AxMessage::Text(t) => {
                    let sent = s.send(AxMessage::Text(format!("echo: {}", t.as_str()).into())).await;
                    if sent.is_err() {
                        return;
                    }
                }
                AxMessage::Close(_) => return,
                _ => {}
            }
        }
    })
}

struct Env {
    engine: Arc<Engine>,
    proxy: SocketAddr,
    upstream_port: u16,
    upstream: Arc<Upstream>,
    id: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }
    fn path_url(&self, rest: &str) -> String {
        self.url(&format!("/sandboxes/{}/{}{rest}", self.id, self.upstream_port))
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn start() -> Env {
    let upstream = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/stream", axum::routing::get(stream))
        .route("/upload", axum::routing::post(upload))
        .route("/ws", axum::routing::get(ws))
        .fallback(echo)
        .with_state(Arc::clone(&upstream));
    let ul = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = ul.local_addr().unwrap().port();
    let t1 = tokio::spawn(async move { axum::serve(ul, app).await.unwrap() });

    let cfg = EngineConfig {
        reconcile_interval: Duration::from_millis(20),
        idle_sweep_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(FakeBackend::with_ip("127.0.0.1")), cfg);
    engine.start().await.unwrap();
    let auth = AuthInfo::dev_admin();
    engine
        .create_pool(
            &auth,
            CreatePoolRequest {
                name: "p".into(),
                template: Some(SandboxSpec {
                    idle_image: "pause".into(),
                    idle_command: vec![],
                    containers: vec![ContainerSpec { name: "main".into(), image: "host".into(), ..Default::default() }],
                    runtimes: vec![],
                    runtime_class: Default::default(),
                    egress: true,
                }),
                replicas: Some(2),
                pod_creation_image_policy: Some(PodCreationImagePolicy::PoolDefaultImage),
                ..Default::default()
            },
        )
        .unwrap();
    let mut warm = false;
    for _ in 0..500 {
        if engine.get_pool(&auth, "p").unwrap().status.counts.idle == 2 {
            warm = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(warm, "pool never warmed up");
    let id = engine
        .create_sandbox(&auth, CreateSandboxRequest { pool_name: "p".into(), ..Default::default() })
        .await
        .unwrap()
        .sandbox_id;

    let pl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = pl.local_addr().unwrap();
    let dp = DataPlane::new(Arc::clone(&engine));
    let t2 = tokio::spawn(dp.serve(pl, std::future::pending()));
    Env { engine, proxy, upstream_port, upstream, id, tasks: vec![t1, t2] }
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if s >= 400 {
        assert_eq!(ct.as_deref(), Some("application/json"), "error bodies are JSON: {v}");
    }
    (s, v)
}

#[tokio::test]
async fn the_three_routing_forms_reach_the_port_with_path_and_query() {
    let env = start().await;
    let c = http();

    // path form: the prefix is stripped, the query kept
    let (s, v) = json_of(c.get(env.path_url("/a/b?x=1&y=two")).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["uri"], "/a/b?x=1&y=two");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["xff"], "127.0.0.1");
    assert_eq!(v["xfh"], env.proxy.to_string());
    let (_, v) = json_of(c.get(env.path_url("")).send().await.unwrap()).await;
    assert_eq!(v["uri"], "/");

    // header forms: the path is unchanged
    for (hid, hport) in [("E2b-Sandbox-Id", "E2b-Sandbox-Port"), ("X-Sandbox-Id", "X-Sandbox-Port")] {
        let r = c
            .post(env.url("/some/path?q=1"))
            .header(hid, &env.id)
            .header(hport, env.upstream_port.to_string())
            .header("x-forwarded-for", "203.0.113.9")
            .header("AGENTBOX-API-KEY", "not-checked")
            .send()
            .await
            .unwrap();
        let (s, v) = json_of(r).await;
        assert_eq!(s, 200, "{hid}: {v}");
        assert_eq!(v["uri"], "/some/path?q=1");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["xff"], "203.0.113.9, 127.0.0.1", "x-forwarded-for is appended to");
        assert_eq!(v["apikey"], "not-checked", "the data plane neither requires nor strips a key");
    }

    // host form (E2B's subdomain form), with a hop-by-hop header that must not be forwarded
    let host = format!("{}-{}.sandbox.test", env.upstream_port, env.id);
    let r = c
        .get(env.url("/h?z=9"))
        .header("host", &host)
        .header("connection", "x-private")
        .header("x-private", "secret")
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["uri"], "/h?z=9");
    assert_eq!(v["host"], host);
    assert_eq!(v["xfh"], host);
    assert_eq!(v["private"], Value::Null, "headers named in Connection are hop-by-hop");
}

#[tokio::test]
async fn errors_unknown_not_running_bad_port_and_nothing_listening() {
    let env = start().await;
    let c = http();

    let (s, v) = json_of(c.get(env.url("/sandboxes/nope/80/")).send().await.unwrap()).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("sandbox not found")));

    for bad in ["0", "65536", "http"] {
        let (s, v) = json_of(c.get(env.url(&format!("/sandboxes/{}/{bad}/", env.id))).send().await.unwrap()).await;
        assert_eq!(s, 400, "port {bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains("1..=65535"), "{v}");
    }
    let r = c.get(env.url("/")).header("x-sandbox-id", &env.id).send().await.unwrap();
    assert_eq!(json_of(r).await.0, 400);
    let (s, v) = json_of(c.get(env.url("/not-a-route")).send().await.unwrap()).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("E2b-Sandbox-Id"), "the error says how to route: {v}");

    // nothing listens on that port: 502 naming the port
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let (s, v) = json_of(c.get(env.url(&format!("/sandboxes/{}/{free}/", env.id))).send().await.unwrap()).await;
    assert_eq!(s, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains(&format!("port {free}")), "{v}");

    // an ended sandbox: 502 with its status
    env.engine.delete_sandbox(&AuthInfo::dev_admin(), &env.id).unwrap();
    let (s, v) = json_of(c.get(env.path_url("/")).send().await.unwrap()).await;
    assert_eq!(s, 502, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.starts_with("sandbox is not running (status "), "{msg}");
}

#[tokio::test]
async fn response_bodies_stream_before_they_end() {
    let env = start().await;
    let mut r = http().get(env.path_url("/stream")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk()).await.expect("first chunk in time");
    assert_eq!(first.unwrap().unwrap(), "first\n", "the first chunk arrives while the body is still open");
    let tx = env.upstream.stream_tx.lock().take().expect("the upstream stream is open");
    tx.send("last\n").await.unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"last\n");
}

#[tokio::test]
async fn large_uploads_stream_through() {
    let env = start().await;
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 512; // 32 MiB
    let up = Arc::clone(&env.upstream);
    let body = futures::stream::unfold(0usize, move |i| {
        let up = Arc::clone(&up);
        async move {
            if i == CHUNKS {
                return None;
            }
            if i == 1 {
                // The upstream must see the first chunk before the client sends the second.
                tokio::time::timeout(Duration::from_secs(10), up.upload_started.notified())
                    .await
                    .expect("the upload is streamed, not buffered by the proxy");
            }
            Some((Ok::<_, Infallible>(vec![(i % 251) as u8; CHUNK]), i + 1))
        }
    });
    let r = http().post(env.path_url("/upload")).body(reqwest::Body::wrap_stream(body)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let want_sum: u64 = (0..CHUNKS).map(|i| (i % 251) as u64 * CHUNK as u64).sum();
    assert_eq!(r.text().await.unwrap(), format!("{} {want_sum}", CHUNK * CHUNKS));
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let env = start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<hyper::body::Bytes>>();
    let uri: hyper::Uri = env.path_url("/over/h2?k=v").parse().unwrap();
    let r = client.get(uri).await.unwrap();
    assert_eq!(r.version(), hyper::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["uri"], "/over/h2?k=v");
    assert_eq!(v["version"], "HTTP/1.1", "the upstream is reached over HTTP/1.1");
    assert_eq!(v["host"], env.proxy.to_string(), "the :authority becomes the Host");
}

async fn ws_roundtrip(env: &Env, req: tokio_tungstenite::tungstenite::handshake::client::Request, label: &str) {
    let tcp = tokio::net::TcpStream::connect(env.proxy).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(resp.status(), 101, "{label}");
    for i in 0..3 {
        ws.send(Message::text(format!("{label} {i}"))).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("echo in time").unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("echo: {label} {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websockets_pass_through_every_routing_form() {
    let env = start().await;
    let req =
        format!("ws://{}/sandboxes/{}/{}/ws", env.proxy, env.id, env.upstream_port).into_client_request().unwrap();
    ws_roundtrip(&env, req, "path").await;

    let mut req = format!("ws://{}/ws", env.proxy).into_client_request().unwrap();
    req.headers_mut().insert("e2b-sandbox-id", env.id.parse().unwrap());
    req.headers_mut().insert("e2b-sandbox-port", env.upstream_port.to_string().parse().unwrap());
    ws_roundtrip(&env, req, "header").await;

    let req = format!("ws://{}-{}.sandbox.test/ws", env.upstream_port, env.id).into_client_request().unwrap();
    ws_roundtrip(&env, req, "host").await;
}

fn last_active(env: &Env) -> Option<chrono::DateTime<chrono::Utc>> {
    let sb = env.engine.get_sandbox(&AuthInfo::dev_admin(), &env.id).unwrap();
    sb.last_active_at.map(|t| chrono::DateTime::parse_from_rfc3339(&t).unwrap().to_utc())
}

#[tokio::test]
async fn requests_and_websocket_traffic_count_as_activity() {
    let env = start().await;
    let before = last_active(&env);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = http().get(env.path_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let after_request = last_active(&env).expect("a proxied request is activity");
    assert!(before.is_none_or(|b| after_request > b), "{before:?} → {after_request}");

    // An open WebSocket with traffic keeps touching (at most once a second) without new requests.
    let req =
        format!("ws://{}/sandboxes/{}/{}/ws", env.proxy, env.id, env.upstream_port).into_client_request().unwrap();
    let tcp = tokio::net::TcpStream::connect(env.proxy).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let opened = last_active(&env).unwrap();
    for i in 0..12 {
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        ws.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let later = last_active(&env).unwrap();
    assert!(
        later - opened >= chrono::Duration::milliseconds(1000),
        "traffic on the upgraded connection is activity: opened {opened}, later {later}"
    );
}
