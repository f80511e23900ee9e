//! The in-sandbox agent on real containers, once per OCI runtime: it answers from the host right
//! after create, also in a new slot that reuses the IP of a just-destroyed one (the host's
//! neighbour entry for that IP must not point at a dead MAC); `ensure_agent` leaves a live agent
//! alone, starts a killed one again (once, even when called concurrently), and does nothing in a
//! `pause` slot. Needs root, `agentbox-envd` (built here if missing) and runc for the runc run;
//! otherwise each test prints `SKIP: <reason>` and returns.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentbox_backend_local::{AGENT_PORT, LocalBackend, LocalBackendConfig};
use agentbox_core::backend::{Backend, ExecRequest, SlotSpec};
use agentbox_core::model::{ContainerSpec, Resources, RuntimeClass};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn skip_reason(rt: RuntimeClass) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (creates namespaces, cgroups, mounts, veths)".into());
    }
    let in_path = |b: &str| ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(b).exists());
    if rt == RuntimeClass::Runc && !in_path("runc") {
        return Some("runc is not installed (apt-get install runc)".into());
    }
    for b in ["ip", "iptables"] {
        if !in_path(b) {
            return Some(format!("{b} is not installed"));
        }
    }
    None
}

/// `agentbox-envd` of this build (beside the runtime helper in the target dir), built if missing.
fn agent_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_agentbox-runtime-helper")).with_file_name("agentbox-envd");
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "agentbox-envd"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build -p agentbox-envd");
        assert!(st.success() && path.is_file(), "cargo build -p agentbox-envd failed");
    }
    path
}

fn config(state: &Path, images: &Path, bridge: &str, subnet: &str) -> LocalBackendConfig {
    let store = agentbox_images::ImageStore::open(images).expect("open image store");
    let mut cfg = LocalBackendConfig::new(state, store);
    cfg.bridge_name = bridge.into();
    cfg.subnet = subnet.into();
    cfg.log_max_bytes = 1 << 20;
    cfg.libcontainer_helper = Some(env!("CARGO_BIN_EXE_agentbox-runtime-helper").into());
    cfg.agent_binary = Some(agent_binary());
    cfg
}

fn spec(id: &str, rt: RuntimeClass, image: &str) -> SlotSpec {
    let command = if image == "pause" { vec![] } else { vec!["sleep".to_string(), "infinity".to_string()] };
    SlotSpec {
        slot_id: id.into(),
        pool: "agent".into(),
        namespace: "default".into(),
        runtime: rt,
        containers: vec![ContainerSpec { name: "main".into(), image: image.into(), command, ..Default::default() }],
        resources: Resources { cpu_millis: Some(1000), memory_bytes: Some(256 << 20), pids: Some(256) },
        egress: true,
        registry_credentials: vec![],
    }
}

/// `GET /health` from the host, straight to the slot's IP: the status line, or why not.
async fn health(ip: &str) -> Result<String, String> {
    let addr = format!("{ip}:{AGENT_PORT}");
    let io = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_owned())
    };
    match tokio::time::timeout(Duration::from_millis(500), io).await {
        Ok(Ok(line)) => Ok(line),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Poll `/health` until it answers 204; panics after `limit`. Returns how long it took.
async fn wait_health(ip: &str, limit: Duration, what: &str) -> Duration {
    let t = Instant::now();
    loop {
        let r = health(ip).await;
        if matches!(&r, Ok(l) if l.starts_with("HTTP/1.1 204")) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{what}: the agent at {ip} did not answer within {limit:?}: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kill_agent(b: &LocalBackend, slot: &str, ip: &str) {
    let req = ExecRequest {
        container: None,
        argv: ["sh", "-c", "pkill -9 -f '^/.agentbox/envd'"].iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        cwd: None,
        user: None,
        stdin: None,
        timeout: Duration::from_secs(20),
    };
    let out = b.exec(slot, &req).await.expect("exec pkill");
    assert_eq!(out.exit_code, 0, "pkill found no agent: {}", String::from_utf8_lossy(&out.stderr));
    let t = Instant::now();
    while health(ip).await.is_ok() {
        assert!(t.elapsed() < Duration::from_secs(5), "the agent still answers after pkill -9");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn suite(b: &LocalBackend, rt: RuntimeClass, tag: &str) {
    // Create: the agent answers from the host as soon as create returns.
    let a = b.create_slot(&spec(&format!("{tag}-a"), rt, "host")).await.expect("create a");
    let ip = a.ip.clone().unwrap();
    let took = wait_health(&ip, Duration::from_secs(2), "after create").await;
    eprintln!("[{tag}] agent answered {took:?} after create");

    // A new slot on the IP of a destroyed one (the host just talked to the old one): reachable at once.
    b.destroy_slot(&format!("{tag}-a")).await.expect("destroy a");
    let slot = format!("{tag}-b");
    let bo = b.create_slot(&spec(&slot, rt, "host")).await.expect("create b");
    assert_eq!(bo.ip.as_deref(), Some(ip.as_str()), "the freed IP is reused (lowest free address)");
    let took = wait_health(&ip, Duration::from_secs(3), "new slot on a reused IP").await;
    eprintln!("[{tag}] agent on the reused IP answered after {took:?}");

    // A live agent is left alone. The agent answers before the background start that launched it
    // has marked itself done, and ensure_agent reports waiting for a start in flight as `true`
    // (the caller should retry); once that start is over, a live agent is not started again.
    b.ensure_agent(&slot).await.expect("ensure_agent after create");
    assert!(!b.ensure_agent(&slot).await.expect("ensure_agent live"), "a live agent was started again");

    // A killed agent is started again, and answers when ensure_agent returns.
    kill_agent(b, &slot, &ip).await;
    let t = Instant::now();
    assert!(b.ensure_agent(&slot).await.expect("ensure_agent dead"), "a dead agent was not restarted");
    eprintln!("[{tag}] ensure_agent restarted the agent in {:?}", t.elapsed());
    assert!(matches!(health(&ip).await, Ok(l) if l.starts_with("HTTP/1.1 204")), "restarted agent does not answer");
    assert!(!b.ensure_agent(&slot).await.unwrap(), "second call restarted again");

    // Concurrent calls for one slot start one agent.
    kill_agent(b, &slot, &ip).await;
    let results = futures_join4(b, &slot).await;
    assert_eq!(results.iter().filter(|r| **r).count(), 1, "concurrent ensure_agent results: {results:?}");
    wait_health(&ip, Duration::from_secs(1), "after concurrent ensure_agent").await;

    // No agent in a pause slot, unknown slots are errors.
    let p = format!("{tag}-p");
    b.create_slot(&spec(&p, rt, "pause")).await.expect("create pause slot");
    assert!(!b.ensure_agent(&p).await.unwrap(), "pause slots have no agent");
    assert!(b.ensure_agent(&format!("{tag}-nope")).await.is_err(), "unknown slot must be an error");
}

async fn futures_join4(b: &LocalBackend, slot: &str) -> Vec<bool> {
    let (r1, r2, r3, r4) =
        tokio::join!(b.ensure_agent(slot), b.ensure_agent(slot), b.ensure_agent(slot), b.ensure_agent(slot));
    [r1, r2, r3, r4].into_iter().map(|r| r.expect("ensure_agent")).collect()
}

/// Run the suite; whatever happens, destroy every slot and remove the test bridge.
async fn run(rt: RuntimeClass, tag: &'static str, bridge: &'static str, subnet: &'static str) {
    if let Some(reason) = skip_reason(rt) {
        println!("SKIP: {reason}");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let b = LocalBackend::new(config(state.path(), images.path(), bridge, subnet)).await.expect("backend");
    let b = std::sync::Arc::new(b);
    let b2 = b.clone();
    let res = tokio::spawn(async move { suite(&b2, rt, tag).await }).await;
    for s in b.list_slots().await.unwrap() {
        let _ = b.destroy_slot(&s.slot_id).await;
    }
    b.remove_host_network().await.expect("remove test bridge");
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_libcontainer() {
    run(RuntimeClass::Libcontainer, "aglc", "agbxh3", "10.183.0.0/24").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_runc() {
    run(RuntimeClass::Runc, "agrc", "agbxh3b", "10.184.0.0/24").await;
}
