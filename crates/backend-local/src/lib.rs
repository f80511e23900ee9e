//! The local backend of agentbox: every slot is a set of real Linux containers on this host.
//!
//! A slot = a network namespace with a veth on the host bridge (its own IP, NAT egress), a cgroup
//! `/agentbox/<slot>` holding the slot's limits, and containers (overlayfs rootfs over the image
//! layers, a fresh writable layer per start) run by youki's `libcontainer` in-process or by the
//! `runc` binary. State is persisted per slot (`slot.json`) so a restarted engine re-adopts running
//! slots. Needs root. See [`LocalBackend`].
//!
//! Process-safety caveat: libcontainer `clone()`s the engine process without `exec`, and the clone
//! runs Rust code. Every spawn and libcontainer call in this crate is serialized by one lock so a
//! container init never inherits a held lock (measured: a concurrent `Command::spawn` holding std's
//! `ENV_LOCK` deadlocked the init). Other code in the same process that spawns processes or calls
//! `std::env::set_var`/`var` while a libcontainer slot starts can still hit that race; the robust
//! fix is a helper process for libcontainer (not done yet). The runc runtime has no such hazard.
#![allow(unsafe_code)]

mod backend;
mod capture;
mod cgroup;
mod config;
mod error;
mod images;
mod logs;
mod net;
mod pty;
mod reaper;
mod rootfs;
mod runtime;
mod spec;
mod state;

pub use backend::LocalBackend;
pub use config::LocalBackendConfig;
pub use error::LocalError;
pub use images::{ImageSource, LocalImage};
pub use runtime::helper::{HELPER_ARG, helper_main};
pub use spec::{BLOCKED_SYSCALLS, DEFAULT_CAPS, MASKED_PATHS, READONLY_PATHS};

/// Where the agent binary ([`LocalBackendConfig::agent_binary`]) appears in every container.
pub const AGENT_PATH: &str = "/.agentbox/envd";

/// The port the agent listens on inside container 0 (E2B's envd port).
pub const AGENT_PORT: u16 = 49983;

/// Leak checks for tests and operators: what of a slot is still on the host.
pub mod leaks {
    use std::path::{Path, PathBuf};

    /// cgroup directories of the slot that still exist, in any hierarchy.
    pub fn cgroup_paths(slot: &str) -> Vec<PathBuf> {
        crate::cgroup::leftover_paths(slot)
    }

    /// Mount points at or below `dir`.
    pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
        crate::rootfs::mounts_under(dir)
    }
}
