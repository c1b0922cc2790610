//! Smoke scenarios: they prove the bench boots real machines, that kexec works inside the
//! generic one, that testos boots from its metal image with Ignition on first boot only, and
//! that an OSTree upgrade by hand boots the new version with the old one kept for rollback.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::bench::http::HttpServer;
use crate::bench::images::{self, Testos};
use crate::bench::{scenario, Scenario, BOOT_TIMEOUT};

const SHUTDOWN: Duration = Duration::from_secs(120);

/// The Ignition config the testos scenarios give a first boot: a file, and root's SSH key
/// (the only way into a fresh testos, so logging in proves the key arrived).
fn ignition_config(t: &Testos) -> Result<String> {
    let key = std::fs::read_to_string(t.keys_dir.join("root.pub"))?;
    let cfg = serde_json::json!({
        "ignition": { "version": "3.3.0" },
        "passwd": { "users": [ { "name": "root", "sshAuthorizedKeys": [ key.trim() ] } ] },
        "storage": { "files": [ {
            "path": "/etc/hk-ignition-test",
            "mode": 420,
            "contents": { "source": "data:,written%20by%20ignition%0A" }
        } ] }
    });
    Ok(serde_json::to_string_pretty(&cfg)?)
}

/// The deployment lines of `ostree admin status`: (booted, checksum, rest of the line).
fn deployments(status: &str) -> Vec<(bool, String, String)> {
    status
        .lines()
        .filter(|l| !l.starts_with("    "))
        .filter_map(|l| {
            let booted = l.starts_with('*');
            let mut words = l.trim_start_matches(['*', ' ']).split_whitespace();
            let _os = words.next()?;
            let deploy = words.next()?;
            let checksum = deploy.split('.').next()?.to_string();
            Some((booted, checksum, words.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[test]
fn generic_boots_to_multi_user() -> Result<()> {
    scenario("generic-boot", |s: &Scenario| {
        let g = images::generic()?;
        let disk = s.overlay(&g.disk, "generic")?;
        let mut vm = s.boot_generic(g, &disk, "generic")?;
        vm.wait_mark("initrd", BOOT_TIMEOUT)?;
        let ready = vm.wait_mark("ready", BOOT_TIMEOUT)?;
        s.progress(&format!("multi-user, boot id {}", ready.detail));
        let hostname = vm.sh("hostname")?;
        ensure!(
            hostname.trim() == g.hostname,
            "hostname is {hostname:?}, want {}",
            g.hostname
        );
        vm.sh("systemctl is-active multi-user.target ssh.service")?;
        // The non-root user logs in with its own key; the restricted key runs only its command.
        let admin = vm.ssh_output("admin", "admin", "id -un")?;
        ensure!(
            String::from_utf8_lossy(&admin.stdout).trim() == "admin",
            "admin login: {admin:?}"
        );
        let restricted = vm.ssh_output("root", "restricted", "hostname")?;
        ensure!(
            String::from_utf8_lossy(&restricted.stdout).trim() == "restricted-key-only",
            "the command= key ran something else: {restricted:?}"
        );
        s.progress(&format!("hostname {}", hostname.trim()));
        vm.shutdown_with("systemctl poweroff", SHUTDOWN)
    })
}

/// The bench itself: a guest that cannot boot is reported with its serial log, and its QEMU
/// is gone once the machine is dropped.
#[test]
fn generic_that_never_boots_is_reported() -> Result<()> {
    scenario("generic-no-boot", |s: &Scenario| {
        let g = images::generic()?;
        let disk = s.overlay(&g.disk, "generic")?;
        let cmdline = g
            .cmdline
            .replace("root=LABEL=root", "root=LABEL=no-such-disk");
        let mut vm = s.boot_generic_with(g, &disk, "generic", &cmdline)?;
        let pid = vm.pid().context("QEMU is not running")?;
        let err = match vm.wait_mark("ready", BOOT_TIMEOUT) {
            Ok(m) => anyhow::bail!("a machine without its root disk came up: {m:?}"),
            Err(e) => format!("{e:#}"),
        };
        let log = vm.serial_log().display().to_string();
        ensure!(
            err.contains("initrd-failed") && err.contains(&log),
            "the error does not name the failure and the serial log {log}: {err}"
        );
        s.progress("the boot failure was reported with its serial log");
        drop(vm);
        ensure!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "QEMU (pid {pid}) outlived its machine"
        );
        Ok(())
    })
}

#[test]
fn generic_kexecs_into_a_second_kernel() -> Result<()> {
    scenario("generic-kexec", |s: &Scenario| {
        let g = images::generic()?;
        let disk = s.overlay(&g.disk, "generic")?;
        let mut vm = s.boot_generic(g, &disk, "generic")?;
        let ready = vm.wait_mark("ready", BOOT_TIMEOUT)?;
        s.progress("up; loading the second kernel with kexec_file_load");
        vm.sh("kexec -s -l /boot/vmlinuz-$(uname -r) \
             --initrd=/usr/lib/housekeeper-test/marker-initrd.img \
             --append='console=ttyS0 panic=-1' && cat /sys/kernel/kexec_loaded")?;
        vm.detach("systemctl kexec");
        let second = vm.wait_mark("second-kernel", BOOT_TIMEOUT)?;
        ensure!(
            second.detail != ready.detail,
            "the second kernel has the first one's boot id {}",
            ready.detail
        );
        s.progress(&format!("second kernel up, boot id {}", second.detail));
        vm.wait_exit(SHUTDOWN)
    })
}

#[test]
fn testos_runs_ignition_on_first_boot_only() -> Result<()> {
    scenario("testos-ignition", |s: &Scenario| {
        let t = images::testos()?;
        let disk = s.testos_disk(t, "testos", Some(&ignition_config(t)?))?;
        let mut vm = s.boot_testos(t, &disk, "testos")?;
        vm.wait_mark("initrd", BOOT_TIMEOUT)?;
        vm.wait_mark("ignition-applied", BOOT_TIMEOUT)?;
        vm.wait_mark("ready", BOOT_TIMEOUT)?;
        s.progress("first boot up; Ignition ran");
        let file = vm.sh("cat /etc/hk-ignition-test")?;
        ensure!(
            file == "written by ignition\n",
            "file from Ignition: {file:?}"
        );
        let key = std::fs::read_to_string(t.keys_dir.join("root.pub"))?;
        let keys = vm.sh("cat /root/.ssh/authorized_keys.d/ignition")?;
        ensure!(
            keys.contains(key.trim()),
            "root's key is not in Ignition's key file: {keys:?}"
        );
        vm.sh("test ! -e /boot/ignition.firstboot && test -e /boot/ignition/config.ign")?;
        // Changed by hand: a second Ignition run would put the original back.
        vm.sh("echo changed after first boot >/etc/hk-ignition-test")?;
        vm.shutdown_with("systemctl reboot", SHUTDOWN)?;

        let mut vm = s.boot_testos(t, &disk, "testos")?;
        vm.wait_mark("ignition-skipped", BOOT_TIMEOUT)?;
        vm.wait_mark("ready", BOOT_TIMEOUT)?;
        let file = vm.sh("cat /etc/hk-ignition-test")?;
        ensure!(
            file == "changed after first boot\n",
            "Ignition ran again on the second boot: {file:?}"
        );
        s.progress("second boot: Ignition skipped");
        vm.shutdown_with("systemctl poweroff", SHUTDOWN)
    })
}

#[test]
fn testos_ostree_admin_sees_the_booted_deployment() -> Result<()> {
    scenario("testos-ostree-status", |s: &Scenario| {
        let t = images::testos()?;
        let disk = s.testos_disk(t, "testos", Some(&ignition_config(t)?))?;
        let mut vm = s.boot_testos(t, &disk, "testos")?;
        vm.wait_mark("ready", BOOT_TIMEOUT)?;
        let health = vm.wait_mark("health-ok", BOOT_TIMEOUT)?;
        s.progress(&format!("health check: {}", health.detail));
        vm.sh("test -e /run/ostree-booted")?;
        let status = vm.sh("ostree admin status")?;
        s.progress(&format!("ostree admin status:\n{status}"));
        let d = deployments(&status);
        ensure!(
            d.len() == 1 && d[0].0 && d[0].1 == t.versions[0],
            "want v1 ({}) booted and alone: {status}",
            t.versions[0]
        );
        vm.shutdown_with("systemctl poweroff", SHUTDOWN)
    })
}

#[test]
fn testos_upgrades_v1_to_v2_by_hand() -> Result<()> {
    scenario("testos-upgrade", |s: &Scenario| {
        let t = images::testos()?;
        let server = HttpServer::serve(&t.dir)?;
        let url = server.guest_url("repo");
        s.progress(&format!("update server: {url}"));
        let disk = s.testos_disk(t, "testos", Some(&ignition_config(t)?))?;
        let mut vm = s.boot_testos(t, &disk, "testos")?;
        vm.wait_mark("ready", BOOT_TIMEOUT)?;
        let remote = &t.remote;
        vm.sh(&format!(
            "ostree remote delete --if-exists {remote} && \
             ostree remote add --no-gpg-verify {remote} {url} && \
             ostree pull {remote} testos/x86_64/v2 && \
             ostree admin deploy --os=testos {remote}:testos/x86_64/v2"
        ))
        .context("pulling and deploying v2")?;
        s.progress("v2 pulled from the update server and deployed; rebooting");
        vm.shutdown_with("systemctl reboot", SHUTDOWN)?;

        let mut vm = s.boot_testos(t, &disk, "testos")?;
        vm.wait_mark("ready", BOOT_TIMEOUT)?;
        let version = vm.sh("cat /usr/lib/housekeeper-test/version")?;
        ensure!(version.trim() == "2", "booted version {version:?}, want 2");
        let status = vm.sh("ostree admin status")?;
        s.progress(&format!("ostree admin status:\n{status}"));
        let d = deployments(&status);
        ensure!(
            d.len() == 2 && d[0].0 && d[0].1 == t.versions[1],
            "want v2 ({}) booted first: {status}",
            t.versions[1]
        );
        ensure!(
            !d[1].0 && d[1].1 == t.versions[0],
            "want v1 ({}) kept as rollback: {status}",
            t.versions[0]
        );
        vm.shutdown_with("systemctl poweroff", SHUTDOWN)
    })
}

#[cfg(test)]
mod tests {
    use super::deployments;

    #[test]
    fn reads_ostree_admin_status() {
        let status = "* testos 5f2c.0\n    Version: 2\n    origin refspec: hk:testos/x86_64/v2\n  \
                      testos 9a1b.0 (rollback)\n    Version: 1\n";
        let d = deployments(status);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], (true, "5f2c".to_string(), String::new()));
        assert_eq!(d[1], (false, "9a1b".to_string(), "(rollback)".to_string()));
    }
}
