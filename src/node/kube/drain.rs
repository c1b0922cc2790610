//! The drain the upgrade machine asks for: the coordinator stepped down, hkd's cordon, then
//! [`crate::cluster::kube_drain`] under the granting Update's policy, retried through API
//! outages until the policy's timeout and stopped by an abort with roll back.

use std::time::Duration;

use anyhow::Result;

use super::Inner;
use crate::cluster::update::InFlight;
use crate::node::agent::DrainError;

/// How long the drain waits for the first view of this Node and the Updates.
pub(super) const FIRST_VIEW_WAIT: Duration = Duration::from_secs(120);

/// How long the drain waits for this node's coordinator to step down.
pub(super) const STEP_DOWN_WAIT: Duration = Duration::from_secs(30);

/// Cordon and drain for the machine: wait for the first view of the cluster (after a restart
/// the machine asks at once), step the coordinator down, cordon, drain under the granting
/// Update's policy; stop when the rollout is aborted with roll back. An error talking to the
/// API server (an outage, a restarting server) is not the drain's verdict: cordon and drain
/// are idempotent and are tried again, with a growing pause, until the policy's timeout.
pub(super) async fn drain(inner: &Inner) -> Result<(), DrainError> {
    // The watchdog watches the drain while it runs (its loops beat through the tuning).
    struct Running<'a>(&'a Inner);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.settings.liveness.stop(super::DRAIN);
        }
    }
    inner.settings.liveness.start(super::DRAIN);
    let _running = Running(inner);
    drain_watched(inner).await
}

async fn drain_watched(inner: &Inner) -> Result<(), DrainError> {
    let node = inner.settings.node_name.clone();
    let mut synced = inner.synced.subscribe();
    let first_view = synced.wait_for(|s| *s);
    if tokio::time::timeout(FIRST_VIEW_WAIT, first_view)
        .await
        .is_err()
    {
        return Err(DrainError::Unreachable(format!(
            "no answer from the API server about node {node} within {FIRST_VIEW_WAIT:?}"
        )));
    }
    let Some((grant, update)) = inner.granting_update() else {
        return Err(DrainError::Withdrawn(format!(
            "node {node} holds no grant of an existing Update any more"
        )));
    };
    let uid = grant.uid.clone();
    if inner.aborted(&uid) {
        return Err(DrainError::Withdrawn(
            "the rollout was aborted before this node was drained".into(),
        ));
    }
    inner.may_lead.send_replace(false);
    let mut coordinating = inner.coordinating.subscribe();
    let stepped_down = coordinating.wait_for(|c| !*c);
    if tokio::time::timeout(STEP_DOWN_WAIT, stepped_down)
        .await
        .is_err()
    {
        return Err(DrainError::Unreachable(
            "this node's coordinator did not step down; not draining under it".into(),
        ));
    }
    let policy = update.spec.effective_drain();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(policy.timeout_seconds.max(1) as u64);
    // Each wait ends by dropping what `wait_for` returns: that is a read guard on the shared
    // value, and one held while the branch below awaits the API server would block the
    // watch task's write to it — and with it the runtime the request needs (a deadlock).
    let mut updates = inner.updates.subscribe();
    let abort = async {
        let _ = updates
            .wait_for(|all| {
                all.iter().any(|u| {
                    u.metadata.uid.as_deref() == Some(uid.as_str())
                        && u.spec
                            .abort
                            .as_ref()
                            .is_some_and(|a| a.in_flight == InFlight::RollBack)
                })
            })
            .await
            .map(drop);
    };
    // A Node deleted from the cluster is not drained: there is nothing left to cordon, and
    // waiting out the drain timeout would only hold the machine.
    let mut node_rx = inner.node.subscribe();
    let deleted = async {
        let _ = node_rx.wait_for(Option::is_none).await.map(drop);
    };
    let attempts = async {
        let mut pause = Duration::from_millis(500);
        loop {
            inner.settings.tuning.heartbeat.beat();
            match cordon_and_drain(inner, &grant, &policy).await {
                Ok(report) => return Ok(report),
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!("{e:#}; trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(DrainError::Unreachable(format!("{e:#}"))),
            }
        }
    };
    let report = tokio::select! {
        r = attempts => r?,
        _ = deleted => {
            return Err(DrainError::Withdrawn(format!(
                "node {node} was deleted from the cluster; not draining it"
            )));
        }
        _ = abort => {
            if let Err(e) = inner.uncordon().await {
                tracing::warn!("{e:#}");
            }
            return Err(DrainError::Withdrawn(
                "the rollout was aborted while this node drained".into(),
            ));
        }
    };
    let summary = report.summary();
    if report.outcome.may_reboot() {
        inner.event("Normal", "Drained", summary).await;
        Ok(())
    } else {
        inner.event("Warning", "DrainFailed", summary.clone()).await;
        Err(DrainError::Blocked {
            summary,
            pods: report
                .remaining
                .iter()
                .map(|(p, _)| p.to_string())
                .collect(),
        })
    }
}

/// One attempt: cordon (remembering that hkd did), then drain.
pub(super) async fn cordon_and_drain(
    inner: &Inner,
    grant: &crate::cluster::Grant,
    policy: &crate::cluster::update::DrainPolicy,
) -> Result<crate::cluster::kube_drain::DrainReport> {
    let node = &inner.settings.node_name;
    let drainer = inner.drainer();
    let ours = drainer.cordon(node, &grant.to_string()).await?;
    inner
        .event(
            "Normal",
            "Draining",
            if ours {
                format!("hkd cordoned the node under grant {grant} and drains it")
            } else {
                "the node was already cordoned by someone else; hkd drains it and leaves the cordon theirs".into()
            },
        )
        .await;
    drainer.drain(node, policy).await
}
