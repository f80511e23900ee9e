//! `runtimeClass: runc`: the same claim/exec/release cycle with the runc binary.

mod common;

use common::{Opts, Server};
use serde_json::json;

#[test]
fn runc_runtime_claim_exec_release() {
    if common::skip_unless_root("runc_runtime_claim_exec_release") {
        return;
    }
    if !std::path::Path::new("/usr/sbin/runc").exists() && !std::path::Path::new("/usr/bin/runc").exists() {
        eprintln!("SKIP: runc_runtime_claim_exec_release: needs the runc binary (apt-get install runc)");
        return;
    }
    let srv = Server::start(Opts::new(7));
    let mut template = common::host_template();
    template["runtimeClass"] = json!("runc");
    let pool = srv.create_pool(
        &json!({"name": "runc", "template": template, "replicas": 1, "podCreationImagePolicy": "IdleImage"}),
    );
    assert_eq!(pool["spec"]["template"]["runtimeClass"], "runc", "{pool}");
    srv.wait_pool_idle("runc", 1);

    let sb = srv.claim(&json!({"poolName": "runc"}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(sb["status"], "Running", "{sb}");
    let r = srv.exec(&id, &json!({"command": "echo ok"}));
    assert_eq!(r["stdout"], "ok\n", "{r}");
    assert_eq!(r["exitCode"], 0, "{r}");
    let r = srv.exec(&id, &json!({"command": "exit 5"}));
    assert_eq!(r["exitCode"], 5, "{r}");
    let r = srv.post(&format!("/v1/sandboxes/{id}/exec"), &json!({"command": ["/no/such/binary"]}));
    assert!(r.status < 500, "exec of a missing binary under runc: {} {}", r.status, r.text);
    if r.status == 200 {
        assert_ne!(r.body["exitCode"], 0, "{}", r.text);
    }
    // The container really is a runc container: runc's state dir (data dir `local/runc`) lists it.
    let root = srv.data_dir().join("local/runc");
    let out =
        std::process::Command::new("runc").arg("--root").arg(&root).args(["list", "-q"]).output().expect("runc list");
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && !listed.trim().is_empty(),
        "runc --root {} list shows no container: {listed:?} {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let done = srv.release_and_wait(&id);
    assert_eq!(done["status"], "Completed", "{done}");
    srv.wait_pool_idle("runc", 1);

    // A second claim of the recycled slot works too.
    let sb = srv.claim(&json!({"poolName": "runc"}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(srv.sh_ok(&id, "echo again"), "again\n");
    srv.release_and_wait(&id);
}
