//! The one error type of the image store.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, pulling, importing or unpacking an image.
///
/// Messages are lowercase and say what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is not cached and cannot be pulled (built-in name, `localhost/…`, missing
    /// imported image), or the registry says it does not exist.
    #[error("image {0} not found; import it with `agentbox images import` or push it to a registry")]
    NotFound(String),
    /// The reference string cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the caller passed.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Talking to the registry failed (network, auth, missing manifest, digest mismatch).
    #[error("pulling {reference} failed: {reason}; check the registry address and credentials")]
    Pull {
        /// The reference being pulled.
        reference: String,
        /// What the registry client reported.
        reason: String,
    },
    /// An image, archive, manifest or layer is malformed or unsafe.
    #[error("invalid image content: {0}")]
    Invalid(String),
    /// A blob's content does not match its digest.
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the content is corrupt, pull or import it again"
    )]
    DigestMismatch {
        /// Which blob or layer.
        what: String,
        /// The digest that was announced.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// A filesystem operation failed.
    #[error("i/o error on {path}: {source}; check the disk and the permissions of the image store directory")]
    Io {
        /// The path being worked on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
}

/// Adds a path to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(path, e))
    }
}
