//! In-place image switch: import a busybox image the test builds itself, claim a slot with it,
//! then claim the same slot again with the pool's default image. The slot keeps its network
//! identity; the writable layer is discarded between sandboxes.

mod common;

use common::image::busybox_image;
use common::{Opts, Server};
use serde_json::{Value, json};

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
