//! `hkctl`: the admin's control-plane tool's command line. The work is in [`crate::ctl`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_verbosity_flag::{InfoLevel, Verbosity};

use super::{DocCommand, Exit, EXIT_CODES_HELP};
use crate::cluster::update::{ImagePolicy, InFlight};
use crate::cluster::window::Window;
use crate::ctl::{self, install, status, steer, upgrade};

#[derive(Debug, Parser)]
#[command(
    name = "hkctl",
    version,
    about = "Housekeeper control: install the cluster side and steer OS rollouts",
    after_long_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub verbosity: Verbosity<InfoLevel>,

    /// The kubeconfig to use (default: $KUBECONFIG, else ~/.kube/config)
    #[arg(long, global = true, value_name = "FILE", display_order = 900)]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current context)
    #[arg(long, global = true, value_name = "NAME", display_order = 901)]
    pub context: Option<String>,

    /// The namespace of the Updates
    #[arg(short, long, global = true, value_name = "NS", display_order = 902)]
    pub namespace: Option<String>,

    /// The Update to act on (default: the only one in the namespace)
    #[arg(
        long = "update",
        global = true,
        value_name = "NAME",
        env = "HKCTL_UPDATE",
        display_order = 903
    )]
    pub update: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install the CRD, namespace and RBAC; issue the coordinator's and each node's credential
    Install(InstallArgs),
    /// Revoke one node's credential (its ServiceAccount and role); other nodes keep theirs
    Revoke(RevokeArgs),
    /// Remove what install applied (refused while a rollout is in progress)
    Uninstall(UninstallArgs),
    /// Start a rollout to an image, or change the running one
    Upgrade(Box<UpgradeArgs>),
    /// Show the rollout: target, conditions, progress, one row per node
    Status(StatusArgs),
    /// Stop new grants; nodes already granted finish
    Pause,
    /// Let the coordinator grant again after a pause
    Resume,
    /// Stop the rollout for good; nodes in flight finish or withdraw
    Abort(AbortArgs),
    /// One node: its annotations, and its history from Events
    Node(NodeArgs),
    #[command(flatten)]
    Doc(DocCommand),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print the manifests instead of applying them (for GitOps)
    #[arg(long)]
    pub dry_run: bool,
    /// The format of --dry-run's manifests
    #[arg(short, long, value_enum, default_value_t = install::Format::Yaml)]
    pub output: install::Format,
    /// Where to write the kubeconfigs (nodes/NODE.kubeconfig, coordinator.kubeconfig)
    #[arg(long, value_name = "DIR", default_value = "hkd-credentials")]
    pub credentials_dir: PathBuf,
    /// Write no kubeconfig (the objects are still applied)
    #[arg(long, conflicts_with = "credentials_dir")]
    pub no_credentials: bool,
    /// Issue a credential for this Node only, repeatable (default: every Node)
    #[arg(long = "node", value_name = "NAME", value_parser = parse_node_name)]
    pub nodes: Vec<String>,
    /// The API server URL as the nodes reach it (default: this kubeconfig's)
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// How long each token is valid
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// Issue a new token even if the kubeconfig's is still good
    #[arg(long)]
    pub rotate_token: bool,
    /// Let the coordinator cordon and drain FleetLock (Zincati) nodes: patch Nodes, evict pods
    #[arg(long)]
    pub fleetlock: bool,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The Node whose credential is revoked
    #[arg(value_parser = parse_node_name)]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Uninstall even while a rollout is in progress
    #[arg(long)]
    pub force: bool,
    /// Say what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The OS image: ostree-image-signed:docker://REGISTRY/NAME:TAG, an OSTree [REMOTE:]REF…
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Also upgrade Kubernetes to this version with kubeadm (v1.29.1)
    #[arg(long, value_name = "V")]
    pub kube_version: Option<String>,
    /// How many nodes may be out of service at once
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_unavailable: Option<i32>,
    /// How many nodes may fail before the rollout halts
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_failed: Option<i32>,
    /// Which nodes: a label selector (pool=a,zone in (x,y),!legacy)
    #[arg(long, value_name = "SELECTOR", value_parser = parse_selector)]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// At most N nodes out of service per zone (per value of --topology-key)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_unavailable_per_zone: Option<i32>,
    /// At most N zones with a node out of service at once (1: one zone at a time)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_unavailable_zones: Option<i32>,
    /// The node label the zone limits count by [default: topology.kubernetes.io/zone]
    #[arg(long, value_name = "KEY")]
    pub topology_key: Option<String>,
    /// Hold each node while a pod matching this selector runs on it (app=backup)
    #[arg(long, value_name = "SELECTOR", value_parser = parse_selector)]
    pub blocking_pod_selector:
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Reboot gates: the Prometheus to ask before each grant (http://prometheus:9090)
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Authenticate with Secret housekeeper-prometheus (token, or username and password)
    #[arg(long)]
    pub prometheus_credentials: bool,
    /// A PromQL gate, repeatable: a non-empty result holds the rollout
    #[arg(long = "gate", value_name = "EXPR")]
    pub gates: Vec<String>,
    /// With --gate: a series with this label holds only the node it names
    #[arg(long, value_name = "LABEL", requires = "gates")]
    pub gate_node_label: Option<String>,
    /// Firing alerts that hold, repeatable: matchers (severity="critical",node="$node")
    #[arg(long = "gate-alert", value_name = "MATCHERS", value_parser = crate::ctl::args::parse_alert_filter)]
    pub gate_alerts: Vec<crate::cluster::gates::AlertFilter>,
    /// At most N nodes pull the target at once, ahead of their grants (front of the order first)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub staging_max_concurrent: Option<i32>,
    /// POST rollout events (started, node failed, halted, paused, complete) as JSON here
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// A maintenance window, repeatable: "[DAYS ]HH:MM-HH:MM[ ZONE]"
    #[arg(long = "window", value_name = "WINDOW", value_parser = parse_window)]
    pub windows: Vec<Window>,
    /// Remove every maintenance window (grants at any time)
    #[arg(long, conflicts_with = "windows")]
    pub no_windows: bool,
    /// Time limit of each node's drain (10m, 90s)
    #[arg(long, value_name = "DURATION", value_parser = parse_drain_timeout)]
    pub drain_timeout: Option<i64>,
    /// Evict pods with emptyDir data and pods without a controller
    #[arg(long)]
    pub evict_pod_force: bool,
    /// hkd on the nodes allows unverified images (os.allow_unverified_images)
    #[arg(long)]
    pub allow_unverified: bool,
    /// Validate and show what would happen; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the rollout to its end; fail if it halts
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Redraw whenever the Update or a Node changes, until Ctrl-C
    #[arg(short, long)]
    pub watch: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = status::Output::Table)]
    pub output: status::Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InFlightArg {
    /// Nodes already granted go on to the end
    Finish,
    /// Nodes not yet rebooted withdraw; the others finish
    RollBack,
}

#[derive(Debug, Args)]
pub struct AbortArgs {
    /// What nodes already granted do
    #[arg(long, value_enum, default_value_t = InFlightArg::Finish)]
    pub in_flight: InFlightArg,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The Node's name
    pub name: String,
}

fn parse_node_name(s: &str) -> Result<String, String> {
    crate::cluster::rbac::check_node_name(s).map(|()| s.to_owned())
}

fn parse_selector(
    s: &str,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector, String> {
    ctl::args::parse_selector(s)
}

fn parse_window(s: &str) -> Result<Window, String> {
    ctl::args::parse_window(s)
}

fn parse_drain_timeout(s: &str) -> Result<i64, String> {
    ctl::args::parse_seconds("drain timeout", s)
}

/// Parse the command line; a mistake is one line on stderr and exit status 2 (help and
/// version print as usual).
pub fn parse() -> Cli {
    match <Cli as Parser>::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            eprintln!("hkctl: error: {}", usage_line(&e.to_string()));
            std::process::exit(Exit::Usage as i32);
        }
    }
}

/// Clap's message in one line: its first line without "error: ", and where to read more.
fn usage_line(rendered: &str) -> String {
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("the command line is wrong");
    let first = first.trim().trim_start_matches("error: ");
    format!("{first} (hkctl --help lists what is accepted)")
}

/// Runs a parsed `hkctl` command line, writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Command::Doc(doc) = cli.command {
        return doc.run::<Cli>(out);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Command::Install(a) = &cli.command {
        if a.dry_run {
            // Works without a cluster: the per-node objects then say they are left out.
            let nodes = rt.block_on(install::dry_run_nodes(&target(&cli), &a.nodes));
            return install::print_manifests(a.output, &nodes, a.fleetlock, out);
        }
    }
    rt.block_on(dispatch(cli, out))
}

fn target(cli: &Cli) -> ctl::ClusterTarget {
    ctl::ClusterTarget {
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
        namespace: cli.namespace.clone(),
    }
}

async fn dispatch(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let ctx = ctl::connect(&target(&cli)).await?;
    let name = cli.update.as_deref();
    let term = ctl::stdout_term();
    match cli.command {
        Command::Install(a) => {
            let opts = install::InstallOptions {
                credentials_dir: (!a.no_credentials).then_some(a.credentials_dir),
                nodes: a.nodes,
                server: a.server,
                token_ttl: a.token_ttl,
                rotate_token: a.rotate_token,
                context: cli.context,
                fleetlock: a.fleetlock,
            };
            install::install(&ctx, &opts, out).await
        }
        Command::Revoke(a) => install::revoke(&ctx, &a.node, out).await,
        Command::Uninstall(a) => {
            let opts = install::UninstallOptions {
                force: a.force,
                dry_run: a.dry_run,
            };
            install::uninstall(&ctx, opts, out).await
        }
        Command::Upgrade(a) => {
            let changes = upgrade::Changes {
                image: a.image,
                kube_version: a.kube_version,
                max_unavailable: a.max_unavailable,
                max_failed: a.max_failed,
                selector: a.selector,
                max_unavailable_per_zone: a.max_unavailable_per_zone,
                max_unavailable_zones: a.max_unavailable_zones,
                topology_key: a.topology_key,
                blocking_pod_selector: a.blocking_pod_selector,
                webhook: a.webhook,
                staging_max_concurrent: a.staging_max_concurrent,
                gates: upgrade::GateChanges {
                    prometheus_url: a.prometheus,
                    credentials: a.prometheus_credentials.then_some(true),
                    queries: a
                        .gates
                        .into_iter()
                        .map(|expr| crate::cluster::gates::GateQuery {
                            expr,
                            node_label: a.gate_node_label.clone(),
                        })
                        .collect(),
                    alerts: a.gate_alerts,
                },
                windows: if a.no_windows {
                    Some(Vec::new())
                } else {
                    (!a.windows.is_empty()).then_some(a.windows)
                },
                drain_timeout_seconds: a.drain_timeout,
                evict_pod_force: a.evict_pod_force.then_some(true),
            };
            let opts = upgrade::UpgradeOptions {
                name: cli.update,
                changes,
                policy: ImagePolicy {
                    allow_unverified: a.allow_unverified,
                },
                dry_run: a.dry_run,
                wait: a.wait,
            };
            upgrade::upgrade(&ctx, &opts, term, out).await
        }
        Command::Status(a) => {
            if a.watch {
                let tty = ctl::stdout_is_tty();
                status::watch(&ctx, name, a.output, term, tty, out).await
            } else {
                status::once(&ctx, name, a.output, term, out).await
            }
        }
        Command::Pause => steer::steer(&ctx, name, steer::Steer::Pause, out).await,
        Command::Resume => steer::steer(&ctx, name, steer::Steer::Resume, out).await,
        Command::Abort(a) => {
            let f = match a.in_flight {
                InFlightArg::Finish => InFlight::Finish,
                InFlightArg::RollBack => InFlight::RollBack,
            };
            steer::steer(&ctx, name, steer::Steer::Abort(f), out).await
        }
        Command::Node(a) => ctl::history::show(&ctx, &a.name, out).await,
        Command::Doc(_) => unreachable!("handled before the runtime starts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        <Cli as Parser>::try_parse_from(std::iter::once("hkctl").chain(args.iter().copied()))
    }

    #[test]
    fn upgrade_flags_parse_into_the_spec_types() {
        let cli = parse(&[
            "upgrade",
            "--image",
            "ostree-image-signed:docker://r.example/os:2",
            "--max-unavailable",
            "-1",
            "--window",
            "Sat,Sun 22:00-04:00 Europe/Berlin",
            "--window",
            "Wed 01:00-02:00",
            "--selector",
            "pool=a",
            "--drain-timeout",
            "10m",
            "-n",
            "ns",
        ])
        .unwrap();
        let Command::Upgrade(a) = cli.command else {
            panic!("not upgrade")
        };
        assert_eq!(a.max_unavailable, Some(-1));
        assert_eq!(a.windows.len(), 2);
        assert_eq!(a.drain_timeout, Some(600));
        assert_eq!(cli.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn bad_values_are_one_line() {
        for args in [
            &["upgrade", "--window", "22:00-04:00 Europe/Atlantis"][..],
            &["status", "--frobnicate"][..],
            &["upgrade", "--selector", "a in (b"][..],
            &["status", "-o", "xml"][..],
            &["revoke", "../etc"][..],
            &["install", "--node", "a/b"][..],
        ] {
            let e = parse(args).unwrap_err();
            let line = usage_line(&e.to_string());
            assert!(!line.contains('\n'), "{line}");
            assert!(!line.starts_with("error:"), "{line}");
        }
        let e = parse(&["upgrade", "--window", "22:00-04:00 Europe/Atlantis"]).unwrap_err();
        assert!(usage_line(&e.to_string()).contains("Europe/Atlantis"));
    }
}
