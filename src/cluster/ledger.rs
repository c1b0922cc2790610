//! The grant ledger: which node may take itself out of service, recorded in the Update's
//! status under the coordinator's term — the one place a grant counts.
//!
//! Pure. The coordinator [`record`]s its grants here and claims each Update for its term
//! first ([`standing`]); agents and the planner read a node's grant with [`grants_by_node`].
//!
//! Why here and not on the Node: a node's own credential may write its own Node (it has to,
//! to report), so a grant on the Node could be forged by the node itself; and a grant written
//! Node by Node cannot be fenced against a coordinator that lost its Lease while its write was
//! on the way. The status of an Update is writable only by the coordinator's identity, and
//! every write to it is conditional on the resourceVersion it was planned on.
//!
//! Fencing (I9). A coordinator's term is the Lease's `leaseTransitions` as it took the Lease;
//! every acquisition counts one more, so each term names one holding. Before it plans, a
//! coordinator records its term in every Update's `status.coordinatorTerm` (a conditional
//! write); it stops as soon as it reads a newer term there. So once term T has claimed an
//! Update, no write of an older term can land on it: such a write would carry a
//! resourceVersion read before the claim (409), or one read after it, whose status shows T
//! and stops the writer. And since T claims every Update before it plans any, T plans on
//! everything an older term managed to write. A grant that lands late is therefore either
//! refused or seen — never a second node out of service behind the planner's back.
//!
//! Guarantees:
//! - a node's grant is the most recent record for it across all Updates (by term, then
//!   grant time): a later grant under another Update supersedes an answered earlier one,
//!   exactly as one grant per node did before;
//! - a record that contradicts its Update — a term newer than the Update's recorded term, a
//!   generation newer than the Update's — is refused and named, never acted on.
//!
//! Assumptions: successive grants of the same node within one term are minutes apart (a
//! whole upgrade lies between), far more than the wall clock of one coordinator steps.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::annotations::{Grant, NodeView};
use super::update::{GrantRecord, Update, UpdateStatus};

/// Where a coordinator of term `mine` stands with an Update whose status records `recorded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Recorded as this term: plan and write.
    Claimed,
    /// Older or none: record this term before planning anything.
    Claim,
    /// A newer term claimed it: this coordinator lost its term and writes nothing more.
    Superseded { newer: i64 },
}

pub fn standing(recorded: Option<i64>, mine: i64) -> Standing {
    match recorded {
        Some(t) if t == mine => Standing::Claimed,
        Some(t) if t > mine => Standing::Superseded { newer: t },
        _ => Standing::Claim,
    }
}

/// The ledger of the new status: the stored one with records of nodes that no longer exist
/// dropped (except FleetLock locks: the FleetLock server reclaims those and says so), this plan's grants recorded under `term` at `now` (replacing the node's earlier
/// record of this Update), and the term recorded.
pub fn record(
    new: &mut UpdateStatus,
    stored: &UpdateStatus,
    granted: &[String],
    generation: i64,
    term: i64,
    now: Timestamp,
    exists: impl Fn(&str) -> bool,
) {
    new.coordinator_term = Some(term);
    new.grants = stored
        .grants
        .iter()
        .filter(|(node, r)| exists(node) || r.is_fleetlock())
        .map(|(node, r)| (node.clone(), r.clone()))
        .collect();
    for node in granted {
        new.grants.insert(
            node.clone(),
            GrantRecord {
                generation,
                term,
                granted_at: Time(now),
                source: None,
            },
        );
    }
}

/// Each node's grant, from every Update's ledger, and a line for each record refused.
pub fn grants_by_node(updates: &[Update]) -> (HashMap<String, Grant>, Vec<String>) {
    latest(updates, |_| true)
}

/// Fill every view's `grant` from the ledgers; returns the lines of the records refused.
pub fn attach(views: &mut [NodeView], updates: &[Update]) -> Vec<String> {
    let (mut grants, refused) = grants_by_node(updates);
    for v in views.iter_mut() {
        v.grant = grants.remove(&v.name);
    }
    refused
}

/// The grant `node` holds now (see [`grants_by_node`]), and what was refused about it.
pub fn grant_of(node: &str, updates: &[Update]) -> (Option<Grant>, Vec<String>) {
    let (mut grants, refused) = latest(updates, |n| n == node);
    (grants.remove(node), refused)
}

/// The most recent valid record of each node `wanted` picks, and the records refused.
fn latest(
    updates: &[Update],
    wanted: impl Fn(&str) -> bool,
) -> (HashMap<String, Grant>, Vec<String>) {
    let mut best: HashMap<String, (i64, Timestamp, Grant)> = HashMap::new();
    let mut refused = Vec::new();
    for u in updates {
        let Some(status) = &u.status else { continue };
        let Some(uid) = u.metadata.uid.as_deref() else {
            continue;
        };
        let name = u.metadata.name.as_deref().unwrap_or("?");
        for (node, r) in status.grants.iter().filter(|(n, _)| wanted(n)) {
            if let Err(why) = check(r, status.coordinator_term, u.metadata.generation) {
                refused.push(format!(
                    "the grant of node {node} in Update {name} is refused: {why}"
                ));
                continue;
            }
            let grant = Grant {
                uid: uid.to_owned(),
                generation: r.generation,
            };
            let key = (r.term, r.granted_at.0, grant);
            if best.get(node).is_none_or(|have| *have < key) {
                best.insert(node.clone(), key);
            }
        }
    }
    let grants = best.into_iter().map(|(n, (_, _, g))| (n, g)).collect();
    (grants, refused)
}

fn check(r: &GrantRecord, recorded: Option<i64>, generation: Option<i64>) -> Result<(), String> {
    if r.term < 1 {
        return Err(format!("its term {} is not a term", r.term));
    }
    match recorded {
        None => return Err("the Update records no coordinator term".into()),
        Some(t) if r.term > t => {
            return Err(format!(
                "its term {} is newer than the Update's coordinator term {t}",
                r.term
            ))
        }
        _ => {}
    }
    if r.generation < 1 || generation.is_some_and(|g| r.generation > g) {
        return Err(format!(
            "its generation {} is not one the Update has had",
            r.generation
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::update::UpdateSpec;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn recorded_nodes(status: &UpdateStatus) -> Vec<&str> {
        status.grants.keys().map(String::as_str).collect()
    }

    fn rec(generation: i64, term: i64, at: &str) -> GrantRecord {
        GrantRecord {
            generation,
            term,
            granted_at: Time(t(at)),
            source: None,
        }
    }

    fn update(name: &str, uid: &str, generation: i64, term: Option<i64>) -> Update {
        let spec: UpdateSpec = serde_json::from_value(serde_json::json!({
            "osImageURL": "nestos:nestos/x86_64/stable",
        }))
        .unwrap();
        let mut u = Update::new(name, spec);
        u.metadata.uid = Some(uid.into());
        u.metadata.generation = Some(generation);
        u.status = Some(UpdateStatus {
            coordinator_term: term,
            ..Default::default()
        });
        u
    }

    fn with(mut u: Update, node: &str, r: GrantRecord) -> Update {
        u.status.as_mut().unwrap().grants.insert(node.into(), r);
        u
    }

    #[test]
    fn standing_by_term() {
        assert_eq!(standing(None, 3), Standing::Claim);
        assert_eq!(standing(Some(2), 3), Standing::Claim);
        assert_eq!(standing(Some(3), 3), Standing::Claimed);
        assert_eq!(standing(Some(4), 3), Standing::Superseded { newer: 4 });
    }

    #[test]
    fn record_keeps_existing_nodes_and_adds_this_terms_grants() {
        let mut stored = UpdateStatus::default();
        stored
            .grants
            .insert("a".into(), rec(1, 2, "2024-03-01T10:00:00Z"));
        stored
            .grants
            .insert("gone".into(), rec(1, 2, "2024-03-01T10:00:00Z"));
        stored
            .grants
            .insert("b".into(), rec(1, 2, "2024-03-01T10:00:00Z"));
        let mut new = UpdateStatus::default();
        let now = t("2024-03-01T11:00:00Z");
        record(
            &mut new,
            &stored,
            &["b".into(), "c".into()],
            2,
            5,
            now,
            |n| n != "gone",
        );
        assert_eq!(new.coordinator_term, Some(5));
        assert_eq!(recorded_nodes(&new), ["a", "b", "c"]);
        assert_eq!(new.grants["a"], rec(1, 2, "2024-03-01T10:00:00Z"));
        assert_eq!(new.grants["b"], rec(2, 5, "2024-03-01T11:00:00Z"));
        assert_eq!(new.grants["c"], rec(2, 5, "2024-03-01T11:00:00Z"));
    }

    #[test]
    fn a_fleetlock_lock_of_a_deleted_node_is_kept_for_the_fleetlock_server_to_reclaim() {
        let mut stored = UpdateStatus::default();
        let mut lock = rec(1, 2, "2024-03-01T10:00:00Z");
        lock.source = Some(crate::cluster::update::FLEETLOCK.into());
        stored.grants.insert("gone-zincati".into(), lock.clone());
        stored
            .grants
            .insert("gone-hkd".into(), rec(1, 2, "2024-03-01T10:00:00Z"));
        let mut new = UpdateStatus::default();
        record(
            &mut new,
            &stored,
            &[],
            1,
            3,
            t("2024-03-01T11:00:00Z"),
            |_| false,
        );
        assert_eq!(recorded_nodes(&new), ["gone-zincati"]);
        assert_eq!(new.grants["gone-zincati"], lock);
    }

    #[test]
    fn the_latest_record_across_updates_is_the_nodes_grant() {
        let x = with(
            update("x", "ux", 3, Some(4)),
            "n",
            rec(3, 2, "2024-03-01T10:00:00Z"),
        );
        let y = with(
            update("y", "uy", 1, Some(4)),
            "n",
            rec(1, 4, "2024-03-01T09:00:00Z"),
        );
        let (g, refused) = grant_of("n", &[x.clone(), y.clone()]);
        assert!(refused.is_empty());
        // The later term wins although its wall-clock time is earlier.
        assert_eq!(g, Some("uy/1".parse().unwrap()));
        let (g, _) = grant_of("n", &[y, x]);
        assert_eq!(g, Some("uy/1".parse().unwrap()));
    }

    #[test]
    fn within_a_term_the_later_grant_wins() {
        let x = with(
            update("x", "ux", 3, Some(4)),
            "n",
            rec(3, 4, "2024-03-01T10:00:00Z"),
        );
        let y = with(
            update("y", "uy", 1, Some(4)),
            "n",
            rec(1, 4, "2024-03-01T10:05:00Z"),
        );
        assert_eq!(grant_of("n", &[x, y]).0, Some("uy/1".parse().unwrap()));
    }

    #[test]
    fn records_that_contradict_their_update_are_refused() {
        let newer_term = with(
            update("x", "ux", 3, Some(4)),
            "n",
            rec(3, 5, "2024-03-01T10:00:00Z"),
        );
        let no_term = with(
            update("y", "uy", 3, None),
            "n",
            rec(3, 1, "2024-03-01T10:00:00Z"),
        );
        let future_generation = with(
            update("z", "uz", 3, Some(4)),
            "n",
            rec(7, 4, "2024-03-01T10:00:00Z"),
        );
        let zero_term = with(
            update("w", "uw", 3, Some(4)),
            "n",
            rec(3, 0, "2024-03-01T10:00:00Z"),
        );
        let (g, refused) = grant_of("n", &[newer_term, no_term, future_generation, zero_term]);
        assert_eq!(g, None);
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(refused[0].contains("term 5 is newer than the Update's coordinator term 4"));
        assert!(refused[1].contains("records no coordinator term"));
        assert!(refused[2].contains("generation 7"));
        assert!(refused[3].contains("term 0"));
    }

    #[test]
    fn grants_by_node_reads_every_node_once() {
        let x = with(
            with(
                update("x", "ux", 2, Some(1)),
                "a",
                rec(2, 1, "2024-03-01T10:00:00Z"),
            ),
            "b",
            rec(1, 1, "2024-03-01T10:00:00Z"),
        );
        let (g, refused) = grants_by_node(&[x]);
        assert!(refused.is_empty());
        assert_eq!(g.len(), 2);
        assert_eq!(g["a"], "ux/2".parse().unwrap());
        assert_eq!(g["b"], "ux/1".parse().unwrap());
    }
}
