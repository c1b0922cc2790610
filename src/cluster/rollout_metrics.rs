//! Prometheus metrics of the rollouts, as the leading coordinator last planned them; served by
//! hkd's metrics server beside the node's own (`hkd_` prefix, [`RolloutMetrics::register`]):
//!
//! - `hkd_rollout_nodes{namespace,update,phase}`: selected nodes per phase (pending, waiting,
//!   in_flight, done, failed);
//! - `hkd_rollout_halted{namespace,update}`: 1 while halted;
//! - `hkd_rollout_holds{namespace,update,reason}`: holds from outside the Nodes by reason
//!   (GateFiring, AlertFiring, PrometheusUnavailable, BlockingPod, …), 0 once gone;
//! - `hkd_rollout_grants_total{namespace,update}`: grants written by this coordinator;
//! - `hkd_rollout_node_seconds{namespace,update}`: a histogram of the time from a node's grant
//!   to its Done, for the nodes this coordinator saw finish.
//!
//! Only the coordinator that leads updates them; the others keep what they last saw (their
//! `hkd_rollout_*` series are stale by the time another leads: alert on the leader's).

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::update::{Hold, UpdateStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateLabels {
    namespace: String,
    update: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    update: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HoldLabels {
    namespace: String,
    update: String,
    reason: String,
}

/// Time from grant to Done: a minute to a few hours.
const NODE_SECONDS_BUCKETS: [f64; 10] = [
    30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

fn node_seconds() -> Histogram {
    Histogram::new(NODE_SECONDS_BUCKETS)
}

#[derive(Debug)]
pub struct RolloutMetrics {
    nodes: Family<PhaseLabels, Gauge>,
    halted: Family<UpdateLabels, Gauge>,
    holds: Family<HoldLabels, Gauge>,
    grants: Family<UpdateLabels, Counter>,
    node_seconds: Family<UpdateLabels, Histogram, fn() -> Histogram>,
    /// Hold reasons set last time, per Update, so a reason gone is set to 0.
    reasons: Mutex<BTreeSet<(String, String, String)>>,
    /// Nodes already counted in `node_seconds`.
    finished: Mutex<BTreeSet<(String, String, String, i64)>>,
}

impl Default for RolloutMetrics {
    fn default() -> Self {
        RolloutMetrics {
            nodes: Family::default(),
            halted: Family::default(),
            holds: Family::default(),
            grants: Family::default(),
            node_seconds: Family::new_with_constructor(node_seconds),
            reasons: Mutex::default(),
            finished: Mutex::default(),
        }
    }
}

impl RolloutMetrics {
    /// Register the families in hkd's registry (its `hkd` prefix applies).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rollout_nodes",
            "Selected nodes per phase",
            self.nodes.clone(),
        );
        registry.register("rollout_halted", "1 while halted", self.halted.clone());
        registry.register(
            "rollout_holds",
            "Holds from outside the Nodes (gates, blocking pods) by reason",
            self.holds.clone(),
        );
        registry.register(
            "rollout_grants",
            "Grants written by this coordinator",
            self.grants.clone(),
        );
        registry.register(
            "rollout_node_seconds",
            "Time from a node's grant to its Done",
            self.node_seconds.clone(),
        );
    }

    /// What a plan of `update` in `namespace` wrote: its status, the holds, the grants.
    pub fn observe(
        &self,
        namespace: &str,
        update: &str,
        status: &UpdateStatus,
        holds: &[Hold],
        granted: usize,
    ) {
        let u = UpdateLabels {
            namespace: namespace.into(),
            update: update.into(),
        };
        let c = &status.counts;
        for (phase, n) in [
            ("pending", c.pending),
            ("waiting", c.waiting),
            ("in_flight", c.in_flight),
            ("done", c.done),
            ("failed", c.failed),
        ] {
            self.nodes
                .get_or_create(&PhaseLabels {
                    namespace: namespace.into(),
                    update: update.into(),
                    phase: phase.into(),
                })
                .set(i64::from(n));
        }
        self.halted.get_or_create(&u).set(i64::from(
            status.state.as_deref() == Some(super::plan::HALTED),
        ));
        if granted > 0 {
            self.grants.get_or_create(&u).inc_by(granted as u64);
        }
        let mut now: BTreeSet<(String, String, String)> = BTreeSet::new();
        for h in holds {
            now.insert((namespace.into(), update.into(), h.reason.clone()));
        }
        if let Ok(mut before) = self.reasons.lock() {
            let mine = |k: &(String, String, String)| k.0 == namespace && k.1 == update;
            for k in before.iter().filter(|k| mine(k)) {
                if !now.contains(k) {
                    self.holds.get_or_create(&hold_labels(k)).set(0);
                }
            }
            before.retain(|k| !mine(k));
            before.extend(now.iter().cloned());
        }
        for k in &now {
            let n = holds.iter().filter(|h| h.reason == k.2).count();
            self.holds.get_or_create(&hold_labels(k)).set(n as i64);
        }
        // Time per node: the nodes shown Done with the time they reached it, against their
        // grant's time in the ledger; each counted once.
        if let Ok(mut finished) = self.finished.lock() {
            for n in status.nodes.iter().filter(|n| n.phase == "Done") {
                let (Some(done), Some(g)) = (&n.since, status.grants.get(&n.name)) else {
                    continue;
                };
                let key = (
                    namespace.into(),
                    update.into(),
                    n.name.clone(),
                    g.generation,
                );
                if finished.insert(key) {
                    let secs = g.granted_at.0.duration_until(done.0).as_secs_f64();
                    self.node_seconds.get_or_create(&u).observe(secs.max(0.0));
                }
            }
        }
    }
}

/// The process's rollout metrics: every coordinator of the process updates them, and hkd's
/// metrics server serves them ([`crate::node::metrics`]).
pub fn global() -> std::sync::Arc<RolloutMetrics> {
    static GLOBAL: std::sync::OnceLock<std::sync::Arc<RolloutMetrics>> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(Default::default).clone()
}

fn hold_labels(k: &(String, String, String)) -> HoldLabels {
    HoldLabels {
        namespace: k.0.clone(),
        update: k.1.clone(),
        reason: k.2.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text;

    fn render(m: &RolloutMetrics) -> String {
        let mut r = Registry::with_prefix("hkd");
        m.register(&mut r);
        let mut out = String::new();
        text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn phases_holds_and_grants_follow_the_plans() {
        let m = RolloutMetrics::default();
        let mut s = UpdateStatus::default();
        s.counts.total = 3;
        s.counts.pending = 2;
        s.counts.in_flight = 1;
        let gate = Hold {
            node: None,
            reason: "GateFiring".into(),
            message: "gate x holds".into(),
        };
        m.observe("ns", "os", &s, &[gate], 1);
        let text = render(&m);
        assert!(
            text.contains(r#"hkd_rollout_nodes{namespace="ns",update="os",phase="pending"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hkd_rollout_holds{namespace="ns",update="os",reason="GateFiring"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hkd_rollout_grants_total{namespace="ns",update="os"} 1"#),
            "{text}"
        );
        // The gate gone: its series says 0.
        m.observe("ns", "os", &s, &[], 0);
        let text = render(&m);
        assert!(
            text.contains(r#"hkd_rollout_holds{namespace="ns",update="os",reason="GateFiring"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hkd_rollout_halted{namespace="ns",update="os"} 0"#),
            "{text}"
        );
        // A node Done 90 s after its grant: one observation, counted once however often seen.
        use crate::cluster::update::{GrantRecord, NodeSummary};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let t = |s: &str| Time(s.parse().unwrap());
        s.grants.insert(
            "w-1".into(),
            GrantRecord {
                generation: 1,
                term: 1,
                granted_at: t("2024-03-02T10:00:00Z"),
                source: None,
            },
        );
        s.nodes.push(NodeSummary {
            name: "w-1".into(),
            phase: "Done".into(),
            reason: String::new(),
            since: Some(t("2024-03-02T10:01:30Z")),
        });
        m.observe("ns", "os", &s, &[], 0);
        m.observe("ns", "os", &s, &[], 0);
        let text = render(&m);
        assert!(
            text.contains(r#"hkd_rollout_node_seconds_count{namespace="ns",update="os"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hkd_rollout_node_seconds_sum{namespace="ns",update="os"} 90.0"#),
            "{text}"
        );
    }
}
