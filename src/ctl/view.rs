//! The rollout as `hkctl status` shows it: a versioned document (`apiVersion:
//! hkctl.housekeeper.io/v1`, `kind: RolloutStatus`; schema in
//! schema/rollout-status.v1.json) built from the Update and the Nodes. Pure.
//!
//! The Update's conditions and state are the coordinator's, as stored. The per-node rows come
//! from the same planner the coordinator runs ([`plan_with`]), over every selected Node (the
//! stored status lists at most 50), with the holds it last found outside the Nodes (blocking
//! pods): a row's phase and reason are what the coordinator would say now. A node the planner
//! would grant next is shown Pending ("next"): only the coordinator grants.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cluster::annotations::NodeView;
use crate::cluster::plan::plan_with;
use crate::cluster::update::{
    Counts, ImagePolicy, InFlight, Update, UpdateCondition, UpdateTarget,
};

pub const API_VERSION: &str = "hkctl.housekeeper.io/v1";
pub const KIND: &str = "RolloutStatus";

/// One Update's rollout at a glance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Always `hkctl.housekeeper.io/v1`.
    pub api_version: String,
    /// Always `RolloutStatus`.
    pub kind: String,
    pub update: UpdateRef,
    pub target: UpdateTarget,
    /// The coordinator's one word: Progressing, Waiting, Paused, Halted, Complete; `Unknown`
    /// before it has written a status.
    pub state: String,
    pub paused: bool,
    /// Set when the rollout was aborted: what the nodes in flight do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<InFlight>,
    /// Why nothing moves when the coordinator has not seen this generation of the Update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    pub conditions: Vec<UpdateCondition>,
    /// Counted over `nodes`.
    pub counts: Counts,
    pub nodes: Vec<NodeRow>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRef {
    pub name: String,
    pub namespace: String,
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    ControlPlane,
    Worker,
}

/// One selected Node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub name: String,
    pub role: Role,
    /// Pending, Waiting, Granted, Staging, Staged, Draining, Rebooting, Verifying, Done,
    /// Failed.
    pub phase: String,
    /// The image the node runs, as its agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// When the node entered this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// What it waits for, what failed, or what its agent is doing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Whether a row's phase means the node is out of service for this rollout.
pub fn in_flight(phase: &str) -> bool {
    !matches!(phase, "Pending" | "Waiting" | "Done" | "Failed")
}

/// What the rows are computed under: whether the cluster allows unverified images is the
/// coordinator's setting, and its verdict on the spec is in the conditions; the rows show
/// the nodes in any case.
const VIEW_POLICY: ImagePolicy = ImagePolicy {
    allow_unverified: true,
};

/// A row's reason followed by the node's staging progress, when it stages.
fn with_progress(reason: &str, progress: Option<&str>) -> String {
    match progress {
        Some(p) if reason.is_empty() => p.to_owned(),
        Some(p) => format!("{reason}; {p}"),
        None => reason.to_owned(),
    }
}

/// Build the document. `nodes` are all Nodes; the Update's selector picks its own.
pub fn build(update: &Update, nodes: &[NodeView], now: Timestamp) -> RolloutStatus {
    let stored = update.status.clone().unwrap_or_default();
    let generation = update.metadata.generation.unwrap_or(1);
    // The holds the coordinator found (blocking pods) are only in its status: plan with them.
    let p = plan_with(update, nodes, &stored.holds, now, VIEW_POLICY);
    let by_name: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let nodes: Vec<NodeRow> = p
        .all_nodes
        .iter()
        .map(|s| {
            let view = by_name.get(s.name.as_str());
            let next = p.grants.contains(&s.name);
            NodeRow {
                name: s.name.clone(),
                role: if view.is_some_and(|v| v.control_plane) {
                    Role::ControlPlane
                } else {
                    Role::Worker
                },
                phase: if next {
                    "Pending".into()
                } else {
                    s.phase.clone()
                },
                current: view.and_then(|v| v.os_image.clone()),
                since: if next { None } else { s.since.clone() },
                reason: with_progress(
                    if next {
                        "next: a slot is free"
                    } else {
                        &s.reason
                    },
                    view.and_then(|v| v.progress.as_deref())
                        .filter(|_| !matches!(s.phase.as_str(), "Done" | "Failed")),
                ),
            }
        })
        .collect();
    let mut counts = Counts {
        total: nodes.len() as i32,
        ..Default::default()
    };
    for n in &nodes {
        match n.phase.as_str() {
            "Pending" => counts.pending += 1,
            "Waiting" => counts.waiting += 1,
            "Done" => counts.done += 1,
            "Failed" => counts.failed += 1,
            _ => counts.in_flight += 1,
        }
    }
    let notice = match stored.observed_generation {
        Some(g) if g >= generation => None,
        Some(g) => Some(format!(
            "the coordinator has not seen generation {generation} yet (it last saw {g}); is hkd running?"
        )),
        None => Some("no coordinator has written a status yet; is hkd running on the nodes?".into()),
    };
    RolloutStatus {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        update: UpdateRef {
            name: update.name_any(),
            namespace: update.namespace().unwrap_or_default(),
            generation,
            observed_generation: stored.observed_generation,
        },
        target: UpdateTarget {
            os_image_url: update.spec.os_image_url.clone(),
            kube_version: update.spec.kube_version().map(str::to_owned),
        },
        state: stored.state.clone().unwrap_or_else(|| "Unknown".into()),
        paused: update.spec.paused,
        aborted: update.spec.abort.as_ref().map(|a| a.in_flight),
        notice,
        conditions: stored.conditions,
        counts,
        nodes,
    }
}

/// The JSON schema of the document, as committed.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(RolloutStatus);
    serde_json::to_string_pretty(&schema).expect("a schema serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::annotations::{AgentPhase, Grant};
    use serde_json::json;

    #[test]
    fn a_staging_node_shows_how_far_it_is() {
        let mut u: Update = serde_json::from_value(json!({
            "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
            "metadata": {"name": "os", "namespace": "hk", "uid": "u-1", "generation": 1},
            "spec": {"osImageURL": "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2",
                     "maxUnavailable": 1},
        }))
        .unwrap();
        u.metadata.uid = Some("u-1".into());
        let staging = "staging: Receiving objects 43 %, 310.0 MiB at 2.0 MiB/s";
        let node = |name: &str| NodeView {
            name: name.into(),
            ready: true,
            os_image: Some("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:1".into()),
            progress: Some(staging.into()),
            ..Default::default()
        };
        let g = Grant {
            uid: "u-1".into(),
            generation: 1,
        };
        let mut granted = node("a");
        granted.grant = Some(g.clone());
        granted.phase = Some(AgentPhase::Staging);
        granted.phase_grant = Some(g.clone());
        let mut done = node("c");
        done.grant = Some(g.clone());
        done.phase = Some(AgentPhase::Done);
        done.phase_grant = Some(g);
        let now = "2024-03-02T10:00:00Z".parse().unwrap();
        let s = build(&u, &[granted, node("b"), done], now);
        let reason = |name: &str| {
            s.nodes
                .iter()
                .find(|n| n.name == name)
                .map(|n| n.reason.clone())
                .unwrap()
        };
        assert_eq!(reason("a"), staging, "in flight, staging its grant");
        assert!(
            reason("b").ends_with(&format!("; {staging}")) && reason("b").len() > staging.len(),
            "waiting, pre-staging: {:?}",
            reason("b")
        );
        assert!(!reason("c").contains("staging"), "{:?}", reason("c"));
    }

    #[test]
    fn schema_matches_the_committed_one() {
        crate::testing::golden("schema/rollout-status.v1.json", &super::schema_json());
    }
}
