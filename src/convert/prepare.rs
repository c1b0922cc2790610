//! Gathering a plan on the running machine: the preflight facts, the target disk, the image
//! source, the identity and the Ignition config, turned into a [`Report`] by the pure rooms
//! ([`preflight`], [`plan`], [`ignition`]).
//!
//! Read-only: nothing here writes outside a temporary directory (a signature check) or
//! loads anything. Every problem becomes a finding, so one run shows all of them.

use std::fs;
use std::path::{Path, PathBuf};

use super::disk::{self, Disk, Use};
use super::identity::{self, Gathered, IdentityOptions};
use super::ignition;
use super::image::verify::parse_sha256;
use super::network::{self, keyfile, CaptureOptions};
use super::overlay::media::{self, Media};
use super::plan::{self, Carry, InstallLink, Plan, PlannedDisk, PlannedImage, PlannedLive, Report};
use super::preflight::{self, Facts, Finding, Severity};
use super::source::{self, Source, Timeouts};

/// The admin's choices, shared by `plan` and `convert`.
#[derive(Debug, Clone)]
pub struct Options {
    pub disk: String,
    /// The metal image, or with `live` the live ISO file / tree.
    pub image: String,
    /// The live ISO / PXE path: `image` is a NestOS live ISO (or its extracted tree) to boot.
    pub live: bool,
    pub sha256: Option<String>,
    pub signature: Option<String>,
    pub keyring: Option<PathBuf>,
    pub insecure: bool,
    pub stream: bool,
    pub ignition: Option<PathBuf>,
    pub identity: IdentityOptions,
    pub pin_dynamic: bool,
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
    /// The image source, when it parsed.
    pub source: Option<Source>,
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

/// Gathers everything and decides the plan.
pub fn prepare(opts: &Options) -> Prepared {
    let mut facts = preflight::gather(&opts.facts_root);
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let mut carried_over = Vec::new();
    let mut destroyed = Vec::new();

    // The disk.
    let disk = resolve_disk(&opts.disk, &mut facts, &mut destroyed);

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
    let source = match Source::parse(&opts.image) {
        Ok(s) => Some(s),
        Err(e) => {
            findings.push(blocking("imageSource", e));
            None
        }
    };
    let live_tree = opts.live && Path::new(&opts.image).is_dir();
    if opts.live {
        if let Err(e) = media::check_verifiable(Path::new(&opts.image), opts.insecure) {
            findings.push(blocking("verification", e.to_string()));
        }
    }
    let probe = source.as_ref().filter(|_| !live_tree).and_then(|s| {
        match source::probe(s, opts.timeouts) {
            Ok(p) => Some(p),
            Err(e) => {
                findings.push(blocking("imageUnreachable", e.to_string()));
                None
            }
        }
    });
    let mut digest = None;
    let mut expected = verification.as_ref().and_then(|v| v.sha256);
    if let (Some(s), Some(_), Some(v)) = (&source, &probe, &verification) {
        if let (Some(sig), Some(keyring)) = (&opts.signature, &opts.keyring) {
            match Source::parse(sig).and_then(|sig| {
                source::check_signature(s, &sig, keyring, opts.timeouts).map_err(|e| e.to_string())
            }) {
                Ok(d) => digest = Some(d),
                Err(e) => findings.push(blocking("signature", e)),
            }
        } else if !s.is_url() && !v.insecure {
            match source::digest(s, opts.timeouts) {
                Ok((d, _)) => digest = Some(d),
                Err(e) => findings.push(blocking("imageUnreachable", e.to_string())),
            }
        }
        if let Some(d) = digest {
            if let Err(e) = source::check_digest(expected, d) {
                findings.push(blocking("checksum", e.to_string()));
            }
            expected = expected.or(Some(d));
        }
    }
    let carry = plan::carry(
        source.as_ref().is_some_and(Source::is_url),
        opts.stream,
        probe.and_then(|p| p.length),
        facts.mem_available,
    );
    facts.memory_needed = plan::memory_needed(carry, probe.and_then(|p| p.length));
    facts.image_size = probe.and_then(|p| p.image_bytes);
    let live = match (opts.live, &source) {
        (true, Some(s)) => match read_live(s, opts.timeouts, disk.as_ref()) {
            Ok(live) => {
                facts.memory_needed = plan::live_memory_needed(live.load_bytes);
                facts.image_size = None;
                facts.live_kernel = Some(live.kernel_signature);
                Some(live)
            }
            Err(e) => {
                findings.push(blocking("liveImage", format!("{e:#}")));
                None
            }
        },
        _ => None,
    };
    if let Some(p) = probe.filter(|_| !opts.live) {
        if p.image_bytes.is_none() {
            notes.push(format!(
                "the {} image's decompressed size cannot be told beforehand; the installer checks that it fits while writing",
                p.format
            ));
        }
    }

    // The identity and the Ignition config.
    let (ignition, links) =
        identity_and_ignition(opts, &mut findings, &mut notes, &mut carried_over);

    // The conversion kernel and the tools that build its initramfs.
    let release = fs::read_to_string(opts.facts_root.join("proc/sys/kernel/osrelease"))
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    let kernel = opts.facts_root.join(format!("boot/vmlinuz-{release}"));
    if !opts.live && !kernel.exists() {
        findings.push(blocking(
            "kernel",
            format!(
                "the running kernel's image {} is missing, and the conversion boots it; reinstall the kernel package of {release}",
                kernel.display()
            ),
        ));
    }
    if !opts.live && which("dracut").is_none() {
        findings.push(blocking(
            "dracut",
            "dracut is not installed; it builds the conversion initramfs: apt-get install dracut (or dnf install dracut)",
        ));
    }

    findings.extend(preflight::evaluate(&facts));
    findings.sort_by_key(|f| f.severity != Severity::Blocking);

    let plan = match (&disk, &source, &verification) {
        (Some(d), Some(s), Some(v)) if live.is_some() || !opts.live => Some(Plan {
            api_version: plan::API_VERSION.into(),
            kind: "Plan".into(),
            disk: PlannedDisk::of(&opts.disk, d),
            image: PlannedImage {
                source: s.to_string(),
                sha256: expected.map(hex::encode),
                signed: v.signed,
                insecure: v.insecure,
                compressed_bytes: probe.and_then(|p| p.length),
                image_bytes: probe.and_then(|p| p.image_bytes),
                carry,
                carried: None,
                stall_seconds: Some(opts.timeouts.stall.as_secs()),
            },
            network: if opts.live { Vec::new() } else { links },
            live,
        }),
        _ => None,
    };
    Prepared {
        report: Report::new(findings, destroyed, carried_over, notes, plan),
        facts,
        ignition,
        source,
        timeouts: opts.timeouts,
        verified_digest: digest,
        kernel,
        release,
    }
}

/// Reads the live image's default entry and the kernel command line of the jump: the
/// entry's arguments with the install device (the disk's stable name), and this machine's
/// console.
fn read_live(
    source: &Source,
    timeouts: Timeouts,
    disk: Option<&Disk>,
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
    let console = plan::console_args(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
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

fn resolve_disk(named: &str, facts: &mut Facts, destroyed: &mut Vec<String>) -> Option<Disk> {
    let disk = match disk::resolve(Path::new("/"), named) {
        Ok(d) => d,
        Err(e) => {
            facts.disk_refusal = Some(e.to_string());
            return None;
        }
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    let uses: Vec<Use> = disk::uses(&disk, &mountinfo, &swaps);
    if let Err(e) = disk::check_in_use(&disk, &uses) {
        facts.disk_refusal = Some(e.to_string());
    }
    facts.disk_size = Some(disk.size_bytes);
    destroyed.extend(disk::describe(&disk, &uses));
    Some(disk)
}

fn identity_and_ignition(
    opts: &Options,
    findings: &mut Vec<Finding>,
    notes: &mut Vec<String>,
    carried_over: &mut Vec<String>,
) -> (Option<String>, Vec<InstallLink>) {
    let admin = match &opts.ignition {
        None => None,
        Some(path) => match fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| ignition::parse_admin(&text).map_err(|e| e.to_string()))
        {
            Ok(config) => Some(config),
            Err(e) => {
                findings.push(blocking(
                    "ignition",
                    format!("Ignition config {}: {e}", path.display()),
                ));
                return (None, Vec::new());
            }
        },
    };
    let mut gathered = match identity::gather(Path::new("/"), &opts.identity) {
        Ok(g) => g,
        Err(e) => {
            findings.push(blocking("identity", e.to_string()));
            return (None, Vec::new());
        }
    };
    // The new system gets the network as configured (DHCP asked again); the installer, which
    // runs minutes later on the same lease, brings the links up with the addresses they have.
    let captured = network::read_host(Path::new("/")).and_then(|text| {
        let installer = network::capture(&text, CaptureOptions { pin_dynamic: true })?;
        let carried = network::capture(
            &text,
            CaptureOptions {
                pin_dynamic: opts.pin_dynamic,
            },
        )?;
        Ok((carried, installer))
    });
    let links = match captured {
        Ok((capture, installer)) => {
            let existing = keyfile::read_existing(Path::new("/")).ok().flatten();
            let keyfiles = keyfile::keyfiles(&capture, existing.as_deref());
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

fn describe_identity(g: &Gathered, notes: &mut Vec<String>, carried_over: &mut Vec<String>) {
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

/// Parses `--sha256` for callers that need the bytes.
pub fn sha256_bytes(plan: &Plan) -> Option<[u8; 32]> {
    plan.image
        .sha256
        .as_deref()
        .and_then(|s| parse_sha256(s).ok())
}

/// Whether the plan streams its image.
pub fn streams(plan: &Plan) -> bool {
    plan.image.carry == Carry::Stream
}
