//! Thin wrappers over the host: external commands, kexec, the kernel's boot identity.
//! Nothing here decides; callers do.

pub mod command;
pub mod kexec;

use std::path::Path;

/// The kernel's id of the running boot: changes on every boot, so it proves a reboot happened.
pub fn boot_id(proc_root: &Path) -> std::io::Result<String> {
    let path = proc_root.join("sys/kernel/random/boot_id");
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// The kernel's host name, as the kubelet registers its Node by default (lower case).
pub fn hostname(proc_root: &Path) -> std::io::Result<String> {
    let path = proc_root.join("sys/kernel/hostname");
    Ok(std::fs::read_to_string(path)?.trim().to_lowercase())
}
