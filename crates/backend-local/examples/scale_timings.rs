//! How slot operations scale with the number of slots on the host.
//!
//! Creates `SCALE_N` idle (pause) slots, then times `SCALE_ITERS` rounds of create_slot, switch,
//! exec of `true` (3 per round) and destroy_slot at that population, and prints the medians and
//! p90s. Needs root.
//!
//! ```text
//! SCALE_N=200 cargo run --release -p agentbox-backend-local --example scale_timings
//! ```
//!
//! Env: `SCALE_N` (default 10), `SCALE_ITERS` (default 15), `SCALE_RUNTIME` (`libcontainer` or
//! `runc`, default libcontainer), `SCALE_BRIDGE` (default `agbxperf`), `SCALE_SUBNET` (default
//! `10.240.0.0/16`), `SCALE_HOLD_SECS` (keep a `probe` slot running that long before measuring, for
//! strace/perf from outside). Every slot, the bridge and the NAT rules are removed at the end, also on error.
//! The binary is its own libcontainer helper (`<exe> __libcontainer-helper ...`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentbox_backend_local::{HELPER_ARG, LocalBackend, LocalBackendConfig, helper_main};
use agentbox_core::backend::{Backend, ExecRequest, SlotSpec};
use agentbox_core::model::{ContainerSpec, Resources, RuntimeClass};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn spec(id: &str, rt: RuntimeClass, image: &str, command: &[&str]) -> SlotSpec {
    SlotSpec {
        slot_id: id.into(),
        pool: "scale".into(),
        namespace: "default".into(),
        runtime: rt,
        containers: vec![container(image, command)],
        resources: Resources { cpu_millis: Some(1000), memory_bytes: Some(64 << 20), pids: Some(64) },
        egress: true,
        registry_credentials: vec![],
    }
}

fn container(image: &str, command: &[&str]) -> ContainerSpec {
    ContainerSpec {
        name: "main".into(),
        image: image.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn exec_true() -> ExecRequest {
    ExecRequest {
        container: None,
        argv: vec!["true".into()],
        env: BTreeMap::new(),
        cwd: None,
        user: None,
        stdin: None,
        timeout: Duration::from_secs(20),
    }
}

/// (median, p90) in ms.
fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)])
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn mountinfo_lines() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").map(|s| s.lines().count()).unwrap_or(0)
}

async fn measure(b: &LocalBackend, rt: RuntimeClass, n: usize, iters: usize) -> anyhow::Result<()> {
    // Slot ids name cgroups, which are host-global: unique per run.
    let tag = format!("sc{}", std::process::id());
    let t = Instant::now();
    for i in 0..n {
        b.create_slot(&spec(&format!("{tag}bg{i}"), rt, "pause", &[])).await?;
    }
    println!(
        "populated {n} slots in {:.1} s; host mountinfo has {} lines",
        t.elapsed().as_secs_f64(),
        mountinfo_lines()
    );
    if let Ok(secs) = env_or("SCALE_HOLD_SECS", "").parse::<u64>() {
        // Keep one running slot for outside inspection (strace/perf of a helper exec).
        let obs = b.create_slot(&spec(&format!("{tag}probe"), rt, "host", &["sleep", "infinity"])).await?;
        println!("HOLD container {} for {secs} s", obs.containers[0].container_id);
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let (mut c, mut sw, mut ex, mut d) = (vec![], vec![], vec![], vec![]);
    for i in 0..iters {
        let s = format!("{tag}m{i}");
        let t = Instant::now();
        b.create_slot(&spec(&s, rt, "pause", &[])).await?;
        c.push(ms(t));
        let t = Instant::now();
        b.switch(&s, &[container("host", &["sleep", "infinity"])], &[]).await?;
        sw.push(ms(t));
        for _ in 0..3 {
            let t = Instant::now();
            let o = b.exec(&s, &exec_true()).await?;
            anyhow::ensure!(o.exit_code == 0, "exec true failed: {o:?}");
            ex.push(ms(t));
        }
        let t = Instant::now();
        b.destroy_slot(&s).await?;
        d.push(ms(t));
    }
    let f = |(m, p): (f64, f64)| format!("{m:.1} ms (p90 {p:.1})");
    println!(
        "SCALE runtime={} slots={n} iters={iters}: create_slot {}, switch {}, exec {}, destroy {}",
        rt.as_str(),
        f(stats(&mut c)),
        f(stats(&mut sw)),
        f(stats(&mut ex)),
        f(stats(&mut d))
    );
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let n: usize = env_or("SCALE_N", "10").parse()?;
    let iters: usize = env_or("SCALE_ITERS", "15").parse()?;
    let rt = match env_or("SCALE_RUNTIME", "libcontainer").as_str() {
        "runc" => RuntimeClass::Runc,
        _ => RuntimeClass::Libcontainer,
    };
    let state = tempfile::tempdir()?;
    let images = tempfile::tempdir()?;
    let mut cfg = LocalBackendConfig::new(state.path(), agentbox_images::ImageStore::open(images.path())?);
    cfg.bridge_name = env_or("SCALE_BRIDGE", "agbxperf");
    cfg.subnet = env_or("SCALE_SUBNET", "10.240.0.0/16");
    cfg.libcontainer_helper = Some(std::env::current_exe()?);
    println!("host mountinfo has {} lines before; state dir {}", mountinfo_lines(), state.path().display());
    let b = LocalBackend::new(cfg).await?;
    let res = measure(&b, rt, n, iters).await;
    for s in b.list_slots().await? {
        if let Err(e) = b.destroy_slot(&s.slot_id).await {
            eprintln!("destroy {}: {e}", s.slot_id);
        }
    }
    b.remove_host_network().await?;
    res
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(HELPER_ARG) {
        std::process::exit(helper_main(&args[1..]));
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP: needs root (creates namespaces, cgroups, mounts, veths)");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?.block_on(run())
}
