//! `GET /templates[/{id}]`: the caller's pools shown as E2B templates.

use agentbox_core::quantity::{parse_cpu_millis, parse_memory_bytes};
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::error::{EPath, EResult};
use super::{E2bAuth, ENVD_VERSION, St};
use crate::engine::PoolView;

fn template_of(p: &PoolView) -> Value {
    let cpu = p.cpu.as_deref().and_then(|c| parse_cpu_millis(c).ok()).map(|m| m.div_ceil(1000)).unwrap_or(0);
    let mem = p.memory.as_deref().and_then(|m| parse_memory_bytes(m).ok()).map(|b| b >> 20).unwrap_or(0);
    json!({
        "templateID": p.name,
        "buildID": format!("{}-{}", p.name, p.resource_version),
        "cpuCount": cpu,
        "memoryMB": mem,
        "diskSizeMB": 0,
        "public": false,
        "aliases": [],
        "names": [p.name],
        "createdAt": p.created_at,
        "updatedAt": p.created_at,
        "createdBy": null,
        "lastSpawnedAt": null,
        "spawnCount": p.status.counts.running,
        "buildCount": 0,
        "envdVersion": ENVD_VERSION,
        "buildStatus": "ready",
    })
}

/// `GET /templates`: every pool the caller may use.
pub async fn list(State(st): State<St>, E2bAuth(auth): E2bAuth) -> EResult<Json<Vec<Value>>> {
    Ok(Json(st.app.engine.list_pools(&auth)?.iter().map(template_of).collect()))
}

/// `GET /templates/{id}`: one pool, as E2B `TemplateWithBuilds` (no builds); 404 when unknown.
pub async fn get(State(st): State<St>, E2bAuth(auth): E2bAuth, EPath(id): EPath<String>) -> EResult<Json<Value>> {
    let mut t = template_of(&st.app.engine.get_pool(&auth, &id)?);
    t["builds"] = json!([]);
    Ok(Json(t))
}
