//! Interactive terminals end to end: the real `agentbox serve`, a sandbox from the default pool,
//! `agentbox terminal ID` with piped stdin, and a raw WebSocket session (type, resize, exit).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Opts, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Terminal output as text lines: escape sequences and carriage returns removed.
fn plain_lines(out: &str) -> Vec<String> {
    let mut s = String::new();
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            s.push(c);
        }
    }
    s.lines().map(|l| l.trim().to_string()).collect()
}

fn exec_token(srv: &Server, id: &str) -> String {
    srv.post(&format!("/v1/sandboxes/{id}/exec-token"), &json!({})).expect(200)["token"]
        .as_str()
        .expect("token")
        .to_string()
}

#[test]
fn terminal_cli_and_websocket() {
    if common::skip_unless_root("terminal_cli_and_websocket") {
        return;
    }
    let srv = Server::start(Opts::new(10).default_pool(1));
    srv.wait_pool_idle("default", 1);
    let sb = srv.claim(&json!({"poolName": "default"}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();

    // --- `printf 'echo hi\nexit 3\n' | agentbox terminal ID`: prints hi, exits 3
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["terminal", &id])
        .env("AGENTBOX_ENDPOINT", &srv.url)
        .env_remove("AGENTBOX_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agentbox terminal");
    child.stdin.take().unwrap().write_all(b"echo hi\nexit 3\n").unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let out = match done_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            panic!("agentbox terminal did not finish within 30 s; server log:\n{}", srv.log_tail(100));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "stdout {stdout:?} stderr {}", String::from_utf8_lossy(&out.stderr));
    assert!(plain_lines(&stdout).iter().any(|l| l == "hi"), "no line `hi` in {stdout:?}");

    // --- a bad id is refused with the server's words
    let out = srv.cli(&["terminal", "no-such-sandbox"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));

    // --- a raw WebSocket session through the real server
    let token = exec_token(&srv, &id);
    let url = format!("{}/v1/sandboxes/{id}/terminal?token={token}", srv.url.replace("http://", "ws://"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, screen) = rt.block_on(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("websocket upgrade");
        let mut screen = String::new();
        async fn read_until(
            ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
            screen: &mut String,
            want: &str,
        ) -> Option<i64> {
            let from = screen.len();
            while !screen[from..].contains(want) {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => screen.push_str(&String::from_utf8_lossy(&b)),
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        assert_eq!(v["op"], "exit", "{v}");
                        return v["exitCode"].as_i64();
                    }
                    other => panic!("no {want:?}: {other:?}; screen {screen:?}"),
                }
            }
            None
        }
        ws.send(Message::Binary(b"echo hi-$((40+2))\n".to_vec().into())).await.unwrap();
        read_until(&mut ws, &mut screen, "hi-42\r\n").await;
        ws.send(Message::Text(json!({"op": "resize", "cols": 100, "rows": 40}).to_string().into())).await.unwrap();
        ws.send(Message::Text(json!({"op": "stdin", "data": "stty size; echo $TERM\n"}).to_string().into()))
            .await
            .unwrap();
        read_until(&mut ws, &mut screen, "40 100\r\nxterm-256color\r\n").await;
        ws.send(Message::Binary(b"exit 7\n".to_vec().into())).await.unwrap();
        let code = read_until(&mut ws, &mut screen, "\u{0}never").await;
        (code, screen)
    });
    assert_eq!(code, Some(7), "screen {screen:?}");

    // --- the token was single use
    let url = format!("{}/v1/sandboxes/{id}/terminal?token={token}", srv.url.replace("http://", "ws://"));
    let status = rt.block_on(async move {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            other => panic!("a used token opened a terminal: {:?}", other.map(|_| ())),
        }
    });
    assert_eq!(status, 401);

    // --- terminal sessions leave nothing running in the sandbox but its own processes
    let (code, out, _) = srv.sh(&id, "ps -eo args= 2>/dev/null || ls /proc");
    assert_eq!(code, 0);
    assert!(!out.contains("bash"), "a terminal shell is still running: {out}");
}
