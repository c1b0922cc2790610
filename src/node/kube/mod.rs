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
//! restart run as commands ([`Settings::kubeadm`]) whose output is logged, each killed past
//! its time limit.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::agent::{self, ClusterSide, DrainError};
use super::health::Check;
use super::machine::{Event, Machine, State, UpgradeOutcome};
use crate::cluster::annotations::{AgentPhase, NodeView};
use crate::cluster::coordinator;
use crate::cluster::events::{self, brief, Reporter, NODE_EVENT_NAMESPACE};
use crate::cluster::heartbeat::Heartbeat;
use crate::cluster::kube_drain::{Drainer, Tuning};
use crate::cluster::ledger;
use crate::cluster::update::{InFlight, Update};
use crate::image_ref::ImagePolicy;
use crate::node::watchdog::Liveness;
use drain::drain;
use follower::{follow_loop, watch_node, watch_updates};
use supervise::supervise_coordinator;

/// The parts of the cluster half the watchdog watches.
const FOLLOWER: &str = "follower";
const DRAIN: &str = "drain";
const COORDINATOR: &str = "coordinator";

/// The longest the follower waits for one write of its Node's annotations.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

mod drain;
mod follower;
mod kubeadm;
mod supervise;

/// `source.component` of the agents' Events.
pub const COMPONENT: &str = "hkd";

/// Wait after a failed write before deciding again.
const RETRY: Duration = Duration::from_secs(2);

/// How long a reboot waits for the Node to say Rebooting.
const SHOW_REBOOT_WAIT: Duration = Duration::from_secs(5);

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
    /// Serve FleetLock beside the coordinator: where, and how.
    pub fleetlock: Option<(
        std::net::SocketAddr,
        crate::cluster::fleetlock::server::Config,
    )>,
    /// Where the follower, the drain and the coordinator show their progress (the watchdog).
    pub liveness: Arc<Liveness>,
    /// A part silent for longer is taken for hung: [`crate::node::watchdog::DEFAULT_BOUND`] (the
    /// watchdog's end-to-end test shortens it).
    pub watchdog_bound: Duration,
    /// The follower stops moving after its first round, as a loop stuck in an await would:
    /// set only by the watchdog's end-to-end test, in builds with the test feature.
    pub hang_follower: bool,
}

/// The state the follower, the drain and the coordinator supervisor share.
struct Inner {
    /// This node's credential: everything but the coordinator.
    client: Client,
    /// The coordinator's credential, for the coordinator candidate only.
    coordinator_client: Option<Client>,
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
    /// Why the API server refuses this node's credential (401, 403), while it does: nothing
    /// new is taken up until a watch succeeds again.
    refused: watch::Sender<Option<String>>,
    /// The follower's heartbeat (the drain's and the coordinator's are in their settings).
    follower_beat: Heartbeat,
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
    /// The cluster half for an agent about to start: `client` acts as this node,
    /// `coordinator_client` (needed when [`Settings::coordinator`] is set) as the coordinator;
    /// `inbox` is the agent's event channel. Nothing runs until [`Starter::start`] hands over
    /// the agent's state.
    pub fn new(
        handle: Handle,
        client: Client,
        coordinator_client: Option<Client>,
        mut settings: Settings,
        inbox: Sender<Event>,
    ) -> (KubeNode, Starter) {
        let bound = settings.watchdog_bound;
        let follower_beat = settings.liveness.part(FOLLOWER, bound);
        settings.tuning.heartbeat = settings.liveness.part(DRAIN, bound);
        if let Some(c) = settings.coordinator.as_mut() {
            c.heartbeat = settings.liveness.part(COORDINATOR, bound);
        }
        let inner = Arc::new(Inner {
            client,
            coordinator_client,
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
            refused: watch::channel(None).0,
            follower_beat,
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
    fn drain(&self) -> Result<(), DrainError> {
        self.handle.block_on(drain(&self.inner))
    }

    fn report(&self, _outcome: &UpgradeOutcome, machine: &Machine) {
        // The follower answers the grant once it sees the machine at rest.
        self.inner.machine.send_replace(machine.clone());
    }

    fn entered(&self, machine: &Machine) {
        self.after_step(machine);
        if matches!(machine.state, State::Rebooting { .. }) {
            // The follower writes the phase; the reboot waits for it a little, so that the
            // Node says Rebooting while the machine is down (not a condition of the reboot).
            let mut node = self.inner.node.subscribe();
            let grant = self.inner.node_view().and_then(|v| v.grant);
            // The read guard `wait_for` returns is dropped at once (see drain.rs).
            let shown = async {
                node.wait_for(|n| {
                    n.as_ref().is_none_or(|n| {
                        let v = NodeView::from_node(n);
                        grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Rebooting)
                    })
                })
                .await
                .map(drop)
            };
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

    /// This Node as the protocol reads it, its grant taken from the Updates' ledgers.
    fn node_view(&self) -> Option<NodeView> {
        let mut view = self.node.borrow().as_ref().map(NodeView::from_node)?;
        view.grant = ledger::grant_of(&view.name, &self.updates.borrow()).0;
        Some(view)
    }

    fn booted_image(&self) -> Option<String> {
        let status = self.status.get()?.lock().ok()?;
        status
            .deployments
            .iter()
            .find(|d| d.booted)
            .and_then(|d| d.origin.clone())
    }

    /// How far staging is, in words, while the agent's status reports it.
    fn staging_progress(&self) -> Option<String> {
        let status = self.status.get()?.lock().ok()?;
        status.progress.as_ref().map(|p| p.describe())
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
        let name = &self.settings.node_name;
        let (api, params, merge) = (self.nodes(), PatchParams::default(), Patch::Merge(&patch));
        let write = api.patch(name, &params, &merge);
        // Bounded, so that a server that stopped answering cannot hold the follower past its
        // watchdog bound; the write is tried again.
        let node = tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| anyhow!("annotating node {name}: no answer within {WRITE_TIMEOUT:?}"))?
            .map_err(|e| {
                if let kube::Error::Api(s) = &e {
                    if s.code == 401 || s.code == 403 {
                        follower::refused(self, s.code);
                    }
                }
                anyhow!("annotating node {name}: {}", brief(&e))
            })?;
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
