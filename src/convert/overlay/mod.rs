//! The NestOS live ISO / PXE path (`x2nestos convert --live ISO|URL|DIR`): the live image's own
//! kernel, initramfs and root filesystem are loaded with kexec, followed by an overlay
//! initramfs carrying the install directives and the Ignition config; NestOS's installer in
//! the live system then writes the disk.
//!
//! The archive is written by [`write_newc`] (the kernel's "newc" cpio format, which the
//! kernel unpacks from every archive concatenated into one initrd); no `cpio` or shell
//! pipeline is needed on the host. What goes into it, and which kernel arguments go with
//! it, comes from the live image's own boot configuration ([`live`]): the installer reads
//! `<prefix>inst.*` arguments whose prefix (`coreos.`, `nestos.`) differs between builds, so
//! it is read from the image's `<prefix>liveiso=` argument rather than assumed. An ISO file is
//! read in place ([`iso`]), never mounted ([`media`]); one on a mirror is read by HTTP range
//! requests for the plan and downloaded whole only by `convert`.
//!
//! Checked against hand-made ISO trees modelled on the CoreOS/NestOS layout, made into ISOs
//! by `xorriso`; no NestOS release ISO is available to the tests.

pub mod iso;
pub mod live;
pub mod media;

use std::io::{self, Write};

/// Where the destination system's Ignition config lands inside the live system.
pub const DEST_IGNITION: &str = "/etc/x2nestos/config.ign";

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
}

impl Member {
    fn path(&self) -> &str {
        match self {
            Member::Dir { path, .. } | Member::File { path, .. } => path,
        }
    }
}

/// Files for the archive, with every parent directory listed before its children (the
/// kernel's unpacker does not create missing parents).
pub fn with_parents(files: Vec<(String, u32, Vec<u8>)>) -> Vec<Member> {
    let mut members: Vec<Member> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for (path, mode, data) in files {
        let relative = path.trim_start_matches('/').to_owned();
        let mut parent = String::new();
        let parts: Vec<&str> = relative.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if !dirs.contains(&parent) {
                dirs.push(parent.clone());
                members.push(Member::Dir {
                    path: parent.clone(),
                    mode: 0o755,
                });
            }
        }
        members.push(Member::File {
            path: relative,
            mode,
            data,
        });
    }
    members
}

fn pad4(out: &mut impl Write, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

fn header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    name: &str,
) -> io::Result<()> {
    let namesize = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check. Owner root, mtime 0: the archive is reproducible.
    write!(
        out,
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, 0, 0, 0, 0, 0, 0, 0
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, 110 + namesize)
}

/// Writes `members` as a newc cpio archive, ending with the trailer.
pub fn write_newc(members: &[Member], out: &mut impl Write) -> io::Result<()> {
    const S_IFDIR: u32 = 0o040000;
    const S_IFREG: u32 = 0o100000;
    for (index, member) in members.iter().enumerate() {
        let name = member.path();
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio member {name:?}: must be a relative path without '..'"),
            ));
        }
        let ino = index as u32 + 1;
        match member {
            Member::Dir { mode, .. } => header(out, ino, S_IFDIR | (mode & 0o7777), 2, 0, name)?,
            Member::File { mode, data, .. } => {
                let size = u32::try_from(data.len()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("cpio member {name}: larger than 4 GiB"),
                    )
                })?;
                header(out, ino, S_IFREG | (mode & 0o7777), 1, size, name)?;
                out.write_all(data)?;
                pad4(out, data.len())?;
            }
        }
    }
    header(out, 0, 0, 1, 0, "TRAILER!!!")
}

/// Writes a newc archive holding the directories `dirs` and one file of `size` bytes read
/// from `data`, streamed (an image too large to hold in memory twice). The archive can be
/// appended to an initramfs: the kernel unpacks every archive of a concatenated initrd.
pub fn write_newc_streamed(
    out: &mut impl Write,
    dirs: &[&str],
    path: &str,
    mode: u32,
    size: u64,
    data: &mut impl io::Read,
) -> io::Result<()> {
    const S_IFDIR: u32 = 0o040000;
    const S_IFREG: u32 = 0o100000;
    let size32 = u32::try_from(size).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpio member {path}: larger than 4 GiB; stream the image instead"),
        )
    })?;
    let mut ino = 1;
    for dir in dirs {
        header(out, ino, S_IFDIR | 0o755, 2, 0, dir)?;
        ino += 1;
    }
    header(out, ino, S_IFREG | (mode & 0o7777), 1, size32, path)?;
    let copied = io::copy(&mut io::Read::take(&mut *data, size), out)?;
    if copied != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("cpio member {path}: {copied} of {size} bytes could be read"),
        ));
    }
    pad4(out, size as usize)?;
    header(out, 0, 0, 1, 0, "TRAILER!!!")
}

/// What the live installer is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The disk by a stable name (`/dev/disk/by-id/…`).
    pub dest_device: String,
    /// The destination system's Ignition config (JSON text).
    pub ignition: String,
}

/// The overlay's members: the installer config file in `<vendor>/installer.d` (what the
/// installer reads besides its kernel arguments, and the only way to hand it a local
/// Ignition file) and the Ignition config itself, 0600.
pub fn installer_members(prefix: &live::Prefix, directives: &Directives) -> Vec<Member> {
    let config = format!(
        "# written by x2nestos\ndest-device: {}\nignition-file: {DEST_IGNITION}\n",
        yaml_string(&directives.dest_device)
    );
    with_parents(vec![
        (
            format!("/etc/{}/installer.d/50-x2nestos.yaml", prefix.vendor()),
            0o644,
            config.into_bytes(),
        ),
        (
            DEST_IGNITION.to_owned(),
            0o600,
            directives.ignition.clone().into_bytes(),
        ),
    ])
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_byte_exact() {
        let members = with_parents(vec![("/a/b".into(), 0o600, b"hello".to_vec())]);
        assert_eq!(
            members[0],
            Member::Dir {
                path: "a".into(),
                mode: 0o755
            }
        );
        let mut out = Vec::new();
        write_newc(&members, &mut out).unwrap();
        // Every header starts on a 4-byte boundary, the data too.
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("07070100000001000041ED"));
        let file_at = text.find("07070100000002000081800").unwrap();
        assert_eq!(file_at % 4, 0);
        let data_at = text.find("hello").unwrap();
        assert_eq!(data_at % 4, 0);
        assert_eq!(&text[file_at + 54..file_at + 62], "00000005", "filesize");
        let trailer_at = text.find("070701000000000000000").unwrap();
        assert_eq!(trailer_at % 4, 0);
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"), "{text:?}");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn parents_are_listed_once() {
        let members = with_parents(vec![
            ("/etc/x/a".into(), 0o644, vec![]),
            ("/etc/x/b".into(), 0o644, vec![]),
            ("/etc/y".into(), 0o644, vec![]),
        ]);
        let paths: Vec<&str> = members.iter().map(Member::path).collect();
        assert_eq!(paths, ["etc", "etc/x", "etc/x/a", "etc/x/b", "etc/y"]);
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["", "/abs", "a/../b"] {
            let members = [Member::File {
                path: name.into(),
                mode: 0o644,
                data: vec![],
            }];
            let err = write_newc(&members, &mut Vec::new()).unwrap_err();
            assert!(err.to_string().starts_with("cpio member"), "{err}");
        }
    }

    #[test]
    fn installer_members_follow_the_prefix() {
        let prefix = live::Prefix::new("nestos.");
        let members = installer_members(
            &prefix,
            &Directives {
                dest_device: "/dev/disk/by-id/virtio-disk0".into(),
                ignition: "{}".into(),
            },
        );
        let files: Vec<(&str, u32)> = members
            .iter()
            .filter_map(|m| match m {
                Member::File { path, mode, .. } => Some((path.as_str(), *mode)),
                Member::Dir { .. } => None,
            })
            .collect();
        assert_eq!(
            files,
            [
                ("etc/nestos/installer.d/50-x2nestos.yaml", 0o644),
                ("etc/x2nestos/config.ign", 0o600)
            ]
        );
        let Member::File { data, .. } = &members[3] else {
            panic!("{members:?}")
        };
        assert_eq!(
            String::from_utf8_lossy(data),
            "# written by x2nestos\ndest-device: \"/dev/disk/by-id/virtio-disk0\"\nignition-file: /etc/x2nestos/config.ign\n"
        );
    }
}
