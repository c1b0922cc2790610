//! The drain (`housekeeper::cluster::kube_drain`) and the `Update` CRD against a real API server.
//!
//! kube-apiserver v1.20.2 + etcd + the disruption controller from `support` (or the cluster
//! HOUSEKEEPER_TEST_KUBECONFIG names). Stand-ins: no kubelet runs; `support::kubelet` registers
//! Nodes, reports pods Running and Ready and finishes evicted pods. Owners (ReplicaSets,
//! DaemonSets) are owner references only: no controller recreates pods here.

mod support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use housekeeper::cluster::annotations::CORDONED_BY_HKD;
use housekeeper::cluster::kube_drain::{DrainOutcome, Drainer, Stuck, Tuning};
use housekeeper::cluster::update::{self, DrainPolicy, OnTimeout, Update};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use support::{eviction, wait_for, KubeletStandIn, NodeRole, TestEnv};

const SERVER_REACTION: Duration = Duration::from_secs(20);

fn tuning() -> Tuning {
    Tuning {
        parallel: 4,
        backoff_start: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        poll: Duration::from_millis(100),
        ..Tuning::default()
    }
}

fn policy(timeout: i64, on_timeout: OnTimeout) -> DrainPolicy {
    DrainPolicy {
        timeout_seconds: timeout,
        grace_period_seconds: None,
        on_timeout,
        ..DrainPolicy::default()
    }
}

/// A pod of `kind` ("ReplicaSet", "DaemonSet", or "" for none) on `node`, Running and Ready.
async fn pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    kind: &str,
    extra: Value,
) -> Result<Pod> {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name.split('-').next().unwrap_or(name),
                                               support::cluster::TEST_LABEL: "true"}},
        "spec": {"nodeName": node, "containers": [{"name": "main",
                 "image": "registry.invalid/housekeeper/stand-in:1"}]},
    });
    if !kind.is_empty() {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind,
            "name": "owner", "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]);
    }
    for (k, v) in extra.as_object().into_iter().flatten() {
        for (k2, v2) in v.as_object().into_iter().flatten() {
            p[k][k2] = v2.clone();
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &serde_json::from_value(p)?)
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))?;
    let c = |t: &str| json!({"type": t, "status": "True"});
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running",
            "conditions": [c("PodScheduled"), c("Initialized"), c("ContainersReady"), c("Ready")]}})),
    )
    .await
    .with_context(|| format!("reporting pod {ns}/{name} Running and Ready"))
}

async fn wait_pdb_allows(client: &Client, ns: &str, name: &str, allowed: i64) -> Result<()> {
    let ar = eviction::pdb_resource(client).await?;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    wait_for(
        &format!("PodDisruptionBudget {name} to allow {allowed}"),
        SERVER_REACTION,
        || async {
            let pdb = api.get(name).await?;
            let s = &pdb.data["status"];
            Ok(s["observedGeneration"].as_i64() == pdb.metadata.generation
                && s["disruptionsAllowed"].as_i64() == Some(allowed))
        },
    )
    .await
}

async fn node_name(k: &KubeletStandIn, env: &TestEnv, short: &str) -> Result<String> {
    k.register_node(env, short, NodeRole::Worker)
        .await?
        .metadata
        .name
        .context("node name")
}

async fn unschedulable(client: &Client, node: &str) -> Result<(bool, bool)> {
    let n = Api::<Node>::all(client.clone()).get(node).await?;
    let u = n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let ours = n
        .metadata
        .annotations
        .unwrap_or_default()
        .contains_key(CORDONED_BY_HKD);
    Ok((u, ours))
}

#[tokio::test]
async fn pdb_blocked_pod_waits_then_passes_when_the_budget_allows() -> Result<()> {
    let env = TestEnv::new("drain-pdb-wait").await?;
    let k = KubeletStandIn::new(env.admin.clone());
    let node = node_name(&k, &env, "n1").await?;
    let other = node_name(&k, &env, "n2").await?;
    let _finisher = k.spawn_finisher(&env.ns);
    pod(&env.admin, &env.ns, "web-1", &node, "ReplicaSet", json!({})).await?;
    pod(
        &env.admin,
        &env.ns,
        "web-2",
        &other,
        "ReplicaSet",
        json!({}),
    )
    .await?;
    eviction::create_pdb(&env.admin, &env.ns, "web", "web", 2).await?;
    wait_pdb_allows(&env.admin, &env.ns, "web", 0).await?;

    let drainer = Drainer::new(env.admin.clone(), tuning());
    ensure!(drainer.cordon(&node, "uid/1").await?, "cordon not ours");
    let d = Drainer::new(env.admin.clone(), tuning());
    let node2 = node.clone();
    let task = tokio::spawn(async move { d.drain(&node2, &policy(60, OnTimeout::Abort)).await });
    // Blocked for a while: the drain waits, it does not fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !task.is_finished(),
        "the drain ended while the PDB allowed nothing"
    );
    // A third replica elsewhere frees one disruption; the eviction then passes.
    pod(
        &env.admin,
        &env.ns,
        "web-3",
        &other,
        "ReplicaSet",
        json!({}),
    )
    .await?;
    let report = tokio::time::timeout(Duration::from_secs(40), task).await???;
    ensure!(
        report.outcome == DrainOutcome::Drained,
        "{}",
        report.summary()
    );
    ensure!(report.evicted.len() == 1 && report.evicted[0].name == "web-1");
    ensure!(unschedulable(&env.admin, &node).await? == (true, true));
    ensure!(drainer.uncordon(&node).await?);
    ensure!(unschedulable(&env.admin, &node).await? == (false, false));
    Ok(())
}

#[tokio::test]
async fn timeout_then_each_policy() -> Result<()> {
    let env = TestEnv::new("drain-timeout").await?;
    let k = KubeletStandIn::new(env.admin.clone());
    let _finisher = k.spawn_finisher(&env.ns);
    for (i, on_timeout) in [
        OnTimeout::Abort,
        OnTimeout::DeleteWithoutEviction,
        OnTimeout::Proceed,
    ]
    .into_iter()
    .enumerate()
    {
        let node = node_name(&k, &env, &format!("n{i}")).await?;
        let app = format!("db{i}");
        let name = format!("{app}-1");
        pod(&env.admin, &env.ns, &name, &node, "ReplicaSet", json!({})).await?;
        eviction::create_pdb(&env.admin, &env.ns, &app, &app, 1).await?;
        wait_pdb_allows(&env.admin, &env.ns, &app, 0).await?;
        let drainer = Drainer::new(env.admin.clone(), tuning());
        drainer.cordon(&node, "uid/1").await?;
        let t0 = std::time::Instant::now();
        let report = drainer.drain(&node, &policy(2, on_timeout)).await?;
        let took = t0.elapsed();
        ensure!(
            took < Duration::from_secs(15),
            "{on_timeout:?} took {took:?}"
        );
        let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
        match on_timeout {
            OnTimeout::Abort => {
                ensure!(
                    report.outcome == DrainOutcome::Aborted,
                    "{}",
                    report.summary()
                );
                let (p, why) = &report.remaining[0];
                ensure!(p.name == name);
                ensure!(
                    matches!(why, Stuck::DisruptionBudget { pdb: Some(p), .. } if *p == app),
                    "the PDB is not named: {why}"
                );
                ensure!(report
                    .summary()
                    .contains(&format!("PodDisruptionBudget {app}")));
                ensure!(
                    unschedulable(&env.admin, &node).await? == (false, false),
                    "abort must lift hkd's cordon"
                );
                ensure!(pods.get_opt(&name).await?.is_some());
            }
            OnTimeout::DeleteWithoutEviction => {
                ensure!(
                    report.outcome == DrainOutcome::ForceDeleted,
                    "{}",
                    report.summary()
                );
                ensure!(report.deleted.len() == 1 && report.remaining.is_empty());
                ensure!(pods.get_opt(&name).await?.is_none(), "pod still there");
                ensure!(report.outcome.may_reboot());
            }
            OnTimeout::Proceed => {
                ensure!(
                    report.outcome == DrainOutcome::Proceeded,
                    "{}",
                    report.summary()
                );
                ensure!(report.remaining.len() == 1 && report.outcome.may_reboot());
                ensure!(pods.get_opt(&name).await?.is_some());
                ensure!(unschedulable(&env.admin, &node).await? == (true, true));
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn daemonset_mirror_emptydir_and_unreplicated_pods() -> Result<()> {
    let env = TestEnv::new("drain-kinds").await?;
    let k = KubeletStandIn::new(env.admin.clone());
    let node = node_name(&k, &env, "n1").await?;
    let _finisher = k.spawn_finisher(&env.ns);
    pod(&env.admin, &env.ns, "ds-1", &node, "DaemonSet", json!({})).await?;
    pod(
        &env.admin,
        &env.ns,
        "static-1",
        &node,
        "",
        json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "hash"}}}),
    )
    .await?;
    pod(
        &env.admin,
        &env.ns,
        "cache-1",
        &node,
        "ReplicaSet",
        json!({"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}),
    )
    .await?;
    pod(&env.admin, &env.ns, "lone-1", &node, "", json!({})).await?;
    pod(&env.admin, &env.ns, "web-1", &node, "ReplicaSet", json!({})).await?;
    let done = pod(&env.admin, &env.ns, "job-1", &node, "", json!({})).await?;
    Api::<Pod>::namespaced(env.admin.clone(), &env.ns)
        .patch_status(
            done.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;

    let drainer = Drainer::new(env.admin.clone(), tuning());
    drainer.cordon(&node, "uid/1").await?;
    // Without consent: refused, nothing evicted, hkd's cordon lifted.
    let report = drainer.drain(&node, &policy(20, OnTimeout::Abort)).await?;
    ensure!(
        report.outcome == DrainOutcome::Refused,
        "{}",
        report.summary()
    );
    ensure!(report.evicted.is_empty());
    let blocked: Vec<_> = report
        .remaining
        .iter()
        .map(|(p, w)| format!("{}: {w}", p.name))
        .collect();
    ensure!(blocked.len() == 2, "{blocked:?}");
    ensure!(blocked
        .iter()
        .any(|b| b.starts_with("cache-1") && b.contains("emptyDir volume scratch")));
    ensure!(blocked
        .iter()
        .any(|b| b.starts_with("lone-1") && b.contains("no controller")));
    ensure!(unschedulable(&env.admin, &node).await? == (false, false));

    // NKD's evictPodForce grants both consents.
    let spec: update::UpdateSpec = serde_json::from_value(json!({
        "osImageURL": "nestos:nestos/x86_64/stable", "evictPodForce": true,
        "drain": {"timeoutSeconds": 20}}))?;
    drainer.cordon(&node, "uid/1").await?;
    let report = drainer.drain(&node, &spec.effective_drain()).await?;
    ensure!(
        report.outcome == DrainOutcome::Drained,
        "{}",
        report.summary()
    );
    let mut evicted: Vec<_> = report.evicted.iter().map(|p| p.name.as_str()).collect();
    evicted.sort();
    ensure!(evicted == ["cache-1", "lone-1", "web-1"], "{evicted:?}");
    let mut skipped: Vec<_> = report
        .skipped
        .iter()
        .map(|(p, w)| format!("{} {w}", p.name))
        .collect();
    skipped.sort();
    ensure!(
        skipped
            == [
                "ds-1 DaemonSet pod",
                "job-1 finished",
                "static-1 mirror pod"
            ],
        "{skipped:?}"
    );
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    ensure!(pods.get_opt("ds-1").await?.is_some() && pods.get_opt("static-1").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn a_pod_replaced_under_the_same_name_counts_as_gone() -> Result<()> {
    let env = TestEnv::new("drain-replaced").await?;
    let k = KubeletStandIn::new(env.admin.clone());
    let node = node_name(&k, &env, "n1").await?;
    let old = pod(
        &env.admin,
        &env.ns,
        "sts-0",
        &node,
        "StatefulSet",
        json!({}),
    )
    .await?;
    let d = Drainer::new(env.admin.clone(), tuning());
    let n2 = node.clone();
    // No finisher: the evicted pod stays terminating until replaced.
    let task = tokio::spawn(async move { d.drain(&n2, &policy(30, OnTimeout::Abort)).await });
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    wait_for("sts-0 to be terminating", SERVER_REACTION, || async {
        Ok(pods
            .get("sts-0")
            .await?
            .metadata
            .deletion_timestamp
            .is_some())
    })
    .await?;
    ensure!(!task.is_finished());
    // A StatefulSet controller would finish the old pod and create a new one of the same name.
    pods.delete(
        "sts-0",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let new = pod(
        &env.admin,
        &env.ns,
        "sts-0",
        &node,
        "StatefulSet",
        json!({}),
    )
    .await?;
    ensure!(new.metadata.uid != old.metadata.uid);
    let report = tokio::time::timeout(Duration::from_secs(20), task).await???;
    ensure!(
        report.outcome == DrainOutcome::Drained,
        "{}",
        report.summary()
    );
    ensure!(
        report.evicted.len() == 1 && report.evicted[0].uid == old.metadata.uid.unwrap_or_default()
    );
    // The replacement was not evicted.
    ensure!(pods
        .get("sts-0")
        .await?
        .metadata
        .deletion_timestamp
        .is_none());
    Ok(())
}

#[tokio::test]
async fn an_admins_cordon_survives() -> Result<()> {
    let env = TestEnv::new("drain-admin-cordon").await?;
    let k = KubeletStandIn::new(env.admin.clone());
    let node = node_name(&k, &env, "n1").await?;
    Api::<Node>::all(env.admin.clone())
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    let drainer = Drainer::new(env.admin.clone(), tuning());
    ensure!(
        !drainer.cordon(&node, "uid/1").await?,
        "hkd claimed an admin's cordon"
    );
    ensure!(unschedulable(&env.admin, &node).await? == (true, false));
    // A drain that aborts, and an explicit uncordon: neither lifts the admin's cordon.
    pod(&env.admin, &env.ns, "lone-1", &node, "", json!({})).await?;
    let report = drainer.drain(&node, &policy(2, OnTimeout::Abort)).await?;
    ensure!(report.outcome == DrainOutcome::Refused);
    ensure!(!drainer.uncordon(&node).await?);
    ensure!(unschedulable(&env.admin, &node).await? == (true, false));
    Ok(())
}

#[tokio::test]
async fn the_update_crd_rejects_bad_values_and_takes_good_ones() -> Result<()> {
    let env = TestEnv::new("update-crd").await?;
    // The checked-in manifest is what gets applied (it parses as YAML only through kubectl;
    // here the same object from the types, which the unit test ties to the file).
    support::crd::install_update_crd(&env.admin).await?;
    let api: Api<Update> = Api::namespaced(env.admin.clone(), &env.ns);
    // Raw JSON, so that values the Rust types could not even hold reach the server.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        env.admin.clone(),
        &env.ns,
        &ApiResource::erase::<Update>(&()),
    );
    let create = |name: &str, spec: Value| {
        let raw = raw.clone();
        let obj = json!({"apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
                         "metadata": {"name": name}, "spec": spec});
        async move {
            let obj: DynamicObject = serde_json::from_value(obj)?;
            anyhow::Ok(
                raw.create(&PostParams::default(), &obj)
                    .await
                    .map(|o| serde_json::from_value::<Update>(serde_json::to_value(o).unwrap())),
            )
        }
    };
    let img = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";
    for (name, spec, field) in [
        (
            "zero",
            json!({"osImageURL": img, "maxUnavailable": 0}),
            "spec.maxUnavailable",
        ),
        (
            "negative",
            json!({"osImageURL": img, "maxUnavailable": -2}),
            "spec.maxUnavailable",
        ),
        (
            "bad-hour",
            json!({"osImageURL": img, "maintenanceWindows": [
            {"start": "25:00", "end": "04:00"}]}),
            "start",
        ),
        (
            "bad-day",
            json!({"osImageURL": img, "maintenanceWindows": [
            {"days": ["Someday"], "start": "22:00", "end": "04:00"}]}),
            "days",
        ),
        (
            "bad-policy",
            json!({"osImageURL": img, "drain": {"onTimeout": "shrug"}}),
            "onTimeout",
        ),
        ("no-image", json!({"maxUnavailable": 1}), "osImageURL"),
        (
            "bad-kube",
            json!({"osImageURL": img, "kubeVersion": "latest"}),
            "kubeVersion",
        ),
    ] {
        match create(name, spec).await? {
            Err(kube::Error::Api(s)) if s.code == 422 => {
                ensure!(
                    s.message.contains(field),
                    "{name}: 422 without {field}: {}",
                    s.message
                );
            }
            other => anyhow::bail!("{name}: expected 422, got {other:?}"),
        }
    }
    // What NKD writes: bare image, empty kubeVersion, its four fields only. Defaults filled in.
    let nkd = create(
        "nkd",
        json!({"osImageURL": "hub.oepkgs.net/nestos/nestos:22.03",
        "kubeVersion": "", "evictPodForce": true, "maxUnavailable": 2}),
    )
    .await???;
    ensure!(nkd.spec.max_unavailable == 2 && nkd.spec.drain.ignore_daemon_sets);
    ensure!(nkd.spec.drain.timeout_seconds == update::DEFAULT_DRAIN_TIMEOUT_SECONDS);
    let good = create(
        "good",
        json!({"osImageURL": img, "kubeVersion": "v1.29.1",
        "maxUnavailable": 3, "maxFailed": 1,
        "nodeSelector": {"matchLabels": {"pool": "a"}},
        "drain": {"timeoutSeconds": 300, "onTimeout": "deleteWithoutEviction"},
        "maintenanceWindows": [{"days": ["Sat", "Sun"], "start": "22:00", "end": "04:00",
                                "timeZone": "Asia/Shanghai"}]}),
    )
    .await???;
    update::validate(&good.spec, update::ImagePolicy::default())
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // The status subresource takes what the planner writes.
    let p = housekeeper::cluster::plan(&good, &[], jiff::Timestamp::now(), Default::default());
    let patched = api
        .patch_status(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": p.status})),
        )
        .await
        .with_context(|| {
            format!(
                "writing the Update's status {}",
                json!({"status": p.status})
            )
        })?;
    ensure!(patched.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Waiting"));
    Ok(())
}
