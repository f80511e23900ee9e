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
    /// Print the stdout/stderr of a sandbox's containers.
    Logs {
        id: String,
        /// Last N lines (0 = all).
        #[arg(long, default_value_t = 0)]
        lines: usize,
        #[arg(long)]
        container: Option<String>,
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
    /// Seconds, 1..=300.
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
            SandboxCmd::List { pool, status, limit, offset, c } => {
                let mut q = format!("/v1/sandboxes?limit={limit}&offset={offset}");
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
            SandboxCmd::Logs { id, lines, container, c } => {
                let mut q = format!("/v1/sandboxes/{id}/logs?lines={lines}");
                if let Some(ct) = container {
                    q.push_str(&format!("&container={ct}"));
                }
                let v: Value = Client::new(&c)?.get(&q).await?;
                if c.output == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for e in v["entries"].as_array().into_iter().flatten() {
                        println!("{}", e["log"].as_str().unwrap_or(""));
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ExecArgs {
    /// Prints the command's stdout/stderr and exits with its exit code.
    pub async fn run(self) -> Result<ExitCode> {
        if self.command.is_empty() {
            bail!("give the command after --, e.g. `agentbox exec ID -- python3 -V`");
        }
        let mut body = json!({"command": self.command, "timeoutSeconds": self.timeout, "env": kv_map(&self.env)});
        if let Some(cwd) = self.cwd {
            body["cwd"] = json!(cwd);
        }
        let v: Value = Client::new(&self.c)?.post(&format!("/v1/sandboxes/{}/exec", self.id), &body).await?;
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
