//! The settings of `hkd`, the node agent: the schema of /usr/lib|etc|run/hkd/config.d/*.toml.
//!
//! `config/hkd.toml` in the repository is the shipped, commented copy of these defaults; a
//! unit test keeps the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Program name: names the drop-in directories (`/etc/hkd/config.d`).
pub const APP: &str = "hkd";

/// Where hkctl installs the Updates, the coordinator's Lease and hkd's ServiceAccount, and so
/// the default of `kubernetes.namespace`.
pub const NAMESPACE: &str = "housekeeper-system";

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub os: Os,
    pub state: State,
    pub kubernetes: Kubernetes,
    pub metrics: Metrics,
    pub health: Health,
    pub reboot: Reboot,
    pub fleetlock: FleetLock,
}

impl Settings {
    /// The journal directory as seen from `root` (`/` on a host).
    pub fn state_dir(&self, root: &Path) -> PathBuf {
        root.join(self.state.dir.strip_prefix("/").unwrap_or(&self.state.dir))
    }
}

/// Which OS deployment backend to drive and how strictly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Os {
    /// `auto` finds rpm-ostree on the system bus and falls back to plain OSTree.
    pub backend: BackendSetting,
    /// Accept image references that carry no verification (`ostree-unverified-registry:` …).
    /// Off by default: an unverified image is an unauthenticated root filesystem.
    pub allow_unverified_images: bool,
    /// rpm-ostree: deploy a commit-checksum target even when it is not in the history of the
    /// booted origin's branch (the daemon's `skip-branch-check`). Off by default, as rpm-ostree
    /// has it: a commit from another branch is more likely a mistake than a choice. The
    /// commit is verified all the same (GPG, through its remote).
    pub skip_branch_check: bool,
}

impl Default for Os {
    fn default() -> Self {
        Os {
            backend: BackendSetting::Auto,
            allow_unverified_images: false,
            skip_branch_check: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendSetting {
    Auto,
    RpmOstree,
    Ostree,
}

/// Where the agent keeps its journal of upgrade steps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct State {
    pub dir: PathBuf,
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: PathBuf::from("/var/lib/hkd"),
        }
    }
}

/// How the agent reaches its cluster. hkd runs on the host, not in a pod, so it reads the
/// kubeconfigs written by `hkctl install`: the node's own credential, and on control-plane
/// nodes that coordinate, the coordinator's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kubernetes {
    /// This node's credential (it acts as the node's kubelet does). Without this file the node
    /// runs standalone (no grants, no drain, no coordinator).
    pub kubeconfig: PathBuf,
    /// The coordinator's credential, used by the coordinator candidate only; required when
    /// `coordinate` is on.
    pub coordinator_kubeconfig: PathBuf,
    /// This node's Node name; empty: the host name, as the kubelet registers it.
    pub node_name: String,
    /// Where the Updates and the coordinator's Lease live.
    pub namespace: String,
    /// How long the coordinator's Lease holds without renewal (renewed every third of it):
    /// how long a rollout stands still when its coordinator dies without stepping down.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// Stand as a candidate for the rollout's coordinator. Off by default: only control-plane
    /// nodes coordinate, and only they are given the coordinator's credential.
    pub coordinate: bool,
    /// The kubeadm program run when an Update sets `kubeVersion`.
    pub kubeadm: PathBuf,
    /// Restarts the kubelet after the kubeadm step.
    pub kubelet_restart: Vec<String>,
    /// How soon a target whose staging failed before its grant is tried again.
    #[serde(with = "humantime_serde")]
    pub stage_retry: Duration,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes {
            kubeconfig: PathBuf::from("/etc/hkd/kubeconfig"),
            coordinator_kubeconfig: PathBuf::from("/etc/hkd/coordinator.kubeconfig"),
            node_name: String::new(),
            namespace: NAMESPACE.to_owned(),
            lease_duration: Duration::from_secs(15),
            coordinate: false,
            kubeadm: PathBuf::from("/usr/bin/kubeadm"),
            kubelet_restart: ["systemctl", "restart", "kubelet.service"]
                .map(String::from)
                .to_vec(),
            stage_retry: Duration::from_secs(300),
        }
    }
}

/// The Prometheus endpoint. Loopback by default: metrics are read by a local agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
        }
    }
}

/// FleetLock (Zincati's reboot-lock protocol): the coordinator as a server for Zincati nodes,
/// and hkd as a client where there is no Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetLock {
    /// Where the coordinator serves FleetLock while it leads (`ADDRESS:PORT`); empty: no
    /// server. Unauthenticated by protocol: listen where only the fleet reaches it.
    pub listen: String,
    /// A lock held this long without `steady-state` is reclaimed (its node left cordoned).
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// A standalone hkd (no kubeconfig): the FleetLock server's base URL to take a lock from
    /// before each reboot; empty: reboot without asking.
    pub url: String,
    /// The group this node asks in (the server's node pool).
    pub group: String,
}

impl Default for FleetLock {
    fn default() -> Self {
        FleetLock {
            listen: String::new(),
            lock_timeout: Duration::from_secs(3600),
            url: String::new(),
            group: "default".into(),
        }
    }
}

/// The health gate after booting into a new deployment (see `node::health`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    /// How long after the boot the gate may take before the deployment is rolled back.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Pause between rounds of checks while the gate has not passed.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one check program may run.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// systemd units that must be active.
    pub units: Vec<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            timeout: Duration::from_secs(600),
            interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(120),
            units: Vec::new(),
        }
    }
}

/// How reboots are asked for (see `node::reboot`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reboot {
    /// `wait`: a block inhibitor postpones the reboot until it is released; `ignore`: reboot
    /// through it (rpm-ostree's finalize still refuses to).
    pub on_blocked: OnBlocked,
    /// How long to wait before asking again while a block inhibitor holds the reboot, or when
    /// a reboot asked for did not happen. After the third such request the upgrade is given
    /// up and the booted deployment stays the default.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
}

/// What to do when a block inhibitor holds the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBlocked {
    /// Postpone; the agent asks again and gives the upgrade up after its last attempt.
    #[default]
    Wait,
    /// Reboot anyway, and say so in the log.
    Ignore,
}

impl Default for Reboot {
    fn default() -> Self {
        Reboot {
            on_blocked: Default::default(),
            retry: Duration::from_secs(120),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::fs;

    /// The shipped commented defaults, with the comment markers of key and section lines
    /// removed, must parse to exactly `Settings::default()`.
    #[test]
    fn shipped_defaults_file_matches_the_code() {
        let shipped = include_str!("../../config/hkd.toml");
        let uncommented: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix("#"))
            .map(str::trim_start)
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: Settings = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed, Settings::default());
        // And nothing in the file is active: installed as is, it changes nothing.
        let active: Settings = toml::from_str(shipped).unwrap();
        assert_eq!(active, Settings::default());
    }

    #[test]
    fn backend_names_are_kebab_case() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/hkd/config.d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("50-os.toml"), "[os]\nbackend = \"rpm-ostree\"\n").unwrap();
        let loaded: config::Loaded<Settings> = config::load(root.path(), APP).unwrap();
        assert_eq!(loaded.settings.os.backend, BackendSetting::RpmOstree);

        fs::write(dir.join("50-os.toml"), "[os]\nbackend = \"rpm_ostree\"\n").unwrap();
        let err = config::load::<Settings>(root.path(), APP)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `os.backend`: unknown variant `rpm_ostree`, expected one of `auto`, `rpm-ostree`, `ostree`"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_listen_address_is_refused_with_the_key() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run/hkd/config.d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("50-m.toml"), "[metrics]\nlisten = \"localhost\"\n").unwrap();
        let err = config::load::<Settings>(root.path(), APP)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("50-m.toml:2: key `metrics.listen`: invalid socket address"),
            "{err}"
        );
    }
}
