//! `hkd`: the Housekeeper daemon's command line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use clap_verbosity_flag::{InfoLevel, Verbosity};

use super::{CompletionsArgs, ManArgs, EXIT_CODES_HELP};
use crate::config::{self, hkd::Settings};

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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the merged configuration and the file each value came from
    Config(ConfigArgs),
    /// Print shell completions
    Completions(CompletionsArgs),
    /// Print the man page, or write all pages into a directory
    Man(ManArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Format::Toml)]
    pub output: Format,
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
        Command::Config(args) => show_config(&cli.root, &args, out),
        Command::Completions(args) => {
            super::write_completions::<Cli>(&args, out);
            Ok(())
        }
        Command::Man(args) => super::write_man::<Cli>(&args, out),
    }
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
