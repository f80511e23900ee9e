//! `agentbox serve`: the embedded default (SQLite store + local container backend in a data dir),
//! zero configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agentbox_core::model::{ContainerSpec, PodCreationImagePolicy, SandboxSpec, TemplateSpec};
use agentbox_server::auth::AuthInfo;
use agentbox_server::authn::{AuthConfig, RateLimit};
use agentbox_server::e2b::E2bConfig;
use agentbox_server::engine::{CreatePoolRequest, CreateTemplateRequest, Engine, EngineConfig};
use agentbox_server::http::{AppState, router};
use agentbox_server::keys::ServerKey;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    Kubernetes,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Native API address.
    #[arg(long, env = "AGENTBOX_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// E2B-compatible control API address.
    #[arg(long, env = "AGENTBOX_E2B_LISTEN", default_value = "127.0.0.1:8090")]
    pub e2b_listen: SocketAddr,
    /// The `domain` the E2B API returns for sandboxes (default: the data plane's `--proxy-listen`
    /// host:port).
    #[arg(long, env = "AGENTBOX_E2B_DOMAIN")]
    pub e2b_domain: Option<String>,
    /// Data-plane proxy address: `/sandboxes/{id}/{port}/…`, `{port}-{id}.{domain}` hosts and
    /// `E2b-Sandbox-Id`/`-Port` headers reach ports inside sandboxes (not authenticated: see
    /// `agentbox_server::proxy`).
    #[arg(long, env = "AGENTBOX_PROXY_LISTEN", default_value = "127.0.0.1:8092")]
    pub proxy_listen: SocketAddr,
    /// Where the store, images and slot state live (default /var/lib/agentbox).
    #[arg(long, env = "AGENTBOX_DATA_DIR", default_value = "/var/lib/agentbox")]
    pub data_dir: PathBuf,
    #[arg(long, env = "AGENTBOX_BACKEND", value_enum, default_value = "local")]
    pub backend: BackendKind,
    /// Static admin API key (turns dev mode off).
    #[arg(long, env = "AGENTBOX_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// HS256 secret for JWT bearer tokens.
    #[arg(long, env = "AGENTBOX_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Minimum `X-AgentBox-Client-Version` for writes made with an API key (older → 426).
    #[arg(long, env = "AGENTBOX_MIN_CLIENT_VERSION", default_value = "0.0.0")]
    pub min_client_version: semver::Version,
    /// Requests per second allowed per API key user (token bucket); 0 = no rate limit.
    #[arg(long, env = "AGENTBOX_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
    /// Bucket size of the rate limit (default: 2 × the rate).
    #[arg(long, env = "AGENTBOX_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// How long an API key lookup is cached.
    #[arg(long, env = "AGENTBOX_APIKEY_CACHE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub apikey_cache_ttl: std::time::Duration,
    /// This cluster's id (pool docs, cross-cluster ids, `GET /v1/clusters`).
    #[arg(long, env = "AGENTBOX_CLUSTER_ID", default_value = "local")]
    pub cluster_id: String,
    /// The multi-cluster catalog (YAML `clusters: [{id, name, nativeUrl, e2bUrl, proxyUrl, headers}]`),
    /// re-read every 2 s; this server then routes `cluster::pool` and `cluster.uuid` requests.
    #[arg(long, env = "AGENTBOX_CLUSTERS_CONFIG")]
    pub clusters_config: Option<PathBuf>,
    /// Do not create the `default` template and pool.
    #[arg(long, env = "AGENTBOX_NO_DEFAULT_POOL")]
    pub no_default_pool: bool,
    /// Slots of the `default` pool.
    #[arg(long, env = "AGENTBOX_DEFAULT_POOL_SIZE", default_value_t = 2)]
    pub default_pool_size: u32,
    /// Slot subnet of the local backend (the bridge takes the first address).
    #[arg(long, env = "AGENTBOX_SUBNET", default_value = "10.213.0.0/16")]
    pub subnet: String,
    /// Bridge of the local backend.
    #[arg(long, env = "AGENTBOX_BRIDGE", default_value = "agbx0")]
    pub bridge: String,
    /// The in-sandbox agent binary (`agentbox-envd`), started in every sandbox on port 49983 for
    /// E2B commands and files. Default: `agentbox-envd` next to this executable, if it exists.
    #[arg(long, env = "AGENTBOX_AGENT_BINARY")]
    pub agent_binary: Option<PathBuf>,
    /// `--backend kubernetes`: the image whose `--k8s-agent-binary` an init container copies into
    /// every slot Pod (the agentbox server image has it). Unset: sandboxes run without the agent.
    #[arg(long, env = "AGENTBOX_K8S_AGENT_IMAGE")]
    pub k8s_agent_image: Option<String>,
    /// `--backend kubernetes`: path of the static `agentbox-envd` inside `--k8s-agent-image`.
    #[arg(long, env = "AGENTBOX_K8S_AGENT_BINARY", default_value = "/usr/local/bin/agentbox-envd")]
    pub k8s_agent_binary: String,
    /// `--backend kubernetes`: namespace of the Lease that elects the one replica running the
    /// reconcilers (default: the Pod's namespace from `POD_NAMESPACE`, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub k8s_lease_namespace: String,
    /// `--backend kubernetes`: this replica's identity in the Lease (default: `HOSTNAME`, the Pod
    /// name, plus the process id).
    #[arg(long, env = "AGENTBOX_K8S_IDENTITY")]
    pub k8s_identity: Option<String>,
    /// Days terminal sandboxes stay in the history store.
    #[arg(long, env = "AGENTBOX_HISTORY_RETENTION_DAYS", default_value_t = 7)]
    pub history_retention_days: u64,
    #[arg(long, env = "AGENTBOX_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// The agent binary: the given one (must exist); else the static build of this checkout
/// (`scripts/build-agent.sh` puts it in `target/x86_64-unknown-linux-gnu/<profile>/` when this
/// executable is `target/<profile>/agentbox`) unless the one beside this executable is newer;
/// else `agentbox-envd` next to this executable; else none (with a warning).
fn agent_binary(given: Option<&std::path::Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!(
                "--agent-binary {} does not exist: build it with `scripts/build-agent.sh` (static) or \
                 `cargo build --release -p agentbox-envd`",
                p.display()
            );
        }
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        log_agent(&p);
        return Ok(Some(p));
    }
    let exe = std::env::current_exe().ok();
    let beside = exe.as_ref().and_then(|e| e.parent().map(|d| d.join("agentbox-envd"))).filter(|p| p.is_file());
    let static_build = exe.as_deref().and_then(static_build_of).filter(|p| p.is_file());
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let pick = match (static_build, beside) {
        (Some(s), Some(b)) if modified(&s) >= modified(&b) => Some(s),
        (Some(s), None) => Some(s),
        (_, b) => b,
    };
    match pick {
        Some(p) => {
            log_agent(&p);
            Ok(Some(p))
        }
        None => {
            tracing::warn!(
                "no agentbox-envd next to the agentbox binary and no --agent-binary: sandboxes run without the \
                 agent, so E2B commands and files will not work"
            );
            Ok(None)
        }
    }
}

/// Where `scripts/build-agent.sh` leaves the static agent for the executable `target/<profile>/agentbox`.
fn static_build_of(exe: &std::path::Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    Some(dir.parent()?.join("x86_64-unknown-linux-gnu").join(dir.file_name()?).join("agentbox-envd"))
}

fn log_agent(p: &std::path::Path) {
    match elf_is_static(p) {
        Some(true) => tracing::info!(agent = %p.display(), "using the in-sandbox agent (static: runs in any image)"),
        _ => tracing::info!(
            agent = %p.display(),
            "using the in-sandbox agent (dynamically linked: it runs only in images with glibc; build a static one \
             with scripts/build-agent.sh)"
        ),
    }
}

/// Whether the ELF file at `p` is statically linked (no `PT_INTERP` program header); `None` when it
/// is not a 64-bit little-endian ELF file.
fn elf_is_static(p: &std::path::Path) -> Option<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(p).ok()?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(h[0x20..0x28].try_into().ok()?);
    let phentsize = u64::from(u16::from_le_bytes([h[0x36], h[0x37]]));
    let phnum = u16::from_le_bytes([h[0x38], h[0x39]]);
    for i in 0..u64::from(phnum) {
        f.seek(SeekFrom::Start(phoff + i * phentsize)).ok()?;
        let mut t = [0u8; 4];
        f.read_exact(&mut t).ok()?;
        if u32::from_le_bytes(t) == 3 {
            return Some(false);
        }
    }
    Some(true)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTBOX_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,tower_http=warn,libcgroups=error,libcontainer=warn")
    });
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// The zero-config template: the host's userland (python3, sh, coreutils) with `pause` while idle.
pub fn default_template() -> TemplateSpec {
    TemplateSpec {
        version: "1.0.0".into(),
        description: "The host's userland (read-only /usr, /etc): sh, python3, coreutils. Idle image: pause.".into(),
        docs: String::new(),
        visibility: Default::default(),
        sandbox: SandboxSpec {
            idle_image: "pause".into(),
            idle_command: vec![],
            containers: vec![ContainerSpec {
                name: "main".into(),
                image: "host".into(),
                command: vec!["sleep".into(), "infinity".into()],
                ..Default::default()
            }],
            runtimes: vec![],
            runtime_class: Default::default(),
            egress: true,
        },
    }
}

/// The zero-config template on Kubernetes: a public Python image that idles on itself (a Pod keeps
/// its command across an in-place image switch, so the idle image must accept the workload's
/// command; the same image makes the release switch a no-op).
pub fn default_kubernetes_template() -> TemplateSpec {
    let mut t = default_template();
    t.description = "Python 3.12 (docker.io/library/python:3.12-slim), idle on the same image.".into();
    t.sandbox.idle_image = "docker.io/library/python:3.12-slim".into();
    t.sandbox.containers[0].image = "docker.io/library/python:3.12-slim".into();
    t
}

async fn ensure_defaults(engine: &Arc<Engine>, size: u32, template: TemplateSpec) -> Result<()> {
    let admin = AuthInfo::dev_admin();
    if engine.list_templates(&admin)?.iter().all(|t| t.name != "default") {
        let images =
            format!("image {}, idle image {}", template.sandbox.containers[0].image, template.sandbox.idle_image);
        engine.create_template(CreateTemplateRequest { name: "default".into(), spec: template })?;
        tracing::info!("created template `default` ({images})");
    }
    if engine.list_pools(&admin)?.iter().all(|p| p.name != "default") {
        engine.create_pool(
            &admin,
            CreatePoolRequest {
                name: "default".into(),
                template_name: Some("default".into()),
                replicas: Some(size),
                pod_creation_image_policy: Some(PodCreationImagePolicy::PoolDefaultImage),
                ..Default::default()
            },
        )?;
        tracing::info!(replicas = size, "created pool `default`");
    }
    Ok(())
}

pub async fn run(a: ServeArgs) -> Result<ExitCode> {
    init_tracing(a.log_format);
    if !agentbox_server::gateway::catalog::valid_cluster_id(&a.cluster_id) {
        bail!(
            "--cluster-id {:?} is not valid: use 1-63 lowercase letters, digits and '-' (it appears in sandbox ids as `id.uuid`)",
            a.cluster_id
        );
    }
    let catalog = match &a.clusters_config {
        Some(path) => {
            Arc::new(agentbox_server::gateway::Catalog::load(path, &a.cluster_id).context("loading --clusters-config")?)
        }
        None => Arc::new(agentbox_server::gateway::Catalog::local_only(&a.cluster_id)),
    };
    catalog.watch(std::time::Duration::from_secs(2));
    let gateway = Arc::new(agentbox_server::gateway::Gateway::new(catalog, Default::default()));
    if a.admin_key.as_deref().is_some_and(|k| k.len() < 16) {
        bail!("--admin-key is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)");
    }
    if a.jwt_secret.as_deref().is_some_and(|k| k.len() < 16) {
        bail!("--jwt-secret is too short: use at least 16 characters");
    }
    if a.backend == BackendKind::Local && effective_uid() != 0 {
        bail!("the local backend needs root (namespaces, cgroups, overlay mounts, veth): run `sudo agentbox serve`");
    }
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating data dir {}", a.data_dir.display()))?;
    let store = agentbox_store_sqlite::SqliteStore::open(&a.data_dir.join("agentbox.db"))
        .with_context(|| format!("opening the store in {}", a.data_dir.display()))?;
    let (backend, images, agent_port, leader) = match a.backend {
        BackendKind::Local => local_backend(&a).await?,
        BackendKind::Kubernetes => kubernetes_backend(&a).await?,
    };
    let mut pool_changes = None;
    let store: Arc<dyn agentbox_core::store::Store> = match a.backend {
        BackendKind::Local => Arc::new(store),
        BackendKind::Kubernetes => {
            let kube_store = kubernetes_store(&a, store).await?;
            pool_changes = Some(kube_store.pool_changes());
            Arc::new(kube_store)
        }
    };
    // Bound before the engine exists so sandbox endpoints carry the real (maybe ephemeral) address.
    let proxy_listener = tokio::net::TcpListener::bind(a.proxy_listen)
        .await
        .with_context(|| format!("binding the data plane --proxy-listen {}", a.proxy_listen))?;
    let proxy_addr = proxy_listener.local_addr()?;
    let engine = Engine::new(
        store,
        backend,
        EngineConfig {
            history_retention: std::time::Duration::from_secs(a.history_retention_days * 86400),
            cluster_id: a.cluster_id.clone(),
            proxy_base_url: Some(format!("http://{proxy_addr}")),
            agent_port,
            leader,
            ..Default::default()
        },
    );
    engine.start().await.map_err(|e| anyhow::anyhow!("recovering state: {e}"))?;
    if let Some(mut changes) = pool_changes {
        // Pools created, scaled or deleted with kubectl reach their reconciler at once.
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(c) => engine.pool_changed(&c.namespace, &c.name),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for p in engine.store().list_pools(None).unwrap_or_default() {
                            engine.pool_changed(&p.namespace, &p.name);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    if !a.no_default_pool {
        let template = match a.backend {
            BackendKind::Local => default_template(),
            BackendKind::Kubernetes => default_kubernetes_template(),
        };
        ensure_defaults(&engine, a.default_pool_size, template).await?;
    }
    let server_key = ServerKey::load_or_create(&a.data_dir.join("server.key"))
        .with_context(|| format!("loading the server key {}", a.data_dir.join("server.key").display()))?;
    let auth_cfg = AuthConfig {
        admin_key: a.admin_key.clone(),
        jwt_secret: a.jwt_secret.clone(),
        server_key,
        key_cache_ttl: a.apikey_cache_ttl,
        min_client_version: a.min_client_version.clone(),
        rate_limit: (a.rate_limit > 0).then(|| RateLimit {
            per_second: a.rate_limit,
            burst: a.rate_limit_burst.unwrap_or(a.rate_limit.saturating_mul(2)),
        }),
    };
    let dev_mode = auth_cfg.admin_key.is_none();
    let state = AppState::with_gateway(Arc::clone(&engine), images, auth_cfg, Arc::clone(&gateway));
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    if dev_mode {
        tracing::warn!(
            "DEV MODE: no admin key configured (--admin-key / AGENTBOX_ADMIN_KEY), so every caller without \
             credentials is an anonymous ADMIN; keep --listen on loopback"
        );
        eprintln!(
            "WARNING: agentbox runs in DEV MODE: no admin key is configured, every caller without credentials \
             is an anonymous admin. Set --admin-key before exposing {addr} beyond this machine."
        );
    }
    let e2b_listener =
        tokio::net::TcpListener::bind(a.e2b_listen).await.with_context(|| format!("binding {}", a.e2b_listen))?;
    let e2b_addr = e2b_listener.local_addr()?;
    let e2b_cfg = E2bConfig { domain: Some(a.e2b_domain.clone().unwrap_or_else(|| proxy_addr.to_string())) };
    let e2b_app = agentbox_server::e2b::router(Arc::clone(&state), e2b_cfg);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(e2b_listener, e2b_app).with_graceful_shutdown(shutdown_signal()).await {
            tracing::error!(error = %e, "the E2B API server stopped");
        }
    });
    tracing::info!(addr = %e2b_addr, "E2B API listening");
    // Machine-readable, printed before the main line so tests waiting for that one see both.
    println!("agentbox e2b api on http://{e2b_addr}");
    let data_plane = agentbox_server::proxy::DataPlane::with_gateway(Arc::clone(&engine), Arc::clone(&gateway));
    tokio::spawn(data_plane.serve(proxy_listener, shutdown_signal()));
    tracing::info!(addr = %proxy_addr, "data plane listening (not authenticated)");
    // Machine-readable, printed before the main line so tests waiting for that one see both.
    println!("agentbox data plane on http://{proxy_addr}");
    tracing::info!(%addr, data_dir = %a.data_dir.display(), "agentbox listening");
    // Machine-readable line for scripts and tests that bind port 0.
    println!("agentbox listening on http://{addr}");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await.context("serving HTTP")?;
    engine.stop();
    tracing::info!("stopped; sandboxes keep running and are adopted at the next start");
    Ok(ExitCode::SUCCESS)
}

/// What `run` needs of a backend: the backend, the image store of the image endpoints (local
/// only: on Kubernetes the kubelet pulls images), the agent's port when sandboxes have one, and
/// the leadership signal when several replicas may run (Kubernetes).
type BackendParts = (
    Arc<dyn agentbox_core::backend::Backend>,
    Option<agentbox_images::ImageStore>,
    Option<u16>,
    Option<tokio::sync::watch::Receiver<bool>>,
);

/// The local container backend in the data dir.
async fn local_backend(a: &ServeArgs) -> Result<BackendParts> {
    let images = agentbox_images::ImageStore::open(&a.data_dir.join("images")).context("opening the image store")?;
    let mut cfg = agentbox_backend_local::LocalBackendConfig::new(a.data_dir.join("local"), images.clone());
    cfg.subnet = a.subnet.clone();
    cfg.bridge_name = a.bridge.clone();
    // /proc/self/exe keeps working even if the binary on disk is replaced while we run.
    cfg.libcontainer_helper = Some(PathBuf::from("/proc/self/exe"));
    cfg.agent_binary = agent_binary(a.agent_binary.as_deref())?;
    let agent_port = cfg.agent_binary.is_some().then_some(agentbox_backend_local::AGENT_PORT);
    let backend = agentbox_backend_local::LocalBackend::new(cfg).await.context("starting the local backend")?;
    Ok((Arc::new(backend), Some(images), agent_port, None))
}

/// The Kubernetes backend: connect with `KUBECONFIG` / `~/.kube/config` / the in-cluster service
/// account, and check that the API answers and the CRDs are installed; fail fast and say what to
/// do when not.
async fn kubernetes_backend(a: &ServeArgs) -> Result<BackendParts> {
    let cfg = agentbox_backend_k8s::KubeBackendConfig {
        agent: a.k8s_agent_image.as_ref().map(|image| agentbox_backend_k8s::AgentInjection {
            image: image.clone(),
            binary: a.k8s_agent_binary.clone(),
        }),
        // Pools are SandboxPool objects (see `kubernetes_store`): they own their slot Pods.
        require_pool_object: true,
        ..Default::default()
    };
    if cfg.agent.is_none() {
        tracing::warn!(
            "no --k8s-agent-image: sandboxes run without the in-sandbox agent, so E2B commands and files will not work"
        );
    }
    let agent_port = cfg.agent.is_some().then_some(agentbox_backend_k8s::pod::AGENT_PORT);
    let backend = agentbox_backend_k8s::KubeBackend::connect(cfg)
        .await
        .context("cannot use --backend kubernetes (use --backend local to run sandboxes on this host)")?;
    // Claims read slot Pods from a watch-fed cache instead of a GET each.
    let (pods, informer) = agentbox_backend_k8s::informer::pod_informer(backend.client().clone());
    tokio::spawn(informer);
    // Only the holder of the Lease runs the reconcilers; every replica serves the API. The Lease
    // is given up when the process stops (the sender lives until then).
    let identity = a.k8s_identity.clone().unwrap_or_else(|| {
        format!("{}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "agentbox".into()), std::process::id())
    });
    let lease_identity = identity.clone();
    let lease =
        agentbox_backend_k8s::leader::LeaseConfig::new(&a.k8s_lease_namespace, "agentbox-reconcilers", identity);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (leader, _task) =
        agentbox_backend_k8s::leader::LeaderElector::new(backend.client().clone(), lease).spawn(stop_rx);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let warnings = agentbox_backend_k8s::events::Warnings::new(backend.client().clone(), lease_identity);
    Ok((Arc::new(backend.with_pod_cache(pods).with_warnings(warnings)), None, agent_port, Some(leader)))
}

/// Templates and pools as custom resources, API keys as Secrets (in the server's namespace), the
/// SQLite store as their cache. The first start in Kubernetes mode imports what the SQLite store
/// had; later starts let the cluster win (a marker file in the data dir tells them apart).
async fn kubernetes_store(
    a: &ServeArgs,
    sqlite: agentbox_store_sqlite::SqliteStore,
) -> Result<agentbox_backend_k8s::KubeStore<agentbox_store_sqlite::SqliteStore>> {
    let marker = a.data_dir.join("kubernetes-imported");
    let mut cfg = agentbox_backend_k8s::KubeStoreConfig::new(&a.k8s_lease_namespace);
    cfg.local_only =
        if marker.exists() { agentbox_backend_k8s::LocalOnly::Drop } else { agentbox_backend_k8s::LocalOnly::Import };
    let store = agentbox_backend_k8s::KubeStore::connect(sqlite, cfg)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("cannot read templates, pools and api keys from the cluster")?;
    if store.imports_complete() {
        std::fs::write(&marker, "templates, pools and api keys were imported into the cluster\n")
            .with_context(|| format!("writing {}", marker.display()))?;
    } else {
        // Without the marker the next start imports again instead of deleting what stayed local.
        tracing::warn!(
            not_imported = ?store.not_imported(),
            "some templates, pools or api keys could not be created in the cluster and stay local only (see the \
             warnings above); the next start tries again"
        );
    }
    Ok(store)
}

fn effective_uid() -> u32 {
    // Read from /proc to avoid an unsafe libc call in this crate.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_build_sits_in_the_target_triple_dir_of_the_same_profile() {
        assert_eq!(
            static_build_of(std::path::Path::new("/w/target/release/agentbox")),
            Some(PathBuf::from("/w/target/x86_64-unknown-linux-gnu/release/agentbox-envd"))
        );
    }

    #[test]
    fn elf_linkage_is_read_from_the_program_headers() {
        // busybox-static (a test dependency) is static; the test binary itself is dynamic.
        if std::path::Path::new("/bin/busybox").is_file() {
            assert_eq!(elf_is_static(std::path::Path::new("/bin/busybox")), Some(true));
        }
        assert_eq!(elf_is_static(&std::env::current_exe().unwrap()), Some(false));
        assert_eq!(elf_is_static(std::path::Path::new("/etc/hostname")), None);
    }
}
