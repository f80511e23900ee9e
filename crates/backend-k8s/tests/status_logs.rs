//! The `SandboxPool` status written from the engine's pool status, and followed Pod logs, against
//! the mocked API server (`tower_test::mock`): exact requests, and what the core gets back.

use std::time::Duration;

use agentbox_backend_k8s::{KubeBackend, KubeBackendConfig, labels};
use agentbox_core::backend::{Backend, PoolStatusCondition, PoolStatusDiagnostic, PoolStatusReport};
use agentbox_core::reconcile::{PoolCounts, PoolPhase};
use serde_json::{Value, json};

mod common;
use common::{Step, mock, status_404, step};

const STATUS: &str = "/apis/agentbox.dev/v1alpha1/namespaces/team-a/sandboxpools/py/status";

fn report() -> PoolStatusReport {
    PoolStatusReport {
        phase: PoolPhase::Degraded,
        counts: PoolCounts {
            idle: 3,
            unavailable_idle: 1,
            running: 2,
            failed: 1,
            creating: 1,
            pending_requests: 4,
            ..Default::default()
        },
        conditions: vec![
            PoolStatusCondition {
                kind: "Available".into(),
                status: true,
                reason: "IdleSlotsAvailable".into(),
                message: "2 idle slot(s) can be claimed".into(),
            },
            PoolStatusCondition {
                kind: "Scaling".into(),
                status: false,
                reason: "ReplicasReady".into(),
                message: String::new(),
            },
            PoolStatusCondition {
                kind: "Degraded".into(),
                status: true,
                reason: "ImagePullBackOff".into(),
                message: "1 slot(s) cannot become idle".into(),
            },
        ],
        diagnostics: vec![PoolStatusDiagnostic {
            slot_id: "py-0000dead".into(),
            reason: "ImagePullBackOff".into(),
            message: "pull access denied".into(),
        }],
    }
}

fn pool_object() -> Value {
    json!({"apiVersion": "agentbox.dev/v1alpha1", "kind": "SandboxPool",
           "metadata": {"name": "py", "namespace": "team-a", "uid": "pool-uid-1"},
           "spec": {"replicas": 8, "template": {"idleImage": "pause", "containers": []}}})
}

#[tokio::test]
async fn the_pool_status_is_a_merge_patch_of_the_status_subresource() {
    let (client, server) =
        mock(vec![step("PATCH", STATUS, 200, pool_object()), step("PATCH", STATUS, 200, pool_object())]);
    let backend = KubeBackend::new(client, KubeBackendConfig::default());
    backend.publish_pool_status("team-a", "py", &report()).await.unwrap();
    let mut calmer = report();
    calmer.conditions[2].status = false;
    calmer.conditions[2].reason = "AllSlotsHealthy".into();
    calmer.diagnostics.clear();
    backend.publish_pool_status("team-a", "py", &calmer).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    let st = &seen[0].body["status"];
    assert_eq!(st["phase"], "Degraded");
    let columns = ["replicas", "idleReplicas", "unavailableIdleReplicas", "runningReplicas", "startingReplicas"];
    let got: Vec<&Value> = columns.iter().map(|k| &st[k]).collect();
    assert_eq!(got, vec![&json!(7), &json!(3), &json!(1), &json!(2), &json!(0)]);
    assert_eq!(
        (&st["stoppingReplicas"], &st["failedReplicas"], &st["pendingRequests"]),
        (&json!(0), &json!(1), &json!(4))
    );
    assert_eq!(st["selector"], format!("{}=py", labels::POOL));
    assert_eq!(st["conditions"][0]["type"], "Available");
    assert_eq!(st["conditions"][0]["status"], "True");
    assert_eq!(st["conditions"][1]["status"], "False");
    assert!(st["conditions"][1].get("message").is_none());
    assert_eq!(
        st["diagnostics"],
        json!([{"pod": "py-0000dead", "reason": "ImagePullBackOff", "message": "pull access denied"}])
    );
    assert!(st.get("lastScaleUpTime").is_none(), "the autoscaler's fields are left alone");

    let next = &seen[1].body["status"];
    assert_eq!(next["conditions"][2]["status"], "False");
    assert_eq!(next["diagnostics"], json!([]), "the old diagnostics are cleared");
    assert_eq!(
        next["conditions"][0]["lastTransitionTime"], st["conditions"][0]["lastTransitionTime"],
        "an unchanged condition keeps its transition time"
    );
}

#[tokio::test]
async fn a_pool_without_an_object_in_the_cluster_is_quietly_skipped() {
    let (client, server) = mock(vec![step("PATCH", STATUS, 404, status_404())]);
    let backend = KubeBackend::new(client, KubeBackendConfig::default());
    backend.publish_pool_status("team-a", "py", &report()).await.unwrap();
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_refused_status_write_says_which_permission_is_missing() {
    let (client, server) = mock(vec![step("PATCH", STATUS, 403, common::status(403, "Forbidden", "forbidden"))]);
    let backend = KubeBackend::new(client, KubeBackendConfig::default());
    let err = backend.publish_pool_status("team-a", "py", &report()).await.unwrap_err();
    assert!(err.to_string().contains("sandboxpools/status"), "{err}");
    server.await.unwrap();
}

fn slot_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "py-0000abcd", "namespace": "team-a", "labels": {labels::POOL: "py"}},
        "spec": {"containers": [{"name": "main", "image": "pause"}, {"name": "side", "image": "busybox"}]},
    })
}

fn find_step() -> Step {
    let mut s = step(
        "GET",
        "/api/v1/pods",
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [slot_pod()]}),
    );
    s.query = vec!["labelSelector=agentbox.dev/pool", "fieldSelector=metadata.name=py-0000abcd"];
    s
}

const LOG: &str = "/api/v1/namespaces/team-a/pods/py-0000abcd/log";

#[tokio::test]
async fn follow_logs_streams_pods_log_with_follow_for_every_container() {
    let mut main = step("GET", LOG, 200, json!("2026-01-01T00:00:00.1Z hello\n2026-01-01T00:00:01.2Z world\n"));
    main.query = vec!["follow=true", "tailLines=2", "timestamps=true", "container=main"];
    let mut side = step("GET", LOG, 200, json!("2026-01-01T00:00:02Z from the sidecar\n"));
    side.query = vec!["follow=true", "container=side"];
    let (client, server) = mock(vec![find_step(), main, side]);
    let backend = KubeBackend::new(client, KubeBackendConfig::default());
    let mut rx = backend.follow_logs("py-0000abcd", None, 2).await.unwrap();
    let mut got = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap() {
        got.push((line.container, line.timestamp.unwrap_or_default(), line.line));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("main".to_string(), "2026-01-01T00:00:00.1Z".to_string(), "hello".to_string()),
            ("main".into(), "2026-01-01T00:00:01.2Z".into(), "world".into()),
            ("side".into(), "2026-01-01T00:00:02Z".into(), "from the sidecar".into()),
        ],
        "every line of both containers, then the channel closes when the logs end"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn follow_logs_of_an_unknown_container_is_container_not_found() {
    let (client, server) = mock(vec![find_step()]);
    let backend = KubeBackend::new(client, KubeBackendConfig::default());
    let err = backend.follow_logs("py-0000abcd", Some("ghost"), 0).await.unwrap_err();
    assert!(matches!(err, agentbox_core::backend::BackendError::ContainerNotFound { .. }), "{err:?}");
    server.await.unwrap();
}

const METRICS: &str = "/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods/py-0000abcd";

fn pod_metrics(cpu: &str) -> Value {
    json!({"kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
           "metadata": {"name": "py-0000abcd", "namespace": "team-a"},
           "timestamp": "2026-01-01T00:00:00Z", "window": "10s",
           "containers": [{"name": "main", "usage": {"cpu": cpu, "memory": "100Mi"}},
                          {"name": "side", "usage": {"cpu": "0", "memory": "28Mi"}}]})
}

#[tokio::test]
async fn slot_stats_come_from_pod_metrics_and_the_pod_limits() {
    let mut limited = slot_pod();
    limited["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "1500m", "memory": "1Gi"}});
    limited["spec"]["containers"][1]["resources"] = json!({"limits": {"cpu": "100m", "memory": "256Mi"}});
    let mut find = find_step();
    find.answer = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [limited.clone()]});
    let (client, server) = mock(vec![
        find,
        step("GET", METRICS, 200, pod_metrics("500m")),
        step("GET", "/api/v1/namespaces/team-a/pods/py-0000abcd", 200, limited),
        step("GET", METRICS, 200, pod_metrics("500m")),
    ]);
    let backend = KubeBackend::new(client, KubeBackendConfig::default());
    let first = backend.slot_stats("py-0000abcd").await.unwrap();
    assert_eq!(first.cpu_count, 2, "1.6 CPUs of limits round up to 2");
    assert_eq!(first.mem_used_bytes, 128 << 20);
    assert_eq!(first.mem_total_bytes, (1 << 30) + (256 << 20));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = backend.slot_stats("py-0000abcd").await.unwrap();
    let burned = second.cpu_usage_usec - first.cpu_usage_usec;
    assert!((100_000..150_000).contains(&burned), "0.5 cores for ~200 ms is ~100 ms of CPU, got {burned} us");
    server.await.unwrap();
}

#[tokio::test]
async fn without_limits_the_node_capacity_counts_and_without_a_metrics_api_it_is_unsupported() {
    let mut scheduled = slot_pod();
    scheduled["spec"]["nodeName"] = json!("node-1");
    let mut find = find_step();
    find.answer = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [scheduled.clone()]});
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
                      "status": {"capacity": {"cpu": "8", "memory": "16Gi"}}});
    let absent = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": "the server could not find the requested resource"});
    let (client, server) = mock(vec![
        find,
        step("GET", METRICS, 200, pod_metrics("2")),
        step("GET", "/api/v1/nodes/node-1", 200, node),
        step("GET", "/api/v1/namespaces/team-a/pods/py-0000abcd", 200, scheduled),
        step("GET", METRICS, 404, absent),
    ]);
    let backend = KubeBackend::new(client, KubeBackendConfig::default());
    let stats = backend.slot_stats("py-0000abcd").await.unwrap();
    assert_eq!((stats.cpu_count, stats.mem_total_bytes), (8, 16 << 30));
    let err = backend.slot_stats("py-0000abcd").await.unwrap_err();
    assert!(
        matches!(&err, agentbox_core::backend::BackendError::Unsupported(m) if m.contains("metrics.k8s.io") && m.contains("metrics-server")),
        "{err:?}"
    );
    server.await.unwrap();
}
