//! The install manifests in `deploy/kustomize/` parse as the Kubernetes types they claim to be
//! (every field survives a typed round trip, so a misspelt field fails), reference files that
//! exist, grant the verbs the backend uses, and expose the three listeners of the server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<serde_yaml::Value>,
}

/// Every document of every resource the kustomization (recursively) lists, with its file.
fn documents(dir: &Path, out: &mut Vec<(String, serde_json::Value)>) {
    let k: Kustomization = serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
        .unwrap_or_else(|e| panic!("{}/kustomization.yaml: {e}", dir.display()));
    assert_eq!((k.api_version.as_str(), k.kind.as_str()), ("kustomize.config.k8s.io/v1beta1", "Kustomization"));
    for r in &k.resources {
        let path = dir.join(r);
        assert!(path.exists(), "{} lists {r}, which does not exist", dir.display());
        if path.is_dir() {
            documents(&path, out);
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((r.clone(), v));
            }
        }
    }
}

/// Parse as `T` and check that nothing was lost on the way (unknown or misspelt fields are).
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, v: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, v, "{file}: a field did not survive parsing as {} (misspelt?)", std::any::type_name::<T>());
    t
}

struct Manifests {
    deployment: Deployment,
    service: Service,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    account: ServiceAccount,
    claims: Vec<PersistentVolumeClaim>,
    crds: Vec<CustomResourceDefinition>,
}

fn manifests() -> Manifests {
    let mut docs = Vec::new();
    documents(&deploy_dir().join("kustomize"), &mut docs);
    let (mut deployment, mut service, mut role, mut binding, mut account) = (None, None, None, None, None);
    let mut crds = Vec::new();
    let mut claims = Vec::new();
    for (file, v) in &docs {
        match v["kind"].as_str().unwrap_or_default() {
            "Namespace" => {
                typed::<Namespace>(file, v);
            }
            "ServiceAccount" => account = Some(typed::<ServiceAccount>(file, v)),
            "ClusterRole" => role = Some(typed::<ClusterRole>(file, v)),
            "ClusterRoleBinding" => binding = Some(typed::<ClusterRoleBinding>(file, v)),
            "Deployment" => deployment = Some(typed::<Deployment>(file, v)),
            "Service" => service = Some(typed::<Service>(file, v)),
            "PersistentVolumeClaim" => claims.push(typed::<PersistentVolumeClaim>(file, v)),
            // Generated YAML; serde_yaml renders some defaults differently, so no round trip here.
            "CustomResourceDefinition" => crds.push(serde_json::from_value(v.clone()).unwrap()),
            other => panic!("{file}: unexpected kind {other:?}: add it to this test"),
        }
    }
    Manifests {
        deployment: deployment.expect("a Deployment"),
        service: service.expect("a Service"),
        role: role.expect("a ClusterRole"),
        binding: binding.expect("a ClusterRoleBinding"),
        account: account.expect("a ServiceAccount"),
        claims,
        crds,
    }
}

#[test]
fn the_service_exposes_the_three_listeners_of_the_deployment() {
    let m = manifests();
    let pod = m.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--backend=kubernetes"), "{args:?}");
    // Port each listener flag binds, by flag.
    let listen: BTreeMap<&str, i32> = ["--listen", "--e2b-listen", "--proxy-listen"]
        .into_iter()
        .map(|flag| {
            let a = args.iter().find(|a| a.starts_with(&format!("{flag}="))).unwrap_or_else(|| panic!("no {flag}"));
            (flag, a.rsplit(':').next().unwrap().parse().unwrap())
        })
        .collect();
    let container_ports: BTreeMap<String, i32> =
        c.ports.as_deref().unwrap().iter().map(|p| (p.name.clone().unwrap(), p.container_port)).collect();
    assert_eq!(
        listen.values().copied().collect::<BTreeSet<_>>(),
        container_ports.values().copied().collect::<BTreeSet<_>>(),
        "the container declares exactly the ports the server listens on"
    );
    let service_targets: BTreeSet<i32> = m
        .service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_deref()
        .unwrap()
        .iter()
        .map(|p| match p.target_port.as_ref().expect("targetPort") {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => {
                *container_ports.get(name).unwrap_or_else(|| panic!("service targets unknown port {name}"))
            }
        })
        .collect();
    assert_eq!(service_targets, listen.values().copied().collect(), "the service reaches the three listeners");
    let selector = m.service.spec.as_ref().unwrap().selector.clone().unwrap();
    let labels = m.deployment.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the service selects the deployment's pods");
}

#[test]
fn rbac_grants_what_the_backend_uses_to_the_deployments_account() {
    let m = manifests();
    let rules = m.role.rules.clone().unwrap_or_default();
    let allowed = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups.as_deref().unwrap_or_default().iter().any(|g| g == group)
                && r.resources.as_deref().unwrap_or_default().iter().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    let needed = [
        ("", "pods", &["get", "list", "watch", "create", "patch", "delete"][..]),
        ("", "pods/exec", &["create"]),
        ("", "pods/log", &["get"]),
        ("", "secrets", &["get", "list", "create", "patch", "delete"]),
        ("", "events", &["create", "patch"]),
        ("coordination.k8s.io", "leases", &["get", "create", "update"]),
        ("agentbox.dev", "sandboxpools", &["get", "list", "watch", "create", "patch", "delete"]),
        ("agentbox.dev", "sandboxtemplates", &["get", "list", "watch", "create", "patch", "delete"]),
        ("agentbox.dev", "sandboxpools/status", &["patch", "update"]),
        ("agentbox.dev", "sandboxpools/scale", &["get", "patch"]),
        ("apiextensions.k8s.io", "customresourcedefinitions", &["get"]),
        ("metrics.k8s.io", "pods", &["get"]),
        ("", "nodes", &["get"]),
    ];
    for (group, resource, verbs) in needed {
        for verb in verbs {
            assert!(allowed(group, resource, verb), "the ClusterRole does not allow {verb} on {group}/{resource}");
        }
    }
    let sa = m.account.metadata.name.clone().unwrap();
    let pod = m.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(sa.as_str()));
    assert_eq!(m.binding.role_ref.name, m.role.metadata.name.clone().unwrap());
    let subject = &m.binding.subjects.as_deref().unwrap()[0];
    assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", sa.as_str()));
    assert_eq!(subject.namespace, m.account.metadata.namespace);
}

#[test]
fn the_kustomization_installs_both_crds() {
    let names: BTreeSet<String> = manifests().crds.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["sandboxpools.agentbox.dev".to_string(), "sandboxtemplates.agentbox.dev".to_string()])
    );
}

#[test]
fn the_agent_image_flag_names_the_image_the_kustomization_deploys() {
    let m = manifests();
    let pod = m.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    let flag = args.iter().find_map(|a| a.strip_prefix("--k8s-agent-image=")).expect("--k8s-agent-image");
    let k: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy_dir().join("kustomize/kustomization.yaml")).unwrap())
            .unwrap();
    let image = k["images"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str() == Some(pod.containers[0].image.as_deref().unwrap()))
        .expect("the kustomization sets the server image");
    let deployed = format!("{}:{}", image["newName"].as_str().unwrap(), image["newTag"].as_str().unwrap());
    // Kustomize rewrites `image:` fields only, never args: keep both in step by hand.
    assert_eq!(flag, deployed, "the slot pods' agent comes from the server image");
}

#[test]
fn the_data_dir_is_on_a_persistent_volume_claim_of_the_kustomization() {
    let m = manifests();
    let pod = m.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    let dir = args.iter().find_map(|a| a.strip_prefix("--data-dir=")).expect("--data-dir");
    let mount = pod.containers[0]
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.mount_path == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at the data dir {dir}"));
    let volume = pod.volumes.as_deref().unwrap_or_default().iter().find(|v| v.name == mount.name).unwrap();
    let claim = volume.persistent_volume_claim.as_ref().expect("the data dir must survive restarts: use a PVC");
    assert!(
        m.claims.iter().any(|c| c.metadata.name.as_deref() == Some(claim.claim_name.as_str())),
        "the kustomization creates the claim {}",
        claim.claim_name
    );
    let strategy = m.deployment.spec.as_ref().unwrap().strategy.as_ref().and_then(|s| s.type_.clone());
    assert_eq!(strategy.as_deref(), Some("Recreate"), "a ReadWriteOnce claim needs the old Pod gone first");
}
