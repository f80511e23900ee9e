//! The store in Kubernetes mode ([`KubeStore`]) against a fake API server that keeps state
//! (`tests/fake_cluster`): templates and pools written to the cluster first and then to the cache,
//! conflicts and an unreachable API server, the start-up sync (import or cluster wins), watched
//! changes (`kubectl apply` / `scale` / `delete`) reaching the cache, own writes coming back
//! through the watch changing nothing, API keys in Secrets, and the generic store contract.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentbox_backend_k8s::labels::POOL_FINALIZER;
use agentbox_backend_k8s::store::PoolChange;
use agentbox_backend_k8s::{KubeStore, KubeStoreConfig, LocalOnly};
use agentbox_core::fake_store::MemoryStore;
use agentbox_core::identity::{ApiKeyRecord, QuotaRecord};
use agentbox_core::model::{Pool, Sandbox, SandboxStatus, Slot, SlotPhase, Template};
use agentbox_core::store::conformance::{api_key, pool, slot, template};
use agentbox_core::store::{SandboxFilter, Store, StoreError};
use serde_json::{Value, json};

mod fake_cluster;
use fake_cluster::{FakeCluster, Fault};

const TEMPLATES: &str = "/apis/agentbox.dev/v1alpha1/sandboxtemplates";
const SECRETS: &str = "/api/v1/namespaces/agentbox-system/secrets";

fn pools_in(ns: &str) -> String {
    format!("/apis/agentbox.dev/v1alpha1/namespaces/{ns}/sandboxpools")
}

fn cfg(watch: bool, local_only: LocalOnly) -> KubeStoreConfig {
    KubeStoreConfig {
        call_timeout: Duration::from_secs(2),
        local_only,
        watch,
        ..KubeStoreConfig::new("agentbox-system")
    }
}

async fn start(cache: MemoryStore, client: kube::Client, cfg: KubeStoreConfig) -> KubeStore<MemoryStore> {
    KubeStore::start(cache, move || async move { Ok(client) }, cfg).await.expect("the store starts")
}

/// Wait (5 s at most) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `SandboxPool` as a user would `kubectl apply` it.
fn pool_yaml(replicas: i64) -> Value {
    json!({"metadata": {"labels": {"agentbox.dev/team": "t", "agentbox.dev/user": "u"}},
           "spec": {"replicas": replicas, "template": {"idleImage": "pause",
                    "containers": [{"name": "main", "image": "python:3.12"}]}}})
}

fn template_yaml(version: &str) -> Value {
    json!({"spec": {"version": version, "idleImage": "pause", "containers": [{"name": "main", "image": "host"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_store_passes_the_store_contract() {
    let (cluster, client) = FakeCluster::start();
    let store = start(MemoryStore::new(), client, cfg(false, LocalOnly::Import)).await;
    agentbox_core::store::conformance::run_all(&store);
    // The cluster holds what the contract left: template b, pool ns1/p1, keys b and c.
    assert!(cluster.get(&format!("{TEMPLATES}/b")).is_some());
    assert!(cluster.get(&format!("{TEMPLATES}/a")).is_none());
    assert_eq!(cluster.get(&format!("{}/p1", pools_in("ns1"))).unwrap()["spec"]["replicas"], 5);
    assert!(cluster.get(&format!("{}/p1", pools_in("ns2"))).is_none());
    let b = api_key('b', "t1", "u", "2026-01-02T00:00:00Z");
    assert!(cluster.get(&format!("{SECRETS}/agentbox-apikey-{}", &b.token_hash[..16])).is_some());
    // Namespaces the pools needed were created.
    assert!(cluster.writes().contains(&"POST /api/v1/namespaces".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_writes_go_to_the_cluster_then_the_cache() {
    let (cluster, client) = FakeCluster::start();
    let store = start(MemoryStore::new(), client, cfg(false, LocalOnly::Import)).await;
    cluster.clear_seen();

    let t = template("py", "1.0.0");
    store.create_template(&t).unwrap();
    let created = cluster.seen().pop().unwrap();
    assert_eq!((created.method.as_str(), created.path.as_str()), ("POST", TEMPLATES));
    assert_eq!(created.body["metadata"]["name"], "py");
    assert_eq!(created.body["spec"]["version"], "1.0.0");
    assert_eq!(created.body["spec"]["containers"][0]["image"], "host");
    assert_eq!(store.get_template("py").unwrap().unwrap(), t);
    let rv = cluster.get(&format!("{TEMPLATES}/py")).unwrap()["metadata"]["resourceVersion"].clone();

    let mut t2 = t.clone();
    t2.spec.version = "1.1.0".into();
    t2.resource_version = 2;
    store.update_template(&t2, 1).unwrap();
    let put = cluster.seen().pop().unwrap();
    assert_eq!((put.method.as_str(), put.path.as_str()), ("PUT", &*format!("{TEMPLATES}/py")));
    assert_eq!(put.body["metadata"]["resourceVersion"], rv, "optimistic concurrency on the cluster's version");
    assert_eq!(put.body["spec"]["version"], "1.1.0");
    assert_eq!(store.get_template("py").unwrap().unwrap().resource_version, 2);
    assert_eq!(cluster.get(&format!("{TEMPLATES}/py")).unwrap()["spec"]["version"], "1.1.0");

    // A stale local version is refused without a request.
    cluster.clear_seen();
    assert!(matches!(store.update_template(&t2, 1), Err(StoreError::Conflict(_))));
    assert!(cluster.seen().is_empty());

    assert!(store.delete_template("py").unwrap());
    assert_eq!(cluster.writes(), [format!("DELETE {TEMPLATES}/py")]);
    assert!(store.get_template("py").unwrap().is_none());
    assert!(cluster.get(&format!("{TEMPLATES}/py")).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_writes_and_the_two_step_deletion() {
    let (cluster, client) = FakeCluster::start();
    let store = start(MemoryStore::new(), client, cfg(false, LocalOnly::Import)).await;
    cluster.clear_seen();
    let item = format!("{}/p", pools_in("default"));

    let p = pool("default", "p");
    store.create_pool(&p).unwrap();
    let post = cluster.seen().pop().unwrap();
    assert_eq!((post.method.as_str(), post.path.as_str()), ("POST", &*pools_in("default")));
    assert_eq!(post.body["metadata"]["finalizers"], json!([POOL_FINALIZER]));
    assert_eq!(post.body["metadata"]["labels"]["agentbox.dev/team"], "t");
    assert_eq!(post.body["spec"]["replicas"], 2);
    assert_eq!(store.get_pool("default", "p").unwrap().unwrap(), p);

    // `kubectl scale` equivalent through the engine: replace with the cluster's version.
    let mut scaled = p.clone();
    scaled.spec.replicas = 4;
    scaled.resource_version = 2;
    store.update_pool(&scaled, 1).unwrap();
    let put = cluster.seen().pop().unwrap();
    assert_eq!((put.method.as_str(), put.path.as_str()), ("PUT", item.as_str()));
    assert_eq!(put.body["spec"]["replicas"], 4);
    assert_eq!(put.body["metadata"]["finalizers"], json!([POOL_FINALIZER]), "the finalizer is kept");
    assert!(put.body["metadata"]["resourceVersion"].is_string());

    // The engine marks the pool deleting: the object is deleted but stays, Terminating.
    cluster.clear_seen();
    let mut deleting = scaled.clone();
    deleting.deleting = true;
    deleting.resource_version = 3;
    store.update_pool(&deleting, 2).unwrap();
    assert_eq!(cluster.writes(), [format!("DELETE {item}")]);
    let obj = cluster.get(&item).expect("held by the finalizer");
    assert!(obj["metadata"]["deletionTimestamp"].is_string());
    assert!(store.get_pool("default", "p").unwrap().unwrap().deleting);

    // Its last slot gone, the engine deletes the pool: the finalizer is removed, the object goes.
    cluster.clear_seen();
    assert!(store.delete_pool("default", "p").unwrap());
    assert_eq!(cluster.writes(), [format!("PATCH {item}")]);
    assert_eq!(cluster.seen().last().unwrap().body["metadata"]["finalizers"], json!([]));
    assert!(cluster.get(&item).is_none());
    assert!(store.get_pool("default", "p").unwrap().is_none());
    assert!(!store.delete_pool("default", "p").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_in_the_cluster_is_a_conflict_and_the_cache_gets_the_clusters_version() {
    let (cluster, client) = FakeCluster::start();
    let store = start(MemoryStore::new(), client, cfg(false, LocalOnly::Import)).await;
    store.create_pool(&pool("default", "p")).unwrap();
    // Someone scales the pool with kubectl; without a watch the cache does not know yet.
    let item = format!("{}/p", pools_in("default"));
    let mut obj = cluster.get(&item).unwrap();
    obj["spec"]["replicas"] = json!(7);
    cluster.apply(&item, obj);

    let mut mine = store.get_pool("default", "p").unwrap().unwrap();
    mine.spec.replicas = 3;
    mine.resource_version = 2;
    let err = store.update_pool(&mine, 1).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(cluster.get(&item).unwrap()["spec"]["replicas"], 7, "our write did not land");
    let cached = store.get_pool("default", "p").unwrap().unwrap();
    assert_eq!(cached.spec.replicas, 7, "the cache was refreshed from the cluster, so a retry sees it");
    assert_eq!(cached.resource_version, 2);

    // A 409 on create (the name exists in the cluster) is a conflict, and the cache is unchanged.
    cluster.fail_next("POST", TEMPLATES, Fault::Status(409));
    assert!(matches!(store.create_template(&template("x", "1.0.0")), Err(StoreError::Conflict(_))));
    assert!(store.get_template("x").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_a_clear_error_and_changes_nothing() {
    let (cluster, client) = FakeCluster::start();
    let store = start(MemoryStore::new(), client, cfg(false, LocalOnly::Import)).await;
    store.create_pool(&pool("default", "p")).unwrap();
    cluster.fail_next("PUT", &pools_in("default"), Fault::Unreachable);
    let mut next = pool("default", "p");
    next.spec.replicas = 9;
    next.resource_version = 2;
    let err = store.update_pool(&next, 1).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{msg}");
    assert!(msg.contains("not reachable") && msg.contains("check that the cluster runs"), "{msg}");
    let cached = store.get_pool("default", "p").unwrap().unwrap();
    assert_eq!((cached.spec.replicas, cached.resource_version), (2, 1));

    cluster.fail_next("GET", SECRETS, Fault::Unreachable);
    let err = store.find_api_key_by_hash(&"a".repeat(64)).unwrap_err();
    assert!(err.to_string().contains("not reachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_imports_local_rows_and_the_cluster_wins_for_the_rest() {
    let (cluster, client) = FakeCluster::start();
    // In the cluster: template `shared` at 2.0.0, template `theirs`, pool default/theirs.
    cluster.apply(&format!("{TEMPLATES}/shared"), template_yaml("2.0.0"));
    cluster.apply(&format!("{TEMPLATES}/theirs"), template_yaml("1.0.0"));
    cluster.apply(&format!("{}/theirs", pools_in("default")), pool_yaml(3));
    // In the local store: `shared` at 1.0.0, template `mine`, pool default/mine, a key.
    let cache = MemoryStore::new();
    cache.create_template(&template("shared", "1.0.0")).unwrap();
    cache.create_template(&template("mine", "1.0.0")).unwrap();
    cache.create_pool(&pool("default", "mine")).unwrap();
    let key = api_key('e', "t", "u", "2026-01-01T00:00:00Z");
    cache.create_api_key(&key).unwrap();
    cluster.clear_seen();

    let store = start(cache, client, cfg(false, LocalOnly::Import)).await;

    let mut writes = cluster.writes();
    writes.sort();
    assert_eq!(
        writes,
        [
            format!("PATCH {}/theirs", pools_in("default")), // our finalizer on kubectl's pool
            format!("POST {SECRETS}"),
            pools_in("default").replace("/apis", "POST /apis"),
            format!("POST {TEMPLATES}"),
        ]
    );
    assert_eq!(cluster.get(&format!("{TEMPLATES}/mine")).unwrap()["spec"]["version"], "1.0.0");
    let imported = cluster.get(&format!("{}/mine", pools_in("default"))).unwrap();
    assert_eq!(imported["metadata"]["finalizers"], json!([POOL_FINALIZER]));
    assert_eq!(
        cluster.get(&format!("{}/theirs", pools_in("default"))).unwrap()["metadata"]["finalizers"],
        json!([POOL_FINALIZER])
    );
    let shared = store.get_template("shared").unwrap().unwrap();
    assert_eq!(shared.spec.version, "2.0.0", "the cluster wins");
    assert_eq!(shared.resource_version, 2, "one local version further");
    let names: Vec<String> = store.list_templates().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["mine", "shared", "theirs"]);
    let theirs = store.get_pool("default", "theirs").unwrap().unwrap();
    assert_eq!((theirs.spec.replicas, theirs.team.as_str(), theirs.resource_version), (3, "t", 1));
    assert_eq!(store.find_api_key_by_hash(&key.token_hash).unwrap(), Some(key));
    assert!(store.imports_complete(), "{:?}", store.not_imported());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_starts_drop_what_was_deleted_in_the_cluster_while_the_server_was_down() {
    let (cluster, client) = FakeCluster::start();
    let cache = MemoryStore::new();
    cache.create_template(&template("gone", "1.0.0")).unwrap();
    cache.create_pool(&pool("default", "empty")).unwrap();
    cache.create_pool(&pool("default", "busy")).unwrap();
    let mut s = slot("busy-1", SlotPhase::Idle);
    s.pool = "busy".into();
    cache.put_slot(&s).unwrap();

    let store = start(cache, client, cfg(false, LocalOnly::Drop)).await;

    assert!(cluster.writes().is_empty(), "nothing is created in the cluster: {:?}", cluster.writes());
    assert!(store.get_template("gone").unwrap().is_none());
    assert!(store.get_pool("default", "empty").unwrap().is_none());
    let busy = store.get_pool("default", "busy").unwrap().unwrap();
    assert!(busy.deleting, "a pool with slots is drained by its reconciler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_scale_and_delete_reach_the_cache_through_the_watch() {
    let (cluster, client) = FakeCluster::start();
    let store = start(MemoryStore::new(), client, cfg(true, LocalOnly::Import)).await;
    let mut changes = store.pool_changes();
    let item = format!("{}/web", pools_in("default"));

    cluster.apply(&item, pool_yaml(2));
    eventually("the applied pool is in the cache", || store.get_pool("default", "web").unwrap().is_some()).await;
    let p = store.get_pool("default", "web").unwrap().unwrap();
    assert_eq!((p.spec.replicas, p.resource_version, p.deleting), (2, 1, false));
    assert_eq!(store.list_pools(Some("default")).unwrap().len(), 1);
    assert_eq!(changes.recv().await.unwrap(), PoolChange { namespace: "default".into(), name: "web".into() });
    eventually("our finalizer is added", || {
        cluster.get(&item).is_some_and(|o| o["metadata"]["finalizers"] == json!([POOL_FINALIZER]))
    })
    .await;

    // kubectl scale sbp web --replicas=5
    let mut obj = cluster.get(&item).unwrap();
    obj["spec"]["replicas"] = json!(5);
    cluster.apply(&item, obj);
    eventually("the new size is in the cache", || {
        store.get_pool("default", "web").unwrap().unwrap().spec.replicas == 5
    })
    .await;
    assert_eq!(store.get_pool("default", "web").unwrap().unwrap().resource_version, 2);

    // The pool has a slot: kubectl delete marks it deleting and the object waits (finalizer).
    let mut s = slot("web-1", SlotPhase::Idle);
    s.pool = "web".into();
    store.put_slot(&s).unwrap();
    cluster.delete(&item);
    eventually("the pool is marked deleting", || store.get_pool("default", "web").unwrap().unwrap().deleting).await;
    assert!(cluster.get(&item).is_some(), "the object waits for the slots");
    // The engine destroyed the slot and deletes the pool: the object goes.
    store.delete_slot("web-1").unwrap();
    assert!(store.delete_pool("default", "web").unwrap());
    assert!(cluster.get(&item).is_none());

    // Without slots, a kubectl delete removes the pool at once.
    let other = format!("{}/batch", pools_in("default"));
    cluster.apply(&other, pool_yaml(1));
    eventually("the second pool is in the cache", || store.get_pool("default", "batch").unwrap().is_some()).await;
    eventually("its finalizer is added", || {
        cluster.get(&other).is_some_and(|o| !o["metadata"]["finalizers"].is_null())
    })
    .await;
    cluster.delete(&other);
    eventually("the pool leaves the cache", || store.get_pool("default", "batch").unwrap().is_none()).await;
    eventually("the object is released", || cluster.get(&other).is_none()).await;

    // Templates too.
    cluster.apply(&format!("{TEMPLATES}/py"), template_yaml("1.0.0"));
    eventually("the template is in the cache", || store.get_template("py").unwrap().is_some()).await;
    cluster.apply(&format!("{TEMPLATES}/py"), template_yaml("1.2.0"));
    eventually("the template changed", || store.get_template("py").unwrap().unwrap().spec.version == "1.2.0").await;
    cluster.delete(&format!("{TEMPLATES}/py"));
    eventually("the template is gone", || store.get_template("py").unwrap().is_none()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_coming_back_through_the_watch_change_nothing() {
    let (cluster, client) = FakeCluster::start();
    let store = start(MemoryStore::new(), client, cfg(true, LocalOnly::Import)).await;
    // A slow watch: the events of all three writes arrive after the last one, the older ones
    // carrying an older state of the pool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.pause_watches();
    store.create_template(&template("py", "1.0.0")).unwrap();
    store.create_pool(&pool("default", "p")).unwrap();
    let mut p = pool("default", "p");
    p.spec.replicas = 3;
    p.resource_version = 2;
    store.update_pool(&p, 1).unwrap();
    let writes = cluster.writes().len();
    cluster.resume_watches();
    // Let the watches deliver every event (each answer waits at most 200 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let delivered = cluster.seen().iter().filter(|s| s.query.contains("watch=true")).count();
    assert!(delivered >= 2, "the watches ran");
    assert_eq!(cluster.writes().len(), writes, "no write loop: {:?}", cluster.writes());
    assert_eq!(store.get_template("py").unwrap().unwrap().resource_version, 1);
    let cached = store.get_pool("default", "p").unwrap().unwrap();
    assert_eq!((cached.resource_version, cached.spec.replicas), (2, 3));
    // And the engine's next compare-and-set still works.
    p.spec.replicas = 4;
    p.resource_version = 3;
    store.update_pool(&p, 2).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_secrets_looked_up_by_the_hash_label() {
    let (cluster, client) = FakeCluster::start();
    let cache = MemoryStore::new();
    let store = start(cache, client, cfg(false, LocalOnly::Import)).await;
    cluster.clear_seen();
    let k = api_key('f', "team", "ann", "2026-01-01T00:00:00Z");
    store.create_api_key(&k).unwrap();
    let post = cluster.seen().pop().unwrap();
    assert_eq!((post.method.as_str(), post.path.as_str()), ("POST", SECRETS));
    assert_eq!(post.body["metadata"]["labels"]["agentbox.dev/key-hash"], "f".repeat(63));
    let record = post.body["data"]["record"].as_str().unwrap();
    assert!(!record.contains("00ff"), "the sealed token is not in the record");
    assert!(post.body["data"]["sealed-token"].is_string());
    assert!(matches!(store.create_api_key(&k), Err(StoreError::Conflict(_))));

    cluster.clear_seen();
    assert_eq!(store.find_api_key_by_hash(&k.token_hash).unwrap().as_ref(), Some(&k));
    let list = cluster.seen().pop().unwrap();
    assert_eq!(list.path, SECRETS);
    assert!(list.query.contains(&format!("agentbox.dev/key-hash={}", "f".repeat(63))), "{}", list.query);
    assert_eq!(store.get_api_key(&k.key_id).unwrap().as_ref(), Some(&k));
    assert!(store.get_api_key("agbx-../../x").unwrap().is_none());
    assert!(store.cache().list_api_keys().unwrap().is_empty(), "keys live in Secrets only");

    assert!(store.delete_api_key(&k.key_id).unwrap());
    assert!(store.find_api_key_by_hash(&k.token_hash).unwrap().is_none());
    assert!(!store.delete_api_key(&k.key_id).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_does_not_start_without_the_crds_and_says_how_to_install_them() {
    let (cluster, client) = FakeCluster::start();
    cluster.fail_next("GET", TEMPLATES, Fault::Status(404));
    let result =
        KubeStore::start(MemoryStore::new(), move || async move { Ok(client) }, cfg(false, LocalOnly::Import)).await;
    let err = result.err().expect("no store without the CRDs").to_string();
    assert!(err.contains("listing sandboxtemplates") && err.contains("kubectl apply -f deploy/crds/"), "{err}");
}

/// The engine calls the store from tasks of a current-thread runtime (its tests do): a store call
/// blocks that thread briefly and must not need it to make progress.
#[tokio::test]
async fn the_sync_calls_work_from_a_current_thread_runtime() {
    // The fake API server gets a runtime of its own (this thread is blocked during store calls).
    let api_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (cluster, client) = {
        let _enter = api_rt.enter();
        FakeCluster::start()
    };
    let store = start(MemoryStore::new(), client, cfg(true, LocalOnly::Import)).await;
    store.create_pool(&pool("default", "p")).unwrap();
    assert!(cluster.get(&format!("{}/p", pools_in("default"))).is_some());
    assert_eq!(store.get_pool("default", "p").unwrap().unwrap().spec.replicas, 2);
    drop(store);
    api_rt.shutdown_background();
}

/// A cache whose next write of one kind fails (a full disk, a locked SQLite file).
#[derive(Default, Clone)]
struct FlakyStore {
    inner: Arc<MemoryStore>,
    /// Name of the method whose next call fails.
    fail_next: Arc<parking_lot::Mutex<Option<&'static str>>>,
}

impl FlakyStore {
    fn fail_next(&self, method: &'static str) {
        *self.fail_next.lock() = Some(method);
    }

    fn check(&self, method: &'static str) -> Result<(), StoreError> {
        let mut f = self.fail_next.lock();
        if *f == Some(method) {
            *f = None;
            return Err(StoreError::Backend(format!("{method}: disk full (scripted)")));
        }
        Ok(())
    }
}

impl Store for FlakyStore {
    fn create_template(&self, t: &Template) -> Result<(), StoreError> {
        self.check("create_template")?;
        self.inner.create_template(t)
    }
    fn update_template(&self, t: &Template, expected_rv: u64) -> Result<(), StoreError> {
        self.check("update_template")?;
        self.inner.update_template(t, expected_rv)
    }
    fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
        self.inner.get_template(name)
    }
    fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        self.inner.list_templates()
    }
    fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_template(name)
    }
    fn create_pool(&self, p: &Pool) -> Result<(), StoreError> {
        self.check("create_pool")?;
        self.inner.create_pool(p)
    }
    fn update_pool(&self, p: &Pool, expected_rv: u64) -> Result<(), StoreError> {
        self.check("update_pool")?;
        self.inner.update_pool(p, expected_rv)
    }
    fn get_pool(&self, namespace: &str, name: &str) -> Result<Option<Pool>, StoreError> {
        self.inner.get_pool(namespace, name)
    }
    fn list_pools(&self, namespace: Option<&str>) -> Result<Vec<Pool>, StoreError> {
        self.inner.list_pools(namespace)
    }
    fn delete_pool(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_pool(namespace, name)
    }
    fn put_slot(&self, s: &Slot) -> Result<(), StoreError> {
        self.inner.put_slot(s)
    }
    fn get_slot(&self, slot_id: &str) -> Result<Option<Slot>, StoreError> {
        self.inner.get_slot(slot_id)
    }
    fn list_slots(&self) -> Result<Vec<Slot>, StoreError> {
        self.inner.list_slots()
    }
    fn delete_slot(&self, slot_id: &str) -> Result<(), StoreError> {
        self.inner.delete_slot(slot_id)
    }
    fn claim(&self, slot: &Slot, expected: SlotPhase, sandbox: &Sandbox) -> Result<(), StoreError> {
        self.inner.claim(slot, expected, sandbox)
    }
    fn put_slot_and_sandbox(&self, slot: &Slot, sandbox: &Sandbox) -> Result<(), StoreError> {
        self.inner.put_slot_and_sandbox(slot, sandbox)
    }
    fn put_sandbox(&self, s: &Sandbox) -> Result<(), StoreError> {
        self.inner.put_sandbox(s)
    }
    fn get_sandbox(&self, sandbox_id: &str) -> Result<Option<Sandbox>, StoreError> {
        self.inner.get_sandbox(sandbox_id)
    }
    fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<(Vec<Sandbox>, u64), StoreError> {
        self.inner.list_sandboxes(filter)
    }
    fn count_sandboxes(&self, namespace: Option<&str>) -> Result<BTreeMap<SandboxStatus, u64>, StoreError> {
        self.inner.count_sandboxes(namespace)
    }
    fn prune_history(&self, before: &str) -> Result<u64, StoreError> {
        self.inner.prune_history(before)
    }
    fn create_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.create_api_key(k)
    }
    fn put_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.put_api_key(k)
    }
    fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.get_api_key(key_id)
    }
    fn find_api_key_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.find_api_key_by_hash(token_hash)
    }
    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.list_api_keys()
    }
    fn delete_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        self.inner.delete_api_key(key_id)
    }
    fn create_quota(&self, q: &QuotaRecord) -> Result<(), StoreError> {
        self.inner.create_quota(q)
    }
    fn update_quota(&self, q: &QuotaRecord, expected_rv: u64) -> Result<(), StoreError> {
        self.inner.update_quota(q, expected_rv)
    }
    fn get_quota(&self, name: &str) -> Result<Option<QuotaRecord>, StoreError> {
        self.inner.get_quota(name)
    }
    fn list_quotas(&self) -> Result<Vec<QuotaRecord>, StoreError> {
        self.inner.list_quotas()
    }
    fn delete_quota(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_quota(name)
    }
}

/// Wait until both watches listed the cluster (their first `InitDone` is behind them).
async fn watches_listed(cluster: &FakeCluster) {
    let watching = |path: String| {
        let cluster = cluster.clone();
        move || cluster.seen().iter().any(|s| s.path == path && s.query.contains("watch=true"))
    };
    eventually("the template watch runs", watching(TEMPLATES.to_string())).await;
    eventually("the pool watch runs", watching("/apis/agentbox.dev/v1alpha1/sandboxpools".to_string())).await;
    // The watch request follows the list and its InitDone; give the event loop a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_failed_to_import_stays_local_through_the_watches_and_is_created_at_its_next_write() {
    let (cluster, client) = FakeCluster::start();
    let cache = MemoryStore::new();
    cache.create_template(&template("mine", "1.0.0")).unwrap();
    cache.create_pool(&pool("default", "mine")).unwrap();
    let key = api_key('d', "t", "u", "2026-01-01T00:00:00Z");
    cache.create_api_key(&key).unwrap();
    // The cluster refuses each import (a field its schema rejects, no right on Secrets).
    cluster.fail_next("POST", TEMPLATES, Fault::Status(422));
    cluster.fail_next("POST", &pools_in("default"), Fault::Status(422));
    cluster.fail_next("POST", SECRETS, Fault::Status(403));

    let store = start(cache, client, cfg(true, LocalOnly::Import)).await;

    assert!(!store.imports_complete(), "the server must not write its marker");
    let mut not_imported = store.not_imported();
    not_imported.sort();
    assert_eq!(not_imported, [format!("api key {}", key.key_id), "pool default/mine".into(), "template mine".into()]);
    assert_eq!(store.cache().list_api_keys().unwrap(), vec![key.clone()], "the key stays in the local store");
    // The watches' first listing does not have them: that is not a deletion in the cluster.
    watches_listed(&cluster).await;
    assert!(store.get_template("mine").unwrap().is_some(), "the template is still there");
    let p = store.get_pool("default", "mine").unwrap().expect("the pool is still there");
    assert!(!p.deleting, "and not drained");
    assert!(cluster.get(&format!("{TEMPLATES}/mine")).is_none());

    // The engine's next write of each creates its object.
    let mut t = store.get_template("mine").unwrap().unwrap();
    t.spec.version = "1.1.0".into();
    t.resource_version = 2;
    store.update_template(&t, 1).unwrap();
    assert_eq!(cluster.get(&format!("{TEMPLATES}/mine")).unwrap()["spec"]["version"], "1.1.0");
    let mut p2 = p.clone();
    p2.spec.replicas = 3;
    p2.resource_version = 2;
    store.update_pool(&p2, 1).unwrap();
    let obj = cluster.get(&format!("{}/mine", pools_in("default"))).unwrap();
    assert_eq!(
        (obj["spec"]["replicas"].clone(), obj["metadata"]["finalizers"].clone()),
        (json!(3), json!([POOL_FINALIZER]))
    );
    // From then on they are like any other: their own writes coming back change nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.get_template("mine").unwrap().unwrap().resource_version, 2);
    assert_eq!(store.get_pool("default", "mine").unwrap().unwrap().resource_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cache_write_is_made_good_by_the_watch_event_of_that_version() {
    let (cluster, client) = FakeCluster::start();
    let cache = FlakyStore::default();
    let store = KubeStore::start(cache.clone(), move || async move { Ok(client) }, cfg(true, LocalOnly::Import))
        .await
        .expect("the store starts");
    watches_listed(&cluster).await;

    cache.fail_next("create_pool");
    let err = store.create_pool(&pool("default", "p")).unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(cluster.get(&format!("{}/p", pools_in("default"))).is_some(), "the cluster has it");
    eventually("the watch event brings the pool into the cache", || store.get_pool("default", "p").unwrap().is_some())
        .await;

    store.create_template(&template("py", "1.0.0")).unwrap();
    cache.fail_next("update_template");
    let mut t = template("py", "1.1.0");
    t.resource_version = 2;
    assert!(store.update_template(&t, 1).is_err());
    eventually("the watch event brings the new version into the cache", || {
        store.get_template("py").unwrap().unwrap().spec.version == "1.1.0"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_in_between_is_not_a_conflict() {
    let (cluster, client) = FakeCluster::start();
    let store = start(MemoryStore::new(), client, cfg(false, LocalOnly::Import)).await;
    let item = format!("{}/p", pools_in("default"));
    store.create_pool(&pool("default", "p")).unwrap();
    // The backend publishes the pool's status (another resourceVersion, the same spec).
    let mut obj = cluster.get(&item).unwrap();
    obj["status"] = json!({"phase": "Ready", "replicas": 2});
    cluster.apply(&item, obj);
    cluster.clear_seen();

    let mut scaled = pool("default", "p");
    scaled.spec.replicas = 4;
    scaled.resource_version = 2;
    store.update_pool(&scaled, 1).unwrap();
    let puts: Vec<_> = cluster.seen().into_iter().filter(|s| s.method == "PUT").collect();
    assert_eq!(puts.len(), 2, "one retry on the fresh version");
    assert_eq!(cluster.get(&item).unwrap()["spec"]["replicas"], 4);
    assert_eq!(cluster.get(&item).unwrap()["metadata"]["finalizers"], json!([POOL_FINALIZER]));
    assert_eq!(store.get_pool("default", "p").unwrap().unwrap().spec.replicas, 4);

    // Templates too (here a label someone added).
    store.create_template(&template("py", "1.0.0")).unwrap();
    let titem = format!("{TEMPLATES}/py");
    let mut obj = cluster.get(&titem).unwrap();
    obj["metadata"]["labels"] = json!({"owner": "ops"});
    cluster.apply(&titem, obj);
    let mut t = template("py", "1.1.0");
    t.resource_version = 2;
    store.update_template(&t, 1).unwrap();
    assert_eq!(cluster.get(&titem).unwrap()["spec"]["version"], "1.1.0");

    // A spec changed in between is still a conflict (covered with pools in the test above).
    let mut obj = cluster.get(&titem).unwrap();
    obj["spec"]["version"] = json!("9.0.0");
    cluster.apply(&titem, obj);
    let mut t = template("py", "1.2.0");
    t.resource_version = 3;
    assert!(matches!(store.update_template(&t, 2), Err(StoreError::Conflict(_))));
    assert_eq!(cluster.get(&titem).unwrap()["spec"]["version"], "9.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_not_looked_up_again_within_the_ttl_but_a_new_key_is_found_at_once() {
    let (cluster, client) = FakeCluster::start();
    let config = KubeStoreConfig { unknown_key_ttl: Duration::from_millis(400), ..cfg(false, LocalOnly::Import) };
    let store = start(MemoryStore::new(), client, config).await;
    let lookups = || cluster.seen().iter().filter(|s| s.method == "GET" && s.path == SECRETS).count();
    let k = api_key('a', "t", "u", "2026-01-01T00:00:00Z");
    let other = api_key('b', "t", "u", "2026-01-01T00:00:00Z");

    assert_eq!(store.find_api_key_by_hash(&k.token_hash).unwrap(), None);
    assert_eq!(store.find_api_key_by_hash(&other.token_hash).unwrap(), None);
    assert_eq!(lookups(), 2);
    assert_eq!(store.find_api_key_by_hash(&k.token_hash).unwrap(), None);
    assert_eq!(store.find_api_key_by_hash(&other.token_hash).unwrap(), None);
    assert_eq!(lookups(), 2, "within the TTL an unknown hash costs no API call");

    // Created right after: found at once.
    store.create_api_key(&k).unwrap();
    assert_eq!(store.find_api_key_by_hash(&k.token_hash).unwrap(), Some(k.clone()));
    // Written by another replica: found once the TTL is over.
    cluster.apply(&format!("{SECRETS}/agentbox-apikey-{}", &other.token_hash[..16]), secret_of(&other));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.find_api_key_by_hash(&other.token_hash).unwrap(), Some(other));
}

fn secret_of(k: &ApiKeyRecord) -> Value {
    serde_json::to_value(agentbox_backend_k8s::keys::key_secret("agentbox-system", k).unwrap()).unwrap()
}
