//! The e2b SDK test suite (`tests/e2b_sdk/test_sdk_suite.py`, pytest) against a live `agentbox serve`
//! with real containers and the agent: once with the unpatched SDK (E2B_API_URL, E2B_SANDBOX_URL, an
//! `e2b_` key) and once through `agent-sandbox-e2b`'s `patch_e2b()` (path routing).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Opts, Server};

fn run_suite(python: &str, srv: &Server, mode: &str) {
    let e2b = srv.e2b_url().expect("the server printed its E2B API address");
    let proxy = srv.proxy_url().expect("the server printed its data plane address");
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b_sdk/test_sdk_suite.py");
    let out = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", suite])
        .env("AGENTBOX_E2B_MODE", mode)
        .env("AGENTBOX_POOL", "default")
        .env("E2B_API_URL", &e2b)
        .env("E2B_API_KEY", format!("e2b_{}", "0".repeat(64)))
        .env("E2B_SANDBOX_URL", &proxy)
        .env("E2B_DOMAIN", proxy.trim_start_matches("http://"))
        .output()
        .expect("running pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{mode}: {}", stdout.lines().last().unwrap_or_default());
    assert!(
        out.status.success(),
        "the e2b SDK suite failed ({mode}, {}):\n{stdout}\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        srv.log_tail(80)
    );
}

#[test]
fn e2b_sdk_suite_unpatched_and_patched() {
    if common::skip_unless_root("e2b_sdk_suite_unpatched_and_patched") {
        return;
    }
    let Some(python) =
        common::sdk_python("e2b_sdk_suite_unpatched_and_patched", &["e2b", "agent_sandbox_e2b", "pytest"])
    else {
        return;
    };
    // The server runs the agent found next to its own binary.
    let agent = Path::new(env!("CARGO_BIN_EXE_agentbox")).with_file_name("agentbox-envd");
    if !agent.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "agentbox-envd"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build -p agentbox-envd");
        assert!(st.success() && agent.is_file(), "cargo build -p agentbox-envd failed");
    }
    let srv = Server::start(Opts::new(32).default_pool(3));
    srv.wait_pool_idle("default", 3);
    run_suite(python, &srv, "unpatched");
    srv.wait_pool_idle("default", 3);
    run_suite(python, &srv, "patched");
}
