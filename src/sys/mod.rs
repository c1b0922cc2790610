//! Thin wrappers over the host: external commands, kexec, block devices, restarting, the
//! terminal, the kernel's boot identity. Nothing here decides; callers do. Every `unsafe`
//! call into the C library lives in this room, each with the reason it is sound.

pub mod blockdev;
pub mod command;
pub mod files;
pub mod kexec;
pub mod memory;
pub mod power;
pub mod terminal;

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

/// The process's effective user id (0: root).
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir` (statvfs).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid place for the result.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
