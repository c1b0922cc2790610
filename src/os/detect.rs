//! Which backend drives this host, and opening it: the decision is a pure function of the
//! setting and one observed fact (is rpm-ostreed on the system bus); the bus lookup is kept
//! thin beside it.

use std::path::Path;
use std::sync::Arc;

use zbus::blocking::fdo::DBusProxy;
use zbus::blocking::Connection;
use zbus::names::BusName;

use super::ostree::Ostree;
use super::rpmostree::{Observer, RpmOstree, BUS_NAME};
use super::{Backend, OsError};
use crate::config::hkd::{BackendSetting as Setting, Os as Settings};
use crate::image_ref::ImagePolicy;

/// The backend to construct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    RpmOstree,
    Ostree,
}

/// `os.backend` decides unless it is `auto`; then rpm-ostreed on the bus means rpm-ostree.
pub fn choose(setting: Setting, rpm_ostreed_on_bus: bool) -> Choice {
    match setting {
        Setting::RpmOstree => Choice::RpmOstree,
        Setting::Ostree => Choice::Ostree,
        Setting::Auto if rpm_ostreed_on_bus => Choice::RpmOstree,
        Setting::Auto => Choice::Ostree,
    }
}

/// Whether rpm-ostreed runs or can be started on `bus` (it is bus-activated and exits when
/// idle, so "activatable" counts). Does not start it.
pub fn rpm_ostreed_on_bus(bus: &Connection) -> zbus::Result<bool> {
    let dbus = DBusProxy::new(bus)?;
    let name = BusName::try_from(BUS_NAME)?;
    if dbus.name_has_owner(name)? {
        return Ok(true);
    }
    Ok(dbus
        .list_activatable_names()?
        .iter()
        .any(|n| n.as_str() == BUS_NAME))
}

/// The observation for [`choose`] on this host: false when there is no system bus at all.
pub fn rpm_ostreed_on_system_bus() -> bool {
    match Connection::system() {
        Ok(bus) => rpm_ostreed_on_bus(&bus).unwrap_or_else(|e| {
            tracing::warn!("asking the system bus for {BUS_NAME}: {e}");
            false
        }),
        Err(e) => {
            tracing::info!("no system bus ({e}): not an rpm-ostree host");
            false
        }
    }
}

/// The backend `settings.backend` names for the host at `root` (`/` on a host), and its name
/// for status and logs. `progress` receives what a staging transaction reports, where the
/// backend reports any (rpm-ostree).
pub fn open(
    settings: &Settings,
    root: &Path,
    policy: ImagePolicy,
    progress: Option<Arc<Observer>>,
) -> Result<(Box<dyn Backend>, &'static str), OsError> {
    let setting = settings.backend;
    // Only `auto` needs the fact; looking it up starts nothing.
    let on_bus = setting == Setting::Auto && rpm_ostreed_on_system_bus();
    Ok(match choose(setting, on_bus) {
        Choice::RpmOstree => {
            let mut backend = RpmOstree::system(policy)?
                .with_proc_root(&root.join("proc"))
                .with_skip_branch_check(settings.skip_branch_check);
            if let Some(progress) = progress {
                backend = backend.with_observer(progress);
            }
            (Box::new(backend), "rpm-ostree")
        }
        Choice::Ostree => (Box::new(Ostree::booted_in(root, policy)?), "ostree"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_wins_and_auto_follows_the_bus() {
        for on_bus in [true, false] {
            assert_eq!(choose(Setting::RpmOstree, on_bus), Choice::RpmOstree);
            assert_eq!(choose(Setting::Ostree, on_bus), Choice::Ostree);
        }
        assert_eq!(choose(Setting::Auto, true), Choice::RpmOstree);
        assert_eq!(choose(Setting::Auto, false), Choice::Ostree);
    }
}
