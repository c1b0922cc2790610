//! The preview of `hkctl upgrade`: the coordinator's planner ([`plan`]) run forward over the
//! Nodes as they are, each grant taken to end Done, to tell in which order the nodes will
//! go and which are held back. Pure.

use jiff::Timestamp;
use kube::ResourceExt;

use crate::cluster::annotations::{AgentPhase, NodeView};
use crate::cluster::plan::plan;
use crate::cluster::update::{ImagePolicy, Update};
use crate::cluster::window;

/// What the planner will do with the Update, run forward as if each granted node finished.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Preview {
    pub matching: usize,
    pub control_plane: usize,
    /// Already at the target.
    pub done: usize,
    /// Granted before this change and not finished.
    pub in_flight: Vec<String>,
    /// The grants, wave by wave.
    pub waves: Vec<Vec<String>>,
    /// Nodes the planner will not grant as things stand, with why.
    pub held: Vec<(String, String)>,
}

/// Run the planner forward. Windows, pause and abort are left out (they say *when*, not in
/// which order; the caller reports them); every grant is taken to end Done.
pub fn preview(
    update: &Update,
    nodes: &[NodeView],
    now: Timestamp,
    policy: ImagePolicy,
) -> Preview {
    let mut u = update.clone();
    u.spec.maintenance_windows.clear();
    u.spec.paused = false;
    u.spec.abort = None;
    if u.metadata.uid.is_none() {
        u.metadata.uid = Some("preview".into());
    }
    let mut nodes = nodes.to_vec();
    let first = plan(&u, &nodes, now, policy);
    let mut out = Preview {
        matching: first.all_nodes.len(),
        done: first.all_nodes.iter().filter(|n| n.phase == "Done").count(),
        ..Default::default()
    };
    let selected: Vec<String> = first.all_nodes.iter().map(|n| n.name.clone()).collect();
    out.control_plane = nodes
        .iter()
        .filter(|n| n.control_plane && selected.contains(&n.name))
        .count();
    let Some(grant) = first.grant.clone() else {
        return out;
    };
    let target = u.spec.os_image_url.clone();
    let finish = |n: &mut NodeView| {
        n.grant = Some(grant.clone());
        n.phase = Some(AgentPhase::Done);
        n.phase_grant = Some(grant.clone());
        n.os_image = Some(target.clone());
        if let Some(k) = u.spec.kube_version() {
            n.kubelet_version = Some(k.to_owned());
        }
    };
    for s in &first.all_nodes {
        let granted = !first.grants.contains(&s.name);
        if granted && !matches!(s.phase.as_str(), "Pending" | "Waiting" | "Done" | "Failed") {
            out.in_flight.push(s.name.clone());
        }
    }
    for n in nodes.iter_mut().filter(|n| out.in_flight.contains(&n.name)) {
        finish(n);
    }
    u.status = Some(first.status);
    let mut last = None;
    for _ in 0..=nodes.len() {
        let p = plan(&u, &nodes, now, policy);
        u.status = Some(p.status.clone());
        if p.grants.is_empty() {
            last = Some(p);
            break;
        }
        for n in nodes.iter_mut().filter(|n| p.grants.contains(&n.name)) {
            finish(n);
        }
        out.waves.push(p.grants.clone());
    }
    if let Some(p) = last {
        out.held = p
            .all_nodes
            .iter()
            .filter(|n| matches!(n.phase.as_str(), "Waiting" | "Pending" | "Failed"))
            .map(|n| {
                (
                    n.name.clone(),
                    if n.reason.is_empty() {
                        n.phase.clone()
                    } else {
                        n.reason.clone()
                    },
                )
            })
            .collect();
    }
    out
}

/// Names joined to fit `width` columns, the rest counted.
fn names_fitting(names: &[String], width: usize) -> String {
    let mut out = String::new();
    for (i, n) in names.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let rest = names.len() - i;
        let tail = format!(" … and {rest} more");
        if out.chars().count() + sep.len() + n.chars().count() + tail.len() > width && rest > 1 {
            out.push_str(&format!("{sep}… and {rest} more"));
            return out;
        }
        out.push_str(sep);
        out.push_str(n);
    }
    out
}

/// How many waves the preview lists before it counts the rest.
const WAVES_SHOWN: usize = 6;

/// The preview as lines of at most `width` columns.
pub fn describe(
    update: &Update,
    p: &Preview,
    verb: &str,
    now: Timestamp,
    width: usize,
) -> Vec<String> {
    let spec = &update.spec;
    let mut lines = vec![format!(
        "Update {}/{} {verb}:",
        update.namespace().unwrap_or_default(),
        update.name_any()
    )];
    let field = |k: &str, v: String| format!("  {k:<10} {v}");
    lines.push(field("target", spec.os_image_url.clone()));
    if let Some(k) = spec.kube_version() {
        lines.push(field("kube", format!("{k} (kubeadm upgrade after the OS)")));
    }
    lines.push(field(
        "nodes",
        format!(
            "{} match ({} control plane, {} workers); {} already at the target",
            p.matching,
            p.control_plane,
            p.matching - p.control_plane,
            p.done
        ),
    ));
    lines.push(field(
        "pace",
        format!(
            "up to {} node(s) at a time; halts at {} failed (maxFailed {})",
            spec.max_unavailable,
            spec.max_failed + 1,
            spec.max_failed
        ),
    ));
    if let Some(z) = crate::cluster::topology::ZoneLimits::from_spec(spec) {
        let mut parts = Vec::new();
        if let Some(n) = z.per_zone {
            parts.push(format!("up to {n} node(s) per zone"));
        }
        if let Some(n) = z.zones {
            parts.push(format!("up to {n} zone(s) at a time"));
        }
        lines.push(field(
            "zones",
            format!("{}; zone = label {}", parts.join(", "), z.key),
        ));
    }
    if let Some(sel) = &spec.blocking_pod_selector {
        let text = crate::cluster::selector::Selector::from_label_selector(sel)
            .ok()
            .and_then(|s| s.to_query().ok())
            .unwrap_or_default();
        lines.push(field(
            "blocking",
            format!("a node running a pod matching {text} waits for it to go"),
        ));
    }
    if let Some(s) = &spec.staging {
        lines.push(field(
            "staging",
            format!(
                "up to {} node(s) pull at once, front of the order first",
                s.max_concurrent
            ),
        ));
    }
    if let Some(g) = &spec.gates {
        lines.push(field(
            "gates",
            format!(
                "{} query(ies), {} alert filter(s) at {}; held while one fires or it does not answer",
                g.queries.len(),
                g.alerts.len(),
                g.prometheus_url
            ),
        ));
    }
    let room = width.saturating_sub(18);
    if !p.in_flight.is_empty() {
        lines.push(field("now", names_fitting(&p.in_flight, room)));
    }
    for (i, wave) in p.waves.iter().take(WAVES_SHOWN).enumerate() {
        let k = if i == 0 { "order" } else { "" };
        lines.push(format!(
            "  {k:<10} {:>3}. {}",
            i + 1,
            names_fitting(wave, room.saturating_sub(5))
        ));
    }
    if p.waves.len() > WAVES_SHOWN {
        let rest: usize = p.waves[WAVES_SHOWN..].iter().map(Vec::len).sum();
        lines.push(format!(
            "  {:<10} … {} more step(s), {rest} node(s)",
            "",
            p.waves.len() - WAVES_SHOWN
        ));
    }
    if p.waves.is_empty() && p.in_flight.is_empty() {
        lines.push(field("order", "no node to upgrade".into()));
    }
    if !p.held.is_empty() {
        let held: Vec<String> = p
            .held
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect();
        lines.push(field("held back", names_fitting(&held, room)));
    }
    if !spec.maintenance_windows.is_empty() {
        let state = match window::status(&spec.maintenance_windows, now) {
            Ok((true, Some(t))) => format!("open now, until {}", t.strftime("%Y-%m-%d %H:%M UTC")),
            Ok((true, None)) => "open now".into(),
            Ok((false, Some(t))) => {
                format!("closed now; opens {}", t.strftime("%Y-%m-%d %H:%M UTC"))
            }
            Ok((false, None)) => "closed, and never opens".into(),
            Err(e) => e,
        };
        lines.push(field("windows", state));
    }
    if spec.paused {
        lines.push(field("paused", "no node goes before hkctl resume".into()));
    }
    lines
        .into_iter()
        .map(|l| {
            if l.chars().count() > width {
                let mut s: String = l.chars().take(width.saturating_sub(1)).collect();
                s.push('…');
                s
            } else {
                l
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IMG: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";

    fn node(name: &str, cp: bool) -> NodeView {
        NodeView {
            name: name.into(),
            control_plane: cp,
            ready: true,
            os_image: Some("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:1".into()),
            ..Default::default()
        }
    }

    fn update(extra: serde_json::Value) -> Update {
        let mut spec = json!({"osImageURL": IMG});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut u = Update::new("os", serde_json::from_value(spec).unwrap());
        u.metadata.namespace = Some("housekeeper-system".into());
        u
    }

    fn now() -> Timestamp {
        "2024-03-02T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn preview_follows_the_planner_order() {
        let mut nodes = vec![
            node("cp-2", true),
            node("cp-1", true),
            node("w-1", false),
            node("w-2", false),
            node("w-3", false),
            node("w-4", false),
        ];
        nodes[5].ready = false;
        let mut done = node("w-0", false);
        done.os_image = Some(IMG.into());
        nodes.push(done);
        let u = update(json!({"maxUnavailable": 2, "paused": true,
            "maintenanceWindows": [{"start": "22:00", "end": "23:00"}]}));
        let p = preview(&u, &nodes, now(), ImagePolicy::default());
        assert_eq!(p.matching, 7);
        assert_eq!(p.control_plane, 2);
        assert_eq!(p.done, 1);
        // w-4 NotReady uses one of the two slots: workers go one by one.
        assert_eq!(
            p.waves,
            vec![
                vec!["cp-1"],
                vec!["cp-2"],
                vec!["w-1"],
                vec!["w-2"],
                vec!["w-3"]
            ]
        );
        assert_eq!(p.held, vec![("w-4".to_owned(), "NotReady".to_owned())]);
        let lines = describe(&u, &p, "would be created", now(), 80);
        let text = lines.join("\n");
        assert!(
            text.contains("7 match (2 control plane, 5 workers); 1 already at the target"),
            "{text}"
        );
        assert!(text.contains("held back  w-4 (NotReady)"), "{text}");
        assert!(
            text.contains("closed now; opens 2024-03-02 22:00 UTC"),
            "{text}"
        );
        assert!(text.contains("paused"), "{text}");
        assert!(
            text.contains("up to 2 node(s) at a time; halts at 1 failed"),
            "{text}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
    }

    #[test]
    fn preview_shows_the_zone_limits_in_its_waves_and_lines() {
        let zone = |name: &str, z: &str| {
            let mut n = node(name, false);
            n.labels
                .insert("topology.kubernetes.io/zone".into(), z.into());
            n
        };
        let nodes = vec![zone("a-1", "a"), zone("a-2", "a"), zone("b-1", "b")];
        let u = update(json!({"maxUnavailable": 3, "maxUnavailablePerZone": 1,
            "maxUnavailableZones": 1, "blockingPodSelector": {"matchLabels": {"app": "backup"}}}));
        let p = preview(&u, &nodes, now(), ImagePolicy::default());
        assert_eq!(p.waves, vec![vec!["a-1"], vec!["a-2"], vec!["b-1"]]);
        let text = describe(&u, &p, "created", now(), 80).join("\n");
        assert!(
            text.contains("zones      up to 1 node(s) per zone, up to 1 zone(s) at a time; zone = label topology.kubernetes.io/zone")
                || text.contains("zones      up to 1 node(s) per zone, up to 1 zone(s) at a time; zone = l"),
            "{text}"
        );
        assert!(
            text.contains("blocking   a node running a pod matching app in (backup) waits"),
            "{text}"
        );
    }

    #[test]
    fn preview_of_many_nodes_is_bounded() {
        let nodes: Vec<_> = (0..200)
            .map(|i| node(&format!("worker-{i:03}"), false))
            .collect();
        let u = update(json!({"maxUnavailable": 10}));
        let p = preview(&u, &nodes, now(), ImagePolicy::default());
        assert_eq!(p.waves.len(), 20);
        assert!(p.waves.iter().all(|w| w.len() == 10));
        let lines = describe(&u, &p, "created", now(), 80);
        assert!(lines.len() < 16, "{lines:#?}");
        assert!(lines
            .iter()
            .any(|l| l.contains("… 14 more step(s), 140 node(s)")));
        assert!(lines.iter().all(|l| l.chars().count() <= 80));
    }
}
