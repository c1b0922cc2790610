//! The node's upgrade state machine: a pure transition function, no I/O, no clock.
//!
//! ```text
//!                 TargetRequested                 Staged                 Granted
//!   Idle ───────────────────────▶ Staging ─────────────▶ Staged ──────────────▶ Granted
//!    ▲   (also from Done, Failed,    │ StageFailed          │ TargetWithdrawn       │ DrainStarted
//!    │    RolledBack: a new target)  ▼                      ▼ (Unstage)             ▼
//!    │                            Failed                  Idle                   Draining
//!    │                                                                             │ Drained
//!    │                                                                             ▼
//!    │      HealthPassed                 Observed: new boot, target booted     Rebooting ◀─┐ Observed: same boot
//!   Done ◀───────────── Verifying ◀────────────────────────────────────────────────┘ ──────┘ (reboot again, bounded)
//!                           │ HealthFailed / health timeout          Observed: new boot, target not booted
//!                           ▼                                          ─────────────────────────▶ RolledBack
//!                      RollingBack ──── Observed: new boot, previous booted ────▶ RolledBack
//!                           └────────── Observed: new boot, target still booted ─▶ Failed
//! ```
//!
//! The executor (elsewhere) writes the state returned by [`step`] to the journal *before* it
//! performs the returned actions, and feeds the outcome of each action back as an [`Event`].
//! After a restart it feeds [`Event::Observed`] with what the machine shows (boot id, booted
//! and staged deployments). That observation alone decides whether a destructive step
//! (reboot, rollback) already happened: a changed boot id proves it did, so it is never
//! repeated; an unchanged one proves it did not, so it is issued again, a bounded number of
//! times.
//!
//! A target requested while a node is between grant and verdict is not taken up: the caller
//! asks again once the node is back at rest (the cluster side re-derives its wish from the
//! Update on every change), so no request is lost and none interrupts a drained node.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::image_ref::ImageRef;

/// How many times a reboot is asked for before the upgrade is given up: each time the node
/// came back on the same boot (a delay inhibitor, a reboot refused by logind, hkd killed).
pub const MAX_REBOOT_ATTEMPTS: u32 = 3;

/// The persisted state of the upgrade of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "phase",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum State {
    /// Nothing to do: no target, or the target is what runs.
    Idle,
    /// Downloading and deploying `target` with finalization locked.
    Staging { target: ImageRef },
    /// `checksum` is deployed, locked, waiting for the cluster's grant.
    Staged { target: ImageRef, checksum: String },
    /// The cluster granted this node; waiting for the cluster side to begin the drain.
    Granted { target: ImageRef, checksum: String },
    /// The cluster side is cordoning and draining.
    Draining { target: ImageRef, checksum: String },
    /// Reboot into `checksum` asked for while the node ran boot `from_boot`.
    Rebooting {
        target: ImageRef,
        checksum: String,
        from_boot: String,
        attempt: u32,
    },
    /// Booted into the target since `since` (seconds); the health gate runs.
    Verifying {
        target: ImageRef,
        checksum: String,
        since: u64,
    },
    /// The target runs and passed its health gate.
    Done { target: ImageRef, checksum: String },
    /// Going back to the previous deployment, asked for during boot `from_boot`.
    RollingBack {
        target: ImageRef,
        checksum: String,
        reason: String,
        from_boot: String,
    },
    /// The previous deployment runs again; the target failed for `reason`.
    RolledBack { target: ImageRef, reason: String },
    /// The upgrade stopped for `reason`; the node runs whatever it booted.
    Failed { target: ImageRef, reason: String },
}

/// The name of a [`State`], without its data: what status, metrics and logs show. The
/// strings are the journal's and the status document's `phase` values and the metrics'
/// `phase` labels; they do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    Idle,
    Staging,
    Staged,
    Granted,
    Draining,
    Rebooting,
    Verifying,
    Done,
    RollingBack,
    RolledBack,
    Failed,
}

impl Phase {
    /// Every phase, in the order of the diagram.
    pub const ALL: [Phase; 11] = [
        Phase::Idle,
        Phase::Staging,
        Phase::Staged,
        Phase::Granted,
        Phase::Draining,
        Phase::Rebooting,
        Phase::Verifying,
        Phase::Done,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Staging => "staging",
            Phase::Staged => "staged",
            Phase::Granted => "granted",
            Phase::Draining => "draining",
            Phase::Rebooting => "rebooting",
            Phase::Verifying => "verifying",
            Phase::Done => "done",
            Phase::RollingBack => "rollingBack",
            Phase::RolledBack => "rolledBack",
            Phase::Failed => "failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state with what must survive every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub state: State,
    /// The boot id last observed: the reference for "did a reboot happen".
    pub boot_id: String,
    /// A target that failed here; not retried until a different target is asked for.
    pub failed_target: Option<ImageRef>,
}

/// What the machine shows, read at start and after each boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub boot_id: String,
    pub booted: String,
    pub staged: Option<String>,
    /// What the next boot starts (a finalized target, before its reboot).
    pub default: Option<String>,
}

/// Something that happened: an outcome of an action, a wish of the cluster, or an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Observed(Observation),
    TargetRequested {
        target: ImageRef,
    },
    TargetWithdrawn,
    Staged {
        target: ImageRef,
        checksum: String,
    },
    StageFailed {
        target: ImageRef,
        reason: String,
    },
    Granted,
    DrainStarted,
    Drained,
    DrainFailed {
        reason: String,
    },
    HealthPassed,
    HealthFailed {
        reason: String,
    },
    RollbackFailed {
        reason: String,
    },
    /// Time passed (the executor's wake-up); only deadlines react to it.
    Tick,
}

/// What the executor must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Download and deploy `target`, finalization locked; answer Staged or StageFailed.
    Stage { target: ImageRef },
    /// Remove the staged deployment (the target was withdrawn).
    Unstage,
    /// Ask the cluster side to cordon and drain; it answers DrainStarted, then Drained or DrainFailed.
    Drain,
    /// Unlock finalization of `checksum` and reboot through logind.
    Reboot { checksum: String },
    /// Run the health gate; answer HealthPassed or HealthFailed.
    CheckHealth,
    /// Make the previous deployment the default and reboot.
    Rollback,
    /// Make the booted deployment the default again, without rebooting: an upgrade given up
    /// after finalizing must not leave the target to boot unverified at some later reboot.
    RestoreBooted,
    /// Tell the cluster side and the status how this upgrade ended.
    Report(UpgradeOutcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeOutcome {
    Done,
    Failed { reason: String },
    RolledBack { reason: String },
}

/// What `step` returns: the next machine, the actions, and when to be woken with `Tick`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub machine: Machine,
    pub actions: Vec<Action>,
    pub wake_after: Option<u64>,
}

/// An event that makes no sense in the current state (a bug or a stale message): the
/// executor logs it and carries on; the state does not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event} is not expected in phase {phase}")]
pub struct IllegalMove {
    pub phase: Phase,
    pub event: String,
}

/// Knobs of the machine, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long the health gate may take, in seconds, counted from the boot into the target.
    pub health_timeout: u64,
}

impl Machine {
    pub fn new(boot_id: impl Into<String>) -> Self {
        Machine {
            state: State::Idle,
            boot_id: boot_id.into(),
            failed_target: None,
        }
    }

    /// Whether the node is between grant and verdict: out of service for the cluster.
    pub fn in_flight(&self) -> bool {
        matches!(
            self.state,
            State::Granted { .. }
                | State::Draining { .. }
                | State::Rebooting { .. }
                | State::Verifying { .. }
                | State::RollingBack { .. }
        )
    }
}

impl State {
    pub fn phase(&self) -> Phase {
        match self {
            State::Idle => Phase::Idle,
            State::Staging { .. } => Phase::Staging,
            State::Staged { .. } => Phase::Staged,
            State::Granted { .. } => Phase::Granted,
            State::Draining { .. } => Phase::Draining,
            State::Rebooting { .. } => Phase::Rebooting,
            State::Verifying { .. } => Phase::Verifying,
            State::Done { .. } => Phase::Done,
            State::RollingBack { .. } => Phase::RollingBack,
            State::RolledBack { .. } => Phase::RolledBack,
            State::Failed { .. } => Phase::Failed,
        }
    }

    /// The target this state works on, if any.
    pub fn target(&self) -> Option<&ImageRef> {
        match self {
            State::Idle => None,
            State::Staging { target }
            | State::Staged { target, .. }
            | State::Granted { target, .. }
            | State::Draining { target, .. }
            | State::Rebooting { target, .. }
            | State::Verifying { target, .. }
            | State::Done { target, .. }
            | State::RollingBack { target, .. }
            | State::RolledBack { target, .. }
            | State::Failed { target, .. } => Some(target),
        }
    }
}

/// The transition function. `now` is seconds on any monotonic-enough clock the executor uses
/// consistently (it is stored in `Verifying::since`).
pub fn step(
    machine: &Machine,
    event: &Event,
    now: u64,
    limits: Limits,
) -> Result<Step, IllegalMove> {
    use Action as A;
    use State as S;

    let mut next = machine.clone();
    let mut actions = Vec::new();
    let mut wake_after = None;
    let illegal = || IllegalMove {
        phase: machine.state.phase(),
        event: format!("{event:?}"),
    };
    let rest = matches!(
        machine.state,
        S::Idle | S::Done { .. } | S::RolledBack { .. } | S::Failed { .. }
    );

    match (&machine.state, event) {
        // --- wishes of the cluster ---------------------------------------------------------
        (_, Event::TargetRequested { target }) => {
            let same = machine.state.target() == Some(target);
            let working_on_it = same
                && matches!(
                    machine.state,
                    S::Staging { .. } | S::Staged { .. } | S::Done { .. }
                );
            let failed_before = rest && machine.failed_target.as_ref() == Some(target);
            if !machine.in_flight() && !working_on_it && !failed_before {
                if machine.failed_target.as_ref() != Some(target) {
                    next.failed_target = None;
                }
                next.state = S::Staging {
                    target: target.clone(),
                };
                actions.push(A::Stage {
                    target: target.clone(),
                });
            }
        }
        (S::Staging { .. } | S::Staged { .. }, Event::TargetWithdrawn) => {
            next.state = S::Idle;
            actions.push(A::Unstage);
        }
        (_, Event::TargetWithdrawn) => {}

        // --- staging -------------------------------------------------------------------------
        // An answer for a target that was since replaced is stale: the new Stage supersedes it.
        (_, Event::Staged { target, .. } | Event::StageFailed { target, .. })
            if machine.state
                != (S::Staging {
                    target: target.clone(),
                }) => {}
        (S::Staging { target }, Event::Staged { checksum, .. }) => {
            next.state = S::Staged {
                target: target.clone(),
                checksum: checksum.clone(),
            };
        }
        (S::Staging { target }, Event::StageFailed { reason, .. }) => {
            // Nothing was booted or changed: asking again may succeed (a network or disk
            // problem fixed), so the target is not remembered as failed here.
            next.state = S::Failed {
                target: target.clone(),
                reason: format!("staging failed: {reason}"),
            };
            actions.push(A::Report(UpgradeOutcome::Failed {
                reason: format!("staging failed: {reason}"),
            }));
        }

        // --- the cluster takes the node out of service ---------------------------------------
        (S::Staged { target, checksum }, Event::Granted) => {
            next.state = S::Granted {
                target: target.clone(),
                checksum: checksum.clone(),
            };
            actions.push(A::Drain);
        }
        (S::Granted { target, checksum }, Event::DrainStarted) => {
            next.state = S::Draining {
                target: target.clone(),
                checksum: checksum.clone(),
            };
        }
        (S::Granted { target, checksum } | S::Draining { target, checksum }, Event::Drained) => {
            next.state = S::Rebooting {
                target: target.clone(),
                checksum: checksum.clone(),
                from_boot: machine.boot_id.clone(),
                attempt: 1,
            };
            actions.push(A::Reboot {
                checksum: checksum.clone(),
            });
        }
        (S::Granted { target, .. } | S::Draining { target, .. }, Event::DrainFailed { reason }) => {
            // The booted system was not touched: this is a failure of this round, not of the
            // target, so the target may be tried again. What was staged for it is dropped —
            // a grant given back (an abort with roll back) leaves nothing behind, and the next
            // grant stages it again from the objects already pulled.
            let reason = format!("drain failed: {reason}");
            next.state = S::Failed {
                target: target.clone(),
                reason: reason.clone(),
            };
            actions.push(A::Unstage);
            actions.push(A::Report(UpgradeOutcome::Failed { reason }));
        }

        // --- health gate ---------------------------------------------------------------------
        (
            S::Verifying {
                target, checksum, ..
            },
            Event::HealthPassed,
        ) => {
            next.state = S::Done {
                target: target.clone(),
                checksum: checksum.clone(),
            };
            actions.push(A::Report(UpgradeOutcome::Done));
        }
        (
            S::Verifying {
                target, checksum, ..
            },
            Event::HealthFailed { reason },
        ) => {
            roll_back(
                &mut next,
                &mut actions,
                target,
                checksum,
                format!("health check failed: {reason}"),
            );
        }
        (
            S::Verifying {
                target,
                checksum,
                since,
            },
            Event::Tick,
        ) => {
            let deadline = since + limits.health_timeout;
            if now >= deadline {
                let reason = format!(
                    "health check did not pass within {}s",
                    limits.health_timeout
                );
                roll_back(&mut next, &mut actions, target, checksum, reason);
            } else {
                wake_after = Some(deadline - now);
            }
        }
        (S::RollingBack { target, reason, .. }, Event::RollbackFailed { reason: why }) => {
            let reason = format!("{reason}; rollback failed: {why}");
            next.state = S::Failed {
                target: target.clone(),
                reason: reason.clone(),
            };
            next.failed_target = Some(target.clone());
            actions.push(A::Report(UpgradeOutcome::Failed { reason }));
        }
        (_, Event::Tick) => {}

        // --- observations (start-up, after each boot) ---------------------------------------
        (_, Event::Observed(seen)) => {
            return Ok(observe(Judged {
                machine,
                seen,
                now,
                limits,
            }));
        }

        _ => return Err(illegal()),
    }
    Ok(Step {
        machine: next,
        actions,
        wake_after,
    })
}

fn roll_back(
    next: &mut Machine,
    actions: &mut Vec<Action>,
    target: &ImageRef,
    checksum: &str,
    reason: String,
) {
    next.state = State::RollingBack {
        target: target.clone(),
        checksum: checksum.to_owned(),
        reason,
        from_boot: next.boot_id.clone(),
    };
    actions.push(Action::Rollback);
}

/// What an observation is judged against: the machine before it, what the host shows, and the
/// time and limits of [`step`].
struct Judged<'a> {
    machine: &'a Machine,
    seen: &'a Observation,
    now: u64,
    limits: Limits,
}

/// The step an observation makes: a changed boot id proves a reboot happened, an unchanged one
/// that it did not (see the module documentation).
fn observe(input: Judged<'_>) -> Step {
    use Action as A;
    use State as S;
    let Judged {
        machine,
        seen,
        now,
        limits,
    } = input;
    let new_boot = seen.boot_id != machine.boot_id;
    let mut next = machine.clone();
    next.boot_id = seen.boot_id.clone();
    let mut actions = Vec::new();
    let mut wake_after = None;
    let fail =
        |next: &mut Machine, actions: &mut Vec<Action>, target: &ImageRef, reason: String| {
            next.state = S::Failed {
                target: target.clone(),
                reason: reason.clone(),
            };
            next.failed_target = Some(target.clone());
            actions.push(A::Report(UpgradeOutcome::Failed { reason }));
        };

    match &machine.state {
        // Interrupted while staging: staging is idempotent, do it again.
        S::Staging { target } => actions.push(A::Stage {
            target: target.clone(),
        }),
        // The staged deployment must still be ours; someone may have replaced or removed it.
        S::Staged { target, checksum } if seen.staged.as_deref() != Some(checksum) => {
            next.state = S::Staging {
                target: target.clone(),
            };
            actions.push(A::Stage {
                target: target.clone(),
            });
        }
        S::Granted { target, checksum } | S::Draining { target, checksum }
            if seen.staged.as_deref() != Some(checksum) =>
        {
            let reason = format!(
                "the staged deployment {} was replaced or removed by someone else",
                short(checksum)
            );
            next.state = S::Failed {
                target: target.clone(),
                reason: reason.clone(),
            };
            actions.push(A::Report(UpgradeOutcome::Failed { reason }));
        }
        // Interrupted while the cluster side drained: ask it again (cordon and drain are idempotent).
        S::Granted { .. } | S::Draining { .. } => actions.push(A::Drain),
        S::Rebooting {
            target,
            checksum,
            attempt,
            ..
        } => {
            if new_boot && seen.booted == *checksum {
                next.state = S::Verifying {
                    target: target.clone(),
                    checksum: checksum.clone(),
                    since: now,
                };
                actions.push(A::CheckHealth);
                wake_after = Some(limits.health_timeout);
            } else if new_boot {
                let reason = format!(
                    "the target {} did not boot; {} runs instead",
                    short(checksum),
                    short(&seen.booted)
                );
                next.state = S::RolledBack {
                    target: target.clone(),
                    reason: reason.clone(),
                };
                next.failed_target = Some(target.clone());
                actions.push(A::Report(UpgradeOutcome::RolledBack { reason }));
            } else if seen.staged.as_deref() != Some(checksum)
                && seen.default.as_deref() != Some(checksum)
            {
                fail(
                    &mut next,
                    &mut actions,
                    target,
                    format!(
                        "the staged deployment {} disappeared before the reboot",
                        short(checksum)
                    ),
                );
            } else if *attempt >= MAX_REBOOT_ATTEMPTS {
                actions.push(A::RestoreBooted);
                fail(
                    &mut next,
                    &mut actions,
                    target,
                    format!("the node did not reboot after {attempt} requests"),
                );
            } else {
                next.state = S::Rebooting {
                    target: target.clone(),
                    checksum: checksum.clone(),
                    from_boot: seen.boot_id.clone(),
                    attempt: attempt + 1,
                };
                actions.push(A::Reboot {
                    checksum: checksum.clone(),
                });
            }
        }
        S::Verifying {
            target,
            checksum,
            since,
        } => {
            if seen.booted != *checksum {
                let reason = format!("{} runs instead of the target", short(&seen.booted));
                next.state = S::RolledBack {
                    target: target.clone(),
                    reason: reason.clone(),
                };
                next.failed_target = Some(target.clone());
                actions.push(A::Report(UpgradeOutcome::RolledBack { reason }));
            } else {
                // Interrupted during the gate: run it again, same deadline.
                actions.push(A::CheckHealth);
                wake_after = Some((since + limits.health_timeout).saturating_sub(now));
            }
        }
        S::RollingBack {
            target,
            checksum,
            reason,
            ..
        } => {
            if new_boot && seen.booted != *checksum {
                next.state = S::RolledBack {
                    target: target.clone(),
                    reason: reason.clone(),
                };
                next.failed_target = Some(target.clone());
                actions.push(A::Report(UpgradeOutcome::RolledBack {
                    reason: reason.clone(),
                }));
            } else if new_boot {
                fail(
                    &mut next,
                    &mut actions,
                    target,
                    format!("{reason}; the rollback reboot came back on the target"),
                );
            } else {
                // The rollback did not happen yet (hkd stopped before it): ask again.
                next.state = S::RollingBack {
                    target: target.clone(),
                    checksum: checksum.clone(),
                    reason: reason.clone(),
                    from_boot: seen.boot_id.clone(),
                };
                actions.push(A::Rollback);
            }
        }
        S::Idle | S::Staged { .. } | S::Done { .. } | S::RolledBack { .. } | S::Failed { .. } => {}
    }
    Step {
        machine: next,
        actions,
        wake_after,
    }
}

/// The first 12 characters of a checksum, as shown to people.
pub fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

#[cfg(test)]
mod tests;
