use std::process::ExitCode;

use clap::Parser;
use housekeeper::cli::{self, x2nestos::Cli};
use housekeeper::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(
        "x2nestos",
        cli.verbosity.tracing_level_filter(),
        logging::Style::Command,
    );
    cli::finish(
        "x2nestos",
        cli::x2nestos::run(cli, &mut std::io::stdout().lock()),
    )
}
