//! `agentbox-envd`: runs the in-sandbox agent.

use clap::Parser;

/// In-sandbox agent speaking E2B's envd protocol.
#[derive(Parser, Debug)]
#[command(name = "agentbox-envd", version)]
struct Args {
    /// IP address to listen on (no host names).
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
    /// Detach: fork, start a new session, point stdio at /dev/null, and let the parent exit
    /// (status 0) once the agent listens, or (status 1, reason on stderr) if it cannot start.
    /// Used by the local backend, which starts the agent through a waited-for exec.
    #[arg(long)]
    daemon: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ready = if args.daemon { Some(daemonize()?) } else { None };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args, ready))
}

async fn run(args: Args, ready: Option<std::io::PipeWriter>) -> anyhow::Result<()> {
    use std::io::Write;
    let listener = match listen(&args.host, args.port).await {
        Ok(l) => l,
        Err(e) => {
            if let Some(mut w) = ready {
                let _ = write!(w, "agentbox-envd: cannot listen on {}:{}: {e}", args.host, args.port);
            }
            return Err(e.into());
        }
    };
    tracing::info!(addr = %listener.local_addr()?, "agentbox-envd listening");
    if let Some(mut w) = ready {
        w.write_all(b"ok")?;
    }
    let config = agentbox_envd::Config { default_user: args.default_user, home_override: args.home };
    agentbox_envd::serve(listener, config).await?;
    Ok(())
}

/// Bind with TCP_NODELAY on the listening socket (Linux passes it on to accepted connections):
/// small streamed frames (process events) must not wait for Nagle / delayed ACK (~40 ms each).
/// `host` must be an IP address: resolving names would pull in glibc's NSS, which a static
/// agent cannot load in an image without glibc.
async fn listen(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--host {host:?} is not an IP address"))
    })?;
    let addr = std::net::SocketAddr::new(ip, port);
    let sock = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Fork. The parent waits for the child's word on a pipe and exits with it; the child returns
/// the pipe's write end (write `ok` once listening, else the reason).
#[allow(unsafe_code)]
fn daemonize() -> anyhow::Result<std::io::PipeWriter> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (mut r, w) = std::io::pipe()?;
    let devnull = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    // SAFETY: no other thread exists yet (the runtime and logging start after this), so the
    // child may run arbitrary code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error().into()),
        0 => {
            drop(r);
            // SAFETY: setsid and dup2 on fds we own; stdio now points at /dev/null, so the
            // caller's pipes see EOF when the parent exits.
            unsafe {
                libc::setsid();
                for fd in 0..=2 {
                    libc::dup2(devnull.as_raw_fd(), fd);
                }
            }
            // If a standard stream was closed when we started, /dev/null took its number: keep it.
            if devnull.as_raw_fd() > 2 {
                drop(devnull);
            } else {
                std::mem::forget(devnull);
            }
            Ok(w)
        }
        _ => {
            drop(w);
            let mut msg = String::new();
            let _ = r.read_to_string(&mut msg);
            if msg == "ok" {
                std::process::exit(0);
            }
            if msg.is_empty() {
                msg = "agentbox-envd: the agent exited before it listened".into();
            }
            eprintln!("{msg}");
            std::process::exit(1);
        }
    }
}
