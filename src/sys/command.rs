//! The one door through which the library runs external programs.
//!
//! Every command is built as a value, logged at debug level, run, and on failure reported
//! with its whole command line, exit status and the tail of its stderr — so an admin can run
//! the same line by hand.
//!
//! Three ways to run: [`Cmd::run`] to completion, [`Cmd::run_with_timeout`] killed past a
//! limit, and [`Cmd::run_fed`] with a stream on its standard input, for a command whose
//! verdict the caller reads from what it printed (gpgv's status lines).

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How much of a failing command's stderr goes into the error.
const STDERR_TAIL: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("running `{line}`: {source}; is {program} installed?")]
    Spawn {
        line: String,
        program: String,
        source: std::io::Error,
    },
    #[error("`{line}` did not finish within {limit} and was killed")]
    TimedOut { line: String, limit: String },
    #[error("`{line}` failed ({status}): {stderr}")]
    Failed {
        line: String,
        status: String,
        stderr: String,
    },
    /// Reading the stream fed to the command failed (the command's own exit is moot then).
    #[error("feeding `{line}`: {source}")]
    Input {
        line: String,
        #[source]
        source: io::Error,
    },
}

impl CommandError {
    /// The failing command's stderr, for callers that classify known failures.
    pub fn stderr(&self) -> &str {
        match self {
            CommandError::Failed { stderr, .. } => stderr,
            CommandError::Spawn { .. }
            | CommandError::TimedOut { .. }
            | CommandError::Input { .. } => "",
        }
    }
}

/// What a fed command printed and how it ended, for the caller to judge.
#[derive(Debug)]
pub struct Fed {
    /// The command line, as errors name it.
    pub line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A command line, printable and runnable.
pub struct Cmd {
    inner: Command,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let mut inner = Command::new(program);
        inner.stdin(Stdio::null());
        Cmd { inner }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.inner.env(key, value);
        self
    }

    /// Runs to completion; Ok with stdout when it exits 0.
    pub fn run(mut self) -> Result<String, CommandError> {
        let line = self.to_string();
        tracing::debug!(command = %line, "running");
        let output: Output = self
            .inner
            .output()
            .map_err(|source| self.spawn_error(&line, source))?;
        finish(line, output)
    }

    /// Runs with a time limit: past it, the command and everything it started (its process
    /// group) are killed.
    pub fn run_with_timeout(mut self, timeout: Duration) -> Result<String, CommandError> {
        let line = self.to_string();
        tracing::debug!(command = %line, ?timeout, "running");
        self.inner
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = self
            .inner
            .spawn()
            .map_err(|source| self.spawn_error(&line, source))?;
        let pgid = child.id() as i32;
        // Drain both pipes while waiting, so a chatty command cannot block on a full pipe.
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = thread::spawn(move || read_all(&mut stdout));
        let err = thread::spawn(move || read_all(&mut stderr));
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(source) => return Err(self.spawn_error(&line, source)),
            }
        };
        let Some(status) = status else {
            // SAFETY: kill(2) on our own child's process group; no memory is involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            return Err(CommandError::TimedOut {
                line,
                limit: humantime::format_duration(timeout).to_string(),
            });
        };
        let output = Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        };
        finish(line, output)
    }

    /// Runs with `input` copied to its standard input, and returns what it printed whatever
    /// its exit status. A command that stops reading early (closes its input) is no error
    /// here: its exit status and output tell why. A failure to read `input` is, and comes
    /// back as [`CommandError::Input`] once the command has ended.
    pub fn run_fed(mut self, input: &mut dyn Read) -> Result<Fed, CommandError> {
        let line = self.to_string();
        tracing::debug!(command = %line, "running, fed");
        self.inner
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .inner
            .spawn()
            .map_err(|source| self.spawn_error(&line, source))?;
        // Drain both pipes while feeding, so a chatty command cannot block on a full pipe.
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = thread::spawn(move || read_all(&mut stdout));
        let err = thread::spawn(move || read_all(&mut stderr));
        let stdin = child.stdin.take().expect("piped");
        let fed = feed(input, stdin);
        let status = child
            .wait()
            .map_err(|source| self.spawn_error(&line, source))?;
        if let Err(source) = fed {
            return Err(CommandError::Input { line, source });
        }
        Ok(Fed {
            line,
            status,
            stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        })
    }

    fn spawn_error(&self, line: &str, source: std::io::Error) -> CommandError {
        CommandError::Spawn {
            program: self.inner.get_program().to_string_lossy().into_owned(),
            line: line.to_owned(),
            source,
        }
    }
}

/// Copies `input` into `to` until its end, or until the command closes its side (a broken
/// pipe ends the feeding, not the run); `to` is closed on return so the command sees the end.
fn feed(input: &mut dyn Read, mut to: impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match to.write_all(&buf[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn read_all(from: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = from.read_to_end(&mut buf);
    buf
}

fn finish(line: String, output: Output) -> Result<String, CommandError> {
    {
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        let start = stderr.len().saturating_sub(STDERR_TAIL);
        let start = (start..stderr.len())
            .find(|&i| stderr.is_char_boundary(i))
            .unwrap_or(0);
        Err(CommandError::Failed {
            line,
            status: output.status.to_string(),
            stderr: stderr[start..]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |s: &OsStr| {
            let s = s.to_string_lossy();
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        };
        write!(f, "{}", quote(self.inner.get_program()))?;
        for arg in self.inner.get_args() {
            write!(f, " {}", quote(arg))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_a_line_that_a_shell_runs_the_same() {
        let cmd = Cmd::new("ostree").args(["admin", "deploy", "--os=testos", "it's here", ""]);
        assert_eq!(
            cmd.to_string(),
            r#"ostree admin deploy --os=testos 'it'\''s here' ''"#
        );
    }

    #[test]
    fn a_failure_carries_the_line_status_and_stderr() {
        let script = "echo out; printf 'bad  thing\\nhappened\\n' >&2; exit 3";
        let err = Cmd::new("sh").args(["-c", script]).run().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "`sh -c '{}'` failed (exit status: 3): bad thing happened",
                script.replace('\'', r"'\''")
            )
        );
        assert_eq!(err.stderr(), "bad thing happened");
    }

    #[test]
    fn a_missing_program_says_so() {
        let err = Cmd::new("/nonexistent/tool").run().unwrap_err().to_string();
        assert!(
            err.starts_with("running `/nonexistent/tool`: No such file"),
            "{err}"
        );
        assert!(err.ends_with("is /nonexistent/tool installed?"), "{err}");
    }

    #[test]
    fn a_command_past_its_time_is_killed_with_its_children() {
        let started = Instant::now();
        let err = Cmd::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .run_with_timeout(Duration::from_millis(300))
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited for the children"
        );
        assert_eq!(
            err.to_string(),
            "`sh -c 'sleep 30 & sleep 30'` did not finish within 300ms and was killed"
        );
        let ok = Cmd::new("sh")
            .args(["-c", "echo fine; echo note >&2"])
            .run_with_timeout(Duration::from_secs(5));
        assert_eq!(ok.unwrap(), "fine\n");
    }

    #[test]
    fn a_fed_command_reads_the_stream_and_its_verdict_is_the_callers() {
        let mut input = io::Cursor::new(vec![b'x'; 300_000]);
        let fed = Cmd::new("sh")
            .args(["-c", "wc -c; echo done >&2; exit 4"])
            .run_fed(&mut input)
            .unwrap();
        assert_eq!(fed.stdout.trim(), "300000");
        assert_eq!(fed.stderr, "done\n");
        assert_eq!(fed.status.code(), Some(4));
        assert_eq!(fed.line, "sh -c 'wc -c; echo done >&2; exit 4'");
        // A command that stops reading early is judged by its exit, not by the broken pipe.
        let mut input = io::Cursor::new(vec![0u8; 4 << 20]);
        let fed = Cmd::new("true").run_fed(&mut input).unwrap();
        assert!(fed.status.success());
        // A stream that cannot be read is an error of its own.
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let err = Cmd::new("cat").run_fed(&mut Broken).unwrap_err();
        assert_eq!(err.to_string(), "feeding `cat`: disk on fire");
    }

    #[test]
    fn stdout_is_returned() {
        assert_eq!(Cmd::new("echo").arg("hi").run().unwrap(), "hi\n");
    }
}
