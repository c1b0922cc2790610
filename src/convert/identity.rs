//! Gathering the machine's identity from a root directory into an [`Identity`].
//!
//! Everything is read below `root` (`/` on the machine, a temp tree in tests): the host name
//! from /etc/hostname or the kernel, login keys of root and of the named users (their home
//! directories from /etc/passwd), optionally the SSH host keys, the time zone from
//! /etc/localtime's link or /etc/timezone, and extra files the admin names. Key options are
//! stripped ([`crate::convert::sshkeys`]) and returned so they can be shown; nothing read
//! here is logged, since host keys are secrets.
//!
//! The network is not read here: it comes from the running kernel and NetworkManager
//! ([`crate::convert::network`]) and is put into `Identity::keyfiles` by the caller.
//!
//! Limits: a home directory or key file that is a symbolic link is followed as the kernel
//! does; with `root` other than `/` an absolute link points outside the tree, which is what a
//! real root needs and a test tree avoids.

use std::io;
use std::path::{Path, PathBuf};

use super::ignition::{ExtraFile, Identity, UserKeys};
use super::sshkeys::parse_authorized_keys;
use crate::sys::files::{self, Links, ReadError};

/// The files sshd reads keys from by default (`AuthorizedKeysFile`), below the home directory.
const AUTHORIZED_KEYS: &[&str] = &[".ssh/authorized_keys", ".ssh/authorized_keys2"];

/// Host names that say nothing about the machine; carrying them would hide NestOS's own.
const PLACEHOLDER_HOSTNAMES: &[&str] = &["localhost", "localhost.localdomain", "(none)"];

/// What to gather besides the defaults (host name, root's keys, time zone).
#[derive(Debug, Clone, Default)]
pub struct IdentityOptions {
    /// Users besides root whose login keys are carried.
    pub users: Vec<String>,
    /// Carry /etc/ssh/ssh_host_*_key{,.pub}, so clients see the same host keys.
    pub host_keys: bool,
    /// Absolute paths on the machine, carried with their mode.
    pub extra_files: Vec<String>,
}

/// Options taken off a login key, for showing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrippedKey {
    pub user: String,
    /// The file, as a path on the machine (`/root/.ssh/authorized_keys`).
    pub file: String,
    pub line: usize,
    /// `ssh-ed25519 … comment` as carried.
    pub key: String,
    pub options: Vec<String>,
}

/// A line of an authorized_keys file that is not carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub user: String,
    pub file: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gathered {
    pub identity: Identity,
    pub stripped: Vec<StrippedKey>,
    pub skipped: Vec<SkippedKey>,
    /// What was not found or not carried, in plain words.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("user {0}: not in /etc/passwd; name an existing user")]
    NoSuchUser(String),
    #[error("extra file {0}: give an absolute path")]
    RelativePath(String),
    #[error("extra file {0}: not a regular file")]
    NotAFile(String),
}

/// One /etc/passwd entry's name and home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub home: String,
}

/// Names and home directories from /etc/passwd text; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 7 && !fields[0].is_empty()).then(|| PasswdEntry {
                name: fields[0].to_owned(),
                home: fields[5].to_owned(),
            })
        })
        .collect()
}

/// The host name in /etc/hostname text: the first line that is not a comment.
pub fn parse_hostname(text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The zone name in a /etc/localtime link target (`../usr/share/zoneinfo/Europe/Berlin`,
/// `/usr/share/zoneinfo/posix/Asia/Shanghai`).
pub fn zone_from_link(target: &str) -> Option<String> {
    let (_, zone) = target.rsplit_once("zoneinfo/")?;
    let zone = zone
        .strip_prefix("posix/")
        .or_else(|| zone.strip_prefix("right/"))
        .unwrap_or(zone);
    (!zone.is_empty()).then(|| zone.to_owned())
}

/// `root` joined with an absolute path on the machine.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The most a carried file may hold: identity files are small, and a larger one is a mistake
/// or a trap (a user's `authorized_keys` pointing at a device).
const IDENTITY_FILE_MAX: u64 = 1 << 20;
/// The most an admin's `--file` or /etc/passwd may hold.
const LARGE_FILE_MAX: u64 = 16 << 20;

/// Reads a regular file of at most `max` bytes, `None` when it does not exist; a FIFO, device
/// or directory is refused without waiting on it, and so is a link when `links` says so.
fn read_optional(path: &Path, max: u64, links: Links) -> Result<Option<Vec<u8>>, IdentityError> {
    match files::read_regular(path, max, links) {
        Ok(c) => Ok(Some(c.bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(IdentityError::Read {
            path: path.display().to_string(),
            source: e.into(),
        }),
    }
}

/// A file only root can change (under /etc or /proc): links followed, as the system means them.
fn read_system(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    read_optional(path, IDENTITY_FILE_MAX, Links::Follow)
}

fn hostname(root: &Path, notes: &mut Vec<String>) -> Result<Option<String>, IdentityError> {
    let from_file = read_system(&inside(root, "/etc/hostname"))?
        .and_then(|b| parse_hostname(&String::from_utf8_lossy(&b)));
    let name = match from_file {
        Some(name) => Some(name),
        None => read_system(&inside(root, "/proc/sys/kernel/hostname"))?
            .and_then(|b| parse_hostname(&String::from_utf8_lossy(&b))),
    };
    match name {
        Some(name) if PLACEHOLDER_HOSTNAMES.contains(&name.as_str()) => {
            notes.push(format!(
                "host name {name:?} is a placeholder; NestOS's own is kept"
            ));
            Ok(None)
        }
        Some(name) => Ok(Some(name)),
        None => {
            notes.push(
                "no host name found (/etc/hostname, the kernel); NestOS's own is kept".into(),
            );
            Ok(None)
        }
    }
}

fn timezone(root: &Path, notes: &mut Vec<String>) -> Result<Option<String>, IdentityError> {
    let localtime = inside(root, "/etc/localtime");
    match std::fs::read_link(&localtime) {
        Ok(target) => {
            if let Some(zone) = zone_from_link(&target.to_string_lossy()) {
                return Ok(Some(zone));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {} // a copied file, not a link
        Err(source) => {
            return Err(IdentityError::Read {
                path: localtime.display().to_string(),
                source,
            })
        }
    }
    let from_file = read_system(&inside(root, "/etc/timezone"))?
        .and_then(|b| parse_hostname(&String::from_utf8_lossy(&b)));
    if from_file.is_none() {
        notes.push(
            "no time zone name found (/etc/localtime is not a link into zoneinfo, no /etc/timezone); NestOS's default (UTC) applies".into(),
        );
    }
    Ok(from_file)
}

fn user_keys(
    root: &Path,
    user: &PasswdEntry,
    out: &mut Gathered,
) -> Result<Option<UserKeys>, IdentityError> {
    let mut keys: Vec<String> = Vec::new();
    for relative in AUTHORIZED_KEYS {
        let file = format!("{}/{relative}", user.home.trim_end_matches('/'));
        // The user owns the home directory: a link there could lead root anywhere.
        let Some(bytes) = read_optional(&inside(root, &file), IDENTITY_FILE_MAX, Links::Refuse)?
        else {
            continue;
        };
        let parsed = parse_authorized_keys(&String::from_utf8_lossy(&bytes));
        for key in parsed.keys {
            let line = key.to_line();
            if !key.stripped.is_empty() {
                out.stripped.push(StrippedKey {
                    user: user.name.clone(),
                    file: file.clone(),
                    line: key.line,
                    key: line.clone(),
                    options: key.stripped.clone(),
                });
            }
            if !keys.contains(&line) {
                keys.push(line);
            }
        }
        for skipped in parsed.skipped {
            out.skipped.push(SkippedKey {
                user: user.name.clone(),
                file: file.clone(),
                line: skipped.line,
                reason: skipped.reason,
            });
        }
    }
    if keys.is_empty() {
        out.notes.push(format!(
            "user {}: no SSH login keys in {}/.ssh; none carried",
            user.name,
            user.home.trim_end_matches('/')
        ));
        return Ok(None);
    }
    Ok(Some(UserKeys {
        name: user.name.clone(),
        keys,
    }))
}

fn host_keys(root: &Path) -> Result<Vec<(String, Vec<u8>)>, IdentityError> {
    let dir = inside(root, "/etc/ssh");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(IdentityError::Read {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| IdentityError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_key =
            name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub"));
        if !is_key {
            continue;
        }
        if let Some(bytes) = read_system(&entry.path())? {
            keys.push((name, bytes));
        }
    }
    keys.sort();
    Ok(keys)
}

fn extra_file(root: &Path, path: &str) -> Result<ExtraFile, IdentityError> {
    if !path.starts_with('/') {
        return Err(IdentityError::RelativePath(path.to_owned()));
    }
    let on_disk = inside(root, path);
    let read_error = |source| IdentityError::Read {
        path: on_disk.display().to_string(),
        source,
    };
    // Named by the admin: a link is followed to what it means; still a regular file only,
    // checked on the opened file, and bounded.
    let contents = match files::read_regular(&on_disk, LARGE_FILE_MAX, Links::Follow) {
        Ok(c) => c,
        Err(ReadError::NotRegular) => return Err(IdentityError::NotAFile(path.to_owned())),
        Err(e) => return Err(read_error(e.into())),
    };
    Ok(ExtraFile {
        path: path.to_owned(),
        contents: contents.bytes,
        mode: contents.mode,
    })
}

/// Gathers the identity below `root`.
pub fn gather(root: &Path, options: &IdentityOptions) -> Result<Gathered, IdentityError> {
    let mut out = Gathered::default();
    out.identity.hostname = hostname(root, &mut out.notes)?;

    let passwd_path = inside(root, "/etc/passwd");
    let passwd = read_optional(&passwd_path, LARGE_FILE_MAX, Links::Follow)?
        .map(|b| parse_passwd(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let mut names = vec!["root".to_owned()];
    for name in &options.users {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    for name in &names {
        let entry = match passwd.iter().find(|e| &e.name == name) {
            Some(entry) => entry.clone(),
            // Root's home is /root on every distribution, even with a broken passwd.
            None if name == "root" => PasswdEntry {
                name: "root".into(),
                home: "/root".into(),
            },
            None => return Err(IdentityError::NoSuchUser(name.clone())),
        };
        if let Some(keys) = user_keys(root, &entry, &mut out)? {
            out.identity.users.push(keys);
        }
    }

    if options.host_keys {
        out.identity.host_keys = host_keys(root)?;
        if out.identity.host_keys.is_empty() {
            out.notes
                .push("no SSH host keys in /etc/ssh; NestOS makes new ones".into());
        }
    }
    out.identity.timezone = timezone(root, &mut out.notes)?;
    for path in &options.extra_files {
        out.identity.files.push(extra_file(root, path)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7";

    fn write(root: &Path, path: &str, text: &str) {
        let path = inside(root, path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A small machine: a cloud image's root with a `command=` prefix, a user, host keys.
    fn machine() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "/etc/hostname",
            "# set by cloud-init\nnode-7.example.org\n",
        );
        write(
            root,
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nops:x:1000:1000:Ops,,,:/home/ops:/bin/bash\nbroken line\nsvc:x:999:999::/srv/svc/:/usr/sbin/nologin\n",
        );
        write(
            root,
            "/root/.ssh/authorized_keys",
            &format!(
                "no-port-forwarding,no-agent-forwarding,command=\"echo 'Please login as the user \\\"debian\\\" rather than root.';sleep 10\" {ED} admin@laptop\n{ED} admin@laptop\n"
            ),
        );
        write(
            root,
            "/root/.ssh/authorized_keys2",
            &format!("# old file\ncert-authority {RSA} ca\n{RSA} ops\n"),
        );
        write(
            root,
            "/home/ops/.ssh/authorized_keys",
            &format!("from=\"10.0.0.0/8\" {RSA} ops\n"),
        );
        write(root, "/etc/ssh/ssh_host_ed25519_key", "PRIVATE\n");
        write(
            root,
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "ssh-ed25519 AAAA host\n",
        );
        write(root, "/etc/ssh/sshd_config", "PermitRootLogin yes\n");
        std::fs::create_dir_all(inside(root, "/usr/share/zoneinfo/Asia")).unwrap();
        symlink(
            "../usr/share/zoneinfo/Asia/Shanghai",
            inside(root, "/etc/localtime"),
        )
        .unwrap();
        write(root, "/etc/motd", "welcome\n");
        std::fs::set_permissions(
            inside(root, "/etc/motd"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        dir
    }

    #[test]
    fn gathers_a_whole_machine() {
        let dir = machine();
        let options = IdentityOptions {
            users: vec!["ops".into()],
            host_keys: true,
            extra_files: vec!["/etc/motd".into()],
        };
        let got = gather(dir.path(), &options).unwrap();
        let id = &got.identity;
        assert_eq!(id.hostname.as_deref(), Some("node-7.example.org"));
        assert_eq!(
            id.users,
            [
                UserKeys {
                    name: "root".into(),
                    keys: vec![format!("{ED} admin@laptop"), format!("{RSA} ops")],
                },
                UserKeys {
                    name: "ops".into(),
                    keys: vec![format!("{RSA} ops")],
                },
            ],
            "options stripped, duplicates once, both authorized_keys files read"
        );
        assert_eq!(got.stripped.len(), 2);
        assert_eq!(got.stripped[0].user, "root");
        assert_eq!(got.stripped[0].file, "/root/.ssh/authorized_keys");
        assert_eq!(got.stripped[0].line, 1);
        assert_eq!(got.stripped[0].options.len(), 3);
        assert!(got.stripped[0].options[2].starts_with("command="));
        assert_eq!(got.stripped[1].options, ["from=\"10.0.0.0/8\""]);
        assert_eq!(got.skipped.len(), 1);
        assert_eq!(got.skipped[0].file, "/root/.ssh/authorized_keys2");
        assert_eq!(got.skipped[0].line, 2);
        assert!(got.skipped[0].reason.contains("cert-authority"));
        let names: Vec<&str> = id.host_keys.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]);
        assert_eq!(id.host_keys[0].1, b"PRIVATE\n");
        assert_eq!(id.timezone.as_deref(), Some("Asia/Shanghai"));
        assert_eq!(
            id.files,
            [ExtraFile {
                path: "/etc/motd".into(),
                contents: b"welcome\n".to_vec(),
                mode: 0o640
            }]
        );
        assert!(got.notes.is_empty(), "{:?}", got.notes);
        // What was gathered renders as a valid config.
        super::super::ignition::render(id, None).unwrap();
    }

    #[test]
    fn defaults_carry_no_host_keys_and_no_other_users() {
        let dir = machine();
        let got = gather(dir.path(), &IdentityOptions::default()).unwrap();
        assert!(got.identity.host_keys.is_empty());
        assert_eq!(got.identity.users.len(), 1);
        assert!(got.identity.files.is_empty());
    }

    #[test]
    fn the_kernel_names_the_host_when_etc_hostname_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "/proc/sys/kernel/hostname", "from-kernel\n");
        let got = gather(dir.path(), &IdentityOptions::default()).unwrap();
        assert_eq!(got.identity.hostname.as_deref(), Some("from-kernel"));
        write(dir.path(), "/etc/hostname", "localhost\n");
        let got = gather(dir.path(), &IdentityOptions::default()).unwrap();
        assert_eq!(got.identity.hostname, None);
        assert!(
            got.notes[0].contains("\"localhost\" is a placeholder"),
            "{:?}",
            got.notes
        );
        assert!(got
            .notes
            .contains(&"user root: no SSH login keys in /root/.ssh; none carried".into()));
    }

    #[test]
    fn time_zone_sources() {
        assert_eq!(
            zone_from_link("/usr/share/zoneinfo/posix/Europe/Berlin").as_deref(),
            Some("Europe/Berlin")
        );
        assert_eq!(
            zone_from_link("/usr/share/zoneinfo/UTC").as_deref(),
            Some("UTC")
        );
        assert_eq!(zone_from_link("/etc/some/file"), None);

        let dir = tempfile::tempdir().unwrap();
        // A copied zone file (no link) and /etc/timezone, as older Debian and Ubuntu keep it.
        write(dir.path(), "/etc/localtime", "TZif2...");
        write(dir.path(), "/etc/timezone", "Europe/Paris\n");
        let got = gather(dir.path(), &IdentityOptions::default()).unwrap();
        assert_eq!(got.identity.timezone.as_deref(), Some("Europe/Paris"));
        std::fs::remove_file(inside(dir.path(), "/etc/timezone")).unwrap();
        let got = gather(dir.path(), &IdentityOptions::default()).unwrap();
        assert_eq!(got.identity.timezone, None);
        assert!(got
            .notes
            .iter()
            .any(|n| n.starts_with("no time zone name found")));
    }

    #[test]
    fn bad_requests_name_the_object() {
        let dir = machine();
        let err = |options: IdentityOptions| gather(dir.path(), &options).unwrap_err().to_string();
        assert_eq!(
            err(IdentityOptions {
                users: vec!["nobody-here".into()],
                ..Default::default()
            }),
            "user nobody-here: not in /etc/passwd; name an existing user"
        );
        assert_eq!(
            err(IdentityOptions {
                extra_files: vec!["etc/motd".into()],
                ..Default::default()
            }),
            "extra file etc/motd: give an absolute path"
        );
        assert_eq!(
            err(IdentityOptions {
                extra_files: vec!["/etc/ssh".into()],
                ..Default::default()
            }),
            "extra file /etc/ssh: not a regular file"
        );
        let missing = err(IdentityOptions {
            extra_files: vec!["/etc/nope".into()],
            ..Default::default()
        });
        assert!(
            missing.starts_with("reading ") && missing.contains("/etc/nope: No such file"),
            "{missing}"
        );
    }

    #[test]
    fn a_users_key_file_cannot_lead_root_elsewhere_or_hang_it() {
        let dir = machine();
        let root = dir.path();
        let ops = IdentityOptions {
            users: vec!["ops".into()],
            ..Default::default()
        };
        let keys = inside(root, "/home/ops/.ssh/authorized_keys");
        // A link to a file only root may read.
        std::fs::remove_file(&keys).unwrap();
        write(root, "/etc/shadow", "root:$6$secret:19000::::::\n");
        symlink(inside(root, "/etc/shadow"), &keys).unwrap();
        let err = gather(root, &ops).unwrap_err().to_string();
        assert!(
            err.contains("/home/ops/.ssh/authorized_keys: a symbolic link, not followed"),
            "{err}"
        );
        // A FIFO nobody writes to: refused at once.
        std::fs::remove_file(&keys).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(&keys)
            .status()
            .unwrap();
        assert!(status.success());
        let err = gather(root, &ops).unwrap_err().to_string();
        assert!(err.contains("authorized_keys: not a regular file"), "{err}");
        // Larger than any key file.
        std::fs::remove_file(&keys).unwrap();
        std::fs::write(&keys, vec![b'#'; 2 << 20]).unwrap();
        let err = gather(root, &ops).unwrap_err().to_string();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
    }

    #[test]
    fn passwd_parsing() {
        let entries =
            parse_passwd("root:x:0:0:root:/root:/bin/bash\n#c\n:x:1:1::/x:/bin/sh\nshort:x\n");
        assert_eq!(
            entries,
            [PasswdEntry {
                name: "root".into(),
                home: "/root".into()
            }]
        );
    }
}
