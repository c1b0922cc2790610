//! `x2nestos`: the conversion tool's command line.

use std::io::Write;

use clap::{Parser, Subcommand};
use clap_verbosity_flag::{InfoLevel, Verbosity};

use super::{DocCommand, EXIT_CODES_HELP};

#[derive(Debug, Parser)]
#[command(
    name = "x2nestos",
    version,
    about = "Convert this running Linux machine to NestOS For Container",
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

/// Runs a parsed `x2nestos` command line, writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Doc(doc) => doc.run::<Cli>(out),
    }
}
