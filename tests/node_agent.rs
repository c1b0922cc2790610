//! The node agent end to end on a temporary OSTree sysroot: the real `ostree` command stages,
//! finalizes and rolls back; the journal is real files. What stands in: the reboot (a
//! stand-in changes the boot id, and the "booted" deployment is the sysroot's default, as it
//! would be after a real boot) and the cluster (a recorder that grants once staged).

mod ostree_host;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use housekeeper::config::hkd::Health;
use housekeeper::image_ref::ImagePolicy;
use housekeeper::image_ref::ImageRef;
use housekeeper::node::agent::{
    Agent, ClusterSide, DrainError, Observer, Parts, RebootError, Rebooter,
};
use housekeeper::node::health::{Check, Gate};
use housekeeper::node::journal::Journal;
use housekeeper::node::machine::{Event, Limits, Machine, Phase, State, UpgradeOutcome};
use housekeeper::node::metrics::Metrics;
use housekeeper::os::Backend;
use ostree_host::Host;

/// The stand-in for a reboot: a new boot id. Shared with the observer.
#[derive(Clone, Default)]
struct Boots(Arc<Mutex<(u32, bool)>>);

impl Rebooter for Boots {
    fn reboot(&self, _why: &str) -> Result<(), RebootError> {
        let mut b = self.0.lock().unwrap();
        if b.1 {
            return Err(RebootError::Failed(
                "Operation inhibited by \"kubelet\" (delay)".into(),
            ));
        }
        b.0 += 1;
        Ok(())
    }
}

impl Observer for Boots {
    fn boot_id(&self) -> anyhow::Result<String> {
        Ok(format!("boot-{}", self.0.lock().unwrap().0))
    }
}

#[derive(Clone, Default)]
struct Cluster {
    reports: Arc<Mutex<Vec<UpgradeOutcome>>>,
    hold_grant: bool,
}

impl ClusterSide for Cluster {
    fn drain(&self) -> Result<(), DrainError> {
        Ok(())
    }
    fn report(&self, outcome: &UpgradeOutcome, _machine: &Machine) {
        self.reports.lock().unwrap().push(outcome.clone());
    }
    fn after_step(&self, machine: &Machine) -> Vec<Event> {
        match machine.state {
            State::Staged { .. } if !self.hold_grant => vec![Event::Granted],
            _ => vec![],
        }
    }
}

/// The test OS's health: version 3 is broken.
struct NotVersion3(housekeeper::os::ostree::Ostree);

impl Check for NotVersion3 {
    fn name(&self) -> String {
        "testos health".into()
    }
    fn run(&self) -> Result<(), String> {
        let all = self.0.status().map_err(|e| e.to_string())?;
        match all.default_deployment().and_then(|d| d.version.as_deref()) {
            Some("3") => Err("version 3 is broken".into()),
            _ => Ok(()),
        }
    }
}

struct Node {
    host: Host,
    boots: Boots,
    cluster: Cluster,
    state_dir: std::path::PathBuf,
    metrics: Arc<Metrics>,
}

impl Node {
    fn new() -> Node {
        let host = Host::new().allowing_unverified();
        let state_dir = host.dir.path().join("var/lib/hkd");
        Node {
            host,
            boots: Boots::default(),
            cluster: Cluster::default(),
            state_dir,
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn agent(&self) -> (Agent, Event) {
        Agent::start(self.parts()).unwrap()
    }

    fn parts(&self) -> Parts {
        Parts {
            backend: Box::new(self.host.backend.clone()),
            backend_name: "ostree".into(),
            rebooter: Box::new(self.boots.clone()),
            cluster: Box::new(self.cluster.clone()),
            observer: Box::new(self.boots.clone()),
            gate: Gate {
                root: self.host.dir.path().join("root"),
                settings: Health {
                    timeout: Duration::from_secs(5),
                    interval: Duration::from_millis(20),
                    check_timeout: Duration::from_secs(5),
                    units: vec![],
                },
                extra: vec![Box::new(NotVersion3(self.host.backend.clone()))],
            },
            journal: Journal::open(&self.state_dir).unwrap(),
            policy: ImagePolicy::ALLOW_UNVERIFIED,
            limits: Limits { health_timeout: 1 },
            reboot_retry: Duration::ZERO,
            metrics: self.metrics.clone(),
        }
    }

    fn upgrade_to(&self, version: &str) -> Agent {
        let branch = format!("testos/x86_64/v{version}");
        self.host.commit_upstream_to(&branch, version);
        let (mut agent, first) = self.agent();
        agent.handle(first).unwrap();
        agent
            .handle(Event::TargetRequested {
                target: img(&format!("upstream:{branch}")),
            })
            .unwrap();
        agent
    }

    fn reports(&self) -> Vec<UpgradeOutcome> {
        self.cluster.reports.lock().unwrap().clone()
    }

    fn boots(&self) -> u32 {
        self.boots.0.lock().unwrap().0
    }
}

/// A well-formed reference, as the journal would load it.
fn img(raw: &str) -> ImageRef {
    ImageRef::parse_any(raw).unwrap()
}

#[test]
fn an_upgrade_stages_reboots_verifies_and_reports_done() {
    let node = Node::new();
    let agent = node.upgrade_to("2");
    assert_eq!(agent.machine().state.phase(), Phase::Done);
    assert_eq!(node.host.versions()[0], "2");
    assert_eq!(node.boots(), 1);
    assert_eq!(node.reports(), vec![UpgradeOutcome::Done]);
    let status = agent.shared().lock().unwrap().clone();
    assert_eq!(status.upgrade.phase, Phase::Done);
    assert_eq!(status.deployments[0].version.as_deref(), Some("2"));
}

#[test]
fn a_target_failing_its_health_gate_is_rolled_back_and_not_retried() {
    let node = Node::new();
    node.upgrade_to("2");
    let mut agent = node.upgrade_to("3");
    assert!(
        matches!(&agent.machine().state, State::RolledBack { reason, .. } if reason.contains("version 3 is broken")),
        "{:?}",
        agent.machine().state
    );
    assert_eq!(node.host.versions()[0], "2", "v2 must boot again");
    assert_eq!(node.boots(), 3, "one boot into v2, one into v3, one back");
    assert!(matches!(
        node.reports().last(),
        Some(UpgradeOutcome::RolledBack { .. })
    ));

    // Asked again for the same target: nothing happens.
    agent
        .handle(Event::TargetRequested {
            target: img("upstream:testos/x86_64/v3"),
        })
        .unwrap();
    assert_eq!(agent.machine().state.phase(), Phase::RolledBack);
    assert_eq!(node.boots(), 3);
}

#[test]
fn a_restart_resumes_from_the_journal_without_staging_again() {
    let mut node = Node::new();
    node.cluster.hold_grant = true;
    let agent = node.upgrade_to("2");
    assert_eq!(agent.machine().state.phase(), Phase::Staged);
    drop(agent); // hkd stops (or is killed) while waiting for the grant
    let deployments_before = node.host.versions();

    let (mut agent, first) = node.agent();
    agent.handle(first).unwrap();
    assert_eq!(agent.machine().state.phase(), Phase::Staged);
    assert_eq!(node.host.versions(), deployments_before, "staged twice");
    agent.handle(Event::Granted).unwrap();
    assert_eq!(agent.machine().state.phase(), Phase::Done);
    assert_eq!(node.boots(), 1);
}

#[test]
fn a_reboot_that_never_happens_is_given_up_after_three_requests() {
    let node = Node::new();
    node.boots.0.lock().unwrap().1 = true; // every reboot is refused
    let agent = node.upgrade_to("2");
    assert!(
        matches!(&agent.machine().state, State::Failed { reason, .. } if reason.contains("did not reboot after 3 requests")),
        "{:?}",
        agent.machine().state
    );
    assert_eq!(node.boots(), 0);
    let status = agent.shared().lock().unwrap().clone();
    assert!(status.last_error.unwrap().contains("inhibited"));
}

#[test]
fn a_journal_it_cannot_read_stops_the_agent_with_the_path() {
    let node = Node::new();
    std::fs::create_dir_all(&node.state_dir).unwrap();
    std::fs::write(node.state_dir.join("state.json"), "{ not json").unwrap();
    let Err(err) = Agent::start(node.parts()) else {
        panic!("the agent started on a corrupt journal");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("state.json: not a readable hkd journal"),
        "{message}"
    );
}
