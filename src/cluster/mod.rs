//! The cluster side of hkd: the `Update` resource, the per-node annotation protocol, the
//! coordinator's planner and the drain.
//!
//! Rooms that decide do no I/O and are unit-tested: [`update`] (the resource and its
//! validation), [`window`] (maintenance windows), [`selector`], [`plan`] (grants and status),
//! [`drain`] (which pods to evict, which block). One room acts: [`kube_drain`], the drain
//! against the API server (cordon, evict, wait), tested against a real one in
//! tests/cluster_drain.rs.

pub mod annotations;
pub mod drain;
pub mod kube_drain;
pub mod plan;
pub mod selector;
pub mod update;
pub mod window;
mod yaml;

pub use annotations::{AgentPhase, Grant, NodeView};
pub use plan::{plan, Plan};
pub use update::{validate, ImagePolicy, Update, UpdateSpec, UpdateStatus};
