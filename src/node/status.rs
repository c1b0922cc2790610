//! `hkd status`: the agent's state as a versioned document, and its rendering for people.
//!
//! The document (`apiVersion: hkd.housekeeper.io/v1`, `kind: NodeStatus`) is what
//! `hkd status --json` prints and what the local socket serves; its JSON schema is committed
//! at `schema/node-status.v1.json` and a test keeps it in step with these types. Fields are
//! only ever added within v1.

use std::io::{self, Write};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::machine::{short, Machine, Phase, State};
use crate::os::Deployment;

pub const API_VERSION: &str = "hkd.housekeeper.io/v1";
pub const KIND: &str = "NodeStatus";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub api_version: String,
    pub kind: String,
    /// The deployment backend in use (`ostree`, `rpm-ostree`).
    pub backend: String,
    /// The id of the running boot.
    pub boot_id: String,
    /// Deployments in boot order; the first starts at the next boot.
    pub deployments: Vec<Deployment>,
    pub upgrade: Upgrade,
    /// The last error met, if the last attempt at anything failed.
    pub last_error: Option<String>,
}

/// Where the upgrade state machine stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upgrade {
    /// idle, staging, staged, granted, draining, rebooting, verifying, done, rollingBack,
    /// rolledBack, failed.
    #[schemars(with = "String")]
    pub phase: Phase,
    pub target: Option<String>,
    /// The target's commit, once staged.
    pub checksum: Option<String>,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
    /// What happens next, in words.
    pub pending: Option<String>,
    /// A target that failed here and is not retried until a different one is asked for.
    pub failed_target: Option<String>,
}

impl NodeStatus {
    pub fn new(
        backend: &str,
        machine: &Machine,
        deployments: Vec<Deployment>,
        last_error: Option<String>,
    ) -> Self {
        NodeStatus {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            backend: backend.into(),
            boot_id: machine.boot_id.clone(),
            deployments,
            upgrade: Upgrade::of(machine),
            last_error,
        }
    }
}

impl Upgrade {
    fn of(machine: &Machine) -> Upgrade {
        use State as S;
        let state = &machine.state;
        let checksum = match state {
            S::Staged { checksum, .. }
            | S::Granted { checksum, .. }
            | S::Draining { checksum, .. }
            | S::Rebooting { checksum, .. }
            | S::Verifying { checksum, .. }
            | S::Done { checksum, .. }
            | S::RollingBack { checksum, .. } => Some(checksum.clone()),
            S::Idle | S::Staging { .. } | S::RolledBack { .. } | S::Failed { .. } => None,
        };
        let reason = match state {
            S::RollingBack { reason, .. }
            | S::RolledBack { reason, .. }
            | S::Failed { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        let pending = match state {
            S::Idle | S::Done { .. } | S::RolledBack { .. } | S::Failed { .. } => None,
            S::Staging { target } => Some(format!("download and stage {target}")),
            S::Staged { .. } => Some("wait for the cluster to grant this node".into()),
            S::Granted { .. } => Some("cordon and drain this node".into()),
            S::Draining { .. } => Some("finish draining this node".into()),
            S::Rebooting { checksum, .. } => Some(format!("reboot into {}", short(checksum))),
            S::Verifying { .. } => Some("pass the health checks".into()),
            S::RollingBack { .. } => Some("reboot into the previous deployment".into()),
        };
        Upgrade {
            phase: state.phase(),
            target: state.target().map(ToString::to_string),
            checksum,
            reason,
            pending,
            failed_target: machine.failed_target.as_ref().map(ToString::to_string),
        }
    }
}

/// The JSON schema of [`NodeStatus`], as committed.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(NodeStatus)).expect("a schema serializes")
}

/// Renders the status for people: a few lines, long values on lines of their own, no colour.
pub fn render(status: &NodeStatus, out: &mut dyn Write) -> io::Result<()> {
    let up = &status.upgrade;
    writeln!(out, "Upgrade: {}", up.phase)?;
    if let Some(target) = &up.target {
        writeln!(out, "  target: {target}")?;
    }
    if let Some(reason) = &up.reason {
        writeln!(out, "  reason: {reason}")?;
    }
    if let Some(pending) = &up.pending {
        writeln!(out, "  next: {pending}")?;
    }
    if let Some(failed) = &up.failed_target {
        writeln!(out, "  not retried: {failed} (failed here)")?;
    }
    if let Some(err) = &status.last_error {
        writeln!(out, "  last error: {err}")?;
    }
    writeln!(out, "Deployments ({}):", status.backend)?;
    if status.deployments.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for d in &status.deployments {
        let mut roles = Vec::new();
        if d.booted {
            roles.push("booted");
        }
        if d.staged {
            roles.push(if d.finalization_locked {
                "staged, locked"
            } else {
                "staged"
            });
        }
        if d.pinned {
            roles.push("pinned");
        }
        let marker = if d.booted { '●' } else { ' ' };
        let version = d.version.as_deref().unwrap_or("-");
        write!(
            out,
            "{marker} {} {}.{} version {version}",
            d.osname,
            short(&d.checksum),
            d.serial
        )?;
        if !roles.is_empty() {
            write!(out, " ({})", roles.join(", "))?;
        }
        writeln!(out)?;
        if let Some(origin) = &d.origin {
            writeln!(out, "    from {origin}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_ref::ImageRef;

    /// A well-formed reference, as the journal would load it.
    fn img(raw: &str) -> ImageRef {
        ImageRef::parse_any(raw).unwrap()
    }
    use crate::testing::golden;

    fn deployment(checksum: &str, version: &str, booted: bool, staged: bool) -> Deployment {
        Deployment {
            osname: "nestos".into(),
            checksum: checksum.into(),
            serial: 0,
            version: Some(version.into()),
            origin: Some(
                "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03.2".into(),
            ),
            booted,
            staged,
            pinned: false,
            finalization_locked: staged,
        }
    }

    fn sample() -> NodeStatus {
        let mut machine = Machine::new("6f1d0c35-3b61-4a56-9e5e-0d1e3b8f0a11");
        machine.state = State::Staged {
            target: img("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03.2"),
            checksum: "b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4".into(),
        };
        NodeStatus::new(
            "rpm-ostree",
            &machine,
            vec![
                deployment(
                    "b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4d6e8f0a1b2c4",
                    "22.03.2",
                    false,
                    true,
                ),
                deployment(
                    "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
                    "22.03.1",
                    true,
                    false,
                ),
            ],
            None,
        )
    }

    #[test]
    fn the_committed_schema_matches_the_types() {
        let text = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        golden("schema/node-status.v1.json", &text);
    }

    #[test]
    fn json_and_text_match_their_golden_files() {
        let json = serde_json::to_string_pretty(&sample()).unwrap() + "\n";
        golden("tests/fixtures/node/status-staged.json", &json);
        let mut text = Vec::new();
        render(&sample(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        golden("tests/fixtures/node/status-staged.txt", &text);
    }

    #[test]
    fn a_rolled_back_node_says_why_and_what_is_not_retried() {
        let mut machine = Machine::new("b");
        machine.state = State::RolledBack {
            target: img("v3"),
            reason: "health check failed: kubelet".into(),
        };
        machine.failed_target = Some(img("v3"));
        let status = NodeStatus::new("ostree", &machine, vec![], Some("x".into()));
        let mut text = Vec::new();
        render(&status, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with(
                "Upgrade: rolledBack\n  target: v3\n  reason: health check failed: kubelet\n"
            ),
            "{text}"
        );
        assert!(text.contains("not retried: v3"), "{text}");
        assert!(status.upgrade.pending.is_none());
    }

    #[test]
    fn the_document_reads_back() {
        let json = serde_json::to_string(&sample()).unwrap();
        let back: NodeStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample());
    }
}
