//! Behaviours of the Kubernetes API that hkd and hkctl rely on, pinned against a real API server.
//!
//! By default: kube-apiserver v1.20.2 built from Debian's source package, etcd and the
//! disruption controller, started by `support` (build them with tests/kube/build-kube.sh).
//! With HOUSEKEEPER_TEST_KUBECONFIG these same tests run against that cluster instead.
//! Stand-ins: no kubelet runs; `support::kubelet` registers Nodes, reports pods Running and
//! Ready, and finishes deleted pods.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{
    DeleteParams, DynamicObject, EvictParams, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::Api;
use serde_json::json;
use support::{crd, eviction, wait_for, KubeletStandIn, NodeRole, TestEnv};

/// Generous bound for what the server does by itself in well under a second.
const SERVER_REACTION: Duration = Duration::from_secs(20);

/// With kube's retry turned off a 429 comes back in milliseconds; with it on, after minutes.
const PROMPT_ANSWER: Duration = Duration::from_secs(5);

fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Wait until the disruption controller has computed the PDB's status for its current spec
/// and it allows `allowed` disruptions.
async fn wait_pdb_allows(api: &Api<DynamicObject>, name: &str, allowed: i64) -> Result<()> {
    wait_for(
        &format!("PodDisruptionBudget {name} to allow {allowed} disruptions"),
        SERVER_REACTION,
        || async {
            let pdb = api.get(name).await?;
            let generation = pdb.metadata.generation.unwrap_or_default();
            let status = &pdb.data["status"];
            Ok(status["observedGeneration"].as_i64() == Some(generation)
                && status["disruptionsAllowed"].as_i64() == Some(allowed))
        },
    )
    .await
}

#[tokio::test]
async fn harness_runs_a_real_api_server() -> Result<()> {
    let env = TestEnv::new("harness").await?;
    let version = env.admin.apiserver_version().await?;
    if env.cluster.is_local() {
        ensure!(
            version.git_version == "v1.20.2",
            "local cluster should be the v1.20.2 built from Debian's source, got {}",
            version.git_version
        );
    }
    // A write and a read through etcd.
    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &env.ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "probe"}, "data": {"k": "v"}
    }))?;
    cms.create(&PostParams::default(), &cm).await?;
    let got = cms.get("probe").await?;
    ensure!(got.data.unwrap_or_default().get("k").map(String::as_str) == Some("v"));
    Ok(())
}

#[tokio::test]
async fn kubelet_stand_in_registers_nodes_and_flips_ready() -> Result<()> {
    let env = TestEnv::new("stand-in-nodes").await?;
    let kubelet = KubeletStandIn::new(env.admin.clone());
    let cp = kubelet
        .register_node(&env, "cp", NodeRole::ControlPlane)
        .await?;
    let worker = kubelet.register_node(&env, "w", NodeRole::Worker).await?;
    let cp_name = cp.metadata.name.clone().context("node name")?;
    let worker_name = worker.metadata.name.clone().context("node name")?;

    let nodes: Api<Node> = Api::all(env.admin.clone());
    let selector = format!(
        "node-role.kubernetes.io/control-plane,kubernetes.io/hostname in ({cp_name},{worker_name})"
    );
    let cps = nodes.list(&ListParams::default().labels(&selector)).await?;
    let names: Vec<_> = cps
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    ensure!(
        names == vec![cp_name.clone()],
        "control-plane selector found {names:?}"
    );

    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
    };
    ensure!(ready(&nodes.get(&worker_name).await?).as_deref() == Some("True"));
    let cap = nodes
        .get(&worker_name)
        .await?
        .status
        .and_then(|s| s.capacity)
        .unwrap_or_default();
    ensure!(
        cap.get("pods").map(|q| q.0.as_str()) == Some("110"),
        "capacity {cap:?}"
    );

    kubelet.set_node_ready(&worker_name, false).await?;
    ensure!(ready(&nodes.get(&worker_name).await?).as_deref() == Some("False"));
    kubelet.set_node_ready(&worker_name, true).await?;
    ensure!(ready(&nodes.get(&worker_name).await?).as_deref() == Some("True"));
    Ok(())
}

#[tokio::test]
async fn eviction_blocked_by_pdb_gets_429_until_allowed() -> Result<()> {
    let env = TestEnv::new("evict-pdb").await?;
    let kubelet = KubeletStandIn::new(env.admin.clone());
    let node = kubelet.register_node(&env, "n1", NodeRole::Worker).await?;
    let node = node.metadata.name.context("node name")?;
    let version = eviction::eviction_api_version(&env.admin).await?;
    if env.cluster.is_local() {
        ensure!(
            version == "policy/v1beta1",
            "1.20 serves Eviction as policy/v1beta1, discovery said {version}"
        );
    }

    kubelet
        .run_pod(&env.ns, "web-1", &node, &[("app", "web")])
        .await?;
    let (pdbs, _) = eviction::create_pdb(&env.admin, &env.ns, "web", "web", 1).await?;
    wait_pdb_allows(&pdbs, "web", 0).await?;

    let t0 = Instant::now();
    let err = eviction::evict(&env.admin, &version, &env.ns, "web-1", None)
        .await
        .err()
        .context("eviction under a PDB with no disruptions allowed was accepted")?;
    let took = t0.elapsed();
    ensure!(api_code(&err) == Some(429), "expected 429, got {err}");
    ensure!(
        took < PROMPT_ANSWER,
        "429 took {took:?}: is the client retrying by itself?"
    );
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    ensure!(
        pods.get("web-1")
            .await?
            .metadata
            .deletion_timestamp
            .is_none(),
        "the refused eviction still started deleting the pod"
    );

    // A second Ready pod makes one disruption allowed; the same eviction then succeeds.
    kubelet
        .run_pod(&env.ns, "web-2", &node, &[("app", "web")])
        .await?;
    wait_pdb_allows(&pdbs, "web", 1).await?;
    eviction::evict(&env.admin, &version, &env.ns, "web-1", None)
        .await
        .context("eviction once the PDB allows one disruption")?;
    let evicted = pods.get("web-1").await?;
    ensure!(
        evicted.metadata.deletion_timestamp.is_some(),
        "evicted pod is not being deleted"
    );

    // The budget is spent again: evicting the other pod is refused.
    wait_pdb_allows(&pdbs, "web", 0).await?;
    let err = eviction::evict(&env.admin, &version, &env.ns, "web-2", None)
        .await
        .err()
        .context("second eviction was accepted although the budget is spent")?;
    ensure!(api_code(&err) == Some(429), "expected 429, got {err}");

    // The kubelet stand-in finishes the evicted pod; it is then gone.
    ensure!(kubelet.finish_terminating(&env.ns).await? == vec!["web-1".to_owned()]);
    let gone = pods.get_opt("web-1").await?;
    ensure!(
        gone.is_none(),
        "web-1 still exists after the stand-in finished it"
    );
    Ok(())
}

#[tokio::test]
async fn eviction_with_grace_period_zero_removes_the_pod_at_once() -> Result<()> {
    let env = TestEnv::new("evict-grace0").await?;
    let kubelet = KubeletStandIn::new(env.admin.clone());
    let node = kubelet.register_node(&env, "n1", NodeRole::Worker).await?;
    let node = node.metadata.name.context("node name")?;
    let version = eviction::eviction_api_version(&env.admin).await?;
    let body = eviction::eviction_body(&version, &env.ns, "p", Some(0));
    ensure!(
        body["deleteOptions"]["gracePeriodSeconds"] == json!(0),
        "body {body}"
    );
    ensure!(body.get("delete_options").is_none());

    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    // Without a grace period of its own the pod waits for its kubelet (default grace 30 s):
    // this is what a dropped deleteOptions would look like.
    kubelet.run_pod(&env.ns, "slow", &node, &[]).await?;
    eviction::evict(&env.admin, &version, &env.ns, "slow", None).await?;
    let slow = pods
        .get_opt("slow")
        .await?
        .context("pod without grace 0 vanished at once")?;
    ensure!(slow.metadata.deletion_timestamp.is_some());
    ensure!(
        slow.metadata.deletion_grace_period_seconds == Some(30),
        "grace {:?}",
        slow.metadata.deletion_grace_period_seconds
    );

    // With gracePeriodSeconds 0 in deleteOptions the pod is removed by the eviction itself.
    kubelet.run_pod(&env.ns, "quick", &node, &[]).await?;
    eviction::evict(&env.admin, &version, &env.ns, "quick", Some(0)).await?;
    ensure!(
        pods.get_opt("quick").await?.is_none(),
        "pod evicted with gracePeriodSeconds 0 still exists: the grace period did not arrive"
    );
    Ok(())
}

/// Pins the kube crate trap that makes us send our own Eviction body: kube 5.0.0's
/// `Api::evict` puts the delete options under `delete_options`, which the server ignores, so
/// a grace period of 0 never arrives. When an upgrade of kube fixes this, this test fails and
/// `Api::evict` may be used again.
#[tokio::test]
async fn kube_crate_evict_drops_the_grace_period() -> Result<()> {
    let env = TestEnv::new("kube-evict").await?;
    let kubelet = KubeletStandIn::new(env.admin.clone());
    let node = kubelet.register_node(&env, "n1", NodeRole::Worker).await?;
    let node = node.metadata.name.context("node name")?;
    kubelet.run_pod(&env.ns, "p", &node, &[]).await?;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    let params = EvictParams {
        delete_options: Some(DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    };
    pods.evict("p", &params)
        .await
        .context("kube's Api::evict")?;
    let pod = pods.get_opt("p").await?.context(
        "kube's evict with grace 0 removed the pod: the kube crate's eviction body is fixed",
    )?;
    ensure!(
        pod.metadata.deletion_grace_period_seconds == Some(30),
        "grace {:?}",
        pod.metadata.deletion_grace_period_seconds
    );
    Ok(())
}

#[tokio::test]
async fn lease_update_with_stale_resource_version_conflicts() -> Result<()> {
    let env = TestEnv::new("lease").await?;
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), &env.ns);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("coordinator".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("node-a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let first = leases.create(&PostParams::default(), &lease).await?;
    let err = leases
        .create(&PostParams::default(), &lease)
        .await
        .err()
        .context("second create accepted")?;
    let kube::Error::Api(status) = &err else {
        bail!("unexpected error {err}")
    };
    ensure!(
        status.code == 409 && status.reason == "AlreadyExists",
        "got {status:?}"
    );

    // node-b takes over with the current resourceVersion.
    let mut take = first.clone();
    take.spec.as_mut().context("spec")?.holder_identity = Some("node-b".into());
    let taken = leases
        .replace("coordinator", &PostParams::default(), &take)
        .await?;
    ensure!(taken.metadata.resource_version != first.metadata.resource_version);

    // node-a, still holding the old resourceVersion, must lose.
    let mut stale = first.clone();
    stale.spec.as_mut().context("spec")?.holder_identity = Some("node-a-again".into());
    let err = leases
        .replace("coordinator", &PostParams::default(), &stale)
        .await
        .err()
        .context("stale update accepted")?;
    let kube::Error::Api(status) = &err else {
        bail!("unexpected error {err}")
    };
    ensure!(
        status.code == 409 && status.reason == "Conflict",
        "got {status:?}"
    );
    let now = leases.get("coordinator").await?;
    ensure!(now.spec.and_then(|s| s.holder_identity).as_deref() == Some("node-b"));
    Ok(())
}

#[tokio::test]
async fn crd_schema_rejects_a_bad_object_with_422() -> Result<()> {
    let env = TestEnv::new("crd-schema").await?;
    crd::ensure_installed(&env.admin).await?;
    let probes: Api<DynamicObject> =
        Api::namespaced_with(env.admin.clone(), &env.ns, &crd::resource());
    let probe = |name: &str, spec: serde_json::Value| -> Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": crd::resource().api_version, "kind": crd::KIND,
            "metadata": {"name": name}, "spec": spec,
        }))?)
    };
    probes
        .create(
            &PostParams::default(),
            &probe("good", json!({"mode": "Safe", "maxUnavailable": 2}))?,
        )
        .await
        .context("a valid object was refused")?;
    for (name, spec, field) in [
        ("bad-enum", json!({"mode": "Reckless"}), "spec.mode"),
        (
            "bad-min",
            json!({"mode": "Fast", "maxUnavailable": 0}),
            "spec.maxUnavailable",
        ),
        ("missing", json!({"maxUnavailable": 1}), "spec.mode"),
    ] {
        let err = probes
            .create(&PostParams::default(), &probe(name, spec)?)
            .await
            .err()
            .with_context(|| format!("{name}: invalid object accepted"))?;
        let kube::Error::Api(status) = &err else {
            bail!("{name}: unexpected error {err}")
        };
        ensure!(
            status.code == 422 && status.reason == "Invalid",
            "{name}: got {status:?}"
        );
        ensure!(
            status.message.contains(field),
            "{name}: message does not name {field}: {}",
            status.message
        );
    }
    Ok(())
}

#[tokio::test]
async fn watch_on_custom_resource_sees_status_update() -> Result<()> {
    let env = TestEnv::new("crd-watch").await?;
    crd::ensure_installed(&env.admin).await?;
    let probes: Api<DynamicObject> =
        Api::namespaced_with(env.admin.clone(), &env.ns, &crd::resource());
    let created = probes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": crd::resource().api_version, "kind": crd::KIND,
                "metadata": {"name": "watched"}, "spec": {"mode": "Safe"},
            }))?,
        )
        .await?;
    let rv = created
        .metadata
        .resource_version
        .clone()
        .context("resourceVersion")?;
    let mut events = probes
        .watch(&WatchParams::default().timeout(30), &rv)
        .await?
        .boxed();

    // Status goes through the status subresource; a merge patch (strategic merge is 415 on
    // custom resources).
    probes
        .patch_status(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Staged", "observedGeneration": 1}})),
        )
        .await?;
    // Through the main resource the status is ignored.
    probes
        .patch(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bogus"}})),
        )
        .await?;

    let seen = tokio::time::timeout(SERVER_REACTION, async {
        while let Some(ev) = events.try_next().await? {
            match ev {
                WatchEvent::Modified(o) if o.data["status"]["phase"] == "Staged" => return Ok(o),
                WatchEvent::Modified(_) | WatchEvent::Bookmark(_) => {}
                other => bail!("unexpected watch event {other:?}"),
            }
        }
        bail!("watch ended without the status update")
    })
    .await
    .context("no watch event for the status update")??;
    ensure!(seen.data["status"]["observedGeneration"] == json!(1));
    let now = probes.get("watched").await?;
    ensure!(
        now.data["status"]["phase"] == "Staged",
        "status was changed through the main resource: {}",
        now.data["status"]
    );
    Ok(())
}

#[tokio::test]
async fn least_privilege_client_is_forbidden_beyond_its_role() -> Result<()> {
    let env = TestEnv::new("rbac").await?;
    let limited = env
        .limited_client(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }])
        .await?;
    let admin_cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &env.ns);
    admin_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cfg"}}))?,
        )
        .await?;

    // Allowed: reading config maps in its namespace (the binding takes effect within moments).
    let cms: Api<ConfigMap> = Api::namespaced(limited.clone(), &env.ns);
    wait_for(
        "the RoleBinding to take effect",
        SERVER_REACTION,
        || async {
            match cms.get("cfg").await {
                Ok(_) => Ok(true),
                Err(e) if api_code(&e) == Some(403) => Ok(false),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await?;

    // Forbidden: writing them, pods in its namespace, and Nodes.
    let forbidden = |r: Result<(), kube::Error>, what: &str| -> Result<()> {
        match r {
            Err(e) if api_code(&e) == Some(403) => Ok(()),
            Err(e) => bail!("{what}: expected 403, got {e}"),
            Ok(()) => bail!("{what}: expected 403, but it was allowed"),
        }
    };
    forbidden(
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}}))?,
        )
        .await
        .map(drop),
        "create configmap",
    )?;
    forbidden(
        Api::<Pod>::namespaced(limited.clone(), &env.ns)
            .list(&ListParams::default())
            .await
            .map(drop),
        "list pods",
    )?;
    forbidden(
        Api::<Node>::all(limited)
            .list(&ListParams::default())
            .await
            .map(drop),
        "list nodes",
    )?;
    Ok(())
}
