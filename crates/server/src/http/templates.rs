//! `/v1/sandbox-templates` (read) and `/v1/admin/sandbox-templates` (write) handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath, ApiResult, ErrorBody};
use super::{AdminAuth, AppState};
use crate::auth::AuthInfo;
use crate::engine::{CreateTemplateRequest, TemplateSummary, TemplateView, UpdateTemplateRequest};

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateEnvelope {
    pub template: TemplateView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub items: Vec<TemplateSummary>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteTemplateResult {
    pub name: String,
    pub status: String,
}

/// Templates visible to the caller, sorted by name.
#[utoipa::path(get, path = "/v1/sandbox-templates", tag = "templates", responses((status = 200, body = TemplateList)))]
pub async fn list_templates(State(st): State<Arc<AppState>>, auth: AuthInfo) -> ApiResult<Json<TemplateList>> {
    let items = st.engine.list_templates(&auth)?;
    Ok(Json(TemplateList { total: items.len() as u64, items, limit: 0, offset: 0 }))
}

/// One template with its spec and resourceVersion.
#[utoipa::path(get, path = "/v1/sandbox-templates/{name}", tag = "templates", params(("name" = String, Path)),
    responses((status = 200, body = TemplateEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_template(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<TemplateEnvelope>> {
    Ok(Json(TemplateEnvelope { template: TemplateView::from(st.engine.get_template(&auth, &name)?) }))
}

/// Create a template (admin).
#[utoipa::path(post, path = "/v1/admin/sandbox-templates", tag = "templates", request_body = CreateTemplateRequest,
    responses((status = 201, body = TemplateEnvelope), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create_template(
    State(st): State<Arc<AppState>>,
    _admin: AdminAuth,
    ApiJson(req): ApiJson<CreateTemplateRequest>,
) -> ApiResult<(StatusCode, Json<TemplateEnvelope>)> {
    let t = st.engine.create_template(req)?;
    Ok((StatusCode::CREATED, Json(TemplateEnvelope { template: TemplateView::from(t) })))
}

/// Update a template (admin): the version must increase; a stale resourceVersion is 409.
#[utoipa::path(put, path = "/v1/admin/sandbox-templates/{name}", tag = "templates", params(("name" = String, Path)),
    request_body = UpdateTemplateRequest,
    responses((status = 200, body = TemplateEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn update_template(
    State(st): State<Arc<AppState>>,
    _admin: AdminAuth,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateTemplateRequest>,
) -> ApiResult<Json<TemplateEnvelope>> {
    Ok(Json(TemplateEnvelope { template: TemplateView::from(st.engine.update_template(&name, req)?) }))
}

/// Delete a template (admin). Pools made from it keep their copy.
#[utoipa::path(delete, path = "/v1/admin/sandbox-templates/{name}", tag = "templates", params(("name" = String, Path)),
    responses((status = 202, body = DeleteTemplateResult), (status = 404, body = ErrorBody)))]
pub async fn delete_template(
    State(st): State<Arc<AppState>>,
    _admin: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<DeleteTemplateResult>)> {
    st.engine.delete_template(&name)?;
    Ok((StatusCode::ACCEPTED, Json(DeleteTemplateResult { name, status: "Deleted".into() })))
}
