//! A scenario's workspace: its own directory of disks (copy-on-write overlays over the cached
//! images) and logs under target/tmp/vm-tests/<name>/, progress lines with elapsed time, and
//! on failure the paths of the serial logs to read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::bootloader::{load_default, Partition};
use super::cmd::run;
use super::images::{work_root, Generic, Testos};
use super::qemu::{Machine, MachineConfig};

/// A hard limit for one boot-to-power-off run of a machine (emulated CPU, shared cores).
pub const MACHINE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a boot may take to reach a given marker before the guest counts as not booting.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

pub struct Scenario {
    pub name: String,
    pub dir: PathBuf,
    started: Instant,
}

/// Runs a scenario; on failure the error says where its logs are.
pub fn scenario(name: &str, f: impl FnOnce(&Scenario) -> Result<()>) -> Result<()> {
    let s = Scenario::new(name)?;
    let result = f(&s);
    match result {
        Ok(()) => {
            s.progress("passed");
            s.remove_disks();
            Ok(())
        }
        Err(e) => {
            let logs: Vec<String> = std::fs::read_dir(&s.dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| p.to_string_lossy().ends_with(".serial.log"))
                        .map(|p| p.display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            eprintln!(
                "scenario {name} FAILED after {}s; its serial logs: {}",
                s.started.elapsed().as_secs(),
                if logs.is_empty() {
                    s.dir.display().to_string()
                } else {
                    logs.join(" ")
                }
            );
            Err(e.context(format!("scenario {name} (logs in {})", s.dir.display())))
        }
    }
}

impl Scenario {
    fn new(name: &str) -> Result<Scenario> {
        let dir = work_root().join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let s = Scenario {
            name: name.to_string(),
            dir,
            started: Instant::now(),
        };
        s.progress(&format!("workspace {}", s.dir.display()));
        Ok(s)
    }

    /// One progress line on stderr: `[scenario +12s] what`.
    pub fn progress(&self, what: &str) {
        eprintln!(
            "[{} +{}s] {what}",
            self.name,
            self.started.elapsed().as_secs()
        );
    }

    /// Disks are big and rebuilt every run; logs stay.
    fn remove_disks(&self) {
        if let Ok(d) = std::fs::read_dir(&self.dir) {
            for e in d.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "qcow2" || x == "raw") {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    /// A copy-on-write overlay over `base`, in this scenario's dir.
    pub fn overlay(&self, base: &Path, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.qcow2"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(&path))?;
        Ok(path)
    }

    /// An empty extra disk of `size_mb` MiB.
    pub fn blank_disk(&self, name: &str, size_mb: u64) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.qcow2"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(format!("{size_mb}M")))?;
        Ok(path)
    }

    /// Boots the generic machine from `disk` (an overlay of its image).
    pub fn boot_generic(&self, g: &Generic, disk: &Path, machine: &str) -> Result<Machine> {
        self.boot_generic_with(g, disk, machine, &g.cmdline)
    }

    /// Boots the generic machine with another kernel command line.
    pub fn boot_generic_with(
        &self,
        g: &Generic,
        disk: &Path,
        machine: &str,
        cmdline: &str,
    ) -> Result<Machine> {
        let cfg = MachineConfig {
            name: machine.to_string(),
            kernel: g.kernel.clone(),
            initrd: g.initrd.clone(),
            cmdline: cmdline.to_string(),
            disk: disk.to_path_buf(),
            extra_disks: Vec::new(),
            timeout: MACHINE_TIMEOUT,
        };
        self.progress(&format!("booting {machine} (generic)"));
        Machine::start(&cfg, &self.dir, &g.keys_dir)
    }

    /// A testos disk: an overlay over the metal image, with `ignition` (a config, JSON) put in
    /// the boot partition as ignition/config.ign, the way x2nestos or an installer leaves it.
    pub fn testos_disk(&self, t: &Testos, name: &str, ignition: Option<&str>) -> Result<PathBuf> {
        let disk = self.overlay(&t.disk, name)?;
        if let Some(cfg) = ignition {
            let part = Partition::extract(
                &disk,
                t.boot_part_offset,
                t.boot_part_size,
                &self.dir.join(format!("{name}-boot.raw")),
            )?;
            part.write_secret(
                "/ignition/config.ign",
                cfg.as_bytes(),
                &self.dir.join("config.ign"),
            )?;
            part.write_back(&disk, t.boot_part_offset)?;
            let _ = std::fs::remove_file(&part.raw);
        }
        Ok(disk)
    }

    /// Boots a testos disk the way its boot loader would: the default BLS entry of its boot
    /// partition (direct kernel boot; see vm-tests/README.md for what that leaves unshown).
    pub fn boot_testos(&self, t: &Testos, disk: &Path, machine: &str) -> Result<Machine> {
        let boot_dir = self.dir.join(format!("{machine}-boot"));
        let part = Partition::extract(
            disk,
            t.boot_part_offset,
            t.boot_part_size,
            &self.dir.join(format!("{machine}-boot.raw")),
        )?;
        let files = load_default(&part, &boot_dir)?;
        let _ = std::fs::remove_file(&part.raw);
        self.progress(&format!(
            "booting {machine} (testos) entry {} ({})",
            files.entry.file, files.entry.title
        ));
        let cfg = MachineConfig {
            name: machine.to_string(),
            kernel: files.kernel,
            initrd: files.initrd,
            cmdline: files.entry.options.clone(),
            disk: disk.to_path_buf(),
            extra_disks: Vec::new(),
            timeout: MACHINE_TIMEOUT,
        };
        Machine::start(&cfg, &self.dir, &t.keys_dir)
    }
}
