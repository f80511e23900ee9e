//! Terminal API tests: exec tokens and the WebSocket terminal, over a real loopback listener, with
//! the in-memory store and the fake backend (whose terminal echoes input and ends at `exit N`).

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::fake_backend::FakeBackend;
use agentbox_core::fake_store::MemoryStore;
use agentbox_server::engine::{Engine, EngineConfig};
use agentbox_server::http::{AppState, router};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct App {
    base: String,
    http: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.http.abort();
    }
}

async fn start() -> App {
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(FakeBackend::new()),
        EngineConfig { reconcile_interval: Duration::from_millis(20), ..Default::default() },
    );
    engine.start().await.unwrap();
    let app = router(AppState::new(engine, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    App { base: format!("127.0.0.1:{}", addr.port()), http }
}

/// A raw HTTP/1.1 request (no client library needed for a handful of calls).
async fn call(app: &App, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&app.base).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        app.base,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let json_body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // one chunk is enough for these small bodies
        rest.split_once("\r\n").map(|(_, r)| r.rsplit_once("\r\n0\r\n").map_or(r, |(b, _)| b)).unwrap_or("")
    } else {
        rest
    };
    (status, serde_json::from_str(json_body.trim()).unwrap_or(Value::Null))
}

async fn running_sandbox(app: &App) -> String {
    let pool = json!({
        "name": "p",
        "template": {"idleImage": "pause", "containers": [{"name": "main", "image": "host"}]},
        "replicas": 2,
        "podCreationImagePolicy": "PoolDefaultImage"
    });
    let (s, v) = call(app, "POST", "/v1/sandboxpools", Some(pool)).await;
    assert_eq!(s, 201, "{v}");
    for _ in 0..300 {
        let (_, v) = call(app, "GET", "/v1/sandboxpools/p", None).await;
        if v["pool"]["status"]["idle"] == 2 {
            let (s, v) = call(app, "POST", "/v1/sandboxes", Some(json!({"poolName": "p"}))).await;
            assert_eq!(s, 201, "{v}");
            return v["sandbox"]["sandboxId"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool never warmed up");
}

async fn token(app: &App, id: &str) -> String {
    let (s, v) = call(app, "POST", &format!("/v1/sandboxes/{id}/exec-token"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["expiresInSeconds"], 30, "{v}");
    v["token"].as_str().unwrap().to_string()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &App, id: &str, token: &str) -> Result<Ws, (u16, String)> {
    let url = format!("ws://{}/v1/sandboxes/{id}/terminal?token={token}", app.base);
    match tokio_tungstenite::connect_async(url.into_client_request().unwrap()).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

/// Read binary frames until their concatenation contains `want`.
async fn read_until(ws: &mut Ws, want: &str) -> String {
    let mut got = String::new();
    while !got.contains(want) {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(m))) => panic!("unexpected frame {m:?} while waiting for {want:?} (got {got:?})"),
            other => panic!("no {want:?}: {other:?} (got {got:?})"),
        }
    }
    got
}

#[tokio::test]
async fn terminal_round_trip_over_a_real_websocket() {
    let app = start().await;
    let id = running_sandbox(&app).await;
    let t = token(&app, &id).await;
    assert_eq!(t.len(), 64);
    let mut ws = connect(&app, &id, &t).await.expect("upgrade");

    // binary frames are raw stdin; the fake terminal echoes it back as binary output
    ws.send(Message::Binary(b"echo hi\n".to_vec().into())).await.unwrap();
    read_until(&mut ws, "echo hi\n").await;
    // text frames carry JSON ops
    ws.send(Message::Text(json!({"op": "stdin", "data": "ls\n"}).to_string().into())).await.unwrap();
    read_until(&mut ws, "ls\n").await;
    ws.send(Message::Text(json!({"op": "resize", "cols": 100, "rows": 40}).to_string().into())).await.unwrap();
    read_until(&mut ws, "[resize 100x40]").await;
    // an unknown op is ignored, the session goes on
    ws.send(Message::Text(r#"{"op":"dance"}"#.into())).await.unwrap();
    ws.send(Message::Binary(b"exit 3\n".to_vec().into())).await.unwrap();
    read_until(&mut ws, "exit 3\n").await;

    // the shell's exit: a text frame with the code, then a normal close
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    let Message::Text(t) = m else { panic!("expected the exit frame, got {m:?}") };
    assert_eq!(serde_json::from_str::<Value>(t.as_str()).unwrap(), json!({"op": "exit", "exitCode": 3}));
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    let Message::Close(Some(f)) = m else { panic!("expected a close frame, got {m:?}") };
    assert_eq!(u16::from(f.code), 1000);
}

#[tokio::test]
async fn tokens_are_single_use_bound_to_their_sandbox_and_required() {
    let app = start().await;
    let id = running_sandbox(&app).await;

    // missing token
    let (s, v) = call(&app, "GET", &format!("/v1/sandboxes/{id}/terminal"), None).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("token query parameter is required")), "{v}");
    let err = connect(&app, &id, "").await.expect_err("refused");
    assert_eq!(err.0, 401);
    // unknown token
    let (s, v) = call(&app, "GET", &format!("/v1/sandboxes/{id}/terminal?token=abc"), None).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("exec token is invalid or has expired")), "{v}");

    // a valid token: a plain GET is told to use WebSocket and does not use the token up
    let t = token(&app, &id).await;
    let (s, v) = call(&app, "GET", &format!("/v1/sandboxes/{id}/terminal?token={t}"), None).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("WebSocket"), "{v}");
    // ... for another sandbox
    let (s, v) = call(&app, "GET", &format!("/v1/sandboxes/other/terminal?token={t}"), None).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("token does not match sandbox")), "{v}");
    // ... used once, then never again
    let ws = connect(&app, &id, &t).await.expect("first use");
    drop(ws);
    let err = connect(&app, &id, &t).await.expect_err("second use refused");
    assert_eq!(err.0, 401);
    assert!(err.1.contains("exec token is invalid or has expired"), "{}", err.1);

    // the exec-token endpoint: unknown sandbox 404, not Running 409
    let (s, _) = call(&app, "POST", "/v1/sandboxes/nope/exec-token", None).await;
    assert_eq!(s, 404);
    let t = token(&app, &id).await;
    let (s, v) = call(&app, "DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(s, 202, "{v}");
    let (s, v) = call(&app, "POST", &format!("/v1/sandboxes/{id}/exec-token"), None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("needs a Running sandbox"), "{v}");
    // a token issued before the release no longer opens a terminal
    let err = connect(&app, &id, &t).await.expect_err("refused after release");
    assert_eq!(err.0, 409, "{}", err.1);
}

#[tokio::test]
async fn closing_the_socket_ends_the_session() {
    let app = start().await;
    let id = running_sandbox(&app).await;
    let t = token(&app, &id).await;
    let mut ws = connect(&app, &id, &t).await.expect("upgrade");
    ws.send(Message::Binary(b"hello\n".to_vec().into())).await.unwrap();
    read_until(&mut ws, "hello\n").await;
    ws.close(None).await.unwrap();
    // the server answers the close and ends the socket (the fake session ends on Close)
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the server did not close the socket");
    // a new terminal can be opened afterwards
    let t = token(&app, &id).await;
    let mut ws = connect(&app, &id, &t).await.expect("upgrade again");
    ws.send(Message::Binary(b"exit 0\n".to_vec().into())).await.unwrap();
    read_until(&mut ws, "exit 0\n").await;
}
