//! `x2nestos`: the conversion tool's command line.
//!
//! `plan` is read-only; `convert` runs the same plan, then builds the conversion initramfs,
//! loads it with kexec and jumps; `install` is what the conversion initramfs runs.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_verbosity_flag::{InfoLevel, Verbosity};

use super::{DocCommand, EXIT_CODES_HELP};
use crate::convert::identity::IdentityOptions;
use crate::convert::kargs;
use crate::convert::plan::{self, IGNITION_PATH, PLAN_PATH};
use crate::convert::prepare::{self, Options};
use crate::convert::saved::IndexRange;
use crate::convert::stream::StreamChoice;

use crate::convert::source::{Fingerprint, ImageSource, Source, Timeouts};
use crate::convert::{install, jump};

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
    /// Check this machine, the disk and the image; show what would be destroyed and what
    /// carried over (changes nothing)
    Plan(PlanCommand),
    /// Convert this machine: plan, build the conversion initramfs, load it with kexec and
    /// jump into it
    Convert(ConvertArgs),
    /// Write NestOS to the planned disk (run inside the conversion initramfs)
    Install(InstallArgs),
    #[command(flatten)]
    Doc(DocCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// What both `plan` and `convert` take.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The disk to replace, whole: /dev/NAME or /dev/disk/by-id/ID
    #[arg(long, value_name = "DEVICE")]
    pub disk: String,
    /// The NestOS metal image (.raw, .raw.xz, .raw.gz, .raw.zst): a file or an
    /// http(s) URL
    #[arg(
        long,
        value_name = "FILE|URL",
        required_unless_present_any = ["live", "stream_name"],
        conflicts_with_all = ["live", "stream_name"],
        value_parser = Source::parse
    )]
    pub image: Option<Source>,
    /// Boot a NestOS live ISO (the .iso file, its http(s) URL, or its extracted tree) and let
    /// its installer write the disk, instead of writing a metal image from the conversion
    /// initramfs
    #[arg(
        long,
        value_name = "ISO|URL|DIR",
        conflicts_with = "stream",
        value_parser = Source::parse
    )]
    pub live: Option<Source>,
    /// Take the metal image, its SHA-256 and signature from this stream's metadata
    /// (Fedora CoreOS's format), for this machine's architecture
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["live", "sha256"],
        requires = "stream_base_url"
    )]
    pub stream_name: Option<String>,
    /// Where the stream metadata lives: BASE/streams/NAME.json (NestOS publishes no
    /// address of its own, so there is no default)
    #[arg(long, value_name = "URL", requires = "stream_name")]
    pub stream_base_url: Option<String>,
    /// The release the stream must offer (refused when it offers another)
    #[arg(long, value_name = "V", requires = "stream_name")]
    pub version: Option<String>,
    /// The image file's SHA-256, 64 hex digits
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// A detached OpenPGP signature of the image (file or URL), checked with gpgv
    #[arg(long, value_name = "FILE|URL")]
    pub signature: Option<String>,
    /// The OpenPGP public keys the signature must be made with (a binary keyring,
    /// as `gpg --export` writes)
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// The fingerprint of the key that must have made the signature (as `gpg --fingerprint`
    /// prints it); any key of the keyring is accepted without it
    #[arg(long, value_name = "HEX", requires = "signature", value_parser = Fingerprint::parse)]
    pub fingerprint: Option<Fingerprint>,
    /// Write the image without verifying it (not recommended)
    #[arg(long)]
    pub insecure: bool,
    /// Stream the image from its URL inside the conversion initramfs instead of
    /// carrying it in memory
    #[arg(long)]
    pub stream: bool,
    /// An Ignition config (spec 3.x) to merge with the carried identity
    #[arg(long, value_name = "FILE")]
    pub ignition: Option<PathBuf>,
    /// Also carry the SSH login keys of USER (repeatable; root's always are)
    #[arg(long = "user", value_name = "USER")]
    pub users: Vec<String>,
    /// Keep this machine's SSH host keys
    #[arg(long)]
    pub keep_host_keys: bool,
    /// Carry FILE (an absolute path) with its mode (repeatable)
    #[arg(long = "file", value_name = "FILE")]
    pub files: Vec<String>,
    /// Write DHCP-given addresses down as static ones
    #[arg(long)]
    pub pin_addresses: bool,
    /// Keep the disk's partitions whose GPT name matches GLOB: never written, carried
    /// into the new partition table (repeatable, or comma-separated)
    #[arg(long = "save-partlabel", value_name = "GLOB", value_delimiter = ',')]
    pub save_partlabel: Vec<String>,
    /// Keep the disk's partitions with this number or range (N, N-, -N, N-M; repeatable,
    /// or comma-separated)
    #[arg(
        long = "save-partindex",
        value_name = "RANGE",
        value_delimiter = ',',
        value_parser = IndexRange::parse
    )]
    pub save_partindex: Vec<IndexRange>,
    /// Add a kernel argument to the new system (repeatable)
    #[arg(long = "append-karg", value_name = "ARG", value_parser = kargs::parse_karg)]
    pub append_karg: Vec<String>,
    /// Remove a kernel argument (ARG, or KEY for every KEY=…) from the new system
    /// (repeatable)
    #[arg(long = "delete-karg", value_name = "ARG", value_parser = kargs::parse_karg)]
    pub delete_karg: Vec<String>,
    /// The new system's console (ttyS0,115200n8, tty0; repeatable); without it, this
    /// machine's console= arguments are carried
    #[arg(long = "console", value_name = "SPEC", value_parser = kargs::parse_console)]
    pub console: Vec<String>,
    /// Seconds without data before a download counts as stalled
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub stall_timeout: u64,
    /// Read the /proc and /sys facts below DIR (tests)
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    pub facts_root: PathBuf,
}

impl PlanArgs {
    fn stream_choice(&self) -> Option<StreamChoice> {
        self.stream_name.as_ref().map(|name| StreamChoice {
            name: name.clone(),
            base_url: self.stream_base_url.clone().unwrap_or_default(),
            version: self.version.clone(),
        })
    }

    pub fn options(&self) -> Options {
        Options {
            disk: self.disk.clone(),
            image: match (&self.image, &self.live, &self.stream_name) {
                (Some(image), _, _) => ImageSource::Metal(image.clone()),
                (None, Some(live), _) => ImageSource::Live(live.clone()),
                // Replaced by the stream's image when the plan is made.
                (None, None, Some(_)) => ImageSource::Metal(Source::Url(
                    self.stream_choice().map(|c| c.url()).unwrap_or_default(),
                )),
                (None, None, None) => {
                    unreachable!("clap requires --image, --live or --stream-name")
                }
            },
            sha256: self.sha256.clone(),
            signature: self.signature.clone(),
            keyring: self.keyring.clone(),
            fingerprint: self.fingerprint.clone(),
            insecure: self.insecure,
            stream: self.stream,
            ignition: self.ignition.clone(),
            identity: IdentityOptions {
                users: self.users.clone(),
                host_keys: self.keep_host_keys,
                extra_files: self.files.clone(),
            },
            pin_dynamic: self.pin_addresses,
            save_labels: self.save_partlabel.clone(),
            save_indexes: self.save_partindex.clone(),
            stream_choice: self.stream_choice(),
            append_kargs: self.append_karg.clone(),
            delete_kargs: self.delete_karg.clone(),
            consoles: self.console.clone(),
            timeouts: Timeouts::stalling_after(Duration::from_secs(self.stall_timeout)),
            facts_root: self.facts_root.clone(),
        }
    }
}

/// `x2nestos plan`
#[derive(Debug, Args)]
pub struct PlanCommand {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// `x2nestos convert`
#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    /// Go as far as loading the conversion kernel, then unload it and stop
    #[arg(long)]
    pub dry_run: bool,
    /// Jump with the reboot syscall instead of an orderly `systemctl kexec`
    #[arg(long)]
    pub force: bool,
    /// Where the initramfs is built (the disk being replaced is fine)
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/x2nestos")]
    pub workdir: PathBuf,
}

/// `x2nestos install`
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The plan made by `x2nestos convert`
    #[arg(long, value_name = "FILE", default_value = PLAN_PATH)]
    pub plan: PathBuf,
    /// The Ignition config for the new system's first boot
    #[arg(long, value_name = "FILE", default_value = IGNITION_PATH)]
    pub ignition: PathBuf,
    /// Stop when done instead of rebooting
    #[arg(long)]
    pub no_reboot: bool,
    /// Seconds to wait for the planned disk to appear
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub device_wait: u64,
}

/// Runs a parsed `x2nestos` command line, writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Plan(cmd) => run_plan(&cmd, out),
        Command::Convert(args) => jump::run(
            &args.plan.options(),
            &jump::Choices {
                yes: args.yes,
                dry_run: args.dry_run,
                force: args.force,
                workdir: args.workdir.clone(),
            },
            out,
        ),
        Command::Install(args) => install::run(&install::Choices {
            plan: args.plan,
            ignition: args.ignition,
            reboot: !args.no_reboot,
            device_wait: Duration::from_secs(args.device_wait),
        }),
        Command::Doc(doc) => doc.run::<Cli>(out),
    }
}

fn run_plan(cmd: &PlanCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let prepared = prepare::prepare(&cmd.plan.options());
    let report = &prepared.report;
    match cmd.output {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)?;
        }
        OutputFormat::Text => {
            for line in plan::summary(report) {
                writeln!(out, "{line}")?;
            }
        }
    }
    if report.blocked {
        bail!("{}", jump::blocked_line(report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([&["x2nestos", "plan", "--disk", "/dev/vda"], args].concat())
    }

    #[test]
    fn the_image_comes_from_one_place() {
        let cli = parse(&[
            "--stream-name",
            "stable",
            "--stream-base-url",
            "http://m",
            "--version",
            "41.1",
        ])
        .unwrap();
        let Command::Plan(cmd) = cli.command else {
            panic!("not plan")
        };
        let opts = cmd.plan.options();
        assert_eq!(
            opts.stream_choice,
            Some(StreamChoice {
                name: "stable".into(),
                base_url: "http://m".into(),
                version: Some("41.1".into())
            })
        );
        // No guessed default address; not with --image, --live or --sha256 (the stream's
        // own sha256 is the one checked); --version only with a stream.
        for bad in [
            &["--stream-name", "stable"][..],
            &[
                "--stream-name",
                "s",
                "--stream-base-url",
                "u",
                "--image",
                "/i",
            ],
            &[
                "--stream-name",
                "s",
                "--stream-base-url",
                "u",
                "--live",
                "/i",
            ],
            &[
                "--stream-name",
                "s",
                "--stream-base-url",
                "u",
                "--sha256",
                "ab",
            ],
            &["--image", "/i", "--version", "41.1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn saved_partitions_take_lists_and_ranges() {
        let cli = parse(&[
            "--image",
            "/i",
            "--save-partlabel",
            "data*,home",
            "--save-partlabel",
            "x",
            "--save-partindex",
            "5-,2",
        ])
        .unwrap();
        let Command::Plan(cmd) = cli.command else {
            panic!("not plan")
        };
        let opts = cmd.plan.options();
        assert_eq!(opts.save_labels, ["data*", "home", "x"]);
        assert_eq!(
            opts.save_indexes,
            [
                IndexRange::parse("5-").unwrap(),
                IndexRange::parse("2").unwrap()
            ]
        );
        let err = parse(&["--image", "/i", "--save-partindex", "0"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not a partition number or range"),
            "{err}"
        );
    }
}
