//! One transaction of the rpm-ostreed stand-in, served on its own peer-to-peer socket.

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use zbus::blocking::Connection;

use super::model::Hooks;
use super::Shared;

const TRANSACTION_INTERFACE: &str = "org.projectatomic.rpmostree1.Transaction";

pub(super) fn message(conn: &Connection, text: &str) {
    emit(conn, "Message", &(text,));
}

pub(super) fn emit<B>(conn: &Connection, signal: &str, body: &B)
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let _ = conn.emit_signal(None::<&str>, "/", TRANSACTION_INTERFACE, signal, body);
}

pub(super) struct Job {
    pub(super) shared: Arc<Shared>,
    pub(super) title: String,
    pub(super) hooks: Hooks,
    pub(super) work: super::Work,
}

/// Serves one transaction on its socket: the client connects, calls Start, gets the signals.
pub(super) fn serve_transaction(listener: UnixListener, job: Job) {
    let Ok((stream, _)) = listener.accept() else {
        return;
    };
    let (done_tx, done_rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let iface = Transaction {
        title: job.title.clone(),
        cancel: cancel.clone(),
        job: Mutex::new(Some((job, done_tx))),
    };
    let conn = zbus::blocking::connection::Builder::async_io_unix_stream(stream)
        .server(zbus::Guid::generate())
        .map(|b| b.p2p())
        .and_then(|b| b.serve_at("/", iface))
        .and_then(|b| b.build());
    let Ok(conn) = conn else { return };
    // Like the daemon, keep the transaction until it finished (or its client went away).
    let _ = done_rx.recv();
    drop(conn);
}

struct Transaction {
    title: String,
    cancel: Arc<AtomicBool>,
    job: Mutex<Option<(Job, mpsc::Sender<()>)>>,
}

#[zbus::interface(name = "org.projectatomic.rpmostree1.Transaction")]
impl Transaction {
    #[zbus(property)]
    fn title(&self) -> String {
        self.title.clone()
    }

    #[zbus(property)]
    fn initiating_client_description(&self) -> String {
        String::new()
    }

    fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    fn start(&self, #[zbus(connection)] conn: &zbus::Connection) -> bool {
        let Some((job, done)) = self.job.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return false;
        };
        let conn = Connection::from(conn.clone());
        let cancel = self.cancel.clone();
        thread::spawn(move || run(job, &conn, &cancel, done));
        true
    }
}

fn run(job: Job, conn: &Connection, cancel: &AtomicBool, done: mpsc::Sender<()>) {
    // The daemon never signals before Start has returned.
    thread::sleep(Duration::from_millis(20));
    if let Some(slow) = job.hooks.slow_next {
        let until = Instant::now() + slow;
        while Instant::now() < until && !cancel.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
        }
    }
    if job.hooks.vanish_next {
        // Gone without a word: no Finished, the connection closed under the client.
        job.shared.model().active = None;
        let _ = conn.clone().close();
        let _ = done.send(());
        return;
    }
    let outcome = if job.hooks.cancel_next || cancel.load(Ordering::SeqCst) {
        Err("Operation was cancelled".to_owned())
    } else if let Some(message) = job.hooks.fail_next {
        Err(message)
    } else {
        let done_work = (job.work)(&mut job.shared.model(), conn);
        match job.hooks.fail_after_work_next {
            Some(message) if done_work.is_ok() => Err(message),
            _ => done_work,
        }
    };
    job.shared.model().active = None;
    job.shared.announce();
    match outcome {
        Ok(()) => emit(conn, "Finished", &(true, "")),
        Err(e) => emit(conn, "Finished", &(false, e.as_str())),
    }
    let _ = done.send(());
}
