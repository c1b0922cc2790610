use std::process::ExitCode;

use clap::Parser;
use housekeeper::cli::{self, hkctl::Cli};
use housekeeper::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(
        "hkctl",
        cli.verbosity.tracing_level_filter(),
        logging::Style::Command,
    );
    cli::finish("hkctl", cli::hkctl::run(cli, &mut std::io::stdout().lock()))
}
