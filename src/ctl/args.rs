//! hkctl's own argument syntax, parsed into the Update's types: label selectors as kubectl
//! writes them, maintenance windows in one word each, durations like `10m`. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::cluster::window::{Day, Window};

/// A label selector in kubectl's syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
/// `k`, `!k`, joined by commas.
pub fn parse_selector(text: &str) -> Result<LabelSelector, String> {
    let mut labels = BTreeMap::new();
    let mut exprs = Vec::new();
    for term in split_terms(text)? {
        let term = term.trim();
        if term.is_empty() {
            return Err(format!("selector {text:?} has an empty term"));
        }
        let req = |key: &str, op: &str, values: Option<Vec<String>>| {
            check_key(key, text).map(|key| LabelSelectorRequirement {
                key,
                operator: op.to_owned(),
                values,
            })
        };
        if let Some(key) = term.strip_prefix('!') {
            exprs.push(req(key.trim(), "DoesNotExist", None)?);
        } else if let Some((key, rest)) = split_word(term, " notin ") {
            exprs.push(req(key, "NotIn", Some(value_set(rest, text)?))?);
        } else if let Some((key, rest)) = split_word(term, " in ") {
            exprs.push(req(key, "In", Some(value_set(rest, text)?))?);
        } else if let Some((key, value)) = term.split_once("!=") {
            exprs.push(req(
                key.trim(),
                "NotIn",
                Some(vec![check_value(value.trim(), text)?]),
            )?);
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.insert(
                check_key(key.trim(), text)?,
                check_value(value.trim(), text)?,
            );
        } else {
            exprs.push(req(term, "Exists", None)?);
        }
    }
    Ok(LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    })
}

/// Split at commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("selector {text:?} has unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(format!("selector {text:?} has unbalanced parentheses"));
    }
    out.push(&text[start..]);
    Ok(out)
}

fn split_word<'a>(term: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    term.find(word)
        .map(|i| (term[..i].trim(), term[i + word.len()..].trim()))
}

fn value_set(rest: &str, text: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("selector {text:?}: a set is written (a,b)"))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| check_value(v.trim(), text))
        .collect::<Result<_, _>>()?;
    if values.iter().any(String::is_empty) {
        return Err(format!("selector {text:?}: a set has an empty value"));
    }
    Ok(values)
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.".contains(c)
}

fn check_key(key: &str, text: &str) -> Result<String, String> {
    let name = key.rsplit('/').next().unwrap_or("");
    let ok = !name.is_empty()
        && name.len() <= 63
        && key.chars().all(|c| label_char(c) || c == '/')
        && key.matches('/').count() <= 1;
    if ok {
        Ok(key.to_owned())
    } else {
        Err(format!("selector {text:?}: {key:?} is not a label key"))
    }
}

fn check_value(value: &str, text: &str) -> Result<String, String> {
    if value.len() <= 63 && value.chars().all(label_char) {
        Ok(value.to_owned())
    } else {
        Err(format!("selector {text:?}: {value:?} is not a label value"))
    }
}

/// A maintenance window as `[DAYS ]HH:MM-HH:MM[ ZONE]`: `Sat,Sun 22:00-04:00 Europe/Berlin`,
/// `01:00-03:00`, `Mon-Fri 12:00-13:00 UTC`. Checked as the coordinator checks it (a real
/// time zone, a window of some length).
pub fn parse_window(text: &str) -> Result<Window, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let bad = || {
        format!("window {text:?} is not [DAYS ]HH:MM-HH:MM[ ZONE], e.g. \"Sat,Sun 22:00-04:00 Europe/Berlin\"")
    };
    let at = words
        .iter()
        .position(|w| {
            w.contains(':') && w.contains('-') && w.starts_with(|c: char| c.is_ascii_digit())
        })
        .ok_or_else(bad)?;
    if at > 1 || words.len() > at + 2 {
        return Err(bad());
    }
    let days = match at {
        1 => parse_days(words[0]).map_err(|e| format!("window {text:?}: {e}"))?,
        _ => Vec::new(),
    };
    let (start, end) = words[at].split_once('-').ok_or_else(bad)?;
    let window = Window {
        days,
        start: start.to_owned(),
        end: end.to_owned(),
        time_zone: words.get(at + 1).unwrap_or(&"UTC").to_string(),
    };
    window
        .check()
        .map_err(|e| format!("window {text:?}: {e}"))?;
    Ok(window)
}

const DAYS: [(&str, Day); 7] = [
    ("Mon", Day::Mon),
    ("Tue", Day::Tue),
    ("Wed", Day::Wed),
    ("Thu", Day::Thu),
    ("Fri", Day::Fri),
    ("Sat", Day::Sat),
    ("Sun", Day::Sun),
];

fn day(word: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|(name, _)| name.eq_ignore_ascii_case(word))
        .ok_or_else(|| format!("{word:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

/// `Sat,Sun`, `Mon-Fri`, `Fri-Mon` (wrapping), mixed.
fn parse_days(text: &str) -> Result<Vec<Day>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(part)?, day(part)?),
        };
        let mut i = from;
        loop {
            if !out.contains(&DAYS[i].1) {
                out.push(DAYS[i].1);
            }
            if i == to {
                break;
            }
            i = (i + 1) % 7;
        }
    }
    Ok(out)
}

/// An alert filter as `--gate-alert` takes it: Alertmanager matchers separated by commas
/// outside quotes, `severity="critical",node="$node"`; each checked as the coordinator checks
/// it.
pub fn parse_alert_filter(
    text: &str,
) -> Result<crate::cluster::gates::AlertFilter, crate::cluster::gates::BadMatcher> {
    let mut matchers = Vec::new();
    let (mut current, mut quoted, mut escaped) = (String::new(), false, false);
    for c in text.chars() {
        match c {
            ',' if !quoted => matchers.push(std::mem::take(&mut current)),
            '"' if !escaped => {
                quoted = !quoted;
                current.push(c);
            }
            _ => current.push(c),
        }
        escaped = c == '\\' && !escaped;
    }
    matchers.push(current);
    let matchers: Vec<String> = matchers
        .into_iter()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    for m in &matchers {
        crate::cluster::gates::Matcher::parse(m)?;
    }
    if matchers.is_empty() {
        return Err(crate::cluster::gates::BadMatcher::Syntax(text.to_owned()));
    }
    Ok(crate::cluster::gates::AlertFilter { matchers })
}

/// A duration in whole seconds, written `90s`, `10m`, `1h30m`.
pub fn parse_seconds(what: &str, text: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{what} {text:?} is not a duration like 90s or 10m: {e}"))?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(format!(
            "{what} {text:?} must be a whole number of seconds, at least 1s"
        ));
    }
    i64::try_from(d.as_secs()).map_err(|_| format!("{what} {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::selector::Selector;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn alert_filters_split_on_commas_outside_quotes() {
        let f =
            parse_alert_filter(r#"severity=~"critical|page",node="$node", team!="a,b""#).unwrap();
        assert_eq!(
            f.matchers,
            [
                r#"severity=~"critical|page""#,
                r#"node="$node""#,
                r#"team!="a,b""#
            ]
        );
        let e = parse_alert_filter(r#"severity="critical",oops"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"matcher "oops" is not name="value" (or !=, =~, !~)"#
        );
        assert!(parse_alert_filter(" , ").is_err());
    }

    #[test]
    fn selectors_as_kubectl_writes_them() {
        let sel = parse_selector("pool=a, zone in (x, y),!legacy,gpu,tier!=db").unwrap();
        let s = Selector::from_label_selector(&sel).unwrap();
        let base = [("pool", "a"), ("zone", "y"), ("gpu", "1"), ("tier", "web")];
        assert!(s.matches(&labels(&base)));
        let mut with_legacy = base.to_vec();
        with_legacy.push(("legacy", ""));
        assert!(!s.matches(&labels(&with_legacy)));
        assert!(!s.matches(&labels(&[("pool", "a"), ("zone", "z"), ("gpu", "1")])));
        assert!(!s.matches(&labels(&[
            ("pool", "a"),
            ("zone", "x"),
            ("gpu", "1"),
            ("tier", "db")
        ])));
        let sel = parse_selector("node-role.kubernetes.io/worker,k notin (a)").unwrap();
        assert_eq!(sel.match_expressions.unwrap().len(), 2);
        assert_eq!(
            parse_selector("a==b").unwrap().match_labels,
            Some(labels(&[("a", "b")]))
        );
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (bad, want) in [
            ("a=b,", "empty term"),
            ("zone in (x", "unbalanced"),
            ("zone in x", "(a,b)"),
            ("a b=c", "not a label key"),
            ("a=b c", "not a label value"),
            ("zone in (x,)", "empty value"),
        ] {
            let e = parse_selector(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn windows_in_one_word() {
        let w = parse_window("Sat,Sun 22:00-04:00 Europe/Berlin").unwrap();
        assert_eq!(w.days, vec![Day::Sat, Day::Sun]);
        assert_eq!((w.start.as_str(), w.end.as_str()), ("22:00", "04:00"));
        assert_eq!(w.time_zone, "Europe/Berlin");
        let w = parse_window("01:00-03:00").unwrap();
        assert!(w.days.is_empty());
        assert_eq!(w.time_zone, "UTC");
        let w = parse_window("fri-mon 12:00-13:00 Asia/Shanghai").unwrap();
        assert_eq!(w.days, vec![Day::Fri, Day::Sat, Day::Sun, Day::Mon]);
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (bad, want) in [
            (
                "22:00-04:00 Europe/Atlantis",
                "time zone \"Europe/Atlantis\"",
            ),
            ("Sat 25:00-04:00", "start \"25:00\""),
            ("Caturday 22:00-04:00", "not a day"),
            ("22:00", "is not [DAYS ]HH:MM-HH:MM"),
            ("22:00-22:00", "both 22:00"),
        ] {
            let e = parse_window(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("--drain-timeout", "10m"), Ok(600));
        assert_eq!(parse_seconds("--drain-timeout", "1h30m"), Ok(5400));
        assert!(parse_seconds("--drain-timeout", "soon")
            .unwrap_err()
            .contains("--drain-timeout"));
        assert!(parse_seconds("--drain-timeout", "0s").is_err());
    }
}
