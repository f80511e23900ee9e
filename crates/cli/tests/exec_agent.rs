//! The native exec API through the in-sandbox agent: `POST /v1/sandboxes/{id}/exec` runs the
//! command as a child of the agent (not a runtime exec), with the native semantics (numeric user,
//! the container's working directory, stdin, env, timeout → 124, signals → 128+N), and
//! `POST /v1/sandboxes/{id}/exec/stream` delivers output while the command runs and kills the
//! command when the client goes away.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{Opts, Server};
use serde_json::{Value, json};

/// Every `/proc/*/cmdline` in the sandbox that contains `needle`.
fn count_procs(srv: &Server, id: &str, needle: &str) -> usize {
    let cmd = format!(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^{needle}' || true"
    );
    srv.sh_ok(id, &cmd).trim().parse().unwrap()
}

#[test]
fn exec_runs_through_the_agent_and_streams() {
    if common::skip_unless_root("exec_runs_through_the_agent_and_streams") {
        return;
    }
    let srv = Server::start(Opts::new(40).default_pool(1));
    srv.wait_pool_idle("default", 1);
    let id = srv.claim(&common::claim_body("default"))["sandboxId"].as_str().unwrap().to_string();

    // The command's parent is the agent: it ran through the agent, not a runtime exec.
    let parent = srv.sh_ok(&id, "tr '\\0' ' ' < /proc/$PPID/cmdline");
    assert!(parent.starts_with("/.agentbox/envd "), "exec parent: {parent:?}");

    // Output, exit code, env, stdin, numeric user, default cwd = the container's (the agent's own).
    let r = srv.exec(&id, &json!({"command": "echo out; echo err >&2; exit 3"}));
    assert_eq!(
        (r["stdout"].as_str(), r["stderr"].as_str(), r["exitCode"].as_i64()),
        (Some("out\n"), Some("err\n"), Some(3))
    );
    let r = srv
        .exec(&id, &json!({"command": ["/bin/sh", "-c", "echo $FOO; cat"], "env": {"FOO": "bar"}, "stdin": "piped\n"}));
    assert_eq!(r["stdout"], "bar\npiped\n", "{r}");
    let r = srv.exec(&id, &json!({"command": "id -u; id -g", "user": "1234:4321"}));
    assert_eq!(r["stdout"], "1234\n4321\n", "{r}");
    let cwd = srv.sh_ok(&id, "pwd; readlink /proc/$PPID/cwd");
    let lines: Vec<&str> = cwd.lines().collect();
    assert_eq!(lines[0], lines[1], "without cwd the command runs where the agent (the container) does");
    assert_eq!(srv.exec(&id, &json!({"command": "pwd", "cwd": "/tmp"}))["stdout"], "/tmp\n");
    // A missing program is the shell's 127, not a server error.
    let r = srv.exec(&id, &json!({"command": ["/no/such/program"]}));
    assert_eq!(r["exitCode"], 127, "{r}");
    assert!(r["stderr"].as_str().unwrap().contains("/no/such/program"), "{r}");
    assert_eq!(srv.exec(&id, &json!({"command": ["/etc/passwd"]}))["exitCode"], 126, "not executable");
    // Killed by a signal: 128+N; killed at the deadline: 124 and timedOut.
    assert_eq!(srv.exec(&id, &json!({"command": "kill -9 $$"}))["exitCode"], 137);
    let t = Instant::now();
    let r = srv.exec(&id, &json!({"command": "sleep 30", "timeoutSeconds": 1}));
    assert_eq!((r["exitCode"].as_i64(), r["timedOut"].as_bool()), (Some(124), Some(true)), "{r}");
    assert!(t.elapsed() < Duration::from_secs(10), "the deadline was not enforced: {:?}", t.elapsed());
    // Large output is complete (below the 4 MiB capture limit).
    let r = srv.exec(&id, &json!({"command": "head -c 3000000 /dev/zero | tr '\\0' x"}));
    assert_eq!(r["stdout"].as_str().unwrap().len(), 3_000_000);
    assert!(r.get("truncated").is_none(), "{}", r["truncated"]);

    // The stream: lines arrive while the command runs, the exit line comes last.
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
    let url = format!("{}/v1/sandboxes/{id}/exec/stream", srv.url);
    let t = Instant::now();
    let resp = http
        .post(&url)
        .json(&json!({"command": "for i in 1 2 3; do echo line$i; sleep 0.4; done; echo done >&2; exit 5"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut events: Vec<(Duration, Value)> = Vec::new();
    for line in BufReader::new(resp).lines() {
        events.push((t.elapsed(), serde_json::from_str(&line.unwrap()).unwrap()));
    }
    let stdout: String =
        events.iter().filter(|(_, v)| v["type"] == "stdout").map(|(_, v)| v["data"].as_str().unwrap()).collect();
    assert_eq!(stdout, "line1\nline2\nline3\n");
    assert!(events.iter().any(|(_, v)| v["type"] == "stderr" && v["data"] == "done\n"), "{events:?}");
    let (t_exit, exit) = events.last().unwrap();
    assert_eq!(
        (exit["type"].as_str(), exit["exitCode"].as_i64(), exit["timedOut"].as_bool()),
        (Some("exit"), Some(5), Some(false))
    );
    let t_first = events.iter().find(|(_, v)| v["type"] == "stdout").unwrap().0;
    assert!(
        *t_exit - t_first >= Duration::from_millis(600),
        "the first line came {t_first:?}, the exit {t_exit:?}: not streamed"
    );

    // Closing the stream kills the command.
    let resp = http.post(&url).json(&json!({"command": "echo started; exec sleep 301"})).send().unwrap();
    let mut lines = BufReader::new(resp).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["data"], "started\n");
    assert_eq!(count_procs(&srv, &id, "sleep 301"), 1, "the streamed command runs");
    drop(lines);
    srv.wait_for("the streamed command to be killed after the client left", Duration::from_secs(15), || {
        (count_procs(&srv, &id, "sleep 301") == 0).then_some(())
    });

    // The CLI streams too: output as it comes, the command's exit code as its own.
    let out = srv.cli(&["exec", &id, "--timeout", "900", "--", "sh", "-c", "echo a; echo b >&2; exit 4"]);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(4), "a\n"), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("b\n"), "{out:?}");

    // An agent killed inside the sandbox is restarted by the next exec, which then runs through it.
    let old_agent = srv.sh_ok(&id, "P=$PPID; (sleep 0.3; kill -9 $P) >/dev/null 2>&1 </dev/null & echo $P");
    std::thread::sleep(Duration::from_millis(800));
    let r = srv.exec(&id, &json!({"command": "echo back; echo $PPID; tr '\\0' ' ' < /proc/$PPID/cmdline"}));
    let out = r["stdout"].as_str().unwrap().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"back"), "{r}");
    assert_ne!(lines[1], old_agent.trim(), "a new agent runs the command");
    assert!(lines[2].starts_with("/.agentbox/envd "), "{r}");

    // Bad input is a 400 that says what to do; the stream takes long timeouts, exec does not.
    let r = srv.post(&format!("/v1/sandboxes/{id}/exec/stream"), &json!({"command": "true", "timeoutSeconds": 0}));
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("1..=86400"), "{}", r.text);
    let r = srv.post(&format!("/v1/sandboxes/{id}/exec"), &json!({"command": "true", "timeoutSeconds": 3600}));
    assert_eq!(r.status, 400);
    srv.post(&format!("/v1/sandboxes/{id}/exec/stream"), &json!({"command": "true"})).expect(200);
    srv.post("/v1/sandboxes/nope/exec/stream", &json!({"command": "true"})).expect(404);

    srv.release_and_wait(&id);
    let r = srv.post(&format!("/v1/sandboxes/{id}/exec/stream"), &json!({"command": "true"}));
    assert_eq!(r.status, 409, "a released sandbox: {}", r.text);
}
