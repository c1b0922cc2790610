//! The image chosen by stream (`--stream-name NAME [--stream-base-url URL] [--version V]`):
//! the metal image's URL, sha256 and signature read from a stream metadata document in
//! Fedora CoreOS's format (`{base}/streams/{name}.json`: `architectures.<arch>.artifacts.
//! metal` with its `release` and `formats."raw.xz".disk` `{location, signature, sha256}`),
//! which NestOS publishes in the same shape.
//!
//! [`parse`] and [`pick`] are pure; [`fetch`] reads the document through [`super::source`]
//! (the one door to HTTP), bounded to [`MAX_DOCUMENT`] bytes.
//!
//! Who can reach it: whoever serves the document (the mirror, or anyone on the path of a
//! plain-http base URL). If it lies about the image, the image's own check still stands: the
//! sha256 it names is checked against every byte downloaded, and a published signature is
//! checked with the admin's `--keyring` — a document that names a substituted image with
//! its matching sha256 is caught only by the signature, so the plan says when no keyring
//! checks it. A document that stalls ends with the source's stall timeout; a document that
//! does not parse, lacks this machine's architecture or the asked version is refused in one
//! line naming the stream, before anything changes.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

use super::source::{self, Source, Timeouts};

/// The largest stream document read (Fedora CoreOS's are about 30 KiB).
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// Why no image could be picked from a stream. One line each.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the stream document {url} does not parse: {message}; check --stream-base-url and --stream-name")]
    Parse { url: String, message: String },
    #[error(
        "the stream document {url} is larger than {MAX_DOCUMENT} bytes; check --stream-base-url"
    )]
    TooLarge { url: String },
    #[error("stream {stream} has no {arch} build (it has {have}); this machine is {arch}")]
    NoArchitecture {
        stream: String,
        arch: String,
        have: String,
    },
    #[error("stream {stream} has no metal image for {arch}")]
    NoMetal { stream: String, arch: String },
    #[error("stream {stream} has no metal {format} image for {arch} (it has {have}); this disk has {sector_size}-byte sectors")]
    NoFormat {
        stream: String,
        arch: String,
        format: String,
        have: String,
        sector_size: u32,
    },
    #[error("--version {asked} is not in stream {stream}, which offers {offered} for {arch}; give --version {offered}, or --image with that build's URL")]
    NoVersion {
        stream: String,
        asked: String,
        offered: String,
        arch: String,
    },
    #[error("stream {stream}: the metal image's {what} {url:?} is not an http(s) URL")]
    NotUrl {
        stream: String,
        what: &'static str,
        url: String,
    },
    #[error("stream {stream}: the metal image's sha256 {sha:?} is not 64 hex digits")]
    BadSha { stream: String, sha: String },
    #[error("fetching stream {stream}: {source}")]
    Fetch {
        stream: String,
        #[source]
        source: source::SourceError,
    },
}

/// The admin's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChoice {
    pub name: String,
    pub base_url: String,
    pub version: Option<String>,
}

impl StreamChoice {
    /// `{base}/streams/{name}.json`, as Fedora CoreOS lays its metadata out.
    pub fn url(&self) -> String {
        format!(
            "{}/streams/{}.json",
            self.base_url.trim_end_matches('/'),
            self.name
        )
    }
}

/// The parts of a stream document that are used.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    pub stream: String,
    pub architectures: BTreeMap<String, Architecture>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Architecture {
    #[serde(default)]
    pub artifacts: BTreeMap<String, Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub release: String,
    #[serde(default)]
    pub formats: BTreeMap<String, BTreeMap<String, Artifact>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Artifact {
    pub location: String,
    #[serde(default)]
    pub signature: Option<String>,
    pub sha256: String,
}

/// The build picked, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub release: String,
    pub location: String,
    pub sha256: String,
    pub signature: Option<String>,
    /// One line for the plan: which build, and why this one.
    pub why: String,
}

/// Parses a stream document (`url` names it in the error).
pub fn parse(text: &str, url: &str) -> Result<Document, StreamError> {
    serde_json::from_str(text).map_err(|e| StreamError::Parse {
        url: url.to_owned(),
        message: e.to_string(),
    })
}

/// The metal image of `doc` for `arch` (`x86_64`, `aarch64`: the kernel's names, which the
/// stream uses too) in the format for the disk's sector size (`raw.xz`, or `4k.raw.xz` for
/// 4096-byte sectors), and only if its release is `version` when one is asked for (a stream
/// document names one release per architecture: the stream's latest).
pub fn pick(
    doc: &Document,
    arch: &str,
    sector_size: u32,
    version: Option<&str>,
) -> Result<Picked, StreamError> {
    let stream = doc.stream.clone();
    let a = doc
        .architectures
        .get(arch)
        .ok_or_else(|| StreamError::NoArchitecture {
            stream: stream.clone(),
            arch: arch.to_owned(),
            have: list(doc.architectures.keys()),
        })?;
    let metal = a
        .artifacts
        .get("metal")
        .ok_or_else(|| StreamError::NoMetal {
            stream: stream.clone(),
            arch: arch.to_owned(),
        })?;
    if let Some(asked) = version.filter(|v| *v != metal.release) {
        return Err(StreamError::NoVersion {
            stream,
            asked: asked.to_owned(),
            offered: metal.release.clone(),
            arch: arch.to_owned(),
        });
    }
    let format = if sector_size == 4096 {
        "4k.raw.xz"
    } else {
        "raw.xz"
    };
    let disk = metal
        .formats
        .get(format)
        .and_then(|f| f.get("disk"))
        .ok_or_else(|| StreamError::NoFormat {
            stream: stream.clone(),
            arch: arch.to_owned(),
            format: format.to_owned(),
            have: list(metal.formats.keys()),
            sector_size,
        })?;
    // A document must not point the plan at this machine's own files.
    let is_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    for (what, url) in [
        ("location", Some(&disk.location)),
        ("signature", disk.signature.as_ref()),
    ] {
        if let Some(url) = url.filter(|u| !is_url(u)) {
            return Err(StreamError::NotUrl {
                stream,
                what,
                url: url.clone(),
            });
        }
    }
    if disk.sha256.len() != 64 || !disk.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StreamError::BadSha {
            stream,
            sha: disk.sha256.clone(),
        });
    }
    let why = format!(
        "stream {stream}: release {} for {arch}, metal {format} ({}), {}",
        metal.release,
        if sector_size == 4096 {
            "the disk has 4096-byte sectors"
        } else {
            "the disk has 512-byte sectors"
        },
        match version {
            Some(_) => "the version asked for".to_owned(),
            None => "the stream's latest (no --version given)".to_owned(),
        }
    );
    Ok(Picked {
        release: metal.release.clone(),
        location: disk.location.clone(),
        sha256: disk.sha256.to_ascii_lowercase(),
        signature: disk.signature.clone(),
        why,
    })
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Reads the stream document of `choice` through the image source (a URL, or a file path as
/// base for tests and offline mirrors), at most [`MAX_DOCUMENT`] bytes.
pub fn fetch(choice: &StreamChoice, timeouts: Timeouts) -> Result<Document, StreamError> {
    let url = choice.url();
    let fetch_error = |source| StreamError::Fetch {
        stream: choice.name.clone(),
        source,
    };
    let src = Source::parse(&url).map_err(|e| fetch_error(source::SourceError::Said(e)))?;
    let opened = source::open(&src, timeouts).map_err(fetch_error)?;
    let mut text = String::new();
    opened
        .reader
        .take(MAX_DOCUMENT + 1)
        .read_to_string(&mut text)
        .map_err(|e| StreamError::Parse {
            url: url.clone(),
            message: e.to_string(),
        })?;
    if text.len() as u64 > MAX_DOCUMENT {
        return Err(StreamError::TooLarge { url });
    }
    parse(&text, &url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "6d18380dad77b8670767bb082bb6f55ae4381b2b1d4a7405d8a9cdb6e6678263";

    fn doc(arch: &str, formats: serde_json::Value) -> Document {
        let text = serde_json::json!({
            "stream": "stable",
            "metadata": { "last-modified": "2026-12-01T00:00:00Z" },
            "architectures": { arch: { "artifacts": {
                "qemu": { "release": "41.1", "formats": { "qcow2.xz": { "disk": {
                    "location": "https://m/qemu.qcow2.xz", "sha256": SHA } } } },
                "metal": { "release": "41.1", "formats": formats }
            } } }
        })
        .to_string();
        parse(&text, "https://m/streams/stable.json").unwrap()
    }

    fn formats() -> serde_json::Value {
        serde_json::json!({
            "raw.xz": { "disk": { "location": "https://m/metal.x86_64.raw.xz",
                                  "signature": "https://m/metal.x86_64.raw.xz.sig",
                                  "sha256": SHA, "uncompressed-sha256": SHA } },
            "4k.raw.xz": { "disk": { "location": "https://m/metal4k.x86_64.raw.xz",
                                     "sha256": SHA.to_uppercase() } },
            "iso": { "disk": { "location": "https://m/live.iso", "sha256": SHA } }
        })
    }

    #[test]
    fn the_metal_image_for_the_architecture_and_sector_size_is_picked() {
        let d = doc("x86_64", formats());
        let p = pick(&d, "x86_64", 512, None).unwrap();
        assert_eq!(p.location, "https://m/metal.x86_64.raw.xz");
        assert_eq!(p.sha256, SHA);
        assert_eq!(
            p.signature.as_deref(),
            Some("https://m/metal.x86_64.raw.xz.sig")
        );
        assert_eq!(
            p.why,
            "stream stable: release 41.1 for x86_64, metal raw.xz (the disk has 512-byte sectors), the stream's latest (no --version given)"
        );
        let p = pick(&d, "x86_64", 4096, Some("41.1")).unwrap();
        assert_eq!(p.location, "https://m/metal4k.x86_64.raw.xz");
        assert_eq!(p.sha256, SHA, "lower-cased");
        assert_eq!(p.signature, None);
        assert!(p.why.ends_with("the version asked for"), "{}", p.why);
    }

    #[test]
    fn what_is_not_there_is_refused_in_one_line() {
        let d = doc("aarch64", formats());
        assert_eq!(
            pick(&d, "x86_64", 512, None).unwrap_err().to_string(),
            "stream stable has no x86_64 build (it has aarch64); this machine is x86_64"
        );
        let d = doc("x86_64", formats());
        assert_eq!(
            pick(&d, "x86_64", 512, Some("40.9")).unwrap_err().to_string(),
            "--version 40.9 is not in stream stable, which offers 41.1 for x86_64; give --version 41.1, or --image with that build's URL"
        );
        let d = doc("x86_64", serde_json::json!({ "iso": formats()["iso"] }));
        assert_eq!(
            pick(&d, "x86_64", 512, None).unwrap_err().to_string(),
            "stream stable has no metal raw.xz image for x86_64 (it has iso); this disk has 512-byte sectors"
        );
        let mut local = formats();
        local["raw.xz"]["disk"]["location"] = "/etc/shadow".into();
        assert_eq!(
            pick(&doc("x86_64", local), "x86_64", 512, None)
                .unwrap_err()
                .to_string(),
            "stream stable: the metal image's location \"/etc/shadow\" is not an http(s) URL"
        );
        let mut bad = formats();
        bad["raw.xz"]["disk"]["sha256"] = "abc".into();
        let d = doc("x86_64", bad);
        assert!(matches!(
            pick(&d, "x86_64", 512, None),
            Err(StreamError::BadSha { .. })
        ));
    }

    #[test]
    fn a_document_that_does_not_parse_is_named() {
        let e = parse("{\"stream\": \"stable\"", "http://m/streams/stable.json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the stream document http://m/streams/stable.json does not parse: "),
            "{e}"
        );
        // Missing the fields used: refused, not defaulted.
        assert!(parse("{\"stream\": \"stable\"}", "u").is_err());
    }

    #[test]
    fn the_document_url_follows_fedora_coreos_layout() {
        let c = StreamChoice {
            name: "stable".into(),
            base_url: "https://builds.example/".into(),
            version: None,
        };
        assert_eq!(c.url(), "https://builds.example/streams/stable.json");
    }
}
