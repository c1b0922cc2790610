//! Image references: what an upgrade target may be, and how it is verified.
//!
//! NestOS and NKD name targets as ostree-container references; plain OSTree hosts name a
//! `[remote:]ref` or a commit checksum. Verification is on by default: an unverified
//! reference is refused unless the configuration allows it ([`ImagePolicy`]).
//!
//! A leaf: the coordinator, the node agent and the backends all carry the one type, so a
//! reference is parsed once where it enters (an Update, `hkd upgrade`, the journal) and never
//! re-read from a string. It serializes as the reference itself, so the journal and the wire
//! keep the string form.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// Whether images nobody verifies are accepted: the one choice, made by hkd's
/// `os.allow_unverified_images` (and by `hkctl upgrade --allow-unverified` for its preview),
/// checked where a reference is accepted and again by the backend that deploys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImagePolicy {
    /// Allow `ostree-unverified-*` images, NKD's bare registry references, and OSTree remotes
    /// that check nothing.
    pub allow_unverified: bool,
}

impl ImagePolicy {
    /// Verified images only: the default.
    pub const STRICT: ImagePolicy = ImagePolicy {
        allow_unverified: false,
    };
    /// Unverified images too.
    pub const ALLOW_UNVERIFIED: ImagePolicy = ImagePolicy {
        allow_unverified: true,
    };

    /// Refuses `image` when nothing verifies it and the policy does not allow that.
    pub fn admit(self, image: &ImageRef) -> Result<(), ImageRefError> {
        if image.verification == Verification::Unverified && !self.allow_unverified {
            return Err(ImageRefError::Unverified(image.raw.clone()));
        }
        Ok(())
    }
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
    /// Parses `raw`; refuses an unverified reference unless `policy` allows it.
    pub fn parse(raw: &str, policy: ImagePolicy) -> Result<ImageRef, ImageRefError> {
        let parsed = Self::parse_any(raw)?;
        policy.admit(&parsed)?;
        Ok(parsed)
    }

    /// Parses `raw` whatever its verification: for references accepted earlier under the
    /// policy of that time (a journal, a Node's annotation). Whoever deploys one checks it.
    pub fn parse_any(raw: &str) -> Result<ImageRef, ImageRefError> {
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

    /// The reference an Update's `osImageURL` names, under `policy`. NKD writes a bare
    /// `REGISTRY/NAME[:TAG|@DIGEST]` and pulls it as `ostree-unverified-registry:`; that is
    /// kept as its meaning (and is therefore unverified). The error names the field.
    pub fn from_os_image_url(raw: &str, policy: ImagePolicy) -> Result<ImageRef, OsImageUrlError> {
        let raw = raw.trim();
        match ImageRef::parse(raw, policy) {
            Ok(r) => Ok(r),
            Err(_) if looks_like_registry_image(raw) => {
                ImageRef::parse(&format!("ostree-unverified-registry:{raw}"), policy)
                    .map_err(|_| OsImageUrlError::BareUnverified(raw.to_owned()))
            }
            Err(e) => Err(OsImageUrlError::Invalid(e)),
        }
    }

    /// Whether `other` — a reference as a Node's annotation or an older Update wrote it — names
    /// this image: equal once both are in the form the backends take.
    pub fn is_same_as(&self, other: &str) -> bool {
        let other = other.trim();
        if other == self.raw {
            return true;
        }
        ImageRef::parse_any(other).is_err()
            && looks_like_registry_image(other)
            && self.raw.strip_prefix("ostree-unverified-registry:") == Some(other)
    }
}

/// Why an `osImageURL` names no image the policy accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsImageUrlError {
    /// A bare registry image, which NKD pulls unverified, under a policy that refuses that.
    #[error(
        "osImageURL {0:?} is a bare registry image, which NKD pulls unverified; name it \
         ostree-image-signed:docker://{0}, or allow unverified images in the cluster's hkd \
         configuration"
    )]
    BareUnverified(String),
    #[error("osImageURL: {0}")]
    Invalid(ImageRefError),
}

/// `host[:port]/path[:tag|@digest]` whose first component is a registry host (has a dot or a
/// port, or is localhost), as container tools decide; an OSTree ref has no such component.
fn looks_like_registry_image(raw: &str) -> bool {
    let Some((host, rest)) = raw.split_once('/') else {
        return false;
    };
    let hostish = host.contains('.') || host.contains(':') || host == "localhost";
    hostish
        && !rest.is_empty()
        && !raw.contains("://")
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@".contains(&b))
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// As the reference itself, the form the journal and the wire have always carried.
impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

/// By [`ImageRef::parse_any`]: what was accepted once loads again whatever the policy now;
/// a string that is not a reference is refused with the one-line reason.
impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ImageRef, D::Error> {
        let raw = String::deserialize(d)?;
        ImageRef::parse_any(&raw).map_err(serde::de::Error::custom)
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
        ImageRef::parse(raw, ImagePolicy::STRICT).unwrap_or_else(|e| panic!("{raw}: {e}"))
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
            let err = ImageRef::parse(raw, ImagePolicy::STRICT).unwrap_err();
            assert_eq!(err, ImageRefError::Unverified(raw.into()));
            assert!(err
                .to_string()
                .contains("os.allow_unverified_images = true"));
            assert_eq!(
                ImageRef::parse(raw, ImagePolicy::ALLOW_UNVERIFIED)
                    .unwrap()
                    .verification,
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
            let err = ImageRef::parse(raw, ImagePolicy::ALLOW_UNVERIFIED)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{raw:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn registry_lookalikes() {
        assert!(looks_like_registry_image("hub.oepkgs.net/nestos/nestos:1"));
        assert!(looks_like_registry_image("localhost:5000/os@sha256:ab"));
        assert!(looks_like_registry_image("localhost/os"));
        assert!(!looks_like_registry_image("nestos/x86_64/stable"));
        assert!(!looks_like_registry_image("docker://hub.oepkgs.net/x"));
        assert!(!looks_like_registry_image("hub.oepkgs.net"));
    }

    #[test]
    fn an_os_image_url_names_what_nkd_means() {
        let bare = "hub.oepkgs.net/nestos/nestos:2";
        let lax = ImageRef::from_os_image_url(bare, ImagePolicy::ALLOW_UNVERIFIED).unwrap();
        assert_eq!(lax.raw, format!("ostree-unverified-registry:{bare}"));
        assert!(lax.is_same_as(bare));
        assert!(lax.is_same_as(&lax.raw));
        assert!(!lax.is_same_as("hub.oepkgs.net/nestos/nestos:3"));
        let err = ImageRef::from_os_image_url(bare, ImagePolicy::STRICT).unwrap_err();
        assert!(
            err.to_string().contains("is a bare registry image"),
            "{err}"
        );

        let signed = ok("ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2");
        assert!(signed.is_same_as(" ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2"));
        assert!(!signed.is_same_as(bare));
    }

    #[test]
    fn serialized_as_the_reference_and_read_back_whatever_the_policy() {
        let raw = "ostree-unverified-registry:hub.oepkgs.net/nestos/nestos:2";
        let r = ImageRef::parse(raw, ImagePolicy::ALLOW_UNVERIFIED).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{raw}\""));
        assert_eq!(serde_json::from_str::<ImageRef>(&json).unwrap(), r);
        let err = serde_json::from_str::<ImageRef>("\"docker://x\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs a prefix saying how it is verified"),
            "{err}"
        );
    }
}
