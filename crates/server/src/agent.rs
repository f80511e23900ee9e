//! Client of the in-sandbox agent (`agentbox-envd`, port 49983 in every sandbox).
//!
//! The native exec API, the exec stream and the terminal run their processes through the agent
//! when it answers: one pooled HTTP/1.1 connection per sandbox (TCP_NODELAY), Connect RPC with
//! the protobuf codec, the process output streamed as it is produced. A sandbox whose agent does
//! not accept the connection (no agent configured, an image the agent was not started in, an
//! agent that died) is reported as [`AgentError::Unavailable`] so the caller can fall back to the
//! backend's own exec; anything that fails after the request was sent is [`AgentError::Failed`].
//!
//! Two headers are agentbox extensions the agent understands (see `docs/agent.md`):
//! `X-Agentbox-User: uid[:gid]` (the native API names users by number) and
//! `X-Agentbox-Inherit-Cwd` (a process without `cwd` runs in the container's working directory,
//! as the backend's exec does, instead of the user's home).

use std::time::Duration;

use agentbox_envd::connect::{frame, take_frame};
use agentbox_envd::proto::process as pp;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;

/// Port the agent listens on inside every sandbox.
pub const AGENT_PORT: u16 = 49983;

/// Why a call to the agent did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing was sent: the agent did not accept the connection. Falling back is safe.
    #[error("the agent is not reachable: {0}")]
    Unavailable(String),
    /// The agent answered with an error, or the connection broke after the request was sent.
    #[error("the agent failed: {0}")]
    Failed(String),
}

/// A pooled client for the agents of all sandboxes.
#[derive(Clone)]
pub struct AgentClient {
    http: Client<HttpConnector, Full<Bytes>>,
    port: u16,
}

/// Who a process runs as and where, for one call.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// `uid` or `uid:gid`; `None` = the agent's default user (root).
    pub user: Option<String>,
}

impl AgentClient {
    /// A client for agents listening on `port`.
    pub fn new(port: u16) -> AgentClient {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(conn);
        AgentClient { http, port }
    }

    fn request(
        &self,
        ip: &str,
        path: &str,
        content_type: &str,
        caller: &Caller,
        body: Bytes,
    ) -> hyper::Request<Full<Bytes>> {
        let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
        let mut b = hyper::Request::post(format!("http://{host}:{}{path}", self.port))
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header("connect-protocol-version", "1")
            .header("x-agentbox-inherit-cwd", "1");
        if let Some(u) = &caller.user {
            b = b.header("x-agentbox-user", u.as_str());
        }
        b.body(Full::new(body)).expect("a request from valid parts")
    }

    async fn send(&self, req: hyper::Request<Full<Bytes>>) -> Result<hyper::Response<Incoming>, AgentError> {
        self.http.request(req).await.map_err(|e| {
            if e.is_connect() { AgentError::Unavailable(error_chain(&e)) } else { AgentError::Failed(error_chain(&e)) }
        })
    }

    /// Starts a process and returns its event stream (the first event is the start event).
    pub async fn start(&self, ip: &str, caller: &Caller, req: &pp::StartRequest) -> Result<ProcessStream, AgentError> {
        let body = frame(0, &req.encode_to_vec());
        let resp =
            self.send(self.request(ip, "/process.Process/Start", "application/connect+proto", caller, body)).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(AgentError::Failed(format!("{status}: {}", String::from_utf8_lossy(&text).trim())));
        }
        Ok(ProcessStream { body: resp.into_body(), buf: BytesMut::new(), ended: false })
    }

    async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        ip: &str,
        method: &str,
        req: &Req,
    ) -> Result<Resp, AgentError> {
        let r = self.request(ip, method, "application/proto", &Caller::default(), req.encode_to_vec().into());
        let resp = self.send(r).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| AgentError::Failed(e.to_string()))?.to_bytes();
        if !status.is_success() {
            return Err(AgentError::Failed(format!("{method}: {status}: {}", connect_error_message(&body))));
        }
        Resp::decode(body).map_err(|e| AgentError::Failed(format!("{method}: undecodable answer: {e}")))
    }

    /// Writes to a process's stdin (`pty = false`) or terminal.
    pub async fn send_input(&self, ip: &str, pid: u32, data: Vec<u8>, pty: bool) -> Result<(), AgentError> {
        let input = if pty {
            pp::ProcessInput { pty: Some(data), ..Default::default() }
        } else {
            pp::ProcessInput { stdin: Some(data), ..Default::default() }
        };
        let req = pp::SendInputRequest { process: Some(selector(pid)), input: Some(input) };
        self.unary::<_, pp::SendInputResponse>(ip, "/process.Process/SendInput", &req).await.map(drop)
    }

    /// Closes a process's stdin (EOF for the reader).
    pub async fn close_stdin(&self, ip: &str, pid: u32) -> Result<(), AgentError> {
        let req = pp::CloseStdinRequest { process: Some(selector(pid)) };
        self.unary::<_, pp::CloseStdinResponse>(ip, "/process.Process/CloseStdin", &req).await.map(drop)
    }

    /// Sends SIGKILL (`kill = true`) or SIGTERM to a process.
    pub async fn signal(&self, ip: &str, pid: u32, kill: bool) -> Result<(), AgentError> {
        let signal = if kill { pp::Signal::Sigkill } else { pp::Signal::Sigterm };
        let req = pp::SendSignalRequest { process: Some(selector(pid)), signal: signal as i32 };
        self.unary::<_, pp::SendSignalResponse>(ip, "/process.Process/SendSignal", &req).await.map(drop)
    }

    /// Resizes a process's terminal.
    pub async fn resize(&self, ip: &str, pid: u32, cols: u16, rows: u16) -> Result<(), AgentError> {
        let size = pp::PtySize { cols: cols.into(), rows: rows.into() };
        let req = pp::UpdateRequest { process: Some(selector(pid)), pty: Some(pp::Pty { size: Some(size) }) };
        self.unary::<_, pp::UpdateResponse>(ip, "/process.Process/Update", &req).await.map(drop)
    }
}

fn selector(pid: u32) -> pp::ProcessSelector {
    pp::ProcessSelector { pid: Some(pid), tag: None }
}

/// The `message` of a Connect error body, else the body as text.
fn connect_error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(e) => format!("{} {}", e.code, e.message).trim().to_string(),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The events of one started process, as the agent streams them.
pub struct ProcessStream {
    body: Incoming,
    buf: BytesMut,
    ended: bool,
}

impl ProcessStream {
    /// The next event; `Ok(None)` once the stream ended cleanly.
    pub async fn next(&mut self) -> Result<Option<pp::ProcessEvent>, AgentError> {
        loop {
            if let Some((flags, payload)) = take_frame(&mut self.buf) {
                if flags & 0x02 != 0 {
                    // End of stream: a JSON object, with `error` when the call failed.
                    self.ended = true;
                    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
                    if let Some(err) = v.get("error") {
                        return Err(AgentError::Failed(connect_error_message(err.to_string().as_bytes())));
                    }
                    return Ok(None);
                }
                let msg = pp::StartResponse::decode(payload)
                    .map_err(|e| AgentError::Failed(format!("undecodable process event: {e}")))?;
                match msg.event {
                    Some(ev) => return Ok(Some(ev)),
                    None => continue,
                }
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(AgentError::Failed(format!("process stream broke: {e}"))),
                None => {
                    self.ended = true;
                    if !self.buf.is_empty() {
                        return Err(AgentError::Failed("process stream ended inside a message".into()));
                    }
                    return Ok(None);
                }
            }
        }
    }
}

/// The exit code the native API reports for an agent's end event: the code when the process
/// exited, 128+N when signal N killed it (the agent names the signal in `status`).
pub fn exit_code(end: &pp::EndEvent) -> i32 {
    if end.exited {
        return end.exit_code;
    }
    let name = end.status.strip_prefix("signal: ").unwrap_or("");
    let n = match name {
        "hangup" | "hup" => 1,
        "interrupt" | "int" => 2,
        "quit" => 3,
        "abort" | "aborted" | "abrt" => 6,
        "killed" | "kill" => 9,
        "segmentation fault" | "segv" => 11,
        "broken pipe" | "pipe" => 13,
        "alarm" | "alrm" => 14,
        "terminated" | "term" => 15,
        _ => return -1,
    };
    128 + n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let end =
            |exited, code, status: &str| pp::EndEvent { exit_code: code, exited, status: status.into(), error: None };
        assert_eq!(exit_code(&end(true, 3, "exit status 3")), 3);
        assert_eq!(exit_code(&end(false, -1, "signal: kill")), 137);
        assert_eq!(exit_code(&end(false, -1, "signal: term")), 143);
        assert_eq!(exit_code(&end(false, -1, "signal: something")), -1);
    }

    #[test]
    fn connect_errors_are_readable() {
        assert_eq!(
            connect_error_message(br#"{"code":"not_found","message":"no such process"}"#),
            "not_found no such process"
        );
        assert_eq!(connect_error_message(b"plain text"), "plain text");
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable_not_failed() {
        // Bind then drop: the port is (almost certainly) closed, so the connect is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = AgentClient::new(port);
        let req = pp::StartRequest::default();
        match client.start("127.0.0.1", &Caller::default(), &req).await {
            Err(AgentError::Unavailable(_)) => {}
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("nothing listens on {port}"),
        }
    }
}
