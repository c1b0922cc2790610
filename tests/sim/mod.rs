//! The cluster simulation: many nodes, each a real `hkd` agent (the production wiring of
//! `hkd run`, [`housekeeper::node::daemon::run_with`]) in a process of its own over a
//! simulated host ([`host`]), against the real API server.
//!
//! Each node is this test binary re-executed with [`NODE_DIR_ENV`] naming its directory
//! (configuration, journal, `host.json`, log), so a kill is a real SIGKILL at whatever point
//! the process is, and a reboot ends the process as a shutdown would; the [`Sim`] supervisor
//! starts it again after the simulated boot time, as systemd would. The Nodes are registered
//! by the kubelet stand-in of `support`; no kubelet runs (the stand-in keeps them Ready).
//! Each node gets its own kubeconfig, and the nodes that coordinate the coordinator's too,
//! as `hkctl install` issues them and a node's configuration names them.

pub mod host;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use host::{Reports, SimHost, SimReboot};
use housekeeper::config::hkd::Settings;
use housekeeper::node::daemon::{run_with, Seams};
use housekeeper::node::status::ProgressSink;

/// Set in a re-executed test binary: run as the simulated node in this directory.
pub const NODE_DIR_ENV: &str = "HOUSEKEEPER_SIM_NODE_DIR";

/// The name of the test that is also the node processes' entry point.
pub const ENTRY: &str = "simulated_host_keeps_deployments_like_a_host";

/// Run as a node process if this process is one; returns otherwise.
pub fn node_main_if_asked() {
    let Some(dir) = std::env::var_os(NODE_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,kube=warn,tower=warn,hyper=warn")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let settings = housekeeper::config::load::<Settings>(&dir, "hkd")
        .expect("the simulated node's configuration")
        .settings;
    let stage_ms: u64 = std::fs::read_to_string(dir.join("stage-ms"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(200);
    // The progress wiring of `hkd run`: the backend reports to the sink's observer.
    let progress = ProgressSink::default();
    let host = SimHost {
        dir: dir.clone(),
        stage_time: Duration::from_millis(stage_ms),
        reports: Reports(Some(progress.observer())),
    };
    let seams = Seams {
        backend: Box::new(host.clone()),
        backend_name: "simulated".into(),
        rebooter: Box::new(SimReboot { host: host.clone() }),
        observer: Box::new(host),
        progress: Some(progress),
    };
    let result = run_with(&settings, &dir, &dir.join("hkd.sock"), seams);
    eprintln!("hkd ended: {result:?}");
    std::process::exit(1);
}

/// How one simulated node is set up.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub image: String,
    pub stage_time: Duration,
    /// The node's own kubeconfig (YAML text), as `hkctl install` wrote it.
    pub kubeconfig: String,
    /// The coordinator's kubeconfig, for the nodes that stand as coordinator (with
    /// `kubernetes.coordinate = true`); `None`: the node does not coordinate.
    pub coordinator_kubeconfig: Option<String>,
}

/// Timings shared by the nodes.
#[derive(Debug, Clone)]
pub struct Timing {
    pub lease: Duration,
    pub boot: Duration,
    pub health_timeout: Duration,
}

struct Proc {
    child: Option<Child>,
    /// Held down (not restarted) until this flag clears.
    down: bool,
    restarts: u32,
}

/// The simulated nodes and their supervisor.
pub struct Sim {
    pub root: PathBuf,
    procs: Arc<Mutex<BTreeMap<String, Proc>>>,
    stop: Arc<AtomicBool>,
    boot: Duration,
}

fn write(path: &Path, content: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

impl Sim {
    /// Set up and start `nodes` under `root`, each reaching the API server with its own
    /// credentials and following the Updates of `namespace`.
    pub fn start(root: &Path, nodes: &[NodeSpec], namespace: &str, timing: &Timing) -> Result<Sim> {
        let mut procs = BTreeMap::new();
        for n in nodes {
            let dir = root.join(&n.name);
            std::fs::create_dir_all(&dir)?;
            write(&dir.join("kubeconfig"), &n.kubeconfig)?;
            if let Some(kc) = &n.coordinator_kubeconfig {
                write(&dir.join("coordinator.kubeconfig"), kc)?;
            }
            write(&dir.join("stage-ms"), &n.stage_time.as_millis().to_string())?;
            write(
                &dir.join("kubeadm"),
                &format!(
                    "#!/bin/sh\necho \"$*\" >> {}/kubeadm.calls\n",
                    dir.display()
                ),
            )?;
            set_executable(&dir.join("kubeadm"))?;
            // The required health check: a target marked bad fails it.
            let check = dir.join("etc/hkd/health.d/required.d/10-image");
            write(
                &check,
                &format!(
                    "#!/bin/sh\nif grep -q ':bad' {}/booted-image; then echo 'the image is bad' >&2; exit 1; fi\n",
                    dir.display()
                ),
            )?;
            set_executable(&check)?;
            write(
                &dir.join("etc/hkd/config.d/50-sim.toml"),
                &format!(
                    r#"[kubernetes]
kubeconfig = "/kubeconfig"
coordinator_kubeconfig = "/coordinator.kubeconfig"
node_name = "{name}"
namespace = "{namespace}"
coordinate = {coordinate}
lease_duration = "{lease}ms"
kubeadm = "{dir}/kubeadm"
kubelet_restart = ["true"]
stage_retry = "2s"

[metrics]
listen = "127.0.0.1:0"

[health]
timeout = "{health}ms"
interval = "200ms"

[reboot]
retry = "1s"
"#,
                    name = n.name,
                    coordinate = n.coordinator_kubeconfig.is_some(),
                    lease = timing.lease.as_millis(),
                    dir = dir.display(),
                    health = timing.health_timeout.as_millis(),
                ),
            )?;
            SimHost {
                dir: dir.clone(),
                stage_time: n.stage_time,
                reports: Default::default(),
            }
            .create(&n.image)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            procs.insert(
                n.name.clone(),
                Proc {
                    child: None,
                    down: false,
                    restarts: 0,
                },
            );
        }
        let sim = Sim {
            root: root.to_owned(),
            procs: Arc::new(Mutex::new(procs)),
            stop: Arc::new(AtomicBool::new(false)),
            boot: timing.boot,
        };
        sim.supervise();
        Ok(sim)
    }

    fn spawn(root: &Path, name: &str) -> Result<Child> {
        let dir = root.join(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("hkd.log"))?;
        Command::new(std::env::current_exe()?)
            .args(["--exact", ENTRY, "--nocapture", "--test-threads=1"])
            .env(NODE_DIR_ENV, &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the hkd of {name}"))
    }

    /// Start every node, and restart each one that ends (a reboot) after the boot time.
    fn supervise(&self) {
        let procs = self.procs.clone();
        let stop = self.stop.clone();
        let root = self.root.clone();
        let boot = self.boot;
        std::thread::spawn(move || {
            // When each ended node may start again.
            let mut ended: BTreeMap<String, std::time::Instant> = BTreeMap::new();
            while !stop.load(Ordering::SeqCst) {
                {
                    let mut procs = procs.lock().unwrap();
                    for (name, p) in procs.iter_mut() {
                        if let Some(c) = &mut p.child {
                            if let Ok(Some(_)) = c.try_wait() {
                                p.child = None;
                                ended.insert(name.clone(), std::time::Instant::now() + boot);
                            }
                        }
                        let due = ended
                            .get(name)
                            .is_none_or(|t| *t <= std::time::Instant::now());
                        if p.child.is_none() && !p.down && due {
                            match Sim::spawn(&root, name) {
                                Ok(c) => {
                                    p.child = Some(c);
                                    p.restarts += 1;
                                    ended.remove(name);
                                }
                                Err(e) => eprintln!("{e:#}"),
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            for p in procs.lock().unwrap().values_mut() {
                if let Some(c) = &mut p.child {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        });
    }

    /// SIGKILL a node's hkd; it starts again after the boot time (a crash and a restart by
    /// systemd; the host itself does not reboot).
    pub fn kill(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(Some(c)) = procs.get_mut(name).map(|p| p.child.as_mut()) {
            let _ = c.kill();
        }
    }

    /// How often each node's hkd was started.
    pub fn starts(&self) -> BTreeMap<String, u32> {
        self.procs
            .lock()
            .unwrap()
            .iter()
            .map(|(n, p)| (n.clone(), p.restarts))
            .collect()
    }

    /// The local socket of node `name`'s hkd.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.root.join(name).join("hkd.sock")
    }

    pub fn host(&self, name: &str) -> SimHost {
        SimHost {
            dir: self.root.join(name),
            stage_time: Duration::ZERO,
            reports: Default::default(),
        }
    }

    /// The last lines of a node's log, for failure messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.root.join(name).join("hkd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn kubeadm_calls(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.root.join(name).join("kubeadm.calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The supervisor kills the children on its way out; make sure before returning.
        std::thread::sleep(Duration::from_millis(200));
        for p in self.procs.lock().unwrap().values_mut() {
            if let Some(c) = &mut p.child {
                let _ = c.kill();
                let _ = c.wait();
            }
            p.down = true;
        }
    }
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
