//! The coordinator's planner: which nodes to grant now, and what the Update's status says.
//!
//! Pure: the Update, the Nodes (as [`NodeView`]s built from the annotation protocol) and `now`
//! go in; grants, a halt reason, when to look again and the new status come out. The
//! coordinator writes the grants (with resourceVersion preconditions) and the status, and
//! calls again on every watch event or after `wake_after`.
//!
//! Rules, in order:
//! - an invalid spec (see [`validate`](super::update::validate)) halts: no grants;
//! - only nodes matching `nodeSelector` belong to the rollout;
//! - a node is done when it answered its grant (for the current target) with `Done`, or when
//!   it already runs the target (its `os-image` annotation, and its kubelet version when
//!   `kubeVersion` is set);
//! - more failures than `maxFailed` halt (I6); a failed control-plane node halts too when
//!   `kubeVersion` is set, since workers' kubelets must never be newer than the API server;
//! - `abort` (set by `hkctl abort`): no new grants, ever; Halted with reason `Aborted` (the
//!   nodes in flight finish or withdraw, as `abort.inFlight` tells their agents);
//! - `paused`: no grants; outside every maintenance window: no grants, and `wake_after` says
//!   when the next one opens;
//! - control-plane nodes first, one at a time; workers only once no control-plane node is
//!   pending, waiting or in flight;
//! - never more than `maxUnavailable` out of service (I1), counted as follows; with
//!   `maxUnavailablePerZone` or `maxUnavailableZones`, never more than that per topology
//!   domain or that many domains ([`super::topology`]), counted the same way;
//! - a hold from outside the Nodes (a [`Hold`] the coordinator found: a blocking pod on a node)
//!   keeps its node from a grant, or the whole rollout when it names no node; the node is
//!   shown Waiting with the hold's message and does not count as out of service.
//! - a FleetLock node (label `housekeeper.io/fleetlock-group`) is granted only on its
//!   client's request (`lock_wanted`, set by the FleetLock server); its lock counts in flight
//!   like any grant, and without one it is shown done ("its Zincati asks").
//!
//! **What counts as out of service.** Every selected node granted by this Update and not yet
//! `Done`/`Failed` (in flight, whatever its generation), plus every other selected node that
//! is already unavailable: NotReady, cordoned by someone else (an admin's cordon is a node out
//! of service as far as workloads go), or in flight for another Update. Those are never
//! granted while so — hkd neither reboots a node someone else took out nor upgrades a node
//! that cannot report — and they use up the budget, like unavailable pods in a Deployment's
//! `maxUnavailable`: taking a second node down while one is already down is what the budget
//! is there to prevent. Status names them, so a rollout that waits says on whom.
//!
//! A grant is `<uid>/<generation>`; `status.targetGeneration` records when the target last
//! changed, so a `Done` or `Failed` answer to a grant older than that is for an old target.

use std::cmp::Reverse;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::annotations::{AgentPhase, Grant, NodeView};
use super::selector::Selector;
use super::topology::{ZoneBudget, ZoneLimits};
use super::update::{
    validated_image, Counts, Hold, ImagePolicy, InFlight, NodeSummary, Update, UpdateCondition,
    UpdateStatus, UpdateTarget, MAX_HOLDS, MAX_NODE_SUMMARIES,
};
use super::window;
use crate::image_ref::ImageRef;

/// What the coordinator should do now.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// Nodes to grant, in the order to write them.
    pub grants: Vec<String>,
    /// Why the rollout is halted, when it is.
    pub halt: Option<String>,
    /// Plan again after this long even without events (a window opens or closes).
    pub wake_after: Option<Duration>,
    /// The grant value to write (`<uid>/<generation>`).
    pub grant: Option<Grant>,
    pub status: UpdateStatus,
    /// Every selected node in the order of `status.nodes`, without its bound: what `hkctl
    /// status` shows. A pending node's reason says what it waits for.
    pub all_nodes: Vec<NodeSummary>,
}

/// Where one selected node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    Done(String),
    Failed(String),
    /// Granted by this Update, not finished; the label is the agent's phase or "Granted".
    InFlight(String),
    /// Could be granted; only its turn is missing.
    Pending,
    /// Held back by its own state; it counts as out of service.
    Waiting(String),
    /// In service, but held back by a hold from outside (a blocking pod) or by the zone
    /// limits' need of its label.
    Held(String),
}

pub const PROGRESSING: &str = "Progressing";
pub const COMPLETE: &str = "Complete";
pub const HALTED: &str = "Halted";
pub const PAUSED: &str = "Paused";
/// The phase shown for a FleetLock node holding its lock.
pub const FLEETLOCK_LOCKED: &str = "Locked (FleetLock)";
/// The reason shown for a FleetLock node without a lock.
pub const FLEETLOCK_IDLE: &str = "FleetLock: its Zincati asks before it reboots";
/// The Halted reason of an aborted Update.
pub const ABORTED: &str = "Aborted";

/// How many failed nodes a Halted message names before "and N more".
const NAMED_IN_MESSAGE: usize = 5;

fn same_kube_version(a: &str, b: &str) -> bool {
    a.trim_start_matches('v') == b.trim_start_matches('v')
}

/// [`plan_with`] no holds from outside the Nodes.
pub fn plan(
    update: &Update,
    nodes: &[NodeView],
    now: Timestamp,
    policy: ImagePolicy,
) -> RolloutPlan {
    plan_with(update, nodes, &[], now, policy)
}

/// Decide. See the module documentation for the rules. The steps, each its own function:
/// validate, [`classify`] the selected nodes, count them against the [`budget`], the
/// [`halt_reason`], [`choose`] the grants, then the status ([`summaries`], [`progress`]).
/// `holds` are what the coordinator found outside the Nodes; they go into the status as given
/// (bounded), so `hkctl status` plans with the same.
pub fn plan_with(
    update: &Update,
    nodes: &[NodeView],
    holds: &[Hold],
    now: Timestamp,
    policy: ImagePolicy,
) -> RolloutPlan {
    let spec = &update.spec;
    let prev = update.status.clone().unwrap_or_default();
    let generation = update.metadata.generation.unwrap_or(1);
    let mut status = UpdateStatus {
        observed_generation: Some(generation),
        holds: holds.iter().take(MAX_HOLDS).cloned().collect(),
        holds_omitted: holds.len().saturating_sub(MAX_HOLDS) as i32,
        ..Default::default()
    };
    let halt = |status: &mut UpdateStatus, reason: &str, message: String| {
        status.state = Some(HALTED.into());
        set_conditions(
            status,
            &prev,
            now,
            &[
                (HALTED, true, reason, &message),
                (PROGRESSING, false, reason, ""),
                (COMPLETE, false, reason, ""),
                (PAUSED, spec.paused, "", ""),
            ],
        );
        RolloutPlan {
            grants: Vec::new(),
            halt: Some(message),
            wake_after: None,
            grant: None,
            status: status.clone(),
            all_nodes: Vec::new(),
        }
    };
    let image = match validated_image(spec, policy) {
        Ok(image) => image,
        Err(errors) => return halt(&mut status, "InvalidSpec", errors.join("; ")),
    };
    let Some(uid) = update.metadata.uid.clone() else {
        return halt(&mut status, "NoUid", "the Update has no uid yet".into());
    };
    let grant = Grant { uid, generation };
    let target = UpdateTarget {
        os_image_url: spec.os_image_url.clone(),
        kube_version: spec.kube_version().map(str::to_owned),
    };
    let target_generation = match (&prev.target, prev.target_generation) {
        (Some(t), Some(g)) if *t == target => g,
        _ => generation,
    };
    status.target = Some(target.clone());
    status.target_generation = Some(target_generation);
    let selector = match &spec.node_selector {
        Some(s) => Selector::from_label_selector(s).unwrap_or_default(),
        None => Selector::default(),
    };
    let zones = ZoneLimits::from_spec(spec);
    let held = |n: &NodeView| -> Option<String> {
        let mut why: Vec<&str> = holds
            .iter()
            .filter(|h| h.node.as_deref() == Some(n.name.as_str()))
            .map(|h| h.message.as_str())
            .collect();
        let no_label = zones
            .as_ref()
            .filter(|z| !n.labels.contains_key(&z.key))
            .map(|z| super::topology::ZoneHold::NoLabel { key: z.key.clone() }.to_string());
        why.extend(no_label.as_deref());
        (!why.is_empty()).then(|| why.join("; "))
    };
    let selected = classify(
        nodes,
        &selector,
        &grant,
        target_generation,
        &image,
        &target,
        held,
    );
    let max_unavailable = spec.max_unavailable.max(1) as usize;
    let (mut counts, budget) = budget(&selected, max_unavailable);
    let halted = halt_reason(update, &selected, &counts, &target);

    let (window_open, window_change) =
        window::status(&spec.maintenance_windows, now).unwrap_or((false, None));
    let wake_after = window_change.map(|t| {
        let d = now.duration_until(t);
        if d.is_negative() {
            Duration::ZERO
        } else {
            d.unsigned_abs()
        }
    });
    let Choice {
        grants,
        holding,
        zone_waits,
    } = if halted.is_some() {
        Choice::default()
    } else {
        choose(
            update,
            &selected,
            &counts,
            Limits {
                budget,
                max_unavailable,
                zones: zones.as_ref(),
                holds,
            },
            window_open.then_some(()).ok_or(window_change),
        )
    };

    // Status.
    let pending_reason = pending_reason(halted.as_ref(), holding.as_ref(), max_unavailable);
    let granted_now = grants.len() as i32;
    counts.pending -= granted_now;
    counts.in_flight += granted_now;
    status.counts = counts.clone();
    let all_nodes = summaries(&selected, &grants, &pending_reason, &zone_waits, now);
    if let Some(s) = &spec.staging {
        status.staging_permits = staging_permits(
            &selected,
            &grants,
            &prev,
            target_generation,
            s.max_concurrent.max(1) as usize,
            &image,
        );
    }
    status.nodes_omitted = all_nodes.len().saturating_sub(MAX_NODE_SUMMARIES) as i32;
    status.nodes = all_nodes.iter().take(MAX_NODE_SUMMARIES).cloned().collect();

    if let Some((reason, message)) = halted {
        let mut p = halt(&mut status, reason, message);
        p.wake_after = None;
        p.all_nodes = all_nodes;
        return p;
    }
    let complete = progress(update, &selected, &counts, holding, &prev, now, &mut status);
    RolloutPlan {
        grants,
        halt: None,
        wake_after: if complete { None } else { wake_after },
        grant: Some(grant),
        status,
        all_nodes,
    }
}

/// Whether `n` already runs the target: its image, and its kubelet when `kubeVersion` is set.
fn at_target(n: &NodeView, image: &ImageRef, target: &UpdateTarget) -> bool {
    n.os_image.as_deref().is_some_and(|i| image.is_same_as(i))
        && target.kube_version.as_deref().is_none_or(|want| {
            n.kubelet_version
                .as_deref()
                .is_some_and(|have| same_kube_version(have, want))
        })
}

/// Where each node the selector picks stands, in name order. `held` says why a node in service
/// is held back from outside, if it is.
fn classify<'a>(
    nodes: &'a [NodeView],
    selector: &Selector,
    grant: &Grant,
    target_generation: i64,
    image: &ImageRef,
    target: &UpdateTarget,
    held: impl Fn(&NodeView) -> Option<String>,
) -> Vec<(&'a NodeView, Class)> {
    let class_of = |n: &NodeView| -> Class {
        if let Some(g) = n.grant.as_ref().filter(|g| g.uid == grant.uid) {
            let current = g.generation >= target_generation;
            let reason = n.reason.clone().unwrap_or_default();
            match n.phase_for(g) {
                Some(AgentPhase::Done) if current || at_target(n, image, target) => {
                    return Class::Done(reason)
                }
                Some(AgentPhase::Failed) if current => return Class::Failed(reason),
                Some(p) if p.is_terminal() => {} // an answer for an older target
                Some(p) => return Class::InFlight(p.as_str().into()),
                None if n.fleetlock_group.is_some() => {
                    return Class::InFlight(FLEETLOCK_LOCKED.into())
                }
                None => return Class::InFlight("Granted".into()),
            }
        }
        // A FleetLock node is granted only when its Zincati asks (the FleetLock server plans
        // with `lock_wanted` set on it); otherwise there is nothing for this Update to do there.
        if n.fleetlock_group.is_some() && !n.lock_wanted {
            // The FleetLock server's last word on it (a reclaimed lock), else what it is.
            let said = n.reason.clone().filter(|r| !r.is_empty());
            return Class::Done(said.unwrap_or_else(|| FLEETLOCK_IDLE.into()));
        }
        if at_target(n, image, target) {
            return Class::Done("already at the target".into());
        }
        if let Some(g) = n.grant.as_ref().filter(|g| g.uid != grant.uid) {
            if !n.phase_for(g).is_some_and(AgentPhase::is_terminal) {
                return Class::Waiting(format!("in the rollout of another Update ({})", g.uid));
            }
        }
        if !n.ready {
            return Class::Waiting("NotReady".into());
        }
        if n.cordoned_by_others() {
            return Class::Waiting("cordoned by someone else".into());
        }
        if let Some(why) = held(n) {
            return Class::Held(why);
        }
        Class::Pending
    };
    let mut selected: Vec<(&NodeView, Class)> = nodes
        .iter()
        .filter(|n| selector.matches(&n.labels))
        .map(|n| (n, class_of(n)))
        .collect();
    selected.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    selected
}

/// The counts by class, and how many more nodes may go out of service (I1): everything in
/// flight or unavailable for reasons of its own uses up `maxUnavailable`.
fn budget(selected: &[(&NodeView, Class)], max_unavailable: usize) -> (Counts, usize) {
    let mut counts = Counts {
        total: selected.len() as i32,
        ..Default::default()
    };
    let mut out_of_service = 0usize;
    for (n, class) in selected {
        match class {
            Class::Done(_) => counts.done += 1,
            Class::Failed(_) => counts.failed += 1,
            Class::InFlight(_) => counts.in_flight += 1,
            Class::Pending => counts.pending += 1,
            Class::Waiting(_) | Class::Held(_) => counts.waiting += 1,
        }
        out_of_service += usize::from(out_of_service_now(n, class));
    }
    (counts, max_unavailable.saturating_sub(out_of_service))
}

/// The staging permits after this plan ([`super::staging`]): candidates are the nodes not
/// started and in service (Pending or Held, not granted now), in grant order.
fn staging_permits(
    selected: &[(&NodeView, Class)],
    grants: &[String],
    prev: &UpdateStatus,
    generation: i64,
    max: usize,
    image: &ImageRef,
) -> std::collections::BTreeMap<String, i64> {
    let mut order: Vec<&(&NodeView, Class)> = selected
        .iter()
        .filter(|(n, c)| matches!(c, Class::Pending | Class::Held(_)) && !grants.contains(&n.name))
        .collect();
    order.sort_by_key(|(n, _)| (!n.control_plane, n.name.as_str()));
    let candidates: Vec<super::staging::Candidate<'_>> = order
        .iter()
        .map(|(n, _)| super::staging::Candidate {
            name: &n.name,
            staged: n.staged.as_deref().is_some_and(|s| image.is_same_as(s)),
        })
        .collect();
    super::staging::permits(&candidates, &prev.staging_permits, generation, max)
}

/// Whether a node uses up `maxUnavailable` (and its zone's limit): everything in flight or
/// unavailable for reasons of its own.
fn out_of_service_now(n: &NodeView, class: &Class) -> bool {
    match class {
        Class::InFlight(_) | Class::Waiting(_) => true,
        Class::Done(_) | Class::Failed(_) => !n.ready || n.cordoned_by_others(),
        Class::Pending | Class::Held(_) => false,
    }
}

/// The failed nodes for a message, with their reasons: the first few and how many more.
fn failed_names(selected: &[(&NodeView, Class)]) -> String {
    let failed: Vec<String> = selected
        .iter()
        .filter_map(|(n, c)| match c {
            Class::Failed(r) if r.is_empty() => Some(n.name.clone()),
            Class::Failed(r) => Some(format!("{} ({r})", n.name)),
            _ => None,
        })
        .collect();
    let mut m = failed
        .iter()
        .take(NAMED_IN_MESSAGE)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if failed.len() > NAMED_IN_MESSAGE {
        m.push_str(&format!(" and {} more", failed.len() - NAMED_IN_MESSAGE));
    }
    m
}

/// Why the rollout is halted (the Halted reason and message), if it is: aborted, past its
/// failure budget, or a failed control-plane node under `kubeVersion`.
fn halt_reason(
    update: &Update,
    selected: &[(&NodeView, Class)],
    counts: &Counts,
    target: &UpdateTarget,
) -> Option<(&'static str, String)> {
    let spec = &update.spec;
    let cp_failed: Vec<&str> = selected
        .iter()
        .filter(|(n, c)| n.control_plane && matches!(c, Class::Failed(_)))
        .map(|(n, _)| n.name.as_str())
        .collect();
    if let Some(abort) = &spec.abort {
        let in_flight = match abort.in_flight {
            InFlight::Finish => "nodes already granted finish",
            InFlight::RollBack => "nodes already granted and not yet rebooted withdraw",
        };
        Some((
            ABORTED,
            format!("aborted by an admin: no new grants; {in_flight}"),
        ))
    } else if counts.failed > spec.max_failed {
        Some((
            "FailureBudgetExceeded",
            format!(
                "{} node(s) failed, more than maxFailed {}: {}",
                counts.failed,
                spec.max_failed,
                failed_names(selected)
            ),
        ))
    } else if !cp_failed.is_empty() && target.kube_version.is_some() {
        Some((
            "ControlPlaneFailed",
            format!(
                "control-plane node(s) {} failed; workers are not upgraded past their API server: {}",
                cp_failed.join(", "),
                failed_names(selected)
            ),
        ))
    } else {
        None
    }
}

/// What limits the grants of one plan.
struct Limits<'a> {
    /// How many more nodes may go out of service (I1).
    budget: usize,
    max_unavailable: usize,
    zones: Option<&'a ZoneLimits>,
    holds: &'a [Hold],
}

/// The nodes to grant now, in order; why no (more) are granted (the Progressing reason and
/// message); and the pending nodes that wait for their zone, with why.
#[derive(Debug, Default)]
struct Choice {
    grants: Vec<String>,
    holding: Option<(String, String)>,
    zone_waits: std::collections::BTreeMap<String, String>,
}

/// The Progressing reason of a rollout whose zone limits hold its pending nodes.
pub const ZONE_LIMIT: &str = "ZoneLimit";
/// The Progressing reason of a rollout held by a hold that names no node.
pub const HELD: &str = "Held";
/// The Progressing reason of a rollout whose only open nodes are held (blocking pods).
pub const NODES_HELD: &str = "NodesHeld";

/// Choose the grants. `window` is Ok when a maintenance window is open, else when the next
/// opens.
fn choose(
    update: &Update,
    selected: &[(&NodeView, Class)],
    counts: &Counts,
    limits: Limits<'_>,
    window: Result<(), Option<Timestamp>>,
) -> Choice {
    let Limits {
        mut budget,
        max_unavailable,
        zones,
        holds,
    } = limits;
    fn zone_of<'n>(zones: Option<&ZoneLimits>, n: &'n NodeView) -> Option<&'n str> {
        zones.and_then(|z| n.labels.get(&z.key).map(String::as_str))
    }
    let mut zone_budget = zones.map(|z| {
        ZoneBudget::new(
            z,
            selected
                .iter()
                .filter(|(n, c)| out_of_service_now(n, c))
                .map(|(n, _)| zone_of(zones, n)),
        )
    });
    let mut admit = |n: &NodeView| -> Result<(), String> {
        let Some(zb) = zone_budget.as_mut() else {
            return Ok(());
        };
        let zone = zone_of(zones, n);
        zb.admit(zone).map_err(|e| e.to_string())?;
        zb.take(zone.unwrap_or_default());
        Ok(())
    };
    // A FleetLock node asking now goes first among the pending (the others wait for the
    // coordinator's next plan anyway); otherwise name order.
    let all = selected;
    let mut selected: Vec<&(&NodeView, Class)> = all.iter().collect();
    selected.sort_by_key(|(n, _)| !n.lock_wanted);
    let mut choice = Choice::default();
    let rollout_holds: Vec<&Hold> = holds.iter().filter(|h| h.node.is_none()).collect();
    let cp_open: Vec<&(&NodeView, Class)> = selected
        .iter()
        .copied()
        .filter(|(n, c)| n.control_plane && !matches!(c, Class::Done(_) | Class::Failed(_)))
        .collect();
    choice.holding = if update.spec.paused {
        Some(("Paused".into(), "paused: no new grants".into()))
    } else if let Err(window_change) = window {
        let when = window_change
            .map(|t| format!("; the next opens at {t}"))
            .unwrap_or_default();
        Some((
            "OutsideMaintenanceWindow".into(),
            format!("outside every maintenance window{when}"),
        ))
    } else if let Some(first) = rollout_holds.first() {
        let all: Vec<&str> = rollout_holds.iter().map(|h| h.message.as_str()).collect();
        Some((
            if first.reason.is_empty() {
                HELD.into()
            } else {
                first.reason.clone()
            },
            format!("held: {}", all.join("; ")),
        ))
    } else if let Some((n, _)) = cp_open
        .iter()
        .find(|(_, c)| matches!(c, Class::InFlight(_)))
    {
        Some((
            "ControlPlaneInFlight".into(),
            format!("control-plane node {} is upgrading; control-plane nodes go one at a time, workers after them", n.name),
        ))
    } else if let Some((n, _)) = cp_open.iter().find(|(_, c)| matches!(c, Class::Pending)) {
        if budget == 0 {
            Some((
                "MaxUnavailable".into(),
                unavailable_message(all, max_unavailable),
            ))
        } else if let Err(why) = admit(n) {
            choice.zone_waits.insert(n.name.clone(), why.clone());
            Some((
                ZONE_LIMIT.into(),
                format!("control-plane node {} waits: {why}", n.name),
            ))
        } else {
            choice.grants.push(n.name.clone());
            None
        }
    } else if let Some((n, Class::Waiting(why) | Class::Held(why))) =
        cp_open.first().map(|x| (x.0, x.1.clone()))
    {
        Some((
            "ControlPlaneWaiting".into(),
            format!(
                "control-plane node {} waits ({why}); workers go after the control plane",
                n.name
            ),
        ))
    } else {
        for (n, c) in selected.iter().copied() {
            if budget == 0 {
                break;
            }
            if !n.control_plane && *c == Class::Pending {
                match admit(n) {
                    Ok(()) => {
                        choice.grants.push(n.name.clone());
                        budget -= 1;
                    }
                    Err(why) => {
                        choice.zone_waits.insert(n.name.clone(), why);
                    }
                }
            }
        }
        let still_pending = counts.pending as usize > choice.grants.len();
        let held: Vec<String> = selected
            .iter()
            .filter_map(|(n, c)| match c {
                Class::Held(why) => Some(format!("{} ({why})", n.name)),
                _ => None,
            })
            .collect();
        if still_pending && budget == 0 {
            Some((
                "MaxUnavailable".into(),
                unavailable_message(all, max_unavailable),
            ))
        } else if let Some((first, why)) = choice.zone_waits.iter().next() {
            Some((
                ZONE_LIMIT.into(),
                format!(
                    "{} node(s) wait for their zone; {first}: {why}",
                    choice.zone_waits.len()
                ),
            ))
        } else if !held.is_empty() && choice.grants.is_empty() && !still_pending {
            let mut m = held
                .iter()
                .take(NAMED_IN_MESSAGE)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if held.len() > NAMED_IN_MESSAGE {
                m.push_str(&format!(" and {} more", held.len() - NAMED_IN_MESSAGE));
            }
            Some((NODES_HELD.into(), format!("held: {m}")))
        } else {
            None
        }
    };
    choice
}

/// What a node that is only waiting for its turn waits for.
fn pending_reason(
    halted: Option<&(&'static str, String)>,
    holding: Option<&(String, String)>,
    max_unavailable: usize,
) -> String {
    match (halted, holding) {
        (Some((reason, _)), _) if *reason == ABORTED => "aborted".to_owned(),
        (Some(_), _) => "halted".to_owned(),
        (None, Some((reason, message))) => match reason.as_str() {
            "Paused" => "paused".to_owned(),
            "OutsideMaintenanceWindow" => "window closed".to_owned(),
            "ControlPlaneInFlight" | "ControlPlaneWaiting" => "control plane first".to_owned(),
            "MaxUnavailable" => format!("no slot (maxUnavailable {max_unavailable})"),
            ZONE_LIMIT | NODES_HELD => String::new(),
            _ => message.clone(),
        },
        (None, None) => String::new(),
    }
}

/// Every selected node's line in status, failed first, then in flight, waiting, pending, done.
fn summaries(
    selected: &[(&NodeView, Class)],
    grants: &[String],
    pending_reason: &str,
    zone_waits: &std::collections::BTreeMap<String, String>,
    now: Timestamp,
) -> Vec<NodeSummary> {
    let mut summaries: Vec<(u8, NodeSummary)> = selected
        .iter()
        .map(|(n, c)| {
            let (rank, phase, reason) = match c {
                _ if grants.contains(&n.name) => (1, "Granted".to_owned(), String::new()),
                Class::Failed(r) => (0, "Failed".into(), r.clone()),
                Class::InFlight(p) => (1, p.clone(), n.reason.clone().unwrap_or_default()),
                Class::Waiting(r) | Class::Held(r) => (2, "Waiting".into(), r.clone()),
                Class::Pending => (
                    3,
                    "Pending".into(),
                    zone_waits
                        .get(&n.name)
                        .cloned()
                        .unwrap_or_else(|| pending_reason.to_owned()),
                ),
                Class::Done(r) => (4, "Done".into(), r.clone()),
            };
            let mut reason = reason;
            if !n.problems.is_empty() {
                if !reason.is_empty() {
                    reason.push_str("; ");
                }
                reason.push_str(&n.problems.join("; "));
            }
            let since = match c {
                Class::Pending | Class::Waiting(_) | Class::Held(_) => None,
                _ if grants.contains(&n.name) => Some(now),
                _ => n.since,
            };
            (
                rank,
                NodeSummary {
                    name: n.name.clone(),
                    phase,
                    reason,
                    since: since.map(Time),
                },
            )
        })
        .collect();
    summaries.sort_by_key(|(rank, s)| (*rank, Reverse(s.since.is_some()), s.name.clone()));
    summaries.into_iter().map(|(_, s)| s).collect()
}

/// The state and conditions of a rollout that is not halted; returns whether it is complete.
/// `counts` already include this plan's grants.
fn progress(
    update: &Update,
    selected: &[(&NodeView, Class)],
    counts: &Counts,
    holding: Option<(String, String)>,
    prev: &UpdateStatus,
    now: Timestamp,
    status: &mut UpdateStatus,
) -> bool {
    let spec = &update.spec;
    let open = counts.pending + counts.waiting + counts.in_flight;
    let complete = counts.total > 0 && open == 0;
    let (state, prog, prog_reason, prog_msg) = if counts.total == 0 {
        (
            "Waiting",
            false,
            "NoNodesSelected".to_owned(),
            "the node selector matches no node".to_owned(),
        )
    } else if complete {
        let msg = if counts.failed > 0 {
            format!(
                "{} node(s) done, {} failed within maxFailed {}: {}",
                counts.done,
                counts.failed,
                spec.max_failed,
                failed_names(selected)
            )
        } else {
            format!("{} node(s) done", counts.done)
        };
        ("Complete", false, "Complete".to_owned(), msg)
    } else if spec.paused {
        (
            "Paused",
            false,
            "Paused".to_owned(),
            "paused: no new grants; nodes already granted finish".to_owned(),
        )
    } else if let Some((reason, message)) = holding {
        let state = if counts.in_flight > 0 {
            "Progressing"
        } else {
            "Waiting"
        };
        (state, true, reason, message)
    } else {
        (
            "Progressing",
            true,
            "Granting".to_owned(),
            format!(
                "{} node(s) in flight, {} pending",
                counts.in_flight,
                counts.pending + counts.waiting
            ),
        )
    };
    status.state = Some(state.into());
    let complete_msg = if complete {
        prog_msg.clone()
    } else {
        String::new()
    };
    set_conditions(
        status,
        prev,
        now,
        &[
            (PROGRESSING, prog, &prog_reason, &prog_msg),
            (
                COMPLETE,
                complete,
                if complete { "Complete" } else { "NotComplete" },
                &complete_msg,
            ),
            (HALTED, false, "WithinBudget", ""),
            (
                PAUSED,
                spec.paused,
                if spec.paused { "Paused" } else { "NotPaused" },
                "",
            ),
        ],
    );
    complete
}

fn unavailable_message(selected: &[(&NodeView, Class)], max: usize) -> String {
    let names: Vec<String> = selected
        .iter()
        .filter_map(|(n, c)| match c {
            Class::InFlight(p) => Some(format!("{} ({p})", n.name)),
            Class::Waiting(w) => Some(format!("{} ({w})", n.name)),
            Class::Done(_) | Class::Failed(_) if !n.ready => Some(format!("{} (NotReady)", n.name)),
            Class::Done(_) | Class::Failed(_) if n.cordoned_by_others() => {
                Some(format!("{} (cordoned by someone else)", n.name))
            }
            _ => None,
        })
        .take(NAMED_IN_MESSAGE)
        .collect();
    format!("maxUnavailable {max} reached: {}", names.join(", "))
}

/// Set conditions, keeping `lastTransitionTime` where the status did not change.
fn set_conditions(
    status: &mut UpdateStatus,
    prev: &UpdateStatus,
    now: Timestamp,
    conds: &[(&str, bool, &str, &str)],
) {
    status.conditions = conds
        .iter()
        .map(|(type_, on, reason, message)| {
            let value = if *on { "True" } else { "False" };
            let since = prev
                .conditions
                .iter()
                .find(|c| c.type_ == *type_ && c.status == value)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            UpdateCondition {
                type_: (*type_).into(),
                status: value.into(),
                reason: if reason.is_empty() {
                    (*type_).into()
                } else {
                    (*reason).into()
                },
                message: (*message).into(),
                last_transition_time: since,
            }
        })
        .collect();
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
