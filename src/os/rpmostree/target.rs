//! "Is this deployment our target?" — decided the way rpm-ostreed reports deployments.
//!
//! The daemon does not hand back a container reference as it was given: it parses it
//! (ostree-rs-ext's `OstreeImageReference`) and reports its canonical form. A `-registry:`
//! prefix becomes `-image:` with the `docker://` transport, and the `registry:` transport is
//! written `docker://`:
//!
//! | given | reported |
//! |---|---|
//! | `ostree-remote-registry:R:X` | `ostree-remote-image:R:docker://X` |
//! | `ostree-unverified-registry:X` | `ostree-unverified-image:docker://X` |
//! | `…:registry:X` | `…:docker://X` |
//!
//! Everything else (other transports, OSTree refspecs) comes back as given. For a deployment
//! with layered packages the daemon reports the pulled commit as `base-checksum` and a local
//! commit as `checksum`: a checksum target names the base. A container deployment may carry the
//! pulled image's digest; a target pinned by digest must match it.
//!
//! Pure: no bus, no daemon.

use crate::image_ref::{ImageRef, Kind};

/// A deployment as rpm-ostreed reports it, with the keys [`crate::os::Deployment`] leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reported {
    /// The deployment's own commit (a local one when packages are layered).
    pub checksum: String,
    /// The pulled commit under layered packages (`base-checksum`), when there are any.
    pub base_checksum: Option<String>,
    /// `container-image-reference`, or the `origin` refspec.
    pub origin: Option<String>,
    /// `container-image-reference-digest` (`sha256:…`), when the daemon reports it.
    pub digest: Option<String>,
}

impl Reported {
    /// The commit FinalizeDeployment compares its `checksum` option with: the base commit of
    /// a layered deployment, else the deployment's own (`finalize_deployment_transaction_execute`
    /// reads `rpmostree_deployment_get_layered_info`'s base checksum first).
    pub fn finalize_checksum(&self) -> &str {
        self.base_checksum.as_deref().unwrap_or(&self.checksum)
    }
}

/// The reference as rpm-ostreed reports it back in a deployment's
/// `container-image-reference`; OSTree refspecs and checksums are returned unchanged.
pub fn canonical(target: &ImageRef) -> String {
    let raw = target.raw.as_str();
    if target.kind != Kind::Container {
        return raw.to_owned();
    }
    // A bare REGISTRY/NAME: the prefix is reported as its `-image:` form, with `docker://`.
    if let Some(image) = raw.strip_prefix("ostree-unverified-registry:") {
        return format!("ostree-unverified-image:docker://{image}");
    }
    if let Some(rest) = raw.strip_prefix("ostree-remote-registry:") {
        return match rest.split_once(':') {
            Some((remote, image)) => format!("ostree-remote-image:{remote}:docker://{image}"),
            None => raw.to_owned(), // not a reference ImageRef accepts
        };
    }
    // `ostree-image-signed:T`, `ostree-unverified-image:T`, `ostree-remote-image:R:T`: only the
    // transport may be respelled, `registry:` as `docker://`.
    let prefix_len = match raw.strip_prefix("ostree-remote-image:") {
        Some(rest) => match rest.split_once(':') {
            Some((remote, _)) => "ostree-remote-image:".len() + remote.len() + 1,
            None => return raw.to_owned(),
        },
        None => match raw.split_once(':') {
            Some((prefix, _)) => prefix.len() + 1,
            None => return raw.to_owned(),
        },
    };
    let (prefix, image) = raw.split_at(prefix_len);
    match image.strip_prefix("registry:") {
        Some(name) => format!("{prefix}docker://{name}"),
        None => raw.to_owned(),
    }
}

/// The digest a reference pins (`…@sha256:…`), if it pins one.
fn pinned_digest(reference: &str) -> Option<&str> {
    reference.rsplit_once('@').map(|(_, digest)| digest)
}

/// Whether `d` is what `target` names: a checksum target by the pulled (base) commit, a
/// refspec by its origin, a container image by its canonical reference — and, when the target
/// pins a digest and the daemon reports one, by that digest too.
pub fn is_target(target: &ImageRef, d: &Reported) -> bool {
    match target.kind {
        Kind::Checksum => d.finalize_checksum() == target.raw || d.checksum == target.raw,
        Kind::OstreeRef { .. } => d.origin.as_deref() == Some(target.raw.as_str()),
        Kind::Container => {
            let want = canonical(target);
            if d.origin.as_deref() != Some(want.as_str()) {
                return false;
            }
            match (pinned_digest(&want), d.digest.as_deref()) {
                (Some(pinned), Some(reported)) => pinned == reported,
                _ => true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(raw: &str) -> ImageRef {
        ImageRef::parse_any(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    fn reported(origin: &str) -> Reported {
        Reported {
            checksum: "c".repeat(64),
            origin: Some(origin.into()),
            ..Reported::default()
        }
    }

    /// Every kind of reference hkd accepts, and how the daemon reports it.
    const CASES: [(&str, &str); 13] = [
        (
            "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ),
        (
            "ostree-image-signed:registry:hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ),
        (
            "ostree-image-signed:oci-archive:/var/tmp/os.ociarchive",
            "ostree-image-signed:oci-archive:/var/tmp/os.ociarchive",
        ),
        (
            "ostree-remote-registry:nestos:hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-remote-image:nestos:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ),
        (
            "ostree-remote-image:nestos:docker://hub.oepkgs.net/nestos/nestos@sha256:abcd",
            "ostree-remote-image:nestos:docker://hub.oepkgs.net/nestos/nestos@sha256:abcd",
        ),
        (
            "ostree-remote-image:nestos:registry:hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-remote-image:nestos:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ),
        (
            "ostree-remote-image:nestos:containers-storage:localhost/os:1",
            "ostree-remote-image:nestos:containers-storage:localhost/os:1",
        ),
        (
            "ostree-unverified-registry:hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-unverified-image:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ),
        (
            "ostree-unverified-image:docker://hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-unverified-image:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ),
        (
            "ostree-unverified-image:registry:hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-unverified-image:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ),
        (
            "ostree-unverified-image:oci:/var/lib/os",
            "ostree-unverified-image:oci:/var/lib/os",
        ),
        ("nestos:nestos/x86_64/stable", "nestos:nestos/x86_64/stable"),
        ("nestos/x86_64/stable", "nestos/x86_64/stable"),
    ];

    #[test]
    fn every_accepted_kind_has_its_reported_form() {
        for (given, expected) in CASES {
            assert_eq!(canonical(&r(given)), expected, "{given}");
            // Canonical is a fixed point: the reported form, given again, is reported alike.
            assert_eq!(canonical(&r(expected)), expected, "{expected}");
            // And a deployment reporting it is the target.
            assert!(is_target(&r(given), &reported(expected)), "{given}");
            assert!(!is_target(&r(given), &reported(given)) || given == expected);
        }
        let checksum = "a".repeat(64);
        assert_eq!(canonical(&r(&checksum)), checksum);
    }

    #[test]
    fn another_image_or_remote_is_not_the_target() {
        let target = r("ostree-remote-registry:nestos:hub.oepkgs.net/nestos/nestos:22.03");
        for other in [
            "ostree-remote-image:other:docker://hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-remote-image:nestos:docker://hub.oepkgs.net/nestos/nestos:22.04",
            "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-unverified-image:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ] {
            assert!(!is_target(&target, &reported(other)), "{other}");
        }
        let none = Reported {
            origin: None,
            ..reported("")
        };
        assert!(!is_target(&target, &none));
    }

    #[test]
    fn a_pinned_digest_must_match_the_reported_one() {
        let pinned = r("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos@sha256:abcd");
        let mut d =
            reported("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos@sha256:abcd");
        assert!(
            is_target(&pinned, &d),
            "no digest reported: the reference decides"
        );
        d.digest = Some("sha256:abcd".into());
        assert!(is_target(&pinned, &d));
        d.digest = Some("sha256:ffff".into());
        assert!(!is_target(&pinned, &d));
        // A target by tag takes whatever digest the tag resolved to.
        let tagged = r("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03");
        let mut d = reported("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03");
        d.digest = Some("sha256:ffff".into());
        assert!(is_target(&tagged, &d));
    }

    #[test]
    fn a_checksum_target_names_the_base_of_a_layered_deployment() {
        let base = "b".repeat(64);
        let local = "1".repeat(64);
        let layered = Reported {
            checksum: local.clone(),
            base_checksum: Some(base.clone()),
            origin: Some("nestos:nestos/x86_64/stable".into()),
            digest: None,
        };
        assert!(is_target(&r(&base), &layered));
        assert_eq!(layered.finalize_checksum(), base);
        assert!(!is_target(&r(&"e".repeat(64)), &layered));
        let plain = Reported {
            checksum: base.clone(),
            ..Reported::default()
        };
        assert_eq!(plain.finalize_checksum(), base);
        assert!(is_target(&r(&base), &plain));
    }
}
