//! [`KubeBackend`]: the core's [`Backend`] over the Kubernetes API. A slot is a Pod named after the
//! slot id, in the namespace of its pool.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use agentbox_core::backend::{
    Backend, BackendError, ExecOutput, ExecRequest, LogFollow, LogLine, PoolStatusReport, PtyRequest, PtySession,
    SlotObservation, SlotSpec,
};
use agentbox_core::model::{ContainerSpec, RegistryCredential};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use parking_lot::Mutex;
use serde_json::json;

use crate::claim::{Reservations, claim_patch, is_label_value, release_patch};
use crate::crd::SandboxPool;
use crate::error::{KubeError, is_code};
use crate::labels;
pub use crate::pod::AgentInjection;
use crate::pod::{PodOptions, PoolOwner, Progress, build_pod, image_patch, observe, progress};

/// Field manager name for server-side apply.
pub(crate) const FIELD_MANAGER: &str = "agentbox";

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubeBackendConfig {
    /// How the in-sandbox agent gets into each Pod; `None`: no agent (exec and the E2B protocol do
    /// not work in the sandboxes).
    pub agent: Option<AgentInjection>,
    /// How long `create_slot` waits for a new Pod's containers to run (image pulls included).
    pub create_timeout: Duration,
    /// How long `switch` waits for the kubelet to run the new images.
    pub switch_timeout: Duration,
    /// How often a wait re-reads the Pod.
    pub poll_interval: Duration,
    /// Refuse to create a slot whose pool has no `SandboxPool` object (which owns the Pods, so that
    /// deleting the pool deletes them). `false`: create the Pod without an owner reference.
    pub require_pool_object: bool,
    /// `terminationGracePeriodSeconds` of slot Pods (`None`: the cluster default, 30 s).
    pub termination_grace_period_seconds: Option<i64>,
}

impl Default for KubeBackendConfig {
    fn default() -> Self {
        KubeBackendConfig {
            agent: None,
            create_timeout: Duration::from_secs(300),
            switch_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(250),
            require_pool_object: true,
            termination_grace_period_seconds: Some(5),
        }
    }
}

/// The Kubernetes backend. Cheap to share behind an `Arc`; safe to call concurrently.
pub struct KubeBackend {
    client: Client,
    cfg: KubeBackendConfig,
    /// Namespace of every slot seen (the trait names slots by id only).
    namespaces: Mutex<HashMap<String, String>>,
    /// Claims in flight in this process (never two patches for one Pod at once).
    reservations: Reservations,
    /// Informer cache of the slot Pods ([`crate::informer`]), read by claims when set.
    pod_cache: Option<kube::runtime::reflector::Store<Pod>>,
    /// Where warnings go as Events ([`crate::events`]), when set.
    warnings: Option<crate::events::Warnings>,
    /// Condition transition times of the pool statuses published, by (namespace, pool).
    status_times: Mutex<HashMap<(String, String), crate::status::TransitionTimes>>,
    /// Cumulative CPU counters integrated from metrics-server's rates ([`crate::usage`]).
    cpu_clock: crate::usage::CpuClock,
    /// CPU (nanocores) and memory (bytes) capacity by node name, for Pods without limits, with
    /// the time of a failed read (retried after [`NODE_RETRY`]).
    node_capacity: Mutex<HashMap<String, (crate::usage::Capacity, Option<Instant>)>>,
}

/// How long a node whose capacity could not be read is taken as unknown before it is read again
/// (e.g. after the RBAC right to `get` nodes was granted).
const NODE_RETRY: Duration = Duration::from_secs(60);

impl KubeBackend {
    /// A backend over an existing client (e.g. one built on a mocked service in tests). Does not
    /// talk to the API; see [`KubeBackend::check`].
    pub fn new(client: Client, cfg: KubeBackendConfig) -> Self {
        KubeBackend {
            client,
            cfg,
            namespaces: Mutex::new(HashMap::new()),
            reservations: Reservations::default(),
            pod_cache: None,
            warnings: None,
            status_times: Mutex::new(HashMap::new()),
            cpu_clock: Default::default(),
            node_capacity: Mutex::new(HashMap::new()),
        }
    }

    /// Connect with the inferred configuration (`KUBECONFIG`, `~/.kube/config`, or the in-cluster
    /// service account) and [`check`](Self::check) that the API answers and the CRDs are installed.
    pub async fn connect(cfg: KubeBackendConfig) -> Result<Self, KubeError> {
        let kc = kube::Config::infer().await.map_err(|e| KubeError::NoConfig(e.to_string()))?;
        Self::connect_with(kc, cfg).await
    }

    /// Like [`connect`](Self::connect), with an explicit client configuration.
    pub async fn connect_with(kc: kube::Config, cfg: KubeBackendConfig) -> Result<Self, KubeError> {
        let url = kc.cluster_url.to_string();
        let client =
            Client::try_from(kc).map_err(|e| KubeError::Unreachable { url: url.clone(), message: e.to_string() })?;
        let backend = Self::new(client, cfg);
        backend.check(&url).await?;
        Ok(backend)
    }

    /// Ask the API server for its version (10 s at most), then for the `SandboxPool` CRD. `url`
    /// only names the server in the error.
    pub async fn check(&self, url: &str) -> Result<(), KubeError> {
        let unreachable = |message: String| KubeError::Unreachable { url: url.to_owned(), message };
        match tokio::time::timeout(Duration::from_secs(10), self.client.apiserver_version()).await {
            Err(_) => return Err(unreachable("no answer within 10s".into())),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(v)) => tracing::info!(version = %v.git_version, url, "kubernetes api reachable"),
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let name = format!("{}.{}", SandboxPool::plural(&()), SandboxPool::group(&()));
        match crds.get_opt(&name).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(KubeError::CrdsMissing(name)),
            // Without the right to read CRDs, find out when the first pool is used.
            Err(e) if is_code(&e, 403) => {
                tracing::warn!(crd = %name, "cannot read CRDs (forbidden); assuming they are installed");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Let claims read slot Pods from this informer cache (see [`crate::informer::pod_informer`])
    /// instead of a GET each. A Pod missing from the cache is read from the API.
    /// Publish the engine's warnings as Kubernetes Events (see [`Backend::warning`]).
    pub fn with_warnings(mut self, warnings: crate::events::Warnings) -> Self {
        self.warnings = Some(warnings);
        self
    }

    pub fn with_pod_cache(mut self, cache: kube::runtime::reflector::Store<Pod>) -> Self {
        self.pod_cache = Some(cache);
        self
    }

    /// The slot's Pod from the informer cache, if there is one and it has the Pod.
    fn cached(&self, slot: &str) -> Option<(String, Pod)> {
        let pod = self.pod_cache.as_ref()?.find(|p| p.metadata.name.as_deref() == Some(slot))?;
        let ns = pod.metadata.namespace.clone()?;
        self.remember(slot, &ns);
        Some((ns, (*pod).clone()))
    }

    /// The client this backend uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn remember(&self, slot: &str, namespace: &str) {
        self.namespaces.lock().insert(slot.to_owned(), namespace.to_owned());
    }

    /// The slot's Pod, wherever it is: the namespace seen last, else a cluster-wide search by name
    /// among agentbox Pods.
    async fn find(&self, slot: &str) -> Result<Option<(String, Pod)>, KubeError> {
        let known = self.namespaces.lock().get(slot).cloned();
        if let Some(ns) = known {
            if let Some(p) = self.pods(&ns).get_opt(slot).await? {
                return Ok(Some((ns, p)));
            }
            self.namespaces.lock().remove(slot);
            return Ok(None);
        }
        let all: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(labels::POOL).fields(&format!("metadata.name={slot}"));
        let found = all.list(&lp).await?.items.into_iter().next();
        Ok(found.map(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            self.remember(slot, &ns);
            (ns, p)
        }))
    }

    async fn find_required(&self, slot: &str) -> Result<(String, Pod), BackendError> {
        self.find(slot).await?.ok_or_else(|| BackendError::SlotNotFound(slot.to_owned()))
    }

    /// The pool object's owner reference for a slot Pod, and the pull Secret its
    /// `overrides.imagePullSecretName` names (a pool made with kubectl that points at a Secret it
    /// manages itself).
    async fn pool_owner(&self, namespace: &str, pool: &str) -> Result<(Option<PoolOwner>, Option<String>), KubeError> {
        let pools: Api<SandboxPool> = Api::namespaced(self.client.clone(), namespace);
        match pools.get_opt(pool).await? {
            Some(p) => {
                let secret = p.spec.overrides.as_ref().and_then(|o| o.image_pull_secret_name.clone());
                Ok((p.metadata.uid.map(|uid| PoolOwner { name: pool.to_owned(), uid }), secret))
            }
            None if self.cfg.require_pool_object => {
                Err(KubeError::PoolObjectMissing { namespace: namespace.into(), pool: pool.into() })
            }
            None => {
                tracing::warn!(namespace, pool, "no SandboxPool object: creating the slot pod without an owner");
                Ok((None, None))
            }
        }
    }

    /// Write the pool's registry credentials as a `kubernetes.io/dockerconfigjson` Secret (server-side
    /// apply, idempotent) and return its name.
    async fn apply_pull_secret(
        &self,
        namespace: &str,
        pool: &str,
        creds: &[RegistryCredential],
    ) -> Result<String, KubeError> {
        let name = crate::convert::pull_secret_name(pool);
        let auths: serde_json::Map<String, serde_json::Value> = creds
            .iter()
            .map(|c| (c.registry.clone(), json!({"username": c.username, "password": c.password})))
            .collect();
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {labels::POOL: pool}},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json!({"auths": auths}).to_string()},
        }))
        .expect("a valid Secret");
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret)).await?;
        Ok(name)
    }

    /// Re-read the Pod until it runs `want` (containers whose id is in `not_ids` do not count), it
    /// fails, or `timeout` passes.
    async fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        want: &BTreeMap<String, String>,
        not_ids: &[String],
        timeout: Duration,
    ) -> Result<Pod, BackendError> {
        let start = Instant::now();
        let pods = self.pods(namespace);
        loop {
            let pod = pods.get_opt(name).await.map_err(KubeError::from)?;
            let Some(pod) = pod else { return Err(BackendError::SlotNotFound(name.to_owned())) };
            let why = match progress(&pod, want, not_ids) {
                Progress::Done => return Ok(pod),
                Progress::Failed { image: Some(image), message } => return Err(BackendError::Image { image, message }),
                Progress::Failed { image: None, message } => {
                    return Err(BackendError::Runtime(format!("slot {name}: {message}")));
                }
                Progress::Pending(why) => why,
            };
            if start.elapsed() >= timeout {
                return Err(BackendError::Runtime(format!(
                    "slot {name} did not run its images within {}s ({why}): check `kubectl -n {namespace} describe pod {name}`",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }

    /// CPU (nanocores) and memory (bytes) capacity of node `name`, read once and cached; unknown
    /// (`None`) when the node cannot be read (e.g. no RBAC right to `get` nodes), and read again
    /// [`NODE_RETRY`] after such a failure.
    async fn node_capacity(&self, name: &str) -> crate::usage::Capacity {
        if let Some((c, failed_at)) = self.node_capacity.lock().get(name)
            && failed_at.is_none_or(|at| at.elapsed() < NODE_RETRY)
        {
            return *c;
        }
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let (cap, failed_at) = match nodes.get(name).await {
            Ok(n) => {
                let cap = n.status.and_then(|s| s.capacity).unwrap_or_default();
                let cap = (
                    cap.get("cpu").and_then(|q| crate::usage::parse_cpu_nanos(&q.0)),
                    cap.get("memory").and_then(|q| agentbox_core::quantity::parse_memory_bytes(&q.0).ok()),
                );
                (cap, None)
            }
            Err(e) => {
                tracing::debug!(node = name, error = %e, "cannot read the node's capacity; trying again in a minute");
                ((None, None), Some(Instant::now()))
            }
        };
        self.node_capacity.lock().insert(name.to_owned(), (cap, failed_at));
        cap
    }

    /// Remove our finalizer (if present) and delete the Pod; a missing Pod is fine.
    async fn remove_pod(&self, namespace: &str, name: &str) -> Result<(), KubeError> {
        let pods = self.pods(namespace);
        for _ in 0..3 {
            let Some(pod) = pods.get_opt(name).await? else { break };
            let finalizers = pod.metadata.finalizers.unwrap_or_default();
            let Some(i) = finalizers.iter().position(|f| f == labels::PROTECTION_FINALIZER) else { break };
            let patch = json!([
                {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": labels::PROTECTION_FINALIZER},
                {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
            ]);
            let patch = Patch::Json::<()>(serde_json::from_value(patch).expect("a valid JSON patch"));
            match pods.patch(name, &PatchParams::default(), &patch).await {
                Ok(_) => break,
                Err(e) if is_code(&e, 404) => return Ok(()),
                // The finalizer list changed under us (422: the test op failed, 409): read again.
                Err(e) if is_code(&e, 422) || is_code(&e, 409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, 404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The container of `pod` an exec goes to: `name`, or the Pod's first (main) container; it must
/// be running.
fn exec_target(slot: &str, pod: &Pod, name: Option<&str>) -> Result<String, BackendError> {
    let obs = observe(pod);
    let c = match name {
        Some(n) => obs.containers.iter().find(|c| c.name == n),
        None => obs.containers.first(),
    }
    .ok_or_else(|| BackendError::ContainerNotFound {
        slot: slot.to_owned(),
        container: name.unwrap_or("0").to_owned(),
    })?;
    if !c.state.is_running() {
        return Err(BackendError::NotRunning { slot: slot.to_owned(), container: c.name.clone() });
    }
    Ok(c.name.clone())
}

fn images_of(containers: &[ContainerSpec]) -> BTreeMap<String, String> {
    containers.iter().map(|c| (c.name.clone(), c.image.clone())).collect()
}

#[async_trait]
impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// The kubelet pulls images; a pull failure surfaces from `create_slot` or `switch` as
    /// [`BackendError::Image`].
    async fn prepare_image(&self, _image: &str, _credentials: &[RegistryCredential]) -> Result<(), BackendError> {
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(slot = %spec.slot_id, pool = %spec.pool, namespace = %spec.namespace))]
    async fn create_slot(&self, spec: &SlotSpec) -> Result<SlotObservation, BackendError> {
        if spec.containers.is_empty() {
            return Err(BackendError::Invalid("a slot needs at least one container".into()));
        }
        let ns = spec.namespace.as_str();
        let (owner, named_secret) = self.pool_owner(ns, &spec.pool).await?;
        // Credentials the server holds become the pool's pull Secret; without them, the Secret the
        // pool object names (if any) is used as it is.
        let pull_secret = if spec.registry_credentials.is_empty() {
            named_secret
        } else {
            Some(self.apply_pull_secret(ns, &spec.pool, &spec.registry_credentials).await?)
        };
        let opts = PodOptions {
            owner,
            agent: self.cfg.agent.clone(),
            pull_secret,
            termination_grace_period_seconds: self.cfg.termination_grace_period_seconds,
        };
        let pod = build_pod(spec, &opts);
        let pods = self.pods(ns);
        let created = match pods.create(&PostParams::default(), &pod).await {
            Ok(p) => p,
            // A retried create: adopt the Pod if it is this pool's.
            Err(e) if is_code(&e, 409) => {
                let existing = pods.get(&spec.slot_id).await.map_err(KubeError::from)?;
                let pool = existing.metadata.labels.as_ref().and_then(|l| l.get(labels::POOL));
                if pool != Some(&spec.pool) {
                    return Err(BackendError::Invalid(format!(
                        "a pod named {} already exists in namespace {ns} and is not a slot of pool {}: pick another slot id",
                        spec.slot_id, spec.pool
                    )));
                }
                existing
            }
            Err(e) => return Err(KubeError::from(e).into()),
        };
        let name = created.metadata.name.clone().unwrap_or_else(|| spec.slot_id.clone());
        self.remember(&name, ns);
        match self.wait_for(ns, &name, &images_of(&spec.containers), &[], self.cfg.create_timeout).await {
            Ok(pod) => Ok(observe(&pod)),
            Err(e) => {
                // On error nothing is left behind.
                if let Err(cleanup) = self.remove_pod(ns, &name).await {
                    tracing::warn!(slot = %name, error = %cleanup, "cannot delete the pod of a failed slot");
                }
                self.namespaces.lock().remove(&name);
                Err(e)
            }
        }
    }

    /// Patch the images of the Pod's containers (JSON patch, one `test` + `replace` per changed
    /// container) and wait until the kubelet reports every container running its new image in a new
    /// container. Only images change in place: command, args and env stay those the Pod was created
    /// with (a Kubernetes limit; the difference is logged).
    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn switch(
        &self,
        slot_id: &str,
        containers: &[ContainerSpec],
        credentials: &[RegistryCredential],
    ) -> Result<SlotObservation, BackendError> {
        let (ns, pod) = self.find_required(slot_id).await?;
        let Some(patch) = image_patch(&pod, containers).map_err(BackendError::Invalid)? else {
            return Ok(observe(&pod));
        };
        let spec_containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
        for (cur, want) in spec_containers.iter().zip(containers) {
            let differs = cur.command.clone().unwrap_or_default() != want.command
                || cur.args.clone().unwrap_or_default() != want.args
                || cur.working_dir != want.working_dir;
            if differs {
                tracing::debug!(
                    container = %want.name,
                    "kubernetes changes only the image in place; command, args and working dir stay as created"
                );
            }
        }
        if !credentials.is_empty() && pod.spec.as_ref().is_none_or(|s| s.image_pull_secrets.is_none()) {
            tracing::warn!(
                slot = slot_id,
                "registry credentials given to a switch of a pod created without a pull secret; the pull may fail"
            );
        }
        let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
        let old_ids: Vec<String> = statuses.iter().filter_map(|s| s.container_id.clone()).collect();
        let json_patch = Patch::Json::<()>(serde_json::from_value(patch).expect("a valid JSON patch"));
        match self.pods(&ns).patch(slot_id, &PatchParams::default(), &json_patch).await {
            Ok(_) => {}
            Err(e) if is_code(&e, 404) => return Err(BackendError::SlotNotFound(slot_id.to_owned())),
            Err(e) if is_code(&e, 422) => {
                return Err(BackendError::Invalid(format!(
                    "the pod of slot {slot_id} changed while switching images: {e}"
                )));
            }
            Err(e) => return Err(KubeError::from(e).into()),
        }
        let pod = self.wait_for(&ns, slot_id, &images_of(containers), &old_ids, self.cfg.switch_timeout).await?;
        Ok(observe(&pod))
    }

    /// Through the `pods/exec` subresource (see [`crate::exec`]): the engine's fallback when the
    /// in-sandbox agent does not answer, and the way into a named (sidecar) container.
    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn exec(&self, slot_id: &str, req: &ExecRequest) -> Result<ExecOutput, BackendError> {
        let argv = crate::exec::exec_command(&req.argv, &req.env, req.cwd.as_deref(), req.user.as_deref())?;
        let (ns, pod) = self.find_required(slot_id).await?;
        let container = exec_target(slot_id, &pod, req.container.as_deref())?;
        crate::exec::run(&self.pods(&ns), slot_id, &container, argv, req.stdin.as_deref(), req.timeout).await
    }

    /// A terminal through `pods/exec` with `tty=true` (see [`crate::exec::start_pty`]).
    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn exec_pty(&self, slot_id: &str, req: &PtyRequest) -> Result<PtySession, BackendError> {
        let argv = crate::exec::exec_command(&req.argv, &req.env, req.cwd.as_deref(), None)?;
        let (ns, pod) = self.find_required(slot_id).await?;
        let container = exec_target(slot_id, &pod, req.container.as_deref())?;
        crate::exec::start_pty(&self.pods(&ns), slot_id, &container, argv, req).await
    }

    /// An Event on the slot's Pod, else on the `SandboxPool`; a failure to publish is logged.
    async fn warning(&self, namespace: &str, pool: &str, slot: Option<&str>, reason: &str, message: &str) {
        let Some(w) = &self.warnings else { return };
        let res = match slot {
            Some(s) => w.slot(namespace, s, reason, "Reconcile", message).await,
            None => w.pool(namespace, pool, reason, "Reconcile", message).await,
        };
        if let Err(e) = res {
            tracing::debug!(namespace, pool, reason, error = %e, "cannot publish the warning as an Event");
        }
    }

    fn publishes_pool_status(&self) -> bool {
        true
    }

    /// A merge patch of the `SandboxPool`'s status subresource (see [`crate::status::status_patch`]),
    /// shown by `kubectl get sandboxpools`. A pool without an object in the cluster (404) is `Ok`.
    async fn publish_pool_status(
        &self,
        namespace: &str,
        pool: &str,
        status: &PoolStatusReport,
    ) -> Result<(), BackendError> {
        let key = (namespace.to_owned(), pool.to_owned());
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut times = self.status_times.lock().get(&key).cloned().unwrap_or_default();
        let patch = crate::status::status_patch(pool, status, &mut times, &now);
        let pools: Api<SandboxPool> = Api::namespaced(self.client.clone(), namespace);
        match pools.patch_status(pool, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                self.status_times.lock().insert(key, times);
                Ok(())
            }
            Err(e) if is_code(&e, 404) => {
                tracing::debug!(namespace, pool, "no SandboxPool object: its status is not published");
                Ok(())
            }
            Err(e) if is_code(&e, 403) => Err(BackendError::Runtime(format!(
                "the server may not write the status of sandboxpool {namespace}/{pool} ({e}): grant it `patch` on \
                 `sandboxpools/status` (deploy/kustomize/rbac.yaml)"
            ))),
            Err(e) => Err(KubeError::from(e).into()),
        }
    }

    /// The Pod's `PodMetrics` from the metrics API (`metrics.k8s.io/v1beta1`, served by
    /// metrics-server): memory is the working set, CPU a counter integrated from the measured rate
    /// (see [`crate::usage::CpuClock`]); limits from the Pod spec, else the node's capacity (0
    /// memory and 1 CPU when the node cannot be read). No page cache or disk figures (0).
    /// [`BackendError::Unsupported`] when the cluster has no metrics API, or no sample of the Pod yet.
    async fn slot_stats(&self, slot_id: &str) -> Result<agentbox_core::backend::SlotStats, BackendError> {
        use kube::api::{ApiResource, DynamicObject};
        let (ns, pod) = self.find_required(slot_id).await?;
        let ar = ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &ar);
        let metrics = match api.get(slot_id).await {
            Ok(m) => m,
            Err(kube::Error::Api(s)) if s.code == 404 && s.message.contains(slot_id) => {
                return Err(BackendError::Unsupported(format!(
                    "metrics-server has no sample of pod {ns}/{slot_id} yet (it samples every 15 s or so): retry shortly"
                )));
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 503 => {
                return Err(BackendError::Unsupported(format!(
                    "the kubernetes backend reads sandbox usage from the metrics API (metrics.k8s.io/v1beta1), which \
                     this cluster does not serve ({}): install metrics-server, or use the Prometheus metrics at GET /metrics",
                    s.message
                )));
            }
            Err(e) => return Err(KubeError::from(e).into()),
        };
        let usage = crate::usage::pod_usage(&metrics.data).map_err(BackendError::Runtime)?;
        let (mut cpu_limit, mut mem_limit) = crate::usage::pod_limits(&pod);
        if (cpu_limit.is_none() || mem_limit.is_none())
            && let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone())
        {
            let (cpu, mem) = self.node_capacity(&node).await;
            cpu_limit = cpu_limit.or(cpu);
            mem_limit = mem_limit.or(mem);
        }
        let cpu_count = cpu_limit.map_or(1, |n| n.div_ceil(1_000_000_000).max(1)) as u32;
        Ok(agentbox_core::backend::SlotStats {
            cpu_usage_usec: self.cpu_clock.advance(slot_id, usage.cpu_nanocores, Instant::now()),
            cpu_count,
            mem_used_bytes: usage.memory_bytes,
            mem_cache_bytes: 0,
            mem_total_bytes: mem_limit.unwrap_or(0),
            disk_used_bytes: 0,
            disk_total_bytes: 0,
        })
    }

    async fn inspect(&self, slot_id: &str) -> Result<SlotObservation, BackendError> {
        let (_, pod) = self.find_required(slot_id).await?;
        Ok(observe(&pod))
    }

    /// Every agentbox slot Pod in every namespace (label `agentbox.dev/pool`), sorted by name.
    async fn list_slots(&self) -> Result<Vec<SlotObservation>, BackendError> {
        let all: Api<Pod> = Api::all(self.client.clone());
        let pods = all.list(&ListParams::default().labels(labels::POOL)).await.map_err(KubeError::from)?;
        let mut out = Vec::with_capacity(pods.items.len());
        for p in &pods.items {
            if let (Some(name), Some(ns)) = (&p.metadata.name, &p.metadata.namespace) {
                self.remember(name, ns);
            }
            out.push(observe(p));
        }
        out.sort_by(|a, b| a.slot_id.cmp(&b.slot_id));
        Ok(out)
    }

    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn destroy_slot(&self, slot_id: &str) -> Result<(), BackendError> {
        let Some((ns, _)) = self.find(slot_id).await? else { return Ok(()) };
        self.remove_pod(&ns, slot_id).await?;
        self.namespaces.lock().remove(slot_id);
        self.cpu_clock.forget(slot_id);
        Ok(())
    }

    /// Compare-and-set of the Pod's phase label `idle` → `running` plus the sandbox-id label, in
    /// one JSON patch whose `test` ops make the API server refuse it (422) when the Pod changed
    /// since it was read. Another claim of the same slot in flight in this process, a Pod that is
    /// not idle, being deleted, or a refused patch (409/422) is [`BackendError::Conflict`]: the
    /// claim path requeues and takes another slot. Already claimed by `sandbox_id`: `Ok` (retry).
    /// With an informer cache ([`KubeBackend::with_pod_cache`]) the Pod is read from it (one round
    /// trip: the patch); a stale entry fails the `test` op, and the Pod is then read once to tell a
    /// lost race from our own earlier claim.
    #[tracing::instrument(skip_all, fields(slot = %slot_id, sandbox_id = %sandbox_id))]
    async fn mark_claimed(&self, slot_id: &str, sandbox_id: &str) -> Result<(), BackendError> {
        if sandbox_id.is_empty() || !is_label_value(sandbox_id) {
            return Err(BackendError::Invalid(format!(
                "sandbox id {sandbox_id:?} cannot be a kubernetes label value (at most 63 of [A-Za-z0-9._-])"
            )));
        }
        let Some(_reserved) = self.reservations.try_reserve(slot_id) else {
            return Err(BackendError::Conflict(format!("slot {slot_id} is being claimed by another request")));
        };
        let cached = self.cached(slot_id);
        let from_cache = cached.is_some();
        let (ns, pod) = match cached {
            Some(found) => found,
            None => self.find_required(slot_id).await?,
        };
        let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
        if pod_labels.get(labels::SANDBOX_ID).is_some_and(|s| s == sandbox_id) {
            return Ok(());
        }
        let phase = pod_labels.get(labels::PHASE).map(String::as_str).unwrap_or("unset");
        if phase != agentbox_core::model::SlotPhase::Idle.as_str() {
            return Err(BackendError::Conflict(format!("slot {slot_id} is {phase}, not idle")));
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return Err(BackendError::Conflict(format!("slot {slot_id} is being deleted")));
        }
        let Some(rv) = pod.metadata.resource_version.as_deref() else {
            return Err(BackendError::Runtime(format!("the pod of slot {slot_id} has no resourceVersion")));
        };
        let patch = Patch::Json::<()>(serde_json::from_value(claim_patch(rv, sandbox_id)).expect("a valid JSON patch"));
        match self.pods(&ns).patch(slot_id, &PatchParams::default(), &patch).await {
            Ok(_) => {
                tracing::debug!("slot claimed");
                Ok(())
            }
            Err(e) if is_code(&e, 409) || is_code(&e, 422) => {
                tracing::debug!(error = %e, from_cache, "claim lost the compare-and-set");
                // A cached Pod may predate our own earlier claim (a retry): ask the API whose it is.
                if from_cache
                    && let Ok(Some(now)) = self.pods(&ns).get_opt(slot_id).await
                    && now.metadata.labels.as_ref().and_then(|l| l.get(labels::SANDBOX_ID)).map(String::as_str)
                        == Some(sandbox_id)
                {
                    return Ok(());
                }
                Err(BackendError::Conflict(format!("slot {slot_id} changed while being claimed")))
            }
            Err(e) if is_code(&e, 404) => {
                self.namespaces.lock().remove(slot_id);
                Err(BackendError::SlotNotFound(slot_id.to_owned()))
            }
            Err(e) => Err(KubeError::from(e).into()),
        }
    }

    /// Merge patch: phase label `idle`, sandbox-id label removed. Idempotent; a missing Pod is `Ok`.
    #[tracing::instrument(skip_all, fields(slot = %slot_id))]
    async fn mark_released(&self, slot_id: &str) -> Result<(), BackendError> {
        let Some((ns, _)) = self.find(slot_id).await? else { return Ok(()) };
        let patch = Patch::Merge(release_patch());
        match self.pods(&ns).patch(slot_id, &PatchParams::default(), &patch).await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, 404) => {
                self.namespaces.lock().remove(slot_id);
                Ok(())
            }
            Err(e) => Err(KubeError::from(e).into()),
        }
    }

    /// The `pods/log` subresource of the slot's Pod, with timestamps: the last `lines` lines (all
    /// when 0) of the named container, or of every container in the Pod's order. Runtimes' own logs
    /// inside the sandbox go through the agent instead.
    async fn logs(&self, slot_id: &str, container: Option<&str>, lines: usize) -> Result<Vec<LogLine>, BackendError> {
        let (ns, pod) = self.find_required(slot_id).await?;
        let wanted = log_containers(slot_id, &pod, container)?;
        let mut out = Vec::new();
        for name in wanted {
            let params = LogParams {
                container: Some(name.clone()),
                timestamps: true,
                tail_lines: (lines > 0).then_some(lines as i64),
                ..Default::default()
            };
            let text = match self.pods(&ns).logs(slot_id, &params).await {
                Ok(t) => t,
                // A container that has not started yet has no log: nothing to show.
                Err(e) if is_code(&e, 400) => String::new(),
                Err(e) => return Err(KubeError::from(e).into()),
            };
            out.extend(text.lines().map(|l| parse_log_line(&name, l)));
        }
        Ok(out)
    }

    /// `pods/log?follow=true` of the named container, or one stream per container of the Pod
    /// merged into one channel: the last `lines` lines (all when 0), then new lines until the
    /// receiver is dropped or the container's log ends (the container exited or the Pod is gone).
    /// A container that has not started yet (the API answers 400) contributes nothing.
    async fn follow_logs(
        &self,
        slot_id: &str,
        container: Option<&str>,
        lines: usize,
    ) -> Result<LogFollow, BackendError> {
        let (ns, pod) = self.find_required(slot_id).await?;
        let wanted = log_containers(slot_id, &pod, container)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        for name in wanted {
            let params = LogParams {
                container: Some(name.clone()),
                follow: true,
                timestamps: true,
                tail_lines: (lines > 0).then_some(lines as i64),
                ..Default::default()
            };
            let stream = match self.pods(&ns).log_stream(slot_id, &params).await {
                Ok(s) => s,
                Err(e) if is_code(&e, 400) => continue,
                Err(e) => return Err(KubeError::from(e).into()),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                use futures::{AsyncBufReadExt, StreamExt};
                let mut stream = std::pin::pin!(stream.lines());
                loop {
                    tokio::select! {
                        line = stream.next() => match line {
                            Some(Ok(l)) => {
                                if tx.send(parse_log_line(&name, &l)).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::debug!(container = %name, error = %e, "log stream ended");
                                return;
                            }
                            None => return,
                        },
                        _ = tx.closed() => return,
                    }
                }
            });
        }
        Ok(rx)
    }
}

/// The containers whose log is read: `container`, or every container in the Pod's order.
fn log_containers(slot: &str, pod: &Pod, container: Option<&str>) -> Result<Vec<String>, BackendError> {
    let names: Vec<String> =
        pod.spec.as_ref().map(|s| s.containers.iter().map(|c| c.name.clone()).collect()).unwrap_or_default();
    match container {
        Some(c) if names.iter().any(|n| n == c) => Ok(vec![c.to_owned()]),
        Some(c) => Err(BackendError::ContainerNotFound { slot: slot.into(), container: c.into() }),
        None => Ok(names),
    }
}

/// One line of `pods/log?timestamps=true`: `<RFC 3339 time> <text>`. The kubelet merges stdout
/// and stderr, so the stream is reported as `stdout`.
fn parse_log_line(container: &str, line: &str) -> LogLine {
    let (timestamp, text) = match line.split_once(' ') {
        Some((ts, rest)) if chrono_like(ts) => (Some(ts.to_owned()), rest),
        _ => (None, line),
    };
    LogLine {
        timestamp,
        container: container.to_owned(),
        stream: "stdout".into(),
        line: text.to_owned(),
        older_dropped: false,
    }
}

/// Whether `s` looks like the RFC 3339 timestamp the kubelet prefixes (`2026-01-02T03:04:05.…Z`).
fn chrono_like(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T' && (s.ends_with('Z') || s.contains('+'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{Request, Response};
    use kube::client::Body;

    /// A client whose API server refuses the first `GET` of a node (403: no RBAC right yet) and
    /// answers every later one; `calls` counts the requests.
    fn node_server(calls: Arc<AtomicUsize>) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                assert_eq!(req.uri().path(), "/api/v1/nodes/n1");
                let (code, body) = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        403,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                                 "code": 403, "message": "nodes \"n1\" is forbidden"}),
                    )
                } else {
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                                 "status": {"capacity": {"cpu": "4", "memory": "8Gi"}}}),
                    )
                };
                let resp = Response::builder().status(code).body(Body::from(body.to_string().into_bytes())).unwrap();
                send.send_response(resp);
            }
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn a_failed_node_read_is_tried_again_later_and_a_success_is_kept() {
        let calls = Arc::new(AtomicUsize::new(0));
        let backend = KubeBackend::new(node_server(Arc::clone(&calls)), KubeBackendConfig::default());
        assert_eq!(backend.node_capacity("n1").await, (None, None), "forbidden: unknown");
        assert_eq!(backend.node_capacity("n1").await, (None, None), "within the retry delay: not asked again");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A minute later (the RBAC right was granted meanwhile) the node is read again.
        let long_ago = Instant::now().checked_sub(NODE_RETRY + Duration::from_secs(1)).unwrap();
        backend.node_capacity.lock().get_mut("n1").unwrap().1 = Some(long_ago);
        let cap = (Some(4_000_000_000), Some(8 << 30));
        assert_eq!(backend.node_capacity("n1").await, cap);
        assert_eq!(backend.node_capacity("n1").await, cap, "a success is kept");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
