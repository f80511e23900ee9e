//! The backend conformance suite, written once and run against every [`Backend`]: the local
//! backend in CI (`crates/backend-local/tests/generic_conformance.rs`) and a real cluster when
//! `KUBECONFIG` is set (`crates/backend-k8s/tests/cluster_conformance.rs`).
//!
//! Every check asserts outcomes the [`Backend`] trait promises for *every* backend (states, ips,
//! images, error variants, idempotence); backend-specific behaviour (leaks on the host, exec
//! details, limits) stays in each backend's own tests. Each check prints one line, `ok <check>`
//! or `skip <check>: <reason>`; the first failing check prints `FAIL <check>: <what>` and ends the
//! run with an error after destroying every slot the suite created.
//!
//! Behind the cargo feature `conformance`; core itself performs no IO, the suite only calls the
//! backend it is given.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, ExecRequest, SlotObservation, SlotSpec};
use crate::model::{ContainerSpec, Resources, RuntimeClass};

/// Where and with what the suite runs.
#[derive(Debug, Clone)]
pub struct ConformanceEnv {
    /// Prefix of every slot id the suite creates (`<prefix>-a`, `<prefix>-b`, `<prefix>-bad`,
    /// `<prefix>-none`). Lowercase letters, digits and `-`, at most 30 characters, so the ids are
    /// valid on every backend (DNS labels on Kubernetes, 40 characters on the local backend). Make
    /// it unique per run when the backend is shared (a cluster).
    pub slot_prefix: String,
    /// Pool and namespace written into every [`SlotSpec`].
    pub pool: String,
    pub namespace: String,
    pub runtime: RuntimeClass,
    pub resources: Resources,
    /// The main container of an idle slot (e.g. image `pause` on the local backend,
    /// `registry.k8s.io/pause:3.9` on Kubernetes). Must keep running.
    pub idle: ContainerSpec,
    /// The main container after the switch (same `name` as `idle`; e.g. `host` with `sleep
    /// infinity` locally). Must keep running and have `echo` when exec is expected. On Kubernetes
    /// only the image changes in place: give both containers the same `command`/`args`, chosen so
    /// that both images keep running with them.
    pub workload: ContainerSpec,
    /// An image no registry serves, quickly (default `127.0.0.1:1/agentbox-conformance/missing:0`:
    /// connection refused).
    pub unpullable_image: String,
    /// Whether [`Backend::exec`] must work. When `false`, an `Unsupported` answer is recorded as a
    /// skip with the backend's message; when `true` it fails the suite.
    pub exec_expected: bool,
    /// Upper bound for every single backend call, and for waiting until a destroyed slot is gone.
    pub timeout: Duration,
}

impl ConformanceEnv {
    /// An environment with a main container `main` running `idle_image`, then `workload_image`
    /// (image defaults for command and args), pool `conformance` in namespace `default`, no limits,
    /// exec expected, 120 s per call.
    pub fn new(
        slot_prefix: impl Into<String>,
        idle_image: impl Into<String>,
        workload_image: impl Into<String>,
    ) -> Self {
        let main = |image: String| ContainerSpec { name: "main".into(), image, ..Default::default() };
        ConformanceEnv {
            slot_prefix: slot_prefix.into(),
            pool: "conformance".into(),
            namespace: "default".into(),
            runtime: RuntimeClass::default(),
            resources: Resources::default(),
            idle: main(idle_image.into()),
            workload: main(workload_image.into()),
            unpullable_image: "127.0.0.1:1/agentbox-conformance/missing:0".into(),
            exec_expected: true,
            timeout: Duration::from_secs(120),
        }
    }

    fn slot_spec(&self, slot_id: &str, main: &ContainerSpec) -> SlotSpec {
        SlotSpec {
            slot_id: slot_id.to_owned(),
            pool: self.pool.clone(),
            namespace: self.namespace.clone(),
            runtime: self.runtime,
            containers: vec![main.clone()],
            resources: self.resources,
            egress: false,
            registry_credentials: vec![],
        }
    }
}

/// How one check ended (a failed check ends the run with an error instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Not run, with the reason (e.g. the backend's `Unsupported` message).
    Skipped(String),
}

/// One check of the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// The checks of one successful run, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// [`Backend::name`] of the backend under test.
    pub backend: &'static str,
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// How many checks passed.
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.outcome == Outcome::Passed).count()
    }

    /// The skipped checks, with their reasons.
    pub fn skipped(&self) -> Vec<(&'static str, &str)> {
        self.checks
            .iter()
            .filter_map(|c| match &c.outcome {
                Outcome::Skipped(why) => Some((c.name, why.as_str())),
                Outcome::Passed => None,
            })
            .collect()
    }
}

/// Check names, in the order the suite runs them.
pub mod checks {
    pub const UNKNOWN_SLOT: &str = "inspect, switch and destroy of an unknown slot";
    pub const CREATE: &str = "create_slot runs the main container and gives the slot an ip";
    pub const INSPECT: &str = "inspect agrees with create_slot";
    pub const LIST: &str = "list_slots contains the slot";
    pub const SWITCH_WORKLOAD: &str = "switch to the workload image keeps the slot and its ip";
    pub const EXEC: &str = "exec echo in the workload container";
    pub const SWITCH_IDLE: &str = "switch back to the idle image";
    pub const SECOND_SLOT: &str = "a second slot created concurrently with the switch";
    pub const LIST_BOTH: &str = "list_slots contains both slots";
    pub const DESTROY: &str = "destroy_slot removes both slots";
    pub const DESTROY_AGAIN: &str = "destroy_slot of a destroyed slot is ok";
    pub const UNPULLABLE: &str = "create_slot with an unpullable image fails with BackendError::Image";
}

/// Run every check against `backend`. Prints a line per check; returns the report, or the first
/// failure as `<check>: <what happened>`. Every slot the suite created is destroyed before it
/// returns, on failure too (best effort, errors of that cleanup are printed).
pub async fn run(backend: &dyn Backend, env: &ConformanceEnv) -> Result<Report, String> {
    let mut rec = Recorder { report: Report { backend: backend.name(), checks: vec![] } };
    println!("conformance suite on the {} backend (slots {}-*)", backend.name(), env.slot_prefix);
    let result = suite(backend, env, &mut rec).await;
    if let Err(e) = &result {
        println!("FAIL {e}");
        for suffix in ["a", "b", "bad"] {
            let slot = format!("{}-{suffix}", env.slot_prefix);
            match tokio::time::timeout(env.timeout, backend.destroy_slot(&slot)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => println!("cleanup: cannot destroy slot {slot}: {e}"),
                Err(_) => println!("cleanup: destroying slot {slot} did not finish within {:?}", env.timeout),
            }
        }
    }
    result?;
    let report = rec.report;
    println!(
        "conformance suite on the {} backend: {} passed, {} skipped",
        report.backend,
        report.passed(),
        report.skipped().len()
    );
    Ok(report)
}

struct Recorder {
    report: Report,
}

impl Recorder {
    /// Await one check; print and record its outcome.
    async fn check<T>(&mut self, name: &'static str, f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
        match f.await {
            Ok(v) => {
                println!("ok {name}");
                self.report.checks.push(CheckResult { name, outcome: Outcome::Passed });
                Ok(v)
            }
            Err(e) => Err(format!("{name}: {e}")),
        }
    }

    fn skip(&mut self, name: &'static str, reason: String) {
        println!("skip {name}: {reason}");
        self.report.checks.push(CheckResult { name, outcome: Outcome::Skipped(reason) });
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// `fut`, or an error naming `what` when it takes longer than `timeout`.
async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(timeout, fut).await.map_err(|_| format!("{what} did not finish within {timeout:?}"))
}

/// `what` returned an error where success was expected.
fn call<T>(what: &str, r: Result<T, BackendError>) -> Result<T, String> {
    r.map_err(|e| format!("{what} failed: {e} ({e:?})"))
}

fn main_running(obs: &SlotObservation, what: &str) -> Result<(), String> {
    let main = obs.main().ok_or_else(|| format!("{what}: the observation has no containers: {obs:?}"))?;
    ensure!(main.state.is_running(), "{what}: the main container is not running: {obs:?}");
    Ok(())
}

fn valid_ip(obs: &SlotObservation, what: &str) -> Result<String, String> {
    let ip = obs.ip.clone().ok_or_else(|| format!("{what}: the slot has no ip: {obs:?}"))?;
    ensure!(ip.parse::<std::net::IpAddr>().is_ok(), "{what}: the slot ip {ip:?} is not an ip address");
    Ok(ip)
}

fn runs_image(obs: &SlotObservation, c: &ContainerSpec, what: &str) -> Result<(), String> {
    let images = obs.images();
    ensure!(
        images.get(&c.name) == Some(&c.image),
        "{what}: images() reports {images:?}, expected {} to run {}",
        c.name,
        c.image
    );
    Ok(())
}

/// Wait until `slot` is gone: `inspect` says `SlotNotFound` (or every container `Missing`) and
/// `list_slots` no longer lists it. A backend may take a moment (a Pod's grace period).
async fn wait_gone(backend: &dyn Backend, slot: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let inspected = within(timeout, "inspect", backend.inspect(slot)).await?;
        let inspect_gone = match &inspected {
            Err(BackendError::SlotNotFound(s)) => {
                ensure!(s == slot, "inspect({slot}) said SlotNotFound({s})");
                true
            }
            Ok(obs) => obs.containers.iter().all(|c| c.state == crate::backend::ContainerState::Missing),
            Err(e) => return Err(format!("inspect({slot}) failed: {e} ({e:?}); expected SlotNotFound")),
        };
        let listed = call("list_slots", within(timeout, "list_slots", backend.list_slots()).await?)?;
        let list_gone = !listed.iter().any(|s| s.slot_id == slot);
        if inspect_gone && list_gone {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "slot {slot} still there after {timeout:?}: inspect gives {inspected:?}, listed: {}",
            !list_gone
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn suite(backend: &dyn Backend, env: &ConformanceEnv, rec: &mut Recorder) -> Result<(), String> {
    let t = env.timeout;
    let slot_a = format!("{}-a", env.slot_prefix);
    let slot_b = format!("{}-b", env.slot_prefix);
    let bad = format!("{}-bad", env.slot_prefix);
    let none = format!("{}-none", env.slot_prefix);
    ensure!(
        env.idle.name == env.workload.name,
        "the idle and workload containers must have the same name (got {} and {})",
        env.idle.name,
        env.workload.name
    );

    rec.check(checks::UNKNOWN_SLOT, async {
        match within(t, "inspect", backend.inspect(&none)).await? {
            Err(BackendError::SlotNotFound(_)) => {}
            other => return Err(format!("inspect of unknown slot {none}: expected SlotNotFound, got {other:?}")),
        }
        match within(t, "switch", backend.switch(&none, std::slice::from_ref(&env.workload), &[])).await? {
            Err(BackendError::SlotNotFound(_)) => {}
            other => return Err(format!("switch of unknown slot {none}: expected SlotNotFound, got {other:?}")),
        }
        call("destroy_slot of an unknown slot", within(t, "destroy_slot", backend.destroy_slot(&none)).await?)
    })
    .await?;

    let created = rec
        .check(checks::CREATE, async {
            let obs = call(
                "create_slot",
                within(t, "create_slot", backend.create_slot(&env.slot_spec(&slot_a, &env.idle))).await?,
            )?;
            ensure!(obs.slot_id == slot_a, "create_slot observed slot {:?}, expected {slot_a}", obs.slot_id);
            main_running(&obs, "create_slot")?;
            runs_image(&obs, &env.idle, "create_slot")?;
            valid_ip(&obs, "create_slot")?;
            Ok(obs)
        })
        .await?;
    let ip_a = created.ip.clone().unwrap_or_default();

    rec.check(checks::INSPECT, async {
        let obs = call("inspect", within(t, "inspect", backend.inspect(&slot_a)).await?)?;
        ensure!(
            obs.slot_id == slot_a && obs.pool == env.pool,
            "inspect observed {obs:?}, expected slot {slot_a} of pool {}",
            env.pool
        );
        main_running(&obs, "inspect")?;
        ensure!(obs.ip == created.ip, "inspect gives ip {:?}, create_slot gave {:?}", obs.ip, created.ip);
        let ids = |o: &SlotObservation| o.containers.iter().map(|c| c.container_id.clone()).collect::<Vec<_>>();
        ensure!(
            ids(&obs) == ids(&created),
            "container ids differ: inspect {:?}, create_slot {:?}",
            ids(&obs),
            ids(&created)
        );
        runs_image(&obs, &env.idle, "inspect")
    })
    .await?;

    rec.check(checks::LIST, async {
        let all = call("list_slots", within(t, "list_slots", backend.list_slots()).await?)?;
        let found = all.iter().find(|s| s.slot_id == slot_a).ok_or_else(|| format!("slot {slot_a} not listed"))?;
        main_running(found, "list_slots")
    })
    .await?;

    rec.check(checks::SWITCH_WORKLOAD, async {
        let obs = call(
            "switch",
            within(t, "switch", backend.switch(&slot_a, std::slice::from_ref(&env.workload), &[])).await?,
        )?;
        main_running(&obs, "switch")?;
        runs_image(&obs, &env.workload, "switch")?;
        ensure!(obs.ip.as_deref() == Some(ip_a.as_str()), "switch changed the slot ip from {ip_a} to {:?}", obs.ip);
        let (before, after) = (&created.containers[0].container_id, &obs.containers[0].container_id);
        ensure!(before != after, "the main container id {before} did not change across the switch");
        let again = call("inspect", within(t, "inspect", backend.inspect(&slot_a)).await?)?;
        main_running(&again, "inspect after switch")?;
        runs_image(&again, &env.workload, "inspect after switch")
    })
    .await?;

    let exec_req = ExecRequest {
        container: None,
        argv: vec!["echo".into(), "agentbox-conformance".into()],
        env: Default::default(),
        cwd: None,
        user: None,
        stdin: None,
        timeout: Duration::from_secs(30),
    };
    match within(t, "exec", backend.exec(&slot_a, &exec_req)).await? {
        Err(BackendError::Unsupported(why)) if !env.exec_expected => rec.skip(checks::EXEC, why),
        first => {
            rec.check(checks::EXEC, async {
                let out = call("exec", first)?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                ensure!(
                    out.exit_code == 0 && stdout == "agentbox-conformance\n" && !out.timed_out,
                    "exec echo: exit {}, stdout {stdout:?}, stderr {:?}, timed out {}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr),
                    out.timed_out
                );
                match within(t, "exec", backend.exec(&none, &exec_req)).await? {
                    Err(BackendError::SlotNotFound(_)) => Ok(()),
                    other => Err(format!("exec in unknown slot {none}: expected SlotNotFound, got {other:?}")),
                }
            })
            .await?
        }
    }

    // The second slot is created while the first one switches back: calls for different slots
    // may run concurrently.
    let spec_b = env.slot_spec(&slot_b, &env.idle);
    let (back, second) = tokio::join!(
        within(t, "switch", backend.switch(&slot_a, std::slice::from_ref(&env.idle), &[])),
        within(t, "create_slot", backend.create_slot(&spec_b)),
    );
    rec.check(checks::SWITCH_IDLE, async {
        let obs = call("switch back to idle", back?)?;
        main_running(&obs, "switch back")?;
        runs_image(&obs, &env.idle, "switch back")?;
        ensure!(
            obs.ip.as_deref() == Some(ip_a.as_str()),
            "switch back changed the slot ip from {ip_a} to {:?}",
            obs.ip
        );
        Ok(())
    })
    .await?;
    rec.check(checks::SECOND_SLOT, async {
        let obs = call("create_slot of the second slot", second?)?;
        ensure!(obs.slot_id == slot_b, "create_slot observed slot {:?}, expected {slot_b}", obs.slot_id);
        main_running(&obs, "create_slot of the second slot")?;
        let ip_b = valid_ip(&obs, "create_slot of the second slot")?;
        ensure!(ip_b != ip_a, "both slots have ip {ip_a}");
        Ok(())
    })
    .await?;

    rec.check(checks::LIST_BOTH, async {
        let all = call("list_slots", within(t, "list_slots", backend.list_slots()).await?)?;
        for s in [&slot_a, &slot_b] {
            let found = all.iter().find(|o| &o.slot_id == s).ok_or_else(|| format!("slot {s} not listed"))?;
            main_running(found, "list_slots")?;
        }
        Ok(())
    })
    .await?;

    rec.check(checks::DESTROY, async {
        let (da, db) = tokio::join!(
            within(t, "destroy_slot", backend.destroy_slot(&slot_a)),
            within(t, "destroy_slot", backend.destroy_slot(&slot_b)),
        );
        call("destroy_slot", da?)?;
        call("destroy_slot", db?)?;
        wait_gone(backend, &slot_a, t).await?;
        wait_gone(backend, &slot_b, t).await
    })
    .await?;

    rec.check(checks::DESTROY_AGAIN, async {
        for s in [&slot_a, &slot_b] {
            call("second destroy_slot", within(t, "destroy_slot", backend.destroy_slot(s)).await?)?;
        }
        Ok(())
    })
    .await?;

    rec.check(checks::UNPULLABLE, async {
        let mut c = env.idle.clone();
        c.image = env.unpullable_image.clone();
        match within(t, "create_slot", backend.create_slot(&env.slot_spec(&bad, &c))).await? {
            Err(BackendError::Image { image, message }) => {
                ensure!(
                    image == env.unpullable_image,
                    "the error names image {image:?}, expected {:?}",
                    env.unpullable_image
                );
                ensure!(!message.is_empty(), "the image error has no message");
            }
            other => return Err(format!("expected BackendError::Image, got {other:?}")),
        }
        // "On error nothing is left behind."
        wait_gone(backend, &bad, t).await
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ExecOutput, LogLine};
    use crate::fake_backend::FakeBackend;
    use crate::model::RegistryCredential;

    /// The fake backend with a real `echo`, or without exec, or with a destroy that keeps the slot.
    struct Probe {
        inner: FakeBackend,
        exec: bool,
        destroy_keeps_slot: bool,
    }

    impl Probe {
        fn new(exec: bool, destroy_keeps_slot: bool) -> Self {
            Probe { inner: FakeBackend::default(), exec, destroy_keeps_slot }
        }
    }

    #[async_trait::async_trait]
    impl Backend for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        async fn prepare_image(&self, image: &str, c: &[RegistryCredential]) -> Result<(), BackendError> {
            self.inner.prepare_image(image, c).await
        }
        async fn create_slot(&self, spec: &SlotSpec) -> Result<SlotObservation, BackendError> {
            self.inner.create_slot(spec).await
        }
        async fn switch(
            &self,
            slot_id: &str,
            containers: &[ContainerSpec],
            c: &[RegistryCredential],
        ) -> Result<SlotObservation, BackendError> {
            self.inner.switch(slot_id, containers, c).await
        }
        async fn exec(&self, slot_id: &str, req: &ExecRequest) -> Result<ExecOutput, BackendError> {
            if !self.exec {
                return Err(BackendError::Unsupported("probe has no exec".into()));
            }
            let mut out = self.inner.exec(slot_id, req).await?;
            if req.argv[0] == "echo" {
                out.stdout = format!("{}\n", req.argv[1..].join(" ")).into_bytes();
            }
            Ok(out)
        }
        async fn inspect(&self, slot_id: &str) -> Result<SlotObservation, BackendError> {
            self.inner.inspect(slot_id).await
        }
        async fn list_slots(&self) -> Result<Vec<SlotObservation>, BackendError> {
            self.inner.list_slots().await
        }
        async fn destroy_slot(&self, slot_id: &str) -> Result<(), BackendError> {
            if self.destroy_keeps_slot {
                return Ok(());
            }
            self.inner.destroy_slot(slot_id).await
        }
        async fn logs(&self, slot_id: &str, c: Option<&str>, lines: usize) -> Result<Vec<LogLine>, BackendError> {
            self.inner.logs(slot_id, c, lines).await
        }
    }

    fn env() -> ConformanceEnv {
        let mut env = ConformanceEnv::new("t1", "idle", "work");
        env.unpullable_image = "broken/missing".into(); // the fake fails pulls of `broken*`
        env.timeout = Duration::from_millis(600);
        env
    }

    #[tokio::test]
    async fn a_conforming_backend_passes_every_check() {
        let b = Probe::new(true, false);
        let report = run(&b, &env()).await.expect("the suite passes");
        assert_eq!(report.backend, "probe");
        assert_eq!(report.passed(), 12);
        assert!(report.skipped().is_empty());
        assert!(b.inner.list_slots().await.unwrap().is_empty(), "slots left behind");
        let calls = b.inner.calls.lock().clone();
        assert!(calls.contains(&"exec t1-a echo agentbox-conformance".to_string()), "{calls:?}");
        assert!(calls.contains(&"create t1-b".to_string()) && calls.contains(&"create t1-bad".to_string()));
    }

    #[tokio::test]
    async fn unsupported_exec_is_a_skip_only_when_not_expected() {
        let b = Probe::new(false, false);
        let mut env = env();
        env.exec_expected = false;
        let report = run(&b, &env).await.expect("the suite passes");
        assert_eq!(report.skipped(), vec![(checks::EXEC, "probe has no exec")]);
        assert_eq!(report.passed(), 11);

        env.exec_expected = true;
        let err = run(&Probe::new(false, false), &env).await.unwrap_err();
        assert!(err.starts_with(checks::EXEC) && err.contains("probe has no exec"), "{err}");
    }

    #[tokio::test]
    async fn wrong_exec_output_fails_the_exec_check() {
        // The plain fake answers `echo x` with `echo x\n`.
        let err = run(&FakeBackend::default(), &env()).await.unwrap_err();
        assert!(err.starts_with(checks::EXEC) && err.contains("stdout"), "{err}");
    }

    #[tokio::test]
    async fn a_slot_that_survives_destroy_fails_and_is_reported() {
        let b = Probe::new(true, true);
        let err = run(&b, &env()).await.unwrap_err();
        assert!(err.starts_with(checks::DESTROY) && err.contains("still there"), "{err}");
    }

    #[tokio::test]
    async fn a_failure_destroys_the_slots_the_suite_created() {
        let b = FakeBackend::default();
        assert!(run(&b, &env()).await.is_err());
        assert!(b.list_slots().await.unwrap().is_empty(), "slots left behind after a failure");
    }

    #[tokio::test]
    async fn a_create_that_does_not_fail_on_a_bad_image_is_caught() {
        let mut env = env();
        env.unpullable_image = "fine/image".into();
        let err = run(&Probe::new(true, false), &env).await.unwrap_err();
        assert!(err.starts_with(checks::UNPULLABLE) && err.contains("expected BackendError::Image"), "{err}");
    }
}
