//! Reboot gates (`spec.gates`): Prometheus queries and firing alerts that hold grants.
//!
//! Before each plan the coordinator asks Prometheus ([`prometheus`], the only I/O here) and
//! turns the answers into [`Hold`]s, which the planner obeys like any other hold
//! ([`super::plan`]):
//! - a query (`/api/v1/query`) with a non-empty result holds; a series that carries the
//!   query's `nodeLabel` holds only the node of that name, any other series the whole rollout;
//! - a query whose expression holds `$node` is asked once per node about to be granted, with
//!   `$node` replaced by the node's name, and a non-empty result holds that node only (a
//!   Node's name is a DNS subdomain — lower-case letters, digits, `-` and `.` — so it cannot
//!   change what the expression means inside a quoted label value);
//! - an alert filter holds while an alert Prometheus reports firing (`/api/v1/alerts`) matches
//!   every matcher of the filter; matchers are Alertmanager's (`name="v"`, `!=`, `=~`, `!~`,
//!   regexes anchored); a matcher `name="$node"` scopes the filter to nodes: the alert holds
//!   only the node its label `name` names;
//! - fail closed: a Prometheus that refuses the credentials, errs, is down or slower than
//!   `timeoutSeconds` holds the whole rollout, with what happened ([`UNAVAILABLE`]); an
//!   expression Prometheus rejects holds it too ([`REJECTED`]), naming the expression.
//!
//! Pure here: parsing the spec's matchers, checking the spec ([`check`]), and the holds from
//! parsed answers. Who can reach it: the coordinator asks the Prometheus the Update names,
//! with the credentials of Secret [`CREDENTIALS_SECRET`] when `credentials` is set. A
//! Prometheus that lies can hold the rollout or let a node through its gate — the gate is as
//! trustworthy as the monitoring it reads; it cannot make the coordinator grant past
//! `maxUnavailable` or any other rule. A slow one costs at most `timeoutSeconds` per plan.

pub mod prometheus;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::update::Hold;

/// The reason of a hold by a query with a non-empty result.
pub const GATE: &str = "GateFiring";
/// The reason of a hold by a firing alert a filter matches.
pub const ALERT: &str = "AlertFiring";
/// The reason of the hold when Prometheus cannot be asked.
pub const UNAVAILABLE: &str = "PrometheusUnavailable";
/// The reason of the hold when Prometheus rejects an expression.
pub const REJECTED: &str = "GateRejected";
/// The one Secret the coordinator may read (hkd's namespace): Prometheus's credentials,
/// `token` (bearer) or `username` and `password` (basic).
pub const CREDENTIALS_SECRET: &str = "housekeeper-prometheus";
/// What a matcher's value says to scope a filter to the node its label names.
pub const NODE_PLACEHOLDER: &str = "$node";
/// How many series or alerts a hold's message names before "and N more".
const NAMED: usize = 3;

/// Reboot gates from Prometheus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gates {
    /// Prometheus's base URL: `http://prometheus.monitoring:9090`.
    #[serde(rename = "prometheusURL")]
    #[schemars(regex(pattern = r"^https?://[^/\s]+(/\S*)?$"))]
    pub prometheus_url: String,
    /// Authenticate with Secret `housekeeper-prometheus` in hkd's namespace (`token`, or
    /// `username` and `password`); the only Secret the coordinator may read.
    #[serde(default)]
    pub credentials: bool,
    /// How long one look at Prometheus (every query and the alerts) may take; slower holds
    /// the rollout.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3))]
    pub timeout_seconds: i64,
    /// PromQL expressions; a non-empty result holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<GateQuery>,
    /// Firing alerts that hold, each filter a list of Alertmanager-style matchers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertFilter>,
}

/// Three seconds: within the coordinator's four-second limit on any one request, so a slow
/// Prometheus costs a plan no more than a slow API server does.
fn default_timeout() -> i64 {
    3
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateQuery {
    #[schemars(length(min = 1))]
    pub expr: String,
    /// A series with this label holds only the node it names; others hold every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_label: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertFilter {
    /// `severity="critical"`, `alertname=~"Node.*"`, `node="$node"`; all must match.
    #[schemars(length(min = 1))]
    pub matchers: Vec<String>,
}

/// A matcher that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMatcher {
    #[error("matcher {0:?} is not name=\"value\" (or !=, =~, !~)")]
    Syntax(String),
    #[error("matcher {0:?}: {1}")]
    Regex(String, String),
    #[error("matcher {0:?}: \"$node\" is only allowed whole, with =")]
    Node(String),
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Re(regex::Regex),
    Nre(regex::Regex),
    /// `name="$node"`: any value; it names the node held.
    Node,
}

/// One parsed matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    name: String,
    op: Op,
}

impl Matcher {
    pub fn parse(text: &str) -> Result<Matcher, BadMatcher> {
        let bad = || BadMatcher::Syntax(text.to_owned());
        let at = text.find(['=', '!']).ok_or_else(bad)?;
        let name = text[..at].trim();
        let rest = &text[at..];
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .ok_or_else(bad)?;
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .filter(|_| valid_name)
            .ok_or_else(bad)?;
        if value.contains(NODE_PLACEHOLDER) && !(op == "=" && value == NODE_PLACEHOLDER) {
            return Err(BadMatcher::Node(text.to_owned()));
        }
        let re = |v: &str| {
            regex::Regex::new(&format!("^(?:{v})$"))
                .map_err(|e| BadMatcher::Regex(text.to_owned(), e.to_string()))
        };
        let op = match op {
            "=" if value == NODE_PLACEHOLDER => Op::Node,
            "=" => Op::Eq(value.to_owned()),
            "!=" => Op::Ne(value.to_owned()),
            "=~" => Op::Re(re(value)?),
            _ => Op::Nre(re(value)?),
        };
        Ok(Matcher {
            name: name.to_owned(),
            op,
        })
    }

    /// Whether `labels` match; an absent label is the empty value, as in Alertmanager.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match &self.op {
            Op::Eq(want) => v == want,
            Op::Ne(want) => v != want,
            Op::Re(re) => re.is_match(v),
            Op::Nre(re) => !re.is_match(v),
            Op::Node => !v.is_empty(),
        }
    }
}

/// Everything about `gates` the schema cannot check; one line per problem, naming the field.
pub fn check(gates: &Gates) -> Vec<String> {
    let mut errors = Vec::new();
    let url = &gates.prometheus_url;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if rest.is_none_or(|r| r.split('/').next().unwrap_or("").is_empty() || r.contains(' ')) {
        errors.push(format!(
            "gates.prometheusURL {url:?} is not an http:// or https:// URL with a host"
        ));
    }
    if !(1..=3).contains(&gates.timeout_seconds) {
        errors.push(format!(
            "gates.timeoutSeconds is {}; it must be 1 to 3 (the coordinator's request limit)",
            gates.timeout_seconds
        ));
    }
    if gates.queries.is_empty() && gates.alerts.is_empty() {
        errors.push("gates: name at least one query or alert filter".to_owned());
    }
    for (i, q) in gates.queries.iter().enumerate() {
        if q.expr.trim().is_empty() {
            errors.push(format!("gates.queries[{i}].expr is empty"));
        }
        if let Some(l) = &q.node_label {
            let ok = !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !l.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                errors.push(format!(
                    "gates.queries[{i}].nodeLabel {l:?} is not a Prometheus label name"
                ));
            }
        }
    }
    for (i, f) in gates.alerts.iter().enumerate() {
        if f.matchers.is_empty() {
            errors.push(format!("gates.alerts[{i}].matchers is empty"));
        }
        for m in &f.matchers {
            if let Err(e) = Matcher::parse(m) {
                errors.push(format!("gates.alerts[{i}]: {e}"));
            }
        }
    }
    errors
}

/// One series of a query's answer, or one alert: its labels.
pub type Labels = BTreeMap<String, String>;

/// `{a="1", b="2"}`, as PromQL writes a series.
fn series(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn named(items: &[String]) -> String {
    let mut m = items
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > NAMED {
        m.push_str(&format!(" and {} more", items.len() - NAMED));
    }
    m
}

/// Whether a query is asked per node (`$node` in its expression).
pub fn per_node(query: &GateQuery) -> bool {
    query.expr.contains(NODE_PLACEHOLDER)
}

/// The expression of a per-node query for `node`.
pub fn for_node(query: &GateQuery, node: &str) -> String {
    query.expr.replace(NODE_PLACEHOLDER, node)
}

/// The hold of a per-node query's answer for `node`, if it holds.
pub fn node_query_hold(query: &GateQuery, node: &str, result: &[Labels]) -> Option<Hold> {
    let series: Vec<String> = result.iter().map(series).collect();
    (!series.is_empty()).then(|| Hold {
        node: Some(node.to_owned()),
        reason: GATE.into(),
        message: format!("gate {} holds: {}", for_node(query, node), named(&series)),
    })
}

/// The holds of one query's answer.
pub fn query_holds(query: &GateQuery, result: &[Labels]) -> Vec<Hold> {
    let mut by_node: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for labels in result {
        let node = query
            .node_label
            .as_ref()
            .and_then(|l| labels.get(l))
            .filter(|n| !n.is_empty())
            .cloned();
        by_node.entry(node).or_default().push(series(labels));
    }
    by_node
        .into_iter()
        .map(|(node, series)| Hold {
            node,
            reason: GATE.into(),
            message: format!("gate {} holds: {}", query.expr, named(&series)),
        })
        .collect()
}

/// One alert as Prometheus reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Alert {
    pub labels: Labels,
    /// `firing` or `pending`; only firing alerts hold.
    pub state: String,
}

/// The holds of the firing alerts the filters match. A filter that does not parse holds the
/// whole rollout (validation refuses it first; this is the fail-closed backstop).
pub fn alert_holds(filters: &[AlertFilter], alerts: &[Alert]) -> Vec<Hold> {
    let mut holds = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let matchers: Result<Vec<Matcher>, BadMatcher> =
            f.matchers.iter().map(|m| Matcher::parse(m)).collect();
        let matchers = match matchers {
            Ok(m) => m,
            Err(e) => {
                holds.push(Hold {
                    node: None,
                    reason: REJECTED.into(),
                    message: format!("gates.alerts[{i}]: {e}"),
                });
                continue;
            }
        };
        let node_label = matchers.iter().find_map(|m| match m.op {
            Op::Node => Some(m.name.as_str()),
            _ => None,
        });
        let mut by_node: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
        for a in alerts.iter().filter(|a| a.state == "firing") {
            if matchers.iter().all(|m| m.matches(&a.labels)) {
                let node = node_label.and_then(|l| a.labels.get(l)).cloned();
                by_node.entry(node).or_default().push(series(&a.labels));
            }
        }
        let filter = f.matchers.join(", ");
        holds.extend(by_node.into_iter().map(|(node, alerts)| Hold {
            node,
            reason: ALERT.into(),
            message: format!("alert firing ({filter}): {}", named(&alerts)),
        }));
    }
    holds
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: serde_json::Value) -> Labels {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn matchers_as_alertmanager_reads_them() {
        let l = labels(json!({"alertname": "NodeDown", "severity": "critical", "node": "w-1"}));
        for (m, want) in [
            (r#"severity="critical""#, true),
            (r#"severity!="critical""#, false),
            (r#"alertname=~"Node.*""#, true),
            (r#"alertname=~"Node""#, false), // anchored
            (r#"alertname!~"Disk.*""#, true),
            (r#"team="""#, true), // absent is empty
            (r#" node = "$node" "#, true),
        ] {
            assert_eq!(Matcher::parse(m).unwrap().matches(&l), want, "{m}");
        }
        for bad in [
            "severity",
            r#"severity=critical"#,
            r#"1x="a""#,
            r#"a=~"(""#,
            r#"node!="$node""#,
            r#"node="w-$node""#,
        ] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_node_scoped_filter_holds_only_the_nodes_its_firing_alerts_name() {
        let f = [AlertFilter {
            matchers: vec![
                r#"severity=~"critical|page""#.into(),
                r#"node="$node""#.into(),
            ],
        }];
        let alerts = [
            Alert {
                labels: labels(json!({"alertname": "Busy", "severity": "critical", "node": "w-1"})),
                state: "firing".into(),
            },
            Alert {
                labels: labels(json!({"alertname": "Busy", "severity": "critical", "node": "w-2"})),
                state: "pending".into(),
            },
            Alert {
                labels: labels(json!({"alertname": "Busy", "severity": "info", "node": "w-3"})),
                state: "firing".into(),
            },
            Alert {
                labels: labels(json!({"alertname": "Cluster", "severity": "page"})),
                state: "firing".into(),
            },
        ];
        let holds = alert_holds(&f, &alerts);
        assert_eq!(
            holds,
            vec![Hold {
                node: Some("w-1".into()),
                reason: ALERT.into(),
                message: r#"alert firing (severity=~"critical|page", node="$node"): {alertname="Busy", node="w-1", severity="critical"}"#.into(),
            }]
        );
        // Without the node matcher the alert without a node label holds everything.
        let f = [AlertFilter {
            matchers: vec![r#"severity="page""#.into()],
        }];
        let holds = alert_holds(&f, &alerts);
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].node, None);
    }

    #[test]
    fn a_query_holds_per_node_label_or_everything() {
        let q = GateQuery {
            expr: "node_busy == 1".into(),
            node_label: Some("node".into()),
        };
        let result = [
            labels(json!({"node": "w-1", "job": "x"})),
            labels(json!({"job": "x"})),
        ];
        let holds = query_holds(&q, &result);
        assert_eq!(holds.len(), 2);
        assert_eq!(holds[0].node, None);
        assert_eq!(holds[0].message, r#"gate node_busy == 1 holds: {job="x"}"#);
        assert_eq!(holds[1].node.as_deref(), Some("w-1"));
        assert!(query_holds(&q, &[]).is_empty());
        let many: Vec<Labels> = (0..5)
            .map(|i| labels(json!({"i": i.to_string()})))
            .collect();
        assert!(query_holds(&q, &many)[0].message.ends_with("and 2 more"));
    }

    #[test]
    fn a_per_node_query_is_asked_with_the_node_and_holds_it_only() {
        let q = GateQuery {
            expr: r#"node_busy{node="$node"} == 2"#.into(),
            node_label: None,
        };
        assert!(per_node(&q));
        assert_eq!(for_node(&q, "w-3"), r#"node_busy{node="w-3"} == 2"#);
        let hold = node_query_hold(&q, "w-3", &[labels(json!({"node": "w-3"}))]).unwrap();
        assert_eq!(hold.node.as_deref(), Some("w-3"));
        assert_eq!(
            hold.message,
            r#"gate node_busy{node="w-3"} == 2 holds: {node="w-3"}"#
        );
        assert_eq!(node_query_hold(&q, "w-3", &[]), None);
        assert!(!per_node(&GateQuery {
            expr: "up == 0".into(),
            node_label: None
        }));
    }

    #[test]
    fn check_names_each_bad_field() {
        let g: Gates = serde_json::from_value(json!({
            "prometheusURL": "ftp://x",
            "timeoutSeconds": 9,
            "queries": [{"expr": " ", "nodeLabel": "no-dash"}],
            "alerts": [{"matchers": ["severity"]}, {"matchers": []}],
        }))
        .unwrap();
        let all = check(&g).join("\n");
        for want in [
            "gates.prometheusURL \"ftp://x\"",
            "gates.timeoutSeconds is 9",
            "gates.queries[0].expr is empty",
            "gates.queries[0].nodeLabel \"no-dash\"",
            "gates.alerts[0]: matcher \"severity\"",
            "gates.alerts[1].matchers is empty",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        let ok: Gates = serde_json::from_value(json!({
            "prometheusURL": "http://127.0.0.1:9090",
            "queries": [{"expr": "up == 0"}],
        }))
        .unwrap();
        assert!(check(&ok).is_empty(), "{:?}", check(&ok));
        assert_eq!(ok.timeout_seconds, 3);
    }
}
