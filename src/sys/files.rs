//! Reading a small file that someone other than the caller may control — a user's
//! `~/.ssh/authorized_keys`, a file under /etc — without being led elsewhere or made to wait:
//! the file is opened without blocking (a FIFO cannot hang the reader), optionally without
//! following a symbolic link in its last component, checked on the open descriptor to be a
//! regular file (no check-then-open race), and read up to a cap. What a refusal means is the
//! caller's business.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Whether a symbolic link at the path itself is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow it: the path was named by the admin, who may mean the link's target.
    Follow,
    /// Refuse it: the path is in a place another user controls.
    Refuse,
}

/// A regular file's bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("a symbolic link, not followed here: replace it with the file itself")]
    Link,
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than {0} bytes, more than such a file holds")]
    TooLarge(u64),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ReadError {
    /// Nothing is at the path.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        match e {
            ReadError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

/// Reads the regular file at `path`, at most `max` bytes (a missing file is the OS's
/// NotFound error, [`ReadError::is_not_found`]). Refused: a link (with [`Links::Refuse`]), anything but a regular file, a file larger than
/// `max`.
pub fn read_regular(path: &Path, max: u64, links: Links) -> Result<Contents, ReadError> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && links == Links::Refuse => {
            return Err(ReadError::Link)
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    // The file may grow between the check and the read.
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(Contents {
        bytes,
        mode: meta.mode() & 0o7777,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn regular_files_links_fifos_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "ssh-ed25519 AAAA\n").unwrap();
        let got = read_regular(&file, 100, Links::Refuse).unwrap();
        assert_eq!(got.bytes, b"ssh-ed25519 AAAA\n");

        let link = dir.path().join("link");
        symlink(&file, &link).unwrap();
        let err = read_regular(&link, 100, Links::Refuse).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(read_regular(&link, 100, Links::Follow).unwrap(), got);

        // A FIFO nobody writes to: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        make_fifo(&fifo);
        let err = read_regular(&fifo, 100, Links::Follow).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let err = read_regular(dir.path(), 100, Links::Follow).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let err = read_regular(&file, 4, Links::Refuse).unwrap_err();
        assert!(err.to_string().contains("larger than 4 bytes"), "{err}");

        let err = read_regular(&dir.path().join("absent"), 4, Links::Refuse).unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    fn make_fifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}
