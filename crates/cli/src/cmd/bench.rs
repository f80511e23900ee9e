//! `agentbox bench`: claim → Running latency (same image and with an in-place image switch) at
//! concurrency 1 and 32, exec round trip, time to first command, refill rate, sustained claims/s —
//! and, in the same run, the baseline a user would otherwise use: a cold `runc run` of the same
//! image and command. Results are printed as a Markdown table and written as JSON.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Claims measured at concurrency 1 (same image, and again with a switch).
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    /// Claims measured at concurrency 32.
    #[arg(long, default_value_t = 1000)]
    pub concurrent_claims: usize,
    /// Concurrent clients for the concurrent run.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Warm slots of the benchmark pools.
    #[arg(long, default_value_t = 48)]
    pub pool_size: u32,
    /// Slots created for the refill measurement.
    #[arg(long, default_value_t = 100)]
    pub refill_slots: u32,
    /// Cold `runc run` iterations for the baseline (0 = skip).
    #[arg(long, default_value_t = 30)]
    pub baseline_iterations: usize,
    /// Image the sandboxes run (and the baseline runs).
    #[arg(long, default_value = "host")]
    pub image: String,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub c: ClientArgs,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let q = |p: f64| if n == 0 { f64::NAN } else { v[(((n - 1) as f64) * p).round() as usize] };
    let r = |x: f64| (x * 100.0).round() / 100.0;
    Stats {
        n,
        p50_ms: r(q(0.5)),
        p90_ms: r(q(0.9)),
        p99_ms: r(q(0.99)),
        min_ms: r(v.first().copied().unwrap_or(f64::NAN)),
        max_ms: r(v.last().copied().unwrap_or(f64::NAN)),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn wait_pool(client: &Client, name: &str, idle: u64, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let v: Value = client.get(&format!("/v1/sandboxpools/{name}")).await?;
        let s = &v["pool"]["status"];
        if s["idle"].as_u64() == Some(idle) && s["creating"].as_u64() == Some(0) {
            return Ok(start.elapsed());
        }
        if let Some(d) = s["diagnostics"].as_array().and_then(|d| d.first()) {
            bail!("pool {name} has failed slots: {d}");
        }
        if start.elapsed() > limit {
            bail!("pool {name} did not reach {idle} idle slots within {limit:?}: {s}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn make_pool(client: &Client, name: &str, image: &str, replicas: u32, policy: &str) -> Result<()> {
    let _ = client.delete::<Value>(&format!("/v1/sandboxpools/{name}")).await;
    for _ in 0..600 {
        if client.get::<Value>(&format!("/v1/sandboxpools/{name}")).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = json!({
        "name": name,
        "template": {
            "idleImage": "pause",
            "containers": [{"name": "main", "image": image, "command": ["sleep", "infinity"]}]
        },
        "replicas": replicas,
        "podCreationImagePolicy": policy,
    });
    client.post::<_, Value>("/v1/sandboxpools", &body).await.with_context(|| format!("creating pool {name}"))?;
    wait_pool(client, name, replicas as u64, Duration::from_secs(300)).await?;
    Ok(())
}

/// One claim; returns (latency, sandbox id).
async fn claim(client: &Client, pool: &str, image: Option<&str>) -> Result<(Duration, String)> {
    let mut body = json!({"poolName": pool, "startupTimeout": "60s"});
    if let Some(i) = image {
        body["image"] = json!(i);
    }
    let t = Instant::now();
    let v: Value = client.post("/v1/sandboxes", &body).await?;
    let d = t.elapsed();
    if v["sandbox"]["status"] != "Running" {
        bail!("claim answered a sandbox that is not Running: {v}");
    }
    Ok((d, v["sandbox"]["sandboxId"].as_str().unwrap_or_default().to_string()))
}

/// Delete every sandbox in `ids`, then wait until the pool is back to `idle` idle slots.
async fn release_all(client: &Client, pool: &str, ids: Vec<String>, idle: u64) -> Result<()> {
    for id in ids {
        client.delete::<Value>(&format!("/v1/sandboxes/{id}")).await?;
    }
    wait_pool(client, pool, idle, Duration::from_secs(120)).await?;
    Ok(())
}

/// Claim latency with idle slots available: rounds of up to `per_round` claims from `workers`
/// concurrent clients (no deletes during a round), then release everything and let the pool settle.
/// Returns the latencies and the claims/s over the rounds' wall time.
async fn claim_rounds(
    client: &Client,
    pool: &str,
    image: Option<&str>,
    total: usize,
    workers: usize,
    per_round: usize,
    idle: u64,
) -> Result<(Vec<f64>, f64)> {
    let mut all = vec![];
    let mut busy = Duration::ZERO;
    while all.len() < total {
        let quota = per_round.min(total - all.len());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = vec![];
        for _ in 0..workers.min(quota) {
            let (client, pool, next, image) =
                (client.clone(), pool.to_string(), Arc::clone(&next), image.map(str::to_string));
            tasks.push(tokio::spawn(async move {
                let mut out = vec![];
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < quota {
                    out.push(claim(&client, &pool, image.as_deref()).await?);
                }
                anyhow::Ok(out)
            }));
        }
        let mut ids = vec![];
        for t in tasks {
            for (d, id) in t.await?? {
                all.push(ms(d));
                ids.push(id);
            }
        }
        busy += start.elapsed();
        release_all(client, pool, ids, idle).await?;
    }
    Ok((all, total as f64 / busy.as_secs_f64()))
}

/// Claim + delete in a loop from `workers` clients: throughput when slots must be recycled.
async fn cycle_throughput(client: &Client, pool: &str, total: usize, workers: usize) -> Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..workers {
        let (client, pool, next) = (client.clone(), pool.to_string(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let (_, id) = claim(&client, &pool, None).await?;
                client.delete::<Value>(&format!("/v1/sandboxes/{id}")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// A runc bundle of the built-in `host` image: an empty rootfs with the host's /usr, /etc and
/// /lib* bind-mounted read-only — exactly what agentbox's `host` image gives a sandbox.
fn host_bundle(dir: &Path, args: &[&str]) -> Result<()> {
    let rootfs = dir.join("rootfs");
    for d in ["proc", "sys", "dev", "tmp", "usr", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}),
    ];
    for top in ["usr", "etc", "bin", "sbin", "lib", "lib32", "lib64"] {
        let host = Path::new("/").join(top);
        let Ok(meta) = std::fs::symlink_metadata(&host) else { continue };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host)?;
            let link = rootfs.join(top);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(target, link)?;
            }
        } else if meta.is_dir() {
            std::fs::create_dir_all(rootfs.join(top))?;
            mounts.push(
                json!({"destination": format!("/{top}"), "type": "bind", "source": host, "options": ["rbind", "ro"]}),
            );
        }
    }
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/",
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "baseline",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": "/agentbox-bench/baseline",
            "maskedPaths": ["/proc/kcore", "/proc/keys"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// Cold `runc run` of the host image running `echo hi`, with output captured like an exec would.
fn runc_baseline(n: usize) -> Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    host_bundle(dir.path(), &["sh", "-c", "echo hi"])?;
    let root = dir.path().join("runc-state");
    let mut out = vec![];
    for i in 0..n {
        let id = format!("agentbox-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let o = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(dir.path())
            .arg(&id)
            .stdin(Stdio::null())
            .output()
            .context("running runc (apt-get install runc)")?;
        out.push(ms(t.elapsed()));
        if !o.status.success() || String::from_utf8_lossy(&o.stdout).trim() != "hi" {
            bail!("runc run failed: {} {}", o.status, String::from_utf8_lossy(&o.stderr));
        }
    }
    let _ = std::fs::remove_dir("/sys/fs/cgroup/memory/agentbox-bench/baseline");
    Ok(out)
}

fn row(name: &str, s: &Stats, aim: &str) -> String {
    format!("| {name} | {} | {:.2} | {:.2} | {:.2} | {aim} |", s.n, s.p50_ms, s.p90_ms, s.p99_ms)
}

impl BenchArgs {
    pub async fn run(self) -> Result<ExitCode> {
        let client = Client::new(&self.c)?;
        client.get::<Value>("/ping").await?;
        let k = self.concurrency;
        eprintln!("bench: warming pools ({} slots each)...", self.pool_size);
        make_pool(&client, "bench-same", &self.image, self.pool_size, "PoolDefaultImage").await?;
        make_pool(&client, "bench-switch", &self.image, self.pool_size, "IdleImage").await?;

        let size = self.pool_size as u64;
        let per_round = (self.pool_size as usize).saturating_sub(2).max(1);
        eprintln!("bench: claim, same image, concurrency 1 ({} claims)", self.iterations);
        let _ = claim_rounds(&client, "bench-same", None, 10, 1, per_round, size).await?; // warm-up
        let (lat, _) = claim_rounds(&client, "bench-same", None, self.iterations, 1, per_round, size).await?;
        let same1 = stats(lat);
        eprintln!("bench: claim, same image, concurrency {k} ({} claims)", self.concurrent_claims);
        let (lat, claims_per_s) =
            claim_rounds(&client, "bench-same", None, self.concurrent_claims, k, per_round, size).await?;
        let same_k = stats(lat);

        eprintln!("bench: claim with image switch pause -> {}, concurrency 1", self.image);
        let n_switch = self.iterations.min(100);
        let (lat, _) = claim_rounds(&client, "bench-switch", None, n_switch, 1, per_round, size).await?;
        let switch1 = stats(lat);
        eprintln!("bench: claim with image switch, concurrency {k}");
        let (lat, _) =
            claim_rounds(&client, "bench-switch", None, (self.concurrent_claims / 4).max(k), k, per_round, size)
                .await?;
        let switch_k = stats(lat);

        eprintln!("bench: claim + release cycles, concurrency {k} (slots must be recycled)");
        let cycles_per_s = cycle_throughput(&client, "bench-same", self.concurrent_claims / 2, k).await?;
        wait_pool(&client, "bench-same", size, Duration::from_secs(120)).await?;

        eprintln!("bench: exec round trip");
        wait_pool(&client, "bench-same", size, Duration::from_secs(120)).await?;
        let (_, id) = claim(&client, "bench-same", None).await?;
        let exec_once = |cmd: Value| {
            let client = client.clone();
            let id = id.clone();
            async move {
                let t = Instant::now();
                let v: Value = client.post(&format!("/v1/sandboxes/{id}/exec"), &json!({"command": cmd})).await?;
                if v["exitCode"] != 0 {
                    bail!("exec failed: {v}");
                }
                anyhow::Ok(ms(t.elapsed()))
            }
        };
        let mut ex = vec![];
        for _ in 0..self.iterations {
            ex.push(exec_once(json!(["true"])).await?);
        }
        let exec = stats(ex);
        client.delete::<Value>(&format!("/v1/sandboxes/{id}")).await?;

        eprintln!("bench: time to first command (create + exec `sh -c 'echo hi'`, warm pool, no recycling in flight)");
        let mut ttfc = vec![];
        while ttfc.len() < self.baseline_iterations.max(30) {
            let mut ids = vec![];
            for _ in 0..per_round.min(self.baseline_iterations.max(30) - ttfc.len()) {
                let t = Instant::now();
                let (_, id) = claim(&client, "bench-same", None).await?;
                let v: Value = client
                    .post(&format!("/v1/sandboxes/{id}/exec"), &json!({"command": ["sh", "-c", "echo hi"]}))
                    .await?;
                ttfc.push(ms(t.elapsed()));
                if v["stdout"] != "hi\n" {
                    bail!("unexpected exec output {v}");
                }
                ids.push(id);
            }
            release_all(&client, "bench-same", ids, size).await?;
        }
        let ttfc = stats(ttfc);

        eprintln!("bench: refill ({} slots)", self.refill_slots);
        let _ = client.delete::<Value>("/v1/sandboxpools/bench-refill").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        make_pool(&client, "bench-refill", &self.image, self.refill_slots, "PoolDefaultImage").await?;
        let refill_secs = t.elapsed().as_secs_f64();
        let refill_rate = self.refill_slots as f64 / refill_secs;

        let baseline = if self.baseline_iterations > 0 {
            eprintln!("bench: baseline: cold `runc run` of the same image ({} runs)", self.baseline_iterations);
            let b = tokio::task::spawn_blocking({
                let n = self.baseline_iterations;
                move || runc_baseline(n)
            })
            .await??;
            Some(stats(b))
        } else {
            None
        };

        // Clean up and wait until every benchmark slot is destroyed.
        for p in ["bench-same", "bench-switch", "bench-refill"] {
            let _ = client.delete::<Value>(&format!("/v1/sandboxpools/{p}")).await;
        }
        for p in ["bench-same", "bench-switch", "bench-refill"] {
            for _ in 0..1200 {
                if client.get::<Value>(&format!("/v1/sandboxpools/{p}")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        let ratio = baseline.as_ref().map(|b| b.p50_ms / ttfc.p50_ms);
        let mut md = vec![
            "| measurement | n | p50 ms | p90 ms | p99 ms | aim |".to_string(),
            "|---|---|---|---|---|---|".to_string(),
            row("claim → Running, same image, 1 client", &same1, "p50 ≤ 2, p99 ≤ 10"),
            row(&format!("claim → Running, same image, {k} clients"), &same_k, "p50 ≤ 2, p99 ≤ 10"),
            row("claim → Running, image switch, 1 client", &switch1, "p50 ≤ 15"),
            row(&format!("claim → Running, image switch, {k} clients"), &switch_k, "p50 ≤ 15"),
            row("exec `true` round trip", &exec, "p50 ≤ 3 (SPEC) / ≤ 5 (issue)"),
            row("time to first command (create + exec)", &ttfc, "≥ 10× faster than cold runc"),
        ];
        if let Some(b) = &baseline {
            md.push(row("baseline: cold `runc run` (same image, same command)", b, "—"));
        }
        md.push(String::new());
        md.push(format!(
            "- claims/s at {k} clients with idle slots available: {claims_per_s:.0} (aim ≥ 1000); \
             claim + release cycles/s (bounded by recycling): {cycles_per_s:.0}"
        ));
        md.push(format!(
            "- refill: {} slots idle in {refill_secs:.2} s = {refill_rate:.1} slots/s (aim ≥ 50)",
            self.refill_slots
        ));
        if let Some(r) = ratio {
            md.push(format!("- time to first command vs cold runc run (p50): {r:.1}× faster (aim ≥ 10×)"));
        }
        println!("{}", md.join("\n"));
        let result = json!({
            "claimSameImage1": same1, "claimSameImageConcurrent": same_k, "concurrency": k,
            "claimSwitch1": switch1, "claimSwitchConcurrent": switch_k, "exec": exec,
            "timeToFirstCommand": ttfc, "runcBaseline": baseline, "ttfcSpeedupVsRunc": ratio,
            "claimsPerSecond": claims_per_s, "claimReleaseCyclesPerSecond": cycles_per_s, "refillSlotsPerSecond": refill_rate, "image": self.image,
        });
        if let Some(p) = &self.out {
            std::fs::write(p, serde_json::to_vec_pretty(&result)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
