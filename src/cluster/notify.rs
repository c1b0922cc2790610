//! Rollout notifications: a JSON POST to `spec.notifications.webhookURL` on rollout events
//! (started, node failed, halted, paused, complete), beside the Events, which stay.
//!
//! [`events`] decides which events a status change makes (pure); [`Notifier`] delivers them
//! from a thread of its own: [`Notifier::send`] never waits (a full queue drops the
//! notification and says so in the log), each POST has [`TIMEOUT`], a failed one (no answer,
//! or not 2xx) is tried again after 1, 2 and 4 s ([`BACKOFF`]) and then given up, logged.
//! So a webhook that is down, slow or refuses never holds up the coordinator.
//!
//! Who can reach it: the coordinator POSTs to the URL the Update names — whoever may write
//! Updates chooses it, and it learns the rollout's progress (names of nodes and the image),
//! nothing else. A receiver that answers twice, or that receives one twice (a retry after an
//! answer lost on the way), gets the same `id`: receivers deduplicate on it.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::plan::{COMPLETE, HALTED, PAUSED};
use super::update::UpdateStatus;

/// How long one POST may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The waits before the second, third and fourth try.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// Notifications waiting for delivery at most; more are dropped (logged).
const QUEUE: usize = 256;

/// Where the notifications of an Update go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// An `http://` or `https://` URL that takes a JSON POST.
    #[serde(rename = "webhookURL")]
    #[schemars(regex(pattern = r"^https?://[^/\s]+(/\S*)?$"))]
    pub webhook_url: String,
}

/// Why `notifications` cannot be used, one line naming the field.
pub fn check(n: &Notifications) -> Option<String> {
    let rest = n
        .webhook_url
        .strip_prefix("http://")
        .or_else(|| n.webhook_url.strip_prefix("https://"));
    rest.is_none_or(|r| {
        r.split('/').next().unwrap_or("").is_empty() || r.contains(char::is_whitespace)
    })
    .then(|| {
        format!(
            "notifications.webhookURL {:?} is not an http:// or https:// URL with a host",
            n.webhook_url
        )
    })
}

/// One rollout event, as POSTed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Always `housekeeper.io/v1alpha1`.
    pub api_version: String,
    /// Always `RolloutNotification`.
    pub kind: String,
    /// The same for every delivery of one event: `<Update uid>/<generation>/<event>[/<node>]`.
    pub id: String,
    /// `Started`, `NodeFailed`, `Halted`, `Paused`, `Complete`.
    pub event: String,
    pub namespace: String,
    pub update: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
    pub time: String,
}

/// The events of a status change: what `next` says that `prev` did not. `granted` are the
/// nodes granted by the write that made `next`.
pub fn events(
    prev: &UpdateStatus,
    next: &UpdateStatus,
    granted: &[String],
) -> Vec<(&'static str, Option<String>, String)> {
    let mut out = Vec::new();
    let generation = next.target_generation.unwrap_or(0);
    let granted_before = prev
        .grants
        .values()
        .any(|g| g.generation >= generation && prev.target_generation == next.target_generation);
    if !granted.is_empty() && !granted_before {
        out.push((
            "Started",
            None,
            format!("first grant(s): {}", granted.join(", ")),
        ));
    }
    let failed = |s: &UpdateStatus| -> Vec<(String, String)> {
        s.nodes
            .iter()
            .filter(|n| n.phase == "Failed")
            .map(|n| (n.name.clone(), n.reason.clone()))
            .collect()
    };
    let before = failed(prev);
    for (node, reason) in failed(next) {
        if !before.iter().any(|(n, _)| *n == node) {
            out.push((
                "NodeFailed",
                Some(node.clone()),
                format!("node {node} failed: {reason}"),
            ));
        }
    }
    let state = next.state.as_deref();
    if state != prev.state.as_deref() {
        let message = next
            .conditions
            .iter()
            .find(|c| Some(c.type_.as_str()) == state && !c.message.is_empty())
            .map(|c| c.message.clone())
            .unwrap_or_default();
        match state {
            Some(HALTED) => out.push(("Halted", None, message)),
            Some(PAUSED) => out.push(("Paused", None, "paused: no new grants".into())),
            Some(COMPLETE) => out.push(("Complete", None, message)),
            _ => {}
        }
    }
    out
}

/// The delivery thread's end of the queue.
#[derive(Clone, Debug)]
pub struct Notifier {
    queue: SyncSender<(String, Notification)>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::start(TIMEOUT, BACKOFF.to_vec())
    }
}

impl Notifier {
    /// Start the delivery thread (it ends when every `Notifier` is dropped).
    pub fn start(timeout: Duration, backoff: Vec<Duration>) -> Notifier {
        let (queue, rx) = sync_channel::<(String, Notification)>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("notify".into())
            .spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(timeout)
                    .redirects(0)
                    .build();
                for (url, n) in rx {
                    deliver(&agent, &url, &n, &backoff);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("notifications: no delivery thread ({e}); none will be sent");
        }
        Notifier { queue }
    }

    /// Queue one notification for `url`; never waits.
    pub fn send(&self, url: &str, n: Notification) {
        match self.queue.try_send((url.to_owned(), n)) {
            Ok(()) => {}
            Err(TrySendError::Full((_, n))) => {
                tracing::warn!(
                    "notifications: queue full, dropped {} ({})",
                    n.id,
                    n.message
                )
            }
            Err(TrySendError::Disconnected((_, n))) => {
                tracing::warn!("notifications: no delivery thread, dropped {}", n.id)
            }
        }
    }
}

/// POST `n` until a 2xx answer, at most once more per `backoff` entry.
fn deliver(agent: &ureq::Agent, url: &str, n: &Notification, backoff: &[Duration]) {
    let body = serde_json::to_string(n).expect("a notification serialises");
    for attempt in 0..=backoff.len() {
        let result = agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(&body);
        let why = match result {
            Ok(_) => {
                tracing::debug!("notification {} delivered to {url}", n.id);
                return;
            }
            Err(ureq::Error::Status(code, _)) => format!("HTTP {code}"),
            Err(ureq::Error::Transport(t)) => t.to_string(),
        };
        match backoff.get(attempt) {
            Some(wait) => {
                tracing::info!(
                    "notification {} to {url}: {why}; trying again in {wait:?}",
                    n.id
                );
                std::thread::sleep(*wait);
            }
            None => tracing::warn!(
                "notification {} to {url}: {why}; given up after {} tries",
                n.id,
                backoff.len() + 1
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::update::{GrantRecord, NodeSummary, UpdateCondition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(state: &str) -> UpdateStatus {
        UpdateStatus {
            state: Some(state.into()),
            target_generation: Some(1),
            ..Default::default()
        }
    }

    fn t() -> Time {
        Time("2024-03-02T10:00:00Z".parse().unwrap())
    }

    #[test]
    fn started_once_failures_once_and_state_changes() {
        let prev = status("Waiting");
        let mut next = status("Progressing");
        let e = events(&prev, &next, &["w-1".into()]);
        assert_eq!(e, vec![("Started", None, "first grant(s): w-1".into())]);
        // Later grants are not a start.
        let mut prev = next.clone();
        prev.grants.insert(
            "w-1".into(),
            GrantRecord {
                generation: 1,
                term: 1,
                granted_at: t(),
                source: None,
            },
        );
        assert!(events(&prev, &next, &["w-2".into()]).is_empty());
        next.nodes.push(NodeSummary {
            name: "w-1".into(),
            phase: "Failed".into(),
            reason: "health gate".into(),
            since: None,
        });
        next.state = Some(HALTED.into());
        next.conditions.push(UpdateCondition {
            type_: HALTED.into(),
            status: "True".into(),
            reason: "FailureBudgetExceeded".into(),
            message: "1 node(s) failed".into(),
            last_transition_time: t(),
        });
        let e = events(&prev, &next, &[]);
        assert_eq!(
            e,
            vec![
                (
                    "NodeFailed",
                    Some("w-1".into()),
                    "node w-1 failed: health gate".into()
                ),
                ("Halted", None, "1 node(s) failed".into()),
            ]
        );
        // The same status again: nothing new.
        assert!(events(&next, &next, &[]).is_empty());
    }

    #[test]
    fn send_never_waits_for_a_webhook_that_hangs() {
        // A receiver that accepts and never answers: every POST waits for its timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", silent.local_addr().unwrap());
        let n = Notifier::start(Duration::from_secs(2), vec![Duration::from_secs(1)]);
        let note = Notification {
            api_version: "housekeeper.io/v1alpha1".into(),
            kind: "RolloutNotification".into(),
            id: "u/1/Started".into(),
            event: "Started".into(),
            namespace: "ns".into(),
            update: "os".into(),
            target: "img".into(),
            node: None,
            message: "first grant(s): w-1".into(),
            time: "2024-03-02T10:00:00Z".into(),
        };
        let started = std::time::Instant::now();
        // More than the queue holds: the rest are dropped, none waited for.
        for _ in 0..QUEUE + 10 {
            n.send(&url, note.clone());
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "send waited {:?}",
            started.elapsed()
        );
        drop(silent);
    }

    #[test]
    fn check_names_the_field() {
        let bad = Notifications {
            webhook_url: "hooks.example.com/x".into(),
        };
        assert!(check(&bad).unwrap().starts_with("notifications.webhookURL"));
        let ok = Notifications {
            webhook_url: "https://hooks.example.com/x".into(),
        };
        assert_eq!(check(&ok), None);
    }
}
