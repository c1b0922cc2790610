//! A stand-in for systemd's manager, as much as hkd uses of it: `RestartUnit(name, mode)` for
//! `rpm-ostreed.service`, which plays the daemon's restart on the rpm-ostreed stand-in. Real
//! names and signatures; any other unit is refused as systemd refuses an unknown one.

use std::sync::{Arc, Mutex};

use zbus::blocking::Connection;
use zbus::zvariant::OwnedObjectPath;

use super::bus::PrivateBus;

/// What a restart of a unit does.
pub type Restart = Box<dyn Fn() + Send + Sync>;

struct Manager {
    restarts: Arc<Mutex<Vec<String>>>,
    rpm_ostreed: Restart,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    fn restart_unit(&self, name: &str, _mode: &str) -> zbus::fdo::Result<OwnedObjectPath> {
        if name != "rpm-ostreed.service" {
            return Err(zbus::fdo::Error::Failed(format!("Unit {name} not found.")));
        }
        let mut restarts = self.restarts.lock().unwrap();
        restarts.push(name.to_owned());
        (self.rpm_ostreed)();
        Ok(
            OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{}", restarts.len()))
                .expect("an object path"),
        )
    }
}

pub struct StandIn {
    /// The units restarted, in order.
    pub restarts: Arc<Mutex<Vec<String>>>,
    _conn: Connection,
}

impl StandIn {
    pub fn start(bus: &PrivateBus, rpm_ostreed: Restart) -> StandIn {
        let restarts = Arc::new(Mutex::new(Vec::new()));
        let conn = zbus::blocking::connection::Builder::address(bus.address.as_str())
            .and_then(|b| {
                b.serve_at(
                    "/org/freedesktop/systemd1",
                    Manager {
                        restarts: restarts.clone(),
                        rpm_ostreed,
                    },
                )
            })
            .and_then(|b| b.name("org.freedesktop.systemd1"))
            .and_then(|b| b.build())
            .expect("serving the systemd stand-in on the private bus");
        StandIn {
            restarts,
            _conn: conn,
        }
    }
}
