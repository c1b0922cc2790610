//! Making a plan on the running machine, in two steps: [`gather`] reads every fact once —
//! the preflight facts and the /proc files below the facts root, the target disk, the image
//! (probed, hashed or its signature checked, a live image's boot entry read), the identity,
//! the network and the admin's Ignition config — and [`decide`] turns them into a
//! [`Report`] with the pure rooms ([`preflight`], [`plan`], [`ignition`]) and no I/O.
//!
//! Read-only: nothing here writes outside a temporary directory (a signature check) or
//! loads anything. Every problem becomes a finding, so one run shows all of them.
//!
//! Limits: the facts root (`--facts-root`, a fixture tree in tests) covers the kernel's facts
//! in /proc and /sys and the conversion kernel in /boot; the disk, the identity and the
//! network are always this machine's own (`/`), since tests point them at real loop devices.

use std::fs;
use std::path::{Path, PathBuf};

use super::disk::{self, Disk, Use};
use super::identity::{self, Gathered as IdentityGathered, IdentityOptions};
use super::ignition;
use super::image::verify::Sha256Sum;
use super::kargs::{self, Kargs};
use super::network::{self, keyfile, CaptureOptions, HostText};
use super::overlay::media::{self, Media};
use super::plan::{
    self, Carry, ConversionPlan, InstallLink, PlannedDisk, PlannedImage, PlannedLive, Report,
};
use super::preflight::{self, Facts, Finding, Severity};
use super::saved::{self, IndexRange};
use super::source::{self, ImageSource, Probe, Source, Timeouts};
use super::stream::{self, StreamChoice};

/// The admin's choices, shared by `plan` and `convert`.
#[derive(Debug, Clone)]
pub struct Options {
    pub disk: String,
    pub image: ImageSource,
    pub sha256: Option<String>,
    pub signature: Option<String>,
    pub keyring: Option<PathBuf>,
    /// The key the signature must be made with.
    pub fingerprint: Option<source::Fingerprint>,
    pub insecure: bool,
    pub stream: bool,
    pub ignition: Option<PathBuf>,
    pub identity: IdentityOptions,
    pub pin_dynamic: bool,
    /// Partitions of the disk to keep, by GPT name glob and by number or range.
    pub save_labels: Vec<String>,
    pub save_indexes: Vec<IndexRange>,
    /// The image chosen by stream: `image`, `sha256` and `signature` are then taken from
    /// the stream's document when the plan is made.
    pub stream_choice: Option<StreamChoice>,
    /// The new system's kernel arguments: appended, deleted, and its consoles (none: this
    /// machine's are carried).
    pub append_kargs: Vec<String>,
    pub delete_kargs: Vec<String>,
    pub consoles: Vec<String>,
    pub timeouts: Timeouts,
    /// Where /proc and /sys facts are read (`/`; a fixture tree in tests).
    pub facts_root: PathBuf,
}

/// A gathered plan, with what must not appear in the report.
pub struct Prepared {
    pub report: Report,
    pub facts: Facts,
    /// The Ignition config: secrets inside, never printed or logged.
    pub ignition: Option<String>,
    /// How long a download may wait for a connection or for data (`--stall-timeout`).
    pub timeouts: Timeouts,
    /// The image was hashed completely during planning (a file, or a signature check).
    pub verified_digest: Option<[u8; 32]>,
    /// The running kernel's image, the conversion kernel.
    pub kernel: PathBuf,
    pub release: String,
}

fn blocking(code: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        severity: Severity::Blocking,
        code,
        message: message.into(),
    }
}

fn warning(code: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        severity: Severity::Warning,
        code,
        message: message.into(),
    }
}

/// Gathers everything and decides the plan. With a stream chosen, its document is read
/// first and names the image, its sha256 and (checked when a keyring is given) signature;
/// a stream that cannot be read or has no image for this machine blocks the plan.
pub fn prepare(opts: &Options) -> Prepared {
    let Some(choice) = &opts.stream_choice else {
        return decide(opts, gather(opts));
    };
    let arch = fs::read_to_string(opts.facts_root.join("proc/sys/kernel/arch"))
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|_| std::env::consts::ARCH.to_owned());
    let sector_size = disk::resolve(Path::new("/"), &opts.disk)
        .map(|d| d.logical_sector_size)
        .unwrap_or(512);
    let picked = stream::fetch(choice, opts.timeouts)
        .and_then(|doc| stream::pick(&doc, &arch, sector_size, choice.version.as_deref()));
    match picked {
        Ok(picked) => {
            let mut resolved = opts.clone();
            resolved.image = ImageSource::Metal(Source::Url(picked.location.clone()));
            resolved.sha256 = Some(picked.sha256.clone());
            if resolved.keyring.is_some() {
                resolved.signature = picked.signature.clone();
            }
            let mut prepared = decide(&resolved, gather(&resolved));
            let notes = &mut prepared.report.notes;
            notes.insert(0, picked.why);
            if let (Some(sig), None) = (&picked.signature, &opts.keyring) {
                notes.insert(
                    1,
                    format!("the stream publishes a signature ({sig}); give --keyring FILE to check it beside the sha256"),
                );
            }
            prepared
        }
        Err(e) => Prepared {
            report: Report::new(
                vec![blocking("stream", e.to_string())],
                Vec::new(),
                Vec::new(),
                Vec::new(),
                None,
            ),
            facts: preflight::gather(&opts.facts_root),
            ignition: None,
            timeouts: opts.timeouts,
            verified_digest: None,
            kernel: PathBuf::new(),
            release: String::new(),
        },
    }
}

/// Everything a plan is made from, as read from the machine and the image.
pub struct Gathered {
    /// The preflight facts from the facts root (disk, memory and image figures are decided).
    pub facts: Facts,
    /// The named disk (its mark read), or why it cannot be one.
    pub disk: Result<Disk, disk::Refusal>,
    /// Why the named disk's first MiB could not be read, if it could not.
    pub mark_error: Option<String>,
    /// The other disks of the named disk's size and serial, their marks read: the installer
    /// must be able to tell it from each ([`plan::confusable`]).
    pub lookalikes: Vec<Disk>,
    /// `/proc/self/mountinfo` and `/proc/swaps`: what else lives on the disk.
    pub mountinfo: String,
    pub swaps: String,
    /// The running kernel's release, and its image (the conversion kernel) in /boot.
    pub release: String,
    pub kernel: PathBuf,
    pub kernel_present: bool,
    /// Where dracut is, which builds the conversion initramfs.
    pub dracut: Option<PathBuf>,
    pub image: ImageFacts,
    pub carried: CarriedFacts,
    /// The disk's partition table and what its partitions hold, read only when partitions
    /// are to be kept.
    pub saved: Option<Result<SavedFacts, String>>,
    /// The running kernel's command line (`proc/cmdline`): its consoles are carried.
    pub cmdline: String,
}

/// The target disk's primary GPT (`None`: it has none) and the file system each partition
/// holds, by number.
pub struct SavedFacts {
    pub table: Option<saved::Table>,
    pub file_systems: std::collections::BTreeMap<u32, String>,
}

/// Bytes read from each partition's start to tell its file system (btrfs's magic is at
/// 64 KiB + 64).
const SUPERBLOCK_BYTES: usize = 68 * 1024;

/// Reads the disk's first MiB and each partition's first bytes (read-only).
fn read_saved_facts(disk: &Disk) -> Result<SavedFacts, String> {
    use std::os::unix::fs::FileExt as _;
    let path = format!("/dev/{}", disk.name);
    let file = fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    let mut head = vec![0u8; (1 << 20).min(disk.size_bytes as usize)];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| format!("reading the partition table of {path}: {e}"))?;
    let ss = disk.logical_sector_size;
    let table = saved::read_table(&head, ss);
    let mut file_systems = std::collections::BTreeMap::new();
    for e in table.iter().flat_map(|t| &t.entries) {
        let mut sb = vec![0u8; SUPERBLOCK_BYTES];
        let at = e.first_lba() * u64::from(ss);
        if file.read_exact_at(&mut sb, at).is_ok() {
            if let Some(fs) = saved::file_system(&sb) {
                file_systems.insert(e.number, fs.to_owned());
            }
        }
    }
    Ok(SavedFacts {
        table,
        file_systems,
    })
}

/// What the new system's Ignition config is made from.
pub struct CarriedFacts {
    /// The admin's Ignition config as read (or why it could not be), when one was named.
    pub admin_ignition: Option<Result<String, String>>,
    pub identity: Result<IdentityGathered, String>,
    /// The running network's text (`ip -json`, resolv.conf) and NetworkManager's keyfiles.
    pub network: Result<HostText, String>,
    pub existing_keyfiles: Option<Vec<(String, String)>>,
}

/// What was learnt about the image.
pub struct ImageFacts {
    /// `--live` names a directory: an extracted live tree.
    pub live_tree: bool,
    /// Format and sizes; `None` for a live tree, which is not probed.
    pub probe: Option<Result<Probe, String>>,
    /// The whole image read once while planning (a signature check, or a local file hashed):
    /// its digest, or the finding's code and message.
    pub pass: Option<Result<[u8; 32], (&'static str, String)>>,
    /// A live image's boot entry and what the jump loads.
    pub live: Option<Result<PlannedLive, String>>,
}

/// Reads every fact a plan needs. The image is read whole only when the plan will use the
/// digest: a signature to check, or a local file whose checksum matters.
pub fn gather(opts: &Options) -> Gathered {
    let root = &opts.facts_root;
    let read = |rel: &str| fs::read_to_string(root.join(rel)).unwrap_or_default();
    let machine = Path::new("/");
    let mut disk = disk::resolve(machine, &opts.disk);
    let mut mark_error = None;
    let mut lookalikes = Vec::new();
    if let Ok(d) = &mut disk {
        match disk::read_mark(machine, d) {
            Ok(m) => d.mark = Some(m),
            Err(e) => mark_error = Some(format!("reading /dev/{}'s first MiB: {e}", d.name)),
        }
        lookalikes = disk::all(machine)
            .into_iter()
            .filter(|o| o.name != d.name && o.size_bytes == d.size_bytes && o.serial == d.serial)
            .map(|mut o| {
                o.mark = disk::read_mark(machine, &o).ok();
                o
            })
            .collect();
    }
    let cmdline = read("proc/cmdline");
    let release = read("proc/sys/kernel/osrelease").trim().to_owned();
    let kernel = root.join(format!("boot/vmlinuz-{release}"));
    let saved = match &disk {
        Ok(d) if !opts.save_labels.is_empty() || !opts.save_indexes.is_empty() => {
            Some(read_saved_facts(d))
        }
        _ => None,
    };
    Gathered {
        facts: preflight::gather(root),
        mountinfo: if disk.is_ok() {
            read("proc/self/mountinfo")
        } else {
            String::new()
        },
        swaps: if disk.is_ok() {
            read("proc/swaps")
        } else {
            String::new()
        },
        image: gather_image(opts, disk.as_ref().ok(), &cmdline),
        disk,
        mark_error,
        lookalikes,
        kernel_present: kernel.exists(),
        kernel,
        release,
        dracut: which("dracut"),
        saved,
        cmdline: cmdline.clone(),
        carried: CarriedFacts {
            admin_ignition: opts
                .ignition
                .as_ref()
                .map(|path| fs::read_to_string(path).map_err(|e| e.to_string())),
            identity: identity::gather(machine, &opts.identity).map_err(|e| e.to_string()),
            network: network::read_host(machine).map_err(|e| e.to_string()),
            existing_keyfiles: keyfile::read_existing(machine).ok().flatten(),
        },
    }
}

fn gather_image(opts: &Options, disk: Option<&Disk>, cmdline: &str) -> ImageFacts {
    let source = opts.image.source();
    let live_tree = opts.image.is_live_tree();
    let probe =
        (!live_tree).then(|| source::probe(source, opts.timeouts).map_err(|e| e.to_string()));
    let verification = plan::verification(
        opts.sha256.as_deref(),
        opts.signature.is_some(),
        opts.keyring.is_some(),
        opts.insecure,
    );
    let pass = match (&probe, &verification) {
        (Some(Ok(_)), Ok(v)) => match (&opts.signature, &opts.keyring) {
            (Some(sig), Some(keyring)) => Some(
                Source::parse(sig)
                    .and_then(|sig| {
                        source::check_signature(
                            source,
                            &sig,
                            keyring,
                            opts.fingerprint.as_ref(),
                            opts.timeouts,
                        )
                        .map_err(|e| e.to_string())
                    })
                    .map_err(|e| ("signature", e)),
            ),
            _ if !source.is_url() && !v.insecure => Some(
                source::digest(source, opts.timeouts)
                    .map(|(d, _)| d)
                    .map_err(|e| ("imageUnreachable", e.to_string())),
            ),
            _ => None,
        },
        _ => None,
    };
    let live = match &opts.image {
        ImageSource::Live(s) => {
            Some(read_live(s, opts.timeouts, disk, cmdline).map_err(|e| format!("{e:#}")))
        }
        ImageSource::Metal(_) => None,
    };
    ImageFacts {
        live_tree,
        probe,
        pass,
        live,
    }
}

/// Decides the plan from what was gathered: no I/O.
pub fn decide(opts: &Options, g: Gathered) -> Prepared {
    let mut facts = g.facts;
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let mut carried_over = Vec::new();
    let mut destroyed = Vec::new();

    // The disk.
    let disk = match g.disk {
        Ok(disk) => {
            let uses: Vec<Use> = disk::uses(&disk, &g.mountinfo, &g.swaps);
            if let Err(e) = disk::check_in_use(&disk, &uses) {
                facts.disk_refusal = Some(e.to_string());
            }
            if let Some(e) = &g.mark_error {
                findings.push(blocking(
                    "disk-identity",
                    format!("{e}; the installer re-checks it after kexec, so it must be readable"),
                ));
            }
            let alike = plan::confusable(&disk, &g.lookalikes);
            if !alike.is_empty() {
                let names: Vec<String> = alike.iter().map(|d| format!("/dev/{}", d.name)).collect();
                findings.push(blocking(
                    "disk-identity",
                    format!(
                        "/dev/{} cannot be told apart from {} after kexec (same size, no serial, no by-id or by-path name, the same first MiB); write a partition table on the target first (sgdisk -o /dev/{}) or detach the others",
                        disk.name,
                        names.join(", "),
                        disk.name
                    ),
                ));
            }
            facts.disk_size = Some(disk.size_bytes);
            destroyed.extend(disk::describe(&disk, &uses));
            Some(disk)
        }
        Err(e) => {
            facts.disk_refusal = Some(e.to_string());
            None
        }
    };

    // The image, and how it is verified.
    let verification = plan::verification(
        opts.sha256.as_deref(),
        opts.signature.is_some(),
        opts.keyring.is_some(),
        opts.insecure,
    );
    let verification = match verification {
        Ok(v) => Some(v),
        Err(e) => {
            findings.push(blocking("verification", e));
            None
        }
    };
    if verification.as_ref().is_some_and(|v| v.insecure) {
        findings.push(warning(
            "insecure",
            "--insecure: the image will be written UNVERIFIED; a corrupted or substituted image would be installed as is",
        ));
    }
    let source = opts.image.source();
    let live = opts.image.is_live();
    if let ImageSource::Live(Source::File(path)) = &opts.image {
        if let Err(e) = media::check_verifiable(path, g.image.live_tree, opts.insecure) {
            findings.push(blocking("verification", e.to_string()));
        }
    }
    let probe = match g.image.probe {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            findings.push(blocking("imageUnreachable", e));
            None
        }
        None => None,
    };
    let digest = match g.image.pass {
        Some(Ok(d)) => Some(d),
        Some(Err((code, e))) => {
            findings.push(blocking(code, e));
            None
        }
        None => None,
    };
    let mut expected = verification.as_ref().and_then(|v| v.sha256);
    if let Some(d) = digest {
        if let Err(e) = source::check_digest(expected.map(Sha256Sum::bytes), d) {
            findings.push(blocking("checksum", e.to_string()));
        }
        expected = expected.or(Some(d.into()));
    }
    let carry = plan::carry(
        source.is_url(),
        opts.stream,
        probe.and_then(|p| p.length),
        facts.mem_available,
    );
    facts.memory_needed = plan::memory_needed(carry, probe.and_then(|p| p.length));
    facts.image_size = probe.and_then(|p| p.image_bytes);
    let planned_live = match g.image.live {
        Some(Ok(planned)) => {
            facts.memory_needed = plan::live_memory_needed(planned.load_bytes);
            facts.image_size = None;
            facts.live_kernel = Some(planned.kernel_signature);
            Some(planned)
        }
        Some(Err(e)) => {
            findings.push(blocking("liveImage", e));
            None
        }
        None => None,
    };
    if let Some(p) = probe.filter(|_| !live) {
        if p.image_bytes.is_none() {
            notes.push(format!(
                "the {} image's decompressed size cannot be told beforehand; the installer checks that it fits while writing",
                p.format
            ));
        }
    }

    // The identity and the Ignition config.
    let (ignition, links) = identity_and_ignition(
        opts,
        g.carried,
        &mut findings,
        &mut notes,
        &mut carried_over,
    );

    // The conversion kernel and the tools that build its initramfs.
    if !live && !g.kernel_present {
        findings.push(blocking(
            "kernel",
            format!(
                "the running kernel's image {} is missing, and the conversion boots it; reinstall the kernel package of {}",
                g.kernel.display(),
                g.release
            ),
        ));
    }
    if !live && g.dracut.is_none() {
        findings.push(blocking(
            "dracut",
            "dracut is not installed; it builds the conversion initramfs: apt-get install dracut (or dnf install dracut)",
        ));
    }

    let (kept, kept_lines) = decide_saved(
        opts,
        disk.as_ref(),
        g.saved,
        probe.and_then(|p| p.image_bytes).filter(|_| !live),
        &mut findings,
        &mut notes,
    );

    let kargs = if live {
        if !opts.append_kargs.is_empty()
            || !opts.delete_kargs.is_empty()
            || !opts.consoles.is_empty()
        {
            findings.push(blocking(
                "kargs",
                "--append-karg/--delete-karg/--console work with --image only, not yet with --live; convert with --image",
            ));
        }
        Kargs::default()
    } else {
        kargs::decide(
            &opts.append_kargs,
            &opts.delete_kargs,
            &opts.consoles,
            &g.cmdline,
        )
    };
    notes.extend(kargs::describe(&kargs));

    findings.extend(preflight::evaluate(&facts));
    findings.sort_by_key(|f| f.severity != Severity::Blocking);

    let plan = match (&disk, &verification) {
        (Some(d), Some(v)) if planned_live.is_some() || !live => Some(ConversionPlan {
            api_version: plan::API_VERSION.into(),
            kind: "Plan".into(),
            disk: PlannedDisk::of(&opts.disk, d),
            image: PlannedImage {
                source: source.clone(),
                sha256: expected,
                signed: v.signed,
                insecure: v.insecure,
                compressed_bytes: probe.and_then(|p| p.length),
                image_bytes: probe.and_then(|p| p.image_bytes),
                carry,
                carried: None,
                stall_seconds: Some(opts.timeouts.stall.as_secs()),
            },
            network: if live { Vec::new() } else { links },
            live: planned_live,
            saved: kept,
            kargs,
        }),
        _ => None,
    };
    let mut report = Report::new(findings, destroyed, carried_over, notes, plan);
    report.kept = kept_lines;
    Prepared {
        report,
        facts,
        ignition,
        timeouts: opts.timeouts,
        verified_digest: digest,
        kernel: g.kernel,
        release: g.release,
    }
}

/// Which partitions are kept, from the filters and the disk's table: a filter naming no
/// partition is warned about, a kept partition inside the image's space refused.
fn decide_saved(
    opts: &Options,
    disk: Option<&Disk>,
    facts: Option<Result<SavedFacts, String>>,
    image_bytes: Option<u64>,
    findings: &mut Vec<Finding>,
    notes: &mut Vec<String>,
) -> (Vec<saved::SavedPartition>, Vec<String>) {
    if opts.save_labels.is_empty() && opts.save_indexes.is_empty() {
        return (Vec::new(), Vec::new());
    }
    if opts.image.is_live() {
        findings.push(blocking(
            "savedPartition",
            "--save-partlabel/--save-partindex work with --image only, not yet with --live; convert with --image",
        ));
        return (Vec::new(), Vec::new());
    }
    let (Some(disk), Some(facts)) = (disk, facts) else {
        return (Vec::new(), Vec::new());
    };
    let facts = match facts {
        Ok(f) => f,
        Err(e) => {
            findings.push(blocking("savedPartition", e));
            return (Vec::new(), Vec::new());
        }
    };
    let Some(table) = facts.table else {
        findings.push(blocking(
            "savedPartition",
            saved::SaveError::NoGpt {
                disk: format!("/dev/{}", disk.name),
            }
            .to_string(),
        ));
        return (Vec::new(), Vec::new());
    };
    let ss = disk.logical_sector_size;
    let selection = saved::select(&table, ss, &opts.save_labels, &opts.save_indexes, &|n| {
        facts.file_systems.get(&n).cloned()
    });
    for filter in &selection.unmatched {
        findings.push(warning(
            "savedUnmatched",
            format!(
                "{filter} matches no partition on /dev/{}; nothing is kept for it",
                disk.name
            ),
        ));
    }
    match image_bytes {
        Some(bytes) => {
            if let Err(e) = saved::check_room(&selection.kept, ss, bytes) {
                findings.push(blocking("savedPartition", e.to_string()));
            }
        }
        None if !selection.kept.is_empty() => notes.push(
            "the image's size is not known beforehand: the installer stops writing before the first kept partition, which is never written".into(),
        ),
        None => {}
    }
    let lines = selection.kept.iter().map(plan::describe_saved).collect();
    (selection.kept, lines)
}

/// Reads the live image's default entry and the kernel command line of the jump: the
/// entry's arguments with the install device (the disk's stable name), and this machine's
/// console (from its command line, `cmdline`).
fn read_live(
    source: &Source,
    timeouts: Timeouts,
    disk: Option<&Disk>,
    cmdline: &str,
) -> anyhow::Result<PlannedLive> {
    let media = match source {
        Source::File(path) => Media::open(path)?,
        Source::Url(url) => Media::open_url(url, timeouts)?,
    };
    let boot = media.boot()?;
    let dest = disk.map_or_else(String::new, |d| {
        d.by_id
            .first()
            .cloned()
            .unwrap_or_else(|| format!("/dev/{}", d.name))
    });
    let console = plan::console_args(cmdline);
    Ok(PlannedLive {
        entry: boot.source.clone(),
        kernel: boot.kernel.clone(),
        initrds: boot.initrd_parts(media.tree())?,
        prefix: boot.prefix()?.as_str().to_owned(),
        args: boot.kexec_args(&dest, &console)?,
        load_bytes: media.load_bytes(&boot)?,
        kernel_signature: preflight::kernel_signature(&media.kernel_head(&boot)),
    })
}

fn identity_and_ignition(
    opts: &Options,
    facts: CarriedFacts,
    findings: &mut Vec<Finding>,
    notes: &mut Vec<String>,
    carried_over: &mut Vec<String>,
) -> (Option<String>, Vec<InstallLink>) {
    let CarriedFacts {
        admin_ignition,
        identity,
        network,
        existing_keyfiles,
    } = facts;
    let admin = match (&opts.ignition, admin_ignition) {
        (Some(path), Some(read)) => {
            match read.and_then(|text| ignition::parse_admin(&text).map_err(|e| e.to_string())) {
                Ok(config) => Some(config),
                Err(e) => {
                    findings.push(blocking(
                        "ignition",
                        format!("Ignition config {}: {e}", path.display()),
                    ));
                    return (None, Vec::new());
                }
            }
        }
        _ => None,
    };
    let mut gathered = match identity {
        Ok(g) => g,
        Err(e) => {
            findings.push(blocking("identity", e));
            return (None, Vec::new());
        }
    };
    // The new system gets the network as configured (DHCP asked again); the installer, which
    // runs minutes later on the same lease, brings the links up with the addresses they have.
    let captured = network.and_then(|text| {
        let installer = network::capture(&text, CaptureOptions { pin_dynamic: true })
            .map_err(|e| e.to_string())?;
        let carried = network::capture(
            &text,
            CaptureOptions {
                pin_dynamic: opts.pin_dynamic,
            },
        )
        .map_err(|e| e.to_string())?;
        Ok((carried, installer))
    });
    let links = match captured {
        Ok((capture, installer)) => {
            let keyfiles = keyfile::keyfiles(&capture, existing_keyfiles.as_deref());
            for iface in &capture.interfaces {
                let addrs: Vec<String> = iface
                    .ipv4
                    .addresses
                    .iter()
                    .chain(&iface.ipv6.addresses)
                    .map(|a| format!("{}/{}", a.ip, a.prefix))
                    .collect();
                carried_over.push(format!(
                    "network {} ({}): IPv4 {}{}",
                    iface.name,
                    iface.mac,
                    iface.ipv4.method.keyfile_word(),
                    if addrs.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", addrs.join(", "))
                    }
                ));
            }
            notes.extend(
                capture
                    .left_out
                    .iter()
                    .map(|l| format!("network {}: {}", l.name, l.reason)),
            );
            notes.extend(capture.notes.iter().cloned());
            notes.extend(keyfiles.notes);
            gathered.identity.keyfiles = keyfiles.files;
            plan::install_links(&installer)
        }
        Err(e) => {
            findings.push(warning(
                "network",
                format!("the network could not be read ({e}); the new system starts with NestOS's defaults"),
            ));
            Vec::new()
        }
    };
    describe_identity(&gathered, notes, carried_over);
    match ignition::render(&gathered.identity, admin.as_ref()) {
        Ok(rendered) => {
            notes.extend(rendered.notes.iter().cloned());
            if opts.ignition.is_some() {
                carried_over.push("the admin's Ignition config, merged".into());
            }
            (Some(rendered.to_json()), links)
        }
        Err(e) => {
            findings.push(blocking(
                "ignition",
                format!("the Ignition config cannot be built: {e}"),
            ));
            (None, links)
        }
    }
}

fn describe_identity(
    g: &IdentityGathered,
    notes: &mut Vec<String>,
    carried_over: &mut Vec<String>,
) {
    let id = &g.identity;
    if let Some(name) = &id.hostname {
        carried_over.push(format!("host name {name}"));
    }
    for user in &id.users {
        carried_over.push(format!("{} SSH key(s) of {}", user.keys.len(), user.name));
    }
    if !id.host_keys.is_empty() {
        carried_over.push(format!("{} SSH host key file(s)", id.host_keys.len()));
    }
    if let Some(zone) = &id.timezone {
        carried_over.push(format!("time zone {zone}"));
    }
    for file in &id.files {
        carried_over.push(format!("file {}", file.path));
    }
    for s in &g.stripped {
        notes.push(format!(
            "{}:{}: options stripped from {}'s key: {}",
            s.file,
            s.line,
            s.user,
            s.options.join(",")
        ));
    }
    for s in &g.skipped {
        notes.push(format!("{}:{}: not carried: {}", s.file, s.line, s.reason));
    }
    notes.extend(g.notes.iter().cloned());
}

/// The first executable `name` on PATH (or in the sbin directories root's PATH has).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// Whether the plan streams its image.
pub fn streams(plan: &ConversionPlan) -> bool {
    plan.image.carry == Carry::Stream
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::image::format::Format;
    use crate::convert::preflight::Signature;

    const MIB: u64 = 1 << 20;
    const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn options(image: ImageSource) -> Options {
        Options {
            disk: "/dev/disk/by-id/virtio-S1".into(),
            image,
            sha256: Some(SHA.into()),
            signature: None,
            keyring: None,
            fingerprint: None,
            insecure: false,
            stream: false,
            ignition: None,
            identity: IdentityOptions::default(),
            pin_dynamic: false,
            save_labels: vec![],
            save_indexes: vec![],
            stream_choice: None,
            append_kargs: vec![],
            delete_kargs: vec![],
            consoles: vec![],
            timeouts: Timeouts::default(),
            facts_root: "/".into(),
        }
    }

    fn metal_file() -> ImageSource {
        ImageSource::Metal(Source::File("/srv/metal.raw.xz".into()))
    }

    /// A machine where everything is fine but the network, which could not be read.
    fn gathered() -> Gathered {
        Gathered {
            facts: Facts {
                euid: 0,
                arch: "x86_64".into(),
                kexec_core: true,
                kexec_file_load: Some(true),
                kexec_load: Some(true),
                lockdown: Some("none".into()),
                secure_boot: Some(false),
                mem_available: 4096 * MIB,
                ..Facts::default()
            },
            disk: Ok(Disk {
                name: "vda".into(),
                dev: "253:0".into(),
                by_id: vec!["/dev/disk/by-id/virtio-S1".into()],
                by_path: vec![],
                serial: Some("S1".into()),
                size_bytes: 8 << 30,
                logical_sector_size: 512,
                partitions: vec![],
                holders: vec![],
                mark: None,
            }),
            mark_error: None,
            lookalikes: vec![],
            mountinfo: String::new(),
            swaps: String::new(),
            release: "6.1.0-test".into(),
            kernel: "/boot/vmlinuz-6.1.0-test".into(),
            kernel_present: true,
            dracut: Some("/usr/bin/dracut".into()),
            image: ImageFacts {
                live_tree: false,
                probe: Some(Ok(Probe {
                    format: Format::Xz,
                    length: Some(100 * MIB),
                    image_bytes: Some(2 << 30),
                })),
                pass: Some(Ok(Sha256Sum::parse(SHA).unwrap().bytes())),
                live: None,
            },
            carried: CarriedFacts {
                admin_ignition: None,
                identity: Ok(IdentityGathered::default()),
                network: Err("`ip -json addr` failed".into()),
                existing_keyfiles: None,
            },
            saved: None,
            cmdline: "root=/dev/vda1 console=ttyS0,115200n8".into(),
        }
    }

    /// The disk's table: partition 1 "root" over most of it, 2 "data" (ext4) at 7 GiB.
    fn saved_facts() -> SavedFacts {
        let entry = |number: u32, name: &str, first: u64, last: u64| {
            let mut raw = [0u8; 128];
            raw[..16].fill(0x0f);
            raw[16..32].fill(number as u8);
            raw[32..40].copy_from_slice(&first.to_le_bytes());
            raw[40..48].copy_from_slice(&last.to_le_bytes());
            for (i, u) in name.encode_utf16().enumerate() {
                raw[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
            saved::Entry { number, raw }
        };
        let gib = (1u64 << 30) / 512;
        SavedFacts {
            table: Some(saved::Table {
                header: [0; 92],
                entries: vec![
                    entry(1, "root", 2048, 7 * gib - 1),
                    entry(2, "data", 7 * gib, 8 * gib - 34),
                ],
                count: 128,
                entry_size: 128,
            }),
            file_systems: [(2, "ext4".to_owned())].into(),
        }
    }

    #[test]
    fn kept_partitions_are_shown_and_carried_in_the_plan() {
        let mut opts = options(metal_file());
        opts.save_labels = vec!["dat*".into(), "home".into()];
        let mut g = gathered();
        g.saved = Some(Ok(saved_facts()));
        let prepared = decide(&opts, g);
        let report = &prepared.report;
        assert!(!report.blocked, "{:?}", report.findings);
        assert_eq!(
            report.kept,
            vec!["partition 2 \"data\" (1024 MiB, ext4)".to_owned()]
        );
        let plan = report.plan.as_ref().unwrap();
        assert_eq!(plan.saved.len(), 1);
        assert_eq!(plan.saved[0].first_lba, 7 << 21);
        let unmatched: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| f.code == "savedUnmatched")
            .map(|f| f.message.as_str())
            .collect();
        assert_eq!(
            unmatched,
            ["--save-partlabel \"home\" matches no partition on /dev/vda; nothing is kept for it"]
        );
        assert!(plan::summary(report)
            .contains(&"Will be kept: partition 2 \"data\" (1024 MiB, ext4)".to_owned()));
    }

    #[test]
    fn a_kept_partition_the_image_would_overwrite_is_refused() {
        let mut opts = options(metal_file());
        opts.save_indexes = vec![IndexRange::parse("1").unwrap()];
        let mut g = gathered();
        g.saved = Some(Ok(saved_facts()));
        let prepared = decide(&opts, g);
        assert!(prepared.report.blocked);
        let f = prepared
            .report
            .findings
            .iter()
            .find(|f| f.code == "savedPartition")
            .unwrap();
        assert_eq!(
            f.message,
            "saved partition 1 \"root\" lies in the first 2147483648 bytes, which the image writes; it would be overwritten: move the data off it or use a smaller image"
        );
        // No GPT on the disk: refused, naming it.
        let mut g = gathered();
        g.saved = Some(Ok(SavedFacts {
            table: None,
            file_systems: Default::default(),
        }));
        let prepared = decide(&opts, g);
        assert!(prepared.report.blocked);
        assert!(prepared.report.findings.iter().any(|f| f
            .message
            .starts_with("partitions can only be kept from a GPT disk, and /dev/vda has no GPT")));
    }

    fn codes(prepared: &Prepared) -> Vec<&'static str> {
        prepared.report.findings.iter().map(|f| f.code).collect()
    }

    #[test]
    fn a_verified_metal_file_is_planned_and_carried() {
        let prepared = decide(&options(metal_file()), gathered());
        let report = &prepared.report;
        assert!(!report.blocked, "{:?}", report.findings);
        assert_eq!(codes(&prepared), ["network"]);
        let plan = report.plan.as_ref().unwrap();
        assert_eq!(plan.image.source, Source::File("/srv/metal.raw.xz".into()));
        assert_eq!(plan.image.sha256, Some(Sha256Sum::parse(SHA).unwrap()));
        assert_eq!(
            plan.image.carry,
            Carry::InMemory,
            "a file is always carried"
        );
        assert_eq!(plan.image.image_bytes, Some(2 << 30));
        assert_eq!(plan.disk.serial.as_deref(), Some("S1"));
        assert!(plan.live.is_none());
        assert_eq!(prepared.facts.memory_needed, plan::BASE_MEMORY + 200 * MIB);
        assert_eq!(prepared.facts.disk_size, Some(8 << 30));
        assert!(prepared.verified_digest.is_some());
        assert!(prepared.ignition.is_some());
        assert!(report.destroyed[0].starts_with("/dev/vda (8589934592 bytes"));
    }

    #[test]
    fn a_digest_that_differs_from_the_checksum_blocks() {
        let mut g = gathered();
        g.image.pass = Some(Ok([0; 32]));
        let prepared = decide(&options(metal_file()), g);
        assert!(prepared.report.blocked);
        let finding = &prepared.report.findings[0];
        assert_eq!(finding.code, "checksum");
        assert!(
            finding.message.starts_with(&format!(
                "image checksum mismatch: expected sha256 {SHA}, got 0000"
            )),
            "{}",
            finding.message
        );
    }

    #[test]
    fn without_a_checksum_the_digest_of_the_pass_is_planned() {
        let mut opts = options(metal_file());
        opts.sha256 = None;
        opts.signature = Some("/srv/metal.raw.xz.sig".into());
        opts.keyring = Some("/srv/keys.gpg".into());
        let prepared = decide(&opts, gathered());
        let image = &prepared.report.plan.as_ref().unwrap().image;
        assert!(image.signed);
        assert_eq!(image.sha256, Some(Sha256Sum::parse(SHA).unwrap()));
    }

    #[test]
    fn every_problem_shows_at_once() {
        let mut g = gathered();
        g.disk = Err(disk::Refusal::NotFound("/dev/vdz".into()));
        g.kernel_present = false;
        g.dracut = None;
        g.image.probe = Some(Err("GET http://x/y: the server answered 404".into()));
        g.image.pass = None;
        let mut opts = options(ImageSource::Metal(Source::Url("http://x/y".into())));
        opts.sha256 = Some("not-hex".into());
        let prepared = decide(&opts, g);
        let mut found = codes(&prepared);
        found.sort();
        assert_eq!(
            found,
            [
                "disk",
                "dracut",
                "imageUnreachable",
                "kernel",
                "network",
                "verification"
            ]
        );
        assert_eq!(
            prepared.report.findings.last().unwrap().code,
            "network",
            "warnings after what blocks"
        );
        assert!(prepared.report.plan.is_none());
        assert!(prepared.report.destroyed.is_empty());
    }

    #[test]
    fn a_live_tree_needs_insecure_and_no_conversion_kernel() {
        let live = PlannedLive {
            entry: "isolinux/isolinux.cfg".into(),
            kernel: "images/pxeboot/vmlinuz".into(),
            initrds: vec!["images/pxeboot/initrd.img".into()],
            prefix: "nestos.".into(),
            args: vec!["nestos.inst.install_dev=/dev/disk/by-id/virtio-S1".into()],
            load_bytes: 100 * MIB,
            kernel_signature: Signature::Signed,
        };
        let mut g = gathered();
        g.dracut = None;
        g.kernel_present = false;
        g.image = ImageFacts {
            live_tree: true,
            probe: None,
            pass: None,
            live: Some(Ok(live.clone())),
        };
        let tree = ImageSource::Live(Source::File("/srv/live".into()));
        let mut opts = options(tree.clone());
        opts.sha256 = None;
        opts.insecure = true;
        let prepared = decide(&opts, g);
        assert!(!prepared.report.blocked, "{:?}", prepared.report.findings);
        let plan = prepared.report.plan.as_ref().unwrap();
        assert_eq!(plan.live.as_ref(), Some(&live));
        assert!(plan.image.insecure);
        assert_eq!(
            prepared.facts.memory_needed,
            plan::live_memory_needed(100 * MIB)
        );
        assert_eq!(prepared.facts.live_kernel, Some(Signature::Signed));

        let mut g = gathered();
        g.image.live_tree = true;
        g.image.live = Some(Ok(live));
        let mut opts = options(tree);
        opts.sha256 = None;
        opts.signature = None;
        opts.insecure = false;
        let prepared = decide(&opts, g);
        assert!(prepared.report.blocked);
        assert!(prepared
            .report
            .findings
            .iter()
            .any(|f| f.message.contains("a directory cannot be checked")));
    }

    #[test]
    fn an_unreadable_admin_config_carries_nothing() {
        let mut opts = options(metal_file());
        opts.ignition = Some("/srv/extra.ign".into());
        let mut g = gathered();
        g.carried.admin_ignition = Some(Err("No such file or directory (os error 2)".into()));
        let prepared = decide(&opts, g);
        assert_eq!(
            prepared.report.findings[0].message,
            "Ignition config /srv/extra.ign: No such file or directory (os error 2)"
        );
        assert!(prepared.ignition.is_none());
        assert!(prepared.report.carried_over.is_empty());
    }
}
