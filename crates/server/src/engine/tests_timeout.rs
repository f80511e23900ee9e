//! Idle timeouts and activity, driven by calling the sweep directly (the background sweep is set
//! to an hour so it never interferes).

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::duration::WireDuration;
use agentbox_core::error::ErrorKind;
use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_core::model::{ContainerSpec, PodCreationImagePolicy, SandboxSpec, SandboxStatus};

use super::*;
use crate::auth::AuthInfo;

async fn engine_with_pool(replicas: u32) -> Arc<Engine> {
    let cfg = EngineConfig {
        reconcile_interval: Duration::from_millis(20),
        idle_sweep_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(FakeBackend::new()), cfg);
    engine.start().await.unwrap();
    let auth = AuthInfo::dev_admin();
    let req = CreatePoolRequest {
        name: "p".into(),
        template: Some(SandboxSpec {
            idle_image: "pause".into(),
            idle_command: vec![],
            containers: vec![ContainerSpec { name: "main".into(), image: "host".into(), ..Default::default() }],
            runtimes: vec![],
            runtime_class: Default::default(),
            egress: true,
        }),
        replicas: Some(replicas),
        pod_creation_image_policy: Some(PodCreationImagePolicy::PoolDefaultImage),
        ..Default::default()
    };
    engine.create_pool(&auth, req).unwrap();
    for _ in 0..500 {
        if engine.get_pool(&auth, "p").unwrap().status.counts.idle == replicas {
            return engine;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool never warmed up");
}

async fn claim(e: &Arc<Engine>, idle: Option<u64>) -> String {
    let req = CreateSandboxRequest {
        pool_name: "p".into(),
        idle_timeout: idle.map(WireDuration::from_secs),
        ..Default::default()
    };
    e.create_sandbox(&AuthInfo::dev_admin(), req).await.unwrap().sandbox_id
}

fn status(e: &Engine, id: &str) -> SandboxStatus {
    e.get_sandbox(&AuthInfo::dev_admin(), id).unwrap().status
}

#[tokio::test]
async fn sweep_releases_idle_sandboxes_and_touch_keeps_them() {
    let e = engine_with_pool(3).await;
    let idle = claim(&e, Some(1)).await;
    let touched = claim(&e, Some(1)).await;
    let forever = claim(&e, None).await;
    e.sweep_idle();
    assert_eq!(status(&e, &idle), SandboxStatus::Running, "active at claim time");
    tokio::time::sleep(Duration::from_millis(700)).await;
    e.touch(&touched);
    tokio::time::sleep(Duration::from_millis(400)).await;
    e.sweep_idle();
    let sb = e.get_sandbox(&AuthInfo::dev_admin(), &idle).unwrap();
    assert!(matches!(sb.status, SandboxStatus::Stopping | SandboxStatus::Released), "{:?}", sb.status);
    assert_eq!(sb.stop_reason.or(Some(sb.status)), Some(SandboxStatus::Released));
    let detail = sb.status_detail.expect("status detail");
    assert_eq!(detail.reason.as_deref(), Some("IdleTimeout"));
    assert_eq!(status(&e, &touched), SandboxStatus::Running, "touched 400 ms ago");
    assert_eq!(status(&e, &forever), SandboxStatus::Running, "no idle timeout");
    tokio::time::sleep(Duration::from_millis(700)).await;
    e.sweep_idle();
    assert_ne!(status(&e, &touched), SandboxStatus::Running, "idle since the touch");
    assert_eq!(status(&e, &forever), SandboxStatus::Running);
}

#[tokio::test]
async fn activity_restarts_when_the_sweep_first_sees_a_sandbox() {
    let e = engine_with_pool(1).await;
    let id = claim(&e, Some(1)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // As after a restart: this process has no activity record for the sandbox.
    e.activity.last.lock().clear();
    e.sweep_idle();
    assert_eq!(status(&e, &id), SandboxStatus::Running, "the clock starts at the first sweep, not at claim time");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    e.sweep_idle();
    assert_ne!(status(&e, &id), SandboxStatus::Running);
}

#[tokio::test]
async fn set_idle_timeout_updates_clears_and_refuses_ended_sandboxes() {
    let e = engine_with_pool(1).await;
    let auth = AuthInfo::dev_admin();
    let id = claim(&e, Some(1)).await;
    let sb = e.set_idle_timeout(&auth, &id, Some(Duration::from_millis(300))).unwrap();
    assert_eq!(sb.idle_timeout_seconds, Some(1), "sub-second rounds up");
    let sb = e.set_idle_timeout(&auth, &id, None).unwrap();
    assert_eq!(sb.idle_timeout_seconds, None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    e.sweep_idle();
    assert_eq!(status(&e, &id), SandboxStatus::Running, "timeout removed");
    assert_eq!(e.set_idle_timeout(&auth, "nope", None).unwrap_err().kind, ErrorKind::NotFound);
    e.delete_sandbox(&auth, &id).unwrap();
    assert_eq!(e.set_idle_timeout(&auth, &id, None).unwrap_err().kind, ErrorKind::Conflict);
}
