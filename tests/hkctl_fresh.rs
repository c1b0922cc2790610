//! hkctl on a cluster where Housekeeper was never installed: a kube-apiserver of this test's
//! own (the run's shared cluster has the CRD as soon as any test installs it).
//!
//! The test process leaves the run's cluster by forgetting `NEXTEST_RUN_ID`; `support` then
//! starts a cluster for this process alone, stopped when the process ends.

mod support;

#[path = "hkctl/sim.rs"]
mod sim;

use anyhow::{ensure, Result};
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
    Ok(())
}
