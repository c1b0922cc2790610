//! A client from a kubeconfig, the way every part of housekeeper talks to the API server.

use std::path::Path;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client for the current context of the kubeconfig at `path`, with kube's own retry off:
/// kube 5 retries a 429 up to 15 times with backoff, which turns one eviction refused by a
/// PodDisruptionBudget into minutes of silence; housekeeper retries where it decides to.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| {
        format!(
            "reading the kubeconfig {}; write it with `hkctl install` or point \
             kubernetes.kubeconfig at one",
            path.display()
        )
    })?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("using the kubeconfig {}", path.display()))?;
    config.default_retry = false;
    Client::try_from(config).with_context(|| format!("a client for {}", path.display()))
}
