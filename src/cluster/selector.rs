//! Label selectors, evaluated here: the planner decides which nodes an Update covers without
//! asking the API server (the coordinator already holds every Node from its watch).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(Vec<Req>);

impl Selector {
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Selector, String> {
        let mut reqs: Vec<Req> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Req::In(k.clone(), vec![v.clone()]))
            .collect();
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!("{} {} needs values", e.key, e.operator))
                }
                "In" => Req::In(e.key.clone(), values),
                "NotIn" => Req::NotIn(e.key.clone(), values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!("{} {} takes no values", e.key, e.operator))
                }
                "Exists" => Req::Exists(e.key.clone()),
                "DoesNotExist" => Req::DoesNotExist(e.key.clone()),
                op => {
                    return Err(format!(
                        "operator {op:?} on {} is not In, NotIn, Exists or DoesNotExist",
                        e.key
                    ))
                }
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// The selector in the API server's query syntax (`?labelSelector=`), for a list the
    /// server filters. Keys and values are checked first: a value with a comma or a
    /// parenthesis would change what the query means.
    pub fn to_query(&self) -> Result<String, BadLabel> {
        let set = |vs: &[String]| -> Result<String, BadLabel> {
            vs.iter().try_for_each(|v| check_label_value(v).map(drop))?;
            Ok(vs.join(","))
        };
        let terms: Result<Vec<String>, BadLabel> = self
            .0
            .iter()
            .map(|r| match r {
                Req::In(k, vs) => Ok(format!("{} in ({})", check_label_key(k)?, set(vs)?)),
                Req::NotIn(k, vs) => Ok(format!("{} notin ({})", check_label_key(k)?, set(vs)?)),
                Req::Exists(k) => Ok(check_label_key(k)?.to_owned()),
                Req::DoesNotExist(k) => Ok(format!("!{}", check_label_key(k)?)),
            })
            .collect();
        Ok(terms?.join(","))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Req::Exists(k) => labels.contains_key(k),
            Req::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// A label key or value Kubernetes would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLabel {
    #[error("{0:?} is not a label key ([prefix/]name, the name 1-63 of A-Z a-z 0-9 - _ .)")]
    Key(String),
    #[error("{0:?} is not a label value (at most 63 of A-Z a-z 0-9 - _ .)")]
    Value(String),
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.".contains(c)
}

/// `key` when it is a label key: an optional DNS-subdomain prefix and `/`, then a name of
/// 1-63 characters.
pub fn check_label_key(key: &str) -> Result<&str, BadLabel> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(label_char)
        && prefix.is_none_or(|p| {
            !p.is_empty()
                && p.len() <= 253
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
        });
    ok.then_some(key)
        .ok_or_else(|| BadLabel::Key(key.to_owned()))
}

/// `value` when it is a label value.
pub fn check_label_value(value: &str) -> Result<&str, BadLabel> {
    (value.len() <= 63 && value.chars().all(label_char))
        .then_some(value)
        .ok_or_else(|| BadLabel::Value(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_like_the_api_server() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"pool": "a"},
            "matchExpressions": [
                {"key": "zone", "operator": "NotIn", "values": ["z9"]},
                {"key": "gpu", "operator": "DoesNotExist"},
            ],
        }))
        .unwrap();
        let s = Selector::from_label_selector(&sel).unwrap();
        let l = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(s.matches(&l(&[("pool", "a")])));
        assert!(s.matches(&l(&[("pool", "a"), ("zone", "z1")])));
        assert!(!s.matches(&l(&[("pool", "a"), ("zone", "z9")])));
        assert!(!s.matches(&l(&[("pool", "a"), ("gpu", "")])));
        assert!(!s.matches(&l(&[("pool", "b")])));
        assert!(Selector::default().matches(&l(&[])));
        let bad: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "a", "operator": "In"}]
        }))
        .unwrap();
        assert!(Selector::from_label_selector(&bad).is_err());
    }

    #[test]
    fn queries_as_the_api_server_reads_them_and_refuses_what_would_change_them() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "backup"},
            "matchExpressions": [
                {"key": "example.com/tier", "operator": "NotIn", "values": ["a", "b"]},
                {"key": "x", "operator": "Exists"},
                {"key": "y", "operator": "DoesNotExist"},
            ],
        }))
        .unwrap();
        let s = Selector::from_label_selector(&sel).unwrap();
        assert_eq!(
            s.to_query().unwrap(),
            "app in (backup),example.com/tier notin (a,b),x,!y"
        );
        let sneaky: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "a),b in (c"}})).unwrap();
        let e = Selector::from_label_selector(&sneaky)
            .unwrap()
            .to_query()
            .unwrap_err();
        assert_eq!(e, BadLabel::Value("a),b in (c".into()));
        assert!(check_label_key("topology.kubernetes.io/zone").is_ok());
        for bad in ["", "a/", "/a", "Zone Key", "A_B/c", &"x".repeat(64)] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
    }
}
