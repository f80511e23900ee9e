//! Importing images from an OCI image layout (directory or tar) or a `docker save` archive.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, IoContext};
use crate::model::{
    Descriptor, DockerSaveEntry, ImageSummary, MT_DOCKER_LIST, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_TAR, MT_OCI_MANIFEST, ManifestDoc, Source,
};
use crate::reference::{ImageRef, NamedRef};
use crate::store::{ImageStore, TmpGuard, hash_file, sha256_digest};
use crate::unpack::{sanitize, unpack_layer};

const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// One image found in an archive, before it is installed.
struct Found {
    manifest_digest: String,
    /// Names from the archive (may be empty).
    names: Vec<String>,
    /// Tag-only `ref.name` annotations, for a helpful error.
    bare_tags: Vec<String>,
}

impl ImageStore {
    /// Imports an OCI image layout (a directory or a `.tar` of one) or a `docker save` archive
    /// (`.tar`, optionally gzipped), unpacks its layers and registers its names.
    ///
    /// With `name`, the (single) image in the archive is registered under that reference only;
    /// otherwise under the names inside the archive: the `io.containerd.image.name` or
    /// `org.opencontainers.image.ref.name` annotation of an OCI layout (a ref name that is only a
    /// tag, as skopeo writes, needs `name`), or the `RepoTags` of a `docker save` archive.
    /// Imported images never pull; importing the same content twice is cheap.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<ImageSummary>, ImageError> {
        let override_ref = name
            .map(|n| match ImageRef::parse(n)? {
                ImageRef::Named(n) => Ok(n),
                ImageRef::Builtin(b) => Err(ImageError::InvalidReference {
                    reference: n.to_owned(),
                    reason: format!("{} is a built-in image name; choose another name", b.name()),
                }),
            })
            .transpose()?;
        let meta = fs::metadata(path).at(path)?;
        let mut staging = TmpGuard(None);
        let (dir, from_archive) = if meta.is_dir() {
            (path.to_path_buf(), false)
        } else {
            staging = TmpGuard(Some(self.tmp_path()));
            fs::create_dir(staging.path()).at(staging.path())?;
            let f = File::open(path).at(path)?;
            unpack_layer(f, staging.path()).map_err(|e| {
                ImageError::invalid(format!("{} is not a readable image archive (tar or tar.gz): {e}", path.display()))
            })?;
            (staging.path().to_path_buf(), true)
        };
        let found = if dir.join("manifest.json").is_file() {
            self.stage_docker_save(&dir, from_archive)?
        } else if dir.join("index.json").is_file() {
            self.stage_oci_layout(&dir, from_archive)?
        } else {
            return Err(ImageError::invalid(format!(
                "{} holds neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
                path.display()
            )));
        };
        if found.is_empty() {
            return Err(ImageError::invalid(format!("{} contains no image", path.display())));
        }
        if override_ref.is_some() && found.len() > 1 {
            return Err(ImageError::invalid(format!(
                "{} holds {} images; import it without a name to use the names inside it",
                path.display(),
                found.len()
            )));
        }
        // Decide every name before installing anything, so a bad archive changes nothing.
        let mut plan: Vec<(String, Vec<NamedRef>)> = Vec::new();
        for f in &found {
            let names: Vec<NamedRef> = match &override_ref {
                Some(n) => vec![n.clone()],
                None => {
                    let mut v = Vec::new();
                    for n in &f.names {
                        match ImageRef::parse(n)? {
                            ImageRef::Named(n) => v.push(n),
                            ImageRef::Builtin(_) => {
                                return Err(ImageError::invalid(format!(
                                    "the archive names an image {n:?}, which is a built-in; import it with another name"
                                )));
                            }
                        }
                    }
                    if v.is_empty() {
                        let hint =
                            f.bare_tags.first().map(|t| format!(" (it is only tagged {t:?})")).unwrap_or_default();
                        return Err(ImageError::invalid(format!(
                            "image {} in {} has no name{hint}; pass a name to import it",
                            f.manifest_digest,
                            path.display()
                        )));
                    }
                    v
                }
            };
            plan.push((f.manifest_digest.clone(), names));
        }
        let mut summaries = Vec::new();
        let mut refs = Vec::new();
        for (digest, names) in plan {
            let record = self.install(&digest)?;
            for n in names {
                refs.push((n.to_string(), digest.clone(), Source::Imported));
                summaries.push(ImageSummary {
                    reference: n.to_string(),
                    digest: digest.clone(),
                    size_bytes: record.size_bytes,
                    source: Source::Imported.as_str().to_owned(),
                });
            }
        }
        self.set_refs(&refs)?;
        drop(staging);
        Ok(summaries)
    }

    /// Copies the blobs of every image of an OCI layout into the store.
    fn stage_oci_layout(&self, dir: &Path, take: bool) -> Result<Vec<Found>, ImageError> {
        let index: ManifestDoc = read_json(&dir.join("index.json"))?;
        let mut found = Vec::new();
        for desc in index.manifests.unwrap_or_default() {
            let ann = desc.annotations.clone().unwrap_or_default();
            let manifest_desc = if is_index_media_type(&desc.media_type) {
                let nested: ManifestDoc = read_json(&layout_blob(dir, &desc.digest)?)?;
                let mut entries = nested.manifests.unwrap_or_default();
                let pick = entries
                    .iter()
                    .position(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
                    .or(if entries.len() == 1 { Some(0) } else { None })
                    .ok_or_else(|| {
                        ImageError::invalid(format!("image index {} has no linux/amd64 image", desc.digest))
                    })?;
                entries.swap_remove(pick)
            } else {
                desc
            };
            let (names, bare_tags) = names_from_annotations(&ann);
            self.stage_manifest(dir, &manifest_desc.digest, take)?;
            found.push(Found { manifest_digest: manifest_desc.digest, names, bare_tags });
        }
        Ok(found)
    }

    fn stage_manifest(&self, dir: &Path, digest: &str, take: bool) -> Result<(), ImageError> {
        let bytes = fs::read(layout_blob(dir, digest)?).at(layout_blob(dir, digest)?)?;
        let doc: ManifestDoc = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::invalid(format!("manifest {digest} is not valid json: {e}")))?;
        let (Some(config), Some(layers)) = (&doc.config, &doc.layers) else {
            return Err(ImageError::invalid(format!("{digest} is not an image manifest")));
        };
        for d in std::iter::once(config).chain(layers.iter()) {
            let p = layout_blob(dir, &d.digest)?;
            self.put_blob_file(&d.digest, &p, take, &format!("blob {}", d.digest))?;
        }
        self.put_blob_bytes(digest, &bytes, &format!("manifest {digest}"))
    }

    /// Turns a `docker save` archive into OCI manifests in the store.
    fn stage_docker_save(&self, dir: &Path, take: bool) -> Result<Vec<Found>, ImageError> {
        let entries: Vec<DockerSaveEntry> = read_json(&dir.join("manifest.json"))?;
        let mut found = Vec::new();
        for e in entries {
            let config_path = inside(dir, &e.config)?;
            let config_bytes = fs::read(&config_path).at(&config_path)?;
            let config_digest = sha256_digest(&config_bytes);
            self.put_blob_bytes(&config_digest, &config_bytes, "image config")?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let p = inside(dir, l)?;
                let digest = hash_file(&p)?;
                let size = fs::metadata(&p).at(&p)?.len();
                let media_type = if is_gzip(&p)? { MT_OCI_LAYER_GZIP } else { MT_OCI_LAYER_TAR };
                self.put_blob_file(&digest, &p, take, &format!("layer {l}"))?;
                layers.push(Descriptor {
                    media_type: media_type.to_owned(),
                    digest,
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                    ..Descriptor::default()
                });
            }
            // docker save has no manifest; synthesise a deterministic OCI one.
            let manifest = ManifestDoc {
                schema_version: 2,
                media_type: Some(MT_OCI_MANIFEST.to_owned()),
                config: Some(Descriptor {
                    media_type: MT_OCI_CONFIG.to_owned(),
                    digest: config_digest,
                    size: i64::try_from(config_bytes.len()).unwrap_or(i64::MAX),
                    ..Descriptor::default()
                }),
                layers: Some(layers),
                manifests: None,
            };
            let bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::invalid(e.to_string()))?;
            let digest = sha256_digest(&bytes);
            self.put_blob_bytes(&digest, &bytes, "manifest")?;
            found.push(Found {
                manifest_digest: digest,
                names: e.repo_tags.unwrap_or_default(),
                bare_tags: Vec::new(),
            });
        }
        Ok(found)
    }
}

fn is_index_media_type(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST
}

/// (full names, tag-only ref names)
fn names_from_annotations(ann: &HashMap<String, String>) -> (Vec<String>, Vec<String>) {
    if let Some(n) = ann.get(ANN_CONTAINERD_NAME) {
        return (vec![n.clone()], Vec::new());
    }
    match ann.get(ANN_REF_NAME) {
        // A full reference has a repository part; a bare word is a tag (skopeo, umoci).
        Some(r) if r.contains('/') || r.contains(':') => (vec![r.clone()], Vec::new()),
        Some(r) => (Vec::new(), vec![r.clone()]),
        None => (Vec::new(), Vec::new()),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(p).at(p)?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::invalid(format!("{} is not valid: {e}", p.display())))
}

fn layout_blob(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = crate::store::hex_of(digest)?;
    Ok(dir.join("blobs/sha256").join(hex))
}

/// Resolves a path named inside an archive, refusing `..`, absolute paths, and symlinks that
/// lead outside it (`docker save` links duplicate layers to each other).
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let clean = sanitize(Path::new(rel))?;
    let p = dir.join(clean);
    let real = fs::canonicalize(&p).at(&p)?;
    let base = fs::canonicalize(dir).at(dir)?;
    if !real.starts_with(&base) || !real.is_file() {
        return Err(ImageError::invalid(format!("{rel} in the archive is not a regular file inside it")));
    }
    Ok(real)
}

fn is_gzip(p: &Path) -> Result<bool, ImageError> {
    let mut magic = [0u8; 2];
    let mut f = File::open(p).at(p)?;
    let n = f.read(&mut magic).at(p)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}
