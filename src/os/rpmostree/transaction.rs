//! Following one rpm-ostree transaction on its peer-to-peer connection.
//!
//! Expected flow: an OS method returned the transaction's private address → connect to it →
//! listen to everything it sends (before `Start`, so that nothing is missed) → `Start()` →
//! progress signals → `Finished(success, error_message)`. The daemon never sends a signal
//! before `Start` returns, and keeps the transaction alive until its clients have gone.
//!
//! Guarantees: returns only after `Finished`, after the connection closed, or after `timeout`;
//! on a timeout the transaction is asked to cancel and the error says so. Progress goes to the
//! log and to the caller's observer. Caveat: a connection that closes without `Finished` is
//! reported as a failure even though the daemon may have completed the work; callers re-read
//! the deployments before deciding anything.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use zbus::blocking::{Connection, MessageIterator};
use zbus::message::Type;

use super::errors;
use crate::os::OsError;

pub const INTERFACE: &str = "org.projectatomic.rpmostree1.Transaction";

/// How long one call on the transaction's connection (Start, Cancel) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a transaction reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A line of output.
    Message(String),
    TaskBegin(String),
    TaskEnd(String),
    Percent {
        text: String,
        percent: u32,
    },
    /// Content download: objects fetched of requested, bytes transferred and the rate.
    Download {
        fetched: u32,
        requested: u32,
        bytes: u64,
        bytes_per_second: u64,
    },
    /// The progress display is done; later messages stand on their own lines.
    End,
}

/// Receives each [`Progress`] as it arrives.
pub type Observer = dyn Fn(&Progress) + Send + Sync;

enum Event {
    Progress(Progress),
    Finished(bool, String),
    Closed,
}

/// `DownloadProgress`: time (start, elapsed), outstanding (fetches, writes), metadata
/// (scanned, fetched, outstanding), delta (parts, fetched parts, superblocks, size), content
/// (fetched, requested), transfer (bytes, bytes/s).
type DownloadBody = (
    (u64, u64),
    (u32, u32),
    (u32, u32, u32),
    (u32, u32, u32, u64),
    (u32, u32),
    (u64, u64),
);

/// Runs the transaction at `address` to its end. `action` names it in logs and errors.
pub fn follow(
    address: &str,
    action: &str,
    timeout: Duration,
    observer: Option<&Observer>,
) -> Result<(), OsError> {
    let connect_error = |e: zbus::Error| {
        OsError::Failed(format!(
            "{action}: connecting to the transaction at {address}: {e}"
        ))
    };
    let conn = zbus::blocking::connection::Builder::address(address)
        .map_err(connect_error)?
        .p2p()
        .method_timeout(CALL_TIMEOUT)
        .build()
        .map_err(connect_error)?;
    let events = listen(&conn);

    let started = conn
        .call_method(None::<&str>, "/", Some(INTERFACE), "Start", &())
        .and_then(|reply| reply.body().deserialize::<bool>());
    let outcome = match started {
        Ok(started) => {
            if !started {
                tracing::info!("{action}: joined a transaction another client started");
            }
            wait(&conn, &events, action, timeout, observer)
        }
        Err(e) => Err(errors::from_call(
            &format!("{action}: starting the transaction"),
            e,
        )),
    };
    // Ends the listener thread; the daemon finishes the transaction once we are gone.
    let _ = conn.close();
    outcome
}

/// Forwards the transaction's signals to a channel from a thread of its own, so that the
/// caller can wait with a deadline.
fn listen(conn: &Connection) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    let messages = MessageIterator::from(conn);
    thread::Builder::new()
        .name("rpm-ostree-txn".into())
        .spawn(move || {
            for msg in messages {
                let Ok(msg) = msg else { break };
                if let Some(event) = decode(&msg) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Event::Closed);
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::warn!("starting the transaction listener: {e}"));
    rx
}

fn decode(msg: &zbus::Message) -> Option<Event> {
    if msg.message_type() != Type::Signal {
        return None;
    }
    let header = msg.header();
    if header.interface().map(|i| i.as_str()) != Some(INTERFACE) {
        return None;
    }
    let body = msg.body();
    let progress = match header.member()?.as_str() {
        "Finished" => {
            let (success, error) = body.deserialize::<(bool, String)>().ok()?;
            return Some(Event::Finished(success, error));
        }
        "Message" => Progress::Message(body.deserialize().ok()?),
        "TaskBegin" => Progress::TaskBegin(body.deserialize().ok()?),
        "TaskEnd" => Progress::TaskEnd(body.deserialize().ok()?),
        "PercentProgress" => {
            let (text, percent) = body.deserialize::<(String, u32)>().ok()?;
            Progress::Percent { text, percent }
        }
        "DownloadProgress" => {
            let (_, _, _, _, (fetched, requested), (bytes, bytes_per_second)) =
                body.deserialize::<DownloadBody>().ok()?;
            Progress::Download {
                fetched,
                requested,
                bytes,
                bytes_per_second,
            }
        }
        "ProgressEnd" => Progress::End,
        _ => return None,
    };
    Some(Event::Progress(progress))
}

fn wait(
    conn: &Connection,
    events: &mpsc::Receiver<Event>,
    action: &str,
    timeout: Duration,
    observer: Option<&Observer>,
) -> Result<(), OsError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Progress(p)) => {
                log(action, &p);
                if let Some(observer) = observer {
                    observer(&p);
                }
            }
            Ok(Event::Finished(true, _)) => return Ok(()),
            Ok(Event::Finished(false, message)) => {
                return Err(errors::from_finished(action, &message))
            }
            Ok(Event::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(OsError::Failed(format!(
                    "{action}: rpm-ostreed closed the transaction before it finished; \
                     see `journalctl -u rpm-ostreed`"
                )))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let cancel = conn.call_method(None::<&str>, "/", Some(INTERFACE), "Cancel", &());
                let cancelled = match cancel {
                    Ok(_) => "asked rpm-ostreed to cancel it".to_owned(),
                    Err(e) => format!("cancelling it failed too: {e}"),
                };
                return Err(OsError::Failed(format!(
                    "{action}: the transaction did not finish within {}s; {cancelled}",
                    timeout.as_secs()
                )));
            }
        }
    }
}

fn log(action: &str, p: &Progress) {
    match p {
        Progress::Message(text) => tracing::info!("{action}: {}", text.trim_end()),
        Progress::TaskBegin(text) => tracing::info!("{action}: {text}…"),
        Progress::TaskEnd(text) => tracing::info!("{action}: {text}"),
        Progress::Percent { text, percent } => tracing::debug!("{action}: {text} {percent}%"),
        Progress::Download {
            fetched,
            requested,
            bytes,
            bytes_per_second,
        } => tracing::debug!(
            "{action}: fetched {fetched}/{requested} objects, {bytes} bytes at {bytes_per_second} B/s"
        ),
        Progress::End => {}
    }
}
