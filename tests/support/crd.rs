//! A small custom resource for the tests: `Probe` (`probes.test.housekeeper.io`), namespaced,
//! with a structural schema (enum, bounds, a required field) and a status subresource — the
//! features the `Update` CRD relies on, without depending on its Rust types.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, PostParams};
use kube::{Api, Client};
use serde_json::json;

pub const GROUP: &str = "test.housekeeper.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "Probe";
pub const PLURAL: &str = "probes";

/// The resource, for `Api::<DynamicObject>::namespaced_with`.
pub fn resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

/// Install the CRD (once per cluster; a concurrent or earlier install is fine) and wait until
/// the server says Established.
pub async fn ensure_installed(client: &Client) -> Result<()> {
    let name = format!("{PLURAL}.{GROUP}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "labels": {super::cluster::TEST_LABEL: "true"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "probe", "listKind": "ProbeList"},
            "versions": [{
                "name": VERSION, "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["mode"],
                            "properties": {
                                "mode": {"type": "string", "enum": ["Safe", "Fast"]},
                                "maxUnavailable": {"type": "integer", "minimum": 1, "maximum": 100},
                            },
                        },
                        "status": {
                            "type": "object",
                            "properties": {
                                "phase": {"type": "string"},
                                "observedGeneration": {"type": "integer"},
                            },
                        },
                    },
                }},
            }],
        },
    }))?;
    install(client, &crd).await
}

/// The `Update` CRD generated from the project's types, installed and Established.
pub async fn install_update_crd(client: &Client) -> Result<()> {
    install(client, &housekeeper::cluster::update::crd()).await
}

/// Creates `crd` (an earlier or concurrent install is fine) and waits until the server says
/// Established.
pub async fn install(client: &Client, crd: &CustomResourceDefinition) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
    }
    super::wait_for(
        &format!("CRD {name} Established"),
        Duration::from_secs(30),
        || async {
            let crd = api.get(&name).await?;
            Ok(crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"))
        },
    )
    .await
}
