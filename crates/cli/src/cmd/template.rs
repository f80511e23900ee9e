use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs};
use crate::output::print;

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// List the templates you can see.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show one template.
    Get {
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Create a template (admin) from a JSON/YAML file holding its spec.
    Create {
        name: String,
        /// File with the spec (`-` = stdin).
        #[arg(short, long)]
        file: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Update a template (admin); the version in the spec must increase.
    Update {
        name: String,
        #[arg(short, long)]
        file: String,
        /// Only update if the template is still at this resourceVersion.
        #[arg(long)]
        resource_version: Option<u64>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete a template (admin).
    Delete {
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

const COLS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("VERSION", "/version"),
    ("CPU", "/cpu"),
    ("MEMORY", "/memory"),
    ("DESCRIPTION", "/description"),
];

impl TemplateCmd {
    pub async fn run(self) -> Result<ExitCode> {
        match self {
            TemplateCmd::List { c } => {
                let v: Value = Client::new(&c)?.get("/v1/sandbox-templates").await?;
                print(c.output, &v, v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), COLS);
            }
            TemplateCmd::Get { name, c } => {
                let v: Value = Client::new(&c)?.get(&format!("/v1/sandbox-templates/{name}")).await?;
                show(&c, &v);
            }
            TemplateCmd::Create { name, file, c } => {
                let spec = super::read_doc(&file)?;
                let v: Value =
                    Client::new(&c)?.post("/v1/admin/sandbox-templates", &json!({"name": name, "spec": spec})).await?;
                show(&c, &v);
            }
            TemplateCmd::Update { name, file, resource_version, c } => {
                let spec = super::read_doc(&file)?;
                let body = json!({"spec": spec, "resourceVersion": resource_version});
                let v: Value = Client::new(&c)?.put(&format!("/v1/admin/sandbox-templates/{name}"), &body).await?;
                show(&c, &v);
            }
            TemplateCmd::Delete { name, c } => {
                let v: Value = Client::new(&c)?.delete(&format!("/v1/admin/sandbox-templates/{name}")).await?;
                print(c.output, &v, std::slice::from_ref(&v), &[("NAME", "/name"), ("STATUS", "/status")]);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn show(c: &ClientArgs, v: &Value) {
    let t = &v["template"];
    let row = json!({"name": t["name"], "version": t["spec"]["version"], "cpu": t["cpu"], "memory": t["memory"],
        "description": t["spec"]["description"], "resourceVersion": t["resourceVersion"]});
    print(
        c.output,
        v,
        &[row],
        &[
            ("NAME", "/name"),
            ("VERSION", "/version"),
            ("RESOURCE VERSION", "/resourceVersion"),
            ("DESCRIPTION", "/description"),
        ],
    );
}
