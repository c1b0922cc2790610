//! Rollouts end to end: real hkd agents (the wiring of `hkd run`, each in a process of its own
//! over a simulated host, see `sim`), their elected coordinator, the real API server.
//!
//! Stand-ins: the hosts (`sim::host`: deployments in a file, a reboot ends the process and the
//! supervisor starts it again), the kubelet (`support::kubelet` registers Ready Nodes and runs
//! pods), kubeadm (a script recording its arguments). Everything between — the follower, the
//! drain, the coordinator and its Lease, the journal, the health gate — is production code.
//!
//! Identities: the shipped ones. `hkctl install --credentials-dir` issues each node's
//! kubeconfig (acting as `system:node:<node>`: the Node authorizer and NodeRestriction apply)
//! and the coordinator's; every agent runs with its own node's, and only the control-plane
//! nodes (or, in a rig without any, its workers) also get the coordinator's and coordinate.
//! The Updates and the Lease live in the test's namespace (tests run at the same time), so
//! the shipped Roles of hkd's namespace are applied there too, bound to the same subjects.
//!
//! An observer checks DESIGN.md's invariants while the rollout runs: I1 on every change of
//! the Nodes and of the Updates (the grants are in their ledgers) it sees, in the server's
//! order, I3 on every simulated reboot (the node held an open grant and was cordoned), I4 on
//! every `Done` (the host booted the target), I6 after the Update says Halted (no new grant).

mod sim;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use housekeeper::cluster::annotations::{AgentPhase, NodeView};
use housekeeper::cluster::ledger;
use housekeeper::cluster::update::Update;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use sim::{NodeSpec, Sim, Timing};
use support::cluster::Cluster;
use support::rollout_view::{self, RolloutView};
use support::{wait_for, KubeletStandIn, NodeRole, TestEnv};

const V1: &str = "ostree-image-signed:docker://registry.sim/nestos:1";
const V2: &str = "ostree-image-signed:docker://registry.sim/nestos:2";

/// The stand-in host keeps deployments as a host does (stage, finalize, rollback, restore).
/// This test is also the entry point of the simulation's node processes: `sim::ENTRY` names
/// it, and a process started with `sim::NODE_DIR_ENV` runs as a node and never returns here.
#[test]
fn simulated_host_keeps_deployments_like_a_host() -> Result<()> {
    sim::node_main_if_asked();
    use housekeeper::image_ref::{ImagePolicy, ImageRef};
    use housekeeper::os::Backend;
    let dir = tempfile::tempdir()?;
    let host = sim::host::SimHost {
        dir: dir.path().to_owned(),
        stage_time: Duration::ZERO,
        reports: Default::default(),
    };
    let e = |e: housekeeper::os::OsError| anyhow::anyhow!("{e}");
    host.create(V1).map_err(e)?;
    let v2 = ImageRef::parse(V2, ImagePolicy::STRICT)?;
    let staged = host.stage(&v2).map_err(e)?;
    let all = host.status().map_err(e)?;
    ensure!(all.booted().and_then(|d| d.origin.as_deref()) == Some(V1));
    ensure!(all.staged().map(|d| d.checksum.as_str()) == Some(staged.as_str()));
    ensure!(
        all.default_deployment().is_some_and(|d| !d.staged),
        "staged became the default"
    );
    ensure!(
        host.stage(&v2).map_err(e)? == staged,
        "staging twice is not idempotent"
    );
    host.finalize(&staged).map_err(e)?;
    let all = host.status().map_err(e)?;
    ensure!(all.default_deployment().map(|d| d.checksum.as_str()) == Some(staged.as_str()));
    ensure!(all.staged().is_none());
    host.restore_booted().map_err(e)?;
    let all = host.status().map_err(e)?;
    ensure!(all.default_deployment().and_then(|d| d.origin.as_deref()) == Some(V1));
    host.rollback().map_err(e)?;
    let all = host.status().map_err(e)?;
    ensure!(all.default_deployment().and_then(|d| d.origin.as_deref()) == Some(V2));
    let bad = ImageRef::parse(
        "ostree-image-signed:docker://registry.sim/nestos:unstageable",
        ImagePolicy::STRICT,
    )?;
    ensure!(host.stage(&bad).is_err(), "an unstageable image staged");
    Ok(())
}

/// How many times install is tried: installs of tests running at the same time can race on
/// the same cluster-wide object (a 409), and running install again converges.
const INSTALL_ATTEMPTS: usize = 3;

/// The shipped identities of a rig's Nodes, as `hkctl install --credentials-dir` wrote them:
/// `nodes/<node>.kubeconfig` (the node's own ServiceAccount, acting as `system:node:<node>`)
/// and `coordinator.kubeconfig`.
struct Credentials {
    /// Holds `hkd-credentials/`, the directory install wrote into (install wants to create
    /// it 0700 itself).
    dir: tempfile::TempDir,
}

impl Credentials {
    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("hkd-credentials")
    }

    fn node_path(&self, node: &str) -> std::path::PathBuf {
        self.root().join(format!("nodes/{node}.kubeconfig"))
    }

    fn coordinator_path(&self) -> std::path::PathBuf {
        self.root().join("coordinator.kubeconfig")
    }

    fn node(&self, node: &str) -> Result<String> {
        let path = self.node_path(node);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    fn coordinator(&self) -> Result<String> {
        let path = self.coordinator_path();
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
}

fn admin_kubeconfig(cluster: &Cluster) -> std::path::PathBuf {
    match cluster {
        Cluster::Local(l) => l.admin_kubeconfig.clone(),
        Cluster::External { kubeconfig } => kubeconfig.clone(),
    }
}

/// Run the built hkctl as the admin.
async fn hkctl(env: &TestEnv, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hkctl"));
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig(env.cluster))
        .args(args);
    cmd.env_remove("KUBECONFIG").env_remove("HKCTL_UPDATE");
    tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running hkctl")
}

/// `hkctl install --credentials-dir` for `nodes` (registered already: install issues
/// credentials for Nodes that exist), and the shipped Roles of hkd's namespace granted in
/// `namespace` too: the simulation's Updates and Lease live in the test's namespace, so that
/// tests running at the same time do not share them. The identities, and what each may do,
/// are the shipped ones.
async fn install_credentials(
    env: &TestEnv,
    nodes: &[String],
    namespace: &str,
) -> Result<Credentials> {
    let dir = tempfile::tempdir()?;
    let creds = dir.path().join("hkd-credentials");
    let mut args = vec![
        "install".to_owned(),
        "--credentials-dir".to_owned(),
        creds.to_str().context("path")?.to_owned(),
    ];
    for n in nodes {
        args.extend(["--node".to_owned(), n.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut last = String::new();
    let mut installed = false;
    for _ in 0..INSTALL_ATTEMPTS {
        let out = hkctl(env, &args).await?;
        if out.status.success() {
            installed = true;
            break;
        }
        last = format!(
            "({:?}) {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(
        installed,
        "hkctl install failed {INSTALL_ATTEMPTS} times: {last}"
    );
    grant_shipped_roles_in(&env.admin, namespace).await?;
    Ok(Credentials { dir })
}
struct Rig {
    env: TestEnv,
    /// The agents' health gate timeout.
    health_timeout: Duration,
    nodes: Vec<String>,
    control_plane: Vec<String>,
    /// The nodes' and the coordinator's kubeconfigs, issued by `hkctl install`.
    creds: Credentials,
}

impl Rig {
    async fn new(test: &str, control_plane: usize, workers: usize) -> Result<Rig> {
        Rig::in_env(TestEnv::new(test).await?, control_plane, workers).await
    }

    async fn in_env(env: TestEnv, control_plane: usize, workers: usize) -> Result<Rig> {
        support::crd::install_update_crd(&env.admin).await?;
        let k = KubeletStandIn::new(env.admin.clone());
        let mut nodes = Vec::new();
        let mut cps = Vec::new();
        for i in 1..=control_plane {
            let n = k
                .register_node(&env, &format!("cp-{i}"), NodeRole::ControlPlane)
                .await?;
            cps.push(n.metadata.name.clone().context("name")?);
            nodes.push(n.metadata.name.context("name")?);
        }
        for i in 1..=workers {
            let n = k
                .register_node(&env, &format!("w-{i:02}"), NodeRole::Worker)
                .await?;
            nodes.push(n.metadata.name.context("name")?);
        }
        // The Nodes exist: now their credentials can be issued.
        let creds = install_credentials(&env, &nodes, &env.ns).await?;
        Ok(Rig {
            health_timeout: Duration::from_secs(6),
            env,
            nodes,
            control_plane: cps,
            creds,
        })
    }

    fn updates(&self) -> Api<Update> {
        Api::namespaced(self.env.admin.clone(), &self.env.ns)
    }

    async fn create_update(&self, name: &str, extra: serde_json::Value) -> Result<Update> {
        let mut spec = json!({
            "osImageURL": V2,
            "nodeSelector": {"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": self.nodes,
            }]},
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        let u: Update = serde_json::from_value(json!({
            "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        Ok(self.updates().create(&PostParams::default(), &u).await?)
    }

    async fn wait_state(&self, name: &str, states: &[&str], timeout: Duration) -> Result<Update> {
        let api = self.updates();
        wait_for(
            &format!("Update {name} to be one of {states:?}"),
            timeout,
            || async {
                let u = api.get(name).await?;
                let state = u.status.and_then(|s| s.state).unwrap_or_default();
                Ok(states.contains(&state.as_str()))
            },
        )
        .await?;
        Ok(api.get(name).await?)
    }

    /// The views of this test's Nodes, each with its grant from the Updates' ledgers.
    async fn views(&self) -> Result<BTreeMap<String, NodeView>> {
        let api: Api<Node> = Api::all(self.env.admin.clone());
        let updates = self.updates().list(&ListParams::default()).await?.items;
        let mut views = Vec::new();
        for n in &self.nodes {
            views.push(NodeView::from_node(&api.get(n).await?));
        }
        let refused = ledger::attach(&mut views, &updates);
        ensure!(refused.is_empty(), "ledger records refused: {refused:?}");
        Ok(views.into_iter().map(|v| (v.name.clone(), v)).collect())
    }

    /// Whether node `i` is a control-plane node: those stand as coordinator, as in production.
    fn is_control_plane(&self, i: usize) -> bool {
        self.control_plane.contains(&self.nodes[i])
    }

    /// The agents, each with its own node's credential, and the coordinator's credential for
    /// those `coordinate` picks.
    fn sim(
        &self,
        dir: &std::path::Path,
        stage: impl Fn(usize) -> Duration,
        coordinate: impl Fn(usize) -> bool,
    ) -> Result<Sim> {
        let mut specs = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            specs.push(NodeSpec {
                name: n.clone(),
                image: V1.into(),
                stage_time: stage(i),
                kubeconfig: self.creds.node(n)?,
                coordinator_kubeconfig: if coordinate(i) {
                    Some(self.creds.coordinator()?)
                } else {
                    None
                },
            });
        }
        Sim::start(
            dir,
            &specs,
            &self.env.ns,
            &Timing {
                lease: Duration::from_secs(3),
                boot: Duration::from_millis(700),
                health_timeout: self.health_timeout,
            },
        )
    }
}

/// What the observer found wrong, and what it saw.
#[derive(Default)]
struct Seen {
    violations: Vec<String>,
    max_in_flight: usize,
    /// Nodes granted after the Update was seen Halted (I6).
    halted_at_grants: Option<BTreeSet<String>>,
    reboots: BTreeMap<String, u32>,
    /// Reboots whose Node could not be read (the API server away): not checked.
    unobserved_reboots: u32,
    /// Reboots during which the Node did not say Rebooting.
    not_shown: Vec<String>,
}

/// Check invariants continuously while the rollout runs.
fn observe(
    client: Client,
    nodes: Vec<String>,
    update: Update,
    max_unavailable: usize,
    sim_root: std::path::PathBuf,
) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let uid = update.metadata.uid.clone().unwrap_or_default();
    let name = update.metadata.name.clone().unwrap_or_default();
    let ns = update.metadata.namespace.clone().unwrap_or_default();
    let names: BTreeSet<String> = nodes.iter().cloned().collect();
    // I1, I4 and I6 on every change of the Nodes and of the Updates (whose ledger holds the
    // grants), applied in the order the API server made them.
    {
        let (seen, names, uid) = (seen.clone(), names.clone(), uid.clone());
        let sim_root = sim_root.clone();
        let (client, ns) = (client.clone(), ns.clone());
        tokio::spawn(async move {
            // Through API outages: the watches start again (with a fresh list).
            let mut stream = rollout_view::changes(client, &ns).boxed();
            let mut view = RolloutView::default();
            let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
            while let Some(change) = stream.next().await {
                view.apply(change);
                let now: BTreeMap<String, NodeView> = view
                    .views(|n| names.contains(n))
                    .into_iter()
                    .map(|v| (v.name.clone(), v))
                    .collect();
                let in_flight = now
                    .values()
                    .filter(|v| {
                        v.grant.as_ref().is_some_and(|g| {
                            g.uid == uid && !v.phase_for(g).is_some_and(AgentPhase::is_terminal)
                        })
                    })
                    .count();
                let mut s = seen.lock().unwrap();
                s.max_in_flight = s.max_in_flight.max(in_flight);
                if in_flight > max_unavailable {
                    s.violations.push(format!(
                        "I1: {in_flight} nodes in flight, maxUnavailable {max_unavailable}"
                    ));
                }
                let done = |v: &NodeView| {
                    v.grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Done)
                };
                for v in now.values() {
                    let before = views.get(&v.name);
                    if done(v) && !before.is_some_and(done) {
                        let booted =
                            std::fs::read_to_string(sim_root.join(&v.name).join("booted-image"))
                                .unwrap_or_default();
                        if booted != V2 {
                            s.violations.push(format!(
                                "I4: {} reported Done while booted {booted:?}",
                                v.name
                            ));
                        }
                    }
                    if let Some(at_halt) = &s.halted_at_grants {
                        if v.grant.as_ref().is_some_and(|g| g.uid == uid)
                            && !at_halt.contains(&v.name)
                        {
                            let line =
                                format!("I6: {} was granted after the rollout halted", v.name);
                            if !s.violations.contains(&line) {
                                s.violations.push(line);
                            }
                        }
                    }
                }
                views = now;
            }
        });
    }
    // I3 on every reboot of a simulated host; I6's reference point.
    {
        let seen = seen.clone();
        let updates: Api<Update> = Api::namespaced(client.clone(), &ns);
        let nodes_api: Api<Node> = Api::all(client.clone());
        tokio::spawn(async move {
            let mut boots: BTreeMap<String, u32> = BTreeMap::new();
            loop {
                for n in &nodes {
                    let host = sim::host::SimHost {
                        dir: sim_root.join(n),
                        stage_time: Duration::ZERO,
                        reports: Default::default(),
                    };
                    let Ok(state) = host.load() else { continue };
                    let last = boots.insert(n.clone(), state.boots).unwrap_or(state.boots);
                    if state.boots > last {
                        // The Node as it is now (the watch may lag behind an outage); the
                        // machine is down for the boot time, so it still shows the reboot.
                        let v = match (
                            nodes_api.get(n).await,
                            updates.list(&ListParams::default()).await,
                        ) {
                            (Ok(node), Ok(list)) => {
                                let mut v = NodeView::from_node(&node);
                                v.grant = ledger::grant_of(n, &list.items).0;
                                v
                            }
                            _ => {
                                seen.lock().unwrap().unobserved_reboots += 1;
                                continue;
                            }
                        };
                        let open = v.grant.as_ref().is_some_and(|g| {
                            g.uid == uid && !v.phase_for(g).is_some_and(AgentPhase::is_terminal)
                        });
                        let mut s = seen.lock().unwrap();
                        *s.reboots.entry(n.clone()).or_default() += state.boots - last;
                        // What the Node says while the machine is down (a rollback's reboot
                        // happens while it says Verifying). Not an invariant: the reboot does
                        // not wait for an API server that is away.
                        let shown = v.grant.as_ref().and_then(|g| v.phase_for(g));
                        if !matches!(shown, Some(AgentPhase::Rebooting | AgentPhase::Verifying)) {
                            s.not_shown
                                .push(format!("{n} rebooted while its Node said {shown:?}"));
                        }
                        if !open || !v.unschedulable {
                            s.violations.push(format!(
                                "I3: {n} rebooted without an open grant and a cordon (grant {:?}, phase {:?}, cordoned {})",
                                v.grant, v.phase, v.unschedulable
                            ));
                        }
                    }
                }
                let halted = updates
                    .get(&name)
                    .await
                    .is_ok_and(|u| u.status.and_then(|s| s.state).as_deref() == Some("Halted"));
                if halted && seen.lock().unwrap().halted_at_grants.is_none() {
                    // The grants as the server has them now (not the watch, which may lag).
                    if let Ok(list) = updates.list(&ListParams::default()).await {
                        let granted = ledger::grants_by_node(&list.items)
                            .0
                            .into_iter()
                            .filter(|(n, g)| nodes.contains(n) && g.uid == uid)
                            .map(|(n, _)| n)
                            .collect();
                        seen.lock().unwrap().halted_at_grants = Some(granted);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    seen
}

fn check_seen(seen: &Arc<Mutex<Seen>>) -> Result<()> {
    let s = seen.lock().unwrap();
    ensure!(
        s.violations.is_empty(),
        "invariants violated:\n{}",
        s.violations.join("\n")
    );
    Ok(())
}

/// Faults while a rollout runs, every 1.5 s in turn: hkd SIGKILLed on some node, on the
/// coordinator's node (the Lease holder), the API server (when given) restarted once (stopped, down for
/// 3 s, started again on the same port: every watch and connection breaks, watches resume
/// with "too old resource version"), and label writes on a third of the Nodes that make the
/// coordinator's resourceVersion-guarded grants conflict. Never ends.
async fn chaos(rig: &Rig, sim: &Sim, mut server: Option<&mut support::local::LocalCluster>) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(rig.env.admin.clone(), &rig.env.ns);
    let node_api: Api<Node> = Api::all(rig.env.admin.clone());
    let nodes = &rig.nodes;
    for round in 0u64.. {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match round % 5 {
            0 | 2 => sim.kill(&nodes[(round as usize * 7) % nodes.len()]),
            1 => {
                if let Ok(l) = leases.get("housekeeper-coordinator").await {
                    if let Some(holder) = l.spec.and_then(|s| s.holder_identity) {
                        sim.kill(&holder);
                    }
                }
            }
            3 if round == 3 && server.is_some() => {
                if let Some(server) = server.as_deref_mut() {
                    if let Err(e) = server.restart_apiserver(Duration::from_secs(3)).await {
                        eprintln!("restarting the API server: {e:#}");
                    }
                }
            }
            _ => {
                for n in nodes.iter().step_by(3) {
                    let _ = node_api
                        .patch(
                            n,
                            &PatchParams::default(),
                            &Patch::Merge(
                                json!({"metadata": {"labels": {"sim-chaos": round.to_string()}}}),
                            ),
                        )
                        .await;
                }
            }
        }
    }
}

/// `result`, or its error with the last lines of the first nodes' hkd logs.
fn with_logs<T>(result: Result<T>, rig: &Rig, sim: &Sim) -> Result<T> {
    result.map_err(|e| {
        let logs: Vec<String> = rig
            .nodes
            .iter()
            .take(6)
            .map(|n| format!("--- {n}\n{}", sim.log_tail(n, 15)))
            .collect();
        anyhow::anyhow!("{e:#}\n{}", logs.join("\n"))
    })
}

/// Events hkd recorded on a Node, as reasons.
async fn node_events(client: &Client, node: &str) -> Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    Ok(api
        .list(&ListParams::default().fields(&format!("involvedObject.name={node}")))
        .await?
        .items
        .into_iter()
        .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("hkd"))
        .map(|e| e.reason.unwrap_or_default())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_roll_control_plane_first_drain_run_kubeadm_and_uncordon() -> Result<()> {
    let rig = Rig::new("sim-three", 1, 2).await?;
    let k = KubeletStandIn::new(rig.env.admin.clone());
    let _finisher = k.spawn_finisher(&rig.env.ns);
    // A pod to drain on the first worker (unreplicated: it needs evictPodForce).
    k.run_pod(&rig.env.ns, "app", &rig.nodes[1], &[("app", "x")])
        .await?;
    let dir = tempfile::tempdir()?;
    // The control-plane node stands for coordinator, as in production.
    let sim = rig.sim(
        dir.path(),
        |_| Duration::from_millis(300),
        |i| rig.is_control_plane(i),
    )?;
    let u = rig
        .create_update(
            "roll",
            json!({"maxUnavailable": 1, "kubeVersion": "v1.21.0", "evictPodForce": true}),
        )
        .await?;
    let seen = observe(
        rig.env.admin.clone(),
        rig.nodes.clone(),
        u,
        1,
        dir.path().to_owned(),
    );
    let done = rig
        .wait_state("roll", &["Complete", "Halted"], Duration::from_secs(150))
        .await;
    with_logs(done, &rig, &sim)?;
    let u = rig.updates().get("roll").await?;
    let status = u.status.clone().unwrap_or_default();
    ensure!(status.state.as_deref() == Some("Complete"), "{status:?}");
    check_seen(&seen)?;
    {
        let s = seen.lock().unwrap();
        ensure!(s.not_shown.is_empty(), "{:?}", s.not_shown);
        ensure!(s.reboots.values().sum::<u32>() == 3 && s.unobserved_reboots == 0);
    }
    // Every host booted v2, every Node says Done and is schedulable again.
    let views = rig.views().await?;
    for n in &rig.nodes {
        ensure!(
            sim.host(n).booted_image().as_deref() == Some(V2),
            "{n} booted {:?}",
            sim.host(n).booted_image()
        );
        let v = &views[n];
        let g = v.grant.clone().context("grant")?;
        ensure!(v.phase_for(&g) == Some(AgentPhase::Done), "{n}: {v:?}");
        ensure!(!v.unschedulable && !v.cordoned_by_hkd, "{n} still cordoned");
        ensure!(
            v.os_image.as_deref() == Some(V2),
            "{n} os-image {:?}",
            v.os_image
        );
        let events = node_events(&rig.env.admin, n).await?;
        for want in ["Draining", "Drained", "Uncordoned", "UpgradeDone"] {
            ensure!(
                events.iter().any(|e| e == want),
                "{n}: no {want} Event in {events:?}"
            );
        }
    }
    // Control plane first: the workers began after the control-plane node was done.
    let cp_done = views[&rig.control_plane[0]].since.context("since")?;
    for w in &rig.nodes[1..] {
        let calls = sim.kubeadm_calls(w);
        ensure!(calls == ["upgrade node"], "{w} kubeadm calls {calls:?}");
        ensure!(
            views[w].since.context("since")? > cp_done,
            "{w} finished before the control plane"
        );
    }
    // kubeadm got the version asked for, on the control-plane node.
    let calls = sim.kubeadm_calls(&rig.control_plane[0]);
    ensure!(
        calls == ["upgrade apply --yes v1.21.0"],
        "control plane kubeadm calls {calls:?}"
    );
    // The pod was evicted and is gone.
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(rig.env.admin.clone(), &rig.env.ns);
    ensure!(
        pods.get_opt("app").await?.is_none(),
        "the pod on {} was not drained",
        rig.nodes[1]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_agents_with_kills_and_conflicts_halt_on_the_right_nodes() -> Result<()> {
    let rig = Rig::new("sim-thirty", 3, 27).await?;
    let dir = tempfile::tempdir()?;
    // Two workers whose health check fails on v2: they roll back and report Failed; with
    // maxFailed 1 the second failure halts the rollout while most workers still wait.
    let bad: Vec<String> = vec![rig.nodes[3].clone(), rig.nodes[4].clone()];
    // A pod whose PodDisruptionBudget refuses its eviction (429s) until it is lifted.
    let guarded = rig.nodes[5].clone();
    let k = KubeletStandIn::new(rig.env.admin.clone());
    let _finisher = k.spawn_finisher(&rig.env.ns);
    k.run_pod(&rig.env.ns, "guarded", &guarded, &[("app", "guarded")])
        .await?;
    let (pdbs, _) =
        support::eviction::create_pdb(&rig.env.admin, &rig.env.ns, "guard", "guarded", 1).await?;
    // The budget is lifted after a while, as when a replacement became ready elsewhere.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(12)).await;
        while pdbs.delete("guard", &Default::default()).await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let sim = rig.sim(
        dir.path(),
        |i| Duration::from_millis(200 + (i as u64 * 137) % 1300),
        // The control-plane nodes stand for coordinator, as in production.
        |i| rig.is_control_plane(i),
    )?;
    for b in &bad {
        std::fs::write(dir.path().join(b).join("fail-health"), V2)?;
        // Their check also fails when the marker names what booted.
        let check = dir
            .path()
            .join(b)
            .join("etc/hkd/health.d/required.d/20-node");
        std::fs::write(
            &check,
            format!(
                "#!/bin/sh\nif [ \"$(cat {d}/booted-image)\" = \"$(cat {d}/fail-health)\" ]; then echo 'this node fails v2' >&2; exit 1; fi\n",
                d = dir.path().join(b).display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755))?;
    }
    let max_unavailable = 4;
    let u = rig
        .create_update(
            "roll",
            json!({"maxUnavailable": max_unavailable, "maxFailed": 1, "evictPodForce": true}),
        )
        .await?;
    let seen = observe(
        rig.env.admin.clone(),
        rig.nodes.clone(),
        u,
        max_unavailable,
        dir.path().to_owned(),
    );

    // Faults while it runs: hkd killed on random nodes and on the coordinator's, an outage of
    // the API server as the agents see it, and writes that make the coordinator's conflict.
    let chaos = chaos(&rig, &sim, None);
    let end = tokio::select! {
        r = rig.wait_state("roll", &["Halted", "Complete"], Duration::from_secs(600)) => r,
        _ = chaos => unreachable!(),
    };
    with_logs(end, &rig, &sim)?;
    // Let nodes in flight at the halt finish.
    let open = |v: &NodeView| {
        v.grant
            .as_ref()
            .is_some_and(|g| !v.phase_for(g).is_some_and(AgentPhase::is_terminal))
    };
    let settled = wait_for(
        "nodes in flight at the halt to finish",
        Duration::from_secs(90),
        || async { Ok(!rig.views().await?.values().any(open)) },
    )
    .await;
    if let Err(e) = settled {
        let views = rig.views().await?;
        let stuck: Vec<String> = views
            .iter()
            .filter(|(_, v)| open(v))
            .map(|(n, v)| format!("--- {n}: {v:?}\n{}", sim.log_tail(n, 25)))
            .collect();
        bail!("{e:#}\n{}", stuck.join("\n"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    check_seen(&seen)?;

    let u = rig.updates().get("roll").await?;
    let status = u.status.clone().unwrap_or_default();
    ensure!(status.state.as_deref() == Some("Halted"), "{status:?}");
    let halted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Halted")
        .context("Halted condition")?;
    for b in &bad {
        ensure!(
            halted.message.contains(b.as_str()),
            "Halted does not name {b}: {}",
            halted.message
        );
    }
    let views = rig.views().await?;
    let failed: BTreeSet<&String> = views
        .iter()
        .filter(|(_, v)| v.grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Failed))
        .map(|(n, _)| n)
        .collect();
    let reasons: Vec<String> = failed
        .iter()
        .map(|n| format!("{n}: {:?}", views[*n].reason))
        .collect();
    ensure!(
        failed == bad.iter().collect(),
        "failed {reasons:?}, expected {bad:?}"
    );
    for (n, v) in &views {
        ensure!(!v.unschedulable, "{n} was left cordoned");
        let booted = sim.host(n).booted_image();
        let answered_done = v.grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Done);
        if bad.contains(n) {
            ensure!(
                booted.as_deref() == Some(V1),
                "{n} was not rolled back: {booted:?}"
            );
        } else if answered_done {
            ensure!(booted.as_deref() == Some(V2), "{n} Done on {booted:?}");
        } else {
            ensure!(
                v.grant.is_none() && booted.as_deref() == Some(V1),
                "{n}: {v:?} booted {booted:?}"
            );
        }
    }
    let max_in_flight = seen.lock().unwrap().max_in_flight;
    let reboots: u32 = seen.lock().unwrap().reboots.values().sum();
    eprintln!(
        "rollout halted: {} done, {} failed, max in flight {}, reboots {}, hkd starts {:?}",
        views
            .values()
            .filter(|v| v.grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Done))
            .count(),
        failed.len(),
        max_in_flight,
        reboots,
        sim.starts().values().sum::<u32>(),
    );
    ensure!(
        max_in_flight >= 2,
        "the rollout never ran nodes in parallel"
    );
    let pending = views.values().filter(|v| v.grant.is_none()).count();
    ensure!(
        pending > 0,
        "the halt came after every node was granted: I6 was not put to the test"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(rig.env.admin.clone(), &rig.env.ns);
    if views[&guarded].grant.is_some() {
        ensure!(
            pods.get_opt("guarded").await?.is_none(),
            "the guarded pod was not drained"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_agents_with_kills_a_server_restart_and_conflicts_complete() -> Result<()> {
    // A cluster of this test's own: its API server is restarted mid-rollout.
    std::env::remove_var("NEXTEST_RUN_ID");
    let mut rig = Rig::new("sim-complete", 3, 27).await?;
    // Longer than the restart: the health gate's "Node Ready" cannot be read meanwhile.
    rig.health_timeout = Duration::from_secs(40);
    let Cluster::Local(local) = rig.env.cluster else {
        bail!("this test restarts the API server: it needs a local test cluster of its own");
    };
    let mut server = local.clone();
    let dir = tempfile::tempdir()?;
    let sim = rig.sim(
        dir.path(),
        |i| Duration::from_millis(200 + (i as u64 * 211) % 1500),
        |i| rig.is_control_plane(i),
    )?;
    let max_unavailable = 5;
    let u = rig
        .create_update("roll", json!({"maxUnavailable": max_unavailable}))
        .await?;
    let seen = observe(
        rig.env.admin.clone(),
        rig.nodes.clone(),
        u,
        max_unavailable,
        dir.path().to_owned(),
    );
    let end = tokio::select! {
        r = rig.wait_state("roll", &["Halted", "Complete"], Duration::from_secs(600)) => r,
        _ = chaos(&rig, &sim, Some(&mut server)) => unreachable!(),
    };
    with_logs(end, &rig, &sim)?;
    check_seen(&seen)?;
    let u = rig.updates().get("roll").await?;
    let status = u.status.clone().unwrap_or_default();
    ensure!(status.state.as_deref() == Some("Complete"), "{status:?}");
    let views = rig.views().await?;
    for (n, v) in &views {
        ensure!(!v.unschedulable, "{n} was left cordoned");
        ensure!(
            sim.host(n).booted_image().as_deref() == Some(V2),
            "{n} booted {:?}",
            sim.host(n).booted_image()
        );
        let g = v.grant.clone().context("every node was granted")?;
        ensure!(v.phase_for(&g) == Some(AgentPhase::Done), "{n}: {v:?}");
    }
    let s = seen.lock().unwrap();
    let starts: u32 = sim.starts().values().sum();
    eprintln!(
        "rollout complete: 30 done, max in flight {}, reboots {}, hkd starts {starts}",
        s.max_in_flight,
        s.reboots.values().sum::<u32>(),
    );
    // Each node rebooted once: no reboot was repeated by a restarted agent.
    ensure!(
        s.reboots.values().all(|r| *r == 1),
        "reboots per node: {:?}",
        s.reboots
    );
    ensure!(
        starts > 60,
        "too few kills and reboots to speak of faults: {starts} starts"
    );
    Ok(())
}

/// The shipped Roles of hkd's namespace (`housekeeper::cluster::rbac::manifests`: the
/// coordinator's and the one every node gets), applied in `namespace` as well, bound to the
/// same subjects; the cluster-wide objects and the identities are install's own.
async fn grant_shipped_roles_in(admin: &Client, namespace: &str) -> Result<()> {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let pp = PatchParams::apply("housekeeper-test").force();
    for mut m in housekeeper::cluster::rbac::manifests() {
        if m["metadata"]["namespace"] != housekeeper::cluster::update::NAMESPACE {
            continue;
        }
        let name = m["metadata"]["name"]
            .as_str()
            .context("a manifest without a name")?
            .to_owned();
        m["metadata"]["namespace"] = json!(namespace);
        match m["kind"].as_str() {
            Some("Role") => {
                Api::<Role>::namespaced(admin.clone(), namespace)
                    .patch(&name, &pp, &Patch::Apply(&m))
                    .await
                    .with_context(|| format!("applying Role {namespace}/{name}"))?;
            }
            Some("RoleBinding") => {
                Api::<RoleBinding>::namespaced(admin.clone(), namespace)
                    .patch(&name, &pp, &Patch::Apply(&m))
                    .await
                    .with_context(|| format!("applying RoleBinding {namespace}/{name}"))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The server's refusal of `got`: a 403 whose message contains `why`.
fn forbidden<T: std::fmt::Debug>(what: &str, got: Result<T, kube::Error>, why: &str) -> Result<()> {
    match got {
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(why) => {
            eprintln!("refused as it must be: {what}: {}", s.message);
            Ok(())
        }
        other => bail!("{what}: expected 403 with {why:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_work_under_the_shipped_rbac_and_are_refused_outside_it() -> Result<()> {
    // One control-plane node, which alone holds the coordinator's credential, and two workers
    // with their node credential only: the identities as `hkctl install` issues them.
    let rig = Rig::new("sim-rbac", 1, 2).await?;
    let k = KubeletStandIn::new(rig.env.admin.clone());
    let _finisher = k.spawn_finisher(&rig.env.ns);
    k.run_pod(&rig.env.ns, "app", &rig.nodes[1], &[("app", "x")])
        .await?;
    let dir = tempfile::tempdir()?;
    let sim = rig.sim(
        dir.path(),
        |_| Duration::from_millis(300),
        |i| rig.is_control_plane(i),
    )?;
    let name = "rbac";
    let u = rig
        .create_update(name, json!({"maxUnavailable": 1, "evictPodForce": true}))
        .await?;
    let seen = observe(
        rig.env.admin.clone(),
        rig.nodes.clone(),
        u,
        1,
        dir.path().to_owned(),
    );
    let done = rig
        .wait_state(name, &["Complete", "Halted"], Duration::from_secs(120))
        .await;
    with_logs(done, &rig, &sim)?;
    let status = rig.updates().get(name).await?.status.unwrap_or_default();
    ensure!(status.state.as_deref() == Some("Complete"), "{status:?}");
    check_seen(&seen)?;
    // Everything the rollout needed went through under the shipped identities: the Lease,
    // the ledger and the status (the coordinator's), cordon, eviction, phases and Events
    // (each node's own).
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(rig.env.admin.clone(), &rig.env.ns);
    ensure!(
        pods.get_opt("app").await?.is_none(),
        "the pod was not evicted"
    );
    let views = rig.views().await?;
    for n in &rig.nodes {
        let events = node_events(&rig.env.admin, n).await?;
        ensure!(events.iter().any(|e| e == "UpgradeDone"), "{n}: {events:?}");
        ensure!(
            !sim.log_tail(n, 400).contains("(403)"),
            "{n} met a 403:\n{}",
            sim.log_tail(n, 30)
        );
        let v = &views[n];
        let g = v.grant.clone().context("grant")?;
        ensure!(v.phase_for(&g) == Some(AgentPhase::Done), "{n}: {v:?}");
    }
    let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(rig.env.admin.clone(), &rig.env.ns);
    let holder = lease
        .get(housekeeper::cluster::lease::LEASE_NAME)
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    ensure!(
        holder.is_empty() || holder == rig.control_plane[0],
        "the Lease is held by {holder:?}, not by the control-plane node"
    );

    // And nothing beyond them. A worker's credential: what its kubelet may, no more.
    let (worker, other) = (&rig.nodes[1], &rig.nodes[2]);
    k.run_pod(&rig.env.ns, "other", other, &[("app", "y")])
        .await?;
    let node = support::cluster::client_from_kubeconfig_file(&rig.creds.node_path(worker)).await?;
    let pp = PatchParams::default();
    let forged = json!({"status": {"coordinatorTerm": 99, "grants": {
        worker.as_str(): {"generation": 1, "term": 99, "grantedAt": "2024-03-01T10:00:00Z"}}}});
    forbidden(
        "a node writes the ledger",
        Api::<Update>::namespaced(node.clone(), &rig.env.ns)
            .patch_status(name, &pp, &Patch::Merge(&forged))
            .await,
        "cannot patch resource \"updates/status\"",
    )?;
    forbidden(
        "a node changes an Update's spec",
        Api::<Update>::namespaced(node.clone(), &rig.env.ns)
            .patch(name, &pp, &Patch::Merge(json!({"spec": {"paused": true}})))
            .await,
        "cannot patch resource \"updates\"",
    )?;
    forbidden(
        "a node annotates another Node",
        Api::<Node>::all(node.clone())
            .patch(
                other,
                &pp,
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"housekeeper.io/phase": "Done"}}}),
                ),
            )
            .await,
        &format!("node \"{worker}\" is not allowed to modify node \"{other}\""),
    )?;
    forbidden(
        "a node deletes another node's pod",
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(node.clone(), &rig.env.ns)
            .delete("other", &Default::default())
            .await,
        "can only delete pods with spec.nodeName set to itself",
    )?;
    forbidden(
        "a node reads the coordinator's Lease",
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(node.clone(), &rig.env.ns)
            .get(housekeeper::cluster::lease::LEASE_NAME)
            .await,
        "cannot get resource \"leases\"",
    )?;
    forbidden(
        "a node lists Secrets",
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(node.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
        "cannot list resource \"secrets\"",
    )?;
    forbidden(
        "a node reads Updates elsewhere",
        Api::<Update>::namespaced(node.clone(), "default")
            .list(&ListParams::default())
            .await,
        "cannot list resource \"updates\"",
    )?;
    // The coordinator's credential: the rollout's state, never a Node or a pod.
    let coord =
        support::cluster::client_from_kubeconfig_file(&rig.creds.coordinator_path()).await?;
    forbidden(
        "the coordinator annotates a Node",
        Api::<Node>::all(coord.clone())
            .patch(
                other,
                &pp,
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"housekeeper.io/phase": "Done"}}}),
                ),
            )
            .await,
        "cannot patch resource \"nodes\"",
    )?;
    forbidden(
        "the coordinator cordons a Node",
        Api::<Node>::all(coord.clone())
            .patch(
                other,
                &pp,
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await,
        "cannot patch resource \"nodes\"",
    )?;
    forbidden(
        "the coordinator deletes a Node",
        Api::<Node>::all(coord.clone())
            .delete(other, &Default::default())
            .await,
        "cannot delete resource \"nodes\"",
    )?;
    forbidden(
        "the coordinator deletes a pod",
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(coord.clone(), &rig.env.ns)
            .delete("other", &Default::default())
            .await,
        "cannot delete resource \"pods\"",
    )?;
    forbidden(
        "the coordinator changes an Update's spec",
        Api::<Update>::namespaced(coord.clone(), &rig.env.ns)
            .patch(name, &pp, &Patch::Merge(json!({"spec": {"paused": true}})))
            .await,
        "cannot patch resource \"updates\"",
    )?;
    forbidden(
        "the coordinator lists Secrets",
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(coord.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
        "cannot list resource \"secrets\"",
    )?;
    forbidden(
        "the coordinator reads Updates elsewhere",
        Api::<Update>::namespaced(coord.clone(), "default")
            .list(&ListParams::default())
            .await,
        "cannot list resource \"updates\"",
    )?;
    forbidden(
        "the coordinator reads another Lease",
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(coord, &rig.env.ns)
            .get("someone-elses")
            .await,
        "cannot get resource \"leases\"",
    )?;
    // Nothing of it landed.
    let v = &rig.views().await?[other];
    ensure!(
        v.phase_for(v.grant.as_ref().context("grant")?) == Some(AgentPhase::Done)
            && !v.unschedulable,
        "{other} was changed: {v:?}"
    );
    ensure!(
        pods.get_opt("other").await?.is_some(),
        "the pod on {other} was deleted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_updates_halt_with_why_and_leave_the_nodes_alone() -> Result<()> {
    let rig = Rig::new("sim-invalid", 0, 2).await?;
    let dir = tempfile::tempdir()?;
    // No control-plane node in this rig: its workers stand for coordinator.
    let sim = rig.sim(dir.path(), |_| Duration::from_millis(200), |_| true)?;
    // The schema cannot know time zones or image references: the planner halts, says why.
    rig.create_update(
        "tz",
        json!({"maintenanceWindows": [{"start": "22:00", "end": "04:00", "timeZone": "Mars/Olympus_Mons"}]}),
    )
    .await?;
    rig.create_update("image", json!({"osImageURL": "not an image reference"}))
        .await?;
    for (name, says) in [
        ("tz", "Mars/Olympus_Mons"),
        ("image", "not an image reference"),
    ] {
        let u = rig
            .wait_state(name, &["Halted"], Duration::from_secs(60))
            .await?;
        let halted = u
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Halted" && c.status == "True")
            .context("Halted condition")?;
        ensure!(
            halted.reason == "InvalidSpec" && halted.message.contains(says),
            "{name}: {halted:?}"
        );
    }
    // A valid Update that selects nothing grants nothing and says so.
    let none: Update = serde_json::from_value(json!({
        "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
        "metadata": {"name": "nothing"},
        "spec": {"osImageURL": V2, "nodeSelector": {"matchLabels": {"pool": "none-such"}}},
    }))?;
    rig.updates().create(&PostParams::default(), &none).await?;
    let u = rig
        .wait_state(
            "nothing",
            &["Complete", "Waiting", "Halted"],
            Duration::from_secs(60),
        )
        .await?;
    ensure!(
        u.status.clone().unwrap_or_default().counts.total == 0,
        "{:?}",
        u.status
    );
    // Meanwhile no node was staged, granted or cordoned, and both agents still run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (n, v) in rig.views().await? {
        ensure!(
            v.grant.is_none() && v.staged.is_none() && !v.unschedulable,
            "{n}: {v:?}"
        );
        let host = sim.host(&n).load().map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            host.deployments.iter().all(|d| !d.staged),
            "{n} staged something: {host:?}"
        );
    }
    ensure!(
        sim.starts().values().all(|s| *s == 1),
        "an agent died: {:?}",
        sim.starts()
    );
    // A node that follows its cluster refuses a local upgrade request: it could otherwise
    // ride a cluster grant.
    for (n, _) in rig.views().await? {
        let target = housekeeper::image_ref::ImageRef::parse_any(V2)?;
        let answer = housekeeper::node::socket::request(
            &sim.socket(&n),
            &housekeeper::node::socket::Request::Upgrade { target },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            !answer.ok
                && answer
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("follows its cluster's Update")),
            "{n} took a local upgrade: {answer:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_a_vanished_node_and_a_node_deleted_mid_rollout() -> Result<()> {
    let rig = Rig::new("sim-vanish", 0, 3).await?;
    // A coordinator Lease held by a node that no longer exists, renewed just now.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(rig.env.admin.clone(), &rig.env.ns);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "housekeeper-coordinator"},
                "spec": {"holderIdentity": "vanished-node", "leaseDurationSeconds": 5,
                         "acquireTime": now, "renewTime": now},
            }))?,
        )
        .await?;
    // Every node runs a pod whose PodDisruptionBudget allows no eviction, so the first node
    // granted is still draining when it is deleted, with a drain timeout far off.
    let k = KubeletStandIn::new(rig.env.admin.clone());
    let _finisher = k.spawn_finisher(&rig.env.ns);
    for (i, n) in rig.nodes.iter().enumerate() {
        k.run_pod(
            &rig.env.ns,
            &format!("guarded-{i}"),
            n,
            &[("app", "guarded")],
        )
        .await?;
    }
    let (pdbs, _) =
        support::eviction::create_pdb(&rig.env.admin, &rig.env.ns, "guard", "guarded", 3).await?;
    let dir = tempfile::tempdir()?;
    // No control-plane node in this rig: its workers stand for coordinator.
    let sim = rig.sim(dir.path(), |_| Duration::from_millis(200), |_| true)?;
    let u = rig
        .create_update(
            "roll",
            json!({"maxUnavailable": 1, "evictPodForce": true, "drain": {"timeoutSeconds": 900}}),
        )
        .await?;
    let _seen = observe(
        rig.env.admin.clone(),
        rig.nodes.clone(),
        u,
        1,
        dir.path().to_owned(),
    );
    // The stale Lease is taken over once its term ran out.
    wait_for(
        "one of ours to hold the Lease",
        Duration::from_secs(30),
        || async {
            let l = leases.get("housekeeper-coordinator").await?;
            let holder = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            Ok(rig.nodes.contains(&holder))
        },
    )
    .await?;
    // The first node granted is deleted from the cluster while it upgrades.
    let nodes: Api<Node> = Api::all(rig.env.admin.clone());
    let in_flight = |views: BTreeMap<String, NodeView>| {
        views.into_iter().find_map(|(n, v)| {
            v.grant
                .as_ref()
                .is_some_and(|g| !v.phase_for(g).is_some_and(AgentPhase::is_terminal))
                .then_some(n)
        })
    };
    wait_for("a node in flight", Duration::from_secs(60), || async {
        Ok(in_flight(rig.views().await?).is_some())
    })
    .await?;
    let victim = in_flight(rig.views().await?).context("the node in flight finished")?;
    nodes.delete(&victim, &Default::default()).await?;
    pdbs.delete("guard", &Default::default()).await?;
    let u = rig
        .wait_state("roll", &["Complete", "Halted"], Duration::from_secs(120))
        .await?;
    let status = u.status.unwrap_or_default();
    ensure!(status.state.as_deref() == Some("Complete"), "{status:?}");
    ensure!(
        status.counts.total == 2 && status.counts.done == 2,
        "{:?}",
        status.counts
    );
    for n in rig.nodes.iter().filter(|n| **n != victim) {
        let v = NodeView::from_node(&nodes.get(n).await?);
        ensure!(!v.unschedulable, "{n} left cordoned");
        ensure!(
            sim.host(n).booted_image().as_deref() == Some(V2),
            "{n} not on v2"
        );
    }
    // The deleted node's hkd stops draining at once (not at the drain timeout), answers its
    // upgrade failed and comes to rest, alive.
    wait_for(
        &format!("{victim}'s hkd to come to rest"),
        Duration::from_secs(60),
        || async {
            let log = sim.log_tail(&victim, 400);
            Ok(["upgrade failed", "rolled back", "upgrade done"]
                .iter()
                .any(|end| log.contains(end)))
        },
    )
    .await
    .with_context(|| sim.log_tail(&victim, 20))?;
    let log = sim.log_tail(&victim, 400);
    ensure!(
        log.contains("was deleted from the cluster; not draining it")
            && log.contains("upgrade failed"),
        "{log}"
    );
    ensure!(!log.contains("hkd ended"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_kubeadm_answers_failed_and_leaves_the_node_cordoned_for_the_admin() -> Result<()>
{
    let rig = Rig::new("sim-kubeadm", 0, 1).await?;
    let dir = tempfile::tempdir()?;
    // No control-plane node in this rig: its workers stand for coordinator.
    let sim = rig.sim(dir.path(), |_| Duration::from_millis(200), |_| true)?;
    let node = rig.nodes[0].clone();
    let kubeadm = dir.path().join(&node).join("kubeadm");
    std::fs::write(
        &kubeadm,
        "#!/bin/sh\necho '[upgrade/node] FATAL: the kubelet config cannot be downloaded' >&2\nexit 1\n",
    )?;
    rig.create_update("roll", json!({"kubeVersion": "v1.21.0", "maxFailed": 1}))
        .await?;
    let views = wait_for_answer(&rig, &node).await?;
    let v = &views[&node];
    let g = v.grant.clone().context("grant")?;
    ensure!(v.phase_for(&g) == Some(AgentPhase::Failed), "{v:?}");
    let reason = v.reason.clone().unwrap_or_default();
    ensure!(
        reason.contains("kubeadm upgrade node failed") && reason.contains("FATAL"),
        "{reason}"
    );
    // The OS upgrade itself went through; the node stays out of service, the cordon now the
    // admin's to lift (hkd does not lift it later either).
    ensure!(sim.host(&node).booted_image().as_deref() == Some(V2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = NodeView::from_node(&Api::<Node>::all(rig.env.admin.clone()).get(&node).await?);
    ensure!(v.unschedulable && !v.cordoned_by_hkd, "{v:?}");
    let events = node_events(&rig.env.admin, &node).await?;
    ensure!(events.iter().any(|e| e == "KubeadmFailed"), "{events:?}");
    Ok(())
}

/// Wait until `node` answered its grant, Done or Failed.
async fn wait_for_answer(rig: &Rig, node: &str) -> Result<BTreeMap<String, NodeView>> {
    wait_for(
        &format!("{node} to answer its grant"),
        Duration::from_secs(90),
        || async {
            let v = &rig.views().await?[node];
            Ok(v.grant
                .as_ref()
                .is_some_and(|g| v.phase_for(g).is_some_and(AgentPhase::is_terminal)))
        },
    )
    .await?;
    rig.views().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_with_roll_back_gives_back_the_grants_of_nodes_not_yet_rebooted() -> Result<()> {
    let rig = Rig::new("sim-abort", 1, 3).await?;
    // Every worker runs a pod whose PodDisruptionBudget allows no eviction: a worker granted
    // stays in its drain, cordoned and its target staged, until the abort.
    let k = KubeletStandIn::new(rig.env.admin.clone());
    let _finisher = k.spawn_finisher(&rig.env.ns);
    let workers: Vec<String> = rig.nodes[1..].to_vec();
    for (i, w) in workers.iter().enumerate() {
        k.run_pod(
            &rig.env.ns,
            &format!("guarded-{i}"),
            w,
            &[("app", "guarded")],
        )
        .await?;
    }
    let (_pdbs, _) =
        support::eviction::create_pdb(&rig.env.admin, &rig.env.ns, "guard", "guarded", 3).await?;
    let dir = tempfile::tempdir()?;
    let sim = rig.sim(
        dir.path(),
        |_| Duration::from_millis(200),
        |i| rig.is_control_plane(i),
    )?;
    let u = rig
        .create_update(
            "roll",
            json!({"maxUnavailable": 2, "evictPodForce": true, "drain": {"timeoutSeconds": 900}}),
        )
        .await?;
    let seen = observe(
        rig.env.admin.clone(),
        rig.nodes.clone(),
        u,
        2,
        dir.path().to_owned(),
    );
    // Two workers granted and held in their drain; the third waits for a slot.
    let draining = |views: &BTreeMap<String, NodeView>| -> Vec<String> {
        workers
            .iter()
            .filter(|w| {
                let v = &views[*w];
                v.grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Draining)
                    && v.cordoned_by_hkd
            })
            .cloned()
            .collect()
    };
    let held = wait_for(
        "two workers held in their drain",
        Duration::from_secs(120),
        || async { Ok(draining(&rig.views().await?).len() == 2) },
    )
    .await;
    with_logs(held, &rig, &sim)?;
    let held = draining(&rig.views().await?);
    for w in &held {
        let host = sim.host(w).load().map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            host.deployments.iter().any(|d| d.staged),
            "{w} has nothing staged while draining: {host:?}"
        );
    }

    let out = hkctl(
        &rig.env,
        &["-n", &rig.env.ns, "abort", "--in-flight", "roll-back"],
    )
    .await?;
    ensure!(
        out.status.success(),
        "hkctl abort: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // They give their grant back: Failed, as aborted before the reboot.
    let answered = wait_for(
        "the held workers to answer",
        Duration::from_secs(60),
        || async {
            let views = rig.views().await?;
            Ok(held.iter().all(|w| {
                let v = &views[w];
                v.grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Failed)
            }))
        },
    )
    .await;
    if let Err(e) = answered {
        let logs: Vec<String> = held
            .iter()
            .map(|w| format!("--- {w}\n{}", sim.log_tail(w, 120)))
            .collect();
        bail!("{e:#}\n{}", logs.join("\n"));
    }
    // Their staged deployment dropped and hkd's cordon lifted, soon after the answer.
    let settled = wait_for(
        "the held workers to be back in service, nothing staged",
        Duration::from_secs(30),
        || async {
            let views = rig.views().await?;
            Ok(held.iter().all(|w| {
                let staged = sim
                    .host(w)
                    .load()
                    .map(|h| h.deployments.iter().any(|d| d.staged))
                    .unwrap_or(true);
                !views[w].unschedulable && !views[w].cordoned_by_hkd && !staged
            }))
        },
    )
    .await;
    if let Err(e) = settled {
        let views = rig.views().await?;
        let state: Vec<String> = held
            .iter()
            .map(|w| {
                format!(
                    "--- {w}: {:?}\n{:?}\n{}",
                    views[w],
                    sim.host(w).load().map_err(|e| e.to_string()),
                    sim.log_tail(w, 25)
                )
            })
            .collect();
        bail!("{e:#}\n{}", state.join("\n"));
    }
    let views = rig.views().await?;
    for w in &held {
        let v = &views[w];
        let reason = v.reason.clone().unwrap_or_default();
        // "aborted before this node was taken out of service", or, caught in its drain,
        // "aborted while this node drained".
        ensure!(reason.contains("the rollout was aborted"), "{w}: {reason}");
        let host = sim.host(w).load().map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            host.boots == 1 && sim.host(w).booted_image().as_deref() == Some(V1),
            "{w} rebooted: {host:?}"
        );
    }
    // The third worker was never granted; the rollout is Halted, as aborted.
    let waiting: Vec<&String> = workers.iter().filter(|w| !held.contains(w)).collect();
    ensure!(
        waiting.len() == 1 && views[waiting[0]].grant.is_none(),
        "{views:?}"
    );
    let u = rig
        .wait_state("roll", &["Halted"], Duration::from_secs(30))
        .await?;
    let status = u.status.unwrap_or_default();
    ensure!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Halted" && c.status == "True" && c.reason == "Aborted"),
        "{status:?}"
    );
    check_seen(&seen)?;
    Ok(())
}

/// One node's credential revoked mid-rollout (`hkctl revoke`): that node's hkd says clearly
/// that its credential is refused and acts on nothing — not drained, not rebooted, its host
/// still on v1 — while the other nodes complete under their own credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_credential_is_revoked_mid_rollout_stops_and_the_others_complete() -> Result<()>
{
    let rig = Rig::new("sim-revoke", 1, 3).await?;
    let dir = tempfile::tempdir()?;
    let sim = rig.sim(
        dir.path(),
        |_| Duration::from_millis(200),
        |i| rig.is_control_plane(i),
    )?;
    let revoked = rig.nodes[3].clone();
    let others: Vec<String> = rig.nodes[1..3].to_vec();
    rig.create_update("roll", json!({"maxUnavailable": 3}))
        .await?;
    // Mid-rollout: the control-plane node goes first, alone; revoke while it is in flight.
    let cp = rig.nodes[0].clone();
    let granted = wait_for(
        "the control-plane node granted",
        Duration::from_secs(90),
        || async { Ok(rig.views().await?[&cp].grant.is_some()) },
    )
    .await;
    with_logs(granted, &rig, &sim)?;
    let out = hkctl(&rig.env, &["revoke", &revoked]).await?;
    ensure!(
        out.status.success(),
        "hkctl revoke: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The others complete: each answers Done and runs v2.
    let done = wait_for(
        "the other nodes to answer Done",
        Duration::from_secs(150),
        || async {
            let views = rig.views().await?;
            Ok(rig.nodes[..3].iter().all(|n| {
                let v = &views[n];
                v.grant.as_ref().and_then(|g| v.phase_for(g)) == Some(AgentPhase::Done)
            }))
        },
    )
    .await;
    with_logs(done, &rig, &sim)?;
    for n in &others {
        ensure!(
            sim.host(n).booted_image().as_deref() == Some(V2),
            "{n} not on v2"
        );
    }
    // The revoked node says why, once it tries the cluster, and does nothing.
    let said = wait_for(
        &format!("{revoked}'s hkd to say its credential is refused"),
        Duration::from_secs(120),
        || async {
            Ok(sim
                .log_tail(&revoked, 400)
                .contains("the API server refuses this node's credential"))
        },
    )
    .await;
    with_logs(said, &rig, &sim)?;
    let log = sim.log_tail(&revoked, 400);
    ensure!(log.contains("hkctl install --node"), "{log}");
    ensure!(!log.contains("rebooting"), "{revoked} rebooted:\n{log}");
    ensure!(
        sim.host(&revoked).booted_image().as_deref() == Some(V1),
        "{revoked} left v1"
    );
    let v = NodeView::from_node(
        &Api::<Node>::all(rig.env.admin.clone())
            .get(&revoked)
            .await?,
    );
    ensure!(!v.unschedulable, "{revoked} was cordoned: {v:?}");
    Ok(())
}

/// A grant forged on a node's own Node with that node's own credential (which may write its
/// Node) has no effect: the server accepts the annotation, the node's hkd names it as
/// ignored (log and an `AnnotationIgnored` Event) and neither cordons, drains nor reboots —
/// the rollout is paused, so the ledger grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_a_node_forges_on_its_own_node_has_no_effect() -> Result<()> {
    let rig = Rig::new("sim-forge", 1, 1).await?;
    let dir = tempfile::tempdir()?;
    let sim = rig.sim(
        dir.path(),
        |_| Duration::from_millis(200),
        |i| rig.is_control_plane(i),
    )?;
    let worker = rig.nodes[1].clone();
    let u = rig
        .create_update("roll", json!({"maxUnavailable": 2, "paused": true}))
        .await?;
    // Pre-staged while paused: the agent follows the Update.
    let staged = wait_for(
        &format!("{worker} to pre-stage"),
        Duration::from_secs(60),
        || async { Ok(rig.views().await?[&worker].staged.is_some()) },
    )
    .await;
    with_logs(staged, &rig, &sim)?;
    let node = support::cluster::client_from_kubeconfig_file(&rig.creds.node_path(&worker)).await?;
    let uid = u.metadata.uid.clone().context("uid")?;
    let forged = json!({"metadata": {"annotations": {
        "housekeeper.io/grant": format!("{uid}/1"),
    }}});
    Api::<Node>::all(node)
        .patch(&worker, &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .context("the node annotating itself (its kubelet may)")?;
    let named = wait_for(
        &format!("{worker}'s hkd to name the annotation as ignored"),
        Duration::from_secs(60),
        || async {
            Ok(node_events(&rig.env.admin, &worker)
                .await?
                .iter()
                .any(|e| e == "AnnotationIgnored"))
        },
    )
    .await;
    with_logs(named, &rig, &sim)?;
    // Some seconds for anything it might wrongly do.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = &rig.views().await?[&worker];
    ensure!(v.grant.is_none(), "{worker} holds a grant: {v:?}");
    ensure!(v.phase.is_none(), "{worker} began something: {v:?}");
    ensure!(!v.unschedulable, "{worker} was cordoned: {v:?}");
    ensure!(
        sim.host(&worker).booted_image().as_deref() == Some(V1),
        "{worker} left v1"
    );
    let log = sim.log_tail(&worker, 200);
    ensure!(
        log.contains("annotation housekeeper.io/grant is ignored") && !log.contains("granted"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_staging_shows_its_progress_on_the_node_and_in_hkctl_status() -> Result<()> {
    let rig = Rig::new("sim-progress", 1, 1).await?;
    let dir = tempfile::tempdir()?;
    let worker = rig.nodes[1].clone();
    // The worker's pull lasts 40 s and reports ten times, through the same observer and
    // status `hkd run` wires to rpm-ostree's transaction signals.
    let sim = rig.sim(
        dir.path(),
        |i| {
            if rig.is_control_plane(i) {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(40)
            }
        },
        |i| rig.is_control_plane(i),
    )?;
    // Paused: the nodes pre-stage and nothing is granted.
    rig.create_update("roll", json!({"paused": true})).await?;
    let shown = wait_for(
        &format!("{worker}'s staging progress on its Node"),
        Duration::from_secs(45),
        || async {
            Ok(rig.views().await?[&worker]
                .progress
                .as_deref()
                .is_some_and(|p| p.starts_with("staging: Receiving objects")))
        },
    )
    .await;
    with_logs(shown, &rig, &sim)?;
    let ns = rig.env.ns.clone();
    let out = hkctl(&rig.env, &["status", "-n", &ns, "-o", "wide"]).await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "hkctl status: {out:?}");
    let row = text
        .lines()
        .find(|l| l.contains(&worker))
        .with_context(|| format!("no row for {worker}:\n{text}"))?;
    ensure!(
        row.contains("staging: Receiving objects")
            && row.contains(" %, ")
            && row.contains("MiB")
            && row.contains("of 180 objects"),
        "{worker}'s row says nothing of its staging:\n{text}"
    );
    // Staged: the progress goes from the Node with the staging.
    let gone = wait_for(
        &format!("{worker} to finish staging and drop its progress"),
        Duration::from_secs(60),
        || async {
            let v = &rig.views().await?[&worker];
            Ok(v.staged.is_some() && v.progress.is_none())
        },
    )
    .await;
    with_logs(gone, &rig, &sim)?;
    Ok(())
}

/// 30 real agents in three zones with every limit at once: at most 2 nodes in flight per
/// zone, one zone at a time, at most 3 nodes pulling ahead of their grants, and a blocking pod
/// that holds its node, and only it, until it is deleted. The
/// observer checks the zone limits on every change of the Nodes and the Update, and the
/// hosts pulling every 20 ms (a pull seen on a node without a grant in the ledger counts
/// toward `staging.maxConcurrent`; one second of grace covers the observer's watch lagging
/// behind the agent that just read its grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_agents_in_three_zones_keep_the_zone_and_staging_limits() -> Result<()> {
    const ZONE_KEY: &str = "topology.kubernetes.io/zone";
    let (max_unavailable, per_zone, staging) = (6, 2, 3);
    let rig = Rig::new("sim-zones", 3, 27).await?;
    let zone_of = |i: usize| ["a", "b", "c"][i % 3];
    for (i, n) in rig.nodes.iter().enumerate() {
        Api::<Node>::all(rig.env.admin.clone())
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {ZONE_KEY: zone_of(i)}}})),
            )
            .await
            .with_context(|| format!("labelling {n}"))?;
    }
    let zones: BTreeMap<String, String> = rig
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), zone_of(i).to_owned()))
        .collect();
    // A backup job on one worker: its node waits for it (the cluster is shared: the label
    // value is this test's namespace).
    let held = rig.nodes[7].clone();
    let app = format!("backup-{}", rig.env.ns);
    KubeletStandIn::new(rig.env.admin.clone())
        .run_pod(&rig.env.ns, "backup", &held, &[("app", &app)])
        .await?;
    let dir = tempfile::tempdir()?;
    let sim = rig.sim(
        dir.path(),
        |_| Duration::from_millis(1500),
        |i| rig.is_control_plane(i),
    )?;
    let u = rig
        .create_update(
            "roll",
            json!({"maxUnavailable": max_unavailable, "maxUnavailablePerZone": per_zone,
                   "maxUnavailableZones": 1, "staging": {"maxConcurrent": staging},
                   "blockingPodSelector": {"matchLabels": {"app": app}}}),
        )
        .await?;
    let seen = observe(
        rig.env.admin.clone(),
        rig.nodes.clone(),
        u,
        max_unavailable,
        dir.path().to_owned(),
    );
    // Zone limits on every change; the ledger's grants for the staging poller.
    #[derive(Default)]
    struct Limits {
        violations: Vec<String>,
        max_per_zone: usize,
        max_zones: usize,
        max_pulling: usize,
        granted: BTreeSet<String>,
    }
    let limits = Arc::new(Mutex::new(Limits::default()));
    let watcher = {
        let (limits, zones, ns) = (limits.clone(), zones.clone(), rig.env.ns.clone());
        let client = rig.env.admin.clone();
        tokio::spawn(async move {
            let mut stream = rollout_view::changes(client, &ns).boxed();
            let mut view = RolloutView::default();
            while let Some(change) = stream.next().await {
                view.apply(change);
                let mut per: BTreeMap<&str, usize> = BTreeMap::new();
                let mut granted = BTreeSet::new();
                for v in view.views(|n| zones.contains_key(n)) {
                    let Some(g) = &v.grant else { continue };
                    granted.insert(v.name.clone());
                    if !v.phase_for(g).is_some_and(AgentPhase::is_terminal) {
                        *per.entry(zones[&v.name].as_str()).or_default() += 1;
                    }
                }
                let mut l = limits.lock().unwrap();
                for (z, k) in &per {
                    l.max_per_zone = l.max_per_zone.max(*k);
                    if *k > per_zone {
                        l.violations
                            .push(format!("{k} in flight in zone {z}: {per:?}"));
                    }
                }
                l.max_zones = l.max_zones.max(per.len());
                if per.len() > 1 {
                    l.violations
                        .push(format!("two zones in flight at once: {per:?}"));
                }
                l.granted = granted;
            }
        })
    };
    let poller = {
        let (limits, root) = (limits.clone(), dir.path().to_owned());
        let nodes = rig.nodes.clone();
        tokio::spawn(async move {
            let mut over_since: Option<Instant> = None;
            loop {
                let pulling: Vec<&String> = nodes
                    .iter()
                    .filter(|n| root.join(n.as_str()).join("staging").exists())
                    .collect();
                {
                    let mut l = limits.lock().unwrap();
                    let ahead: Vec<&&String> = pulling
                        .iter()
                        .filter(|n| !l.granted.contains(**n))
                        .collect();
                    l.max_pulling = l.max_pulling.max(ahead.len().min(staging));
                    if ahead.len() > staging {
                        let since = *over_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(1) {
                            let line = format!(
                                "{} nodes pulling ahead of their grants: {ahead:?}",
                                ahead.len()
                            );
                            l.violations.push(line);
                        }
                    } else {
                        over_since = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The 29 others finish; the held node waits, named with its pod.
    let api = rig.updates();
    let others = wait_for(
        "the 29 unblocked nodes to be done",
        Duration::from_secs(600),
        || async {
            let s = api.get("roll").await?.status.unwrap_or_default();
            Ok(s.counts.done == 29 || s.state.as_deref() == Some("Halted"))
        },
    )
    .await;
    with_logs(others, &rig, &sim)?;
    let s = api.get("roll").await?.status.unwrap_or_default();
    let row = s.nodes.iter().find(|n| n.name == held).cloned();
    let pod = format!("{}/backup", rig.env.ns);
    ensure!(
        row.as_ref()
            .is_some_and(|r| r.phase == "Waiting" && r.reason == format!("blocking pod {pod}")),
        "{row:?}"
    );
    ensure!(
        !limits.lock().unwrap().granted.contains(&held),
        "{held} granted under its pod"
    );
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(rig.env.admin.clone(), &rig.env.ns)
        .delete(
            "backup",
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await?;
    let end = rig
        .wait_state("roll", &["Halted", "Complete"], Duration::from_secs(600))
        .await;
    watcher.abort();
    poller.abort();
    let u = with_logs(end, &rig, &sim)?;
    check_seen(&seen)?;
    ensure!(
        u.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Complete"),
        "{:?}",
        u.status
    );
    let l = limits.lock().unwrap();
    ensure!(l.violations.is_empty(), "{:#?}", l.violations);
    eprintln!(
        "30 nodes in 3 zones: at most {} in flight per zone, {} zone(s) at once, {} pulling ahead",
        l.max_per_zone, l.max_zones, l.max_pulling
    );
    // The limits were reached, not kept by going slowly.
    ensure!(
        l.max_per_zone == per_zone,
        "max per zone {}",
        l.max_per_zone
    );
    ensure!(
        l.max_pulling == staging,
        "max pulling ahead {}",
        l.max_pulling
    );
    Ok(())
}
