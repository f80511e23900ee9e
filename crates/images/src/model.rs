//! Public result types and the JSON documents the store reads (OCI/Docker) and writes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An image ready to be stacked: its layer directories and run configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The canonical reference (`busybox:latest`, `127.0.0.1:5000/x/y:1`, `host`).
    pub reference: String,
    /// Manifest digest `sha256:…`; built-ins carry a stable synthetic digest.
    pub digest: String,
    /// Unpacked, read-only layer directories, bottom layer first (overlay `lowerdir` wants them
    /// reversed, top first). Whiteouts are already in overlayfs form.
    pub layers: Vec<PathBuf>,
    /// The process defaults from the image config.
    pub config: ImageConfig,
    /// Host paths to bind-mount read-only into the rootfs (only the `host` built-in has any).
    pub host_binds: Vec<HostBind>,
}

/// The parts of an OCI image config the runtime uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`, if set and not empty.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User`, if set and not empty.
    #[serde(default)]
    pub user: Option<String>,
}

/// A read-only bind mount of a host path into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBind {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
}

/// One line of `images list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Canonical reference.
    pub reference: String,
    /// Manifest digest (synthetic for built-ins).
    pub digest: String,
    /// Bytes of regular-file content in the unpacked layers.
    pub size_bytes: u64,
    /// `builtin`, `imported` or `pulled`.
    pub source: String,
}

/// Where a cached reference came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    Imported,
    Pulled,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Imported => "imported",
            Source::Pulled => "pulled",
        }
    }
}

/// `images/<hex>.json`: what an installed manifest unpacked to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub digest: String,
    pub config: ImageConfig,
    /// Directory names under `layers/`, bottom first.
    pub layers: Vec<String>,
    pub size_bytes: u64,
}

/// `refs.json`: reference → manifest digest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RefIndex {
    pub version: u32,
    pub refs: BTreeMap<String, RefEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RefEntry {
    pub digest: String,
    pub source: Source,
}

// ---- OCI / Docker documents (read side) ----

pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A content descriptor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// An image manifest or an index (manifest list); which one is told by the fields present.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestDoc {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
}

impl ManifestDoc {
    pub(crate) fn is_index(&self) -> bool {
        self.manifests.is_some() || matches!(self.media_type.as_deref(), Some(MT_OCI_INDEX | MT_DOCKER_LIST))
    }
}

/// The OCI image config JSON (only the fields we use).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ConfigDoc {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigDoc {
    pub(crate) fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|s| !s.is_empty()),
            user: c.user.filter(|s| !s.is_empty()),
        }
    }
}

/// One entry of a `docker save` `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerSaveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}
