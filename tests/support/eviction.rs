//! Evictions and PodDisruptionBudgets at the API version the server serves.
//!
//! Kubernetes 1.20 serves `policy/v1beta1` only (an Eviction sent as `policy/v1` gets 400),
//! modern servers serve `policy/v1`. As kubectl does, the version is found by discovery. The
//! Eviction body is built here as JSON rather than with kube's `Api::evict`: kube 5.0.0
//! serialises the delete options under the key `delete_options`, which the server silently
//! ignores (a grace period of 0 never arrives), and k8s-openapi 0.29 has no v1beta1 types.

use anyhow::{bail, Context, Result};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::discovery::{self, Scope};
use kube::{Api, Client};
use serde_json::{json, Value};

/// The `apiVersion` of Eviction the server takes: from the `pods/eviction` subresource in
/// core/v1 discovery, else policy's preferred version.
pub async fn eviction_api_version(client: &Client) -> Result<String> {
    let core = client
        .list_core_api_resources("v1")
        .await
        .context("discovering core/v1 resources")?;
    if let Some(r) = core.resources.iter().find(|r| r.name == "pods/eviction") {
        if let (Some(g), Some(v)) = (&r.group, &r.version) {
            if !g.is_empty() && !v.is_empty() {
                return Ok(format!("{g}/{v}"));
            }
        }
    }
    let policy = discovery::group(client, "policy")
        .await
        .context("discovering the policy API group")?;
    Ok(format!("policy/{}", policy.preferred_version_or_latest()))
}

/// An Eviction body; `grace_period_seconds` lands in `deleteOptions`, where the server reads it.
pub fn eviction_body(
    api_version: &str,
    ns: &str,
    pod: &str,
    grace_period_seconds: Option<i64>,
) -> Value {
    let mut body = json!({
        "apiVersion": api_version,
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": ns},
    });
    if let Some(grace) = grace_period_seconds {
        body["deleteOptions"] = json!({"gracePeriodSeconds": grace});
    }
    body
}

/// POST an Eviction for `pod`. The server's answer is returned untouched: `Ok` when the
/// eviction was accepted, `kube::Error::Api` with code 429 when a PodDisruptionBudget forbids it.
pub async fn evict(
    client: &Client,
    api_version: &str,
    ns: &str,
    pod: &str,
    grace_period_seconds: Option<i64>,
) -> Result<Value, kube::Error> {
    let body = eviction_body(api_version, ns, pod, grace_period_seconds);
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .create_subresource::<Value, Value>("eviction", pod, &PostParams::default(), &body)
        .await
}

/// The PodDisruptionBudget resource at the version the server recommends (v1beta1 on 1.20).
pub async fn pdb_resource(client: &Client) -> Result<ApiResource> {
    let policy = discovery::group(client, "policy")
        .await
        .context("discovering the policy API group")?;
    let Some((ar, caps)) = policy.recommended_kind("PodDisruptionBudget") else {
        bail!("the server serves no PodDisruptionBudget in the policy group");
    };
    if caps.scope != Scope::Namespaced {
        bail!("PodDisruptionBudget is not namespaced on this server");
    }
    Ok(ar)
}

/// Create a PodDisruptionBudget selecting `app=<app>` with `minAvailable`.
pub async fn create_pdb(
    client: &Client,
    ns: &str,
    name: &str,
    app: &str,
    min_available: i32,
) -> Result<(Api<DynamicObject>, DynamicObject)> {
    let ar = pdb_resource(client).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version,
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }))?;
    let created = api
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| {
            format!(
                "creating PodDisruptionBudget {ns}/{name} ({})",
                ar.api_version
            )
        })?;
    Ok((api, created))
}
