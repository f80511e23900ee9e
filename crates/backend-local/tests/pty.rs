//! Interactive terminals (`Backend::exec_pty`) on real containers, under both OCI runtimes. Needs
//! root (and runc for the runc part); otherwise it prints `SKIP: <reason>` and returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use agentbox_backend_local::{LocalBackend, LocalBackendConfig};
use agentbox_core::backend::{Backend, PtyInput, PtyRequest, PtySession, SlotSpec};
use agentbox_core::model::{ContainerSpec, Resources, RuntimeClass};

const BRIDGE: &str = "agbxt-pty";
const SUBNET: &str = "10.216.0.0/24";

fn in_path(b: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(b).exists())
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (creates namespaces, cgroups, mounts, veths)".into());
    }
    ["ip", "iptables", "bash"].into_iter().find(|b| !in_path(b)).map(|b| format!("{b} is not installed"))
}

fn config(state: &Path, images: &Path) -> LocalBackendConfig {
    let store = agentbox_images::ImageStore::open(images).expect("open image store");
    let mut cfg = LocalBackendConfig::new(state, store);
    cfg.bridge_name = BRIDGE.into();
    cfg.subnet = SUBNET.into();
    cfg.log_max_bytes = 1 << 20;
    cfg.libcontainer_helper = Some(env!("CARGO_BIN_EXE_agentbox-runtime-helper").into());
    cfg
}

fn slot_spec(id: &str, rt: RuntimeClass) -> SlotSpec {
    SlotSpec {
        slot_id: id.into(),
        pool: "pty".into(),
        namespace: "default".into(),
        runtime: rt,
        containers: vec![ContainerSpec {
            name: "main".into(),
            image: "host".into(),
            command: vec!["sleep".into(), "infinity".into()],
            ..Default::default()
        }],
        resources: Resources { cpu_millis: Some(1000), memory_bytes: Some(128 << 20), pids: Some(64) },
        egress: false,
        registry_credentials: vec![],
    }
}

fn bash_req() -> PtyRequest {
    PtyRequest {
        container: None,
        argv: vec!["bash".into(), "--norc".into(), "--noprofile".into()],
        env: BTreeMap::from([("TERM".into(), "xterm-256color".into()), ("PS1".into(), "PROMPT> ".into())]),
        cwd: Some("/tmp".into()),
        cols: 80,
        rows: 24,
    }
}

/// Terminal output collected so far.
struct Term {
    s: PtySession,
    out: String,
}

impl Term {
    async fn send(&self, text: &str) {
        self.s.input.send(PtyInput::Data(text.as_bytes().to_vec())).await.expect("session input open");
    }

    /// Read until `pat` appears after byte `from` of the output (10 s at most).
    async fn expect(&mut self, from: usize, pat: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.out[from.min(self.out.len())..].contains(pat) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.s.output.recv()).await {
                Ok(Some(b)) => self.out.push_str(&String::from_utf8_lossy(&b)),
                Ok(None) => panic!("output closed before {pat:?}; got {:?}", self.out),
                Err(_) => panic!("no {pat:?} within 10 s; got {:?}", self.out),
            }
        }
    }

    /// Read until the output closes; returns the exit code.
    async fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.s.output.recv()).await {
                Ok(Some(b)) => self.out.push_str(&String::from_utf8_lossy(&b)),
                Ok(None) => break,
                Err(_) => panic!("output not closed within 15 s; got {:?}", self.out),
            }
        }
        let code = tokio::time::timeout(Duration::from_secs(5), self.s.exit).await.expect("exit in time");
        (code.expect("exit code sent"), self.out)
    }
}

/// Host pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

async fn wait_gone(argv: &[&str], within: Duration) -> Vec<i32> {
    let deadline = Instant::now() + within;
    loop {
        let left = pids_running(argv);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn suite(b: &LocalBackend, rt: RuntimeClass, slot: &str, tag: u32) {
    let obs = b.create_slot(&slot_spec(slot, rt)).await.expect("create slot");
    assert!(obs.main().unwrap().state.is_running(), "{obs:?}");

    // --- type a command, read its output; resize; the terminal is the container's own
    let mut t = Term { s: b.exec_pty(slot, &bash_req()).await.expect("exec_pty"), out: String::new() };
    t.expect(0, "PROMPT> ").await;
    let mark = t.out.len();
    t.send("echo hi; echo err >&2\n").await;
    t.expect(mark, "hi\r\nerr\r\n").await;
    let mark = t.out.len();
    t.s.input.send(PtyInput::Resize { cols: 123, rows: 45 }).await.unwrap();
    t.send("stty size; echo $TERM; pwd\n").await;
    t.expect(mark, "45 123\r\nxterm-256color\r\n/tmp\r\n").await;
    let mark = t.out.len();
    t.send(
        "tty; test \"$(readlink /proc/self/ns/pid)\" = \"$(readlink /proc/1/ns/pid)\" && echo same-$((1+1))-pidns\n",
    )
    .await;
    t.expect(mark, "same-2-pidns\r\n").await;
    // `tty` resolves the name inside the container: the terminal is in the container's devpts
    assert!(t.out[mark..].contains("/dev/pts/"), "not on the container's terminal: {:?}", &t.out[mark..]);
    // --- the exit code of the shell is reported after its output
    t.send("exit 3\n").await;
    let (code, out) = t.finish().await;
    assert_eq!(code, 3, "output: {out:?}");

    // --- Close: EOT ends an idle shell; a shell busy in the foreground is hung up on; nothing
    //     of the session (background jobs included) survives
    let bg = format!("{}", 4000 + tag);
    let fg = format!("{}", 5000 + tag);
    let mut t = Term { s: b.exec_pty(slot, &bash_req()).await.expect("exec_pty"), out: String::new() };
    t.expect(0, "PROMPT> ").await;
    t.send(&format!("sleep {bg} &\n")).await;
    t.send(&format!("sleep {fg}\n")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids_running(&["sleep", &fg]).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pids_running(&["sleep", &bg]).len(), 1, "background job not started; output {:?}", t.out);
    assert_eq!(pids_running(&["sleep", &fg]).len(), 1, "foreground job not started; output {:?}", t.out);
    let t0 = Instant::now();
    t.s.input.send(PtyInput::Close).await.unwrap();
    let (code, _) = t.finish().await;
    assert!(t0.elapsed() < Duration::from_secs(5), "close took {:?}", t0.elapsed());
    assert_ne!(code, 0);
    assert_eq!(wait_gone(&["sleep", &bg], Duration::from_secs(3)).await, Vec::<i32>::new(), "background job leaked");
    assert_eq!(wait_gone(&["sleep", &fg], Duration::from_secs(3)).await, Vec::<i32>::new(), "foreground job leaked");

    // --- EOT alone ends an idle shell (exit code 0)
    let mut t = Term { s: b.exec_pty(slot, &bash_req()).await.expect("exec_pty"), out: String::new() };
    t.expect(0, "PROMPT> ").await;
    t.s.input.send(PtyInput::Close).await.unwrap();
    let (code, out) = t.finish().await;
    assert_eq!(code, 0, "idle shell did not take EOT: {out:?}");

    // --- dropping the session ends it too
    let held = format!("{}", 6000 + tag);
    let mut t = Term { s: b.exec_pty(slot, &bash_req()).await.expect("exec_pty"), out: String::new() };
    t.expect(0, "PROMPT> ").await;
    t.send(&format!("sleep {held}\n")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids_running(&["sleep", &held]).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pids_running(&["sleep", &held]).len(), 1);
    drop(t);
    assert_eq!(wait_gone(&["sleep", &held], Duration::from_secs(5)).await, Vec::<i32>::new(), "dropped session leaked");

    // --- a command that does not exist ends at once with 127
    let mut r = bash_req();
    r.argv = vec!["agbx-no-such-shell".into()];
    match b.exec_pty(slot, &r).await {
        Ok(s) => {
            let (code, out) = Term { s, out: String::new() }.finish().await;
            assert_eq!(code, 127, "{out:?}");
        }
        Err(e) => assert!(e.to_string().contains("agbx-no-such-shell"), "{e}"),
    }
    // --- unknown slot, unknown container
    assert!(b.exec_pty("agbx-nope", &bash_req()).await.is_err());
    let mut r = bash_req();
    r.container = Some("nope".into());
    assert!(matches!(b.exec_pty(slot, &r).await, Err(agentbox_core::backend::BackendError::ContainerNotFound { .. })));

    // the slot still works and is destroyed cleanly
    b.destroy_slot(slot).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pty_sessions_under_both_runtimes() {
    if let Some(reason) = skip_reason() {
        println!("SKIP: {reason}");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let (sp, ip) = (state.path().to_owned(), images.path().to_owned());
    let res = tokio::spawn(async move {
        let b = LocalBackend::new(config(&sp, &ip)).await.expect("backend");
        let pid = std::process::id();
        suite(&b, RuntimeClass::Libcontainer, &format!("ptylc{pid}"), 1).await;
        if in_path("runc") {
            suite(&b, RuntimeClass::Runc, &format!("ptyrc{pid}"), 2).await;
        } else {
            println!("SKIP: runc part: runc is not installed (apt-get install runc)");
        }
    })
    .await;
    // Cleanup through a fresh backend: it re-adopts whatever is left and destroys it.
    let b = LocalBackend::new(config(state.path(), images.path())).await.expect("cleanup backend");
    for s in b.list_slots().await.unwrap() {
        let _ = b.destroy_slot(&s.slot_id).await;
    }
    b.remove_host_network().await.expect("remove test bridge");
    drop(b);
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}
