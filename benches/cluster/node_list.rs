//! Where the coordinator's memory goes: one read of all Nodes, in a fresh process of its own,
//! two ways.
//!
//! - `full`: one `list` of all Nodes at once into `Vec<Node>`, then a `NodeView` of each
//!   (kube reads the whole response into memory and copies it before parsing it);
//! - `paged`: what the coordinator does on every wake-up — its own paged read
//!   (`coordinator::node_views`), each page turned into `NodeView`s before the next is read.
//!
//! Printed: the process's VmHWM before and after the read, in kB, on one line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use housekeeper::cluster::annotations::NodeView;
use housekeeper::cluster::coordinator;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::Api;

/// The argument that makes this program the Node-list process.
pub const CHILD_ARG: &str = "node-list-process";

/// `node-list-process KUBECONFIG full|paged`.
pub fn node_list_process(args: &[String]) -> Result<()> {
    let [kubeconfig, mode] = args else {
        bail!("usage: {CHILD_ARG} KUBECONFIG full|paged");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client =
            crate::support::cluster::client_from_kubeconfig_file(Path::new(kubeconfig)).await?;
        let api: Api<Node> = Api::all(client);
        // The connection is set up before the first figure.
        api.list(&ListParams::default().limit(1)).await?;
        let before = hwm_kb()?;
        let views = match mode.as_str() {
            "full" => {
                let nodes = api.list(&ListParams::default()).await?.items;
                nodes.iter().map(NodeView::from_node).collect::<Vec<_>>()
            }
            "paged" => coordinator::node_views(&api).await?,
            other => bail!("unknown mode {other:?}: full or paged"),
        };
        println!("{before} {} {}", hwm_kb()?, views.len());
        Ok(())
    })
}

fn hwm_kb() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// Run the Node-list process in `mode`; returns (VmHWM before, after) in MiB and the Nodes read.
pub fn measure(kubeconfig: &Path, mode: &str) -> Result<(f64, f64, usize)> {
    let exe = std::env::current_exe().context("finding this program")?;
    let out = std::process::Command::new(exe)
        .arg(CHILD_ARG)
        .arg(kubeconfig)
        .arg(mode)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the Node-list process")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match f[..] {
        [before, after, n] if out.status.success() => {
            Ok((before as f64 / 1024.0, after as f64 / 1024.0, n as usize))
        }
        _ => bail!(
            "the Node-list process ({mode}) said {text:?} and ended with {}",
            out.status
        ),
    }
}
