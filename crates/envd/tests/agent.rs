//! End-to-end tests: the real `agentbox-envd` binary on 127.0.0.1, driven over HTTP with the
//! Connect JSON codec, and (when a venv with `e2b==2.53.1` exists) with the real E2B SDK.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use base64::Engine as _;

struct Agent {
    child: Child,
    url: String,
    home: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_agent() -> Agent {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let home = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_agentbox-envd"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--home"])
        .arg(home.path())
        .spawn()
        .unwrap();
    // Owned by `Agent` right away so `Drop` kills and reaps it on every path.
    let agent = Agent { child, url: format!("http://127.0.0.1:{port}"), home };
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{}/health", agent.url)).await {
            assert_eq!(r.status(), 204);
            return agent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("agent did not come up");
}

/// Runs a server-streaming call with the JSON codec and returns the decoded messages and
/// the end-of-stream JSON.
async fn stream(url: &str, method: &str, req: serde_json::Value) -> (Vec<serde_json::Value>, serde_json::Value) {
    let payload = serde_json::to_vec(&req).unwrap();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&payload);
    let resp = reqwest::Client::new()
        .post(format!("{url}/{method}"))
        .header("content-type", "application/connect+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    let (mut msgs, mut i) = (Vec::new(), 0);
    while i + 5 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
        let v: serde_json::Value = serde_json::from_slice(&bytes[i + 5..i + 5 + len]).unwrap();
        if bytes[i] & 2 != 0 {
            return (msgs, v);
        }
        msgs.push(v);
        i += 5 + len;
    }
    panic!("stream ended without an end-of-stream frame");
}

async fn unary(url: &str, method: &str, req: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/{method}"))
        .header("content-type", "application/json")
        .body(req.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn stdout_of(events: &[serde_json::Value]) -> String {
    let mut out = Vec::new();
    for e in events {
        if let Some(s) = e["event"]["data"]["stdout"].as_str() {
            out.extend(base64::engine::general_purpose::STANDARD.decode(s).unwrap());
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn start_streams_output_and_exit_code_over_connect_json() {
    let a = start_agent().await;
    let (events, end) = stream(
        &a.url,
        "process.Process/Start",
        serde_json::json!({"process": {"cmd": "/bin/sh", "args": ["-c", "echo hi; exit 4"]}}),
    )
    .await;
    assert_eq!(end, serde_json::json!({}));
    assert!(events[0]["event"]["start"]["pid"].as_u64().unwrap() > 0);
    assert_eq!(stdout_of(&events), "hi\n");
    let last = &events.last().unwrap()["event"]["end"];
    assert_eq!(last["exitCode"], 4);
    assert_eq!(last["status"], "exit status 4");
}

#[tokio::test]
async fn init_env_and_cwd_apply_to_later_processes() {
    let a = start_agent().await;
    let r = reqwest::Client::new()
        .post(format!("{}/init", a.url))
        .json(&serde_json::json!({"envVars": {"GREETING": "hello"}, "accessToken": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    std::fs::create_dir(a.home.path().join("sub")).unwrap();
    let (events, _) = stream(
        &a.url,
        "process.Process/Start",
        serde_json::json!({"process": {"cmd": "/bin/sh", "args": ["-c", "echo $GREETING; pwd"], "cwd": "sub"}}),
    )
    .await;
    let expected = format!("hello\n{}\n", a.home.path().join("sub").display());
    assert_eq!(stdout_of(&events), expected);
}

#[tokio::test]
async fn unknown_pid_is_not_found_and_missing_file_is_404() {
    let a = start_agent().await;
    let (status, body) = unary(
        &a.url,
        "process.Process/SendSignal",
        serde_json::json!({"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = unary(&a.url, "filesystem.Filesystem/Stat", serde_json::json!({"path": "nope"})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let r = reqwest::get(format!("{}/files?path=nope", a.url)).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn octet_stream_upload_then_download_round_trips() {
    let a = start_agent().await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = reqwest::Client::new()
        .post(format!("{}/files?path=dir/x.bin", a.url))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: serde_json::Value = r.json().await.unwrap();
    assert_eq!(info[0]["path"], a.home.path().join("dir/x.bin").to_string_lossy().as_ref());
    let got = reqwest::get(format!("{}/files?path=dir/x.bin", a.url)).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), data.as_slice());
}

fn sdk_python() -> Option<PathBuf> {
    let p = std::env::var_os("AGENTBOX_E2B_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/agentbox-test-venv/bin/python"));
    let ok = Command::new(&p).args(["-c", "import e2b"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(p)
}

#[tokio::test]
async fn the_real_e2b_sdk_works_against_the_agent() {
    let Some(python) = sdk_python() else {
        // CI installs the SDK (scripts/install-deps.sh): there a missing SDK is a failure, not a skip.
        assert!(std::env::var_os("CI").is_none(), "CI must provide the e2b SDK in /opt/agentbox-test-venv");
        eprintln!("SKIP: no python with the e2b SDK (run scripts/install-deps.sh, or set AGENTBOX_E2B_PYTHON)");
        return;
    };
    let a = start_agent().await;
    let r = reqwest::Client::new()
        .post(format!("{}/init", a.url))
        .json(&serde_json::json!({"envVars": {"INIT_VAR": "from-init"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b_sdk_test.py");
    let out = tokio::process::Command::new(python).arg(script).arg(&a.url).arg(a.home.path()).output().await.unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sdk script failed:\n{so}\n{se}");
    assert!(so.contains("E2B SDK OK"), "{so}");
}
