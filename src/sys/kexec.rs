//! The one module that owns kexec: loading a kernel and initramfs for the jump, unloading
//! it, telling whether one is loaded, and saying in plain words why the kernel refused.
//!
//! `kexec_file_load(2)` first: the kernel reads the files itself, checks signatures under
//! lockdown, and it is the only way that works when Secure Boot locks the kernel down.
//! glibc has no wrapper, so it is called through `syscall(2)`. When the kernel lacks it
//! (ENOSYS), the old `kexec_load(2)` is used through kexec-tools' `kexec -l`, which parses the
//! kernel image in user space (and is refused under lockdown).
//!
//! The argument building and the errno explanations are pure and unit-tested; the syscalls
//! themselves are exercised only inside a VM (vm-tests), never on a development host.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::command::Cmd;

/// `kexec_file_load` flags (include/uapi/linux/kexec.h).
pub const KEXEC_FILE_UNLOAD: u64 = 0x1;
pub const KEXEC_FILE_ON_CRASH: u64 = 0x2;
pub const KEXEC_FILE_NO_INITRAMFS: u64 = 0x4;

/// How the kernel was (or is to be) loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `kexec_file_load(2)`, called directly.
    FileSyscall,
    /// `kexec_load(2)`, through kexec-tools' `kexec -l`.
    KexecTools,
}

/// What the machine looks like, for explaining a refusal (from the preflight's facts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub arch: String,
    pub lockdown: Option<String>,
    pub secure_boot: Option<bool>,
    pub kexec_load_disabled: bool,
    /// The kernel file's first bytes, to recognise a compressed arm64 image.
    pub kernel_head: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{action}: {explanation} ({name})")]
pub struct KexecError {
    /// What was being done, naming the files ("loading /boot/vmlinuz-6.1 with kexec_file_load").
    pub action: String,
    pub errno: i32,
    pub name: &'static str,
    pub explanation: String,
}

impl KexecError {
    /// Whether the old syscall (through kexec-tools) is worth trying after this refusal.
    pub fn falls_back(&self) -> bool {
        self.errno == libc::ENOSYS
    }
}

/// The command line as the kernel wants it: arguments joined by spaces, NUL-terminated.
/// Its length for the syscall is `as_bytes_with_nul().len()`.
pub fn cmdline(args: &[String]) -> Result<CString, String> {
    CString::new(args.join(" ")).map_err(|_| "a kernel argument contains a NUL byte".to_owned())
}

/// Flags for loading: with no initramfs the kernel must be told so.
pub fn load_flags(with_initrd: bool) -> u64 {
    if with_initrd {
        0
    } else {
        KEXEC_FILE_NO_INITRAMFS
    }
}

fn lockdown_active(ctx: &Context) -> Option<&str> {
    ctx.lockdown.as_deref().filter(|mode| *mode != "none")
}

/// Whether this is an arm64 kernel that kexec_file_load cannot take as is: gzip-compressed
/// (`Image.gz`, most distributions' vmlinuz) or an EFI zboot image (`MZ` … `zimg`).
pub fn compressed_arm64(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b]) || (head.starts_with(b"MZ") && head.get(4..8) == Some(b"zimg"))
}

/// The errno's symbolic name.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::EBADMSG => "EBADMSG",
        libc::ENOKEY => "ENOKEY",
        libc::EFBIG => "EFBIG",
        _ => "errno",
    }
}

/// A refusal of the kernel, in plain words with what to do.
pub fn explain(errno: i32, method: Method, ctx: &Context) -> String {
    match errno {
        libc::EPERM if ctx.kexec_load_disabled => "kexec is switched off until the next reboot (kernel.kexec_load_disabled = 1); remove the sysctl setting that sets it, reboot, and run x2nestos again".into(),
        libc::EPERM if method == Method::KexecTools && lockdown_active(ctx).is_some() => format!(
            "kernel lockdown ({}) forbids the old kexec_load that kexec-tools uses; only kexec_file_load with a signed kernel works here, and this kernel lacks it: turn Secure Boot off, or boot the NestOS installer ISO",
            lockdown_active(ctx).unwrap_or_default()
        ),
        libc::EPERM => "the kernel refused kexec (EPERM): run as root (CAP_SYS_BOOT), and check kernel.kexec_load_disabled and the lockdown mode in /sys/kernel/security/lockdown".into(),
        libc::EKEYREJECTED | libc::EBADMSG | libc::ENOKEY => format!(
            "the kernel's signature was rejected{}: under lockdown only kernels signed by a key the firmware or kernel trusts can be loaded; convert with this machine's own installed kernel (the default, without --live), or turn Secure Boot off",
            match (lockdown_active(ctx), ctx.secure_boot) {
                (Some(mode), Some(true)) => format!(" (lockdown {mode}, from Secure Boot)"),
                (Some(mode), _) => format!(" (lockdown {mode})"),
                (None, Some(true)) => " (Secure Boot is on)".into(),
                (None, _) => String::new(),
            }
        ),
        libc::ENOSYS => match method {
            Method::FileSyscall => "this kernel was built without kexec_file_load (CONFIG_KEXEC_FILE); x2nestos falls back to kexec_load through kexec-tools".into(),
            Method::KexecTools => "this kernel was built without kexec (CONFIG_KEXEC); boot the NestOS installer ISO instead".into(),
        },
        libc::ENOEXEC if ctx.arch == "aarch64" && compressed_arm64(&ctx.kernel_head) => "on arm64 kexec_file_load takes an uncompressed Image, and this kernel is compressed (gzip or EFI zboot); x2nestos must unpack it first".into(),
        libc::ENOEXEC => "the kernel does not recognise the file as a kernel it can load (wrong architecture, or not a bzImage / Image)".into(),
        libc::ENOMEM | libc::EFBIG => "not enough contiguous memory for the kernel and initramfs; free memory or carry a smaller initramfs (stream the image instead of carrying it)".into(),
        libc::EBUSY => "another kexec load is in progress or a loaded image is in use; wait, or unload it with `kexec -u`".into(),
        libc::EINVAL => "the kernel rejected the arguments (command line too long for this architecture, or a bad file)".into(),
        libc::EBADF => "a kernel or initramfs file could not be read by the kernel".into(),
        other => format!("the kernel refused with {}", io::Error::from_raw_os_error(other)),
    }
}

fn refusal(action: String, errno: i32, method: Method, ctx: &Context) -> KexecError {
    KexecError {
        action,
        errno,
        name: errno_name(errno),
        explanation: explain(errno, method, ctx),
    }
}

fn open(path: &Path, what: &str) -> Result<File, KexecError> {
    File::open(path).map_err(|e| KexecError {
        action: format!("opening {what} {}", path.display()),
        errno: e.raw_os_error().unwrap_or(0),
        name: errno_name(e.raw_os_error().unwrap_or(0)),
        explanation: e.to_string(),
    })
}

/// Opens the kernel and initramfs for the syscall, naming the file that cannot be read.
pub fn open_files(
    kernel: &Path,
    initrd: Option<&Path>,
) -> Result<(File, Option<File>), KexecError> {
    Ok((
        open(kernel, "kernel")?,
        initrd.map(|p| open(p, "initramfs")).transpose()?,
    ))
}

/// Loads `kernel` (and `initrd`) for the next `kexec -e` / `systemctl kexec` with
/// `kexec_file_load(2)`.
pub fn load_file(
    kernel: &Path,
    initrd: Option<&Path>,
    args: &[String],
    ctx: &Context,
) -> Result<(), KexecError> {
    let action = format!("loading {} with kexec_file_load", kernel.display());
    let line = cmdline(args).map_err(|explanation| KexecError {
        action: action.clone(),
        errno: libc::EINVAL,
        name: "EINVAL",
        explanation,
    })?;
    let (kernel_file, initrd_file) = open_files(kernel, initrd)?;
    let initrd_fd = initrd_file.as_ref().map_or(-1, |f| f.as_raw_fd());
    let bytes = line.as_bytes_with_nul();
    // SAFETY: the fds are open for the call's duration, the pointer and length describe
    // `line`'s bytes including the NUL, and the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel_file.as_raw_fd() as libc::c_long,
            initrd_fd as libc::c_long,
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            load_flags(initrd.is_some()) as libc::c_ulong,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    Err(refusal(action, errno, Method::FileSyscall, ctx))
}

/// Unloads whatever kexec_file_load loaded (for `--dry-run` and for cleaning up).
pub fn unload(ctx: &Context) -> Result<(), KexecError> {
    // SAFETY: with KEXEC_FILE_UNLOAD the kernel ignores the fds and the command line.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            -1 as libc::c_long,
            -1 as libc::c_long,
            0 as libc::c_ulong,
            std::ptr::null::<u8>(),
            KEXEC_FILE_UNLOAD as libc::c_ulong,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    Err(refusal(
        "unloading the kexec kernel".into(),
        errno,
        Method::FileSyscall,
        ctx,
    ))
}

/// The `kexec -l` command line that loads with the old syscall (kexec-tools).
pub fn kexec_tools_load(kernel: &Path, initrd: Option<&Path>, args: &[String]) -> Cmd {
    let mut cmd = Cmd::new("kexec").arg("--load").arg(kernel);
    if let Some(initrd) = initrd {
        cmd = cmd.arg(format!("--initrd={}", initrd.display()));
    }
    cmd.arg(format!("--command-line={}", args.join(" ")))
}

/// The `kexec -u` command line (unloads what kexec_load loaded).
pub fn kexec_tools_unload() -> Cmd {
    Cmd::new("kexec").arg("--unload")
}

/// Loads with kexec-tools, classifying its stderr into the same plain words.
pub fn load_with_kexec_tools(
    kernel: &Path,
    initrd: Option<&Path>,
    args: &[String],
    ctx: &Context,
) -> Result<(), KexecError> {
    let cmd = kexec_tools_load(kernel, initrd, args);
    let action = format!("loading {} with `{cmd}`", kernel.display());
    cmd.run().map(drop).map_err(|e| {
        let errno = errno_from_kexec_tools(e.stderr());
        let mut err = refusal(action, errno, Method::KexecTools, ctx);
        if errno == 0 {
            err.explanation = e.to_string();
        }
        err
    })
}

/// The errno in kexec-tools' message ("kexec_load failed: Operation not permitted").
pub fn errno_from_kexec_tools(stderr: &str) -> i32 {
    let known = [
        ("Operation not permitted", libc::EPERM),
        ("Function not implemented", libc::ENOSYS),
        ("Key was rejected by service", libc::EKEYREJECTED),
        ("Cannot allocate memory", libc::ENOMEM),
        ("Device or resource busy", libc::EBUSY),
        ("Exec format error", libc::ENOEXEC),
        ("Invalid argument", libc::EINVAL),
    ];
    known
        .iter()
        .find(|(text, _)| stderr.contains(text))
        .map_or(0, |(_, errno)| *errno)
}

/// Whether a kernel is loaded for kexec (`/sys/kernel/kexec_loaded` reads 1).
pub fn loaded(sys_root: &Path) -> io::Result<bool> {
    let path = sys_root.join("kernel/kexec_loaded");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
    Ok(text.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            arch: "x86_64".into(),
            ..Context::default()
        }
    }

    #[test]
    fn the_command_line_length_counts_the_nul() {
        let line = cmdline(&["root=/dev/vda".into(), "console=ttyS0".into()]).unwrap();
        assert_eq!(line.as_bytes_with_nul(), b"root=/dev/vda console=ttyS0\0");
        assert_eq!(line.as_bytes_with_nul().len(), 28);
        assert_eq!(cmdline(&[]).unwrap().as_bytes_with_nul(), b"\0");
        assert!(cmdline(&["a\0b".into()]).is_err());
    }

    #[test]
    fn flags() {
        assert_eq!(load_flags(true), 0);
        assert_eq!(load_flags(false), KEXEC_FILE_NO_INITRAMFS);
        assert_eq!(
            (
                KEXEC_FILE_UNLOAD,
                KEXEC_FILE_ON_CRASH,
                KEXEC_FILE_NO_INITRAMFS
            ),
            (1, 2, 4)
        );
        // The syscall number is the architecture's (x86_64 320, aarch64 294).
        #[cfg(target_arch = "x86_64")]
        assert_eq!(libc::SYS_kexec_file_load, 320);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(libc::SYS_kexec_file_load, 294);
    }

    #[test]
    fn eperm_is_explained_by_what_causes_it() {
        let disabled = Context {
            kexec_load_disabled: true,
            ..ctx()
        };
        assert!(explain(libc::EPERM, Method::FileSyscall, &disabled)
            .starts_with("kexec is switched off until the next reboot"));
        let locked = Context {
            lockdown: Some("integrity".into()),
            secure_boot: Some(true),
            ..ctx()
        };
        assert!(explain(libc::EPERM, Method::KexecTools, &locked)
            .starts_with("kernel lockdown (integrity) forbids the old kexec_load"));
        assert!(explain(libc::EPERM, Method::FileSyscall, &ctx()).contains("CAP_SYS_BOOT"));
    }

    #[test]
    fn rejected_signatures_name_lockdown_and_secure_boot() {
        let locked = Context {
            lockdown: Some("integrity".into()),
            secure_boot: Some(true),
            ..ctx()
        };
        let text = explain(libc::EKEYREJECTED, Method::FileSyscall, &locked);
        assert!(
            text.starts_with(
                "the kernel's signature was rejected (lockdown integrity, from Secure Boot): "
            ),
            "{text}"
        );
        assert!(text.contains(
            "convert with this machine's own installed kernel (the default, without --live)"
        ));
        let plain = explain(libc::EBADMSG, Method::FileSyscall, &ctx());
        assert!(plain.starts_with("the kernel's signature was rejected: "));
    }

    #[test]
    fn enosys_falls_back_to_kexec_tools_once() {
        let err = refusal(
            "loading k".into(),
            libc::ENOSYS,
            Method::FileSyscall,
            &ctx(),
        );
        assert!(err.falls_back());
        assert_eq!(
            err.to_string(),
            "loading k: this kernel was built without kexec_file_load (CONFIG_KEXEC_FILE); x2nestos falls back to kexec_load through kexec-tools (ENOSYS)"
        );
        assert!(explain(libc::ENOSYS, Method::KexecTools, &ctx())
            .contains("without kexec (CONFIG_KEXEC)"));
        assert!(!refusal("x".into(), libc::EPERM, Method::FileSyscall, &ctx()).falls_back());
    }

    #[test]
    fn a_compressed_arm64_kernel_is_recognised() {
        let mut zboot = b"MZ\0\0zimg".to_vec();
        zboot.resize(64, 0);
        let mut image = vec![0u8; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        assert!(compressed_arm64(&[0x1f, 0x8b, 8, 0]));
        assert!(compressed_arm64(&zboot));
        assert!(!compressed_arm64(&image));
        let arm = Context {
            arch: "aarch64".into(),
            kernel_head: vec![0x1f, 0x8b, 8, 0],
            ..ctx()
        };
        assert!(explain(libc::ENOEXEC, Method::FileSyscall, &arm)
            .starts_with("on arm64 kexec_file_load takes an uncompressed Image"));
        assert!(explain(libc::ENOEXEC, Method::FileSyscall, &ctx()).contains("not a bzImage"));
    }

    #[test]
    fn kexec_tools_lines_and_messages() {
        let cmd = kexec_tools_load(
            Path::new("/boot/vmlinuz"),
            Some(Path::new("/run/x2nestos/initrd.img")),
            &["root=/dev/vda".into(), "quiet".into()],
        );
        assert_eq!(
            cmd.to_string(),
            "kexec --load /boot/vmlinuz --initrd=/run/x2nestos/initrd.img '--command-line=root=/dev/vda quiet'"
        );
        assert_eq!(kexec_tools_unload().to_string(), "kexec --unload");
        assert_eq!(
            errno_from_kexec_tools("kexec_load failed: Operation not permitted\n"),
            libc::EPERM
        );
        assert_eq!(
            errno_from_kexec_tools("Cannot determine the file type of x"),
            0
        );
    }

    #[test]
    fn a_missing_kernel_file_is_named() {
        // Opening is tested apart from the syscall, which never runs on a development host.
        let err = open_files(Path::new("/nonexistent/vmlinuz"), None).unwrap_err();
        assert_eq!(err.errno, libc::ENOENT);
        assert!(
            err.to_string()
                .starts_with("opening kernel /nonexistent/vmlinuz: No such file"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"k").unwrap();
        let err = open_files(&kernel, Some(&dir.path().join("initrd.img"))).unwrap_err();
        assert!(err.action.starts_with("opening initramfs "), "{err}");
    }

    #[test]
    fn kexec_loaded_is_read_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let err = loaded(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("reading ") && err.contains("kernel/kexec_loaded"),
            "{err}"
        );
        std::fs::create_dir_all(dir.path().join("kernel")).unwrap();
        std::fs::write(dir.path().join("kernel/kexec_loaded"), "0\n").unwrap();
        assert!(!loaded(dir.path()).unwrap());
        std::fs::write(dir.path().join("kernel/kexec_loaded"), "1\n").unwrap();
        assert!(loaded(dir.path()).unwrap());
    }
}
