//! The backend-generic conformance suite (`agentbox_core::conformance`, the same checks CI runs on
//! the local backend) against a real cluster. Runs only when `KUBECONFIG` is set; otherwise it
//! prints `SKIP: ...` and passes. With `KUBECONFIG` set, an unreachable cluster or missing CRDs
//! fail the test (the run was asked for).
//!
//! ```sh
//! kubectl apply -f deploy/crds/
//! KUBECONFIG=~/.kube/config cargo test -p agentbox-backend-k8s --test cluster_conformance -- --nocapture
//! ```
//!
//! Settings (environment):
//! - `AGENTBOX_K8S_TEST_NAMESPACE`: namespace of the slot Pods (default `default`);
//! - `AGENTBOX_CONFORMANCE_IDLE_IMAGE` (default `registry.k8s.io/pause:3.9`) and
//!   `AGENTBOX_CONFORMANCE_WORKLOAD_IMAGE` (default `python:3.12-slim`): both containers get the
//!   args `sleep infinity` (Kubernetes changes only the image in place), which `pause` ignores and
//!   an image without an entrypoint runs;
//! - `AGENTBOX_CONFORMANCE_TIMEOUT_SECS`: bound of every call (default 360: image pulls).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentbox_backend_k8s::{KubeBackend, KubeBackendConfig};
use agentbox_core::conformance::{self, ConformanceEnv, checks};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_conformance() {
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        println!("SKIP: KUBECONFIG is not set; set it to run the backend conformance suite against a cluster");
        return;
    }
    let namespace = setting("AGENTBOX_K8S_TEST_NAMESPACE", "default");
    let timeout: u64 = setting("AGENTBOX_CONFORMANCE_TIMEOUT_SECS", "360")
        .parse()
        .expect("AGENTBOX_CONFORMANCE_TIMEOUT_SECS must be a number of seconds");
    let cfg = KubeBackendConfig {
        require_pool_object: false,
        create_timeout: Duration::from_secs(timeout),
        switch_timeout: Duration::from_secs(timeout),
        ..KubeBackendConfig::default()
    };
    let backend = KubeBackend::connect(cfg).await.unwrap_or_else(|e| {
        panic!("KUBECONFIG is set but the cluster cannot be used: {e} (unset KUBECONFIG to skip this test)")
    });

    // Unique per run: the cluster may keep Pods of an earlier run around for a while.
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut env = ConformanceEnv::new(
        format!("agbx-conf-{}-{}", secs % 100_000, std::process::id() % 10_000),
        setting("AGENTBOX_CONFORMANCE_IDLE_IMAGE", "registry.k8s.io/pause:3.9"),
        setting("AGENTBOX_CONFORMANCE_WORKLOAD_IMAGE", "python:3.12-slim"),
    );
    env.namespace = namespace;
    env.pool = "agentbox-conformance".into();
    let sleep = vec!["sleep".to_string(), "infinity".to_string()];
    env.idle.args = sleep.clone();
    env.workload.args = sleep;
    // Without an in-sandbox agent the backend has no exec: a visible skip, not a pass.
    env.exec_expected = false;
    // Margin over the backend's own create/switch timeouts, so that its error is the one reported.
    env.timeout = Duration::from_secs(timeout + 30);

    let report =
        conformance::run(&backend, &env).await.unwrap_or_else(|e| panic!("conformance on the cluster failed: {e}"));
    assert_eq!(report.backend, "kubernetes");
    for (name, why) in report.skipped() {
        assert_eq!(name, checks::EXEC, "only exec may be skipped on kubernetes, got {name}: {why}");
    }
    assert_eq!(report.passed() + report.skipped().len(), report.checks.len());
}
