//! `x2nestos convert`: the plan, then the conversion initramfs, the kexec load and the jump.
//!
//! Order, so that nothing changes until the point of no return: plan (refuse on any
//! blocking finding) → confirmation (or `--yes`) → the image downloaded and verified (carried)
//! or verified once over the network (streamed) → stage directory (the Ignition config 0600,
//! never logged) → initramfs by the host's dracut → kexec load (kexec_file_load, then
//! kexec_load through kexec-tools) → with `--dry-run`, unload and stop → sync → jump
//! (`systemctl kexec`, or the reboot syscall with `--force`).
//!
//! Everything before the jump writes only inside the work directory.

use std::fs;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::image::verify::Sha256Sum;
use super::initramfs;
use super::overlay::{self, media::Media};
use super::plan::{self, Carry, ConversionPlan, PlannedLive, Report, CARRIED_IMAGE};
use super::preflight::Severity;
use super::prepare::{self, Options, Prepared};
use super::progress::Meter;
use super::source;
use super::workdir;
use crate::sys::command::Cmd;
use crate::sys::kexec::{self, Context, Method};
use crate::sys::power::{self, Restart};

#[derive(Debug, Clone)]
pub struct Choices {
    pub yes: bool,
    pub dry_run: bool,
    pub force: bool,
    pub workdir: PathBuf,
}

/// The one line for a blocked plan: every blocking finding.
pub fn blocked_line(report: &Report) -> String {
    let reasons: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Blocking)
        .map(|f| f.message.as_str())
        .collect();
    format!("nothing was changed: {}", reasons.join("; "))
}

/// The confirmation question, naming the disk.
pub fn question(plan: &ConversionPlan) -> String {
    format!(
        "Erase /dev/{} ({} bytes{}){} and convert this machine to NestOS? Type yes: ",
        plan.disk.name,
        plan.disk.size_bytes,
        plan.disk
            .serial
            .as_deref()
            .map(|s| format!(", serial {s}"))
            .unwrap_or_default(),
        if plan.saved.is_empty() {
            String::new()
        } else {
            format!(
                " but for {}",
                plan.saved
                    .iter()
                    .map(|p| format!("partition {} {:?}", p.number, p.label))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )
}

pub fn run(opts: &Options, choices: &Choices, out: &mut dyn Write) -> anyhow::Result<()> {
    let prepared = prepare::prepare(opts);
    for line in plan::summary(&prepared.report) {
        writeln!(out, "{line}")?;
    }
    if prepared.report.blocked {
        bail!("{}", blocked_line(&prepared.report));
    }
    if opts.facts_root != Path::new("/") {
        bail!(
            "nothing was changed: the facts were read below {}, not from this machine; convert acts only on this machine's own facts",
            opts.facts_root.display()
        );
    }
    let Some(mut plan) = prepared.report.plan.clone() else {
        bail!("nothing was changed: no plan could be made");
    };
    if !choices.yes && !choices.dry_run {
        confirm(&plan)?;
    }
    let work = Workdir::create(&choices.workdir)?;
    let loaded = match &plan.live {
        Some(live) => load_live(&prepared, &plan, live, &work.path, out),
        None => build_and_load(&prepared, &mut plan, &work.path, out),
    };
    let (ctx, method) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            work.remove();
            return Err(e.context("nothing was changed"));
        }
    };
    if choices.dry_run {
        unload(method, &ctx)?;
        work.remove();
        let kernel = if plan.live.is_some() {
            "NestOS live kernel"
        } else {
            "conversion kernel"
        };
        writeln!(
            out,
            "Dry run: the {kernel} was loaded and unloaded; nothing was changed."
        )?;
        return Ok(());
    }
    tracing::info!(
        message_id = crate::logging::msgid::CONVERSION_STARTED,
        disk = %plan.disk.named,
        image = %plan.image.source,
        "jumping into the conversion initramfs"
    );
    writeln!(
        out,
        "{}",
        if plan.live.is_some() {
            "Jumping into the NestOS live system; its installer's progress shows on the console."
        } else {
            "Jumping into the conversion initramfs; the installer's progress shows on the console."
        }
    )?;
    out.flush()?;
    power::sync();
    if choices.force {
        writeln!(
            out,
            "Jumping with the reboot syscall (--force): no orderly shutdown of this system."
        )?;
        out.flush()?;
        // A kernel is loaded (above), so on success this does not return.
        let refused = power::sync_and_restart(Restart::Kexec);
        bail!("the reboot syscall refused to kexec: {refused}");
    }
    writeln!(
        out,
        "Jumping through `systemctl kexec`: this system shuts down in order first."
    )?;
    out.flush()?;
    Cmd::new("systemctl")
        .arg("kexec")
        .run()
        .context("starting the jump")?;
    Ok(())
}

/// Everything between the confirmation and the jump, inside the work directory: the image,
/// the stage, the initramfs, the kexec load.
fn build_and_load(
    prepared: &Prepared,
    plan: &mut ConversionPlan,
    work: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<(Context, Method)> {
    let stage = work.join("stage");
    fs::DirBuilder::new().mode(0o700).create(&stage)?;
    let image = obtain_image(prepared, plan, &stage, out)?;
    write_stage(
        &stage,
        plan,
        prepared.ignition.as_deref().unwrap_or_default(),
    )?;
    writeln!(
        out,
        "Building the conversion initramfs with dracut (kernel {})…",
        prepared.release
    )?;
    let drivers = initramfs::drivers_of(&initramfs::driver_links(&plan.disk.name));
    let initrd = initramfs::build(work, &stage, &prepared.release, &drivers)?;
    if let Some(image) = &image {
        initramfs::append_image(&initrd, image)
            .with_context(|| format!("appending the image to {}", initrd.display()))?;
        fs::remove_file(image).ok();
    }
    let args = plan::kernel_args(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let ctx = kexec_context(prepared);
    let method = load(&prepared.kernel, &initrd, &args, &ctx)?;
    writeln!(
        out,
        "Loaded {} with {} ({} bytes of initramfs)",
        prepared.kernel.display(),
        method_name(method),
        fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0)
    )?;
    Ok((ctx, method))
}

/// The live path: the live image's kernel, its initramfs parts and root filesystem, then an
/// overlay with the installer's directives and the Ignition config, loaded with the
/// arguments the plan shows.
fn load_live(
    prepared: &Prepared,
    plan: &ConversionPlan,
    live: &PlannedLive,
    work: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<(Context, Method)> {
    let expected = plan.image.sha256.map(Sha256Sum::bytes);
    let media_path = match &plan.image.source {
        // An ISO on a mirror was planned by ranges; now it is downloaded whole into the work
        // directory and verified on the way.
        url @ source::Source::Url(_) => {
            check_room(work, plan.image.compressed_bytes, "the live ISO")?;
            let dest = work.join("live.iso");
            writeln!(out, "Fetching {url}…")?;
            let mut meter = Meter::stderr("live ISO", plan.image.compressed_bytes);
            let (_, len) = source::download(
                url,
                &dest,
                expected,
                plan.image.compressed_bytes,
                prepared.timeouts,
                &mut |n, _| meter.update(n),
            )?;
            meter.finish(len);
            dest
        }
        // A local ISO was hashed while planning; hashed again right before it is read.
        file @ source::Source::File(path) => {
            if let (Some(expected), false) = (expected, path.is_dir()) {
                writeln!(out, "Verifying {} again…", path.display())?;
                let (digest, _) = source::digest(file, prepared.timeouts)?;
                source::check_digest(Some(expected), digest)?;
            }
            path.clone()
        }
    };
    let media_path = media_path.as_path();
    let media = Media::open(media_path)?;
    // What boots comes from the verified copy only: its boot configuration read again must
    // give the plan's entry, kernel, initramfs parts and kernel arguments exactly, or a mirror
    // that answered the plan's range reads with other bytes than the download would choose
    // the arguments.
    let boot = media.boot()?;
    if let Some(what) = unplanned_boot(&boot, &boot.initrd_parts(media.tree())?, live) {
        bail!(
            "the live image {} does not boot as planned: its verified boot configuration gives another {what} than the one read while planning; nothing was loaded. Run x2nestos again, or use another mirror",
            media_path.display()
        );
    }
    let prefix = boot.prefix()?;
    let dest_device = live
        .args
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{}=", prefix.inst("install_dev"))))
        .unwrap_or_default()
        .to_owned();
    let members = overlay::installer_members(
        &prefix,
        &overlay::Directives {
            dest_device,
            ignition: prepared.ignition.clone().unwrap_or_default(),
        },
    );
    let mut archive = Vec::new();
    overlay::write_newc(&members, &mut archive)?;
    let kernel = work.join("live-kernel");
    let initrd = work.join("live-initrd.img");
    writeln!(
        out,
        "Assembling the live system from {} ({} initramfs part(s) and the overlay)…",
        media_path.display(),
        live.initrds.len()
    )?;
    media.assemble(&boot, &archive, &kernel, &initrd)?;
    let mut ctx = kexec_context(prepared);
    ctx.kernel_head = media.kernel_head(&boot);
    drop(media);
    let method = load(&kernel, &initrd, &live.args, &ctx)?;
    writeln!(
        out,
        "Loaded {} from the live image with {} ({} bytes of initramfs) for /dev/{}",
        live.kernel,
        method_name(method),
        fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0),
        plan.disk.name
    )?;
    Ok((ctx, method))
}

/// Refuses a download that the work directory's filesystem has no room for, before it starts.
fn check_room(dir: &Path, needed: Option<u64>, what: &str) -> anyhow::Result<()> {
    let free = crate::sys::free_bytes(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    match room_refusal(needed, free, dir, what) {
        Some(refusal) => bail!("{refusal}"),
        None => Ok(()),
    }
}

/// Why `needed` bytes do not fit in `free` ones, if they do not (an unknown size is tried).
fn room_refusal(needed: Option<u64>, free: u64, dir: &Path, what: &str) -> Option<String> {
    const MIB: u64 = 1 << 20;
    let needed = needed.filter(|&n| n > free)?;
    Some(format!(
        "{what} needs {} MiB in {} but its filesystem has {} MiB free; free space there, or give --workdir on a larger filesystem",
        needed.div_ceil(MIB),
        dir.display(),
        free / MIB
    ))
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::FileSyscall => "kexec_file_load",
        Method::KexecTools => "kexec_load (kexec-tools)",
    }
}

fn confirm(plan: &ConversionPlan) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "nothing was changed: erasing /dev/{} needs a confirmation; run on a terminal, or pass --yes",
            plan.disk.name
        );
    }
    eprint!("{}", question(plan));
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("nothing was changed: not confirmed");
    }
    Ok(())
}

/// Downloads and verifies a carried image into the stage (returning its path), or verifies a
/// streamed one once over the network.
fn obtain_image(
    prepared: &Prepared,
    plan: &mut ConversionPlan,
    stage: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<Option<PathBuf>> {
    let source = plan.image.source.clone();
    let source = &source;
    let expected = plan.image.sha256.map(Sha256Sum::bytes);
    let timeouts = prepared.timeouts;
    match plan.image.carry {
        Carry::InMemory => {
            check_room(stage, plan.image.compressed_bytes, "the image")?;
            let dest = stage.join("image");
            writeln!(out, "Fetching {source}…")?;
            let mut meter = Meter::stderr("image", plan.image.compressed_bytes);
            let (digest, len) = source::download(
                source,
                &dest,
                expected,
                plan.image.compressed_bytes,
                timeouts,
                &mut |n, _| meter.update(n),
            )?;
            meter.finish(len);
            plan.image.sha256 = Some(digest.into());
            plan.image.carried = Some(CARRIED_IMAGE.into());
            Ok(Some(dest))
        }
        Carry::Stream => {
            if prepared.verified_digest.is_none() && !plan.image.insecure {
                writeln!(
                    out,
                    "Verifying {source} before anything changes (the installer verifies it again)…"
                )?;
                let (digest, _) = source::digest(source, timeouts)?;
                source::check_digest(expected, digest)?;
            }
            Ok(None)
        }
    }
}

fn write_stage(stage: &Path, plan: &ConversionPlan, ignition: &str) -> anyhow::Result<()> {
    let private = |name: &str, data: &[u8], mode: u32| -> anyhow::Result<()> {
        let path = stage.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(data)
            .with_context(|| format!("writing {}", path.display()))
    };
    private("config.ign", ignition.as_bytes(), 0o600)?;
    private(
        "plan.json",
        serde_json::to_string_pretty(plan)?.as_bytes(),
        0o600,
    )?;
    private(
        "x2nestos-install.service",
        initramfs::INSTALL_UNIT.as_bytes(),
        0o644,
    )?;
    let exe = fs::read("/proc/self/exe").context("reading x2nestos itself")?;
    private("x2nestos", &exe, 0o755)
}

fn kexec_context(prepared: &Prepared) -> Context {
    let mut head = Vec::new();
    if let Ok(f) = fs::File::open(&prepared.kernel) {
        use std::io::Read;
        let _ = f.take(64).read_to_end(&mut head);
    }
    Context {
        arch: prepared.facts.arch.clone(),
        lockdown: prepared.facts.lockdown.clone(),
        secure_boot: prepared.facts.secure_boot,
        kexec_load_disabled: prepared.facts.kexec_load_disabled,
        kernel_head: head,
    }
}

/// kexec_file_load, then kexec_load through kexec-tools when the kernel lacks the first.
fn load(kernel: &Path, initrd: &Path, args: &[String], ctx: &Context) -> anyhow::Result<Method> {
    match kexec::load_file(kernel, Some(initrd), args, ctx) {
        Ok(()) => Ok(Method::FileSyscall),
        Err(e) if e.falls_back() => {
            tracing::info!("{e}");
            kexec::load_with_kexec_tools(kernel, Some(initrd), args, ctx)?;
            Ok(Method::KexecTools)
        }
        Err(e) => Err(e.into()),
    }
}

fn unload(method: Method, ctx: &Context) -> anyhow::Result<()> {
    match method {
        Method::FileSyscall => kexec::unload(ctx)?,
        Method::KexecTools => {
            kexec::kexec_tools_unload().run()?;
        }
    }
    anyhow::ensure!(
        !kexec::loaded(Path::new("/sys")).unwrap_or(false),
        "a kernel is still loaded after unloading; run `kexec -u`"
    );
    Ok(())
}

/// The work directory: made fresh and private ([`workdir::create`]), removed after a dry run
/// or a failure.
struct Workdir {
    path: PathBuf,
}

impl Workdir {
    fn create(path: &Path) -> anyhow::Result<Workdir> {
        Ok(Workdir {
            path: workdir::create(path, crate::sys::euid())?,
        })
    }

    fn remove(self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What of the live plan the verified image's boot entry does not give (`None`: all of it).
/// The plan's own additions — the install device and the console — are taken from the plan;
/// everything else must come out of `boot`.
fn unplanned_boot(
    boot: &overlay::live::LiveBoot,
    initrd_parts: &[String],
    live: &PlannedLive,
) -> Option<&'static str> {
    let Ok(prefix) = boot.prefix() else {
        return Some("installer prefix");
    };
    if boot.source != live.entry {
        return Some("boot entry");
    }
    if prefix.as_str() != live.prefix {
        return Some("installer prefix");
    }
    if boot.kernel != live.kernel {
        return Some("kernel");
    }
    if initrd_parts != live.initrds {
        return Some("initramfs");
    }
    let install_dev = format!("{}=", prefix.inst("install_dev"));
    let at = live.args.iter().position(|a| a.starts_with(&install_dev));
    let rebuilt = at.and_then(|i| {
        boot.kexec_args(&live.args[i][install_dev.len()..], &live.args[i + 1..])
            .ok()
    });
    (rebuilt.as_ref() != Some(&live.args)).then_some("kernel command line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_image_boots_only_as_planned() {
        use crate::convert::overlay::live::{read_live, Dir};
        use crate::convert::preflight::Signature;
        let tree =
            Dir(Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/convert/live/nestos-iso"));
        let boot = read_live(&tree).unwrap();
        let parts = boot.initrd_parts(&tree).unwrap();
        let console = vec!["console=ttyS0,115200".to_owned()];
        let planned = PlannedLive {
            entry: boot.source.clone(),
            kernel: boot.kernel.clone(),
            initrds: parts.clone(),
            prefix: boot.prefix().unwrap().as_str().to_owned(),
            args: boot
                .kexec_args("/dev/disk/by-id/virtio-x", &console)
                .unwrap(),
            load_bytes: 1,
            kernel_signature: Signature::Unsigned,
        };
        assert_eq!(unplanned_boot(&boot, &parts, &planned), None);

        // The entry of the download carries an argument the planned one did not.
        let mut swapped = boot.clone();
        swapped.args.push("rd.break".into());
        assert_eq!(
            unplanned_boot(&swapped, &parts, &planned),
            Some("kernel command line")
        );
        // Or the planned arguments were read from another entry than the download's.
        let mut injected = planned.clone();
        injected.args.insert(0, "init=/bin/sh".into());
        assert_eq!(
            unplanned_boot(&boot, &parts, &injected),
            Some("kernel command line")
        );
        let mut other_kernel = boot.clone();
        other_kernel.kernel = "images/other/vmlinuz".into();
        assert_eq!(
            unplanned_boot(&other_kernel, &parts, &planned),
            Some("kernel")
        );
        assert_eq!(
            unplanned_boot(&boot, &parts[..1], &planned),
            Some("initramfs")
        );
        let mut no_install_dev = planned.clone();
        no_install_dev
            .args
            .retain(|a| !a.starts_with("nestos.inst.install_dev="));
        assert_eq!(
            unplanned_boot(&boot, &parts, &no_install_dev),
            Some("kernel command line")
        );
    }
    use crate::convert::plan::{PlannedDisk, PlannedImage, API_VERSION};
    use crate::convert::preflight::Finding;

    #[test]
    fn a_download_must_fit_in_the_work_directory() {
        let dir = Path::new("/var/tmp/x2nestos");
        assert_eq!(
            room_refusal(Some(900 << 20), 100 << 20, dir, "the live ISO").as_deref(),
            Some("the live ISO needs 900 MiB in /var/tmp/x2nestos but its filesystem has 100 MiB free; free space there, or give --workdir on a larger filesystem")
        );
        assert_eq!(room_refusal(Some(100 << 20), 100 << 20, dir, "x"), None);
        // A size the server did not tell is tried; a full filesystem then fails the write.
        assert_eq!(room_refusal(None, 0, dir, "x"), None);
    }

    #[test]
    fn the_question_names_the_disk() {
        let plan = ConversionPlan {
            api_version: API_VERSION.into(),
            kind: "Plan".into(),
            disk: PlannedDisk {
                named: "/dev/disk/by-id/virtio-x".into(),
                name: "vda".into(),
                by_id: vec![],
                by_path: vec![],
                serial: Some("S1".into()),
                size_bytes: 1 << 30,
                sector_size: 512,
                mark: None,
            },
            image: PlannedImage {
                source: source::Source::File("/srv/metal.raw".into()),
                sha256: None,
                signed: false,
                insecure: true,
                compressed_bytes: None,
                image_bytes: None,
                carry: Carry::InMemory,
                carried: None,
                stall_seconds: None,
            },
            network: vec![],
            live: None,
            saved: vec![],
            kargs: Default::default(),
        };
        assert_eq!(
            question(&plan),
            "Erase /dev/vda (1073741824 bytes, serial S1) and convert this machine to NestOS? Type yes: "
        );
        // Kept partitions are named in the question.
        let mut plan = plan;
        plan.saved = vec![crate::convert::saved::SavedPartition {
            number: 2,
            label: "data".into(),
            first_lba: 2048,
            last_lba: 4095,
            unique_guid: "00".repeat(16),
            size_bytes: 1 << 20,
            file_system: None,
        }];
        assert_eq!(
            question(&plan),
            "Erase /dev/vda (1073741824 bytes, serial S1) but for partition 2 \"data\" and convert this machine to NestOS? Type yes: "
        );
    }

    #[test]
    fn a_blocked_plan_is_one_line_with_every_reason() {
        let f = |severity, code, message: &str| Finding {
            severity,
            code,
            message: message.into(),
        };
        let report = Report::new(
            vec![
                f(Severity::Blocking, "notRoot", "run it as root"),
                f(Severity::Warning, "swapInUse", "swap"),
                f(Severity::Blocking, "memory", "not enough memory"),
            ],
            vec![],
            vec![],
            vec![],
            None,
        );
        assert_eq!(
            blocked_line(&report),
            "nothing was changed: run it as root; not enough memory"
        );
    }
}
