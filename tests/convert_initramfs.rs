//! The conversion's initramfs pieces against the real tools that read them: the live-image
//! overlay (our own newc writer) read back by GNU `cpio` and dracut's `lsinitrd`, and the
//! dracut module dracut/modules.d/90x2nestos built into an initramfs by the host's real
//! `dracut`, from a private copy of its module directory. Built only with
//! `--features host-tests`; tools/test-all.sh installs the packages. A missing tool fails the
//! test with what to install.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use housekeeper::convert::ignition::{self, Identity, UserKeys};
use housekeeper::convert::overlay::{self, live, media::Media, Directives, Member};

#[path = "support/convert.rs"]
mod convert_support;

use convert_support::{run, tool};

const FIXTURE_ISO: &str = "tests/fixtures/convert/live/nestos-iso";

fn config() -> String {
    let identity = Identity {
        hostname: Some("converted".into()),
        users: vec![UserKeys {
            name: "root".into(),
            keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b".into()],
        }],
        ..Identity::default()
    };
    ignition::render(&identity, None).unwrap().to_json()
}

/// The overlay for the NestOS fixture ISO, written to a file.
fn overlay_file(dir: &Path) -> (PathBuf, String) {
    let tree = live::Dir(FIXTURE_ISO.into());
    let live = live::read_live(&tree).unwrap();
    let prefix = live.prefix().unwrap();
    let ignition = config();
    let members = overlay::installer_members(
        &prefix,
        &Directives {
            dest_device: "/dev/disk/by-id/virtio-target".into(),
            ignition: ignition.clone(),
        },
    );
    let path = dir.join("overlay.cpio");
    let mut file = std::fs::File::create(&path).unwrap();
    overlay::write_newc(&members, &mut file).unwrap();
    (path, ignition)
}

#[test]
fn gnu_cpio_reads_the_overlay_back() {
    let cpio = tool("cpio", "cpio");
    let dir = tempfile::tempdir().unwrap();
    let (archive, ignition) = overlay_file(dir.path());

    let listing = run(Command::new(&cpio)
        .args(["-i", "-t", "-v", "--quiet", "-F"])
        .arg(&archive));
    let listing = String::from_utf8(listing.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 6, "{listing}");
    assert!(
        lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" etc"),
        "{listing}"
    );
    assert!(
        lines[3].starts_with("-rw-r--r--")
            && lines[3].ends_with(" etc/nestos/installer.d/50-x2nestos.yaml"),
        "{listing}"
    );
    assert!(
        lines[5].starts_with("-rw-------") && lines[5].ends_with(" etc/x2nestos/config.ign"),
        "{listing}"
    );

    let out = dir.path().join("unpacked");
    std::fs::create_dir(&out).unwrap();
    run(Command::new(&cpio)
        .args(["-i", "-d", "--no-absolute-filenames", "--quiet", "-D"])
        .arg(&out)
        .arg("-F")
        .arg(&archive));
    let written = std::fs::read_to_string(out.join("etc/x2nestos/config.ign")).unwrap();
    assert_eq!(written, ignition);
    let mode = std::fs::metadata(out.join("etc/x2nestos/config.ign"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let yaml =
        std::fs::read_to_string(out.join("etc/nestos/installer.d/50-x2nestos.yaml")).unwrap();
    assert!(yaml.contains("dest-device: \"/dev/disk/by-id/virtio-target\"\n"));
}

#[test]
fn lsinitrd_lists_the_overlay_and_shows_its_files() {
    let lsinitrd = tool("lsinitrd", "dracut");
    let dir = tempfile::tempdir().unwrap();
    let (archive, ignition) = overlay_file(dir.path());
    let listing = run(Command::new(&lsinitrd).arg(&archive));
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in [
        "etc/nestos/installer.d/50-x2nestos.yaml",
        "etc/x2nestos/config.ign",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} not in\n{listing}"
        );
    }
    let shown = run(Command::new(&lsinitrd)
        .arg(&archive)
        .args(["-f", "etc/x2nestos/config.ign"]));
    assert_eq!(String::from_utf8_lossy(&shown.stdout), ignition);
}

#[test]
fn an_empty_archive_and_a_large_member_read_back() {
    let cpio = tool("cpio", "cpio");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.cpio");
    // Sizes around the 4-byte padding and one that is not small.
    let members: Vec<Member> = overlay::with_parents(
        (0..5)
            .map(|n| (format!("/d/f{n}"), 0o644, vec![n as u8; n]))
            .chain(std::iter::once((
                "/d/big".into(),
                0o644,
                (0..3_000_001u32).map(|i| i as u8).collect(),
            )))
            .collect(),
    );
    overlay::write_newc(&members, &mut std::fs::File::create(&path).unwrap()).unwrap();
    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    run(Command::new(&cpio)
        .args(["-i", "-d", "--quiet", "-D"])
        .arg(&out)
        .arg("-F")
        .arg(&path));
    for n in 0..5 {
        assert_eq!(
            std::fs::read(out.join(format!("d/f{n}"))).unwrap(),
            vec![n as u8; n]
        );
    }
    assert_eq!(
        std::fs::metadata(out.join("d/big")).unwrap().len(),
        3_000_001
    );

    let empty = dir.path().join("empty.cpio");
    overlay::write_newc(&[], &mut std::fs::File::create(&empty).unwrap()).unwrap();
    let listing = run(Command::new(&cpio)
        .args(["-i", "-t", "--quiet", "-F"])
        .arg(&empty));
    assert!(listing.stdout.is_empty());
}

/// A private copy of the host's dracut with our module added, as x2nestos itself does.
/// `xorriso` makes an ISO of the fixture tree, with Rock Ridge names or (`plain`) with
/// ISO 9660 level-1 names only (`VMLINUZ.;1`), as the oldest tools write them.
fn make_iso(dir: &Path, plain: bool) -> PathBuf {
    let xorriso = tool("xorriso", "xorriso");
    let iso = dir.join(if plain { "plain.iso" } else { "live.iso" });
    let mut cmd = Command::new(xorriso);
    cmd.args(["-as", "mkisofs", "-quiet", "-V", "NESTOS"]);
    if !plain {
        cmd.args(["-R", "-J"]);
    }
    run(cmd.arg("-o").arg(&iso).arg(FIXTURE_ISO));
    iso
}

#[test]
fn a_live_iso_is_read_in_place_as_its_extracted_tree() {
    let dir = tempfile::tempdir().unwrap();
    let from_tree = Media::open(Path::new(FIXTURE_ISO)).unwrap();
    let expected = from_tree.boot().unwrap();
    for plain in [false, true] {
        let iso = make_iso(dir.path(), plain);
        let media = Media::open(&iso).unwrap();
        let boot = media.boot().unwrap();
        assert_eq!(boot.kernel, expected.kernel, "plain names: {plain}");
        assert_eq!(boot.args, expected.args, "plain names: {plain}");
        assert_eq!(
            boot.initrd_parts(media.tree()).unwrap(),
            expected.initrd_parts(from_tree.tree()).unwrap()
        );
        assert_eq!(
            media.load_bytes(&boot).unwrap(),
            from_tree.load_bytes(&expected).unwrap()
        );

        // What kexec would load: the kernel as on the ISO, then every part padded to 4
        // bytes, then the overlay.
        let (kernel, initrd) = (dir.path().join("k"), dir.path().join("i"));
        media.assemble(&boot, b"OVERLAY", &kernel, &initrd).unwrap();
        let tree = Path::new(FIXTURE_ISO);
        assert_eq!(
            std::fs::read(&kernel).unwrap(),
            std::fs::read(tree.join("images/pxeboot/vmlinuz")).unwrap()
        );
        let mut want = Vec::new();
        for part in expected.initrd_parts(from_tree.tree()).unwrap() {
            want.extend(std::fs::read(tree.join(part)).unwrap());
            want.resize(want.len().div_ceil(4) * 4, 0);
        }
        want.extend(b"OVERLAY");
        assert_eq!(std::fs::read(&initrd).unwrap(), want);
    }
}

#[test]
fn what_is_not_a_live_iso_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let not_iso = dir.path().join("disk.raw");
    std::fs::write(&not_iso, vec![0u8; 64 * 2048]).unwrap();
    let err = Media::open(&not_iso).err().unwrap().to_string();
    assert!(
        err.contains("not an ISO 9660 image") && err.ends_with("give a NestOS live ISO"),
        "{err}"
    );
    // An ISO of something that is not a live image: no boot entry.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("docs")).unwrap();
    std::fs::write(other.join("docs/readme.txt"), "hello").unwrap();
    let iso = dir.path().join("other.iso");
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-as", "mkisofs", "-quiet", "-R", "-o"])
        .arg(&iso)
        .arg(&other));
    let err = format!("{:#}", Media::open(&iso).unwrap().boot().unwrap_err());
    assert!(err.contains("is it an extracted NestOS live ISO?"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

fn private_dracut(dir: &Path) -> PathBuf {
    let base = dir.join("dracut");
    let host = Path::new("/usr/lib/dracut");
    assert!(
        host.join("dracut-init.sh").exists(),
        "/usr/lib/dracut is missing: apt-get install dracut"
    );
    run(Command::new("cp").arg("-a").arg(host).arg(&base));
    run(Command::new("cp")
        .arg("-a")
        .arg("dracut/modules.d/90x2nestos")
        .arg(base.join("modules.d/")));
    base
}

fn stage(dir: &Path) -> PathBuf {
    let stage = dir.join("stage");
    std::fs::create_dir(&stage).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_x2nestos"), stage.join("x2nestos")).unwrap();
    std::fs::write(
        stage.join("plan.json"),
        "{\"disk\": \"/dev/disk/by-id/virtio-target\"}\n",
    )
    .unwrap();
    std::fs::write(stage.join("config.ign"), config()).unwrap();
    std::fs::set_permissions(
        stage.join("config.ign"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::copy(
        "systemd/x2nestos-install.service",
        stage.join("x2nestos-install.service"),
    )
    .unwrap();
    stage
}

fn kernel_release() -> String {
    let out = run(Command::new("uname").arg("-r"));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn dracut_builds_an_initramfs_with_the_x2nestos_module() {
    let dracut = tool("dracut", "dracut");
    let lsinitrd = tool("lsinitrd", "dracut");
    let dir = tempfile::tempdir().unwrap();
    let base = private_dracut(dir.path());
    let stage = stage(dir.path());
    let image = dir.path().join("initramfs.img");
    // --no-kernel: the test needs no kernel modules directory (this host has none); the real
    // conversion passes the running kernel's version and its modules.
    let out = run(Command::new(&dracut)
        .env("dracutbasedir", &base)
        .env("X2NESTOS_STAGE", &stage)
        .args([
            "--no-hostonly",
            "--no-kernel",
            "--no-compress",
            "--force",
            "--quiet",
        ])
        .args(["--kver", &kernel_release()])
        .args(["--modules", "base x2nestos"])
        .args(["--tmpdir"])
        .arg(dir.path())
        .arg(&image));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(image.exists(), "dracut made no image: {log}");

    let listing = run(Command::new(&lsinitrd).arg(&image));
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let line = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(path) || l.contains(&format!(" {path} -> ")))
            .unwrap_or_else(|| panic!("{path} is not in the initramfs:\n{listing}"))
            .to_owned()
    };
    assert!(listing.contains("x2nestos"), "{listing}");
    assert!(line("usr/bin/x2nestos").starts_with("-rwx"));
    assert!(line("etc/x2nestos/plan.json").starts_with("-rw"));
    assert!(
        line("etc/x2nestos/config.ign").starts_with("-rw-------"),
        "the Ignition config must stay 0600"
    );
    line("usr/lib/systemd/system/x2nestos-install.service");
    assert!(
        line("usr/lib/systemd/system/initrd.target.wants/x2nestos-install.service")
            .starts_with('l')
    );
    // systemd came along as the module's dependency.
    line("usr/lib/systemd/systemd");

    let shown = run(Command::new(&lsinitrd)
        .arg(&image)
        .args(["-f", "etc/x2nestos/config.ign"]));
    assert_eq!(String::from_utf8_lossy(&shown.stdout), config());
    let unit = run(Command::new(&lsinitrd)
        .arg(&image)
        .args(["-f", "usr/lib/systemd/system/x2nestos-install.service"]));
    assert!(String::from_utf8_lossy(&unit.stdout)
        .contains("ExecStart=/usr/bin/x2nestos install --plan /etc/x2nestos/plan.json"));
}

#[test]
fn dracut_refuses_the_module_without_a_stage() {
    let dracut = tool("dracut", "dracut");
    let dir = tempfile::tempdir().unwrap();
    let base = private_dracut(dir.path());
    let stage = stage(dir.path());
    std::fs::remove_file(stage.join("plan.json")).unwrap();
    let out = Command::new(&dracut)
        .env("dracutbasedir", &base)
        .env("X2NESTOS_STAGE", &stage)
        .args(["--no-hostonly", "--no-kernel", "--no-compress", "--force"])
        .args(["--kver", &kernel_release()])
        .args(["--modules", "base x2nestos"])
        .args(["--tmpdir"])
        .arg(dir.path())
        .arg(dir.path().join("initramfs.img"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("plan.json is missing"),
        "dracut did not say what is missing: {text}"
    );
}
