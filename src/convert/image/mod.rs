//! The disk image: what format it is in, and writing it onto a disk safely.
//!
//! The writer streams: read → sha256 while reading → decompress (sniffed: xz, gzip, zstd or
//! raw; multi-block xz on several threads) → write in large sector-aligned chunks, except
//! aligned runs of zeroes, which the kernel zeroes on the device (`zeroes.rs` finds them). Reading and decompressing run on their own
//! thread and hand chunks to the writer through a bounded channel, so memory stays bounded
//! whatever the image size. The first MiB (partition table, boot code) is held back and
//! written last, only after the whole stream has been read, decompressed and verified: an
//! image that fails half-way never leaves a disk that boots it.

pub mod format;
pub mod target;
pub mod verify;
pub mod write;
pub mod zeroes;

pub use format::Format;
pub use target::{WriteTarget, WriteTargetKind};
pub use write::{write_image, ImageError, Progress, WriteOptions, WriteReport};
