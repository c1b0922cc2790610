//! Human output of `hkctl status`: the table (fits the terminal's width, 80 columns when not a
//! terminal) and the wide table (everything, unshortened). Pure: the document, `now` and the
//! terminal's traits go in, lines come out; golden files in tests/hkctl/ hold the result.

use jiff::Timestamp;

use super::view::{in_flight, NodeRow, Role, RolloutStatus};

/// What the output goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// Columns available; lines never pass it in the table.
    pub width: usize,
    /// ANSI colours (a terminal, and no NO_COLOR).
    pub color: bool,
}

/// The table's width when the output is not a terminal, and its minimum.
pub const DEFAULT_WIDTH: usize = 80;

/// Width of the progress bar, in cells.
const BAR: usize = 24;

#[derive(Clone, Copy)]
enum Paint {
    Green,
    Red,
    Yellow,
    Cyan,
    Dim,
    Bold,
}

fn paint(term: Term, p: Paint, text: &str) -> String {
    if !term.color || text.is_empty() {
        return text.to_owned();
    }
    let code = match p {
        Paint::Green => "32",
        Paint::Red => "31",
        Paint::Yellow => "33",
        Paint::Cyan => "36",
        Paint::Dim => "2",
        Paint::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn phase_paint(phase: &str) -> Paint {
    match phase {
        "Done" => Paint::Green,
        "Failed" => Paint::Red,
        "Waiting" => Paint::Yellow,
        "Pending" => Paint::Dim,
        _ => Paint::Cyan,
    }
}

fn state_paint(state: &str) -> Paint {
    match state {
        "Complete" => Paint::Green,
        "Halted" => Paint::Red,
        "Paused" | "Waiting" => Paint::Yellow,
        _ => Paint::Cyan,
    }
}

/// The short name of an image reference for a narrow column: its last path component
/// (`…/nestos/nestos:2` → `nestos:2`, `remote:nestos/x86_64/stable` → `stable`), a checksum's
/// first 10 characters.
pub fn short_image(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let last = last.rsplit_once("://").map_or(last, |(_, r)| r);
    if last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit()) {
        return last[..10].to_owned();
    }
    if let Some((name, digest)) = last.split_once("@sha256:") {
        return format!("{name}@{}", &digest[..digest.len().min(8)]);
    }
    last.to_owned()
}

/// `5s`, `3m`, `2h`, `4d`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let s = now.duration_since(since).as_secs().max(0);
    match s {
        0..=99 => format!("{s}s"),
        100..=5999 => format!("{}m", s / 60),
        6000..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Cut `text` to `width` characters, marking the cut with `…`.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// Cut a name to `width` characters in its middle: node names differ most at their ends
/// (`ip-10-0-1-23.ec2.internal`, `prod-pool-a-worker-17`).
fn fit_name(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width || width < 5 {
        return fit(text, width);
    }
    let tail = (width - 1) / 2 + (width - 1) % 2;
    let head = width - 1 - tail;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

fn pad(text: &str, width: usize) -> String {
    let n = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(n)))
}

fn role(r: Role) -> &'static str {
    match r {
        Role::ControlPlane => "cp",
        Role::Worker => "worker",
    }
}

/// The node's version against the target's: `1→2` while it moves, `2` once there. The
/// image's name (`nestos:`) is left out when both share it; the header names the target.
fn version(row: &NodeRow, target: &str) -> String {
    let target = short_image(target);
    let name_len = target.rfind([':', '@']).map_or(0, |i| i + 1);
    let strip = |v: String| match v.strip_prefix(&target[..name_len]) {
        Some(rest) if name_len > 0 && !rest.is_empty() => rest.to_owned(),
        _ => v,
    };
    let tag = strip(target.clone());
    match row.current.as_deref().map(short_image) {
        Some(c) if c == target || row.phase == "Done" => strip(c),
        Some(c) => format!("{}→{tag}", strip(c)),
        None => format!("?→{tag}"),
    }
}

fn why(row: &NodeRow) -> String {
    row.reason.clone()
}

/// The progress bar over the selected nodes: done and failed filled, in flight half.
pub fn progress_bar(s: &RolloutStatus, term: Term) -> String {
    let c = &s.counts;
    let total = c.total.max(1) as usize;
    let cells = |n: i32| (n.max(0) as usize * BAR).div_ceil(total).min(BAR);
    let done = cells(c.done);
    let failed = cells(c.failed).min(BAR - done);
    let flying = cells(c.in_flight).min(BAR - done - failed);
    let rest = BAR - done - failed - flying;
    format!(
        "[{}{}{}{}]",
        paint(term, Paint::Green, &"#".repeat(done)),
        paint(term, Paint::Red, &"x".repeat(failed)),
        paint(term, Paint::Cyan, &">".repeat(flying)),
        ".".repeat(rest)
    )
}

/// The lines above the node rows: which Update, the target, state, progress, conditions.
fn header(s: &RolloutStatus, term: Term) -> Vec<String> {
    let w = term.width;
    let c = &s.counts;
    let mut lines = vec![
        fit(
            &format!(
                "Update {}/{}  generation {}",
                s.update.namespace, s.update.name, s.update.generation
            ),
            w,
        ),
        format!(
            "Target   {}",
            fit(&s.target.os_image_url, w.saturating_sub(9))
        ),
    ];
    if let Some(k) = &s.target.kube_version {
        lines.push(format!("Kube     {k}"));
    }
    let state_why = s
        .conditions
        .iter()
        .find(|c| c.type_ == s.state && !c.message.is_empty())
        .or_else(|| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Progressing" && !c.message.is_empty())
        })
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let mut state = s.state.clone();
    if s.aborted.is_some() {
        state.push_str(" (aborted)");
    } else if s.paused && s.state != "Paused" {
        state.push_str(" (paused)");
    }
    let room = w.saturating_sub(9 + state.chars().count() + 2);
    let line = if state_why.is_empty() {
        paint(term, state_paint(&s.state), &state)
    } else {
        format!(
            "{}  {}",
            paint(term, state_paint(&s.state), &state),
            fit(&state_why, room)
        )
    };
    lines.push(format!("State    {line}"));
    let counts = format!(
        "{}/{} done  {} in flight  {} failed  {} waiting",
        c.done,
        c.total,
        c.in_flight,
        c.failed,
        c.pending + c.waiting
    );
    lines.push(format!(
        "Progress {} {}",
        progress_bar(s, term),
        fit(&counts, w.saturating_sub(9 + BAR + 3))
    ));
    if let Some(n) = &s.notice {
        lines.push(paint(
            term,
            Paint::Yellow,
            &fit(&format!("Note     {n}"), w),
        ));
    }
    lines
}

/// The table, one line per element; each fits `term.width` columns.
pub fn table(s: &RolloutStatus, now: Timestamp, term: Term) -> Vec<String> {
    let w = term.width.max(DEFAULT_WIDTH);
    let term = Term { width: w, ..term };
    let mut lines = header(s, term);
    lines.push(String::new());
    if s.nodes.is_empty() {
        lines.push("No node matches this Update's selector.".into());
        return lines;
    }
    let versions: Vec<String> = s
        .nodes
        .iter()
        .map(|r| version(r, &s.target.os_image_url))
        .collect();
    let name_w = s
        .nodes
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 24);
    let ver_w = versions
        .iter()
        .map(|v| v.chars().count())
        .max()
        .unwrap_or(7)
        .clamp(7, 17);
    let (role_w, phase_w, age_w) = (6, 9, 5);
    let fixed = name_w + role_w + phase_w + ver_w + age_w + 5;
    let why_w = w.saturating_sub(fixed + 1);
    lines.push(paint(
        term,
        Paint::Bold,
        &format!(
            "{} {} {} {} {} WHY",
            pad("NODE", name_w),
            pad("ROLE", role_w),
            pad("PHASE", phase_w),
            pad("VERSION", ver_w),
            pad("AGE", age_w)
        ),
    ));
    for (row, ver) in s.nodes.iter().zip(&versions) {
        let phase = pad(&fit(&row.phase, phase_w), phase_w);
        let age = row
            .since
            .as_ref()
            .map(|t| age(t.0, now))
            .unwrap_or_default();
        let line = format!(
            "{} {} {} {} {} {}",
            pad(&fit_name(&row.name, name_w), name_w),
            pad(role(row.role), role_w),
            paint(term, phase_paint(&row.phase), &phase),
            pad(&fit(ver, ver_w), ver_w),
            pad(&age, age_w),
            fit(&why(row), why_w)
        );
        lines.push(line.trim_end().to_owned());
    }
    lines
}

/// The wide table: full image references, times and reasons; as wide as it needs.
pub fn wide(s: &RolloutStatus, now: Timestamp, term: Term) -> Vec<String> {
    let term = Term {
        width: usize::MAX / 2,
        ..term
    };
    let mut lines = header(s, term);
    lines.push(String::new());
    let rows: Vec<[String; 7]> = s
        .nodes
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                role(r.role).into(),
                r.phase.clone(),
                r.current.clone().unwrap_or_else(|| "?".into()),
                r.since
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                r.since.as_ref().map(|t| age(t.0, now)).unwrap_or_default(),
                r.reason.clone(),
            ]
        })
        .collect();
    let heads = ["NODE", "ROLE", "PHASE", "CURRENT", "SINCE", "AGE", "WHY"];
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([heads[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| pad(c, *w))
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end()
            .to_owned()
    };
    let head: Vec<String> = heads.iter().map(|h| (*h).to_owned()).collect();
    lines.push(paint(term, Paint::Bold, &line(&head)));
    for r in &rows {
        let mut l = line(r);
        if term.color {
            l = l.replacen(
                &pad(&r[2], widths[2]),
                &paint(term, phase_paint(&r[2]), &pad(&r[2], widths[2])),
                1,
            );
        }
        lines.push(l);
    }
    lines
}

/// Whether a node row is one that moves (for the summary line of `--wait`).
pub fn moving(s: &RolloutStatus) -> Vec<&NodeRow> {
    s.nodes.iter().filter(|r| in_flight(&r.phase)).collect()
}

/// One line for `upgrade --wait`: the bar, the counts and what moves.
pub fn progress_line(s: &RolloutStatus, term: Term) -> String {
    let c = &s.counts;
    let moving: Vec<String> = moving(s)
        .iter()
        .map(|r| format!("{} {}", r.name, r.phase))
        .collect();
    let text = format!(
        "{} {}/{} done, {} failed, {} in flight{}",
        s.state,
        c.done,
        c.total,
        c.failed,
        c.in_flight,
        if moving.is_empty() {
            String::new()
        } else {
            format!(": {}", moving.join(", "))
        }
    );
    format!(
        "{} {}",
        progress_bar(s, term),
        fit(&text, term.width.saturating_sub(BAR + 3))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::annotations::{AgentPhase, Grant, NodeView};
    use crate::cluster::update::Update;
    use crate::ctl::view;
    use serde_json::json;

    const OLD: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:1";
    const NEW: &str = "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2";

    fn now() -> Timestamp {
        "2024-03-02T10:00:00Z".parse().unwrap()
    }

    /// A rollout in its middle: the control plane done, one worker draining behind a PDB,
    /// one failed, one NotReady, two waiting for a slot.
    pub(crate) fn fixture() -> view::RolloutStatus {
        let mut u: Update = serde_json::from_value(json!({
            "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
            "metadata": {"name": "os", "namespace": "housekeeper-system", "uid": "u-1",
                         "generation": 2},
            "spec": {"osImageURL": NEW, "maxUnavailable": 2, "maxFailed": 1},
            "status": {
                "observedGeneration": 2, "targetGeneration": 2,
                "target": {"osImageURL": NEW},
                "state": "Progressing",
                "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "MaxUnavailable",
                     "message": "maxUnavailable 2 reached: worker-a (Draining), worker-d (NotReady)",
                     "lastTransitionTime": "2024-03-02T09:58:00Z"},
                    {"type": "Complete", "status": "False", "reason": "NotComplete",
                     "lastTransitionTime": "2024-03-02T09:40:00Z"},
                    {"type": "Halted", "status": "False", "reason": "WithinBudget",
                     "lastTransitionTime": "2024-03-02T09:40:00Z"},
                    {"type": "Paused", "status": "False", "reason": "NotPaused",
                     "lastTransitionTime": "2024-03-02T09:40:00Z"},
                ],
            },
        }))
        .unwrap();
        u.metadata.uid = Some("u-1".into());
        let g = Grant {
            uid: "u-1".into(),
            generation: 2,
        };
        let node = |name: &str, cp: bool| NodeView {
            name: name.into(),
            control_plane: cp,
            ready: true,
            os_image: Some(OLD.into()),
            ..Default::default()
        };
        let answer = |n: &mut NodeView, phase: AgentPhase, at: &str, reason: Option<&str>| {
            n.grant = Some(g.clone());
            n.phase = Some(phase);
            n.phase_grant = Some(g.clone());
            n.since = Some(at.parse().unwrap());
            n.reason = reason.map(str::to_owned);
            if phase == AgentPhase::Done {
                n.os_image = Some(NEW.into());
            }
        };
        let mut cp = node("control-plane-1", true);
        answer(&mut cp, AgentPhase::Done, "2024-03-02T09:50:00Z", None);
        let mut a = node("worker-a", false);
        a.unschedulable = true;
        a.cordoned_by_hkd = true;
        answer(
            &mut a,
            AgentPhase::Draining,
            "2024-03-02T09:58:00Z",
            Some("draining: pod shop/db-0 blocked by PodDisruptionBudget shop/db (0 disruptions allowed)"),
        );
        let mut b = node("worker-b", false);
        answer(
            &mut b,
            AgentPhase::Failed,
            "2024-03-02T09:55:30Z",
            Some("health check kubelet-ready failing after the reboot; rolled back"),
        );
        let mut d = node("worker-d", false);
        d.ready = false;
        let nodes = vec![
            cp,
            a,
            b,
            node("worker-c", false),
            d,
            node("worker-e", false),
        ];
        view::build(&u, &nodes, now())
    }

    fn lines(l: Vec<String>) -> String {
        l.join("\n") + "\n"
    }

    #[test]
    fn table_golden_and_80_columns() {
        let s = fixture();
        let plain = Term {
            width: 80,
            color: false,
        };
        let text = lines(table(&s, now(), plain));
        crate::testing::golden("tests/hkctl/status-table.txt", &text);
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(!text.contains('\x1b'));
        let wide_text = lines(wide(&s, now(), plain));
        crate::testing::golden("tests/hkctl/status-wide.txt", &wide_text);
    }

    #[test]
    fn json_golden() {
        let text = serde_json::to_string_pretty(&fixture()).unwrap() + "\n";
        crate::testing::golden("tests/hkctl/status.json", &text);
    }

    #[test]
    fn colours_only_when_asked_and_widths_unchanged() {
        let s = fixture();
        let coloured = table(
            &s,
            now(),
            Term {
                width: 80,
                color: true,
            },
        );
        let plain = table(
            &s,
            now(),
            Term {
                width: 80,
                color: false,
            },
        );
        assert!(
            coloured.iter().any(|l| l.contains("\x1b[31m")),
            "Failed in red"
        );
        let strip = |l: &str| {
            let mut out = String::new();
            let mut esc = false;
            for c in l.chars() {
                match (esc, c) {
                    (false, '\x1b') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, c) => out.push(c),
                }
            }
            out
        };
        let stripped: Vec<String> = coloured.iter().map(|l| strip(l)).collect();
        assert_eq!(stripped, plain);
    }

    #[test]
    fn rows_say_why_each_node_waits() {
        let s = fixture();
        let why = |name: &str| {
            s.nodes
                .iter()
                .find(|n| n.name == name)
                .unwrap()
                .reason
                .clone()
        };
        assert!(why("worker-a").contains("PodDisruptionBudget shop/db"));
        assert_eq!(why("worker-d"), "NotReady");
        assert_eq!(why("worker-c"), "no slot (maxUnavailable 2)");
        assert!(why("worker-b").contains("health check"));
        assert_eq!(s.counts.done, 1);
        assert_eq!(s.counts.in_flight, 1);
        assert_eq!(s.counts.failed, 1);
    }

    #[test]
    fn short_images_and_ages() {
        assert_eq!(short_image(NEW), "nestos:2");
        assert_eq!(short_image("fedora:fedora/x86_64/coreos/stable"), "stable");
        assert_eq!(short_image(&"ab".repeat(32)), "abababab".to_owned() + "ab");
        assert_eq!(
            short_image("r.io/os@sha256:0123456789abcdef"),
            "os@01234567"
        );
        let t: Timestamp = "2024-03-02T09:00:00Z".parse().unwrap();
        assert_eq!(age(t, now()), "60m");
        assert_eq!(age(now(), now()), "0s");
    }
}
