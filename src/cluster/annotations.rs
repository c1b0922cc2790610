//! The per-node protocol: annotations on the Node object, and the planner's view of a Node.
//!
//! All rollout state lives in API objects (DESIGN.md I7), so a coordinator that takes over
//! reads exactly what its predecessor wrote. Two writers, each owning its keys:
//!
//! | key | writer | value |
//! |---|---|---|
//! | `housekeeper.io/phase` | agent | `Staging`, `Staged`, `Draining`, `Rebooting`, `Verifying`, `Done`, `Failed` |
//! | `housekeeper.io/phase-grant` | agent | the grant the phase answers (a phase for an older grant is stale) |
//! | `housekeeper.io/reason` | agent | one line: why it failed or what it waits for |
//! | `housekeeper.io/since` | agent | RFC 3339 time of the last phase change (age in `hkctl status`) |
//! | `housekeeper.io/os-image` | agent | the booted deployment's image reference |
//! | `housekeeper.io/cordoned-by-hkd` | agent | the grant under which hkd cordoned the node |
//! | `housekeeper.io/staged` | agent | the image staged ahead of a grant (absent: none) |
//! | `housekeeper.io/progress` | agent | while it stages: how far, in words (a few writes a minute at most) |
//!
//! Every value is written by a node's own credential, so it is what that node says, not a
//! fact: free text (`reason`, `progress`) and image references are read with control and
//! bidirectional-override characters replaced and free text cut to [`MAX_TEXT`] characters,
//! so that a node cannot rewrite an admin's terminal through `hkctl status`.
//!
//! Grants are not on the Node: the coordinator records them in the Update's status
//! ([`super::ledger`]), where only its identity can write and every write is fenced by its
//! term; a view's `grant` is filled from there. The agent reports by copying the grant
//! (`<Update uid>/<generation>`) into `phase-grant`. A grant is never withdrawn while its node
//! is in flight: the coordinator replaces it only with a newer grant after a terminal phase,
//! so the number of nodes in flight can be computed from the ledgers and the Nodes at any
//! moment. A `housekeeper.io/grant` annotation on a Node (written by older versions, or by
//! anyone who can write that Node) is ignored and named in the view's `problems`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;

/// Where grants once were; now only recognised, to name it as ignored.
pub const GRANT: &str = "housekeeper.io/grant";
pub const PHASE: &str = "housekeeper.io/phase";
pub const PHASE_GRANT: &str = "housekeeper.io/phase-grant";
pub const REASON: &str = "housekeeper.io/reason";
pub const SINCE: &str = "housekeeper.io/since";
pub const OS_IMAGE: &str = "housekeeper.io/os-image";
pub const CORDONED_BY_HKD: &str = "housekeeper.io/cordoned-by-hkd";
pub const STAGED: &str = "housekeeper.io/staged";
pub const PROGRESS: &str = "housekeeper.io/progress";

/// The longest free text (reason, progress) read from a Node, in characters.
pub const MAX_TEXT: usize = 300;

/// `text` with every character that could steer a terminal or reorder what it shows —
/// control characters (C0, DEL, C1, so escape sequences) and the bidirectional overrides and
/// isolates — replaced by U+FFFD.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// Free text from a Node, as it may be shown: [`printable`], at most [`MAX_TEXT`] characters
/// (a longer text ends in `…`).
pub fn shown_text(text: &str) -> String {
    let mut out = printable(text);
    if out.chars().count() > MAX_TEXT {
        out = out.chars().take(MAX_TEXT - 1).collect();
        out.push('…');
    }
    out
}

/// The label that makes a Node a FleetLock node (its Zincati, not hkd, updates it) and names
/// its pool: the FleetLock group its Zincati sends (`src/cluster/fleetlock/`).
pub const FLEETLOCK_GROUP: &str = "housekeeper.io/fleetlock-group";

/// Labels kubeadm puts on control-plane nodes (`master` before 1.24, `control-plane` after).
pub const CONTROL_PLANE_LABELS: &[&str] = &[
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// Permission for one node to upgrade, under one generation of one Update.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub uid: String,
    pub generation: i64,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.uid, self.generation)
    }
}

impl FromStr for Grant {
    type Err = String;
    fn from_str(s: &str) -> Result<Grant, String> {
        let (uid, generation) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("grant {s:?} is not <uid>/<generation>"))?;
        let generation = generation
            .parse()
            .map_err(|_| format!("grant {s:?} has no numeric generation"))?;
        if uid.is_empty() {
            return Err(format!("grant {s:?} has an empty uid"));
        }
        Ok(Grant {
            uid: uid.to_owned(),
            generation,
        })
    }
}

/// Where the agent is with a grant. `Done` and `Failed` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgentPhase {
    Staging,
    Staged,
    Draining,
    Rebooting,
    Verifying,
    Done,
    Failed,
}

impl AgentPhase {
    pub const ALL: [AgentPhase; 7] = [
        AgentPhase::Staging,
        AgentPhase::Staged,
        AgentPhase::Draining,
        AgentPhase::Rebooting,
        AgentPhase::Verifying,
        AgentPhase::Done,
        AgentPhase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentPhase::Staging => "Staging",
            AgentPhase::Staged => "Staged",
            AgentPhase::Draining => "Draining",
            AgentPhase::Rebooting => "Rebooting",
            AgentPhase::Verifying => "Verifying",
            AgentPhase::Done => "Done",
            AgentPhase::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, AgentPhase::Done | AgentPhase::Failed)
    }
}

impl FromStr for AgentPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<AgentPhase, String> {
        AgentPhase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

/// What the planner needs to know about one Node, read from its labels, annotations and status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    pub name: String,
    /// The Node's uid (for Events about it).
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub control_plane: bool,
    /// The Ready condition is True.
    pub ready: bool,
    /// `spec.unschedulable`: cordoned, by anyone.
    pub unschedulable: bool,
    /// hkd cordoned it (the annotation is set); otherwise a cordon is someone else's.
    pub cordoned_by_hkd: bool,
    pub os_image: Option<String>,
    pub kubelet_version: Option<String>,
    /// The node's grant, from the Updates' ledgers ([`super::ledger::attach`]); `None` as
    /// read from the Node.
    pub grant: Option<Grant>,
    pub phase: Option<AgentPhase>,
    pub phase_grant: Option<Grant>,
    pub reason: Option<String>,
    pub since: Option<Timestamp>,
    /// The image the agent staged ahead of its grant.
    pub staged: Option<String>,
    /// How far its staging is, as the agent last said (while it stages).
    pub progress: Option<String>,
    /// Annotations that did not parse, each as one line: shown in status, never guessed at.
    pub problems: Vec<String>,
    /// `status.nodeInfo.machineID`: what a FleetLock client's id is derived from.
    pub machine_id: Option<String>,
    /// The pool of a FleetLock node (label [`FLEETLOCK_GROUP`]); `None` for an hkd node.
    pub fleetlock_group: Option<String>,
    /// Set only by the FleetLock server, on the one node whose Zincati asks for a lock now:
    /// the planner treats that node as pending, every other FleetLock node as not its to grant.
    pub lock_wanted: bool,
}

impl NodeView {
    /// Cordoned by someone other than hkd (an admin, another tool).
    pub fn cordoned_by_others(&self) -> bool {
        self.unschedulable && !self.cordoned_by_hkd
    }

    /// The agent's phase when it answers `grant`; a phase for another grant is stale.
    pub fn phase_for(&self, grant: &Grant) -> Option<AgentPhase> {
        match (&self.phase_grant, self.phase) {
            (Some(g), Some(p)) if g == grant => Some(p),
            _ => None,
        }
    }

    /// Read a Node object. Malformed annotations are recorded in `problems`, not fatal: one
    /// bad hand edit must not stop a rollout's accounting.
    pub fn from_node(node: &Node) -> NodeView {
        let meta = &node.metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let ann = meta.annotations.clone().unwrap_or_default();
        let mut problems = Vec::new();
        let mut parse = |key: &str| -> Option<Grant> {
            let v = ann.get(key)?;
            match v.parse() {
                Ok(g) => Some(g),
                Err(e) => {
                    problems.push(format!("annotation {key}: {e}"));
                    None
                }
            }
        };
        let phase_grant = parse(PHASE_GRANT);
        if ann.contains_key(GRANT) {
            problems.push(format!(
                "annotation {GRANT} is ignored: a grant counts only in an Update's status \
                 (who wrote it here can write this Node)"
            ));
        }
        let phase = ann.get(PHASE).and_then(|p| match p.parse() {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("annotation {PHASE}: {e}"));
                None
            }
        });
        let since = ann.get(SINCE).and_then(|s| match s.parse() {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("annotation {SINCE}: {e}"));
                None
            }
        });
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let fleetlock_group = labels.get(FLEETLOCK_GROUP).cloned();
        NodeView {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            control_plane: CONTROL_PLANE_LABELS.iter().any(|l| labels.contains_key(*l)),
            labels,
            ready,
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            cordoned_by_hkd: ann.contains_key(CORDONED_BY_HKD),
            os_image: ann.get(OS_IMAGE).map(|v| printable(v)),
            kubelet_version: status
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kubelet_version.clone())
                .filter(|v| !v.is_empty()),
            grant: None,
            phase,
            phase_grant,
            reason: ann.get(REASON).map(|v| shown_text(v)),
            since,
            staged: ann.get(STAGED).map(|v| printable(v)),
            progress: ann.get(PROGRESS).map(|v| shown_text(v)),
            problems,
            machine_id: status
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.machine_id.clone())
                .filter(|v| !v.is_empty()),
            fleetlock_group,
            lock_wanted: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grant_round_trips_and_rejects_junk() {
        let g: Grant = "0b1c-uid/7".parse().unwrap();
        assert_eq!(g.to_string(), "0b1c-uid/7");
        assert_eq!(g.generation, 7);
        for bad in ["", "uid", "/3", "uid/x"] {
            assert!(bad.parse::<Grant>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_a_node_writes_cannot_steer_a_terminal() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": "w-1",
                "annotations": {
                    REASON: "ok\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nfake row\u{9b}31m",
                    PROGRESS: format!("\u{202e}{}", "x".repeat(5000)),
                    OS_IMAGE: "nestos:v2\u{1b}[8m",
                },
            },
        }))
        .unwrap();
        let v = NodeView::from_node(&node);
        let reason = v.reason.unwrap();
        assert!(!reason.chars().any(|c| c.is_control()), "{reason:?}");
        assert!(reason.starts_with("ok\u{fffd}]0;pwned"), "{reason:?}");
        let progress = v.progress.unwrap();
        assert_eq!(progress.chars().count(), MAX_TEXT);
        assert!(progress.starts_with('\u{fffd}') && progress.ends_with('…'));
        assert_eq!(v.os_image.as_deref(), Some("nestos:v2\u{fffd}[8m"));
        // Text a person wrote in any script stays as it is.
        assert_eq!(
            shown_text("drain: Pod „db-0“ — 等待"),
            "drain: Pod „db-0“ — 等待"
        );
    }

    #[test]
    fn node_view_reads_the_protocol() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": "cp-1",
                "labels": {"node-role.kubernetes.io/master": ""},
                "annotations": {
                    PHASE: "Draining", PHASE_GRANT: "u/2",
                    SINCE: "2024-03-01T10:00:00Z", CORDONED_BY_HKD: "u/2",
                    OS_IMAGE: "nestos:nestos/x86_64/stable",
                },
            },
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": "v1.20.2", "architecture": "", "bootID": "",
                    "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "",
                    "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""},
            },
        }))
        .unwrap();
        let v = NodeView::from_node(&node);
        assert!(v.control_plane && v.ready && v.unschedulable && v.cordoned_by_hkd);
        assert!(!v.cordoned_by_others());
        let g: Grant = "u/2".parse().unwrap();
        assert_eq!(v.grant, None, "a grant comes only from the ledger");
        assert_eq!(v.phase_for(&g), Some(AgentPhase::Draining));
        assert_eq!(v.phase_for(&"u/1".parse().unwrap()), None);
        assert_eq!(v.kubelet_version.as_deref(), Some("v1.20.2"));
        assert!(v.problems.is_empty());
    }

    #[test]
    fn bad_annotations_are_problems_not_guesses() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "w", "annotations": {GRANT: "junk", PHASE: "Dancing"}},
            "spec": {"unschedulable": true},
        }))
        .unwrap();
        let v = NodeView::from_node(&node);
        assert_eq!(v.grant, None);
        assert_eq!(v.phase, None);
        assert_eq!(v.problems.len(), 2);
        assert!(v.problems[0].contains("is ignored"), "{:?}", v.problems);
        assert!(!v.ready);
        assert!(v.cordoned_by_others());
    }
}
