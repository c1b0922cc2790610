//! systemd's watchdog, fed by progress: hkd pings `WATCHDOG=1` only while every loop that must
//! keep moving has shown progress within its bound — the follower (it wakes at least every
//! [`FOLLOWER_TICK`]), a drain while one runs, the coordinator while it runs. A loop that
//! hangs (an await that never returns, a deadlock) stops the pings, and systemd restarts hkd
//! after `WatchdogSec` (hkd.service: 2 min); the journal and the state machine resume the
//! upgrade where it stood.
//!
//! Decision apart from effect: [`overdue`] is pure (the caller passes `now`); [`Liveness`]
//! keeps the beats (a monotonic clock, shared with the loops through
//! [`crate::cluster::heartbeat::Heartbeat`]); [`serve`] is the thread that pings.
//!
//! Guarantees: a part that is not running (no drain in progress, no coordinator on this node)
//! is never overdue; the first overdue part is logged once, by name, with how long it has been
//! silent, before the pings stop.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::heartbeat::Heartbeat;

/// The longest the follower's loop waits without a change before it goes round anyway.
pub const FOLLOWER_TICK: Duration = Duration::from_secs(20);

/// A part's bound: silent longer than this, it is taken for hung.
pub const DEFAULT_BOUND: Duration = Duration::from_secs(90);

/// One part, as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: &'static str,
    /// Running now; a part that is not is never overdue.
    pub active: bool,
    pub last: Instant,
    pub bound: Duration,
}

/// The first active part silent for longer than its bound, and for how long. Pure.
pub fn overdue(parts: &[Part], now: Instant) -> Option<(&'static str, Duration, Duration)> {
    parts.iter().find_map(|p| {
        let silent = now.saturating_duration_since(p.last);
        (p.active && silent > p.bound).then_some((p.name, silent, p.bound))
    })
}

/// The parts' beats, shared by the loops and the watchdog thread.
#[derive(Debug, Default)]
pub struct Liveness {
    parts: Mutex<Vec<Part>>,
}

impl Liveness {
    /// Register a part (inactive until [`Liveness::start`]) and return its heartbeat.
    pub fn part(self: &Arc<Self>, name: &'static str, bound: Duration) -> Heartbeat {
        self.lock().push(Part {
            name,
            active: false,
            last: Instant::now(),
            bound,
        });
        let me = self.clone();
        Heartbeat::new(move || me.beat(name))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Part>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn beat(&self, name: &str) {
        if let Some(p) = self.lock().iter_mut().find(|p| p.name == name) {
            p.last = Instant::now();
        }
    }

    /// The part runs from now on (its clock starts now).
    pub fn start(&self, name: &str) {
        if let Some(p) = self.lock().iter_mut().find(|p| p.name == name) {
            p.active = true;
            p.last = Instant::now();
        }
    }

    /// The part stopped running (ended or paused on purpose).
    pub fn stop(&self, name: &str) {
        if let Some(p) = self.lock().iter_mut().find(|p| p.name == name) {
            p.active = false;
        }
    }

    fn check(&self) -> Option<(&'static str, Duration, Duration)> {
        overdue(&self.lock(), Instant::now())
    }
}

/// Ping systemd's watchdog every half `WatchdogSec` while nothing is overdue; when something
/// is, say which once and stop pinging. Nothing when systemd asked for no watchdog.
pub fn serve(liveness: Arc<Liveness>) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = timeout / 2;
    let _ = thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut told = false;
            loop {
                match liveness.check() {
                    None => {
                        told = false;
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                    Some((name, silent, bound)) if !told => {
                        told = true;
                        tracing::error!(
                            "hkd's {name} made no progress for {silent:?} (bound {bound:?}): \
                         the watchdog is no longer fed and systemd will restart hkd"
                        );
                    }
                    Some(_) => {}
                }
                thread::sleep(period);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &'static str, active: bool, ago: u64, bound: u64, now: Instant) -> Part {
        Part {
            name,
            active,
            last: now - Duration::from_secs(ago),
            bound: Duration::from_secs(bound),
        }
    }

    #[test]
    fn an_active_part_silent_past_its_bound_is_overdue() {
        let now = Instant::now() + Duration::from_secs(1000);
        let parts = [
            part("follower", true, 10, 90, now),
            part("drain", true, 100, 90, now),
        ];
        let (name, silent, bound) = overdue(&parts, now).unwrap();
        assert_eq!(name, "drain");
        assert_eq!(silent, Duration::from_secs(100));
        assert_eq!(bound, Duration::from_secs(90));
    }

    #[test]
    fn an_idle_part_is_never_overdue_and_a_fresh_one_is_fine() {
        let now = Instant::now() + Duration::from_secs(1000);
        let parts = [
            part("coordinator", false, 900, 90, now),
            part("follower", true, 90, 90, now),
        ];
        assert_eq!(overdue(&parts, now), None);
    }

    #[test]
    fn beats_through_the_heartbeat_keep_a_part_fresh() {
        let l = Arc::new(Liveness::default());
        let hb = l.part("drain", Duration::from_millis(50));
        assert_eq!(l.check(), None, "inactive");
        l.start("drain");
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(l.check().map(|o| o.0), Some("drain"));
        hb.beat();
        assert_eq!(l.check(), None);
        l.stop("drain");
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(l.check(), None);
    }
}
