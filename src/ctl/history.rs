//! `hkctl node NAME`: one node as the rollout sees it — its role, readiness, cordon, the
//! protocol's annotations (grant, phase, reason, since, booted image) — and its history: the
//! Events about it, oldest first, from every namespace (the coordinator's and the agent's in
//! `default`, beside the kubelet's).

use std::io::Write;

use anyhow::{bail, Result};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::render::age;
use super::Ctx;
use crate::cluster::annotations::{self, NodeView};
use crate::cluster::update::Update;

/// When an Event happened: its last occurrence, else its first, else its creation.
fn when(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The node's lines. Pure: the Node, the Events, the Updates (to name a grant's Update) and
/// `now` go in. Every line is [`annotations::printable`]: the Node's annotations and the
/// Events' texts are what a node's own credential wrote.
pub fn render(node: &Node, events: &[Event], updates: &[Update], now: Timestamp) -> Vec<String> {
    lines(node, events, updates, now)
        .iter()
        .map(|l| annotations::printable(l))
        .collect()
}

fn lines(node: &Node, events: &[Event], updates: &[Update], now: Timestamp) -> Vec<String> {
    let mut v = NodeView::from_node(node);
    v.grant = crate::cluster::ledger::grant_of(&v.name, updates).0;
    let role = if v.control_plane {
        "control plane"
    } else {
        "worker"
    };
    let ready = if v.ready { "Ready" } else { "NotReady" };
    let cordon = match (v.unschedulable, v.cordoned_by_hkd) {
        (true, true) => ", cordoned by hkd",
        (true, false) => ", cordoned (not by hkd)",
        _ => "",
    };
    let mut lines = vec![format!("Node {}  {role}, {ready}{cordon}", v.name)];
    let field = |k: &str, val: String| format!("  {k:<9} {val}");
    if let Some(k) = &v.kubelet_version {
        lines.push(field("kubelet", k.clone()));
    }
    lines.push(field(
        "image",
        v.os_image
            .clone()
            .unwrap_or_else(|| "(not reported)".into()),
    ));
    match &v.grant {
        Some(g) => {
            let of = updates
                .iter()
                .find(|u| u.metadata.uid.as_deref() == Some(g.uid.as_str()))
                .map(|u| {
                    format!(
                        " (Update {}/{})",
                        u.namespace().unwrap_or_default(),
                        u.name_any()
                    )
                })
                .unwrap_or_default();
            lines.push(field("grant", format!("{g}{of}")));
        }
        None => lines.push(field("grant", "none".into())),
    }
    if let Some(p) = v.phase {
        let answers = match (&v.phase_grant, &v.grant) {
            (Some(pg), Some(g)) if pg == g => String::new(),
            (Some(pg), _) => format!(" (for an earlier grant, {pg})"),
            _ => String::new(),
        };
        let since = v
            .since
            .map(|t| {
                format!(
                    " since {} ({} ago)",
                    t.strftime("%Y-%m-%d %H:%M:%S UTC"),
                    age(t, now)
                )
            })
            .unwrap_or_default();
        lines.push(field("phase", format!("{}{since}{answers}", p.as_str())));
    }
    if let Some(r) = &v.reason {
        lines.push(field("reason", r.clone()));
    }
    for p in &v.problems {
        lines.push(field("problem", p.clone()));
    }
    let others: Vec<String> = node
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with("housekeeper.io/"))
        .filter(|(k, _)| {
            ![
                annotations::GRANT,
                annotations::PHASE,
                annotations::PHASE_GRANT,
                annotations::REASON,
                annotations::SINCE,
                annotations::OS_IMAGE,
                annotations::CORDONED_BY_HKD,
            ]
            .contains(&k.as_str())
        })
        .map(|(k, val)| format!("{k}={val}"))
        .collect();
    for o in others {
        lines.push(field("also", o));
    }
    lines.push(String::new());
    if events.is_empty() {
        lines.push("No Events about this node (Events expire after an hour by default).".into());
        return lines;
    }
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| when(e));
    lines.push("Events, oldest first:".into());
    lines.push(format!(
        "  {:<5} {:<8} {:<14} {:<24} MESSAGE",
        "AGE", "TYPE", "REASON", "FROM"
    ));
    for e in events {
        let from = e
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .or_else(|| e.reporting_component.clone())
            .unwrap_or_default();
        let count = e
            .count
            .filter(|c| *c > 1)
            .map(|c| format!(" (×{c})"))
            .unwrap_or_default();
        lines.push(format!(
            "  {:<5} {:<8} {:<14} {:<24} {}{count}",
            when(e).map(|t| age(t, now)).unwrap_or_default(),
            e.type_.clone().unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
            from,
            e.message.clone().unwrap_or_default().replace('\n', " ")
        ));
    }
    lines
}

/// `hkctl node NAME`.
pub async fn show(ctx: &Ctx, name: &str, out: &mut dyn Write) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = match nodes.get_opt(name).await {
        Ok(Some(n)) => n,
        Ok(None) => bail!("there is no Node {name} (kubectl get nodes lists them)"),
        Err(e) => return Err(ctx.fail(&format!("reading Node {name}"), e)),
    };
    let events: Api<Event> = Api::all(ctx.client.clone());
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=Node,involvedObject.name={name}"
    ));
    let events = events
        .list(&lp)
        .await
        .map_err(|e| ctx.fail(&format!("listing the Events about Node {name}"), e))?
        .items;
    // Updates name the grant; a cluster without the CRD simply has none.
    let updates: Api<Update> = Api::all(ctx.client.clone());
    let updates = updates
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for l in render(&node, &events, &updates, Timestamp::now()) {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_with_its_protocol_and_events_oldest_first() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": "w-1",
                "annotations": {
                    annotations::PHASE: "Draining",
                    annotations::PHASE_GRANT: "u-1/2", annotations::SINCE: "2024-03-02T09:58:00Z",
                    annotations::REASON: "pod shop/db-0 blocked by PodDisruptionBudget shop/db",
                    annotations::CORDONED_BY_HKD: "u-1/2",
                    annotations::OS_IMAGE: "ostree-image-signed:docker://r.example/os:1",
                    "housekeeper.io/pre-staged": "u-1/2",
                },
            },
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        let event = |reason: &str, at: &str, message: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": format!("w-1.{reason}"), "namespace": "default"},
                "involvedObject": {"kind": "Node", "name": "w-1"},
                "reason": reason, "message": message, "type": "Normal",
                "lastTimestamp": at, "source": {"component": "housekeeper-coordinator"},
            }))
            .unwrap()
        };
        let events = vec![
            event(
                "Draining",
                "2024-03-02T09:58:00Z",
                "draining under grant u-1/2",
            ),
            event(
                "Granted",
                "2024-03-02T09:57:00Z",
                "may upgrade for Update hs/os",
            ),
        ];
        let mut u = Update::new(
            "os",
            serde_json::from_value(json!({"osImageURL": "x"})).unwrap(),
        );
        u.metadata.namespace = Some("hs".into());
        u.metadata.uid = Some("u-1".into());
        u.metadata.generation = Some(2);
        u.status = Some(serde_json::from_value(json!({
            "coordinatorTerm": 3,
            "grants": {"w-1": {"generation": 2, "term": 3, "grantedAt": "2024-03-02T09:57:00Z"}},
        })).unwrap());
        let now: Timestamp = "2024-03-02T10:00:00Z".parse().unwrap();
        let text = render(&node, &events, &[u], now).join("\n");
        for want in [
            "Node w-1  worker, Ready, cordoned by hkd",
            "grant     u-1/2 (Update hs/os)",
            "phase     Draining since 2024-03-02 09:58:00 UTC (2m ago)",
            "reason    pod shop/db-0 blocked by PodDisruptionBudget shop/db",
            "also      housekeeper.io/pre-staged=u-1/2",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        let granted = text.find("Granted").unwrap();
        let draining = text
            .rfind("Draining  ")
            .unwrap_or_else(|| text.rfind("Draining").unwrap());
        assert!(granted < draining, "not oldest first:\n{text}");
        let none = render(&node, &[], &[], now).join("\n");
        assert!(none.contains("No Events about this node"), "{none}");
    }

    #[test]
    fn what_a_node_wrote_cannot_steer_the_terminal() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "w-1", "annotations": {
                "housekeeper.io/x": "a\u{1b}[2Jb",
                annotations::PROGRESS: "staging\u{1b}]0;title\u{7}",
            }},
        }))
        .unwrap();
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": "w-1.x", "namespace": "default"},
            "involvedObject": {"kind": "Node", "name": "w-1"},
            "reason": "Lie\u{1b}[31m", "message": "m\u{9b}2J\u{202e}", "type": "Normal",
            "lastTimestamp": "2024-03-02T09:58:00Z", "source": {"component": "hkd\u{7}"},
        }))
        .unwrap();
        let now: Timestamp = "2024-03-02T10:00:00Z".parse().unwrap();
        let lines = render(&node, &[event], &[], now);
        for line in &lines {
            assert!(
                !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{line:?}"
            );
        }
        let text = lines.join("\n");
        assert!(text.contains("housekeeper.io/x=a\u{fffd}[2Jb"), "{text}");
    }
}
