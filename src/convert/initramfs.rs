//! Building the conversion initramfs with the host's own dracut.
//!
//! dracut runs over a private copy of the host's module directory (`dracutbasedir=`) with
//! our module (dracut/modules.d/90x2nestos, compiled into x2nestos) added, so nothing under
//! /usr/lib/dracut changes. The module takes x2nestos, the plan, the Ignition config and the
//! installer unit from a stage directory. A carried image is not given to dracut (it would
//! compress it again, slowly): it is appended afterwards as an uncompressed newc archive,
//! which the kernel unpacks like any other part of a concatenated initrd.
//!
//! [`dracut_command`] and [`drivers_of`] are pure; the rest runs commands and writes files
//! inside the work directory only.

use std::fs;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::overlay;
use crate::sys::command::Cmd;

/// dracut/modules.d/90x2nestos/module-setup.sh, as built into x2nestos.
pub const MODULE_SETUP: &str = include_str!("../../dracut/modules.d/90x2nestos/module-setup.sh");
/// systemd/x2nestos-install.service, as built into x2nestos.
pub const INSTALL_UNIT: &str = include_str!("../../systemd/x2nestos-install.service");

/// The dracut modules of the conversion initramfs (their dependencies follow).
pub const DRACUT_MODULES: &str = "base systemd systemd-initrd udev-rules kernel-modules x2nestos";

/// The dracut command line: host-only (the drivers of this machine's disks, plus the ones
/// named), uncompressed (building is faster on a slow machine and the kernel unpacks it
/// at once), none of the host's own kernel arguments.
pub fn dracut_command(
    base: &Path,
    stage: &Path,
    release: &str,
    drivers: &[String],
    tmp: &Path,
    out: &Path,
) -> Cmd {
    Cmd::new("dracut")
        .env("dracutbasedir", base)
        .env("X2NESTOS_STAGE", stage)
        .args([
            "--force",
            "--quiet",
            "--hostonly",
            "--no-hostonly-cmdline",
            "--no-compress",
        ])
        .args(["--kver", release])
        .args(["--modules", DRACUT_MODULES])
        .args(["--add-drivers", &drivers.join(" ")])
        .arg("--tmpdir")
        .arg(tmp)
        .arg(out)
}

/// Kernel module names from the `driver/module` links of devices: each link's last part.
pub fn drivers_of(links: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = links
        .iter()
        .filter_map(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.push("ext4".into());
    names.sort();
    names.dedup();
    names
}

/// The module links of this machine's network devices and of the disk `disk_name`.
pub fn driver_links(disk_name: &str) -> Vec<PathBuf> {
    let mut links = Vec::new();
    if let Ok(entries) = fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            if let Ok(target) = fs::read_link(e.path().join("device/driver/module")) {
                links.push(target);
            }
        }
    }
    if let Ok(target) = fs::read_link(format!("/sys/block/{disk_name}/device/driver/module")) {
        links.push(target);
    }
    links
}

/// A private copy of the host's dracut with our module added.
pub fn private_dracut(work: &Path) -> anyhow::Result<PathBuf> {
    let base = work.join("dracut");
    let host = Path::new("/usr/lib/dracut");
    anyhow::ensure!(
        host.join("dracut-init.sh").exists(),
        "/usr/lib/dracut is missing: install dracut (apt-get install dracut, dnf install dracut)"
    );
    if base.exists() {
        fs::remove_dir_all(&base).with_context(|| format!("removing {}", base.display()))?;
    }
    Cmd::new("cp").arg("-a").arg(host).arg(&base).run()?;
    let module = base.join("modules.d/90x2nestos");
    fs::create_dir_all(&module).with_context(|| format!("creating {}", module.display()))?;
    let setup = module.join("module-setup.sh");
    fs::write(&setup, MODULE_SETUP).with_context(|| format!("writing {}", setup.display()))?;
    fs::set_permissions(&setup, fs::Permissions::from_mode(0o755))?;
    Ok(base)
}

/// Runs dracut; returns the initramfs.
pub fn build(
    work: &Path,
    stage: &Path,
    release: &str,
    drivers: &[String],
) -> anyhow::Result<PathBuf> {
    let base = private_dracut(work)?;
    let out = work.join("initramfs.img");
    let tmp = work.join("tmp");
    fs::create_dir_all(&tmp)?;
    dracut_command(&base, stage, release, drivers, &tmp, &out)
        .run()
        .context("building the conversion initramfs")?;
    Ok(out)
}

/// Appends `image` to `initrd` as `x2nestos/image` (mode 0600) in its own newc archive,
/// after zero padding to a 512-byte boundary (the kernel looks for the next archive's magic
/// on 4-byte boundaries and skips zeros).
pub fn append_image(initrd: &Path, image: &Path) -> io::Result<()> {
    let mut out = fs::OpenOptions::new().append(true).open(initrd)?;
    let len = out.seek(SeekFrom::End(0))?;
    let pad = (512 - len % 512) % 512;
    out.write_all(&vec![0u8; pad as usize])?;
    let mut data = fs::File::open(image)?;
    let size = data.metadata()?.len();
    let mut buffered = io::BufWriter::with_capacity(1 << 20, &mut out);
    overlay::write_newc_streamed(
        &mut buffered,
        &["x2nestos"],
        "x2nestos/image",
        0o600,
        size,
        &mut data,
    )?;
    buffered.flush()?;
    drop(buffered);
    out.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dracut_command_is_hostonly_uncompressed_with_our_module() {
        let cmd = dracut_command(
            Path::new("/w/dracut"),
            Path::new("/w/stage"),
            "6.1.0-13-amd64",
            &["ext4".into(), "virtio_net".into()],
            Path::new("/w/tmp"),
            Path::new("/w/initramfs.img"),
        );
        let line = cmd.to_string();
        assert!(line.contains("dracut --force --quiet --hostonly --no-hostonly-cmdline --no-compress --kver 6.1.0-13-amd64"), "{line}");
        assert!(line.contains("x2nestos"), "{line}");
        assert!(line.contains("ext4 virtio_net"), "{line}");
        assert!(line.ends_with("/w/initramfs.img"), "{line}");
    }

    #[test]
    fn drivers_from_module_links() {
        let links = vec![
            PathBuf::from("../../../../module/virtio_net"),
            PathBuf::from("../../../module/virtio_blk"),
            PathBuf::from("../../../../module/virtio_net"),
        ];
        assert_eq!(drivers_of(&links), ["ext4", "virtio_blk", "virtio_net"]);
    }

    #[test]
    fn the_module_and_unit_are_built_in() {
        assert!(MODULE_SETUP.contains("X2NESTOS_STAGE"));
        assert!(INSTALL_UNIT.contains("ExecStart=/usr/bin/x2nestos install"));
    }

    #[test]
    fn an_appended_image_starts_on_a_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd");
        fs::write(&initrd, b"0707 not really an archive").unwrap();
        let image = dir.path().join("image");
        fs::write(&image, vec![9u8; 1000]).unwrap();
        append_image(&initrd, &image).unwrap();
        let bytes = fs::read(&initrd).unwrap();
        assert_eq!(&bytes[512..518], b"070701");
        assert!(bytes[26..512].iter().all(|&b| b == 0));
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
