//! The committed CRD YAML (`deploy/crds/`) is what the Rust types generate, and it declares what
//! the backend and `kubectl` rely on (scope, short names, subresources, printer columns).

use std::path::PathBuf;

use agentbox_backend_k8s::crd::{crd_file_name, crd_yaml, crds};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds")
}

fn committed(name: &str) -> String {
    let path = crd_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; generate it with `cargo run -p agentbox-backend-k8s --bin crdgen -- deploy/crds`",
            path.display()
        )
    })
}

#[test]
fn committed_crds_match_the_rust_types() {
    for crd in crds() {
        let file = crd_file_name(&crd);
        assert!(
            committed(&file) == crd_yaml(&crd),
            "deploy/crds/{file} differs from what crates/backend-k8s/src/crd.rs generates: regenerate it with \
             `cargo run -p agentbox-backend-k8s --bin crdgen -- deploy/crds` and commit the result"
        );
    }
    let files = std::fs::read_dir(crd_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".agentbox.dev.yaml"))
        .count();
    assert_eq!(files, crds().len(), "deploy/crds/ holds exactly the generated CRDs (a stale file is left over?)");
}

fn parse(name: &str) -> CustomResourceDefinition {
    serde_yaml::from_str(&committed(name)).unwrap_or_else(|e| panic!("{name} is not a CustomResourceDefinition: {e}"))
}

#[test]
fn sandbox_pool_crd_is_namespaced_with_status_scale_and_printer_columns() {
    let crd = parse("sandboxpools.agentbox.dev.yaml");
    assert_eq!(crd.spec.group, "agentbox.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "SandboxPool");
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["sbp".to_string()][..]));
    assert_eq!(crd.spec.versions.len(), 1);
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.served && v.storage);
    let sub = v.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some(), "status subresource");
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
    let cols: Vec<(&str, &str, &str)> = v
        .additional_printer_columns
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        cols,
        [
            ("Phase", "string", ".status.phase"),
            ("Replicas", "integer", ".spec.replicas"),
            ("Idle", "integer", ".status.idleReplicas"),
            ("Running", "integer", ".status.runningReplicas"),
            ("Starting", "integer", ".status.startingReplicas"),
            ("Stopping", "integer", ".status.stoppingReplicas"),
            ("Failed", "integer", ".status.failedReplicas"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ]
    );
    // The paths the scale subresource and the columns name exist in the schema, as integers.
    let schema = serde_json::to_value(v.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
    assert_eq!(schema["properties"]["spec"]["properties"]["replicas"]["type"], "integer");
    let status = &schema["properties"]["status"]["properties"];
    for field in
        ["replicas", "idleReplicas", "runningReplicas", "startingReplicas", "stoppingReplicas", "failedReplicas"]
    {
        assert_eq!(status[field]["type"], "integer", "status.{field}");
    }
    assert_eq!(status["selector"]["type"], "string");
    assert_eq!(status["conditions"]["type"], "array");
}

#[test]
fn sandbox_template_crd_is_cluster_scoped_with_short_name_sbt() {
    let crd = parse("sandboxtemplates.agentbox.dev.yaml");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "SandboxTemplate");
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["sbt".to_string()][..]));
    let v = &crd.spec.versions[0];
    assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    let schema = serde_json::to_value(v.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
    let spec = &schema["properties"]["spec"];
    for field in ["version", "idleImage", "containers"] {
        assert!(spec["required"].as_array().unwrap().iter().any(|r| r == field), "spec.{field} is required");
    }
    assert_eq!(spec["properties"]["visibility"]["properties"]["rules"]["type"], "array");
}
