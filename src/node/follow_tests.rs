//! The follower's decisions, one rule at a time.

use super::*;
use crate::cluster::update::{Abort, UpdateSpec};
use crate::image_ref::ImageRef;
use serde_json::json;

const IMG: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";
const OLD: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:1";

/// A well-formed reference, as the journal would load it.
fn img(raw: &str) -> ImageRef {
    ImageRef::parse_any(raw).unwrap()
}
fn update(name: &str, uid: &str, created: &str) -> Update {
    let spec: UpdateSpec = serde_json::from_value(json!({"osImageURL": IMG})).unwrap();
    let mut u = Update::new(name, spec);
    u.metadata.uid = Some(uid.into());
    u.metadata.generation = Some(1);
    u.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created.parse().unwrap(),
    ));
    u
}

fn node() -> NodeView {
    NodeView {
        name: "w-1".into(),
        ready: true,
        os_image: Some(OLD.into()),
        ..Default::default()
    }
}

fn g() -> Grant {
    "uid-1/1".parse().unwrap()
}

fn granted(mut n: NodeView, phase: Option<AgentPhase>) -> NodeView {
    n.grant = Some(g());
    if let Some(p) = phase {
        n.phase = Some(p);
        n.phase_grant = Some(g());
    }
    n
}

fn machine(state: State) -> Machine {
    Machine {
        state,
        boot_id: "boot-1".into(),
        failed_target: None,
    }
}

fn now() -> Timestamp {
    "2024-03-02T10:00:00Z".parse().unwrap()
}

/// What the follower knows in most tests: the host booted OLD, no retry pending.
fn input<'a>(node: Option<&'a NodeView>, updates: &'a [Update], m: &'a Machine) -> Input<'a> {
    Input {
        node,
        updates,
        machine: m,
        booted_image: Some(OLD),
        policy: ImagePolicy::default(),
        now: now(),
        last_retry: None,
        retry_after: jiff::SignedDuration::from_secs(300),
        progress: None,
        progress_written: None,
    }
}

fn run(node: Option<&NodeView>, updates: &[Update], m: &Machine) -> Decision {
    decide(input(node, updates, m))
}

fn staged() -> State {
    State::Staged {
        target: img(IMG),
        checksum: "c2".into(),
    }
}

fn requested() -> Event {
    Event::TargetRequested { target: img(IMG) }
}

#[test]
fn an_update_that_selects_the_node_is_staged_ahead_of_the_grant() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let mut n = node();
    n.os_image = None;
    let d = run(Some(&n), &u, &machine(State::Idle));
    assert_eq!(d.events, vec![requested()]);
    assert!(d.may_lead);
    assert_eq!(d.following.as_deref(), Some("roll"));
    // The booted image is mirrored for the planner.
    assert_eq!(d.annotations.get(OS_IMAGE), Some(&Some(OLD.to_owned())));
}

#[test]
fn with_bounded_staging_only_a_permit_for_the_current_target_stages() {
    let mut u = update("roll", "uid-1", "2024-03-01T00:00:00Z");
    u.spec.staging = Some(crate::cluster::update::Staging { max_concurrent: 2 });
    let n = node();
    // No status yet, no permit: nothing pulled.
    let d = run(Some(&n), std::slice::from_ref(&u), &machine(State::Idle));
    assert!(d.events.is_empty(), "{:?}", d.events);
    assert_eq!(d.following.as_deref(), Some("roll"));
    // A permit for an older target: still nothing.
    let mut status = crate::cluster::update::UpdateStatus {
        target_generation: Some(2),
        ..Default::default()
    };
    status.staging_permits.insert("w-1".into(), 1);
    u.status = Some(status.clone());
    let d = run(Some(&n), std::slice::from_ref(&u), &machine(State::Idle));
    assert!(d.events.is_empty(), "{:?}", d.events);
    // Another node's permit: nothing.
    status.staging_permits = [("w-2".to_owned(), 2)].into();
    u.status = Some(status.clone());
    assert!(
        run(Some(&n), std::slice::from_ref(&u), &machine(State::Idle))
            .events
            .is_empty()
    );
    // Its own permit for the current target: staged.
    status.staging_permits.insert("w-1".into(), 2);
    u.status = Some(status);
    let d = run(Some(&n), std::slice::from_ref(&u), &machine(State::Idle));
    assert_eq!(d.events, vec![requested()]);
}

#[test]
fn a_staged_target_is_shown_and_not_asked_for_again() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let d = run(Some(&node()), &u, &machine(staged()));
    assert!(d.events.is_empty());
    assert_eq!(d.annotations.get(STAGED), Some(&Some(IMG.to_owned())));
}

#[test]
fn a_selector_that_does_not_match_withdraws_the_staged_target() {
    let mut u = update("roll", "uid-1", "2024-03-01T00:00:00Z");
    u.spec.node_selector =
        Some(serde_json::from_value(json!({"matchLabels": {"pool": "gpu"}})).unwrap());
    let mut n = node();
    n.staged = Some(IMG.into());
    let d = run(Some(&n), &[u], &machine(staged()));
    assert_eq!(d.events, vec![Event::TargetWithdrawn]);
    assert_eq!(d.annotations.get(STAGED), Some(&None));
    assert_eq!(d.following, None);
}

#[test]
fn the_newest_update_wins_before_any_grant_the_granting_one_after() {
    let mut older = update("old", "uid-0", "2024-01-01T00:00:00Z");
    older.spec.os_image_url = OLD.into();
    let newer = update("roll", "uid-1", "2024-03-01T00:00:00Z");
    let both = [older, newer];
    let d = run(Some(&node()), &both, &machine(State::Idle));
    assert_eq!(d.following.as_deref(), Some("roll"));
    // A grant of the older Update is honoured first.
    let mut n = node();
    n.grant = Some("uid-0/1".parse().unwrap());
    n.os_image = Some("x".into());
    let d = run(Some(&n), &both, &machine(State::Idle));
    assert_eq!(d.following.as_deref(), Some("old"));
}

#[test]
fn a_grant_is_begun_on_the_node_before_the_machine_hears_of_it() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let d = run(Some(&granted(node(), None)), &u, &machine(staged()));
    assert_eq!(d.events, vec![Event::Granted]);
    assert_eq!(d.annotations.get(PHASE), Some(&Some("Draining".to_owned())));
    assert_eq!(d.annotations.get(PHASE_GRANT), Some(&Some(g().to_string())));
    assert!(d.annotations.contains_key(SINCE));
    assert!(
        !d.may_lead,
        "the coordinator steps down before its node drains"
    );
}

#[test]
fn a_grant_before_staging_finished_waits_for_it() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let m = machine(State::Staging { target: img(IMG) });
    let d = run(Some(&granted(node(), None)), &u, &m);
    assert!(d.events.is_empty());
    assert_eq!(d.annotations.get(PHASE), Some(&Some("Staging".to_owned())));
}

#[test]
fn phases_follow_the_machine_and_are_written_once() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let m = machine(State::Rebooting {
        target: img(IMG),
        checksum: "c2".into(),
        from_boot: "boot-1".into(),
        attempt: 1,
    });
    let d = run(Some(&granted(node(), Some(AgentPhase::Draining))), &u, &m);
    assert_eq!(
        d.annotations.get(PHASE),
        Some(&Some("Rebooting".to_owned()))
    );
    let d = run(Some(&granted(node(), Some(AgentPhase::Rebooting))), &u, &m);
    assert!(!d.annotations.contains_key(PHASE));
    assert!(d.events.is_empty());
}

#[test]
fn done_finishes_the_grant_with_uncordon_only_when_hkd_cordoned() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let m = machine(State::Done {
        target: img(IMG),
        checksum: "c2".into(),
    });
    let mut n = granted(node(), Some(AgentPhase::Verifying));
    n.unschedulable = true;
    n.cordoned_by_hkd = true;
    let f = run(Some(&n), &u, &m).finish.unwrap();
    assert_eq!(f.answer, Answer::Done);
    assert!(f.uncordon);
    n.cordoned_by_hkd = false; // an admin's cordon
    let f = run(Some(&n), &u, &m).finish.unwrap();
    assert!(!f.uncordon);
}

#[test]
fn a_failure_after_the_grant_began_answers_it() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let m = machine(State::Failed {
        target: img(IMG),
        reason: "drain failed: PDB".into(),
    });
    let d = run(Some(&granted(node(), Some(AgentPhase::Draining))), &u, &m);
    assert_eq!(
        d.finish.unwrap().answer,
        Answer::Failed("drain failed: PDB".into())
    );
    assert!(d.events.is_empty());
}

#[test]
fn a_failure_from_before_the_grant_is_tried_again_under_it() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let m = machine(State::Failed {
        target: img(IMG),
        reason: "staging failed: network".into(),
    });
    let d = run(Some(&granted(node(), None)), &u, &m);
    assert_eq!(d.finish, None);
    assert_eq!(d.events, vec![requested()]);
    assert_eq!(d.annotations.get(PHASE), Some(&Some("Staging".to_owned())));
}

#[test]
fn a_target_that_failed_here_is_answered_failed_at_once() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let mut m = machine(State::RolledBack {
        target: img(IMG),
        reason: "health check failed".into(),
    });
    m.failed_target = Some(img(IMG));
    let d = run(Some(&granted(node(), None)), &u, &m);
    match d.finish.unwrap().answer {
        Answer::Failed(r) => assert!(r.contains("failed on this node before"), "{r}"),
        a => panic!("{a:?}"),
    }
    // And without a grant it is not staged again.
    let d = run(Some(&node()), &u, &m);
    assert!(d.events.is_empty());
}

#[test]
fn a_node_already_on_the_target_answers_done() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let n = granted(node(), None);
    let d = decide(Input {
        booted_image: Some(IMG),
        ..input(Some(&n), &u, &machine(State::Idle))
    });
    assert_eq!(d.finish.unwrap().answer, Answer::Done);
}

#[test]
fn a_failed_staging_before_any_grant_is_retried_at_a_pace() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let m = machine(State::Failed {
        target: img(IMG),
        reason: "staging failed: disk full".into(),
    });
    let n = node();
    let recent = now() - jiff::SignedDuration::from_secs(60);
    let d = decide(Input {
        last_retry: Some((&img(IMG), recent)),
        ..input(Some(&n), &u, &m)
    });
    assert!(d.events.is_empty());
    assert_eq!(
        d.wake_at,
        Some(recent + jiff::SignedDuration::from_secs(300))
    );
    let long_ago = now() - jiff::SignedDuration::from_secs(600);
    let d = decide(Input {
        last_retry: Some((&img(IMG), long_ago)),
        ..input(Some(&n), &u, &m)
    });
    assert_eq!(d.events, vec![requested()]);
}

#[test]
fn an_abort_with_roll_back_gives_back_grants_not_yet_out_of_service() {
    let mut u = update("roll", "uid-1", "2024-03-01T00:00:00Z");
    u.spec.abort = Some(Abort {
        in_flight: InFlight::RollBack,
    });
    let u = [u];
    let d = run(Some(&granted(node(), None)), &u, &machine(staged()));
    assert_eq!(d.events, vec![Event::TargetWithdrawn]);
    assert!(matches!(d.finish.unwrap().answer, Answer::Failed(r) if r.contains("aborted")));
    // A node already rebooting finishes.
    let m = machine(State::Verifying {
        target: img(IMG),
        checksum: "c2".into(),
        since: 1,
    });
    let d = run(Some(&granted(node(), Some(AgentPhase::Rebooting))), &u, &m);
    assert_eq!(d.finish, None);
    assert_eq!(
        d.annotations.get(PHASE),
        Some(&Some("Verifying".to_owned()))
    );
    // Without a grant an aborted Update is not followed at all.
    let d = run(Some(&node()), &u, &machine(staged()));
    assert_eq!(d.events, vec![Event::TargetWithdrawn]);
}

#[test]
fn a_cordon_hkd_holds_without_a_grant_in_progress_is_lifted() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let mut n = granted(node(), Some(AgentPhase::Failed));
    n.unschedulable = true;
    n.cordoned_by_hkd = true;
    let d = run(Some(&n), &u, &machine(State::Idle));
    assert!(d.uncordon);
    n.cordoned_by_hkd = false;
    assert!(!run(Some(&n), &u, &machine(State::Idle)).uncordon);
    // Not while the machine is out of service.
    n.cordoned_by_hkd = true;
    let m = machine(State::Draining {
        target: img(IMG),
        checksum: "c2".into(),
    });
    assert!(!run(Some(&n), &[], &m).uncordon);
}

#[test]
fn without_a_node_object_nothing_is_written_or_asked() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let d = run(None, &u, &machine(State::Idle));
    assert_eq!(
        d,
        Decision {
            may_lead: true,
            ..Decision::default()
        }
    );
}

#[test]
fn kubeadm_applies_on_the_first_control_plane_node_only() {
    assert_eq!(kubeadm_step(None, true, Some("v1.20.2")), None);
    assert_eq!(
        kubeadm_step(Some("1.21.0"), true, Some("v1.20.2")),
        Some(KubeadmStep::Apply("v1.21.0".into()))
    );
    assert_eq!(
        kubeadm_step(Some("v1.21.0"), true, Some("v1.21.0")),
        Some(KubeadmStep::Node)
    );
    assert_eq!(
        kubeadm_step(Some("v1.21.0"), false, Some("v1.20.2")),
        Some(KubeadmStep::Node)
    );
    // An unreadable server version: a control-plane node applies (apply is idempotent).
    assert_eq!(
        kubeadm_step(Some("v1.21.0"), true, None),
        Some(KubeadmStep::Apply("v1.21.0".into()))
    );
}

#[test]
fn an_invalid_update_is_not_followed() {
    let mut u = update("roll", "uid-1", "2024-03-01T00:00:00Z");
    u.spec.maintenance_windows = vec![serde_json::from_value(
        json!({"start": "22:00", "end": "04:00", "timeZone": "Mars/Olympus_Mons"}),
    )
    .unwrap()];
    let d = run(Some(&node()), &[u], &machine(staged()));
    assert_eq!(d.following, None);
    assert_eq!(d.events, vec![Event::TargetWithdrawn]);
}

#[test]
fn a_grant_of_an_update_that_does_not_select_this_node_is_not_taken_up() {
    let mut u = update("os", "uid-1", "2024-03-01T00:00:00Z");
    u.spec.node_selector =
        Some(serde_json::from_value(json!({"matchLabels": {"pool": "other"}})).unwrap());
    let n = granted(node(), None);
    let m = machine(staged());
    let d = run(Some(&n), &[u.clone()], &m);
    // Not taken up: no Granted; the staged target of an Update that does not select this
    // node is withdrawn as for any such Update.
    assert_eq!(d.events, [Event::TargetWithdrawn]);
    assert!(d.finish.is_none() && !d.annotations.contains_key(PHASE_GRANT));
    assert!(
        d.refused
            .as_deref()
            .is_some_and(|r| r.contains("does not select this node")),
        "{:?}",
        d.refused
    );
    // A grant already begun is finished wherever the labels went.
    let begun = granted(node(), Some(AgentPhase::Draining));
    let d = run(Some(&begun), &[u], &machine(staged()));
    assert_eq!(d.refused, None);
}

#[test]
fn staging_progress_is_shown_a_few_times_a_minute_and_removed_when_staging_ends() {
    let u = [update("roll", "uid-1", "2024-03-01T00:00:00Z")];
    let m = machine(State::Staging { target: img(IMG) });
    let words = "Receiving objects 43 %, 310.0 MiB at 2.0 MiB/s";
    let shown = Some(format!("staging: {words}"));
    let n = node();
    // First report: written at once.
    let d = decide(Input {
        progress: Some(words),
        ..input(Some(&n), &u, &m)
    });
    assert_eq!(d.annotations.get(PROGRESS), Some(&shown));
    // A newer report within PROGRESS_EVERY of the last write waits; after it, it is written.
    let mut n = node();
    n.progress = shown.clone();
    let newer = "Receiving objects 80 %, 580.0 MiB at 2.0 MiB/s";
    let recent = now() - jiff::SignedDuration::from_secs(5);
    let d = decide(Input {
        progress: Some(newer),
        progress_written: Some(recent),
        ..input(Some(&n), &u, &m)
    });
    assert_eq!(d.annotations.get(PROGRESS), None);
    let d = decide(Input {
        progress: Some(newer),
        progress_written: Some(now() - PROGRESS_EVERY),
        ..input(Some(&n), &u, &m)
    });
    assert_eq!(
        d.annotations.get(PROGRESS),
        Some(&Some(format!("staging: {newer}")))
    );
    // The same words are not written again, however long ago the last write was.
    let d = decide(Input {
        progress: Some(words),
        ..input(Some(&n), &u, &m)
    });
    assert_eq!(d.annotations.get(PROGRESS), None);
    // Staging over: removed at once, even right after a write.
    let d = decide(Input {
        progress: Some(words),
        progress_written: Some(recent),
        ..input(Some(&n), &u, &machine(staged()))
    });
    assert_eq!(d.annotations.get(PROGRESS), Some(&None));
    // Nothing reported while staging: nothing written.
    let d = run(Some(&node()), &u, &m);
    assert_eq!(d.annotations.get(PROGRESS), None);
}
