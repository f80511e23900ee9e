use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, ClientArgs};
use crate::output::print;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import an OCI image layout (tar) or a `docker save` archive into the server's image store.
    Import {
        /// The archive file.
        file: String,
        /// Register the image under this reference (default: the names inside the archive).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List images in the server's store.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
}

const COLS: &[(&str, &str)] =
    &[("REFERENCE", "/reference"), ("DIGEST", "/digest"), ("SIZE", "/sizeBytes"), ("SOURCE", "/source")];

impl ImageCmd {
    pub async fn run(self) -> Result<ExitCode> {
        match self {
            ImageCmd::Import { file, name, c } => {
                let client = Client::new(&c)?;
                let f = tokio::fs::File::open(&file).await.with_context(|| format!("opening {file}"))?;
                let len = f.metadata().await?.len();
                let stream = reqwest::Body::wrap_stream(tokio_util_stream(f));
                let mut rb = client
                    .request(Method::POST, "/v1/admin/images")
                    .header("content-type", "application/x-tar")
                    .header("content-length", len)
                    .body(stream);
                if let Some(n) = &name {
                    rb = rb.query(&[("name", n)]);
                }
                let v: Value = client.send(rb).await?;
                print(c.output, &v, v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), COLS);
            }
            ImageCmd::List { c } => {
                let v: Value = Client::new(&c)?.get("/v1/images").await?;
                print(c.output, &v, v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), COLS);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// A file as a stream of chunks, without loading it whole.
fn tokio_util_stream(f: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}
