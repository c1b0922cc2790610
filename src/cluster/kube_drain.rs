//! The drain against the API server: cordon, evict, wait, and the policy after the timeout.
//! It decides nothing itself (the pods' fate is [`super::drain`]'s), and its result is honest:
//! every pod it could not evict, and why, with the PodDisruptionBudget when the server names it.
//!
//! Expected flow: [`Drainer::cordon`] (remembering in `housekeeper.io/cordoned-by-hkd` that
//! hkd did it) → [`Drainer::drain`] → reboot → [`Drainer::uncordon`].
//!
//! Guarantees:
//! - a node someone else cordoned is never uncordoned (I2): `uncordon` acts only when the
//!   annotation is there, and `cordon` leaves an existing cordon alone without claiming it;
//! - node writes carry the resourceVersion they were decided on (a 409 is re-read and re-decided);
//! - evictions go through the Eviction subresource at the version the server serves (found by
//!   discovery), with a body built here (`deleteOptions`, a UID precondition), so a pod
//!   replaced under the same name is never evicted by mistake;
//! - a 429 is retried with a capped exponential backoff, never in a busy loop.
//!
//! Assumptions: the client is built with kube's `default_retry = false` (kube's own retry turns
//! one PDB-blocked eviction into minutes of silence); some kubelet finishes evicted pods.
//!
//! Caveats: waiting for pods polls (the drain of one node holds few pods; a watch per node is
//! a later refinement); the timeout bounds the eviction phase, and `deleteWithoutEviction`
//! then waits at most [`DELETE_WAIT`] more.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{discovery, Api, Client};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::annotations::CORDONED_BY_HKD;
use super::drain::{self, pdb_from_message, PodRef};
use super::update::{DrainPolicy, OnTimeout};

/// How long `deleteWithoutEviction` waits for the deleted pods after the drain's timeout.
pub const DELETE_WAIT: Duration = Duration::from_secs(30);

/// How many conflicting node writes are re-decided before giving up.
const CONFLICT_RETRIES: usize = 5;

/// Tunables, with production defaults; tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Evictions in flight at once (kubectl evicts all at once; a bound keeps a 100-pod node
    /// from hitting the server with 100 requests per backoff round).
    pub parallel: usize,
    /// First wait after a 429, doubled up to `backoff_max`.
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// How often an evicted pod is looked for.
    pub poll: Duration,
    /// Beaten on every round of evicting and waiting (hkd's watchdog listens).
    pub heartbeat: super::heartbeat::Heartbeat,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            parallel: 16,
            backoff_start: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            poll: Duration::from_millis(500),
            heartbeat: Default::default(),
        }
    }
}

/// Why a pod is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stuck {
    /// A PodDisruptionBudget refused its eviction (named when the server said which).
    DisruptionBudget {
        pdb: Option<String>,
        message: String,
    },
    /// The drain filter refused it (needs consent).
    NeedsConsent(String),
    /// Evicted (or deleted) but not gone when time was up.
    StillTerminating,
    /// The server refused for another reason.
    Error(String),
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stuck::DisruptionBudget { pdb: Some(p), .. } => {
                write!(f, "PodDisruptionBudget {p} allows no disruption")
            }
            Stuck::DisruptionBudget { pdb: None, message } => {
                write!(f, "a PodDisruptionBudget allows no disruption: {message}")
            }
            Stuck::NeedsConsent(why) => f.write_str(why),
            Stuck::StillTerminating => f.write_str("still terminating"),
            Stuck::Error(e) => f.write_str(e),
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every pod that had to go is gone.
    Drained,
    /// Pods need consent the policy does not give: nothing was evicted, hkd's cordon lifted.
    Refused,
    /// Time ran out; `onTimeout: abort`: hkd's cordon (if any) was lifted, no reboot.
    Aborted,
    /// Time ran out; the rest was deleted without eviction and is gone.
    ForceDeleted,
    /// Time ran out; `onTimeout: proceed`: go on with what remains.
    Proceeded,
}

impl DrainOutcome {
    /// Whether the node may now reboot (I3).
    pub fn may_reboot(self) -> bool {
        matches!(
            self,
            DrainOutcome::Drained | DrainOutcome::ForceDeleted | DrainOutcome::Proceeded
        )
    }
}

/// What a drain did and did not do.
#[derive(Debug, Clone)]
pub struct DrainReport {
    pub node: String,
    pub outcome: DrainOutcome,
    pub evicted: Vec<PodRef>,
    pub deleted: Vec<PodRef>,
    pub skipped: Vec<(PodRef, &'static str)>,
    /// Pods still on the node, and why.
    pub remaining: Vec<(PodRef, Stuck)>,
}

impl DrainReport {
    /// One line for the node's reason annotation and Events.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "drain of node {}: {:?}, {} evicted, {} deleted, {} left alone",
            self.node,
            self.outcome,
            self.evicted.len(),
            self.deleted.len(),
            self.skipped.len()
        );
        for (p, why) in self.remaining.iter().take(3) {
            s.push_str(&format!("; {p}: {why}"));
        }
        if self.remaining.len() > 3 {
            s.push_str(&format!("; and {} more", self.remaining.len() - 3));
        }
        s
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The Eviction `apiVersion` the server takes: `pods/eviction` in core/v1 discovery names it
/// on servers that say; else the policy group's preferred version (policy/v1beta1 on 1.20).
pub async fn eviction_api_version(client: &Client) -> anyhow::Result<String> {
    let core = client
        .list_core_api_resources("v1")
        .await
        .map_err(|e| anyhow::anyhow!("discovering core/v1 resources: {e}"))?;
    if let Some(r) = core.resources.iter().find(|r| r.name == "pods/eviction") {
        if let (Some(g), Some(v)) = (&r.group, &r.version) {
            if !g.is_empty() && !v.is_empty() {
                return Ok(format!("{g}/{v}"));
            }
        }
    }
    let policy = discovery::group(client, "policy")
        .await
        .map_err(|e| anyhow::anyhow!("discovering the policy API group: {e}"))?;
    Ok(format!("policy/{}", policy.preferred_version_or_latest()))
}

/// The Eviction body: `deleteOptions` (kube 5.0.0's own type sends `delete_options`, which the
/// server ignores) with the pod's UID as precondition.
pub fn eviction_body(api_version: &str, pod: &PodRef, grace: Option<i64>) -> Value {
    let mut opts = json!({"preconditions": {"uid": pod.uid}});
    if let Some(g) = grace {
        opts["gracePeriodSeconds"] = json!(g);
    }
    json!({
        "apiVersion": api_version,
        "kind": "Eviction",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
        "deleteOptions": opts,
    })
}

/// Drains nodes through one client.
pub struct Drainer {
    client: Client,
    tuning: Tuning,
}

enum PodEnd {
    Gone,
    Stuck(Stuck),
}

impl Drainer {
    /// `client` must have kube's `default_retry` off (see the module documentation).
    pub fn new(client: Client, tuning: Tuning) -> Drainer {
        Drainer { client, tuning }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Cordon `node` and record that hkd did, under `grant`. A node already cordoned by someone
    /// else stays theirs: no annotation is added. Returns whether hkd holds the cordon.
    pub async fn cordon(&self, node: &str, grant: &str) -> anyhow::Result<bool> {
        self.node_write(node, "cordoning", |n| {
            let ann = n.metadata.annotations.clone().unwrap_or_default();
            let unschedulable = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
            if ann.contains_key(CORDONED_BY_HKD) {
                if unschedulable {
                    return (None, true);
                }
                // Our mark survived an uncordon by someone else: cordon again, still ours.
            } else if unschedulable {
                return (None, false);
            }
            (
                Some(json!({
                    "metadata": {"annotations": {CORDONED_BY_HKD: grant}},
                    "spec": {"unschedulable": true},
                })),
                true,
            )
        })
        .await
    }

    /// Lift hkd's cordon. Does nothing (and returns false) when the cordon is not hkd's.
    pub async fn uncordon(&self, node: &str) -> anyhow::Result<bool> {
        self.drop_mark(node, "uncordoning", true).await
    }

    /// Keep the cordon but give it up as hkd's: from now on it is the admin's to lift (I2).
    /// Returns whether hkd held it. Used when a lock is reclaimed from a node that never came
    /// back: the node stays out of workloads and counts as cordoned by someone else.
    pub async fn hand_over(&self, node: &str) -> anyhow::Result<bool> {
        self.drop_mark(node, "handing over the cordon of", false)
            .await
    }

    /// Remove hkd's mark from a cordon hkd holds, lifting the cordon too when `lift`; does
    /// nothing (and returns false) when the cordon is not hkd's.
    async fn drop_mark(&self, node: &str, what: &str, lift: bool) -> anyhow::Result<bool> {
        self.node_write(node, what, |n| {
            let ours = n
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(CORDONED_BY_HKD));
            if !ours {
                return (None, false);
            }
            let mut patch = json!({"metadata": {"annotations": {CORDONED_BY_HKD: null}}});
            if lift {
                patch["spec"] = json!({"unschedulable": null});
            }
            (Some(patch), true)
        })
        .await
    }

    /// Read the node, decide a merge patch, write it with the resourceVersion read; on 409
    /// read and decide again.
    async fn node_write(
        &self,
        node: &str,
        what: &str,
        decide: impl Fn(&Node) -> (Option<Value>, bool),
    ) -> anyhow::Result<bool> {
        let nodes = self.nodes();
        for _ in 0..CONFLICT_RETRIES {
            let n = nodes
                .get(node)
                .await
                .map_err(|e| anyhow::anyhow!("{what} node {node}: reading it: {e}"))?;
            let (patch, result) = decide(&n);
            let Some(mut patch) = patch else {
                return Ok(result);
            };
            patch["metadata"]["resourceVersion"] = json!(n.metadata.resource_version);
            match nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(result),
                Err(e) if api_code(&e) == Some(409) => continue,
                Err(e) => return Err(anyhow::anyhow!("{what} node {node}: {e}")),
            }
        }
        Err(anyhow::anyhow!(
            "{what} node {node}: {CONFLICT_RETRIES} conflicting writes in a row"
        ))
    }

    /// The pods bound to `node`, in every namespace.
    pub async fn pods_on(&self, node: &str) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map(|l| l.items)
            .map_err(|e| anyhow::anyhow!("listing pods on node {node}: {e}"))
    }

    /// Drain `node` under `policy`: evict what [`drain::plan`] says, wait for each pod to be
    /// gone or replaced, and after `policy.timeoutSeconds` apply `policy.onTimeout`.
    pub async fn drain(&self, node: &str, policy: &DrainPolicy) -> anyhow::Result<DrainReport> {
        let deadline = Instant::now() + Duration::from_secs(policy.timeout_seconds.max(1) as u64);
        let pods = self.pods_on(node).await?;
        let plan = drain::plan(&pods, policy);
        let mut report = DrainReport {
            node: node.to_owned(),
            outcome: DrainOutcome::Drained,
            evicted: Vec::new(),
            deleted: Vec::new(),
            skipped: plan.skipped.clone(),
            remaining: Vec::new(),
        };
        if !plan.blocked.is_empty() {
            report.outcome = DrainOutcome::Refused;
            report.remaining = plan
                .blocked
                .into_iter()
                .map(|(p, why)| (p, Stuck::NeedsConsent(why)))
                .collect();
            // Nothing was evicted and the node will not reboot: back into service.
            self.uncordon(node).await?;
            return Ok(report);
        }
        let version = eviction_api_version(&self.client).await?;
        let grace = policy.grace_period_seconds;
        let mut work: Vec<(PodRef, bool)> = plan.evict.into_iter().map(|p| (p, true)).collect();
        work.extend(plan.wait.into_iter().map(|p| (p, false)));
        let results: Vec<(PodRef, bool, PodEnd)> = stream::iter(work)
            .map(|(pod, evict)| {
                let version = version.clone();
                async move {
                    let end = self
                        .evict_and_wait(&version, &pod, evict, grace, deadline)
                        .await;
                    (pod, evict, end)
                }
            })
            .buffer_unordered(self.tuning.parallel.max(1))
            .collect()
            .await;
        let mut stuck = Vec::new();
        for (pod, evicted, end) in results {
            match end {
                PodEnd::Gone if evicted => report.evicted.push(pod),
                PodEnd::Gone => {}
                PodEnd::Stuck(why) => stuck.push((pod, why)),
            }
        }
        report.evicted.sort();
        stuck.sort_by(|a, b| a.0.cmp(&b.0));
        if stuck.is_empty() {
            return Ok(report);
        }
        match policy.on_timeout {
            OnTimeout::Abort => {
                report.outcome = DrainOutcome::Aborted;
                report.remaining = stuck;
                self.uncordon(node).await?;
            }
            OnTimeout::Proceed => {
                report.outcome = DrainOutcome::Proceeded;
                report.remaining = stuck;
            }
            OnTimeout::DeleteWithoutEviction => {
                report.outcome = DrainOutcome::ForceDeleted;
                let until = Instant::now() + DELETE_WAIT;
                for (pod, why) in stuck {
                    match self.delete_and_wait(&pod, grace, until).await {
                        Ok(true) => report.deleted.push(pod),
                        Ok(false) => report.remaining.push((pod, Stuck::StillTerminating)),
                        Err(e) => report
                            .remaining
                            .push((pod, Stuck::Error(format!("{e} (before: {why})")))),
                    }
                }
                if !report.remaining.is_empty() {
                    report.outcome = DrainOutcome::Aborted;
                    self.uncordon(node).await?;
                }
            }
        }
        Ok(report)
    }

    async fn evict_and_wait(
        &self,
        version: &str,
        pod: &PodRef,
        evict: bool,
        grace: Option<i64>,
        deadline: Instant,
    ) -> PodEnd {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let mut backoff = self.tuning.backoff_start;
        if evict {
            let body = eviction_body(version, pod, grace);
            loop {
                self.tuning.heartbeat.beat();
                let r = pods
                    .create_subresource::<Value, Value>(
                        "eviction",
                        &pod.name,
                        &PostParams::default(),
                        &body,
                    )
                    .await;
                let why = match r {
                    Ok(_) => break,
                    // Gone already, or replaced (the UID precondition failed): not ours to evict.
                    Err(e) if matches!(api_code(&e), Some(404 | 409)) => return PodEnd::Gone,
                    Err(kube::Error::Api(s)) if s.code == 429 => {
                        let causes = s
                            .details
                            .as_ref()
                            .map(|d| {
                                d.causes
                                    .iter()
                                    .map(|c| c.message.clone())
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default();
                        let pdb = causes.iter().find_map(|m| pdb_from_message(m));
                        let message = causes.first().cloned().unwrap_or(s.message.clone());
                        Stuck::DisruptionBudget { pdb, message }
                    }
                    Err(e) => Stuck::Error(format!("evicting pod {pod}: {e}")),
                };
                if Instant::now() + backoff >= deadline {
                    return PodEnd::Stuck(why);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.tuning.backoff_max);
            }
        }
        match self.wait_gone(pod, deadline).await {
            Ok(true) => PodEnd::Gone,
            Ok(false) => PodEnd::Stuck(Stuck::StillTerminating),
            Err(e) => PodEnd::Stuck(Stuck::Error(format!("{e:#}"))),
        }
    }

    /// Wait until the pod is gone or a pod of another UID has its name.
    async fn wait_gone(&self, pod: &PodRef, until: Instant) -> anyhow::Result<bool> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        loop {
            self.tuning.heartbeat.beat();
            match pods.get_opt(&pod.name).await {
                Ok(None) => return Ok(true),
                Ok(Some(p)) if p.metadata.uid.as_deref() != Some(pod.uid.as_str()) => {
                    return Ok(true)
                }
                Ok(Some(_)) => {}
                Err(e) => return Err(anyhow::anyhow!("waiting for pod {pod} to go: {e}")),
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(self.tuning.poll).await;
        }
    }

    async fn delete_and_wait(
        &self,
        pod: &PodRef,
        grace: Option<i64>,
        until: Instant,
    ) -> anyhow::Result<bool> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let dp = DeleteParams {
            grace_period_seconds: grace.map(|g| g as u32),
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(&pod.name, &dp).await {
            Ok(_) => {}
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => return Ok(true),
            Err(e) => return Err(anyhow::anyhow!("deleting pod {pod}: {e}")),
        }
        self.wait_gone(pod, until).await
    }
}
