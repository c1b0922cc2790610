//! The node agent's own machine: the upgrade state machine and the journal that makes it
//! survive restarts, SIGKILL and power loss.

pub mod journal;
pub mod agent;
pub mod health;
pub mod machine;
pub mod status;
