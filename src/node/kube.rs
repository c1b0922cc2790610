//! The agent's cluster half against the API server: the follower that watches this node's
//! Node and the Updates and does what [`super::follow::decide`] says, the drain the upgrade
//! machine asks for, the "node Ready" health check, and the coordinator candidate that runs
//! beside it.
//!
//! Expected flow: [`KubeNode::start`] spawns the follower and the coordinator supervisor on a
//! tokio runtime and returns the [`ClusterSide`] the (blocking) agent thread calls. The agent
//! tells it every machine state through [`ClusterSide::after_step`]; the follower answers with
//! machine events through the agent's inbox.
//!
//! Guarantees:
//! - write, then act: the annotations a decision asks for are written before its events are
//!   sent, so the Node says a grant was begun before the machine works under it;
//! - one event is sent once per machine state: a repeated decision on the same state (watch
//!   events come often) sends nothing;
//! - a grant is finished in order: kubeadm, then hkd's cordon lifted, then the answer;
//! - the drain steps this node's coordinator down and waits until it stopped before the
//!   cordon, so a leader never drains itself out of service while leading;
//! - the drain stops when the rollout is aborted with `inFlight: rollBack`.
//!
//! Caveats: a failed write is retried after [`RETRY`]; the kubeadm step and the kubelet
//! restart run as commands ([`Settings::kubeadm`]) whose output is logged.

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::agent::{self, ClusterSide};
use super::follow::{self, answer_annotations, Answer, Decision, Finish, KubeadmStep};
use super::health::Check;
use super::machine::{Event, Machine, Outcome, State};
use crate::cluster::annotations::{AgentPhase, NodeView, CORDONED_BY_HKD};
use crate::cluster::coordinator::{self, Coordinator};
use crate::cluster::events::{self, brief, Reporter, NODE_EVENT_NAMESPACE};
use crate::cluster::kube_drain::{Drainer, Tuning};
use crate::cluster::update::{ImagePolicy, InFlight, Update};

/// `source.component` of the agents' Events.
pub const COMPONENT: &str = "hkd";

/// Wait after a failed write before deciding again.
const RETRY: Duration = Duration::from_secs(2);

/// How long a reboot waits for the Node to say Rebooting.
const SHOW_REBOOT_WAIT: Duration = Duration::from_secs(5);

/// How long the drain waits for the first view of this Node and the Updates.
const FIRST_VIEW_WAIT: Duration = Duration::from_secs(120);

/// How long the drain waits for this node's coordinator to step down.
const STEP_DOWN_WAIT: Duration = Duration::from_secs(30);

/// What the cluster half needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    /// Where the Updates live.
    pub namespace: String,
    pub policy: ImagePolicy,
    pub kubeadm: PathBuf,
    pub kubelet_restart: Vec<String>,
    pub stage_retry: Duration,
    pub tuning: Tuning,
    /// Stand as coordinator candidate with this configuration; `None`: never coordinate.
    pub coordinator: Option<coordinator::Config>,
}

/// The state the follower, the drain and the coordinator supervisor share.
struct Inner {
    client: Client,
    settings: Settings,
    reporter: Reporter,
    node: watch::Sender<Option<Node>>,
    updates: watch::Sender<Vec<Update>>,
    machine: watch::Sender<Machine>,
    /// The agent's published status: the booted deployment's image reference.
    status: OnceLock<agent::Shared>,
    may_lead: watch::Sender<bool>,
    /// A coordinator runs on this node now.
    coordinating: watch::Sender<bool>,
    /// Both watches delivered their first complete view.
    synced: watch::Sender<bool>,
    node_synced: std::sync::atomic::AtomicBool,
    updates_synced: std::sync::atomic::AtomicBool,
}

/// Starts the follower once the agent has loaded its journal.
pub struct Starter {
    handle: Handle,
    inner: Arc<Inner>,
    inbox: Sender<Event>,
}

impl Starter {
    /// Follow the cluster for the agent whose state is `machine` and whose published status is
    /// `status`; stand as coordinator when configured.
    pub fn start(self, machine: Machine, status: agent::Shared) {
        let inner = self.inner;
        inner.machine.send_replace(machine);
        let _ = inner.status.set(status);
        self.handle.spawn(watch_node(inner.clone()));
        self.handle.spawn(watch_updates(inner.clone()));
        self.handle.spawn(follow_loop(inner.clone(), self.inbox));
        if inner.settings.coordinator.is_some() {
            self.handle.spawn(supervise_coordinator(inner.clone()));
        }
    }

    /// Whether a coordinator runs on this node now (for status and tests).
    pub fn coordinating(&self) -> watch::Receiver<bool> {
        self.inner.coordinating.subscribe()
    }
}

/// The agent's [`ClusterSide`] in a cluster.
pub struct KubeNode {
    handle: Handle,
    inner: Arc<Inner>,
}

impl KubeNode {
    /// The cluster half for an agent about to start; `inbox` is the agent's event channel.
    /// Nothing runs until [`Starter::start`] hands over the agent's state.
    pub fn new(
        handle: Handle,
        client: Client,
        settings: Settings,
        inbox: Sender<Event>,
    ) -> (KubeNode, Starter) {
        let inner = Arc::new(Inner {
            client,
            reporter: Reporter {
                component: COMPONENT,
                instance: settings.node_name.clone(),
            },
            settings,
            node: watch::channel(None).0,
            updates: watch::channel(Vec::new()).0,
            machine: watch::channel(Machine::new("")).0,
            status: OnceLock::new(),
            may_lead: watch::channel(false).0,
            coordinating: watch::channel(false).0,
            synced: watch::channel(false).0,
            node_synced: Default::default(),
            updates_synced: Default::default(),
        });
        let starter = Starter {
            handle: handle.clone(),
            inner: inner.clone(),
            inbox,
        };
        (KubeNode { handle, inner }, starter)
    }

    /// The health gate's "this Node is Ready again" check.
    pub fn ready_check(&self) -> Box<dyn Check> {
        Box::new(NodeReady {
            handle: self.handle.clone(),
            client: self.inner.client.clone(),
            node: self.inner.settings.node_name.clone(),
        })
    }
}

impl ClusterSide for KubeNode {
    fn drain(&self) -> Result<(), String> {
        self.handle.block_on(drain(&self.inner))
    }

    fn report(&self, _outcome: &Outcome, machine: &Machine) {
        // The follower answers the grant once it sees the machine at rest.
        self.inner.machine.send_replace(machine.clone());
    }

    fn entered(&self, machine: &Machine) {
        self.after_step(machine);
        if matches!(machine.state, State::Rebooting { .. }) {
            // The follower writes the phase; the reboot waits for it a little, so that the
            // Node says Rebooting while the machine is down (not a condition of the reboot).
            let mut node = self.inner.node.subscribe();
            let shown = node.wait_for(|n| {
                n.as_ref().is_none_or(|n| {
                    let v = NodeView::from_node(n);
                    v.grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Rebooting)
                })
            });
            let waited = self
                .handle
                .block_on(async { tokio::time::timeout(SHOW_REBOOT_WAIT, shown).await });
            if waited.is_err() {
                tracing::warn!("the Node does not say Rebooting yet; rebooting anyway");
            }
        }
    }

    fn after_step(&self, machine: &Machine) -> Vec<Event> {
        self.inner.machine.send_if_modified(|m| {
            let changed = m != machine;
            if changed {
                *m = machine.clone();
            }
            changed
        });
        Vec::new()
    }
}

impl Inner {
    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn node_view(&self) -> Option<NodeView> {
        self.node.borrow().as_ref().map(NodeView::from_node)
    }

    fn booted_image(&self) -> Option<String> {
        let status = self.status.get()?.lock().ok()?;
        status
            .deployments
            .iter()
            .find(|d| d.booted)
            .and_then(|d| d.origin.clone())
    }

    /// The Update that granted this node, when the grant is still open.
    fn granting_update(&self) -> Option<(crate::cluster::Grant, Update)> {
        let view = self.node_view()?;
        let grant = view.grant.clone()?;
        let update = self
            .updates
            .borrow()
            .iter()
            .find(|u| u.metadata.uid.as_deref() == Some(grant.uid.as_str()))
            .cloned()?;
        Some((grant, update))
    }

    fn aborted(&self, uid: &str) -> bool {
        self.updates.borrow().iter().any(|u| {
            u.metadata.uid.as_deref() == Some(uid)
                && u.spec
                    .abort
                    .as_ref()
                    .is_some_and(|a| a.in_flight == InFlight::RollBack)
        })
    }

    async fn event(&self, type_: &str, reason: &str, message: String) {
        let uid = self
            .node
            .borrow()
            .as_ref()
            .and_then(|n| n.metadata.uid.clone());
        let about = events::node_ref(&self.settings.node_name, uid);
        events::record(
            &self.client,
            &self.reporter,
            about,
            NODE_EVENT_NAMESPACE,
            type_,
            reason,
            message,
        )
        .await;
    }

    /// Merge `annotations` into this Node (only hkd's own keys; no precondition needed).
    async fn annotate(
        &self,
        annotations: &std::collections::BTreeMap<&str, Option<String>>,
    ) -> Result<()> {
        let patch = json!({"metadata": {"annotations": annotations}});
        let node = self
            .nodes()
            .patch(
                &self.settings.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| anyhow!("annotating node {}: {}", self.settings.node_name, brief(&e)))?;
        self.node.send_replace(Some(node));
        Ok(())
    }

    fn mark_synced(&self, which: &std::sync::atomic::AtomicBool) {
        use std::sync::atomic::Ordering;
        which.store(true, Ordering::SeqCst);
        if self.node_synced.load(Ordering::SeqCst) && self.updates_synced.load(Ordering::SeqCst) {
            self.synced.send_replace(true);
        }
    }

    fn drainer(&self) -> Drainer {
        Drainer::new(self.client.clone(), self.settings.tuning.clone())
    }

    async fn uncordon(&self) -> Result<()> {
        if self.drainer().uncordon(&self.settings.node_name).await? {
            self.event("Normal", "Uncordoned", "hkd lifted its cordon".into())
                .await;
        }
        Ok(())
    }
}

/// Keep `inner.node` current: a watch on this one Node.
async fn watch_node(inner: Arc<Inner>) {
    let config =
        watcher::Config::default().fields(&format!("metadata.name={}", inner.settings.node_name));
    let mut stream = watcher(inner.nodes(), config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                inner.node.send_replace(Some(n));
            }
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!("node {} was deleted", inner.settings.node_name);
                inner.node.send_replace(None);
            }
            Ok(watcher::Event::InitDone) => inner.mark_synced(&inner.node_synced),
            Ok(watcher::Event::Init) => {}
            Err(e) => tracing::warn!("watching node {}: {e}", inner.settings.node_name),
        }
    }
}

/// Keep `inner.updates` current: a watch on the Updates of the namespace.
async fn watch_updates(inner: Arc<Inner>) {
    let api: Api<Update> = Api::namespaced(inner.client.clone(), &inner.settings.namespace);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut fresh: Option<Vec<Update>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => fresh = Some(Vec::new()),
            Ok(watcher::Event::InitApply(u)) => fresh.get_or_insert_with(Vec::new).push(u),
            Ok(watcher::Event::InitDone) => {
                inner.updates.send_replace(fresh.take().unwrap_or_default());
                inner.mark_synced(&inner.updates_synced);
            }
            Ok(watcher::Event::Apply(u)) => {
                inner.updates.send_modify(|all| {
                    all.retain(|x| x.metadata.uid != u.metadata.uid);
                    all.push(u);
                });
            }
            Ok(watcher::Event::Delete(u)) => {
                inner
                    .updates
                    .send_modify(|all| all.retain(|x| x.metadata.uid != u.metadata.uid));
            }
            Err(e) => tracing::warn!("watching Updates in {}: {e}", inner.settings.namespace),
        }
    }
}

/// Decide on every change of the Node, the Updates or the machine, and do what was decided.
async fn follow_loop(inner: Arc<Inner>, inbox: Sender<Event>) {
    let mut node_rx = inner.node.subscribe();
    let mut updates_rx = inner.updates.subscribe();
    let mut machine_rx = inner.machine.subscribe();
    // The events last sent, and the machine state they were sent for.
    let mut sent: Option<(Vec<Event>, Machine)> = None;
    let mut last_retry: Option<(String, Timestamp)> = None;
    // Nothing is decided on a half view: an Update not listed yet is not a withdrawn one.
    if inner.synced.subscribe().wait_for(|s| *s).await.is_err() {
        return;
    }
    loop {
        let machine = machine_rx.borrow_and_update().clone();
        node_rx.borrow_and_update();
        updates_rx.borrow_and_update();
        let view = inner.node_view();
        let updates = inner.updates.borrow().clone();
        let booted = inner.booted_image();
        let now = Timestamp::now();
        let decision = follow::decide(follow::Input {
            node: view.as_ref(),
            updates: &updates,
            machine: &machine,
            booted_image: booted.as_deref(),
            policy: inner.settings.policy,
            now,
            last_retry: last_retry.as_ref().map(|(t, at)| (t.as_str(), *at)),
            retry_after: jiff::SignedDuration::try_from(inner.settings.stage_retry)
                .unwrap_or(jiff::SignedDuration::from_secs(300)),
        });
        inner.may_lead.send_if_modified(|m| {
            let changed = *m != decision.may_lead;
            *m = decision.may_lead;
            changed
        });
        let mut wake = decision
            .wake_at
            .map(|t| Duration::try_from(now.duration_until(t)).unwrap_or(Duration::ZERO));
        match perform(&inner, &decision).await {
            Ok(()) => {
                let fresh = sent
                    .as_ref()
                    .is_none_or(|(e, m)| *e != decision.events || *m != machine);
                if fresh && !decision.events.is_empty() {
                    for event in &decision.events {
                        if matches!(event, Event::TargetRequested { .. })
                            && matches!(
                                machine.state,
                                State::Failed { .. } | State::RolledBack { .. }
                            )
                        {
                            let target = machine.state.target().unwrap_or_default().to_owned();
                            last_retry = Some((target, now));
                        }
                        if inbox.send(event.clone()).is_err() {
                            return; // the agent is gone
                        }
                    }
                    sent = Some((decision.events.clone(), machine.clone()));
                }
            }
            Err(e) => {
                tracing::warn!("{e:#}");
                wake = Some(RETRY);
            }
        }
        let sleep = async {
            match wake {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = node_rx.changed() => if r.is_err() { return },
            r = updates_rx.changed() => if r.is_err() { return },
            r = machine_rx.changed() => if r.is_err() { return },
            _ = sleep => {}
        }
    }
}

/// The side effects of one decision, in order: annotations, cordon, finish.
async fn perform(inner: &Inner, d: &Decision) -> Result<()> {
    if !d.annotations.is_empty() {
        inner.annotate(&d.annotations).await?;
    }
    if d.uncordon {
        inner.uncordon().await?;
    }
    if let Some(f) = &d.finish {
        finish(inner, f).await?;
    }
    Ok(())
}

/// kubeadm (for Done, when asked), hkd's cordon lifted, the answer written.
async fn finish(inner: &Inner, f: &Finish) -> Result<()> {
    if f.answer == Answer::Done {
        if let Err(e) = kubeadm(inner, f).await {
            // The OS is fine, the Kubernetes upgrade is not: the node stays cordoned for the
            // admin to look at, and says so. The cordon is handed over (hkd's mark removed), so
            // hkd never lifts it itself.
            let reason = format!("{e:#}; the node stays cordoned until an admin uncordons it");
            inner
                .event("Warning", "KubeadmFailed", reason.clone())
                .await;
            let failed = Answer::Failed(reason);
            let mut annotations = answer_annotations(&f.grant, &failed, Timestamp::now());
            annotations.insert(CORDONED_BY_HKD, None);
            inner.annotate(&annotations).await?;
            return Ok(());
        }
    }
    if f.uncordon {
        inner.uncordon().await?;
    }
    inner
        .annotate(&answer_annotations(&f.grant, &f.answer, Timestamp::now()))
        .await?;
    let (kind, reason, message) = match &f.answer {
        Answer::Done => (
            "Normal",
            "UpgradeDone",
            format!("upgrade done under grant {}", f.grant),
        ),
        Answer::Failed(r) => ("Warning", "UpgradeFailed", format!("upgrade failed: {r}")),
    };
    inner.event(kind, reason, message).await;
    Ok(())
}

/// The kubeadm step the Update asks for, then the kubelet restart.
async fn kubeadm(inner: &Inner, f: &Finish) -> Result<()> {
    let server = match inner.client.apiserver_version().await {
        Ok(v) => Some(v.git_version),
        Err(e) => {
            tracing::warn!("reading the API server's version: {e}");
            None
        }
    };
    let Some(step) = follow::kubeadm_step(
        f.kube_version.as_deref(),
        f.control_plane,
        server.as_deref(),
    ) else {
        return Ok(());
    };
    let kubeadm = inner.settings.kubeadm.display().to_string();
    let mut argv = vec![kubeadm.clone(), "upgrade".to_owned()];
    match &step {
        KubeadmStep::Apply(v) => argv.extend(["apply".into(), "--yes".into(), v.clone()]),
        KubeadmStep::Node => argv.push("node".into()),
    }
    inner
        .event("Normal", "Kubeadm", format!("running {}", argv.join(" ")))
        .await;
    run(argv).await?;
    let restart = inner.settings.kubelet_restart.clone();
    if !restart.is_empty() {
        run(restart).await?;
    }
    Ok(())
}

/// Run a command to its end off the runtime's threads; its output goes to the log.
async fn run(argv: Vec<String>) -> Result<()> {
    let shown = argv.join(" ");
    let out = tokio::task::spawn_blocking(move || Command::new(&argv[0]).args(&argv[1..]).output())
        .await
        .context("the command's thread")?
        .with_context(|| format!("running {shown}"))?;
    let say = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    if !out.stdout.is_empty() {
        tracing::info!("{shown}: {}", say(&out.stdout));
    }
    if !out.status.success() {
        let err = say(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_owned();
        return Err(anyhow!("{shown} failed ({}): {last}", out.status));
    }
    Ok(())
}

/// Cordon and drain for the machine: wait for the first view of the cluster (after a restart
/// the machine asks at once), step the coordinator down, cordon, drain under the granting
/// Update's policy; stop when the rollout is aborted with roll back. An error talking to the
/// API server (an outage, a restarting server) is not the drain's verdict: cordon and drain
/// are idempotent and are tried again, with a growing pause, until the policy's timeout.
async fn drain(inner: &Inner) -> Result<(), String> {
    let node = inner.settings.node_name.clone();
    let mut synced = inner.synced.subscribe();
    let first_view = synced.wait_for(|s| *s);
    if tokio::time::timeout(FIRST_VIEW_WAIT, first_view)
        .await
        .is_err()
    {
        return Err(format!(
            "no answer from the API server about node {node} within {FIRST_VIEW_WAIT:?}"
        ));
    }
    let Some((grant, update)) = inner.granting_update() else {
        return Err(format!(
            "node {node} holds no grant of an existing Update any more"
        ));
    };
    let uid = grant.uid.clone();
    if inner.aborted(&uid) {
        return Err("the rollout was aborted before this node was drained".into());
    }
    inner.may_lead.send_replace(false);
    let mut coordinating = inner.coordinating.subscribe();
    let stepped_down = coordinating.wait_for(|c| !*c);
    if tokio::time::timeout(STEP_DOWN_WAIT, stepped_down)
        .await
        .is_err()
    {
        return Err("this node's coordinator did not step down; not draining under it".into());
    }
    let policy = update.spec.effective_drain();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(policy.timeout_seconds.max(1) as u64);
    let mut updates = inner.updates.subscribe();
    let abort = updates.wait_for(|all| {
        all.iter().any(|u| {
            u.metadata.uid.as_deref() == Some(uid.as_str())
                && u.spec
                    .abort
                    .as_ref()
                    .is_some_and(|a| a.in_flight == InFlight::RollBack)
        })
    });
    // A Node deleted from the cluster is not drained: there is nothing left to cordon, and
    // waiting out the drain timeout would only hold the machine.
    let mut node_rx = inner.node.subscribe();
    let deleted = node_rx.wait_for(Option::is_none);
    let attempts = async {
        let mut pause = Duration::from_millis(500);
        loop {
            match cordon_and_drain(inner, &grant, &policy).await {
                Ok(report) => return Ok(report),
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!("{e:#}; trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(format!("{e:#}")),
            }
        }
    };
    let report = tokio::select! {
        r = attempts => r?,
        _ = deleted => {
            return Err(format!("node {node} was deleted from the cluster; not draining it"));
        }
        _ = abort => {
            if let Err(e) = inner.uncordon().await {
                tracing::warn!("{e:#}");
            }
            return Err("the rollout was aborted while this node drained".into());
        }
    };
    let summary = report.summary();
    if report.outcome.may_reboot() {
        inner.event("Normal", "Drained", summary).await;
        Ok(())
    } else {
        inner.event("Warning", "DrainFailed", summary.clone()).await;
        Err(summary)
    }
}

/// One attempt: cordon (remembering that hkd did), then drain.
async fn cordon_and_drain(
    inner: &Inner,
    grant: &crate::cluster::Grant,
    policy: &crate::cluster::update::DrainPolicy,
) -> Result<crate::cluster::kube_drain::DrainReport> {
    let node = &inner.settings.node_name;
    let drainer = inner.drainer();
    let ours = drainer.cordon(node, &grant.to_string()).await?;
    inner
        .event(
            "Normal",
            "Draining",
            if ours {
                format!("hkd cordoned the node under grant {grant} and drains it")
            } else {
                "the node was already cordoned by someone else; hkd drains it and leaves the cordon theirs".into()
            },
        )
        .await;
    drainer.drain(node, policy).await
}

/// Run a coordinator candidate while this node may lead; stop it (stepping down) when not.
async fn supervise_coordinator(inner: Arc<Inner>) {
    let Some(config) = inner.settings.coordinator.clone() else {
        return;
    };
    let mut may_lead = inner.may_lead.subscribe();
    loop {
        if may_lead.wait_for(|m| *m).await.is_err() {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let coordinator = Coordinator::new(inner.client.clone(), config.clone());
        inner.coordinating.send_replace(true);
        let mut task = tokio::spawn(coordinator.run(stop_rx));
        let ended = tokio::select! {
            r = &mut task => Some(r),
            _ = may_lead.wait_for(|m| !*m) => None,
        };
        let result = match ended {
            Some(r) => r,
            None => {
                let _ = stop_tx.send(true);
                task.await
            }
        };
        inner.coordinating.send_replace(false);
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("coordinator: {e:#}"),
            Err(e) => tracing::warn!("coordinator task: {e}"),
        }
        // It ended on its own (an error): a pause before standing again.
        if *may_lead.borrow() {
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// The health gate's check that the kubelet has this Node Ready again.
struct NodeReady {
    handle: Handle,
    client: Client,
    node: String,
}

impl Check for NodeReady {
    fn name(&self) -> String {
        format!("node {} Ready", self.node)
    }

    fn run(&self) -> Result<(), String> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = self
            .handle
            .block_on(api.get(&self.node))
            .map_err(|e| format!("reading node {}: {}", self.node, brief(&e)))?;
        if NodeView::from_node(&node).ready {
            Ok(())
        } else {
            Err(format!("node {} is not Ready", node.name_any()))
        }
    }
}
