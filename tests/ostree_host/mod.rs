//! A temporary OSTree host for tests: a sysroot with `testos` v1 deployed and an upstream
//! repository reached through a file:// remote. Uses the real `ostree` command.
#![allow(dead_code)] // each test binary uses its own part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use housekeeper::image_ref::{ImagePolicy, ImageRef};
use housekeeper::os::ostree::{deployment_dir, Ostree};
use housekeeper::os::Backend;

pub const OS: &str = "testos";
pub const BRANCH: &str = "testos/x86_64/stable";

pub fn ostree(args: &[&str]) -> String {
    let out = Command::new("ostree")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ostree: {e}; install it with: apt-get install ostree"));
    assert!(
        out.status.success(),
        "ostree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A sysroot with `testos` v1 deployed, and an upstream repository (reached through a
/// file:// remote named `upstream`) holding v1 and v2.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub backend: Ostree,
}

impl Host {
    pub fn new() -> Host {
        Self::build(None)
    }

    /// A host whose sysroot is a tmpfs of `mib` MiB (needs root): for a full disk.
    pub fn with_small_disk(mib: u32) -> Host {
        Self::build(Some(mib))
    }

    fn build(small_disk: Option<u32>) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let sysroot = dir.path().join("sysroot");
        let upstream = dir.path().join("upstream");
        fs::create_dir_all(&sysroot).unwrap();
        if let Some(mib) = small_disk {
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(&sysroot)
                .status()
                .expect("running mount (util-linux's mount; run as root)");
            assert!(
                status.success(),
                "mounting a tmpfs for the small disk (run as root)"
            );
        }
        ostree(&["admin", "init-fs", sysroot.to_str().unwrap()]);
        ostree(&[
            "admin",
            "os-init",
            &format!("--sysroot={}", sysroot.display()),
            OS,
        ]);
        ostree(&[
            "init",
            "--mode=archive",
            &format!("--repo={}", upstream.display()),
        ]);
        let host = Host {
            backend: Ostree {
                sysroot: sysroot.clone(),
                osname: OS.into(),
                run_dir: dir.path().join("run"),
                policy: ImagePolicy::STRICT,
            },
            dir,
        };
        host.commit_upstream("1");
        ostree(&[
            "remote",
            "add",
            &host.repo_arg(),
            "--no-gpg-verify",
            "upstream",
            &format!("file://{}", upstream.display()),
        ]);
        ostree(&["pull", &host.repo_arg(), "upstream", BRANCH]);
        ostree(&[
            "admin",
            "deploy",
            &format!("--sysroot={}", sysroot.display()),
            &format!("--os={OS}"),
            "--karg=root=LABEL=root",
            &format!("upstream:{BRANCH}"),
        ]);
        host
    }

    pub fn repo_arg(&self) -> String {
        format!(
            "--repo={}",
            self.backend.sysroot.join("ostree/repo").display()
        )
    }

    /// Commits version `v` of the test tree to the upstream repository; returns its checksum.
    pub fn commit_upstream(&self, v: &str) -> String {
        self.commit_upstream_to(BRANCH, v)
    }

    /// Commits version `v` of the test tree to `branch` upstream; returns its checksum.
    pub fn commit_upstream_to(&self, branch: &str, v: &str) -> String {
        self.commit_upstream_with(branch, v, 0)
    }

    /// Commits version `v` carrying `extra_mib` MiB of incompressible data.
    pub fn commit_upstream_with(&self, branch: &str, v: &str, extra_mib: usize) -> String {
        let tree = self.dir.path().join(format!("tree-{v}"));
        let modules = tree.join("usr/lib/modules/6.1.0");
        fs::create_dir_all(&modules).unwrap();
        fs::create_dir_all(tree.join("usr/etc")).unwrap();
        fs::write(modules.join("vmlinuz"), format!("kernel {v}")).unwrap();
        fs::write(modules.join("initramfs.img"), "initramfs").unwrap();
        fs::write(
            tree.join("usr/lib/os-release"),
            format!("ID=testos\nVERSION_ID={v}\n"),
        )
        .unwrap();
        fs::write(tree.join("usr/etc/motd"), format!("testos {v}\n")).unwrap();
        if extra_mib > 0 {
            let mut data = vec![0u8; extra_mib << 20];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for chunk in data.chunks_mut(8) {
                // xorshift: cheap bytes that no compression shrinks
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            fs::write(tree.join("usr/lib/payload"), data).unwrap();
        }
        ostree(&[
            "commit",
            &format!("--repo={}", self.dir.path().join("upstream").display()),
            &format!("--branch={branch}"),
            &format!("--add-metadata-string=version={v}"),
            &format!("--tree=dir={}", tree.display()),
        ])
    }

    pub fn target(&self) -> ImageRef {
        ImageRef::parse(&format!("upstream:{BRANCH}"), ImagePolicy::ALLOW_UNVERIFIED).unwrap()
    }

    pub fn allowing_unverified(mut self) -> Host {
        // The file:// remote has no signing set up; these tests are about deployments.
        self.backend.policy = ImagePolicy::ALLOW_UNVERIFIED;
        self
    }

    pub fn versions(&self) -> Vec<String> {
        let all = self.backend.status().unwrap();
        all.deployments
            .iter()
            .map(|d| {
                let mut v = d.version.clone().unwrap_or_default();
                if d.staged {
                    v.push_str("(staged)");
                }
                v
            })
            .collect()
    }

    pub fn default_etc(&self) -> PathBuf {
        let all = self.backend.status().unwrap();
        deployment_dir(&self.backend.sysroot, all.default_deployment().unwrap()).join("etc")
    }
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Drop for Host {
    /// OSTree marks deployment directories immutable; lift that so the temporary directory
    /// can be removed.
    fn drop(&mut self) {
        // A tmpfs sysroot goes away with its mount; a plain one needs its flags lifted.
        let _ = Command::new("umount")
            .arg(&self.backend.sysroot)
            .stderr(std::process::Stdio::null())
            .status();
        let deploy = self.backend.sysroot.join("ostree/deploy");
        let _ = Command::new("find")
            .arg(&deploy)
            .args([
                "-maxdepth",
                "3",
                "-type",
                "d",
                "-path",
                "*/deploy/*",
                "-exec",
                "chattr",
                "-i",
                "{}",
                "+",
            ])
            .status();
    }
}
