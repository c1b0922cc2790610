//! The coordinator's run loop: elected through a Lease ([`super::lease`]), it watches the
//! Updates and the Nodes, asks the planner ([`super::plan`]) and writes what it decided: grants
//! as Node annotations, the Update's status, and Events on the Update and its Nodes. It decides
//! nothing itself.
//!
//! Expected flow: every hkd runs [`Coordinator::run`]; one wins the Lease and leads: a watch on
//! the Nodes and one on the Updates of its namespace wake it, the planner's `wake_after` (a
//! maintenance window opening) and the Lease's renewal are its only timers. On each wake-up it
//! reads the Updates and Nodes afresh and plans each Update in turn. Stopping (hkd exits, or
//! its own node is about to drain) releases the Lease so another takes over at once.
//!
//! Guarantees:
//! - all rollout state lives in API objects (I7): grants and the agents' answers on the Nodes,
//!   the target generation and conditions in the Update's status; a successor reads exactly
//!   what its predecessor wrote, so no grant is lost or made twice;
//! - a grant is written with the resourceVersion of the Node it was decided on, and the status
//!   with the Update's; a 409 means the world moved: read again and plan again;
//! - plans are made on fresh reads, never on a cache that may not hold the last grants yet, so
//!   `maxUnavailable` (I1) holds across consecutive wake-ups;
//! - nothing is written once the Lease's term, as last renewed, is about to end;
//! - Events: one `Granted` per grant written (on the Update and on the Node); `Halted`,
//!   `Complete` and `Paused` when the Update's stored state changes to them (read from the
//!   status, so a successor does not repeat its predecessor's).
//!
//! Assumptions: the Update CRD is installed; the client has kube's own retry off.
//!
//! Caveats: each wake-up lists all Nodes, in pages turned into views as they come, so memory
//! stays bounded by a page (a reflector store with the coordinator's own writes laid over it
//! would spare the reads on large clusters); an Event whose write fails after its
//! status write is logged, not retried.

use std::collections::HashMap;
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

use super::annotations::{NodeView, GRANT};
use super::events::{self, brief, Reporter};
use super::lease::{Elector, Role, LEASE_NAME};
use super::plan::{plan, RolloutPlan, COMPLETE, HALTED, PAUSED};
use super::update::{ImagePolicy, Update, NAMESPACE};

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
    pub image_policy: ImagePolicy,
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
            image_policy: ImagePolicy::default(),
        }
    }
}

/// How a term as leader ended.
enum End {
    Stopped,
    Lost,
}

pub struct Coordinator {
    client: Client,
    config: Config,
    elector: Elector,
    leading: watch::Sender<bool>,
}

impl Coordinator {
    pub fn new(client: Client, config: Config) -> Coordinator {
        let elector = Elector::new(
            client.clone(),
            &config.namespace,
            &config.lease_name,
            &config.identity,
            config.lease_duration,
        );
        Coordinator {
            client,
            config,
            elector,
            leading: watch::channel(false).0,
        }
    }

    /// Whether this coordinator leads now (for metrics, status and tests).
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Campaign, lead while elected, and campaign again after a lost term, until `stop` turns
    /// true (or its sender goes away); then release the Lease if held.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let now = Timestamp::now();
            let wait = match self.elector.try_lead(now).await {
                Ok(Role::Leader { until }) => {
                    tracing::info!("coordinator {} leads", self.config.identity);
                    self.leading.send_replace(true);
                    let end = self.lead(until, &mut stop).await;
                    self.leading.send_replace(false);
                    match end {
                        End::Stopped => {
                            if let Err(e) = self.elector.step_down().await {
                                tracing::warn!("{e:#}");
                            }
                            return Ok(());
                        }
                        End::Lost => {
                            tracing::warn!("coordinator {} lost its Lease", self.config.identity);
                            self.config.renew_every
                        }
                    }
                }
                Ok(Role::Follower { until, .. }) => {
                    let to_expiry = until.map(|u| {
                        Duration::try_from(now.duration_until(u)).unwrap_or(Duration::ZERO)
                            + Duration::from_millis(10)
                    });
                    to_expiry.map_or(self.config.renew_every, |d| d.min(self.config.renew_every))
                }
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
    async fn lead(&self, mut until: Timestamp, stop: &mut watch::Receiver<bool>) -> End {
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
        loop {
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
                match self.elector.try_lead(Timestamp::now()).await {
                    Ok(Role::Leader { until: u }) => {
                        until = u;
                        renew_at = Instant::now() + self.config.renew_every;
                    }
                    Ok(Role::Follower { .. }) => return End::Lost,
                    Err(e) => {
                        tracing::warn!("{e:#}");
                        if !self.holds(until) {
                            return End::Lost;
                        }
                        renew_at =
                            Instant::now() + self.config.retry_after.min(self.config.renew_every);
                    }
                }
            }
            if plan_at.is_some_and(|p| p <= Instant::now()) {
                plan_at = match self.reconcile(until).await {
                    Ok(wake_after) => wake_after.map(|d| Instant::now() + d),
                    Err(e) => {
                        tracing::warn!("{e:#}");
                        if !self.holds(until) {
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

    /// Whether the Lease, as last renewed, still has more than one renewal interval to run:
    /// the margin keeps a successor's takeover (at expiry) clear of this one's last write.
    fn holds(&self, until: Timestamp) -> bool {
        let margin = jiff::SignedDuration::try_from(self.config.renew_every).unwrap_or_default();
        until
            .checked_sub(margin)
            .is_ok_and(|t| Timestamp::now() < t)
    }

    /// Plan every Update of the namespace, oldest first, and write the results. Returns when
    /// to plan again without an event.
    async fn reconcile(&self, until: Timestamp) -> Result<Option<Duration>> {
        let ns = &self.config.namespace;
        let mut updates = self
            .updates()
            .list(&ListParams::default())
            .await
            .map_err(|e| anyhow!("listing Updates in {ns}: {}", brief(&e)))?
            .items;
        updates.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref(), a.name_any())
                .cmp(&(b.metadata.creation_timestamp.as_ref(), b.name_any()))
        });
        let mut wake: Option<Duration> = None;
        let mut first_error = None;
        for update in updates {
            if update.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // One Update's trouble does not hold up the others; the first error is returned
            // (and retried) once all were planned.
            match self.reconcile_one(update, until).await {
                Ok(Some(w)) => wake = Some(wake.map_or(w, |x| x.min(w))),
                Ok(None) => {}
                Err(e) if first_error.is_none() => first_error = Some(e),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(wake),
        }
    }

    async fn reconcile_one(
        &self,
        mut update: Update,
        until: Timestamp,
    ) -> Result<Option<Duration>> {
        let what = format!("Update {}/{}", self.config.namespace, update.name_any());
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        for attempt in 0..CONFLICT_RETRIES {
            if attempt > 0 {
                update = self
                    .updates()
                    .get(&update.name_any())
                    .await
                    .map_err(|e| anyhow!("reading {what}: {}", brief(&e)))?;
            }
            let (views, versions) = node_views(&nodes_api)
                .await
                .map_err(|e| anyhow!("listing Nodes for {what}: {}", brief(&e)))?;
            let p = plan(&update, &views, Timestamp::now(), self.config.image_policy);
            if !self.write_grants(&update, &versions, &p, until).await? {
                continue;
            }
            if !self.write_status(&update, &p, until).await? {
                continue;
            }
            return Ok(p.wake_after);
        }
        Err(anyhow!(
            "planning {what}: its Nodes or status changed under {CONFLICT_RETRIES} attempts in a row"
        ))
    }

    /// Write the plan's grants, each conditional on the Node's resourceVersion. Returns false
    /// on a conflict (the plan is stale).
    async fn write_grants(
        &self,
        update: &Update,
        versions: &HashMap<String, String>,
        p: &RolloutPlan,
        until: Timestamp,
    ) -> Result<bool> {
        let Some(grant) = &p.grant else {
            return Ok(true);
        };
        let api: Api<Node> = Api::all(self.client.clone());
        for name in &p.grants {
            if !self.holds(until) {
                return Err(anyhow!(
                    "granting node {name}: Lease {} is about to expire",
                    self.config.lease_name
                ));
            }
            let rv = versions.get(name);
            let patch = json!({"metadata": {
                "resourceVersion": rv,
                "annotations": {GRANT: grant.to_string()},
            }});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(node) => {
                    tracing::info!("granted node {name} ({grant})");
                    self.record(
                        update,
                        "Normal",
                        "Granted",
                        format!("node {name} may upgrade (grant {grant})"),
                    )
                    .await;
                    let u = update.name_any();
                    self.record_on_node(
                        &node,
                        "Normal",
                        "Granted",
                        format!(
                            "may upgrade for Update {}/{u} (grant {grant})",
                            self.config.namespace
                        ),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return Ok(false),
                Err(e) => return Err(anyhow!("granting node {name} ({grant}): {}", brief(&e))),
            }
        }
        Ok(true)
    }

    /// Write the status when it changed, conditional on the Update's resourceVersion, and the
    /// Events its change of state calls for. Returns false on a conflict.
    async fn write_status(
        &self,
        update: &Update,
        p: &RolloutPlan,
        until: Timestamp,
    ) -> Result<bool> {
        let name = update.name_any();
        let prev = update.status.clone().unwrap_or_default();
        if update.status.as_ref() == Some(&p.status) {
            return Ok(true);
        }
        if !self.holds(until) {
            return Err(anyhow!(
                "writing the status of Update {}/{name}: Lease {} is about to expire",
                self.config.namespace,
                self.config.lease_name
            ));
        }
        let stored = serde_json::to_value(&update.status).unwrap_or_default();
        let patch = json!({
            "metadata": {"resourceVersion": update.metadata.resource_version},
            "status": merge_patch(&stored, &serde_json::to_value(&p.status).unwrap_or_default()),
        });
        match self
            .updates()
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false),
            Err(e) => {
                return Err(anyhow!(
                    "writing the status of Update {}/{name}: {}",
                    self.config.namespace,
                    brief(&e)
                ))
            }
        }
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
        Ok(true)
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

    /// Record a core/v1 Event on a Node, where `kubectl describe node` shows it.
    async fn record_on_node(&self, node: &Node, type_: &str, reason: &str, message: String) {
        let about = events::node_ref(&node.name_any(), node.metadata.uid.clone());
        self.record_on(about, NODE_EVENT_NAMESPACE, type_, reason, message)
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

/// All Nodes as the planner sees them, with their resourceVersions (for the grants'
/// preconditions). Read in pages, each turned into views before the next is read: a whole
/// list of 2000 real Nodes is tens of MiB of JSON, and holding it (and kube's copies of it)
/// at once is what the coordinator's memory would be made of. The pages come from one
/// snapshot of the server (the continue token pins its resourceVersion); when that snapshot
/// has expired (410) the read starts over.
pub async fn node_views(
    api: &Api<Node>,
) -> Result<(Vec<NodeView>, HashMap<String, String>), kube::Error> {
    'again: loop {
        let mut views = Vec::new();
        let mut versions = HashMap::new();
        let mut params = ListParams::default().limit(NODE_PAGE);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(kube::Error::Api(s)) if s.code == 410 => continue 'again,
                Err(e) => return Err(e),
            };
            for node in &page.items {
                let view = NodeView::from_node(node);
                if let Some(rv) = &node.metadata.resource_version {
                    versions.insert(view.name.clone(), rv.clone());
                }
                views.push(view);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok((views, versions)),
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
