//! A simulated host for the cluster simulation: the stand-in for an rpm-ostree machine under
//! one node's hkd, whose state lives in a file so that it survives the hkd process being
//! killed and "rebooted".
//!
//! Stand-ins, each behind the seam production code uses ([`Backend`], [`Rebooter`],
//! [`Observer`]): deployments are entries in `host.json`, staging sleeps `stage_ms` and makes
//! a checksum from the image reference, a reboot boots the default deployment with a fresh
//! boot id and ends the process (the simulation's supervisor starts hkd again, as systemd
//! would at boot). An image reference containing `:bad` boots but fails the health gate
//! (its required check fails); one containing `:unstageable` fails to stage. While a stage
//! runs, the file `staging` exists beside `host.json`, and it reports its progress ten times,
//! as rpm-ostree's transaction signals would, to the observer `hkd run` hands a backend.

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use housekeeper::image_ref::ImageRef;
use housekeeper::node::agent::{Observer, RebootError, Rebooter};
use housekeeper::os::rpmostree::{Observer as ProgressObserver, Progress};
use housekeeper::os::{Backend, Deployment, Deployments, OsError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostState {
    pub boot_id: String,
    /// In boot order: the first starts at the next boot.
    pub deployments: Vec<Deployment>,
    pub boots: u32,
}

/// The file-backed host of one simulated node.
#[derive(Debug, Clone)]
pub struct SimHost {
    pub dir: PathBuf,
    pub stage_time: Duration,
    pub reports: Reports,
}

/// Where staging reports its progress; none by default.
#[derive(Clone, Default)]
pub struct Reports(pub Option<Arc<ProgressObserver>>);

impl fmt::Debug for Reports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Reports(on)"
        } else {
            "Reports(off)"
        })
    }
}

/// The size of a simulated pull, for its progress reports.
const PULL_BYTES: u64 = 720 * 1024 * 1024;
const PULL_OBJECTS: u32 = 180;

fn checksum_of(image: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(image.as_bytes()))
}

pub fn deployment(image: &str, booted: bool, staged: bool) -> Deployment {
    Deployment {
        osname: "nestos".into(),
        checksum: checksum_of(image),
        serial: 0,
        version: None,
        origin: Some(image.to_owned()),
        booted,
        staged,
        pinned: false,
        finalization_locked: staged,
    }
}

impl SimHost {
    fn file(&self) -> PathBuf {
        self.dir.join("host.json")
    }

    /// A host booted into `image`.
    pub fn create(&self, image: &str) -> Result<(), OsError> {
        self.save(&HostState {
            boot_id: random_id(),
            deployments: vec![deployment(image, true, false)],
            boots: 1,
        })
    }

    pub fn load(&self) -> Result<HostState, OsError> {
        let bytes = fs::read(self.file())
            .map_err(|e| OsError::Unavailable(format!("reading {}: {e}", self.file().display())))?;
        serde_json::from_slice(&bytes).map_err(|e| OsError::Failed(format!("host.json: {e}")))
    }

    fn save(&self, state: &HostState) -> Result<(), OsError> {
        // What the health check script reads.
        let booted = state
            .deployments
            .iter()
            .find(|d| d.booted)
            .and_then(|d| d.origin.clone())
            .unwrap_or_default();
        fs::write(self.dir.join("booted-image"), booted)
            .map_err(|e| OsError::Failed(format!("writing booted-image: {e}")))?;
        let tmp = self.dir.join("host.json.tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| OsError::Failed(e.to_string()))?;
        fs::write(&tmp, bytes)
            .and_then(|()| fs::rename(&tmp, self.file()))
            .map_err(|e| OsError::Failed(format!("writing host.json: {e}")))
    }

    fn change(&self, f: impl FnOnce(&mut HostState) -> Result<(), OsError>) -> Result<(), OsError> {
        let mut state = self.load()?;
        f(&mut state)?;
        self.save(&state)
    }

    /// The booted deployment's image.
    pub fn booted_image(&self) -> Option<String> {
        let state = self.load().ok()?;
        state
            .deployments
            .iter()
            .find(|d| d.booted)
            .and_then(|d| d.origin.clone())
    }
}

pub fn random_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Backend for SimHost {
    fn status(&self) -> Result<Deployments, OsError> {
        Ok(Deployments {
            deployments: self.load()?.deployments,
        })
    }

    fn stage(&self, target: &ImageRef) -> Result<String, OsError> {
        // `staging` exists while a pull runs: the observer counts the hosts pulling at once.
        let marker = self.dir.join("staging");
        let _ = fs::write(&marker, target.raw.as_bytes());
        let step = self.stage_time / 10;
        for tenth in 1..=10u32 {
            std::thread::sleep(step);
            if let Some(report) = &self.reports.0 {
                report(&Progress::Percent {
                    text: "Receiving objects".into(),
                    percent: tenth * 10,
                });
                report(&Progress::Download {
                    fetched: PULL_OBJECTS * tenth / 10,
                    requested: PULL_OBJECTS,
                    bytes: PULL_BYTES * u64::from(tenth) / 10,
                    bytes_per_second: (PULL_BYTES as f64 / 10.0 / step.as_secs_f64().max(0.001))
                        as u64,
                });
            }
        }
        let _ = fs::remove_file(&marker);
        if target.raw.contains(":unstageable") {
            return Err(OsError::NotFound(format!(
                "{}: manifest unknown",
                target.raw
            )));
        }
        let checksum = checksum_of(&target.raw);
        self.change(|s| {
            if s.deployments
                .iter()
                .any(|d| d.staged && d.checksum == checksum)
            {
                return Ok(());
            }
            s.deployments.retain(|d| !d.staged);
            let at = 1.min(s.deployments.len());
            s.deployments
                .insert(at, deployment(&target.raw, false, true));
            Ok(())
        })?;
        Ok(checksum)
    }

    fn unstage(&self) -> Result<(), OsError> {
        self.change(|s| {
            s.deployments.retain(|d| !d.staged);
            Ok(())
        })
    }

    fn finalize(&self, checksum: &str) -> Result<(), OsError> {
        self.change(|s| {
            if s.deployments
                .first()
                .is_some_and(|d| d.checksum == checksum && !d.staged)
            {
                return Ok(());
            }
            let i = s
                .deployments
                .iter()
                .position(|d| d.staged && d.checksum == checksum)
                .ok_or_else(|| OsError::State(format!("{checksum} is not staged")))?;
            let mut d = s.deployments.remove(i);
            d.staged = false;
            d.finalization_locked = false;
            s.deployments.insert(0, d);
            Ok(())
        })
    }

    fn rollback(&self) -> Result<(), OsError> {
        self.change(|s| {
            let all = Deployments {
                deployments: s.deployments.clone(),
            };
            let back = all
                .rollback()
                .cloned()
                .ok_or_else(|| OsError::State("no rollback deployment".into()))?;
            s.deployments.retain(|d| d.checksum != back.checksum);
            s.deployments.insert(0, back);
            Ok(())
        })
    }

    fn restore_booted(&self) -> Result<(), OsError> {
        self.change(|s| {
            if let Some(i) = s.deployments.iter().position(|d| d.booted) {
                let d = s.deployments.remove(i);
                s.deployments.insert(0, d);
            }
            Ok(())
        })
    }

    fn cleanup(&self) -> Result<(), OsError> {
        Ok(())
    }
}

/// Reboots the simulated host: the default deployment boots under a new boot id, and this hkd
/// process ends as a shutdown would end it.
pub struct SimReboot {
    pub host: SimHost,
}

impl Rebooter for SimReboot {
    fn reboot(&self, why: &str) -> Result<(), RebootError> {
        self.host
            .change(|s| {
                for d in &mut s.deployments {
                    d.booted = false;
                }
                s.deployments.retain(|d| !d.staged);
                if let Some(first) = s.deployments.first_mut() {
                    first.booted = true;
                }
                s.boot_id = random_id();
                s.boots += 1;
                Ok(())
            })
            .map_err(|e| RebootError::Failed(e.to_string()))?;
        eprintln!("simulated reboot: {why}");
        std::process::exit(0);
    }
}

impl Observer for SimHost {
    fn boot_id(&self) -> anyhow::Result<String> {
        Ok(self.load()?.boot_id)
    }
}
