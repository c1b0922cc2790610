//! (a) A rollout's wall time against the ideal, and (b) the time from a node reporting Done
//! to the next grant.
//!
//! 60 worker Nodes (no control plane: control-plane nodes go one at a time, and the ideal
//! below assumes every wave is full), one Update with maxUnavailable 6, the production
//! coordinator in this process with production Lease timings. Each node's agent is simulated:
//! it watches its own Node (a field-selected watch) and the Updates, whose ledgers hold the
//! grants, as hkd does, and on a grant reports
//! Staging, Draining, Rebooting and Verifying at fixed offsets, then Done exactly [`WORK`]
//! after it saw the grant. So each node's own time is fixed, and whatever the rollout takes
//! beyond `NODES / MAX_UNAVAILABLE × WORK` is the coordinator's and the API server's.
//!
//! Latency (b): I1 keeps at most 6 nodes in flight, so the k-th node to report Done frees
//! the slot that the (6 + k)-th grant fills; the latency is from the moment the k-th Done
//! report is sent to the moment the (6 + k)-th grant reaches its agent's watch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use housekeeper::cluster::annotations::{
    AgentPhase, Grant, NodeView, OS_IMAGE, PHASE, PHASE_GRANT, REASON, SINCE,
};
use housekeeper::cluster::coordinator::{Config, Coordinator};
use housekeeper::cluster::ledger;
use housekeeper::cluster::plan::COMPLETE;
use housekeeper::cluster::update::Update;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::support::{KubeletStandIn, NodeRole, TestEnv};
use crate::{load, quantile, verdict};

const NODES: usize = 60;
const MAX_UNAVAILABLE: usize = 6;
/// Each node's own time from its grant to its Done report.
const WORK: Duration = Duration::from_secs(2);
const IMAGE: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";
/// A rollout that has not finished by then is reported as failed.
const TIMEOUT: Duration = Duration::from_secs(300);
/// Requests in flight while the Nodes are registered.
const SETUP_PARALLEL: usize = 8;

/// When each grant reached its agent and when each Done report was sent.
#[derive(Default)]
struct Records {
    grants: Vec<(Instant, String)>,
    dones: Vec<(Instant, String)>,
}

/// A Prometheus of this benchmark's own (scraping itself every second), killed on drop.
struct Prometheus {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prometheus() -> Result<Prometheus> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n- job_name: prometheus\n  static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        ),
    )?;
    let child = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context(
            "starting prometheus (apt-get install prometheus; tools/bench-cluster.sh installs it)",
        )?;
    let url = format!("http://127.0.0.1:{port}");
    let p = Prometheus {
        child,
        _dir: dir,
        url,
    };
    let ready = format!("{}/-/ready", p.url);
    for _ in 0..300 {
        let r = ready.clone();
        if tokio::task::spawn_blocking(move || ureq::get(&r).call().is_ok()).await? {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("prometheus at {} was not ready within 60 s", p.url)
}

/// (a) and (b) with reboot gates that never hold, asked before every plan.
pub async fn run_gated() -> Result<()> {
    let prom = start_prometheus().await?;
    let gates = json!({
        "prometheusURL": prom.url,
        "queries": [{"expr": "up{job=\"prometheus\"} == 0", "nodeLabel": "node"}],
        "alerts": [{"matchers": ["severity=\"critical\"", "node=\"$node\""]}],
    });
    run(Some(gates)).await
}

pub async fn run(gates: Option<serde_json::Value>) -> Result<()> {
    println!(
        "(a)+(b) rollout: {NODES} Nodes, maxUnavailable {MAX_UNAVAILABLE}, each node's work {} s \
         (simulated agents: phase annotations, no drain or reboot){}; load average {}",
        WORK.as_secs_f64(),
        if gates.is_some() {
            ", with a query and an alert filter asked of a real Prometheus before every plan"
        } else {
            ""
        },
        load()
    );
    let env = TestEnv::new("bench-rollout").await?;
    crate::support::crd::install_update_crd(&env.admin).await?;
    let kubelet = KubeletStandIn::new(env.admin.clone());
    let names: Vec<String> = futures::stream::iter(1..=NODES)
        .map(|i| {
            let (kubelet, env) = (&kubelet, &env);
            async move {
                let n = kubelet
                    .register_node(env, &format!("w-{i:02}"), NodeRole::Worker)
                    .await?;
                n.metadata.name.context("registered Node without a name")
            }
        })
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect()
        .await?;

    let records = Arc::new(Mutex::new(Records::default()));
    let (ready_tx, mut ready_rx) = mpsc::channel(NODES);
    let agents: Vec<_> = names
        .iter()
        .map(|n| {
            tokio::spawn(agent(
                env.admin.clone(),
                env.ns.clone(),
                n.clone(),
                records.clone(),
                ready_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..NODES {
        ready_rx.recv().await.context("a simulated agent ended")?;
    }

    let coordinator = Coordinator::new(
        env.admin.clone(),
        Config {
            namespace: env.ns.clone(),
            ..Config::new("bench-coordinator")
        },
    );
    let mut leading = coordinator.leading();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(coordinator.run(stop_rx));
    tokio::time::timeout(Duration::from_secs(60), leading.wait_for(|l| *l))
        .await
        .context("the coordinator did not lead within 60 s")??;

    let updates: Api<Update> = Api::namespaced(env.admin.clone(), &env.ns);
    // The watch runs before the Update exists, so Complete is seen as it happens.
    let complete = tokio::spawn(wait_complete(updates.clone(), "bench"));
    let t0 = Instant::now();
    create_update(&updates, &names, gates).await?;
    let t_complete = tokio::time::timeout(TIMEOUT, complete)
        .await
        .context("the rollout did not complete in time")???;
    stop.send_replace(true);
    task.await.context("coordinator task")??;
    for a in agents {
        a.abort();
    }

    let r = std::mem::take(&mut *records.lock().expect("records"));
    print_figures(&r, t0, t_complete)
}

fn print_figures(r: &Records, t0: Instant, t_complete: Instant) -> Result<()> {
    let granted: BTreeSet<&str> = r.grants.iter().map(|(_, n)| n.as_str()).collect();
    let done: BTreeSet<&str> = r.dones.iter().map(|(_, n)| n.as_str()).collect();
    ensure!(
        r.grants.len() == NODES && granted.len() == NODES && done.len() == NODES,
        "expected each of {NODES} nodes granted once and done once: {} grants of {} nodes, \
         {} done",
        r.grants.len(),
        granted.len(),
        done.len()
    );
    let mut grants: Vec<Instant> = r.grants.iter().map(|(t, _)| *t).collect();
    let mut dones: Vec<Instant> = r.dones.iter().map(|(t, _)| *t).collect();
    grants.sort();
    dones.sort();
    let ideal = WORK * (NODES.div_ceil(MAX_UNAVAILABLE) as u32);
    let wall = t_complete - t0;
    let last_done = *dones.last().expect("dones") - t0;
    let ratio = wall.as_secs_f64() / ideal.as_secs_f64();
    println!(
        "  (a) wall time {:.2} s (Update created → status Complete; last Done sent at {:.2} s), \
         ideal {:.0} s: ratio {ratio:.3} (goal ≤ 1.10): {}",
        wall.as_secs_f64(),
        last_done.as_secs_f64(),
        ideal.as_secs_f64(),
        verdict(ratio <= 1.10)
    );
    let first_grant = grants[0] - t0;
    let mut lat: Vec<Duration> = dones
        .iter()
        .zip(&grants[MAX_UNAVAILABLE..])
        .map(|(d, g)| g.saturating_duration_since(*d))
        .collect();
    lat.sort();
    let median = quantile(&lat, 0.5);
    println!(
        "  (b) Done → next grant over {} handoffs: median {:.3} s, p90 {:.3} s, max {:.3} s \
         (goal median ≤ 0.5 s): {}; first grant {:.3} s after the Update was created",
        lat.len(),
        median.as_secs_f64(),
        quantile(&lat, 0.9).as_secs_f64(),
        lat.last().copied().unwrap_or_default().as_secs_f64(),
        verdict(median <= Duration::from_millis(500)),
        first_grant.as_secs_f64()
    );
    println!("  load average after: {}", load());
    Ok(())
}

async fn create_update(
    updates: &Api<Update>,
    names: &[String],
    gates: Option<serde_json::Value>,
) -> Result<()> {
    let mut u = json!({
        "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
        "metadata": {"name": "bench"},
        "spec": {
            "osImageURL": IMAGE,
            "maxUnavailable": MAX_UNAVAILABLE,
            "nodeSelector": {"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": names,
            }]},
        },
    });
    if let Some(g) = gates {
        u["spec"]["gates"] = g;
    }
    let u: Update = serde_json::from_value(u)?;
    updates
        .create(&PostParams::default(), &u)
        .await
        .context("creating the Update")?;
    Ok(())
}

/// Resolves with the moment a watch on the Update sees it Complete.
async fn wait_complete(updates: Api<Update>, name: &str) -> Result<Instant> {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(updates, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        if let Ok(watcher::Event::Apply(u) | watcher::Event::InitApply(u)) = ev {
            if u.status.and_then(|s| s.state).as_deref() == Some(COMPLETE) {
                return Ok(Instant::now());
            }
        }
    }
    anyhow::bail!("the watch on Update {name} ended")
}

/// What a simulated agent's two watches deliver.
enum Seen {
    Node(Box<Node>),
    Update(Box<Update>),
    NodeListed,
    UpdatesListed,
}

/// A simulated node agent: watch the own Node and the Updates of `ns` (their ledgers hold the
/// grants), answer each new grant with the phases, Done exactly [`WORK`] after the grant was
/// seen.
async fn agent(
    client: Client,
    ns: String,
    node: String,
    records: Arc<Mutex<Records>>,
    ready: mpsc::Sender<()>,
) {
    let api: Api<Node> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let nodes = watcher(api, cfg)
        .default_backoff()
        .filter_map(|ev| async move {
            match ev.ok()? {
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                    Some(Seen::Node(Box::new(n)))
                }
                watcher::Event::InitDone => Some(Seen::NodeListed),
                _ => None,
            }
        });
    let updates = watcher(
        Api::<Update>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|ev| async move {
        match ev.ok()? {
            watcher::Event::Apply(u) | watcher::Event::InitApply(u) => {
                Some(Seen::Update(Box::new(u)))
            }
            watcher::Event::InitDone => Some(Seen::UpdatesListed),
            _ => None,
        }
    });
    let mut stream = futures::stream::select(nodes.boxed(), updates.boxed());
    let mut handled: Option<Grant> = None;
    let mut own: Option<Node> = None;
    let mut ledgers: BTreeMap<String, Update> = BTreeMap::new();
    let mut listed = (false, false);
    let mut told_ready = false;
    while let Some(seen) = stream.next().await {
        match seen {
            Seen::Node(n) => own = Some(*n),
            Seen::Update(u) => {
                ledgers.insert(u.metadata.uid.clone().unwrap_or_default(), *u);
            }
            Seen::NodeListed => listed.0 = true,
            Seen::UpdatesListed => listed.1 = true,
        }
        if listed == (true, true) && !told_ready {
            told_ready = true;
            let _ = ready.try_send(());
        }
        let Some(n) = &own else { continue };
        let v = NodeView::from_node(n);
        let all: Vec<Update> = ledgers.values().cloned().collect();
        let Some(g) = ledger::grant_of(&node, &all).0 else {
            continue;
        };
        if handled.as_ref() == Some(&g) || v.phase_for(&g).is_some_and(AgentPhase::is_terminal) {
            continue;
        }
        handled = Some(g.clone());
        let seen = Instant::now();
        records
            .lock()
            .expect("records")
            .grants
            .push((seen, node.clone()));
        let g = g.to_string();
        let phases = [
            AgentPhase::Staging,
            AgentPhase::Draining,
            AgentPhase::Rebooting,
            AgentPhase::Verifying,
        ];
        for (i, phase) in phases.into_iter().enumerate() {
            tokio::time::sleep_until((seen + WORK * i as u32 / phases.len() as u32).into()).await;
            report_phase(&client, &node, phase, &g).await;
        }
        tokio::time::sleep_until((seen + WORK).into()).await;
        records
            .lock()
            .expect("records")
            .dones
            .push((Instant::now(), node.clone()));
        report_phase(&client, &node, AgentPhase::Done, &g).await;
    }
}

/// Write a phase as the agent does (the target as the booted image once Done).
async fn report_phase(client: &Client, node: &str, phase: AgentPhase, grant: &str) {
    let mut ann = json!({
        PHASE: phase.as_str(),
        PHASE_GRANT: grant,
        SINCE: jiff::Timestamp::now().to_string(),
        REASON: null,
    });
    if phase == AgentPhase::Done {
        ann[OS_IMAGE] = json!(IMAGE);
    }
    let patch = json!({"metadata": {"annotations": ann}});
    if let Err(e) = Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        eprintln!(
            "simulated agent: reporting {} on node {node}: {e}",
            phase.as_str()
        );
    }
}
