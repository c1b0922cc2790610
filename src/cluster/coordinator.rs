//! The coordinator's run loop: elected through a Lease ([`super::lease`]), it watches the
//! Updates and the Nodes, asks the planner ([`super::plan`]) and writes what it decided: the
//! grants into the Update's ledger ([`super::ledger`]) together with its status, and Events
//! on the Update and its Nodes. It decides nothing itself.
//!
//! Expected flow: every coordinator candidate runs [`Coordinator::run`]; one wins the Lease
//! and leads: a watch on the Nodes and one on the Updates of its namespace wake it, the
//! planner's `wake_after` (a maintenance window opening) and the Lease's renewal are its only
//! timers. On each wake-up it reads the Updates and Nodes afresh, records its term in every
//! Update it has not claimed yet, and plans each Update in turn. Stopping (hkd exits, or its
//! own node is about to drain) releases the Lease so another takes over at once.
//!
//! Guarantees:
//! - all rollout state lives in API objects (I7): the grants, the target generation and
//!   conditions in the Update's status, the agents' answers on the Nodes; a successor reads
//!   exactly what its predecessor wrote, so no grant is lost or made twice;
//! - fenced writes (I9): the grants and the status go out in one write, conditional on the
//!   Update's resourceVersion and made only once this term is recorded in that Update; a
//!   newer term read there ends this term at once; a 409 means the world moved: read again
//!   and plan again;
//! - every request has a time limit shorter than the Lease's renewal interval, and nothing is
//!   written once the term, counted on this process's monotonic clock from its last renewal,
//!   is within one renewal of its end;
//! - plans are made on fresh reads, never on a cache that may not hold the last grants yet, so
//!   `maxUnavailable` (I1) holds across consecutive wake-ups;
//! - Events: one `Granted` per grant written (on the Update and on the Node); `Halted`,
//!   `Complete` and `Paused` when the Update's stored state changes to them (read from the
//!   status, so a successor does not repeat its predecessor's).
//!
//! Assumptions: the Update CRD is installed; the client has kube's own retry off; only the
//! coordinator's identity may write Update status (the shipped RBAC).
//!
//! Caveats: each wake-up lists all Nodes, in pages turned into views as they come, so memory
//! stays bounded by a page (a reflector store with the coordinator's own writes laid over it
//! would spare the reads on large clusters); an Event whose write fails after its
//! status write is logged, not retried; a grant is decided on a Node as listed, and the
//! ledger write is conditional on the Update only, so a node cordoned or gone NotReady in
//! the moment between is granted once more than its state would allow (the next plan counts
//! it out of service, and its agent still drains it safely).

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::annotations::NodeView;
use super::events::{self, brief, Reporter};
use super::lease::{Elector, Role, LEASE_NAME};
use super::ledger::{self, Standing};
use super::plan::{RolloutPlan, COMPLETE, HALTED, PAUSED};
use super::update::{Hold, ImagePolicy, Update, UpdateStatus, NAMESPACE};

/// The `source.component` and `reportingComponent` of the Events written.
pub const COMPONENT: &str = "housekeeper-coordinator";

pub use super::events::NODE_EVENT_NAMESPACE;

/// How often a plan is retried after its writes met a 409 before the wake-up gives up (the
/// next event or `retry_after` tries again).
const CONFLICT_RETRIES: usize = 5;

/// Settings; [`Config::new`] has the production values, tests shorten the times.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the Updates and the Lease live.
    pub namespace: String,
    pub lease_name: String,
    /// This coordinator's name in the Lease (the node name).
    pub identity: String,
    /// How long a Lease holds without renewal: how long the rollout stands still when its
    /// coordinator dies without stepping down.
    pub lease_duration: Duration,
    /// How often the leader renews and a follower looks; well under `lease_duration`, so
    /// that one failed renewal does not lose the Lease.
    pub renew_every: Duration,
    /// Wait after an API error before trying again.
    pub retry_after: Duration,
    /// The longest any one request may take (at most nine tenths of `renew_every`, the
    /// margin kept before the term ends), so no request of this term is still awaited when
    /// it ends.
    pub request_timeout: Duration,
    pub image_policy: ImagePolicy,
    /// A seam for tests only: the coordinator's wall clock runs off by this much (the Lease's
    /// `renewTime`, the planner's `now`), as on a host whose clock is wrong.
    pub wall_offset: jiff::SignedDuration,
    /// Beaten on every wake-up, leading or not (hkd's watchdog listens).
    pub heartbeat: super::heartbeat::Heartbeat,
    /// The rollout metrics this coordinator updates (hkd serves them).
    pub metrics: std::sync::Arc<super::rollout_metrics::RolloutMetrics>,
    /// How often an Update held by something no watch reports (a blocking pod) is planned
    /// again: how long a node waits after its blocking pod is gone.
    pub recheck_every: Duration,
    /// A seam for tests only: after this many ledger writes that record grants, the process
    /// stops itself (SIGSTOP) right before sending the next one, as a coordinator frozen
    /// between its last check of the term and its write would; a test continues it.
    pub stop_before_grant: Option<usize>,
}

impl Config {
    pub fn new(identity: &str) -> Config {
        Config {
            namespace: NAMESPACE.to_owned(),
            lease_name: LEASE_NAME.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_after: Duration::from_secs(2),
            request_timeout: Duration::from_secs(4),
            image_policy: ImagePolicy::default(),
            wall_offset: jiff::SignedDuration::ZERO,
            stop_before_grant: None,
            heartbeat: Default::default(),
            recheck_every: Duration::from_secs(10),
            metrics: super::rollout_metrics::global(),
        }
    }
}

/// How a term as leader ended.
enum End {
    Stopped,
    Lost,
}

/// A newer coordinator term is recorded in an Update: this one's is over.
#[derive(Debug)]
struct Superseded {
    update: String,
    newer: i64,
}

impl std::fmt::Display for Superseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Update {} records the newer coordinator term {}",
            self.update, self.newer
        )
    }
}

impl std::error::Error for Superseded {}

/// The term this coordinator leads in, as others in the process see it (the FleetLock server
/// writes to the ledger only under it): its number, when it ends unless renewed (monotonic)
/// and the margin before that end within which nothing more is written.
#[derive(Debug, Clone, Copy)]
pub struct Leading {
    pub term: i64,
    pub until: Instant,
    pub margin: Duration,
}

impl Leading {
    /// Whether a write may still go out under this term (see `Coordinator::holds`).
    pub fn holds(&self) -> bool {
        Instant::now() + self.margin < self.until
    }
}

/// One term as leader: its number and when it ends unless renewed (monotonic).
#[derive(Debug, Clone, Copy)]
struct Term {
    number: i64,
    until: Instant,
}

pub struct Coordinator {
    client: Client,
    config: Config,
    elector: Elector,
    leading: watch::Sender<bool>,
    term: watch::Sender<Option<Leading>>,
    /// Ledger writes with grants sent so far (for the `stop_before_grant` seam).
    grant_writes: std::sync::atomic::AtomicUsize,
    /// Webhook deliveries, off this loop.
    notifier: super::notify::Notifier,
}

impl Coordinator {
    pub fn new(client: Client, config: Config) -> Coordinator {
        let elector = Elector::new(
            client.clone(),
            &config.namespace,
            &config.lease_name,
            &config.identity,
            config.lease_duration,
        )
        .with_wall_offset(config.wall_offset);
        Coordinator {
            client,
            config,
            elector,
            leading: watch::channel(false).0,
            term: watch::channel(None).0,
            grant_writes: Default::default(),
            notifier: Default::default(),
        }
    }

    /// Whether this coordinator leads now (for metrics, status and tests).
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// The term this coordinator leads in now, `None` while it does not lead.
    pub fn term(&self) -> watch::Receiver<Option<Leading>> {
        self.term.subscribe()
    }

    fn publish(&self, term: Option<Term>) {
        self.term.send_replace(term.map(|t| Leading {
            term: t.number,
            until: t.until,
            margin: self.config.renew_every,
        }));
    }

    /// Campaign, lead while elected, and campaign again after a lost term, until `stop` turns
    /// true (or its sender goes away); then release the Lease if held.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            self.config.heartbeat.beat();
            let wait = match self.bounded("the Lease", self.elector.try_lead()).await {
                Ok(Role::Leader { term, until }) => {
                    tracing::info!("coordinator {} leads (term {term})", self.config.identity);
                    self.leading.send_replace(true);
                    let end = self
                        .lead(
                            Term {
                                number: term,
                                until,
                            },
                            &mut stop,
                        )
                        .await;
                    self.leading.send_replace(false);
                    self.publish(None);
                    match end {
                        End::Stopped => {
                            if let Err(e) =
                                self.bounded("the Lease", self.elector.step_down()).await
                            {
                                tracing::warn!("{e:#}");
                            }
                            return Ok(());
                        }
                        End::Lost => {
                            tracing::warn!(
                                "coordinator {} lost its term {term}",
                                self.config.identity
                            );
                            self.elector.forget_term();
                            self.config.renew_every
                        }
                    }
                }
                Ok(Role::Follower { remaining, .. }) => remaining
                    .map_or(self.config.renew_every, |d| {
                        (d + Duration::from_millis(10)).min(self.config.renew_every)
                    }),
                Err(e) => {
                    tracing::warn!("{e:#}");
                    self.config.retry_after
                }
            };
            tokio::select! {
                _ = stopped(&mut stop) => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One term: watch, plan, write, renew.
    async fn lead(&self, mut term: Term, stop: &mut watch::Receiver<bool>) -> End {
        let nodes = watcher(
            Api::<Node>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|_| ());
        let updates = watcher(self.updates(), watcher::Config::default())
            .default_backoff()
            .map(|_| ());
        let mut events = futures::stream::select(nodes.boxed(), updates.boxed());
        let mut renew_at = Instant::now() + self.config.renew_every;
        let mut plan_at = Some(Instant::now());
        self.publish(Some(term));
        loop {
            self.config.heartbeat.beat();
            let wake = plan_at.map_or(renew_at, |p| p.min(renew_at));
            tokio::select! {
                _ = stopped(stop) => return End::Stopped,
                ev = events.next() => {
                    if ev.is_none() {
                        return End::Lost;
                    }
                    // Several changes at once (our own grants, an agent's phases): one plan.
                    while let Some(Some(())) = events.next().now_or_never() {}
                    plan_at = Some(Instant::now());
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= renew_at {
                match self.bounded("the Lease", self.elector.try_lead()).await {
                    Ok(Role::Leader { term: n, until }) if n == term.number => {
                        term.until = until;
                        self.publish(Some(term));
                        renew_at = Instant::now() + self.config.renew_every;
                    }
                    Ok(_) => return End::Lost,
                    Err(e) => {
                        tracing::warn!("{e:#}");
                        if !self.holds(term) {
                            return End::Lost;
                        }
                        renew_at =
                            Instant::now() + self.config.retry_after.min(self.config.renew_every);
                    }
                }
            }
            if plan_at.is_some_and(|p| p <= Instant::now()) {
                plan_at = match self.reconcile(term).await {
                    Ok(wake_after) => wake_after.map(|d| Instant::now() + d),
                    Err(e) if e.downcast_ref::<Superseded>().is_some() => {
                        tracing::warn!("{e:#}");
                        return End::Lost;
                    }
                    Err(e) => {
                        tracing::warn!("{e:#}");
                        if !self.holds(term) {
                            return End::Lost;
                        }
                        Some(Instant::now() + self.config.retry_after)
                    }
                };
            }
        }
    }

    fn updates(&self) -> Api<Update> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Whether the term, as last renewed, still has more than one renewal interval to run on
    /// this process's monotonic clock: the margin keeps a successor's takeover clear of this
    /// one's last write (and every request ends within it).
    fn holds(&self, term: Term) -> bool {
        Instant::now() + self.config.renew_every < term.until
    }

    /// This coordinator's wall clock (the test seam's offset applied).
    fn now(&self) -> Timestamp {
        let now = Timestamp::now();
        now.checked_add(self.config.wall_offset).unwrap_or(now)
    }

    /// `request` within the time limit; its own error or the limit's, as one line.
    async fn bounded<T>(&self, what: &str, request: impl Future<Output = Result<T>>) -> Result<T> {
        let limit = self.limit();
        match tokio::time::timeout(limit, request).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!(
                "{what}: no answer from the API server within {limit:?}"
            )),
        }
    }

    /// The time limit of one request: `request_timeout`, and never more than nine tenths of
    /// the margin kept before a term ends.
    fn limit(&self) -> Duration {
        self.config
            .request_timeout
            .min(self.config.renew_every.mul_f32(0.9))
    }

    /// A kube request within the time limit; the limit's error as one line, kube's as is (so
    /// callers still tell a 409 from the rest).
    async fn kube<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>> {
        let limit = self.limit();
        tokio::time::timeout(limit, request)
            .await
            .map_err(|_| anyhow!("{what}: no answer from the API server within {limit:?}"))
    }

    /// Plan every Update of the namespace, oldest first, and write the results. Returns when
    /// to plan again without an event.
    async fn reconcile(&self, term: Term) -> Result<Option<Duration>> {
        let mut updates = self.claim_all(term).await?;
        updates.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref(), a.name_any())
                .cmp(&(b.metadata.creation_timestamp.as_ref(), b.name_any()))
        });
        let mut wake: Option<Duration> = None;
        let mut first_error = None;
        for i in 0..updates.len() {
            if updates[i].metadata.deletion_timestamp.is_some() {
                continue;
            }
            // One Update's trouble does not hold up the others; the first error is returned
            // (and retried) once all were planned. Losing the term ends the wake-up at once.
            match self.reconcile_one(&mut updates, i, term).await {
                Ok(Some(w)) => wake = Some(wake.map_or(w, |x| x.min(w))),
                Ok(None) => {}
                Err(e) if e.downcast_ref::<Superseded>().is_some() => return Err(e),
                Err(e) if first_error.is_none() => first_error = Some(e),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(wake),
        }
    }

    /// List the Updates and record this term in each that does not show it yet, before any
    /// plan: a grant an older term still managed to write is then in what this term plans on,
    /// and none can land after. Returns the Updates as claimed.
    async fn claim_all(&self, term: Term) -> Result<Vec<Update>> {
        let ns = &self.config.namespace;
        for _ in 0..CONFLICT_RETRIES {
            let listed = self
                .kube(
                    "listing Updates",
                    self.updates().list(&ListParams::default()),
                )
                .await?
                .map_err(|e| anyhow!("listing Updates in {ns}: {}", brief(&e)))?
                .items;
            let mut claimed = Vec::with_capacity(listed.len());
            let mut conflict = false;
            for u in listed {
                let recorded = u.status.as_ref().and_then(|s| s.coordinator_term);
                match ledger::standing(recorded, term.number) {
                    Standing::Claimed => claimed.push(u),
                    Standing::Superseded { newer } => {
                        return Err(Superseded {
                            update: format!("{ns}/{}", u.name_any()),
                            newer,
                        }
                        .into())
                    }
                    Standing::Claim => match self.claim(&u, term).await? {
                        Some(u) => claimed.push(u),
                        None => {
                            conflict = true;
                            break;
                        }
                    },
                }
            }
            if !conflict {
                return Ok(claimed);
            }
        }
        Err(anyhow!(
            "claiming the Updates in {ns} for term {}: they changed under {CONFLICT_RETRIES} \
             attempts in a row",
            term.number
        ))
    }

    /// Record the term in one Update, conditional on the resourceVersion read. `None` on a
    /// conflict.
    async fn claim(&self, update: &Update, term: Term) -> Result<Option<Update>> {
        let name = update.name_any();
        let what = format!("claiming Update {}/{name}", self.config.namespace);
        if !self.holds(term) {
            return Err(anyhow!("{what}: the term is about to end"));
        }
        let patch = json!({
            "metadata": {"resourceVersion": update.metadata.resource_version},
            "status": {"coordinatorTerm": term.number},
        });
        match self
            .kube(
                &what,
                self.updates()
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?
        {
            Ok(u) => {
                tracing::info!("{what}: term {} recorded", term.number);
                Ok(Some(u))
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
            Err(e) => Err(anyhow!("{what}: {}", brief(&e))),
        }
    }

    async fn reconcile_one(
        &self,
        updates: &mut [Update],
        i: usize,
        term: Term,
    ) -> Result<Option<Duration>> {
        let what = format!("Update {}/{}", self.config.namespace, updates[i].name_any());
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        for attempt in 0..CONFLICT_RETRIES {
            if attempt > 0 {
                let fresh = self
                    .kube(&what, self.updates().get(&updates[i].name_any()))
                    .await?
                    .map_err(|e| anyhow!("reading {what}: {}", brief(&e)))?;
                let recorded = fresh.status.as_ref().and_then(|s| s.coordinator_term);
                if let Standing::Superseded { newer } = ledger::standing(recorded, term.number) {
                    return Err(Superseded {
                        update: what.clone(),
                        newer,
                    }
                    .into());
                }
                updates[i] = fresh;
            }
            let mut views = self
                .kube(&what, node_views(&nodes_api))
                .await?
                .map_err(|e| anyhow!("listing Nodes for {what}: {}", brief(&e)))?;
            for refused in ledger::attach(&mut views, updates) {
                tracing::warn!("{refused}");
            }
            let update = &updates[i];
            let now = self.now();
            let (mut p, holds) = super::outside::plan(
                &self.client,
                &self.config.namespace,
                self.limit(),
                self.config.recheck_every,
                update,
                &views,
                now,
                self.config.image_policy,
            )
            .await;
            let names: HashSet<&str> = views.iter().map(|v| v.name.as_str()).collect();
            let stored = update.status.clone().unwrap_or_default();
            let generation = update.metadata.generation.unwrap_or(1);
            ledger::record(
                &mut p.status,
                &stored,
                &p.grants,
                generation,
                term.number,
                now,
                |n| names.contains(n),
            );
            match self.write_status(update, &p, term).await? {
                Some(written) => {
                    self.after_write(&updates[i], &stored, &p, &holds);
                    updates[i] = written;
                    self.announce_grants(&updates[i], &p, &views).await;
                    return Ok(p.wake_after);
                }
                None => continue,
            }
        }
        Err(anyhow!(
            "planning {what}: its Nodes or status changed under {CONFLICT_RETRIES} attempts in a row"
        ))
    }

    /// What a written plan tells the metrics and the webhook (which never waits).
    fn after_write(&self, update: &Update, stored: &UpdateStatus, p: &RolloutPlan, holds: &[Hold]) {
        let ns = &self.config.namespace;
        let name = update.name_any();
        self.config
            .metrics
            .observe(ns, &name, &p.status, holds, p.grants.len());
        let Some(n) = &update.spec.notifications else {
            return;
        };
        let uid = update.metadata.uid.clone().unwrap_or_default();
        let generation = p.status.target_generation.unwrap_or(0);
        for (event, node, message) in super::notify::events(stored, &p.status, &p.grants) {
            let id = match &node {
                Some(node) => format!("{uid}/{generation}/{event}/{node}"),
                None => format!("{uid}/{generation}/{event}"),
            };
            self.notifier.send(
                &n.webhook_url,
                super::notify::Notification {
                    api_version: "housekeeper.io/v1alpha1".into(),
                    kind: "RolloutNotification".into(),
                    id,
                    event: event.into(),
                    namespace: ns.clone(),
                    update: name.clone(),
                    target: update.spec.os_image_url.clone(),
                    node,
                    message,
                    time: self.now().to_string(),
                },
            );
        }
    }

    /// The `stop_before_grant` seam (tests only; `None` in production).
    fn maybe_stop_before_grant(&self) {
        let Some(after) = self.config.stop_before_grant else {
            return;
        };
        let n = self
            .grant_writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == after {
            tracing::warn!("test seam: stopping this process before its grant write");
            let me = std::process::id().to_string();
            if let Err(e) = crate::sys::command::Cmd::new("kill")
                .args(["-STOP", me.as_str()])
                .run()
            {
                tracing::warn!("test seam: {e}");
            }
            tracing::warn!("test seam: continued; sending the grant write now");
        }
    }

    /// The `Granted` Events of grants just recorded (on the Update and on each Node).
    async fn announce_grants(&self, update: &Update, p: &RolloutPlan, views: &[NodeView]) {
        let Some(grant) = &p.grant else { return };
        for name in &p.grants {
            tracing::info!("granted node {name} ({grant})");
            self.record(
                update,
                "Normal",
                "Granted",
                format!("node {name} may upgrade (grant {grant})"),
            )
            .await;
            let uid = views
                .iter()
                .find(|v| &v.name == name)
                .and_then(|v| v.uid.clone());
            let about = events::node_ref(name, uid);
            self.record_on(
                about,
                NODE_EVENT_NAMESPACE,
                "Normal",
                "Granted",
                format!(
                    "may upgrade for Update {}/{} (grant {grant})",
                    self.config.namespace,
                    update.name_any()
                ),
            )
            .await;
        }
    }

    /// Write the status (with the ledger) when it changed, conditional on the Update's
    /// resourceVersion, and the Events its change of state calls for. Returns the Update as
    /// written (or as it was, when nothing changed); `None` on a conflict.
    async fn write_status(
        &self,
        update: &Update,
        p: &RolloutPlan,
        term: Term,
    ) -> Result<Option<Update>> {
        let name = update.name_any();
        let prev = update.status.clone().unwrap_or_default();
        if update.status.as_ref() == Some(&p.status) {
            return Ok(Some(update.clone()));
        }
        let what = format!(
            "writing the status of Update {}/{name}",
            self.config.namespace
        );
        if !self.holds(term) {
            return Err(anyhow!(
                "{what}: the term of Lease {} is about to end",
                self.config.lease_name
            ));
        }
        if !p.grants.is_empty() {
            self.maybe_stop_before_grant();
        }
        let stored = serde_json::to_value(&update.status).unwrap_or_default();
        let patch = json!({
            "metadata": {"resourceVersion": update.metadata.resource_version},
            "status": merge_patch(&stored, &serde_json::to_value(&p.status).unwrap_or_default()),
        });
        let written = match self
            .kube(
                &what,
                self.updates()
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?
        {
            Ok(u) => u,
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(None),
            Err(e) => return Err(anyhow!("{what}: {}", brief(&e))),
        };
        let state = p.status.state.as_deref();
        if state != prev.state.as_deref() {
            let message = p
                .status
                .conditions
                .iter()
                .find(|c| Some(c.type_.as_str()) == state && !c.message.is_empty())
                .map(|c| c.message.clone());
            match state {
                Some(HALTED) => {
                    let why = p.halt.clone().or(message).unwrap_or_default();
                    self.record(update, "Warning", HALTED, format!("rollout halted: {why}"))
                        .await;
                }
                Some(COMPLETE) => {
                    let m = message.unwrap_or_else(|| "rollout complete".into());
                    self.record(update, "Normal", COMPLETE, m).await;
                }
                Some(PAUSED) => {
                    self.record(update, "Normal", PAUSED, "paused: no new grants".into())
                        .await;
                }
                _ => {}
            }
        }
        Ok(Some(written))
    }

    /// Record a core/v1 Event on the Update.
    async fn record(&self, update: &Update, type_: &str, reason: &str, message: String) {
        let about = ObjectReference {
            api_version: Some(Update::api_version(&()).into_owned()),
            kind: Some(Update::kind(&()).into_owned()),
            name: Some(update.name_any()),
            namespace: Some(self.config.namespace.clone()),
            uid: update.metadata.uid.clone(),
            resource_version: update.metadata.resource_version.clone(),
            field_path: None,
        };
        self.record_on(about, &self.config.namespace, type_, reason, message)
            .await;
    }

    /// Write one Event (a failure is logged: the status and annotations say it too).
    async fn record_on(
        &self,
        about: ObjectReference,
        ns: &str,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let by = Reporter {
            component: COMPONENT,
            instance: self.config.identity.clone(),
        };
        events::record(&self.client, &by, about, ns, type_, reason, message).await;
    }
}

/// How many Nodes one page of the Node list holds.
const NODE_PAGE: u32 = 500;

/// All Nodes as the planner sees them. Read in pages, each turned into views before the next
/// is read: a whole list of 2000 real Nodes is tens of MiB of JSON, and holding it (and kube's
/// copies of it) at once is what the coordinator's memory would be made of. The pages come
/// from one snapshot of the server (the continue token pins its resourceVersion); when that
/// snapshot has expired (410) the read starts over.
pub async fn node_views(api: &Api<Node>) -> Result<Vec<NodeView>, kube::Error> {
    'again: loop {
        let mut views = Vec::new();
        let mut params = ListParams::default().limit(NODE_PAGE);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(kube::Error::Api(s)) if s.code == 410 => continue 'again,
                Err(e) => return Err(e),
            };
            views.extend(page.items.iter().map(NodeView::from_node));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(views),
            }
        }
    }
}

/// Resolves when `stop` says true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`. A merge patch keeps whatever it
/// does not mention, so a key `new` lacks (an omitted empty list, a `kubeVersion` gone from the
/// target) is sent as null; objects are recursed into, anything else is sent whole. Unchanged
/// keys are sent too: `old` is the status as read back through the Rust types, whose defaults
/// may stand for keys the server does not hold.
fn merge_patch(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, nv) in n {
                let v = match o.get(k) {
                    Some(ov) => merge_patch(ov, nv),
                    None => nv.clone(),
                };
                out.insert(k.clone(), v);
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_removes_what_the_new_status_lacks() {
        let old = json!({
            "state": "Progressing",
            "nodes": [{"name": "w-1", "phase": "Draining"}],
            "nodesOmitted": 3,
            "target": {"osImageURL": "a", "kubeVersion": "v1.20.2"},
            "counts": {"total": 2, "done": 1},
        });
        let new = json!({
            "state": "Waiting",
            "target": {"osImageURL": "a"},
            "counts": {"total": 2, "done": 2},
        });
        let p = merge_patch(&old, &new);
        assert_eq!(
            p,
            json!({
                "state": "Waiting",
                "nodes": null,
                "nodesOmitted": null,
                "target": {"osImageURL": "a", "kubeVersion": null},
                "counts": {"total": 2, "done": 2},
            })
        );
    }

    #[test]
    fn merge_patch_replaces_lists_whole_and_adds_new_keys() {
        let old = json!({"conditions": [{"type": "Complete", "status": "False"}]});
        let new = json!({
            "conditions": [{"type": "Complete", "status": "True"}],
            "observedGeneration": 2,
        });
        assert_eq!(merge_patch(&old, &new), new);
        assert_eq!(merge_patch(&json!({}), &new), new);
        assert_eq!(merge_patch(&new, &new), new);
        assert_eq!(merge_patch(&Value::Null, &new), new);
    }
}
