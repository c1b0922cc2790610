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

const MIB: usize = 1 << 20;

/// `len` bytes of noise from `seed` (a linear congruential generator: the same bytes every
/// run, and nothing a compressor can squeeze or a zero run can hide in).
pub fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8 | 1
        })
        .collect()
}

/// The zero runs of [`zero_run_image`], as (start, end): one from inside the first MiB across
/// its end, one starting and ending off any alignment, an aligned one longer than a write
/// chunk, and one from just past 14 MiB to the image's end.
pub fn zero_runs(len: usize) -> [(usize, usize); 4] {
    [
        (MIB / 2, 3 * MIB + 512),
        (5 * MIB + 123, 9 * MIB - 77),
        (10 * MIB, 14 * MIB),
        (14 * MIB + 4096, len),
    ]
}

/// A disk image of `len` bytes (more than 15 MiB) made of text and noise between the
/// [`zero_runs`], with a protective MBR and a GPT header for `sector`-byte sectors.
pub fn zero_run_image(len: usize, sector: usize) -> Vec<u8> {
    assert!(len > 15 * MIB);
    let text = b"the quick brown fox jumps over the lazy dog\n";
    let mut data: Vec<u8> = (0..len).map(|i| text[i % text.len()]).collect();
    // Some noise in every data stretch, so no compressor gets it for free.
    for (at, seed) in [(0usize, 1u32), (3 * MIB + 4096, 2), (9 * MIB, 3)] {
        data[at..at + 64 * 1024].copy_from_slice(&noise(seed, 64 * 1024));
    }
    for (start, end) in zero_runs(len) {
        data[start..end].fill(0);
    }
    data[446..512].fill(0);
    data[510] = 0x55;
    data[511] = 0xAA;
    data[sector..sector + 8].copy_from_slice(b"EFI PART");
    data
}
