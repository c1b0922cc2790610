//! The follower: keeps this Node and the Updates in view through watches, decides on every
//! change ([`crate::node::follow::decide`]) and performs the decision — annotations first,
//! then hkd's cordon, then the grant's finish (kubeadm, uncordon, answer) — before it sends
//! the machine its events.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;

use super::kubeadm::kubeadm;
use super::{Inner, RETRY};
use crate::cluster::annotations::{CORDONED_BY_HKD, PROGRESS};
use crate::cluster::ledger;
use crate::cluster::update::Update;
use crate::image_ref::ImageRef;
use crate::node::follow::{self, answer_annotations, Answer, Decision, Finish};
use crate::node::machine::{Event, Machine, State};
use crate::node::watchdog::FOLLOWER_TICK;

/// Keep `inner.node` current: a watch on this one Node.
pub(super) async fn watch_node(inner: Arc<Inner>) {
    let config =
        watcher::Config::default().fields(&format!("metadata.name={}", inner.settings.node_name));
    let mut stream = watcher(inner.nodes(), config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            note_accepted(&inner);
        }
        match event {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                inner.node.send_replace(Some(n));
            }
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!("node {} was deleted", inner.settings.node_name);
                inner.node.send_replace(None);
            }
            Ok(watcher::Event::InitDone) => inner.mark_synced(&inner.node_synced),
            Ok(watcher::Event::Init) => {}
            Err(e) => {
                tracing::warn!("watching node {}: {e}", inner.settings.node_name);
                note_refusal(&inner, &e);
                continue;
            }
        }
    }
}

/// How often a node whose credential was refused tries its writes again.
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// The HTTP status of an API refusal inside a watch error, when it is one.
fn refusal_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
    .filter(|c| *c == 401 || *c == 403)
}

/// A 401 or 403 from a watch means this node's credential is refused (revoked, expired, or
/// its rights taken away): said once, clearly, and nothing new is taken up while it lasts.
fn note_refusal(inner: &Inner, e: &watcher::Error) {
    if let Some(code) = refusal_code(e) {
        refused(inner, code);
    }
}

/// The API server answered this node's request with `code` (401 or 403).
pub(super) fn refused(inner: &Inner, code: u16) {
    let why = format!(
        "the API server refuses this node's credential ({code}{}): it was revoked, expired \
         or lost its rights; hkd takes up nothing from the cluster until it is accepted again \
         — issue a new one with `hkctl install --node {}`, put it at kubernetes.kubeconfig \
         and restart hkd",
        if code == 401 {
            " Unauthorized"
        } else {
            " Forbidden"
        },
        inner.settings.node_name
    );
    inner.refused.send_if_modified(|r| {
        let new = r.is_none();
        if new {
            tracing::error!("{why}");
            *r = Some(why);
        }
        new
    });
}

/// A watch listed afresh: the credential is accepted (again). (Events of a watch opened before
/// a revocation keep coming; only a new list says the credential still works.)
fn note_accepted(inner: &Inner) {
    inner.refused.send_if_modified(|r| {
        let was = r.take().is_some();
        if was {
            tracing::info!("the API server accepts this node's credential again");
        }
        was
    });
}

/// Keep `inner.updates` current: a watch on the Updates of the namespace.
pub(super) async fn watch_updates(inner: Arc<Inner>) {
    let api: Api<Update> = Api::namespaced(inner.client.clone(), &inner.settings.namespace);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut fresh: Option<Vec<Update>> = None;
    while let Some(event) = stream.next().await {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            note_accepted(&inner);
        }
        match event {
            Ok(watcher::Event::Init) => fresh = Some(Vec::new()),
            Ok(watcher::Event::InitApply(u)) => fresh.get_or_insert_with(Vec::new).push(u),
            Ok(watcher::Event::InitDone) => {
                inner.updates.send_replace(fresh.take().unwrap_or_default());
                inner.mark_synced(&inner.updates_synced);
            }
            Ok(watcher::Event::Apply(u)) => {
                inner.updates.send_modify(|all| {
                    all.retain(|x| x.metadata.uid != u.metadata.uid);
                    all.push(u);
                });
            }
            Ok(watcher::Event::Delete(u)) => {
                inner
                    .updates
                    .send_modify(|all| all.retain(|x| x.metadata.uid != u.metadata.uid));
            }
            Err(e) => {
                tracing::warn!("watching Updates in {}: {e}", inner.settings.namespace);
                note_refusal(&inner, &e);
                continue;
            }
        }
    }
}

/// Decide on every change of the Node, the Updates or the machine, and do what was decided.
pub(super) async fn follow_loop(inner: Arc<Inner>, inbox: Sender<Event>) {
    let mut node_rx = inner.node.subscribe();
    let mut updates_rx = inner.updates.subscribe();
    let mut machine_rx = inner.machine.subscribe();
    // The events last sent, and the machine state they were sent for.
    let mut sent: Option<(Vec<Event>, Machine)> = None;
    let mut last_retry: Option<(ImageRef, Timestamp)> = None;
    // When the staging progress was last written to the Node (the decision paces it).
    let mut progress_written: Option<Timestamp> = None;
    // What was last said about grants and annotations not acted on: each line once.
    let mut told: Vec<String> = Vec::new();
    // Nothing is decided on a half view: an Update not listed yet is not a withdrawn one.
    if inner.synced.subscribe().wait_for(|s| *s).await.is_err() {
        return;
    }
    let mut refused_rx = inner.refused.subscribe();
    inner.settings.liveness.start(super::FOLLOWER);
    loop {
        inner.follower_beat.beat();
        if inner.settings.hang_follower {
            tracing::warn!("the follower hangs on purpose (HKD_TEST_HANG_FOLLOWER)");
            std::future::pending::<()>().await;
        }
        // A refused credential: nothing is decided or taken up (an upgrade under way goes on
        // in the machine) until a watch is answered again.
        if refused_rx.borrow_and_update().is_some() {
            match tokio::time::timeout(REFUSED_RETRY, refused_rx.changed()).await {
                Ok(Err(_)) => return,
                Ok(Ok(())) => continue,
                // Try again now and then: a write that goes through says it is accepted.
                Err(_) => {
                    inner.refused.send_replace(None);
                    refused_rx.borrow_and_update();
                    inner.follower_beat.beat();
                }
            }
        }
        let machine = machine_rx.borrow_and_update().clone();
        node_rx.borrow_and_update();
        updates_rx.borrow_and_update();
        let view = inner.node_view();
        let updates = inner.updates.borrow().clone();
        let booted = inner.booted_image();
        let progress = inner.staging_progress();
        let now = Timestamp::now();
        let decision = follow::decide(follow::Input {
            node: view.as_ref(),
            updates: &updates,
            machine: &machine,
            booted_image: booted.as_deref(),
            policy: inner.settings.policy,
            now,
            last_retry: last_retry.as_ref().map(|(t, at)| (t, *at)),
            retry_after: jiff::SignedDuration::try_from(inner.settings.stage_retry)
                .unwrap_or(jiff::SignedDuration::from_secs(300)),
            progress: progress.as_deref(),
            progress_written,
        });
        let mut problems: Vec<(&str, String)> = view
            .iter()
            .flat_map(|v| v.problems.iter().map(|p| ("AnnotationIgnored", p.clone())))
            .collect();
        let refused = ledger::grant_of(&inner.settings.node_name, &updates).1;
        problems.extend(
            refused
                .into_iter()
                .chain(decision.refused.clone())
                .map(|p| ("GrantRefused", p)),
        );
        for (reason, line) in problems.iter().filter(|(_, p)| !told.contains(p)) {
            tracing::warn!("{line}");
            inner.event("Warning", reason, line.clone()).await;
        }
        told = problems.into_iter().map(|(_, p)| p).collect();
        inner.may_lead.send_if_modified(|m| {
            let changed = *m != decision.may_lead;
            *m = decision.may_lead;
            changed
        });
        let mut wake = decision
            .wake_at
            .map(|t| Duration::try_from(now.duration_until(t)).unwrap_or(Duration::ZERO));
        match perform(&inner, &decision).await {
            Ok(()) => {
                if matches!(decision.annotations.get(PROGRESS), Some(Some(_))) {
                    progress_written = Some(now);
                }
                let fresh = sent
                    .as_ref()
                    .is_none_or(|(e, m)| *e != decision.events || *m != machine);
                if fresh && !decision.events.is_empty() {
                    for event in &decision.events {
                        if matches!(event, Event::TargetRequested { .. })
                            && matches!(
                                machine.state,
                                State::Failed { .. } | State::RolledBack { .. }
                            )
                        {
                            if let Some(target) = machine.state.target() {
                                last_retry = Some((target.clone(), now));
                            }
                        }
                        if inbox.send(event.clone()).is_err() {
                            return; // the agent is gone
                        }
                    }
                    sent = Some((decision.events.clone(), machine.clone()));
                }
            }
            Err(e) => {
                tracing::warn!("{e:#}");
                wake = Some(RETRY);
            }
        }
        // At least every FOLLOWER_TICK round again: the watchdog sees a follower that moves.
        let sleep = tokio::time::sleep(wake.map_or(FOLLOWER_TICK, |w| w.min(FOLLOWER_TICK)));
        tokio::select! {
            r = node_rx.changed() => if r.is_err() { return },
            r = updates_rx.changed() => if r.is_err() { return },
            r = machine_rx.changed() => if r.is_err() { return },
            _ = sleep => {}
        }
    }
}

/// The side effects of one decision, in order: annotations, cordon, finish.
pub(super) async fn perform(inner: &Inner, d: &Decision) -> Result<()> {
    if !d.annotations.is_empty() {
        inner.annotate(&d.annotations).await?;
    }
    if d.uncordon {
        inner.uncordon().await?;
    }
    if let Some(f) = &d.finish {
        finish(inner, f).await?;
    }
    Ok(())
}

/// kubeadm (for Done, when asked), hkd's cordon lifted, the answer written.
pub(super) async fn finish(inner: &Inner, f: &Finish) -> Result<()> {
    if f.answer == Answer::Done {
        if let Err(e) = kubeadm(inner, f).await {
            // The OS is fine, the Kubernetes upgrade is not: the node stays cordoned for the
            // admin to look at, and says so. The cordon is handed over (hkd's mark removed), so
            // hkd never lifts it itself.
            let reason = format!("{e:#}; the node stays cordoned until an admin uncordons it");
            inner
                .event("Warning", "KubeadmFailed", reason.clone())
                .await;
            let failed = Answer::Failed(reason);
            let mut annotations = answer_annotations(&f.grant, &failed, Timestamp::now());
            annotations.insert(CORDONED_BY_HKD, None);
            inner.annotate(&annotations).await?;
            return Ok(());
        }
    }
    if f.uncordon {
        inner.uncordon().await?;
    }
    inner
        .annotate(&answer_annotations(&f.grant, &f.answer, Timestamp::now()))
        .await?;
    let (kind, reason, message) = match &f.answer {
        Answer::Done => (
            "Normal",
            "UpgradeDone",
            format!("upgrade done under grant {}", f.grant),
        ),
        Answer::Failed(r) => ("Warning", "UpgradeFailed", format!("upgrade failed: {r}")),
    };
    inner.event(kind, reason, message).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::refusal_code;
    use kube::core::Status;
    use kube::runtime::watcher;

    fn status(code: u16) -> Box<Status> {
        Box::new(Status {
            code,
            message: "refused".into(),
            reason: String::new(),
            status: None,
            metadata: None,
            details: None,
        })
    }

    #[test]
    fn only_401_and_403_count_as_a_refused_credential() {
        for (code, want) in [(401, Some(401)), (403, Some(403)), (404, None), (500, None)] {
            let list = watcher::Error::InitialListFailed(kube::Error::Api(status(code)));
            assert_eq!(refusal_code(&list), want, "{code} listing");
            let start = watcher::Error::WatchStartFailed(kube::Error::Api(status(code)));
            assert_eq!(refusal_code(&start), want, "{code} starting");
            assert_eq!(
                refusal_code(&watcher::Error::WatchError(status(code))),
                want,
                "{code} watching"
            );
        }
        assert_eq!(refusal_code(&watcher::Error::NoResourceVersion), None);
    }
}
