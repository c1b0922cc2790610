//! hkctl on a cluster where Housekeeper was never installed: a kube-apiserver of this test's
//! own (the run's shared cluster has the CRD as soon as any test installs it).
//!
//! The test process leaves the run's cluster by forgetting `NEXTEST_RUN_ID`; `support` then
//! starts a cluster for this process alone, stopped when the process ends.

mod support;

#[path = "hkctl/sim.rs"]
mod sim;

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use sim::{hkctl_with, IMAGE};
use support::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_the_crd_is_named_and_nothing_is_written() -> Result<()> {
    std::env::remove_var("NEXTEST_RUN_ID");
    let env = TestEnv::new("hkctl-fresh").await?;
    let kc = sim::admin_kubeconfig(env.cluster);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.admin.clone());
    ensure!(
        crds.get_opt("updates.housekeeper.io").await?.is_none(),
        "this cluster is not fresh: the Update CRD is there"
    );
    for args in [
        &["status"][..],
        &["upgrade", "--image", IMAGE][..],
        &["pause"][..],
        &["abort", "--in-flight", "roll-back"][..],
    ] {
        let out = hkctl_with(&kc, args).await?;
        ensure!(out.code == 1, "{args:?}: {out:?}");
        ensure!(
            out.stderr.trim_end().lines().count() == 1,
            "{args:?}: {}",
            out.stderr
        );
        ensure!(
            out.stderr
                .contains("the Update resource (updates.housekeeper.io) is not installed")
                && out.stderr.contains("run hkctl install"),
            "{args:?}: {}",
            out.stderr
        );
    }
    ensure!(
        crds.get_opt("updates.housekeeper.io").await?.is_none(),
        "a CRD was created"
    );
    let ns: Api<Namespace> = Api::all(env.admin.clone());
    ensure!(
        ns.get_opt("housekeeper-system").await?.is_none(),
        "the namespace was created"
    );
    // Uninstall on a cluster without Housekeeper: nothing in progress, everything absent.
    let out = hkctl_with(&kc, &["uninstall"]).await?;
    ensure!(out.code == 0, "{out:?}");
    ensure!(
        out.stdout.lines().all(|l| l.ends_with("absent")),
        "{}",
        out.stdout
    );
    the_shared_account_of_earlier_releases_is_removed(&env, &kc).await
}

/// An install of an earlier release (one ServiceAccount `hkd` for every node, with its
/// roles): install removes it, says so, and its token is refused from then on. On this
/// cluster of the test's own, as the run's shared one has no such account to remove.
async fn the_shared_account_of_earlier_releases_is_removed(
    env: &TestEnv,
    kc: &std::path::Path,
) -> Result<()> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::{Node, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::PostParams;
    let ns: Api<Namespace> = Api::all(env.admin.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "housekeeper-system"}}))?,
    )
    .await?;
    let sa: Api<ServiceAccount> = Api::namespaced(env.admin.clone(), "housekeeper-system");
    sa.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "hkd"}}))?,
    )
    .await?;
    // The shared role as earlier releases had it, cut to what this test asks.
    Api::<ClusterRole>::all(env.admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "housekeeper-hkd"},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "patch"]}],
            }))?,
        )
        .await?;
    let crb: Api<ClusterRoleBinding> = Api::all(env.admin.clone());
    crb.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({
            "metadata": {"name": "housekeeper-hkd"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "housekeeper-hkd"},
            "subjects": [{"kind": "ServiceAccount", "name": "hkd", "namespace": "housekeeper-system"}],
        }))?,
    )
    .await?;
    let token = sa
        .create_token_request("hkd", &PostParams::default(), &TokenRequest::default())
        .await?
        .status
        .context("a token")?
        .token;
    let old = match env.cluster {
        support::cluster::Cluster::Local(_) => {
            env.cluster.token_client(&token, "old-shared-hkd").await?
        }
        support::cluster::Cluster::External { .. } => return Ok(()),
    };
    Api::<Node>::all(old.clone())
        .list(&Default::default())
        .await
        .context("the shared token before install")?;

    let dir = tempfile::tempdir()?;
    let creds = dir.path().join("creds");
    let out = hkctl_with(
        kc,
        &[
            "install",
            "--credentials-dir",
            creds.to_str().context("path")?,
            "--node",
            "n1",
        ],
    )
    .await?
    .ok()?;
    for want in [
        "ServiceAccount housekeeper-system/hkd ",
        "ClusterRoleBinding housekeeper-hkd ",
        "ClusterRole housekeeper-hkd ",
        "removed the ServiceAccount housekeeper-system/hkd that every node shared",
    ] {
        ensure!(
            out.stdout.contains(want),
            "{want:?} missing:\n{}",
            out.stdout
        );
    }
    ensure!(
        sa.get_opt("hkd").await?.is_none(),
        "the shared account is still there"
    );
    ensure!(
        crb.get_opt("housekeeper-hkd").await?.is_none(),
        "its binding is still there"
    );
    support::wait_for(
        "the shared token refused",
        std::time::Duration::from_secs(30),
        || async {
            match Api::<Node>::all(old.clone())
                .list(&Default::default())
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 401 => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 403 => Ok(false),
                Ok(_) => Ok(false),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await?;
    Ok(())
}
