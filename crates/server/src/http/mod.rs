//! The HTTP edge: router, OpenAPI document, auth extraction, request ids and tracing.

pub mod error;
mod misc;
mod pools;
mod sandboxes;
mod templates;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AuthInfo;
use crate::engine::Engine;
pub use error::{ApiError, ErrorBody};

/// Shared state of every handler.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub images: Option<agentbox_images::ImageStore>,
}

impl AppState {
    /// State for a server in dev mode (no admin key: every caller is the anonymous admin).
    pub fn new(engine: Arc<Engine>, images: Option<agentbox_images::ImageStore>) -> Arc<AppState> {
        Arc::new(AppState { engine, images })
    }
}

impl FromRequestParts<Arc<AppState>> for AuthInfo {
    type Rejection = ApiError;
    async fn from_request_parts(_parts: &mut Parts, _st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        // Dev mode: no admin key configured, every caller is the anonymous admin (issue #3 adds keys).
        Ok(AuthInfo::dev_admin())
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "agentbox API", description = "Warm pools of sandboxes for AI agents: claim in milliseconds, switch images in place."),
    tags((name = "sandboxes"), (name = "pools"), (name = "templates"), (name = "images"), (name = "meta"))
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(misc::ping))
        .routes(routes!(misc::whoami))
        .routes(routes!(sandboxes::create_sandbox, sandboxes::list_sandboxes))
        .routes(routes!(sandboxes::get_sandbox, sandboxes::delete_sandbox))
        .routes(routes!(sandboxes::exec))
        .routes(routes!(sandboxes::logs))
        .routes(routes!(pools::create_pool, pools::list_pools))
        .routes(routes!(pools::get_pool, pools::update_pool, pools::delete_pool))
        .routes(routes!(templates::list_templates))
        .routes(routes!(templates::get_template))
        .routes(routes!(templates::create_template))
        .routes(routes!(templates::update_template, templates::delete_template))
        .routes(routes!(misc::list_images))
        .routes(routes!(misc::import_image))
}

/// The OpenAPI document, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The native API router.
pub fn router(state: Arc<AppState>) -> Router {
    let (router, api) = api_router().split_for_parts();
    let api = Arc::new(api);
    router
        .route("/openapi.json", get(move || async move { Json((*api).clone()) }))
        .fallback(|| async {
            ApiError(agentbox_core::error::AppError::not_found("no such route; see GET /openapi.json for the API"))
        })
        .layer(DefaultBodyLimit::max(4 << 30))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let rid = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %rid)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
