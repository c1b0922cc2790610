//! The kubelet stand-in: what a kubelet would write to the API server, written by the tests.
//!
//! No kubelet runs in the test cluster, so nothing would ever register a Node, start a pod,
//! report it Ready or finish it after deletion. That matters: the API server ignores
//! PodDisruptionBudgets when evicting pods that are not Running and Ready, and an evicted pod
//! keeps its deletionTimestamp until its kubelet confirms the end. This stand-in plays those
//! parts through the same API calls a kubelet makes (Node create + status, pod `/status`,
//! delete with `gracePeriodSeconds: 0`). It runs no containers and does not wait out grace
//! periods: a real kubelet's graceful termination can only be seen on a real cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use kube::api::{
    DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Api, Client};
use serde_json::json;

use super::cluster::{TestEnv, TEST_LABEL};

/// The role a stand-in Node plays; control-plane nodes carry the labels kubeadm puts on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    ControlPlane,
    Worker,
}

/// Stand-in for the kubelets of a test's Nodes.
pub struct KubeletStandIn {
    client: Client,
}

impl KubeletStandIn {
    pub fn new(client: Client) -> KubeletStandIn {
        KubeletStandIn { client }
    }

    /// Register a Node as a kubelet does: labels, then a Ready status with capacity.
    pub async fn register_node(&self, env: &TestEnv, short: &str, role: NodeRole) -> Result<Node> {
        let name = env.unique(short);
        let mut labels: BTreeMap<String, String> = [
            ("kubernetes.io/hostname", name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            (TEST_LABEL, "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if role == NodeRole::ControlPlane {
            // Both labels: kubeadm before 1.24 set `master`, later ones `control-plane`.
            labels.insert(
                "node-role.kubernetes.io/control-plane".into(),
                String::new(),
            );
            labels.insert("node-role.kubernetes.io/master".into(), String::new());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .create(
                &PostParams::default(),
                &Node {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("registering stand-in node {name}"))?;
        env.track_node(&name);
        let capacity = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [ready_condition(true)],
                    "nodeInfo": {
                        "kubeletVersion": "v1.20.2-stand-in",
                        "osImage": "housekeeper kubelet stand-in",
                        "architecture": "amd64", "operatingSystem": "linux",
                        "machineID": "", "systemUUID": "", "bootID": "",
                        "kernelVersion": "", "containerRuntimeVersion": "",
                        "kubeProxyVersion": "",
                    },
                }})),
            )
            .await
            .with_context(|| format!("reporting stand-in node {name} Ready"))
    }

    /// Flip a Node's Ready condition, as a kubelet (or the node lifecycle controller) would.
    pub async fn set_node_ready(&self, node: &str, ready: bool) -> Result<Node> {
        Api::<Node>::all(self.client.clone())
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [ready_condition(ready)]}})),
            )
            .await
            .with_context(|| format!("setting node {node} Ready={ready}"))
    }

    /// Create a pod bound to `node` and report it Running and Ready.
    pub async fn run_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
    ) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut all_labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all_labels.insert(TEST_LABEL.into(), "true".into());
        pods.create(
            &PostParams::default(),
            &Pod {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(all_labels),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    // No scheduler runs: bind the pod directly, as a static assignment.
                    node_name: Some(node.to_owned()),
                    containers: vec![Container {
                        name: "main".into(),
                        // Never pulled: no container runtime exists behind the stand-in.
                        image: Some("registry.invalid/housekeeper/stand-in:1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))?;
        let condition = |t: &str| json!({"type": t, "status": "True"});
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "conditions": [
                    condition("PodScheduled"), condition("Initialized"),
                    condition("ContainersReady"), condition("Ready"),
                ],
                "containerStatuses": [{
                    "name": "main", "ready": true, "started": true, "restartCount": 0,
                    "image": "registry.invalid/housekeeper/stand-in:1", "imageID": "",
                    "state": {"running": {}},
                }],
            }})),
        )
        .await
        .with_context(|| format!("reporting pod {ns}/{name} Running and Ready"))
    }

    /// Finish every pod of `ns` that is being deleted (deletionTimestamp set), as its kubelet
    /// would once the containers stopped: delete with grace period 0, guarded by the pod's UID
    /// so a replacement of the same name is never hit. Returns the names finished.
    pub async fn finish_terminating(&self, ns: &str) -> Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut finished = Vec::new();
        for pod in pods.list(&ListParams::default()).await?.items {
            if pod.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match pods.delete(&name, &dp).await {
                Ok(_) => finished.push(name),
                // Already gone, or replaced by a pod with another UID: nothing to finish.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("finishing pod {ns}/{name}")),
            }
        }
        Ok(finished)
    }

    /// Run [`Self::finish_terminating`] for `ns` in the background until the guard is dropped,
    /// so that code under test sees deleted pods disappear shortly, as on a real node.
    pub fn spawn_finisher(&self, ns: &str) -> FinisherGuard {
        let me = KubeletStandIn::new(self.client.clone());
        let ns = ns.to_owned();
        FinisherGuard(tokio::spawn(async move {
            loop {
                if let Err(e) = me.finish_terminating(&ns).await {
                    eprintln!("kubelet stand-in: {e:#}");
                }
                tokio::time::sleep(FINISHER_PERIOD).await;
            }
        }))
    }
}

/// How often the background finisher looks for terminating pods: short against test
/// timeouts, long enough not to load the API server.
const FINISHER_PERIOD: Duration = Duration::from_millis(200);

/// Stops the background finisher when dropped.
pub struct FinisherGuard(tokio::task::JoinHandle<()>);

impl Drop for FinisherGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn ready_condition(ready: bool) -> serde_json::Value {
    json!({
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
        "message": "set by the housekeeper test kubelet stand-in",
    })
}
