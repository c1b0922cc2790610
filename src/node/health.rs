//! The health gate after a boot into a new deployment.
//!
//! Checks, in this order:
//! - programs in the `required.d` check directories: a failure fails the gate;
//! - programs in the `wanted.d` check directories: a failure is reported, not fatal;
//! - systemd units that must be active (`health.units` in the configuration);
//! - checks the caller adds (the cluster side adds "this Node is Ready again").
//!
//! Check directories follow the configuration's drop-in rules: `usr/lib/hkd/health.d/required.d`,
//! `etc/…`, `run/…`; same name overrides, a `/dev/null` symlink masks, name order. A check
//! exits 0 to pass; its last line of output says why when it fails.
//!
//! The gate is tried until it passes or the deadline comes: a system that has just booted
//! may need a minute before its kubelet is Ready. [`verdict`] decides; [`Gate`] runs.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::dropin::{self, Wanted};
use crate::config::hkd::Health;
use crate::sys::command::Cmd;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub required: bool,
    /// None when it passed; else why not.
    pub failure: Option<String>,
}

/// What the gate concludes from one round of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every required check passed; `warnings` lists the wanted checks that did not.
    Pass { warnings: Vec<String> },
    /// At least one required check failed; `reason` names them.
    Fail { reason: String },
}

/// Decides the gate from one round of results.
pub fn verdict(results: &[CheckResult]) -> Verdict {
    let describe = |r: &CheckResult| format!("{}: {}", r.name, r.failure.as_deref().unwrap_or(""));
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.required && r.failure.is_some())
        .map(describe)
        .collect();
    if failed.is_empty() {
        Verdict::Pass {
            warnings: results
                .iter()
                .filter(|r| !r.required && r.failure.is_some())
                .map(describe)
                .collect(),
        }
    } else {
        Verdict::Fail {
            reason: failed.join("; "),
        }
    }
}

/// A check the caller supplies.
pub trait Check: Send + Sync {
    fn name(&self) -> String;
    fn run(&self) -> Result<(), String>;
}

/// Runs the checks of one host.
pub struct Gate {
    /// `/` on a host; a directory in tests.
    pub root: PathBuf,
    pub settings: Health,
    pub extra: Vec<Box<dyn Check>>,
}

impl Gate {
    /// One round of every check.
    pub fn run_once(&self) -> Vec<CheckResult> {
        let mut results = Vec::new();
        for (sub, required) in [("required.d", true), ("wanted.d", false)] {
            let dirs = dropin::directories(&self.root, &format!("hkd/health.d/{sub}"));
            match dropin::scan(&dirs, Wanted::Executables) {
                Ok(scan) => {
                    for (path, why) in &scan.ignored {
                        tracing::warn!("ignoring health check {}: {why}", path.display());
                    }
                    for path in scan.fragments {
                        results.push(CheckResult {
                            name: path.display().to_string(),
                            required,
                            failure: self.run_program(&path).err(),
                        });
                    }
                }
                Err(e) => results.push(CheckResult {
                    name: format!("health.d/{sub}"),
                    required,
                    failure: Some(e.to_string()),
                }),
            }
        }
        for unit in &self.settings.units {
            results.push(CheckResult {
                name: format!("unit {unit}"),
                required: true,
                failure: unit_active(unit).err(),
            });
        }
        for check in &self.extra {
            results.push(CheckResult {
                name: check.name(),
                required: true,
                failure: check.run().err(),
            });
        }
        results
    }

    /// Rounds of checks until they pass or `deadline`; the last round's verdict.
    pub fn run_until(&self, deadline: Instant) -> Verdict {
        loop {
            let results = self.run_once();
            let verdict = verdict(&results);
            let now = Instant::now();
            match &verdict {
                Verdict::Pass { warnings } => {
                    for w in warnings {
                        tracing::warn!("wanted health check failed: {w}");
                    }
                    return verdict;
                }
                Verdict::Fail { reason } if now + self.settings.interval >= deadline => {
                    tracing::warn!("health gate failed: {reason}");
                    return verdict;
                }
                Verdict::Fail { reason } => {
                    tracing::info!("health gate not passed yet ({reason}); trying again");
                    thread::sleep(self.settings.interval);
                }
            }
        }
    }

    fn run_program(&self, path: &Path) -> Result<(), String> {
        match Cmd::new(path).run_with_timeout(self.settings.check_timeout) {
            Ok(_) => Ok(()),
            Err(e) => Err(last_words(&e.to_string())),
        }
    }
}

fn unit_active(unit: &str) -> Result<(), String> {
    let state = Cmd::new("systemctl")
        .args(["is-active", unit])
        .run_with_timeout(Duration::from_secs(30));
    match state {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("not active ({})", last_words(&e.to_string()))),
    }
}

/// A command error is long; what a check said last is what the admin needs.
/// A check that said nothing is described by how it ended ("failed (exit status: 1)").
fn last_words(error: &str) -> String {
    match error.rsplit_once("): ") {
        Some((_, said)) if !said.trim().is_empty() => said.trim().to_owned(),
        Some((head, _)) => {
            let ending = head.rsplit_once("` ").map_or(head, |(_, ending)| ending);
            format!("{ending})")
        }
        None => error.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn result(name: &str, required: bool, failure: Option<&str>) -> CheckResult {
        CheckResult {
            name: name.into(),
            required,
            failure: failure.map(Into::into),
        }
    }

    #[test]
    fn required_failures_fail_and_wanted_ones_warn() {
        assert_eq!(verdict(&[]), Verdict::Pass { warnings: vec![] });
        assert_eq!(
            verdict(&[
                result("a", true, None),
                result("w", false, Some("slow disk"))
            ]),
            Verdict::Pass {
                warnings: vec!["w: slow disk".into()]
            }
        );
        assert_eq!(
            verdict(&[
                result("a", true, Some("no kubelet")),
                result("b", true, None),
                result("c", true, Some("no dns")),
                result("w", false, Some("x")),
            ]),
            Verdict::Fail {
                reason: "a: no kubelet; c: no dns".into()
            }
        );
    }

    struct Flaky(std::sync::atomic::AtomicU32);
    impl Check for Flaky {
        fn name(&self) -> String {
            "node Ready".into()
        }
        fn run(&self) -> Result<(), String> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 2 {
                Err("NotReady".into())
            } else {
                Ok(())
            }
        }
    }

    fn settings() -> Health {
        Health {
            timeout: Duration::from_secs(10),
            interval: Duration::from_millis(50),
            check_timeout: Duration::from_secs(5),
            units: vec![],
        }
    }

    fn script(root: &Path, rel: &str, body: &str) -> PathBuf {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn check_programs_run_from_the_drop_in_directories() {
        let root = tempfile::tempdir().unwrap();
        script(
            root.path(),
            "usr/lib/hkd/health.d/required.d/10-ok",
            "exit 0",
        );
        let bad = script(
            root.path(),
            "etc/hkd/health.d/required.d/20-disk",
            "echo checking; echo '/var is 97% full' >&2; exit 1",
        );
        script(
            root.path(),
            "etc/hkd/health.d/wanted.d/50-ntp",
            "echo 'clock not synchronised' >&2; exit 1",
        );
        let gate = Gate {
            root: root.path().to_owned(),
            settings: settings(),
            extra: vec![],
        };
        let results = gate.run_once();
        assert_eq!(results.len(), 3);
        assert_eq!(
            verdict(&results),
            Verdict::Fail {
                reason: format!("{}: /var is 97% full", bad.display())
            }
        );
        // An admin masks the failing vendor check by name.
        fs::remove_file(&bad).unwrap();
        let mask = root.path().join("run/hkd/health.d/required.d/20-disk");
        fs::create_dir_all(mask.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/dev/null", &mask).unwrap();
        assert!(
            matches!(verdict(&gate.run_once()), Verdict::Pass { warnings } if warnings.len() == 1)
        );
    }

    #[test]
    fn the_gate_retries_until_a_slow_check_passes() {
        let root = tempfile::tempdir().unwrap();
        let gate = Gate {
            root: root.path().to_owned(),
            settings: settings(),
            extra: vec![Box::new(Flaky(0.into()))],
        };
        let verdict = gate.run_until(Instant::now() + Duration::from_secs(5));
        assert_eq!(verdict, Verdict::Pass { warnings: vec![] });
    }

    #[test]
    fn the_gate_gives_up_at_the_deadline_with_the_last_reason() {
        let root = tempfile::tempdir().unwrap();
        script(
            root.path(),
            "etc/hkd/health.d/required.d/10-never",
            "echo 'still broken' >&2; exit 1",
        );
        let gate = Gate {
            root: root.path().to_owned(),
            settings: settings(),
            extra: vec![],
        };
        let started = Instant::now();
        let verdict = gate.run_until(started + Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(matches!(verdict, Verdict::Fail { reason } if reason.ends_with("still broken")));
    }

    #[test]
    fn a_silent_failing_check_is_described_by_its_exit_status() {
        let root = tempfile::tempdir().unwrap();
        script(
            root.path(),
            "etc/hkd/health.d/required.d/10-quiet",
            "exit 3",
        );
        let gate = Gate {
            root: root.path().to_owned(),
            settings: settings(),
            extra: vec![],
        };
        let results = gate.run_once();
        assert_eq!(
            results[0].failure.as_deref(),
            Some("failed (exit status: 3)")
        );
    }

    #[test]
    fn a_hanging_check_is_killed_and_fails() {
        let root = tempfile::tempdir().unwrap();
        script(
            root.path(),
            "etc/hkd/health.d/required.d/10-hang",
            "sleep 60",
        );
        let mut s = settings();
        s.check_timeout = Duration::from_millis(200);
        let gate = Gate {
            root: root.path().to_owned(),
            settings: s,
            extra: vec![],
        };
        let results = gate.run_once();
        assert!(results[0]
            .failure
            .as_deref()
            .unwrap()
            .contains("did not finish within 200ms"));
    }
}
