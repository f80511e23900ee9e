//! Scenario tests of the cluster services next to the backend (leader election over a Lease, API
//! keys in Secrets, warnings as Events) against a mocked API server: the exact requests and the
//! outcomes.

use agentbox_backend_k8s::events::Warnings;
use agentbox_backend_k8s::keys::{HASH_LABEL, SecretKeyStore};
use agentbox_backend_k8s::leader::{LeaderElector, LeaseConfig, Round};
use agentbox_core::identity::{ApiKeyRecord, Role};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

mod common;
use common::{Step, mock, status, status_404, step};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/agentbox-system/leases/agentbox-reconcilers";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/agentbox-system/leases";
const NOW: &str = "2026-03-01T12:00:30Z";

fn elector(client: kube::Client) -> LeaderElector {
    LeaderElector::new(client, LeaseConfig::new("agentbox-system", "agentbox-reconcilers", "agentbox-0"))
}

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn lease(holder: &str, renewed: &str, transitions: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "agentbox-reconcilers", "namespace": "agentbox-system", "resourceVersion": "5"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "acquireTime": "2026-03-01T11:00:00.000000Z", "renewTime": renewed,
                    "leaseTransitions": transitions}})
}

/// The times the API sends back as they were sent: compare instants, not spellings.
fn time(v: &Value) -> Timestamp {
    v.as_str().unwrap_or_else(|| panic!("not a time: {v}")).parse().unwrap()
}

#[tokio::test]
async fn without_a_lease_the_first_replica_creates_it_and_leads() {
    let (client, server) =
        mock(vec![step("GET", LEASE, 404, status_404()), step("POST", LEASES, 201, lease("agentbox-0", NOW, 0))]);
    assert_eq!(elector(client).try_lead_at(now()).await.unwrap(), Round::Acquired);
    let seen = server.await.unwrap();
    let spec = &seen[1].body["spec"];
    assert_eq!(seen[1].body["metadata"]["name"], "agentbox-reconcilers");
    assert_eq!(spec["holderIdentity"], "agentbox-0");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert_eq!((time(&spec["renewTime"]), time(&spec["acquireTime"])), (now(), now()));
}

#[tokio::test]
async fn the_holder_renews_with_the_resource_version_it_read() {
    let (client, server) = mock(vec![
        step("GET", LEASE, 200, lease("agentbox-0", "2026-03-01T12:00:28.000000Z", 3)),
        step("PUT", LEASE, 200, lease("agentbox-0", NOW, 3)),
    ]);
    assert_eq!(elector(client).try_lead_at(now()).await.unwrap(), Round::Renewed);
    let seen = server.await.unwrap();
    let body = &seen[1].body;
    assert_eq!(body["metadata"]["resourceVersion"], "5", "optimistic concurrency");
    assert_eq!(body["spec"]["holderIdentity"], "agentbox-0");
    assert_eq!(time(&body["spec"]["renewTime"]), now());
    assert_eq!(time(&body["spec"]["acquireTime"]), time(&json!("2026-03-01T11:00:00Z")), "kept");
    assert_eq!(body["spec"]["leaseTransitions"], 3, "a renewal is no transition");
}

#[tokio::test]
async fn another_holders_valid_lease_is_left_alone() {
    // Renewed 10 s before NOW, 15 s lease: still valid; no write.
    let (client, server) = mock(vec![step("GET", LEASE, 200, lease("agentbox-1", "2026-03-01T12:00:20.000000Z", 1))]);
    let round = elector(client).try_lead_at(now()).await.unwrap();
    assert_eq!(round, Round::HeldBy("agentbox-1".into()));
    assert!(!round.is_leader());
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_one_more_transition() {
    // Renewed 20 s before NOW, 15 s lease: expired.
    let (client, server) = mock(vec![
        step("GET", LEASE, 200, lease("agentbox-1", "2026-03-01T12:00:10.000000Z", 1)),
        step("PUT", LEASE, 200, lease("agentbox-0", NOW, 2)),
    ]);
    assert_eq!(elector(client).try_lead_at(now()).await.unwrap(), Round::Acquired);
    let seen = server.await.unwrap();
    let spec = &seen[1].body["spec"];
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "5");
    assert_eq!(spec["holderIdentity"], "agentbox-0");
    assert_eq!(spec["leaseTransitions"], 2);
    assert_eq!((time(&spec["renewTime"]), time(&spec["acquireTime"])), (now(), now()));
}

#[tokio::test]
async fn losing_the_write_race_means_not_leader_this_round() {
    let conflict =
        || status(409, "Conflict", "the object has been modified; please apply your changes to the latest version");
    let (client, _server) = mock(vec![
        step("GET", LEASE, 200, lease("agentbox-1", "2026-03-01T12:00:10.000000Z", 1)),
        step("PUT", LEASE, 409, conflict()),
        // Two replicas creating the first Lease at once: the second gets 409 too.
        step("GET", LEASE, 404, status_404()),
        step("POST", LEASES, 409, conflict()),
    ]);
    let e = elector(client);
    assert_eq!(e.try_lead_at(now()).await.unwrap(), Round::Conflict);
    assert_eq!(e.try_lead_at(now()).await.unwrap(), Round::Conflict);
}

#[tokio::test]
async fn the_election_loop_reports_leadership_and_steps_down_when_a_round_fails() {
    let (client, server) = mock(vec![
        step("GET", LEASE, 404, status_404()),
        step("POST", LEASES, 201, lease("agentbox-0", NOW, 0)),
        // Next round: the API fails; the replica must stop leading at once.
        step("GET", LEASE, 500, status(500, "InternalError", "etcd is down")),
        // Shutdown releases the lease if still held (it is, per the API).
        step("GET", LEASE, 200, lease("agentbox-0", NOW, 0)),
        step("PUT", LEASE, 200, lease("", NOW, 0)),
    ]);
    let mut cfg = LeaseConfig::new("agentbox-system", "agentbox-reconcilers", "agentbox-0");
    cfg.retry_period = std::time::Duration::from_millis(20);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (mut leader, task) = LeaderElector::new(client, cfg).spawn(stop_rx);
    leader.wait_for(|l| *l).await.unwrap();
    leader.wait_for(|l| !*l).await.unwrap();
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    let seen = server.await.unwrap();
    let release = &seen[4].body["spec"];
    assert!(release.get("holderIdentity").is_none_or(|h| h.is_null()), "released: {release}");
    assert_eq!(release["leaseDurationSeconds"], 1);
}

fn key(hash: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        key_id: ApiKeyRecord::id_for_hash(hash),
        token_hash: hash.into(),
        namespace: "t-a-u".into(),
        role: Role::Tenant,
        user: "u".into(),
        team: "a".into(),
        quota_url: String::new(),
        description: String::new(),
        issued_at: "2026-01-01T00:00:00Z".into(),
        expires_at: None,
        sync_source: String::new(),
        sealed_token: Some("abcd".into()),
    }
}

const SECRETS: &str = "/api/v1/namespaces/agentbox-system/secrets";

fn secret_json(k: &ApiKeyRecord) -> Value {
    let mut v = serde_json::to_value(agentbox_backend_k8s::keys::key_secret("agentbox-system", k).unwrap()).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

fn secret_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "3"}, "items": items})
}

#[tokio::test]
async fn an_api_key_is_stored_as_a_secret_and_found_by_its_full_hash() {
    let hash = format!("{}{}", "0123456789abcdef".repeat(3), "0123456789abcde0");
    // Same first 63 characters, another last one: the label alone cannot tell them apart.
    let near = key(&format!("{}f", &hash[..63]));
    let k = key(&hash);
    let by_label = format!("labelSelector=agentbox.dev/type=api-key,{HASH_LABEL}={}", &hash[..63]);
    let by_label: &'static str = Box::leak(by_label.into_boxed_str());
    let name = "agentbox-apikey-0123456789abcdef";
    let (client, server) = mock(vec![
        step("POST", SECRETS, 201, secret_json(&k)),
        step("POST", SECRETS, 409, status(409, "AlreadyExists", "secrets already exists")),
        Step {
            query: vec![by_label],
            ..step("GET", SECRETS, 200, secret_list(vec![secret_json(&near), secret_json(&k)]))
        },
        step("GET", SECRETS, 200, secret_list(vec![secret_json(&near)])),
        step("DELETE", format!("{SECRETS}/{name}"), 200, secret_json(&k)),
        step("DELETE", format!("{SECRETS}/{name}"), 404, status_404()),
    ]);
    let store = SecretKeyStore::new(client, "agentbox-system");
    assert!(store.create(&k).await.unwrap(), "created");
    assert!(!store.create(&k).await.unwrap(), "a second create of the same key changes nothing");
    assert_eq!(store.find_by_hash(&hash).await.unwrap(), Some(k.clone()), "the full hash decides");
    assert_eq!(store.find_by_hash(&hash).await.unwrap(), None, "a near miss on the label is no match");
    assert!(store.delete(&k.key_id).await.unwrap());
    assert!(!store.delete(&k.key_id).await.unwrap());

    let seen = server.await.unwrap();
    let post = &seen[0].body;
    assert_eq!(post["metadata"]["name"], name);
    assert_eq!(post["metadata"]["labels"]["agentbox.dev/type"], "api-key");
    assert_eq!(post["metadata"]["labels"][HASH_LABEL], &hash[..63]);
    assert_eq!(post["metadata"]["labels"]["agentbox.dev/team"], "a");
    assert_eq!(post["type"], "Opaque");
    let decode = |v: &Value| -> Vec<u8> {
        let b: k8s_openapi::ByteString = serde_json::from_value(v.clone()).unwrap();
        b.0
    };
    let record: Value = serde_json::from_slice(&decode(&post["data"]["record"])).unwrap();
    assert_eq!(record["tokenHash"], hash);
    assert!(record.get("sealedToken").is_none_or(|v| v.is_null()), "the sealed token is its own entry");
    assert_eq!(decode(&post["data"]["sealed-token"]), b"abcd");
}

#[tokio::test]
async fn warnings_become_events_and_a_repeat_counts_in_a_series() {
    let events = "/apis/events.k8s.io/v1/namespaces/team-a/events";
    let (client, server) = mock(vec![
        step(
            "POST",
            events,
            201,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}}),
        ),
        step(
            "PATCH",
            format!("{events}/py-0000abcd.*"),
            200,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}}),
        ),
        step(
            "POST",
            events,
            201,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "p"}}),
        ),
    ]);
    let w = Warnings::new(client, "agentbox-0");
    let note = "the pod was evicted: The node was low on resource: memory.";
    w.slot("team-a", "py-0000abcd", "Evicted", "Reconcile", note).await.unwrap();
    w.slot("team-a", "py-0000abcd", "Evicted", "Reconcile", note).await.unwrap();
    w.pool("team-a", "py", "Degraded", "Reconcile", "2 failed slots").await.unwrap();
    let seen = server.await.unwrap();
    let e = &seen[0].body;
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "Evicted");
    assert_eq!(e["action"], "Reconcile");
    assert_eq!(e["note"], note);
    assert_eq!(e["reportingController"], "agentbox.dev/server");
    assert_eq!(e["reportingInstance"], "agentbox-0");
    assert_eq!(
        e["regarding"],
        json!({"apiVersion": "v1", "kind": "Pod", "name": "py-0000abcd", "namespace": "team-a"})
    );
    assert_eq!(seen[1].content_type, "application/merge-patch+json");
    assert_eq!(seen[1].body["series"]["count"], 2, "a repeat is counted, not a new event");
    assert_eq!(
        seen[2].body["regarding"],
        json!({"apiVersion": "agentbox.dev/v1alpha1", "kind": "SandboxPool", "name": "py", "namespace": "team-a"})
    );
}

#[tokio::test]
async fn the_backend_publishes_engine_warnings_as_events() {
    use agentbox_backend_k8s::{KubeBackend, KubeBackendConfig};
    use agentbox_core::backend::Backend;
    let events = "/apis/events.k8s.io/v1/namespaces/team-a/events";
    let answer = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}});
    let (client, server) = mock(vec![step("POST", events, 201, answer.clone()), step("POST", events, 201, answer)]);
    let backend = KubeBackend::new(client.clone(), KubeBackendConfig::default())
        .with_warnings(Warnings::new(client, "agentbox-0"));
    backend.warning("team-a", "py", Some("py-0000abcd"), "ImagePullBackOff", "pull failed").await;
    backend.warning("team-a", "py", None, "CrashLoop", "idle container keeps dying").await;
    let seen = server.await.unwrap();
    assert_eq!(seen[0].body["regarding"]["kind"], "Pod");
    assert_eq!(seen[0].body["reason"], "ImagePullBackOff");
    assert_eq!(seen[1].body["regarding"]["kind"], "SandboxPool");
    assert_eq!(seen[1].body["regarding"]["name"], "py");
    assert_eq!(seen[1].body["note"], "idle container keeps dying");
}
