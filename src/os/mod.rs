//! The OS deployments of this host (dual-root: booted, staged, rollback) and the backends that
//! change them.
//!
//! One trait, [`Backend`], two implementations: plain OSTree through the `ostree` command
//! ([`ostree::Ostree`]), and rpm-ostree over D-Bus (NestOS). The agent's state machine only
//! ever sees [`Deployments`] and checksums.

pub mod detect;
pub mod ostree;
pub mod rpmostree;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::image_ref::{ImageRef, ImageRefError};

/// One deployment, as the agent and `hkd status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub osname: String,
    pub checksum: String,
    /// Disambiguates two deployments of the same commit.
    pub serial: u32,
    pub version: Option<String>,
    /// What it was deployed from: an OSTree refspec or a container image reference.
    pub origin: Option<String>,
    pub booted: bool,
    pub staged: bool,
    pub pinned: bool,
    pub finalization_locked: bool,
}

/// All deployments in boot order: the first is what the next boot starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployments {
    pub deployments: Vec<Deployment>,
}

impl Deployments {
    pub fn booted(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.booted)
    }

    pub fn staged(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.staged)
    }

    /// What the next boot starts.
    pub fn default_deployment(&self) -> Option<&Deployment> {
        self.deployments.first()
    }

    /// The deployment a rollback returns to: the first one after the booted one that is not
    /// staged (or, when nothing is booted, after the default).
    pub fn rollback(&self) -> Option<&Deployment> {
        let from = self.deployments.iter().position(|d| d.booted).unwrap_or(0);
        self.deployments
            .iter()
            .enumerate()
            .find(|(i, d)| *i != from && !d.staged && !d.booted)
            .map(|(_, d)| d)
    }
}

/// Why a backend could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error(transparent)]
    ImageRef(#[from] ImageRefError),
    /// The backend or its daemon is not there.
    #[error("{0}")]
    Unavailable(String),
    /// Another operation holds the system (an rpm-ostree transaction, a concurrent deploy).
    #[error("the OS is busy: {0}; hkd retries later")]
    Busy(String),
    /// Not yet: a block-mode shutdown inhibitor holds the reboot that finalizing starts
    /// (rpm-ostree checks them itself); the text names who holds it. Asking again once it is
    /// released succeeds.
    #[error("{0}")]
    Blocked(String),
    /// The target does not exist where it was looked for.
    #[error("{0}")]
    NotFound(String),
    /// The system is not in the state the operation needs (nothing staged, no rollback…).
    #[error("{0}")]
    State(String),
    /// Anything else, with what was being done.
    #[error("{0}")]
    Failed(String),
}

/// The deployments of one host, and the operations the agent needs on them. Each operation is
/// idempotent: asking again for what is already true succeeds and changes nothing.
pub trait Backend: Send + Sync {
    /// The deployments now.
    fn status(&self) -> Result<Deployments, OsError>;

    /// Downloads `target` and deploys it so that it is *not* booted until [`finalize`] — a
    /// reboot or power loss in between starts the current system. Returns the checksum.
    ///
    /// [`finalize`]: Backend::finalize
    fn stage(&self, target: &ImageRef) -> Result<String, OsError>;

    /// Removes what [`Backend::stage`] prepared; nothing staged is fine.
    fn unstage(&self) -> Result<(), OsError>;

    /// Makes the staged `checksum` what the next boot starts.
    ///
    /// Plain OSTree only changes the boot order; the caller reboots. rpm-ostree cannot finalize
    /// without rebooting: its `FinalizeDeployment` first lists logind's inhibitors and refuses
    /// while a `block`-mode shutdown inhibitor is held ([`OsError::Blocked`], whatever hkd's
    /// own `reboot.on_blocked` says), then unlocks the staged deployment and runs
    /// `systemctl reboot` itself (logind honours delay inhibitors such as the kubelet's). So
    /// callers call this only where they would reboot, after their own reboot checks, and treat
    /// success as "the reboot may have begun".
    fn finalize(&self, checksum: &str) -> Result<(), OsError>;

    /// Makes the rollback deployment what the next boot starts. Does not reboot.
    fn rollback(&self) -> Result<(), OsError>;

    /// Makes the booted deployment what the next boot starts again (after a finalized target
    /// was given up without its reboot). Nothing to do when it already is. On rpm-ostree the
    /// daemon refuses transactions after a finalize until it restarts; the backend restarts it
    /// through systemd first (see `rpmostree`'s module documentation).
    fn restore_booted(&self) -> Result<(), OsError>;

    /// Removes deployments that are neither booted, default, rollback nor pinned, and prunes.
    fn cleanup(&self) -> Result<(), OsError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(checksum: &str, booted: bool, staged: bool) -> Deployment {
        Deployment {
            osname: "testos".into(),
            checksum: checksum.into(),
            serial: 0,
            version: None,
            origin: None,
            booted,
            staged,
            pinned: false,
            finalization_locked: false,
        }
    }

    #[test]
    fn roles_follow_boot_order() {
        let all = Deployments {
            deployments: vec![
                d("new", false, true),
                d("cur", true, false),
                d("old", false, false),
            ],
        };
        assert_eq!(all.staged().unwrap().checksum, "new");
        assert_eq!(all.booted().unwrap().checksum, "cur");
        assert_eq!(all.rollback().unwrap().checksum, "old");
        assert_eq!(all.default_deployment().unwrap().checksum, "new");

        // Booted into the target, the previous one behind it is the rollback.
        let after = Deployments {
            deployments: vec![d("new", true, false), d("cur", false, false)],
        };
        assert_eq!(after.rollback().unwrap().checksum, "cur");

        // A rollback already made default sits before the booted one.
        let rolled = Deployments {
            deployments: vec![d("cur", false, false), d("new", true, false)],
        };
        assert_eq!(rolled.rollback().unwrap().checksum, "cur");
        assert_eq!(Deployments::default().rollback(), None);
    }
}
