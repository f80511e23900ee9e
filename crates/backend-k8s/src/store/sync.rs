//! The cluster side of [`KubeStore`](super::KubeStore) that does not come from the engine:
//! applying what the cluster holds to the cache, the start-up sync, the watches, and the pool
//! deletion steps they share with the engine's writes.

use std::collections::BTreeSet;
use std::sync::Arc;

use agentbox_core::model::{Pool, Template, now_rfc3339};
use agentbox_core::store::{Store, StoreError};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::{Inner, LocalOnly, ObjKey, comparable, pool_key};
use crate::convert::{pool_from_cr, pull_secret_name, template_from_cr, template_to_cr};
use crate::crd::{SandboxPool, SandboxTemplate};
use crate::labels::POOL_FINALIZER;

impl<S: Store> Inner<S> {
    // --- applying what the cluster holds (caller holds `write`) -------------------------------

    /// Bring the cache's template in line with `cr`. `true` when the cache changed.
    pub(super) fn apply_template(&self, cr: &SandboxTemplate) -> Result<bool, StoreError> {
        let key = ObjKey::Template(cr.name_any());
        if self.already_seen(&key, &cr.metadata) {
            return Ok(false);
        }
        let changed = self.template_to_cache(cr)?;
        // Only once the cache holds it: after a failed cache write the same version, coming
        // again (a refresh, a relist), is applied again.
        self.remember(key.clone(), &cr.metadata);
        // The cluster has an object of that name now: it is no longer ours alone.
        self.local_only.lock().remove(&key);
        Ok(changed)
    }

    fn template_to_cache(&self, cr: &SandboxTemplate) -> Result<bool, StoreError> {
        let incoming = match template_from_cr(cr) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a SandboxTemplate that does not convert: fix or delete it with kubectl");
                return Ok(false);
            }
        };
        match self.cache.get_template(&incoming.name)? {
            None => {
                self.cache.create_template(&Template { resource_version: 1, ..incoming })?;
            }
            Some(cur) if cur.spec == incoming.spec => return Ok(false),
            Some(cur) => {
                // A kubectl edit keeps our annotation: then the change is from now.
                let updated_at =
                    if incoming.updated_at == cur.updated_at { now_rfc3339() } else { incoming.updated_at.clone() };
                let next = Template {
                    resource_version: cur.resource_version + 1,
                    created_at: cur.created_at.clone(),
                    updated_at,
                    ..incoming
                };
                self.cache.update_template(&next, cur.resource_version)?;
            }
        }
        tracing::info!(template = %cr.name_any(), "sandbox template changed in the cluster");
        Ok(true)
    }

    /// Bring the cache's pool in line with `cr` (and make sure the object has our finalizer).
    pub(super) async fn apply_pool(&self, cr: &SandboxPool) -> Result<(), StoreError> {
        let key = pool_key(cr);
        if self.already_seen(&key, &cr.metadata) {
            return Ok(());
        }
        let mut incoming = match pool_from_cr(cr) {
            Ok(p) => p,
            Err(e) => {
                self.remember(key, &cr.metadata);
                tracing::warn!(error = %e, "ignoring a SandboxPool that does not convert: fix or delete it with kubectl");
                return Ok(());
            }
        };
        let (ns, name) = (incoming.namespace.clone(), incoming.name.clone());
        self.local_only.lock().remove(&key);
        if incoming.deleting {
            self.pool_gone(&ns, &name, true).await?;
            // Still cached (marked deleting, its slots being destroyed): this version is applied.
            // Released, the pool is forgotten and so is its version.
            if self.cache.get_pool(&ns, &name)?.is_some() {
                self.remember(key, &cr.metadata);
            }
            return Ok(());
        }
        match self.cache.get_pool(&ns, &name)? {
            None => {
                incoming.resource_version = 1;
                self.cache.create_pool(&incoming)?;
                tracing::info!(namespace = %ns, pool = %name, "sandbox pool added in the cluster");
                self.notify(&ns, &name);
            }
            Some(cur) if comparable(&cur) == comparable(&incoming) => {}
            Some(cur) => {
                incoming.resource_version = cur.resource_version + 1;
                incoming.created_at = cur.created_at.clone();
                incoming.deleting = cur.deleting;
                let names_ours = cr.spec.overrides.as_ref().and_then(|o| o.image_pull_secret_name.as_deref())
                    == Some(pull_secret_name(&name).as_str());
                if names_ours {
                    incoming.overrides.image_pull_secret = cur.overrides.image_pull_secret.clone();
                }
                self.cache.update_pool(&incoming, cur.resource_version)?;
                tracing::info!(namespace = %ns, pool = %name, replicas = incoming.spec.replicas, "sandbox pool changed in the cluster");
                self.notify(&ns, &name);
            }
        }
        self.remember(key, &cr.metadata);
        if !cr.finalizers().iter().any(|f| f == POOL_FINALIZER) {
            self.add_finalizer(cr).await?;
        }
        Ok(())
    }

    /// A pool created with kubectl gets our finalizer, so that its deletion waits for its slots.
    pub(super) async fn add_finalizer(&self, cr: &SandboxPool) -> Result<(), StoreError> {
        let (ns, name) = (cr.namespace().unwrap_or_else(|| "default".into()), cr.name_any());
        let mut finalizers = cr.finalizers().to_vec();
        finalizers.push(POOL_FINALIZER.into());
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": cr.resource_version()}});
        let what = format!("adding the finalizer to sandboxpool {ns}/{name}");
        match self.api(&what, self.pools(&ns).patch(&name, &PatchParams::default(), &Patch::Merge(&patch))).await {
            Ok(updated) => {
                self.remember(pool_key(&updated), &updated.metadata);
                Ok(())
            }
            // Changed or gone meanwhile: the watch brings the newer version.
            Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The pool is being deleted in the cluster (`object_exists`: Terminating, held by our
    /// finalizer) or is gone from it. Without slots it is released and removed at once; with
    /// slots it is marked deleting, and its reconciler destroys them and then calls `delete_pool`.
    pub(super) async fn pool_gone(&self, ns: &str, name: &str, object_exists: bool) -> Result<(), StoreError> {
        if !self.has_slots(ns, name)? {
            if object_exists {
                self.release_pool_object(ns, name).await?;
            }
            self.seen.lock().remove(&ObjKey::Pool(ns.into(), name.into()));
            if self.cache.delete_pool(ns, name)? {
                tracing::info!(namespace = %ns, pool = %name, "sandbox pool deleted in the cluster");
                self.notify(ns, name);
            }
            return Ok(());
        }
        if let Some(cur) = self.cache.get_pool(ns, name)?
            && !cur.deleting
        {
            let next = Pool { deleting: true, resource_version: cur.resource_version + 1, ..cur.clone() };
            self.cache.update_pool(&next, cur.resource_version)?;
            tracing::info!(namespace = %ns, pool = %name, "sandbox pool deleted in the cluster; destroying its slots");
            self.notify(ns, name);
        }
        Ok(())
    }

    /// Remove our finalizer from the pool's object and delete it. `false` when there was none.
    pub(super) async fn release_pool_object(&self, ns: &str, name: &str) -> Result<bool, StoreError> {
        let api = self.pools(ns);
        for _ in 0..3 {
            let what = format!("reading sandboxpool {ns}/{name}");
            let Some(cr) = self.api(&what, api.get_opt(name)).await? else { return Ok(false) };
            if cr.finalizers().iter().any(|f| f == POOL_FINALIZER) {
                let rest: Vec<&String> = cr.finalizers().iter().filter(|f| *f != POOL_FINALIZER).collect();
                let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": cr.resource_version()}});
                let what = format!("removing the finalizer of sandboxpool {ns}/{name}");
                match self.api(&what, api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))).await {
                    Ok(_) => {}
                    Err(StoreError::Conflict(_)) => continue,
                    Err(StoreError::NotFound(_)) => return Ok(true),
                    Err(e) => return Err(e),
                }
            }
            if cr.metadata.deletion_timestamp.is_none() {
                let what = format!("deleting sandboxpool {ns}/{name}");
                match self.api(&what, api.delete(name, &DeleteParams::default())).await {
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(true);
        }
        Err(StoreError::Conflict(format!("sandboxpool {ns}/{name} keeps changing in the cluster; retry")))
    }

    /// Re-read one template from the cluster into the cache (after a conflict). Best effort.
    pub(super) async fn refresh_template(&self, name: &str) {
        let what = format!("reading sandboxtemplate {name}");
        let result = match self.api(&what, self.templates().get_opt(name)).await {
            Ok(Some(cr)) => self.apply_template(&cr).map(|_| ()),
            // Never in the cluster (its import failed): not a deletion there.
            Ok(None) if self.is_local_only(&ObjKey::Template(name.into())) => Ok(()),
            Ok(None) => {
                self.seen.lock().remove(&ObjKey::Template(name.into()));
                self.cache.delete_template(name).map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(template = name, error = %e, "could not refresh the template from the cluster");
        }
    }

    /// Re-read one pool from the cluster into the cache (after a conflict). Best effort.
    pub(super) async fn refresh_pool(&self, ns: &str, name: &str) {
        let what = format!("reading sandboxpool {ns}/{name}");
        let result = match self.api(&what, self.pools(ns).get_opt(name)).await {
            Ok(Some(cr)) => self.apply_pool(&cr).await,
            Ok(None) if self.is_local_only(&ObjKey::Pool(ns.into(), name.into())) => Ok(()),
            Ok(None) => self.pool_gone(ns, name, false).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(namespace = ns, pool = name, error = %e, "could not refresh the pool from the cluster");
        }
    }

    // --- start-up and watches ------------------------------------------------------------------

    pub(super) async fn initial_sync(&self) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        let lp = ListParams::default();
        let crds_missing = |e: StoreError| match e {
            StoreError::NotFound(m) => StoreError::Backend(format!(
                "{m}: the agentbox CRDs are not installed: install them with `kubectl apply -f deploy/crds/`"
            )),
            e => e,
        };
        let templates =
            self.api("listing sandboxtemplates", self.templates().list(&lp)).await.map_err(crds_missing)?.items;
        let all_pools: Api<SandboxPool> = Api::all(self.client.clone());
        let pools = self.api("listing sandboxpools", all_pools.list(&lp)).await.map_err(crds_missing)?.items;
        let import = self.cfg.local_only == LocalOnly::Import;

        let mut in_cluster = BTreeSet::new();
        for cr in &templates {
            in_cluster.insert(cr.name_any());
            self.apply_template(cr)?;
        }
        for t in self.cache.list_templates()? {
            if in_cluster.contains(&t.name) {
                continue;
            }
            if import {
                let what = format!("importing template {} as a SandboxTemplate", t.name);
                match self.api(&what, self.templates().create(&PostParams::default(), &template_to_cr(&t))).await {
                    Ok(cr) => {
                        self.remember(ObjKey::Template(t.name.clone()), &cr.metadata);
                        tracing::info!(template = %t.name, "imported the template into the cluster");
                    }
                    Err(e) => {
                        tracing::warn!(template = %t.name, error = %e, "the template stays local only");
                        self.local_only.lock().insert(ObjKey::Template(t.name.clone()));
                        self.not_imported.lock().push(format!("template {}", t.name));
                    }
                }
            } else {
                self.cache.delete_template(&t.name)?;
                tracing::info!(template = %t.name, "template deleted in the cluster while the server was down");
            }
        }

        let mut in_cluster = BTreeSet::new();
        for cr in &pools {
            if let ObjKey::Pool(ns, name) = pool_key(cr) {
                in_cluster.insert((ns, name));
            }
            self.apply_pool(cr).await?;
        }
        for p in self.cache.list_pools(None)? {
            if in_cluster.contains(&(p.namespace.clone(), p.name.clone())) || p.deleting {
                // A local pool marked deleting is being drained by the engine; it finishes it.
                continue;
            }
            if import {
                // The cluster answered the lists above: a refusal here is about this pool (its
                // namespace, a field the schema rejects), and the pool stays local rather than lost.
                match self.create_pool_object(&p).await {
                    Ok(created) => {
                        self.remember(pool_key(&created), &created.metadata);
                        tracing::info!(namespace = %p.namespace, pool = %p.name, "imported the pool into the cluster")
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %p.namespace, pool = %p.name, error = %e, "the pool stays local only");
                        self.local_only.lock().insert(ObjKey::Pool(p.namespace.clone(), p.name.clone()));
                        self.not_imported.lock().push(format!("pool {}/{}", p.namespace, p.name));
                    }
                }
            } else {
                self.pool_gone(&p.namespace, &p.name, false).await?;
            }
        }

        if import {
            let local = self.cache.list_api_keys()?;
            if !local.is_empty() {
                let remote: BTreeSet<String> = self
                    .keys_call("listing api key secrets", self.keys.list())
                    .await?
                    .into_iter()
                    .map(|k| k.key_id)
                    .collect();
                for k in local.iter().filter(|k| !remote.contains(&k.key_id)) {
                    // One key the cluster refuses (a malformed row, a quota on Secrets) does not
                    // stop the others, nor the server: it stays in the local store, and the next
                    // start imports again.
                    match self.keys_call("importing an api key as a secret", self.keys.create(k)).await {
                        Ok(_) => tracing::info!(key = %k.key_id, "imported the api key into a secret"),
                        Err(e) => {
                            tracing::warn!(key = %k.key_id, error = %e, "the api key stays local only (not usable until imported)");
                            self.not_imported.lock().push(format!("api key {}", k.key_id));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn spawn_watches(self: Arc<Self>) {
        let me = Arc::clone(&self);
        tokio::spawn(async move {
            let mut stream = Box::pin(watcher(me.templates(), watcher::Config::default()).default_backoff());
            let mut listed: Option<BTreeSet<String>> = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => me.on_template_event(event, &mut listed).await,
                    Err(e) => tracing::warn!(error = %e, "sandboxtemplate watch failed; retrying"),
                }
            }
        });
        tokio::spawn(async move {
            let all: Api<SandboxPool> = Api::all(self.client.clone());
            let mut stream = Box::pin(watcher(all, watcher::Config::default()).default_backoff());
            let mut listed: Option<BTreeSet<(String, String)>> = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => self.on_pool_event(event, &mut listed).await,
                    Err(e) => tracing::warn!(error = %e, "sandboxpool watch failed; retrying"),
                }
            }
        });
    }

    pub(super) async fn on_template_event(
        &self,
        event: watcher::Event<SandboxTemplate>,
        listed: &mut Option<BTreeSet<String>>,
    ) {
        let _w = self.write.lock().await;
        let result = match event {
            watcher::Event::Init => {
                *listed = Some(BTreeSet::new());
                Ok(())
            }
            watcher::Event::InitApply(cr) => {
                if let Some(l) = listed.as_mut() {
                    l.insert(cr.name_any());
                }
                self.apply_template(&cr).map(|_| ())
            }
            watcher::Event::Apply(cr) => self.apply_template(&cr).map(|_| ()),
            // A deletion older than what we know (the object was created again since) is stale.
            watcher::Event::Delete(cr) if self.already_seen(&ObjKey::Template(cr.name_any()), &cr.metadata) => Ok(()),
            watcher::Event::Delete(cr) => {
                self.seen.lock().remove(&ObjKey::Template(cr.name_any()));
                self.cache.delete_template(&cr.name_any()).map(|_| ())
            }
            watcher::Event::InitDone => {
                // Deletions the watch may have missed while it was down: confirm each one.
                let listed = listed.take().unwrap_or_default();
                match self.cache.list_templates() {
                    Ok(all) => {
                        for t in all.into_iter().filter(|t| {
                            !listed.contains(&t.name) && !self.is_local_only(&ObjKey::Template(t.name.clone()))
                        }) {
                            self.refresh_template(&t.name).await;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying a sandboxtemplate change to the cache failed");
        }
    }

    pub(super) async fn on_pool_event(
        &self,
        event: watcher::Event<SandboxPool>,
        listed: &mut Option<BTreeSet<(String, String)>>,
    ) {
        let _w = self.write.lock().await;
        let result = match event {
            watcher::Event::Init => {
                *listed = Some(BTreeSet::new());
                Ok(())
            }
            watcher::Event::InitApply(cr) => {
                if let (Some(l), ObjKey::Pool(ns, name)) = (listed.as_mut(), pool_key(&cr)) {
                    l.insert((ns, name));
                }
                self.apply_pool(&cr).await
            }
            watcher::Event::Apply(cr) => self.apply_pool(&cr).await,
            watcher::Event::Delete(cr) if self.already_seen(&pool_key(&cr), &cr.metadata) => Ok(()),
            watcher::Event::Delete(cr) => {
                let ObjKey::Pool(ns, name) = pool_key(&cr) else { unreachable!("pool_key gives a pool key") };
                self.pool_gone(&ns, &name, false).await
            }
            watcher::Event::InitDone => {
                let listed = listed.take().unwrap_or_default();
                match self.cache.list_pools(None) {
                    Ok(all) => {
                        for p in all.into_iter().filter(|p| {
                            !p.deleting
                                && !listed.contains(&(p.namespace.clone(), p.name.clone()))
                                && !self.is_local_only(&ObjKey::Pool(p.namespace.clone(), p.name.clone()))
                        }) {
                            self.refresh_pool(&p.namespace, &p.name).await;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying a sandboxpool change to the cache failed");
        }
    }
}
