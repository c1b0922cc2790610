//! x2nestos pieces against real host tools: Debian's `ignition-validate` on the configs we
//! generate, and the image writer on loop devices (over files in a temp dir; never a real
//! disk). Built only with `--features host-tests`; tools/test-all.sh installs the packages
//! first. A missing tool fails the test with what to install.

use std::fs::OpenOptions;
use std::io::{Read, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use housekeeper::convert::ignition::{self, ExtraFile, Identity, UserKeys};
use housekeeper::convert::image::{write_image, ImageError, WriteTarget, WriteTargetKind};

#[path = "support/convert.rs"]
mod convert_support;

use convert_support::{noise, tool, verified, zero_run_image};
use housekeeper::convert::image::Format;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
const OLD: u8 = 0xA5;

fn identity() -> Identity {
    Identity {
        hostname: Some("converted".into()),
        users: vec![UserKeys {
            name: "root".into(),
            keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b".into()],
        }],
        host_keys: vec![("ssh_host_ed25519_key".into(), b"private\n".to_vec())],
        keyfiles: vec![(
            "carried-eth0.nmconnection".into(),
            "[connection]\nid=eth0\ntype=ethernet\n".into(),
        )],
        timezone: Some("Asia/Shanghai".into()),
        files: vec![ExtraFile {
            path: "/etc/issue.d/x2nestos.issue".into(),
            contents: b"converted\n".to_vec(),
            mode: 0o644,
        }],
    }
}

fn ignition_validate(config: &str) -> (bool, String) {
    let validate = tool("ignition-validate", "ignition");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.ign");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(validate).arg(&path).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn ignition_validate_accepts_generated_configs() {
    let alone = ignition::render(&identity(), None).unwrap().to_json();
    let (ok, text) = ignition_validate(&alone);
    assert!(ok, "ignition-validate rejected our config: {text}\n{alone}");

    let admin = ignition::parse_admin(include_str!("fixtures/convert/ignition/admin.ign")).unwrap();
    let merged = ignition::render(&identity(), Some(&admin))
        .unwrap()
        .to_json();
    let (ok, text) = ignition_validate(&merged);
    assert!(
        ok,
        "ignition-validate rejected the merged config: {text}\n{merged}"
    );

    for golden in ["identity.ign", "merged.ign"] {
        let text =
            std::fs::read_to_string(Path::new("tests/fixtures/convert/ignition").join(golden))
                .unwrap();
        let (ok, out) = ignition_validate(&text);
        assert!(ok, "{golden}: {out}");
    }
}

#[test]
fn ignition_validate_is_real_and_rejects_what_we_refuse() {
    // The same mistakes our own checks refuse are refused by Ignition itself.
    let (ok, _) = ignition_validate(
        r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"etc/x"}]}}"#,
    );
    assert!(!ok, "ignition-validate accepted a relative path");
    let (ok, _) = ignition_validate(r#"{"ignition":{"version":"3.4.0"}}"#);
    assert!(
        !ok,
        "ignition-validate 2.14 accepted spec 3.4.0; SPEC_VERSION may move up"
    );
}

/// A loop device over a file in a temp dir, detached on drop.
struct Loop {
    device: PathBuf,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(len: usize, sector_size: u32) -> Loop {
        Loop::holding(vec![OLD; len], sector_size)
    }

    /// A loop device over a file holding `content`.
    fn holding(content: Vec<u8>, sector_size: u32) -> Loop {
        let losetup = tool("losetup", "mount");
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk.img");
        std::fs::write(&backing, content).unwrap();
        let out = Command::new(losetup)
            .args([
                "--find",
                "--show",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(&backing)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup over {}: {} (needs root and /dev/loop-control)",
            backing.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Loop {
            device,
            backing,
            _dir: dir,
        }
    }

    fn read(&self) -> Vec<u8> {
        let mut data = Vec::new();
        std::fs::File::open(&self.device)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        data
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(tool("losetup", "mount"))
            .arg("--detach")
            .arg(&self.device)
            .status();
        let _ = &self.backing;
    }
}

fn image(len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    data[512..520].copy_from_slice(b"EFI PART");
    data
}

fn xz(data: &[u8]) -> Vec<u8> {
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(2)
        .block_size(MIB as u64)
        .preset(1)
        .encoder()
        .unwrap();
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn writes_an_xz_image_onto_a_loop_device() {
    let disk = Loop::new(16 * MIB, 512);
    let raw = image(10 * MIB);
    let source = xz(&raw);
    let target = WriteTarget::open(&disk.device).unwrap();
    assert_eq!(target.kind(), WriteTargetKind::BlockDevice);
    assert_eq!(target.size(), 16 * MIB as u64);
    assert_eq!(target.sector_size(), 512);
    let report = write_image(&source[..], &target, &verified(&source), &mut |_| {}).unwrap();
    drop(target);
    assert_eq!(report.image_bytes, raw.len() as u64);
    let now = disk.read();
    assert!(
        now[..raw.len()] == raw[..],
        "the loop device does not hold the image"
    );
    assert!(now[raw.len()..].iter().all(|&b| b == OLD));
}

#[test]
fn a_corrupted_image_leaves_the_loop_devices_first_mib_untouched() {
    let disk = Loop::new(16 * MIB, 512);
    let raw = image(10 * MIB);
    let good = xz(&raw);
    let mut bad = good.clone();
    let at = bad.len() * 3 / 4;
    bad[at] ^= 1;
    let target = WriteTarget::open(&disk.device).unwrap();
    let err = write_image(&bad[..], &target, &verified(&good), &mut |_| {}).unwrap_err();
    drop(target);
    assert!(
        matches!(
            err,
            ImageError::Checksum { .. } | ImageError::Decompress { .. }
        ),
        "{err}"
    );
    assert!(
        disk.read()[..MIB].iter().all(|&b| b == OLD),
        "the first MiB was written"
    );
}

#[test]
fn a_4kn_loop_device_refuses_a_512_byte_sector_image() {
    let disk = Loop::new(8 * MIB, 4096);
    let raw = image(4 * MIB);
    let target = WriteTarget::open(&disk.device).unwrap();
    assert_eq!(target.sector_size(), 4096);
    let err = write_image(&raw[..], &target, &verified(&raw), &mut |_| {}).unwrap_err();
    drop(target);
    assert!(
        matches!(
            err,
            ImageError::SectorSize {
                image: 512,
                target: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        disk.read().iter().all(|&b| b == OLD),
        "something was written"
    );
}

#[test]
fn a_device_in_use_is_refused() {
    let disk = Loop::new(4 * MIB, 512);
    // Someone else holds it exclusively, as a mount or LVM would.
    let _holder = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&disk.device)
        .unwrap();
    let err = WriteTarget::open(&disk.device).unwrap_err().to_string();
    assert!(err.contains("it is in use"), "{err}");
}

/// The whole capture path on fixtures: an identity gathered from a root tree, with the network
/// captured from `ip -json` output and carried NetworkManager keyfiles, rendered and checked by
/// Ignition itself.
#[test]
fn ignition_validate_accepts_a_gathered_identity_with_its_network() {
    use housekeeper::convert::identity::{gather, IdentityOptions};
    use housekeeper::convert::network::{self, keyfile, CaptureOptions, HostText};

    let root = tempfile::tempdir().unwrap();
    let put = |path: &str, text: &str| {
        let path = root.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    put("etc/hostname", "node-3\n");
    put("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    put(
        "root/.ssh/authorized_keys",
        "command=\"echo no\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b\n",
    );
    put("etc/ssh/ssh_host_ed25519_key", "PRIVATE\n");
    put("etc/timezone", "Asia/Shanghai\n");
    let mut gathered = gather(
        root.path(),
        &IdentityOptions {
            host_keys: true,
            ..IdentityOptions::default()
        },
    )
    .unwrap();
    assert_eq!(gathered.stripped.len(), 1);

    for case in ["multi", "nm"] {
        let dir = Path::new("tests/fixtures/convert/network").join(case);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let capture = network::capture(
            &HostText {
                addr: read("addr.json"),
                route4: read("route.json"),
                route6: read("route6.json"),
                resolv_conf: read("resolv.conf"),
            },
            CaptureOptions::default(),
        )
        .unwrap();
        let existing = keyfile::read_existing(&dir).unwrap();
        gathered.identity.keyfiles = keyfile::keyfiles(&capture, existing.as_deref()).files;
        let config = ignition::render(&gathered.identity, None)
            .unwrap()
            .to_json();
        let (ok, text) = ignition_validate(&config);
        assert!(ok, "{case}: ignition-validate rejected: {text}\n{config}");
    }
}

/// `x2nestos convert`'s work directory under a world-writable, sticky parent (as /var/tmp)
/// while an unprivileged user keeps planting a directory and links at its path: every attempt
/// either makes a private directory of root's or is refused with the reason, and no link is
/// ever followed.
#[test]
fn the_work_directory_cannot_be_raced_by_another_user() {
    use housekeeper::convert::workdir;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let setpriv = tool("setpriv", "util-linux");
    let top = tempfile::tempdir().unwrap();
    let shared = top.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // What a link would lead a root process into.
    let target = top.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
    let work = shared.join("x2nestos");

    // The other user, as nobody: a link, then a directory of its own, again and again.
    let mut racer = Command::new(&setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "end=$(( $(date +%s) + 20 )); while [ $(date +%s) -lt $end ]; do \
             ln -s {t} {w} 2>/dev/null; rm -f {w} 2>/dev/null; mkdir {w} 2>/dev/null; \
             rmdir {w} 2>/dev/null; done",
            t = target.display(),
            w = work.display()
        ))
        .spawn()
        .unwrap();
    let (mut made, mut refused) = (0, 0);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while std::time::Instant::now() < until {
        match workdir::create(&work, 0) {
            Ok(path) => {
                let meta = std::fs::symlink_metadata(&path).unwrap();
                assert!(meta.file_type().is_dir() && meta.uid() == 0);
                assert_eq!(meta.mode() & 0o777, 0o700);
                std::fs::write(path.join("plan.json"), "{}").unwrap();
                std::fs::remove_dir_all(&path).unwrap();
                made += 1;
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.starts_with(&format!("the work directory {}: ", work.display())),
                    "{e}"
                );
                refused += 1;
            }
        }
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "something was written through a link"
        );
    }
    let _ = racer.kill();
    let _ = racer.wait();
    assert!(made + refused > 0);
    eprintln!("made {made}, refused {refused}");

    // A parent every user may write without the sticky bit: refused before anything is made.
    let open = top.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = workdir::create(&open.join("w"), 0).unwrap_err().to_string();
    assert!(err.contains("without the sticky bit"), "{err}");
    assert!(!open.join("w").exists());
}

fn compress(format: Format, data: &[u8]) -> Vec<u8> {
    match format {
        Format::Raw => data.to_vec(),
        Format::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Format::Zstd => zstd::encode_all(data, 3).unwrap(),
        Format::Xz => xz(data),
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn zero_runs_on_a_loop_device_full_of_noise_read_back_as_the_image_in_every_format() {
    // The device is exactly the image's size and starts as noise: hashing all of it afterwards
    // shows every zero run was really zeroed (BLKZEROOUT), the run at the very end included.
    for (format, sector) in [
        (Format::Raw, 512),
        (Format::Gzip, 512),
        (Format::Zstd, 4096),
        (Format::Xz, 512),
    ] {
        let len = 20 * MIB;
        let raw = zero_run_image(len, sector);
        let source = compress(format, &raw);
        let disk = Loop::holding(noise(7, len), sector as u32);
        let target = WriteTarget::open(&disk.device).unwrap();
        assert_eq!(target.kind(), WriteTargetKind::BlockDevice);
        let report = write_image(&source[..], &target, &verified(&source), &mut |_| {})
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        drop(target);
        assert_eq!(
            report.zeroed_bytes,
            13 * MIB as u64,
            "{format}: the loop device did not zero the runs"
        );
        assert_eq!(
            sha(&disk.read()),
            sha(&raw),
            "{format}, {sector}-byte sectors"
        );
    }
}

#[test]
fn a_loop_device_whose_zeroing_fails_still_reads_back_as_the_image() {
    // BLKZEROOUT answered with EOPNOTSUPP (a device without write-zeroes that the kernel would
    // not stand in for), and with EIO after zeroing half the range (a failing disk).
    let len = 20 * MIB;
    let raw = zero_run_image(len, 512);
    let source = compress(Format::Zstd, &raw);
    for errno in [libc::EOPNOTSUPP, libc::EIO] {
        let disk = Loop::holding(noise(8, len), 512);
        let target =
            WriteTarget::open(&disk.device)
                .unwrap()
                .with_zeroer(move |file, offset, len| {
                    if errno == libc::EIO {
                        housekeeper::sys::blockdev::zero_out(file, offset, len / 2)?;
                    }
                    Err(std::io::Error::from_raw_os_error(errno))
                });
        let report = write_image(&source[..], &target, &verified(&source), &mut |_| {}).unwrap();
        drop(target);
        assert_eq!(report.zeroed_bytes, 0);
        assert_eq!(sha(&disk.read()), sha(&raw), "errno {errno}");
    }
}
