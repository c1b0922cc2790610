//! Flushing and restarting the machine at once through the kernel (`sync(2)`, `reboot(2)`):
//! what is left when there is no init system to ask for an orderly shutdown, or the admin
//! asked to skip it. Whether to do so is the caller's decision.

/// How the kernel restarts the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Through the firmware, as a reset does.
    Reboot,
    /// Into the kernel already loaded with kexec.
    Kexec,
}

/// Flushes every file system's dirty data to its device (`sync(2)`).
pub fn sync() {
    // SAFETY: sync takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::sync() };
}

/// Flushes file systems, then restarts the machine at once: no process is asked to stop.
/// Returns only when the kernel refused, with its reason (not root, no kexec kernel loaded).
pub fn sync_and_restart(how: Restart) -> std::io::Error {
    let cmd = match how {
        Restart::Reboot => libc::RB_AUTOBOOT,
        Restart::Kexec => libc::LINUX_REBOOT_CMD_KEXEC,
    };
    // SAFETY: sync and reboot take no pointers; reboot does not return on success, and on
    // failure leaves the process as it was.
    unsafe {
        libc::sync();
        libc::reboot(cmd);
    }
    std::io::Error::last_os_error()
}
