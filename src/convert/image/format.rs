//! Telling an image's compression from its first bytes (never from its file name: a URL
//! may lie, and `.raw` files are sometimes compressed).

use std::fmt;

/// The compression of an image stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xz,
    Gzip,
    Zstd,
    /// Not compressed: the bytes are the disk.
    Raw,
}

const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];
const GZIP_MAGIC: &[u8] = &[0x1F, 0x8B];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];

/// How many leading bytes [`sniff`] needs to decide.
pub const SNIFF_LEN: usize = 6;

/// The format of a stream starting with `head`. A head shorter than [`SNIFF_LEN`] is only
/// called compressed when it holds a whole magic number.
pub fn sniff(head: &[u8]) -> Format {
    if head.starts_with(XZ_MAGIC) {
        Format::Xz
    } else if head.starts_with(ZSTD_MAGIC) {
        Format::Zstd
    } else if head.starts_with(GZIP_MAGIC) {
        Format::Gzip
    } else {
        Format::Raw
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Xz => "xz",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Raw => "raw",
        })
    }
}

/// The logical sector size an image was built for, read from its GPT header: "EFI PART" at
/// LBA 1, which is byte 512 on a 512-byte-sector disk and byte 4096 on a 4Kn disk. `None`
/// when the head holds no GPT (an MBR-only or unpartitioned image fits any sector size).
pub fn gpt_sector_size(first_mib: &[u8]) -> Option<u32> {
    const SIGNATURE: &[u8] = b"EFI PART";
    [512u32, 4096].into_iter().find(|&size| {
        first_mib
            .get(size as usize..)
            .is_some_and(|rest| rest.starts_with(SIGNATURE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers_decide() {
        assert_eq!(sniff(&[0xFD, b'7', b'z', b'X', b'Z', 0, 0, 4]), Format::Xz);
        assert_eq!(sniff(&[0x1F, 0x8B, 8, 0]), Format::Gzip);
        assert_eq!(sniff(&[0x28, 0xB5, 0x2F, 0xFD, 0x24]), Format::Zstd);
        assert_eq!(sniff(&[0u8; 512]), Format::Raw);
        assert_eq!(
            sniff(b"\xEB\x63\x90"),
            Format::Raw,
            "an MBR boot jump is raw"
        );
    }

    #[test]
    fn short_or_partial_magic_is_raw() {
        assert_eq!(sniff(&[]), Format::Raw);
        assert_eq!(sniff(&[0xFD, b'7', b'z']), Format::Raw);
        assert_eq!(sniff(&[0x28, 0xB5]), Format::Raw);
    }

    #[test]
    fn real_compressors_are_recognised() {
        let data = b"hello image".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        assert_eq!(sniff(&gz.finish().unwrap()), Format::Gzip);
        assert_eq!(
            sniff(&zstd::encode_all(&data[..], 1).unwrap()),
            Format::Zstd
        );
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut xz, &data).unwrap();
        assert_eq!(sniff(&xz.finish().unwrap()), Format::Xz);
    }

    #[test]
    fn gpt_sector_size_from_header_position() {
        let mut head = vec![0u8; 1 << 20];
        assert_eq!(gpt_sector_size(&head), None);
        head[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(gpt_sector_size(&head), Some(512));
        let mut head4k = vec![0u8; 1 << 20];
        head4k[4096..4104].copy_from_slice(b"EFI PART");
        assert_eq!(gpt_sector_size(&head4k), Some(4096));
        assert_eq!(gpt_sector_size(&head4k[..100]), None);
    }
}
