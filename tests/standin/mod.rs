//! Stand-ins for system services that cannot run here, on a private bus started by the tests.
//! Each says in its own documentation what it reproduces and what it does not.

pub mod bus;
pub mod rpmostreed;
