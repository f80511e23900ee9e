//! `/v1/sandboxpools` handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiResult, ErrorBody};
use crate::auth::AuthInfo;
use crate::engine::{CreatePoolRequest, PoolView, UpdatePoolRequest};

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolEnvelope {
    pub pool: PoolView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolList {
    pub items: Vec<PoolView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
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
        (status = 409, body = ErrorBody, description = "name taken")))]
pub async fn create_pool(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiJson(req): ApiJson<CreatePoolRequest>,
) -> ApiResult<(StatusCode, Json<PoolEnvelope>)> {
    Ok((StatusCode::CREATED, Json(PoolEnvelope { pool: st.engine.create_pool(&auth, req)? })))
}

/// Pools the caller may use, sorted by name.
#[utoipa::path(get, path = "/v1/sandboxpools", tag = "pools", responses((status = 200, body = PoolList)))]
pub async fn list_pools(State(st): State<Arc<AppState>>, auth: AuthInfo) -> ApiResult<Json<PoolList>> {
    let items = st.engine.list_pools(&auth)?;
    Ok(Json(PoolList { total: items.len() as u64, items, limit: 0, offset: 0 }))
}

/// One pool with live status and diagnostics.
#[utoipa::path(get, path = "/v1/sandboxpools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 200, body = PoolEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_pool(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<PoolEnvelope>> {
    Ok(Json(PoolEnvelope { pool: st.engine.get_pool(&auth, &name)? }))
}

/// Change size, policies or the image override.
#[utoipa::path(put, path = "/v1/sandboxpools/{name}", tag = "pools", params(("name" = String, Path)),
    request_body = UpdatePoolRequest,
    responses((status = 200, body = PoolEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_pool(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdatePoolRequest>,
) -> ApiResult<Json<PoolEnvelope>> {
    Ok(Json(PoolEnvelope { pool: st.engine.update_pool(&auth, &name, req)? }))
}

/// Delete a pool: Terminating until its slots are destroyed. Running sandboxes end as Released.
#[utoipa::path(delete, path = "/v1/sandboxpools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 202, body = DeletePoolResult), (status = 404, body = ErrorBody)))]
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
