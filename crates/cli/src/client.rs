//! A small client for the native API: endpoint and key from flags or `AGENTBOX_ENDPOINT` /
//! `AGENTBOX_API_KEY`; API errors become messages that carry the server's words.

use anyhow::{Context, Result, anyhow};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "AGENTBOX_ENDPOINT", default_value = "http://127.0.0.1:8080", global = true)]
    pub endpoint: String,
    /// API key (sent as AGENTBOX-API-KEY).
    #[arg(long, env = "AGENTBOX_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: crate::output::Format,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// An error answer from the server.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = self.body.get("error").and_then(Value::as_str).unwrap_or("request failed");
        write!(f, "{} ({})", msg, self.status)?;
        if let Some(hint) = self.body.pointer("/detail/hint").and_then(Value::as_str) {
            write!(f, "\nhint: {hint}")?;
        }
        if let Some(pools) = self.body.pointer("/detail/availablePools").and_then(Value::as_array) {
            let names: Vec<_> = pools.iter().filter_map(|p| p.get("name").and_then(Value::as_str)).collect();
            write!(f, "\navailable pools: {}", names.join(", "))?;
        }
        if let Some(qs) = self.body.pointer("/detail/availableQuotaURLs").and_then(Value::as_array) {
            let urls: Vec<_> = qs
                .iter()
                .filter_map(|q| {
                    let url = q.get("url").and_then(Value::as_str)?;
                    Some(match q.get("free").and_then(Value::as_str) {
                        Some(free) if !free.is_empty() => format!("{url} (free {free})"),
                        _ => url.to_string(),
                    })
                })
                .collect();
            write!(f, "\navailable quota URLs: {}", if urls.is_empty() { "none".into() } else { urls.join(", ") })?;
        }
        Ok(())
    }
}
impl std::error::Error for ApiError {}

impl Client {
    pub fn new(a: &ClientArgs) -> Result<Client> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Client { http, base: a.endpoint.trim_end_matches('/').to_string(), key: a.api_key.clone() })
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("X-AgentBox-Client-Version", env!("CARGO_PKG_VERSION"));
        if let Some(k) = &self.key {
            rb = rb.header("AGENTBOX-API-KEY", k);
        }
        rb
    }

    pub async fn send<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T> {
        let resp = rb.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the agentbox server at {}: {e}\nstart it with `agentbox serve` or set AGENTBOX_ENDPOINT",
                self.base
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the response")?;
        if !status.is_success() {
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            return Err(ApiError { status, body }.into());
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected response: {}", String::from_utf8_lossy(&bytes)))
    }

    /// `GET` a streaming endpoint: the response once its status is a success (errors as [`ApiError`]).
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response> {
        self.stream(self.request(Method::GET, path)).await
    }

    /// Sends a request to a streaming endpoint: the response once its status is a success.
    pub async fn stream(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = rb.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the agentbox server at {}: {e}\nstart it with `agentbox serve` or set AGENTBOX_ENDPOINT",
                self.base
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.context("reading the response")?;
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            return Err(ApiError { status, body }.into());
        }
        Ok(resp)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::GET, path)).await
    }
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::DELETE, path)).await
    }
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.request(Method::POST, path).json(body)).await
    }
    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.request(Method::PUT, path).json(body)).await
    }
}
