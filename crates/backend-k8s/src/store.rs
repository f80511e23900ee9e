//! [`KubeStore`]: the core's [`Store`] in Kubernetes mode. `SandboxTemplate` and `SandboxPool`
//! custom resources are the source of truth for templates and pools, API keys are Secrets
//! ([`crate::keys`]); a local store `S` (SQLite in `agentbox serve`) is the read cache of templates
//! and pools and keeps everything the cluster does not (slots, sandboxes, history, quotas).
//!
//! - **Writes** of templates and pools go to the API server first (create / replace with the
//!   object's last seen `resourceVersion` / delete), then to the cache. A 409 on a replace whose
//!   object only changed outside its spec (the status subresource, metadata) is retried once
//!   with the fresh `resourceVersion`; any other 409 from the API server
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
//!   once, see [`LocalOnly`], and then left alone). A token hash that no Secret has is
//!   remembered for [`KubeStoreConfig::unknown_key_ttl`], so that random keys presented to the
//!   server do not each cost an API call; a key created or written through this store is
//!   found at once (another replica's new key may be refused for up to that TTL).
//! - **Objects that failed to import** at the first start (see [`LocalOnly::Import`]) stay in the
//!   cache and are never taken for deletions in the cluster; the next write of one through the
//!   engine creates its object. [`KubeStore::imports_complete`] says whether there were any.
//! - Everything else delegates to the cache unchanged.
//!
//! The [`Store`] trait is synchronous and the engine calls it from async tasks (also on
//! current-thread runtimes), so the cluster side runs on a dedicated thread with its own Tokio
//! runtime and Kubernetes client; a store call hands it a job and waits for the answer, every API
//! call bounded by [`KubeStoreConfig::call_timeout`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentbox_core::identity::{ApiKeyRecord, QuotaRecord};
use agentbox_core::model::{Pool, Sandbox, SandboxStatus, Slot, SlotPhase, Template};
use agentbox_core::store::{SandboxFilter, Store, StoreError};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;

use crate::convert::{pool_from_cr, pool_to_cr, template_from_cr, template_to_cr};
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
    /// before is lost). One the cluster refuses (a pool whose namespace cannot be written, an
    /// api key Secret that cannot be created) stays local, with a warning, and is listed by
    /// [`KubeStore::not_imported`]: start with `Import` again until
    /// [`KubeStore::imports_complete`].
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
    /// How long a token hash that no Secret has is answered "unknown" without asking the API
    /// server again (keys created through this store are found at once regardless).
    pub unknown_key_ttl: Duration,
}

impl KubeStoreConfig {
    /// Keys in `key_namespace`, 10 s per API call, [`LocalOnly::Import`], watching, unknown keys
    /// remembered for 10 s.
    pub fn new(key_namespace: impl Into<String>) -> Self {
        KubeStoreConfig {
            key_namespace: key_namespace.into(),
            call_timeout: Duration::from_secs(10),
            local_only: LocalOnly::Import,
            watch: true,
            unknown_key_ttl: Duration::from_secs(10),
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
    /// Templates and pools in the cache that the start-up import could not create in the
    /// cluster: never taken for deletions there (see [`LocalOnly::Import`]).
    local_only: Mutex<HashSet<ObjKey>>,
    /// What the start-up import left local, for the operator ("template x", "pool ns/p",
    /// "api key agbx-…").
    not_imported: Mutex<Vec<String>>,
    /// Token hashes no Secret had, and when that was seen.
    unknown_keys: Mutex<HashMap<String, Instant>>,
    /// Moves on every key written through the store: a lookup that started before a write does
    /// not remember its hash as unknown.
    key_writes: AtomicU64,
}

/// Most token hashes remembered as unknown (past it, the expired ones are dropped, then all).
const MAX_UNKNOWN_KEYS: usize = 4096;

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
                    local_only: Mutex::new(HashSet::new()),
                    not_imported: Mutex::new(Vec::new()),
                    unknown_keys: Mutex::new(HashMap::new()),
                    key_writes: AtomicU64::new(0),
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

    /// Whether the start-up import (with [`LocalOnly::Import`]) created everything the local
    /// store had in the cluster. `false` means some objects stayed local only
    /// ([`not_imported`](Self::not_imported)): the next start should import again rather than
    /// let the cluster win. Always `true` with [`LocalOnly::Drop`].
    pub fn imports_complete(&self) -> bool {
        self.inner.not_imported.lock().is_empty()
    }

    /// What the start-up import could not create in the cluster ("template NAME", "pool NS/NAME",
    /// "api key ID"); each was logged with the reason.
    pub fn not_imported(&self) -> Vec<String> {
        self.inner.not_imported.lock().clone()
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

    fn is_local_only(&self, key: &ObjKey) -> bool {
        self.local_only.lock().contains(key)
    }

    /// Whether `hash` was looked up without a match less than the TTL ago.
    fn known_unknown(&self, hash: &str) -> bool {
        let ttl = self.cfg.unknown_key_ttl;
        let mut unknown = self.unknown_keys.lock();
        match unknown.get(hash) {
            Some(at) if at.elapsed() < ttl => true,
            Some(_) => {
                unknown.remove(hash);
                false
            }
            None => false,
        }
    }

    /// Remember that no Secret has `hash`, unless a key was written since the lookup began
    /// (`writes_before`): that key may be this one.
    fn remember_unknown(&self, hash: String, writes_before: u64) {
        if self.cfg.unknown_key_ttl.is_zero() || self.key_writes.load(Ordering::SeqCst) != writes_before {
            return;
        }
        let ttl = self.cfg.unknown_key_ttl;
        let mut unknown = self.unknown_keys.lock();
        if unknown.len() >= MAX_UNKNOWN_KEYS {
            unknown.retain(|_, at| at.elapsed() < ttl);
            if unknown.len() >= MAX_UNKNOWN_KEYS {
                unknown.clear();
            }
        }
        unknown.insert(hash, Instant::now());
    }

    /// A key with `hash` was (or may have been) written: it is no longer unknown.
    fn key_written(&self, hash: &str) {
        self.key_writes.fetch_add(1, Ordering::SeqCst);
        self.unknown_keys.lock().remove(hash);
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
        let cr = match self.api(&what, self.templates().create(&PostParams::default(), &template_to_cr(&t))).await {
            Ok(cr) => cr,
            Err(e @ StoreError::Conflict(_)) => {
                self.refresh_template(&t.name).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.cache_put_template(&t)?;
        // Only once the cache holds it: if the cache write failed, the watch event of this
        // version is not taken for one already applied, and brings the cache in line.
        self.remember(ObjKey::Template(t.name.clone()), &cr.metadata);
        Ok(())
    }

    /// Replace the template's object with `cr`. A 409 whose object kept the spec `cur` (the
    /// cache's before this write: only its status or metadata moved, which bumps the
    /// `resourceVersion` we replace with) is retried once with the fresh version.
    async fn replace_template(
        &self,
        what: &str,
        cur: &Template,
        mut cr: SandboxTemplate,
    ) -> Result<SandboxTemplate, StoreError> {
        let api = self.templates();
        let pp = PostParams::default();
        let conflict = match self.api(what, api.replace(&cur.name, &pp, &cr)).await {
            Err(StoreError::Conflict(m)) => m,
            r => return r,
        };
        let fresh = self.api(what, api.get_opt(&cur.name)).await.ok().flatten();
        match fresh {
            Some(f)
                if f.metadata.deletion_timestamp.is_none()
                    && template_from_cr(&f).is_ok_and(|now| now.spec == cur.spec) =>
            {
                cr.metadata.resource_version = f.metadata.resource_version.clone();
                self.api(what, api.replace(&cur.name, &pp, &cr)).await
            }
            _ => Err(StoreError::Conflict(conflict)),
        }
    }

    /// Create the object of a template or pool the start-up import left local, now that the
    /// engine writes it; from then on it is like any other.
    async fn import_now(
        &self,
        key: &ObjKey,
        what: &str,
        create: impl Future<Output = Result<ObjectMeta, StoreError>>,
    ) -> Result<ObjectMeta, StoreError> {
        let meta = create.await.map_err(|e| match e {
            StoreError::Conflict(m) => StoreError::Conflict(m),
            e => StoreError::Backend(format!(
                "{what}: it stayed local at the first start and cannot be created in the cluster: {e}"
            )),
        })?;
        self.local_only.lock().remove(key);
        Ok(meta)
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
        let meta = if self.is_local_only(&key) {
            let create = async {
                let created = self.api(&what, self.templates().create(&PostParams::default(), &cr)).await?;
                Ok(created.metadata)
            };
            match self.import_now(&key, &what, create).await {
                Ok(meta) => meta,
                Err(e @ StoreError::Conflict(_)) => {
                    self.local_only.lock().remove(&key);
                    self.refresh_template(&t.name).await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        } else {
            cr.metadata.resource_version = match self.seen(&key) {
                Some(s) => Some(s.resource_version),
                None => {
                    self.api(&what, self.templates().get_opt(&t.name)).await?.and_then(|c| c.metadata.resource_version)
                }
            };
            match self.replace_template(&what, &cur, cr).await {
                Ok(cr) => cr.metadata,
                Err(e @ (StoreError::Conflict(_) | StoreError::NotFound(_))) => {
                    self.refresh_template(&t.name).await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        };
        self.cache.update_template(&t, expected_rv)?;
        self.remember(key, &meta);
        Ok(())
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
        self.local_only.lock().remove(&ObjKey::Template(name.clone()));
        Ok(self.cache.delete_template(&name)? || existed)
    }

    /// POST the pool's object (with our finalizer); creates a missing namespace first. The
    /// caller remembers the created version once the cache holds the pool.
    async fn create_pool_object(&self, p: &Pool) -> Result<SandboxPool, StoreError> {
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
        Ok(created)
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
        let created = match self.create_pool_object(&p).await {
            Ok(cr) => cr,
            Err(e @ StoreError::Conflict(_)) => {
                self.refresh_pool(&p.namespace, &p.name).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.cache_put_pool(&p)?;
        self.remember(pool_key(&created), &created.metadata);
        Ok(())
    }

    /// Replace the pool's object with `cr` (see [`replace_template`](Self::replace_template)
    /// for the one retry; the fresh object's finalizers are kept).
    async fn replace_pool(&self, what: &str, cur: &Pool, mut cr: SandboxPool) -> Result<SandboxPool, StoreError> {
        let api = self.pools(&cur.namespace);
        let pp = PostParams::default();
        let conflict = match self.api(what, api.replace(&cur.name, &pp, &cr)).await {
            Err(StoreError::Conflict(m)) => m,
            r => return r,
        };
        let fresh = self.api(what, api.get_opt(&cur.name)).await.ok().flatten();
        match fresh {
            Some(f)
                if f.metadata.deletion_timestamp.is_none()
                    && pool_from_cr(&f).is_ok_and(|now| comparable(&now) == comparable(cur)) =>
            {
                let mut finalizers = f.metadata.finalizers.clone().unwrap_or_default();
                if !finalizers.iter().any(|x| x == POOL_FINALIZER) {
                    finalizers.push(POOL_FINALIZER.into());
                }
                cr.metadata.finalizers = Some(finalizers);
                cr.metadata.resource_version = f.metadata.resource_version.clone();
                self.api(what, api.replace(&cur.name, &pp, &cr)).await
            }
            _ => Err(StoreError::Conflict(conflict)),
        }
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
        // The newest version of the object this write made, remembered once the cache has it.
        let mut latest: Option<ObjectMeta> = None;
        if self.is_local_only(&key) {
            let what = format!("updating sandboxpool {ns}/{name}");
            let create = async { Ok(self.create_pool_object(&p).await?.metadata) };
            match self.import_now(&key, &what, create).await {
                Ok(meta) => latest = Some(meta),
                Err(e @ StoreError::Conflict(_)) => {
                    self.local_only.lock().remove(&key);
                    self.refresh_pool(&ns, &name).await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        } else if comparable(&p) != comparable(&cur) {
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
            match self.replace_pool(&what, &cur, cr).await {
                Ok(cr) => latest = Some(cr.metadata),
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
                        latest = Some(cr.metadata);
                    }
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.cache.update_pool(&p, expected_rv)?;
        if let Some(meta) = latest {
            self.remember(key, &meta);
        }
        Ok(())
    }

    async fn delete_pool(&self, ns: String, name: String) -> Result<bool, StoreError> {
        let _w = self.write.lock().await;
        let existed = self.release_pool_object(&ns, &name).await?;
        self.seen.lock().remove(&ObjKey::Pool(ns.clone(), name.clone()));
        self.local_only.lock().remove(&ObjKey::Pool(ns.clone(), name.clone()));
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
            let created = i.keys_call("creating an api key secret", i.keys.create(&k)).await;
            // Also after an error: the Secret may have been created all the same.
            i.key_written(&k.token_hash);
            if created? { Ok(()) } else { Err(StoreError::Conflict(format!("api key {} exists", k.key_id))) }
        })
    }

    fn put_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let k = k.clone();
        self.run(|i| async move {
            let r = i.keys_call("writing an api key secret", i.keys.put(&k)).await;
            i.key_written(&k.token_hash);
            r
        })
    }

    fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.run(|i| async move { i.keys_call("reading an api key secret", i.keys.get(&key_id)).await })
    }

    fn find_api_key_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        if self.inner.known_unknown(token_hash) {
            return Ok(None);
        }
        let hash = token_hash.to_owned();
        let writes_before = self.inner.key_writes.load(Ordering::SeqCst);
        let found =
            self.run(|i| async move { i.keys_call("looking up an api key secret", i.keys.find_by_hash(&hash)).await })?;
        if found.is_none() {
            self.inner.remember_unknown(token_hash.to_owned(), writes_before);
        }
        Ok(found)
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
