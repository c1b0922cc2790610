//! `hkctl status`: read the Update and the Nodes, build the document ([`super::view`]), print
//! it as a table, a wide table, JSON or YAML; with `--watch`, redraw whenever a watch event
//! changes the Update or a Node (a one-second tick only ages the AGE column; it asks the API
//! server nothing).
//!
//! On a terminal the redraw overwrites the previous frame in place (cursor home, each line
//! cleared to its end, the rest of the screen cleared), so nothing flickers and no longer
//! earlier line leaves characters behind; the cursor is hidden while watching and shown again
//! on Ctrl-C. Elsewhere each frame is printed in full after a blank line.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, Result};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::render::{self, Term};
use super::view::{self, RolloutStatus};
use super::Ctx;
use crate::cluster::annotations::NodeView;
use crate::cluster::ledger;
use crate::cluster::update::Update;

/// Nodes per list page: a 2000-node cluster in four round trips, each a few MB at most.
const PAGE: u32 = 500;

/// Redraws are at most this often, however many events arrive.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The rollout at a glance, fitted to the terminal
    Table,
    /// Every column unshortened
    Wide,
    /// The RolloutStatus document (schema/rollout-status.v1.json)
    Json,
    /// The same document as YAML
    Yaml,
}

/// Every Node, as the planner sees them.
pub async fn list_nodes(ctx: &Ctx) -> Result<Vec<NodeView>> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut views = Vec::new();
    let mut lp = ListParams::default().limit(PAGE);
    loop {
        let page = api
            .list(&lp)
            .await
            .map_err(|e| ctx.fail("listing Nodes", e))?;
        views.extend(page.items.iter().map(NodeView::from_node));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(views),
        }
    }
}

/// The document, printed in `output`'s form.
pub fn print(
    s: &RolloutStatus,
    output: Output,
    now: Timestamp,
    term: Term,
    out: &mut dyn Write,
) -> Result<()> {
    match output {
        Output::Table => {
            for l in render::table(s, now, term) {
                writeln!(out, "{l}")?;
            }
        }
        Output::Wide => {
            for l in render::wide(s, now, term) {
                writeln!(out, "{l}")?;
            }
        }
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, s)?;
            writeln!(out)?;
        }
        Output::Yaml => {
            let mut text = String::new();
            crate::cluster::yaml::emit(&serde_json::to_value(s)?, &mut text);
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// `hkctl status` once.
pub async fn once(
    ctx: &Ctx,
    name: Option<&str>,
    output: Output,
    term: Term,
    out: &mut dyn Write,
) -> Result<()> {
    let update = ctx.pick_update(name).await?;
    let mut nodes = list_nodes(ctx).await?;
    let updates = all_updates(ctx).await?;
    ledger::attach(&mut nodes, &updates);
    let now = Timestamp::now();
    print(&view::build(&update, &nodes, now), output, now, term, out)
}

/// Every Update of the namespace: a node's grant is the latest of all their ledgers.
pub async fn all_updates(ctx: &Ctx) -> Result<Vec<Update>> {
    Ok(ctx
        .updates()
        .list(&ListParams::default())
        .await
        .map_err(|e| ctx.fail("listing Updates", e))?
        .items)
}

/// What changed, from the watches.
enum Change {
    Update(String, Option<Box<Update>>),
    Node(String, Option<Box<NodeView>>),
    NodesRestarted(Vec<NodeView>),
    Error(String),
    Nothing,
}

/// `hkctl status --watch`: redraw on every change until Ctrl-C.
pub async fn watch(
    ctx: &Ctx,
    name: Option<&str>,
    output: Output,
    term: Term,
    tty: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let first = ctx.pick_update(name).await?;
    let name = first.name_any();
    // All Updates (for the ledgers), the one shown among them.
    let mut updates: BTreeMap<String, Update> = all_updates(ctx)
        .await?
        .into_iter()
        .map(|u| (u.name_any(), u))
        .collect();
    updates.insert(name.clone(), first);
    let mut nodes: BTreeMap<String, NodeView> = list_nodes(ctx)
        .await?
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();

    let update_events = watcher(ctx.updates(), watcher::Config::default()).map(|ev| match ev {
        Ok(watcher::Event::Apply(u)) | Ok(watcher::Event::InitApply(u)) => {
            Change::Update(u.name_any(), Some(Box::new(u)))
        }
        Ok(watcher::Event::Delete(u)) => Change::Update(u.name_any(), None),
        Ok(_) => Change::Nothing,
        Err(e) => Change::Error(e.to_string()),
    });
    let mut restart: Vec<NodeView> = Vec::new();
    let node_events = watcher(
        Api::<Node>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .map(move |ev| match ev {
        Ok(watcher::Event::Apply(n)) => {
            Change::Node(n.name_any(), Some(Box::new(NodeView::from_node(&n))))
        }
        Ok(watcher::Event::Delete(n)) => Change::Node(n.name_any(), None),
        Ok(watcher::Event::Init) => {
            restart.clear();
            Change::Nothing
        }
        Ok(watcher::Event::InitApply(n)) => {
            restart.push(NodeView::from_node(&n));
            Change::Nothing
        }
        Ok(watcher::Event::InitDone) => Change::NodesRestarted(std::mem::take(&mut restart)),
        Err(e) => Change::Error(e.to_string()),
    });
    let mut changes = futures::stream::select(update_events.boxed(), node_events.boxed());
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warning: Option<String> = None;
    let mut frames = 0usize;
    if tty {
        write!(out, "\x1b[?25l\x1b[H\x1b[2J")?;
    }
    let result = loop {
        {
            let now = Timestamp::now();
            let mut text = Vec::new();
            match updates.get(&name) {
                Some(u) => {
                    let mut all: Vec<NodeView> = nodes.values().cloned().collect();
                    let ledgers: Vec<Update> = updates.values().cloned().collect();
                    ledger::attach(&mut all, &ledgers);
                    print(&view::build(u, &all, now), output, now, term, &mut text)?;
                }
                None => writeln!(text, "Update {}/{name} was deleted.", ctx.namespace)?,
            }
            if let Some(w) = &warning {
                writeln!(text, "watch: {w}")?;
            }
            let text = String::from_utf8_lossy(&text).into_owned();
            draw(out, &text, tty, frames)?;
            frames += 1;
        }
        tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            // Only the AGE column moves; nothing is asked of the API server.
            _ = tick.tick(), if tty && output != Output::Json && output != Output::Yaml => {}
            change = changes.next() => {
                let Some(change) = change else {
                    break Err(anyhow!("the watches on the API server at {} ended", ctx.server));
                };
                let mut apply = |c: Change| match c {
                    Change::Update(n, Some(u)) => { updates.insert(n, *u); warning = None; }
                    Change::Update(n, None) => { updates.remove(&n); }
                    Change::Node(n, Some(v)) => { nodes.insert(n, *v); warning = None; }
                    Change::Node(n, None) => { nodes.remove(&n); }
                    Change::NodesRestarted(all) if !all.is_empty() => {
                        nodes = all.into_iter().map(|n| (n.name.clone(), n)).collect();
                    }
                    Change::NodesRestarted(_) | Change::Nothing => {}
                    Change::Error(e) => warning = Some(e),
                };
                apply(change);
                // Events that came together make one frame.
                let pause = tokio::time::sleep(REDRAW_EVERY);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        _ = &mut pause => break,
                        more = changes.next() => match more {
                            Some(c) => apply(c),
                            None => break,
                        },
                    }
                }
            }
        }
    };
    if tty {
        write!(out, "\x1b[?25h")?;
    }
    writeln!(out)?;
    out.flush()?;
    result
}

/// Draw one frame: over the previous one on a terminal, after it elsewhere.
fn draw(out: &mut dyn Write, text: &str, tty: bool, frames: usize) -> Result<()> {
    if tty {
        let height = super::terminal_height().unwrap_or(usize::MAX);
        let mut lines: Vec<&str> = text.lines().collect();
        if lines.len() >= height {
            let hidden = lines.len() + 2 - height;
            lines.truncate(height.saturating_sub(2));
            let more = format!("… {hidden} more line(s); a taller terminal or -o wide shows all");
            let mut frame = String::from("\x1b[H");
            for l in &lines {
                frame.push_str(l);
                frame.push_str("\x1b[K\n");
            }
            frame.push_str(&more);
            frame.push_str("\x1b[K\x1b[J");
            out.write_all(frame.as_bytes())?;
        } else {
            let mut frame = String::from("\x1b[H");
            for l in &lines {
                frame.push_str(l);
                frame.push_str("\x1b[K\n");
            }
            frame.push_str("\x1b[J");
            out.write_all(frame.as_bytes())?;
        }
    } else {
        if frames > 0 {
            writeln!(out)?;
        }
        out.write_all(text.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
