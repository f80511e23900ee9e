//! Identity against the real `agentbox serve` with an admin key: keys made with the CLI, a tenant
//! that claims from its own pool, the `e2b_` alias, recovery of raw tokens across a restart, and
//! raw tokens never written in plain text to the SQLite files or the log.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Opts, Server};
use serde_json::{Value, json};

const ADMIN: &str = "e2e-admin-key-0123456789abcdef";

fn json_out(o: &std::process::Output) -> Value {
    assert!(
        o.status.success(),
        "cli failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not json ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// Every file of the store (database, WAL, shared memory) as one byte string.
fn store_bytes(srv: &Server) -> Vec<u8> {
    let mut all = vec![];
    for entry in std::fs::read_dir(srv.data_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("agentbox.db") {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    assert!(all.len() > 4096, "the store files were not found in {}", srv.data_dir().display());
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn keys_tenants_and_token_secrecy_through_the_real_server() {
    if common::skip_unless_root("keys_tenants_and_token_secrecy_through_the_real_server") {
        return;
    }
    let mut srv = Server::start(Opts::new(15).default_pool(1).admin_key(ADMIN));
    assert!(!srv.log_text().contains("DEV MODE"), "an admin key is configured, yet the server warns of dev mode");

    // Without credentials: 401 that says what to send.
    let r = srv.call_as("", "GET", "/v1/sandboxes", None);
    assert_eq!(r.status, 401, "{}", r.text);

    // The admin makes a key for alice with the CLI; alice makes her second key herself.
    let created = json_out(&srv.cli(&["apikey", "create", "--team", "red", "--user", "alice", "-o", "json"]));
    let k1 = created["apiKey"].as_str().unwrap().to_string();
    assert!(k1.starts_with("agbx_") && k1.len() == 69, "{created}");
    let who = json_out(&srv.cli_as(Some(&k1), &["whoami", "-o", "json"]));
    assert_eq!((who["role"].as_str(), who["namespace"].as_str()), (Some("tenant"), Some("t-red-alice")));
    let second = json_out(&srv.cli_as(Some(&k1), &["apikey", "create", "--description", "laptop", "-o", "json"]));
    let k2 = second["apiKey"].as_str().unwrap().to_string();
    let listed = json_out(&srv.cli_as(Some(&k1), &["apikey", "list", "-o", "json"]));
    assert_eq!(listed["total"], 2);

    // Alice: her own pool and sandbox; the admin's default pool is not hers.
    let r = srv.call_as(&k1, "POST", "/v1/sandboxes", Some(&json!({"poolName": "default"})));
    assert_eq!(r.status, 404, "{}", r.text);
    let pool = json!({"name": "mine", "template": common::host_template(), "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage"});
    assert_eq!(srv.call_as(&k1, "POST", "/v1/sandboxpools", Some(&pool)).status, 201);
    let mut idle = false;
    for _ in 0..600 {
        let p = srv.call_as(&k1, "GET", "/v1/sandboxpools/mine", None).body;
        if p["pool"]["status"]["idle"] == 1 {
            idle = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(idle, "alice's pool never warmed up; log:\n{}", srv.log_tail(100));
    // Through the e2b_ alias of her key.
    let alias = format!("e2b_{}", &k2[5..]);
    let sb = srv.call_as(&alias, "POST", "/v1/sandboxes", Some(&json!({"poolName": "mine"}))).expect(201);
    let id = sb["sandbox"]["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(sb["sandbox"]["user"], "alice");
    let out = srv.call_as(&k1, "POST", &format!("/v1/sandboxes/{id}/exec"), Some(&json!({"command": "echo hi"})));
    assert_eq!(out.expect(200)["stdout"], "hi\n");
    // The admin sees it; another tenant does not.
    srv.get(&format!("/v1/sandboxes/{id}")).expect(200);
    let bob = json_out(&srv.cli(&["apikey", "create", "--team", "blue", "--user", "bob", "-o", "json"]));
    let kb = bob["apiKey"].as_str().unwrap().to_string();
    assert_eq!(srv.call_as(&kb, "GET", &format!("/v1/sandboxes/{id}"), None).status, 404);

    // Secrecy: the raw tokens are nowhere in the store files or the log, in either form.
    let db = store_bytes(&srv);
    for t in [&k1, &k2, &kb] {
        let hex_part = &t[5..];
        assert!(!contains(&db, hex_part), "a raw token is stored in plain text in the SQLite files");
        assert!(!srv.log_text().contains(hex_part), "a raw token appears in the server log");
    }
    let key_file = srv.data_dir().join("server.key");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);

    // Restart: keys still authenticate and their raw tokens are still recoverable.
    srv.restart();
    let listed = srv.call_as(&k1, "GET", "/v1/api-keys", None).expect(200);
    let raws: Vec<&str> = listed["items"].as_array().unwrap().iter().filter_map(|k| k["rawToken"].as_str()).collect();
    assert!(raws.contains(&k1.as_str()) && raws.contains(&k2.as_str()), "{listed}");
    assert_eq!(
        srv.call_as(&k2, "GET", &format!("/v1/sandboxes/{id}"), None).expect(200)["sandbox"]["status"],
        "Running"
    );

    // Deleting a key revokes it at once.
    let kid = second["keyId"].as_str().unwrap();
    json_out(&srv.cli_as(Some(&k1), &["apikey", "delete", kid, "-o", "json"]));
    assert_eq!(srv.call_as(&k2, "GET", "/v1/auth/whoami", None).status, 401);
    srv.call_as(&k1, "DELETE", &format!("/v1/sandboxes/{id}"), None).expect(202);
}
