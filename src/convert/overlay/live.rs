//! Reading how a NestOS live image boots from its own files: the kernel, the initramfs
//! parts and the kernel arguments of its default entry, from isolinux or GRUB configuration
//! in the ISO tree, and from those the prefix of the installer's arguments.
//!
//! The parsers are pure over config text; [`read_live`] finds the config files in a directory
//! tree (a mounted or extracted ISO). Only the subset live images use is understood:
//! isolinux `label`/`kernel`/`linux`/`append initrd=…`/`menu default`, GRUB
//! `menuentry { linux …; initrd … }` and `set default=N`.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Read access to a live image's files by paths relative to its root: an extracted tree
/// ([`Dir`]) or the ISO file itself (`super::iso::Iso`).
pub trait Tree {
    /// How the image is named in messages.
    fn describe(&self) -> String;
    fn read_text(&self, rel: &str) -> Option<String>;
    fn is_file(&self, rel: &str) -> bool;
    /// The names of the subdirectories of `rel`.
    fn subdirs(&self, rel: &str) -> Vec<String>;
    fn size(&self, rel: &str) -> io::Result<u64>;
    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + '_>>;
}

/// An extracted live ISO or PXE tree.
pub struct Dir(pub PathBuf);

impl Tree for Dir {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }

    fn read_text(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(rel)).ok()
    }

    fn is_file(&self, rel: &str) -> bool {
        self.0.join(rel).is_file()
    }

    fn subdirs(&self, rel: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.0.join(rel)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn size(&self, rel: &str) -> io::Result<u64> {
        Ok(std::fs::metadata(self.0.join(rel))?.len())
    }

    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(std::fs::File::open(self.0.join(rel))?))
    }
}

/// The installer's argument prefix (`nestos.`, `coreos.`), with the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn new(prefix: &str) -> Prefix {
        Prefix(prefix.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `nestos` for `nestos.`: the directory under /etc the installer reads configs from.
    pub fn vendor(&self) -> &str {
        self.0.trim_end_matches('.')
    }

    /// An installer argument: `nestos.inst.install_dev`.
    pub fn inst(&self, name: &str) -> String {
        format!("{}inst.{name}", self.0)
    }
}

/// The default boot entry of a live image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveBoot {
    /// The config file it was read from, relative to the tree.
    pub source: String,
    /// Paths in the tree, relative (leading '/' removed).
    pub kernel: String,
    pub initrds: Vec<String>,
    pub args: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LiveError {
    #[error("live image at {0}: no isolinux/isolinux.cfg, EFI/*/grub.cfg or boot/grub*/grub.cfg with a kernel entry; is it an extracted NestOS live ISO?")]
    NoEntry(String),
    #[error("live image entry in {0}: no <prefix>.liveiso= kernel argument, so the installer's argument prefix cannot be told; is it a NestOS live ISO?")]
    NoPrefix(String),
    #[error("live image at {tree}: {what} {path} is missing")]
    Missing {
        tree: String,
        what: &'static str,
        path: String,
    },
}

struct Entry {
    kernel: Option<String>,
    initrds: Vec<String>,
    args: Vec<String>,
    default: bool,
}

fn relative(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}

/// The default entry of an isolinux / syslinux / pxelinux config: the `menu default` label,
/// else the one `default` names, else the first with a kernel.
pub fn parse_isolinux(text: &str) -> Option<(String, Vec<String>, Vec<String>)> {
    let mut entries: Vec<(String, Entry)> = Vec::new();
    let mut default_name: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match word.to_ascii_lowercase().as_str() {
            "default" => default_name = Some(rest.to_owned()),
            "label" => entries.push((
                rest.to_owned(),
                Entry {
                    kernel: None,
                    initrds: Vec::new(),
                    args: Vec::new(),
                    default: false,
                },
            )),
            "kernel" | "linux" => {
                if let Some((_, e)) = entries.last_mut() {
                    e.kernel = Some(relative(rest));
                }
            }
            "append" => {
                if let Some((_, e)) = entries.last_mut() {
                    for arg in rest.split_whitespace() {
                        match arg.strip_prefix("initrd=") {
                            Some(list) => e.initrds.extend(list.split(',').map(relative)),
                            None => e.args.push(arg.to_owned()),
                        }
                    }
                }
            }
            "menu" if rest.eq_ignore_ascii_case("default") => {
                if let Some((_, e)) = entries.last_mut() {
                    e.default = true;
                }
            }
            _ => {}
        }
    }
    let with_kernel = || entries.iter().filter(|(_, e)| e.kernel.is_some());
    let chosen = with_kernel()
        .find(|(_, e)| e.default)
        .or_else(|| with_kernel().find(|(name, _)| Some(name) == default_name.as_ref()))
        .or_else(|| with_kernel().next())?;
    let e = &chosen.1;
    Some((e.kernel.clone()?, e.initrds.clone(), e.args.clone()))
}

/// The default entry of a GRUB config: `set default=N` (a number), else the first entry.
pub fn parse_grub(text: &str) -> Option<(String, Vec<String>, Vec<String>)> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut default_index = 0usize;
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(value) = line.strip_prefix("set default=") {
            default_index = value.trim_matches(['"', '\'']).parse().unwrap_or(0);
        } else if line.starts_with("menuentry ") {
            inside = true;
            entries.push(Entry {
                kernel: None,
                initrds: Vec::new(),
                args: Vec::new(),
                default: false,
            });
        } else if line == "}" {
            inside = false;
        } else if inside {
            let mut words = line.split_whitespace();
            let Some(e) = entries.last_mut() else {
                continue;
            };
            match words.next() {
                Some("linux" | "linuxefi" | "linux16") => {
                    e.kernel = words.next().map(relative);
                    e.args = words.map(str::to_owned).collect();
                }
                Some("initrd" | "initrdefi" | "initrd16") => {
                    e.initrds = words.map(relative).collect();
                }
                _ => {}
            }
        }
    }
    let entries: Vec<&Entry> = entries.iter().filter(|e| e.kernel.is_some()).collect();
    let e = entries.get(default_index).or_else(|| entries.first())?;
    Some((e.kernel.clone()?, e.initrds.clone(), e.args.clone()))
}

/// The config files a live ISO may carry, in the order they are tried.
fn candidates(tree: &dyn Tree) -> Vec<String> {
    let mut out = vec![
        "isolinux/isolinux.cfg".to_owned(),
        "syslinux/syslinux.cfg".to_owned(),
    ];
    let mut vendors = tree.subdirs("EFI");
    vendors.sort();
    out.extend(vendors.into_iter().map(|dir| format!("EFI/{dir}/grub.cfg")));
    out.push("boot/grub2/grub.cfg".into());
    out.push("boot/grub/grub.cfg".into());
    out
}

/// The default boot entry of the live image `tree`; its kernel and initramfs files must
/// exist.
pub fn read_live(tree: &dyn Tree) -> Result<LiveBoot, LiveError> {
    for source in candidates(tree) {
        let Some(text) = tree.read_text(&source) else {
            continue;
        };
        let parsed = if source.ends_with("grub.cfg") {
            parse_grub(&text)
        } else {
            parse_isolinux(&text)
        };
        let Some((kernel, initrds, args)) = parsed else {
            continue;
        };
        for (what, file) in
            std::iter::once(("kernel", &kernel)).chain(initrds.iter().map(|i| ("initramfs", i)))
        {
            if !tree.is_file(file) {
                return Err(LiveError::Missing {
                    tree: tree.describe(),
                    what,
                    path: file.clone(),
                });
            }
        }
        return Ok(LiveBoot {
            source,
            kernel,
            initrds,
            args,
        });
    }
    Err(LiveError::NoEntry(tree.describe()))
}

impl LiveBoot {
    /// The installer's argument prefix, from the `<prefix>liveiso=` argument.
    pub fn prefix(&self) -> Result<Prefix, LiveError> {
        self.args
            .iter()
            .find_map(|a| {
                let (key, _) = a.split_once('=')?;
                let prefix = key.strip_suffix("liveiso")?;
                (prefix.ends_with('.') && prefix.len() > 1).then(|| Prefix::new(prefix))
            })
            .ok_or_else(|| LiveError::NoPrefix(self.source.clone()))
    }

    /// The live root filesystem image: `rootfs.img` beside the kernel, as on NestOS and
    /// CoreOS ISOs; `None` when the ISO has none.
    pub fn rootfs(&self, tree: &dyn Tree) -> Option<String> {
        let dir = Path::new(&self.kernel).parent()?;
        let path = dir.join("rootfs.img").display().to_string();
        tree.is_file(&path).then_some(path)
    }

    /// The initramfs parts to load, in order: the entry's own, then the root filesystem
    /// (loaded from RAM instead of the ISO), then our overlay is appended by the caller.
    pub fn initrd_parts(&self, tree: &dyn Tree) -> Result<Vec<String>, LiveError> {
        let rootfs = self.rootfs(tree).ok_or_else(|| LiveError::Missing {
            tree: tree.describe(),
            what: "root filesystem",
            path: Path::new(&self.kernel)
                .with_file_name("rootfs.img")
                .display()
                .to_string(),
        })?;
        let mut parts = self.initrds.clone();
        if !parts.contains(&rootfs) {
            parts.push(rootfs);
        }
        Ok(parts)
    }

    /// The kernel arguments for the jump: the entry's own, without `<prefix>liveiso=` (the
    /// root filesystem comes with the initramfs, there is no ISO to find), with the install
    /// device, then `extra` (console settings from the running machine, say).
    pub fn kexec_args(
        &self,
        dest_device: &str,
        extra: &[String],
    ) -> Result<Vec<String>, LiveError> {
        let prefix = self.prefix()?;
        let liveiso = format!("{}liveiso=", prefix.as_str());
        let install_dev = format!("{}=", prefix.inst("install_dev"));
        let mut args: Vec<String> = self
            .args
            .iter()
            .filter(|a| !a.starts_with(&liveiso) && !a.starts_with(&install_dev))
            .cloned()
            .collect();
        args.push(format!("{install_dev}{dest_device}"));
        args.extend(extra.iter().cloned());
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Dir {
        Dir(Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/convert/live")
            .join(name))
    }

    #[test]
    fn a_nestos_iso_tree() {
        let tree = fixture("nestos-iso");
        let live = read_live(&tree).unwrap();
        assert_eq!(live.source, "isolinux/isolinux.cfg");
        assert_eq!(live.kernel, "images/pxeboot/vmlinuz");
        assert_eq!(
            live.initrds,
            ["images/pxeboot/initrd.img", "images/ignition.img"]
        );
        let prefix = live.prefix().unwrap();
        assert_eq!(prefix.as_str(), "nestos.");
        assert_eq!(prefix.vendor(), "nestos");
        assert_eq!(
            live.initrd_parts(&tree).unwrap(),
            [
                "images/pxeboot/initrd.img",
                "images/ignition.img",
                "images/pxeboot/rootfs.img"
            ]
        );
        assert_eq!(
            live.kexec_args(
                "/dev/disk/by-id/virtio-root",
                &["console=ttyS1,115200".into()]
            )
            .unwrap(),
            [
                "mitigations=auto,nosmt",
                "ignition.firstboot",
                "ignition.platform.id=metal",
                "nestos.inst.install_dev=/dev/disk/by-id/virtio-root",
                "console=ttyS1,115200"
            ]
        );
    }

    #[test]
    fn a_coreos_iso_with_grub_only() {
        let tree = fixture("coreos-iso");
        let live = read_live(&tree).unwrap();
        assert_eq!(live.source, "EFI/fedora/grub.cfg");
        assert_eq!(live.kernel, "images/pxeboot/vmlinuz");
        assert_eq!(live.prefix().unwrap().as_str(), "coreos.");
        assert!(live
            .args
            .contains(&"coreos.liveiso=fedora-coreos-39".into()));
        let args = live.kexec_args("/dev/sda", &[]).unwrap();
        assert_eq!(args.last().unwrap(), "coreos.inst.install_dev=/dev/sda");
        assert!(!args.iter().any(|a| a.starts_with("coreos.liveiso")));
    }

    #[test]
    fn isolinux_default_selection() {
        let text = "default vesamenu.c32\nlabel check\n  kernel /a\n  append x=1\nlabel linux\n  menu label Install\n  menu default\n  kernel /b\n  append initrd=/i1,/i2 y=2 z\n";
        let (kernel, initrds, args) = parse_isolinux(text).unwrap();
        assert_eq!(kernel, "b");
        assert_eq!(initrds, ["i1", "i2"]);
        assert_eq!(args, ["y=2", "z"]);
        let text = "DEFAULT two\nLABEL one\nKERNEL /k1\nLABEL two\nKERNEL /k2\n";
        assert_eq!(parse_isolinux(text).unwrap().0, "k2");
        assert_eq!(parse_isolinux("label x\n"), None);
    }

    #[test]
    fn grub_default_selection() {
        let text = "set default=\"1\"\nmenuentry 'a' {\n\tlinux /k1 a=1\n\tinitrd /i1\n}\nmenuentry 'b' --class os {\n\tlinuxefi /k2 b=2 c\n\tinitrdefi /i2 /i3\n}\n";
        let (kernel, initrds, args) = parse_grub(text).unwrap();
        assert_eq!(kernel, "k2");
        assert_eq!(initrds, ["i2", "i3"]);
        assert_eq!(args, ["b=2", "c"]);
    }

    #[test]
    fn what_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Dir(dir.path().to_owned());
        let err = read_live(&tree).unwrap_err();
        assert!(matches!(err, LiveError::NoEntry(_)));
        std::fs::create_dir_all(dir.path().join("isolinux")).unwrap();
        std::fs::write(
            dir.path().join("isolinux/isolinux.cfg"),
            "label l\nkernel /vmlinuz\nappend initrd=/initrd.img quiet\n",
        )
        .unwrap();
        let err = read_live(&tree).unwrap_err().to_string();
        assert!(err.ends_with(": kernel vmlinuz is missing"), "{err}");
        std::fs::write(dir.path().join("vmlinuz"), "k").unwrap();
        std::fs::write(dir.path().join("initrd.img"), "i").unwrap();
        let live = read_live(&tree).unwrap();
        assert_eq!(
            live.prefix().unwrap_err().to_string(),
            "live image entry in isolinux/isolinux.cfg: no <prefix>.liveiso= kernel argument, so the installer's argument prefix cannot be told; is it a NestOS live ISO?"
        );
        assert!(live
            .initrd_parts(&tree)
            .unwrap_err()
            .to_string()
            .ends_with("root filesystem rootfs.img is missing"));
    }
}
