//! Sandboxes: claim (create), release (delete), read, exec.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentbox_core::backend::BackendError;
use agentbox_core::duration::WireDuration;
use agentbox_core::error::{AppError, AvailablePoolSummary, AvailablePoolsDetail, ErrorKind, PoolStatusDetail};
use agentbox_core::model::{
    ContainerSpec, MAX_POST_START_HOOKS, Pool, PostStartHookAction, RuntimeSpec, Sandbox, SandboxEndpoint,
    SandboxStatus, Slot, SlotPhase, StatusDetail,
};
use agentbox_core::quantity::{format_cpu_millis, format_memory_bytes};
use agentbox_core::store::{SandboxFilter, StoreError};
use agentbox_core::validate;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

use super::hooks::StartupError;
use super::{Engine, PoolRt, metrics, now};
use crate::auth::AuthInfo;

/// `POST /v1/sandboxes`
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Pool to claim from.
    pub pool_name: String,
    /// Replaces container 0's image (in-place image switch when it differs from what the slot runs).
    #[serde(default)]
    pub image: Option<String>,
    /// Per-container images, by container name.
    #[serde(default)]
    pub container_images: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// How long to wait for an idle slot and the switch (request > pool default > 2m).
    #[serde(default)]
    pub startup_timeout: Option<WireDuration>,
    /// Release the sandbox after this long without activity (request > pool default > none).
    #[serde(default)]
    pub idle_timeout: Option<WireDuration>,
    /// `false`: answer 409 at once when no slot is idle instead of queueing.
    #[serde(default)]
    pub wait: Option<bool>,
    /// Set-up steps run in order after the containers start and before the create answers, each
    /// retried until it succeeds or the startup timeout passes (at most 16). A hook that still
    /// fails then fails the sandbox: 422 `POST_START_HOOK_FAILED`.
    #[serde(default)]
    pub post_start_hooks: Vec<PostStartHookAction>,
    /// `true` (default): answer only once every runtime of the pool's template with a
    /// `readinessProbe` is ready (503 and `Released`/`StartupTimeout` if the startup timeout passes
    /// first). `false`: answer as soon as the containers run and the hooks succeeded.
    #[serde(default)]
    pub wait_for_ready: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListSandboxesQuery {
    pub pool_name: Option<String>,
    /// Comma-separated statuses, e.g. `Running,Failed`.
    pub status: Option<String>,
    pub team: Option<String>,
    pub user: Option<String>,
    /// 1..=100, default 20.
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxList {
    pub items: Vec<Sandbox>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
    /// With `cluster=*`: the clusters that could not be listed.
    #[serde(rename = "clusterErrors", skip_serializing_if = "Vec::is_empty")]
    pub cluster_errors: Vec<crate::gateway::ClusterListError>,
}

/// A command: a shell string (run with `sh -c`) or an argv list.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExecCommand {
    Shell(String),
    Argv(Vec<String>),
}

/// `POST /v1/sandboxes/{id}/exec`
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequestBody {
    pub command: ExecCommand,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// `uid[:gid]`.
    #[serde(default)]
    pub user: Option<String>,
    /// 1..=300, default 30.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Text written to the command's stdin, then closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Container name (default: container 0).
    #[serde(default)]
    pub container: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Answer of `DELETE /v1/sandboxes/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteSandboxResult {
    pub sandbox_id: String,
    pub namespace: String,
    pub pool_name: String,
    pub pod_name: String,
    pub status: SandboxStatus,
}

/// `statusDetail` of a sandbox whose containers run but whose startup gate is not passed yet.
fn gate_detail(hooks: usize, runtimes: &[RuntimeSpec]) -> StatusDetail {
    if hooks > 0 {
        StatusDetail {
            reason: Some("PostStartHooks".into()),
            message: Some(format!("running {hooks} post-start hook(s)")),
        }
    } else {
        let names: Vec<&str> = runtimes.iter().map(|r| r.name.as_str()).collect();
        StatusDetail {
            reason: Some("WaitingForReadiness".into()),
            message: Some(format!("waiting for the readiness probes of runtimes {}", names.join(", "))),
        }
    }
}

/// What a claim needs, resolved from the request and the pool before touching any slot.
struct ClaimPlan {
    pool: Pool,
    targets: Vec<ContainerSpec>,
    deadline: Instant,
    /// Set by the claim when it runs an in-place image switch (a metrics label).
    switched: Arc<AtomicBool>,
    startup_timeout: Duration,
    idle_timeout: Option<Duration>,
    /// Runtimes whose readiness probe gates the answer (empty with `waitForReady: false`).
    gate_runtimes: Vec<RuntimeSpec>,
}

/// Detail of the 422 `POST_START_HOOK_FAILED` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostStartHookFailedDetail {
    pub sandbox_id: String,
    /// 0-based position of the failing hook in `postStartHooks`.
    pub hook_index: usize,
    /// The hook's last error.
    pub error: String,
}

/// `errorCode` of a create whose post-start hook failed (422).
pub const POST_START_HOOK_FAILED: &str = "POST_START_HOOK_FAILED";

/// How long a slot whose backend claim conflicted stays out of the idle queue.
pub(crate) const REQUEUE_AFTER_CONFLICT: Duration = Duration::from_secs(2);

impl Engine {
    /// Claim a slot and answer once the sandbox is Running. Runs in its own task: if the caller
    /// goes away before the answer, the sandbox is canceled and its slot recycled.
    pub async fn create_sandbox(
        self: &Arc<Self>,
        auth: &AuthInfo,
        req: CreateSandboxRequest,
    ) -> Result<Sandbox, AppError> {
        let accepted = Instant::now();
        let plan =
            self.plan_claim(auth, &req).inspect_err(|e| self.metrics.create_rejected(auth, &req.pool_name, e))?;
        let (tx, rx) = oneshot::channel::<Result<Sandbox, AppError>>();
        let me = Arc::clone(self);
        let auth = auth.clone();
        let (pool, switched) = (plan.pool.name.clone(), Arc::clone(&plan.switched));
        let span =
            tracing::info_span!("claim", namespace = %auth.namespace, pool = %pool, sandbox_id = tracing::field::Empty);
        tokio::spawn(async move {
            let res = me.claim(&auth, req, plan).instrument(span).await;
            let (elapsed, starting) = (accepted.elapsed(), res.as_ref().ok().and_then(metrics::starting_time));
            let mut result = res.as_ref().map_or_else(metrics::create_result, |_| "ok");
            if let Err(Ok(sb)) = tx.send(res) {
                result = "canceled";
                // Nobody is listening any more: the client disconnected before its answer.
                tracing::info!(sandbox_id = %sb.sandbox_id, "client went away before the answer; canceling");
                let _ = me.release(
                    &sb.sandbox_id,
                    SandboxStatus::Canceled,
                    Some(("ClientGone", "the client disconnected before the sandbox was returned".into())),
                    None,
                );
            }
            let switched = switched.load(Ordering::Relaxed);
            me.metrics.claim_finished(&auth.namespace, &pool, result, switched, elapsed, starting);
        });
        rx.await.map_err(|_| AppError::internal("claim task failed", "claim task dropped its answer"))?
    }

    fn plan_claim(&self, auth: &AuthInfo, req: &CreateSandboxRequest) -> Result<ClaimPlan, AppError> {
        if req.pool_name.is_empty() {
            return Err(AppError::bad_request("poolName is required: name the pool to claim a sandbox from"));
        }
        let pool = match self.store.get_pool(&auth.namespace, &req.pool_name)? {
            Some(p) if !p.deleting && auth.may_use(&p.team, &p.user) => p,
            _ => return Err(self.pool_not_found(auth, &req.pool_name)),
        };
        let mut targets = pool.spec.template.containers.clone();
        if let Some(img) = &req.image {
            validate::image_ref("image", img)?;
            targets[0].image = img.clone();
        }
        for (name, img) in &req.container_images {
            validate::image_ref(&format!("containerImages.{name}"), img)?;
            let c = targets.iter_mut().find(|c| &c.name == name).ok_or_else(|| {
                let names: Vec<_> = pool.spec.template.containers.iter().map(|c| c.name.as_str()).collect();
                AppError::bad_request(format!(
                    "containerImages names unknown container {name:?}; the pool's containers are {names:?}"
                ))
            })?;
            c.image = img.clone();
        }
        if targets[0].image == pool.spec.template.idle_image {
            return Err(AppError::bad_request(format!(
                "image {} is the pool's idle image; ask for a workload image (the pool default is {})",
                targets[0].image, pool.spec.template.containers[0].image
            )));
        }
        for (k, v) in req.labels.iter().chain(req.annotations.iter()) {
            if k.is_empty() || k.len() > 253 || v.len() > 4096 {
                return Err(AppError::bad_request(format!(
                    "label/annotation {k:?}: keys must be 1-253 characters, values at most 4096"
                )));
            }
        }
        let startup_timeout = req
            .startup_timeout
            .or(pool.spec.default_startup_timeout)
            .map(|d| d.as_duration())
            .unwrap_or(self.cfg.default_startup_timeout);
        if startup_timeout.is_zero() {
            return Err(AppError::bad_request("startupTimeout must be a positive duration such as \"30s\""));
        }
        let idle_timeout =
            req.idle_timeout.or(pool.spec.default_idle_timeout).map(|d| d.as_duration()).filter(|d| !d.is_zero());
        if req.post_start_hooks.len() > MAX_POST_START_HOOKS {
            return Err(AppError::bad_request(format!(
                "postStartHooks has {} entries; at most {MAX_POST_START_HOOKS} are allowed",
                req.post_start_hooks.len()
            )));
        }
        for (i, h) in req.post_start_hooks.iter().enumerate() {
            h.validate().map_err(|m| AppError::bad_request(format!("postStartHooks[{i}]: {m}")))?;
        }
        let gate_runtimes = if req.wait_for_ready.unwrap_or(true) {
            pool.spec.template.runtimes.iter().filter(|r| r.readiness_probe.is_some()).cloned().collect()
        } else {
            vec![]
        };
        Ok(ClaimPlan {
            pool,
            targets,
            deadline: Instant::now() + startup_timeout,
            startup_timeout,
            idle_timeout,
            gate_runtimes,
            switched: Default::default(),
        })
    }

    pub(crate) fn pool_not_found(&self, auth: &AuthInfo, name: &str) -> AppError {
        let pools: Vec<AvailablePoolSummary> = self
            .store
            .list_pools(Some(&auth.namespace))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !p.deleting && auth.may_use(&p.team, &p.user))
            .map(|p| {
                let c = self.pool_counts(&p).unwrap_or_default();
                AvailablePoolSummary {
                    name: p.name,
                    namespace: p.namespace,
                    idle: c.idle,
                    running: c.running,
                    starting: c.starting,
                }
            })
            .collect();
        let hint = if pools.is_empty() {
            "No pools available for this namespace/team/user. Create one with POST /v1/sandboxpools before retrying."
        } else {
            "Pool not found. Pick a name from availablePools, or call POST /v1/sandboxpools first."
        };
        AppError::not_found(format!("pool {name:?} not found"))
            .with_detail(&AvailablePoolsDetail { available_pools: pools, hint: Some(hint.into()) })
    }

    fn no_idle(&self, pool: &Pool, why: &str) -> AppError {
        let mut c = self.pool_counts(pool).unwrap_or_default();
        // Slots taken from the queue by claims still committing look idle in the store: what can be
        // claimed is what the queue holds.
        if let Some(rt) = self.pool_rt(&(pool.namespace.clone(), pool.name.clone())) {
            c.idle = c.idle.min(rt.queue.lock().idle_len() as u32);
        }
        let retry = if c.stopping > 0 || c.creating > 0 { 1 } else { 5 };
        let hint = if c.stopping > 0 || c.creating > 0 {
            "slots are being recycled or created; retry shortly"
        } else {
            "all slots are in use; retry later or raise the pool's replicas"
        };
        AppError::conflict(format!("no idle sandbox in pool {:?} {why}", pool.name))
            .with_detail(&PoolStatusDetail {
                idle: c.idle,
                running: c.running,
                starting: c.starting,
                stopping: c.stopping,
                failed: c.failed,
                hint: Some(hint.into()),
                retry_after: Some(retry),
            })
            .with_retry_after(retry)
    }

    /// Take an idle slot id from the pool's queue, waiting until the deadline if allowed.
    async fn take_slot(&self, rt: &PoolRt, plan: &ClaimPlan, wait: bool) -> Result<String, AppError> {
        let (tx, mut rx) = oneshot::channel();
        let ticket = {
            let mut q = rt.queue.lock();
            if let Some(s) = q.try_take() {
                return Ok(s);
            }
            if !wait {
                drop(q);
                return Err(self.no_idle(&plan.pool, "right now (wait=false)"));
            }
            q.enqueue(tx).map_err(|_| {
                AppError::too_many(format!("claim queue of pool {:?} is full; retry later", plan.pool.name))
                    .with_retry_after(1)
            })?
        };
        rt.wake.notify_one();
        match tokio::time::timeout_at(plan.deadline.into(), &mut rx).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_)) => Err(self.no_idle(&plan.pool, "(the pool is being deleted)")),
            Err(_) => {
                let still_queued = rt.queue.lock().cancel(ticket);
                if !still_queued {
                    // Matched at the deadline: the slot is ours.
                    if let Ok(slot) = rx.try_recv() {
                        return Ok(slot);
                    }
                }
                Err(self.no_idle(
                    &plan.pool,
                    &format!("within the startup timeout ({})", WireDuration(plan.startup_timeout)),
                ))
            }
        }
    }

    async fn claim(
        self: &Arc<Self>,
        auth: &AuthInfo,
        req: CreateSandboxRequest,
        plan: ClaimPlan,
    ) -> Result<Sandbox, AppError> {
        let rt = self.ensure_pool_rt(&plan.pool);
        let wait = req.wait.unwrap_or(true);
        // Hooks or readiness probes keep the sandbox (and its slot) Starting after the containers run.
        let gated = !req.post_start_hooks.is_empty() || !plan.gate_runtimes.is_empty();
        let (slot, mut sandbox, same_image) = loop {
            let slot_id = self.take_slot(&rt, &plan, wait).await?;
            let Some(slot) = self.store.get_slot(&slot_id)? else { continue };
            if slot.phase != SlotPhase::Idle {
                continue;
            }
            let targets: BTreeMap<String, String> =
                plan.targets.iter().map(|c| (c.name.clone(), c.image.clone())).collect();
            let same_image = slot.images == targets;
            let now = now();
            let resources =
                agentbox_core::validate::slot_resources(&plan.pool.spec.template.containers).unwrap_or_default();
            let sandbox = Sandbox {
                sandbox_id: uuid::Uuid::now_v7().to_string(),
                namespace: auth.namespace.clone(),
                team: auth.team.clone(),
                user: auth.user.clone(),
                pool_name: plan.pool.name.clone(),
                pod_name: slot.slot_id.clone(),
                metadata: req.metadata.clone(),
                labels: req.labels.clone(),
                annotations: req.annotations.clone(),
                status: if same_image && !gated { SandboxStatus::Running } else { SandboxStatus::Starting },
                container_images: targets,
                container_id: None,
                ip: slot.ip.clone(),
                cpu: resources.cpu_millis.map(format_cpu_millis),
                memory: resources.memory_bytes.map(format_memory_bytes),
                claimed_at: now.clone(),
                started_at: (same_image && !gated).then(|| now.clone()),
                terminated_at: None,
                recycled_at: None,
                failure_reason: None,
                exit_code: None,
                failure_message: None,
                idle_timeout_seconds: plan.idle_timeout.map(|d| d.as_secs().max(1)),
                startup_timeout_seconds: Some(plan.startup_timeout.as_secs().max(1)),
                last_active_at: Some(now),
                stop_reason: None,
                duration_seconds: None,
                status_detail: (same_image && gated)
                    .then(|| gate_detail(req.post_start_hooks.len(), &plan.gate_runtimes)),
                endpoints: BTreeMap::new(),
                post_start_hooks: req.post_start_hooks.clone(),
            };
            let mut claimed = slot.clone();
            claimed.phase = if same_image && !gated { SlotPhase::Running } else { SlotPhase::Starting };
            claimed.sandbox_id = Some(sandbox.sandbox_id.clone());
            claimed.idle_since = None;
            // Backends whose slots other processes can see (Kubernetes: a compare-and-set on the
            // Pod's phase label) make the claim exclusive first; a conflict means someone else
            // took this slot: try the next one.
            match self.backend.mark_claimed(&slot_id, &sandbox.sandbox_id).await {
                Ok(()) => {}
                Err(BackendError::Conflict(m)) => {
                    tracing::warn!(slot = %slot_id, "slot claimed elsewhere, trying another slot: {m}");
                    self.requeue_later(&rt, slot_id);
                    continue;
                }
                Err(e) => {
                    rt.queue.lock().return_idle(slot_id);
                    return Err(e.into());
                }
            }
            match self.store.claim(&claimed, SlotPhase::Idle, &sandbox) {
                Ok(()) => break (claimed, sandbox, same_image),
                Err(StoreError::Conflict(m)) => {
                    tracing::warn!(slot = %slot_id, "claim conflict, trying another slot: {m}");
                    let _ = self.backend.mark_released(&slot_id).await;
                    continue;
                }
                Err(e) => {
                    rt.queue.lock().return_idle(slot_id);
                    return Err(e.into());
                }
            }
        };
        tracing::info!(sandbox_id = %sandbox.sandbox_id, pool = %plan.pool.name, slot = %slot.slot_id, same_image, "claimed");
        tracing::Span::current().record("sandbox_id", sandbox.sandbox_id.as_str());
        plan.switched.store(!same_image, Ordering::Relaxed);
        if same_image {
            if !gated {
                self.touch(&sandbox.sandbox_id);
                return Ok(self.decorate(sandbox));
            }
            return self.finish_startup(sandbox, &plan).await;
        }
        // In-place image switch, in its own task so that a deadline never interrupts it half-way.
        let me = Arc::clone(self);
        let targets = plan.targets.clone();
        let creds = plan.pool.overrides.image_pull_secret.clone().unwrap_or_default().registries;
        let slot_id = slot.slot_id.clone();
        let sandbox_id = sandbox.sandbox_id.clone();
        let switch = tokio::spawn(async move {
            let lock = me.slot_lock(&slot_id);
            let _g = lock.lock().await;
            me.backend.switch(&slot_id, &targets, &creds).await
        });
        let outcome = tokio::time::timeout_at(plan.deadline.into(), switch).await;
        match outcome {
            Ok(Ok(Ok(obs))) => {
                {
                    // Re-read under the transition lock: a delete may have arrived while we switched.
                    let _t = self.transitions.lock();
                    let mut current = self.store.get_sandbox(&sandbox_id)?.unwrap_or(sandbox.clone());
                    if current.status != SandboxStatus::Starting {
                        return Err(AppError::conflict(format!("sandbox {sandbox_id} was deleted while starting")));
                    }
                    let mut slot = self.store.get_slot(&slot.slot_id)?.unwrap_or(slot);
                    slot.images = obs.images();
                    current.container_id = obs.main().map(|c| c.container_id.clone());
                    current.ip = obs.ip.clone().or(current.ip);
                    if gated {
                        // Containers run; hooks and readiness still to go: both stay Starting.
                        current.status_detail = Some(gate_detail(current.post_start_hooks.len(), &plan.gate_runtimes));
                    } else {
                        slot.phase = SlotPhase::Running;
                        current.status = SandboxStatus::Running;
                        current.started_at = Some(now());
                    }
                    self.store.put_slot_and_sandbox(&slot, &current)?;
                    sandbox = current;
                }
                if !gated {
                    self.touch(&sandbox.sandbox_id);
                    return Ok(self.decorate(sandbox));
                }
                self.finish_startup(sandbox, &plan).await
            }
            Ok(Ok(Err(e))) => {
                let (reason, err) = match &e {
                    BackendError::Image { .. } => (
                        "ImagePullFailed",
                        AppError::bad_request(format!("{e}; check the image name and the pool's imagePullSecret")),
                    ),
                    _ => ("StartupFailed", AppError::internal("the sandbox failed to start", &e)),
                };
                tracing::warn!(sandbox_id = %sandbox_id, error = %e, "switch failed");
                let _ = self.release(&sandbox_id, SandboxStatus::Failed, Some((reason, e.to_string())), None);
                Err(err)
            }
            Ok(Err(join)) => {
                let _ =
                    self.release(&sandbox_id, SandboxStatus::Failed, Some(("StartupFailed", join.to_string())), None);
                Err(AppError::internal("the sandbox failed to start", join))
            }
            Err(_) => Err(self.startup_timed_out(&sandbox_id, &plan, "the image switch had not finished")),
        }
    }

    /// The startup gate of a sandbox whose containers run (see `hooks.rs`): post-start hooks, then
    /// readiness; then Starting → Running. Every way out that is not Running ends the sandbox
    /// (unless a delete got there first, which answers 409 as during the switch).
    async fn finish_startup(self: &Arc<Self>, sandbox: Sandbox, plan: &ClaimPlan) -> Result<Sandbox, AppError> {
        let id = sandbox.sandbox_id.clone();
        let mut res = self.run_post_start_hooks(&sandbox, plan.deadline).await;
        if res.is_ok() && !plan.gate_runtimes.is_empty() {
            if !sandbox.post_start_hooks.is_empty() {
                self.set_starting_detail(&id, gate_detail(0, &plan.gate_runtimes))?;
            }
            res = self.wait_ready(&sandbox, &plan.gate_runtimes, plan.deadline).await;
        }
        let deleted = || AppError::conflict(format!("sandbox {id} was deleted while starting"));
        match res {
            Ok(()) => {
                let running = {
                    let _t = self.transitions.lock();
                    let Some(mut current) = self.store.get_sandbox(&id)? else { return Err(deleted()) };
                    if current.status != SandboxStatus::Starting {
                        return Err(deleted());
                    }
                    let Some(mut slot) = self.store.get_slot(&current.pod_name)? else { return Err(deleted()) };
                    slot.phase = SlotPhase::Running;
                    current.status = SandboxStatus::Running;
                    current.started_at = Some(now());
                    current.status_detail = None;
                    self.store.put_slot_and_sandbox(&slot, &current)?;
                    current
                };
                tracing::info!(sandbox_id = %id, "startup gate passed; running");
                self.touch(&id);
                Ok(self.decorate(running))
            }
            Err(StartupError::Gone) => Err(deleted()),
            Err(StartupError::Timeout(what)) => Err(self.startup_timed_out(&id, plan, &what)),
            Err(StartupError::Hook { index, error }) => {
                let hook = sandbox.post_start_hooks.get(index).map(|h| h.describe()).unwrap_or_default();
                let msg = format!("post-start hook {index} ({hook}) failed: {error}");
                tracing::warn!(sandbox_id = %id, "{msg}");
                if !self.end_starting(&id, SandboxStatus::Failed, "PostStartHookFailed", msg.clone())? {
                    return Err(deleted());
                }
                Err(AppError::new(
                    ErrorKind::Unprocessable,
                    format!("{msg}; fix the hook, or give it more time with a longer startupTimeout"),
                )
                .with_code(POST_START_HOOK_FAILED)
                .with_detail(&PostStartHookFailedDetail {
                    sandbox_id: id.clone(),
                    hook_index: index,
                    error,
                }))
            }
        }
    }

    /// Update the `statusDetail` of a sandbox that is still Starting (no-op otherwise).
    fn set_starting_detail(&self, id: &str, detail: StatusDetail) -> Result<(), AppError> {
        let _t = self.transitions.lock();
        if let Some(mut sb) = self.store.get_sandbox(id)?
            && sb.status == SandboxStatus::Starting
        {
            sb.status_detail = Some(detail);
            self.store.put_sandbox(&sb)?;
        }
        Ok(())
    }

    /// End a Starting sandbox in `end` with `reason`; `false` when something else (a delete, a
    /// restart) ended it first, so each sandbox is ended exactly once.
    fn end_starting(
        self: &Arc<Self>,
        id: &str,
        end: SandboxStatus,
        reason: &str,
        msg: String,
    ) -> Result<bool, AppError> {
        self.release(id, end, Some((reason, msg)), None)?;
        Ok(matches!(
            self.store.get_sandbox(id)?,
            Some(s) if (s.stop_reason == Some(end) || s.status == end) && s.failure_reason.as_deref() == Some(reason)
        ))
    }

    /// Release a sandbox whose startup timeout passed (`Released`/`StartupTimeout`, the message
    /// says what was still missing) and build the 503 answer.
    fn startup_timed_out(self: &Arc<Self>, id: &str, plan: &ClaimPlan, what: &str) -> AppError {
        let msg = format!(
            "sandbox did not become Running within the startup timeout ({}): {what}",
            WireDuration(plan.startup_timeout)
        );
        tracing::warn!(sandbox_id = %id, "{msg}");
        match self.end_starting(id, SandboxStatus::Released, "StartupTimeout", msg.clone()) {
            Ok(true) => AppError::unavailable(format!("{msg}; retry with a longer startupTimeout"))
                .with_detail(&serde_json::json!({ "sandboxId": id })),
            Ok(false) => AppError::conflict(format!("sandbox {id} was deleted while starting")),
            Err(e) => e,
        }
    }

    /// Add the read-time fields.
    pub(crate) fn decorate(&self, sb: Sandbox) -> Sandbox {
        let mut sb = sb.with_duration(chrono::Utc::now());
        if !sb.status.is_terminal()
            && let Some(last) = self.last_active(&sb.sandbox_id)
            && let Ok(ago) = chrono::Duration::from_std(last.elapsed())
        {
            sb.last_active_at = Some((chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        // Endpoints of a live sandbox, one per runtime: through the data plane when the server has
        // a base URL for it, else straight to the slot's IP (the local backend's bridge makes it
        // reachable from the server's host, not from elsewhere).
        if !sb.status.is_terminal()
            && let Ok(Some(pool)) = self.store.get_pool(&sb.namespace, &sb.pool_name)
        {
            for r in &pool.spec.template.runtimes {
                let url = r.port.and_then(|port| match (&self.cfg.proxy_base_url, &sb.ip) {
                    (Some(base), _) => {
                        Some(format!("{}/sandboxes/{}/{port}", base.trim_end_matches('/'), sb.sandbox_id))
                    }
                    (None, Some(ip)) => Some(format!("http://{ip}:{port}")),
                    (None, None) => None,
                });
                sb.endpoints.insert(r.name.clone(), SandboxEndpoint { url, log_dir: r.log_dir.clone() });
            }
        }
        sb
    }

    /// Load a sandbox the caller may see (404 otherwise).
    pub(crate) fn visible_sandbox(&self, auth: &AuthInfo, id: &str) -> Result<Sandbox, AppError> {
        match self.store.get_sandbox(id)? {
            Some(sb) if auth.may_see(&sb.namespace, &sb.team, &sb.user) => Ok(sb),
            _ => Err(AppError::not_found(format!("sandbox {id} not found"))),
        }
    }

    pub fn get_sandbox(&self, auth: &AuthInfo, id: &str) -> Result<Sandbox, AppError> {
        self.visible_sandbox(auth, id).map(|s| self.decorate(s))
    }

    pub fn list_sandboxes(&self, auth: &AuthInfo, q: &ListSandboxesQuery) -> Result<SandboxList, AppError> {
        let limit = q.limit.unwrap_or(20);
        if limit == 0 || limit > 100 {
            return Err(AppError::bad_request(format!(
                "limit {limit} is out of range: use 1..=100 and page with offset"
            )));
        }
        let mut statuses = vec![];
        if let Some(s) = &q.status {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                statuses.push(SandboxStatus::parse(part).ok_or_else(|| {
                    let all: Vec<_> = SandboxStatus::ALL.iter().map(|s| s.as_str()).collect();
                    AppError::bad_request(format!("status {part:?} is unknown; use one or more of {}", all.join(",")))
                })?);
            }
        }
        let mut filter = SandboxFilter {
            namespace: None,
            pool: q.pool_name.clone(),
            statuses,
            team: q.team.clone(),
            user: q.user.clone(),
            limit,
            offset: q.offset.unwrap_or(0),
        };
        auth.scope_filter(&mut filter);
        let (items, total) = self.store.list_sandboxes(&filter)?;
        Ok(SandboxList {
            items: items.into_iter().map(|s| self.decorate(s)).collect(),
            total,
            limit,
            offset: filter.offset,
            cluster_errors: vec![],
        })
    }

    /// `DELETE`: Stopping now, recycled in the background. 202.
    pub fn delete_sandbox(self: &Arc<Self>, auth: &AuthInfo, id: &str) -> Result<DeleteSandboxResult, AppError> {
        let sb = self.visible_sandbox(auth, id)?;
        let reason = if sb.status == SandboxStatus::Starting && sb.started_at.is_none() {
            SandboxStatus::Canceled
        } else {
            SandboxStatus::Completed
        };
        match sb.status {
            SandboxStatus::Starting | SandboxStatus::Running => {
                self.release(id, reason, None, None)?;
            }
            SandboxStatus::Stopping => {}
            s => {
                return Err(AppError::not_found(format!(
                    "sandbox {id} already ended ({}); nothing to delete",
                    s.as_str()
                )));
            }
        }
        Ok(DeleteSandboxResult {
            sandbox_id: sb.sandbox_id,
            namespace: sb.namespace,
            pool_name: sb.pool_name,
            pod_name: sb.pod_name,
            status: SandboxStatus::Stopping,
        })
    }

    /// Mark a live sandbox Stopping (ending in `end`) and recycle its slot in the background.
    /// Idempotent: a sandbox already Stopping or ended is left alone.
    pub(crate) fn release(
        self: &Arc<Self>,
        sandbox_id: &str,
        end: SandboxStatus,
        failure: Option<(&str, String)>,
        exit_code: Option<i32>,
    ) -> Result<(), AppError> {
        let _t = self.transitions.lock();
        let Some(mut sb) = self.store.get_sandbox(sandbox_id)? else { return Ok(()) };
        if !matches!(sb.status, SandboxStatus::Starting | SandboxStatus::Running) {
            return Ok(());
        }
        let Some(mut slot) = self.store.get_slot(&sb.pod_name)? else {
            // The slot is gone (lost with its host state): end the sandbox right here.
            sb.status = end;
            sb.terminated_at = Some(now());
            if let Some((r, m)) = failure {
                sb.status_detail = Some(StatusDetail { reason: Some(r.into()), message: Some(m.clone()) });
                sb.failure_reason = Some(r.into());
                sb.failure_message = Some(m);
            }
            self.store.put_sandbox(&sb)?;
            self.metrics.sandbox_stopped(&sb, end);
            return Ok(());
        };
        sb.status = SandboxStatus::Stopping;
        sb.stop_reason = Some(end);
        sb.terminated_at = Some(now());
        if let Some((r, m)) = failure {
            sb.status_detail = Some(StatusDetail { reason: Some(r.into()), message: Some(m.clone()) });
            sb.failure_reason = Some(r.into());
            sb.failure_message = Some(m);
        }
        sb.exit_code = exit_code.or(sb.exit_code);
        slot.phase = SlotPhase::Stopping;
        self.store.put_slot_and_sandbox(&slot, &sb)?;
        self.metrics.sandbox_stopped(&sb, end);
        let me = Arc::clone(self);
        let slot_id = slot.slot_id.clone();
        tokio::spawn(async move { me.recycle(&slot_id).await });
        Ok(())
    }

    /// Stopping → Idle: switch the slot back to the pool's idle containers (fresh writable layer),
    /// finish the sandbox's history record, and hand the slot to the next waiter.
    /// A slot whose claim conflicted in the backend goes back to the idle queue after
    /// [`REQUEUE_AFTER_CONFLICT`] if the store still has it idle: whoever holds it may release it.
    fn requeue_later(self: &Arc<Self>, rt: &Arc<PoolRt>, slot_id: String) {
        let (me, rt) = (Arc::clone(self), Arc::clone(rt));
        tokio::spawn(async move {
            tokio::time::sleep(REQUEUE_AFTER_CONFLICT).await;
            if let Ok(Some(slot)) = me.store.get_slot(&slot_id)
                && slot.phase == SlotPhase::Idle
            {
                rt.queue.lock().push_idle(slot_id);
                me.dispatch(&rt);
            }
        });
    }

    pub(crate) async fn recycle(self: &Arc<Self>, slot_id: &str) {
        let started = Instant::now();
        let lock = self.slot_lock(slot_id);
        let _g = lock.lock().await;
        let Ok(Some(mut slot)) = self.store.get_slot(slot_id) else { return };
        if slot.phase != SlotPhase::Stopping {
            return;
        }
        let sandbox = slot.sandbox_id.as_deref().and_then(|id| self.store.get_sandbox(id).ok().flatten());
        let finish = |sb: &mut Sandbox| {
            sb.status = sb.stop_reason.take().unwrap_or(SandboxStatus::Completed);
            sb.recycled_at = Some(now());
            if sb.terminated_at.is_none() {
                sb.terminated_at = sb.recycled_at.clone();
            }
        };
        let pool = self.store.get_pool(&slot.namespace, &slot.pool).ok().flatten().filter(|p| !p.deleting);
        let switched = match &pool {
            Some(p) => {
                let creds = p.overrides.image_pull_secret.clone().unwrap_or_default().registries;
                match self.backend.switch(slot_id, &p.idle_containers(), &creds).await {
                    // Idle again for the backend too (Kubernetes: the Pod's phase label), before
                    // the slot is offered to claims; a slot still marked claimed would make every
                    // later claim of it conflict, so a failure here destroys it like a failed switch.
                    Ok(obs) => self.backend.mark_released(slot_id).await.map(|()| obs).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            None => Err("pool deleted".to_string()),
        };
        match switched {
            Ok(obs) => {
                slot.phase = SlotPhase::Idle;
                slot.sandbox_id = None;
                slot.images = obs.images();
                slot.idle_since = Some(now());
                let res = match sandbox {
                    Some(mut sb) => {
                        finish(&mut sb);
                        self.store.put_slot_and_sandbox(&slot, &sb)
                    }
                    None => self.store.put_slot(&slot),
                };
                if let Err(e) = res {
                    tracing::error!(slot = %slot_id, error = %e, "could not record recycled slot");
                    return;
                }
                let p = pool.expect("pool exists when the switch ran");
                if let Some(rt) = self.pool_rt(&(p.namespace.clone(), p.name.clone())) {
                    rt.queue.lock().push_idle(slot_id.to_string());
                    self.dispatch(&rt);
                }
                self.metrics.slot_recycled(&slot.namespace, &slot.pool, started.elapsed());
                tracing::info!(slot = %slot_id, "recycled");
            }
            Err(e) => {
                tracing::warn!(slot = %slot_id, error = %e, "recycle failed; destroying the slot");
                if let Some(mut sb) = sandbox {
                    finish(&mut sb);
                    let _ = self.store.put_sandbox(&sb);
                }
                let _ = self.backend.destroy_slot(slot_id).await;
                let _ = self.store.delete_slot(slot_id);
                if let Some(p) = pool
                    && let Some(rt) = self.pool_rt(&(p.namespace.clone(), p.name.clone()))
                {
                    rt.wake.notify_one();
                }
            }
        }
    }

    /// Fail a Running sandbox whose main container died, and recycle its slot.
    pub(crate) fn fail_sandbox(self: &Arc<Self>, slot: &Slot, reason: &str, message: String, exit_code: Option<i32>) {
        if let Some(id) = &slot.sandbox_id {
            tracing::warn!(sandbox_id = %id, reason, "sandbox failed: {message}");
            let _ = self.release(id, SandboxStatus::Failed, Some((reason, message)), exit_code);
        }
    }
}
