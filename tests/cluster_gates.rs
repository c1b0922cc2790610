//! Reboot gates against a real Prometheus (Debian's `prometheus` package, 2.42): the test starts
//! it on 127.0.0.1 with a rule file and one scrape target the test serves itself (a tiny HTTP
//! server whose metrics the test flips), and a real coordinator asks it before each grant.
//!
//! Shown: a gate expression that turns true mid-rollout holds the next grant, named on the
//! Update's status and in `hkctl status`; a per-node gate (`$node`) holds its node only,
//! named on its row, though a slot is free; turning the gate false lets the rollout go on; an
//! Alertmanager-style filter (`severity=~"critical|page",node="$node"`) over Prometheus's own
//! `/api/v1/alerts` holds only the node its firing alert names, and an `info` alert on another
//! node holds nothing; Prometheus stopped: the rollout is held and says so; started again:
//! it completes; an expression Prometheus rejects holds the next rollout with Prometheus's
//! own error. Against a Prometheus that requires basic auth: the credentials from Secret
//! `housekeeper-prometheus` are let in, a wrong password (401) and a missing Secret hold.
//!
//! Stand-ins: the kubelet (`support::kubelet`) and hkd's agents (`hkctl/sim.rs`, which write
//! the phase annotations); the API server, the coordinator, hkctl and Prometheus are real.

mod support;

#[path = "hkctl/sim.rs"]
mod sim;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use housekeeper::cluster::update::Update;
use sim::{Rig, IMAGE};
use support::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a rollout of three simulated nodes may take on a busy 2-core machine.
const ROLLOUT: Duration = Duration::from_secs(90);
/// One simulated agent step: four per node, long enough that Prometheus (scraping and
/// evaluating every second) sees a flipped metric while a node is still in flight.
const STEP: Duration = Duration::from_millis(1000);

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The scrape target: serves `body` as Prometheus's text format on every request.
struct Target {
    body: Arc<Mutex<String>>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    async fn start() -> Result<Target> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let body = Arc::new(Mutex::new(String::new()));
        let b = body.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let b = b.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = b.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        Ok(Target { body, port, task })
    }

    fn set(&self, text: String) {
        *self.body.lock().unwrap() = text;
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The webhook receiver: records every POST body; answers 500 to the first, 200 after.
struct Webhook {
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    async fn start() -> Result<Webhook> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let mut req = Vec::new();
                let body = loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                    let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break Some(req[end + 4..end + 4 + len].to_vec());
                    }
                };
                let Some(body) = body else { continue };
                let first = {
                    let mut got = g.lock().unwrap();
                    got.push(serde_json::from_slice(&body).unwrap_or_default());
                    got.len() == 1
                };
                let status = if first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        Ok(Webhook { got, port, task })
    }

    fn events(&self) -> Vec<(String, String)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["event"].as_str().unwrap_or("").to_owned(),
                    v["id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// hkd's own metrics server (the node's metrics and the rollouts' of this process's
/// coordinator), as Prometheus scrapes it on a node.
fn hkd_metrics() -> Result<u16> {
    use housekeeper::node::metrics;
    let m = std::sync::Arc::new(metrics::Metrics::new());
    let listener = metrics::bind("127.0.0.1:0".parse()?)?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || m.serve(listener));
    Ok(port)
}

/// A Prometheus this test started; killed on drop.
struct Prometheus {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Basic auth required (`web.yml`).
    web_config: bool,
}

impl Prometheus {
    fn binary() -> Result<PathBuf> {
        for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
            if Path::new(p).exists() {
                return Ok(p.into());
            }
        }
        bail!("prometheus is not installed: apt-get install prometheus (Debian 12's package; tools/test-all.sh installs it)")
    }

    fn new(dir: &Path, targets: &[u16], rules: &str) -> Result<Prometheus> {
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [rules.yml]\n\
                 scrape_configs:\n\
                 - job_name: gatetest\n  static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ),
        )?;
        std::fs::write(dir.join("rules.yml"), rules)?;
        Ok(Prometheus {
            dir: dir.to_owned(),
            port: free_port()?,
            child: None,
            web_config: false,
        })
    }

    /// Require HTTP basic auth of `user` (`hash`: bcrypt) on every request.
    fn require_basic_auth(&mut self, user: &str, hash: &str) -> Result<()> {
        std::fs::write(
            self.dir.join("web.yml"),
            format!("basic_auth_users:\n  {user}: {hash}\n"),
        )?;
        self.web_config = true;
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) -> Result<()> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("prometheus.log"))?;
        let mut cmd = Command::new(Self::binary()?);
        if self.web_config {
            cmd.arg(format!(
                "--web.config.file={}",
                self.dir.join("web.yml").display()
            ));
        }
        let child = cmd
            .arg(format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        self.child = Some(child);
        let url = format!("{}/-/ready", self.url());
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                // Any HTTP answer (a 401 under basic auth too) says it is serving.
                Ok(tokio::task::spawn_blocking(move || {
                    matches!(ureq::get(&url).call(), Ok(_) | Err(ureq::Error::Status(..)))
                })
                .await?)
            }
        })
        .await
        .with_context(|| {
            let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            format!(
                "prometheus's log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Ask Prometheus itself (as the test's own check of what it sees).
    async fn get(&self, path_and_query: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path_and_query}", self.url());
        let body = tokio::task::spawn_blocking(move || -> Result<String> {
            Ok(ureq::get(&url).call()?.into_string()?)
        })
        .await??;
        Ok(serde_json::from_str(&body)?)
    }

    async fn query_len(&self, expr: &str) -> Result<usize> {
        let q: String = expr
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = self.get(&format!("/api/v1/query?query={q}")).await?;
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    }

    async fn firing(&self) -> Result<Vec<serde_json::Value>> {
        let v = self.get("/api/v1/alerts").await?;
        Ok(v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn metrics(gate: u8, busy: &[(&str, u8)]) -> String {
    let mut s = format!("# TYPE gate_hold gauge\ngate_hold {gate}\n# TYPE node_busy gauge\n");
    for (node, v) in busy {
        s.push_str(&format!("node_busy{{node=\"{node}\"}} {v}\n"));
    }
    s
}

fn progressing(u: &Update) -> (String, String) {
    u.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Progressing"))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

async fn granted(rig: &Rig, node: &str) -> Result<bool> {
    Ok(rig
        .grants()
        .await?
        .into_iter()
        .any(|(n, g)| n == node && g.is_some()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_gates_hold_grants_and_a_silent_prometheus_holds_the_rollout() -> Result<()> {
    let rig = Rig::new("gates", 0, 3).await?;
    let (w1, w2, w3) = (
        rig.workers[0].as_str(),
        rig.workers[1].as_str(),
        rig.workers[2].as_str(),
    );
    let target = Target::start().await?;
    // node_busy 2: what the per-node gate `node_busy{node="$node"} == 2` holds.
    target.set(metrics(0, &[(w1, 1), (w2, 0), (w3, 2)]));
    let dir = tempfile::tempdir()?;
    // NodeBusy (critical) fires for w1; NodeChatty (info) fires for w3 all along.
    let rules = [
        "groups:",
        "- name: gates",
        "  interval: 1s",
        "  rules:",
        "  - alert: NodeBusy",
        "    expr: node_busy == 1",
        "    labels: {severity: critical}",
        "  - alert: NodeChatty",
        &format!("    expr: node_busy{{node=\"{w3}\"}} >= 0"),
        "    labels: {severity: info}",
        "",
    ]
    .join("\n");
    let hkd_port = hkd_metrics()?;
    let webhook = Webhook::start().await?;
    let mut prom = Prometheus::new(dir.path(), &[target.port, hkd_port], &rules)?;
    prom.start().await?;
    wait_for("NodeBusy and NodeChatty firing", ROLLOUT, || async {
        Ok(prom.firing().await?.len() == 2)
    })
    .await?;

    let _agents = rig.agents(STEP, &[]);
    let _coordinator = rig.coordinator();
    let selector = rig.selector();
    let url = prom.url();
    rig.hkctl(&[
        "upgrade",
        "--image",
        IMAGE,
        "--selector",
        &selector,
        "--max-unavailable",
        "2",
        "--prometheus",
        &url,
        "--gate",
        "gate_hold > 0",
        "--gate",
        r#"node_busy{node="$node"} == 2"#,
        "--gate-alert",
        r#"severity=~"critical|page",node="$node""#,
        "--webhook",
        &format!("http://127.0.0.1:{}/hook", webhook.port),
    ])
    .await?
    .ok()?;

    // w1's critical alert holds w1 only: w2 goes first.
    wait_for("w2 granted", ROLLOUT, || granted(&rig, w2)).await?;
    ensure!(
        !granted(&rig, w1).await?,
        "{w1} granted while its alert fires"
    );
    // The gate turns true while w2 is in flight.
    // The per-node gate holds w3, though a slot is free, and says so on w3's row.
    wait_for("w3 held by the per-node gate, said so", ROLLOUT, || async {
        let u = rig.update("os").await?;
        let row = u
            .status
            .as_ref()
            .and_then(|s| s.nodes.iter().find(|n| n.name == w3).cloned());
        Ok(row.is_some_and(|r| {
            r.phase == "Waiting"
                && r.reason
                    .starts_with(&format!("gate node_busy{{node=\"{w3}\"}} == 2 holds:"))
        }))
    })
    .await?;
    ensure!(
        !granted(&rig, w3).await?,
        "{w3} granted while its gate holds"
    );
    target.set(metrics(1, &[(w1, 1), (w2, 0), (w3, 2)]));
    wait_for("Prometheus to see gate_hold 1", ROLLOUT, || async {
        Ok(prom.query_len("gate_hold > 0").await? == 1)
    })
    .await?;
    let u = rig.update("os").await?;
    let w2_done = u.status.as_ref().is_some_and(|s| s.counts.done >= 1);
    ensure!(
        !w2_done,
        "w2 finished before Prometheus saw the gate: STEP too short"
    );
    wait_for("the gate to hold the rollout, said so", ROLLOUT, || async {
        let u = rig.update("os").await?;
        let (reason, message) = progressing(&u);
        Ok(reason == "GateFiring"
            && u.status.as_ref().is_some_and(|s| s.counts.done == 1)
            && message.contains("gate gate_hold > 0 holds: {__name__=\"gate_hold\""))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !granted(&rig, w3).await?,
        "{w3} granted while the gate holds"
    );
    let status = rig.hkctl(&["status"]).await?.ok()?.stdout;
    ensure!(
        status.contains("held: gate gate_hold > 0 holds"),
        "{status}"
    );
    // The coordinator's metrics, scraped by the same Prometheus, say so too.
    let ns = rig.env.ns.clone();
    wait_for(
        "Prometheus to see the gate hold in hkd's metrics",
        ROLLOUT,
        || async {
            let q = format!("hkd_rollout_holds{{namespace=\"{ns}\",reason=\"GateFiring\"}} == 1");
            Ok(prom.query_len(&q).await? == 1)
        },
    )
    .await?;

    // The gate false again: w3 goes (its info alert matches no filter); w1 stays held.
    target.set(metrics(0, &[(w1, 1), (w2, 0), (w3, 0)]));
    wait_for("w3 done", ROLLOUT, || async {
        Ok(rig
            .update("os")
            .await?
            .status
            .is_some_and(|s| s.counts.done == 2))
    })
    .await?;
    ensure!(
        !granted(&rig, w1).await?,
        "{w1} granted while its alert fires"
    );
    let u = rig.update("os").await?;
    let row = u
        .status
        .as_ref()
        .and_then(|s| s.nodes.iter().find(|n| n.name == w1).cloned())
        .context("w1's row")?;
    ensure!(
        row.phase == "Waiting"
            && row.reason.starts_with(
                r#"alert firing (severity=~"critical|page", node="$node"): {alertname="NodeBusy""#
            ),
        "{row:?}"
    );
    let wide = rig.hkctl(&["status", "-o", "wide"]).await?.ok()?.stdout;
    ensure!(wide.contains("alert firing"), "{wide}");

    // Prometheus stopped: held, said so, though w1's alert would be gone by now.
    prom.stop();
    target.set(metrics(0, &[(w1, 0), (w2, 0), (w3, 0)]));
    wait_for("the rollout held for Prometheus", ROLLOUT, || async {
        let (reason, message) = progressing(&rig.update("os").await?);
        Ok(reason == "PrometheusUnavailable"
            && message.contains(&format!("asking Prometheus at {url}"))
            && message.contains("nothing is granted until it answers"))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !granted(&rig, w1).await?,
        "{w1} granted while Prometheus is down"
    );
    let status = rig.hkctl(&["status"]).await?.ok()?.stdout;
    ensure!(status.contains("asking Prometheus at"), "{status}");

    // Started again: it scrapes w1 idle, the alert resolves, w1 goes, the rollout completes.
    prom.start().await?;
    wait_for("the rollout to complete", ROLLOUT, || async {
        let u = rig.update("os").await?;
        Ok(u.status.and_then(|s| s.state).as_deref() == Some("Complete"))
    })
    .await?;

    wait_for(
        "Prometheus to see 3 nodes done in hkd's metrics",
        ROLLOUT,
        || async {
            let q = format!("hkd_rollout_nodes{{namespace=\"{ns}\",phase=\"done\"}} == 3");
            Ok(prom.query_len(&q).await? == 1)
        },
    )
    .await?;
    // The webhook: Started (answered 500, then sent again with the same id and answered 200),
    // then Complete.
    wait_for("the Complete notification", ROLLOUT, || async {
        Ok(webhook.events().iter().any(|(e, _)| e == "Complete"))
    })
    .await?;
    let events = webhook.events();
    ensure!(
        events.len() == 3
            && events[0].0 == "Started"
            && events[1] == events[0]
            && events[2].0 == "Complete",
        "{events:?}"
    );

    // An expression Prometheus rejects holds the next rollout, with Prometheus's error.
    let next = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:3";
    rig.hkctl(&["upgrade", "--image", next, "--gate", "gate_hold > ("])
        .await?
        .ok()?;
    wait_for("the rejected gate to hold, said so", ROLLOUT, || async {
        let (reason, message) = progressing(&rig.update("os").await?);
        Ok(reason == "GateRejected"
            && message
                .starts_with("held: Prometheus rejected query gate_hold > (: invalid parameter"))
    })
    .await?;
    ensure!(
        rig.grants()
            .await?
            .iter()
            .all(|(_, g)| g.as_deref().is_none_or(|g| g.ends_with("/1"))),
        "a grant of the new target under a rejected gate"
    );
    Ok(())
}

/// bcrypt of "s3cret" at cost 4 (cheap: Prometheus checks it on every request).
const PASSWORD_HASH: &str = "$2b$04$LrVRXL9wUvFjF07d66f9COJF0/t4mAZzMRP.sQ0X.UfAwK7qHF5BO";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_credentials_come_from_their_secret_and_a_wrong_one_holds() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams, PostParams};
    let rig = Rig::new("gates-auth", 0, 1).await?;
    let dir = tempfile::tempdir()?;
    let mut prom = Prometheus::new(dir.path(), &[], "groups: []\n")?;
    prom.require_basic_auth("hk", PASSWORD_HASH)?;
    prom.start().await?;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(rig.env.admin.clone(), &rig.env.ns);
    let secret = |password: &str| -> Result<Secret> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {"name": housekeeper::cluster::gates::CREDENTIALS_SECRET},
            "stringData": {"username": "hk", "password": password},
        }))?)
    };
    secrets
        .create(&PostParams::default(), &secret("wrong")?)
        .await?;
    let _agents = rig.agents(STEP, &[]);
    let _coordinator = rig.coordinator();
    let selector = rig.selector();
    let url = prom.url();
    // `vector(1)` always has a result: once Prometheus answers, the gate holds.
    rig.hkctl(&[
        "upgrade",
        "--image",
        IMAGE,
        "--selector",
        &selector,
        "--prometheus",
        &url,
        "--prometheus-credentials",
        "--gate",
        "vector(1)",
    ])
    .await?
    .ok()?;
    wait_for("a refused password to hold, said so", ROLLOUT, || async {
        let (reason, message) = progressing(&rig.update("os").await?);
        Ok(reason == "PrometheusUnavailable" && message.contains("HTTP 401"))
    })
    .await?;
    secrets
        .patch(
            housekeeper::cluster::gates::CREDENTIALS_SECRET,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"password": "s3cret"}})),
        )
        .await?;
    wait_for("the right password to be let in", ROLLOUT, || async {
        let (reason, message) = progressing(&rig.update("os").await?);
        Ok(reason == "GateFiring" && message.contains("gate vector(1) holds"))
    })
    .await?;
    // The Secret gone: held again, and the status names it.
    secrets
        .delete(
            housekeeper::cluster::gates::CREDENTIALS_SECRET,
            &Default::default(),
        )
        .await?;
    wait_for("a missing Secret to hold, said so", ROLLOUT, || async {
        let (reason, message) = progressing(&rig.update("os").await?);
        Ok(reason == "PrometheusUnavailable"
            && message.contains("reading Prometheus's credentials from Secret"))
    })
    .await?;
    ensure!(
        rig.grants().await?.iter().all(|(_, g)| g.is_none()),
        "a grant under a gate that never answered open"
    );
    Ok(())
}
