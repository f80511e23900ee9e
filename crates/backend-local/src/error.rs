//! Errors of the local backend, mapped once into [`BackendError`] at the trait boundary.

use agentbox_core::backend::BackendError;

/// Everything that can go wrong inside the local backend.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("slot {0} not found")]
    SlotNotFound(String),
    #[error("slot {0} already exists; destroy it first or pick another slot id")]
    SlotExists(String),
    #[error("container {container} not found in slot {slot}")]
    ContainerNotFound { slot: String, container: String },
    #[error("container {container} of slot {slot} is not running")]
    NotRunning { slot: String, container: String },
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("network setup failed: {0}")]
    Network(String),
    #[error("cgroup setup failed: {0}")]
    Cgroup(String),
    #[error("oci runtime {runtime} failed: {message}")]
    Runtime { runtime: &'static str, message: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("system call {call} failed: {errno}")]
    Sys { call: &'static str, errno: nix::errno::Errno },
    #[error("state file {path} is invalid: {message}")]
    State { path: String, message: String },
}

impl LocalError {
    /// Wrap an IO error with what we were doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
        let context = context.into();
        move |source| LocalError::Io { context, source }
    }

    /// Wrap an errno with the name of the failed call.
    pub(crate) fn sys(call: &'static str) -> impl FnOnce(nix::errno::Errno) -> LocalError {
        move |errno| LocalError::Sys { call, errno }
    }
}

impl From<LocalError> for BackendError {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::SlotNotFound(s) => BackendError::SlotNotFound(s),
            LocalError::ContainerNotFound { slot, container } => BackendError::ContainerNotFound { slot, container },
            LocalError::NotRunning { slot, container } => BackendError::NotRunning { slot, container },
            LocalError::Image { image, message } => BackendError::Image { image, message },
            LocalError::Invalid(m) => BackendError::Invalid(m),
            LocalError::SlotExists(_) => BackendError::Invalid(e.to_string()),
            LocalError::Io { .. } => BackendError::Io(std::io::Error::other(e.to_string())),
            other => BackendError::Runtime(other.to_string()),
        }
    }
}

pub(crate) type Result<T, E = LocalError> = std::result::Result<T, E>;
