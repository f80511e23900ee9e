//! The Pod of a slot, and what the core observes of it. Pure functions: no API calls here.

use std::collections::BTreeMap;

use agentbox_core::backend::{ContainerObservation, ContainerState, SlotObservation, SlotSpec};
use agentbox_core::model::{ContainerSpec, SlotPhase};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde_json::json;

use crate::crd::{GROUP, VERSION};
use crate::labels;

/// Where the agent binary is copied (an `emptyDir` mounted read-only into every container).
pub const AGENT_DIR: &str = "/.agentbox";
/// The agent inside the sandbox (same path as on the local backend).
pub const AGENT_PATH: &str = "/.agentbox/envd";
/// The agent's port (E2B's envd port).
pub const AGENT_PORT: u16 = 49983;
/// Name of the `emptyDir` volume that carries the agent.
pub const AGENT_VOLUME: &str = "agentbox-agent";
/// Name of the init container that copies the agent.
pub const AGENT_INIT_CONTAINER: &str = "agentbox-agent-install";

/// How the agent gets into a slot: an init container of `image` copies `binary` (a static build
/// of `agentbox-envd`) into an `emptyDir` at [`AGENT_DIR`]; a `postStart` hook of container 0
/// starts it (`--daemon` returns once it listens), after every start, including after an in-place
/// image switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInjection {
    /// Image that contains the agent binary (the agentbox server image has it).
    pub image: String,
    /// Path of the agent binary inside `image`.
    pub binary: String,
}

/// The owner of a slot Pod: the `SandboxPool` object (its UID makes the reference valid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOwner {
    pub name: String,
    pub uid: String,
}

/// Inputs of [`build_pod`] beyond the slot spec.
#[derive(Debug, Clone, Default)]
pub struct PodOptions {
    pub owner: Option<PoolOwner>,
    pub agent: Option<AgentInjection>,
    /// `imagePullSecrets` of the Pod.
    pub pull_secret: Option<String>,
    pub termination_grace_period_seconds: Option<i64>,
}

fn container_json(c: &ContainerSpec, agent: bool, main: bool) -> serde_json::Value {
    let mut v = json!({ "name": c.name, "image": c.image });
    let o = v.as_object_mut().expect("an object");
    if !c.command.is_empty() {
        o.insert("command".into(), json!(c.command));
    }
    if !c.args.is_empty() {
        o.insert("args".into(), json!(c.args));
    }
    if !c.env.is_empty() {
        let env: Vec<_> = c.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
        o.insert("env".into(), json!(env));
    }
    if let Some(wd) = &c.working_dir {
        o.insert("workingDir".into(), json!(wd));
    }
    let quantities = |q: &agentbox_core::model::Quantities| {
        let mut m = serde_json::Map::new();
        if let Some(cpu) = &q.cpu {
            m.insert("cpu".into(), json!(cpu));
        }
        if let Some(mem) = &q.memory {
            m.insert("memory".into(), json!(mem));
        }
        m
    };
    let (req, lim) = (quantities(&c.resources.requests), quantities(&c.resources.limits));
    if !req.is_empty() || !lim.is_empty() {
        let mut r = serde_json::Map::new();
        if !req.is_empty() {
            r.insert("requests".into(), req.into());
        }
        if !lim.is_empty() {
            r.insert("limits".into(), lim.into());
        }
        o.insert("resources".into(), r.into());
    }
    if !c.ports.is_empty() {
        let ports: Vec<_> = c.ports.iter().map(|p| json!({"containerPort": p, "protocol": "TCP"})).collect();
        o.insert("ports".into(), json!(ports));
    }
    if agent {
        o.insert("volumeMounts".into(), json!([{"name": AGENT_VOLUME, "mountPath": AGENT_DIR, "readOnly": true}]));
        if main {
            o.insert(
                "lifecycle".into(),
                json!({"postStart": {"exec": {"command": [AGENT_PATH, "--port", AGENT_PORT.to_string(), "--daemon"]}}}),
            );
        }
    }
    v
}

/// The Pod of a new slot: named after the slot (or `generateName: <pool>-` when the slot id is
/// empty), labelled with its pool and phase `idle`, protected by a finalizer, owned by its
/// `SandboxPool`, `restartPolicy: Never` (a container that exits stays exited, as on the local
/// backend: the core sees it and fails or replaces the slot), no service-account token (a
/// sandbox never gets credentials for the cluster).
pub fn build_pod(spec: &SlotSpec, opts: &PodOptions) -> Pod {
    let agent = opts.agent.is_some();
    let mut metadata = json!({
        "namespace": spec.namespace,
        "labels": {
            labels::POOL: spec.pool,
            labels::PHASE: SlotPhase::Idle.as_str(),
            labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
        },
        "finalizers": [labels::PROTECTION_FINALIZER],
    });
    let m = metadata.as_object_mut().expect("an object");
    if spec.slot_id.is_empty() {
        m.insert("generateName".into(), json!(format!("{}-", spec.pool)));
    } else {
        m.insert("name".into(), json!(spec.slot_id));
    }
    if let Some(owner) = &opts.owner {
        m.insert(
            "ownerReferences".into(),
            json!([{
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": "SandboxPool",
                "name": owner.name,
                "uid": owner.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
        );
    }
    let containers: Vec<_> =
        spec.containers.iter().enumerate().map(|(i, c)| container_json(c, agent, i == 0)).collect();
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "containers": containers,
    });
    let ps = pod_spec.as_object_mut().expect("an object");
    if let Some(g) = opts.termination_grace_period_seconds {
        ps.insert("terminationGracePeriodSeconds".into(), json!(g));
    }
    if let Some(secret) = &opts.pull_secret {
        ps.insert("imagePullSecrets".into(), json!([{"name": secret}]));
    }
    if let Some(a) = &opts.agent {
        ps.insert("volumes".into(), json!([{"name": AGENT_VOLUME, "emptyDir": {}}]));
        ps.insert(
            "initContainers".into(),
            json!([{
                "name": AGENT_INIT_CONTAINER,
                "image": a.image,
                "command": ["cp", a.binary, AGENT_PATH],
                "volumeMounts": [{"name": AGENT_VOLUME, "mountPath": AGENT_DIR}],
            }]),
        );
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}))
        .expect("the slot Pod is a valid Pod")
}

/// The JSON patch that switches the images of a Pod's containers in place: for every container
/// whose image changes, a `test` of its name at that index (so a reordered Pod fails the patch
/// instead of patching the wrong container) and a `replace` of its image. `None` when `pod`
/// already has every image. Errors when `containers` does not name the Pod's containers in order
/// (Kubernetes can change only the image of a running Pod's container).
pub fn image_patch(pod: &Pod, containers: &[ContainerSpec]) -> Result<Option<serde_json::Value>, String> {
    let current = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let names = |v: Vec<&str>| v.join(", ");
    if current.len() != containers.len() || current.iter().zip(containers).any(|(a, b)| a.name != b.name) {
        return Err(format!(
            "the slot's pod has containers [{}] but the switch names [{}]: on kubernetes only the images of the \
             same containers can change in place",
            names(current.iter().map(|c| c.name.as_str()).collect()),
            names(containers.iter().map(|c| c.name.as_str()).collect()),
        ));
    }
    let mut ops = Vec::new();
    for (i, (cur, want)) in current.iter().zip(containers).enumerate() {
        if cur.image.as_deref() != Some(want.image.as_str()) {
            ops.push(json!({"op": "test", "path": format!("/spec/containers/{i}/name"), "value": want.name}));
            ops.push(json!({"op": "replace", "path": format!("/spec/containers/{i}/image"), "value": want.image}));
        }
    }
    Ok((!ops.is_empty()).then(|| json!(ops)))
}

/// `registry/repository:tag` with Docker Hub's defaults filled in (`busybox` →
/// `docker.io/library/busybox:latest`), as kubelets report images.
pub fn normalize_image(image: &str) -> String {
    let image = image.trim();
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_registry {
        name.to_owned()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if digest.is_none() && !last.contains(':') {
        full.push_str(":latest");
    }
    match digest {
        Some(d) => format!("{full}@{d}"),
        None => full,
    }
}

/// Whether a container status reports `want` as its image (by reference, or by digest for a
/// digest reference).
pub fn image_matches(want: &str, status: &ContainerStatus) -> bool {
    if status.image == want || normalize_image(&status.image) == normalize_image(want) {
        return true;
    }
    match want.split_once('@') {
        Some((_, digest)) => status.image_id.ends_with(digest) || status.image.ends_with(digest),
        None => false,
    }
}

/// Waiting reasons that will not fix themselves (image problems, bad container config).
const HOPELESS_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Where a Pod stands with respect to running `want` (container name → image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every container runs its wanted image (with a container id not in `not_ids`).
    Done,
    /// Not yet; keep waiting.
    Pending(String),
    /// It will not get there: `image` is set when an image could not be pulled.
    Failed { image: Option<String>, message: String },
}

/// Decide whether the Pod runs the wanted images. `not_ids` are container ids from before a
/// switch: a container still reporting one of them has not been restarted yet.
pub fn progress(pod: &Pod, want: &BTreeMap<String, String>, not_ids: &[String]) -> Progress {
    let status = pod.status.as_ref();
    if let Some(phase) = status.and_then(|s| s.phase.as_deref())
        && matches!(phase, "Failed" | "Succeeded")
    {
        let reason = status.and_then(|s| s.reason.clone()).unwrap_or_else(|| format!("Pod{phase}"));
        let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
        return Progress::Failed { image: None, message: format!("pod ended ({reason}) {message}").trim().into() };
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Progress::Failed { image: None, message: "pod is being deleted".into() };
    }
    let statuses = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let inits = status.and_then(|s| s.init_container_statuses.as_deref()).unwrap_or_default();
    for s in inits {
        if let Some(w) = s.state.as_ref().and_then(|st| st.waiting.as_ref())
            && HOPELESS_WAITING.contains(&w.reason.as_deref().unwrap_or_default())
        {
            return Progress::Failed {
                image: Some(s.image.clone()),
                message: format!("init container {}: {}", s.name, w.message.clone().unwrap_or_default()),
            };
        }
    }
    for (name, image) in want {
        let Some(s) = statuses.iter().find(|s| &s.name == name) else {
            return Progress::Pending(format!("container {name} has no status yet"));
        };
        let state = s.state.as_ref();
        if let Some(w) = state.and_then(|st| st.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            if HOPELESS_WAITING.contains(&reason) {
                let image_problem = reason.contains("Image");
                return Progress::Failed {
                    image: image_problem.then(|| image.clone()),
                    message: format!(
                        "container {name}: {reason}: {}",
                        w.message.as_deref().unwrap_or("the kubelet cannot start it")
                    ),
                };
            }
            return Progress::Pending(format!("container {name} is waiting ({reason})"));
        }
        if let Some(t) = state.and_then(|st| st.terminated.as_ref()) {
            // A terminated container of the old image is the switch in progress.
            if s.container_id.as_ref().is_some_and(|id| not_ids.contains(id)) {
                return Progress::Pending(format!("container {name} is restarting"));
            }
            return Progress::Failed {
                image: None,
                message: format!(
                    "container {name} exited with code {} ({})",
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("Error")
                ),
            };
        }
        if state.and_then(|st| st.running.as_ref()).is_none() {
            return Progress::Pending(format!("container {name} is not running yet"));
        }
        if !image_matches(image, s) {
            return Progress::Pending(format!("container {name} still runs {}", s.image));
        }
        if s.container_id.as_ref().is_some_and(|id| not_ids.contains(id)) {
            return Progress::Pending(format!("container {name} has not restarted yet"));
        }
    }
    Progress::Done
}

fn container_state(pod: &Pod, name: &str) -> ContainerState {
    let status = pod.status.as_ref();
    let s = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default().iter().find(|s| s.name == name);
    let terminated = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| ContainerState::Exited {
        exit_code: Some(t.exit_code),
        oom_killed: t.reason.as_deref() == Some("OOMKilled"),
    };
    let pod_ended = matches!(status.and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded"));
    let st = s.and_then(|s| s.state.as_ref());
    if let Some(t) = st.and_then(|st| st.terminated.as_ref()) {
        return terminated(t);
    }
    if pod_ended {
        // Evicted or otherwise ended: the container is not coming back.
        return ContainerState::Exited { exit_code: None, oom_killed: false };
    }
    if pod.metadata.deletion_timestamp.is_some() {
        // Deleted from outside (or evicted through the eviction API): going away.
        return ContainerState::Missing;
    }
    if st.and_then(|st| st.running.as_ref()).is_some() {
        // Kubernetes does not expose the process id.
        return ContainerState::Running { pid: 0 };
    }
    if let Some(t) = s.and_then(|s| s.last_state.as_ref()).and_then(|l| l.terminated.as_ref()) {
        return terminated(t);
    }
    ContainerState::Missing
}

/// What the core sees of a slot Pod. Container images are the Pod spec's (what was asked for);
/// a container is `Running` when the kubelet reports it running, `Exited` when it terminated or the
/// Pod ended (phase Failed/Succeeded, e.g. evicted), `Missing` while it does not exist yet or when
/// the Pod is being deleted. `pid` is 0: Kubernetes does not expose it. `failure` is
/// [`failure_reason`] (`Evicted`, `Deleted`, ...).
pub fn observe(pod: &Pod) -> SlotObservation {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| ContainerObservation {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            container_id: statuses
                .iter()
                .find(|s| s.name == c.name)
                .and_then(|s| s.container_id.clone())
                .unwrap_or_default(),
            state: container_state(pod, &c.name),
        })
        .collect();
    SlotObservation {
        slot_id: pod.metadata.name.clone().unwrap_or_default(),
        pool: pod.metadata.labels.as_ref().and_then(|l| l.get(labels::POOL).cloned()).unwrap_or_default(),
        ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        containers,
        failure: failure_reason(pod),
    }
}

/// Why a Pod ended or is going away, for the sandbox's failure fields (`Evicted`, `OOMKilled`,
/// `PodFailed`, `Deleted`), or `None` while it is healthy.
pub fn failure_reason(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Failed" | "Succeeded") => {
            let reason = status.and_then(|s| s.reason.clone()).unwrap_or_else(|| "PodFailed".into());
            let message = status.and_then(|s| s.message.clone()).unwrap_or_else(|| "the pod ended".into());
            Some((reason, message))
        }
        _ if pod.metadata.deletion_timestamp.is_some() => {
            Some(("Deleted".into(), "the pod was deleted or evicted".into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SlotSpec {
        SlotSpec {
            slot_id: "py-0000abcd".into(),
            pool: "py".into(),
            namespace: "default".into(),
            runtime: Default::default(),
            containers: vec![
                ContainerSpec {
                    name: "main".into(),
                    image: "pause".into(),
                    command: vec!["sleep".into(), "infinity".into()],
                    env: BTreeMap::from([("A".into(), "1".into())]),
                    resources: agentbox_core::model::ResourceRequirements {
                        requests: Default::default(),
                        limits: agentbox_core::model::Quantities {
                            cpu: Some("1".into()),
                            memory: Some("1Gi".into()),
                            pids: Some(100),
                        },
                    },
                    ports: vec![8000],
                    ..Default::default()
                },
                ContainerSpec { name: "side".into(), image: "busybox".into(), ..Default::default() },
            ],
            resources: Default::default(),
            egress: true,
            registry_credentials: vec![],
        }
    }

    fn pod_json(pod: &Pod) -> serde_json::Value {
        serde_json::to_value(pod).unwrap()
    }

    #[test]
    fn the_slot_pod_carries_labels_finalizer_owner_and_the_agent() {
        let opts = PodOptions {
            owner: Some(PoolOwner { name: "py".into(), uid: "u-1".into() }),
            agent: Some(AgentInjection { image: "agentbox:dev".into(), binary: "/usr/local/bin/agentbox-envd".into() }),
            pull_secret: Some("py-registry".into()),
            termination_grace_period_seconds: Some(5),
        };
        let v = pod_json(&build_pod(&spec(), &opts));
        assert_eq!(v["metadata"]["name"], "py-0000abcd");
        assert_eq!(v["metadata"]["labels"][labels::POOL], "py");
        assert_eq!(v["metadata"]["labels"][labels::PHASE], "idle");
        assert_eq!(v["metadata"]["finalizers"], json!([labels::PROTECTION_FINALIZER]));
        let owner = &v["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "SandboxPool");
        assert_eq!(owner["apiVersion"], "agentbox.dev/v1alpha1");
        assert_eq!(owner["uid"], "u-1");
        assert_eq!(owner["controller"], true);
        assert_eq!(v["spec"]["restartPolicy"], "Never");
        assert_eq!(v["spec"]["automountServiceAccountToken"], false);
        assert_eq!(v["spec"]["imagePullSecrets"], json!([{"name": "py-registry"}]));
        let init = &v["spec"]["initContainers"][0];
        assert_eq!(init["image"], "agentbox:dev");
        assert_eq!(init["command"], json!(["cp", "/usr/local/bin/agentbox-envd", AGENT_PATH]));
        assert_eq!(init["volumeMounts"][0]["mountPath"], AGENT_DIR);
        assert_eq!(v["spec"]["volumes"][0]["emptyDir"], json!({}));
        let main = &v["spec"]["containers"][0];
        assert_eq!(main["command"], json!(["sleep", "infinity"]));
        assert_eq!(main["env"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(main["resources"]["limits"], json!({"cpu": "1", "memory": "1Gi"}));
        assert_eq!(main["ports"][0]["containerPort"], 8000);
        assert_eq!(main["volumeMounts"][0], json!({"name": AGENT_VOLUME, "mountPath": AGENT_DIR, "readOnly": true}));
        assert_eq!(main["lifecycle"]["postStart"]["exec"]["command"][0], AGENT_PATH);
        assert!(v["spec"]["containers"][1].get("lifecycle").is_none(), "only container 0 starts the agent");
    }

    #[test]
    fn an_empty_slot_id_uses_generate_name_and_no_agent_means_no_init_container() {
        let mut s = spec();
        s.slot_id.clear();
        let v = pod_json(&build_pod(&s, &PodOptions::default()));
        assert_eq!(v["metadata"]["generateName"], "py-");
        assert!(v["metadata"].get("name").is_none());
        assert!(v["spec"].get("initContainers").is_none());
        assert!(v["spec"]["containers"][0].get("volumeMounts").is_none());
        assert!(v["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn image_patch_replaces_changed_images_behind_a_name_test() {
        let pod = build_pod(&spec(), &PodOptions::default());
        let mut want: Vec<ContainerSpec> = spec().containers;
        assert_eq!(image_patch(&pod, &want).unwrap(), None, "same images: nothing to patch");
        want[0].image = "python:3.12".into();
        assert_eq!(
            image_patch(&pod, &want).unwrap().unwrap(),
            json!([
                {"op": "test", "path": "/spec/containers/0/name", "value": "main"},
                {"op": "replace", "path": "/spec/containers/0/image", "value": "python:3.12"},
            ])
        );
        want.swap(0, 1);
        let err = image_patch(&pod, &want).unwrap_err();
        assert!(err.contains("[main, side]") && err.contains("[side, main]"), "{err}");
    }

    #[test]
    fn images_normalize_like_the_kubelet_reports_them() {
        assert_eq!(normalize_image("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_image("python:3.12"), "docker.io/library/python:3.12");
        assert_eq!(normalize_image("org/app"), "docker.io/org/app:latest");
        assert_eq!(normalize_image("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize_image("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
        assert_eq!(normalize_image("ghcr.io/a/b@sha256:ab"), "ghcr.io/a/b@sha256:ab");
    }

    fn with_status(status: serde_json::Value) -> Pod {
        let mut v = pod_json(&build_pod(&spec(), &PodOptions::default()));
        v["status"] = status;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn observation_maps_running_terminated_and_evicted() {
        let running = with_status(json!({
            "phase": "Running", "podIP": "10.1.2.3",
            "containerStatuses": [
                {"name": "main", "image": "docker.io/library/pause:latest", "imageID": "x", "ready": true,
                 "restartCount": 0, "containerID": "containerd://a", "state": {"running": {}}},
                {"name": "side", "image": "busybox", "imageID": "y", "ready": false, "restartCount": 0,
                 "containerID": "containerd://b", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
            ]
        }));
        let obs = observe(&running);
        assert_eq!(obs.slot_id, "py-0000abcd");
        assert_eq!(obs.pool, "py");
        assert_eq!(obs.ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(obs.containers[0].state, ContainerState::Running { pid: 0 });
        assert_eq!(obs.containers[0].container_id, "containerd://a");
        assert_eq!(obs.containers[1].state, ContainerState::Exited { exit_code: Some(137), oom_killed: true });
        assert_eq!(failure_reason(&running), None);

        let evicted = with_status(json!({
            "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
            "containerStatuses": [
                {"name": "main", "image": "pause", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"running": {}}}
            ]
        }));
        let obs = observe(&evicted);
        assert!(!obs.containers[0].state.is_running(), "an evicted pod's container is not running");
        assert_eq!(obs.containers[0].state, ContainerState::Exited { exit_code: None, oom_killed: false });
        assert_eq!(failure_reason(&evicted).unwrap().0, "Evicted");
        assert_eq!(
            obs.failure,
            Some(("Evicted".to_string(), "The node was low on resource: memory.".to_string())),
            "the observation carries the pod's failure reason"
        );
        assert_eq!(observe(&running).failure, None);

        let mut deleted = running.clone();
        deleted.metadata.deletion_timestamp =
            running.metadata.creation_timestamp.clone().or(Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            )));
        assert_eq!(observe(&deleted).containers[0].state, ContainerState::Missing);
        assert_eq!(failure_reason(&deleted).unwrap().0, "Deleted");
        assert_eq!(observe(&deleted).failure.unwrap().0, "Deleted");
    }

    #[test]
    fn progress_waits_for_the_new_image_and_fails_fast_on_pull_errors() {
        let want = BTreeMap::from([("main".to_string(), "python:3.12".to_string())]);
        let old = vec!["containerd://a".to_string()];
        let st = |main: serde_json::Value| {
            let mut c = json!({"name": "main", "imageID": "", "ready": true, "restartCount": 0});
            c.as_object_mut().unwrap().extend(main.as_object().unwrap().clone());
            with_status(json!({"phase": "Running", "containerStatuses": [c]}))
        };
        let p = st(json!({"image": "pause", "containerID": "containerd://a", "state": {"running": {}}}));
        assert!(matches!(progress(&p, &want, &old), Progress::Pending(m) if m.contains("still runs")));
        let p =
            st(json!({"image": "pause", "containerID": "containerd://a", "state": {"terminated": {"exitCode": 137}}}));
        assert!(matches!(progress(&p, &want, &old), Progress::Pending(m) if m.contains("restarting")));
        let p = st(json!({"image": "python:3.12", "state": {"waiting": {"reason": "ContainerCreating"}}}));
        assert!(matches!(progress(&p, &want, &old), Progress::Pending(_)));
        let p = st(
            json!({"image": "python:3.12", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}),
        );
        match progress(&p, &want, &old) {
            Progress::Failed { image, message } => {
                assert_eq!(image.as_deref(), Some("python:3.12"));
                assert!(message.contains("ImagePullBackOff") && message.contains("not found"), "{message}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        let p = st(
            json!({"image": "docker.io/library/python:3.12", "containerID": "containerd://b", "state": {"running": {}}}),
        );
        assert_eq!(progress(&p, &want, &old), Progress::Done);
        let p = st(
            json!({"image": "docker.io/library/python:3.12", "containerID": "containerd://b", "state": {"terminated": {"exitCode": 1}}}),
        );
        assert!(matches!(progress(&p, &want, &old), Progress::Failed { image: None, .. }));
    }
}
