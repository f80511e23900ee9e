//! Engine behaviour against the in-memory store and fake backend.

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::duration::WireDuration;
use agentbox_core::error::ErrorKind;
use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_core::model::{ContainerSpec, PodCreationImagePolicy, SandboxSpec, SandboxStatus, SlotPhase};
use agentbox_core::store::Store;

use super::*;
use crate::auth::AuthInfo;

struct Rig {
    engine: Arc<Engine>,
    store: Arc<MemoryStore>,
    backend: Arc<FakeBackend>,
}

fn cfg() -> EngineConfig {
    EngineConfig { reconcile_interval: Duration::from_millis(20), ..Default::default() }
}

async fn rig_with(store: Arc<MemoryStore>, backend: Arc<FakeBackend>) -> Rig {
    let engine = Engine::new(store.clone(), backend.clone(), cfg());
    engine.start().await.unwrap();
    Rig { engine, store, backend }
}

async fn rig() -> Rig {
    rig_with(Arc::new(MemoryStore::new()), Arc::new(FakeBackend::new())).await
}

fn pool_req(name: &str, replicas: u32, policy: PodCreationImagePolicy) -> CreatePoolRequest {
    CreatePoolRequest {
        name: name.into(),
        template: Some(SandboxSpec {
            idle_image: "pause".into(),
            idle_command: vec![],
            containers: vec![ContainerSpec { name: "main".into(), image: "host".into(), ..Default::default() }],
            runtimes: vec![],
            runtime_class: Default::default(),
            egress: true,
        }),
        replicas: Some(replicas),
        pod_creation_image_policy: Some(policy),
        ..Default::default()
    }
}

fn claim_req(pool: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        pool_name: pool.into(),
        startup_timeout: Some(WireDuration::from_secs(5)),
        ..Default::default()
    }
}

async fn wait_idle(r: &Rig, pool: &str, n: u32) {
    let auth = AuthInfo::dev_admin();
    for _ in 0..500 {
        let v = r.engine.get_pool(&auth, pool).unwrap();
        if v.status.counts.idle == n && v.status.counts.creating == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool {pool} never reached {n} idle slots: {:?}", r.engine.get_pool(&auth, pool).unwrap().status);
}

#[tokio::test]
async fn warm_up_claim_same_image_and_release() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 2, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 2).await;
    let sb = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running);
    assert!(sb.started_at.is_some());
    assert!(!r.backend.calls.lock().iter().any(|c| c.starts_with("switch")), "same image must not switch");
    let out = r
        .engine
        .exec(&auth, &sb.sandbox_id, serde_json::from_str(r#"{"command":["echo","hi"]}"#).unwrap())
        .await
        .unwrap();
    assert_eq!(out.stdout, "echo hi\n");
    r.engine.delete_sandbox(&auth, &sb.sandbox_id).unwrap();
    wait_idle(&r, "p", 2).await;
    let done = r.engine.get_sandbox(&auth, &sb.sandbox_id).unwrap();
    assert_eq!(done.status, SandboxStatus::Completed);
    assert!(done.recycled_at.is_some());
    // Deleting again: the sandbox has ended.
    assert_eq!(r.engine.delete_sandbox(&auth, &sb.sandbox_id).unwrap_err().kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn a_slot_claimed_elsewhere_is_skipped_and_released_slots_are_marked_idle() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 2, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 2).await;
    // Another replica took one of the two idle slots (on Kubernetes: the Pod's phase label CAS).
    let slots: Vec<String> = r.store.list_slots().unwrap().into_iter().map(|s| s.slot_id).collect();
    r.backend.claimed_elsewhere(&slots[0]);
    r.backend.claimed_elsewhere(&slots[1]);
    let blocked =
        tokio::time::timeout(Duration::from_millis(300), r.engine.create_sandbox(&auth, claim_req("p"))).await;
    assert!(blocked.is_err() || blocked.unwrap().is_err(), "no slot may be claimed while both are taken elsewhere");
    // The other replica lets go of one; the conflicted slots are requeued after a while.
    r.backend.mark_released(&slots[1]).await.unwrap();
    let sb = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    assert_eq!(sb.pod_name, slots[1], "the slot taken elsewhere was skipped");
    let calls = r.backend.calls.lock().clone();
    assert!(calls.iter().any(|c| c.starts_with(&format!("mark_claimed {} ", slots[0]))), "{calls:?}");
    assert!(calls.contains(&format!("mark_claimed {} {}", slots[1], sb.sandbox_id)), "{calls:?}");
    r.engine.delete_sandbox(&auth, &sb.sandbox_id).unwrap();
    for _ in 0..300 {
        if r.backend.calls.lock().iter().filter(|c| **c == format!("mark_released {}", slots[1])).count() >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the recycled slot was never marked released: {:?}", r.backend.calls.lock());
}

#[tokio::test]
async fn only_the_leader_reconciles() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (store, backend) = (Arc::new(MemoryStore::new()), Arc::new(FakeBackend::new()));
    let engine = Engine::new(store.clone(), backend.clone(), EngineConfig { leader: Some(rx), ..cfg() });
    engine.start().await.unwrap();
    let r = Rig { engine, store, backend };
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 2, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!r.engine.is_leader());
    assert!(
        !r.backend.calls.lock().iter().any(|c| c.starts_with("create")),
        "a replica without the Lease must not create slots"
    );
    tx.send(true).unwrap();
    wait_idle(&r, "p", 2).await;
    assert!(r.engine.is_leader());
}

#[tokio::test]
async fn image_switch_and_back_to_idle_image() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 1, PodCreationImagePolicy::IdleImage)).unwrap();
    wait_idle(&r, "p", 1).await;
    let mut req = claim_req("p");
    req.image = Some("myimage:1".into());
    let sb = r.engine.create_sandbox(&auth, req).await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running);
    assert_eq!(sb.container_images.get("main").map(String::as_str), Some("myimage:1"));
    let slot = r.store.get_slot(&sb.pod_name).unwrap().unwrap();
    assert_eq!(slot.images.get("main").map(String::as_str), Some("myimage:1"));
    r.engine.delete_sandbox(&auth, &sb.sandbox_id).unwrap();
    wait_idle(&r, "p", 1).await;
    let slot = r.store.get_slot(&sb.pod_name).unwrap().unwrap();
    assert_eq!(slot.images.get("main").map(String::as_str), Some("pause"));
    assert_eq!(slot.sandbox_id, None);
    let calls = r.backend.calls.lock().clone();
    assert!(calls.contains(&format!("switch {} myimage:1", sb.pod_name)), "{calls:?}");
    assert!(calls.contains(&format!("switch {} pause", sb.pod_name)), "{calls:?}");
}

#[tokio::test]
async fn concurrent_claims_never_share_a_slot() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 50, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 50).await;
    let mut tasks = vec![];
    for _ in 0..200 {
        let e = Arc::clone(&r.engine);
        tasks.push(tokio::spawn(async move {
            let mut req = claim_req("p");
            req.wait = Some(false);
            e.create_sandbox(&AuthInfo::dev_admin(), req).await
        }));
    }
    let mut ok = vec![];
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(sb) => ok.push(sb.pod_name),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
                assert!(e.retry_after.is_some());
                conflicts += 1;
            }
        }
    }
    assert_eq!(ok.len(), 50);
    assert_eq!(conflicts, 150);
    ok.sort();
    ok.dedup();
    assert_eq!(ok.len(), 50, "a slot was handed out twice");
}

#[tokio::test]
async fn waiting_claim_gets_the_next_recycled_slot() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 1, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 1).await;
    let first = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    let e = Arc::clone(&r.engine);
    let waiter = tokio::spawn(async move { e.create_sandbox(&AuthInfo::dev_admin(), claim_req("p")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    r.engine.delete_sandbox(&auth, &first.sandbox_id).unwrap();
    let second = waiter.await.unwrap().unwrap();
    assert_eq!(second.pod_name, first.pod_name);
    // No slot left and no waiting allowed: 409 with the pool's counts.
    let mut req = claim_req("p");
    req.wait = Some(false);
    let err = r.engine.create_sandbox(&auth, req).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert_eq!(err.detail.unwrap()["running"], 1);
}

#[tokio::test]
async fn missing_pool_lists_available_pools() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("real", 0, PodCreationImagePolicy::IdleImage)).unwrap();
    let err = r.engine.create_sandbox(&auth, claim_req("nope")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert_eq!(err.detail.unwrap()["availablePools"][0]["name"], "real");
}

#[tokio::test]
async fn broken_image_shows_a_diagnostic() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    let mut req = pool_req("p", 1, PodCreationImagePolicy::PoolDefaultImage);
    req.template.as_mut().unwrap().containers[0].image = "broken:1".into();
    r.engine.create_pool(&auth, req).unwrap();
    for _ in 0..200 {
        let v = r.engine.get_pool(&auth, "p").unwrap();
        if let Some(d) = v.status.diagnostics.first() {
            assert_eq!(d.reason, "ImagePullBackOff");
            assert_eq!(v.status.counts.failed, 1);
            // The warning also went to the backend (Kubernetes publishes it as an Event).
            for _ in 0..100 {
                if r.backend
                    .calls
                    .lock()
                    .iter()
                    .any(|c| c.starts_with("warning default/p ") && c.ends_with(" ImagePullBackOff"))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no warning reached the backend: {:?}", r.backend.calls.lock());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no diagnostic");
}

#[tokio::test]
async fn dead_main_container_fails_the_sandbox() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 1, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 1).await;
    let sb = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    r.backend.kill_main(&sb.pod_name, 137, true);
    for _ in 0..200 {
        let cur = r.engine.get_sandbox(&auth, &sb.sandbox_id).unwrap();
        if cur.status == SandboxStatus::Failed {
            assert_eq!(cur.failure_reason.as_deref(), Some("OOMKilled"));
            assert_eq!(cur.exit_code, Some(137));
            wait_idle(&r, "p", 1).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sandbox never failed");
}

#[tokio::test]
async fn a_failure_the_backend_reports_is_the_sandbox_failure_reason() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 1, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 1).await;
    let sb = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    r.backend.fail_slot(&sb.pod_name, "Evicted", "the node was low on resource: memory");
    for _ in 0..200 {
        let cur = r.engine.get_sandbox(&auth, &sb.sandbox_id).unwrap();
        if cur.status == SandboxStatus::Failed {
            assert_eq!(cur.failure_reason.as_deref(), Some("Evicted"));
            let msg = cur.failure_message.unwrap_or_default();
            assert!(msg.contains("low on resource"), "{msg}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sandbox never failed");
}

#[tokio::test]
async fn restart_adopts_running_sandboxes_and_idle_slots() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 3, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 3).await;
    let sb = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    r.engine.stop();
    let creates_before = r.backend.calls.lock().iter().filter(|c| c.starts_with("create")).count();
    let r2 = rig_with(r.store.clone(), r.backend.clone()).await;
    let got = r2.engine.get_sandbox(&auth, &sb.sandbox_id).unwrap();
    assert_eq!(got.status, SandboxStatus::Running);
    r2.engine.exec(&auth, &sb.sandbox_id, serde_json::from_str(r#"{"command":"true"}"#).unwrap()).await.unwrap();
    wait_idle(&r2, "p", 2).await;
    let second = r2.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    assert_ne!(second.pod_name, sb.pod_name);
    let creates_after = r2.backend.calls.lock().iter().filter(|c| c.starts_with("create")).count();
    assert_eq!(creates_before, creates_after, "recovery must adopt slots, not recreate them");
    assert_eq!(r2.store.list_slots().unwrap().iter().filter(|s| s.phase == SlotPhase::Running).count(), 2);
}

#[tokio::test]
async fn scale_down_removes_idle_slots_only() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 3, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 3).await;
    let sb = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    r.engine.update_pool(&auth, "p", UpdatePoolRequest { replicas: Some(0), ..Default::default() }).unwrap();
    wait_idle(&r, "p", 0).await;
    assert_eq!(r.engine.get_sandbox(&auth, &sb.sandbox_id).unwrap().status, SandboxStatus::Running);
    assert_eq!(r.engine.get_pool(&auth, "p").unwrap().status.counts.running, 1);
}

#[tokio::test]
async fn client_gone_before_the_answer_cancels_the_sandbox() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 1, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 1).await;
    let first = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    // A second request waits for a slot; then its client disconnects (the handler future is dropped).
    let e = Arc::clone(&r.engine);
    let waiting = tokio::spawn(async move { e.create_sandbox(&AuthInfo::dev_admin(), claim_req("p")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    waiting.abort();
    let _ = waiting.await;
    // The slot comes back; the orphaned claim takes it, finds nobody to answer and cancels.
    r.engine.delete_sandbox(&auth, &first.sandbox_id).unwrap();
    for _ in 0..300 {
        let list = r
            .engine
            .list_sandboxes(&auth, &ListSandboxesQuery { status: Some("Canceled".into()), ..Default::default() })
            .unwrap();
        if let Some(sb) = list.items.first() {
            assert_eq!(sb.failure_reason.as_deref(), Some("ClientGone"));
            wait_idle(&r, "p", 1).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the abandoned claim was never canceled");
}

#[tokio::test]
async fn a_pool_deleted_and_recreated_under_the_same_name_warms_up_again() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 2, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 2).await;
    r.engine.delete_pool(&auth, "p").unwrap();
    for _ in 0..300 {
        if r.engine.get_pool(&auth, "p").is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.engine.create_pool(&auth, pool_req("p", 3, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 3).await;
    let sb = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running);
}

/// The last status the engine handed to the backend for pool `pool`, once `ok` accepts it.
async fn wait_published(
    r: &Rig,
    pool: &str,
    ok: impl Fn(&agentbox_core::backend::PoolStatusReport) -> bool,
) -> agentbox_core::backend::PoolStatusReport {
    for _ in 0..500 {
        let last = r.backend.published.lock().iter().rev().find(|(_, p, _)| p == pool).map(|(_, _, s)| s.clone());
        if let Some(s) = last.filter(|s| ok(s)) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no matching status of pool {pool} was published: {:?}", r.backend.published.lock());
}

#[tokio::test]
async fn the_pool_status_is_published_to_the_backend_only_when_it_changes() {
    use agentbox_core::reconcile::PoolPhase;
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    let view = r.engine.create_pool(&auth, pool_req("p", 2, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 2).await;
    let ready = wait_published(&r, "p", |s| s.counts.idle == 2 && s.counts.creating == 0).await;
    assert_eq!(ready.phase, PoolPhase::Ready);
    assert_eq!((ready.counts.running, ready.counts.failed, ready.counts.total()), (0, 0, 2));
    let kinds: Vec<(&str, bool)> = ready.conditions.iter().map(|c| (c.kind.as_str(), c.status)).collect();
    assert_eq!(kinds, vec![("Available", true), ("Scaling", false), ("Degraded", false)]);
    assert!(ready.diagnostics.is_empty());
    let (ns, _, _) = r.backend.published.lock().last().cloned().unwrap();
    assert_eq!(ns, view.namespace, "published under the pool's namespace");

    // Many reconcile passes (every 20 ms) later, nothing changed: nothing published again.
    let before = r.backend.published.lock().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.backend.published.lock().len(), before, "an unchanged status is not published again");

    let sb = r.engine.create_sandbox(&auth, claim_req("p")).await.unwrap();
    let claimed = wait_published(&r, "p", |s| s.counts.running == 1).await;
    assert_eq!(claimed.counts.idle, 1);
    let published = r.backend.published.lock().clone();
    assert!(published.windows(2).all(|w| w[0].2 != w[1].2), "no status is published twice in a row: {published:#?}");
    r.engine.delete_sandbox(&auth, &sb.sandbox_id).unwrap();
    wait_published(&r, "p", |s| s.counts.idle == 2 && s.counts.running == 0 && s.counts.stopping == 0).await;
}

#[tokio::test]
async fn a_pool_written_to_the_store_directly_warms_up_once_announced() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    r.engine.create_pool(&auth, pool_req("p", 1, PodCreationImagePolicy::PoolDefaultImage)).unwrap();
    wait_idle(&r, "p", 1).await;
    // What a watch of the cluster's objects does: a pool appears in the store, not through the engine.
    let mut outside = r.store.list_pools(None).unwrap().into_iter().find(|p| p.name == "p").unwrap();
    outside.name = "outside".into();
    outside.spec.replicas = 2;
    outside.resource_version = 0;
    r.store.create_pool(&outside).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = r.engine.get_pool(&auth, "outside").unwrap().status.counts;
    assert_eq!(before.idle + before.creating, 0, "no reconciler runs for a pool the engine was not told about");
    r.engine.pool_changed(&outside.namespace, "outside");
    wait_idle(&r, "outside", 2).await;
    // Announcing a deleted pool is harmless.
    r.engine.pool_changed(&outside.namespace, "never-existed");
}
