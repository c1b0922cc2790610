//! A stand-in for systemd-logind's Manager, as much as hkd uses of it: `ListInhibitors`
//! (answering a list the test sets) and `Reboot(interactive)` (counted, not performed).
//! Real names and signatures; nothing else of logind.

use std::sync::{Arc, Mutex};

use zbus::blocking::Connection;

use super::bus::PrivateBus;

pub type Inhibitor = (String, String, String, String, u32, u32);

#[derive(Default)]
pub struct State {
    pub inhibitors: Vec<Inhibitor>,
    /// The `interactive` argument of each Reboot call.
    pub reboots: Vec<bool>,
}

struct Manager {
    state: Arc<Mutex<State>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    fn list_inhibitors(&self) -> Vec<Inhibitor> {
        self.state.lock().unwrap().inhibitors.clone()
    }

    fn reboot(&self, interactive: bool) {
        self.state.lock().unwrap().reboots.push(interactive);
    }
}

pub struct StandIn {
    pub state: Arc<Mutex<State>>,
    _conn: Connection,
}

impl StandIn {
    pub fn start(bus: &PrivateBus) -> StandIn {
        let state = Arc::new(Mutex::new(State::default()));
        let conn = zbus::blocking::connection::Builder::address(bus.address.as_str())
            .and_then(|b| {
                b.serve_at(
                    "/org/freedesktop/login1",
                    Manager {
                        state: state.clone(),
                    },
                )
            })
            .and_then(|b| b.name("org.freedesktop.login1"))
            .and_then(|b| b.build())
            .expect("serving the logind stand-in on the private bus");
        StandIn { state, _conn: conn }
    }
}
