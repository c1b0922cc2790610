//! `x2nestos plan`, `convert` and `install` as an admin runs them, against loop devices over
//! files (root), a local HTTP server, Debian's `gpgv` and `ignition-validate`.
//!
//! Every bad input of the conversion is refused before anything changes: each test runs
//! `x2nestos convert --yes` with exactly one thing wrong, checks the one line that says why
//! and what to do, and checks that the loop device's contents did not change. Machine facts
//! that cannot be changed on this host (architecture, memory, kexec switched off, lockdown)
//! come from a fixture tree named by the hidden `--facts-root`; `convert` refuses to act on
//! such facts at all, so these tests can never reach a kexec load. The install test writes a
//! real image onto a loop device with `x2nestos install` and reads the result back.
//!
//! Built only with `--features host-tests`; tools/test-all.sh installs the packages.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

#[path = "support/convert.rs"]
mod convert_support;

use convert_support::{run, tool};

const MIB: u64 = 1 << 20;

/// A loop device over a file of `size` bytes filled with a pattern, its first 32 bytes unique
/// to it (so that the installer can tell it from any other loop device of its size, as it
/// can tell real disks apart); detached on drop.
struct Loop {
    dev: String,
    file: PathBuf,
}

impl Loop {
    fn new(dir: &Path, name: &str, size: u64) -> Loop {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut pattern: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let stamp = Sha256::digest(format!(
            "{} {} {:?} {}",
            std::process::id(),
            MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            std::time::SystemTime::now(),
            dir.display()
        ));
        pattern[..32].copy_from_slice(&stamp);
        Loop::over(dir, name, &pattern)
    }

    /// A loop device over a file holding exactly `bytes`.
    fn over(dir: &Path, name: &str, bytes: &[u8]) -> Loop {
        let file = dir.join(name);
        std::fs::write(&file, bytes).unwrap();
        let out = run(Command::new(tool("losetup", "mount"))
            .args(["--find", "--show"])
            .arg(&file));
        Loop {
            dev: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            file,
        }
    }

    fn read_all(&self) -> Vec<u8> {
        std::fs::read(&self.dev).unwrap()
    }

    fn write_all(&self, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.dev)
            .unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }

    fn digest(&self) -> String {
        let mut f = std::fs::File::open(&self.dev).unwrap();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; MIB as usize];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        hex::encode(hasher.finalize())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .args(["--detach", &self.dev])
            .status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A machine's facts that pass every check: root is the caller, x86_64, kexec available,
/// plenty of memory, a kernel image present.
fn facts(dir: &Path) -> PathBuf {
    let root = dir.join("facts");
    let put = |rel: &str, text: &str| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    put(
        "proc/meminfo",
        "MemAvailable: 8388608 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
    );
    put("proc/sys/kernel/osrelease", "6.1.0-fixture\n");
    put("proc/sys/kernel/arch", "x86_64\n");
    put("proc/sys/kernel/kexec_load_disabled", "0\n");
    put(
        "boot/config-6.1.0-fixture",
        "CONFIG_KEXEC=y\nCONFIG_KEXEC_FILE=y\n",
    );
    put(
        "boot/vmlinuz-6.1.0-fixture",
        "not a kernel: convert never loads fixture facts\n",
    );
    put("sys/kernel/kexec_loaded", "0\n");
    put(
        "sys/kernel/security/lockdown",
        "[none] integrity confidentiality\n",
    );
    // What else lives on the disk, and the console, are this machine's: the disks under test
    // are real loop devices, mounted (or not) on this machine.
    for rel in ["proc/self/mountinfo", "proc/swaps", "proc/cmdline"] {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(Path::new("/").join(rel), path).unwrap();
    }
    root
}

/// The boot loader entry of the fixture image.
const BLS_ENTRY: &str = "title NestOS 41.1 (ostree:0)\nversion 1\nlinux /ostree/nestos-1/vmlinuz-6.6.0\ninitrd /ostree/nestos-1/initramfs-6.6.0.img\noptions mitigations=auto,nosmt ignition.platform.id=metal $ignition_firstboot ostree=/ostree/boot.1/nestos/1/0\n";

/// A GPT disk image of `size` bytes: partition `boot` (ext4, label boot, with the first-boot
/// stamp) and `root` (ext4, a file in it).
fn metal_image(dir: &Path, size: u64) -> PathBuf {
    let image = dir.join("metal.raw");
    std::fs::write(&image, vec![0u8; size as usize]).unwrap();
    let boot_sectors = 16 * MIB / 512;
    let mut sfdisk = Command::new(tool("sfdisk", "fdisk"))
        .args(["-q"])
        .arg(&image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    write!(
        sfdisk.stdin.take().unwrap(),
        "label: gpt\nstart=2048, size={boot_sectors}, name=boot\nname=root\n"
    )
    .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let boot_tree = dir.join("boot-tree");
    std::fs::create_dir_all(&boot_tree).unwrap();
    std::fs::write(boot_tree.join("ignition.firstboot"), "").unwrap();
    // The boot loader entry NestOS's metal image has (ostree's BLS layout).
    std::fs::create_dir_all(boot_tree.join("loader/entries")).unwrap();
    std::fs::write(
        boot_tree.join("loader/entries/ostree-1-nestos.conf"),
        BLS_ENTRY,
    )
    .unwrap();
    run(Command::new(tool("mkfs.ext4", "e2fsprogs"))
        .args(["-q", "-F", "-L", "boot", "-d"])
        .arg(&boot_tree)
        .args(["-E", &format!("offset={}", MIB)])
        .arg(&image)
        .arg(format!("{}k", 16 * 1024)));
    let root_tree = dir.join("root-tree");
    std::fs::create_dir_all(root_tree.join("etc")).unwrap();
    std::fs::write(root_tree.join("etc/os-release"), "ID=nestos\n").unwrap();
    let root_start = 17 * MIB;
    let root_kib = (size - root_start - MIB) / 1024;
    run(Command::new(tool("mkfs.ext4", "e2fsprogs"))
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&root_tree)
        .args(["-E", &format!("offset={root_start}")])
        .arg(&image)
        .arg(format!("{root_kib}k")));
    image
}

fn xz(path: &Path) -> PathBuf {
    run(Command::new(tool("xz", "xz-utils"))
        .args(["-k", "-f", "-T1", "-1"])
        .arg(path));
    path.with_extension("raw.xz")
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn x2nestos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_x2nestos"))
        .args(args)
        .output()
        .expect("running x2nestos")
}

/// The error line (`x2nestos: error: …`) of a failed run.
fn error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "x2nestos succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("x2nestos: error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"))
        .to_owned();
    assert_eq!(
        line.matches("x2nestos: error").count(),
        1,
        "one line: {stderr}"
    );
    line
}

struct Bench {
    dir: tempfile::TempDir,
    facts: PathBuf,
    image: PathBuf,
    sha: String,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let facts = facts(dir.path());
        let image = xz(&metal_image(dir.path(), 40 * MIB));
        let sha = sha256_file(&image);
        Bench {
            dir,
            facts,
            image,
            sha,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `convert --yes` against `disk` with the good defaults, `extra` replacing or adding
    /// arguments; asserts the disk did not change and returns the error line.
    fn refused(&self, disk: &Loop, extra: &[&str]) -> String {
        let before = disk.digest();
        let mut args: Vec<String> = vec![
            "convert".into(),
            "--yes".into(),
            "--workdir".into(),
            self.path().join("work").display().to_string(),
        ];
        let has = |flag: &str| extra.contains(&flag);
        if !has("--disk") {
            args.extend(["--disk".into(), disk.dev.clone()]);
        }
        if !has("--image") && !has("--live") && !has("--stream-name") {
            args.extend(["--image".into(), self.image.display().to_string()]);
        }
        if !has("--sha256") && !has("--insecure") && !has("--stream-name") {
            args.extend(["--sha256".into(), self.sha.clone()]);
        }
        if !has("--facts-root") {
            args.extend(["--facts-root".into(), self.facts.display().to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = error_line(&x2nestos(&refs));
        assert_eq!(disk.digest(), before, "the disk changed: {line}");
        assert!(
            !self.path().join("work").exists(),
            "a work directory was left behind"
        );
        line
    }
}

#[test]
fn good_inputs_are_refused_only_for_the_fixture_facts() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let line = b.refused(&disk, &[]);
    assert!(
        line.contains("the facts were read below") && line.contains("not from this machine"),
        "{line}"
    );
    // The plan itself is clean, and says what goes and what stays.
    let out = x2nestos(&[
        "plan",
        "--disk",
        &disk.dev,
        "--image",
        b.image.to_str().unwrap(),
        "--sha256",
        &b.sha,
        "--facts-root",
        b.facts.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = disk.dev.trim_start_matches("/dev/");
    assert!(
        text.contains(&format!("Will be destroyed: /dev/{name} (67108864 bytes")),
        "{text}"
    );
    assert!(text.contains("Will be carried over: "), "{text}");
    assert!(text.contains("verified by sha256"), "{text}");
    assert!(text.lines().count() < 30, "a few lines: {text}");
}

#[test]
fn a_disk_that_does_not_exist() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let line = b.refused(&disk, &["--disk", "/dev/nonexistent-disk"]);
    assert_eq!(
        line,
        "x2nestos: error: nothing was changed: /dev/nonexistent-disk: no such block device; list the disks with `lsblk -d`"
    );
}

#[test]
fn a_disk_smaller_than_the_image() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "small", 24 * MIB);
    let line = b.refused(&disk, &[]);
    assert_eq!(
        line,
        "x2nestos: error: nothing was changed: the image needs 40 MiB but the disk has 24 MiB; choose a larger disk"
    );
}

#[test]
fn a_mounted_disk_that_is_not_the_running_system() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "data", 64 * MIB);
    run(Command::new(tool("mkfs.ext4", "e2fsprogs"))
        .args(["-q", "-F"])
        .arg(&disk.dev));
    let mnt = b.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Read-only, so that the mount itself writes nothing the digest would see.
    run(Command::new("mount")
        .args(["-o", "ro"])
        .arg(&disk.dev)
        .arg(&mnt));
    let before = disk.digest();
    let out = x2nestos(&[
        "convert",
        "--yes",
        "--disk",
        &disk.dev,
        "--image",
        b.image.to_str().unwrap(),
        "--sha256",
        &b.sha,
        "--facts-root",
        b.facts.to_str().unwrap(),
    ]);
    let line = error_line(&out);
    let after = disk.digest();
    run(Command::new("umount").arg(&mnt));
    assert_eq!(after, before);
    let name = disk.dev.trim_start_matches("/dev/");
    assert_eq!(
        line,
        format!(
            "x2nestos: error: nothing was changed: /dev/{name} is in use and does not hold the running system: {name} mounted on {}; unmount or stop it first",
            mnt.display()
        )
    );
}

#[test]
fn a_partition_instead_of_a_disk() {
    // This host's kernel shows no partitions of loop devices: the partition is a fixture
    // sysfs tree (disk::resolve over it is unit-tested), and here the CLI refuses a
    // partition-like name that resolves to no whole disk.
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let partition = format!("{}p1", disk.dev);
    let line = b.refused(&disk, &["--disk", &partition]);
    assert_eq!(
        line,
        format!(
            "x2nestos: error: nothing was changed: {partition}: no such block device; list the disks with `lsblk -d`"
        )
    );
}

#[test]
fn an_image_whose_checksum_does_not_match() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let wrong = "0".repeat(64);
    let line = b.refused(&disk, &["--sha256", &wrong]);
    assert!(
        line.starts_with(&format!(
            "x2nestos: error: nothing was changed: image checksum mismatch: expected sha256 {wrong}, got {}",
            b.sha
        )),
        "{line}"
    );
    let line = b.refused(&disk, &["--sha256", "not-hex"]);
    assert!(
        line.contains("--sha256: \"not-hex\" is not a SHA-256 digest"),
        "{line}"
    );
    let line = b.refused(&disk, &["--sha256", ""]);
    assert!(line.contains("is not a SHA-256 digest"), "{line}");
}

#[test]
fn an_unverified_image_needs_insecure() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let out = x2nestos(&[
        "convert",
        "--yes",
        "--disk",
        &disk.dev,
        "--image",
        b.image.to_str().unwrap(),
        "--facts-root",
        b.facts.to_str().unwrap(),
    ]);
    let line = error_line(&out);
    assert!(
        line.contains("the image would not be verified: give --sha256 HEX"),
        "{line}"
    );
    let out = x2nestos(&[
        "plan",
        "--disk",
        &disk.dev,
        "--image",
        b.image.to_str().unwrap(),
        "--insecure",
        "--facts-root",
        b.facts.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("UNVERIFIED (--insecure)"), "{text}");
    assert!(
        text.contains("Warning: --insecure: the image will be written UNVERIFIED"),
        "{text}"
    );
}

/// A one-shot HTTP server on 127.0.0.1: `respond` gets the request line and the stream.
fn serve(respond: impl Fn(&str, &mut std::net::TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                request.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            respond(text.lines().next().unwrap_or_default(), &mut conn);
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn a_url_that_404s() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let base = serve(|_, conn| {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    });
    let url = format!("{base}/metal.raw.xz");
    let line = b.refused(&disk, &["--image", &url]);
    assert_eq!(
        line,
        format!("x2nestos: error: nothing was changed: GET {url}: the server answered 404 Not Found; check the URL")
    );
}

#[test]
fn a_url_that_stalls() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let base = serve(|_, conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n\xFD7z");
        std::thread::sleep(std::time::Duration::from_secs(180));
    });
    let url = format!("{base}/metal.raw.xz");
    let started = std::time::Instant::now();
    let line = b.refused(&disk, &["--image", &url, "--stall-timeout", "2"]);
    assert!(
        line.contains(&format!(
            "reading {url}: no data for 2 s, the server stalled; try again, or use another mirror"
        )),
        "{line}"
    );
    // The server holds the connection for 3 minutes; a run that ends well before (even on a
    // loaded machine) was cut short by the 2 s stall timeout.
    assert!(
        started.elapsed().as_secs() < 90,
        "the stall was not cut short"
    );
}

#[test]
fn an_ignition_file_that_is_not_valid() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let bad = b.path().join("bad.ign");
    std::fs::write(&bad, r#"{"ignition": {"version": "2.2.0"}}"#).unwrap();
    let line = b.refused(&disk, &["--ignition", bad.to_str().unwrap()]);
    assert!(
        line.starts_with(&format!(
            "x2nestos: error: nothing was changed: Ignition config {}: ",
            bad.display()
        )) && line.contains("2.2.0"),
        "{line}"
    );
    std::fs::write(&bad, "{ not json").unwrap();
    let line = b.refused(&disk, &["--ignition", bad.to_str().unwrap()]);
    assert!(line.contains("Ignition config"), "{line}");
}

/// The fixture facts with one file changed.
fn facts_with(b: &Bench, name: &str, rel: &str, text: &str) -> PathBuf {
    let copy = b.path().join(name);
    run(Command::new("cp").arg("-a").arg(&b.facts).arg(&copy));
    std::fs::write(copy.join(rel), text).unwrap();
    copy
}

#[test]
fn not_enough_memory() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let root = facts_with(
        &b,
        "small-memory",
        "proc/meminfo",
        "MemAvailable: 262144 kB\nSwapTotal: 1048576 kB\nSwapFree: 0 kB\n",
    );
    let line = b.refused(&disk, &["--facts-root", root.to_str().unwrap()]);
    assert!(
        line.starts_with("x2nestos: error: nothing was changed: not enough memory: the conversion needs 385 MiB of RAM, 256 MiB are available, and swap does not survive kexec"),
        "{line}"
    );
}

#[test]
fn kexec_switched_off_or_locked_down() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let root = facts_with(&b, "disabled", "proc/sys/kernel/kexec_load_disabled", "1\n");
    let line = b.refused(&disk, &["--facts-root", root.to_str().unwrap()]);
    assert!(
        line.contains("nothing was changed: kexec is switched off until the next reboot (kernel.kexec_load_disabled = 1"),
        "{line}"
    );
    let root = facts_with(
        &b,
        "locked",
        "sys/kernel/security/lockdown",
        "none [integrity] confidentiality\n",
    );
    std::fs::write(
        root.join("boot/config-6.1.0-fixture"),
        "CONFIG_KEXEC=y\n# CONFIG_KEXEC_FILE is not set\n",
    )
    .unwrap();
    let line = b.refused(&disk, &["--facts-root", root.to_str().unwrap()]);
    assert!(
        line.contains(
            "nothing was changed: kernel lockdown (integrity) forbids the old kexec_load"
        ),
        "{line}"
    );
}

#[test]
fn an_unsupported_architecture() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let root = facts_with(&b, "riscv", "proc/sys/kernel/arch", "riscv64\n");
    let line = b.refused(&disk, &["--facts-root", root.to_str().unwrap()]);
    assert_eq!(
        line,
        "x2nestos: error: nothing was changed: architecture riscv64 is not supported: NestOS For Container is built for x86_64 and aarch64"
    );
}

#[test]
fn not_root() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let before = disk.digest();
    // The image and facts must be readable by the unprivileged user.
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(b.path()));
    let out = Command::new(tool("setpriv", "util-linux"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_x2nestos"))
        .args(["convert", "--yes", "--disk", &disk.dev, "--image"])
        .arg(&b.image)
        .args(["--sha256", &b.sha, "--facts-root"])
        .arg(&b.facts)
        .args(["--workdir"])
        .arg(b.path().join("work"))
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains(
            "x2nestos must run as root (it loads a kernel and rewrites a disk); run it with sudo"
        ),
        "{line}"
    );
    assert_eq!(disk.digest(), before);
}

#[test]
fn a_signed_image_is_checked_with_gpgv() {
    let gpg = tool("gpg", "gnupg");
    tool("gpgv", "gpgv");
    let b = Bench::new();
    let home = b.path().join("gnupg");
    std::fs::create_dir(&home).unwrap();
    run(Command::new("chmod").arg("700").arg(&home));
    let gpg = |args: &[&str]| {
        run(Command::new(&gpg)
            .arg("--homedir")
            .arg(&home)
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args))
    };
    gpg(&[
        "--quick-gen-key",
        "x2nestos test <test@example.org>",
        "ed25519",
        "sign",
        "never",
    ]);
    let keyring = b.path().join("keys.gpg");
    gpg(&["--output", keyring.to_str().unwrap(), "--export"]);
    let sig = b.path().join("metal.raw.xz.sig");
    gpg(&[
        "--output",
        sig.to_str().unwrap(),
        "--detach-sign",
        b.image.to_str().unwrap(),
    ]);
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let plan = |image: &Path, sha: Option<&str>| {
        let mut args = vec![
            "plan".to_owned(),
            "-o".into(),
            "json".into(),
            "--disk".into(),
            disk.dev.clone(),
            "--image".into(),
            image.display().to_string(),
            "--signature".into(),
            sig.display().to_string(),
            "--keyring".into(),
            keyring.display().to_string(),
            "--facts-root".into(),
            b.facts.display().to_string(),
        ];
        if let Some(sha) = sha {
            args.extend(["--sha256".into(), sha.to_owned()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        x2nestos(&refs)
    };
    // Signed and good, without a checksum: the signature's pass gives the digest.
    let out = plan(&b.image, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["plan"]["image"]["signed"], true);
    assert_eq!(report["plan"]["image"]["sha256"], b.sha.as_str());
    // A changed image: refused with what gpgv said.
    let tampered = b.path().join("tampered.raw.xz");
    let mut bytes = std::fs::read(&b.image).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 1;
    std::fs::write(&tampered, bytes).unwrap();
    let out = plan(&tampered, None);
    let line = error_line(&out);
    assert!(
        line.contains("does not verify the image with the keyring"),
        "{line}"
    );
    assert!(line.contains("BAD signature"), "{line}");
    // A signature that verifies but a checksum that disagrees.
    let out = plan(&b.image, Some(&"1".repeat(64)));
    assert!(error_line(&out).contains("image checksum mismatch"));

    // The signing key pinned: its own fingerprint passes, another is refused.
    let listing = run(Command::new(tool("gpg", "gnupg"))
        .arg("--homedir")
        .arg(&home)
        .args(["--batch", "--with-colons", "--fingerprint"]));
    let fpr = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|l| l.split(':').find(|f| f.len() == 40))
        .map(str::to_owned)
        .expect("gpg lists the key's fingerprint");
    let signed = |keyring: &Path, sig: &Path, extra: &[&str]| {
        let mut args = vec![
            "plan",
            "-o",
            "json",
            "--disk",
            &disk.dev,
            "--image",
            b.image.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
            "--keyring",
            keyring.to_str().unwrap(),
            "--facts-root",
            b.facts.to_str().unwrap(),
        ];
        args.extend(extra);
        x2nestos(&args)
    };
    let pinned = |pin: &str| signed(&keyring, &sig, &["--fingerprint", pin]);
    let out = pinned(&fpr.to_lowercase());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = error_line(&pinned(&"AB".repeat(20)));
    assert!(
        line.contains(&format!(
            "was made with key {fpr}, not the pinned --fingerprint {}",
            "AB".repeat(20)
        )),
        "{line}"
    );
    // A key id is not a fingerprint: a command-line error.
    let out = pinned("295C949DA3C197DC");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not an OpenPGP fingerprint"), "{stderr}");

    // A key that expired after it signed: gpgv itself exits 0 for it; refused.
    gpg(&[
        "--faked-system-time",
        "20200101T000000!",
        "--quick-gen-key",
        "x2nestos old <old@example.org>",
        "ed25519",
        "sign",
        "1d",
    ]);
    let old_keyring = b.path().join("old.gpg");
    gpg(&[
        "--output",
        old_keyring.to_str().unwrap(),
        "--export",
        "old@example.org",
    ]);
    let old_sig = b.path().join("old.sig");
    gpg(&[
        "--faked-system-time",
        "20200101T010000!",
        "--local-user",
        "old@example.org",
        "--output",
        old_sig.to_str().unwrap(),
        "--detach-sign",
        b.image.to_str().unwrap(),
    ]);
    let out = signed(&old_keyring, &old_sig, &[]);
    let line = error_line(&out);
    assert!(line.contains("which has expired"), "{line}");
}

#[test]
fn install_writes_the_image_and_the_ignition_config_onto_a_loop_device() {
    let validate = tool("ignition-validate", "ignition");
    let b = Bench::new();
    let disk = Loop::new(b.path(), "target", 64 * MIB);
    // The plan, as convert would carry it: from `plan -o json`, the image carried beside it.
    let out = x2nestos(&[
        "plan",
        "-o",
        "json",
        "--disk",
        &disk.dev,
        "--image",
        b.image.to_str().unwrap(),
        "--sha256",
        &b.sha,
        "--facts-root",
        b.facts.to_str().unwrap(),
        "--stall-timeout",
        "300",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut plan = report["plan"].clone();
    assert_eq!(
        plan["image"]["imageBytes"],
        40 * MIB,
        "xz size from its index"
    );
    // The installer in the initramfs keeps the admin's stall timeout.
    assert_eq!(plan["image"]["stallSeconds"], 300);
    plan["image"]["carried"] = b.image.display().to_string().into();
    let plan_path = b.path().join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let ignition = b.path().join("config.ign");
    std::fs::write(
        &ignition,
        r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/etc/hostname","mode":420,"overwrite":true,"contents":{"source":"data:,converted%0A"}}]}}"#,
    )
    .unwrap();
    run(Command::new(&validate).arg(&ignition));

    let out = x2nestos(&[
        "install",
        "--plan",
        plan_path.to_str().unwrap(),
        "--ignition",
        ignition.to_str().unwrap(),
        "--no-reboot",
    ]);
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{console}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        console.contains("x2nestos: carried image verified"),
        "{console}"
    );
    assert!(console.contains("x2nestos: NestOS is written"), "{console}");
    assert!(
        console.contains("writing /dev/loop"),
        "progress lines: {console}"
    );

    // The image is on the disk, byte for byte.
    let raw = std::fs::read(b.path().join("metal.raw")).unwrap();
    let mut written = vec![0u8; raw.len()];
    std::fs::File::open(&disk.dev)
        .unwrap()
        .read_exact(&mut written)
        .unwrap();
    let boot_range = MIB as usize..17 * MIB as usize;
    assert_eq!(written[..MIB as usize], raw[..MIB as usize], "first MiB");
    assert_eq!(
        written[17 * MIB as usize..],
        raw[17 * MIB as usize..],
        "the root partition"
    );
    assert_ne!(
        written[boot_range.clone()],
        raw[boot_range],
        "the boot partition got files"
    );

    // The boot partition holds the config (0600), the stamp and the log.
    let boot = Command::new(tool("losetup", "mount"))
        .args([
            "--find",
            "--show",
            "--offset",
            &MIB.to_string(),
            "--sizelimit",
            &(16 * MIB).to_string(),
        ])
        .arg(&disk.dev)
        .output()
        .unwrap();
    let boot = String::from_utf8(boot.stdout).unwrap().trim().to_owned();
    let mnt = b.path().join("boot");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount").arg(&boot).arg(&mnt));
    let read = |rel: &str| std::fs::read_to_string(mnt.join(rel));
    let config = read("ignition/config.ign");
    let log = read("x2nestos/install.log");
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(mnt.join("ignition/config.ign")).map(|m| m.permissions().mode() & 0o777);
    let stamp = mnt.join("ignition.firstboot").exists();
    run(Command::new("umount").arg(&mnt));
    run(Command::new("losetup").args(["--detach", &boot]));
    assert_eq!(config.unwrap(), std::fs::read_to_string(&ignition).unwrap());
    assert_eq!(mode.unwrap(), 0o600);
    assert!(stamp);
    let log = log.unwrap();
    assert!(
        log.contains("is the planned disk") && log.contains(", verified"),
        "{log}"
    );

    // Run again, over a disk whose image was damaged meanwhile (as a first run that failed
    // after its first write leaves it): the installer is re-runnable and writes the same
    // image again — the first MiB and the root partition byte for byte.
    {
        use std::os::unix::fs::FileExt as _;
        let dev = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.dev)
            .unwrap();
        dev.write_all_at(&[0xAA; 4096], 0).unwrap();
        dev.write_all_at(&[0x55; 4096], 20 * MIB).unwrap();
        dev.sync_all().unwrap();
    }
    let out = x2nestos(&[
        "install",
        "--plan",
        plan_path.to_str().unwrap(),
        "--ignition",
        ignition.to_str().unwrap(),
        "--no-reboot",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut again = vec![0u8; raw.len()];
    std::fs::File::open(&disk.dev)
        .unwrap()
        .read_exact(&mut again)
        .unwrap();
    assert!(
        again[..MIB as usize] == raw[..MIB as usize],
        "first MiB after a re-run"
    );
    assert!(
        again[17 * MIB as usize..] == raw[17 * MIB as usize..],
        "the root partition after a re-run"
    );
}

#[test]
fn install_refuses_a_corrupted_carried_image_before_writing() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "target", 64 * MIB);
    let corrupted = b.path().join("corrupted.raw.xz");
    let mut bytes = std::fs::read(&b.image).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&corrupted, bytes).unwrap();
    let name = disk.dev.trim_start_matches("/dev/").to_owned();
    let plan = serde_json::json!({
        "apiVersion": "x2nestos.housekeeper.io/v1",
        "kind": "Plan",
        "disk": { "named": disk.dev, "name": name, "byId": [], "serial": null,
                  "sizeBytes": 64 * MIB, "sectorSize": 512 },
        "image": { "source": b.image, "sha256": b.sha, "compressedBytes": null,
                   "imageBytes": 40 * MIB, "carry": "inMemory", "carried": corrupted },
        "network": []
    });
    let plan_path = b.path().join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let ignition = b.path().join("config.ign");
    std::fs::write(&ignition, r#"{"ignition":{"version":"3.3.0"}}"#).unwrap();
    let before = disk.digest();
    let out = x2nestos(&[
        "install",
        "--plan",
        plan_path.to_str().unwrap(),
        "--ignition",
        ignition.to_str().unwrap(),
        "--no-reboot",
    ]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{console}");
    assert!(console.contains("image checksum mismatch"), "{console}");
    assert!(
        console.contains("nothing was written: the disk is as it was"),
        "{console}"
    );
    assert_eq!(disk.digest(), before);

    // The planned disk is not this one (another size): refused before writing, too.
    let mut other = plan.clone();
    other["disk"]["sizeBytes"] = (32 * MIB).into();
    std::fs::write(&plan_path, other.to_string()).unwrap();
    let out = x2nestos(&[
        "install",
        "--plan",
        plan_path.to_str().unwrap(),
        "--ignition",
        ignition.to_str().unwrap(),
        "--no-reboot",
        "--device-wait",
        "2",
    ]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        console.contains(
            "bytes but the planned disk had 33554432: it is not the disk that was planned"
        ),
        "{console}"
    );
    assert_eq!(disk.digest(), before);
}

// --- which disk: told apart by its first MiB, or not written -------------------------------

impl Bench {
    /// `plan -o json` for `disk`, made into the plan `convert` would carry (the image beside
    /// it), written with an Ignition config; (plan path, Ignition path, the plan).
    fn carried_plan(&self, disk: &Loop) -> (PathBuf, PathBuf, serde_json::Value) {
        let out = x2nestos(&[
            "plan",
            "-o",
            "json",
            "--disk",
            &disk.dev,
            "--image",
            self.image.to_str().unwrap(),
            "--sha256",
            &self.sha,
            "--facts-root",
            self.facts.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut plan = report["plan"].clone();
        assert!(plan.is_object(), "no plan: {report}");
        plan["image"]["carried"] = self.image.display().to_string().into();
        let plan_path = self.path().join("plan.json");
        std::fs::write(&plan_path, plan.to_string()).unwrap();
        let ignition = self.path().join("config.ign");
        std::fs::write(&ignition, r#"{"ignition":{"version":"3.3.0"}}"#).unwrap();
        (plan_path, ignition, plan)
    }
}

fn install(plan: &Path, ignition: &Path) -> (bool, String) {
    let out = x2nestos(&[
        "install",
        "--plan",
        plan.to_str().unwrap(),
        "--ignition",
        ignition.to_str().unwrap(),
        "--no-reboot",
        "--device-wait",
        "2",
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn two_disks_that_cannot_be_told_apart_are_refused_in_the_plan() {
    let b = Bench::new();
    // One size no other test uses, the same bytes on both: no serial, no by-id or by-path
    // name, and the same first MiB.
    let same = vec![0u8; (48 * MIB) as usize];
    let disk = Loop::over(b.path(), "a", &same);
    let twin = Loop::over(b.path(), "b", &same);
    let line = b.refused(&disk, &[]);
    assert!(
        line.contains(&format!(
            "{} cannot be told apart from {} after kexec",
            disk.dev, twin.dev
        )) && line.contains("write a partition table on the target first"),
        "{line}"
    );
    // A partition table on the target tells it apart: planned, by its table id.
    run(Command::new(tool("sfdisk", "fdisk"))
        .arg(&disk.dev)
        .stdin(std::fs::File::open(write_script(b.path(), "label: gpt\n")).unwrap()));
    let (_, _, plan) = b.carried_plan(&disk);
    let table = plan["disk"]["mark"]["table"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(table.starts_with("gpt:"), "{plan}");
}

fn write_script(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sfdisk.script");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn after_a_swap_of_names_the_installer_writes_the_planned_disk_and_nothing_else() {
    let b = Bench::new();
    let planned = Loop::new(b.path(), "a", 56 * MIB);
    let other = Loop::new(b.path(), "b", 56 * MIB);
    let (plan_path, ignition, plan) = b.carried_plan(&planned);
    assert_eq!(
        plan["disk"]["mark"]["firstMibSha256"]
            .as_str()
            .map(str::len),
        Some(64),
        "{plan}"
    );
    // The two disks trade names, as kernel names may between boots: the planned disk's
    // contents are now behind the other name.
    let (a, o) = (planned.read_all(), other.read_all());
    planned.write_all(&o);
    other.write_all(&a);
    let before = planned.digest();
    let (ok, console) = install(&plan_path, &ignition);
    assert!(ok, "{console}");
    assert!(
        console.contains(&format!("target {} (", other.dev)),
        "found by its mark: {console}"
    );
    assert_eq!(
        planned.digest(),
        before,
        "the disk under the planned name was written"
    );
    let raw = std::fs::read(b.path().join("metal.raw")).unwrap();
    let written = other.read_all();
    assert_eq!(written[..MIB as usize], raw[..MIB as usize], "first MiB");
    // Run again in this boot (as after a failure past the first write): the same device is
    // taken although its first MiB is the image's now.
    let (ok, console) = install(&plan_path, &ignition);
    assert!(ok, "{console}");
    assert_eq!(planned.digest(), before);
}

#[test]
fn a_disk_whose_first_mib_changed_after_the_plan_is_not_written() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "a", 56 * MIB);
    let (plan_path, ignition, _) = b.carried_plan(&disk);
    let mut bytes = disk.read_all();
    bytes[4096..4112].copy_from_slice(b"someone was here");
    disk.write_all(&bytes);
    let before = disk.digest();
    let (ok, console) = install(&plan_path, &ignition);
    assert!(!ok, "{console}");
    assert!(
        console.contains("but the planned disk showed no partition table, first MiB sha256")
            && console.contains("nothing was written: the disk is as it was"),
        "{console}"
    );
    assert_eq!(disk.digest(), before);
}

/// Debian's busybox httpd serving `dir` on 127.0.0.1; it answers Range requests as mirrors
/// do. Stopped when dropped.
struct Httpd {
    child: std::process::Child,
    base: String,
}

impl Httpd {
    fn serve(dir: &Path) -> Httpd {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("busybox", "busybox-static"))
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(dir)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "busybox httpd did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Httpd {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ISO of the NestOS live fixture tree, made by xorriso.
fn live_iso(dir: &Path) -> PathBuf {
    let iso = dir.join("nestos-live.iso");
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
        .arg(&iso)
        .arg("tests/fixtures/convert/live/nestos-iso"));
    iso
}

#[test]
fn the_live_iso_path_is_planned_from_the_iso_itself() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let iso = live_iso(b.path());
    let sha = sha256_file(&iso);
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            "--disk",
            &disk.dev,
            "--live",
            iso.to_str().unwrap(),
            "--sha256",
            &sha,
            "--facts-root",
            b.facts.to_str().unwrap(),
        ];
        args.extend(extra);
        x2nestos(&args)
    };
    let out = plan(&["-o", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let live = &report["plan"]["live"];
    assert_eq!(live["entry"], "isolinux/isolinux.cfg", "{text}");
    assert_eq!(live["prefix"], "nestos.");
    assert_eq!(live["kernel"], "images/pxeboot/vmlinuz");
    assert_eq!(
        live["initrds"],
        serde_json::json!([
            "images/pxeboot/initrd.img",
            "images/ignition.img",
            "images/pxeboot/rootfs.img"
        ])
    );
    let args: Vec<&str> = live["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&format!("nestos.inst.install_dev={}", disk.dev).as_str()),
        "{args:?}"
    );
    assert!(args.contains(&"ignition.firstboot"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("nestos.liveiso=")),
        "{args:?}"
    );
    assert_eq!(report["plan"]["image"]["sha256"], sha.as_str());

    // The text plan says what boots and with which arguments.
    let out = plan(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Live image: "), "{text}");
    assert!(
        text.contains("Kernel arguments: mitigations=auto,nosmt ignition.firstboot"),
        "{text}"
    );

    // convert acts only on this machine's facts: refused, the disk unchanged.
    let line = b.refused(&disk, &["--live", iso.to_str().unwrap(), "--sha256", &sha]);
    assert!(line.contains("the facts were read below"), "{line}");

    // The same ISO on a mirror is planned in place, by range requests: the same live plan.
    let served = Httpd::serve(b.path());
    let url = format!("{}/nestos-live.iso", served.base);
    let out = x2nestos(&[
        "plan",
        "--disk",
        &disk.dev,
        "--live",
        &url,
        "--sha256",
        &sha,
        "--facts-root",
        b.facts.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_url: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(from_url["plan"]["live"], report["plan"]["live"], "{text}");
    assert_eq!(from_url["plan"]["image"]["source"], url.as_str());
    assert_eq!(
        from_url["plan"]["image"]["compressedBytes"],
        std::fs::metadata(&iso).unwrap().len()
    );
}

#[test]
fn bad_live_inputs_are_refused_before_anything_changes() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let iso = live_iso(b.path());
    let iso = iso.to_str().unwrap();
    let sha = sha256_file(Path::new(iso));
    let tree = "tests/fixtures/convert/live/nestos-iso";

    let line = b.refused(&disk, &["--live", tree]);
    assert!(
        line.contains("a directory cannot be checked against a published checksum; give the .iso file with --sha256, or pass --insecure"),
        "{line}"
    );
    let line = b.refused(&disk, &["--live", iso, "--sha256", &"0".repeat(64)]);
    assert!(line.contains("checksum mismatch"), "{line}");
    let image = b.image.to_str().unwrap();
    let line = b.refused(&disk, &["--live", image, "--insecure"]);
    assert!(line.contains("not an ISO 9660 image"), "{line}");
    // URLs: nothing listening; a file that is not an ISO; a server that ignores Range (the
    // ISO cannot be read in place).
    let line = b.refused(
        &disk,
        &["--live", "http://127.0.0.1:9/live.iso", "--sha256", &sha],
    );
    assert!(
        line.contains("GET http://127.0.0.1:9/live.iso: ")
            && line.contains("check the address and that the server is reachable"),
        "{line}"
    );
    let served = Httpd::serve(b.image.parent().unwrap());
    let metal = format!(
        "{}/{}",
        served.base,
        b.image.file_name().unwrap().to_str().unwrap()
    );
    let line = b.refused(&disk, &["--live", &metal, "--insecure"]);
    assert!(
        line.contains(&format!("live image {metal}: not an ISO 9660 image")),
        "{line}"
    );
    let whole = std::fs::read(iso).unwrap();
    let base = serve(move |_, conn| {
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            whole.len()
        );
        let _ = conn.write_all(&whole);
    });
    let line = b.refused(
        &disk,
        &["--live", &format!("{base}/live.iso"), "--sha256", &sha],
    );
    assert!(
        line.contains("the server does not answer range requests (206 with Content-Range), which reading the image in place needs; download it and give its path"),
        "{line}"
    );
    // A live tree whose entry has no <prefix>.liveiso= argument.
    let plain = b.path().join("no-prefix");
    run(Command::new("cp").args(["-r", tree]).arg(&plain));
    let cfg = plain.join("isolinux/isolinux.cfg");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("nestos.liveiso=NestOS-For-Container-22.03 ", "");
    std::fs::write(&cfg, text).unwrap();
    let line = b.refused(&disk, &["--live", plain.to_str().unwrap(), "--insecure"]);
    assert!(
        line.contains("no <prefix>.liveiso= kernel argument"),
        "{line}"
    );
    // --live and --stream, --live and --image: refused by the command line itself.
    for extra in [
        vec!["--live", iso, "--sha256", &sha, "--stream"],
        vec!["--live", iso, "--sha256", &sha, "--image", image],
    ] {
        let mut args = vec!["convert", "--yes", "--disk", &disk.dev];
        args.extend(extra.iter().copied());
        let out = x2nestos(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("cannot be used with"),
            "{stderr}"
        );
    }
}

/// The first KiB of an EFI-stub kernel: a PE32+ header whose security directory holds
/// `cert_size` bytes of signature.
fn pe_kernel(cert_size: u32) -> Vec<u8> {
    let mut h = vec![0u8; 1024];
    h[..2].copy_from_slice(b"MZ");
    h[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    h[0x80..0x84].copy_from_slice(b"PE\0\0");
    let optional = 0x80 + 24;
    h[optional..optional + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    h[optional + 108..optional + 112].copy_from_slice(&6u32.to_le_bytes());
    let security = optional + 112 + 4 * 8;
    h[security + 4..security + 8].copy_from_slice(&cert_size.to_le_bytes());
    h
}

#[test]
fn a_live_kernel_under_lockdown_must_carry_a_signature() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let locked = facts_with(
        &b,
        "locked",
        "sys/kernel/security/lockdown",
        "none [integrity] confidentiality\n",
    );
    let tree = |name: &str, kernel: &[u8]| {
        let dir = b.path().join(name);
        run(Command::new("cp")
            .args(["-r", "tests/fixtures/convert/live/nestos-iso"])
            .arg(&dir));
        std::fs::write(dir.join("images/pxeboot/vmlinuz"), kernel).unwrap();
        dir
    };
    let unsigned = tree("unsigned", &pe_kernel(0));
    let line = b.refused(
        &disk,
        &[
            "--live",
            unsigned.to_str().unwrap(),
            "--insecure",
            "--facts-root",
            locked.to_str().unwrap(),
        ],
    );
    assert!(
        line.contains("nothing was changed: kernel lockdown (integrity) lets kexec load only signed kernels, and the live image's kernel carries no signature; convert without --live"),
        "{line}"
    );
    // A signed kernel is planned, with the warning that its signer must be trusted.
    let signed = tree("signed", &pe_kernel(1472));
    let out = x2nestos(&[
        "plan",
        "--disk",
        &disk.dev,
        "--live",
        signed.to_str().unwrap(),
        "--insecure",
        "--facts-root",
        locked.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        report["plan"]["live"]["kernelSignature"], "signed",
        "{text}"
    );
    let lockdown = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "lockdown")
        .unwrap_or_else(|| panic!("no lockdown finding: {text}"));
    assert_eq!(lockdown["severity"], "warning", "{text}");
    assert!(
        lockdown["message"]
            .as_str()
            .unwrap()
            .contains("only if this kernel trusts the key it was signed with"),
        "{text}"
    );
    // Without lockdown the same unsigned kernel is no obstacle.
    let out = x2nestos(&[
        "plan",
        "--disk",
        &disk.dev,
        "--live",
        unsigned.to_str().unwrap(),
        "--insecure",
        "--facts-root",
        b.facts.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A 64 MiB loop device with a GPT: partition 1 `old-root` (1–47 MiB) and 2 `data`
/// (`data_at` MiB to 63 MiB, ext4 with a file on it).
fn disk_with_data(b: &Bench, data_at: u64) -> Loop {
    let disk = Loop::new(b.path(), "kept", 64 * MIB);
    let data_start = data_at * MIB / 512;
    let data_sectors = (63 - data_at) * MIB / 512;
    let old_root = (data_at - 2) * MIB / 512;
    let mut sfdisk = Command::new(tool("sfdisk", "fdisk"))
        .args(["-q", "--no-reread", "--no-tell-kernel", &disk.dev])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    write!(
        sfdisk.stdin.take().unwrap(),
        "label: gpt\nstart=2048, size={old_root}, name=old-root\nstart={data_start}, size={data_sectors}, name=data\n"
    )
    .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let tree = b.path().join("data-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("keep-me"), "the admin's data\n").unwrap();
    run(Command::new(tool("mkfs.ext4", "e2fsprogs"))
        .args(["-q", "-F", "-L", "data", "-d"])
        .arg(&tree)
        .args(["-E", &format!("offset={}", data_at * MIB)])
        .arg(&disk.dev)
        .arg(format!("{}k", (63 - data_at) * 1024)));
    disk
}

/// SHA-256 of `len` bytes of `dev` from `offset`.
fn range_digest(dev: &str, offset: u64, len: u64) -> String {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; len as usize];
    std::fs::File::open(dev)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    hex::encode(Sha256::digest(&buf))
}

/// `sfdisk --json` of `dev`: each partition's (name, start, size), and what sfdisk said on
/// stderr (it names a corrupt primary or backup table there).
fn partitions(dev: &str) -> (Vec<(String, u64, u64)>, String) {
    let out = run(Command::new(tool("sfdisk", "fdisk")).args(["--json", dev]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
            )
        })
        .collect();
    (parts, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn install_plan(b: &Bench, plan: &serde_json::Value) -> Output {
    let plan_path = b.path().join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let ignition = b.path().join("config.ign");
    std::fs::write(&ignition, r#"{"ignition":{"version":"3.3.0"}}"#).unwrap();
    x2nestos(&[
        "install",
        "--plan",
        plan_path.to_str().unwrap(),
        "--ignition",
        ignition.to_str().unwrap(),
        "--no-reboot",
    ])
}

#[test]
fn install_keeps_a_partition_saved_by_label() {
    let b = Bench::new();
    let disk = disk_with_data(&b, 48);
    let data = (48 * MIB, 15 * MIB);
    let before = range_digest(&disk.dev, data.0, data.1);
    let out = x2nestos(&[
        "plan",
        "-o",
        "json",
        "--disk",
        &disk.dev,
        "--image",
        b.image.to_str().unwrap(),
        "--sha256",
        &b.sha,
        "--facts-root",
        b.facts.to_str().unwrap(),
        "--save-partlabel",
        "da*",
        "--save-partindex",
        "9",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["kept"],
        serde_json::json!(["partition 2 \"data\" (15 MiB, ext4)"])
    );
    // A filter that names nothing is warned about, not ignored.
    let name = disk.dev.trim_start_matches("/dev/");
    assert!(
        report["findings"].as_array().unwrap().iter().any(|f| f["message"]
            == format!("--save-partindex 9 matches no partition on /dev/{name}; nothing is kept for it")),
        "{report}"
    );
    let mut plan = report["plan"].clone();
    assert_eq!(plan["saved"][0]["label"], "data");
    assert_eq!(plan["saved"][0]["firstLba"], 48 * MIB / 512);
    plan["image"]["carried"] = b.image.display().to_string().into();

    let out = install_plan(&b, &plan);
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{console}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        console.contains("kept partition 2 is partition 3 of the new table"),
        "{console}"
    );
    // The data partition's bytes are as they were.
    assert_eq!(range_digest(&disk.dev, data.0, data.1), before);
    // The table: the image's partitions, then the kept one where it was; both tables valid.
    let (parts, stderr) = partitions(&disk.dev);
    assert_eq!(
        parts,
        vec![
            ("boot".to_owned(), 2048, 16 * MIB / 512),
            ("root".to_owned(), 34816, 22 * MIB / 512),
            ("data".to_owned(), 48 * MIB / 512, 15 * MIB / 512),
        ]
    );
    assert!(
        !stderr.to_lowercase().contains("corrupt") && !stderr.contains("GPT"),
        "sfdisk: {stderr}"
    );
    // The image's root partition is on the disk byte for byte.
    let raw = std::fs::read(b.path().join("metal.raw")).unwrap();
    assert_eq!(
        range_digest(&disk.dev, 17 * MIB, 22 * MIB),
        hex::encode(Sha256::digest(&raw[17 * MIB as usize..39 * MIB as usize]))
    );
}

#[test]
fn a_saved_partition_the_image_would_overwrite_is_refused() {
    let b = Bench::new();
    let disk = disk_with_data(&b, 48);
    // Partition 1 lies where the image goes: refused, the disk unchanged.
    let line = b.refused(&disk, &["--save-partindex", "1"]);
    assert_eq!(
        line,
        "x2nestos: error: nothing was changed: saved partition 1 \"old-root\" lies in the first 41943040 bytes, which the image writes; it would be overwritten: move the data off it or use a smaller image"
    );
    // A disk without a GPT: nothing to keep from.
    let plain = Loop::new(b.path(), "plain", 64 * MIB);
    let line = b.refused(&plain, &["--save-partlabel", "data"]);
    let name = plain.dev.trim_start_matches("/dev/");
    assert_eq!(
        line,
        format!("x2nestos: error: nothing was changed: partitions can only be kept from a GPT disk, and /dev/{name} has no GPT; drop --save-partlabel/--save-partindex")
    );
}

#[test]
fn install_stops_before_a_kept_partition_when_the_image_size_was_unknown() {
    let b = Bench::new();
    // Data from 20 MiB: inside the 40 MiB image, which a plan that did not know the image's
    // size lets through; the installer must stop before it.
    let disk = disk_with_data(&b, 20);
    let data = (20 * MIB, 43 * MIB);
    let before = range_digest(&disk.dev, data.0, data.1);
    let out = x2nestos(&[
        "plan",
        "-o",
        "json",
        "--disk",
        &disk.dev,
        "--image",
        b.image.to_str().unwrap(),
        "--sha256",
        &b.sha,
        "--facts-root",
        b.facts.to_str().unwrap(),
        "--save-partlabel",
        "data",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["blocked"], true, "{report}");
    // As a plan whose image's size was unknown would carry it.
    let name = disk.dev.trim_start_matches("/dev/");
    let (parts, _) = partitions(&disk.dev);
    let plan = serde_json::json!({
        "apiVersion": "x2nestos.housekeeper.io/v1",
        "kind": "Plan",
        "disk": { "named": disk.dev, "name": name, "byId": [], "serial": null,
                  "sizeBytes": 64 * MIB, "sectorSize": 512 },
        "image": { "source": b.image, "sha256": b.sha, "compressedBytes": null,
                   "imageBytes": null, "carry": "inMemory", "carried": b.image },
        "network": [],
        "saved": [{ "number": 2, "label": "data", "firstLba": parts[1].1,
                    "lastLba": parts[1].1 + parts[1].2 - 1,
                    "uniqueGuid": report["plan"]["saved"][0]["uniqueGuid"],
                    "sizeBytes": data.1 }]
    });
    assert!(plan["saved"][0]["uniqueGuid"].is_string(), "{report}");
    let out = install_plan(&b, &plan);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{console}");
    assert!(
        console.contains(&format!(
            "into a kept partition that starts at byte {}; the kept partition was not written",
            20 * MIB
        )),
        "{console}"
    );
    assert_eq!(range_digest(&disk.dev, data.0, data.1), before);
}

/// A stream metadata document in Fedora CoreOS's format (as its published sample lays it
/// out), naming `image` (served at `base`) with `sha` for `arch`.
fn stream_document(base: &str, arch: &str, release: &str, sha: &str) -> String {
    serde_json::json!({
        "stream": "stable",
        "metadata": { "last-modified": "2026-12-01T00:00:00Z",
                      "generator": "fedora-coreos-stream-generator v0.1.0" },
        "architectures": { arch: { "artifacts": {
            "qemu": { "release": release, "formats": { "qcow2.xz": { "disk": {
                "location": format!("{base}/qemu.qcow2.xz"), "sha256": sha } } } },
            "metal": { "release": release, "formats": {
                "raw.xz": { "disk": {
                    "location": format!("{base}/builds/{release}/metal.raw.xz"),
                    "sha256": sha, "uncompressed-sha256": sha } },
                "4k.raw.xz": { "disk": {
                    "location": format!("{base}/builds/{release}/metal4k.raw.xz"),
                    "sha256": sha } },
                "iso": { "disk": { "location": format!("{base}/live.iso"), "sha256": sha } }
            } }
        } } }
    })
    .to_string()
}

#[test]
fn the_image_is_picked_from_a_stream_and_verified() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    let mirror = b.path().join("mirror");
    std::fs::create_dir_all(mirror.join("streams")).unwrap();
    std::fs::create_dir_all(mirror.join("builds/41.1")).unwrap();
    std::fs::copy(&b.image, mirror.join("builds/41.1/metal.raw.xz")).unwrap();
    let httpd = Httpd::serve(&mirror);
    let base = httpd.base.clone();
    let put = |name: &str, text: &str| {
        std::fs::write(mirror.join("streams").join(name), text).unwrap();
    };
    put(
        "stable.json",
        &stream_document(&base, "x86_64", "41.1", &b.sha),
    );

    // The x86_64 raw.xz build, its sha256 from the document; the plan says why.
    let out = x2nestos(&[
        "plan",
        "-o",
        "json",
        "--disk",
        &disk.dev,
        "--stream-name",
        "stable",
        "--stream-base-url",
        &base,
        "--facts-root",
        b.facts.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = &report["plan"];
    assert_eq!(
        plan["image"]["source"],
        format!("{base}/builds/41.1/metal.raw.xz")
    );
    assert_eq!(plan["image"]["sha256"], b.sha);
    assert_eq!(
        report["notes"][0],
        "stream stable: release 41.1 for x86_64, metal raw.xz (the disk has 512-byte sectors), the stream's latest (no --version given)"
    );
    // Asked for by version: the same build.
    let out = x2nestos(&[
        "plan",
        "-o",
        "json",
        "--disk",
        &disk.dev,
        "--stream-name",
        "stable",
        "--stream-base-url",
        &base,
        "--version",
        "41.1",
        "--facts-root",
        b.facts.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stream = |name: &str| -> Vec<String> {
        vec![
            "--stream-name".into(),
            name.into(),
            "--stream-base-url".into(),
            base.clone(),
        ]
    };
    let refused = |extra: Vec<String>| {
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        b.refused(&disk, &refs)
    };
    // A version the stream does not offer.
    let mut args = stream("stable");
    args.extend(["--version".into(), "40.9".into()]);
    assert_eq!(
        refused(args),
        "x2nestos: error: nothing was changed: --version 40.9 is not in stream stable, which offers 41.1 for x86_64; give --version 41.1, or --image with that build's URL"
    );
    // A stream without this machine's architecture.
    put(
        "arm.json",
        &stream_document(&base, "aarch64", "41.1", &b.sha),
    );
    assert_eq!(
        refused(stream("arm")),
        "x2nestos: error: nothing was changed: stream stable has no x86_64 build (it has aarch64); this machine is x86_64"
    );
    // A document that does not parse.
    put(
        "broken.json",
        "{\"stream\": \"stable\", \"architectures\": {",
    );
    let line = refused(stream("broken"));
    assert!(
        line.starts_with(&format!(
            "x2nestos: error: nothing was changed: the stream document {base}/streams/broken.json does not parse: "
        )),
        "{line}"
    );
    // A stream that is not there.
    let line = refused(stream("missing"));
    assert!(
        line.contains(&format!(
            "fetching stream missing: GET {base}/streams/missing.json: the server answered 404"
        )),
        "{line}"
    );
    // A document whose checksum does not match the image: the plan carries the document's
    // sha256, and the installer refuses the image before writing a byte.
    let wrong = "0".repeat(64);
    put(
        "wrong.json",
        &stream_document(&base, "x86_64", "41.1", &wrong),
    );
    let out = x2nestos(&[
        "plan",
        "-o",
        "json",
        "--disk",
        &disk.dev,
        "--stream-name",
        "wrong",
        "--stream-base-url",
        &base,
        "--facts-root",
        b.facts.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut plan = report["plan"].clone();
    assert_eq!(plan["image"]["sha256"], wrong);
    plan["image"]["carried"] = b.image.display().to_string().into();
    let before = disk.digest();
    let out = install_plan(&b, &plan);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{console}");
    assert!(
        console.contains(&format!(
            "image checksum mismatch: expected sha256 {wrong}, got {}",
            b.sha
        )) && console.contains("nothing was written: the disk is as it was"),
        "{console}"
    );
    assert_eq!(disk.digest(), before);
}

/// Reads `rel` from the boot partition (1 MiB, 16 MiB long) of `dev`.
fn boot_file(b: &Bench, dev: &str, rel: &str) -> String {
    let boot = run(Command::new(tool("losetup", "mount"))
        .args([
            "--find",
            "--show",
            "--read-only",
            "--offset",
            &MIB.to_string(),
        ])
        .args(["--sizelimit", &(16 * MIB).to_string()])
        .arg(dev));
    let boot = String::from_utf8(boot.stdout).unwrap().trim().to_owned();
    let mnt = b.path().join("boot-read");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", "ro"])
        .arg(&boot)
        .arg(&mnt));
    let text = std::fs::read_to_string(mnt.join(rel));
    run(Command::new("umount").arg(&mnt));
    run(Command::new("losetup").args(["--detach", &boot]));
    text.unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn install_applies_kernel_arguments_and_the_console_to_the_boot_entry() {
    let b = Bench::new();
    let disk = Loop::new(b.path(), "disk", 64 * MIB);
    // This machine's console, as /proc/cmdline says it.
    let facts = b.path().join("facts-console");
    run(Command::new("cp").arg("-a").arg(&b.facts).arg(&facts));
    std::fs::remove_file(facts.join("proc/cmdline")).unwrap();
    std::fs::write(
        facts.join("proc/cmdline"),
        "BOOT_IMAGE=/vmlinuz root=/dev/sda2 console=tty0 console=ttyS1,57600n8 quiet\n",
    )
    .unwrap();
    let plan = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "plan",
            "-o",
            "json",
            "--disk",
            &disk.dev,
            "--image",
            b.image.to_str().unwrap(),
            "--sha256",
            &b.sha,
            "--facts-root",
            facts.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = x2nestos(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // By default the running machine's consoles are carried.
    let report = plan(&["--append-karg", "hk.test=1", "--delete-karg", "mitigations"]);
    assert!(
        report["notes"].as_array().unwrap().iter().any(|n| n
            == "kernel arguments of the new system: console tty0, ttyS1,57600n8 (this machine's, carried); appended hk.test=1; deleted mitigations"),
        "{report}"
    );
    let mut p = report["plan"].clone();
    p["image"]["carried"] = b.image.display().to_string().into();
    let out = install_plan(&b, &p);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let entry = boot_file(&b, &disk.dev, "loader/entries/ostree-1-nestos.conf");
    assert_eq!(
        entry,
        BLS_ENTRY.replace(
            "options mitigations=auto,nosmt ignition.platform.id=metal $ignition_firstboot ostree=/ostree/boot.1/nestos/1/0",
            "options ignition.platform.id=metal $ignition_firstboot ostree=/ostree/boot.1/nestos/1/0 console=tty0 console=ttyS1,57600n8 hk.test=1",
        )
    );

    // --console replaces the carried consoles.
    let report = plan(&["--console", "ttyS0,115200n8"]);
    let mut p = report["plan"].clone();
    assert_eq!(p["kargs"]["console"], serde_json::json!(["ttyS0,115200n8"]));
    p["image"]["carried"] = b.image.display().to_string().into();
    let out = install_plan(&b, &p);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let entry = boot_file(&b, &disk.dev, "loader/entries/ostree-1-nestos.conf");
    let options = entry.lines().find(|l| l.starts_with("options ")).unwrap();
    assert!(options.ends_with(" console=ttyS0,115200n8"), "{options}");
    assert!(
        !options.contains("ttyS1") && !options.contains("tty0 "),
        "{options}"
    );
    assert!(options.contains("mitigations=auto,nosmt"), "{options}");

    // A bad argument is refused by the command line, before anything.
    let out = x2nestos(&[
        "plan",
        "--disk",
        &disk.dev,
        "--image",
        "/x",
        "--append-karg",
        "a b",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("kernel argument \"a b\" is empty or holds white space or quotes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
