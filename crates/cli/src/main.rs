//! `agentbox`: the server (`agentbox serve`) and a client for its API.

mod client;
mod cmd;
mod output;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agentbox", version, about = "Sandboxes for AI agents: warm pools, claimed in milliseconds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded SQLite store + local container backend by default).
    Serve(serve::ServeArgs),
    /// Sandbox templates.
    #[command(subcommand)]
    Template(cmd::template::TemplateCmd),
    /// Sandbox pools.
    #[command(subcommand)]
    Pool(cmd::pool::PoolCmd),
    /// Sandboxes.
    #[command(subcommand)]
    Sandbox(cmd::sandbox::SandboxCmd),
    /// Run a command in a sandbox: `agentbox exec ID -- cmd args...`.
    Exec(cmd::sandbox::ExecArgs),
    /// Open an interactive shell in a sandbox (exit code = the shell's): `agentbox terminal ID`.
    Terminal(cmd::terminal::TerminalArgs),
    /// API keys: yours, or (admin) anyone's.
    #[command(subcommand)]
    Apikey(cmd::apikey::ApiKeyCmd),
    /// Who the server thinks you are.
    Whoami(crate::client::ClientArgs),
    /// The clusters the server routes to (`--clusters-config`); ids for `cluster::pool`.
    Clusters(crate::client::ClientArgs),
    /// Quotas: admin management, or `quota list --mine`.
    #[command(subcommand)]
    Quota(cmd::quota::QuotaCmd),
    /// Images of the local backend.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
    /// Measure claim, switch, exec and refill latency against a running server, with a cold `runc run` baseline.
    Bench(cmd::bench::BenchArgs),
}

fn main() -> ExitCode {
    // libcontainer's process-creating calls run in a fresh copy of this binary (single-threaded,
    // so its clone() is safe); dispatch before anything else starts threads.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(agentbox_backend_local::HELPER_ARG) {
        return ExitCode::from(agentbox_backend_local::helper_main(&args[2..]).clamp(0, 255) as u8);
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Template(c) => c.run().await,
            Command::Pool(c) => c.run().await,
            Command::Sandbox(c) => c.run().await,
            Command::Exec(a) => a.run().await,
            Command::Terminal(a) => a.run().await,
            Command::Apikey(c) => c.run().await,
            Command::Whoami(c) => cmd::whoami(c).await,
            Command::Clusters(c) => cmd::clusters(c).await,
            Command::Quota(c) => c.run().await,
            Command::Image(c) => c.run().await,
            Command::Bench(a) => a.run().await,
        }
    });
    // Do not wait forever for blocking work that is stuck (e.g. a runtime call) at exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
