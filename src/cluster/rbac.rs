//! What hkd may do in the cluster: its namespace, ServiceAccount and RBAC, generated here and
//! checked in as deploy/rbac.yaml (a test compares them); `hkctl install` applies them.
//!
//! hkd runs on the host, not in a pod, and authenticates as the ServiceAccount
//! `housekeeper-system/hkd` through the kubeconfig `hkctl install` writes. The rules grant
//! exactly the calls hkd makes, found in the code that makes them:
//!
//! | resource | verbs | who calls, why |
//! |---|---|---|
//! | nodes | get, list, watch, patch | coordinator: watch and list Nodes, write grants; agent: cordon, report phases (annotations) |
//! | pods | get, list, delete | drain: list a node's pods, wait for each by name, `deleteWithoutEviction` |
//! | pods/eviction | create | drain: evict |
//! | updates | get, list, watch | coordinator and agent read the rollout |
//! | updates/status | get, patch, update | coordinator writes the status |
//! | leases | create; get, update, patch on `housekeeper-coordinator` only | coordinator election |
//! | events | create, patch | Events on Updates (in hkd's namespace) and on Nodes (in `default`, beside the kubelet's) |
//!
//! Discovery (`/api`, `/apis/policy`, used to pick the Eviction version) is open to every
//! authenticated user through the cluster's own `system:discovery` binding.
//!
//! Cluster-scoped objects (Nodes, and pods in every namespace for the drain) need a
//! ClusterRole; everything else is a Role in the namespace it concerns, so hkd cannot touch
//! Updates, Leases or Events anywhere else.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::ObjectMeta;
use serde_json::Value;

use super::coordinator::NODE_EVENT_NAMESPACE;
use super::lease::LEASE_NAME;
use super::update::NAMESPACE;

/// The ServiceAccount hkd authenticates as.
pub const SERVICE_ACCOUNT: &str = "hkd";

/// The name of the ClusterRole, the Roles and their bindings.
pub const ROLE: &str = "housekeeper-hkd";

/// The label every object of Housekeeper's carries (`kubectl get … -l` finds them).
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "housekeeper");

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some([(PART_OF.0.to_owned(), PART_OF.1.to_owned())].into()),
        ..Default::default()
    }
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

fn subject() -> Subject {
    Subject {
        api_group: None,
        kind: "ServiceAccount".into(),
        name: SERVICE_ACCOUNT.into(),
        namespace: Some(NAMESPACE.into()),
    }
}

fn role_ref(kind: &str) -> RoleRef {
    RoleRef {
        api_group: RBAC_GROUP.into(),
        kind: kind.into(),
        name: ROLE.into(),
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

/// The namespace, the ServiceAccount, and the roles and bindings, in the order to apply them.
pub fn manifests() -> Vec<Value> {
    let ns = Some(NAMESPACE);
    let events = rule("", &["events"], &["create", "patch"], &[]);
    vec![
        value(Namespace {
            metadata: meta(NAMESPACE, None),
            ..Default::default()
        }),
        value(ServiceAccount {
            metadata: meta(SERVICE_ACCOUNT, ns),
            ..Default::default()
        }),
        value(ClusterRole {
            metadata: meta(ROLE, None),
            rules: Some(vec![
                rule("", &["nodes"], &["get", "list", "watch", "patch"], &[]),
                rule("", &["pods"], &["get", "list", "delete"], &[]),
                rule("", &["pods/eviction"], &["create"], &[]),
            ]),
            aggregation_rule: None,
        }),
        value(ClusterRoleBinding {
            metadata: meta(ROLE, None),
            role_ref: role_ref("ClusterRole"),
            subjects: Some(vec![subject()]),
        }),
        value(Role {
            metadata: meta(ROLE, ns),
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
            metadata: meta(ROLE, ns),
            role_ref: role_ref("Role"),
            subjects: Some(vec![subject()]),
        }),
        value(Role {
            metadata: meta(ROLE, Some(NODE_EVENT_NAMESPACE)),
            rules: Some(vec![events]),
        }),
        value(RoleBinding {
            metadata: meta(ROLE, Some(NODE_EVENT_NAMESPACE)),
            role_ref: role_ref("Role"),
            subjects: Some(vec![subject()]),
        }),
    ]
}

/// The manifests as the YAML checked in at deploy/rbac.yaml.
pub fn yaml() -> String {
    let mut out = String::from(
        "# Generated from src/cluster/rbac.rs; UPDATE_GOLDEN=1 cargo test cluster::rbac rewrites it.\n",
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

    /// Every verb on every resource, as "verb group/resource@namespace".
    fn grants() -> Vec<String> {
        let mut out = Vec::new();
        for m in manifests() {
            let ns = m["metadata"]["namespace"]
                .as_str()
                .unwrap_or("*")
                .to_owned();
            for r in m["rules"].as_array().into_iter().flatten() {
                for g in r["apiGroups"].as_array().unwrap() {
                    for res in r["resources"].as_array().unwrap() {
                        for v in r["verbs"].as_array().unwrap() {
                            out.push(format!(
                                "{} {}/{}@{ns}",
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
    fn grants_exactly_what_hkd_calls() {
        let want = [
            "create /events@default",
            "create /events@housekeeper-system",
            "create /pods/eviction@*",
            "create coordination.k8s.io/leases@housekeeper-system",
            "delete /pods@*",
            "get /nodes@*",
            "get /pods@*",
            "get coordination.k8s.io/leases@housekeeper-system",
            "get housekeeper.io/updates/status@housekeeper-system",
            "get housekeeper.io/updates@housekeeper-system",
            "list /nodes@*",
            "list /pods@*",
            "list housekeeper.io/updates@housekeeper-system",
            "patch /events@default",
            "patch /events@housekeeper-system",
            "patch /nodes@*",
            "patch coordination.k8s.io/leases@housekeeper-system",
            "patch housekeeper.io/updates/status@housekeeper-system",
            "update coordination.k8s.io/leases@housekeeper-system",
            "update housekeeper.io/updates/status@housekeeper-system",
            "watch /nodes@*",
            "watch housekeeper.io/updates@housekeeper-system",
        ];
        assert_eq!(grants(), want);
        // No wildcard anywhere.
        assert!(!yaml().contains("\"*\""));
    }

    #[test]
    fn every_object_is_labelled_and_bindings_name_the_service_account() {
        for m in manifests() {
            assert_eq!(
                m["metadata"]["labels"][PART_OF.0], PART_OF.1,
                "{}",
                m["kind"]
            );
            assert!(m["apiVersion"].is_string() && m["kind"].is_string());
            if let Some(subjects) = m["subjects"].as_array() {
                assert_eq!(subjects.len(), 1);
                assert_eq!(subjects[0]["name"], SERVICE_ACCOUNT);
                assert_eq!(subjects[0]["namespace"], NAMESPACE);
            }
        }
    }
}
