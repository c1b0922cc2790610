//! The FleetLock server (`housekeeper::cluster::fleetlock`) against a real API server.
//!
//! kube-apiserver v1.20.2 + etcd from `support`. Stand-ins: `support::kubelet` registers the
//! Nodes (their `status.nodeInfo.machineID` set here, as a kubelet reports
//! `/etc/machine-id`); Zincati is stood in for by requests written from the protocol document
//! (`docs/development/fleetlock/protocol.md` in Zincati's repository): the header, the JSON
//! body with the app-specific machine id Zincati derives, one POST per connection; an hkd
//! node's agent is simulated by writing its phase annotations. The coordinator and its
//! FleetLock server run in the test, with the admin client (the RBAC of `hkctl install
//! --fleetlock` is tested in tests/cluster_trust.rs). An observer watches the ledgers and the
//! Nodes and checks I1 over both kinds of grant on every change.
//!
//! The client: two standalone hkd agents (`node::agent` with `node::fleetlock`'s client as
//! their cluster side) on temporary OSTree sysroots (the real `ostree`, `ostree_host`), their
//! reboots stood in for by a new boot id as in tests/node_agent.rs, ask this server.

mod ostree_host;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use housekeeper::cluster::annotations::{
    AgentPhase, NodeView, CORDONED_BY_HKD, FLEETLOCK_GROUP, OS_IMAGE, PHASE, PHASE_GRANT, SINCE,
};
use housekeeper::cluster::coordinator::{self, Coordinator};
use housekeeper::cluster::fleetlock::{id, server};
use housekeeper::cluster::ledger;
use housekeeper::cluster::update::Update;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use support::rollout_view::{self, RolloutView};
use support::{wait_for, KubeletStandIn, NodeRole, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const IMAGE: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";
const WAIT: Duration = Duration::from_secs(60);
const GROUP: &str = "workers";

/// A coordinator and its FleetLock server, as tasks of the test.
struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    leading: watch::Receiver<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn start(env: &TestEnv, identity: &str, lock_timeout: Duration) -> Result<Running> {
    start_on(env, identity, lock_timeout, "127.0.0.1:0".parse()?).await
}

async fn start_on(
    env: &TestEnv,
    identity: &str,
    lock_timeout: Duration,
    listen: SocketAddr,
) -> Result<Running> {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let c = Coordinator::new(
        env.admin.clone(),
        coordinator::Config {
            namespace: env.ns.clone(),
            lease_duration: Duration::from_secs(2),
            renew_every: Duration::from_millis(400),
            retry_after: Duration::from_millis(300),
            ..coordinator::Config::new(identity)
        },
    );
    let leading = c.leading();
    let term = c.term();
    let (stop, stop_rx) = watch::channel(false);
    let s = Arc::new(server::Server::new(
        env.admin.clone(),
        server::Config {
            lock_timeout,
            answer_within: Duration::from_secs(5),
            sweep_every: Duration::from_millis(300),
            ..server::Config::new(identity, &env.ns)
        },
        term,
    ));
    let listener = server::bind(listen).await?;
    let addr = listener.local_addr()?;
    let rx = stop_rx.clone();
    let tasks = vec![
        tokio::spawn(async move {
            if let Err(e) = c.run(rx).await {
                eprintln!("coordinator: {e:#}");
            }
        }),
        tokio::spawn(s.run(listener, stop_rx)),
    ];
    Ok(Running {
        addr,
        stop,
        tasks,
        leading,
    })
}

/// The test's Nodes: hkd workers and Zincati workers (pool `workers`, a machine-id each).
struct Rig {
    env: TestEnv,
    kubelet: KubeletStandIn,
    hkd: Vec<String>,
    /// (node name, machine-id)
    zincati: Vec<(String, String)>,
}

impl Rig {
    async fn new(test: &str, hkd: usize, zincati: usize) -> Result<Rig> {
        let env = TestEnv::new(test).await?;
        support::crd::install_update_crd(&env.admin).await?;
        let kubelet = KubeletStandIn::new(env.admin.clone());
        let mut rig = Rig {
            env,
            kubelet,
            hkd: Vec::new(),
            zincati: Vec::new(),
        };
        let nodes: Api<Node> = Api::all(rig.env.admin.clone());
        for i in 1..=hkd {
            let n = rig
                .kubelet
                .register_node(&rig.env, &format!("h-{i}"), NodeRole::Worker)
                .await?;
            rig.hkd.push(n.metadata.name.context("node name")?);
        }
        for i in 1..=zincati {
            let n = rig
                .kubelet
                .register_node(&rig.env, &format!("z-{i}"), NodeRole::Worker)
                .await?;
            let name = n.metadata.name.context("node name")?;
            // A machine-id of its own per test and node, as systemd writes it.
            let machine = format!("{:032x}", rand_u128(&name));
            nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {FLEETLOCK_GROUP: GROUP}}})),
                )
                .await?;
            nodes
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"nodeInfo": {"machineID": machine}}})),
                )
                .await?;
            rig.zincati.push((name, machine));
        }
        Ok(rig)
    }

    fn all(&self) -> Vec<String> {
        self.hkd
            .iter()
            .cloned()
            .chain(self.zincati.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    /// The FleetLock id Zincati on the i-th Zincati node sends.
    fn id(&self, i: usize) -> String {
        id::zincati_id(&self.zincati[i].1).expect("a machine-id")
    }

    fn updates(&self) -> Api<Update> {
        Api::namespaced(self.env.admin.clone(), &self.env.ns)
    }

    async fn create_update(&self, name: &str, max_unavailable: i32) -> Result<Update> {
        let u: Update = serde_json::from_value(json!({
            "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
            "metadata": {"name": name},
            "spec": {
                "osImageURL": IMAGE,
                "maxUnavailable": max_unavailable,
                "nodeSelector": {"matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "In", "values": self.all(),
                }]},
            },
        }))?;
        self.updates()
            .create(&PostParams::default(), &u)
            .await
            .context("creating the Update")
    }

    /// Each node's grant in the ledgers, and whether it is a FleetLock lock.
    async fn ledger(&self) -> Result<BTreeMap<String, bool>> {
        let updates = self.updates().list(&ListParams::default()).await?.items;
        let mut out = BTreeMap::new();
        for u in &updates {
            for (node, r) in u.status.iter().flat_map(|s| &s.grants) {
                out.insert(node.clone(), r.is_fleetlock());
            }
        }
        Ok(out)
    }

    async fn node(&self, name: &str) -> Result<Node> {
        Ok(Api::<Node>::all(self.env.admin.clone()).get(name).await?)
    }

    async fn events(&self, reason: &str) -> Result<Vec<String>> {
        let api: Api<Event> = Api::namespaced(self.env.admin.clone(), &self.env.ns);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.message)
            .collect())
    }
}

fn rand_u128(seed: &str) -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut out = 0u128;
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(seed.as_bytes());
        out = (out << 64) | u128::from(h.finish());
    }
    out
}

/// One FleetLock request, written as the protocol document shows it (and as Zincati's
/// client sends it: the pretty-printed body, `fleet-lock-protocol: true`): the status and the
/// JSON body of the answer.
async fn post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> Result<(u16, Value)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\naccept: */*\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut answer))
        .await
        .context("the FleetLock answer")??;
    let status: u16 = answer.split(' ').nth(1).context("a status line")?.parse()?;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn body(id: &str, group: &str) -> String {
    serde_json::to_string_pretty(&json!({"client_params": {"id": id, "group": group}})).unwrap()
}

const HEADER: &str = "fleet-lock-protocol: true\r\n";

async fn pre_reboot(addr: SocketAddr, id: &str) -> Result<(u16, Value)> {
    post(addr, "/v1/pre-reboot", HEADER, &body(id, GROUP)).await
}

async fn steady_state(addr: SocketAddr, id: &str) -> Result<(u16, Value)> {
    post(addr, "/v1/steady-state", HEADER, &body(id, GROUP)).await
}

/// Ask until the answer is not "ask again" (503) or `kind` shows; the last answer.
async fn until_not_503(addr: SocketAddr, op: &str, id: &str) -> Result<(u16, Value)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = post(addr, op, HEADER, &body(id, GROUP)).await?;
        if r.0 != 503 || tokio::time::Instant::now() > deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the observer saw: the most nodes in flight at once, of each kind, and broken rules.
#[derive(Default, Debug)]
struct Seen {
    max_in_flight: usize,
    kinds: BTreeSet<&'static str>,
    violations: Vec<String>,
}

/// Watch the ledgers and the Nodes; on every change count the test's nodes in flight (a grant
/// without a Done/Failed answer: an hkd node working, or a FleetLock node holding its lock).
fn observe(rig: &Rig, max_unavailable: usize) -> (Arc<Mutex<Seen>>, JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let ours: BTreeSet<String> = rig.all().into_iter().collect();
    let s = seen.clone();
    let client = rig.env.admin.clone();
    let ns = rig.env.ns.clone();
    let task = tokio::spawn(async move {
        let mut view = RolloutView::default();
        let mut stream = rollout_view::changes(client, &ns).boxed();
        while let Some(change) = stream.next().await {
            view.apply(change);
            let in_flight: Vec<NodeView> = view
                .views(|n| ours.contains(n))
                .into_iter()
                .filter(|n| {
                    n.grant
                        .as_ref()
                        .is_some_and(|g| !n.phase_for(g).is_some_and(AgentPhase::is_terminal))
                })
                .collect();
            let mut seen = s.lock().unwrap();
            seen.max_in_flight = seen.max_in_flight.max(in_flight.len());
            for n in &in_flight {
                seen.kinds.insert(if n.fleetlock_group.is_some() {
                    "fleetlock"
                } else {
                    "hkd"
                });
            }
            if in_flight.len() > max_unavailable {
                let names: Vec<&str> = in_flight.iter().map(|n| n.name.as_str()).collect();
                seen.violations
                    .push(format!("I1: {} in flight: {names:?}", in_flight.len()));
            }
        }
    });
    (seen, task)
}

/// A simulated hkd agent on `node`: each grant it holds answered Staging … Done.
fn hkd_agent(client: Client, ns: String, node: String) -> JoinHandle<()> {
    tokio::spawn(async move {
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
            for phase in [
                AgentPhase::Draining,
                AgentPhase::Rebooting,
                AgentPhase::Done,
            ] {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut ann = json!({
                    PHASE: phase.as_str(), PHASE_GRANT: g.to_string(),
                    SINCE: jiff::Timestamp::now().to_string(),
                });
                if phase == AgentPhase::Done {
                    ann[OS_IMAGE] = json!(IMAGE);
                }
                let _ = api
                    .patch(
                        &node,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"metadata": {"annotations": ann}})),
                    )
                    .await;
            }
        }
    })
}

fn cordoned(n: &Node) -> (bool, bool) {
    let unschedulable = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let ours = n
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CORDONED_BY_HKD));
    (unschedulable, ours)
}

/// Locks and unlocks by Zincati's ids, under one budget with an hkd node: the hkd node's grant
/// holds the one slot, a lock waits for it; a held lock is recursive; the second Zincati node
/// waits for the first's steady-state, which waits for its Node to be Ready; the cordon comes
/// and goes with the lock. The observer never sees two nodes in flight, and sees both kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zincati_locks_share_max_unavailable_with_hkd_nodes() -> Result<()> {
    let rig = Rig::new("fleetlock-budget", 1, 2).await?;
    let (seen, watcher) = observe(&rig, 1);
    let c = start(&rig.env, "coordinator-a", Duration::from_secs(600)).await?;
    rig.create_update("os", 1).await?;
    // The coordinator grants the hkd node (the Zincati nodes are not its to grant).
    wait_for("the hkd node's grant", WAIT, || async {
        Ok(rig.ledger().await?.get(&rig.hkd[0]) == Some(&false))
    })
    .await?;
    let (status, err) = pre_reboot(c.addr, &rig.id(0)).await?;
    ensure!(status == 409, "{status} {err}");
    ensure!(err["kind"] == "failed_lock_semaphore_full", "{err}");
    ensure!(
        err["value"]
            .as_str()
            .unwrap_or("")
            .contains("maxUnavailable 1"),
        "{err}"
    );
    // The hkd node finishes; then Zincati on z-1 gets the slot, once its Node is drained.
    let agent = hkd_agent(
        rig.env.admin.clone(),
        rig.env.ns.clone(),
        rig.hkd[0].clone(),
    );
    let (status, err) = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = pre_reboot(c.addr, &rig.id(0)).await?;
            if r.0 == 200 || tokio::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    ensure!(status == 200, "{status} {err}");
    let z1 = rig.zincati[0].0.clone();
    ensure!(
        rig.ledger().await?.get(&z1) == Some(&true),
        "z-1's lock in the ledger"
    );
    ensure!(
        cordoned(&rig.node(&z1).await?) == (true, true),
        "z-1 cordoned as hkd's"
    );
    // Recursive: asking again while holding it is a success.
    let (status, err) = pre_reboot(c.addr, &rig.id(0)).await?;
    ensure!(status == 200, "{status} {err}");
    // The other Zincati node waits.
    let (status, err) = pre_reboot(c.addr, &rig.id(1)).await?;
    ensure!(
        status == 409 && err["kind"] == "failed_lock_semaphore_full",
        "{status} {err}"
    );
    // z-1 reboots: NotReady, then steady-state is refused until it is Ready again.
    rig.kubelet.set_node_ready(&z1, false).await?;
    let (status, err) = steady_state(c.addr, &rig.id(0)).await?;
    ensure!(
        status == 503 && err["kind"] == "failed_unlock_not_ready",
        "{status} {err}"
    );
    rig.kubelet.set_node_ready(&z1, true).await?;
    let (status, err) = until_not_503(c.addr, "/v1/steady-state", &rig.id(0)).await?;
    ensure!(status == 200, "{status} {err}");
    ensure!(
        !rig.ledger().await?.contains_key(&z1),
        "z-1's lock released"
    );
    ensure!(
        cordoned(&rig.node(&z1).await?) == (false, false),
        "z-1 uncordoned"
    );
    // UnlockIfHeld: releasing again is a success too.
    let (status, err) = steady_state(c.addr, &rig.id(0)).await?;
    ensure!(status == 200, "{status} {err}");
    // Now z-2 takes the slot.
    let (status, err) = until_not_503(c.addr, "/v1/pre-reboot", &rig.id(1)).await?;
    ensure!(status == 200, "{status} {err}");
    let (status, err) = until_not_503(c.addr, "/v1/steady-state", &rig.id(1)).await?;
    ensure!(status == 200, "{status} {err}");
    ensure!(!rig.events("Granted").await?.is_empty());
    ensure!(rig.events("Released").await?.len() >= 2);
    tokio::time::sleep(rollout_view::REORDER * 2).await;
    let seen = seen.lock().unwrap();
    ensure!(seen.violations.is_empty(), "{:?}", seen.violations);
    ensure!(seen.max_in_flight == 1, "{seen:?}");
    ensure!(
        seen.kinds.len() == 2,
        "both kinds of grant seen in flight: {seen:?}"
    );
    drop(seen);
    agent.abort();
    watcher.abort();
    ensure!(*c.leading.borrow());
    Ok(())
}

/// The protocol's errors, each with its kind and status, and a server that does not lead
/// writes nothing and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_protocols_errors() -> Result<()> {
    let rig = Rig::new("fleetlock-errors", 0, 1).await?;
    let c = start(&rig.env, "coordinator-a", Duration::from_secs(600)).await?;
    wait_for("leading", WAIT, || async { Ok(*c.leading.borrow()) }).await?;
    let id = rig.id(0);
    let cases: Vec<(&str, &str, &str, String, u16, &str)> = vec![
        (
            "no header",
            "/v1/pre-reboot",
            "",
            body(&id, GROUP),
            400,
            "failed_protocol_header",
        ),
        (
            "wrong header",
            "/v1/pre-reboot",
            "fleet-lock-protocol: false\r\n",
            body(&id, GROUP),
            400,
            "failed_protocol_header",
        ),
        (
            "bad JSON",
            "/v1/pre-reboot",
            HEADER,
            "{\"client_params\": {".into(),
            400,
            "failed_body",
        ),
        (
            "empty id",
            "/v1/pre-reboot",
            HEADER,
            body("", GROUP),
            400,
            "failed_body",
        ),
        (
            "unknown group",
            "/v1/pre-reboot",
            HEADER,
            body(&id, "infra"),
            404,
            "failed_unknown_group",
        ),
        (
            "unknown id",
            "/v1/pre-reboot",
            HEADER,
            body("e0f3745b108f471cbd4883c6fbed8cdd", GROUP),
            404,
            "failed_unknown_id",
        ),
        (
            "not an id",
            "/v1/steady-state",
            HEADER,
            body("node-1", GROUP),
            404,
            "failed_unknown_id",
        ),
        (
            "other endpoint",
            "/v1/lock",
            HEADER,
            body(&id, GROUP),
            404,
            "failed_endpoint",
        ),
        (
            "no Update selects it",
            "/v1/pre-reboot",
            HEADER,
            body(&id, GROUP),
            409,
            "failed_no_rollout",
        ),
    ];
    for (what, path, headers, b, want_status, want_kind) in cases {
        let (status, err) = post(c.addr, path, headers, &b).await?;
        ensure!(
            status == want_status && err["kind"] == want_kind,
            "{what}: {status} {err}, wanted {want_status} {want_kind}"
        );
        ensure!(
            !err["value"].as_str().unwrap_or("").is_empty(),
            "{what}: {err}"
        );
    }
    // A body past the bound is refused without being read.
    let big = format!(
        "{{\"client_params\":{{\"id\":\"{}\",\"group\":\"workers\"}}}}",
        "a".repeat(5000)
    );
    let (status, err) = post(c.addr, "/v1/pre-reboot", HEADER, &big).await?;
    ensure!(
        status == 400 && err["kind"] == "failed_bad_request",
        "{status} {err}"
    );
    // A client that sends half a request and stalls is dropped, and the server goes on.
    let mut stalled = tokio::net::TcpStream::connect(c.addr).await?;
    stalled
        .write_all(b"POST /v1/pre-reboot HTTP/1.1\r\n")
        .await?;
    // A second coordinator that does not lead answers "not the leader" and writes nothing.
    rig.create_update("os", 1).await?;
    let follower = start(&rig.env, "coordinator-b", Duration::from_secs(600)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(!*follower.leading.borrow());
    let (status, err) = pre_reboot(follower.addr, &id).await?;
    ensure!(
        status == 503 && err["kind"] == "failed_not_leader",
        "{status} {err}"
    );
    ensure!(
        rig.ledger().await?.is_empty(),
        "nothing written by the follower"
    );
    let (status, err) = until_not_503(c.addr, "/v1/pre-reboot", &id).await?;
    ensure!(status == 200, "the leader still answers: {status} {err}");
    // The Update goes away with the lock in its ledger: steady-state still lifts the cordon.
    let z1 = rig.zincati[0].0.clone();
    ensure!(cordoned(&rig.node(&z1).await?) == (true, true));
    rig.updates().delete("os", &DeleteParams::default()).await?;
    let (status, err) = until_not_503(c.addr, "/v1/steady-state", &id).await?;
    ensure!(status == 200, "{status} {err}");
    ensure!(
        cordoned(&rig.node(&z1).await?) == (false, false),
        "uncordoned although the lock went away with its Update"
    );
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(15), stalled.read_to_end(&mut rest)).await;
    ensure!(
        matches!(r, Ok(Ok(0))),
        "the stalled client was dropped without an answer: {r:?}"
    );
    Ok(())
}

/// A lock whose Node was deleted, and one held past the timeout without steady-state, are
/// reclaimed and said so; the node that never came back stays cordoned, no longer as hkd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_of_deleted_and_silent_nodes_are_reclaimed() -> Result<()> {
    let rig = Rig::new("fleetlock-reclaim", 0, 2).await?;
    let c = start(&rig.env, "coordinator-a", Duration::from_secs(8)).await?;
    rig.create_update("os", 2).await?;
    for i in 0..2 {
        let (status, err) = until_not_503(c.addr, "/v1/pre-reboot", &rig.id(i)).await?;
        ensure!(status == 200, "{status} {err}");
    }
    let (z1, z2) = (rig.zincati[0].0.clone(), rig.zincati[1].0.clone());
    ensure!(rig.ledger().await?.len() == 2);
    Api::<Node>::all(rig.env.admin.clone())
        .delete(&z1, &DeleteParams::default())
        .await?;
    wait_for("the deleted node's lock reclaimed", WAIT, || async {
        Ok(!rig.ledger().await?.contains_key(&z1))
    })
    .await?;
    let said = rig.events("LockReclaimed").await?;
    ensure!(
        said.iter()
            .any(|m| m.contains(&z1) && m.contains("deleted")),
        "{said:?}"
    );
    // z-2 never says steady-state: reclaimed after the timeout, its cordon handed over.
    ensure!(
        rig.ledger().await?.contains_key(&z2),
        "z-2 still holds its lock"
    );
    wait_for("the silent node's lock reclaimed", WAIT, || async {
        Ok(!rig.ledger().await?.contains_key(&z2))
    })
    .await?;
    let said = rig.events("LockReclaimed").await?;
    ensure!(
        said.iter()
            .any(|m| m.contains(&z2) && m.contains("without steady-state")),
        "{said:?}"
    );
    ensure!(
        cordoned(&rig.node(&z2).await?) == (true, false),
        "z-2 stays cordoned, the cordon no longer hkd's"
    );
    // The Update's status (what hkctl status shows) says it on z-2's row.
    wait_for("z-2's row to say its lock was reclaimed", WAIT, || async {
        let u = rig.updates().get("os").await?;
        Ok(u.status.iter().flat_map(|s| &s.nodes).any(|r| {
            r.name == z2
                && r.reason.contains("reclaimed")
                && r.reason.contains("without steady-state")
        }))
    })
    .await?;
    Ok(())
}

/// `hkd coordinate` with `fleetlock.listen` set serves FleetLock on that address while it
/// leads (the wiring a control-plane node's hkd uses too); an address that is none is a
/// configuration error (exit 3) naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hkd_coordinate_serves_fleetlock_where_configured() -> Result<()> {
    let rig = Rig::new("fleetlock-hkd", 0, 1).await?;
    rig.create_update("os", 1).await?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("etc/hkd/config.d");
    std::fs::create_dir_all(&conf)?;
    std::fs::copy(
        rig.env.cluster.admin_kubeconfig(),
        dir.path().join("etc/hkd/coordinator.kubeconfig"),
    )?;
    let hkd = |listen: &str| -> Result<std::process::Child> {
        std::fs::write(
            conf.join("50-test.toml"),
            format!(
                "[kubernetes]\nnamespace = \"{}\"\nlease_duration = \"2s\"\n\n\
                 [fleetlock]\nlisten = \"{listen}\"\n",
                rig.env.ns
            ),
        )?;
        std::process::Command::new(env!("CARGO_BIN_EXE_hkd"))
            .args(["--root", &dir.path().display().to_string()])
            .args(["coordinate", "--identity", "cp-hkd"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting hkd coordinate")
    };
    let bad = hkd("everywhere")?.wait_with_output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        bad.status.code() == Some(3)
            && err.contains("fleetlock.listen")
            && err.contains("ADDRESS:PORT"),
        "({:?}) {err}",
        bad.status.code()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut child = hkd(&addr.to_string())?;
    let result = async {
        wait_for("hkd's FleetLock server", WAIT, || async {
            Ok(tokio::net::TcpStream::connect(addr).await.is_ok())
        })
        .await?;
        let (status, err) = until_not_503(addr, "/v1/pre-reboot", &rig.id(0)).await?;
        ensure!(status == 200, "{status} {err}");
        ensure!(rig.ledger().await?.get(&rig.zincati[0].0) == Some(&true));
        let (status, err) = until_not_503(addr, "/v1/steady-state", &rig.id(0)).await?;
        ensure!(status == 200, "{status} {err}");
        ensure!(rig.ledger().await?.is_empty());
        Ok(())
    }
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    result
}

/// The reboot of a simulated host: a new boot id, after a pause so that two reboots at once
/// would overlap; counts the hosts down (from the reboot until their lock is given back).
#[derive(Clone)]
struct Host {
    boots: Arc<Mutex<u32>>,
    fleet: Arc<Fleet>,
}

#[derive(Default)]
struct Fleet {
    down: Mutex<usize>,
    max_down: Mutex<usize>,
}

impl housekeeper::node::agent::Rebooter for Host {
    fn reboot(&self, _why: &str) -> Result<(), housekeeper::node::agent::RebootError> {
        {
            let mut down = self.fleet.down.lock().unwrap();
            *down += 1;
            let mut max = self.fleet.max_down.lock().unwrap();
            *max = (*max).max(*down);
        }
        std::thread::sleep(Duration::from_millis(400));
        *self.boots.lock().unwrap() += 1;
        Ok(())
    }
}

impl housekeeper::node::agent::Observer for Host {
    fn boot_id(&self) -> anyhow::Result<String> {
        Ok(format!("boot-{}", self.boots.lock().unwrap()))
    }
}

/// The real FleetLock client, with the host counted up when the upgrade ends (before the
/// client gives its lock back).
struct Side {
    client: housekeeper::node::fleetlock::FleetLockClient,
    host: Host,
}

impl housekeeper::node::agent::ClusterSide for Side {
    fn drain(&self) -> Result<(), housekeeper::node::agent::DrainError> {
        self.client.drain()
    }
    fn report(
        &self,
        outcome: &housekeeper::node::machine::UpgradeOutcome,
        machine: &housekeeper::node::machine::Machine,
    ) {
        *self.host.fleet.down.lock().unwrap() -= 1;
        self.client.report(outcome, machine)
    }
    fn after_step(
        &self,
        machine: &housekeeper::node::machine::Machine,
    ) -> Vec<housekeeper::node::machine::Event> {
        self.client.after_step(machine)
    }
    fn fleet_lock(&self) -> Option<housekeeper::node::status::FleetLockStatus> {
        self.client.fleet_lock()
    }
}

/// Two standalone hkd on temporary sysroots upgrade against one FleetLock server with one
/// slot. The server is down at first: both stage and then wait, not rebooted, their status
/// saying why; once it is up they reboot one after the other — never both down at once — and
/// both end Done on v2 with their locks given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_standalone_hkd_with_one_slot_never_reboot_together() -> Result<()> {
    use housekeeper::node::agent::{Agent, Parts};
    use housekeeper::node::fleetlock::{Backoff, FleetLockClient};
    use housekeeper::node::machine::{Event as MEvent, Limits, Phase};

    let rig = Rig::new("fleetlock-client", 0, 2).await?;
    rig.create_update("os", 1).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let fleet = Arc::new(Fleet::default());
    let mut agents = Vec::new();
    for i in 0..2 {
        let os = ostree_host::Host::new().allowing_unverified();
        let branch = "testos/x86_64/v2";
        os.commit_upstream_to(branch, "2");
        let host = Host {
            boots: Arc::default(),
            fleet: fleet.clone(),
        };
        let client = FleetLockClient::new(
            &format!("http://{addr}/"),
            GROUP,
            &rig.id(i),
            Backoff {
                first: Duration::from_millis(200),
                max: Duration::from_millis(500),
            },
        )?;
        let parts = Parts {
            backend: Box::new(os.backend.clone()),
            backend_name: "ostree".into(),
            rebooter: Box::new(host.clone()),
            cluster: Box::new(Side {
                client: client.clone(),
                host: host.clone(),
            }),
            observer: Box::new(host.clone()),
            gate: housekeeper::node::health::Gate {
                root: os.dir.path().join("root"),
                settings: housekeeper::config::hkd::Health {
                    timeout: Duration::from_secs(5),
                    interval: Duration::from_millis(20),
                    check_timeout: Duration::from_secs(5),
                    units: vec![],
                },
                extra: vec![],
            },
            journal: housekeeper::node::journal::Journal::open(&os.dir.path().join("var/lib/hkd"))?,
            policy: housekeeper::image_ref::ImagePolicy::ALLOW_UNVERIFIED,
            limits: Limits { health_timeout: 5 },
            reboot_retry: Duration::ZERO,
            metrics: Arc::new(housekeeper::node::metrics::Metrics::new()),
        };
        let (mut agent, first) = Agent::start(parts)?;
        let shared = agent.shared();
        client.attach(shared.clone());
        let target = housekeeper::image_ref::ImageRef::parse_any(&format!("upstream:{branch}"))?;
        let thread = std::thread::spawn(move || {
            agent.handle(first).unwrap();
            agent.handle(MEvent::TargetRequested { target }).unwrap();
            agent.machine().state.phase()
        });
        agents.push((os, host, shared, thread));
    }
    // The server is down: both stage, then wait for their lock without rebooting.
    wait_for("both staged and waiting for the lock", WAIT, || async {
        Ok(agents.iter().all(|(_, _, shared, _)| {
            let s = shared.lock().unwrap();
            matches!(s.upgrade.phase, Phase::Granted | Phase::Draining)
                && s.fleet_lock
                    .as_ref()
                    .and_then(|l| l.waiting.as_deref())
                    .is_some_and(|w| w.contains("/v1/pre-reboot") && w.contains("onnection"))
        }))
    })
    .await?;
    for (os, host, shared, _) in &agents {
        ensure!(*host.boots.lock().unwrap() == 0, "rebooted without a lock");
        ensure!(
            os.versions() == ["1", "2(staged)"],
            "v2 staged, v1 booted, while the server was down: {:?}",
            os.versions()
        );
        ensure!(!shared.lock().unwrap().fleet_lock.clone().unwrap().held);
    }
    // The server comes up on that address.
    let _c = start_on(&rig.env, "coordinator-a", Duration::from_secs(600), addr).await?;
    let mut phases = Vec::new();
    for (os, host, shared, thread) in agents {
        let phase = tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("an agent panicked"))?;
        phases.push(phase);
        ensure!(*host.boots.lock().unwrap() == 1);
        ensure!(os.versions()[0] == "2");
        drop(shared);
    }
    ensure!(phases == [Phase::Done, Phase::Done], "{phases:?}");
    ensure!(
        *fleet.max_down.lock().unwrap() == 1,
        "two hosts were down at once"
    );
    wait_for("both locks given back", WAIT, || async {
        Ok(rig.ledger().await?.is_empty())
    })
    .await?;
    Ok(())
}

/// A client that restarts at rest gives back a lock it may still hold (Zincati's
/// "initialization" state does the same): the lock taken before a crash is released without
/// an upgrade, and a second release is a success too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_restarted_at_rest_gives_back_its_lock() -> Result<()> {
    use housekeeper::node::agent::ClusterSide;
    use housekeeper::node::fleetlock::{Backoff, FleetLockClient};
    let rig = Rig::new("fleetlock-restart", 0, 1).await?;
    rig.create_update("os", 1).await?;
    let c = start(&rig.env, "coordinator-a", Duration::from_secs(600)).await?;
    let url = format!("http://{}/", c.addr);
    let backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_millis(500),
    };
    let before = FleetLockClient::new(&url, GROUP, &rig.id(0), backoff)?;
    let took = before.clone();
    tokio::task::spawn_blocking(move || took.drain())
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(before
        .fleet_lock()
        .is_some_and(|l| l.held && l.waiting.is_none()));
    ensure!(rig.ledger().await?.get(&rig.zincati[0].0) == Some(&true));
    // The process is gone; a new one starts with its machine at rest.
    drop(before);
    let after = FleetLockClient::new(&url, GROUP, &rig.id(0), backoff)?;
    after.release_if_at_rest(&housekeeper::node::machine::Machine::new("boot-2"));
    wait_for("the lock given back after the restart", WAIT, || async {
        Ok(rig.ledger().await?.is_empty())
    })
    .await?;
    ensure!(cordoned(&rig.node(&rig.zincati[0].0).await?) == (false, false));
    Ok(())
}
