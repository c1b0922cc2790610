//! The conversion plan: what `x2nestos plan` shows, what `convert` acts on, and what the
//! installer inside the conversion initramfs reads back (`/etc/x2nestos/plan.json`).
//!
//! Everything here is pure: facts gathered elsewhere go in, decisions come out — whether the
//! image is carried in memory or streamed, how much memory that needs, the kernel command
//! line of the conversion kernel, the network the installer brings up, the check that the
//! disk found after kexec is the planned one, and the few lines that tell the admin what
//! will be destroyed and what carried over.
//!
//! The plan is a versioned, Kubernetes-shaped object (`apiVersion`, `kind`, camelCase), so
//! `-o json` output can be consumed by automation and read back by a later x2nestos.

use serde::{Deserialize, Serialize};

use super::disk::{Disk, Mark};
use super::image::verify::Sha256Sum;
use super::kargs::Kargs;
use super::network::Capture;
use super::preflight::{Finding, Severity, Signature};
use super::saved::SavedPartition;
use super::source::Source;

pub const API_VERSION: &str = "x2nestos.housekeeper.io/v1";

const MIB: u64 = 1 << 20;

/// What the conversion kernel needs besides a carried image: the kernel and the unpacked
/// initramfs (systemd, udev, x2nestos; about 60 MiB), the image writer (at most 128 MiB, most
/// of it the threaded xz decoder's) and headroom for the kernel's own allocations and page
/// cache under writing.
pub const BASE_MEMORY: u64 = 384 * MIB;

/// Where the installer finds a carried image inside the initramfs.
pub const CARRIED_IMAGE: &str = "/x2nestos/image";
/// Where the plan and the Ignition config live inside the initramfs.
pub const PLAN_PATH: &str = "/etc/x2nestos/plan.json";
pub const IGNITION_PATH: &str = "/etc/x2nestos/config.ign";

/// The plan carried into the conversion initramfs (`kind: Plan` on the wire; not the
/// cluster's rollout plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversionPlan {
    pub api_version: String,
    pub kind: String,
    pub disk: PlannedDisk,
    pub image: PlannedImage,
    /// Links the installer brings up when it streams the image.
    #[serde(default)]
    pub network: Vec<InstallLink>,
    /// The NestOS live ISO / PXE path: the live system is booted instead of the conversion
    /// initramfs, and NestOS's own installer writes the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<PlannedLive>,
    /// Partitions of the disk that are kept (`--save-partlabel`, `--save-partindex`): never
    /// wiped or written, their entries carried into the new table after the image's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub saved: Vec<SavedPartition>,
    /// The new system's kernel arguments, applied to its boot loader entries.
    #[serde(default, skip_serializing_if = "Kargs::is_empty")]
    pub kargs: Kargs,
}

/// What is loaded with kexec on the live path, as read from the live image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedLive {
    /// The boot config the entry was read from (`isolinux/isolinux.cfg`).
    pub entry: String,
    pub kernel: String,
    /// The entry's initramfs parts and the root filesystem; the overlay follows them.
    pub initrds: Vec<String>,
    /// The installer's argument prefix (`nestos.`), from the entry's `<prefix>liveiso=`.
    pub prefix: String,
    /// The kernel command line of the jump.
    pub args: Vec<String>,
    /// Bytes loaded into memory (kernel and initramfs parts, before the overlay).
    pub load_bytes: u64,
    /// Whether the kernel carries a signature (kexec asks for one under lockdown).
    #[serde(default)]
    pub kernel_signature: Signature,
}

/// Memory the live system needs: its files are loaded and the root filesystem unpacked in
/// RAM, beside the base.
pub fn live_memory_needed(load_bytes: u64) -> u64 {
    BASE_MEMORY + 2 * load_bytes
}

/// How a kept partition is shown: `partition 2 "data" (15 MiB, ext4), kept`.
pub fn describe_saved(p: &SavedPartition) -> String {
    format!(
        "partition {} {:?} ({}, {})",
        p.number,
        p.label,
        human_size(p.size_bytes),
        p.file_system
            .as_deref()
            .unwrap_or("no file system recognised")
    )
}

/// Bytes in binary units with one decimal where it matters: `15 MiB`, `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = if unit == 0 {
        value.to_string()
    } else {
        format!("{value:.1}")
    };
    format!("{} {}", text.trim_end_matches(".0"), units[unit])
}

/// The console arguments of the running machine, kept across the jump.
pub fn console_args(proc_cmdline: &str) -> Vec<String> {
    proc_cmdline
        .split_whitespace()
        .filter(|a| a.starts_with("console=") || a.starts_with("earlycon"))
        .map(str::to_owned)
        .collect()
}

/// The target disk as identified before kexec. Device names may change order across the
/// jump, so the installer finds it again by serial and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedDisk {
    /// As the admin named it (`/dev/vda`, `/dev/disk/by-id/…`).
    pub named: String,
    /// Kernel name at plan time (`vda`).
    pub name: String,
    #[serde(default)]
    pub by_id: Vec<String>,
    /// Where it sat on its bus (`/dev/disk/by-path/…`): stable across boots of one machine.
    #[serde(default)]
    pub by_path: Vec<String>,
    pub serial: Option<String>,
    pub size_bytes: u64,
    pub sector_size: u32,
    /// Its partition table's id and first MiB's digest at plan time, re-checked after kexec
    /// (plans written before marks were recorded have none).
    #[serde(default)]
    pub mark: Option<Mark>,
}

impl PlannedDisk {
    pub fn of(named: &str, disk: &Disk) -> PlannedDisk {
        PlannedDisk {
            named: named.to_owned(),
            name: disk.name.clone(),
            by_id: disk.by_id.clone(),
            by_path: disk.by_path.clone(),
            serial: disk.serial.clone(),
            size_bytes: disk.size_bytes,
            sector_size: disk.logical_sector_size,
            mark: disk.mark.clone(),
        }
    }
}

/// The other disks the installer could take for `target` after kexec, when names may have
/// changed: no by-id or by-path name of its own, the same size and serial (or none), and no
/// mark that differs. A plan for such a disk is refused. Pure.
pub fn confusable<'a>(target: &Disk, others: &'a [Disk]) -> Vec<&'a Disk> {
    if !target.by_id.is_empty() || !target.by_path.is_empty() {
        return Vec::new();
    }
    others
        .iter()
        .filter(|d| d.name != target.name)
        .filter(|d| d.size_bytes == target.size_bytes && d.serial == target.serial)
        .filter(|d| match (&d.mark, &target.mark) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
        .collect()
}

/// How the installer gets the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Carry {
    /// Downloaded and verified before kexec, carried in the initramfs.
    InMemory,
    /// Fetched from its URL by the installer, verified while it streams.
    Stream,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedImage {
    /// A URL or an absolute file path.
    pub source: Source,
    /// Expected SHA-256 of the image as read (compressed); `None` only with `insecure`.
    pub sha256: Option<Sha256Sum>,
    /// A detached OpenPGP signature was checked against the admin's keyring.
    #[serde(default)]
    pub signed: bool,
    /// The admin chose to write an unverified image.
    #[serde(default)]
    pub insecure: bool,
    /// Size of the image as read, when the source tells.
    pub compressed_bytes: Option<u64>,
    /// Size once decompressed (what the disk must hold), when it can be told beforehand.
    pub image_bytes: Option<u64>,
    pub carry: Carry,
    /// Where the carried image is, inside the initramfs ([`CARRIED_IMAGE`]) — or wherever the
    /// installer is pointed at in tests.
    #[serde(default)]
    pub carried: Option<String>,
    /// Seconds without data before the installer's download counts as stalled
    /// (`--stall-timeout`); absent: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_seconds: Option<u64>,
}

/// A network link as the installer brings it up: found by MAC, addresses as they are now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallLink {
    pub name: String,
    pub mac: String,
    /// `10.0.2.15/24`, `fd00::5/64`.
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    #[serde(default)]
    pub gateway6: Option<String>,
}

/// What `x2nestos plan` reports: the plan (when the disk and image could be planned), the
/// findings, and the lines for the admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: String,
    pub kind: String,
    pub blocked: bool,
    pub findings: Vec<Finding>,
    /// What the conversion destroys, one item a line.
    pub destroyed: Vec<String>,
    /// What the new system gets from this one, one item a line.
    pub carried_over: Vec<String>,
    /// Partitions of the disk that are kept, one a line (number, label, size, file system).
    pub kept: Vec<String>,
    /// Decisions worth seeing (key options stripped, interfaces left out, …).
    pub notes: Vec<String>,
    pub plan: Option<ConversionPlan>,
}

impl Report {
    pub fn new(
        findings: Vec<Finding>,
        destroyed: Vec<String>,
        carried_over: Vec<String>,
        notes: Vec<String>,
        plan: Option<ConversionPlan>,
    ) -> Report {
        Report {
            api_version: API_VERSION.into(),
            kind: "PlanReport".into(),
            blocked: findings.iter().any(|f| f.severity == Severity::Blocking),
            findings,
            destroyed,
            carried_over,
            kept: Vec::new(),
            notes,
            plan,
        }
    }
}

/// Whether the image goes into the initramfs or is streamed by the installer.
///
/// A file can only be carried (the installer has no access to this machine's file systems);
/// a URL is carried when memory allows — the initramfs holds it twice while the kernel
/// unpacks it — unless the admin asked to stream, or its size is unknown.
pub fn carry(
    is_url: bool,
    stream_asked: bool,
    compressed: Option<u64>,
    mem_available: u64,
) -> Carry {
    if !is_url {
        return Carry::InMemory;
    }
    match compressed {
        Some(size) if !stream_asked && BASE_MEMORY + 2 * size <= mem_available => Carry::InMemory,
        _ => Carry::Stream,
    }
}

/// RAM the conversion kernel needs for a plan.
pub fn memory_needed(carry: Carry, compressed: Option<u64>) -> u64 {
    match carry {
        Carry::InMemory => BASE_MEMORY + 2 * compressed.unwrap_or(0),
        Carry::Stream => BASE_MEMORY,
    }
}

/// How the image is verified, from the command line's choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub sha256: Option<Sha256Sum>,
    pub signed: bool,
    pub insecure: bool,
}

/// Checks that the image will be verified, or that the admin said it need not be.
pub fn verification(
    sha256: Option<&str>,
    signature: bool,
    keyring: bool,
    insecure: bool,
) -> Result<Verification, String> {
    let sha256 = sha256
        .map(|text| Sha256Sum::parse(text).map_err(|e| format!("--sha256: {e}")))
        .transpose()?;
    if signature && !keyring {
        return Err("--signature needs --keyring FILE, the OpenPGP keys to check it with".into());
    }
    if sha256.is_none() && !signature && !insecure {
        return Err("the image would not be verified: give --sha256 HEX (as published beside the image) or --signature FILE with --keyring FILE; --insecure writes an unverified image".into());
    }
    Ok(Verification {
        sha256,
        signed: signature,
        insecure: insecure && sha256.is_none() && !signature,
    })
}

/// The conversion kernel's command line: the running system's console settings (so progress
/// shows where the admin looks; never a hard-coded ttyS0), no root file system to mount,
/// and a reboot rather than a hang if the kernel panics.
pub fn kernel_args(proc_cmdline: &str) -> Vec<String> {
    let mut args = console_args(proc_cmdline);
    args.extend(
        [
            "rd.x2nestos",
            "panic=30",
            "systemd.show_status=auto",
            "rd.udev.log_level=3",
        ]
        .map(str::to_owned),
    );
    args
}

/// The links the installer brings up when it streams: every carried interface, with the
/// addresses it has now (a DHCP lease is still valid minutes later; the new system asks
/// again at its first boot).
pub fn install_links(capture: &Capture) -> Vec<InstallLink> {
    capture
        .interfaces
        .iter()
        .filter(|i| !i.ipv4.addresses.is_empty() || !i.ipv6.addresses.is_empty())
        .map(|i| InstallLink {
            name: i.name.clone(),
            mac: i.mac.clone(),
            addresses: i
                .ipv4
                .addresses
                .iter()
                .chain(&i.ipv6.addresses)
                .map(|a| format!("{}/{}", a.ip, a.prefix))
                .collect(),
            gateway: i.ipv4.gateway.map(|g| g.to_string()),
            gateway6: i.ipv6.gateway.map(|g| g.to_string()),
        })
        .collect()
}

/// Checks, after kexec, that `found` is the disk that was planned: same size, and the same
/// serial when the disk has one. One line saying what differs when it is not.
///
/// `chosen_earlier`: an earlier run of the installer in this boot chose this very device for
/// this plan before its first write; its first MiB may be the new image's since, so its mark
/// is not compared (names do not change within a boot).
pub fn recheck(planned: &PlannedDisk, found: &Disk, chosen_earlier: bool) -> Result<(), String> {
    if found.size_bytes != planned.size_bytes {
        return Err(format!(
            "/dev/{} has {} bytes but the planned disk had {}: it is not the disk that was planned; nothing was written, reboot and run x2nestos again",
            found.name, found.size_bytes, planned.size_bytes
        ));
    }
    if found.serial != planned.serial {
        return Err(format!(
            "/dev/{} has serial {} but the planned disk had {}: it is not the disk that was planned; nothing was written, reboot and run x2nestos again",
            found.name,
            found.serial.as_deref().unwrap_or("(none)"),
            planned.serial.as_deref().unwrap_or("(none)")
        ));
    }
    if let Some(mark) = planned.mark.as_ref().filter(|_| !chosen_earlier) {
        if found.mark.as_ref() != Some(mark) {
            return Err(format!(
                "/dev/{} shows {} but the planned disk showed {}: it is not the disk that was planned, or its first MiB changed since; nothing was written, reboot and run x2nestos again",
                found.name,
                found
                    .mark
                    .as_ref()
                    .map_or_else(|| "nothing readable".to_owned(), Mark::describe),
                mark.describe()
            ));
        }
    }
    Ok(())
}

/// Finds the planned disk among the disks present after kexec (their marks read): the device
/// (`major:minor`) an earlier run in this boot `chosen` for this plan, if any; else by its
/// by-id names, then by serial, by its by-path name, by its mark when exactly one disk shows
/// it, and last by kernel name; the caller re-checks it with [`recheck`], so a disk found by
/// name whose mark differs is not written.
pub fn find_disk<'a>(
    planned: &PlannedDisk,
    disks: &'a [Disk],
    chosen: Option<&str>,
) -> Option<&'a Disk> {
    chosen
        .and_then(|dev| disks.iter().find(|d| d.dev == dev))
        .or_else(|| {
            disks
                .iter()
                .find(|d| d.by_id.iter().any(|id| planned.by_id.contains(id)))
        })
        .or_else(|| {
            planned.serial.as_ref().and_then(|serial| {
                disks.iter().find(|d| {
                    d.serial.as_ref() == Some(serial) && d.size_bytes == planned.size_bytes
                })
            })
        })
        .or_else(|| {
            disks
                .iter()
                .find(|d| d.by_path.iter().any(|p| planned.by_path.contains(p)))
        })
        .or_else(|| {
            // Only a mark no other disk shows: two copies of one first MiB name neither.
            let mark = planned.mark.as_ref()?;
            let mut same = disks
                .iter()
                .filter(|d| d.mark.as_ref() == Some(mark) && d.size_bytes == planned.size_bytes);
            match (same.next(), same.next()) {
                (Some(d), None) => Some(d),
                _ => None,
            }
        })
        .or_else(|| disks.iter().find(|d| d.name == planned.name))
}

/// The few lines `x2nestos plan` prints for a person.
pub fn summary(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(plan) = &report.plan {
        let image = &plan.image;
        let check = if image.insecure {
            "UNVERIFIED (--insecure)".to_owned()
        } else {
            let mut by = Vec::new();
            if let Some(sha) = image.sha256 {
                by.push(format!("sha256 {}…", &sha.to_string()[..16]));
            }
            if image.signed {
                by.push("OpenPGP signature".into());
            }
            format!("verified by {}", by.join(" and "))
        };
        match &plan.live {
            None => lines.push(format!(
                "Image: {} ({check}; {})",
                image.source,
                match image.carry {
                    Carry::InMemory => "carried in memory",
                    Carry::Stream => "streamed by the installer",
                }
            )),
            Some(live) => {
                let fetched = if image.source.is_url() {
                    "; downloaded whole before the jump"
                } else {
                    ""
                };
                lines.push(format!(
                    "Live image: {} ({check}{fetched}); boots {} with {} initramfs part(s) and an overlay, NestOS's installer writes the disk",
                    image.source,
                    live.kernel,
                    live.initrds.len()
                ));
                lines.push(format!("Kernel arguments: {}", live.args.join(" ")));
            }
        }
    }
    lines.push(format!(
        "Will be destroyed: {}",
        if report.destroyed.is_empty() {
            "(no disk planned)".into()
        } else {
            report.destroyed.join("; ")
        }
    ));
    if !report.kept.is_empty() {
        lines.push(format!("Will be kept: {}", report.kept.join("; ")));
    }
    lines.push(format!(
        "Will be carried over: {}",
        if report.carried_over.is_empty() {
            "nothing".into()
        } else {
            report.carried_over.join("; ")
        }
    ));
    for note in &report.notes {
        lines.push(format!("Note: {note}"));
    }
    for finding in &report.findings {
        let word = match finding.severity {
            Severity::Blocking => "BLOCKED",
            Severity::Warning => "Warning",
        };
        lines.push(format!("{word}: {}", finding.message));
    }
    lines.push(if report.blocked {
        "Nothing was changed; fix what is BLOCKED and run x2nestos again.".into()
    } else {
        "Ready: `x2nestos convert` with the same arguments performs this plan.".into()
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::disk::Partition;
    use crate::convert::network::{Address, Family, Interface, Method};

    fn disk(name: &str, serial: Option<&str>, size: u64) -> Disk {
        Disk {
            name: name.into(),
            dev: "253:0".into(),
            by_id: vec![format!("/dev/disk/by-id/virtio-{name}")],
            by_path: vec![],
            serial: serial.map(str::to_owned),
            size_bytes: size,
            logical_sector_size: 512,
            partitions: vec![Partition {
                name: format!("{name}1"),
                dev: "253:1".into(),
                number: 1,
                size_bytes: size - MIB,
            }],
            holders: vec![],
            mark: None,
        }
    }

    #[test]
    fn a_url_is_carried_when_it_fits_twice_beside_the_base() {
        let mem = 1536 * MIB;
        assert_eq!(carry(true, false, Some(143 * MIB), mem), Carry::InMemory);
        assert_eq!(carry(true, false, Some(600 * MIB), mem), Carry::Stream);
        assert_eq!(carry(true, false, None, mem), Carry::Stream, "size unknown");
        assert_eq!(
            carry(true, true, Some(MIB), mem),
            Carry::Stream,
            "asked to stream"
        );
        assert_eq!(
            carry(false, true, Some(600 * MIB), mem),
            Carry::InMemory,
            "a file"
        );
        assert_eq!(memory_needed(Carry::InMemory, Some(100 * MIB)), 584 * MIB);
        assert_eq!(memory_needed(Carry::Stream, Some(100 * MIB)), BASE_MEMORY);
    }

    #[test]
    fn an_unverified_image_needs_insecure() {
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let v = verification(Some(sha), false, false, false).unwrap();
        assert!(v.sha256.is_some() && !v.insecure);
        let err = verification(None, false, false, false).unwrap_err();
        assert!(
            err.contains("--sha256 HEX") && err.contains("--insecure"),
            "{err}"
        );
        assert!(verification(None, false, false, true).unwrap().insecure);
        assert!(verification(None, true, false, false)
            .unwrap_err()
            .contains("--keyring"));
        let signed = verification(None, true, true, false).unwrap();
        assert!(signed.signed && !signed.insecure);
        assert!(
            !verification(Some(sha), false, false, true)
                .unwrap()
                .insecure,
            "a checksum wins"
        );
        assert!(verification(Some("abc"), false, false, false)
            .unwrap_err()
            .starts_with("--sha256: "));
    }

    #[test]
    fn the_conversion_kernel_keeps_the_consoles_only() {
        let args = kernel_args(
            "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro console=tty0 console=ttyS0,115200n8 quiet earlycon=uart8250,io,0x3f8",
        );
        assert_eq!(
            args[..3],
            [
                "console=tty0",
                "console=ttyS0,115200n8",
                "earlycon=uart8250,io,0x3f8"
            ]
        );
        assert!(!args.iter().any(|a| a.starts_with("root=")));
        assert!(args.contains(&"rd.x2nestos".to_owned()));
        assert!(kernel_args("root=/dev/sda1")
            .iter()
            .all(|a| !a.starts_with("console=")));
    }

    #[test]
    fn the_installer_brings_up_the_current_addresses() {
        let dynamic = |ip: &str, prefix| Address {
            ip: ip.parse().unwrap(),
            prefix,
            dynamic: true,
        };
        let capture = Capture {
            interfaces: vec![
                Interface {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into(),
                    mtu: None,
                    ipv4: Family {
                        method: Method::Auto,
                        addresses: vec![dynamic("10.0.2.15", 24)],
                        gateway: Some("10.0.2.2".parse().unwrap()),
                        ..Family::default()
                    },
                    ipv6: Family::default(),
                    search: vec![],
                },
                Interface {
                    name: "eth1".into(),
                    mac: "52:54:00:00:00:01".into(),
                    mtu: None,
                    ipv4: Family::default(),
                    ipv6: Family::default(),
                    search: vec![],
                },
            ],
            ..Capture::default()
        };
        let links = install_links(&capture);
        assert_eq!(
            links,
            vec![InstallLink {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                addresses: vec!["10.0.2.15/24".into()],
                gateway: Some("10.0.2.2".into()),
                gateway6: None,
            }]
        );
    }

    #[test]
    fn the_disk_after_kexec_must_be_the_planned_one() {
        let planned = PlannedDisk::of("/dev/vda", &disk("vda", Some("S1"), 8 << 30));
        assert_eq!(
            recheck(&planned, &disk("vda", Some("S1"), 8 << 30), false),
            Ok(())
        );
        let err = recheck(&planned, &disk("vda", Some("S1"), 4 << 30), false).unwrap_err();
        assert!(
            err.contains("has 4294967296 bytes but the planned disk had 8589934592"),
            "{err}"
        );
        assert!(err.contains("nothing was written"), "{err}");
        let err = recheck(&planned, &disk("vda", Some("S2"), 8 << 30), false).unwrap_err();
        assert!(
            err.contains("serial S2 but the planned disk had S1"),
            "{err}"
        );
        let err = recheck(&planned, &disk("vda", None, 8 << 30), false).unwrap_err();
        assert!(err.contains("serial (none)"), "{err}");
    }

    /// A disk as a loop device shows it: no by-id or by-path name, no serial.
    fn bare(name: &str, size: u64, table: Option<&str>, digest: &str) -> Disk {
        Disk {
            by_id: vec![],
            mark: Some(Mark {
                table: table.map(str::to_owned),
                first_mib_sha256: digest.into(),
            }),
            ..disk(name, None, size)
        }
    }

    #[test]
    fn disks_without_stable_names_are_told_apart_by_their_marks_or_refused() {
        let a = bare("loop0", 8 << 30, Some("gpt:aaaa"), "d1");
        let b = bare("loop1", 8 << 30, Some("gpt:bbbb"), "d2");
        let blank_a = bare("loop0", 8 << 30, None, "zeros");
        let blank_b = bare("loop1", 8 << 30, None, "zeros");
        assert!(confusable(&a, &[a.clone(), b.clone()]).is_empty());
        let same = confusable(&blank_a, std::slice::from_ref(&blank_b));
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].name, "loop1");
        // Another size, or a stable name of its own, is told apart.
        assert!(confusable(&blank_a, &[bare("loop1", 4 << 30, None, "zeros")]).is_empty());
        let mut named = blank_a.clone();
        named.by_path = vec!["/dev/disk/by-path/pci-0000:00:05.0".into()];
        assert!(confusable(&named, std::slice::from_ref(&blank_b)).is_empty());

        // After kexec the names swapped: found by its mark, not by its old name.
        let planned = PlannedDisk::of("/dev/loop0", &a);
        let swapped = [
            Disk {
                name: "loop0".into(),
                ..b.clone()
            },
            Disk {
                name: "loop1".into(),
                ..a.clone()
            },
        ];
        let found = find_disk(&planned, &swapped, None).unwrap();
        assert_eq!(found.name, "loop1");
        assert_eq!(recheck(&planned, found, false), Ok(()));
        // Its first MiB changed since the plan: found by name, refused by the recheck.
        let changed = [bare("loop0", 8 << 30, Some("gpt:cccc"), "d3")];
        let found = find_disk(&planned, &changed, None).unwrap();
        let err = recheck(&planned, found, false).unwrap_err();
        assert!(
            err.contains("shows gpt:cccc but the planned disk showed gpt:aaaa")
                && err.contains("nothing was written"),
            "{err}"
        );
        // Two disks with the planned mark: neither is taken by it.
        let twins = [
            Disk {
                name: "loop5".into(),
                ..a.clone()
            },
            Disk {
                name: "loop6".into(),
                ..a.clone()
            },
        ];
        assert_eq!(find_disk(&planned, &twins, None), None);
        // The same device chosen by an earlier run in this boot, written since: found first,
        // and taken.
        let rerun = [
            b.clone(),
            Disk {
                dev: "7:0".into(),
                ..bare("loop0", 8 << 30, Some("gpt:image"), "new")
            },
        ];
        let found = find_disk(&planned, &rerun, Some("7:0")).unwrap();
        assert_eq!(
            found.mark.as_ref().and_then(|m| m.table.as_deref()),
            Some("gpt:image")
        );
        assert_eq!(recheck(&planned, found, true), Ok(()));
        // A plan from before marks: checked as before.
        let old = PlannedDisk {
            mark: None,
            ..planned.clone()
        };
        assert_eq!(recheck(&old, &changed[0], false), Ok(()));
    }

    #[test]
    fn the_planned_disk_is_found_by_id_then_serial_then_name() {
        let mut planned = PlannedDisk::of("/dev/vda", &disk("vda", Some("S1"), 8 << 30));
        // Names swapped across the jump: by-id wins.
        let mut moved = disk("vdb", Some("S1"), 8 << 30);
        moved.by_id = planned.by_id.clone();
        let mut other = disk("vda", Some("S9"), 8 << 30);
        other.by_id = vec!["/dev/disk/by-id/virtio-another".into()];
        let disks = vec![other.clone(), moved.clone()];
        assert_eq!(find_disk(&planned, &disks, None).unwrap().name, "vdb");
        // No by-id names: serial and size.
        planned.by_id.clear();
        moved.by_id.clear();
        assert_eq!(
            find_disk(&planned, &[other.clone(), moved], None)
                .unwrap()
                .name,
            "vdb"
        );
        // Nothing but the name: found, and the recheck then says it is another disk.
        let found = find_disk(&planned, std::slice::from_ref(&other), None).unwrap();
        assert!(recheck(&planned, found, false).is_err());
        assert!(find_disk(&planned, &[], None).is_none());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(15 * MIB), "15 MiB");
        assert_eq!(human_size(3 * MIB / 2), "1.5 MiB");
        assert_eq!(human_size((1 << 30) - 16896), "1024 MiB");
        assert_eq!(human_size(8 << 30), "8 GiB");
    }

    #[test]
    fn the_summary_says_what_goes_and_what_stays() {
        let plan = ConversionPlan {
            api_version: API_VERSION.into(),
            kind: "Plan".into(),
            disk: PlannedDisk::of("/dev/vda", &disk("vda", None, 8 << 30)),
            image: PlannedImage {
                source: Source::Url("http://10.0.2.2/metal.raw.xz".into()),
                sha256: Some(
                    Sha256Sum::parse(
                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                    )
                    .unwrap(),
                ),
                signed: false,
                insecure: false,
                compressed_bytes: Some(143 * MIB),
                image_bytes: None,
                carry: Carry::InMemory,
                carried: Some(CARRIED_IMAGE.into()),
                stall_seconds: None,
            },
            network: vec![],
            live: None,
            saved: vec![],
            kargs: Default::default(),
        };
        let report = Report::new(
            vec![],
            vec![
                "/dev/vda (8589934592 bytes)".into(),
                "vda1 mounted on / (ext4)".into(),
            ],
            vec!["host name generic-vm".into(), "2 SSH keys of root".into()],
            vec!["root's key 2: options stripped: command=\"echo hi\"".into()],
            Some(plan),
        );
        let lines = summary(&report);
        assert_eq!(
            lines,
            [
                "Image: http://10.0.2.2/metal.raw.xz (verified by sha256 ba7816bf8f01cfea…; carried in memory)",
                "Will be destroyed: /dev/vda (8589934592 bytes); vda1 mounted on / (ext4)",
                "Will be carried over: host name generic-vm; 2 SSH keys of root",
                "Note: root's key 2: options stripped: command=\"echo hi\"",
                "Ready: `x2nestos convert` with the same arguments performs this plan.",
            ]
        );
        let blocked = Report::new(
            vec![Finding {
                severity: Severity::Blocking,
                code: "notRoot",
                message: "x2nestos must run as root".into(),
            }],
            vec![],
            vec![],
            vec![],
            None,
        );
        let lines = summary(&blocked);
        assert!(blocked.blocked);
        assert_eq!(lines[0], "Will be destroyed: (no disk planned)");
        assert_eq!(lines[2], "BLOCKED: x2nestos must run as root");
        assert!(lines[3].starts_with("Nothing was changed"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["kind"], "PlanReport");
        assert_eq!(json["plan"]["image"]["carry"], "inMemory");
        assert_eq!(json["plan"]["disk"]["sizeBytes"], 8u64 << 30);
        let back: ConversionPlan = serde_json::from_value(json["plan"].clone()).unwrap();
        assert_eq!(Some(back), report.plan);
    }
}
