//! Opening NestOS live media for reading: an extracted ISO / PXE tree as it is, an `.iso`
//! file read in place ([`super::iso`]; nothing is mounted, so `x2nestos plan` stays
//! read-only and no iso9660 driver is needed), and assembling from it what kexec loads.
//!
//! What the media says (kernel, initramfs parts, kernel arguments, the installer's prefix)
//! is decided by [`super::live`].

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{bail, Context as _};

use super::iso::{Iso, IsoTree};
use super::live::{self, Dir, LiveBoot, Tree};
use crate::convert::source::{RangedUrl, Timeouts};

/// Live media opened for reading.
pub struct Media {
    tree: Box<dyn Tree>,
}

impl Media {
    /// Opens `path`: a directory as an extracted tree, a file as an ISO 9660 image.
    pub fn open(path: &Path) -> anyhow::Result<Media> {
        let meta = fs::metadata(path).with_context(|| {
            format!(
                "live image {}: cannot be read; give a NestOS live ISO file or its extracted tree",
                path.display()
            )
        })?;
        if meta.is_dir() {
            return Ok(Media {
                tree: Box::new(Dir(path.to_owned())),
            });
        }
        let iso = Iso::open(path).map_err(|e| {
            anyhow::anyhow!(
                "live image {}: not an ISO 9660 image ({e}); give a NestOS live ISO",
                path.display()
            )
        })?;
        Ok(Media::iso(iso, path.display().to_string()))
    }

    /// Opens an ISO on an http(s) server without downloading it: read in place by ranges.
    pub fn open_url(url: &str, timeouts: Timeouts) -> anyhow::Result<Media> {
        let data =
            RangedUrl::open(url, timeouts).map_err(|e| anyhow::anyhow!("live image: {e}"))?;
        let iso = Iso::read_from(Box::new(data)).map_err(|e| {
            anyhow::anyhow!("live image {url}: not an ISO 9660 image ({e}); give a NestOS live ISO")
        })?;
        Ok(Media::iso(iso, url.to_owned()))
    }

    fn iso(iso: Iso, name: String) -> Media {
        Media {
            tree: Box::new(IsoTree { iso, name }),
        }
    }

    pub fn tree(&self) -> &dyn Tree {
        &*self.tree
    }

    /// The default boot entry, with its installer prefix and root filesystem checked.
    pub fn boot(&self) -> anyhow::Result<LiveBoot> {
        let boot = live::read_live(self.tree())?;
        boot.prefix()?;
        boot.initrd_parts(self.tree())?;
        Ok(boot)
    }

    /// Total bytes of the kernel and every initramfs part (what kexec loads into memory).
    pub fn load_bytes(&self, boot: &LiveBoot) -> anyhow::Result<u64> {
        let mut total = self.tree.size(&boot.kernel)?;
        for part in boot.initrd_parts(self.tree())? {
            total += self.tree.size(&part)?;
        }
        Ok(total)
    }

    /// Writes the kernel to `kernel_out`, and the initramfs parts then `overlay`, one after
    /// another, into `initrd_out` (the kernel unpacks every archive of a concatenated
    /// initramfs; each part keeps its own compression). Parts are padded to 4 bytes.
    pub fn assemble(
        &self,
        boot: &LiveBoot,
        overlay: &[u8],
        kernel_out: &Path,
        initrd_out: &Path,
    ) -> anyhow::Result<()> {
        self.copy(&boot.kernel, kernel_out)?;
        let mut out = io::BufWriter::new(
            fs::File::create(initrd_out)
                .with_context(|| format!("creating {}", initrd_out.display()))?,
        );
        let mut written = 0u64;
        for part in boot.initrd_parts(self.tree())? {
            let mut reader = self.tree.open(&part)?;
            written += io::copy(&mut reader, &mut out)
                .with_context(|| format!("reading {part} from {}", self.tree.describe()))?;
            let pad = (4 - written % 4) % 4;
            out.write_all(&[0u8; 3][..pad as usize])?;
            written += pad;
        }
        out.write_all(overlay)?;
        out.into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .with_context(|| format!("writing {}", initrd_out.display()))?;
        Ok(())
    }

    fn copy(&self, rel: &str, dest: &Path) -> anyhow::Result<()> {
        let mut reader = self.tree.open(rel)?;
        let mut file =
            fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
        io::copy(&mut reader, &mut file)
            .with_context(|| format!("copying {rel} from {}", self.tree.describe()))?;
        Ok(())
    }

    /// The first KiB of the live kernel: its headers (whether it is signed, why a load was
    /// refused).
    pub fn kernel_head(&self, boot: &LiveBoot) -> Vec<u8> {
        let mut head = Vec::new();
        if let Ok(r) = self.tree.open(&boot.kernel) {
            let _ = r.take(1024).read_to_end(&mut head);
        }
        head
    }
}

/// Refuses a live tree (`path` is a directory) that cannot be verified unless the admin said
/// `--insecure`.
pub fn check_verifiable(path: &Path, is_dir: bool, insecure: bool) -> anyhow::Result<()> {
    if is_dir && !insecure {
        bail!(
            "live image {}: a directory cannot be checked against a published checksum; give the .iso file with --sha256, or pass --insecure",
            path.display()
        );
    }
    Ok(())
}
