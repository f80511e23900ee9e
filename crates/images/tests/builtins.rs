//! The `host` and `pause` built-ins.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentbox_images::ImageStore;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn open() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn host_mirrors_the_real_root() {
    let (_dir, store) = open();
    let host = store.ensure("host", &[]).await.unwrap();
    assert_eq!(host.reference, "host");
    assert!(host.digest.starts_with("sha256:") && host.digest.len() == 71);
    assert_eq!(host.layers.len(), 1);
    let skel = &host.layers[0];
    let dests: Vec<&str> = host.host_binds.iter().map(|b| b.destination.as_str()).collect();
    assert!(dests.contains(&"/usr") && dests.contains(&"/etc"), "{dests:?}");
    for b in &host.host_binds {
        assert!(b.source.is_dir(), "bind source {} is not a directory", b.source.display());
        assert!(skel.join(b.destination.trim_start_matches('/')).is_dir(), "no mount point for {}", b.destination);
    }
    for name in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let real = Path::new("/").join(name);
        match fs::symlink_metadata(&real) {
            Ok(m) if m.file_type().is_symlink() => assert_eq!(
                fs::read_link(skel.join(name)).unwrap(),
                fs::read_link(&real).unwrap(),
                "{name} symlink not mirrored"
            ),
            Ok(m) if m.is_dir() => assert!(dests.contains(&format!("/{name}").as_str()), "/{name} not bound"),
            _ => assert!(fs::symlink_metadata(skel.join(name)).is_err(), "{name} should not exist"),
        }
    }
    for d in ["proc", "sys", "dev", "tmp", "root", "home", "run", "var/tmp", "mnt"] {
        assert!(skel.join(d).is_dir(), "{d} missing from the host skeleton");
    }
    assert_eq!(host.config.env, ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]);
    assert_eq!(host.config.cmd, ["/bin/sh"]);
    // Stable across opens of the same root.
    let again = ImageStore::open(store.root()).unwrap().get("host").unwrap().unwrap();
    assert_eq!(again.digest, host.digest);
}

/// True when the ELF file has no PT_INTERP program header (no dynamic loader needed).
fn elf_is_static(bytes: &[u8]) -> bool {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    assert!(phnum > 0, "no program headers");
    (0..phnum).all(|i| u32_at(phoff + i * phentsize) != 3 /* PT_INTERP */)
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn pause_is_static_and_stops_on_sigterm() {
    let (_dir, store) = open();
    let pause = store.get("pause").unwrap().unwrap();
    assert_eq!(pause.config.cmd, ["/pause"]);
    let bin = pause.layers[0].join("pause");
    assert_eq!(fs::metadata(&bin).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(elf_is_static(&fs::read(&bin).unwrap()), "pause is dynamically linked");
    for d in ["proc", "sys", "dev", "tmp"] {
        assert!(pause.layers[0].join(d).is_dir());
    }

    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut child = Command::new(&bin).stdin(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "pause exited on its own");
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(5));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(status.and_then(|s| s.code()), Some(0), "pause did not exit 0 on {sig}");
    }
}

/// As PID 1 of a new PID namespace, pause reaps orphans and still stops on SIGTERM.
#[test]
fn pause_as_pid1_reaps_orphans() {
    if !nix::unistd::geteuid().is_root() || Command::new("unshare").arg("--help").output().is_err() {
        println!("SKIP: needs root and unshare(1) for a PID namespace");
        return;
    }
    let (_dir, store) = open();
    let bin = store.get("pause").unwrap().unwrap().layers[0].join("pause");
    // `unshare --fork --pid` keeps running as the parent of pause; pause is PID 1 inside.
    let mut ns = Command::new("unshare")
        .args(["--fork", "--pid", "--kill-child"])
        .arg(&bin)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let unshare_pid = ns.id() as i32;
    let result = std::panic::catch_unwind(|| {
        // Find pause: the child of unshare.
        let deadline = Instant::now() + Duration::from_secs(5);
        let pause_pid = loop {
            let kids =
                fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children")).unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next() {
                break p.parse::<i32>().unwrap();
            }
            assert!(Instant::now() < deadline, "pause did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        // A shell in the namespace starts a short sleep in the background and exits: the
        // orphaned sleep is re-parented to pause, which must reap it when it ends.
        let st = Command::new("nsenter")
            .args(["-t", &pause_pid.to_string(), "-p", "--", "/bin/sh", "-c", "sleep 0.2 & echo $!"])
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(st.status.success());
        std::thread::sleep(Duration::from_millis(800));
        let kids = fs::read_to_string(format!("/proc/{pause_pid}/task/{pause_pid}/children")).unwrap_or_default();
        for k in kids.split_whitespace() {
            let stat = fs::read_to_string(format!("/proc/{k}/stat")).unwrap_or_default();
            assert!(!stat.contains(") Z "), "pause left zombie {k}: {stat}");
        }
        kill(Pid::from_raw(pause_pid), Signal::SIGTERM).unwrap();
    });
    let status = wait_exit(&mut ns, Duration::from_secs(5));
    if status.is_none() {
        let _ = ns.kill();
        let _ = ns.wait();
    }
    result.unwrap();
    // unshare exits with its child's status.
    assert_eq!(status.and_then(|s| s.code()), Some(0), "pause as PID 1 did not exit 0 on SIGTERM");
}
