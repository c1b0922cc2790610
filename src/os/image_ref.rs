//! Image references: what an upgrade target may be, and how it is verified.
//!
//! NestOS and NKD name targets as ostree-container references; plain OSTree hosts name a
//! `[remote:]ref` or a commit checksum. Verification is on by default: an unverified
//! reference is refused unless the configuration allows it.

use std::fmt;

/// How a target's content is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The OSTree commit is checked against the named remote's GPG or signature config.
    Remote(String),
    /// The container image is checked against /etc/containers/policy.json.
    ContainerPolicy,
    /// A commit checksum: content-addressed, already trusted where it came from.
    Checksum,
    /// Nothing checks it.
    Unverified,
}

/// What kind of thing the reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Container,
    OstreeRef {
        remote: Option<String>,
        name: String,
    },
    Checksum,
}

/// A parsed, well-formed image reference. `raw` is passed to the backend unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub raw: String,
    pub kind: Kind,
    pub verification: Verification,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference {0:?} is malformed: {1}")]
    Malformed(String, &'static str),
    #[error(
        "image reference {0:?} is not verified; use ostree-image-signed: or \
         ostree-remote-registry:, or set os.allow_unverified_images = true in hkd's configuration"
    )]
    Unverified(String),
}

const CONTAINER_TRANSPORTS: &[&str] = &[
    "docker://",
    "registry:",
    "oci:",
    "oci-archive:",
    "containers-storage:",
    "dir:",
];

impl ImageRef {
    /// Parses `raw`; refuses an unverified reference unless `allow_unverified`.
    pub fn parse(raw: &str, allow_unverified: bool) -> Result<ImageRef, ImageRefError> {
        let parsed = Self::parse_any(raw)?;
        if parsed.verification == Verification::Unverified && !allow_unverified {
            return Err(ImageRefError::Unverified(raw.to_owned()));
        }
        Ok(parsed)
    }

    fn parse_any(raw: &str) -> Result<ImageRef, ImageRefError> {
        let bad = |why| Err(ImageRefError::Malformed(raw.to_owned(), why));
        if raw.is_empty() {
            return bad("it is empty");
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("it contains white space");
        }
        let container = |verification| {
            Ok(ImageRef {
                raw: raw.to_owned(),
                kind: Kind::Container,
                verification,
            })
        };
        if let Some(image) = raw.strip_prefix("ostree-unverified-registry:") {
            check_registry_image(raw, image)?;
            return container(Verification::Unverified);
        }
        if let Some(image) = raw.strip_prefix("ostree-unverified-image:") {
            check_transport_image(raw, image)?;
            return container(Verification::Unverified);
        }
        if let Some(image) = raw.strip_prefix("ostree-image-signed:") {
            check_transport_image(raw, image)?;
            return container(Verification::ContainerPolicy);
        }
        for (prefix, with_transport) in [
            ("ostree-remote-registry:", false),
            ("ostree-remote-image:", true),
        ] {
            if let Some(rest) = raw.strip_prefix(prefix) {
                let Some((remote, image)) = rest.split_once(':') else {
                    return bad("expected REMOTE:IMAGE after the prefix");
                };
                check_name(raw, remote, "the remote name")?;
                if with_transport {
                    check_transport_image(raw, image)?;
                } else {
                    check_registry_image(raw, image)?;
                }
                return container(Verification::Remote(remote.to_owned()));
            }
        }
        if raw.starts_with("ostree-") && raw.contains(':') {
            return bad("unknown ostree- prefix; known: ostree-image-signed, ostree-remote-registry, ostree-remote-image, ostree-unverified-registry, ostree-unverified-image");
        }
        if CONTAINER_TRANSPORTS.iter().any(|t| raw.starts_with(t)) || raw.contains("://") {
            return bad("a container image needs a prefix saying how it is verified, e.g. ostree-image-signed:docker://…");
        }
        if raw.len() == 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Ok(ImageRef {
                raw: raw.to_owned(),
                kind: Kind::Checksum,
                verification: Verification::Checksum,
            });
        }
        let (remote, name) = match raw.split_once(':') {
            Some((remote, name)) => {
                check_name(raw, remote, "the remote name")?;
                (Some(remote.to_owned()), name)
            }
            None => (None, raw),
        };
        check_ref(raw, name)?;
        let verification = match &remote {
            Some(remote) => Verification::Remote(remote.clone()),
            // A local ref: whatever put it into the repository vouched for it.
            None => Verification::Checksum,
        };
        Ok(ImageRef {
            raw: raw.to_owned(),
            kind: Kind::OstreeRef {
                remote,
                name: name.to_owned(),
            },
            verification,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn check_name(raw: &str, name: &str, what: &'static str) -> Result<(), ImageRefError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImageRefError::Malformed(
            raw.to_owned(),
            match what {
                "the remote name" => {
                    "the remote name may hold only letters, digits, '-', '_' and '.'"
                }
                _ => "a name is malformed",
            },
        ))
    }
}

fn check_ref(raw: &str, name: &str) -> Result<(), ImageRefError> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImageRefError::Malformed(
            raw.to_owned(),
            "an OSTree ref is letters, digits, '-', '_', '.' and '/' between names",
        ))
    }
}

fn check_registry_image(raw: &str, image: &str) -> Result<(), ImageRefError> {
    if image.is_empty() {
        return Err(ImageRefError::Malformed(
            raw.to_owned(),
            "no image after the prefix",
        ));
    }
    if image.contains("://") {
        return Err(ImageRefError::Malformed(
            raw.to_owned(),
            "a -registry: reference takes REGISTRY/NAME[:TAG|@DIGEST] without a transport",
        ));
    }
    Ok(())
}

fn check_transport_image(raw: &str, image: &str) -> Result<(), ImageRefError> {
    match CONTAINER_TRANSPORTS.iter().find_map(|t| image.strip_prefix(t)) {
        Some(rest) if !rest.is_empty() => Ok(()),
        Some(_) => Err(ImageRefError::Malformed(raw.to_owned(), "no image after the transport")),
        None => Err(ImageRefError::Malformed(
            raw.to_owned(),
            "expected a transport (docker://, oci:, oci-archive:, containers-storage:) before the image",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> ImageRef {
        ImageRef::parse(raw, false).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn verified_forms_parse() {
        assert_eq!(
            ok("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:22.03").verification,
            Verification::ContainerPolicy
        );
        assert_eq!(
            ok("ostree-remote-registry:nestos:hub.oepkgs.net/nestos/nestos@sha256:abcd")
                .verification,
            Verification::Remote("nestos".into())
        );
        assert_eq!(
            ok("ostree-remote-image:nestos:oci-archive:/var/tmp/os.ociarchive").verification,
            Verification::Remote("nestos".into())
        );
        let r = ok("testos:testos/x86_64/stable");
        assert_eq!(
            r.kind,
            Kind::OstreeRef {
                remote: Some("testos".into()),
                name: "testos/x86_64/stable".into()
            }
        );
        assert_eq!(r.verification, Verification::Remote("testos".into()));
        assert_eq!(ok(&"a".repeat(64)).kind, Kind::Checksum);
        assert_eq!(
            ok("nestos/x86_64/stable").verification,
            Verification::Checksum
        );
    }

    #[test]
    fn unverified_forms_need_consent() {
        for raw in [
            "ostree-unverified-registry:hub.oepkgs.net/nestos/nestos:22.03",
            "ostree-unverified-image:docker://hub.oepkgs.net/nestos/nestos:22.03",
        ] {
            let err = ImageRef::parse(raw, false).unwrap_err();
            assert_eq!(err, ImageRefError::Unverified(raw.into()));
            assert!(err
                .to_string()
                .contains("os.allow_unverified_images = true"));
            assert_eq!(
                ImageRef::parse(raw, true).unwrap().verification,
                Verification::Unverified
            );
        }
    }

    #[test]
    fn malformed_references_say_why() {
        let cases = [
            ("", "it is empty"),
            ("nestos: x", "white space"),
            ("ostree-unverified-registry:", "no image after the prefix"),
            (
                "ostree-image-signed:hub.oepkgs.net/x",
                "expected a transport",
            ),
            (
                "ostree-image-signed:docker://",
                "no image after the transport",
            ),
            (
                "ostree-remote-registry:hub.oepkgs.net/x:1",
                "the remote name may hold only",
            ),
            (
                "ostree-remote-registry:hub.oepkgs.net/x",
                "expected REMOTE:IMAGE",
            ),
            ("ostree-remote-registry:nestos", "expected REMOTE:IMAGE"),
            (
                "ostree-remote-registry:nestos:docker://x",
                "without a transport",
            ),
            ("ostree-container:docker://x", "unknown ostree- prefix"),
            (
                "docker://hub.oepkgs.net/nestos",
                "needs a prefix saying how it is verified",
            ),
            ("https://example.com/repo", "needs a prefix"),
            ("remote:/abs/ref", "an OSTree ref is"),
            ("remote:a//b", "an OSTree ref is"),
            ("bad$remote:ref", "the remote name may hold only"),
        ];
        for (raw, why) in cases {
            let err = ImageRef::parse(raw, true).unwrap_err().to_string();
            assert!(err.contains(why), "{raw:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
