//! The rpm-ostree backend against a stand-in for rpm-ostreed (tests/standin/rpmostreed/) on a
//! private dbus-daemon, with stand-ins for logind (inhibitors) and systemd (restarting the
//! daemon) beside it: real D-Bus traffic, the backend exactly as in production, only the bus
//! address (and, for the driver registration, where /proc is) differs. Needs Debian's `dbus`
//! package for `dbus-daemon`.

mod standin;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use housekeeper::image_ref::{ImagePolicy, ImageRef, ImageRefError};
use housekeeper::os::rpmostree::{Progress, RpmOstree};
use housekeeper::os::{Backend, OsError};
use standin::bus::PrivateBus;
use standin::rpmostreed::{digest_of, layered_commit, Dep, Model, Opt, StandIn};
use standin::{logind, systemd};

const V0: &str = "0000000000000000000000000000000000000000000000000000000000000a00";
const V1: &str = "1111111111111111111111111111111111111111111111111111111111111b11";
const V2: &str = "2222222222222222222222222222222222222222222222222222222222222c22";
const SIGNED_V1: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03-1";
const SIGNED_V2: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03-2";
const UNVERIFIED_V2: &str = "ostree-unverified-registry:hub.oepkgs.net/nestos/nestos:22.03-2";
const MISSING: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:99.99";
/// A commit of another branch than the booted origin's.
const V3: &str = "3333333333333333333333333333333333333333333333333333333333333d33";
const TESTING: &str = "nestos:nestos/x86_64/testing";

fn dep(checksum: &str, version: &str, origin: &str, booted: bool) -> Dep {
    Dep {
        osname: "nestos".into(),
        checksum: checksum.into(),
        serial: 0,
        version: version.into(),
        origin: origin.into(),
        booted,
        staged: false,
        pinned: false,
        locked: false,
        base: None,
        digest: None,
    }
}

/// NestOS booted into v1 with v0 as its rollback; v2 is in the registry.
fn nestos() -> Model {
    Model {
        osname: "nestos".into(),
        deployments: vec![
            dep(V1, "1", SIGNED_V1, true),
            dep(V0, "0", "nestos:nestos/x86_64/stable", false),
        ],
        images: HashMap::from([
            (SIGNED_V1.to_owned(), (V1.to_owned(), "1".to_owned())),
            (SIGNED_V2.to_owned(), (V2.to_owned(), "2".to_owned())),
            (UNVERIFIED_V2.to_owned(), (V2.to_owned(), "2".to_owned())),
            (TESTING.to_owned(), (V3.to_owned(), "3".to_owned())),
        ]),
        // The booted image's history holds v0..v2; v3 is on another branch.
        history: HashMap::from([(
            SIGNED_V1.to_owned(),
            vec![V0.to_owned(), V1.to_owned(), V2.to_owned()],
        )]),
        ..Model::default()
    }
}

/// The stand-ins are declared first so that they leave the bus before the bus goes.
struct Lab {
    systemd: systemd::StandIn,
    logind: Option<logind::StandIn>,
    standin: Arc<StandIn>,
    bus: PrivateBus,
    progress: Arc<Mutex<Vec<Progress>>>,
}

impl Lab {
    fn new() -> Lab {
        Lab::with(nestos())
    }

    /// `model` served, with logind and systemd on the bus.
    fn with(model: Model) -> Lab {
        Lab::on(PrivateBus::start(), model)
    }

    fn on(bus: PrivateBus, model: Model) -> Lab {
        let standin = Arc::new(StandIn::start(&bus, model));
        let restarted = standin.clone();
        Lab {
            systemd: systemd::StandIn::start(&bus, Box::new(move || restarted.restart())),
            logind: Some(logind::StandIn::start(&bus)),
            standin,
            bus,
            progress: Arc::default(),
        }
    }

    fn inhibitors(&self, list: Vec<logind::Inhibitor>) {
        let logind = self.logind.as_ref().expect("logind on the bus");
        logind.state.lock().unwrap().inhibitors = list;
    }

    fn backend(&self) -> RpmOstree {
        self.backend_allowing_unverified(false)
    }

    fn backend_allowing_unverified(&self, allow: bool) -> RpmOstree {
        let seen = self.progress.clone();
        RpmOstree::at_address(
            &self.bus.address,
            ImagePolicy {
                allow_unverified: allow,
            },
        )
        .unwrap_or_else(|e| panic!("connecting to the stand-in: {e}"))
        .with_transaction_timeout(Duration::from_secs(30))
        .with_observer(Arc::new(move |p: &Progress| {
            seen.lock().unwrap().push(p.clone())
        }))
    }

    /// The methods called on the OS object, in order.
    fn methods(&self) -> Vec<String> {
        self.standin
            .model()
            .calls
            .iter()
            .map(|c| c.method.clone())
            .collect()
    }

    fn last_call(&self, method: &str) -> std::collections::BTreeMap<String, Opt> {
        let model = self.standin.model();
        let call = model.calls.iter().rev().find(|c| c.method == method);
        call.unwrap_or_else(|| panic!("{method} was not called"))
            .args
            .clone()
    }
}

fn signed(raw: &str) -> ImageRef {
    ImageRef::parse(raw, ImagePolicy::STRICT).unwrap()
}

#[test]
fn status_maps_the_daemons_deployments() {
    let lab = Lab::new();
    let backend = lab.backend();
    let all = backend.status().unwrap();
    assert_eq!(all.deployments.len(), 2);
    let booted = all.booted().unwrap();
    assert_eq!(booted.checksum, V1);
    assert_eq!(booted.osname, "nestos");
    assert_eq!(booted.version.as_deref(), Some("1"));
    assert_eq!(booted.origin.as_deref(), Some(SIGNED_V1));
    assert!(!booted.staged && !booted.pinned && !booted.finalization_locked);
    let rollback = all.rollback().unwrap();
    assert_eq!(rollback.checksum, V0);
    assert_eq!(
        rollback.origin.as_deref(),
        Some("nestos:nestos/x86_64/stable")
    );
    assert_eq!(all.staged(), None);
    // Registered once, at construction; reading status starts no transaction.
    assert_eq!(lab.standin.model().clients, ["hkd"]);
    assert!(lab.methods().is_empty());
}

#[test]
fn stage_locks_finalization_and_passes_the_reference_unchanged() {
    let lab = Lab::new();
    let backend = lab.backend();
    let checksum = backend.stage(&signed(SIGNED_V2)).unwrap();
    assert_eq!(checksum, V2);

    let args = lab.last_call("UpdateDeployment");
    assert_eq!(
        args["modifier:set-refspec"],
        Opt::Str(SIGNED_V2.into()),
        "{args:?}"
    );
    assert_eq!(args["option:lock-finalization"], Opt::Bool(true));
    assert_eq!(args["option:allow-downgrade"], Opt::Bool(true));

    let all = backend.status().unwrap();
    let staged = all.staged().unwrap();
    assert_eq!(
        (staged.checksum.as_str(), staged.finalization_locked),
        (V2, true)
    );
    assert_eq!(staged.origin.as_deref(), Some(SIGNED_V2));
    assert_eq!(
        all.booted().unwrap().checksum,
        V1,
        "the booted system stays"
    );
    assert_eq!(all.deployments.len(), 3, "nothing pruned at staging");
    assert_eq!(lab.standin.model().reboots, 0);

    // Asking again changes nothing and starts no transaction.
    assert_eq!(backend.stage(&signed(SIGNED_V2)).unwrap(), V2);
    assert_eq!(lab.methods(), ["UpdateDeployment"]);
    assert!(lab.standin.model().active.is_none());
}

#[test]
fn progress_signals_reach_the_observer_in_order() {
    let lab = Lab::new();
    lab.backend().stage(&signed(SIGNED_V2)).unwrap();
    let seen = lab.progress.lock().unwrap().clone();
    assert_eq!(
        seen.first(),
        Some(&Progress::TaskBegin("Fetching ostree commit".into()))
    );
    assert!(seen.contains(&Progress::Percent {
        text: "Receiving objects".into(),
        percent: 50
    }));
    assert!(seen.contains(&Progress::Download {
        fetched: 90,
        requested: 180,
        bytes: 4_096_000,
        bytes_per_second: 2_048_000
    }));
    assert!(seen.contains(&Progress::End));
    assert!(
        matches!(seen.last(), Some(Progress::Message(m)) if m.contains(V2)),
        "{seen:?}"
    );
}

#[test]
fn finalize_unlocks_the_staged_deployment_and_the_daemon_reboots() {
    let lab = Lab::new();
    let backend = lab.backend();
    backend.stage(&signed(SIGNED_V2)).unwrap();

    let err = backend.finalize(V0).unwrap_err();
    assert!(
        matches!(err, OsError::State(ref m) if m.contains("replaced by someone else")),
        "{err}"
    );
    assert!(!lab.methods().contains(&"FinalizeDeployment".to_owned()));

    backend.finalize(V2).unwrap();
    assert_eq!(
        lab.last_call("FinalizeDeployment")["option:checksum"],
        Opt::Str(V2.into())
    );
    assert_eq!(lab.standin.model().reboots, 1);
    assert!(
        !backend
            .status()
            .unwrap()
            .staged()
            .unwrap()
            .finalization_locked
    );

    lab.standin.reboot();
    let all = backend.status().unwrap();
    assert_eq!(all.booted().unwrap().checksum, V2);
    assert_eq!(all.rollback().unwrap().checksum, V1);
    // A repeat after the reboot is already true.
    backend.finalize(V2).unwrap();
    assert_eq!(lab.standin.model().reboots, 1);
}

#[test]
fn a_locked_staged_deployment_does_not_survive_a_reboot() {
    let lab = Lab::new();
    let backend = lab.backend();
    backend.stage(&signed(SIGNED_V2)).unwrap();
    lab.standin.reboot();
    let all = backend.status().unwrap();
    assert_eq!(all.booted().unwrap().checksum, V1);
    assert_eq!(all.staged(), None);
}

#[test]
fn rollback_makes_the_previous_deployment_default_once() {
    let lab = Lab::new();
    let backend = lab.backend();
    backend.stage(&signed(SIGNED_V2)).unwrap();

    backend.rollback().unwrap();
    let all = backend.status().unwrap();
    assert_eq!(all.staged(), None, "the staged target is removed first");
    assert_eq!(all.default_deployment().unwrap().checksum, V0);
    assert_eq!(all.booted().unwrap().checksum, V1);
    assert_eq!(lab.last_call("Rollback")["option:reboot"], Opt::Bool(false));

    // rpm-ostree flips back on a second Rollback; the backend does not ask again.
    backend.rollback().unwrap();
    assert_eq!(
        backend
            .status()
            .unwrap()
            .default_deployment()
            .unwrap()
            .checksum,
        V0
    );
    assert_eq!(lab.methods(), ["UpdateDeployment", "Cleanup", "Rollback"]);
}

#[test]
fn unstage_and_cleanup() {
    let lab = Lab::new();
    let backend = lab.backend();
    backend.unstage().unwrap();
    assert!(lab.methods().is_empty(), "nothing staged: nothing to do");

    backend.stage(&signed(SIGNED_V2)).unwrap();
    backend.unstage().unwrap();
    assert_eq!(
        lab.last_call("Cleanup")["elements"],
        Opt::Strs(vec!["pending-deploy".into()])
    );
    let all = backend.status().unwrap();
    assert_eq!(all.staged(), None);
    assert_eq!(all.deployments.len(), 2);

    backend.cleanup().unwrap();
    assert_eq!(
        lab.last_call("Cleanup")["elements"],
        Opt::Strs(vec!["base".into()])
    );
    assert_eq!(backend.status().unwrap().deployments.len(), 2);
}

#[test]
fn a_busy_daemon_is_busy() {
    let lab = Lab::new();
    let backend = lab.backend();
    {
        let _other = lab.standin.hold_busy();
        let err = backend.stage(&signed(SIGNED_V2)).unwrap_err();
        assert!(
            matches!(err, OsError::Busy(ref m) if m.contains("running UpdateDeployment for :1.99")),
            "{err}"
        );
        assert!(lab.methods().is_empty(), "nothing asked of a busy daemon");
        // Reading status is fine while it works.
        assert_eq!(backend.status().unwrap().deployments.len(), 2);
    }
    // A transaction that started between our look and our call.
    lab.standin.model().hooks.busy_error_next = true;
    let err = backend.stage(&signed(SIGNED_V2)).unwrap_err();
    assert!(
        matches!(err, OsError::Busy(ref m) if m.contains("Transaction in progress") && !m.contains('\n')),
        "{err}"
    );
    assert!(err.to_string().contains("hkd retries later"));
    // And once it is idle again, the same request goes through.
    assert_eq!(backend.stage(&signed(SIGNED_V2)).unwrap(), V2);
}

#[test]
fn a_call_racing_the_daemons_idle_exit_is_asked_again_once() {
    let lab = Lab::new();
    let backend = lab.backend();
    // The daemon exits without reading the call (NoReply); the next instance answers.
    lab.standin.model().hooks.no_reply_next = 1;
    assert_eq!(backend.stage(&signed(SIGNED_V2)).unwrap(), V2);
    let methods = lab.methods();
    assert_eq!(
        methods
            .iter()
            .filter(|m| m.as_str() == "UpdateDeployment")
            .count(),
        2,
        "{methods:?}"
    );
    // Twice in a row is not an idle exit: the daemon is reported gone, nothing staged.
    lab.standin.model().hooks.no_reply_next = 2;
    let err = backend.unstage().unwrap_err();
    assert!(matches!(err, OsError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("went away without answering, twice"),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn an_absent_daemon_is_unavailable_and_says_what_to_check() {
    let bus = PrivateBus::start();
    let err = RpmOstree::at_address(&bus.address, ImagePolicy::STRICT)
        .err()
        .expect("no daemon on the bus");
    let text = err.to_string();
    assert!(matches!(err, OsError::Unavailable(_)), "{err:?}");
    assert!(
        text.contains("rpm-ostreed is not on the system bus"),
        "{text}"
    );
    assert!(text.contains("systemctl status rpm-ostreed"), "{text}");
    assert!(!text.contains('\n'));

    // Gone after hkd started: the next call says the same.
    let standin = StandIn::start(&bus, nestos());
    let backend = RpmOstree::at_address(&bus.address, ImagePolicy::STRICT).unwrap();
    drop(standin);
    let err = backend.status().unwrap_err();
    assert!(
        matches!(err, OsError::Unavailable(ref m) if m.contains("systemctl status rpm-ostreed")),
        "{err}"
    );

    // Back (bus-activated again): hkd registers with the new instance.
    let again = StandIn::start(&bus, nestos());
    assert_eq!(backend.status().unwrap().deployments.len(), 2);
    assert_eq!(again.model().clients, ["hkd"]);
}

#[test]
fn a_failed_transaction_carries_the_daemons_message() {
    let lab = Lab::new();
    let backend = lab.backend();
    lab.standin.model().hooks.fail_next =
        Some("Bootloader write config: grub2-mkconfig: Child process exited with code 1".into());
    let err = backend.stage(&signed(SIGNED_V2)).unwrap_err();
    assert!(matches!(err, OsError::Failed(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "staging {SIGNED_V2}: rpm-ostreed reported: Bootloader write config: \
             grub2-mkconfig: Child process exited with code 1"
        )
    );
    assert_eq!(backend.status().unwrap().staged(), None);
    assert!(lab.standin.model().active.is_none());

    let err = backend.stage(&signed(MISSING)).unwrap_err();
    assert!(
        matches!(err, OsError::NotFound(ref m) if m.contains("manifest unknown")),
        "{err}"
    );
}

#[test]
fn a_cancelled_transaction_is_an_error_that_says_so() {
    let lab = Lab::new();
    let backend = lab.backend();
    lab.standin.model().hooks.cancel_next = true;
    let err = backend.stage(&signed(SIGNED_V2)).unwrap_err();
    assert!(
        matches!(err, OsError::Failed(ref m) if m.contains("the transaction was cancelled: Operation was cancelled")),
        "{err}"
    );
    assert_eq!(backend.status().unwrap().staged(), None);
}

#[test]
fn a_transaction_past_its_deadline_is_cancelled() {
    let lab = Lab::new();
    let backend = lab
        .backend()
        .with_transaction_timeout(Duration::from_secs(1));
    lab.standin.model().hooks.slow_next = Some(Duration::from_secs(60));
    let err = backend.stage(&signed(SIGNED_V2)).unwrap_err();
    assert!(
        matches!(err, OsError::Failed(ref m)
            if m.contains("did not finish within 1s; asked rpm-ostreed to cancel it")),
        "{err}"
    );
    // The stand-in honours Cancel: the daemon is idle again soon, nothing staged.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab.standin.model().active.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the transaction kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(backend.status().unwrap().staged(), None);
}

#[test]
fn an_unverified_reference_is_refused_before_any_dbus_call() {
    let lab = Lab::new();
    let target = ImageRef::parse(UNVERIFIED_V2, ImagePolicy::ALLOW_UNVERIFIED).unwrap();
    let err = lab.backend().stage(&target).unwrap_err();
    assert!(
        matches!(err, OsError::ImageRef(ImageRefError::Unverified(ref raw)) if raw == UNVERIFIED_V2),
        "{err}"
    );
    assert!(lab.methods().is_empty());

    // Allowed by configuration, it is staged as given.
    let checksum = lab
        .backend_allowing_unverified(true)
        .stage(&target)
        .unwrap();
    assert_eq!(checksum, V2);
    assert_eq!(
        lab.last_call("UpdateDeployment")["modifier:set-refspec"],
        Opt::Str(UNVERIFIED_V2.into())
    );
}

#[test]
fn a_checksum_target_is_deployed_by_revision() {
    let lab = Lab::new();
    let backend = lab.backend();
    assert_eq!(backend.stage(&signed(V2)).unwrap(), V2);
    let args = lab.last_call("UpdateDeployment");
    assert_eq!(args["modifier:set-revision"], Opt::Str(V2.into()));
    assert!(!args.contains_key("modifier:set-refspec"));
}

// --- 1. driver registration ----------------------------------------------------------------

#[test]
fn outside_a_systemd_unit_staging_does_not_register_as_driver() {
    // The tests run outside any unit, and the stand-in (like the daemon) refuses the whole
    // call when register-driver comes from there.
    let lab = Lab::new();
    assert_eq!(lab.backend().stage(&signed(SIGNED_V2)).unwrap(), V2);
    let args = lab.last_call("UpdateDeployment");
    assert!(!args.contains_key("option:register-driver"), "{args:?}");
    assert_eq!(lab.standin.model().update_driver, None);
}

#[test]
fn from_a_service_staging_registers_as_the_update_driver() {
    let lab = Lab::new();
    lab.standin.model().caller_unit = Some("hkd.service".into());
    let proc_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(proc_root.path().join("self")).unwrap();
    std::fs::write(
        proc_root.path().join("self/cgroup"),
        "0::/system.slice/hkd.service\n",
    )
    .unwrap();
    let backend = lab.backend().with_proc_root(proc_root.path());
    assert_eq!(backend.stage(&signed(SIGNED_V2)).unwrap(), V2);
    let args = lab.last_call("UpdateDeployment");
    assert!(matches!(&args["option:register-driver"], Opt::Str(d) if d.contains("hkd")));
    assert_eq!(
        lab.standin.model().update_driver.as_deref(),
        Some("hkd (Housekeeper)")
    );
}

// --- 2. inhibitors -------------------------------------------------------------------------

#[test]
fn a_block_inhibitor_holds_finalize_and_says_who_until_released() {
    let lab = Lab::new();
    let backend = lab.backend();
    backend.stage(&signed(SIGNED_V2)).unwrap();
    lab.inhibitors(vec![
        (
            "shutdown".into(),
            "kubelet".into(),
            "graceful shutdown".into(),
            "delay".into(),
            0,
            10,
        ),
        (
            "sleep:shutdown".into(),
            "backup".into(),
            "copying /var".into(),
            "block".into(),
            0,
            42,
        ),
    ]);
    let err = backend.finalize(V2).unwrap_err();
    assert!(
        matches!(err, OsError::Blocked(ref m) if m.contains("blocked by backup (copying /var)")),
        "{err:?}"
    );
    assert!(!err.to_string().contains('\n'), "{err}");
    // Nothing happened: still locked, no reboot.
    assert!(
        backend
            .status()
            .unwrap()
            .staged()
            .unwrap()
            .finalization_locked
    );
    assert_eq!(lab.standin.model().reboots, 0);

    // A delay inhibitor alone does not hold it.
    lab.inhibitors(vec![(
        "shutdown".into(),
        "kubelet".into(),
        "graceful shutdown".into(),
        "delay".into(),
        0,
        10,
    )]);
    backend.finalize(V2).unwrap();
    assert_eq!(lab.standin.model().reboots, 1);
}

#[test]
fn finalize_without_logind_on_the_bus_is_a_clear_error() {
    let mut lab = Lab::new();
    let backend = lab.backend();
    backend.stage(&signed(SIGNED_V2)).unwrap();
    lab.logind = None;
    let err = backend.finalize(V2).unwrap_err();
    assert!(
        matches!(err, OsError::Unavailable(ref m) if m.contains("needs systemd-logind on the system bus")),
        "{err:?}"
    );
    assert!(
        backend
            .status()
            .unwrap()
            .staged()
            .unwrap()
            .finalization_locked
    );
}

// --- 3. no transaction after a finalize ---------------------------------------------------

#[test]
fn giving_a_finalized_target_up_restarts_the_daemon_and_removes_it() {
    let lab = Lab::new();
    let backend = lab.backend();
    backend.stage(&signed(SIGNED_V2)).unwrap();
    backend.finalize(V2).unwrap();
    // The reboot does not come. Finalizing again asks nothing (the daemon would refuse).
    backend.finalize(V2).unwrap();
    let finalizes = lab
        .methods()
        .iter()
        .filter(|m| m.as_str() == "FinalizeDeployment")
        .count();
    assert_eq!(finalizes, 1);

    backend.restore_booted().unwrap();
    assert_eq!(
        *lab.systemd.restarts.lock().unwrap(),
        ["rpm-ostreed.service"]
    );
    let all = backend.status().unwrap();
    assert_eq!(all.staged(), None);
    assert!(all.default_deployment().unwrap().booted);
    // Registered again with the restarted daemon.
    assert_eq!(lab.standin.model().clients, ["hkd", "hkd"]);
}

// --- 4. half-failed stages ----------------------------------------------------------------

#[test]
fn a_stage_that_failed_after_deploying_reports_the_target_staged() {
    let lab = Lab::new();
    let backend = lab.backend();
    lab.standin.model().hooks.fail_after_work_next = Some("Operation was cancelled".into());
    // The truth: the target is staged and locked, whatever the transaction said.
    assert_eq!(backend.stage(&signed(SIGNED_V2)).unwrap(), V2);
    assert!(
        backend
            .status()
            .unwrap()
            .staged()
            .unwrap()
            .finalization_locked
    );
    // And the next stage finds it there: no second transaction.
    assert_eq!(backend.stage(&signed(SIGNED_V2)).unwrap(), V2);
    assert_eq!(lab.methods(), ["UpdateDeployment"]);
}

#[test]
fn a_daemon_gone_in_the_middle_is_named_and_nothing_is_staged() {
    let lab = Lab::new();
    let backend = lab.backend();
    lab.standin.model().hooks.vanish_next = true;
    let err = backend.stage(&signed(SIGNED_V2)).unwrap_err();
    assert!(
        matches!(err, OsError::Failed(ref m) if m.contains("closed the transaction before it finished")),
        "{err:?}"
    );
    assert_eq!(backend.status().unwrap().staged(), None);
    assert_eq!(backend.status().unwrap().booted().unwrap().checksum, V1);
}

// --- 5. branch check ----------------------------------------------------------------------

#[test]
fn a_commit_of_another_branch_needs_skip_branch_check() {
    let lab = Lab::new();
    let err = lab.backend().stage(&signed(V3)).unwrap_err();
    assert!(
        matches!(err, OsError::NotFound(ref m) if m.contains("not found in") && m.contains("os.skip_branch_check")),
        "{err:?}"
    );
    assert!(!lab
        .last_call("UpdateDeployment")
        .contains_key("option:skip-branch-check"));

    let backend = lab.backend().with_skip_branch_check(true);
    assert_eq!(backend.stage(&signed(V3)).unwrap(), V3);
    let args = lab.last_call("UpdateDeployment");
    assert_eq!(args["option:skip-branch-check"], Opt::Bool(true));
    assert_eq!(args["modifier:set-revision"], Opt::Str(V3.into()));
    // A reference target never carries it.
    backend.stage(&signed(SIGNED_V2)).unwrap();
    assert!(!lab
        .last_call("UpdateDeployment")
        .contains_key("option:skip-branch-check"));
}

// --- 6. layered bases, canonical references, digests ---------------------------------------

#[test]
fn finalize_sends_the_base_commit_of_a_layered_deployment() {
    let mut model = nestos();
    // Packages layered on the booted v1: its checksum is a local commit over v1.
    model.deployments[0].checksum = layered_commit(V1);
    model.deployments[0].base = Some(V1.into());
    let lab = Lab::with(model);
    let backend = lab.backend();
    let staged = backend.stage(&signed(SIGNED_V2)).unwrap();
    assert_eq!(staged, layered_commit(V2), "the deployment's own commit");
    backend.finalize(&staged).unwrap();
    assert_eq!(
        lab.last_call("FinalizeDeployment")["option:checksum"],
        Opt::Str(V2.into()),
        "the daemon compares the base commit"
    );
    assert_eq!(lab.standin.model().reboots, 1);
    // A checksum target names the base commit too: v2 is already staged.
    assert_eq!(backend.stage(&signed(V2)).unwrap_or_default(), staged);
}

#[test]
fn references_are_matched_in_the_form_the_daemon_reports_them() {
    let remote = "ostree-remote-registry:nestos:hub.oepkgs.net/nestos/nestos:22.03-2";
    let mut model = nestos();
    model
        .images
        .insert(remote.into(), (V2.to_owned(), "2".to_owned()));
    let lab = Lab::with(model);
    for raw in [remote, UNVERIFIED_V2] {
        let target = ImageRef::parse(raw, ImagePolicy::ALLOW_UNVERIFIED).unwrap();
        let backend = lab.backend_allowing_unverified(true);
        assert_eq!(backend.stage(&target).unwrap(), V2, "{raw}");
        let staged = backend.status().unwrap().staged().unwrap().clone();
        assert!(
            staged
                .origin
                .as_deref()
                .is_some_and(|o| o.contains(":docker://hub.oepkgs.net/")),
            "reported canonical: {staged:?}"
        );
        // Recognised as the target: asking again changes nothing.
        let before = lab.methods().len();
        assert_eq!(backend.stage(&target).unwrap(), V2);
        assert_eq!(lab.methods().len(), before, "{raw}");
        backend.unstage().unwrap();
    }
}

#[test]
fn an_image_pinned_to_another_digest_is_not_taken_for_the_target() {
    let pinned_ok = format!(
        "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos@{}",
        digest_of(V2)
    );
    let pinned_other = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos@sha256:ffff";
    let mut model = nestos();
    model
        .images
        .insert(pinned_ok.clone(), (V2.to_owned(), "2".to_owned()));
    // A registry answering the pinned digest with another image.
    model
        .images
        .insert(pinned_other.into(), (V2.to_owned(), "2".to_owned()));
    let lab = Lab::with(model);
    let backend = lab.backend();
    assert_eq!(backend.stage(&signed(&pinned_ok)).unwrap(), V2);
    backend.unstage().unwrap();
    let err = backend.stage(&signed(pinned_other)).unwrap_err();
    assert!(
        matches!(err, OsError::State(ref m) if m.contains("is staged, not the target")),
        "{err:?}"
    );
    assert_eq!(lab.standin.model().reboots, 0);
}

// --- bad input ----------------------------------------------------------------------------

#[test]
fn an_admins_upgrade_in_between_is_named_and_not_finalized() {
    let lab = Lab::new();
    let backend = lab.backend();
    backend.stage(&signed(SIGNED_V2)).unwrap();
    {
        // `rpm-ostree upgrade` by an admin: another deployment staged in place of ours.
        let mut m = lab.standin.model();
        let theirs = &mut m.deployments[0];
        theirs.checksum = V3.into();
        theirs.origin = TESTING.into();
        theirs.locked = false;
    }
    let err = backend.finalize(V2).unwrap_err();
    assert!(
        matches!(err, OsError::State(ref m)
            if m.contains(V3) && m.contains(TESTING) && m.contains("nothing was finalized")),
        "{err:?}"
    );
    assert!(!lab.methods().contains(&"FinalizeDeployment".to_owned()));
    assert_eq!(lab.standin.model().reboots, 0);
    assert_eq!(backend.status().unwrap().booted().unwrap().checksum, V1);
}

// --- 7. progress in the status --------------------------------------------------------------

#[test]
fn staging_progress_shows_in_the_status_while_it_runs() {
    use housekeeper::node::machine::{Machine, State};
    use housekeeper::node::status::{render, NodeStatus, ProgressSink};

    let lab = Lab::new();
    let mut machine = Machine::new("boot-0");
    machine.state = State::Staging {
        target: signed(SIGNED_V2),
    };
    let status = Arc::new(Mutex::new(NodeStatus::new(
        "rpm-ostree",
        &machine,
        vec![],
        None,
    )));
    let sink = ProgressSink::default();
    sink.attach(status.clone());
    let backend = lab.backend().with_observer(sink.observer());
    lab.standin.model().pull_pause = Some(Duration::from_secs(2));
    let staging = std::thread::spawn(move || backend.stage(&signed(SIGNED_V2)));

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let now = status.lock().unwrap().clone();
        if now.progress.as_ref().is_some_and(|p| p.bytes > 0) {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!staging.is_finished(), "seen while the pull runs");
    let json = serde_json::to_value(&seen).unwrap();
    assert_eq!(json["progress"]["task"], "Receiving objects");
    assert_eq!(json["progress"]["percent"], 50);
    assert_eq!(json["progress"]["bytes"], 4_096_000);
    assert_eq!(json["progress"]["objectsRequested"], 180);
    let mut text = Vec::new();
    render(&seen, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(
            "  progress: Receiving objects 50 %, 3.9 MiB at 2.0 MiB/s, 90 of 180 objects\n"
        ),
        "{text}"
    );
    assert_eq!(staging.join().unwrap().unwrap(), V2);
}

// --- idle exit and bus activation ---------------------------------------------------------

#[test]
fn the_daemon_idle_exiting_between_two_calls_is_started_again_by_the_bus() {
    let lab = Lab::on(
        PrivateBus::activating(standin::rpmostreed::BUS_NAME),
        nestos(),
    );
    let backend = lab.backend();
    assert_eq!(backend.status().unwrap().deployments.len(), 2);
    lab.standin.exit_idle();
    // The next call starts it again; hkd registers with the new instance and stages.
    assert_eq!(backend.stage(&signed(SIGNED_V2)).unwrap(), V2);
    assert_eq!(lab.standin.model().activations, 1);
    assert_eq!(lab.standin.model().clients, ["hkd", "hkd"]);

    // Gone again while hkd is between a look and a transaction: the same.
    lab.standin.exit_idle();
    backend.unstage().unwrap();
    assert_eq!(lab.standin.model().activations, 2);
    assert_eq!(backend.status().unwrap().staged(), None);
}

#[test]
fn a_finished_transaction_announces_the_changed_deployments() {
    let lab = Lab::new();
    let listener = zbus::blocking::connection::Builder::address(lab.bus.address.as_str())
        .and_then(|b| b.build())
        .unwrap();
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .unwrap()
        .member("PropertiesChanged")
        .unwrap()
        .path("/org/projectatomic/rpmostree1/Sysroot")
        .unwrap()
        .build();
    let signals =
        zbus::blocking::MessageIterator::for_match_rule(rule, &listener, Some(16)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        type Changed = (
            String,
            HashMap<String, zbus::zvariant::OwnedValue>,
            Vec<String>,
        );
        for msg in signals.flatten() {
            if let Ok((iface, changed, _)) = msg.body().deserialize::<Changed>() {
                let _ = tx.send((iface, changed.keys().cloned().collect::<Vec<_>>()));
            }
        }
    });
    lab.backend().stage(&signed(SIGNED_V2)).unwrap();
    let (iface, changed) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(iface, "org.projectatomic.rpmostree1.Sysroot");
    assert!(changed.contains(&"Deployments".to_owned()), "{changed:?}");
}

/// `hkd run` itself over the stand-in on its system bus: the program's own wiring of the
/// backend's progress signals to the status its socket serves, seen with `hkd status --json`
/// while a slowed pull runs. (hkd is stopped before the stage ends: nothing here reboots.)
#[test]
fn hkd_run_serves_staging_progress_on_its_socket_while_it_pulls() {
    use std::process::{Command, Stdio};

    let lab = Lab::new();
    lab.standin.model().pull_pause = Some(Duration::from_secs(20));
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/hkd/config.d")).unwrap();
    std::fs::write(
        r.join("etc/hkd/config.d/50-test.toml"),
        "[os]\nbackend = \"rpm-ostree\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(r.join("proc/sys/kernel/random/boot_id"), "boot-0\n").unwrap();
    let socket = r.join("hkd.sock");
    let hkd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hkd"));
        c.args(args)
            .arg("--root")
            .arg(r)
            .arg("--socket")
            .arg(&socket)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &lab.bus.address)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM");
        c
    };
    let log = std::fs::File::create(r.join("hkd.log")).unwrap();
    let mut daemon = hkd(&["run"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(r.join("hkd.log")).unwrap_or_default();
    let mut waited = 0;
    while !socket.exists() {
        assert!(waited < 300, "hkd run made no socket:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let asked = hkd(&["upgrade", SIGNED_V2]).output().unwrap();
    assert!(asked.status.success(), "{asked:?}\n{}", log());

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let json = loop {
        let out = hkd(&["status", "--json"]).output().unwrap();
        assert!(out.status.success(), "{out:?}\n{}", log());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if json["progress"]["bytes"].as_u64().is_some_and(|b| b > 0) {
            break json;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress in hkd status: {json}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(json["upgrade"]["phase"], "staging", "{json}");
    assert_eq!(json["progress"]["task"], "Receiving objects", "{json}");
    assert_eq!(json["progress"]["percent"], 50, "{json}");
    assert_eq!(json["progress"]["objectsRequested"], 180, "{json}");
    assert!(
        log().contains("register"),
        "hkd says whether it registered as the update driver:\n{}",
        log()
    );
}
