//! The one thing the image writer may write to: a block device or an existing regular file,
//! named explicitly by the caller. Nothing here picks a disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys::blockdev;

/// Sector size assumed for a regular-file target (what a loop device over it shows).
pub const FILE_SECTOR_SIZE: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTargetKind {
    BlockDevice,
    File,
}

/// A stand-in for the kernel's zeroing of a range (see [`WriteTarget::with_zeroer`]): given
/// the open target, an offset and a length.
pub type Zeroer = dyn Fn(&File, u64, u64) -> io::Result<()> + Send + Sync;

/// An opened write target with its size and logical sector size.
pub struct WriteTarget {
    path: PathBuf,
    file: File,
    kind: WriteTargetKind,
    size: u64,
    sector_size: u32,
    zeroer: Option<Box<Zeroer>>,
}

impl std::fmt::Debug for WriteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTarget")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("sector_size", &self.sector_size)
            .field("zeroer", &self.zeroer.as_ref().map(|_| "stand-in"))
            .finish()
    }
}

impl WriteTarget {
    /// Opens `path` for writing. Symlinks (such as /dev/disk/by-id names) are followed. A block
    /// device is opened exclusively (`O_EXCL`), so the kernel refuses one that is mounted or
    /// held by LVM, MD or dm-crypt. A regular file must already exist: its length is the
    /// "disk" size. Anything else is refused.
    pub fn open(path: &Path) -> io::Result<WriteTarget> {
        let meta = std::fs::metadata(path).map_err(|e| annotate(path, "looking up", e))?;
        let kind = if meta.file_type().is_block_device() {
            WriteTargetKind::BlockDevice
        } else if meta.is_file() {
            WriteTargetKind::File
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is neither a block device nor a regular file; name the disk to write",
                    path.display()
                ),
            ));
        };
        let mut options = OpenOptions::new();
        options.write(true);
        if kind == WriteTargetKind::BlockDevice {
            options.custom_flags(blockdev::OPEN_EXCLUSIVE);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::ResourceBusy {
                io::Error::new(
                    e.kind(),
                    format!(
                        "opening {} exclusively: it is in use (mounted, swap, or held by \
                         LVM/MD/dm-crypt); release it first",
                        path.display()
                    ),
                )
            } else {
                annotate(path, "opening for writing", e)
            }
        })?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| annotate(path, "measuring", e))?;
        let sector_size = match kind {
            WriteTargetKind::BlockDevice => blockdev::logical_sector_size(&file)
                .map_err(|e| annotate(path, "reading the sector size of", e))?,
            WriteTargetKind::File => FILE_SECTOR_SIZE,
        };
        Ok(WriteTarget {
            path: path.to_owned(),
            file,
            kind,
            size,
            sector_size,
            zeroer: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn kind(&self) -> WriteTargetKind {
        self.kind
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Logical sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Writes `data` at `offset` and flushes it (used to wipe what the image does not cover).
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset)?;
        self.file.sync_data()
    }

    /// Makes `len` bytes at `offset` read as zeroes without sending them: `BLKZEROOUT` on a
    /// block device, `fallocate(FALLOC_FL_ZERO_RANGE)` on a file (see [`blockdev::zero_out`]).
    /// The caller keeps the range sector-aligned and inside the target. An error means the
    /// range holds anything between its old bytes and zeroes; the caller writes it itself.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if let Some(zeroer) = &self.zeroer {
            return zeroer(&self.file, offset, len);
        }
        match self.kind {
            WriteTargetKind::BlockDevice => blockdev::zero_out(&self.file, offset, len),
            WriteTargetKind::File => blockdev::zero_file_range(&self.file, offset, len),
        }
    }

    /// Replaces the kernel's zeroing by `zeroer`: the seam where a test plays a device that
    /// refuses write-zeroes, or one that fails half-way through a range.
    pub fn with_zeroer(
        mut self,
        zeroer: impl Fn(&File, u64, u64) -> io::Result<()> + Send + Sync + 'static,
    ) -> WriteTarget {
        self.zeroer = Some(Box::new(zeroer));
        self
    }

    /// Asks the kernel to read the partition table again (`BLKRRPART`); nothing to do for a
    /// file. A device whose kernel shows no partitions (a loop device without partition
    /// scanning) answers EINVAL, which is not an error here.
    pub fn reread_partitions(&self) -> io::Result<()> {
        if self.kind != WriteTargetKind::BlockDevice {
            return Ok(());
        }
        match blockdev::reread_partitions(&self.file) {
            Err(e) if e.kind() != io::ErrorKind::InvalidInput => {
                Err(annotate(&self.path, "re-reading the partition table of", e))
            }
            _ => Ok(()),
        }
    }

    /// Pretends a file target has another sector size (a 4Kn disk image file, say).
    pub fn with_sector_size(mut self, sector_size: u32) -> WriteTarget {
        if self.kind == WriteTargetKind::File {
            self.sector_size = sector_size;
        }
        self
    }
}

fn annotate(path: &Path, action: &str, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{action} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_target_has_its_length_as_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let target = WriteTarget::open(&path).unwrap();
        assert_eq!(target.size(), 8192);
        assert_eq!(target.sector_size(), 512);
        assert_eq!(target.kind(), WriteTargetKind::File);
        assert_eq!(target.with_sector_size(4096).sector_size(), 4096);
    }

    #[test]
    fn missing_paths_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = WriteTarget::open(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with("looking up ") && err.contains("nope"),
            "{err}"
        );
        assert!(!missing.exists(), "a missing target is never created");
        let err = WriteTarget::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("neither a block device nor a regular file"),
            "{err}"
        );
        let err = WriteTarget::open(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither a block device"), "{err}");
    }
}
