//! Client subcommands, one file per resource.

pub mod bench;
pub mod image;
pub mod pool;
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
