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

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Req::Exists(k) => labels.contains_key(k),
            Req::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
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
}
