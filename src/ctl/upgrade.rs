//! `hkctl upgrade`: create or change the Update, after the coordinator's own validation
//! ([`validate`]), and say what will happen — in the order the coordinator's planner grants,
//! found by running that planner forward ([`super::preview`]). `--wait` follows the rollout to its
//! end.
//!
//! Guarantees: nothing is sent before the whole spec validates; the write is one create, or
//! one replace with the resourceVersion read (a concurrent change is refused, not merged).

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::preview::{describe, preview};
use super::render::{self, Term};
use super::view::{self, RolloutStatus};
use super::Ctx;
use crate::cluster::gates::{AlertFilter, GateQuery, Gates};
use crate::cluster::update::{validate, ImagePolicy, Update, UpdateSpec};
use crate::cluster::window::Window;

/// The Update's name when the namespace has none yet.
pub const DEFAULT_NAME: &str = "os";

/// What the command line asks to set; `None`: keep (or the default for a new Update).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub image: Option<String>,
    pub kube_version: Option<String>,
    pub max_unavailable: Option<i32>,
    pub max_failed: Option<i32>,
    pub selector: Option<LabelSelector>,
    pub max_unavailable_per_zone: Option<i32>,
    pub max_unavailable_zones: Option<i32>,
    pub topology_key: Option<String>,
    pub blocking_pod_selector: Option<LabelSelector>,
    pub gates: GateChanges,
    pub webhook: Option<String>,
    pub staging_max_concurrent: Option<i32>,
    /// `Some(empty)`: no windows.
    pub windows: Option<Vec<Window>>,
    pub drain_timeout_seconds: Option<i64>,
    pub evict_pod_force: Option<bool>,
}

/// The reboot gates the command line names; queries and alerts given replace the Update's.
#[derive(Debug, Clone, Default)]
pub struct GateChanges {
    pub prometheus_url: Option<String>,
    pub credentials: Option<bool>,
    pub queries: Vec<GateQuery>,
    pub alerts: Vec<AlertFilter>,
}

/// The spec after `changes`, over `base` (an existing Update's spec) or the defaults.
pub fn apply_changes(base: Option<&UpdateSpec>, changes: &Changes) -> Result<UpdateSpec, String> {
    let mut spec = match base {
        Some(s) => s.clone(),
        None => {
            let image = changes
                .image
                .clone()
                .ok_or("a new Update needs --image REF")?;
            serde_json::from_value(serde_json::json!({ "osImageURL": image }))
                .map_err(|e| e.to_string())?
        }
    };
    if let Some(i) = &changes.image {
        spec.os_image_url = i.clone();
    }
    if let Some(k) = &changes.kube_version {
        spec.kube_version = Some(k.clone()).filter(|k| !k.is_empty());
    }
    if let Some(m) = changes.max_unavailable {
        spec.max_unavailable = m;
    }
    if let Some(m) = changes.max_failed {
        spec.max_failed = m;
    }
    if let Some(s) = &changes.selector {
        spec.node_selector = Some(s.clone());
    }
    if let Some(m) = changes.max_unavailable_per_zone {
        spec.max_unavailable_per_zone = Some(m);
    }
    if let Some(m) = changes.max_unavailable_zones {
        spec.max_unavailable_zones = Some(m);
    }
    if let Some(k) = &changes.topology_key {
        spec.topology_key = Some(k.clone());
    }
    if let Some(s) = &changes.blocking_pod_selector {
        spec.blocking_pod_selector = Some(s.clone());
    }
    if let Some(m) = changes.staging_max_concurrent {
        spec.staging = Some(crate::cluster::update::Staging { max_concurrent: m });
    }
    if let Some(url) = &changes.webhook {
        spec.notifications = Some(crate::cluster::notify::Notifications {
            webhook_url: url.clone(),
        });
    }
    let g = &changes.gates;
    if g.prometheus_url.is_some() || !g.queries.is_empty() || !g.alerts.is_empty() {
        let mut gates = match (spec.gates.take(), &g.prometheus_url) {
            (Some(old), _) => old,
            (None, Some(url)) => Gates {
                prometheus_url: url.clone(),
                credentials: false,
                timeout_seconds: 3,
                queries: Vec::new(),
                alerts: Vec::new(),
            },
            (None, None) => return Err("--gate and --gate-alert need --prometheus URL".into()),
        };
        if let Some(url) = &g.prometheus_url {
            gates.prometheus_url = url.clone();
        }
        if !g.queries.is_empty() {
            gates.queries = g.queries.clone();
        }
        if !g.alerts.is_empty() {
            gates.alerts = g.alerts.clone();
        }
        spec.gates = Some(gates);
    }
    if let (Some(c), Some(gates)) = (g.credentials, spec.gates.as_mut()) {
        gates.credentials = c;
    }
    if let Some(w) = &changes.windows {
        spec.maintenance_windows = w.clone();
    }
    if let Some(t) = changes.drain_timeout_seconds {
        spec.drain.timeout_seconds = t;
    }
    if let Some(f) = changes.evict_pod_force {
        spec.evict_pod_force = f;
    }
    // A new rollout: an earlier abort no longer holds.
    spec.abort = None;
    Ok(spec)
}

/// Validate as the coordinator does; one line for all problems.
pub fn check(spec: &UpdateSpec, policy: ImagePolicy) -> Result<()> {
    validate(spec, policy).map_err(|errors| {
        anyhow!(
            "the Update would be refused: {}; nothing was sent",
            errors.join("; ")
        )
    })
}

/// Options of `hkctl upgrade`.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub name: Option<String>,
    pub changes: Changes,
    pub policy: ImagePolicy,
    pub dry_run: bool,
    pub wait: bool,
}

/// `hkctl upgrade`.
pub async fn upgrade(
    ctx: &Ctx,
    opts: &UpgradeOptions,
    term: Term,
    out: &mut dyn Write,
) -> Result<()> {
    // What can be checked without the cluster is checked first.
    if let Some(image) = &opts.changes.image {
        let mut changes = opts.changes.clone();
        if changes.gates.prometheus_url.is_none() {
            // Gates named without a URL change the existing Update's: checked once it is read.
            changes.gates = GateChanges::default();
        }
        let probe = apply_changes(
            None,
            &Changes {
                image: Some(image.clone()),
                ..changes
            },
        )
        .map_err(|e| anyhow!("{e}"))?;
        check(&probe, opts.policy)?;
    }
    ctx.require_crd().await?;
    let api = ctx.updates();
    let ns = &ctx.namespace;
    let existing = match &opts.name {
        Some(n) => api
            .get_opt(n)
            .await
            .map_err(|e| ctx.fail(&format!("reading Update {ns}/{n}"), e))?,
        None => {
            let all = api
                .list(&Default::default())
                .await
                .map_err(|e| ctx.fail(&format!("listing Updates in {ns}"), e))?
                .items;
            match all.len() {
                0 => None,
                1 => all.into_iter().next(),
                n => bail!(
                    "{n} Updates in {ns} ({}): name one with --update NAME",
                    all.iter()
                        .map(|u| u.name_any())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let name = existing
        .as_ref()
        .map(|u| u.name_any())
        .or_else(|| opts.name.clone())
        .unwrap_or_else(|| DEFAULT_NAME.to_owned());
    let spec = apply_changes(existing.as_ref().map(|u| &u.spec), &opts.changes)
        .map_err(|e| anyhow!("{e}"))?;
    check(&spec, opts.policy)?;
    let lifted = existing.as_ref().is_some_and(|u| u.spec.abort.is_some());
    let mut update = match &existing {
        Some(u) => {
            let mut u = u.clone();
            u.spec = spec;
            u.metadata.generation = u.metadata.generation.map(|g| g + 1);
            u
        }
        None => {
            let mut u = Update::new(&name, spec);
            u.metadata.namespace = Some(ns.clone());
            u
        }
    };
    let unchanged = existing.as_ref().is_some_and(|u| u.spec == update.spec);
    let mut nodes = super::status::list_nodes(ctx).await?;
    crate::cluster::ledger::attach(&mut nodes, &super::status::all_updates(ctx).await?);
    let now = Timestamp::now();
    let p = preview(&update, &nodes, now, opts.policy);
    let verb = match (&existing, unchanged, opts.dry_run) {
        (_, true, _) => "is already as asked",
        (None, _, true) => "would be created",
        (Some(_), _, true) => "would be changed",
        (None, _, false) => "created",
        (Some(_), _, false) => "changed",
    };
    if !opts.dry_run && !unchanged {
        let pp = PostParams::default();
        update = match &existing {
            None => api.create(&pp, &update).await.map_err(|e| ctx.fail(&format!("creating Update {ns}/{name}"), e))?,
            Some(_) => match api.replace(&name, &pp, &update).await {
                Ok(u) => u,
                Err(kube::Error::Api(s)) if s.code == 409 => bail!(
                    "Update {ns}/{name} changed while hkctl read it; nothing was written: run the command again"
                ),
                Err(e) => return Err(ctx.fail(&format!("changing Update {ns}/{name}"), e)),
            },
        };
    }
    for l in describe(&update, &p, verb, now, term.width) {
        writeln!(out, "{l}")?;
    }
    if lifted && !opts.dry_run {
        writeln!(
            out,
            "  {:<10} the abort of the earlier rollout is lifted",
            "abort"
        )?;
    }
    out.flush()?;
    if opts.wait && !opts.dry_run {
        let generation = update.metadata.generation.unwrap_or(1);
        return wait(ctx, &name, generation, term, super::stdout_is_tty(), out).await;
    }
    Ok(())
}

/// The document from what the Update's status says (its bounded node list), for `--wait`.
fn stored(u: &Update) -> RolloutStatus {
    let mut s = view::build(u, &[], Timestamp::now());
    let st = u.status.clone().unwrap_or_default();
    s.counts = st.counts.clone();
    s.nodes = st
        .nodes
        .iter()
        .map(|n| view::NodeRow {
            name: n.name.clone(),
            role: view::Role::Worker,
            phase: n.phase.clone(),
            current: None,
            since: n.since.clone(),
            reason: n.reason.clone(),
        })
        .collect();
    s
}

/// Follow the Update until it is Complete (Ok) or Halted (an error naming why).
pub async fn wait(
    ctx: &Ctx,
    name: &str,
    generation: i64,
    term: Term,
    tty: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let ns = &ctx.namespace;
    let mut stream = watcher(
        ctx.updates(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .boxed();
    let mut last_line = String::new();
    let mut idle = tokio::time::interval(Duration::from_secs(30));
    idle.tick().await;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = idle.tick() => {
                if last_line.is_empty() {
                    writeln!(out, "waiting for the coordinator to take up generation {generation}; is hkd running on the nodes?")?;
                }
                continue;
            }
        };
        let u = match ev {
            Some(Ok(watcher::Event::Apply(u))) | Some(Ok(watcher::Event::InitApply(u))) => u,
            Some(Ok(watcher::Event::Delete(_))) => {
                bail!("Update {ns}/{name} was deleted while hkctl waited")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::warn!("watching Update {ns}/{name}: {e}");
                continue;
            }
            None => bail!("the watch on Update {ns}/{name} ended"),
        };
        let st = u.status.clone().unwrap_or_default();
        if st.observed_generation.unwrap_or(0) < generation {
            continue;
        }
        let s = stored(&u);
        let line = render::progress_line(&s, term);
        if line != last_line {
            if tty {
                write!(out, "\r{line}\x1b[K")?;
            } else {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            last_line = line;
        }
        let why = |t: &str| {
            st.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| {
                    if c.message.is_empty() {
                        c.reason.clone()
                    } else {
                        c.message.clone()
                    }
                })
                .unwrap_or_default()
        };
        match st.state.as_deref() {
            Some("Complete") => {
                if tty {
                    writeln!(out)?;
                }
                writeln!(out, "rollout complete: {}", why("Complete"))?;
                return Ok(());
            }
            Some("Halted") => {
                if tty {
                    writeln!(out)?;
                }
                bail!(
                    "the rollout of Update {ns}/{name} halted: {}; see hkctl status",
                    why("Halted")
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IMG: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";

    fn update(extra: serde_json::Value) -> Update {
        let mut spec = json!({"osImageURL": IMG});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut u = Update::new("os", serde_json::from_value(spec).unwrap());
        u.metadata.namespace = Some("housekeeper-system".into());
        u
    }

    #[test]
    fn changes_keep_what_is_not_named_and_lift_an_abort() {
        let mut base = update(json!({"maxUnavailable": 3, "abort": {"inFlight": "rollBack"}})).spec;
        base.max_failed = 2;
        let changes = Changes {
            image: Some("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:3".into()),
            ..Default::default()
        };
        let s = apply_changes(Some(&base), &changes).unwrap();
        assert_eq!((s.max_unavailable, s.max_failed), (3, 2));
        assert!(s.os_image_url.ends_with(":3"));
        assert_eq!(s.abort, None);
        assert!(apply_changes(None, &Changes::default())
            .unwrap_err()
            .contains("--image"));
    }

    #[test]
    fn gates_need_a_prometheus_and_replace_what_they_name() {
        let q = |e: &str| GateQuery {
            expr: e.into(),
            node_label: None,
        };
        let mut changes = Changes {
            image: Some(IMG.into()),
            gates: GateChanges {
                queries: vec![q("up == 0")],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(apply_changes(None, &changes)
            .unwrap_err()
            .contains("--prometheus URL"));
        changes.gates.prometheus_url = Some("http://prometheus:9090".into());
        let s = apply_changes(None, &changes).unwrap();
        let g = s.gates.clone().unwrap();
        assert_eq!((g.queries.len(), g.timeout_seconds), (1, 3));
        check(&s, ImagePolicy::default()).unwrap();
        // A later upgrade naming only an alert filter keeps the URL and the queries.
        let later = Changes {
            gates: GateChanges {
                alerts: vec![AlertFilter {
                    matchers: vec![r#"severity="critical""#.into()],
                }],
                credentials: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = apply_changes(Some(&s), &later).unwrap();
        let g = s.gates.unwrap();
        assert_eq!(g.prometheus_url, "http://prometheus:9090");
        assert_eq!(
            (g.queries.len(), g.alerts.len(), g.credentials),
            (1, 1, true)
        );
    }

    #[test]
    fn check_is_the_coordinators_validation_in_one_line() {
        let s = apply_changes(
            None,
            &Changes {
                image: Some("docker://nowhere".into()),
                max_unavailable: Some(0),
                max_unavailable_per_zone: Some(0),
                staging_max_concurrent: Some(0),
                blocking_pod_selector: Some(
                    serde_json::from_value(json!({
                        "matchExpressions": [{"key": "app", "operator": "Near"}]
                    }))
                    .unwrap(),
                ),
                ..Default::default()
            },
        )
        .unwrap();
        let e = check(&s, ImagePolicy::default()).unwrap_err().to_string();
        assert!(
            e.contains("osImageURL")
                && e.contains("maxUnavailable is 0")
                && e.contains("maxUnavailablePerZone is 0")
                && e.contains("staging.maxConcurrent is 0")
                && e.contains("blockingPodSelector: operator \"Near\""),
            "{e}"
        );
        assert!(e.ends_with("nothing was sent"));
        assert!(!e.contains('\n'));
    }
}
