//! hkd as a FleetLock client: a standalone node (no kubeconfig) configured with
//! `fleetlock.url` takes a reboot lock from a FleetLock server before it reboots and gives it
//! back once its health gate passed — the same protocol Zincati speaks, so the coordinator's
//! server (`cluster::fleetlock`) or any other FleetLock server can keep several such nodes
//! from rebooting together.
//!
//! It is the node's [`ClusterSide`]: it grants itself once staged (staging never waits for
//! the server), its "drain" is taking the lock, and its report of how the upgrade ended gives
//! the lock back. The machine (`node::machine`) stays as it is: pure, unaware of FleetLock.
//!
//! Guarantees:
//! - no reboot without the lock: `drain` returns only once `pre-reboot` answered 200; a
//!   server that is down, refuses, or says "no slot" holds the node in `draining` (staged,
//!   not rebooted), asking again with a capped exponential backoff, and `hkd status` says why
//!   (`fleetLock.waiting`); a restart asks again (locking is recursive on the server);
//! - the lock is given back after the upgrade ends (`Done` once the health gate passed, or
//!   failed, or rolled back: the node is up either way), retried with the same backoff on a
//!   thread of its own so the agent is not held; on start, a node at rest gives back any lock
//!   it may still hold (the protocol's `UnlockIfHeld`), as Zincati does.
//!
//! Who it talks to: the URL in its configuration, over HTTP(S), each request bounded by
//! [`REQUEST_TIMEOUT`]; the answer is read up to 64 KiB. A server that lies can hold this
//! node's reboot (by refusing) or let it reboot (by answering 200): it decides when, never
//! what — staging, the health gate and rollback are the node's own.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::agent::{ClusterSide, DrainError};
use super::machine::{self, Event, Machine, UpgradeOutcome};
use super::status::{FleetLockStatus, NodeStatus};
use crate::cluster::fleetlock::{id, wire::Op};

/// The longest one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait between attempts: from `first`, doubled up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_secs(2),
            max: Duration::from_secs(60),
        }
    }
}

/// The FleetLock client; cheap to clone (one state shared by every clone).
#[derive(Clone)]
pub struct FleetLockClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    body: String,
    backoff: Backoff,
    agent: ureq::Agent,
    state: Mutex<FleetLockStatus>,
    /// The agent's published status, to show a wait while `drain` blocks.
    shared: OnceLock<Arc<Mutex<NodeStatus>>>,
}

/// This machine's FleetLock id: Zincati's, from `<root>/etc/machine-id`.
pub fn machine_id(root: &Path) -> Result<String> {
    let path = root.join("etc/machine-id");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} for the FleetLock id", path.display()))?;
    id::zincati_id(text.trim()).ok_or_else(|| {
        anyhow!(
            "{}: {:?} is not a machine-id (32 hex digits); systemd-machine-id-setup writes one",
            path.display(),
            text.trim()
        )
    })
}

impl FleetLockClient {
    /// A client of the server at `url` (its base: the endpoints are `v1/…` under it).
    pub fn new(url: &str, group: &str, id: &str, backoff: Backoff) -> Result<FleetLockClient> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(anyhow!(
                "fleetlock.url {url:?} is not an http:// or https:// URL"
            ));
        }
        let body = serde_json::json!({"client_params": {"id": id, "group": group}}).to_string();
        // The server checks the group too; a malformed one would be refused on every try.
        crate::cluster::fleetlock::wire::parse_body(Op::PreReboot, body.as_bytes())
            .map_err(|e| anyhow!("fleetlock.group {group:?}: {}", e.value))?;
        Ok(FleetLockClient {
            inner: Arc::new(Inner {
                base: url.trim_end_matches('/').to_owned(),
                body,
                backoff,
                agent: ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build(),
                state: Mutex::new(FleetLockStatus {
                    server: url.to_owned(),
                    group: group.to_owned(),
                    id: id.to_owned(),
                    held: false,
                    waiting: None,
                }),
                shared: OnceLock::new(),
            }),
        })
    }

    /// Show waits in the agent's published status from now on.
    pub fn attach(&self, shared: Arc<Mutex<NodeStatus>>) {
        let _ = self.inner.shared.set(shared);
    }

    /// On start: a machine not between its lock and its health gate holds no lock it needs;
    /// give back any it may still hold.
    pub fn release_if_at_rest(&self, machine: &Machine) {
        use machine::Phase as P;
        if matches!(
            machine.state.phase(),
            P::Idle | P::Staging | P::Staged | P::Done | P::RolledBack | P::Failed
        ) {
            self.release_in_background();
        }
    }

    fn set(&self, f: impl FnOnce(&mut FleetLockStatus)) {
        let snapshot = {
            let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s);
            s.clone()
        };
        if let Some(shared) = self.inner.shared.get() {
            if let Ok(mut status) = shared.lock() {
                status.fleet_lock = Some(snapshot);
            }
        }
    }

    /// One request: `Ok` on 200, else what the server said (or why it was not reached).
    fn call(&self, op: Op) -> Result<(), String> {
        let url = format!("{}{}", self.inner.base, op.path());
        let answer = self
            .inner
            .agent
            .post(&url)
            .set("fleet-lock-protocol", "true")
            .set("content-type", "application/json")
            .send_string(&self.inner.body);
        match answer {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, resp)) => {
                let mut text = String::new();
                let _ = resp.into_reader().take(64 << 10).read_to_string(&mut text);
                let why = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        Some(format!("{}: {}", v["kind"].as_str()?, v["value"].as_str()?))
                    })
                    .unwrap_or_else(|| format!("HTTP {code}"));
                Err(format!("{url}: {why}"))
            }
            // The transport error names the URL itself.
            Err(ureq::Error::Transport(t)) => Err(t.to_string()),
        }
    }

    /// Ask until the server answers 200, with the backoff; each new reason is logged once.
    fn until_ok(&self, op: Op) {
        let mut pause = self.inner.backoff.first;
        let mut last: Option<String> = None;
        loop {
            match self.call(op) {
                Ok(()) => {
                    let held = op == Op::PreReboot;
                    self.set(|s| {
                        s.held = held;
                        s.waiting = None;
                    });
                    tracing::info!(
                        "FleetLock {}: lock {}",
                        op.path(),
                        if held { "taken" } else { "given back" }
                    );
                    return;
                }
                Err(why) => {
                    if last.as_deref() != Some(why.as_str()) {
                        tracing::warn!("FleetLock {}: {why}; asking again", op.path());
                    }
                    self.set(|s| s.waiting = Some(why.clone()));
                    last = Some(why);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(self.inner.backoff.max);
                }
            }
        }
    }

    fn release_in_background(&self) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("fleetlock-release".into())
            .spawn(move || me.until_ok(Op::SteadyState));
        if let Err(e) = spawned {
            tracing::warn!("FleetLock: starting the release: {e}");
        }
    }
}

impl ClusterSide for FleetLockClient {
    /// Take the lock: returns once the server granted it (never an error: a server that is
    /// down holds the reboot).
    fn drain(&self) -> Result<(), DrainError> {
        self.until_ok(Op::PreReboot);
        Ok(())
    }

    fn report(&self, _outcome: &UpgradeOutcome, _machine: &Machine) {
        self.release_in_background();
    }

    fn after_step(&self, machine: &Machine) -> Vec<Event> {
        match machine.state {
            machine::State::Staged { .. } => vec![Event::Granted],
            _ => Vec::new(),
        }
    }

    fn fleet_lock(&self) -> Option<FleetLockStatus> {
        Some(
            self.inner
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_or_group_is_refused_with_the_setting() {
        let e = FleetLockClient::new("ftp://x", "default", "a", Backoff::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("fleetlock.url"), "{e}");
        let e = FleetLockClient::new("http://x", "a/b", "a", Backoff::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("fleetlock.group"), "{e}");
    }

    #[test]
    fn the_id_is_zincatis_from_the_machine_id_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/machine-id"),
            "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        )
        .unwrap();
        assert_eq!(
            machine_id(root.path()).unwrap(),
            "975228d46dc94622b9bbe16671e2b58d"
        );
        std::fs::write(root.path().join("etc/machine-id"), "uninitialized\n").unwrap();
        assert!(machine_id(root.path()).is_err());
    }
}
