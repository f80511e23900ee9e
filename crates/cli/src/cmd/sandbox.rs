use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs};
use crate::output::{Format, print};

#[derive(Subcommand)]
pub enum SandboxCmd {
    /// Claim a sandbox from a pool (answers once it is Running).
    Create {
        /// Pool to claim from.
        #[arg(long, default_value = "default")]
        pool: String,
        /// Run this image in container 0 (in-place image switch).
        #[arg(long)]
        image: Option<String>,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "metadata", value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
        /// Labels KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// e.g. 30s, 2m.
        #[arg(long)]
        startup_timeout: Option<String>,
        #[arg(long)]
        idle_timeout: Option<String>,
        /// Fail at once (409) instead of waiting when no slot is idle.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List sandboxes (live and history), newest first.
    List {
        #[arg(long)]
        pool: Option<String>,
        /// Comma-separated statuses, e.g. Running,Failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// On a gateway: list the sandboxes of this cluster, or `*` for all clusters merged.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show one sandbox.
    Get {
        id: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Release a sandbox (its slot goes back to the pool).
    Delete {
        id: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Print the stdout/stderr of a sandbox's containers (or a runtime's log files).
    Logs {
        id: String,
        /// Last N lines (0 = all, at most 10000).
        #[arg(long, default_value_t = 0)]
        lines: usize,
        /// Only this container.
        #[arg(long)]
        container: Option<String>,
        /// `stdout` (default) or the name of a runtime with a logDir.
        #[arg(long)]
        source: Option<String>,
        /// Keep printing new lines as they are written, until the sandbox ends (or Ctrl-C).
        #[arg(short, long)]
        follow: bool,
        /// Prefix each line with its timestamp.
        #[arg(short, long)]
        timestamps: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Set the idle timeout of a sandbox (e.g. 30m, 1h, 1800); 0 removes it.
    Timeout {
        id: String,
        /// A duration such as 90s, 30m, 1h30m, integer seconds, or 0 to remove the idle timeout.
        duration: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Args)]
pub struct ExecArgs {
    /// Sandbox id.
    pub id: String,
    /// Environment KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Working directory.
    #[arg(short = 'w', long)]
    pub cwd: Option<String>,
    /// Seconds until the command is killed: 1..=86400 (1..=300 with `-o json`, which waits for the
    /// whole output).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub c: ClientArgs,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn kv_map(v: &[(String, String)]) -> serde_json::Map<String, Value> {
    v.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
}

const COLS: &[(&str, &str)] = &[
    ("SANDBOX ID", "/sandboxId"),
    ("POOL", "/poolName"),
    ("STATUS", "/status"),
    ("IMAGES", "/containerImages"),
    ("SLOT", "/podName"),
    ("CLAIMED", "/claimedAt"),
    ("DURATION(S)", "/durationSeconds"),
];

impl SandboxCmd {
    pub async fn run(self) -> Result<ExitCode> {
        match self {
            SandboxCmd::Create { pool, image, metadata, labels, startup_timeout, idle_timeout, no_wait, c } => {
                let mut body = json!({"poolName": pool, "metadata": kv_map(&metadata), "labels": kv_map(&labels)});
                if let Some(i) = image {
                    body["image"] = json!(i);
                }
                if let Some(t) = startup_timeout {
                    body["startupTimeout"] = json!(t);
                }
                if let Some(t) = idle_timeout {
                    body["idleTimeout"] = json!(t);
                }
                if no_wait {
                    body["wait"] = json!(false);
                }
                let v: Value = Client::new(&c)?.post("/v1/sandboxes", &body).await?;
                print(c.output, &v, std::slice::from_ref(&v["sandbox"]), COLS);
            }
            SandboxCmd::List { pool, status, limit, offset, cluster, c } => {
                let mut q = format!("/v1/sandboxes?limit={limit}&offset={offset}");
                if let Some(cl) = cluster {
                    q.push_str(&format!("&cluster={}", if cl == "*" { "%2A".to_string() } else { cl }));
                }
                if let Some(p) = pool {
                    q.push_str(&format!("&poolName={p}"));
                }
                if let Some(s) = status {
                    q.push_str(&format!("&status={s}"));
                }
                let v: Value = Client::new(&c)?.get(&q).await?;
                print(c.output, &v, v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), COLS);
                if c.output == Format::Table {
                    eprintln!("{} of {} total", v["items"].as_array().map_or(0, Vec::len), v["total"]);
                    for e in v["clusterErrors"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                        eprintln!("cluster {} not listed: {}", e["cluster"], e["error"]);
                    }
                }
            }
            SandboxCmd::Get { id, c } => {
                let v: Value = Client::new(&c)?.get(&format!("/v1/sandboxes/{id}")).await?;
                print(c.output, &v, std::slice::from_ref(&v["sandbox"]), COLS);
            }
            SandboxCmd::Delete { id, c } => {
                let v: Value = Client::new(&c)?.delete(&format!("/v1/sandboxes/{id}")).await?;
                print(c.output, &v, std::slice::from_ref(&v), &[("SANDBOX ID", "/sandboxId"), ("STATUS", "/status")]);
            }
            SandboxCmd::Logs { id, lines, container, source, follow, timestamps, c } => {
                let mut q = format!("?lines={lines}");
                if let Some(ct) = container {
                    q.push_str(&format!("&container={}", urlencode(&ct)));
                }
                if let Some(s) = source {
                    q.push_str(&format!("&source={}", urlencode(&s)));
                }
                let client = Client::new(&c)?;
                if follow {
                    return follow_logs(&client, &format!("/v1/sandboxes/{id}/logs/stream{q}"), c.output, timestamps)
                        .await;
                }
                let v: Value = client.get(&format!("/v1/sandboxes/{id}/logs{q}")).await?;
                if c.output == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let mut out = std::io::stdout().lock();
                    for e in v["entries"].as_array().into_iter().flatten() {
                        print_entry(&mut out, e, timestamps)?;
                    }
                    if v["truncated"].as_bool() == Some(true) {
                        eprintln!("(older lines not shown)");
                    }
                }
            }
            SandboxCmd::Timeout { id, duration, c } => {
                let timeout = match duration.parse::<u64>() {
                    Ok(n) => json!(n),
                    Err(_) => json!(duration),
                };
                let v: Value = Client::new(&c)?
                    .put(&format!("/v1/sandboxes/{id}/timeout"), &json!({ "timeout": timeout }))
                    .await?;
                if c.output == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    match v["sandbox"]["idleTimeoutSeconds"].as_u64() {
                        Some(s) => println!("sandbox {id}: idle timeout {s}s"),
                        None => println!("sandbox {id}: no idle timeout"),
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_entry(out: &mut impl Write, e: &Value, timestamps: bool) -> std::io::Result<()> {
    let log = e["log"].as_str().unwrap_or("");
    match e["timestamp"].as_str().filter(|_| timestamps) {
        Some(ts) => writeln!(out, "{ts} {log}"),
        None => writeln!(out, "{log}"),
    }
}

/// Print an NDJSON log stream as it comes; returns when the server ends it (the sandbox ended).
async fn follow_logs(client: &Client, path: &str, output: Format, timestamps: bool) -> Result<ExitCode> {
    use futures::StreamExt;
    let resp = client.open_stream(path).await?;
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("the log stream broke off: {e}"))?;
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if line.trim().is_empty() {
                continue;
            }
            let mut out = std::io::stdout().lock();
            if output == Format::Json {
                writeln!(out, "{line}")?;
            } else {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if v["_meta"].as_bool() == Some(true) {
                    continue;
                }
                print_entry(&mut out, &v, timestamps)?;
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a command through `POST …/exec/stream`, writing its output as it arrives; the exit code
/// of the command.
async fn stream_exec(client: &Client, path: &str, body: &Value, timeout: u64) -> Result<ExitCode> {
    use futures::StreamExt;
    let resp = client.stream(client.request(reqwest::Method::POST, path).json(body)).await?;
    let mut chunks = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = chunks.next().await {
        buf.extend_from_slice(&chunk.map_err(|e| anyhow::anyhow!("the exec stream broke off: {e}"))?);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
            let data = v["data"].as_str().unwrap_or("").as_bytes();
            match v["type"].as_str() {
                Some("stdout") => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(data)?;
                    out.flush()?;
                }
                Some("stderr") => std::io::stderr().write_all(data)?,
                Some("exit") => {
                    if v["timedOut"].as_bool() == Some(true) {
                        eprintln!("agentbox: command timed out after {timeout}s");
                    }
                    let code = v["exitCode"].as_i64().unwrap_or(1);
                    return Ok(ExitCode::from(code.clamp(0, 255) as u8));
                }
                Some("error") => bail!("the command broke off: {}", v["message"].as_str().unwrap_or("unknown error")),
                _ => {}
            }
        }
    }
    bail!("the exec stream ended without the command's exit status")
}

impl ExecArgs {
    /// Prints the command's stdout/stderr (as it is produced) and exits with its exit code.
    pub async fn run(self) -> Result<ExitCode> {
        if self.command.is_empty() {
            bail!("give the command after --, e.g. `agentbox exec ID -- python3 -V`");
        }
        let mut body = json!({"command": self.command, "timeoutSeconds": self.timeout, "env": kv_map(&self.env)});
        if let Some(cwd) = self.cwd {
            body["cwd"] = json!(cwd);
        }
        let client = Client::new(&self.c)?;
        if self.c.output != Format::Json {
            return stream_exec(&client, &format!("/v1/sandboxes/{}/exec/stream", self.id), &body, self.timeout).await;
        }
        let v: Value = client.post(&format!("/v1/sandboxes/{}/exec", self.id), &body).await?;
        if self.c.output == Format::Json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            std::io::stdout().write_all(v["stdout"].as_str().unwrap_or("").as_bytes())?;
            std::io::stderr().write_all(v["stderr"].as_str().unwrap_or("").as_bytes())?;
            if v["timedOut"].as_bool() == Some(true) {
                eprintln!("agentbox: command timed out after {}s", self.timeout);
            }
        }
        let code = v["exitCode"].as_i64().unwrap_or(1);
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    }
}
