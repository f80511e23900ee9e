//! Liveness, identity and images.

use std::io::Write;
use std::sync::Arc;

use agentbox_core::error::AppError;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiQuery, ApiResult, ErrorBody};
use crate::auth::{AuthInfo, Role};

#[derive(Debug, Serialize, ToSchema)]
pub struct Ping {
    pub status: String,
}

/// Liveness (no auth).
#[utoipa::path(get, path = "/ping", tag = "meta", responses((status = 200, body = Ping)))]
pub async fn ping() -> Json<Ping> {
    Json(Ping { status: "ok".into() })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    pub role: Role,
    pub user: String,
    pub team: String,
    pub namespace: String,
    /// `apikey`, `jwt`, `admin-key`, `impersonation`, or `dev` (no admin key configured).
    pub auth_method: String,
    #[serde(rename = "quotaURL", skip_serializing_if = "String::is_empty")]
    pub quota_url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Who the server thinks the caller is.
#[utoipa::path(get, path = "/v1/auth/whoami", tag = "meta",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub async fn whoami(auth: AuthInfo) -> Json<WhoAmI> {
    Json(WhoAmI {
        role: auth.role,
        user: auth.user,
        team: auth.team,
        namespace: auth.namespace,
        auth_method: auth.auth_method,
        quota_url: auth.quota_url,
        email: auth.email,
        name: auth.name,
    })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub reference: String,
    pub digest: String,
    pub size_bytes: u64,
    /// `builtin`, `imported` or `pulled`.
    pub source: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageList {
    pub items: Vec<ImageInfo>,
    pub total: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Reference to register the image under (default: the names inside the archive).
    pub name: Option<String>,
}

fn images(st: &AppState) -> Result<&agentbox_images::ImageStore, AppError> {
    st.images.as_ref().ok_or_else(|| AppError::bad_request("this server's backend has no local image store"))
}

fn to_info(s: agentbox_images::ImageSummary) -> ImageInfo {
    ImageInfo { reference: s.reference, digest: s.digest, size_bytes: s.size_bytes, source: s.source }
}

/// Images in the local store (built-in, imported, pulled).
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = ImageList)))]
pub async fn list_images(State(st): State<Arc<AppState>>, _auth: AuthInfo) -> ApiResult<Json<ImageList>> {
    let items: Vec<ImageInfo> = images(&st)?
        .list()
        .map_err(|e| AppError::internal("listing images failed", e))?
        .into_iter()
        .map(to_info)
        .collect();
    Ok(Json(ImageList { total: items.len() as u64, items }))
}

/// Import an OCI image layout (tar) or a `docker save` archive sent as the request body (admin).
#[utoipa::path(post, path = "/v1/admin/images", tag = "images", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = ImageList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn import_image(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageList>)> {
    if !auth.is_admin() {
        return Err(AppError::forbidden("admin api key required").into());
    }
    if let Some(n) = &q.name {
        agentbox_core::validate::image_ref("name", n)?;
    }
    let store = images(&st)?.clone();
    let mut file = tempfile::NamedTempFile::new().map_err(|e| AppError::internal("cannot buffer the upload", e))?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::bad_request(format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        file.write_all(&chunk).map_err(|e| AppError::internal("cannot buffer the upload", e))?;
    }
    if size == 0 {
        return Err(
            AppError::bad_request("empty body: send the image archive (OCI layout tar or docker save tar)").into()
        );
    }
    let name = q.name.clone();
    let imported = tokio::task::spawn_blocking(move || store.import(file.path(), name.as_deref()))
        .await
        .map_err(|e| AppError::internal("import task failed", e))?
        .map_err(|e| AppError::bad_request(format!("import failed: {e}")))?;
    let items: Vec<ImageInfo> = imported.into_iter().map(to_info).collect();
    Ok((StatusCode::CREATED, Json(ImageList { total: items.len() as u64, items })))
}
