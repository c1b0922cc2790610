//! Streaming an image onto a [`WriteTarget`].
//!
//! Guarantees, in order:
//! 1. Nothing is written before the first chunk has been decompressed and its sector size
//!    checked against the target's.
//! 2. The first MiB of the target is written only after the whole stream was read, its
//!    SHA-256 matched (when one is given) and everything else was written and fsynced; so on
//!    any error the target's first MiB is as it was.
//! 3. Memory is bounded: a fixed pool of chunk buffers circulates between the decompressing
//!    thread and the writing thread; xz's threaded decoder gets its own memory limit, and
//!    large allocations go back to the kernel when freed (see [`crate::sys::memory`]).
//! 4. Every byte of the image reads back from the target: zero runs the kernel was asked to
//!    zero and did not are written as zeroes.
//!
//! Assumptions: the caller chose the target (see [`WriteTarget::open`]) and decided whether an
//! unverified image is acceptable (`sha256: None`). Caveat: on failure after guarantee 1, the
//! rest of the target beyond the first MiB holds part of the new image.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use super::format::{self, Format, SNIFF_LEN};
use super::target::WriteTarget;
use super::verify::HashingReader;
use super::zeroes::{self, Piece};

/// The part of the disk written last: it holds the partition table(s) and boot code, so a
/// disk whose image did not verify has no table that points at the half-written rest.
pub const HOLD_BACK: usize = 1 << 20;

/// How the writer runs.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Expected SHA-256 of the image stream as read (compressed). `None` writes an unverified
    /// image: the caller's `--insecure` decision.
    pub sha256: Option<[u8; 32]>,
    /// Bytes per write; rounded up to a whole number of MiB (so every write but the last is
    /// aligned to any sector size).
    pub chunk_size: usize,
    /// Chunks in flight between the decompressor and the writer.
    pub queue_depth: usize,
    /// Worker threads for xz streams made of several blocks (single-block streams always
    /// decode on one thread).
    pub xz_threads: u32,
    /// Memory liblzma may use for decoding: within it as many threads as fit, and never more
    /// (an image that needs more on one thread is refused, [`ImageError::XzMemory`]).
    pub xz_memory: u64,
    /// Zero runs at least this long, aligned to it (rounded to a power of two between 4 KiB
    /// and 1 MiB), are zeroed by the kernel instead of written; 0 writes every byte.
    pub zero_run: usize,
    /// Where the image must end: the first byte of a partition that is kept. No byte at or
    /// past it is written; an image that reaches it fails with [`ImageError::IntoKept`].
    pub stop_at: Option<u64>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            sha256: None,
            // 2 MiB writes are large and aligned enough for any disk; eight of them in
            // flight (16 MiB: six queued, one being filled, one being written) keep
            // decompressing and writing overlapped.
            chunk_size: 2 << 20,
            queue_depth: 6,
            xz_threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            // Two workers on `xz -T` images of the default preset: each 24 MiB block needs
            // its 24 MiB output buffer, its compressed input (up to a few MiB) and an 8 MiB
            // dictionary, about 40 MiB, and a finished block's output is held until it has
            // been handed on; 96 MiB lets the next block start while that drains. With the
            // 16 MiB pool and the program itself the whole writer peaks under 128 MiB. Blocks
            // too large for it (`xz -9`: 64 MiB dictionary, 192 MiB blocks) decode on one
            // thread in the same bound.
            xz_memory: 96 << 20,
            // A free stretch of an ext4 file system is a whole number of 4 KiB blocks, but
            // ranges this long keep the zeroing requests few and large (the device does each
            // as one command) while still catching almost all free space of a metal image.
            zero_run: 1 << 20,
            stop_at: None,
        }
    }
}

/// Where the write stands; passed to the progress callback after every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Image bytes read (compressed).
    pub read: u64,
    /// Uncompressed bytes written or held back.
    pub written: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    pub format: Format,
    pub compressed_bytes: u64,
    pub image_bytes: u64,
    /// Image bytes that were zero runs the kernel zeroed instead of being sent (0 when the
    /// target refused to, or zeroing was off).
    pub zeroed_bytes: u64,
    pub sha256: [u8; 32],
}

/// Why a write failed. Whatever the variant, the target's first MiB was not written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading the image: {0}")]
    Read(#[source] io::Error),
    #[error("decompressing the {format} image after {read} bytes read: {source}; the image is corrupt or truncated")]
    Decompress {
        format: Format,
        read: u64,
        #[source]
        source: io::Error,
    },
    #[error("the image is empty")]
    Empty,
    #[error("image checksum mismatch: expected sha256 {expected}, got {actual}; the image is corrupt, truncated, or not the one the checksum is for")]
    Checksum { expected: String, actual: String },
    #[error("the image is larger than {path} ({target} bytes): at least {image} bytes; choose a larger disk")]
    TooLarge {
        path: PathBuf,
        image: u64,
        target: u64,
    },
    #[error("the image reaches byte {image} of {path}, into a kept partition that starts at byte {kept}; the kept partition was not written")]
    IntoKept {
        path: PathBuf,
        image: u64,
        kept: u64,
    },
    #[error("the image is built for {image}-byte sectors but {path} has {target}-byte sectors; use the image made for this disk's sector size")]
    SectorSize {
        path: PathBuf,
        image: u32,
        target: u32,
    },
    #[error("writing to {path} at offset {offset}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing {path} to stable storage: {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the xz image needs more than {limit_mib} MiB to decode (a dictionary larger than any xz preset's); recompress it with xz -9 or less")]
    XzMemory { limit_mib: u64 },
    #[error("starting the xz decoder: {0}")]
    XzSetup(String),
}

enum Message {
    /// A buffer holding decompressed bytes (its length), and the bytes read so far.
    Data(Vec<u8>, u64),
    End {
        sha256: [u8; 32],
        read: u64,
    },
}

/// Streams `source` onto `target` by the guarantees of this module.
pub fn write_image(
    source: impl Read + Send,
    target: &WriteTarget,
    options: &WriteOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<WriteReport, ImageError> {
    let chunk_size = options.chunk_size.max(1).div_ceil(HOLD_BACK) * HOLD_BACK;
    let depth = options.queue_depth.max(1);
    let (data_tx, data_rx) = mpsc::sync_channel::<Result<Message, ImageError>>(depth);
    let (pool_tx, pool_rx) = mpsc::sync_channel::<Vec<u8>>(depth + 2);
    for _ in 0..depth + 2 {
        pool_tx
            .send(Vec::with_capacity(chunk_size))
            .expect("the pool holds exactly this many buffers");
    }
    let format = std::sync::OnceLock::new();
    std::thread::scope(|scope| {
        let format = &format;
        scope.spawn(move || produce(source, options, chunk_size, data_tx, pool_rx, format));
        consume(target, options, data_rx, pool_tx, progress).map(|done| WriteReport {
            format: *format.get().unwrap_or(&Format::Raw),
            compressed_bytes: done.read,
            image_bytes: done.image_bytes,
            zeroed_bytes: done.zeroed_bytes,
            sha256: done.sha256,
        })
    })
}

/// Counts bytes read, for progress, while the decoder owns the reader.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The reading and decompressing side: fills pool buffers and sends them on.
fn produce(
    source: impl Read,
    options: &WriteOptions,
    chunk_size: usize,
    data_tx: SyncSender<Result<Message, ImageError>>,
    pool_rx: Receiver<Vec<u8>>,
    format_out: &std::sync::OnceLock<Format>,
) {
    let count = Arc::new(AtomicU64::new(0));
    let mut hashing = HashingReader::new(Counted {
        inner: source,
        count: count.clone(),
    });
    let result = (|| -> Result<(), ImageError> {
        let mut head = Vec::with_capacity(SNIFF_LEN);
        (&mut hashing)
            .take(SNIFF_LEN as u64)
            .read_to_end(&mut head)
            .map_err(ImageError::Read)?;
        let format = format::sniff(&head);
        let _ = format_out.set(format);
        let stream = io::Cursor::new(head).chain(&mut hashing);
        let mut decoder = decoder(format, stream, options)?;
        loop {
            let Ok(mut buf) = pool_rx.recv() else {
                return Ok(()); // the writer stopped; it reports why
            };
            buf.clear();
            let filled = (&mut decoder)
                .take(chunk_size as u64)
                .read_to_end(&mut buf)
                .map_err(|source| {
                    classify(format, count.load(Ordering::Relaxed), options, source)
                })?;
            if filled == 0 {
                break;
            }
            let read = count.load(Ordering::Relaxed);
            if data_tx.send(Ok(Message::Data(buf, read))).is_err() {
                return Ok(());
            }
        }
        drop(decoder);
        Ok(())
    })();
    let message = result.and_then(|()| {
        let (sha256, read) = hashing.finish().map_err(ImageError::Read)?;
        Ok(Message::End { sha256, read })
    });
    let _ = data_tx.send(message);
}

/// An error from the source itself stays a read error; anything else came from the decoder.
fn classify(format: Format, read: u64, options: &WriteOptions, source: io::Error) -> ImageError {
    let memory_limit = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<liblzma::stream::Error>())
        .is_some_and(|e| matches!(e, liblzma::stream::Error::MemLimit));
    if memory_limit {
        ImageError::XzMemory {
            limit_mib: options.xz_memory >> 20,
        }
    } else if format == Format::Raw {
        ImageError::Read(source)
    } else {
        ImageError::Decompress {
            format,
            read,
            source,
        }
    }
}

fn decoder<'a>(
    format: Format,
    stream: impl Read + 'a,
    options: &WriteOptions,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    Ok(match format {
        Format::Raw => Box::new(stream),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(1 << 16, stream),
        )),
        Format::Zstd => {
            Box::new(zstd::Decoder::new(stream).map_err(|e| ImageError::XzSetup(e.to_string()))?)
        }
        Format::Xz => {
            // The threaded decoder allocates and frees a block-sized buffer per block; without
            // this, glibc keeps the freed ones in its heaps and resident memory exceeds the
            // limit given to liblzma by tens of MiB.
            crate::sys::memory::return_large_allocations(1 << 20);
            let xz = liblzma::stream::MtStreamBuilder::new()
                .threads(options.xz_threads.max(1))
                .memlimit_threading(options.xz_memory)
                // Never more, whatever the image asks: a crafted header could otherwise make
                // the decoder allocate gigabytes before the checksum shows the image is bad.
                // Every xz preset fits (-9: a 64 MiB dictionary, decoded on one thread).
                .memlimit_stop(options.xz_memory)
                .timeout_ms(0)
                .decoder()
                .map_err(|e| ImageError::XzSetup(e.to_string()))?;
            Box::new(liblzma::read::XzDecoder::new_stream(stream, xz))
        }
    })
}

/// What the writing side did.
struct Done {
    image_bytes: u64,
    zeroed_bytes: u64,
    read: u64,
    sha256: [u8; 32],
}

/// The writing side.
fn consume(
    target: &WriteTarget,
    options: &WriteOptions,
    data_rx: Receiver<Result<Message, ImageError>>,
    pool_tx: SyncSender<Vec<u8>>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Done, ImageError> {
    let path = || target.path().to_owned();
    let mut sink = Sink::new(target, zeroes::granule(options.zero_run));
    let mut held: Vec<u8> = Vec::new();
    let mut offset: u64 = 0;
    loop {
        // A closed channel without End means the producer died: report it as a read failure.
        let message = data_rx.recv().map_err(|_| {
            ImageError::Read(io::Error::other("the decompressing thread stopped"))
        })??;
        match message {
            Message::Data(buf, read) => {
                let end = offset + buf.len() as u64;
                if let Some(kept) = options.stop_at.filter(|&k| end > k) {
                    return Err(ImageError::IntoKept {
                        path: path(),
                        image: end,
                        kept,
                    });
                }
                if end > target.size() {
                    return Err(ImageError::TooLarge {
                        path: path(),
                        image: end,
                        target: target.size(),
                    });
                }
                let mut body = &buf[..];
                if offset == 0 {
                    let keep = buf.len().min(HOLD_BACK);
                    held.extend_from_slice(&buf[..keep]);
                    if let Some(image) = format::gpt_sector_size(&held) {
                        if image != target.sector_size() {
                            return Err(ImageError::SectorSize {
                                path: path(),
                                image,
                                target: target.sector_size(),
                            });
                        }
                    }
                    body = &buf[keep..];
                }
                let at = offset + (buf.len() - body.len()) as u64;
                sink.put(body, at)?;
                offset = end;
                let _ = pool_tx.send(buf);
                progress(&Progress {
                    read,
                    written: offset,
                });
            }
            Message::End { sha256, read } => {
                if offset == 0 {
                    return Err(ImageError::Empty);
                }
                if let Some(expected) = options.sha256 {
                    if expected != sha256 {
                        return Err(ImageError::Checksum {
                            expected: hex::encode(expected),
                            actual: hex::encode(sha256),
                        });
                    }
                }
                sink.flush_zeroes()?;
                let sync = |source| ImageError::Sync {
                    path: path(),
                    source,
                };
                target.file().sync_all().map_err(sync)?;
                sink.write(&held, 0)?;
                target.file().sync_all().map_err(sync)?;
                return Ok(Done {
                    image_bytes: offset,
                    zeroed_bytes: sink.zeroed,
                    read,
                    sha256,
                });
            }
        }
    }
}

/// Puts image bytes on the target: data by plain writes, zero runs (whole granules, merged
/// across chunks) by the kernel's zeroing, issued before the next data or at the end. When
/// the target refuses or fails a zeroing, the range is written with zeroes instead, and every
/// later run too: a device that failed once is not asked again.
struct Sink<'a> {
    target: &'a WriteTarget,
    granule: Option<usize>,
    /// The zero run not yet issued, as (start, end).
    pending: Option<(u64, u64)>,
    kernel_zeroes: bool,
    zeroed: u64,
}

impl<'a> Sink<'a> {
    fn new(target: &'a WriteTarget, granule: Option<usize>) -> Sink<'a> {
        Sink {
            target,
            granule,
            pending: None,
            kernel_zeroes: true,
            zeroed: 0,
        }
    }

    /// `bytes` belong at `at`, a multiple of 1 MiB (where every chunk but the first starts,
    /// and where the first's body starts).
    fn put(&mut self, bytes: &[u8], at: u64) -> Result<(), ImageError> {
        let Some(granule) = self.granule else {
            return self.write(bytes, at);
        };
        for piece in zeroes::split(bytes, granule) {
            match piece {
                Piece::Data(range) => {
                    self.flush_zeroes()?;
                    self.write(&bytes[range.clone()], at + range.start as u64)?;
                }
                Piece::Zero(range) => {
                    let (start, end) = (at + range.start as u64, at + range.end as u64);
                    match &mut self.pending {
                        Some((_, pending_end)) if *pending_end == start => *pending_end = end,
                        _ => {
                            self.flush_zeroes()?;
                            self.pending = Some((start, end));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&self, bytes: &[u8], at: u64) -> Result<(), ImageError> {
        self.target
            .file()
            .write_all_at(bytes, at)
            .map_err(|source| ImageError::Write {
                path: self.target.path().to_owned(),
                offset: at,
                source,
            })
    }

    fn flush_zeroes(&mut self) -> Result<(), ImageError> {
        let Some((start, end)) = self.pending.take() else {
            return Ok(());
        };
        if self.kernel_zeroes {
            match self.target.zero_range(start, end - start) {
                Ok(()) => {
                    self.zeroed += end - start;
                    return Ok(());
                }
                Err(e) => {
                    // Said once: from here on every zero is written.
                    tracing::debug!(
                        "{} did not zero {} bytes at offset {start} ({e}); writing zeroes instead",
                        self.target.path().display(),
                        end - start
                    );
                    self.kernel_zeroes = false;
                }
            }
        }
        let zeroes = vec![0u8; ((end - start) as usize).min(ZERO_WRITE)];
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(zeroes.len());
            self.write(&zeroes[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// The largest plain write of zeroes when the kernel will not zero a run: large enough to
/// write at the disk's speed, small beside the chunk pool.
const ZERO_WRITE: usize = 1 << 20;
