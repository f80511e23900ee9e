//! `Backend::exec` and `exec_pty` of the Kubernetes backend over a real WebSocket: a small fake API
//! server on 127.0.0.1 answers `GET …/pods/{name}` and upgrades `…/pods/{name}/exec` to the
//! Kubernetes channel protocol (`v5.channel.k8s.io`, or `v4` when told), like the API server
//! relaying the kubelet: channel 0 = stdin, 1 = stdout, 2 = stderr, 3 = the final `Status`, 4 =
//! terminal resizes, 255 = close of a stream (v5). The fake runs a few made-up commands:
//!
//! - `emit out:TEXT err:TEXT exit:N …`: writes the pieces in order, then exits with `N`;
//! - `cat`: echoes stdin to stdout until stdin is closed, exits 0;
//! - `sleep`: says nothing until the client hangs up (recorded);
//! - `big`: writes 5 MiB to stdout;
//! - `tty` (with `tty=true`): echoes input, records resizes, exits 7 on `exit` in the input;
//! - `spew`: writes a line every few milliseconds until the client hangs up (recorded);
//! - `stall`: the upgrade itself is answered only after 5 s;
//! - anything else (e.g. `/bin/sh -c …`): exits 0 silently;
//! - `nope`: fails to start like a missing executable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentbox_backend_k8s::{KubeBackend, KubeBackendConfig, labels};
use agentbox_core::backend::{Backend, BackendError, ExecRequest, PtyInput, PtyRequest};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// One exec the fake API server received.
#[derive(Debug, Clone, Default)]
struct SeenExec {
    pod: String,
    /// The query pairs in order (`command` repeated, `container`, `stdin`, …).
    query: Vec<(String, String)>,
    /// The negotiated subprotocol.
    protocol: String,
    stdin: Vec<u8>,
    /// Terminal sizes received on the resize channel.
    resizes: Vec<Value>,
    /// The client hung up before the command ended.
    hung_up: bool,
}

impl SeenExec {
    fn values(&self, key: &str) -> Vec<String> {
        self.query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }
}

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<SeenExec>>>,
    protocols: &'static [&'static str],
}

fn pod_json(main_state: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "py-0000abcd", "namespace": "team-a", "resourceVersion": "7",
                     "labels": {labels::POOL: "py", labels::PHASE: "running"}},
        "spec": {"containers": [{"name": "main", "image": "python:3.12"}, {"name": "side", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.9.0.7", "containerStatuses": [
            {"name": "main", "image": "python:3.12", "imageID": "", "ready": true, "restartCount": 0,
             "containerID": "containerd://a", "state": main_state},
            {"name": "side", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
             "containerID": "containerd://b", "state": {"running": {}}}]}
    })
}

fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
           "message": format!("command terminated with non-zero exit code: exit status {code}"),
           "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = vec![channel];
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

async fn send_status(ws: &mut WebSocket, status: Value) {
    let _ = ws.send(frame(3, status.to_string().as_bytes())).await;
    let _ = ws.send(Message::Close(None)).await;
}

/// What the client sends next: stdin data, a resize, or the end of stdin / of the connection.
enum FromClient {
    Stdin(Vec<u8>),
    Resize(Value),
    StdinClosed,
    Gone,
}

async fn next_from_client(ws: &mut WebSocket) -> FromClient {
    loop {
        match ws.recv().await {
            Some(Ok(Message::Binary(b))) if b.len() >= 2 && b[0] == 255 && b[1] == 0 => return FromClient::StdinClosed,
            Some(Ok(Message::Binary(b))) if !b.is_empty() && b[0] == 0 => return FromClient::Stdin(b[1..].to_vec()),
            Some(Ok(Message::Binary(b))) if !b.is_empty() && b[0] == 4 => {
                return FromClient::Resize(serde_json::from_slice(&b[1..]).unwrap());
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return FromClient::Gone,
            Some(Ok(_)) => continue,
        }
    }
}

async fn run_command(mut ws: WebSocket, mut seen: SeenExec, fake: Fake) {
    // Like the API server: an empty frame on every output channel first.
    for ch in [1u8, 2, 3] {
        let _ = ws.send(Message::Binary(vec![ch].into())).await;
    }
    let command = seen.values("command");
    match command.first().map(String::as_str).unwrap_or_default() {
        "emit" => {
            let mut code = 0;
            for piece in &command[1..] {
                match piece.split_once(':') {
                    Some(("out", t)) => ws.send(frame(1, t.as_bytes())).await.unwrap(),
                    Some(("err", t)) => ws.send(frame(2, t.as_bytes())).await.unwrap(),
                    Some(("exit", n)) => code = n.parse().unwrap(),
                    _ => panic!("bad emit piece {piece}"),
                }
            }
            send_status(&mut ws, exit_status(code)).await;
        }
        "cat" => loop {
            match next_from_client(&mut ws).await {
                FromClient::Stdin(d) => {
                    seen.stdin.extend_from_slice(&d);
                    ws.send(frame(1, &d)).await.unwrap();
                }
                FromClient::StdinClosed => {
                    send_status(&mut ws, exit_status(0)).await;
                    break;
                }
                FromClient::Resize(_) => {}
                FromClient::Gone => {
                    seen.hung_up = true;
                    break;
                }
            }
        },
        "sleep" => {
            while !matches!(next_from_client(&mut ws).await, FromClient::Gone) {}
            seen.hung_up = true;
        }
        "big" => {
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..80 {
                ws.send(frame(1, &chunk)).await.unwrap();
            }
            send_status(&mut ws, exit_status(0)).await;
        }
        "tty" => loop {
            match next_from_client(&mut ws).await {
                FromClient::Stdin(d) => {
                    seen.stdin.extend_from_slice(&d);
                    ws.send(frame(1, &d)).await.unwrap();
                    if String::from_utf8_lossy(&seen.stdin).contains("exit") {
                        send_status(&mut ws, exit_status(7)).await;
                        break;
                    }
                }
                FromClient::Resize(v) => seen.resizes.push(v),
                FromClient::StdinClosed => {}
                FromClient::Gone => {
                    seen.hung_up = true;
                    break;
                }
            }
        },
        "spew" => loop {
            tokio::select! {
                m = ws.recv() => if matches!(m, Some(Ok(Message::Close(_))) | None | Some(Err(_))) {
                    seen.hung_up = true;
                    break;
                },
                _ = tokio::time::sleep(Duration::from_millis(5)) => {
                    if ws.send(frame(1, b"y\n")).await.is_err() {
                        seen.hung_up = true;
                        break;
                    }
                }
            }
        },
        "nope" => {
            let status = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": "failed to exec in container: exec: \"nope\": executable file not found in $PATH: unknown"});
            send_status(&mut ws, status).await;
        }
        _ => send_status(&mut ws, exit_status(0)).await,
    }
    fake.seen.lock().await.push(seen);
}

async fn exec_handler(
    State(fake): State<Fake>,
    Path((_ns, pod)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    if query.iter().any(|(k, v)| k == "command" && v == "stall") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let ws = ws.protocols(fake.protocols.iter().copied());
    ws.on_upgrade(move |socket| {
        let protocol = socket.protocol().map(|p| p.to_str().unwrap().to_owned()).unwrap_or_default();
        let seen = SeenExec { pod, query, protocol, ..Default::default() };
        run_command(socket, seen, fake)
    })
}

/// Start the fake API server; the Pod's main container is in `main_state`.
async fn start(protocols: &'static [&'static str], main_state: Value) -> (KubeBackend, Fake) {
    let fake = Fake { seen: Arc::new(Mutex::new(vec![])), protocols };
    let pod = pod_json(main_state);
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod.clone()]});
    let app = Router::new()
        .route("/api/v1/pods", get(move || async move { Json(list) }))
        .route("/api/v1/namespaces/{ns}/pods/{pod}", get(move || async move { Json(pod) }))
        .route("/api/v1/namespaces/{ns}/pods/{pod}/exec", get(exec_handler))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
    cfg.default_namespace = "team-a".into();
    let client = kube::Client::try_from(cfg).unwrap();
    (KubeBackend::new(client, KubeBackendConfig::default()), fake)
}

const V5: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
const V4: &[&str] = &["v4.channel.k8s.io"];

fn running() -> Value {
    json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        container: None,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        cwd: None,
        user: None,
        stdin: None,
        timeout: Duration::from_secs(10),
    }
}

async fn last_seen(fake: &Fake) -> SeenExec {
    // The handler records after the command ends; the client may have returned a moment earlier.
    for _ in 0..200 {
        if let Some(s) = fake.seen.lock().await.last() {
            return s.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the fake API server saw no exec");
}

#[tokio::test]
async fn exec_collects_stdout_stderr_and_the_exit_code_from_the_status_channel() {
    let (backend, fake) = start(V5, running()).await;
    let out =
        backend.exec("py-0000abcd", &req(&["emit", "out:hello ", "err:oops", "out:world", "exit:3"])).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops");
    assert_eq!(out.exit_code, 3);
    assert!(!out.timed_out && !out.truncated);
    let seen = last_seen(&fake).await;
    assert_eq!(seen.pod, "py-0000abcd");
    assert_eq!(seen.protocol, "v5.channel.k8s.io");
    assert_eq!(
        seen.query,
        vec![
            ("stdout".to_string(), "true".to_string()),
            ("stderr".into(), "true".into()),
            ("container".into(), "main".into()),
            ("command".into(), "emit".into()),
            ("command".into(), "out:hello ".into()),
            ("command".into(), "err:oops".into()),
            ("command".into(), "out:world".into()),
            ("command".into(), "exit:3".into()),
        ],
        "container 0 by name, no stdin, the argv as is"
    );

    let ok = backend.exec("py-0000abcd", &req(&["emit", "out:fine"])).await.unwrap();
    assert_eq!((ok.exit_code, ok.stdout.as_slice()), (0, b"fine".as_slice()), "Success = exit 0");
}

#[tokio::test]
async fn exec_works_over_the_v4_protocol_too() {
    let (backend, fake) = start(V4, running()).await;
    let out = backend.exec("py-0000abcd", &req(&["emit", "out:v4", "exit:1"])).await.unwrap();
    assert_eq!((out.exit_code, out.stdout.as_slice()), (1, b"v4".as_slice()));
    assert_eq!(last_seen(&fake).await.protocol, "v4.channel.k8s.io");
}

#[tokio::test]
async fn stdin_is_written_and_closed_then_the_output_comes_back() {
    let (backend, fake) = start(V5, running()).await;
    let mut r = req(&["cat"]);
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    r.stdin = Some(input.clone());
    let out = backend.exec("py-0000abcd", &r).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdin came back byte for byte");
    let seen = last_seen(&fake).await;
    assert_eq!(seen.values("stdin"), vec!["true"]);
    assert_eq!(seen.stdin.len(), input.len());
    assert!(!seen.hung_up, "stdin was closed with the v5 close signal, not by hanging up");
}

#[tokio::test]
async fn a_command_past_its_timeout_is_124_and_the_connection_is_dropped() {
    let (backend, fake) = start(V5, running()).await;
    let mut r = req(&["sleep"]);
    r.timeout = Duration::from_millis(400);
    let t = Instant::now();
    let out = backend.exec("py-0000abcd", &r).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "returned at the deadline, took {:?}", t.elapsed());
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(out.exit_code, 124);
    assert!(out.timed_out);
    assert!(last_seen(&fake).await.hung_up, "the server saw the client hang up");
}

#[tokio::test]
async fn env_cwd_and_user_go_through_a_shell_script() {
    let (backend, fake) = start(V5, running()).await;
    let mut r = req(&["python", "-c", "print(1)"]);
    r.env = BTreeMap::from([("A".to_string(), "x y".to_string())]);
    r.cwd = Some("/work".into());
    r.user = Some("app".into());
    r.container = Some("side".into());
    let out = backend.exec("py-0000abcd", &r).await.unwrap();
    assert_eq!(out.exit_code, 0);
    let seen = last_seen(&fake).await;
    assert_eq!(seen.values("container"), vec!["side"]);
    assert_eq!(
        seen.values("command"),
        vec!["su", "-s", "/bin/sh", "app", "-c", "cd '/work' || exit 1; export 'A=x y'; exec 'python' '-c' 'print(1)'"]
    );
}

#[tokio::test]
async fn output_past_the_capture_limit_is_cut_and_marked() {
    let (backend, _fake) = start(V5, running()).await;
    let out = backend.exec("py-0000abcd", &req(&["big"])).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.len(), agentbox_backend_k8s::exec::CAPTURE_LIMIT);
    assert!(out.truncated);
}

#[tokio::test]
async fn a_missing_executable_is_127_with_the_reason_on_stderr() {
    let (backend, _fake) = start(V5, running()).await;
    let out = backend.exec("py-0000abcd", &req(&["nope"])).await.unwrap();
    assert_eq!(out.exit_code, 127);
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"), "{out:?}");
}

#[tokio::test]
async fn unknown_or_stopped_containers_are_refused_before_any_exec() {
    let (backend, fake) = start(V5, json!({"terminated": {"exitCode": 1}})).await;
    let err = backend.exec("py-0000abcd", &req(&["emit"])).await.unwrap_err();
    assert!(matches!(&err, BackendError::NotRunning { container, .. } if container == "main"), "{err:?}");
    let mut r = req(&["emit"]);
    r.container = Some("ghost".into());
    let err = backend.exec("py-0000abcd", &r).await.unwrap_err();
    assert!(matches!(&err, BackendError::ContainerNotFound { container, .. } if container == "ghost"), "{err:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(fake.seen.lock().await.is_empty(), "no exec was attempted");
}

#[tokio::test]
async fn a_terminal_echoes_input_resizes_and_reports_the_exit_code() {
    let (backend, fake) = start(V5, running()).await;
    let pty =
        PtyRequest { container: None, argv: vec!["tty".into()], env: BTreeMap::new(), cwd: None, cols: 80, rows: 24 };
    let mut session = backend.exec_pty("py-0000abcd", &pty).await.unwrap();
    session.input.send(PtyInput::Resize { cols: 100, rows: 30 }).await.unwrap();
    // Resizes and input travel on different channels, which kube's loop serves in any order.
    tokio::time::sleep(Duration::from_millis(200)).await;
    session.input.send(PtyInput::Data(b"echo hi\n".to_vec())).await.unwrap();
    session.input.send(PtyInput::Data(b"exit\n".to_vec())).await.unwrap();
    let mut output = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), session.output.recv()).await.unwrap() {
        output.extend(chunk);
    }
    assert_eq!(String::from_utf8_lossy(&output), "echo hi\nexit\n");
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), session.exit).await.unwrap().unwrap(), 7);
    let seen = last_seen(&fake).await;
    assert_eq!(seen.values("tty"), vec!["true"]);
    assert_eq!(seen.values("stdin"), vec!["true"]);
    assert!(seen.values("stderr").is_empty(), "a terminal merges stderr into stdout");
    assert_eq!(seen.resizes, vec![json!({"Width": 80, "Height": 24}), json!({"Width": 100, "Height": 30})]);
}

#[tokio::test]
async fn a_connection_not_set_up_in_time_is_an_error_not_a_timed_out_command() {
    let (backend, _fake) = start(V5, running()).await;
    let mut r = req(&["stall"]);
    r.timeout = Duration::from_millis(300);
    let t = Instant::now();
    let err = backend.exec("py-0000abcd", &r).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(4), "gave up at the deadline, took {:?}", t.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Runtime(_)), "{err:?}");
    assert!(msg.contains("not set up") && msg.contains("did not run"), "{msg}");
}

#[tokio::test]
async fn a_terminal_whose_reader_is_gone_hangs_up_even_if_the_process_keeps_writing() {
    let (backend, fake) = start(V5, running()).await;
    let pty =
        PtyRequest { container: None, argv: vec!["spew".into()], env: BTreeMap::new(), cwd: None, cols: 80, rows: 24 };
    let mut session = backend.exec_pty("py-0000abcd", &pty).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), session.output.recv()).await.unwrap().unwrap();
    assert!(first.starts_with(b"y"), "{first:?}");
    // The client's WebSocket went away: nobody reads the output any more, the input stays open.
    drop(session.output);
    let code = tokio::time::timeout(Duration::from_secs(5), session.exit).await.expect("the session ends").unwrap();
    assert_eq!(code, 129, "hung up");
    assert!(last_seen(&fake).await.hung_up, "the API server saw the connection closed");
    drop(session.input);
}
