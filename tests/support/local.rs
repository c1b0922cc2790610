//! The local test cluster: etcd, kube-apiserver and kube-controller-manager (disruption
//! controller only) on 127.0.0.1, started once per test run and shared by its test processes.
//!
//! Sharing: the state lives in `$TMPDIR/housekeeper-kube/<run key>/` (see
//! [`process::run_owner`]). The first test process takes `lock`, starts the cluster and writes
//! `cluster.json`; later ones take the lock, find `cluster.json` and its watchdog alive, and
//! reuse it. The watchdog ([`process`]) stops everything when the run ends.
//!
//! Binaries: kube-apiserver and kube-controller-manager from `tests/kube/build-kube.sh`'s
//! cache (or `HOUSEKEEPER_KUBE_BIN_DIR`), etcd from Debian's `etcd-server`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::certs;
use super::process::{self, FileLock, Proc};

/// Overrides where kube-apiserver and kube-controller-manager are taken from.
pub const BIN_DIR_ENV: &str = "HOUSEKEEPER_KUBE_BIN_DIR";

/// The static-token user that tests bind to a least-privilege Role.
pub const LIMITED_USER: &str = "housekeeper-limited";

/// The namespace whose `hkd` ServiceAccount [`LocalCluster::hkd_token`] authenticates as: a
/// static token with the ServiceAccount's user name, so that the shipped RBAC (bound to the
/// ServiceAccount) applies to it unchanged. No token controller runs here to issue a real one.
pub const HKD_TOKEN_NAMESPACE: &str = "housekeeper-rbac-test";

/// How long a start may take before it is called failed: readyz answers after 3–4 s on an idle
/// 2-core machine; parallel cargo builds can make it several times slower.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts are retried this often: a port picked free can be taken by someone else before the
/// server binds it.
const START_ATTEMPTS: usize = 3;

/// What later test processes need to use the cluster; written as `cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalCluster {
    pub state_dir: PathBuf,
    pub server: String,
    pub ca_cert: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub limited_token: String,
    /// A token of the user `system:serviceaccount:<HKD_TOKEN_NAMESPACE>:hkd`.
    pub hkd_token: String,
    pub apiserver: Relaunch,
    pub watchdog_pid: u32,
    /// Seconds from the first process to a ready API server and controller manager.
    pub start_seconds: f64,
}

impl LocalCluster {
    /// The API server's URL as a QEMU guest on a user-mode network reaches it: the guest's
    /// gateway address stands for this host's loopback, and the serving certificate names it.
    pub fn server_for_qemu_guest(&self) -> String {
        self.server.replace("127.0.0.1", certs::QEMU_HOST_IP)
    }
}

/// How the API server was started, to start it again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Relaunch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub pid: u32,
}

impl LocalCluster {
    /// Stop the API server (SIGTERM, as a restart does), leave it down for `down`, start it
    /// again with the same arguments on the same port, and wait until it is ready. For a
    /// cluster of the caller's own (see `hkctl_fresh.rs`): the run's shared cluster serves
    /// other tests.
    pub async fn restart_apiserver(&mut self, down: Duration) -> Result<()> {
        let pid = self.apiserver.pid;
        // SAFETY: signalling a process this cluster started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let admin = super::cluster::client_from_kubeconfig_file(&self.admin_kubeconfig).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while process::alive(pid) && !process::zombie(pid) {
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(down).await;
        let p = Proc::spawn(
            "kube-apiserver",
            &self.apiserver.program,
            &self.apiserver.args,
            self.watchdog_pid,
            &self.state_dir,
            self.state_dir.join("kube-apiserver.restarted.log"),
        )?;
        self.apiserver.pid = p.child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match admin.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("kube-apiserver not ready again after {START_TIMEOUT:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Where the build script caches the binaries.
fn default_bin_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("housekeeper/kube/current/bin")
}

struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
}

fn find_binaries() -> Result<Binaries> {
    let dir = std::env::var_os(BIN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(default_bin_dir);
    let kube = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if !is_executable(&path) {
            bail!(
                "{name} not found at {}: run tests/kube/build-kube.sh (builds it once, ~6 min), \
                 or set {BIN_DIR_ENV}, or point the tests at a cluster with {}",
                path.display(),
                super::cluster::KUBECONFIG_ENV
            );
        }
        Ok(path)
    };
    let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_executable(p))
        .context(
            "etcd not found: apt-get install etcd-server (tests/kube/build-kube.sh does it)",
        )?;
    Ok(Binaries {
        etcd,
        apiserver: kube("kube-apiserver")?,
        controller_manager: kube("kube-controller-manager")?,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The run's cluster: reused when another test process of this run started it, else started.
pub async fn ensure_started() -> Result<LocalCluster> {
    let (owner, key) = process::run_owner()?;
    // Missing components fail before anything is created.
    let bins = find_binaries()?;
    certs::check_openssl()?;
    let dir = std::env::temp_dir().join("housekeeper-kube").join(key);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_path = dir.join("lock");
    let _lock = tokio::task::spawn_blocking(move || FileLock::acquire(&lock_path)).await??;

    let info_path = dir.join("cluster.json");
    if let Ok(text) = std::fs::read_to_string(&info_path) {
        let info: LocalCluster = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", info_path.display()))?;
        if process::alive(info.watchdog_pid) {
            return Ok(info);
        }
        bail!(
            "the test cluster of this run (watchdog {}) is gone; logs were in {}",
            info.watchdog_pid,
            dir.display()
        );
    }

    // A start that failed in an earlier test process of this run is not tried again: every
    // test would wait minutes for the same failure.
    let error_path = dir.join("cluster.error");
    if let Ok(error) = std::fs::read_to_string(&error_path) {
        bail!("the test cluster failed to start earlier in this run: {error}");
    }
    let mut last_err = None;
    for attempt in 1..=START_ATTEMPTS {
        let attempt_dir = dir.join(format!("attempt-{attempt}"));
        std::fs::create_dir_all(&attempt_dir)?;
        let watchdog = process::start_watchdog(owner, &attempt_dir, &dir)?;
        match start(&bins, &attempt_dir, watchdog).await {
            Ok(info) => {
                eprintln!(
                    "test cluster: kube-apiserver ready at {} after {:.1}s (state in {})",
                    info.server,
                    info.start_seconds,
                    attempt_dir.display()
                );
                let tmp = dir.join("cluster.json.tmp");
                std::fs::write(&tmp, serde_json::to_vec_pretty(&info)?)?;
                std::fs::rename(&tmp, &info_path)?;
                return Ok(info);
            }
            Err(e) => {
                // The attempt's processes go now; its watchdog stays and removes the run's
                // directory (logs included) when the run ends.
                process::kill_registered(&attempt_dir, watchdog);
                let port_race = format!("{e:#}").contains("address already in use");
                last_err = Some(e);
                if !port_race {
                    break;
                }
            }
        }
    }
    let err = last_err
        .expect("at least one attempt")
        .context("starting the local test cluster");
    let _ = std::fs::write(&error_path, format!("{err:#}"));
    Err(err)
}

async fn start(bins: &Binaries, dir: &Path, pgid: u32) -> Result<LocalCluster> {
    let t0 = Instant::now();
    let certs = certs::generate(dir)?;
    let etcd_port = process::free_port()?;
    let peer_port = process::free_port()?;
    let api_port = process::free_port()?;
    let server = format!("https://127.0.0.1:{api_port}");

    let admin_token = process::random_hex(16);
    let kcm_token = process::random_hex(16);
    let limited_token = process::random_hex(16);
    let hkd_token = process::random_hex(16);
    // token,user,uid,"groups"
    let tokens = format!(
        "{admin_token},housekeeper-admin,uid-admin,\"system:masters\"\n\
         {kcm_token},system:kube-controller-manager,uid-kcm,\"system:masters\"\n\
         {limited_token},{LIMITED_USER},uid-limited,\"housekeeper:testers\"\n\
         {hkd_token},system:serviceaccount:{HKD_TOKEN_NAMESPACE}:hkd,uid-hkd,\"system:serviceaccounts,system:serviceaccounts:{HKD_TOKEN_NAMESPACE}\"\n"
    );
    let tokens_file = dir.join("tokens.csv");
    std::fs::write(&tokens_file, tokens)?;
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    std::fs::write(
        &admin_kubeconfig,
        kubeconfig(&server, &certs.ca_cert, &admin_token, "housekeeper-admin"),
    )?;
    let kcm_kubeconfig = dir.join("kcm.kubeconfig");
    std::fs::write(
        &kcm_kubeconfig,
        kubeconfig(
            &server,
            &certs.ca_cert,
            &kcm_token,
            "kube-controller-manager",
        ),
    )?;

    let p = |path: &Path| path.display().to_string();
    let mut etcd = Proc::spawn(
        "etcd",
        &bins.etcd,
        &[
            "--name=hk".into(),
            format!("--data-dir={}", p(&dir.join("etcd"))),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=hk=http://127.0.0.1:{peer_port}"),
            // A throw-away store: durability buys nothing and fsync costs seconds.
            "--unsafe-no-fsync".into(),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ],
        pgid,
        dir,
        dir.join("etcd.log"),
    )?;
    let apiserver_args: Vec<String> = vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={api_port}"),
        "--insecure-port=0".into(),
        format!("--cert-dir={}", p(dir)),
        format!("--tls-cert-file={}", p(&certs.serving_cert)),
        format!("--tls-private-key-file={}", p(&certs.serving_key)),
        format!("--client-ca-file={}", p(&certs.ca_cert)),
        format!("--token-auth-file={}", p(&tokens_file)),
        "--authorization-mode=Node,RBAC".into(),
        // What per-node identities rely on: a node may change only its own Node (not its
        // taints) and evict or delete only its own pods.
        "--enable-admission-plugins=NodeRestriction".into(),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-account-key-file={}", p(&certs.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&certs.sa_key)),
        // A configuration value only: nothing is ever sent to this range.
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        // No token controller runs, so pods would wait for a default service account.
        "--disable-admission-plugins=ServiceAccount".into(),
        "--profiling=false".into(),
    ];
    let mut apiserver = Proc::spawn(
        "kube-apiserver",
        &bins.apiserver,
        &apiserver_args,
        pgid,
        dir,
        dir.join("kube-apiserver.log"),
    )?;

    let admin = super::cluster::client_from_kubeconfig_file(&admin_kubeconfig).await?;
    let deadline = t0 + START_TIMEOUT;
    loop {
        etcd.check_running()?;
        apiserver.check_running()?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        match admin.request_text(req).await {
            Ok(body) if body.trim() == "ok" => break,
            _ if Instant::now() > deadline => bail!(
                "kube-apiserver not ready after {START_TIMEOUT:?}; last lines of {}:\n{}",
                apiserver.log.display(),
                process::log_tail(&apiserver.log, 15)
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let mut kcm = Proc::spawn(
        "kube-controller-manager",
        &bins.controller_manager,
        &[
            format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            // Only PodDisruptionBudget status: without it every eviction under a PDB gets 429
            // "still being processed".
            "--controllers=disruption".into(),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=false".into(),
            // No listening ports at all, so parallel clusters never collide.
            "--port=0".into(),
            "--secure-port=0".into(),
        ],
        pgid,
        dir,
        dir.join("kube-controller-manager.log"),
    )?;
    // The controller manager has no port to probe; a second of life and a log line saying the
    // disruption controller started is our readiness signal.
    loop {
        kcm.check_running()?;
        let log = std::fs::read_to_string(&kcm.log).unwrap_or_default();
        if log.contains("Started \"disruption\"") || log.contains("Starting disruption controller")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "kube-controller-manager did not start its disruption controller within \
                 {START_TIMEOUT:?}; last lines of {}:\n{}",
                kcm.log.display(),
                process::log_tail(&kcm.log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    Ok(LocalCluster {
        state_dir: dir.to_owned(),
        server,
        ca_cert: certs.ca_cert,
        admin_kubeconfig,
        limited_token,
        hkd_token,
        apiserver: Relaunch {
            program: bins.apiserver.clone(),
            args: apiserver_args,
            pid: apiserver.child.id(),
        },
        watchdog_pid: pgid,
        start_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A kubeconfig (JSON is YAML) for a token user of the local cluster.
pub fn kubeconfig(server: &str, ca_cert: &Path, token: &str, user: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "housekeeper-test", "cluster": {
            "server": server,
            "certificate-authority": ca_cert,
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "housekeeper-test", "user": user}}],
        "current-context": user,
    })
    .to_string()
}
