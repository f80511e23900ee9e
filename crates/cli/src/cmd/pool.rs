use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs};
use crate::output::print;

#[derive(Subcommand)]
pub enum PoolCmd {
    /// List pools with their slot counts.
    List {
        /// On a gateway: the pools of this cluster (named `cluster::pool`), or `*` for all clusters.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show one pool.
    Get {
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Create a pool from a template (or from a JSON/YAML file with the full request).
    Create {
        name: String,
        #[arg(long, conflicts_with = "file")]
        template: Option<String>,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// `IdleImage` or `PoolDefaultImage`.
        #[arg(long)]
        image_policy: Option<String>,
        /// Override container 0's image.
        #[arg(long)]
        image: Option<String>,
        /// Reserve the pool's slots against this quota URL (`org.team.user`).
        #[arg(long)]
        quota_url: Option<String>,
        /// Full create request as JSON/YAML (`-` = stdin); `name` is taken from the argument.
        #[arg(short, long)]
        file: Option<String>,
        /// Wait until every slot is idle.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Change the number of slots.
    Scale {
        name: String,
        replicas: u32,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete a pool and all its slots.
    Delete {
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

const COLS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("PHASE", "/status/phase"),
    ("REPLICAS", "/spec/replicas"),
    ("IDLE", "/status/idle"),
    ("RUNNING", "/status/running"),
    ("STARTING", "/status/starting"),
    ("STOPPING", "/status/stopping"),
    ("FAILED", "/status/failed"),
    ("IMAGE", "/spec/template/containers/0/image"),
];

/// Wait until the pool has `replicas` idle-or-busy slots and nothing is being created.
async fn wait_ready(client: &Client, name: &str) -> Result<Value> {
    let start = Instant::now();
    loop {
        let v: Value = client.get(&format!("/v1/sandboxpools/{name}")).await?;
        let s = &v["pool"]["status"];
        let want = v["pool"]["spec"]["replicas"].as_u64().unwrap_or(0);
        let have = ["idle", "running", "starting", "stopping"].iter().map(|k| s[k].as_u64().unwrap_or(0)).sum::<u64>();
        if have == want && s["creating"].as_u64() == Some(0) && s["failed"].as_u64() == Some(0) {
            return Ok(v);
        }
        if let Some(d) = s["diagnostics"].as_array().and_then(|d| d.first()) {
            bail!("pool {name} has failed slots: {}: {}", d["reason"], d["message"]);
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("pool {name} not ready after 5 minutes: {s}");
        }
        eprint!("\rwaiting for pool {name}: {have}/{want} slots ready ");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl PoolCmd {
    pub async fn run(self) -> Result<ExitCode> {
        match self {
            PoolCmd::List { cluster, c } => {
                let path = match cluster {
                    Some(cl) => format!("/v1/sandboxpools?cluster={}", if cl == "*" { "%2A".to_string() } else { cl }),
                    None => "/v1/sandboxpools".to_string(),
                };
                let v: Value = Client::new(&c)?.get(&path).await?;
                print(c.output, &v, v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), COLS);
                if c.output == crate::output::Format::Table {
                    for e in v["clusterErrors"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                        eprintln!("cluster {} not listed: {}", e["cluster"], e["error"]);
                    }
                }
            }
            PoolCmd::Get { name, c } => {
                let v: Value = Client::new(&c)?.get(&format!("/v1/sandboxpools/{name}")).await?;
                print(c.output, &v, std::slice::from_ref(&v["pool"]), COLS);
                if c.output == crate::output::Format::Table {
                    for d in v["pool"]["status"]["diagnostics"].as_array().into_iter().flatten() {
                        println!("slot {}: {}: {}", d["podName"], d["reason"], d["message"]);
                    }
                }
            }
            PoolCmd::Create { name, template, replicas, image_policy, image, quota_url, file, wait, c } => {
                let client = Client::new(&c)?;
                let mut body = match file {
                    Some(f) => super::read_doc(&f)?,
                    None => json!({"templateName": template.unwrap_or_else(|| "default".into()), "replicas": replicas}),
                };
                body["name"] = json!(name);
                if let Some(p) = image_policy {
                    body["podCreationImagePolicy"] = json!(p);
                }
                if let Some(i) = image {
                    body["overrides"] = json!({"image": i});
                }
                if let Some(u) = quota_url {
                    body["reservation"] = json!({"quotaURL": u});
                }
                let mut v: Value = client.post("/v1/sandboxpools", &body).await?;
                if wait {
                    v = wait_ready(&client, &name).await?;
                    eprintln!();
                }
                print(c.output, &v, std::slice::from_ref(&v["pool"]), COLS);
            }
            PoolCmd::Scale { name, replicas, wait, c } => {
                let client = Client::new(&c)?;
                let mut v: Value =
                    client.put(&format!("/v1/sandboxpools/{name}"), &json!({"replicas": replicas})).await?;
                if wait {
                    v = wait_ready(&client, &name).await?;
                    eprintln!();
                }
                print(c.output, &v, std::slice::from_ref(&v["pool"]), COLS);
            }
            PoolCmd::Delete { name, c } => {
                let v: Value = Client::new(&c)?.delete(&format!("/v1/sandboxpools/{name}")).await?;
                print(c.output, &v, std::slice::from_ref(&v), &[("NAME", "/name"), ("STATUS", "/status")]);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
