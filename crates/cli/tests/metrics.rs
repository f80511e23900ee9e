//! `/metrics` on the real server: after one claim from the default pool, an unauthenticated scrape
//! shows the claim histogram, the create counter and the slot gauges of that pool.

mod common;

use common::{Opts, Server};
use serde_json::json;

#[test]
fn metrics_expose_the_claim_histogram_after_a_claim() {
    if common::skip_unless_root("metrics_expose_the_claim_histogram_after_a_claim") {
        return;
    }
    let srv = Server::start(Opts::new(20).default_pool(1).admin_key("metrics-e2e-admin-key-0123456789"));
    srv.wait_pool_idle("default", 1);
    let sb = srv.claim(&json!({"poolName": "default"}));
    assert_eq!(sb["status"], "Running", "{sb}");

    // No credentials: the scrape must not need them (the harness's client would send the admin key).
    let scrape = reqwest::blocking::get(format!("{}/metrics", srv.url)).expect("GET /metrics");
    assert_eq!(scrape.status().as_u16(), 200);
    let ct = scrape.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(ct.starts_with("text/plain"), "content type {ct}");
    let text = scrape.text().expect("metrics body");
    let lines: Vec<&str> = text.lines().collect();
    let has = |prefix: &str, parts: &[&str]| {
        lines.iter().any(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        has("agentbox_claim_duration_seconds_bucket{", &[r#"pool="default""#, r#"le="+Inf""#, "} 1"]),
        "no claim histogram for the default pool:\n{text}"
    );
    assert!(has("agentbox_sandbox_creates_total{", &[r#"pool="default""#, r#"result="ok""#, "} 1"]), "{text}");
    assert!(has("agentbox_pool_slots{", &[r#"pool="default""#, r#"phase="running""#, "} 1"]), "{text}");
    assert!(has("agentbox_http_requests_total{", &[r#"route="/v1/sandboxes""#, r#"status="201""#]), "{text}");
    // Without the key the API itself answers 401: /metrics really is the exception.
    let api = reqwest::blocking::get(format!("{}/v1/sandboxes", srv.url)).expect("GET /v1/sandboxes");
    assert_eq!(api.status().as_u16(), 401);
}
