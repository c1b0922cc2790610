//! hkd's logind rebooter against a stand-in logind (tests/standin/logind.rs) on a real,
//! private dbus-daemon: inhibitors listed over the wire decide, Reboot is called or not.

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
