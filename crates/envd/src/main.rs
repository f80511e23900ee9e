//! `agentbox-envd`: runs the in-sandbox agent.

use clap::Parser;

/// In-sandbox agent speaking E2B's envd protocol.
#[derive(Parser, Debug)]
#[command(name = "agentbox-envd", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (E2B clients use 49983).
    #[arg(long, default_value_t = 49983)]
    port: u16,
    /// User for requests that name none; falls back to root when absent from /etc/passwd.
    #[arg(long, default_value = "root")]
    default_user: String,
    /// Use this directory as every user's home (relative paths and default cwd).
    #[arg(long)]
    home: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    tracing::info!(addr = %listener.local_addr()?, "agentbox-envd listening");
    let config = agentbox_envd::Config { default_user: args.default_user, home_override: args.home };
    agentbox_envd::serve(listener, config).await?;
    Ok(())
}
