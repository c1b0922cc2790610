//! `hkctl` as an admin runs it, against the real API server (kube-apiserver v1.20.2 from
//! `support`): install twice (the coordinator's and a node's credential), every bad input of upgrade, status output (JSON golden), pause,
//! resume and abort changing what a real coordinator does, uninstall refused during a
//! rollout, a user without rights told what is missing, node history.
//!
//! Stand-ins: the kubelet (`support::kubelet`) and hkd's agents, simulated in `hkctl/sim.rs`
//! by writing the phase annotations; the coordinator is the real one, run in this process.

mod support;

#[path = "hkctl/sim.rs"]
mod sim;

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use housekeeper::cluster::annotations::{AgentPhase, CORDONED_BY_HKD, PHASE, PHASE_GRANT, SINCE};
use housekeeper::cluster::rbac;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;
use serde_json::json;
use sim::{hkctl_with, Rig, IMAGE};
use support::cluster::{client_from_kubeconfig_file, Cluster};
use support::{wait_for, TestEnv};

/// How long a rollout of a handful of simulated nodes may take on a busy 2-core machine.
const ROLLOUT: Duration = Duration::from_secs(90);

fn one_line(s: &str) -> bool {
    s.trim_end().lines().count() == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_twice_changes_nothing_the_second_time() -> Result<()> {
    let env = TestEnv::new("hkctl-install").await?;
    let admin = sim::admin_kubeconfig(env.cluster);
    let dir = tempfile::tempdir()?;
    let creds = dir.path().join("hkd-credentials");
    let kc = creds.to_str().context("path")?;
    // A node of this test's own: the run's other tests register Nodes of theirs meanwhile.
    let node = env.unique("n1");
    let args = ["install", "--credentials-dir", kc, "--node", &node];
    let first = hkctl_with(&admin, &args).await?.ok()?;
    for kind in [
        "CustomResourceDefinition updates.housekeeper.io".to_owned(),
        "Namespace housekeeper-system".to_owned(),
        "ServiceAccount housekeeper-system/hkd-coordinator".to_owned(),
        "ClusterRole housekeeper-coordinator".to_owned(),
        "ClusterRoleBinding housekeeper-coordinator".to_owned(),
        "Role housekeeper-system/housekeeper-coordinator".to_owned(),
        "RoleBinding default/housekeeper-coordinator".to_owned(),
        "Role housekeeper-system/housekeeper-node".to_owned(),
        "RoleBinding housekeeper-system/housekeeper-node".to_owned(),
        format!("ServiceAccount housekeeper-system/hkd-node-{node}"),
        format!("ClusterRole hkd-node-{node}"),
        format!("ClusterRoleBinding hkd-node-{node}"),
    ] {
        ensure!(
            first.stdout.contains(&kind),
            "{kind} missing:\n{}",
            first.stdout
        );
    }
    ensure!(
        first.stdout.matches("written (token valid until").count() == 2,
        "{}",
        first.stdout
    );
    let node_kc = creds.join(format!("nodes/{node}.kubeconfig"));
    for f in [&node_kc, &creds.join("coordinator.kubeconfig")] {
        let mode = std::fs::metadata(f)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", f.display());
    }

    let second = hkctl_with(&admin, &args).await?.ok()?;
    let lines: Vec<&str> = second.stdout.lines().collect();
    // The CRD, 10 cluster-wide objects, the node's 3, 2 kubeconfigs, the summary.
    ensure!(lines.len() == 17, "{}", second.stdout);
    for l in &lines[..16] {
        ensure!(
            l.contains(" unchanged"),
            "changed on the second run: {l}\n{}",
            second.stdout
        );
    }
    ensure!(
        lines[16].starts_with("nothing changed"),
        "{}",
        second.stdout
    );

    // The node's kubeconfig acts as that node (the Node authorizer): it may list Nodes, and
    // nothing beyond a kubelet's rights.
    let hkd = client_from_kubeconfig_file(&node_kc).await?;
    Api::<Node>::all(hkd.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("hkd listing Nodes")?;
    match Api::<Secret>::namespaced(hkd.clone(), "housekeeper-system")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => anyhow::bail!("hkd may list Secrets: {other:?}"),
    }
    // A rotation issues new tokens, and a changed object is put back (a label: other tests
    // of this run use the rules at the same time).
    let rotated = hkctl_with(
        &admin,
        &[
            "install",
            "--credentials-dir",
            kc,
            "--node",
            &node,
            "--rotate-token",
        ],
    )
    .await?
    .ok()?;
    ensure!(
        rotated.stdout.matches(" written").count() == 2,
        "{}",
        rotated.stdout
    );
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        env.admin.clone(),
        "housekeeper-system",
    )
    .patch(
        rbac::COORDINATOR_SERVICE_ACCOUNT,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {rbac::PART_OF.0: null}}})),
    )
    .await?;
    let repaired = hkctl_with(&admin, &args).await?.ok()?;
    ensure!(
        repaired.stdout.lines().any(|l| l
            .starts_with("ServiceAccount housekeeper-system/hkd-coordinator")
            && l.ends_with("updated")),
        "{}",
        repaired.stdout
    );
    ensure!(
        repaired.stdout.contains("installed: 1 change(s)"),
        "{}",
        repaired.stdout
    );
    // A credentials directory others may write is refused before anything is written.
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o777))?;
    let out = hkctl_with(&admin, &args).await?;
    ensure!(
        out.code == 1 && one_line(&out.stderr) && out.stderr.contains("writable by other users"),
        "{out:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_dry_run_prints_the_manifests_without_a_cluster() -> Result<()> {
    let out = hkctl_with(
        std::path::Path::new("/nonexistent"),
        &["install", "--dry-run", "-o", "yaml"],
    )
    .await?
    .ok()?;
    ensure!(out.stdout.contains("kind: \"CustomResourceDefinition\""));
    let yaml = rbac::yaml();
    ensure!(out.stdout.contains(&yaml[yaml.find("---").unwrap_or(0)..]));
    ensure!(
        out.stdout
            .contains("# Per-node objects are NOT included: the Nodes could not be listed"),
        "{}",
        out.stdout
    );
    let json = hkctl_with(
        std::path::Path::new("/nonexistent"),
        &[
            "install",
            "--dry-run",
            "-o",
            "json",
            "--node",
            "n1",
            "--node",
            "n2",
        ],
    )
    .await?
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&json.stdout)?;
    // The CRD, 10 cluster-wide objects, 3 for each node.
    ensure!(v["kind"] == "List" && v["items"].as_array().map(Vec::len) == Some(17));
    ensure!(json.stdout.contains("\"hkd-node-n2\""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_rights_is_told_which_permission_is_missing() -> Result<()> {
    let env = TestEnv::new("hkctl-limited").await?;
    support::crd::install_update_crd(&env.admin).await?;
    let Cluster::Local(l) = env.cluster else {
        anyhow::bail!("this test needs the local cluster's static token user");
    };
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("limited.kubeconfig");
    std::fs::write(
        &kc,
        support::local::kubeconfig(
            &l.server,
            &l.ca_cert,
            &l.limited_token,
            support::local::LIMITED_USER,
        ),
    )?;
    let creds = dir.path().join("hkd-credentials");
    let out = hkctl_with(
        &kc,
        &[
            "install",
            "--credentials-dir",
            creds.to_str().unwrap(),
            "--node",
            "n1",
        ],
    )
    .await?;
    ensure!(out.code == 1, "{out:?}");
    ensure!(one_line(&out.stderr), "{}", out.stderr);
    for want in [
        "hkctl install needs permissions",
        "create customresourcedefinitions.apiextensions.k8s.io (cluster-wide)",
        "create clusterroles.rbac.authorization.k8s.io (cluster-wide)",
        "create serviceaccounts/token in housekeeper-system",
        "nothing was changed",
    ] {
        ensure!(
            out.stderr.contains(want),
            "missing {want:?} in {}",
            out.stderr
        );
    }
    ensure!(!creds.exists(), "a credentials directory was made");
    // Reading a rollout without the right to: the server's words, on one line.
    let out = hkctl_with(&kc, &["-n", &env.ns, "status"]).await?;
    ensure!(out.code == 1 && one_line(&out.stderr), "{out:?}");
    ensure!(
        out.stderr.contains("permission denied")
            && out.stderr.contains("cannot list resource \"updates\""),
        "{}",
        out.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_refuses_every_bad_input_and_sends_nothing() -> Result<()> {
    let rig = Rig::new("hkctl-bad-input", 0, 1).await?;
    let sel = rig.selector();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["upgrade", "--image", "docker://no-transport/x"],
            1,
            "osImageURL",
        ),
        (
            &["upgrade", "--image", "hub.oepkgs.net/nestos/nestos:2"],
            1,
            "ostree-image-signed:docker://hub.oepkgs.net",
        ),
        (
            &["upgrade", "--image", IMAGE, "--max-unavailable", "0"],
            1,
            "maxUnavailable is 0",
        ),
        (
            &["upgrade", "--image", IMAGE, "--max-unavailable", "-2"],
            1,
            "maxUnavailable is -2",
        ),
        (
            &["upgrade", "--image", IMAGE, "--max-failed", "-1"],
            1,
            "maxFailed is -1",
        ),
        (
            &["upgrade", "--image", IMAGE, "--kube-version", "1.29"],
            1,
            "kubeVersion \"1.29\"",
        ),
        (
            &[
                "upgrade",
                "--image",
                IMAGE,
                "--window",
                "Sat 22:00-04:00 Europe/Atlantis",
            ],
            2,
            "time zone \"Europe/Atlantis\"",
        ),
        (
            &["upgrade", "--image", IMAGE, "--window", "Sat 22:00-22:00"],
            2,
            "both 22:00",
        ),
        (
            &["upgrade", "--image", IMAGE, "--selector", "zone in (a"],
            2,
            "unbalanced",
        ),
        (
            &["upgrade", "--image", IMAGE, "--drain-timeout", "soon"],
            2,
            "drain timeout \"soon\"",
        ),
        (
            &["upgrade", "--image", IMAGE, "--frobnicate"],
            2,
            "unexpected argument '--frobnicate'",
        ),
        (
            &["upgrade", "--max-unavailable", "2"],
            1,
            "a new Update needs --image REF",
        ),
    ];
    for (args, code, want) in cases {
        let mut args = args.to_vec();
        if !args.contains(&"--selector") {
            args.extend(["--selector", &sel]);
        }
        let out = rig.hkctl(&args).await?;
        ensure!(
            out.code == *code,
            "{args:?}: exit {} (want {code}): {}",
            out.code,
            out.stderr
        );
        ensure!(
            one_line(&out.stderr),
            "{args:?}: not one line:\n{}",
            out.stderr
        );
        ensure!(
            out.stderr.contains(want),
            "{args:?}: {want:?} not in {}",
            out.stderr
        );
        ensure!(out.stdout.is_empty(), "{args:?} printed {}", out.stdout);
    }
    let left = rig.updates().list(&ListParams::default()).await?.items;
    ensure!(left.is_empty(), "an Update was created: {left:?}");

    // A kubeconfig that is missing, that is not one, and one whose server is down.
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "this: [is not a kubeconfig")?;
    let down = dir.path().join("down");
    std::fs::write(
        &down,
        json!({"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x"})
        .to_string(),
    )?;
    for (kc, want) in [
        (
            dir.path().join("missing"),
            "does not exist: pass --kubeconfig FILE or set KUBECONFIG",
        ),
        (garbage, "cannot be read"),
        (down, "cannot reach the API server at https://127.0.0.1:1"),
    ] {
        let out = hkctl_with(&kc, &["upgrade", "--image", IMAGE]).await?;
        ensure!(out.code == 1 && one_line(&out.stderr), "{kc:?}: {out:?}");
        ensure!(
            out.stderr.contains(want),
            "{kc:?}: {want:?} not in {}",
            out.stderr
        );
    }
    Ok(())
}

/// The status document of a rollout in its middle, read from the real server, against the
/// golden file (names of this test's namespace replaced by NS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_table_of_a_rollout_in_its_middle() -> Result<()> {
    let rig = Rig::new("hkctl-status", 1, 3).await?;
    let sel = rig.selector();
    rig.hkctl(&[
        "upgrade",
        "--image",
        IMAGE,
        "--selector",
        &sel,
        "--max-unavailable",
        "2",
        "--max-failed",
        "1",
    ])
    .await?
    .ok()?;
    let u = rig.update("os").await?;
    let g = format!(
        "{}/{}",
        u.metadata.uid.clone().unwrap_or_default(),
        u.metadata.generation.unwrap_or(1)
    );
    // As the coordinator and the agents would have left it: cp-1 done, w-1 draining, w-2
    // failed, w-3 pending.
    let nodes: Api<Node> = Api::all(rig.env.admin.clone());
    let mark = |phase: &str, since: &str, reason: Option<&str>, image: Option<&str>| {
        json!({"metadata": {"annotations": {
            PHASE: phase, PHASE_GRANT: g, SINCE: since,
            "housekeeper.io/reason": reason,
            "housekeeper.io/os-image": image.unwrap_or(sim::OLD),
        }}})
    };
    for (node, patch) in [
        (
            &rig.control_plane[0],
            mark("Done", "2024-03-02T09:50:00Z", None, Some(IMAGE)),
        ),
        (
            &rig.workers[0],
            mark(
                "Draining",
                "2024-03-02T09:58:00Z",
                Some("draining: pod shop/db-0 blocked by PodDisruptionBudget shop/db"),
                None,
            ),
        ),
        (
            &rig.workers[1],
            mark(
                "Failed",
                "2024-03-02T09:55:30Z",
                Some("health check kubelet-ready failing"),
                None,
            ),
        ),
    ] {
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    nodes
        .patch(
            &rig.workers[0],
            &PatchParams::default(),
            &Patch::Merge(json!({
            "metadata": {"annotations": {CORDONED_BY_HKD: g}}, "spec": {"unschedulable": true}})),
        )
        .await?;
    // The coordinator's status, as it would write it: its term and the grants of cp-1, w-1
    // and w-2 in the ledger.
    let generation = u.metadata.generation.unwrap_or(1);
    let record = |at: &str| json!({"generation": generation, "term": 1, "grantedAt": at});
    let grants = json!({
        rig.control_plane[0].as_str(): record("2024-03-02T09:45:00Z"),
        rig.workers[0].as_str(): record("2024-03-02T09:51:00Z"),
        rig.workers[1].as_str(): record("2024-03-02T09:51:00Z"),
    });
    rig.updates()
        .patch_status("os", &PatchParams::default(), &Patch::Merge(json!({"status": {
            "coordinatorTerm": 1, "grants": grants,
            "observedGeneration": 1, "targetGeneration": 1,
            "target": {"osImageURL": IMAGE}, "state": "Progressing",
            "conditions": [{"type": "Progressing", "status": "True", "reason": "MaxUnavailable",
                "message": "maxUnavailable 2 reached", "lastTransitionTime": "2024-03-02T09:58:00Z"}],
            "counts": {"total": 4, "pending": 1, "waiting": 0, "inFlight": 1, "done": 1, "failed": 1},
        }})))
        .await?;
    let out = rig.hkctl(&["status", "-o", "json"]).await?.ok()?;
    let text = out.stdout.replace(&rig.env.ns, "NS");
    golden("tests/hkctl/status-live.json", &text)?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    ensure!(v["apiVersion"] == "hkctl.housekeeper.io/v1" && v["kind"] == "RolloutStatus");

    let table = rig.hkctl(&["status"]).await?.ok()?.stdout;
    ensure!(table.lines().all(|l| l.chars().count() <= 80), "{table}");
    ensure!(!table.contains('\x1b'), "colours on a pipe:\n{table}");
    // Long names are cut in the middle; their ends tell them apart.
    let row = |n: &str| {
        let end = &n[n.len() - 8..];
        table
            .lines()
            .find(|l| l.split(' ').next().is_some_and(|c| c.ends_with(end)))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    ensure!(
        row(&rig.workers[0]).contains("Draining") && row(&rig.workers[0]).contains("draining: pod"),
        "{table}"
    );
    ensure!(
        row(&rig.workers[1]).contains("Failed") && row(&rig.workers[1]).contains("health check"),
        "{table}"
    );
    ensure!(
        row(&rig.workers[2]).contains("Pending")
            && row(&rig.workers[2]).contains("next: a slot is free"),
        "{table}"
    );
    ensure!(row(&rig.control_plane[0]).contains("Done"), "{table}");
    ensure!(
        table.contains("Progress [") && table.contains("1/4 done"),
        "{table}"
    );
    let wide = rig.hkctl(&["status", "-o", "wide"]).await?.ok()?.stdout;
    ensure!(
        wide.contains(sim::OLD) && wide.contains("2024-03-02T09:58:00Z"),
        "{wide}"
    );
    let yaml = rig.hkctl(&["status", "-o", "yaml"]).await?.ok()?.stdout;
    ensure!(yaml.contains("kind: \"RolloutStatus\""), "{yaml}");
    Ok(())
}

/// Compare with a committed file; UPDATE_GOLDEN=1 rewrites it.
fn golden(rel: &str, actual: &str) -> Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual)?;
    }
    let expected = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {rel} (UPDATE_GOLDEN=1 writes it)"))?;
    ensure!(
        actual == expected,
        "{rel} differs (UPDATE_GOLDEN=1 rewrites it); got:\n{actual}"
    );
    Ok(())
}

async fn no_new_grant_for(rig: &Rig, d: Duration) -> Result<()> {
    let before = rig.grants().await?;
    tokio::time::sleep(d).await;
    let after = rig.grants().await?;
    ensure!(
        before == after,
        "granted while it should not:\nbefore {before:?}\nafter {after:?}"
    );
    Ok(())
}

async fn granted(rig: &Rig) -> Result<usize> {
    Ok(rig
        .grants()
        .await?
        .iter()
        .filter(|(_, g)| g.is_some())
        .count())
}

async fn in_flight(rig: &Rig) -> Result<usize> {
    let mut n = 0;
    for v in rig.views().await? {
        if let Some(g) = &v.grant {
            n += usize::from(!v.phase_for(g).is_some_and(AgentPhase::is_terminal));
        }
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_abort_change_what_the_coordinator_does() -> Result<()> {
    let rig = Rig::new("hkctl-steer", 0, 5).await?;
    let _c = rig.coordinator();
    let _agents = rig.agents(Duration::from_millis(300), &[]);
    let sel = rig.selector();
    let up = rig
        .hkctl(&["upgrade", "--image", IMAGE, "--selector", &sel])
        .await?
        .ok()?;
    ensure!(
        up.stdout.contains("Update") && up.stdout.contains("created"),
        "{}",
        up.stdout
    );
    ensure!(
        up.stdout.contains("5 match (0 control plane, 5 workers)"),
        "{}",
        up.stdout
    );
    ensure!(
        up.stdout.contains("  1. ") && up.stdout.contains("  5. "),
        "one at a time:\n{}",
        up.stdout
    );
    wait_for("a first grant", ROLLOUT, || async {
        Ok(granted(&rig).await? >= 1)
    })
    .await?;

    let p = rig.hkctl(&["pause"]).await?.ok()?;
    ensure!(p.stdout.contains("paused: no new grants"), "{}", p.stdout);
    let again = rig.hkctl(&["pause"]).await?.ok()?;
    ensure!(
        again.stdout.contains("already paused; nothing changed"),
        "{}",
        again.stdout
    );
    wait_for("the node in flight to finish", ROLLOUT, || async {
        Ok(in_flight(&rig).await? == 0)
    })
    .await?;
    let at_pause = granted(&rig).await?;
    no_new_grant_for(&rig, Duration::from_secs(3)).await?;
    let st = rig.hkctl(&["status", "-o", "json"]).await?.ok()?;
    let v: serde_json::Value = serde_json::from_str(&st.stdout)?;
    ensure!(
        v["state"] == "Paused" && v["paused"] == true,
        "{}",
        st.stdout
    );
    ensure!(
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["reason"] == "paused"),
        "pending rows do not say paused: {}",
        st.stdout
    );

    rig.hkctl(&["resume"]).await?.ok()?;
    wait_for("a grant after resume", ROLLOUT, || async {
        Ok(granted(&rig).await? > at_pause)
    })
    .await?;

    let a = rig.hkctl(&["abort"]).await?.ok()?;
    ensure!(
        a.stdout.contains("aborted: no new grants, ever"),
        "{}",
        a.stdout
    );
    let u = rig.update("os").await?;
    ensure!(u.spec.abort.is_some(), "abort not in the spec");
    wait_for("Halted, Aborted", ROLLOUT, || async {
        let u = rig.update("os").await?;
        let s = u.status.unwrap_or_default();
        Ok(s.state.as_deref() == Some("Halted")
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Halted" && c.status == "True" && c.reason == "Aborted"))
    })
    .await?;
    wait_for("the node in flight to finish", ROLLOUT, || async {
        Ok(in_flight(&rig).await? == 0)
    })
    .await?;
    let at_abort = granted(&rig).await?;
    ensure!(
        at_abort < 5,
        "every node was granted before the abort took effect"
    );
    no_new_grant_for(&rig, Duration::from_secs(3)).await?;
    let r = rig.hkctl(&["resume"]).await?;
    ensure!(r.code == 1 && r.stderr.contains("does not resume"), "{r:?}");
    let st = rig.hkctl(&["status"]).await?.ok()?;
    ensure!(
        st.stdout.contains("Halted (aborted)") && st.stdout.contains("aborted"),
        "{}",
        st.stdout
    );

    // What the nodes in flight do can still be changed; the same again changes nothing.
    let rb = rig
        .hkctl(&["abort", "--in-flight", "roll-back"])
        .await?
        .ok()?;
    ensure!(rb.stdout.contains("withdraw"), "{}", rb.stdout);
    let u = rig.update("os").await?;
    ensure!(
        u.spec.abort.map(|a| a.in_flight) == Some(housekeeper::cluster::update::InFlight::RollBack),
        "abort.inFlight is not rollBack"
    );
    let again = rig
        .hkctl(&["abort", "--in-flight", "roll-back"])
        .await?
        .ok()?;
    ensure!(again.stdout.contains("nothing changed"), "{}", again.stdout);

    // A new `upgrade` lifts the abort: the rollout goes on to the end.
    let up = rig.hkctl(&["upgrade", "--image", IMAGE]).await?.ok()?;
    ensure!(
        up.stdout.contains("abort of the earlier rollout is lifted"),
        "{}",
        up.stdout
    );
    wait_for("Complete after the new upgrade", ROLLOUT, || async {
        let u = rig.update("os").await?;
        Ok(u.status.and_then(|s| s.state).as_deref() == Some("Complete"))
    })
    .await?;
    ensure!(granted(&rig).await? == 5, "not every node was granted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_wait_follows_to_complete_or_fails_on_halt() -> Result<()> {
    let rig = Rig::new("hkctl-wait", 1, 2).await?;
    let _c = rig.coordinator();
    let failing = vec![rig.workers[1].clone()];
    let _agents = rig.agents(Duration::from_millis(150), &failing);
    let sel = rig.selector();
    let t0 = Instant::now();
    let out = rig
        .hkctl(&["upgrade", "--image", IMAGE, "--selector", &sel, "--wait"])
        .await?;
    ensure!(out.code == 1, "a halted rollout must fail --wait: {out:?}");
    ensure!(
        one_line(&out.stderr) && out.stderr.contains("halted"),
        "{}",
        out.stderr
    );
    ensure!(
        out.stdout.contains("Progress") || out.stdout.contains("["),
        "no progress shown:\n{}",
        out.stdout
    );
    ensure!(t0.elapsed() < ROLLOUT);

    // Raise the budget: the same Update completes, and --wait says so.
    let out = rig
        .hkctl(&["upgrade", "--max-failed", "1", "--wait"])
        .await?;
    ensure!(out.code == 0, "{out:?}");
    ensure!(out.stdout.contains("rollout complete"), "{}", out.stdout);

    // The history of the control-plane node: its grant and its Granted Event.
    let h = rig.hkctl(&["node", &rig.control_plane[0]]).await?.ok()?;
    ensure!(h.stdout.contains("control plane, Ready"), "{}", h.stdout);
    ensure!(h.stdout.contains("phase     Done"), "{}", h.stdout);
    ensure!(
        h.stdout.contains(&format!("(Update {}/os)", rig.env.ns)),
        "{}",
        h.stdout
    );
    ensure!(
        h.stdout.contains("Granted") && h.stdout.contains("housekeeper-coordinator"),
        "{}",
        h.stdout
    );
    let missing = rig.hkctl(&["node", "no-such-node"]).await?;
    ensure!(
        missing.code == 1 && missing.stderr.contains("there is no Node no-such-node"),
        "{missing:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_is_refused_during_a_rollout() -> Result<()> {
    let rig = Rig::new("hkctl-uninstall", 0, 1).await?;
    let sel = rig.selector();
    rig.hkctl(&["upgrade", "--image", IMAGE, "--selector", &sel])
        .await?
        .ok()?;
    rig.updates()
        .patch_status("os", &PatchParams::default(), &Patch::Merge(json!({"status": {
            "observedGeneration": 1, "state": "Progressing",
            "counts": {"total": 1, "pending": 0, "waiting": 0, "inFlight": 1, "done": 0, "failed": 0},
        }})))
        .await?;
    let out = rig.hkctl(&["uninstall"]).await?;
    ensure!(out.code == 1 && one_line(&out.stderr), "{out:?}");
    // The cluster is shared: other tests' rollouts may be named as well.
    let want = format!("Update {}/os (1 node(s) in flight)", rig.env.ns);
    ensure!(
        out.stderr.contains("a rollout is in progress: ")
            && out.stderr.contains(&want)
            && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    Api::<CustomResourceDefinition>::all(rig.env.admin.clone())
        .get("updates.housekeeper.io")
        .await
        .context("the CRD is gone after a refused uninstall")?;
    rig.update("os").await.context("the Update is gone")?;
    // Forced, as a dry run: what would go, the CRD last.
    let dry = rig
        .hkctl(&["uninstall", "--force", "--dry-run"])
        .await?
        .ok()?;
    let lines: Vec<&str> = dry.stdout.lines().collect();
    // The nodes' own objects (as many as the run's tests made), then the 11 of install and
    // the 2 of `install --fleetlock` (removed whether or not they were installed).
    let shared: Vec<&&str> = lines
        .iter()
        .filter(|l| !l.contains(" hkd-node-") && !l.contains("/hkd-node-"))
        .collect();
    ensure!(
        shared.len() == 13 && lines.iter().all(|l| l.ends_with("would be deleted")),
        "{}",
        dry.stdout
    );
    let first_shared = lines.iter().position(|l| l == shared[0]).unwrap_or(0);
    ensure!(
        lines[..first_shared]
            .iter()
            .all(|l| l.contains("hkd-node-")),
        "{}",
        dry.stdout
    );
    ensure!(
        lines[lines.len() - 1].starts_with("CustomResourceDefinition"),
        "{}",
        dry.stdout
    );
    Ok(())
}
