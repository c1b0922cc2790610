//! Rebooting through systemd-logind over D-Bus, honouring inhibitors.
//!
//! logind lets root reboot through a *block* inhibitor (the check is the caller's job, as
//! `systemctl reboot` does it), so hkd lists the inhibitors first: a block inhibitor on
//! shutdown postpones the reboot — the agent waits, names the holder in `hkd status` and asks
//! again every `reboot.retry` until it is released — unless the configuration says to ignore
//! them. On rpm-ostree that setting cannot reach past the daemon: its FinalizeDeployment
//! refuses while a block inhibitor is held, and the agent waits the same way. *Delay* inhibitors — the kubelet holds one for graceful
//! node shutdown — are honoured by logind itself during the shutdown. Never by signalling PID 1.

use zbus::blocking::{Connection, Proxy};

use super::agent::{RebootError, Rebooter};
pub use crate::config::hkd::OnBlocked;

const LOGIND: &str = "org.freedesktop.login1";
const MANAGER_PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";

/// One entry of `ListInhibitors`: what, who, why, mode, uid, pid.
pub type Inhibitor = (String, String, String, String, u32, u32);

/// The inhibitors that block a shutdown, described for people (`kubelet: graceful shutdown`).
pub fn blockers(inhibitors: &[Inhibitor]) -> Vec<String> {
    inhibitors
        .iter()
        .filter(|(what, _, _, mode, _, _)| {
            mode == "block" && what.split(':').any(|w| w == "shutdown")
        })
        .map(|(_, who, why, _, _, pid)| format!("{who} (pid {pid}): {why}"))
        .collect()
}

/// Delay inhibitors on shutdown, for the log.
fn delayers(inhibitors: &[Inhibitor]) -> Vec<String> {
    inhibitors
        .iter()
        .filter(|(what, _, _, mode, _, _)| {
            mode == "delay" && what.split(':').any(|w| w == "shutdown")
        })
        .map(|(_, who, why, _, _, _)| format!("{who}: {why}"))
        .collect()
}

/// logind on the system bus. The connection is made when a reboot is asked for and dropped
/// after: an idle agent holds no bus connection, and so has no bus threads waking up.
pub struct Logind {
    pub on_blocked: OnBlocked,
    /// The bus to find logind on; None is the system bus.
    pub address: Option<String>,
}

impl Logind {
    pub fn system(on_blocked: OnBlocked) -> Logind {
        Logind {
            on_blocked,
            address: None,
        }
    }

    fn connect(&self) -> Result<Connection, RebootError> {
        match &self.address {
            None => Connection::system()
                .map_err(|e| RebootError::Failed(format!("connecting to the system bus: {e}"))),
            Some(address) => zbus::blocking::connection::Builder::address(address.as_str())
                .and_then(|b| b.build())
                .map_err(|e| {
                    RebootError::Failed(format!("connecting to the bus at {address}: {e}"))
                }),
        }
    }
}

fn manager(bus: &Connection) -> Result<Proxy<'_>, RebootError> {
    Proxy::new(bus, LOGIND, MANAGER_PATH, MANAGER)
        .map_err(|e| RebootError::Failed(format!("reaching systemd-logind: {e}")))
}

impl Logind {
    /// The inhibitors now; Err when a block inhibitor holds the shutdown and policy is wait.
    fn inhibitors(&self, manager: &Proxy<'_>) -> Result<Vec<Inhibitor>, RebootError> {
        let inhibitors: Vec<Inhibitor> = manager
            .call("ListInhibitors", &())
            .map_err(|e| RebootError::Failed(format!("listing logind inhibitors: {e}")))?;
        let blocked = blockers(&inhibitors);
        if !blocked.is_empty() {
            match self.on_blocked {
                OnBlocked::Wait => {
                    return Err(RebootError::Blocked(blocked));
                }
                OnBlocked::Ignore => {
                    tracing::warn!("rebooting through block inhibitors: {}", blocked.join("; "));
                }
            }
        }
        Ok(inhibitors)
    }
}

impl Rebooter for Logind {
    fn check(&self) -> Result<(), RebootError> {
        let bus = self.connect()?;
        let manager = manager(&bus)?;
        self.inhibitors(&manager).map(drop)
    }

    fn reboot(&self, why: &str) -> Result<(), RebootError> {
        let bus = self.connect()?;
        let manager = manager(&bus)?;
        let inhibitors = self.inhibitors(&manager)?;
        let delayed = delayers(&inhibitors);
        if !delayed.is_empty() {
            tracing::info!("the shutdown waits for: {}", delayed.join("; "));
        }
        tracing::info!("asking logind to reboot ({why})");
        manager
            .call::<_, _, ()>("Reboot", &(false,))
            .map_err(|e| RebootError::Failed(format!("asking logind to reboot: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inhibitor(what: &str, who: &str, mode: &str) -> Inhibitor {
        (what.into(), who.into(), "busy".into(), mode.into(), 0, 42)
    }

    #[test]
    fn only_block_inhibitors_on_shutdown_block() {
        let list = vec![
            inhibitor("shutdown", "kubelet", "delay"),
            inhibitor("sleep:idle", "gnome", "block"),
            inhibitor("sleep:shutdown", "backup", "block"),
            inhibitor("handle-power-key", "logind", "block"),
        ];
        assert_eq!(blockers(&list), vec!["backup (pid 42): busy"]);
        assert_eq!(delayers(&list), vec!["kubelet: busy"]);
        assert!(blockers(&[]).is_empty());
    }
}
