//! (d) The coordinator's memory with 2000 Nodes: peak resident set (VmHWM) of a process that
//! runs only the coordinator, while it plans and drives a rollout over all of them.
//!
//! The Nodes are registered by the kubelet stand-in and given a status of a real node's size:
//! 50 container images (the kubelet's default `nodeStatusMaxImages`), five conditions,
//! addresses, and the annotations kubeadm and a network plugin put there. This program then
//! runs itself as the coordinator process (production code, production Lease timings, a
//! current-thread runtime) with the admin kubeconfig the harness wrote, creates an Update
//! selecting the Nodes by label with maxUnavailable 20, and plays the agents of the granted
//! Nodes for [`WAVES`] waves (Done, straight away), so the coordinator re-plans over all
//! Nodes many times. VmHWM is read from /proc before the process is told to stop.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use housekeeper::cluster::annotations::{
    AgentPhase, NodeView, OS_IMAGE, PHASE, PHASE_GRANT, SINCE,
};
use housekeeper::cluster::coordinator::{Config, Coordinator};
use housekeeper::cluster::ledger;
use housekeeper::cluster::update::Update;
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::support::cluster::Cluster;
use crate::support::{KubeletStandIn, NodeRole, TestEnv};
use crate::{load, node_list, verdict};

/// The argument that makes this program the coordinator process.
pub const CHILD_ARG: &str = "coordinator-process";

const NODES: usize = 2000;
const MAX_UNAVAILABLE: usize = 20;
/// Waves of completions played after the first plan.
const WAVES: usize = 10;
/// Requests in flight while the Nodes are registered.
const SETUP_PARALLEL: usize = 16;
const GOAL_MIB: f64 = 100.0;
const POOL_LABEL: &str = "bench.housekeeper.io/pool";
const IMAGE: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";
/// Waiting for one wave's plan on a busy machine.
const WAVE_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run() -> Result<()> {
    println!(
        "(d) coordinator memory: {NODES} Nodes, maxUnavailable {MAX_UNAVAILABLE}, {WAVES} waves \
         of simulated completions; coordinator in its own process; load average {}",
        load()
    );
    let env = TestEnv::new("bench-memory").await?;
    crate::support::crd::install_update_crd(&env.admin).await?;
    let t = Instant::now();
    register_nodes(&env).await?;
    let nodes: Api<Node> = Api::all(env.admin.clone());
    let pool = ListParams::default().labels(&format!("{POOL_LABEL}={}", env.ns));
    let sample = nodes.list(&pool.clone().limit(1)).await?.items;
    let node_bytes = serde_json::to_vec(sample.first().context("no Node registered")?)?.len();
    println!(
        "    {NODES} Nodes registered in {:.0} s, {:.1} KiB of JSON each (as read back)",
        t.elapsed().as_secs_f64(),
        node_bytes as f64 / 1024.0
    );

    let kubeconfig = match env.cluster {
        Cluster::Local(l) => l.admin_kubeconfig.clone(),
        Cluster::External { kubeconfig } => kubeconfig.clone(),
    };
    let mut child = ChildCoordinator::start(&kubeconfig, &env.ns)?;
    let pid = child.pid();
    println!(
        "    coordinator process {pid} leads; VmHWM {:.1} MiB",
        status_mib(pid, "VmHWM")?
    );

    let updates: Api<Update> = Api::namespaced(env.admin.clone(), &env.ns);
    let t0 = Instant::now();
    create_update(&updates, &env.ns).await?;
    wait_counts(&updates, 0).await?;
    println!(
        "    first plan (all {NODES} Nodes counted, {MAX_UNAVAILABLE} granted) after {:.2} s; \
         VmHWM {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        status_mib(pid, "VmHWM")?
    );
    let t1 = Instant::now();
    for wave in 1..=WAVES {
        finish_granted(&nodes, &updates, &pool).await?;
        wait_counts(&updates, wave * MAX_UNAVAILABLE).await?;
    }
    let waves = t1.elapsed();
    let hwm = status_mib(pid, "VmHWM")?;
    let rss = status_mib(pid, "VmRSS")?;
    child.stop()?;
    println!(
        "    {WAVES} waves ({} nodes Done, each wave re-planned over all {NODES}) in {:.1} s",
        WAVES * MAX_UNAVAILABLE,
        waves.as_secs_f64()
    );
    println!(
        "  (d) coordinator peak RSS (VmHWM) {hwm:.1} MiB, RSS at the end {rss:.1} MiB \
         (goal ≤ {GOAL_MIB:.0} MiB): {}",
        verdict(hwm <= GOAL_MIB)
    );
    for (mode, what) in [
        ("full", "one list of all Nodes at once, into Vec<Node>"),
        (
            "paged",
            "the coordinator's read: pages of 500, each turned into NodeView at once",
        ),
    ] {
        let (before, after, n) = node_list::measure(&kubeconfig, mode)?;
        println!(
            "    where it goes: {what}, {n} Nodes, in a fresh process: VmHWM {before:.1} → \
             {after:.1} MiB (+{:.1})",
            after - before
        );
    }
    println!("  load average after: {}", load());
    Ok(())
}

/// Register the Nodes, each with the labels, annotations and status of a real node's size.
async fn register_nodes(env: &TestEnv) -> Result<()> {
    let kubelet = KubeletStandIn::new(env.admin.clone());
    let nodes: Api<Node> = Api::all(env.admin.clone());
    futures::stream::iter(0..NODES)
        .map(|i| {
            let (kubelet, nodes) = (&kubelet, &nodes);
            async move {
                let n = kubelet
                    .register_node(env, &format!("n-{i:04}"), NodeRole::Worker)
                    .await?;
                let name = n.metadata.name.context("registered Node without a name")?;
                nodes
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(real_meta(&env.ns, i)),
                    )
                    .await
                    .with_context(|| format!("labelling node {name}"))?;
                nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(real_status(i)),
                    )
                    .await
                    .with_context(|| format!("reporting the status of node {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<()>()
        .await
}

/// Labels, annotations and spec as kubeadm and a network plugin leave them on a node.
fn real_meta(pool: &str, i: usize) -> Value {
    json!({
        "metadata": {
            "labels": {
                POOL_LABEL: pool,
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "c6.2xlarge",
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "flannel.alpha.coreos.com/backend-data": format!("{{\"VNI\":1,\"VtepMAC\":\"5e:2a:{:02x}:{:02x}:10:01\"}}", i / 256, i % 256),
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": format!("10.1.{}.{}", i / 256, i % 256),
            },
        },
        "spec": {"podCIDR": format!("10.244.{}.0/24", i % 256), "podCIDRs": [format!("10.244.{}.0/24", i % 256)]},
    })
}

/// A node status of a real node's size: 50 images with digests, five conditions, addresses.
fn real_status(i: usize) -> Value {
    let digest = |k: usize| {
        format!(
            "{:064x}",
            (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15 + k as u128
        )
    };
    let images: Vec<Value> = (0..50)
        .map(|k| {
            let repo = format!("registry.example.com/team-{}/service-{k}", k % 7);
            json!({
                "names": [format!("{repo}@sha256:{}", digest(k)), format!("{repo}:v1.{k}.{}", i % 10)],
                "sizeBytes": 20_000_000 + k * 1_000_003,
            })
        })
        .collect();
    let cond = |t: &str, s: &str, reason: &str, message: &str| {
        json!({
            "type": t, "status": s, "reason": reason, "message": message,
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z",
        })
    };
    let capacity = json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi", "hugepages-2Mi": "0"});
    json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            cond("NetworkUnavailable", "False", "FlannelIsUp", "Flannel is running on this node"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": format!("10.1.{}.{}", i / 256, i % 256)},
            {"type": "Hostname", "address": format!("node-{i:04}")},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "images": images,
    }})
}

async fn create_update(updates: &Api<Update>, pool: &str) -> Result<()> {
    let u: Update = serde_json::from_value(json!({
        "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
        "metadata": {"name": "bench"},
        "spec": {
            "osImageURL": IMAGE,
            "maxUnavailable": MAX_UNAVAILABLE,
            "nodeSelector": {"matchLabels": {POOL_LABEL: pool}},
        },
    }))?;
    updates
        .create(&PostParams::default(), &u)
        .await
        .context("creating the Update")?;
    Ok(())
}

/// Wait until the Update's status counts all Nodes, `done` of them Done and a full wave in
/// flight.
async fn wait_counts(updates: &Api<Update>, done: usize) -> Result<()> {
    let deadline = Instant::now() + WAVE_TIMEOUT;
    loop {
        let u = updates.get("bench").await?;
        let c = u.status.unwrap_or_default().counts;
        let want = (NODES, done, MAX_UNAVAILABLE);
        if (c.total as usize, c.done as usize, c.in_flight as usize) == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Update status counts {c:?} after {WAVE_TIMEOUT:?}, want total, done, in flight {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Play the agents of the granted, unfinished Nodes (their grants read from the Update's
/// ledger): each reports Done for its grant.
async fn finish_granted(nodes: &Api<Node>, updates: &Api<Update>, pool: &ListParams) -> Result<()> {
    let all = nodes.list_metadata(pool).await?.items;
    let ledgers = updates.list(&ListParams::default()).await?.items;
    let mut views: Vec<NodeView> = all
        .iter()
        .map(|m| {
            NodeView::from_node(&Node {
                metadata: m.metadata.clone(),
                ..Default::default()
            })
        })
        .collect();
    let refused = ledger::attach(&mut views, &ledgers);
    ensure!(refused.is_empty(), "ledger records refused: {refused:?}");
    let granted: Vec<(String, String)> = views
        .into_iter()
        .filter_map(|v| {
            let g = v.grant.clone()?;
            (!v.phase_for(&g).is_some_and(AgentPhase::is_terminal)).then(|| (v.name, g.to_string()))
        })
        .collect();
    ensure!(
        granted.len() == MAX_UNAVAILABLE,
        "{} Nodes in flight, want {MAX_UNAVAILABLE}",
        granted.len()
    );
    futures::stream::iter(granted)
        .map(|(name, grant)| async move {
            let patch = json!({"metadata": {"annotations": {
                PHASE: AgentPhase::Done.as_str(),
                PHASE_GRANT: grant,
                SINCE: jiff::Timestamp::now().to_string(),
                OS_IMAGE: IMAGE,
            }}});
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("reporting Done on node {name}"))
        })
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// A field of /proc/PID/status in MiB (the kernel gives kB).
fn status_mib(pid: u32, field: &str) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// This program as the coordinator process; stops when its stdin closes.
struct ChildCoordinator {
    child: Child,
}

impl ChildCoordinator {
    fn start(kubeconfig: &Path, namespace: &str) -> Result<ChildCoordinator> {
        let exe = std::env::current_exe().context("finding this program")?;
        let mut child = Command::new(exe)
            .arg(CHILD_ARG)
            .arg(kubeconfig)
            .arg(namespace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the coordinator process")?;
        let mut line = String::new();
        let out = child.stdout.take().context("coordinator stdout")?;
        BufReader::new(out).read_line(&mut line)?;
        let mut me = ChildCoordinator { child };
        if line.trim() != "leading" {
            me.stop()?;
            bail!("the coordinator process did not lead: {line:?}");
        }
        Ok(me)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Close its stdin (it steps down and exits) and wait for it.
    fn stop(&mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        ensure!(
            status.success(),
            "the coordinator process ended with {status}"
        );
        Ok(())
    }
}

impl Drop for ChildCoordinator {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The coordinator process: `coordinator-process KUBECONFIG NAMESPACE`. Prints `leading` once
/// it leads; steps down and exits when stdin closes.
pub fn coordinator_process(args: &[String]) -> Result<()> {
    let [kubeconfig, namespace] = args else {
        bail!("usage: {CHILD_ARG} KUBECONFIG NAMESPACE");
    };
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    let (stop, stop_rx) = watch::channel(false);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        stop.send_replace(true);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client =
            crate::support::cluster::client_from_kubeconfig_file(Path::new(kubeconfig)).await?;
        let c = Coordinator::new(
            client,
            Config {
                namespace: namespace.clone(),
                ..Config::new("bench-memory-coordinator")
            },
        );
        let mut leading = c.leading();
        let task = tokio::spawn(c.run(stop_rx));
        leading.wait_for(|l| *l).await?;
        println!("leading");
        task.await?
    })
}
