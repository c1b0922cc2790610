//! One QEMU machine: software emulation (TCG — this host has no usable KVM), direct kernel
//! boot, serial console to a log file, user-mode network with SSH forwarded to 127.0.0.1, and
//! a hard deadline. QEMU never outlives its `Machine`: it is killed on drop, it dies with the
//! test process (PR_SET_PDEATHSIG), and a watchdog kills it at the deadline.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cmd::{describe, package_of, run_with_timeout};
use super::marks::{parse_line, Mark};

/// Guest memory: enough for systemd, ostree and a kexec'd second kernel with its initramfs.
const MEMORY_MB: u32 = 1536;

#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Names the log files: `<name>.serial.log`, `<name>.qemu.log`.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The first virtio disk (`/dev/vda`): normally the scenario's qcow2 overlay.
    pub disk: PathBuf,
    /// More virtio disks (`/dev/vdb`, …), qcow2 or raw by extension.
    pub extra_disks: Vec<PathBuf>,
    /// The whole run, from start to power-off: past it QEMU is killed.
    pub timeout: Duration,
}

pub struct Machine {
    name: String,
    child: Option<Child>,
    serial_log: PathBuf,
    qemu_log: PathBuf,
    ssh_port: u16,
    deadline: Instant,
    marks: Vec<Mark>,
    cursor: usize,
    read_offset: u64,
    partial: String,
    watchdog_done: Arc<AtomicBool>,
    pub keys_dir: PathBuf,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

fn disk_arg(path: &Path, index: usize) -> String {
    let format = if path.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    format!(
        "file={},if=virtio,format={format},index={index},cache=unsafe",
        path.display()
    )
}

impl Machine {
    /// Starts QEMU; the logs go into `dir`.
    pub fn start(cfg: &MachineConfig, dir: &Path, keys_dir: &Path) -> Result<Machine> {
        let serial_log = dir.join(format!("{}.serial.log", cfg.name));
        let qemu_log = dir.join(format!("{}.qemu.log", cfg.name));
        // Each boot of a machine appends to the same serial log, so one file tells the story.
        let start_offset = fs::metadata(&serial_log).map(|m| m.len()).unwrap_or(0);
        let ssh_port = free_port()?;
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "tcg", "-M", "pc", "-smp", "1"])
            .args(["-m", &MEMORY_MB.to_string()])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-chardev")
            .arg(format!(
                "file,id=serial0,path={},append=on",
                serial_log.display()
            ))
            .args(["-serial", "chardev:serial0"])
            .arg("-kernel")
            .arg(&cfg.kernel)
            .arg("-initrd")
            .arg(&cfg.initrd)
            .arg("-append")
            .arg(&cfg.cmdline)
            .arg("-drive")
            .arg(disk_arg(&cfg.disk, 0));
        for (i, d) in cfg.extra_disks.iter().enumerate() {
            c.arg("-drive").arg(disk_arg(d, i + 1));
        }
        c.arg("-netdev")
            .arg(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"))
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .args(["-device", "virtio-rng-pci"]);
        let log = File::create(&qemu_log)?;
        c.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        fs::write(dir.join(format!("{}.qemu.cmdline", cfg.name)), describe(&c))?;
        let child = c.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "qemu-system-x86_64 not found: install it (apt-get install {})",
                    package_of("qemu-system-x86_64")
                )
            } else {
                anyhow::anyhow!("starting {}: {e}", describe(&c))
            }
        })?;
        let deadline = Instant::now() + cfg.timeout;
        let watchdog_done = Arc::new(AtomicBool::new(false));
        spawn_watchdog(child.id() as i32, deadline, watchdog_done.clone());
        Ok(Machine {
            name: cfg.name.clone(),
            child: Some(child),
            serial_log,
            qemu_log,
            ssh_port,
            deadline,
            marks: Vec::new(),
            cursor: 0,
            read_offset: start_offset,
            partial: String::new(),
            watchdog_done,
            keys_dir: keys_dir.to_path_buf(),
        })
    }

    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// QEMU's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
    }

    /// Reads what the console printed since last time and collects its markers.
    fn poll_serial(&mut self) -> Result<()> {
        let mut f = match File::open(&self.serial_log) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).context("opening the serial log"),
        };
        f.seek(SeekFrom::Start(self.read_offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.read_offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            self.marks.extend(parse_line(&line));
        }
        Ok(())
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("machine {} was already stopped", self.name),
        }
    }

    /// The last lines of the serial log, for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = fs::read(&self.serial_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn failure(&self, what: String) -> anyhow::Error {
        anyhow::anyhow!(
            "{what}\n  serial log: {}\n  qemu log: {}\n  last console lines:\n{}",
            self.serial_log.display(),
            self.qemu_log.display(),
            self.tail(15)
        )
    }

    /// Waits for the next marker called `name` (markers seen before the last successful wait
    /// are not looked at again). A `*-failed` marker, QEMU exiting, or the timeout end the
    /// wait with an error naming the serial log.
    pub fn wait_mark(&mut self, name: &str, timeout: Duration) -> Result<Mark> {
        let until = (Instant::now() + timeout).min(self.deadline);
        loop {
            self.poll_serial()?;
            while self.cursor < self.marks.len() {
                let m = self.marks[self.cursor].clone();
                self.cursor += 1;
                if m.name == name {
                    return Ok(m);
                }
                if m.is_failure() {
                    return Err(self.failure(format!(
                        "machine {}: guest reported HK-MARK:{} {} while waiting for HK-MARK:{name}",
                        self.name, m.name, m.detail
                    )));
                }
            }
            if let Some(status) = self.exited()? {
                self.poll_serial()?;
                if let Some(m) = self.marks[self.cursor..].iter().find(|m| m.name == name) {
                    let m = m.clone();
                    self.cursor = self.marks.len();
                    return Ok(m);
                }
                return Err(self.failure(format!(
                    "machine {}: QEMU exited ({status}) before HK-MARK:{name}",
                    self.name
                )));
            }
            if Instant::now() >= until {
                return Err(self.failure(format!(
                    "machine {}: no HK-MARK:{name} within {timeout:?} (guest did not boot that far)",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the guest powers off or reboots (QEMU runs with -no-reboot, so both end it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let until = (Instant::now() + timeout).min(self.deadline);
        loop {
            if let Some(status) = self.exited()? {
                self.poll_serial()?;
                self.child = None;
                self.watchdog_done.store(true, Ordering::SeqCst);
                if !status.success() {
                    return Err(
                        self.failure(format!("machine {}: QEMU exited with {status}", self.name))
                    );
                }
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(self.failure(format!(
                    "machine {}: still running {timeout:?} after it was asked to stop",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ssh_command(&self, user: &str, key: &str, command: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-i"])
            .arg(self.keys_dir.join(key))
            .args(["-p", &self.ssh_port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{user}@127.0.0.1"))
            .arg("--")
            .arg(command);
        c
    }

    /// Runs a shell command in the guest as `user` with key `key` (a file in the keys dir);
    /// returns its output whatever its exit status.
    pub fn ssh_output(&self, user: &str, key: &str, command: &str) -> Result<Output> {
        let timeout = self
            .deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(300));
        run_with_timeout(&mut self.ssh_command(user, key, command), timeout)
    }

    /// Runs a shell command in the guest as root; a non-zero exit is an error. Returns stdout.
    pub fn sh(&self, command: &str) -> Result<String> {
        let out = self.ssh_output("root", "root", command)?;
        if !out.status.success() {
            return Err(self.failure(format!(
                "machine {}: `{command}` failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a command in the guest without waiting for it (reboot, power off, kexec): the
    /// connection may drop while the guest goes down, which is not a failure.
    pub fn detach(&self, command: &str) {
        let _ = self.ssh_output("root", "root", &format!("({command}) >/dev/null 2>&1 &"));
    }

    /// Asks the guest to reboot (or power off) over SSH and waits for QEMU to end.
    pub fn shutdown_with(&mut self, command: &str, timeout: Duration) -> Result<()> {
        self.detach(command);
        self.wait_exit(timeout)
    }

    /// Kills QEMU (and its process group) now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain syscall on the process group we created for this child.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.watchdog_done.store(true, Ordering::SeqCst);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_watchdog(pid: i32, deadline: Instant, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !done.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                // SAFETY: plain syscall; the group is QEMU's own (process_group(0)).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}
