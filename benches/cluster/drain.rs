//! (c) Draining a Node with 100 pods: the production [`Drainer`] against `kubectl drain`, on
//! the same API server, the same Node and the same pods.
//!
//! Before every run the 100 pods are created again (owned by a ReplicaSet, so neither drain
//! asks for `--force`; no ReplicaSet controller runs, so nothing replaces them) and reported
//! Running and Ready by the kubelet stand-in. A watch here plays the kubelet's part after an
//! eviction: it finishes each terminating pod at once (delete with grace period 0, guarded by
//! UID), the same for both drains. A run counts only when all 100 pods were evicted and are
//! gone. Runs alternate (ours, kubectl, kubectl, ours, …) so that drift in the machine's load
//! touches both alike. Each run is timed from the start of the cordon to the drain's return;
//! kubectl's includes its process start (its discovery cache is warmed before the first run).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use housekeeper::cluster::kube_drain::{DrainOutcome, Drainer, Tuning};
use housekeeper::cluster::update::DrainPolicy;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::support::cluster::Cluster;
use crate::support::{KubeletStandIn, NodeRole, TestEnv};
use crate::{load, quantile, verdict};

const PODS: usize = 100;
/// Runs of each drain; the figure is each one's median.
const ROUNDS: usize = 3;
/// Requests in flight while the pods are created.
const SETUP_PARALLEL: usize = 8;
const REPLICA_SET: &str = "bench-web";

pub async fn run() -> Result<()> {
    let kubectl = kubectl_version().await?;
    println!(
        "(c) drain: one Node with {PODS} pods, our Drainer vs kubectl drain ({kubectl}), \
         {ROUNDS} runs each; load average {}",
        load()
    );
    let env = TestEnv::new("bench-drain").await?;
    let kubeconfig = admin_kubeconfig(env.cluster);
    let node = KubeletStandIn::new(env.admin.clone())
        .register_node(&env, "drain", NodeRole::Worker)
        .await?
        .metadata
        .name
        .context("registered Node without a name")?;
    let rs = create_replica_set(&env).await?;
    let finisher = tokio::spawn(finish_terminating(env.admin.clone(), env.ns.clone()));

    // kubectl caches the server's discovery on first use; an admin's kubectl has it warm.
    kubectl_cmd(&kubeconfig, &["get", "node", &node]).await?;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..ROUNDS * 2 {
        // ours, kubectl, kubectl, ours, ours, kubectl, …
        let ours_now = (round % 4 == 0) || (round % 4 == 3);
        create_pods(&env, &node, &rs).await?;
        let took = if ours_now {
            drain_ours(&env.admin, &node).await?
        } else {
            drain_kubectl(&kubeconfig, &node).await?
        };
        let left = pods_left(&env).await?;
        ensure!(left == 0, "{left} pods still exist after a drain");
        let who = if ours_now { "ours" } else { "kubectl" };
        println!("    run {}: {who:8} {:.2} s", round + 1, took.as_secs_f64());
        if ours_now {
            ours.push(took);
        } else {
            theirs.push(took);
        }
    }
    finisher.abort();
    ours.sort();
    theirs.sort();
    let (o, k) = (quantile(&ours, 0.5), quantile(&theirs, 0.5));
    let ratio = o.as_secs_f64() / k.as_secs_f64();
    println!(
        "  (c) median of {ROUNDS}: ours {:.2} s, kubectl drain {:.2} s: ours/kubectl {ratio:.2} \
         (goal ≤ 1.00, ours not slower): {}",
        o.as_secs_f64(),
        k.as_secs_f64(),
        verdict(ratio <= 1.0)
    );
    println!("  load average after: {}", load());
    Ok(())
}

fn admin_kubeconfig(cluster: &Cluster) -> PathBuf {
    match cluster {
        Cluster::Local(l) => l.admin_kubeconfig.clone(),
        Cluster::External { kubeconfig } => kubeconfig.clone(),
    }
}

/// Cordon and drain with the production code and its default tuning and policy; then lift
/// the cordon for the next run.
async fn drain_ours(client: &Client, node: &str) -> Result<Duration> {
    let drainer = Drainer::new(client.clone(), Tuning::default());
    let t0 = Instant::now();
    drainer.cordon(node, "bench").await?;
    let report = drainer.drain(node, &DrainPolicy::default()).await?;
    let took = t0.elapsed();
    ensure!(
        report.outcome == DrainOutcome::Drained && report.evicted.len() == PODS,
        "our drain did not evict all {PODS} pods: {}",
        report.summary()
    );
    drainer.uncordon(node).await?;
    Ok(took)
}

/// `kubectl drain` (cordon and drain), then `kubectl uncordon` for the next run.
async fn drain_kubectl(kubeconfig: &std::path::Path, node: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let out = kubectl_cmd(kubeconfig, &["drain", node, "--timeout=300s"]).await?;
    let took = t0.elapsed();
    kubectl_cmd(kubeconfig, &["uncordon", node]).await?;
    let evicted = out.lines().filter(|l| l.contains(" evicted")).count();
    ensure!(
        evicted == PODS,
        "kubectl drain reported {evicted} pods evicted, not {PODS}:\n{out}"
    );
    Ok(took)
}

async fn kubectl_cmd(kubeconfig: &std::path::Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running kubectl: put one on PATH (tools/bench-cluster.sh builds v1.20.2 from Debian's source when none is there)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}):\n{text}",
            args.join(" "),
            out.status
        );
    }
    Ok(text)
}

async fn kubectl_version() -> Result<String> {
    let out = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .context("running kubectl: put one on PATH (tools/bench-cluster.sh builds v1.20.2 from Debian's source when none is there)")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading kubectl version --client -o json")?;
    Ok(format!(
        "kubectl {}",
        v["clientVersion"]["gitVersion"]
            .as_str()
            .unwrap_or("unknown")
    ))
}

/// The pods' owner: a ReplicaSet that no controller acts on here.
async fn create_replica_set(env: &TestEnv) -> Result<ReplicaSet> {
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": REPLICA_SET},
        "spec": {
            "replicas": PODS,
            "selector": {"matchLabels": {"app": REPLICA_SET}},
            "template": {
                "metadata": {"labels": {"app": REPLICA_SET}},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/housekeeper/stand-in:1"}]},
            },
        },
    }))?;
    Api::<ReplicaSet>::namespaced(env.admin.clone(), &env.ns)
        .create(&PostParams::default(), &rs)
        .await
        .context("creating the pods' ReplicaSet")
}

/// Create the pods on `node`, Running and Ready, owned by `rs`.
async fn create_pods(env: &TestEnv, node: &str, rs: &ReplicaSet) -> Result<()> {
    let kubelet = KubeletStandIn::new(env.admin.clone());
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    let owner = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.name_any(),
        "uid": rs.metadata.uid, "controller": true,
    }]}});
    futures::stream::iter(0..PODS)
        .map(|i| {
            let (kubelet, pods, owner, ns) = (&kubelet, &pods, &owner, &env.ns);
            async move {
                let name = format!("{REPLICA_SET}-{i:03}");
                kubelet
                    .run_pod(ns, &name, node, &[("app", REPLICA_SET)])
                    .await?;
                pods.patch(&name, &PatchParams::default(), &Patch::Merge(owner))
                    .await
                    .with_context(|| format!("setting the owner of pod {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<()>()
        .await
}

async fn pods_left(env: &TestEnv) -> Result<usize> {
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    Ok(pods.list(&ListParams::default()).await?.items.len())
}

/// The kubelet's part after an eviction, driven by a watch: every pod that gets a
/// deletionTimestamp is finished at once (grace period 0, UID precondition).
async fn finish_terminating(client: Client, ns: String) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let mut stream = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
            continue;
        };
        if p.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let pods = pods.clone();
        tokio::spawn(async move {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: p.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match pods.delete(&p.name_any(), &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => eprintln!("kubelet stand-in: finishing pod {}: {e}", p.name_any()),
            }
        });
    }
}
