//! `/v1/sandboxpools` handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use agentbox_core::error::{AppError, ErrorKind};

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiResult, ErrorBody};
use crate::auth::AuthInfo;
use crate::engine::{CreatePoolRequest, PoolView, SyncPreview, UpdatePoolRequest};

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolEnvelope {
    pub pool: PoolWithDocs,
}

/// A pool, and on `GET /v1/sandboxpools/{name}` its template's docs rendered for the caller.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolWithDocs {
    #[serde(flatten)]
    pub pool: PoolView,
    /// Markdown with `${AGBX_POOL_NAME}`, `${AGBX_CLUSTER_ID}` and `${AGBX_API_KEY}` filled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_docs: Option<String>,
}

impl From<PoolView> for PoolWithDocs {
    fn from(pool: PoolView) -> Self {
        PoolWithDocs { pool, pool_docs: None }
    }
}

/// Pool creation needs the acting user to own an API key (the bare admin excepted): keys are how
/// admins find teams and users, and pool docs show the user's key.
fn require_api_key(st: &AppState, auth: &AuthInfo) -> Result<(), AppError> {
    if auth.is_bare_admin() || st.auth.first_key_of(&auth.team, &auth.user, false)?.is_some() {
        return Ok(());
    }
    Err(AppError::new(
        ErrorKind::Unprocessable,
        "no api key found for this user; create one with POST /v1/api-keys (or `agentbox apikey create`), then retry",
    )
    .with_code("API_KEY_REQUIRED"))
}

/// Render the pool's template docs for the caller (422 API_KEY_REQUIRED when they need the caller's
/// key and the caller has none this server can show).
fn render_docs(st: &AppState, auth: &AuthInfo, pool: &PoolView) -> Result<Option<String>, AppError> {
    let Some(tname) = pool.spec.template_name.as_deref() else { return Ok(None) };
    let Some(t) = st.engine.store().get_template(tname)? else { return Ok(None) };
    if t.spec.docs.is_empty() {
        return Ok(None);
    }
    let mut docs =
        t.spec.docs.replace("${AGBX_POOL_NAME}", &pool.name).replace("${AGBX_CLUSTER_ID}", st.engine.cluster_id());
    if docs.contains("${AGBX_API_KEY}") {
        let key = if auth.is_bare_admin() {
            "YOUR_API_KEY".to_string()
        } else {
            match st.auth.first_key_of(&auth.team, &auth.user, true)?.and_then(|k| k.raw_token) {
                Some(k) => k,
                None => {
                    return Err(AppError::new(
                        ErrorKind::Unprocessable,
                        "no api key with a recoverable token found for this user; create one with POST /v1/api-keys \
                         to view the pool docs",
                    )
                    .with_code("API_KEY_REQUIRED"));
                }
            }
        };
        docs = docs.replace("${AGBX_API_KEY}", &key);
    }
    Ok(Some(docs))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolList {
    pub items: Vec<PoolView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
    /// With `cluster=*`: the clusters that could not be listed.
    #[serde(rename = "clusterErrors", skip_serializing_if = "Vec::is_empty")]
    pub cluster_errors: Vec<crate::gateway::ClusterListError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletePoolResult {
    pub name: String,
    pub namespace: String,
    pub status: String,
}

/// Create a pool; its slots warm up in the background.
#[utoipa::path(post, path = "/v1/sandboxpools", tag = "pools", request_body = CreatePoolRequest,
    responses((status = 201, body = PoolEnvelope),
        (status = 400, body = ErrorBody, description = "invalid; a missing template carries detail.availableTemplates"),
        (status = 409, body = ErrorBody, description = "name taken"),
        (status = 422, body = ErrorBody, description = "API_KEY_REQUIRED: the user owns no api key yet"),
        (status = 429, body = ErrorBody, description = "QUOTA_EXCEEDED: the reservation does not fit the quota's free resources")))]
pub async fn create_pool(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiJson(req): ApiJson<CreatePoolRequest>,
) -> ApiResult<(StatusCode, Json<PoolEnvelope>)> {
    require_api_key(&st, &auth)?;
    Ok((StatusCode::CREATED, Json(PoolEnvelope { pool: st.engine.create_pool(&auth, req)?.into() })))
}

/// Pools the caller may use, sorted by name.
///
/// With `cluster=`, the pools of that cluster (or of every cluster, `*`) with names qualified as
/// `cluster::pool`.
#[utoipa::path(get, path = "/v1/sandboxpools", tag = "pools", params(super::gateway::ClusterQuery),
    responses((status = 200, body = PoolList), (status = 400, body = ErrorBody, description = "unknown cluster")))]
pub async fn list_pools(State(st): State<Arc<AppState>>, auth: AuthInfo) -> ApiResult<Json<PoolList>> {
    let items = st.engine.list_pools(&auth)?;
    Ok(Json(PoolList { total: items.len() as u64, items, limit: 0, offset: 0, cluster_errors: vec![] }))
}

/// One pool with live status and diagnostics.
#[utoipa::path(get, path = "/v1/sandboxpools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 200, body = PoolEnvelope), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "admin: the name is used in several namespaces (impersonate the owner)"),
        (status = 422, body = ErrorBody, description = "API_KEY_REQUIRED: the docs show the caller's key and it has none")))]
pub async fn get_pool(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<PoolEnvelope>> {
    let pool = st.engine.get_pool(&auth, &name)?;
    let pool_docs = render_docs(&st, &auth, &pool)?;
    Ok(Json(PoolEnvelope { pool: PoolWithDocs { pool, pool_docs } }))
}

/// Change size, policies or the image override.
#[utoipa::path(put, path = "/v1/sandboxpools/{name}", tag = "pools", params(("name" = String, Path)),
    request_body = UpdatePoolRequest,
    responses((status = 200, body = PoolEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the pool is being deleted or changing concurrently, or (admin) its name is ambiguous"),
        (status = 429, body = ErrorBody, description = "QUOTA_EXCEEDED on scale-out")))]
pub async fn update_pool(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdatePoolRequest>,
) -> ApiResult<Json<PoolEnvelope>> {
    Ok(Json(PoolEnvelope { pool: st.engine.update_pool(&auth, &name, req)?.into() }))
}

/// Delete a pool: Terminating until its slots are destroyed. Running sandboxes end as Released.
#[utoipa::path(delete, path = "/v1/sandboxpools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 202, body = DeletePoolResult), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "changing concurrently, or (admin) the name is ambiguous")))]
pub async fn delete_pool(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<DeletePoolResult>)> {
    let p = st.engine.delete_pool(&auth, &name)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DeletePoolResult { name: p.name, namespace: p.namespace, status: "Terminating".into() }),
    ))
}

/// Re-apply the pool's template at its current version, with the pool's stored overrides; idle slots
/// made from the old definition are then replaced.
#[utoipa::path(post, path = "/v1/sandboxpools/{name}/sync-template", tag = "pools", params(("name" = String, Path)),
    responses((status = 200, body = PoolEnvelope),
        (status = 400, body = ErrorBody, description = "the pool was defined inline: no template to sync"),
        (status = 404, body = ErrorBody, description = "no such pool, or its template is gone"),
        (status = 409, body = ErrorBody)))]
pub async fn sync_template(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<PoolEnvelope>> {
    Ok(Json(PoolEnvelope { pool: st.engine.sync_template(&auth, &name)?.into() }))
}

/// What `sync-template` would do, without writing: the resulting spec as YAML and the version.
#[utoipa::path(post, path = "/v1/sandboxpools/{name}/sync-template/preview", tag = "pools",
    params(("name" = String, Path)),
    responses((status = 200, body = SyncPreview),
        (status = 400, body = ErrorBody, description = "the pool was defined inline: no template to sync"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "admin: the name is used in several namespaces")))]
pub async fn preview_sync(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<SyncPreview>> {
    Ok(Json(st.engine.preview_sync(&auth, &name)?))
}
