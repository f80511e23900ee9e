//! Identity and tenancy through a real HTTP server on loopback (the fake backend runs the slots):
//! keys, the `e2b_` alias, JWT, impersonation, and the two-tenant matrix over every endpoint.

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_server::authn::{AuthConfig, RateLimit};
use agentbox_server::engine::{Engine, EngineConfig};
use agentbox_server::http::{AppState, router};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN: &str = "admin-key-for-tests-0123456789";
const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789";

struct Srv {
    base: String,
    http: reqwest::Client,
}

#[derive(Clone)]
enum Who {
    Anonymous,
    Admin,
    Key(String),
    Bearer(String),
    Impersonate(&'static str, &'static str),
}

struct Resp {
    status: StatusCode,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Srv {
    async fn start(cfg: AuthConfig) -> Srv {
        let engine = Engine::new(
            Arc::new(MemoryStore::new()),
            Arc::new(FakeBackend::new()),
            EngineConfig {
                reconcile_interval: Duration::from_millis(20),
                cluster_id: "c1".into(),
                ..Default::default()
            },
        );
        engine.start().await.unwrap();
        let app = router(AppState::with_auth(engine, None, cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Srv { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    async fn default() -> Srv {
        Srv::start(AuthConfig {
            admin_key: Some(ADMIN.into()),
            jwt_secret: Some(JWT_SECRET.into()),
            ..Default::default()
        })
        .await
    }

    async fn call(&self, who: &Who, method: &str, path: &str, body: Option<Value>) -> Resp {
        let mut rb = self.http.request(method.parse().unwrap(), format!("{}{path}", self.base));
        rb = match who {
            Who::Anonymous => rb,
            Who::Admin => rb.header("AGENTBOX-API-KEY", ADMIN),
            Who::Key(k) => rb.header("AGENTBOX-API-KEY", k),
            Who::Bearer(t) => rb.bearer_auth(t),
            Who::Impersonate(t, u) => {
                rb.header("AGENTBOX-API-KEY", ADMIN).header("X-Impersonate-Team", *t).header("X-Impersonate-User", *u)
            }
        };
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, body, headers }
    }

    async fn ok(&self, who: &Who, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let r = self.call(who, method, path, body).await;
        assert_eq!(r.status.as_u16(), want, "{method} {path}: {}", r.body);
        r.body
    }

    async fn key_for(&self, team: &str, user: &str) -> String {
        let v =
            self.ok(&Who::Admin, "POST", "/v1/admin/api-keys", Some(json!({"team": team, "user": user})), 201).await;
        v["apiKey"].as_str().unwrap().to_string()
    }

    async fn wait_idle(&self, who: &Who, pool: &str, n: u64) {
        for _ in 0..500 {
            let v = self.ok(who, "GET", &format!("/v1/sandboxpools/{pool}"), None, 200).await;
            if v["pool"]["status"]["idle"].as_u64() == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("pool {pool} never warmed up");
    }
}

fn pool_body(name: &str) -> Value {
    json!({"name": name, "templateName": "tpl", "replicas": 2, "podCreationImagePolicy": "PoolDefaultImage"})
}

/// An HS256 token; `exp` defaults to ten minutes from now (`"exp": null` leaves it out).
fn jwt(mut claims: Value, secret: &str) -> String {
    match claims.get("exp") {
        None => claims["exp"] = json!(chrono::Utc::now().timestamp() + 600),
        Some(Value::Null) => {
            claims.as_object_mut().unwrap().remove("exp");
        }
        Some(_) => {}
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn credentials_are_required_and_checked() {
    let s = Srv::default().await;
    let r = s.call(&Who::Anonymous, "GET", "/v1/sandboxes", None).await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"].as_str().unwrap().contains("AGENTBOX-API-KEY"), "{}", r.body);
    assert_eq!(s.call(&Who::Key("agbx_nope".into()), "GET", "/v1/sandboxes", None).await.status, 401);
    let forged = format!("agbx_{}", "ab".repeat(32));
    assert_eq!(s.call(&Who::Key(forged), "GET", "/v1/sandboxes", None).await.status, 401);
    // Unauthenticated routes stay open.
    assert_eq!(s.call(&Who::Anonymous, "GET", "/ping", None).await.status, 200);
    assert_eq!(s.call(&Who::Anonymous, "GET", "/openapi.json", None).await.status, 200);
    let who = s.ok(&Who::Admin, "GET", "/v1/auth/whoami", None, 200).await;
    assert_eq!((who["role"].as_str(), who["authMethod"].as_str()), (Some("admin"), Some("admin-key")));
}

#[tokio::test]
async fn keys_self_service_recovery_alias_expiry_and_deletion() {
    let s = Srv::default().await;
    let k1 = s.key_for("red", "alice").await;
    let alice = Who::Key(k1.clone());
    let who = s.ok(&alice, "GET", "/v1/auth/whoami", None, 200).await;
    assert_eq!(who["namespace"], "t-red-alice");
    assert_eq!(who["role"], "tenant");
    // The e2b_ alias is the same key.
    let alias = Who::Key(format!("e2b_{}", &k1[5..]));
    assert_eq!(s.ok(&alias, "GET", "/v1/auth/whoami", None, 200).await["user"], "alice");
    // Self-service: create, list with the recoverable raw token.
    let exp = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let created = s.ok(&alice, "POST", "/v1/api-keys", Some(json!({"description": "ci", "expiresAt": exp})), 201).await;
    let k2 = created["apiKey"].as_str().unwrap().to_string();
    assert!(k2.starts_with("agbx_") && k2.len() == 69);
    assert_eq!(created["team"], "red");
    let list = s.ok(&alice, "GET", "/v1/api-keys", None, 200).await;
    assert_eq!(list["total"], 2);
    let raws: Vec<&str> = list["items"].as_array().unwrap().iter().filter_map(|k| k["rawToken"].as_str()).collect();
    assert!(raws.contains(&k1.as_str()) && raws.contains(&k2.as_str()), "{list}");
    // Bad input.
    let r = s.call(&alice, "POST", "/v1/api-keys", Some(json!({"expiresAt": "2001-01-01T00:00:00Z"}))).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("future"));
    assert_eq!(s.call(&alice, "POST", "/v1/api-keys", Some(json!({"expiresAt": "tomorrow"}))).await.status, 400);
    // The bare admin owns no keys.
    assert_eq!(s.call(&Who::Admin, "POST", "/v1/api-keys", Some(json!({}))).await.status, 400);
    // Expiry: the second key stops working once expired.
    let short = Who::Key(k2.clone());
    s.ok(&short, "GET", "/v1/auth/whoami", None, 200).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = s.call(&short, "GET", "/v1/auth/whoami", None).await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"].as_str().unwrap().contains("expired"), "{}", r.body);
    // Another tenant may not delete alice's key; alice may.
    let bob = Who::Key(s.key_for("blue", "bob").await);
    let kid = created["keyId"].as_str().unwrap();
    assert_eq!(s.call(&bob, "DELETE", &format!("/v1/api-keys/{kid}"), None).await.status, 403);
    let v = s.ok(&alice, "DELETE", &format!("/v1/api-keys/{kid}"), None, 200).await;
    assert_eq!(v["status"], "Deleted");
    assert_eq!(s.call(&alice, "DELETE", &format!("/v1/api-keys/{kid}"), None).await.status, 404);
    // Deleting the key in use revokes it at once (the lookup cache is invalidated).
    let k1_id = s.ok(&alice, "GET", "/v1/api-keys", None, 200).await["items"][0]["keyId"].as_str().unwrap().to_string();
    s.ok(&Who::Admin, "DELETE", &format!("/v1/admin/api-keys/{k1_id}"), None, 200).await;
    assert_eq!(s.call(&alice, "GET", "/v1/auth/whoami", None).await.status, 401);
}

#[tokio::test]
async fn admin_keys_import_by_hash_is_idempotent() {
    let s = Srv::default().await;
    let token = format!("agbx_{}", "5a".repeat(32));
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    let body = json!({"team": "t", "user": "u", "tokenHash": hash, "hashPrefix": &hash[..16],
        "issuedAt": "2025-01-02T03:04:05Z"});
    let a = s.ok(&Who::Admin, "POST", "/v1/admin/api-keys", Some(body.clone()), 201).await;
    let b = s.ok(&Who::Admin, "POST", "/v1/admin/api-keys", Some(body), 201).await;
    assert_eq!(a["keyId"], b["keyId"]);
    assert_eq!(a["apiKey"], "");
    assert_eq!(a["syncSource"], "global");
    assert_eq!(a["issuedAt"], "2025-01-02T03:04:05Z");
    let all = s.ok(&Who::Admin, "GET", "/v1/admin/api-keys", None, 200).await;
    assert_eq!(all["total"], 1);
    assert!(all["items"][0].get("rawToken").is_none());
    // The imported key authenticates.
    assert_eq!(s.ok(&Who::Key(token), "GET", "/v1/auth/whoami", None, 200).await["user"], "u");
    let bad = json!({"team": "t", "user": "u", "tokenHash": "xyz", "hashPrefix": "xyz"});
    assert_eq!(s.call(&Who::Admin, "POST", "/v1/admin/api-keys", Some(bad)).await.status, 400);
    let unknown = json!({"team": "t", "user": "u", "nope": 1});
    assert_eq!(s.call(&Who::Admin, "POST", "/v1/admin/api-keys", Some(unknown)).await.status, 400);
}

#[tokio::test]
async fn jwt_callers_and_impersonation() {
    let s = Srv::default().await;
    let t = jwt(json!({"sub": "carol", "team": "green", "email": "c@x.io", "name": "Carol"}), JWT_SECRET);
    let carol = Who::Bearer(t);
    let who = s.ok(&carol, "GET", "/v1/auth/whoami", None, 200).await;
    assert_eq!((who["user"].as_str(), who["team"].as_str()), (Some("carol"), Some("green")));
    assert_eq!((who["authMethod"].as_str(), who["email"].as_str()), (Some("jwt"), Some("c@x.io")));
    assert_eq!(who["namespace"], "t-green-carol");
    let forged = Who::Bearer(jwt(json!({"sub": "carol", "team": "green", "role": "admin"}), "wrong-secret-xxxxxxxx"));
    assert_eq!(s.call(&forged, "GET", "/v1/auth/whoami", None).await.status, 401);
    let expired = Who::Bearer(jwt(json!({"sub": "carol", "team": "green", "exp": 1000}), JWT_SECRET));
    assert_eq!(s.call(&expired, "GET", "/v1/auth/whoami", None).await.status, 401);
    let forever = Who::Bearer(jwt(json!({"sub": "root", "role": "admin", "exp": null}), JWT_SECRET));
    assert_eq!(s.call(&forever, "GET", "/v1/auth/whoami", None).await.status, 401, "a JWT without exp is refused");
    let admin_jwt = Who::Bearer(jwt(json!({"sub": "root", "role": "admin"}), JWT_SECRET));
    assert_eq!(s.ok(&admin_jwt, "GET", "/v1/admin/api-keys", None, 200).await["total"], 0);
    // A JWT user without an api key cannot create pools (API_KEY_REQUIRED) until it makes one.
    s.ok(&Who::Admin, "POST", "/v1/admin/sandbox-templates", Some(template("tpl", None, "")), 201).await;
    let r = s.call(&carol, "POST", "/v1/sandboxpools", Some(pool_body("cp"))).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errorCode"], "API_KEY_REQUIRED");
    s.ok(&carol, "POST", "/v1/api-keys", Some(json!({})), 201).await;
    s.ok(&carol, "POST", "/v1/sandboxpools", Some(pool_body("cp")), 201).await;
    // Impersonation: the admin acts as carol and sees exactly her pools; one header alone is ignored.
    let imp = Who::Impersonate("green", "carol");
    let who = s.ok(&imp, "GET", "/v1/auth/whoami", None, 200).await;
    assert_eq!((who["user"].as_str(), who["role"].as_str()), (Some("carol"), Some("tenant")));
    assert_eq!(s.ok(&imp, "GET", "/v1/sandboxpools", None, 200).await["total"], 1);
    assert_eq!(s.call(&imp, "GET", "/v1/admin/api-keys", None).await.status, 403);
    let one = s
        .http
        .get(format!("{}/v1/auth/whoami", s.base))
        .header("AGENTBOX-API-KEY", ADMIN)
        .header("X-Impersonate-Team", "green")
        .send()
        .await
        .unwrap();
    assert_eq!(one.json::<Value>().await.unwrap()["role"], "admin");
}

fn template(name: &str, visible_team: Option<&str>, docs: &str) -> Value {
    let mut spec = json!({
        "version": "1.0.0", "description": format!("{name} template"), "docs": docs,
        "idleImage": "pause", "containers": [{"name": "main", "image": "host"}],
    });
    if let Some(t) = visible_team {
        spec["visibility"] = json!({"rules": [{"team": t}]});
    }
    json!({"name": name, "spec": spec})
}

/// Two tenants and an admin against every endpoint: each tenant sees and changes only its own
/// objects (404 for the other's), admin-only routes answer 403 to tenants, the admin sees all.
#[tokio::test]
async fn two_tenant_matrix() {
    let s = Srv::default().await;
    let admin = Who::Admin;
    s.ok(&admin, "POST", "/v1/admin/sandbox-templates", Some(template("tpl", None, "")), 201).await;
    let docs = "Pool ${AGBX_POOL_NAME} on ${AGBX_CLUSTER_ID}: export KEY=${AGBX_API_KEY}";
    s.ok(&admin, "POST", "/v1/admin/sandbox-templates", Some(template("red-only", Some("red"), docs)), 201).await;
    let a_key = s.key_for("red", "alice").await;
    let b_key = s.key_for("blue", "bob").await;
    let a = Who::Key(a_key.clone());
    let b = Who::Key(b_key.clone());

    // Pools: each tenant its own, and the same name in both namespaces does not collide.
    for (who, name) in [(&a, "pa"), (&b, "pb"), (&a, "same"), (&b, "same")] {
        s.ok(who, "POST", "/v1/sandboxpools", Some(pool_body(name)), 201).await;
    }
    s.wait_idle(&a, "pa", 2).await;
    s.wait_idle(&b, "pb", 2).await;
    let names = |v: &Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&s.ok(&a, "GET", "/v1/sandboxpools", None, 200).await), ["pa", "same"]);
    assert_eq!(names(&s.ok(&b, "GET", "/v1/sandboxpools", None, 200).await), ["pb", "same"]);
    assert_eq!(s.ok(&admin, "GET", "/v1/sandboxpools", None, 200).await["total"], 4);
    for (m, p, body) in [
        ("GET", "/v1/sandboxpools/pb", None),
        ("PUT", "/v1/sandboxpools/pb", Some(json!({"replicas": 3}))),
        ("DELETE", "/v1/sandboxpools/pb", None),
        ("POST", "/v1/sandboxpools/pb/sync-template", None),
        ("POST", "/v1/sandboxpools/pb/sync-template/preview", None),
    ] {
        let r = s.call(&a, m, p, body).await;
        assert_eq!(r.status, 404, "alice {m} {p}: {}", r.body);
        // The same operation on her own pool works (the 404 above is about ownership, not the route).
        if m != "DELETE" {
            let own = p.replace("/pb", "/pa");
            let r = s.call(&a, m, &own, if m == "PUT" { Some(json!({"replicas": 2})) } else { None }).await;
            assert_eq!(r.status, 200, "alice {m} {own}: {}", r.body);
        }
    }
    // A pool of red-only template: visible to red, not to blue (404 + availableTemplates without it).
    let mut rp = pool_body("docs");
    rp["templateName"] = json!("red-only");
    s.ok(&a, "POST", "/v1/sandboxpools", Some(rp.clone()), 201).await;
    let r = s.call(&b, "POST", "/v1/sandboxpools", Some(rp)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let avail: Vec<&str> = r.body["detail"]["availableTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(avail, ["tpl"]);
    // Pool docs rendered for alice with her own key.
    let v = s.ok(&a, "GET", "/v1/sandboxpools/docs", None, 200).await;
    assert_eq!(v["pool"]["poolDocs"], format!("Pool docs on c1: export KEY={a_key}"));

    // Templates: visibility on list and get.
    let tnames = |v: &Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(tnames(&s.ok(&a, "GET", "/v1/sandbox-templates", None, 200).await), ["red-only", "tpl"]);
    assert_eq!(tnames(&s.ok(&b, "GET", "/v1/sandbox-templates", None, 200).await), ["tpl"]);
    assert_eq!(s.call(&b, "GET", "/v1/sandbox-templates/red-only", None).await.status, 404);
    s.ok(&a, "GET", "/v1/sandbox-templates/red-only", None, 200).await;

    // Sandboxes.
    let sa = s.ok(&a, "POST", "/v1/sandboxes", Some(json!({"poolName": "pa"})), 201).await;
    let sb = s.ok(&b, "POST", "/v1/sandboxes", Some(json!({"poolName": "pb"})), 201).await;
    let ida = sa["sandbox"]["sandboxId"].as_str().unwrap().to_string();
    let idb = sb["sandbox"]["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(
        (sa["sandbox"]["team"].as_str(), sa["sandbox"]["namespace"].as_str()),
        (Some("red"), Some("t-red-alice"))
    );
    // Claiming from the other tenant's pool: 404 with only the caller's pools listed.
    let r = s.call(&a, "POST", "/v1/sandboxes", Some(json!({"poolName": "pb"}))).await;
    assert_eq!(r.status, 404);
    let pools: Vec<&str> =
        r.body["detail"]["availablePools"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(pools, ["docs", "pa", "same"]);
    let ids = |v: &Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|p| p["sandboxId"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&s.ok(&a, "GET", "/v1/sandboxes", None, 200).await), std::slice::from_ref(&ida));
    assert_eq!(ids(&s.ok(&b, "GET", "/v1/sandboxes", None, 200).await), std::slice::from_ref(&idb));
    assert_eq!(s.ok(&admin, "GET", "/v1/sandboxes", None, 200).await["total"], 2);
    assert_eq!(s.ok(&admin, "GET", "/v1/sandboxes?team=red&user=alice", None, 200).await["total"], 1);
    // Tenants cannot widen their scope with team/user filters.
    assert_eq!(ids(&s.ok(&a, "GET", "/v1/sandboxes?team=blue&user=bob", None, 200).await), std::slice::from_ref(&ida));
    for (m, p, body) in [
        ("GET", format!("/v1/sandboxes/{idb}"), None),
        ("POST", format!("/v1/sandboxes/{idb}/exec"), Some(json!({"command": "true"}))),
        ("GET", format!("/v1/sandboxes/{idb}/logs"), None),
        ("GET", format!("/v1/sandboxes/{idb}/logs/stream"), None),
        ("PUT", format!("/v1/sandboxes/{idb}/timeout"), Some(json!({"timeout": "5m"}))),
        ("GET", format!("/v1/sandboxes/{idb}/is_ready"), None),
        ("POST", format!("/v1/sandboxes/{idb}/exec-token"), None),
        ("DELETE", format!("/v1/sandboxes/{idb}"), None),
    ] {
        let r = s.call(&a, m, &p, body).await;
        assert_eq!(r.status, 404, "alice {m} {p}: {}", r.body);
    }
    s.ok(&admin, "GET", &format!("/v1/sandboxes/{ida}"), None, 200).await;
    s.ok(&admin, "GET", &format!("/v1/sandboxes/{idb}"), None, 200).await;
    s.ok(&b, "POST", &format!("/v1/sandboxes/{idb}/exec"), Some(json!({"command": "true"})), 200).await;

    // Statistics are scoped too.
    let st = s.ok(&a, "GET", "/v1/statistics/sandboxes", None, 200).await;
    assert_eq!(st["statistics"]["total"], 1);
    assert_eq!(st["statistics"]["namespace"], "t-red-alice");
    let st = s.ok(&admin, "GET", "/v1/admin/statistics/sandboxes", None, 200).await;
    assert_eq!(st["statistics"]["total"], 2);
    assert_eq!(st["statistics"]["byNamespace"]["t-blue-bob"]["Running"], 1);
    let st = s.ok(&admin, "GET", "/v1/admin/statistics/sandboxpools", None, 200).await;
    assert_eq!(st["statistics"]["total"], 5);
    assert_eq!(s.ok(&admin, "GET", "/v1/admin/teams", None, 200).await["items"], json!(["blue", "red"]));
    assert_eq!(s.ok(&admin, "GET", "/v1/admin/teams/red/users", None, 200).await["items"], json!(["alice"]));
    let ns = s.ok(&admin, "GET", "/v1/admin/namespaces", None, 200).await;
    assert_eq!(ns["items"], json!(["default", "t-blue-bob", "t-red-alice"]));
    let cl = s.ok(&a, "GET", "/v1/clusters", None, 200).await;
    assert_eq!(cl["clusters"], json!([{"id": "c1", "name": "c1", "local": true}]));

    // Keys: each tenant lists only its own; the admin lists all.
    assert_eq!(s.ok(&a, "GET", "/v1/api-keys", None, 200).await["total"], 1);
    assert_eq!(s.ok(&admin, "GET", "/v1/admin/api-keys", None, 200).await["total"], 2);

    // Admin-only routes: 403 for tenants.
    for (m, p, body) in [
        ("GET", "/v1/admin/api-keys", None),
        ("POST", "/v1/admin/api-keys", Some(json!({"team": "red", "user": "mallory"}))),
        ("DELETE", "/v1/admin/api-keys/agbx-0000000000000000", None),
        ("POST", "/v1/admin/sandbox-templates", Some(template("evil", None, ""))),
        ("PUT", "/v1/admin/sandbox-templates/tpl", Some(template("tpl", None, ""))),
        ("DELETE", "/v1/admin/sandbox-templates/tpl", None),
        ("GET", "/v1/admin/statistics/sandboxes", None),
        ("GET", "/v1/admin/statistics/sandboxpools", None),
        ("GET", "/v1/admin/teams", None),
        ("GET", "/v1/admin/teams/red/users", None),
        ("GET", "/v1/admin/namespaces", None),
        ("GET", "/v1/admin/quotas", None),
        ("POST", "/v1/admin/images", None),
    ] {
        let r = s.call(&b, m, p, body).await;
        assert_eq!(r.status, 403, "bob {m} {p}: {}", r.body);
    }

    // Deleting: each tenant its own.
    s.ok(&a, "DELETE", &format!("/v1/sandboxes/{ida}"), None, 202).await;
    s.ok(&b, "DELETE", "/v1/sandboxpools/same", None, 202).await;
    s.ok(&a, "GET", "/v1/sandboxpools/same", None, 200).await;
}

#[tokio::test]
async fn pool_docs_need_a_recoverable_key() {
    let s = Srv::default().await;
    let docs = "key: ${AGBX_API_KEY}";
    s.ok(&Who::Admin, "POST", "/v1/admin/sandbox-templates", Some(template("tpl", None, docs)), 201).await;
    // An imported key (no raw token here) lets dave create a pool but not read docs with his key.
    let token = format!("agbx_{}", "7c".repeat(32));
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    let body = json!({"team": "t", "user": "dave", "tokenHash": hash, "hashPrefix": &hash[..16]});
    s.ok(&Who::Admin, "POST", "/v1/admin/api-keys", Some(body), 201).await;
    let dave = Who::Key(token);
    s.ok(&dave, "POST", "/v1/sandboxpools", Some(pool_body("p")), 201).await;
    let r = s.call(&dave, "GET", "/v1/sandboxpools/p", None).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errorCode"], "API_KEY_REQUIRED");
    let k = s.ok(&dave, "POST", "/v1/api-keys", Some(json!({})), 201).await["apiKey"].as_str().unwrap().to_string();
    let v = s.ok(&dave, "GET", "/v1/sandboxpools/p", None, 200).await;
    assert_eq!(v["pool"]["poolDocs"], format!("key: {k}"));
}

#[tokio::test]
async fn old_clients_are_told_to_upgrade() {
    let s = Srv::start(AuthConfig {
        admin_key: Some(ADMIN.into()),
        min_client_version: semver::Version::new(2, 0, 0),
        ..Default::default()
    })
    .await;
    let r = s
        .http
        .post(format!("{}/v1/api-keys", s.base))
        .header("AGENTBOX-API-KEY", ADMIN)
        .header("X-AgentBox-Client-Version", "1.9.0")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("upgrade"), "{v}");
    assert_eq!(v["detail"]["minClientVersion"], "2.0.0");
    // Reads are not checked.
    assert_eq!(s.call(&Who::Admin, "GET", "/v1/sandboxes", None).await.status, 200);
}

#[tokio::test]
async fn rate_limit_refuses_with_retry_after() {
    let s = Srv::start(AuthConfig {
        admin_key: Some(ADMIN.into()),
        rate_limit: Some(RateLimit { per_second: 1, burst: 3 }),
        ..Default::default()
    })
    .await;
    let alice = Who::Key(s.key_for("red", "alice").await);
    let bob = Who::Key(s.key_for("blue", "bob").await);
    let mut statuses = vec![];
    let mut refused = None;
    for _ in 0..6 {
        let r = s.call(&alice, "GET", "/v1/sandboxes", None).await;
        statuses.push(r.status.as_u16());
        if r.status == 429 {
            refused = Some(r);
        }
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    let r = refused.expect("the burst of 3 was exceeded without a 429");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert!(r.body["error"].as_str().unwrap().contains("rate limit"));
    // Another user has its own bucket; the admin key is not limited.
    assert_eq!(s.call(&bob, "GET", "/v1/sandboxes", None).await.status, 200);
    for _ in 0..5 {
        assert_eq!(s.call(&Who::Admin, "GET", "/v1/sandboxes", None).await.status, 200);
    }
}

/// Inputs that once crashed a handler (found in review): each is a clear 400 now.
#[tokio::test]
async fn hostile_bodies_are_refused_with_400() {
    let s = Srv::default().await;
    let admin = Who::Admin;
    let inline = |containers: Value| json!({"idleImage": "pause", "containers": containers});
    let cases = [
        ("/v1/sandboxpools", json!({"name": "x", "template": inline(json!([])), "overrides": {"image": "host"}})),
        (
            "/v1/sandboxpools",
            json!({"name": "x", "template": inline(json!([
            {"name": "a", "image": "host", "resources": {"limits": {"cpu": "18446744073709551615m"}}},
            {"name": "b", "image": "host", "resources": {"limits": {"cpu": "18446744073709551615m"}}}]))}),
        ),
        (
            "/v1/sandboxpools",
            json!({"name": "x", "overrides": {"resourceMultiplier": 2}, "template": inline(json!([
            {"name": "a", "image": "host", "resources": {"requests": {"memory": "9223372036854775808"}}}]))}),
        ),
        (
            "/v1/sandboxpools",
            json!({"name": "x", "template": inline(json!([{"name": "a", "image": "host"}])),
            "defaultStartupTimeout": 18446744073709551615u64}),
        ),
        ("/v1/sandboxes", json!({"poolName": "p", "startupTimeout": 18446744073709551615u64})),
        ("/v1/sandboxes", json!({"poolName": "p", "idleTimeout": "99999999999h"})),
    ];
    for (path, body) in cases {
        let r = s.call(&admin, "POST", path, Some(body.clone())).await;
        assert_eq!(r.status, 400, "POST {path} {body}: {}", r.body);
        assert!(r.body["error"].is_string(), "{}", r.body);
    }
    // A huge JSON body is refused before it is buffered.
    let big = "x".repeat(17 << 20);
    let r = s.call(&admin, "POST", "/v1/sandboxes", Some(json!({"poolName": big}))).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("too large"), "{}", r.body);
}

/// Admins reach any tenant's pool by name; the same name in two namespaces asks them to impersonate.
#[tokio::test]
async fn admins_reach_tenant_pools_by_name() {
    let s = Srv::default().await;
    s.ok(&Who::Admin, "POST", "/v1/admin/sandbox-templates", Some(template("tpl", None, "")), 201).await;
    let a = Who::Key(s.key_for("red", "alice").await);
    let b = Who::Key(s.key_for("blue", "bob").await);
    s.ok(&a, "POST", "/v1/sandboxpools", Some(pool_body("only-a")), 201).await;
    let v = s.ok(&Who::Admin, "GET", "/v1/sandboxpools/only-a", None, 200).await;
    assert_eq!(v["pool"]["namespace"], "t-red-alice");
    s.ok(&Who::Admin, "PUT", "/v1/sandboxpools/only-a", Some(json!({"replicas": 1})), 200).await;
    s.ok(&a, "POST", "/v1/sandboxpools", Some(pool_body("both")), 201).await;
    s.ok(&b, "POST", "/v1/sandboxpools", Some(pool_body("both")), 201).await;
    let r = s.call(&Who::Admin, "GET", "/v1/sandboxpools/both", None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("X-Impersonate-Team"), "{}", r.body);
    let v = s.ok(&Who::Impersonate("blue", "bob"), "GET", "/v1/sandboxpools/both", None, 200).await;
    assert_eq!(v["pool"]["namespace"], "t-blue-bob");
    s.ok(&Who::Admin, "DELETE", "/v1/sandboxpools/only-a", None, 202).await;
}

/// Tenants whose names sanitise alike still get their own namespaces (no shared pool names).
#[tokio::test]
async fn look_alike_tenants_do_not_share_a_namespace() {
    let s = Srv::default().await;
    s.ok(&Who::Admin, "POST", "/v1/admin/sandbox-templates", Some(template("tpl", None, "")), 201).await;
    let one = Who::Key(s.key_for("a-b", "c").await);
    let two = Who::Key(s.key_for("a", "b-c").await);
    let ns1 = s.ok(&one, "GET", "/v1/auth/whoami", None, 200).await["namespace"].clone();
    let ns2 = s.ok(&two, "GET", "/v1/auth/whoami", None, 200).await["namespace"].clone();
    assert_ne!(ns1, ns2);
    s.ok(&one, "POST", "/v1/sandboxpools", Some(pool_body("secret-pool")), 201).await;
    s.ok(&two, "POST", "/v1/sandboxpools", Some(pool_body("secret-pool")), 201).await;
    // Importing a known hash for another owner is a conflict, not someone else's key.
    let token = format!("agbx_{}", "3d".repeat(32));
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    let body = |team: &str| json!({"team": team, "user": "u", "tokenHash": hash, "hashPrefix": &hash[..16]});
    s.ok(&Who::Admin, "POST", "/v1/admin/api-keys", Some(body("red")), 201).await;
    assert_eq!(s.call(&Who::Admin, "POST", "/v1/admin/api-keys", Some(body("blue"))).await.status, 409);
}
