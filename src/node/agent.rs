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
use super::machine::{self, Action, Event, Limits, Machine, Observation, Phase, UpgradeOutcome};
use super::metrics::Metrics;
use super::status::NodeStatus;
use crate::image_ref::{ImagePolicy, ImageRef};
use crate::logging::msgid;
use crate::os::{Backend, OsError};

/// Reboots the machine. Returns once the reboot is under way (the process is then stopped
/// by the shutdown), or with why it could not be started.
pub trait Rebooter: Send + Sync {
    /// Whether a reboot may start now (no block inhibitor, per policy). Asked before the
    /// target is finalized: on rpm-ostree finalizing is itself the start of the reboot.
    fn check(&self) -> Result<(), RebootError> {
        Ok(())
    }
    fn reboot(&self, why: &str) -> Result<(), RebootError>;
}

/// Why a reboot did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebootError {
    /// Block inhibitors hold the shutdown and the policy is to wait for them; each is
    /// described for people (`backup (pid 42): busy`). Asking again later may succeed.
    #[error("the reboot is blocked by {}", .0.join("; "))]
    Blocked(Vec<String>),
    /// The reboot could not be asked for (no bus, no logind, a refusal), with what was done.
    #[error("{0}")]
    Failed(String),
}

/// Why a node was not drained, as the machine's `DrainFailed` reason says it, and what a
/// caller may branch on: whether asking again may help, and which pods held the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// The drain ran and ended without leave to reboot (pods the policy may not move, or the
    /// timeout with `onTimeout: abort`); `pods` names those left (`namespace/name`).
    #[error("{summary}")]
    Blocked { summary: String, pods: Vec<String> },
    /// The rollout went away under the drain: aborted, its grant gone, the Node deleted.
    #[error("{0}")]
    Withdrawn(String),
    /// The cluster could not be asked in time (an API outage, no first view, a coordinator
    /// that did not step down): the same drain may succeed later.
    #[error("{0}")]
    Unreachable(String),
}

impl DrainError {
    /// Whether the same drain, asked again later, may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DrainError::Unreachable(_))
    }

    /// The pods that kept the node from being drained.
    pub fn blocking_pods(&self) -> &[String] {
        match self {
            DrainError::Blocked { pods, .. } => pods,
            DrainError::Withdrawn(_) | DrainError::Unreachable(_) => &[],
        }
    }
}

/// The cluster half of an upgrade, as the node half sees it.
pub trait ClusterSide: Send + Sync {
    /// Cordon and drain this node. Called again after a restart: must be idempotent.
    fn drain(&self) -> Result<(), DrainError>;
    /// Tell the cluster how the upgrade ended (and uncordon when it is done).
    fn report(&self, outcome: &UpgradeOutcome, machine: &Machine);
    /// The machine entered a new state (journaled), before that step's actions run: the
    /// cluster side can show it first — a Node should say "Rebooting" before the reboot.
    fn entered(&self, _machine: &Machine) {}
    /// Events the cluster side has for the machine after a step (a standalone node grants
    /// itself as soon as it is staged).
    fn after_step(&self, _machine: &Machine) -> Vec<Event> {
        Vec::new()
    }
    /// The FleetLock lock, for `hkd status` (a standalone node with `fleetlock.url`).
    fn fleet_lock(&self) -> Option<crate::node::status::FleetLockStatus> {
        None
    }
}

/// A node without a cluster: grants itself once staged, drains nothing, reports to the log.
pub struct Standalone;

impl ClusterSide for Standalone {
    fn drain(&self) -> Result<(), DrainError> {
        Ok(())
    }
    fn report(&self, _outcome: &UpgradeOutcome, _machine: &Machine) {}
    fn after_step(&self, machine: &Machine) -> Vec<Event> {
        match machine.state {
            machine::State::Staged { .. } => vec![Event::Granted],
            _ => Vec::new(),
        }
    }
}

/// Where the host's facts come from: boot id, deployments.
pub trait Observer: Send + Sync {
    /// The running kernel's boot id; an error says what could not be read (nobody branches on
    /// it: the agent reports it and looks again later).
    fn boot_id(&self) -> anyhow::Result<String>;
}

/// Where an upgrade that ended badly failed, for the failures metric: from the phase it
/// left and the one it ended in.
pub fn failure_class(from: Phase, to: Phase) -> Option<&'static str> {
    use Phase as P;
    match (from, to) {
        (P::Staging, P::Failed) => Some("stage"),
        (P::Granted | P::Draining, P::Failed) => Some("drain"),
        (P::Rebooting, P::Failed) => Some("reboot"),
        (P::Rebooting | P::Verifying, P::RolledBack) => Some("not_booted"),
        (P::RollingBack, P::RolledBack) => Some("health"),
        (P::RollingBack, P::Failed) => Some("rollback"),
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
    /// Whether targets nothing verifies are accepted (the backend checks it again).
    pub policy: ImagePolicy,
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
    /// What the agent waits for before it can go on (a block inhibitor), for the status.
    waiting: Option<String>,
    shared: Shared,
}

/// Why a reboot (with rpm-ostree: the finalize that starts it) did not start.
enum NotRebooted {
    /// A block-mode shutdown inhibitor holds it: not yet, ask again at the configured pace.
    Blocked(String),
    Failed(String),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Agent {
    /// Loads the journal (or starts idle) and observes the host.
    pub fn start(parts: Parts) -> anyhow::Result<(Agent, Event)> {
        let boot_id = parts.observer.boot_id()?;
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
            waiting: None,
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
        let boot_id = self.parts.observer.boot_id()?;
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
        let mut status = NodeStatus::new(
            &self.parts.backend_name,
            &self.machine,
            deployments,
            self.last_error.clone(),
        );
        status.waiting = self.waiting.clone();
        status.fleet_lock = self.parts.cluster.fleet_lock();
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
                tracing::info!(phase = to.as_str(), "upgrade phase {from} → {to}");
                self.parts.metrics.transition(from, to);
                if let Some(class) = failure_class(from, to) {
                    self.parts.metrics.failure(class);
                }
                if to == Phase::Done {
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
                Err(e) => vec![
                    Event::DrainStarted,
                    Event::DrainFailed {
                        reason: e.to_string(),
                    },
                ],
            },
            Action::Reboot { checksum } => {
                // A block inhibitor is "not yet", not a failed attempt: wait for its release at
                // the configured pace, saying who holds it. Everything else is an attempt.
                let result = loop {
                    match self.reboot_into(&checksum) {
                        Err(NotRebooted::Blocked(why)) => {
                            if self.waiting.as_deref() != Some(why.as_str()) {
                                tracing::warn!(
                                    "{why}; asking again every {}s",
                                    self.parts.reboot_retry.as_secs()
                                );
                                self.waiting = Some(why);
                                self.publish();
                            }
                            std::thread::sleep(self.parts.reboot_retry);
                        }
                        Err(NotRebooted::Failed(e)) => break Err(e),
                        Ok(()) => break Ok(()),
                    }
                };
                if self.waiting.take().is_some() {
                    tracing::info!("the block inhibitor is released");
                }
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
                        let result = self
                            .parts
                            .rebooter
                            .reboot("hkd: rolling back")
                            .map_err(|e| e.to_string());
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
                    UpgradeOutcome::Done => {
                        tracing::info!(message_id = msgid::UPGRADE_DONE, "upgrade done")
                    }
                    UpgradeOutcome::Failed { reason } => {
                        tracing::error!(
                            message_id = msgid::UPGRADE_FAILED,
                            "upgrade failed: {reason}"
                        )
                    }
                    UpgradeOutcome::RolledBack { reason } => {
                        tracing::warn!(message_id = msgid::ROLLED_BACK, "rolled back: {reason}")
                    }
                }
                self.parts.cluster.report(&outcome, &self.machine);
                vec![]
            }
        }
    }

    /// Checks the reboot may start, finalizes `checksum` and reboots.
    fn reboot_into(&self, checksum: &str) -> Result<(), NotRebooted> {
        self.parts.rebooter.check().map_err(|e| match e {
            RebootError::Blocked(_) => NotRebooted::Blocked(e.to_string()),
            RebootError::Failed(e) => NotRebooted::Failed(e),
        })?;
        self.parts.backend.finalize(checksum).map_err(|e| match e {
            OsError::Blocked(why) => NotRebooted::Blocked(why),
            e => NotRebooted::Failed(e.to_string()),
        })?;
        tracing::info!(message_id = msgid::REBOOTING, "rebooting into {checksum}");
        self.parts
            .rebooter
            .reboot(&format!("hkd: booting {checksum}"))
            .map_err(|e| NotRebooted::Failed(e.to_string()))
    }

    fn stage(&self, target: &ImageRef) -> Result<String, OsError> {
        self.parts.policy.admit(target)?;
        self.parts.backend.stage(target)
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
    use crate::node::machine::Phase;

    #[test]
    fn failures_are_classed_by_where_they_happened() {
        assert_eq!(failure_class(Phase::Staging, Phase::Failed), Some("stage"));
        assert_eq!(failure_class(Phase::Draining, Phase::Failed), Some("drain"));
        assert_eq!(
            failure_class(Phase::Rebooting, Phase::RolledBack),
            Some("not_booted")
        );
        assert_eq!(
            failure_class(Phase::RollingBack, Phase::RolledBack),
            Some("health")
        );
        assert_eq!(
            failure_class(Phase::RollingBack, Phase::Failed),
            Some("rollback")
        );
        assert_eq!(failure_class(Phase::Verifying, Phase::Done), None);
        assert_eq!(failure_class(Phase::Staged, Phase::Staging), None);
    }
}
