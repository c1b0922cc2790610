//! x2nestos on real machines: the generic Debian VM converts itself to testos (the NestOS
//! stand-in) through kexec, carrying its identity over (root's and a named user's keys);
//! the image carried in memory with an orderly `systemctl kexec`, or streamed over the
//! network with the raw reboot syscall (`--force`); a corrupted image refused before anything
//! changes, and `--dry-run` loading the conversion kernel — and, on the live ISO path, the
//! live kernel with its initramfs, root filesystem and overlay — then unloading it; then the
//! live path's jump for real, into a live-system stand-in that shows what NestOS's installer
//! would be given.
//!
//! x2nestos runs in the guest as an admin would run it: copied in, then
//! `x2nestos convert --image http://10.0.2.2:PORT/metal.raw.xz --sha256 … --disk /dev/vda --yes`.
//! It is the release build (`cargo build --release --bin x2nestos`; `X2NESTOS_BIN` names
//! another), since the guest's emulated CPU hashes and decompresses a 1.2 GiB image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::bench::cmd::run;
use crate::bench::http::{HttpServer, Mirror};
use crate::bench::images::{self, Generic, Testos};
use crate::bench::qemu::{Machine, MachineConfig};
use crate::bench::{scenario, Scenario, BOOT_TIMEOUT};

/// The generic machine's whole run: boot, convert (download, dracut, kexec), install (verify,
/// decompress and write 1.2 GiB under emulation), reboot.
const CONVERSION_RUN: Duration = Duration::from_secs(1500);
const SHUTDOWN: Duration = Duration::from_secs(120);

/// hkd's configuration on the converted machine, given through the admin's Ignition config
/// that x2nestos merges with the carried identity.
const HKD_CONFIG: &str = "[os]\nallow_unverified_images = true\n";

fn x2nestos_binary(s: &Scenario) -> Result<PathBuf> {
    let built = std::env::var_os("X2NESTOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| images::repo_dir().join("target/release/x2nestos"));
    if !built.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin x2nestos` (tools/test-all.sh does), or name one in X2NESTOS_BIN",
            built.display()
        );
    }
    let stripped = s.dir.join("x2nestos");
    run(Command::new("strip").arg("-o").arg(&stripped).arg(&built))?;
    Ok(stripped)
}

/// Boots the generic machine with a deadline long enough for a whole conversion.
fn boot_generic(s: &Scenario, g: &Generic, disk: &Path, machine: &str) -> Result<Machine> {
    let cfg = MachineConfig {
        name: machine.to_string(),
        kernel: g.kernel.clone(),
        initrd: g.initrd.clone(),
        cmdline: g.cmdline.clone(),
        disk: disk.to_path_buf(),
        extra_disks: Vec::new(),
        timeout: CONVERSION_RUN,
    };
    s.progress(&format!("booting {machine} (generic)"));
    let mut vm = Machine::start(&cfg, &s.dir, &g.keys_dir)?;
    vm.wait_mark("ready", BOOT_TIMEOUT)?;
    Ok(vm)
}

/// Copies x2nestos into the guest over SSH.
fn install_x2nestos(vm: &Machine, g: &Generic, binary: &Path) -> Result<()> {
    copy_in(vm, g, binary, "/usr/local/bin/x2nestos", "755")
}

/// Copies a host file into the guest over SSH, with `mode`.
fn copy_in(vm: &Machine, g: &Generic, path: &Path, guest: &str, mode: &str) -> Result<()> {
    let file = std::fs::File::open(path)?;
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(g.keys_dir.join("root"))
        .args(["-p", &vm.ssh_port().to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("root@127.0.0.1")
        .arg(format!("cat >{guest} && chmod {mode} {guest}"))
        .stdin(Stdio::from(file))
        .output()
        .with_context(|| format!("copying {} into the guest", path.display()))?;
    ensure!(
        out.status.success(),
        "copying {} into the guest failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn sha256_of(t: &Testos) -> Result<String> {
    let text = std::fs::read_to_string(&t.metal_sha256)?;
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

fn data_url(text: &str) -> String {
    let mut out = String::from("data:,");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn admin_ignition(s: &Scenario) -> Result<PathBuf> {
    let cfg = serde_json::json!({
        "ignition": { "version": "3.3.0" },
        "storage": { "files": [
            { "path": "/etc/hkd/config.d/50-vm.toml", "mode": 420,
              "contents": { "source": data_url(HKD_CONFIG) } }
        ] }
    });
    let path = s.dir.join("admin.ign");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
    Ok(path)
}

/// Copies a host file into the guest (small files) through `cat`.
fn put_file(vm: &Machine, path: &Path, guest: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    vm.sh(&format!(
        "cat >{guest} <<'X2NESTOS_EOF'\n{text}\nX2NESTOS_EOF"
    ))?;
    Ok(())
}

/// Starts `x2nestos convert` as a transient unit whose output goes to the serial console;
/// a failure leaves the scenario's own marker.
fn start_convert(vm: &Machine, args: &str) -> Result<()> {
    vm.sh(&format!(
        "systemd-run --unit=x2nestos-convert -p StandardOutput=file:/dev/ttyS0 -p StandardError=file:/dev/ttyS0 \
         /bin/sh -c '/usr/local/bin/x2nestos convert {args} || echo HK-MARK:convert-failed'"
    ))?;
    Ok(())
}

/// Converts a fresh generic machine with `extra` arguments (also planned) and `jump` (convert
/// only); returns the disk and the generic machine's serial log. The admin's login keys are
/// carried besides root's (`--user admin`).
fn convert(
    s: &Scenario,
    g: &Generic,
    t: &Testos,
    extra: &str,
    jump: &str,
) -> Result<(PathBuf, String)> {
    let extra = &format!("--user admin {extra}");
    let binary = x2nestos_binary(s)?;
    let server = HttpServer::serve(&t.dir)?;
    let url = server.guest_url("metal.raw.xz");
    let sha = sha256_of(t)?;
    let disk = s.overlay(&g.disk, "machine")?;
    let mut vm = boot_generic(s, g, &disk, "generic")?;
    install_x2nestos(&vm, g, &binary)?;
    put_file(&vm, &admin_ignition(s)?, "/root/admin.ign")?;

    let plan = vm.sh(&format!(
        "x2nestos plan --disk /dev/vda --image {url} --sha256 {sha} {extra} -o json"
    ))?;
    let report: serde_json::Value =
        serde_json::from_str(&plan).with_context(|| format!("plan -o json printed {plan:?}"))?;
    ensure!(report["blocked"] == false, "the plan is blocked: {plan}");
    ensure!(report["plan"]["disk"]["name"] == "vda", "{plan}");
    s.progress(&format!(
        "plan: carry {}, destroyed {}, carried over {}",
        report["plan"]["image"]["carry"], report["destroyed"], report["carriedOver"]
    ));

    start_convert(
        &vm,
        &format!(
            "--disk /dev/vda --image {url} --sha256 {sha} --yes --ignition /root/admin.ign {extra} {jump}"
        ),
    )?;
    s.progress("x2nestos convert started; waiting for the installer to write and reboot");
    vm.wait_exit(CONVERSION_RUN)?;
    let serial = std::fs::read_to_string(vm.serial_log())?;
    ensure!(
        serial.contains("x2nestos: NestOS is written"),
        "the installer did not finish; serial log {}:\n{}",
        vm.serial_log().display(),
        vm.tail(40)
    );
    drop(server);
    Ok((disk, serial))
}

/// The converted machine: the original root and admin keys log in, the same host name and
/// address, the `command=`-restricted key stripped, hkd running, the install log on the disk.
fn check_converted(s: &Scenario, t: &Testos, disk: &Path) -> Result<Machine> {
    let mut vm = s.boot_testos(t, disk, "converted")?;
    vm.wait_mark("ignition-applied", BOOT_TIMEOUT)?;
    vm.wait_mark("ready", BOOT_TIMEOUT)?;
    let host = vm.sh("hostname")?;
    ensure!(
        host.trim() == "generic-vm",
        "host name {host:?}, want generic-vm"
    );
    vm.sh("test -e /run/ostree-booted")?;
    let restricted = vm.ssh_output("root", "restricted", "echo shell")?;
    ensure!(
        String::from_utf8_lossy(&restricted.stdout).trim() == "shell",
        "the command= key was not stripped: {:?}",
        String::from_utf8_lossy(&restricted.stdout)
    );
    let admin = vm.ssh_output("admin", "admin", "id -un; echo $HOME")?;
    ensure!(
        String::from_utf8_lossy(&admin.stdout) == "admin\n/home/admin\n",
        "the admin's key was not carried: {:?} {:?}",
        String::from_utf8_lossy(&admin.stdout),
        String::from_utf8_lossy(&admin.stderr)
    );
    let address = vm.sh("ip -4 -o addr show dev eth0")?;
    ensure!(address.contains("10.0.2.15/"), "eth0: {address}");
    let active = vm.sh("systemctl is-active hkd || true")?;
    ensure!(
        active.trim() == "active",
        "hkd.service is {active:?}: {}",
        vm.sh("journalctl -u hkd --no-pager | tail -20")
            .unwrap_or_default()
    );
    let log = vm.sh("cat /boot/x2nestos/install.log")?;
    ensure!(
        log.contains("is the planned disk") && log.contains(", verified"),
        "install log:\n{log}"
    );
    s.progress(&format!("install log on the new disk:\n{log}"));
    let mode = vm.sh("stat -c %a /boot/ignition/config.ign")?;
    ensure!(mode.trim() == "600", "config.ign mode {mode}");
    Ok(vm)
}

#[test]
fn generic_converts_to_testos_carrying_its_identity() -> Result<()> {
    scenario("convert-in-memory", |s: &Scenario| {
        let (g, t) = (images::generic()?, images::testos()?);
        let (disk, serial) = convert(s, g, t, "", "")?;
        ensure!(
            serial.contains("x2nestos: carried image verified"),
            "the carried image was not verified before writing"
        );
        ensure!(
            serial.contains("Jumping through `systemctl kexec`"),
            "not an orderly jump"
        );
        let mut vm = check_converted(s, t, &disk)?;
        vm.shutdown_with("systemctl poweroff", SHUTDOWN)
    })
}

#[test]
fn generic_converts_with_the_image_streamed() -> Result<()> {
    scenario("convert-streamed", |s: &Scenario| {
        let (g, t) = (images::generic()?, images::testos()?);
        // The raw reboot syscall (--force) instead of `systemctl kexec`.
        let (disk, serial) = convert(s, g, t, "--stream", "--force")?;
        ensure!(
            serial.contains("Jumping with the reboot syscall (--force)"),
            "--force did not jump with the reboot syscall"
        );
        ensure!(
            serial.contains("x2nestos: network: eth0")
                && serial.contains("x2nestos: streaming http://"),
            "the installer did not stream the image over the carried network"
        );
        let mut vm = check_converted(s, t, &disk)?;
        vm.shutdown_with("systemctl poweroff", SHUTDOWN)
    })
}

#[test]
fn generic_refuses_a_corrupted_image_dry_runs_and_boots_again() -> Result<()> {
    scenario("convert-corrupted", |s: &Scenario| {
        let (g, t) = (images::generic()?, images::testos()?);
        let binary = x2nestos_binary(s)?;
        let served = s.dir.join("served");
        std::fs::create_dir_all(&served)?;
        let mut image = std::fs::read(&t.metal_xz)?;
        let middle = image.len() / 2;
        image[middle] ^= 0x55;
        std::fs::write(served.join("metal.raw.xz"), &image)?;
        drop(image);
        std::fs::copy(&t.metal_xz, served.join("good.raw.xz"))?;
        let server = HttpServer::serve(&served)?;
        let url = server.guest_url("metal.raw.xz");
        let sha = sha256_of(t)?;
        let disk = s.overlay(&g.disk, "machine")?;
        let mut vm = boot_generic(s, g, &disk, "generic")?;
        install_x2nestos(&vm, g, &binary)?;
        let fingerprint = "dd if=/dev/vda bs=1M count=1 status=none | sha256sum; \
                           dd if=/dev/vda bs=1M skip=$(($(blockdev --getsize64 /dev/vda) / 1048576 - 1)) status=none | sha256sum";
        let before = vm.sh(fingerprint)?;
        let good = server.guest_url("good.raw.xz");

        // The disk holding the running system is the one to replace: planned, and shown.
        let plan = vm.sh(&format!(
            "x2nestos plan --disk /dev/vda --image {good} --sha256 {sha} -o json"
        ))?;
        let report: serde_json::Value = serde_json::from_str(&plan)?;
        ensure!(report["blocked"] == false, "{plan}");
        ensure!(
            report["destroyed"]
                .as_array()
                .is_some_and(|d| d.iter().any(|l| l == "vda1 mounted on / (ext4)")),
            "the running root is not shown as destroyed: {plan}"
        );
        // Without --yes and without a terminal to ask on: refused before anything is done.
        let out = vm.ssh_output(
            "root",
            "root",
            &format!("x2nestos convert --disk /dev/vda --image {good} --sha256 {sha} </dev/null"),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success()
                && stderr.contains(
                    "erasing /dev/vda needs a confirmation; run on a terminal, or pass --yes"
                ),
            "convert without --yes: {stderr}"
        );
        ensure!(vm.sh("test ! -e /var/tmp/x2nestos && echo none")?.trim() == "none");

        for extra in ["", "--stream"] {
            let out = vm.ssh_output(
                "root",
                "root",
                &format!(
                    "x2nestos convert --disk /dev/vda --image {url} --sha256 {sha} --yes {extra}"
                ),
            )?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success(),
                "convert {extra} accepted a corrupted image"
            );
            ensure!(
                stderr.contains("image checksum mismatch")
                    && stderr.contains("nothing was changed"),
                "convert {extra}: {stderr}"
            );
            s.progress(&format!("convert {extra} refused: {}", stderr.trim()));
        }
        ensure!(
            vm.sh("cat /sys/kernel/kexec_loaded")?.trim() == "0",
            "a kernel is loaded"
        );
        ensure!(vm.sh(fingerprint)? == before, "the disk changed");

        // --dry-run: everything up to the kexec load, then unloaded; no kernel stays loaded,
        // the work directory is gone and the disk is unchanged.
        let dry_run = |args: &str, loaded: &str, kernel: &str| -> Result<String> {
            let out = vm.sh(&format!(
                "x2nestos convert --disk /dev/vda {args} --dry-run 2>&1"
            ))?;
            ensure!(
                out.contains(loaded)
                    && out.contains(&format!("Dry run: the {kernel} was loaded and unloaded")),
                "dry run {args}: {out}"
            );
            ensure!(
                vm.sh("cat /sys/kernel/kexec_loaded")?.trim() == "0",
                "still loaded after --dry-run {args}"
            );
            ensure!(
                vm.sh("test ! -e /var/tmp/x2nestos && echo gone")?.trim() == "gone",
                "work dir left by --dry-run {args}"
            );
            ensure!(
                vm.sh(fingerprint)? == before,
                "the disk changed in the dry run {args}"
            );
            Ok(out)
        };
        dry_run(
            &format!("--image {good} --sha256 {sha} --stream"),
            "with kexec_file_load",
            "conversion kernel",
        )?;
        s.progress("--dry-run: loaded with kexec_file_load and unloaded");

        // The live ISO path, as far as the kexec load: an ISO laid out as a NestOS live ISO
        // around this machine's kernel (its bzImage, which kexec_file_load takes) and a live
        // system stand-in.
        let iso = live_iso(s, &vm)?;
        let iso_sha = hex_sha256(&iso)?;
        copy_in(&vm, g, &iso, "/root/live.iso", "644")?;
        let plan = vm.sh(&format!(
            "x2nestos plan --disk /dev/vda --live /root/live.iso --sha256 {iso_sha} -o json"
        ))?;
        let report: serde_json::Value = serde_json::from_str(&plan)?;
        ensure!(report["blocked"] == false, "{plan}");
        let args = report["plan"]["live"]["args"].to_string();
        ensure!(
            args.contains("nestos.inst.install_dev=/dev/")
                && args.contains("console=ttyS0")
                && !args.contains("liveiso"),
            "live kernel arguments: {args}"
        );
        let out = dry_run(
            &format!("--live /root/live.iso --sha256 {iso_sha}"),
            "from the live image with kexec_file_load",
            "NestOS live kernel",
        )?;
        s.progress(&format!("live ISO --dry-run: {}", out.trim()));
        vm.shutdown_with("systemctl reboot", SHUTDOWN)?;
        let mut vm = boot_generic(s, g, &disk, "generic-again")?;
        ensure!(vm.sh("hostname")?.trim() == "generic-vm");
        s.progress("the old system boots again");
        drop(server);

        // The live path's jump for real, the ISO taken from a mirror (planned by range
        // requests, then downloaded and verified; the guest's own copy is gone): the live
        // kernel boots with the entry's initramfs, the root filesystem part and x2nestos's
        // overlay; the live-system stand-in shows what NestOS's installer would be given, then
        // powers off.
        let mirror = Mirror::serve(iso.parent().context("the ISO's directory")?)?;
        let iso_url = mirror.guest_url(
            iso.file_name()
                .and_then(|n| n.to_str())
                .context("the ISO's name")?,
        );
        vm.sh("rm /root/live.iso")?;
        // A work directory too small for the ISO: refused before the download.
        let out = vm.sh(&format!(
            "mkdir -p /run/small && mount -t tmpfs -o size=1m tmpfs /run/small && \
             x2nestos convert --disk /dev/vda --live {iso_url} --sha256 {iso_sha} --workdir /run/small/w --yes 2>&1; \
             echo exit=$?"
        ))?;
        ensure!(
            out.contains("nothing was changed: the live ISO needs")
                && out.contains("in /run/small/w but its filesystem has")
                && out.contains("exit=1"),
            "convert into a small work directory: {out}"
        );
        ensure!(
            vm.sh("cat /sys/kernel/kexec_loaded")?.trim() == "0",
            "a kernel is loaded"
        );
        ensure!(vm.sh(fingerprint)? == before, "the disk changed");
        s.progress("a work directory without room for the ISO: refused before the download");
        start_convert(
            &vm,
            &format!("--disk /dev/vda --live {iso_url} --sha256 {iso_sha} --yes"),
        )?;
        let booted = vm.wait_mark("live-booted", BOOT_TIMEOUT)?;
        vm.wait_exit(SHUTDOWN)?;
        let serial = std::fs::read_to_string(vm.serial_log())?;
        let line = |key: &str| -> Vec<String> {
            serial
                .lines()
                .filter_map(|l| l.trim_end_matches('\r').strip_prefix(key))
                .map(str::to_owned)
                .collect()
        };
        ensure!(
            serial.contains(&format!("Fetching {iso_url}")),
            "the ISO was not fetched from the mirror"
        );
        let cmdline = line("live-cmdline: ").concat();
        ensure!(
            cmdline.contains("nestos.inst.install_dev=/dev/vda")
                && cmdline.contains("ignition.firstboot")
                && cmdline.contains("console=ttyS0")
                && !cmdline.contains("liveiso"),
            "the live kernel's command line: {cmdline:?}"
        );
        let config = line("live-installer-config: ");
        ensure!(
            config.contains(&"dest-device: \"/dev/vda\"".to_owned())
                && config.contains(&"ignition-file: /etc/x2nestos/config.ign".to_owned()),
            "the installer's config in the live system: {config:?}"
        );
        ensure!(
            line("live-ignition: ") == ["600 generic-vm"],
            "the Ignition config in the live system: {:?}",
            line("live-ignition: ")
        );
        s.progress(&format!(
            "live system booted (boot id {}) with: {cmdline}",
            booted.detail
        ));
        Ok(())
    })
}

/// The live system stand-in: what NestOS's live installer would be given — the kernel
/// command line, its `installer.d` config, the Ignition config's mode and host name — on the
/// serial console, then power off. It replaces the first part's `/init` (the kernel unpacks
/// the parts in order, later files over earlier ones).
const LIVE_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
{
    echo "HK-MARK:live-booted $(cat /proc/sys/kernel/random/boot_id)"
    echo "live-cmdline: $(cat /proc/cmdline)"
    for f in /etc/nestos/installer.d/*.yaml; do sed 's/^/live-installer-config: /' "$f"; done
    # The host name file's contents, as the config carries them ("generic-vm\n" in base64).
    host=$(grep -q 'Z2VuZXJpYy12bQo=' /etc/x2nestos/config.ign && echo generic-vm)
    echo "live-ignition: $(stat -c %a /etc/x2nestos/config.ign) $host"
} >/dev/ttyS0
poweroff -f
"#;

/// A NestOS-shaped live ISO (isolinux entry with `nestos.liveiso=`, images/pxeboot/{vmlinuz,
/// initrd.img,rootfs.img}), made by xorriso: the machine's bzImage, its busybox marker
/// initramfs and, as the root filesystem part, an archive holding [`LIVE_INIT`].
fn live_iso(s: &Scenario, vm: &Machine) -> Result<PathBuf> {
    let fetch = |path: &str| -> Result<Vec<u8>> {
        let out = vm.ssh_output("root", "root", &format!("cat {path}"))?;
        ensure!(
            out.status.success() && !out.stdout.is_empty(),
            "{path} in the guest"
        );
        Ok(out.stdout)
    };
    let tree = s.dir.join("live-tree");
    let pxe = tree.join("images/pxeboot");
    std::fs::create_dir_all(&pxe)?;
    std::fs::create_dir_all(tree.join("isolinux"))?;
    std::fs::write(pxe.join("vmlinuz"), fetch("/boot/vmlinuz-$(uname -r)")?)?;
    std::fs::write(
        pxe.join("initrd.img"),
        fetch("/usr/lib/housekeeper-test/marker-initrd.img")?,
    )?;
    let root = s.dir.join("live-root");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("init"), LIVE_INIT)?;
    run(Command::new("chmod").arg("755").arg(root.join("init")))?;
    let rootfs = std::fs::File::create(pxe.join("rootfs.img"))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(rootfs))
        .spawn()
        .context("cpio (apt-get install cpio)")?;
    {
        use std::io::Write as _;
        cpio.stdin.take().unwrap().write_all(b"init\n")?;
    }
    ensure!(cpio.wait()?.success(), "cpio failed");
    std::fs::write(
        tree.join("isolinux/isolinux.cfg"),
        "default live\nlabel live\n  menu default\n  kernel /images/pxeboot/vmlinuz\n  \
         append initrd=/images/pxeboot/initrd.img nestos.liveiso=HK-LIVE ignition.firstboot ignition.platform.id=metal\n",
    )?;
    let iso = s.dir.join("live.iso");
    run(Command::new("xorriso")
        .args([
            "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "HK-LIVE", "-o",
        ])
        .arg(&iso)
        .arg(&tree))?;
    Ok(iso)
}

fn hex_sha256(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}
