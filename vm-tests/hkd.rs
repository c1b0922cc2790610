//! hkd on real machines: testos booted from its metal image, hkd running as the systemd
//! service the image ships, upgrading a standalone node through the real `ostree`, logind
//! reboots (QEMU exits and the bench boots the same disk again, reading the boot loader
//! entries hkd's deploy wrote), the health gate, and automatic rollback; plus hkd killed with
//! SIGKILL and the machine powered off in the middle.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::bench::http::HttpServer;
use crate::bench::images::{self, Testos};
use crate::bench::qemu::Machine;
use crate::bench::{scenario, Scenario, BOOT_TIMEOUT};

/// From `hkd upgrade` to the reboot: a pull of a few MB over user-mode networking, a deploy
/// and the shutdown, under emulation.
const TO_REBOOT: Duration = Duration::from_secs(420);
/// From the boot to a verdict: hkd starts, the health gate passes or rolls back.
const TO_VERDICT: Duration = Duration::from_secs(300);

/// hkd's configuration for these machines: the test repository has no signatures, and the
/// gate should decide within minutes. Given at first boot through Ignition, as an admin would.
const HKD_CONFIG: &str = "[os]\nallow_unverified_images = true\n\n[health]\ntimeout = \"90s\"\ninterval = \"5s\"\n\n[reboot]\nretry = \"30s\"\n";

/// The test OS's own health check (v3 fails it), wired into hkd's required checks.
const HEALTH_CHECK: &str = "#!/bin/sh\nexec /usr/lib/housekeeper-test/health-check\n";

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

fn ignition(t: &Testos) -> Result<String> {
    let key = std::fs::read_to_string(t.keys_dir.join("root.pub"))?;
    let cfg = serde_json::json!({
        "ignition": { "version": "3.3.0" },
        "passwd": { "users": [ { "name": "root", "sshAuthorizedKeys": [ key.trim() ] } ] },
        "storage": { "files": [
            { "path": "/etc/hkd/config.d/50-vm.toml", "mode": 420,
              "contents": { "source": data_url(HKD_CONFIG) } },
            { "path": "/etc/hkd/health.d/required.d/50-testos", "mode": 493,
              "contents": { "source": data_url(HEALTH_CHECK) } }
        ] }
    });
    Ok(serde_json::to_string_pretty(&cfg)?)
}

/// A testos node with hkd running and its remote pointed at the host's update server.
struct Node<'a> {
    s: &'a Scenario,
    t: &'a Testos,
    disk: std::path::PathBuf,
    url: String,
}

impl<'a> Node<'a> {
    /// A fresh testos disk whose first boot gets hkd's configuration and health check.
    fn new(s: &'a Scenario, t: &'a Testos, server: &HttpServer) -> Result<Node<'a>> {
        Ok(Node {
            s,
            t,
            disk: s.testos_disk(t, "testos", Some(&ignition(t)?))?,
            url: server.guest_url("repo"),
        })
    }

    fn boot(&self) -> Result<Machine> {
        let mut vm = self.s.boot_testos(self.t, &self.disk, "testos")?;
        vm.wait_mark("ready", BOOT_TIMEOUT)?;
        let active = vm.sh("systemctl is-active hkd || true")?;
        ensure!(
            active.trim() == "active",
            "hkd.service is {active:?}: {}",
            vm.sh("systemctl status hkd --no-pager; journalctl -u hkd --no-pager | tail -20")
                .unwrap_or_default()
        );
        Ok(vm)
    }

    fn point_remote(&self, vm: &Machine) -> Result<()> {
        let remote = &self.t.remote;
        vm.sh(&format!(
            "ostree remote delete --if-exists {remote} && ostree remote add --no-gpg-verify {remote} {}",
            self.url
        ))
        .map(drop)
        .context("pointing the OSTree remote at the update server")
    }

    fn target(&self, version: u32) -> String {
        format!("{}:testos/x86_64/v{version}", self.t.remote)
    }
}

fn status(vm: &Machine) -> Result<Value> {
    let text = vm.sh("hkd status --json")?;
    serde_json::from_str(&text).with_context(|| format!("hkd status --json printed {text:?}"))
}

/// Polls `hkd status` until the phase is one of `phases`.
fn wait_phase(vm: &Machine, phases: &[&str], timeout: Duration) -> Result<Value> {
    let until = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < until {
        if let Ok(st) = status(vm) {
            if phases.iter().any(|p| st["upgrade"]["phase"] == *p) {
                return Ok(st);
            }
            last = st;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!(
        "hkd did not reach {phases:?} within {timeout:?}; last status: {last}\n{}",
        vm.sh("journalctl -u hkd --no-pager | tail -30")
            .unwrap_or_default()
    )
}

fn booted_version(vm: &Machine) -> Result<String> {
    Ok(vm
        .sh("cat /usr/lib/housekeeper-test/version")?
        .trim()
        .to_owned())
}

fn journal_has(vm: &Machine, message_id: &str) -> Result<bool> {
    let n = vm.sh(&format!(
        "journalctl -b -u hkd MESSAGE_ID={message_id} -o cat | wc -l"
    ))?;
    Ok(n.trim() != "0")
}

#[test]
fn testos_hkd_upgrades_to_v2_then_rolls_back_a_failing_v3() -> Result<()> {
    scenario("hkd-upgrade-rollback", |s: &Scenario| {
        let t = images::testos()?;
        let server = HttpServer::serve(&t.dir)?;
        let node = Node::new(s, t, &server)?;
        let mut vm = node.boot()?;
        node.point_remote(&vm)?;
        ensure!(status(&vm)?["upgrade"]["phase"] == "idle");
        vm.sh(&format!("hkd upgrade {}", node.target(2)))?;
        s.progress("hkd asked for v2; waiting for it to stage, finalize and reboot");
        vm.wait_exit(TO_REBOOT)
            .context("hkd did not reboot the node into v2")?;

        let vm = node.boot()?;
        let st = wait_phase(&vm, &["done", "failed", "rolledBack"], TO_VERDICT)?;
        ensure!(st["upgrade"]["phase"] == "done", "after v2: {st}");
        ensure!(booted_version(&vm)? == "2", "v2 is not what runs");
        let booted = &st["deployments"][0];
        ensure!(
            booted["booted"] == true && booted["checksum"] == t.versions[1].as_str(),
            "{st}"
        );
        ensure!(
            journal_has(&vm, housekeeper::logging::msgid::UPGRADE_DONE)?,
            "no UPGRADE_DONE in the journal"
        );
        s.progress("v2 booted, health gate passed, hkd says done; now v3, which is broken");

        let mut vm = vm;
        vm.sh(&format!("hkd upgrade {}", node.target(3)))?;
        vm.wait_exit(TO_REBOOT)
            .context("hkd did not reboot the node into v3")?;
        let mut vm = node.boot()?;
        ensure!(booted_version(&vm)? == "3", "v3 did not boot");
        s.progress("v3 booted; its health check fails, hkd must roll back and reboot");
        vm.wait_exit(TO_VERDICT)
            .context("hkd did not reboot to roll back")?;

        let vm = node.boot()?;
        let st = wait_phase(&vm, &["rolledBack", "failed", "done"], TO_VERDICT)?;
        ensure!(st["upgrade"]["phase"] == "rolledBack", "after v3: {st}");
        ensure!(booted_version(&vm)? == "2", "v2 is not running again");
        let reason = st["upgrade"]["reason"].as_str().unwrap_or_default();
        ensure!(reason.contains("health check failed"), "reason: {reason}");
        ensure!(
            st["upgrade"]["failedTarget"] == node.target(3).as_str(),
            "{st}"
        );
        ensure!(
            journal_has(&vm, housekeeper::logging::msgid::ROLLED_BACK)?,
            "no ROLLED_BACK in the journal"
        );
        // Asked for v3 again: not retried.
        vm.sh(&format!("hkd upgrade {}", node.target(3)))?;
        std::thread::sleep(Duration::from_secs(5));
        ensure!(status(&vm)?["upgrade"]["phase"] == "rolledBack");
        s.progress(&format!("rolled back to v2: {reason}"));
        let mut vm = vm;
        vm.shutdown_with("systemctl poweroff", Duration::from_secs(120))
    })
}

#[test]
fn testos_hkd_killed_while_staging_and_power_lost_still_ends_done() -> Result<()> {
    scenario("hkd-crashes", |s: &Scenario| {
        let t = images::testos()?;
        let server = HttpServer::serve(&t.dir)?;
        let node = Node::new(s, t, &server)?;
        let mut vm = node.boot()?;
        node.point_remote(&vm)?;
        vm.sh(&format!("hkd upgrade {}", node.target(2)))?;
        wait_phase(&vm, &["staging"], Duration::from_secs(60))?;
        vm.sh("systemctl kill --signal=KILL hkd")?;
        s.progress("hkd killed with SIGKILL while staging; systemd restarts it");
        vm.wait_exit(TO_REBOOT)
            .context("after SIGKILL, hkd did not resume and reboot into v2")?;

        let mut vm = node.boot()?;
        let st = wait_phase(&vm, &["done", "failed", "rolledBack"], TO_VERDICT)?;
        ensure!(st["upgrade"]["phase"] == "done", "after the SIGKILL: {st}");
        ensure!(booted_version(&vm)? == "2");
        s.progress("done on v2 despite the SIGKILL; now power is cut while staging v1 again");

        vm.sh(&format!("hkd upgrade {}", node.target(1)))?;
        wait_phase(
            &vm,
            &["staging", "staged", "granted", "draining"],
            Duration::from_secs(60),
        )?;
        vm.kill(); // the power cut
        s.progress("power cut; booting the same disk again");

        let mut vm = node.boot()?;
        vm.wait_exit(TO_REBOOT)
            .context("after the power cut, hkd did not resume and reboot into v1")?;
        let vm = node.boot()?;
        let st = wait_phase(&vm, &["done", "failed", "rolledBack"], TO_VERDICT)?;
        ensure!(
            st["upgrade"]["phase"] == "done",
            "after the power cut: {st}"
        );
        ensure!(booted_version(&vm)? == "1", "v1 is not what runs");
        let deployments = st["deployments"].as_array().map_or(0, Vec::len);
        ensure!(deployments <= 3, "deployments piled up: {st}");
        let mut vm = vm;
        vm.shutdown_with("systemctl poweroff", Duration::from_secs(120))
    })
}
