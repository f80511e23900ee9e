//! `agentbox-envd`: the in-sandbox agent, wire-compatible with E2B's envd.
//!
//! It serves Connect RPC (`process.Process`, `filesystem.Filesystem`; JSON and protobuf
//! codecs; unary and server-streaming) and the HTTP endpoints `/health`, `/init` and
//! `/files` on one port (49983 by default), over HTTP/1.1 and h2c.

pub mod connect;
mod files;
pub mod fs;
pub mod process;
pub mod proto;
mod pty;
pub mod server;
pub mod users;
pub mod watch;

pub use server::{Config, router};

/// Serves the agent on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> std::io::Result<()> {
    let app = router(config).layer(axum::extract::DefaultBodyLimit::disable());
    // Small streamed frames (process events) must not wait for Nagle / delayed ACK (~40 ms each).
    axum::serve(listener, app).await
}
