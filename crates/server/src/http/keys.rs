//! `/v1/api-keys` (self-service) and `/v1/admin/api-keys` handlers.

use std::sync::Arc;

use agentbox_core::error::AppError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath, ApiResult, ErrorBody};
use super::{AdminAuth, AppState};
use crate::auth::AuthInfo;
use crate::authn::{ApiKeyItem, CreatedApiKey, NewKey};

/// Body of `POST /v1/api-keys`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[serde(default)]
    pub description: Option<String>,
    /// RFC 3339, in the future; absent = never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Body of `POST /v1/admin/api-keys`. With `tokenHash` + `hashPrefix` (+ `issuedAt`) it imports a
/// key issued elsewhere by its hash (idempotent; no raw token is stored or returned).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminCreateApiKeyRequest {
    pub team: String,
    pub user: String,
    /// Default `t-<team>-<user>`.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default, rename = "quotaURL", alias = "quotaUrl")]
    pub quota_url: Option<String>,
    #[serde(default)]
    pub token_hash: Option<String>,
    #[serde(default)]
    pub hash_prefix: Option<String>,
    #[serde(default)]
    pub issued_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKeyItem>,
    pub total: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletedApiKey {
    pub key_id: String,
    pub status: String,
}

fn own_identity(auth: &AuthInfo) -> Result<(&str, &str), AppError> {
    if auth.team.is_empty() || auth.user.is_empty() || auth.auth_method == "admin-key" || auth.auth_method == "dev" {
        return Err(AppError::bad_request(
            "the admin identity owns no api keys; use POST /v1/admin/api-keys with team and user, \
             or impersonate a user with X-Impersonate-Team and X-Impersonate-User",
        ));
    }
    Ok((&auth.team, &auth.user))
}

/// Create an API key for the caller. The raw token is in `apiKey` (and recoverable from the list).
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey),
        (status = 400, body = ErrorBody, description = "bad expiresAt, or the caller is the bare admin"),
        (status = 401, body = ErrorBody)))]
pub async fn create_key(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiJson(req): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let (team, user) = own_identity(&auth)?;
    let created = st.auth.create_key(NewKey {
        namespace: Some(auth.namespace.clone()),
        team: team.into(),
        user: user.into(),
        quota_url: auth.quota_url.clone(),
        description: req.description.unwrap_or_default(),
        expires_at: req.expires_at,
        ..Default::default()
    })?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The caller's API keys, with `rawToken` for recovery.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys",
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody)))]
pub async fn list_keys(State(st): State<Arc<AppState>>, auth: AuthInfo) -> ApiResult<Json<ApiKeyList>> {
    let items = if auth.team.is_empty() || auth.user.is_empty() {
        vec![]
    } else {
        st.auth.list_keys(Some((&auth.team, &auth.user)))?
    };
    Ok(Json(ApiKeyList { total: items.len() as u64, items }))
}

/// Delete one of the caller's keys (403 for someone else's key).
#[utoipa::path(delete, path = "/v1/api-keys/{keyId}", tag = "api-keys", params(("keyId" = String, Path)),
    responses((status = 200, body = DeletedApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_key(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(key_id): ApiPath<String>,
) -> ApiResult<Json<DeletedApiKey>> {
    let owner = if auth.is_admin() { None } else { Some((auth.team.as_str(), auth.user.as_str())) };
    st.auth.delete_key(&key_id, owner)?;
    Ok(Json(DeletedApiKey { key_id, status: "Deleted".into() }))
}

/// Admin: create a key for any team/user, or import one by hash.
#[utoipa::path(post, path = "/v1/admin/api-keys", tag = "api-keys", request_body = AdminCreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn admin_create_key(
    State(st): State<Arc<AppState>>,
    _admin: AdminAuth,
    ApiJson(req): ApiJson<AdminCreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let created = st.auth.create_key(NewKey {
        namespace: req.namespace,
        team: req.team,
        user: req.user,
        quota_url: req.quota_url.unwrap_or_default(),
        description: req.description.unwrap_or_default(),
        expires_at: req.expires_at,
        token_hash: req.token_hash,
        hash_prefix: req.hash_prefix,
        issued_at: req.issued_at,
    })?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Admin: every key, sorted by team, user, issue time.
#[utoipa::path(get, path = "/v1/admin/api-keys", tag = "api-keys",
    responses((status = 200, body = ApiKeyList), (status = 403, body = ErrorBody)))]
pub async fn admin_list_keys(State(st): State<Arc<AppState>>, _admin: AdminAuth) -> ApiResult<Json<ApiKeyList>> {
    let items = st.auth.list_keys(None)?;
    Ok(Json(ApiKeyList { total: items.len() as u64, items }))
}

/// Admin: delete any key.
#[utoipa::path(delete, path = "/v1/admin/api-keys/{keyId}", tag = "api-keys", params(("keyId" = String, Path)),
    responses((status = 200, body = DeletedApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn admin_delete_key(
    State(st): State<Arc<AppState>>,
    _admin: AdminAuth,
    ApiPath(key_id): ApiPath<String>,
) -> ApiResult<Json<DeletedApiKey>> {
    st.auth.delete_key(&key_id, None)?;
    Ok(Json(DeletedApiKey { key_id, status: "Deleted".into() }))
}
