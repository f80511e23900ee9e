//! The unmodified E2B Python SDK (e2b==2.53.1) drives the E2B control API of a live server:
//! create, list (with a metadata filter), get_info, set_timeout, metrics (501), kill.

mod common;

use std::process::Command;

use common::{Opts, Server};

#[test]
fn e2b_sdk_control_plane() {
    if common::skip_unless_root("e2b_sdk_control_plane") {
        return;
    }
    let Some(python) = common::sdk_python("e2b_sdk_control_plane", &["e2b"]) else { return };
    let srv = Server::start(Opts::new(28).default_pool(1));
    srv.wait_pool_idle("default", 1);
    let e2b = srv.e2b_url().expect("the server printed its E2B API address");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b_sdk/control_plane.py");
    let out = Command::new(python)
        .arg(script)
        .arg("default")
        .env("E2B_API_URL", &e2b)
        // Dev mode: any well-formed key is the anonymous admin.
        .env("E2B_API_KEY", format!("e2b_{}", "0f".repeat(32)))
        .env("E2B_DOMAIN", e2b.trim_start_matches("http://"))
        .output()
        .expect("running the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "SDK script failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        srv.log_tail(60)
    );
}
