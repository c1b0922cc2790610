//! The cluster rollout on real machines: two testos VMs whose hkd — the image's systemd
//! service, in cluster mode because a kubeconfig is there — follow the host's kube-apiserver
//! (the integration tests' local cluster, which a guest reaches at `https://10.0.2.2:<port>`
//! through QEMU's user-mode network). The admin's part is done with the real `hkctl`:
//! `install` (CRD, namespace, RBAC, each node's own kubeconfig — acting as its node — and the
//! coordinator's), then `upgrade` to v2 with `maxUnavailable` 1. Both nodes coordinate (they
//! stand in for control-plane nodes, the only ones that hold the coordinator's credential).
//!
//! Expected flow: both nodes pre-stage v2; the elected coordinator grants one node; its hkd
//! cordons it, drains its pod, reboots it through logind (QEMU exits and the bench boots the
//! same disk from the boot loader entries hkd's deploy wrote), verifies v2 and the Node's
//! Ready condition, uncordons it and reports Done; only then is the other node granted.
//!
//! Stand-ins (no kubelet runs in testos): the host registers the two Nodes under the guests'
//! host names, runs one pod on each, reports a Node NotReady while its machine is down and
//! Ready again once the machine reached multi-user, and finishes evicted pods — all through
//! the API calls a kubelet makes (tests/support/kubelet.rs). The boot loader and rpm-ostree
//! are stood in for as in every testos scenario (vm-tests/README.md).
//!
//! Checked from the host: the Update ends Complete; both Nodes say Done for its grant, are
//! schedulable again and carry the v2 image; in the API server's own order of Node changes
//! (one watch, resourceVersion order) the second grant comes after the first Done and never
//! more than one node is in flight; when each machine went down it held an open grant, was
//! cordoned by hkd, its drain had finished (the Drained Event was there: DESIGN.md I3) and it
//! did not hold the coordinator's Lease (a coordinator steps down before its node drains);
//! each machine rebooted exactly once; Events Granted, Draining, Drained,
//! Uncordoned and UpgradeDone are on both Nodes; the pods were evicted. Checked in each guest:
//! `ostree admin status` shows v2 booted, and hkd's journal has UPGRADE_DONE.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use futures::StreamExt;
use housekeeper::cluster::annotations::{AgentPhase, NodeView};
use housekeeper::cluster::update::Update;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::runtime::{Handle, Runtime};

use crate::bench::bootloader::{load_default, Partition};
use crate::bench::http::HttpServer;
use crate::bench::images::{self, Testos};
use crate::bench::qemu::{Machine, MachineConfig};
use crate::bench::{scenario, Scenario};
use crate::support::cluster::Cluster;
use crate::support::rollout_view::{self, RolloutView};
use crate::support::{KubeletStandIn, NodeRole, TestEnv};

/// The Nodes, as short names; each becomes a unique Node name and the guest's host name.
const NODES: [&str; 2] = ["node-a", "node-b"];

/// From the scenario's start to the Update's end: two boots side by side, a pull and a deploy
/// on each, then one node after the other drained, rebooted and verified, all under emulation
/// on a shared 2-core machine (about 6 minutes when the machine is otherwise idle).
const SCENARIO_BUDGET: Duration = Duration::from_secs(15 * 60);
/// One QEMU run's hard deadline: the second node's first run lasts through the first node's
/// whole upgrade.
const MACHINE_RUN: Duration = Duration::from_secs(17 * 60);
/// A boot to `HK-MARK:ready`, with the other machine booting beside it.
const READY_TIMEOUT: Duration = Duration::from_secs(480);
/// How often the host looks at the machines and the Update.
const POLL: Duration = Duration::from_secs(2);

/// hkd's configuration on these machines, given through Ignition as an admin would: the test
/// repository is unsigned (this also lets the coordinator accept the Update's image), and the
/// health gate — which in cluster mode includes the Node's Ready condition — has minutes.
const HKD_CONFIG: &str = "[os]\nallow_unverified_images = true\n\n\
[kubernetes]\ncoordinate = true\n\n\
[health]\ntimeout = \"5m\"\ninterval = \"5s\"\n\n\
[reboot]\nretry = \"30s\"\n";

/// The Update's target: the OSTree ref hkd's standalone scenario upgrades to.
fn target(t: &Testos) -> String {
    format!("{}:testos/x86_64/v2", t.remote)
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// First-boot configuration of one node: root's key, its host name (the Node's name, as a
/// kubelet would register it), hkd's configuration, its own kubeconfig and the coordinator's.
fn ignition(t: &Testos, hostname: &str, kubeconfig: &[u8], coordinator: &[u8]) -> Result<String> {
    let key = std::fs::read_to_string(t.keys_dir.join("root.pub"))?;
    let file = |path: &str, mode: u32, contents: &[u8]| {
        serde_json::json!({
            "path": path, "mode": mode, "overwrite": true,
            "contents": { "source": data_url(contents) }
        })
    };
    let cfg = serde_json::json!({
        "ignition": { "version": "3.3.0" },
        "passwd": { "users": [ { "name": "root", "sshAuthorizedKeys": [ key.trim() ] } ] },
        "storage": { "files": [
            file("/etc/hostname", 0o644, format!("{hostname}\n").as_bytes()),
            file("/etc/hkd/config.d/50-vm.toml", 0o644, HKD_CONFIG.as_bytes()),
            file("/etc/hkd/kubeconfig", 0o600, kubeconfig),
            file("/etc/hkd/coordinator.kubeconfig", 0o600, coordinator),
        ] }
    });
    Ok(serde_json::to_string_pretty(&cfg)?)
}

/// Runs the built `hkctl` with the admin's kubeconfig; its output, or an error with both
/// streams.
fn hkctl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_hkctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("HKCTL_UPDATE")
        .output()
        .context("running hkctl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "hkctl {} failed ({}):\n{stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// The host's side: the API server, its admin, the stand-in kubelet's Nodes and pods.
struct Rig {
    env: TestEnv,
    admin_kubeconfig: PathBuf,
    /// Where `hkctl install` wrote the kubeconfigs (`nodes/NAME.kubeconfig`,
    /// `coordinator.kubeconfig`).
    credentials: PathBuf,
    nodes: Vec<String>,
}

impl Rig {
    async fn start(s: &Scenario) -> Result<Rig> {
        let env = TestEnv::new("vm-cluster").await?;
        let Cluster::Local(local) = env.cluster else {
            bail!(
                "the VM cluster scenario needs the local test cluster (unset {}): the guests \
                 reach the API server on this host's loopback through QEMU's user-mode network",
                crate::support::cluster::KUBECONFIG_ENV
            );
        };
        s.progress(&format!(
            "kube-apiserver at {}; the guests reach it at {}",
            local.server,
            local.server_for_qemu_guest()
        ));
        let admin_kubeconfig = local.admin_kubeconfig.clone();
        let credentials = s.dir.join("hkd-credentials");
        let guest_server = local.server_for_qemu_guest();
        let kubelet = KubeletStandIn::new(env.admin.clone());
        let mut nodes = Vec::new();
        for short in NODES {
            let node = kubelet.register_node(&env, short, NodeRole::Worker).await?;
            let name = node.metadata.name.context("a Node without a name")?;
            // One pod to drain; unreplicated, so the Update asks for evictPodForce.
            kubelet
                .run_pod(&env.ns, &format!("app-{short}"), &name, &[("app", short)])
                .await?;
            nodes.push(name);
        }
        let mut args: Vec<String> = ["install", "--server", &guest_server, "--credentials-dir"]
            .map(String::from)
            .to_vec();
        args.push(credentials.to_string_lossy().into_owned());
        for n in &nodes {
            args.extend(["--node".to_owned(), n.clone()]);
        }
        let admin = admin_kubeconfig.clone();
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            hkctl(&admin, &args)
        })
        .await??;
        s.progress(&format!("hkctl install:\n{}", out.trim_end()));
        Ok(Rig {
            env,
            admin_kubeconfig,
            credentials,
            nodes,
        })
    }

    fn updates(&self) -> Api<Update> {
        Api::namespaced(
            self.env.admin.clone(),
            housekeeper::cluster::update::NAMESPACE,
        )
    }
}

/// One change of a Node, in the order the API server made them (one watch).
#[derive(Clone, Debug)]
struct Seen {
    resource_version: u64,
    at: Duration,
    view: NodeView,
}

/// What a change is about: grant, phase, the phase's grant, staged image, cordoned, Ready.
type Summary = (
    Option<String>,
    Option<AgentPhase>,
    Option<String>,
    Option<String>,
    bool,
    bool,
);

/// Only a change of these makes a new [`Seen`].
fn summary(v: &NodeView) -> Summary {
    (
        v.grant.as_ref().map(ToString::to_string),
        v.phase,
        v.phase_grant.as_ref().map(ToString::to_string),
        v.staged.clone(),
        v.unschedulable,
        v.ready,
    )
}

/// Records every change of the named Nodes — their grants read from the Updates' ledgers —
/// until the runtime ends. The Nodes and the Updates come from two watches merged in the API
/// server's order (`support::rollout_view`); `resource_version` is a change's position in
/// that order.
fn record_nodes(rt: &Runtime, client: Client, names: Vec<String>) -> Arc<Mutex<Vec<Seen>>> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let out = seen.clone();
    let t0 = Instant::now();
    rt.spawn(async move {
        let mut stream =
            rollout_view::changes(client, housekeeper::cluster::update::NAMESPACE).boxed();
        let mut view = RolloutView::default();
        let mut last = BTreeMap::new();
        let mut position = 0u64;
        while let Some(change) = stream.next().await {
            view.apply(change);
            position += 1;
            for v in view.views(|n| names.iter().any(|m| m == n)) {
                if last.insert(v.name.clone(), summary(&v)) == Some(summary(&v)) {
                    continue;
                }
                out.lock().expect("node record").push(Seen {
                    resource_version: position,
                    at: t0.elapsed(),
                    view: v,
                });
            }
        }
    });
    seen
}

/// When each node of the rollout `uid` was granted and reported Done, as positions in the
/// API server's order of changes.
#[derive(Debug, PartialEq, Eq)]
struct Turn {
    node: String,
    granted: u64,
    done: u64,
}

/// The rollout's turns in the order they were granted, checked to be one at a time: a grant
/// only after the previous node's Done, and never two nodes between grant and Done.
fn turns(seen: &[Seen], uid: &str) -> Result<Vec<Turn>> {
    let mut views: BTreeMap<&str, &NodeView> = BTreeMap::new();
    let mut granted: BTreeMap<String, u64> = BTreeMap::new();
    let mut done: BTreeMap<String, u64> = BTreeMap::new();
    for s in seen {
        let v = &s.view;
        views.insert(&v.name, v);
        let ours = v.grant.as_ref().filter(|g| g.uid == uid);
        if let Some(g) = ours {
            granted.entry(v.name.clone()).or_insert(s.resource_version);
            if v.phase_for(g) == Some(AgentPhase::Done) {
                done.entry(v.name.clone()).or_insert(s.resource_version);
            }
        }
        let in_flight: Vec<&str> = views
            .values()
            .filter(|v| {
                v.grant.as_ref().is_some_and(|g| {
                    g.uid == uid && !v.phase_for(g).is_some_and(AgentPhase::is_terminal)
                })
            })
            .map(|v| v.name.as_str())
            .collect();
        ensure!(
            in_flight.len() <= 1,
            "at resourceVersion {} nodes {in_flight:?} were in flight together (maxUnavailable 1)",
            s.resource_version
        );
    }
    let mut out: Vec<Turn> = granted
        .into_iter()
        .map(|(node, granted)| {
            let done = done
                .get(&node)
                .copied()
                .with_context(|| format!("{node} was granted but never reported Done"))?;
            Ok(Turn {
                node,
                granted,
                done,
            })
        })
        .collect::<Result<_>>()?;
    out.sort_by_key(|t| t.granted);
    for pair in out.windows(2) {
        ensure!(
            pair[1].granted > pair[0].done,
            "{} was granted (resourceVersion {}) before {} reported Done ({})",
            pair[1].node,
            pair[1].granted,
            pair[0].node,
            pair[0].done
        );
    }
    Ok(out)
}

/// What one machine went through, seen from the host and from inside.
#[derive(Debug, Default)]
struct NodeReport {
    /// Once per reboot, what the cluster said when the machine went down.
    at_reboot: Vec<Down>,
    ostree_status: String,
    version: String,
    upgrade_done_logged: bool,
}

/// The cluster at the moment a machine went down.
#[derive(Debug)]
struct Down {
    node: NodeView,
    /// hkd's Drained Event on the Node was recorded.
    drained: bool,
    /// Who held the coordinator's Lease.
    coordinator: Option<String>,
}

impl Down {
    async fn read(client: &Client, name: &str) -> Result<Down> {
        let node = Api::<Node>::all(client.clone()).get(name).await?;
        let events = node_events(client, name).await?;
        let leases: Api<Lease> =
            Api::namespaced(client.clone(), housekeeper::cluster::update::NAMESPACE);
        let coordinator = leases
            .get_opt(housekeeper::cluster::lease::LEASE_NAME)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty());
        let updates =
            Api::<Update>::namespaced(client.clone(), housekeeper::cluster::update::NAMESPACE)
                .list(&ListParams::default())
                .await?
                .items;
        let mut view = NodeView::from_node(&node);
        view.grant = housekeeper::cluster::ledger::grant_of(name, &updates).0;
        Ok(Down {
            node: view,
            drained: events.iter().any(|(r, c)| r == "Drained" && c == "hkd"),
            coordinator,
        })
    }
}

/// One testos machine of the cluster.
struct Vm<'a> {
    s: &'a Scenario,
    t: &'a Testos,
    /// The Node's name, which is also the guest's host name and the machine's log name.
    name: String,
    disk: PathBuf,
    /// Once the rollout is over, show on this machine that a hung follower gets hkd
    /// restarted by systemd's watchdog ([`Vm::hung_follower_restarts_hkd`]).
    watchdog_check: bool,
}

/// hkd's unit drop-in for the watchdog check: the test build's seams make the follower hang
/// after its first round and shorten its bound to 10 s; systemd waits 5 s for a ping.
const HANG_DROP_IN: &str = "[Service]\n\
    Environment=HKD_TEST_HANG_FOLLOWER=1 HKD_TEST_WATCHDOG_BOUND_SECONDS=10\n\
    WatchdogSec=5s\nRestartSec=1s\n";

/// How long the watchdog check waits for systemd to restart the hung hkd: 10 s of silence,
/// 5 s without a ping, 1 s before the restart, and hkd's start under emulation.
const WATCHDOG_RESTART: Duration = Duration::from_secs(240);

impl Vm<'_> {
    /// A follower that stops moving stops hkd's watchdog pings and systemd restarts hkd:
    /// under a drop-in with the hang seam (`HANG_DROP_IN`), hkd logs which part hung, systemd
    /// logs the watchdog timeout and counts a restart. The drop-in then goes and hkd, started
    /// again, is active.
    fn hung_follower_restarts_hkd(&self, vm: &Machine) -> Result<()> {
        let dir = "/run/systemd/system/hkd.service.d";
        vm.sh(&format!(
            "mkdir -p {dir} && printf '{HANG_DROP_IN}' > {dir}/hang.conf && \
             systemctl daemon-reload && systemctl restart hkd"
        ))?;
        self.s.progress(&format!(
            "{}: hkd restarted with its follower made to hang; waiting for the watchdog",
            self.name
        ));
        let until = Instant::now() + WATCHDOG_RESTART;
        loop {
            let restarts = vm.sh("systemctl show -p NRestarts --value hkd")?;
            if restarts.trim().parse::<u32>().unwrap_or(0) >= 1 {
                break;
            }
            ensure!(
                Instant::now() < until,
                "{}: hkd with a hung follower was not restarted within {WATCHDOG_RESTART:?}; \
                 its journal:\n{}",
                self.name,
                vm.sh("journalctl -u hkd --no-pager | tail -30")
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_secs(5));
        }
        let journal = vm.sh("journalctl -u hkd --no-pager -o cat")?;
        for line in [
            "hkd's follower made no progress",
            "the watchdog is no longer fed",
            "Watchdog timeout",
        ] {
            ensure!(
                journal.contains(line),
                "{}: hkd was restarted but its journal does not say {line:?}:\n{}",
                self.name,
                vm.sh("journalctl -u hkd --no-pager | tail -30")
                    .unwrap_or_default()
            );
        }
        self.s.progress(&format!(
            "{}: the watchdog stopped at the hung follower and systemd restarted hkd",
            self.name
        ));
        vm.sh(&format!(
            "rm {dir}/hang.conf && systemctl daemon-reload && systemctl restart hkd && \
             systemctl is-active hkd"
        ))
        .context("hkd after the watchdog check, without the hang")?;
        Ok(())
    }

    /// Boots the default boot loader entry of the disk (as `Scenario::boot_testos`, with a
    /// deadline long enough to wait for the other node's turn) and waits for multi-user with
    /// hkd running.
    fn boot(&self) -> Result<Machine> {
        let part = Partition::extract(
            &self.disk,
            self.t.boot_part_offset,
            self.t.boot_part_size,
            &self.s.dir.join(format!("{}-boot.raw", self.name)),
        )?;
        let files = load_default(&part, &self.s.dir.join(format!("{}-boot", self.name)))?;
        let _ = std::fs::remove_file(&part.raw);
        self.s.progress(&format!(
            "booting {} (testos) entry {} ({})",
            self.name, files.entry.file, files.entry.title
        ));
        let cfg = MachineConfig {
            name: self.name.clone(),
            kernel: files.kernel,
            initrd: files.initrd,
            cmdline: files.entry.options.clone(),
            disk: self.disk.clone(),
            extra_disks: Vec::new(),
            timeout: MACHINE_RUN,
        };
        let mut vm = Machine::start(&cfg, &self.s.dir, &self.t.keys_dir)?;
        vm.wait_mark("ready", READY_TIMEOUT)?;
        let active = vm.sh("systemctl is-active hkd || true")?;
        ensure!(
            active.trim() == "active",
            "hkd.service on {} is {active:?}: {}",
            self.name,
            vm.sh("journalctl -u hkd --no-pager | tail -20")
                .unwrap_or_default()
        );
        Ok(vm)
    }

    /// The machine's life: boot, point the OSTree remote at the update server, say so; then
    /// boot again whenever hkd rebooted it (the stand-in kubelet reporting the Node NotReady
    /// while it is down), until `stop`; then read what it booted and what hkd logged.
    fn live(
        &self,
        url: &str,
        kube: &Handle,
        kubelet: &KubeletStandIn,
        client: &Client,
        up: &mpsc::Sender<String>,
        stop: &AtomicBool,
    ) -> Result<NodeReport> {
        let mut report = NodeReport::default();
        let mut vm = self.boot()?;
        let remote = &self.t.remote;
        vm.sh(&format!(
            "ostree remote delete --if-exists {remote} && ostree remote add --no-gpg-verify {remote} {url}"
        ))
        .context("pointing the OSTree remote at the update server")?;
        let _ = up.send(self.name.clone());
        loop {
            match vm.wait_exit(POLL) {
                Ok(()) => {
                    let down = kube.block_on(Down::read(client, &self.name))?;
                    self.s.progress(&format!(
                        "{} went down: phase {}, cordoned {} (by hkd: {}), drained {}, \
                         coordinator {}",
                        self.name,
                        down.node.phase.map_or("-", AgentPhase::as_str),
                        down.node.unschedulable,
                        down.node.cordoned_by_hkd,
                        down.drained,
                        down.coordinator.as_deref().unwrap_or("none")
                    ));
                    report.at_reboot.push(down);
                    kube.block_on(kubelet.set_node_ready(&self.name, false))?;
                    vm = self.boot()?;
                    kube.block_on(kubelet.set_node_ready(&self.name, true))?;
                    self.s
                        .progress(&format!("{} is up again; its Node is Ready", self.name));
                }
                // QEMU ended otherwise (a crash, its deadline): the machine's own error.
                Err(e) if vm.pid().is_none() => return Err(e),
                Err(_) if stop.load(Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
        if self.watchdog_check {
            self.hung_follower_restarts_hkd(&vm)?;
        }
        report.ostree_status = vm.sh("ostree admin status")?;
        report.version = vm
            .sh("cat /usr/lib/housekeeper-test/version")?
            .trim()
            .to_owned();
        let logged = vm.sh(&format!(
            "journalctl -b -u hkd MESSAGE_ID={} -o cat | wc -l",
            housekeeper::logging::msgid::UPGRADE_DONE
        ))?;
        report.upgrade_done_logged = logged.trim() != "0";
        if !report.upgrade_done_logged {
            self.s.progress(&format!(
                "{}: hkd's journal:\n{}",
                self.name,
                vm.sh("journalctl -u hkd --no-pager | tail -40")
                    .unwrap_or_default()
            ));
        }
        vm.shutdown_with("systemctl poweroff", Duration::from_secs(180))?;
        Ok(report)
    }
}

/// The deployment lines of `ostree admin status`: (booted, checksum).
fn deployments(status: &str) -> Vec<(bool, String)> {
    status
        .lines()
        .filter(|l| !l.starts_with("    "))
        .filter_map(|l| {
            let booted = l.starts_with('*');
            let mut words = l.trim_start_matches(['*', ' ']).split_whitespace();
            let _os = words.next()?;
            let checksum = words.next()?.split('.').next()?.to_owned();
            Some((booted, checksum))
        })
        .collect()
}

/// Events recorded on a Node: (reason, component).
async fn node_events(client: &Client, node: &str) -> Result<Vec<(String, String)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    Ok(api
        .list(&ListParams::default().fields(&format!("involvedObject.name={node}")))
        .await?
        .items
        .into_iter()
        .map(|e| {
            let component = e.source.and_then(|s| s.component).unwrap_or_default();
            (e.reason.unwrap_or_default(), component)
        })
        .collect())
}

/// Prints the Node changes recorded since `printed`.
fn print_changes(s: &Scenario, seen: &Mutex<Vec<Seen>>, printed: &mut usize) {
    let seen = seen.lock().expect("node record");
    for c in &seen[*printed..] {
        let v = &c.view;
        s.progress(&format!(
            "  Node {}: phase {} grant {}{}{}{} (rv {}, watch +{}s)",
            v.name,
            v.phase.map_or("-", AgentPhase::as_str),
            if v.grant.is_some() { "yes" } else { "no" },
            v.staged
                .as_ref()
                .map(|i| format!(", staged {i}"))
                .unwrap_or_default(),
            if v.unschedulable { ", cordoned" } else { "" },
            if v.ready { "" } else { ", NotReady" },
            c.resource_version,
            c.at.as_secs()
        ));
    }
    *printed = seen.len();
}

#[test]
fn testos_cluster_rolls_two_nodes_to_v2_one_at_a_time() -> Result<()> {
    scenario("cluster-rollout", |s: &Scenario| {
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let t = images::testos()?;
        let server = HttpServer::serve(&t.dir)?;
        let rig = rt.block_on(Rig::start(s))?;
        let read = |path: PathBuf| {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let coordinator = read(rig.credentials.join("coordinator.kubeconfig"))?;
        let kubelet = KubeletStandIn::new(rig.env.admin.clone());
        let _finisher = rt.block_on(async { kubelet.spawn_finisher(&rig.env.ns) });
        let seen = record_nodes(&rt, rig.env.admin.clone(), rig.nodes.clone());
        let vms = rig
            .nodes
            .iter()
            .map(|name| {
                let kubeconfig = read(rig.credentials.join(format!("nodes/{name}.kubeconfig")))?;
                let cfg = ignition(t, name, &kubeconfig, &coordinator)?;
                Ok(Vm {
                    s,
                    t,
                    name: name.clone(),
                    disk: s.testos_disk(t, name, Some(&cfg))?,
                    watchdog_check: *name == rig.nodes[0],
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let url = server.guest_url("repo");
        let stop = AtomicBool::new(false);
        let (up_tx, up_rx) = mpsc::channel();
        let (outcome, reports) = std::thread::scope(|scope| {
            let handles: Vec<_> = vms
                .iter()
                .map(|vm| {
                    let (url, up, stop) = (&url, up_tx.clone(), &stop);
                    let (kube, client) = (rt.handle().clone(), rig.env.admin.clone());
                    let kubelet = KubeletStandIn::new(rig.env.admin.clone());
                    scope.spawn(move || {
                        let r = vm.live(url, &kube, &kubelet, &client, &up, stop);
                        if r.is_err() {
                            stop.store(true, Ordering::SeqCst);
                        }
                        r
                    })
                })
                .collect();
            let outcome = drive(s, &rt, &rig, t, &up_rx, &stop, &seen, started);
            stop.store(true, Ordering::SeqCst);
            let reports: Vec<Result<NodeReport>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a machine's thread panicked")))
                })
                .collect();
            (outcome, reports)
        });
        let mut by_node = BTreeMap::new();
        for (vm, r) in vms.iter().zip(reports) {
            by_node.insert(
                vm.name.clone(),
                r.with_context(|| format!("machine {}", vm.name))?,
            );
        }
        let update = outcome?;
        s.progress(&format!(
            "hkctl status:\n{}",
            hkctl(&rig.admin_kubeconfig, &["status"])?.trim_end()
        ));
        rt.block_on(check(s, &rig, t, &update, &seen, &by_node))?;
        s.progress(&format!(
            "rollout of {} nodes done in {}s from the scenario's start",
            rig.nodes.len(),
            started.elapsed().as_secs()
        ));
        Ok(())
    })
}

/// The admin's part: once both machines are up, start the rollout with hkctl, then follow it
/// until the Update ends (or a machine fails, or the budget runs out).
#[allow(clippy::too_many_arguments)]
fn drive(
    s: &Scenario,
    rt: &Runtime,
    rig: &Rig,
    t: &Testos,
    up: &mpsc::Receiver<String>,
    stop: &AtomicBool,
    seen: &Mutex<Vec<Seen>>,
    started: Instant,
) -> Result<Update> {
    let deadline = started + SCENARIO_BUDGET;
    let mut waiting: Vec<&String> = rig.nodes.iter().collect();
    while !waiting.is_empty() {
        ensure!(!stop.load(Ordering::SeqCst), "a machine failed to come up");
        ensure!(
            Instant::now() < deadline,
            "machines {waiting:?} not up within the budget"
        );
        if let Ok(name) = up.recv_timeout(POLL) {
            waiting.retain(|n| **n != name);
            s.progress(&format!("{name} is up, hkd follows the cluster"));
        }
    }
    let selector = format!("kubernetes.io/hostname in ({})", rig.nodes.join(","));
    let image = target(t);
    let out = hkctl(
        &rig.admin_kubeconfig,
        &[
            "upgrade",
            "--image",
            &image,
            "--max-unavailable",
            "1",
            "--selector",
            &selector,
            "--evict-pod-force",
            "--allow-unverified",
        ],
    )?;
    s.progress(&format!("hkctl upgrade:\n{}", out.trim_end()));
    let updates = rig.updates();
    let mut printed = 0;
    let mut state = String::new();
    loop {
        print_changes(s, seen, &mut printed);
        if stop.load(Ordering::SeqCst) {
            bail!("a machine failed during the rollout (its error follows)");
        }
        let u = rt.block_on(updates.get(housekeeper::ctl::upgrade::DEFAULT_NAME))?;
        let now = u.status.as_ref().and_then(|s| s.state.clone());
        let now = now.unwrap_or_default();
        if now != state {
            s.progress(&format!("Update state: {now}"));
            state = now;
        }
        if state == "Complete" || state == "Halted" {
            return Ok(u);
        }
        if Instant::now() >= deadline {
            bail!(
                "the Update is still {state:?} after {}s; its status: {}",
                started.elapsed().as_secs(),
                serde_json::to_string(&u.status).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Everything the rollout must have left behind, and the way it went.
async fn check(
    s: &Scenario,
    rig: &Rig,
    t: &Testos,
    update: &Update,
    seen: &Mutex<Vec<Seen>>,
    reports: &BTreeMap<String, NodeReport>,
) -> Result<()> {
    let status = update.status.clone().unwrap_or_default();
    ensure!(
        status.state.as_deref() == Some("Complete"),
        "the Update ended {:?}: {}",
        status.state,
        serde_json::to_string(&status)?
    );
    let uid = update
        .metadata
        .uid
        .clone()
        .context("an Update without uid")?;
    let turns = {
        let seen = seen.lock().expect("node record");
        turns(&seen, &uid)?
    };
    ensure!(
        turns.len() == rig.nodes.len(),
        "not every node had its turn: {turns:?}"
    );
    for pair in turns.windows(2) {
        s.progress(&format!(
            "order: {} Done at resourceVersion {}, then {} granted at {}",
            pair[0].node, pair[0].done, pair[1].node, pair[1].granted
        ));
    }
    let nodes: Api<Node> = Api::all(rig.env.admin.clone());
    let pods: Api<Pod> = Api::namespaced(rig.env.admin.clone(), &rig.env.ns);
    let updates = rig.updates().list(&ListParams::default()).await?.items;
    for (name, short) in rig.nodes.iter().zip(NODES) {
        let mut v = NodeView::from_node(&nodes.get(name).await?);
        v.grant = housekeeper::cluster::ledger::grant_of(name, &updates).0;
        let r = &reports[name];
        let g = v
            .grant
            .clone()
            .with_context(|| format!("{name} has no grant"))?;
        ensure!(g.uid == uid, "{name}'s grant {g} is not the Update's");
        ensure!(
            v.phase_for(&g) == Some(AgentPhase::Done),
            "{name}: phase {:?}",
            v.phase
        );
        ensure!(
            !v.unschedulable && !v.cordoned_by_hkd,
            "{name} is still cordoned"
        );
        ensure!(
            v.os_image.as_deref() == Some(target(t).as_str()),
            "{name}'s os-image annotation is {:?}",
            v.os_image
        );
        ensure!(
            r.at_reboot.len() == 1,
            "{name} rebooted {} times: {:?}",
            r.at_reboot.len(),
            r.at_reboot
        );
        let down = &r.at_reboot[0];
        let n = &down.node;
        ensure!(
            n.unschedulable && n.cordoned_by_hkd,
            "{name} went down without hkd's cordon: {down:?}"
        );
        ensure!(
            n.grant.as_ref() == Some(&g) && !n.phase_for(&g).is_some_and(AgentPhase::is_terminal),
            "{name} went down without an open grant: {down:?}"
        );
        ensure!(
            down.drained,
            "{name} went down before hkd reported it Drained"
        );
        ensure!(
            down.coordinator.as_deref() != Some(name.as_str()),
            "{name} went down while it held the coordinator's Lease"
        );
        let d = deployments(&r.ostree_status);
        ensure!(
            d.first() == Some(&(true, t.versions[1].clone())) && r.version == "2",
            "{name}: want v2 ({}) booted: version {:?}, ostree admin status:\n{}",
            t.versions[1],
            r.version,
            r.ostree_status
        );
        ensure!(
            r.upgrade_done_logged,
            "{name}: no UPGRADE_DONE in hkd's journal"
        );
        let events = node_events(&rig.env.admin, name).await?;
        for (reason, component) in [
            ("Granted", housekeeper::cluster::coordinator::COMPONENT),
            ("Draining", "hkd"),
            ("Drained", "hkd"),
            ("Uncordoned", "hkd"),
            ("UpgradeDone", "hkd"),
        ] {
            ensure!(
                events.iter().any(|(r, c)| r == reason && c == component),
                "{name}: no {reason} Event from {component} in {events:?}"
            );
        }
        let pod = format!("app-{short}");
        ensure!(
            pods.get_opt(&pod).await?.is_none(),
            "pod {pod} on {name} was not drained"
        );
        s.progress(&format!(
            "{name}: Done on v2, cordoned while it rebooted, uncordoned, UPGRADE_DONE logged"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod order {
    use super::*;
    use housekeeper::cluster::annotations::Grant;

    fn seen(rv: u64, node: &str, grant: bool, phase: Option<AgentPhase>) -> Seen {
        let g = Grant {
            uid: "u".into(),
            generation: 1,
        };
        Seen {
            resource_version: rv,
            at: Duration::ZERO,
            view: NodeView {
                name: node.into(),
                grant: grant.then(|| g.clone()),
                phase,
                phase_grant: phase.map(|_| g.clone()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn one_node_after_the_other_is_in_order() {
        let log = [
            seen(1, "a", false, Some(AgentPhase::Staged)),
            seen(2, "a", true, Some(AgentPhase::Staged)),
            seen(3, "a", true, Some(AgentPhase::Rebooting)),
            seen(4, "a", true, Some(AgentPhase::Done)),
            seen(5, "b", true, Some(AgentPhase::Staged)),
            seen(6, "b", true, Some(AgentPhase::Done)),
        ];
        let t = turns(&log, "u").unwrap();
        assert_eq!(
            t,
            [
                Turn {
                    node: "a".into(),
                    granted: 2,
                    done: 4
                },
                Turn {
                    node: "b".into(),
                    granted: 5,
                    done: 6
                }
            ]
        );
    }

    #[test]
    fn two_nodes_in_flight_together_are_refused() {
        let log = [
            seen(2, "a", true, Some(AgentPhase::Staged)),
            seen(3, "b", true, Some(AgentPhase::Staged)),
            seen(4, "a", true, Some(AgentPhase::Done)),
            seen(5, "b", true, Some(AgentPhase::Done)),
        ];
        let e = turns(&log, "u").unwrap_err().to_string();
        assert!(e.contains("in flight together"), "{e}");
    }

    #[test]
    fn a_node_granted_but_never_done_is_refused() {
        let log = [
            seen(2, "a", true, Some(AgentPhase::Staged)),
            seen(4, "a", true, Some(AgentPhase::Failed)),
        ];
        let e = turns(&log, "u").unwrap_err().to_string();
        assert!(e.contains("never reported Done"), "{e}");
    }
}
