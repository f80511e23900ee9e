//! In-place image switch: import a busybox image the test builds itself, claim a slot with it,
//! then claim the same slot again with the pool's default image. The slot keeps its network
//! identity; the writable layer is discarded between sandboxes.

mod common;

use std::io::Write;

use common::{Opts, Server};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A tar entry of the image layer.
enum Entry {
    Dir(&'static str, u32),
    File(String, u32, Vec<u8>),
    Link(String, &'static str),
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
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

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An OCI image layout tar: one gzip layer with busybox and `marker` at `/etc/e2e-marker`.
fn busybox_image(marker: &str) -> Vec<u8> {
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

/// (MAC of eth0, the local IPv4 addresses) as seen inside the sandbox, with busybox `cat` only.
fn net_identity(srv: &Server, id: &str) -> (String, Vec<String>) {
    let mac = srv.sh_ok(id, "cat /sys/class/net/eth0/address").trim().to_string();
    let trie = srv.sh_ok(id, "cat /proc/net/fib_trie");
    // fib_trie lists "|-- 10.x.y.z" followed by "/32 host LOCAL" for local addresses.
    let lines: Vec<&str> = trie.lines().collect();
    let mut ips: Vec<String> = lines
        .windows(2)
        .filter(|w| w[1].contains("/32 host LOCAL"))
        .filter_map(|w| w[0].trim().strip_prefix("|-- ").map(str::to_string))
        .filter(|ip| !ip.starts_with("127."))
        .collect();
    ips.sort();
    ips.dedup();
    (mac, ips)
}

#[test]
fn image_switch_in_place() {
    if common::skip_unless_root("image_switch_in_place") {
        return;
    }
    let srv = Server::start(Opts::new(2));
    let marker = format!("e2e-marker-{}-{}", std::process::id(), srv.data_dir().display());

    // Build and import the image with the CLI.
    let file = srv.data_dir().join("busybox-oci.tar");
    std::fs::write(&file, busybox_image(&marker)).unwrap();
    let out = srv.cli(&["image", "import", file.to_str().unwrap(), "--name", "e2e/busybox:1", "-o", "json"]);
    assert!(
        out.status.success(),
        "image import failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let imported: Value = serde_json::from_slice(&out.stdout).expect("JSON from image import");
    assert_eq!(imported["total"], 1, "{imported}");
    let images = srv.get("/v1/images").expect(200);
    let refs: Vec<&str> = images["items"].as_array().unwrap().iter().filter_map(|i| i["reference"].as_str()).collect();
    assert!(refs.iter().any(|r| r.contains("e2e/busybox:1")), "GET /v1/images lacks e2e/busybox:1: {refs:?}");
    assert!(refs.contains(&"host") && refs.contains(&"pause"), "built-in images missing: {refs:?}");

    srv.create_pool(&json!({
        "name": "switch",
        "template": common::host_template(),
        "replicas": 1,
        "podCreationImagePolicy": "IdleImage"
    }));
    srv.wait_pool_idle("switch", 1);

    // Sandbox A: the imported busybox image.
    let t = std::time::Instant::now();
    let a = srv.claim(&json!({"poolName": "switch", "image": "e2e/busybox:1"}));
    eprintln!("claim with image switch (pause -> e2e/busybox:1) took {:?}", t.elapsed());
    let a_id = a["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(a["status"], "Running", "{a}");
    assert_eq!(a["containerImages"]["main"], "e2e/busybox:1", "{a}");
    assert_eq!(srv.sh_ok(&a_id, "cat /etc/e2e-marker"), marker);
    let (code, _, _) = srv.sh(&a_id, "test -e /usr/bin/python3");
    assert_ne!(code, 0, "busybox image must not see the host's python3");
    let pod = a["podName"].as_str().unwrap().to_string();
    let (mac_a, ips_a) = net_identity(&srv, &a_id);
    assert!(!ips_a.is_empty(), "no IPv4 address inside sandbox A");
    if let Some(ip) = a["ip"].as_str() {
        assert!(ips_a.iter().any(|x| x == ip), "API ip {ip} not among the addresses inside {ips_a:?}");
    }
    srv.sh_ok(&a_id, "echo secret-of-a > /tmp/a-file && cat /tmp/a-file");
    srv.release_and_wait(&a_id);

    // Sandbox B: no image, so the pool default (host) again, in the same (only) slot.
    srv.wait_pool_idle("switch", 1);
    let t = std::time::Instant::now();
    let b = srv.claim(&json!({"poolName": "switch"}));
    eprintln!("claim with image switch (pause -> host) took {:?}", t.elapsed());
    let b_id = b["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(b["status"], "Running", "{b}");
    assert_eq!(b["podName"], pod.as_str(), "one slot: the same podName");
    assert_eq!(b["containerImages"]["main"], "host", "{b}");
    let (code, _, _) = srv.sh(&b_id, "test -e /etc/e2e-marker");
    assert_ne!(code, 0, "the host image must not contain the marker of the busybox image");
    assert!(srv.sh_ok(&b_id, "python3 -V").starts_with("Python 3"), "python3 -V in the host image");
    let (mac_b, ips_b) = net_identity(&srv, &b_id);
    assert_eq!(mac_a, mac_b, "the slot keeps its netns: same MAC");
    assert_eq!(ips_a, ips_b, "the slot keeps its netns: same IP");
    let (code, out, _) = srv.sh(&b_id, "cat /tmp/a-file");
    assert_ne!(code, 0, "a file written by sandbox A is visible to sandbox B: {out:?}");
    srv.release_and_wait(&b_id);

    // And back to busybox: the image is switched again and A's file is still gone.
    srv.wait_pool_idle("switch", 1);
    let c = srv.claim(&json!({"poolName": "switch", "image": "e2e/busybox:1"}));
    let c_id = c["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(srv.sh_ok(&c_id, "cat /etc/e2e-marker"), marker);
    let (code, _, _) = srv.sh(&c_id, "test -e /tmp/a-file");
    assert_ne!(code, 0, "writable layer of sandbox A survived into sandbox C");
    srv.release_and_wait(&c_id);

    // An unknown image is a client error and the slot survives.
    srv.wait_pool_idle("switch", 1);
    let r = srv.post("/v1/sandboxes", &json!({"poolName": "switch", "image": "127.0.0.1:1/e2e/does-not-exist:1"}));
    assert!((400..500).contains(&r.status), "unknown image must be 4xx: {} {}", r.status, r.text);
    srv.wait_pool_idle("switch", 1);
}
