//! Quotas: admin-managed resource budgets that pools reserve capacity against.
//!
//! # Model
//!
//! * A quota has a **hierarchical, dot-separated URL** (`org.team.user`, each segment a DNS label)
//!   and optional limits `cpu`, `memory` and `sandboxes`; a missing limit means "not limited".
//!   Quota URLs are unique: two quotas never share a URL.
//! * A pool asks to be charged with `reservation: {quotaURL}` in its create request (stored as
//!   `spec.reservation`), or the deprecated top-level `quotaURL`/`quotaUrl`. A
//!   reservation without a URL uses the caller's default quota URL (from its API key); the server
//!   stores the URL it resolved, so the charge never depends on who later edits the pool.
//! * A pool charged to `org.team.user` counts against **every existing quota whose URL is that URL or
//!   a dot-prefix of it** (`org.team.user`, `org.team`, `org`). Prefixes match whole segments only:
//!   `org.te` does not cover `org.team`.
//! * **Per-slot** resources are the sums of the pool's container *requests* (a container without a
//!   request counts its limit, as Kubernetes defaults a missing request to the limit). The pool's
//!   template is the effective copy, with `overrides.resourceMultiplier` already applied to every
//!   request and limit, so the multiplier is counted exactly once. A slot also counts one sandbox.
//! * `reserved` = Σ over charged pools that are not being deleted of `replicas × per-slot`.
//!   `used` = Σ over charged pools of live sandboxes (Starting, Running, Stopping) `× per-slot`.
//!   `free` = `resources − reserved`, floored at 0, only for the limited resources.
//!
//! # Admission
//!
//! Pool creation with a reservation, and a pool update that raises `replicas` of a reserving pool,
//! are admitted when the added `Δreplicas × per-slot` fits in `free` of the named quota **and** of
//! every ancestor quota that exists; otherwise 429 `QUOTA_EXCEEDED` with `Retry-After`. Scale-in is
//! always allowed, also when a quota was lowered below what is reserved. Admission holds one engine
//! mutex from the usage read until the caller has written the pool, so two concurrent creates can
//! never both take the last free capacity. Quota writes take the same mutex.
//!
//! # Wire format of quantities
//!
//! CPU and memory are strings in canonical form: CPU in whole cores when exact (`"2"`), else in
//! millicores (`"1500m"`); memory in the largest binary unit that divides it exactly (`"8Gi"`,
//! `"1536Mi"`, `"4Ki"`), else in bytes (`"1000"`). `sandboxes` is a number. Limits given by the admin
//! are stored in this canonical form (`"0.5"` becomes `"500m"`, `"1G"` becomes `"1000000000"`).

use std::collections::{BTreeMap, HashMap};

use agentbox_core::error::AppError;
use agentbox_core::identity::{QuotaQueue, QuotaRecord, QuotaResources};
use agentbox_core::model::{Pool, Reservation, SandboxSpec, SlotPhase};
use agentbox_core::quantity::{format_cpu_millis, format_memory_bytes, parse_cpu_millis, parse_memory_bytes};
use agentbox_core::store::StoreError;
use agentbox_core::validate;
use parking_lot::MutexGuard;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Engine, now};
use crate::auth::AuthInfo;

/// Business error code of a refused reservation.
pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
/// `Retry-After` (seconds) of a refused reservation.
pub const QUOTA_RETRY_AFTER_SECS: u64 = 30;

// ------------------------------------------------------------------------------------------------
// Quota math (pure)

/// Resource amounts in base units (millicores, bytes, slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amounts {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub sandboxes: u64,
}

impl Amounts {
    fn add(&mut self, o: Amounts) {
        self.cpu_millis = self.cpu_millis.saturating_add(o.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(o.memory_bytes);
        self.sandboxes = self.sandboxes.saturating_add(o.sandboxes);
    }
    fn times(self, n: u64) -> Amounts {
        Amounts {
            cpu_millis: self.cpu_millis.saturating_mul(n),
            memory_bytes: self.memory_bytes.saturating_mul(n),
            sandboxes: self.sandboxes.saturating_mul(n),
        }
    }
    /// Every resource, in canonical wire form.
    pub fn to_wire(self) -> QuotaResources {
        QuotaResources {
            cpu: Some(format_cpu_millis(self.cpu_millis)),
            memory: Some(format_memory_bytes(self.memory_bytes)),
            sandboxes: Some(self.sandboxes),
        }
    }
}

/// Per-resource amounts where `None` means "not limited" (limits) or "not applicable" (free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub sandboxes: Option<u64>,
}

impl Limits {
    /// Parse the limits of a quota; the error names the bad quantity.
    pub fn parse(r: &QuotaResources) -> Result<Limits, String> {
        Ok(Limits {
            cpu_millis: r.cpu.as_deref().map(parse_cpu_millis).transpose()?,
            memory_bytes: r.memory.as_deref().map(parse_memory_bytes).transpose()?,
            sandboxes: r.sandboxes,
        })
    }
    /// `limit − reserved`, floored at 0, for the limited resources only.
    pub fn free(&self, reserved: Amounts) -> Limits {
        Limits {
            cpu_millis: self.cpu_millis.map(|l| l.saturating_sub(reserved.cpu_millis)),
            memory_bytes: self.memory_bytes.map(|l| l.saturating_sub(reserved.memory_bytes)),
            sandboxes: self.sandboxes.map(|l| l.saturating_sub(reserved.sandboxes)),
        }
    }
    /// Does `req` fit in these (free) amounts? Unlimited resources always fit.
    pub fn fits(&self, req: Amounts) -> bool {
        self.cpu_millis.is_none_or(|f| req.cpu_millis <= f)
            && self.memory_bytes.is_none_or(|f| req.memory_bytes <= f)
            && self.sandboxes.is_none_or(|f| req.sandboxes <= f)
    }
    /// The limited resources, in canonical wire form.
    pub fn to_wire(self) -> QuotaResources {
        QuotaResources {
            cpu: self.cpu_millis.map(format_cpu_millis),
            memory: self.memory_bytes.map(format_memory_bytes),
            sandboxes: self.sandboxes,
        }
    }
    /// `cpu=2,memory=4Gi,sandboxes=3` (limited resources only; empty when nothing is limited).
    pub fn summary(self) -> String {
        let mut parts = vec![];
        if let Some(c) = self.cpu_millis {
            parts.push(format!("cpu={}", format_cpu_millis(c)));
        }
        if let Some(m) = self.memory_bytes {
            parts.push(format!("memory={}", format_memory_bytes(m)));
        }
        if let Some(s) = self.sandboxes {
            parts.push(format!("sandboxes={s}"));
        }
        parts.join(",")
    }
}

/// What one slot of a pool with this (effective) sandbox definition takes from a quota: the summed
/// container requests (limit when a container has no request) and one sandbox.
pub fn slot_request(spec: &SandboxSpec) -> Result<Amounts, String> {
    let mut a = Amounts { sandboxes: 1, ..Default::default() };
    for c in &spec.containers {
        let r = &c.resources;
        if let Some(cpu) = r.requests.cpu.as_ref().or(r.limits.cpu.as_ref()) {
            let m = parse_cpu_millis(cpu).map_err(|e| format!("container {}: {e}", c.name))?;
            a.cpu_millis = a.cpu_millis.saturating_add(m);
        }
        if let Some(mem) = r.requests.memory.as_ref().or(r.limits.memory.as_ref()) {
            let b = parse_memory_bytes(mem).map_err(|e| format!("container {}: {e}", c.name))?;
            a.memory_bytes = a.memory_bytes.saturating_add(b);
        }
    }
    Ok(a)
}

/// Does a quota at `quota_url` cover a pool charged to `pool_url` (same URL or a whole-segment
/// dot-prefix of it)?
pub fn covers(quota_url: &str, pool_url: &str) -> bool {
    pool_url == quota_url
        || (pool_url.len() > quota_url.len()
            && pool_url.starts_with(quota_url)
            && pool_url.as_bytes()[quota_url.len()] == b'.')
}

/// `url` and each of its dot-prefixes, most specific first (`a.b.c`, `a.b`, `a`).
pub fn url_chain(url: &str) -> Vec<&str> {
    let mut out = vec![url];
    let mut rest = url;
    while let Some(i) = rest.rfind('.') {
        rest = &rest[..i];
        out.push(rest);
    }
    out
}

/// A quota URL: dot-separated DNS labels, at most 253 characters.
pub fn validate_quota_url(field: &str, url: &str) -> Result<(), AppError> {
    let bad = || {
        AppError::bad_request(format!(
            "{field} {url:?} is not valid: use dot-separated segments like \"org.team.user\", each 1-63 lowercase letters, digits and '-', starting with a letter"
        ))
    };
    if url.is_empty() || url.len() > 253 {
        return Err(bad());
    }
    for seg in url.split('.') {
        validate::dns_label(field, seg).map_err(|_| bad())?;
    }
    Ok(())
}

/// The quota URL a stored pool is charged to, if any.
pub fn charged_url(pool: &Pool) -> Option<String> {
    pool.spec.effective_reservation().and_then(|r| r.quota_url).filter(|u| !u.is_empty())
}

/// A pool charged to a quota URL, with what it takes.
#[derive(Debug, Clone)]
pub struct ChargedPool {
    pub namespace: String,
    pub name: String,
    pub team: String,
    pub user: String,
    pub url: String,
    pub per_slot: Amounts,
    pub replicas: u64,
    /// Live sandboxes (Starting, Running, Stopping).
    pub live: u64,
    pub deleting: bool,
}

/// Usage of one quota.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub reserved: Amounts,
    pub used: Amounts,
}

/// Usage of the quota at `quota_url` from every pool it covers.
pub fn usage_of(quota_url: &str, pools: &[ChargedPool]) -> Usage {
    let mut u = Usage::default();
    for p in pools.iter().filter(|p| covers(quota_url, &p.url)) {
        if !p.deleting {
            u.reserved.add(p.per_slot.times(p.replicas));
        }
        u.used.add(p.per_slot.times(p.live));
    }
    u
}

// ------------------------------------------------------------------------------------------------
// Wire types

/// Quota limits as the admin sends them.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaResourcesInput {
    /// CPU quantity (`"4"`, `"500m"`); absent = not limited.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Memory quantity (`"8Gi"`, `"512Mi"`); absent = not limited.
    #[serde(default)]
    pub memory: Option<String>,
    /// Number of slots; absent = not limited.
    #[serde(default)]
    pub sandboxes: Option<u64>,
}

/// `POST /v1/admin/quotas`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateQuotaRequest {
    /// DNS label.
    pub name: String,
    /// Hierarchical, dot-separated URL (`org.team.user`); unique among quotas.
    #[serde(rename = "quotaURL", alias = "quotaUrl")]
    pub quota_url: String,
    /// Default `exclusive`.
    #[serde(default)]
    pub queue: Option<QuotaQueue>,
    /// Owner team; empty = any team.
    #[serde(default)]
    pub team: Option<String>,
    /// Owner user; empty = any user of the team.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub resources: QuotaResourcesInput,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `PUT /v1/admin/quotas/{name}`: replaces every spec field (absent optional fields become empty).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateQuotaRequest {
    #[serde(rename = "quotaURL", alias = "quotaUrl")]
    pub quota_url: String,
    #[serde(default)]
    pub queue: Option<QuotaQueue>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub resources: QuotaResourcesInput,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When given, the update fails with 409 unless it equals the stored resourceVersion.
    #[serde(default)]
    pub resource_version: Option<u64>,
}

/// A quota with its live accounting.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaView {
    pub name: String,
    #[serde(rename = "quotaURL")]
    pub quota_url: String,
    pub queue: QuotaQueue,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub team: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Limits; a missing resource is not limited.
    pub resources: QuotaResources,
    /// Held by live sandboxes of the pools this quota covers.
    pub used: QuotaResources,
    /// Reserved by the pools this quota covers (replicas × per-slot).
    pub reserved: QuotaResources,
    /// `resources − reserved`, floored at 0, for the limited resources.
    pub free: QuotaResources,
    /// The quota URL (or the name when the URL is empty), for display.
    pub label: String,
    /// Pools counted against this quota, as `namespace/name` (tenants see only their own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    pub resource_version: u64,
}

/// One quota the caller may name in a pool's `reservation.quotaURL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AvailableQuotaURLSummary {
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue: String,
    /// Free resources like `cpu=2,memory=4Gi,sandboxes=3` (limited resources only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub free: String,
}

/// Attached to 400 when a reservation names no quota, or one the caller may not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailableQuotaURLsDetail {
    #[serde(rename = "availableQuotaURLs")]
    pub available_quota_urls: Vec<AvailableQuotaURLSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Attached to 429 `QUOTA_EXCEEDED`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaExceededDetail {
    pub err_code: String,
    pub message: String,
    /// Seconds (also the `Retry-After` header).
    pub retry_after: u64,
    /// The quota that has not enough free resources (the named one or an ancestor).
    #[serde(rename = "quotaURL")]
    pub quota_url: String,
    /// What the pool (or its scale-out) would add.
    pub requested: QuotaResources,
    /// What that quota has free (limited resources only).
    pub free: QuotaResources,
}

// ------------------------------------------------------------------------------------------------
// Engine

fn require_admin(auth: &AuthInfo) -> Result<(), AppError> {
    if auth.is_admin() { Ok(()) } else { Err(AppError::forbidden("admin access required")) }
}

fn queue_str(q: QuotaQueue) -> &'static str {
    match q {
        QuotaQueue::Exclusive => "exclusive",
        QuotaQueue::Ondemand => "ondemand",
        QuotaQueue::Idle => "idle",
    }
}

/// Validate limits and bring them to canonical form.
fn canonical_resources(r: &QuotaResourcesInput) -> Result<QuotaResources, AppError> {
    let cpu = r
        .cpu
        .as_deref()
        .map(|c| {
            parse_cpu_millis(c).map(format_cpu_millis).map_err(|e| AppError::bad_request(format!("resources.cpu: {e}")))
        })
        .transpose()?;
    let memory = r
        .memory
        .as_deref()
        .map(|m| {
            parse_memory_bytes(m)
                .map(format_memory_bytes)
                .map_err(|e| AppError::bad_request(format!("resources.memory: {e}")))
        })
        .transpose()?;
    Ok(QuotaResources { cpu, memory, sandboxes: r.sandboxes })
}

fn clean(s: Option<String>) -> String {
    s.map(|s| s.trim().to_string()).unwrap_or_default()
}

impl Engine {
    /// Every pool charged to a quota URL, with its per-slot request and live sandbox count.
    fn charged_pools(&self) -> Result<Vec<ChargedPool>, AppError> {
        let mut live: HashMap<(String, String), u64> = HashMap::new();
        for s in self.store.list_slots()? {
            if matches!(s.phase, SlotPhase::Starting | SlotPhase::Running | SlotPhase::Stopping) {
                *live.entry((s.namespace, s.pool)).or_default() += 1;
            }
        }
        let mut out = vec![];
        for p in self.store.list_pools(None)? {
            let Some(url) = charged_url(&p) else { continue };
            let per_slot = slot_request(&p.spec.template).unwrap_or_else(|e| {
                tracing::warn!(pool = %p.name, error = %e, "pool resources do not parse; counting its slots only");
                Amounts { sandboxes: 1, ..Default::default() }
            });
            out.push(ChargedPool {
                live: live.get(&(p.namespace.clone(), p.name.clone())).copied().unwrap_or(0),
                namespace: p.namespace,
                name: p.name,
                team: p.team,
                user: p.user,
                url,
                per_slot,
                replicas: p.spec.replicas as u64,
                deleting: p.deleting,
            });
        }
        Ok(out)
    }

    fn quota_view(&self, q: QuotaRecord, pools: &[ChargedPool], auth: &AuthInfo) -> QuotaView {
        let usage = usage_of(&q.quota_url, pools);
        let limits = Limits::parse(&q.resources).unwrap_or_default();
        let names = pools
            .iter()
            .filter(|p| covers(&q.quota_url, &p.url) && auth.may_use(&p.team, &p.user))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        QuotaView {
            label: if q.quota_url.is_empty() { q.name.clone() } else { q.quota_url.clone() },
            used: usage.used.to_wire(),
            reserved: usage.reserved.to_wire(),
            free: limits.free(usage.reserved).to_wire(),
            pools: names,
            name: q.name,
            quota_url: q.quota_url,
            queue: q.queue,
            team: q.team,
            user: q.user,
            resources: q.resources,
            description: q.description,
            labels: q.labels,
            created_at: q.created_at,
            resource_version: q.resource_version,
        }
    }

    fn get_quota_record(&self, name: &str) -> Result<QuotaRecord, AppError> {
        self.store.get_quota(name)?.ok_or_else(|| AppError::not_found(format!("quota {name:?} not found")))
    }

    /// 409 when another quota already has `url`.
    fn check_url_unique(&self, name: &str, url: &str) -> Result<(), AppError> {
        if let Some(other) = self.store.list_quotas()?.into_iter().find(|q| q.quota_url == url && q.name != name) {
            return Err(AppError::conflict(format!(
                "quota URL {url:?} is already used by quota {:?}; pick another URL or update that quota",
                other.name
            )));
        }
        Ok(())
    }

    /// Pools charged to exactly `url` (they would lose their quota if it went away).
    fn pools_charged_to(&self, url: &str) -> Result<Vec<String>, AppError> {
        Ok(self
            .charged_pools()?
            .into_iter()
            .filter(|p| p.url == url)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect())
    }

    /// Create a quota (admin).
    pub fn create_quota(&self, auth: &AuthInfo, req: CreateQuotaRequest) -> Result<QuotaView, AppError> {
        require_admin(auth)?;
        validate::dns_label("name", &req.name)?;
        validate_quota_url("quotaURL", &req.quota_url)?;
        let resources = canonical_resources(&req.resources)?;
        let _guard = self.quota_admission.lock();
        self.check_url_unique(&req.name, &req.quota_url)?;
        let q = QuotaRecord {
            name: req.name,
            quota_url: req.quota_url,
            queue: req.queue.unwrap_or_default(),
            team: clean(req.team),
            user: clean(req.user),
            resources,
            description: clean(req.description),
            created_at: now(),
            resource_version: 1,
            labels: req.labels,
        };
        self.store.create_quota(&q).map_err(|e| match e {
            StoreError::Conflict(_) => AppError::conflict(format!("quota {:?} already exists", q.name)),
            e => e.into(),
        })?;
        tracing::info!(quota = %q.name, url = %q.quota_url, "quota created");
        Ok(self.quota_view(q, &self.charged_pools()?, auth))
    }

    /// Every quota with its accounting (admin), sorted by URL then name.
    pub fn list_all_quotas(&self, auth: &AuthInfo) -> Result<Vec<QuotaView>, AppError> {
        require_admin(auth)?;
        let pools = self.charged_pools()?;
        Ok(self.store.list_quotas()?.into_iter().map(|q| self.quota_view(q, &pools, auth)).collect())
    }

    /// One quota (admin).
    pub fn get_quota(&self, auth: &AuthInfo, name: &str) -> Result<QuotaView, AppError> {
        require_admin(auth)?;
        let q = self.get_quota_record(name)?;
        Ok(self.quota_view(q, &self.charged_pools()?, auth))
    }

    /// Replace a quota's spec (admin). A stale `resourceVersion` is 409; so is moving the URL of a
    /// quota that pools are charged to.
    pub fn update_quota(&self, auth: &AuthInfo, name: &str, req: UpdateQuotaRequest) -> Result<QuotaView, AppError> {
        require_admin(auth)?;
        validate_quota_url("quotaURL", &req.quota_url)?;
        let resources = canonical_resources(&req.resources)?;
        let _guard = self.quota_admission.lock();
        let cur = self.get_quota_record(name)?;
        if let Some(rv) = req.resource_version
            && rv != cur.resource_version
        {
            return Err(AppError::conflict(format!(
                "quota {name:?} changed (resourceVersion {} is stale, current is {}): read it again and retry",
                rv, cur.resource_version
            )));
        }
        if req.quota_url != cur.quota_url {
            self.check_url_unique(name, &req.quota_url)?;
            let pools = self.pools_charged_to(&cur.quota_url)?;
            if !pools.is_empty() {
                return Err(AppError::conflict(format!(
                    "cannot change the URL of quota {name:?}: pools are charged to {:?}: {}; delete them first",
                    cur.quota_url,
                    pools.join(", ")
                )));
            }
        }
        let q = QuotaRecord {
            name: cur.name.clone(),
            quota_url: req.quota_url,
            queue: req.queue.unwrap_or_default(),
            team: clean(req.team),
            user: clean(req.user),
            resources,
            description: clean(req.description),
            created_at: cur.created_at.clone(),
            resource_version: cur.resource_version + 1,
            labels: req.labels,
        };
        self.store.update_quota(&q, cur.resource_version).map_err(|e| match e {
            StoreError::Conflict(_) => AppError::conflict(format!("quota {name:?} is changing concurrently; retry")),
            StoreError::NotFound(_) => AppError::not_found(format!("quota {name:?} not found")),
            e => e.into(),
        })?;
        tracing::info!(quota = %name, "quota updated");
        Ok(self.quota_view(q, &self.charged_pools()?, auth))
    }

    /// Delete a quota (admin); 409 naming the pools while any are charged to its URL.
    pub fn delete_quota(&self, auth: &AuthInfo, name: &str) -> Result<QuotaRecord, AppError> {
        require_admin(auth)?;
        let _guard = self.quota_admission.lock();
        let q = self.get_quota_record(name)?;
        let pools = self.pools_charged_to(&q.quota_url)?;
        if !pools.is_empty() {
            return Err(AppError::conflict(format!(
                "quota {name:?} still has pools charged to it: {}; delete those pools first",
                pools.join(", ")
            )));
        }
        if !self.store.delete_quota(name)? {
            return Err(AppError::not_found(format!("quota {name:?} not found")));
        }
        tracing::info!(quota = %name, "quota deleted");
        Ok(q)
    }

    /// The quotas the caller (a team+user, possibly an impersonating admin) may charge pools to.
    pub fn my_quotas(&self, auth: &AuthInfo) -> Result<Vec<QuotaView>, AppError> {
        if auth.is_bare_admin() {
            return Err(AppError::forbidden(
                "the admin identity owns no quotas: impersonate a user with the X-Impersonate-Team and X-Impersonate-User headers, or list every quota with GET /v1/admin/quotas",
            ));
        }
        if auth.team.is_empty() || auth.user.is_empty() {
            return Err(AppError::forbidden(
                "quotas belong to a team and user, and this identity has no team or no user; use an API key issued for a team and user",
            ));
        }
        let pools = self.charged_pools()?;
        Ok(self
            .store
            .list_quotas()?
            .into_iter()
            .filter(|q| q.usable_by(&auth.team, &auth.user))
            .map(|q| self.quota_view(q, &pools, auth))
            .collect())
    }

    fn available_quota_urls(
        &self,
        auth: &AuthInfo,
        quotas: &[QuotaRecord],
        pools: &[ChargedPool],
    ) -> AvailableQuotaURLsDetail {
        let list: Vec<AvailableQuotaURLSummary> = quotas
            .iter()
            .filter(|q| auth.is_admin() || q.usable_by(&auth.team, &auth.user))
            .map(|q| AvailableQuotaURLSummary {
                url: q.quota_url.clone(),
                queue: queue_str(q.queue).into(),
                free: Limits::parse(&q.resources)
                    .unwrap_or_default()
                    .free(usage_of(&q.quota_url, pools).reserved)
                    .summary(),
            })
            .collect();
        let hint = if list.is_empty() {
            "no quota is available to this team/user: ask an admin to create one (POST /v1/admin/quotas), or create the pool without a reservation"
        } else {
            "set reservation.quotaURL in the pool request to one of availableQuotaURLs"
        };
        AvailableQuotaURLsDetail { available_quota_urls: list, hint: Some(hint.into()) }
    }

    /// Admit a pool's reservation, on create (`old` = `None`) or update (`old` = the stored pool).
    ///
    /// On create, resolves the quota URL (`reservation.quotaURL`, else the caller's default) and
    /// writes it into `pool.spec.reservation`. Checks that the pool's added slots fit in the free
    /// resources of its quota and of every existing ancestor. Returns the admission guard when
    /// something was admitted: the caller must hold it until the pool is written, so concurrent
    /// admissions see each other.
    pub(crate) fn admit_reservation<'a>(
        &'a self,
        auth: &AuthInfo,
        pool: &mut Pool,
        old: Option<&Pool>,
    ) -> Result<Option<MutexGuard<'a, ()>>, AppError> {
        let url = match old {
            // The charge is fixed at creation; updates cannot change it.
            Some(o) => match charged_url(o) {
                Some(u) => u,
                None => return Ok(None),
            },
            None => match pool.spec.effective_reservation() {
                None => return Ok(None),
                Some(r) => r.quota_url.filter(|u| !u.is_empty()).unwrap_or_else(|| auth.quota_url.clone()),
            },
        };
        let added = pool.spec.replicas.saturating_sub(old.map_or(0, |o| o.spec.replicas)) as u64;
        if old.is_some() && added == 0 {
            return Ok(None);
        }
        let guard = self.quota_admission.lock();
        let quotas = self.store.list_quotas()?;
        let pools = self.charged_pools()?;
        if old.is_none() {
            let refuse = |msg: String| {
                Err(AppError::bad_request(msg).with_detail(&self.available_quota_urls(auth, &quotas, &pools)))
            };
            if url.is_empty() {
                return refuse(
                    "the pool asks for a reservation but names no quota: set reservation.quotaURL (or use an API key with a default quota URL)".into(),
                );
            }
            if validate_quota_url("reservation.quotaURL", &url).is_err() {
                return refuse(format!(
                    "reservation.quotaURL {url:?} is not valid: use dot-separated segments like \"org.team.user\""
                ));
            }
            match quotas.iter().find(|q| q.quota_url == url) {
                Some(q) if auth.is_admin() || q.usable_by(&auth.team, &auth.user) => {}
                _ => return refuse(format!("no quota with URL {url:?} is available to this team/user")),
            }
            pool.spec.reservation = Some(Reservation { quota_url: Some(url.clone()) });
        }
        let per_slot = slot_request(&pool.spec.template).map_err(AppError::bad_request)?;
        let requested = per_slot.times(added);
        let chain = url_chain(&url);
        for level in chain {
            let Some(q) = quotas.iter().find(|q| q.quota_url == level) else { continue };
            let limits = Limits::parse(&q.resources)
                .map_err(|e| AppError::internal("stored quota does not parse", format!("quota {}: {e}", q.name)))?;
            // A pool that declares no cpu/memory would be charged nothing against a quota that
            // limits them: refuse it instead of letting it through for free.
            for (limited, declared, what) in [
                (limits.cpu_millis.is_some(), per_slot.cpu_millis > 0, "cpu"),
                (limits.memory_bytes.is_some(), per_slot.memory_bytes > 0, "memory"),
            ] {
                if limited && !declared {
                    return Err(AppError::bad_request(format!(
                        "quota {:?} limits {what}: give the pool's containers {what} requests or limits \
                         (resources.requests.{what}) so the reservation can be charged",
                        q.quota_url
                    )));
                }
            }
            let free = limits.free(usage_of(&q.quota_url, &pools).reserved);
            if !free.fits(requested) {
                let req_summary = Limits {
                    cpu_millis: Some(requested.cpu_millis),
                    memory_bytes: Some(requested.memory_bytes),
                    sandboxes: Some(requested.sandboxes),
                }
                .summary();
                let free_summary = free.summary();
                let message = format!(
                    "quota {:?} has not enough free resources for this pool (requested {req_summary}; free {free_summary}): lower replicas, scale down or delete other pools charged to it, or ask an admin to raise the quota",
                    q.quota_url
                );
                let detail = QuotaExceededDetail {
                    err_code: QUOTA_EXCEEDED.into(),
                    message: message.clone(),
                    retry_after: QUOTA_RETRY_AFTER_SECS,
                    quota_url: q.quota_url.clone(),
                    requested: requested.to_wire(),
                    free: free.to_wire(),
                };
                tracing::info!(pool = %pool.name, quota = %q.quota_url, "reservation refused: quota exceeded");
                return Err(AppError::too_many(message)
                    .with_code(QUOTA_EXCEEDED)
                    .with_retry_after(QUOTA_RETRY_AFTER_SECS)
                    .with_detail(&detail));
            }
        }
        Ok(Some(guard))
    }
}

#[cfg(test)]
mod tests {
    use agentbox_core::model::{ContainerSpec, Quantities, ResourceRequirements};

    use super::*;

    fn spec(containers: &[(Option<&str>, Option<&str>, Option<&str>)]) -> SandboxSpec {
        SandboxSpec {
            idle_image: "pause".into(),
            containers: containers
                .iter()
                .enumerate()
                .map(|(i, (cpu, mem, lim_cpu))| ContainerSpec {
                    name: format!("c{i}"),
                    image: "host".into(),
                    resources: ResourceRequirements {
                        requests: Quantities { cpu: cpu.map(Into::into), memory: mem.map(Into::into), pids: None },
                        limits: Quantities { cpu: lim_cpu.map(Into::into), memory: None, pids: None },
                    },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn charged(url: &str, per_slot: Amounts, replicas: u64, live: u64) -> ChargedPool {
        ChargedPool {
            namespace: "default".into(),
            name: format!("p-{url}"),
            team: String::new(),
            user: String::new(),
            url: url.into(),
            per_slot,
            replicas,
            live,
            deleting: false,
        }
    }

    const SLOT: Amounts = Amounts { cpu_millis: 500, memory_bytes: 1 << 30, sandboxes: 1 };

    #[test]
    fn slot_request_sums_requests_and_falls_back_to_limits() {
        let a =
            slot_request(&spec(&[(Some("500m"), Some("1Gi"), Some("2")), (None, Some("512Mi"), Some("1"))])).unwrap();
        // Container 0 counts its request (not its limit), container 1 its cpu limit.
        assert_eq!(a, Amounts { cpu_millis: 1500, memory_bytes: (1 << 30) + (512 << 20), sandboxes: 1 });
        assert_eq!(slot_request(&spec(&[(None, None, None)])).unwrap(), Amounts { sandboxes: 1, ..Default::default() });
        assert!(slot_request(&spec(&[(Some("lots"), None, None)])).unwrap_err().contains("c0"));
    }

    #[test]
    fn the_multiplier_is_counted_once_through_the_effective_template() {
        // The pool stores the template with overrides applied; slot_request reads that copy.
        let base = spec(&[(Some("250m"), Some("256Mi"), None)]);
        let o = agentbox_core::model::PoolOverrides { resource_multiplier: Some(4), ..Default::default() };
        let effective = super::super::pools::apply_overrides(&base, &o).unwrap();
        assert_eq!(
            slot_request(&effective).unwrap(),
            Amounts { cpu_millis: 1000, memory_bytes: 1 << 30, sandboxes: 1 }
        );
    }

    #[test]
    fn urls_cover_whole_segment_prefixes_only() {
        assert_eq!(url_chain("org.team.user"), ["org.team.user", "org.team", "org"]);
        assert_eq!(url_chain("org"), ["org"]);
        assert!(covers("org", "org.team.user"));
        assert!(covers("org.team", "org.team"));
        assert!(!covers("org.te", "org.team"));
        assert!(!covers("org.team.user", "org.team"));
        assert!(validate_quota_url("u", "org.team-1.u2").is_ok());
        for bad in ["", "org..team", ".org", "org.", "Org", "org.1team", &"a".repeat(64)] {
            assert!(validate_quota_url("u", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn usage_counts_every_descendant_and_skips_deleting_pools_for_reserved() {
        let mut gone = charged("org.b", SLOT, 10, 1);
        gone.deleting = true;
        let pools = vec![
            charged("org.a.x", SLOT, 2, 1),
            charged("org.a", SLOT, 1, 0),
            charged("org.ab", SLOT, 5, 5), // not under org.a
            gone,
        ];
        let a = usage_of("org.a", &pools);
        assert_eq!(a.reserved, SLOT.times(3));
        assert_eq!(a.used, SLOT.times(1));
        let org = usage_of("org", &pools);
        assert_eq!(org.reserved, SLOT.times(8));
        assert_eq!(org.used, SLOT.times(7), "live sandboxes of a deleting pool still use resources");
        assert_eq!(usage_of("org.a.x", &pools).reserved, SLOT.times(2));
    }

    #[test]
    fn free_floors_at_zero_and_only_covers_limited_resources() {
        let limits =
            Limits::parse(&QuotaResources { cpu: Some("1".into()), memory: None, sandboxes: Some(3) }).unwrap();
        let free = limits.free(SLOT.times(4));
        assert_eq!(free, Limits { cpu_millis: Some(0), memory_bytes: None, sandboxes: Some(0) });
        assert_eq!(free.summary(), "cpu=0,sandboxes=0");
        let free = limits.free(SLOT);
        assert_eq!(free.to_wire(), QuotaResources { cpu: Some("500m".into()), memory: None, sandboxes: Some(2) });
        assert!(free.fits(SLOT));
        assert!(!free.fits(SLOT.times(2)), "2 × 500m cpu does not fit in 500m");
        // Memory is unlimited: any amount fits.
        assert!(free.fits(Amounts { memory_bytes: u64::MAX, ..Default::default() }));
        assert!(Limits::parse(&QuotaResources { cpu: Some("x".into()), ..Default::default() }).is_err());
    }

    /// Admission holds its guard until the pool is written: a second admission waits, then sees
    /// the first pool's reservation.
    #[test]
    fn admission_is_serialized_until_the_pool_is_written() {
        use std::sync::Arc;
        use std::sync::mpsc;
        use std::time::Duration;

        use agentbox_core::error::ErrorKind;
        use agentbox_core::fake_backend::FakeBackend;
        use agentbox_core::fake_store::MemoryStore;

        let store = Arc::new(MemoryStore::new());
        let engine = Engine::new(store.clone(), Arc::new(FakeBackend::new()), Default::default());
        let admin = AuthInfo::dev_admin();
        engine
            .create_quota(
                &admin,
                CreateQuotaRequest {
                    name: "q".into(),
                    quota_url: "org".into(),
                    resources: QuotaResourcesInput { sandboxes: Some(1), ..Default::default() },
                    ..Default::default()
                },
            )
            .unwrap();
        let pool = |name: &str| Pool {
            name: name.into(),
            namespace: "default".into(),
            team: String::new(),
            user: String::new(),
            spec: agentbox_core::model::PoolSpec {
                replicas: 1,
                min_replicas: None,
                max_replicas: None,
                template_name: None,
                template: spec(&[(Some("1"), None, None)]),
                default_startup_timeout: None,
                default_idle_timeout: None,
                pod_creation_image_policy: Default::default(),
                autoscaling: None,
                quota_url: None,
                reservation: Some(Reservation { quota_url: Some("org".into()) }),
            },
            overrides: Default::default(),
            labels: Default::default(),
            annotations: Default::default(),
            template_version: None,
            created_at: now(),
            resource_version: 1,
            deleting: false,
        };
        let mut a = pool("a");
        let guard = engine.admit_reservation(&admin, &mut a, None).unwrap();
        assert!(guard.is_some(), "an admitted reservation returns the guard");
        std::thread::scope(|sc| {
            let (tx, rx) = mpsc::channel();
            let (engine, admin) = (&engine, &admin);
            sc.spawn(move || {
                let mut b = pool("b");
                let r = engine.admit_reservation(admin, &mut b, None).map(|g| g.is_some());
                tx.send(r.map_err(|e| e.kind)).unwrap();
            });
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "second admission did not wait");
            agentbox_core::store::Store::create_pool(&*store, &a).unwrap();
            drop(guard);
            let second = rx.recv_timeout(Duration::from_secs(5)).expect("second admission finished");
            assert_eq!(second, Err(ErrorKind::TooManyRequests), "the second pool must see the first one's reservation");
        });
    }

    #[test]
    fn quantities_have_one_canonical_form() {
        let r = canonical_resources(&QuotaResourcesInput {
            cpu: Some("0.5".into()),
            memory: Some("1536Mi".into()),
            sandboxes: Some(4),
        })
        .unwrap();
        assert_eq!((r.cpu.as_deref(), r.memory.as_deref()), (Some("500m"), Some("1536Mi")));
        let r = canonical_resources(&QuotaResourcesInput {
            cpu: Some("2000m".into()),
            memory: Some("8192Mi".into()),
            sandboxes: None,
        })
        .unwrap();
        assert_eq!((r.cpu.as_deref(), r.memory.as_deref()), (Some("2"), Some("8Gi")));
        let r = canonical_resources(&QuotaResourcesInput { memory: Some("1G".into()), ..Default::default() }).unwrap();
        assert_eq!(r.memory.as_deref(), Some("1000000000"));
        let e =
            canonical_resources(&QuotaResourcesInput { memory: Some("8GB".into()), ..Default::default() }).unwrap_err();
        assert!(e.message.starts_with("resources.memory"), "{}", e.message);
        assert_eq!(
            Amounts::default().to_wire(),
            QuotaResources { cpu: Some("0".into()), memory: Some("0".into()), sandboxes: Some(0) }
        );
    }
}
