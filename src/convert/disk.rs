//! Which whole disk the admin named, and what else lives on it.
//!
//! Reads a sysfs tree and /dev/disk/by-id and by-path links below a root directory (`/` on a
//! machine, a temp dir in tests) and parses /proc/self/mountinfo and /proc/swaps from text.
//! Device names change order between boots, so the disk is described by by-id and by-path
//! names, serial and size too, and by its [`Mark`] — the partition table's id and a digest of
//! its first MiB, the only thing here that opens a device (read-only, [`read_mark`]). The
//! installer finds the disk again after kexec by these and re-checks them: two disks of one
//! size without serial or stable names are told apart by their marks, or not written at all.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// A whole disk and what is on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name: `vda`, `sda`, `nvme0n1`.
    pub name: String,
    /// `major:minor`.
    pub dev: String,
    /// Names under /dev/disk/by-id pointing at it, sorted.
    pub by_id: Vec<String>,
    /// Names under /dev/disk/by-path pointing at it (where it sits on its bus), sorted.
    pub by_path: Vec<String>,
    pub serial: Option<String>,
    pub size_bytes: u64,
    pub logical_sector_size: u32,
    pub partitions: Vec<Partition>,
    /// Devices stacked on the disk or its partitions (LVM, MD, dm-crypt).
    pub holders: Vec<Holder>,
    /// What its first MiB says, once read ([`read_mark`]); `None` until then.
    pub mark: Option<Mark>,
}

/// What a disk's first MiB says about it: its partition table's id and a digest of the MiB.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// `gpt:` and the disk GUID, `dos:` and the MBR disk signature; `None` without a table.
    pub table: Option<String>,
    /// SHA-256 of the first MiB (or the whole disk, when smaller), hex.
    pub first_mib_sha256: String,
}

impl Mark {
    /// Reads the mark from a disk's first bytes (`head`, up to 1 MiB) with `sector` bytes per
    /// logical sector. Pure.
    pub fn of(head: &[u8], sector: usize) -> Mark {
        use sha2::{Digest, Sha256};
        Mark {
            table: gpt_guid(head, sector)
                .map(|g| format!("gpt:{g}"))
                .or_else(|| mbr_id(head).map(|id| format!("dos:{id:08x}"))),
            first_mib_sha256: hex::encode(Sha256::digest(head)),
        }
    }

    /// For people: the table id, else the digest's start.
    pub fn describe(&self) -> String {
        match &self.table {
            Some(t) => t.clone(),
            None => format!(
                "no partition table, first MiB sha256 {}…",
                self.first_mib_sha256
                    .get(..16)
                    .unwrap_or(&self.first_mib_sha256)
            ),
        }
    }
}

/// The GUID of a GPT whose header is in LBA 1 (`EFI PART`), in its usual text form.
fn gpt_guid(head: &[u8], sector: usize) -> Option<String> {
    let h = head.get(sector..sector + 72)?;
    if &h[..8] != b"EFI PART" {
        return None;
    }
    let g = &h[56..72];
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}",
        g[3],
        g[2],
        g[1],
        g[0],
        g[5],
        g[4],
        g[7],
        g[6],
        g[8],
        g[9],
        hex::encode(&g[10..16])
    ))
}

/// The disk signature of an MBR (boot signature 0x55AA), when it is not zero.
fn mbr_id(head: &[u8]) -> Option<u32> {
    let mbr = head.get(..512)?;
    if mbr[510..512] != [0x55, 0xaa] {
        return None;
    }
    let id = u32::from_le_bytes(mbr[440..444].try_into().ok()?);
    (id != 0).then_some(id)
}

/// How much of a disk its [`Mark`] covers.
pub const MARK_BYTES: usize = 1 << 20;

/// Reads `disk`'s first MiB from `/dev/NAME` below `root` (read-only) and returns its mark.
pub fn read_mark(root: &Path, disk: &Disk) -> std::io::Result<Mark> {
    use std::io::Read;
    let len = MARK_BYTES.min(disk.size_bytes as usize);
    let mut head = vec![0u8; len];
    fs::File::open(root.join("dev").join(&disk.name))?.read_exact(&mut head)?;
    Ok(Mark::of(&head, disk.logical_sector_size.max(512) as usize))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub dev: String,
    pub number: u32,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `dm-0`, `md127`.
    pub name: String,
    pub dev: String,
    pub kind: HolderKind,
    /// The disk or partition it sits on.
    pub on: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderKind {
    Lvm,
    Md,
    Crypt,
    OtherDm,
    Other,
}

impl HolderKind {
    fn describe(self) -> &'static str {
        match self {
            HolderKind::Lvm => "LVM",
            HolderKind::Md => "MD RAID",
            HolderKind::Crypt => "LUKS/dm-crypt",
            HolderKind::OtherDm => "device-mapper",
            HolderKind::Other => "a stacked device",
        }
    }
}

/// Why a named disk cannot be the target. One line each: what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is not a device path; name the disk as /dev/NAME or /dev/disk/by-id/ID")]
    NotADevicePath(String),
    #[error("{0}: no such block device; list the disks with `lsblk -d`")]
    NotFound(String),
    #[error("{name} is a partition of {disk}; name the whole disk, /dev/{disk}")]
    Partition { name: String, disk: String },
    #[error("reading {path}: {error}")]
    Unreadable { path: String, error: String },
    #[error("/dev/{disk} is in use and does not hold the running system: {what}; unmount or stop it first")]
    InUse { disk: String, what: String },
}

/// Resolves `named` (`/dev/vda`, `/dev/disk/by-id/…`) to a whole disk, reading below `root`.
pub fn resolve(root: &Path, named: &str) -> Result<Disk, Refusal> {
    let name = kernel_name(root, named)?;
    let class = root.join("sys/class/block").join(&name);
    if !class.exists() {
        return Err(Refusal::NotFound(named.to_owned()));
    }
    let dir = canonical(&class)?;
    if dir.join("partition").exists() {
        let disk = dir
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(Refusal::Partition { name, disk });
    }
    let mut partitions = Vec::new();
    let mut holders = holders_of(root, &dir, &name)?;
    for entry in read_dir(&dir)? {
        let path = dir.join(&entry);
        if path.join("partition").exists() {
            partitions.push(Partition {
                number: read_trimmed(&path.join("partition"))?.parse().unwrap_or(0),
                dev: read_trimmed(&path.join("dev"))?,
                size_bytes: sectors(&path)?,
                name: entry.clone(),
            });
            holders.extend(holders_of(root, &path, &entry)?);
        }
    }
    partitions.sort_by_key(|p| p.number);
    let serial = ["device/serial", "device/wwid", "serial"]
        .iter()
        .find_map(|f| read_trimmed(&dir.join(f)).ok())
        .filter(|s| !s.is_empty());
    Ok(Disk {
        dev: read_trimmed(&dir.join("dev"))?,
        by_id: links(root, "by-id", &name),
        by_path: links(root, "by-path", &name),
        serial,
        size_bytes: sectors(&dir)?,
        logical_sector_size: read_trimmed(&dir.join("queue/logical_block_size"))?
            .parse()
            .unwrap_or(512),
        partitions,
        holders,
        name,
        mark: None,
    })
}

/// Every whole disk below `root`'s `/sys/block` that resolves (marks not read).
pub fn all(root: &Path) -> Vec<Disk> {
    let mut out: Vec<Disk> = fs::read_dir(root.join("sys/block"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| resolve(root, &format!("/dev/{}", e.file_name().to_string_lossy())).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The kernel name (`vda`) behind a /dev path, following /dev/disk/* links below `root`.
fn kernel_name(root: &Path, named: &str) -> Result<String, Refusal> {
    let Some(rest) = named.strip_prefix("/dev/") else {
        return Err(Refusal::NotADevicePath(named.to_owned()));
    };
    let given = root.join("dev").join(rest);
    if rest.starts_with("disk/") && fs::symlink_metadata(&given).is_err() {
        return Err(Refusal::NotFound(named.to_owned()));
    }
    let mut path = given;
    for _ in 0..8 {
        match fs::read_link(&path) {
            Ok(target) => {
                let parent = path.parent().unwrap_or(root).to_path_buf();
                path = parent.join(target);
            }
            Err(_) => break,
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Refusal::NotFound(named.to_owned()))?;
    Ok(name)
}

/// The names under `/dev/disk/KIND` (below `root`) that point at the device `name`, sorted.
fn links(root: &Path, kind: &str, name: &str) -> Vec<String> {
    let dir = root.join("dev/disk").join(kind);
    let mut ids: Vec<String> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            fs::read_link(e.path())
                .ok()
                .and_then(|t| t.file_name().map(|n| n == name))
                .unwrap_or(false)
        })
        .map(|e| format!("/dev/disk/{kind}/{}", e.file_name().to_string_lossy()))
        .collect();
    ids.sort();
    ids
}

fn holders_of(root: &Path, dir: &Path, on: &str) -> Result<Vec<Holder>, Refusal> {
    let mut out = Vec::new();
    let holders = dir.join("holders");
    if !holders.exists() {
        return Ok(out);
    }
    for name in read_dir(&holders)? {
        let class = root.join("sys/class/block").join(&name);
        let uuid = read_trimmed(&class.join("dm/uuid")).unwrap_or_default();
        let kind = if uuid.starts_with("LVM-") {
            HolderKind::Lvm
        } else if uuid.starts_with("CRYPT-") {
            HolderKind::Crypt
        } else if name.starts_with("md") {
            HolderKind::Md
        } else if name.starts_with("dm-") {
            HolderKind::OtherDm
        } else {
            HolderKind::Other
        };
        out.push(Holder {
            dev: read_trimmed(&class.join("dev")).unwrap_or_default(),
            name,
            kind,
            on: on.to_owned(),
        });
    }
    Ok(out)
}

fn canonical(path: &Path) -> Result<PathBuf, Refusal> {
    fs::canonicalize(path).map_err(|e| unreadable(path, e))
}

fn read_dir(dir: &Path) -> Result<Vec<String>, Refusal> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| unreadable(dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn read_trimmed(path: &Path) -> Result<String, Refusal> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| unreadable(path, e))
}

/// sysfs `size` is always in 512-byte units, whatever the sector size.
fn sectors(dir: &Path) -> Result<u64, Refusal> {
    let text = read_trimmed(&dir.join("size"))?;
    text.parse::<u64>()
        .map(|s| s * 512)
        .map_err(|_| unreadable(&dir.join("size"), format!("{text:?} is not a number")))
}

fn unreadable(path: &Path, error: impl ToString) -> Refusal {
    Refusal::Unreadable {
        path: path.display().to_string(),
        error: error.to_string(),
    }
}

/// Something on the disk that is in use now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    Mount {
        device: String,
        mountpoint: String,
        fstype: String,
    },
    Swap {
        device: String,
    },
}

/// What of `disk` is mounted or swapped on, from the text of /proc/self/mountinfo and
/// /proc/swaps. Devices are matched by `major:minor` for mounts and by name for swap.
pub fn uses(disk: &Disk, mountinfo: &str, swaps: &str) -> Vec<Use> {
    let mut devs: Vec<(&str, &str)> = vec![(disk.dev.as_str(), disk.name.as_str())];
    devs.extend(
        disk.partitions
            .iter()
            .map(|p| (p.dev.as_str(), p.name.as_str())),
    );
    devs.extend(
        disk.holders
            .iter()
            .map(|h| (h.dev.as_str(), h.name.as_str())),
    );
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(majmin), Some(mountpoint)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if let Some((_, name)) = devs.iter().find(|(dev, _)| dev == majmin) {
            out.push(Use::Mount {
                device: (*name).to_owned(),
                mountpoint: unescape(mountpoint),
                fstype: fields.get(dash + 1).copied().unwrap_or_default().to_owned(),
            });
        }
    }
    for line in swaps.lines().skip(1) {
        let Some(file) = line.split_whitespace().next() else {
            continue;
        };
        let base = file.rsplit('/').next().unwrap_or(file);
        if devs.iter().any(|(_, name)| *name == base) {
            out.push(Use::Swap {
                device: base.to_owned(),
            });
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether the disk holds the running system (its `/` is on it, directly or stacked).
pub fn holds_root(uses: &[Use]) -> bool {
    uses.iter()
        .any(|u| matches!(u, Use::Mount { mountpoint, .. } if mountpoint == "/"))
}

/// The disk may be the target when it holds the running system (all of that is replaced) or
/// nothing on it is in use. A data disk that is mounted, swapped on or stacked is refused.
pub fn check_in_use(disk: &Disk, uses: &[Use]) -> Result<(), Refusal> {
    if holds_root(uses) {
        return Ok(());
    }
    let mut what: BTreeSet<String> = BTreeSet::new();
    for u in uses {
        what.insert(match u {
            Use::Mount {
                device, mountpoint, ..
            } => format!("{device} mounted on {mountpoint}"),
            Use::Swap { device } => format!("{device} is swap"),
        });
    }
    for h in &disk.holders {
        what.insert(format!("{} holds {} ({})", h.on, h.name, h.kind.describe()));
    }
    if what.is_empty() {
        Ok(())
    } else {
        Err(Refusal::InUse {
            disk: disk.name.clone(),
            what: what.into_iter().collect::<Vec<_>>().join(", "),
        })
    }
}

/// One line per thing that will be destroyed, for the plan.
pub fn describe(disk: &Disk, uses: &[Use]) -> Vec<String> {
    let mut lines = vec![format!(
        "/dev/{} ({} bytes, {}-byte sectors, serial {}{})",
        disk.name,
        disk.size_bytes,
        disk.logical_sector_size,
        disk.serial.as_deref().unwrap_or("unknown"),
        disk.by_id
            .first()
            .into_iter()
            .chain(disk.by_path.first())
            .map(|id| format!(", {id}"))
            .chain(disk.mark.as_ref().map(|m| format!(", {}", m.describe())))
            .collect::<String>()
    )];
    for p in &disk.partitions {
        lines.push(format!("partition {} ({} bytes)", p.name, p.size_bytes));
    }
    for h in &disk.holders {
        lines.push(format!("{} on {} ({})", h.name, h.on, h.kind.describe()));
    }
    for u in uses {
        lines.push(match u {
            Use::Mount {
                device,
                mountpoint,
                fstype,
            } => format!("{device} mounted on {mountpoint} ({fstype})"),
            Use::Swap { device } => format!("{device} in use as swap"),
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fixture root laid out like a machine's /sys and /dev.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn root(&self) -> &Path {
            self.dir.path()
        }
        fn write(&self, rel: &str, text: &str) {
            let path = self.root().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("{text}\n")).unwrap();
        }
        /// A disk under a device path, linked from /sys/class/block like the kernel does.
        fn disk(
            &self,
            name: &str,
            dev: &str,
            sectors: u64,
            sector_size: u32,
            serial: &str,
        ) -> String {
            let base = format!("sys/devices/pci0000:00/0000:00:04.0/virtio2/block/{name}");
            self.write(&format!("{base}/dev"), dev);
            self.write(&format!("{base}/size"), &sectors.to_string());
            self.write(
                &format!("{base}/queue/logical_block_size"),
                &sector_size.to_string(),
            );
            if !serial.is_empty() {
                self.write(&format!("{base}/device/serial"), serial);
            }
            fs::create_dir_all(self.root().join(&base).join("holders")).unwrap();
            self.class_link(name, &base);
            base
        }
        fn partition(
            &self,
            disk_base: &str,
            name: &str,
            dev: &str,
            number: u32,
            sectors: u64,
        ) -> String {
            let base = format!("{disk_base}/{name}");
            self.write(&format!("{base}/dev"), dev);
            self.write(&format!("{base}/size"), &sectors.to_string());
            self.write(&format!("{base}/partition"), &number.to_string());
            fs::create_dir_all(self.root().join(&base).join("holders")).unwrap();
            self.class_link(name, &base);
            base
        }
        fn holder(&self, on_base: &str, name: &str, dev: &str, uuid: &str) {
            let base = format!("sys/devices/virtual/block/{name}");
            self.write(&format!("{base}/dev"), dev);
            if !uuid.is_empty() {
                self.write(&format!("{base}/dm/uuid"), uuid);
            }
            self.class_link(name, &base);
            symlink(
                self.root().join(&base),
                self.root().join(on_base).join("holders").join(name),
            )
            .unwrap();
        }
        fn class_link(&self, name: &str, base: &str) {
            let class = self.root().join("sys/class/block");
            fs::create_dir_all(&class).unwrap();
            symlink(format!("../../../{base}"), class.join(name)).unwrap();
        }
        fn by_id(&self, id: &str, name: &str) {
            let dir = self.root().join("dev/disk/by-id");
            fs::create_dir_all(&dir).unwrap();
            symlink(format!("../../{name}"), dir.join(id)).unwrap();
        }
    }

    /// A VM disk: vda with an EFI partition, /boot, and LVM holding / and swap.
    fn vm() -> Tree {
        let t = Tree::new();
        let vda = t.disk("vda", "252:0", 41_943_040, 512, "HK-SERIAL-1");
        t.partition(&vda, "vda1", "252:1", 1, 1_048_576);
        t.partition(&vda, "vda2", "252:2", 2, 2_097_152);
        let vda3 = t.partition(&vda, "vda3", "252:3", 3, 38_795_264);
        t.holder(&vda3, "dm-0", "253:0", "LVM-abcdef");
        t.holder(&vda3, "dm-1", "253:1", "LVM-123456");
        t.by_id("virtio-HK-SERIAL-1", "vda");
        t.by_id("virtio-HK-SERIAL-1-part1", "vda1");
        t.disk("vdb", "252:16", 2_097_152, 4096, "");
        t.by_id("virtio-data", "vdb");
        t
    }

    const MOUNTINFO: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw
23 22 252:2 / /boot rw,relatime shared:2 - ext4 /dev/vda2 rw
24 23 252:1 / /boot/efi rw,relatime shared:3 - vfat /dev/vda1 rw
25 22 0:21 / /proc rw,nosuid - proc proc rw
26 22 252:16 / /srv/my\\040data rw - xfs /dev/vdb rw
";
    const SWAPS: &str = "\
Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/dm-1                               partition\t2097148\t\t0\t\t-2
";

    #[test]
    fn a_disk_by_path_and_by_id_resolves_the_same() {
        let t = vm();
        let by_path = resolve(t.root(), "/dev/vda").unwrap();
        let by_id = resolve(t.root(), "/dev/disk/by-id/virtio-HK-SERIAL-1").unwrap();
        assert_eq!(by_path, by_id);
        assert_eq!(by_path.serial.as_deref(), Some("HK-SERIAL-1"));
        assert_eq!(by_path.size_bytes, 20 << 30);
        assert_eq!(by_path.logical_sector_size, 512);
        assert_eq!(by_path.by_id, ["/dev/disk/by-id/virtio-HK-SERIAL-1"]);
        let parts: Vec<_> = by_path
            .partitions
            .iter()
            .map(|p| (p.name.as_str(), p.number))
            .collect();
        assert_eq!(parts, [("vda1", 1), ("vda2", 2), ("vda3", 3)]);
        let holders: Vec<_> = by_path
            .holders
            .iter()
            .map(|h| (h.name.as_str(), h.kind, h.on.as_str()))
            .collect();
        assert_eq!(
            holders,
            [
                ("dm-0", HolderKind::Lvm, "vda3"),
                ("dm-1", HolderKind::Lvm, "vda3")
            ]
        );
    }

    #[test]
    fn a_4kn_disk_without_serial() {
        let disk = resolve(vm().root(), "/dev/vdb").unwrap();
        assert_eq!(disk.logical_sector_size, 4096);
        assert_eq!(disk.serial, None);
        assert_eq!(
            disk.size_bytes,
            1 << 30,
            "sysfs size counts 512-byte units even on 4Kn"
        );
    }

    #[test]
    fn names_that_are_refused() {
        let t = vm();
        let msg = |name: &str| resolve(t.root(), name).unwrap_err().to_string();
        assert_eq!(
            msg("/dev/vda3"),
            "vda3 is a partition of vda; name the whole disk, /dev/vda"
        );
        assert_eq!(
            msg("/dev/disk/by-id/virtio-HK-SERIAL-1-part1"),
            "vda1 is a partition of vda; name the whole disk, /dev/vda"
        );
        assert_eq!(
            msg("/dev/sdz"),
            "/dev/sdz: no such block device; list the disks with `lsblk -d`"
        );
        assert_eq!(
            msg("/dev/disk/by-id/nope"),
            "/dev/disk/by-id/nope: no such block device; list the disks with `lsblk -d`"
        );
        assert!(msg("vda").starts_with("vda is not a device path"));
    }

    #[test]
    fn the_system_disk_lists_what_will_be_destroyed() {
        let t = vm();
        let disk = resolve(t.root(), "/dev/vda").unwrap();
        let uses = uses(&disk, MOUNTINFO, SWAPS);
        assert!(holds_root(&uses));
        assert_eq!(check_in_use(&disk, &uses), Ok(()));
        assert_eq!(
            describe(&disk, &uses),
            [
                "/dev/vda (21474836480 bytes, 512-byte sectors, serial HK-SERIAL-1, /dev/disk/by-id/virtio-HK-SERIAL-1)",
                "partition vda1 (536870912 bytes)",
                "partition vda2 (1073741824 bytes)",
                "partition vda3 (19863175168 bytes)",
                "dm-0 on vda3 (LVM)",
                "dm-1 on vda3 (LVM)",
                "dm-0 mounted on / (ext4)",
                "vda2 mounted on /boot (ext4)",
                "vda1 mounted on /boot/efi (vfat)",
                "dm-1 in use as swap",
            ]
        );
    }

    #[test]
    fn a_mounted_data_disk_is_refused() {
        let t = vm();
        let disk = resolve(t.root(), "/dev/vdb").unwrap();
        let uses = uses(&disk, MOUNTINFO, SWAPS);
        assert_eq!(
            check_in_use(&disk, &uses).unwrap_err().to_string(),
            "/dev/vdb is in use and does not hold the running system: vdb mounted on /srv/my data; unmount or stop it first"
        );
        // Unmounted, it is fine.
        assert_eq!(check_in_use(&disk, &[]), Ok(()));
    }

    #[test]
    fn a_data_disk_held_by_md_or_crypt_is_refused() {
        let t = Tree::new();
        let sdb = t.disk("sdb", "8:16", 2_097_152, 512, "S1");
        t.holder(&sdb, "md127", "9:127", "");
        let sdc = t.disk("sdc", "8:32", 2_097_152, 512, "S2");
        let sdc1 = t.partition(&sdc, "sdc1", "8:33", 1, 2_000_000);
        t.holder(&sdc1, "dm-2", "253:2", "CRYPT-LUKS2-aaaa-luks");
        let md = resolve(t.root(), "/dev/sdb").unwrap();
        assert!(check_in_use(&md, &[])
            .unwrap_err()
            .to_string()
            .contains("sdb holds md127 (MD RAID)"));
        let crypt = resolve(t.root(), "/dev/sdc").unwrap();
        assert!(check_in_use(&crypt, &[])
            .unwrap_err()
            .to_string()
            .contains("sdc1 holds dm-2 (LUKS/dm-crypt)"));
    }

    #[test]
    fn a_mark_names_the_table_and_digests_the_first_mib() {
        let mut head = vec![0u8; 64 << 10];
        let blank = Mark::of(&head, 512);
        assert_eq!(blank.table, None);
        assert!(blank
            .describe()
            .starts_with("no partition table, first MiB sha256 "));
        // An MBR with a disk signature.
        head[440..444].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        head[510] = 0x55;
        head[511] = 0xaa;
        let dos = Mark::of(&head, 512);
        assert_eq!(dos.table.as_deref(), Some("dos:1234abcd"));
        assert_ne!(dos.first_mib_sha256, blank.first_mib_sha256);
        // A GPT header in LBA 1 wins over its protective MBR; the GUID's first three fields
        // are little-endian on disk.
        head[512..520].copy_from_slice(b"EFI PART");
        head[512 + 56..512 + 72].copy_from_slice(&[
            0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        assert_eq!(
            Mark::of(&head, 512).table.as_deref(),
            Some("gpt:12345678-9abc-def0-0123-456789abcdef")
        );
        // On a 4Kn disk LBA 1 is at 4096.
        assert_eq!(Mark::of(&head, 4096).table.as_deref(), Some("dos:1234abcd"));
        // A plan's mark is read back from JSON: a short digest is described, not sliced.
        let short = Mark {
            table: None,
            first_mib_sha256: "ab".into(),
        };
        assert_eq!(short.describe(), "no partition table, first MiB sha256 ab…");
        // Short or empty input: no table, no panic.
        assert_eq!(Mark::of(&head[..100], 512).table, None);
        assert_eq!(Mark::of(&[], 512).table, None);
    }

    #[test]
    fn this_machines_mountinfo_parses() {
        // Real text from /proc: whatever is mounted, parsing it must not panic, and a disk
        // that does not exist matches nothing.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let swaps = fs::read_to_string("/proc/swaps").unwrap();
        let disk = Disk {
            name: "nonexistent".into(),
            dev: "4095:4095".into(),
            by_id: vec![],
            by_path: vec![],
            serial: None,
            size_bytes: 0,
            logical_sector_size: 512,
            partitions: vec![],
            holders: vec![],
            mark: None,
        };
        assert_eq!(uses(&disk, &mountinfo, &swaps), vec![]);
    }
}
