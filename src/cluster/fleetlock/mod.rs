//! FleetLock: the coordinator as a FleetLock server for nodes whose Zincati updates them.
//!
//! Zincati's `fleet_lock` strategy asks a server before it reboots (`pre-reboot`) and tells it
//! when it is back (`steady-state`). Here the elected coordinator answers, and a lock is a
//! grant: planned by the same planner under the same Update's budget, recorded in the same
//! ledger under the same term (`GrantRecord::source` says FleetLock), so hkd nodes and
//! Zincati nodes share `maxUnavailable`, windows and the failure budget, and everything that
//! reads the ledger (status, the observers of the tests) counts both.
//!
//! - [`id`]: which Node a client is (Zincati's id is the app-specific machine id) — pure;
//! - [`wire`]: the protocol's bytes: bounded request parsing, error kinds, answers — pure;
//! - [`decide`]: the Node of a request, its slot, the locks to reclaim — pure;
//! - [`server`]: the listener, the ledger writes, cordon and drain — acts
//!   (tests/fleetlock.rs, against a real API server).

pub mod decide;
pub mod id;
pub mod server;
pub mod wire;
