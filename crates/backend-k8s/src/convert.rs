//! Conversions between the core model ([`agentbox_core::model`]) and the custom resources.
//!
//! The spec types of the custom resources have the REST API's wire shapes, so the leaf types
//! (containers, runtimes, visibility, autoscaling) convert through their JSON form; the tests below
//! set every field and check the round trip, so a field added on one side only fails them.
//! Bookkeeping (team, user, timestamps, resource versions) lives in the object's metadata.

use std::collections::BTreeMap;

use agentbox_core::duration::WireDuration;
use agentbox_core::model::{
    self, Pool, PoolOverrides as CorePoolOverrides, PoolSpec, SandboxSpec, Template, TemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{self, SandboxDefinition, SandboxPool, SandboxPoolSpec, SandboxTemplate, SandboxTemplateSpec};
use crate::labels;

/// A custom resource that does not describe a valid core object.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{kind} {name}: field {field}: {message}")]
    Field { kind: &'static str, name: String, field: &'static str, message: String },
    #[error("{kind} has no metadata.name")]
    NoName { kind: &'static str },
}

/// Same wire shape on both sides: convert through JSON.
fn via_json<A: Serialize, B: DeserializeOwned>(a: &A) -> Result<B, String> {
    let v = serde_json::to_value(a).map_err(|e| e.to_string())?;
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn time_string(t: &Option<Time>) -> String {
    t.as_ref().map(|t| t.0.to_string()).unwrap_or_else(model::now_rfc3339)
}

/// Kubernetes resource versions are opaque strings; in practice they are etcd revisions (numbers).
fn resource_version(meta: &ObjectMeta) -> u64 {
    meta.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The definition a pool's slots run, in custom-resource form.
pub fn definition_to_cr(s: &SandboxSpec) -> SandboxDefinition {
    via_json(s).expect("SandboxDefinition mirrors SandboxSpec")
}

/// The core form of a custom resource's sandbox definition.
pub fn definition_from_cr(d: &SandboxDefinition, name: &str) -> Result<SandboxSpec, ConvertError> {
    via_json(d).map_err(|message| ConvertError::Field {
        kind: "SandboxPool",
        name: name.into(),
        field: "spec.template",
        message,
    })
}

/// The `SandboxTemplate` object for a stored template (no resourceVersion: the API server owns it).
pub fn template_to_cr(t: &Template) -> SandboxTemplate {
    let json = serde_json::to_value(&t.spec).expect("a template spec serializes");
    let spec: SandboxTemplateSpec = serde_json::from_value(json).expect("SandboxTemplateSpec mirrors TemplateSpec");
    let mut cr = SandboxTemplate::new(&t.name, spec);
    cr.metadata.annotations = Some(BTreeMap::from([(labels::UPDATED_AT.to_owned(), t.updated_at.clone())]));
    cr
}

/// The core template described by a `SandboxTemplate` object.
pub fn template_from_cr(cr: &SandboxTemplate) -> Result<Template, ConvertError> {
    let name = cr.metadata.name.clone().ok_or(ConvertError::NoName { kind: "SandboxTemplate" })?;
    let spec: TemplateSpec = via_json(&cr.spec).map_err(|message| ConvertError::Field {
        kind: "SandboxTemplate",
        name: name.clone(),
        field: "spec",
        message,
    })?;
    let created_at = time_string(&cr.metadata.creation_timestamp);
    let updated_at = cr
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::UPDATED_AT).cloned())
        .unwrap_or_else(|| created_at.clone());
    Ok(Template { name, spec, resource_version: resource_version(&cr.metadata), created_at, updated_at })
}

/// Name of the `kubernetes.io/dockerconfigjson` Secret that holds a pool's registry credentials.
pub fn pull_secret_name(pool: &str) -> String {
    format!("{pool}-registry")
}

/// The `SandboxPool` object for a stored pool. Registry credentials are not copied: the object
/// names the pool's pull Secret ([`pull_secret_name`]) when the pool has credentials.
pub fn pool_to_cr(p: &Pool) -> SandboxPool {
    let s = &p.spec;
    let overrides = &p.overrides;
    let cr_overrides = crd::PoolOverrides {
        image: overrides.image.clone(),
        resource_multiplier: overrides.resource_multiplier,
        image_pull_secret_name: overrides.image_pull_secret.as_ref().map(|_| pull_secret_name(&p.name)),
    };
    let spec = SandboxPoolSpec {
        replicas: i32::try_from(s.replicas).unwrap_or(i32::MAX),
        min_replicas: s.min_replicas.map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
        max_replicas: s.max_replicas.map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
        template_name: s.template_name.clone(),
        template_version: p.template_version.clone(),
        template: definition_to_cr(&s.template),
        default_startup_timeout: s.default_startup_timeout.map(|d| d.to_string()),
        default_idle_timeout: s.default_idle_timeout.map(|d| d.to_string()),
        pod_creation_image_policy: match s.pod_creation_image_policy {
            model::PodCreationImagePolicy::IdleImage => crd::PodCreationImagePolicy::IdleImage,
            model::PodCreationImagePolicy::PoolDefaultImage => crd::PodCreationImagePolicy::PoolDefaultImage,
        },
        autoscaling: s.autoscaling.as_ref().map(|a| via_json(a).expect("Autoscaling mirrors AutoscalingSpec")),
        reservation: s.effective_reservation().map(|r| crd::Reservation { quota_url: r.quota_url }),
        overrides: (cr_overrides != crd::PoolOverrides::default()).then_some(cr_overrides),
    };
    let mut cr = SandboxPool::new(&p.name, spec);
    cr.metadata.namespace = Some(p.namespace.clone());
    let mut l = p.labels.clone();
    l.insert(labels::TEAM.into(), p.team.clone());
    l.insert(labels::USER.into(), p.user.clone());
    cr.metadata.labels = Some(l);
    if !p.annotations.is_empty() {
        cr.metadata.annotations = Some(p.annotations.clone());
    }
    cr
}

fn replicas(v: i32, name: &str, field: &'static str) -> Result<u32, ConvertError> {
    u32::try_from(v).map_err(|_| ConvertError::Field {
        kind: "SandboxPool",
        name: name.into(),
        field,
        message: format!("{v} is negative: use 0 or more"),
    })
}

fn duration(v: &Option<String>, name: &str, field: &'static str) -> Result<Option<WireDuration>, ConvertError> {
    v.as_deref()
        .map(|s| {
            agentbox_core::duration::parse_duration(s).map(WireDuration).map_err(|message| ConvertError::Field {
                kind: "SandboxPool",
                name: name.into(),
                field,
                message,
            })
        })
        .transpose()
}

/// The core pool described by a `SandboxPool` object. Registry credentials are not part of the
/// object: `overrides.imagePullSecret` is `None` and the caller reads the named Secret.
pub fn pool_from_cr(cr: &SandboxPool) -> Result<Pool, ConvertError> {
    let name = cr.metadata.name.clone().ok_or(ConvertError::NoName { kind: "SandboxPool" })?;
    let s = &cr.spec;
    let mut user_labels = cr.metadata.labels.clone().unwrap_or_default();
    let team = user_labels.remove(labels::TEAM).unwrap_or_default();
    let user = user_labels.remove(labels::USER).unwrap_or_default();
    let autoscaling = match &s.autoscaling {
        Some(a) => Some(via_json(a).map_err(|message| ConvertError::Field {
            kind: "SandboxPool",
            name: name.clone(),
            field: "spec.autoscaling",
            message,
        })?),
        None => None,
    };
    let o = s.overrides.clone().unwrap_or_default();
    let spec = PoolSpec {
        replicas: replicas(s.replicas, &name, "spec.replicas")?,
        min_replicas: s.min_replicas.map(|v| replicas(v, &name, "spec.minReplicas")).transpose()?,
        max_replicas: s.max_replicas.map(|v| replicas(v, &name, "spec.maxReplicas")).transpose()?,
        template_name: s.template_name.clone(),
        template: definition_from_cr(&s.template, &name)?,
        default_startup_timeout: duration(&s.default_startup_timeout, &name, "spec.defaultStartupTimeout")?,
        default_idle_timeout: duration(&s.default_idle_timeout, &name, "spec.defaultIdleTimeout")?,
        pod_creation_image_policy: match s.pod_creation_image_policy {
            crd::PodCreationImagePolicy::IdleImage => model::PodCreationImagePolicy::IdleImage,
            crd::PodCreationImagePolicy::PoolDefaultImage => model::PodCreationImagePolicy::PoolDefaultImage,
        },
        autoscaling,
        quota_url: None,
        reservation: s.reservation.as_ref().map(|r| model::Reservation { quota_url: r.quota_url.clone() }),
    };
    Ok(Pool {
        namespace: cr.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        team,
        user,
        spec,
        overrides: CorePoolOverrides {
            image: o.image,
            resource_multiplier: o.resource_multiplier,
            image_pull_secret: None,
        },
        labels: user_labels,
        annotations: cr.metadata.annotations.clone().unwrap_or_default(),
        template_version: s.template_version.clone(),
        created_at: time_string(&cr.metadata.creation_timestamp),
        resource_version: resource_version(&cr.metadata),
        deleting: cr.metadata.deletion_timestamp.is_some(),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbox_core::model::*;

    fn full_sandbox() -> SandboxSpec {
        SandboxSpec {
            idle_image: "pause".into(),
            idle_command: vec!["sleep".into(), "infinity".into()],
            containers: vec![ContainerSpec {
                name: "main".into(),
                image: "python:3.12".into(),
                command: vec!["python".into()],
                args: vec!["-m".into(), "http.server".into()],
                env: BTreeMap::from([("A".into(), "1".into())]),
                working_dir: Some("/work".into()),
                resources: ResourceRequirements {
                    requests: Quantities { cpu: Some("500m".into()), memory: Some("256Mi".into()), pids: None },
                    limits: Quantities { cpu: Some("1".into()), memory: Some("1Gi".into()), pids: Some(512) },
                },
                ports: vec![8000],
            }],
            runtimes: vec![RuntimeSpec {
                name: "web".into(),
                port: Some(8000),
                protocol: Some("TCP".into()),
                description: Some("a web server".into()),
                log_dir: Some("/var/log/web".into()),
                readiness_probe: Some(ReadinessProbe {
                    http_get: Some(HttpGetProbe { port: 8000, path: Some("/health".into()) }),
                    exec: Some(ExecProbe { command: vec!["true".into()] }),
                }),
            }],
            runtime_class: RuntimeClass::Runc,
            egress: false,
        }
    }

    #[test]
    fn template_round_trips_with_every_field() {
        let t = Template {
            name: "py".into(),
            spec: TemplateSpec {
                version: "1.2.3".into(),
                description: "python".into(),
                docs: "use ${AGBX_POOL_NAME}".into(),
                visibility: Visibility {
                    rules: vec![VisibilityRule { team: Some("ml".into()), users: vec!["ann".into()] }],
                },
                sandbox: full_sandbox(),
            },
            resource_version: 0,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-02T00:00:00Z".into(),
        };
        let mut cr = template_to_cr(&t);
        assert_eq!(cr.spec.containers[0].resources.limits.pids, Some(512));
        cr.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        cr.metadata.resource_version = Some("42".into());
        let back = template_from_cr(&cr).unwrap();
        assert_eq!(back.spec, t.spec);
        assert_eq!(back.resource_version, 42);
        assert_eq!(back.updated_at, t.updated_at);
    }

    #[test]
    fn pool_round_trips_and_keeps_credentials_out_of_the_object() {
        let p = Pool {
            name: "py".into(),
            namespace: "t-ml-ann".into(),
            team: "ml".into(),
            user: "ann".into(),
            spec: PoolSpec {
                replicas: 3,
                min_replicas: Some(1),
                max_replicas: Some(10),
                template_name: Some("py".into()),
                template: full_sandbox(),
                default_startup_timeout: Some(WireDuration::from_secs(120)),
                default_idle_timeout: Some(WireDuration::from_secs(90)),
                pod_creation_image_policy: PodCreationImagePolicy::PoolDefaultImage,
                autoscaling: Some(AutoscalingSpec {
                    enabled: true,
                    scale_up_policy: ScaleUpPolicy {
                        mode: ScaleUpMode::Aggressive,
                        cooldown_seconds: 5,
                        idle_threshold_seconds: 0,
                    },
                    scale_down_policy: ScaleDownPolicy::default(),
                }),
                quota_url: None,
                reservation: Some(Reservation { quota_url: Some("org.ml".into()) }),
            },
            overrides: PoolOverrides {
                image: Some("python:3.13".into()),
                resource_multiplier: Some(2),
                image_pull_secret: Some(ImagePullSecret {
                    registries: vec![RegistryCredential {
                        registry: "r.example".into(),
                        username: "u".into(),
                        password: "hunter2".into(),
                    }],
                }),
            },
            labels: BTreeMap::from([("tier".into(), "gold".into())]),
            annotations: BTreeMap::from([("note".into(), "x".into())]),
            template_version: Some("1.2.3".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            resource_version: 0,
            deleting: false,
        };
        let cr = pool_to_cr(&p);
        let yaml = serde_yaml::to_string(&cr).unwrap();
        assert!(!yaml.contains("hunter2"), "credentials must not be in the object:\n{yaml}");
        assert_eq!(cr.spec.overrides.as_ref().unwrap().image_pull_secret_name.as_deref(), Some("py-registry"));
        assert_eq!(cr.spec.default_startup_timeout.as_deref(), Some("2m"));
        assert_eq!(cr.metadata.labels.as_ref().unwrap()[labels::TEAM], "ml");

        let mut cr = cr;
        cr.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        let back = pool_from_cr(&cr).unwrap();
        let mut expected = p.clone();
        expected.overrides.image_pull_secret = None;
        assert_eq!(back, expected);
    }

    #[test]
    fn a_negative_replica_count_is_refused_with_the_field_name() {
        let mut cr = pool_to_cr(&Pool {
            name: "p".into(),
            namespace: "default".into(),
            team: String::new(),
            user: String::new(),
            spec: serde_json::from_value(serde_json::json!({
                "replicas": 1, "template": {"idleImage": "pause", "containers": []}
            }))
            .unwrap(),
            overrides: Default::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            template_version: None,
            created_at: now_rfc3339(),
            resource_version: 0,
            deleting: false,
        });
        cr.spec.replicas = -1;
        let err = pool_from_cr(&cr).unwrap_err().to_string();
        assert!(err.contains("spec.replicas") && err.contains("negative"), "{err}");
        cr.spec.replicas = 1;
        cr.spec.default_idle_timeout = Some("soon".into());
        let err = pool_from_cr(&cr).unwrap_err().to_string();
        assert!(err.contains("spec.defaultIdleTimeout"), "{err}");
    }
}
