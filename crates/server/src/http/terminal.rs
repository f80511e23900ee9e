//! Interactive terminals over WebSocket: `POST /v1/sandboxes/{id}/exec-token` and
//! `GET /v1/sandboxes/{id}/terminal?token=`.
//!
//! Wire protocol of the socket:
//! - client → server text frames: JSON `{"op":"stdin","data":"..."}` (keystrokes) or
//!   `{"op":"resize","cols":N,"rows":M}`; binary frames are raw stdin bytes;
//! - server → client binary frames: terminal output (stdout and stderr merged, as on a TTY);
//! - when the shell exits, the server sends one text frame `{"op":"exit","exitCode":N}`, then a
//!   close frame (1000). When the client goes away, the shell gets EOT and is then ended with
//!   everything it started.
//!
//! The terminal endpoint is authorized by the token only (browsers cannot set headers on a
//! WebSocket), so it takes no [`crate::auth::AuthInfo`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentbox_core::backend::{PtyInput, PtySession};
use agentbox_core::error::AppError;
use axum::Json;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::auth::AuthInfo;
use crate::engine::{Engine, ExecToken};

/// Terminal traffic reports activity at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// Issue a single-use token (valid 30 s) that opens a terminal in this sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec-token", tag = "sandboxes", params(("id" = String, Path)),
    responses(
        (status = 200, body = ExecToken, description = "pass `token` to GET /v1/sandboxes/{id}/terminal within 30 s; single use"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "sandbox not Running")))]
pub async fn create_exec_token(
    State(st): State<Arc<AppState>>,
    auth: AuthInfo,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ExecToken>> {
    Ok(Json(st.engine.create_exec_token(&auth, &id)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    /// The exec token from `POST /v1/sandboxes/{id}/exec-token` (the only authorization).
    pub token: Option<String>,
}

/// An interactive shell (bash if present, else sh) with a terminal in container 0, over WebSocket.
///
/// Client text frames: `{"op":"stdin","data":"..."}` or `{"op":"resize","cols":N,"rows":M}`;
/// client binary frames: raw stdin. Server binary frames: terminal output (stdout+stderr merged).
/// When the shell exits the server sends the text frame `{"op":"exit","exitCode":N}` and closes the
/// socket; when the client closes it, the shell gets EOT and is then ended. Authorized by the
/// token only (no API key). Traffic counts as sandbox activity.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/terminal", tag = "sandboxes", params(("id" = String, Path), TerminalQuery),
    responses(
        (status = 101, description = "switching to the WebSocket terminal protocol"),
        (status = 400, body = ErrorBody, description = "not a WebSocket upgrade request"),
        (status = 401, body = ErrorBody, description = "token missing (`token query parameter is required`), invalid, used or expired (`exec token is invalid or has expired`), or for another sandbox (`token does not match sandbox`)"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "sandbox not Running")))]
pub async fn terminal(
    State(st): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TerminalQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = q.token.unwrap_or_default();
    // Token errors come first (401 even for a plain GET); a valid token is only used up once the
    // request is known to be a usable WebSocket upgrade.
    if let Err(e) = st.engine.check_exec_token(&id, &token) {
        return ApiError(e).into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(r) => {
            return ApiError(AppError::bad_request(format!(
                "this endpoint speaks WebSocket; connect with a WebSocket client ({})",
                r.body_text()
            )))
            .into_response();
        }
    };
    let session = match st.engine.open_terminal(&id, &token).await {
        Ok(s) => s,
        Err(e) => return ApiError(e).into_response(),
    };
    let engine = Arc::clone(&st.engine);
    ws.on_upgrade(move |socket| pump(socket, session, engine, id))
}

/// A client text frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
enum ClientOp {
    Stdin { data: String },
    Resize { cols: u16, rows: u16 },
}

/// Move bytes between the socket and the terminal until the shell exits or the client leaves.
async fn pump(socket: WebSocket, session: PtySession, engine: Arc<Engine>, id: String) {
    let PtySession { input, mut output, exit } = session;
    let (mut tx, mut rx) = socket.split();
    let mut last_touch = Instant::now();
    let mut touch = |engine: &Engine| {
        if last_touch.elapsed() >= TOUCH_EVERY {
            last_touch = Instant::now();
            engine.touch(&id);
        }
    };
    let mut client_open = true;
    loop {
        tokio::select! {
            out = output.recv() => match out {
                Some(bytes) => {
                    touch(&engine);
                    if client_open && tx.send(Message::Binary(bytes.into())).await.is_err() {
                        client_open = false;
                        let _ = input.send(PtyInput::Close).await;
                    }
                }
                None => break,
            },
            msg = rx.next(), if client_open => {
                let sent = match msg {
                    Some(Ok(Message::Binary(b))) => {
                        touch(&engine);
                        input.send(PtyInput::Data(b.to_vec())).await
                    }
                    Some(Ok(Message::Text(t))) => {
                        touch(&engine);
                        match serde_json::from_str::<ClientOp>(t.as_str()) {
                            Ok(ClientOp::Stdin { data }) => input.send(PtyInput::Data(data.into_bytes())).await,
                            Ok(ClientOp::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                                input.send(PtyInput::Resize { cols, rows }).await
                            }
                            Ok(ClientOp::Resize { .. }) => Ok(()),
                            Err(e) => {
                                tracing::debug!(sandbox_id = %id, error = %e, "ignoring a terminal frame that is not a known op");
                                Ok(())
                            }
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        client_open = false;
                        input.send(PtyInput::Close).await
                    }
                };
                // The session already ended: its output closes next.
                let _ = sent;
            }
        }
    }
    drop(input);
    if !client_open {
        return;
    }
    let code = exit.await.unwrap_or(-1);
    let exit_frame = serde_json::json!({"op": "exit", "exitCode": code}).to_string();
    let _ = tx.send(Message::Text(exit_frame.into())).await;
    let _ =
        tx.send(Message::Close(Some(CloseFrame { code: close_code::NORMAL, reason: "the shell exited".into() }))).await;
    // Let the client answer the close frame (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
