//! What the backend needs from an image store: unpacked layers plus the image config.

use std::path::PathBuf;
use std::sync::Arc;

use agentbox_core::model::RegistryCredential;
use async_trait::async_trait;

/// An image ready to be used as a container rootfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalImage {
    /// Digest (or another stable identity) of the image, for logs and state.
    pub digest: String,
    /// Unpacked layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Read-only bind mounts `(host source, container destination)`.
    pub host_binds: Vec<(PathBuf, String)>,
}

/// A source of images (the `agentbox-images` store in production, a directory in tests).
#[async_trait]
pub trait ImageSource: Send + Sync + 'static {
    /// Make the image available locally (pulling it if needed) and describe it.
    async fn ensure(&self, reference: &str, creds: &[RegistryCredential]) -> Result<LocalImage, String>;
}

pub(crate) type DynImageSource = Arc<dyn ImageSource>;

#[async_trait]
impl ImageSource for agentbox_images::ImageStore {
    async fn ensure(&self, reference: &str, creds: &[RegistryCredential]) -> Result<LocalImage, String> {
        let img = agentbox_images::ImageStore::ensure(self, reference, creds).await.map_err(|e| e.to_string())?;
        Ok(LocalImage {
            digest: img.digest,
            layers: img.layers,
            entrypoint: img.config.entrypoint,
            cmd: img.config.cmd,
            env: img.config.env,
            working_dir: img.config.working_dir,
            user: img.config.user,
            host_binds: img.host_binds.into_iter().map(|b| (b.source, b.destination)).collect(),
        })
    }
}
