//! Statistics, admin listings (teams, users, namespaces) and the cluster catalog.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use agentbox_core::error::AppError;
use agentbox_core::store::SandboxFilter;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiPath, ApiResult, ErrorBody};
use super::{AdminAuth, AppState};
use crate::auth::AuthInfo;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatistics {
    /// The caller's namespace.
    pub namespace: String,
    /// Live and history records the caller may see.
    pub total: u64,
    /// Count by status (`Running`, `Completed`, …).
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxStatisticsEnvelope {
    pub statistics: SandboxStatistics,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSandboxStatistics {
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
    /// Namespace → count by status.
    pub by_namespace: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminSandboxStatisticsEnvelope {
    pub statistics: AdminSandboxStatistics,
}

#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolTotals {
    pub pools: u64,
    pub total_replicas: u64,
    pub total_idle_replicas: u64,
    pub total_running_replicas: u64,
    pub total_starting_replicas: u64,
    pub total_failed_replicas: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminPoolStatistics {
    pub total: u64,
    pub total_replicas: u64,
    pub total_idle_replicas: u64,
    pub total_running_replicas: u64,
    pub total_starting_replicas: u64,
    pub total_failed_replicas: u64,
    pub by_namespace: BTreeMap<String, PoolTotals>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminPoolStatisticsEnvelope {
    pub statistics: AdminPoolStatistics,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NameList {
    pub items: Vec<String>,
    pub total: u64,
}

impl NameList {
    fn new(items: Vec<String>) -> Self {
        NameList { total: items.len() as u64, items }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterSummary {
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub local: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterList {
    pub clusters: Vec<ClusterSummary>,
}

/// Namespace → status → count.
type CountsByNamespace = BTreeMap<String, BTreeMap<String, u64>>;

fn count_by_status(st: &AppState, filter: &SandboxFilter) -> Result<(u64, CountsByNamespace), AppError> {
    let (items, total) = st.engine.store().list_sandboxes(filter)?;
    let mut by_ns: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for s in &items {
        *by_ns.entry(s.namespace.clone()).or_default().entry(s.status.as_str().to_string()).or_default() += 1;
    }
    Ok((total, by_ns))
}

/// Counts of the caller's sandboxes (live and history) by status.
#[utoipa::path(get, path = "/v1/statistics/sandboxes", tag = "statistics",
    responses((status = 200, body = SandboxStatisticsEnvelope), (status = 401, body = ErrorBody)))]
pub async fn sandbox_statistics(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
) -> ApiResult<Json<SandboxStatisticsEnvelope>> {
    let mut f = SandboxFilter::default();
    auth.scope_filter(&mut f);
    if auth.is_admin() {
        f.namespace = Some(auth.namespace.clone());
    }
    let (total, by_ns) = count_by_status(&st, &f)?;
    let mut by_status = BTreeMap::new();
    for m in by_ns.into_values() {
        for (k, v) in m {
            *by_status.entry(k).or_default() += v;
        }
    }
    Ok(Json(SandboxStatisticsEnvelope {
        statistics: SandboxStatistics { namespace: auth.namespace, total, by_status },
    }))
}

/// Admin: sandboxes (live and history) of every namespace by status.
#[utoipa::path(get, path = "/v1/admin/statistics/sandboxes", tag = "statistics",
    responses((status = 200, body = AdminSandboxStatisticsEnvelope), (status = 403, body = ErrorBody)))]
pub async fn admin_sandbox_statistics(
    State(st): State<Arc<AppState>>,
    _admin: AdminAuth,
) -> ApiResult<Json<AdminSandboxStatisticsEnvelope>> {
    let (total, by_namespace) = count_by_status(&st, &SandboxFilter::default())?;
    let mut by_status = BTreeMap::new();
    for m in by_namespace.values() {
        for (k, v) in m {
            *by_status.entry(k.clone()).or_default() += v;
        }
    }
    Ok(Json(AdminSandboxStatisticsEnvelope { statistics: AdminSandboxStatistics { total, by_status, by_namespace } }))
}

/// Admin: pools and their slots, in total and by namespace.
#[utoipa::path(get, path = "/v1/admin/statistics/sandboxpools", tag = "statistics",
    responses((status = 200, body = AdminPoolStatisticsEnvelope), (status = 403, body = ErrorBody)))]
pub async fn admin_pool_statistics(
    State(st): State<Arc<AppState>>,
    AdminAuth(admin): AdminAuth,
) -> ApiResult<Json<AdminPoolStatisticsEnvelope>> {
    let pools = st.engine.list_pools(&admin)?;
    let mut all = PoolTotals::default();
    let mut by_namespace: BTreeMap<String, PoolTotals> = BTreeMap::new();
    for p in &pools {
        let c = &p.status.counts;
        for t in [&mut all, by_namespace.entry(p.namespace.clone()).or_default()] {
            t.pools += 1;
            t.total_replicas += u64::from(p.spec.replicas);
            t.total_idle_replicas += u64::from(c.idle);
            t.total_running_replicas += u64::from(c.running);
            t.total_starting_replicas += u64::from(c.starting);
            t.total_failed_replicas += u64::from(c.failed);
        }
    }
    Ok(Json(AdminPoolStatisticsEnvelope {
        statistics: AdminPoolStatistics {
            total: all.pools,
            total_replicas: all.total_replicas,
            total_idle_replicas: all.total_idle_replicas,
            total_running_replicas: all.total_running_replicas,
            total_starting_replicas: all.total_starting_replicas,
            total_failed_replicas: all.total_failed_replicas,
            by_namespace,
        },
    }))
}

/// Admin: teams that own API keys, sorted.
#[utoipa::path(get, path = "/v1/admin/teams", tag = "admin",
    responses((status = 200, body = NameList), (status = 403, body = ErrorBody)))]
pub async fn admin_teams(State(st): State<Arc<AppState>>, _admin: AdminAuth) -> ApiResult<Json<NameList>> {
    Ok(Json(NameList::new(st.auth.teams()?)))
}

/// Admin: users of a team (from their API keys), sorted.
#[utoipa::path(get, path = "/v1/admin/teams/{team}/users", tag = "admin", params(("team" = String, Path)),
    responses((status = 200, body = NameList), (status = 403, body = ErrorBody)))]
pub async fn admin_team_users(
    State(st): State<Arc<AppState>>,
    _admin: AdminAuth,
    ApiPath(team): ApiPath<String>,
) -> ApiResult<Json<NameList>> {
    Ok(Json(NameList::new(st.auth.users_of(&team)?)))
}

/// Admin: namespaces in use (by pools, sandboxes or keys), sorted; always includes `default`.
#[utoipa::path(get, path = "/v1/admin/namespaces", tag = "admin",
    responses((status = 200, body = NameList), (status = 403, body = ErrorBody)))]
pub async fn admin_namespaces(
    State(st): State<Arc<AppState>>,
    AdminAuth(admin): AdminAuth,
) -> ApiResult<Json<NameList>> {
    let mut set: BTreeSet<String> = BTreeSet::from(["default".to_string()]);
    set.extend(st.engine.list_pools(&admin)?.into_iter().map(|p| p.namespace));
    set.extend(st.auth.key_namespaces()?);
    let (_, by_ns) = count_by_status(&st, &SandboxFilter::default())?;
    set.extend(by_ns.into_keys());
    Ok(Json(NameList::new(set.into_iter().collect())))
}

/// The clusters this server routes to (the local one; a gateway lists its whole catalog).
#[utoipa::path(get, path = "/v1/clusters", tag = "meta",
    responses((status = 200, body = ClusterList), (status = 401, body = ErrorBody)))]
pub async fn clusters(State(st): State<Arc<AppState>>, _auth: AuthInfo) -> ApiResult<Json<ClusterList>> {
    let clusters = st
        .gateway
        .catalog()
        .summaries()
        .into_iter()
        .map(|c| ClusterSummary { id: c.id, name: c.name, local: c.local })
        .collect();
    Ok(Json(ClusterList { clusters }))
}
