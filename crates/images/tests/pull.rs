//! Pulling from a real registry: Debian's `docker-registry` on 127.0.0.1, fed by oci-client.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentbox_core::model::RegistryCredential;
use agentbox_images::{ImageError, ImageStore};
use common::{E, TestImage, is_root, layer, sample_image, sha};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry serve` process on a free loopback port, killed (by PID) on drop.
struct Registry {
    child: Option<Child>,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// `htpasswd`: one `user:bcrypt-hash` line to require basic auth.
    fn start(htpasswd: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = match htpasswd {
            Some(line) => {
                let p = dir.path().join("htpasswd");
                std::fs::write(&p, format!("{line}\n")).unwrap();
                format!("auth:\n  htpasswd: {{realm: agentbox-test, path: {}}}\n", p.display())
            }
            None => String::new(),
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: {addr}}}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry { child: Some(child), addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&reg.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on {}", reg.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn skip() -> bool {
    if !Path::new(REGISTRY_BIN).exists() {
        println!("SKIP: docker-registry not installed (apt-get install docker-registry)");
        return true;
    }
    if !is_root() {
        println!("SKIP: pulling needs root (whiteouts are overlay char devices)");
        return true;
    }
    false
}

fn pusher() -> Client {
    Client::new(ClientConfig { protocol: ClientProtocol::Http, ..ClientConfig::default() })
}

/// Pushes blobs and `manifest` bytes as-is; returns the manifest digest.
async fn push_raw(client: &Client, reference: &str, blobs: &[&[u8]], manifest: Vec<u8>, media_type: &str) -> String {
    let r: Reference = reference.parse().unwrap();
    for b in blobs {
        client.push_blob(&r, b.to_vec(), &sha(b)).await.unwrap();
    }
    let digest = sha(&manifest);
    client.push_manifest_raw(&r, manifest, media_type.parse().unwrap()).await.unwrap();
    digest
}

async fn push_image(client: &Client, reference: &str, image: &TestImage) -> String {
    let mut blobs: Vec<&[u8]> = image.layers.iter().map(Vec::as_slice).collect();
    blobs.push(&image.config);
    push_raw(client, reference, &blobs, image.manifest(), "application/vnd.oci.image.manifest.v1+json").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_local_registry_once_then_uses_the_cache() {
    if skip() {
        return;
    }
    let mut registry = Registry::start(None);
    let addr = registry.addr.clone();
    let client = pusher();

    // A two-layer image, and a multi-platform index whose amd64 entry is a third image.
    let image = sample_image();
    let hello_digest = push_image(&client, &format!("{addr}/scout/hello:1.0"), &image).await;
    let amd64 = TestImage::new(vec![layer(&[E::File("arch", b"amd64", 0o644)])], &["/arch"], &[], "");
    let arm64 = TestImage::new(vec![layer(&[E::File("arch", b"arm64", 0o644)])], &["/arch"], &[], "");
    let amd64_digest = push_image(&client, &format!("{addr}/scout/multi:amd64"), &amd64).await;
    let arm64_digest = push_image(&client, &format!("{addr}/scout/multi:arm64"), &arm64).await;
    let entry = |d: &str, m: &[u8], arch: &str| {
        json!({ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": m.len(),
                "platform": { "os": "linux", "architecture": arch } })
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        // arm64 first, so picking the first entry would be wrong.
        "manifests": [entry(&arm64_digest, &arm64.manifest(), "arm64"), entry(&amd64_digest, &amd64.manifest(), "amd64")],
    }))
    .unwrap();
    push_raw(&client, &format!("{addr}/scout/multi:latest"), &[], index, "application/vnd.oci.image.index.v1+json")
        .await;

    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let store = ImageStore::open(&root).unwrap();
    let hello_ref = format!("{addr}/scout/hello:1.0");

    // Two concurrent callers: one pull, one unpack per layer.
    let spawn = |s: ImageStore, r: String| tokio::spawn(async move { s.ensure(&r, &[]).await });
    let ta = spawn(store.clone(), hello_ref.clone());
    let tb = spawn(store.clone(), hello_ref.clone());
    let (a, b) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
    assert_eq!(a, b);
    let stats = store.stats();
    assert_eq!(stats.pulls, 1, "{stats:?}");
    assert_eq!(stats.layers_unpacked, 2, "{stats:?}");
    assert_eq!(stats.blobs_downloaded, 3, "{stats:?}");
    assert_eq!(a.reference, hello_ref);
    assert_eq!(a.digest, hello_digest);
    assert_eq!(a.layers.len(), 2);
    assert_eq!(std::fs::read_to_string(a.layers[0].join("hello.txt")).unwrap(), "hello from the test image\n");
    assert_eq!(std::fs::read_to_string(a.layers[1].join("etc/motd")).unwrap(), "welcome\n");
    assert_eq!(a.config.cmd, ["/bin/sh", "-c", "cat /hello.txt"]);
    assert_eq!(a.config.env, ["PATH=/bin", "FOO=bar"]);
    let listed = store.list().unwrap();
    assert!(listed.iter().any(|s| s.reference == hello_ref && s.source == "pulled"), "{listed:?}");

    // An index resolves to its linux/amd64 image.
    let multi = store.ensure(&format!("{addr}/scout/multi"), &[]).await.unwrap();
    assert_eq!(multi.digest, amd64_digest);
    assert_eq!(std::fs::read_to_string(multi.layers[0].join("arch")).unwrap(), "amd64");

    // A tag the registry does not have.
    let err = store.ensure(&format!("{addr}/scout/hello:nope"), &[]).await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
    let err = store.ensure(&format!("{addr}/scout/nothing-here:1"), &[]).await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");

    // With the registry gone, cached references (by tag or digest) still resolve.
    registry.stop();
    let pulls_before = store.stats().pulls;
    let cached = store.ensure(&hello_ref, &[]).await.unwrap();
    assert_eq!(cached, a);
    let by_digest = store.ensure(&format!("{addr}/scout/hello@{hello_digest}"), &[]).await.unwrap();
    assert_eq!(by_digest.layers, a.layers);
    assert_eq!(store.stats().pulls, pulls_before, "a cached image was pulled again");
    let reopened = ImageStore::open(&root).unwrap();
    assert_eq!(reopened.ensure(&hello_ref, &[]).await.unwrap().digest, hello_digest);
    assert_eq!(reopened.stats().pulls, 0);

    // Something not cached now fails with a pull error that names the reference.
    let err = store.ensure(&format!("{addr}/scout/other:1"), &[]).await.unwrap_err();
    assert!(matches!(err, ImageError::Pull { .. }), "{err}");
    assert!(err.to_string().contains("scout/other:1"), "{err}");
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0, "tmp/ not cleaned up");
}

/// bcrypt (cost 5) of `AUTH_PASSWORD`, made with Python's `crypt` for this test.
const AUTH_HTPASSWD: &str = "scout:$2b$05$dIvYt4w/8pupBszy/B2uy.Vp7.bXKg0v95teczPZZ0LTM33rfZyJy";
const AUTH_PASSWORD: &str = "agentbox-test-pw";

fn cred(registry: &str, password: &str) -> RegistryCredential {
    RegistryCredential { registry: registry.to_owned(), username: "scout".to_owned(), password: password.to_owned() }
}

#[tokio::test]
async fn pulls_with_basic_auth_matched_by_registry() {
    if skip() {
        return;
    }
    let registry = Registry::start(Some(AUTH_HTPASSWD));
    let addr = registry.addr.clone();
    let client = pusher();
    let reference = format!("{addr}/private/app:2");
    client.store_auth_if_needed(&addr, &RegistryAuth::Basic("scout".to_owned(), AUTH_PASSWORD.to_owned())).await;
    let image = TestImage::new(vec![layer(&[E::File("secret.txt", b"s3cr3t", 0o600)])], &["/x"], &[], "");
    let digest = push_image(&client, &reference, &image).await;

    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("store")).unwrap();
    // No credentials, credentials for another registry, a wrong password: all refused.
    for creds in [vec![], vec![cred("127.0.0.2:1", AUTH_PASSWORD)], vec![cred(&addr, "wrong")]] {
        let err = store.ensure(&reference, &creds).await.unwrap_err();
        println!("refused as expected: {err}");
        assert!(matches!(err, ImageError::Pull { .. }), "{err}");
        assert!(err.to_string().to_lowercase().contains("not authorized"), "{err}");
    }
    assert!(store.get(&reference).unwrap().is_none());
    // The right password for this registry (written as a URL, among others) works.
    let creds = [cred("ghcr.io", "x"), cred(&format!("http://{addr}/"), AUTH_PASSWORD)];
    let img = store.ensure(&reference, &creds).await.unwrap();
    assert_eq!(img.digest, digest);
    assert_eq!(std::fs::read(img.layers[0].join("secret.txt")).unwrap(), b"s3cr3t");
}
