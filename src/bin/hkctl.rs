use std::process::ExitCode;

use housekeeper::cli;
use housekeeper::logging;

fn main() -> ExitCode {
    let cli = cli::hkctl::parse();
    let level = cli.verbosity.tracing_level_filter();
    // The client library logs each failed connection on its own; hkctl's one-line error
    // already says it. RUST_LOG, when set, decides instead.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", format!("{level},kube_client=off"));
    }
    logging::init("hkctl", level, logging::Style::Command);
    cli::finish("hkctl", cli::hkctl::run(cli, &mut std::io::stdout().lock()))
}
