use super::*;
use crate::image_ref::ImageRef;
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    health_timeout: 300,
};
const T: &str = "ostree-remote-registry:nestos:registry.example/nestos:v2";
const SUM: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const OLD: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// A well-formed reference, as the journal would load it.
fn img(raw: &str) -> ImageRef {
    ImageRef::parse_any(raw).unwrap()
}
fn at(machine: &Machine, event: Event) -> Step {
    step(machine, &event, 1000, LIMITS).unwrap()
}

fn seen(boot: &str, booted: &str, staged: Option<&str>) -> Event {
    Event::Observed(Observation {
        boot_id: boot.into(),
        booted: booted.into(),
        staged: staged.map(Into::into),
        default: Some(booted.into()),
    })
}

fn staged_machine() -> Machine {
    let m = Machine::new("boot-a");
    let m = at(&m, Event::TargetRequested { target: img(T) }).machine;
    at(
        &m,
        Event::Staged {
            target: img(T),
            checksum: SUM.into(),
        },
    )
    .machine
}

fn rebooting_machine() -> Machine {
    let m = at(&staged_machine(), Event::Granted).machine;
    let m = at(&m, Event::DrainStarted).machine;
    at(&m, Event::Drained).machine
}

fn verifying_machine() -> Machine {
    at(&rebooting_machine(), seen("boot-b", SUM, None)).machine
}

#[test]
fn the_happy_path_stages_drains_reboots_verifies() {
    let m = Machine::new("boot-a");
    let s = at(&m, Event::TargetRequested { target: img(T) });
    assert_eq!(s.actions, vec![Action::Stage { target: img(T) }]);
    let s = at(
        &s.machine,
        Event::Staged {
            target: img(T),
            checksum: SUM.into(),
        },
    );
    assert_eq!(s.machine.state.phase(), Phase::Staged);
    assert!(s.actions.is_empty(), "staging must not reboot by itself");
    let s = at(&s.machine, Event::Granted);
    assert_eq!(s.actions, vec![Action::Drain]);
    let s = at(&s.machine, Event::DrainStarted);
    let s = at(&s.machine, Event::Drained);
    assert_eq!(
        s.actions,
        vec![Action::Reboot {
            checksum: SUM.into()
        }]
    );
    assert!(
        matches!(&s.machine.state, State::Rebooting { from_boot, attempt: 1, .. } if from_boot == "boot-a")
    );
    let s = at(&s.machine, seen("boot-b", SUM, None));
    assert_eq!(s.actions, vec![Action::CheckHealth]);
    assert_eq!(s.wake_after, Some(300));
    let s = at(&s.machine, Event::HealthPassed);
    assert_eq!(
        s.machine.state,
        State::Done {
            target: img(T),
            checksum: SUM.into()
        }
    );
    assert_eq!(s.actions, vec![Action::Report(UpgradeOutcome::Done)]);
}

#[test]
fn a_failing_health_gate_rolls_back_and_reports() {
    let s = at(
        &verifying_machine(),
        Event::HealthFailed {
            reason: "unit kubelet failed".into(),
        },
    );
    assert_eq!(s.actions, vec![Action::Rollback]);
    let s = at(&s.machine, seen("boot-c", OLD, None));
    assert_eq!(
        s.machine.state,
        State::RolledBack {
            target: img(T),
            reason: "health check failed: unit kubelet failed".into()
        }
    );
    assert_eq!(s.machine.failed_target, Some(img(T)));
    assert!(matches!(
        &s.actions[..],
        [Action::Report(UpgradeOutcome::RolledBack { .. })]
    ));
}

#[test]
fn the_health_gate_times_out() {
    let m = verifying_machine(); // since = 1000
    let early = step(&m, &Event::Tick, 1100, LIMITS).unwrap();
    assert_eq!(early.machine, m);
    assert_eq!(early.wake_after, Some(200));
    let late = step(&m, &Event::Tick, 1300, LIMITS).unwrap();
    assert_eq!(late.actions, vec![Action::Rollback]);
    assert!(
        matches!(&late.machine.state, State::RollingBack { reason, .. } if reason.contains("within 300s"))
    );
}

#[test]
fn a_target_that_did_not_boot_is_rolled_back_without_another_reboot() {
    let s = at(&rebooting_machine(), seen("boot-b", OLD, None));
    assert_eq!(s.machine.state.phase(), Phase::RolledBack);
    assert!(!s
        .actions
        .iter()
        .any(|a| matches!(a, Action::Reboot { .. } | Action::Rollback)));
}

#[test]
fn a_restart_on_the_same_boot_asks_for_the_reboot_again_then_gives_up() {
    let mut m = rebooting_machine();
    for attempt in 2..=MAX_REBOOT_ATTEMPTS {
        let s = at(&m, seen("boot-a", OLD, Some(SUM)));
        assert_eq!(
            s.actions,
            vec![Action::Reboot {
                checksum: SUM.into()
            }]
        );
        assert!(matches!(s.machine.state, State::Rebooting { attempt: a, .. } if a == attempt));
        m = s.machine;
    }
    let s = at(&m, seen("boot-a", OLD, Some(SUM)));
    assert_eq!(s.machine.state.phase(), Phase::Failed);
    assert!(
        matches!(&s.actions[..], [Action::RestoreBooted, Action::Report(UpgradeOutcome::Failed { reason })] if reason.contains("did not reboot"))
    );
}

#[test]
fn a_staged_deployment_replaced_by_someone_else_is_noticed() {
    // Before the grant: stage again.
    let s = at(&staged_machine(), seen("boot-a", OLD, Some("ffff")));
    assert_eq!(s.actions, vec![Action::Stage { target: img(T) }]);
    // After the grant: fail, so that the cluster side releases the node.
    let granted = at(&staged_machine(), Event::Granted).machine;
    let s = at(&granted, seen("boot-a", OLD, None));
    assert!(
        matches!(&s.actions[..], [Action::Report(UpgradeOutcome::Failed { reason })] if reason.contains("replaced or removed"))
    );
    // Just before the reboot: fail rather than reboot into nothing.
    let s = at(&rebooting_machine(), seen("boot-a", OLD, None));
    assert_eq!(s.machine.state.phase(), Phase::Failed);
    // Unless it was finalized already (it is what boots next): then ask for the reboot again.
    let finalized = Event::Observed(Observation {
        boot_id: "boot-a".into(),
        booted: OLD.into(),
        staged: None,
        default: Some(SUM.into()),
    });
    let s = at(&rebooting_machine(), finalized);
    assert_eq!(
        s.actions,
        vec![Action::Reboot {
            checksum: SUM.into()
        }]
    );
}

#[test]
fn a_failed_target_is_not_retried_until_another_is_asked_for() {
    let s = at(
        &verifying_machine(),
        Event::HealthFailed { reason: "x".into() },
    );
    let rolled = at(&s.machine, seen("boot-c", OLD, None)).machine;
    let again = at(&rolled, Event::TargetRequested { target: img(T) });
    assert!(again.actions.is_empty());
    assert_eq!(again.machine, rolled);
    let other = at(&rolled, Event::TargetRequested { target: img("v3") });
    assert_eq!(other.actions, vec![Action::Stage { target: img("v3") }]);
    assert_eq!(other.machine.failed_target, None);
}

#[test]
fn a_staging_failure_is_not_held_against_the_target() {
    let m = at(
        &Machine::new("b"),
        Event::TargetRequested { target: img(T) },
    )
    .machine;
    let s = at(
        &m,
        Event::StageFailed {
            target: img(T),
            reason: "read-only file system".into(),
        },
    );
    assert_eq!(s.machine.state.phase(), Phase::Failed);
    assert_eq!(s.machine.failed_target, None);
    let retry = at(&s.machine, Event::TargetRequested { target: img(T) });
    assert_eq!(retry.actions, vec![Action::Stage { target: img(T) }]);
}

#[test]
fn a_drain_failure_is_not_held_against_the_target() {
    let granted = at(&staged_machine(), Event::Granted).machine;
    let s = at(
        &granted,
        Event::DrainFailed {
            reason: "pod x blocked by pdb y".into(),
        },
    );
    assert_eq!(s.machine.state.phase(), Phase::Failed);
    assert_eq!(s.machine.failed_target, None);
    // What was staged for it is dropped (an abort with roll back leaves nothing staged).
    assert_eq!(s.actions.first(), Some(&Action::Unstage), "{:?}", s.actions);
    let retry = at(&s.machine, Event::TargetRequested { target: img(T) });
    assert_eq!(retry.actions, vec![Action::Stage { target: img(T) }]);
}

#[test]
fn a_new_target_while_staging_supersedes_and_stale_answers_are_ignored() {
    let m = at(
        &Machine::new("b"),
        Event::TargetRequested { target: img("v2") },
    )
    .machine;
    let s = at(&m, Event::TargetRequested { target: img("v3") });
    assert_eq!(s.actions, vec![Action::Stage { target: img("v3") }]);
    let stale = at(
        &s.machine,
        Event::Staged {
            target: img("v2"),
            checksum: "c2".into(),
        },
    );
    assert_eq!(stale.machine, s.machine);
    let fresh = at(
        &s.machine,
        Event::Staged {
            target: img("v3"),
            checksum: "c3".into(),
        },
    );
    assert_eq!(
        fresh.machine.state,
        State::Staged {
            target: img("v3"),
            checksum: "c3".into()
        }
    );
}

#[test]
fn requests_during_an_upgrade_wait_and_withdrawal_unstages_only_at_rest() {
    let m = rebooting_machine();
    let s = at(&m, Event::TargetRequested { target: img("v3") });
    assert_eq!(s.machine, m);
    assert!(s.actions.is_empty());
    assert_eq!(at(&m, Event::TargetWithdrawn).machine, m);
    let s = at(&staged_machine(), Event::TargetWithdrawn);
    assert_eq!(
        (s.machine.state, s.actions),
        (State::Idle, vec![Action::Unstage])
    );
}

#[test]
fn unexpected_events_are_errors_not_panics() {
    let err = step(&Machine::new("b"), &Event::Drained, 0, LIMITS).unwrap_err();
    assert_eq!(err.phase, Phase::Idle);
    assert!(err.to_string().contains("Drained"));
    assert!(step(&staged_machine(), &Event::HealthPassed, 0, LIMITS).is_err());
}

#[test]
fn the_persisted_form_is_tagged_camel_case() {
    let json = serde_json::to_value(rebooting_machine()).unwrap();
    assert_eq!(json["state"]["phase"], "rebooting");
    assert_eq!(json["state"]["fromBoot"], "boot-a");
    assert_eq!(json["bootId"], "boot-a");
    let back: Machine = serde_json::from_value(json).unwrap();
    assert_eq!(back, rebooting_machine());
}

// --- property: crash anywhere, resume from the journal, never repeat a destructive step -----

/// A simulated host: what the OS backend and logind would do to a real machine.
#[derive(Debug, Clone)]
struct Host {
    boot: u32,
    booted: String,
    staged: Option<String>,
    previous: Option<String>,
    /// Boots into the target, and rollbacks, that actually happened.
    target_boots: u32,
    rollbacks: u32,
}

impl Host {
    fn observe(&self) -> Event {
        seen(
            &format!("boot-{}", self.boot),
            &self.booted,
            self.staged.as_deref(),
        )
    }
}

#[derive(Debug, Clone)]
struct Scenario {
    stage_fails: bool,
    drain_fails: bool,
    /// The target's health: passes, fails, or never answers (timeout).
    health: u8,
    /// The target does not come up (the boot loader falls back).
    target_does_not_boot: bool,
    /// Crash before performing the n-th action, and after performing the m-th.
    crash_before: Vec<usize>,
    crash_after: Vec<usize>,
}

fn scenarios() -> impl Strategy<Value = Scenario> {
    (
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        0u8..3,
        prop::bool::weighted(0.1),
        prop::collection::vec(0usize..12, 0..4),
        prop::collection::vec(0usize..12, 0..4),
    )
        .prop_map(
            |(
                stage_fails,
                drain_fails,
                health,
                target_does_not_boot,
                crash_before,
                crash_after,
            )| Scenario {
                stage_fails,
                drain_fails,
                health,
                target_does_not_boot,
                crash_before,
                crash_after,
            },
        )
}

/// Plays a whole upgrade. The "journal" is the serialized machine, written before each
/// action; a crash throws the in-memory machine and pending events away and resumes from
/// the journal with an observation of the host, as hkd does at start.
fn play(sc: &Scenario) -> (Machine, Host) {
    let mut host = Host {
        boot: 0,
        booted: OLD.into(),
        staged: None,
        previous: None,
        target_boots: 0,
        rollbacks: 0,
    };
    let mut journal = serde_json::to_string(&Machine::new("boot-0")).unwrap();
    let mut now = 1000;
    let mut events = vec![Event::TargetRequested { target: img(T) }];
    let mut n = 0;
    for _ in 0..200 {
        let Some(event) = events.pop() else {
            // Nothing pending: the cluster grants once staged, and time passes.
            let m: Machine = serde_json::from_str(&journal).unwrap();
            match m.state {
                State::Staged { .. } => events.push(Event::Granted),
                State::Verifying { .. } => {
                    now += 400;
                    events.push(Event::Tick);
                }
                _ => break,
            }
            continue;
        };
        let m: Machine = serde_json::from_str(&journal).unwrap();
        let s = match step(&m, &event, now, LIMITS) {
            Ok(s) => s,
            Err(_) => continue, // a stale answer after a crash: logged and dropped
        };
        journal = serde_json::to_string(&s.machine).unwrap();
        for action in s.actions {
            n += 1;
            if sc.crash_before.contains(&n) {
                events.clear();
                events.push(host.observe());
                break;
            }
            let answer = perform(&action, &mut host, sc);
            if sc.crash_after.contains(&n) {
                events.clear();
                events.push(host.observe());
                break;
            }
            events.extend(answer.into_iter().rev());
        }
    }
    (serde_json::from_str(&journal).unwrap(), host)
}

fn perform(action: &Action, host: &mut Host, sc: &Scenario) -> Vec<Event> {
    match action {
        Action::Stage { target } => {
            if sc.stage_fails {
                return vec![Event::StageFailed {
                    target: target.clone(),
                    reason: "no space".into(),
                }];
            }
            host.staged = Some(SUM.into());
            vec![Event::Staged {
                target: target.clone(),
                checksum: SUM.into(),
            }]
        }
        Action::Unstage => {
            host.staged = None;
            vec![]
        }
        Action::Drain if sc.drain_fails => vec![
            Event::DrainStarted,
            Event::DrainFailed {
                reason: "pdb".into(),
            },
        ],
        Action::Drain => vec![Event::DrainStarted, Event::Drained],
        Action::Reboot { checksum } => {
            assert_eq!(host.staged.as_deref(), Some(checksum.as_str()));
            host.boot += 1;
            host.staged = None;
            if !sc.target_does_not_boot {
                host.previous = Some(std::mem::replace(&mut host.booted, checksum.clone()));
                host.target_boots += 1;
            }
            vec![host.observe()]
        }
        Action::CheckHealth => match sc.health {
            0 => vec![Event::HealthPassed],
            1 => vec![Event::HealthFailed {
                reason: "check failed".into(),
            }],
            _ => vec![],
        },
        Action::Rollback => {
            let previous = host
                .previous
                .take()
                .expect("rollback with no previous deployment");
            host.booted = previous;
            host.boot += 1;
            host.rollbacks += 1;
            vec![host.observe()]
        }
        Action::RestoreBooted => vec![],
        Action::Report(_) => vec![],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_run_ends_at_rest_with_no_destructive_step_repeated(sc in scenarios()) {
        let (m, host) = play(&sc);
        prop_assert!(
            matches!(m.state, State::Done { .. } | State::Failed { .. } | State::RolledBack { .. }),
            "ended in {:?}", m.state
        );
        prop_assert!(host.target_boots <= 1, "booted into the target {} times", host.target_boots);
        prop_assert!(host.rollbacks <= 1, "rolled back {} times", host.rollbacks);
        match &m.state {
            // I4: done only when the target runs and the gate passed.
            State::Done { checksum, .. } => {
                prop_assert_eq!(&host.booted, checksum);
                prop_assert_eq!(sc.health, 0);
            }
            State::RolledBack { .. } => prop_assert_eq!(host.booted.as_str(), OLD),
            State::Failed { .. } => {}
            _ => unreachable!(),
        }
        if sc.health == 0 && !sc.stage_fails && !sc.drain_fails && !sc.target_does_not_boot {
            let done = matches!(m.state, State::Done { .. });
            let gave_up = matches!(&m.state, State::Failed { reason, .. } if reason.contains("did not reboot"));
            prop_assert!(done || gave_up, "a healthy upgrade ended in {:?}", m.state);
        }
    }
}
