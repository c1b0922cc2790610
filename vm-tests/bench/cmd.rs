//! The one door to host commands: every error names the full command line and its stderr, and
//! a missing program says which Debian package brings it.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Debian packages for the host programs the bench runs.
pub fn package_of(program: &str) -> &'static str {
    match program {
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-img" | "qemu-io" => "qemu-utils",
        "debugfs" | "mkfs.ext4" => "e2fsprogs",
        "xz" => "xz-utils",
        "ssh" | "ssh-keygen" => "openssh-client",
        "sfdisk" => "fdisk",
        "mmdebstrap" => "mmdebstrap",
        "ostree" => "ostree",
        "busybox" => "busybox-static",
        _ => "the package that provides it",
    }
}

pub fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn spawn_error(c: &Command, e: std::io::Error) -> anyhow::Error {
    let prog = c.get_program().to_string_lossy().into_owned();
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!(
            "{prog} not found: install it (apt-get install {})",
            package_of(&prog)
        )
    } else {
        anyhow::anyhow!("starting {}: {e}", describe(c))
    }
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(c: &mut Command) -> Result<Output> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(c, e))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs a command with a deadline; past it the command is killed and this is an error.
pub fn run_with_timeout(c: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(c, e))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} timed out after {timeout:?}", describe(c));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}
