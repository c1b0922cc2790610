//! Sysroot's `Deployments` property (`aa{sv}`, boot order) into our [`Deployments`].
//!
//! Only the keys the agent uses are read. A container deployment carries its reference in
//! `container-image-reference` and has no `origin`; either becomes [`Deployment::origin`].
//! What the backend alone needs — the base commit under layered packages, the image digest —
//! is kept beside it as [`Reported`]. Keys the daemon sends only when true
//! (`finalization-locked`, `pinned`, `staged`) read as false when absent.

use std::collections::HashMap;

use zbus::zvariant::OwnedValue;

use super::target::Reported;
use crate::os::{Deployment, Deployments};

/// One entry of the property, as it comes off the wire.
pub type DeploymentDict = HashMap<String, OwnedValue>;

/// `ActiveTransaction` (`(sss)`: method, sender, object path); all empty when idle.
pub type ActiveTransaction = (String, String, String);

/// Maps the property; refuses an entry that lacks a key every deployment has.
pub fn parse_deployments(dicts: &[DeploymentDict]) -> Result<Deployments, String> {
    let deployments = dicts
        .iter()
        .enumerate()
        .map(|(i, d)| parse_deployment(d).map_err(|e| format!("deployment {i}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Deployments { deployments })
}

/// Each deployment of the property with what the backend alone reads of it, in boot order.
pub fn parse_view(dicts: &[DeploymentDict]) -> Result<View, String> {
    let all = parse_deployments(dicts)?;
    let reported = dicts
        .iter()
        .enumerate()
        .map(|(i, d)| parse_reported(d).map_err(|e| format!("deployment {i}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(View { all, reported })
}

/// The deployments, and beside each (same index) what only the backend reads.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub all: Deployments,
    pub reported: Vec<Reported>,
}

impl View {
    /// The staged deployment and what the daemon reports of it.
    pub fn staged(&self) -> Option<(&Deployment, &Reported)> {
        self.pair(|d| d.staged)
    }

    pub fn booted(&self) -> Option<(&Deployment, &Reported)> {
        self.pair(|d| d.booted)
    }

    fn pair(&self, f: impl Fn(&Deployment) -> bool) -> Option<(&Deployment, &Reported)> {
        let i = self.all.deployments.iter().position(f)?;
        Some((&self.all.deployments[i], self.reported.get(i)?))
    }
}

fn parse_reported(d: &DeploymentDict) -> Result<Reported, String> {
    Ok(Reported {
        checksum: string(d, "checksum")?.ok_or("no checksum")?,
        base_checksum: string(d, "base-checksum")?,
        origin: string(d, "container-image-reference")?.or(string(d, "origin")?),
        digest: string(d, "container-image-reference-digest")?,
    })
}

fn parse_deployment(d: &DeploymentDict) -> Result<Deployment, String> {
    let serial = int(d, "serial")?.unwrap_or(0);
    let origin = string(d, "container-image-reference")?.or(string(d, "origin")?);
    Ok(Deployment {
        osname: string(d, "osname")?.ok_or("no osname")?,
        checksum: string(d, "checksum")?.ok_or("no checksum")?,
        serial: u32::try_from(serial).map_err(|_| format!("negative serial {serial}"))?,
        version: string(d, "version")?,
        origin,
        booted: flag(d, "booted")?,
        staged: flag(d, "staged")?,
        pinned: flag(d, "pinned")?,
        finalization_locked: flag(d, "finalization-locked")?,
    })
}

/// Whether `active` names a running transaction.
pub fn is_active(active: &ActiveTransaction) -> bool {
    !active.0.is_empty()
}

fn string(d: &DeploymentDict, key: &str) -> Result<Option<String>, String> {
    d.get(key)
        .map(|v| {
            <&str>::try_from(v)
                .map(str::to_owned)
                .map_err(|_| format!("{key} is not a string"))
        })
        .transpose()
}

fn flag(d: &DeploymentDict, key: &str) -> Result<bool, String> {
    d.get(key)
        .map(|v| bool::try_from(v).map_err(|_| format!("{key} is not a boolean")))
        .transpose()
        .map(|b| b.unwrap_or(false))
}

fn int(d: &DeploymentDict, key: &str) -> Result<Option<i32>, String> {
    d.get(key)
        .map(|v| i32::try_from(v).map_err(|_| format!("{key} is not an int32")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Value;

    fn dict(entries: &[(&str, Value<'static>)]) -> DeploymentDict {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OwnedValue::try_from(v.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn maps_what_rpm_ostree_reports() {
        let staged = dict(&[
            ("id", Value::from("nestos-aaaa.0")),
            ("osname", Value::from("nestos")),
            ("serial", Value::from(0i32)),
            ("checksum", Value::from("aaaa")),
            ("version", Value::from("22.03.20240101")),
            ("timestamp", Value::from(1_700_000_000u64)),
            (
                "container-image-reference",
                Value::from("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03"),
            ),
            ("booted", Value::from(false)),
            ("staged", Value::from(true)),
            ("finalization-locked", Value::from(true)),
        ]);
        let booted = dict(&[
            ("osname", Value::from("nestos")),
            ("serial", Value::from(1i32)),
            ("checksum", Value::from("bbbb")),
            ("origin", Value::from("nestos:nestos/x86_64/stable")),
            ("booted", Value::from(true)),
            ("pinned", Value::from(true)),
        ]);
        let all = parse_deployments(&[staged, booted]).unwrap();
        let s = all.staged().unwrap();
        assert_eq!(s.checksum, "aaaa");
        assert!(s.finalization_locked);
        assert_eq!(
            s.origin.as_deref(),
            Some("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03")
        );
        assert_eq!(s.version.as_deref(), Some("22.03.20240101"));
        let b = all.booted().unwrap();
        assert_eq!((b.serial, b.pinned, b.staged), (1, true, false));
        assert_eq!(b.origin.as_deref(), Some("nestos:nestos/x86_64/stable"));
        assert_eq!(b.version, None);
    }

    #[test]
    fn keeps_the_base_commit_and_the_digest_for_the_backend() {
        let layered = dict(&[
            ("osname", Value::from("nestos")),
            ("checksum", Value::from("1111")),
            ("base-checksum", Value::from("bbbb")),
            (
                "container-image-reference",
                Value::from("ostree-unverified-image:docker://hub.oepkgs.net/nestos/nestos:2"),
            ),
            (
                "container-image-reference-digest",
                Value::from("sha256:abcd"),
            ),
            ("staged", Value::from(true)),
        ]);
        let view = parse_view(&[layered]).unwrap();
        let (d, r) = view.staged().unwrap();
        assert_eq!(d.checksum, "1111");
        assert!(!d.finalization_locked, "absent means false");
        assert_eq!(r.finalize_checksum(), "bbbb");
        assert_eq!(r.digest.as_deref(), Some("sha256:abcd"));
        assert!(view.booted().is_none());
    }

    #[test]
    fn refuses_entries_it_cannot_read() {
        let no_checksum = dict(&[("osname", Value::from("nestos"))]);
        let err = parse_deployments(&[no_checksum]).unwrap_err();
        assert_eq!(err, "deployment 0: no checksum");
        let wrong_type = dict(&[
            ("osname", Value::from("nestos")),
            ("checksum", Value::from("aaaa")),
            ("booted", Value::from("yes")),
        ]);
        assert_eq!(
            parse_deployments(&[wrong_type]).unwrap_err(),
            "deployment 0: booted is not a boolean"
        );
        let negative = dict(&[
            ("osname", Value::from("nestos")),
            ("checksum", Value::from("aaaa")),
            ("serial", Value::from(-1i32)),
        ]);
        assert!(parse_deployments(&[negative])
            .unwrap_err()
            .contains("negative serial"));
    }

    #[test]
    fn an_empty_method_name_means_idle() {
        assert!(!is_active(&Default::default()));
        assert!(is_active(&(
            "UpdateDeployment".into(),
            ":1.42".into(),
            "/org/projectatomic/rpmostree1/nestos".into()
        )));
    }
}
