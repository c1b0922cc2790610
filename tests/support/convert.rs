//! What the x2nestos test files share: host tools looked up (a missing one fails the test
//! with the package to install), commands that must succeed, and write options that verify
//! an image.
//!
//! Include it with `#[path = "support/convert.rs"] mod convert_support;`: the rest of
//! `support` is the Kubernetes harness, which these tests do not build.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use housekeeper::convert::image::WriteOptions;
use sha2::{Digest, Sha256};

/// The path of host tool `name`; panics naming the Debian `package` that has it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is missing: apt-get install {package}");
}

/// Runs `cmd`, which must succeed; its output otherwise goes into the panic.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Write options that expect `source`'s SHA-256.
pub fn verified(source: &[u8]) -> WriteOptions {
    WriteOptions {
        sha256: Some(Sha256::digest(source).into()),
        ..WriteOptions::default()
    }
}
