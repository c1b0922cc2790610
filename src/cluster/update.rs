//! The `Update` resource (`updates.housekeeper.io`, v1alpha1, namespaced): what a rollout asks
//! for, and what the coordinator reports about it.
//!
//! The spec is a superset of NKD's: `osImageURL`, `kubeVersion`, `evictPodForce` and
//! `maxUnavailable` keep NKD's names and meaning, so an object NKD writes works unchanged. The
//! CRD manifest is generated from these types (deploy/crd.yaml, checked by a test). Kubernetes
//! 1.20 has no CEL, so the schema carries what OpenAPI v3 can say (bounds, patterns, enums) and
//! [`validate`] says the rest (image reference, time zone, window sanity); the coordinator and
//! hkctl both run it.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::window::Window;
pub use crate::image_ref::ImagePolicy;
use crate::image_ref::ImageRef;

/// The namespace hkctl writes Updates to and the coordinator watches.
pub use crate::config::hkd::NAMESPACE;

/// The per-node summary in status is bounded: etcd objects have a size limit (1.5 MiB) and a
/// status an admin reads should fit a screen. Nodes beyond it are counted, not listed.
pub const MAX_NODE_SUMMARIES: usize = 50;

/// Drain timeout when the Update does not say: long enough for ordinary graceful shutdowns and
/// a PDB that frees up after a replacement pod starts, short enough that a stuck drain is seen.
pub const DEFAULT_DRAIN_TIMEOUT_SECONDS: i64 = 600;

/// What to upgrade to, where, when, and how carefully.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "housekeeper.io",
    version = "v1alpha1",
    kind = "Update",
    plural = "updates",
    shortname = "hku",
    namespaced,
    status = "UpdateStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.osImageURL"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Done","type":"integer","jsonPath":".status.counts.done"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.counts.failed"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.counts.total"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UpdateSpec {
    /// The OS image to move nodes to. NKD's field: a bare `REGISTRY/NAME[:TAG|@DIGEST]` (which
    /// NKD pulls unverified), or a full reference such as `ostree-image-signed:docker://…`.
    #[serde(rename = "osImageURL")]
    #[schemars(length(min = 1))]
    pub os_image_url: String,
    /// The Kubernetes version kubeadm upgrades to after the OS (`v1.29.1`); empty or absent:
    /// the OS only. NKD's field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^$|^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$"))]
    pub kube_version: Option<String>,
    /// Evict pods that need consent (emptyDir data, no controller). NKD's field: it grants
    /// both `drain.deleteEmptyDirData` and `drain.force`.
    #[serde(default)]
    pub evict_pod_force: bool,
    /// How many selected nodes may be out of service at once. NKD's field.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
    /// Which nodes this Update is for; absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    #[serde(default)]
    pub drain: DrainPolicy,
    /// When nodes may be granted; empty: any time. Nodes already granted finish outside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<Window>,
    /// How many nodes may fail (and roll back) before the rollout halts.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_failed: i32,
    /// No new grants while true; nodes already granted finish.
    #[serde(default)]
    pub paused: bool,
    /// Set by `hkctl abort`: no new grants, ever, for this Update; `inFlight` says what the
    /// nodes already granted do. Lifted only by `hkctl upgrade`, which starts
    /// the rollout anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    /// At most this many selected nodes out of service per topology domain (each value of
    /// the node label `topologyKey`), beside `maxUnavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_unavailable_per_zone: Option<i32>,
    /// At most this many topology domains with a node out of service at once (1: never two
    /// zones at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_unavailable_zones: Option<i32>,
    /// The node label whose values are the domains of the two limits above; absent:
    /// `topology.kubernetes.io/zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 316))]
    pub topology_key: Option<String>,
    /// A node running a pod this selector matches (in any namespace, not yet Succeeded or
    /// Failed) is not granted until the pod is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocking_pod_selector: Option<LabelSelector>,
    /// Reboot gates: Prometheus queries and firing alerts that hold grants (see
    /// [`super::gates`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<super::gates::Gates>,
    /// A webhook the coordinator POSTs rollout events to (see [`super::notify`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<super::notify::Notifications>,
    /// Pre-staging ahead of the grants (see [`super::staging`]); absent: every selected node
    /// stages as soon as the Update selects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<Staging>,
}

/// How many nodes pull the target at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Staging {
    #[schemars(range(min = 1))]
    pub max_concurrent: i32,
}

/// An admin's abort of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    #[serde(default)]
    pub in_flight: InFlight,
}

/// What nodes already granted do when their rollout is aborted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum InFlight {
    /// Go on to the end (done or failed), as after a pause.
    #[default]
    Finish,
    /// Nodes that have not rebooted into the target yet withdraw: their staged deployment is
    /// dropped, hkd's cordon lifted, and they report Failed with the abort as the reason.
    /// Nodes already rebooted finish.
    RollBack,
}

fn one() -> i32 {
    1
}

/// How a node is drained before its reboot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainPolicy {
    /// The whole drain's time limit; then `onTimeout` decides.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: i64,
    /// Grace period given to each evicted pod; absent: the pod's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: Option<i64>,
    /// Evict pods with emptyDir volumes (their data is lost).
    #[serde(default)]
    pub delete_empty_dir_data: bool,
    /// Leave DaemonSet pods running (their controller would recreate them at once).
    #[serde(default = "yes")]
    pub ignore_daemon_sets: bool,
    /// Evict pods no controller will recreate.
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

fn default_timeout() -> i64 {
    DEFAULT_DRAIN_TIMEOUT_SECONDS
}

fn yes() -> bool {
    true
}

impl Default for DrainPolicy {
    fn default() -> DrainPolicy {
        DrainPolicy {
            timeout_seconds: DEFAULT_DRAIN_TIMEOUT_SECONDS,
            grace_period_seconds: None,
            delete_empty_dir_data: false,
            ignore_daemon_sets: true,
            force: false,
            on_timeout: OnTimeout::Abort,
        }
    }
}

/// What happens when a drain's time is up and pods remain.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnTimeout {
    /// Give up on this node: uncordon (if hkd cordoned), report failed, no reboot.
    #[default]
    Abort,
    /// Delete the remaining pods directly, past their PodDisruptionBudgets, then go on.
    DeleteWithoutEviction,
    /// Reboot with the remaining pods still there.
    Proceed,
}

/// What the coordinator last saw and decided. Written only by the coordinator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The generation at which the target (osImageURL, kubeVersion) last changed: grants and
    /// results from before it are for an older target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_generation: Option<i64>,
    /// The target `targetGeneration` refers to, to notice the next change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<UpdateTarget>,
    /// One word for `kubectl get`: Progressing, Waiting, Paused, Halted, Complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<UpdateCondition>,
    #[serde(default)]
    pub counts: Counts,
    /// At most [`MAX_NODE_SUMMARIES`] nodes, the ones an admin needs first: failed, in flight,
    /// waiting with a reason, then the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSummary>,
    /// Nodes left out of `nodes` for the bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes_omitted: i32,
    /// The coordinator term (the Lease's `leaseTransitions` when its holder took it) that
    /// last claimed this Update: a coordinator writes nothing here before its term is
    /// recorded, and stops when it reads a newer one (see [`super::ledger`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_term: Option<i64>,
    /// The grant ledger: per node, the grant of this Update it holds. Agents act only on
    /// grants recorded here (see [`super::ledger`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, GrantRecord>,
    /// What outside the Nodes holds grants, as the coordinator last looked: blocking pods
    /// (per node), gates (per node or for the whole rollout). At most [`MAX_HOLDS`]; `hkctl status` plans with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<Hold>,
    /// Staging permits (with `spec.staging`): per node, the target generation it may pre-stage
    /// for. Agents stage ahead of their grant only under one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub staging_permits: BTreeMap<String, i64>,
    /// Holds left out of `holds` for the bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holds_omitted: i32,
}

/// The bound on `status.holds`, for the same reasons as [`MAX_NODE_SUMMARIES`].
pub const MAX_HOLDS: usize = 50;

/// One thing outside the Nodes that holds grants.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    /// The node held; absent: the whole rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `BlockingPod`, `BlockingPodsUnknown` (the pods could not be read), `GateFiring`,
    /// `AlertFiring`, `GateRejected`, `PrometheusUnavailable`.
    pub reason: String,
    pub message: String,
}

/// One node's grant in the ledger: the Update's generation it was granted under (the grant is
/// `<Update uid>/<generation>`), the coordinator term that granted it and when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantRecord {
    pub generation: i64,
    pub term: i64,
    pub granted_at: Time,
    /// Who asked: absent for the planner's own grants to hkd nodes, [`FLEETLOCK`] for a lock a
    /// FleetLock client (Zincati) took (`src/cluster/fleetlock/`), released by its
    /// `steady-state` or reclaimed, never answered on the Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// [`GrantRecord::source`] of a FleetLock lock.
pub const FLEETLOCK: &str = "FleetLock";

impl GrantRecord {
    pub fn is_fleetlock(&self) -> bool {
        self.source.as_deref() == Some(FLEETLOCK)
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(rename = "Target")]
#[serde(rename_all = "camelCase")]
pub struct UpdateTarget {
    #[serde(rename = "osImageURL")]
    pub os_image_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_version: Option<String>,
}

/// A condition in the Kubernetes shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateCondition {
    /// Progressing, Complete, Halted or Paused.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True" or "False".
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    pub reason: String,
    // Omitted when empty: the 1.20 API server turned an empty string in this merge-patched
    // list into null, which the schema then refused (tests/cluster_drain.rs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub last_transition_time: Time,
}

/// Selected nodes per phase. `total` = pending + waiting + inFlight + done + failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub total: i32,
    /// Not started, and nothing keeps them from a grant but their turn.
    pub pending: i32,
    /// Not started and held back by something about the node (NotReady, cordoned by someone
    /// else, in another Update's rollout).
    pub waiting: i32,
    pub in_flight: i32,
    pub done: i32,
    pub failed: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    pub name: String,
    /// Pending, Waiting, Granted, the agent's phase (Draining, …), Done or Failed.
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// The generated CRD with the housekeeper labels.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = Update::crd();
    crd.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/part-of".to_owned(),
        "housekeeper".to_owned(),
    )]));
    crd
}

/// The CRD as the YAML checked in at deploy/crd.yaml.
pub fn crd_yaml() -> String {
    let value = serde_json::to_value(crd()).expect("a CRD serialises");
    let mut out = String::from("# Generated from src/cluster/update.rs; UPDATE_GOLDEN=1 cargo test cluster::update rewrites it.\n");
    super::yaml::emit(&value, &mut out);
    out
}

/// The image reference an Update names, in the form the node backends take (see
/// [`ImageRef::from_os_image_url`]); the error is one line naming the field.
pub fn target_image(os_image_url: &str, policy: ImagePolicy) -> Result<ImageRef, String> {
    ImageRef::from_os_image_url(os_image_url, policy).map_err(|e| e.to_string())
}

/// Everything about a spec the API server's schema cannot check. Each message is one line
/// naming the field.
pub fn validate(spec: &UpdateSpec, policy: ImagePolicy) -> Result<(), Vec<String>> {
    validated_image(spec, policy).map(|_| ())
}

/// [`validate`], and the image of a valid spec: `osImageURL` parsed once.
pub fn validated_image(spec: &UpdateSpec, policy: ImagePolicy) -> Result<ImageRef, Vec<String>> {
    let mut errors = Vec::new();
    let image = target_image(&spec.os_image_url, policy).map_err(|e| errors.push(e));
    if spec.max_unavailable < 1 {
        errors.push(format!(
            "maxUnavailable is {}; it must be at least 1",
            spec.max_unavailable
        ));
    }
    if spec.max_failed < 0 {
        errors.push(format!(
            "maxFailed is {}; it must be 0 or more",
            spec.max_failed
        ));
    }
    if let Some(v) = &spec.kube_version {
        if !v.is_empty() && !valid_kube_version(v) {
            errors.push(format!("kubeVersion {v:?} is not a version like v1.29.1"));
        }
    }
    if spec.drain.timeout_seconds < 1 {
        errors.push(format!(
            "drain.timeoutSeconds is {}; it must be at least 1",
            spec.drain.timeout_seconds
        ));
    }
    if spec.drain.grace_period_seconds.is_some_and(|g| g < 0) {
        errors.push("drain.gracePeriodSeconds must be 0 or more".to_owned());
    }
    for (i, w) in spec.maintenance_windows.iter().enumerate() {
        if let Err(e) = w.check() {
            errors.push(format!("maintenanceWindows[{i}]: {e}"));
        }
    }
    if let Some(sel) = &spec.node_selector {
        if let Err(e) = super::selector::Selector::from_label_selector(sel) {
            errors.push(format!("nodeSelector: {e}"));
        }
    }
    if let Some(sel) = &spec.blocking_pod_selector {
        match super::selector::Selector::from_label_selector(sel) {
            Ok(s) => {
                if let Err(e) = s.to_query() {
                    errors.push(format!("blockingPodSelector: {e}"));
                }
            }
            Err(e) => errors.push(format!("blockingPodSelector: {e}")),
        }
    }
    for (field, value) in [
        ("maxUnavailablePerZone", spec.max_unavailable_per_zone),
        ("maxUnavailableZones", spec.max_unavailable_zones),
    ] {
        if let Some(v) = value.filter(|v| *v < 1) {
            errors.push(format!(
                "{field} is {v}; it must be at least 1 (or absent: no limit)"
            ));
        }
    }
    if let Some(g) = &spec.gates {
        errors.extend(super::gates::check(g));
    }
    if let Some(e) = spec.notifications.as_ref().and_then(super::notify::check) {
        errors.push(e);
    }
    if let Some(s) = spec.staging.as_ref().filter(|s| s.max_concurrent < 1) {
        errors.push(format!(
            "staging.maxConcurrent is {}; it must be at least 1 (or no staging: every node at once)",
            s.max_concurrent
        ));
    }
    if let Some(key) = &spec.topology_key {
        if let Err(e) = super::selector::check_label_key(key) {
            errors.push(format!("topologyKey: {e}"));
        }
    }
    match image {
        Ok(image) if errors.is_empty() => Ok(image),
        _ => Err(errors),
    }
}

fn valid_kube_version(v: &str) -> bool {
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<_> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

impl UpdateSpec {
    /// `kubeVersion` with NKD's "empty means none".
    pub fn kube_version(&self) -> Option<&str> {
        self.kube_version.as_deref().filter(|v| !v.is_empty())
    }

    /// The effective drain policy: NKD's `evictPodForce` grants both consents.
    pub fn effective_drain(&self) -> DrainPolicy {
        let mut d = self.drain.clone();
        if self.evict_pod_force {
            d.delete_empty_dir_data = true;
            d.force = true;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> UpdateSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn crd_manifest_matches_the_checked_in_one() {
        crate::testing::golden("deploy/crd.yaml", &crd_yaml());
    }

    #[test]
    fn crd_says_what_the_server_must_enforce() {
        let crd = serde_json::to_value(crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["names"]["kind"], "Update");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(v["subresources"]["status"], json!({}));
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let props = &spec["properties"];
        assert_eq!(props["maxUnavailable"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(props["maxFailed"]["minimum"].as_f64(), Some(0.0));
        assert_eq!(
            props["maxUnavailablePerZone"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert_eq!(props["maxUnavailableZones"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(props["topologyKey"]["minLength"].as_f64(), Some(1.0));
        assert_eq!(
            props["drain"]["properties"]["onTimeout"]["enum"],
            json!(["abort", "deleteWithoutEviction", "proceed"])
        );
        let window = &props["maintenanceWindows"]["items"]["properties"];
        assert!(window["start"]["pattern"].is_string());
        assert_eq!(
            window["days"]["items"]["enum"],
            json!(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
        );
        assert_eq!(spec["required"], json!(["osImageURL"]));
        assert!(v["additionalPrinterColumns"].as_array().unwrap().len() >= 5);
    }

    #[test]
    fn an_nkd_written_update_works_unchanged() {
        // What NKD's housekeeper-operator writes: bare image, kubeVersion may be empty.
        let s = spec(json!({
            "osImageURL": "hub.oepkgs.net/nestos/nestos:22.03-LTS-SP2.20230928.0-x86_64",
            "kubeVersion": "",
            "evictPodForce": true,
            "maxUnavailable": 2,
        }));
        assert_eq!(s.kube_version(), None);
        assert_eq!(s.max_unavailable, 2);
        assert!(s.drain.ignore_daemon_sets);
        let d = s.effective_drain();
        assert!(d.force && d.delete_empty_dir_data);
        let allow = ImagePolicy {
            allow_unverified: true,
        };
        validate(&s, allow).unwrap();
        let image = target_image(&s.os_image_url, allow).unwrap();
        assert_eq!(
            image.raw,
            "ostree-unverified-registry:hub.oepkgs.net/nestos/nestos:22.03-LTS-SP2.20230928.0-x86_64"
        );
        // Unverified is refused unless the cluster allows it, and the message says how.
        let errs = validate(&s, ImagePolicy::default()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].contains("ostree-image-signed:docker://hub.oepkgs.net"),
            "{errs:?}"
        );
        // A full unverified reference, as NKD's newer releases write.
        let s2 = spec(json!({
            "osImageURL": "ostree-unverified-image:docker://hub.oepkgs.net/nestos/nestos:1",
        }));
        validate(&s2, allow).unwrap();
        assert!(validate(&s2, ImagePolicy::default()).is_err());
        assert_eq!(s2.max_unavailable, 1);
    }

    #[test]
    fn validate_names_each_bad_field() {
        let s = spec(json!({
            "osImageURL": "docker://no-prefix/x",
            "kubeVersion": "1.29",
            "maxUnavailable": 0,
            "maxFailed": -1,
            "drain": {"timeoutSeconds": 0},
            "maintenanceWindows": [
                {"start": "22:00", "end": "22:00", "timeZone": "Europe/Atlantis"},
            ],
            "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
            "maxUnavailablePerZone": 0,
            "maxUnavailableZones": -1,
            "topologyKey": "not a key",
            "blockingPodSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
        }));
        let errs = validate(&s, ImagePolicy::default()).unwrap_err();
        let all = errs.join("\n");
        for want in [
            "osImageURL",
            "kubeVersion \"1.29\"",
            "maxUnavailable is 0",
            "maxFailed is -1",
            "drain.timeoutSeconds",
            "maintenanceWindows[0]: time zone \"Europe/Atlantis\"",
            "start and end are both 22:00",
            "nodeSelector",
            "maxUnavailablePerZone is 0",
            "maxUnavailableZones is -1",
            "topologyKey: \"not a key\" is not a label key",
            "blockingPodSelector: app In needs values",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(errs.iter().all(|e| !e.contains('\n')));
    }

    #[test]
    fn verified_references_pass() {
        let s = spec(json!({
            "osImageURL": "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2",
            "kubeVersion": "v1.29.1",
            "maintenanceWindows": [{"days": ["Sat"], "start": "22:00", "end": "04:00",
                                    "timeZone": "Asia/Shanghai"}],
        }));
        validate(&s, ImagePolicy::default()).unwrap();
    }
}
