//! The kubeadm step of a finished grant: `kubeadm upgrade apply|node` when the Update sets
//! `kubeVersion`, then the kubelet restart, each run through [`crate::sys::command`] and
//! killed past its time limit.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use super::Inner;
use crate::node::follow::{self, Finish, KubeadmStep};
use crate::sys::command::{Cmd, CommandError};

/// `kubeadm upgrade apply` pulls the control plane's images and waits for each static pod to
/// come back (kubeadm's own wait is 5 minutes a component): half an hour ends a stuck one
/// without cutting a slow one short. `upgrade node` does less and fits in it too.
pub(super) const KUBEADM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `systemctl restart kubelet.service` waits for the unit's stop and start jobs; systemd's
/// own default stop timeout is 90 seconds.
pub(super) const KUBELET_RESTART_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The kubeadm step the Update asks for, then the kubelet restart.
pub(super) async fn kubeadm(inner: &Inner, f: &Finish) -> Result<()> {
    let server = match inner.client.apiserver_version().await {
        Ok(v) => Some(v.git_version),
        Err(e) => {
            tracing::warn!("reading the API server's version: {e}");
            None
        }
    };
    let Some(step) = follow::kubeadm_step(
        f.kube_version.as_deref(),
        f.control_plane,
        server.as_deref(),
    ) else {
        return Ok(());
    };
    let kubeadm = inner.settings.kubeadm.display().to_string();
    let mut argv = vec![kubeadm.clone(), "upgrade".to_owned()];
    match &step {
        KubeadmStep::Apply(v) => argv.extend(["apply".into(), "--yes".into(), v.clone()]),
        KubeadmStep::Node => argv.push("node".into()),
    }
    inner
        .event("Normal", "Kubeadm", format!("running {}", argv.join(" ")))
        .await;
    run(argv, KUBEADM_TIMEOUT).await?;
    let restart = inner.settings.kubelet_restart.clone();
    if !restart.is_empty() {
        run(restart, KUBELET_RESTART_TIMEOUT).await?;
    }
    Ok(())
}

/// Run a command to its end off the runtime's threads, killed past `timeout`; its output goes
/// to the log. A failure reads `<argv> failed (<status>): <stderr>`, the reason the Node's
/// answer and the Event carry.
pub(super) async fn run(argv: Vec<String>, timeout: Duration) -> Result<()> {
    let shown = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let cmd = Cmd::new(program).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.run_with_timeout(timeout))
        .await
        .context("the command's thread")?;
    match out {
        Ok(stdout) => {
            if !stdout.trim().is_empty() {
                tracing::info!("{shown}: {}", stdout.trim());
            }
            Ok(())
        }
        Err(CommandError::Failed { status, stderr, .. }) => {
            Err(anyhow!("{shown} failed ({status}): {stderr}"))
        }
        Err(e) => Err(e.into()),
    }
}
