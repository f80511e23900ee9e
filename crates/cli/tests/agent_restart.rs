//! The in-sandbox agent keeps answering across trouble: its agents survive a server restart (the
//! containers keep running and are re-adopted); an agent that died while the server was down is
//! started again at recovery; an agent killed under a running server is started again by the data
//! plane on the first refused request, which is then answered (body included) as if nothing
//! happened.

mod common;

use std::time::{Duration, Instant};

use common::{Opts, Server};

use common::agent::{PORT, ensure_agent_binary, http};

/// One Start through the data plane: (status, stdout).
fn run_once(srv: &Server, id: &str, cmd: &str) -> (u16, String) {
    let s = common::agent::start(srv, id, cmd, None);
    (s.status, s.stdout)
}

/// Host pid of the live agent of `slot` (its container's `/etc/hostname` is the slot id).
fn agent_pid_of(slot: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // A zombie has an empty cmdline: only live agents match.
        if !std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().starts_with(b"/.agentbox/envd\0") {
            continue;
        }
        if std::fs::read_to_string(format!("/proc/{pid}/root/etc/hostname")).is_ok_and(|h| h.trim() == slot) {
            return Some(pid);
        }
    }
    None
}

fn kill_agent(slot: &str) -> i32 {
    let pid = agent_pid_of(slot).unwrap_or_else(|| panic!("no agent runs in slot {slot}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let t = Instant::now();
    while agent_pid_of(slot) == Some(pid) {
        assert!(t.elapsed() < Duration::from_secs(5), "agent {pid} did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    pid
}

/// One `GET /health` through the data plane: its status.
fn health_once(srv: &Server, id: &str) -> u16 {
    let url = format!("{}/sandboxes/{id}/{PORT}/health", srv.proxy_url().unwrap());
    http().get(&url).send().map(|r| r.status().as_u16()).unwrap_or(0)
}

fn wait_health(srv: &Server, id: &str) {
    srv.wait_for(&format!("the agent of {id} to answer /health"), Duration::from_secs(20), || {
        (health_once(srv, id) == 204).then_some(())
    });
}

#[test]
fn agents_survive_restarts_and_dead_agents_are_started_again() {
    if common::skip_unless_root("agents_survive_restarts_and_dead_agents_are_started_again") {
        return;
    }
    ensure_agent_binary();
    let mut srv = Server::start(Opts::new(37).default_pool(2));
    srv.wait_pool_idle("default", 2);
    let claim = |srv: &Server| {
        let sb = srv.claim(&common::claim_body("default"));
        (sb["sandboxId"].as_str().unwrap().to_string(), sb["podName"].as_str().unwrap().to_string())
    };
    let (a, slot_a) = claim(&srv);
    let (b, slot_b) = claim(&srv);
    wait_health(&srv, &a);
    wait_health(&srv, &b);
    let agent_a = agent_pid_of(&slot_a).expect("agent of a");

    // B's agent dies while the server is down; A's keeps running.
    srv.stop();
    let dead_b = kill_agent(&slot_b);
    let t = Instant::now();
    srv.restart();
    // Recovery starts B's agent again by itself (no request to B before this).
    srv.wait_for("recovery to start the agent of b again", Duration::from_secs(20), || {
        agent_pid_of(&slot_b).filter(|p| *p != dead_b)
    });
    eprintln!("recovery restarted the dead agent within {:?} of the restart", t.elapsed());
    assert!(srv.log_text().contains("started the agent of an adopted slot again"), "no recovery log line");
    assert_eq!(agent_pid_of(&slot_a), Some(agent_a), "the live agent of a was replaced at recovery");
    assert_eq!(health_once(&srv, &a), 204);
    assert_eq!(health_once(&srv, &b), 204);

    // A's agent is killed under the running server: the first request through the data plane is
    // answered (the proxy restarts the agent and sends it again), with its body.
    kill_agent(&slot_a);
    let t = Instant::now();
    assert_eq!(run_once(&srv, &a, "echo back-$((40+2))"), (200, "back-42\n".to_string()));
    eprintln!("request to a killed agent answered in {:?} (restart included)", t.elapsed());
    let restarted = agent_pid_of(&slot_a).expect("agent of a after the restart");
    assert_ne!(restarted, agent_a);
    kill_agent(&slot_a);
    assert_eq!(health_once(&srv, &a), 204, "a GET to a killed agent is answered too");

    srv.release_and_wait(&a);
    srv.release_and_wait(&b);
}
