//! `GET /files` (streamed download) and `POST /files` (streamed upload, multipart or
//! `application/octet-stream`), with envd's user and path semantics and its gzip support:
//! a download is gzip-encoded when `Accept-Encoding` prefers gzip, and an upload with
//! `Content-Encoding: gzip` (multipart or octet-stream) is decompressed while it streams.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
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

/// Content codings of `/files` transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// No transformation.
    Identity,
    /// gzip (RFC 1952).
    Gzip,
}

/// The coding of an upload body (`Content-Encoding`); `Err` names an unsupported coding.
pub fn content_coding(headers: &HeaderMap) -> Result<Coding, String> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else { return Ok(Coding::Identity) };
    let raw = v.to_str().unwrap_or("");
    match raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Coding::Identity),
        "gzip" | "x-gzip" => Ok(Coding::Gzip),
        _ => Err(format!("unsupported Content-Encoding {raw:?}: send gzip or identity")),
    }
}

/// The coding a download should use given `Accept-Encoding` (RFC 9110 §12.5.3), as envd
/// chooses: gzip when listed with a weight above 0 and at least identity's, identity when the
/// header is absent or prefers it (`*` alone means identity), and `Err` when identity is
/// refused and gzip is not acceptable either.
pub fn accepted_coding(headers: &HeaderMap) -> Result<Coding, String> {
    let Some(v) = headers.get(header::ACCEPT_ENCODING) else { return Ok(Coding::Identity) };
    let raw = v.to_str().unwrap_or("");
    let (mut gzip, mut identity, mut star): (Option<f32>, Option<f32>, Option<f32>) = (None, None, None);
    for item in raw.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "identity" => identity = Some(q),
            "*" => star = Some(q),
            _ => {}
        }
    }
    let gzip_q = gzip.unwrap_or(0.0);
    let identity_q = identity.or(star.filter(|q| *q == 0.0)).unwrap_or(1.0);
    if gzip_q > 0.0 && gzip_q >= identity_q {
        Ok(Coding::Gzip)
    } else if identity_q > 0.0 {
        Ok(Coding::Identity)
    } else if star.is_some_and(|q| q > 0.0) {
        Ok(Coding::Gzip)
    } else {
        Err(format!("no acceptable encoding in Accept-Encoding {raw:?}: accept gzip or identity"))
    }
}

/// `GET /files?path=&username=`: the file's bytes, streamed (gzip-encoded when preferred).
pub async fn download(State(st): State<Arc<AppState>>, Query(q): Query<FilesQuery>, headers: HeaderMap) -> Response {
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
            let coding = match accepted_coding(&headers) {
                Ok(c) => c,
                Err(e) => return http_error(StatusCode::NOT_ACCEPTABLE, e),
            };
            if coding == Coding::Gzip {
                // Fastest level: the transfer, not the ratio, is what callers wait for.
                let reader = tokio::io::BufReader::with_capacity(64 * 1024, file);
                let gz = async_compression::tokio::bufread::GzipEncoder::with_quality(
                    reader,
                    async_compression::Level::Fastest,
                );
                let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(gz, 64 * 1024));
                return (
                    [
                        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                        (header::CONTENT_ENCODING, "gzip".to_string()),
                        (header::VARY, "Accept-Encoding".to_string()),
                        (header::CONTENT_DISPOSITION, disposition),
                    ],
                    body,
                )
                    .into_response();
            }
            let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_LENGTH, m.len().to_string()),
                    (header::VARY, "Accept-Encoding".to_string()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response()
        }
    }
}

/// Replaces a gzip-encoded request body with its decompressed stream (concatenated gzip
/// members allowed); a corrupt body surfaces as an error of the body stream.
fn gunzip_body(req: Request) -> Request {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    let compressed =
        tokio_util::io::StreamReader::new(body.into_data_stream().map(|r| r.map_err(std::io::Error::other)));
    let mut gz = async_compression::tokio::bufread::GzipDecoder::new(compressed);
    gz.multiple_members(true);
    let plain = tokio_util::io::ReaderStream::with_capacity(gz, 64 * 1024);
    Request::from_parts(parts, Body::from_stream(plain))
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
    if let Some(h) = req.headers().keys().find(|k| k.as_str().starts_with("x-metadata-")) {
        return http_error(
            StatusCode::BAD_REQUEST,
            format!("file metadata ({h}) is not supported by agentbox's agent: upload without metadata"),
        );
    }
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let req = match content_coding(req.headers()) {
        Ok(Coding::Identity) => req,
        Ok(Coding::Gzip) => gunzip_body(req),
        Err(e) => return http_error(StatusCode::BAD_REQUEST, e),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, v.parse().unwrap());
        m
    }

    #[test]
    fn accept_encoding_picks_gzip_like_envd() {
        let ae = |v| accepted_coding(&h(header::ACCEPT_ENCODING, v));
        assert_eq!(accepted_coding(&HeaderMap::new()), Ok(Coding::Identity));
        assert_eq!(ae("gzip"), Ok(Coding::Gzip));
        assert_eq!(ae("gzip, deflate, br"), Ok(Coding::Gzip));
        assert_eq!(ae("br"), Ok(Coding::Identity));
        assert_eq!(ae("identity;q=1, gzip;q=0.5"), Ok(Coding::Identity));
        assert_eq!(ae("gzip;q=0"), Ok(Coding::Identity));
        assert_eq!(ae("*"), Ok(Coding::Identity));
        assert_eq!(ae("identity;q=0, *"), Ok(Coding::Gzip));
        assert!(ae("identity;q=0, br").is_err());
    }

    #[test]
    fn content_encoding_accepts_gzip_and_identity_only() {
        let ce = |v| content_coding(&h(header::CONTENT_ENCODING, v));
        assert_eq!(content_coding(&HeaderMap::new()), Ok(Coding::Identity));
        assert_eq!(ce("identity"), Ok(Coding::Identity));
        assert_eq!(ce("GZIP"), Ok(Coding::Gzip));
        assert!(ce("br").unwrap_err().contains("unsupported Content-Encoding"));
    }
}
