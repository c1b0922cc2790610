//! Asking Prometheus: `/api/v1/query` and `/api/v1/alerts` over HTTP, and the answers parsed.
//! Decides nothing: [`look`] returns the holds [`super`] makes of the answers, or the one
//! fail-closed hold when Prometheus cannot be asked.
//!
//! Guarantees: every question has a time limit (the whole look shares one deadline, so a
//! Prometheus that answers slowly cannot stretch a plan past it); an answer that is not
//! Prometheus's JSON (`status: success`) is an error, never an empty result; a 400/422
//! `bad_data` answer is an expression Prometheus rejects ([`super::REJECTED`]), anything else
//! that fails is [`super::UNAVAILABLE`]. Credentials are sent only in the Authorization
//! header, never logged; the URL in messages is the spec's, without them.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{alert_holds, query_holds, Alert, Gates, Labels, REJECTED, UNAVAILABLE};
use crate::cluster::update::Hold;

/// How the coordinator authenticates to Prometheus.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Bearer(secrecy::SecretString),
    Basic {
        username: String,
        password: secrecy::SecretString,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "Auth::None",
            Auth::Bearer(_) => "Auth::Bearer(..)",
            Auth::Basic { .. } => "Auth::Basic(..)",
        })
    }
}

/// Why one question got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("Prometheus rejected {what}: {error}")]
    Rejected { what: String, error: String },
    #[error("asking Prometheus at {url} ({what}): {why}")]
    Unavailable {
        url: String,
        what: String,
        why: String,
    },
}

#[derive(Deserialize)]
struct Envelope<T> {
    status: String,
    data: Option<T>,
    #[serde(rename = "errorType", default)]
    error_type: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    metric: Labels,
}

#[derive(Deserialize)]
struct AlertsData {
    alerts: Vec<Alert>,
}

/// The data of an answer, or why there is none. `bad_data` is Prometheus saying the question
/// is wrong (a rejected expression); anything else is an error of Prometheus's own.
fn parse<T: for<'de> Deserialize<'de>>(body: &str, what: &str, url: &str) -> Result<T, AskError> {
    let unavailable = |why: String| AskError::Unavailable {
        url: url.to_owned(),
        what: what.to_owned(),
        why,
    };
    let env: Envelope<T> = serde_json::from_str(body)
        .map_err(|e| unavailable(format!("the answer is not Prometheus's JSON: {e}")))?;
    match (env.status.as_str(), env.data) {
        ("success", Some(data)) => Ok(data),
        ("error", _) if env.error_type == "bad_data" => Err(AskError::Rejected {
            what: what.to_owned(),
            error: env.error,
        }),
        (status, _) => Err(unavailable(format!(
            "status {status}: {} {}",
            env.error_type, env.error
        ))),
    }
}

/// The series of a query's answer: a vector's or a matrix's series; a scalar counts as one
/// series (no labels) unless it is 0.
pub fn parse_query(body: &str, expr: &str, url: &str) -> Result<Vec<Labels>, AskError> {
    let what = format!("query {expr}");
    let data: QueryData = parse(body, &what, url)?;
    match data.result_type.as_str() {
        "vector" | "matrix" => {
            let series: Vec<Series> =
                serde_json::from_value(data.result).map_err(|e| AskError::Unavailable {
                    url: url.to_owned(),
                    what: what.clone(),
                    why: format!("a result that is not a list of series: {e}"),
                })?;
            Ok(series.into_iter().map(|s| s.metric).collect())
        }
        _ => {
            let value = data.result.get(1).and_then(|v| v.as_str()).unwrap_or("");
            let zero = value.parse::<f64>().is_ok_and(|v| v == 0.0);
            Ok(if zero {
                Vec::new()
            } else {
                vec![Labels::new()]
            })
        }
    }
}

/// The alerts of an `/api/v1/alerts` answer.
pub fn parse_alerts(body: &str, url: &str) -> Result<Vec<Alert>, AskError> {
    parse::<AlertsData>(body, "alerts", url).map(|d| d.alerts)
}

/// One GET within the deadline; the body of a 2xx, 400 or 422 (Prometheus's errors are JSON).
fn get(
    agent: &ureq::Agent,
    url: &str,
    path: &str,
    query: &[(&str, &str)],
    auth: &Auth,
    deadline: Instant,
    what: &str,
) -> Result<String, AskError> {
    use secrecy::ExposeSecret;
    let unavailable = |why: String| AskError::Unavailable {
        url: url.to_owned(),
        what: what.to_owned(),
        why,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(unavailable("no time left within the gate's timeout".into()));
    }
    let mut req = agent
        .get(&format!("{}{path}", url.trim_end_matches('/')))
        .timeout(left);
    for (k, v) in query {
        req = req.query(k, v);
    }
    req = match auth {
        Auth::None => req,
        Auth::Bearer(t) => req.set("Authorization", &format!("Bearer {}", t.expose_secret())),
        Auth::Basic { username, password } => {
            use base64::Engine;
            let pair = format!("{username}:{}", password.expose_secret());
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            req.set("Authorization", &format!("Basic {encoded}"))
        }
    };
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(400 | 422, r)) => r,
        Err(ureq::Error::Status(code, _)) => return Err(unavailable(format!("HTTP {code}"))),
        Err(ureq::Error::Transport(t)) => {
            let why = if Instant::now() >= deadline {
                format!("no answer within the gate's timeout ({t})")
            } else {
                t.to_string()
            };
            return Err(unavailable(why));
        }
    };
    resp.into_string()
        .map_err(|e| unavailable(format!("reading the answer: {e}")))
}

/// Ask every per-node query (`$node`) for each of `nodes`, within `limit` in all; the holds.
/// Blocking: run it off the async runtime.
pub fn look_nodes(gates: &Gates, auth: &Auth, nodes: &[String], limit: Duration) -> Vec<Hold> {
    let deadline = Instant::now() + limit;
    let url = gates.prometheus_url.as_str();
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(limit)
        .redirects(0)
        .build();
    let mut holds = Vec::new();
    for q in gates.queries.iter().filter(|q| super::per_node(q)) {
        for node in nodes {
            let expr = super::for_node(q, node);
            let what = format!("query {expr}");
            let got = get(
                &agent,
                url,
                "/api/v1/query",
                &[("query", expr.as_str())],
                auth,
                deadline,
                &what,
            )
            .and_then(|body| parse_query(&body, &expr, url));
            match got {
                Ok(result) => holds.extend(super::node_query_hold(q, node, &result)),
                Err(e) => {
                    let reason = match e {
                        AskError::Rejected { .. } => REJECTED,
                        AskError::Unavailable { .. } => UNAVAILABLE,
                    };
                    // Fail closed: the whole rollout, as for any other question.
                    holds.push(Hold {
                        node: None,
                        reason: reason.into(),
                        message: format!("{e}; nothing is granted until it answers"),
                    });
                    return holds;
                }
            }
        }
    }
    holds
}

/// The credentials from Secret [`super::CREDENTIALS_SECRET`]'s data: `token`, or `username`
/// and `password`; `None` when it holds neither.
pub fn auth_from_secret(
    data: &std::collections::BTreeMap<String, k8s_openapi::ByteString>,
) -> Option<Auth> {
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|s| s.trim_end_matches('\n').to_owned())
            .filter(|s| !s.is_empty())
    };
    if let Some(t) = text("token") {
        return Some(Auth::Bearer(t.into()));
    }
    Some(Auth::Basic {
        username: text("username")?,
        password: text("password")?.into(),
    })
}

/// Look at Prometheus for `gates` with the coordinator's client (for the credentials): the
/// holds, or the one fail-closed hold. Never longer than `limit` in all.
pub async fn find(
    client: &kube::Client,
    namespace: &str,
    gates: &Gates,
    limit: Duration,
) -> Vec<Hold> {
    find_for(client, namespace, gates, None, limit).await
}

/// [`find`] for the per-node queries (`$node`) and `nodes` only.
pub async fn find_nodes(
    client: &kube::Client,
    namespace: &str,
    gates: &Gates,
    nodes: &[String],
    limit: Duration,
) -> Vec<Hold> {
    find_for(client, namespace, gates, Some(nodes), limit).await
}

async fn find_for(
    client: &kube::Client,
    namespace: &str,
    gates: &Gates,
    nodes: Option<&[String]>,
    limit: Duration,
) -> Vec<Hold> {
    let started = Instant::now();
    let held = |why: String| {
        vec![Hold {
            node: None,
            reason: UNAVAILABLE.into(),
            message: format!("{why}; nothing is granted until it answers"),
        }]
    };
    let auth = if gates.credentials {
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), namespace);
        let secret = super::CREDENTIALS_SECRET;
        match tokio::time::timeout(limit, secrets.get(secret)).await {
            Ok(Ok(s)) => match auth_from_secret(&s.data.unwrap_or_default()) {
                Some(a) => a,
                None => {
                    return held(format!(
                        "Secret {namespace}/{secret} holds neither token nor username and password"
                    ))
                }
            },
            Ok(Err(e)) => {
                return held(format!(
                    "reading Prometheus's credentials from Secret {namespace}/{secret}: {}",
                    crate::cluster::events::brief(&e)
                ))
            }
            Err(_) => {
                return held(format!(
                    "reading Secret {namespace}/{secret}: no answer within {limit:?}"
                ))
            }
        }
    } else {
        Auth::None
    };
    let left = limit.saturating_sub(started.elapsed());
    let g = gates.clone();
    let nodes = nodes.map(<[String]>::to_vec);
    let asked = tokio::task::spawn_blocking(move || match nodes {
        Some(nodes) => look_nodes(&g, &auth, &nodes, left),
        None => look(&g, &auth, left),
    });
    // The blocking look keeps its own deadline; this one is the backstop.
    match tokio::time::timeout(left + Duration::from_millis(200), asked).await {
        Ok(Ok(holds)) => holds,
        Ok(Err(e)) => held(format!(
            "asking Prometheus at {}: {e}",
            gates.prometheus_url
        )),
        Err(_) => held(format!(
            "asking Prometheus at {}: no answer within {left:?}",
            gates.prometheus_url
        )),
    }
}

/// Ask every query and, when there are filters, the alerts, within `limit` in all; the holds.
/// Blocking: run it off the async runtime.
pub fn look(gates: &Gates, auth: &Auth, limit: Duration) -> Vec<Hold> {
    let deadline = Instant::now() + limit;
    let url = gates.prometheus_url.as_str();
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(limit)
        .redirects(0)
        .build();
    let mut holds = Vec::new();
    let fail = |e: AskError| {
        let reason = match e {
            AskError::Rejected { .. } => REJECTED,
            AskError::Unavailable { .. } => UNAVAILABLE,
        };
        Hold {
            node: None,
            reason: reason.into(),
            message: format!("{e}; nothing is granted until it answers"),
        }
    };
    for q in gates.queries.iter().filter(|q| !super::per_node(q)) {
        let what = format!("query {}", q.expr);
        let got = get(
            &agent,
            url,
            "/api/v1/query",
            &[("query", q.expr.as_str())],
            auth,
            deadline,
            &what,
        )
        .and_then(|body| parse_query(&body, &q.expr, url));
        match got {
            Ok(result) => holds.extend(query_holds(q, &result)),
            Err(e) => {
                let unavailable = matches!(e, AskError::Unavailable { .. });
                holds.push(fail(e));
                if unavailable {
                    // One answer missing is enough to hold; do not spend the deadline on more.
                    return holds;
                }
            }
        }
    }
    if !gates.alerts.is_empty() {
        match get(&agent, url, "/api/v1/alerts", &[], auth, deadline, "alerts")
            .and_then(|body| parse_alerts(&body, url))
        {
            Ok(alerts) => holds.extend(alert_holds(&gates.alerts, &alerts)),
            Err(e) => holds.push(fail(e)),
        }
    }
    holds
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:9090";

    #[test]
    fn answers_as_prometheus_writes_them() {
        // Captured from Prometheus 2.42.0+ds (Debian 12's package).
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","instance":"127.0.0.1:19090","job":"self"},"value":[1796637485.862,"1"]}]}}"#;
        let r = parse_query(vector, "up", URL).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["job"], "self");
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_query(empty, "x", URL).unwrap().is_empty());
        let scalar =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1796637485.913,"1"]}}"#;
        assert_eq!(parse_query(scalar, "scalar(up)", URL).unwrap().len(), 1);
        let zero = scalar.replace(r#""1"]"#, r#""0"]"#);
        assert!(parse_query(&zero, "scalar(up) - 1", URL)
            .unwrap()
            .is_empty());
        // With HTTP 400.
        let rejected = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:7: parse error: unclosed left parenthesis"}"#;
        let e = parse_query(rejected, "gate_(", URL).unwrap_err();
        assert!(matches!(e, AskError::Rejected { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "Prometheus rejected query gate_(: invalid parameter \"query\": 1:7: parse error: unclosed left parenthesis"
        );
        let e = parse_query("<html>proxy error</html>", "x", URL).unwrap_err();
        assert!(matches!(e, AskError::Unavailable { .. }), "{e}");
        let alerts = r#"{"status":"success","data":{"alerts":[{"labels":{"alertname":"Up","instance":"127.0.0.1:19090","job":"self","node":"w-1","severity":"critical"},"annotations":{},"state":"firing","activeAt":"2026-12-07T09:58:05.632510205Z","value":"1e+00"}]}}"#;
        let a = parse_alerts(alerts, URL).unwrap();
        assert_eq!(a[0].state, "firing");
        assert_eq!(a[0].labels["node"], "w-1");
    }

    #[test]
    fn a_prometheus_that_accepts_and_never_answers_holds_within_the_limit() {
        // Accepts connections (the kernel's backlog) and never reads or answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let gates: Gates = serde_json::from_value(serde_json::json!({
            "prometheusURL": format!("http://127.0.0.1:{port}"),
            "queries": [{"expr": "up == 0"}, {"expr": "up == 1"}],
            "alerts": [{"matchers": ["severity=\"critical\""]}],
        }))
        .unwrap();
        let started = Instant::now();
        let holds = look(&gates, &Auth::None, Duration::from_millis(500));
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        assert_eq!(holds.len(), 1, "{holds:?}");
        assert_eq!(holds[0].reason, UNAVAILABLE);
        assert_eq!(holds[0].node, None);
        drop(silent);
    }

    #[test]
    fn nothing_listening_holds_and_says_so() {
        // A port nothing listens on: bind one, then drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gates: Gates = serde_json::from_value(serde_json::json!({
            "prometheusURL": format!("http://127.0.0.1:{port}"),
            "queries": [{"expr": "up == 0"}],
        }))
        .unwrap();
        let holds = look(&gates, &Auth::None, Duration::from_secs(1));
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].node, None);
        assert_eq!(holds[0].reason, UNAVAILABLE);
        assert!(holds[0].message.contains("query up == 0"), "{:?}", holds[0]);
    }
}
