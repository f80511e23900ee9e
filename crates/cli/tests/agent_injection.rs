//! The in-sandbox agent end to end: `agentbox serve` finds `agentbox-envd` next to itself, the
//! local backend binds it into every container and starts it in container 0 after every create
//! and switch; the data plane reaches it on port 49983 (health, Connect RPC process start,
//! `/files`), it dies with its container, and the unmodified e2b SDK runs commands and files.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Opts, Server};
use serde_json::json;

use common::agent::{PORT, ensure_agent_binary, http};

fn run(srv: &Server, id: &str, cmd: &str) -> (String, i64) {
    common::agent::run(srv, id, cmd, None)
}

/// Host pids of agents whose parent is a container init started by the server `server_pid`.
fn agents_of(server_pid: u32) -> Vec<i32> {
    let ppid = |pid: i32| -> Option<i32> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s[s.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmd.starts_with(b"/.agentbox/envd\0") {
            continue;
        }
        if ppid(pid).and_then(ppid) == Some(server_pid as i32) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Poll the agent's `/health` through the data plane until it answers 204; returns how long.
fn wait_health(srv: &Server, id: &str) -> Duration {
    let url = format!("{}/sandboxes/{id}/{PORT}/health", srv.proxy_url().unwrap());
    let (c, t) = (http(), Instant::now());
    srv.wait_for(&format!("the agent of {id} to answer /health"), Duration::from_secs(20), || {
        c.get(&url).send().ok().filter(|r| r.status() == 204).map(|_| ())
    });
    t.elapsed()
}

#[test]
fn agent_runs_in_every_sandbox_and_dies_with_it() {
    if common::skip_unless_root("agent_runs_in_every_sandbox_and_dies_with_it") {
        return;
    }
    ensure_agent_binary();
    let srv = Server::start(Opts::new(30).default_pool(1));
    assert!(!srv.log_text().contains("without the agent"), "the server did not find the agent");
    srv.wait_pool_idle("default", 1);
    let server_pid = srv.pid();

    // The default pool (pool default image): the agent runs from the slot's creation on.
    // The agent starts in the background after the create (the slot is idle a moment earlier).
    let before = srv.wait_for("one agent in the one idle slot", Duration::from_secs(20), || {
        let a = agents_of(server_pid);
        (a.len() == 1).then_some(a)
    });
    let t = Instant::now();
    let id = srv.claim(&common::claim_body("default"))["sandboxId"].as_str().unwrap().to_string();
    eprintln!("claim {:?}, then /health answered after {:?}", t.elapsed(), wait_health(&srv, &id));
    // Root, the container's env plus HOME, its namespaces: the agent sees the container's pid 1.
    let (out, code) = run(&srv, &id, "echo hi; id -u; echo $HOME; cat /proc/1/cmdline | tr '\\0' ' '");
    assert_eq!((out.as_str(), code), ("hi\n0\n/root\nsleep infinity ", 0));
    let (out, code) = run(&srv, &id, "exit 3");
    assert_eq!((out.as_str(), code), ("", 3));
    // The agent lives in the container's cgroup (the slot's limits apply to it).
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", before[0])).unwrap();
    assert!(cg.contains("agentbox"), "agent cgroup: {cg}");

    // /files through the data plane, checked with the native exec.
    let files = format!("{}/sandboxes/{id}/{PORT}/files?path=/tmp/up.txt", srv.proxy_url().unwrap());
    let r = http().post(&files).header("content-type", "application/octet-stream").body("uploaded\n").send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    assert_eq!(srv.sh_ok(&id, "cat /tmp/up.txt"), "uploaded\n");
    assert_eq!(http().get(&files).send().unwrap().text().unwrap(), "uploaded\n");

    // Release: the agent dies with the container; the recycled slot has a fresh one.
    srv.release_and_wait(&id);
    srv.wait_pool_idle("default", 1);
    let after = srv.wait_for("one fresh agent in the recycled slot", Duration::from_secs(20), || {
        let a = agents_of(server_pid);
        (a.len() == 1).then_some(a)
    });
    assert!(!Path::new(&format!("/proc/{}", before[0])).exists(), "the old agent {} survived", before[0]);
    assert_ne!(after, before);

    // A pool idling on `pause` (no agent there) switches to `host` at claim: the agent is started
    // after the switch, and is gone after the release (the slot idles on pause again).
    srv.create_pool(&json!({
        "name": "sw",
        "template": common::host_template(),
        "replicas": 1,
        "podCreationImagePolicy": "IdleImage"
    }));
    srv.wait_pool_idle("sw", 1);
    assert_eq!(agents_of(server_pid), after, "no agent in a slot idling on pause");
    let t = Instant::now();
    let sw = srv.claim(&common::claim_body("sw"))["sandboxId"].as_str().unwrap().to_string();
    eprintln!("claim with switch {:?}, then /health answered after {:?}", t.elapsed(), wait_health(&srv, &sw));
    assert_eq!(run(&srv, &sw, "echo switched").0, "switched\n");
    srv.wait_for("the switched slot's agent", Duration::from_secs(20), || {
        (agents_of(server_pid).len() == 2).then_some(())
    });
    srv.release_and_wait(&sw);
    srv.wait_pool_idle("sw", 1);
    srv.wait_for("the switched slot's agent to be gone", Duration::from_secs(20), || {
        (agents_of(server_pid) == after).then_some(())
    });
    srv.delete_pool_and_wait("sw");

    // The runc runtime starts the agent through `runc exec` the same way. Its slot reuses the IP of
    // the `sw` slot the data plane just talked to: this once failed intermittently (the host's
    // neighbour entry still held the old slot's MAC; slots now get a MAC derived from their IP).
    if ["/usr/sbin/runc", "/usr/bin/runc"].iter().any(|p| Path::new(p).exists()) {
        let mut template = common::host_template();
        template["runtimeClass"] = json!("runc");
        srv.create_pool(
            &json!({"name": "rc", "template": template, "replicas": 1, "podCreationImagePolicy": "IdleImage"}),
        );
        srv.wait_pool_idle("rc", 1);
        let rc = srv.claim(&common::claim_body("rc"))["sandboxId"].as_str().unwrap().to_string();
        eprintln!("runc: /health answered {:?} after the claim", wait_health(&srv, &rc));
        assert_eq!(run(&srv, &rc, "echo runc").0, "runc\n");
        srv.release_and_wait(&rc);
        srv.delete_pool_and_wait("rc");
    } else {
        eprintln!("SKIP (part): the runc runtime part needs the runc binary");
    }
}

#[test]
fn e2b_sdk_runs_commands_and_files_through_the_agent() {
    if common::skip_unless_root("e2b_sdk_runs_commands_and_files_through_the_agent") {
        return;
    }
    let Some(python) = common::sdk_python("e2b_sdk_runs_commands_and_files_through_the_agent", &["e2b"]) else {
        return;
    };
    ensure_agent_binary();
    let srv = Server::start(Opts::new(31).default_pool(1));
    srv.wait_pool_idle("default", 1);
    let e2b = srv.e2b_url().expect("the server printed its E2B API address");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b_sdk/agent.py");
    let out = Command::new(python)
        .arg(script)
        .arg("default")
        .env("E2B_API_URL", &e2b)
        .env("E2B_API_KEY", format!("e2b_{}", "0".repeat(64)))
        .env("E2B_SANDBOX_URL", srv.proxy_url().expect("the server printed its data plane address"))
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
