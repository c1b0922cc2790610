//! The agent's cluster half, as decisions: from what this node's Node object and the Updates
//! say, and where the upgrade machine is, what the machine is told and what the Node says.
//!
//! Pure: [`decide`] takes snapshots and returns events for the machine, the annotations to
//! write, whether to finish a grant (kubeadm, uncordon, answer) and whether this hkd may lead
//! the rollout. The follower in [`super::kube`] feeds it from watches and performs the result.
//!
//! The protocol (see [`crate::cluster::annotations`]):
//! - a target is pre-staged as soon as an Update selects this node (with `spec.staging`: as
//!   soon as the Update's status holds a staging permit for this node and the current
//!   target), so that the node's time out of service is only drain, reboot and checks;
//! - a grant is *begun* by writing `phase-grant` = the grant before the machine is told
//!   anything under it: after a restart the Node itself says whether the machine's state
//!   belongs to this grant (a failure after the write is an answer to the grant; a failure
//!   before it is from an earlier round, and the target is asked for again);
//! - a grant is *finished* once the machine is at rest: kubeadm when `kubeVersion` asks,
//!   hkd's own cordon lifted, then `Done` or `Failed` written — in that order, so that the
//!   coordinator's next grant never overlaps this node's return to service;
//! - a node an admin cordoned is never uncordoned (I2): only a cordon marked as hkd's is
//!   lifted, and a cordon hkd holds with no grant in progress is lifted too, so that no node is
//!   left cordoned by a rollout that went away;
//! - the coordinator may run here only while this node is not in flight: it steps down before
//!   its own node drains;
//! - while the machine stages, how far it is goes to `progress`, at most once per
//!   [`PROGRESS_EVERY`] (a few writes a minute, whatever the backend reports), and is removed
//!   as soon as staging ends.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::machine::{Event, Machine, State};
use crate::cluster::annotations::{
    shown_text, AgentPhase, Grant, NodeView, OS_IMAGE, PHASE, PHASE_GRANT, PROGRESS, REASON, SINCE,
    STAGED,
};
use crate::cluster::selector::Selector;
use crate::cluster::update::{target_image, validated_image, InFlight, Update};
use crate::image_ref::{ImagePolicy, ImageRef};

/// What the follower knows, at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// This node's Node object; `None` when it does not exist (deleted, not registered yet).
    pub node: Option<&'a NodeView>,
    pub updates: &'a [Update],
    pub machine: &'a Machine,
    /// The booted deployment's image reference, as the backend reports it.
    pub booted_image: Option<&'a str>,
    pub policy: ImagePolicy,
    pub now: Timestamp,
    /// The target last asked for at rest after a failure, and when: a failure before any grant
    /// is retried at this pace, not in a loop.
    pub last_retry: Option<(&'a ImageRef, Timestamp)>,
    pub retry_after: jiff::SignedDuration,
    /// How far staging is, in words, as the agent's status says (while it stages).
    pub progress: Option<&'a str>,
    /// When `progress` was last written to the Node.
    pub progress_written: Option<Timestamp>,
}

/// The least time between two writes of a node's staging progress.
pub const PROGRESS_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_secs(20);

/// How a grant ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Done,
    Failed(String),
}

/// Finish a grant: run kubeadm when the target asks (only for `Done`), lift hkd's cordon when
/// `uncordon`, then write the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub grant: Grant,
    pub answer: Answer,
    pub uncordon: bool,
    /// `kubeVersion` of the Update, for the kubeadm step.
    pub kube_version: Option<String>,
    pub control_plane: bool,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// For the upgrade machine, in order.
    pub events: Vec<Event>,
    /// Annotations to set (`Some`) or remove (`None`); only what differs from the Node.
    pub annotations: BTreeMap<&'static str, Option<String>>,
    pub finish: Option<Finish>,
    /// Lift hkd's cordon: no grant is in progress and the machine is at rest.
    pub uncordon: bool,
    /// Whether the coordinator may run on this node now.
    pub may_lead: bool,
    /// The Update whose target this node follows, by name.
    pub following: Option<String>,
    /// The follower should decide again at this time (a paced retry) even without a change.
    pub wake_at: Option<Timestamp>,
    /// A grant not acted on, and why (one line for the log and the Node's Events).
    pub refused: Option<String>,
}

/// The change of the `progress` annotation, if one is due: the agent's words while the machine
/// stages (as they will read back, so an unchanged text is not written again) once
/// [`PROGRESS_EVERY`] has passed since the last write; removed at once when staging ends.
fn progress(node: &NodeView, input: &Input<'_>) -> Option<Option<String>> {
    let now = match (&input.machine.state, input.progress) {
        (State::Staging { .. }, Some(p)) => Some(shown_text(&format!("staging: {p}"))),
        _ => None,
    };
    if node.progress == now {
        return None;
    }
    let due = input
        .progress_written
        .is_none_or(|at| input.now >= at + PROGRESS_EVERY);
    (now.is_none() || due).then_some(now)
}

/// The Update this node works for, and the grant in progress under it.
struct Owner<'a> {
    update: &'a Update,
    target: ImageRef,
    /// A grant of this Update on the Node that is not answered with Done or Failed yet.
    grant: Option<Grant>,
}

fn selects(update: &Update, node: &NodeView) -> bool {
    match &update.spec.node_selector {
        None => true,
        Some(sel) => Selector::from_label_selector(sel).is_ok_and(|s| s.matches(&node.labels)),
    }
}

fn target_of(update: &Update, policy: ImagePolicy) -> Option<ImageRef> {
    target_image(&update.spec.os_image_url, policy).ok()
}

/// The grant's Update when a grant is open; else the newest valid Update that selects this
/// node and is not aborted (the admin's latest wish). An invalid Update (the coordinator halts
/// it and says why) is never followed: nothing is staged for a rollout that cannot run.
///
/// A grant not begun yet of an Update that does not select this node is not taken up (and
/// named in `refused`): the coordinator grants only nodes its Update selects, so either the
/// labels changed since, or the record is not what it seems. A grant already begun is
/// finished wherever the labels went.
fn owner<'a>(
    node: &NodeView,
    updates: &'a [Update],
    policy: ImagePolicy,
    refused: &mut Option<String>,
) -> Option<Owner<'a>> {
    if let Some(g) = &node.grant {
        let phase = node.phase_for(g);
        let open = !phase.is_some_and(AgentPhase::is_terminal);
        let granting = updates
            .iter()
            .find(|u| u.metadata.uid.as_deref() == Some(g.uid.as_str()));
        if let (true, Some(u)) = (open, granting) {
            if phase.is_none() && !selects(u, node) {
                *refused = Some(format!(
                    "grant {g} of Update {} not taken up: its nodeSelector does not select \
                     this node",
                    u.metadata.name.as_deref().unwrap_or("?")
                ));
            } else if let Some(target) = target_of(u, policy) {
                return Some(Owner {
                    update: u,
                    target,
                    grant: Some(g.clone()),
                });
            }
        }
    }
    updates
        .iter()
        .filter(|u| u.spec.abort.is_none() && selects(u, node))
        .filter_map(|u| Some((u, validated_image(&u.spec, policy).ok()?)))
        .max_by(|(a, _), (b, _)| {
            let key = |u: &Update| {
                (
                    u.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    u.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        })
        .map(|(update, target)| Owner {
            update,
            target,
            grant: None,
        })
}

/// The phase the Node shows for a machine working on a begun grant.
fn phase_of(state: &State) -> Option<AgentPhase> {
    Some(match state {
        State::Staging { .. } => AgentPhase::Staging,
        State::Staged { .. } => AgentPhase::Staged,
        State::Granted { .. } | State::Draining { .. } => AgentPhase::Draining,
        State::Rebooting { .. } => AgentPhase::Rebooting,
        State::Verifying { .. } | State::RollingBack { .. } => AgentPhase::Verifying,
        State::Idle | State::Done { .. } | State::RolledBack { .. } | State::Failed { .. } => {
            return None
        }
    })
}

fn at_rest(state: &State) -> bool {
    matches!(
        state,
        State::Idle | State::Done { .. } | State::RolledBack { .. } | State::Failed { .. }
    )
}

/// Decide. See the module documentation for the rules.
pub fn decide(input: Input<'_>) -> Decision {
    let machine = input.machine;
    let mut d = Decision {
        may_lead: !machine.in_flight(),
        ..Decision::default()
    };
    let Some(node) = input.node else {
        // No Node: nothing to answer, nothing to write; an unfinished upgrade goes on alone.
        return d;
    };
    if let Some(booted) = input.booted_image {
        if node.os_image.as_deref() != Some(booted) {
            d.annotations.insert(OS_IMAGE, Some(booted.to_owned()));
        }
    }
    let owner = owner(node, input.updates, input.policy, &mut d.refused);
    d.following = owner.as_ref().and_then(|o| o.update.metadata.name.clone());
    let staged = match (&machine.state, &owner) {
        (State::Staged { target, .. }, Some(o)) if *target == o.target => Some(target.to_string()),
        _ => None,
    };
    if node.staged != staged {
        d.annotations.insert(STAGED, staged);
    }
    if let Some(progress) = progress(node, &input) {
        d.annotations.insert(PROGRESS, progress);
    }

    let Some(owner) = owner else {
        if matches!(machine.state, State::Staging { .. } | State::Staged { .. }) {
            d.events.push(Event::TargetWithdrawn);
        }
        d.uncordon = node.cordoned_by_hkd && at_rest(&machine.state);
        return d;
    };
    let target = &owner.target;
    let Some(grant) = owner.grant.clone() else {
        if may_stage(owner.update, &node.name) {
            prestage(&input, target, &mut d);
        }
        d.uncordon = node.cordoned_by_hkd && at_rest(&machine.state);
        return d;
    };
    d.may_lead = false;
    let begun = node.phase_for(&grant).is_some();
    let finish = |answer: Answer| Finish {
        grant: grant.clone(),
        answer,
        uncordon: node.cordoned_by_hkd,
        kube_version: owner.update.spec.kube_version().map(str::to_owned),
        control_plane: node.control_plane,
    };
    let withdraw = owner
        .update
        .spec
        .abort
        .as_ref()
        .is_some_and(|a| a.in_flight == InFlight::RollBack);
    let mine = machine.state.target() == Some(target);

    if withdraw && !machine.in_flight() {
        // Aborted with roll back: a node that has not started its drain gives the grant back.
        if matches!(machine.state, State::Staging { .. } | State::Staged { .. }) {
            d.events.push(Event::TargetWithdrawn);
        }
        d.finish = Some(finish(Answer::Failed(
            "the rollout was aborted before this node was taken out of service".into(),
        )));
        return d;
    }

    match &machine.state {
        // Answers: the machine is at rest with the target's outcome.
        State::Done { .. } if mine => d.finish = Some(finish(Answer::Done)),
        State::Idle if input.booted_image.is_some_and(|b| target.is_same_as(b)) => {
            d.finish = Some(finish(Answer::Done))
        }
        State::RolledBack { reason, .. } | State::Failed { reason, .. }
            if mine && (begun || machine.failed_target.as_ref() == Some(target)) =>
        {
            let reason = if begun {
                reason.clone()
            } else {
                format!("this target failed on this node before: {reason}")
            };
            d.finish = Some(finish(Answer::Failed(reason)));
        }
        // Under way: show where.
        state if machine.in_flight() || (mine && !at_rest(state)) => {
            let phase = phase_of(state).unwrap_or(AgentPhase::Staging);
            let phase = if phase == AgentPhase::Staged {
                AgentPhase::Draining
            } else {
                phase
            };
            show(node, &grant, phase, reason_of(state), input.now, &mut d);
            if matches!(state, State::Staged { .. }) {
                d.events.push(Event::Granted);
            }
        }
        // Not started under this grant: begin it, then ask for the target.
        _ => {
            show(node, &grant, AgentPhase::Staging, None, input.now, &mut d);
            d.events.push(Event::TargetRequested {
                target: target.clone(),
            });
        }
    }
    d
}

fn reason_of(state: &State) -> Option<String> {
    match state {
        State::RollingBack { reason, .. } => Some(format!("rolling back: {reason}")),
        _ => None,
    }
}

/// Write `phase` for `grant` (and `since` when the phase or grant changes).
fn show(
    node: &NodeView,
    grant: &Grant,
    phase: AgentPhase,
    reason: Option<String>,
    now: Timestamp,
    d: &mut Decision,
) {
    if node.phase_for(grant) != Some(phase) {
        d.annotations.insert(PHASE, Some(phase.as_str().to_owned()));
        d.annotations.insert(PHASE_GRANT, Some(grant.to_string()));
        d.annotations.insert(SINCE, Some(now.to_string()));
    }
    if node.reason != reason {
        d.annotations.insert(REASON, reason);
    }
}

/// The annotations that answer `grant` with `answer` (written after kubeadm and uncordon).
pub fn answer_annotations(
    grant: &Grant,
    answer: &Answer,
    now: Timestamp,
) -> BTreeMap<&'static str, Option<String>> {
    let (phase, reason) = match answer {
        Answer::Done => (AgentPhase::Done, None),
        Answer::Failed(r) => (AgentPhase::Failed, Some(r.clone())),
    };
    BTreeMap::from([
        (PHASE, Some(phase.as_str().to_owned())),
        (PHASE_GRANT, Some(grant.to_string())),
        (SINCE, Some(now.to_string())),
        (REASON, reason),
    ])
}

/// Whether this node may stage ahead of its grant: always without `spec.staging`; with it,
/// only under a permit for the current target (the coordinator bounds how many pull at once).
fn may_stage(update: &Update, node: &str) -> bool {
    if update.spec.staging.is_none() {
        return true;
    }
    let Some(status) = &update.status else {
        return false;
    };
    let current = status.target_generation.unwrap_or(i64::MAX);
    status
        .staging_permits
        .get(node)
        .is_some_and(|g| *g >= current)
}

/// No grant yet: stage the target ahead of it.
fn prestage(input: &Input<'_>, target: &ImageRef, d: &mut Decision) {
    let machine = input.machine;
    if machine.in_flight() {
        return;
    }
    let have = machine.state.target() == Some(target);
    match &machine.state {
        State::Staging { .. } | State::Staged { .. } | State::Done { .. } if have => {}
        _ if machine.failed_target.as_ref() == Some(target) => {}
        State::Idle | State::Done { .. } | State::RolledBack { .. } | State::Failed { .. }
            if input.booted_image.is_some_and(|b| target.is_same_as(b)) => {}
        State::Failed { .. } | State::RolledBack { .. } if have => {
            let due = match input.last_retry {
                Some((t, at)) if t == target => at + input.retry_after,
                _ => input.now,
            };
            if due <= input.now {
                d.events.push(Event::TargetRequested {
                    target: target.clone(),
                });
            } else {
                d.wake_at = Some(due);
            }
        }
        _ => d.events.push(Event::TargetRequested {
            target: target.clone(),
        }),
    }
}

/// The kubeadm command a finished node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeadmStep {
    /// `kubeadm upgrade apply -y <version>`: the first control-plane node upgrades the
    /// cluster's control plane.
    Apply(String),
    /// `kubeadm upgrade node`: every other node follows the upgraded control plane.
    Node,
}

fn version_triple(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Which kubeadm step a node runs once its OS is done: none without `kubeVersion`; `apply` on
/// a control-plane node while the API server is older than the target (that node is the
/// first); `node` everywhere else. Both are idempotent, so a step repeated after a restart
/// does no harm.
pub fn kubeadm_step(
    want: Option<&str>,
    control_plane: bool,
    server_version: Option<&str>,
) -> Option<KubeadmStep> {
    let want = want.map(str::trim).filter(|w| !w.is_empty())?;
    let target = version_triple(want);
    let server_at_target = server_version
        .and_then(version_triple)
        .is_some_and(|have| Some(have) >= target);
    if control_plane && !server_at_target {
        let v = if want.starts_with('v') {
            want.to_owned()
        } else {
            format!("v{want}")
        };
        return Some(KubeadmStep::Apply(v));
    }
    Some(KubeadmStep::Node)
}

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
