//! Importing OCI image layouts and `docker save` archives that the tests build themselves.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use agentbox_images::{ImageError, ImageStore};
use common::{E, TestImage, is_root, layer, sample_image, sha, tar_dir};
use serde_json::json;

fn skip_unless_root() -> bool {
    if !is_root() {
        println!("SKIP: image import needs root (whiteouts are overlay char devices, ownership)");
        return true;
    }
    false
}

#[tokio::test]
async fn imports_an_oci_layout_directory_and_tar() {
    if skip_unless_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("store")).unwrap();
    let image = sample_image();
    let layout = work.path().join("layout");
    let digest = image.write_oci_layout(&layout, Some("localhost/test/hello:1.0"));

    let summaries = store.import(&layout, None).unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].reference, "localhost/test/hello:1.0");
    assert_eq!(summaries[0].digest, digest);
    assert_eq!(summaries[0].source, "imported");
    assert!(summaries[0].size_bytes > 30, "{:?}", summaries[0]);

    let img = store.get("localhost/test/hello:1.0").unwrap().expect("imported image is cached");
    assert_eq!(img.digest, digest);
    assert_eq!(img.layers.len(), 2);
    let (base, top) = (&img.layers[0], &img.layers[1]);
    assert_eq!(fs::read_to_string(base.join("hello.txt")).unwrap(), "hello from the test image\n");
    assert_eq!(fs::metadata(base.join("bin/busybox")).unwrap().mode() & 0o777, 0o755);
    assert_eq!(fs::read_link(base.join("bin/sh")).unwrap().to_str(), Some("busybox"));
    assert_eq!(fs::read_to_string(top.join("etc/motd")).unwrap(), "welcome\n");
    let wh = fs::symlink_metadata(top.join("etc/remove-me")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "whiteout is not a 0/0 char device");
    assert_eq!(img.config.cmd, ["/bin/sh", "-c", "cat /hello.txt"]);
    assert_eq!(img.config.env, ["PATH=/bin", "FOO=bar"]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/work"));
    assert!(img.host_binds.is_empty());

    // ensure() of an imported image never goes to the network.
    let again = store.ensure("localhost/test/hello:1.0", &[]).await.unwrap();
    assert_eq!(again, img);
    assert_eq!(store.stats().pulls, 0);
    assert_eq!(store.stats().layers_unpacked, 2);

    // The same layout as a tar, under a name given by the caller: layers are shared.
    let tarball = work.path().join("layout.tar");
    tar_dir(&layout, &tarball);
    let summaries = store.import(&tarball, Some("tarred")).unwrap();
    assert_eq!(summaries[0].reference, "tarred:latest");
    assert_eq!(summaries[0].digest, digest);
    assert_eq!(store.stats().layers_unpacked, 2, "identical layers were unpacked again");
    let tarred = store.get("tarred").unwrap().unwrap();
    assert_eq!(tarred.layers, img.layers);
    assert_eq!(store.get("docker.io/library/tarred:latest").unwrap().unwrap().digest, digest);
    // A digest reference resolves from the cache too.
    let pinned = store.get(&format!("whatever/name@{digest}")).unwrap().unwrap();
    assert_eq!(pinned.layers, img.layers);

    let refs: Vec<(String, String)> = store.list().unwrap().into_iter().map(|s| (s.reference, s.source)).collect();
    for want in [
        ("host", "builtin"),
        ("pause", "builtin"),
        ("localhost/test/hello:1.0", "imported"),
        ("tarred:latest", "imported"),
    ] {
        assert!(refs.contains(&(want.0.to_owned(), want.1.to_owned())), "{want:?} missing from {refs:?}");
    }

    // A second store on the same root sees everything (refs.json persisted).
    let reopened = ImageStore::open(&work.path().join("store")).unwrap();
    assert_eq!(reopened.get("tarred").unwrap().unwrap().digest, digest);
    // Nothing is left in the work area.
    assert_eq!(fs::read_dir(work.path().join("store/tmp")).unwrap().count(), 0);
}

#[test]
fn a_tag_only_ref_name_needs_a_name() {
    if skip_unless_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("store")).unwrap();
    let layout = work.path().join("layout");
    sample_image().write_oci_layout(&layout, Some("1.0"));
    let err = store.import(&layout, None).unwrap_err();
    assert!(err.to_string().contains("pass a name"), "{err}");
    assert!(store.get("1.0").unwrap().is_none());
    let s = store.import(&layout, Some("localhost/named:1.0")).unwrap();
    assert_eq!(s[0].reference, "localhost/named:1.0");
    // Built-in names cannot be taken over.
    assert!(store.import(&layout, Some("pause")).is_err());
}

#[test]
fn imports_a_gzipped_docker_save_archive() {
    if skip_unless_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("store")).unwrap();
    // docker save: uncompressed layer.tar files, <id>.json config, manifest.json.
    let (gz, diff_id) = layer(&[E::Dir("app"), E::File("app/run.sh", b"#!/bin/sh\necho hi\n", 0o755)]);
    let mut plain = Vec::new();
    std::io::copy(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
    assert_eq!(sha(&plain), diff_id);
    let image = TestImage::new(vec![(gz, diff_id)], &["/app/run.sh"], &["A=1"], "/app");
    let save = work.path().join("save");
    fs::create_dir_all(save.join("abc123")).unwrap();
    fs::write(save.join("abc123/layer.tar"), &plain).unwrap();
    fs::write(save.join("cfg.json"), &image.config).unwrap();
    let manifest = json!([{ "Config": "cfg.json", "RepoTags": ["foo:1", "registry.local/team/foo:1"], "Layers": ["abc123/layer.tar"] }]);
    fs::write(save.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let tar_path = work.path().join("save.tar");
    tar_dir(&save, &tar_path);
    let gz_path = work.path().join("save.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(fs::File::create(&gz_path).unwrap(), flate2::Compression::fast());
    enc.write_all(&fs::read(&tar_path).unwrap()).unwrap();
    enc.finish().unwrap();

    let s = store.import(&gz_path, None).unwrap();
    let names: Vec<&str> = s.iter().map(|s| s.reference.as_str()).collect();
    assert_eq!(names, ["foo:1", "registry.local/team/foo:1"]);
    let img = store.get("docker.io/library/foo:1").unwrap().unwrap();
    assert_eq!(img.layers.len(), 1);
    assert_eq!(fs::read_to_string(img.layers[0].join("app/run.sh")).unwrap(), "#!/bin/sh\necho hi\n");
    assert_eq!(img.config.cmd, ["/app/run.sh"]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/app"));
    // Re-importing is idempotent and yields the same synthetic manifest digest.
    let again = store.import(&gz_path, None).unwrap();
    assert_eq!(again[0].digest, s[0].digest);
    assert_eq!(store.get("registry.local/team/foo:1").unwrap().unwrap().digest, img.digest);
}

#[test]
fn corrupt_blobs_are_rejected_and_nothing_is_registered() {
    if skip_unless_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("store")).unwrap();
    let image = sample_image();
    let layout = work.path().join("layout");
    image.write_oci_layout(&layout, Some("localhost/corrupt:1"));
    let victim = layout.join("blobs/sha256").join(&sha(&image.layers[1])[7..]);
    fs::write(&victim, b"not the layer").unwrap();
    let err = store.import(&layout, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.get("localhost/corrupt:1").unwrap().is_none());

    // A layer whose diff id does not match the config is refused too.
    let (good, _) = layer(&[E::File("a", b"a", 0o644)]);
    let lying = TestImage::new(vec![(good, sha(b"something else"))], &[], &[], "");
    let layout2 = work.path().join("layout2");
    lying.write_oci_layout(&layout2, Some("localhost/lying:1"));
    let err = store.import(&layout2, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.get("localhost/lying:1").unwrap().is_none());
}

#[tokio::test]
async fn local_names_never_pull() {
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("store")).unwrap();
    let err = store.ensure("localhost/not-imported:1", &[]).await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
    assert_eq!(store.stats().pulls, 0);
}

/// The unpacked layers really stack: overlayfs hides the whited-out file and shows the rest.
#[test]
fn unpacked_layers_stack_with_overlayfs() {
    if skip_unless_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("store")).unwrap();
    let layout = work.path().join("layout");
    sample_image().write_oci_layout(&layout, Some("localhost/stack:1"));
    store.import(&layout, None).unwrap();
    let img = store.get("localhost/stack:1").unwrap().unwrap();
    let lower: Vec<String> = img.layers.iter().rev().map(|p| p.display().to_string()).collect();
    let (upper, wdir, merged) = (work.path().join("u"), work.path().join("w"), work.path().join("m"));
    for d in [&upper, &wdir, &merged] {
        fs::create_dir(d).unwrap();
    }
    // A private mount namespace: the mount disappears with the shell, even on failure.
    let script = format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {m} && \
         cat {m}/hello.txt {m}/etc/motd && ls -a {m}/etc && test ! -e {m}/etc/remove-me && {m}/bin/busybox true",
        lower.join(":"),
        upper.display(),
        wdir.display(),
        m = merged.display()
    );
    let out =
        std::process::Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP: unshare(1) not available: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "overlay check failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hello from the test image") && stdout.contains("welcome"), "{stdout}");
    assert!(!stdout.contains("remove-me"), "whiteout did not hide the file: {stdout}");
}
