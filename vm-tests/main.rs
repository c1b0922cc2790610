//! Whole-machine scenarios under QEMU (feature `vm-tests`): `cargo nextest run --features
//! vm-tests --test vm`. The images are built (or taken from the cache) on first use; see
//! vm-tests/README.md for the bench, its markers and how to add a scenario.

mod bench;
mod cluster;
mod convert;
mod hkd;
mod smoke;
// The kube-apiserver harness of the integration tests, for the cluster scenario.
#[path = "../tests/support/mod.rs"]
mod support;
