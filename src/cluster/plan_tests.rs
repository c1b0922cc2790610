//! The planner's rules, one by one, and the invariants over random rollouts.

use super::*;
use crate::cluster::annotations::AgentPhase;
use crate::cluster::update::UpdateSpec;
use proptest::prelude::*;
use serde_json::json;

const IMG: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";
const OLD: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:1";

fn update(extra: serde_json::Value) -> Update {
    let mut spec = json!({"osImageURL": IMG});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let spec: UpdateSpec = serde_json::from_value(spec).unwrap();
    let mut u = Update::new("roll", spec);
    u.metadata.uid = Some("uid-1".into());
    u.metadata.generation = Some(1);
    u
}

fn node(name: &str, cp: bool) -> NodeView {
    NodeView {
        name: name.into(),
        control_plane: cp,
        ready: true,
        os_image: Some(OLD.into()),
        ..Default::default()
    }
}

fn now() -> Timestamp {
    "2024-03-02T10:00:00Z".parse().unwrap()
}

fn strict() -> ImagePolicy {
    ImagePolicy::default()
}

fn grant(n: &mut NodeView, g: &Grant, phase: Option<AgentPhase>) {
    n.grant = Some(g.clone());
    if let Some(p) = phase {
        n.phase = Some(p);
        n.phase_grant = Some(g.clone());
    }
    if phase == Some(AgentPhase::Done) {
        n.os_image = Some(IMG.into());
    }
}

fn cond<'a>(p: &'a RolloutPlan, t: &str) -> &'a UpdateCondition {
    p.status.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn control_plane_first_one_at_a_time() {
    let u = update(json!({"maxUnavailable": 3}));
    let mut nodes = vec![node("cp-b", true), node("cp-a", true), node("w-1", false)];
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, vec!["cp-a"]);
    let g = p.grant.clone().unwrap();
    assert_eq!(g.to_string(), "uid-1/1");
    // cp-a in flight: nothing else, not even workers, though the budget allows.
    grant(&mut nodes[1], &g, Some(AgentPhase::Draining));
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, PROGRESSING).reason, "ControlPlaneInFlight");
    grant(&mut nodes[1], &g, Some(AgentPhase::Done));
    assert_eq!(plan(&u, &nodes, now(), strict()).grants, vec!["cp-b"]);
    grant(&mut nodes[0], &g, Some(AgentPhase::Done));
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, vec!["w-1"]);
    grant(&mut nodes[2], &g, Some(AgentPhase::Done));
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(p.status.state.as_deref(), Some("Complete"));
    assert_eq!(cond(&p, COMPLETE).status, "True");
    assert_eq!(p.status.counts.done, 3);
    assert_eq!(p.wake_after, None);
}

#[test]
fn max_unavailable_counts_in_flight_notready_and_foreign_cordons() {
    let u = update(json!({"maxUnavailable": 3}));
    let mut nodes: Vec<_> = (1..=6).map(|i| node(&format!("w-{i}"), false)).collect();
    let g = Grant {
        uid: "uid-1".into(),
        generation: 1,
    };
    grant(&mut nodes[0], &g, Some(AgentPhase::Rebooting));
    nodes[1].ready = false;
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, vec!["w-3"], "3 - in flight - NotReady = 1");
    nodes[2].unschedulable = true; // an admin's cordon
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, PROGRESSING).reason, "MaxUnavailable");
    let msg = &cond(&p, PROGRESSING).message;
    assert!(
        msg.contains("w-2 (NotReady)") && msg.contains("w-3 (cordoned by someone else)"),
        "{msg}"
    );
    assert_eq!(p.status.counts.waiting, 2);
    // hkd's own cordon is not someone else's.
    nodes[2].cordoned_by_hkd = true;
    assert_eq!(plan(&u, &nodes, now(), strict()).grants, vec!["w-3"]);
}

#[test]
fn done_by_version_and_selector() {
    let u = update(json!({"nodeSelector": {"matchLabels": {"pool": "a"}}}));
    let mut a = node("a", false);
    a.labels.insert("pool".into(), "a".into());
    let mut b = node("b", false);
    b.labels.insert("pool".into(), "a".into());
    b.os_image = Some(IMG.into());
    let c = node("c", false);
    let p = plan(&u, &[a, b, c], now(), strict());
    assert_eq!(p.grants, vec!["a"]);
    assert_eq!(p.status.counts.total, 2);
    assert_eq!(p.status.counts.done, 1);
    // Nothing selected: said so.
    let u = update(json!({"nodeSelector": {"matchLabels": {"pool": "zz"}}}));
    let p = plan(&u, &[node("a", false)], now(), strict());
    assert_eq!(cond(&p, PROGRESSING).reason, "NoNodesSelected");
}

#[test]
fn kube_version_needs_the_kubelet_too() {
    let u = update(json!({"kubeVersion": "v1.29.1"}));
    let mut n = node("w", false);
    n.os_image = Some(IMG.into());
    n.kubelet_version = Some("v1.28.0".into());
    assert_eq!(plan(&u, &[n.clone()], now(), strict()).grants, vec!["w"]);
    n.kubelet_version = Some("v1.29.1".into());
    assert!(plan(&u, &[n], now(), strict()).grants.is_empty());
}

#[test]
fn failures_beyond_the_budget_halt() {
    let u = update(json!({"maxUnavailable": 2, "maxFailed": 1}));
    let g = Grant {
        uid: "uid-1".into(),
        generation: 1,
    };
    let mut nodes: Vec<_> = (1..=5).map(|i| node(&format!("w-{i}"), false)).collect();
    grant(&mut nodes[0], &g, Some(AgentPhase::Failed));
    nodes[0].reason = Some("health gate: kubelet not Ready".into());
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, vec!["w-2", "w-3"], "one failure is within budget");
    grant(&mut nodes[1], &g, Some(AgentPhase::Failed));
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    let halted = cond(&p, HALTED);
    assert_eq!(halted.status, "True");
    assert_eq!(halted.reason, "FailureBudgetExceeded");
    assert!(
        halted
            .message
            .contains("w-1 (health gate: kubelet not Ready)"),
        "{}",
        halted.message
    );
    assert!(p.halt.is_some());
    assert_eq!(p.status.nodes[0].phase, "Failed");
}

#[test]
fn failed_control_plane_halts_a_kube_upgrade() {
    let u = update(json!({"kubeVersion": "v1.29.1", "maxFailed": 3}));
    let g = Grant {
        uid: "uid-1".into(),
        generation: 1,
    };
    let mut nodes = vec![node("cp", true), node("w", false)];
    grant(&mut nodes[0], &g, Some(AgentPhase::Failed));
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, HALTED).reason, "ControlPlaneFailed");
    // OS only: workers may go.
    let u = update(json!({"maxFailed": 3}));
    assert_eq!(plan(&u, &nodes, now(), strict()).grants, vec!["w"]);
}

#[test]
fn paused_and_invalid_grant_nothing() {
    let p = plan(
        &update(json!({"paused": true})),
        &[node("w", false)],
        now(),
        strict(),
    );
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, PAUSED).status, "True");
    assert_eq!(p.status.state.as_deref(), Some("Paused"));
    let p = plan(
        &update(json!({"osImageURL": "docker://x/y"})),
        &[node("w", false)],
        now(),
        strict(),
    );
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, HALTED).reason, "InvalidSpec");
}

#[test]
fn windows_across_midnight_in_shanghai_and_wake_after() {
    // Sat 22:00 – Sun 04:00 Asia/Shanghai. now() is Sat 18:00 local.
    let u = update(json!({"maintenanceWindows": [
        {"days": ["Sat"], "start": "22:00", "end": "04:00", "timeZone": "Asia/Shanghai"}]}));
    let nodes = [node("w", false)];
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, PROGRESSING).reason, "OutsideMaintenanceWindow");
    assert_eq!(p.wake_after, Some(Duration::from_secs(4 * 3600)));
    // Sun 01:30 local: inside the Saturday opening; wake at its close.
    let inside: Timestamp = "2024-03-02T17:30:00Z".parse().unwrap();
    let p = plan(&u, &nodes, inside, strict());
    assert_eq!(p.grants, vec!["w"]);
    assert_eq!(p.wake_after, Some(Duration::from_secs(2 * 3600 + 1800)));
}

#[test]
fn window_on_a_dst_night_in_berlin() {
    // 2024-03-31 01:00–05:00 Europe/Berlin is 3 real hours (02:00 → 03:00 skipped).
    let u = update(json!({"maintenanceWindows": [
        {"start": "01:00", "end": "05:00", "timeZone": "Europe/Berlin"}]}));
    let t: Timestamp = "2024-03-31T00:00:00Z".parse().unwrap();
    let p = plan(&u, &[node("w", false)], t, strict());
    assert_eq!(p.grants, vec!["w"]);
    assert_eq!(p.wake_after, Some(Duration::from_secs(3 * 3600)));
}

#[test]
fn a_changed_target_reopens_done_and_failed_nodes() {
    let mut u = update(json!({"maxFailed": 5}));
    let g1 = Grant {
        uid: "uid-1".into(),
        generation: 1,
    };
    let mut nodes = vec![node("a", false), node("b", false)];
    grant(&mut nodes[0], &g1, Some(AgentPhase::Done));
    grant(&mut nodes[1], &g1, Some(AgentPhase::Failed));
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.status.counts.failed, 1);
    u.status = Some(p.status);
    // The admin edits osImageURL in place (NKD style): generation 2, a new target.
    u.spec.os_image_url = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:3".into();
    u.metadata.generation = Some(2);
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.status.target_generation, Some(2));
    assert_eq!(
        p.grants,
        vec!["a"],
        "a is done for the old target only, b may retry"
    );
    // Pausing (generation 3) is not a new target: b's failure would stay.
    u.status = Some(p.status);
    u.metadata.generation = Some(3);
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.status.target_generation, Some(2));
}

#[test]
fn condition_times_move_only_on_change() {
    let mut u = update(json!({}));
    let p1 = plan(&u, &[node("w", false)], now(), strict());
    u.status = Some(p1.status.clone());
    let later: Timestamp = "2024-03-02T11:00:00Z".parse().unwrap();
    let p2 = plan(&u, &[node("w", false)], later, strict());
    assert_eq!(
        cond(&p1, PROGRESSING).last_transition_time,
        cond(&p2, PROGRESSING).last_transition_time
    );
}

#[test]
fn node_summaries_are_bounded_and_failures_first() {
    let u = update(json!({"maxFailed": 1000}));
    let g = Grant {
        uid: "uid-1".into(),
        generation: 1,
    };
    let mut nodes: Vec<_> = (0..120)
        .map(|i| node(&format!("w-{i:03}"), false))
        .collect();
    grant(&mut nodes[119], &g, Some(AgentPhase::Failed));
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.status.nodes.len(), MAX_NODE_SUMMARIES);
    assert_eq!(p.status.nodes_omitted, 120 - MAX_NODE_SUMMARIES as i32);
    assert_eq!(p.status.nodes[0].name, "w-119");
}

#[test]
fn another_updates_node_is_out_of_service() {
    let u = update(json!({}));
    let mut a = node("a", false);
    a.grant = Some(Grant {
        uid: "other".into(),
        generation: 4,
    });
    let p = plan(&u, &[a, node("b", false)], now(), strict());
    assert!(
        p.grants.is_empty(),
        "maxUnavailable 1 is used by the other rollout"
    );
    assert!(cond(&p, PROGRESSING).message.contains("another Update"));
}

fn in_zone(name: &str, zone: &str) -> NodeView {
    let mut n = node(name, false);
    n.labels
        .insert("topology.kubernetes.io/zone".into(), zone.into());
    n
}

fn pod_hold(node: &str, pod: &str) -> Hold {
    Hold {
        node: Some(node.into()),
        reason: "BlockingPod".into(),
        message: format!("blocking pod {pod}"),
    }
}

#[test]
fn at_most_n_per_zone_beside_max_unavailable() {
    let u = update(json!({"maxUnavailable": 4, "maxUnavailablePerZone": 1}));
    let mut nodes = vec![
        in_zone("a-1", "a"),
        in_zone("a-2", "a"),
        in_zone("b-1", "b"),
        in_zone("b-2", "b"),
        in_zone("c-1", "c"),
    ];
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, vec!["a-1", "b-1", "c-1"]);
    assert_eq!(cond(&p, PROGRESSING).reason, ZONE_LIMIT);
    let a2 = p.all_nodes.iter().find(|n| n.name == "a-2").unwrap();
    assert_eq!(a2.reason, "zone a full (maxUnavailablePerZone 1)");
    // A node of zone b gone NotReady by itself uses up zone b, as it uses up maxUnavailable.
    nodes[2].ready = false;
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, vec!["a-1", "c-1"]);
}

#[test]
fn never_two_zones_at_once_when_asked() {
    let u = update(json!({"maxUnavailable": 3, "maxUnavailableZones": 1}));
    let mut nodes = vec![
        in_zone("a-1", "a"),
        in_zone("a-2", "a"),
        in_zone("b-1", "b"),
    ];
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, vec!["a-1", "a-2"]);
    let g = p.grant.clone().unwrap();
    grant(&mut nodes[0], &g, Some(AgentPhase::Done));
    grant(&mut nodes[1], &g, Some(AgentPhase::Draining));
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(
        cond(&p, PROGRESSING).message,
        "1 node(s) wait for their zone; b-1: zone(s) a out of service (maxUnavailableZones 1)"
    );
    grant(&mut nodes[1], &g, Some(AgentPhase::Done));
    assert_eq!(plan(&u, &nodes, now(), strict()).grants, vec!["b-1"]);
}

#[test]
fn a_topology_key_no_node_carries_holds_every_node_and_says_which_label() {
    let u = update(json!({"maxUnavailablePerZone": 1, "topologyKey": "example.com/rack"}));
    let nodes = vec![in_zone("a-1", "a"), in_zone("b-1", "b")];
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, PROGRESSING).reason, NODES_HELD);
    assert!(cond(&p, PROGRESSING)
        .message
        .contains("a-1 (no label example.com/rack; the zone limits need it)"));
    assert_eq!(p.status.counts.waiting, 2);
}

#[test]
fn a_blocking_pod_holds_its_node_only_and_is_named() {
    let u = update(json!({"maxUnavailable": 2}));
    let nodes = vec![node("w-1", false), node("w-2", false), node("w-3", false)];
    let holds = [pod_hold("w-1", "backup/job-7")];
    let p = plan_with(&u, &nodes, &holds, now(), strict());
    assert_eq!(p.grants, vec!["w-2", "w-3"]);
    let w1 = p.all_nodes.iter().find(|n| n.name == "w-1").unwrap();
    assert_eq!(
        (w1.phase.as_str(), w1.reason.as_str()),
        ("Waiting", "blocking pod backup/job-7")
    );
    assert_eq!(p.status.holds, holds);
    // Held is not out of service: it does not use up maxUnavailable.
    assert_eq!(p.status.counts.waiting, 1);
    // Once the others are done, the status names what holds the last one.
    let mut nodes = nodes;
    let g = p.grant.clone().unwrap();
    grant(&mut nodes[1], &g, Some(AgentPhase::Done));
    grant(&mut nodes[2], &g, Some(AgentPhase::Done));
    let p = plan_with(&u, &nodes, &holds, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, PROGRESSING).reason, NODES_HELD);
    assert_eq!(
        cond(&p, PROGRESSING).message,
        "held: w-1 (blocking pod backup/job-7)"
    );
    assert_eq!(p.status.state.as_deref(), Some("Waiting"));
    // The pod gone: granted.
    assert_eq!(plan(&u, &nodes, now(), strict()).grants, vec!["w-1"]);
}

#[test]
fn a_hold_on_the_whole_rollout_grants_nothing_and_says_why() {
    let u = update(json!({"maxUnavailable": 2}));
    let nodes = vec![node("w-1", false)];
    let holds = [Hold {
        node: None,
        reason: "BlockingPodsUnknown".into(),
        message: "the blocking pods could not be read: 403".into(),
    }];
    let p = plan_with(&u, &nodes, &holds, now(), strict());
    assert!(p.grants.is_empty());
    assert_eq!(cond(&p, PROGRESSING).reason, "BlockingPodsUnknown");
    assert_eq!(
        cond(&p, PROGRESSING).message,
        "held: the blocking pods could not be read: 403"
    );
    assert_eq!(
        p.all_nodes[0].reason,
        "held: the blocking pods could not be read: 403"
    );
}

#[test]
fn holds_in_status_are_bounded() {
    let u = update(json!({}));
    let holds: Vec<Hold> = (0..MAX_HOLDS + 3)
        .map(|i| pod_hold(&format!("n-{i}"), "p"))
        .collect();
    let p = plan_with(&u, &[], &holds, now(), strict());
    assert_eq!(p.status.holds.len(), MAX_HOLDS);
    assert_eq!(p.status.holds_omitted, 3);
}

#[test]
fn staging_permits_go_to_the_front_of_the_order_within_their_budget() {
    let u = update(json!({"maxUnavailable": 1, "staging": {"maxConcurrent": 2}}));
    let mut nodes: Vec<_> = (1..=4).map(|i| node(&format!("w-{i}"), false)).collect();
    nodes.push(node("cp-1", true));
    let p = plan(&u, &nodes, now(), strict());
    // cp-1 is granted (it stages under its grant); the next two in order get permits.
    assert_eq!(p.grants, vec!["cp-1"]);
    assert_eq!(
        p.status.staging_permits.keys().collect::<Vec<_>>(),
        ["w-1", "w-2"]
    );
    let mut u = u;
    u.status = Some(p.status.clone());
    // w-1 staged: w-3 may start pulling; w-1 keeps its permit.
    nodes[0].staged = Some(IMG.into());
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(
        p.status.staging_permits.keys().collect::<Vec<_>>(),
        ["w-1", "w-2", "w-3"]
    );
    // Without spec.staging: no permits at all (every node stages at once).
    let p = plan(&update(json!({})), &nodes, now(), strict());
    assert!(p.status.staging_permits.is_empty());
}

/// A random rollout: nodes, then a sequence of events; the planner is asked after each.
#[derive(Debug, Clone)]
enum Ev {
    Finish(usize, bool),
    Advance(usize),
    Ready(usize, bool),
    Cordon(usize, bool),
    Pause(bool),
    /// A blocking pod starts on (true) or leaves (false) a node.
    Block(usize, bool),
    /// A node's agent reports the target staged (when it holds a permit).
    Stage(usize),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (0..40usize, any::<bool>()).prop_map(|(i, ok)| Ev::Finish(i, ok || i % 7 != 0)),
        2 => (0..40usize).prop_map(Ev::Advance),
        1 => (0..40usize, any::<bool>()).prop_map(|(i, r)| Ev::Ready(i, r)),
        1 => (0..40usize, any::<bool>()).prop_map(|(i, c)| Ev::Cordon(i, c)),
        1 => any::<bool>().prop_map(Ev::Pause),
        1 => (0..40usize, any::<bool>()).prop_map(|(i, b)| Ev::Block(i, b)),
        2 => (0..40usize).prop_map(Ev::Stage),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn i1_and_control_plane_first_hold(
        kinds in prop::collection::vec((any::<bool>(), any::<bool>(), 0u8..10), 1..30),
        max_unavailable in 1i32..6,
        max_failed in 0i32..4,
        per_zone in prop::option::of(1i32..3),
        max_zones in prop::option::of(1i32..3),
        staging in prop::option::of(1i32..4),
        events in prop::collection::vec(ev(), 0..120),
    ) {
        let mut u = update(json!({"maxUnavailable": max_unavailable, "maxFailed": max_failed}));
        u.spec.max_unavailable_per_zone = per_zone;
        u.spec.max_unavailable_zones = max_zones;
        u.spec.staging = staging.map(|m| crate::cluster::update::Staging { max_concurrent: m });
        let zoned = per_zone.is_some() || max_zones.is_some();
        let mut nodes: Vec<NodeView> = kinds
            .iter()
            .enumerate()
            .map(|(i, (cp, at_target, r))| {
                let mut n = node(&format!("n-{i:02}"), *cp && *r < 3);
                if *at_target && *r > 7 { n.os_image = Some(IMG.into()); }
                // Three zones; every ninth node without the label.
                if i % 9 != 8 {
                    n.labels.insert("topology.kubernetes.io/zone".into(), format!("z{}", i % 3));
                }
                n
            })
            .collect();
        let mut holds: Vec<Hold> = Vec::new();
        let zone_in_flight = |nodes: &[NodeView]| {
            let mut per: std::collections::BTreeMap<String, usize> = Default::default();
            for n in nodes.iter().filter(|n| n.grant.as_ref().is_some_and(|g| !n.phase_for(g).is_some_and(AgentPhase::is_terminal))) {
                *per.entry(n.labels.get("topology.kubernetes.io/zone").cloned().unwrap_or_default()).or_default() += 1;
            }
            per
        };
        let in_flight = |nodes: &[NodeView]| nodes.iter().filter(|n| {
            n.grant.as_ref().is_some_and(|g| !n.phase_for(g).is_some_and(AgentPhase::is_terminal))
        }).count();
        for e in events.iter().map(Some).chain(std::iter::once(None)) {
            let prev_permits = u.status.as_ref().map(|s| s.staging_permits.clone()).unwrap_or_default();
            let p = plan_with(&u, &nodes, &holds, now(), strict());
            u.status = Some(p.status.clone());
            // Bounded staging: never more than maxConcurrent permitted nodes pulling (not
            // staged yet, not granted), and none permitted while one nearer the front of the
            // order waits unstaged without a permit.
            if let Some(max) = staging {
                let permits = &p.status.staging_permits;
                let open = |n: &&NodeView| n.grant.is_none() && n.ready && !n.cordoned_by_others()
                    && n.os_image.as_deref() != Some(IMG) && !p.grants.contains(&n.name);
                let pulling = nodes.iter().filter(open)
                    .filter(|n| permits.contains_key(&n.name) && n.staged.as_deref() != Some(IMG))
                    .count();
                prop_assert!(pulling <= max as usize, "{pulling} pulling > staging.maxConcurrent {max}");
                let mut order: Vec<&NodeView> = nodes.iter().filter(open).collect();
                order.sort_by_key(|n| (!n.control_plane, n.name.clone()));
                let unstaged: Vec<&&NodeView> = order.iter().filter(|n| n.staged.as_deref() != Some(IMG)).collect();
                // A permit once given is kept (its pull is not wasted); a new one goes to the
                // front of the unstaged nodes without one.
                if let Some(last) = unstaged.iter().rposition(|n| permits.contains_key(&n.name) && !prev_permits.contains_key(&n.name)) {
                    prop_assert!(unstaged[..last].iter().all(|n| permits.contains_key(&n.name)),
                        "a new permit went past a node nearer the front: {permits:?}");
                }
            } else {
                prop_assert!(p.status.staging_permits.is_empty());
            }
            for name in &p.grants {
                prop_assert!(!holds.iter().any(|h| h.node.as_deref() == Some(name)),
                    "{name} granted while a blocking pod runs on it");
                let n = nodes.iter().find(|n| &n.name == name).unwrap();
                prop_assert!(!zoned || n.labels.contains_key("topology.kubernetes.io/zone"),
                    "{name} granted without a zone while zone limits are set");
            }
            // Control-plane first: a worker is granted only when no control-plane node is
            // open; control-plane nodes one at a time and alone.
            let cp_open = nodes.iter().any(|n| n.control_plane && !n.grant.as_ref().is_some_and(|g| n.phase_for(g).is_some_and(AgentPhase::is_terminal)) && n.os_image.as_deref() != Some(IMG));
            for name in &p.grants {
                let n = nodes.iter().find(|n| &n.name == name).unwrap();
                prop_assert!(n.control_plane || !cp_open, "worker {name} granted while a control-plane node is open");
            }
            let cp_granted = p.grants.iter().filter(|g| nodes.iter().any(|n| &n.name == *g && n.control_plane)).count();
            prop_assert!(cp_granted <= 1);
            if cp_granted == 1 { prop_assert_eq!(p.grants.len(), 1); }
            if p.halt.is_some() || u.spec.paused { prop_assert!(p.grants.is_empty()); }
            let g = p.grant.clone();
            for name in &p.grants {
                let n = nodes.iter_mut().find(|n| &n.name == name).unwrap();
                prop_assert!(n.ready && !n.cordoned_by_others(), "{name} granted while out of service");
                n.grant = g.clone();
            }
            // I1.
            prop_assert!(in_flight(&nodes) <= max_unavailable as usize,
                "{} in flight > maxUnavailable {max_unavailable}", in_flight(&nodes));
            // The zone limits, counted over the nodes in flight, as I1 is.
            let per = zone_in_flight(&nodes);
            if let Some(limit) = per_zone {
                for (z, n) in &per {
                    prop_assert!(*n <= limit as usize, "{n} in flight in zone {z:?} > {limit}");
                }
            }
            if let Some(limit) = max_zones {
                prop_assert!(per.len() <= limit as usize, "zones {per:?} in flight > {limit}");
            }
            let cps = nodes.iter().filter(|n| n.control_plane && n.grant.as_ref().is_some_and(|g| !n.phase_for(g).is_some_and(AgentPhase::is_terminal))).count();
            prop_assert!(cps <= 1, "{cps} control-plane nodes in flight");
            let Some(e) = e else { break };
            let len = nodes.len();
            match e.clone() {
                Ev::Finish(i, ok) => {
                    let n = &mut nodes[i % len];
                    if let Some(g) = n.grant.clone() {
                        if !n.phase_for(&g).is_some_and(AgentPhase::is_terminal) {
                            grant(n, &g, Some(if ok { AgentPhase::Done } else { AgentPhase::Failed }));
                        }
                    }
                }
                Ev::Advance(i) => {
                    let n = &mut nodes[i % len];
                    if let Some(g) = n.grant.clone() {
                        if n.phase_for(&g).is_none() { grant(n, &g, Some(AgentPhase::Rebooting)); }
                    }
                }
                Ev::Ready(i, r) => nodes[i % len].ready = r,
                Ev::Cordon(i, c) => nodes[i % len].unschedulable = c,
                Ev::Pause(p) => u.spec.paused = p,
                Ev::Stage(i) => {
                    let n = &mut nodes[i % len];
                    let permitted = u.status.as_ref().is_some_and(|s| s.staging_permits.contains_key(&n.name));
                    if staging.is_none() || permitted {
                        n.staged = Some(IMG.into());
                    }
                }
                Ev::Block(i, b) => {
                    let name = nodes[i % len].name.clone();
                    holds.retain(|h| h.node.as_deref() != Some(name.as_str()));
                    if b { holds.push(pod_hold(&name, "ns/p")); }
                }
            }
        }
    }
}

#[test]
fn status_serialises_without_nulls() {
    let p = plan(&update(json!({})), &[], now(), strict());
    let s = serde_json::to_string(&p.status).unwrap();
    assert!(!s.contains("null"), "{s}");
}

#[test]
fn an_aborted_update_grants_nothing_and_says_so() {
    let u = update(json!({"maxUnavailable": 2, "abort": {"inFlight": "rollBack"}}));
    assert_eq!(
        u.spec.abort.as_ref().map(|a| a.in_flight),
        Some(crate::cluster::update::InFlight::RollBack)
    );
    let g = Grant {
        uid: "uid-1".into(),
        generation: 1,
    };
    let mut nodes: Vec<_> = (1..=4).map(|i| node(&format!("w-{i}"), false)).collect();
    grant(&mut nodes[0], &g, Some(AgentPhase::Draining));
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty(), "{:?}", p.grants);
    assert_eq!(p.status.state.as_deref(), Some(HALTED));
    let halted = cond(&p, HALTED);
    assert_eq!(
        (halted.status.as_str(), halted.reason.as_str()),
        ("True", ABORTED)
    );
    assert!(halted.message.contains("withdraw"), "{}", halted.message);
    // Counts and rows still describe the nodes: one in flight, three that will not go.
    assert_eq!(p.status.counts.in_flight, 1);
    assert_eq!(p.status.counts.pending, 3);
    assert_eq!(p.all_nodes.len(), 4);
    assert!(p
        .all_nodes
        .iter()
        .filter(|n| n.phase == "Pending")
        .all(|n| n.reason == "aborted"));
    // Finishing in flight is the default.
    let u = update(json!({"abort": {}}));
    let p = plan(&u, &nodes, now(), strict());
    assert!(p.grants.is_empty());
    assert!(cond(&p, HALTED).message.contains("finish"));
    // Without the abort the same nodes are granted.
    let u = update(json!({"maxUnavailable": 2}));
    assert_eq!(plan(&u, &nodes, now(), strict()).grants, vec!["w-2"]);
}

#[test]
fn pending_nodes_say_what_they_wait_for() {
    let u = update(json!({"maxUnavailable": 1}));
    let nodes: Vec<_> = (1..=3).map(|i| node(&format!("w-{i}"), false)).collect();
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, vec!["w-1"]);
    let reasons: Vec<(&str, &str)> = p
        .all_nodes
        .iter()
        .map(|n| (n.phase.as_str(), n.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("Granted", ""),
            ("Pending", "no slot (maxUnavailable 1)"),
            ("Pending", "no slot (maxUnavailable 1)"),
        ]
    );
    let p = plan(&update(json!({"paused": true})), &nodes, now(), strict());
    assert!(p.all_nodes.iter().all(|n| n.reason == "paused"));
    let all: Vec<_> = (0..MAX_NODE_SUMMARIES + 5)
        .map(|i| node(&format!("n-{i:03}"), false))
        .collect();
    let p = plan(&u, &all, now(), strict());
    assert_eq!(p.all_nodes.len(), MAX_NODE_SUMMARIES + 5);
    assert_eq!(p.status.nodes[..], p.all_nodes[..MAX_NODE_SUMMARIES]);
}

fn fleetlock(name: &str) -> NodeView {
    NodeView {
        fleetlock_group: Some("workers".into()),
        os_image: None,
        ..node(name, false)
    }
}

#[test]
fn a_fleetlock_node_is_granted_only_when_it_asks_and_its_lock_uses_the_budget() {
    let u = update(json!({"maxUnavailable": 1}));
    // Not asking: not the planner's to grant, shown as a FleetLock node, and the hkd node goes.
    let nodes = vec![fleetlock("c-zincati"), node("b-hkd", false)];
    let p = plan(&u, &nodes, now(), strict());
    assert_eq!(p.grants, ["b-hkd"]);
    let row = p.all_nodes.iter().find(|r| r.name == "c-zincati").unwrap();
    assert_eq!(
        (row.phase.as_str(), row.reason.as_str()),
        ("Done", FLEETLOCK_IDLE)
    );
    // Asking: pending like any node, and it goes before the pending hkd node that sorts first
    // (that one waits for the coordinator's next plan anyway).
    let mut asking = nodes.clone();
    asking[0].lock_wanted = true;
    assert_eq!(plan(&u, &asking, now(), strict()).grants, ["c-zincati"]);
    // Holding its lock: in flight, marked by its source, and the hkd node waits for a slot.
    let mut locked = nodes.clone();
    locked[0].grant = Some(Grant {
        uid: "uid-1".into(),
        generation: 1,
    });
    let p = plan(&u, &locked, now(), strict());
    assert!(p.grants.is_empty(), "{:?}", p.grants);
    let row = p.all_nodes.iter().find(|r| r.name == "c-zincati").unwrap();
    assert_eq!(row.phase, FLEETLOCK_LOCKED);
    assert_eq!(p.status.counts.in_flight, 1);
    // Its lock reclaimed, left cordoned: the server's word on its row, and out of service.
    let mut reclaimed = nodes.clone();
    reclaimed[0].reason = Some("FleetLock lock of node c-zincati reclaimed".into());
    reclaimed[0].unschedulable = true;
    let p = plan(&u, &reclaimed, now(), strict());
    let row = p.all_nodes.iter().find(|r| r.name == "c-zincati").unwrap();
    assert_eq!(row.reason, "FleetLock lock of node c-zincati reclaimed");
    assert!(p.grants.is_empty(), "the cordoned node uses the one slot");
}
