//! `agentbox terminal ID`: an interactive shell in a sandbox, over the terminal WebSocket.
//!
//! Gets a single-use exec token (`POST /v1/sandboxes/{id}/exec-token`, with the API key), then
//! connects `GET /v1/sandboxes/{id}/terminal?token=` (the token is the only authorization there).
//! When stdin is a terminal it is put in raw mode (restored on every way out) and its size is sent
//! at the start and on every SIGWINCH; otherwise stdin is just piped, and at its end nothing more
//! is sent while the output is still printed until the shell exits. The exit code is the shell's.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, ClientArgs};

#[derive(Args)]
pub struct TerminalArgs {
    /// Sandbox id.
    pub id: String,
    #[command(flatten)]
    pub c: ClientArgs,
}

/// Raw mode on the local terminal while alive.
struct RawMode;

impl RawMode {
    fn enable() -> Result<RawMode> {
        crossterm::terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// `ws://` (or `wss://`) URL of the terminal endpoint under the API endpoint `base`.
fn terminal_url(base: &str, id: &str, token: &str) -> Result<String> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else if base.starts_with("https://") {
        bail!(
            "agentbox terminal supports http:// endpoints only for now; reach the server over http (e.g. through a tunnel)"
        )
    } else {
        bail!("endpoint {base} must start with http://")
    };
    Ok(format!("{rest}/v1/sandboxes/{id}/terminal?token={token}"))
}

fn resize_frame() -> Option<Message> {
    let (cols, rows) = crossterm::terminal::size().ok()?;
    Some(Message::Text(json!({"op": "resize", "cols": cols, "rows": rows}).to_string().into()))
}

/// Read stdin on a plain thread (a blocked read cannot hold up the runtime's shutdown); `None` on
/// the channel means end of input.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    rx
}

impl TerminalArgs {
    pub async fn run(self) -> Result<ExitCode> {
        let client = Client::new(&self.c)?;
        let tok: Value = client.post(&format!("/v1/sandboxes/{}/exec-token", self.id), &json!({})).await?;
        let token = tok["token"].as_str().ok_or_else(|| anyhow!("the server answered no token: {tok}"))?;
        let url = terminal_url(&self.c.endpoint, &self.id, token)?;
        let ws = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body: Value =
                    resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
                let msg = body["error"].as_str().unwrap_or("the server refused the terminal");
                bail!("{msg} ({})", resp.status());
            }
            Err(e) => bail!("cannot open the terminal at {}: {e}", self.c.endpoint),
        };
        let tty = std::io::stdin().is_terminal();
        let raw = if tty { Some(RawMode::enable()?) } else { None };
        let res = session(ws, tty).await;
        drop(raw);
        let code = res?;
        Ok(ExitCode::from((code & 0xff) as u8))
    }
}

/// Run the session until the shell exits; returns its exit code.
async fn session(
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tty: bool,
) -> Result<i32> {
    let (mut tx, mut rx) = ws.split();
    let mut winch = if tty {
        if let Some(m) = resize_frame() {
            tx.send(m).await.context("sending the terminal size")?;
        }
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .context("watching terminal resizes")?,
        )
    } else {
        None
    };
    let mut input = stdin_chunks();
    let mut input_open = true;
    let mut stdout = std::io::stdout();
    let mut exit_code = None;
    loop {
        tokio::select! {
            chunk = input.recv(), if input_open => match chunk {
                Some(bytes) => {
                    if tx.send(Message::Binary(bytes.into())).await.is_err() {
                        input_open = false;
                    }
                }
                // End of input: send nothing more, keep printing until the shell exits.
                None => input_open = false,
            },
            _ = async { winch.as_mut().expect("guarded").recv().await }, if winch.is_some() => {
                if let Some(m) = resize_frame() {
                    let _ = tx.send(m).await;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b).context("writing to stdout")?;
                    stdout.flush().context("writing to stdout")?;
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["op"] == "exit" {
                        exit_code = v["exitCode"].as_i64().map(|c| c as i32);
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if exit_code.is_some() {
                        break;
                    }
                    return Err(anyhow!("the terminal connection broke: {e}"));
                }
            },
        }
    }
    exit_code.ok_or_else(|| anyhow!("the terminal closed without reporting the shell's exit code"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_url_follows_the_endpoint() {
        assert_eq!(
            terminal_url("http://127.0.0.1:8080/", "sb-1", "abc").unwrap(),
            "ws://127.0.0.1:8080/v1/sandboxes/sb-1/terminal?token=abc"
        );
        assert!(terminal_url("https://x", "sb", "t").unwrap_err().to_string().contains("http://"));
        assert!(terminal_url("ftp://x", "sb", "t").is_err());
    }
}
