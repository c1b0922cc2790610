//! Reading files out of an ISO 9660 image without mounting it: live ISOs are read where the
//! kernel has no iso9660 driver or mounting is not wanted (`x2nestos plan` changes nothing).
//!
//! Only what a live ISO needs: the primary volume descriptor, directory records, Rock Ridge
//! alternate names (`NM`, continued across records and `CE` continuation areas), plain
//! ISO 9660 names (`VMLINUZ.;1`) matched without case, version or trailing dot when the image
//! has no Rock Ridge, and single-extent files. The image is read by offset ([`ReadAt`]): from
//! a file, or from a mirror by HTTP range requests, so a live ISO is planned without being
//! downloaded.
//!
//! The image is untrusted until it is verified (`plan` reads a mirror's ISO before anything
//! checks it): every length in it is bounded before it sizes an allocation or a slice, and
//! malformed bytes are an `InvalidData` error, never a panic.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

const SECTOR: u64 = 2048;
/// Volume descriptors start at sector 16.
const FIRST_DESCRIPTOR: u64 = 16;
/// The largest directory read: a live ISO's directories hold a few dozen entries (a few KiB);
/// a length beyond this is a corrupt or hostile image, not one to allocate for.
const MAX_DIRECTORY: u32 = 4 << 20;
/// The largest Rock Ridge continuation area read (SUSP areas fit in a sector; some slack).
const MAX_CONTINUATION: u32 = 64 << 10;

/// A file or directory: where its data is and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub lba: u32,
    pub len: u32,
    pub dir: bool,
}

/// Bytes read by offset, like `pread`.
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

fn read_exact_at(data: &dyn ReadAt, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match data.read_at(buf, offset)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the ISO image ends early",
                ))
            }
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// An ISO 9660 image opened for reading.
pub struct Iso {
    data: Box<dyn ReadAt>,
    root: Extent,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One directory record at the start of `rec` (its length byte included): the name as the
/// directory lists it (Rock Ridge when present, else the plain name cleaned) and its extent.
/// `.` and `..` come back as `None`. `continuation` reads a `CE` area.
fn parse_record(
    rec: &[u8],
    continuation: &dyn Fn(u32, u32, u32) -> io::Result<Vec<u8>>,
) -> io::Result<Option<(String, Extent)>> {
    if rec.len() < 34 {
        return Err(invalid("directory record shorter than 34 bytes"));
    }
    let extent = Extent {
        lba: u32_le(rec, 2),
        len: u32_le(rec, 10),
        dir: rec[25] & 0x02 != 0,
    };
    let name_len = rec[32] as usize;
    let name_end = 33 + name_len;
    if name_end > rec.len() {
        return Err(invalid("directory record name runs past the record"));
    }
    let raw = &rec[33..name_end];
    if raw == [0] || raw == [1] {
        return Ok(None);
    }
    // The system use area follows the name, padded to an even offset (none when the padding
    // byte is all that is left).
    let mut area = rec
        .get(name_end + (name_len + 1) % 2..)
        .unwrap_or_default()
        .to_vec();
    let mut rock_ridge = String::new();
    let mut seen_nm = false;
    let mut guard = 0;
    while !area.is_empty() && guard < 16 {
        guard += 1;
        let mut next = None;
        let mut at = 0;
        while at + 4 <= area.len() {
            let len = area[at + 2] as usize;
            if len < 4 || at + len > area.len() {
                break;
            }
            let entry = &area[at..at + len];
            match &entry[..2] {
                b"NM" if len >= 5 => {
                    seen_nm = true;
                    rock_ridge.push_str(&String::from_utf8_lossy(&entry[5..]));
                }
                b"CE" if len >= 28 => {
                    next = Some((u32_le(entry, 4), u32_le(entry, 12), u32_le(entry, 20)));
                }
                b"ST" => break,
                _ => {}
            }
            at += len;
        }
        area = match next {
            Some((lba, offset, length)) => continuation(lba, offset, length)?,
            None => Vec::new(),
        };
    }
    let name = if seen_nm && !rock_ridge.is_empty() {
        rock_ridge
    } else {
        let plain = String::from_utf8_lossy(raw);
        let plain = plain.split(';').next().unwrap_or_default();
        plain
            .strip_suffix('.')
            .unwrap_or(plain)
            .to_ascii_lowercase()
    };
    Ok(Some((name, extent)))
}

/// The records of a directory's data: records do not cross sector boundaries, and a zero
/// length byte ends a sector's records.
fn parse_directory(
    data: &[u8],
    continuation: &dyn Fn(u32, u32, u32) -> io::Result<Vec<u8>>,
) -> io::Result<Vec<(String, Extent)>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let len = data[at] as usize;
        if len == 0 {
            at = (at / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        if at + len > data.len() {
            return Err(invalid("directory record runs past the directory"));
        }
        if let Some(entry) = parse_record(&data[at..at + len], continuation)? {
            out.push(entry);
        }
        at += len;
    }
    Ok(out)
}

impl Iso {
    pub fn open(path: &Path) -> io::Result<Iso> {
        Iso::read_from(Box::new(File::open(path)?))
    }

    /// The image whose bytes `data` reads.
    pub fn read_from(data: Box<dyn ReadAt>) -> io::Result<Iso> {
        let mut sector = vec![0u8; SECTOR as usize];
        for index in FIRST_DESCRIPTOR..FIRST_DESCRIPTOR + 32 {
            read_exact_at(&*data, &mut sector, index * SECTOR).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    invalid("no ISO 9660 volume descriptor")
                } else {
                    e
                }
            })?;
            if &sector[1..6] != b"CD001" {
                return Err(invalid("no ISO 9660 volume descriptor"));
            }
            match sector[0] {
                1 => {
                    // The root directory's record is at offset 156.
                    let root = Extent {
                        lba: u32_le(&sector, 156 + 2),
                        len: u32_le(&sector, 156 + 10),
                        dir: true,
                    };
                    return Ok(Iso { data, root });
                }
                255 => break,
                _ => {}
            }
        }
        Err(invalid("no ISO 9660 primary volume descriptor"))
    }

    /// `len` bytes at `offset` into sector `lba`; `len` is bounded by the caller's `max`.
    fn read_extent(&self, lba: u32, offset: u32, len: u32, max: u32) -> io::Result<Vec<u8>> {
        if len > max {
            return Err(invalid(format!(
                "an ISO 9660 area of {len} bytes at sector {lba} is larger than {max}: the image is corrupt"
            )));
        }
        let mut data = vec![0u8; len as usize];
        read_exact_at(&*self.data, &mut data, lba as u64 * SECTOR + offset as u64)?;
        Ok(data)
    }

    /// The entries of a directory.
    pub fn read_dir(&self, dir: Extent) -> io::Result<Vec<(String, Extent)>> {
        if !dir.dir {
            return Err(invalid("not a directory"));
        }
        let data = self.read_extent(dir.lba, 0, dir.len, MAX_DIRECTORY)?;
        parse_directory(&data, &|lba, offset, len| {
            self.read_extent(lba, offset, len, MAX_CONTINUATION)
        })
    }

    /// The entry at a relative path (`images/pxeboot/vmlinuz`); the root for `""`. Names are
    /// matched exactly, then without case (plain ISO 9660 names are upper case).
    pub fn lookup(&self, path: &str) -> io::Result<Option<Extent>> {
        let mut current = self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !current.dir {
                return Ok(None);
            }
            let entries = self.read_dir(current)?;
            let found = entries.iter().find(|(name, _)| name == part).or_else(|| {
                entries
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(part))
            });
            match found {
                Some((_, extent)) => current = *extent,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// A reader over a file's bytes.
    pub fn reader(&self, file: Extent) -> impl Read + '_ {
        ExtentReader {
            data: &*self.data,
            at: file.lba as u64 * SECTOR,
            left: file.len as u64,
        }
    }
}

struct ExtentReader<'a> {
    data: &'a dyn ReadAt,
    at: u64,
    left: u64,
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.left as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.data.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the ISO image ends inside a file",
            ));
        }
        self.at += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// An ISO image as a live image tree.
pub struct IsoTree {
    pub iso: Iso,
    /// Where it was read from (a path or a URL).
    pub name: String,
}

impl super::live::Tree for IsoTree {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn read_text(&self, rel: &str) -> Option<String> {
        let mut text = String::new();
        self.open(rel).ok()?.read_to_string(&mut text).ok()?;
        Some(text)
    }

    fn is_file(&self, rel: &str) -> bool {
        matches!(self.iso.lookup(rel), Ok(Some(e)) if !e.dir)
    }

    fn subdirs(&self, rel: &str) -> Vec<String> {
        match self.iso.lookup(rel) {
            Ok(Some(dir)) if dir.dir => self
                .iso
                .read_dir(dir)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, e)| e.dir)
                .map(|(name, _)| name)
                .collect(),
            _ => Vec::new(),
        }
    }

    fn size(&self, rel: &str) -> io::Result<u64> {
        Ok(self.file(rel)?.len as u64)
    }

    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.iso.reader(self.file(rel)?)))
    }
}

impl IsoTree {
    fn file(&self, rel: &str) -> io::Result<Extent> {
        match self.iso.lookup(rel)? {
            Some(e) if !e.dir => Ok(e),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{rel}: no such file in {}", self.name),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &[u8], lba: u32, len: u32, dir: bool, system_use: &[u8]) -> Vec<u8> {
        let mut rec = vec![0u8; 33];
        rec[2..6].copy_from_slice(&lba.to_le_bytes());
        rec[10..14].copy_from_slice(&len.to_le_bytes());
        rec[25] = if dir { 2 } else { 0 };
        rec[32] = name.len() as u8;
        rec.extend_from_slice(name);
        if name.len() % 2 == 0 {
            rec.push(0);
        }
        rec.extend_from_slice(system_use);
        rec[0] = rec.len() as u8;
        rec
    }

    fn nm(name: &str, continues: bool) -> Vec<u8> {
        let mut e = vec![b'N', b'M', (5 + name.len()) as u8, 1, u8::from(continues)];
        e.extend_from_slice(name.as_bytes());
        e
    }

    fn none(_: u32, _: u32, _: u32) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    #[test]
    fn rock_ridge_names_win_over_plain_ones() {
        let rec = record(
            b"ISOLINUX.CFG;1",
            30,
            100,
            false,
            &nm("isolinux.cfg", false),
        );
        let (name, extent) = parse_record(&rec, &none).unwrap().unwrap();
        assert_eq!(name, "isolinux.cfg");
        assert_eq!(
            extent,
            Extent {
                lba: 30,
                len: 100,
                dir: false
            }
        );
        let rec = record(b"VMLINUZ.;1", 31, 5, false, &[]);
        assert_eq!(parse_record(&rec, &none).unwrap().unwrap().0, "vmlinuz");
        let rec = record(b"PXEBOOT", 32, 2048, true, &[]);
        let (name, extent) = parse_record(&rec, &none).unwrap().unwrap();
        assert_eq!((name.as_str(), extent.dir), ("pxeboot", true));
        assert_eq!(
            parse_record(&record(b"\0", 1, 1, true, &[]), &none).unwrap(),
            None
        );
    }

    #[test]
    fn names_continue_across_entries_and_continuation_areas() {
        let mut su = nm("a-long-", true);
        // CE: block 7, offset 10, length of the continued area.
        let rest = nm("name.img", false);
        let mut ce = vec![b'C', b'E', 28, 1];
        for v in [7u32, 10, rest.len() as u32] {
            ce.extend_from_slice(&v.to_le_bytes());
            ce.extend_from_slice(&v.to_be_bytes());
        }
        su.extend_from_slice(&ce);
        let rec = record(b"A_LONG_N.IMG;1", 40, 9, false, &su);
        let asked = std::cell::Cell::new(None);
        let (name, _) = parse_record(&rec, &|lba, off, len| {
            asked.set(Some((lba, off, len)));
            Ok(rest.clone())
        })
        .unwrap()
        .unwrap();
        assert_eq!(name, "a-long-name.img");
        assert_eq!(asked.get(), Some((7, 10, rest.len() as u32)));
    }

    /// An image in memory.
    struct Bytes(Vec<u8>);

    impl ReadAt for Bytes {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(self.0.len());
            let n = buf.len().min(self.0.len() - at);
            buf[..n].copy_from_slice(&self.0[at..at + n]);
            Ok(n)
        }
    }

    /// A primary volume descriptor at sector 16 whose root directory is `root`, then a
    /// terminator, then `rest` from sector 18 on.
    fn image(root: Extent, rest: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; (FIRST_DESCRIPTOR * SECTOR) as usize];
        let mut pvd = vec![0u8; SECTOR as usize];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[156 + 2..156 + 6].copy_from_slice(&root.lba.to_le_bytes());
        pvd[156 + 10..156 + 14].copy_from_slice(&root.len.to_le_bytes());
        img.extend(pvd);
        let mut end = vec![0u8; SECTOR as usize];
        end[0] = 255;
        end[1..6].copy_from_slice(b"CD001");
        img.extend(end);
        img.extend_from_slice(rest);
        img
    }

    #[test]
    fn a_record_that_ends_at_its_name_has_no_system_use_area() {
        // An even-length name with the padding byte missing: the record ends at the name.
        let mut rec = record(b"AB", 1, 1, false, &[]);
        rec.pop();
        rec[0] = rec.len() as u8;
        assert_eq!(parse_record(&rec, &none).unwrap().unwrap().0, "ab");
    }

    #[test]
    fn lengths_that_would_size_huge_allocations_are_refused() {
        let iso = Iso::read_from(Box::new(Bytes(image(
            Extent {
                lba: 18,
                len: u32::MAX,
                dir: true,
            },
            &[],
        ))))
        .unwrap();
        let err = iso.lookup("isolinux/isolinux.cfg").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("larger than"), "{err}");

        // A continuation area of 4 GiB.
        let mut ce = vec![b'C', b'E', 28, 1];
        for v in [19u32, 0, u32::MAX] {
            ce.extend_from_slice(&v.to_le_bytes());
            ce.extend_from_slice(&v.to_be_bytes());
        }
        let mut dir = record(b"A;1", 20, 1, false, &ce);
        dir.resize(SECTOR as usize, 0);
        let iso = Iso::read_from(Box::new(Bytes(image(
            Extent {
                lba: 18,
                len: SECTOR as u32,
                dir: true,
            },
            &dir,
        ))))
        .unwrap();
        let err = iso.lookup("a").unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any bytes as a directory: an answer or an error, never a panic.
        #[test]
        fn random_directories_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6000)) {
            let _ = parse_directory(&data, &|_, _, len| Ok(vec![b'N'; (len as usize).min(300)]));
        }

        /// Any bytes after a valid descriptor, with any root extent: lookups answer or fail,
        /// never panic or allocate past the caps.
        #[test]
        fn random_images_never_panic(
            lba in 0u32..40,
            len in proptest::prelude::any::<u32>(),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8192),
        ) {
            let img = image(Extent { lba, len, dir: true }, &rest);
            if let Ok(iso) = Iso::read_from(Box::new(Bytes(img))) {
                let _ = iso.lookup("isolinux/isolinux.cfg");
                let _ = iso.lookup("images/pxeboot/vmlinuz");
            }
        }
    }

    #[test]
    fn directories_skip_sector_padding() {
        let mut data = record(b"\0", 20, 4096, true, &[]);
        data.extend(record(b"\x01", 20, 4096, true, &[]));
        data.extend(record(b"A;1", 50, 1, false, &[]));
        data.resize(SECTOR as usize, 0);
        data.extend(record(b"B;1", 51, 2, false, &[]));
        data.resize(2 * SECTOR as usize, 0);
        let names: Vec<String> = parse_directory(&data, &none)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let mut broken = record(b"A;1", 50, 1, false, &[]);
        broken[0] = 200;
        assert!(parse_directory(&broken, &none).is_err());
    }
}
