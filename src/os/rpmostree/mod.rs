//! rpm-ostree hosts (NestOS), through rpm-ostreed's D-Bus API (`org.projectatomic.rpmostree1`).
//!
//! The OS object is found through `Sysroot.Booted` (or `GetOS("")`), never by a fixed path. hkd
//! registers as a client (so the daemon does not idle-exit under it) and, when staging, as the
//! update driver. Every change is a transaction followed on its own peer-to-peer connection
//! ([`transaction`]); only one runs at a time, and a daemon busy with someone else's is
//! [`OsError::Busy`] before anything is asked of it.
//!
//! How the trait's promises are kept here:
//! - stage: `UpdateDeployment` with `set-refspec` (the image reference's raw text, unchanged) or
//!   `set-revision` (a checksum), `lock-finalization` so that shutdown does not finalize it.
//! - finalize: `FinalizeDeployment({checksum})`. rpm-ostreed *reboots* at its end (see the
//!   trait's documentation of [`Backend::finalize`]).
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

pub mod errors;
pub mod status;
pub mod transaction;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::blocking::fdo::DBusProxy;
use zbus::blocking::{Connection, Proxy};
use zbus::names::BusName;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::{Backend, Deployment, Deployments, OsError};
use crate::image_ref::{ImagePolicy, ImageRef, Kind, Verification};
use status::{ActiveTransaction, DeploymentDict};
pub use transaction::{Observer, Progress};

pub const BUS_NAME: &str = "org.projectatomic.rpmostree1";
const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";
const SYSROOT_INTERFACE: &str = "org.projectatomic.rpmostree1.Sysroot";
const OS_INTERFACE: &str = "org.projectatomic.rpmostree1.OS";

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
        };
        backend.ensure_client("registering with rpm-ostreed")?;
        Ok(backend)
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
        let owner = || -> Option<String> {
            let dbus = DBusProxy::new(&self.bus).ok()?;
            let name = BusName::try_from(BUS_NAME).ok()?;
            dbus.get_name_owner(name).ok().map(|o| o.to_string())
        };
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
        let sysroot = self.sysroot()?;
        let dicts = retry_once(action, || {
            sysroot.get_property::<Vec<DeploymentDict>>("Deployments")
        })?;
        status::parse_deployments(&dicts).map_err(|e| {
            OsError::Failed(format!("{action}: reading rpm-ostree's deployments: {e}"))
        })
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
        let address = retry_once(action, || os.call::<_, _, String>(method, body))?;
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

/// Whether `d` is what `target` names.
fn is_target(target: &ImageRef, d: &Deployment) -> bool {
    match target.kind {
        Kind::Checksum => d.checksum == target.raw,
        Kind::Container | Kind::OstreeRef { .. } => d.origin.as_deref() == Some(&target.raw),
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
        if let Some(staged) = self.deployments(&action)?.staged() {
            if is_target(target, staged) {
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
        let options = HashMap::from([
            ("lock-finalization", Value::from(true)),
            // The target is chosen by the cluster, which may roll back to an older version.
            ("allow-downgrade", Value::from(true)),
            ("register-driver", Value::from(DRIVER_NAME)),
            (
                "initiating-command-line",
                Value::from(format!("hkd stage {}", target.raw)),
            ),
        ]);
        self.transact(&action, "UpdateDeployment", &(&modifiers, &options))?;

        let after = self.deployments(&action)?;
        match (after.staged(), after.booted()) {
            (Some(staged), _) if is_target(target, staged) => {
                if staged.finalization_locked {
                    Ok(staged.checksum.clone())
                } else {
                    Err(OsError::State(format!(
                        "{action}: {} is staged but not finalization-locked; something else \
                         unlocked it",
                        staged.checksum
                    )))
                }
            }
            (Some(staged), _) => Err(OsError::State(format!(
                "{action}: rpm-ostreed staged {} from {}, not the target",
                staged.checksum,
                staged.origin.as_deref().unwrap_or("an unknown origin")
            ))),
            (None, Some(booted)) if is_target(target, booted) => {
                tracing::info!("{action}: the booted deployment already is the target");
                Ok(booted.checksum.clone())
            }
            (None, _) => Err(OsError::State(format!(
                "{action}: rpm-ostreed finished, but nothing is staged"
            ))),
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
        let all = self.deployments(&action)?;
        let Some(staged) = all.staged() else {
            // Already finalized (a repeat after a crash) when the default is the target.
            return if all
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
                "{action}: the staged deployment is {}: it was replaced by someone else",
                staged.checksum
            )));
        }
        let mut options = HashMap::from([
            ("checksum", Value::from(checksum)),
            ("initiating-command-line", Value::from("hkd finalize")),
        ]);
        if !staged.finalization_locked {
            // It is our target all the same; shutdown would finalize it anyway.
            tracing::warn!("{action}: the staged deployment was unlocked by someone else");
            options.insert("allow-unlocked", Value::from(true));
        }
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
