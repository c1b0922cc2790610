//! What the FleetLock server decides: which Node a request is, whether it gets a slot, what to
//! release, which locks to reclaim. Pure: the Updates, the Nodes (as [`NodeView`]s with their
//! ledger grants attached) and `now` in, a decision out; `server.rs` reads and writes.
//!
//! A lock is a grant. The slot comes from the planner itself ([`plan`]): the asking node is
//! marked `lock_wanted` and the Update that selects it is planned as the coordinator would;
//! the lock is taken only if that plan grants this node. So `maxUnavailable` (counting hkd
//! nodes in flight, NotReady and foreign-cordoned nodes, other FleetLock locks), windows,
//! `paused`, the failure budget, `abort` and control-plane-first hold for FleetLock nodes
//! exactly as for hkd nodes, and a refusal carries the planner's reason for this node.

use std::time::Duration;

use jiff::Timestamp;

use super::id;
use super::wire::{Kind, Rejection, Request};
use crate::cluster::annotations::{NodeView, FLEETLOCK_GROUP};
use crate::cluster::plan::plan;
use crate::cluster::selector::Selector;
use crate::cluster::update::{ImagePolicy, Update};

/// The Node a request names, after the group and id checks.
pub fn node_of<'a>(req: &Request, views: &'a [NodeView]) -> Result<&'a NodeView, Rejection> {
    if !views
        .iter()
        .any(|v| v.fleetlock_group.as_deref() == Some(req.group.as_str()))
    {
        return Err(Rejection::new(
            Kind::UnknownGroup,
            format!(
                "group {:?} is no node pool: no Node carries the label {FLEETLOCK_GROUP}={}",
                req.group, req.group
            ),
        ));
    }
    let Some(want) = id::normalize(&req.id) else {
        return Err(Rejection::new(
            Kind::UnknownId,
            format!(
                "id {:?} is not a 128-bit id; Zincati sends its app-specific machine id",
                req.id
            ),
        ));
    };
    let Some(node) = views
        .iter()
        .find(|v| v.machine_id.as_deref().and_then(id::zincati_id).as_deref() == Some(&want))
    else {
        return Err(Rejection::new(
            Kind::UnknownId,
            format!(
                "id {want} is no Node's: no Node's machine-id derives it (is its kubelet \
                 registered, and its Zincati's identity.node_uuid left to the default?)"
            ),
        ));
    };
    match node.fleetlock_group.as_deref() {
        Some(g) if g == req.group => Ok(node),
        Some(g) => Err(Rejection::new(
            Kind::GroupMismatch,
            format!(
                "node {} is in group {g:?}, not {:?} (label {FLEETLOCK_GROUP})",
                node.name, req.group
            ),
        )),
        None => Err(Rejection::new(
            Kind::GroupMismatch,
            format!(
                "node {} is not a FleetLock node: label it {FLEETLOCK_GROUP}={} to let its \
                 Zincati take locks",
                node.name, req.group
            ),
        )),
    }
}

/// The Updates holding a FleetLock lock of `node`, by index.
pub fn locks_of(node: &str, updates: &[Update]) -> Vec<usize> {
    updates
        .iter()
        .enumerate()
        .filter(|(_, u)| {
            u.status
                .as_ref()
                .and_then(|s| s.grants.get(node))
                .is_some_and(|r| r.is_fleetlock())
        })
        .map(|(i, _)| i)
        .collect()
}

/// What `pre-reboot` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    /// The node holds its lock already (recursive locking): drain and answer.
    Held { update: usize },
    /// Record a lock of the node in this Update's ledger.
    Take { update: usize },
}

/// Decide `pre-reboot` for `node`. `updates` in the coordinator's order (oldest first); the
/// views with their ledger grants attached.
pub fn lock(
    node: &NodeView,
    updates: &[Update],
    views: &[NodeView],
    now: Timestamp,
    policy: ImagePolicy,
) -> Result<Lock, Rejection> {
    if let Some(&update) = locks_of(&node.name, updates).first() {
        return Ok(Lock::Held { update });
    }
    let selecting = updates.iter().position(|u| {
        u.metadata.deletion_timestamp.is_none()
            && u.spec
                .node_selector
                .as_ref()
                .map(|s| Selector::from_label_selector(s).unwrap_or_default())
                .unwrap_or_default()
                .matches(&node.labels)
    });
    let Some(update) = selecting else {
        return Err(Rejection::new(
            Kind::NoRollout,
            format!(
                "no Update selects node {}: create one whose nodeSelector covers its pool, \
                 which sets the budget (maxUnavailable, windows) its locks come from",
                node.name
            ),
        ));
    };
    let mut asking = views.to_vec();
    for v in asking.iter_mut().filter(|v| v.name == node.name) {
        v.lock_wanted = true;
    }
    let p = plan(&updates[update], &asking, now, policy);
    if p.grants.contains(&node.name) {
        return Ok(Lock::Take { update });
    }
    let why = p
        .all_nodes
        .iter()
        .find(|r| r.name == node.name)
        .map(|r| {
            if r.reason.is_empty() {
                r.phase.clone()
            } else {
                r.reason.clone()
            }
        })
        .filter(|r| !r.is_empty())
        .or(p.halt)
        .unwrap_or_else(|| "another node's turn".into());
    Err(Rejection::new(
        Kind::SemaphoreFull,
        format!(
            "no slot for node {} in Update {}: {why}",
            node.name,
            updates[update].metadata.name.as_deref().unwrap_or("?")
        ),
    ))
}

/// Why a lock is taken back without its `steady-state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reclaim {
    /// Its Node was deleted.
    NodeGone,
    /// Held longer than the timeout: the node never came back, or its Zincati never said.
    Expired { held: Duration },
}

/// The FleetLock locks to reclaim: (Update index, node, why).
pub fn reclaims(
    updates: &[Update],
    exists: impl Fn(&str) -> bool,
    now: Timestamp,
    timeout: Duration,
) -> Vec<(usize, String, Reclaim)> {
    let mut out = Vec::new();
    for (i, u) in updates.iter().enumerate() {
        let Some(status) = &u.status else { continue };
        for (node, r) in status.grants.iter().filter(|(_, r)| r.is_fleetlock()) {
            if !exists(node) {
                out.push((i, node.clone(), Reclaim::NodeGone));
                continue;
            }
            let held = r.granted_at.0.duration_until(now);
            if !held.is_negative() && held.unsigned_abs() > timeout {
                out.push((
                    i,
                    node.clone(),
                    Reclaim::Expired {
                        held: held.unsigned_abs(),
                    },
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::annotations::Grant;
    use crate::cluster::update::{GrantRecord, UpdateSpec, UpdateStatus, FLEETLOCK};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    const MACHINE_A: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";
    const ID_A: &str = "975228d46dc94622b9bbe16671e2b58d";

    fn now() -> Timestamp {
        "2024-03-02T10:00:00Z".parse().unwrap()
    }

    fn update(max_unavailable: i32) -> Update {
        let spec: UpdateSpec = serde_json::from_value(json!({
            "osImageURL": "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2",
            "maxUnavailable": max_unavailable,
        }))
        .unwrap();
        let mut u = Update::new("os", spec);
        u.metadata.uid = Some("uid-1".into());
        u.metadata.generation = Some(1);
        u.status = Some(UpdateStatus {
            coordinator_term: Some(1),
            ..Default::default()
        });
        u
    }

    fn zincati(name: &str, machine: &str) -> NodeView {
        NodeView {
            name: name.into(),
            ready: true,
            machine_id: Some(machine.into()),
            fleetlock_group: Some("workers".into()),
            ..Default::default()
        }
    }

    fn hkd(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            ready: true,
            os_image: Some("old".into()),
            ..Default::default()
        }
    }

    fn req(id: &str, group: &str) -> Request {
        Request {
            op: super::super::wire::Op::PreReboot,
            id: id.into(),
            group: group.into(),
        }
    }

    fn locked(mut u: Update, node: &str, at: &str) -> Update {
        u.status.as_mut().unwrap().grants.insert(
            node.into(),
            GrantRecord {
                generation: 1,
                term: 1,
                granted_at: Time(at.parse().unwrap()),
                source: Some(FLEETLOCK.into()),
            },
        );
        u
    }

    #[test]
    fn the_id_finds_the_node_and_group_and_id_errors_are_the_protocols() {
        let views = [zincati("z-1", MACHINE_A), hkd("h-1")];
        assert_eq!(node_of(&req(ID_A, "workers"), &views).unwrap().name, "z-1");
        let kind = |r: Request| node_of(&r, &views).unwrap_err().kind;
        assert_eq!(kind(req(ID_A, "default")), Kind::UnknownGroup);
        assert_eq!(
            kind(req("00000000000040008000000000000000", "workers")),
            Kind::UnknownId
        );
        assert_eq!(kind(req("node-1", "workers")), Kind::UnknownId);
        // The id of a node outside the group it names.
        let mut other = zincati("z-2", MACHINE_A);
        other.fleetlock_group = Some("infra".into());
        let views = [other, zincati("z-3", "11111111111111111111111111111111")];
        assert_eq!(
            node_of(&req(ID_A, "workers"), &views).unwrap_err().kind,
            Kind::GroupMismatch
        );
    }

    #[test]
    fn a_lock_is_a_grant_of_the_planner_under_the_shared_budget() {
        let u = update(1);
        let views = vec![zincati("z-1", MACHINE_A), hkd("h-1")];
        assert_eq!(
            lock(
                &views[0],
                std::slice::from_ref(&u),
                &views,
                now(),
                ImagePolicy::default()
            ),
            Ok(Lock::Take { update: 0 })
        );
        // The hkd node in flight uses the one slot.
        let mut busy = views.clone();
        busy[1].grant = Some(Grant {
            uid: "uid-1".into(),
            generation: 1,
        });
        let r = lock(
            &busy[0],
            std::slice::from_ref(&u),
            &busy,
            now(),
            ImagePolicy::default(),
        )
        .unwrap_err();
        assert_eq!(r.kind, Kind::SemaphoreFull);
        assert!(r.value.contains("maxUnavailable 1"), "{}", r.value);
        // Held already: recursive.
        let held = locked(u.clone(), "z-1", "2024-03-02T09:59:00Z");
        assert_eq!(
            lock(&views[0], &[held], &views, now(), ImagePolicy::default()),
            Ok(Lock::Held { update: 0 })
        );
        // A paused Update gives no slot, and says so.
        let mut paused = u.clone();
        paused.spec.paused = true;
        let r = lock(&views[0], &[paused], &views, now(), ImagePolicy::default()).unwrap_err();
        assert!(r.value.contains("paused"), "{}", r.value);
        // No Update selects the node.
        let mut elsewhere = u;
        elsewhere.spec.node_selector =
            Some(serde_json::from_value(json!({"matchLabels": {"pool": "db"}})).unwrap());
        assert_eq!(
            lock(
                &views[0],
                &[elsewhere],
                &views,
                now(),
                ImagePolicy::default()
            )
            .unwrap_err()
            .kind,
            Kind::NoRollout
        );
    }

    #[test]
    fn locks_of_deleted_nodes_and_past_the_timeout_are_reclaimed() {
        let u = locked(
            locked(update(2), "gone", "2024-03-02T09:59:00Z"),
            "stuck",
            "2024-03-02T08:00:00Z",
        );
        let u = locked(u, "fresh", "2024-03-02T09:30:00Z");
        let r = reclaims(&[u], |n| n != "gone", now(), Duration::from_secs(3600));
        assert_eq!(
            r,
            vec![
                (0, "gone".into(), Reclaim::NodeGone),
                (
                    0,
                    "stuck".into(),
                    Reclaim::Expired {
                        held: Duration::from_secs(7200)
                    }
                ),
            ]
        );
    }
}
