//! Prometheus metrics of the node agent, served as text on a local address.
//!
//! - `hkd_upgrade_phase{phase}`: 1 for the current phase, 0 for the others;
//! - `hkd_transitions_total{from,to}`: phase changes;
//! - `hkd_failures_total{reason}`: upgrades that ended failed or rolled back, by where they
//!   failed (stage, drain, reboot, health, not_booted, rollback);
//! - `hkd_last_success_timestamp_seconds`: when an upgrade last ended done;
//! - `hkd_rollout_*`: the rollouts, on the node whose coordinator leads
//!   ([`crate::cluster::rollout_metrics`]).
//!
//! The server answers every request with the whole text and closes: a scrape is one request.
//! Anyone who can reach the address can connect, so no client can hold it: each is answered
//! on a thread of its own (at most [`MAX_CLIENTS`] at once; more are closed at once, and a
//! scraper retries), its request line must arrive whole within [`REQUEST_DEADLINE`] and
//! [`MAX_REQUEST_LINE`] bytes, and the answer is abandoned when the client stops reading for
//! [`WRITE_TIMEOUT`]. A client that connects and says nothing, or trickles bytes, ends on its
//! own without delaying the next scrape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Clients answered at once: a scraper or two, and room for an admin's curl.
pub const MAX_CLIENTS: usize = 8;
/// How long a client has to send its whole request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// The longest request line read ("GET /metrics HTTP/1.1" is 21 bytes).
pub const MAX_REQUEST_LINE: usize = 1024;
/// How long an answer waits for a client that stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::machine::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    phase: Family<PhaseLabel, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    failures: Family<ReasonLabel, Counter>,
    last_success: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hkd");
        let phase = Family::<PhaseLabel, Gauge>::default();
        let transitions = Family::<TransitionLabels, Counter>::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let last_success = Gauge::default();
        registry.register(
            "upgrade_phase",
            "Current phase of the node's upgrade",
            phase.clone(),
        );
        registry.register(
            "transitions",
            "Phase changes of the node's upgrade",
            transitions.clone(),
        );
        registry.register(
            "failures",
            "Upgrades that failed or were rolled back, by where",
            failures.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When an upgrade last ended done (Unix time)",
            last_success.clone(),
        );
        // The rollouts, as this process's coordinator (when it leads) planned them.
        crate::cluster::rollout_metrics::global().register(&mut registry);
        let metrics = Metrics {
            registry: Mutex::new(registry),
            phase,
            transitions,
            failures,
            last_success,
        };
        metrics.set_phase(Phase::Idle);
        metrics
    }

    /// Every phase has its series, 1 for `current` and 0 for the others.
    pub fn set_phase(&self, current: Phase) {
        for phase in Phase::ALL {
            let value = i64::from(phase == current);
            self.phase
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str().into(),
                })
                .set(value);
        }
    }

    pub fn transition(&self, from: Phase, to: Phase) {
        self.transitions
            .get_or_create(&TransitionLabels {
                from: from.as_str().into(),
                to: to.as_str().into(),
            })
            .inc();
        self.set_phase(to);
    }

    pub fn failure(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn success(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            text::encode(&mut out, &registry).expect("writing to a String does not fail");
        }
        out
    }

    /// Serves the text on `listener` until it fails. Blocks: run it on its own thread.
    pub fn serve(self: Arc<Self>, listener: TcpListener) {
        let clients = Arc::new(AtomicUsize::new(0));
        for stream in listener.incoming().flatten() {
            if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                clients.fetch_sub(1, Ordering::SeqCst);
                tracing::debug!("metrics client refused: {MAX_CLIENTS} already being answered");
                continue; // dropped: closed at once
            }
            let (metrics, count) = (self.clone(), clients.clone());
            let spawned = std::thread::Builder::new()
                .name("metrics-client".into())
                .spawn(move || {
                    if let Err(e) = metrics.answer(stream) {
                        tracing::debug!("metrics client: {e}");
                    }
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                clients.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn answer(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let request = read_request_line(&stream, Instant::now() + REQUEST_DEADLINE)?;
        let body = self.render();
        let head = if request.starts_with("GET /metrics ") || request.starts_with("GET / ") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
        } else {
            (&stream).write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            drain(&stream);
            return Ok(());
        };
        (&stream).write_all(head.as_bytes())?;
        (&stream).write_all(body.as_bytes())?;
        drain(&stream);
        Ok(())
    }
}

/// The request's first line: whole before `deadline` and within [`MAX_REQUEST_LINE`] bytes,
/// else an error (the connection is then dropped). Read in chunks, so the headers that came
/// with it are consumed too (unread input would make the close a reset that loses the
/// answer); what comes after the first chunk holding the line is left to [`drain`].
fn read_request_line(mut stream: &TcpStream, deadline: Instant) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    let mut got = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            got.truncate(end);
            break;
        }
        if got.len() > MAX_REQUEST_LINE {
            return Err(Error::new(ErrorKind::InvalidData, "request line too long"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorKind::TimedOut,
                "no whole request line in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n => got.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// After the answer: the rest of what the client sent, read and dropped (at most 64 KiB,
/// for at most half a second), so that closing does not reset the connection under the
/// answer it is still reading.
fn drain(mut stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < 64 << 10 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Binds the metrics address; a clear error names it.
pub fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).map_err(|e| {
        anyhow::anyhow!("listening for metrics on {address}: {e}; change metrics.listen")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn phases_transitions_and_failures_are_counted() {
        let m = Metrics::new();
        m.transition(Phase::Idle, Phase::Staging);
        m.transition(Phase::Staging, Phase::Staged);
        m.failure("health");
        m.failure("health");
        m.success();
        let text = m.render();
        assert!(
            text.contains("hkd_upgrade_phase{phase=\"staged\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hkd_upgrade_phase{phase=\"idle\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("hkd_transitions_total{from=\"idle\",to=\"staging\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hkd_failures_total{reason=\"health\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("hkd_last_success_timestamp_seconds "),
            "{text}"
        );
    }

    #[test]
    fn served_over_real_tcp() {
        let m = std::sync::Arc::new(Metrics::new());
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let server = m.clone();
        std::thread::spawn(move || server.serve(listener));
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("hkd_upgrade_phase{phase=\"idle\"} 1"),
            "{answer}"
        );
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }

    /// A scrape's answer, or the error that ended it.
    fn scrape(address: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    #[test]
    fn silent_slow_and_greedy_clients_do_not_hold_the_endpoint() {
        let m = std::sync::Arc::new(Metrics::new());
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || m.serve(listener));

        // Clients that connect and say nothing, one fewer than the limit: a scrape beside
        // them is answered at once.
        let silent: Vec<TcpStream> = (0..MAX_CLIENTS - 1)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(scrape(address).unwrap().starts_with("HTTP/1.1 200 OK"));
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

        // A client trickling one byte at a time is cut off at the deadline.
        let mut slow = TcpStream::connect(address).unwrap();
        let t0 = Instant::now();
        let mut cut = false;
        for _ in 0..40 {
            if slow.write_all(b"G").is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(cut, "a trickling client was kept for {:?}", t0.elapsed());
        assert!(t0.elapsed() < REQUEST_DEADLINE + Duration::from_secs(2));

        // A request line longer than any real one: dropped without an answer.
        let mut greedy = TcpStream::connect(address).unwrap();
        let _ = greedy.write_all(&vec![b'A'; 4 * MAX_REQUEST_LINE]);
        let mut answer = Vec::new();
        let _ = greedy.read_to_end(&mut answer);
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

        // The silent ones are gone by now too: the whole limit is free again.
        drop(silent);
        std::thread::sleep(REQUEST_DEADLINE);
        let answers: Vec<_> = (0..MAX_CLIENTS)
            .map(|_| std::thread::spawn(move || scrape(address)))
            .collect();
        for a in answers {
            assert!(a.join().unwrap().unwrap().starts_with("HTTP/1.1 200 OK"));
        }
    }

    #[test]
    fn an_address_in_use_says_which_and_what_to_do() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(taken.local_addr().unwrap()).unwrap_err().to_string();
        assert!(err.ends_with("change metrics.listen"), "{err}");
    }
}
