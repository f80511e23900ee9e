//! The data plane restarts a dead in-sandbox agent: a request to the agent's port whose connection
//! is refused makes the proxy call `Backend::ensure_agent` once and, when the backend started the
//! agent again, send the request (body included) once more. Other ports are never retried. The
//! in-memory store and the fake backend (slots report 127.0.0.1); the "agent" is an axum app the
//! fake's `ensure_agent` hook starts on the agent port.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_core::model::{ContainerSpec, PodCreationImagePolicy, SandboxSpec};
use agentbox_server::auth::AuthInfo;
use agentbox_server::engine::{CreatePoolRequest, CreateSandboxRequest, Engine, EngineConfig};
use agentbox_server::proxy::DataPlane;

/// A port nothing listens on (bound once by us, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The stand-in agent: answers `POST /echo` with the body it received.
fn serve_agent(listener: std::net::TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let l = tokio::net::TcpListener::from_std(listener).unwrap();
    let app =
        axum::Router::new().route("/echo", axum::routing::post(|body: String| async move { format!("got {body}") }));
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
}

/// An engine whose agent port is `agent_port`, one claimed sandbox, and the proxy's address.
async fn start(backend: Arc<FakeBackend>, agent_port: u16) -> (Arc<Engine>, String, std::net::SocketAddr) {
    let cfg = EngineConfig {
        reconcile_interval: Duration::from_millis(20),
        idle_sweep_interval: Duration::from_secs(3600),
        agent_port: Some(agent_port),
        ..Default::default()
    };
    let engine = Engine::new(Arc::new(MemoryStore::new()), backend, cfg);
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
                replicas: Some(1),
                pod_creation_image_policy: Some(PodCreationImagePolicy::PoolDefaultImage),
                ..Default::default()
            },
        )
        .unwrap();
    let mut warm = false;
    for _ in 0..500 {
        if engine.get_pool(&auth, "p").unwrap().status.counts.idle == 1 {
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
    tokio::spawn(DataPlane::new(Arc::clone(&engine)).serve(pl, std::future::pending()));
    (engine, id, proxy)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

fn ensure_calls(b: &FakeBackend) -> usize {
    b.calls.lock().iter().filter(|c| c.starts_with("ensure_agent ")).count()
}

#[tokio::test]
async fn a_refused_agent_port_is_restarted_and_the_request_sent_again_with_its_body() {
    let port = free_port();
    let backend = Arc::new(FakeBackend::with_ip("127.0.0.1"));
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = Arc::clone(&started);
    backend.on_ensure_agent(move |_slot| {
        // Like the local backend: the agent listens before ensure_agent returns true.
        serve_agent(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        s2.fetch_add(1, Ordering::SeqCst);
        true
    });
    let (_engine, id, proxy) = start(Arc::clone(&backend), port).await;
    let url = format!("http://{proxy}/sandboxes/{id}/{port}/echo");

    let r = http().post(&url).body("payload-1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "got payload-1");
    assert_eq!(started.load(Ordering::SeqCst), 1);
    assert_eq!(ensure_calls(&backend), 1);

    // The agent answers now: no further restart.
    let r = http().post(&url).body("payload-2").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "got payload-2");
    assert_eq!(ensure_calls(&backend), 1);
}

#[tokio::test]
async fn no_restart_means_502_and_other_ports_are_never_retried() {
    let agent_port = free_port();
    let other_port = free_port();
    let backend = Arc::new(FakeBackend::with_ip("127.0.0.1"));
    backend.on_ensure_agent(|_| false);
    let (_engine, id, proxy) = start(Arc::clone(&backend), agent_port).await;

    let r = http().get(format!("http://{proxy}/sandboxes/{id}/{agent_port}/health")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(ensure_calls(&backend), 1, "one ensure_agent per refused request");

    let r = http().get(format!("http://{proxy}/sandboxes/{id}/{other_port}/health")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(ensure_calls(&backend), 1, "a port other than the agent's is not the agent's business");
}
