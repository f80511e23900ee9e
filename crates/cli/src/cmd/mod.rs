//! Client subcommands, one file per resource.

pub mod apikey;
pub mod bench;
pub mod image;
pub mod pool;
pub mod quota;
pub mod sandbox;
pub mod template;
pub mod terminal;

use anyhow::{Context, Result};

/// Read a JSON or YAML file (`-` = stdin) into a JSON value.
pub fn read_doc(path: &str) -> Result<serde_json::Value> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    serde_yaml::from_str(&text).with_context(|| format!("{path} is neither valid JSON nor YAML"))
}

/// `agentbox whoami`.
pub async fn whoami(c: crate::client::ClientArgs) -> Result<std::process::ExitCode> {
    let v: serde_json::Value = crate::client::Client::new(&c)?.get("/v1/auth/whoami").await?;
    crate::output::print(
        c.output,
        &v,
        std::slice::from_ref(&v),
        &[
            ("ROLE", "/role"),
            ("TEAM", "/team"),
            ("USER", "/user"),
            ("NAMESPACE", "/namespace"),
            ("AUTH", "/authMethod"),
        ],
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `agentbox clusters`: the clusters the server routes to (its catalog; the local one marked).
pub async fn clusters(c: crate::client::ClientArgs) -> Result<std::process::ExitCode> {
    let v: serde_json::Value = crate::client::Client::new(&c)?.get("/v1/clusters").await?;
    crate::output::print(
        c.output,
        &v,
        v["clusters"].as_array().map(Vec::as_slice).unwrap_or(&[]),
        &[("ID", "/id"), ("NAME", "/name"), ("LOCAL", "/local")],
    );
    Ok(std::process::ExitCode::SUCCESS)
}
