//! The coordinator (`housekeeper::cluster::coordinator`) and its Lease election against a real
//! API server.
//!
//! kube-apiserver v1.20.2 + etcd from `support` (or the cluster HOUSEKEEPER_TEST_KUBECONFIG
//! names). Stand-ins: `support::kubelet` registers the Nodes; the node agents are simulated
//! here by writing the phase annotations the way an agent does (`phase`, `phase-grant`,
//! `since`, `reason`, `os-image` on Done), each step a short sleep instead of a drain and a
//! reboot. An observer watches the Nodes and checks I1 and the control-plane order on every
//! change it sees. Lease terms are 2 s here (15 s in production) so that expiry is quick.
//!
//! The Nodes are cluster-scoped and the cluster is shared by parallel tests: every Update
//! selects its test's Nodes by `kubernetes.io/hostname`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use housekeeper::cluster::annotations::{
    AgentPhase, NodeView, OS_IMAGE, PHASE, PHASE_GRANT, REASON, SINCE,
};
use housekeeper::cluster::coordinator::{Config, Coordinator};
use housekeeper::cluster::lease::LEASE_NAME;
use housekeeper::cluster::ledger;
use housekeeper::cluster::update::{self, Update};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::rollout_view::{self, RolloutView};
use support::{wait_for, KubeletStandIn, NodeRole, TestEnv};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const IMAGE: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";
const LEASE_DURATION: Duration = Duration::from_secs(2);
const RENEW_EVERY: Duration = Duration::from_millis(400);
/// How long a rollout of a handful of simulated nodes may take on a busy 2-core machine.
const ROLLOUT: Duration = Duration::from_secs(60);
/// One simulated agent step (Staging, Draining, Rebooting, Verifying).
const STEP: Duration = Duration::from_millis(150);

fn config(env: &TestEnv, identity: &str) -> Config {
    Config {
        namespace: env.ns.clone(),
        lease_duration: LEASE_DURATION,
        renew_every: RENEW_EVERY,
        retry_after: Duration::from_millis(300),
        recheck_every: Duration::from_millis(300),
        ..Config::new(identity)
    }
}

/// A coordinator running as a task of the test.
struct Running {
    identity: String,
    task: JoinHandle<Result<()>>,
    stop: watch::Sender<bool>,
    leading: watch::Receiver<bool>,
}

fn start(env: &TestEnv, identity: &str) -> Running {
    // The coordinator's log in the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let c = Coordinator::new(env.admin.clone(), config(env, identity));
    let leading = c.leading();
    let (stop, stop_rx) = watch::channel(false);
    Running {
        identity: identity.to_owned(),
        task: tokio::spawn(c.run(stop_rx)),
        stop,
        leading,
    }
}

impl Running {
    fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    /// Ask it to stop (it steps down) and wait for it.
    async fn stop(self) -> Result<()> {
        self.stop.send_replace(true);
        self.task.await.context("coordinator task")?
    }

    /// Kill it: the task is dropped wherever it is, nothing is released.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A test's Nodes: control-plane ones first, then workers, each registered by the stand-in.
struct Rig {
    env: TestEnv,
    control_plane: Vec<String>,
    workers: Vec<String>,
}

impl Rig {
    async fn new(test: &str, control_plane: usize, workers: usize) -> Result<Rig> {
        let env = TestEnv::new(test).await?;
        support::crd::install_update_crd(&env.admin).await?;
        let k = KubeletStandIn::new(env.admin.clone());
        let mut rig = Rig {
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
        Ok(rig)
    }

    fn all(&self) -> Vec<String> {
        self.control_plane
            .iter()
            .chain(&self.workers)
            .cloned()
            .collect()
    }

    fn updates(&self) -> Api<Update> {
        Api::namespaced(self.env.admin.clone(), &self.env.ns)
    }

    /// An Update selecting exactly this test's Nodes.
    async fn create_update(&self, name: &str, extra: serde_json::Value) -> Result<Update> {
        let mut spec = json!({
            "osImageURL": IMAGE,
            "nodeSelector": {"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": self.all(),
            }]},
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        let u: Update = serde_json::from_value(json!({
            "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        self.updates()
            .create(&PostParams::default(), &u)
            .await
            .with_context(|| format!("creating Update {}/{name}", self.env.ns))
    }

    async fn wait_state(&self, name: &str, state: &str) -> Result<Update> {
        let api = self.updates();
        wait_for(&format!("Update {name} to be {state}"), ROLLOUT, || async {
            let u = api.get(name).await?;
            Ok(u.status.and_then(|s| s.state).as_deref() == Some(state))
        })
        .await?;
        Ok(api.get(name).await?)
    }

    /// Events on the Update `name`, as (reason, message).
    async fn events(&self, name: &str) -> Result<Vec<(String, String)>> {
        let api: Api<Event> = Api::namespaced(self.env.admin.clone(), &self.env.ns);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.kind.as_deref() == Some("Update")
                    && e.involved_object.name.as_deref() == Some(name)
            })
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect())
    }

    /// Which of this test's Nodes hold a grant in the ledgers, and which.
    async fn grants(&self) -> Result<BTreeMap<String, String>> {
        let updates = self.updates().list(&ListParams::default()).await?.items;
        let (grants, refused) = ledger::grants_by_node(&updates);
        ensure!(refused.is_empty(), "{refused:?}");
        Ok(self
            .all()
            .into_iter()
            .filter_map(|n| Some((n.clone(), grants.get(&n)?.to_string())))
            .collect())
    }

    /// A simulated agent for each Node; those in `failing` end Failed.
    fn agents(&self, failing: &[String]) -> Agents {
        Agents(
            self.all()
                .into_iter()
                .map(|n| {
                    let fail = failing.contains(&n);
                    tokio::spawn(agent(self.env.admin.clone(), self.env.ns.clone(), n, fail))
                })
                .collect(),
        )
    }
}

struct Agents(Vec<JoinHandle<()>>);

impl Drop for Agents {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn report(client: &Client, node: &str, phase: AgentPhase, grant: &str, done: bool) {
    let mut ann = json!({
        PHASE: phase.as_str(),
        PHASE_GRANT: grant,
        SINCE: jiff::Timestamp::now().to_string(),
    });
    match phase {
        AgentPhase::Failed => {
            ann[REASON] = json!("health gate: the node was not Ready after its reboot (simulated)")
        }
        _ => ann[REASON] = serde_json::Value::Null,
    }
    if done {
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

/// What an agent does with a grant, minus the work: report each phase under the grant, then
/// Done (with the target as its booted image) or Failed.
async fn agent(client: Client, ns: String, node: String, fail: bool) {
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
            report(&client, &node, phase, &g, false).await;
            tokio::time::sleep(STEP).await;
        }
        if fail {
            report(&client, &node, AgentPhase::Failed, &g, false).await;
        } else {
            report(&client, &node, AgentPhase::Done, &g, true).await;
        }
    }
}

/// What the observer saw, checked on every Node change of the test's Nodes.
#[derive(Default, Debug)]
struct Seen {
    max_in_flight: usize,
    /// Every grant value each Node carried, in order (a change of value is a new grant).
    grants: BTreeMap<String, Vec<String>>,
    /// Broken rules, with the moment's picture.
    violations: Vec<String>,
    /// From a node finishing (Done or Failed) to the next grant, as the observer saw them.
    handoffs: Vec<Duration>,
    /// The most nodes in flight at once per zone (`topology.kubernetes.io/zone`).
    max_in_flight_per_zone: BTreeMap<String, usize>,
    /// When the observer saw each node's latest grant.
    granted_at: BTreeMap<String, Instant>,
}

/// Watch the Nodes and check I1 (`max_unavailable`) and the order: a control-plane node is
/// granted only while no other node is in flight, a worker only once every control-plane node
/// is Done or Failed.
fn observe(client: Client, rig: &Rig, max_unavailable: usize) -> (Arc<Mutex<Seen>>, Agents) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let ours: BTreeSet<String> = rig.all().into_iter().collect();
    let s = seen.clone();
    let ns = rig.env.ns.clone();
    let task = tokio::spawn(async move {
        // Nodes and Updates in the server's order; the grants from the ledgers.
        let mut view = RolloutView::default();
        let mut nodes: BTreeMap<String, NodeView> = BTreeMap::new();
        let mut last_finished: Option<Instant> = None;
        let mut stream = rollout_view::changes(client, &ns).boxed();
        let finished = |n: &NodeView| {
            n.grant
                .as_ref()
                .is_some_and(|g| n.phase_for(g).is_some_and(AgentPhase::is_terminal))
        };
        let mut terms: BTreeMap<String, i64> = BTreeMap::new();
        while let Some(change) = stream.next().await {
            view.apply(change);
            let mut seen = s.lock().unwrap();
            // Fencing (I9): an Update's recorded coordinator term never goes back.
            for (name, u) in &view.updates {
                let t = u
                    .status
                    .as_ref()
                    .and_then(|s| s.coordinator_term)
                    .unwrap_or(0);
                let before = terms.insert(name.clone(), t).unwrap_or(0);
                if t < before {
                    seen.violations.push(format!(
                        "I9: Update {name}'s coordinator term went back from {before} to {t}"
                    ));
                }
            }
            for v in view.views(|n| ours.contains(n)) {
                let before = nodes.get(&v.name).and_then(|o| o.grant.clone());
                if finished(&v) && !nodes.get(&v.name).is_some_and(finished) {
                    last_finished = Some(Instant::now());
                }
                nodes.insert(v.name.clone(), v.clone());
                let in_flight: Vec<&NodeView> = nodes
                    .values()
                    .filter(|n| {
                        n.grant
                            .as_ref()
                            .is_some_and(|g| !n.phase_for(g).is_some_and(AgentPhase::is_terminal))
                    })
                    .collect();
                seen.max_in_flight = seen.max_in_flight.max(in_flight.len());
                let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
                for n in &in_flight {
                    if let Some(z) = n.labels.get("topology.kubernetes.io/zone") {
                        *per_zone.entry(z.clone()).or_default() += 1;
                    }
                }
                for (z, k) in per_zone {
                    let max = seen.max_in_flight_per_zone.entry(z).or_default();
                    *max = (*max).max(k);
                }
                let names: Vec<&str> = in_flight.iter().map(|n| n.name.as_str()).collect();
                if in_flight.len() > max_unavailable {
                    seen.violations
                        .push(format!("I1: {} in flight: {names:?}", in_flight.len()));
                }
                if let Some(g) = v.grant.as_ref().filter(|g| Some(*g) != before.as_ref()) {
                    let g = g.to_string();
                    seen.grants.entry(v.name.clone()).or_default().push(g);
                    seen.granted_at.insert(v.name.clone(), Instant::now());
                    if let Some(t) = last_finished.take() {
                        seen.handoffs.push(t.elapsed());
                    }
                    if v.control_plane && in_flight.len() > 1 {
                        seen.violations.push(format!(
                            "control-plane node {} granted while others in flight: {names:?}",
                            v.name
                        ));
                    }
                    if !v.control_plane {
                        for cp in nodes.values().filter(|n| n.control_plane) {
                            if !finished(cp) {
                                seen.violations.push(format!(
                                    "worker {} granted before control-plane node {} finished",
                                    v.name, cp.name
                                ));
                            }
                        }
                    }
                }
            }
        }
    });
    (seen, Agents(vec![task]))
}

fn counts(u: &Update) -> update::Counts {
    u.status.clone().unwrap_or_default().counts
}

fn condition(u: &Update, type_: &str) -> Option<update::UpdateCondition> {
    u.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

async fn lease(env: &TestEnv) -> Result<Lease> {
    Api::<Lease>::namespaced(env.admin.clone(), &env.ns)
        .get(LEASE_NAME)
        .await
        .context("reading the coordinator Lease")
}

fn holder(l: &Lease) -> Option<String> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_race_one_leads_the_other_takes_over() -> Result<()> {
    let env = TestEnv::new("coord-lease").await?;
    let a = start(&env, "node-a");
    let b = start(&env, "node-b");
    wait_for(
        "one coordinator to lead",
        Duration::from_secs(20),
        || async { Ok(a.leads() || b.leads()) },
    )
    .await?;
    // Watch them for a few Lease terms: never both, always the same one, and it holds the Lease.
    let first = if a.leads() { "node-a" } else { "node-b" };
    let until = Instant::now() + LEASE_DURATION * 2;
    while Instant::now() < until {
        ensure!(!(a.leads() && b.leads()), "both coordinators lead");
        let now_leading = if a.leads() { "node-a" } else { "node-b" };
        ensure!(
            now_leading == first,
            "leadership moved from {first} to {now_leading} unprovoked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(holder(&lease(&env).await?).as_deref() == Some(first));

    // The leader steps down: the Lease is released and the other takes it well before the
    // released term would have run out.
    let (leader, other) = if first == "node-a" { (a, b) } else { (b, a) };
    let stopped_at = Instant::now();
    leader.stop().await?;
    let l = lease(&env).await?;
    ensure!(
        holder(&l).as_deref() != Some(first),
        "the stopped coordinator still holds the Lease: {:?}",
        l.spec
    );
    wait_for(
        "the other coordinator to lead",
        LEASE_DURATION * 2,
        || async { Ok(other.leads()) },
    )
    .await?;
    let takeover = stopped_at.elapsed();
    ensure!(
        takeover < LEASE_DURATION,
        "takeover after a step-down took {takeover:?}"
    );
    ensure!(holder(&lease(&env).await?).as_deref() == Some(other.identity.as_str()));

    // The new leader is killed without stepping down: a third takes over only once its Lease
    // expired.
    let second = other.identity.clone();
    other.kill().await;
    let l = lease(&env).await?;
    ensure!(holder(&l).as_deref() == Some(second.as_str()));
    let spec = l.spec.clone().unwrap_or_default();
    let expires = spec.renew_time.context("renewTime")?.0
        + jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let transitions = spec.lease_transitions.unwrap_or(0);
    let c = start(&env, "node-c");
    wait_for("node-c to lead", LEASE_DURATION * 4, || async {
        Ok(c.leads())
    })
    .await?;
    let led_at = jiff::Timestamp::now();
    ensure!(
        led_at >= expires,
        "node-c took over at {led_at}, before the killed leader's Lease expired at {expires}"
    );
    let l = lease(&env).await?;
    ensure!(holder(&l).as_deref() == Some("node-c"));
    ensure!(l.spec.and_then(|s| s.lease_transitions).unwrap_or(0) > transitions);
    c.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_control_plane_first_within_max_unavailable_to_complete() -> Result<()> {
    let rig = Rig::new("coord-rollout", 1, 5).await?;
    let (seen, _observer) = observe(rig.env.admin.clone(), &rig, 2);
    let _agents = rig.agents(&[]);
    rig.create_update("to-v2", json!({"maxUnavailable": 2}))
        .await?;
    let started = Instant::now();
    let c = start(&rig.env, "node-a");
    let u = rig.wait_state("to-v2", "Complete").await?;
    let took = started.elapsed();
    let n = counts(&u);
    ensure!(
        (n.total, n.done, n.failed, n.in_flight, n.pending) == (6, 6, 0, 0, 0),
        "{n:?}"
    );
    let complete = condition(&u, "Complete").context("Complete condition")?;
    ensure!(complete.status == "True", "{complete:?}");
    {
        let seen = seen.lock().unwrap();
        ensure!(seen.violations.is_empty(), "{:#?}", seen.violations);
        // Two at once was reached: the budget was used, not just respected by going slowly.
        ensure!(
            seen.max_in_flight == 2,
            "max in flight {}",
            seen.max_in_flight
        );
        ensure!(seen.grants.len() == 6 && seen.grants.values().all(|g| g.len() == 1));
        // Grants follow completions through the watches, not a polling period.
        let mut h = seen.handoffs.clone();
        h.sort();
        ensure!(h.len() >= 3, "handoffs {h:?}");
        let median = h[h.len() / 2];
        eprintln!("from a node finishing to the next grant: median {median:?} of {h:?}");
        ensure!(median < Duration::from_millis(500), "handoffs {h:?}");
    }
    // The status settles: no write loop once Complete.
    let rv = u.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = rig.updates().get("to-v2").await?;
    ensure!(
        again.metadata.resource_version == rv,
        "the status kept changing"
    );
    let events = rig.events("to-v2").await?;
    let granted: BTreeSet<String> = events
        .iter()
        .filter(|(r, _)| r == "Granted")
        .map(|(_, m)| m.clone())
        .collect();
    ensure!(granted.len() == 6, "{events:#?}");
    for node in rig.all() {
        ensure!(
            granted.iter().any(|m| m.contains(&format!("node {node} "))),
            "no Granted event for {node}"
        );
    }
    ensure!(
        events.iter().filter(|(r, _)| r == "Complete").count() == 1,
        "{events:#?}"
    );
    // And on each Node, where `kubectl describe node` shows it.
    let node_events: Api<Event> = Api::namespaced(rig.env.admin.clone(), "default");
    for node in rig.all() {
        let lp = ListParams::default().fields(&format!("involvedObject.name={node}"));
        let on_node = node_events.list(&lp).await?.items;
        let k = on_node
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Granted"))
            .count();
        ensure!(k == 1, "{k} Granted events on Node {node}: {on_node:?}");
    }
    c.stop().await?;
    eprintln!("rollout of 6 nodes, 4 steps of {STEP:?} each: {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_beyond_max_failed_halt_the_rollout_and_name_the_nodes() -> Result<()> {
    let rig = Rig::new("coord-halt", 0, 5).await?;
    let failing = vec![rig.workers[0].clone(), rig.workers[1].clone()];
    let (seen, _observer) = observe(rig.env.admin.clone(), &rig, 2);
    let _agents = rig.agents(&failing);
    rig.create_update("to-v2", json!({"maxUnavailable": 2, "maxFailed": 1}))
        .await?;
    let c = start(&rig.env, "node-a");
    let u = rig.wait_state("to-v2", "Halted").await?;
    let halted = condition(&u, "Halted").context("Halted condition")?;
    ensure!(halted.status == "True" && halted.reason == "FailureBudgetExceeded");
    for f in &failing {
        ensure!(halted.message.contains(f.as_str()), "{halted:?}");
    }
    ensure!(
        halted.message.contains("not Ready after its reboot"),
        "{halted:?}"
    );
    // No grant after the halt: what was granted then is all that ever is.
    let at_halt = rig.grants().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = rig.grants().await?;
    ensure!(
        at_halt == later,
        "granted after the halt: {at_halt:?} → {later:?}"
    );
    for w in &rig.workers[3..] {
        ensure!(
            !later.contains_key(w),
            "{w} was granted in a halted rollout"
        );
    }
    let u = rig.updates().get("to-v2").await?;
    ensure!(counts(&u).failed == 2, "{:?}", counts(&u));
    let events = rig.events("to-v2").await?;
    let halt_events: Vec<_> = events.iter().filter(|(r, _)| r == "Halted").collect();
    ensure!(halt_events.len() == 1, "{events:#?}");
    ensure!(
        halt_events[0].1.contains(failing[0].as_str()),
        "{events:#?}"
    );
    let violations = seen.lock().unwrap().violations.clone();
    ensure!(violations.is_empty(), "{violations:#?}");
    c.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_is_replaced_without_lost_or_repeated_grants() -> Result<()> {
    let rig = Rig::new("coord-failover", 1, 5).await?;
    let (seen, _observer) = observe(rig.env.admin.clone(), &rig, 2);
    let _agents = rig.agents(&[]);
    rig.create_update("to-v2", json!({"maxUnavailable": 2}))
        .await?;
    // Two coordinators from the start, as on two hkd: one leads, the other stands by.
    let a = start(&rig.env, "node-a");
    let b = start(&rig.env, "node-b");
    // Mid-rollout: the control plane done, workers granted.
    wait_for("workers granted", ROLLOUT, || async {
        let g = rig.grants().await?;
        Ok(rig.workers.iter().filter(|w| g.contains_key(*w)).count() >= 2)
    })
    .await?;
    ensure!(a.leads() != b.leads(), "not exactly one coordinator leads");
    let (leader, spare) = if a.leads() { (a, b) } else { (b, a) };
    leader.kill().await;
    let granted_at_kill = rig.grants().await?;
    ensure!(
        granted_at_kill.len() < 6,
        "the rollout ended before the kill"
    );
    let u = rig.wait_state("to-v2", "Complete").await?;
    ensure!(spare.leads(), "{} does not lead at the end", spare.identity);
    let n = counts(&u);
    ensure!((n.total, n.done, n.failed) == (6, 6, 0), "{n:?}");
    {
        let seen = seen.lock().unwrap();
        ensure!(seen.violations.is_empty(), "{:#?}", seen.violations);
        for node in rig.all() {
            let g = seen.grants.get(&node).cloned().unwrap_or_default();
            ensure!(g.len() == 1, "node {node} was granted {g:?}");
        }
        // The grants made before the kill are the ones the Nodes still carry.
        for (node, g) in &granted_at_kill {
            ensure!(
                seen.grants[node] == vec![g.clone()],
                "{node}: {:?}",
                seen.grants[node]
            );
        }
    }
    // One Granted event per Node at most (the killed coordinator may have died between a
    // grant and its Event), and the successor's own grants all recorded.
    let events = rig.events("to-v2").await?;
    for node in rig.all() {
        let k = events
            .iter()
            .filter(|(r, m)| r == "Granted" && m.contains(&format!("node {node} ")))
            .count();
        ensure!(k <= 1, "{node} has {k} Granted events");
        if !granted_at_kill.contains_key(&node) {
            ensure!(k == 1, "{node} granted by the successor without an Event");
        }
    }
    spare.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rollout_grants_nothing_until_resumed() -> Result<()> {
    let rig = Rig::new("coord-pause", 0, 3).await?;
    let _agents = rig.agents(&[]);
    rig.create_update("to-v2", json!({"maxUnavailable": 2, "paused": true}))
        .await?;
    let c = start(&rig.env, "node-a");
    let u = rig.wait_state("to-v2", "Paused").await?;
    ensure!(condition(&u, "Paused").is_some_and(|c| c.status == "True"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let g = rig.grants().await?;
    ensure!(g.is_empty(), "granted while paused: {g:?}");
    ensure!(
        rig.events("to-v2")
            .await?
            .iter()
            .any(|(r, _)| r == "Paused"),
        "no Paused event"
    );
    rig.updates()
        .patch(
            "to-v2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .context("resuming Update to-v2")?;
    let u = rig.wait_state("to-v2", "Complete").await?;
    let n = counts(&u);
    ensure!((n.total, n.done) == (3, 3), "{n:?}");
    ensure!(condition(&u, "Paused").is_some_and(|c| c.status == "False"));
    match rig.grants().await?.len() {
        3 => {}
        k => bail!("{k} nodes granted after resuming, want 3"),
    }
    c.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_changed_to_match_nothing_clears_the_node_list() -> Result<()> {
    let rig = Rig::new("coord-selector", 0, 2).await?;
    rig.create_update("to-v2", json!({"paused": true})).await?;
    let c = start(&rig.env, "node-a");
    let u = rig.wait_state("to-v2", "Paused").await?;
    ensure!(u.status.map(|s| s.nodes.len()) == Some(2));
    rig.updates()
        .patch(
            "to-v2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false, "nodeSelector": {
                "matchExpressions": null,
                "matchLabels": {"housekeeper.io/no-such-pool": "x"}}}})),
        )
        .await
        .context("changing the node selector of Update to-v2")?;
    let u = rig.wait_state("to-v2", "Waiting").await?;
    let status = u.status.clone().unwrap_or_default();
    ensure!(status.counts.total == 0, "{:?}", status.counts);
    // The summaries of nodes no longer selected are gone, not left behind by the merge patch.
    ensure!(status.nodes.is_empty(), "{:?}", status.nodes);
    let progressing = condition(&u, "Progressing").context("Progressing condition")?;
    ensure!(progressing.reason == "NoNodesSelected", "{progressing:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = rig.updates().get("to-v2").await?;
    ensure!(
        again.metadata.resource_version == u.metadata.resource_version,
        "the status kept changing"
    );
    ensure!(rig.grants().await?.is_empty());
    c.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_updates_at_once_share_the_nodes_within_max_unavailable() -> Result<()> {
    let rig = Rig::new("coord-two-updates", 0, 4).await?;
    // Every node in flight for either Update counts: both Updates allow 2, so at most 2 of
    // these Nodes are ever out of service together.
    let (seen, _observer) = observe(rig.env.admin.clone(), &rig, 2);
    let _agents = rig.agents(&[]);
    let other = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:3";
    // The first selects the last two workers, the second all four: a second plan made on the
    // Nodes as they were before the first's grants would pick the other two at once.
    rig.create_update(
        "first",
        json!({"maxUnavailable": 2, "osImageURL": other, "nodeSelector": {"matchExpressions": [{
            "key": "kubernetes.io/hostname", "operator": "In", "values": &rig.workers[2..],
        }]}}),
    )
    .await?;
    rig.create_update("second", json!({"maxUnavailable": 2}))
        .await?;
    let c = start(&rig.env, "node-a");
    for (name, total) in [("first", 2), ("second", 4)] {
        let u = rig.wait_state(name, "Complete").await?;
        let n = counts(&u);
        ensure!(
            (n.total, n.done, n.failed) == (total, total, 0),
            "{name}: {n:?}"
        );
    }
    {
        let seen = seen.lock().unwrap();
        ensure!(seen.violations.is_empty(), "{:#?}", seen.violations);
        ensure!(
            seen.max_in_flight == 2,
            "max in flight {}",
            seen.max_in_flight
        );
        // Each Update granted a node at most once: the second only after the first was done
        // there (or the first found it at its image already).
        ensure!(
            seen.grants.values().all(|g| !g.is_empty() && g.len() <= 2),
            "{:?}",
            seen.grants
        );
    }
    c.stop().await?;
    Ok(())
}

/// `hkd coordinate` as a process of its own (so that it can be frozen), under the admin's
/// kubeconfig as its coordinator credential, with the test seams: its wall clock off by
/// `offset_seconds`, and stopping itself (SIGSTOP) before its second ledger write with grants.
struct Process {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    fn start(rig: &Rig, identity: &str, offset_seconds: i64) -> Result<Process> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("etc/hkd/config.d");
        std::fs::create_dir_all(&conf)?;
        std::fs::write(
            conf.join("50-test.toml"),
            format!(
                "[kubernetes]\nnamespace = \"{ns}\"\nlease_duration = \"{lease}ms\"\n",
                ns = rig.env.ns,
                lease = LEASE_DURATION.as_millis(),
            ),
        )?;
        // The default kubernetes.coordinator_kubeconfig under the root.
        std::fs::copy(
            rig.env.cluster.admin_kubeconfig(),
            dir.path().join("etc/hkd/coordinator.kubeconfig"),
        )?;
        let log = dir.path().join("hkd.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_hkd"))
            .args(["--root", &dir.path().display().to_string(), "-v"])
            .args(["coordinate", "--identity", identity])
            .env(
                "HKD_TEST_WALL_CLOCK_OFFSET_SECONDS",
                offset_seconds.to_string(),
            )
            .env("HKD_TEST_STOP_BEFORE_GRANT_WRITE", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("hkd.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting hkd coordinate")?;
        Ok(Process {
            child,
            log,
            _dir: dir,
        })
    }

    /// The process state letter from /proc (`T`: stopped).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?
            .success();
        ensure!(ok, "kill {sig} {}", self.child.id());
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Coordinator A grants the first control-plane node, then is frozen right before the write
/// of its next grant; its Lease runs out, B takes over, claims the Update and rolls on; A is
/// continued while B's grant is in flight and sends its late write — which must not land:
/// the recorded term never goes back, no node is granted twice, never two control-plane
/// nodes at once (I1, I9), and A says it lost its term.
async fn a_frozen_coordinators_late_grant_is_fenced(test: &str, offset_seconds: i64) -> Result<()> {
    let rig = Rig::new(test, 3, 0).await?;
    let (seen, _observer) = observe(rig.env.admin.clone(), &rig, 1);
    let _agents = rig.agents(&[]);
    let a = Process::start(&rig, "node-a", offset_seconds)?;
    rig.create_update("os", json!({"maxUnavailable": 1}))
        .await?;
    wait_for("A to freeze before its second grant", ROLLOUT, || async {
        match a.state() {
            None => bail!("hkd coordinate ended"),
            s => Ok(s == Some('T')),
        }
    })
    .await
    .with_context(|| format!("A's log:\n{}", a.log()))?;
    let stopped = Instant::now();
    let first_grants = rig.grants().await?;
    ensure!(first_grants.len() == 1, "A granted {first_grants:?}");
    let b = start(&rig.env, "node-b");
    // B takes over once A's record has stood still for a whole term, claims the Update and
    // grants the next node.
    let updates = rig.updates();
    wait_for("B to grant a second node", ROLLOUT, || async {
        let u = updates.get("os").await?;
        let s = u.status.unwrap_or_default();
        Ok(s.coordinator_term >= Some(2) && s.grants.len() >= 2)
    })
    .await?;
    ensure!(
        stopped.elapsed() >= LEASE_DURATION,
        "B took over {:?} after A froze, before A's term ran out",
        stopped.elapsed()
    );
    ensure!(b.leads(), "B does not lead");
    // A resumes with its plan from before: its write goes out now.
    a.signal("-CONT")?;
    wait_for("A to find its term lost", ROLLOUT, || async {
        Ok(a.log().contains("lost its term"))
    })
    .await
    .with_context(|| format!("A's log:\n{}", a.log()))?;
    let u = rig.wait_state("os", "Complete").await?;
    let n = counts(&u);
    ensure!((n.total, n.done, n.failed) == (3, 3, 0), "{n:?}");
    let status = u.status.clone().unwrap_or_default();
    // Only the first grant is A's; every later one B's.
    let a_terms = status.grants.values().filter(|r| r.term == 1).count();
    ensure!(
        a_terms <= 1,
        "A's term recorded {a_terms} grants: {:?}",
        status.grants
    );
    let seen = seen.lock().unwrap();
    ensure!(seen.violations.is_empty(), "{:#?}", seen.violations);
    ensure!(
        seen.max_in_flight == 1,
        "max in flight {}",
        seen.max_in_flight
    );
    ensure!(
        seen.grants.len() == 3 && seen.grants.values().all(|g| g.len() == 1),
        "{:?}",
        seen.grants
    );
    let log = a.log();
    ensure!(
        log.contains("test seam: continued"),
        "A never sent its late write:\n{log}"
    );
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_coordinators_late_grant_has_no_effect() -> Result<()> {
    a_frozen_coordinators_late_grant_is_fenced("coord-fence", 0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_coordinator_with_its_clock_30s_ahead_is_fenced() -> Result<()> {
    a_frozen_coordinators_late_grant_is_fenced("coord-fence-ahead", 30).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_coordinator_with_its_clock_30s_behind_is_fenced() -> Result<()> {
    a_frozen_coordinators_late_grant_is_fenced("coord-fence-behind", -30).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_pod_holds_its_node_only_and_zones_take_one_at_a_time() -> Result<()> {
    let rig = Rig::new("coord-block", 0, 4).await?;
    let k = KubeletStandIn::new(rig.env.admin.clone());
    // Zones a (w-1, w-2) and b (w-3, w-4).
    for (i, node) in rig.workers.iter().enumerate() {
        let zone = if i < 2 { "a" } else { "b" };
        Api::<Node>::all(rig.env.admin.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {
                    "topology.kubernetes.io/zone": zone}}})),
            )
            .await
            .with_context(|| format!("labelling node {node}"))?;
    }
    // The label value is this test's namespace: the cluster is shared by parallel tests.
    let app = format!("backup-{}", rig.env.ns);
    let held = rig.workers[0].clone();
    k.run_pod(&rig.env.ns, "backup", &held, &[("app", &app)])
        .await?;
    // A matching pod that finished holds nothing.
    k.run_pod(&rig.env.ns, "backup-old", &rig.workers[2], &[("app", &app)])
        .await?;
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(rig.env.admin.clone(), &rig.env.ns)
        .patch_status(
            "backup-old",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;
    let (seen, _observer) = observe(rig.env.admin.clone(), &rig, 4);
    let _agents = rig.agents(&[]);
    rig.create_update(
        "to-v2",
        json!({"maxUnavailable": 4, "maxUnavailablePerZone": 1,
               "blockingPodSelector": {"matchLabels": {"app": app}}}),
    )
    .await?;
    let c = start(&rig.env, "node-a");
    // The other three finish; the held node waits, named with its pod.
    let api = rig.updates();
    wait_for("the three unblocked nodes to be done", ROLLOUT, || async {
        let u = api.get("to-v2").await?;
        Ok(counts(&u).done == 3)
    })
    .await?;
    let u = rig.wait_state("to-v2", "Waiting").await?;
    let status = u.status.clone().unwrap_or_default();
    let pod = format!("{}/backup", rig.env.ns);
    ensure!(
        status.holds.len() == 1
            && status.holds[0].node.as_deref() == Some(held.as_str())
            && status.holds[0].message == format!("blocking pod {pod}"),
        "{:?}",
        status.holds
    );
    let row = status
        .nodes
        .iter()
        .find(|n| n.name == held)
        .context("row")?;
    ensure!(
        row.phase == "Waiting" && row.reason == format!("blocking pod {pod}"),
        "{row:?}"
    );
    let progressing = condition(&u, "Progressing").context("Progressing")?;
    ensure!(
        progressing.reason == "NodesHeld"
            && progressing.message == format!("held: {held} (blocking pod {pod})"),
        "{progressing:?}"
    );
    ensure!(!rig.grants().await?.contains_key(&held), "{held} granted");
    // The pod gone: the node is granted within the recheck period, and the rollout ends.
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(rig.env.admin.clone(), &rig.env.ns)
        .delete(
            "backup",
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await?;
    let gone = Instant::now();
    let u = rig.wait_state("to-v2", "Complete").await?;
    ensure!(counts(&u).done == 4, "{:?}", counts(&u));
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    ensure!(seen.violations.is_empty(), "{:#?}", seen.violations);
    ensure!(
        seen.granted_at.get(&held).is_some_and(|t| *t >= gone),
        "{held} granted before its blocking pod was gone"
    );
    // One at a time per zone, and both zones at once (the limit is per zone, not global).
    ensure!(
        seen.max_in_flight_per_zone == BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]),
        "{:?}",
        seen.max_in_flight_per_zone
    );
    ensure!(
        seen.max_in_flight == 2,
        "max in flight {}",
        seen.max_in_flight
    );
    c.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_bad_zone_staging_and_gate_limits_naming_the_field() -> Result<()> {
    let rig = Rig::new("coord-schema", 0, 1).await?;
    for (extra, field) in [
        (
            json!({"maxUnavailablePerZone": 0}),
            "spec.maxUnavailablePerZone",
        ),
        (
            json!({"maxUnavailableZones": 0}),
            "spec.maxUnavailableZones",
        ),
        (json!({"topologyKey": ""}), "spec.topologyKey"),
        (
            json!({"staging": {"maxConcurrent": 0}}),
            "spec.staging.maxConcurrent",
        ),
        (
            json!({"gates": {"prometheusURL": "ftp://x", "queries": [{"expr": "up"}]}}),
            "spec.gates.prometheusURL",
        ),
        (
            json!({"gates": {"prometheusURL": "http://p:9090", "timeoutSeconds": 9}}),
            "spec.gates.timeoutSeconds",
        ),
        (
            json!({"notifications": {"webhookURL": "not a url"}}),
            "spec.notifications.webhookURL",
        ),
    ] {
        let err = rig
            .create_update("bad", extra.clone())
            .await
            .err()
            .with_context(|| format!("{extra}: accepted"))?;
        let Some(kube::Error::Api(status)) = err.downcast_ref::<kube::Error>() else {
            bail!("{extra}: {err:#}");
        };
        ensure!(
            status.code == 422 && status.message.contains(field),
            "{extra}: {status:?}"
        );
    }
    Ok(())
}
