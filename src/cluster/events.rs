//! Kubernetes Events: one writer for the coordinator's (on Updates and Nodes) and the agents'
//! (on their Node). An Event is a courtesy to the admin (`kubectl describe`, `hkctl node`):
//! the state itself lives in annotations and status, so a failed write is logged, not
//! returned.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Where Events about Nodes go: Nodes have no namespace, and `default` is where the kubelet
/// and the node controllers put theirs, so `kubectl describe node` shows ours beside them.
pub const NODE_EVENT_NAMESPACE: &str = "default";

/// Who writes: `source.component` / `reportingComponent`, and the instance (a node name).
#[derive(Debug, Clone)]
pub struct Reporter {
    pub component: &'static str,
    pub instance: String,
}

/// A reference to the Node `name` (uid when known).
pub fn node_ref(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.to_owned()),
        uid,
        ..Default::default()
    }
}

/// Write one Event about `about` in namespace `ns`. `type_` is `Normal` or `Warning`.
pub async fn record(
    client: &Client,
    by: &Reporter,
    about: ObjectReference,
    ns: &str,
    type_: &str,
    reason: &str,
    message: String,
) {
    let now = Timestamp::now();
    let name = about.name.clone().unwrap_or_default();
    let kind = about.kind.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.to_owned()),
            ..Default::default()
        },
        involved_object: about,
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(type_.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        source: Some(EventSource {
            component: Some(by.component.into()),
            host: None,
        }),
        reporting_component: Some(by.component.into()),
        reporting_instance: Some(by.instance.clone()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::warn!("recording Event {reason} on {kind} {name}: {}", brief(&e));
    }
}

/// A kube error in one line: the server's message and code, without the whole Status.
pub fn brief(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        e => e.to_string(),
    }
}
