//! Finding configuration fragments in drop-in directories, the systemd way.
//!
//! Rules (each one is a unit test below):
//! - directories are searched in the order given; a later directory wins for the same file name;
//! - a file name whose newest entry is a symlink to `/dev/null` is masked (removed);
//! - only `*.toml` files are read (or, for check directories, executables), in file-name
//!   order; anything else is reported as ignored;
//! - dot files are left alone silently (editors' swap files, `.keep`);
//! - a directory that does not exist is fine; one that cannot be read is an error.
//!
//! This module only lists; reading and merging live in `super`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// The target of a symlink that masks a fragment of the same name.
const MASK_TARGET: &str = "/dev/null";

/// What a scan of the drop-in directories found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Fragments to read, in the order they apply (file-name order).
    pub fragments: Vec<PathBuf>,
    /// Entries that are not read, with why: shown to the admin as warnings.
    pub ignored: Vec<(PathBuf, &'static str)>,
    /// Fragment names masked by a `/dev/null` symlink, with the masking entry.
    pub masked: Vec<PathBuf>,
}

/// The drop-in directories `usr/lib/REL`, `etc/REL`, `run/REL` below `root`, lowest
/// priority first (REL is e.g. `hkd/config.d`).
pub fn directories(root: &Path, rel: &str) -> Vec<PathBuf> {
    ["usr/lib", "etc", "run"]
        .iter()
        .map(|base| root.join(base).join(rel))
        .collect()
}

/// What a drop-in directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Configuration fragments: `*.toml`.
    Toml,
    /// Programs to run (health checks): executable files of any name.
    Executables,
}

enum Entry {
    File(PathBuf),
    Mask(PathBuf),
    Ignored(PathBuf, &'static str),
}

/// Lists the fragments in `dirs` (lowest priority first) by the rules above.
pub fn scan(dirs: &[PathBuf], wanted: Wanted) -> Result<Scan, ConfigError> {
    let mut by_name: BTreeMap<OsString, Entry> = BTreeMap::new();
    for dir in dirs {
        let listing = match fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ConfigError::ListDir {
                    dir: dir.clone(),
                    source,
                })
            }
        };
        for entry in listing {
            let entry = entry.map_err(|source| ConfigError::ListDir {
                dir: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            by_name.insert(name, classify(entry.path(), wanted));
        }
    }

    let mut scan = Scan::default();
    for (_, entry) in by_name {
        match entry {
            Entry::File(path) => scan.fragments.push(path),
            Entry::Mask(path) => scan.masked.push(path),
            Entry::Ignored(path, why) => scan.ignored.push((path, why)),
        }
    }
    Ok(scan)
}

fn classify(path: PathBuf, wanted: Wanted) -> Entry {
    if fs::read_link(&path).is_ok_and(|target| target == Path::new(MASK_TARGET)) {
        return Entry::Mask(path);
    }
    if wanted == Wanted::Toml && path.extension().is_none_or(|ext| ext != "toml") {
        return Entry::Ignored(path, "only *.toml files are read");
    }
    // Follows symlinks: a fragment linked from elsewhere is read like any other.
    match fs::metadata(&path) {
        Ok(meta)
            if meta.is_file()
                && wanted == Wanted::Executables
                && meta.permissions().mode() & 0o111 == 0 =>
        {
            Entry::Ignored(path, "not executable")
        }
        Ok(meta) if meta.is_file() => Entry::File(path),
        Ok(_) => Entry::Ignored(path, "not a regular file"),
        Err(_) => Entry::Ignored(path, "a symlink whose target does not exist"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    struct Tree {
        root: TempDir,
    }

    impl Tree {
        fn new() -> Self {
            Tree {
                root: tempfile::tempdir().unwrap(),
            }
        }
        fn dirs(&self) -> Vec<PathBuf> {
            directories(self.root.path(), "hkd/config.d")
        }
        fn path(&self, rel: &str) -> PathBuf {
            self.root.path().join(rel)
        }
        fn file(&self, rel: &str) -> PathBuf {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, "").unwrap();
            path
        }
        fn link(&self, rel: &str, target: &str) -> PathBuf {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            symlink(target, &path).unwrap();
            path
        }
    }

    #[test]
    fn directories_are_lowest_priority_first() {
        let dirs = directories(Path::new("/x"), "hkd/config.d");
        assert_eq!(
            dirs,
            [
                "/x/usr/lib/hkd/config.d",
                "/x/etc/hkd/config.d",
                "/x/run/hkd/config.d"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn missing_directories_give_an_empty_scan() {
        let tree = Tree::new();
        assert_eq!(scan(&tree.dirs(), Wanted::Toml).unwrap(), Scan::default());
    }

    #[test]
    fn fragments_come_in_name_order_across_directories() {
        let tree = Tree::new();
        let b = tree.file("usr/lib/hkd/config.d/20-b.toml");
        let c = tree.file("etc/hkd/config.d/30-c.toml");
        let a = tree.file("run/hkd/config.d/10-a.toml");
        assert_eq!(
            scan(&tree.dirs(), Wanted::Toml).unwrap().fragments,
            vec![a, b, c]
        );
    }

    #[test]
    fn a_later_directory_overrides_the_same_name() {
        let tree = Tree::new();
        tree.file("usr/lib/hkd/config.d/50-x.toml");
        let etc = tree.file("etc/hkd/config.d/50-x.toml");
        assert_eq!(
            scan(&tree.dirs(), Wanted::Toml).unwrap().fragments,
            vec![etc.clone()]
        );
        let run = tree.file("run/hkd/config.d/50-x.toml");
        assert_eq!(
            scan(&tree.dirs(), Wanted::Toml).unwrap().fragments,
            vec![run]
        );
    }

    #[test]
    fn a_dev_null_symlink_masks_the_name() {
        let tree = Tree::new();
        tree.file("usr/lib/hkd/config.d/50-x.toml");
        let keep = tree.file("usr/lib/hkd/config.d/60-y.toml");
        let mask = tree.link("etc/hkd/config.d/50-x.toml", "/dev/null");
        let found = scan(&tree.dirs(), Wanted::Toml).unwrap();
        assert_eq!(found.fragments, vec![keep]);
        assert_eq!(found.masked, vec![mask]);
    }

    #[test]
    fn a_later_file_unmasks_a_name() {
        let tree = Tree::new();
        tree.link("usr/lib/hkd/config.d/50-x.toml", "/dev/null");
        let run = tree.file("run/hkd/config.d/50-x.toml");
        assert_eq!(
            scan(&tree.dirs(), Wanted::Toml).unwrap().fragments,
            vec![run]
        );
    }

    #[test]
    fn other_files_are_reported_not_read() {
        let tree = Tree::new();
        let good = tree.file("etc/hkd/config.d/10-good.toml");
        let conf = tree.file("etc/hkd/config.d/20-old.conf");
        let bak = tree.file("etc/hkd/config.d/10-good.toml.bak");
        tree.file("etc/hkd/config.d/.10-good.toml.swp");
        let found = scan(&tree.dirs(), Wanted::Toml).unwrap();
        assert_eq!(found.fragments, vec![good]);
        let ignored: Vec<_> = found.ignored.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(ignored, vec![bak, conf]);
    }

    #[test]
    fn symlinked_fragments_are_read_and_dangling_ones_reported() {
        let tree = Tree::new();
        let target = tree.file("srv/site.toml");
        let link = tree.link("etc/hkd/config.d/50-site.toml", target.to_str().unwrap());
        let dangling = tree.link("etc/hkd/config.d/60-gone.toml", "/nonexistent/x.toml");
        let found = scan(&tree.dirs(), Wanted::Toml).unwrap();
        assert_eq!(found.fragments, vec![link]);
        assert_eq!(found.ignored[0].0, dangling);
    }

    #[test]
    fn check_directories_take_executables_of_any_name() {
        let tree = Tree::new();
        let check = tree.file("etc/hkd/config.d/10-kubelet");
        fs::set_permissions(&check, fs::Permissions::from_mode(0o755)).unwrap();
        let plain = tree.file("etc/hkd/config.d/20-notes.txt");
        let found = scan(&tree.dirs(), Wanted::Executables).unwrap();
        assert_eq!(found.fragments, vec![check]);
        assert_eq!(found.ignored, vec![(plain, "not executable")]);
    }

    #[test]
    fn a_directory_named_like_a_fragment_is_reported() {
        let tree = Tree::new();
        let dir = tree.path("etc/hkd/config.d/50-dir.toml");
        fs::create_dir_all(&dir).unwrap();
        let found = scan(&tree.dirs(), Wanted::Toml).unwrap();
        assert!(found.fragments.is_empty());
        assert_eq!(found.ignored, vec![(dir, "not a regular file")]);
    }
}
