//! The backend-generic conformance suite (`agentbox_core::conformance`, the same checks that run
//! against a Kubernetes cluster) on the local backend with libcontainer. Needs root, `ip` and
//! `iptables`; otherwise it prints `SKIP: <reason>` and passes, except under `CI`, where a skip is
//! a failure. Host-level checks (leaks, zygote, limits) are in `conformance.rs`.

use std::path::Path;
use std::time::Duration;

use agentbox_backend_local::{LocalBackend, LocalBackendConfig};
use agentbox_core::backend::Backend;
use agentbox_core::conformance::{self, ConformanceEnv};
use agentbox_core::model::{ContainerSpec, RuntimeClass};

/// This test's own network: nothing else on the machine uses this bridge or subnet.
const BRIDGE: &str = "agbxh6";
const SUBNET: &str = "10.189.0.0/16";

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
    cfg.libcontainer_helper = Some(env!("CARGO_BIN_EXE_agentbox-runtime-helper").into());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generic_conformance_local_libcontainer() {
    if let Some(reason) = skip_reason() {
        assert!(std::env::var_os("CI").is_none(), "generic conformance: {reason}, and CI must run it as root");
        println!("SKIP: {reason}");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();

    let mut env = ConformanceEnv::new(format!("gc{}", std::process::id()), "pause", "host");
    env.runtime = RuntimeClass::Libcontainer;
    env.workload = ContainerSpec { command: vec!["sleep".into(), "infinity".into()], ..env.workload };
    env.timeout = Duration::from_secs(60);

    let b = LocalBackend::new(config(state.path(), images.path())).await.expect("backend");
    let result = conformance::run(&b, &env).await;
    drop(b);

    // Whatever happened: a fresh backend re-adopts what is left, destroys it and removes the bridge.
    let b = LocalBackend::new(config(state.path(), images.path())).await.expect("cleanup backend");
    let left: Vec<String> = b.list_slots().await.unwrap().into_iter().map(|s| s.slot_id).collect();
    for s in &left {
        let _ = b.destroy_slot(s).await;
    }
    b.remove_host_network().await.expect("remove test bridge");
    drop(b);

    let report = result.unwrap_or_else(|e| panic!("conformance on the local backend failed: {e}"));
    assert!(left.is_empty(), "the suite left slots behind: {left:?}");
    assert!(report.skipped().is_empty(), "the local backend must pass every check: {:?}", report.skipped());
    assert_eq!(report.passed(), report.checks.len());
    assert!(!Path::new("/sys/class/net").join(BRIDGE).exists(), "bridge {BRIDGE} left");
}
