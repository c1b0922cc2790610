//! `hkctl status --watch` in a real terminal: tmux (Debian's package) runs it at 80×30 against
//! a rollout in progress — the real coordinator in this process, simulated agents writing
//! their phases — and the screen is captured as it changes.
//!
//! Checked on every capture: each node has exactly one row (a stale row of an earlier frame
//! would show a name twice), every row reads as a row (no leftover characters of a longer
//! earlier line), nothing passes 80 columns. Over the captures: rows change phase as the
//! agents report, and the screen ends Complete. Then Ctrl-C: the program exits with status 0
//! and the cursor it hid is visible again. Colours are on in the terminal, and off with
//! NO_COLOR.

mod support;

#[path = "hkctl/sim.rs"]
mod sim;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sim::{Rig, IMAGE};

/// A tmux server of this test's own (`-L`), so nothing else's sessions are touched.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Result<Tmux> {
        which("tmux")?;
        Ok(Tmux {
            socket: format!("hkctl-{name}-{}", std::process::id()),
        })
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .context("running tmux")?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start `command` in a detached 80×30 window.
    fn start(&self, session: &str, command: &str) -> Result<()> {
        self.run(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "80",
            "-y",
            "30",
            command,
        ])?;
        Ok(())
    }

    fn screen(&self, session: &str) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", session])
    }

    fn screen_with_attributes(&self, session: &str) -> Result<String> {
        self.run(&["capture-pane", "-p", "-e", "-t", session])
    }

    fn format(&self, session: &str, f: &str) -> Result<String> {
        Ok(self
            .run(&["display-message", "-p", "-t", session, f])?
            .trim()
            .to_owned())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{program} not found: apt-get install {program} (tools/test-all.sh installs it)");
    }
    Ok(())
}

const PHASES: &[&str] = &[
    "Pending",
    "Waiting",
    "Granted",
    "Staging",
    "Staged",
    "Draining",
    "Rebooting",
    "Verifying",
    "Done",
    "Failed",
];

/// The rows of a captured screen, checked; returns (node, phase) per row.
fn rows(screen: &str, nodes: &[String]) -> Result<Vec<(String, String)>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in screen.lines() {
        ensure!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}"
        );
        let Some(name) = nodes.iter().find(|n| line.starts_with(n.as_str())) else {
            continue;
        };
        ensure!(
            seen.insert(name.clone()),
            "node {name} shown twice:\n{screen}"
        );
        let cells: Vec<&str> = line.split_whitespace().collect();
        ensure!(cells.len() >= 3, "a short row: {line:?}\n{screen}");
        ensure!(
            matches!(cells[1], "cp" | "worker") && PHASES.contains(&cells[2]),
            "not a row: {line:?}\n{screen}"
        );
        out.push((name.clone(), cells[2].to_owned()));
    }
    ensure!(
        seen.len() == nodes.len(),
        "{} of {} nodes on screen:\n{screen}",
        seen.len(),
        nodes.len()
    );
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_a_rollout_in_tmux_and_exits_on_ctrl_c() -> Result<()> {
    let tmux = Tmux::new("watch")?;
    let rig = Rig::new("w", 1, 3).await?;
    let nodes = rig.all();
    let _coordinator = rig.coordinator();
    let _agents = rig.agents(Duration::from_millis(500), &[]);
    // A shell around hkctl reports its exit status and keeps the pane (and its cursor
    // state, which tmux resets when a pane dies) after hkctl ends; its trap lets Ctrl-C
    // reach hkctl alone.
    let command = |no_color: &str| {
        format!(
            "sh -c 'trap true INT; {no_color} {} --kubeconfig {} -n {} status --watch; \
             echo hkctl-exit=$?; sleep 600'",
            env!("CARGO_BIN_EXE_hkctl"),
            rig.kubeconfig.display(),
            rig.env.ns
        )
    };
    let sel = rig.selector();
    rig.hkctl(&["upgrade", "--image", IMAGE, "--selector", &sel])
        .await?
        .ok()?;
    tmux.start("watch", &command("env -u NO_COLOR"))?;
    tmux.start("plain", &command("env NO_COLOR=1"))?;

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut phases_seen: BTreeSet<String> = BTreeSet::new();
    let mut frames = 0;
    let complete = loop {
        let screen = tmux.screen("watch")?;
        if screen.contains(&format!("Update {}/os", rig.env.ns)) {
            frames += 1;
            for (_, phase) in rows(&screen, &nodes)? {
                phases_seen.insert(phase);
            }
            if screen.contains("State    Complete") {
                break screen;
            }
        }
        if Instant::now() > deadline {
            bail!("no Complete on screen after 120 s; last screen:\n{screen}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    ensure!(frames >= 5, "only {frames} captures of the rollout");
    ensure!(
        ["Pending", "Draining", "Done"]
            .iter()
            .all(|p| phases_seen.contains(*p)),
        "rows did not move through the rollout; phases seen: {phases_seen:?}"
    );
    let end = rows(&complete, &nodes)?;
    ensure!(end.iter().all(|(_, p)| p == "Done"), "{complete}");
    ensure!(complete.contains("4/4 done"), "{complete}");

    // Colours on the terminal, none with NO_COLOR; both on the same screen otherwise.
    let coloured = tmux.screen_with_attributes("watch")?;
    ensure!(
        coloured.contains("\x1b["),
        "no colours on a terminal:\n{coloured}"
    );
    let plain_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let plain = tmux.screen_with_attributes("plain")?;
        if plain.contains("State    Complete") {
            ensure!(
                !plain.contains("\x1b["),
                "colours despite NO_COLOR:\n{plain}"
            );
            break;
        }
        if Instant::now() > plain_deadline {
            bail!("the NO_COLOR screen did not reach Complete:\n{plain}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // Ctrl-C: a clean exit, the cursor shown again.
    ensure!(
        tmux.format("watch", "#{cursor_flag}")? == "0",
        "the cursor is not hidden while watching"
    );
    tmux.run(&["send-keys", "-t", "watch", "C-c"])?;
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let screen = tmux.screen("watch")?;
        if screen.contains("hkctl-exit=") {
            break screen;
        }
        if Instant::now() > exit_deadline {
            bail!("hkctl did not exit on Ctrl-C:\n{screen}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        after.contains("hkctl-exit=0"),
        "exit status after Ctrl-C:\n{after}"
    );
    ensure!(
        tmux.format("watch", "#{cursor_flag}")? == "1",
        "the cursor stayed hidden"
    );
    let last = tmux.screen("watch")?;
    rows(&last, &nodes).context("the last frame after Ctrl-C")?;
    Ok(())
}
