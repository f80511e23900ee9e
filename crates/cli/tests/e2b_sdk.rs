//! The unmodified E2B Python SDK (e2b==2.53.1) drives the E2B control API of a live server:
//! create, list (with a metadata filter), get_info, set_timeout, metrics (501), kill.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Opts, Server};

const PYTHON: &str = "/opt/agentbox-test-venv/bin/python";

#[test]
fn e2b_sdk_control_plane() {
    if common::skip_unless_root("e2b_sdk_control_plane") {
        return;
    }
    let has_sdk = Path::new(PYTHON).exists()
        && Command::new(PYTHON).args(["-c", "import e2b"]).output().is_ok_and(|o| o.status.success());
    if !has_sdk {
        assert!(std::env::var_os("CI").is_none(), "CI must provide the e2b SDK in {PYTHON}");
        eprintln!("SKIP: e2b_sdk_control_plane: {PYTHON} with e2b==2.53.1 is missing (scripts/install-deps.sh)");
        println!("SKIP: e2b_sdk_control_plane: the e2b SDK venv is missing");
        return;
    }
    let srv = Server::start(Opts::new(28).default_pool(1));
    srv.wait_pool_idle("default", 1);
    let e2b = srv.e2b_url().expect("the server printed its E2B API address");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b_sdk/control_plane.py");
    let out = Command::new(PYTHON)
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
