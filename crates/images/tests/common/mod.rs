//! Test helpers: build layers and OCI image layouts in memory, the way image tools do.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One entry of a test layer.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

/// A gzip-compressed layer; returns (gzip bytes, diff id).
pub fn layer(entries: &[E<'_>]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let diff_id = sha(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// An image: its config JSON and gzip layers, bottom first.
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl TestImage {
    pub fn new(layers: Vec<(Vec<u8>, String)>, cmd: &[&str], env: &[&str], workdir: &str) -> Self {
        let diff_ids: Vec<&String> = layers.iter().map(|(_, d)| d).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": cmd, "Env": env, "WorkingDir": workdir },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap();
        TestImage { config, layers: layers.into_iter().map(|(l, _)| l).collect() }
    }

    pub fn manifest(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(&self.config),
                "size": self.config.len(),
            },
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(l),
                "size": l.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// Writes an OCI image layout at `dir`; `ref_name` becomes the
    /// `org.opencontainers.image.ref.name` annotation. Returns the manifest digest.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: Option<&str>) -> String {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let manifest = self.manifest();
        for blob in self.layers.iter().chain([&self.config, &manifest]) {
            std::fs::write(blobs.join(&sha(blob)[7..]), blob).unwrap();
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut desc = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest),
            "size": manifest.len(),
        });
        if let Some(r) = ref_name {
            desc["annotations"] = json!({ "org.opencontainers.image.ref.name": r });
        }
        let index = json!({ "schemaVersion": 2, "manifests": [desc] });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        sha(&manifest)
    }
}

/// Tars up the directory `dir` into `out` (no compression), like `tar -C dir -cf out .`.
pub fn tar_dir(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A two-layer image: a busybox userland with /hello.txt, then a layer that deletes
/// /etc/remove-me (whiteout) and adds /etc/motd.
pub fn sample_image() -> TestImage {
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|_| b"#!not-busybox\n".to_vec());
    let base = layer(&[
        E::Dir("bin"),
        E::File("bin/busybox", &busybox, 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Dir("etc"),
        E::File("etc/remove-me", b"old", 0o644),
        E::File("hello.txt", b"hello from the test image\n", 0o644),
    ]);
    let top = layer(&[E::File("etc/.wh.remove-me", b"", 0o644), E::File("etc/motd", b"welcome\n", 0o644)]);
    TestImage::new(vec![base, top], &["/bin/sh", "-c", "cat /hello.txt"], &["PATH=/bin", "FOO=bar"], "/work")
}
