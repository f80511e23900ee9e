//! Container logs on real containers: timestamps, container filter, `lines`, and following.
//! Needs root; otherwise prints `SKIP: <reason>` and returns.

use std::path::Path;
use std::time::{Duration, Instant};

use agentbox_backend_local::{LocalBackend, LocalBackendConfig};
use agentbox_core::backend::{Backend, LogLine, SlotSpec};
use agentbox_core::model::{ContainerSpec, Resources, RuntimeClass};

const BRIDGE: &str = "agbxt-log";
const SUBNET: &str = "10.217.0.0/24";

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (creates namespaces, cgroups, mounts, veths)".into());
    }
    let in_path = |b: &str| ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(b).exists());
    ["ip", "iptables"].into_iter().find(|b| !in_path(b)).map(|b| format!("{b} is not installed"))
}

fn config(state: &Path, images: &Path) -> LocalBackendConfig {
    let store = agentbox_images::ImageStore::open(images).expect("open image store");
    let mut cfg = LocalBackendConfig::new(state, store);
    cfg.bridge_name = BRIDGE.into();
    cfg.subnet = SUBNET.into();
    cfg.log_max_bytes = 1 << 20;
    cfg.libcontainer_helper = Some(env!("CARGO_BIN_EXE_agentbox-runtime-helper").into());
    cfg
}

fn container(name: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: "host".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn ts_micros(l: &LogLine) -> i64 {
    let ts = l.timestamp.as_deref().unwrap_or_else(|| panic!("no timestamp on {l:?}"));
    chrono::DateTime::parse_from_rfc3339(ts).unwrap_or_else(|e| panic!("{ts}: {e}")).timestamp_micros()
}

fn tick_no(l: &LogLine) -> u64 {
    l.line.strip_prefix("tick ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a tick: {l:?}"))
}

async fn suite(state: &Path, images: &Path) {
    let b = LocalBackend::new(config(state, images)).await.expect("backend");
    let slot = format!("log{}", std::process::id());
    let spec = SlotSpec {
        slot_id: slot.clone(),
        pool: "logs".into(),
        namespace: "default".into(),
        runtime: RuntimeClass::Libcontainer,
        containers: vec![
            container("main", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"),
            container("side", "echo side ready; echo side err >&2; exec sleep infinity"),
        ],
        resources: Resources { cpu_millis: Some(1000), memory_bytes: Some(64 << 20), pids: Some(64) },
        egress: false,
        registry_credentials: vec![],
    };
    let started = chrono::Utc::now().timestamp_micros();
    b.create_slot(&spec).await.expect("create");

    // Timestamps: every line, in order, between the create and now.
    let deadline = Instant::now() + Duration::from_secs(20);
    let main = loop {
        let l = b.logs(&slot, Some("main"), 0).await.unwrap();
        if l.len() >= 4 {
            break l;
        }
        assert!(Instant::now() < deadline, "too few ticks: {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let now = chrono::Utc::now().timestamp_micros();
    let times: Vec<i64> = main.iter().map(ts_micros).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "timestamps out of order: {main:?}");
    assert!(times[0] >= started - 1_000_000 && *times.last().unwrap() <= now, "{main:?}");
    // Lines written 200 ms apart are stamped about 200 ms apart (not all at one poll time).
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| (100_000..600_000).contains(g)), "gaps between ticks (µs): {gaps:?}");
    assert!(main.iter().enumerate().all(|(i, l)| tick_no(l) == i as u64 && l.container == "main"));

    // Container filter and stderr.
    let side = b.logs(&slot, Some("side"), 0).await.unwrap();
    let lines: Vec<&str> = side.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(lines, ["side ready", "side err"]);
    assert!(side.iter().all(|l| l.container == "side" && l.timestamp.is_some()));
    let all = b.logs(&slot, None, 0).await.unwrap();
    assert!(all.iter().any(|l| l.container == "main") && all.iter().any(|l| l.container == "side"));
    assert!(b.logs(&slot, Some("nope"), 0).await.is_err());

    // `lines`: the last N.
    let two = b.logs(&slot, Some("main"), 2).await.unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(tick_no(&two[1]), tick_no(&two[0]) + 1);
    assert!(tick_no(&two[0]) >= 2);

    // Follow: the last line first, then lines written after the follow started.
    let mut rx = b.follow_logs(&slot, Some("main"), 1).await.expect("follow");
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    let mut last = tick_no(&first);
    let follow_started = chrono::Utc::now().timestamp_micros();
    let mut fresh = 0;
    while fresh < 3 {
        let l = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a new tick").expect("open");
        assert_eq!(tick_no(&l), last + 1, "followed lines are consecutive");
        assert_eq!(l.container, "main");
        if ts_micros(&l) > follow_started {
            fresh += 1;
        }
        last = tick_no(&l);
    }
    // A second follower of every container is independent of the first.
    let mut rx_all = b.follow_logs(&slot, None, 0).await.expect("follow all");
    let l = tokio::time::timeout(Duration::from_secs(5), rx_all.recv()).await.unwrap().unwrap();
    assert!(l.container == "main" || l.container == "side");
    drop(rx_all);

    // Destroying the slot ends the follow.
    b.destroy_slot(&slot).await.expect("destroy");
    let ended = tokio::time::timeout(Duration::from_secs(5), async { while rx.recv().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the follow did not end when the slot was destroyed");
    assert!(b.logs(&slot, None, 0).await.is_err(), "no logs for a destroyed slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_timestamps_filter_lines_and_follow() {
    if let Some(reason) = skip_reason() {
        println!("SKIP: {reason}");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let (sp, ip) = (state.path().to_owned(), images.path().to_owned());
    let res = tokio::spawn(async move { suite(&sp, &ip).await }).await;
    // Cleanup through a fresh backend: it re-adopts whatever is left and destroys it.
    let b = LocalBackend::new(config(state.path(), images.path())).await.expect("cleanup backend");
    for s in b.list_slots().await.unwrap() {
        let _ = b.destroy_slot(&s.slot_id).await;
    }
    b.remove_host_network().await.expect("remove test bridge");
    drop(b);
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}
