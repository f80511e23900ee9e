//! Scenario tests of the Kubernetes backend against a mocked API server (`tower_test::mock`): each
//! test scripts the API's answers, then asserts the exact requests the backend sent (method, path,
//! query, content type, body) and the outcome the core sees.

use std::time::Duration;

use agentbox_backend_k8s::{AgentInjection, KubeBackend, KubeBackendConfig, KubeError, labels};
use agentbox_core::backend::{Backend, BackendError, ContainerState, SlotSpec};
use agentbox_core::model::{ContainerSpec, RegistryCredential};
use serde_json::{Value, json};

mod common;
use common::{Step, mock, status_404, step};

fn cfg() -> KubeBackendConfig {
    KubeBackendConfig {
        agent: Some(AgentInjection { image: "agentbox:dev".into(), binary: "/usr/local/bin/agentbox-envd".into() }),
        poll_interval: Duration::from_millis(1),
        create_timeout: Duration::from_secs(5),
        switch_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn slot_spec() -> SlotSpec {
    SlotSpec {
        slot_id: "py-0000abcd".into(),
        pool: "py".into(),
        namespace: "team-a".into(),
        runtime: Default::default(),
        containers: vec![ContainerSpec { name: "main".into(), image: "pause".into(), ..Default::default() }],
        resources: Default::default(),
        egress: true,
        registry_credentials: vec![],
    }
}

const PODS: &str = "/api/v1/namespaces/team-a/pods";
const POD: &str = "/api/v1/namespaces/team-a/pods/py-0000abcd";
const POOL: &str = "/apis/agentbox.dev/v1alpha1/namespaces/team-a/sandboxpools/py";

fn pool_object() -> Value {
    json!({"apiVersion": "agentbox.dev/v1alpha1", "kind": "SandboxPool",
           "metadata": {"name": "py", "namespace": "team-a", "uid": "pool-uid-1"},
           "spec": {"replicas": 1, "template": {"idleImage": "pause", "containers": []}}})
}

/// The slot Pod as the API would return it: `image` in the spec, `status` as given.
fn pod(image: &str, finalizers: Value, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "py-0000abcd", "namespace": "team-a", "resourceVersion": "7",
                     "labels": {labels::POOL: "py", labels::PHASE: "idle"}, "finalizers": finalizers},
        "spec": {"containers": [{"name": "main", "image": image}]},
        "status": status,
    })
}

fn running(image: &str, id: &str) -> Value {
    json!({"phase": "Running", "podIP": "10.9.0.7", "containerStatuses": [
        {"name": "main", "image": image, "imageID": format!("{image}@sha256:00"), "ready": true, "restartCount": 0,
         "containerID": id, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})
}

fn waiting(image: &str, reason: &str) -> Value {
    json!({"phase": "Pending", "containerStatuses": [
        {"name": "main", "image": image, "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": reason, "message": format!("{reason} for {image}")}}}]})
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": items})
}

fn ours() -> Value {
    json!([labels::PROTECTION_FINALIZER])
}

#[tokio::test]
async fn create_slot_posts_the_pod_and_waits_until_it_runs() {
    let (client, server) = mock(vec![
        step("GET", POOL, 200, pool_object()),
        step("POST", PODS, 201, pod("pause", ours(), json!({"phase": "Pending"}))),
        step("GET", POD, 200, pod("pause", ours(), waiting("pause", "ContainerCreating"))),
        step("GET", POD, 200, pod("pause", ours(), running("docker.io/library/pause:latest", "containerd://a"))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    let obs = backend.create_slot(&slot_spec()).await.unwrap();
    assert_eq!(obs.slot_id, "py-0000abcd");
    assert_eq!(obs.pool, "py");
    assert_eq!(obs.ip.as_deref(), Some("10.9.0.7"));
    assert_eq!(obs.containers[0].state, ContainerState::Running { pid: 0 });
    assert_eq!(obs.containers[0].container_id, "containerd://a");

    let seen = server.await.unwrap();
    let post = &seen[1].body;
    assert_eq!(post["metadata"]["name"], "py-0000abcd");
    assert_eq!(post["metadata"]["namespace"], "team-a");
    assert_eq!(post["metadata"]["labels"][labels::POOL], "py");
    assert_eq!(post["metadata"]["labels"][labels::PHASE], "idle");
    assert_eq!(post["metadata"]["finalizers"], json!([labels::PROTECTION_FINALIZER]));
    assert_eq!(
        post["metadata"]["ownerReferences"],
        json!([{"apiVersion": "agentbox.dev/v1alpha1", "kind": "SandboxPool", "name": "py", "uid": "pool-uid-1",
                "controller": true, "blockOwnerDeletion": true}])
    );
    assert_eq!(post["spec"]["initContainers"][0]["image"], "agentbox:dev");
    assert_eq!(post["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], "/.agentbox");
    assert_eq!(post["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][0], "/.agentbox/envd");
    assert_eq!(post["spec"]["restartPolicy"], "Never");
}

#[tokio::test]
async fn create_slot_with_credentials_applies_a_pull_secret_first() {
    let mut spec = slot_spec();
    spec.registry_credentials =
        vec![RegistryCredential { registry: "r.example".into(), username: "u".into(), password: "p".into() }];
    let secret = "/api/v1/namespaces/team-a/secrets/py-registry";
    let (client, server) = mock(vec![
        step("GET", POOL, 200, pool_object()),
        Step {
            query: vec!["fieldManager=agentbox", "force=true"],
            ..step(
                "PATCH",
                secret,
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "py-registry"}}),
            )
        },
        step("POST", PODS, 201, pod("pause", ours(), json!({}))),
        step("GET", POD, 200, pod("pause", ours(), running("pause", "containerd://a"))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    backend.create_slot(&spec).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen[1].content_type, "application/apply-patch+yaml");
    assert_eq!(seen[1].body["type"], "kubernetes.io/dockerconfigjson");
    let config: Value =
        serde_json::from_str(seen[1].body["stringData"][".dockerconfigjson"].as_str().unwrap()).unwrap();
    assert_eq!(config, json!({"auths": {"r.example": {"username": "u", "password": "p"}}}));
    assert_eq!(seen[2].body["spec"]["imagePullSecrets"], json!([{"name": "py-registry"}]));
}

#[tokio::test]
async fn create_slot_uses_the_pull_secret_the_pool_object_names() {
    // A pool made with kubectl: `overrides.imagePullSecretName` names a Secret of its own; the
    // server holds no credentials for it, so nothing is applied and the Pod names that Secret.
    let mut object = pool_object();
    object["spec"]["overrides"] = json!({"imagePullSecretName": "my-registry"});
    let (client, server) = mock(vec![
        step("GET", POOL, 200, object),
        step("POST", PODS, 201, pod("pause", ours(), json!({}))),
        step("GET", POD, 200, pod("pause", ours(), running("pause", "containerd://a"))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    backend.create_slot(&slot_spec()).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen[1].body["spec"]["imagePullSecrets"], json!([{"name": "my-registry"}]));
}

#[tokio::test]
async fn create_slot_whose_image_cannot_be_pulled_fails_and_leaves_nothing_behind() {
    let (client, server) = mock(vec![
        step("GET", POOL, 200, pool_object()),
        step("POST", PODS, 201, pod("nope", ours(), json!({}))),
        step("GET", POD, 200, pod("nope", ours(), waiting("nope", "ErrImagePull"))),
        // Cleanup: read, drop the finalizer, delete.
        step("GET", POD, 200, pod("nope", json!(["other.io/keep", labels::PROTECTION_FINALIZER]), json!({}))),
        step("PATCH", POD, 200, pod("nope", json!(["other.io/keep"]), json!({}))),
        step("DELETE", POD, 200, pod("nope", json!(["other.io/keep"]), json!({}))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    let mut spec = slot_spec();
    spec.containers[0].image = "nope".into();
    match backend.create_slot(&spec).await {
        Err(BackendError::Image { image, message }) => {
            assert_eq!(image, "nope");
            assert!(message.contains("ErrImagePull"), "{message}");
        }
        other => panic!("expected an image error, got {other:?}"),
    }
    let seen = server.await.unwrap();
    assert_eq!(seen[4].content_type, "application/json-patch+json");
    assert_eq!(
        seen[4].body,
        json!([{"op": "test", "path": "/metadata/finalizers/1", "value": labels::PROTECTION_FINALIZER},
               {"op": "remove", "path": "/metadata/finalizers/1"}])
    );
    assert_eq!(seen[5].method, "DELETE");
}

#[tokio::test]
async fn create_slot_without_a_pool_object_is_refused_before_any_pod_is_made() {
    let (client, server) = mock(vec![step("GET", POOL, 404, status_404())]);
    let backend = KubeBackend::new(client, cfg());
    let err = backend.create_slot(&slot_spec()).await.unwrap_err();
    assert!(matches!(&err, BackendError::Invalid(m) if m.contains("sandboxpool team-a/py does not exist")), "{err}");
    assert_eq!(server.await.unwrap().len(), 1, "no pod was created");
}

/// The cluster-wide lookup of a slot the backend has not seen yet.
fn find_step(items: Vec<Value>) -> Step {
    Step {
        query: vec!["labelSelector=agentbox.dev/pool", "fieldSelector=metadata.name=py-0000abcd"],
        ..step("GET", "/api/v1/pods", 200, list(items))
    }
}

fn switch_to(image: &str) -> Vec<ContainerSpec> {
    vec![ContainerSpec { name: "main".into(), image: image.into(), ..Default::default() }]
}

#[tokio::test]
async fn switch_patches_the_image_and_completes_when_the_new_container_runs() {
    let (client, server) = mock(vec![
        find_step(vec![pod("pause", ours(), running("pause", "containerd://a"))]),
        step("PATCH", POD, 200, pod("python:3.12", ours(), running("pause", "containerd://a"))),
        // The kubelet has not acted yet, then restarts the container with the new image.
        step("GET", POD, 200, pod("python:3.12", ours(), running("pause", "containerd://a"))),
        step("GET", POD, 200, pod("python:3.12", ours(), waiting("python:3.12", "ContainerCreating"))),
        step("GET", POD, 200, pod("python:3.12", ours(), running("docker.io/library/python:3.12", "containerd://b"))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    let obs = backend.switch("py-0000abcd", &switch_to("python:3.12"), &[]).await.unwrap();
    assert_eq!(obs.containers[0].image, "python:3.12");
    assert_eq!(obs.containers[0].container_id, "containerd://b");
    assert!(obs.containers[0].state.is_running());
    let seen = server.await.unwrap();
    assert_eq!(seen[1].content_type, "application/json-patch+json");
    assert_eq!(
        seen[1].body,
        json!([{"op": "test", "path": "/spec/containers/0/name", "value": "main"},
               {"op": "replace", "path": "/spec/containers/0/image", "value": "python:3.12"}])
    );
}

#[tokio::test]
async fn switch_to_the_same_image_sends_no_patch() {
    let (client, server) = mock(vec![find_step(vec![pod("pause", ours(), running("pause", "containerd://a"))])]);
    let backend = KubeBackend::new(client, cfg());
    let obs = backend.switch("py-0000abcd", &switch_to("pause"), &[]).await.unwrap();
    assert_eq!(obs.containers[0].container_id, "containerd://a");
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test]
async fn switch_to_an_image_that_cannot_be_pulled_is_an_image_error() {
    let (client, _server) = mock(vec![
        find_step(vec![pod("pause", ours(), running("pause", "containerd://a"))]),
        step("PATCH", POD, 200, pod("ghost:1", ours(), running("pause", "containerd://a"))),
        step("GET", POD, 200, pod("ghost:1", ours(), waiting("ghost:1", "ImagePullBackOff"))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    let err = backend.switch("py-0000abcd", &switch_to("ghost:1"), &[]).await.unwrap_err();
    assert!(matches!(&err, BackendError::Image { image, .. } if image == "ghost:1"), "{err}");
}

#[tokio::test]
async fn switch_of_an_unknown_slot_is_slot_not_found() {
    let (client, _server) = mock(vec![find_step(vec![])]);
    let backend = KubeBackend::new(client, cfg());
    let err = backend.switch("py-0000abcd", &switch_to("x"), &[]).await.unwrap_err();
    assert!(matches!(err, BackendError::SlotNotFound(s) if s == "py-0000abcd"));
}

#[tokio::test]
async fn an_evicted_pod_is_observed_as_a_dead_main_container() {
    let evicted = json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
        "containerStatuses": [{"name": "main", "image": "pause", "imageID": "", "ready": false, "restartCount": 0,
                               "containerID": "containerd://a", "state": {"running": {}}}]});
    let (client, _server) = mock(vec![
        find_step(vec![pod("pause", ours(), running("pause", "containerd://a"))]),
        // Known namespace now: a direct GET.
        step("GET", POD, 200, pod("pause", ours(), evicted)),
    ]);
    let backend = KubeBackend::new(client, cfg());
    assert!(backend.inspect("py-0000abcd").await.unwrap().containers[0].state.is_running());
    let obs = backend.inspect("py-0000abcd").await.unwrap();
    // The core fails a Running sandbox whose main container is not running (as on the local backend).
    assert_eq!(obs.containers[0].state, ContainerState::Exited { exit_code: None, oom_killed: false });
}

#[tokio::test]
async fn destroy_removes_the_finalizer_then_deletes_and_a_missing_slot_is_fine() {
    let (client, server) = mock(vec![
        find_step(vec![pod("pause", ours(), running("pause", "containerd://a"))]),
        step("GET", POD, 200, pod("pause", ours(), running("pause", "containerd://a"))),
        step("PATCH", POD, 200, pod("pause", json!([]), json!({}))),
        step("DELETE", POD, 200, pod("pause", json!([]), json!({}))),
        find_step(vec![]),
    ]);
    let backend = KubeBackend::new(client, cfg());
    backend.destroy_slot("py-0000abcd").await.unwrap();
    backend.destroy_slot("py-0000abcd").await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(
        seen[2].body,
        json!([{"op": "test", "path": "/metadata/finalizers/0", "value": labels::PROTECTION_FINALIZER},
               {"op": "remove", "path": "/metadata/finalizers/0"}])
    );
    assert_eq!((seen[3].method.as_str(), seen[3].path.as_str()), ("DELETE", POD));
}

#[tokio::test]
async fn list_slots_lists_agentbox_pods_in_every_namespace() {
    let mut other = pod("pause", ours(), running("pause", "containerd://z"));
    other["metadata"]["name"] = json!("py-00000001");
    let (client, _server) = mock(vec![Step {
        query: vec!["labelSelector=agentbox.dev/pool"],
        ..step("GET", "/api/v1/pods", 200, list(vec![pod("pause", ours(), running("pause", "containerd://a")), other]))
    }]);
    let backend = KubeBackend::new(client, cfg());
    let slots = backend.list_slots().await.unwrap();
    let names: Vec<_> = slots.iter().map(|s| s.slot_id.as_str()).collect();
    assert_eq!(names, ["py-00000001", "py-0000abcd"]);
}

#[tokio::test]
async fn exec_in_a_slot_without_a_pod_is_slot_not_found() {
    // The exec itself (pods/exec over a WebSocket) is tested in tests/exec.rs.
    let (client, server) = mock(vec![Step {
        query: vec!["labelSelector=agentbox.dev/pool", "fieldSelector=metadata.name=x"],
        ..step("GET", "/api/v1/pods", 200, list(vec![]))
    }]);
    let backend = KubeBackend::new(client, cfg());
    let req = agentbox_core::backend::ExecRequest {
        container: None,
        argv: vec!["true".into()],
        env: Default::default(),
        cwd: None,
        user: None,
        stdin: None,
        timeout: Duration::from_secs(1),
    };
    let err = backend.exec("x", &req).await.unwrap_err();
    assert!(matches!(&err, BackendError::SlotNotFound(s) if s == "x"), "{err:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn logs_come_from_pods_log_with_timestamps() {
    let list = |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items});
    let text = "2026-11-29T03:00:00.123456789Z hello\n2026-11-29T03:00:01.5Z  indented line\n";
    let (client, server) = mock(vec![
        Step {
            query: vec!["labelSelector=agentbox.dev/pool", "fieldSelector=metadata.name=py-0000abcd"],
            ..step("GET", "/api/v1/pods", 200, list(vec![pod("python", ours(), running("python", "containerd://a"))]))
        },
        Step {
            query: vec!["container=main", "timestamps=true", "tailLines=50"],
            ..step("GET", format!("{POD}/log"), 200, Value::String(text.into()))
        },
        // The namespace is remembered: a GET of the Pod, then a container that is not there.
        step("GET", POD, 200, pod("python", ours(), running("python", "containerd://a"))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    let lines = backend.logs("py-0000abcd", None, 50).await.unwrap();
    let got: Vec<_> = lines.iter().map(|l| (l.timestamp.as_deref(), l.container.as_str(), l.line.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some("2026-11-29T03:00:00.123456789Z"), "main", "hello"),
            (Some("2026-11-29T03:00:01.5Z"), "main", " indented line"),
        ]
    );
    let err = backend.logs("py-0000abcd", Some("sidecar"), 0).await.unwrap_err();
    assert!(matches!(err, BackendError::ContainerNotFound { .. }), "{err}");
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 3);
}

fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "x", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
}

#[tokio::test]
async fn check_says_how_to_install_missing_crds() {
    let crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/sandboxpools.agentbox.dev";
    let (client, _server) = mock(vec![step("GET", "/version", 200, version()), step("GET", crd, 404, status_404())]);
    let backend = KubeBackend::new(client, cfg());
    let err = backend.check("https://cluster.test").await.unwrap_err();
    assert!(matches!(err, KubeError::CrdsMissing(_)));
    assert!(err.to_string().contains("kubectl apply -f deploy/crds/"), "{err}");
}

#[tokio::test]
async fn connect_reports_an_unreachable_api_server_clearly() {
    // Nothing listens on port 1 of the loopback.
    let kc = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let err = KubeBackend::connect_with(kc, cfg()).await.err().expect("no api server there");
    let msg = err.to_string();
    assert!(matches!(err, KubeError::Unreachable { .. }), "{msg}");
    assert!(msg.contains("127.0.0.1:1") && msg.contains("KUBECONFIG"), "{msg}");
}

/// The slot Pod with the given phase label (and sandbox-id label when given), resourceVersion 7.
fn pod_in_phase(phase: &str, sandbox: Option<&str>) -> Value {
    let mut p = pod("pause", ours(), running("pause", "containerd://a"));
    p["metadata"]["labels"][labels::PHASE] = json!(phase);
    if let Some(id) = sandbox {
        p["metadata"]["labels"][labels::SANDBOX_ID] = json!(id);
    }
    p
}

const SB: &str = "0190b7a2-6d1c-7cc3-9a4e-2f1b3c4d5e6f";

#[tokio::test]
async fn mark_claimed_is_a_compare_and_set_of_the_phase_label() {
    let (client, server) = mock(vec![
        find_step(vec![pod_in_phase("idle", None)]),
        step("PATCH", POD, 200, pod_in_phase("running", Some(SB))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    backend.mark_claimed("py-0000abcd", SB).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].content_type, "application/json-patch+json");
    assert_eq!(
        seen[1].body,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
            {"op": "test", "path": "/metadata/labels/agentbox.dev~1phase", "value": "idle"},
            {"op": "replace", "path": "/metadata/labels/agentbox.dev~1phase", "value": "running"},
            {"op": "add", "path": "/metadata/labels/agentbox.dev~1sandbox-id", "value": SB},
        ])
    );
}

#[tokio::test]
async fn a_claim_that_loses_the_race_at_the_api_server_is_a_conflict() {
    let lost = common::status(
        422,
        "Invalid",
        "the server rejected our request: testing value /metadata/resourceVersion failed",
    );
    let (client, server) = mock(vec![
        find_step(vec![pod_in_phase("idle", None)]),
        step("PATCH", POD, 422, lost),
        // Another claimer: 409 from the API server is a conflict as well.
        step("GET", POD, 200, pod_in_phase("idle", None)),
        step("PATCH", POD, 409, common::status(409, "Conflict", "the object has been modified")),
        // Next attempt reads the Pod, sees it claimed by someone else: no patch is sent.
        step("GET", POD, 200, pod_in_phase("running", Some("other-sandbox"))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    for _ in 0..3 {
        let err = backend.mark_claimed("py-0000abcd", SB).await.unwrap_err();
        assert!(matches!(err, BackendError::Conflict(_)), "{err}");
    }
    let seen = server.await.unwrap();
    let patches = seen.iter().filter(|s| s.method == "PATCH").count();
    assert_eq!(patches, 2, "no patch for a pod that is not idle");
}

#[tokio::test]
async fn two_concurrent_claims_of_one_pod_in_this_process_send_one_patch() {
    let (client, server) = mock(vec![
        find_step(vec![pod_in_phase("idle", None)]),
        step("PATCH", POD, 200, pod_in_phase("running", Some(SB))),
    ]);
    let backend = KubeBackend::new(client, cfg());
    // The first claim holds the reservation while it waits for the API; the second is refused
    // without a request.
    let (a, b) = tokio::join!(backend.mark_claimed("py-0000abcd", SB), backend.mark_claimed("py-0000abcd", "sb-2"));
    assert!(a.is_ok(), "{a:?}");
    assert!(matches!(&b, Err(BackendError::Conflict(m)) if m.contains("being claimed")), "{b:?}");
    let seen = server.await.unwrap();
    assert_eq!(seen.iter().map(|s| s.method.as_str()).collect::<Vec<_>>(), ["GET", "PATCH"]);
    assert_eq!(seen[1].body[3]["value"], SB);
}

#[tokio::test]
async fn a_retried_claim_by_the_same_sandbox_succeeds_without_a_patch() {
    let (client, server) = mock(vec![find_step(vec![pod_in_phase("running", Some(SB))])]);
    let backend = KubeBackend::new(client, cfg());
    backend.mark_claimed("py-0000abcd", SB).await.unwrap();
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_pod_being_deleted_cannot_be_claimed_and_a_bad_sandbox_id_is_refused() {
    let mut deleting = pod_in_phase("idle", None);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let (client, server) = mock(vec![find_step(vec![deleting])]);
    let backend = KubeBackend::new(client, cfg());
    let err = backend.mark_claimed("py-0000abcd", "not/a label").await.unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "{err}");
    let err = backend.mark_claimed("py-0000abcd", SB).await.unwrap_err();
    assert!(matches!(&err, BackendError::Conflict(m) if m.contains("being deleted")), "{err}");
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test]
async fn mark_released_sets_idle_and_drops_the_sandbox_id_and_a_missing_pod_is_fine() {
    let (client, server) = mock(vec![
        find_step(vec![pod_in_phase("running", Some(SB))]),
        step("PATCH", POD, 200, pod_in_phase("idle", None)),
        // Gone since: the known namespace answers 404, then the slot is unknown.
        step("GET", POD, 404, status_404()),
    ]);
    let backend = KubeBackend::new(client, cfg());
    backend.mark_released("py-0000abcd").await.unwrap();
    backend.mark_released("py-0000abcd").await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen[1].content_type, "application/merge-patch+json");
    assert_eq!(seen[1].body, json!({"metadata": {"labels": {labels::PHASE: "idle", labels::SANDBOX_ID: null}}}));
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn an_evicted_pod_carries_its_reason_in_the_observation() {
    let evicted = json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."});
    let (client, _server) = mock(vec![find_step(vec![pod("pause", ours(), evicted)])]);
    let backend = KubeBackend::new(client, cfg());
    let obs = backend.inspect("py-0000abcd").await.unwrap();
    assert_eq!(obs.failure, Some(("Evicted".into(), "The node was low on resource: memory.".into())));
}

/// An informer cache holding `pods` (as the watch would have delivered them).
fn cache_of(pods: Vec<Value>) -> kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod> {
    let (reader, mut writer) = kube::runtime::reflector::store();
    for p in pods {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(serde_json::from_value(p).unwrap()));
    }
    reader
}

#[tokio::test]
async fn with_an_informer_cache_a_claim_is_one_patch() {
    let (client, server) = mock(vec![step("PATCH", POD, 200, pod_in_phase("running", Some(SB)))]);
    let backend = KubeBackend::new(client, cfg()).with_pod_cache(cache_of(vec![pod_in_phase("idle", None)]));
    backend.mark_claimed("py-0000abcd", SB).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 1, "no GET: the pod came from the cache");
    assert_eq!(seen[0].body[0], json!({"op": "test", "path": "/metadata/resourceVersion", "value": "7"}));
}

#[tokio::test]
async fn a_stale_cache_entry_costs_a_conflict_not_a_double_claim() {
    let mut stale = pod_in_phase("idle", None);
    stale["metadata"]["resourceVersion"] = json!("6");
    let (client, server) = mock(vec![
        step("PATCH", POD, 422, common::status(422, "Invalid", "testing value /metadata/resourceVersion failed")),
        step("GET", POD, 200, pod_in_phase("running", Some("other-sandbox"))),
    ]);
    let backend = KubeBackend::new(client, cfg()).with_pod_cache(cache_of(vec![stale.clone()]));
    let err = backend.mark_claimed("py-0000abcd", SB).await.unwrap_err();
    assert!(matches!(err, BackendError::Conflict(_)), "{err}");
    let seen = server.await.unwrap();
    assert_eq!(seen[0].body[0]["value"], "6", "the cached version was tested");

    // The same stale entry when our own earlier claim had landed (a retry): it is ours.
    let (client, _server) = mock(vec![
        step("PATCH", POD, 422, common::status(422, "Invalid", "testing value /metadata/resourceVersion failed")),
        step("GET", POD, 200, pod_in_phase("running", Some(SB))),
    ]);
    let backend = KubeBackend::new(client, cfg()).with_pod_cache(cache_of(vec![stale]));
    backend.mark_claimed("py-0000abcd", SB).await.unwrap();
}

#[tokio::test]
async fn the_informer_lists_then_watches_slot_pods_into_the_cache() {
    let (client, _server) = mock(vec![
        Step {
            query: vec!["labelSelector=agentbox.dev/pool"],
            ..step("GET", "/api/v1/pods", 200, list(vec![pod_in_phase("idle", None)]))
        },
        Step {
            query: vec!["watch=true", "labelSelector=agentbox.dev/pool", "resourceVersion=9"],
            ..step("GET", "/api/v1/pods", 200, json!({"type": "MODIFIED", "object": pod_in_phase("running", Some(SB))}))
        },
    ]);
    let (cache, task) = agentbox_backend_k8s::informer::pod_informer(client);
    let task = tokio::spawn(task);
    cache.wait_until_ready().await.unwrap();
    let phase_of =
        || cache.state()[0].metadata.labels.as_ref().unwrap().get(labels::PHASE).cloned().unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while phase_of() != "running" {
        assert!(std::time::Instant::now() < deadline, "the watched change never reached the cache");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(cache.state().len(), 1);
    task.abort();
}
