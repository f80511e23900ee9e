//! The multi-cluster gateway's E2B API and data plane end to end (issue #7): two real
//! `agentbox serve` processes on loopback, cluster `eu` (a warm default pool, the in-sandbox agent)
//! and a gateway `home` whose `--clusters-config` names `eu`. Through the gateway: E2B create
//! `eu::default` → `eu.{uuid}`, get, kill; the agent of the remote sandbox over the gateway's data
//! plane in the path, headers and host forms, and a Connect stream; the unmodified E2B Python SDK
//! (commands and files go gateway data plane → eu data plane → agent); unknown clusters → 400; a
//! stopped `eu` → 502 on both planes while the gateway's own E2B API keeps working.

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::{PORT, ensure_agent_binary, http};
use common::{Opts, Server};
use serde_json::{Value, json};

/// Dev mode: any well-formed key is the anonymous admin, on both clusters.
fn key() -> String {
    format!("e2b_{}", "0a".repeat(32))
}

/// An E2B API call: (status, body).
fn e2b(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = http().request(method.parse().unwrap(), format!("{base}{path}")).header("X-API-Key", key());
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// `eu` (net 44) with `slots` warm slots, and the gateway `home` (net 45, no pool) knowing it.
fn two_clusters(slots: u32) -> (Server, Server, tempfile::TempDir) {
    let eu = Server::start(Opts::new(44).default_pool(slots).arg("--cluster-id").arg("eu"));
    eu.wait_pool_idle("default", u64::from(slots));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clusters.yaml");
    std::fs::write(
        &config,
        format!(
            "clusters:\n  - id: home\n    name: Gateway\n  - id: eu\n    name: Europe\n    nativeUrl: {}\n    e2bUrl: {}\n    proxyUrl: {}\n",
            eu.url,
            eu.e2b_url().expect("eu printed its E2B API address"),
            eu.proxy_url().expect("eu printed its data plane address"),
        ),
    )
    .unwrap();
    let gw = Server::start(
        Opts::new(45).arg("--cluster-id").arg("home").arg("--clusters-config").arg(config.to_str().unwrap()),
    );
    (eu, gw, dir)
}

#[test]
fn e2b_api_and_data_plane_reach_a_remote_sandbox_through_the_gateway() {
    if common::skip_unless_root("e2b_api_and_data_plane_reach_a_remote_sandbox_through_the_gateway") {
        return;
    }
    let python = common::sdk_python("e2b_api_and_data_plane_reach_a_remote_sandbox_through_the_gateway", &["e2b"]);
    ensure_agent_binary();
    // One slot for the API and data-plane checks, one for the SDK.
    let (mut eu, gw, _dir) = two_clusters(2);
    let (gw_e2b, gw_proxy) = (gw.e2b_url().unwrap(), gw.proxy_url().unwrap());

    // Create on eu through the gateway: a global id, and the gateway's data plane as the domain.
    let (st, created) = e2b(&gw_e2b, "POST", "/sandboxes", Some(json!({"templateID": "eu::default", "timeout": 300})));
    assert_eq!(st, 201, "{created}");
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    let uuid = id.strip_prefix("eu.").unwrap_or_else(|| panic!("a global id: {created}")).to_owned();
    assert_eq!(created["domain"], gw_proxy.trim_start_matches("http://"), "{created}");
    assert_eq!(eu.sandbox(&uuid)["status"], "Running", "the sandbox lives on eu");
    let (st, got) = e2b(&gw_e2b, "GET", &format!("/sandboxes/{id}"), None);
    assert_eq!((st, got["sandboxID"].as_str()), (200, Some(id.as_str())), "{got}");

    // The remote agent through the gateway's data plane, in the three routing forms.
    let c = http();
    let path_url = format!("{gw_proxy}/sandboxes/{id}/{PORT}/health");
    gw.wait_for("the remote agent to answer /health through the gateway", Duration::from_secs(20), || {
        c.get(&path_url).send().ok().filter(|r| r.status() == 204).map(|_| ())
    });
    let r = c
        .get(format!("{gw_proxy}/health"))
        .header("E2b-Sandbox-Id", &id)
        .header("E2b-Sandbox-Port", PORT.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 204, "headers form: {}", r.text().unwrap_or_default());
    let r = c.get(format!("{gw_proxy}/health")).header("host", format!("{PORT}-{id}.gw.test")).send().unwrap();
    assert_eq!(r.status(), 204, "host form: {}", r.text().unwrap_or_default());

    // A Connect server stream (process.Process/Start) through both data planes.
    let (out, code) = common::agent::run(&gw, &id, "echo one; sleep 0.2; echo two", None);
    assert_eq!((out.as_str(), code), ("one\ntwo\n", 0));

    // Unknown clusters: 400 naming the known ones, on both planes.
    let (st, v) = e2b(&gw_e2b, "POST", "/sandboxes", Some(json!({"templateID": "mars::default"})));
    assert_eq!(st, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("\"eu\""), "{v}");
    let r = c.get(format!("{gw_proxy}/sandboxes/mars.{uuid}/{PORT}/health")).send().unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert!(v["error"].as_str().unwrap().contains("\"home\""), "{v}");

    // Kill through the gateway.
    let (st, v) = e2b(&gw_e2b, "DELETE", &format!("/sandboxes/{id}"), None);
    assert_eq!(st, 204, "{v}");
    gw.wait_for("the killed sandbox to be gone", Duration::from_secs(30), || {
        (e2b(&gw_e2b, "GET", &format!("/sandboxes/{id}"), None).0 == 404).then_some(())
    });

    // The unmodified E2B SDK: the gateway has no pool, so `eu::default` only works forwarded, and
    // its commands and files reach eu's agent through the gateway's data plane.
    if let Some(python) = python {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b_sdk/agent.py");
        let out = Command::new(python)
            .arg(script)
            .arg("eu::default")
            .env("E2B_API_URL", &gw_e2b)
            .env("E2B_API_KEY", key())
            .env("E2B_SANDBOX_URL", &gw_proxy)
            .output()
            .expect("running the SDK script");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("OK"),
            "SDK script failed ({}):\n{stdout}\n{}\ngateway log:\n{}\neu log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            gw.log_tail(40),
            eu.log_tail(60)
        );
    }

    // eu stopped: 502 with the cause on both planes; the gateway's own E2B API still answers.
    eu.stop();
    let (st, v) = e2b(&gw_e2b, "POST", "/sandboxes", Some(json!({"templateID": "eu::default"})));
    assert_eq!((st, v["code"].as_u64()), (502, Some(502)), "{v}");
    assert!(v["message"].as_str().unwrap().contains("forward request to cluster \"eu\""), "{v}");
    let (st, v) = e2b(&gw_e2b, "GET", &format!("/sandboxes/{id}"), None);
    assert_eq!(st, 502, "{v}");
    let r = c.get(&path_url).send().unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().unwrap();
    assert!(v["error"].as_str().unwrap().contains("forward request to cluster \"eu\""), "{v}");
    let (st, v) = e2b(&gw_e2b, "GET", "/sandboxes", None);
    assert_eq!((st, v), (200, json!([])), "local requests are unaffected");
}
