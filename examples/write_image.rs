//! Writes a disk image onto a file or block device with the library's image writer; used by
//! tools/bench-writer.sh to compare it with other tools. Not an installer: it does no
//! preflight and asks nothing, so it only writes to the target named on its command line.
//!
//! usage: write_image IMAGE TARGET [--sha256 HEX] [--xz-threads N] [--xz-memory MIB] [--zero-run BYTES]

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use housekeeper::convert::image::{verify::parse_sha256, write_image, WriteOptions, WriteTarget};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut options = WriteOptions::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sha256" => match args.next().map(|h| parse_sha256(&h)) {
                Some(Ok(digest)) => options.sha256 = Some(digest),
                Some(Err(e)) => return fail(&e),
                None => return fail("--sha256 needs a value"),
            },
            "--xz-threads" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => options.xz_threads = n,
                None => return fail("--xz-threads needs a number"),
            },
            "--xz-memory" => match args.next().and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => options.xz_memory = n << 20,
                None => return fail("--xz-memory needs a number of MiB"),
            },
            "--zero-run" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => options.zero_run = n,
                None => return fail("--zero-run needs a number of bytes (0: off)"),
            },
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [image, target] = &positional[..] else {
        return fail(
            "usage: write_image IMAGE TARGET [--sha256 HEX] [--xz-threads N] [--xz-memory MIB] \
             [--zero-run BYTES]",
        );
    };
    let source = match File::open(image) {
        Ok(f) => f,
        Err(e) => return fail(&format!("opening {}: {e}", image.display())),
    };
    let target = match WriteTarget::open(target) {
        Ok(t) => t,
        Err(e) => return fail(&e.to_string()),
    };
    let start = Instant::now();
    match write_image(source, &target, &options, &mut |_| {}) {
        Ok(report) => {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "wrote {} bytes ({} image, {} bytes read, {} zeroed by the kernel) in {secs:.2}s: \
                 {:.1} MB/s",
                report.image_bytes,
                report.format,
                report.compressed_bytes,
                report.zeroed_bytes,
                report.image_bytes as f64 / secs / 1e6
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("write_image: error: {message}");
    ExitCode::FAILURE
}
