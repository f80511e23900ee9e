//! The autoscaler, the scale-down protection window, pool events and diagnostics, against the
//! in-memory store and the fake backend (reconcile every 20 ms).

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::duration::WireDuration;
use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_core::model::{
    AutoscalingSpec, ContainerSpec, PodCreationImagePolicy, SandboxSpec, SandboxStatus, ScaleDownPolicy, ScaleUpMode,
    ScaleUpPolicy, SlotPhase,
};
use agentbox_core::reconcile::PoolPhase;
use agentbox_core::store::Store;

use super::*;
use crate::auth::AuthInfo;

struct Rig {
    engine: Arc<Engine>,
    store: Arc<MemoryStore>,
}

async fn rig() -> Rig {
    let store = Arc::new(MemoryStore::new());
    let cfg = EngineConfig { reconcile_interval: Duration::from_millis(20), ..Default::default() };
    let engine = Engine::new(store.clone(), Arc::new(FakeBackend::new()), cfg);
    engine.start().await.unwrap();
    Rig { engine, store }
}

fn policy(up: ScaleUpPolicy, down: ScaleDownPolicy) -> AutoscalingSpec {
    AutoscalingSpec { enabled: true, scale_up_policy: up, scale_down_policy: down }
}

fn pool_req(image: &str, replicas: u32, min: u32, max: u32, autoscaling: Option<AutoscalingSpec>) -> CreatePoolRequest {
    CreatePoolRequest {
        name: "p".into(),
        template: Some(SandboxSpec {
            idle_image: "pause".into(),
            idle_command: vec![],
            containers: vec![ContainerSpec { name: "main".into(), image: image.into(), ..Default::default() }],
            runtimes: vec![],
            runtime_class: Default::default(),
            egress: true,
        }),
        replicas: Some(replicas),
        min_replicas: Some(min),
        max_replicas: Some(max),
        pod_creation_image_policy: Some(PodCreationImagePolicy::PoolDefaultImage),
        autoscaling,
        ..Default::default()
    }
}

fn claim_req() -> CreateSandboxRequest {
    CreateSandboxRequest {
        pool_name: "p".into(),
        startup_timeout: Some(WireDuration::from_secs(10)),
        ..Default::default()
    }
}

fn view(r: &Rig) -> PoolView {
    r.engine.get_pool(&AuthInfo::dev_admin(), "p").unwrap()
}

fn has_event(v: &PoolView, reason: &str) -> bool {
    v.status.events.iter().any(|e| e.reason == reason)
}

/// Poll the pool view every 10 ms until `f` holds, or panic after `secs` with the status.
async fn wait_until(r: &Rig, what: &str, secs: u64, f: impl Fn(&PoolView) -> bool) -> PoolView {
    for _ in 0..(secs * 100) {
        let v = view(r);
        if f(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v = view(r);
    panic!("timed out waiting for {what}: replicas {} status {:#?}", v.spec.replicas, v.status);
}

#[tokio::test]
async fn waiting_claims_scale_the_pool_up_within_max() {
    let r = rig().await;
    let up = ScaleUpPolicy { mode: ScaleUpMode::Aggressive, cooldown_seconds: 0, idle_threshold_seconds: 0 };
    r.engine
        .create_pool(&AuthInfo::dev_admin(), pool_req("host", 1, 1, 4, Some(policy(up, ScaleDownPolicy::default()))))
        .unwrap();
    wait_until(&r, "one idle slot", 5, |v| v.status.counts.idle == 1).await;
    let mut tasks = vec![];
    for _ in 0..4 {
        let e = Arc::clone(&r.engine);
        tasks.push(tokio::spawn(async move { e.create_sandbox(&AuthInfo::dev_admin(), claim_req()).await }));
    }
    let mut pods = vec![];
    for t in tasks {
        let sb = t.await.unwrap().expect("every claim is served once the pool grew");
        assert_eq!(sb.status, SandboxStatus::Running);
        pods.push(sb.pod_name);
    }
    pods.sort();
    pods.dedup();
    assert_eq!(pods.len(), 4, "four distinct slots");
    let v = view(&r);
    assert_eq!(v.spec.replicas, 4, "1 -> 2 -> 4 (Aggressive), clamped at max 4");
    let stored = r.store.get_pool("default", "p").unwrap().unwrap();
    assert_eq!(stored.spec.replicas, 4, "the new size is persisted");
    let ups: Vec<_> = v.status.events.iter().filter(|e| e.reason == "ScaledUp").collect();
    assert!(!ups.is_empty(), "{:#?}", v.status.events);
    assert!(ups.iter().any(|e| e.message.contains("-> 4")), "{ups:#?}");
    assert!(ups.iter().all(|e| e.kind == PoolEventType::Normal));
    // At max with everybody served: a fifth claim waits and times out instead of growing the pool.
    let mut req = claim_req();
    req.startup_timeout = Some(WireDuration(Duration::from_millis(300)));
    assert!(r.engine.create_sandbox(&AuthInfo::dev_admin(), req).await.is_err());
    assert_eq!(view(&r).spec.replicas, 4);
}

#[tokio::test]
async fn idle_pool_scales_down_to_min_and_never_touches_a_running_sandbox() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    let down = ScaleDownPolicy { idle_timeout_seconds: 1, stabilization_seconds: 0, protection_window_seconds: 0 };
    r.engine.create_pool(&auth, pool_req("host", 4, 1, 4, Some(policy(ScaleUpPolicy::default(), down)))).unwrap();
    wait_until(&r, "four idle slots", 5, |v| v.status.counts.idle == 4).await;
    let sb = r.engine.create_sandbox(&auth, claim_req()).await.unwrap();
    let v = wait_until(&r, "scale-down to min", 10, |v| v.spec.replicas == 1 && v.status.counts.total() == 1).await;
    assert_eq!(v.status.counts.running, 1);
    assert_eq!(v.status.phase, PoolPhase::Ready);
    let got = r.engine.get_sandbox(&auth, &sb.sandbox_id).unwrap();
    assert_eq!(got.status, SandboxStatus::Running, "the running sandbox is never removed");
    assert!(r.store.get_slot(&sb.pod_name).unwrap().is_some());
    let downs = v.status.events.iter().filter(|e| e.reason == "ScaledDown").map(|e| e.count).sum::<u32>();
    assert_eq!(downs, 3, "one step at a time, 4 -> 1: {:#?}", v.status.events);
    let removed = v.status.events.iter().filter(|e| e.reason == "ScaleDownRemoved").count();
    assert_eq!(removed, 3, "{:#?}", v.status.events);
    assert_eq!(r.store.get_pool("default", "p").unwrap().unwrap().spec.replicas, 1);
    // Never below min, even with the only slot idle for long.
    r.engine.delete_sandbox(&auth, &sb.sandbox_id).unwrap();
    wait_until(&r, "the slot back idle", 5, |v| v.status.counts.idle == 1).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let v = view(&r);
    assert_eq!((v.spec.replicas, v.status.counts.idle), (1, 1));
}

#[tokio::test]
async fn a_claim_during_the_protection_window_keeps_the_slot() {
    let r = rig().await;
    let auth = AuthInfo::dev_admin();
    // Two slots with distinct idle ages: A first, B later.
    r.engine.create_pool(&auth, pool_req("host", 1, 1, 2, None)).unwrap();
    wait_until(&r, "slot A idle", 5, |v| v.status.counts.idle == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let up = |replicas: Option<u32>, autoscaling: Option<AutoscalingSpec>| UpdatePoolRequest {
        replicas,
        autoscaling,
        ..Default::default()
    };
    r.engine.update_pool(&auth, "p", up(Some(2), None)).unwrap();
    wait_until(&r, "slot B idle", 5, |v| v.status.counts.idle == 2).await;
    let down = ScaleDownPolicy { idle_timeout_seconds: 1, stabilization_seconds: 3600, protection_window_seconds: 2 };
    let no_up = ScaleUpPolicy { idle_threshold_seconds: 0, ..Default::default() };
    r.engine.update_pool(&auth, "p", up(None, Some(policy(no_up, down)))).unwrap();

    let v = wait_until(&r, "a slot picked for scale-down", 5, |v| has_event(v, "ScaleDownPending")).await;
    assert_eq!(v.spec.replicas, 1);
    assert_eq!(v.status.phase, PoolPhase::ScalingDown);
    assert_eq!(v.status.counts.idle, 2, "the picked slot is still idle and claimable");
    let picked = v.status.events.iter().find(|e| e.reason == "ScaleDownPending").unwrap().pod_name.clone().unwrap();

    let sb = r.engine.create_sandbox(&auth, claim_req()).await.unwrap();
    assert_eq!(sb.pod_name, picked, "the oldest idle slot, the one being removed, is claimed first");
    let v = wait_until(&r, "the removal canceled", 5, |v| has_event(v, "ScaleDownCanceled")).await;
    let cancel = v.status.events.iter().find(|e| e.reason == "ScaleDownCanceled").unwrap();
    assert_eq!(cancel.pod_name.as_deref(), Some(picked.as_str()));

    // The other idle slot is now the surplus one: removed after its own window; no replacement.
    let v = wait_until(&r, "the other slot removed", 6, |v| v.status.counts.total() == 1).await;
    assert_eq!(v.spec.replicas, 1, "replicas stay lowered");
    let removed = v.status.events.iter().find(|e| e.reason == "ScaleDownRemoved").unwrap();
    assert_ne!(removed.pod_name.as_deref(), Some(picked.as_str()));
    assert_eq!(r.engine.get_sandbox(&auth, &sb.sandbox_id).unwrap().status, SandboxStatus::Running);
    assert_eq!(r.store.get_slot(&picked).unwrap().unwrap().phase, SlotPhase::Running);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(view(&r).status.counts.total(), 1, "no slot is created to replace it");
}

#[tokio::test]
async fn slots_that_cannot_become_idle_degrade_the_pool_with_a_diagnostic() {
    let r = rig().await;
    r.engine.create_pool(&AuthInfo::dev_admin(), pool_req("broken/image:1", 1, 1, 1, None)).unwrap();
    let v = wait_until(&r, "Degraded", 5, |v| v.status.phase == PoolPhase::Degraded).await;
    assert_eq!(v.status.counts.failed, 1);
    let degraded = v.status.conditions.iter().find(|c| c.kind == "Degraded").unwrap();
    assert!(degraded.status);
    assert_eq!(degraded.reason, "ImagePullBackOff");
    assert!(degraded.message.contains("broken/image:1"), "{degraded:?}");
    let available = v.status.conditions.iter().find(|c| c.kind == "Available").unwrap();
    assert_eq!((available.status, available.reason.as_str()), (false, "NoIdleSlotsAvailable"));
    let d = &v.status.diagnostics[0];
    assert_eq!((d.phase, d.reason.as_str()), (SlotPhase::Failed, "ImagePullBackOff"));
    assert!(d.message.contains("broken/image:1"), "{d:?}");
    assert_eq!(d.events.len(), 1, "{d:?}");
    assert_eq!(d.events[0].reason, "ImagePullBackOff");
    assert!(d.events[0].message.contains("broken/image:1"));
    let ev = v.status.events.iter().find(|e| e.reason == "ImagePullBackOff").unwrap();
    assert_eq!((ev.kind, ev.pod_name.as_deref()), (PoolEventType::Warning, Some(d.pod_name.as_str())));
}

#[tokio::test]
async fn healthy_pool_conditions() {
    let r = rig().await;
    r.engine.create_pool(&AuthInfo::dev_admin(), pool_req("host", 1, 1, 1, None)).unwrap();
    let v = wait_until(&r, "Ready", 5, |v| v.status.phase == PoolPhase::Ready).await;
    let c = |k: &str| v.status.conditions.iter().find(|c| c.kind == k).unwrap().clone();
    assert_eq!((c("Available").status, c("Available").reason.as_str()), (true, "IdleSlotsAvailable"));
    assert_eq!((c("Scaling").status, c("Scaling").reason.as_str()), (false, "ReplicasReady"));
    assert_eq!((c("Degraded").status, c("Degraded").reason.as_str()), (false, "AllSlotsHealthy"));
    assert!(v.status.diagnostics.is_empty());
}
