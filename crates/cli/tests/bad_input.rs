//! Bad input gets a 4xx with a JSON `error` message that says what is wrong, never a 5xx.

mod common;

use common::{Opts, Resp, Server};
use serde_json::{Value, json};

#[track_caller]
fn assert_client_error(what: &str, r: &Resp, status: u16, needle: &str) {
    assert!(r.status < 500, "{what}: server error {} {}", r.status, r.text);
    assert_eq!(r.status, status, "{what}: body {}", r.text);
    let msg = r.body["error"].as_str().unwrap_or_else(|| panic!("{what}: no JSON `error` in {}", r.text));
    assert!(!msg.is_empty(), "{what}: empty error");
    assert!(msg.to_lowercase().contains(&needle.to_lowercase()), "{what}: error {msg:?} should mention {needle:?}");
}

fn template_body(name: &str, version: &str) -> Value {
    let mut spec = common::host_template();
    spec["version"] = json!(version);
    spec["description"] = json!("e2e");
    json!({ "name": name, "spec": spec })
}

#[test]
fn bad_input_is_a_client_error() {
    if common::skip_unless_root("bad_input_is_a_client_error") {
        return;
    }
    let srv = Server::start(Opts::new(6));
    srv.create_pool(&json!({"name": "ok", "template": common::host_template(), "replicas": 1}));
    srv.wait_pool_idle("ok", 1);

    // Bodies.
    let r = srv.post_raw("/v1/sandboxes", "application/json", "{\"poolName\": ");
    assert_client_error("malformed JSON", &r, 400, "invalid request body");
    let r = srv.post_raw("/v1/sandboxes", "text/plain", "{\"poolName\": \"ok\"}");
    assert_client_error("wrong content type", &r, 400, "application/json");
    let r = srv.post("/v1/sandboxes", &json!({"poolName": "ok", "colour": "blue"}));
    assert_client_error("unknown field", &r, 400, "colour");
    let r = srv.post("/v1/sandboxes", &json!({"image": "host"}));
    assert_client_error("missing poolName", &r, 400, "poolName");
    let r = srv.post("/v1/sandboxes", &json!({"poolName": ""}));
    assert_client_error("empty poolName", &r, 400, "poolName");

    // Unknown pool: 404 listing the pools that exist.
    let r = srv.post("/v1/sandboxes", &json!({"poolName": "nope"}));
    assert_client_error("unknown pool", &r, 404, "nope");
    let avail =
        r.body["detail"]["availablePools"].as_array().unwrap_or_else(|| panic!("no detail.availablePools: {}", r.text));
    assert!(avail.iter().any(|p| p["name"] == "ok"), "availablePools lacks `ok`: {}", r.text);

    // Claim options.
    let r = srv.post("/v1/sandboxes", &json!({"poolName": "ok", "image": "pause"}));
    assert_client_error("image = idle image", &r, 400, "idle image");
    let r = srv.post("/v1/sandboxes", &json!({"poolName": "ok", "startupTimeout": "soon"}));
    assert_client_error("bad duration", &r, 400, "soon");
    let r = srv.post("/v1/sandboxes", &json!({"poolName": "ok", "image": "Not A Valid Ref!"}));
    assert_client_error("bad image reference", &r, 400, "image");
    let r = srv.post("/v1/sandboxes", &json!({"poolName": "ok", "containerImages": {"sidecar": "host"}}));
    assert_client_error("unknown container in containerImages", &r, 400, "sidecar");
    // None of those took the only slot.
    assert_eq!(srv.pool("ok")["status"]["idle"], 1, "a rejected claim consumed a slot");

    // Exec.
    let sb = srv.claim(&json!({"poolName": "ok"}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    let exec = |body: Value| srv.post(&format!("/v1/sandboxes/{id}/exec"), &body);
    assert_client_error("empty command string", &exec(json!({"command": ""})), 400, "command");
    assert_client_error("empty command list", &exec(json!({"command": []})), 400, "command");
    assert_client_error("missing command", &exec(json!({})), 400, "command");
    assert_client_error(
        "timeoutSeconds 0",
        &exec(json!({"command": "true", "timeoutSeconds": 0})),
        400,
        "timeoutSeconds",
    );
    assert_client_error(
        "timeoutSeconds 301",
        &exec(json!({"command": "true", "timeoutSeconds": 301})),
        400,
        "timeoutSeconds",
    );
    assert_client_error("relative cwd", &exec(json!({"command": "true", "cwd": "tmp"})), 400, "cwd");
    assert_client_error("bad user", &exec(json!({"command": "true", "user": "root"})), 400, "user");
    let r = srv.post("/v1/sandboxes/00000000-0000-0000-0000-000000000000/exec", &json!({"command": "true"}));
    assert_client_error("exec on unknown sandbox", &r, 404, "not found");
    let r = srv.get("/v1/sandboxes/00000000-0000-0000-0000-000000000000");
    assert_client_error("get unknown sandbox", &r, 404, "not found");
    let r = srv.delete("/v1/sandboxes/00000000-0000-0000-0000-000000000000");
    assert_client_error("delete unknown sandbox", &r, 404, "not found");
    // A command that does not exist is the command's failure, not the API's.
    let r = exec(json!({"command": ["/no/such/binary"]}));
    assert!(r.status < 500, "exec of a missing binary: {} {}", r.status, r.text);
    if r.status == 200 {
        assert_ne!(r.body["exitCode"], 0, "{}", r.text);
    }
    // The sandbox still works after all that.
    assert_eq!(srv.sh_ok(&id, "echo fine"), "fine\n");
    srv.release_and_wait(&id);

    // Pools.
    let r = srv.post("/v1/sandboxpools", &json!({"name": "Bad_Name", "template": common::host_template()}));
    assert_client_error("pool name Bad_Name", &r, 400, "name");
    let r = srv.post("/v1/sandboxpools", &json!({"name": "ok", "template": common::host_template()}));
    assert_client_error("duplicate pool", &r, 409, "already exists");
    let r = srv.post("/v1/sandboxpools", &json!({"name": "nothing"}));
    assert_client_error("pool without template", &r, 400, "template");
    let r = srv.post("/v1/sandboxpools", &json!({"name": "ghost", "templateName": "ghost"}));
    assert_client_error("pool from unknown template", &r, 400, "ghost");
    let r = srv.post(
        "/v1/sandboxpools",
        &json!({"name": "same", "template": {"idleImage": "host", "containers": [{"name": "main", "image": "host"}]}}),
    );
    assert!(r.status == 400, "idle image = workload image must be rejected: {} {}", r.status, r.text);
    let r = srv
        .post("/v1/sandboxpools", &json!({"name": "huge", "template": common::host_template(), "replicas": 1_000_000}));
    assert_client_error("replicas too large", &r, 400, "replicas");
    let r = srv.put("/v1/sandboxpools/ok", &json!({}));
    assert_client_error("empty pool update", &r, 400, "nothing to update");
    let r = srv.put("/v1/sandboxpools/missing", &json!({"replicas": 2}));
    assert_client_error("update unknown pool", &r, 404, "not found");
    let r = srv.get("/v1/sandboxpools/missing");
    assert_client_error("get unknown pool", &r, 404, "not found");

    // Templates: version must increase, stale resourceVersion is a conflict.
    let t = srv.post("/v1/admin/sandbox-templates", &template_body("tpl", "1.0.0")).expect(201);
    let rv = t["template"]["resourceVersion"].as_u64().expect("resourceVersion");
    let r = srv.post("/v1/admin/sandbox-templates", &template_body("tpl", "1.0.0"));
    assert_client_error("duplicate template", &r, 409, "already exists");
    let same = json!({"spec": template_body("tpl", "1.0.0")["spec"], "resourceVersion": rv});
    assert_client_error("same version", &srv.put("/v1/admin/sandbox-templates/tpl", &same), 400, "version");
    let lower = json!({"spec": template_body("tpl", "0.9.0")["spec"]});
    assert_client_error("lower version", &srv.put("/v1/admin/sandbox-templates/tpl", &lower), 400, "version");
    let bad = json!({"spec": template_body("tpl", "one")["spec"]});
    assert_client_error("non-semver version", &srv.put("/v1/admin/sandbox-templates/tpl", &bad), 400, "version");
    let ok = json!({"spec": template_body("tpl", "1.1.0")["spec"], "resourceVersion": rv});
    let t2 = srv.put("/v1/admin/sandbox-templates/tpl", &ok).expect(200);
    assert_eq!(t2["template"]["spec"]["version"], "1.1.0");
    let stale = json!({"spec": template_body("tpl", "1.2.0")["spec"], "resourceVersion": rv});
    assert_client_error(
        "stale resourceVersion",
        &srv.put("/v1/admin/sandbox-templates/tpl", &stale),
        409,
        "resourceVersion",
    );
    let r = srv.post("/v1/admin/sandbox-templates", &template_body("Bad_Tpl", "1.0.0"));
    assert_client_error("template name Bad_Tpl", &r, 400, "name");

    // Routes and query strings.
    assert_client_error("unknown route", &srv.get("/v1/nothing-here"), 404, "no such route");
    assert_client_error("limit=0", &srv.get("/v1/sandboxes?limit=0"), 400, "limit");
    assert_client_error("limit=abc", &srv.get("/v1/sandboxes?limit=abc"), 400, "invalid query");

    // Image import of garbage.
    let r = srv.post_raw("/v1/admin/images", "application/x-tar", "this is not a tar archive");
    assert!(r.status == 400, "garbage image upload: {} {}", r.status, r.text);
    assert!(r.body["error"].is_string(), "{}", r.text);

    // The server is still healthy.
    assert_eq!(srv.get("/ping").expect(200)["status"], "ok");
    srv.wait_pool_idle("ok", 1);
}
