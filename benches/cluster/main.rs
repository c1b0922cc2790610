//! Cluster benchmarks against the real API server: figures printed beside their goals, not
//! tests. `tools/bench-cluster.sh` builds and runs this program.
//!
//! The API server is the one the kube-tests tier uses (`tests/support`: etcd, kube-apiserver
//! v1.20.2 and the disruption controller on 127.0.0.1, started once for this process and
//! stopped when it ends; `HOUSEKEEPER_TEST_KUBECONFIG` points it at another cluster). There is
//! no kubelet: `support::kubelet` registers the Nodes and runs pods Running and Ready, and a
//! watch here finishes evicted pods as a kubelet would.
//!
//! - `rollout`: (a) a rollout of 60 Nodes, maxUnavailable 6, against the ideal time, and
//!   (b) from a node reporting Done to the next grant. The coordinator is the production one;
//!   the node agents are *simulated*: each watches its own Node and answers its grant with the
//!   phase annotations, spending exactly its fixed work time between the grant and Done.
//! - `rollout-gated`: (a) and (b) again with reboot gates configured — one PromQL query and
//!   one alert filter, asked of a real Prometheus (Debian's package, started here on
//!   127.0.0.1, scraping itself) before every plan — to set beside `rollout`'s figures.
//! - `drain`: (c) the production `Drainer` against `kubectl drain` on the same Node and the
//!   same 100 pods, recreated before every run, in alternating order.
//! - `memory`: (d) the coordinator's peak resident memory (VmHWM) in a process of its own
//!   while it plans a rollout over 2000 Nodes of realistic size.
//!
//! Usage: `cluster all|rollout|drain|memory…` (`cargo bench` alone: all; no argument: none, so
//! `cargo test --all-targets` passes by here without starting a cluster). It runs itself as
//! `cluster coordinator-process KUBECONFIG NAMESPACE` and `cluster node-list-process
//! KUBECONFIG full|paged` for the memory benchmark.

#[path = "../../tests/support/mod.rs"]
mod support;

mod drain;
mod memory;
mod node_list;
mod rollout;

use std::time::Duration;

use anyhow::{bail, Result};

/// Which benchmarks the command line asks for: names, or `all`; `cargo bench` alone passes
/// just `--bench`, which means all. No argument at all is how `cargo test --all-targets` runs
/// a bench target in test mode: that asks for none (see [`main`]).
fn selected(args: &[String]) -> Result<Vec<&'static str>> {
    const ALL: [&str; 4] = ["rollout", "rollout-gated", "drain", "memory"];
    let mut out = Vec::new();
    for a in args.iter().filter(|a| !a.starts_with("--")) {
        if a == "all" {
            out = ALL.to_vec();
            continue;
        }
        match ALL.iter().find(|b| **b == a.as_str()) {
            Some(b) if !out.contains(b) => out.push(*b),
            Some(_) => {}
            None => bail!(
                "unknown benchmark {a:?}: choose from all, rollout, rollout-gated, drain, memory"
            ),
        }
    }
    if out.is_empty() && args.iter().any(|a| a == "--bench") {
        out = ALL.to_vec();
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(memory::CHILD_ARG) {
        return memory::coordinator_process(&args[1..]);
    }
    if args.first().map(String::as_str) == Some(node_list::CHILD_ARG) {
        return node_list::node_list_process(&args[1..]);
    }
    let which = selected(&args)?;
    if which.is_empty() {
        // A test run of all targets: minutes of benchmarks and a cluster are not what it wants.
        println!("usage: cluster all|rollout|drain|memory… (tools/bench-cluster.sh runs it)");
        return Ok(());
    }
    // The harness polls /readyz until the new server answers; kube's client logs every
    // refused poll as an error, which says nothing here.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = std::time::Instant::now();
        support::cluster::cluster().await?;
        println!(
            "API server ready ({:.1} s); load average {}",
            started.elapsed().as_secs_f64(),
            load()
        );
        let mut failed = Vec::new();
        for b in which {
            let r = match b {
                "rollout" => rollout::run(None).await,
                "rollout-gated" => rollout::run_gated().await,
                "drain" => drain::run().await,
                _ => memory::run().await,
            };
            if let Err(e) = r {
                eprintln!("benchmark {b} failed: {e:#}");
                failed.push(b);
            }
        }
        if !failed.is_empty() {
            bail!("benchmarks that could not run: {}", failed.join(", "));
        }
        Ok(())
    })
}

/// The 1, 5 and 15 minute load averages: the machine is shared, figures depend on it.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The q-quantile (nearest rank) of sorted durations.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// "met" or "MISSED", for a goal line.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}
