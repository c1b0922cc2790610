//! Command-line definitions of the three programs, and what they share: verbosity flags,
//! shell completions, man pages and exit codes.
//!
//! The definitions live in the library (not in `src/bin`) so that one test checks all of them
//! and `man --dir` can write every page; the binaries parse, set up logging and dispatch.

pub mod hkctl;
pub mod hkd;
pub mod x2nestos;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, CommandFactory};

use crate::config::ConfigError;

/// Exit status, decided in one place. Documented in every program's `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// Something failed; the message says what.
    Failure = 1,
    /// The command line was wrong (clap's own code).
    Usage = 2,
    /// The configuration files are invalid.
    Config = 3,
}

/// The exit code table, as shown at the end of `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  failure (the message says what failed and what to do)
  2  the command line is wrong
  3  the configuration files are invalid";

impl Exit {
    /// The exit status for an error that ended a program.
    pub fn for_error(err: &anyhow::Error) -> Exit {
        if err.chain().any(|cause| cause.is::<ConfigError>()) {
            Exit::Config
        } else {
            Exit::Failure
        }
    }
}

/// Ends a program: prints the error (with its causes, on one line) and maps it to an exit code.
pub fn finish(program: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(Exit::Success as u8),
        Err(err) => {
            eprintln!("{program}: error: {err:#}");
            ExitCode::from(Exit::for_error(&err) as u8)
        }
    }
}

/// The subcommands every program has: its own documentation. Flattened into each program's
/// command enum.
#[derive(Debug, clap::Subcommand)]
pub enum DocCommand {
    /// Print shell completions
    Completions(CompletionsArgs),
    /// Print the man page, or write all pages into a directory
    Man(ManArgs),
}

impl DocCommand {
    /// Writes the documentation of program `C`.
    pub fn run<C: CommandFactory>(self, out: &mut dyn Write) -> anyhow::Result<()> {
        match self {
            DocCommand::Completions(args) => {
                write_completions::<C>(&args, out);
                Ok(())
            }
            DocCommand::Man(args) => write_man::<C>(&args, out),
        }
    }
}

/// `PROGRAM completions SHELL`
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `PROGRAM man [--dir DIR]`
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write a page for the program and for each subcommand into DIR instead of printing the
    /// program's page
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Writes shell completions for the program defined by `C`.
fn write_completions<C: CommandFactory>(args: &CompletionsArgs, out: &mut dyn Write) {
    let mut command = C::command();
    let name = command.get_name().to_owned();
    clap_complete::generate(args.shell, &mut command, name, out);
}

/// Prints the program's man page, or writes all its pages into a directory.
fn write_man<C: CommandFactory>(args: &ManArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let command = C::command();
    match &args.dir {
        None => clap_mangen::Man::new(command)
            .render(out)
            .context("writing the man page"),
        Some(dir) => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let written = write_man_pages(command, dir)?;
            for path in written {
                writeln!(out, "{}", path.display())?;
            }
            Ok(())
        }
    }
}

/// Writes `NAME.1` for `command` and `NAME-SUB.1` for each subcommand, recursively.
fn write_man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    let mut pending = vec![command];
    while let Some(command) = pending.pop() {
        let name = command
            .get_display_name()
            .unwrap_or_else(|| command.get_name())
            .to_owned();
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone())
            .title(name.to_uppercase())
            .render(&mut page)
            .with_context(|| format!("rendering {}", path.display()))?;
        fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        pending.extend(
            command
                .get_subcommands()
                .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
                .cloned(),
        );
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<clap::Command> {
        vec![
            hkd::Cli::command(),
            hkctl::Cli::command(),
            x2nestos::Cli::command(),
        ]
    }

    #[test]
    fn definitions_are_consistent() {
        for command in all() {
            command.debug_assert();
        }
    }

    /// Every help text, of every subcommand, fits an 80-column terminal.
    #[test]
    fn help_fits_80_columns() {
        fn check(mut command: clap::Command, path: &str) {
            command = command.term_width(80);
            let path = format!("{path} {}", command.get_name()).trim().to_owned();
            for help in [command.render_long_help(), command.render_help()] {
                for line in help.to_string().lines() {
                    assert!(
                        line.chars().count() <= 80,
                        "`{path} --help` line too wide: {line}"
                    );
                }
            }
            for sub in command.get_subcommands() {
                check(sub.clone(), &path);
            }
        }
        for command in all() {
            check(command, "");
        }
    }

    #[test]
    fn help_lists_the_exit_codes() {
        for mut command in all() {
            let help = command.render_long_help().to_string();
            assert!(
                help.contains("3  the configuration files are invalid"),
                "{help}"
            );
        }
    }

    #[test]
    fn man_pages_are_written_for_each_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(hkd::Cli::command(), dir.path()).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"hkd.1".to_owned()), "{names:?}");
        assert!(names.contains(&"hkd-config.1".to_owned()), "{names:?}");
        let page = fs::read_to_string(dir.path().join("hkd-config.1")).unwrap();
        assert!(page.starts_with(".ie"), "not roff: {page}");
        assert!(page.contains("hkd\\-config"), "{page}");
    }

    #[test]
    fn config_errors_map_to_their_exit_code() {
        let err = anyhow::Error::new(ConfigError::Syntax {
            path: "x.toml".into(),
            line: 1,
            column: 1,
            message: "bad".into(),
        })
        .context("loading configuration");
        assert_eq!(Exit::for_error(&err), Exit::Config);
        assert_eq!(Exit::for_error(&anyhow::anyhow!("other")), Exit::Failure);
    }
}
