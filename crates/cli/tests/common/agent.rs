//! Talking to the in-sandbox agent through the data plane, as the E2B SDK does (shared by the
//! agent tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::Server;

/// The agent's port in every sandbox.
pub const PORT: u16 = 49983;

/// `agentbox-envd` next to the `agentbox` binary under test (where `serve` looks by default),
/// built if a single-crate `cargo test` did not build it.
pub fn ensure_agent_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_agentbox")).with_file_name("agentbox-envd");
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "agentbox-envd"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build -p agentbox-envd");
        assert!(st.success(), "cargo build -p agentbox-envd failed");
    }
    assert!(path.is_file(), "{} is missing: run `cargo build -p agentbox-envd`", path.display());
    path
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

/// What one `process.Process/Start` answered.
#[derive(Debug)]
pub struct Started {
    pub status: u16,
    pub stdout: String,
    /// The end event's exit code, if one came.
    pub exit_code: Option<i64>,
    /// The end-of-stream frame carried an error.
    pub error: Option<Value>,
}

/// `process.Process/Start` of `sh -c cmd` (in `cwd` when given) through the data plane: Connect
/// JSON codec, server streaming, one request, no retries.
pub fn start(srv: &Server, id: &str, cmd: &str, cwd: Option<&str>) -> Started {
    let mut process = json!({"cmd": "/bin/sh", "args": ["-c", cmd]});
    if let Some(c) = cwd {
        process["cwd"] = json!(c);
    }
    let payload = serde_json::to_vec(&json!({ "process": process })).unwrap();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&payload);
    let r = http()
        .post(format!("{}/sandboxes/{id}/{PORT}/process.Process/Start", srv.proxy_url().unwrap()))
        .header("content-type", "application/connect+json")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().unwrap();
    let mut out = Started { status, stdout: String::new(), exit_code: None, error: None };
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
        let v: Value = serde_json::from_slice(&bytes[i + 5..i + 5 + len]).unwrap_or(Value::Null);
        if bytes[i] & 2 != 0 {
            out.error = v.get("error").cloned();
            break;
        }
        if let Some(s) = v["event"]["data"]["stdout"].as_str() {
            out.stdout.push_str(&String::from_utf8(base64_decode(s)).unwrap());
        }
        if let Some(c) = v["event"]["end"].get("exitCode") {
            out.exit_code = c.as_i64();
        }
        i += 5 + len;
    }
    out
}

/// Like [`start`], for a command that must be answered: (stdout, exit code; 0 when the end event
/// leaves it out, as proto3 JSON does for 0).
#[track_caller]
pub fn run(srv: &Server, id: &str, cmd: &str, cwd: Option<&str>) -> (String, i64) {
    let s = start(srv, id, cmd, cwd);
    assert_eq!(s.status, 200, "{s:?}");
    assert!(s.error.is_none(), "end of stream with an error: {s:?}");
    (s.stdout, s.exit_code.unwrap_or(0))
}

/// Standard base64 (with padding) to bytes; the cli crate has no base64 dependency.
pub fn base64_decode(s: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ABC.iter().position(|&a| a == c).unwrap_or_else(|| panic!("not base64: {s:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
