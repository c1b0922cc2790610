//! `hkctl`: the admin's control-plane tool's command line.

use std::io::Write;

use clap::{Parser, Subcommand};
use clap_verbosity_flag::{InfoLevel, Verbosity};

use super::{DocCommand, EXIT_CODES_HELP};

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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Doc(DocCommand),
}

/// Runs a parsed `hkctl` command line, writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Doc(doc) => doc.run::<Cli>(out),
    }
}
