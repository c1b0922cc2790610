//! What a failed D-Bus call or transaction means for the agent: the [`OsError`] it branches on.
//!
//! rpm-ostreed raises GLib errors; GDBus sends those it has no D-Bus name for as
//! `org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code<N>`. A busy daemon says
//! "Transaction in progress: …" as G_IO_ERROR_BUSY (`Code26`, raised by
//! `rpmostreed_sysroot_prep_for_txn` in v2023.7 and current releases); that name, and the
//! message whatever its code, are [`OsError::Busy`].
//!
//! What FinalizeDeployment refuses before it unlocks anything (`check_sd_inhibitor_locks`): a
//! `block`-mode shutdown inhibitor ("Reboot blocked by a systemd inhibitor lock in `block`
//! mode\nHeld by: WHO\nReason: WHY") is [`OsError::Blocked`], "not yet"; no logind to ask
//! ("Checking systemd inhibitor locks: …") is [`OsError::Unavailable`]. After a finalize the
//! daemon refuses every new transaction until it restarts ([`is_reboot_initiated`]).

use crate::os::OsError;

const SERVICE_UNKNOWN: &str = "org.freedesktop.DBus.Error.ServiceUnknown";
const NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";
const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const NO_REPLY: &str = "org.freedesktop.DBus.Error.NoReply";
const GIO_BUSY: &str = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code26";

/// What to check when the daemon is not there.
pub const CHECK_DAEMON: &str =
    "check `systemctl status rpm-ostreed` and that rpm-ostree is installed, \
     or set os.backend = \"ostree\" on hosts without it";

/// The daemon's refusal of any transaction once a finalize started its reboot
/// (`rpmostreed_sysroot_prep_for_txn`, G_IO_ERROR_FAILED).
const REBOOT_INITIATED: &str = "Reboot initiated, cannot start new transaction";

/// Whether `e` is the daemon refusing a transaction because a finalize already started its
/// reboot: only a restart of the daemon lifts it.
pub fn is_reboot_initiated(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(_, Some(message), _) if message.contains(REBOOT_INITIATED))
}

/// Who holds the shutdown, from FinalizeDeployment's refusal: "backup (draining pods)", with
/// how many others hold it too. None when `message` is not that refusal.
pub fn blocked_by(message: &str) -> Option<String> {
    if !message.contains("Reboot blocked by a systemd inhibitor lock") {
        return None;
    }
    let field = |name: &str| {
        message
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let who = field("Held by:").unwrap_or("an unnamed holder");
    let mut text = match field("Reason:") {
        Some(why) => format!("{who} ({why})"),
        None => who.to_owned(),
    };
    if let Some(others) = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("and "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok())
    {
        text.push_str(&format!(
            " and {others} other inhibitor(s); see `systemd-inhibit --list`"
        ));
    }
    Some(text)
}

/// Whether `e` is the bus saying the daemon went away without answering — what a call
/// racing rpm-ostreed's idle exit gets. Such a call was not acted on and may be repeated.
pub fn is_no_reply(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == NO_REPLY)
}

/// Classifies a failed call; `action` names the object and the action ("staging X").
pub fn from_call(action: &str, e: zbus::Error) -> OsError {
    match &e {
        zbus::Error::MethodError(name, message, _) => {
            let message = message.as_deref().unwrap_or("").trim();
            let one_line = message.lines().next().unwrap_or("");
            match name.as_str() {
                SERVICE_UNKNOWN | NAME_HAS_NO_OWNER => OsError::Unavailable(format!(
                    "{action}: rpm-ostreed is not on the system bus ({one_line}); {CHECK_DAEMON}"
                )),
                NO_REPLY => OsError::Unavailable(format!(
                    "{action}: rpm-ostreed went away without answering, twice ({one_line}); \
                     {CHECK_DAEMON}"
                )),
                ACCESS_DENIED => OsError::Failed(format!(
                    "{action}: rpm-ostreed refused it ({one_line}); hkd must run as root, \
                     or polkit must allow the org.projectatomic.rpmostree1 actions"
                )),
                GIO_BUSY => OsError::Busy(format!("{action}: {one_line}")),
                _ if message.contains(REBOOT_INITIATED) => OsError::State(format!(
                    "{action}: rpm-ostreed has started a reboot after a finalize and refuses \
                     new transactions until it restarts ({one_line})"
                )),
                _ if is_busy_message(message) => OsError::Busy(format!("{action}: {one_line}")),
                _ => OsError::Failed(format!("{action}: {one_line} ({name})")),
            }
        }
        zbus::Error::InputOutput(_) | zbus::Error::Connection(_, _) => {
            OsError::Unavailable(format!(
                "{action}: the D-Bus connection failed: {e}; is the system bus (dbus) running?"
            ))
        }
        _ => OsError::Failed(format!("{action}: {e}")),
    }
}

/// Classifies a transaction that finished unsuccessfully with `message`.
pub fn from_finished(action: &str, message: &str) -> OsError {
    let one_line = message.trim().lines().next().unwrap_or("");
    let lower = message.to_ascii_lowercase();
    if let Some(who) = blocked_by(message) {
        OsError::Blocked(format!(
            "{action}: the reboot is blocked by {who}, a block-mode shutdown inhibitor; \
             rpm-ostreed finalizes only once it is released"
        ))
    } else if message.contains("Checking systemd inhibitor locks") {
        OsError::Unavailable(format!(
            "{action}: rpm-ostreed could not ask systemd-logind for inhibitors ({one_line}); \
             FinalizeDeployment needs systemd-logind on the system bus"
        ))
    } else if lower.contains("cancelled") || lower.contains("canceled") {
        OsError::Failed(format!(
            "{action}: the transaction was cancelled: {one_line}"
        ))
    } else if is_busy_message(message) {
        OsError::Busy(format!("{action}: {one_line}"))
    } else if message.contains("Staged deployment already unlocked")
        || message.contains("No pending staged deployment")
        || message.contains("Expected staged base checksum")
    {
        OsError::State(format!("{action}: {one_line}"))
    } else if message.contains("No space left on device") {
        OsError::Failed(format!("{action}: the disk is full: {one_line}"))
    } else if message.starts_with("Checksum ") && message.contains(" not found in ") {
        OsError::NotFound(format!(
            "{action}: {one_line}: the commit is not in the history of the booted origin's \
             branch; set os.skip_branch_check = true to deploy commits from other branches"
        ))
    } else if lower.contains("not found")
        || lower.contains("manifest unknown")
        || message.contains("No such branch")
    {
        OsError::NotFound(format!("{action}: {one_line}"))
    } else {
        OsError::Failed(format!("{action}: rpm-ostreed reported: {one_line}"))
    }
}

fn is_busy_message(message: &str) -> bool {
    message.contains("Transaction in progress") || message.contains("transaction in progress")
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::message::Message;
    use zbus::names::OwnedErrorName;

    fn method_error(name: &str, message: &str) -> zbus::Error {
        let call = Message::method_call("/", "Any")
            .unwrap()
            .build(&())
            .unwrap();
        zbus::Error::MethodError(
            OwnedErrorName::try_from(name).unwrap(),
            Some(message.to_owned()),
            call,
        )
    }

    #[test]
    fn calls_are_classified() {
        let absent = from_call(
            "reading deployments",
            method_error(SERVICE_UNKNOWN, "The name is not activatable"),
        );
        assert!(matches!(absent, OsError::Unavailable(_)));
        assert!(absent.to_string().contains("systemctl status rpm-ostreed"));

        let busy_now = from_call(
            "staging X",
            method_error(
                "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code0",
                "Transaction in progress: deploy\n You can cancel the current transaction with `rpm-ostree cancel`",
            ),
        );
        assert!(
            matches!(busy_now, OsError::Busy(ref m) if !m.contains('\n')),
            "{busy_now}"
        );
        let busy = from_call(
            "staging X",
            method_error(
                GIO_BUSY,
                "Transaction in progress: deploy\n You can cancel the current transaction with `rpm-ostree cancel`",
            ),
        );
        assert!(
            matches!(busy, OsError::Busy(ref m) if !m.contains('\n')),
            "{busy}"
        );
        let old = from_call(
            "staging X",
            method_error(GIO_BUSY, "System transaction in progress"),
        );
        assert!(matches!(old, OsError::Busy(_)));

        let rebooting = method_error(
            "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code0",
            "Reboot initiated, cannot start new transaction",
        );
        assert!(is_reboot_initiated(&rebooting));
        assert!(!is_reboot_initiated(&method_error(
            GIO_BUSY,
            "Transaction in progress: x"
        )));
        let e = from_call("removing the staged deployment", rebooting);
        assert!(
            matches!(e, OsError::State(ref m) if m.contains("until it restarts")),
            "{e}"
        );

        let denied = from_call("staging X", method_error(ACCESS_DENIED, "Not authorized"));
        assert!(denied.to_string().contains("must run as root"));
        assert!(is_no_reply(&method_error(NO_REPLY, "gone")));
        assert!(!is_no_reply(&method_error(SERVICE_UNKNOWN, "gone")));
    }

    #[test]
    fn the_inhibitor_refusal_names_who_holds_the_shutdown() {
        assert_eq!(blocked_by("Bootloader write config"), None);
        assert_eq!(
            blocked_by(
                "Reboot blocked by a systemd inhibitor lock in `block` mode\nHeld by: backup\nReason: copying"
            )
            .as_deref(),
            Some("backup (copying)")
        );
        assert_eq!(
            blocked_by(
                "Reboot blocked by a systemd inhibitor lock in `block` mode\nHeld by: a\nReason: b\n\
                 and 2 other blocking inhibitor lock(s)\nUse `systemd-inhibit --list` to see details"
            )
            .as_deref(),
            Some("a (b) and 2 other inhibitor(s); see `systemd-inhibit --list`")
        );
    }

    #[test]
    fn finished_messages_are_classified() {
        type Check = fn(&OsError) -> bool;
        let cases: [(&str, Check); 8] = [
            (
                "Reboot blocked by a systemd inhibitor lock in `block` mode\nHeld by: backup\nReason: copying /var",
                |e| matches!(e, OsError::Blocked(m) if m.contains("blocked by backup (copying /var)") && !m.contains('\n')),
            ),
            (
                "Checking systemd inhibitor locks: GDBus.Error:org.freedesktop.DBus.Error.ServiceUnknown: The name org.freedesktop.login1 was not provided by any .service files",
                |e| matches!(e, OsError::Unavailable(m) if m.contains("needs systemd-logind")),
            ),
            (
                "Checksum 2222 not found in nestos/x86_64/stable",
                |e| matches!(e, OsError::NotFound(m) if m.contains("os.skip_branch_check")),
            ),
            (
                "Operation was cancelled",
                |e| matches!(e, OsError::Failed(m) if m.contains("was cancelled")),
            ),
            ("Staged deployment already unlocked", |e| {
                matches!(e, OsError::State(_))
            }),
            (
                "writing object: No space left on device",
                |e| matches!(e, OsError::Failed(m) if m.contains("disk is full")),
            ),
            (
                "reading manifest 9.9 in hub.oepkgs.net/nestos/nestos: manifest unknown",
                |e| matches!(e, OsError::NotFound(_)),
            ),
            (
                "Bootloader write config: grub2-mkconfig failed",
                |e| matches!(e, OsError::Failed(m) if m.contains("rpm-ostreed reported: Bootloader")),
            ),
        ];
        for (message, expected) in cases {
            let e = from_finished("staging X", message);
            assert!(expected(&e), "{message}: {e:?}");
            assert!(e.to_string().starts_with("staging X: "), "{e}");
        }
    }
}
