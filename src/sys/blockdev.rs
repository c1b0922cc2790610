//! The block-device requests the image writer makes of the kernel: the logical sector size
//! (`BLKSSZGET`), a re-read of the partition table (`BLKRRPART`), zeroing a range without
//! sending the zeroes (`BLKZEROOUT` on a device, `fallocate(FALLOC_FL_ZERO_RANGE)` on a disk
//! image file), plus the open flag that asks for a device nobody else holds. Which device,
//! and what an answer means, is the caller's business.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// The `open(2)` flag that makes the kernel refuse a block device that is mounted, swap, or
/// held by LVM, MD or dm-crypt (it then answers EBUSY, [`io::ErrorKind::ResourceBusy`]).
pub const OPEN_EXCLUSIVE: i32 = libc::O_EXCL;

/// The device's logical sector size in bytes.
pub fn logical_sector_size(device: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at a live c_int;
    // the descriptor is open for the duration of the call, borrowed from `device`.
    let rc = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            libc::BLKSSZGET,
            &mut size as *mut libc::c_int,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size).map_err(|_| io::Error::other(format!("odd sector size {size}")))
}

/// Asks the kernel to read the device's partition table again. A device whose kernel shows
/// no partitions (a loop device without partition scanning) answers EINVAL
/// ([`io::ErrorKind::InvalidInput`]).
pub fn reread_partitions(device: &File) -> io::Result<()> {
    /// `_IO(0x12, 95)` from linux/fs.h; the libc crate does not name it.
    const BLKRRPART: libc::c_ulong = 0x125f;
    // SAFETY: BLKRRPART takes no argument and reads or writes no memory of ours; the
    // descriptor is open for the duration of the call, borrowed from `device`.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), BLKRRPART as _) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to make `len` bytes at `offset` of a block device read as zeroes
/// (`BLKZEROOUT`): the device's write-zeroes command where it has one (disks, NVMe, loop
/// devices over a file system that can), else the kernel writes zero pages itself. Either
/// way the range reads back as zeroes afterwards, which discard (`BLKDISCARD`) does not
/// promise. `offset` and `len` must be multiples of the logical sector size and inside the
/// device (else EINVAL). The call returns when the zeroes were written (not necessarily
/// flushed from the device's cache: that is `fsync`'s job); on an error part of the range
/// may already be zeroed and the rest unchanged.
pub fn zero_out(device: &File, offset: u64, len: u64) -> io::Result<()> {
    /// `_IO(0x12, 127)` from linux/fs.h; the libc crate does not name it.
    const BLKZEROOUT: libc::c_ulong = 0x127f;
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer, which points at
    // a live array of exactly that shape, and writes no memory of ours; the descriptor is
    // open for the duration of the call, borrowed from `device`.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `len` bytes at `offset` of a regular file read as zeroes without writing them
/// (`fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)`), never growing the file. File
/// systems without it (tmpfs, NFS, …) answer EOPNOTSUPP
/// ([`io::ErrorKind::Unsupported`]).
pub fn zero_file_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate reads and writes no memory of ours; the descriptor is open for the
    // duration of the call, borrowed from `file`.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
