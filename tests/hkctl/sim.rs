//! What the hkctl tests stand on: the built `hkctl` run as an admin runs it, a test's Nodes
//! (registered by the kubelet stand-in), a coordinator running in the test's process against
//! the real API server, and simulated agents that find their grant in the Updates' ledgers and
//! answer it by writing the phase annotations as hkd's agent does, each step a short sleep
//! instead of a drain and a reboot.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use housekeeper::cluster::annotations::{
    AgentPhase, NodeView, OS_IMAGE, PHASE, PHASE_GRANT, REASON, SINCE,
};
use housekeeper::cluster::coordinator::{Config, Coordinator};
use housekeeper::cluster::ledger;
use housekeeper::cluster::update::Update;
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::cluster::Cluster;
use crate::support::{KubeletStandIn, NodeRole, TestEnv};

pub const OLD: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:1";
pub const IMAGE: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";

/// What one run of hkctl did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Result<Run> {
        anyhow::ensure!(
            self.code == 0,
            "hkctl failed ({}):\n{}\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
}

/// The admin kubeconfig of the run's cluster.
pub fn admin_kubeconfig(cluster: &Cluster) -> PathBuf {
    match cluster {
        Cluster::Local(l) => l.admin_kubeconfig.clone(),
        Cluster::External { kubeconfig } => kubeconfig.clone(),
    }
}

/// Run the built hkctl with `kubeconfig`; stdout is a pipe (no colours, 80 columns).
pub async fn hkctl_with(kubeconfig: &Path, args: &[&str]) -> Result<Run> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hkctl"));
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.env_remove("KUBECONFIG").env_remove("HKCTL_UPDATE");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running hkctl")?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A test's Nodes, and hkctl pointed at its namespace.
pub struct Rig {
    pub env: TestEnv,
    pub kubeconfig: PathBuf,
    pub control_plane: Vec<String>,
    pub workers: Vec<String>,
}

impl Rig {
    pub async fn new(test: &str, control_plane: usize, workers: usize) -> Result<Rig> {
        let env = TestEnv::new(test).await?;
        crate::support::crd::install_update_crd(&env.admin).await?;
        let k = KubeletStandIn::new(env.admin.clone());
        let mut rig = Rig {
            kubeconfig: admin_kubeconfig(env.cluster),
            control_plane: Vec::new(),
            workers: Vec::new(),
            env,
        };
        for i in 1..=control_plane {
            let n = k
                .register_node(&rig.env, &format!("cp-{i}"), NodeRole::ControlPlane)
                .await?;
            rig.control_plane
                .push(n.metadata.name.context("node name")?);
        }
        for i in 1..=workers {
            let n = k
                .register_node(&rig.env, &format!("w-{i}"), NodeRole::Worker)
                .await?;
            rig.workers.push(n.metadata.name.context("node name")?);
        }
        for n in rig.all() {
            report_image(&rig.env.admin, &n, OLD).await?;
        }
        Ok(rig)
    }

    pub fn all(&self) -> Vec<String> {
        self.control_plane
            .iter()
            .chain(&self.workers)
            .cloned()
            .collect()
    }

    /// `--selector` for exactly this test's Nodes.
    pub fn selector(&self) -> String {
        format!("kubernetes.io/hostname in ({})", self.all().join(","))
    }

    /// hkctl in this test's namespace.
    pub async fn hkctl(&self, args: &[&str]) -> Result<Run> {
        let mut all = vec!["-n", self.env.ns.as_str()];
        all.extend_from_slice(args);
        hkctl_with(&self.kubeconfig, &all).await
    }

    pub fn updates(&self) -> Api<Update> {
        Api::namespaced(self.env.admin.clone(), &self.env.ns)
    }

    pub async fn update(&self, name: &str) -> Result<Update> {
        Ok(self.updates().get(name).await?)
    }

    /// A coordinator for this namespace, leading within a second.
    pub fn coordinator(&self) -> Running {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let config = Config {
            namespace: self.env.ns.clone(),
            lease_duration: Duration::from_secs(2),
            renew_every: Duration::from_millis(400),
            retry_after: Duration::from_millis(300),
            recheck_every: Duration::from_millis(300),
            ..Config::new("coordinator-under-test")
        };
        let (stop, stop_rx) = watch::channel(false);
        let c = Coordinator::new(self.env.admin.clone(), config);
        Running {
            task: tokio::spawn(c.run(stop_rx)),
            _stop: stop,
        }
    }

    /// A simulated agent on each Node; those in `failing` end Failed.
    pub fn agents(&self, step: Duration, failing: &[String]) -> Tasks {
        Tasks(
            self.all()
                .into_iter()
                .map(|n| {
                    let fail = failing.contains(&n);
                    tokio::spawn(agent(
                        self.env.admin.clone(),
                        self.env.ns.clone(),
                        n,
                        fail,
                        step,
                    ))
                })
                .collect(),
        )
    }

    /// The grant each of this test's Nodes holds, from the Updates' ledgers.
    pub async fn grants(&self) -> Result<Vec<(String, Option<String>)>> {
        let updates = self.updates().list(&ListParams::default()).await?.items;
        let (grants, refused) = ledger::grants_by_node(&updates);
        anyhow::ensure!(refused.is_empty(), "ledger records refused: {refused:?}");
        Ok(self
            .all()
            .into_iter()
            .map(|n| {
                let g = grants.get(&n).map(ToString::to_string);
                (n, g)
            })
            .collect())
    }

    /// The views of this test's Nodes, each with its grant from the Updates' ledgers.
    pub async fn views(&self) -> Result<Vec<NodeView>> {
        let api: Api<Node> = Api::all(self.env.admin.clone());
        let updates = self.updates().list(&ListParams::default()).await?.items;
        let mut views = Vec::new();
        for n in self.all() {
            views.push(NodeView::from_node(&api.get(&n).await?));
        }
        let refused = ledger::attach(&mut views, &updates);
        anyhow::ensure!(refused.is_empty(), "ledger records refused: {refused:?}");
        Ok(views)
    }
}

/// A coordinator task; dropped, it is aborted.
pub struct Running {
    task: JoinHandle<Result<()>>,
    _stop: watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Background tasks aborted on drop.
pub struct Tasks(pub Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The agent's report of the booted image (as hkd writes `os-image`).
pub async fn report_image(client: &Client, node: &str, image: &str) -> Result<()> {
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {OS_IMAGE: image}}})),
        )
        .await
        .with_context(|| format!("reporting the image of node {node}"))?;
    Ok(())
}

async fn report(client: &Client, node: &str, phase: AgentPhase, grant: &str) {
    let mut ann = json!({
        PHASE: phase.as_str(),
        PHASE_GRANT: grant,
        SINCE: jiff::Timestamp::now().to_string(),
        REASON: null,
    });
    match phase {
        AgentPhase::Failed => {
            ann[REASON] = json!("health check kubelet-ready failing after the reboot (simulated)")
        }
        AgentPhase::Draining => ann[REASON] = json!("evicting 3 pod(s) (simulated)"),
        AgentPhase::Done => ann[OS_IMAGE] = json!(IMAGE),
        _ => {}
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

/// What an agent does with a grant (found in the ledgers of the Updates of `ns`), minus the
/// work.
async fn agent(client: Client, ns: String, node: String, fail: bool, step: Duration) {
    let api: Api<Node> = Api::all(client.clone());
    let updates: Api<Update> = Api::namespaced(client.clone(), &ns);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (Ok(n), Ok(list)) = (
            api.get(&node).await,
            updates.list(&ListParams::default()).await,
        ) else {
            continue;
        };
        let v = NodeView::from_node(&n);
        let Some(g) = ledger::grant_of(&node, &list.items).0 else {
            continue;
        };
        if v.phase_for(&g).is_some_and(AgentPhase::is_terminal) {
            continue;
        }
        let g = g.to_string();
        for phase in [
            AgentPhase::Staging,
            AgentPhase::Draining,
            AgentPhase::Rebooting,
            AgentPhase::Verifying,
        ] {
            report(&client, &node, phase, &g).await;
            tokio::time::sleep(step).await;
        }
        let end = if fail {
            AgentPhase::Failed
        } else {
            AgentPhase::Done
        };
        report(&client, &node, end, &g).await;
    }
}
