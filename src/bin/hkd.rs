use std::process::ExitCode;

use clap::Parser;
use housekeeper::cli::{self, hkd::Cli};
use housekeeper::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(
        "hkd",
        cli.verbosity.tracing_level_filter(),
        logging::Style::Daemon,
    );
    cli::finish("hkd", cli::hkd::run(cli, &mut std::io::stdout().lock()))
}
