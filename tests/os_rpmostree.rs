//! The rpm-ostree backend against a stand-in for rpm-ostreed (tests/standin/rpmostreed.rs) on a
//! private dbus-daemon: real D-Bus traffic, the backend exactly as in production, only the bus
//! address differs. Needs Debian's `dbus` package for `dbus-daemon`.

mod standin;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use housekeeper::image_ref::{ImagePolicy, ImageRef, ImageRefError};
use housekeeper::os::rpmostree::{Progress, RpmOstree};
use housekeeper::os::{Backend, OsError};
use standin::bus::PrivateBus;
use standin::rpmostreed::{Dep, Model, Opt, StandIn};

const V0: &str = "0000000000000000000000000000000000000000000000000000000000000a00";
const V1: &str = "1111111111111111111111111111111111111111111111111111111111111b11";
const V2: &str = "2222222222222222222222222222222222222222222222222222222222222c22";
const SIGNED_V1: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03-1";
const SIGNED_V2: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03-2";
const UNVERIFIED_V2: &str = "ostree-unverified-registry:hub.oepkgs.net/nestos/nestos:22.03-2";
const MISSING: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:99.99";

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
        ]),
        ..Model::default()
    }
}

/// The stand-in is declared first so that it leaves the bus before the bus goes.
struct Lab {
    standin: StandIn,
    bus: PrivateBus,
    progress: Arc<Mutex<Vec<Progress>>>,
}

impl Lab {
    fn new() -> Lab {
        let bus = PrivateBus::start();
        Lab {
            standin: StandIn::start(&bus, nestos()),
            bus,
            progress: Arc::default(),
        }
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
    assert!(matches!(&args["option:register-driver"], Opt::Str(d) if d.contains("hkd")));
    assert_eq!(
        lab.standin.model().update_driver.as_deref(),
        Some("hkd (Housekeeper)")
    );

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
