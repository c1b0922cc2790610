//! The executor: feeds events to the state machine, writes the journal, performs actions.
//!
//! It decides nothing: every "what next" comes from [`machine::step`]. The order per step is
//! fixed — journal first, then actions — so that a crash at any point resumes from the
//! journal and an observation of the host (see `machine`'s module doc).
//!
//! The seams to the outside are traits, so that tests and the cluster simulation can run
//! agents with simulated hosts while production wires the real ones:
//! [`Backend`] (deployments), [`Rebooter`] (logind), [`ClusterSide`] (grant, drain, report),
//! and the health [`Gate`].

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::health::{Gate, Verdict};
use super::journal::Journal;
use super::machine::{self, Action, Event, Limits, Machine, Observation, Outcome};
use super::status::NodeStatus;
use crate::logging::msgid;
use crate::metrics::Metrics;
use crate::os::{Backend, ImageRef, OsError};

/// Reboots the machine. Returns once the reboot is under way (the process is then stopped
/// by the shutdown), or with why it could not be started.
pub trait Rebooter: Send + Sync {
    /// Whether a reboot may start now (no block inhibitor, per policy). Asked before the
    /// target is finalized: on rpm-ostree finalizing is itself the start of the reboot.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    fn reboot(&self, why: &str) -> Result<(), String>;
}

/// The cluster half of an upgrade, as the node half sees it.
pub trait ClusterSide: Send + Sync {
    /// Cordon and drain this node. Called again after a restart: must be idempotent.
    fn drain(&self) -> Result<(), String>;
    /// Tell the cluster how the upgrade ended (and uncordon when it is done).
    fn report(&self, outcome: &Outcome, machine: &Machine);
    /// The machine entered a new state (journaled), before that step's actions run: the
    /// cluster side can show it first — a Node should say "Rebooting" before the reboot.
    fn entered(&self, _machine: &Machine) {}
    /// Events the cluster side has for the machine after a step (a standalone node grants
    /// itself as soon as it is staged).
    fn after_step(&self, _machine: &Machine) -> Vec<Event> {
        Vec::new()
    }
}

/// A node without a cluster: grants itself once staged, drains nothing, reports to the log.
pub struct Standalone;

impl ClusterSide for Standalone {
    fn drain(&self) -> Result<(), String> {
        Ok(())
    }
    fn report(&self, _outcome: &Outcome, _machine: &Machine) {}
    fn after_step(&self, machine: &Machine) -> Vec<Event> {
        match machine.state {
            machine::State::Staged { .. } => vec![Event::Granted],
            _ => Vec::new(),
        }
    }
}

/// Where the host's facts come from: boot id, deployments.
pub trait Observer: Send + Sync {
    fn boot_id(&self) -> Result<String, String>;
}

/// Where an upgrade that ended badly failed, for the failures metric: from the phase it
/// left and the one it ended in.
pub fn failure_class(from: &str, to: &str) -> Option<&'static str> {
    match (from, to) {
        ("staging", "failed") => Some("stage"),
        ("granted" | "draining", "failed") => Some("drain"),
        ("rebooting", "failed") => Some("reboot"),
        ("rebooting" | "verifying", "rolledBack") => Some("not_booted"),
        ("rollingBack", "rolledBack") => Some("health"),
        ("rollingBack", "failed") => Some("rollback"),
        _ => None,
    }
}

/// What an agent needs, wired.
pub struct Parts {
    pub backend: Box<dyn Backend>,
    pub backend_name: String,
    pub rebooter: Box<dyn Rebooter>,
    pub cluster: Box<dyn ClusterSide>,
    pub observer: Box<dyn Observer>,
    pub gate: Gate,
    pub journal: Journal,
    pub allow_unverified: bool,
    pub limits: Limits,
    /// How long to wait before asking again when a reboot did not happen.
    pub reboot_retry: Duration,
    pub metrics: Arc<Metrics>,
}

/// The agent's view for `hkd status`, shared with the socket server.
pub type Shared = Arc<Mutex<NodeStatus>>;

pub struct Agent {
    parts: Parts,
    machine: Machine,
    last_error: Option<String>,
    shared: Shared,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Agent {
    /// Loads the journal (or starts idle) and observes the host.
    pub fn start(parts: Parts) -> anyhow::Result<(Agent, Event)> {
        let boot_id = parts.observer.boot_id().map_err(anyhow::Error::msg)?;
        let machine = parts
            .journal
            .load()?
            .unwrap_or_else(|| Machine::new(boot_id.clone()));
        let shared = Arc::new(Mutex::new(NodeStatus::new(
            &parts.backend_name,
            &machine,
            vec![],
            None,
        )));
        let mut agent = Agent {
            parts,
            machine,
            last_error: None,
            shared,
        };
        let first = agent.observe()?;
        Ok((agent, first))
    }

    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    fn observe(&mut self) -> anyhow::Result<Event> {
        let boot_id = self.parts.observer.boot_id().map_err(anyhow::Error::msg)?;
        let all = self.parts.backend.status()?;
        let booted = all
            .booted()
            .or(all.default_deployment())
            .map(|d| d.checksum.clone())
            .unwrap_or_default();
        Ok(Event::Observed(Observation {
            boot_id,
            booted,
            staged: all.staged().map(|d| d.checksum.clone()),
            default: all.default_deployment().map(|d| d.checksum.clone()),
        }))
    }

    fn publish(&self) {
        let deployments = self
            .parts
            .backend
            .status()
            .map(|d| d.deployments)
            .unwrap_or_default();
        let status = NodeStatus::new(
            &self.parts.backend_name,
            &self.machine,
            deployments,
            self.last_error.clone(),
        );
        if let Ok(mut shared) = self.shared.lock() {
            *shared = status;
        }
    }

    /// Handles one event and everything that follows from it. Returns when no action is
    /// pending, with when the machine wants to be woken.
    pub fn handle(&mut self, event: Event) -> anyhow::Result<Option<Duration>> {
        let mut queue = vec![event];
        let mut wake = None;
        while let Some(event) = queue.pop() {
            let step = match machine::step(&self.machine, &event, unix_now(), self.parts.limits) {
                Ok(step) => step,
                Err(illegal) => {
                    tracing::warn!("{illegal}; ignored");
                    continue;
                }
            };
            if step.machine != self.machine {
                // Intent first: the journal must hold the step before any action runs.
                self.parts.journal.save(&step.machine)?;
                let (from, to) = (self.machine.state.phase(), step.machine.state.phase());
                tracing::info!(phase = to, "upgrade phase {from} → {to}");
                self.parts.metrics.transition(from, to);
                if let Some(class) = failure_class(from, to) {
                    self.parts.metrics.failure(class);
                }
                if to == "done" {
                    self.parts.metrics.success();
                }
                self.machine = step.machine;
                self.parts.cluster.entered(&self.machine);
                // A no-op outside systemd.
                let status = format!("upgrade: {}", self.machine.state.phase());
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
            }
            wake = step.wake_after.map(Duration::from_secs);
            self.publish();
            let mut answers = Vec::new();
            for action in step.actions {
                answers.extend(self.perform(action));
            }
            answers.extend(self.parts.cluster.after_step(&self.machine));
            // Answers are handled in the order they came.
            queue.extend(answers.into_iter().rev());
            self.publish();
        }
        Ok(wake)
    }

    fn perform(&mut self, action: Action) -> Vec<Event> {
        match action {
            Action::Stage { target } => match self.stage(&target) {
                Ok(checksum) => {
                    tracing::info!(message_id = msgid::STAGED, "staged {target} as {checksum}");
                    self.last_error = None;
                    vec![Event::Staged { target, checksum }]
                }
                Err(e) => {
                    self.last_error = Some(e.to_string());
                    vec![Event::StageFailed {
                        target,
                        reason: e.to_string(),
                    }]
                }
            },
            Action::Unstage => {
                if let Err(e) = self.parts.backend.unstage() {
                    self.last_error = Some(format!("removing the staged deployment: {e}"));
                }
                vec![]
            }
            Action::Drain => match self.parts.cluster.drain() {
                Ok(()) => {
                    tracing::info!(message_id = msgid::DRAINED, "node drained");
                    vec![Event::DrainStarted, Event::Drained]
                }
                Err(reason) => vec![Event::DrainStarted, Event::DrainFailed { reason }],
            },
            Action::Reboot { checksum } => {
                let result = self
                    .parts
                    .rebooter
                    .check()
                    .and_then(|()| {
                        self.parts
                            .backend
                            .finalize(&checksum)
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|()| {
                        tracing::info!(message_id = msgid::REBOOTING, "rebooting into {checksum}");
                        self.parts
                            .rebooter
                            .reboot(&format!("hkd: booting {checksum}"))
                    });
                self.after_reboot_request(result, "reboot")
            }
            Action::CheckHealth => {
                let deadline = self.health_deadline();
                match self.parts.gate.run_until(deadline) {
                    Verdict::Pass { .. } => {
                        tracing::info!(message_id = msgid::BOOT_VERIFIED, "health gate passed");
                        vec![Event::HealthPassed]
                    }
                    Verdict::Fail { reason } => vec![Event::HealthFailed { reason }],
                }
            }
            Action::Rollback => {
                let result = self.parts.backend.rollback().map_err(|e| e.to_string());
                match result {
                    Err(reason) => vec![Event::RollbackFailed { reason }],
                    Ok(()) => {
                        let result = self.parts.rebooter.reboot("hkd: rolling back");
                        self.after_reboot_request(result, "rollback reboot")
                    }
                }
            }
            Action::RestoreBooted => {
                if let Err(e) = self.parts.backend.restore_booted() {
                    self.last_error = Some(format!(
                        "making the booted deployment the default again: {e}"
                    ));
                }
                vec![]
            }
            Action::Report(outcome) => {
                match &outcome {
                    Outcome::Done => {
                        tracing::info!(message_id = msgid::UPGRADE_DONE, "upgrade done")
                    }
                    Outcome::Failed { reason } => {
                        tracing::error!(
                            message_id = msgid::UPGRADE_FAILED,
                            "upgrade failed: {reason}"
                        )
                    }
                    Outcome::RolledBack { reason } => {
                        tracing::warn!(message_id = msgid::ROLLED_BACK, "rolled back: {reason}")
                    }
                }
                self.parts.cluster.report(&outcome, &self.machine);
                vec![]
            }
        }
    }

    fn stage(&self, target: &str) -> Result<String, OsError> {
        let target = ImageRef::parse(target, self.parts.allow_unverified)?;
        self.parts.backend.stage(&target)
    }

    /// A reboot under way ends this process; if the call returns, the reboot did not start
    /// (or was postponed): wait, then let an observation of the same boot ask again.
    fn after_reboot_request(&mut self, result: Result<(), String>, what: &str) -> Vec<Event> {
        match result {
            Ok(()) => {
                // The shutdown stops us; should it be postponed, wait and look again.
                std::thread::sleep(self.parts.reboot_retry);
            }
            Err(e) => {
                tracing::warn!("{what} did not start: {e}");
                self.last_error = Some(format!("{what} did not start: {e}"));
                std::thread::sleep(self.parts.reboot_retry);
            }
        }
        match self.observe() {
            Ok(event) => vec![event],
            Err(e) => {
                self.last_error = Some(e.to_string());
                vec![]
            }
        }
    }

    fn health_deadline(&self) -> Instant {
        let since = match &self.machine.state {
            machine::State::Verifying { since, .. } => *since,
            _ => unix_now(),
        };
        let left = (since + self.parts.limits.health_timeout).saturating_sub(unix_now());
        Instant::now() + Duration::from_secs(left)
    }

    /// Runs until `events` closes: handles each event, and wakes the machine with `Tick`
    /// when it asked to be woken.
    pub fn run(mut self, first: Event, events: Receiver<Event>) -> anyhow::Result<()> {
        let mut wake = self.handle(first)?;
        loop {
            let next = match wake {
                Some(after) => match events.recv_timeout(after) {
                    Ok(event) => event,
                    Err(RecvTimeoutError::Timeout) => Event::Tick,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                },
                None => match events.recv() {
                    Ok(event) => event,
                    Err(_) => return Ok(()),
                },
            };
            wake = self.handle(next)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::failure_class;

    #[test]
    fn failures_are_classed_by_where_they_happened() {
        assert_eq!(failure_class("staging", "failed"), Some("stage"));
        assert_eq!(failure_class("draining", "failed"), Some("drain"));
        assert_eq!(failure_class("rebooting", "rolledBack"), Some("not_booted"));
        assert_eq!(failure_class("rollingBack", "rolledBack"), Some("health"));
        assert_eq!(failure_class("rollingBack", "failed"), Some("rollback"));
        assert_eq!(failure_class("verifying", "done"), None);
        assert_eq!(failure_class("staged", "staging"), None);
    }
}
