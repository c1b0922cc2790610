//! A heartbeat: what a long-running loop of the cluster side calls each time it makes progress
//! (a coordinator's wake-up, a drain's poll), so that whoever runs it can tell a loop that
//! moves from one that hangs. hkd's watchdog listens ([`crate::node`]'s `watchdog`); without a
//! listener a beat does nothing.

use std::fmt;
use std::sync::Arc;

/// A cheap, clonable callback; [`Heartbeat::default`] does nothing.
#[derive(Clone, Default)]
pub struct Heartbeat(Option<Arc<dyn Fn() + Send + Sync>>);

impl Heartbeat {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Heartbeat {
        Heartbeat(Some(Arc::new(f)))
    }

    /// The loop made progress.
    pub fn beat(&self) {
        if let Some(f) = &self.0 {
            f();
        }
    }
}

impl fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Heartbeat(listened)"
        } else {
            "Heartbeat(none)"
        })
    }
}
