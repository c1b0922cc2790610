//! The credentials `hkctl install` hands out, and `hkctl revoke`: the directory the
//! kubeconfigs are written into (`DIR/coordinator.kubeconfig`, `DIR/nodes/<node>.kubeconfig`),
//! each node's own objects, and their removal.
//!
//! Guarantees:
//! - the directory is the admin's own: created 0700 when missing; refused when it is a
//!   symbolic link, not a directory, owned by another user or writable by group or others
//!   (another user could then swap the files hkd's tokens go into);
//! - a file name comes only from a checked node name ([`rbac::check_node_name`]: a DNS
//!   subdomain, never `/` or `..`);
//! - each kubeconfig is written whole or not at all (a private temporary file renamed over
//!   it), after its token was issued: a run stopped by a 401, a 403 or a timeout leaves every
//!   file either as it was or complete, and running install again converges.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::DeleteParams;
use kube::Api;

use super::Check;
use crate::cluster::{rbac, update};
use crate::ctl::Ctx;

/// The file of the coordinator's kubeconfig, in the credentials directory.
pub const COORDINATOR_FILE: &str = "coordinator.kubeconfig";

/// The subdirectory of the nodes' kubeconfigs.
pub const NODES_DIR: &str = "nodes";

/// The directory install writes the kubeconfigs into, checked.
#[derive(Debug, Clone)]
pub struct CredentialsDir {
    root: PathBuf,
}

impl CredentialsDir {
    /// Check `root` and `root/nodes`, creating them (0700) when missing.
    pub fn prepare(root: &Path) -> Result<CredentialsDir> {
        for dir in [root.to_owned(), root.join(NODES_DIR)] {
            if std::fs::symlink_metadata(&dir).is_err() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .with_context(|| {
                        format!("creating the credentials directory {}", dir.display())
                    })?;
            }
            check_private_dir(&dir, crate::sys::euid())?;
        }
        Ok(CredentialsDir {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn coordinator(&self) -> PathBuf {
        self.root.join(COORDINATOR_FILE)
    }

    /// Node `node`'s kubeconfig; the name is checked again, as it becomes a file name.
    pub fn node(&self, node: &str) -> Result<PathBuf> {
        rbac::check_node_name(node).map_err(anyhow::Error::msg)?;
        Ok(self.root.join(NODES_DIR).join(format!("{node}.kubeconfig")))
    }
}

/// Refuse a directory that someone other than `uid` could change.
fn check_private_dir(dir: &Path, uid: u32) -> Result<()> {
    let m = std::fs::symlink_metadata(dir)
        .with_context(|| format!("reading the credentials directory {}", dir.display()))?;
    let why = if m.file_type().is_symlink() {
        Some("is a symbolic link; name the directory itself".to_owned())
    } else if !m.is_dir() {
        Some("is not a directory".to_owned())
    } else if m.uid() != uid {
        Some(format!(
            "belongs to uid {}, not to this user ({uid})",
            m.uid()
        ))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by other users (mode {:o}); chmod go-w it",
            m.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => bail!(
            "the credentials directory {} {why}; nothing was written there",
            dir.display()
        ),
        None => Ok(()),
    }
}

/// The permissions `hkctl revoke` needs.
pub fn revoke_checks() -> Vec<Check> {
    vec![
        Check::new("delete", "", "serviceaccounts").in_ns(update::NAMESPACE),
        Check::new("delete", "rbac.authorization.k8s.io", "clusterrolebindings"),
        Check::new("delete", "rbac.authorization.k8s.io", "clusterroles"),
    ]
}

/// `hkctl revoke NODE`: delete node `node`'s ServiceAccount (every token it was issued is
/// refused from then on), then its ClusterRoleBinding and ClusterRole. A node that has none
/// of them is an error.
pub async fn revoke(ctx: &Ctx, node: &str, out: &mut dyn Write) -> Result<()> {
    rbac::check_node_name(node).map_err(anyhow::Error::msg)?;
    ctx.require("hkctl revoke", &revoke_checks()).await?;
    let name = rbac::node_object_name(node);
    let dp = DeleteParams::default();
    let sa: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), update::NAMESPACE);
    let crb: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    let cr: Api<ClusterRole> = Api::all(ctx.client.clone());
    let mut lines = Vec::new();
    let outcome = |r: Result<_, kube::Error>, what: String| -> Result<Option<String>> {
        match r {
            Ok(_) => Ok(Some(format!("{what:<58} deleted"))),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(ctx.fail(&format!("deleting {what}"), e)),
        }
    };
    let ns = update::NAMESPACE;
    lines.extend(outcome(
        sa.delete(&name, &dp).await.map(|_| ()),
        format!("ServiceAccount {ns}/{name}"),
    )?);
    lines.extend(outcome(
        crb.delete(&name, &dp).await.map(|_| ()),
        format!("ClusterRoleBinding {name}"),
    )?);
    lines.extend(outcome(
        cr.delete(&name, &dp).await.map(|_| ()),
        format!("ClusterRole {name}"),
    )?);
    if lines.is_empty() {
        bail!(
            "node {node} has no credential to revoke: no ServiceAccount {ns}/{name} (hkctl \
             install issues one)"
        );
    }
    for l in &lines {
        writeln!(out, "{l}")?;
    }
    writeln!(
        out,
        "revoked: every token of node {node} is refused from now on; other nodes are not \
         affected; `hkctl install --node {node}` issues a new credential"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    #[test]
    fn the_directory_is_made_private_and_a_shared_or_linked_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("creds");
        let dir = CredentialsDir::prepare(&root).unwrap();
        for d in [root.clone(), root.join(NODES_DIR)] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        assert_eq!(
            dir.node("n1.example").unwrap(),
            root.join("nodes/n1.example.kubeconfig")
        );
        for bad in ["../x", "a/b", ""] {
            assert!(dir.node(bad).is_err(), "{bad:?}");
        }

        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = CredentialsDir::prepare(&root).unwrap_err().to_string();
        assert!(e.contains("writable by other users (mode 777)"), "{e}");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();

        let link = tmp.path().join("link");
        symlink(&root, &link).unwrap();
        let e = CredentialsDir::prepare(&link).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");

        // A link planted where the nodes' directory goes.
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::remove_dir(root.join(NODES_DIR)).unwrap();
        symlink(&other, root.join(NODES_DIR)).unwrap();
        let e = CredentialsDir::prepare(&root).unwrap_err().to_string();
        assert!(e.contains("nodes is a symbolic link"), "{e}");

        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = CredentialsDir::prepare(&file).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");

        let e = check_private_dir(&other, crate::sys::euid() + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to uid"), "{e}");
    }
}
