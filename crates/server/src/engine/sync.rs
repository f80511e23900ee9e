//! Template sync: re-apply a pool's source template (its current version) and the pool's stored
//! overrides; the preview shows the result without writing.
//!
//! A pool holds a *copy* of its template (so deleting or changing a template never touches running
//! pools). `POST /v1/sandboxpools/{name}/sync-template` replaces that copy with the template's
//! current spec, re-applies `overrides` (image, resourceMultiplier, imagePullSecret) and stamps
//! `templateVersion`. Idle slots made from the old spec are then rolled by the reconciler
//! (destroyed and recreated, a batch per pass); running sandboxes keep what they run and get the
//! new spec when their slot is recycled and rolled.

use std::sync::Arc;

use agentbox_core::error::AppError;
use agentbox_core::model::SandboxSpec;
use agentbox_core::store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use super::Engine;
use super::pools::{PoolView, apply_overrides};
use crate::auth::AuthInfo;

/// What a sync would make of the pool's sandbox definition.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncPreview {
    /// YAML of the pool's sandbox definition after the sync (overrides applied).
    pub spec_yaml: String,
    /// The template version the pool would be synced to.
    pub version: String,
    /// The version the pool has now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Whether the sync would change the pool's definition.
    pub changed: bool,
}

impl Engine {
    /// The pool's template spec at its current version, with the pool's overrides applied.
    fn synced_spec(
        &self,
        auth: &AuthInfo,
        name: &str,
    ) -> Result<(agentbox_core::model::Pool, SandboxSpec, String), AppError> {
        let pool = self.visible_pool(auth, name)?;
        let Some(tname) = pool.spec.template_name.clone() else {
            return Err(AppError::bad_request(format!(
                "pool {name:?} has no associated template (it was defined inline); nothing to sync"
            )));
        };
        let t = self
            .store
            .get_template(&tname)?
            .filter(|t| auth.is_admin() || t.spec.visibility.allows(&auth.team, &auth.user))
            .ok_or_else(|| {
                AppError::not_found(format!(
                    "sandbox template {tname:?} of pool {name:?} no longer exists (or is no longer visible to you)"
                ))
            })?;
        let spec = apply_overrides(&t.spec.sandbox, &pool.overrides)?;
        Ok((pool, spec, t.spec.version))
    }

    /// `POST …/sync-template/preview`: the result of a sync, without writing.
    pub fn preview_sync(&self, auth: &AuthInfo, name: &str) -> Result<SyncPreview, AppError> {
        let (pool, spec, version) = self.synced_spec(auth, name)?;
        let spec_yaml = serde_yaml::to_string(&spec)
            .map_err(|e| AppError::internal("could not render the pool spec as YAML", e))?;
        Ok(SyncPreview {
            changed: spec != pool.spec.template,
            spec_yaml,
            version,
            current_version: pool.template_version,
        })
    }

    /// `POST …/sync-template`: re-apply the template's current version and the stored overrides.
    pub fn sync_template(self: &Arc<Self>, auth: &AuthInfo, name: &str) -> Result<PoolView, AppError> {
        for _ in 0..5 {
            let (cur, spec, version) = self.synced_spec(auth, name)?;
            if cur.deleting {
                return Err(AppError::conflict(format!("pool {name:?} is being deleted")));
            }
            let mut p = cur.clone();
            p.spec.template = spec;
            p.template_version = Some(version.clone());
            p.resource_version = cur.resource_version + 1;
            match self.store.update_pool(&p, cur.resource_version) {
                Ok(()) => {
                    tracing::info!(pool = %p.name, version, "pool synced to its template");
                    if let Some(rt) = self.pool_rt(&(p.namespace.clone(), p.name.clone())) {
                        rt.wake.notify_one();
                    }
                    return self.pool_view(p);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::conflict(format!("pool {name:?} is changing concurrently; retry")))
    }
}
