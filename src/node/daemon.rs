//! `hkd run`: wires the agent to the host and serves its local socket.
//!
//! Threads: the agent (blocking work: pulls, deploys, health checks), the socket server, and
//! — under systemd with `WatchdogSec=` — the watchdog. systemd is told READY once the journal
//! is loaded and the host observed; the agent tells it STATUS on every change of phase.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread;

use anyhow::Context as _;

use super::agent::{Agent, ClusterSide, Observer, Parts, Rebooter, Standalone};
use super::health::{Check, Gate};
use super::journal::Journal;
use super::kube::{KubeNode, Settings as ClusterSettings, Starter};
use super::machine::Event;
use super::machine::Limits;
use super::metrics::{self, Metrics};
use super::reboot::Logind;
use super::socket::Server;
use super::status::ProgressSink;
use super::watchdog::{self, Liveness};
use crate::cluster::connect::client_from_kubeconfig;
use crate::cluster::coordinator::Config as CoordinatorConfig;
use crate::cluster::fleetlock::server::Config as FleetLockConfig;
use crate::cluster::kube_drain::Tuning;
use crate::config::hkd::Settings;
use crate::image_ref::ImagePolicy;
use crate::node::fleetlock::FleetLockClient;
use crate::os::{detect, Backend};

/// The running kernel's boot id, from /proc.
pub struct ProcBootId {
    pub proc_root: PathBuf,
}

impl Observer for ProcBootId {
    fn boot_id(&self) -> anyhow::Result<String> {
        crate::sys::boot_id(&self.proc_root)
            .map_err(|e| anyhow::anyhow!("reading the boot id: {e}"))
    }
}

/// The one choice about unverified images, as the configuration makes it.
pub fn image_policy(settings: &Settings) -> ImagePolicy {
    ImagePolicy {
        allow_unverified: settings.os.allow_unverified_images,
    }
}

/// What hkd acts on the host through: deployments, reboots, the boot id.
pub struct Seams {
    pub backend: Box<dyn Backend>,
    pub backend_name: String,
    pub rebooter: Box<dyn Rebooter>,
    pub observer: Box<dyn Observer>,
    /// Where the backend reports its staging progress (the backend was given
    /// [`ProgressSink::observer`]); shown by `hkd status` and on the Node.
    pub progress: Option<ProgressSink>,
}

/// Runs the node agent until it fails. `root` is `/` on a host.
pub fn run(settings: &Settings, root: &Path, socket: &Path) -> anyhow::Result<()> {
    if settings.os.allow_unverified_images {
        tracing::warn!("os.allow_unverified_images is on: images nobody verified will be deployed");
    }
    let policy = image_policy(settings);
    // Staging progress (rpm-ostree reports it) goes to `hkd status`.
    let progress = ProgressSink::default();
    let (backend, backend_name) =
        detect::open(&settings.os, root, policy, Some(progress.observer()))?;
    let seams = Seams {
        backend,
        backend_name: backend_name.into(),
        rebooter: Box::new(Logind::system(settings.reboot.on_blocked)),
        observer: Box::new(ProcBootId {
            proc_root: root.join("proc"),
        }),
        progress: Some(progress),
    };
    run_with(settings, root, socket, seams)
}

/// Runs the node agent on `seams` until it fails: everything of `hkd run` but the choice of
/// the host's seams (the cluster simulation runs this with simulated hosts).
pub fn run_with(
    settings: &Settings,
    root: &Path,
    socket: &Path,
    seams: Seams,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let listener = metrics::bind(settings.metrics.listen)?;
    let served = metrics.clone();
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || served.serve(listener))?;
    let (events, inbox) = mpsc::channel();
    let mut extra: Vec<Box<dyn Check>> = Vec::new();
    let liveness = Arc::new(Liveness::default());
    let mut fleetlock = None;
    let (cluster, starter): (Box<dyn ClusterSide>, Option<Starter>) =
        match cluster_side(settings, root, events.clone(), liveness.clone())? {
            Some((node, starter)) => {
                if !settings.fleetlock.url.is_empty() {
                    tracing::warn!(
                        "fleetlock.url is ignored: this node follows its cluster's grants"
                    );
                }
                extra.push(node.ready_check());
                (Box::new(node), Some(starter))
            }
            None if !settings.fleetlock.url.is_empty() => {
                let client = fleetlock_client(settings, root)?;
                fleetlock = Some(client.clone());
                (Box::new(client), None)
            }
            None => (Box::new(Standalone), None),
        };
    let parts = Parts {
        backend: seams.backend,
        backend_name: seams.backend_name,
        rebooter: seams.rebooter,
        cluster,
        observer: seams.observer,
        gate: Gate {
            root: root.to_owned(),
            settings: settings.health.clone(),
            extra,
        },
        journal: Journal::open(&settings.state_dir(root))?,
        policy: image_policy(settings),
        limits: Limits {
            health_timeout: settings.health.timeout.as_secs(),
        },
        reboot_retry: settings.reboot.retry,
        metrics: metrics.clone(),
    };
    let (agent, first) = Agent::start(parts).context("starting the node agent")?;
    let shared = agent.shared();
    if let Some(progress) = seams.progress {
        progress.attach(shared.clone());
    }
    if let Some(client) = &fleetlock {
        client.attach(shared.clone());
        client.release_if_at_rest(agent.machine());
    }
    // A node that follows its cluster takes upgrades from its Update only: a local request
    // could otherwise ride a cluster grant.
    let standalone = starter.is_none();
    if let Some(starter) = starter {
        starter.start(agent.machine().clone(), shared.clone());
    }
    let server = Server::bind(socket, shared.clone(), events.clone(), standalone)
        .with_context(|| format!("listening on {}", socket.display()))?;
    thread::Builder::new()
        .name("socket".into())
        .spawn(move || server.serve())?;
    watchdog::serve(liveness);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let agent_thread = thread::Builder::new()
        .name("agent".into())
        .spawn(move || agent.run(first, inbox))?;
    // Keep a sender alive: the agent runs until its inbox closes, i.e. never while we live.
    let _events = events;
    agent_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the node agent panicked"))?
}

/// The cluster half when a kubeconfig is there: a runtime thread for its watches, the client,
/// and the coordinator candidate. `None`: the node runs standalone.
fn cluster_side(
    settings: &Settings,
    root: &Path,
    inbox: mpsc::Sender<Event>,
    liveness: Arc<Liveness>,
) -> anyhow::Result<Option<(KubeNode, Starter)>> {
    let k = &settings.kubernetes;
    let kubeconfig = root.join(k.kubeconfig.strip_prefix("/").unwrap_or(&k.kubeconfig));
    if !kubeconfig.exists() {
        tracing::info!(
            "no kubeconfig at {}: running standalone (upgrades start with `hkd upgrade`)",
            kubeconfig.display()
        );
        return Ok(None);
    }
    let node_name = if k.node_name.is_empty() {
        crate::sys::hostname(&root.join("proc"))
            .context("reading the host name for the Node name; set kubernetes.node_name")?
    } else {
        k.node_name.clone()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the cluster runtime")?;
    let handle = runtime.handle().clone();
    thread::Builder::new()
        .name("cluster".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    let client = handle.block_on(client_from_kubeconfig(&kubeconfig))?;
    let coordinator_client = if k.coordinate {
        let path = coordinator_credential(
            settings,
            root,
            "kubernetes.coordinate",
            "this node stands as coordinator, but",
            " (control-plane nodes only), or set coordinate = false",
        )?;
        Some(handle.block_on(client_from_kubeconfig(&path))?)
    } else {
        None
    };
    let policy = image_policy(settings);
    let coordinator = k
        .coordinate
        .then(|| coordinator_config(settings, &node_name));
    let fleetlock = if k.coordinate {
        fleetlock_server(settings, &node_name)?
    } else {
        if !settings.fleetlock.listen.is_empty() {
            tracing::warn!(
                "fleetlock.listen is set but this node does not coordinate: only the coordinator serves FleetLock"
            );
        }
        None
    };
    tracing::info!("following the cluster as node {node_name}");
    #[allow(unused_mut)]
    let mut settings = ClusterSettings {
        node_name,
        namespace: k.namespace.clone(),
        policy,
        kubeadm: k.kubeadm.clone(),
        kubelet_restart: k.kubelet_restart.clone(),
        stage_retry: k.stage_retry,
        tuning: Tuning::default(),
        coordinator,
        fleetlock,
        liveness,
        watchdog_bound: watchdog::DEFAULT_BOUND,
        hang_follower: false,
    };
    // Seams for the watchdog's end-to-end test only; a build without the test feature has none.
    #[cfg(feature = "kube-tests")]
    {
        if let Some(s) = std::env::var("HKD_TEST_WATCHDOG_BOUND_SECONDS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            settings.watchdog_bound = std::time::Duration::from_secs(s);
        }
        settings.hang_follower = std::env::var_os("HKD_TEST_HANG_FOLLOWER").is_some();
    }
    Ok(Some(KubeNode::new(
        handle,
        client,
        coordinator_client,
        settings,
        inbox,
    )))
}

/// The FleetLock client of a standalone node: `fleetlock.url`, `fleetlock.group`, the id
/// from the machine-id.
fn fleetlock_client(settings: &Settings, root: &Path) -> anyhow::Result<FleetLockClient> {
    let f = &settings.fleetlock;
    let unusable = |key: &str, e: anyhow::Error| crate::config::ConfigError::Unusable {
        key: key.into(),
        message: format!("{e:#}"),
    };
    let id = crate::node::fleetlock::machine_id(root).map_err(|e| unusable("fleetlock.url", e))?;
    let backoff = crate::node::fleetlock::Backoff::default();
    let client = FleetLockClient::new(&f.url, &f.group, &id, backoff)
        .map_err(|e| unusable("fleetlock.url", e))?;
    tracing::info!(
        "standalone with FleetLock: a lock from {} (group {}, id {id}) before each reboot",
        f.url,
        f.group
    );
    Ok(client)
}

/// The FleetLock server's address and settings, when `fleetlock.listen` asks for one.
fn fleetlock_server(
    settings: &Settings,
    identity: &str,
) -> anyhow::Result<Option<(std::net::SocketAddr, FleetLockConfig)>> {
    let f = &settings.fleetlock;
    if f.listen.is_empty() {
        return Ok(None);
    }
    let listen = f
        .listen
        .parse()
        .map_err(|e| crate::config::ConfigError::Unusable {
            key: "fleetlock.listen".into(),
            message: format!(
                "{:?} is not ADDRESS:PORT ({e}); e.g. \"0.0.0.0:9808\", or empty for no server",
                f.listen
            ),
        })?;
    Ok(Some((
        listen,
        FleetLockConfig {
            lock_timeout: f.lock_timeout,
            image_policy: image_policy(settings),
            ..FleetLockConfig::new(identity, &settings.kubernetes.namespace)
        },
    )))
}

/// The coordinator's settings from hkd's, under `identity`.
fn coordinator_config(settings: &Settings, identity: &str) -> CoordinatorConfig {
    let k = &settings.kubernetes;
    #[allow(unused_mut)]
    let mut config = CoordinatorConfig {
        namespace: k.namespace.clone(),
        lease_duration: k.lease_duration,
        renew_every: k.lease_duration / 3,
        image_policy: image_policy(settings),
        ..CoordinatorConfig::new(identity)
    };
    // Seams for the fencing tests only; a build without the test feature has none.
    #[cfg(feature = "kube-tests")]
    {
        if let Some(s) = std::env::var("HKD_TEST_WALL_CLOCK_OFFSET_SECONDS")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        {
            config.wall_offset = jiff::SignedDuration::from_secs(s);
        }
        config.stop_before_grant = std::env::var("HKD_TEST_STOP_BEFORE_GRANT_WRITE")
            .ok()
            .and_then(|v| v.parse().ok());
    }
    config
}

/// The coordinator's kubeconfig under `root`; its absence is a configuration error on `key`,
/// the message framed by `before` and `after`.
fn coordinator_credential(
    settings: &Settings,
    root: &Path,
    key: &str,
    before: &str,
    after: &str,
) -> anyhow::Result<PathBuf> {
    let k = &settings.kubernetes;
    let path = root.join(
        k.coordinator_kubeconfig
            .strip_prefix("/")
            .unwrap_or(&k.coordinator_kubeconfig),
    );
    if path.exists() {
        return Ok(path);
    }
    let before = if before.is_empty() {
        String::new()
    } else {
        format!("{before} ")
    };
    Err(crate::config::ConfigError::Unusable {
        key: key.into(),
        message: format!(
            "{before}the coordinator's credential {} (kubernetes.coordinator_kubeconfig) does \
             not exist: copy the coordinator.kubeconfig `hkctl install` wrote there{after}",
            path.display()
        ),
    }
    .into())
}

/// `hkd coordinate`: a coordinator candidate alone, under the coordinator's credential, until
/// SIGTERM or SIGINT (then it steps down).
pub fn coordinate(
    settings: &Settings,
    root: &Path,
    identity: Option<String>,
) -> anyhow::Result<()> {
    let k = &settings.kubernetes;
    let identity = match identity.filter(|i| !i.is_empty()) {
        Some(i) => i,
        None if !k.node_name.is_empty() => k.node_name.clone(),
        None => crate::sys::hostname(&root.join("proc"))
            .context("reading the host name for the coordinator's name; pass --identity")?,
    };
    let path = coordinator_credential(settings, root, "kubernetes.coordinator_kubeconfig", "", "")?;
    let fleetlock = fleetlock_server(settings, &identity)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let client = client_from_kubeconfig(&path).await?;
        let config = coordinator_config(settings, &identity);
        let coordinator = crate::cluster::coordinator::Coordinator::new(client.clone(), config);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some((listen, fl)) = fleetlock {
            tokio::spawn(crate::cluster::fleetlock::server::serve_beside(
                client,
                listen,
                fl,
                coordinator.term(),
                stop_rx.clone(),
            ));
        }
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            let _ = stop_tx.send(true);
        });
        tracing::info!("coordinator candidate {identity} started");
        coordinator.run(stop_rx).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinating_without_the_coordinator_credential_is_a_configuration_error() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc/hkd");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("kubeconfig"),
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
             users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
             current-context: x\n",
        )
        .unwrap();
        let mut settings = Settings::default();
        settings.kubernetes.node_name = "n1".into();
        settings.kubernetes.coordinate = true;
        let (tx, _rx) = mpsc::channel();
        let err = cluster_side(&settings, root.path(), tx.clone(), Default::default())
            .err()
            .expect("refused");
        assert!(err.chain().any(|c| c.is::<crate::config::ConfigError>()));
        let text = format!("{err:#}");
        assert!(
            text.starts_with("kubernetes.coordinate: ")
                && text.contains("etc/hkd/coordinator.kubeconfig")
                && text.contains("hkctl install"),
            "{text}"
        );
        // A node that does not coordinate needs no coordinator credential.
        settings.kubernetes.coordinate = false;
        assert!(cluster_side(&settings, root.path(), tx, Default::default())
            .unwrap()
            .is_some());
    }
}
