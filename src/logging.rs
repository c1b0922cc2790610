//! Logging for all three programs, through `tracing`.
//!
//! Under systemd (JOURNAL_STREAM names the stream our stderr is connected to) events go to
//! journald with structured fields: each field of an event becomes a journal field of the same
//! name in upper case, so `message_id = msgid::REBOOTING` is searchable as
//! `journalctl MESSAGE_ID=…`. Anywhere else they are human-readable lines on stderr.
//!
//! The level comes from `-v`/`-q`; `RUST_LOG`, when set, adds directives on top
//! (`RUST_LOG=housekeeper=debug,kube=info`).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::prelude::*;

/// Stable journal MESSAGE_IDs of the events an operator searches for. Never change a value:
/// dashboards and alerts match on them.
pub mod msgid {
    pub const UPGRADE_STARTED: &str = "ea1d387a06a64ef6bdcbd6d3c0f69831";
    pub const STAGED: &str = "628a8427640442b388156e43590ffd18";
    pub const DRAINED: &str = "438d46c0055a4f8cb63da71f5df51493";
    pub const REBOOTING: &str = "2df9d851124646e7ac5949f376c781c3";
    pub const BOOT_VERIFIED: &str = "73f47b29013145a1aadd6a68660526d0";
    pub const UPGRADE_DONE: &str = "4e984f36e549408ca20848892b8246d4";
    pub const UPGRADE_FAILED: &str = "004e38e237d74569af4617a183cd6791";
    pub const ROLLED_BACK: &str = "c5dbb0b3562d4e43ab30a1e325750a45";
    pub const CONVERSION_STARTED: &str = "509f1233c83b43e09f3d112ad5a0385f";
    pub const CONVERTED: &str = "54bf218478ee4dfeb7c48ed77496c374";
    pub const CONFIG_LOADED: &str = "c8d9f942c6714b93a72b89c35365d4b4";

    /// All of them, for the uniqueness test and for documentation generators.
    pub const ALL: &[(&str, &str)] = &[
        ("UPGRADE_STARTED", UPGRADE_STARTED),
        ("STAGED", STAGED),
        ("DRAINED", DRAINED),
        ("REBOOTING", REBOOTING),
        ("BOOT_VERIFIED", BOOT_VERIFIED),
        ("UPGRADE_DONE", UPGRADE_DONE),
        ("UPGRADE_FAILED", UPGRADE_FAILED),
        ("ROLLED_BACK", ROLLED_BACK),
        ("CONVERSION_STARTED", CONVERSION_STARTED),
        ("CONVERTED", CONVERTED),
        ("CONFIG_LOADED", CONFIG_LOADED),
    ];
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

/// How stderr lines look: a daemon's carry a timestamp, a command's read like messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Daemon,
    Command,
}

/// Whether `JOURNAL_STREAM` ("DEVICE:INODE", set by systemd for a service whose stderr goes to
/// the journal) names the stream with device `dev` and inode `ino`. A child process that
/// inherits the variable but not the stream must not log to the journal, hence the check.
pub fn journal_stream_matches(journal_stream: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// Decides the sink for this process from its environment and its stderr.
pub fn detect_sink() -> Sink {
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().ok();
    let meta = stderr.and_then(|fd| std::fs::File::from(fd).metadata().ok());
    let env = std::env::var("JOURNAL_STREAM").ok();
    match meta {
        Some(m) if journal_stream_matches(env.as_deref(), m.dev(), m.ino()) => Sink::Journal,
        _ => Sink::Stderr,
    }
}

/// Colours only on a terminal, and never when NO_COLOR is set (https://no-color.org).
fn colours_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The filter: `level` from the command line, then `RUST_LOG`'s directives on top.
fn filter(level: LevelFilter) -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy()
}

/// Sets up logging for program `ident` at `level`. Call once, first thing in `main`.
pub fn init(ident: &str, level: LevelFilter, style: Style) {
    let registry = tracing_subscriber::registry().with(filter(level));
    if detect_sink() == Sink::Journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                // No prefix: a field `message_id` becomes the journal's own MESSAGE_ID.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier(ident.to_owned());
                registry.with(layer).init();
                return;
            }
            Err(e) => eprintln!("{ident}: journald is not reachable ({e}); logging to stderr"),
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colours_on_stderr())
        .with_target(false);
    match style {
        Style::Daemon => registry.with(fmt).init(),
        Style::Command => registry.with(fmt.without_time()).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_our_stream() {
        assert!(journal_stream_matches(Some("8:12345"), 8, 12345));
        assert!(!journal_stream_matches(Some("8:12345"), 8, 12346));
        assert!(!journal_stream_matches(Some("9:12345"), 8, 12345));
        assert!(!journal_stream_matches(None, 8, 12345));
        assert!(!journal_stream_matches(Some(""), 8, 12345));
        assert!(!journal_stream_matches(Some("8-12345"), 8, 12345));
        assert!(!journal_stream_matches(Some("x:y"), 8, 12345));
    }

    #[test]
    fn a_file_named_by_journal_stream_is_detected() {
        // The decision is made on real file identities: a file we open and its dev:ino.
        let file = tempfile::tempfile().unwrap();
        let meta = file.metadata().unwrap();
        let value = format!("{}:{}", meta.dev(), meta.ino());
        assert!(journal_stream_matches(Some(&value), meta.dev(), meta.ino()));
        let other = tempfile::tempfile().unwrap().metadata().unwrap();
        assert!(!journal_stream_matches(
            Some(&value),
            other.dev(),
            other.ino()
        ));
    }

    #[test]
    fn message_ids_are_unique_128_bit_hex() {
        let mut seen = std::collections::HashSet::new();
        for (name, id) in msgid::ALL {
            assert_eq!(id.len(), 32, "{name}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{name}"
            );
            assert!(seen.insert(id), "{name} repeats {id}");
        }
    }
}
