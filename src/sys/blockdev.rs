//! The block-device requests the image writer makes of the kernel: the logical sector size
//! (`BLKSSZGET`) and a re-read of the partition table (`BLKRRPART`), plus the open flag
//! that asks for a device nobody else holds. Which device, and what an answer means, is the
//! caller's business.

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
