//! `agentbox quota …`: admin quota management (`/v1/admin/quotas`) and the caller's own quotas
//! (`/v1/quotas`).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::client::{Client, ClientArgs};
use crate::output::print;

/// Spec fields of a quota, shared by `create` and `update`.
#[derive(Args, Debug, Clone, Default)]
pub struct QuotaSpecArgs {
    /// Hierarchical quota URL, dot-separated (`org.team.user`).
    #[arg(long)]
    pub url: Option<String>,
    /// `exclusive` (default), `ondemand` or `idle`.
    #[arg(long)]
    pub queue: Option<String>,
    /// Owner team (empty = any team).
    #[arg(long)]
    pub team: Option<String>,
    /// Owner user (empty = any user of the team).
    #[arg(long)]
    pub user: Option<String>,
    /// CPU limit (`4`, `500m`).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory limit (`8Gi`, `512Mi`).
    #[arg(long)]
    pub memory: Option<String>,
    /// Number of slots.
    #[arg(long)]
    pub sandboxes: Option<u64>,
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Subcommand)]
pub enum QuotaCmd {
    /// Create a quota (admin).
    Create {
        name: String,
        #[command(flatten)]
        spec: QuotaSpecArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List every quota with reserved and free resources (admin); `--mine` lists the quotas you may use.
    List {
        /// Your own quotas (`GET /v1/quotas`) instead of all (admin).
        #[arg(long)]
        mine: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show one quota (admin).
    Get {
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Change a quota (admin): the flags given replace those fields; `--cpu ""` removes a limit.
    Update {
        name: String,
        #[command(flatten)]
        spec: QuotaSpecArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete a quota (admin); refused while pools are charged to it.
    Delete {
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

const COLS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("URL", "/quotaURL"),
    ("QUEUE", "/queue"),
    ("TEAM", "/team"),
    ("USER", "/user"),
    ("RESOURCES", "/resources"),
    ("RESERVED", "/reserved"),
    ("FREE", "/free"),
];

/// Set (or, for an empty string, remove) `key` in `obj`.
fn set_or_clear(obj: &mut Map<String, Value>, key: &str, v: Option<String>) {
    match v {
        Some(s) if s.is_empty() => {
            obj.remove(key);
        }
        Some(s) => {
            obj.insert(key.into(), json!(s));
        }
        None => {}
    }
}

/// Apply the flags to a quota body (`quotaURL`, `queue`, `team`, `user`, `resources`, `description`).
fn apply(body: &mut Map<String, Value>, s: QuotaSpecArgs) {
    set_or_clear(body, "quotaURL", s.url);
    set_or_clear(body, "queue", s.queue);
    set_or_clear(body, "team", s.team);
    set_or_clear(body, "user", s.user);
    set_or_clear(body, "description", s.description);
    let res = body.entry("resources").or_insert_with(|| json!({}));
    if let Some(r) = res.as_object_mut() {
        set_or_clear(r, "cpu", s.cpu);
        set_or_clear(r, "memory", s.memory);
        if let Some(n) = s.sandboxes {
            r.insert("sandboxes".into(), json!(n));
        }
    }
}

/// The writable fields of a quota as returned by the server (for read-modify-write updates).
fn spec_of(q: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    for k in ["quotaURL", "queue", "team", "user", "resources", "description", "labels", "resourceVersion"] {
        if let Some(v) = q.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    m
}

impl QuotaCmd {
    pub async fn run(self) -> Result<ExitCode> {
        match self {
            QuotaCmd::Create { name, spec, c } => {
                if spec.url.as_deref().is_none_or(str::is_empty) {
                    anyhow::bail!("--url is required: the quota's hierarchical URL, e.g. --url org.team");
                }
                let mut body = Map::new();
                body.insert("name".into(), json!(name));
                apply(&mut body, spec);
                let v: Value = Client::new(&c)?.post("/v1/admin/quotas", &Value::Object(body)).await?;
                print(c.output, &v, std::slice::from_ref(&v["quota"]), COLS);
            }
            QuotaCmd::List { mine, c } => {
                let path = if mine { "/v1/quotas" } else { "/v1/admin/quotas" };
                let v: Value = Client::new(&c)?.get(path).await?;
                print(c.output, &v, v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), COLS);
            }
            QuotaCmd::Get { name, c } => {
                let v: Value = Client::new(&c)?.get(&format!("/v1/admin/quotas/{name}")).await?;
                print(c.output, &v, std::slice::from_ref(&v["quota"]), COLS);
                if c.output == crate::output::Format::Table
                    && let Some(pools) = v["quota"]["pools"].as_array()
                {
                    let names: Vec<_> = pools.iter().filter_map(Value::as_str).collect();
                    println!("pools: {}", names.join(", "));
                }
            }
            QuotaCmd::Update { name, spec, c } => {
                let client = Client::new(&c)?;
                let path = format!("/v1/admin/quotas/{name}");
                let cur: Value = client.get(&path).await?;
                let mut body = spec_of(&cur["quota"]);
                apply(&mut body, spec);
                let v: Value = client.put(&path, &Value::Object(body)).await?;
                print(c.output, &v, std::slice::from_ref(&v["quota"]), COLS);
            }
            QuotaCmd::Delete { name, c } => {
                let v: Value = Client::new(&c)?.delete(&format!("/v1/admin/quotas/{name}")).await?;
                print(c.output, &v, std::slice::from_ref(&v), &[("NAME", "/name"), ("STATUS", "/status")]);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_flags_replace_only_the_fields_given() {
        let cur = json!({"name": "q", "quotaURL": "org", "queue": "idle", "team": "t",
            "resources": {"cpu": "4", "memory": "8Gi"}, "used": {}, "resourceVersion": 3});
        let mut body = spec_of(&cur);
        apply(
            &mut body,
            QuotaSpecArgs {
                cpu: Some(String::new()),
                sandboxes: Some(5),
                user: Some("u".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            Value::Object(body),
            json!({"quotaURL": "org", "queue": "idle", "team": "t", "user": "u",
                "resources": {"memory": "8Gi", "sandboxes": 5}, "resourceVersion": 3})
        );
    }
}
