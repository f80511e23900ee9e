//! Sandbox templates: visibility-filtered reads, admin writes with semver and resourceVersion checks.

use agentbox_core::error::AppError;
use agentbox_core::model::{Template, TemplateSpec};
use agentbox_core::quantity::{format_cpu_millis, format_memory_bytes};
use agentbox_core::store::StoreError;
use agentbox_core::validate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Engine, now};
use crate::auth::AuthInfo;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTemplateRequest {
    pub name: String,
    pub spec: TemplateSpec,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTemplateRequest {
    pub spec: TemplateSpec,
    /// When given, the update only applies if the template is still at this version (else 409).
    #[serde(default)]
    pub resource_version: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSummary {
    pub name: String,
    pub version: String,
    pub description: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub runtime_names: Vec<String>,
    pub has_docs: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateView {
    pub name: String,
    pub spec: TemplateSpec,
    pub resource_version: u64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// The spec as YAML, for editing and re-submitting.
    pub spec_yaml: String,
}

fn sums(t: &Template) -> (Option<String>, Option<String>) {
    let r = validate::slot_resources(&t.spec.sandbox.containers).unwrap_or_default();
    (r.cpu_millis.map(format_cpu_millis), r.memory_bytes.map(format_memory_bytes))
}

impl TemplateView {
    pub fn from(t: Template) -> Self {
        let (cpu, memory) = sums(&t);
        TemplateView {
            spec_yaml: serde_yaml::to_string(&t.spec).unwrap_or_default(),
            name: t.name,
            spec: t.spec,
            resource_version: t.resource_version,
            created_at: t.created_at,
            updated_at: t.updated_at,
            cpu,
            memory,
        }
    }
}

fn validate_spec(spec: &TemplateSpec) -> Result<(), AppError> {
    validate::version(&spec.version)?;
    validate::sandbox_spec(&spec.sandbox)
}

impl Engine {
    pub fn list_templates(&self, auth: &AuthInfo) -> Result<Vec<TemplateSummary>, AppError> {
        Ok(self
            .store
            .list_templates()?
            .into_iter()
            .filter(|t| auth.is_admin() || t.spec.visibility.allows(&auth.team, &auth.user))
            .map(|t| {
                let (cpu, memory) = sums(&t);
                TemplateSummary {
                    runtime_names: t.spec.sandbox.runtimes.iter().map(|r| r.name.clone()).collect(),
                    has_docs: !t.spec.docs.is_empty(),
                    name: t.name,
                    version: t.spec.version,
                    description: t.spec.description,
                    created_at: t.created_at,
                    cpu,
                    memory,
                }
            })
            .collect())
    }

    pub fn get_template(&self, auth: &AuthInfo, name: &str) -> Result<Template, AppError> {
        match self.store.get_template(name)? {
            Some(t) if auth.is_admin() || t.spec.visibility.allows(&auth.team, &auth.user) => Ok(t),
            _ => Err(AppError::not_found(format!("sandbox template {name:?} not found"))),
        }
    }

    pub fn create_template(&self, req: CreateTemplateRequest) -> Result<Template, AppError> {
        validate::dns_label("name", &req.name)?;
        validate_spec(&req.spec)?;
        let t = Template { name: req.name, spec: req.spec, resource_version: 1, created_at: now(), updated_at: now() };
        self.store.create_template(&t).map_err(|e| match e {
            StoreError::Conflict(_) => {
                AppError::conflict(format!("sandbox template {:?} already exists; update it with PUT instead", t.name))
            }
            e => e.into(),
        })?;
        Ok(t)
    }

    pub fn update_template(&self, name: &str, req: UpdateTemplateRequest) -> Result<Template, AppError> {
        validate_spec(&req.spec)?;
        let cur = self
            .store
            .get_template(name)?
            .ok_or_else(|| AppError::not_found(format!("sandbox template {name:?} not found")))?;
        if let Some(rv) = req.resource_version
            && rv != cur.resource_version
        {
            return Err(AppError::conflict(format!(
                "sandbox template {name:?} changed (resourceVersion {rv} is stale, current is {}); re-read it and retry",
                cur.resource_version
            )));
        }
        let (old, new) = (validate::version(&cur.spec.version)?, validate::version(&req.spec.version)?);
        if new <= old {
            return Err(AppError::bad_request(format!(
                "version {:?} must be greater than current version {:?}",
                req.spec.version, cur.spec.version
            )));
        }
        let t =
            Template { spec: req.spec, resource_version: cur.resource_version + 1, updated_at: now(), ..cur.clone() };
        self.store.update_template(&t, cur.resource_version).map_err(|e| match e {
            StoreError::Conflict(_) => {
                AppError::conflict(format!("sandbox template {name:?} changed concurrently; re-read it and retry"))
            }
            e => e.into(),
        })?;
        Ok(t)
    }

    /// Pools keep their own copy of the template, so deleting a template never affects them.
    pub fn delete_template(&self, name: &str) -> Result<(), AppError> {
        if self.store.delete_template(name)? {
            Ok(())
        } else {
            Err(AppError::not_found(format!("sandbox template {name:?} not found")))
        }
    }
}
