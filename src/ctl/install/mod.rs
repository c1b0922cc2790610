//! `hkctl install` and `hkctl uninstall`.
//!
//! Install applies, in order, the Update CRD and the cluster-wide manifests of
//! [`crate::cluster::rbac`] (namespace, the coordinator's ServiceAccount and roles, the
//! read-only Role of every node), then for every Node (or those named by `--node`) that
//! node's own ServiceAccount, ClusterRole and binding, and writes the kubeconfigs into the
//! credentials directory ([`credentials`]): `nodes/<node>.kubeconfig` for each node's hkd
//! (`/etc/hkd/kubeconfig` there) and `coordinator.kubeconfig` for the control-plane nodes'
//! (`/etc/hkd/coordinator.kubeconfig`). Last it removes the one ServiceAccount every node
//! shared before (`hkd`) and its roles, so that an old shared token loses its power.
//! `--dry-run` prints the manifests instead, for GitOps, with the per-node objects of the
//! Nodes it can list.
//!
//! Guarantees:
//! - idempotent: an object already as desired (every field the manifest sets has that value
//!   on the server) is left alone and reported `unchanged`; a second install changes nothing
//!   and says so;
//! - every permission install needs is asked of the API server (SelfSubjectAccessReview)
//!   before the first write: a user who may not do all of it is told what is missing, and
//!   nothing is written;
//! - a changed object is replaced whole with the resourceVersion read (a concurrent change is
//!   a 409, and re-running install converges);
//! - a kubeconfig is written only after its token was issued, whole or not at all (see
//!   [`credentials`]); the shared account is removed only after every credential was written.
//!
//! The kubeconfigs' tokens (minted and kept in `kubeconfig`): a TokenRequest for the
//! ServiceAccount, valid for `--token-ttl` (a year by default). Long-lived ServiceAccount
//! token Secrets need the token controller and are no longer made by Kubernetes since 1.24; a
//! requested token expires on its own, is bound to the ServiceAccount's uid (deleting the
//! ServiceAccount revokes every token at once: `hkctl revoke NODE`), and is re-issued by
//! re-running install (`--rotate-token` forces it; install renews a token with less than a
//! tenth of its time left, or one the API server no longer accepts).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use super::{Check, Ctx};
use crate::cluster::rbac;
use crate::cluster::update;

mod credentials;
mod kubeconfig;

pub use credentials::{revoke, CredentialsDir};
use kubeconfig::write_kubeconfig;
pub use kubeconfig::{kubeconfig_text, token_claims, Identity, TokenClaims};

/// Where hkd reads its node's kubeconfig (its configuration's `kubernetes.kubeconfig`).
pub const NODE_KUBECONFIG: &str = "/etc/hkd/kubeconfig";

/// Where hkd on a control-plane node reads the coordinator's kubeconfig
/// (`kubernetes.coordinator_kubeconfig`).
pub const COORDINATOR_KUBECONFIG: &str = "/etc/hkd/coordinator.kubeconfig";

/// How long `--dry-run` waits for the list of Nodes before printing without them.
const DRY_RUN_LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the CRD may take to be Established after its creation.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);

/// Every object install applies, in order: the CRD first, then the namespace and what lives
/// in it.
pub fn manifests() -> Vec<Value> {
    let mut crd = serde_json::to_value(update::crd()).expect("a CRD serialises");
    if let Some(o) = crd.as_object_mut() {
        let mut out = serde_json::Map::new();
        out.insert("apiVersion".into(), "apiextensions.k8s.io/v1".into());
        out.insert("kind".into(), "CustomResourceDefinition".into());
        for (k, v) in std::mem::take(o) {
            out.entry(k).or_insert(v);
        }
        crd = Value::Object(out);
    }
    let mut all = vec![crd];
    all.extend(rbac::manifests());
    all
}

/// The Nodes whose credentials install issues: `named` when given, else every Node.
async fn target_nodes(ctx: &Ctx, named: &[String]) -> Result<Vec<String>> {
    if !named.is_empty() {
        for n in named {
            rbac::check_node_name(n).map_err(anyhow::Error::msg)?;
        }
        return Ok(named.to_vec());
    }
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api
            .list_metadata(&lp)
            .await
            .map_err(|e| ctx.fail("listing Nodes", e))?;
        names.extend(page.items.iter().map(|n| n.name_any()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    for n in &names {
        // The API server checked it; a file name is made of it, so once more.
        rbac::check_node_name(n).map_err(|e| anyhow::anyhow!("a Node in the cluster: {e}"))?;
    }
    names.sort();
    Ok(names)
}

/// The Nodes `--dry-run` prints objects for: the named ones, or those the cluster lists, or
/// why it could not list them.
pub async fn dry_run_nodes(
    target: &super::ClusterTarget,
    named: &[String],
) -> std::result::Result<Vec<String>, String> {
    if !named.is_empty() {
        for n in named {
            rbac::check_node_name(n)?;
        }
        return Ok(named.to_vec());
    }
    let listed = async {
        let ctx = super::connect(target).await?;
        target_nodes(&ctx, &[]).await
    };
    match tokio::time::timeout(DRY_RUN_LIST_TIMEOUT, listed).await {
        Ok(Ok(nodes)) => Ok(nodes),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!(
            "the API server did not answer within {DRY_RUN_LIST_TIMEOUT:?}"
        )),
    }
}

/// The manifests as YAML documents, or as one JSON `List`: the cluster-wide ones, then each
/// of `nodes`' own; when the Nodes could not be listed, the YAML says so in a comment (and
/// the log in either format).
pub fn print_manifests(
    format: Format,
    nodes: &std::result::Result<Vec<String>, String>,
    fleetlock: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let mut all = manifests();
    if fleetlock {
        all.extend(rbac::fleetlock_manifests());
    }
    let note = match nodes {
        Ok(nodes) => {
            for n in nodes {
                all.extend(rbac::node_manifests(n));
            }
            format!(
                "# Per-node objects for {} Node(s); each node also needs its kubeconfig: hkctl install writes them.\n",
                nodes.len()
            )
        }
        Err(why) => {
            tracing::warn!(
                "the per-node objects are left out: the Nodes could not be listed ({why}); \
                 pass --node NAME for each node"
            );
            format!(
                "# Per-node objects are NOT included: the Nodes could not be listed ({}); pass --node NAME for each node.\n",
                why.replace('\n', " ")
            )
        }
    };
    match format {
        Format::Yaml => {
            let mut text = String::from(
                "# Housekeeper's cluster side: the Update CRD, hkd's namespace, the coordinator's and the nodes' identities.\n",
            );
            text.push_str(&note);
            for m in &all {
                text.push_str("---\n");
                crate::cluster::yaml::emit(m, &mut text);
            }
            out.write_all(text.as_bytes())?;
        }
        Format::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": all});
            serde_json::to_writer_pretty(&mut *out, &list)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// A manifest's kind, its resource and whether it is namespaced.
fn resource_of(m: &Value) -> Result<(ApiResource, &'static str, bool)> {
    let kind = m["kind"].as_str().unwrap_or_default();
    let (group, version, plural, namespaced) = match kind {
        "CustomResourceDefinition" => (
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            false,
        ),
        "Namespace" => ("", "v1", "namespaces", false),
        "ServiceAccount" => ("", "v1", "serviceaccounts", true),
        "ClusterRole" => ("rbac.authorization.k8s.io", "v1", "clusterroles", false),
        "ClusterRoleBinding" => (
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            false,
        ),
        "Role" => ("rbac.authorization.k8s.io", "v1", "roles", true),
        "RoleBinding" => ("rbac.authorization.k8s.io", "v1", "rolebindings", true),
        other => bail!("no resource known for kind {other}"),
    };
    let api_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok((
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version,
            kind: kind.into(),
            plural: plural.into(),
        },
        plural,
        namespaced,
    ))
}

fn group_of(m: &Value) -> &'static str {
    match m["apiVersion"].as_str().unwrap_or_default() {
        "apiextensions.k8s.io/v1" => "apiextensions.k8s.io",
        "rbac.authorization.k8s.io/v1" => "rbac.authorization.k8s.io",
        _ => "",
    }
}

fn api_for(ctx: &Ctx, m: &Value) -> Result<(Api<DynamicObject>, String)> {
    let (ar, _, namespaced) = resource_of(m)?;
    let name = m["metadata"]["name"].as_str().unwrap_or_default();
    let ns = m["metadata"]["namespace"].as_str();
    let what = match ns {
        Some(ns) => format!("{} {ns}/{name}", ar.kind),
        None => format!("{} {name}", ar.kind),
    };
    let api = match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        _ => Api::all_with(ctx.client.clone(), &ar),
    };
    Ok((api, what))
}

/// Whether every field `want` sets has the same value in `have` (maps: key by key; lists:
/// item by item, same length). What the server adds (defaults, metadata) does not count.
pub fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, wv)| {
            h.get(k).is_some_and(|hv| covers(hv, wv)) || (wv.is_null() && !h.contains_key(k))
        }),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| covers(hv, wv))
        }
        (Value::Number(h), Value::Number(w)) => h.as_f64() == w.as_f64(),
        (h, w) => h == w,
    }
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Updated,
    Unchanged,
}

impl ApplyOutcome {
    fn word(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Updated => "updated",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

/// Bring one object to `want`.
async fn apply(ctx: &Ctx, want: &Value) -> Result<(String, ApplyOutcome)> {
    let (api, what) = api_for(ctx, want)?;
    let name = want["metadata"]["name"].as_str().unwrap_or_default();
    let have = api
        .get_opt(name)
        .await
        .map_err(|e| ctx.fail(&format!("reading {what}"), e))?;
    let object: DynamicObject = serde_json::from_value(want.clone())?;
    let Some(have) = have else {
        api.create(&PostParams::default(), &object)
            .await
            .map_err(|e| ctx.fail(&format!("creating {what}"), e))?;
        return Ok((what, ApplyOutcome::Created));
    };
    let have_value = serde_json::to_value(&have)?;
    if covers(&have_value, want) {
        return Ok((what, ApplyOutcome::Unchanged));
    }
    // Replace: the manifest's fields, the server's other top-level fields (a ServiceAccount's
    // secrets, a Namespace's spec), the labels others added, and the resourceVersion read.
    let mut body = want.clone();
    for (k, v) in have_value.as_object().into_iter().flatten() {
        if k != "status" && body.get(k).is_none() {
            body[k] = v.clone();
        }
    }
    let mut labels = have.labels().clone();
    for (k, v) in want["metadata"]["labels"].as_object().into_iter().flatten() {
        labels.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
    }
    body["metadata"]["labels"] = json!(labels);
    body["metadata"]["resourceVersion"] = json!(have.resource_version());
    let object: DynamicObject = serde_json::from_value(body)?;
    api.replace(name, &PostParams::default(), &object)
        .await
        .map_err(|e| ctx.fail(&format!("updating {what}"), e))?;
    Ok((what, ApplyOutcome::Updated))
}

/// The permissions install needs, asked before anything is written.
fn install_checks(all: &[Value], tokens: bool, list_nodes: bool) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for m in all {
        let (_, plural, namespaced) = resource_of(m)?;
        let ns = m["metadata"]["namespace"].as_str().filter(|_| namespaced);
        for verb in ["get", "create", "update"] {
            let c = Check::new(verb, group_of(m), plural);
            checks.push(match ns {
                Some(ns) => c.in_ns(ns),
                None => c,
            });
        }
    }
    if list_nodes {
        checks.push(Check::new("list", "", "nodes"));
    }
    if tokens {
        checks.push(
            Check::new("create", "", "serviceaccounts")
                .subresource("token")
                .in_ns(update::NAMESPACE),
        );
        checks.push(Check::new(
            "create",
            "authentication.k8s.io",
            "tokenreviews",
        ));
    }
    for (kind, ns, _) in rbac::legacy_objects() {
        let (_, plural, _) = resource_of(&json!({"kind": kind}))?;
        let group = if kind == "ServiceAccount" {
            ""
        } else {
            "rbac.authorization.k8s.io"
        };
        let c = Check::new("delete", group, plural);
        checks.push(match ns {
            Some(ns) => c.in_ns(ns),
            None => c,
        });
    }
    Ok(checks)
}

/// Options of `hkctl install`.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Where to write the kubeconfigs; `None`: write none (the objects are still applied).
    pub credentials_dir: Option<PathBuf>,
    /// The Nodes to issue credentials for; empty: every Node in the cluster.
    pub nodes: Vec<String>,
    /// The API server URL the nodes use; default: the admin kubeconfig's.
    pub server: Option<String>,
    pub token_ttl: Duration,
    pub rotate_token: bool,
    pub context: Option<String>,
    /// Also give the coordinator the rights to cordon and drain FleetLock nodes.
    pub fleetlock: bool,
}

/// `hkctl install`.
pub async fn install(ctx: &Ctx, opts: &InstallOptions, out: &mut dyn Write) -> Result<()> {
    let mut all = manifests();
    if opts.fleetlock {
        all.extend(rbac::fleetlock_manifests());
    }
    let mut kinds = all.clone();
    kinds.extend(rbac::node_manifests("n"));
    ctx.require(
        "hkctl install",
        &install_checks(
            &kinds,
            opts.credentials_dir.is_some(),
            opts.nodes.is_empty(),
        )?,
    )
    .await?;
    // The directory before the first write to the cluster: a bad one stops install early.
    let dir = opts
        .credentials_dir
        .as_deref()
        .map(CredentialsDir::prepare)
        .transpose()?;
    let nodes = target_nodes(ctx, &opts.nodes).await?;
    let mut changed = 0;
    for m in &all {
        let (what, outcome) = apply(ctx, m).await?;
        writeln!(out, "{:<58} {}", what, outcome.word())?;
        changed += usize::from(outcome != ApplyOutcome::Unchanged);
        if m["kind"] == "CustomResourceDefinition" {
            wait_established(ctx, m["metadata"]["name"].as_str().unwrap_or_default()).await?;
        }
    }
    if nodes.is_empty() {
        writeln!(out, "no Nodes in the cluster: no node credentials issued (run install again once they joined, or pass --node NAME)")?;
    }
    let mut written = 0;
    for node in &nodes {
        for m in rbac::node_manifests(node) {
            let (what, outcome) = apply(ctx, &m).await?;
            writeln!(out, "{:<58} {}", what, outcome.word())?;
            changed += usize::from(outcome != ApplyOutcome::Unchanged);
        }
        if let Some(dir) = &dir {
            let path = dir.node(node)?;
            let (line, wrote) = write_kubeconfig(ctx, opts, &Identity::node(node), &path).await?;
            writeln!(out, "{line}")?;
            written += usize::from(wrote);
        }
    }
    if let Some(dir) = &dir {
        let path = dir.coordinator();
        let (line, wrote) = write_kubeconfig(ctx, opts, &Identity::coordinator(), &path).await?;
        writeln!(out, "{line}")?;
        written += usize::from(wrote);
    }
    changed += written + remove_shared_account(ctx, out).await?;
    if let (Some(dir), true) = (&dir, written > 0) {
        writeln!(
            out,
            "copy {}/{}/NODE.kubeconfig to {NODE_KUBECONFIG} (mode 0600) on each node, and {} to \
             {COORDINATOR_KUBECONFIG} on the control-plane nodes (kubernetes.coordinate = true); \
             hkd reads them at start",
            dir.root().display(),
            credentials::NODES_DIR,
            dir.coordinator().display(),
        )?;
    }
    if changed == 0 {
        writeln!(
            out,
            "nothing changed: Housekeeper was already installed as this hkctl installs it"
        )?;
    } else {
        writeln!(out, "installed: {changed} change(s)")?;
    }
    Ok(())
}

/// Delete the ServiceAccount every node shared before, and its roles; returns how many
/// objects were there.
async fn remove_shared_account(ctx: &Ctx, out: &mut dyn Write) -> Result<usize> {
    let mut removed = 0;
    for (kind, ns, name) in rbac::legacy_objects() {
        let m = json!({
            "apiVersion": if kind == "ServiceAccount" { "v1" } else { "rbac.authorization.k8s.io/v1" },
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
        });
        let (api, what) = api_for(ctx, &m)?;
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                writeln!(out, "{what:<58} deleted")?;
                removed += 1;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(ctx.fail(&format!("deleting {what}"), e)),
        }
    }
    if removed > 0 {
        writeln!(
            out,
            "removed the ServiceAccount {}/{} that every node shared: its tokens are refused from \
             now on, so nodes still using it stop until they have their own kubeconfig",
            update::NAMESPACE,
            rbac::LEGACY_SERVICE_ACCOUNT
        )?;
    }
    Ok(removed)
}

async fn wait_established(ctx: &Ctx, name: &str) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let deadline = tokio::time::Instant::now() + ESTABLISHED_TIMEOUT;
    loop {
        let crd = api
            .get(name)
            .await
            .map_err(|e| ctx.fail(&format!("reading CustomResourceDefinition {name}"), e))?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("CustomResourceDefinition {name} is not Established after {ESTABLISHED_TIMEOUT:?}: see kubectl describe crd {name}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Options of `hkctl uninstall`.
#[derive(Debug, Clone, Copy)]
pub struct UninstallOptions {
    pub force: bool,
    pub dry_run: bool,
}

/// Why uninstalling now would strand a rollout, if it would.
async fn rollouts_in_progress(ctx: &Ctx) -> Result<Vec<String>> {
    let api: Api<update::Update> = Api::all(ctx.client.clone());
    let updates = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Vec::new()),
        Err(e) => return Err(ctx.fail("listing Updates", e)),
    };
    Ok(updates
        .iter()
        .filter_map(|u| {
            let s = u.status.clone().unwrap_or_default();
            let busy = s.counts.in_flight > 0 || s.state.as_deref() == Some("Progressing");
            busy.then(|| {
                format!(
                    "Update {}/{} ({} node(s) in flight)",
                    u.namespace().unwrap_or_default(),
                    u.name_any(),
                    s.counts.in_flight
                )
            })
        })
        .collect())
}

/// The per-node objects on the server (found by their [`rbac::NODE_LABEL`] label), as
/// manifests naming them, ServiceAccounts first.
async fn node_objects(ctx: &Ctx) -> Result<Vec<Value>> {
    let lp = ListParams::default().labels(rbac::NODE_LABEL);
    let mut out = Vec::new();
    for m in rbac::node_manifests("n") {
        let (api, _) = api_for(ctx, &m)?;
        let kind = m["kind"].as_str().unwrap_or_default();
        let listed = api
            .list_metadata(&lp)
            .await
            .map_err(|e| ctx.fail(&format!("listing the nodes' {kind}s"), e))?;
        for o in listed.items {
            out.push(json!({
                "apiVersion": m["apiVersion"],
                "kind": kind,
                "metadata": {"name": o.name_any(), "namespace": o.metadata.namespace},
            }));
        }
    }
    Ok(out)
}

/// `hkctl uninstall`: refuses while a rollout is in progress unless forced; deletes in the
/// reverse order of install (the CRD last: deleting it deletes every Update), the nodes' own
/// objects first.
pub async fn uninstall(ctx: &Ctx, opts: UninstallOptions, out: &mut dyn Write) -> Result<()> {
    let mut all = manifests();
    all.extend(rbac::fleetlock_manifests());
    let busy = rollouts_in_progress(ctx).await?;
    if !busy.is_empty() && !opts.force {
        bail!(
            "a rollout is in progress: {}; pause or abort it and let its nodes finish, or pass \
             --force (nodes in flight are then left as they are); nothing was deleted",
            busy.join(", ")
        );
    }
    let mut checks = Vec::new();
    for m in all.iter().chain(&rbac::node_manifests("n")) {
        let (_, plural, namespaced) = resource_of(m)?;
        let c = Check::new("delete", group_of(m), plural);
        checks.push(
            match m["metadata"]["namespace"].as_str().filter(|_| namespaced) {
                Some(ns) => c.in_ns(ns),
                None => c,
            },
        );
    }
    if !opts.dry_run {
        ctx.require("hkctl uninstall", &checks).await?;
    }
    let nodes = node_objects(ctx).await?;
    let mut order: Vec<&Value> = nodes.iter().collect();
    order.extend(all.iter().skip(1).rev());
    order.push(&all[0]);
    for m in order {
        let (api, what) = api_for(ctx, m)?;
        let name = m["metadata"]["name"].as_str().unwrap_or_default();
        if opts.dry_run {
            writeln!(out, "{what:<58} would be deleted")?;
            continue;
        }
        let word = match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => "deleted",
            Err(kube::Error::Api(s)) if s.code == 404 => "absent",
            Err(e) => return Err(ctx.fail(&format!("deleting {what}"), e)),
        };
        writeln!(out, "{what:<58} {word}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_ignores_what_the_server_adds() {
        let want =
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "rules": [{"verbs": ["get"]}]});
        let have = json!({"metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
                          "rules": [{"verbs": ["get"], "apiGroups": [""]}]});
        assert!(covers(&have, &want));
        let changed = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "rules": [{"verbs": ["get", "list"]}]});
        assert!(!covers(&have, &changed));
        assert!(covers(&json!({"n": 1.0}), &json!({"n": 1})));
    }

    #[test]
    fn manifests_start_with_the_crd_and_name_their_kind() {
        let all = manifests();
        assert_eq!(all[0]["kind"], "CustomResourceDefinition");
        assert_eq!(all[0]["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(all[1]["kind"], "Namespace");
        for m in &all {
            resource_of(m).unwrap();
        }
        let mut yaml = Vec::new();
        let nodes = Ok(vec!["a".to_owned(), "b".to_owned()]);
        print_manifests(Format::Yaml, &nodes, false, &mut yaml).unwrap();
        let yaml = String::from_utf8(yaml).unwrap();
        assert_eq!(yaml.matches("\n---\n").count(), all.len() + 6);
        assert!(yaml.contains("name: \"hkd-node-b\""));
        let mut yaml = Vec::new();
        print_manifests(Format::Yaml, &Err("no cluster".into()), false, &mut yaml).unwrap();
        let yaml = String::from_utf8(yaml).unwrap();
        assert_eq!(yaml.matches("\n---\n").count(), all.len());
        assert!(yaml.contains(
            "Per-node objects are NOT included: the Nodes could not be listed (no cluster)"
        ));
    }
}
