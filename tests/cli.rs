//! The three programs as an admin meets them: run the built binaries, check output and exit
//! codes. Needs nothing outside cargo.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const PROGRAMS: [&str; 3] = [
    env!("CARGO_BIN_EXE_hkd"),
    env!("CARGO_BIN_EXE_hkctl"),
    env!("CARGO_BIN_EXE_x2nestos"),
];

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hkd_config(root: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--root", root.to_str().unwrap(), "config"];
    args.extend_from_slice(extra);
    run(PROGRAMS[0], &args)
}

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

#[test]
fn every_program_answers_help_and_version() {
    for program in PROGRAMS {
        let name = Path::new(program).file_name().unwrap().to_str().unwrap();
        let help = run(program, &["--help"]);
        assert!(help.status.success(), "{name} --help");
        assert!(text(&help.stdout).contains(&format!("Usage: {name}")));
        assert!(text(&help.stdout).contains("Exit status:"));
        let version = run(program, &["--version"]);
        assert!(version.status.success(), "{name} --version");
        assert_eq!(
            text(&version.stdout),
            format!("{name} {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    for program in PROGRAMS {
        let out = run(program, &["--no-such-flag"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("unexpected argument '--no-such-flag'"));
    }
}

#[test]
fn completions_and_man_pages_come_from_the_definitions() {
    for program in PROGRAMS {
        let bash = run(program, &["completions", "bash"]);
        assert!(bash.status.success());
        assert!(
            text(&bash.stdout).contains("completions"),
            "bash completions of {program}"
        );
        let man = run(program, &["man"]);
        assert!(man.status.success());
        assert!(text(&man.stdout).contains(".SH NAME"));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(PROGRAMS[0], &["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert!(dir.path().join("hkd-config.1").is_file());
}

#[test]
fn hkd_config_shows_merged_values_and_their_files() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        "usr/lib/hkd/config.d/10-vendor.toml",
        "[os]\nbackend = \"ostree\"\n",
    );
    write(
        root.path(),
        "etc/hkd/config.d/50-site.toml",
        "[metrics]\nlisten = \"127.0.0.1:9999\"\n",
    );
    write(root.path(), "etc/hkd/config.d/README", "not read\n");
    let out = hkd_config(root.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let site = root.path().join("etc/hkd/config.d/50-site.toml");
    let line = |start: &str| {
        let found = stdout.lines().find(|l| l.starts_with(start));
        found
            .unwrap_or_else(|| panic!("no `{start}` line in\n{stdout}"))
            .to_owned()
    };
    let vendor = root.path().join("usr/lib/hkd/config.d/10-vendor.toml");
    assert!(line("listen = \"127.0.0.1:9999\"").ends_with(&format!("# {}", site.display())));
    assert!(line("backend = \"ostree\"").ends_with(&format!("# {}", vendor.display())));
    assert!(line("dir = \"/var/lib/hkd\"").ends_with("# default"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("README: only *.toml files are read"),
        "{stderr}"
    );

    let json = hkd_config(root.path(), &["-o", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["settings"]["os"]["backend"], "ostree");
    assert_eq!(doc["sources"]["metrics.listen"], site.to_str().unwrap());
}

#[test]
fn quiet_hides_warnings_and_rust_log_can_bring_them_back() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "etc/hkd/config.d/old.conf", "");
    let out = Command::new(PROGRAMS[0])
        .args(["-qq", "--root", root.path().to_str().unwrap(), "config"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "");
    let out = Command::new(PROGRAMS[0])
        .args(["-qq", "--root", root.path().to_str().unwrap(), "config"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(stderr.contains("WARN ignoring"), "{stderr}");
    assert!(
        stderr.contains("old.conf: only *.toml files are read"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "colours on a pipe: {stderr:?}");
}

#[test]
fn a_bad_configuration_exits_3_with_one_line_naming_file_and_key() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        "etc/hkd/config.d/50-site.toml",
        "[os]\nbakend = \"ostree\"\n",
    );
    let out = hkd_config(root.path(), &[]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"");
    let stderr = text(&out.stderr);
    let path = root.path().join("etc/hkd/config.d/50-site.toml");
    assert_eq!(
        stderr,
        format!(
            "hkd: error: loading configuration: {}:2: unknown key `os.bakend` \
             (expected one of backend, allow_unverified_images, skip_branch_check); remove it or \
             correct its spelling\n",
            path.display()
        )
    );
}

#[test]
fn an_unreadable_configuration_directory_is_an_error_not_silence() {
    let root = tempfile::tempdir().unwrap();
    // A file where a directory is expected cannot be listed.
    write(root.path(), "etc/hkd/config.d", "");
    let out = hkd_config(root.path(), &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("listing configuration directory"),
        "{}",
        text(&out.stderr)
    );
}
