//! The cluster side of hkd: the `Update` resource, the per-node annotation protocol, the
//! coordinator's planner and the drain.
//!
//! Rooms that decide do no I/O and are unit-tested: [`update`] (the resource and its
//! validation), [`window`] (maintenance windows), [`selector`], [`plan`] (grants and status), [`ledger`] (where a grant counts, fenced by
//! the coordinator's term),
//! [`drain`] (which pods to evict, which block), and [`lease`]'s election decision. Rooms that
//! act against the API server: [`kube_drain`] (cordon, evict, wait; tests/cluster_drain.rs),
//! [`lease`]'s [`lease::Elector`] and [`coordinator`] (the elected coordinator's loop;
//! tests/cluster_coordinator.rs).
//!
//! Rollout policy: [`topology`] (zone limits) and [`staging`] (staging permits) decide, inside
//! the planner; [`blocking`] (blocking pods) and [`gates`] (reboot gates from Prometheus) each
//! decide in plain functions and ask their outside system in one place, gathered for each plan
//! by [`outside`] (tests/cluster_gates.rs against a real Prometheus); [`notify`] (webhook) and
//! [`rollout_metrics`] report what the coordinator wrote.

pub mod annotations;
pub mod blocking;
pub mod connect;
pub mod coordinator;
pub mod drain;
pub mod events;
pub mod fleetlock;
pub mod gates;
pub mod heartbeat;
pub mod kube_drain;
pub mod lease;
pub mod ledger;
pub mod notify;
pub mod outside;
pub mod plan;
pub mod rbac;
pub mod rollout_metrics;
pub mod selector;
pub mod staging;
pub mod topology;
pub mod update;
pub mod window;
pub(crate) mod yaml;

pub use annotations::{AgentPhase, Grant, NodeView};
pub use plan::{plan, plan_with, RolloutPlan};
pub use update::{validate, ImagePolicy, Update, UpdateSpec, UpdateStatus};
