//! End-to-end harness: starts the real `agentbox serve` binary like a user would, talks to it over
//! HTTP, and cleans up after itself (pools deleted through the API so slots are destroyed, then the
//! server stopped, leftover mounts unmounted, the bridge and its iptables rules removed) even when
//! the test panics.
//!
//! Every test gives its own `net` number N: subnet `10.2NN.0.0/16`, bridge `agbxeNN`, so tests run
//! in parallel (nextest runs each test in its own process) without sharing host state.

#![allow(dead_code)]

pub mod agent;
pub mod image;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::blocking::Client;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// Poll interval of every `wait_*` helper.
pub const POLL: Duration = Duration::from_millis(50);
/// How long slots may take to warm up.
pub const WARMUP: Duration = Duration::from_secs(60);

/// `true` (and a visible `SKIP:` line) when the test cannot run here: the local backend needs root.
pub fn skip_unless_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    // CI runs as root: a skip there would hide an end-to-end proof, so it is a failure.
    assert!(std::env::var_os("CI").is_none(), "{test}: needs root, and CI must run the end-to-end tests as root");
    eprintln!("SKIP: {test}: needs root (the local backend creates namespaces, cgroups, mounts and veths)");
    println!("SKIP: {test}: needs root");
    true
}

/// How to start the server.
#[derive(Clone, Debug)]
pub struct Opts {
    /// 1..=54: subnet `10.(200+net).0.0/16`, bridge `agbxe{net:02}`.
    pub net: u8,
    /// `Some(n)`: the default pool with `n` slots; `None`: `--no-default-pool`.
    pub default_pool: Option<u32>,
    /// `--admin-key` (dev mode when `None`); the harness's own requests and `cli()` send it.
    pub admin_key: Option<String>,
    /// More `agentbox serve` arguments.
    pub extra_args: Vec<String>,
}

impl Opts {
    pub fn new(net: u8) -> Opts {
        assert!((1..=54).contains(&net), "net must be 1..=54");
        Opts { net, default_pool: None, admin_key: None, extra_args: vec![] }
    }
    /// Run with `--admin-key KEY` (the harness authenticates as the admin).
    pub fn admin_key(mut self, key: &str) -> Opts {
        self.admin_key = Some(key.into());
        self
    }
    pub fn arg(mut self, a: &str) -> Opts {
        self.extra_args.push(a.into());
        self
    }
    pub fn default_pool(mut self, n: u32) -> Opts {
        self.default_pool = Some(n);
        self
    }
    pub fn subnet(&self) -> String {
        format!("10.{}.0.0/16", 200 + self.net as u32)
    }
    pub fn bridge(&self) -> String {
        format!("agbxe{:02}", self.net)
    }
    /// Host veth names of this subnet start with this (see backend-local `net::veth_name`).
    pub fn veth_prefix(&self) -> String {
        format!("ab0a{:02x}", 200 + self.net as u32)
    }
}

/// An HTTP answer: status, headers, body as JSON (`Null` when it is not JSON) and as text.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
    /// Panic with the body unless the status is `want`.
    #[track_caller]
    pub fn expect(self, want: u16) -> Value {
        assert_eq!(self.status, want, "unexpected status; body: {}", self.text);
        self.body
    }
}

/// A running `agentbox serve`.
pub struct Server {
    pub opts: Opts,
    data: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    logs: Arc<Mutex<Vec<String>>>,
    pub http: Client,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentbox")
}

fn drain<R: Read + Send + 'static>(
    r: R,
    tag: &'static str,
    logs: Arc<Mutex<Vec<String>>>,
    url_tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let (Some(tx), Some(rest)) = (&url_tx, line.strip_prefix("agentbox listening on ")) {
                let _ = tx.send(rest.trim().to_string());
            }
            logs.lock().unwrap().push(format!("[{tag}] {line}"));
        }
    });
}

impl Server {
    /// Start `agentbox serve` in a fresh data dir and wait for its `listening` line.
    pub fn start(opts: Opts) -> Server {
        let data = tempfile::Builder::new().prefix(&format!("agbx-e2e{:02}-", opts.net)).tempdir().expect("tempdir");
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = &opts.admin_key {
            headers.insert("AGENTBOX-API-KEY", k.parse().expect("admin key is a valid header value"));
        }
        let http =
            Client::builder().timeout(Duration::from_secs(180)).default_headers(headers).build().expect("http client");
        let mut s = Server { opts, data: Some(data), child: None, url: String::new(), logs: Arc::default(), http };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> &Path {
        self.data.as_ref().expect("data dir").path()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--subnet", &self.opts.subnet(), "--bridge", &self.opts.bridge()])
            .env("NO_COLOR", "1")
            .env_remove("AGENTBOX_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(k) = &self.opts.admin_key {
            cmd.args(["--admin-key", k]);
        }
        if !self.opts.extra_args.iter().any(|a| a == "--e2b-listen") {
            cmd.args(["--e2b-listen", "127.0.0.1:0"]);
        }
        if !self.opts.extra_args.iter().any(|a| a == "--proxy-listen") {
            cmd.args(["--proxy-listen", "127.0.0.1:0"]);
        }
        cmd.args(&self.opts.extra_args);
        match self.opts.default_pool {
            Some(n) => {
                cmd.args(["--default-pool-size", &n.to_string()]);
            }
            None => {
                cmd.arg("--no-default-pool");
            }
        }
        let mut child = cmd.spawn().expect("spawning agentbox serve");
        let (tx, rx) = mpsc::channel();
        self.log_line(format!("--- started agentbox serve, pid {}", child.id()));
        drain(child.stdout.take().unwrap(), "out", self.logs.clone(), Some(tx));
        drain(child.stderr.take().unwrap(), "err", self.logs.clone(), None);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(POLL) {
                Ok(url) => {
                    self.url = url;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(st)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!("agentbox serve exited before listening ({st}); log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agentbox serve did not print its listening line within 60s; log:\n{}", self.log_text());
            }
        }
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT` of the E2B API of the current run (from its start-up line).
    pub fn e2b_url(&self) -> Option<String> {
        let logs = self.logs.lock().unwrap();
        logs.iter().rev().find_map(|l| l.strip_prefix("[out] agentbox e2b api on ").map(|u| u.trim().to_string()))
    }

    /// `http://127.0.0.1:PORT` of the data plane of the current run (from its start-up line).
    pub fn proxy_url(&self) -> Option<String> {
        let logs = self.logs.lock().unwrap();
        logs.iter().rev().find_map(|l| l.strip_prefix("[out] agentbox data plane on ").map(|u| u.trim().to_string()))
    }

    fn log_line(&self, l: String) {
        self.logs.lock().unwrap().push(l);
    }

    /// Everything the server printed so far (all runs).
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `kill -9` the server (its containers keep running: they are not its process group).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
            self.log_line("--- killed with SIGKILL".into());
        }
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match c.try_wait() {
                    Ok(Some(st)) => {
                        self.log_line(format!("--- stopped: {st}"));
                        return;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        self.log_line("--- did not stop within 30s of SIGTERM; killed".into());
                        return;
                    }
                }
            }
        }
    }

    /// Stop (if running) and start again on the same data dir, subnet and bridge.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    // ---------------------------------------------------------------- HTTP

    fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Resp {
        let r = rb.send().unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", self.log_tail(200)));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, body, text }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send(self.http.get(format!("{}{path}", self.url)))
    }
    pub fn delete(&self, path: &str) -> Resp {
        self.send(self.http.delete(format!("{}{path}", self.url)))
    }
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(self.http.post(format!("{}{path}", self.url)).json(body))
    }
    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(self.http.put(format!("{}{path}", self.url)).json(body))
    }
    /// POST raw bytes with a content type (for malformed bodies).
    pub fn post_raw(&self, path: &str, content_type: &str, body: &'static str) -> Resp {
        self.send(self.http.post(format!("{}{path}", self.url)).header("content-type", content_type).body(body))
    }

    pub fn log_tail(&self, n: usize) -> String {
        let l = self.logs.lock().unwrap();
        l[l.len().saturating_sub(n)..].join("\n")
    }

    // ---------------------------------------------------------------- domain helpers

    /// Poll `f` every 50 ms until it returns `Some`, or panic after `timeout` with `what` and the log.
    #[track_caller]
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}; server log tail:\n{}", self.log_tail(150));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The pool (`GET /v1/sandboxpools/NAME` → `.pool`).
    pub fn pool(&self, name: &str) -> Value {
        self.get(&format!("/v1/sandboxpools/{name}")).expect(200)["pool"].clone()
    }

    /// Wait until the pool has at least `n` idle slots; returns the pool.
    #[track_caller]
    pub fn wait_pool_idle(&self, name: &str, n: u64) -> Value {
        let mut last = Value::Null;
        let r = self.wait_for_opt(WARMUP, || {
            let p = self.pool(name);
            let ok = p["status"]["idle"].as_u64().unwrap_or(0) >= n;
            last = p["status"].clone();
            ok.then_some(p)
        });
        r.unwrap_or_else(|| {
            panic!(
                "pool {name} did not reach {n} idle slots in {WARMUP:?}; last status {last}; log tail:\n{}",
                self.log_tail(150)
            )
        })
    }

    fn wait_for_opt<T>(&self, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Create a pool (201) and return it.
    #[track_caller]
    pub fn create_pool(&self, body: &Value) -> Value {
        self.post("/v1/sandboxpools", body).expect(201)["pool"].clone()
    }

    /// Delete a pool and wait until `GET` answers 404.
    #[track_caller]
    pub fn delete_pool_and_wait(&self, name: &str) {
        let r = self.delete(&format!("/v1/sandboxpools/{name}"));
        assert!(r.status == 202 || r.status == 404, "delete pool {name}: {} {}", r.status, r.text);
        self.wait_for(&format!("pool {name} to be gone"), WARMUP, || {
            (self.get(&format!("/v1/sandboxpools/{name}")).status == 404).then_some(())
        });
    }

    /// Claim a sandbox (201) and return it.
    #[track_caller]
    pub fn claim(&self, body: &Value) -> Value {
        self.post("/v1/sandboxes", body).expect(201)["sandbox"].clone()
    }

    /// Exec with a full request body (200) and return the result.
    #[track_caller]
    pub fn exec(&self, id: &str, body: &Value) -> Value {
        self.post(&format!("/v1/sandboxes/{id}/exec"), body).expect(200)
    }

    /// Run a shell command; returns (exit code, stdout, stderr).
    #[track_caller]
    pub fn sh(&self, id: &str, cmd: &str) -> (i64, String, String) {
        let r = self.exec(id, &json!({ "command": cmd }));
        (
            r["exitCode"].as_i64().expect("exitCode"),
            r["stdout"].as_str().unwrap_or_default().to_string(),
            r["stderr"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Run a shell command that must succeed; returns its stdout.
    #[track_caller]
    pub fn sh_ok(&self, id: &str, cmd: &str) -> String {
        let (code, out, err) = self.sh(id, cmd);
        assert_eq!(code, 0, "`{cmd}` failed: stdout {out:?} stderr {err:?}");
        out
    }

    pub fn sandbox(&self, id: &str) -> Value {
        self.get(&format!("/v1/sandboxes/{id}")).expect(200)["sandbox"].clone()
    }

    /// Release and wait until the sandbox reaches a terminal status with `recycledAt`.
    #[track_caller]
    pub fn release_and_wait(&self, id: &str) -> Value {
        let r = self.delete(&format!("/v1/sandboxes/{id}")).expect(202);
        assert_eq!(r["status"], "Stopping", "delete answer: {r}");
        self.wait_for(&format!("sandbox {id} to be recycled"), WARMUP, || {
            let sb = self.sandbox(id);
            (sb["status"] != "Stopping" && sb["status"] != "Running" && sb.get("recycledAt").is_some()).then_some(sb)
        })
    }

    /// Run the CLI client against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(self.opts.admin_key.as_deref(), args)
    }

    /// Run the CLI client with `AGENTBOX_API_KEY` = `key` (none: no key).
    pub fn cli_as(&self, key: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args).env("AGENTBOX_ENDPOINT", &self.url).env_remove("AGENTBOX_API_KEY").stdin(Stdio::null());
        if let Some(k) = key {
            cmd.env("AGENTBOX_API_KEY", k);
        }
        cmd.output().expect("running the agentbox CLI")
    }

    /// A request with `key` in AGENTBOX-API-KEY instead of the admin key.
    pub fn call_as(&self, key: &str, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let mut rb = self
            .http
            .request(method.parse().expect("method"), format!("{}{path}", self.url))
            .header("AGENTBOX-API-KEY", key);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        self.send(rb)
    }

    // ---------------------------------------------------------------- cleanup

    fn delete_all_pools(&self) -> Result<(), String> {
        let list = self.get("/v1/sandboxpools");
        if list.status != 200 {
            return Err(format!("list pools: {} {}", list.status, list.text));
        }
        let names: Vec<String> = list.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        for n in &names {
            let _ = self.delete(&format!("/v1/sandboxpools/{n}"));
        }
        let gone = self.wait_for_opt(WARMUP, || {
            let l = self.get("/v1/sandboxpools");
            (l.status == 200 && l.body["items"].as_array().is_some_and(|a| a.is_empty())).then_some(())
        });
        gone.ok_or_else(|| format!("pools {names:?} still there after {WARMUP:?}"))
    }

    fn cleanup(&mut self) {
        // Pools are deleted through the API so that the server destroys the slots (containers,
        // cgroups, veths, netns). A server killed by the test is started again for that.
        if !self.is_running() {
            self.child = None;
            let data_ok = self.data.as_ref().is_some_and(|d| d.path().join("agentbox.db").exists());
            if data_ok && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn())).is_err() {
                eprintln!("cleanup: could not restart the server to delete its pools");
            }
        }
        if self.is_running()
            && let Err(e) = self.delete_all_pools()
        {
            eprintln!("cleanup: {e}");
        }
        self.stop();
        if let Some(d) = &self.data {
            let left = remove_leftovers(d.path(), &self.opts);
            if !left.is_empty() {
                eprintln!("cleanup: the server left these behind (removed now): {left:?}");
            }
        }
        remove_host_network(&self.opts);
        if let Some(d) = self.data.take() {
            let path = d.path().to_path_buf();
            for mp in mounts_under(&path) {
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            }
            if mounts_under(&path).is_empty() {
                let _ = d.close();
            } else {
                // Never recurse into a live mount: leave the directory for a human.
                eprintln!("cleanup: mounts remain under {}; not removing it", path.display());
                let _ = d.keep();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.cleanup();
        if panicking {
            eprintln!(
                "===== agentbox serve log (last 300 lines) =====\n{}\n===== end of log =====",
                self.log_tail(300)
            );
        }
    }
}

/// Remove the bridge and the NAT/forward rules `agentbox serve` set up for `opts`.
pub fn remove_host_network(opts: &Opts) {
    let sub = opts.subnet();
    let br = opts.bridge();
    let rules: [(&str, &str, Vec<&str>); 3] = [
        ("nat", "POSTROUTING", vec!["-s", &sub, "!", "-o", &br, "-j", "MASQUERADE"]),
        ("filter", "FORWARD", vec!["-i", &br, "-j", "ACCEPT"]),
        ("filter", "FORWARD", vec!["-o", &br, "-j", "ACCEPT"]),
    ];
    for (table, chain, rule) in rules {
        for _ in 0..10 {
            let ok = Command::new("iptables")
                .args(["-w", "-t", table, "-D", chain])
                .args(&rule)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
    if Path::new("/sys/class/net").join(&br).exists() {
        let _ = Command::new("ip").args(["link", "del", &br]).status();
    }
}

/// Last-resort cleanup after the server is gone: kill the processes left in the cgroups of the
/// slots recorded in `data_dir` (they were started by this test's server), remove those cgroup
/// directories and the host veths of the test's subnet. Returns what it found.
pub fn remove_leftovers(data_dir: &Path, opts: &Opts) -> Vec<String> {
    let mut found = vec![];
    let slots: Vec<String> = std::fs::read_dir(data_dir.join("local/slots"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in rd.flatten() {
            for slot in &slots {
                let d = h.path().join("agentbox").join(slot);
                if d.is_dir() {
                    collect_dirs(&d, &mut dirs);
                }
            }
        }
    }
    let pids: BTreeSet<i32> = dirs
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    for pid in pids {
        found.push(format!("process {pid}"));
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if !dirs.is_empty() {
        std::thread::sleep(Duration::from_millis(300));
    }
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in &dirs {
        found.push(format!("cgroup {}", d.display()));
        let _ = std::fs::remove_dir(d);
    }
    let prefix = opts.veth_prefix();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&prefix) {
                found.push(format!("veth {n}"));
                let _ = Command::new("ip").args(["link", "del", &n]).status();
            }
        }
    }
    found
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(mp.replace("\\040", " ")))
        .filter(|mp| mp.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// What of a server's slots is on the host: used to prove "no leaks".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFootprint {
    /// Mount points under the data dir.
    pub mounts: BTreeSet<String>,
    /// `<hierarchy>/agentbox/<slot>` directories of slots whose id starts with the pool prefix.
    pub cgroups: BTreeSet<String>,
    /// Host veth names of the server's subnet.
    pub veths: BTreeSet<String>,
    /// PIDs of processes in those slot cgroups (memory hierarchy).
    pub pids: BTreeSet<u32>,
}

impl HostFootprint {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.cgroups.is_empty() && self.veths.is_empty() && self.pids.is_empty()
    }
}

/// Snapshot the host footprint of the slots of pool `pool` run by the server on `data_dir`/`opts`.
pub fn footprint(data_dir: &Path, opts: &Opts, pool: &str) -> HostFootprint {
    let slot_prefix = format!("{pool}-");
    let mounts = mounts_under(data_dir).into_iter().map(|p| p.display().to_string()).collect();
    let mut cgroups = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in rd.flatten() {
            let dir = h.path().join("agentbox");
            let Ok(slots) = std::fs::read_dir(&dir) else { continue };
            for s in slots.flatten() {
                let name = s.file_name().to_string_lossy().to_string();
                if s.path().is_dir() && name.starts_with(&slot_prefix) {
                    cgroups.insert(s.path().display().to_string());
                }
            }
        }
    }
    let veth_prefix = opts.veth_prefix();
    let veths = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&veth_prefix))
                .collect()
        })
        .unwrap_or_default();
    let mut pids = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(cg) = std::fs::read_to_string(e.path().join("cgroup")) else { continue };
            let inside = cg.lines().any(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
                ctrl.split(',').any(|c| c == "memory") && path.starts_with(&format!("/agentbox/{slot_prefix}"))
            });
            if inside {
                pids.insert(pid);
            }
        }
    }
    HostFootprint { mounts, cgroups, veths, pids }
}

/// A sandbox body claiming from `pool`.
pub fn claim_body(pool: &str) -> Value {
    json!({ "poolName": pool })
}

/// An inline sandbox definition: idle image `pause`, one container `main` running `host`.
pub fn host_template() -> Value {
    json!({
        "idleImage": "pause",
        "containers": [{ "name": "main", "image": "host", "command": ["sleep", "infinity"] }]
    })
}

/// The Python of the test virtualenv (scripts/install-deps.sh) when it can import every module in
/// `modules`; `None` (with a visible `SKIP:` line) otherwise. In CI a missing module is a failure.
pub fn sdk_python(test: &str, modules: &[&str]) -> Option<&'static str> {
    const PYTHON: &str = "/opt/agentbox-test-venv/bin/python";
    let import = format!("import {}", modules.join(", "));
    let ok = Path::new(PYTHON).exists()
        && Command::new(PYTHON).args(["-c", &import]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(PYTHON);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must provide {modules:?} in {PYTHON} (scripts/install-deps.sh)"
    );
    println!("SKIP: {test}: {PYTHON} cannot import {modules:?}; run scripts/install-deps.sh");
    None
}
