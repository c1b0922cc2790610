//! Housekeeper: the node side of NestOS For Container.
//!
//! One library behind three thin programs: `x2nestos` converts a running Linux machine to
//! NestOS, `hkd` keeps a node's OS deployments in step with its cluster, and `hkctl` steers
//! rollouts from anywhere with a kubeconfig. See README.md for the map of modules.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod ctl;
pub mod image_ref;
pub mod logging;
pub mod node;
pub mod os;
pub mod sys;

#[cfg(test)]
mod testing;
