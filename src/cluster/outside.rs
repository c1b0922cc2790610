//! One plan of one Update with what holds grants from outside the Nodes: the blocking pods
//! ([`super::blocking`]) and the reboot gates ([`super::gates`]), asked afresh for every plan,
//! then the planner ([`super::plan::plan_with`]). The coordinator calls [`plan`] and writes
//! what comes out; this decides nothing the planner does not.
//!
//! Guarantees: every question has the coordinator's request limit (and a gate's own
//! `timeoutSeconds`); whatever cannot be asked holds the whole rollout (fail closed, said in
//! the status); per-node gates (`$node`) are asked for the nodes the plan would grant, and a
//! node one holds is planned again without it — at most [`PER_NODE_GATE_ROUNDS`] rounds, after
//! which a plan with grants still unasked grants nothing; while anything holds, the plan asks
//! to be made again after `recheck_every` (no watch reports a pod gone or a gate open).

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use kube::{Api, Client};

use super::annotations::NodeView;
use super::plan::{plan_with, RolloutPlan, COMPLETE};
use super::update::{Hold, ImagePolicy, Update};

/// How many rounds of per-node gate questions one plan asks: each round asks for the nodes
/// the plan would grant that were not asked yet.
pub const PER_NODE_GATE_ROUNDS: usize = 4;

/// Plan `update` over `views` with the holds found now; the plan and the holds.
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    client: &Client,
    namespace: &str,
    limit: Duration,
    recheck_every: Duration,
    update: &Update,
    views: &[NodeView],
    now: Timestamp,
    policy: ImagePolicy,
) -> (RolloutPlan, Vec<Hold>) {
    let pods = Api::all(client.clone());
    let mut holds = super::blocking::find(&pods, &update.spec, limit).await;
    let gate_limit = |g: &super::gates::Gates| {
        limit.min(Duration::from_secs(g.timeout_seconds.clamp(1, 3) as u64))
    };
    if let Some(gates) = &update.spec.gates {
        holds.extend(
            super::gates::prometheus::find(client, namespace, gates, gate_limit(gates)).await,
        );
    }
    let mut p = plan_with(update, views, &holds, now, policy);
    if let Some(gates) = update
        .spec
        .gates
        .as_ref()
        .filter(|g| g.queries.iter().any(super::gates::per_node))
    {
        let mut asked: HashSet<String> = HashSet::new();
        for round in 0..=PER_NODE_GATE_ROUNDS {
            let unasked: Vec<String> = p
                .grants
                .iter()
                .filter(|g| !asked.contains(*g))
                .cloned()
                .collect();
            if unasked.is_empty() {
                break;
            }
            if round == PER_NODE_GATE_ROUNDS {
                holds.push(Hold {
                    node: None,
                    reason: super::gates::GATE.into(),
                    message: format!(
                        "per-node gates held nodes in {PER_NODE_GATE_ROUNDS} rounds of one plan; \
                         {} not asked yet, looking again",
                        unasked.join(", ")
                    ),
                });
            } else {
                let more = super::gates::prometheus::find_nodes(
                    client,
                    namespace,
                    gates,
                    &unasked,
                    gate_limit(gates),
                )
                .await;
                asked.extend(unasked);
                if more.is_empty() {
                    continue;
                }
                holds.extend(more);
            }
            p = plan_with(update, views, &holds, now, policy);
        }
    }
    if !holds.is_empty() && p.status.state.as_deref() != Some(COMPLETE) {
        p.wake_after = Some(p.wake_after.map_or(recheck_every, |w| w.min(recheck_every)));
    }
    (p, holds)
}
