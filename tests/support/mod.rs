//! Support for integration tests against a real Kubernetes API server.
//!
//! Include it with `mod support;` from a test file of the `kube-tests` feature. A test starts
//! with [`TestEnv::new`], which starts the run's cluster on first use (or joins it) and gives the
//! test an admin client and a namespace of its own:
//!
//! - [`local`]: etcd + kube-apiserver v1.20.2 + kube-controller-manager (disruption controller
//!   only) on 127.0.0.1, one cluster per test run, stopped by a watchdog ([`process`]) when the
//!   run ends;
//! - [`cluster`]: which cluster (`HOUSEKEEPER_TEST_KUBECONFIG` points the tests at another one),
//!   clients without kube's own 429 retry, the per-test namespace, a least-privilege client;
//! - [`kubelet`]: the kubelet stand-in (Nodes, pods Running and Ready, finishing deleted pods);
//! - [`eviction`]: Eviction and PodDisruptionBudget at the version the server serves;
//! - [`crd`]: a small custom resource with a schema and a status subresource.
//!
//! A missing component (binaries not built, etcd or openssl not installed) fails the test with
//! a message naming the fix; nothing is skipped.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod crd;
pub mod eviction;
pub mod kubelet;
pub mod local;
pub mod process;
pub mod rollout_view;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub use cluster::TestEnv;
pub use kubelet::{KubeletStandIn, NodeRole};

/// How often [`wait_for`] asks again: quick against the server's reaction times (the
/// disruption controller updates a PDB in ~0.2 s), light on a shared 2-core machine.
const POLL: Duration = Duration::from_millis(100);

/// Ask `check` until it says true; fail after `timeout`, naming `what` and the last error.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() > deadline {
            match last {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
