//! Bounded staging (`spec.staging.maxConcurrent`): at most that many nodes pull the target at
//! once, ahead of their grants. The coordinator hands out staging permits like grants, with a
//! budget of their own, recorded in the Update's status (`status.stagingPermits`: node →
//! target generation) in the same fenced write as the grants; an agent pre-stages only under a
//! permit for the current target (or its grant). Without `spec.staging` every selected node
//! stages at once, as before.
//!
//! Pure. Rules: the nodes not yet started are taken in the planner's grant order (control
//! plane first, then by name), so the nodes nearest the front of the reboot order stage first
//! and staging never delays a grant the budget allows; a node staging counts until its
//! `staged` annotation shows the target; a permit is kept while its node waits with the target
//! staged (so nothing is withdrawn) and dropped once the node is granted, done or leaves the
//! rollout. A node whose staging fails keeps its permit: its agent tries again at its own
//! pace (`retry_after`), and the slot stays taken meanwhile, so a failing mirror is not hit by
//! more nodes at once.

use std::collections::BTreeMap;

/// One node not yet granted, in grant order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// Its `staged` annotation names the target.
    pub staged: bool,
}

/// The permits after this plan: `prev` filtered to `candidates` and the current
/// `generation`, plus new ones in order while fewer than `max` permitted nodes are not staged
/// yet.
pub fn permits(
    candidates: &[Candidate<'_>],
    prev: &BTreeMap<String, i64>,
    generation: i64,
    max: usize,
) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = candidates
        .iter()
        .filter(|c| prev.get(c.name).is_some_and(|g| *g >= generation))
        .map(|c| (c.name.to_owned(), generation))
        .collect();
    let mut staging = candidates
        .iter()
        .filter(|c| out.contains_key(c.name) && !c.staged)
        .count();
    for c in candidates {
        if staging >= max {
            break;
        }
        if !out.contains_key(c.name) && !c.staged {
            out.insert(c.name.to_owned(), generation);
            staging += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, staged: bool) -> Candidate<'_> {
        Candidate { name, staged }
    }

    #[test]
    fn front_of_the_order_first_within_the_budget() {
        let order = [
            c("cp-1", false),
            c("w-1", false),
            c("w-2", false),
            c("w-3", false),
        ];
        let p = permits(&order, &BTreeMap::new(), 1, 2);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["cp-1", "w-1"]);
        // cp-1 staged: its slot goes to the next; its permit is kept.
        let order = [
            c("cp-1", true),
            c("w-1", false),
            c("w-2", false),
            c("w-3", false),
        ];
        let p = permits(&order, &p, 1, 2);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["cp-1", "w-1", "w-2"]);
        // cp-1 granted (no longer a candidate): its permit is dropped.
        let order = [c("w-1", false), c("w-2", false), c("w-3", false)];
        let p = permits(&order, &p, 1, 2);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["w-1", "w-2"]);
        // A new target: old permits are void, the order starts again.
        let p = permits(&order, &p, 2, 1);
        assert_eq!(p, BTreeMap::from([("w-1".to_owned(), 2)]));
    }

    #[test]
    fn a_node_already_staged_takes_no_slot() {
        let order = [c("a", true), c("b", true), c("c", false)];
        let p = permits(&order, &BTreeMap::new(), 1, 1);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["c"]);
    }
}
