//! The new system's kernel arguments: `--append-karg`, `--delete-karg` and `--console`, and
//! the running machine's console carried when no `--console` is given (a machine reached over
//! a serial console stays reachable). Applied as coreos-installer does: to the `options` line
//! of every boot loader entry (BLS, `loader/entries/*.conf`) on the new disk's boot partition,
//! which ostree reads back as the deployment's arguments.
//!
//! Pure: the decision from the admin's choices and `/proc/cmdline`, and the edit of an
//! entry's text. The installer ([`super::install`]) reads and writes the entries.
//!
//! Guarantees: an entry keeps every line but `options`; arguments are compared whole (a
//! `--delete-karg KEY` without `=` also removes `KEY=…`); an appended argument already there
//! is not doubled. Caveat: the boot loader's own console (GRUB's `serial`/`terminal`
//! commands) is not changed; the kernel's console is.

use serde::{Deserialize, Serialize};

/// What the installer does to the new system's kernel arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kargs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub append: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<String>,
    /// `console=` values (`ttyS0,115200n8`, `tty0`), in order; the last is /dev/console.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<String>,
    /// The consoles are the running machine's, not `--console`'s.
    #[serde(default)]
    pub console_carried: bool,
}

impl Kargs {
    pub fn is_empty(&self) -> bool {
        self.append.is_empty() && self.delete.is_empty() && self.console.is_empty()
    }
}

/// Why an argument is refused. One line: what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KargError {
    #[error("kernel argument {0:?} is empty or holds white space or quotes; give one argument per option")]
    Bad(String),
    #[error(
        "--console {0:?}: give the device and its settings without console= (as ttyS0,115200n8)"
    )]
    ConsolePrefix(String),
}

/// Checks one `--append-karg` / `--delete-karg` value.
pub fn parse_karg(text: &str) -> Result<String, KargError> {
    if text.is_empty()
        || text
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        return Err(KargError::Bad(text.to_owned()));
    }
    Ok(text.to_owned())
}

/// Checks one `--console` value.
pub fn parse_console(text: &str) -> Result<String, KargError> {
    if text.starts_with("console=") {
        return Err(KargError::ConsolePrefix(text.to_owned()));
    }
    parse_karg(text)
}

/// The plan's arguments: the admin's, and the consoles asked for — or, when none are, the
/// running machine's `console=` arguments from `proc_cmdline`.
pub fn decide(
    append: &[String],
    delete: &[String],
    console: &[String],
    proc_cmdline: &str,
) -> Kargs {
    let (console, carried) = if console.is_empty() {
        let running: Vec<String> = proc_cmdline
            .split_whitespace()
            .filter_map(|a| a.strip_prefix("console="))
            .map(str::to_owned)
            .collect();
        let carried = !running.is_empty();
        (running, carried)
    } else {
        (console.to_vec(), false)
    };
    Kargs {
        append: append.to_vec(),
        delete: delete.to_vec(),
        console,
        console_carried: carried,
    }
}

fn deleted(arg: &str, delete: &[String]) -> bool {
    delete.iter().any(|d| {
        arg == d || (!d.contains('=') && arg.split_once('=').is_some_and(|(key, _)| key == d))
    })
}

/// An entry's `options` value with the arguments applied: deleted ones removed, then (when
/// consoles are set) the old `console=` arguments replaced by the new ones, then the
/// appended ones that are not there yet.
pub fn edit_options(options: &str, k: &Kargs) -> String {
    let mut args: Vec<String> = options
        .split_whitespace()
        .filter(|a| !deleted(a, &k.delete))
        .filter(|a| k.console.is_empty() || !a.starts_with("console="))
        .map(str::to_owned)
        .collect();
    for c in &k.console {
        args.push(format!("console={c}"));
    }
    for a in &k.append {
        if !args.contains(a) {
            args.push(a.clone());
        }
    }
    args.join(" ")
}

/// A BLS entry's text with its `options` line edited (one added when it has none).
pub fn edit_entry(text: &str, k: &Kargs) -> String {
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| match line.strip_prefix("options") {
            Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t']) => {
                found = true;
                format!("options {}", edit_options(rest, k))
            }
            _ => line.to_owned(),
        })
        .collect();
    if !found {
        lines.push(format!("options {}", edit_options("", k)));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The plan's line about them, when there is anything to say.
pub fn describe(k: &Kargs) -> Option<String> {
    if k.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !k.console.is_empty() {
        parts.push(format!(
            "console {} ({})",
            k.console.join(", "),
            if k.console_carried {
                "this machine's, carried"
            } else {
                "--console"
            }
        ));
    }
    if !k.append.is_empty() {
        parts.push(format!("appended {}", k.append.join(" ")));
    }
    if !k.delete.is_empty() {
        parts.push(format!("deleted {}", k.delete.join(" ")));
    }
    Some(format!(
        "kernel arguments of the new system: {}",
        parts.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = "title NestOS 41.1 (ostree:0)\nversion 1\nlinux /ostree/nestos-1/vmlinuz\ninitrd /ostree/nestos-1/initramfs.img\noptions mitigations=auto,nosmt ignition.platform.id=metal $ignition_firstboot console=tty0 ostree=/ostree/boot.1/nestos/1/0\n";

    #[test]
    fn the_running_console_is_carried_unless_one_is_asked_for() {
        let cmdline =
            "BOOT_IMAGE=/vmlinuz root=/dev/vda1 console=tty0 console=ttyS0,115200n8 quiet";
        let k = decide(&[], &[], &[], cmdline);
        assert_eq!(k.console, ["tty0", "ttyS0,115200n8"]);
        assert!(k.console_carried);
        let k = decide(&[], &[], &["ttyS1,9600".into()], cmdline);
        assert_eq!(k.console, ["ttyS1,9600"]);
        assert!(!k.console_carried);
        let k = decide(&[], &[], &[], "root=/dev/vda1 quiet");
        assert!(k.is_empty());
        assert_eq!(describe(&k), None);
    }

    #[test]
    fn options_are_edited_like_coreos_installer() {
        let k = Kargs {
            append: vec!["nosmt".into(), "ignition.platform.id=metal".into()],
            delete: vec!["mitigations=auto,nosmt".into(), "quiet".into()],
            console: vec!["ttyS0,115200n8".into()],
            console_carried: true,
        };
        assert_eq!(
            edit_options(
                "mitigations=auto,nosmt ignition.platform.id=metal console=tty0 quiet=1 root=x",
                &k
            ),
            "ignition.platform.id=metal root=x console=ttyS0,115200n8 nosmt"
        );
        // Without consoles, the entry's own console stays.
        let k = Kargs {
            append: vec!["a=1".into()],
            ..Kargs::default()
        };
        assert_eq!(edit_options("console=tty0 b", &k), "console=tty0 b a=1");
    }

    #[test]
    fn an_entry_keeps_every_other_line() {
        let k = decide(
            &["x.y=1".into()],
            &["mitigations".into()],
            &["ttyS0".into()],
            "",
        );
        let edited = edit_entry(ENTRY, &k);
        let lines: Vec<&str> = edited.lines().collect();
        assert_eq!(lines[..4], ENTRY.lines().collect::<Vec<_>>()[..4]);
        assert_eq!(
            lines[4],
            "options ignition.platform.id=metal $ignition_firstboot ostree=/ostree/boot.1/nestos/1/0 console=ttyS0 x.y=1"
        );
        // No options line: one is added.
        assert_eq!(
            edit_entry("title t\nlinux /v\n", &k),
            "title t\nlinux /v\noptions console=ttyS0 x.y=1\n"
        );
        assert_eq!(
            describe(&k).unwrap(),
            "kernel arguments of the new system: console ttyS0 (--console); appended x.y=1; deleted mitigations"
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert_eq!(parse_karg("a=1"), Ok("a=1".into()));
        for bad in ["", "a b", "a=\"b\"", "x\ty"] {
            assert_eq!(parse_karg(bad), Err(KargError::Bad(bad.into())), "{bad:?}");
        }
        assert_eq!(
            parse_console("console=ttyS0").unwrap_err().to_string(),
            "--console \"console=ttyS0\": give the device and its settings without console= (as ttyS0,115200n8)"
        );
        assert_eq!(parse_console("ttyS0,115200n8"), Ok("ttyS0,115200n8".into()));
    }
}
