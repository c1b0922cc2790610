//! Who Housekeeper is in the cluster: hkd's namespace, the identities of the coordinator and
//! of each node, and their RBAC, generated here; the cluster-wide part is checked in as
//! deploy/rbac.yaml (a test compares them), the per-node part is made by `hkctl install` for
//! the Nodes it finds. hkd runs on the host, not in a pod, and authenticates through a
//! kubeconfig `hkctl install` writes.
//!
//! Two kinds of identity, so that a stolen file takes no more than it must:
//!
//! | identity | authenticates as | may | why |
//! |---|---|---|---|
//! | coordinator | ServiceAccount `housekeeper-system/hkd-coordinator` | nodes: get, list, watch (cluster) | plan over every Node's phase |
//! | | | pods: list (cluster), read only | find the pods `blockingPodSelector` matches |
//! | | | updates: get, list, watch; updates/status: get, patch, update (hkd's namespace) | read the rollout, record grants and progress in its status |
//! | | | leases: create; get, update, patch on `housekeeper-coordinator` only | election (`create` cannot be limited by name) |
//! | | | secrets: get on `housekeeper-prometheus` only (hkd's namespace) | Prometheus's credentials for the reboot gates |
//! | | | events: create, patch (hkd's namespace and `default`) | Events on Updates and on Nodes, beside the kubelet's |
//! | node `N` | ServiceAccount `housekeeper-system/hkd-node-N`, impersonating `system:node:N` in group `system:nodes` | impersonate user `system:node:N` and group `system:nodes`, nothing else | every request is authorized as node `N`'s kubelet is |
//! | coordinator, with `hkctl install --fleetlock` only | ClusterRole `housekeeper-coordinator-fleetlock` | nodes: patch; pods: get, list, delete; pods/eviction: create (cluster) | cordon and drain the FleetLock nodes, which run Zincati and no hkd (`cluster::fleetlock`) |
//! | every node (group `system:nodes`) | the Node authorizer and the NodeRestriction admission plugin | its own Node: get, watch, patch annotations and `spec.unschedulable` (not its taints, not restricted labels); pods bound to it: evict, delete; Events | what the kubelet may anyway: report phases, cordon itself, drain itself |
//! | | Role `housekeeper-node` (hkd's namespace) | updates: get, list, watch | follow the rollout, read only |
//!
//! So a node's credential holds no power beyond its own kubelet's (which a root on that node
//! has anyway): it cannot write another Node, evict or delete another node's pods, write an
//! Update or its status, or touch the Lease. Revoking one node (`hkctl revoke N`) deletes its
//! ServiceAccount, ClusterRole and binding: its requests are refused at once (403: the right to
//! act as the node is gone), and its token itself within 10 s (401: the API server looks the
//! ServiceAccount up for every token, after its 10 s cache of accepted tokens); no other node
//! is affected.
//!
//! The coordinator runs inside hkd on control-plane nodes only (`kubernetes.coordinate`). Those
//! nodes already hold cluster-admin power on disk (`/etc/kubernetes/admin.conf`, etcd's client
//! keys, the CA key), so a coordinator credential there adds nothing a root on them lacks, and
//! no container image or Deployment is needed on NestOS hosts. It no longer patches Nodes and
//! never touches pods' lifecycles: grants live in the Update's status and each node drains
//! itself. It lists pods (read only) for `blockingPodSelector`; RBAC cannot narrow a list to a
//! label, so it may read every pod's spec, as every node's kubelet may already. The one
//! exception is opt-in: with the FleetLock server (`hkctl install --fleetlock`) a Zincati node
//! has no hkd to drain it, so the coordinator cordons and drains it, and for that alone it is
//! given the rights to patch Nodes and evict and delete pods, in a ClusterRole of its own. On
//! control-plane nodes that adds nothing a root there lacks (admin.conf is on the disk); what
//! it adds is that a stolen coordinator kubeconfig can now drain any node. A later install
//! without the flag leaves the role as it is (`hkctl uninstall`, or deleting the
//! ClusterRoleBinding `housekeeper-coordinator-fleetlock`, withdraws it).
//!
//! Discovery (`/api`, `/apis/policy`, used to pick the Eviction version) is open to every
//! authenticated user through the cluster's own `system:discovery` binding; an impersonated
//! user is in `system:authenticated` too.
//!
//! Checked against kube-apiserver v1.20.2 with `--authorization-mode=Node,RBAC` and
//! `--enable-admission-plugins=NodeRestriction` (tests/cluster_trust.rs): every "may" above
//! answered (eviction as `policy/v1beta1`, the version 1.20 serves), every other write by a
//! node identity was refused with 403. Nothing had to be adapted. A node may still read every
//! Node and pod, as its kubelet may.
//!
//! Per-node object names: `hkd-node-<node>` (ServiceAccount, ClusterRole and
//! ClusterRoleBinding), labelled `housekeeper.io/node=<node>`. A name that would pass the 253
//! characters of an object name is cut and ends in a hash of the whole node name
//! ([`node_object_name`]); a label value is limited to 63 characters the same way
//! ([`node_label_value`]); the full name is also in the annotation `housekeeper.io/node`.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::ObjectMeta;
use serde_json::Value;
use sha2::Digest as _;

use super::events::NODE_EVENT_NAMESPACE;
use super::gates::CREDENTIALS_SECRET;
use super::lease::LEASE_NAME;
use super::update::NAMESPACE;

/// The coordinator's ServiceAccount.
pub const COORDINATOR_SERVICE_ACCOUNT: &str = "hkd-coordinator";

/// The name of the coordinator's ClusterRole, Roles and their bindings.
pub const COORDINATOR_ROLE: &str = "housekeeper-coordinator";

/// The ClusterRole (and binding) that lets the coordinator cordon and drain FleetLock nodes.
pub const FLEETLOCK_ROLE: &str = "housekeeper-coordinator-fleetlock";

/// The Role in hkd's namespace bound to every node (group `system:nodes`): read Updates.
pub const NODE_ROLE: &str = "housekeeper-node";

/// Every node's ServiceAccount, ClusterRole and binding are named this and the node's name.
pub const NODE_OBJECT_PREFIX: &str = "hkd-node-";

/// The label (and annotation) naming the node a per-node object belongs to.
pub const NODE_LABEL: &str = "housekeeper.io/node";

/// The group the Node authorizer recognises, and the prefix of a node's user name.
pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The one ServiceAccount every node shared before per-node identities; install removes it,
/// and with it every token it was issued.
pub const LEGACY_SERVICE_ACCOUNT: &str = "hkd";

/// The shared account's ClusterRole, Roles and bindings (in hkd's namespace and `default`);
/// install removes them.
pub const LEGACY_ROLE: &str = "housekeeper-hkd";

/// The name the shared role was exported as (still used by tests that apply it).
pub const ROLE: &str = LEGACY_ROLE;

/// The label every object of Housekeeper's carries (`kubectl get … -l` finds them).
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "housekeeper");

/// Longest object name (a DNS subdomain) and label value Kubernetes takes.
const MAX_NAME: usize = 253;
const MAX_LABEL_VALUE: usize = 63;

/// Hex digits of the hash that ends a shortened name.
const HASH_DIGITS: usize = 16;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some([(PART_OF.0.to_owned(), PART_OF.1.to_owned())].into()),
        ..Default::default()
    }
}

fn node_meta(node: &str, namespace: Option<&str>) -> ObjectMeta {
    let mut m = meta(&node_object_name(node), namespace);
    m.labels
        .get_or_insert_with(Default::default)
        .insert(NODE_LABEL.to_owned(), node_label_value(node));
    m.annotations = Some([(NODE_LABEL.to_owned(), node.to_owned())].into());
    m
}

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        non_resource_urls: None,
    }
}

fn service_account(name: &str) -> Subject {
    Subject {
        api_group: None,
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(NAMESPACE.into()),
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: RBAC_GROUP.into(),
        kind: kind.into(),
        name: name.into(),
    }
}

fn value<T: serde::Serialize + kube::Resource<DynamicType = ()>>(object: T) -> Value {
    let mut v = serde_json::to_value(&object).expect("a Kubernetes object serialises");
    // Typed objects leave apiVersion and kind to the client; a manifest states them.
    let fields = v.as_object_mut().expect("an object");
    let mut out = serde_json::Map::new();
    out.insert("apiVersion".into(), T::api_version(&()).into());
    out.insert("kind".into(), T::kind(&()).into());
    for (k, val) in std::mem::take(fields) {
        out.entry(k).or_insert(val);
    }
    Value::Object(out)
}

/// The cluster-wide objects, in the order to apply them: the namespace, the coordinator's
/// ServiceAccount, roles and bindings, and the read-only Role every node gets.
pub fn manifests() -> Vec<Value> {
    let ns = Some(NAMESPACE);
    let events = rule("", &["events"], &["create", "patch"], &[]);
    let coordinator = || vec![service_account(COORDINATOR_SERVICE_ACCOUNT)];
    vec![
        value(Namespace {
            metadata: meta(NAMESPACE, None),
            ..Default::default()
        }),
        value(ServiceAccount {
            metadata: meta(COORDINATOR_SERVICE_ACCOUNT, ns),
            ..Default::default()
        }),
        value(ClusterRole {
            metadata: meta(COORDINATOR_ROLE, None),
            rules: Some(vec![
                rule("", &["nodes"], &["get", "list", "watch"], &[]),
                // Read only, for blockingPodSelector (src/cluster/blocking.rs).
                rule("", &["pods"], &["list"], &[]),
            ]),
            aggregation_rule: None,
        }),
        value(ClusterRoleBinding {
            metadata: meta(COORDINATOR_ROLE, None),
            role_ref: role_ref("ClusterRole", COORDINATOR_ROLE),
            subjects: Some(coordinator()),
        }),
        value(Role {
            metadata: meta(COORDINATOR_ROLE, ns),
            rules: Some(vec![
                rule(
                    "housekeeper.io",
                    &["updates"],
                    &["get", "list", "watch"],
                    &[],
                ),
                rule(
                    "housekeeper.io",
                    &["updates/status"],
                    &["get", "patch", "update"],
                    &[],
                ),
                // Prometheus's credentials for the reboot gates (src/cluster/gates), that one
                // Secret only.
                rule("", &["secrets"], &["get"], &[CREDENTIALS_SECRET]),
                // `create` cannot be limited by name: the name is not known before.
                rule("coordination.k8s.io", &["leases"], &["create"], &[]),
                rule(
                    "coordination.k8s.io",
                    &["leases"],
                    &["get", "update", "patch"],
                    &[LEASE_NAME],
                ),
                events.clone(),
            ]),
        }),
        value(RoleBinding {
            metadata: meta(COORDINATOR_ROLE, ns),
            role_ref: role_ref("Role", COORDINATOR_ROLE),
            subjects: Some(coordinator()),
        }),
        value(Role {
            metadata: meta(COORDINATOR_ROLE, Some(NODE_EVENT_NAMESPACE)),
            rules: Some(vec![events]),
        }),
        value(RoleBinding {
            metadata: meta(COORDINATOR_ROLE, Some(NODE_EVENT_NAMESPACE)),
            role_ref: role_ref("Role", COORDINATOR_ROLE),
            subjects: Some(coordinator()),
        }),
        value(Role {
            metadata: meta(NODE_ROLE, ns),
            rules: Some(vec![rule(
                "housekeeper.io",
                &["updates"],
                &["get", "list", "watch"],
                &[],
            )]),
        }),
        value(RoleBinding {
            metadata: meta(NODE_ROLE, ns),
            role_ref: role_ref("Role", NODE_ROLE),
            subjects: Some(vec![Subject {
                api_group: Some(RBAC_GROUP.into()),
                kind: "Group".into(),
                name: NODES_GROUP.into(),
                namespace: None,
            }]),
        }),
    ]
}

/// The opt-in objects of `hkctl install --fleetlock`: the coordinator may cordon Nodes and
/// evict (or, under `onTimeout: deleteWithoutEviction`, delete) pods, cluster-wide.
pub fn fleetlock_manifests() -> Vec<Value> {
    vec![
        value(ClusterRole {
            metadata: meta(FLEETLOCK_ROLE, None),
            rules: Some(vec![
                rule("", &["nodes"], &["patch"], &[]),
                rule("", &["pods"], &["get", "list", "delete"], &[]),
                rule("", &["pods/eviction"], &["create"], &[]),
            ]),
            aggregation_rule: None,
        }),
        value(ClusterRoleBinding {
            metadata: meta(FLEETLOCK_ROLE, None),
            role_ref: role_ref("ClusterRole", FLEETLOCK_ROLE),
            subjects: Some(vec![service_account(COORDINATOR_SERVICE_ACCOUNT)]),
        }),
    ]
}

/// Why `node` cannot name a node's credential, if it cannot: a Node's name is a DNS
/// subdomain (RFC 1123: at most 253 characters, lower-case letters, digits, `-` and `.`, each
/// dot-separated part beginning and ending with a letter or digit). The API server enforces
/// it for Nodes; it is checked again here because the name becomes a file name.
pub fn check_node_name(node: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{node:?} is not a node name: {why}"));
    if node.is_empty() {
        return bad("it is empty");
    }
    if node.contains('/') || node.contains("..") {
        return bad("it contains '/' or '..'");
    }
    if node.len() > MAX_NAME {
        return bad("it is longer than 253 characters");
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    for part in node.split('.') {
        let edges_ok = part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !edges_ok || !part.chars().all(ok_char) {
            return bad(
                "only lower-case letters, digits, '-' and '.' (each part beginning and ending \
                 with a letter or digit)",
            );
        }
    }
    Ok(())
}

/// `text`, or when longer than `max`, its beginning and a hash of all of it, `max` long at
/// most, beginning and ending with a letter or digit.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let head = text[..max - HASH_DIGITS - 1].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{}", &hash[..HASH_DIGITS])
}

/// The name of node `node`'s ServiceAccount, ClusterRole and ClusterRoleBinding.
pub fn node_object_name(node: &str) -> String {
    let name = format!("{NODE_OBJECT_PREFIX}{node}");
    bounded(&name, MAX_NAME)
}

/// The value of the [`NODE_LABEL`] label on node `node`'s objects.
pub fn node_label_value(node: &str) -> String {
    bounded(node, MAX_LABEL_VALUE)
}

/// The user name node `node`'s kubelet has, and its hkd impersonates.
pub fn node_user(node: &str) -> String {
    format!("{NODE_USER_PREFIX}{node}")
}

/// Node `node`'s own objects, in the order to apply them: its ServiceAccount, and the
/// ClusterRole and binding that let it impersonate that node and nobody else.
pub fn node_manifests(node: &str) -> Vec<Value> {
    let name = node_object_name(node);
    vec![
        value(ServiceAccount {
            metadata: node_meta(node, Some(NAMESPACE)),
            ..Default::default()
        }),
        value(ClusterRole {
            metadata: node_meta(node, None),
            rules: Some(vec![
                rule("", &["users"], &["impersonate"], &[&node_user(node)]),
                rule("", &["groups"], &["impersonate"], &[NODES_GROUP]),
            ]),
            aggregation_rule: None,
        }),
        value(ClusterRoleBinding {
            metadata: node_meta(node, None),
            role_ref: role_ref("ClusterRole", &name),
            subjects: Some(vec![service_account(&name)]),
        }),
    ]
}

/// The objects of the shared `hkd` account, as (kind, namespace, name), in the order to
/// delete them: the ServiceAccount first, so its tokens stop working before anything else.
pub fn legacy_objects() -> Vec<(&'static str, Option<&'static str>, &'static str)> {
    vec![
        ("ServiceAccount", Some(NAMESPACE), LEGACY_SERVICE_ACCOUNT),
        ("ClusterRoleBinding", None, LEGACY_ROLE),
        ("ClusterRole", None, LEGACY_ROLE),
        ("RoleBinding", Some(NAMESPACE), LEGACY_ROLE),
        ("Role", Some(NAMESPACE), LEGACY_ROLE),
        ("RoleBinding", Some(NODE_EVENT_NAMESPACE), LEGACY_ROLE),
        ("Role", Some(NODE_EVENT_NAMESPACE), LEGACY_ROLE),
    ]
}

/// The manifests as the YAML checked in at deploy/rbac.yaml.
pub fn yaml() -> String {
    let mut out = String::from(
        "# Generated from src/cluster/rbac.rs; UPDATE_GOLDEN=1 cargo test cluster::rbac rewrites it.\n\
         # The cluster-wide part only: each node's own ServiceAccount hkd-node-NAME, ClusterRole and\n\
         # ClusterRoleBinding (impersonate system:node:NAME) are made by `hkctl install` for the\n\
         # Nodes it finds; `hkctl install --dry-run -o yaml` prints them too.\n",
    );
    for m in manifests() {
        out.push_str("---\n");
        super::yaml::emit(&m, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_manifest_matches_the_checked_in_one() {
        crate::testing::golden("deploy/rbac.yaml", &yaml());
    }

    /// Every verb on every resource, as "verb group/resource@namespace[names]", of the roles
    /// among `manifests` whose name is `role`.
    fn grants(manifests: &[Value], role: &str) -> Vec<String> {
        let mut out = Vec::new();
        for m in manifests.iter().filter(|m| m["metadata"]["name"] == role) {
            let ns = m["metadata"]["namespace"]
                .as_str()
                .unwrap_or("*")
                .to_owned();
            for r in m["rules"].as_array().into_iter().flatten() {
                let names = r["resourceNames"]
                    .as_array()
                    .map(|n| format!("{n:?}").replace('"', ""))
                    .unwrap_or_default();
                for g in r["apiGroups"].as_array().unwrap() {
                    for res in r["resources"].as_array().unwrap() {
                        for v in r["verbs"].as_array().unwrap() {
                            out.push(format!(
                                "{} {}/{}@{ns}{names}",
                                v.as_str().unwrap(),
                                g.as_str().unwrap(),
                                res.as_str().unwrap()
                            ));
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_coordinator_may_exactly_what_it_calls_and_never_writes_pods_or_nodes() {
        let want = [
            "create /events@default",
            "create /events@housekeeper-system",
            "create coordination.k8s.io/leases@housekeeper-system",
            "get /nodes@*",
            "get /secrets@housekeeper-system[String(housekeeper-prometheus)]",
            "get coordination.k8s.io/leases@housekeeper-system[String(housekeeper-coordinator)]",
            "get housekeeper.io/updates/status@housekeeper-system",
            "get housekeeper.io/updates@housekeeper-system",
            "list /nodes@*",
            "list /pods@*",
            "list housekeeper.io/updates@housekeeper-system",
            "patch /events@default",
            "patch /events@housekeeper-system",
            "patch coordination.k8s.io/leases@housekeeper-system[String(housekeeper-coordinator)]",
            "patch housekeeper.io/updates/status@housekeeper-system",
            "update coordination.k8s.io/leases@housekeeper-system[String(housekeeper-coordinator)]",
            "update housekeeper.io/updates/status@housekeeper-system",
            "watch /nodes@*",
            "watch housekeeper.io/updates@housekeeper-system",
        ];
        assert_eq!(grants(&manifests(), COORDINATOR_ROLE), want);
        // No wildcard anywhere.
        assert!(!yaml().contains("\"*\""));
    }

    #[test]
    fn every_node_reads_updates_and_nothing_more() {
        assert_eq!(
            grants(&manifests(), NODE_ROLE),
            [
                "get housekeeper.io/updates@housekeeper-system",
                "list housekeeper.io/updates@housekeeper-system",
                "watch housekeeper.io/updates@housekeeper-system",
            ]
        );
        let binding = manifests()
            .into_iter()
            .find(|m| m["kind"] == "RoleBinding" && m["metadata"]["name"] == NODE_ROLE)
            .unwrap();
        assert_eq!(binding["subjects"][0]["kind"], "Group");
        assert_eq!(binding["subjects"][0]["name"], NODES_GROUP);
    }

    #[test]
    fn a_node_may_only_impersonate_itself() {
        let objects = node_manifests("worker-1.example");
        let name = "hkd-node-worker-1.example";
        assert_eq!(
            grants(&objects, name),
            [
                "impersonate /groups@*[String(system:nodes)]",
                "impersonate /users@*[String(system:node:worker-1.example)]",
            ]
        );
        for m in &objects {
            assert_eq!(m["metadata"]["name"], name);
            assert_eq!(m["metadata"]["labels"][NODE_LABEL], "worker-1.example");
            assert_eq!(m["metadata"]["annotations"][NODE_LABEL], "worker-1.example");
        }
        assert_eq!(objects[0]["metadata"]["namespace"], NAMESPACE);
        assert_eq!(objects[2]["subjects"][0]["name"], name);
        assert_eq!(objects[2]["roleRef"]["name"], name);
    }

    #[test]
    fn every_object_is_labelled_and_bindings_name_one_subject() {
        for m in manifests().iter().chain(&node_manifests("n")) {
            assert_eq!(
                m["metadata"]["labels"][PART_OF.0], PART_OF.1,
                "{}",
                m["kind"]
            );
            assert!(m["apiVersion"].is_string() && m["kind"].is_string());
            if let Some(subjects) = m["subjects"].as_array() {
                assert_eq!(subjects.len(), 1);
            }
        }
    }

    #[test]
    fn node_names_are_checked_and_long_ones_bounded() {
        for good in ["a", "node-1", "n1.example.com", &"a".repeat(253)] {
            assert_eq!(check_node_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "a..b",
            "A",
            "-a",
            "a-",
            ".a",
            "a_b",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        let name = node_object_name(&long);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.starts_with("hkd-node-aaa"));
        assert_ne!(
            name,
            node_object_name(&format!("{}.{}", "a".repeat(200), "c".repeat(52)))
        );
        let label = node_label_value(&long);
        assert!(label.len() <= 63);
        assert!(label.ends_with(|c: char| c.is_ascii_alphanumeric()));
        assert_eq!(node_label_value("short"), "short");
        assert_eq!(node_object_name("short"), "hkd-node-short");
        // A cut that lands on a dot does not leave it before the hash.
        let dotted = format!("{}.{}", "a".repeat(45), "b".repeat(40));
        assert!(!node_label_value(&dotted).contains(".-"));
    }
}
