//! `hkd status`: the agent's state as a versioned document, and its rendering for people.
//!
//! The document (`apiVersion: hkd.housekeeper.io/v1`, `kind: NodeStatus`) is what
//! `hkd status --json` prints and what the local socket serves; its JSON schema is committed
//! at `schema/node-status.v1.json` and a test keeps it in step with these types. Fields are
//! only ever added within v1.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::machine::{short, Machine, Phase, State};
use crate::os::rpmostree::{Observer, Progress};
use crate::os::Deployment;

pub const API_VERSION: &str = "hkd.housekeeper.io/v1";
pub const KIND: &str = "NodeStatus";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub api_version: String,
    pub kind: String,
    /// The deployment backend in use (`ostree`, `rpm-ostree`).
    pub backend: String,
    /// The id of the running boot.
    pub boot_id: String,
    /// Deployments in boot order; the first starts at the next boot.
    pub deployments: Vec<Deployment>,
    pub upgrade: Upgrade,
    /// The last error met, if the last attempt at anything failed.
    pub last_error: Option<String>,
    /// What the staging transaction reports while it runs (rpm-ostree); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<StagingProgress>,
    /// Why the next step waits, in words: who holds the reboot with a block-mode inhibitor.
    /// Absent when nothing waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The FleetLock lock of a standalone node configured with `fleetlock.url`; absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_lock: Option<FleetLockStatus>,
}

/// Where this node stands with its FleetLock server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetLockStatus {
    /// The server's base URL.
    pub server: String,
    pub group: String,
    /// The id this node asks with (the app-specific machine id Zincati would send).
    pub id: String,
    /// Whether this node holds its lock: taken before the reboot, released once the health
    /// gate passed (or the upgrade ended otherwise).
    pub held: bool,
    /// Why the lock is not taken or released yet: the server's answer, or why it was not
    /// reached. Absent when nothing waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// How far the download of a staging target is, as the backend last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StagingProgress {
    /// What is being fetched or done ("Receiving objects", "Fetching layer sha256:…").
    pub task: Option<String>,
    /// Percent of the current task, when it reports one.
    pub percent: Option<u32>,
    /// Bytes transferred so far.
    pub bytes: u64,
    pub bytes_per_second: u64,
    /// Content objects fetched, of those requested.
    pub objects_fetched: u32,
    pub objects_requested: u32,
}

impl StagingProgress {
    /// Folds one report into what is known.
    pub fn apply(&mut self, p: &Progress) {
        match p {
            Progress::TaskBegin(text) => {
                self.task = Some(text.clone());
                self.percent = None;
            }
            Progress::Percent { text, percent } => {
                self.task = Some(text.clone());
                self.percent = Some(*percent);
            }
            Progress::Download {
                fetched,
                requested,
                bytes,
                bytes_per_second,
            } => {
                self.objects_fetched = *fetched;
                self.objects_requested = *requested;
                self.bytes = *bytes;
                self.bytes_per_second = *bytes_per_second;
            }
            Progress::Message(_) | Progress::TaskEnd(_) | Progress::End => {}
        }
    }

    /// One line for people: "Receiving objects 43 %, 310.0 MiB at 2.0 MiB/s, 90 of 180 objects".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (&self.task, self.percent) {
            (Some(task), Some(p)) => parts.push(format!("{task} {p} %")),
            (Some(task), None) => parts.push(task.clone()),
            (None, Some(p)) => parts.push(format!("{p} %")),
            (None, None) => {}
        }
        if self.bytes > 0 {
            parts.push(format!(
                "{} at {}/s",
                mebibytes(self.bytes),
                mebibytes(self.bytes_per_second)
            ));
        }
        if self.objects_requested > 0 {
            parts.push(format!(
                "{} of {} objects",
                self.objects_fetched, self.objects_requested
            ));
        }
        if parts.is_empty() {
            "started".into()
        } else {
            parts.join(", ")
        }
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Carries a backend's progress reports into the status the agent publishes, while it
/// stages: the backend is built before the agent, so the status is attached later. Reports
/// outside staging (a rollback's, a cleanup's) are left out.
#[derive(Clone, Default)]
pub struct ProgressSink {
    status: Arc<Mutex<Option<Arc<Mutex<NodeStatus>>>>>,
}

impl ProgressSink {
    /// From now on, reports go to `status`.
    pub fn attach(&self, status: Arc<Mutex<NodeStatus>>) {
        if let Ok(mut slot) = self.status.lock() {
            *slot = Some(status);
        }
    }

    /// The observer to give the backend.
    pub fn observer(&self) -> Arc<Observer> {
        let sink = self.clone();
        Arc::new(move |p: &Progress| sink.report(p))
    }

    fn report(&self, p: &Progress) {
        let Some(status) = self.status.lock().ok().and_then(|s| s.clone()) else {
            return;
        };
        let Ok(mut status) = status.lock() else {
            return;
        };
        if status.upgrade.phase == Phase::Staging {
            status
                .progress
                .get_or_insert_with(Default::default)
                .apply(p);
        }
    }
}

/// Where the upgrade state machine stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upgrade {
    /// idle, staging, staged, granted, draining, rebooting, verifying, done, rollingBack,
    /// rolledBack, failed.
    #[schemars(with = "String")]
    pub phase: Phase,
    pub target: Option<String>,
    /// The target's commit, once staged.
    pub checksum: Option<String>,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
    /// What happens next, in words.
    pub pending: Option<String>,
    /// A target that failed here and is not retried until a different one is asked for.
    pub failed_target: Option<String>,
}

impl NodeStatus {
    pub fn new(
        backend: &str,
        machine: &Machine,
        deployments: Vec<Deployment>,
        last_error: Option<String>,
    ) -> Self {
        NodeStatus {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            backend: backend.into(),
            boot_id: machine.boot_id.clone(),
            deployments,
            upgrade: Upgrade::of(machine),
            last_error,
            progress: None,
            waiting: None,
            fleet_lock: None,
        }
    }
}

impl Upgrade {
    fn of(machine: &Machine) -> Upgrade {
        use State as S;
        let state = &machine.state;
        let checksum = match state {
            S::Staged { checksum, .. }
            | S::Granted { checksum, .. }
            | S::Draining { checksum, .. }
            | S::Rebooting { checksum, .. }
            | S::Verifying { checksum, .. }
            | S::Done { checksum, .. }
            | S::RollingBack { checksum, .. } => Some(checksum.clone()),
            S::Idle | S::Staging { .. } | S::RolledBack { .. } | S::Failed { .. } => None,
        };
        let reason = match state {
            S::RollingBack { reason, .. }
            | S::RolledBack { reason, .. }
            | S::Failed { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        let pending = match state {
            S::Idle | S::Done { .. } | S::RolledBack { .. } | S::Failed { .. } => None,
            S::Staging { target } => Some(format!("download and stage {target}")),
            S::Staged { .. } => Some("wait for the cluster to grant this node".into()),
            S::Granted { .. } => Some("cordon and drain this node".into()),
            S::Draining { .. } => Some("finish draining this node".into()),
            S::Rebooting { checksum, .. } => Some(format!("reboot into {}", short(checksum))),
            S::Verifying { .. } => Some("pass the health checks".into()),
            S::RollingBack { .. } => Some("reboot into the previous deployment".into()),
        };
        Upgrade {
            phase: state.phase(),
            target: state.target().map(ToString::to_string),
            checksum,
            reason,
            pending,
            failed_target: machine.failed_target.as_ref().map(ToString::to_string),
        }
    }
}

/// The JSON schema of [`NodeStatus`], as committed.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(NodeStatus)).expect("a schema serializes")
}

/// Renders the status for people: a few lines, long values on lines of their own, no colour.
pub fn render(status: &NodeStatus, out: &mut dyn Write) -> io::Result<()> {
    let up = &status.upgrade;
    writeln!(out, "Upgrade: {}", up.phase)?;
    if let Some(target) = &up.target {
        writeln!(out, "  target: {target}")?;
    }
    if let Some(reason) = &up.reason {
        writeln!(out, "  reason: {reason}")?;
    }
    if let Some(pending) = &up.pending {
        writeln!(out, "  next: {pending}")?;
    }
    if let Some(progress) = &status.progress {
        writeln!(out, "  progress: {}", progress.describe())?;
    }
    if let Some(waiting) = &status.waiting {
        writeln!(out, "  waiting: {waiting}")?;
    }
    if let Some(l) = &status.fleet_lock {
        let held = if l.held { "held" } else { "not held" };
        writeln!(
            out,
            "  fleetlock: lock {held} (group {} at {})",
            l.group, l.server
        )?;
        if let Some(w) = &l.waiting {
            writeln!(out, "  fleetlock waiting: {w}")?;
        }
    }
    if let Some(failed) = &up.failed_target {
        writeln!(out, "  not retried: {failed} (failed here)")?;
    }
    if let Some(err) = &status.last_error {
        writeln!(out, "  last error: {err}")?;
    }
    writeln!(out, "Deployments ({}):", status.backend)?;
    if status.deployments.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for d in &status.deployments {
        let mut roles = Vec::new();
        if d.booted {
            roles.push("booted");
        }
        if d.staged {
            roles.push(if d.finalization_locked {
                "staged, locked"
            } else {
                "staged"
            });
        }
        if d.pinned {
            roles.push("pinned");
        }
        let marker = if d.booted { '●' } else { ' ' };
        let version = d.version.as_deref().unwrap_or("-");
        write!(
            out,
            "{marker} {} {}.{} version {version}",
            d.osname,
            short(&d.checksum),
            d.serial
        )?;
        if !roles.is_empty() {
            write!(out, " ({})", roles.join(", "))?;
        }
        writeln!(out)?;
        if let Some(origin) = &d.origin {
            writeln!(out, "    from {origin}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_ref::ImageRef;

    /// A well-formed reference, as the journal would load it.
    fn img(raw: &str) -> ImageRef {
        ImageRef::parse_any(raw).unwrap()
    }
    use crate::testing::golden;

    fn deployment(checksum: &str, version: &str, booted: bool, staged: bool) -> Deployment {
        Deployment {
            osname: "nestos".into(),
            checksum: checksum.into(),
            serial: 0,
            version: Some(version.into()),
            origin: Some(
                "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03.2".into(),
            ),
            booted,
            staged,
            pinned: false,
            finalization_locked: staged,
        }
    }

    fn sample() -> NodeStatus {
        let mut machine = Machine::new("6f1d0c35-3b61-4a56-9e5e-0d1e3b8f0a11");
        machine.state = State::Staged {
            target: img("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03.2"),
            checksum: "b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4".into(),
        };
        NodeStatus::new(
            "rpm-ostree",
            &machine,
            vec![
                deployment(
                    "b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4",
                    "22.03.2",
                    false,
                    true,
                ),
                deployment(
                    "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
                    "22.03.1",
                    true,
                    false,
                ),
            ],
            None,
        )
    }

    #[test]
    fn the_committed_schema_matches_the_types() {
        let text = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        golden("schema/node-status.v1.json", &text);
    }

    #[test]
    fn json_and_text_match_their_golden_files() {
        let json = serde_json::to_string_pretty(&sample()).unwrap() + "\n";
        golden("tests/fixtures/node/status-staged.json", &json);
        let mut text = Vec::new();
        render(&sample(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        golden("tests/fixtures/node/status-staged.txt", &text);
    }

    #[test]
    fn a_rolled_back_node_says_why_and_what_is_not_retried() {
        let mut machine = Machine::new("b");
        machine.state = State::RolledBack {
            target: img("v3"),
            reason: "health check failed: kubelet".into(),
        };
        machine.failed_target = Some(img("v3"));
        let status = NodeStatus::new("ostree", &machine, vec![], Some("x".into()));
        let mut text = Vec::new();
        render(&status, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with(
                "Upgrade: rolledBack\n  target: v3\n  reason: health check failed: kubelet\n"
            ),
            "{text}"
        );
        assert!(text.contains("not retried: v3"), "{text}");
        assert!(status.upgrade.pending.is_none());
    }

    #[test]
    fn staging_progress_is_folded_and_shown() {
        let mut machine = Machine::new("b");
        machine.state = State::Staging {
            target: img("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03.2"),
        };
        let status = Arc::new(Mutex::new(NodeStatus::new(
            "rpm-ostree",
            &machine,
            vec![],
            None,
        )));
        let sink = ProgressSink::default();
        let observe = sink.observer();
        observe(&Progress::TaskBegin("early".into()));
        assert_eq!(status.lock().unwrap().progress, None, "not attached yet");
        sink.attach(status.clone());
        for p in [
            Progress::TaskBegin("Fetching ostree commit".into()),
            Progress::Percent {
                text: "Receiving objects".into(),
                percent: 43,
            },
            Progress::Download {
                fetched: 90,
                requested: 180,
                bytes: 325_058_560,
                bytes_per_second: 2_097_152,
            },
            Progress::Message("a line".into()),
        ] {
            observe(&p);
        }
        let shown = status.lock().unwrap().clone();
        let progress = shown.progress.clone().unwrap();
        assert_eq!(
            progress.describe(),
            "Receiving objects 43 %, 310.0 MiB at 2.0 MiB/s, 90 of 180 objects"
        );
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["progress"]["percent"], 43);
        assert_eq!(json["progress"]["bytes"], 325_058_560u64);
        assert_eq!(json["progress"]["task"], "Receiving objects");
        let mut text = Vec::new();
        render(&shown, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("  progress: Receiving objects 43 %, 310.0 MiB"),
            "{text}"
        );

        // Outside staging (a rollback's transaction), nothing is shown.
        let mut idle = NodeStatus::new("rpm-ostree", &Machine::new("b"), vec![], None);
        idle.waiting = Some("the reboot is blocked by backup (copying)".into());
        *status.lock().unwrap() = idle;
        observe(&Progress::TaskBegin("Rolling back".into()));
        let shown = status.lock().unwrap().clone();
        assert_eq!(shown.progress, None);
        let mut text = Vec::new();
        render(&shown, &mut text).unwrap();
        assert!(String::from_utf8(text)
            .unwrap()
            .contains("  waiting: the reboot is blocked by backup (copying)\n"));
    }

    #[test]
    fn the_document_reads_back() {
        let json = serde_json::to_string(&sample()).unwrap();
        let back: NodeStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn the_fleetlock_lock_and_its_wait_are_shown() {
        let mut st = NodeStatus::new("ostree", &Machine::new("b"), vec![], None);
        st.fleet_lock = Some(FleetLockStatus {
            server: "http://10.0.0.1:9808".into(),
            group: "default".into(),
            id: "975228d46dc94622b9bbe16671e2b58d".into(),
            held: false,
            waiting: Some(
                "http://10.0.0.1:9808/v1/pre-reboot: failed_lock_semaphore_full: no slot".into(),
            ),
        });
        let mut text = Vec::new();
        render(&st, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("  fleetlock: lock not held (group default at http://10.0.0.1:9808)\n"),
            "{text}"
        );
        assert!(text.contains("  fleetlock waiting: http://10.0.0.1:9808/v1/pre-reboot: failed_lock_semaphore_full"), "{text}");
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["fleetLock"]["held"], false);
        assert_eq!(json["fleetLock"]["group"], "default");
    }
}
