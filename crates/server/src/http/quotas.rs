//! Quota handlers: admin CRUD under `/v1/admin/quotas`, the caller's quotas at `/v1/quotas`, and
//! `/v1/feature-gates`. The accounting and admission rules live in `engine/quotas.rs`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath, ApiResult, ErrorBody};
use super::{AdminAuth, AppState};
use crate::auth::AuthInfo;
use crate::engine::{CreateQuotaRequest, QuotaView, UpdateQuotaRequest};

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaEnvelope {
    pub quota: QuotaView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaList {
    pub items: Vec<QuotaView>,
    pub total: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteQuotaResult {
    pub name: String,
    /// Always `Deleted`.
    pub status: String,
}

/// Optional features of this server.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureGates {
    /// Quotas and pool reservations are built in, so always `true`.
    pub quota: bool,
}

/// Create a quota (admin).
#[utoipa::path(post, path = "/v1/admin/quotas", tag = "quotas", request_body = CreateQuotaRequest,
    responses((status = 201, body = QuotaEnvelope),
        (status = 400, body = ErrorBody, description = "invalid name, quotaURL, queue or quantity"),
        (status = 403, body = ErrorBody, description = "admin access required"),
        (status = 409, body = ErrorBody, description = "name or quotaURL taken")))]
pub async fn create_quota(
    State(st): State<Arc<AppState>>,
    AdminAuth(auth): AdminAuth,
    ApiJson(req): ApiJson<CreateQuotaRequest>,
) -> ApiResult<(StatusCode, Json<QuotaEnvelope>)> {
    Ok((StatusCode::CREATED, Json(QuotaEnvelope { quota: st.engine.create_quota(&auth, req)? })))
}

/// Every quota with its `used`, `reserved` and `free` resources (admin), sorted by quotaURL.
#[utoipa::path(get, path = "/v1/admin/quotas", tag = "quotas",
    responses((status = 200, body = QuotaList), (status = 403, body = ErrorBody, description = "admin access required")))]
pub async fn list_all_quotas(
    State(st): State<Arc<AppState>>,
    AdminAuth(auth): AdminAuth,
) -> ApiResult<Json<QuotaList>> {
    let items = st.engine.list_all_quotas(&auth)?;
    Ok(Json(QuotaList { total: items.len() as u64, items }))
}

/// One quota (admin).
#[utoipa::path(get, path = "/v1/admin/quotas/{name}", tag = "quotas", params(("name" = String, Path)),
    responses((status = 200, body = QuotaEnvelope), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_quota(
    State(st): State<Arc<AppState>>,
    AdminAuth(auth): AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<QuotaEnvelope>> {
    Ok(Json(QuotaEnvelope { quota: st.engine.get_quota(&auth, &name)? }))
}

/// Replace a quota's spec (admin). Lowering limits below what is reserved is allowed: `free` is 0
/// and only scale-in is admitted until usage drops.
#[utoipa::path(put, path = "/v1/admin/quotas/{name}", tag = "quotas", params(("name" = String, Path)),
    request_body = UpdateQuotaRequest,
    responses((status = 200, body = QuotaEnvelope), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "stale resourceVersion, quotaURL taken, or pools charged to the old quotaURL")))]
pub async fn update_quota(
    State(st): State<Arc<AppState>>,
    AdminAuth(auth): AdminAuth,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateQuotaRequest>,
) -> ApiResult<Json<QuotaEnvelope>> {
    Ok(Json(QuotaEnvelope { quota: st.engine.update_quota(&auth, &name, req)? }))
}

/// Delete a quota (admin); refused while pools are charged to its quotaURL.
#[utoipa::path(delete, path = "/v1/admin/quotas/{name}", tag = "quotas", params(("name" = String, Path)),
    responses((status = 200, body = DeleteQuotaResult), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "pools are charged to it (named in the message)")))]
pub async fn delete_quota(
    State(st): State<Arc<AppState>>,
    AdminAuth(auth): AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<DeleteQuotaResult>> {
    let q = st.engine.delete_quota(&auth, &name)?;
    Ok(Json(DeleteQuotaResult { name: q.name, status: "Deleted".into() }))
}

/// The quotas the caller may charge pools to (a pool's `reservation.quotaURL`). The admin must
/// impersonate a team and user (`X-Impersonate-Team`, `X-Impersonate-User`).
#[utoipa::path(get, path = "/v1/quotas", tag = "quotas",
    responses((status = 200, body = QuotaList),
        (status = 403, body = ErrorBody, description = "bare admin (impersonate a user), or an identity without team or user")))]
pub async fn list_my_quotas(State(st): State<Arc<AppState>>, auth: AuthInfo) -> ApiResult<Json<QuotaList>> {
    let items = st.engine.my_quotas(&auth)?;
    Ok(Json(QuotaList { total: items.len() as u64, items }))
}

/// Optional features of this server: `quota` is always on (quotas are built in).
#[utoipa::path(get, path = "/v1/feature-gates", tag = "quotas", responses((status = 200, body = FeatureGates)))]
pub async fn feature_gates(_auth: AuthInfo) -> Json<FeatureGates> {
    Json(FeatureGates { quota: true })
}
