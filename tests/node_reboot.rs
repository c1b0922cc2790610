//! hkd's logind rebooter against a stand-in logind (tests/standin/logind.rs) on a real,
//! private dbus-daemon: inhibitors listed over the wire decide, Reboot is called or not. And
//! the agent on rpm-ostree (the rpm-ostreed stand-in beside logind), whose finalize the
//! daemon refuses while a block inhibitor is held.

mod standin;

use housekeeper::config::hkd::OnBlocked;
use housekeeper::node::agent::RebootError;
use housekeeper::node::agent::Rebooter;
use housekeeper::node::reboot::Logind;
use standin::bus::PrivateBus;
use standin::logind::StandIn;

fn logind(bus: &PrivateBus, on_blocked: OnBlocked) -> Logind {
    Logind {
        on_blocked,
        address: Some(bus.address.clone()),
    }
}

fn inhibitor(what: &str, who: &str, mode: &str) -> standin::logind::Inhibitor {
    (
        what.into(),
        who.into(),
        "draining pods".into(),
        mode.into(),
        0,
        4242,
    )
}

#[test]
fn reboots_when_nothing_blocks_and_honours_delays_through_logind() {
    let bus = PrivateBus::start();
    let standin = StandIn::start(&bus);
    standin.state.lock().unwrap().inhibitors = vec![inhibitor("shutdown", "kubelet", "delay")];
    let rebooter = logind(&bus, OnBlocked::Wait);
    rebooter.check().unwrap();
    rebooter.reboot("test").unwrap();
    assert_eq!(
        standin.state.lock().unwrap().reboots,
        vec![false],
        "not interactive, once"
    );
}

#[test]
fn a_block_inhibitor_postpones_unless_told_to_ignore_it() {
    let bus = PrivateBus::start();
    let standin = StandIn::start(&bus);
    standin.state.lock().unwrap().inhibitors = vec![inhibitor("sleep:shutdown", "backup", "block")];
    let waiting = logind(&bus, OnBlocked::Wait);
    let err = waiting.check().unwrap_err();
    assert_eq!(
        err,
        RebootError::Blocked(vec!["backup (pid 4242): draining pods".into()])
    );
    assert_eq!(
        err.to_string(),
        "the reboot is blocked by backup (pid 4242): draining pods"
    );
    assert!(waiting.reboot("test").is_err());
    assert!(standin.state.lock().unwrap().reboots.is_empty());

    logind(&bus, OnBlocked::Ignore).reboot("test").unwrap();
    assert_eq!(standin.state.lock().unwrap().reboots.len(), 1);
}

#[test]
fn no_logind_on_the_bus_is_a_clear_error() {
    let bus = PrivateBus::start();
    let err = logind(&bus, OnBlocked::Wait)
        .reboot("test")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("listing logind inhibitors: "), "{err}");
    assert!(err.contains("org.freedesktop.login1"), "{err}");
}

// --- the agent on rpm-ostree: a block inhibitor held when it finalizes ---------------------

mod on_rpm_ostree {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use housekeeper::config::hkd::{Health, OnBlocked};
    use housekeeper::image_ref::{ImagePolicy, ImageRef};
    use housekeeper::node::agent::{Agent, Observer, Parts, Standalone};
    use housekeeper::node::health::Gate;
    use housekeeper::node::journal::Journal;
    use housekeeper::node::machine::{Event, Limits, Phase};
    use housekeeper::node::metrics::Metrics;
    use housekeeper::node::reboot::Logind;
    use housekeeper::os::rpmostree::RpmOstree;

    use super::standin::bus::PrivateBus;
    use super::standin::logind;
    use super::standin::rpmostreed::{Dep, Model, StandIn};

    const V1: &str = "1111111111111111111111111111111111111111111111111111111111111b11";
    const V2: &str = "2222222222222222222222222222222222222222222222222222222222222c22";
    const SIGNED_V1: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03-1";
    const SIGNED_V2: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03-2";

    /// The boot id moves on once logind was asked to reboot; the rpm-ostreed stand-in plays
    /// that reboot (the finalized deployment boots).
    struct Boots {
        logind: Arc<Mutex<logind::State>>,
        daemon: Arc<StandIn>,
        played: Mutex<usize>,
    }

    impl Observer for Boots {
        fn boot_id(&self) -> anyhow::Result<String> {
            let asked = self.logind.lock().unwrap().reboots.len();
            let mut played = self.played.lock().unwrap();
            while *played < asked {
                self.daemon.reboot();
                *played += 1;
            }
            Ok(format!("boot-{played}"))
        }
    }

    fn nestos() -> Model {
        Model {
            osname: "nestos".into(),
            deployments: vec![Dep {
                osname: "nestos".into(),
                checksum: V1.into(),
                serial: 0,
                version: "1".into(),
                origin: SIGNED_V1.into(),
                booted: true,
                staged: false,
                pinned: false,
                locked: false,
                base: None,
                digest: None,
            }],
            images: HashMap::from([(SIGNED_V2.to_owned(), (V2.to_owned(), "2".to_owned()))]),
            ..Model::default()
        }
    }

    #[test]
    fn a_block_inhibitor_at_finalize_makes_the_node_wait_say_who_and_reboot_once_released() {
        let bus = PrivateBus::start();
        let daemon = Arc::new(StandIn::start(&bus, nestos()));
        let logind = logind::StandIn::start(&bus);
        logind.state.lock().unwrap().inhibitors = vec![(
            "shutdown".into(),
            "backup".into(),
            "copying /var".into(),
            "block".into(),
            0,
            4242,
        )];
        let dir = tempfile::tempdir().unwrap();
        let parts = Parts {
            backend: Box::new(
                RpmOstree::at_address(&bus.address, ImagePolicy::STRICT)
                    .unwrap()
                    .with_transaction_timeout(Duration::from_secs(30)),
            ),
            backend_name: "rpm-ostree".into(),
            // hkd's own check is told to ignore block inhibitors; rpm-ostreed refuses anyway.
            rebooter: Box::new(Logind {
                on_blocked: OnBlocked::Ignore,
                address: Some(bus.address.clone()),
            }),
            cluster: Box::new(Standalone),
            observer: Box::new(Boots {
                logind: logind.state.clone(),
                daemon: daemon.clone(),
                played: Mutex::new(0),
            }),
            gate: Gate {
                root: dir.path().join("root"),
                settings: Health {
                    timeout: Duration::from_secs(5),
                    interval: Duration::from_millis(20),
                    check_timeout: Duration::from_secs(5),
                    units: vec![],
                },
                extra: vec![],
            },
            journal: Journal::open(&dir.path().join("state")).unwrap(),
            policy: ImagePolicy::STRICT,
            limits: Limits { health_timeout: 5 },
            reboot_retry: Duration::from_millis(50),
            metrics: Arc::new(Metrics::new()),
        };
        let (mut agent, first) = Agent::start(parts).unwrap();
        let shared = agent.shared();
        let run = std::thread::spawn(move || {
            agent.handle(first).unwrap();
            agent
                .handle(Event::TargetRequested {
                    target: ImageRef::parse(SIGNED_V2, ImagePolicy::STRICT).unwrap(),
                })
                .unwrap();
            agent
        });

        // It waits, and says who holds the reboot.
        let deadline = Instant::now() + Duration::from_secs(20);
        let waiting = loop {
            let status = shared.lock().unwrap().clone();
            if let Some(waiting) = status.waiting {
                assert_eq!(status.upgrade.phase, Phase::Rebooting);
                break waiting;
            }
            assert!(Instant::now() < deadline, "never waited: {status:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            waiting.contains("blocked by backup (copying /var)"),
            "{waiting}"
        );
        // Several requests while it waits; none counts as an attempt, nothing is finalized.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(daemon.model().reboots, 0);
        assert!(logind.state.lock().unwrap().reboots.is_empty());
        assert!(daemon.model().deployments[0].staged && daemon.model().deployments[0].locked);

        // Released: finalized, rebooted, verified.
        logind.state.lock().unwrap().inhibitors.clear();
        let agent = run.join().unwrap();
        assert_eq!(agent.machine().state.phase(), Phase::Done);
        assert_eq!(daemon.model().reboots, 1);
        assert_eq!(logind.state.lock().unwrap().reboots, vec![false]);
        let status = shared.lock().unwrap().clone();
        assert_eq!(status.waiting, None);
        assert_eq!(status.deployments[0].checksum, V2);
        assert!(status.deployments[0].booted);
    }
}
