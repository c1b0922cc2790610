//! The boot loader stand-in: QEMU boots the kernel directly, and this module chooses what,
//! the way a BLS-aware boot loader (GRUB's blscfg, systemd-boot) would: it reads the entries
//! OSTree wrote in the disk's `boot` partition and takes the default one (highest `version`).
//!
//! The partition is read in user space from the scenario's own qcow2 overlay (`qemu-img dd`,
//! then `debugfs`), so what boots next is exactly what the guest left on its disk.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::cmd::run;

/// One Boot Loader Specification entry (`/loader/entries/*.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub file: String,
    pub title: String,
    pub version: u64,
    pub linux: String,
    pub initrd: String,
    pub options: String,
}

/// Parses an entry; keys this bench does not boot with are ignored.
pub fn parse_entry(file: &str, text: &str) -> Result<BootEntry> {
    let mut e = BootEntry {
        file: file.to_string(),
        title: String::new(),
        version: 0,
        linux: String::new(),
        initrd: String::new(),
        options: String::new(),
    };
    for line in text.lines() {
        let line = line.trim();
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "title" => e.title = value.to_string(),
            "version" => {
                e.version = value
                    .parse()
                    .with_context(|| format!("boot entry {file}: version {value:?}"))?
            }
            "linux" => e.linux = value.to_string(),
            "initrd" => e.initrd = value.to_string(),
            "options" => e.options = value.to_string(),
            _ => {}
        }
    }
    if e.linux.is_empty() {
        bail!("boot entry {file} has no `linux` line");
    }
    Ok(e)
}

/// The entry a BLS boot loader boots by default: the highest version.
pub fn default_entry(entries: &[BootEntry]) -> Option<&BootEntry> {
    entries.iter().max_by_key(|e| e.version)
}

/// An ext4 partition copied out of a disk image, read with debugfs.
pub struct Partition {
    pub raw: PathBuf,
}

impl Partition {
    /// Copies `size` bytes at `offset` (both MiB-aligned) out of the qcow2 `disk` into `raw`.
    pub fn extract(disk: &Path, offset: u64, size: u64, raw: &Path) -> Result<Partition> {
        const MIB: u64 = 1 << 20;
        if offset % MIB != 0 || size % MIB != 0 {
            bail!("partition at {offset}+{size} is not MiB-aligned");
        }
        let _ = fs::remove_file(raw);
        run(Command::new("qemu-img").args([
            "dd".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            "bs=1M".as_ref(),
            format!("skip={}", offset / MIB).as_ref(),
            format!("count={}", size / MIB).as_ref(),
            os_arg("if=", disk).as_os_str(),
            os_arg("of=", raw).as_os_str(),
        ]))?;
        Ok(Partition {
            raw: raw.to_path_buf(),
        })
    }

    fn debugfs(&self, write: bool, request: &str) -> Result<Vec<u8>> {
        let mut c = Command::new("debugfs");
        if write {
            c.arg("-w");
        }
        c.arg("-R").arg(request).arg(&self.raw);
        let out = run(&mut c)?;
        Ok(out.stdout)
    }

    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.debugfs(false, &format!("cat {path}"))
            .with_context(|| format!("reading {path} from {}", self.raw.display()))
    }

    /// Names in a directory (debugfs `ls -p`: `/inode/mode/uid/gid/name/size/`).
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let out = self.debugfs(false, &format!("ls -p {dir}"))?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect())
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        let out = self.debugfs(false, &format!("stat {path}"))?;
        Ok(String::from_utf8_lossy(&out).contains("Inode:"))
    }

    /// Writes `data` at `path` (replacing it), mode 0600 — Ignition configs carry secrets.
    pub fn write_secret(&self, path: &str, data: &[u8], scratch: &Path) -> Result<()> {
        fs::write(scratch, data).with_context(|| format!("writing {}", scratch.display()))?;
        let _ = self.debugfs(true, &format!("rm {path}"));
        self.debugfs(true, &format!("write {} {path}", scratch.display()))?;
        self.debugfs(true, &format!("sif {path} mode 0100600"))?;
        if !self.exists(path)? {
            bail!("{path} did not appear in {}", self.raw.display());
        }
        Ok(())
    }

    /// Writes this partition back into the qcow2 `disk` at `offset`.
    pub fn write_back(&self, disk: &Path, offset: u64) -> Result<()> {
        let len = fs::metadata(&self.raw)?.len();
        run(Command::new("qemu-io").args([
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-c".as_ref(),
            format!("write -q -s {} {offset} {len}", self.raw.display()).as_ref(),
            disk.as_os_str(),
        ]))?;
        Ok(())
    }
}

fn os_arg(prefix: &str, p: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(prefix);
    s.push(p);
    s
}

/// What to boot: files on the host plus the kernel command line.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub entry: BootEntry,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Reads the default BLS entry from a boot partition and copies its kernel (uncompressed, see
/// [`extract_vmlinux`]) and initramfs into `dir`.
pub fn load_default(part: &Partition, dir: &Path) -> Result<BootFiles> {
    let mut entries = Vec::new();
    for name in part.list("/loader/entries")? {
        if name.ends_with(".conf") {
            let path = format!("/loader/entries/{name}");
            let text = String::from_utf8(part.read(&path)?)
                .with_context(|| format!("{path} is not UTF-8"))?;
            entries.push(parse_entry(&name, &text)?);
        }
    }
    let entry = default_entry(&entries)
        .with_context(|| format!("no boot entries in {}", part.raw.display()))?
        .clone();
    fs::create_dir_all(dir)?;
    let vmlinuz = part.read(&entry.linux)?;
    let kernel = dir.join("vmlinux");
    extract_vmlinux(&vmlinuz, &kernel)?;
    let initrd = dir.join("initrd.img");
    fs::write(&initrd, part.read(&entry.initrd)?)?;
    Ok(BootFiles {
        entry,
        kernel,
        initrd,
    })
}

/// Writes the uncompressed kernel inside a bzImage: QEMU boots it through PVH, which skips the
/// in-guest decompression that costs seconds under emulation.
pub fn extract_vmlinux(bzimage: &[u8], out: &Path) -> Result<()> {
    const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
    let at = bzimage
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("kernel image has no xz payload")?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting xz (install xz-utils)")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = bzimage[at..].to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&payload));
    let mut data = Vec::new();
    child
        .stdout
        .take()
        .context("xz stdout")?
        .read_to_end(&mut data)?;
    let status = child.wait()?;
    let _ = feeder.join();
    if !status.success() || data.len() < 4 || &data[..4] != b"\x7fELF" {
        bail!("decompressing the kernel with xz failed ({status})");
    }
    fs::write(out, data).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OSTREE_ENTRY: &str = "title Housekeeper test OS 2 (ostree:testos:0)\n\
        version 2\n\
        options root=LABEL=root rw console=ttyS0 ostree=/ostree/boot.1/testos/abc/0\n\
        linux /ostree/testos-abc/vmlinuz-6.1.0-56-amd64\n\
        initrd /ostree/testos-abc/initramfs-6.1.0-56-amd64.img\n";

    #[test]
    fn parses_an_ostree_entry() {
        let e = parse_entry("ostree-2-testos.conf", OSTREE_ENTRY).unwrap();
        assert_eq!(e.version, 2);
        assert_eq!(e.linux, "/ostree/testos-abc/vmlinuz-6.1.0-56-amd64");
        assert!(e.options.contains("ostree=/ostree/boot.1/testos/abc/0"));
    }

    #[test]
    fn default_is_highest_version() {
        let a = parse_entry("a.conf", "version 1\nlinux /a\n").unwrap();
        let b = parse_entry("b.conf", "version 2\nlinux /b\n").unwrap();
        assert_eq!(default_entry(&[a, b.clone()]), Some(&b));
    }

    #[test]
    fn entry_without_kernel_is_an_error() {
        assert!(parse_entry("x.conf", "version 1\n").is_err());
    }
}
