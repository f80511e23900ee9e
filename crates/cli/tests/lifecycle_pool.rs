//! Pool lifecycle with real containers: an OOM-killed sandbox ends `Failed`/`OOMKilled` in history,
//! `resourceMultiplier` scales the cgroup limits actually applied, template sync (preview first)
//! re-applies the stored overrides and rolls idle slots, and a pool pulls a private image with its
//! `imagePullSecret` from a local registry that requires credentials.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Opts, Server};
use serde_json::{Value, json};

/// The memory limit the backend wrote for a slot (cgroup v1, `/agentbox/<slot>`).
fn slot_memory_limit(slot: &str) -> Option<u64> {
    let p = Path::new("/sys/fs/cgroup/memory/agentbox").join(slot).join("memory.limit_in_bytes");
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn slot_cpu_quota(slot: &str) -> Option<i64> {
    for root in ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"] {
        let p = Path::new(root).join("agentbox").join(slot).join("cpu.cfs_quota_us");
        if let Ok(s) = std::fs::read_to_string(p) {
            return s.trim().parse().ok();
        }
    }
    None
}

#[test]
fn oom_killed_sandbox_fails_into_history() {
    if common::skip_unless_root("oom_killed_sandbox_fails_into_history") {
        return;
    }
    let srv = Server::start(Opts::new(22));
    // The workload starts on claim (idle image: pause), then allocates far beyond its limit.
    srv.create_pool(&json!({
        "name": "hog",
        "template": {
            "idleImage": "pause",
            "containers": [{
                "name": "main", "image": "host",
                "command": ["python3", "-c",
                    "import time; time.sleep(1); b = bytearray(512 * 1024 * 1024); time.sleep(600)"],
                "resources": {"limits": {"memory": "64Mi"}}
            }]
        },
        "replicas": 1,
        "podCreationImagePolicy": "IdleImage"
    }));
    srv.wait_pool_idle("hog", 1);
    let sb = srv.claim(&json!({"poolName": "hog"}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    let ended = srv.wait_for("the memory hog to be OOM-killed", Duration::from_secs(60), || {
        let s = srv.sandbox(&id);
        (s["status"] == "Failed").then_some(s)
    });
    assert_eq!(ended["failureReason"], "OOMKilled", "{ended}");
    assert_eq!(ended["exitCode"], 137, "{ended}");
    assert!(ended["terminatedAt"].is_string(), "{ended}");
    // In the history listing too, and the slot comes back idle.
    let list = srv.get("/v1/sandboxes?status=Failed&poolName=hog").expect(200);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["sandboxId"], id.as_str());
    srv.wait_pool_idle("hog", 1);
}

#[test]
fn resource_multiplier_scales_cgroup_limits_and_sync_reapplies_it() {
    if common::skip_unless_root("resource_multiplier_scales_cgroup_limits_and_sync_reapplies_it") {
        return;
    }
    let srv = Server::start(Opts::new(23));
    let spec = |version: &str, marker: &str| {
        json!({
            "version": version, "description": "multiplied",
            "idleImage": "pause",
            "containers": [{
                "name": "main", "image": "host", "command": ["sleep", "infinity"],
                "env": {"MARKER": marker},
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}
            }]
        })
    };
    srv.post("/v1/admin/sandbox-templates", &json!({"name": "mult", "spec": spec("1.0.0", "one")})).expect(201);
    srv.create_pool(&json!({
        "name": "big", "templateName": "mult", "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage",
        "overrides": {"resourceMultiplier": 2}
    }));
    srv.wait_pool_idle("big", 1);
    let pool = srv.pool("big");
    assert_eq!(pool["spec"]["template"]["containers"][0]["resources"]["limits"]["memory"], "128Mi", "{pool}");
    let sb = srv.claim(&json!({"poolName": "big"}));
    let slot = sb["podName"].as_str().unwrap().to_string();
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(slot_memory_limit(&slot), Some(128 * 1024 * 1024), "memory limit of slot {slot}");
    assert_eq!(slot_cpu_quota(&slot), Some(100_000), "1 CPU = 100ms per 100ms period (2 × 500m)");
    assert_eq!(srv.sh_ok(&id, "echo $MARKER").trim(), "one");
    srv.release_and_wait(&id);

    // A new template version: the preview shows it before anything changes.
    let cur = srv.get("/v1/sandbox-templates/mult").expect(200);
    let rv = cur["template"]["resourceVersion"].clone();
    srv.put("/v1/admin/sandbox-templates/mult", &json!({"spec": spec("1.1.0", "two"), "resourceVersion": rv}))
        .expect(200);
    let preview = srv.post("/v1/sandboxpools/big/sync-template/preview", &json!({})).expect(200);
    assert_eq!(preview["version"], "1.1.0", "{preview}");
    assert_eq!(preview["currentVersion"], "1.0.0", "{preview}");
    assert_eq!(preview["changed"], true);
    let yaml = preview["specYaml"].as_str().unwrap();
    assert!(yaml.contains("MARKER: two") && yaml.contains("128Mi"), "overrides re-applied in the preview:\n{yaml}");
    assert_eq!(srv.pool("big")["templateVersion"], "1.0.0", "the preview wrote nothing");

    let synced = srv.post("/v1/sandboxpools/big/sync-template", &json!({})).expect(200);
    assert_eq!(synced["pool"]["templateVersion"], "1.1.0", "{synced}");
    // The idle slot made from 1.0.0 is replaced; a new claim runs 1.1.0 with the limits still doubled.
    let sb = srv.wait_for("a claim on the synced definition", Duration::from_secs(60), || {
        let sb = srv.claim(&json!({"poolName": "big"}));
        let id = sb["sandboxId"].as_str().unwrap().to_string();
        if srv.sh_ok(&id, "echo $MARKER").trim() == "two" {
            return Some(sb);
        }
        srv.release_and_wait(&id);
        None
    });
    let slot = sb["podName"].as_str().unwrap();
    assert_eq!(slot_memory_limit(slot), Some(128 * 1024 * 1024));
    // An inline pool has nothing to sync.
    srv.create_pool(&json!({"name": "inline", "template": common::host_template(), "replicas": 0}));
    let r = srv.post("/v1/sandboxpools/inline/sync-template/preview", &json!({}));
    assert_eq!(r.status, 400, "{}", r.text);
}

/// `docker-registry` with basic auth on a free loopback port; killed (by PID) on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HTPASSWD: &str = "scout:$2b$05$dIvYt4w/8pupBszy/B2uy.Vp7.bXKg0v95teczPZZ0LTM33rfZyJy";
const PASSWORD: &str = "agentbox-test-pw";

fn registry() -> Option<Registry> {
    let bin = "/usr/bin/docker-registry";
    if !Path::new(bin).exists() || Command::new("skopeo").arg("--version").output().is_err() {
        println!("SKIP: docker-registry or skopeo missing (scripts/install-deps.sh installs them)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("{HTPASSWD}\n")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: {addr}}}\n\
             auth:\n  htpasswd: {{realm: agentbox-test, path: {}}}\n",
            dir.path().join("data").display(),
            dir.path().join("htpasswd").display()
        ),
    )
    .unwrap();
    let child =
        Command::new(bin).arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let reg = Registry { child, addr, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&reg.addr).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen on {}", reg.addr);
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(reg)
}

#[test]
fn pool_pulls_a_private_image_with_its_pull_secret() {
    if common::skip_unless_root("pool_pulls_a_private_image_with_its_pull_secret") {
        return;
    }
    let Some(reg) = registry() else { return };
    // Push a busybox image the test builds itself, with credentials.
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    tar::Archive::new(common::image::busybox_image("private-marker").as_slice()).unpack(&layout).unwrap();
    let reference = format!("{}/private/app:1", reg.addr);
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", &format!("scout:{PASSWORD}")])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));

    let srv = Server::start(Opts::new(24));
    let template = |image: &str| json!({"idleImage": "pause", "containers": [{"name": "main", "image": image, "command": ["/bin/sleep", "1000000"]}]});
    // Without credentials the slot cannot be made: the pool shows why.
    srv.create_pool(&json!({"name": "nocreds", "template": template(&reference), "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage"}));
    let diag = srv.wait_for("a failed slot with a diagnostic", Duration::from_secs(60), || {
        let p = srv.pool("nocreds");
        let d = p["status"]["diagnostics"].as_array().and_then(|d| d.first().cloned());
        d.filter(|_| p["status"]["failed"].as_u64() >= Some(1))
    });
    let text = diag.to_string().to_lowercase();
    assert!(text.contains("unauthorized") || text.contains("not authorized"), "{diag}");

    // With the pull secret: idle slots, and the sandbox runs the private image.
    let created = srv.create_pool(&json!({"name": "private", "template": template(&reference), "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage",
        "overrides": {"imagePullSecret": {"registries": [
            {"registry": reg.addr, "username": "scout", "password": PASSWORD}]}}}));
    assert!(!created.to_string().contains(PASSWORD), "the API returned the registry password: {created}");
    srv.wait_pool_idle("private", 1);
    let pool: Value = srv.pool("private");
    assert!(!pool.to_string().contains(PASSWORD), "the API returned the registry password: {pool}");
    let sb = srv.claim(&json!({"poolName": "private"}));
    let id = sb["sandboxId"].as_str().unwrap();
    assert_eq!(srv.sh_ok(id, "cat /etc/e2e-marker"), "private-marker");
    assert!(!srv.log_text().contains(PASSWORD), "the registry password appears in the server log");
}

#[test]
fn exec_activity_postpones_the_idle_timeout() {
    if common::skip_unless_root("exec_activity_postpones_the_idle_timeout") {
        return;
    }
    let srv = Server::start(Opts::new(25).default_pool(1));
    srv.wait_pool_idle("default", 1);
    let sb = srv.claim(&json!({"poolName": "default", "idleTimeout": "2s"}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    // Busy for 5 s (well past the 2 s timeout): an exec every 0.5 s keeps it alive.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        assert_eq!(srv.sh_ok(&id, "echo alive").trim(), "alive");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(srv.sandbox(&id)["status"], "Running", "exec activity postpones the idle timeout");
    // Then quiet: released within a few seconds, with the reason and when it was last active.
    let quiet = Instant::now();
    let ended = srv.wait_for("the idle release", Duration::from_secs(15), || {
        let s = srv.sandbox(&id);
        (s["status"] == "Released").then_some(s)
    });
    let after = quiet.elapsed();
    assert!(after >= Duration::from_millis(1500), "released only {after:?} after the last exec");
    assert_eq!(ended["statusDetail"]["reason"], "IdleTimeout", "{ended}");
    assert!(ended["statusDetail"]["message"].as_str().unwrap().contains("last active at"), "{ended}");
}
