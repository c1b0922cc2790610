//! rpm-ostree hosts (NestOS), through rpm-ostreed's D-Bus API (`org.projectatomic.rpmostree1`).
//!
//! The OS object is found through `Sysroot.Booted` (or `GetOS("")`), never by a fixed path. hkd
//! registers as a client (so the daemon does not idle-exit under it) and, when staging from a
//! systemd service, as the update driver ([`caller`]: the daemon refuses the whole call
//! otherwise, so outside a unit hkd stages without it and says so in the log). Every change is
//! a transaction followed on its own peer-to-peer connection ([`transaction`], whose socket
//! lives under `/run`: a containerised hkd needs the host's `/run`); only one runs at a time,
//! and a daemon busy with someone else's is [`OsError::Busy`] before anything is asked of it.
//!
//! How the trait's promises are kept here:
//! - stage: `UpdateDeployment` with `set-refspec` (the image reference's raw text, unchanged) or
//!   `set-revision` (a checksum; with `skip-branch-check` when `os.skip_branch_check` allows a
//!   commit outside the booted origin's branch), `lock-finalization` so that shutdown does not
//!   finalize it. Whatever the transaction says, the deployments are read again after it: a
//!   failed or cancelled transaction can still leave the target staged, and that is reported
//!   as it is. "Is the staged deployment our target" is [`target::is_target`], on the
//!   reference as the daemon reports it back (canonical) and the digest when it reports one.
//! - finalize: `FinalizeDeployment({checksum})` with the checksum the daemon compares: the
//!   staged deployment's base commit when packages are layered on it. rpm-ostreed first
//!   refuses while a block-mode shutdown inhibitor is held ([`OsError::Blocked`]), and
//!   *reboots* at its end (see the trait's documentation of [`Backend::finalize`]). A staged
//!   target already unlocked is finalized: nothing is asked again (the daemon would refuse).
//! - after a finalize the daemon refuses every new transaction ("Reboot initiated") until it
//!   restarts. When the reboot did not come and hkd needs one more transaction (giving the
//!   target up: `restore_booted`), it restarts `rpm-ostreed.service` through systemd's D-Bus
//!   API and asks the new instance. Chosen over a sequence without transactions because
//!   removing the unlocked target is the only way to keep it from booting unverified later;
//!   and a restart is harmless: a shutdown under way refuses the restart job, and the error
//!   says so.
//! - rollback: `Rollback`, only when the booted deployment is still the default (rpm-ostree's
//!   rollback flips back when repeated).
//! - unstage: `Cleanup(["pending-deploy"])`, only when something is staged (it would also
//!   remove a rollback already made default).
//! - cleanup: `Cleanup(["base"])`; rpm-ostree itself keeps no more than booted, pending and
//!   rollback (plus pinned) deployments.
//!
//! Verification: the daemon verifies container images against policy.json and commits against
//! their remote's keys; this side refuses unverified references unless configured, before any
//! D-Bus call.

pub mod caller;
pub mod errors;
pub mod status;
pub mod target;
pub mod transaction;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::blocking::fdo::DBusProxy;
use zbus::blocking::{Connection, Proxy};
use zbus::names::BusName;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::{Backend, Deployments, OsError};
use crate::image_ref::{ImagePolicy, ImageRef, Kind, Verification};
use status::{ActiveTransaction, DeploymentDict, View};
use target::is_target;
pub use transaction::{Observer, Progress};

pub const BUS_NAME: &str = "org.projectatomic.rpmostree1";
const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";
const SYSROOT_INTERFACE: &str = "org.projectatomic.rpmostree1.Sysroot";
const OS_INTERFACE: &str = "org.projectatomic.rpmostree1.OS";

/// systemd's manager, to restart the daemon after a finalize whose reboot did not come.
const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";
const DAEMON_UNIT: &str = "rpm-ostreed.service";
/// How long a restarted daemon may take to be back on the bus (it loads the sysroot).
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// How hkd names itself to the daemon (`rpm-ostree status` shows the update driver).
const CLIENT_ID: &str = "hkd";
const DRIVER_NAME: &str = "hkd (Housekeeper)";

/// A call on the daemon returns at once (work happens in transactions), but bus activation
/// of an idle-exited daemon takes a few seconds on a loaded host.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Staging pulls a whole OS image; on a slow link that takes long, and a stuck pull must
/// still end.
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(3600);

/// The rpm-ostree backend. Only the bus differs between production ([`RpmOstree::system`])
/// and tests ([`RpmOstree::at_address`]).
pub struct RpmOstree {
    bus: Connection,
    /// Whether targets that nothing verifies are accepted.
    policy: ImagePolicy,
    transaction_timeout: Duration,
    observer: Option<Arc<Observer>>,
    /// The daemon instance (unique bus name) hkd registered with; a new instance after an
    /// idle exit or restart needs registering again.
    registered_with: Mutex<Option<String>>,
    /// The systemd service hkd runs in; None: register-driver is not sent.
    unit: Option<String>,
    /// Whether a checksum target may lie outside the booted origin's branch.
    skip_branch_check: bool,
}

impl RpmOstree {
    /// On the system bus, as on a NestOS host.
    pub fn system(policy: ImagePolicy) -> Result<RpmOstree, OsError> {
        let bus = zbus::blocking::connection::Builder::system()
            .map(|b| b.method_timeout(CALL_TIMEOUT))
            .and_then(|b| b.build())
            .map_err(|e| {
                OsError::Unavailable(format!(
                    "connecting to the system D-Bus: {e}; is dbus running?"
                ))
            })?;
        RpmOstree::on_bus(bus, policy)
    }

    /// On the bus at `address` (a private bus in tests).
    pub fn at_address(address: &str, policy: ImagePolicy) -> Result<RpmOstree, OsError> {
        let bus = zbus::blocking::connection::Builder::address(address)
            .map(|b| b.method_timeout(CALL_TIMEOUT))
            .and_then(|b| b.build())
            .map_err(|e| {
                OsError::Unavailable(format!("connecting to the D-Bus at {address}: {e}"))
            })?;
        RpmOstree::on_bus(bus, policy)
    }

    /// On an open bus connection; registers with the daemon (starting it if needed).
    pub fn on_bus(bus: Connection, policy: ImagePolicy) -> Result<RpmOstree, OsError> {
        let backend = RpmOstree {
            bus,
            policy,
            transaction_timeout: DEFAULT_TRANSACTION_TIMEOUT,
            observer: None,
            registered_with: Mutex::new(None),
            unit: caller::own_service_unit(Path::new("/proc")),
            skip_branch_check: false,
        };
        backend.ensure_client("registering with rpm-ostreed")?;
        Ok(backend)
    }

    /// Decides from `proc_root` (`/proc` on a host) whether hkd runs in a systemd service, and
    /// so whether it registers as the update driver when staging.
    pub fn with_proc_root(mut self, proc_root: &Path) -> RpmOstree {
        self.unit = caller::own_service_unit(proc_root);
        match &self.unit {
            Some(unit) => tracing::info!(
                "hkd runs in {unit}: it registers as rpm-ostree's update driver when staging"
            ),
            None => tracing::info!(
                "hkd runs outside a systemd service (a shell, a container): it stages without \
                 registering as rpm-ostree's update driver, which rpm-ostreed accepts only from \
                 a unit"
            ),
        }
        self
    }

    /// Lets a checksum target be deployed although it is not in the history of the booted
    /// origin's branch (`os.skip_branch_check`).
    pub fn with_skip_branch_check(mut self, skip: bool) -> RpmOstree {
        self.skip_branch_check = skip;
        self
    }

    pub fn with_transaction_timeout(mut self, timeout: Duration) -> RpmOstree {
        self.transaction_timeout = timeout;
        self
    }

    /// Sends each transaction's progress to `observer` as well as to the log.
    pub fn with_observer(mut self, observer: Arc<Observer>) -> RpmOstree {
        self.observer = Some(observer);
        self
    }

    fn proxy<'p>(&self, path: &'p str, interface: &'static str) -> Result<Proxy<'p>, OsError> {
        zbus::blocking::proxy::Builder::new(&self.bus)
            .destination(BUS_NAME)
            .and_then(|b| b.path(path))
            .and_then(|b| b.interface(interface))
            .map(|b| b.cache_properties(CacheProperties::No))
            .and_then(|b| b.build())
            .map_err(|e| OsError::Failed(format!("making a proxy for {path}: {e}")))
    }

    fn sysroot(&self) -> Result<Proxy<'static>, OsError> {
        self.proxy(SYSROOT_PATH, SYSROOT_INTERFACE)
    }

    /// Registers with the daemon unless this instance of it already knows hkd.
    fn ensure_client(&self, action: &str) -> Result<(), OsError> {
        let owner = || self.owner();
        let mut registered = self
            .registered_with
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let (Some(now), Some(before)) = (owner(), registered.as_ref()) {
            if &now == before {
                return Ok(());
            }
        }
        let sysroot = self.sysroot()?;
        let options = HashMap::from([("id", Value::from(CLIENT_ID))]);
        retry_once(action, || {
            sysroot.call::<_, _, ()>("RegisterClient", &(&options,))
        })?;
        *registered = owner();
        Ok(())
    }

    fn deployments(&self, action: &str) -> Result<Deployments, OsError> {
        self.view(action).map(|v| v.all)
    }

    /// The deployments with what only this backend reads of them.
    fn view(&self, action: &str) -> Result<View, OsError> {
        let sysroot = self.sysroot()?;
        let dicts = retry_once(action, || {
            sysroot.get_property::<Vec<DeploymentDict>>("Deployments")
        })?;
        status::parse_view(&dicts).map_err(|e| {
            OsError::Failed(format!("{action}: reading rpm-ostree's deployments: {e}"))
        })
    }

    /// The daemon's unique bus name now, if it runs.
    fn owner(&self) -> Option<String> {
        let dbus = DBusProxy::new(&self.bus).ok()?;
        let name = BusName::try_from(BUS_NAME).ok()?;
        dbus.get_name_owner(name).ok().map(|o| o.to_string())
    }

    /// Restarts rpm-ostreed through systemd and waits for the new instance on the bus: the only
    /// way out of the daemon's "Reboot initiated" state when the reboot did not come.
    fn restart_daemon(&self, action: &str) -> Result<(), OsError> {
        let before = self.owner();
        tracing::warn!(
            "{action}: rpm-ostreed refuses transactions after a finalize whose reboot did not \
             come; restarting {DAEMON_UNIT}"
        );
        let manager = zbus::blocking::Proxy::new(&self.bus, SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER)
            .map_err(|e| OsError::Failed(format!("{action}: reaching systemd: {e}")))?;
        manager
            .call::<_, _, OwnedObjectPath>("RestartUnit", &(DAEMON_UNIT, "replace"))
            .map_err(|e| {
                OsError::Failed(format!(
                    "{action}: rpm-ostreed refuses new transactions until it restarts, and \
                     restarting {DAEMON_UNIT} through systemd failed: {e}"
                ))
            })?;
        let deadline = Instant::now() + RESTART_TIMEOUT;
        loop {
            match self.owner() {
                Some(now) if Some(&now) != before.as_ref() => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(OsError::Unavailable(format!(
                        "{action}: {DAEMON_UNIT} was restarted but is not back on the bus after \
                         {}s; {}",
                        RESTART_TIMEOUT.as_secs(),
                        errors::CHECK_DAEMON
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The booted OS object.
    fn os(&self, action: &str) -> Result<Proxy<'static>, OsError> {
        let sysroot = self.sysroot()?;
        let booted = retry_once(action, || sysroot.get_property::<OwnedObjectPath>("Booted"))?;
        let path = if booted.as_str() == "/" {
            // Not booted into a deployment (an image build): the daemon's default OS.
            retry_once(action, || {
                sysroot.call::<_, _, OwnedObjectPath>("GetOS", &("",))
            })?
        } else {
            booted
        };
        zbus::blocking::proxy::Builder::new(&self.bus)
            .destination(BUS_NAME)
            .and_then(|b| b.path(path.clone()))
            .and_then(|b| b.interface(OS_INTERFACE))
            .map(|b| b.cache_properties(CacheProperties::No))
            .and_then(|b| b.build())
            .map_err(|e| OsError::Failed(format!("{action}: making a proxy for {path}: {e}")))
    }

    /// Runs `method` on the OS object as one transaction, to its end.
    fn transact<B>(&self, action: &str, method: &str, body: &B) -> Result<(), OsError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.ensure_client(action)?;
        let sysroot = self.sysroot()?;
        let active = retry_once(action, || {
            sysroot.get_property::<ActiveTransaction>("ActiveTransaction")
        })?;
        if status::is_active(&active) {
            return Err(OsError::Busy(format!(
                "{action}: rpm-ostreed is running {} for {}",
                active.0, active.1
            )));
        }
        let os = self.os(action)?;
        let address = match os.call::<_, _, String>(method, body) {
            Ok(address) => address,
            Err(e) if errors::is_reboot_initiated(&e) => {
                self.restart_daemon(action)?;
                self.ensure_client(action)?;
                let os = self.os(action)?;
                retry_once(action, || os.call::<_, _, String>(method, body))?
            }
            Err(e) if errors::is_no_reply(&e) => {
                tracing::info!("{action}: rpm-ostreed exited without answering; asking again");
                self.ensure_client(action)?;
                let os = self.os(action)?;
                os.call::<_, _, String>(method, body)
                    .map_err(|e| errors::from_call(action, e))?
            }
            Err(e) => return Err(errors::from_call(action, e)),
        };
        tracing::debug!("{action}: {method} runs at {address}");
        transaction::follow(
            &address,
            action,
            self.transaction_timeout,
            self.observer.as_deref(),
        )
    }
}

/// Calls `f`, and once more if the daemon went away without answering (its idle exit).
fn retry_once<T>(action: &str, f: impl Fn() -> zbus::Result<T>) -> Result<T, OsError> {
    match f() {
        Err(e) if errors::is_no_reply(&e) => {
            tracing::info!("{action}: rpm-ostreed exited without answering; asking again");
            f().map_err(|e| errors::from_call(action, e))
        }
        other => other.map_err(|e| errors::from_call(action, e)),
    }
}

/// What a stage came to, read from the deployments after the transaction.
#[derive(Debug)]
enum Settled {
    /// The target is staged and locked.
    Staged(String),
    /// The target is staged but unlocked: shutdown would finalize it.
    Unlocked(String),
    /// The target is booted already: nothing to stage.
    Booted(String),
    Failed(OsError),
}

/// Decides what a stage came to from the deployments read after it, whatever the transaction
/// said (`failure`): the daemon can fail or be cancelled after the target was deployed.
fn settle_stage(
    action: &str,
    target: &ImageRef,
    failure: Option<OsError>,
    after: &View,
) -> Settled {
    match (after.staged(), after.booted()) {
        (Some((staged, reported)), _) if is_target(target, reported) => {
            if let Some(e) = &failure {
                tracing::warn!(
                    "{action}: rpm-ostreed reported a failure ({e}), but the target is staged \
                     as {}",
                    staged.checksum
                );
            }
            if staged.finalization_locked {
                Settled::Staged(staged.checksum.clone())
            } else {
                Settled::Unlocked(staged.checksum.clone())
            }
        }
        (Some((staged, _)), _) => {
            let what = format!(
                "{} from {} is staged, not the target",
                staged.checksum,
                staged.origin.as_deref().unwrap_or("an unknown origin")
            );
            Settled::Failed(match failure {
                Some(e) => OsError::Failed(format!("{e}; {what}")),
                None => OsError::State(format!("{action}: rpm-ostreed finished, but {what}")),
            })
        }
        (None, Some((booted, reported))) if failure.is_none() && is_target(target, reported) => {
            Settled::Booted(booted.checksum.clone())
        }
        (None, _) => Settled::Failed(failure.unwrap_or_else(|| {
            OsError::State(format!(
                "{action}: rpm-ostreed finished, but nothing is staged"
            ))
        })),
    }
}

impl Backend for RpmOstree {
    fn status(&self) -> Result<Deployments, OsError> {
        let action = "reading rpm-ostree's deployments";
        self.ensure_client(action)?;
        self.deployments(action)
    }

    fn stage(&self, target: &ImageRef) -> Result<String, OsError> {
        self.policy.admit(target)?;
        if target.verification == Verification::Unverified {
            tracing::warn!(
                "staging {target}, which nothing verifies (os.allow_unverified_images = true)"
            );
        }
        let action = format!("staging {target}");
        self.ensure_client(&action)?;
        if let Some((staged, reported)) = self.view(&action)?.staged() {
            if is_target(target, reported) {
                if staged.finalization_locked {
                    return Ok(staged.checksum.clone()); // already staged: nothing to do
                }
                // Staged by someone else, or unlocked since: staging it again would leave it
                // unlocked ("No change"), so remove it first.
                tracing::warn!(
                    "{action}: {} is staged but not locked; staging it again",
                    staged.checksum
                );
                self.unstage()?;
            }
        }
        let modifiers = match target.kind {
            Kind::Checksum => HashMap::from([("set-revision", Value::from(target.raw.as_str()))]),
            Kind::Container | Kind::OstreeRef { .. } => {
                HashMap::from([("set-refspec", Value::from(target.raw.as_str()))])
            }
        };
        let mut options = HashMap::from([
            ("lock-finalization", Value::from(true)),
            // The target is chosen by the cluster, which may roll back to an older version.
            ("allow-downgrade", Value::from(true)),
            (
                "initiating-command-line",
                Value::from(format!("hkd stage {}", target.raw)),
            ),
        ]);
        if self.unit.is_some() {
            options.insert("register-driver", Value::from(DRIVER_NAME));
        }
        if target.kind == Kind::Checksum && self.skip_branch_check {
            options.insert("skip-branch-check", Value::from(true));
        }
        let failure = self
            .transact(&action, "UpdateDeployment", &(&modifiers, &options))
            .err();

        // Read again whatever the transaction said: it may have staged the target and failed
        // after, or have been cut off (the daemon gone) with the work done.
        let after = match self.view(&action) {
            Ok(after) => after,
            Err(read) => {
                return Err(match failure {
                    Some(e) => OsError::Failed(format!(
                        "{e}; reading the deployments again failed too: {read}"
                    )),
                    None => read,
                })
            }
        };
        match settle_stage(&action, target, failure, &after) {
            Settled::Staged(checksum) => Ok(checksum),
            Settled::Booted(checksum) => {
                tracing::info!("{action}: the booted deployment already is the target");
                Ok(checksum)
            }
            Settled::Unlocked(checksum) => {
                // Unlocked, it would boot at the next shutdown, unverified and undrained.
                let removed = match self.unstage() {
                    Ok(()) => "removed it".to_owned(),
                    Err(e) => format!("removing it failed: {e}"),
                };
                Err(OsError::State(format!(
                    "{action}: {checksum} is staged but not finalization-locked (something else \
                     unlocked it); {removed}"
                )))
            }
            Settled::Failed(e) => Err(e),
        }
    }

    fn unstage(&self) -> Result<(), OsError> {
        let action = "removing the staged deployment";
        self.ensure_client(action)?;
        if self.deployments(action)?.staged().is_none() {
            return Ok(());
        }
        self.transact(action, "Cleanup", &(vec!["pending-deploy"],))?;
        match self.deployments(action)?.staged() {
            None => Ok(()),
            Some(d) => Err(OsError::Failed(format!(
                "{action}: {} is still staged after rpm-ostree's cleanup",
                d.checksum
            ))),
        }
    }

    fn finalize(&self, checksum: &str) -> Result<(), OsError> {
        let action = format!("finalizing {checksum}");
        self.ensure_client(&action)?;
        let view = self.view(&action)?;
        let Some((staged, reported)) = view.staged() else {
            // Already finalized (a repeat after a crash) when the default is the target.
            return if view
                .all
                .default_deployment()
                .is_some_and(|d| d.checksum == checksum)
            {
                Ok(())
            } else {
                Err(OsError::State(format!(
                    "{action}: nothing is staged, and the default deployment is not {checksum}"
                )))
            };
        };
        if staged.checksum != checksum {
            return Err(OsError::State(format!(
                "{action}: the staged deployment is {} from {}: it was replaced by someone \
                 else; nothing was finalized",
                staged.checksum,
                staged.origin.as_deref().unwrap_or("an unknown origin")
            )));
        }
        if !staged.finalization_locked {
            // Finalized already (by an earlier call whose reboot did not come, or by someone
            // else): shutdown finalizes it. Asking the daemon again would only be refused.
            tracing::info!("{action}: the staged deployment is unlocked already");
            return Ok(());
        }
        let options = HashMap::from([
            // The daemon compares this with the staged deployment's base commit.
            ("checksum", Value::from(reported.finalize_checksum())),
            ("initiating-command-line", Value::from("hkd finalize")),
        ]);
        self.transact(&action, "FinalizeDeployment", &(&options,))
    }

    fn rollback(&self) -> Result<(), OsError> {
        let action = "rolling back";
        self.ensure_client(action)?;
        let mut all = self.deployments(action)?;
        if all.staged().is_some() {
            // A staged target must not boot after a rollback.
            self.unstage()?;
            all = self.deployments(action)?;
        }
        let Some(previous) = all.rollback() else {
            return Err(OsError::State(format!(
                "{action}: there is no deployment to roll back to"
            )));
        };
        let booted_is_default = all
            .default_deployment()
            .is_some_and(|d| d.booted || all.booted().is_none());
        if !booted_is_default {
            return Ok(()); // the rollback target already boots next (a repeat after a crash)
        }
        let action = format!("rolling back to {}", previous.checksum);
        let options = HashMap::from([("reboot", Value::from(false))]);
        self.transact(&action, "Rollback", &(&options,))
    }

    fn restore_booted(&self) -> Result<(), OsError> {
        let action = "making the booted deployment the default again";
        self.ensure_client(action)?;
        let all = self.deployments(action)?;
        if all.staged().is_some() {
            // A finalized (unlocked) target would boot at the next shutdown: remove it.
            return self.unstage();
        }
        if all.default_deployment().is_none_or(|d| d.booted) {
            return Ok(());
        }
        // With the booted deployment not first, rpm-ostree's Rollback moves it back to the front.
        let options = HashMap::from([("reboot", Value::from(false))]);
        self.transact(action, "Rollback", &(&options,))
    }

    fn cleanup(&self) -> Result<(), OsError> {
        self.transact("cleaning up deployments", "Cleanup", &(vec!["base"],))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::Deployment;
    use target::Reported;

    const SIGNED: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";

    fn entry(checksum: &str, origin: &str, staged: bool, locked: bool) -> (Deployment, Reported) {
        let d = Deployment {
            osname: "nestos".into(),
            checksum: checksum.into(),
            serial: 0,
            version: None,
            origin: Some(origin.into()),
            booted: !staged,
            staged,
            pinned: false,
            finalization_locked: locked,
        };
        let r = Reported {
            checksum: checksum.into(),
            origin: Some(origin.into()),
            ..Reported::default()
        };
        (d, r)
    }

    fn view(entries: Vec<(Deployment, Reported)>) -> View {
        let (deployments, reported) = entries.into_iter().unzip();
        View {
            all: Deployments { deployments },
            reported,
        }
    }

    fn target() -> ImageRef {
        ImageRef::parse_any(SIGNED).unwrap()
    }

    fn failure() -> Option<OsError> {
        Some(OsError::Failed(
            "staging X: the transaction was cancelled".into(),
        ))
    }

    #[test]
    fn a_stage_is_settled_by_what_is_deployed_not_by_what_the_transaction_said() {
        let booted = entry("1", "nestos:old", false, false);
        let ours_locked = view(vec![entry("2", SIGNED, true, true), booted.clone()]);
        for said in [None, failure()] {
            assert!(matches!(
                settle_stage("staging X", &target(), said, &ours_locked),
                Settled::Staged(c) if c == "2"
            ));
        }
        let ours_unlocked = view(vec![entry("2", SIGNED, true, false), booted.clone()]);
        assert!(matches!(
            settle_stage("staging X", &target(), failure(), &ours_unlocked),
            Settled::Unlocked(c) if c == "2"
        ));
        // Someone else's: named, with the failure when there was one.
        let theirs = view(vec![
            entry("9", "nestos:testing", true, false),
            booted.clone(),
        ]);
        match settle_stage("staging X", &target(), None, &theirs) {
            Settled::Failed(OsError::State(m)) => {
                assert!(
                    m.contains("9 from nestos:testing is staged, not the target"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        match settle_stage("staging X", &target(), failure(), &theirs) {
            Settled::Failed(OsError::Failed(m)) => {
                assert!(
                    m.starts_with("staging X: the transaction was cancelled; 9 from"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Nothing staged: the failure as it was, or "nothing is staged".
        let nothing = view(vec![booted]);
        assert!(matches!(
            settle_stage("staging X", &target(), failure(), &nothing),
            Settled::Failed(OsError::Failed(m)) if m.contains("cancelled")
        ));
        assert!(matches!(
            settle_stage("staging X", &target(), None, &nothing),
            Settled::Failed(OsError::State(m)) if m.contains("nothing is staged")
        ));
        // The target booted already, and the daemon said nothing was wrong.
        let booted_target = view(vec![entry("2", SIGNED, false, false)]);
        assert!(matches!(
            settle_stage("staging X", &target(), None, &booted_target),
            Settled::Booted(c) if c == "2"
        ));
    }
}
