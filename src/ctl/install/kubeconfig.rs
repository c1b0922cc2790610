//! hkd's kubeconfig for `hkctl install`: the ServiceAccount's token minted by a
//! TokenRequest, kept while it is fresh and the API server still accepts it, and the file
//! written 0600 and atomically. What a token is for, and how long it lives, is explained in
//! the parent module.

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
use crate::cluster::rbac::SERVICE_ACCOUNT;
use crate::cluster::update;
use crate::ctl::Ctx;

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
fn keep_token(claims: &TokenClaims, accepted: bool, now: i64) -> bool {
    let subject = format!(
        "system:serviceaccount:{}:{SERVICE_ACCOUNT}",
        update::NAMESPACE
    );
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
        .map_err(|e| ctx.fail("asking the API server whether hkd's token is valid", e))?;
    Ok(answer.status.and_then(|s| s.authenticated).unwrap_or(false))
}

/// The kubeconfig for hkd: the cluster's server and CA, the token, one context.
pub fn kubeconfig_text(server: &str, ca_data: Option<&str>, token: &str) -> String {
    let mut cluster = json!({"server": server});
    if let Some(ca) = ca_data {
        cluster["certificate-authority-data"] = json!(ca);
    }
    let user = format!("{}-{SERVICE_ACCOUNT}", update::NAMESPACE);
    let v = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "hkd", "context": {"cluster": "cluster", "user": user}}],
        "current-context": "hkd",
    });
    let mut out =
        String::from("# hkd's kubeconfig, written by hkctl install; the token is a secret.\n");
    crate::cluster::yaml::emit(&v, &mut out);
    out
}

/// Write hkd's kubeconfig unless the one at `path` is still right. Returns the report line and
/// whether the file was (re)written.
pub(super) async fn node_kubeconfig(
    ctx: &Ctx,
    opts: &InstallOptions,
    path: &Path,
) -> Result<(String, bool)> {
    let (admin_server, ca) = crate::ctl::cluster_of(ctx, opts.context.as_deref())?;
    let server = opts.server.clone().unwrap_or(admin_server);
    let label = format!("{:<58}", format!("kubeconfig {}", path.display()));
    let now = Timestamp::now().as_second();
    if !opts.rotate_token && path.exists() {
        if let Ok(kc) = Kubeconfig::read_from(path) {
            let token = kc
                .auth_infos
                .first()
                .and_then(|a| a.auth_info.as_ref())
                .and_then(|a| a.token.clone());
            let same_cluster = kc
                .clusters
                .first()
                .and_then(|c| c.cluster.as_ref())
                .is_some_and(|c| {
                    c.server.as_deref() == Some(server.as_str())
                        && c.certificate_authority_data == ca
                });
            if let (Some(token), true) = (token, same_cluster) {
                use secrecy::ExposeSecret as _;
                let token = token.expose_secret().to_owned();
                if let Some(claims) = token_claims(&token) {
                    if keep_token(&claims, token_accepted(ctx, &token).await?, now) {
                        let until = claims.expires.and_then(|e| Timestamp::from_second(e).ok());
                        let until = until
                            .map(|t| format!(" (token valid until {})", t.strftime("%Y-%m-%d")))
                            .unwrap_or_default();
                        return Ok((format!("{label} unchanged{until}"), false));
                    }
                }
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
    let answer = sa
        .create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            ctx.fail(
                &format!(
                    "requesting a token for ServiceAccount {}/{SERVICE_ACCOUNT}",
                    update::NAMESPACE
                ),
                e,
            )
        })?;
    let status = answer
        .status
        .ok_or_else(|| anyhow!("the TokenRequest for hkd came back without a token"))?;
    write_private(
        path,
        &kubeconfig_text(&server, ca.as_deref(), &status.token),
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
fn write_private(path: &Path, text: &str) -> Result<()> {
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
    fn tokens_are_kept_while_fresh_and_accepted() {
        let sub = "system:serviceaccount:housekeeper-system:hkd".to_owned();
        let claims = TokenClaims {
            subject: sub.clone(),
            issued: Some(0),
            expires: Some(1000),
        };
        assert!(keep_token(&claims, true, 500));
        assert!(!keep_token(&claims, true, 950), "less than a tenth left");
        assert!(!keep_token(&claims, false, 500), "refused by the server");
        let other = TokenClaims {
            subject: "system:serviceaccount:x:y".into(),
            ..claims
        };
        assert!(!keep_token(&other, true, 500));
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"sub": sub, "iat": 5, "exp": 10}).to_string());
        let got = token_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!((got.issued, got.expires), (Some(5), Some(10)));
        assert_eq!(token_claims("junk"), None);
    }
}
