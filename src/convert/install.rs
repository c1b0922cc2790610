//! `x2nestos install`: what the conversion initramfs runs. It writes the planned image to the
//! planned disk and puts the Ignition config where NestOS's first boot reads it.
//!
//! Steps, each logged to the console and kept for the log on the new disk:
//! 1. Find the planned disk again (by-id, serial, name) and re-check its serial and size.
//! 2. A carried image is verified completely before anything is written; a streamed one is
//!    fetched over the links the plan names, brought up with the addresses they had.
//! 3. First write: old signatures wiped (both ends of the old partitions, the backup GPT at
//!    the disk's end). The writer then streams the image, the first MiB last.
//!    Kept partitions (`--save-partlabel`, `--save-partindex`) are found again in the disk's
//!    table before anything is written (same number, place and unique GUID, or nothing is
//!    written); no byte of them is wiped or written (the writer stops before the first), and
//!    their entries go into the written table after the image's own, with the backup GPT at
//!    the disk's end.
//! 4. The partition table is re-read; the boot partition (GPT name or ext label `boot`) is
//!    mounted; `ignition/config.ign` (0600) and `x2nestos/install.log` are written there,
//!    and the first-boot stamp `ignition.firstboot` is made if the image lacks it; the
//!    planned kernel arguments and console go on the `options` line of every boot loader
//!    entry (`loader/entries/*.conf`), as coreos-installer puts them.
//! 5. Reboot: `systemctl reboot`, so the journal forwards the last lines to the console first
//!    (the reboot syscall when there is no init system to ask).
//!
//! Guarantees: any failure before step 3 leaves the disk exactly as it was, and the machine
//! reboots into its old system. A failure after it is reported on the console (the unit then
//! drops to the emergency shell) and the install can be re-run: every step starts afresh.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use super::disk::{self, Disk};
use super::image::format::{self, GptPartition};
use super::image::verify::Sha256Sum;
use super::image::{write_image, WriteOptions, WriteTarget};
use super::kargs::{self, Kargs};
use super::plan::{self, Carry, ConversionPlan, InstallLink, PlannedImage};
use super::progress::Meter;
use super::saved;
use super::source::{self, Source, Timeouts};
use crate::sys::command::Cmd;

/// How long the disk and the network devices may take to show up after boot, by default.
pub const DEVICE_WAIT: Duration = Duration::from_secs(60);
/// Where the boot partition is mounted while the config and log are written.
const BOOT_MOUNT: &str = "/run/x2nestos/boot";
/// The log's place on the new disk's boot partition.
pub const LOG_PATH: &str = "x2nestos/install.log";
/// How much is zeroed at each end of the old partitions and of the disk: every signature
/// (superblocks, labels, the backup GPT) lies within it.
const TAIL_WIPE: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Choices {
    pub plan: PathBuf,
    pub ignition: PathBuf,
    pub reboot: bool,
    /// How long to wait for the planned disk and network devices.
    pub device_wait: Duration,
}

/// Lines for the console, kept for the log on the new disk.
#[derive(Default)]
pub struct Log {
    lines: Vec<String>,
}

impl Log {
    pub fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("x2nestos: {line}");
        let _ = std::io::stdout().flush();
        self.lines.push(line);
    }

    pub fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }
}

/// A failure, and whether the disk was touched.
struct Failure {
    touched: bool,
    error: anyhow::Error,
}

fn untouched(error: anyhow::Error) -> Failure {
    Failure {
        touched: false,
        error,
    }
}

fn touched(error: anyhow::Error) -> Failure {
    Failure {
        touched: true,
        error,
    }
}

pub fn run(choices: &Choices) -> anyhow::Result<()> {
    let mut log = Log::default();
    log.say(format!(
        "x2nestos {} installer starting",
        env!("CARGO_PKG_VERSION")
    ));
    match install(choices, &mut log) {
        Ok(()) => {
            log.say("NestOS is written; the first boot applies the Ignition config");
            if choices.reboot {
                reboot(&mut log);
            }
            Ok(())
        }
        Err(Failure {
            touched: false,
            error,
        }) => {
            log.say(format!("error: {error:#}"));
            log.say("nothing was written: the disk is as it was");
            if choices.reboot {
                log.say("rebooting into the old system");
                reboot(&mut log);
            }
            Err(error.context("nothing was written"))
        }
        Err(Failure {
            touched: true,
            error,
        }) => {
            log.say(format!("error: {error:#}"));
            log.say(format!(
                "the disk is partly written and does not boot; fix the cause and run `x2nestos install --plan {}` again from this shell",
                choices.plan.display()
            ));
            Err(error)
        }
    }
}

fn install(choices: &Choices, log: &mut Log) -> Result<(), Failure> {
    let plan: ConversionPlan = fs::read_to_string(&choices.plan)
        .with_context(|| format!("reading the plan {}", choices.plan.display()))
        .and_then(|t| serde_json::from_str(&t).context("the plan is not valid"))
        .map_err(untouched)?;
    let ignition = fs::read(&choices.ignition)
        .with_context(|| format!("reading the Ignition config {}", choices.ignition.display()))
        .map_err(untouched)?;
    serde_json::from_slice::<serde_json::Value>(&ignition)
        .context("the carried Ignition config is not JSON")
        .map_err(untouched)?;

    let disk = wait_for_disk(&plan, choices.device_wait, log).map_err(untouched)?;
    let device = PathBuf::from(format!("/dev/{}", disk.name));
    log.say(format!(
        "target {} ({} bytes, serial {}) is the planned disk",
        device.display(),
        disk.size_bytes,
        disk.serial.as_deref().unwrap_or("(none)")
    ));
    if let Some(image) = plan.image.image_bytes {
        if image > disk.size_bytes {
            return Err(untouched(anyhow!(
                "the image needs {image} bytes but {} has {}; choose a larger disk",
                device.display(),
                disk.size_bytes
            )));
        }
    }
    let kept = find_kept(&device, &plan).map_err(untouched)?;
    for (k, planned) in kept.iter().zip(&plan.saved) {
        log.say(format!(
            "keeping partition {} {:?} ({} bytes at sector {}): never written",
            k.number,
            k.name(),
            planned.size_bytes,
            k.first_lba()
        ));
    }
    let expected = plan.image.sha256.map(Sha256Sum::bytes);
    let reader = open_image(&plan, expected, log).map_err(untouched)?;
    let target = WriteTarget::open(&device).map_err(|e| untouched(e.into()))?;
    let ss = u64::from(disk.logical_sector_size);
    let kept_ranges: Vec<(u64, u64)> = kept
        .iter()
        .map(|k| (k.first_lba() * ss, (k.last_lba() + 1) * ss))
        .collect();
    note_chosen(&plan, &disk).map_err(untouched)?;
    wipe(&disk, &target, &kept_ranges).map_err(touched)?;
    log.say(format!(
        "old signatures wiped ({} partition(s), backup partition table{})",
        disk.partitions.len(),
        if kept.is_empty() {
            ""
        } else {
            "; kept partitions left alone"
        }
    ));
    let mut meter = Meter::stdout_lines(
        &format!("writing {}", device.display()),
        plan.image.image_bytes,
    );
    let options = WriteOptions {
        sha256: expected,
        stop_at: saved::image_limit(&plan.saved, disk.logical_sector_size),
        ..WriteOptions::default()
    };
    let report = write_image(reader, &target, &options, &mut |p| meter.update(p.written))
        .with_context(|| format!("writing {}", device.display()))
        .map_err(touched)?;
    meter.finish(report.image_bytes);
    log.say(format!(
        "wrote {} bytes ({} image, {} bytes read, sha256 {}{})",
        report.image_bytes,
        report.format,
        report.compressed_bytes,
        hex::encode(report.sha256),
        if expected.is_some() {
            ", verified"
        } else {
            ", UNVERIFIED (--insecure)"
        }
    ));
    if !kept.is_empty() {
        restore_kept(&device, &target, &disk, &kept, log).map_err(touched)?;
    }
    target.reread_partitions().map_err(|e| touched(e.into()))?;
    drop(target);
    place_ignition(
        &device,
        disk.logical_sector_size,
        &ignition,
        &plan.kargs,
        log,
    )
    .map_err(touched)?;
    Ok(())
}

/// All whole disks the kernel shows now, their marks read.
fn disks() -> Vec<Disk> {
    let root = Path::new("/");
    disk::all(root)
        .into_iter()
        .map(|mut d| {
            d.mark = disk::read_mark(root, &d).ok();
            d
        })
        .collect()
}

/// Where a run notes, before its first write, the device it chose for this plan in this boot:
/// a later run in the same boot (after a failure past the first write, when the disk's first
/// MiB may already be the new image's) takes the same device without comparing its mark.
/// Named by a digest of the plan's disk; /run is root's, and a tmpfs a reboot empties.
fn chosen_record(plan: &ConversionPlan) -> PathBuf {
    use sha2::{Digest, Sha256};
    let key = Sha256::digest(serde_json::to_vec(&plan.disk).unwrap_or_default());
    PathBuf::from(format!("/run/x2nestos/chosen-{}", &hex::encode(key)[..16]))
}

fn this_boot() -> String {
    crate::sys::boot_id(Path::new("/proc"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The device (`major:minor`) an earlier run in this boot chose for this plan.
fn chosen_earlier(plan: &ConversionPlan) -> Option<String> {
    let text = fs::read_to_string(chosen_record(plan)).ok()?;
    let (boot, dev) = text.trim().split_once(' ')?;
    (boot == this_boot()).then(|| dev.to_owned())
}

fn note_chosen(plan: &ConversionPlan, disk: &Disk) -> anyhow::Result<()> {
    let path = chosen_record(plan);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create("/run/x2nestos")?;
    fs::write(&path, format!("{} {}\n", this_boot(), disk.dev))
        .with_context(|| format!("noting the chosen disk in {}", path.display()))
}

fn wait_for_disk(plan: &ConversionPlan, wait: Duration, log: &mut Log) -> anyhow::Result<Disk> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let all = disks();
        let chosen = chosen_earlier(plan);
        let found = plan::find_disk(&plan.disk, &all, chosen.as_deref()).cloned();
        let checked = found
            .as_ref()
            .map(|d| plan::recheck(&plan.disk, d, chosen.as_deref() == Some(d.dev.as_str())))
            .unwrap_or_else(|| {
                Err(format!(
                    "no disk like the planned /dev/{} is present",
                    plan.disk.name
                ))
            });
        match (found, checked) {
            (Some(d), Ok(())) => return Ok(d),
            (_, Err(why)) if start.elapsed() >= wait => bail!("{why}"),
            _ => {
                if !said {
                    log.say("waiting for the planned disk to appear");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The download timeouts `convert --stall-timeout` planned (older plans: the defaults).
fn planned_timeouts(image: &PlannedImage) -> Timeouts {
    image.stall_seconds.map_or_else(Timeouts::default, |secs| {
        Timeouts::stalling_after(Duration::from_secs(secs))
    })
}

/// The image as a reader: a carried file verified first, or the URL over the network.
fn open_image(
    plan: &ConversionPlan,
    expected: Option<[u8; 32]>,
    log: &mut Log,
) -> anyhow::Result<Box<dyn Read + Send>> {
    let timeouts = planned_timeouts(&plan.image);
    match plan.image.carry {
        Carry::InMemory => {
            let path =
                plan.image.carried.as_deref().ok_or_else(|| {
                    anyhow!("the plan carries the image but names no file for it")
                })?;
            let source = Source::File(path.into());
            if expected.is_some() {
                log.say(format!("verifying the carried image {path}"));
                let (digest, len) = source::digest(&source, timeouts)?;
                source::check_digest(expected, digest)?;
                log.say(format!(
                    "carried image verified ({len} bytes, sha256 {})",
                    hex::encode(digest)
                ));
            }
            Ok(source::open(&source, timeouts)?.reader)
        }
        Carry::Stream => {
            bring_up(&plan.network, log)?;
            let source = &plan.image.source;
            log.say(format!("streaming {source}"));
            let start = Instant::now();
            loop {
                match source::open(source, timeouts) {
                    Ok(opened) => return Ok(opened.reader),
                    // The link may need a moment (carrier, neighbour discovery).
                    Err(source::SourceError::Transport { .. }) if start.elapsed() < DEVICE_WAIT => {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// The interface whose MAC is `mac`, from /sys/class/net.
fn interface_with_mac(mac: &str) -> Option<String> {
    fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|e| {
            let address = fs::read_to_string(e.path().join("address")).ok()?;
            (address.trim().eq_ignore_ascii_case(mac))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

/// Brings the planned links up with their addresses and default routes.
fn bring_up(links: &[InstallLink], log: &mut Log) -> anyhow::Result<()> {
    if links.is_empty() {
        bail!("the plan streams the image but carries no network link to fetch it over; convert with the image carried in memory");
    }
    for link in links {
        let start = Instant::now();
        let name = loop {
            if let Some(name) = interface_with_mac(&link.mac) {
                break name;
            }
            if start.elapsed() >= DEVICE_WAIT {
                bail!(
                    "no network interface with MAC {} ({} before the jump) appeared",
                    link.mac,
                    link.name
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        Cmd::new("ip")
            .args(["link", "set", "dev", &name, "up"])
            .run()?;
        for address in &link.addresses {
            tolerate_exists(
                Cmd::new("ip")
                    .args(["addr", "add", address, "dev", &name])
                    .run(),
            )?;
        }
        for (family, gateway) in [("-4", &link.gateway), ("-6", &link.gateway6)] {
            if let Some(gw) = gateway {
                tolerate_exists(
                    Cmd::new("ip")
                        .args([
                            family, "route", "replace", "default", "via", gw, "dev", &name,
                        ])
                        .run(),
                )?;
            }
        }
        log.say(format!(
            "network: {name} ({}) up with {}{}",
            link.mac,
            link.addresses.join(", "),
            link.gateway
                .as_deref()
                .map(|g| format!(", gateway {g}"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

fn tolerate_exists(
    result: Result<String, crate::sys::command::CommandError>,
) -> anyhow::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.stderr().contains("File exists") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The planned kept partitions' entries as the disk's table holds them now: each must still
/// be there under its number, with the same place and unique GUID, or nothing is written.
fn find_kept(device: &Path, plan: &ConversionPlan) -> anyhow::Result<Vec<saved::Entry>> {
    if plan.saved.is_empty() {
        return Ok(Vec::new());
    }
    let mut head = vec![0u8; 1 << 20];
    fs::File::open(device)
        .and_then(|f| f.read_exact_at(&mut head, 0))
        .with_context(|| format!("reading the partition table of {}", device.display()))?;
    let table = saved::read_table(&head, plan.disk.sector_size).ok_or_else(|| {
        anyhow!(
            "{} has no GPT any more, but the plan keeps partitions of it",
            device.display()
        )
    })?;
    plan.saved
        .iter()
        .map(|p| {
            table
                .entries
                .iter()
                .find(|e| {
                    e.number == p.number
                        && e.first_lba() == p.first_lba
                        && e.last_lba() == p.last_lba
                        && e.unique_guid() == p.unique_guid
                })
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "{} is not on {} as planned (sectors {}-{}); plan again",
                        p.what(),
                        device.display(),
                        p.first_lba,
                        p.last_lba
                    )
                })
        })
        .collect()
}

/// Puts the kept partitions' entries into the written image's table, and the table's
/// backup at the disk's end.
fn restore_kept(
    device: &Path,
    target: &WriteTarget,
    disk: &Disk,
    kept: &[saved::Entry],
    log: &mut Log,
) -> anyhow::Result<()> {
    let mut head = vec![0u8; 1 << 20];
    fs::File::open(device)
        .and_then(|f| f.read_exact_at(&mut head, 0))
        .with_context(|| format!("reading the written table of {}", device.display()))?;
    let merged = saved::merge(&head, disk.logical_sector_size, target.size(), kept)?;
    target
        .write_at(&merged.tail, merged.tail_at)
        .with_context(|| format!("writing the backup partition table of {}", device.display()))?;
    target
        .write_at(&merged.head, 0)
        .with_context(|| format!("writing the partition table of {}", device.display()))?;
    target
        .file()
        .sync_all()
        .with_context(|| format!("syncing {}", device.display()))?;
    for (old, new) in &merged.numbers {
        log.say(format!(
            "kept partition {old} is partition {new} of the new table"
        ));
    }
    Ok(())
}

/// Zeroes where signatures live: the first and last MiB of each old partition (file system
/// superblocks, LVM labels, MD superblocks of every version, LUKS headers) and of the disk
/// (the backup GPT), so that nothing stale is found inside the new layout — but never a byte
/// of a kept partition (`kept`, byte ranges). Everything is written through the disk's own
/// exclusive descriptor, and never inside the disk's first MiB, which the writer writes last.
fn wipe(disk: &Disk, target: &WriteTarget, kept: &[(u64, u64)]) -> anyhow::Result<()> {
    let mut old = Vec::new();
    for p in &disk.partitions {
        let start = fs::read_to_string(format!("/sys/class/block/{}/start", p.name))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map(|sectors| sectors * 512);
        if let Some(start) = start {
            old.push((start, p.size_bytes));
        }
    }
    for (from, to) in saved::wipe_ranges(&old, target.size(), TAIL_WIPE, kept) {
        let (from, to) = (from.max(TAIL_WIPE), to.min(target.size()));
        if from < to {
            let zeros = vec![0u8; (to - from) as usize];
            target
                .write_at(&zeros, from)
                .with_context(|| format!("wiping {} at {from}", target.path().display()))?;
        }
    }
    Ok(())
}

/// The boot partition of the written image: GPT name `boot`, else the ext label `boot`.
pub fn boot_partition(
    head: &[u8],
    sector_size: u32,
    labels: &dyn Fn(&GptPartition) -> Option<String>,
) -> Option<GptPartition> {
    let parts = format::gpt_partitions(head, sector_size);
    parts
        .iter()
        .find(|p| p.name == "boot")
        .or_else(|| parts.iter().find(|p| labels(p).as_deref() == Some("boot")))
        .cloned()
}

/// The device node of partition `number` of `disk` (`vda1`, `nvme0n1p1`).
pub fn partition_node(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("/dev/{disk}p{number}")
    } else {
        format!("/dev/{disk}{number}")
    }
}

fn place_ignition(
    device: &Path,
    sector_size: u32,
    ignition: &[u8],
    kargs: &Kargs,
    log: &mut Log,
) -> anyhow::Result<()> {
    let mut head = vec![0u8; 1 << 20];
    let disk_file =
        fs::File::open(device).with_context(|| format!("opening {}", device.display()))?;
    disk_file.read_exact_at(&mut head, 0)?;
    let ss = u64::from(sector_size);
    let label = |p: &GptPartition| {
        let mut sb = vec![0u8; 2048];
        disk_file.read_exact_at(&mut sb, p.first_lba * ss).ok()?;
        format::ext_label(&sb)
    };
    let boot = boot_partition(&head, sector_size, &label).ok_or_else(|| {
        anyhow!("the written image has no boot partition (GPT name or label `boot`)")
    })?;
    let disk_name = device
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let node = partition_node(&disk_name, boot.number);
    let offset = boot.first_lba * ss;
    let size = (boot.last_lba + 1 - boot.first_lba) * ss;
    let mut loop_dev = None;
    let start = Instant::now();
    while !Path::new(&node).exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let dev = if Path::new(&node).exists() {
        node
    } else {
        // The kernel shows no partitions of this device: reach the partition through a loop
        // device at its offset.
        let dev = Cmd::new("losetup")
            .args([
                "--find",
                "--show",
                "--offset",
                &offset.to_string(),
                "--sizelimit",
                &size.to_string(),
            ])
            .arg(device)
            .run()?
            .trim()
            .to_owned();
        loop_dev = Some(dev.clone());
        dev
    };
    let result = write_boot_files(&dev, ignition, kargs, log);
    if let Some(dev) = loop_dev {
        let _ = Cmd::new("losetup").args(["--detach", &dev]).run();
    }
    result
}

fn write_boot_files(
    dev: &str,
    ignition: &[u8],
    kargs: &Kargs,
    log: &mut Log,
) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(BOOT_MOUNT)?;
    Cmd::new("mount")
        .args(["-t", "ext4", dev, BOOT_MOUNT])
        .run()?;
    let result = (|| -> anyhow::Result<()> {
        let boot = Path::new(BOOT_MOUNT);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(boot.join("ignition"))?;
        write_file(&boot.join("ignition/config.ign"), ignition, 0o600)?;
        let stamp = boot.join("ignition.firstboot");
        if !stamp.exists() {
            write_file(&stamp, b"", 0o644)?;
        }
        log.say(format!(
            "Ignition config placed on {dev} (ignition/config.ign, 0600); first-boot stamp present"
        ));
        if !kargs.is_empty() {
            edit_entries(boot, kargs, log)?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(boot.join("x2nestos"))?;
        log.say(format!(
            "log kept on the new disk: boot partition {LOG_PATH}"
        ));
        write_file(&boot.join(LOG_PATH), log.text().as_bytes(), 0o644)?;
        Ok(())
    })();
    let unmounted = Cmd::new("umount").arg(BOOT_MOUNT).run();
    result?;
    unmounted?;
    Ok(())
}

/// Applies the planned kernel arguments to every boot loader entry (`loader/entries/*.conf`)
/// of the mounted boot partition, each rewritten whole (a new file renamed over the old).
fn edit_entries(boot: &Path, k: &Kargs, log: &mut Log) -> anyhow::Result<()> {
    let dir = boot.join("loader/entries");
    let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading the boot loader entries in {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    entries.sort();
    if entries.is_empty() {
        bail!(
            "the written image has no boot loader entry (loader/entries/*.conf) to put the kernel arguments in"
        );
    }
    for path in entries {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let edited = kargs::edit_entry(&text, k);
        let tmp = path.with_extension("conf.x2nestos");
        write_file(&tmp, edited.as_bytes(), 0o644)?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        let options = edited
            .lines()
            .find_map(|l| l.strip_prefix("options "))
            .unwrap_or_default();
        log.say(format!(
            "boot entry {}: options {options}",
            path.strip_prefix(boot).unwrap_or(&path).display()
        ));
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

fn reboot(log: &mut Log) {
    log.say("rebooting");
    // An orderly reboot: the journal forwards the last lines to the console before the machine
    // goes down (the raw syscall cuts off what it has not forwarded yet). The syscall is what
    // is left when there is no init system to ask.
    match Cmd::new("systemctl").arg("reboot").run() {
        Ok(_) => return,
        Err(e) => log.say(format!("{e:#}; rebooting with the reboot syscall")),
    }
    let refused = crate::sys::power::sync_and_restart(crate::sys::power::Restart::Reboot);
    log.say(format!("reboot failed: {refused}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installer_keeps_the_planned_stall_timeout() {
        let mut image: PlannedImage = serde_json::from_value(serde_json::json!({
            "source": "http://10.0.2.2/metal.raw.xz", "sha256": null, "compressedBytes": null,
            "imageBytes": null, "carry": "stream"
        }))
        .unwrap();
        // A plan from before the field: the defaults.
        let t = planned_timeouts(&image);
        assert_eq!(t.stall, Timeouts::default().stall);
        image.stall_seconds = Some(300);
        let t = planned_timeouts(&image);
        assert_eq!((t.stall.as_secs(), t.connect.as_secs()), (300, 30));
        image.stall_seconds = Some(5);
        let t = planned_timeouts(&image);
        assert_eq!((t.stall.as_secs(), t.connect.as_secs()), (5, 5));
    }

    #[test]
    fn partition_nodes() {
        assert_eq!(partition_node("vda", 1), "/dev/vda1");
        assert_eq!(partition_node("nvme0n1", 2), "/dev/nvme0n1p2");
        assert_eq!(partition_node("loop7", 1), "/dev/loop7p1");
    }
}
