//! The node agent: the upgrade state machine (`machine`, pure), the journal that makes it
//! survive restarts, SIGKILL and power loss, the executor (`agent`) and what it acts through
//! (health gate, logind reboots), its status document, local socket and Prometheus metrics,
//! and the daemon that wires them (`daemon`).

pub mod agent;
pub mod daemon;
pub mod fleetlock;
pub mod follow;
pub mod health;
pub mod journal;
pub mod kube;
pub mod machine;
pub mod metrics;
pub mod reboot;
pub mod socket;
pub mod status;
pub mod watchdog;
