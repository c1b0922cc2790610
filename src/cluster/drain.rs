//! The drain filter: which pods on a node to evict, which to leave, which block the drain.
//!
//! kubectl's drain algorithm, as decisions only (the API calls are in `kube_drain`):
//! - terminal pods (Succeeded, Failed) hold nothing: left alone;
//! - mirror pods (static pods shown by the kubelet) cannot be evicted: left alone, the
//!   kubelet stops them with the node;
//! - pods already being deleted: not evicted again, but waited for;
//! - DaemonSet pods: left alone when `ignoreDaemonSets` (their controller would put them
//!   straight back), blocking otherwise;
//! - pods with emptyDir volumes: evicted only with `deleteEmptyDirData` (the data is lost);
//! - pods no controller recreates: evicted only with `force`;
//! - the rest: evicted.
//!
//! Blocking pods stop the drain before anything is evicted, as kubectl does: half a drain
//! followed by a refusal would only disturb workloads for nothing.

use k8s_openapi::api::core::v1::Pod;

use super::update::DrainPolicy;

/// Annotation the kubelet puts on mirror pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A pod, by identity: the UID tells a pod from its replacement of the same name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl PodRef {
    pub fn of(pod: &Pod) -> PodRef {
        PodRef {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

/// What the drain does with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Evict,
    /// Already being deleted: wait for it.
    Wait,
    Skip(&'static str),
    Block(String),
}

/// The drain's decisions for one node's pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainPlan {
    pub evict: Vec<PodRef>,
    pub wait: Vec<PodRef>,
    pub skipped: Vec<(PodRef, &'static str)>,
    pub blocked: Vec<(PodRef, String)>,
}

/// Decide for one pod.
pub fn classify(pod: &Pod, policy: &DrainPolicy) -> Verdict {
    let meta = &pod.metadata;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Verdict::Skip("finished");
    }
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Verdict::Skip("mirror pod");
    }
    if meta.deletion_timestamp.is_some() {
        return Verdict::Wait;
    }
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(c) = controller.filter(|c| c.kind == "DaemonSet") {
        return if policy.ignore_daemon_sets {
            Verdict::Skip("DaemonSet pod")
        } else {
            Verdict::Block(format!(
                "managed by DaemonSet {}; set drain.ignoreDaemonSets",
                c.name
            ))
        };
    }
    let mut needs = Vec::new();
    let empty_dir = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .find(|v| v.empty_dir.is_some());
    if let Some(v) = empty_dir {
        if !policy.delete_empty_dir_data {
            needs.push(format!(
                "has emptyDir volume {} (its data would be lost); set drain.deleteEmptyDirData or evictPodForce",
                v.name
            ));
        }
    }
    if controller.is_none() && !policy.force {
        needs.push("has no controller to recreate it; set drain.force or evictPodForce".to_owned());
    }
    if needs.is_empty() {
        Verdict::Evict
    } else {
        Verdict::Block(needs.join("; "))
    }
}

/// Decide for every pod of a node.
pub fn plan(pods: &[Pod], policy: &DrainPolicy) -> DrainPlan {
    let mut out = DrainPlan::default();
    for pod in pods {
        let r = PodRef::of(pod);
        match classify(pod, policy) {
            Verdict::Evict => out.evict.push(r),
            Verdict::Wait => out.wait.push(r),
            Verdict::Skip(why) => out.skipped.push((r, why)),
            Verdict::Block(why) => out.blocked.push((r, why)),
        }
    }
    out
}

/// The PodDisruptionBudget named in a refused eviction's message ("The disruption budget web
/// needs 1 healthy pods and has 1 currently"), when the server names one.
pub fn pdb_from_message(message: &str) -> Option<String> {
    let rest = message.split("disruption budget ").nth(1)?;
    let name = rest.split_whitespace().next()?;
    let name = name.trim_end_matches([',', '.', ':']);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
    ok.then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        let mut base = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
                              "spec": {"containers": [{"name": "c"}]}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn owned(kind: &str) -> serde_json::Value {
        json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": kind,
            "name": "owner", "uid": "o", "controller": true}]}})
    }

    #[test]
    fn each_kind_of_pod() {
        let p = DrainPolicy::default();
        assert_eq!(classify(&pod(owned("ReplicaSet")), &p), Verdict::Evict);
        assert_eq!(
            classify(&pod(owned("DaemonSet")), &p),
            Verdict::Skip("DaemonSet pod")
        );
        let strict = DrainPolicy {
            ignore_daemon_sets: false,
            ..p.clone()
        };
        assert!(
            matches!(classify(&pod(owned("DaemonSet")), &strict), Verdict::Block(w) if w.contains("DaemonSet owner"))
        );
        let mirror = pod(json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "x"}}}));
        assert_eq!(classify(&mirror, &p), Verdict::Skip("mirror pod"));
        let done = pod(json!({"status": {"phase": "Succeeded"}}));
        assert_eq!(classify(&done, &p), Verdict::Skip("finished"));
        let going = pod(json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}));
        assert_eq!(classify(&going, &p), Verdict::Wait);
        // Unreplicated: blocked without force, evicted with it.
        assert!(
            matches!(classify(&pod(json!({})), &p), Verdict::Block(w) if w.contains("no controller"))
        );
        let force = DrainPolicy {
            force: true,
            ..p.clone()
        };
        assert_eq!(classify(&pod(json!({})), &force), Verdict::Evict);
        // emptyDir: blocked without consent, with both reasons when unreplicated too.
        let mut ed = owned("ReplicaSet");
        merge(
            &mut ed,
            json!({"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}),
        );
        assert!(
            matches!(classify(&pod(ed.clone()), &p), Verdict::Block(w) if w.contains("emptyDir volume scratch"))
        );
        let consent = DrainPolicy {
            delete_empty_dir_data: true,
            ..p.clone()
        };
        assert_eq!(classify(&pod(ed), &consent), Verdict::Evict);
        let both = pod(json!({"spec": {"volumes": [{"name": "s", "emptyDir": {}}]}}));
        assert!(
            matches!(classify(&both, &p), Verdict::Block(w) if w.contains("emptyDir") && w.contains("no controller"))
        );
    }

    #[test]
    fn plan_sorts_pods_into_lists() {
        let p = DrainPolicy::default();
        let pods = [
            pod(owned("ReplicaSet")),
            pod(owned("DaemonSet")),
            pod(json!({})),
        ];
        let plan = plan(&pods, &p);
        assert_eq!(plan.evict.len(), 1);
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(plan.blocked.len(), 1);
        assert_eq!(plan.blocked[0].0.to_string(), "ns/p");
    }

    #[test]
    fn pdb_names_from_messages() {
        assert_eq!(
            pdb_from_message("The disruption budget web needs 1 healthy pods and has 1 currently")
                .as_deref(),
            Some("web")
        );
        assert_eq!(
            pdb_from_message("Cannot evict pod as it would violate the pod's disruption budget."),
            None
        );
    }
}
