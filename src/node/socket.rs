//! hkd's local interface: a Unix socket (root only) speaking one JSON request per line.
//!
//! Requests: `{"request": "status"}` → `{"ok": true, "status": <NodeStatus>}`;
//! `{"request": "upgrade", "target": "<image reference>"}` (standalone nodes only) →
//! `{"ok": true}` once handed to the agent. Errors: `{"ok": false, "error": "<one line>"}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::agent::Shared;
use super::machine::Event;
use super::status::NodeStatus;
use crate::image_ref::ImageRef;

/// Where hkd listens on a host.
pub const DEFAULT_PATH: &str = "/run/hkd/hkd.sock";

/// A client waits this long for an answer: the agent answers from memory.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "camelCase")]
pub enum Request {
    Status,
    Upgrade { target: ImageRef },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Serves requests until the listener fails. `events` reaches the agent; `standalone` says
/// whether local upgrade requests are accepted (a cluster node follows its Update).
pub struct Server {
    pub listener: UnixListener,
    pub path: PathBuf,
    pub shared: Shared,
    pub events: Sender<Event>,
    pub standalone: bool,
}

impl Server {
    /// Binds `path` (mode 0600, parent created 0700), replacing a stale socket.
    pub fn bind(
        path: &Path,
        shared: Shared,
        events: Sender<Event>,
        standalone: bool,
    ) -> std::io::Result<Server> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            listener,
            path: path.to_owned(),
            shared,
            events,
            standalone,
        })
    }

    pub fn serve(&self) {
        for stream in self.listener.incoming() {
            match stream {
                Ok(stream) => {
                    if let Err(e) = self.answer(stream) {
                        tracing::debug!("local client: {e}");
                    }
                }
                Err(e) => tracing::warn!("accepting on {}: {e}", self.path.display()),
            }
        }
    }

    fn answer(&self, stream: UnixStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => failure(format!("bad request: {e}")),
            Ok(Request::Status) => Response {
                ok: true,
                status: self.shared.lock().ok().map(|s| s.clone()),
                error: None,
            },
            Ok(Request::Upgrade { .. }) if !self.standalone => failure(
                "this node follows its cluster's Update; start upgrades with `hkctl upgrade`"
                    .into(),
            ),
            Ok(Request::Upgrade { target }) => {
                match self.events.send(Event::TargetRequested { target }) {
                    Ok(()) => Response {
                        ok: true,
                        status: None,
                        error: None,
                    },
                    Err(_) => failure("the agent has stopped".into()),
                }
            }
        };
        let mut out = serde_json::to_vec(&response).expect("a response serializes");
        out.push(b'\n');
        (&stream).write_all(&out)
    }
}

fn failure(error: String) -> Response {
    Response {
        ok: false,
        status: None,
        error: Some(error),
    }
}

/// Sends one request to hkd at `path` and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<Response, String> {
    let stream = UnixStream::connect(path)
        .map_err(|e| format!("connecting to hkd at {}: {e}", path.display()))?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(request).expect("a request serializes");
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| format!("writing to hkd at {}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("reading hkd's answer: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("hkd answered something unreadable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_ref::ImageRef;

    /// A well-formed reference, as the journal would load it.
    fn img(raw: &str) -> ImageRef {
        ImageRef::parse_any(raw).unwrap()
    }
    use crate::node::machine::Machine;
    use std::sync::{mpsc, Arc, Mutex};

    fn server(standalone: bool) -> (tempfile::TempDir, PathBuf, mpsc::Receiver<Event>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/hkd/hkd.sock");
        let shared = Arc::new(Mutex::new(NodeStatus::new(
            "ostree",
            &Machine::new("b"),
            vec![],
            None,
        )));
        let (tx, rx) = mpsc::channel();
        let server = Server::bind(&path, shared, tx, standalone).unwrap();
        std::thread::spawn(move || server.serve());
        (dir, path, rx)
    }

    #[test]
    fn status_and_upgrade_over_a_real_socket() {
        let (_dir, path, rx) = server(true);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let answer = request(&path, &Request::Status).unwrap();
        assert!(answer.ok);
        assert_eq!(
            answer.status.unwrap().upgrade.phase,
            crate::node::machine::Phase::Idle
        );
        let answer = request(
            &path,
            &Request::Upgrade {
                target: img("r:v2"),
            },
        )
        .unwrap();
        assert!(answer.ok, "{:?}", answer.error);
        assert_eq!(
            rx.recv().unwrap(),
            Event::TargetRequested {
                target: img("r:v2")
            }
        );
    }

    #[test]
    fn a_cluster_node_refuses_local_upgrades() {
        let (_dir, path, rx) = server(false);
        let answer = request(
            &path,
            &Request::Upgrade {
                target: img("r:v2"),
            },
        )
        .unwrap();
        assert!(!answer.ok);
        assert!(answer.error.unwrap().contains("hkctl upgrade"));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn no_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(&dir.path().join("hkd.sock"), &Request::Status).unwrap_err();
        assert!(err.starts_with("connecting to hkd at "), "{err}");
    }
}
