//! The kubeconfigs of `hkctl install`: one per identity ([`Identity`]), each carrying a
//! ServiceAccount's token minted by a TokenRequest, kept while it is fresh and the API server
//! still accepts it, and written 0600 and atomically. What a token is for, and how long it
//! lives, is explained in the parent module.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::Kubeconfig;
use kube::Api;
use serde_json::{json, Value};

use super::InstallOptions;
use crate::cluster::rbac;
use crate::cluster::update;
use crate::ctl::Ctx;

/// Whose credential a kubeconfig carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The ServiceAccount in hkd's namespace the token is for.
    pub service_account: String,
    /// The user and groups every request impersonates (a node); `None`: the ServiceAccount
    /// itself (the coordinator).
    pub impersonate: Option<(String, Vec<String>)>,
    /// The kubeconfig's context and user name.
    pub context: String,
}

impl Identity {
    /// The coordinator's identity.
    pub fn coordinator() -> Identity {
        Identity {
            service_account: rbac::COORDINATOR_SERVICE_ACCOUNT.to_owned(),
            impersonate: None,
            context: "hkd-coordinator".to_owned(),
        }
    }

    /// Node `node`'s identity: its ServiceAccount, acting as `system:node:<node>`.
    pub fn node(node: &str) -> Identity {
        Identity {
            service_account: rbac::node_object_name(node),
            impersonate: Some((rbac::node_user(node), vec![rbac::NODES_GROUP.to_owned()])),
            context: "hkd".to_owned(),
        }
    }

    /// The user name the API server gives the ServiceAccount's tokens.
    fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            update::NAMESPACE,
            self.service_account
        )
    }
}

/// The claims of a JWT that install looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub subject: String,
    pub issued: Option<i64>,
    pub expires: Option<i64>,
}

/// Read a JWT's payload (not verified: the API server does that in [`token_accepted`]).
pub fn token_claims(token: &str) -> Option<TokenClaims> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(TokenClaims {
        subject: v["sub"].as_str()?.to_owned(),
        issued: v["iat"].as_i64(),
        expires: v["exp"].as_i64(),
    })
}

/// Whether an existing token can stay: the right subject, accepted by the API server, and
/// more than a tenth of its lifetime left.
fn keep_token(claims: &TokenClaims, subject: &str, accepted: bool, now: i64) -> bool {
    let fresh = match (claims.issued, claims.expires) {
        (Some(iat), Some(exp)) => exp - now > (exp - iat) / 10,
        (None, Some(exp)) => exp > now,
        _ => true,
    };
    claims.subject == subject && accepted && fresh
}

async fn token_accepted(ctx: &Ctx, token: &str) -> Result<bool> {
    let api: Api<TokenReview> = Api::all(ctx.client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| ctx.fail("asking the API server whether a token is still valid", e))?;
    Ok(answer.status.and_then(|s| s.authenticated).unwrap_or(false))
}

/// The kubeconfig for `who`: the cluster's server and CA, the token, the user it acts as,
/// one context.
pub fn kubeconfig_text(server: &str, ca_data: Option<&str>, token: &str, who: &Identity) -> String {
    let mut cluster = json!({"server": server});
    if let Some(ca) = ca_data {
        cluster["certificate-authority-data"] = json!(ca);
    }
    let user_name = format!("{}-{}", update::NAMESPACE, who.service_account);
    let mut user = json!({"token": token});
    if let Some((name, groups)) = &who.impersonate {
        user["as"] = json!(name);
        user["as-groups"] = json!(groups);
    }
    let v = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": who.context, "context": {"cluster": "cluster", "user": user_name}}],
        "current-context": who.context,
    });
    let mut out = format!(
        "# hkd's kubeconfig for ServiceAccount {}/{}, written by hkctl install; the token is a secret.\n",
        update::NAMESPACE,
        who.service_account
    );
    crate::cluster::yaml::emit(&v, &mut out);
    out
}

/// The token of the kubeconfig at `path` when it is for `who` on this server and CA, acting as
/// `who` acts.
fn token_in(path: &Path, who: &Identity, server: &str, ca: Option<&str>) -> Option<String> {
    let kc = Kubeconfig::read_from(path).ok()?;
    let auth = kc.auth_infos.first()?.auth_info.as_ref()?;
    let same_cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .is_some_and(|c| {
            c.server.as_deref() == Some(server) && c.certificate_authority_data.as_deref() == ca
        });
    let acts_as = (auth.impersonate.clone(), auth.impersonate_groups.clone());
    let wants = match &who.impersonate {
        Some((user, groups)) => (Some(user.clone()), Some(groups.clone())),
        None => (None, None),
    };
    if !same_cluster || acts_as != wants {
        return None;
    }
    use secrecy::ExposeSecret as _;
    Some(auth.token.as_ref()?.expose_secret().to_owned())
}

/// Write `who`'s kubeconfig at `path` unless the one there is still right. Returns the report
/// line and whether the file was (re)written. The token is requested before anything is
/// written; a failure leaves the file as it was.
pub(super) async fn write_kubeconfig(
    ctx: &Ctx,
    opts: &InstallOptions,
    who: &Identity,
    path: &Path,
) -> Result<(String, bool)> {
    let (admin_server, ca) = crate::ctl::cluster_of(ctx, opts.context.as_deref())?;
    let server = opts.server.clone().unwrap_or(admin_server);
    let label = format!("{:<58}", format!("kubeconfig {}", path.display()));
    let now = Timestamp::now().as_second();
    let existing = (!opts.rotate_token && path.exists())
        .then(|| token_in(path, who, &server, ca.as_deref()))
        .flatten();
    if let Some(token) = existing {
        if let Some(claims) = token_claims(&token) {
            if keep_token(
                &claims,
                &who.subject(),
                token_accepted(ctx, &token).await?,
                now,
            ) {
                let until = claims.expires.and_then(|e| Timestamp::from_second(e).ok());
                let until = until
                    .map(|t| format!(" (token valid until {})", t.strftime("%Y-%m-%d")))
                    .unwrap_or_default();
                return Ok((format!("{label} unchanged{until}"), false));
            }
        }
    }
    let sa: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), update::NAMESPACE);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(opts.token_ttl.as_secs() as i64),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let what = format!(
        "requesting a token for ServiceAccount {}/{}",
        update::NAMESPACE,
        who.service_account
    );
    let answer = sa
        .create_token_request(&who.service_account, &PostParams::default(), &request)
        .await
        .map_err(|e| ctx.fail(&what, e))?;
    let status = answer
        .status
        .ok_or_else(|| anyhow!("{what}: the answer carries no token"))?;
    write_private(
        path,
        &kubeconfig_text(&server, ca.as_deref(), &status.token, who),
    )?;
    Ok((
        format!(
            "{label} written (token valid until {})",
            status.expiration_timestamp.0.strftime("%Y-%m-%d")
        ),
        true,
    ))
}

/// Write `text` to `path` with mode 0600, atomically: a temporary file beside it, renamed
/// over it. The temporary file has a random name and is created exclusively with mode 0600
/// (O_EXCL, never following a link someone else put there), so another user who can write
/// the directory can neither read the token nor redirect the write.
pub(super) fn write_private(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".hkctl-kubeconfig-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_is_written_private_and_never_through_a_planted_link() {
        use std::os::unix::fs::{symlink, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        // What the old fixed temporary name would have been, planted as a link.
        symlink(&victim, dir.path().join(".hkd.kubeconfig.tmp")).unwrap();
        let path = dir.path().join("hkd.kubeconfig");
        write_private(&path, "token: secret\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "token: secret\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing else left behind but the planted link and the victim.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_node_kubeconfig_acts_as_its_node_and_the_coordinator_as_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.kubeconfig");
        let node = Identity::node("n1");
        write_private(
            &path,
            &kubeconfig_text("https://h:6443", Some("Q0E="), "tok", &node),
        )
        .unwrap();
        // Read back as kube reads it: `as` and `as-groups` become the Impersonate headers.
        let kc = Kubeconfig::read_from(&path).unwrap();
        let auth = kc.auth_infos[0].auth_info.clone().unwrap();
        assert_eq!(auth.impersonate.as_deref(), Some("system:node:n1"));
        assert_eq!(
            auth.impersonate_groups,
            Some(vec!["system:nodes".to_owned()])
        );
        assert_eq!(
            token_in(&path, &node, "https://h:6443", Some("Q0E=")).as_deref(),
            Some("tok")
        );
        // Another node's identity, another server or CA: the token is not reused.
        assert_eq!(
            token_in(&path, &Identity::node("n2"), "https://h:6443", Some("Q0E=")),
            None
        );
        assert_eq!(
            token_in(&path, &node, "https://other:6443", Some("Q0E=")),
            None
        );
        assert_eq!(token_in(&path, &node, "https://h:6443", None), None);
        assert_eq!(
            token_in(
                &path,
                &Identity::coordinator(),
                "https://h:6443",
                Some("Q0E=")
            ),
            None
        );
        let text = kubeconfig_text("https://h:6443", None, "t", &Identity::coordinator());
        assert!(
            !text.contains("as:") && text.contains("hkd-coordinator"),
            "{text}"
        );
    }

    #[test]
    fn tokens_are_kept_while_fresh_and_accepted() {
        let sub = "system:serviceaccount:housekeeper-system:hkd".to_owned();
        let claims = TokenClaims {
            subject: sub.clone(),
            issued: Some(0),
            expires: Some(1000),
        };
        assert!(keep_token(&claims, &sub, true, 500));
        assert!(
            !keep_token(&claims, &sub, true, 950),
            "less than a tenth left"
        );
        assert!(
            !keep_token(&claims, &sub, false, 500),
            "refused by the server"
        );
        let other = TokenClaims {
            subject: "system:serviceaccount:x:y".into(),
            ..claims
        };
        assert!(!keep_token(&other, &sub, true, 500));
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"sub": sub, "iat": 5, "exp": 10}).to_string());
        let got = token_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!((got.issued, got.expires), (Some(5), Some(10)));
        assert_eq!(token_claims("junk"), None);
    }
}
