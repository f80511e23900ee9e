//! Logs, log follow (`agentbox sandbox logs -f`), runtime logDir sources, readiness probes and
//! idle timeouts against the real server and real containers.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Opts, Server};
use serde_json::{Value, json};

const TICKER: &str = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";

/// `agentbox sandbox logs ...` running in the background, its stdout lines collected.
struct Follow {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Follow {
    fn start(srv: &Server, args: &[&str]) -> Follow {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentbox"))
            .args(args)
            .env("AGENTBOX_ENDPOINT", &srv.url)
            .env_remove("AGENTBOX_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the CLI");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line);
            }
        });
        Follow { child, lines }
    }
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
    /// Wait for the CLI to exit on its own; returns its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn tick_no(line: &str) -> Option<u64> {
    line.split_whitespace().last().and_then(|n| n.parse().ok()).filter(|_| line.contains("tick "))
}

#[test]
fn logs_follow_runtime_sources_readiness_and_idle_timeouts() {
    if common::skip_unless_root("logs_follow_runtime_sources_readiness_and_idle_timeouts") {
        return;
    }
    let srv = Server::start(Opts::new(12));
    srv.create_pool(&json!({
        "name": "ticker",
        "replicas": 2,
        "podCreationImagePolicy": "PoolDefaultImage",
        "template": {
            "idleImage": "pause",
            "containers": [{"name": "main", "image": "host", "command": ["sh", "-c", TICKER]}],
            "runtimes": [
                {"name": "app", "logDir": "/tmp/applogs", "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}}},
                {"name": "web", "port": 8000, "readinessProbe": {"httpGet": {"port": 8000, "path": "/"}}}
            ]
        }
    }));
    srv.wait_pool_idle("ticker", 2);
    let sb = srv.claim(&json!({"poolName": "ticker", "waitForReady": false}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();

    // GET logs with lines=2: the last two ticks, with timestamps.
    let logs = srv.wait_for("three ticks", Duration::from_secs(10), || {
        let v = srv.get(&format!("/v1/sandboxes/{id}/logs?lines=2")).expect(200);
        (v["truncated"] == true).then_some(v)
    });
    let entries = logs["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{logs}");
    for e in entries {
        assert_eq!(e["container"], "main");
        let ts = e["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {logs}"));
        let t = chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339");
        let age = chrono::Utc::now().signed_duration_since(t);
        assert!(age < chrono::Duration::seconds(30) && age > chrono::Duration::seconds(-1), "{ts}");
    }
    let (a, b) = (tick_no(entries[0]["log"].as_str().unwrap()), tick_no(entries[1]["log"].as_str().unwrap()));
    assert_eq!(b, a.map(|a| a + 1), "{logs}");
    assert_eq!((logs["source"].as_str(), logs["podName"].as_str()), (Some("live"), sb["podName"].as_str()));

    // A runtime's logDir (a directory: every file in it) read inside the sandbox.
    let r = srv.get(&format!("/v1/sandboxes/{id}/logs?source=app"));
    assert_eq!(r.status, 404, "logDir does not exist yet: {}", r.text);
    srv.sh_ok(&id, "mkdir -p /tmp/applogs && printf 'one\\ntwo\\n' > /tmp/applogs/a.log");
    let v = srv.get(&format!("/v1/sandboxes/{id}/logs?source=app")).expect(200);
    let logs: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["log"].as_str().unwrap()).collect();
    assert_eq!(logs, ["one", "two"], "{v}");
    assert_eq!((v["source"].as_str(), v["runtimeName"].as_str()), (Some("runtime"), Some("app")));
    let v = srv.get(&format!("/v1/sandboxes/{id}/logs?source=app&lines=1")).expect(200);
    assert_eq!(v["entries"][0]["log"], "two");
    assert_eq!(v["truncated"], true);
    let r = srv.get(&format!("/v1/sandboxes/{id}/logs?source=web"));
    assert_eq!(r.status, 400, "web has no logDir: {}", r.text);

    // Readiness: the exec probe and the HTTP probe against the slot's IP.
    let r = srv.get(&format!("/v1/sandboxes/{id}/is_ready"));
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["endpoints"]["app"]["ready"], false, "{}", r.text);
    let web = r.body["endpoints"]["web"]["message"].as_str().unwrap_or_default();
    assert!(web.starts_with("probe request failed"), "{}", r.text);
    srv.sh_ok(&id, "touch /tmp/ready; cd /tmp && nohup python3 -m http.server 8000 >/dev/null 2>&1 &");
    let v = srv.wait_for("every runtime ready", Duration::from_secs(15), || {
        let r = srv.get(&format!("/v1/sandboxes/{id}/is_ready"));
        (r.status == 200).then_some(r.body)
    });
    assert_eq!(v["ready"], true);

    // Follow, through the CLI: stdout and the runtime source, until the sandbox ends.
    let mut out = Follow::start(&srv, &["sandbox", "logs", &id, "-f", "--lines", "1"]);
    let mut app = Follow::start(&srv, &["sandbox", "logs", &id, "-f", "--source", "app"]);
    let first = srv
        .wait_for("the first followed line", Duration::from_secs(10), || out.lines().first().and_then(|l| tick_no(l)));
    srv.wait_for("ticks written after the follow started", Duration::from_secs(10), || {
        let ticks: Vec<u64> = out.lines().iter().filter_map(|l| tick_no(l)).collect();
        (ticks.len() >= 4).then_some(ticks)
    });
    let ticks: Vec<u64> = out.lines().iter().filter_map(|l| tick_no(l)).collect();
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1) && ticks[0] == first, "{ticks:?}");
    srv.wait_for("the runtime log so far", Duration::from_secs(10), || (app.lines() == ["one", "two"]).then_some(()));
    srv.sh_ok(&id, "echo three >> /tmp/applogs/a.log; echo first > /tmp/applogs/b.log");
    srv.wait_for("runtime lines written after the follow started", Duration::from_secs(10), || {
        let l = app.lines();
        (l.len() == 4 && l[2..].contains(&"three".to_string()) && l[2..].contains(&"first".to_string())).then_some(())
    });
    srv.release_and_wait(&id);
    assert_eq!(out.wait_exit(Duration::from_secs(10)), Some(0), "logs -f exits 0 when the sandbox ends");
    assert_eq!(app.wait_exit(Duration::from_secs(10)), Some(0));
    let r = srv.get(&format!("/v1/sandboxes/{id}/logs"));
    assert_eq!(r.status, 404, "{}", r.text);

    // Idle timeout: released after 2 s without activity; `timeout 0` keeps another one alive.
    srv.wait_pool_idle("ticker", 2);
    let idle = srv.claim(&json!({"poolName": "ticker", "idleTimeout": "2s", "waitForReady": false}))["sandboxId"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = srv.claim(&json!({"poolName": "ticker", "idleTimeout": "2s", "waitForReady": false}))["sandboxId"]
        .as_str()
        .unwrap()
        .to_string();
    let o = srv.cli(&["sandbox", "timeout", &kept, "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no idle timeout"));
    let t = Instant::now();
    let sb: Value = srv.wait_for("the idle sandbox to be released", Duration::from_secs(15), || {
        let sb = srv.sandbox(&idle);
        (sb["status"] == "Released").then_some(sb)
    });
    eprintln!("idle sandbox released after {:?}", t.elapsed());
    assert_eq!(sb["statusDetail"]["reason"], "IdleTimeout", "{sb}");
    assert!(sb["statusDetail"]["message"].as_str().unwrap_or_default().contains("; last active at "), "{sb}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(srv.sandbox(&kept)["status"], "Running", "timeout 0 removed the idle timeout");
    let o = srv.cli(&["sandbox", "timeout", &kept, "45m", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sandbox"]["idleTimeoutSeconds"], 2700);
    let o = srv.cli(&["sandbox", "timeout", &kept, "soon"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"30m\""), "{}", String::from_utf8_lossy(&o.stderr));
    srv.release_and_wait(&kept);
}
