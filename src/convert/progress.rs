//! Progress of downloads and writes: a bar redrawn in place on a terminal, plain lines
//! otherwise (a log, the console of the conversion initramfs, a pipe).
//!
//! [`bar_line`], [`plain_line`] and [`plain_due`] are pure; [`Meter`] only draws.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const MIB: f64 = (1u64 << 20) as f64;
/// A plain line at least this often while something moves.
const PLAIN_EVERY: Duration = Duration::from_secs(15);
/// A terminal bar is redrawn at most this often.
const REDRAW_EVERY: Duration = Duration::from_millis(200);
const BAR_WIDTH: usize = 30;

fn rate(done: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        done as f64 / MIB / secs
    } else {
        0.0
    }
}

/// `label [#######.......]  45%  123/456 MiB  12.3 MiB/s`, or without the bar and percentage
/// when the total is unknown.
pub fn bar_line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let speed = rate(done, elapsed);
    match total.filter(|&t| t > 0) {
        Some(total) => {
            let fraction = (done as f64 / total as f64).min(1.0);
            let filled = (fraction * BAR_WIDTH as f64).round() as usize;
            format!(
                "{label} [{}{}] {:3.0}% {:.0}/{:.0} MiB {speed:.1} MiB/s",
                "#".repeat(filled),
                ".".repeat(BAR_WIDTH - filled),
                fraction * 100.0,
                done as f64 / MIB,
                total as f64 / MIB
            )
        }
        None => format!("{label} {:.0} MiB {speed:.1} MiB/s", done as f64 / MIB),
    }
}

/// `label: 45% (123 of 456 MiB, 12.3 MiB/s)`.
pub fn plain_line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let speed = rate(done, elapsed);
    match total.filter(|&t| t > 0) {
        Some(total) => format!(
            "{label}: {:.0}% ({:.0} of {:.0} MiB, {speed:.1} MiB/s)",
            (done as f64 / total as f64).min(1.0) * 100.0,
            done as f64 / MIB,
            total as f64 / MIB
        ),
        None => format!("{label}: {:.0} MiB ({speed:.1} MiB/s)", done as f64 / MIB),
    }
}

/// Whether a plain line is due: each further tenth of a known total, or every
/// [`PLAIN_EVERY`] otherwise.
pub fn plain_due(printed: u64, done: u64, total: Option<u64>, since_printed: Duration) -> bool {
    match total.filter(|&t| t > 0) {
        Some(total) => done * 10 / total > printed * 10 / total || since_printed >= PLAIN_EVERY,
        None => since_printed >= PLAIN_EVERY,
    }
}

/// Draws progress on stderr.
pub struct Meter {
    label: String,
    total: Option<u64>,
    tty: bool,
    start: Instant,
    printed: u64,
    printed_at: Instant,
    out: Box<dyn Write + Send>,
}

impl Meter {
    /// A meter on stderr; a bar when stderr is a terminal.
    pub fn stderr(label: &str, total: Option<u64>) -> Meter {
        let tty = std::io::stderr().is_terminal();
        Meter::new(label, total, tty, Box::new(std::io::stderr()))
    }

    /// A meter writing plain lines to stdout (the installer's console).
    pub fn stdout_lines(label: &str, total: Option<u64>) -> Meter {
        Meter::new(label, total, false, Box::new(std::io::stdout()))
    }

    pub fn new(label: &str, total: Option<u64>, tty: bool, out: Box<dyn Write + Send>) -> Meter {
        let now = Instant::now();
        Meter {
            label: label.to_owned(),
            total,
            tty,
            start: now,
            printed: 0,
            printed_at: now,
            out,
        }
    }

    pub fn update(&mut self, done: u64) {
        let since = self.printed_at.elapsed();
        if self.tty {
            if since >= REDRAW_EVERY {
                let line = bar_line(&self.label, done, self.total, self.start.elapsed());
                let _ = write!(self.out, "\r{line}\x1b[K");
                let _ = self.out.flush();
                self.printed_at = Instant::now();
            }
        } else if plain_due(self.printed, done, self.total, since) {
            let line = plain_line(&self.label, done, self.total, self.start.elapsed());
            let _ = writeln!(self.out, "{line}");
            self.printed = done;
            self.printed_at = Instant::now();
        }
    }

    /// The last state, on its own line.
    pub fn finish(&mut self, done: u64) {
        let elapsed = self.start.elapsed();
        if self.tty {
            let _ = writeln!(
                self.out,
                "\r{}\x1b[K",
                bar_line(&self.label, done, self.total, elapsed)
            );
        } else {
            let total = self.total.or(Some(done));
            let _ = writeln!(
                self.out,
                "{}",
                plain_line(&self.label, done, total, elapsed)
            );
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn a_bar_with_and_without_a_total() {
        let line = bar_line("download", 45 * M, Some(100 * M), Duration::from_secs(9));
        assert_eq!(
            line,
            "download [##############................]  45% 45/100 MiB 5.0 MiB/s"
        );
        let full = bar_line("write", 120 * M, Some(100 * M), Duration::from_secs(1));
        assert!(
            full.contains(&"#".repeat(30)) && full.contains("100%"),
            "{full}"
        );
        assert_eq!(
            bar_line("download", 3 * M, None, Duration::ZERO),
            "download 3 MiB 0.0 MiB/s"
        );
    }

    #[test]
    fn plain_lines_each_tenth_or_every_fifteen_seconds() {
        let total = Some(100 * M);
        assert!(!plain_due(0, 9 * M, total, Duration::from_secs(1)));
        assert!(plain_due(0, 10 * M, total, Duration::from_secs(1)));
        assert!(!plain_due(10 * M, 19 * M, total, Duration::from_secs(1)));
        assert!(plain_due(10 * M, 19 * M, total, Duration::from_secs(15)));
        assert!(!plain_due(0, 500 * M, None, Duration::from_secs(14)));
        assert!(plain_due(0, 500 * M, None, Duration::from_secs(15)));
        assert_eq!(
            plain_line("writing /dev/vda", 50 * M, total, Duration::from_secs(10)),
            "writing /dev/vda: 50% (50 of 100 MiB, 5.0 MiB/s)"
        );
    }

    #[test]
    fn a_meter_off_a_terminal_prints_lines() {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let mut meter = Meter::new("copy", Some(10 * M), false, Box::new(out.clone()));
        for i in 1..=10 {
            meter.update(i * M);
        }
        meter.finish(10 * M);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert!(lines[0].starts_with("copy: 10% (1 of 10 MiB"), "{text}");
        assert!(!text.contains('\r'));
    }
}
