//! `agentbox apikey`: self-service API keys, and admin keys for any team/user.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs};
use crate::output::print;

#[derive(Subcommand)]
pub enum ApiKeyCmd {
    /// Create a key. Without --team/--user: a key for yourself; with them (admin): for that user.
    /// The raw token is printed once here (and recoverable with `apikey list`).
    Create {
        #[arg(long)]
        description: Option<String>,
        /// Expiry as RFC 3339 (`2030-01-31T00:00:00Z`) or a duration from now (`30d`, `12h`).
        #[arg(long)]
        expires: Option<String>,
        /// Admin: the key's team.
        #[arg(long, requires = "user")]
        team: Option<String>,
        /// Admin: the key's user.
        #[arg(long, requires = "team")]
        user: Option<String>,
        /// Admin: the quota URL the key's pools are charged to by default.
        #[arg(long)]
        quota_url: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List your keys (with --all, admin: every key).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete a key by its id (`agbx-…`); admins may delete any key with --admin.
    Delete {
        key_id: String,
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
}

const COLS: &[(&str, &str)] = &[
    ("KEY ID", "/keyId"),
    ("TEAM", "/team"),
    ("USER", "/user"),
    ("NAMESPACE", "/namespace"),
    ("ISSUED", "/issuedAt"),
    ("EXPIRES", "/expiresAt"),
    ("DESCRIPTION", "/description"),
];

fn expiry(s: &str) -> Result<String> {
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return Ok(s.to_string());
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok((chrono::Utc::now() + chrono::Duration::from_std(d)?).to_rfc3339()),
        Err(_) => bail!("--expires {s:?}: use an RFC 3339 time (2030-01-31T00:00:00Z) or a duration (30d, 12h)"),
    }
}

impl ApiKeyCmd {
    pub async fn run(self) -> Result<ExitCode> {
        match self {
            ApiKeyCmd::Create { description, expires, team, user, quota_url, c } => {
                let expires_at = expires.as_deref().map(expiry).transpose()?;
                let client = Client::new(&c)?;
                let v: Value = match (team, user) {
                    (Some(team), Some(user)) => {
                        let body = json!({"team": team, "user": user, "description": description,
                            "expiresAt": expires_at, "quotaURL": quota_url});
                        client.post("/v1/admin/api-keys", &body).await?
                    }
                    _ => {
                        if quota_url.is_some() {
                            bail!("--quota-url is for admin-created keys (with --team and --user)");
                        }
                        client
                            .post("/v1/api-keys", &json!({"description": description, "expiresAt": expires_at}))
                            .await?
                    }
                };
                let mut cols = vec![("API KEY", "/apiKey")];
                cols.extend_from_slice(COLS);
                print(c.output, &v, std::slice::from_ref(&v), &cols);
            }
            ApiKeyCmd::List { all, c } => {
                let path = if all { "/v1/admin/api-keys" } else { "/v1/api-keys" };
                let v: Value = Client::new(&c)?.get(path).await?;
                print(c.output, &v, v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), COLS);
            }
            ApiKeyCmd::Delete { key_id, admin, c } => {
                let path =
                    if admin { format!("/v1/admin/api-keys/{key_id}") } else { format!("/v1/api-keys/{key_id}") };
                let v: Value = Client::new(&c)?.delete(&path).await?;
                print(c.output, &v, std::slice::from_ref(&v), &[("KEY ID", "/keyId"), ("STATUS", "/status")]);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
