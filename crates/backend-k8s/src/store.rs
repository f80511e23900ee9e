//! [`KubeStore`]: the core's [`Store`] in Kubernetes mode. `SandboxTemplate` and `SandboxPool`
//! custom resources are the source of truth for templates and pools, API keys are Secrets
//! ([`crate::keys`]); a local store `S` (SQLite in `agentbox serve`) is the read cache of templates
//! and pools and keeps everything the cluster does not (slots, sandboxes, history, quotas).
//!
//! - **Writes** of templates and pools go to the API server first (create / replace with the
//!   object's last seen `resourceVersion` / delete), then to the cache. A 409 from the API server
//!   is [`StoreError::Conflict`] (and the object is re-read into the cache, so the caller's retry
//!   sees the new version); an unreachable API server is a [`StoreError::Backend`] that says so,
//!   and the cache is left as it was.
//! - **Reads** of templates and pools come from the cache, which a watch on both custom resources
//!   keeps current: `kubectl apply`, `kubectl scale sbp`, `kubectl delete sbp` reach the engine,
//!   which reads its pools from the store on every reconcile pass. A watch event that carries
//!   what the cache already holds (our own write coming back) changes nothing; the core's
//!   `resourceVersion` of a template or pool stays a local counter (the engine's compare-and-set
//!   token) and moves by one for every change that came from the cluster.
//! - **Pool deletion**: every `SandboxPool` carries the finalizer
//!   [`POOL_FINALIZER`](crate::labels::POOL_FINALIZER). The engine's "mark deleting" becomes a
//!   DELETE of the object (which stays, Terminating, while the engine destroys the slots); the
//!   engine's final `delete_pool` removes the finalizer. A `kubectl delete sbp` shows up as a
//!   pool marked `deleting` (its reconciler drains it the same way); a pool without slots is
//!   released at once.
//! - **API keys** are read from and written to Secrets only (the cache's key rows are imported
//!   once, see [`LocalOnly`], and then left alone).
//! - Everything else delegates to the cache unchanged.
//!
//! The [`Store`] trait is synchronous and the engine calls it from async tasks (also on
//! current-thread runtimes), so the cluster side runs on a dedicated thread with its own Tokio
//! runtime and Kubernetes client; a store call hands it a job and waits for the answer, every API
//! call bounded by [`KubeStoreConfig::call_timeout`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::identity::{ApiKeyRecord, QuotaRecord};
use agentbox_core::model::{Pool, Sandbox, SandboxStatus, Slot, SlotPhase, Template};
use agentbox_core::store::{SandboxFilter, Store, StoreError};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;

use crate::convert::{pool_to_cr, template_to_cr};
use crate::crd::{SandboxPool, SandboxTemplate};
use crate::error::KubeError;
use crate::keys::SecretKeyStore;
use crate::labels::{self, POOL_FINALIZER};

mod sync;

/// What start-up does with templates, pools and API keys that are in the local store but not in
/// the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalOnly {
    /// Create them in the cluster (the first start in Kubernetes mode: nothing the user created
    /// before is lost). A pool whose namespace cannot be written stays local, with a warning.
    Import,
    /// The cluster wins: they were deleted there while the server was down. Templates leave the
    /// cache; a pool with slots is marked deleting (its reconciler destroys them), one without is
    /// removed. Keys are not touched (they are read from Secrets anyway).
    Drop,
}

/// Settings of a [`KubeStore`].
#[derive(Debug, Clone)]
pub struct KubeStoreConfig {
    /// Namespace of the API key Secrets (the server's own namespace).
    pub key_namespace: String,
    /// Bound of every Kubernetes API call.
    pub call_timeout: Duration,
    /// Start-up handling of rows only the local store has.
    pub local_only: LocalOnly,
    /// Watch both custom resources into the cache (`false` only in tests that script every
    /// request).
    pub watch: bool,
}

impl KubeStoreConfig {
    /// Keys in `key_namespace`, 10 s per API call, [`LocalOnly::Import`], watching.
    pub fn new(key_namespace: impl Into<String>) -> Self {
        KubeStoreConfig {
            key_namespace: key_namespace.into(),
            call_timeout: Duration::from_secs(10),
            local_only: LocalOnly::Import,
            watch: true,
        }
    }
}

/// A pool that changed in the cache because of the cluster (watch or start-up sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolChange {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ObjKey {
    Template(String),
    Pool(String, String),
}

/// What we last saw of an object in the cluster.
#[derive(Debug, Clone, Default)]
struct Seen {
    resource_version: String,
    finalizers: Vec<String>,
}

/// See the module docs.
pub struct KubeStore<S: Store> {
    inner: Arc<Inner<S>>,
    handle: tokio::runtime::Handle,
    /// Dropping it stops the cluster thread (and its watches).
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Inner<S> {
    cache: S,
    client: Client,
    keys: SecretKeyStore,
    cfg: KubeStoreConfig,
    seen: Mutex<HashMap<ObjKey, Seen>>,
    /// Serializes cluster writes and the application of watch events, so an event is never
    /// compared with the cache before the write it reports reached the cache.
    write: tokio::sync::Mutex<()>,
    changes: tokio::sync::broadcast::Sender<PoolChange>,
}

impl<S: Store> KubeStore<S> {
    /// Connect with the inferred configuration (`KUBECONFIG`, `~/.kube/config`, or the in-cluster
    /// service account), then [`start`](Self::start).
    pub async fn connect(cache: S, cfg: KubeStoreConfig) -> Result<Self, StoreError> {
        Self::start(
            cache,
            || async {
                let kc = kube::Config::infer().await.map_err(|e| KubeError::NoConfig(e.to_string()))?;
                let url = kc.cluster_url.to_string();
                Client::try_from(kc).map_err(|e| KubeError::Unreachable { url, message: e.to_string() })
            },
            cfg,
        )
        .await
    }

    /// Start the cluster thread, make a client there with `connect`, bring the cache in line with
    /// the cluster (see [`LocalOnly`]) and, with [`KubeStoreConfig::watch`], start the watches.
    /// Fails when the cluster cannot be read (nothing is served from a cache that may be stale).
    pub async fn start<F, Fut>(cache: S, connect: F, cfg: KubeStoreConfig) -> Result<Self, StoreError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Client, KubeError>> + Send + 'static,
    {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("agentbox-kube-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the kubernetes store thread: {e}")))?;
        let handle = handle_rx
            .await
            .map_err(|_| StoreError::Backend("the kubernetes store thread stopped at start".into()))?
            .map_err(|e| StoreError::Backend(format!("cannot start the kubernetes store runtime: {e}")))?;
        let inner = handle
            .spawn(async move {
                let client = connect().await.map_err(|e| StoreError::Backend(e.to_string()))?;
                let inner = Arc::new(Inner {
                    cache,
                    keys: SecretKeyStore::new(client.clone(), cfg.key_namespace.clone()),
                    client,
                    cfg,
                    seen: Mutex::new(HashMap::new()),
                    write: tokio::sync::Mutex::new(()),
                    changes: tokio::sync::broadcast::channel(256).0,
                });
                inner.initial_sync().await?;
                if inner.cfg.watch {
                    Arc::clone(&inner).spawn_watches();
                }
                Ok::<_, StoreError>(inner)
            })
            .await
            .map_err(|e| StoreError::Backend(format!("the kubernetes store start-up failed: {e}")))??;
        Ok(KubeStore { inner, handle, _stop: stop_tx })
    }

    /// The local store (cache of templates and pools, owner of everything else).
    pub fn cache(&self) -> &S {
        &self.inner.cache
    }

    /// Pools the cluster added, changed or deleted in the cache. The engine starts a reconciler
    /// for a pool only when it creates one itself, at start, or at a claim: a server that wants
    /// `kubectl apply -f pool.yaml` to warm slots at once hands these to the engine.
    pub fn pool_changes(&self) -> tokio::sync::broadcast::Receiver<PoolChange> {
        self.inner.changes.subscribe()
    }

    /// Run `job` on the cluster thread and wait for its answer (bounded: a job makes at most a few
    /// API calls, each bounded by the call timeout, after waiting for the write lock).
    fn run<T, F, Fut>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner<S>>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = job(Arc::clone(&self.inner));
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let bound = self.inner.cfg.call_timeout * 8 + Duration::from_secs(1);
        match rx.recv_timeout(bound) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(StoreError::Backend(format!(
                "the kubernetes store did not finish within {bound:?}: check that the cluster answers; the change may \
                 or may not have been applied"
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(StoreError::Backend("the kubernetes store stopped: restart the server".into()))
            }
        }
    }
}

/// A kube error as a store error; `what` says what was being done.
fn api_error(what: &str, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(s) if s.code == 409 => StoreError::Conflict(format!("{what}: {}", s.message)),
        kube::Error::Api(s) if s.code == 404 => StoreError::NotFound(format!("{what}: {}", s.message)),
        kube::Error::Api(s) if s.code == 403 => StoreError::Backend(format!(
            "{what}: forbidden ({}): grant the server's service account access to sandboxtemplates, sandboxpools and \
             secrets (deploy/kustomize/rbac.yaml)",
            s.message
        )),
        kube::Error::Api(s) => StoreError::Backend(format!("{what}: the kubernetes api refused it: {}", s.message)),
        _ => StoreError::Backend(format!(
            "{what}: the kubernetes api is not reachable: {e}: check that the cluster runs and that KUBECONFIG points \
             at it"
        )),
    }
}

fn kube_error(what: &str, e: KubeError) -> StoreError {
    match e {
        KubeError::Api(e) => api_error(what, e),
        e => StoreError::Backend(format!("{what}: {e}")),
    }
}

/// What of a pool the cluster holds, for "did it change": the bookkeeping (resource version,
/// creation time, deleting) is not compared, registry credentials never reach the object, and
/// the legacy `quotaUrl` is the reservation's.
fn comparable(p: &Pool) -> Pool {
    let mut p = p.clone();
    p.resource_version = 0;
    p.created_at.clear();
    p.deleting = false;
    p.overrides.image_pull_secret = None;
    p.spec.reservation = p.spec.effective_reservation();
    p.spec.quota_url = None;
    p
}

fn seen_of(meta: &ObjectMeta) -> Seen {
    Seen {
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
    }
}

fn pool_key(cr: &SandboxPool) -> ObjKey {
    ObjKey::Pool(cr.namespace().unwrap_or_else(|| "default".into()), cr.name_any())
}

impl<S: Store> Inner<S> {
    async fn within<T, E>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, E>>,
        map: impl FnOnce(&str, E) -> StoreError,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.cfg.call_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map(what, e)),
            Err(_) => Err(StoreError::Backend(format!(
                "{what}: the kubernetes api did not answer within {:?}: check that the cluster runs; the change may or \
                 may not have been applied",
                self.cfg.call_timeout
            ))),
        }
    }

    async fn api<T>(&self, what: &str, fut: impl Future<Output = Result<T, kube::Error>>) -> Result<T, StoreError> {
        self.within(what, fut, api_error).await
    }

    async fn keys_call<T>(&self, what: &str, fut: impl Future<Output = Result<T, KubeError>>) -> Result<T, StoreError> {
        self.within(what, fut, kube_error).await
    }

    fn templates(&self) -> Api<SandboxTemplate> {
        Api::all(self.client.clone())
    }

    fn pools(&self, namespace: &str) -> Api<SandboxPool> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn remember(&self, key: ObjKey, meta: &ObjectMeta) {
        self.seen.lock().insert(key, seen_of(meta));
    }

    fn seen(&self, key: &ObjKey) -> Option<Seen> {
        self.seen.lock().get(key).cloned()
    }

    /// Whether the cluster version `meta` is one we have seen already (or older): our own write
    /// coming back through the watch, or an event overtaken by a later read.
    fn already_seen(&self, key: &ObjKey, meta: &ObjectMeta) -> bool {
        let Some(seen) = self.seen(key) else { return false };
        let new = meta.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
        match (seen.resource_version.parse::<u64>().ok(), new) {
            (Some(old), Some(new)) => new <= old,
            _ => meta.resource_version.as_deref() == Some(seen.resource_version.as_str()),
        }
    }

    fn notify(&self, namespace: &str, name: &str) {
        let _ = self.changes.send(PoolChange { namespace: namespace.into(), name: name.into() });
    }

    fn cache_put_template(&self, t: &Template) -> Result<(), StoreError> {
        match self.cache.get_template(&t.name)? {
            Some(cur) => self.cache.update_template(t, cur.resource_version),
            None => self.cache.create_template(t),
        }
    }

    fn cache_put_pool(&self, p: &Pool) -> Result<(), StoreError> {
        match self.cache.get_pool(&p.namespace, &p.name)? {
            Some(cur) => self.cache.update_pool(p, cur.resource_version),
            None => self.cache.create_pool(p),
        }
    }

    fn has_slots(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self.cache.list_slots()?.iter().any(|s| s.namespace == namespace && s.pool == name))
    }

    // --- writes from the engine ----------------------------------------------------------------

    async fn create_template(&self, t: Template) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        let what = format!("creating sandboxtemplate {}", t.name);
        match self.api(&what, self.templates().create(&PostParams::default(), &template_to_cr(&t))).await {
            Ok(cr) => self.remember(ObjKey::Template(t.name.clone()), &cr.metadata),
            Err(e @ StoreError::Conflict(_)) => {
                self.refresh_template(&t.name).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.cache_put_template(&t)
    }

    async fn update_template(&self, t: Template, expected_rv: u64) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        let key = ObjKey::Template(t.name.clone());
        let cur = self
            .cache
            .get_template(&t.name)?
            .ok_or_else(|| StoreError::NotFound(format!("sandbox template {}", t.name)))?;
        if cur.resource_version != expected_rv {
            return Err(StoreError::Conflict(format!(
                "sandbox template {}: resourceVersion {expected_rv} is stale (current {})",
                t.name, cur.resource_version
            )));
        }
        let what = format!("updating sandboxtemplate {}", t.name);
        let mut cr = template_to_cr(&t);
        cr.metadata.resource_version = match self.seen(&key) {
            Some(s) => Some(s.resource_version),
            None => self.api(&what, self.templates().get_opt(&t.name)).await?.and_then(|c| c.metadata.resource_version),
        };
        match self.api(&what, self.templates().replace(&t.name, &PostParams::default(), &cr)).await {
            Ok(cr) => self.remember(key, &cr.metadata),
            Err(e @ StoreError::Conflict(_)) => {
                self.refresh_template(&t.name).await;
                return Err(e);
            }
            Err(e @ StoreError::NotFound(_)) => {
                self.refresh_template(&t.name).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.cache.update_template(&t, expected_rv)
    }

    async fn delete_template(&self, name: String) -> Result<bool, StoreError> {
        let _w = self.write.lock().await;
        let what = format!("deleting sandboxtemplate {name}");
        let existed = match self.api(&what, self.templates().delete(&name, &DeleteParams::default())).await {
            Ok(_) => true,
            Err(StoreError::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        self.seen.lock().remove(&ObjKey::Template(name.clone()));
        Ok(self.cache.delete_template(&name)? || existed)
    }

    /// POST the pool's object (with our finalizer); creates a missing namespace first.
    async fn create_pool_object(&self, p: &Pool) -> Result<(), StoreError> {
        let mut cr = pool_to_cr(p);
        cr.metadata.finalizers = Some(vec![POOL_FINALIZER.into()]);
        let what = format!("creating sandboxpool {}/{}", p.namespace, p.name);
        let api = self.pools(&p.namespace);
        let created = match self.api(&what, api.create(&PostParams::default(), &cr)).await {
            Err(StoreError::NotFound(_)) => {
                self.create_namespace(&p.namespace).await?;
                self.api(&what, api.create(&PostParams::default(), &cr)).await?
            }
            r => r?,
        };
        self.remember(pool_key(&created), &created.metadata);
        Ok(())
    }

    async fn create_namespace(&self, ns: &str) -> Result<(), StoreError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                labels: Some([(labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = format!("creating namespace {ns} for its pools");
        match self.api(&what, api.create(&PostParams::default(), &obj)).await {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn create_pool(&self, p: Pool) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        match self.create_pool_object(&p).await {
            Ok(()) => {}
            Err(e @ StoreError::Conflict(_)) => {
                self.refresh_pool(&p.namespace, &p.name).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.cache_put_pool(&p)
    }

    async fn update_pool(&self, p: Pool, expected_rv: u64) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        let (ns, name) = (p.namespace.clone(), p.name.clone());
        let key = ObjKey::Pool(ns.clone(), name.clone());
        let cur = self.cache.get_pool(&ns, &name)?.ok_or_else(|| StoreError::NotFound(format!("pool {ns}/{name}")))?;
        if cur.resource_version != expected_rv {
            return Err(StoreError::Conflict(format!(
                "pool {ns}/{name}: resourceVersion {expected_rv} is stale (current {})",
                cur.resource_version
            )));
        }
        let api = self.pools(&ns);
        if comparable(&p) != comparable(&cur) {
            let what = format!("updating sandboxpool {ns}/{name}");
            let seen = match self.seen(&key) {
                Some(s) => Some(s),
                None => self.api(&what, api.get_opt(&name)).await?.map(|c| seen_of(&c.metadata)),
            };
            let mut cr = pool_to_cr(&p);
            let mut finalizers = seen.as_ref().map(|s| s.finalizers.clone()).unwrap_or_default();
            if !finalizers.iter().any(|f| f == POOL_FINALIZER) {
                finalizers.push(POOL_FINALIZER.into());
            }
            cr.metadata.finalizers = Some(finalizers);
            cr.metadata.resource_version = seen.map(|s| s.resource_version);
            match self.api(&what, api.replace(&name, &PostParams::default(), &cr)).await {
                Ok(cr) => self.remember(key.clone(), &cr.metadata),
                Err(e @ StoreError::Conflict(_)) => {
                    self.refresh_pool(&ns, &name).await;
                    return Err(e);
                }
                Err(StoreError::NotFound(_)) => {
                    self.pool_gone(&ns, &name, false).await?;
                    return Err(StoreError::Conflict(format!("sandboxpool {ns}/{name} was deleted in the cluster")));
                }
                Err(e) => return Err(e),
            }
        }
        if p.deleting && !cur.deleting {
            // The object stays (Terminating, held by our finalizer) until `delete_pool`.
            let what = format!("deleting sandboxpool {ns}/{name}");
            match self.api(&what, api.delete(&name, &DeleteParams::default())).await {
                Ok(either) => {
                    if let Some(cr) = either.left() {
                        self.remember(key, &cr.metadata);
                    }
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.cache.update_pool(&p, expected_rv)
    }

    async fn delete_pool(&self, ns: String, name: String) -> Result<bool, StoreError> {
        let _w = self.write.lock().await;
        let existed = self.release_pool_object(&ns, &name).await?;
        self.seen.lock().remove(&ObjKey::Pool(ns.clone(), name.clone()));
        Ok(self.cache.delete_pool(&ns, &name)? || existed)
    }
}

impl<S: Store> Store for KubeStore<S> {
    fn create_template(&self, t: &Template) -> Result<(), StoreError> {
        let t = t.clone();
        self.run(|i| async move { i.create_template(t).await })
    }

    fn update_template(&self, t: &Template, expected_rv: u64) -> Result<(), StoreError> {
        let t = t.clone();
        self.run(move |i| async move { i.update_template(t, expected_rv).await })
    }

    fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
        self.inner.cache.get_template(name)
    }

    fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        self.inner.cache.list_templates()
    }

    fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(|i| async move { i.delete_template(name).await })
    }

    fn create_pool(&self, p: &Pool) -> Result<(), StoreError> {
        let p = p.clone();
        self.run(|i| async move { i.create_pool(p).await })
    }

    fn update_pool(&self, p: &Pool, expected_rv: u64) -> Result<(), StoreError> {
        let p = p.clone();
        self.run(move |i| async move { i.update_pool(p, expected_rv).await })
    }

    fn get_pool(&self, namespace: &str, name: &str) -> Result<Option<Pool>, StoreError> {
        self.inner.cache.get_pool(namespace, name)
    }

    fn list_pools(&self, namespace: Option<&str>) -> Result<Vec<Pool>, StoreError> {
        self.inner.cache.list_pools(namespace)
    }

    fn delete_pool(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let (ns, name) = (namespace.to_owned(), name.to_owned());
        self.run(|i| async move { i.delete_pool(ns, name).await })
    }

    fn put_slot(&self, s: &Slot) -> Result<(), StoreError> {
        self.inner.cache.put_slot(s)
    }

    fn get_slot(&self, slot_id: &str) -> Result<Option<Slot>, StoreError> {
        self.inner.cache.get_slot(slot_id)
    }

    fn list_slots(&self) -> Result<Vec<Slot>, StoreError> {
        self.inner.cache.list_slots()
    }

    fn delete_slot(&self, slot_id: &str) -> Result<(), StoreError> {
        self.inner.cache.delete_slot(slot_id)
    }

    fn claim(&self, slot: &Slot, expected: SlotPhase, sandbox: &Sandbox) -> Result<(), StoreError> {
        self.inner.cache.claim(slot, expected, sandbox)
    }

    fn put_slot_and_sandbox(&self, slot: &Slot, sandbox: &Sandbox) -> Result<(), StoreError> {
        self.inner.cache.put_slot_and_sandbox(slot, sandbox)
    }

    fn put_sandbox(&self, s: &Sandbox) -> Result<(), StoreError> {
        self.inner.cache.put_sandbox(s)
    }

    fn get_sandbox(&self, sandbox_id: &str) -> Result<Option<Sandbox>, StoreError> {
        self.inner.cache.get_sandbox(sandbox_id)
    }

    fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<(Vec<Sandbox>, u64), StoreError> {
        self.inner.cache.list_sandboxes(filter)
    }

    fn count_sandboxes(
        &self,
        namespace: Option<&str>,
    ) -> Result<std::collections::BTreeMap<SandboxStatus, u64>, StoreError> {
        self.inner.cache.count_sandboxes(namespace)
    }

    fn prune_history(&self, before: &str) -> Result<u64, StoreError> {
        self.inner.cache.prune_history(before)
    }

    fn create_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let k = k.clone();
        self.run(|i| async move {
            if i.keys_call("creating an api key secret", i.keys.create(&k)).await? {
                Ok(())
            } else {
                Err(StoreError::Conflict(format!("api key {} exists", k.key_id)))
            }
        })
    }

    fn put_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let k = k.clone();
        self.run(|i| async move { i.keys_call("writing an api key secret", i.keys.put(&k)).await })
    }

    fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.run(|i| async move { i.keys_call("reading an api key secret", i.keys.get(&key_id)).await })
    }

    fn find_api_key_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let hash = token_hash.to_owned();
        self.run(|i| async move { i.keys_call("looking up an api key secret", i.keys.find_by_hash(&hash)).await })
    }

    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut keys = self.run(|i| async move { i.keys_call("listing api key secrets", i.keys.list()).await })?;
        keys.sort_by(|a, b| {
            (&a.team, &a.user, &a.issued_at, &a.key_id).cmp(&(&b.team, &b.user, &b.issued_at, &b.key_id))
        });
        Ok(keys)
    }

    fn delete_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        let key_id = key_id.to_owned();
        self.run(|i| async move { i.keys_call("deleting an api key secret", i.keys.delete(&key_id)).await })
    }

    fn create_quota(&self, q: &QuotaRecord) -> Result<(), StoreError> {
        self.inner.cache.create_quota(q)
    }

    fn update_quota(&self, q: &QuotaRecord, expected_rv: u64) -> Result<(), StoreError> {
        self.inner.cache.update_quota(q, expected_rv)
    }

    fn get_quota(&self, name: &str) -> Result<Option<QuotaRecord>, StoreError> {
        self.inner.cache.get_quota(name)
    }

    fn list_quotas(&self) -> Result<Vec<QuotaRecord>, StoreError> {
        self.inner.cache.list_quotas()
    }

    fn delete_quota(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.cache.delete_quota(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbox_core::model::Reservation;
    use agentbox_core::store::conformance::pool;

    #[test]
    fn bookkeeping_and_credentials_are_not_a_change() {
        let a = pool("ns", "p");
        let mut b = a.clone();
        b.resource_version = 9;
        b.created_at = "2020-01-01T00:00:00Z".into();
        b.deleting = true;
        assert_eq!(comparable(&a), comparable(&b));
        // The legacy quotaUrl and the reservation it means compare equal.
        let mut legacy = a.clone();
        legacy.spec.quota_url = Some("org.a".into());
        let mut reserved = a.clone();
        reserved.spec.reservation = Some(Reservation { quota_url: Some("org.a".into()) });
        assert_eq!(comparable(&legacy), comparable(&reserved));
        b.spec.replicas += 1;
        assert_ne!(comparable(&a), comparable(&b));
    }

    #[test]
    fn api_errors_map_to_store_errors_that_say_what_to_do() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "m".into(),
                ..kube::core::Status::failure("m", "r")
            }))
        };
        assert!(matches!(api_error("x", status(409)), StoreError::Conflict(_)));
        assert!(matches!(api_error("x", status(404)), StoreError::NotFound(_)));
        let forbidden = api_error("creating sandboxpool a/b", status(403)).to_string();
        assert!(forbidden.contains("creating sandboxpool a/b") && forbidden.contains("rbac"), "{forbidden}");
    }
}
