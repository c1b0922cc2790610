//! A private system-type bus: a real `dbus-daemon` on a socket in a temporary directory, with
//! an allow-all policy, killed on drop. Hosts here have no system bus (and tests must not
//! touch one that exists).
//!
//! Bus activation, for a stand-in that lives in the test process: the bus starts a small
//! script that leaves a request file and waits for a served file; the stand-in watching the
//! directory ([`Activation`]) takes the name again and answers. The bus sees what it sees on a
//! host: a call to an absent name starts a process, which takes the name.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct PrivateBus {
    child: Child,
    /// The address clients connect to (`unix:path=…,guid=…`).
    pub address: String,
    /// Set when the bus activates a name.
    pub activation: Option<Activation>,
    _dir: tempfile::TempDir,
}

/// The files through which the bus asks for an activation and hears it is done.
#[derive(Debug, Clone)]
pub struct Activation {
    /// Appears when the bus wants the name's owner started.
    pub requested: PathBuf,
    /// To be created once the name is owned again; the script then ends.
    pub served: PathBuf,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        PrivateBus::launch(None)
    }

    /// A bus that activates `name` (through [`PrivateBus::activation`]).
    pub fn activating(name: &str) -> PrivateBus {
        PrivateBus::launch(Some(name))
    }

    fn launch(activated: Option<&str>) -> PrivateBus {
        let dir = tempfile::tempdir().expect("creating a directory for the private bus");
        let config = dir.path().join("system.conf");
        let mut servicedir = String::new();
        let activation = activated.map(|name| {
            let services = dir.path().join("services");
            fs::create_dir(&services).expect("creating the bus's service directory");
            let activation = Activation {
                requested: dir.path().join("activation-requested"),
                served: dir.path().join("activation-served"),
            };
            let script = dir.path().join("activate.sh");
            fs::write(
                &script,
                format!(
                    "#!/bin/sh\n: > '{}'\nn=0\nwhile [ ! -e '{}' ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done\nrm -f '{}'\n",
                    activation.requested.display(),
                    activation.served.display(),
                    activation.served.display()
                ),
            )
            .expect("writing the activation script");
            let mut perms = fs::metadata(&script).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            fs::set_permissions(&script, perms).expect("making the activation script runnable");
            fs::write(
                services.join(format!("{name}.service")),
                format!(
                    "[D-BUS Service]\nName={name}\nExec={}\nUser=root\n",
                    script.display()
                ),
            )
            .expect("writing the bus service file");
            servicedir = format!("  <servicedir>{}</servicedir>\n", services.display());
            activation
        });
        fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
{servicedir}  <policy context="default">
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
            activation,
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
