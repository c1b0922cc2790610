//! Which systemd unit hkd runs in, as rpm-ostreed will see it.
//!
//! `UpdateDeployment`'s `register-driver` option fails the whole call ("could not find caller
//! systemd unit") unless the daemon can resolve the caller's process to a unit: it looks the
//! caller's pid up through systemd, which answers from the process's cgroup. So hkd decides
//! from the same fact, its own `/proc/self/cgroup`, and not from `$INVOCATION_ID`: that
//! variable is inherited by everything a service starts (a shell opened from it, `nsenter`,
//! a container's entrypoint whose cgroup namespace hides the unit) and can say "in a unit"
//! where the daemon finds none.
//!
//! Caveat: only a `.service` counts. A login shell's session scope is a unit too, but it is
//! not what hkd is meant to run in, and registering from it makes the shell the update driver.

use std::path::Path;

/// The service unit named by a `/proc/PID/cgroup` text, if the process runs in one.
///
/// Reads the unified hierarchy's line (`0::/system.slice/hkd.service`), or the v1 `name=systemd`
/// line on a legacy host; skips slices; the first other component must be a `.service`.
/// `0::/` — the root, or a container's cgroup namespace — is no unit.
pub fn service_unit(cgroup: &str) -> Option<String> {
    let path = |prefix: &str| {
        cgroup
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .filter(|p| *p != "/")
    };
    let path = path("0::").or_else(|| {
        cgroup.lines().find_map(|l| {
            let (_, rest) = l.split_once(":name=systemd:")?;
            Some(rest).filter(|p| *p != "/")
        })
    })?;
    let unit = path
        .split('/')
        .filter(|c| !c.is_empty())
        .find(|c| !c.ends_with(".slice"))?;
    unit.ends_with(".service").then(|| unit.to_owned())
}

/// The service unit this process runs in, read from `proc_root` (`/proc` on a host).
pub fn own_service_unit(proc_root: &Path) -> Option<String> {
    let cgroup = std::fs::read_to_string(proc_root.join("self/cgroup")).ok()?;
    service_unit(&cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_a_unit_and_a_shell_or_a_container_is_not() {
        assert_eq!(
            service_unit("0::/system.slice/hkd.service\n").as_deref(),
            Some("hkd.service")
        );
        // Hybrid hierarchy: the unified line is empty, v1's name=systemd decides.
        let hybrid =
            "12:name=systemd:/system.slice/hkd.service\n4:memory:/system.slice/hkd.service\n0::/\n";
        assert_eq!(service_unit(hybrid).as_deref(), Some("hkd.service"));
        // A sub-cgroup the service made for itself still belongs to it.
        assert_eq!(
            service_unit("0::/system.slice/hkd.service/worker\n").as_deref(),
            Some("hkd.service")
        );
        for outside in [
            "0::/\n",
            "9:name=systemd:/\n8:pids:/\n0::/\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/init.scope\n",
            "",
        ] {
            assert_eq!(service_unit(outside), None, "{outside:?}");
        }
    }

    #[test]
    fn reads_the_file_under_the_proc_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(own_service_unit(dir.path()), None, "no file: no unit");
        std::fs::create_dir(dir.path().join("self")).unwrap();
        std::fs::write(
            dir.path().join("self/cgroup"),
            "0::/system.slice/hkd.service\n",
        )
        .unwrap();
        assert_eq!(own_service_unit(dir.path()).as_deref(), Some("hkd.service"));
    }
}
