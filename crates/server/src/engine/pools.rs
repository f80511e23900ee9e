//! Pools: create from a template (or inline), read with live status, update, delete.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentbox_core::duration::WireDuration;
use agentbox_core::error::{AppError, AvailableTemplateSummary, AvailableTemplatesDetail};
use agentbox_core::model::{
    AutoscalingSpec, PodCreationImagePolicy, Pool, PoolOverrides, PoolSpec, RegistryCredential, SandboxSpec, SlotPhase,
};
use agentbox_core::quantity::{
    MAX_CPU_MILLIS, MAX_MEMORY_BYTES, format_cpu_millis, format_memory_bytes, parse_cpu_millis, parse_memory_bytes,
};
use agentbox_core::reconcile::{PoolCounts, PoolPhase, pool_phase};
use agentbox_core::store::StoreError;
use agentbox_core::validate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::events::{PodDiagnosticEvent, PoolEvent};
use super::{Engine, now};
use crate::auth::AuthInfo;

/// Upper bound on `replicas`, a guard against typos.
pub const MAX_REPLICAS: u32 = 5000;

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreatePoolRequest {
    /// DNS label.
    pub name: String,
    /// Copy the sandbox definition from this template (else give `template`).
    #[serde(default)]
    pub template_name: Option<String>,
    /// Inline sandbox definition (instead of `templateName`).
    #[serde(default)]
    pub template: Option<SandboxSpec>,
    /// Total slots (default 1).
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub min_replicas: Option<u32>,
    #[serde(default)]
    pub max_replicas: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub overrides: Option<PoolOverrides>,
    #[serde(default)]
    pub default_startup_timeout: Option<WireDuration>,
    #[serde(default)]
    pub default_idle_timeout: Option<WireDuration>,
    #[serde(default)]
    pub pod_creation_image_policy: Option<PodCreationImagePolicy>,
    #[serde(default)]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Deprecated: use `reservation: {quotaURL}`.
    #[serde(default, rename = "quotaURL", alias = "quotaUrl")]
    pub quota_url: Option<String>,
    /// Charge the pool's slots to a quota; admitted against its free resources (429 when full).
    #[serde(default)]
    pub reservation: Option<agentbox_core::model::Reservation>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePoolRequest {
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub min_replicas: Option<u32>,
    #[serde(default)]
    pub max_replicas: Option<u32>,
    #[serde(default)]
    pub pod_creation_image_policy: Option<PodCreationImagePolicy>,
    /// Only `overrides.image` can change after creation.
    #[serde(default)]
    pub overrides: Option<PoolOverrides>,
    #[serde(default)]
    pub autoscaling: Option<AutoscalingSpec>,
    #[serde(default)]
    pub default_startup_timeout: Option<WireDuration>,
    #[serde(default)]
    pub default_idle_timeout: Option<WireDuration>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCondition {
    /// `Available`, `Scaling` or `Degraded`.
    #[serde(rename = "type")]
    pub kind: String,
    pub status: bool,
    /// Available: `IdleSlotsAvailable`, `NoIdleSlotsAvailable`, `ScalingUp`. Scaling: `ScalingUp`,
    /// `ScalingDown`, `ReplicasReady`. Degraded: the failure reason shared by all failed slots
    /// (e.g. `ImagePullBackOff`), else `FailedSlotsPresent`, `UnhealthyIdleSlots`,
    /// `UnhealthyAndFailedSlots`, or `AllSlotsHealthy`.
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Why a slot is not usable (failed slots, and slots with recent warning events).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolDiagnostic {
    pub pod_name: String,
    pub phase: SlotPhase,
    /// e.g. `ImagePullBackOff`, `CreateFailed`, `OOMKilled`, `CrashLoop`.
    pub reason: String,
    pub message: String,
    /// The slot's recent warning events, newest first (in memory: empty after a restart).
    pub events: Vec<PodDiagnosticEvent>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub phase: PoolPhase,
    #[serde(flatten)]
    pub counts: PoolCounts,
    pub conditions: Vec<PoolCondition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<PoolDiagnostic>,
    /// Recent events of the pool (autoscaler decisions, slot failures, scale-down removals),
    /// newest first, at most 50. Kept in memory only: empty after a restart.
    pub events: Vec<PoolEvent>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub team: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    pub spec: PoolSpec,
    /// Override intent (registry passwords are never returned).
    pub overrides: PoolOverrides,
    pub status: PoolStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub created_at: String,
    pub resource_version: u64,
}

fn scale_quantity(q: &mut Option<String>, m: u32, cpu: bool) -> Result<(), AppError> {
    let too_much = || AppError::bad_request(format!("resources × resourceMultiplier {m} is more than a slot can have"));
    if let Some(v) = q {
        *v = if cpu {
            let millis = parse_cpu_millis(v).map_err(AppError::bad_request)?.checked_mul(u64::from(m));
            format_cpu_millis(millis.filter(|x| *x <= MAX_CPU_MILLIS).ok_or_else(too_much)?)
        } else {
            let bytes = parse_memory_bytes(v).map_err(AppError::bad_request)?.checked_mul(u64::from(m));
            format_memory_bytes(bytes.filter(|x| *x <= MAX_MEMORY_BYTES).ok_or_else(too_much)?)
        };
    }
    Ok(())
}

/// The template copy with the pool's overrides applied (image → container 0, resources × N).
pub fn apply_overrides(base: &SandboxSpec, o: &PoolOverrides) -> Result<SandboxSpec, AppError> {
    validate::sandbox_spec(base)?;
    let mut s = base.clone();
    if let Some(img) = &o.image {
        validate::image_ref("overrides.image", img)?;
        s.containers[0].image = img.clone();
    }
    if let Some(m) = o.resource_multiplier {
        if m < 1 {
            return Err(AppError::bad_request("overrides.resourceMultiplier must be >= 1"));
        }
        for c in &mut s.containers {
            for q in [&mut c.resources.requests, &mut c.resources.limits] {
                scale_quantity(&mut q.cpu, m, true)?;
                scale_quantity(&mut q.memory, m, false)?;
            }
        }
    }
    if let Some(ips) = &o.image_pull_secret
        && (ips.registries.is_empty() || ips.registries.iter().any(|r| r.registry.is_empty() || r.username.is_empty()))
    {
        return Err(AppError::bad_request(
            "overrides.imagePullSecret.registries needs at least one entry with registry, username and password",
        ));
    }
    validate::sandbox_spec(&s)?;
    Ok(s)
}

fn validate_sizes(
    replicas: u32,
    min: Option<u32>,
    max: Option<u32>,
    autoscaling: Option<&AutoscalingSpec>,
) -> Result<(), AppError> {
    if replicas > MAX_REPLICAS {
        return Err(AppError::bad_request(format!("replicas {replicas} is above the limit of {MAX_REPLICAS}")));
    }
    if autoscaling.is_some_and(|a| a.enabled) {
        let (Some(min), Some(max)) = (min, max) else {
            return Err(AppError::bad_request("autoscaling needs minReplicas and maxReplicas"));
        };
        if min > max || replicas < min || replicas > max {
            return Err(AppError::bad_request(format!(
                "need minReplicas <= replicas <= maxReplicas, got {min} <= {replicas} <= {max}"
            )));
        }
    } else if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        return Err(AppError::bad_request(format!("minReplicas {min} is greater than maxReplicas {max}")));
    }
    Ok(())
}

fn redact(o: &PoolOverrides) -> PoolOverrides {
    let mut o = o.clone();
    if let Some(ips) = &mut o.image_pull_secret {
        ips.registries = ips
            .registries
            .iter()
            .map(|r| RegistryCredential {
                registry: r.registry.clone(),
                username: r.username.clone(),
                password: "***".into(),
            })
            .collect();
    }
    o
}

impl Engine {
    pub fn create_pool(self: &Arc<Self>, auth: &AuthInfo, req: CreatePoolRequest) -> Result<PoolView, AppError> {
        validate::dns_label("name", &req.name)?;
        let (base, template_name, template_version) = match (&req.template_name, &req.template) {
            (Some(_), Some(_)) => return Err(AppError::bad_request("give either templateName or template, not both")),
            (None, None) => {
                return Err(AppError::bad_request("either templateName or template is required")
                    .with_detail(&self.available_templates(auth)));
            }
            (None, Some(inline)) => (inline.clone(), None, None),
            (Some(name), None) => match self.store.get_template(name)? {
                Some(t) if auth.is_admin() || t.spec.visibility.allows(&auth.team, &auth.user) => {
                    (t.spec.sandbox.clone(), Some(name.clone()), Some(t.spec.version.clone()))
                }
                _ => {
                    return Err(AppError::bad_request(format!("sandbox template {name:?} not found"))
                        .with_detail(&self.available_templates(auth)));
                }
            },
        };
        let overrides = req.overrides.clone().unwrap_or_default();
        let effective = apply_overrides(&base, &overrides)?;
        let replicas = req.replicas.unwrap_or(1);
        validate_sizes(replicas, req.min_replicas, req.max_replicas, req.autoscaling.as_ref())?;
        let mut pool = Pool {
            name: req.name.clone(),
            namespace: auth.namespace.clone(),
            team: auth.team.clone(),
            user: auth.user.clone(),
            spec: PoolSpec {
                replicas,
                min_replicas: req.min_replicas,
                max_replicas: req.max_replicas,
                template_name,
                template: effective,
                default_startup_timeout: req.default_startup_timeout.filter(|d| !d.is_zero()),
                default_idle_timeout: req.default_idle_timeout.filter(|d| !d.is_zero()),
                pod_creation_image_policy: req.pod_creation_image_policy.unwrap_or_default(),
                autoscaling: req.autoscaling,
                quota_url: req.quota_url,
                reservation: req.reservation,
            },
            overrides,
            labels: req.labels,
            annotations: req.annotations,
            template_version,
            created_at: now(),
            resource_version: 1,
            deleting: false,
        };
        let _quota = self.admit_reservation(auth, &mut pool, None)?;
        self.store.create_pool(&pool).map_err(|e| match e {
            StoreError::Conflict(_) => AppError::conflict(format!("pool {:?} already exists", pool.name)),
            e => e.into(),
        })?;
        tracing::info!(pool = %pool.name, replicas, "pool created");
        self.ensure_pool_rt(&pool);
        self.pool_view(pool)
    }

    fn available_templates(&self, auth: &AuthInfo) -> AvailableTemplatesDetail {
        let list: Vec<AvailableTemplateSummary> = self
            .list_templates(auth)
            .unwrap_or_default()
            .into_iter()
            .map(|t| AvailableTemplateSummary { name: t.name, description: t.description })
            .collect();
        let hint = if list.is_empty() {
            "No templates are visible to this team/user. Ask an admin to create one, or define the pool inline with `template`."
        } else {
            "Template not found. Pick a name from availableTemplates, or define the pool inline with `template`."
        };
        AvailableTemplatesDetail { available_templates: list, hint: Some(hint.into()) }
    }

    /// Load a pool the caller may see (404 otherwise).
    /// Admins find a pool of any namespace by name when it is not in their own and the name is
    /// unique; a name used in several namespaces asks them to impersonate the owner.
    pub(crate) fn visible_pool(&self, auth: &AuthInfo, name: &str) -> Result<Pool, AppError> {
        if let Some(p) = self.store.get_pool(&auth.namespace, name)?
            && auth.may_use(&p.team, &p.user)
        {
            return Ok(p);
        }
        if auth.is_admin() {
            let mut found: Vec<Pool> = self.store.list_pools(None)?.into_iter().filter(|p| p.name == name).collect();
            if found.len() == 1 {
                return Ok(found.remove(0));
            }
            if found.len() > 1 {
                let where_: Vec<String> = found.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
                return Err(AppError::conflict(format!(
                    "pool name {name:?} is used in several namespaces ({}); act as its owner with \
                     X-Impersonate-Team and X-Impersonate-User",
                    where_.join(", ")
                )));
            }
        }
        Err(AppError::not_found(format!("pool {name:?} not found")))
    }

    pub fn get_pool(&self, auth: &AuthInfo, name: &str) -> Result<PoolView, AppError> {
        self.pool_view(self.visible_pool(auth, name)?)
    }

    pub fn list_pools(&self, auth: &AuthInfo) -> Result<Vec<PoolView>, AppError> {
        let ns = if auth.is_admin() { None } else { Some(auth.namespace.as_str()) };
        let mut out = vec![];
        for p in self.store.list_pools(ns)? {
            if auth.may_use(&p.team, &p.user) {
                out.push(self.pool_view(p)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.namespace.cmp(&b.namespace)));
        Ok(out)
    }

    pub fn update_pool(
        self: &Arc<Self>,
        auth: &AuthInfo,
        name: &str,
        req: UpdatePoolRequest,
    ) -> Result<PoolView, AppError> {
        let nothing = req.replicas.is_none()
            && req.min_replicas.is_none()
            && req.max_replicas.is_none()
            && req.pod_creation_image_policy.is_none()
            && req.overrides.as_ref().and_then(|o| o.image.as_ref()).is_none()
            && req.autoscaling.is_none()
            && req.default_startup_timeout.is_none()
            && req.default_idle_timeout.is_none();
        if nothing {
            return Err(AppError::bad_request(
                "nothing to update: give at least one of replicas, minReplicas, maxReplicas, podCreationImagePolicy, overrides.image, autoscaling, defaultStartupTimeout, defaultIdleTimeout",
            ));
        }
        if req.overrides.as_ref().is_some_and(|o| o.resource_multiplier.is_some() || o.image_pull_secret.is_some()) {
            return Err(AppError::bad_request("only overrides.image can be changed after creation"));
        }
        for _ in 0..5 {
            let cur = self.visible_pool(auth, name)?;
            if cur.deleting {
                return Err(AppError::conflict(format!("pool {name:?} is being deleted")));
            }
            let mut p = cur.clone();
            if let Some(r) = req.replicas {
                p.spec.replicas = r;
            }
            if req.min_replicas.is_some() {
                p.spec.min_replicas = req.min_replicas;
            }
            if req.max_replicas.is_some() {
                p.spec.max_replicas = req.max_replicas;
            }
            if let Some(pol) = req.pod_creation_image_policy {
                p.spec.pod_creation_image_policy = pol;
            }
            if let Some(a) = &req.autoscaling {
                p.spec.autoscaling = Some(a.clone());
            }
            if let Some(d) = req.default_startup_timeout {
                p.spec.default_startup_timeout = Some(d).filter(|d| !d.is_zero());
            }
            if let Some(d) = req.default_idle_timeout {
                p.spec.default_idle_timeout = Some(d).filter(|d| !d.is_zero());
            }
            if let Some(img) = req.overrides.as_ref().and_then(|o| o.image.clone()) {
                validate::image_ref("overrides.image", &img)?;
                p.overrides.image = Some(img.clone());
                p.spec.template.containers[0].image = img;
                validate::sandbox_spec(&p.spec.template)?;
            }
            validate_sizes(p.spec.replicas, p.spec.min_replicas, p.spec.max_replicas, p.spec.autoscaling.as_ref())?;
            p.resource_version = cur.resource_version + 1;
            let _quota = self.admit_reservation(auth, &mut p, Some(&cur))?;
            match self.store.update_pool(&p, cur.resource_version) {
                Ok(()) => {
                    if let Some(rt) = self.pool_rt(&(p.namespace.clone(), p.name.clone())) {
                        rt.wake.notify_one();
                    }
                    return self.pool_view(p);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::conflict(format!("pool {name:?} is changing concurrently; retry")))
    }

    /// Mark the pool Terminating; its reconciler destroys the slots and then the pool.
    pub fn delete_pool(self: &Arc<Self>, auth: &AuthInfo, name: &str) -> Result<Pool, AppError> {
        for _ in 0..5 {
            let cur = self.visible_pool(auth, name)?;
            if cur.deleting {
                return Ok(cur);
            }
            let mut p = cur.clone();
            p.deleting = true;
            p.resource_version += 1;
            match self.store.update_pool(&p, cur.resource_version) {
                Ok(()) => {
                    let rt = self.ensure_pool_rt(&p);
                    for w in rt.queue.lock().drain_waiters() {
                        drop(w);
                    }
                    rt.wake.notify_one();
                    return Ok(p);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::conflict(format!("pool {name:?} is changing concurrently; retry")))
    }

    pub(crate) fn pool_view(&self, p: Pool) -> Result<PoolView, AppError> {
        let counts = self.pool_counts(&p)?;
        let phase = pool_phase(p.spec.replicas, &counts, p.deleting);
        let slots = self.slots_of(&p)?;
        let (events, warnings_of) = match self.pool_rt(&(p.namespace.clone(), p.name.clone())) {
            Some(rt) => {
                let ring = rt.events.lock();
                let w: BTreeMap<String, Vec<PodDiagnosticEvent>> =
                    slots.iter().map(|s| (s.slot_id.clone(), ring.warnings_of(&s.slot_id))).collect();
                (ring.newest_first(), w)
            }
            None => (vec![], BTreeMap::new()),
        };
        let diagnostics = pool_diagnostics(slots, &warnings_of);
        let conditions = pool_conditions(phase, &counts, &diagnostics);
        let r = validate::slot_resources(&p.spec.template.containers).unwrap_or_default();
        Ok(PoolView {
            overrides: redact(&p.overrides),
            status: PoolStatus { phase, counts, conditions, diagnostics, events },
            cpu: r.cpu_millis.map(format_cpu_millis),
            memory: r.memory_bytes.map(format_memory_bytes),
            name: p.name,
            namespace: p.namespace,
            team: p.team,
            user: p.user,
            spec: p.spec,
            template_version: p.template_version,
            labels: p.labels,
            annotations: p.annotations,
            created_at: p.created_at,
            resource_version: p.resource_version,
        })
    }
}

impl Engine {
    /// The pool's status for [`Backend::publish_pool_status`](agentbox_core::backend::Backend::publish_pool_status):
    /// phase, counts, conditions and diagnostics as in [`PoolView`], without the events (which
    /// change with time, not with the pool).
    pub(crate) fn pool_status_report(&self, p: &Pool) -> Result<agentbox_core::backend::PoolStatusReport, AppError> {
        use agentbox_core::backend::{PoolStatusCondition, PoolStatusDiagnostic, PoolStatusReport};
        let counts = self.pool_counts(p)?;
        let phase = pool_phase(p.spec.replicas, &counts, p.deleting);
        let slots = self.slots_of(p)?;
        let warnings_of: BTreeMap<String, Vec<PodDiagnosticEvent>> =
            match self.pool_rt(&(p.namespace.clone(), p.name.clone())) {
                Some(rt) => {
                    let ring = rt.events.lock();
                    slots.iter().map(|s| (s.slot_id.clone(), ring.warnings_of(&s.slot_id))).collect()
                }
                None => BTreeMap::new(),
            };
        let diagnostics = pool_diagnostics(slots, &warnings_of);
        let conditions = pool_conditions(phase, &counts, &diagnostics)
            .into_iter()
            .map(|c| PoolStatusCondition { kind: c.kind, status: c.status, reason: c.reason, message: c.message })
            .collect();
        let diagnostics = diagnostics
            .into_iter()
            .map(|d| PoolStatusDiagnostic { slot_id: d.pod_name, reason: d.reason, message: d.message })
            .collect();
        Ok(PoolStatusReport { phase, counts, conditions, diagnostics })
    }
}

/// Diagnostics of a pool's slots: every failed slot, and any other slot with warning events.
fn pool_diagnostics(
    slots: Vec<agentbox_core::model::Slot>,
    warnings_of: &BTreeMap<String, Vec<PodDiagnosticEvent>>,
) -> Vec<PoolDiagnostic> {
    slots
        .into_iter()
        .filter_map(|s| {
            let events = warnings_of.get(&s.slot_id).cloned().unwrap_or_default();
            if s.phase != SlotPhase::Failed && events.is_empty() {
                return None;
            }
            let (reason, message) = if s.phase == SlotPhase::Failed {
                (s.failure_reason.unwrap_or_else(|| "Unknown".into()), s.failure_message.unwrap_or_default())
            } else {
                (events[0].reason.clone(), events[0].message.clone())
            };
            Some(PoolDiagnostic { pod_name: s.slot_id, phase: s.phase, reason, message, events })
        })
        .collect()
}

/// The Available, Scaling and Degraded conditions of a pool.
fn pool_conditions(phase: PoolPhase, counts: &PoolCounts, diagnostics: &[PoolDiagnostic]) -> Vec<PoolCondition> {
    let claimable = counts.idle.saturating_sub(counts.unavailable_idle);
    let available = PoolCondition {
        kind: "Available".into(),
        status: claimable > 0,
        reason: match (claimable > 0, phase) {
            (true, _) => "IdleSlotsAvailable",
            (false, PoolPhase::ScalingUp) => "ScalingUp",
            (false, _) => "NoIdleSlotsAvailable",
        }
        .into(),
        message: format!("{claimable} idle slot(s) can be claimed"),
    };
    let scaling = PoolCondition {
        kind: "Scaling".into(),
        status: matches!(phase, PoolPhase::ScalingUp | PoolPhase::ScalingDown),
        reason: match phase {
            PoolPhase::ScalingUp => "ScalingUp",
            PoolPhase::ScalingDown => "ScalingDown",
            _ => "ReplicasReady",
        }
        .into(),
        message: String::new(),
    };
    let failed: Vec<&PoolDiagnostic> = diagnostics.iter().filter(|d| d.phase == SlotPhase::Failed).collect();
    let (reason, message) = match (counts.failed > 0, counts.unavailable_idle > 0) {
        (false, false) => ("AllSlotsHealthy".to_string(), String::new()),
        (false, true) => {
            ("UnhealthyIdleSlots".to_string(), format!("{} idle slot(s) are not usable", counts.unavailable_idle))
        }
        (true, unhealthy) => {
            let first = failed.first();
            let same = first.is_some_and(|f| failed.iter().all(|d| d.reason == f.reason));
            let reason = match (unhealthy, same, first) {
                (true, _, _) => "UnhealthyAndFailedSlots".to_string(),
                (false, true, Some(f)) => f.reason.clone(),
                _ => "FailedSlotsPresent".to_string(),
            };
            let detail = first.map(|f| format!(": {} {}: {}", f.pod_name, f.reason, f.message)).unwrap_or_default();
            (reason, format!("{} slot(s) cannot become idle{detail}", counts.failed))
        }
    };
    let degraded = PoolCondition {
        kind: "Degraded".into(),
        status: counts.failed > 0 || counts.unavailable_idle > 0,
        reason,
        message,
    };
    vec![available, scaling, degraded]
}
