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

/// How many bytes from the end of an xz file [`xz_image_size`] wants: the stream footer and
/// an index of up to a few thousand blocks.
pub const XZ_TAIL_LEN: usize = 64 << 10;

/// The decompressed size of a single-stream xz file of `file_len` bytes, from its last bytes
/// (`tail`): the stream footer names the index, whose records give each block's sizes. `None`
/// when the tail holds no complete index, or the file is more than one stream (then the sum
/// would not cover it all).
pub fn xz_image_size(tail: &[u8], file_len: u64) -> Option<u64> {
    let mut end = tail.len();
    let mut padding = 0u64;
    while end >= 4 && tail[end - 4..end] == [0, 0, 0, 0] {
        end -= 4;
        padding += 4;
    }
    let footer = tail.get(end.checked_sub(12)?..end)?;
    if &footer[10..12] != b"YZ" {
        return None;
    }
    let backward = u32::from_le_bytes(footer[4..8].try_into().ok()?) as usize;
    let index_len = (backward + 1) * 4;
    let index_start = (end - 12).checked_sub(index_len)?;
    let index = &tail[index_start..end - 12];
    if index.first() != Some(&0) {
        return None;
    }
    let mut at = 1;
    let mut varint = || -> Option<u64> {
        let mut value = 0u64;
        for shift in 0..9 {
            let byte = *index.get(at)?;
            at += 1;
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    };
    let records = varint()?;
    let (mut blocks, mut size) = (0u64, 0u64);
    for _ in 0..records {
        let unpadded = varint()?;
        blocks = blocks.checked_add(unpadded.div_ceil(4) * 4)?;
        size = size.checked_add(varint()?)?;
    }
    // Header, blocks, index, footer, padding: the whole file, or this is not the only stream.
    let stream = 12 + blocks + index_len as u64 + 12 + padding;
    (stream == file_len).then_some(size)
}

/// A partition of a GPT, as the installer needs it to find the boot partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// 1-based, as the kernel numbers partitions.
    pub number: u32,
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// The used partitions of the GPT at the start of a disk (`head` holds at least the header
/// and the entry array, which on every common layout lie in the first MiB). Empty when there
/// is no GPT or its entries are beyond `head`.
pub fn gpt_partitions(head: &[u8], sector_size: u32) -> Vec<GptPartition> {
    let ss = sector_size as usize;
    let Some(header) = head.get(ss..ss + 92) else {
        return Vec::new();
    };
    if &header[..8] != b"EFI PART" {
        return Vec::new();
    }
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let entries_lba = u64_at(header, 72) as usize;
    let count = u32_at(header, 80) as usize;
    let size = u32_at(header, 84) as usize;
    if size < 128 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for index in 0..count.min(1024) {
        let at = entries_lba * ss + index * size;
        let Some(entry) = head.get(at..at + 128) else {
            break;
        };
        if entry[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let name: Vec<u16> = entry[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        out.push(GptPartition {
            number: index as u32 + 1,
            name: String::from_utf16_lossy(&name),
            first_lba: u64_at(entry, 32),
            last_lba: u64_at(entry, 40),
        });
    }
    out
}

/// The volume label of an ext2/3/4 superblock at the start of `head` (`None` if not ext).
pub fn ext_label(head: &[u8]) -> Option<String> {
    let sb = head.get(1024..1024 + 136)?;
    if sb[56..58] != [0x53, 0xEF] {
        return None;
    }
    let label = &sb[120..136];
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Some(String::from_utf8_lossy(&label[..end]).into_owned())
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

    #[test]
    fn xz_size_from_the_index() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let one = |data: &[u8]| {
            let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
            std::io::Write::write_all(&mut xz, data).unwrap();
            xz.finish().unwrap()
        };
        let file = one(&data);
        let tail = &file[file.len().saturating_sub(XZ_TAIL_LEN)..];
        assert_eq!(xz_image_size(tail, file.len() as u64), Some(3_000_000));
        // Several blocks (as `xz -T` writes).
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(2)
            .block_size(1 << 20)
            .preset(1)
            .encoder()
            .unwrap();
        let mut xz = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        std::io::Write::write_all(&mut xz, &data).unwrap();
        let multi = xz.finish().unwrap();
        assert_eq!(xz_image_size(&multi, multi.len() as u64), Some(3_000_000));
        // Two streams concatenated: the last index does not cover the file.
        let mut two = one(b"first");
        two.extend(one(b"second"));
        assert_eq!(xz_image_size(&two, two.len() as u64), None);
        // Stream padding is skipped; garbage is not an index.
        let mut padded = file.clone();
        padded.extend([0u8; 8]);
        assert_eq!(xz_image_size(&padded, padded.len() as u64), Some(3_000_000));
        assert_eq!(
            xz_image_size(&file[..file.len() - 1], file.len() as u64 - 1),
            None
        );
        assert_eq!(xz_image_size(b"YZ", 2), None);
    }

    #[test]
    fn gpt_entries_and_ext_labels() {
        let mut head = vec![0u8; 1 << 20];
        head[512..520].copy_from_slice(b"EFI PART");
        head[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        head[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        head[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        let entry = |head: &mut Vec<u8>, index: usize, name: &str, first: u64, last: u64| {
            let at = 1024 + index * 128;
            head[at] = 0xAF; // any non-zero type GUID
            head[at + 32..at + 40].copy_from_slice(&first.to_le_bytes());
            head[at + 40..at + 48].copy_from_slice(&last.to_le_bytes());
            for (i, unit) in name.encode_utf16().enumerate() {
                head[at + 56 + 2 * i..at + 58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
            }
        };
        entry(&mut head, 0, "boot", 2048, 395263);
        entry(&mut head, 2, "root", 395264, 999999);
        let parts = gpt_partitions(&head, 512);
        assert_eq!(
            parts,
            vec![
                GptPartition {
                    number: 1,
                    name: "boot".into(),
                    first_lba: 2048,
                    last_lba: 395263
                },
                GptPartition {
                    number: 3,
                    name: "root".into(),
                    first_lba: 395264,
                    last_lba: 999999
                },
            ]
        );
        assert!(gpt_partitions(&head, 4096).is_empty());
        assert!(gpt_partitions(&head[..600], 512).is_empty());

        let mut sb = vec![0u8; 2048];
        assert_eq!(ext_label(&sb), None);
        sb[1024 + 56] = 0x53;
        sb[1024 + 57] = 0xEF;
        sb[1024 + 120..1024 + 124].copy_from_slice(b"boot");
        assert_eq!(ext_label(&sb).as_deref(), Some("boot"));
    }
}
