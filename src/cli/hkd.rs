//! `hkd`: the Housekeeper daemon's command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use clap_verbosity_flag::{InfoLevel, Verbosity};

use super::{DocCommand, EXIT_CODES_HELP};
use crate::config::{self, hkd::Settings};
use crate::image_ref::ImageRef;
use crate::node::daemon;
use crate::node::journal::Journal;
use crate::node::machine::Machine;
use crate::node::socket::{self, Request};
use crate::node::status::{self, NodeStatus};
use crate::os::ostree::Ostree;
use crate::os::Backend as _;

#[derive(Debug, Parser)]
#[command(
    name = "hkd",
    version,
    about = "Housekeeper daemon: keeps this node's OS in step with its cluster",
    after_long_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub verbosity: Verbosity<InfoLevel>,

    /// Read configuration below DIR instead of / (for tests and image builds)
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// hkd's local socket
    #[arg(long, global = true, value_name = "PATH", default_value = socket::DEFAULT_PATH)]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (what hkd.service starts)
    Run,
    /// Run only a coordinator candidate, under kubernetes.coordinator_kubeconfig, until
    /// stopped (for a host that coordinates without being a node of the rollout)
    Coordinate(CoordinateArgs),
    /// Show the deployments and where the upgrade stands
    Status(StatusArgs),
    /// Upgrade this node to TARGET (a node without a cluster only)
    Upgrade(UpgradeArgs),
    /// Print the merged configuration and the file each value came from
    Config(ConfigArgs),
    #[command(flatten)]
    Doc(DocCommand),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Format::Toml)]
    pub output: Format,
}

#[derive(Debug, clap::Args)]
pub struct CoordinateArgs {
    /// The name this coordinator holds the Lease under (default: kubernetes.node_name, else
    /// the host name)
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the versioned JSON document (schema/node-status.v1.json)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// Image reference: an OSTree [REMOTE:]REF or checksum, or an ostree container reference
    /// (ostree-image-signed:docker://…, ostree-remote-registry:REMOTE:IMAGE)
    pub target: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The merged TOML, each value followed by its source
    Toml,
    /// Settings, sources and files as one JSON document
    Json,
}

/// Runs a parsed `hkd` command line, writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => {
            let settings = load_settings(&cli.root)?;
            daemon::run(&settings, &cli.root, &cli.socket)
        }
        Command::Coordinate(args) => {
            let settings = load_settings(&cli.root)?;
            daemon::coordinate(&settings, &cli.root, args.identity)
        }
        Command::Status(args) => show_status(&cli.root, &cli.socket, &args, out),
        Command::Upgrade(args) => {
            let settings = load_settings(&cli.root)?;
            // Refuse a bad reference here, before it reaches the agent.
            let target = ImageRef::parse(&args.target, daemon::image_policy(&settings))?;
            let answer = socket::request(&cli.socket, &Request::Upgrade { target })
                .map_err(|e| anyhow::anyhow!("{e}; is hkd running (systemctl status hkd)?"))?;
            match answer.error {
                None => {
                    writeln!(
                        out,
                        "upgrade to {} requested; follow it with `hkd status`",
                        args.target
                    )?;
                    Ok(())
                }
                Some(e) => anyhow::bail!("{e}"),
            }
        }
        Command::Config(args) => show_config(&cli.root, &args, out),
        Command::Doc(doc) => doc.run::<Cli>(out),
    }
}

fn load_settings(root: &Path) -> anyhow::Result<Settings> {
    let loaded =
        config::load::<Settings>(root, config::hkd::APP).context("loading configuration")?;
    for (path, why) in &loaded.ignored {
        tracing::warn!("ignoring {}: {why}", path.display());
    }
    Ok(loaded.settings)
}

/// Asks the running hkd; when it is not running, reads the journal and the deployments.
fn show_status(
    root: &Path,
    socket_path: &Path,
    args: &StatusArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let status = match socket::request(socket_path, &Request::Status) {
        Ok(answer) => answer.status.ok_or_else(|| {
            anyhow::anyhow!(
                "hkd answered without a status: {}",
                answer.error.unwrap_or_default()
            )
        })?,
        Err(why) => {
            tracing::warn!("{why}; showing what is on disk");
            let settings = load_settings(root)?;
            let backend = Ostree::booted_in(root, daemon::image_policy(&settings))?;
            let journal = Journal::open(&settings.state_dir(root))?;
            let boot_id = crate::sys::boot_id(&root.join("proc")).unwrap_or_default();
            let machine = journal.load()?.unwrap_or_else(|| Machine::new(boot_id));
            let deployments = backend.status()?.deployments;
            NodeStatus::new(
                "ostree",
                &machine,
                deployments,
                Some("hkd is not running".into()),
            )
        }
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &status)?;
        writeln!(out)?;
    } else {
        status::render(&status, out)?;
    }
    Ok(())
}

fn show_config(
    root: &std::path::Path,
    args: &ConfigArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let loaded =
        config::load::<Settings>(root, config::hkd::APP).context("loading configuration")?;
    for (path, why) in &loaded.ignored {
        tracing::warn!("ignoring {}: {why}", path.display());
    }
    match args.output {
        Format::Toml => out.write_all(loaded.render_toml().as_bytes())?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &loaded.to_json())?;
            writeln!(out)?;
        }
    }
    Ok(())
}
