//! A private system-type bus: a real `dbus-daemon` on a socket in a temporary directory, with
//! an allow-all policy, killed on drop. Hosts here have no system bus (and tests must not
//! touch one that exists).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

pub struct PrivateBus {
    child: Child,
    /// The address clients connect to (`unix:path=…,guid=…`).
    pub address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        let dir = tempfile::tempdir().expect("creating a directory for the private bus");
        let config = dir.path().join("system.conf");
        fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                dir.path().display()
            ),
        )
        .expect("writing the private bus configuration");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting dbus-daemon for a private bus: {e}; apt-get install dbus")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("dbus-daemon's stdout"))
            .read_line(&mut line)
            .expect("reading dbus-daemon's address");
        if line.trim().is_empty() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            let _ = child.kill();
            panic!("dbus-daemon printed no address: {}", stderr.trim());
        }
        PrivateBus {
            child,
            address: line.trim().to_owned(),
            _dir: dir,
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
