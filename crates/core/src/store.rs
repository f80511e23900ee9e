//! The store trait: durable state (templates, pools, slots, sandboxes and their history).
//!
//! Calls are synchronous and short (one small transaction each); implementations must make every
//! write durable against a crash of the server process before returning. The core relies on
//! [`Store::claim`] being atomic: it is the point after which a slot belongs to a sandbox.

use std::collections::BTreeMap;

use crate::identity::{ApiKeyRecord, QuotaRecord};
use crate::model::{Pool, Sandbox, SandboxStatus, Slot, SlotPhase, Template};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object exists already, or a compare-and-set saw another version/phase.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("store backend error: {0}")]
    Backend(String),
}

/// Filters for listing sandboxes (live and history). Results are newest first (claimedAt desc,
/// then sandboxId).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFilter {
    pub namespace: Option<String>,
    pub pool: Option<String>,
    /// Empty = any status.
    pub statuses: Vec<SandboxStatus>,
    pub team: Option<String>,
    pub user: Option<String>,
    /// 0 = no limit.
    pub limit: u32,
    pub offset: u32,
}

impl SandboxFilter {
    /// Does `s` pass every filter except paging?
    pub fn matches(&self, s: &Sandbox) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == s.namespace)
            && self.pool.as_deref().is_none_or(|p| p == s.pool_name)
            && (self.statuses.is_empty() || self.statuses.contains(&s.status))
            && self.team.as_deref().is_none_or(|t| t == s.team)
            && self.user.as_deref().is_none_or(|u| u == s.user)
    }
}

pub trait Store: Send + Sync + 'static {
    // --- templates -------------------------------------------------------------------------
    /// Insert a new template; `Conflict` if the name exists.
    fn create_template(&self, t: &Template) -> Result<(), StoreError>;
    /// Replace a template if its stored resourceVersion equals `expected_rv` (`Conflict` otherwise,
    /// `NotFound` if missing). The caller sets `t.resource_version` to the new value.
    fn update_template(&self, t: &Template, expected_rv: u64) -> Result<(), StoreError>;
    fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError>;
    /// All templates, sorted by name.
    fn list_templates(&self) -> Result<Vec<Template>, StoreError>;
    /// `true` when something was deleted.
    fn delete_template(&self, name: &str) -> Result<bool, StoreError>;

    // --- pools -----------------------------------------------------------------------------
    /// Insert a new pool; `Conflict` if (namespace, name) exists.
    fn create_pool(&self, p: &Pool) -> Result<(), StoreError>;
    /// Replace a pool if its stored resourceVersion equals `expected_rv`.
    fn update_pool(&self, p: &Pool, expected_rv: u64) -> Result<(), StoreError>;
    fn get_pool(&self, namespace: &str, name: &str) -> Result<Option<Pool>, StoreError>;
    /// Pools of one namespace (or all), sorted by namespace then name.
    fn list_pools(&self, namespace: Option<&str>) -> Result<Vec<Pool>, StoreError>;
    fn delete_pool(&self, namespace: &str, name: &str) -> Result<bool, StoreError>;

    // --- slots -----------------------------------------------------------------------------
    /// Insert or replace a slot.
    fn put_slot(&self, s: &Slot) -> Result<(), StoreError>;
    fn get_slot(&self, slot_id: &str) -> Result<Option<Slot>, StoreError>;
    /// Every slot, sorted by slot id.
    fn list_slots(&self) -> Result<Vec<Slot>, StoreError>;
    fn delete_slot(&self, slot_id: &str) -> Result<(), StoreError>;

    // --- sandboxes -------------------------------------------------------------------------
    /// Atomically: if the stored slot is in phase `expected`, write `slot` (the slot after the
    /// claim) and insert `sandbox`. `Conflict` if the phase differs or the sandbox id exists,
    /// `NotFound` if the slot is missing. This is the claim's commit point.
    fn claim(&self, slot: &Slot, expected: SlotPhase, sandbox: &Sandbox) -> Result<(), StoreError>;
    /// Atomically write a slot and a sandbox (any later transition).
    fn put_slot_and_sandbox(&self, slot: &Slot, sandbox: &Sandbox) -> Result<(), StoreError>;
    /// Insert or replace one sandbox record.
    fn put_sandbox(&self, s: &Sandbox) -> Result<(), StoreError>;
    fn get_sandbox(&self, sandbox_id: &str) -> Result<Option<Sandbox>, StoreError>;
    /// Matching sandboxes (paged per `filter.limit`/`offset`) and the total count before paging.
    fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<(Vec<Sandbox>, u64), StoreError>;
    /// Counts by status for a namespace (or all).
    fn count_sandboxes(&self, namespace: Option<&str>) -> Result<BTreeMap<SandboxStatus, u64>, StoreError>;
    /// Delete terminal records whose terminatedAt (or claimedAt) is older than `before` (RFC 3339).
    /// Returns how many were removed.
    fn prune_history(&self, before: &str) -> Result<u64, StoreError>;

    // --- API keys --------------------------------------------------------------------------
    /// Insert a key; `Conflict` if its key id (derived from the token hash) exists.
    fn create_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError>;
    /// Insert or replace a key.
    fn put_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError>;
    fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// The key whose token hash is `token_hash` (full 64-hex hash).
    fn find_api_key_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Every key, sorted by team, user, issuedAt, key id.
    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    fn delete_api_key(&self, key_id: &str) -> Result<bool, StoreError>;

    // --- quotas ----------------------------------------------------------------------------
    /// Insert a quota; `Conflict` if the name exists.
    fn create_quota(&self, q: &QuotaRecord) -> Result<(), StoreError>;
    /// Replace a quota if its stored resourceVersion equals `expected_rv`.
    fn update_quota(&self, q: &QuotaRecord, expected_rv: u64) -> Result<(), StoreError>;
    fn get_quota(&self, name: &str) -> Result<Option<QuotaRecord>, StoreError>;
    /// Every quota, sorted by quota URL then name.
    fn list_quotas(&self) -> Result<Vec<QuotaRecord>, StoreError>;
    fn delete_quota(&self, name: &str) -> Result<bool, StoreError>;
}

#[cfg(any(test, feature = "fake"))]
pub mod conformance {
    //! Behaviour every [`Store`] must show; run by the fake's tests and by each implementation.
    use super::*;
    use crate::model::*;

    pub fn template(name: &str, version: &str) -> Template {
        Template {
            name: name.into(),
            spec: TemplateSpec {
                version: version.into(),
                description: "d".into(),
                docs: String::new(),
                visibility: Visibility::default(),
                sandbox: SandboxSpec {
                    idle_image: "pause".into(),
                    idle_command: vec![],
                    containers: vec![ContainerSpec { name: "main".into(), image: "host".into(), ..Default::default() }],
                    runtimes: vec![],
                    runtime_class: RuntimeClass::Libcontainer,
                    egress: true,
                },
            },
            resource_version: 1,
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
        }
    }

    pub fn pool(ns: &str, name: &str) -> Pool {
        Pool {
            name: name.into(),
            namespace: ns.into(),
            team: "t".into(),
            user: "u".into(),
            spec: PoolSpec {
                replicas: 2,
                min_replicas: None,
                max_replicas: None,
                template_name: Some("tpl".into()),
                template: template("tpl", "1.0.0").spec.sandbox,
                default_startup_timeout: None,
                default_idle_timeout: None,
                pod_creation_image_policy: PodCreationImagePolicy::IdleImage,
                autoscaling: None,
                quota_url: None,
                reservation: None,
            },
            overrides: PoolOverrides::default(),
            labels: Default::default(),
            annotations: Default::default(),
            template_version: Some("1.0.0".into()),
            created_at: now_rfc3339(),
            resource_version: 1,
            deleting: false,
        }
    }

    pub fn slot(id: &str, phase: SlotPhase) -> Slot {
        Slot {
            slot_id: id.into(),
            pool: "p".into(),
            namespace: "default".into(),
            phase,
            sandbox_id: None,
            images: [("main".to_string(), "pause".to_string())].into(),
            ip: Some("10.0.0.2".into()),
            created_at: now_rfc3339(),
            idle_since: Some(now_rfc3339()),
            failure_reason: None,
            failure_message: None,
            spec_hash: None,
        }
    }

    pub fn sandbox(id: &str, slot: &str, status: SandboxStatus, claimed_at: &str) -> Sandbox {
        Sandbox {
            sandbox_id: id.into(),
            namespace: "default".into(),
            team: "t".into(),
            user: "u".into(),
            pool_name: "p".into(),
            pod_name: slot.into(),
            metadata: [("k".to_string(), "v".to_string())].into(),
            labels: Default::default(),
            annotations: Default::default(),
            status,
            container_images: Default::default(),
            container_id: None,
            ip: None,
            cpu: None,
            memory: None,
            claimed_at: claimed_at.into(),
            started_at: None,
            terminated_at: None,
            recycled_at: None,
            failure_reason: None,
            exit_code: None,
            failure_message: None,
            idle_timeout_seconds: None,
            startup_timeout_seconds: None,
            last_active_at: None,
            stop_reason: None,
            duration_seconds: None,
            status_detail: None,
            endpoints: Default::default(),
            post_start_hooks: Default::default(),
        }
    }

    /// Run every check against a fresh, empty store.
    pub fn run_all(store: &dyn Store) {
        templates(store);
        pools(store);
        claims(store);
        listing(store);
        api_keys(store);
        quotas(store);
    }

    pub fn api_key(hash_seed: char, team: &str, user: &str, issued_at: &str) -> crate::identity::ApiKeyRecord {
        let token_hash: String = std::iter::repeat_n(hash_seed, 64).collect();
        crate::identity::ApiKeyRecord {
            key_id: crate::identity::ApiKeyRecord::id_for_hash(&token_hash),
            token_hash,
            namespace: "default".into(),
            role: crate::identity::Role::Tenant,
            user: user.into(),
            team: team.into(),
            quota_url: String::new(),
            description: "d".into(),
            issued_at: issued_at.into(),
            expires_at: None,
            sync_source: String::new(),
            sealed_token: Some("00ff".into()),
        }
    }

    fn api_keys(store: &dyn Store) {
        let a = api_key('a', "t2", "u", "2026-01-01T00:00:00Z");
        let b = api_key('b', "t1", "u", "2026-01-02T00:00:00Z");
        let c = api_key('c', "t1", "u", "2026-01-01T00:00:00Z");
        for k in [&a, &b, &c] {
            store.create_api_key(k).unwrap();
        }
        assert!(matches!(store.create_api_key(&a), Err(StoreError::Conflict(_))));
        let ids: Vec<_> = store.list_api_keys().unwrap().into_iter().map(|k| k.key_id).collect();
        assert_eq!(ids, [c.key_id.clone(), b.key_id.clone(), a.key_id.clone()]);
        assert_eq!(store.find_api_key_by_hash(&b.token_hash).unwrap().as_ref(), Some(&b));
        assert!(store.find_api_key_by_hash(&"d".repeat(64)).unwrap().is_none());
        assert_eq!(store.get_api_key(&c.key_id).unwrap().as_ref(), Some(&c));
        let mut a2 = a.clone();
        a2.sync_source = "global".into();
        store.put_api_key(&a2).unwrap();
        assert_eq!(store.get_api_key(&a.key_id).unwrap().unwrap().sync_source, "global");
        assert!(store.delete_api_key(&a.key_id).unwrap());
        assert!(!store.delete_api_key(&a.key_id).unwrap());
        assert!(store.find_api_key_by_hash(&a.token_hash).unwrap().is_none());
    }

    pub fn quota(name: &str, url: &str) -> crate::identity::QuotaRecord {
        crate::identity::QuotaRecord {
            name: name.into(),
            quota_url: url.into(),
            queue: Default::default(),
            team: "t".into(),
            user: String::new(),
            resources: crate::identity::QuotaResources {
                cpu: Some("4".into()),
                memory: Some("8Gi".into()),
                sandboxes: Some(10),
            },
            description: String::new(),
            created_at: "2026-01-01T00:00:00Z".into(),
            resource_version: 1,
            labels: Default::default(),
        }
    }

    fn quotas(store: &dyn Store) {
        store.create_quota(&quota("q2", "org.b")).unwrap();
        store.create_quota(&quota("q1", "org.a")).unwrap();
        assert!(matches!(store.create_quota(&quota("q1", "org.x")), Err(StoreError::Conflict(_))));
        let names: Vec<_> = store.list_quotas().unwrap().into_iter().map(|q| q.name).collect();
        assert_eq!(names, ["q1", "q2"]);
        let mut q = store.get_quota("q1").unwrap().unwrap();
        q.resource_version = 2;
        q.resources.sandboxes = Some(20);
        store.update_quota(&q, 1).unwrap();
        assert!(matches!(store.update_quota(&q, 1), Err(StoreError::Conflict(_))));
        assert!(matches!(store.update_quota(&quota("nope", "x"), 1), Err(StoreError::NotFound(_))));
        assert_eq!(store.get_quota("q1").unwrap().unwrap().resources.sandboxes, Some(20));
        assert!(store.delete_quota("q1").unwrap());
        assert!(!store.delete_quota("q1").unwrap());
        assert!(store.get_quota("q1").unwrap().is_none());
    }

    fn templates(store: &dyn Store) {
        let t = template("a", "1.0.0");
        store.create_template(&t).unwrap();
        assert!(matches!(store.create_template(&t), Err(StoreError::Conflict(_))));
        let mut t2 = t.clone();
        t2.spec.version = "1.1.0".into();
        t2.resource_version = 2;
        store.update_template(&t2, 1).unwrap();
        assert!(matches!(store.update_template(&t2, 1), Err(StoreError::Conflict(_))));
        assert_eq!(store.get_template("a").unwrap().unwrap().spec.version, "1.1.0");
        assert!(matches!(store.update_template(&template("zz", "1.0.0"), 1), Err(StoreError::NotFound(_))));
        store.create_template(&template("b", "1.0.0")).unwrap();
        let names: Vec<_> = store.list_templates().unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(store.delete_template("a").unwrap());
        assert!(!store.delete_template("a").unwrap());
        assert!(store.get_template("a").unwrap().is_none());
    }

    fn pools(store: &dyn Store) {
        let p = pool("ns1", "p1");
        store.create_pool(&p).unwrap();
        assert!(matches!(store.create_pool(&p), Err(StoreError::Conflict(_))));
        store.create_pool(&pool("ns2", "p1")).unwrap();
        let mut p2 = p.clone();
        p2.spec.replicas = 5;
        p2.resource_version = 2;
        store.update_pool(&p2, 1).unwrap();
        assert!(matches!(store.update_pool(&p2, 1), Err(StoreError::Conflict(_))));
        assert_eq!(store.get_pool("ns1", "p1").unwrap().unwrap().spec.replicas, 5);
        assert_eq!(store.list_pools(Some("ns1")).unwrap().len(), 1);
        assert_eq!(store.list_pools(None).unwrap().len(), 2);
        assert!(store.delete_pool("ns2", "p1").unwrap());
        assert!(store.get_pool("ns2", "p1").unwrap().is_none());
    }

    fn claims(store: &dyn Store) {
        let s = slot("p-1", SlotPhase::Idle);
        store.put_slot(&s).unwrap();
        let mut claimed = s.clone();
        claimed.phase = SlotPhase::Starting;
        claimed.sandbox_id = Some("sb1".into());
        let sb = sandbox("sb1", "p-1", SandboxStatus::Starting, &now_rfc3339());
        store.claim(&claimed, SlotPhase::Idle, &sb).unwrap();
        // A second claim of the same slot must fail: the phase is no longer idle.
        let sb2 = sandbox("sb2", "p-1", SandboxStatus::Starting, &now_rfc3339());
        assert!(matches!(store.claim(&claimed, SlotPhase::Idle, &sb2), Err(StoreError::Conflict(_))));
        assert!(store.get_sandbox("sb2").unwrap().is_none());
        assert!(matches!(
            store.claim(&slot("nope", SlotPhase::Starting), SlotPhase::Idle, &sb2),
            Err(StoreError::NotFound(_))
        ));
        let got = store.get_slot("p-1").unwrap().unwrap();
        assert_eq!(got.phase, SlotPhase::Starting);
        assert_eq!(got.sandbox_id.as_deref(), Some("sb1"));
        let mut running = got.clone();
        running.phase = SlotPhase::Running;
        let mut sb_run = store.get_sandbox("sb1").unwrap().unwrap();
        assert_eq!(sb_run.metadata.get("k").map(String::as_str), Some("v"));
        sb_run.status = SandboxStatus::Running;
        store.put_slot_and_sandbox(&running, &sb_run).unwrap();
        assert_eq!(store.get_sandbox("sb1").unwrap().unwrap().status, SandboxStatus::Running);
        assert_eq!(store.list_slots().unwrap().len(), 1);
        store.delete_slot("p-1").unwrap();
        assert!(store.get_slot("p-1").unwrap().is_none());
    }

    fn listing(store: &dyn Store) {
        for i in 0..5 {
            let mut s =
                sandbox(&format!("l{i}"), "x", SandboxStatus::Completed, &format!("2026-01-01T00:00:0{i}.000Z"));
            s.pool_name = if i % 2 == 0 { "even".into() } else { "odd".into() };
            s.terminated_at = Some(format!("2026-01-01T00:00:0{i}.000Z"));
            store.put_sandbox(&s).unwrap();
        }
        let f = SandboxFilter { pool: Some("even".into()), limit: 2, ..Default::default() };
        let (items, total) = store.list_sandboxes(&f).unwrap();
        assert_eq!(total, 3);
        let ids: Vec<_> = items.iter().map(|s| s.sandbox_id.as_str()).collect();
        assert_eq!(ids, ["l4", "l2"]);
        let f = SandboxFilter { pool: Some("even".into()), limit: 2, offset: 2, ..Default::default() };
        assert_eq!(store.list_sandboxes(&f).unwrap().0[0].sandbox_id, "l0");
        let f = SandboxFilter { statuses: vec![SandboxStatus::Running], ..Default::default() };
        let (running, _) = store.list_sandboxes(&f).unwrap();
        assert!(running.iter().all(|s| s.status == SandboxStatus::Running));
        let counts = store.count_sandboxes(Some("default")).unwrap();
        assert_eq!(counts.get(&SandboxStatus::Completed), Some(&5));
        assert_eq!(store.prune_history("2026-01-01T00:00:02.500Z").unwrap(), 3);
        assert!(store.get_sandbox("l1").unwrap().is_none());
        assert!(store.get_sandbox("l3").unwrap().is_some());
        // Live sandboxes are never pruned.
        assert!(store.get_sandbox("sb1").unwrap().is_some());
    }
}
