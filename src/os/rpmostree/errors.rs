//! What a failed D-Bus call or transaction means for the agent: the [`OsError`] it branches on.
//!
//! rpm-ostreed raises GLib errors; GDBus sends those it has no D-Bus name for as
//! `org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code<N>`. A busy daemon says
//! "Transaction in progress: …" (G_IO_ERROR_FAILED, current releases) or "System transaction in
//! progress" (G_IO_ERROR_BUSY, code 26, older ones); both are [`OsError::Busy`].

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
    if lower.contains("cancelled") || lower.contains("canceled") {
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
        let busy_old = from_call(
            "staging X",
            method_error(GIO_BUSY, "System transaction in progress"),
        );
        assert!(matches!(busy_old, OsError::Busy(_)));

        let denied = from_call("staging X", method_error(ACCESS_DENIED, "Not authorized"));
        assert!(denied.to_string().contains("must run as root"));
        assert!(is_no_reply(&method_error(NO_REPLY, "gone")));
        assert!(!is_no_reply(&method_error(SERVICE_UNKNOWN, "gone")));
    }

    #[test]
    fn finished_messages_are_classified() {
        type Check = fn(&OsError) -> bool;
        let cases: [(&str, Check); 5] = [
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
