//! The image writer on regular-file targets, with real compressors: every format, and every
//! way an image can be bad. After each failure the target's first MiB must be as it was.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use housekeeper::convert::image::{write_image, Format, ImageError, WriteOptions, WriteTarget};
use sha2::{Digest, Sha256};

#[path = "support/convert.rs"]
mod convert_support;

use convert_support::{noise, verified, zero_run_image, zero_runs};

const MIB: usize = 1 << 20;
/// What a target holds before the write: a pattern no image here contains.
const OLD: u8 = 0xA5;

/// A disk image of `len` bytes: a protective MBR and a GPT header for `sector` bytes per
/// sector, then runs of zeros, text and noise (so compressors have real work).
fn image(len: usize, sector: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    data[510] = 0x55;
    data[511] = 0xAA;
    data[sector..sector + 8].copy_from_slice(b"EFI PART");
    let mut seed: u32 = 12345;
    let mut at = 2 * MIB.min(len / 2);
    while at < len {
        let run = (64 * 1024).min(len - at);
        match (at / run) % 3 {
            0 => {}
            1 => {
                for (i, b) in data[at..at + run].iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog\n"[i % 44];
                }
            }
            _ => {
                for b in &mut data[at..at + run] {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    *b = (seed >> 16) as u8;
                }
            }
        }
        at += run;
    }
    // A marker in the first MiB that differs from OLD, so "untouched" is checkable.
    data[MIB - 1] = 0x42;
    data
}

fn compress(format: Format, data: &[u8]) -> Vec<u8> {
    match format {
        Format::Raw => data.to_vec(),
        Format::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Format::Zstd => zstd::encode_all(data, 3).unwrap(),
        Format::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }
}

/// xz in 1 MiB blocks, as `xz -T` writes it: the decoder can use several threads.
fn compress_xz_blocks(data: &[u8]) -> Vec<u8> {
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(2)
        .block_size(MIB as u64)
        .preset(1)
        .encoder()
        .unwrap();
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Disk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn disk(len: usize) -> Disk {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![OLD; len]).unwrap();
    Disk { _dir: dir, path }
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn write(
    source: &[u8],
    path: &Path,
    options: &WriteOptions,
) -> Result<housekeeper::convert::image::WriteReport, ImageError> {
    let target = WriteTarget::open(path).unwrap();
    write_image(source, &target, options, &mut |_| {})
}

fn assert_first_mib_untouched(path: &Path) {
    let now = std::fs::read(path).unwrap();
    assert!(
        now[..MIB].iter().all(|&b| b == OLD),
        "the first MiB of {} was written",
        path.display()
    );
}

#[test]
fn every_format_writes_the_image_exactly() {
    let raw = image(9 * MIB + 4096, 512);
    for format in [Format::Raw, Format::Gzip, Format::Zstd, Format::Xz] {
        let source = compress(format, &raw);
        let target = disk(12 * MIB);
        let mut calls = Vec::new();
        let report = write_image(
            &source[..],
            &WriteTarget::open(&target.path).unwrap(),
            &verified(&source),
            &mut |p| calls.push(*p),
        )
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(report.format, format);
        assert_eq!(report.image_bytes, raw.len() as u64);
        assert_eq!(report.compressed_bytes, source.len() as u64);
        assert_eq!(report.sha256, sha(&source));
        let written = std::fs::read(&target.path).unwrap();
        assert!(written[..raw.len()] == raw[..], "{format}: content differs");
        assert!(
            written[raw.len()..].iter().all(|&b| b == OLD),
            "{format}: wrote past the image"
        );
        let last = calls.last().unwrap();
        assert_eq!(last.written, raw.len() as u64, "{format}");
        assert!(calls.windows(2).all(|w| w[0].written < w[1].written));
    }
}

#[test]
fn multi_block_xz_decodes_on_several_threads_to_the_same_bytes() {
    let raw = image(16 * MIB, 512);
    let source = compress_xz_blocks(&raw);
    let target = disk(16 * MIB);
    let options = WriteOptions {
        xz_threads: 4,
        ..verified(&source)
    };
    let report = write(&source, &target.path, &options).unwrap();
    assert_eq!(report.format, Format::Xz);
    assert!(std::fs::read(&target.path).unwrap() == raw);
}

#[test]
fn checksum_mismatch_leaves_the_first_mib_untouched() {
    let raw = image(4 * MIB, 512);
    for format in [Format::Raw, Format::Xz] {
        let source = compress(format, &raw);
        let target = disk(8 * MIB);
        let options = WriteOptions {
            sha256: Some(sha(b"another image")),
            ..WriteOptions::default()
        };
        let err = write(&source, &target.path, &options).unwrap_err();
        assert!(
            matches!(err, ImageError::Checksum { .. }),
            "{format}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("image checksum mismatch: expected sha256 "),
            "{msg}"
        );
        assert!(msg.contains(&hex::encode(sha(&source))), "{msg}");
        assert_first_mib_untouched(&target.path);
    }
}

#[test]
fn corruption_midway_is_caught_before_the_first_mib() {
    let raw = image(6 * MIB, 512);
    for format in [Format::Raw, Format::Gzip, Format::Zstd, Format::Xz] {
        let good = compress(format, &raw);
        let mut bad = good.clone();
        let middle = bad.len() / 2;
        bad[middle] ^= 0x40;
        let target = disk(8 * MIB);
        // The checksum is of the good image: the corruption is what a bad download does.
        let err = write(&bad, &target.path, &verified(&good)).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Checksum { .. } | ImageError::Decompress { .. }
            ),
            "{format}: {err}"
        );
        assert_first_mib_untouched(&target.path);
    }
}

#[test]
fn truncated_compressed_images_fail_even_unverified() {
    let raw = image(6 * MIB, 512);
    for format in [Format::Gzip, Format::Zstd, Format::Xz] {
        let full = compress(format, &raw);
        let cut = &full[..full.len() * 2 / 3];
        let target = disk(8 * MIB);
        let err = write(cut, &target.path, &WriteOptions::default()).unwrap_err();
        assert!(
            matches!(err, ImageError::Decompress { .. }),
            "{format}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("the image is corrupt or truncated"), "{msg}");
        assert_first_mib_untouched(&target.path);
    }
}

#[test]
fn truncated_raw_image_fails_on_its_checksum() {
    let raw = image(4 * MIB, 512);
    let target = disk(8 * MIB);
    let err = write(&raw[..3 * MIB], &target.path, &verified(&raw)).unwrap_err();
    assert!(matches!(err, ImageError::Checksum { .. }), "{err}");
    assert_first_mib_untouched(&target.path);
}

#[test]
fn an_image_larger_than_the_target_is_refused() {
    let raw = image(10 * MIB, 512);
    let source = compress(Format::Zstd, &raw);
    let target = disk(6 * MIB);
    let err = write(&source, &target.path, &verified(&source)).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("(6291456 bytes)") && msg.ends_with("choose a larger disk"),
        "{msg}"
    );
    assert_first_mib_untouched(&target.path);
    assert_eq!(
        std::fs::metadata(&target.path).unwrap().len(),
        6 * MIB as u64,
        "the file grew"
    );
}

#[test]
fn a_sector_size_mismatch_is_refused_before_any_write() {
    let raw = image(4 * MIB, 512);
    let target = disk(8 * MIB);
    let t = WriteTarget::open(&target.path)
        .unwrap()
        .with_sector_size(4096);
    let err = write_image(&raw[..], &t, &verified(&raw), &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::SectorSize {
                image: 512,
                target: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        std::fs::read(&target.path)
            .unwrap()
            .iter()
            .all(|&b| b == OLD),
        "something was written"
    );

    // And a 4Kn image onto a 4Kn target goes through.
    let raw4k = image(4 * MIB, 4096);
    let t = WriteTarget::open(&target.path)
        .unwrap()
        .with_sector_size(4096);
    write_image(&raw4k[..], &t, &verified(&raw4k), &mut |_| {}).unwrap();
}

#[test]
fn an_empty_image_is_refused() {
    let target = disk(2 * MIB);
    let err = write(&[], &target.path, &WriteOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), "the image is empty");
    assert_first_mib_untouched(&target.path);
}

#[test]
fn small_chunks_and_a_shallow_queue_give_the_same_result() {
    let raw = image(5 * MIB + 512, 512);
    let source = compress(Format::Gzip, &raw);
    let target = disk(6 * MIB);
    let options = WriteOptions {
        chunk_size: 1,
        queue_depth: 1,
        ..verified(&source)
    };
    write(&source, &target.path, &options).unwrap();
    assert!(std::fs::read(&target.path).unwrap()[..raw.len()] == raw[..]);
}

#[test]
fn a_failing_source_is_a_read_error() {
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("connection reset"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(0);
            self.0 -= n;
            Ok(n)
        }
    }
    let target = disk(8 * MIB);
    let t = WriteTarget::open(&target.path).unwrap();
    let err = write_image(Failing(3 * MIB), &t, &WriteOptions::default(), &mut |_| {}).unwrap_err();
    assert_eq!(err.to_string(), "reading the image: connection reset");
    assert_first_mib_untouched(&target.path);
}

/// A target file of `len` bytes of noise: whatever a skipped zero run leaves behind is seen.
fn noisy_disk(len: usize) -> Disk {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, noise(99, len)).unwrap();
    Disk { _dir: dir, path }
}

/// What a stand-in zeroer was asked: (offset, length) per call.
type Calls = Arc<Mutex<Vec<(u64, u64)>>>;

/// A zeroer that records each range and then does what `act` says with it.
fn stand_in(
    act: impl Fn(&std::fs::File, u64, u64) -> std::io::Result<()> + Send + Sync + 'static,
) -> (
    Calls,
    impl Fn(&std::fs::File, u64, u64) -> std::io::Result<()> + Send + Sync,
) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    (calls, move |file: &std::fs::File, offset, len| {
        seen.lock().unwrap().push((offset, len));
        act(file, offset, len)
    })
}

fn write_zeroes(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    file.write_all_at(&vec![0u8; len as usize], offset)
}

/// The whole zero MiBs past the first MiB of [`zero_run_image`]: what the writer must hand to
/// the kernel, runs merged across chunks, nothing in the first MiB, nothing past the image.
fn expected_zeroing(len: usize) -> Vec<(u64, u64)> {
    let mib = MIB as u64;
    let mut runs = Vec::new();
    for (start, end) in zero_runs(len) {
        let start = (start as u64).div_ceil(mib).max(1) * mib;
        let end = end as u64 / mib * mib;
        if end > start {
            runs.push((start, end - start));
        }
    }
    runs
}

#[test]
fn zero_runs_are_handed_to_the_kernel_and_read_back_as_zeroes_in_every_format() {
    // An unaligned length: the zero run at the end finishes with a part shorter than a MiB.
    let len = 20 * MIB + 1536;
    let raw = zero_run_image(len, 512);
    assert_eq!(
        expected_zeroing(len),
        vec![
            (MIB as u64, 2 * MIB as u64),
            (6 * MIB as u64, 2 * MIB as u64),
            (10 * MIB as u64, 4 * MIB as u64),
            (15 * MIB as u64, 5 * MIB as u64),
        ]
    );
    for format in [Format::Raw, Format::Gzip, Format::Zstd, Format::Xz] {
        let source = compress(format, &raw);
        let target = noisy_disk(24 * MIB);
        let before = std::fs::read(&target.path).unwrap();
        let (calls, zeroer) = stand_in(write_zeroes);
        let t = WriteTarget::open(&target.path).unwrap().with_zeroer(zeroer);
        let report = write_image(&source[..], &t, &verified(&source), &mut |_| {})
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        drop(t);
        assert_eq!(*calls.lock().unwrap(), expected_zeroing(len), "{format}");
        assert_eq!(report.zeroed_bytes, 13 * MIB as u64, "{format}");
        let now = std::fs::read(&target.path).unwrap();
        assert!(
            now[..len] == raw[..],
            "{format}: the image does not read back"
        );
        assert!(
            now[len..] == before[len..],
            "{format}: wrote past the image"
        );
    }
}

#[test]
fn the_kernel_zeroes_a_file_target_or_it_is_written_and_either_way_reads_back() {
    // The real fallocate(FALLOC_FL_ZERO_RANGE) where the temp directory's file system has it
    // (ext4, xfs, btrfs); plain writes where it answers EOPNOTSUPP (tmpfs).
    let len = 20 * MIB;
    let raw = zero_run_image(len, 512);
    let source = compress(Format::Zstd, &raw);
    let target = noisy_disk(len);
    let report = write(&source, &target.path, &verified(&source)).unwrap();
    assert!(
        report.zeroed_bytes == 13 * MIB as u64 || report.zeroed_bytes == 0,
        "{}",
        report.zeroed_bytes
    );
    assert!(std::fs::read(&target.path).unwrap() == raw);
    assert_eq!(std::fs::metadata(&target.path).unwrap().len(), len as u64);
}

#[test]
fn a_target_that_refuses_zeroing_is_asked_once_and_written_exactly() {
    let len = 20 * MIB;
    let raw = zero_run_image(len, 512);
    let source = compress(Format::Xz, &raw);
    let target = noisy_disk(len);
    let (calls, zeroer) =
        stand_in(|_, _, _| Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
    let t = WriteTarget::open(&target.path).unwrap().with_zeroer(zeroer);
    let report = write_image(&source[..], &t, &verified(&source), &mut |_| {}).unwrap();
    drop(t);
    assert_eq!(report.zeroed_bytes, 0);
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "asked again after a refusal"
    );
    assert!(std::fs::read(&target.path).unwrap() == raw);
}

#[test]
fn a_zeroing_that_fails_half_way_is_written_over() {
    // A failing disk: the first call scribbles over half its range, then answers EIO. The
    // range is then written with zeroes, and so is every later run.
    let len = 20 * MIB;
    let raw = zero_run_image(len, 512);
    let source = compress(Format::Gzip, &raw);
    let target = noisy_disk(len);
    let (calls, zeroer) = stand_in(|file, offset, len| {
        use std::os::unix::fs::FileExt as _;
        file.write_all_at(&vec![0xEE; len as usize / 2], offset)?;
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    });
    let t = WriteTarget::open(&target.path).unwrap().with_zeroer(zeroer);
    let report = write_image(&source[..], &t, &verified(&source), &mut |_| {}).unwrap();
    drop(t);
    assert_eq!(report.zeroed_bytes, 0);
    assert_eq!(*calls.lock().unwrap(), vec![(MIB as u64, 2 * MIB as u64)]);
    assert!(std::fs::read(&target.path).unwrap() == raw);
}

#[test]
fn zeroing_is_off_at_zero_run_0() {
    let len = 20 * MIB;
    let raw = zero_run_image(len, 512);
    let target = noisy_disk(len);
    let (calls, zeroer) = stand_in(write_zeroes);
    let t = WriteTarget::open(&target.path).unwrap().with_zeroer(zeroer);
    let options = WriteOptions {
        zero_run: 0,
        ..verified(&raw)
    };
    let report = write_image(&raw[..], &t, &options, &mut |_| {}).unwrap();
    drop(t);
    assert_eq!(report.zeroed_bytes, 0);
    assert!(calls.lock().unwrap().is_empty());
    assert!(std::fs::read(&target.path).unwrap() == raw);
}

#[test]
fn small_granules_catch_short_runs_still_aligned() {
    // 64 KiB granules: the unaligned run 5 MiB + 123 .. 9 MiB - 77 is zeroed from the first
    // 64 KiB boundary after its start to the last before its end.
    let len = 20 * MIB;
    let raw = zero_run_image(len, 512);
    let target = noisy_disk(len);
    let (calls, zeroer) = stand_in(write_zeroes);
    let t = WriteTarget::open(&target.path).unwrap().with_zeroer(zeroer);
    let options = WriteOptions {
        zero_run: 60 * 1024,
        ..verified(&raw)
    };
    write_image(&raw[..], &t, &options, &mut |_| {}).unwrap();
    drop(t);
    let calls = calls.lock().unwrap().clone();
    let k64 = 64 * 1024u64;
    assert!(
        calls.contains(&(
            (5 * MIB as u64).div_ceil(k64) * k64 + k64,
            (9 * MIB as u64 - 77) / k64 * k64 - (5 * MIB as u64 + 123).div_ceil(k64) * k64
        )),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|&(at, len)| at >= MIB as u64 && at % k64 == 0 && len % k64 == 0),
        "{calls:?}"
    );
    assert!(std::fs::read(&target.path).unwrap() == raw);
}

#[test]
fn a_zero_run_past_the_targets_end_is_refused_before_it_is_zeroed() {
    // The image ends in zeroes the short target has no room for: refused, the kernel never
    // asked to zero beyond the target, the first MiB as it was.
    let raw = zero_run_image(20 * MIB, 512);
    let source = compress(Format::Zstd, &raw);
    let target = disk(12 * MIB);
    let (calls, zeroer) = stand_in(write_zeroes);
    let t = WriteTarget::open(&target.path).unwrap().with_zeroer(zeroer);
    let err = write_image(&source[..], &t, &verified(&source), &mut |_| {}).unwrap_err();
    drop(t);
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    assert!(
        calls
            .lock()
            .unwrap()
            .iter()
            .all(|&(at, len)| at + len <= 12 * MIB as u64),
        "{calls:?}"
    );
    assert_first_mib_untouched(&target.path);
}

#[test]
fn a_zero_run_image_that_fails_its_checksum_leaves_the_first_mib_untouched() {
    let raw = zero_run_image(20 * MIB, 512);
    let source = compress(Format::Xz, &raw);
    let target = disk(20 * MIB);
    let (calls, zeroer) = stand_in(write_zeroes);
    let t = WriteTarget::open(&target.path).unwrap().with_zeroer(zeroer);
    let options = WriteOptions {
        sha256: Some(sha(b"another image")),
        ..WriteOptions::default()
    };
    let err = write_image(&source[..], &t, &options, &mut |_| {}).unwrap_err();
    drop(t);
    assert!(matches!(err, ImageError::Checksum { .. }), "{err}");
    assert!(calls
        .lock()
        .unwrap()
        .iter()
        .all(|&(at, _)| at >= MIB as u64));
    assert_first_mib_untouched(&target.path);
}

#[test]
fn an_xz_image_needing_more_memory_than_the_limit_is_refused_in_one_line() {
    // Preset 6 has an 8 MiB dictionary; the limit here is 4 MiB. (A crafted image could ask
    // for gigabytes; the decoder never goes past the limit.)
    let raw = image(3 * MIB, 512);
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(&raw).unwrap();
    let source = e.finish().unwrap();
    let target = disk(4 * MIB);
    let options = WriteOptions {
        xz_memory: 4 << 20,
        ..verified(&source)
    };
    let err = write(&source, &target.path, &options).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the xz image needs more than 4 MiB to decode (a dictionary larger than any xz preset's); \
         recompress it with xz -9 or less"
    );
    assert_first_mib_untouched(&target.path);
    // The default limit decodes it.
    write(&source, &target.path, &verified(&source)).unwrap();
    assert!(std::fs::read(&target.path).unwrap()[..raw.len()] == raw[..]);
}
