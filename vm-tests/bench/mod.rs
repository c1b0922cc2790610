//! The VM test bench: images, QEMU machines, the marker protocol, the boot loader stand-in and
//! the host-side HTTP server. vm-tests/README.md says how to use it.

// Each scenario uses part of the bench; later scenarios use the rest.
#![allow(dead_code)]

pub mod bootloader;
pub mod cmd;
pub mod http;
pub mod images;
pub mod marks;
pub mod qemu;
pub mod scenario;

pub use scenario::{scenario, Scenario, BOOT_TIMEOUT};
