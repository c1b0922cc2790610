//! Stand-ins for system services that cannot run here, on a private bus started by the tests.
//! Each says in its own documentation what it reproduces and what it does not.
#![allow(dead_code)] // each test binary uses its own part

pub mod bus;
pub mod logind;
pub mod rpmostreed;
pub mod systemd;
