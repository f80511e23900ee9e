//! The static agent (`scripts/build-agent.sh`) runs in an image without glibc: a busybox-only
//! image gets a working agent (health, a process through Connect RPC, `/files`) through the data
//! plane. The test builds the static agent (debug profile) if `cargo` can; otherwise it uses the
//! one `scripts/build-agent.sh --debug` left in the target dir.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Opts, Server};
use serde_json::json;

use common::agent::{PORT, http};

/// `target/x86_64-unknown-linux-gnu/debug/agentbox-envd`, (re)built static by cargo.
fn static_agent() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_agentbox"));
    let profile_dir = exe.parent().unwrap();
    let target = profile_dir.parent().unwrap();
    let path = target.join("x86_64-unknown-linux-gnu").join("debug").join("agentbox-envd");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-p", "agentbox-envd", "--target", "x86_64-unknown-linux-gnu"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running cargo build (static agent)");
    assert!(st.success() && path.is_file(), "building the static agent failed (see scripts/build-agent.sh)");
    path
}

/// Start through the data plane, in `/` (the busybox image has no home for root).
fn run(srv: &Server, id: &str, cmd: &str) -> (String, i64) {
    common::agent::run(srv, id, cmd, Some("/"))
}

#[test]
fn static_agent_runs_in_an_image_without_glibc() {
    if common::skip_unless_root("static_agent_runs_in_an_image_without_glibc") {
        return;
    }
    let agent = static_agent();
    let ldd = Command::new("ldd").arg(&agent).output().expect("ldd");
    let ldd_out = String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(!ldd_out.contains("=>"), "the agent is not static: {ldd_out}");

    let srv = Server::start(Opts::new(38).arg("--agent-binary").arg(agent.to_str().unwrap()));
    assert!(srv.log_text().contains("static: runs in any image"), "serve did not see a static agent");
    let file = srv.data_dir().join("busybox-oci.tar");
    std::fs::write(&file, common::image::busybox_image("static-agent")).unwrap();
    let out = srv.cli(&["image", "import", file.to_str().unwrap(), "--name", "e2e/busybox:static", "-o", "json"]);
    assert!(out.status.success(), "image import failed: {}", String::from_utf8_lossy(&out.stderr));
    srv.create_pool(&json!({
        "name": "bb",
        "template": {"idleImage": "pause", "containers": [
            {"name": "main", "image": "e2e/busybox:static", "command": ["/bin/sleep", "1000000"]}
        ]},
        "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage"
    }));
    srv.wait_pool_idle("bb", 1);
    let id = srv.claim(&common::claim_body("bb"))["sandboxId"].as_str().unwrap().to_string();
    // No glibc in the image: the dynamic loader is absent, only busybox is there.
    let (code, _, _) = srv.sh(&id, "test -e /lib64/ld-linux-x86-64.so.2 || test -e /lib/x86_64-linux-gnu/libc.so.6");
    assert_ne!(code, 0, "the busybox image must not contain glibc");

    let url = format!("{}/sandboxes/{id}/{PORT}/health", srv.proxy_url().unwrap());
    srv.wait_for("the static agent to answer /health", Duration::from_secs(20), || {
        http().get(&url).send().ok().filter(|r| r.status() == 204).map(|_| ())
    });
    assert_eq!(run(&srv, &id, "echo static-$((1+1)); cat /etc/e2e-marker"), ("static-2\nstatic-agent".into(), 0));
    let files = format!("{}/sandboxes/{id}/{PORT}/files?path=/tmp/up.txt", srv.proxy_url().unwrap());
    let r = http().post(&files).header("content-type", "application/octet-stream").body("via agent\n").send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    assert_eq!(srv.sh_ok(&id, "cat /tmp/up.txt"), "via agent\n");
    srv.release_and_wait(&id);
    srv.delete_pool_and_wait("bb");
}
