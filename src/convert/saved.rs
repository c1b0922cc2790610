//! Partitions kept across the conversion: `--save-partlabel GLOB` and `--save-partindex
//! RANGE`, with coreos-installer's meaning. The named partitions of the target disk's GPT
//! are kept: their bytes are never wiped or written, and their table entries are carried
//! into the new GPT after the image's own partitions — under their old number when the
//! image leaves that slot free, else one more than the highest number used so far (never
//! an earlier slot) — with the backup GPT at the disk's end.
//!
//! Everything here is pure: the filters, which partitions of a table they name, whether the
//! image has room before them, which ranges may be wiped, and the merged table (bytes to put
//! at the disk's start and end). The plan ([`super::prepare`]) and the installer
//! ([`super::install`]) read and write the disk.
//!
//! Guarantees: a kept partition's bytes lie outside every range [`wipe_ranges`] returns; a
//! merged table is refused ([`SaveError`]) rather than written when a kept partition
//! overlaps the image's partitions or lies outside the disk's usable space.
//! Assumptions: the table read is the disk's primary GPT and its entries lie in the first
//! MiB (true of every common layout; a table elsewhere reads as no table).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A `--save-partindex` filter: one number or a range, possibly open at one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRange {
    pub from: Option<u32>,
    pub to: Option<u32>,
}

impl IndexRange {
    /// Parses `N`, `N-`, `-N` or `N-M` (numbers from 1, `N` ≤ `M`).
    pub fn parse(text: &str) -> Result<IndexRange, SaveError> {
        let bad = || SaveError::BadRange(text.to_owned());
        let number = |s: &str| -> Result<Option<u32>, SaveError> {
            if s.is_empty() {
                return Ok(None);
            }
            match s.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(bad()),
            }
        };
        let range = match text.split_once('-') {
            None => {
                let n = number(text)?.ok_or_else(bad)?;
                IndexRange {
                    from: Some(n),
                    to: Some(n),
                }
            }
            Some((a, b)) => IndexRange {
                from: number(a)?,
                to: number(b)?,
            },
        };
        match (range.from, range.to) {
            (None, None) => Err(bad()),
            (Some(a), Some(b)) if a > b => Err(bad()),
            _ => Ok(range),
        }
    }

    pub fn contains(self, n: u32) -> bool {
        self.from.is_none_or(|a| n >= a) && self.to.is_none_or(|b| n <= b)
    }
}

impl fmt::Display for IndexRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.from, self.to) {
            (Some(a), Some(b)) if a == b => write!(f, "{a}"),
            (a, b) => write!(
                f,
                "{}-{}",
                a.map(|n| n.to_string()).unwrap_or_default(),
                b.map(|n| n.to_string()).unwrap_or_default()
            ),
        }
    }
}

/// Why partitions cannot be kept. One line each: what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaveError {
    #[error("--save-partindex {0:?} is not a partition number or range (N, N-, -N or N-M, numbers from 1)")]
    BadRange(String),
    #[error("partitions can only be kept from a GPT disk, and {disk} has no GPT; drop --save-partlabel/--save-partindex")]
    NoGpt { disk: String },
    #[error("{what} lies in the first {image_bytes} bytes, which the image writes; it would be overwritten: move the data off it or use a smaller image")]
    InImage { what: String, image_bytes: u64 },
    #[error("{what} overlaps the image's partition {number} ({name:?}); it would be overwritten")]
    OverlapsImage {
        what: String,
        number: u32,
        name: String,
    },
    #[error("{what} ends beyond the disk's last usable sector {last_usable}; it cannot be put in the new table")]
    PastEnd { what: String, last_usable: u64 },
    #[error("the image's partition table has no free entry left for {what}")]
    NoSlot { what: String },
    #[error("the image has no GPT to add the kept partitions to")]
    ImageNoGpt,
}

/// Whether `name` matches the shell glob `pattern` (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`), as
/// fnmatch does without flags. An unclosed `[` matches itself.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_at(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => match class(&p[1..]) {
            Some((set, negated, used)) => n.first().is_some_and(|&c| {
                set.iter().any(|&(lo, hi)| lo <= c && c <= hi) != negated
                    && glob_at(&p[1 + used..], &n[1..])
            }),
            None => n.first() == Some(&'[') && glob_at(&p[1..], &n[1..]),
        },
        Some(&c) => n.first() == Some(&c) && glob_at(&p[1..], &n[1..]),
    }
}

/// A bracket class after its `[`: the ranges, whether negated, and the characters it used
/// (through its `]`); `None` when it is not closed.
#[allow(clippy::type_complexity)]
fn class(p: &[char]) -> Option<(Vec<(char, char)>, bool, usize)> {
    let mut i = 0;
    let negated = matches!(p.first(), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut set = Vec::new();
    let start = i;
    while i < p.len() {
        if p[i] == ']' && i > start {
            return Some((set, negated, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            set.push((p[i], p[i + 2]));
            i += 3;
        } else {
            set.push((p[i], p[i]));
            i += 1;
        }
    }
    None
}

/// One entry of a GPT as it is on disk (128 bytes: type, unique GUID, first and last LBA,
/// attributes, UTF-16 name), with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub number: u32,
    pub raw: [u8; 128],
}

impl Entry {
    pub fn first_lba(&self) -> u64 {
        u64::from_le_bytes(self.raw[32..40].try_into().unwrap())
    }
    pub fn last_lba(&self) -> u64 {
        u64::from_le_bytes(self.raw[40..48].try_into().unwrap())
    }
    pub fn name(&self) -> String {
        let units: Vec<u16> = self.raw[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }
    /// The unique partition GUID as lower-case hex of its 16 bytes as stored.
    pub fn unique_guid(&self) -> String {
        hex::encode(&self.raw[16..32])
    }
}

/// A primary GPT: its header (the first 92 bytes) and its used entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub header: [u8; 92],
    pub entries: Vec<Entry>,
    /// Slots in the entry array, and bytes per slot.
    pub count: u32,
    pub entry_size: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The primary GPT of a disk whose first sectors are `head`; `None` when there is none (or
/// its entries lie beyond `head`, or its header says nonsense).
pub fn read_table(head: &[u8], sector_size: u32) -> Option<Table> {
    let ss = sector_size as usize;
    let header: [u8; 92] = head.get(ss..ss + 92)?.try_into().ok()?;
    if &header[..8] != b"EFI PART" {
        return None;
    }
    let entries_lba = usize::try_from(u64_at(&header, 72)).ok()?;
    let count = u32_at(&header, 80);
    let entry_size = u32_at(&header, 84);
    if entry_size < 128 || count > 4096 {
        return None;
    }
    let mut entries = Vec::new();
    for index in 0..count as usize {
        let at = entries_lba.checked_mul(ss)? + index * entry_size as usize;
        let raw: [u8; 128] = head.get(at..at + 128)?.try_into().ok()?;
        if raw[..16].iter().all(|&b| b == 0) {
            continue;
        }
        entries.push(Entry {
            number: index as u32 + 1,
            raw,
        });
    }
    Some(Table {
        header,
        entries,
        count,
        entry_size,
    })
}

/// A partition the plan keeps, as the plan shows it and the installer finds it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedPartition {
    pub number: u32,
    /// The GPT partition name (its "label").
    pub label: String,
    pub first_lba: u64,
    pub last_lba: u64,
    /// The unique partition GUID, hex of its bytes as stored.
    pub unique_guid: String,
    pub size_bytes: u64,
    /// What its first bytes say it holds (`ext4`, `xfs`, …), when recognised.
    #[serde(default)]
    pub file_system: Option<String>,
}

impl SavedPartition {
    /// `partition 2 "data"`, the way every message names it.
    pub fn what(&self) -> String {
        format!("saved partition {} {:?}", self.number, self.label)
    }
    pub fn start_byte(&self, sector_size: u32) -> u64 {
        self.first_lba * u64::from(sector_size)
    }
    pub fn end_byte(&self, sector_size: u32) -> u64 {
        (self.last_lba + 1) * u64::from(sector_size)
    }
}

/// What the filters name on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub kept: Vec<SavedPartition>,
    /// Filters that named no partition, as the admin wrote them (`--save-partlabel 'x*'`).
    pub unmatched: Vec<String>,
}

/// The partitions of `table` that any filter names, in table order; `file_system` tells
/// what a partition holds, by number.
pub fn select(
    table: &Table,
    sector_size: u32,
    labels: &[String],
    indexes: &[IndexRange],
    file_system: &dyn Fn(u32) -> Option<String>,
) -> Selection {
    let mut selection = Selection::default();
    for glob in labels {
        if !table.entries.iter().any(|e| glob_matches(glob, &e.name())) {
            selection
                .unmatched
                .push(format!("--save-partlabel {glob:?}"));
        }
    }
    for range in indexes {
        if !table.entries.iter().any(|e| range.contains(e.number)) {
            selection
                .unmatched
                .push(format!("--save-partindex {range}"));
        }
    }
    for e in &table.entries {
        let name = e.name();
        if labels.iter().any(|g| glob_matches(g, &name))
            || indexes.iter().any(|r| r.contains(e.number))
        {
            selection.kept.push(SavedPartition {
                number: e.number,
                label: name,
                first_lba: e.first_lba(),
                last_lba: e.last_lba(),
                unique_guid: e.unique_guid(),
                size_bytes: (e.last_lba() + 1).saturating_sub(e.first_lba())
                    * u64::from(sector_size),
                file_system: file_system(e.number),
            });
        }
    }
    selection
}

/// Refuses a kept partition that starts inside the image's bytes (the image is written from
/// the disk's start, so its space is its first `image_bytes` bytes).
pub fn check_room(
    kept: &[SavedPartition],
    sector_size: u32,
    image_bytes: u64,
) -> Result<(), SaveError> {
    for p in kept {
        if p.start_byte(sector_size) < image_bytes {
            return Err(SaveError::InImage {
                what: p.what(),
                image_bytes,
            });
        }
    }
    Ok(())
}

/// Where the image must end: the first kept partition's start (the writer stops before it).
pub fn image_limit(kept: &[SavedPartition], sector_size: u32) -> Option<u64> {
    kept.iter().map(|p| p.start_byte(sector_size)).min()
}

/// The byte ranges `[from, to)` to zero so no old signature is found in the new layout: the
/// first and last `tail` bytes of each old partition (`(start, size)`) and of the disk,
/// minus every kept range — a kept partition's bytes are never in a returned range.
pub fn wipe_ranges(
    old: &[(u64, u64)],
    disk_size: u64,
    tail: u64,
    kept: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    for &(start, size) in old {
        ranges.push((start, start + tail.min(size)));
        ranges.push((start + size.saturating_sub(tail), start + size));
    }
    ranges.push((disk_size.saturating_sub(tail), disk_size));
    let mut out = Vec::new();
    for (from, to) in ranges {
        let mut pieces = vec![(from, to.min(disk_size))];
        for &(ks, ke) in kept {
            pieces = pieces
                .into_iter()
                .flat_map(|(a, b)| {
                    if ke <= a || ks >= b {
                        vec![(a, b)]
                    } else {
                        [(a, ks), (ke, b)]
                            .into_iter()
                            .filter(|(x, y)| x < y)
                            .collect()
                    }
                })
                .collect();
        }
        out.extend(pieces.into_iter().filter(|(a, b)| a < b));
    }
    out
}

/// The merged partition table, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// From the disk's first byte: the protective MBR, the primary header and its entries.
    pub head: Vec<u8>,
    /// The backup entries and, in the disk's last sector, the backup header.
    pub tail: Vec<u8>,
    /// Where `tail` goes, in bytes.
    pub tail_at: u64,
    /// Each kept partition's old number and its number in the new table.
    pub numbers: Vec<(u32, u32)>,
}

/// The image's table (from its first sectors `image_head`) with the kept partitions' old
/// entries (`kept`, as read from the disk before the write) added, sized for a disk of
/// `disk_bytes`: primary at LBA 1, backup entries and header at the disk's end, the
/// protective MBR covering the disk.
pub fn merge(
    image_head: &[u8],
    sector_size: u32,
    disk_bytes: u64,
    kept: &[Entry],
) -> Result<Merged, SaveError> {
    let table = read_table(image_head, sector_size).ok_or(SaveError::ImageNoGpt)?;
    let ss = sector_size as usize;
    let ss64 = u64::from(sector_size);
    let count = table.count as usize;
    let esize = table.entry_size as usize;
    let array_bytes = count * esize;
    let array_sectors = array_bytes.div_ceil(ss) as u64;
    let disk_last = disk_bytes / ss64 - 1;
    let last_usable = disk_last - array_sectors - 1;
    let first_usable = u64_at(&table.header, 40);

    let mut slots: Vec<Option<[u8; 128]>> = vec![None; count];
    for e in &table.entries {
        slots[e.number as usize - 1] = Some(e.raw);
    }
    let mut highest = table.entries.iter().map(|e| e.number).max().unwrap_or(0);
    let mut numbers = Vec::new();
    for k in kept {
        let what = format!("saved partition {} {:?}", k.number, k.name());
        if k.first_lba() < first_usable || k.last_lba() > last_usable {
            return Err(SaveError::PastEnd { what, last_usable });
        }
        for e in &table.entries {
            if k.first_lba() <= e.last_lba() && e.first_lba() <= k.last_lba() {
                return Err(SaveError::OverlapsImage {
                    what,
                    number: e.number,
                    name: e.name(),
                });
            }
        }
        let own = k.number as usize;
        let number = if own >= 1 && own <= count && slots[own - 1].is_none() {
            k.number
        } else {
            highest + 1
        };
        if number as usize > count {
            return Err(SaveError::NoSlot { what });
        }
        slots[number as usize - 1] = Some(k.raw);
        highest = highest.max(number);
        numbers.push((k.number, number));
    }
    let mut array = vec![0u8; array_sectors as usize * ss];
    for (i, slot) in slots.iter().enumerate() {
        if let Some(raw) = slot {
            array[i * esize..i * esize + 128].copy_from_slice(raw);
        }
    }
    let array_crc = crc32fast::hash(&array[..array_bytes]);
    let header_size = (u32_at(&table.header, 12) as usize).clamp(92, ss);
    let header = |my: u64, alt: u64, entries: u64| -> Vec<u8> {
        let mut sector = vec![0u8; ss];
        sector[..92].copy_from_slice(&table.header);
        sector[24..32].copy_from_slice(&my.to_le_bytes());
        sector[32..40].copy_from_slice(&alt.to_le_bytes());
        sector[48..56].copy_from_slice(&last_usable.to_le_bytes());
        sector[72..80].copy_from_slice(&entries.to_le_bytes());
        sector[88..92].copy_from_slice(&array_crc.to_le_bytes());
        sector[16..20].fill(0);
        let crc = crc32fast::hash(&sector[..header_size]);
        sector[16..20].copy_from_slice(&crc.to_le_bytes());
        sector
    };
    let entries_lba = u64_at(&table.header, 72);
    let mut head = image_head[..ss].to_vec();
    // The protective MBR's one partition covers the whole disk (or as much as 32 bits say).
    if head.len() >= 512 && head[446 + 4] == 0xEE {
        let size = u32::try_from(disk_last).unwrap_or(u32::MAX);
        head[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
    }
    head.extend(header(1, disk_last, entries_lba));
    head.resize(entries_lba as usize * ss, 0);
    head.extend_from_slice(&array);
    let backup_entries = disk_last - array_sectors;
    let mut tail = array.clone();
    tail.extend(header(disk_last, 1, backup_entries));
    Ok(Merged {
        head,
        tail,
        tail_at: backup_entries * ss64,
        numbers,
    })
}

/// What the first bytes of a partition (at least 68 KiB of them) say it holds.
pub fn file_system(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"LUKS\xba\xbe") {
        Some("LUKS")
    } else if at(0, b"XFSB") {
        Some("xfs")
    } else if at(1080, &[0x53, 0xEF]) {
        // ext4 has extents or 64-bit among its incompatible features; ext3 a journal.
        let incompat = head.get(1120..1124).map_or(0, |b| u32_at(b, 0));
        let compat = head.get(1116..1120).map_or(0, |b| u32_at(b, 0));
        Some(if incompat & (0x40 | 0x80) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        })
    } else if at(65600, b"_BHRfS_M") {
        Some("btrfs")
    } else if at(4086, b"SWAPSPACE2") {
        Some("swap")
    } else if at(82, b"FAT32   ") || at(54, b"FAT16   ") || at(54, b"FAT12   ") {
        Some("vfat")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SS: u32 = 512;

    fn entry(number: u32, name: &str, first: u64, last: u64) -> Entry {
        let mut raw = [0u8; 128];
        raw[..16].copy_from_slice(&[0x0f; 16]);
        raw[16..32].copy_from_slice(&[number as u8; 16]);
        raw[32..40].copy_from_slice(&first.to_le_bytes());
        raw[40..48].copy_from_slice(&last.to_le_bytes());
        for (i, u) in name.encode_utf16().enumerate() {
            raw[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        Entry { number, raw }
    }

    /// The first 34 sectors of a disk of `sectors` with a GPT holding `entries`.
    fn disk_head(sectors: u64, entries: &[Entry]) -> Vec<u8> {
        let mut head = vec![0u8; 34 * 512];
        head[446 + 4] = 0xEE;
        head[510] = 0x55;
        head[511] = 0xAA;
        let h = &mut head[512..604];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x10000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[56..72].copy_from_slice(&[0xd1; 16]);
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        for e in entries {
            let at = 1024 + (e.number as usize - 1) * 128;
            head[at..at + 128].copy_from_slice(&e.raw);
        }
        head
    }

    #[test]
    fn ranges_parse_like_coreos_installer() {
        let r = |t: &str| IndexRange::parse(t).map(|r| (r.from, r.to));
        assert_eq!(r("5"), Ok((Some(5), Some(5))));
        assert_eq!(r("5-"), Ok((Some(5), None)));
        assert_eq!(r("-5"), Ok((None, Some(5))));
        assert_eq!(r("2-4"), Ok((Some(2), Some(4))));
        for bad in ["", "-", "0", "4-2", "x", "1-2-3", "0-3"] {
            assert_eq!(r(bad), Err(SaveError::BadRange(bad.into())), "{bad}");
        }
        let five_up = IndexRange::parse("5-").unwrap();
        assert!(five_up.contains(5) && five_up.contains(100) && !five_up.contains(4));
        assert_eq!(five_up.to_string(), "5-");
        assert_eq!(IndexRange::parse("3").unwrap().to_string(), "3");
    }

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_matches("data*", "data"));
        assert!(glob_matches("data*", "data-2"));
        assert!(!glob_matches("data*", "mydata"));
        assert!(glob_matches("*data*", "mydata1"));
        assert!(glob_matches("d?ta", "dota"));
        assert!(!glob_matches("d?ta", "dta"));
        assert!(glob_matches("disk[0-9]", "disk7"));
        assert!(!glob_matches("disk[!0-9]", "disk7"));
        assert!(glob_matches("disk[!0-9]", "diskx"));
        assert!(glob_matches("a[", "a["), "an unclosed class is literal");
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("data", "Data"), "case counts");
    }

    #[test]
    fn filters_select_and_unmatched_ones_are_named() {
        let head = disk_head(
            131072,
            &[
                entry(1, "old-root", 2048, 98303),
                entry(2, "data", 98304, 129023),
            ],
        );
        let table = read_table(&head, SS).unwrap();
        let fs = |n: u32| (n == 2).then(|| "ext4".to_owned());
        let s = select(
            &table,
            SS,
            &["da*".into(), "nothing*".into()],
            &[IndexRange::parse("7-").unwrap()],
            &fs,
        );
        assert_eq!(s.kept.len(), 1);
        let k = &s.kept[0];
        assert_eq!((k.number, k.label.as_str()), (2, "data"));
        assert_eq!(k.size_bytes, 30720 * 512);
        assert_eq!(k.file_system.as_deref(), Some("ext4"));
        assert_eq!(k.unique_guid, "02".repeat(16));
        assert_eq!(
            s.unmatched,
            vec![
                "--save-partlabel \"nothing*\"".to_owned(),
                "--save-partindex 7-".to_owned()
            ]
        );
        // By index, both; a partition named twice is kept once.
        let s = select(
            &table,
            SS,
            &["data".into()],
            &[IndexRange::parse("-2").unwrap()],
            &fs,
        );
        assert_eq!(s.kept.len(), 2);
        assert!(s.unmatched.is_empty());
    }

    #[test]
    fn no_gpt_reads_as_no_table() {
        assert_eq!(read_table(&[0u8; 34 * 512], SS), None);
        assert_eq!(read_table(&[0u8; 100], SS), None);
    }

    #[test]
    fn a_kept_partition_inside_the_image_is_refused() {
        let kept = select(
            &read_table(&disk_head(131072, &[entry(2, "data", 98304, 129023)]), SS).unwrap(),
            SS,
            &["data".into()],
            &[],
            &|_| None,
        )
        .kept;
        assert_eq!(check_room(&kept, SS, 48 << 20), Ok(()));
        let err = check_room(&kept, SS, (48 << 20) + 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("saved partition 2 \"data\" lies in the first 50331649 bytes"),
            "{err}"
        );
        assert_eq!(image_limit(&kept, SS), Some(48 << 20));
    }

    #[test]
    fn wiping_never_touches_a_kept_range() {
        const M: u64 = 1 << 20;
        let kept = [(48 * M, 63 * M)];
        let ranges = wipe_ranges(&[(M, 46 * M), (48 * M, 15 * M)], 64 * M, M, &kept);
        for &(a, b) in &ranges {
            assert!(
                b <= 48 * M || a >= 63 * M,
                "{a}..{b} touches the kept range"
            );
        }
        // The old root's ends and the disk's last MiB are still wiped.
        assert!(ranges.contains(&(M, 2 * M)));
        assert!(ranges.contains(&(46 * M, 47 * M)));
        assert!(ranges.contains(&(63 * M, 64 * M)));
        // Nothing kept: the ranges as before.
        assert_eq!(
            wipe_ranges(&[(M, 46 * M)], 64 * M, M, &[]),
            vec![(M, 2 * M), (46 * M, 47 * M), (63 * M, 64 * M)]
        );
        // A kept range in the middle of a wipe range splits it.
        assert_eq!(
            wipe_ranges(&[], 64 * M, 4 * M, &[(61 * M, 62 * M)]),
            vec![(60 * M, 61 * M), (62 * M, 64 * M)]
        );
    }

    fn crc_ok(sector: &[u8]) -> bool {
        let size = u32_at(sector, 12) as usize;
        let mut h = sector[..size].to_vec();
        let stored = u32_at(&h, 16);
        h[16..20].fill(0);
        crc32fast::hash(&h) == stored
    }

    #[test]
    fn merged_table_adds_kept_entries_after_the_images_own() {
        // The image: 40 MiB, boot and root; the disk: 64 MiB with data kept at 48–63 MiB.
        let image = disk_head(
            81920,
            &[
                entry(1, "boot", 2048, 34815),
                entry(2, "root", 34816, 79871),
            ],
        );
        let old_data = entry(2, "data", 98304, 129023);
        let merged = merge(&image, SS, 64 << 20, std::slice::from_ref(&old_data)).unwrap();
        // Slot 2 is the image's root, so data becomes 3 (one more than the highest).
        assert_eq!(merged.numbers, vec![(2, 3)]);
        let t = read_table(&merged.head, SS).unwrap();
        let names: Vec<(u32, String)> = t.entries.iter().map(|e| (e.number, e.name())).collect();
        assert_eq!(
            names,
            vec![(1, "boot".into()), (2, "root".into()), (3, "data".into())]
        );
        assert_eq!(t.entries[2].raw, old_data.raw, "the kept entry as it was");
        let disk_last = (64u64 << 20) / 512 - 1;
        assert_eq!(u64_at(&t.header, 32), disk_last, "backup at the disk's end");
        assert_eq!(u64_at(&t.header, 48), disk_last - 33);
        assert!(crc_ok(&merged.head[512..1024]));
        assert_eq!(
            crc32fast::hash(&merged.head[1024..1024 + 128 * 128]),
            u32_at(&t.header, 88)
        );
        // The backup: entries then header, ending in the disk's last sector.
        assert_eq!(merged.tail_at + merged.tail.len() as u64, 64 << 20);
        let backup = &merged.tail[merged.tail.len() - 512..];
        assert_eq!(&backup[..8], b"EFI PART");
        assert_eq!(u64_at(backup, 24), disk_last);
        assert_eq!(u64_at(backup, 72), disk_last - 32);
        assert!(crc_ok(backup));
        assert_eq!(&merged.tail[..16384], &merged.head[1024..1024 + 16384]);
        // The protective MBR covers the disk.
        assert_eq!(u32_at(&merged.head, 446 + 12) as u64, disk_last);

        // Its own number kept when the image leaves it free.
        let merged = merge(&image, SS, 64 << 20, &[entry(5, "data", 98304, 129023)]).unwrap();
        assert_eq!(merged.numbers, vec![(5, 5)]);
    }

    #[test]
    fn merging_refuses_overlap_and_the_end() {
        let image = disk_head(
            81920,
            &[
                entry(1, "boot", 2048, 34815),
                entry(2, "root", 34816, 79871),
            ],
        );
        let err = merge(&image, SS, 64 << 20, &[entry(3, "data", 70000, 100000)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "saved partition 3 \"data\" overlaps the image's partition 2 (\"root\"); it would be overwritten"
        );
        let err = merge(&image, SS, 64 << 20, &[entry(3, "data", 98304, 131060)]).unwrap_err();
        assert!(matches!(err, SaveError::PastEnd { .. }), "{err}");
        assert_eq!(
            merge(&[0u8; 34 * 512], SS, 64 << 20, &[]),
            Err(SaveError::ImageNoGpt)
        );
    }

    #[test]
    fn file_systems_are_told_by_their_magic() {
        let mut ext4 = vec![0u8; 70 * 1024];
        ext4[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        ext4[1120..1124].copy_from_slice(&0x40u32.to_le_bytes());
        assert_eq!(file_system(&ext4), Some("ext4"));
        let mut xfs = vec![0u8; 70 * 1024];
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(file_system(&xfs), Some("xfs"));
        let mut swap = vec![0u8; 70 * 1024];
        swap[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(file_system(&swap), Some("swap"));
        assert_eq!(file_system(&vec![0u8; 70 * 1024]), None);
        assert_eq!(file_system(&[]), None);
    }
}
