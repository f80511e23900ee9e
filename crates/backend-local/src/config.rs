//! Configuration of the local backend.

use std::path::PathBuf;
use std::sync::Arc;

use crate::images::ImageSource;

/// How a [`crate::LocalBackend`] runs slots on this host.
#[derive(Clone)]
pub struct LocalBackendConfig {
    /// Where slot state, bundles, logs and runtime state live (e.g. `<data-dir>/local`). Two
    /// backends must never share one.
    pub state_dir: PathBuf,
    /// Where images come from (the `agentbox-images` store in production).
    pub images: Arc<dyn ImageSource>,
    /// Host bridge of the slots (default `agbx0`), at most 15 characters.
    pub bridge_name: String,
    /// Slot subnet (default `10.213.0.0/16`); the bridge gets the first address. Backends with
    /// different state dirs must use different subnets (and bridges).
    pub subnet: String,
    /// Size bound of one container log file; it is rotated once (`.1`).
    pub log_max_bytes: u64,
    /// The runc binary for [`agentbox_core::model::RuntimeClass::Runc`] (default: `runc` from PATH).
    pub runc_binary: Option<PathBuf>,
    /// Binary that runs libcontainer's create/exec in a fresh single-threaded process when invoked
    /// as `<binary> __libcontainer-helper ...` (see `runtime::helper`). `None` = in this process,
    /// which is only safe for single-threaded embedders; servers must set it.
    pub libcontainer_helper: Option<PathBuf>,
    /// The in-sandbox agent (`agentbox-envd`). When set, every container gets it read-only at
    /// [`crate::AGENT_PATH`] and the backend starts it in container 0 of every slot (after the
    /// create and after every switch) on [`crate::AGENT_PORT`]. `None` = no agent.
    pub agent_binary: Option<PathBuf>,
}

impl LocalBackendConfig {
    /// The defaults: bridge `agbx0`, subnet `10.213.0.0/16`, 10 MiB logs, runc from PATH.
    pub fn new(state_dir: impl Into<PathBuf>, images: impl ImageSource) -> Self {
        LocalBackendConfig {
            state_dir: state_dir.into(),
            images: Arc::new(images),
            bridge_name: "agbx0".into(),
            subnet: "10.213.0.0/16".into(),
            log_max_bytes: 10 << 20,
            runc_binary: None,
            libcontainer_helper: None,
            agent_binary: None,
        }
    }
}

impl std::fmt::Debug for LocalBackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackendConfig")
            .field("state_dir", &self.state_dir)
            .field("bridge_name", &self.bridge_name)
            .field("subnet", &self.subnet)
            .field("log_max_bytes", &self.log_max_bytes)
            .field("runc_binary", &self.runc_binary)
            .field("libcontainer_helper", &self.libcontainer_helper)
            .field("agent_binary", &self.agent_binary)
            .finish_non_exhaustive()
    }
}
