//! On-disk layout under `state_dir` and the persisted per-slot record (`slot.json`).
//!
//! ```text
//! <state_dir>/slots/<slot>/slot.json              persisted SlotRecord (complete=false while creating)
//! <state_dir>/slots/<slot>/containers/<n>/        OCI bundle of container n: config.json, upper/, work/, merged/
//! <state_dir>/slots/<slot>/logs/<name>.log        stdout+stderr of container <name> (+ one rotated .1)
//! <state_dir>/slots/<slot>/etc/                   hostname, hosts, resolv.conf bound into every container
//! <state_dir>/netns/<slot>                        bind mount of the slot's netns (in the holder mount namespace, see net.rs)
//! <state_dir>/runc/, <state_dir>/youki/           runtime state roots
//! ```

use std::path::{Path, PathBuf};

use agentbox_core::backend::SlotSpec;
use agentbox_core::model::RuntimeClass;
use serde::{Deserialize, Serialize};

use crate::error::{LocalError, Result};

/// One started container as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// Runtime container id, `<slot>.<name>.<generation>`.
    pub container_id: String,
    /// Index of the container in the slot (its bundle directory).
    pub index: usize,
    /// Init pid on the host (0 when the start failed).
    pub pid: i32,
    /// Start time of the init process (field 22 of `/proc/<pid>/stat`), to detect pid reuse.
    pub start_time: u64,
    /// The slot's `oom_kill` counter when this container started.
    pub oom_baseline: u64,
}

/// Everything needed to find (and free) a slot again after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub spec: SlotSpec,
    pub runtime: RuntimeClass,
    pub ip: String,
    pub veth: String,
    pub netns: PathBuf,
    /// False until create_slot finished; a slot found incomplete at start-up is destroyed.
    pub complete: bool,
    /// Increases on every switch; part of the container ids.
    pub generation: u64,
    pub containers: Vec<ContainerRecord>,
}

/// Paths of one backend instance.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Layout { root }
    }
    pub fn slots_dir(&self) -> PathBuf {
        self.root.join("slots")
    }
    pub fn slot_dir(&self, slot: &str) -> PathBuf {
        self.slots_dir().join(slot)
    }
    pub fn slot_file(&self, slot: &str) -> PathBuf {
        self.slot_dir(slot).join("slot.json")
    }
    pub fn container_dir(&self, slot: &str, index: usize) -> PathBuf {
        self.slot_dir(slot).join("containers").join(index.to_string())
    }
    pub fn logs_dir(&self, slot: &str) -> PathBuf {
        self.slot_dir(slot).join("logs")
    }
    pub fn log_file(&self, slot: &str, container: &str) -> PathBuf {
        self.logs_dir(slot).join(format!("{container}.log"))
    }
    pub fn etc_dir(&self, slot: &str) -> PathBuf {
        self.slot_dir(slot).join("etc")
    }
    pub fn netns_dir(&self) -> PathBuf {
        self.root.join("netns")
    }
    pub fn netns_file(&self, slot: &str) -> PathBuf {
        self.netns_dir().join(slot)
    }
    pub fn runtime_root(&self, rt: RuntimeClass) -> PathBuf {
        match rt {
            RuntimeClass::Libcontainer => self.root.join("youki"),
            RuntimeClass::Runc => self.root.join("runc"),
        }
    }
    pub fn empty_layer(&self) -> PathBuf {
        self.root.join("empty-layer")
    }
}

/// Atomically write a slot record (write to a temp file, fsync-free rename).
pub fn save(layout: &Layout, rec: &SlotRecord) -> Result<()> {
    let path = layout.slot_file(&rec.spec.slot_id);
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(rec)
        .map_err(|e| LocalError::State { path: path.display().to_string(), message: e.to_string() })?;
    std::fs::write(&tmp, body).map_err(LocalError::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(LocalError::io(format!("rename {}", path.display())))?;
    Ok(())
}

/// Read a slot record; `Ok(None)` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<SlotRecord>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| LocalError::State { path: path.display().to_string(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LocalError::io(format!("read {}", path.display()))(e)),
    }
}

/// The runtime container id of one start of a container.
pub fn container_id(slot: &str, name: &str, generation: u64) -> Result<String> {
    let id = format!("{slot}.{name}.{generation}");
    if id.len() > 64 {
        return Err(LocalError::Invalid(format!(
            "container id {id} is longer than 64 characters; use a shorter slot id or container name"
        )));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_') {
        return Err(LocalError::Invalid(format!(
            "slot id and container names may only contain ascii letters, digits, '-' and '_' (got {id})"
        )));
    }
    Ok(id)
}

/// Whether a runtime container id belongs to `slot`.
pub fn id_belongs_to(id: &str, slot: &str) -> bool {
    id.strip_prefix(slot).is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_prefixed_and_bounded() {
        assert_eq!(container_id("s1", "main", 3).unwrap(), "s1.main.3");
        assert!(id_belongs_to("s1.main.3", "s1"));
        assert!(!id_belongs_to("s1-b.main.3", "s1"));
        assert!(container_id(&"x".repeat(60), "main", 1).is_err());
        assert!(container_id("s1", "ma/in", 1).is_err());
    }
}
