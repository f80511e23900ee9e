//! The mocked Kubernetes API server shared by the scenario tests (`tower_test::mock`): a test
//! scripts the answers, then asserts the exact requests the code under test sent.
#![allow(dead_code)] // each test binary uses a part

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

/// One expected request and the answer to give.
pub struct Step {
    pub method: &'static str,
    /// Exact path, or a prefix followed by `*`.
    pub path: String,
    /// Substrings the (percent-decoded) query must contain.
    pub query: Vec<&'static str>,
    pub status: u16,
    pub answer: Value,
}

pub fn step(method: &'static str, path: impl Into<String>, status: u16, answer: Value) -> Step {
    Step { method, path: path.into(), query: vec![], status, answer }
}

/// A request as the mock received it.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

pub fn decode(q: &str) -> String {
    q.replace("%2F", "/").replace("%3D", "=").replace("%2C", ",")
}

/// A client whose API server answers `steps` in order; the handle yields what it received. A
/// request that does not match the next step fails the test (with what was expected).
pub fn mock(steps: Vec<Step>) -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for s in steps {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("the backend stopped before {} {} (seen: {seen:#?})", s.method, s.path));
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let query = decode(parts.uri.query().unwrap_or_default());
            // A path ending in `*` matches by prefix (names the code generates).
            let path_ok = match s.path.strip_suffix('*') {
                Some(prefix) => parts.uri.path().starts_with(prefix),
                None => parts.uri.path() == s.path,
            };
            assert!(
                parts.method.as_str() == s.method && path_ok,
                "unexpected request {} {} (query {query}), expected {} {}; seen so far: {seen:#?}",
                parts.method,
                parts.uri.path(),
                s.method,
                s.path
            );
            for q in &s.query {
                assert!(query.contains(q), "query {query:?} of {} {} lacks {q:?}", s.method, s.path);
            }
            seen.push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: query.clone(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body: if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() },
            });
            // A string answer is sent as plain text (e.g. `pods/log`), anything else as JSON.
            let resp = match &s.answer {
                Value::String(text) => Response::builder()
                    .status(s.status)
                    .header("content-type", "text/plain")
                    .body(Body::from(text.clone().into_bytes())),
                other => Response::builder()
                    .status(s.status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(other).unwrap())),
            }
            .unwrap();
            send.send_response(resp);
        }
        seen
    });
    (kube::Client::new(service, "default"), server)
}

pub fn status_404() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": "not found"})
}

/// A `Status` answer with `code` and `reason` (e.g. 409 `Conflict`, 422 `Invalid`).
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
           "message": message})
}
