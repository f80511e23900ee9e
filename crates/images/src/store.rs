//! The on-disk image store: layout, the reference index, blob and layer installation.
//!
//! Layout under the root directory:
//! ```text
//! blobs/sha256/<hex>      manifests, configs and layer tarballs, verified against their digest
//! layers/<hex>/           one unpacked layer, named by its diff ID (digest of the uncompressed tar)
//! layers/<hex>.json       its size
//! images/<hex>.json       what manifest <hex> unpacked to (config, layer list)
//! builtin/<hex>/          the `host` and `pause` layers
//! refs.json               reference -> manifest digest, rewritten atomically
//! tmp/                    work area; everything is built here and renamed into place
//! ```
//! Every directory or file appears by `rename(2)`, so a crash leaves either the old state or
//! the new one plus some garbage in `tmp/` (swept at the next open).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::builtin::{self, BuiltinImage};
use crate::error::{ImageError, IoContext};
use crate::model::{ConfigDoc, ImageRecord, ImageSummary, ManifestDoc, RefEntry, RefIndex, ResolvedImage, Source};
use crate::reference::{Builtin, ImageRef, validate_digest};
use crate::unpack;

/// Leftovers in `tmp/` older than this are removed at open (younger ones may belong to another
/// process working on the same store).
const TMP_SWEEP_AGE: Duration = Duration::from_secs(3600);

/// Counters of the work the store did, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Registry pulls started (manifest fetches after a cache miss).
    pub pulls: u64,
    /// Blobs downloaded from a registry.
    pub blobs_downloaded: u64,
    /// Layers unpacked into `layers/`.
    pub layers_unpacked: u64,
}

/// A cache of images on local disk; see the crate docs.
///
/// Cheap to clone; clones share state. Safe to use from many tasks at once: concurrent
/// [`ImageStore::ensure`] calls for one reference pull and unpack it once.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub root: PathBuf,
    host: BuiltinImage,
    pause: BuiltinImage,
    /// Per-reference async locks: the single-flight of `ensure`.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises read-modify-write of refs.json within the process (flock does across processes).
    refs_lock: Mutex<()>,
    pub pulls: AtomicU64,
    pub blobs_downloaded: AtomicU64,
    pub layers_unpacked: AtomicU64,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore").field("root", &self.inner.root).finish_non_exhaustive()
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, unused path under `tmp_dir`.
pub(crate) fn unique_tmp(tmp_dir: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    tmp_dir.join(format!("{}-{n}-{nanos:x}", std::process::id()))
}

/// Removes a temporary path when dropped unless disarmed.
pub(crate) struct TmpGuard(pub Option<PathBuf>);

impl TmpGuard {
    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().expect("guard is armed")
    }
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let res = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(_) => Ok(()),
            };
            if let Err(e) = res {
                tracing::warn!(path = %p.display(), error = %e, "could not remove temporary path");
            }
        }
    }
}

pub(crate) fn hex_of(digest: &str) -> Result<&str, ImageError> {
    validate_digest(digest).map_err(ImageError::Invalid)?;
    Ok(&digest["sha256:".len()..])
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl ImageStore {
    /// Opens (creating if needed) the store rooted at `root` and materialises the built-in
    /// `host` and `pause` images. Never touches the network.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Self::open_with_host_root(root, Path::new("/"))
    }

    /// Like [`ImageStore::open`], but the `host` built-in mirrors `host_root` instead of `/`
    /// (for tests).
    pub fn open_with_host_root(root: &Path, host_root: &Path) -> Result<Self, ImageError> {
        for d in ["blobs/sha256", "layers", "images", "builtin", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        let root = fs::canonicalize(root).at(root)?;
        sweep_tmp(&root.join("tmp"));
        let host = builtin::install_host(&root.join("builtin"), &root.join("tmp"), host_root)?;
        let pause = builtin::install_pause(&root.join("builtin"), &root.join("tmp"))?;
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root,
                host,
                pause,
                inflight: Mutex::new(HashMap::new()),
                refs_lock: Mutex::new(()),
                pulls: AtomicU64::new(0),
                blobs_downloaded: AtomicU64::new(0),
                layers_unpacked: AtomicU64::new(0),
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Counters of work done by this handle (and its clones) since open.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            pulls: self.inner.pulls.load(Ordering::Relaxed),
            blobs_downloaded: self.inner.blobs_downloaded.load(Ordering::Relaxed),
            layers_unpacked: self.inner.layers_unpacked.load(Ordering::Relaxed),
        }
    }

    /// Resolves `reference`, pulling it from its registry when it is not cached.
    ///
    /// Built-ins, `localhost/…` names and anything already cached never touch the network. A
    /// cached tag is not re-checked against the registry (pull a new tag or use a digest to get
    /// new content). `creds` are matched to the reference's registry host; the first match is
    /// used as HTTP basic auth. Registries on 127.0.0.0/8 or `localhost` are spoken to over
    /// plain HTTP. Concurrent calls for the same reference pull and unpack it once.
    pub async fn ensure(
        &self,
        reference: &str,
        creds: &[agentbox_core::model::RegistryCredential],
    ) -> Result<ResolvedImage, ImageError> {
        let parsed = ImageRef::parse(reference)?;
        if let Some(img) = self.resolve_cached(&parsed)? {
            return Ok(img);
        }
        let ImageRef::Named(named) = parsed else {
            unreachable!("built-ins always resolve from the cache");
        };
        if !named.pullable() {
            return Err(ImageError::NotFound(named.to_string()));
        }
        let key = named.to_string();
        let lock = {
            let mut map = self.inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().await;
            match self.resolve_cached(&ImageRef::Named(named.clone()))? {
                Some(img) => Ok(img),
                None => crate::pull::pull(self, &named, creds).await,
            }
        };
        {
            let mut map = self.inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
            // Only the last user removes the entry; a late caller re-checks the cache anyway.
            if Arc::strong_count(&lock) == 2 {
                map.remove(&key);
            }
        }
        result
    }

    /// Resolves `reference` from the local cache only. `Ok(None)` means it is not present.
    pub fn get(&self, reference: &str) -> Result<Option<ResolvedImage>, ImageError> {
        self.resolve_cached(&ImageRef::parse(reference)?)
    }

    /// Lists the built-ins and every cached reference.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let mut out: Vec<ImageSummary> = [&self.inner.host, &self.inner.pause]
            .into_iter()
            .map(|b| ImageSummary {
                reference: b.kind.name().to_owned(),
                digest: b.digest.clone(),
                size_bytes: b.size_bytes,
                source: "builtin".to_owned(),
            })
            .collect();
        for (reference, entry) in self.read_refs()?.refs {
            let size_bytes = self.read_record(&entry.digest)?.map(|r| r.size_bytes).unwrap_or(0);
            out.push(ImageSummary {
                reference,
                digest: entry.digest,
                size_bytes,
                source: entry.source.as_str().to_owned(),
            });
        }
        Ok(out)
    }

    fn builtin(&self, b: Builtin) -> &BuiltinImage {
        match b {
            Builtin::Host => &self.inner.host,
            Builtin::Pause => &self.inner.pause,
        }
    }

    pub(crate) fn resolve_cached(&self, r: &ImageRef) -> Result<Option<ResolvedImage>, ImageError> {
        let named = match r {
            ImageRef::Builtin(b) => {
                let b = self.builtin(*b);
                return Ok(Some(ResolvedImage {
                    reference: b.kind.name().to_owned(),
                    digest: b.digest.clone(),
                    layers: vec![b.layer.clone()],
                    config: b.config.clone(),
                    host_binds: b.host_binds.clone(),
                }));
            }
            ImageRef::Named(n) => n,
        };
        let key = named.to_string();
        let digest = match self.read_refs()?.refs.get(&key) {
            Some(e) => e.digest.clone(),
            None => match &named.digest {
                // A digest reference is satisfied by any cached image with that manifest.
                Some(d) => d.clone(),
                None => return Ok(None),
            },
        };
        if let Some(pinned) = &named.digest
            && pinned != &digest
        {
            return Ok(None);
        }
        let Some(record) = self.read_record(&digest)? else {
            return Ok(None);
        };
        let layers: Vec<PathBuf> = record.layers.iter().map(|l| self.inner.root.join("layers").join(l)).collect();
        if layers.iter().any(|l| !l.is_dir()) {
            tracing::warn!(reference = %key, "cached image is missing layers; it will be fetched again");
            return Ok(None);
        }
        Ok(Some(ResolvedImage {
            reference: key,
            digest: record.digest,
            layers,
            config: record.config,
            host_binds: Vec::new(),
        }))
    }

    // ---- refs.json ----

    fn refs_path(&self) -> PathBuf {
        self.inner.root.join("refs.json")
    }

    pub(crate) fn read_refs(&self) -> Result<RefIndex, ImageError> {
        let p = self.refs_path();
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::invalid(format!(
                    "{} is corrupt ({e}); delete it and import or pull the images again",
                    p.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RefIndex { version: 1, ..RefIndex::default() }),
            Err(e) => Err(ImageError::io(p, e)),
        }
    }

    /// Points each reference at a manifest digest, atomically.
    pub(crate) fn set_refs(&self, entries: &[(String, String, Source)]) -> Result<(), ImageError> {
        let _local = self.inner.refs_lock.lock().unwrap_or_else(|p| p.into_inner());
        let lock_path = self.inner.root.join(".refs.lock");
        let lock_file = File::options().create(true).truncate(false).write(true).open(&lock_path).at(&lock_path)?;
        lock_file.lock().at(&lock_path)?;
        let mut index = self.read_refs()?;
        index.version = 1;
        for (reference, digest, source) in entries {
            index.refs.insert(reference.clone(), RefEntry { digest: digest.clone(), source: *source });
        }
        let json = serde_json::to_vec_pretty(&index).map_err(|e| ImageError::invalid(e.to_string()))?;
        self.write_atomic(&self.refs_path(), &json)
        // The flock is released when lock_file drops.
    }

    // ---- files ----

    pub(crate) fn tmp_path(&self) -> PathBuf {
        unique_tmp(&self.inner.root.join("tmp"))
    }

    /// Writes `bytes` to `path` via a synced temporary file and a rename.
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let mut guard = TmpGuard(Some(self.tmp_path()));
        let tmp = guard.path().to_path_buf();
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, path).at(path)?;
        guard.disarm();
        Ok(())
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.inner.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> Result<bool, ImageError> {
        Ok(self.blob_path(digest)?.is_file())
    }

    /// Stores `bytes` as blob `digest` after checking it.
    pub(crate) fn put_blob_bytes(&self, digest: &str, bytes: &[u8], what: &str) -> Result<(), ImageError> {
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch { what: what.to_owned(), expected: digest.to_owned(), actual });
        }
        let dest = self.blob_path(digest)?;
        if dest.is_file() {
            return Ok(());
        }
        self.write_atomic(&dest, bytes)
    }

    /// Verifies `file` against `digest` and moves it (same filesystem) or copies it into the
    /// blob store. `file` must not be used by the caller afterwards when `take` is true.
    pub(crate) fn put_blob_file(&self, digest: &str, file: &Path, take: bool, what: &str) -> Result<(), ImageError> {
        let dest = self.blob_path(digest)?;
        if dest.is_file() {
            return Ok(());
        }
        let (actual, staged) = if take {
            (hash_file(file)?, TmpGuard(Some(file.to_path_buf())))
        } else {
            // Copy while hashing so that what is stored is exactly what was verified.
            let guard = TmpGuard(Some(self.tmp_path()));
            let mut src = File::open(file).at(file)?;
            let mut dst = File::create(guard.path()).at(guard.path())?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = src.read(&mut buf).at(file)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                dst.write_all(&buf[..n]).at(guard.path())?;
            }
            dst.sync_all().at(guard.path())?;
            (format!("sha256:{}", hex::encode(hasher.finalize())), guard)
        };
        let mut staged = staged;
        if actual != digest {
            if !take {
                drop(staged);
            } else {
                staged.disarm();
            }
            return Err(ImageError::DigestMismatch { what: what.to_owned(), expected: digest.to_owned(), actual });
        }
        fs::rename(staged.path(), &dest).at(&dest)?;
        staged.disarm();
        Ok(())
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest)?;
        fs::read(&p).at(p)
    }

    fn record_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.inner.root.join("images").join(format!("{}.json", hex_of(digest)?)))
    }

    pub(crate) fn read_record(&self, digest: &str) -> Result<Option<ImageRecord>, ImageError> {
        let p = self.record_path(digest)?;
        match fs::read(&p) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(p, e)),
        }
    }

    /// Unpacks every layer of manifest `manifest_digest` (whose manifest, config and layer
    /// blobs must already be in the blob store) and writes its image record. Idempotent.
    pub(crate) fn install(&self, manifest_digest: &str) -> Result<ImageRecord, ImageError> {
        if let Some(rec) = self.read_record(manifest_digest)?
            && rec.layers.iter().all(|l| self.inner.root.join("layers").join(l).is_dir())
        {
            return Ok(rec);
        }
        let manifest: ManifestDoc = serde_json::from_slice(&self.read_blob(manifest_digest)?)
            .map_err(|e| ImageError::invalid(format!("manifest {manifest_digest} is not valid json: {e}")))?;
        let (Some(config_desc), Some(layer_descs)) = (&manifest.config, &manifest.layers) else {
            return Err(ImageError::invalid(format!(
                "{manifest_digest} is not an image manifest (no config or layers)"
            )));
        };
        let config: ConfigDoc = serde_json::from_slice(&self.read_blob(&config_desc.digest)?)
            .map_err(|e| ImageError::invalid(format!("image config {} is not valid json: {e}", config_desc.digest)))?;
        let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
        if !diff_ids.is_empty() && diff_ids.len() != layer_descs.len() {
            return Err(ImageError::invalid(format!(
                "image {manifest_digest} has {} layers but its config lists {} diff ids",
                layer_descs.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::with_capacity(layer_descs.len());
        let mut size_bytes = 0;
        for (i, desc) in layer_descs.iter().enumerate() {
            let (name, size) = self.ensure_layer(&desc.digest, diff_ids.get(i).map(String::as_str))?;
            layers.push(name);
            size_bytes += size;
        }
        let record =
            ImageRecord { digest: manifest_digest.to_owned(), config: config.image_config(), layers, size_bytes };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| ImageError::invalid(e.to_string()))?;
        self.write_atomic(&self.record_path(manifest_digest)?, &json)?;
        Ok(record)
    }

    /// Unpacks layer blob `blob_digest` once; returns its directory name and content size.
    fn ensure_layer(&self, blob_digest: &str, diff_id: Option<&str>) -> Result<(String, u64), ImageError> {
        let name = hex_of(diff_id.unwrap_or(blob_digest))?.to_owned();
        let layers_dir = self.inner.root.join("layers");
        let dir = layers_dir.join(&name);
        let meta = layers_dir.join(format!("{name}.json"));
        if dir.is_dir() {
            let size = fs::read(&meta)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("sizeBytes").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            return Ok((name, size));
        }
        let blob = self.blob_path(blob_digest)?;
        let file = File::open(&blob).at(&blob)?;
        let mut guard = TmpGuard(Some(self.tmp_path()));
        fs::create_dir(guard.path()).at(guard.path())?;
        let _span = tracing::info_span!("unpack_layer", layer = %blob_digest).entered();
        let stats = unpack::unpack_layer(file, guard.path())?;
        if let Some(expected) = diff_id
            && stats.diff_id != expected
        {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {blob_digest}"),
                expected: expected.to_owned(),
                actual: stats.diff_id,
            });
        }
        self.write_atomic(
            &meta,
            serde_json::json!({ "diffId": stats.diff_id, "sizeBytes": stats.size_bytes }).to_string().as_bytes(),
        )?;
        match fs::rename(guard.path(), &dir) {
            Ok(()) => guard.disarm(),
            // Someone else unpacked the same layer first; theirs is identical.
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(ImageError::io(&dir, e)),
        }
        self.inner.layers_unpacked.fetch_add(1, Ordering::Relaxed);
        tracing::info!(layer = %name, size = stats.size_bytes, "unpacked layer");
        Ok((name, stats.size_bytes))
    }
}

pub(crate) fn hash_file(path: &Path) -> Result<String, ImageError> {
    let mut f = File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut hasher).at(path)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn sweep_tmp(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else { return };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > TMP_SWEEP_AGE);
        if old {
            drop(TmpGuard(Some(e.path())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: T) {}

    #[test]
    fn store_and_its_futures_can_cross_threads() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert_send_sync(&store);
        // `ensure` is awaited inside `async_trait` impls and spawned tasks.
        assert_send(store.ensure("busybox", &[]));
    }

    #[test]
    fn refs_json_is_rewritten_atomically_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        store.set_refs(&[("a:1".to_owned(), d1.clone(), Source::Imported)]).unwrap();
        store.set_refs(&[("b:1".to_owned(), d2.clone(), Source::Pulled)]).unwrap();
        let idx = store.read_refs().unwrap();
        assert_eq!(idx.refs["a:1"].digest, d1);
        assert_eq!(idx.refs["b:1"].source, Source::Pulled);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // A reference whose image record is missing is simply not cached.
        assert!(store.get("a:1").unwrap().is_none());
    }

    #[test]
    fn corrupt_refs_json_gives_an_actionable_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("refs.json"), b"{not json").unwrap();
        let err = store.get("busybox").unwrap_err();
        assert!(err.to_string().contains("delete it"), "{err}");
        // Built-ins do not depend on refs.json.
        assert!(store.get("pause").unwrap().is_some());
    }

    #[test]
    fn stale_tmp_entries_are_swept_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(tmp.join("old/sub")).unwrap();
        fs::create_dir_all(tmp.join("fresh")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        File::open(tmp.join("old")).unwrap().set_modified(old).unwrap();
        ImageStore::open(dir.path()).unwrap();
        assert!(!tmp.join("old").exists());
        assert!(tmp.join("fresh").exists(), "a young temp dir may belong to another process");
    }
}
