//! The work directory of `x2nestos convert`, where the conversion initramfs is assembled from
//! the dracut module, the installer, the plan and the image before kexec loads it.
//!
//! Everything in it ends up running as root on the next boot, and its default parent
//! (`/var/tmp`) is writable by every user. So it is a directory only this process can have
//! made: an old one is removed only when it is a real directory owned by us; the new one is
//! made by a single `mkdir` that must succeed (a directory or link another user put there
//! first makes it fail, it is never followed or reused), then checked with `lstat` to be ours
//! with mode 0700. Its parent must not let other users rename it away (a world-writable
//! parent needs the sticky bit, as `/var/tmp` and `/tmp` have). Inside a 0700 directory of
//! root's nobody else can create or replace a file.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// What `lstat` says of a path, as far as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dir: bool,
    pub link: bool,
    pub uid: u32,
    pub mode: u32,
}

impl From<&Metadata> for Stat {
    fn from(m: &Metadata) -> Stat {
        Stat {
            dir: m.file_type().is_dir(),
            link: m.file_type().is_symlink(),
            uid: m.uid(),
            mode: m.mode() & 0o7777,
        }
    }
}

/// Why the parent cannot hold a private directory, if it cannot.
pub fn parent_refusal(parent: Stat, euid: u32) -> Option<String> {
    if parent.link || !parent.dir {
        return Some("is not a directory".into());
    }
    if parent.mode & 0o002 != 0 && parent.mode & 0o1000 == 0 {
        return Some(
            "is writable by every user without the sticky bit, so another user could move the work directory away".into(),
        );
    }
    if parent.uid != euid && parent.uid != 0 && parent.mode & 0o1000 == 0 {
        return Some(format!(
            "belongs to uid {}, who could move the work directory away",
            parent.uid
        ));
    }
    None
}

/// Whether what is already at the work directory's path may be removed as an old one of
/// ours; otherwise why not.
pub fn existing_refusal(existing: Stat, euid: u32) -> Option<String> {
    if existing.link {
        return Some("is a symbolic link".into());
    }
    if !existing.dir {
        return Some("is not a directory".into());
    }
    if existing.uid != euid {
        return Some(format!(
            "belongs to uid {}: another user made it",
            existing.uid
        ));
    }
    None
}

/// Whether the directory just made is ours alone; otherwise why not.
pub fn made_refusal(made: Stat, euid: u32) -> Option<String> {
    if made.link || !made.dir || made.uid != euid || made.mode & 0o077 != 0 {
        return Some(format!(
            "is not the private directory just made (owner uid {}, mode {:o})",
            made.uid, made.mode
        ));
    }
    None
}

/// Makes `path` a fresh, private work directory (its parent created when missing) and
/// returns it; refuses, naming what and why, when it cannot be sure nobody else has a hand
/// in it.
pub fn create(path: &Path, euid: u32) -> anyhow::Result<PathBuf> {
    let refuse = |why: String| {
        anyhow::anyhow!(
            "the work directory {}: {why}; remove it, or give --workdir in a directory only root can write",
            path.display()
        )
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .with_context(|| format!("creating {}", parent.display()))?;
    let parent_stat =
        fs::symlink_metadata(parent).with_context(|| format!("reading {}", parent.display()))?;
    if let Some(why) = parent_refusal(Stat::from(&parent_stat), euid) {
        bail!(
            "the work directory's parent {} {why}; give --workdir in a directory only root can write",
            parent.display()
        );
    }
    match fs::symlink_metadata(path) {
        Ok(existing) => {
            if let Some(why) = existing_refusal(Stat::from(&existing), euid) {
                return Err(refuse(why));
            }
            fs::remove_dir_all(path)
                .with_context(|| format!("removing the old {}", path.display()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(refuse(
                "appeared while x2nestos was making it: another user is racing for it".into(),
            ))
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    let made = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(why) = made_refusal(Stat::from(&made), euid) {
        return Err(refuse(why));
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(dir: bool, link: bool, uid: u32, mode: u32) -> Stat {
        Stat {
            dir,
            link,
            uid,
            mode,
        }
    }

    #[test]
    fn parents_that_let_others_move_the_directory_are_refused() {
        assert_eq!(
            parent_refusal(stat(true, false, 0, 0o1777), 0),
            None,
            "/var/tmp"
        );
        assert_eq!(parent_refusal(stat(true, false, 0, 0o755), 0), None);
        assert!(parent_refusal(stat(true, false, 0, 0o777), 0)
            .unwrap()
            .contains("without the sticky bit"));
        assert!(parent_refusal(stat(true, false, 1000, 0o755), 0)
            .unwrap()
            .contains("uid 1000"));
        assert_eq!(parent_refusal(stat(true, false, 1000, 0o1777), 0), None);
        assert!(parent_refusal(stat(false, true, 0, 0o777), 0).is_some());
    }

    #[test]
    fn only_our_own_old_directory_is_removed() {
        assert_eq!(existing_refusal(stat(true, false, 0, 0o700), 0), None);
        assert!(existing_refusal(stat(false, true, 0, 0o777), 0)
            .unwrap()
            .contains("symbolic link"));
        assert!(existing_refusal(stat(true, false, 1000, 0o700), 0)
            .unwrap()
            .contains("another user made it"));
        assert!(existing_refusal(stat(false, false, 0, 0o600), 0).is_some());
        assert!(made_refusal(stat(true, false, 0, 0o700), 0).is_none());
        assert!(made_refusal(stat(true, false, 0, 0o770), 0).is_some());
    }

    #[test]
    fn a_fresh_directory_is_made_private_and_an_old_one_replaced() {
        let top = tempfile::tempdir().unwrap();
        let euid = crate::sys::euid();
        let work = top.path().join("a/b/work");
        create(&work, euid).unwrap();
        let meta = fs::symlink_metadata(&work).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        fs::write(work.join("old"), "x").unwrap();
        create(&work, euid).unwrap();
        assert!(!work.join("old").exists(), "the old one was replaced");
        // A link where the directory should be: refused, its target untouched.
        let target = top.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "x").unwrap();
        let linked = top.path().join("linked");
        std::os::unix::fs::symlink(&target, &linked).unwrap();
        let err = create(&linked, euid).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert!(target.join("keep").exists());
    }
}
