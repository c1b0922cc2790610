//! Rebooting through systemd-logind over D-Bus, honouring inhibitors.
//!
//! logind lets root reboot through a *block* inhibitor (the check is the caller's job, as
//! `systemctl reboot` does it), so hkd lists the inhibitors first: a block inhibitor on
//! shutdown postpones the reboot (the agent asks again, a bounded number of times) unless the
//! configuration says to ignore them. *Delay* inhibitors — the kubelet holds one for graceful
//! node shutdown — are honoured by logind itself during the shutdown. Never by signalling PID 1.

use serde::{Deserialize, Serialize};
use zbus::blocking::{Connection, Proxy};

use super::agent::Rebooter;

const LOGIND: &str = "org.freedesktop.login1";
const MANAGER_PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";

/// One entry of `ListInhibitors`: what, who, why, mode, uid, pid.
pub type Inhibitor = (String, String, String, String, u32, u32);

/// What to do when a block inhibitor holds the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBlocked {
    /// Postpone; the agent asks again and gives the upgrade up after its last attempt.
    #[default]
    Wait,
    /// Reboot anyway, and say so in the log.
    Ignore,
}

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

/// logind on a bus (the system bus in production).
pub struct Logind {
    pub bus: Connection,
    pub on_blocked: OnBlocked,
}

impl Logind {
    pub fn system(on_blocked: OnBlocked) -> Result<Logind, String> {
        let bus = Connection::system().map_err(|e| format!("connecting to the system bus: {e}"))?;
        Ok(Logind { bus, on_blocked })
    }

    fn manager(&self) -> Result<Proxy<'_>, String> {
        Proxy::new(&self.bus, LOGIND, MANAGER_PATH, MANAGER)
            .map_err(|e| format!("reaching systemd-logind: {e}"))
    }
}

impl Rebooter for Logind {
    fn reboot(&self, why: &str) -> Result<(), String> {
        let manager = self.manager()?;
        let inhibitors: Vec<Inhibitor> = manager
            .call("ListInhibitors", &())
            .map_err(|e| format!("listing logind inhibitors: {e}"))?;
        let blocked = blockers(&inhibitors);
        if !blocked.is_empty() {
            match self.on_blocked {
                OnBlocked::Wait => {
                    return Err(format!("the reboot is blocked by {}", blocked.join("; ")));
                }
                OnBlocked::Ignore => {
                    tracing::warn!("rebooting through block inhibitors: {}", blocked.join("; "));
                }
            }
        }
        let delayed = delayers(&inhibitors);
        if !delayed.is_empty() {
            tracing::info!("the shutdown waits for: {}", delayed.join("; "));
        }
        tracing::info!("asking logind to reboot ({why})");
        manager
            .call::<_, _, ()>("Reboot", &(false,))
            .map_err(|e| format!("asking logind to reboot: {e}"))
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
