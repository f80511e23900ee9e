//! Pulling an image from an OCI registry with `oci-client`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use agentbox_core::model::RegistryCredential;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::error::ImageError;
use crate::model::{
    MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, ManifestDoc, ResolvedImage, Source,
};
use crate::reference::{ImageRef, NamedRef, normalize_registry_host};
use crate::store::{ImageStore, TmpGuard, sha256_digest};

const ACCEPTED: &[&str] = &[MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_DOCKER_LIST];

/// Picks the credential for `registry` (host[:port], Docker Hub aliases folded).
pub(crate) fn auth_for(registry: &str, creds: &[RegistryCredential]) -> RegistryAuth {
    let want = normalize_registry_host(registry);
    creds
        .iter()
        .find(|c| normalize_registry_host(&c.registry) == want)
        .map(|c| RegistryAuth::Basic(c.username.clone(), c.password.clone()))
        .unwrap_or(RegistryAuth::Anonymous)
}

fn client_for(named: &NamedRef) -> Client {
    let protocol = if named.is_loopback_registry() {
        ClientProtocol::HttpsExcept(vec![named.registry_host().to_owned()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(300)),
        ..ClientConfig::default()
    })
}

fn pull_err(named: &NamedRef, e: impl std::fmt::Display) -> ImageError {
    ImageError::Pull { reference: named.to_string(), reason: e.to_string() }
}

/// Maps a failed manifest fetch: "the registry has no such image" is [`ImageError::NotFound`].
fn manifest_err(named: &NamedRef, e: OciDistributionError) -> ImageError {
    let missing = match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(x.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound)
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    };
    if missing { ImageError::NotFound(named.to_string()) } else { pull_err(named, e) }
}

/// Pulls `named` into the store (blobs, unpacked layers, record, ref) and resolves it.
pub(crate) async fn pull(
    store: &ImageStore,
    named: &NamedRef,
    creds: &[RegistryCredential],
) -> Result<ResolvedImage, ImageError> {
    use tracing::Instrument;
    store.inner.pulls.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("pull", reference = %named);
    pull_inner(store, named, creds).instrument(span).await
}

async fn pull_inner(
    store: &ImageStore,
    named: &NamedRef,
    creds: &[RegistryCredential],
) -> Result<ResolvedImage, ImageError> {
    let client = client_for(named);
    let auth = auth_for(named.registry_host(), creds);
    let registry = named.registry_host().to_owned();
    let repository = named.remote_repository();
    let oref = match (&named.tag, &named.digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.clone(), d.clone()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.clone()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.clone()),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_owned()),
    };

    let (mut bytes, mut digest) =
        client.pull_manifest_raw(&oref, &auth, ACCEPTED).await.map_err(|e| manifest_err(named, e))?;
    let mut doc: ManifestDoc = serde_json::from_slice(&bytes)
        .map_err(|e| pull_err(named, format!("registry sent an unreadable manifest: {e}")))?;
    if doc.is_index() {
        let entry = doc
            .manifests
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
            .cloned()
            .ok_or_else(|| pull_err(named, "the image index has no linux/amd64 image"))?;
        let by_digest = oref.clone_with_digest(entry.digest.clone());
        (bytes, digest) =
            client.pull_manifest_raw(&by_digest, &auth, ACCEPTED).await.map_err(|e| manifest_err(named, e))?;
        doc = serde_json::from_slice(&bytes)
            .map_err(|e| pull_err(named, format!("registry sent an unreadable manifest: {e}")))?;
        if doc.is_index() {
            return Err(pull_err(named, "nested image indexes are not supported"));
        }
    }
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(ImageError::DigestMismatch { what: format!("manifest of {named}"), expected: digest, actual });
    }
    let (Some(config), Some(layers)) = (doc.config.clone(), doc.layers.clone()) else {
        return Err(pull_err(named, "the manifest has no config or layers"));
    };

    for desc in std::iter::once(&config).chain(layers.iter()) {
        if store.has_blob(&desc.digest)? {
            continue;
        }
        let guard = TmpGuard(Some(store.tmp_path()));
        let file = tokio::fs::File::create(guard.path()).await.map_err(|e| ImageError::io(guard.path(), e))?;
        tracing::debug!(blob = %desc.digest, size = desc.size, "downloading blob");
        client
            .pull_blob(&oref, desc.digest.as_str(), file)
            .await
            .map_err(|e| pull_err(named, format!("downloading {}: {e}", desc.digest)))?;
        store.inner.blobs_downloaded.fetch_add(1, Ordering::Relaxed);
        let s = store.clone();
        let d = desc.digest.clone();
        tokio::task::spawn_blocking(move || {
            let path = guard.path().to_path_buf();
            let mut guard = guard;
            let r = s.put_blob_file(&d, &path, true, &format!("blob {d}"));
            guard.disarm();
            r
        })
        .await
        .map_err(|e| ImageError::invalid(format!("blob task failed: {e}")))??;
    }
    store.put_blob_bytes(&digest, &bytes, "manifest")?;

    let s = store.clone();
    let d = digest.clone();
    tokio::task::spawn_blocking(move || s.install(&d))
        .await
        .map_err(|e| ImageError::invalid(format!("unpack task failed: {e}")))??;
    store.set_refs(&[(named.to_string(), digest.clone(), Source::Pulled)])?;
    tracing::info!(reference = %named, %digest, "pulled image");
    store
        .resolve_cached(&ImageRef::Named(named.clone()))?
        .ok_or_else(|| ImageError::invalid(format!("{named} vanished right after it was pulled")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(r: &str) -> RegistryCredential {
        RegistryCredential { registry: r.to_owned(), username: format!("u-{r}"), password: "p".to_owned() }
    }

    #[test]
    fn credentials_match_by_registry_host() {
        let creds = [cred("ghcr.io"), cred("https://127.0.0.1:5000/"), cred("index.docker.io")];
        assert!(
            matches!(auth_for("127.0.0.1:5000", &creds), RegistryAuth::Basic(u, _) if u == "u-https://127.0.0.1:5000/")
        );
        assert!(matches!(auth_for("docker.io", &creds), RegistryAuth::Basic(u, _) if u == "u-index.docker.io"));
        assert!(matches!(auth_for("127.0.0.1:5001", &creds), RegistryAuth::Anonymous));
    }
}
