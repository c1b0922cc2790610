//! The FleetLock server: the elected coordinator answers Zincati's `pre-reboot` and
//! `steady-state`, recording each lock as a grant in the Update's ledger under its own term.
//! It decides nothing itself (`decide.rs`, `wire.rs` do); it reads, writes and drains.
//!
//! Expected flow: `pre-reboot` → the id's Node, the planner's slot (`decide::lock`) → the lock
//! written into the ledger (a status write conditional on the Update's resourceVersion, made
//! only while this coordinator leads in the term the Update records) → the Node cordoned (as
//! hkd's, `housekeeper.io/cordoned-by-hkd`) and drained under the Update's drain policy → 200
//! once drained. The drain runs on beyond the request: a request waits at most
//! `answer_within`, then gets `failed_lock_draining` and Zincati asks again (its lock is
//! held). `steady-state` once the Node is Ready → uncordon (only hkd's cordon) → the record
//! removed → 200. A sweep every `sweep_every` reclaims locks whose Node was deleted or that
//! were held past `lock_timeout` (the cordon of such a node is handed over to the admin, the
//! way a failed kubeadm step's is, and its `housekeeper.io/reason` says so: its row in
//! `hkctl status`, until its next lock), with a Warning Event `LockReclaimed` and a log line.
//!
//! Guarantees:
//! - a lock is a grant of the planner's (I1 and the rest hold as for hkd nodes) and is fenced
//!   exactly as the coordinator's grants (I9): written only under the term the Update
//!   records, conditional on the resourceVersion it was decided on; a 409 is read and decided
//!   again; a server that does not lead answers `failed_not_leader` and writes nothing;
//! - recursive: a second `pre-reboot` of a holder answers from its lock; `steady-state`
//!   without a lock is a success (the protocol's `UnlockIfHeld`), and still lifts hkd's
//!   cordon of a Ready node (a lock that went away with its Update leaves none behind; a
//!   FleetLock node runs no hkd, so hkd's mark on it is only ever this server's);
//! - 200 on `pre-reboot` only after the Node's drain allows a reboot (I3's
//!   `DrainOutcome::may_reboot`).
//!
//! Who can reach it, and what a liar can do. The protocol has no authentication: anyone who
//! reaches `fleetlock.listen` (by default nothing: the server is off until an address is set)
//! can send any id and group. An id names a Node only through that Node's machine-id, so a
//! caller can ask a lock only for a Node it knows the machine-id of, in that Node's pool. The
//! worst it can do is what the Node's own Zincati could: take that Node's slot (drain it,
//! within `maxUnavailable`, windows and the failure budget — never beyond), or release it
//! early (uncordon a Node that is Ready). It cannot grant an hkd node, exceed the budget, or
//! touch a Node outside the FleetLock pools. Requests are bounded (`wire.rs`: 8 KiB head,
//! 4 KiB body, all of it within `read_deadline`; at most `max_clients` at once, more are
//! closed at once); one that stalls is dropped; one that comes twice is answered twice alike.
//!
//! Assumptions: the client was built with kube's retry off; the coordinator's identity holds
//! the FleetLock role (`hkctl install --fleetlock`: patch Nodes, evict and delete pods); the
//! Nodes' `status.nodeInfo.machineID` is the machine's `/etc/machine-id` (the kubelet's).
//!
//! Caveats: each request lists the Updates and Nodes (as the coordinator's wake-ups do); the
//! drain state lives in this process, so a new leader starts a held node's drain again (a
//! drain is idempotent); a lock reclaimed while the node is in fact rebooting is released for
//! the budget, its node counted out of service by its cordon until an admin lifts it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use super::decide::{self, Lock, Reclaim};
use super::wire::{self, Kind, Op, Rejection, Request};
use crate::cluster::annotations::{NodeView, REASON};
use crate::cluster::coordinator::{node_views, Leading, COMPONENT};
use crate::cluster::events::{self, brief, Reporter, NODE_EVENT_NAMESPACE};
use crate::cluster::kube_drain::{DrainReport, Drainer, Tuning};
use crate::cluster::ledger;
use crate::cluster::update::{GrantRecord, ImagePolicy, Update, FLEETLOCK};

/// How often one request's writes are decided again after a 409 before it gives up.
const CONFLICT_RETRIES: usize = 5;

/// Settings; [`Config::new`] has the production values, tests shorten the times.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the Updates live.
    pub namespace: String,
    /// This coordinator's name (Events' reporting instance).
    pub identity: String,
    /// A lock held this long without `steady-state` is reclaimed.
    pub lock_timeout: Duration,
    /// How long a `pre-reboot` waits for its Node's drain before answering "ask again": well
    /// under any client's own request timeout.
    pub answer_within: Duration,
    /// How often locks are looked at for reclaiming.
    pub sweep_every: Duration,
    /// The whole request must arrive within this.
    pub read_deadline: Duration,
    /// The longest one API request may take.
    pub request_timeout: Duration,
    /// Connections answered at once; more are closed at once.
    pub max_clients: usize,
    pub image_policy: ImagePolicy,
    pub drain: Tuning,
}

impl Config {
    pub fn new(identity: &str, namespace: &str) -> Config {
        Config {
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            lock_timeout: Duration::from_secs(3600),
            answer_within: Duration::from_secs(10),
            sweep_every: Duration::from_secs(30),
            read_deadline: Duration::from_secs(5),
            request_timeout: Duration::from_secs(4),
            max_clients: 16,
            image_policy: ImagePolicy::default(),
            drain: Tuning::default(),
        }
    }
}

/// A node's drain, started by a `pre-reboot` and outliving it.
struct DrainTask {
    /// The grant it drains under (a new lock drains afresh).
    grant: String,
    done: watch::Receiver<Option<std::result::Result<DrainReport, String>>>,
}

pub struct Server {
    client: Client,
    config: Config,
    leading: watch::Receiver<Option<Leading>>,
    drains: Mutex<HashMap<String, DrainTask>>,
    clients: AtomicUsize,
}

/// Bind `address`; a clear error names the setting.
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| anyhow!("listening for FleetLock on {address}: {e}; change fleetlock.listen"))
}

/// Serve FleetLock on `listen` beside the coordinator whose term `leading` follows, until
/// `stop`. A port that cannot be bound is said once, at error level; the coordinator goes on
/// without its server (its hkd nodes need none).
pub async fn serve_beside(
    client: Client,
    listen: SocketAddr,
    config: Config,
    leading: watch::Receiver<Option<Leading>>,
    stop: watch::Receiver<bool>,
) {
    match bind(listen).await {
        Ok(listener) => {
            tracing::info!("FleetLock server on {listen} (answers while this coordinator leads)");
            Arc::new(Server::new(client, config, leading))
                .run(listener, stop)
                .await
        }
        Err(e) => tracing::error!("{e:#}"),
    }
}

impl Server {
    /// `leading` is the coordinator's [`crate::cluster::coordinator::Coordinator::term`].
    pub fn new(
        client: Client,
        config: Config,
        leading: watch::Receiver<Option<Leading>>,
    ) -> Server {
        Server {
            client,
            config,
            leading,
            drains: Mutex::new(HashMap::new()),
            clients: AtomicUsize::new(0),
        }
    }

    /// Serve on `listener` and sweep, until `stop` turns true (or its sender goes away).
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let mut sweep = tokio::time::interval(self.config.sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.clone().spawn_client(stream, peer),
                    Err(e) => {
                        tracing::warn!("FleetLock: accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = sweep.tick() => {
                    if let Some(lead) = self.lead() {
                        if let Err(e) = self.sweep(lead).await {
                            tracing::warn!("FleetLock: reclaiming locks: {e:#}");
                        }
                    }
                }
            }
        }
    }

    fn spawn_client(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        if self.clients.fetch_add(1, Ordering::SeqCst) >= self.config.max_clients {
            self.clients.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!(
                "FleetLock: client {peer} refused: {} already",
                self.config.max_clients
            );
            return; // dropped: closed at once
        }
        tokio::spawn(async move {
            self.answer(stream, peer).await;
            self.clients.fetch_sub(1, Ordering::SeqCst);
        });
    }

    async fn answer(&self, mut stream: TcpStream, peer: SocketAddr) {
        let result = match tokio::time::timeout(self.config.read_deadline, read(&mut stream)).await
        {
            Err(_) => {
                tracing::debug!("FleetLock: client {peer} sent no whole request in time");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!("FleetLock: client {peer}: {e}");
                return;
            }
            Ok(Ok(Err(rejection))) => Err(rejection),
            Ok(Ok(Ok(req))) => {
                let r = match req.op {
                    Op::PreReboot => self.pre_reboot(&req).await,
                    Op::SteadyState => self.steady_state(&req).await,
                };
                let outcome = match &r {
                    Ok(()) => "200".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::info!(
                    "FleetLock {} from {peer} (id {}, group {}): {outcome}",
                    req.op.path(),
                    req.id,
                    req.group
                );
                r
            }
        };
        if let Err(e) = &result {
            if !matches!(
                e.kind,
                Kind::Draining | Kind::SemaphoreFull | Kind::NotReady
            ) {
                tracing::debug!("FleetLock: client {peer}: {e}");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(&wire::answer(&result)).await?;
            stream.shutdown().await
        })
        .await;
    }

    /// The term this coordinator leads in, if it does and may still write.
    fn lead(&self) -> Option<Leading> {
        if self.leading.has_changed().is_err() {
            return None; // the coordinator is gone
        }
        (*self.leading.borrow()).filter(Leading::holds)
    }

    fn leader(&self) -> Result<Leading, Rejection> {
        self.lead().ok_or_else(|| {
            Rejection::new(
                Kind::NotLeader,
                format!(
                    "coordinator {} does not lead now; ask again (or ask the leader)",
                    self.config.identity
                ),
            )
        })
    }

    fn updates(&self) -> Api<Update> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    async fn bounded<T>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, Rejection> {
        tokio::time::timeout(self.config.request_timeout, request)
            .await
            .map_err(|_| {
                Rejection::new(
                    Kind::Unavailable,
                    format!(
                        "{what}: no answer from the API server within {:?}",
                        self.config.request_timeout
                    ),
                )
            })
    }

    /// The Updates (in the coordinator's order) and the Nodes with their grants attached.
    async fn read(&self) -> Result<(Vec<Update>, Vec<NodeView>), Rejection> {
        let unavailable = |what: &str, e: kube::Error| {
            Rejection::new(Kind::Unavailable, format!("{what}: {}", brief(&e)))
        };
        let mut updates = self
            .bounded(
                "listing Updates",
                self.updates().list(&ListParams::default()),
            )
            .await?
            .map_err(|e| unavailable("listing Updates", e))?
            .items;
        updates.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref(), a.name_any())
                .cmp(&(b.metadata.creation_timestamp.as_ref(), b.name_any()))
        });
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut views = self
            .bounded("listing Nodes", node_views(&nodes))
            .await?
            .map_err(|e| unavailable("listing Nodes", e))?;
        for refused in ledger::attach(&mut views, &updates) {
            tracing::warn!("{refused}");
        }
        Ok((updates, views))
    }

    async fn pre_reboot(&self, req: &Request) -> Result<(), Rejection> {
        for _ in 0..CONFLICT_RETRIES {
            let lead = self.leader()?;
            let (updates, views) = self.read().await?;
            let node = decide::node_of(req, &views)?;
            let now = Timestamp::now();
            match decide::lock(node, &updates, &views, now, self.config.image_policy)? {
                Lock::Held { update } => return self.drained(node, &updates[update]).await,
                Lock::Take { update } => {
                    let u = &updates[update];
                    let generation = u.metadata.generation.unwrap_or(1);
                    let record = GrantRecord {
                        generation,
                        term: lead.term,
                        granted_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
                        source: Some(FLEETLOCK.into()),
                    };
                    let grants = json!({ node.name.as_str(): record });
                    if !self.write_grants(u, lead, grants).await? {
                        continue;
                    }
                    let grant = format!("{}/{generation}", u.metadata.uid.as_deref().unwrap_or(""));
                    tracing::info!("FleetLock: node {} locked ({grant})", node.name);
                    if node.reason.is_some() {
                        // A new lock: the word on an earlier reclaim is over.
                        if let Err(e) = self.say_on_node(&node.name, None).await {
                            tracing::warn!("{e:#}");
                        }
                    }
                    self.event_on_update(
                        u,
                        "Normal",
                        "Granted",
                        format!(
                            "node {} may reboot: FleetLock lock for its Zincati (grant {grant})",
                            node.name
                        ),
                    )
                    .await;
                    self.event_on_node(node, "Normal", "Granted", format!(
                        "FleetLock lock for Update {}/{} (grant {grant}); cordoned and drained before its Zincati reboots it",
                        self.config.namespace, u.name_any()
                    ))
                    .await;
                    return self.drained(node, u).await;
                }
            }
        }
        Err(Rejection::new(
            Kind::Unavailable,
            format!("the Updates changed under {CONFLICT_RETRIES} attempts in a row; ask again"),
        ))
    }

    /// Write `grants` (a merge patch of `status.grants`) into `u`, conditional on its
    /// resourceVersion and only under the term `u` records. `false` on a conflict.
    async fn write_grants(
        &self,
        u: &Update,
        lead: Leading,
        grants: serde_json::Value,
    ) -> Result<bool, Rejection> {
        let recorded = u.status.as_ref().and_then(|s| s.coordinator_term);
        if recorded != Some(lead.term) {
            return Err(Rejection::new(
                Kind::NotLeader,
                format!(
                    "Update {} records coordinator term {recorded:?}, not this coordinator's {}; ask again",
                    u.name_any(),
                    lead.term
                ),
            ));
        }
        if !lead.holds() {
            return Err(self.leader().err().unwrap_or_else(|| {
                Rejection::new(Kind::NotLeader, "the term is about to end; ask again")
            }));
        }
        let patch = json!({
            "metadata": {"resourceVersion": u.metadata.resource_version},
            "status": {"grants": grants},
        });
        let what = format!(
            "writing the ledger of Update {}/{}",
            self.config.namespace,
            u.name_any()
        );
        match self
            .bounded(
                &what,
                self.updates().patch_status(
                    &u.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ),
            )
            .await?
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Rejection::new(
                Kind::Unavailable,
                format!("{what}: {}", brief(&e)),
            )),
        }
    }

    /// The node's drain under its lock: 200 once it allows a reboot, else why not (yet).
    async fn drained(&self, node: &NodeView, u: &Update) -> Result<(), Rejection> {
        let record = u.status.as_ref().and_then(|s| s.grants.get(&node.name));
        let generation = record.map_or(u.metadata.generation.unwrap_or(1), |r| r.generation);
        let grant = format!("{}/{generation}", u.metadata.uid.as_deref().unwrap_or(""));
        let mut done = {
            let mut drains = self.drains.lock().await;
            let stale = drains.get(&node.name).is_none_or(|d| {
                d.grant != grant || matches!(&*d.done.borrow(), Some(r) if !r.as_ref().is_ok_and(|r| r.outcome.may_reboot()))
            });
            if stale {
                let (tx, rx) = watch::channel(None);
                let drainer = Drainer::new(self.client.clone(), self.config.drain.clone());
                let policy = u.spec.effective_drain();
                let (name, g) = (node.name.clone(), grant.clone());
                tokio::spawn(async move {
                    let r = async {
                        drainer.cordon(&name, &g).await?;
                        drainer.drain(&name, &policy).await
                    }
                    .await;
                    tx.send_replace(Some(r.map_err(|e| format!("{e:#}"))));
                });
                drains.insert(
                    node.name.clone(),
                    DrainTask {
                        grant,
                        done: rx.clone(),
                    },
                );
                rx
            } else {
                drains[&node.name].done.clone()
            }
        };
        let deadline = Instant::now() + self.config.answer_within;
        loop {
            if let Some(r) = done.borrow_and_update().clone() {
                return match r {
                    Ok(report) if report.outcome.may_reboot() => Ok(()),
                    Ok(report) => Err(Rejection::new(
                        Kind::DrainFailed,
                        format!(
                            "lock held, but {}; asking again drains again",
                            report.summary()
                        ),
                    )),
                    Err(e) => Err(Rejection::new(
                        Kind::Unavailable,
                        format!("draining node {}: {e}; ask again", node.name),
                    )),
                };
            }
            tokio::select! {
                r = done.changed() => if r.is_err() {
                    return Err(Rejection::new(Kind::Unavailable, format!("the drain of node {} ended without a result; ask again", node.name)));
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Rejection::new(Kind::Draining, format!(
                        "lock held; node {} is being cordoned and drained; ask again", node.name
                    )));
                }
            }
        }
    }

    async fn steady_state(&self, req: &Request) -> Result<(), Rejection> {
        for _ in 0..CONFLICT_RETRIES {
            let lead = self.leader()?;
            let (updates, views) = self.read().await?;
            let node = decide::node_of(req, &views)?;
            let held = decide::locks_of(&node.name, &updates);
            if held.is_empty() && !(node.ready && node.cordoned_by_hkd) {
                return Ok(());
            }
            if !node.ready {
                return Err(Rejection::new(
                    Kind::NotReady,
                    format!(
                        "node {} is not Ready yet; its lock is released once it is",
                        node.name
                    ),
                ));
            }
            let drainer = Drainer::new(self.client.clone(), self.config.drain.clone());
            match tokio::time::timeout(
                self.config.request_timeout * 2,
                drainer.uncordon(&node.name),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(Rejection::new(
                        Kind::Unavailable,
                        format!("{e:#}; ask again"),
                    ))
                }
                Err(_) => {
                    return Err(Rejection::new(
                        Kind::Unavailable,
                        format!(
                            "uncordoning node {}: no answer in time; ask again",
                            node.name
                        ),
                    ))
                }
            }
            let mut conflict = false;
            for &i in &held {
                if !self
                    .write_grants(&updates[i], lead, json!({ node.name.as_str(): null }))
                    .await?
                {
                    conflict = true;
                    break;
                }
                tracing::info!("FleetLock: node {} released", node.name);
                self.event_on_update(
                    &updates[i],
                    "Normal",
                    "Released",
                    format!(
                        "node {} is back (Ready, uncordoned): its FleetLock lock is released",
                        node.name
                    ),
                )
                .await;
                self.event_on_node(
                    node,
                    "Normal",
                    "Released",
                    "back and Ready: FleetLock lock released, uncordoned".into(),
                )
                .await;
            }
            if !conflict {
                self.drains.lock().await.remove(&node.name);
                return Ok(());
            }
        }
        Err(Rejection::new(
            Kind::Unavailable,
            format!("the Updates changed under {CONFLICT_RETRIES} attempts in a row; ask again"),
        ))
    }

    /// Reclaim the locks of deleted Nodes and those held past the timeout.
    async fn sweep(&self, lead: Leading) -> Result<()> {
        let (updates, views) = self.read().await.map_err(|r| anyhow!("{}", r.value))?;
        let now = Timestamp::now();
        let exists = |n: &str| views.iter().any(|v| v.name == n);
        for (i, node, why) in decide::reclaims(&updates, exists, now, self.config.lock_timeout) {
            let u = &updates[i];
            let view = views.iter().find(|v| v.name == node);
            let message = match &why {
                Reclaim::NodeGone => format!("FleetLock lock of node {node} reclaimed: the Node was deleted"),
                Reclaim::Expired { held } => format!(
                    "FleetLock lock of node {node} reclaimed: held {} without steady-state (timeout {}); \
                     the node stays cordoned for an admin to look at",
                    humantime::format_duration(Duration::from_secs(held.as_secs())),
                    humantime::format_duration(self.config.lock_timeout)
                ),
            };
            if matches!(why, Reclaim::Expired { .. }) {
                let drainer = Drainer::new(self.client.clone(), self.config.drain.clone());
                drainer.hand_over(&node).await?;
                self.say_on_node(&node, Some(&format!("{message} ({now})")))
                    .await?;
            }
            match self
                .write_grants(u, lead, json!({ node.as_str(): null }))
                .await
            {
                Ok(true) => {}
                Ok(false) => continue, // the next sweep decides again
                Err(r) => return Err(anyhow!("{}", r.value)),
            }
            self.drains.lock().await.remove(&node);
            tracing::warn!("{message}");
            self.event_on_update(u, "Warning", "LockReclaimed", message.clone())
                .await;
            if let Some(v) = view {
                self.event_on_node(v, "Warning", "LockReclaimed", message)
                    .await;
            }
        }
        Ok(())
    }

    /// Set (or clear) `housekeeper.io/reason` on a FleetLock node: what `hkctl status` shows
    /// in its row (a FleetLock node has no agent of its own to write it).
    async fn say_on_node(&self, node: &str, reason: Option<&str>) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {REASON: reason}}});
        let nodes: Api<Node> = Api::all(self.client.clone());
        match tokio::time::timeout(
            self.config.request_timeout,
            nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(anyhow!("annotating node {node}: {}", brief(&e))),
            Err(_) => Err(anyhow!("annotating node {node}: no answer in time")),
        }
    }

    fn reporter(&self) -> Reporter {
        Reporter {
            component: COMPONENT,
            instance: self.config.identity.clone(),
        }
    }

    async fn event_on_update(&self, u: &Update, type_: &str, reason: &str, message: String) {
        let about = ObjectReference {
            api_version: Some(Update::api_version(&()).into_owned()),
            kind: Some(Update::kind(&()).into_owned()),
            name: Some(u.name_any()),
            namespace: Some(self.config.namespace.clone()),
            uid: u.metadata.uid.clone(),
            ..Default::default()
        };
        events::record(
            &self.client,
            &self.reporter(),
            about,
            &self.config.namespace,
            type_,
            reason,
            message,
        )
        .await;
    }

    async fn event_on_node(&self, n: &NodeView, type_: &str, reason: &str, message: String) {
        let about = events::node_ref(&n.name, n.uid.clone());
        events::record(
            &self.client,
            &self.reporter(),
            about,
            NODE_EVENT_NAMESPACE,
            type_,
            reason,
            message,
        )
        .await;
    }
}

/// Read one request: the head within [`wire::MAX_HEAD`], then exactly its body. The outer
/// `Err` is a connection to drop without an answer; the inner one is answered.
async fn read(stream: &mut TcpStream) -> std::io::Result<Result<Request, Rejection>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = wire::head_end(&buf) {
            break end;
        }
        if buf.len() > wire::MAX_HEAD {
            return Ok(Err(Rejection::new(
                Kind::BadRequest,
                format!("the request head passes {} bytes", wire::MAX_HEAD),
            )));
        }
        match stream.read(&mut chunk).await? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a whole head",
                ))
            }
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = match wire::parse_head(&buf, end) {
        Ok(h) => h,
        Err(r) => return Ok(Err(r)),
    };
    let want = head.body_start + head.content_length;
    while buf.len() < want {
        match stream.read(&mut chunk).await? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the whole body",
                ))
            }
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(wire::parse_body(head.op, &buf[head.body_start..want]))
}
