//! Child processes of the test cluster and the watchdog that ends them.
//!
//! Why a watchdog: `cargo nextest` runs every test in its own process, so one test process
//! cannot own a cluster that the next test process reuses, and a parent-death signal
//! (`PR_SET_PDEATHSIG`) on the cluster processes would fire as soon as the first test process
//! exits. Instead the first test process of a run starts a tiny `sh` watchdog in a new process
//! group and puts etcd, kube-apiserver and kube-controller-manager into that same group. The
//! watchdog polls the *run owner* — the nextest runner (the test process's parent) under
//! nextest, the test process itself under `cargo test` — and when the owner is gone (normal
//! end, panic, Ctrl-C, SIGKILL of the runner) it sends SIGTERM to the group, then SIGKILL to
//! whatever is left, and removes the cluster's state directory. The owner is identified by
//! pid *and* start time, so a recycled pid does not keep a cluster alive.
//!
//! The group is not the test's own process group, and the cluster processes never inherit the
//! test's stdout/stderr (their output goes to log files), so nextest neither kills them at the
//! end of the first test nor waits on them as leaked handles.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The watchdog, as a POSIX shell script (no procps needed: it reads /proc itself).
/// $1 = owner pid, $2 = owner start time (field 22 of /proc/PID/stat), $3 = directory to
/// remove at the end. The cluster's pids are appended to `pids` beside the script as they
/// start; only those are killed, and only while they are still in the watchdog's group (so a
/// recycled pid is never hit).
const WATCHDOG: &str = r#"
owner=$1 start=$2 dir=$3 pids=$(dirname "$0")/pids
trap '' INT TERM HUP
# fields of /proc/PID/stat after "pid (comm) ": 1 state, 2 ppid, 3 pgrp, ..., 20 starttime
field() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f"$2"; }
members() {
    for p in $(cat "$pids" 2>/dev/null); do
        [ "$(field "$p" 3)" = "$$" ] && echo "$p"
    done
}
while [ "$(field "$owner" 20)" = "$start" ]; do sleep 1; done
echo "run owner $owner is gone: stopping the test cluster"
for p in $(members); do kill -TERM "$p" 2>/dev/null; done
# Two seconds of grace: a throw-away cluster gains nothing from a clean shutdown, and
# kube-apiserver can wait much longer on an etcd that is already gone.
i=0
while [ $i -lt 8 ] && [ -n "$(members)" ]; do sleep 0.25; i=$((i + 1)); done
for p in $(members); do kill -KILL "$p" 2>/dev/null; done
rm -rf "$dir"
"#;

/// The process whose end ends the cluster, and a key naming this run's cluster.
pub fn run_owner() -> Result<(u32, String)> {
    match std::env::var("NEXTEST_RUN_ID") {
        // nextest execs each test binary as a direct child of its runner process.
        Ok(id) => Ok((std::os::unix::process::parent_id(), format!("nextest-{id}"))),
        Err(_) => {
            let pid = std::process::id();
            Ok((pid, format!("pid-{pid}-{}", start_time(pid)?)))
        }
    }
}

/// Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot.
pub fn start_time(pid: u32) -> Result<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after_comm = stat
        .rsplit_once(") ")
        .with_context(|| format!("parsing /proc/{pid}/stat"))?
        .1;
    after_comm
        .split(' ')
        .nth(19)
        .map(str::to_owned)
        .with_context(|| format!("no start time in /proc/{pid}/stat"))
}

/// Whether a process exists (signal 0 probes without sending anything).
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// SIGKILL the processes registered in `state_dir`'s `pids` file that are still members of
/// the process group `pgid` (a recycled pid is left alone).
pub fn kill_registered(state_dir: &Path, pgid: u32) {
    let pids = fs::read_to_string(state_dir.join("pids")).unwrap_or_default();
    for pid in pids
        .lines()
        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
    {
        // SAFETY: plain syscalls on processes we started.
        unsafe {
            if u32::try_from(libc::getpgid(pid)).ok() == Some(pgid) {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Start the watchdog in `state_dir`, guarding the run owner `owner`; at the end it removes
/// `remove`. Returns its pid, which is also the process group id for the cluster's processes.
pub fn start_watchdog(owner: u32, state_dir: &Path, remove: &Path) -> Result<u32> {
    let log = log_file(&state_dir.join("watchdog.log"))?;
    let script = state_dir.join("watchdog.sh");
    fs::write(&script, WATCHDOG).with_context(|| format!("writing {}", script.display()))?;
    let child = Command::new("sh")
        .arg(&script)
        .arg(owner.to_string())
        .arg(start_time(owner)?)
        .arg(remove)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the test cluster's watchdog (sh)")?;
    Ok(child.id())
}

/// Whether `pid` has exited and waits to be reaped (it holds no sockets any more).
pub fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// One process of the cluster: its name, handle and log.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Start `program` in the watchdog's process group `pgid`, its output in `log`, and
    /// register it with the watchdog (its `pids` file in `state_dir`).
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        pgid: u32,
        state_dir: &Path,
        log: PathBuf,
    ) -> Result<Proc> {
        let out = log_file(&log)?;
        let pgid = i32::try_from(pgid).context("process group id out of range")?;
        let child = Command::new(program)
            .args(args)
            .process_group(pgid)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pids = state_dir.join("pids");
        let mut f = File::options()
            .create(true)
            .append(true)
            .open(&pids)
            .with_context(|| format!("opening {}", pids.display()))?;
        std::io::Write::write_all(&mut f, format!("{}\n", child.id()).as_bytes())?;
        Ok(Proc { name, child, log })
    }

    /// Fails when the process has exited, quoting the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 15)
            );
        }
        Ok(())
    }
}

fn log_file(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating {}", path.display()))
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An exclusive advisory lock on a file, held until dropped (closing the file releases it).
pub struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    /// Blocks until the lock is ours; call it from a blocking thread.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(FileLock(file))
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's choice; the small race until the server binds
/// it is covered by retrying the whole start).
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Random hex, for tokens and names (from the kernel's generator).
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
