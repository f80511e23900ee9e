//! Test images built from scratch: an OCI image layout with busybox (no registry or network needed).

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

/// A tar entry of the image layer.
pub enum Entry {
    Dir(&'static str, u32),
    File(String, u32, Vec<u8>),
    Link(String, &'static str),
}

pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            Entry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p.as_str(), data.as_slice()).unwrap();
            }
            Entry::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p.as_str(), target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An OCI image layout tar: one gzip layer with busybox and `marker` at `/etc/e2e-marker`.
pub fn busybox_image(marker: &str) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::Dir("etc", 0o755),
        Entry::Dir("tmp", 0o1777),
        Entry::Dir("proc", 0o555),
        Entry::Dir("sys", 0o555),
        Entry::Dir("dev", 0o755),
        Entry::File("bin/busybox".into(), 0o755, busybox),
        Entry::File("etc/e2e-marker".into(), 0o644, marker.as_bytes().to_vec()),
        Entry::File("etc/passwd".into(), 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
    ];
    for applet in ["sh", "cat", "sleep", "ls", "test", "ip", "echo", "rm"] {
        entries.push(Entry::Link(format!("bin/{applet}"), "busybox"));
    }
    let layer = tar_of(&entries);
    let diff_id = sha(&layer);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&layer).unwrap();
    let blob = gz.finish().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/sleep", "1000000"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "agentbox e2e test" }]
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&blob), "size": blob.len() }]
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "1" }
        }]
    }))
    .unwrap();
    let blob_path = |d: &[u8]| format!("blobs/sha256/{}", &sha(d)["sha256:".len()..]);
    let all = [
        Entry::File("oci-layout".into(), 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        Entry::File("index.json".into(), 0o644, index),
        Entry::Dir("blobs", 0o755),
        Entry::Dir("blobs/sha256", 0o755),
        Entry::File(blob_path(&manifest), 0o644, manifest.clone()),
        Entry::File(blob_path(&config), 0o644, config.clone()),
        Entry::File(blob_path(&blob), 0o644, blob.clone()),
    ];
    tar_of(&all)
}
