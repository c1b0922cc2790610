//! `hkctl status` over 2000 Nodes, against `kubectl get nodes` on the same Nodes: figures,
//! not a test. `tools/bench-hkctl-status.sh` builds and runs it.
//!
//! The API server is the kube-tests tier's (`tests/support`), started for this process and
//! stopped when it ends. The Nodes are registered with a status of a real node's size (Ready,
//! capacity, addresses, node info and a list of cached images, about 6 KiB each) and the
//! annotations of a rollout in its middle: a third done, a few in flight, the rest pending;
//! the grants of the nodes done and in flight are entries of the Update's ledger (its
//! status), as the coordinator records them.
//! Both programs are run as an admin runs them (a new process each time, output to a pipe),
//! alternately, after one warm-up run each.

// Only part of the support module is used here.
#[allow(unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use housekeeper::cluster::annotations::{OS_IMAGE, PHASE, PHASE_GRANT, SINCE};
use housekeeper::cluster::update::Update;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use support::TestEnv;

const NODES: usize = 2000;
const RUNS: usize = 7;
/// Requests in flight while registering the Nodes.
const PARALLEL: usize = 32;
const OLD: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:1";
const NEW: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";
const LABEL: &str = "bench.housekeeper.io/status";

fn node_name(i: usize) -> String {
    format!("bench-node-{i:04}")
}

/// The phase node `i` answered its grant with, when it was granted.
fn phase(i: usize) -> Option<&'static str> {
    match i % 3 {
        0 => Some("Done"),
        _ if i % 97 == 1 => Some("Draining"),
        _ => None,
    }
}

/// A Node as a kubelet of a real cluster leaves it, with the protocol's annotations.
fn node(i: usize, grant: &str) -> Result<Node> {
    let name = node_name(i);
    let mut ann = serde_json::Map::new();
    let image = if phase(i) == Some("Done") { NEW } else { OLD };
    ann.insert(OS_IMAGE.into(), json!(image));
    if let Some(p) = phase(i) {
        ann.insert(PHASE.into(), json!(p));
        ann.insert(PHASE_GRANT.into(), json!(grant));
        ann.insert(SINCE.into(), json!(jiff::Timestamp::now().to_string()));
    }
    let images: Vec<_> = (0..40)
        .map(|k| {
            json!({
                "names": [
                    format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", k * 7919 + i),
                    format!("registry.example.com/team-{k}/service-{k}:v1.{k}.{i}"),
                ],
                "sizeBytes": 12_345_678 + k,
            })
        })
        .collect();
    let capacity = json!({"cpu": "16", "memory": "65531060Ki", "pods": "110",
        "ephemeral-storage": "101430960Ki", "hugepages-2Mi": "0"});
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m5.4xlarge",
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3), LABEL: "true",
            },
            "annotations": ann,
        },
        "spec": {"podCIDR": format!("10.{}.{}.0/24", i / 256, i % 256)},
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure"},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status"},
            ],
            "addresses": [
                {"type": "InternalIP", "address": format!("10.0.{}.{}", i / 256, i % 256)},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
                "osImage": "NestOS For Container 22.03", "architecture": "amd64",
                "operatingSystem": "linux", "kernelVersion": "5.10.0-153.12.0.92.oe2203sp2.x86_64",
                "containerRuntimeVersion": "containerd://1.6.20",
                "machineID": format!("{i:032x}"), "systemUUID": format!("{i:032x}"),
                "bootID": format!("{i:032x}"),
            },
            "images": images,
        },
    }))?)
}

/// Run a program; its wall time (stdout kept, to check it worked).
fn time(program: &Path, args: &[&str]) -> Result<(Duration, String)> {
    let t0 = Instant::now();
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    let took = t0.elapsed();
    ensure!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let env = TestEnv::new("bench-status").await?;
    let kubeconfig = match env.cluster {
        support::cluster::Cluster::Local(l) => l.admin_kubeconfig.clone(),
        support::cluster::Cluster::External { kubeconfig } => kubeconfig.clone(),
    };
    support::crd::install_update_crd(&env.admin).await?;
    let updates: Api<Update> = Api::namespaced(env.admin.clone(), &env.ns);
    let u: Update = serde_json::from_value(json!({
        "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
        "metadata": {"name": "os"},
        "spec": {"osImageURL": NEW, "maxUnavailable": 25,
                 "nodeSelector": {"matchLabels": {LABEL: "true"}}},
    }))?;
    let u = updates.create(&PostParams::default(), &u).await?;
    let grant = format!("{}/1", u.metadata.uid.clone().unwrap_or_default());

    let t0 = Instant::now();
    let nodes: Api<Node> = Api::all(env.admin.clone());
    futures::stream::iter(0..NODES)
        .map(|i| {
            let nodes = nodes.clone();
            let grant = grant.clone();
            async move {
                let n = node(i, &grant)?;
                nodes.create(&PostParams::default(), &n).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    // The grants, as the coordinator records them: its term and one entry per node granted.
    let granted_at = jiff::Timestamp::now().to_string();
    let ledger: serde_json::Map<String, serde_json::Value> = (0..NODES)
        .filter(|i| phase(*i).is_some())
        .map(|i| {
            let record = json!({"generation": 1, "term": 1, "grantedAt": granted_at});
            (node_name(i), record)
        })
        .collect();
    let entries = ledger.len();
    updates
        .patch_status(
            "os",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"coordinatorTerm": 1, "grants": ledger}})),
        )
        .await
        .context("recording the grants in the Update's ledger")?;
    let size = serde_json::to_vec(&node(1, &grant)?)?.len();
    eprintln!(
        "registered {NODES} Nodes of {:.1} KiB and {entries} grants in {:.1} s",
        size as f64 / 1024.0,
        t0.elapsed().as_secs_f64()
    );

    let hkctl = Path::new(env!("CARGO_BIN_EXE_hkctl"));
    let kubectl = Path::new("kubectl");
    let kc = kubeconfig.to_str().context("kubeconfig path")?;
    let hk_args = ["--kubeconfig", kc, "-n", &env.ns, "status"];
    let hk_json = ["--kubeconfig", kc, "-n", &env.ns, "status", "-o", "json"];
    let kc_args = ["--kubeconfig", kc, "get", "nodes"];
    let (_, table) = time(hkctl, &hk_args)?;
    ensure!(
        table.lines().count() > NODES,
        "hkctl status printed {} lines",
        table.lines().count()
    );
    time(hkctl, &hk_json)?;
    time(kubectl, &kc_args)?;
    let (mut hk, mut hj, mut kb) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        hk.push(time(hkctl, &hk_args)?.0);
        hj.push(time(hkctl, &hk_json)?.0);
        kb.push(time(kubectl, &kc_args)?.0);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    let (h, j, k) = (median(hk.clone()), median(hj), median(kb.clone()));
    println!("hkctl status over {NODES} Nodes ({:.1} KiB each), median of {RUNS} runs, load average {load}:", size as f64 / 1024.0);
    println!(
        "  hkctl status              {}  (min {}, max {})  goal < 1 s: {}",
        secs(h),
        secs(*hk.iter().min().unwrap()),
        secs(*hk.iter().max().unwrap()),
        if h < Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("  hkctl status -o json      {}", secs(j));
    println!(
        "  kubectl get nodes (peer)  {}  (min {}, max {})",
        secs(k),
        secs(*kb.iter().min().unwrap()),
        secs(*kb.iter().max().unwrap())
    );
    println!(
        "  hkctl status / kubectl get nodes: {:.2}",
        h.as_secs_f64() / k.as_secs_f64()
    );
    Ok(())
}
