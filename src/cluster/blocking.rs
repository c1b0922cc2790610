//! Blocking pods (`spec.blockingPodSelector`): a node running a pod the selector matches is not
//! granted until the pod is gone, as kured's `--blocking-pod-selector`.
//!
//! [`holds_from_pods`] decides (pure); [`find`] reads the pods (one paged list, filtered by
//! the API server on the selector and on the pod's phase) and decides nothing else.
//!
//! Guarantees: a pod counts while it is bound to a node and neither Succeeded nor Failed
//! (a terminating pod still runs, so it still counts); the selector is checked again here on
//! what the server sent. A list that fails or does not answer in time holds the whole
//! rollout (fail closed) with a [`UNKNOWN`] hold that says why: no node is granted on a guess.
//!
//! Who can reach it: the pods are read with the coordinator's own credential (list/watch
//! pods, cluster-wide, read only; see [`super::rbac`]). Whoever may create pods may hold a
//! node by labelling a pod so, which is the feature; such a pod cannot make a node be granted.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::events::brief;
use super::selector::Selector;
use super::update::{Hold, UpdateSpec};

/// The reason of a node's hold by a blocking pod.
pub const BLOCKING_POD: &str = "BlockingPod";
/// The reason of the rollout-wide hold when the pods could not be read.
pub const UNKNOWN: &str = "BlockingPodsUnknown";

/// How many pods one page of the list holds.
const POD_PAGE: u32 = 500;

/// The holds, one per node running matching pods (named, in name order).
pub fn holds_from_pods(pods: &[Pod], selector: &Selector) -> Vec<Hold> {
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        let Some(node) = node.filter(|n| !n.is_empty()) else {
            continue;
        };
        if finished || !selector.matches(pod.labels()) {
            continue;
        }
        by_node.entry(node).or_default().push(format!(
            "{}/{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        ));
    }
    by_node
        .into_iter()
        .map(|(node, mut pods)| {
            pods.sort();
            let message = match pods.as_slice() {
                [one] => format!("blocking pod {one}"),
                [first, ..] => format!("blocking pods {first} and {} more", pods.len() - 1),
                [] => unreachable!("an entry is made with a pod"),
            };
            Hold {
                node: Some(node),
                reason: BLOCKING_POD.into(),
                message,
            }
        })
        .collect()
}

/// The holds of `spec`'s blocking pods: none without a selector; one rollout-wide
/// [`UNKNOWN`] hold when the pods cannot be read within `limit`.
pub async fn find(pods: &Api<Pod>, spec: &UpdateSpec, limit: Duration) -> Vec<Hold> {
    let Some(sel) = &spec.blocking_pod_selector else {
        return Vec::new();
    };
    let unknown = |why: String| {
        vec![Hold {
            node: None,
            reason: UNKNOWN.into(),
            message: format!(
                "the pods matching blockingPodSelector could not be read ({why}); no node is \
                 granted until they can"
            ),
        }]
    };
    // validate refuses a selector that does not parse; this is the same check, fail closed.
    let selector = match Selector::from_label_selector(sel) {
        Ok(s) => s,
        Err(e) => return unknown(e),
    };
    let query = match selector.to_query() {
        Ok(q) => q,
        Err(e) => return unknown(e.to_string()),
    };
    match tokio::time::timeout(limit, list(pods, &query)).await {
        Ok(Ok(list)) => holds_from_pods(&list, &selector),
        Ok(Err(e)) => unknown(brief(&e)),
        Err(_) => unknown(format!("no answer from the API server within {limit:?}")),
    }
}

/// Every pod matching `query` not Succeeded or Failed, in pages.
async fn list(pods: &Api<Pod>, query: &str) -> Result<Vec<Pod>, kube::Error> {
    let mut all = Vec::new();
    let mut params = ListParams::default()
        .labels(query)
        .fields("status.phase!=Succeeded,status.phase!=Failed")
        .limit(POD_PAGE);
    loop {
        let page = pods.list(&params).await?;
        all.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: Option<&str>, phase: &str, app: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn running_matching_bound_pods_hold_their_node_only() {
        let sel = Selector::from_label_selector(
            &serde_json::from_value(json!({"matchLabels": {"app": "backup"}})).unwrap(),
        )
        .unwrap();
        let pods = [
            pod("b", "job-2", Some("w-1"), "Running", "backup"),
            pod("a", "job-1", Some("w-1"), "Pending", "backup"),
            pod("a", "done", Some("w-2"), "Succeeded", "backup"),
            pod("a", "failed", Some("w-2"), "Failed", "backup"),
            pod("a", "unbound", None, "Pending", "backup"),
            pod("a", "web", Some("w-3"), "Running", "web"),
            pod("a", "one", Some("w-4"), "Running", "backup"),
        ];
        let holds = holds_from_pods(&pods, &sel);
        assert_eq!(
            holds,
            vec![
                Hold {
                    node: Some("w-1".into()),
                    reason: BLOCKING_POD.into(),
                    message: "blocking pods a/job-1 and 1 more".into(),
                },
                Hold {
                    node: Some("w-4".into()),
                    reason: BLOCKING_POD.into(),
                    message: "blocking pod a/one".into(),
                },
            ]
        );
    }
}
