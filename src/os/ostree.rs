//! Plain OSTree hosts (no rpm-ostree), through the `ostree` command (2022.7 and later).
//!
//! How "staged, finalization locked" is done without rpm-ostree: the target is deployed
//! *after* the default (`--not-as-default`) with a `[housekeeper] staged=true` key in its
//! origin, so a reboot or power loss before [`Backend::finalize`] still starts the current
//! system. Finalizing deploys the same commit again as the new default — which merges /etc
//! from the running system at that moment, so configuration changed since staging is carried —
//! and removes the staged copy. Rolling back deploys the rollback commit again as default
//! (2022.7 has no `set-default`). Both leave a bootable default at every step; a crash between
//! the two commands leaves a spare deployment that `cleanup` removes.
//!
//! Verification: a target from a remote must be checked by that remote (`gpg-verify` or
//! `sign-verify`); a remote that checks nothing counts as unverified.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Backend, Deployment, Deployments, OsError};
use crate::image_ref::{ImagePolicy, ImageRef, Kind};
use crate::sys::command::{Cmd, CommandError};

/// The origin key that marks a deployment as staged by us and not yet finalized.
const STAGED_GROUP: &str = "[housekeeper]";
const STAGED_KEY: &str = "staged=true";

/// libostree's lock file: while it exists, a `--stage`d deployment is not finalized at shutdown.
const FINALIZATION_LOCK: &str = "ostree/staged-deployment-locked";

#[derive(Debug, Clone)]
pub struct Ostree {
    /// The sysroot (`/` on a booted host; a directory in tests and image builds).
    pub sysroot: PathBuf,
    /// The OS name (stateroot) to deploy into.
    pub osname: String,
    /// The runtime directory (`/run`), where libostree keeps its finalization lock.
    pub run_dir: PathBuf,
    /// Whether targets that nothing verifies (a remote that checks nothing) are accepted.
    pub policy: ImagePolicy,
}

impl Ostree {
    /// The backend for the sysroot at `root` (`/` on a host), deploying into the stateroot of
    /// the booted (or else the default) deployment.
    pub fn booted_in(root: &Path, policy: ImagePolicy) -> Result<Ostree, OsError> {
        let mut backend = Ostree {
            sysroot: root.to_owned(),
            osname: String::new(),
            run_dir: root.join("run"),
            policy,
        };
        let all = backend.status()?;
        let current = all.booted().or(all.default_deployment()).ok_or_else(|| {
            OsError::Unavailable(
                "this host has no OSTree deployment; hkd manages OSTree-based systems only".into(),
            )
        })?;
        backend.osname = current.osname.clone();
        Ok(backend)
    }

    fn ostree(&self) -> Cmd {
        Cmd::new("ostree")
    }

    fn admin(&self, verb: &str) -> Cmd {
        self.ostree()
            .args(["admin", verb])
            .arg(format!("--sysroot={}", self.sysroot.display()))
    }

    fn repo_arg(&self) -> String {
        format!("--repo={}", self.sysroot.join("ostree/repo").display())
    }

    fn origin_path(&self, d: &Deployment) -> PathBuf {
        self.sysroot.join(format!(
            "ostree/deploy/{}/deploy/{}.{}.origin",
            d.osname, d.checksum, d.serial
        ))
    }

    /// Whether `remote` checks what it serves (gpg-verify defaults to true in libostree).
    fn remote_verifies(&self, remote: &str) -> Result<bool, OsError> {
        let get = |key: &str| {
            self.ostree()
                .args(["config", &self.repo_arg(), "get"])
                .arg(format!("remote \"{remote}\".{key}"))
                .run()
                .map(|v| v.trim().to_owned())
        };
        // `config get` fails for a key that is not set: then the default applies.
        let gpg = get("gpg-verify").unwrap_or_else(|_| "true".into());
        let sign = get("sign-verify").unwrap_or_else(|_| "false".into());
        Ok(gpg == "true" || sign == "true")
    }

    fn fetch(&self, target: &ImageRef) -> Result<String, OsError> {
        match &target.kind {
            Kind::Container => Err(OsError::Failed(format!(
                "{target}: the plain OSTree backend cannot deploy container images; \
                 NestOS hosts use the rpm-ostree backend"
            ))),
            Kind::Checksum => {
                // rev-parse accepts any checksum; `show` proves the commit is here.
                self.ostree()
                    .args(["show", &self.repo_arg(), &target.raw])
                    .run()
                    .map_err(|_| {
                        OsError::NotFound(format!("commit {target} is not in the repository"))
                    })?;
                Ok(target.raw.clone())
            }
            Kind::OstreeRef { remote: None, name } => self.rev_parse(name),
            Kind::OstreeRef {
                remote: Some(remote),
                name,
            } => {
                if !self.remote_verifies(remote)? && !self.policy.allow_unverified {
                    return Err(OsError::Failed(format!(
                        "{target}: remote {remote} verifies nothing (gpg-verify=false); \
                         configure signing, or set os.allow_unverified_images = true"
                    )));
                }
                if !self.remote_verifies(remote)? {
                    tracing::warn!("pulling {target} from remote {remote}, which verifies nothing");
                }
                self.ostree()
                    .args(["pull", &self.repo_arg(), remote, name])
                    .run()
                    .map_err(|e| pull_error(target, e))?;
                self.rev_parse(&format!("{remote}:{name}"))
            }
        }
    }

    fn rev_parse(&self, rev: &str) -> Result<String, OsError> {
        self.ostree()
            .args(["rev-parse", &self.repo_arg(), rev])
            .run()
            .map(|s| s.trim().to_owned())
            .map_err(|e| OsError::NotFound(format!("{rev} is not in the repository: {e}")))
    }

    /// Deploys `checksum` with `origin`; as the new default unless `staged`.
    fn deploy(&self, checksum: &str, origin: &str, staged: bool) -> Result<(), OsError> {
        let dir = tempfile::tempdir()
            .map_err(|e| OsError::Failed(format!("creating a temporary directory: {e}")))?;
        let origin_file = dir.path().join("origin");
        fs::write(&origin_file, origin)
            .map_err(|e| OsError::Failed(format!("writing {}: {e}", origin_file.display())))?;
        let mut cmd = self
            .admin("deploy")
            .arg(format!("--os={}", self.osname))
            .arg("--retain")
            .arg(format!("--origin-file={}", origin_file.display()));
        if staged {
            cmd = cmd.arg("--not-as-default");
        }
        cmd.arg(checksum).run().map_err(deploy_error)?;
        Ok(())
    }

    fn undeploy(&self, index: usize) -> Result<(), OsError> {
        self.admin("undeploy")
            .arg(index.to_string())
            .run()
            .map_err(|e| OsError::Failed(e.to_string()))?;
        Ok(())
    }

    /// The origin text of `d` without our staged marker.
    fn plain_origin(&self, d: &Deployment) -> Result<String, OsError> {
        let path = self.origin_path(d);
        let text = fs::read_to_string(&path)
            .map_err(|e| OsError::Failed(format!("reading {}: {e}", path.display())))?;
        Ok(strip_staged(&text))
    }

    fn index_of(&self, all: &Deployments, pick: impl Fn(&Deployment) -> bool) -> Option<usize> {
        all.deployments.iter().position(pick)
    }
}

impl Backend for Ostree {
    fn status(&self) -> Result<Deployments, OsError> {
        let text = self
            .admin("status")
            .run()
            .map_err(|e| OsError::Unavailable(format!("reading OSTree deployments: {e}")))?;
        let mut all = parse_status(&text).map_err(OsError::Failed)?;
        let locked = self.run_dir.join(FINALIZATION_LOCK).exists();
        for d in &mut all.deployments {
            if d.staged {
                // Staged by `ostree admin deploy --stage`: libostree's own lock applies.
                d.finalization_locked = locked;
            } else if fs::read_to_string(self.origin_path(d)).is_ok_and(|o| is_staged(&o)) {
                d.staged = true;
                d.finalization_locked = true;
            }
        }
        Ok(all)
    }

    fn stage(&self, target: &ImageRef) -> Result<String, OsError> {
        let checksum = self.fetch(target)?;
        let all = self.status()?;
        if let Some(staged) = all.staged() {
            if staged.checksum == checksum {
                return Ok(checksum); // already staged: nothing to do
            }
            self.unstage()?;
        }
        let origin = format!(
            "[origin]\nrefspec={}\n\n{STAGED_GROUP}\n{STAGED_KEY}\n",
            refspec(target)
        );
        self.deploy(&checksum, &origin, true)?;
        Ok(checksum)
    }

    fn unstage(&self) -> Result<(), OsError> {
        let all = self.status()?;
        match self.index_of(&all, |d| d.staged) {
            Some(i) => self.undeploy(i),
            None => Ok(()),
        }
    }

    fn finalize(&self, checksum: &str) -> Result<(), OsError> {
        let all = self.status()?;
        let Some(staged) = all.staged() else {
            // Already finalized (a repeat after a crash) when the default is the target.
            let done = all
                .default_deployment()
                .is_some_and(|d| d.checksum == checksum);
            return if done {
                Ok(())
            } else {
                Err(OsError::State(format!(
                    "nothing is staged, and the default deployment is not {checksum}"
                )))
            };
        };
        if staged.checksum != checksum {
            return Err(OsError::State(format!(
                "the staged deployment is {}, not {checksum}: it was replaced by someone else",
                staged.checksum
            )));
        }
        let origin = self.plain_origin(staged)?;
        self.deploy(checksum, &origin, false)?;
        let all = self.status()?;
        if let Some(i) = self.index_of(&all, |d| d.staged) {
            self.undeploy(i)?;
        }
        Ok(())
    }

    fn rollback(&self) -> Result<(), OsError> {
        let all = self.status()?;
        let Some(previous) = all.rollback().cloned() else {
            return Err(OsError::State(
                "there is no deployment to roll back to".into(),
            ));
        };
        let booted_is_default = all
            .default_deployment()
            .is_some_and(|d| d.booted || all.booted().is_none());
        if !booted_is_default {
            // The rollback target already boots next: nothing to do (a repeat after a crash).
            return Ok(());
        }
        let origin = self.plain_origin(&previous)?;
        self.deploy(&previous.checksum, &origin, false)
    }

    fn restore_booted(&self) -> Result<(), OsError> {
        let all = self.status()?;
        let (Some(booted), Some(default)) = (all.booted(), all.default_deployment()) else {
            return Ok(()); // nothing booted (an image being built): nothing to restore
        };
        if booted == default {
            return Ok(());
        }
        let origin = self.plain_origin(booted)?;
        self.deploy(&booted.checksum.clone(), &origin, false)
    }

    fn cleanup(&self) -> Result<(), OsError> {
        let all = self.status()?;
        let keep_rollback = all.rollback().map(|d| (d.checksum.clone(), d.serial));
        // Highest index first, so that the indexes still to remove stay valid.
        for (i, d) in all.deployments.iter().enumerate().rev() {
            let keep = i == 0
                || d.booted
                || d.pinned
                || d.staged
                || keep_rollback.as_ref() == Some(&(d.checksum.clone(), d.serial));
            if !keep {
                self.undeploy(i)?;
            }
        }
        self.admin("cleanup")
            .run()
            .map_err(|e| OsError::Failed(e.to_string()))?;
        Ok(())
    }
}

/// The refspec to record for a target.
fn refspec(target: &ImageRef) -> String {
    match &target.kind {
        Kind::OstreeRef {
            remote: Some(remote),
            name,
        } => format!("{remote}:{name}"),
        Kind::OstreeRef { remote: None, name } => name.clone(),
        Kind::Checksum | Kind::Container => target.raw.clone(),
    }
}

fn is_staged(origin: &str) -> bool {
    let mut in_group = false;
    for line in origin.lines().map(str::trim) {
        if line.starts_with('[') {
            in_group = line == STAGED_GROUP;
        } else if in_group && line == STAGED_KEY {
            return true;
        }
    }
    false
}

fn strip_staged(origin: &str) -> String {
    let mut out = String::new();
    let mut in_group = false;
    for line in origin.lines() {
        if line.trim().starts_with('[') {
            in_group = line.trim() == STAGED_GROUP;
        }
        if !in_group {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.trim_end().to_owned() + "\n"
}

/// ostree's own words for a sysroot without room: ENOSPC, or its min-free-space guard.
fn disk_full(stderr: &str) -> bool {
    stderr.contains("No space left on device") || stderr.contains("min-free-space")
}

fn pull_error(target: &ImageRef, e: CommandError) -> OsError {
    let stderr = e.stderr();
    if disk_full(stderr) {
        OsError::Failed(format!(
            "not enough free space in the sysroot for {target}: {e}"
        ))
    } else if stderr.contains("No such branch")
        || stderr.contains("404")
        || stderr.contains("not found")
    {
        OsError::NotFound(format!("{target} is not on its remote: {e}"))
    } else {
        OsError::Failed(format!("pulling {target}: {e}"))
    }
}

fn deploy_error(e: CommandError) -> OsError {
    let stderr = e.stderr();
    if disk_full(stderr) {
        OsError::Failed(format!("not enough free space in the sysroot: {e}"))
    } else if stderr.contains("Locking repo") || stderr.contains("lock") && stderr.contains("busy")
    {
        OsError::Busy(e.to_string())
    } else {
        OsError::Failed(e.to_string())
    }
}

/// Parses `ostree admin status` (2022.7): one header line per deployment
/// (`* OSNAME CHECKSUM.SERIAL (staged|pending|rollback)`), then indented details.
pub fn parse_status(text: &str) -> Result<Deployments, String> {
    let mut all = Deployments::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(detail) = line.strip_prefix("    ") {
            let Some(current) = all.deployments.last_mut() else {
                return Err(format!(
                    "ostree admin status: detail before any deployment: {line:?}"
                ));
            };
            if let Some(v) = detail.strip_prefix("Version: ") {
                current.version = Some(v.trim().to_owned());
            } else if let Some(v) = detail.strip_prefix("origin refspec: ") {
                current.origin = Some(v.trim().to_owned());
            } else if detail.trim() == "Pinned: yes" {
                current.pinned = true;
            }
            continue;
        }
        let (booted, rest) = match (line.strip_prefix("* "), line.strip_prefix("  ")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err(format!("ostree admin status: unexpected line {line:?}")),
        };
        let mut words = rest.split_whitespace();
        let (Some(osname), Some(id)) = (words.next(), words.next()) else {
            return Err(format!("ostree admin status: unexpected line {line:?}"));
        };
        let Some((checksum, serial)) = id.rsplit_once('.') else {
            return Err(format!("ostree admin status: no serial in {id:?}"));
        };
        let serial = serial
            .parse()
            .map_err(|_| format!("ostree admin status: bad serial in {id:?}"))?;
        let staged = words.any(|w| w == "(staged)");
        all.deployments.push(Deployment {
            osname: osname.to_owned(),
            checksum: checksum.to_owned(),
            serial,
            version: None,
            origin: None,
            booted,
            staged,
            pinned: false,
            finalization_locked: false,
        });
    }
    Ok(all)
}

/// Where a sysroot keeps the deployment directory of `d` (for tests and checks).
pub fn deployment_dir(sysroot: &Path, d: &Deployment) -> PathBuf {
    sysroot.join(format!(
        "ostree/deploy/{}/deploy/{}.{}",
        d.osname, d.checksum, d.serial
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOTED: &str =
        "  testos 701b858674ba4e170ae60def7197a7671ca70a13ae43f2be49ef96cdcf3986a4.0 (staged)
    Version: 3
    origin refspec: testos:testos/x86_64/next
* testos 1cf6087fad687efeeec4114829349aac5232501c52dfc8c74bdd4e69a0f138ee.0
    Version: 2
    origin refspec: testos:testos/x86_64/stable
  testos da622489589bc2d5e1c4279da8d5dfe3dc538cc516eb2fbed1c3c230670de1d5.1 (rollback)
    Version: 1
    Pinned: yes
    origin refspec: testos/x86_64/stable
";

    #[test]
    fn parses_a_booted_status_with_staged_and_rollback() {
        let all = parse_status(BOOTED).unwrap();
        assert_eq!(all.deployments.len(), 3);
        let staged = all.staged().unwrap();
        assert_eq!(staged.version.as_deref(), Some("3"));
        assert_eq!(staged.origin.as_deref(), Some("testos:testos/x86_64/next"));
        let booted = all.booted().unwrap();
        assert!(booted.checksum.starts_with("1cf6087f"));
        let rollback = all.rollback().unwrap();
        assert_eq!((rollback.serial, rollback.pinned), (1, true));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(parse_status("    Version: 1\n").is_err());
        assert!(parse_status("garbage\n").is_err());
        assert!(parse_status("  testos abc\n").is_err());
        assert!(parse_status("  testos abc.x\n").is_err());
        assert_eq!(parse_status("").unwrap(), Deployments::default());
    }

    #[test]
    fn the_staged_marker_is_found_and_removed() {
        let origin = "[origin]\nrefspec=a:b\n\n[housekeeper]\nstaged=true\n";
        assert!(is_staged(origin));
        assert_eq!(strip_staged(origin), "[origin]\nrefspec=a:b\n");
        assert!(!is_staged("[origin]\nstaged=true\n"));
        assert!(!is_staged(&strip_staged(origin)));
    }
}
