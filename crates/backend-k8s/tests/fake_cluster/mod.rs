//! A small stateful Kubernetes API server for the store tests (`tower_test::mock`): it keeps
//! `SandboxTemplate`s, `SandboxPool`s, Secrets and Namespaces in memory with real
//! `resourceVersion`s, optimistic concurrency (409), finalizers (a DELETE of an object with
//! finalizers only sets `deletionTimestamp`), label selectors, JSON merge patches, server-side
//! apply (as create-or-merge), and watches (a watch request is answered with the events after its
//! `resourceVersion`, waiting up to 200 ms for one). Every request is recorded; a test can script
//! failures for the next matching request.
#![allow(dead_code)] // each test uses a part

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};

const CRD_PREFIX: &str = "/apis/agentbox.dev/v1alpha1";

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

/// An answer scripted for the next request with `method` whose path starts with `path`.
#[derive(Debug, Clone)]
pub enum Fault {
    /// An API `Status` with this code.
    Status(u16),
    /// No answer at all: the client sees a transport error.
    Unreachable,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    namespaces: Vec<String>,
    /// (resourceVersion, resource, namespace, event type, object).
    events: Vec<(u64, String, String, &'static str, Value)>,
    faults: Vec<(String, String, Fault)>,
    /// Watches answer nothing while set (events queue up, as with a slow watch).
    watches_paused: bool,
    seen: Vec<Seen>,
}

/// The fake cluster; cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeCluster {
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::Notify>,
}

/// Parsed request path: (resource, namespace or "", name or "").
fn route(path: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest: &[&str] = if path.starts_with(CRD_PREFIX) {
        &parts[3..]
    } else if path.starts_with("/api/v1") {
        &parts[2..]
    } else {
        return None;
    };
    match rest {
        ["namespaces"] => Some(("namespaces".into(), String::new(), String::new())),
        ["namespaces", name] => Some(("namespaces".into(), String::new(), (*name).into())),
        ["namespaces", ns, res] => Some(((*res).into(), (*ns).into(), String::new())),
        ["namespaces", ns, res, name] => Some(((*res).into(), (*ns).into(), (*name).into())),
        [res] => Some(((*res).into(), String::new(), String::new())),
        [res, name] => Some(((*res).into(), String::new(), (*name).into())),
        _ => None,
    }
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "sandboxtemplates" => ("agentbox.dev/v1alpha1", "SandboxTemplate"),
        "sandboxpools" => ("agentbox.dev/v1alpha1", "SandboxPool"),
        "secrets" => ("v1", "Secret"),
        "namespaces" => ("v1", "Namespace"),
        _ => ("v1", "Unknown"),
    }
}

fn status(code: u16, message: &str) -> Value {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        _ => "Invalid",
    };
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
           "message": message})
}

/// RFC 7386.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

fn decode(q: &str) -> String {
    q.replace("%2F", "/").replace("%3D", "=").replace("%2C", ",").replace("%21", "!")
}

fn matches_selector(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k].as_str() == Some(v),
        None => !labels[term].is_null(),
    })
}

impl FakeCluster {
    /// A cluster with the namespaces `default` and `agentbox-system`, and the client that talks
    /// to it (the server task runs on the current runtime).
    pub fn start() -> (FakeCluster, kube::Client) {
        let cluster = FakeCluster {
            state: Arc::new(Mutex::new(State {
                namespaces: vec!["default".into(), "agentbox-system".into()],
                ..Default::default()
            })),
            changed: Arc::new(tokio::sync::Notify::new()),
        };
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = cluster.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let (parts, body) = req.into_parts();
                    let bytes = body.collect().await.unwrap().to_bytes();
                    let seen = Seen {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_owned(),
                        query: decode(parts.uri.query().unwrap_or_default()),
                        content_type: parts
                            .headers
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default(),
                        body: if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() },
                    };
                    match me.answer(seen).await {
                        Some((code, body)) => {
                            let resp = Response::builder()
                                .status(code)
                                .header("content-type", "application/json")
                                .body(Body::from(body))
                                .unwrap();
                            send.send_response(resp);
                        }
                        None => send.send_error("connection refused (fake cluster)"),
                    }
                });
            }
        });
        (cluster, kube::Client::new(service, "default"))
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().seen.clone()
    }

    /// The requests so far that are not reads (`GET`), as `METHOD path`.
    pub fn writes(&self) -> Vec<String> {
        self.seen().into_iter().filter(|s| s.method != "GET").map(|s| format!("{} {}", s.method, s.path)).collect()
    }

    /// Hold back watch events until [`resume_watches`](Self::resume_watches).
    pub fn pause_watches(&self) {
        self.state.lock().watches_paused = true;
    }

    pub fn resume_watches(&self) {
        self.state.lock().watches_paused = false;
        self.changed.notify_waiters();
    }

    pub fn clear_seen(&self) {
        self.state.lock().seen.clear();
    }

    /// Answer the next `method` request under `path` with `fault`.
    pub fn fail_next(&self, method: &str, path: &str, fault: Fault) {
        self.state.lock().faults.push((method.into(), path.into(), fault));
    }

    /// The object at `path` (an item path), if any.
    pub fn get(&self, path: &str) -> Option<Value> {
        let key = route(path).expect("a known path");
        self.state.lock().objects.get(&key).cloned()
    }

    /// Create or replace an object as `kubectl apply` would (another client: no request is
    /// recorded). Objects are given by their item path.
    pub fn apply(&self, path: &str, mut obj: Value) {
        let key = route(path).expect("a known path");
        let mut st = self.state.lock();
        st.rv += 1;
        let rv = st.rv;
        let old = st.objects.get(&key).cloned();
        let (api_version, kind) = kind_of(&key.0);
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        let meta = &mut obj["metadata"];
        meta["name"] = json!(key.2);
        if !key.1.is_empty() {
            meta["namespace"] = json!(key.1);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = old.as_ref().map(|o| o["metadata"]["uid"].clone()).unwrap_or(json!(format!("uid-{rv}")));
        meta["creationTimestamp"] =
            old.as_ref().map(|o| o["metadata"]["creationTimestamp"].clone()).unwrap_or(json!("2026-01-01T00:00:00Z"));
        let ty = if old.is_some() { "MODIFIED" } else { "ADDED" };
        st.events.push((rv, key.0.clone(), key.1.clone(), ty, obj.clone()));
        st.objects.insert(key, obj);
        drop(st);
        self.changed.notify_waiters();
    }

    /// `kubectl delete` of the object at `path` (finalizers respected).
    pub fn delete(&self, path: &str) {
        let key = route(path).expect("a known path");
        self.delete_key(&key);
    }

    fn delete_key(&self, key: &(String, String, String)) -> Option<Value> {
        let mut st = self.state.lock();
        let mut obj = st.objects.get(key).cloned()?;
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let has_finalizers = obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
            }
            st.events.push((rv, key.0.clone(), key.1.clone(), "MODIFIED", obj.clone()));
            st.objects.insert(key.clone(), obj.clone());
        } else {
            st.events.push((rv, key.0.clone(), key.1.clone(), "DELETED", obj.clone()));
            st.objects.remove(key);
        }
        drop(st);
        self.changed.notify_waiters();
        Some(obj)
    }

    /// Store `obj` as the new version of `key` (or delete it when it is Terminating without
    /// finalizers); returns what the API returns.
    fn write(&self, key: &(String, String, String), mut obj: Value, ty: &'static str) -> Value {
        let mut st = self.state.lock();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let gone = !obj["metadata"]["deletionTimestamp"].is_null()
            && obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
        if gone {
            st.events.push((rv, key.0.clone(), key.1.clone(), "DELETED", obj.clone()));
            st.objects.remove(key);
        } else {
            st.events.push((rv, key.0.clone(), key.1.clone(), ty, obj.clone()));
            st.objects.insert(key.clone(), obj.clone());
        }
        drop(st);
        self.changed.notify_waiters();
        obj
    }

    async fn answer(&self, s: Seen) -> Option<(u16, Vec<u8>)> {
        let fault = {
            let mut st = self.state.lock();
            st.seen.push(s.clone());
            let i = st.faults.iter().position(|(m, p, _)| *m == s.method && s.path.starts_with(p.as_str()));
            i.map(|i| st.faults.remove(i).2)
        };
        match fault {
            Some(Fault::Unreachable) => return None,
            Some(Fault::Status(code)) => return Some((code, status(code, "scripted").to_string().into_bytes())),
            None => {}
        }
        let Some(key) = route(&s.path) else {
            return Some((404, status(404, "no such path").to_string().into_bytes()));
        };
        let (code, body) = if key.2.is_empty() && s.method == "GET" && query_param(&s.query, "watch").is_some() {
            return Some((200, self.watch(&key, &s.query).await));
        } else {
            self.handle(&key, &s)
        };
        Some((code, body.to_string().into_bytes()))
    }

    fn handle(&self, key: &(String, String, String), s: &Seen) -> (u16, Value) {
        let (res, ns, name) = key;
        let existing = self.state.lock().objects.get(key).cloned();
        match (s.method.as_str(), name.is_empty()) {
            ("GET", true) => {
                let selector = query_param(&s.query, "labelSelector").unwrap_or_default();
                let st = self.state.lock();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((r, n, _), o)| r == res && (ns.is_empty() || n == ns) && matches_selector(o, &selector))
                    .map(|(_, o)| o.clone())
                    .collect();
                let (api_version, kind) = kind_of(res);
                (
                    200,
                    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                             "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            ("GET", false) => match existing {
                Some(o) => (200, o),
                None => (404, status(404, &format!("{res} {name:?} not found"))),
            },
            ("POST", true) => {
                let mut obj = s.body.clone();
                let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                let key = (res.clone(), ns.clone(), name.clone());
                if res != "namespaces" && !ns.is_empty() && !self.state.lock().namespaces.contains(ns) {
                    return (404, status(404, &format!("namespaces {ns:?} not found")));
                }
                if res == "namespaces" {
                    let mut st = self.state.lock();
                    if st.namespaces.contains(&name) {
                        return (409, status(409, &format!("namespace {name:?} already exists")));
                    }
                    st.namespaces.push(name.clone());
                }
                if self.state.lock().objects.contains_key(&key) {
                    return (409, status(409, &format!("{res} {name:?} already exists")));
                }
                let rv = self.state.lock().rv + 1;
                obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
                obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                if !ns.is_empty() {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                (201, self.write(&key, obj, "ADDED"))
            }
            ("PUT", false) => {
                let Some(old) = existing else { return (404, status(404, &format!("{res} {name:?} not found"))) };
                let mut obj = s.body.clone();
                let want = obj["metadata"]["resourceVersion"].as_str().map(str::to_owned);
                if want.is_some_and(|w| Some(w.as_str()) != old["metadata"]["resourceVersion"].as_str()) {
                    return (
                        409,
                        status(
                            409,
                            "the object has been modified; please apply your changes to the latest version and try again",
                        ),
                    );
                }
                for f in ["uid", "creationTimestamp", "deletionTimestamp"] {
                    obj["metadata"][f] = old["metadata"][f].clone();
                }
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.retain(|_, v| !v.is_null());
                }
                obj["status"] = old["status"].clone();
                (200, self.write(key, obj, "MODIFIED"))
            }
            ("PATCH", false) => {
                let apply = s.content_type.contains("apply-patch");
                let old = match existing {
                    Some(o) => o,
                    None if apply => {
                        json!({"metadata": {"uid": "uid-applied", "creationTimestamp": "2026-01-01T00:00:00Z"}})
                    }
                    None => return (404, status(404, &format!("{res} {name:?} not found"))),
                };
                let want = s.body["metadata"]["resourceVersion"].as_str();
                if !apply && want.is_some_and(|w| Some(w) != old["metadata"]["resourceVersion"].as_str()) {
                    return (409, status(409, "the object has been modified"));
                }
                let mut obj = old.clone();
                merge(&mut obj, &s.body);
                obj["metadata"]["name"] = json!(name);
                if !ns.is_empty() {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                let ty = if self.state.lock().objects.contains_key(key) { "MODIFIED" } else { "ADDED" };
                (200, self.write(key, obj, ty))
            }
            ("DELETE", false) => match self.delete_key(key) {
                Some(o) => (200, o),
                None => (404, status(404, &format!("{res} {name:?} not found"))),
            },
            _ => (405, status(405, "method not allowed")),
        }
    }

    /// Events of `key`'s collection after the requested resourceVersion, waiting up to 200 ms for
    /// the first (a real watch stays open; the watcher simply watches again).
    async fn watch(&self, key: &(String, String, String), query: &str) -> Vec<u8> {
        let after: u64 = query_param(query, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        loop {
            let notified = self.changed.notified();
            let lines: Vec<String> = {
                let st = self.state.lock();
                st.events
                    .iter()
                    .filter(|_| !st.watches_paused)
                    .filter(|(rv, r, n, _, _)| *rv > after && *r == key.0 && (key.1.is_empty() || *n == key.1))
                    .map(|(_, _, _, ty, o)| json!({"type": ty, "object": o}).to_string())
                    .collect()
            };
            if !lines.is_empty() {
                return (lines.join("\n") + "\n").into_bytes();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }
}
