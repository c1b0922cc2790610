//! Prometheus metrics of the node agent, served as text on a local address.
//!
//! - `hkd_upgrade_phase{phase}`: 1 for the current phase, 0 for the others;
//! - `hkd_transitions_total{from,to}`: phase changes;
//! - `hkd_failures_total{reason}`: upgrades that ended failed or rolled back, by where they
//!   failed (stage, drain, reboot, health, not_booted, rollback);
//! - `hkd_last_success_timestamp_seconds`: when an upgrade last ended done.
//!
//! The server answers every request with the whole text and closes: a scrape is one request.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    pub fn serve(&self, listener: TcpListener) {
        for stream in listener.incoming().flatten() {
            if let Err(e) = self.answer(stream) {
                tracing::debug!("metrics client: {e}");
            }
        }
    }

    fn answer(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request)?;
        let body = self.render();
        let head = if request.starts_with("GET /metrics ") || request.starts_with("GET / ") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
        } else {
            return (&stream).write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        };
        (&stream).write_all(head.as_bytes())?;
        (&stream).write_all(body.as_bytes())
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

    #[test]
    fn an_address_in_use_says_which_and_what_to_do() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(taken.local_addr().unwrap()).unwrap_err().to_string();
        assert!(err.ends_with("change metrics.listen"), "{err}");
    }
}
