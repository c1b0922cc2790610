use std::process::ExitCode;

use housekeeper::cli;
use housekeeper::logging;

fn main() -> ExitCode {
    let cli = cli::hkctl::parse();
    logging::init(
        "hkctl",
        cli.verbosity.tracing_level_filter(),
        logging::Style::Command,
    );
    cli::finish("hkctl", cli::hkctl::run(cli, &mut std::io::stdout().lock()))
}
