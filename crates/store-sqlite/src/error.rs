//! Mapping of SQLite and JSON failures onto [`StoreError`].
//!
//! Every failure the caller cannot act on becomes [`StoreError::Backend`] with a lowercase context
//! saying which operation failed; the store never panics on a database error.

use agentbox_core::store::StoreError;

/// A database error during `what` (e.g. "insert sandbox sb-1").
pub(crate) fn backend(what: &str, e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {what}: {e}"))
}

/// An object that could not be encoded as JSON.
pub(crate) fn encode(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {what}: cannot encode as json: {e}"))
}

/// A stored JSON document that no longer decodes.
pub(crate) fn decode(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!(
        "sqlite: {what}: stored json does not decode ({e}); the database was written by an \
         incompatible agentbox or edited by hand"
    ))
}

/// A value that does not fit SQLite's signed 64-bit integers.
pub(crate) fn too_large(what: &str, v: u64) -> StoreError {
    StoreError::Backend(format!("sqlite: {what}: resource version {v} exceeds the largest storable value"))
}
