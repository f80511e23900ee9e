//! The HTTP edge: router, OpenAPI document, auth extraction, request ids and tracing.

mod admin;
pub mod error;
mod gateway;
mod keys;
mod logs;
mod metrics;
mod misc;
mod pools;
mod quotas;
mod sandboxes;
mod templates;
mod terminal;

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
use crate::authn::{AuthConfig, Authenticator};
use crate::engine::Engine;
use crate::gateway::Gateway;
pub use error::{ApiError, ErrorBody};

/// Shared state of every handler.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub images: Option<agentbox_images::ImageStore>,
    pub auth: Arc<Authenticator>,
    /// The cluster catalog and the client that forwards requests to other clusters.
    pub gateway: Arc<Gateway>,
}

impl AppState {
    /// State for a server in dev mode (no admin key: anonymous callers are the admin).
    pub fn new(engine: Arc<Engine>, images: Option<agentbox_images::ImageStore>) -> Arc<AppState> {
        Self::with_auth(engine, images, AuthConfig::default())
    }

    /// State with the given authentication settings.
    pub fn with_auth(
        engine: Arc<Engine>,
        images: Option<agentbox_images::ImageStore>,
        cfg: AuthConfig,
    ) -> Arc<AppState> {
        let gateway = Arc::new(Gateway::local_only(engine.cluster_id()));
        Self::with_gateway(engine, images, cfg, gateway)
    }

    /// State with the given authentication settings and multi-cluster gateway.
    pub fn with_gateway(
        engine: Arc<Engine>,
        images: Option<agentbox_images::ImageStore>,
        cfg: AuthConfig,
        gateway: Arc<Gateway>,
    ) -> Arc<AppState> {
        let auth = Arc::new(Authenticator::new(cfg, engine.store()));
        let metrics_of = Arc::clone(&engine);
        gateway.observe(Arc::new(move |cluster, plane, status, elapsed| {
            metrics_of.metrics().gateway_forward(cluster, plane.label(), status, elapsed)
        }));
        Arc::new(AppState { engine, images, auth, gateway })
    }
}

/// An authenticated caller that must be an admin (403 otherwise).
pub struct AdminAuth(pub AuthInfo);

impl FromRequestParts<Arc<AppState>> for AdminAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let auth = AuthInfo::from_request_parts(parts, st).await?;
        if !auth.is_admin() {
            return Err(ApiError(agentbox_core::error::AppError::forbidden(
                "admin access required: use the admin key or an admin JWT",
            )));
        }
        Ok(AdminAuth(auth))
    }
}

impl FromRequestParts<Arc<AppState>> for AuthInfo {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if let Some(a) = parts.extensions.get::<AuthInfo>() {
            return Ok(a.clone());
        }
        let auth = st.auth.authenticate(&parts.method, &parts.headers)?;
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "agentbox API", description = "Warm pools of sandboxes for AI agents: claim in milliseconds, switch images in place."),
    tags((name = "sandboxes"), (name = "pools"), (name = "templates"), (name = "api-keys"), (name = "quotas"), (name = "statistics"), (name = "admin"), (name = "images"), (name = "meta"))
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(misc::ping))
        .routes(routes!(metrics::metrics))
        .routes(routes!(misc::whoami))
        .routes(routes!(sandboxes::create_sandbox, sandboxes::list_sandboxes))
        .routes(routes!(sandboxes::get_sandbox, sandboxes::delete_sandbox))
        .routes(routes!(sandboxes::exec))
        .routes(routes!(sandboxes::exec_stream))
        .routes(routes!(sandboxes::sandbox_metrics))
        .routes(routes!(terminal::create_exec_token))
        .routes(routes!(terminal::terminal))
        .routes(routes!(logs::logs))
        .routes(routes!(logs::logs_stream))
        .routes(routes!(logs::set_timeout))
        .routes(routes!(logs::is_ready))
        .routes(routes!(pools::create_pool, pools::list_pools))
        .routes(routes!(pools::get_pool, pools::update_pool, pools::delete_pool))
        .routes(routes!(pools::sync_template))
        .routes(routes!(pools::preview_sync))
        .routes(routes!(templates::list_templates))
        .routes(routes!(templates::get_template))
        .routes(routes!(templates::create_template))
        .routes(routes!(templates::update_template, templates::delete_template))
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::delete_key))
        .routes(routes!(keys::admin_create_key, keys::admin_list_keys))
        .routes(routes!(keys::admin_delete_key))
        .routes(routes!(admin::sandbox_statistics))
        .routes(routes!(admin::admin_sandbox_statistics))
        .routes(routes!(admin::admin_pool_statistics))
        .routes(routes!(admin::admin_teams))
        .routes(routes!(admin::admin_team_users))
        .routes(routes!(admin::admin_namespaces))
        .routes(routes!(admin::clusters))
        .routes(routes!(quotas::create_quota, quotas::list_all_quotas))
        .routes(routes!(quotas::get_quota, quotas::update_quota, quotas::delete_quota))
        .routes(routes!(quotas::list_my_quotas))
        .routes(routes!(quotas::feature_gates))
        .routes(routes!(misc::list_images))
        .routes(routes!(misc::import_image))
}

/// The OpenAPI document, generated from the handlers.
pub fn openapi() -> serde_json::Value {
    finish_document(api_router().split_for_parts().1)
}

/// The generated document, plus what utoipa cannot express per handler: merged `allOf`s (see
/// [`flatten_all_of`]), the security schemes, and the responses every authenticated operation can
/// give (401 bad credentials, 429 rate limit, 426 old client on writes, 403 for tenants on admin routes).
fn finish_document(api: utoipa::openapi::OpenApi) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut doc = flatten_all_of(api);
    gateway::document(&mut doc);
    doc["components"]["securitySchemes"] = json!({
        "apiKey": {"type": "apiKey", "in": "header", "name": "AGENTBOX-API-KEY",
            "description": "An API key (`agbx_<64 hex>`, or its alias `e2b_<same hex>`) or the admin key."},
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An HS256 JWT (claims sub, name, email, role, team, user) when the server has --jwt-secret."}
    });
    doc["security"] = json!([{"apiKey": []}, {"bearer": []}]);
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, op) in item.iter_mut() {
                if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    continue;
                }
                if !path.starts_with("/v1/") || path.ends_with("/terminal") {
                    op["security"] = json!([]);
                    continue;
                }
                let Some(resp) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
                resp.entry("401").or_insert_with(|| err("missing, invalid or expired credentials"));
                resp.entry("429").or_insert_with(|| err("rate limit exceeded (see Retry-After)"));
                if path.starts_with("/v1/admin/") {
                    resp.entry("403").or_insert_with(|| err("admin access required"));
                }
                if method != "get" {
                    resp.entry("426").or_insert_with(|| err("the client is older than --min-client-version"));
                }
            }
        }
    }
    doc
}

/// `#[serde(flatten)]` comes out of utoipa as `allOf: [{$ref: Inner}, {own fields}]`. When `Inner`
/// forbids additional properties, that `allOf` cannot be satisfied (each part rejects the other's
/// fields), and validators and fuzzers reject the schema. Merge such `allOf`s into one object schema
/// with the union of properties and required fields.
fn flatten_all_of(api: utoipa::openapi::OpenApi) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut doc = serde_json::to_value(&api).expect("the OpenAPI document serializes to JSON");
    let schemas = doc.pointer("/components/schemas").and_then(Value::as_object).cloned().unwrap_or_default();
    let resolve = |v: &Value| -> Option<Value> {
        let r = v.get("$ref")?.as_str()?.strip_prefix("#/components/schemas/")?;
        schemas.get(r).cloned()
    };
    let Some(out) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else { return doc };
    for schema in out.values_mut() {
        let Some(parts) = schema.get("allOf").and_then(Value::as_array).cloned() else { continue };
        let parts: Vec<Value> = parts.iter().map(|p| resolve(p).unwrap_or_else(|| p.clone())).collect();
        if !parts.iter().all(|p| p.get("type").and_then(Value::as_str) == Some("object") && p.get("allOf").is_none()) {
            continue;
        }
        let mut props = Map::new();
        let mut required: Vec<Value> = vec![];
        let mut closed = false;
        for p in &parts {
            if let Some(m) = p.get("properties").and_then(Value::as_object) {
                props.extend(m.clone());
            }
            for r in p.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !required.contains(r) {
                    required.push(r.clone());
                }
            }
            closed |= p.get("additionalProperties") == Some(&Value::Bool(false));
        }
        let mut merged = Map::new();
        merged.insert("type".into(), "object".into());
        if let Some(d) = schema.get("description") {
            merged.insert("description".into(), d.clone());
        }
        if !required.is_empty() {
            merged.insert("required".into(), Value::Array(required));
        }
        merged.insert("properties".into(), Value::Object(props));
        if closed {
            merged.insert("additionalProperties".into(), Value::Bool(false));
        }
        *schema = Value::Object(merged);
    }
    doc
}

/// The native API router.
pub fn router(state: Arc<AppState>) -> Router {
    let (router, api) = api_router().split_for_parts();
    let api = Arc::new(finish_document(api));
    let inner = router
        .route("/openapi.json", get(move || async move { Json((*api).clone()) }))
        .fallback(|| async {
            ApiError(agentbox_core::error::AppError::not_found("no such route; see GET /openapi.json for the API"))
        })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), metrics::track))
        // JSON bodies are small; the image upload streams its raw body and is not bound by this.
        .layer(DefaultBodyLimit::max(16 << 20))
        .with_state(Arc::clone(&state));
    // Multi-cluster routing runs before routing and auth: it may rewrite the path
    // (`cluster.uuid` → `uuid`) or forward the request to another cluster.
    gateway::wrap(state, inner)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let rid = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %rid, sandbox_id = tracing::field::Empty)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
