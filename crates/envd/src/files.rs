//! `GET /files` (streamed download) and `POST /files` (streamed upload, multipart or
//! `application/octet-stream`), with envd's user and path semantics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::server::{AppState, FilesQuery, http_error};
use crate::users::{User, resolve_path};

fn io_status(e: &std::io::Error) -> StatusCode {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => StatusCode::NOT_FOUND,
        K::PermissionDenied => StatusCode::UNAUTHORIZED,
        K::StorageFull | K::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        K::IsADirectory | K::NotADirectory | K::InvalidInput => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn io_error(e: &std::io::Error, path: &Path) -> Response {
    http_error(io_status(e), format!("{}: {e}", path.display()))
}

/// `GET /files?path=&username=`: the file's bytes, streamed.
pub async fn download(State(st): State<Arc<AppState>>, Query(q): Query<FilesQuery>) -> Response {
    let user = st.user_named(q.username.as_deref());
    let Some(path) = q.path.filter(|p| !p.is_empty()) else {
        return http_error(StatusCode::BAD_REQUEST, "query parameter path is required");
    };
    let path = resolve_path(&user, &path);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return io_error(&e, &path),
    };
    match file.metadata().await {
        Ok(m) if m.is_dir() => http_error(StatusCode::BAD_REQUEST, format!("{} is a directory", path.display())),
        Err(e) => io_error(&e, &path),
        Ok(m) => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let disposition = format!("attachment; filename=\"{}\"", name.replace('"', ""));
            let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_LENGTH, m.len().to_string()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response()
        }
    }
}

async fn create_for(user: &User, path: &Path) -> std::io::Result<tokio::fs::File> {
    let (u, p) = (user.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || crate::fs::create_parents(&u, &p)).await.map_err(std::io::Error::other)??;
    let f = tokio::fs::File::create(path).await?;
    crate::fs::chown_for(user, path);
    Ok(f)
}

fn write_info(path: &Path) -> serde_json::Value {
    serde_json::json!({
        "name": path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        "type": "file",
        "path": path.to_string_lossy(),
    })
}

/// `POST /files?path=&username=`: writes each uploaded file and answers with a JSON list
/// of `{name, type, path}`.
pub async fn upload(State(st): State<Arc<AppState>>, Query(q): Query<FilesQuery>, req: Request) -> Response {
    let user = st.user_named(q.username.as_deref());
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if req.headers().get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity") {
        return http_error(StatusCode::BAD_REQUEST, "compressed uploads are not supported: upload without gzip");
    }
    let query_path = q.path.filter(|p| !p.is_empty());
    if ct.starts_with("multipart/form-data") {
        let mut mp = match Multipart::from_request(req, &()).await {
            Ok(m) => m,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("invalid multipart body: {e}")),
        };
        let mut written = Vec::new();
        loop {
            let mut field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("invalid multipart body: {e}")),
            };
            if field.name() != Some("file") {
                continue;
            }
            let target = match (&query_path, field.file_name()) {
                (Some(p), _) if written.is_empty() => p.clone(),
                (_, Some(name)) if !name.is_empty() => name.to_string(),
                _ => return http_error(StatusCode::BAD_REQUEST, "a file part needs a path: pass ?path= or a filename"),
            };
            let path = resolve_path(&user, &target);
            let mut file = match create_for(&user, &path).await {
                Ok(f) => f,
                Err(e) => return io_error(&e, &path),
            };
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if let Err(e) = file.write_all(&chunk).await {
                            return io_error(&e, &path);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("upload interrupted: {e}")),
                }
            }
            if let Err(e) = file.flush().await {
                return io_error(&e, &path);
            }
            written.push(write_info(&path));
        }
        if written.is_empty() {
            return http_error(StatusCode::BAD_REQUEST, "no file part named \"file\" in the upload");
        }
        axum::Json(written).into_response()
    } else {
        let Some(target) = query_path else {
            return http_error(StatusCode::BAD_REQUEST, "query parameter path is required for octet-stream uploads");
        };
        let path: PathBuf = resolve_path(&user, &target);
        let mut file = match create_for(&user, &path).await {
            Ok(f) => f,
            Err(e) => return io_error(&e, &path),
        };
        let mut body = req.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("upload interrupted: {e}")),
            };
            if let Err(e) = file.write_all(&chunk).await {
                return io_error(&e, &path);
            }
        }
        if let Err(e) = file.flush().await {
            return io_error(&e, &path);
        }
        axum::Json(vec![write_info(&path)]).into_response()
    }
}
