//! Who may do what, against the real API server (kube-apiserver v1.20.2 from `support`, with
//! `--authorization-mode=Node,RBAC` and the NodeRestriction admission plugin): after a real
//! `hkctl install`, with the credential files it wrote.
//!
//! - One node's credential, tried as an attacker would: every write beyond its own Node and
//!   its own pods is refused by the server (403, the server's reason asserted): another
//!   Node's annotations (a grant), labels and taints; its own taints; evicting and deleting a
//!   pod on another node; an Update's status and spec; the coordinator's Lease; acting as
//!   another node, or as more than a node.
//! - What hkd does as that node works: read its Node and watch it, annotate it, cordon it,
//!   drain it (hkd's own `Drainer`: list, evict its own pod), delete its own pod, Events, read
//!   Updates.
//! - The coordinator's credential: reads Nodes, lists pods (blocking pods), writes Update
//!   status; never writes pods or Nodes, never reads one pod by name; after `hkctl install
//!   --fleetlock` it cordons and drains a node too (the FleetLock server's drain), and still
//!   may not change an Update's spec.
//! - `hkctl revoke NODE`: that node's next request is 401; another node's still works.
//!
//! Stand-ins: the kubelet (`support::kubelet`) registers the Nodes and runs the pods.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt as _;
use housekeeper::cluster::kube_drain::{Drainer, Tuning};
use housekeeper::cluster::update::{DrainPolicy, Update, NAMESPACE};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use support::cluster::{client_from_kubeconfig_file, Cluster};
use support::{KubeletStandIn, NodeRole, TestEnv};

/// The image of the Update the nodes read; never rolled out (the Update is paused and selects
/// no Node).
const IMAGE: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";

/// How many times install is tried: installs of tests running at the same time can race on
/// the same cluster-wide object (a 409), and running install again converges.
const INSTALL_ATTEMPTS: usize = 3;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn admin_kubeconfig(cluster: &Cluster) -> PathBuf {
    match cluster {
        Cluster::Local(l) => l.admin_kubeconfig.clone(),
        Cluster::External { kubeconfig } => kubeconfig.clone(),
    }
}

async fn hkctl(kubeconfig: &Path, args: &[&str]) -> Result<Run> {
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

async fn install(admin: &Path, dir: &Path, nodes: &[&str]) -> Result<String> {
    let mut args = vec![
        "install",
        "--credentials-dir",
        dir.to_str().context("path")?,
    ];
    for n in nodes {
        args.extend(["--node", n]);
    }
    let mut last = String::new();
    for _ in 0..INSTALL_ATTEMPTS {
        let run = hkctl(admin, &args).await?;
        if run.code == 0 {
            return Ok(run.stdout);
        }
        last = format!("({}) {}{}", run.code, run.stdout, run.stderr);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("hkctl install failed {INSTALL_ATTEMPTS} times: {last}")
}

/// The server's refusal: `code`, and a message containing `why`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    got: Result<T, kube::Error>,
    code: u16,
    why: &str,
) -> Result<String> {
    match got {
        Err(kube::Error::Api(s)) if s.code == code && s.message.contains(why) => {
            eprintln!("refused as it must be: {what}: {} {}", s.code, s.message);
            Ok(s.message)
        }
        Err(kube::Error::Api(s)) => {
            bail!(
                "{what}: expected {code} with {why:?}, the server said {} {}",
                s.code,
                s.message
            )
        }
        other => bail!("{what}: expected {code} with {why:?}, got {other:?}"),
    }
}

fn allowed<T>(what: &str, got: Result<T, kube::Error>) -> Result<T> {
    let v = got.with_context(|| format!("{what}: refused, but a node may"))?;
    eprintln!("allowed as it must be: {what}");
    Ok(v)
}

/// A client with the token of `kubeconfig` acting as `user` in `groups`.
async fn acting_as(kubeconfig: &Path, user: &str, groups: &[&str]) -> Result<Client> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let mut kc = kube::config::Kubeconfig::from_yaml(&text)?;
    let auth = kc.auth_infos[0].auth_info.as_mut().context("a user")?;
    auth.impersonate = Some(user.to_owned());
    auth.impersonate_groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

async fn evict(client: &Client, ns: &str, pod: &str) -> Result<Value, kube::Error> {
    let version = support::eviction::eviction_api_version(client)
        .await
        .map_err(|e| kube::Error::Service(e.into()))?;
    support::eviction::evict(client, &version, ns, pod, Some(0)).await
}

fn merge(v: Value) -> Patch<Value> {
    Patch::Merge(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_credential_is_its_kubelet_power_and_no_more() -> Result<()> {
    let env = TestEnv::new("trust").await?;
    let admin_kc = admin_kubeconfig(env.cluster);
    let k = KubeletStandIn::new(env.admin.clone());
    let _finisher = k.spawn_finisher(&env.ns);
    let mut names = Vec::new();
    for short in ["a", "b", "c"] {
        let n = k.register_node(&env, short, NodeRole::Worker).await?;
        names.push(n.metadata.name.context("a Node name")?);
    }
    let (a, b, c) = (names[0].as_str(), names[1].as_str(), names[2].as_str());
    k.run_pod(&env.ns, "pod-a", a, &[("app", "a")]).await?;
    k.run_pod(&env.ns, "pod-a2", a, &[("app", "a2")]).await?;
    k.run_pod(&env.ns, "pod-b", b, &[("app", "b")]).await?;

    // What node b looks like before the attacks (the TaintNodesByCondition admission plugin
    // gave it a not-ready taint at creation).
    let b_before = Api::<Node>::all(env.admin.clone()).get(b).await?;
    let taints_before = b_before.spec.and_then(|s| s.taints);

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("hkd-credentials");
    let out = install(&admin_kc, &dir, &[a, b, c]).await?;
    for want in [
        "ServiceAccount housekeeper-system/hkd-coordinator".to_owned(),
        format!("ServiceAccount housekeeper-system/hkd-node-{a}"),
        format!("ClusterRole hkd-node-{b}"),
        format!("ClusterRoleBinding hkd-node-{c}"),
        format!("kubeconfig {}/nodes/{a}.kubeconfig", dir.display()),
        format!("kubeconfig {}/coordinator.kubeconfig", dir.display()),
    ] {
        ensure!(out.contains(&want), "{want} missing:\n{out}");
    }
    let dir_mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
    ensure!(
        dir_mode == 0o700,
        "the credentials directory has mode {dir_mode:o}"
    );
    let node_kc = |n: &str| dir.join(format!("nodes/{n}.kubeconfig"));
    for f in [
        node_kc(a),
        node_kc(b),
        node_kc(c),
        dir.join("coordinator.kubeconfig"),
    ] {
        let mode = std::fs::metadata(&f)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", f.display());
    }

    // An Update the nodes may read; paused and selecting no Node, so no coordinator acts on it.
    let update_name = format!("trust-{}", env.ns);
    let updates: Api<Update> = Api::namespaced(env.admin.clone(), NAMESPACE);
    let u: Update = serde_json::from_value(json!({
        "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
        "metadata": {"name": update_name, "namespace": NAMESPACE},
        "spec": {"osImageURL": IMAGE, "paused": true,
                 "nodeSelector": {"matchLabels": {"housekeeper.io/test": "trust-none"}}},
    }))?;
    updates.create(&PostParams::default(), &u).await?;

    let node_a = client_from_kubeconfig_file(&node_kc(a)).await?;
    let nodes_a: Api<Node> = Api::all(node_a.clone());
    let pods_a: Api<Pod> = Api::namespaced(node_a.clone(), &env.ns);
    let updates_a: Api<Update> = Api::namespaced(node_a.clone(), NAMESPACE);
    let pp = PatchParams::default();

    // --- the attacks with node a's credential ---
    let other = format!("node \"{a}\" is not allowed to modify node \"{b}\"");
    refused(
        "a grants node b",
        nodes_a
            .patch(
                b,
                &pp,
                &merge(json!({"metadata": {"annotations": {"housekeeper.io/grant": "x/1"}}})),
            )
            .await,
        403,
        &other,
    )?;
    refused(
        "a labels node b",
        nodes_a
            .patch(
                b,
                &pp,
                &merge(json!({"metadata": {"labels": {"team": "mine"}}})),
            )
            .await,
        403,
        &other,
    )?;
    refused(
        "a taints node b",
        nodes_a
            .patch(
                b,
                &pp,
                &merge(json!({"spec": {"taints": [{"key": "k", "effect": "NoExecute"}]}})),
            )
            .await,
        403,
        &other,
    )?;
    refused(
        "a taints itself",
        nodes_a
            .patch(
                a,
                &pp,
                &merge(json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}})),
            )
            .await,
        403,
        "is not allowed to modify taints",
    )?;
    refused(
        "a evicts pod-b (on node b)",
        evict(&node_a, &env.ns, "pod-b").await,
        403,
        "can only evict pods with spec.nodeName set to itself",
    )?;
    refused(
        "a deletes pod-b (on node b)",
        pods_a.delete("pod-b", &DeleteParams::default()).await,
        403,
        "can only delete pods with spec.nodeName set to itself",
    )?;
    refused(
        "a writes the Update's status",
        updates_a
            .patch_status(
                &update_name,
                &pp,
                &merge(json!({"status": {"state": "Complete"}})),
            )
            .await,
        403,
        "cannot patch resource \"updates/status\"",
    )?;
    refused(
        "a changes the Update's spec",
        updates_a
            .patch(
                &update_name,
                &pp,
                &merge(json!({"spec": {"paused": false}})),
            )
            .await,
        403,
        "cannot patch resource \"updates\"",
    )?;
    let leases_a: Api<Lease> = Api::namespaced(node_a.clone(), NAMESPACE);
    let lease_name = housekeeper::cluster::lease::LEASE_NAME;
    refused(
        "a reads the coordinator's Lease",
        leases_a.get(lease_name).await,
        403,
        "cannot get resource \"leases\"",
    )?;
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": lease_name, "namespace": NAMESPACE},
        "spec": {"holderIdentity": a, "leaseDurationSeconds": 100000},
    }))?;
    refused(
        "a takes the coordinator's Lease",
        leases_a.create(&PostParams::default(), &lease).await,
        403,
        "cannot create resource \"leases\"",
    )?;
    refused(
        "a renews the coordinator's Lease",
        leases_a
            .replace(lease_name, &PostParams::default(), &lease)
            .await,
        403,
        "cannot update resource \"leases\"",
    )?;
    refused(
        "a patches the coordinator's Lease",
        leases_a
            .patch(
                lease_name,
                &pp,
                &merge(json!({"spec": {"holderIdentity": a}})),
            )
            .await,
        403,
        "cannot patch resource \"leases\"",
    )?;
    refused(
        "a reads Secrets",
        Api::<Secret>::namespaced(node_a.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await,
        403,
        "cannot list resource \"secrets\"",
    )?;
    let as_b = acting_as(&node_kc(a), &format!("system:node:{b}"), &["system:nodes"]).await?;
    refused(
        "a acts as node b",
        Api::<Node>::all(as_b)
            .patch(
                b,
                &pp,
                &merge(json!({"metadata": {"annotations": {"x": "y"}}})),
            )
            .await,
        403,
        "cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
    )?;
    let as_master = acting_as(
        &node_kc(a),
        &format!("system:node:{a}"),
        &["system:nodes", "system:masters"],
    )
    .await?;
    refused(
        "a acts as itself in group system:masters",
        Api::<Node>::all(as_master).get(b).await,
        403,
        "cannot impersonate resource \"groups\"",
    )?;
    // The token alone, without acting as the node: nothing.
    let bare = {
        let text = std::fs::read_to_string(node_kc(a))?;
        let mut kc = kube::config::Kubeconfig::from_yaml(&text)?;
        let auth = kc.auth_infos[0].auth_info.as_mut().context("a user")?;
        auth.impersonate = None;
        auth.impersonate_groups = None;
        Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?
    };
    refused(
        "a's token not acting as node a reads its Node",
        Api::<Node>::all(bare).get(a).await,
        403,
        "cannot get resource \"nodes\"",
    )?;

    // Nothing of it landed.
    let nb = Api::<Node>::all(env.admin.clone()).get(b).await?;
    ensure!(
        !nb.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("housekeeper.io/grant")
            && !nb.metadata.labels.unwrap_or_default().contains_key("team")
            && nb.spec.and_then(|s| s.taints) == taints_before,
        "node b was changed"
    );
    ensure!(
        Api::<Pod>::namespaced(env.admin.clone(), &env.ns)
            .get_opt("pod-b")
            .await?
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "pod-b was touched"
    );

    // --- what hkd does as node a ---
    allowed("a reads its Node", nodes_a.get(a).await)?;
    let mut watch = allowed(
        "a watches its Node",
        nodes_a
            .watch(
                &WatchParams::default()
                    .fields(&format!("metadata.name={a}"))
                    .timeout(5),
                "0",
            )
            .await,
    )?
    .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .context("no watch event for node a")?
        .context("the watch of node a ended at once")??;
    ensure!(
        matches!(first, kube::api::WatchEvent::Added(_)),
        "watching node a: {first:?}"
    );
    allowed(
        "a annotates itself",
        nodes_a
            .patch(
                a,
                &pp,
                &merge(json!({"metadata": {"annotations": {"housekeeper.io/phase": "Staged"}}})),
            )
            .await,
    )?;
    allowed(
        "a reads Updates",
        updates_a.list(&ListParams::default()).await,
    )?;
    allowed("a reads the Update", updates_a.get(&update_name).await)?;
    let event: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "trust-", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": a, "apiVersion": "v1"},
        "reason": "Draining", "message": "a test Event from node a's hkd", "type": "Normal",
        "source": {"component": "hkd", "host": a},
    }))?;
    allowed(
        "a records an Event on its Node",
        Api::<Event>::namespaced(node_a.clone(), "default")
            .create(&PostParams::default(), &event)
            .await,
    )?;
    allowed(
        "a deletes its own pod",
        pods_a.delete("pod-a2", &DeleteParams::default()).await,
    )?;
    // hkd's own drain, under this credential: cordon, list, evict pod-a, wait for it.
    let drainer = Drainer::new(node_a.clone(), Tuning::default());
    drainer
        .cordon(a, "trust/1")
        .await
        .context("a cordons itself with hkd's Drainer")?;
    let policy: DrainPolicy = serde_json::from_value(json!({"force": true, "timeoutSeconds": 60}))?;
    let report = drainer
        .drain(a, &policy)
        .await
        .context("a drains itself with hkd's Drainer")?;
    ensure!(
        report.evicted.iter().any(|p| p.name == "pod-a"),
        "pod-a was not evicted: {}",
        report.summary()
    );
    eprintln!(
        "allowed as it must be: a cordons and drains itself: {}",
        report.summary()
    );
    let na = Api::<Node>::all(env.admin.clone()).get(a).await?;
    ensure!(
        na.spec.and_then(|s| s.unschedulable) == Some(true),
        "node a is not cordoned"
    );
    drainer.uncordon(a).await.context("a lifts its cordon")?;

    // --- the coordinator's credential ---
    let coord = client_from_kubeconfig_file(&dir.join("coordinator.kubeconfig")).await?;
    allowed(
        "the coordinator lists Nodes",
        Api::<Node>::all(coord.clone())
            .list(&ListParams::default().limit(1))
            .await,
    )?;
    allowed(
        "the coordinator lists pods (blockingPodSelector)",
        Api::<Pod>::all(coord.clone())
            .list(&ListParams::default().labels("app=backup").limit(1))
            .await,
    )?;
    // Prometheus's credentials: that one Secret may be read (absent here: 404 after the
    // authorization passed), any other is refused.
    refused(
        "the coordinator reads Secret housekeeper-prometheus",
        Api::<Secret>::namespaced(coord.clone(), NAMESPACE)
            .get(housekeeper::cluster::gates::CREDENTIALS_SECRET)
            .await,
        404,
        "not found",
    )?;
    refused(
        "the coordinator reads another Secret",
        Api::<Secret>::namespaced(coord.clone(), NAMESPACE)
            .get("hkd-coordinator-token")
            .await,
        403,
        "cannot get resource \"secrets\"",
    )?;
    refused(
        "the coordinator reads one pod",
        Api::<Pod>::namespaced(coord.clone(), &env.ns)
            .get("pod-b")
            .await,
        403,
        "cannot get resource \"pods\"",
    )?;
    allowed(
        "the coordinator writes an Update's status",
        Api::<Update>::namespaced(coord.clone(), NAMESPACE)
            .patch_status(
                &update_name,
                &pp,
                &merge(json!({"status": {"observedGeneration": 1}})),
            )
            .await,
    )?;
    refused(
        "the coordinator annotates node b",
        Api::<Node>::all(coord.clone())
            .patch(
                b,
                &pp,
                &merge(json!({"metadata": {"annotations": {"housekeeper.io/grant": "x/1"}}})),
            )
            .await,
        403,
        "cannot patch resource \"nodes\"",
    )?;
    refused(
        "the coordinator deletes pod-b",
        Api::<Pod>::namespaced(coord.clone(), &env.ns)
            .delete("pod-b", &DeleteParams::default())
            .await,
        403,
        "cannot delete resource \"pods\"",
    )?;
    refused(
        "the coordinator evicts pod-b",
        evict(&coord, &env.ns, "pod-b").await,
        403,
        "cannot create resource \"pods/eviction\"",
    )?;
    refused(
        "the coordinator changes an Update's spec",
        Api::<Update>::namespaced(coord.clone(), NAMESPACE)
            .patch(
                &update_name,
                &pp,
                &merge(json!({"spec": {"paused": false}})),
            )
            .await,
        403,
        "cannot patch resource \"updates\"",
    )?;

    // --- revocation: node c only ---
    let node_c = client_from_kubeconfig_file(&node_kc(c)).await?;
    allowed(
        "c reads its Node",
        Api::<Node>::all(node_c.clone()).get(c).await,
    )?;
    let run = hkctl(&admin_kc, &["revoke", c]).await?;
    ensure!(run.code == 0, "revoke: {} {}", run.stdout, run.stderr);
    for want in [
        format!("ServiceAccount housekeeper-system/hkd-node-{c}"),
        format!("ClusterRoleBinding hkd-node-{c}"),
        format!("ClusterRole hkd-node-{c}"),
        format!("revoked: every token of node {c} is refused from now on"),
    ] {
        ensure!(
            run.stdout.contains(&want),
            "{want} missing:\n{}",
            run.stdout
        );
    }
    // At once the impersonation right is gone (403); the token itself is refused (401) once
    // the API server's cache of successful authentications (10 s) forgot it.
    let revoked = std::time::Instant::now();
    let nodes_c: Api<Node> = Api::all(node_c);
    refused(
        "c right after its revocation",
        nodes_c.get(c).await,
        403,
        "cannot impersonate resource \"users\"",
    )?;
    support::wait_for(
        "c's token refused (401)",
        Duration::from_secs(30),
        || async {
            match nodes_c.get(c).await {
                Err(kube::Error::Api(s)) if s.code == 401 => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 403 => Ok(false),
                other => bail!("c after its revocation: {other:?}"),
            }
        },
    )
    .await?;
    refused(
        "c after its revocation",
        nodes_c.get(c).await,
        401,
        "Unauthorized",
    )?;
    eprintln!(
        "c's token refused (401) {:?} after the revocation",
        revoked.elapsed()
    );
    allowed(
        "a after c's revocation",
        Api::<Node>::all(node_a.clone()).get(a).await,
    )?;
    let again = hkctl(&admin_kc, &["revoke", c]).await?;
    ensure!(
        again.code == 1
            && again.stderr.trim_end().lines().count() == 1
            && again
                .stderr
                .contains(&format!("node {c} has no credential to revoke")),
        "revoking twice: ({}) {}",
        again.code,
        again.stderr
    );
    let bad = hkctl(&admin_kc, &["revoke", "../etc"]).await?;
    ensure!(
        bad.code == 2,
        "revoke ../etc: ({}) {}",
        bad.code,
        bad.stderr
    );
    // Install again: c has a credential again, a's and b's are kept.
    let out = install(&admin_kc, &dir, &[a, b, c]).await?;
    ensure!(
        out.contains(&format!("nodes/{a}.kubeconfig"))
            && out
                .lines()
                .any(|l| l.contains(&format!("nodes/{a}.kubeconfig")) && l.contains("unchanged")),
        "{out}"
    );
    ensure!(
        out.lines()
            .any(|l| l.contains(&format!("nodes/{c}.kubeconfig")) && l.contains("written")),
        "{out}"
    );
    let node_c = client_from_kubeconfig_file(&node_kc(c)).await?;
    allowed(
        "c with its new credential",
        Api::<Node>::all(node_c).get(c).await,
    )?;

    // The dry run prints every node's objects for GitOps.
    let dry = hkctl(&admin_kc, &["install", "--dry-run", "-o", "yaml"]).await?;
    ensure!(dry.code == 0, "{}", dry.stderr);
    ensure!(
        dry.stdout.contains(&format!("name: \"hkd-node-{a}\"")),
        "{}",
        dry.stdout
    );
    ensure!(
        !dry.stdout.contains("housekeeper-coordinator-fleetlock"),
        "the FleetLock rights only with --fleetlock"
    );

    // --- the FleetLock opt-in: the coordinator may cordon and drain, nothing more ---
    let run = hkctl(&admin_kc, &["install", "--fleetlock", "--no-credentials"]).await?;
    ensure!(
        run.code == 0,
        "install --fleetlock: {} {}",
        run.stdout,
        run.stderr
    );
    for want in [
        "ClusterRole housekeeper-coordinator-fleetlock",
        "ClusterRoleBinding housekeeper-coordinator-fleetlock",
    ] {
        ensure!(run.stdout.contains(want), "{want} missing:\n{}", run.stdout);
    }
    let fleetlock = Drainer::new(coord.clone(), Tuning::default());
    wait_for_rbac(|| async {
        fleetlock
            .cordon(b, "fleetlock/1")
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e:#}"))
    })
    .await
    .context("the coordinator cordons node b with --fleetlock")?;
    let report = fleetlock
        .drain(b, &policy)
        .await
        .context("the coordinator drains node b with --fleetlock")?;
    ensure!(report.outcome.may_reboot(), "{}", report.summary());
    eprintln!(
        "allowed as it must be: the coordinator drains b: {}",
        report.summary()
    );
    fleetlock.uncordon(b).await?;
    refused(
        "the coordinator (with --fleetlock) changes an Update's spec",
        Api::<Update>::namespaced(coord.clone(), NAMESPACE)
            .patch(
                &update_name,
                &pp,
                &merge(json!({"spec": {"paused": false}})),
            )
            .await,
        403,
        "cannot patch resource \"updates\"",
    )?;
    Ok(())
}

/// RBAC changes reach the authorizer within a moment: try `f` for up to 10 s.
async fn wait_for_rbac<F, Fut>(f: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut last = None;
    for _ in 0..50 {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("never tried")))
}
