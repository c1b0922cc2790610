//! What blocks a conversion, or deserves a warning, before anything changes.
//!
//! [`evaluate`] is pure: observed [`Facts`] in, [`Finding`]s out, each with a stable code
//! (for `-o json`) and a plain-words explanation that says what to do. [`gather`] reads the
//! facts from /proc and /sys below a root directory; its parsers are separate and tested on
//! captured text.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;

/// Architectures NestOS For Container is built for.
pub const ARCHITECTURES: &[&str] = &["x86_64", "aarch64"];

/// The EFI variable holding the Secure Boot state (GUID of EFI_GLOBAL_VARIABLE).
const SECURE_BOOT_VAR: &str =
    "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// What was observed on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    pub euid: u32,
    pub arch: String,
    /// The kernel can kexec at all (CONFIG_KEXEC_CORE: /sys/kernel/kexec_loaded exists).
    pub kexec_core: bool,
    /// `kexec_file_load` is built in (CONFIG_KEXEC_FILE); `None` when it cannot be told.
    pub kexec_file_load: Option<bool>,
    /// The old `kexec_load` is built in (CONFIG_KEXEC); `None` when it cannot be told.
    pub kexec_load: Option<bool>,
    /// /proc/sys/kernel/kexec_load_disabled is 1.
    pub kexec_load_disabled: bool,
    /// The active lockdown mode (`none`, `integrity`, `confidentiality`); `None` without LSM.
    pub lockdown: Option<String>,
    /// Secure Boot state from EFI; `None` on BIOS machines or when unreadable.
    pub secure_boot: Option<bool>,
    pub mem_available: u64,
    pub swap_used: u64,
    /// RAM the conversion initramfs needs (kernel, initramfs, and the image when carried).
    pub memory_needed: u64,
    /// Uncompressed image size, when known.
    pub image_size: Option<u64>,
    /// The target disk's size, when resolved.
    pub disk_size: Option<u64>,
    /// Why the target disk cannot be used, when it cannot (from [`super::disk`]).
    pub disk_refusal: Option<String>,
    /// On the live path, the kernel that is loaded instead of this machine's own:
    /// whether it carries a signature (`None`: the path is not taken).
    pub live_kernel: Option<Signature>,
}

/// Whether a kernel image carries an Authenticode signature (the kind kexec_file_load checks
/// under lockdown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Signature {
    Signed,
    Unsigned,
    /// Not a PE image (an arm64 `Image` without EFI stub, a compressed kernel): cannot be told.
    #[default]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// Nothing will be done while this stands.
    Blocking,
    /// Worth knowing; does not stop the conversion.
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier for automation.
    pub code: &'static str,
    pub message: String,
}

fn block(code: &'static str, message: String) -> Finding {
    Finding {
        severity: Severity::Blocking,
        code,
        message,
    }
}

fn warn(code: &'static str, message: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        code,
        message,
    }
}

/// The findings for `facts`, blocking ones first.
pub fn evaluate(facts: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    if facts.euid != 0 {
        out.push(block(
            "notRoot",
            "x2nestos must run as root (it loads a kernel and rewrites a disk); run it with sudo"
                .into(),
        ));
    }
    if !ARCHITECTURES.contains(&facts.arch.as_str()) {
        out.push(block(
            "architecture",
            format!(
                "architecture {} is not supported: NestOS For Container is built for x86_64 and aarch64",
                facts.arch
            ),
        ));
    }
    let file_load = facts.kexec_file_load.unwrap_or(true);
    let old_load = facts.kexec_load.unwrap_or(true);
    let mode = facts.lockdown.as_deref().unwrap_or_default();
    let locked = !mode.is_empty() && mode != "none";
    if !facts.kexec_core || (!file_load && !old_load) {
        out.push(block(
            "noKexec",
            "this kernel was built without kexec (CONFIG_KEXEC_FILE / CONFIG_KEXEC), so it cannot start another kernel; convert by booting the NestOS installer ISO instead".into(),
        ));
    } else if facts.kexec_load_disabled {
        out.push(block(
            "kexecDisabled",
            "kexec is switched off until the next reboot (kernel.kexec_load_disabled = 1 cannot be undone while running); remove the sysctl setting that sets it (grep -r kexec_load_disabled /etc/sysctl.* /usr/lib/sysctl.d), reboot, and run x2nestos again".into(),
        ));
    } else if locked && !file_load {
        out.push(block(
            "lockdown",
            format!(
                "kernel lockdown ({}) forbids the old kexec_load, and this kernel lacks kexec_file_load; turn Secure Boot off in the firmware, or convert by booting the NestOS installer ISO",
                mode
            ),
        ));
    } else if locked && facts.live_kernel == Some(Signature::Unsigned) {
        out.push(block(
            "lockdown",
            format!(
                "kernel lockdown ({}) lets kexec load only signed kernels, and the live image's kernel carries no signature; convert without --live (the conversion then boots this machine's own signed kernel), or turn Secure Boot off in the firmware",
                mode
            ),
        ));
    } else if locked && facts.live_kernel.is_some() {
        out.push(warn(
            "lockdown",
            format!(
                "kernel lockdown ({}) is on: kexec loads the live image's kernel only if this kernel trusts the key it was signed with (its built-in keys, the Secure Boot db or MOK); if it does not, the jump is refused and nothing is changed — then convert without --live",
                mode
            ),
        ));
    } else if locked {
        out.push(warn(
            "lockdown",
            format!(
                "kernel lockdown ({}) is on{}: only signed kernels can be loaded; x2nestos uses this machine's own signed kernel, which its firmware already trusts",
                mode,
                if facts.secure_boot == Some(true) { ", from Secure Boot" } else { "" }
            ),
        ));
    } else if facts.secure_boot == Some(true) {
        out.push(warn(
            "secureBoot",
            if facts.live_kernel.is_some() {
                "Secure Boot is on but the kernel is not locked down, so kexec asks for the live kernel's signature only if this kernel was built to (CONFIG_KEXEC_SIG_FORCE)".into()
            } else {
                "Secure Boot is on but the kernel is not locked down; the conversion uses this machine's own kernel either way".into()
            },
        ));
    }
    if facts.mem_available < facts.memory_needed {
        out.push(block(
            "memory",
            format!(
                "not enough memory: the conversion needs {} MiB of RAM, {} MiB are available, and swap does not survive kexec; free memory, or let the image stream from its URL instead of carrying it in RAM",
                facts.memory_needed.div_ceil(MIB),
                facts.mem_available / MIB
            ),
        ));
    }
    if facts.swap_used > 0 {
        out.push(warn(
            "swapInUse",
            format!(
                "{} MiB are swapped out; swap ends at kexec, so what is in it is not counted as available memory",
                facts.swap_used.div_ceil(MIB)
            ),
        ));
    }
    if let Some(refusal) = &facts.disk_refusal {
        out.push(block("disk", refusal.clone()));
    }
    if let (Some(image), Some(disk)) = (facts.image_size, facts.disk_size) {
        if image > disk {
            out.push(block(
                "diskTooSmall",
                format!(
                    "the image needs {} MiB but the disk has {} MiB; choose a larger disk",
                    image.div_ceil(MIB),
                    disk / MIB
                ),
            ));
        }
    }
    out.sort_by_key(|f| f.severity != Severity::Blocking);
    out
}

/// Whether any finding blocks.
pub fn blocked(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Blocking)
}

/// MemAvailable and swap in use, in bytes, from /proc/meminfo text.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (
        field("MemAvailable"),
        field("SwapTotal").saturating_sub(field("SwapFree")),
    )
}

/// The active mode from /sys/kernel/security/lockdown (`none [integrity] confidentiality`).
pub fn parse_lockdown(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_owned)
}

/// The Secure Boot EFI variable: 4 bytes of attributes, then 1 = on.
pub fn parse_secure_boot(bytes: &[u8]) -> Option<bool> {
    bytes.get(4).map(|&b| b == 1)
}

/// Whether the kernel image starting with `head` (its first KiB suffices) is a PE image with
/// a certificate table: the MZ header points at the PE header, whose optional header's fifth
/// data directory (the security directory) has a size.
pub fn kernel_signature(head: &[u8]) -> Signature {
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let pe = || -> Option<Signature> {
        if head.get(..2)? != b"MZ" {
            return None;
        }
        let pe = u32_at(0x3c)? as usize;
        if head.get(pe..pe + 4)? != b"PE\0\0" {
            return None;
        }
        let optional = pe + 24;
        // The count of data directories and where they start, by optional header kind.
        let (count_at, dirs_at) = match u16_at(optional)? {
            0x10b => (optional + 92, optional + 96),
            0x20b => (optional + 108, optional + 112),
            _ => return None,
        };
        const SECURITY: usize = 4;
        if (u32_at(count_at)? as usize) <= SECURITY {
            return Some(Signature::Unsigned);
        }
        let size = u32_at(dirs_at + SECURITY * 8 + 4)?;
        Some(if size > 0 {
            Signature::Signed
        } else {
            Signature::Unsigned
        })
    };
    pe().unwrap_or(Signature::Unknown)
}

/// Whether a kernel config (/boot/config-RELEASE) sets `option` to y; `None` when absent.
pub fn kernel_config(text: &str, option: &str) -> Option<bool> {
    text.lines().find_map(|l| {
        if let Some(value) = l.strip_prefix(option).and_then(|r| r.strip_prefix('=')) {
            Some(value == "y")
        } else if l == format!("# {option} is not set") {
            Some(false)
        } else {
            None
        }
    })
}

/// Gathers the machine's facts below `root` (`/` on a machine). `memory_needed`, the image
/// and the disk are the caller's to fill in.
pub fn gather(root: &Path) -> Facts {
    let read = |rel: &str| fs::read_to_string(root.join(rel)).ok();
    let (mem_available, swap_used) = parse_meminfo(&read("proc/meminfo").unwrap_or_default());
    let release = read("proc/sys/kernel/osrelease").unwrap_or_default();
    let config = read(&format!("boot/config-{}", release.trim()));
    let from_config = |option| config.as_deref().and_then(|c| kernel_config(c, option));
    Facts {
        euid: crate::sys::euid(),
        arch: read("proc/sys/kernel/arch")
            .map(|a| a.trim().to_owned())
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned()),
        kexec_core: root.join("sys/kernel/kexec_loaded").exists(),
        kexec_file_load: from_config("CONFIG_KEXEC_FILE"),
        kexec_load: from_config("CONFIG_KEXEC"),
        kexec_load_disabled: read("proc/sys/kernel/kexec_load_disabled")
            .is_some_and(|v| v.trim() == "1"),
        lockdown: read("sys/kernel/security/lockdown").and_then(|t| parse_lockdown(&t)),
        secure_boot: fs::read(root.join(SECURE_BOOT_VAR))
            .ok()
            .and_then(|b| parse_secure_boot(&b)),
        mem_available,
        swap_used,
        ..Facts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Facts {
        Facts {
            euid: 0,
            arch: "x86_64".into(),
            kexec_core: true,
            kexec_file_load: Some(true),
            kexec_load: Some(true),
            lockdown: Some("none".into()),
            secure_boot: Some(false),
            mem_available: 4096 * MIB,
            memory_needed: 1024 * MIB,
            image_size: Some(3 * 1024 * MIB),
            disk_size: Some(20 * 1024 * MIB),
            ..Facts::default()
        }
    }

    fn codes(facts: &Facts) -> Vec<(&'static str, Severity)> {
        evaluate(facts)
            .iter()
            .map(|f| (f.code, f.severity))
            .collect()
    }

    #[test]
    fn a_good_machine_has_no_findings() {
        assert_eq!(evaluate(&good()), vec![]);
        assert!(!blocked(&evaluate(&good())));
    }

    #[test]
    fn each_blocker_alone() {
        use Severity::*;
        let cases: Vec<(Facts, Vec<(&str, Severity)>)> = vec![
            (
                Facts {
                    euid: 1000,
                    ..good()
                },
                vec![("notRoot", Blocking)],
            ),
            (
                Facts {
                    arch: "riscv64".into(),
                    ..good()
                },
                vec![("architecture", Blocking)],
            ),
            (
                Facts {
                    kexec_core: false,
                    ..good()
                },
                vec![("noKexec", Blocking)],
            ),
            (
                Facts {
                    kexec_file_load: Some(false),
                    kexec_load: Some(false),
                    ..good()
                },
                vec![("noKexec", Blocking)],
            ),
            (
                Facts {
                    kexec_load_disabled: true,
                    ..good()
                },
                vec![("kexecDisabled", Blocking)],
            ),
            (
                Facts {
                    lockdown: Some("integrity".into()),
                    kexec_file_load: Some(false),
                    ..good()
                },
                vec![("lockdown", Blocking)],
            ),
            (
                Facts {
                    mem_available: 512 * MIB,
                    ..good()
                },
                vec![("memory", Blocking)],
            ),
            (
                Facts {
                    disk_size: Some(2 * 1024 * MIB),
                    ..good()
                },
                vec![("diskTooSmall", Blocking)],
            ),
            (
                Facts {
                    disk_refusal: Some(
                        "vda3 is a partition of vda; name the whole disk, /dev/vda".into(),
                    ),
                    ..good()
                },
                vec![("disk", Blocking)],
            ),
        ];
        for (facts, expected) in cases {
            assert_eq!(codes(&facts), expected, "{facts:?}");
            assert!(blocked(&evaluate(&facts)));
        }
    }

    #[test]
    fn lockdown_with_kexec_file_load_only_warns() {
        let facts = Facts {
            lockdown: Some("integrity".into()),
            secure_boot: Some(true),
            ..good()
        };
        let findings = evaluate(&facts);
        assert_eq!(codes(&facts), [("lockdown", Severity::Warning)]);
        assert_eq!(
            findings[0].message,
            "kernel lockdown (integrity) is on, from Secure Boot: only signed kernels can be loaded; x2nestos uses this machine's own signed kernel, which its firmware already trusts"
        );
        let facts = Facts {
            secure_boot: Some(true),
            ..good()
        };
        assert_eq!(codes(&facts), [("secureBoot", Severity::Warning)]);
    }

    #[test]
    fn the_live_kernel_under_lockdown_must_be_signed() {
        let locked = |live_kernel| Facts {
            lockdown: Some("integrity".into()),
            secure_boot: Some(true),
            live_kernel,
            ..good()
        };
        let findings = evaluate(&locked(Some(Signature::Unsigned)));
        assert_eq!(
            codes(&locked(Some(Signature::Unsigned))),
            [("lockdown", Severity::Blocking)]
        );
        assert!(
            findings[0].message.contains("carries no signature")
                && findings[0].message.contains("convert without --live"),
            "{}",
            findings[0].message
        );
        // Signed, or cannot be told: the key's trust is the running kernel's to judge.
        for sig in [Signature::Signed, Signature::Unknown] {
            let findings = evaluate(&locked(Some(sig)));
            assert_eq!(codes(&locked(Some(sig))), [("lockdown", Severity::Warning)]);
            assert!(
                findings[0].message.contains("trusts the key")
                    && !findings[0].message.contains("own signed kernel"),
                "{}",
                findings[0].message
            );
        }
        // Without lockdown no signature is asked for.
        let open = Facts {
            live_kernel: Some(Signature::Unsigned),
            ..good()
        };
        assert!(evaluate(&open).is_empty());
        let secure_boot = Facts {
            secure_boot: Some(true),
            ..open
        };
        let findings = evaluate(&secure_boot);
        assert_eq!(codes(&secure_boot), [("secureBoot", Severity::Warning)]);
        assert!(findings[0].message.contains("live kernel's signature"));
    }

    /// A PE header as a kernel's EFI stub starts: MZ, the PE offset at 0x3c, the COFF header,
    /// the optional header of `magic` with `count` data directories, the security one of
    /// `cert_size` bytes.
    fn pe_head(magic: u16, count: u32, cert_size: u32) -> Vec<u8> {
        let mut h = vec![0u8; 1024];
        h[..2].copy_from_slice(b"MZ");
        h[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        h[0x80..0x84].copy_from_slice(b"PE\0\0");
        let optional = 0x80 + 24;
        h[optional..optional + 2].copy_from_slice(&magic.to_le_bytes());
        let (count_at, dirs_at) = if magic == 0x10b {
            (optional + 92, optional + 96)
        } else {
            (optional + 108, optional + 112)
        };
        h[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        let security = dirs_at + 4 * 8;
        h[security..security + 4].copy_from_slice(&0x7d_0000u32.to_le_bytes());
        h[security + 4..security + 8].copy_from_slice(&cert_size.to_le_bytes());
        h
    }

    #[test]
    fn kernel_signature_reads_the_pe_security_directory() {
        use Signature::*;
        assert_eq!(kernel_signature(&pe_head(0x20b, 6, 1472)), Signed);
        assert_eq!(kernel_signature(&pe_head(0x20b, 6, 0)), Unsigned);
        assert_eq!(kernel_signature(&pe_head(0x10b, 16, 2048)), Signed);
        assert_eq!(kernel_signature(&pe_head(0x10b, 16, 0)), Unsigned);
        // Too few data directories to have a security one.
        assert_eq!(kernel_signature(&pe_head(0x20b, 4, 1472)), Unsigned);
        // Not a PE image, or cut short: cannot be told.
        assert_eq!(kernel_signature(&[0x1f, 0x8b, 8, 0]), Unknown);
        assert_eq!(kernel_signature(&pe_head(0x20b, 6, 1472)[..0x90]), Unknown);
        let mut bad_magic = pe_head(0x20b, 6, 1472);
        bad_magic[0x80 + 24] = 7;
        assert_eq!(kernel_signature(&bad_magic), Unknown);
        let mut no_pe = pe_head(0x20b, 6, 1472);
        no_pe[0x80..0x84].copy_from_slice(b"NE\0\0");
        assert_eq!(kernel_signature(&no_pe), Unknown);
        assert_eq!(kernel_signature(b""), Unknown);
    }

    #[test]
    fn messages_say_what_and_what_to_do() {
        let facts = Facts {
            euid: 1000,
            mem_available: 700 * MIB,
            swap_used: 300 * MIB,
            ..good()
        };
        let findings = evaluate(&facts);
        let messages: Vec<_> = findings.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(messages.len(), 3);
        assert!(messages[0].ends_with("run it with sudo"));
        assert_eq!(
            messages[1],
            "not enough memory: the conversion needs 1024 MiB of RAM, 700 MiB are available, and swap does not survive kexec; free memory, or let the image stream from its URL instead of carrying it in RAM"
        );
        assert_eq!(
            findings[2].severity,
            Severity::Warning,
            "blocking findings come first"
        );
        assert!(findings.iter().all(|f| !f.message.contains('\n')));
        let json = serde_json::to_string(&findings[2]).unwrap();
        assert!(
            json.starts_with(r#"{"severity":"warning","code":"swapInUse","#),
            "{json}"
        );
    }

    #[test]
    fn parsers_on_captured_text() {
        let meminfo = "MemTotal:       24683912 kB\nMemFree:        17190644 kB\nMemAvailable:   23816164 kB\nSwapTotal:       2097148 kB\nSwapFree:        1048576 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            (23_816_164 * 1024, 1_048_572 * 1024)
        );
        assert_eq!(parse_meminfo(""), (0, 0));
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n").as_deref(),
            Some("none")
        );
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality").as_deref(),
            Some("integrity")
        );
        assert_eq!(parse_lockdown(""), None);
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 1]), Some(true));
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 0]), Some(false));
        assert_eq!(parse_secure_boot(&[6, 0]), None);
        let config = "CONFIG_KEXEC=y\n# CONFIG_KEXEC_FILE is not set\nCONFIG_KEXEC_SIG=y\n";
        assert_eq!(kernel_config(config, "CONFIG_KEXEC"), Some(true));
        assert_eq!(kernel_config(config, "CONFIG_KEXEC_FILE"), Some(false));
        assert_eq!(kernel_config(config, "CONFIG_CRASH_DUMP"), None);
    }

    #[test]
    fn gather_reads_a_fixture_root_and_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let put = |rel: &str, text: &[u8]| {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        put(
            "proc/meminfo",
            b"MemAvailable: 2048 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
        );
        put("proc/sys/kernel/osrelease", b"6.1.0-test\n");
        put("proc/sys/kernel/arch", b"aarch64\n");
        put("proc/sys/kernel/kexec_load_disabled", b"1\n");
        put(
            "boot/config-6.1.0-test",
            b"CONFIG_KEXEC=y\nCONFIG_KEXEC_FILE=y\n",
        );
        put("sys/kernel/kexec_loaded", b"0\n");
        put(
            "sys/kernel/security/lockdown",
            b"none [integrity] confidentiality\n",
        );
        put(SECURE_BOOT_VAR, &[6, 0, 0, 0, 1]);
        let facts = gather(root);
        assert_eq!(facts.arch, "aarch64");
        assert!(facts.kexec_core && facts.kexec_load_disabled);
        assert_eq!(
            (facts.kexec_file_load, facts.kexec_load),
            (Some(true), Some(true))
        );
        assert_eq!(facts.lockdown.as_deref(), Some("integrity"));
        assert_eq!(facts.secure_boot, Some(true));
        assert_eq!(facts.mem_available, 2048 * 1024);

        // This machine: the readers run on the real /proc and /sys without failing.
        let here = gather(Path::new("/"));
        assert!(here.mem_available > 0);
        assert!(!here.arch.is_empty());
    }
}
