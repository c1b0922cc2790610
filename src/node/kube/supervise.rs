//! The coordinator candidate beside the agent: it runs while this node may lead and is
//! stopped (stepping down) before the node goes out of service. It uses the coordinator's
//! credential (`kubernetes.coordinator_kubeconfig`), the rest of hkd the node's own.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Inner, RETRY};
use crate::cluster::coordinator::Coordinator;

/// Run a coordinator candidate while this node may lead; stop it (stepping down) when not.
pub(super) async fn supervise_coordinator(inner: Arc<Inner>) {
    let Some(config) = inner.settings.coordinator.clone() else {
        return;
    };
    // The coordinator acts under its own credential, never the node's.
    let Some(client) = inner.coordinator_client.clone() else {
        tracing::warn!("no coordinator credential: not standing as coordinator");
        return;
    };
    let mut may_lead = inner.may_lead.subscribe();
    loop {
        if may_lead.wait_for(|m| *m).await.is_err() {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let coordinator = Coordinator::new(client.clone(), config.clone());
        if let Some((listen, fl)) = inner.settings.fleetlock.clone() {
            tokio::spawn(crate::cluster::fleetlock::server::serve_beside(
                client.clone(),
                listen,
                fl,
                coordinator.term(),
                stop_rx.clone(),
            ));
        }
        inner.coordinating.send_replace(true);
        inner.settings.liveness.start(super::COORDINATOR);
        let mut task = tokio::spawn(coordinator.run(stop_rx));
        let ended = tokio::select! {
            r = &mut task => Some(r),
            _ = may_lead.wait_for(|m| !*m) => None,
        };
        let result = match ended {
            Some(r) => r,
            None => {
                let _ = stop_tx.send(true);
                task.await
            }
        };
        inner.settings.liveness.stop(super::COORDINATOR);
        inner.coordinating.send_replace(false);
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("coordinator: {e:#}"),
            Err(e) => tracing::warn!("coordinator task: {e}"),
        }
        // It ended on its own (an error): a pause before standing again.
        if *may_lead.borrow() {
            tokio::time::sleep(RETRY).await;
        }
    }
}
