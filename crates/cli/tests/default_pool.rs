//! `agentbox serve` out of the box: the default pool warms up, a claim runs commands, a release
//! recycles the slot, list filters work, and the CLI client drives the same server.

mod common;

use std::time::Instant;

use common::{Opts, Server};
use serde_json::{Value, json};

#[test]
fn default_pool_claim_exec_release() {
    if common::skip_unless_root("default_pool_claim_exec_release") {
        return;
    }
    let t0 = Instant::now();
    let srv = Server::start(Opts::new(1).default_pool(2));
    let pool = srv.wait_pool_idle("default", 2);
    eprintln!("default pool of 2 idle after {:?} (including server start)", t0.elapsed());
    assert_eq!(pool["spec"]["podCreationImagePolicy"], "PoolDefaultImage");
    assert_eq!(pool["spec"]["template"]["idleImage"], "pause");
    assert_eq!(pool["spec"]["template"]["containers"][0]["image"], "host");
    assert_eq!(pool["spec"]["templateName"], "default");

    // Claim: same-image fast path, Running at once.
    let t = Instant::now();
    let sb = srv.claim(&json!({"poolName": "default"}));
    eprintln!("claim took {:?}", t.elapsed());
    let id = sb["sandboxId"].as_str().expect("sandboxId").to_string();
    assert_eq!(sb["status"], "Running", "{sb}");
    assert_eq!(sb["poolName"], "default");
    assert_eq!(sb["containerImages"]["main"], "host");
    let pod = sb["podName"].as_str().unwrap().to_string();
    assert!(pod.starts_with("default-"), "podName {pod}");

    // Exec: shell string, stdout/stderr split, exit code passed through with HTTP 200.
    let r = srv.exec(&id, &json!({"command": "echo hello; echo oops >&2; exit 3"}));
    assert_eq!(r["stdout"], "hello\n", "{r}");
    assert_eq!(r["stderr"], "oops\n", "{r}");
    assert_eq!(r["exitCode"], 3, "{r}");

    // Exec: argv list.
    let r = srv.exec(&id, &json!({"command": ["python3", "-c", "print(6*7)"]}));
    assert_eq!(r["stdout"], "42\n", "{r}");
    assert_eq!(r["exitCode"], 0, "{r}");

    // Exec: env and cwd.
    let r =
        srv.exec(&id, &json!({"command": "echo \"$GREETING\"; pwd", "env": {"GREETING": "hi there"}, "cwd": "/tmp"}));
    assert_eq!(r["stdout"], "hi there\n/tmp\n", "{r}");

    // Exec: stdin.
    let r = srv.exec(&id, &json!({"command": ["cat"], "stdin": "piped input"}));
    assert_eq!(r["stdout"], "piped input", "{r}");

    // Exec: a command that outlives its timeout is stopped and reported, the sandbox stays usable.
    let t = Instant::now();
    let r = srv.exec(&id, &json!({"command": "echo started; sleep 20; echo finished", "timeoutSeconds": 1}));
    let took = t.elapsed();
    assert_eq!(r["timedOut"], true, "{r}");
    assert_ne!(r["exitCode"], 0, "{r}");
    assert!(!r["stdout"].as_str().unwrap_or("").contains("finished"), "{r}");
    assert!(took < std::time::Duration::from_secs(10), "a 1 s exec timeout took {took:?}");
    assert_eq!(srv.sh_ok(&id, "echo after-timeout"), "after-timeout\n");

    // The sandbox is listed as Running in its pool.
    let l = srv.get("/v1/sandboxes?status=Running&poolName=default").expect(200);
    assert!(items(&l).iter().any(|s| s["sandboxId"] == id.as_str()), "Running list lacks {id}: {l}");
    let p = srv.pool("default");
    assert_eq!(p["status"]["running"], 1, "{}", p["status"]);

    // Release: 202 Stopping, then Completed with recycledAt; the slot is idle again.
    let t = Instant::now();
    let del = srv.delete(&format!("/v1/sandboxes/{id}")).expect(202);
    assert_eq!(del["status"], "Stopping", "{del}");
    assert_eq!(del["sandboxId"], id.as_str());
    assert_eq!(del["podName"], pod.as_str());
    let done = srv.wait_for("sandbox to be Completed", common::WARMUP, || {
        let s = srv.sandbox(&id);
        (s["status"] == "Completed").then_some(s)
    });
    eprintln!("release to Completed took {:?}", t.elapsed());
    assert!(done.get("recycledAt").is_some_and(Value::is_string), "no recycledAt: {done}");
    assert!(done.get("terminatedAt").is_some_and(Value::is_string), "no terminatedAt: {done}");
    srv.wait_pool_idle("default", 2);
    assert_eq!(srv.pool("default")["status"]["running"], 0);

    // Exec on an ended sandbox is refused (not Running), never a 5xx.
    let r = srv.post(&format!("/v1/sandboxes/{id}/exec"), &json!({"command": "true"}));
    assert_eq!(r.status, 409, "{}", r.text);

    // Deleting it again: it already ended.
    let r = srv.delete(&format!("/v1/sandboxes/{id}"));
    assert_eq!(r.status, 404, "{}", r.text);

    // List filters.
    let l = srv.get("/v1/sandboxes?status=Completed").expect(200);
    assert!(items(&l).iter().any(|s| s["sandboxId"] == id.as_str()), "Completed list lacks {id}: {l}");
    assert!(items(&l).iter().all(|s| s["status"] == "Completed"), "{l}");
    let l = srv.get("/v1/sandboxes?status=Running").expect(200);
    assert!(items(&l).iter().all(|s| s["sandboxId"] != id.as_str()), "Running list has {id}: {l}");
    let l = srv.get("/v1/sandboxes?poolName=default").expect(200);
    assert!(items(&l).iter().any(|s| s["sandboxId"] == id.as_str()), "{l}");
    let l = srv.get("/v1/sandboxes?poolName=other").expect(200);
    assert!(items(&l).is_empty(), "{l}");
    assert_eq!(l["total"], 0);
    let r = srv.get("/v1/sandboxes?limit=101");
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.body["error"].as_str().is_some_and(|e| e.contains("limit")), "{}", r.text);
    let r = srv.get("/v1/sandboxes?status=Sleeping");
    assert_eq!(r.status, 400, "{}", r.text);

    // The CLI client against the same server.
    let out = srv.cli(&["sandbox", "create", "--pool", "default", "-o", "json"]);
    assert!(out.status.success(), "sandbox create failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("sandbox create -o json prints JSON");
    let cli_id = v["sandbox"]["sandboxId"].as_str().expect("sandboxId in CLI output").to_string();
    assert_eq!(v["sandbox"]["status"], "Running", "{v}");

    let out = srv.cli(&["exec", &cli_id, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let out = srv.cli(&["exec", &cli_id, "--", "sh", "-c", "echo from-cli; echo to-err >&2"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n");

    let out = srv.cli(&["sandbox", "get", &cli_id, "-o", "json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sandbox"]["sandboxId"], cli_id.as_str());

    let out = srv.cli(&["sandbox", "delete", &cli_id, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "Stopping");

    // A CLI error carries the server's words and exits non-zero.
    let out = srv.cli(&["sandbox", "create", "--pool", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("default"),
        "CLI error should name the pool and list available ones: {err}"
    );

    srv.wait_for("CLI sandbox to be recycled", common::WARMUP, || {
        (srv.sandbox(&cli_id)["status"] == "Completed").then_some(())
    });
    srv.wait_pool_idle("default", 2);
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}
